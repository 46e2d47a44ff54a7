// test_llama.c - the Llama model against an independent PyTorch implementation (test/ref/llama_ref.py).
//
// Flow: `llama_ref.py make` writes tiny random checkpoints (F32 / F16 / BF16, tied, sharded, GQA,
// rope_theta 500000 + linear scaling) and their inputs; this program loads each one (quantizing to
// NF4), gives every adapter a non-zero B, dumps the exact weights it computes with, runs its own
// checks (checkpointing on/off bit-identity, KV-cache decoding against the full forward, scoring,
// bnb 4-bit round trip, PEFT adapter round trip) and then `llama_ref.py ref` computes logits, loss,
// LoRA gradients, greedy tokens, scores and embeddings in float64 from those weights.
//
// Tolerances: logits |got - want| <= 1e-4·max|want| + 1e-4·|want| (compared at real-token query
// positions only: a padding query row is defined differently, see qlora_attention_forward);
// LoRA gradients per tensor 1e-3·max|want| + 1e-3·|want|; KV-cache logits against the full
// forward 1e-5·max + 1e-5·|want|; greedy tokens exactly; checkpointing on/off bit for bit.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#include <sys/stat.h>

typedef struct tcase {
    const char *name;
    int         rank;
    float       alpha;
    int         rslora;
    uint32_t    targets;
    int         no_dq;
} tcase;

static const tcase CASES[] = {
    { "gqa",     4, 8.0f, 0, QLORA_TARGETS_ALL, 0 },
    { "rope",    3, 6.0f, 1, QLORA_TARGETS_ALL, 1 },
    { "tied",    2, 4.0f, 0, (1u << QLORA_TARGET_Q) | (1u << QLORA_TARGET_V) | (1u << QLORA_TARGET_DOWN), 0 },
    { "sharded", 4, 4.0f, 0, QLORA_TARGETS_ALL, 0 },
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

typedef struct meta {
    int      B, T;
    int32_t  tokens[256], labels[256];
    uint8_t  mask[256];
    int32_t  prompt[16];
    int      n_prompt, n_gen, n_conts;
    int32_t  conts[4][16];
    int64_t  cont_lens[4];
    int32_t  emb[16];
    int      n_emb;
} meta;

// What the C side computed, kept for the comparison with the reference.
typedef struct result {
    int       ok;             // the C phase ran
    qlora_model m;
    meta      mt;
    float    *logits;         // (B·T, V)
    double    loss;
    float    *grads;          // all dA then dB per (layer, target), in model order
    int64_t   n_grads;
    float    *drop_grads;
    double    drop_loss;
    int32_t   gen[32];
    int64_t   n_gen;
    double    scores[4];
    float    *embed;          // (C)
} result;

static char ROOT[512];

// A precondition of a named check: reports FAIL only when it does not hold (the check itself
// reports the PASS), so every check prints exactly one line.
static int req(int cond, const char *name, const char *detail) {
    if (!cond) tu_check(0, name, "%s", detail);
    return cond;
}

static const char *cpath(const char *cs, const char *rest) {
    static char buf[8][768];
    static int slot;
    char *p = buf[slot++ & 7];
    if (snprintf(p, 768, "%s/%s/%s", ROOT, cs, rest) >= 768) p[0] = 0;
    return p;
}

static int read_meta(const char *cs, meta *mt) {
    FILE *f = fopen(cpath(cs, "meta.txt"), "r");
    if (!f) return 0;
    int ok = fscanf(f, "%d %d", &mt->B, &mt->T) == 2 && mt->B * mt->T <= 256;
    int n = ok ? mt->B * mt->T : 0, v;
    for (int i = 0; ok && i < n; i++) ok = fscanf(f, "%d", &mt->tokens[i]) == 1;
    for (int i = 0; ok && i < n; i++) { ok = fscanf(f, "%d", &v) == 1; mt->mask[i] = (uint8_t)v; }
    for (int i = 0; ok && i < n; i++) ok = fscanf(f, "%d", &mt->labels[i]) == 1;
    ok = ok && fscanf(f, "%d", &mt->n_prompt) == 1 && mt->n_prompt <= 16;
    for (int i = 0; ok && i < mt->n_prompt; i++) ok = fscanf(f, "%d", &mt->prompt[i]) == 1;
    ok = ok && fscanf(f, "%d %d", &mt->n_gen, &mt->n_conts) == 2 && mt->n_conts <= 4 && mt->n_gen <= 32;
    for (int c = 0; ok && c < mt->n_conts; c++) {
        ok = fscanf(f, "%d", &v) == 1 && v <= 16;
        mt->cont_lens[c] = v;
        for (int i = 0; ok && i < v; i++) ok = fscanf(f, "%d", &mt->conts[c][i]) == 1;
    }
    ok = ok && fscanf(f, "%d", &mt->n_emb) == 1 && mt->n_emb <= 16;
    for (int i = 0; ok && i < mt->n_emb; i++) ok = fscanf(f, "%d", &mt->emb[i]) == 1;
    fclose(f);
    return ok;
}

static int write_f32(const char *path, const float *x, int64_t n) {
    return tu_write(path, x, sizeof(float) * (size_t)n);
}

// Reads n floats (or doubles) of a reference file; NULL when absent or the wrong size.
static float *read_f32(const char *path, int64_t n) {
    float *x = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (x && !tu_read(path, x, sizeof(float) * (size_t)n)) { free(x); x = NULL; }
    return x;
}

static int file_says_ok(const char *path, char *detail, size_t cap) {
    FILE *f = fopen(path, "r");
    detail[0] = 0;
    if (!f) { snprintf(detail, cap, "%s missing", path); return 0; }
    size_t n = fread(detail, 1, cap - 1, f);
    detail[n] = 0;
    fclose(f);
    for (size_t i = 0; i < n; i++) if (detail[i] == '\n') detail[i] = (i + 1 < n) ? ';' : 0;
    return strcmp(detail, "ok") == 0;
}

static int64_t count_grads(const qlora_model *m) {
    int64_t n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_lora *a = &m->layers[l].lora[t];
            if (a->A) n += a->rank * (a->in + a->out);
        }
    return n;
}

// Every adapter's B drawn from N(0, 0.2²) with the test RNG seeded by seed: a non-zero B, so that
// every LoRA gradient is non-trivial (PEFT initializes B to zero).
static void fill_lora_b(qlora_model *m, unsigned long long seed) {
    tu_seed(seed);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            qlora_lora *a = &m->layers[l].lora[t];
            if (a->A) tu_fill_normal(a->B, a->out * a->rank, 0.2);
        }
}

static void gather_grads(const qlora_model *m, float *g) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_lora *a = &m->layers[l].lora[t];
            if (!a->A) continue;
            memcpy(g, a->dA, sizeof(float) * (size_t)(a->rank * a->in));
            g += a->rank * a->in;
            memcpy(g, a->dB, sizeof(float) * (size_t)(a->rank * a->out));
            g += a->rank * a->out;
        }
}

