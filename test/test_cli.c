// test_cli.c - the `qlora` command line (demo/qlora.c) end to end on a tiny random model.
//
// The CLI is compiled into this binary (demo/qlora_commands.h); every command runs
// in a child process (this program re-executed with "--cli ..."), so exit codes, signals,
// SIGKILL, Ctrl-C and file-size limits are exercised for real. Fixtures, made here: a dense F32
// Llama checkpoint with a small byte-fallback BPE tokenizer.json, and JSONL files.
//
// Checks: help of every command; info against the loaded model; quantize (same NF4 as
// quantize-on-load); train (outputs, checkpoint rotation, resolved config, config file + flag
// precedence, MLflow run / metrics / artifacts / registry, loss goes down); bit-identical final
// adapter for OMP_NUM_THREADS 1 vs 2, after SIGKILL + resume and after Ctrl-C + resume; bad
// inputs (malformed line, empty file, too long with --no-truncate, NaN loss, full disk while
// checkpointing, adapter of another model, changed config on resume, existing checkpoints);
// generate / score / eval; merge (fp32 logits of the merged model = base + adapter, fp16/bf16
// = rounded fp32); the Vulkan backend flags.
#include "../demo/qlora_commands.h"
#include "test_util.h"

#include <sys/resource.h>
#include <sys/wait.h>

static char self_exe[4096];
static char root[512];   // scratch folder of this test

// --- processes ---------------------------------------------------------------------------------

typedef struct child {
    pid_t pid;
    char  out[600], err[600];
} child;

// Splits a command line on spaces (single quotes group words) into argv after "--cli".
static char **split_args(const char *cmd, int *argc) {
    char **av = (char **)calloc(256, sizeof(char *));
    int n = 0;
    av[n++] = self_exe;
    av[n++] = (char *)"--cli";
    const char *s = cmd;
    while (*s && n < 254) {
        while (*s == ' ') s++;
        if (!*s) break;
        char *w = (char *)malloc(strlen(s) + 1), *o = w;
        int q = 0;
        while (*s && (q || *s != ' ')) {
            if (*s == '\'') q = !q;
            else *o++ = *s;
            s++;
        }
        *o = 0;
        av[n++] = w;
    }
    av[n] = NULL;
    *argc = n;
    return av;
}

static void free_args(char **av, int argc) {
    for (int i = 2; i < argc; i++) free(av[i]);
    free(av);
}

// Starts `qlora <cmd>`; env "K=V" (or NULL), fsize > 0 sets RLIMIT_FSIZE (with SIGXFSZ ignored).
static child spawn(const char *tag, const char *env, long fsize, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    child ch;
    snprintf(ch.out, sizeof ch.out, "%s/%s.out", root, tag);
    snprintf(ch.err, sizeof ch.err, "%s/%s.err", root, tag);
    int argc;
    char **av = split_args(cmd, &argc);
    fflush(stdout);
    fflush(stderr);
    ch.pid = fork();
    if (ch.pid == 0) {
        int fo = open(ch.out, O_WRONLY | O_CREAT | O_TRUNC, 0644),
            fe = open(ch.err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0) _exit(125);
        dup2(fo, 1);
        dup2(fe, 2);
        close(fo);
        close(fe);
        if (env) {
            char kv[256];
            snprintf(kv, sizeof kv, "%s", env);
            char *eq = strchr(kv, '=');
            if (eq) {
                *eq = 0;
                setenv(kv, eq + 1, 1);
            }
        }
        if (fsize > 0) {
            struct rlimit rl;
            rl.rlim_cur = rl.rlim_max = (rlim_t)fsize;
            signal(SIGXFSZ, SIG_IGN);
            setrlimit(RLIMIT_FSIZE, &rl);
        }
        execv(self_exe, av);
        _exit(126);
    }
    free_args(av, argc);
    return ch;
}

// Exit status, or 128 + signal.
static int wait_child(child *ch) {
    int status = 0;
    while (waitpid(ch->pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return -1;
}

static child last;   // the last finished command, for its outputs

static int run(const char *tag, const char *env, long fsize, const char *fmt, ...) {
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    last = spawn(tag, env, fsize, "%s", cmd);
    return wait_child(&last);
}

static char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = (char *)malloc((size_t)sz + 1);
    size_t got = fread(b, 1, (size_t)sz, f);
    fclose(f);
    b[got] = 0;
    if (n) *n = got;
    return b;
}

static int file_has(const char *path, const char *needle) {
    char *s = slurp(path, NULL);
    int r = s && strstr(s, needle) != NULL;
    free(s);
    return r;
}

// First line of a file (for messages).
static const char *first_err(void) {
    static char buf[400];
    char *s = slurp(last.err, NULL);
    buf[0] = 0;
    if (s) {
        char *e = strstr(s, "error:");
        snprintf(buf, sizeof buf, "%.390s", e ? e : s);
        char *nl = strchr(buf, '\n');
        if (nl) *nl = 0;
    }
    free(s);
    return buf;
}

static int same_file(const char *a, const char *b) {
    size_t na, nb;
    char *x = slurp(a, &na), *y = slurp(b, &nb);
    int r = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return r;
}

static const char *P(const char *fmt, ...) {
    static char buf[16][700];
    static int slot;
    char *p = buf[slot++ & 15];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p, 700, fmt, ap);
    va_end(ap);
    return p;
}

// --- fixtures ----------------------------------------------------------------------------------

#define VOCAB 300

// tokenizer.json: <unk> <s> </s>, 256 byte pieces, "▁", a-z and six merges (292 ids).
static int write_tokenizer(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fprintf(
        f,
        "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true, \"normalized\": false},"
        " {\"id\": 1, \"content\": \"<s>\", \"special\": true, \"normalized\": false},"
        " {\"id\": 2, \"content\": \"</s>\", \"special\": true, \"normalized\": false}],"
        " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": "
        "\"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},"
        " \"pre_tokenizer\": null, \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": "
        "true,"
        " \"byte_fallback\": true, \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2");
    int id = 3;
    for (int b = 0; b < 256; b++) fprintf(f, ", \"<0x%02X>\": %d", b, id++);
    fprintf(f, ", \"\\u2581\": %d", id++);
    for (char ch = 'a'; ch <= 'z'; ch++) fprintf(f, ", \"%c\": %d", ch, id++);
    static const char *const merges[6][2] = { { "t", "h" }, { "\\u2581", "t" }, { "h", "e" }, { "i", "n" },
                                             { "e", "r" }, { "a", "n" } };
    for (int k = 0; k < 6; k++) fprintf(f, ", \"%s%s\": %d", merges[k][0], merges[k][1], id++);
    fprintf(f, "}, \"merges\": [");
    for (int k = 0; k < 6; k++) fprintf(f, "%s\"%s %s\"", k ? ", " : "", merges[k][0], merges[k][1]);
    fprintf(f, "]}}\n");
    return fclose(f) == 0;
}

typedef struct tiny_cfg {
    int C, H, L, NH, NKV, HD;
} tiny_cfg;

