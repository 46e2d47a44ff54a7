// pretrain.c - pretrain a small dense Llama model from scratch on a plain-text corpus (full-parameter training
// with qlora.h: fp32 weights, qlora_model_backward_full, AdamW), and save it as a Hugging Face directory.
//
//   build/pretrain --corpus FILE --tokenizer tokenizer.model --out DIR [options]    (--help lists them)
//
// The corpus has one paragraph a line (empty lines are skipped). Each paragraph is encoded as BOS + tokens +
// EOS; every 50th paragraph (line index % 50 == 49) is held out. The training paragraphs are concatenated and cut
// into sequences of --seq tokens; an epoch visits every sequence once in a seeded random order, --batch at a step.
// Labels are the tokens (the shift happens inside the loss, as in HF LlamaForCausalLM).
// Optimizer: AdamW with fp32 states, linear warmup then cosine decay to 0, weight decay on every matrix (the
// tied embedding included) but not on the RMSNorm weights, global gradient clipping. The run is a pure function
// of (corpus, tokenizer, options, seed): the initialization, the order of the sequences and every reduction are
// independent of the thread count.
// DIR receives config.json + model.safetensors (qlora_model_save_dense), tokenizer.model (a copy),
// pretrain.json (options, corpus and token counts, losses, timing) and README.md; each file is written
// atomically. Progress (step, loss, lr, tokens/s, ETA) goes to stderr; the corpus text never does.
// build/base model: tools/make_base_model.sh runs the whole recipe (corpus, tokenizer, this program).
#define _POSIX_C_SOURCE 200809L   // clock_gettime
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

typedef struct pt_opts {
    const char *corpus, *tokenizer, *out, *corpus_cmd, *tokenizer_cmd;
    int         layers, hidden, heads, kv_heads, ffn, max_pos, seq, batch, warmup, log_every, eval_every,
                eval_batches, threads, holdout_every;
    long        steps;
    double      epochs;
    float       lr, wd, clip, beta2;
    uint64_t    seed;
    qlora_dtype dtype;
} pt_opts;

