// qlora_cli.h - the parts of the `qlora` command line (demo/qlora.c) that are not commands:
// options and configuration files, small POSIX file helpers, the JSONL data pipeline
// (tokenization, truncation, length-grouped batching) and the loss-curve PNG.
//
// Included once, by demo/qlora_commands.h after qlora.h. Everything here is static.

#ifndef QLORA_CLI_H
#define QLORA_CLI_H

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------------
// messages

// The program name that starts every message ("qlora"; the radiology program sets its own).
static const char *cli_prog = "qlora";

// 1 while a live progress line (ending in \r, no newline) is on stderr: a message clears it first.
static int cli_progress_active;

static void cli_clear_progress(void) {
    if (cli_progress_active) {
        fputs("\r\033[K", stderr);
        cli_progress_active = 0;
    }
}

#if defined(__GNUC__) || defined(__clang__)
#define CLI_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define CLI_PRINTF(a, b)
#endif

static void cli_error(const char *fmt, ...) CLI_PRINTF(1, 2);
static void cli_error(const char *fmt, ...) {
    va_list ap;
    cli_clear_progress();
    fprintf(stderr, "%s: error: ", cli_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static void cli_note(const char *fmt, ...) CLI_PRINTF(1, 2);
static void cli_note(const char *fmt, ...) {
    va_list ap;
    cli_clear_progress();
    fprintf(stderr, "%s: ", cli_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

static void *cli_alloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "%s: error: out of memory (%zu bytes)\n", cli_prog, n);
        exit(1);
    }
    return p;
}

static void *cli_calloc(size_t n) {
    void *p = cli_alloc(n);
    memset(p, 0, n);
    return p;
}

static char *cli_strdup(const char *s) {
    size_t n = strlen(s);
    char *p = (char *)cli_alloc(n + 1);
    memcpy(p, s, n + 1);
    return p;
}

// printf into a fresh buffer.
static char *cli_fmt(const char *fmt, ...) CLI_PRINTF(1, 2);
static char *cli_fmt(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    char *p = (char *)cli_alloc((size_t)(n > 0 ? n : 0) + 1);
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

static double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void cli_sleep_ms(long ms) {
    struct timespec ts;
    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

// Resident set size in bytes (Linux /proc/self/statm), 0 when unknown.
static int64_t cli_rss_bytes(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long long pages = 0, rss = 0;
    if (!f) return 0;
    if (fscanf(f, "%lld %lld", &pages, &rss) != 2) rss = 0;
    fclose(f);
    return (int64_t)rss * (int64_t)sysconf(_SC_PAGESIZE);
}

// "1h02m03s" / "4m05s" / "12s"
static void cli_fmt_duration(char *buf, size_t cap, double s) {
    if (!(s >= 0) || s > 1e8) {
        snprintf(buf, cap, "?");
        return;
    }
    long t = (long)(s + 0.5);
    if (t >= 3600) snprintf(buf, cap, "%ldh%02ldm%02lds", t / 3600, (t / 60) % 60, t % 60);
    else if (t >= 60) snprintf(buf, cap, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, cap, "%lds", t);
}

// ---------------------------------------------------------------------------------------------
// options
//
// One table describes every option: its flag (--max-len), its key in a --config JSON file and in
// resolved_config.json (max_len), its type, default, help, and the commands that take it.
// Values are resolved in three layers: defaults < --config FILE < command-line flags.

enum {
    CMD_INFO = 1,
    CMD_QUANTIZE = 2,
    CMD_TRAIN = 4,
    CMD_GENERATE = 8,
    CMD_SCORE = 16,
    CMD_MERGE = 32,
    CMD_EVAL = 64,
    CMD_ALL = 127,
    CMD_RUN = CMD_TRAIN | CMD_GENERATE | CMD_SCORE | CMD_EVAL // commands that compute with the model
};

typedef enum cli_type { T_STR, T_INT, T_FLOAT, T_BOOL } cli_type;

typedef struct cli_opt {
    const char *key;      // config key; the flag is "--" + key with '_' → '-'
    cli_type    type;
    const char *def;      // default as text
    unsigned    cmds;     // CMD_* mask
    const char *choices;  // "a|b|c" or NULL
    const char *help;
    int         hidden;   // 1: test/debug option, not in --help, recorded only when set
} cli_opt;

static const cli_opt cli_opts[] = {
    // model and tokenizer
    {"model", T_STR, "", CMD_ALL, NULL,
     "model directory: config.json + model.safetensors (or an index and shards), F32/F16/BF16 or "
     "bitsandbytes 4-bit",
     0},
    {"tokenizer", T_STR, "", CMD_RUN, NULL,
     "tokenizer.model or tokenizer.json (default: the one in the model directory)", 0},
    {"adapter", T_STR, "", CMD_GENERATE | CMD_SCORE | CMD_MERGE | CMD_EVAL, NULL,
     "PEFT LoRA adapter directory", 0},
    {"output", T_STR, "qlora-out", CMD_QUANTIZE | CMD_TRAIN | CMD_MERGE, NULL,
     "output directory (required for quantize and merge)", 0},
    {"blocksize", T_INT, "64", CMD_ALL, NULL, "NF4 block size of weights quantized while loading (QLoRA: 64)",
     0},
    {"double_quant", T_BOOL, "true", CMD_ALL, NULL, "double quantization of the NF4 block scales (QLoRA: on)",
     0},
    // execution
    {"backend", T_STR, "cpu", CMD_RUN, "cpu|vulkan|vulkan=required",
     "where the NF4 matmuls run; vulkan falls back to the CPU without a device, vulkan=required fails", 0},
    {"vulkan_device", T_STR, "", CMD_RUN, NULL,
     "Vulkan device index or name substring (may name a CPU device such as llvmpipe)", 0},
    {"kernel", T_STR, "auto", CMD_RUN, "auto|ref|simd|blas", "CPU kernel choice for NF4 and dense matmuls",
     0},
    {"compute", T_STR, "fp32", CMD_RUN, "fp32|bf16",
     "arithmetic of the matmuls on frozen weights (the NF4 projections, and lm_head over more than 8 rows): bf16 "
     "rounds both operands to bf16 and sums the exact products in fp32, as bitsandbytes' compute_dtype=bfloat16 "
     "(QLoRA's recipe, so train's default; about 2x the GEMM speed where the CPU has AVX-512 BF16, the same speed "
     "elsewhere); fp32 is the arithmetic the tests hold against PyTorch (the default of the other commands). A "
     "checkpoint that does not record it was trained in fp32",
     0},
    {"threads", T_INT, "0", CMD_ALL, NULL, "OpenMP threads (0: OMP_NUM_THREADS or every core)", 0},
    // data
    {"data", T_STR, "", CMD_TRAIN | CMD_EVAL | CMD_SCORE, NULL,
     "JSONL file, one {\"prompt\": ..., \"completion\": ...} or {\"text\": ...} object per line", 0},
    {"eval_file", T_STR, "", CMD_TRAIN, NULL, "JSONL evaluated every --eval-steps steps and at the end", 0},
    {"template", T_STR, "{prompt}", CMD_RUN, NULL, "prompt template; {prompt} is replaced by the prompt", 0},
    {"max_len", T_INT, "512", CMD_INFO | CMD_TRAIN | CMD_EVAL, NULL,
     "tokens per example (prompt + completion; the default is capped at the model's context); longer "
     "examples are truncated on the right and reported",
     0},
    {"no_truncate", T_BOOL, "false", CMD_TRAIN | CMD_EVAL, NULL,
     "an example longer than --max-len is an error", 0},
    {"skip_bad_lines", T_BOOL, "false", CMD_TRAIN | CMD_EVAL | CMD_SCORE, NULL,
     "skip (and count) malformed JSONL lines instead of stopping", 0},
    {"train_on_source", T_BOOL, "false", CMD_TRAIN | CMD_EVAL, NULL,
     "count the loss on prompt tokens too (default: completion tokens only)", 0},
    // LoRA
    {"rank", T_INT, "64", CMD_INFO | CMD_TRAIN, NULL, "LoRA rank r (QLoRA: 64)", 0},
    {"alpha", T_FLOAT, "16", CMD_INFO | CMD_TRAIN, NULL, "LoRA alpha; scale = alpha / r (QLoRA: 16)", 0},
    {"dropout", T_FLOAT, "0.1", CMD_INFO | CMD_TRAIN, NULL,
     "LoRA dropout (QLoRA: 0.1 for models up to 13B, 0.05 for 33B and 65B)", 0},
    {"targets", T_STR, "all", CMD_INFO | CMD_TRAIN, NULL,
     "projections with an adapter: all, or a comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,"
     "down_proj",
     0},
    {"use_rslora", T_BOOL, "false", CMD_INFO | CMD_TRAIN, NULL, "rank-stabilized scale alpha / sqrt(r)", 0},
    // optimizer
    {"optim", T_STR, "paged_adamw_32bit", CMD_INFO | CMD_TRAIN,
     "paged_adamw_32bit|paged_adamw_8bit|adamw_32bit|adamw_8bit", "optimizer (QLoRA: paged_adamw_32bit)", 0},
    {"optim_memory_mb", T_INT, "0", CMD_TRAIN, NULL,
     "paged optimizers: resident state budget in MiB, the rest is paged to a temp file (0: unlimited)", 0},
    {"lr", T_FLOAT, "0.0002", CMD_TRAIN, NULL, "peak learning rate (QLoRA: 2e-4 up to 13B, 1e-4 above)", 0},
    {"lr_scheduler", T_STR, "constant", CMD_TRAIN, "constant|constant_with_warmup|linear|cosine",
     "learning-rate schedule (QLoRA: constant, which ignores warmup as transformers does)", 0},
    {"warmup_ratio", T_FLOAT, "0.03", CMD_TRAIN, NULL,
     "warmup steps as a fraction of the total (QLoRA: 0.03)", 0},
    {"warmup_steps", T_INT, "0", CMD_TRAIN, NULL, "warmup steps; > 0 overrides --warmup-ratio", 0},
    {"weight_decay", T_FLOAT, "0", CMD_TRAIN, NULL, "decoupled weight decay (QLoRA: 0)", 0},
    {"adam_beta1", T_FLOAT, "0.9", CMD_TRAIN, NULL, "AdamW beta1", 0},
    {"adam_beta2", T_FLOAT, "0.999", CMD_TRAIN, NULL, "AdamW beta2", 0},
    {"adam_epsilon", T_FLOAT, "1e-08", CMD_TRAIN, NULL, "AdamW epsilon", 0},
    {"max_grad_norm", T_FLOAT, "0.3", CMD_TRAIN, NULL, "global gradient clipping norm, 0 = off (QLoRA: 0.3)",
     0},
    // schedule of the run
    {"batch_size", T_INT, "1", CMD_INFO | CMD_TRAIN | CMD_EVAL, NULL, "examples per micro-batch (QLoRA: 1)",
     0},
    {"grad_accum", T_INT, "16", CMD_TRAIN, NULL, "micro-batches per optimizer step (QLoRA: 16)", 0},
    {"epochs", T_INT, "1", CMD_TRAIN, NULL, "passes over the data (unless --max-steps is set)", 0},
    {"max_steps", T_INT, "0", CMD_TRAIN, NULL, "optimizer steps; > 0 overrides --epochs", 0},
    {"eval_batch_size", T_INT, "0", CMD_TRAIN, NULL, "examples per evaluation batch (0: --batch-size)", 0},
    {"seed", T_INT, "0", CMD_TRAIN | CMD_GENERATE, NULL,
     "train: LoRA initialization and dropout; generate: sampling (QLoRA: 0)", 0},
    {"data_seed", T_INT, "42", CMD_TRAIN, NULL, "data order (QLoRA: 42)", 0},
    {"group_by_length", T_BOOL, "true", CMD_TRAIN, NULL,
     "length-grouped batches as transformers' LengthGroupedSampler (QLoRA: on)", 0},
    {"gradient_checkpointing", T_BOOL, "true", CMD_INFO | CMD_TRAIN, NULL,
     "recompute each layer in backward instead of keeping its activations (QLoRA: on)", 0},
    {"logging_steps", T_INT, "10", CMD_TRAIN, NULL, "a log line every N steps when stderr is not a terminal",
     0},
    {"save_steps", T_INT, "500", CMD_TRAIN, NULL, "checkpoint every N steps (0: none)", 0},
    {"save_total_limit", T_INT, "40", CMD_TRAIN, NULL, "keep the last K checkpoints (0: all)", 0},
    {"eval_steps", T_INT, "187", CMD_TRAIN, NULL, "evaluate --eval-file every N steps (0: only at the end)",
     0},
    {"resume", T_STR, "", CMD_TRAIN, NULL,
     "continue from a checkpoint: --resume (the latest in --output) or --resume=DIR", 0},
    {"overwrite", T_BOOL, "false", CMD_TRAIN, NULL, "delete the checkpoints already in --output", 0},
    // tracking
    {"mlruns", T_STR, "./mlruns", CMD_TRAIN, NULL, "MLflow file store directory", 0},
    {"experiment", T_STR, "qlora", CMD_TRAIN, NULL, "MLflow experiment name", 0},
    {"run_name", T_STR, "", CMD_TRAIN, NULL, "MLflow run name (default: generated)", 0},
    {"register_model", T_STR, "", CMD_TRAIN, NULL,
     "register the adapter in the MLflow model registry as NAME", 0},
    {"no_mlflow", T_BOOL, "false", CMD_TRAIN, NULL, "do not record an MLflow run", 0},
    // inference
    {"prompt", T_STR, "", CMD_GENERATE | CMD_SCORE, NULL, "prompt text (passed through --template)", 0},
    {"max_new", T_INT, "64", CMD_GENERATE, NULL, "tokens to generate", 0},
    {"temperature", T_FLOAT, "0", CMD_GENERATE, NULL, "sampling temperature; 0 = greedy", 0},
    {"top_p", T_FLOAT, "1", CMD_GENERATE, NULL, "nucleus sampling threshold; 1 = off", 0},
    {"ctx", T_INT, "0", CMD_GENERATE | CMD_SCORE, NULL, "KV-cache length (0: what the request needs)", 0},
    {"candidates", T_STR, "", CMD_SCORE, NULL, "'|'-separated continuations to score against --prompt", 0},
    {"dtype", T_STR, "fp16", CMD_MERGE, "fp32|fp16|bf16", "dtype of the merged weights", 0},
    {"json", T_BOOL, "false", CMD_INFO, NULL, "print the report as JSON", 0},
    // test hooks
    {"debug_nan_at_step", T_INT, "0", CMD_TRAIN, NULL, "make the loss of step K NaN (tests)", 1},
    {"debug_sleep_ms", T_INT, "0", CMD_TRAIN, NULL, "sleep N ms after every step (tests)", 1},
    {"debug_sigint_at_step", T_INT, "0", CMD_TRAIN, NULL,
     "raise SIGINT after the first micro-batch of step K (tests)", 1},
};
#define CLI_NOPTS ((int)(sizeof cli_opts / sizeof cli_opts[0]))

enum { SRC_DEFAULT = 0, SRC_CONFIG = 1, SRC_FLAG = 2 };

typedef struct cli_cfg {
    unsigned    cmd;                // the command (one CMD_* bit)
    const char *cmd_name;
    char       *val[CLI_NOPTS];     // resolved text values
    int         src[CLI_NOPTS];     // SRC_*
    char       *config_path;        // --config FILE, or NULL
} cli_cfg;

static int cli_opt_index(const char *key) {
    for (int i = 0; i < CLI_NOPTS; i++)
        if (strcmp(cli_opts[i].key, key) == 0) return i;
    return -1;
}

// Key of a flag or config entry: '-' → '_'.
static void cli_norm_key(char *dst, size_t cap, const char *s, size_t n) {
    size_t i;
    for (i = 0; i < n && i + 1 < cap; i++) dst[i] = s[i] == '-' ? '_' : s[i];
    dst[i] = 0;
}

static void cli_flag_name(char *dst, size_t cap, const char *key) {
    size_t i;
    for (i = 0; key[i] && i + 1 < cap; i++) dst[i] = key[i] == '_' ? '-' : key[i];
    dst[i] = 0;
}

static void cli_cfg_free(cli_cfg *c) {
    for (int i = 0; i < CLI_NOPTS; i++) free(c->val[i]);
    free(c->config_path);
    memset(c, 0, sizeof *c);
}

static void cli_set(cli_cfg *c, int i, const char *v, int src) {
    free(c->val[i]);
    c->val[i] = cli_strdup(v);
    c->src[i] = src;
}

static const char *cfg_str(const cli_cfg *c, const char *key) {
    int i = cli_opt_index(key);
    if (i < 0) {
        fprintf(stderr, "%s: internal error: no option %s\n", cli_prog, key);
        exit(1);
    }
    return c->val[i];
}

static int64_t cfg_int(const cli_cfg *c, const char *key) { return strtoll(cfg_str(c, key), NULL, 10); }
static double cfg_float(const cli_cfg *c, const char *key) { return strtod(cfg_str(c, key), NULL); }
static int cfg_bool(const cli_cfg *c, const char *key) { return strcmp(cfg_str(c, key), "true") == 0; }
static int cfg_given(const cli_cfg *c, const char *key) { return c->src[cli_opt_index(key)] != SRC_DEFAULT; }

static int cli_parse_bool(const char *v, int *out) {
    if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes") || !strcmp(v, "on")) *out = 1;
    else if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no") || !strcmp(v, "off")) *out = 0;
    else return 0;
    return 1;
}

// Checks a value against the option's type and choices; stores the canonical text. 0 on error.
static int cli_store(cli_cfg *c, int i, const char *v, int src, const char *where) {
    const cli_opt *o = &cli_opts[i];
    char flag[64];
    cli_flag_name(flag, sizeof flag, o->key);
    char buf[64];
    if (o->type == T_INT) {
        char *end;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (!*v || *end || errno) {
            cli_error("%s: --%s expects an integer, got '%s'", where, flag, v);
            return 0;
        }
        snprintf(buf, sizeof buf, "%lld", x);
        v = buf;
    } else if (o->type == T_FLOAT) {
        char *end;
        double x = strtod(v, &end);
        if (!*v || *end || !isfinite(x)) {
            cli_error("%s: --%s expects a finite number, got '%s'", where, flag, v);
            return 0;
        }
        qlora_format_double(buf, x, 0);
        v = buf;
    } else if (o->type == T_BOOL) {
        int b;
        if (!cli_parse_bool(v, &b)) {
            cli_error("%s: --%s expects true or false, got '%s'", where, flag, v);
            return 0;
        }
        v = b ? "true" : "false";
    }
    if (o->choices) {
        const char *s = o->choices;
        int ok = 0;
        size_t n = strlen(v);
        while (*s && !ok) {
            const char *e = strchr(s, '|');
            size_t len = e ? (size_t)(e - s) : strlen(s);
            ok = len == n && strncmp(s, v, n) == 0;
            s = e ? e + 1 : s + len;
        }
        if (!ok) {
            cli_error("%s: --%s must be one of %s, got '%s'", where, flag, o->choices, v);
            return 0;
        }
    }
    cli_set(c, i, v, src);
    return 1;
}

// The default of option i for command cmd. One option's default differs by command: train computes in
// bf16, as the QLoRA recipe does (spec §4.5, bnb_4bit_compute_dtype=bfloat16); generate, score and eval
// stay in fp32, the arithmetic the tests hold against PyTorch.
static const char *cli_opt_default(int i, unsigned cmd) {
    if (cmd == CMD_TRAIN && !strcmp(cli_opts[i].key, "compute")) return "bf16";
    return cli_opts[i].def;
}

static void cli_cfg_defaults(cli_cfg *c, unsigned cmd, const char *cmd_name) {
    memset(c, 0, sizeof *c);
    c->cmd = cmd;
    c->cmd_name = cmd_name;
    for (int i = 0; i < CLI_NOPTS; i++) cli_set(c, i, cli_opt_default(i, cmd), SRC_DEFAULT);
}

// Applies a JSON object of options (a --config file, or a checkpoint's resolved_config.json).
// Keys of options other commands take are ignored, so one file can serve every command.
static int cli_cfg_apply_json(cli_cfg *c, const char *path) {
    qlora_json_doc doc;
    qlora_error err;
    if (qlora_json_read_file(&doc, path, &err) != QLORA_OK) {
        cli_error("config: %s", err.detail);
        return 0;
    }
    int ok = 1;
    if (doc.root.type != QLORA_JSON_OBJECT) {
        cli_error("config %s: the top level must be a JSON object of options", path);
        ok = 0;
    }
    for (int64_t k = 0; ok && k < doc.root.count; k++) {
        char key[128];
        cli_norm_key(key, sizeof key, doc.root.keys[k], doc.root.key_lens[k]);
        int i = cli_opt_index(key);
        const qlora_json *v = &doc.root.items[k];
        if (i < 0) {
            cli_error("config %s: unknown option \"%s\" (see qlora %s --help)", path, doc.root.keys[k],
                      c->cmd_name);
            ok = 0;
            break;
        }
        if (!(cli_opts[i].cmds & c->cmd) || v->type == QLORA_JSON_NULL) continue;
        char where[600];
        snprintf(where, sizeof where, "config %s", path);
        char num[64];
        const char *text = NULL;
        char *owned = NULL;
        switch (v->type) {
        case QLORA_JSON_STRING: text = v->str; break;
        case QLORA_JSON_BOOL: text = v->boolean ? "true" : "false"; break;
        case QLORA_JSON_NUMBER:
            if (v->is_integer) snprintf(num, sizeof num, "%lld", (long long)v->integer);
            else qlora_format_double(num, v->number, 0);
            text = num;
            break;
        case QLORA_JSON_ARRAY: {   // a list of strings becomes a comma list (targets)
            size_t n = 1;
            for (int64_t j = 0; j < v->count; j++)
                n += (v->items[j].type == QLORA_JSON_STRING ? v->items[j].str_len : 0) + 1;
            owned = (char *)cli_calloc(n);
            for (int64_t j = 0; j < v->count && ok; j++) {
                if (v->items[j].type != QLORA_JSON_STRING) {
                    cli_error("%s: \"%s\" must be a list of strings", where, key);
                    ok = 0;
                    break;
                }
                if (j) strcat(owned, ",");
                strcat(owned, v->items[j].str);
            }
            text = owned;
            break;
        }
        default:
            cli_error("%s: \"%s\" has an unsupported JSON type", where, key);
            ok = 0;
        }
        if (ok &&
            (cli_opts[i].type == T_STR) != (v->type == QLORA_JSON_STRING || v->type == QLORA_JSON_ARRAY)) {
            cli_error("%s: \"%s\" must be a %s", where, key,
                      cli_opts[i].type == T_STR    ? "string"
                      : cli_opts[i].type == T_BOOL ? "boolean"
                                                   : "number");
            ok = 0;
        }
        if (ok) ok = cli_store(c, i, text, SRC_CONFIG, where);
        free(owned);
    }
    qlora_json_free(&doc);
    return ok;
}

typedef struct cli_flag_value {
    int   opt;
    char *value;
} cli_flag_value;

// Parses argv (after the command name). Returns 1, 0 on error, or 2 when --help was asked.
static int cli_parse_args(cli_cfg *c, int argc, char **argv) {
    cli_flag_value *fv = (cli_flag_value *)cli_calloc(sizeof(cli_flag_value) * (size_t)(argc + 1));
    int nfv = 0, ok = 1;
    for (int a = 0; a < argc && ok; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            ok = 2;
            break;
        }
        if (strncmp(arg, "--", 2) != 0) {
            cli_error("unexpected argument '%s' (options start with --; see qlora %s --help)", arg,
                      c->cmd_name);
            ok = 0;
            break;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        char key[128];
        cli_norm_key(key, sizeof key, name, eq ? (size_t)(eq - name) : strlen(name));
        if (!strcmp(key, "config")) {
            const char *v = eq ? eq + 1 : (a + 1 < argc ? argv[++a] : NULL);
            if (!v) {
                cli_error("--config needs a file");
                ok = 0;
                break;
            }
            free(c->config_path);
            c->config_path = cli_strdup(v);
            continue;
        }
        int negated = 0, i = cli_opt_index(key);
        if (i < 0 && !strncmp(key, "no_", 3) && !eq) {   // --no-FLAG for booleans
            int j = cli_opt_index(key + 3);
            if (j >= 0 && cli_opts[j].type == T_BOOL) {
                i = j;
                negated = 1;
            }
        }
        if (i < 0 || !(cli_opts[i].cmds & c->cmd)) {
            cli_error("qlora %s does not take --%.*s (see qlora %s --help)", c->cmd_name,
                      (int)(eq ? (size_t)(eq - name) : strlen(name)), name, c->cmd_name);
            ok = 0;
            break;
        }
        const char *v;
        if (eq) v = eq + 1;
        else if (cli_opts[i].type == T_BOOL) v = negated ? "false" : "true";
        else if (!strcmp(key, "resume") && (a + 1 >= argc || !strncmp(argv[a + 1], "--", 2))) v = "latest";
        else if (a + 1 < argc) v = argv[++a];
        else {
            cli_error("--%s needs a value", name);
            ok = 0;
            break;
        }
        fv[nfv].opt = i;
        fv[nfv].value = cli_strdup(v);
        nfv++;
    }
    if (ok == 1 && c->config_path && !cli_cfg_apply_json(c, c->config_path)) ok = 0;
    for (int k = 0; k < nfv && ok == 1; k++)
        ok = cli_store(c, fv[k].opt, fv[k].value, SRC_FLAG, "command line");
    for (int k = 0; k < nfv; k++) free(fv[k].value);
    free(fv);
    return ok;
}

// Re-applies command-line flags over a new file layer: used when --resume brings the
// checkpoint's resolved configuration (flags keep precedence).
static int cli_reapply(cli_cfg *c, const char *path) {
    cli_cfg flags;
    memset(&flags, 0, sizeof flags);
    for (int i = 0; i < CLI_NOPTS; i++)
        if (c->src[i] == SRC_FLAG) flags.val[i] = cli_strdup(c->val[i]);
    for (int i = 0; i < CLI_NOPTS; i++)
        if (c->src[i] != SRC_FLAG) cli_set(c, i, cli_opt_default(i, c->cmd), SRC_DEFAULT);
    int ok = cli_cfg_apply_json(c, path);
    for (int i = 0; i < CLI_NOPTS; i++)
        if (flags.val[i]) {
            cli_set(c, i, flags.val[i], SRC_FLAG);
            free(flags.val[i]);
        }
    return ok;
}

// Writes every option the command takes (hidden ones only when set), with its JSON type.
static void cli_cfg_write_json(const cli_cfg *c, qlora_json_writer *w) {
    qlora_jw_object_begin(w);
    for (int i = 0; i < CLI_NOPTS; i++) {
        const cli_opt *o = &cli_opts[i];
        if (!(o->cmds & c->cmd) || (o->hidden && c->src[i] == SRC_DEFAULT)) continue;
        qlora_jw_key(w, o->key);
        switch (o->type) {
        case T_STR: qlora_jw_string(w, c->val[i]); break;
        case T_INT: qlora_jw_int(w, strtoll(c->val[i], NULL, 10)); break;
        case T_FLOAT: qlora_jw_double(w, strtod(c->val[i], NULL)); break;
        case T_BOOL: qlora_jw_bool(w, strcmp(c->val[i], "true") == 0); break;
        }
    }
    qlora_jw_object_end(w);
}

static void cli_print_options(unsigned cmd) {
    fprintf(stdout,
            "options (flag, default; every option can also be set in a --config JSON file as \"key\": "
            "value, with '_' for '-'; flags override the file):\n");
    fprintf(stdout, "  --config FILE\n        JSON object of options\n");
    for (int i = 0; i < CLI_NOPTS; i++) {
        const cli_opt *o = &cli_opts[i];
        if (!(o->cmds & cmd) || o->hidden) continue;
        char flag[64];
        cli_flag_name(flag, sizeof flag, o->key);
        const char *arg = o->type == T_INT ? " N" : o->type == T_FLOAT ? " X" : o->type == T_BOOL ? "" : " S";
        if (o->choices) arg = "";
        fprintf(stdout, "  --%s%s%s%s", flag, arg, o->choices ? " " : "", o->choices ? o->choices : "");
        if (o->type == T_BOOL && strncmp(o->key, "no_", 3) != 0) fprintf(stdout, " | --no-%s", flag);
        const char *def = cli_opt_default(i, cmd);
        fprintf(stdout, "   (default: %s)\n        %s\n", *def ? def : "none", o->help);
    }
}

// ---------------------------------------------------------------------------------------------
// files

static int cli_is_dir(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISDIR(s.st_mode);
}

static int cli_is_file(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISREG(s.st_mode);
}

static int cli_mkdirs(const char *path) {
    char *p = cli_strdup(path);
    int ok = 1;
    for (char *s = p + 1; *s && ok; s++)
        if (*s == '/') {
            *s = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) ok = 0;
            *s = '/';
        }
    if (ok && mkdir(p, 0777) != 0 && errno != EEXIST) ok = 0;
    if (!ok || !cli_is_dir(path)) {
        cli_error("%s: cannot create the directory: %s", path, strerror(errno));
        ok = 0;
    }
    free(p);
    return ok;
}

// Removes a directory tree (files and folders only). 1 on success or when it did not exist.
static int cli_rm_rf(const char *path) {
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT;
    struct dirent *e;
    int ok = 1;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = cli_fmt("%s/%s", path, e->d_name);
        if (cli_is_dir(p)) ok &= cli_rm_rf(p);
        else if (unlink(p) != 0) ok = 0;
        free(p);
    }
    closedir(d);
    if (rmdir(path) != 0) ok = 0;
    return ok;
}

static int cli_fsync_path(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    int ok = fsync(fd) == 0;
    close(fd);
    return ok;
}

static int cli_copy_file(const char *src, const char *dst) {
    void *data = NULL;
    size_t n = 0;
    qlora_error err;
    if (qlora_read_file(src, &data, &n, &err) != QLORA_OK) {
        cli_error("%s", err.detail);
        return 0;
    }
    int ok = qlora_write_file_atomic(dst, data, n, &err) == QLORA_OK;
    if (!ok) cli_error("%s", err.detail);
    QLORA_FREE(data);
    return ok;
}

// Writes JSON text atomically.
static int cli_write_json(const char *path, qlora_json_writer *w) {
    qlora_error err;
    if (qlora_jw_finish(w, 1, &err) != QLORA_OK ||
        qlora_write_file_atomic(path, w->buf, w->len, &err) != QLORA_OK) {
        cli_error("%s: %s", path, err.detail);
        return 0;
    }
    return 1;
}

// Steps of the "checkpoint-<step>" folders in dir, ascending. Returns the count.
static int64_t cli_list_checkpoints(const char *dir, int64_t **steps_out) {
    DIR *d = opendir(dir);
    int64_t n = 0, cap = 16;
    int64_t *steps = (int64_t *)cli_alloc(sizeof(int64_t) * (size_t)cap);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strncmp(e->d_name, "checkpoint-", 11) != 0) continue;
            char *end;
            long long s = strtoll(e->d_name + 11, &end, 10);
            if (*end || end == e->d_name + 11 || s < 0) continue;
            if (n == cap) {
                cap *= 2;
                int64_t *ns = (int64_t *)cli_alloc(sizeof(int64_t) * (size_t)cap);
                memcpy(ns, steps, sizeof(int64_t) * (size_t)n);
                free(steps);
                steps = ns;
            }
            steps[n++] = s;
        }
        closedir(d);
    }
    for (int64_t i = 1; i < n; i++)   // insertion sort: there are few
        for (int64_t j = i; j > 0 && steps[j - 1] > steps[j]; j--) {
            int64_t t = steps[j];
            steps[j] = steps[j - 1];
            steps[j - 1] = t;
        }
    *steps_out = steps;
    return n;
}