static int dump_model(const qlora_model *m, const char *cs) {
    const qlora_llama_config *c = &m->cfg;
    char name[256];
    int ok = 1;
    mkdir(cpath(cs, "dump"), 0755);
    float *buf = (float *)malloc(sizeof(float) * (size_t)(c->vocab_size * c->hidden_size +
                                                          4 * c->intermediate_size * c->hidden_size + 4096));
    ok &= write_f32(cpath(cs, "dump/model.embed_tokens.weight.f32"), m->embed,
                    (int64_t)c->vocab_size * c->hidden_size);
    ok &= write_f32(cpath(cs, "dump/model.norm.weight.f32"), m->final_norm, c->hidden_size);
    if (!c->tie_word_embeddings)
        ok &= write_f32(cpath(cs, "dump/lm_head.weight.f32"), m->lm_head,
                        (int64_t)c->vocab_size * c->hidden_size);
    for (int l = 0; l < c->n_layers; l++) {
        const qlora_llama_layer *ly = &m->layers[l];
        snprintf(name, sizeof name, "dump/model.layers.%d.input_layernorm.weight.f32", l);
        ok &= write_f32(cpath(cs, name), ly->input_norm, c->hidden_size);
        snprintf(name, sizeof name, "dump/model.layers.%d.post_attention_layernorm.weight.f32", l);
        ok &= write_f32(cpath(cs, name), ly->post_norm, c->hidden_size);
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_nf4 *w = &ly->w[t];
            const char *mp = qlora_target_path((qlora_target)t);
            ok &= qlora_nf4_dequantize(buf, w, NULL) == QLORA_OK;
            snprintf(name, sizeof name, "dump/model.layers.%d.%s.weight.f32", l, mp);
            ok &= write_f32(cpath(cs, name), buf, w->rows * w->cols);
            const qlora_lora *a = &ly->lora[t];
            if (!a->A) continue;
            snprintf(name, sizeof name, "dump/model.layers.%d.%s.lora_A.weight.f32", l, mp);
            ok &= write_f32(cpath(cs, name), a->A, a->rank * a->in);
            snprintf(name, sizeof name, "dump/model.layers.%d.%s.lora_B.weight.f32", l, mp);
            ok &= write_f32(cpath(cs, name), a->B, a->rank * a->out);
        }
    }
    free(buf);
    FILE *f = fopen(cpath(cs, "dump/lora.txt"), "w");
    if (!f) return 0;
    fprintf(f, "%d %.9g %d %u\n", (int)m->lora_cfg.rank, (double)m->lora_cfg.alpha, (int)m->lora_cfg.use_rslora,
            (unsigned)m->lora_targets);
    fclose(f);
    return ok;
}

// The input of target t in a layer's activations.
static const float *target_input(const qlora_llama_acts *A, int t) {
    switch (t) {
    case QLORA_TARGET_O: return A->ao;
    case QLORA_TARGET_GATE: case QLORA_TARGET_UP: return A->ln2;
    case QLORA_TARGET_DOWN: return A->a;
    default: return A->ln1;
    }
}

static int bits_equal(const void *a, const void *b, size_t n) { return memcmp(a, b, n) == 0; }

// Full-forward log-likelihood of cont after prompt (training path, B = 1).
static double full_score(qlora_model *m, const int32_t *prompt, int np, const int32_t *cont, int nc) {
    qlora_train_state ts;
    int32_t seq[64];
    int n = np + nc;
    memcpy(seq, prompt, sizeof(int32_t) * (size_t)np);
    memcpy(seq + np, cont, sizeof(int32_t) * (size_t)nc);
    if (qlora_train_state_init(&ts, m, 1, n, 0, NULL) != QLORA_OK) return NAN;
    double s = NAN;
    if (qlora_model_forward_eval(m, &ts, seq, NULL, NULL, NULL, NULL) == QLORA_OK) {
        int64_t V = m->cfg.vocab_size;
        float *row = (float *)malloc(sizeof(float) * (size_t)V);
        s = 0.0;
        for (int j = 0; j < nc; j++) {
            qlora_log_softmax(row, ts.logits + (int64_t)(np - 1 + j) * V, V);
            s += row[cont[j]];
        }
        free(row);
    }
    qlora_train_state_free(&ts);
    return s;
}

// Writes the model's adapters as a PEFT adapter directory (the test's own writer).
static int write_peft(const qlora_model *m, const char *dir) {
    qlora_st_entry e[3 * 7 * 2 * 8];
    char names[3 * 7 * 2 * 8][160];
    int n = 0;
    mkdir(dir, 0755);
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_lora *a = &m->layers[l].lora[t];
            if (!a->A) continue;
            for (int ab = 0; ab < 2; ab++) {
                snprintf(names[n], 160, "base_model.model.model.layers.%d.%s.lora_%c.weight", l,
                         qlora_target_path((qlora_target)t), ab ? 'B' : 'A');
                memset(&e[n], 0, sizeof e[n]);
                e[n].name = names[n];
                e[n].dtype = QLORA_DTYPE_F32;
                e[n].ndim = 2;
                e[n].shape[0] = ab ? a->out : a->rank;
                e[n].shape[1] = ab ? a->rank : a->in;
                e[n].data = ab ? a->B : a->A;
                n++;
            }
        }
    char path[768], json[1024];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (qlora_safetensors_write(path, e, n, NULL, NULL) != QLORA_OK) return 0;
    int k =
        snprintf(json, sizeof json,
                 "{\"peft_type\": \"LORA\", \"r\": %d, \"lora_alpha\": %g, \"lora_dropout\": 0.0, "
                 "\"use_rslora\": %s, \"bias\": \"none\", \"rank_pattern\": {}, \"target_modules\": [",
                 (int)m->lora_cfg.rank, (double)m->lora_cfg.alpha, m->lora_cfg.use_rslora ? "true" : "false");
    int first = 1;
    for (int t = 0; t < QLORA_TARGET_COUNT; t++)
        if ((m->lora_targets >> t) & 1u) {
            k += snprintf(json + k, sizeof json - (size_t)k, "%s\"%s\"", first ? "" : ", ",
                          qlora_target_name((qlora_target)t));
            first = 0;
        }
    snprintf(json + k, sizeof json - (size_t)k, "]}\n");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    return tu_write(path, json, strlen(json));
}

static int nf4_same(const qlora_nf4 *a, const qlora_nf4 *b) {
    int64_t n = a->rows * a->cols, nb = qlora_nf4_num_blocks(n, a->blocksize);
    if (a->rows != b->rows || a->cols != b->cols || a->blocksize != b->blocksize ||
        a->double_quant != b->double_quant)
        return 0;
    if (!bits_equal(a->codes, b->codes, (size_t)((n + 1) / 2))) return 0;
    if (!a->double_quant) return bits_equal(a->absmax, b->absmax, sizeof(float) * (size_t)nb);
    return bits_equal(a->qabsmax, b->qabsmax, (size_t)nb) && a->nested_offset == b->nested_offset &&
           bits_equal(a->nested_absmax, b->nested_absmax,
                      sizeof(float) * (size_t)qlora_nf4_num_blocks(nb, 256)) &&
           bits_equal(a->nested_map, b->nested_map, sizeof a->nested_map);
}