static void usage(FILE *fp) {
    fputs("usage: pretrain --corpus FILE --tokenizer MODEL --out DIR [options]\n"
          "Pretrains a dense Llama model from scratch on FILE (one paragraph a line) and writes DIR/config.json,\n"
          "model.safetensors, tokenizer.model, pretrain.json and README.md.\n"
          "model:\n"
          "  --layers N        decoder layers (6)            --hidden N     hidden size (256)\n"
          "  --heads N         attention heads (4)           --kv-heads N   key/value heads (2)\n"
          "  --ffn N           MLP intermediate size (688)   --max-pos N    max_position_embeddings (512)\n"
          "  (vocab size, BOS and EOS come from the tokenizer; embeddings are tied; rope_theta 10000)\n"
          "training:\n"
          "  --seq N           tokens per sequence (128)     --batch N      sequences per step (16)\n"
          "  --steps N         optimizer steps (default: --epochs over the training sequences)\n"
          "  --epochs X        epochs when --steps is not given (1)\n"
          "  --lr X            peak learning rate (2e-3)     --warmup N     warmup steps (100)\n"
          "  --wd X            weight decay, not on norms (0.1)   --clip X  global grad-norm clip (1.0)\n"
          "  --beta2 X         AdamW beta2 (0.98)            --seed N       initialization and order seed (1)\n"
          "  --holdout-every N hold out every Nth paragraph (50)\n"
          "  --eval-every N    held-out loss every N steps on --eval-batches batches (0: only at the end)\n"
          "  --eval-batches N  batches of the periodic held-out loss (8); the final one uses all\n"
          "  --log-every N     progress line every N steps (10)   --threads N  OpenMP threads (default: all)\n"
          "output:\n"
          "  --dtype f32|bf16  weight storage (f32)\n"
          "  --corpus-cmd S    the command that made FILE, recorded in pretrain.json and README.md\n"
          "  --tokenizer-cmd S the command that trained MODEL, recorded likewise\n",
          fp);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fmt_dur(char *buf, size_t cap, double s) {
    long t = s < 0 ? 0 : (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm", t / 3600, (t / 60) % 60);
    else snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
}

static int fail(const char *what, qlora_status st, const qlora_error *err) {
    fprintf(stderr, "pretrain: error: %s: %s: %s\n", what, qlora_status_string(st), err->detail);
    return 1;
}

// Strict numeric option parsing: the whole argument must be a number in range.
static int parse_long(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return 0;
    *out = v;
    return 1;
}
static int parse_double(const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) return 0;
    *out = v;
    return 1;
}

// One option of the table below: a string, an int or a float field, with its accepted range.
typedef struct pt_flag {
    const char *flag;
    int         kind;    // 0 string, 1 int, 2 float
    void       *field;
    double      lo, hi;
} pt_flag;

static int parse_args(int argc, char **argv, pt_opts *o) {
    memset(o, 0, sizeof *o);
    o->layers = 6; o->hidden = 256; o->heads = 4; o->kv_heads = 2; o->ffn = 688; o->max_pos = 512;
    o->seq = 128; o->batch = 16; o->warmup = 100; o->log_every = 10; o->eval_batches = 8; o->holdout_every = 50;
    o->epochs = 1.0; o->lr = 2e-3f; o->wd = 0.1f; o->clip = 1.0f; o->beta2 = 0.98f; o->seed = 1;
    o->dtype = QLORA_DTYPE_F32;
    const pt_flag flags[] = {
        {"--corpus", 0, &o->corpus, 0, 0}, {"--tokenizer", 0, &o->tokenizer, 0, 0}, {"--out", 0, &o->out, 0, 0},
        {"--corpus-cmd", 0, &o->corpus_cmd, 0, 0}, {"--tokenizer-cmd", 0, &o->tokenizer_cmd, 0, 0},
        {"--layers", 1, &o->layers, 1, 256}, {"--hidden", 1, &o->hidden, 8, 65536}, {"--heads", 1, &o->heads, 1, 1024},
        {"--kv-heads", 1, &o->kv_heads, 1, 1024}, {"--ffn", 1, &o->ffn, 1, 1 << 20},
        {"--max-pos", 1, &o->max_pos, 2, 1 << 20}, {"--seq", 1, &o->seq, 2, 1 << 20},
        {"--batch", 1, &o->batch, 1, 1 << 16}, {"--warmup", 1, &o->warmup, 0, 1 << 30},
        {"--log-every", 1, &o->log_every, 1, 1 << 30}, {"--eval-every", 1, &o->eval_every, 0, 1 << 30},
        {"--eval-batches", 1, &o->eval_batches, 1, 1 << 30}, {"--threads", 1, &o->threads, 1, 4096},
        {"--holdout-every", 1, &o->holdout_every, 2, 1 << 30}, {"--lr", 2, &o->lr, 1e-8, 10.0},
        {"--wd", 2, &o->wd, 0.0, 10.0}, {"--clip", 2, &o->clip, 0.0, 1e9}, {"--beta2", 2, &o->beta2, 0.5, 0.999999}};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n = 0;
        double x = 0;
        size_t k;
        int ok = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); exit(0); }
        for (k = 0; k < sizeof flags / sizeof flags[0]; k++) if (!strcmp(a, flags[k].flag)) break;
        int known = k < sizeof flags / sizeof flags[0] || !strcmp(a, "--steps") || !strcmp(a, "--epochs") ||
                    !strcmp(a, "--seed") || !strcmp(a, "--dtype");
        if (!known) {
            fprintf(stderr, "pretrain: unknown argument '%s' (see --help)\n", a);
            return 0;
        }
        if (!v) {
            fprintf(stderr, "pretrain: %s needs a value (see --help)\n", a);
            return 0;
        }
        i++;
        if (k < sizeof flags / sizeof flags[0]) {
            const pt_flag *f = &flags[k];
            if (f->kind == 0) *(const char **)f->field = v;
            else if (f->kind == 1 && (ok = parse_long(v, (long)f->lo, (long)f->hi, &n))) *(int *)f->field = (int)n;
            else if (f->kind == 2 && (ok = parse_double(v, f->lo, f->hi, &x))) *(float *)f->field = (float)x;
        } else if (!strcmp(a, "--steps")) {
            if ((ok = parse_long(v, 1, 1L << 40, &n))) o->steps = n;
        } else if (!strcmp(a, "--epochs")) {
            if ((ok = parse_double(v, 1e-6, 1e6, &x))) o->epochs = x;
        } else if (!strcmp(a, "--seed")) {
            if ((ok = parse_long(v, 0, 2147483647L, &n))) o->seed = (uint64_t)n;
        } else {
            if (!strcmp(v, "f32")) o->dtype = QLORA_DTYPE_F32;
            else if (!strcmp(v, "bf16")) o->dtype = QLORA_DTYPE_BF16;
            else ok = 0;
        }
        if (!ok) {
            fprintf(stderr, "pretrain: bad value '%s' for %s (see --help)\n", v, a);
            return 0;
        }
    }
    if (!o->corpus || !o->tokenizer || !o->out) {
        fprintf(stderr, "pretrain: --corpus, --tokenizer and --out are required (see --help)\n");
        return 0;
    }
    if (o->hidden % o->heads || (o->hidden / o->heads) % 2 || o->heads % o->kv_heads) {
        fprintf(stderr, "pretrain: --hidden must be a multiple of --heads with an even head size, and --heads a "
                        "multiple of --kv-heads\n");
        return 0;
    }
    if (o->seq > o->max_pos) {
        fprintf(stderr, "pretrain: --seq %d exceeds --max-pos %d\n", o->seq, o->max_pos);
        return 0;
    }
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Corpus: paragraphs → token streams (train, held out)