// ---------------------------------------------------------------------------------------------
// data: JSONL → token ids and labels
//
//   {"prompt": P, "completion": C}  (also "input"/"output", as qlora.py)
//       source = BOS + template(P), target = C + EOS; labels = -100 over the source
//       (all tokens count with --train-on-source), as qlora.py's collator.
//   {"text": S}  tokens = BOS + S + EOS; every token counts.
//   An example longer than max_len keeps its first max_len tokens; the count of truncated
//   examples and of dropped tokens is reported (--no-truncate makes it an error). An example
//   left without any counted token is dropped and counted too. The text itself is never printed.

#define CLI_IGNORE (-100)

typedef struct cli_example {
    int32_t *ids;       // (n) tokens
    int32_t *labels;    // (n) ids or -100
    int32_t  n;
    int32_t  n_count;   // labels that enter the loss: positions t ≥ 1 with labels[t] != -100
    int64_t  line;      // 1-based line in the file
} cli_example;

typedef struct cli_dataset {
    cli_example *ex;
    int64_t      n, cap;
    int64_t      lines, blank, bad, truncated, tokens_dropped, no_target;
    int64_t      tokens, count_tokens;   // Σ n, Σ n_count
    int32_t      longest;
    int64_t      n_text, n_pair;
} cli_dataset;

