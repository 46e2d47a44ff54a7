// generate.c - sample from a Llama checkpoint (+ a PEFT LoRA adapter), or score candidate answers.
//
//   build/generate --model DIR [--adapter DIR] [--tokenizer FILE] [--prompt TEXT] [--max-new N]
//                  [--temp T] [--top-p P] [--seed S] [--ctx N] [--score "cand1|cand2|..."]
//
// DIR holds config.json and model.safetensors (or an index + shards), F32/F16/BF16 or bitsandbytes
// 4-bit; F32/F16/BF16 projections are quantized to NF4 while loading. The tokenizer is
// DIR/tokenizer.model (else DIR/tokenizer.json) unless --tokenizer names one. The prompt is encoded
// with BOS. Generation prints the text as it grows and stops after max-new tokens or at EOS;
// --temp 0 (the default) is greedy. --score prints, for each candidate, log p(candidate | prompt)
// summed over its tokens, the token count and the mean; each candidate is encoded on its own, so
// SentencePiece's dummy prefix makes it read as if preceded by a space.
#define _POSIX_C_SOURCE 200809L   // clock_gettime
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s --model DIR [--adapter DIR] [--tokenizer FILE] [--prompt TEXT] [--max-new N]\n"
            "          [--temp T] [--top-p P] [--seed S] [--ctx N] [--score \"cand1|cand2|...\"]\n"
            "  --max-new N   tokens to generate (default 64)\n"
            "  --temp T      sampling temperature; 0 = greedy (default 0)\n"
            "  --top-p P     nucleus sampling threshold (default 1 = off)\n"
            "  --seed S      sampling seed (default 0)\n"
            "  --ctx N       KV-cache length (default: prompt + max-new, at most max_position_embeddings)\n"
            "  --score LIST  instead of generating, print log-likelihoods of '|'-separated continuations\n",
            argv0);
    exit(2);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what, qlora_status st, const qlora_error *err) {
    fprintf(stderr, "error: %s: %s: %s\n", what, qlora_status_string(st), err->detail);
    exit(1);
}

// Streaming output: decode the whole generated sequence and print what is new since last time
// (decoding token by token would lose SentencePiece's space handling).
typedef struct printer {
    const qlora_tokenizer *tok;
    int32_t *ids;
    int64_t  n, cap;
    char    *text;
    size_t   text_cap, printed;
} printer;