typedef struct pt_tokens {
    int32_t *ids;       // (n)
    int64_t  n, cap;
    int64_t  paragraphs;
} pt_tokens;

static int tokens_push(pt_tokens *t, const int32_t *ids, int64_t n) {
    if (t->n + n > t->cap) {
        int64_t cap = t->cap ? t->cap : 1 << 16;
        while (cap < t->n + n) cap *= 2;
        int32_t *p = (int32_t *)realloc(t->ids, (size_t)cap * sizeof(int32_t));
        if (!p) return 0;
        t->ids = p;
        t->cap = cap;
    }
    memcpy(t->ids + t->n, ids, (size_t)n * sizeof(int32_t));
    t->n += n;
    t->paragraphs++;
    return 1;
}

// Reads FILE, encodes each non-empty line as BOS + tokens + EOS; line index % every == every-1 → held out.
static int load_corpus(const char *path, const qlora_tokenizer *tok, int every, pt_tokens *train, pt_tokens *held,
                       int64_t *lines_out, int64_t *bytes_out) {
    void *data = NULL;
    size_t size = 0;
    qlora_error err;
    qlora_status st = qlora_read_file(path, &data, &size, &err);
    if (st != QLORA_OK) return fail("reading the corpus", st, &err), 0;
    const char *s = (const char *)data, *end = s + size;
    int64_t line = 0, cap = 0;
    int32_t *ids = NULL;
    int ok = 1;
    while (s < end && ok) {
        const char *nl = (const char *)memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        size_t len = (size_t)(e - s);
        if (len && s[len - 1] == '\r') len--;
        line++;
        if (len > 0) {
            int64_t n = 0;
            st = qlora_tokenizer_encode(tok, s, len, 1, 1, ids, cap, &n, &err);
            if (st == QLORA_ERR_SHAPE) {
                free(ids);
                cap = n + 64;
                ids = (int32_t *)malloc((size_t)cap * sizeof(int32_t));
                if (!ids) { fprintf(stderr, "pretrain: error: out of memory at corpus line %lld\n", (long long)line); ok = 0; break; }
                st = qlora_tokenizer_encode(tok, s, len, 1, 1, ids, cap, &n, &err);
            }
            if (st != QLORA_OK) {
                fprintf(stderr, "pretrain: error: %s line %lld: %s: %s\n", path, (long long)line,
                        qlora_status_string(st), err.detail);
                ok = 0;
                break;
            }
            pt_tokens *dst = (line - 1) % every == every - 1 ? held : train;
            if (!tokens_push(dst, ids, n)) {
                fprintf(stderr, "pretrain: error: out of memory at corpus line %lld\n", (long long)line);
                ok = 0;
            }
        }
        s = e + 1;
    }
    *lines_out = line;
    *bytes_out = (int64_t)size;
    free(ids);
    QLORA_FREE(data);
    return ok;
}

// ---------------------------------------------------------------------------------------------------------------
// Training