typedef struct cli_data_opts {
    const char *template_;
    int32_t     max_len;
    int         no_truncate, skip_bad, train_on_source;
} cli_data_opts;

static void cli_dataset_free(cli_dataset *d) {
    for (int64_t i = 0; i < d->n; i++) {
        free(d->ex[i].ids);
        free(d->ex[i].labels);
    }
    free(d->ex);
    memset(d, 0, sizeof *d);
}

// Encodes text into a fresh array.
static qlora_status cli_encode(const qlora_tokenizer *tok, const char *s, size_t n, int bos, int eos,
                               int32_t **ids, int64_t *count, qlora_error *err) {
    int64_t k = 0;
    qlora_status st = qlora_tokenizer_encode(tok, s, n, bos, eos, NULL, 0, &k, err);
    if (st != QLORA_OK && st != QLORA_ERR_SHAPE) return st;
    *ids = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(k + 1));
    st = qlora_tokenizer_encode(tok, s, n, bos, eos, *ids, k, count, err);
    if (st != QLORA_OK) {
        free(*ids);
        *ids = NULL;
    }
    return st;
}

// template with every "{prompt}" replaced.
static char *cli_apply_template(const char *tmpl, const char *prompt, size_t plen) {
    size_t n = 0, tl = strlen(tmpl);
    for (const char *s = tmpl; (s = strstr(s, "{prompt}")) != NULL; s += 8) n++;
    char *out = (char *)cli_alloc(tl + n * plen + 1), *o = out;
    for (const char *s = tmpl; *s;) {
        if (!strncmp(s, "{prompt}", 8)) {
            memcpy(o, prompt, plen);
            o += plen;
            s += 8;
        } else *o++ = *s++;
    }
    *o = 0;
    return out;
}