static int on_token(void *user, int32_t token) {
    printer *p = (printer *)user;
    if (p->n < p->cap) p->ids[p->n++] = token;
    size_t len = 0;
    qlora_error err;
    if (qlora_tokenizer_decode(p->tok, p->ids, p->n, p->text, p->text_cap, &len, &err) != QLORA_OK) return 0;
    if (len > p->printed) {
        fwrite(p->text + p->printed, 1, len - p->printed, stdout);
        fflush(stdout);
        p->printed = len;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *adapter = NULL, *tok_path = NULL, *prompt = "", *score = NULL;
    long max_new = 64, ctx = 0;
    float temp = 0.0f, top_p = 1.0f;
    unsigned long long seed = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage(argv[0]);
        const char *v = argv[++i];
        if (strcmp(a, "--model") == 0) model_dir = v;
        else if (strcmp(a, "--adapter") == 0) adapter = v;
        else if (strcmp(a, "--tokenizer") == 0) tok_path = v;
        else if (strcmp(a, "--prompt") == 0) prompt = v;
        else if (strcmp(a, "--max-new") == 0) max_new = strtol(v, NULL, 10);
        else if (strcmp(a, "--temp") == 0) temp = strtof(v, NULL);
        else if (strcmp(a, "--top-p") == 0) top_p = strtof(v, NULL);
        else if (strcmp(a, "--seed") == 0) seed = strtoull(v, NULL, 10);
        else if (strcmp(a, "--ctx") == 0) ctx = strtol(v, NULL, 10);
        else if (strcmp(a, "--score") == 0) score = v;
        else usage(argv[0]);
    }
    if (!model_dir || max_new < 0) usage(argv[0]);

    qlora_error err;
    qlora_status st;
    memset(&err, 0, sizeof err);
    // tokenizer
    qlora_tokenizer tok;
    char path[4096];
    if (tok_path) {
        snprintf(path, sizeof path, "%s", tok_path);
    } else {
        snprintf(path, sizeof path, "%s/tokenizer.model", model_dir);
        FILE *f = fopen(path, "rb");
        if (f) fclose(f);
        else snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    }
    st = qlora_tokenizer_load(&tok, path, &err);
    if (st != QLORA_OK) die("tokenizer", st, &err);

    // model (no adapters of its own; --adapter brings them)
    qlora_model m;
    double t0 = now_s();
    st = qlora_model_load(&m, model_dir, NULL, &err);
    if (st != QLORA_OK) die("model", st, &err);
    if (adapter) {
        st = qlora_model_load_adapter(&m, adapter, &err);
        if (st != QLORA_OK) die("adapter", st, &err);
    }
    fprintf(stderr,
            "loaded %s: %d layers, hidden %d, vocab %d, %.1f MB of weights, %lld LoRA params (%.1f s)\n",
            model_dir, (int)m.cfg.n_layers, (int)m.cfg.hidden_size, (int)m.cfg.vocab_size,
            (double)qlora_model_weight_bytes(&m) / 1e6, (long long)qlora_model_lora_params(&m), now_s() - t0);
    if (tok.vocab_size > m.cfg.vocab_size)
        fprintf(stderr, "warning: the tokenizer has %d ids, the model %d\n", (int)tok.vocab_size,
                (int)m.cfg.vocab_size);

    // prompt
    int64_t n_prompt = 0;
    qlora_tokenizer_encode(&tok, prompt, strlen(prompt), 1, 0, NULL, 0, &n_prompt, &err);
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n_prompt + 1));
    st = qlora_tokenizer_encode(&tok, prompt, strlen(prompt), 1, 0, ids, n_prompt, &n_prompt, &err);
    if (st != QLORA_OK) die("encode prompt", st, &err);
    if (n_prompt == 0) {   // a tokenizer without BOS and an empty prompt: nothing to condition on
        fprintf(stderr, "error: empty prompt\n");
        return 1;
    }

    // candidates
    int n_cands = 0;
    char **cand = NULL;
    int32_t **cids = NULL;
    int64_t *clen = NULL, longest = 0;
    if (score) {
        size_t slen = strlen(score);
        char *copy = (char *)malloc(slen + 1);
        memcpy(copy, score, slen + 1);
        n_cands = 1;
        for (size_t i = 0; i < slen; i++) n_cands += copy[i] == '|';
        cand = (char **)malloc(sizeof(char *) * (size_t)n_cands);
        cids = (int32_t **)malloc(sizeof(int32_t *) * (size_t)n_cands);
        clen = (int64_t *)malloc(sizeof(int64_t) * (size_t)n_cands);
        char *s = copy;
        for (int c = 0; c < n_cands; c++) {
            char *bar = strchr(s, '|');
            if (bar) *bar = 0;
            cand[c] = s;
            qlora_tokenizer_encode(&tok, s, strlen(s), 0, 0, NULL, 0, &clen[c], &err);
            cids[c] = (int32_t *)malloc(sizeof(int32_t) * (size_t)(clen[c] + 1));
            st = qlora_tokenizer_encode(&tok, s, strlen(s), 0, 0, cids[c], clen[c], &clen[c], &err);
            if (st != QLORA_OK) die("encode candidate", st, &err);
            if (clen[c] > longest) longest = clen[c];
            s = bar ? bar + 1 : s + strlen(s);
        }
    }

    int64_t need = n_prompt + (score ? longest : max_new);
    if (ctx <= 0) ctx = (long)need;
    if (ctx > m.cfg.max_position_embeddings) ctx = m.cfg.max_position_embeddings;
    qlora_kv_cache kv;
    st = qlora_kv_cache_init(&kv, &m, ctx, 0, &err);
    if (st != QLORA_OK) die("kv cache", st, &err);

    if (score) {
        double *lp = (double *)malloc(sizeof(double) * (size_t)n_cands);
        t0 = now_s();
        st = qlora_model_score(&m, &kv, ids, n_prompt, (const int32_t *const *)cids, clen, n_cands, lp, &err);
        if (st != QLORA_OK) die("score", st, &err);
        printf("%12s %7s %10s  candidate\n", "logprob", "tokens", "mean");
        for (int c = 0; c < n_cands; c++)
            printf("%12.4f %7lld %10.4f  %s\n", lp[c], (long long)clen[c],
                   clen[c] ? lp[c] / (double)clen[c] : 0.0, cand[c]);
        fprintf(stderr, "scored %d candidates in %.2f s\n", n_cands, now_s() - t0);
        free(lp);
    } else {
        printer p;
        memset(&p, 0, sizeof p);
        p.tok = &tok;
        p.cap = max_new;
        p.ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(max_new + 1));
        p.text_cap = (size_t)(max_new + 1) * 64 + 64;
        p.text = (char *)malloc(p.text_cap);
        int32_t *out = (int32_t *)malloc(sizeof(int32_t) * (size_t)(max_new + 1));
        qlora_generate_options go;
        memset(&go, 0, sizeof go);
        go.temperature = temp;
        go.top_p = top_p;
        go.seed = seed;
        go.on_token = on_token;
        go.user = &p;
        if (m.cfg.eos_token_id < 0) go.no_stop_at_eos = 1;
        printf("%s", prompt);
        fflush(stdout);
        int64_t n_out = 0;
        t0 = now_s();
        st = qlora_model_generate(&m, &kv, ids, n_prompt, max_new, &go, out, &n_out, &err);
        double dt = now_s() - t0;
        printf("\n");
        if (st != QLORA_OK) die("generate", st, &err);
        fprintf(stderr, "%lld prompt + %lld generated tokens in %.2f s (%.1f tokens/s)\n", (long long)n_prompt,
                (long long)n_out, dt, dt > 0 ? (double)(n_prompt + n_out) / dt : 0.0);
        free(p.ids);
        free(p.text);
        free(out);
    }
    qlora_kv_cache_free(&kv);
    qlora_model_free(&m);
    qlora_tokenizer_free(&tok);
    if (cids)
        for (int c = 0; c < n_cands; c++) free(cids[c]);
    if (cand) free(cand[0]);
    free(cand);
    free(cids);
    free(clen);
    free(ids);
    return 0;
}