// Held-out loss over up to max_batches batches of `batch` sequences of T tokens (all when max_batches ≤ 0):
// Σ token losses / counted tokens. Rows past the end of the stream are padding (key_mask 0, labels -100).
static int heldout_loss(qlora_model *m, qlora_train_state *ts, const pt_tokens *held, int batch, int T,
                        int max_batches, int32_t *tok, int32_t *lab, uint8_t *mask, double *loss_out,
                        int64_t *counted_out) {
    int64_t seqs = held->n / T, done = 0, b = 0;
    double sum = 0;
    int64_t counted = 0;
    qlora_error err;
    while (done < seqs && (max_batches <= 0 || b < max_batches)) {
        for (int r = 0; r < batch; r++) {
            int32_t *tr = tok + (int64_t)r * T, *lr = lab + (int64_t)r * T;
            uint8_t *mr = mask + (int64_t)r * T;
            if (done + r < seqs) {
                memcpy(tr, held->ids + (done + r) * T, (size_t)T * sizeof(int32_t));
                memcpy(lr, tr, (size_t)T * sizeof(int32_t));
                memset(mr, 1, (size_t)T);
            } else {
                for (int t = 0; t < T; t++) { tr[t] = 0; lr[t] = -100; mr[t] = t == 0; }
            }
        }
        float loss;
        qlora_status st = qlora_model_forward_eval(m, ts, tok, mask, lab, &loss, &err);
        if (st != QLORA_OK) return fail("held-out forward", st, &err), 0;
        sum += ts->loss_sum;
        counted += ts->n_counted;
        done += batch;
        b++;
    }
    *loss_out = counted ? sum / (double)counted : NAN;
    *counted_out = counted;
    return 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Output files

static int write_text(const char *dir, const char *name, const char *text) {
    char path[4096];
    qlora_error err;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    qlora_status st = qlora_write_file_atomic(path, text, strlen(text), &err);
    if (st != QLORA_OK) return fail("writing an output file", st, &err), 0;
    return 1;
}

static int copy_file(const char *from, const char *dir, const char *name) {
    char path[4096];
    void *data = NULL;
    size_t size = 0;
    qlora_error err;
    qlora_status st = qlora_read_file(from, &data, &size, &err);
    if (st != QLORA_OK) return fail("reading the tokenizer", st, &err), 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    st = qlora_write_file_atomic(path, data, size, &err);
    QLORA_FREE(data);
    if (st != QLORA_OK) return fail("writing tokenizer.model", st, &err), 0;
    return 1;
}

typedef struct pt_result {
    int64_t lines, bytes, train_tokens, held_tokens, train_paragraphs, held_paragraphs, params, steps, seqs;
    double  train_loss, held_loss, first_loss, seconds, tokens_per_s;
    int64_t held_counted, warmup;
    int     threads;
} pt_result;

static char *meta_json(const pt_opts *o, const qlora_llama_config *c, const pt_result *r) {
    qlora_json_writer w;
    qlora_error err;
    qlora_jw_init(&w, 2, 0);
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "what");
    qlora_jw_string(&w, "dense Llama model pretrained from scratch by build/pretrain (qlora.h full-parameter training)");
    qlora_jw_key(&w, "corpus_command");
    qlora_jw_string(&w, o->corpus_cmd);
    qlora_jw_key(&w, "tokenizer_command");
    qlora_jw_string(&w, o->tokenizer_cmd);
    qlora_jw_key(&w, "corpus_lines"); qlora_jw_int(&w, r->lines);
    qlora_jw_key(&w, "corpus_bytes"); qlora_jw_int(&w, r->bytes);
    qlora_jw_key(&w, "train_paragraphs"); qlora_jw_int(&w, r->train_paragraphs);
    qlora_jw_key(&w, "train_tokens"); qlora_jw_int(&w, r->train_tokens);
    qlora_jw_key(&w, "heldout_paragraphs"); qlora_jw_int(&w, r->held_paragraphs);
    qlora_jw_key(&w, "heldout_tokens"); qlora_jw_int(&w, r->held_tokens);
    qlora_jw_key(&w, "holdout_every"); qlora_jw_int(&w, o->holdout_every);
    qlora_jw_key(&w, "parameters"); qlora_jw_int(&w, r->params);
    qlora_jw_key(&w, "config");
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "vocab_size"); qlora_jw_int(&w, c->vocab_size);
    qlora_jw_key(&w, "hidden_size"); qlora_jw_int(&w, c->hidden_size);
    qlora_jw_key(&w, "intermediate_size"); qlora_jw_int(&w, c->intermediate_size);
    qlora_jw_key(&w, "num_hidden_layers"); qlora_jw_int(&w, c->n_layers);
    qlora_jw_key(&w, "num_attention_heads"); qlora_jw_int(&w, c->n_heads);
    qlora_jw_key(&w, "num_key_value_heads"); qlora_jw_int(&w, c->n_kv_heads);
    qlora_jw_key(&w, "max_position_embeddings"); qlora_jw_int(&w, c->max_position_embeddings);
    qlora_jw_object_end(&w);
    qlora_jw_key(&w, "training");
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "seed"); qlora_jw_int(&w, (int64_t)o->seed);
    qlora_jw_key(&w, "steps"); qlora_jw_int(&w, r->steps);
    qlora_jw_key(&w, "batch"); qlora_jw_int(&w, o->batch);
    qlora_jw_key(&w, "seq_len"); qlora_jw_int(&w, o->seq);
    qlora_jw_key(&w, "tokens_seen"); qlora_jw_int(&w, r->steps * o->batch * o->seq);
    qlora_jw_key(&w, "epochs");
    qlora_jw_double(&w, r->seqs ? floor(1000.0 * (double)(r->steps * o->batch) / (double)r->seqs + 0.5) / 1000.0 : 0.0);
    qlora_jw_key(&w, "optimizer"); qlora_jw_string(&w, "adamw fp32 states, beta1 0.9, eps 1e-8, cosine to 0");
    qlora_jw_key(&w, "lr"); qlora_jw_float(&w, o->lr);
    qlora_jw_key(&w, "beta2"); qlora_jw_float(&w, o->beta2);
    qlora_jw_key(&w, "warmup_steps"); qlora_jw_int(&w, r->warmup);
    qlora_jw_key(&w, "weight_decay"); qlora_jw_float(&w, o->wd);
    qlora_jw_key(&w, "weight_decay_on_norms"); qlora_jw_bool(&w, 0);
    qlora_jw_key(&w, "max_grad_norm"); qlora_jw_float(&w, o->clip);
    qlora_jw_key(&w, "dtype"); qlora_jw_string(&w, o->dtype == QLORA_DTYPE_BF16 ? "bf16" : "f32");
    qlora_jw_object_end(&w);
    qlora_jw_key(&w, "results");
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "first_train_loss"); qlora_jw_double(&w, r->first_loss);
    qlora_jw_key(&w, "final_train_loss"); qlora_jw_double(&w, r->train_loss);
    qlora_jw_key(&w, "heldout_loss"); qlora_jw_double(&w, r->held_loss);
    qlora_jw_key(&w, "heldout_perplexity"); qlora_jw_double(&w, exp(r->held_loss));
    qlora_jw_key(&w, "heldout_tokens_scored"); qlora_jw_int(&w, r->held_counted);
    qlora_jw_key(&w, "train_seconds"); qlora_jw_double(&w, floor(r->seconds * 10.0 + 0.5) / 10.0);
    qlora_jw_key(&w, "tokens_per_second"); qlora_jw_double(&w, floor(r->tokens_per_s + 0.5));
    qlora_jw_key(&w, "threads"); qlora_jw_int(&w, r->threads);
    qlora_jw_object_end(&w);
    qlora_jw_object_end(&w);
    if (qlora_jw_finish(&w, 1, &err) != QLORA_OK) { qlora_jw_free(&w); return NULL; }
    char *s = (char *)malloc(w.len + 1);
    if (s) memcpy(s, w.buf, w.len + 1);
    qlora_jw_free(&w);
    return s;
}