// A dense F32 Llama checkpoint with random weights.
static int write_dense_model(const char *dir, tiny_cfg c, unsigned long long seed) {
    mkdir(dir, 0777);
    FILE *f = fopen(P("%s/config.json", dir), "w");
    if (!f) return 0;
    fprintf(
        f,
        "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
        "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
        "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 128, "
        "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
        "\"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"torch_dtype\": \"float32\"}\n",
        c.C, c.H, c.L, c.NH, c.NKV, VOCAB);
    fclose(f);
    tu_seed(seed);
    int n = 0, cap = 3 + 9 * c.L;
    qlora_st_entry *e = (qlora_st_entry *)calloc((size_t)cap, sizeof(qlora_st_entry));
    char (*names)[96] = (char (*)[96])calloc((size_t)cap, 96);
    float **bufs = (float **)calloc((size_t)cap, sizeof(float *));
#define ADD(d0, d1, nd, std, ...)                                                      \
    do {                                                                               \
        snprintf(names[n], 96, __VA_ARGS__);                                           \
        long cnt = (long)(d0) * ((nd) == 2 ? (long)(d1) : 1L);                         \
        bufs[n] = (float *)malloc(sizeof(float) * (size_t)cnt);                        \
        if ((std) > 0) tu_fill_normal(bufs[n], cnt, (std));                            \
        else for (long q_ = 0; q_ < cnt; q_++) bufs[n][q_] = 1.0f + 0.1f * (float)tu_uniform(); \
        e[n].name = names[n];                                                          \
        e[n].dtype = QLORA_DTYPE_F32;                                                  \
        e[n].ndim = (nd);                                                              \
        e[n].shape[0] = (d0);                                                          \
        e[n].shape[1] = (d1);                                                          \
        e[n].data = bufs[n];                                                           \
        n++;                                                                           \
    } while (0)
    int QD = c.NH * c.HD, KD = c.NKV * c.HD;
    ADD(VOCAB, c.C, 2, 0.5, "model.embed_tokens.weight");
    for (int l = 0; l < c.L; l++) {
        ADD(c.C, 0, 1, 0.0, "model.layers.%d.input_layernorm.weight", l);
        ADD(c.C, 0, 1, 0.0, "model.layers.%d.post_attention_layernorm.weight", l);
        ADD(QD, c.C, 2, 1.0 / sqrt(c.C), "model.layers.%d.self_attn.q_proj.weight", l);
        ADD(KD, c.C, 2, 1.0 / sqrt(c.C), "model.layers.%d.self_attn.k_proj.weight", l);
        ADD(KD, c.C, 2, 1.0 / sqrt(c.C), "model.layers.%d.self_attn.v_proj.weight", l);
        ADD(c.C, QD, 2, 1.0 / sqrt(QD), "model.layers.%d.self_attn.o_proj.weight", l);
        ADD(c.H, c.C, 2, 1.0 / sqrt(c.C), "model.layers.%d.mlp.gate_proj.weight", l);
        ADD(c.H, c.C, 2, 1.0 / sqrt(c.C), "model.layers.%d.mlp.up_proj.weight", l);
        ADD(c.C, c.H, 2, 1.0 / sqrt(c.H), "model.layers.%d.mlp.down_proj.weight", l);
    }
    ADD(c.C, 0, 1, 0.0, "model.norm.weight");
    ADD(VOCAB, c.C, 2, 0.3, "lm_head.weight");
#undef ADD
    qlora_error err;
    int ok = qlora_safetensors_write(P("%s/model.safetensors", dir), e, n, NULL, &err) == QLORA_OK;
    if (!ok) printf("# fixture: %s\n", err.detail);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(e);
    return ok && write_tokenizer(P("%s/tokenizer.json", dir));
}

static const char *const words[] = {"the", "cat", "sat",  "on",  "mat",   "in",    "her", "then",
                                    "an",  "ant", "thin", "ran", "inner", "there", "hen", "net"};
#define NWORDS ((int)(sizeof words / sizeof words[0]))

static void put_words(FILE *f, int n) {
    for (int i = 0; i < n; i++)
        fprintf(f, "%s%s", i ? " " : "", words[(int)((tu_uniform() * 0.5 + 0.5) * NWORDS) % NWORDS]);
}

// n prompt/completion lines (completion = the prompt's words reversed in order: learnable), a few
// text lines, and one example longer than max_len 48 when `long_one`.
static int write_data(const char *path, int n, int long_one, unsigned long long seed) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    tu_seed(seed);
    for (int i = 0; i < n; i++) {
        int k = 2 + (int)((tu_uniform() * 0.5 + 0.5) * 4);
        int idx[8];
        for (int j = 0; j < k; j++) idx[j] = (int)((tu_uniform() * 0.5 + 0.5) * NWORDS) % NWORDS;
        if (i % 5 == 4) {
            fprintf(f, "{\"text\": \"");
            for (int j = 0; j < k; j++) fprintf(f, "%s%s", j ? " " : "", words[idx[j]]);
            fprintf(f, "\"}\n");
            continue;
        }
        fprintf(f, "{\"prompt\": \"");
        for (int j = 0; j < k; j++) fprintf(f, "%s%s", j ? " " : "", words[idx[j]]);
        fprintf(f, " =\", \"completion\": \"");
        for (int j = k - 1; j >= 0; j--) fprintf(f, " %s", words[idx[j]]);
        fprintf(f, "\"}\n");
        if (i == 2) fprintf(f, "\n");   // a blank line is skipped
    }
    if (long_one) {
        fprintf(f, "{\"prompt\": \"");
        put_words(f, 12);
        fprintf(f, "\", \"completion\": \" ");
        put_words(f, 12);
        fprintf(f, "\"}\n");
    }
    return fclose(f) == 0;
}

// --- MLflow helpers ----------------------------------------------------------------------------

// The run folder of the only run of experiment "qlora" (name in meta.yaml) under mlruns, or "".
static const char *find_run(const char *mlruns, const char *experiment_name) {
    static char found[1200];
    found[0] = 0;
    DIR *d = opendir(mlruns);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "models")) continue;
        const char *meta = P("%s/%s/meta.yaml", mlruns, e->d_name);
        char want[200];
        snprintf(want, sizeof want, "name: '%s'", experiment_name);
        if (!file_has(meta, want)) continue;
        char expdir[600];
        snprintf(expdir, sizeof expdir, "%s/%s", mlruns, e->d_name);
        DIR *r = opendir(expdir);
        struct dirent *x;
        while (r && (x = readdir(r)) != NULL)
            if (strlen(x->d_name) == 32) snprintf(found, sizeof found, "%s/%s", expdir, x->d_name);
        if (r) closedir(r);
    }
    if (d) closedir(d);
    return found;
}

static int count_lines(const char *path) {
    char *s = slurp(path, NULL);
    int n = 0;
    for (char *p = s; p && *p; p++) n += *p == '\n';
    free(s);
    return n;
}

// value of the metric line `line` (0-based) of a metric file
static double metric_at(const char *path, int line) {
    char *s = slurp(path, NULL);
    double v = NAN;
    char *p = s;
    for (int i = 0; p && i < line; i++) {
        p = strchr(p, '\n');
        if (p) p++;
    }
    if (p && *p) {
        long long ts;
        sscanf(p, "%lld %lf", &ts, &v);
    }
    free(s);
    return v;
}

// --- dense reference forward (double) for the merge check ----------------------------------------

static float *st_get(const qlora_safetensors *st, const char *name, int64_t want) {
    const qlora_st_tensor *t = qlora_safetensors_find(st, name);
    if (!t || t->numel != want) return NULL;
    float *x = (float *)malloc(sizeof(float) * (size_t)want);
    qlora_error err;
    if (qlora_tensor_to_f32(x, t, &err) != QLORA_OK) {
        free(x);
        return NULL;
    }
    return x;
}