// C-side phase of one case: load, dump, and every check that needs no reference.
static void run_case(const tcase *tc, result *r) {
    char nm[160];
    qlora_error err;
    memset(&err, 0, sizeof err);
    const char *cs = tc->name;
    if (!read_meta(cs, &r->mt)) { tu_check(0, cs, "cannot read %s", cpath(cs, "meta.txt")); return; }
    qlora_model_options o;
    memset(&o, 0, sizeof o);
    o.lora.rank = tc->rank;
    o.lora.alpha = tc->alpha;
    o.lora.use_rslora = tc->rslora;
    o.lora_targets = tc->targets;
    o.lora_seed = 7;
    o.no_double_quant = tc->no_dq;
    qlora_model *m = &r->m;
    snprintf(nm, sizeof nm, "%s/load", cs);
    if (!tu_check(qlora_model_load(m, cpath(cs, "model"), &o, &err) == QLORA_OK, nm, "%s", err.detail)) return;
    const qlora_llama_config *c = &m->cfg;
    fill_lora_b(m, 1000 + (unsigned long long)tc->rank);
    snprintf(nm, sizeof nm, "%s/dump", cs);
    tu_check(dump_model(m, cs), nm, "cannot write %s", cpath(cs, "dump"));

    meta *mt = &r->mt;
    int64_t M = (int64_t)mt->B * mt->T, V = c->vocab_size, C = c->hidden_size;
    qlora_train_state ts, tc2;
    memset(&ts, 0, sizeof ts);
    memset(&tc2, 0, sizeof tc2);
    r->n_grads = count_grads(m);
    r->logits = (float *)malloc(sizeof(float) * (size_t)(M * V));
    r->grads = (float *)calloc((size_t)r->n_grads, sizeof(float));
    float *g2 = (float *)calloc((size_t)r->n_grads, sizeof(float));
    float loss = 0, loss2 = 0;
    int doubled;
    qlora_status st = qlora_train_state_init(&ts, m, mt->B, mt->T, 0, &err);
    if (st == QLORA_OK) st = qlora_train_state_init(&tc2, m, mt->B, mt->T, 1, &err);
    qlora_model_zero_grad(m);
    if (st == QLORA_OK) st = qlora_model_forward_train(m, &ts, mt->tokens, mt->mask, mt->labels, &loss, &err);
    if (st == QLORA_OK) st = qlora_model_backward(m, &ts, &err);
    snprintf(nm, sizeof nm, "%s/train_step", cs);
    if (!tu_check(st == QLORA_OK && isfinite(loss), nm, "%s (loss %g)", err.detail, (double)loss)) goto done;
    r->loss = ts.loss_sum / (double)ts.n_counted;
    memcpy(r->logits, ts.logits, sizeof(float) * (size_t)(M * V));
    gather_grads(m, r->grads);
    // checkpointing: bit-identical loss, logits and gradients
    qlora_model_zero_grad(m);
    st = qlora_model_forward_train(m, &tc2, mt->tokens, mt->mask, mt->labels, &loss2, &err);
    if (st == QLORA_OK) st = qlora_model_backward(m, &tc2, &err);
    gather_grads(m, g2);
    snprintf(nm, sizeof nm, "%s/checkpointing_bit_identical", cs);
    tu_check(st == QLORA_OK && loss == loss2 &&
                 bits_equal(ts.logits, tc2.logits, sizeof(float) * (size_t)(M * V)) &&
                 bits_equal(r->grads, g2, sizeof(float) * (size_t)r->n_grads),
             nm, "%s loss %.9g vs %.9g", err.detail, (double)loss, (double)loss2);
    // backward accumulates: a second forward/backward doubles the gradients exactly
    st = qlora_model_forward_train(m, &tc2, mt->tokens, mt->mask, mt->labels, NULL, &err);
    if (st == QLORA_OK) st = qlora_model_backward(m, &tc2, &err);
    gather_grads(m, g2);
    doubled = st == QLORA_OK;
    for (int64_t i = 0; i < r->n_grads && doubled; i++) doubled = g2[i] == 2.0f * r->grads[i];
    snprintf(nm, sizeof nm, "%s/backward_accumulates", cs);
    tu_check(doubled, nm, "%s", err.detail);
    snprintf(nm, sizeof nm, "%s/backward_twice_rejected", cs);
    tu_check(qlora_model_backward(m, &tc2, &err) == QLORA_ERR_ARG, nm,
             "second backward of one forward accepted");

    // dropout 0.1: masks dumped for the float64 reference; checkpointing still bit-identical
    if (strcmp(cs, "gqa") == 0) {
        float p = 0.1f;
        qlora_train_state d1, d2;
        qlora_rng saved[8][QLORA_TARGET_COUNT];
        m->lora_cfg.dropout = p;
        for (int l = 0; l < c->n_layers; l++)
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
                m->layers[l].lora[t].dropout = p;
                saved[l][t] = m->layers[l].lora[t].rng;
            }
        st = qlora_train_state_init(&d1, m, mt->B, mt->T, 0, &err);
        if (st == QLORA_OK) st = qlora_train_state_init(&d2, m, mt->B, mt->T, 1, &err);
        r->drop_grads = (float *)calloc((size_t)r->n_grads, sizeof(float));
        qlora_model_zero_grad(m);
        if (st == QLORA_OK)
            st = qlora_model_forward_train(m, &d1, mt->tokens, mt->mask, mt->labels, &loss, &err);
        mkdir(cpath(cs, "dump_drop"), 0755);
        int dumped = st == QLORA_OK;
        for (int l = 0; l < c->n_layers && dumped; l++)
            for (int t = 0; t < QLORA_TARGET_COUNT && dumped; t++) {
                const qlora_lora *a = &m->layers[l].lora[t];
                const qlora_lora_cache *ca = &d1.acts[l].cache[t];
                const float *x = target_input(&d1.acts[l], t);
                int64_t n = M * a->in;
                uint8_t *keep = (uint8_t *)malloc((size_t)n);
                for (int64_t i = 0; i < n; i++) keep[i] = ca->xd[i] != 0.0f || x[i] == 0.0f;
                snprintf(nm, sizeof nm, "dump_drop/mask.%d.%d.u8", l, t);
                dumped = ca->dropped && tu_write(cpath(cs, nm), keep, (size_t)n);
                free(keep);
            }
        FILE *f = fopen(cpath(cs, "dump_drop/dropout.txt"), "w");
        if (f) { fprintf(f, "%.9g\n", (double)p); fclose(f); }
        if (st == QLORA_OK) st = qlora_model_backward(m, &d1, &err);
        gather_grads(m, r->drop_grads);
        r->drop_loss = d1.loss_sum / (double)d1.n_counted;
        snprintf(nm, sizeof nm, "%s/dropout_masks_dumped", cs);
        tu_check(st == QLORA_OK && dumped, nm, "%s", err.detail);
        // rewind the adapters' RNG so the checkpointed run draws the same masks
        for (int l = 0; l < c->n_layers; l++)
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) m->layers[l].lora[t].rng = saved[l][t];
        qlora_model_zero_grad(m);
        if (st == QLORA_OK)
            st = qlora_model_forward_train(m, &d2, mt->tokens, mt->mask, mt->labels, &loss2, &err);
        if (st == QLORA_OK) st = qlora_model_backward(m, &d2, &err);
        gather_grads(m, g2);
        snprintf(nm, sizeof nm, "%s/dropout_checkpointing_bit_identical", cs);
        tu_check(st == QLORA_OK && loss == loss2 &&
                     bits_equal(r->drop_grads, g2, sizeof(float) * (size_t)r->n_grads),
                 nm, "%s loss %.9g vs %.9g", err.detail, (double)loss, (double)loss2);
        int differs = 0;
        for (int64_t i = 0; i < r->n_grads; i++) differs |= r->drop_grads[i] != r->grads[i];
        snprintf(nm, sizeof nm, "%s/dropout_changes_gradients", cs);
        tu_check(differs, nm, "dropout 0.1 left every gradient unchanged");
        qlora_train_state_free(&d1);
        qlora_train_state_free(&d2);
        m->lora_cfg.dropout = 0.0f;
        for (int l = 0; l < c->n_layers; l++)
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) m->layers[l].lora[t].dropout = 0.0f;
    }

    // KV cache: token-by-token decoding and chunked prefill against the full forward (row 0 is all real)
    {
        qlora_kv_cache kv;
        int T = mt->T;
        float *dec = (float *)malloc(sizeof(float) * (size_t)(T * V)),
              *last = (float *)malloc(sizeof(float) * (size_t)V);
        st = qlora_kv_cache_init(&kv, m, 48, 5, &err);
        for (int t = 0; t < T && st == QLORA_OK; t++)
            st = qlora_model_forward_decode(m, &kv, mt->tokens[t], t, dec + t * V, &err);
        snprintf(nm, sizeof nm, "%s/kv_decode_vs_full", cs);
        if (req(st == QLORA_OK, nm, err.detail)) {
            float mx = 0;
            for (int64_t i = 0; i < T * V; i++) mx = fmaxf(mx, fabsf(r->logits[i]));
            tu_close(nm, dec, r->logits, (long)(T * V), 1e-5 * mx, 1e-5);
            // rollback: decoding position 3 again gives the same logits
            snprintf(nm, sizeof nm, "%s/kv_rollback", cs);
            st = qlora_model_forward_decode(m, &kv, mt->tokens[3], 3, last, &err);
            tu_check(st == QLORA_OK && bits_equal(last, dec + 3 * V, sizeof(float) * (size_t)V) && kv.n == 4,
                     nm, "%s", err.detail);
            kv.n = 0;
            st = qlora_model_prefill(m, &kv, mt->tokens, T, last, &err);
            snprintf(nm, sizeof nm, "%s/kv_prefill_chunked", cs);
            if (req(st == QLORA_OK, nm, err.detail))
                tu_close(nm, last, r->logits + (T - 1) * V, (long)V, 1e-5 * mx, 1e-5);
        }
        // scoring: shared prompt cache against a full forward per continuation
        st = qlora_model_score(m, &kv, mt->prompt, mt->n_prompt, (const int32_t *const *)NULL, NULL, 0, NULL,
                               &err);
        const int32_t *cp[4];
        for (int k = 0; k < mt->n_conts; k++) cp[k] = mt->conts[k];
        st = qlora_model_score(m, &kv, mt->prompt, mt->n_prompt, cp, mt->cont_lens, mt->n_conts, r->scores,
                               &err);
        snprintf(nm, sizeof nm, "%s/score_vs_full_forward", cs);
        if (req(st == QLORA_OK, nm, err.detail)) {
            double want[4];
            for (int k = 0; k < mt->n_conts; k++)
                want[k] = full_score(m, mt->prompt, mt->n_prompt, mt->conts[k], (int)mt->cont_lens[k]);
            tu_close_d(nm, r->scores, want, mt->n_conts, 1e-4, 1e-5);
        }
        // embedding: against the mean of the full forward's final hidden states
        r->embed = (float *)malloc(sizeof(float) * (size_t)C);
        st = qlora_model_embed(m, &kv, mt->emb, mt->n_emb, r->embed, &err);
        snprintf(nm, sizeof nm, "%s/embed_vs_full_forward", cs);
        if (req(st == QLORA_OK, nm, err.detail)) {
            qlora_train_state te;
            float *want = (float *)calloc((size_t)C, sizeof(float));
            if (qlora_train_state_init(&te, m, 1, mt->n_emb, 0, NULL) == QLORA_OK &&
                qlora_model_forward_eval(m, &te, mt->emb, NULL, NULL, NULL, NULL) == QLORA_OK) {
                for (int i = 0; i < mt->n_emb; i++)
                    for (int64_t j = 0; j < C; j++) want[j] += te.lnf[i * C + j] / (float)mt->n_emb;
            }
            tu_close(nm, r->embed, want, (long)C, 1e-5, 1e-4);
            qlora_train_state_free(&te);
            free(want);
        }
        // greedy generation (compared with torch later); sampling is seeded and top-p → 0 is greedy
        qlora_generate_options go;
        memset(&go, 0, sizeof go);
        go.no_stop_at_eos = 1;
        st = qlora_model_generate(m, &kv, mt->prompt, mt->n_prompt, mt->n_gen, &go, r->gen, &r->n_gen, &err);
        snprintf(nm, sizeof nm, "%s/generate_greedy_runs", cs);
        tu_check(st == QLORA_OK && r->n_gen == mt->n_gen, nm, "%s (%lld tokens)", err.detail,
                 (long long)r->n_gen);
        int32_t s1[32], s2[32], s3[32];
        int64_t n1 = 0, n2 = 0, n3 = 0;
        go.temperature = 1.5f;
        go.top_p = 0.9f;
        go.seed = 42;
        st = qlora_model_generate(m, &kv, mt->prompt, mt->n_prompt, mt->n_gen, &go, s1, &n1, &err);
        if (st == QLORA_OK)
            st = qlora_model_generate(m, &kv, mt->prompt, mt->n_prompt, mt->n_gen, &go, s2, &n2, &err);
        go.top_p = 1e-6f;
        if (st == QLORA_OK)
            st = qlora_model_generate(m, &kv, mt->prompt, mt->n_prompt, mt->n_gen, &go, s3, &n3, &err);
        snprintf(nm, sizeof nm, "%s/sampling_seeded_top_p", cs);
        tu_check(st == QLORA_OK && n1 == n2 && bits_equal(s1, s2, sizeof(int32_t) * (size_t)n1) &&
                 n3 == r->n_gen && bits_equal(s3, r->gen, sizeof(int32_t) * (size_t)n3), nm,
                 "%s: reproducible %d, top_p→0 greedy %d", st == QLORA_OK ? "" : err.detail,
                 n1 == n2 && bits_equal(s1, s2, sizeof(int32_t) * (size_t)n1),
                 n3 == r->n_gen && bits_equal(s3, r->gen, sizeof(int32_t) * (size_t)n3));
        free(dec);
        free(last);
        qlora_kv_cache_free(&kv);
    }

    // bitsandbytes 4-bit round trip: save, reload as stored, identical quantized weights
    {
        qlora_model b;
        mkdir(cpath(cs, "bnb"), 0755);
        st = qlora_model_save_bnb4(m, cpath(cs, "bnb"), &err);
        qlora_model_options ob;
        memset(&ob, 0, sizeof ob);
        ob.blocksize = 128;   // ignored for stored 4-bit weights: their quant_state decides
        if (st == QLORA_OK) st = qlora_model_load(&b, cpath(cs, "bnb"), &ob, &err);
        snprintf(nm, sizeof nm, "%s/bnb4_roundtrip", cs);
        if (req(st == QLORA_OK, nm, err.detail)) {
            int same = b.cfg.hidden_size == c->hidden_size && b.cfg.rope_theta == c->rope_theta &&
                       b.cfg.rope_scaling_factor == c->rope_scaling_factor &&
                       b.cfg.rms_norm_eps == c->rms_norm_eps &&
                       b.cfg.tie_word_embeddings == c->tie_word_embeddings && b.cfg.head_dim == c->head_dim &&
                       b.cfg.n_kv_heads == c->n_kv_heads &&
                       bits_equal(b.embed, m->embed, sizeof(float) * (size_t)(V * C)) &&
                       bits_equal(b.lm_head, m->lm_head, sizeof(float) * (size_t)(V * C));
            for (int l = 0; l < c->n_layers && same; l++)
                for (int t = 0; t < QLORA_TARGET_COUNT && same; t++)
                    same = nf4_same(&b.layers[l].w[t], &m->layers[l].w[t]);
            tu_check(same, nm, "reloaded weights differ");
            // PEFT adapter round trip: the reloaded model + the adapter gives bit-identical logits
            char adir[600];
            snprintf(adir, sizeof adir, "%s", cpath(cs, "adapter"));
            snprintf(nm, sizeof nm, "%s/peft_adapter_roundtrip", cs);
            qlora_train_state tb, tb0;
            qlora_kv_cache kv0;
            memset(&tb, 0, sizeof tb);
            int stale = qlora_train_state_init(&tb0, &b, mt->B, mt->T, 0, &err) == QLORA_OK &&
                        qlora_kv_cache_init(&kv0, &b, 8, 0, &err) == QLORA_OK;
            st = write_peft(m, adir) ? qlora_model_load_adapter(&b, adir, &err) : QLORA_ERR_IO;
            // states sized before the adapters arrived are refused, not overrun
            stale =
                stale && st == QLORA_OK &&
                qlora_model_forward_eval(&b, &tb0, mt->tokens, mt->mask, NULL, NULL, NULL) == QLORA_ERR_ARG &&
                qlora_model_prefill(&b, &kv0, mt->tokens, 2, NULL, NULL) == QLORA_ERR_ARG;
            qlora_train_state_free(&tb0);
            qlora_kv_cache_free(&kv0);
            snprintf(nm, sizeof nm, "%s/stale_state_rejected", cs);
            tu_check(stale, nm, "a train state / KV cache sized without adapters was used after load_adapter");
            snprintf(nm, sizeof nm, "%s/peft_adapter_roundtrip", cs);
            if (st == QLORA_OK) st = qlora_train_state_init(&tb, &b, mt->B, mt->T, 0, &err);
            if (st == QLORA_OK) st = qlora_model_forward_eval(&b, &tb, mt->tokens, mt->mask, NULL, NULL, &err);
            tu_check(st == QLORA_OK && b.lora_targets == m->lora_targets &&
                     bits_equal(tb.logits, r->logits, sizeof(float) * (size_t)(M * V)), nm, "%s", err.detail);
            qlora_train_state_free(&tb);
            // An adapter as PEFT writes it for mixed ranks and untouched modules (rank_pattern, a module
            // left out): layer 0 v_proj at rank 2, the last layer's o_proj without an adapter. Saved with
            // qlora_adapter_save and loaded by qlora_model_load_adapter into a fresh copy of the base, it gives
            // the logits of the model it was saved from.
            snprintf(nm, sizeof nm, "%s/peft_rank_pattern_through_model_load", cs);
            if (st == QLORA_OK) {
                const int L = c->n_layers;
                qlora_lora *lv = &b.layers[0].lora[QLORA_TARGET_V];
                qlora_lora_config lc = b.lora_cfg;
                lc.rank = 2;
                const int64_t vin = lv->in, vout = lv->out;
                qlora_lora_free(lv);
                st = qlora_lora_init(lv, vin, vout, &lc, 77, &err);
                for (int64_t i = 0; st == QLORA_OK && i < vout * 2; i++) lv->B[i] = 0.01f * (float)((i * 7) % 11 - 5);
                qlora_lora_free(&b.layers[L - 1].lora[QLORA_TARGET_O]);
                qlora_adapter_module mods[8 * QLORA_TARGET_COUNT];
                char mnames[8 * QLORA_TARGET_COUNT][64];
                int64_t nm_ = 0;
                for (int l = 0; l < L && l < 8; l++)
                    for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
                        if (!b.layers[l].lora[t].A) continue;
                        snprintf(mnames[nm_], 64, "model.layers.%d.%s", l, qlora_target_path((qlora_target)t));
                        mods[nm_].name = mnames[nm_];
                        mods[nm_].lora = &b.layers[l].lora[t];
                        mods[nm_].in = mods[nm_].out = 0;
                        nm_++;
                    }
                char pdir[600];
                snprintf(pdir, sizeof pdir, "%s", cpath(cs, "adapter_mixed"));
                qlora_model b2;
                memset(&b2, 0, sizeof b2);
                qlora_train_state t1, t2;
                memset(&t1, 0, sizeof t1);
                memset(&t2, 0, sizeof t2);
                if (st == QLORA_OK) st = qlora_adapter_save(pdir, mods, nm_, NULL, &err);
                if (st == QLORA_OK) st = qlora_model_load(&b2, cpath(cs, "bnb"), &ob, &err);
                if (st == QLORA_OK) st = qlora_model_load_adapter(&b2, pdir, &err);
                if (st == QLORA_OK) st = qlora_train_state_init(&t1, &b, mt->B, mt->T, 0, &err);
                if (st == QLORA_OK) st = qlora_train_state_init(&t2, &b2, mt->B, mt->T, 0, &err);
                if (st == QLORA_OK) st = qlora_model_forward_eval(&b, &t1, mt->tokens, mt->mask, NULL, NULL, &err);
                if (st == QLORA_OK) st = qlora_model_forward_eval(&b2, &t2, mt->tokens, mt->mask, NULL, NULL, &err);
                tu_check(st == QLORA_OK && b2.layers[0].lora[QLORA_TARGET_V].rank == 2 &&
                             !b2.layers[L - 1].lora[QLORA_TARGET_O].A && b2.lora_cfg.rank == m->lora_cfg.rank &&
                             bits_equal(t1.logits, t2.logits, sizeof(float) * (size_t)(M * V)),
                         nm, "%s", err.detail);
                qlora_train_state_free(&t1);
                qlora_train_state_free(&t2);
                qlora_model_free(&b2);
            }
            qlora_model_free(&b);
        }
    }
    r->ok = 1;