static char *readme_text(const pt_opts *o, const qlora_llama_config *c, const pt_result *r) {
    size_t cap = 8192 + (o->corpus_cmd ? strlen(o->corpus_cmd) : 0) + (o->tokenizer_cmd ? strlen(o->tokenizer_cmd) : 0);
    char *s = (char *)malloc(cap);
    char dur[32];
    if (!s) return NULL;
    fmt_dur(dur, sizeof dur, r->seconds);
    snprintf(s, cap,
             "# Embedded base model\n\n"
             "A small Llama-architecture model (HF format) that this project pretrains itself, from random weights, on\n"
             "unlabeled synthetic clinical text (order notes in the training-split styles, report-like paragraphs,\n"
             "catalogue descriptions; never the validation, test or hand-written dev notes). It is the default base\n"
             "for QLoRA fine-tuning, standing in for Meditron-7b.\n\n"
             "- architecture: LlamaForCausalLM, %d layers, hidden %d, %d heads (%d key/value heads), MLP %d,\n"
             "  vocab %d (SentencePiece BPE trained by spm_train), tied embeddings, max positions %d; %lld parameters,\n"
             "  stored %s\n"
             "- corpus: %lld paragraphs, %lld training tokens, %lld held-out tokens (every %dth paragraph)\n"
             "- training: %lld steps of %d x %d tokens (%.2f epochs), AdamW lr %g (warmup %d, cosine), weight decay %g\n"
             "  (not on norms), clip %g, seed %llu; trained in %s with %d thread(s)\n"
             "- loss: %.3f at the start, %.3f at the end (train); held-out %.3f (perplexity %.2f)\n\n"
             "Reproduce (from the repository root): `tools/make_base_model.sh`\n\n"
             "- corpus: `%s`\n"
             "- tokenizer: `%s`\n\n"
             "pretrain.json has every option and number.\n",
             c->n_layers, c->hidden_size, c->n_heads, c->n_kv_heads, c->intermediate_size, c->vocab_size,
             c->max_position_embeddings, (long long)r->params, o->dtype == QLORA_DTYPE_BF16 ? "BF16" : "F32",
             (long long)r->train_paragraphs + r->held_paragraphs, (long long)r->train_tokens,
             (long long)r->held_tokens, o->holdout_every, (long long)r->steps, o->batch, o->seq,
             r->seqs ? (double)(r->steps * o->batch) / (double)r->seqs : 0.0, (double)o->lr, (int)r->warmup,
             (double)o->wd, (double)o->clip, (unsigned long long)o->seed, dur, r->threads, r->first_loss,
             r->train_loss, r->held_loss, exp(r->held_loss), o->corpus_cmd ? o->corpus_cmd : "(not recorded)",
             o->tokenizer_cmd ? o->tokenizer_cmd : "(not recorded)");
    return s;
}

