// cli_harness.h - runs the `qlora` command line (demo/qlora_commands.h) in child processes and writes
// its fixtures: a tiny dense F32 Llama checkpoint with a byte-fallback BPE tokenizer.json, and JSONL data.
//
// Include after "../demo/qlora_commands.h" and "test_util.h". The test's main() must start with
//     if (argc > 1 && !strcmp(argv[1], "--cli")) return qlora_cli_main(argc - 1, argv + 1);
// and call ch_init(argv[0], "tag") before running anything: every command then runs as this program
// re-executed with "--cli ..." (exit codes and signals are real), stdout and stderr into files under
// ch_root, a scratch folder of this test. ch_run runs a command to its end; ch_spawn starts one and
// returns, for tests that signal it mid-run (ch_wait_until, kill, ch_wait) or limit its file sizes;
// ch_run_tty runs one with its stderr on a pseudo-terminal, as a person at a terminal sees it.
#ifndef QLORA_CLI_HARNESS_H
#define QLORA_CLI_HARNESS_H

#include <poll.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <termios.h>

static char ch_self[4096];
static char ch_root[512];

static inline void ch_init(const char *argv0, const char *tag) {
    ssize_t n = readlink("/proc/self/exe", ch_self, sizeof ch_self - 1);
    if (n <= 0) snprintf(ch_self, sizeof ch_self, "%s", argv0);
    else ch_self[n] = 0;
    snprintf(ch_root, sizeof ch_root, "%s/%s_%ld", tu_tmpdir(), tag, (long)getpid());
    cli_mkdirs(ch_root);
}

// printf into one of 16 rotating buffers (paths for immediate use).
static inline const char *ch_fmt(const char *fmt, ...) {
    static char buf[16][1024];
    static int  slot;
    char       *p = buf[slot++ & 15];
    va_list     ap;
    va_start(ap, fmt);
    vsnprintf(p, 1024, fmt, ap);
    va_end(ap);
    return p;
}

// Splits a command line on spaces (single quotes group words) into argv after "--cli".
static inline char **ch_split(const char *cmd, int *argc) {
    char **av = (char **)calloc(256, sizeof(char *));
    int    n  = 0;
    av[n++] = ch_self;
    av[n++] = (char *)"--cli";
    const char *s = cmd;
    while (*s && n < 254) {
        while (*s == ' ') s++;
        if (!*s) break;
        char *w = (char *)malloc(strlen(s) + 1), *o = w;
        int   q = 0;
        while (*s && (q || *s != ' ')) {
            if (*s == '\'') q = !q;
            else *o++ = *s;
            s++;
        }
        *o      = 0;
        av[n++] = w;
    }
    av[n] = NULL;
    *argc = n;
    return av;
}

// A command: its process while it runs (pid > 0), then its exit status; stdout and stderr files.
typedef struct ch_result {
    pid_t pid;   // -1 once it has been waited for
    int   rc;    // exit status, or 128 + signal; -1 while running or when it could not start
    char  out[600], err[600];
} ch_result;