static void rmsnorm_d(double *y, const double *x, const float *w, int C, double eps) {
    double ss = 0;
    for (int i = 0; i < C; i++) ss += x[i] * x[i];
    double r = 1.0 / sqrt(ss / C + eps);
    for (int i = 0; i < C; i++) y[i] = x[i] * r * w[i];
}

static void matvec_d(double *y, const float *W, const double *x, int out, int in) {
    for (int o = 0; o < out; o++) {
        double s = 0;
        for (int i = 0; i < in; i++) s += (double)W[(size_t)o * in + i] * x[i];
        y[o] = s;
    }
}

// logits (T, V) of the dense checkpoint in dir for tokens (T); 0 on a missing tensor.
static int dense_forward(const char *dir, tiny_cfg c, const int32_t *tok, int T, double *logits) {
    qlora_safetensors st;
    qlora_error err;
    if (qlora_safetensors_open(&st, P("%s/model.safetensors", dir), &err) != QLORA_OK) return 0;
    int C = c.C, H = c.H, QD = c.NH * c.HD, KD = c.NKV * c.HD, HD = c.HD;
    double *x = (double *)calloc((size_t)T * C, sizeof(double)),
           *n = (double *)calloc((size_t)C, sizeof(double));
    double *q = (double *)calloc((size_t)T * QD, sizeof(double)),
           *k = (double *)calloc((size_t)T * KD, sizeof(double));
    double *v = (double *)calloc((size_t)T * KD, sizeof(double)),
           *ao = (double *)calloc((size_t)QD, sizeof(double));
    double *tmp = (double *)calloc((size_t)(C > H ? C : H) * 2 + QD, sizeof(double));
    double *g = (double *)calloc((size_t)H, sizeof(double)), *u = (double *)calloc((size_t)H, sizeof(double));
    int ok = 1;
    float *emb = st_get(&st, "model.embed_tokens.weight", (int64_t)VOCAB * C);
    if (!emb) ok = 0;
    for (int t = 0; ok && t < T; t++)
        for (int i = 0; i < C; i++) x[t * C + i] = emb[(size_t)tok[t] * C + i];
    for (int l = 0; ok && l < c.L; l++) {
        float *win = st_get(&st, P("model.layers.%d.input_layernorm.weight", l), C);
        float *wpo = st_get(&st, P("model.layers.%d.post_attention_layernorm.weight", l), C);
        float *wq = st_get(&st, P("model.layers.%d.self_attn.q_proj.weight", l), (int64_t)QD * C);
        float *wk = st_get(&st, P("model.layers.%d.self_attn.k_proj.weight", l), (int64_t)KD * C);
        float *wv = st_get(&st, P("model.layers.%d.self_attn.v_proj.weight", l), (int64_t)KD * C);
        float *wo = st_get(&st, P("model.layers.%d.self_attn.o_proj.weight", l), (int64_t)C * QD);
        float *wg = st_get(&st, P("model.layers.%d.mlp.gate_proj.weight", l), (int64_t)H * C);
        float *wu = st_get(&st, P("model.layers.%d.mlp.up_proj.weight", l), (int64_t)H * C);
        float *wd = st_get(&st, P("model.layers.%d.mlp.down_proj.weight", l), (int64_t)C * H);
        if (!win || !wpo || !wq || !wk || !wv || !wo || !wg || !wu || !wd) ok = 0;
        for (int t = 0; ok && t < T; t++) {
            rmsnorm_d(n, x + t * C, win, C, 1e-5);
            matvec_d(q + t * QD, wq, n, QD, C);
            matvec_d(k + t * KD, wk, n, KD, C);
            matvec_d(v + t * KD, wv, n, KD, C);
            for (int h = 0; h < c.NH + c.NKV; h++) {   // RoPE, rotate_half pairing
                double *p = h < c.NH ? q + t * QD + h * HD : k + t * KD + (h - c.NH) * HD;
                for (int i = 0; i < HD / 2; i++) {
                    double inv = (double)(1.0f / powf(10000.0f, (float)(2 * i) / (float)HD));
                    double a = (double)(float)((float)t * (float)inv);
                    double x1 = p[i], x2 = p[i + HD / 2];
                    p[i] = x1 * cos(a) - x2 * sin(a);
                    p[i + HD / 2] = x2 * cos(a) + x1 * sin(a);
                }
            }
        }
        for (int t = 0; ok && t < T; t++) {
            for (int h = 0; h < c.NH; h++) {
                int kh = h / (c.NH / c.NKV);
                double mx = -1e300, den = 0;
                double *sc = tmp;
                for (int s = 0; s <= t; s++) {
                    double d = 0;
                    for (int i = 0; i < HD; i++) d += q[t * QD + h * HD + i] * k[s * KD + kh * HD + i];
                    sc[s] = d / sqrt((double)HD);
                    if (sc[s] > mx) mx = sc[s];
                }
                for (int s = 0; s <= t; s++) den += (sc[s] = exp(sc[s] - mx));
                for (int i = 0; i < HD; i++) {
                    double a = 0;
                    for (int s = 0; s <= t; s++) a += sc[s] / den * v[s * KD + kh * HD + i];
                    ao[h * HD + i] = a;
                }
            }
            matvec_d(n, wo, ao, C, QD);
            for (int i = 0; i < C; i++) x[t * C + i] += n[i];
        }
        for (int t = 0; ok && t < T; t++) {
            rmsnorm_d(n, x + t * C, wpo, C, 1e-5);
            matvec_d(g, wg, n, H, C);
            matvec_d(u, wu, n, H, C);
            for (int i = 0; i < H; i++) g[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
            matvec_d(n, wd, g, C, H);
            for (int i = 0; i < C; i++) x[t * C + i] += n[i];
        }
        free(win); free(wpo); free(wq); free(wk); free(wv); free(wo); free(wg); free(wu); free(wd);
    }
    float *wn = ok ? st_get(&st, "model.norm.weight", C) : NULL,
          *head = ok ? st_get(&st, "lm_head.weight", (int64_t)VOCAB * C) : NULL;
    if (!wn || !head) ok = 0;
    for (int t = 0; ok && t < T; t++) {
        rmsnorm_d(n, x + t * C, wn, C, 1e-5);
        matvec_d(logits + (size_t)t * VOCAB, head, n, VOCAB, C);
    }
    free(wn); free(head); free(emb);
    free(x); free(n); free(q); free(k); free(v); free(ao); free(tmp); free(g); free(u);
    qlora_safetensors_close(&st);
    return ok;
}

// --- the tests -------------------------------------------------------------------------------------

static tiny_cfg tc = { 32, 64, 2, 4, 2, 8 };
static char dense[600], q4[600], data[600], evalf[600], mlruns[600];
static char train_args[2048];

static void test_help(void) {
    int rc = run("help", NULL, 0, "--help");
    tu_check(rc == 0 && file_has(last.out, "usage: qlora COMMAND"), "cli_help", "rc %d", rc);
    static const char *const cmds[] = { "info", "quantize", "train", "generate", "score", "eval", "merge" };
    int bad = 0;
    for (int i = 0; i < 7; i++) {
        rc = run("help_cmd", NULL, 0, "%s --help", cmds[i]);
        if (rc != 0 || !file_has(last.out, "usage: qlora") || !file_has(last.out, "--model")) {
            bad++;
            printf("# %s --help: rc %d\n", cmds[i], rc);
        }
    }
    tu_check(bad == 0, "cli_help_every_command", "%d commands without a working --help", bad);
    rc = run("help_bad", NULL, 0, "train --no-such-flag 3");
    tu_check(rc == 2 && file_has(last.err, "does not take --no-such-flag"), "cli_unknown_flag", "rc %d: %s",
             rc, first_err());
    rc = run("help_dropout", NULL, 0, "train --help");
    tu_check(file_has(last.out, "0.05 for 33B"), "cli_help_documents_dropout",
             "train --help does not explain the dropout default");
}

static void test_info(void) {
    int rc = run("info", NULL, 0, "info --model %s --rank 8 --json", dense);
    char *s = slurp(last.out, NULL);
    qlora_json_doc doc;
    qlora_error err;
    int ok = rc == 0 && s && qlora_json_parse(&doc, s, strlen(s), &err) == QLORA_OK;
    free(s);
    if (!tu_check(ok, "cli_info_json", "rc %d: %s", rc, first_err())) return;
    const qlora_json *bytes = qlora_json_get(&doc.root, "bytes"),
                     *params = qlora_json_get(&doc.root, "params");
    int64_t wt = qlora_json_get_int(bytes, "weights_total", -1), lp = qlora_json_get_int(params, "lora", -1);
    int64_t act = qlora_json_get_int(bytes, "activations", -1);
    qlora_json_free(&doc);
    // the same numbers from the loaded model
    qlora_model m;
    qlora_model_options mo;
    memset(&mo, 0, sizeof mo);
    mo.lora.rank = 8;
    mo.lora.alpha = 16;
    mo.lora.dropout = 0.1f;
    if (qlora_model_load(&m, dense, &mo, &err) != QLORA_OK) {
        tu_check(0, "cli_info_matches_model", "load: %s", err.detail);
        return;
    }
    int64_t want_act = 0;
    qlora_train_state_bytes(&m, 1, 128, 1, &want_act, &err);   // batch 1, max_len 512 capped at 128
    tu_check(wt == qlora_model_weight_bytes(&m) && lp == qlora_model_lora_params(&m) && act == want_act,
             "cli_info_matches_model", "weights %lld vs %lld, lora %lld vs %lld, activations %lld vs %lld",
             (long long)wt, (long long)qlora_model_weight_bytes(&m), (long long)lp,
             (long long)qlora_model_lora_params(&m), (long long)act, (long long)want_act);
    qlora_model_free(&m);
    rc = run("info_text", NULL, 0, "info --model %s", dense);
    tu_check(rc == 0 && file_has(last.out, "NF4") && file_has(last.out, "optimizer state"), "cli_info_text",
             "rc %d", rc);
}

static void test_quantize(void) {
    int rc = run("quantize", NULL, 0, "quantize --model %s --output %s", dense, q4);
    tu_check(rc == 0 && file_has(P("%s/config.json", q4), "quantization_config") &&
                 cli_is_file(P("%s/tokenizer.json", q4)),
             "cli_quantize", "rc %d: %s", rc, first_err());
    // the quantized copy computes exactly what quantize-on-load computes
    rc = run("eval_dense", NULL, 0, "eval --model %s --data %s --batch-size 2 --max-len 48", dense, evalf);
    char *a = slurp(last.out, NULL);
    int rc2 = run("eval_q4", NULL, 0, "eval --model %s --data %s --batch-size 2 --max-len 48", q4, evalf);
    char *b = slurp(last.out, NULL);
    tu_check(rc == 0 && rc2 == 0 && a && b && strstr(a, "eval_loss") && !strcmp(a, b),
             "cli_quantize_same_nf4", "dense: %s / q4: %s", a ? a : "-", b ? b : "-");
    free(a);
    free(b);
}

// The reference run: 8 steps, checkpoints every 2 (keep 2), eval every 4.
static char ref_adapter[700];

static void test_train(void) {
    const char *out = P("%s/A", root);
    int rc = run("train_A", "OMP_NUM_THREADS=2", 0,
                 "train %s --output %s --mlruns %s --register-model tiny-adapter", train_args, out, mlruns);
    if (!tu_check(rc == 0, "cli_train_runs", "rc %d: %s", rc, first_err())) return;
    snprintf(ref_adapter, sizeof ref_adapter, "%s/adapter_model.safetensors", out);
    tu_check(cli_is_file(ref_adapter) && file_has(P("%s/adapter_config.json", out), "\"r\": 4"),
             "cli_train_adapter", "no adapter in %s", out);
    int64_t *steps = NULL, n = cli_list_checkpoints(out, &steps);
    tu_check(n == 2 && steps[0] == 6 && steps[1] == 8 &&
                 cli_is_file(P("%s/checkpoint-8/optimizer.bin", out)) &&
                 cli_is_file(P("%s/checkpoint-8/adapter_model.safetensors", out)) &&
                 cli_is_file(P("%s/checkpoint-8/trainer_state.json", out)),
             "cli_train_checkpoints_rotated", "%lld checkpoints (want 6 and 8)", (long long)n);
    free(steps);
    const char *rcfg = P("%s/resolved_config.json", out);
    tu_check(file_has(rcfg, "\"dropout\": 0.1") && file_has(rcfg, "\"optim\": \"paged_adamw_32bit\"") &&
                 file_has(rcfg, "\"lr\": 0.01") && file_has(rcfg, "\"max_grad_norm\": 0.3") &&
                 file_has(rcfg, "\"data_seed\": 42") && file_has(rcfg, "\"targets\": \"all\""),
             "cli_train_resolved_config", "resolved_config.json lacks defaults or flags");
    char *png = slurp(P("%s/loss_curve.png", out), NULL);
    tu_check(png && (unsigned char)png[0] == 0x89 && png[1] == 'P', "cli_train_loss_png", "no PNG");
    free(png);
    tu_check(file_has(last.err, "truncated 1 example") && file_has(last.err, "tokens dropped"),
             "cli_train_reports_truncation", "stderr does not report the truncated example");
    tu_check(!file_has(last.err, "inner there") && !file_has(last.err, " = "), "cli_train_no_text_in_logs",
             "training text appears in the log");
    // MLflow
    const char *r = find_run(mlruns, "qlora");
    if (!tu_check(r[0] != 0, "cli_mlflow_run", "no run in %s", mlruns)) return;
    char run_dir[1200];
    snprintf(run_dir, sizeof run_dir, "%s", r);
    tu_check(file_has(P("%s/meta.yaml", run_dir), "status: 3") &&
                 count_lines(P("%s/metrics/loss", run_dir)) == 8 &&
                 count_lines(P("%s/metrics/learning_rate", run_dir)) == 8 &&
                 count_lines(P("%s/metrics/grad_norm", run_dir)) == 8 &&
                 count_lines(P("%s/metrics/tokens_per_second", run_dir)) == 8 &&
                 count_lines(P("%s/metrics/eval_loss", run_dir)) == 2 &&
                 file_has(P("%s/params/rank", run_dir), "4") &&
                 file_has(P("%s/params/lr_scheduler", run_dir), "constant") &&
                 cli_is_file(P("%s/params/derived.total_steps", run_dir)),
             "cli_mlflow_metrics_params", "run %s incomplete", run_dir);
    tu_check(cli_is_file(P("%s/artifacts/adapter/adapter_model.safetensors", run_dir)) &&
                 cli_is_file(P("%s/artifacts/adapter/MLmodel", run_dir)) &&
                 cli_is_file(P("%s/artifacts/loss_curve.png", run_dir)) &&
                 cli_is_file(P("%s/artifacts/resolved_config.json", run_dir)) &&
                 cli_is_file(P("%s/models/tiny-adapter/version-1/meta.yaml", mlruns)),
             "cli_mlflow_artifacts_registry", "artifacts or registry missing in %s", run_dir);
    double first = metric_at(P("%s/metrics/loss", run_dir), 0),
           lastv = metric_at(P("%s/metrics/loss", run_dir), 7);
    tu_check(lastv < first, "cli_train_loss_decreases", "loss %g → %g", first, lastv);
}

static void test_config_file(void) {
    const char *cfg = P("%s/cfg.json", root);
    FILE *f = fopen(cfg, "w");
    fprintf(
        f,
        "{\"model\": \"%s\", \"data\": \"%s\", \"rank\": 2, \"alpha\": 4, \"max_steps\": 3, \"max-len\": 48, "
        "\"targets\": [\"q_proj\", \"v_proj\"], \"batch_size\": 2, \"grad_accum\": 1, \"no_mlflow\": true, "
        "\"prompt\": \"ignored by train\"}\n",
        q4, data);
    fclose(f);
    const char *out = P("%s/cfg_out", root);
    int rc =
        run("train_cfg", NULL, 0, "train --config %s --max-steps 1 --output %s --save-steps 0", cfg, out);
    const char *rcfg = P("%s/resolved_config.json", out);
    tu_check(rc == 0 && file_has(rcfg, "\"max_steps\": 1") && file_has(rcfg, "\"rank\": 2") &&
                 file_has(rcfg, "\"targets\": \"q_proj,v_proj\"") && file_has(rcfg, "\"grad_accum\": 1") &&
                 file_has(P("%s/adapter_config.json", out), "\"v_proj\"") &&
                 !file_has(P("%s/adapter_config.json", out), "\"k_proj\""),
             "cli_config_file_and_flags", "rc %d: %s", rc, first_err());
    f = fopen(cfg, "w");
    fprintf(f, "{\"rnak\": 3}\n");
    fclose(f);
    rc = run("train_cfg_bad", NULL, 0, "train --config %s", cfg);
    tu_check(rc != 0 && file_has(last.err, "unknown option \"rnak\""), "cli_config_unknown_key", "rc %d: %s",
             rc, first_err());
}

static void test_threads(void) {
    const char *out = P("%s/B", root);
    int rc = run("train_B", "OMP_NUM_THREADS=1", 0, "train %s --output %s --no-mlflow --save-steps 0",
                 train_args, out);
    tu_check(rc == 0 && same_file(ref_adapter, P("%s/adapter_model.safetensors", out)),
             "cli_same_bytes_1_vs_2_threads", "rc %d: %s", rc, first_err());
}

// Waits up to 30 s for a path to exist. 1 when it does.
static int wait_for(const char *path, child *ch) {
    for (int i = 0; i < 15000; i++) {
        if (cli_is_dir(path) || cli_is_file(path)) return 1;
        int status;
        if (waitpid(ch->pid, &status, WNOHANG) == ch->pid) {
            ch->pid = -1;
            return 0;
        }
        cli_sleep_ms(2);
    }
    return 0;
}

static void test_kill_resume(void) {
    const char *out = P("%s/C", root);
    child ch = spawn("train_C", "OMP_NUM_THREADS=2", 0,
                     "train %s --output %s --no-mlflow --debug-sleep-ms 100", train_args, out);
    int seen = wait_for(P("%s/checkpoint-4", out), &ch);
    if (ch.pid > 0) {   // (also when the wait timed out: never leave a child behind)
        kill(ch.pid, SIGKILL);
        int rc = wait_child(&ch);
        tu_check(seen && rc == 128 + SIGKILL, "cli_sigkill_mid_run", "checkpoint seen %d, rc %d", seen, rc);
    } else tu_check(0, "cli_sigkill_mid_run", "the run ended before it could be killed");
    // a temp folder of a checkpoint being written when the kill came is cleaned up
    const char *stale = P("%s/.tmp-checkpoint-99", out);
    char st[700];
    snprintf(st, sizeof st, "%s", stale);
    mkdir(st, 0777);
    FILE *f = fopen(P("%s/optimizer.bin.tmp", st), "w");
    if (f) fclose(f);
    int rc = run("train_C_resume", "OMP_NUM_THREADS=2", 0, "train --output %s --resume", out);
    tu_check(rc == 0 && file_has(last.err, "resuming from") && !cli_is_dir(st) &&
                 same_file(ref_adapter, P("%s/adapter_model.safetensors", out)),
             "cli_resume_after_sigkill_bit_identical", "rc %d: %s", rc, first_err());
    // a changed setting that defines the steps is refused
    rc = run("train_C_bad", NULL, 0, "train --output %s --resume --lr 0.5", out);
    tu_check(rc != 0 && file_has(last.err, "resume: --lr"), "cli_resume_refuses_changed_config", "rc %d: %s",
             rc, first_err());
    rc = run("train_C_again", NULL, 0, "train %s --output %s --no-mlflow", train_args, out);
    tu_check(rc != 0 && file_has(last.err, "already holds checkpoints"),
             "cli_existing_checkpoints_need_resume", "rc %d: %s", rc, first_err());
}

// Waits up to 30 s for a file to contain text. 1 when it does.
static int wait_for_text(const char *path, const char *text, child *ch) {
    for (int i = 0; i < 15000; i++) {
        if (file_has(path, text)) return 1;
        int status;
        if (waitpid(ch->pid, &status, WNOHANG) == ch->pid) {
            ch->pid = -1;
            return 0;
        }
        cli_sleep_ms(2);
    }
    return 0;
}

static void test_sigint(void) {
    // Ctrl-C from outside, between checkpoints (save every 5): the trainer writes one itself
    const char *out = P("%s/D", root), *ml = P("%s/mlruns_D", root);
    child ch =
        spawn("train_D", "OMP_NUM_THREADS=2", 0,
              "train %s --output %s --mlruns %s --debug-sleep-ms 100 --save-steps 5", train_args, out, ml);
    int seen = wait_for_text(ch.err, "step 3/8", &ch);
    int rc = -1;
    if (ch.pid > 0) {
        kill(ch.pid, seen ? SIGINT : SIGKILL);
        rc = wait_child(&ch);
    }
    last = ch;
    int64_t *steps = NULL, n = cli_list_checkpoints(out, &steps);
    const char *r = find_run(ml, "qlora");
    tu_check(seen && rc == 130 && n >= 1 && steps[0] >= 3 && r[0] &&
                 file_has(P("%s/meta.yaml", r), "status: 5") && file_has(last.err, "interrupted"),
             "cli_sigint_checkpoints_and_kills_run", "seen %d rc %d, %lld checkpoints (first %lld), run '%s'",
             seen, rc, (long long)n, n ? (long long)steps[0] : -1LL, r);
    char ck[700];   // resume from an explicit checkpoint folder this time
    snprintf(ck, sizeof ck, "%s/checkpoint-%lld", out, n ? (long long)steps[0] : 0LL);
    free(steps);
    rc = run("train_D_resume", "OMP_NUM_THREADS=2", 0, "train --resume %s --mlruns %s", ck, ml);
    tu_check(rc == 0 && same_file(ref_adapter, P("%s/adapter_model.safetensors", out)),
             "cli_resume_after_sigint_bit_identical", "rc %d: %s", rc, first_err());
    // Ctrl-C in the middle of a gradient accumulation (after micro-batch 1 of 2 of step 4): the
    // partial step is dropped and checkpoint-3 holds the RNG state from before it
    out = P("%s/D2", root);
    rc = run("train_D2", "OMP_NUM_THREADS=2", 0,
             "train %s --output %s --no-mlflow --save-steps 5 --debug-sigint-at-step 4", train_args, out);
    tu_check(rc == 130 && cli_is_dir(P("%s/checkpoint-3", out)) && !cli_is_dir(P("%s/checkpoint-4", out)),
             "cli_sigint_mid_accumulation", "rc %d: %s", rc, first_err());
    rc = run("train_D2_resume", "OMP_NUM_THREADS=2", 0, "train --output %s --resume --debug-sigint-at-step 0",
             out);
    tu_check(rc == 0 && same_file(ref_adapter, P("%s/adapter_model.safetensors", out)),
             "cli_resume_after_partial_step_bit_identical", "rc %d: %s", rc, first_err());
}

static void test_nan(void) {
    const char *out = P("%s/E", root), *ml = P("%s/mlruns_E", root);
    int rc = run("train_E", NULL, 0, "train %s --output %s --mlruns %s --debug-nan-at-step 5", train_args,
                 out, ml);
    const char *r = find_run(ml, "qlora");
    tu_check(rc == 1 && file_has(last.err, "NaN") && file_has(last.err, "checkpoint-4") &&
                 cli_is_dir(P("%s/checkpoint-4", out)) && !cli_is_dir(P("%s/checkpoint-6", out)) &&
                 !cli_is_file(P("%s/adapter_model.safetensors", out)) && r[0] &&
                 file_has(P("%s/meta.yaml", r), "status: 4"),
             "cli_nan_stops_keeps_checkpoint", "rc %d: %s", rc, first_err());
}

static void test_full_disk(void) {
    const char *out = P("%s/F", root);
    int rc = run("train_F", NULL, 0, "train %s --output %s --no-mlflow --max-steps 2", train_args, out);
    const char *ck = P("%s/checkpoint-2/adapter_model.safetensors", out);
    size_t n0 = 0;
    char *before = slurp(ck, &n0);
    if (!tu_check(rc == 0 && before, "cli_full_disk_setup", "rc %d: %s", rc, first_err())) {
        free(before);
        return;
    }
    // files may not grow beyond 12 KB: the next checkpoint's adapter (16 KB) cannot be written
    rc = run("train_F_full", NULL, 12 * 1024, "train --output %s --resume --max-steps 4", out);
    size_t n1 = 0;
    char *after = slurp(ck, &n1);
    tu_check(rc == 1 && !cli_is_dir(P("%s/checkpoint-4", out)) &&
                 !cli_is_dir(P("%s/.tmp-checkpoint-4", out)) && after && n0 == n1 &&
                 !memcmp(before, after, n0) && cli_is_file(P("%s/checkpoint-2/optimizer.bin", out)) &&
                 file_has(last.err, "previous checkpoint is intact"),
             "cli_full_disk_keeps_old_checkpoint", "rc %d: %s", rc, first_err());
    free(before);
    free(after);
}

static void test_bad_inputs(void) {
    const char *bad = P("%s/bad.jsonl", root);
    FILE *f = fopen(bad, "w");
    fprintf(
        f,
        "{\"prompt\": \"the cat\", \"completion\": \" sat\"}\n{\"text\": \"an ant\"}\n{\"prompt\": \"oops\"\n"
        "{\"prompt\": \"then\", \"completion\": \" ran\"}\n[1, 2]\n");
    fclose(f);
    const char *common =
        P("--model %s --max-steps 1 --batch-size 1 --grad-accum 1 --rank 2 --no-mlflow --save-steps 0", q4);
    int rc = run("bad_line", NULL, 0, "train %s --data %s --output %s/bad1", common, bad, root);
    tu_check(rc == 1 && file_has(last.err, "bad.jsonl:3:") && file_has(last.err, "--skip-bad-lines"),
             "cli_bad_line_reports_line", "rc %d: %s", rc, first_err());
    rc = run("bad_skip", NULL, 0, "train %s --data %s --output %s/bad2 --skip-bad-lines", common, bad, root);
    tu_check(rc == 0 && file_has(last.err, "skipped 2 malformed lines"), "cli_bad_line_skipped", "rc %d: %s",
             rc, first_err());
    const char *empty = P("%s/empty.jsonl", root);
    f = fopen(empty, "w");
    fprintf(f, "\n  \n");
    fclose(f);
    rc = run("empty", NULL, 0, "train %s --data %s --output %s/bad3", common, empty, root);
    tu_check(rc == 1 && file_has(last.err, "no training examples"), "cli_empty_dataset", "rc %d: %s", rc,
             first_err());
    rc = run("no_trunc", NULL, 0, "train %s --data %s --output %s/bad4 --max-len 48 --no-truncate", common,
             data, root);
    tu_check(rc == 1 && file_has(last.err, "train.jsonl:") && file_has(last.err, "--no-truncate"),
             "cli_no_truncate_error", "rc %d: %s", rc, first_err());
    // an adapter of another model (intermediate size 48) does not fit
    tiny_cfg other = tc;
    other.H = 48;
    const char *odir = P("%s/other", root);
    char od[700];
    snprintf(od, sizeof od, "%s", odir);
    if (!write_dense_model(od, other, 77)) {
        tu_check(0, "cli_adapter_shape_mismatch", "fixture");
        return;
    }
    rc = run("other_train", NULL, 0,
             "train --model %s --data %s --max-steps 1 --batch-size 1 --grad-accum 1 --rank 2 "
             "--no-mlflow --save-steps 0 --max-len 48 --output %s/other_out",
             od, data, root);
    int rc2 = run("shape", NULL, 0,
                  "generate --model %s --adapter %s/other_out --prompt 'the cat' --max-new 2", q4, root);
    tu_check(rc == 0 && rc2 == 1 && file_has(last.err, "shape") && file_has(last.err, "mlp.gate_proj"),
             "cli_adapter_shape_mismatch", "rc %d/%d: %s", rc, rc2, first_err());
}

static void test_inference(void) {
    const char *A = P("%s/A", root);
    char a[700];
    snprintf(a, sizeof a, "%s", A);
    int rc = run("gen1", NULL, 0, "generate --model %s --adapter %s --prompt 'the cat =' --max-new 6", q4, a);
    char *g1 = slurp(last.out, NULL);
    int rc2 =
        run("gen2", NULL, 0, "generate --model %s --adapter %s --prompt 'the cat =' --max-new 6", q4, a);
    char *g2 = slurp(last.out, NULL);
    tu_check(rc == 0 && rc2 == 0 && g1 && g2 && !strcmp(g1, g2) && strlen(g1) > 0,
             "cli_generate_greedy_repeatable", "rc %d/%d: %s", rc, rc2, first_err());
    free(g1);
    free(g2);
    rc = run("score", NULL, 0,
             "score --model %s --adapter %s --prompt 'the cat =' --candidates ' cat the| mat on'", q4, a);
    tu_check(rc == 0 && file_has(last.out, "logprob") && file_has(last.out, "mat on"), "cli_score_candidates",
             "rc %d: %s", rc, first_err());
    rc = run("score_data", NULL, 0, "score --model %s --adapter %s --data %s", q4, a, evalf);
    tu_check(rc == 0 && count_lines(last.out) >= 5, "cli_score_data", "rc %d: %s", rc, first_err());
    // eval with the adapter = the trainer's final eval_loss on the same file
    rc = run("eval_A", NULL, 0, "eval --model %s --adapter %s --data %s --batch-size 2 --max-len 48", q4, a,
             evalf);
    double got = NAN, want = NAN;
    char *s = slurp(last.out, NULL);
    if (s) sscanf(s, "eval_loss %lf", &got);
    free(s);
    qlora_json_doc doc;
    qlora_error err;
    if (qlora_json_read_file(&doc, P("%s/trainer_state.json", a), &err) == QLORA_OK) {
        const qlora_json *h = qlora_json_get(&doc.root, "log_history");
        for (int64_t i = 0; h && i < h->count; i++)
            if (qlora_json_get(qlora_json_at(h, i), "eval_loss"))
                want = qlora_json_get_number(qlora_json_at(h, i), "eval_loss", NAN);
        qlora_json_free(&doc);
    }
    tu_check(rc == 0 && fabs(got - want) < 1e-5, "cli_eval_matches_training_eval",
             "eval %.7f vs trainer %.7f (rc %d)", got, want, rc);
    // backends: vulkan falls back or runs; vulkan=required runs or fails clearly. (Under ASan these
    // children run without leak detection: Mesa's ICD leaks a one-time allocation, see test_vulkan.c.)
    rc = run("vk", "ASAN_OPTIONS=detect_leaks=0", 0,
             "generate --model %s --prompt 'the' --max-new 2 --backend vulkan", q4);
    tu_check(rc == 0 && file_has(last.err, "backend vulkan"), "cli_backend_vulkan_or_fallback", "rc %d: %s",
             rc, first_err());
    rc = run("vk_req", "ASAN_OPTIONS=detect_leaks=0", 0,
             "generate --model %s --prompt 'the' --max-new 2 --backend vulkan=required", q4);
    tu_check(rc == 0 || (rc == 1 && file_has(last.err, "vulkan=required")), "cli_backend_vulkan_required",
             "rc %d: %s", rc, first_err());
    rc = run("vk_bad", NULL, 0, "generate --model %s --prompt 'the' --backend cuda", q4);
    tu_check(rc == 2 && file_has(last.err, "cpu|vulkan|vulkan=required"), "cli_backend_bad_name", "rc %d",
             rc);
}

static void test_merge(void) {
    const char *A = P("%s/A", root);
    char a[700], out[700];
    snprintf(a, sizeof a, "%s", A);
    snprintf(out, sizeof out, "%s/merged32", root);
    int rc = run("merge32", NULL, 0, "merge --model %s --adapter %s --output %s --dtype fp32", q4, a, out);
    if (!tu_check(rc == 0 && !file_has(P("%s/config.json", out), "quantization_config") &&
                      file_has(P("%s/config.json", out), "\"torch_dtype\": \"float32\""),
                  "cli_merge_fp32", "rc %d: %s", rc, first_err()))
        return;
    // logits: merged dense model (double reference) vs NF4 base + adapter (qlora)
    qlora_model m;
    qlora_error err;
    if (qlora_model_load(&m, q4, NULL, &err) != QLORA_OK ||
        qlora_model_load_adapter(&m, a, &err) != QLORA_OK) {
        tu_check(0, "cli_merge_logits", "%s", err.detail);
        return;
    }
    enum { T = 12 };
    int32_t tok[T];
    for (int t = 0; t < T; t++) tok[t] = 1 + (t * 37) % (VOCAB - 1);
    qlora_train_state ts;
    double *ref = (double *)malloc(sizeof(double) * T * VOCAB);
    float *refd = (float *)malloc(sizeof(float) * T * VOCAB);
    int ok = qlora_train_state_init(&ts, &m, 1, T, 0, &err) == QLORA_OK &&
             qlora_model_forward_eval(&m, &ts, tok, NULL, NULL, NULL, &err) == QLORA_OK;
    int dense_ok = ok && dense_forward(out, tc, tok, T, ref);
    if (dense_ok) {
        for (int i = 0; i < T * VOCAB; i++) refd[i] = (float)ref[i];
        tu_close("cli_merge_logits_equal_base_plus_adapter", ts.logits, refd, T * VOCAB, 2e-4, 2e-4);
        // and the adapter does change them: the merge is not just the base
        double diff = 0;
        qlora_model base;
        qlora_train_state bs;
        if (qlora_model_load(&base, q4, NULL, &err) == QLORA_OK &&
            qlora_train_state_init(&bs, &base, 1, T, 0, &err) == QLORA_OK &&
            qlora_model_forward_eval(&base, &bs, tok, NULL, NULL, NULL, &err) == QLORA_OK) {
            for (int i = 0; i < T * VOCAB; i++) diff = fmax(diff, fabs((double)bs.logits[i] - ref[i]));
            qlora_train_state_free(&bs);
            qlora_model_free(&base);
        }
        tu_check(diff > 1e-3, "cli_merge_adapter_changes_logits", "max |base - merged| = %g", diff);
    } else tu_check(0, "cli_merge_logits_equal_base_plus_adapter", "forward failed: %s", err.detail);
    if (ok) qlora_train_state_free(&ts);
    qlora_model_free(&m);
    free(ref);
    free(refd);
    // fp16 / bf16: the fp32 merge rounded
    for (int k = 0; k < 2; k++) {
        char o2[700];
        snprintf(o2, sizeof o2, "%s/merged%s", root, k ? "bf16" : "fp16");
        rc = run("merge16", NULL, 0, "merge --model %s --adapter %s --output %s --dtype %s", q4, a, o2,
                 k ? "bf16" : "fp16");
        qlora_safetensors s32, s16;
        int good = rc == 0 &&
                   qlora_safetensors_open(&s32, P("%s/model.safetensors", out), &err) == QLORA_OK &&
                   qlora_safetensors_open(&s16, P("%s/model.safetensors", o2), &err) == QLORA_OK;
        int64_t bad = 0, checked = 0;
        for (int64_t i = 0; good && i < s32.n_tensors; i++) {
            const qlora_st_tensor *t32 = &s32.tensors[i], *t16 = qlora_safetensors_find(&s16, t32->name);
            if (!t16 || t16->dtype != (k ? QLORA_DTYPE_BF16 : QLORA_DTYPE_F16) || t16->numel != t32->numel) {
                bad++;
                continue;
            }
            float *x = (float *)malloc(sizeof(float) * (size_t)t32->numel);
            uint16_t *h = (uint16_t *)malloc(2 * (size_t)t32->numel);
            qlora_tensor_to_f32(x, t32, &err);
            if (k) qlora_f32_to_bf16(h, x, t32->numel);
            else qlora_f32_to_f16(h, x, t32->numel);
            bad += memcmp(h, t16->data, 2 * (size_t)t32->numel) != 0;
            checked++;
            free(x);
            free(h);
        }
        if (good) {
            qlora_safetensors_close(&s32);
            qlora_safetensors_close(&s16);
        }
        tu_check(good && bad == 0 && checked == 3 + 9 * tc.L &&
                     file_has(P("%s/config.json", o2), k ? "bfloat16" : "float16"),
                 k ? "cli_merge_bf16" : "cli_merge_fp16", "rc %d, %lld of %lld tensors differ: %s", rc,
                 (long long)bad, (long long)checked, first_err());
    }
}

// In-process checks of the data pipeline: labels, truncation, and the length-grouped order.
static void test_data_pipeline(void) {
    qlora_tokenizer tok;
    qlora_error err;
    if (!tu_check(qlora_tokenizer_load(&tok, P("%s/tokenizer.json", dense), &err) == QLORA_OK,
                  "cli_data_tokenizer", "%s", err.detail))
        return;
    const char *path = P("%s/labels.jsonl", root);
    FILE *f = fopen(path, "w");
    fprintf(f, "{\"prompt\": \"the cat\", \"completion\": \" sat\"}\n{\"text\": \"an ant\"}\n"
               "{\"input\": \"then\", \"output\": \" ran\"}\n{\"prompt\": \"in in\", \"completion\": "
               "\" net net net net net net\"}\n{\"prompt\": \"in in in in in in in in in in in in\", "
               "\"completion\": \" a\"}\n");
    fclose(f);
    cli_data_opts o;
    memset(&o, 0, sizeof o);
    o.template_ = "Q: {prompt} A:";
    o.max_len = 24;
    cli_dataset d;
    int ok = cli_dataset_load(&d, path, &tok, &o);
    // the last line's prompt fills max_len: nothing left to learn, so it is dropped and counted
    if (!tu_check(ok && d.n == 4 && d.no_target == 1, "cli_data_load", "%lld examples, %lld dropped",
                  ok ? (long long)d.n : -1LL, ok ? (long long)d.no_target : -1LL))
        return;
    // prompt/completion: BOS + template(prompt) ignored, completion + EOS counted
    int64_t ns = 0, nt = 0;
    int32_t *src = NULL, *tgt = NULL;
    cli_encode(&tok, "Q: the cat A:", 13, 1, 0, &src, &ns, &err);
    cli_encode(&tok, " sat", 4, 0, 1, &tgt, &nt, &err);
    const cli_example *e = &d.ex[0];
    int good =
        e->n == ns + nt && e->ids[0] == tok.bos_id && e->ids[e->n - 1] == tok.eos_id && e->n_count == nt;
    for (int64_t i = 0; good && i < e->n; i++)
        good =
            e->ids[i] == (i < ns ? src[i] : tgt[i - ns]) && e->labels[i] == (i < ns ? CLI_IGNORE : e->ids[i]);
    tu_check(good, "cli_data_prompt_completion_labels", "n %d (want %lld + %lld), counted %d", (int)e->n,
             (long long)ns, (long long)nt, (int)e->n_count);
    free(src);
    free(tgt);
    e = &d.ex[1];   // text: every token counts (BOS only as an input)
    good = e->ids[0] == tok.bos_id && e->ids[e->n - 1] == tok.eos_id && e->n_count == e->n - 1;
    for (int32_t i = 0; good && i < e->n; i++) good = e->labels[i] == e->ids[i];
    tu_check(good, "cli_data_text_labels", "n %d, counted %d", (int)e->n, (int)e->n_count);
    tu_check(d.ex[2].n_count > 0 && d.ex[2].labels[1] == CLI_IGNORE, "cli_data_input_output_aliases",
             "counted %d", (int)d.ex[2].n_count);
    e = &d.ex[3];   // truncated to 24 on the right, still with a completion token
    tu_check(e->n == 24 && d.truncated == 2 && d.tokens_dropped > 0 && e->ids[23] != tok.eos_id &&
                 e->n_count > 0,
             "cli_data_truncation", "n %d, truncated %lld, dropped %lld", (int)e->n, (long long)d.truncated,
             (long long)d.tokens_dropped);
    cli_dataset_free(&d);
    // the length-grouped order of a synthetic dataset
    cli_dataset s;
    memset(&s, 0, sizeof s);
    s.n = 203;
    s.ex = (cli_example *)calloc((size_t)s.n, sizeof(cli_example));
    tu_seed(99);
    for (int64_t i = 0; i < s.n; i++) s.ex[i].n = 2 + (int32_t)((tu_uniform() * 0.5 + 0.5) * 300);
    int64_t B = 2, *o1 = (int64_t *)malloc(sizeof(int64_t) * (size_t)s.n),
            *o2 = (int64_t *)malloc(sizeof(int64_t) * (size_t)s.n);
    int64_t *o3 = (int64_t *)malloc(sizeof(int64_t) * (size_t)s.n);
    cli_epoch_order(o1, &s, 42, 0, B, 1);
    cli_epoch_order(o2, &s, 42, 0, B, 1);
    cli_epoch_order(o3, &s, 42, 1, B, 1);
    int64_t longest = 0, mb = 50 * B;   // min(203 / 8, 50) = 25 → megabatches of 50
    mb = (s.n / (B * 4) < 50 ? s.n / (B * 4) : 50) * B;
    for (int64_t i = 0; i < s.n; i++) longest = s.ex[i].n > longest ? s.ex[i].n : longest;
    char *seen = (char *)calloc((size_t)s.n, 1);
    int perm = 1, sorted = 1, same = 1, differs = 0;
    for (int64_t i = 0; i < s.n; i++) {
        if (o1[i] < 0 || o1[i] >= s.n || seen[o1[i]]++) perm = 0;
        same &= o1[i] == o2[i];
        differs |= o1[i] != o3[i];
        // sorted within each megabatch, except the swapped first elements
        if (i % mb != 0 && i > 1 && i % mb != 1 && s.ex[o1[i]].n > s.ex[o1[i - 1]].n) sorted = 0;
    }
    tu_check(perm && sorted && same && differs && s.ex[o1[0]].n == longest, "cli_length_grouped_order",
             "permutation %d, megabatches sorted %d, repeatable %d, epochs differ %d, longest first %d", perm,
             sorted, same, differs, s.ex[o1[0]].n == longest);
    free(seen);
    free(o1);
    free(o2);
    free(o3);
    free(s.ex);
    qlora_tokenizer_free(&tok);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--cli")) return qlora_cli_main(argc - 1, argv + 1);
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) snprintf(self_exe, sizeof self_exe, "%s", argv[0]);
    else self_exe[n] = 0;
    snprintf(root, sizeof root, "%s/cli_%ld", tu_tmpdir(), (long)getpid());
    cli_mkdirs(root);
    snprintf(dense, sizeof dense, "%s/dense", root);
    snprintf(q4, sizeof q4, "%s/q4", root);
    snprintf(data, sizeof data, "%s/train.jsonl", root);
    snprintf(evalf, sizeof evalf, "%s/eval.jsonl", root);
    snprintf(mlruns, sizeof mlruns, "%s/mlruns", root);
    if (!tu_check(write_dense_model(dense, tc, 1234) && write_data(data, 24, 1, 5) &&
                      write_data(evalf, 8, 0, 6),
                  "cli_fixtures", "cannot write fixtures under %s", root))
        return tu_finish();
    snprintf(
        train_args, sizeof train_args,
        "--model %s --data %s --eval-file %s --rank 4 --alpha 8 --batch-size 2 --grad-accum 2 --max-steps 8 "
        "--save-steps 2 --save-total-limit 2 --eval-steps 4 --max-len 48 --lr 0.01 --logging-steps 1",
        q4, data, evalf);
    test_help();
    test_data_pipeline();
    test_info();
    test_quantize();
    test_train();
    test_config_file();
    test_threads();
    test_kill_resume();
    test_sigint();
    test_nan();
    test_full_disk();
    test_bad_inputs();
    test_inference();
    test_merge();
    int rc = tu_finish();
    if (rc == 0 && !getenv("QLORA_TEST_KEEP")) cli_rm_rf(root);
    return rc;
}