static int cli_json_str(const qlora_json *obj, const char *k1, const char *k2, const qlora_json **out) {
    const qlora_json *v = qlora_json_get(obj, k1);
    if (!v && k2) v = qlora_json_get(obj, k2);
    *out = v;
    return v && v->type == QLORA_JSON_STRING;
}

// Loads a JSONL file. On error prints the message (naming the file and line) and returns 0.
static int cli_dataset_load(cli_dataset *d, const char *path, const qlora_tokenizer *tok,
                            const cli_data_opts *o) {
    memset(d, 0, sizeof *d);
    void *data = NULL;
    size_t size = 0;
    qlora_error err;
    if (qlora_read_file(path, &data, &size, &err) != QLORA_OK) {
        cli_error("data: %s", err.detail);
        return 0;
    }
    const char *text = (const char *)data, *end = text + size;
    int ok = 1;
    int64_t line = 0;
    for (const char *s = text; s < end && ok;) {
        const char *nl = (const char *)memchr(s, '\n', (size_t)(end - s));
        const char *e = nl ? nl : end;
        size_t len = (size_t)(e - s);
        line++;
        const char *ls = s;
        s = nl ? nl + 1 : end;
        if (len && ls[len - 1] == '\r') len--;
        size_t k = 0;
        while (k < len && isspace((unsigned char)ls[k])) k++;
        if (k == len) {
            d->blank++;
            continue;
        }
        d->lines++;
        qlora_json_doc doc;
        char why[300] = "";
        const qlora_json *p = NULL, *c = NULL, *t = NULL;
        int is_text = 0;
        if (qlora_json_parse(&doc, ls, len, &err) != QLORA_OK) {
            // the parser counts lines within the line: keep only the column
            const char *det = strncmp(err.detail, "line 1 ", 7) == 0 ? err.detail + 7 : err.detail;
            snprintf(why, sizeof why, "malformed JSON (%s)", det);
        } else if (doc.root.type != QLORA_JSON_OBJECT) {
            snprintf(why, sizeof why, "expected a JSON object");
        } else if (cli_json_str(&doc.root, "text", NULL, &t)) {
            is_text = 1;
        } else if (!cli_json_str(&doc.root, "prompt", "input", &p) ||
                   !cli_json_str(&doc.root, "completion", "output", &c)) {
            snprintf(why, sizeof why,
                     "expected a \"text\" string or \"prompt\" and \"completion\" strings");
        }
        if (why[0]) {
            if (doc.arena) qlora_json_free(&doc);
            if (o->skip_bad) {
                d->bad++;
                continue;
            }
            cli_error("%s:%lld: %s (--skip-bad-lines skips such lines)", path, (long long)line, why);
            ok = 0;
            break;
        }
        int32_t *src = NULL, *tgt = NULL;
        int64_t ns = 0, nt = 0;
        qlora_status st;
        if (is_text) {
            st = cli_encode(tok, t->str, t->str_len, 1, 1, &src, &ns, &err);
        } else {
            char *prompt = cli_apply_template(o->template_, p->str, p->str_len);
            st = cli_encode(tok, prompt, strlen(prompt), 1, 0, &src, &ns, &err);
            if (st == QLORA_OK) st = cli_encode(tok, c->str, c->str_len, 0, 1, &tgt, &nt, &err);
            free(prompt);
        }
        qlora_json_free(&doc);
        if (st != QLORA_OK) {
            cli_error("%s:%lld: tokenizer: %s", path, (long long)line, err.detail);
            free(src);
            free(tgt);
            ok = 0;
            break;
        }
        int64_t total = ns + nt;
        if (total > o->max_len) {
            if (o->no_truncate) {
                cli_error("%s:%lld: the example has %lld tokens, more than --max-len %d (--no-truncate)",
                          path, (long long)line, (long long)total, (int)o->max_len);
                free(src);
                free(tgt);
                ok = 0;
                break;
            }
            d->truncated++;
            d->tokens_dropped += total - o->max_len;
        }
        int32_t n = (int32_t)(total < o->max_len ? total : o->max_len);
        cli_example ex;
        memset(&ex, 0, sizeof ex);
        ex.ids = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
        ex.labels = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(n > 0 ? n : 1));
        ex.n = n;
        ex.line = line;
        for (int32_t i = 0; i < n; i++) {
            int from_src = i < ns;
            ex.ids[i] = from_src ? src[i] : tgt[i - ns];
            ex.labels[i] = (from_src && !is_text && !o->train_on_source) ? CLI_IGNORE : ex.ids[i];
            if (i >= 1 && ex.labels[i] != CLI_IGNORE) ex.n_count++;
        }
        free(src);
        free(tgt);
        if (ex.n_count == 0) {   // nothing left to learn from (e.g. the prompt filled max_len)
            d->no_target++;
            free(ex.ids);
            free(ex.labels);
            continue;
        }
        if (d->n == d->cap) {
            d->cap = d->cap ? 2 * d->cap : 64;
            cli_example *ne = (cli_example *)cli_alloc(sizeof(cli_example) * (size_t)d->cap);
            if (d->n) memcpy(ne, d->ex, sizeof(cli_example) * (size_t)d->n);
            free(d->ex);
            d->ex = ne;
        }
        d->ex[d->n++] = ex;
        d->tokens += n;
        d->count_tokens += ex.n_count;
        if (n > d->longest) d->longest = n;
        if (is_text) d->n_text++;
        else d->n_pair++;
    }
    QLORA_FREE(data);
    if (!ok) cli_dataset_free(d);
    return ok;
}