// tty: NULL, or the path of a pseudo-terminal's slave side that becomes the child's controlling terminal
// and its stderr (output processing off, so the parent reads the bytes the child wrote).
static inline ch_result ch_vspawn(const char *tag, const char *env, long fsize, const char *tty, const char *fmt,
                                  va_list ap) {
    char cmd[4096];
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    ch_result r;
    r.rc = -1;
    snprintf(r.out, sizeof r.out, "%s/%s.out", ch_root, tag);
    snprintf(r.err, sizeof r.err, "%s/%s.err", ch_root, tag);
    int    argc;
    char **av = ch_split(cmd, &argc);
    fflush(stdout);
    fflush(stderr);
    r.pid = fork();
    if (r.pid == 0) {
        int fo = open(r.out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe;
        if (tty) {
            setsid();   // a new session, so that opening the slave makes it the controlling terminal
            fe = open(tty, O_RDWR);
            struct termios tio;
            if (fe >= 0 && tcgetattr(fe, &tio) == 0) {
                tio.c_oflag &= ~(tcflag_t)OPOST;
                tcsetattr(fe, TCSANOW, &tio);
            }
        } else {
            fe = open(r.err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        }
        if (fo < 0 || fe < 0) _exit(125);
        dup2(fo, 1);
        dup2(fe, 2);
        close(fo);
        close(fe);
        char kv[1024];
        snprintf(kv, sizeof kv, "%s", env ? env : "");
        for (char *t = strtok(kv, " "); t; t = strtok(NULL, " ")) {
            char *eq = strchr(t, '=');
            if (!eq) continue;
            *eq = 0;
            setenv(t, eq + 1, 1);
        }
        if (fsize > 0) {   // writes past fsize bytes fail with EFBIG (a full disk) instead of a signal
            struct rlimit rl;
            rl.rlim_cur = rl.rlim_max = (rlim_t)fsize;
            signal(SIGXFSZ, SIG_IGN);
            setrlimit(RLIMIT_FSIZE, &rl);
        }
        execv(ch_self, av);
        _exit(126);
    }
    for (int i = 2; i < argc; i++) free(av[i]);
    free(av);
    if (r.pid < 0) r.pid = -1;
    return r;
}

// Starts `qlora <cmd>` and returns at once; ch_wait ends it. env: NULL or space-separated K=V settings
// for the child; fsize > 0: the child's files cannot grow beyond fsize bytes (RLIMIT_FSIZE).
static inline ch_result ch_spawn(const char *tag, const char *env, long fsize, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ch_result r = ch_vspawn(tag, env, fsize, NULL, fmt, ap);
    va_end(ap);
    return r;
}

// Records the waitpid status of a command that has ended.
static inline void ch_ended(ch_result *r, int status) {
    r->pid = -1;
    if (WIFEXITED(status)) r->rc = WEXITSTATUS(status);
    else if (WIFSIGNALED(status)) r->rc = 128 + WTERMSIG(status);
}

// Waits for a started command (if it still runs); its exit status (also in r->rc).
static inline int ch_wait(ch_result *r) {
    int status = 0;
    if (r->pid <= 0) return r->rc;
    while (waitpid(r->pid, &status, 0) < 0 && errno == EINTR) {
    }
    ch_ended(r, status);
    return r->rc;
}

// Runs `qlora <cmd>` and waits. env: NULL or space-separated K=V settings for the child.
static inline ch_result ch_run(const char *tag, const char *env, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    ch_result r = ch_vspawn(tag, env, 0, NULL, fmt, ap);
    va_end(ap);
    ch_wait(&r);
    return r;
}

// Runs `qlora <cmd>` with its stderr on a pseudo-terminal, as a person at a terminal sees it, and waits;
// every byte it wrote there is in r.err. r.rc is -1 when no pseudo-terminal could be had.
static inline ch_result ch_run_tty(const char *tag, const char *env, const char *fmt, ...) {
    ch_result r;
    r.rc = r.pid = -1;
    snprintf(r.out, sizeof r.out, "%s/%s.out", ch_root, tag);
    snprintf(r.err, sizeof r.err, "%s/%s.err", ch_root, tag);
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0) return r;
    char slave[256];
    if (grantpt(master) != 0 || unlockpt(master) != 0 || !ptsname(master)) {
        close(master);
        return r;
    }
    snprintf(slave, sizeof slave, "%s", ptsname(master));
    FILE *log = fopen(r.err, "wb");
    if (!log) {
        close(master);
        return r;
    }
    va_list ap;
    va_start(ap, fmt);
    r = ch_vspawn(tag, env, 0, slave, fmt, ap);
    va_end(ap);
    // drain the terminal while the child runs, so that it never blocks on a full terminal buffer; then
    // what is left (Linux: read fails with EIO once no process holds the slave side)
    char buf[4096];
    int ended = r.pid <= 0;
    for (;;) {
        struct pollfd pf;
        pf.fd = master;
        pf.events = POLLIN;
        pf.revents = 0;
        int ready = poll(&pf, 1, ended ? 0 : 100);
        if (ready < 0 && errno == EINTR) continue;
        if (ready > 0) {
            ssize_t k = read(master, buf, sizeof buf);
            if (k > 0) {
                fwrite(buf, 1, (size_t)k, log);
                continue;
            }
            if (k < 0 && errno == EINTR) continue;
            break;   // EIO or end: the slave side is closed
        }
        if (ended) break;   // nothing more to read from a child that has ended
        int status;
        if (waitpid(r.pid, &status, WNOHANG) == r.pid) {
            ch_ended(&r, status);
            ended = 1;
        }
    }
    fclose(log);
    close(master);
    ch_wait(&r);
    return r;
}

static inline char *ch_slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    char  *b   = (char *)malloc((size_t)(sz < 0 ? 0 : sz) + 1);
    size_t got = b ? fread(b, 1, (size_t)(sz < 0 ? 0 : sz), f) : 0;
    fclose(f);
    if (b) b[got] = 0;
    if (n) *n = got;
    return b;
}

static inline int ch_file_has(const char *path, const char *needle) {
    char *s = ch_slurp(path, NULL);
    int   r = s && strstr(s, needle) != NULL;
    free(s);
    return r;
}

