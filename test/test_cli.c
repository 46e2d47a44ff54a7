// test_cli.c - the `qlora` command line (demo/qlora.c) end to end on a tiny random model.
//
// The CLI is compiled into this binary (demo/qlora_commands.h); every command runs
// in a child process (this program re-executed with "--cli ..."), so exit codes, signals,
// SIGKILL, Ctrl-C and file-size limits are exercised for real. Processes and fixtures (a dense F32
// Llama checkpoint with a small byte-fallback BPE tokenizer.json, JSONL files): test/cli_harness.h.
//
// Checks: help of every command; info against the loaded model; quantize (same NF4 as
// quantize-on-load); train (outputs, checkpoint rotation, resolved config, config file + flag
// precedence, MLflow run / metrics / artifacts / registry, loss goes down); bit-identical final
// adapter for OMP_NUM_THREADS 1 vs 2, after SIGKILL + resume and after Ctrl-C + resume; the progress line
// and end summary on a terminal (a pseudo-terminal); bad
// inputs (malformed line, empty file, too long with --no-truncate, NaN loss, full disk while
// checkpointing, adapter of another model, changed config on resume, existing checkpoints);
// generate / score / eval; merge (fp32 logits of the merged model = base + adapter, fp16/bf16
// = rounded fp32); the Vulkan backend flags.
#include "../demo/qlora_commands.h"
#include "test_util.h"
#include "cli_harness.h"

// --- MLflow helpers ----------------------------------------------------------------------------

// The run folder of the only run of experiment "qlora" (name in meta.yaml) under mlruns, or "".
static const char *find_run(const char *mlruns, const char *experiment_name) {
    static char found[1200];
    found[0] = 0;
    DIR *d = opendir(mlruns);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.' || !strcmp(e->d_name, "models")) continue;
        const char *meta = ch_fmt("%s/%s/meta.yaml", mlruns, e->d_name);
        char want[200];
        snprintf(want, sizeof want, "name: '%s'", experiment_name);
        if (!ch_file_has(meta, want)) continue;
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
    char *s = ch_slurp(path, NULL);
    int n = 0;
    for (char *p = s; p && *p; p++) n += *p == '\n';
    free(s);
    return n;
}