// One line about a loaded file: counts only, never text.
static void cli_dataset_report(const cli_dataset *d, const char *what, const char *path, int32_t max_len) {
    cli_note(
        "%s %s: %lld examples (%lld prompt/completion, %lld text), %lld tokens, %lld in the loss, longest %d",
        what, path, (long long)d->n, (long long)d->n_pair, (long long)d->n_text, (long long)d->tokens,
        (long long)d->count_tokens, (int)d->longest);
    if (d->truncated)
        cli_note("%s: truncated %lld example%s longer than --max-len %d (%lld tokens dropped)", what,
                 (long long)d->truncated, d->truncated == 1 ? "" : "s", (int)max_len,
                 (long long)d->tokens_dropped);
    if (d->no_target)
        cli_note("%s: dropped %lld example%s with no completion token left after truncation", what,
                 (long long)d->no_target, d->no_target == 1 ? "" : "s");
    if (d->bad)
        cli_note("%s: skipped %lld malformed line%s (--skip-bad-lines)", what, (long long)d->bad,
                 d->bad == 1 ? "" : "s");
}

// --- order of the examples in an epoch -------------------------------------------------------
//
//   The permutation of epoch e is a Fisher-Yates shuffle from xoshiro seeded with (data_seed, e),
//   so a resumed run regenerates it. With group_by_length it is regrouped like transformers'
//   get_length_grouped_indices: megabatches of min(N / (4·B), 50)·B (at least B) consecutive
//   indices, each sorted by length (descending, stable), and the longest example of all moved
//   to the front (swapped with the first of the first megabatch), so an out-of-memory shows at once.