int main(int argc, char **argv) {
    pt_opts o;
    if (!parse_args(argc, argv, &o)) return 2;
#ifdef _OPENMP
    if (o.threads > 0) omp_set_num_threads(o.threads);
#endif
    qlora_error err;
    qlora_status st;
    struct stat sb;
    if (stat(o.out, &sb) == 0 && !S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "pretrain: error: %s exists and is not a directory\n", o.out);
        return 1;
    }
    qlora_tokenizer tok;
    st = qlora_tokenizer_load(&tok, o.tokenizer, &err);
    if (st != QLORA_OK) return fail("loading the tokenizer", st, &err);
    if (tok.bos_id < 0 || tok.eos_id < 0) {
        fprintf(stderr, "pretrain: error: %s has no BOS or EOS piece\n", o.tokenizer);
        return 1;
    }

    pt_tokens train, held;
    pt_result r;
    memset(&train, 0, sizeof train);
    memset(&held, 0, sizeof held);
    memset(&r, 0, sizeof r);
    double t0 = now_s();
    if (!load_corpus(o.corpus, &tok, o.holdout_every, &train, &held, &r.lines, &r.bytes)) return 1;
    const int T = o.seq, B = o.batch;
    r.train_tokens = train.n;
    r.held_tokens = held.n;
    r.train_paragraphs = train.paragraphs;
    r.held_paragraphs = held.paragraphs;
    r.seqs = train.n / T;
    if (r.seqs < B) {
        fprintf(stderr, "pretrain: error: %s gives %lld training tokens: fewer than one batch of %d x %d\n", o.corpus,
                (long long)train.n, B, T);
        return 1;
    }
    if (held.n < T) {
        fprintf(stderr, "pretrain: error: %s gives %lld held-out tokens: fewer than one sequence of %d (use a "
                        "larger corpus or a smaller --holdout-every)\n", o.corpus, (long long)held.n, T);
        return 1;
    }
    r.steps = o.steps > 0 ? o.steps : (int64_t)ceil(o.epochs * (double)(r.seqs / B));
    if (r.steps < 1) r.steps = 1;

    qlora_llama_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.hidden_size = o.hidden;
    cfg.intermediate_size = o.ffn;
    cfg.n_layers = o.layers;
    cfg.n_heads = o.heads;
    cfg.n_kv_heads = o.kv_heads;
    cfg.head_dim = o.hidden / o.heads;
    cfg.vocab_size = tok.vocab_size;
    cfg.max_position_embeddings = o.max_pos;
    cfg.rms_norm_eps = 1e-5f;
    cfg.rope_theta = 10000.0f;
    cfg.rope_scaling_factor = 1.0f;
    cfg.tie_word_embeddings = 1;
    cfg.bos_token_id = tok.bos_id;
    cfg.eos_token_id = tok.eos_id;
    cfg.pad_token_id = -1;
    st = qlora_llama_config_validate(&cfg, &err);
    if (st != QLORA_OK) return fail("model config", st, &err);

    qlora_model m;
    qlora_model_options mo;
    memset(&mo, 0, sizeof mo);
    mo.dense = 1;
    st = qlora_model_init_random_dense(&m, &cfg, &mo, o.seed, &err);
    if (st != QLORA_OK) return fail("initializing the model", st, &err);
    qlora_train_state ts;
    st = qlora_train_state_init(&ts, &m, B, T, 0, &err);
    if (st != QLORA_OK) return fail("train state", st, &err);
    qlora_model_grads g;
    st = qlora_model_grads_init(&g, &m, &err);
    if (st != QLORA_OK) return fail("gradients", st, &err);
    r.params = g.n_floats;

    // one AdamW: weight decay on matrices and embeddings, none on norm weights (qlora_model_grads marks
    // them no_decay); clipping is global, done here
    qlora_adamw_config ac = qlora_adamw_default_config();
    ac.lr = o.lr;
    ac.beta2 = o.beta2;
    ac.max_grad_norm = 0.0f;
    ac.schedule = QLORA_LR_COSINE;
    ac.warmup_steps = o.warmup < r.steps ? o.warmup : r.steps / 10;
    r.warmup = ac.warmup_steps;
    ac.total_steps = r.steps;
    ac.weight_decay = o.wd;
    ac.torch_order = 1;
    qlora_adamw opt;
    st = qlora_adamw_init(&opt, g.params, g.n_params, &ac, &err);
    if (st != QLORA_OK) return fail("optimizer", st, &err);

    int32_t *tokb = (int32_t *)malloc((size_t)B * T * sizeof(int32_t));
    int32_t *labb = (int32_t *)malloc((size_t)B * T * sizeof(int32_t));
    uint8_t *mask = (uint8_t *)malloc((size_t)B * T);
    int64_t *order = (int64_t *)malloc((size_t)r.seqs * sizeof(int64_t));
    if (!tokb || !labb || !mask || !order) { fprintf(stderr, "pretrain: error: out of memory\n"); return 1; }
    qlora_rng rng;
    qlora_rng_seed(&rng, o.seed * 0x9E3779B97F4A7C15ull + 17);
    int64_t pos = r.seqs;   // sequences of the current epoch used; ≥ seqs → reshuffle