// value of the metric line `line` (0-based) of a metric file
static double metric_at(const char *path, int line) {
    char *s = ch_slurp(path, NULL);
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
static int dense_forward(const char *dir, ch_model_cfg c, const int32_t *tok, int T, double *logits) {
    qlora_safetensors st;
    qlora_error err;
    if (qlora_safetensors_open(&st, ch_fmt("%s/model.safetensors", dir), &err) != QLORA_OK) return 0;
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
    float *emb = st_get(&st, "model.embed_tokens.weight", (int64_t)CH_VOCAB * C);
    if (!emb) ok = 0;
    for (int t = 0; ok && t < T; t++)
        for (int i = 0; i < C; i++) x[t * C + i] = emb[(size_t)tok[t] * C + i];
    for (int l = 0; ok && l < c.L; l++) {
        float *win = st_get(&st, ch_fmt("model.layers.%d.input_layernorm.weight", l), C);
        float *wpo = st_get(&st, ch_fmt("model.layers.%d.post_attention_layernorm.weight", l), C);
        float *wq = st_get(&st, ch_fmt("model.layers.%d.self_attn.q_proj.weight", l), (int64_t)QD * C);
        float *wk = st_get(&st, ch_fmt("model.layers.%d.self_attn.k_proj.weight", l), (int64_t)KD * C);
        float *wv = st_get(&st, ch_fmt("model.layers.%d.self_attn.v_proj.weight", l), (int64_t)KD * C);
        float *wo = st_get(&st, ch_fmt("model.layers.%d.self_attn.o_proj.weight", l), (int64_t)C * QD);
        float *wg = st_get(&st, ch_fmt("model.layers.%d.mlp.gate_proj.weight", l), (int64_t)H * C);
        float *wu = st_get(&st, ch_fmt("model.layers.%d.mlp.up_proj.weight", l), (int64_t)H * C);
        float *wd = st_get(&st, ch_fmt("model.layers.%d.mlp.down_proj.weight", l), (int64_t)C * H);
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
          *head = ok ? st_get(&st, "lm_head.weight", (int64_t)CH_VOCAB * C) : NULL;
    if (!wn || !head) ok = 0;
    for (int t = 0; ok && t < T; t++) {
        rmsnorm_d(n, x + t * C, wn, C, 1e-5);
        matvec_d(logits + (size_t)t * CH_VOCAB, head, n, CH_VOCAB, C);
    }
    free(wn); free(head); free(emb);
    free(x); free(n); free(q); free(k); free(v); free(ao); free(tmp); free(g); free(u);
    qlora_safetensors_close(&st);
    return ok;
}

// --- the tests -------------------------------------------------------------------------------------

static ch_model_cfg tc = { 32, 64, 2, 4, 2, 8 };
static char dense[600], q4[600], data[600], evalf[600], mlruns[600];
static char train_args[2048];

static void test_help(void) {
    ch_result r = ch_run("help", NULL, "--help");
    tu_check(r.rc == 0 && ch_file_has(r.out, "usage: qlora COMMAND"), "cli_help", "rc %d", r.rc);
    static const char *const cmds[] = { "info", "quantize", "train", "generate", "score", "eval", "merge" };
    int bad = 0;
    for (int i = 0; i < 7; i++) {
        r = ch_run("help_cmd", NULL, "%s --help", cmds[i]);
        if (r.rc != 0 || !ch_file_has(r.out, "usage: qlora") || !ch_file_has(r.out, "--model")) {
            bad++;
            printf("# %s --help: rc %d\n", cmds[i], r.rc);
        }
    }
    tu_check(bad == 0, "cli_help_every_command", "%d commands without a working --help", bad);
    r = ch_run("help_bad", NULL, "train --no-such-flag 3");
    tu_check(r.rc == 2 && ch_file_has(r.err, "does not take --no-such-flag"), "cli_unknown_flag", "rc %d: %s",
             r.rc, ch_line(r.err, "error"));
    r = ch_run("help_dropout", NULL, "train --help");
    tu_check(ch_file_has(r.out, "0.05 for 33B"), "cli_help_documents_dropout",
             "train --help does not explain the dropout default");
}

static void test_info(void) {
    ch_result r = ch_run("info", NULL, "info --model %s --rank 8 --json", dense);
    char *s = ch_slurp(r.out, NULL);
    qlora_json_doc doc;
    qlora_error err;
    int ok = r.rc == 0 && s && qlora_json_parse(&doc, s, strlen(s), &err) == QLORA_OK;
    free(s);
    if (!tu_check(ok, "cli_info_json", "rc %d: %s", r.rc, ch_line(r.err, "error"))) return;
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
    r = ch_run("info_text", NULL, "info --model %s", dense);
    tu_check(r.rc == 0 && ch_file_has(r.out, "NF4") && ch_file_has(r.out, "optimizer state"), "cli_info_text",
             "rc %d", r.rc);
}

static void test_quantize(void) {
    ch_result r = ch_run("quantize", NULL, "quantize --model %s --output %s", dense, q4);
    tu_check(r.rc == 0 && ch_file_has(ch_fmt("%s/config.json", q4), "quantization_config") &&
                 cli_is_file(ch_fmt("%s/tokenizer.json", q4)),
             "cli_quantize", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    // the quantized copy computes exactly what quantize-on-load computes
    r = ch_run("eval_dense", NULL, "eval --model %s --data %s --batch-size 2 --max-len 48", dense, evalf);
    char *a = ch_slurp(r.out, NULL);
    ch_result r2 =
        ch_run("eval_q4", NULL, "eval --model %s --data %s --batch-size 2 --max-len 48", q4, evalf);
    char *b = ch_slurp(r2.out, NULL);
    tu_check(r.rc == 0 && r2.rc == 0 && a && b && strstr(a, "eval_loss") && !strcmp(a, b),
             "cli_quantize_same_nf4", "dense: %s / q4: %s", a ? a : "-", b ? b : "-");
    free(a);
    free(b);
}

// The reference run: 8 steps, checkpoints every 2 (keep 2), eval every 4.
static char ref_adapter[700];

static void test_train(void) {
    const char *out = ch_fmt("%s/A", ch_root);
    ch_result r = ch_run("train_A", "OMP_NUM_THREADS=2",
                         "train %s --output %s --mlruns %s --register-model tiny-adapter", train_args, out,
                         mlruns);
    if (!tu_check(r.rc == 0, "cli_train_runs", "rc %d: %s", r.rc, ch_line(r.err, "error"))) return;
    snprintf(ref_adapter, sizeof ref_adapter, "%s/adapter_model.safetensors", out);
    tu_check(cli_is_file(ref_adapter) && ch_file_has(ch_fmt("%s/adapter_config.json", out), "\"r\": 4"),
             "cli_train_adapter", "no adapter in %s", out);
    int64_t *steps = NULL, n = cli_list_checkpoints(out, &steps);
    tu_check(n == 2 && steps[0] == 6 && steps[1] == 8 &&
                 cli_is_file(ch_fmt("%s/checkpoint-8/optimizer.bin", out)) &&
                 cli_is_file(ch_fmt("%s/checkpoint-8/adapter_model.safetensors", out)) &&
                 cli_is_file(ch_fmt("%s/checkpoint-8/trainer_state.json", out)),
             "cli_train_checkpoints_rotated", "%lld checkpoints (want 6 and 8)", (long long)n);
    free(steps);
    const char *rcfg = ch_fmt("%s/resolved_config.json", out);
    tu_check(ch_file_has(rcfg, "\"dropout\": 0.1") && ch_file_has(rcfg, "\"optim\": \"paged_adamw_32bit\"") &&
                 ch_file_has(rcfg, "\"lr\": 0.01") && ch_file_has(rcfg, "\"max_grad_norm\": 0.3") &&
                 ch_file_has(rcfg, "\"data_seed\": 42") && ch_file_has(rcfg, "\"targets\": \"all\""),
             "cli_train_resolved_config", "resolved_config.json lacks defaults or flags");
    char *png = ch_slurp(ch_fmt("%s/loss_curve.png", out), NULL);
    tu_check(png && (unsigned char)png[0] == 0x89 && png[1] == 'P', "cli_train_loss_png", "no PNG");
    free(png);
    tu_check(ch_file_has(r.err, "truncated 1 example") && ch_file_has(r.err, "tokens dropped"),
             "cli_train_reports_truncation", "stderr does not report the truncated example");
    tu_check(!ch_file_has(r.err, "inner there") && !ch_file_has(r.err, " = "), "cli_train_no_text_in_logs",
             "training text appears in the log");
    // MLflow
    const char *found = find_run(mlruns, "qlora");
    if (!tu_check(found[0] != 0, "cli_mlflow_run", "no run in %s", mlruns)) return;
    char run_dir[1200];
    snprintf(run_dir, sizeof run_dir, "%s", found);
    tu_check(ch_file_has(ch_fmt("%s/meta.yaml", run_dir), "status: 3") &&
                 count_lines(ch_fmt("%s/metrics/loss", run_dir)) == 8 &&
                 count_lines(ch_fmt("%s/metrics/learning_rate", run_dir)) == 8 &&
                 count_lines(ch_fmt("%s/metrics/grad_norm", run_dir)) == 8 &&
                 count_lines(ch_fmt("%s/metrics/tokens_per_second", run_dir)) == 8 &&
                 count_lines(ch_fmt("%s/metrics/eval_loss", run_dir)) == 2 &&
                 ch_file_has(ch_fmt("%s/params/rank", run_dir), "4") &&
                 ch_file_has(ch_fmt("%s/params/lr_scheduler", run_dir), "constant") &&
                 cli_is_file(ch_fmt("%s/params/derived.total_steps", run_dir)),
             "cli_mlflow_metrics_params", "run %s incomplete", run_dir);
    tu_check(cli_is_file(ch_fmt("%s/artifacts/adapter/adapter_model.safetensors", run_dir)) &&
                 cli_is_file(ch_fmt("%s/artifacts/adapter/MLmodel", run_dir)) &&
                 cli_is_file(ch_fmt("%s/artifacts/loss_curve.png", run_dir)) &&
                 cli_is_file(ch_fmt("%s/artifacts/resolved_config.json", run_dir)) &&
                 cli_is_file(ch_fmt("%s/models/tiny-adapter/version-1/meta.yaml", mlruns)),
             "cli_mlflow_artifacts_registry", "artifacts or registry missing in %s", run_dir);
    double first = metric_at(ch_fmt("%s/metrics/loss", run_dir), 0),
           lastv = metric_at(ch_fmt("%s/metrics/loss", run_dir), 7);
    tu_check(lastv < first, "cli_train_loss_decreases", "loss %g → %g", first, lastv);
}

static void test_config_file(void) {
    const char *cfg = ch_fmt("%s/cfg.json", ch_root);
    FILE *f = fopen(cfg, "w");
    fprintf(
        f,
        "{\"model\": \"%s\", \"data\": \"%s\", \"rank\": 2, \"alpha\": 4, \"max_steps\": 3, \"max-len\": 48, "
        "\"targets\": [\"q_proj\", \"v_proj\"], \"batch_size\": 2, \"grad_accum\": 1, \"no_mlflow\": true, "
        "\"prompt\": \"ignored by train\"}\n",
        q4, data);
    fclose(f);
    const char *out = ch_fmt("%s/cfg_out", ch_root);
    ch_result r =
        ch_run("train_cfg", NULL, "train --config %s --max-steps 1 --output %s --save-steps 0", cfg, out);
    const char *rcfg = ch_fmt("%s/resolved_config.json", out);
    tu_check(r.rc == 0 && ch_file_has(rcfg, "\"max_steps\": 1") && ch_file_has(rcfg, "\"rank\": 2") &&
                 ch_file_has(rcfg, "\"targets\": \"q_proj,v_proj\"") &&
                 ch_file_has(rcfg, "\"grad_accum\": 1") &&
                 ch_file_has(ch_fmt("%s/adapter_config.json", out), "\"v_proj\"") &&
                 !ch_file_has(ch_fmt("%s/adapter_config.json", out), "\"k_proj\""),
             "cli_config_file_and_flags", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    f = fopen(cfg, "w");
    fprintf(f, "{\"rnak\": 3}\n");
    fclose(f);
    r = ch_run("train_cfg_bad", NULL, "train --config %s", cfg);
    tu_check(r.rc != 0 && ch_file_has(r.err, "unknown option \"rnak\""), "cli_config_unknown_key",
             "rc %d: %s", r.rc, ch_line(r.err, "error"));
}

static void test_threads(void) {
    const char *out = ch_fmt("%s/B", ch_root);
    ch_result r = ch_run("train_B", "OMP_NUM_THREADS=1", "train %s --output %s --no-mlflow --save-steps 0",
                         train_args, out);
    tu_check(r.rc == 0 && ch_same_file(ref_adapter, ch_fmt("%s/adapter_model.safetensors", out)),
             "cli_same_bytes_1_vs_2_threads", "rc %d: %s", r.rc, ch_line(r.err, "error"));
}

// What a person at a terminal sees of `qlora train` (stderr a pseudo-terminal): one live progress line,
// rewritten in place ("\rstep K/N | ... \033[K") at every step; every message starts on a clean line (the
// progress line is cleared first with "\r\033[K"); a one-line summary at the end; none of the plain log
// lines that a file gets. The display changes nothing: the adapter has the bytes of the logged run.
static void test_progress_tty(void) {
    const char *out = ch_fmt("%s/T", ch_root);
    ch_result r = ch_run_tty("train_T", "OMP_NUM_THREADS=2", "train %s --output %s --no-mlflow", train_args, out);
    if (r.rc == -1 && r.pid == -1) {
        tu_skip("cli_progress_tty", "no pseudo-terminal (posix_openpt)");
        return;
    }
    size_t n = 0;
    char *t = ch_slurp(r.err, &n);
    if (!tu_check(r.rc == 0 && t, "cli_progress_tty_runs", "rc %d", r.rc)) {
        free(t);
        return;
    }
    // the progress updates: every step once, each one complete on one line
    int seen[9] = {0}, bad_update = 0, updates = 0;
    for (const char *p = strstr(t, "\rstep "); p; p = strstr(p + 1, "\rstep ")) {
        const char *end = strstr(p, "\033[K");
        const char *nl = strchr(p, '\n');
        int k = 0, total = 0;
        updates++;
        if (!end || (nl && nl < end) || sscanf(p, "\rstep %d/%d |", &k, &total) != 2 || total != 8 || k < 1 ||
            k > 8) {
            bad_update++;
            continue;
        }
        char line[256];
        size_t len = (size_t)(end - p) < sizeof line - 1 ? (size_t)(end - p) : sizeof line - 1;
        memcpy(line, p, len);
        line[len] = 0;
        if (!strstr(line, "| epoch ") || !strstr(line, "| loss ") || !strstr(line, "| lr ") ||
            !strstr(line, " tok/s | ETA ") || !strstr(line, "| RSS ") || !strstr(line, " MB"))
            bad_update++;
        seen[k]++;
    }
    int missing = 0;
    for (int k = 1; k <= 8; k++) missing += seen[k] == 0;
    tu_check(updates >= 8 && bad_update == 0 && missing == 0, "cli_progress_tty_line",
             "%d updates, %d malformed, %d steps never shown", updates, bad_update, missing);
    // every message begins a line of its own: at the start, after a newline, or after the clear
    int glued = 0, messages = 0;
    for (const char *p = strstr(t, "qlora: "); p; p = strstr(p + 1, "qlora: ")) {
        messages++;
        int clean = p == t || p[-1] == '\n' || (p - t >= 4 && !memcmp(p - 4, "\r\033[K", 4));
        glued += !clean;
    }
    // without the updates and the clears, what remains is whole lines of messages
    char *rest = (char *)malloc(n + 1);
    size_t m = 0;
    for (size_t i = 0; i < n && rest;) {
        if (!strncmp(t + i, "\rstep ", 6)) {   // an update, up to its erase-to-end-of-line
            const char *end = strstr(t + i, "\033[K");
            if (!end) break;
            i = (size_t)(end - t) + 3;
        } else if (!strncmp(t + i, "\r\033[K", 4)) {
            i += 4;
        } else {
            rest[m++] = t[i++];
        }
    }
    int stray = 0, not_message = 0, done_lines = 0;
    const char *summary = NULL;
    if (rest) {
        rest[m] = 0;
        stray = strchr(rest, '\r') != NULL || strchr(rest, '\033') != NULL || (m > 0 && rest[m - 1] != '\n');
        for (char *line = rest; *line;) {
            char *nl = strchr(line, '\n');
            if (!nl) break;
            *nl = 0;
            if (strncmp(line, "qlora: ", 7) != 0) not_message++;
            if (!strncmp(line, "qlora: done: ", 13)) {
                done_lines++;
                summary = line;
            }
            line = nl + 1;
        }
    }
    tu_check(messages > 0 && glued == 0 && rest && !stray && not_message == 0, "cli_progress_tty_messages",
             "%d of %d messages glued to a progress line, stray control bytes %d, %d lines not messages", glued,
             messages, stray, not_message);
    tu_check(done_lines == 1 && summary && !strncmp(summary, "qlora: done: 8 steps (8 this run) in ", 37) &&
                 strstr(summary, ", loss ") && strstr(summary, ", eval_loss ") &&
                 strstr(summary, " tok/s, peak RSS ") && strstr(summary, "; adapter in ") && strstr(summary, out),
             "cli_progress_tty_summary", "%d summary lines: '%s'", done_lines, summary ? summary : "");
    tu_check(!strstr(t, "step 3/8 epoch") && !strstr(t, "grad_norm"), "cli_progress_tty_no_log_lines",
             "the plain log lines appear on the terminal");
    tu_check(ch_same_file(ref_adapter, ch_fmt("%s/adapter_model.safetensors", out)), "cli_progress_tty_same_bytes",
             "the adapter differs from the run logged to a file");
    free(rest);
    free(t);
}

// --compute: train defaults to bf16 (bitsandbytes' compute_dtype=bfloat16, the QLoRA recipe; the arithmetic
// is tested in test_kernels and test_llama) and records it; --compute fp32 gives another adapter, the same bytes
// with 1 and 2 threads; generate's default stays fp32 (its --help says so).
static void test_compute(void) {
    const char *o1 = ch_fmt("%s/F32_1", ch_root), *o2 = ch_fmt("%s/F32_2", ch_root);
    ch_result r1 = ch_run("train_fp32_1", "OMP_NUM_THREADS=1",
                          "train %s --output %s --no-mlflow --save-steps 0 --compute fp32", train_args, o1);
    ch_result r2 = ch_run("train_fp32_2", "OMP_NUM_THREADS=2",
                          "train %s --output %s --no-mlflow --save-steps 0 --compute fp32", train_args, o2);
    const char *a1 = ch_fmt("%s/adapter_model.safetensors", o1), *a2 = ch_fmt("%s/adapter_model.safetensors", o2);
    const char *ref_dir = ch_fmt("%s/A", ch_root);
    tu_check(r1.rc == 0 && r2.rc == 0 && ch_same_file(a1, a2) && !ch_same_file(a1, ref_adapter) &&
                 ch_file_has(ch_fmt("%s/resolved_config.json", o2), "\"compute\": \"fp32\"") &&
                 ch_file_has(ch_fmt("%s/resolved_config.json", ref_dir), "\"compute\": \"bf16\""),
             "cli_train_compute_default_bf16_and_fp32", "rc %d/%d: %s", r1.rc, r2.rc, ch_line(r2.err, "error"));
    // a checkpoint written before compute was recorded (here: the key taken out of its resolved_config.json) was
    // trained in fp32, and resumes so: the same bytes as the uninterrupted fp32 run
    const char *o3 = ch_fmt("%s/F32_old", ch_root);
    ch_result r3 = ch_run("train_fp32_old", "OMP_NUM_THREADS=2",
                          "train %s --output %s --no-mlflow --save-steps 5 --compute fp32 --debug-sigint-at-step 4",
                          train_args, o3);
    const char *rc3 = ch_fmt("%s/checkpoint-3/resolved_config.json", o3);
    char *txt = ch_slurp(rc3, NULL);
    int stripped = 0;
    if (txt) {
        FILE *f = fopen(rc3, "w");
        for (char *line = txt, *next; f && line && *line; line = next) {
            next = strchr(line, '\n');
            if (next) next++;
            const size_t len = next ? (size_t)(next - line) : strlen(line);
            if (strstr(line, "\"compute\"") && strstr(line, "\"compute\"") < line + len) stripped = 1;
            else fwrite(line, 1, len, f);
        }
        if (f) fclose(f);
        free(txt);
    }
    r3 = ch_run("train_fp32_old_resume", "OMP_NUM_THREADS=2", "train --output %s --resume --debug-sigint-at-step 0", o3);
    tu_check(stripped && r3.rc == 0 && ch_same_file(a2, ch_fmt("%s/adapter_model.safetensors", o3)),
             "cli_resume_old_checkpoint_in_fp32", "stripped %d rc %d: %s", stripped, r3.rc, ch_line(r3.err, "error"));
    ch_result h1 = ch_run("train_help", NULL, "train --help"), h2 = ch_run("generate_help", NULL, "generate --help");
    tu_check(h1.rc == 0 && h2.rc == 0 && ch_file_has(h1.out, "--compute fp32|bf16   (default: bf16)") &&
                 ch_file_has(h2.out, "--compute fp32|bf16   (default: fp32)"),
             "cli_compute_defaults_per_command", "rc %d/%d", h1.rc, h2.rc);
}

static void test_kill_resume(void) {
    const char *out = ch_fmt("%s/C", ch_root);
    ch_result r = ch_spawn("train_C", "OMP_NUM_THREADS=2", 0,
                           "train %s --output %s --no-mlflow --debug-sleep-ms 100", train_args, out);
    int seen = ch_wait_until(&r, ch_fmt("%s/checkpoint-4", out), NULL);
    if (r.pid > 0) {   // (also when the wait timed out: never leave a child behind)
        kill(r.pid, SIGKILL);
        ch_wait(&r);
        tu_check(seen && r.rc == 128 + SIGKILL, "cli_sigkill_mid_run", "checkpoint seen %d, rc %d", seen,
                 r.rc);
    } else tu_check(0, "cli_sigkill_mid_run", "the run ended before it could be killed");
    // a temp folder of a checkpoint being written when the kill came is cleaned up
    const char *stale = ch_fmt("%s/.tmp-checkpoint-99", out);
    char st[700];
    snprintf(st, sizeof st, "%s", stale);
    mkdir(st, 0777);
    FILE *f = fopen(ch_fmt("%s/optimizer.bin.tmp", st), "w");
    if (f) fclose(f);
    r = ch_run("train_C_resume", "OMP_NUM_THREADS=2", "train --output %s --resume", out);
    tu_check(r.rc == 0 && ch_file_has(r.err, "resuming from") && !cli_is_dir(st) &&
                 ch_same_file(ref_adapter, ch_fmt("%s/adapter_model.safetensors", out)),
             "cli_resume_after_sigkill_bit_identical", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    // a changed setting that defines the steps is refused
    r = ch_run("train_C_bad", NULL, "train --output %s --resume --lr 0.5", out);
    tu_check(r.rc != 0 && ch_file_has(r.err, "resume: --lr"), "cli_resume_refuses_changed_config",
             "rc %d: %s", r.rc, ch_line(r.err, "error"));
    r = ch_run("train_C_bad_compute", NULL, "train --output %s --resume --compute fp32", out);
    tu_check(r.rc != 0 && ch_file_has(r.err, "resume: --compute"), "cli_resume_refuses_changed_compute",
             "rc %d: %s", r.rc, ch_line(r.err, "error"));
    r = ch_run("train_C_again", NULL, "train %s --output %s --no-mlflow", train_args, out);
    tu_check(r.rc != 0 && ch_file_has(r.err, "already holds checkpoints"),
             "cli_existing_checkpoints_need_resume", "rc %d: %s", r.rc, ch_line(r.err, "error"));
}

static void test_sigint(void) {
    // Ctrl-C from outside, between checkpoints (save every 5): the trainer writes one itself
    const char *out = ch_fmt("%s/D", ch_root), *ml = ch_fmt("%s/mlruns_D", ch_root);
    ch_result r = ch_spawn("train_D", "OMP_NUM_THREADS=2", 0,
                           "train %s --output %s --mlruns %s --debug-sleep-ms 100 --save-steps 5", train_args,
                           out, ml);
    int seen = ch_wait_until(&r, r.err, "step 3/8");
    if (r.pid > 0) kill(r.pid, seen ? SIGINT : SIGKILL);
    ch_wait(&r);
    int64_t *steps = NULL, n = cli_list_checkpoints(out, &steps);
    const char *run_dir = find_run(ml, "qlora");
    tu_check(seen && r.rc == 130 && n >= 1 && steps[0] >= 3 && run_dir[0] &&
                 ch_file_has(ch_fmt("%s/meta.yaml", run_dir), "status: 5") &&
                 ch_file_has(r.err, "interrupted"),
             "cli_sigint_checkpoints_and_kills_run", "seen %d rc %d, %lld checkpoints (first %lld), run '%s'",
             seen, r.rc, (long long)n, n ? (long long)steps[0] : -1LL, run_dir);
    char ck[700];   // resume from an explicit checkpoint folder this time
    snprintf(ck, sizeof ck, "%s/checkpoint-%lld", out, n ? (long long)steps[0] : 0LL);
    free(steps);
    r = ch_run("train_D_resume", "OMP_NUM_THREADS=2", "train --resume %s --mlruns %s", ck, ml);
    tu_check(r.rc == 0 && ch_same_file(ref_adapter, ch_fmt("%s/adapter_model.safetensors", out)),
             "cli_resume_after_sigint_bit_identical", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    // Ctrl-C in the middle of a gradient accumulation (after micro-batch 1 of 2 of step 4): the
    // partial step is dropped and checkpoint-3 holds the RNG state from before it
    out = ch_fmt("%s/D2", ch_root);
    r = ch_run("train_D2", "OMP_NUM_THREADS=2",
               "train %s --output %s --no-mlflow --save-steps 5 --debug-sigint-at-step 4", train_args, out);
    tu_check(r.rc == 130 && cli_is_dir(ch_fmt("%s/checkpoint-3", out)) &&
                 !cli_is_dir(ch_fmt("%s/checkpoint-4", out)),
             "cli_sigint_mid_accumulation", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    r = ch_run("train_D2_resume", "OMP_NUM_THREADS=2", "train --output %s --resume --debug-sigint-at-step 0",
               out);
    tu_check(r.rc == 0 && ch_same_file(ref_adapter, ch_fmt("%s/adapter_model.safetensors", out)),
             "cli_resume_after_partial_step_bit_identical", "rc %d: %s", r.rc, ch_line(r.err, "error"));
}

static void test_nan(void) {
    const char *out = ch_fmt("%s/E", ch_root), *ml = ch_fmt("%s/mlruns_E", ch_root);
    ch_result r = ch_run("train_E", NULL, "train %s --output %s --mlruns %s --debug-nan-at-step 5",
                         train_args, out, ml);
    const char *run_dir = find_run(ml, "qlora");
    tu_check(r.rc == 1 && ch_file_has(r.err, "NaN") && ch_file_has(r.err, "checkpoint-4") &&
                 cli_is_dir(ch_fmt("%s/checkpoint-4", out)) && !cli_is_dir(ch_fmt("%s/checkpoint-6", out)) &&
                 !cli_is_file(ch_fmt("%s/adapter_model.safetensors", out)) && run_dir[0] &&
                 ch_file_has(ch_fmt("%s/meta.yaml", run_dir), "status: 4"),
             "cli_nan_stops_keeps_checkpoint", "rc %d: %s", r.rc, ch_line(r.err, "error"));
}

static void test_full_disk(void) {
    const char *out = ch_fmt("%s/F", ch_root);
    ch_result r = ch_run("train_F", NULL, "train %s --output %s --no-mlflow --max-steps 2", train_args, out);
    const char *ck = ch_fmt("%s/checkpoint-2/adapter_model.safetensors", out);
    size_t n0 = 0;
    char *before = ch_slurp(ck, &n0);
    if (!tu_check(r.rc == 0 && before, "cli_full_disk_setup", "rc %d: %s", r.rc, ch_line(r.err, "error"))) {
        free(before);
        return;
    }
    // files may not grow beyond 12 KB: the next checkpoint's adapter (16 KB) cannot be written
    r = ch_spawn("train_F_full", NULL, 12 * 1024, "train --output %s --resume --max-steps 4", out);
    ch_wait(&r);
    size_t n1 = 0;
    char *after = ch_slurp(ck, &n1);
    tu_check(r.rc == 1 && !cli_is_dir(ch_fmt("%s/checkpoint-4", out)) &&
                 !cli_is_dir(ch_fmt("%s/.tmp-checkpoint-4", out)) && after && n0 == n1 &&
                 !memcmp(before, after, n0) && cli_is_file(ch_fmt("%s/checkpoint-2/optimizer.bin", out)) &&
                 ch_file_has(r.err, "previous checkpoint is intact"),
             "cli_full_disk_keeps_old_checkpoint", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    free(before);
    free(after);
}

static void test_bad_inputs(void) {
    const char *bad = ch_fmt("%s/bad.jsonl", ch_root);
    FILE *f = fopen(bad, "w");
    fprintf(
        f,
        "{\"prompt\": \"the cat\", \"completion\": \" sat\"}\n{\"text\": \"an ant\"}\n{\"prompt\": \"oops\"\n"
        "{\"prompt\": \"then\", \"completion\": \" ran\"}\n[1, 2]\n");
    fclose(f);
    const char *common = ch_fmt(
        "--model %s --max-steps 1 --batch-size 1 --grad-accum 1 --rank 2 --no-mlflow --save-steps 0", q4);
    ch_result r = ch_run("bad_line", NULL, "train %s --data %s --output %s/bad1", common, bad, ch_root);
    tu_check(r.rc == 1 && ch_file_has(r.err, "bad.jsonl:3:") && ch_file_has(r.err, "--skip-bad-lines"),
             "cli_bad_line_reports_line", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    r = ch_run("bad_skip", NULL, "train %s --data %s --output %s/bad2 --skip-bad-lines", common, bad,
               ch_root);
    tu_check(r.rc == 0 && ch_file_has(r.err, "skipped 2 malformed lines"), "cli_bad_line_skipped",
             "rc %d: %s", r.rc, ch_line(r.err, "error"));
    const char *empty = ch_fmt("%s/empty.jsonl", ch_root);
    f = fopen(empty, "w");
    fprintf(f, "\n  \n");
    fclose(f);
    r = ch_run("empty", NULL, "train %s --data %s --output %s/bad3", common, empty, ch_root);
    tu_check(r.rc == 1 && ch_file_has(r.err, "no training examples"), "cli_empty_dataset", "rc %d: %s", r.rc,
             ch_line(r.err, "error"));
    r = ch_run("no_trunc", NULL, "train %s --data %s --output %s/bad4 --max-len 48 --no-truncate", common,
               data, ch_root);
    tu_check(r.rc == 1 && ch_file_has(r.err, "train.jsonl:") && ch_file_has(r.err, "--no-truncate"),
             "cli_no_truncate_error", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    // an adapter of another model (intermediate size 48) does not fit
    ch_model_cfg other = tc;
    other.H = 48;
    const char *odir = ch_fmt("%s/other", ch_root);
    char od[700];
    snprintf(od, sizeof od, "%s", odir);
    if (!ch_write_dense_model(od, other, 77)) {
        tu_check(0, "cli_adapter_shape_mismatch", "fixture");
        return;
    }
    r = ch_run("other_train", NULL,
               "train --model %s --data %s --max-steps 1 --batch-size 1 --grad-accum 1 --rank 2 "
               "--no-mlflow --save-steps 0 --max-len 48 --output %s/other_out",
               od, data, ch_root);
    ch_result r2 = ch_run("shape", NULL,
                          "generate --model %s --adapter %s/other_out --prompt 'the cat' --max-new 2", q4,
                          ch_root);
    tu_check(r.rc == 0 && r2.rc == 1 && ch_file_has(r2.err, "shape") && ch_file_has(r2.err, "mlp.gate_proj"),
             "cli_adapter_shape_mismatch", "rc %d/%d: %s", r.rc, r2.rc, ch_line(r2.err, "error"));
}

static void test_inference(void) {
    const char *A = ch_fmt("%s/A", ch_root);
    char a[700];
    snprintf(a, sizeof a, "%s", A);
    char gen[1600];
    snprintf(gen, sizeof gen, "generate --model %s --adapter %s --prompt 'the cat =' --max-new 6", q4, a);
    ch_result r = ch_run("gen1", NULL, "%s", gen);
    char *g1 = ch_slurp(r.out, NULL);
    ch_result r2 = ch_run("gen2", NULL, "%s", gen);
    char *g2 = ch_slurp(r2.out, NULL);
    tu_check(r.rc == 0 && r2.rc == 0 && g1 && g2 && !strcmp(g1, g2) && strlen(g1) > 0,
             "cli_generate_greedy_repeatable", "rc %d/%d: %s", r.rc, r2.rc, ch_line(r2.err, "error"));
    free(g1);
    free(g2);
    // --compute bf16 (the arithmetic is tested in test_kernels / test_llama); a value it lacks is an error
    r = ch_run("gen_bf16", NULL, "%s --compute bf16", gen);
    r2 = ch_run("gen_fp16", NULL, "%s --compute fp16", gen);
    tu_check(r.rc == 0 && count_lines(r.out) > 0 && r2.rc != 0 && ch_file_has(r2.err, "compute"),
             "cli_generate_compute_option", "rc %d/%d: %s", r.rc, r2.rc, ch_line(r2.err, "error"));
    r = ch_run("score", NULL,
               "score --model %s --adapter %s --prompt 'the cat =' --candidates ' cat the| mat on'", q4, a);
    tu_check(r.rc == 0 && ch_file_has(r.out, "logprob") && ch_file_has(r.out, "mat on"),
             "cli_score_candidates", "rc %d: %s", r.rc, ch_line(r.err, "error"));
    r = ch_run("score_data", NULL, "score --model %s --adapter %s --data %s", q4, a, evalf);
    tu_check(r.rc == 0 && count_lines(r.out) >= 5, "cli_score_data", "rc %d: %s", r.rc,
             ch_line(r.err, "error"));
    // eval with the adapter, in the arithmetic the trainer used (train's default bf16; eval's default is fp32)
    // = the trainer's final eval_loss on the same file
    r = ch_run("eval_A", NULL, "eval --model %s --adapter %s --data %s --batch-size 2 --max-len 48 --compute bf16", q4,
               a, evalf);
    double got = NAN, want = NAN;
    char *s = ch_slurp(r.out, NULL);
    if (s) sscanf(s, "eval_loss %lf", &got);
    free(s);
    qlora_json_doc doc;
    qlora_error err;
    if (qlora_json_read_file(&doc, ch_fmt("%s/trainer_state.json", a), &err) == QLORA_OK) {
        const qlora_json *h = qlora_json_get(&doc.root, "log_history");
        for (int64_t i = 0; h && i < h->count; i++)
            if (qlora_json_get(qlora_json_at(h, i), "eval_loss"))
                want = qlora_json_get_number(qlora_json_at(h, i), "eval_loss", NAN);
        qlora_json_free(&doc);
    }
    tu_check(r.rc == 0 && fabs(got - want) < 1e-5, "cli_eval_matches_training_eval",
             "eval %.7f vs trainer %.7f (rc %d)", got, want, r.rc);
    // backends: vulkan falls back or runs; vulkan=required runs or fails clearly. (Under ASan these
    // children run without leak detection: Mesa's ICD leaks a one-time allocation, see test_vulkan.c.)
    r = ch_run("vk", "ASAN_OPTIONS=detect_leaks=0",
               "generate --model %s --prompt 'the' --max-new 2 --backend vulkan", q4);
    tu_check(r.rc == 0 && ch_file_has(r.err, "backend vulkan"), "cli_backend_vulkan_or_fallback", "rc %d: %s",
             r.rc, ch_line(r.err, "error"));
    r = ch_run("vk_req", "ASAN_OPTIONS=detect_leaks=0",
               "generate --model %s --prompt 'the' --max-new 2 --backend vulkan=required", q4);
    tu_check(r.rc == 0 || (r.rc == 1 && ch_file_has(r.err, "vulkan=required")), "cli_backend_vulkan_required",
             "rc %d: %s", r.rc, ch_line(r.err, "error"));
    r = ch_run("vk_bad", NULL, "generate --model %s --prompt 'the' --backend cuda", q4);
    tu_check(r.rc == 2 && ch_file_has(r.err, "cpu|vulkan|vulkan=required"), "cli_backend_bad_name", "rc %d",
             r.rc);
}

static void test_merge(void) {
    const char *A = ch_fmt("%s/A", ch_root);
    char a[700], out[700];
    snprintf(a, sizeof a, "%s", A);
    snprintf(out, sizeof out, "%s/merged32", ch_root);
    ch_result r =
        ch_run("merge32", NULL, "merge --model %s --adapter %s --output %s --dtype fp32", q4, a, out);
    if (!tu_check(r.rc == 0 && !ch_file_has(ch_fmt("%s/config.json", out), "quantization_config") &&
                      ch_file_has(ch_fmt("%s/config.json", out), "\"torch_dtype\": \"float32\""),
                  "cli_merge_fp32", "rc %d: %s", r.rc, ch_line(r.err, "error")))
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
    for (int t = 0; t < T; t++) tok[t] = 1 + (t * 37) % (CH_VOCAB - 1);
    qlora_train_state ts;
    double *ref = (double *)malloc(sizeof(double) * T * CH_VOCAB);
    float *refd = (float *)malloc(sizeof(float) * T * CH_VOCAB);
    int ok = qlora_train_state_init(&ts, &m, 1, T, 0, &err) == QLORA_OK &&
             qlora_model_forward_eval(&m, &ts, tok, NULL, NULL, NULL, &err) == QLORA_OK;
    int dense_ok = ok && dense_forward(out, tc, tok, T, ref);
    if (dense_ok) {
        for (int i = 0; i < T * CH_VOCAB; i++) refd[i] = (float)ref[i];
        tu_close("cli_merge_logits_equal_base_plus_adapter", ts.logits, refd, T * CH_VOCAB, 2e-4, 2e-4);
        // and the adapter does change them: the merge is not just the base
        double diff = 0;
        qlora_model base;
        qlora_train_state bs;
        if (qlora_model_load(&base, q4, NULL, &err) == QLORA_OK &&
            qlora_train_state_init(&bs, &base, 1, T, 0, &err) == QLORA_OK &&
            qlora_model_forward_eval(&base, &bs, tok, NULL, NULL, NULL, &err) == QLORA_OK) {
            for (int i = 0; i < T * CH_VOCAB; i++) diff = fmax(diff, fabs((double)bs.logits[i] - ref[i]));
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
        snprintf(o2, sizeof o2, "%s/merged%s", ch_root, k ? "bf16" : "fp16");
        r = ch_run("merge16", NULL, "merge --model %s --adapter %s --output %s --dtype %s", q4, a, o2,
                   k ? "bf16" : "fp16");
        qlora_safetensors s32, s16;
        int good = r.rc == 0 &&
                   qlora_safetensors_open(&s32, ch_fmt("%s/model.safetensors", out), &err) == QLORA_OK &&
                   qlora_safetensors_open(&s16, ch_fmt("%s/model.safetensors", o2), &err) == QLORA_OK;
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
                     ch_file_has(ch_fmt("%s/config.json", o2), k ? "bfloat16" : "float16"),
                 k ? "cli_merge_bf16" : "cli_merge_fp16", "rc %d, %lld of %lld tensors differ: %s", r.rc,
                 (long long)bad, (long long)checked, ch_line(r.err, "error"));
    }
}

// In-process checks of the data pipeline: labels, truncation, and the length-grouped order.
static void test_data_pipeline(void) {
    qlora_tokenizer tok;
    qlora_error err;
    if (!tu_check(qlora_tokenizer_load(&tok, ch_fmt("%s/tokenizer.json", dense), &err) == QLORA_OK,
                  "cli_data_tokenizer", "%s", err.detail))
        return;
    const char *path = ch_fmt("%s/labels.jsonl", ch_root);
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
    ch_init(argv[0], "cli");
    snprintf(dense, sizeof dense, "%s/dense", ch_root);
    snprintf(q4, sizeof q4, "%s/q4", ch_root);
    snprintf(data, sizeof data, "%s/train.jsonl", ch_root);
    snprintf(evalf, sizeof evalf, "%s/eval.jsonl", ch_root);
    snprintf(mlruns, sizeof mlruns, "%s/mlruns", ch_root);
    if (!tu_check(ch_write_dense_model(dense, tc, 1234) && ch_write_data(data, 24, 1, 5) &&
                      ch_write_data(evalf, 8, 0, 6),
                  "cli_fixtures", "cannot write fixtures under %s", ch_root))
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
    test_progress_tty();
    test_compute();
    test_kill_resume();
    test_sigint();
    test_nan();
    test_full_disk();
    test_bad_inputs();
    test_inference();
    test_merge();
    int rc = tu_finish();
    if (rc == 0 && !getenv("QLORA_TEST_KEEP")) cli_rm_rf(ch_root);
    return rc;
}