// The line of a file that contains `needle` (else its first line), for messages.
static inline const char *ch_line(const char *path, const char *needle) {
    static char buf[400];
    char       *s = ch_slurp(path, NULL);
    buf[0]        = 0;
    if (s) {
        char *e = needle ? strstr(s, needle) : NULL;
        if (e)
            while (e > s && e[-1] != '\n') e--;
        snprintf(buf, sizeof buf, "%.390s", e ? e : s);
        char *nl = strchr(buf, '\n');
        if (nl) *nl = 0;
    }
    free(s);
    return buf;
}

// 1 when two files hold the same bytes.
static inline int ch_same_file(const char *a, const char *b) {
    size_t na = 0, nb = 0;
    char  *x = ch_slurp(a, &na), *y = ch_slurp(b, &nb);
    int    r = x && y && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return r;
}

// Waits up to 30 s, while the started command r runs, for `path` to exist (text NULL) or to contain
// `text`. 1 when it does; 0 when the command ended first (it is then waited for) or time ran out.
static inline int ch_wait_until(ch_result *r, const char *path, const char *text) {
    for (int i = 0; i < 15000; i++) {
        if (text ? ch_file_has(path, text) : cli_is_dir(path) || cli_is_file(path)) return 1;
        int status = 0;
        if (r->pid <= 0) return 0;
        if (waitpid(r->pid, &status, WNOHANG) == r->pid) {
            ch_ended(r, status);
            return 0;
        }
        cli_sleep_ms(2);
    }
    return 0;
}

// --- fixtures ------------------------------------------------------------------------------------

#define CH_VOCAB 300

// tokenizer.json: <unk> <s> </s>, 256 byte pieces, "▁", a-z and six merges (292 ids).
static inline int ch_write_tokenizer(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fprintf(f,
            "{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true, \"normalized\": false},"
            " {\"id\": 1, \"content\": \"<s>\", \"special\": true, \"normalized\": false},"
            " {\"id\": 2, \"content\": \"</s>\", \"special\": true, \"normalized\": false}],"
            " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": "
            "\"\\u2581\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]},"
            " \"pre_tokenizer\": null, \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true,"
            " \"byte_fallback\": true, \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2");
    int id = 3;
    for (int b = 0; b < 256; b++) fprintf(f, ", \"<0x%02X>\": %d", b, id++);
    fprintf(f, ", \"\\u2581\": %d", id++);
    for (char c = 'a'; c <= 'z'; c++) fprintf(f, ", \"%c\": %d", c, id++);
    static const char *const merges[6][2] = { { "t", "h" }, { "\\u2581", "t" }, { "h", "e" },
                                             { "i", "n" }, { "e", "r" },        { "a", "n" } };
    for (int k = 0; k < 6; k++) fprintf(f, ", \"%s%s\": %d", merges[k][0], merges[k][1], id++);
    fprintf(f, "}, \"merges\": [");
    for (int k = 0; k < 6; k++) fprintf(f, "%s\"%s %s\"", k ? ", " : "", merges[k][0], merges[k][1]);
    fprintf(f, "]}}\n");
    return fclose(f) == 0;
}

typedef struct ch_model_cfg {
    int C, H, L, NH, NKV, HD;   // hidden, intermediate, layers, heads, KV heads, head dim
} ch_model_cfg;