done:
    free(g2);
    qlora_train_state_free(&ts);
    qlora_train_state_free(&tc2);
}

// Comparison with the float64 reference.
static void compare_case(const tcase *tc, result *r) {
    char nm[160], detail[1024];
    const char *cs = tc->name;
    if (!r->ok) return;
    qlora_model *m = &r->m;
    meta *mt = &r->mt;
    int64_t M = (int64_t)mt->B * mt->T, V = m->cfg.vocab_size, C = m->cfg.hidden_size;
    snprintf(nm, sizeof nm, "%s/weights_match_checkpoint", cs);
    tu_check(file_says_ok(cpath(cs, "ref/weights_check.txt"), detail, sizeof detail), nm, "%s", detail);
    snprintf(nm, sizeof nm, "%s/bnb4_independent_dequant", cs);
    tu_check(file_says_ok(cpath(cs, "ref/bnb_check.txt"), detail, sizeof detail), nm, "%s", detail);

    float *want = read_f32(cpath(cs, "ref/logits.f32"), M * V);
    snprintf(nm, sizeof nm, "%s/logits_vs_torch", cs);
    if (req(want != NULL, nm, "missing reference logits")) {
        float mx = 0;
        for (int64_t i = 0; i < M * V; i++) mx = fmaxf(mx, fabsf(want[i]));
        // only rows of real tokens (padding query rows are defined differently from HF's)
        float *g = (float *)malloc(sizeof(float) * (size_t)(M * V)),
              *w = (float *)malloc(sizeof(float) * (size_t)(M * V));
        long n = 0;
        for (int64_t i = 0; i < M; i++)
            if (mt->mask[i]) {
                memcpy(g + n, r->logits + i * V, sizeof(float) * (size_t)V);
                memcpy(w + n, want + i * V, sizeof(float) * (size_t)V);
                n += (long)V;
            }
        tu_close(nm, g, w, n, 1e-4 * mx, 1e-4);
        free(g);
        free(w);
    }
    free(want);
    double wl = NAN;
    snprintf(nm, sizeof nm, "%s/loss_vs_torch", cs);
    if (req(tu_read(cpath(cs, "ref/loss.f64"), &wl, sizeof wl), nm, "missing reference loss"))
        tu_close_d(nm, &r->loss, &wl, 1, 1e-6, 1e-5);

    // gradients, tensor by tensor
    int bad = 0, total = 0;
    char first[256] = "";
    for (int pass = 0; pass < 2; pass++) {
        const float *mine = pass ? r->drop_grads : r->grads;
        if (!mine) continue;
        const float *g = mine;
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
                const qlora_lora *a = &m->layers[l].lora[t];
                if (!a->A) continue;
                for (int ab = 0; ab < 2; ab++) {
                    int64_t n = ab ? a->out * a->rank : a->rank * a->in;
                    char fn[96];
                    snprintf(fn, sizeof fn, "ref/%sgrad.%d.%d.%c.f32", pass ? "drop_" : "", l, t,
                             ab ? 'B' : 'A');
                    float *w = read_f32(cpath(cs, fn), n);
                    total++;
                    if (!w) {
                        bad++;
                        if (!first[0]) snprintf(first, sizeof first, "%s missing", fn);
                        g += n;
                        continue;
                    }
                    float mx = 0;
                    for (int64_t i = 0; i < n; i++) mx = fmaxf(mx, fabsf(w[i]));
                    for (int64_t i = 0; i < n; i++)
                        if (!(fabsf(g[i] - w[i]) <= 1e-3f * mx + 1e-3f * fabsf(w[i]))) {
                            bad++;
                            if (!first[0])
                                snprintf(first, sizeof first, "%s[%lld]: got %.7g want %.7g (max %.3g)", fn,
                                         (long long)i, (double)g[i], (double)w[i], (double)mx);
                            break;
                        }
                    free(w);
                    g += n;
                }
            }
        snprintf(nm, sizeof nm, "%s/%slora_grads_vs_autograd", cs, pass ? "dropout_" : "");
        tu_check(bad == 0 && total > 0, nm, "%d of %d tensors off; first %s", bad, total, first);
        bad = total = 0;
        first[0] = 0;
    }
    if (r->drop_grads) {
        double dl = NAN;
        snprintf(nm, sizeof nm, "%s/dropout_loss_vs_torch", cs);
        if (req(tu_read(cpath(cs, "ref/drop_loss.f64"), &dl, sizeof dl), nm, "missing"))
            tu_close_d(nm, &r->drop_loss, &dl, 1, 1e-6, 1e-5);
        // finite differences (float64, fixed masks) of single entries
        FILE *f = fopen(cpath(cs, "ref/fd.txt"), "r");
        int l, t, n = 0, nbad = 0;
        char ab[4];
        long long idx;
        double fd;
        first[0] = 0;
        while (f && fscanf(f, "%d %d %3s %lld %lf", &l, &t, ab, &idx, &fd) == 5) {
            const qlora_lora *a = &m->layers[l].lora[t];
            // locate the entry in drop_grads
            const float *g = r->drop_grads;
            for (int ll = 0; ll <= l; ll++)
                for (int tt = 0; tt < QLORA_TARGET_COUNT; tt++) {
                    const qlora_lora *x = &m->layers[ll].lora[tt];
                    if (!x->A || (ll == l && tt == t)) { if (ll == l && tt == t) goto found; continue; }
                    g += x->rank * (x->in + x->out);
                }
        found:
            if (ab[0] == 'B') g += a->rank * a->in;
            n++;
            if (!(fabs((double)g[idx] - fd) <= 1e-3 * fabs(fd) + 1e-6)) {
                nbad++;
                if (!first[0])
                    snprintf(first, sizeof first, "%d.%d.%s[%lld]: got %.7g fd %.7g", l, t, ab, idx,
                             (double)g[idx], fd);
            }
        }
        if (f) fclose(f);
        snprintf(nm, sizeof nm, "%s/dropout_finite_differences", cs);
        tu_check(n > 0 && nbad == 0, nm, "%d of %d entries off; first %s", nbad, n, first);
    }

    int32_t gen[32];
    snprintf(nm, sizeof nm, "%s/greedy_tokens_vs_torch", cs);
    if (req(tu_read(cpath(cs, "ref/gen.i32"), gen, sizeof(int32_t) * (size_t)mt->n_gen), nm, "missing")) {
        int same = r->n_gen == mt->n_gen && bits_equal(gen, r->gen, sizeof(int32_t) * (size_t)mt->n_gen);
        int at = 0;
        while (at < mt->n_gen && gen[at] == r->gen[at]) at++;
        tu_check(same, nm, "first difference at token %d: got %d want %d", at,
                 at < mt->n_gen ? (int)r->gen[at] : -1, at < mt->n_gen ? (int)gen[at] : -1);
    }
    double sc[4];
    snprintf(nm, sizeof nm, "%s/score_vs_torch", cs);
    if (req(tu_read(cpath(cs, "ref/score.f64"), sc, sizeof(double) * (size_t)mt->n_conts), nm, "missing"))
        tu_close_d(nm, r->scores, sc, mt->n_conts, 1e-4, 1e-5);
    float *we = read_f32(cpath(cs, "ref/embed.f32"), C);
    snprintf(nm, sizeof nm, "%s/embed_vs_torch", cs);
    if (req(we != NULL, nm, "missing")) tu_close(nm, r->embed, we, (long)C, 1e-5, 1e-4);
    free(we);
}

