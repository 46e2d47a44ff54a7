// test_score_tree.c - qlora_model_score_tree (a token trie scored in one batched pass with a tree attention
// mask) against qlora_model_score of every root-to-node path (itself checked against torch in test_llama),
// on random tiny models whose LoRA adapters have nonzero B: branching tries, depth-1 tries, tries larger
// than a chunk, prompts longer than a chunk, and bad input.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int make_model(qlora_model *m, int rank, uint64_t seed) {
    qlora_llama_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 32;
    c.intermediate_size = 64;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = 8;
    c.vocab_size = 53;
    c.max_position_embeddings = 256;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_scaling_factor = 1.0f;
    c.bos_token_id = 1;
    c.eos_token_id = 2;
    c.pad_token_id = -1;
    qlora_model_options o;
    memset(&o, 0, sizeof o);
    o.blocksize = 32;
    o.lora.rank = rank;
    o.lora.alpha = 8.0f;
    o.lora_seed = seed;
    if (qlora_model_init_random(m, &c, &o, seed, NULL) != QLORA_OK) return 0;
    // adapters with nonzero B, so the LoRA path matters
    for (int l = 0; l < c.n_layers && rank > 0; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            qlora_lora *a = &m->layers[l].lora[t];
            if (a->B) tu_fill_normal(a->B, (long)(a->out * a->rank), 0.2);
        }
    return 1;
}

static double u01(void) { return tu_uniform() * 0.5 + 0.5; }   // [0, 1)

// Trie of `nl` random token sequences sharing prefixes; every sequence ends with EOS (2), so none is a prefix
// of another. Returns the node count; leaf[k] = node of sequence k's last token.
static int64_t make_trie(int nl, int maxlen, int V, int32_t *tok, int32_t *par, int64_t cap, int32_t *leaf,
                         int branch_vocab) {
    int64_t n = 0;
    int32_t seq[64];
    for (int k = 0; k < nl; k++) {
        int len = 1 + (int)(u01() * maxlen);
        for (int j = 0; j < len; j++) seq[j] = 3 + (int32_t)(u01() * branch_vocab);   // few ids: sharing
        seq[len++] = 2;
        int32_t at = -1;
        for (int j = 0; j < len; j++) {
            int32_t found = -1;
            for (int64_t i = 0; i < n && found < 0; i++)
                if (par[i] == at && tok[i] == seq[j]) found = (int32_t)i;
            if (found < 0) {
                if (n == cap) return -1;
                tok[n] = seq[j] % V;
                par[n] = at;
                found = (int32_t)n++;
            }
            at = found;
        }
        leaf[k] = at;
    }
    return n;
}

// Path of a node, root first.
static int path_of(const int32_t *tok, const int32_t *par, int32_t node, int32_t *out) {
    int32_t rev[64];
    int d = 0;
    for (int32_t a = node; a >= 0 && d < 64; a = par[a]) rev[d++] = tok[a];
    for (int i = 0; i < d; i++) out[i] = rev[d - 1 - i];
    return d;
}

// Compares Σ logp over every node's path with qlora_model_score of that path. Returns the worst error.
static double compare_all(qlora_model *m, const int32_t *prompt, int np, const int32_t *tok, const int32_t *par,
                          int64_t n, const double *logp) {
    qlora_kv_cache kv;
    if (qlora_kv_cache_init(&kv, m, np + 64, 0, NULL) != QLORA_OK) return 1e30;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t path[64];
        int d = path_of(tok, par, (int32_t)i, path);
        const int32_t *pp = path;
        int64_t len = d;
        double want = 0, got = 0;
        if (qlora_model_score(m, &kv, prompt, np, &pp, &len, 1, &want, NULL) != QLORA_OK) { worst = 1e30; break; }
        for (int32_t a = (int32_t)i; a >= 0; a = par[a]) got += logp[a];
        double e = fabs(got - want) / (1.0 + fabs(want));
        if (e > worst) worst = e;
    }
    qlora_kv_cache_free(&kv);
    return worst;
}

#define CAP 600