// A dense F32 Llama checkpoint (config.json, model.safetensors, tokenizer.json) with random weights.
static inline int ch_write_dense_model(const char *dir, ch_model_cfg c, unsigned long long seed) {
    cli_mkdirs(dir);
    FILE *f = fopen(ch_fmt("%s/config.json", dir), "w");
    if (!f) return 0;
    fprintf(f,
            "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
            "\"intermediate_size\": %d, \"num_hidden_layers\": %d, \"num_attention_heads\": %d, "
            "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 128, "
            "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
            "\"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"torch_dtype\": \"float32\"}\n",
            c.C, c.H, c.L, c.NH, c.NKV, CH_VOCAB);
    fclose(f);
    tu_seed(seed);
    int              n = 0, cap = 3 + 9 * c.L, QD = c.NH * c.HD, KD = c.NKV * c.HD;
    qlora_st_entry  *e     = (qlora_st_entry *)calloc((size_t)cap, sizeof(qlora_st_entry));
    char           (*names)[96] = (char (*)[96])calloc((size_t)cap, 96);
    float          **bufs  = (float **)calloc((size_t)cap, sizeof(float *));
    // One row per tensor: rows, cols (0: a vector, filled with 1 + 0.1·u), stddev, name pattern.
    for (int l = -1; l <= c.L; l++) {
        struct {
            int         d0, d1;
            double      sd;
            const char *name;
        } t[9];
        int nt = 0;
#define CH_T(a, b, s, nm) (t[nt].d0 = (a), t[nt].d1 = (b), t[nt].sd = (s), t[nt].name = (nm), nt++)
        if (l < 0) CH_T(CH_VOCAB, c.C, 0.5, "model.embed_tokens.weight");
        else if (l == c.L) {
            CH_T(c.C, 0, 0.0, "model.norm.weight");
            CH_T(CH_VOCAB, c.C, 0.3, "lm_head.weight");
        } else {
            CH_T(c.C, 0, 0.0, "model.layers.%d.input_layernorm.weight");
            CH_T(c.C, 0, 0.0, "model.layers.%d.post_attention_layernorm.weight");
            CH_T(QD, c.C, 1.0 / sqrt(c.C), "model.layers.%d.self_attn.q_proj.weight");
            CH_T(KD, c.C, 1.0 / sqrt(c.C), "model.layers.%d.self_attn.k_proj.weight");
            CH_T(KD, c.C, 1.0 / sqrt(c.C), "model.layers.%d.self_attn.v_proj.weight");
            CH_T(c.C, QD, 1.0 / sqrt(QD), "model.layers.%d.self_attn.o_proj.weight");
            CH_T(c.H, c.C, 1.0 / sqrt(c.C), "model.layers.%d.mlp.gate_proj.weight");
            CH_T(c.H, c.C, 1.0 / sqrt(c.C), "model.layers.%d.mlp.up_proj.weight");
            CH_T(c.C, c.H, 1.0 / sqrt(c.H), "model.layers.%d.mlp.down_proj.weight");
        }
#undef CH_T
        for (int k = 0; k < nt; k++, n++) {
            long cnt = (long)t[k].d0 * (t[k].d1 ? (long)t[k].d1 : 1L);
            snprintf(names[n], 96, t[k].name, l);
            bufs[n] = (float *)malloc(sizeof(float) * (size_t)cnt);
            if (t[k].sd > 0) tu_fill_normal(bufs[n], cnt, t[k].sd);
            else
                for (long q = 0; q < cnt; q++) bufs[n][q] = 1.0f + 0.1f * (float)tu_uniform();
            e[n].name     = names[n];
            e[n].dtype    = QLORA_DTYPE_F32;
            e[n].ndim     = t[k].d1 ? 2 : 1;
            e[n].shape[0] = t[k].d0;
            e[n].shape[1] = t[k].d1;
            e[n].data     = bufs[n];
        }
    }
    qlora_error err;
    int ok = qlora_safetensors_write(ch_fmt("%s/model.safetensors", dir), e, n, NULL, &err) == QLORA_OK;
    if (!ok) printf("# fixture: %s\n", err.detail);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    free(e);
    return ok && ch_write_tokenizer(ch_fmt("%s/tokenizer.json", dir));
}

static const char *const ch_words[] = { "the", "cat", "sat",  "on",  "mat",   "in",    "her", "then",
                                        "an",  "ant", "thin", "ran", "inner", "there", "hen", "net" };
#define CH_NWORDS ((int)(sizeof ch_words / sizeof ch_words[0]))

static inline int ch_word(void) { return (int)((tu_uniform() * 0.5 + 0.5) * CH_NWORDS) % CH_NWORDS; }

// n lines of JSONL: prompt/completion pairs (the completion is the prompt's words reversed: learnable),
// every fifth a {"text": ...} line, a blank line (skipped) after the third; with long_one, last, one
// example of 24 words (longer than max_len 48).
static inline int ch_write_data(const char *path, int n, int long_one, unsigned long long seed) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    tu_seed(seed);
    for (int i = 0; i < n; i++) {
        int k = 2 + (int)((tu_uniform() * 0.5 + 0.5) * 4), idx[8];
        for (int j = 0; j < k; j++) idx[j] = ch_word();
        fprintf(f, i % 5 == 4 ? "{\"text\": \"" : "{\"prompt\": \"");
        for (int j = 0; j < k; j++) fprintf(f, "%s%s", j ? " " : "", ch_words[idx[j]]);
        if (i % 5 == 4) {
            fprintf(f, "\"}\n");
            continue;
        }
        fprintf(f, " =\", \"completion\": \"");
        for (int j = k - 1; j >= 0; j--) fprintf(f, " %s", ch_words[idx[j]]);
        fprintf(f, "\"}\n");
        if (i == 2) fprintf(f, "\n");
    }
    for (int part = 0; long_one && part < 2; part++) {
        fprintf(f, part ? "\", \"completion\": \" " : "{\"prompt\": \"");
        for (int j = 0; j < 12; j++) fprintf(f, "%s%s", j ? " " : "", ch_words[ch_word()]);
    }
    if (long_one) fprintf(f, "\"}\n");
    return fclose(f) == 0;
}

#endif // QLORA_CLI_HARNESS_H