static int contains(const char *s, const char *needle) { return strstr(s, needle) != NULL; }

static void check_bad(const char *name, qlora_status want, const char *n1, const char *n2, const char *n3) {
    qlora_model m;
    qlora_error err;
    char nm[128], dir[600];
    memset(&err, 0, sizeof err);
    snprintf(dir, sizeof dir, "%s/bad/%s", ROOT, name);
    qlora_model_options o;
    memset(&o, 0, sizeof o);
    o.lora.rank = 2;
    o.lora.alpha = 4;
    qlora_status st = qlora_model_load(&m, dir, &o, &err);
    snprintf(nm, sizeof nm, "bad_input/%s", name);
    tu_check(st == want && contains(err.detail, n1) && (!n2 || contains(err.detail, n2)) &&
                 (!n3 || contains(err.detail, n3)) && m.layers == NULL && m.arena == NULL,
             nm, "status %s, detail \"%s\"", qlora_status_string(st), err.detail);
    qlora_model_free(&m);
}

static void check_api_errors(result *r) {
    qlora_error err;
    memset(&err, 0, sizeof err);
    if (!r->ok) return;
    qlora_model *m = &r->m;
    qlora_train_state ts;
    qlora_kv_cache kv;
    int32_t toks[4] = { 1, 2, 3, 100000 };
    tu_check(qlora_train_state_init(&ts, m, 1, 4, 0, &err) == QLORA_OK, "api/train_state_small", "%s",
             err.detail);
    tu_check(qlora_model_forward_train(m, &ts, toks, NULL, NULL, NULL, &err) == QLORA_ERR_ARG &&
                 contains(err.detail, "100000"),
             "api/bad_token", "%s", err.detail);
    tu_check(qlora_model_backward(m, &ts, &err) == QLORA_ERR_ARG, "api/backward_without_forward", "%s",
             err.detail);
    int32_t lab[4] = { 1, 2, -5, 3 };
    toks[3] = 4;
    tu_check(qlora_model_forward_train(m, &ts, toks, NULL, lab, NULL, &err) == QLORA_ERR_ARG, "api/bad_label",
             "%s", err.detail);
    qlora_train_state_free(&ts);
    int64_t bytes = 0, bytes_ck = 0;
    tu_check(qlora_train_state_bytes(m, 1, m->cfg.max_position_embeddings + 1, 0, &bytes, &err) ==
                 QLORA_ERR_ARG,
             "api/T_over_max_position", "%s", err.detail);
    tu_check(qlora_train_state_bytes(m, 2, 32, 0, &bytes, &err) == QLORA_OK &&
             qlora_train_state_bytes(m, 2, 32, 1, &bytes_ck, &err) == QLORA_OK && bytes_ck < bytes,
             "api/checkpointing_saves_memory", "%lld vs %lld", (long long)bytes_ck, (long long)bytes);
    tu_check(qlora_kv_cache_init(&kv, m, 4, 0, &err) == QLORA_OK, "api/kv_small", "%s", err.detail);
    int32_t five[5] = { 1, 2, 3, 4, 5 };
    tu_check(qlora_model_prefill(m, &kv, five, 5, NULL, &err) == QLORA_ERR_ARG, "api/kv_overflow", "%s",
             err.detail);
    tu_check(qlora_model_forward_decode(m, &kv, 1, 3, NULL, &err) == QLORA_ERR_ARG, "api/decode_past_end", "%s",
             err.detail);
    qlora_kv_cache_free(&kv);
}