#ifdef _OPENMP
    r.threads = omp_get_max_threads();
#else
    r.threads = 1;
#endif
    // FLOPs per token of a training step: 6 × (matmul parameters incl. the tied head) + attention
    double matp = (double)cfg.n_layers * ((double)cfg.hidden_size * (cfg.n_heads + 2 * cfg.n_kv_heads) * cfg.head_dim +
                                          (double)cfg.n_heads * cfg.head_dim * cfg.hidden_size +
                                          3.0 * cfg.hidden_size * cfg.intermediate_size) +
                  (double)cfg.vocab_size * cfg.hidden_size;
    double flop_tok = 6.0 * matp + 6.0 * cfg.n_layers * (double)T * cfg.n_heads * cfg.head_dim;
    fprintf(stderr,
            "pretrain: corpus %lld lines: %lld train tokens (%lld sequences of %d), %lld held-out tokens; "
            "tokenized in %.1f s\n"
            "pretrain: model %d layers, hidden %d, heads %d/%d, ffn %d, vocab %d: %lld parameters (%.1f MB f32)\n"
            "pretrain: %lld steps of %d x %d tokens (%.2f epochs), %.1f MFLOP/token, %d thread(s)\n",
            (long long)r.lines, (long long)train.n, (long long)r.seqs, T, (long long)held.n, now_s() - t0,
            cfg.n_layers, cfg.hidden_size, cfg.n_heads, cfg.n_kv_heads, cfg.intermediate_size, cfg.vocab_size,
            (long long)r.params, (double)r.params * 4.0 / 1e6, (long long)r.steps, B, T,
            (double)(r.steps * B) / (double)r.seqs, flop_tok / 1e6, r.threads);

    double tstart = now_s(), tlast = tstart, loss_acc = 0, last_loss = 0;
    int64_t loss_n = 0;
    for (int64_t step = 0; step < r.steps; step++) {
        for (int b = 0; b < B; b++) {
            if (pos >= r.seqs) {   // new epoch: Fisher-Yates over the sequence indices
                for (int64_t i = 0; i < r.seqs; i++) order[i] = i;
                for (int64_t i = r.seqs - 1; i > 0; i--) {
                    int64_t j = (int64_t)(qlora_rng_u64(&rng) % (uint64_t)(i + 1)), t = order[i];
                    order[i] = order[j];
                    order[j] = t;
                }
                pos = 0;
            }
            memcpy(tokb + (int64_t)b * T, train.ids + order[pos++] * T, (size_t)T * sizeof(int32_t));
        }
        memcpy(labb, tokb, (size_t)B * T * sizeof(int32_t));
        float loss = 0;
        qlora_model_grads_zero(&g);
        st = qlora_model_forward_train(&m, &ts, tokb, NULL, labb, &loss, &err);
        if (st != QLORA_OK) return fail("forward", st, &err);
        if (!isfinite(loss)) {
            fprintf(stderr, "pretrain: error: loss is %g at step %lld (try a lower --lr)\n", (double)loss,
                    (long long)step + 1);
            return 1;
        }
        st = qlora_model_backward_full(&m, &ts, &g, 1.0f / (float)ts.n_counted, &err);
        if (st != QLORA_OK) return fail("backward", st, &err);
        double gnorm = qlora_clip_grad_norm(g.params, g.n_params, o.clip);
        qlora_step_stats ss;
        st = qlora_adamw_step(&opt, &ss, &err);
        if (st != QLORA_OK) return fail("optimizer step", st, &err);
        if (step == 0) r.first_loss = loss;
        loss_acc += loss;
        loss_n++;
        last_loss = loss;
        if ((step + 1) % o.log_every == 0 || step + 1 == r.steps) {
            double t = now_s(), tps = (double)loss_n * B * T / (t - tlast), el = t - tstart;
            char e1[32], e2[32];
            fmt_dur(e1, sizeof e1, el);
            fmt_dur(e2, sizeof e2, el / (double)(step + 1) * (double)(r.steps - step - 1));
            fprintf(stderr, "step %6lld/%lld  loss %.4f  lr %.2e  gnorm %.3f  %6.0f tok/s  %5.1f GFLOP/s  %s  ETA %s\n",
                    (long long)step + 1, (long long)r.steps, loss_acc / (double)loss_n, (double)ss.lr, gnorm, tps,
                    tps * flop_tok / 1e9, e1, e2);
            r.train_loss = loss_acc / (double)loss_n;
            loss_acc = 0;
            loss_n = 0;
            tlast = t;
        }
        if (o.eval_every > 0 && (step + 1) % o.eval_every == 0 && step + 1 < r.steps) {
            double hl;
            int64_t hc;
            double te = now_s();
            if (!heldout_loss(&m, &ts, &held, B, T, o.eval_batches, tokb, labb, mask, &hl, &hc)) return 1;
            fprintf(stderr, "step %6lld  held-out loss %.4f (ppl %.2f, %lld tokens)\n", (long long)step + 1, hl,
                    exp(hl), (long long)hc);
            tlast += now_s() - te;   // evaluation time does not count against tok/s
        }
    }
    (void)last_loss;
    r.seconds = now_s() - tstart;
    r.tokens_per_s = (double)r.steps * B * T / r.seconds;
    if (!heldout_loss(&m, &ts, &held, B, T, 0, tokb, labb, mask, &r.held_loss, &r.held_counted)) return 1;
    fprintf(stderr, "pretrain: done in %.1f s (%.0f tok/s): train loss %.4f, held-out loss %.4f (perplexity %.2f) over "
                    "%lld tokens\n", r.seconds, r.tokens_per_s, r.train_loss, r.held_loss, exp(r.held_loss),
            (long long)r.held_counted);

    if (stat(o.out, &sb) != 0) {
        if (mkdir(o.out, 0755) != 0) {
            fprintf(stderr, "pretrain: error: cannot create output directory %s: %s\n", o.out, strerror(errno));
            return 1;
        }
    } else if (!S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "pretrain: error: %s exists and is not a directory\n", o.out);
        return 1;
    }

    st = qlora_model_save_dense(&m, o.out, o.dtype, &err);
    if (st != QLORA_OK) return fail("saving the model", st, &err);
    if (!copy_file(o.tokenizer, o.out, "tokenizer.model")) return 1;
    char *meta = meta_json(&o, &cfg, &r), *readme = readme_text(&o, &cfg, &r);
    if (!meta || !readme) { fprintf(stderr, "pretrain: error: out of memory\n"); return 1; }
    if (!write_text(o.out, "pretrain.json", meta) || !write_text(o.out, "README.md", readme)) return 1;
    fprintf(stderr, "pretrain: wrote %s/{config.json, model.safetensors, tokenizer.model, pretrain.json, README.md}\n",
            o.out);
    free(meta);
    free(readme);
    free(tokb);
    free(labb);
    free(mask);
    free(order);
    free(train.ids);
    free(held.ids);
    qlora_adamw_free(&opt);
    qlora_model_grads_free(&g);
    qlora_train_state_free(&ts);
    qlora_model_free(&m);
    qlora_tokenizer_free(&tok);
    return 0;
}