typedef struct cli_len_idx {
    int64_t len, pos, idx;
} cli_len_idx;

static int cli_len_idx_cmp(const void *a, const void *b) {
    const cli_len_idx *x = (const cli_len_idx *)a, *y = (const cli_len_idx *)b;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;   // longer first
    return x->pos < y->pos ? -1 : x->pos > y->pos;           // then the original order: stable
}

// Sorts idx[0..n) by example length, longest first, keeping the order of equal lengths.
static void cli_sort_by_length(int64_t *idx, int64_t n, const cli_dataset *d) {
    if (n < 2) return;
    cli_len_idx *v = (cli_len_idx *)cli_alloc(sizeof(cli_len_idx) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        v[i].len = d->ex[idx[i]].n;
        v[i].pos = i;
        v[i].idx = idx[i];
    }
    qsort(v, (size_t)n, sizeof *v, cli_len_idx_cmp);
    for (int64_t i = 0; i < n; i++) idx[i] = v[i].idx;
    free(v);
}

static void cli_epoch_order(int64_t *order, const cli_dataset *d, uint64_t data_seed, int64_t epoch,
                            int64_t B, int group_by_length) {
    int64_t n = d->n;
    qlora_rng r;
    qlora_rng_seed(&r, data_seed * 0x9E3779B97F4A7C15ull + (uint64_t)epoch + 1);
    for (int64_t i = 0; i < n; i++) order[i] = i;
    for (int64_t i = n - 1; i > 0; i--) {
        int64_t j = (int64_t)(qlora_rng_u64(&r) % (uint64_t)(i + 1));
        int64_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    if (!group_by_length || n < 2) return;
    int64_t mult = n / (B * 4);
    if (mult > 50) mult = 50;
    if (mult < 1) mult = 1;
    int64_t mb = mult * B, best_mb = 0;
    for (int64_t s = 0; s < n; s += mb) {
        cli_sort_by_length(order + s, (s + mb < n ? s + mb : n) - s, d);
        if (d->ex[order[s]].n > d->ex[order[best_mb]].n) best_mb = s;
    }
    int64_t t = order[0];
    order[0] = order[best_mb];
    order[best_mb] = t;
}

// A padded batch of up to B examples: tokens, key mask and labels (B, T), T a multiple of 16
// covering the longest (at most cap). Returns T.
static int64_t cli_batch_fill(int32_t *tokens, uint8_t *mask, int32_t *labels, const cli_dataset *d,
                              const int64_t *idx, int64_t nb, int64_t cap) {
    int64_t T = 1;
    for (int64_t b = 0; b < nb; b++)
        if (d->ex[idx[b]].n > T) T = d->ex[idx[b]].n;
    T = (T + 15) / 16 * 16;
    if (T > cap) T = cap;
    for (int64_t b = 0; b < nb; b++) {
        const cli_example *e = &d->ex[idx[b]];
        for (int64_t t = 0; t < T; t++) {
            int in = t < e->n;
            tokens[b * T + t] = in ? e->ids[t] : 0;
            mask[b * T + t] = (uint8_t)in;
            labels[b * T + t] = in ? e->labels[t] : CLI_IGNORE;
        }
    }
    return T;
}

// ---------------------------------------------------------------------------------------------
// loss curve: an RGB plot drawn by hand and written with stb_image_write

#if defined(__has_include)
#if __has_include(<stb/stb_image_write.h>)
#define CLI_HAVE_STB 1
#endif
#endif

#ifdef CLI_HAVE_STB
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#include <stb/stb_image_write.h>
#endif

typedef struct cli_canvas {
    int      w, h;
    uint8_t *px;   // (h, w, 3)
} cli_canvas;

static void cli_px(cli_canvas *c, int x, int y, const uint8_t *rgb) {
    if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
    memcpy(c->px + ((size_t)y * (size_t)c->w + (size_t)x) * 3, rgb, 3);
}

static void cli_line(cli_canvas *c, int x0, int y0, int x1, int y1, const uint8_t *rgb, int thick) {
    int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, e = dx + dy;
    for (;;) {
        for (int a = 0; a < thick; a++)
            for (int b = 0; b < thick; b++) cli_px(c, x0 + a - thick / 2, y0 + b - thick / 2, rgb);
        if (x0 == x1 && y0 == y1) break;
        int e2 = 2 * e;
        if (e2 >= dy) {
            e += dy;
            x0 += sx;
        }
        if (e2 <= dx) {
            e += dx;
            y0 += sy;
        }
    }
}

// 3×5 glyphs for the axis labels: digits, '.', '-', 'e', '+'.
static void cli_glyph(cli_canvas *c, int x, int y, char ch, int scale, const uint8_t *rgb) {
    static const char *const digits[10] = {
        "111101101101111", "010110010010111", "111001111100111", "111001111001111", "101101111001001",
        "111100111001111", "111100111101111", "111001001001001", "111101111101111", "111101111001111",
    };
    const char *g = NULL;
    if (ch >= '0' && ch <= '9') g = digits[ch - '0'];
    else if (ch == '.') g = "000000000000010";
    else if (ch == '-') g = "000000111000000";
    else if (ch == '+') g = "000010111010000";
    else if (ch == 'e') g = "000111111100111";
    if (!g) return;
    for (int r = 0; r < 5; r++)
        for (int k = 0; k < 3; k++)
            if (g[r * 3 + k] == '1')
                for (int a = 0; a < scale; a++)
                    for (int b = 0; b < scale; b++) cli_px(c, x + k * scale + a, y + r * scale + b, rgb);
}

static void cli_text(cli_canvas *c, int x, int y, const char *s, int scale, const uint8_t *rgb) {
    for (; *s; s++, x += 4 * scale) cli_glyph(c, x, y, *s, scale, rgb);
}

// Training loss (blue) and evaluation loss (red) against the step. 1 when written.
static int cli_plot_loss(const char *path, const double *xs, const double *ys, int64_t n, const double *ex,
                         const double *ey, int64_t ne) {
#ifndef CLI_HAVE_STB
    (void)path; (void)xs; (void)ys; (void)n; (void)ex; (void)ey; (void)ne;
    cli_note("no loss curve: built without stb_image_write (Debian: libstb-dev)");
    return 0;
#else
    if (n + ne == 0) return 0;
    cli_canvas c;
    c.w = 800;
    c.h = 480;
    c.px = (uint8_t *)cli_alloc((size_t)c.w * (size_t)c.h * 3);
    memset(c.px, 255, (size_t)c.w * (size_t)c.h * 3);
    static const uint8_t black[3] = { 0, 0, 0 }, grey[3] = { 220, 220, 220 }, blue[3] = { 31, 119, 180 },
                         red[3] = { 214, 39, 40 };
    double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
    for (int64_t i = 0; i < n + ne; i++) {
        double x = i < n ? xs[i] : ex[i - n], y = i < n ? ys[i] : ey[i - n];
        if (!isfinite(y)) continue;
        x0 = fmin(x0, x);
        x1 = fmax(x1, x);
        y0 = fmin(y0, y);
        y1 = fmax(y1, y);
    }
    if (x0 > x1) {
        free(c.px);
        return 0;
    }
    if (x1 == x0) x1 = x0 + 1;
    if (y1 - y0 < 1e-6) {
        y0 -= 0.5;
        y1 += 0.5;
    }
    double pad = 0.05 * (y1 - y0);
    y0 -= pad;
    y1 += pad;
    int L = 80, R = c.w - 20, Tp = 20, Bm = c.h - 40;
    for (int k = 0; k <= 4; k++) {   // grid and y labels
        int y = Bm - (Bm - Tp) * k / 4;
        cli_line(&c, L, y, R, y, grey, 1);
        char lab[32];
        snprintf(lab, sizeof lab, "%.3g", y0 + (y1 - y0) * k / 4.0);
        cli_text(&c, 4, y - 5, lab, 2, black);
    }
    cli_line(&c, L, Tp, L, Bm, black, 2);
    cli_line(&c, L, Bm, R, Bm, black, 2);
    for (int k = 0; k <= 4; k++) {   // x ticks and labels (steps)
        int x = L + (R - L) * k / 4;
        cli_line(&c, x, Bm, x, Bm + 6, black, 2);
        char lab[32];
        snprintf(lab, sizeof lab, "%.0f", x0 + (x1 - x0) * k / 4.0);
        cli_text(&c, x - (int)strlen(lab) * 4, Bm + 12, lab, 2, black);
    }
    for (int pass = 0; pass < 2; pass++) {
        const double *X = pass ? ex : xs, *Y = pass ? ey : ys;
        int64_t m = pass ? ne : n;
        int px = -1, py = -1;
        for (int64_t i = 0; i < m; i++) {
            if (!isfinite(Y[i])) continue;
            int x = L + (int)((X[i] - x0) / (x1 - x0) * (R - L) + 0.5);
            int y = Bm - (int)((Y[i] - y0) / (y1 - y0) * (Bm - Tp) + 0.5);
            if (px >= 0) cli_line(&c, px, py, x, y, pass ? red : blue, 2);
            if (pass || m == 1)
                for (int a = -3; a <= 3; a++) cli_line(&c, x - 3, y + a, x + 3, y + a, pass ? red : blue, 1);
            px = x;
            py = y;
        }
    }
    int ok = stbi_write_png(path, c.w, c.h, 3, c.px, c.w * 3) != 0;
    free(c.px);
    if (!ok) cli_error("%s: cannot write the loss curve", path);
    return ok;
#endif
}

#endif // QLORA_CLI_H