static void check_random_init(void) {
    qlora_llama_config cfg;
    qlora_error err;
    qlora_model m;
    memset(&err, 0, sizeof err);
    const char *js =
        "{\"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2, \"num_attention_heads\": 4,"
        " \"num_key_value_heads\": 2, \"vocab_size\": 100, \"max_position_embeddings\": 32,"
        " \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 4.0}, \"eos_token_id\": [7, 8],"
        " \"pad_token_id\": null}";
    qlora_status st = qlora_llama_config_parse(&cfg, js, strlen(js), "inline", &err);
    tu_check(st == QLORA_OK && cfg.head_dim == 16 && cfg.n_kv_heads == 2 && cfg.rope_scaling_factor == 4.0f &&
                 cfg.eos_token_id == 7 && cfg.pad_token_id == -1 && cfg.bos_token_id == 1 &&
                 cfg.rms_norm_eps == 1e-6f,
             "config/defaults_and_lists", "%s", err.detail);
    const char *bad = "{\"hidden_size\": \"64\"}";
    st = qlora_llama_config_parse(&cfg, bad, strlen(bad), "inline", &err);
    tu_check(st == QLORA_ERR_FORMAT && contains(err.detail, "hidden_size"), "config/wrong_type", "%s",
             err.detail);
    st = qlora_llama_config_parse(&cfg, js, strlen(js), "inline", &err);
    qlora_model_options o;
    memset(&o, 0, sizeof o);
    o.lora.rank = 4;
    o.lora.alpha = 8;
    o.lora.dropout = 0.05f;
    st = qlora_model_init_random(&m, &cfg, &o, 123, &err);
    if (!tu_check(st == QLORA_OK, "random_init/make", "%s", err.detail)) return;
    qlora_train_state ts;
    int32_t toks[2 * 8];
    for (int i = 0; i < 16; i++) toks[i] = (i * 37) % 100;
    float loss = 0;
    st = qlora_train_state_init(&ts, &m, 2, 8, 1, &err);
    if (st == QLORA_OK) st = qlora_model_forward_train(&m, &ts, toks, NULL, toks, &loss, &err);
    if (st == QLORA_OK) st = qlora_model_backward(&m, &ts, &err);
    // a random model predicts ≈ uniformly: loss ≈ ln V
    tu_check(st == QLORA_OK && fabsf(loss - logf(100.0f)) < 0.5f &&
                 qlora_model_lora_params(&m) == 2 * 4 * (4 * 64 + 64 + 32 + 32 + 64 + 2 * (64 + 96) + 96 + 64),
             "random_init/train_step", "%s loss %g params %lld", err.detail, (double)loss,
             (long long)qlora_model_lora_params(&m));
    qlora_train_state_free(&ts);
    qlora_model_free(&m);
}