int main(void) {
    int quick = getenv("QLORA_TEST_QUICK") != NULL;
    tu_seed(11);
    qlora_model m;
    if (!tu_check(make_model(&m, 4, 7), "model init", "qlora_model_init_random failed")) return tu_finish();
    int V = m.cfg.vocab_size;
    int32_t prompt[80];
    for (int i = 0; i < 80; i++) prompt[i] = i == 0 ? 1 : 3 + (int32_t)(u01() * (V - 3));
    int32_t *tok = (int32_t *)malloc(sizeof(int32_t) * CAP), *par = (int32_t *)malloc(sizeof(int32_t) * CAP);
    int32_t leaf[128];
    double *logp = (double *)malloc(sizeof(double) * CAP);
    qlora_error err;

    // 1. branching tries, several chunk sizes (chunk smaller and larger than the trie) and prompt lengths
    {
        static const int chunks[] = { 64, 7, 1 };
        static const int nps[] = { 1, 9, 70 };
        for (int ci = 0; ci < 3; ci++)
            for (int pi = 0; pi < 3; pi++) {
                if (quick && ci == 2 && pi == 2) continue;
                int64_t n = make_trie(12, 6, V, tok, par, CAP, leaf, 4);
                qlora_kv_cache kv;
                char name[96];
                snprintf(name, sizeof name, "branching trie (%lld nodes), chunk %d, prompt %d", (long long)n,
                         chunks[ci], nps[pi]);
                if (n <= 0 || qlora_kv_cache_init(&kv, &m, nps[pi] + n, chunks[ci], &err) != QLORA_OK) {
                    tu_check(0, name, "setup failed");
                    continue;
                }
                qlora_status st = qlora_model_score_tree(&m, &kv, prompt, nps[pi], tok, par, n, logp, &err);
                double worst = st == QLORA_OK ? compare_all(&m, prompt, nps[pi], tok, par, n, logp) : 1e30;
                tu_check(st == QLORA_OK && worst < 2e-5, name, "status %d (%s), worst relative error %.3g",
                         (int)st, st == QLORA_OK ? "" : err.detail, worst);
                qlora_kv_cache_free(&kv);
            }
    }
    // 2. depth 1 only: every node is a child of the prompt
    {
        int64_t n = 20;
        for (int64_t i = 0; i < n; i++) { tok[i] = (int32_t)(i % V); par[i] = -1; }
        qlora_kv_cache kv;
        qlora_kv_cache_init(&kv, &m, 9 + n, 0, NULL);
        qlora_status st = qlora_model_score_tree(&m, &kv, prompt, 9, tok, par, n, logp, &err);
        float *lg = (float *)malloc(sizeof(float) * (size_t)V);
        qlora_model_prefill(&m, &kv, prompt, 9, lg, NULL);   // kv was reset by score_tree
        qlora_log_softmax(lg, lg, V);
        double worst = 0;
        for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(logp[i] - lg[tok[i]]));
        tu_check(st == QLORA_OK && worst < 1e-5, "depth-1 nodes = log p(token | prompt)", "status %d, worst %.3g",
                 (int)st, worst);
        free(lg);
        qlora_kv_cache_free(&kv);
    }
    // 3. a long chain plus a wide fan (n much larger than the chunk)
    {
        int64_t n = 0;
        for (int i = 0; i < 40; i++, n++) { tok[n] = 3 + i % 11; par[n] = (int32_t)(i == 0 ? -1 : n - 1); }
        for (int i = 0; i < 30; i++, n++) { tok[n] = 5 + i % 17; par[n] = (int32_t)(i % 40); }
        qlora_kv_cache kv;
        qlora_kv_cache_init(&kv, &m, 9 + n, 8, NULL);
        qlora_status st = qlora_model_score_tree(&m, &kv, prompt, 9, tok, par, n, logp, &err);
        double worst = st == QLORA_OK ? compare_all(&m, prompt, 9, tok, par, n, logp) : 1e30;
        tu_check(st == QLORA_OK && worst < 2e-5, "chain of 40 + fan of 30, chunk 8", "status %d, worst %.3g",
                 (int)st, worst);
        qlora_kv_cache_free(&kv);
    }
    // 4. a model without adapters
    {
        qlora_model m0;
        if (make_model(&m0, 0, 9)) {
            int64_t n = make_trie(8, 5, V, tok, par, CAP, leaf, 3);
            qlora_kv_cache kv;
            qlora_kv_cache_init(&kv, &m0, 5 + n, 0, NULL);
            qlora_status st = qlora_model_score_tree(&m0, &kv, prompt, 5, tok, par, n, logp, &err);
            double worst = st == QLORA_OK ? compare_all(&m0, prompt, 5, tok, par, n, logp) : 1e30;
            tu_check(st == QLORA_OK && worst < 2e-5, "no adapters", "status %d, worst %.3g", (int)st, worst);
            qlora_kv_cache_free(&kv);
            qlora_model_free(&m0);
        } else tu_check(0, "no adapters", "init failed");
    }
    // 5. empty trie: nothing to do, no error
    {
        qlora_kv_cache kv;
        qlora_kv_cache_init(&kv, &m, 4, 0, NULL);
        tu_check(qlora_model_score_tree(&m, &kv, prompt, 3, NULL, NULL, 0, NULL, &err) == QLORA_OK, "empty trie",
                 "%s", err.detail);
        qlora_kv_cache_free(&kv);
    }
    // 6. bad input
    {
        int64_t n = make_trie(6, 4, V, tok, par, CAP, leaf, 3);
        qlora_kv_cache kv;
        qlora_kv_cache_init(&kv, &m, 5 + n, 0, NULL);
        int32_t *t2 = (int32_t *)malloc(sizeof(int32_t) * (size_t)n), *p2 = (int32_t *)malloc(sizeof(int32_t) * (size_t)n);
        memcpy(t2, tok, sizeof(int32_t) * (size_t)n);
        memcpy(p2, par, sizeof(int32_t) * (size_t)n);
        p2[3] = 3;
        qlora_status st = qlora_model_score_tree(&m, &kv, prompt, 5, t2, p2, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG && strstr(err.detail, "node 3"), "bad input: parent = self", "%d %s", (int)st,
                 err.detail);
        p2[3] = (int32_t)n;
        st = qlora_model_score_tree(&m, &kv, prompt, 5, t2, p2, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG, "bad input: parent after the node", "%d %s", (int)st, err.detail);
        p2[3] = -2;
        st = qlora_model_score_tree(&m, &kv, prompt, 5, t2, p2, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG, "bad input: parent -2", "%d %s", (int)st, err.detail);
        p2[3] = par[3];
        t2[2] = V;
        st = qlora_model_score_tree(&m, &kv, prompt, 5, t2, p2, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG && strstr(err.detail, "node 2"), "bad input: token = vocab size", "%d %s",
                 (int)st, err.detail);
        t2[2] = -1;
        st = qlora_model_score_tree(&m, &kv, prompt, 5, t2, p2, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG, "bad input: token -1", "%d %s", (int)st, err.detail);
        {   // the cache needs the prompt + one slot per inner node (leaves do not run)
            int64_t inner = 0;
            for (int64_t i = 0; i < n; i++) {
                int has = 0;
                for (int64_t j = i + 1; j < n; j++) has |= par[j] == i;
                inner += has;
            }
            qlora_kv_cache small;
            qlora_kv_cache_init(&small, &m, 5 + inner, 0, NULL);
            st = qlora_model_score_tree(&m, &small, prompt, 5, tok, par, n, logp, &err);
            double worst = st == QLORA_OK ? compare_all(&m, prompt, 5, tok, par, n, logp) : 1e30;
            tu_check(st == QLORA_OK && worst < 2e-5, "cache of exactly prompt + inner nodes is enough",
                     "%d worst %.3g (%lld inner of %lld)", (int)st, worst, (long long)inner, (long long)n);
            st = qlora_model_score_tree(&m, &small, prompt, 6, tok, par, n, logp, &err);
            tu_check(st == QLORA_ERR_ARG && strstr(err.detail, "slots"), "bad input: kv too small", "%d %s", (int)st,
                     err.detail);
            qlora_kv_cache_free(&small);
        }
        int32_t badp[2] = { 1, V + 3 };
        st = qlora_model_score_tree(&m, &kv, badp, 2, tok, par, n - 3, logp, &err);
        tu_check(st == QLORA_ERR_ARG, "bad input: prompt token out of range", "%d %s", (int)st, err.detail);
        st = qlora_model_score_tree(&m, &kv, prompt, 0, tok, par, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG, "bad input: empty prompt", "%d", (int)st);
        st = qlora_model_score_tree(&m, &kv, prompt, 5, tok, NULL, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG, "bad input: NULL parents", "%d", (int)st);
        st = qlora_model_score_tree(&m, NULL, prompt, 5, tok, par, n, logp, &err);
        tu_check(st == QLORA_ERR_ARG, "bad input: NULL cache", "%d", (int)st);
        // the cache still works after the errors
        st = qlora_model_score_tree(&m, &kv, prompt, 5, tok, par, n, logp, &err);
        double worst = st == QLORA_OK ? compare_all(&m, prompt, 5, tok, par, n, logp) : 1e30;
        tu_check(st == QLORA_OK && worst < 2e-5, "usable after errors", "%d worst %.3g", (int)st, worst);
        free(t2);
        free(p2);
        qlora_kv_cache_free(&kv);
    }
    free(tok);
    free(par);
    free(logp);
    qlora_model_free(&m);
    return tu_finish();
}