// Decoding with QLORA_COMPUTE_BF16 (dims that are multiples of 128, so every projection takes the bf16
// GEMV): the logits stay within bf16 precision of fp32 decoding without being equal to them, and so
// do those of the scalar bf16 reference (test_kernels compares the kernels tightly; through a model,
// a one-ulp difference upstream can move an activation across a bf16 rounding boundary).
// A model with random NF4 weights from an inline config.json; LoRA r 4, alpha 8 on all seven projections.
static qlora_status make_inline_model(qlora_model *m, const char *js, uint64_t seed, qlora_error *err) {
    qlora_llama_config cfg;
    memset(err, 0, sizeof *err);
    qlora_status st = qlora_llama_config_parse(&cfg, js, strlen(js), "inline", err);
    qlora_model_options o;
    memset(&o, 0, sizeof o);
    o.lora.rank = 4;
    o.lora.alpha = 8;
    if (st == QLORA_OK) st = qlora_model_init_random(m, &cfg, &o, seed, err);
    return st;
}

static void check_decode_bf16(void) {
    qlora_error err;
    qlora_model m;
    const char *js = "{\"hidden_size\": 128, \"intermediate_size\": 256, \"num_hidden_layers\": 2, "
                     "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 100, "
                     "\"max_position_embeddings\": 32}";
    qlora_status st = make_inline_model(&m, js, 321, &err);
    if (!tu_check(st == QLORA_OK, "decode_bf16/make", "%s", err.detail)) return;
    static const qlora_exec runs[3] = { { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_F32 },
                                        { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_BF16 },
                                        { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_BF16 } };
    const int32_t prompt[5] = { 3, 17, 42, 99, 5 }, next[3] = { 11, 64, 2 };
    float logits[3][3 * 100];
    for (int r = 0; r < 3 && st == QLORA_OK; r++) {
        qlora_kv_cache kv;
        m.exec = runs[r];
        st = qlora_kv_cache_init(&kv, &m, 16, 0, &err);
        if (st == QLORA_OK) st = qlora_model_prefill(&m, &kv, prompt, 5, logits[r], &err);
        for (int t = 0; t < 3 && st == QLORA_OK; t++)
            st = qlora_model_forward_decode(&m, &kv, next[t], kv.n, logits[r] + t * 100, &err);
        qlora_kv_cache_free(&kv);
    }
    m.exec = runs[0];
    if (tu_check(st == QLORA_OK, "decode_bf16/run", "%s", err.detail)) {
        double maxabs = 0.0, d_ref = 0.0, d_f32 = 0.0;
        for (int i = 0; i < 300; i++) {
            maxabs = fmax(maxabs, fabs(logits[0][i]));
            d_ref = fmax(d_ref, fabs((double)logits[1][i] - logits[2][i]));
            d_f32 = fmax(d_f32, fabs((double)logits[1][i] - logits[0][i]));
        }
        tu_check(d_ref <= 2e-2 * maxabs, "decode_bf16/kernels_vs_bf16_reference", "max diff %.3g of %.3g", d_ref, maxabs);
        tu_check(d_f32 <= 2e-2 * maxabs && d_f32 > 0.0, "decode_bf16/within_bf16_of_fp32",
                 "max diff %.3g of %.3g", d_f32, maxabs);
    }
    qlora_model_free(&m);
}

// Training with QLORA_COMPUTE_BF16 (the GEMM form: NF4 projections and lm_head in bf16, sums in fp32):
// 32 tokens, so every frozen matmul has more than 8 rows. The loss and every LoRA gradient stay within
// bf16 precision of the fp32 step without being equal to it; the kernels agree with the bf16 REF
// path as closely; the result does not depend on the thread count (bit-identical with 1 and 2).
static double rel_l2(const float *a, const float *b, int64_t n) {
    double d = 0.0, z = 0.0;
    for (int64_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        z += (double)b[i] * b[i];
    }
    return z > 0.0 ? sqrt(d / z) : sqrt(d);
}

static void check_train_bf16(void) {
    qlora_error err;
    qlora_model m;
    const char *js = "{\"hidden_size\": 96, \"intermediate_size\": 160, \"num_hidden_layers\": 2, "
                     "\"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"vocab_size\": 150, "
                     "\"max_position_embeddings\": 32, \"tie_word_embeddings\": false}";
    qlora_status st = make_inline_model(&m, js, 77, &err);
    if (!tu_check(st == QLORA_OK, "train_bf16/make", "%s", err.detail)) return;
    fill_lora_b(&m, 4242);
    enum { B = 2, T = 16 };
    int32_t tokens[B * T], labels[B * T];
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)((i * 37 + 11) % 150);
        labels[i] = i % 5 == 0 ? -100 : (int32_t)((i * 53 + 7) % 150);
    }
    const int64_t ng = count_grads(&m);
    static const qlora_exec runs[4] = { { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_F32 },
                                        { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_BF16 },
                                        { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_BF16 },
                                        { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_BF16 } };   // 1 thread
    float *g[4], loss[4] = { 0, 0, 0, 0 };
    qlora_train_state ts;
    memset(&ts, 0, sizeof ts);
    st = qlora_train_state_init(&ts, &m, B, T, 0, &err);
    for (int r = 0; r < 4; r++) {
        g[r] = (float *)calloc((size_t)ng, sizeof(float));
#ifdef _OPENMP
        const int saved = omp_get_max_threads();
        if (r == 3) omp_set_num_threads(1);
#endif
        m.exec = runs[r];
        qlora_model_zero_grad(&m);
        if (st == QLORA_OK) st = qlora_model_forward_train(&m, &ts, tokens, NULL, labels, &loss[r], &err);
        if (st == QLORA_OK) st = qlora_model_backward(&m, &ts, &err);
        if (st == QLORA_OK) gather_grads(&m, g[r]);
#ifdef _OPENMP
        omp_set_num_threads(saved);
#endif
    }
    m.exec = runs[0];
    if (tu_check(st == QLORA_OK && isfinite(loss[0]) && isfinite(loss[1]), "train_bf16/run", "%s", err.detail)) {
        const double d_f32 = rel_l2(g[1], g[0], ng), d_ref = rel_l2(g[1], g[2], ng);
        tu_check(fabs((double)loss[1] - loss[0]) <= 1e-2 * fabs((double)loss[0]) && loss[1] != loss[0],
                 "train_bf16/loss_within_bf16_of_fp32", "bf16 %.9g fp32 %.9g", (double)loss[1], (double)loss[0]);
        tu_check(d_f32 <= 3e-2 && d_f32 > 0.0, "train_bf16/lora_grads_within_bf16_of_fp32",
                 "relative L2 distance %.3g", d_f32);
        tu_check(d_ref <= 3e-2, "train_bf16/kernels_vs_bf16_reference", "relative L2 distance %.3g", d_ref);
        tu_check(!memcmp(g[1], g[3], sizeof(float) * (size_t)ng) && loss[1] == loss[3],
                 "train_bf16/bit_identical_1_and_2_threads", "gradients differ");
    }
    for (int r = 0; r < 4; r++) free(g[r]);
    qlora_train_state_free(&ts);
    qlora_model_free(&m);
}

// qlora_sample_token against the distribution it should draw from: p = softmax(logits / temperature)
// restricted to the top-p set and renormalized.
static void check_sampler(void) {
    qlora_kv_cache kv;
    float probs[4], logits[4] = { 0, 0, 0, 0 }, p[4] = { 0.5f, 0.3f, 0.15f, 0.05f };
    int32_t idx[4];
    memset(&kv, 0, sizeof kv);
    kv.probs = probs;
    kv.idx = idx;
    for (int i = 0; i < 4; i++) logits[(i + 1) % 4] = logf(p[i]);   // token (i+1)%4 has probability p[i]
    qlora_rng rng;
    qlora_rng_seed(&rng, 5);
    struct { float temp, top_p; double want[4]; const char *name; } cs[3] = {
        { 1.0f, 1.0f, { 0.05, 0.5, 0.3, 0.15 }, "sampler/temperature_1" },
        { 1.0f, 0.7f, { 0.0, 0.625, 0.375, 0.0 }, "sampler/top_p_0.7" },
        { 2.0f, 0.0f, { 0.0, 0.0, 0.0, 0.0 }, "sampler/temperature_2" },
    };
    double z = 0;   // temperature 2: p^(1/2) renormalized
    for (int i = 0; i < 4; i++) z += sqrt(p[i]);
    for (int i = 0; i < 4; i++) cs[2].want[(i + 1) % 4] = sqrt(p[i]) / z;
    const int n = 20000;
    for (int c = 0; c < 3; c++) {
        double freq[4] = { 0, 0, 0, 0 };
        for (int k = 0; k < n; k++) {
            int32_t t = qlora_sample_token(&kv, logits, 4, cs[c].temp, cs[c].top_p, &rng);
            if (t >= 0 && t < 4) freq[t] += 1.0 / n;
        }
        tu_close_d(cs[c].name, freq, cs[c].want, 4, 0.015, 0.0);
    }
    tu_check(qlora_sample_token(&kv, logits, 4, 0.0f, 0.5f, &rng) == 1, "sampler/greedy", "argmax not chosen");
}

int main(void) {
    snprintf(ROOT, sizeof ROOT, "%s", tu_path("llama"));
    check_random_init();
    check_decode_bf16();
    check_train_bf16();
    check_sampler();
    if (!tu_have_python("numpy")) {
        tu_skip("llama/reference_models", "/usr/bin/python3 with numpy is not available");
        return tu_finish();
    }
    mkdir(tu_tmpdir(), 0755);
    if (!tu_check(tu_python("test/ref/llama_ref.py make %s", ROOT) == 0, "llama/make_models",
                  "llama_ref.py make failed"))
        return tu_finish();
    static result res[N_CASES];
    for (int i = 0; i < N_CASES; i++) run_case(&CASES[i], &res[i]);
    check_api_errors(&res[0]);

    check_bad("no_config", QLORA_ERR_IO, "config.json", NULL, NULL);
    check_bad("truncated", QLORA_ERR_FORMAT, "model.safetensors", NULL, NULL);
    check_bad("contradict", QLORA_ERR_SHAPE, "model.layers.0.mlp.gate_proj.weight", "[97, 48]", "[96, 48]");
    check_bad("dtype_i32", QLORA_ERR_UNSUPPORTED, "model.layers.0.mlp.up_proj.weight", "I32",
              "model.safetensors");
    check_bad("dtype_unknown", QLORA_ERR_FORMAT, "model.safetensors", "Q7", NULL);
    check_bad("missing_tensor", QLORA_ERR_FORMAT, "model.layers.0.mlp.down_proj.weight", NULL, NULL);
    check_bad("rope_dynamic", QLORA_ERR_UNSUPPORTED, "dynamic", "config.json", NULL);
    check_bad("heads", QLORA_ERR_FORMAT, "num_key_value_heads", "config.json", NULL);
    check_bad("gelu", QLORA_ERR_UNSUPPORTED, "gelu", NULL, NULL);
    check_bad("shard_missing", QLORA_ERR_IO, "model-00002-of-00002.safetensors", NULL, NULL);
    check_bad("does_not_exist", QLORA_ERR_IO, "config.json", NULL, NULL);
    // a config.json that claims more than the files hold fails on the tensors, before any allocation it sizes
    // (the vocabulary would be 77 GB of fp32 embedding: an allocation first would fail with NOMEM instead)
    check_bad("claims_vocab", QLORA_ERR_SHAPE, "model.embed_tokens.weight", "[400000000, 48]", NULL);
    check_bad("claims_layers", QLORA_ERR_FORMAT, "model.layers.1.input_layernorm.weight", "missing", NULL);
    check_bad("claims_positions", QLORA_ERR_UNSUPPORTED, "max_position_embeddings 2097152", NULL, NULL);

    if (!tu_have_python("torch numpy")) {
        tu_skip("llama/torch_reference", "/usr/bin/python3 with torch is not available");
    } else if (tu_check(tu_python("test/ref/llama_ref.py ref %s", ROOT) == 0, "llama/torch_reference",
                        "llama_ref.py ref failed")) {
        for (int i = 0; i < N_CASES; i++) compare_case(&CASES[i], &res[i]);
    }
    for (int i = 0; i < N_CASES; i++) {
        qlora_model_free(&res[i].m);
        free(res[i].logits);
        free(res[i].grads);
        free(res[i].drop_grads);
        free(res[i].embed);
    }
    return tu_finish();
}
