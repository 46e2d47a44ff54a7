// qlora_commands.h - the commands of the `qlora` program (demo/qlora.c): info, quantize, train,
// generate, score, eval, merge, and qlora_cli_main, which dispatches them.
//
// This is the program's implementation, not a library header: include it once, as the first
// include of the one translation unit that builds the program (demo/qlora.c, or test/test_cli.c,
// which runs the commands in child processes). It defines QLORA_IMPLEMENTATION and, when the
// Vulkan headers are installed, QLORA_VULKAN_IMPLEMENTATION.
#ifndef QLORA_COMMANDS_H
#define QLORA_COMMANDS_H

#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700   // POSIX 2008 + XSI: sigaction, fsync, clock_gettime, nanosleep, readlink
#endif
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#if defined(__has_include)
#if __has_include(<vulkan/vulkan.h>) && __has_include("qlora_vulkan.h")
#define CLI_HAVE_VULKAN 1
#endif
#endif
#ifdef CLI_HAVE_VULKAN
#define QLORA_VULKAN_IMPLEMENTATION
#include "qlora_vulkan.h"
#endif

#include "qlora_cli.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#define CLI_VERSION "0.1"

// ---------------------------------------------------------------------------------------------
// signals: Ctrl-C (SIGINT) and SIGTERM ask the trainer to checkpoint and stop; a second one kills.

static volatile sig_atomic_t cli_interrupted;

static void cli_on_signal(int sig) {
    if (cli_interrupted) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    cli_interrupted = sig;
}

static void cli_install_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = cli_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

// ---------------------------------------------------------------------------------------------
// execution backend

typedef struct cli_backend {
    qlora_exec exec;
    char       name[400];
#ifdef CLI_HAVE_VULKAN
    qlora_vk  *vk;
#endif
} cli_backend;

static void cli_threads(const cli_cfg *c) {
    int64_t n = cfg_int(c, "threads");
#ifdef _OPENMP
    if (n > 0) omp_set_num_threads((int)n);
#else
    if (n > 1) cli_note("--threads %lld: this build has no OpenMP; running on one thread", (long long)n);
#endif
}

static int cli_backend_open(cli_backend *be, const cli_cfg *c) {
    memset(be, 0, sizeof *be);
    const char *k = cfg_str(c, "kernel"), *b = cfg_str(c, "backend");
    be->exec.kernel = !strcmp(k, "ref") ? QLORA_KERNEL_REF : !strcmp(k, "simd") ? QLORA_KERNEL_SIMD
                      : !strcmp(k, "blas") ? QLORA_KERNEL_BLAS : QLORA_KERNEL_AUTO;
    be->exec.backend = NULL;
    be->exec.compute = !strcmp(cfg_str(c, "compute"), "bf16") ? QLORA_COMPUTE_BF16 : QLORA_COMPUTE_F32;
    qlora_cpu_info ci = qlora_cpu_info_get();
    snprintf(be->name, sizeof be->name, "cpu (%s, %d thread%s, blas %s%s)", ci.simd, ci.omp_threads,
             ci.omp_threads == 1 ? "" : "s", ci.blas_compiled ? ci.blas_core : "off",
             be->exec.compute == QLORA_COMPUTE_BF16 ? (ci.bf16_dot ? ", compute bf16" : ", compute bf16 (emulated)") : "");
    if (!strcmp(b, "cpu")) return 1;
    int required = !strcmp(b, "vulkan=required");
#ifdef CLI_HAVE_VULKAN
    qlora_vk_options vo;
    qlora_error err;
    memset(&vo, 0, sizeof vo);
    memset(&err, 0, sizeof err);
    const char *dev = cfg_str(c, "vulkan_device");
    if (*dev) {
        vo.device = dev;
        vo.allow_cpu = 1;
    }
    qlora_status st = qlora_vk_init(&be->vk, &vo, &err);
    if (st == QLORA_OK) {
        be->exec.backend = qlora_vk_backend(be->vk);
        snprintf(be->name, sizeof be->name, "vulkan: %s", qlora_vk_name(be->vk));
        cli_note("backend %s", be->name);
        if (be->exec.compute == QLORA_COMPUTE_BF16)
            cli_note("compute bf16: the Vulkan backend runs the NF4 matmuls in fp32; bf16 applies to the CPU's "
                     "share (lm_head); --compute fp32 makes it all fp32");
        return 1;
    }
    if (required) {
        cli_error("--backend vulkan=required: no usable Vulkan device: %s", err.detail);
        return 0;
    }
    cli_note("backend vulkan: no usable device (%s); running on the CPU", err.detail);
#else
    if (required) {
        cli_error("--backend vulkan=required: this build has no Vulkan support (install the Vulkan headers, "
                  "Debian libvulkan-dev, and rebuild)");
        return 0;
    }
    cli_note("backend vulkan: this build has no Vulkan support; running on the CPU");
#endif
    return 1;
}

// Releases the device copies of the model's weights, then the device.
static void cli_backend_close(cli_backend *be, qlora_model *m) {
#ifdef CLI_HAVE_VULKAN
    if (be->vk) {
        qlora_vk_stats vs = qlora_vk_get_stats(be->vk);
        cli_note("backend vulkan: %lld forward and %lld backward NF4 matmuls ran on the device (%.3g GFLOP, "
                 "%lld weights uploaded)",
                 (long long)vs.forward, (long long)vs.backward, vs.flops / 1e9, (long long)vs.uploads);
        // With QLORA_VK_VALIDATION=1 the layer's findings are counted; say so (tests fail on this line).
        int64_t nv = qlora_vk_validation_messages(be->vk);
        if (nv > 0)
            cli_note("backend vulkan: %lld validation messages; the last: %.400s", (long long)nv,
                     qlora_vk_validation_last(be->vk));
        for (int l = 0; m && m->layers && l < m->cfg.n_layers; l++)
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) qlora_vk_release(be->vk, &m->layers[l].w[t]);
        qlora_vk_free(be->vk);
        be->vk = NULL;
    }
#else
    (void)m;
#endif
    be->exec.backend = NULL;
}

// ---------------------------------------------------------------------------------------------
// model, tokenizer, adapters

static int cli_parse_targets(const char *s, uint32_t *mask) {
    *mask = 0;
    if (!strcmp(s, "all") || !strcmp(s, "all-linear")) {
        *mask = QLORA_TARGETS_ALL;
        return 1;
    }
    while (*s) {
        const char *e = strchr(s, ',');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        int found = -1;
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const char *nm = qlora_target_name((qlora_target)t);
            if (strlen(nm) == n && !strncmp(nm, s, n)) found = t;
        }
        if (found < 0) {
            cli_error("--targets: '%.*s' is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, "
                      "up_proj, down_proj", (int)n, s);
            return 0;
        }
        *mask |= 1u << found;
        s = e ? e + 1 : s + n;
    }
    if (!*mask) {
        cli_error("--targets: empty list");
        return 0;
    }
    return 1;
}

static void cli_targets_text(char *buf, size_t cap, uint32_t mask) {
    buf[0] = 0;
    for (int t = 0; t < QLORA_TARGET_COUNT; t++)
        if ((mask >> t) & 1u) {
            if (buf[0]) strncat(buf, ",", cap - strlen(buf) - 1);
            strncat(buf, qlora_target_name((qlora_target)t), cap - strlen(buf) - 1);
        }
}

static int cli_load_tokenizer(qlora_tokenizer *tok, const cli_cfg *c) {
    const char *given = cfg_str(c, "tokenizer"), *model = cfg_str(c, "model");
    char *path;
    if (*given) path = cli_strdup(given);
    else {
        path = cli_fmt("%s/tokenizer.model", model);
        if (!cli_is_file(path)) {
            free(path);
            path = cli_fmt("%s/tokenizer.json", model);
        }
        if (!cli_is_file(path)) {
            cli_error("no tokenizer.model or tokenizer.json in %s (name one with --tokenizer FILE)", model);
            free(path);
            return 0;
        }
    }
    qlora_error err;
    memset(&err, 0, sizeof err);
    qlora_status st = qlora_tokenizer_load(tok, path, &err);
    if (st != QLORA_OK) cli_error("tokenizer: %s", err.detail);
    free(path);
    return st == QLORA_OK;
}

// Loads the model with NF4 options from the configuration; lc == NULL: no adapters of its own.
static int cli_load_model(qlora_model *m, const cli_cfg *c, const qlora_lora_config *lc, uint32_t targets,
                          uint64_t seed, const cli_backend *be) {
    qlora_model_options mo;
    qlora_error err;
    memset(&mo, 0, sizeof mo);
    memset(&err, 0, sizeof err);
    mo.blocksize = (int32_t)cfg_int(c, "blocksize");
    mo.no_double_quant = !cfg_bool(c, "double_quant");
    if (lc) mo.lora = *lc;
    mo.lora_targets = targets;
    mo.lora_seed = seed;
    if (be) mo.exec = be->exec;
    const char *dir = cfg_str(c, "model");
    if (!*dir) {
        cli_error("--model DIR is required");
        return 0;
    }
    double t0 = cli_now();
    qlora_status st = qlora_model_load(m, dir, &mo, &err);
    if (st != QLORA_OK) {
        cli_error("model: %s", err.detail);
        return 0;
    }
    cli_note("loaded %s: %d layers, hidden %d, vocab %d, %.1f MB of weights (%.1f s)", dir,
             (int)m->cfg.n_layers, (int)m->cfg.hidden_size, (int)m->cfg.vocab_size,
             (double)qlora_model_weight_bytes(m) / 1e6, cli_now() - t0);
    return 1;
}

static int cli_load_adapter(qlora_model *m, const char *dir) {
    qlora_error err;
    memset(&err, 0, sizeof err);
    if (qlora_model_load_adapter(m, dir, &err) != QLORA_OK) {
        cli_error("adapter: %s", err.detail);
        return 0;
    }
    char tg[128];
    cli_targets_text(tg, sizeof tg, m->lora_targets);
    cli_note("adapter %s: r %d, alpha %g, targets %s, %lld parameters", dir, (int)m->lora_cfg.rank,
             (double)m->lora_cfg.alpha, tg, (long long)qlora_model_lora_params(m));
    return 1;
}

// Every token id of the data must exist in the model's embedding.
static int cli_check_vocab(const cli_dataset *d, const char *path, int32_t V) {
    for (int64_t i = 0; i < d->n; i++)
        for (int32_t t = 0; t < d->ex[i].n; t++)
            if (d->ex[i].ids[t] < 0 || d->ex[i].ids[t] >= V) {
                cli_error("%s:%lld: token id %d is outside the model's vocabulary of %d (does the tokenizer "
                          "belong to this model?)",
                          path, (long long)d->ex[i].line, (int)d->ex[i].ids[t], (int)V);
                return 0;
            }
    return 1;
}

// Shapes (out, in) of target t.
static void cli_target_shape(const qlora_llama_config *c, int t, int64_t *out, int64_t *in) {
    int64_t C = c->hidden_size, H = c->intermediate_size, QD = (int64_t)c->n_heads * c->head_dim,
            KD = (int64_t)c->n_kv_heads * c->head_dim;
    switch (t) {
    case QLORA_TARGET_Q: *out = QD; *in = C; break;
    case QLORA_TARGET_K:
    case QLORA_TARGET_V: *out = KD; *in = C; break;
    case QLORA_TARGET_O: *out = C; *in = QD; break;
    case QLORA_TARGET_DOWN: *out = C; *in = H; break;
    default: *out = H; *in = C; break;
    }
}

// A cached train state for (B, T): made again only when the shape changes.
typedef struct cli_state {
    qlora_train_state ts;
    int64_t           B, T;
    int               ckpt, ok;
} cli_state;

static int cli_state_get(cli_state *s, qlora_model *m, int64_t B, int64_t T, int ckpt) {
    if (s->ok && s->B == B && s->T == T && s->ckpt == ckpt) return 1;
    if (s->ok) qlora_train_state_free(&s->ts);
    s->ok = 0;
    qlora_error err;
    memset(&err, 0, sizeof err);
    if (qlora_train_state_init(&s->ts, m, B, T, ckpt, &err) != QLORA_OK) {
        cli_error("train state (batch %lld, %lld tokens): %s", (long long)B, (long long)T, err.detail);
        return 0;
    }
    s->B = B;
    s->T = T;
    s->ckpt = ckpt;
    s->ok = 1;
    return 1;
}

static void cli_state_free(cli_state *s) {
    if (s->ok) qlora_train_state_free(&s->ts);
    memset(s, 0, sizeof *s);
}

// Token-weighted mean loss of a dataset without dropout: Σ token losses / Σ counted tokens.
static int cli_evaluate(qlora_model *m, cli_state *st, const cli_dataset *d, int64_t B, int64_t cap,
                        double *loss_sum, int64_t *count) {
    int64_t n = d->n;
    int64_t *idx = (int64_t *)cli_alloc(sizeof(int64_t) * (size_t)(n ? n : 1));
    for (int64_t i = 0; i < n; i++) idx[i] = i;
    cli_sort_by_length(idx, n, d);   // longest first: batches of similar length pad little
    int32_t *tok = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(B * cap));
    int32_t *lab = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(B * cap));
    uint8_t *mask = (uint8_t *)cli_alloc((size_t)(B * cap));
    int ok = 1;
    *loss_sum = 0.0;
    *count = 0;
    for (int64_t s = 0; s < n && ok; s += B) {
        int64_t nb = n - s < B ? n - s : B;
        int64_t T = cli_batch_fill(tok, mask, lab, d, idx + s, nb, cap);
        qlora_error err;
        memset(&err, 0, sizeof err);
        ok = cli_state_get(st, m, nb, T, 1);
        if (ok && qlora_model_forward_eval(m, &st->ts, tok, mask, lab, NULL, &err) != QLORA_OK) {
            cli_error("evaluation forward: %s", err.detail);
            ok = 0;
        }
        if (ok) {
            *loss_sum += st->ts.loss_sum;
            *count += st->ts.n_counted;
        }
    }
    free(idx);
    free(tok);
    free(lab);
    free(mask);
    return ok;
}

// ---------------------------------------------------------------------------------------------
// qlora info

static int64_t cli_nf4_bytes(int64_t n, int32_t bs, int dq) {
    int64_t nb = (n + bs - 1) / bs;
    return (n + 1) / 2 + (dq ? nb + 4 * ((nb + 255) / 256) : 4 * nb);
}

static int cmd_info(cli_cfg *c) {
    qlora_llama_config cfg;
    qlora_error err;
    memset(&err, 0, sizeof err);
    const char *dir = cfg_str(c, "model");
    if (!*dir) {
        cli_error("--model DIR is required");
        return 1;
    }
    char *cpath = cli_fmt("%s/config.json", dir);
    qlora_status st = qlora_llama_config_read(&cfg, cpath, &err);
    free(cpath);
    if (st != QLORA_OK) {
        cli_error("%s", err.detail);
        return 1;
    }
    uint32_t targets;
    if (!cli_parse_targets(cfg_str(c, "targets"), &targets)) return 1;
    int32_t bs = (int32_t)cfg_int(c, "blocksize"), r = (int32_t)cfg_int(c, "rank");
    int dq = cfg_bool(c, "double_quant"), eight = strstr(cfg_str(c, "optim"), "8bit") != NULL;
    if (!qlora_nf4_blocksize_valid(bs) || r <= 0) {
        cli_error("--blocksize must be a power of two in 32..4096 and --rank positive");
        return 1;
    }
    int64_t V = cfg.vocab_size, C = cfg.hidden_size, L = cfg.n_layers;
    int64_t embed = V * C, head = cfg.tie_word_embeddings ? 0 : V * C, norms = (2 * L + 1) * C;
    int64_t proj_params = 0, proj_bytes = 0, lora_params = 0, optim_bytes = 0;
    int64_t per_t_params[QLORA_TARGET_COUNT], per_t_bytes[QLORA_TARGET_COUNT];
    for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
        int64_t out, in;
        cli_target_shape(&cfg, t, &out, &in);
        per_t_params[t] = L * out * in;
        per_t_bytes[t] = L * cli_nf4_bytes(out * in, bs, dq);
        proj_params += per_t_params[t];
        proj_bytes += per_t_bytes[t];
        if ((targets >> t) & 1u) {
            lora_params += L * (int64_t)r * (in + out);
            for (int ab = 0; ab < 2; ab++) {   // A (r, in), B (out, r): AdamW m and v per tensor
                int64_t n = (int64_t)r * (ab ? out : in);
                optim_bytes += L * ((eight && n >= 4096) ? 2 * n + 8 * ((n + 255) / 256) : 8 * n);
            }
        }
    }
    int64_t fp32_bytes = 4 * (embed + head + norms), lora_bytes = 4 * lora_params,
            grad_bytes = 4 * lora_params;
    // activations: the train state of (batch, max_len); it only needs the config and the adapter shape
    qlora_model dm;
    memset(&dm, 0, sizeof dm);
    dm.cfg = cfg;
    dm.lora_cfg.rank = r;
    dm.lora_cfg.alpha = (float)cfg_float(c, "alpha");
    dm.lora_cfg.dropout = (float)cfg_float(c, "dropout");
    dm.lora_targets = targets;
    dm.layers = (qlora_llama_layer *)&dm;   // qlora_train_state_bytes reads only cfg and the adapter shape
    int64_t B = cfg_int(c, "batch_size"), T = cfg_int(c, "max_len"), act = -1, act_nockpt = -1;
    if (T > cfg.max_position_embeddings) T = cfg.max_position_embeddings;
    int ckpt = cfg_bool(c, "gradient_checkpointing");
    if (qlora_train_state_bytes(&dm, B, T, ckpt, &act, &err) != QLORA_OK) act = -1;
    if (qlora_train_state_bytes(&dm, B, T, !ckpt, &act_nockpt, &err) != QLORA_OK) act_nockpt = -1;
    int64_t total = proj_bytes + fp32_bytes + lora_bytes + grad_bytes + optim_bytes + (act > 0 ? act : 0);
    if (cfg_bool(c, "json")) {
        qlora_json_writer w;
        qlora_jw_init(&w, 2, 0);
        qlora_jw_object_begin(&w);
        qlora_jw_key(&w, "config");
        qlora_jw_object_begin(&w);
        qlora_jw_key(&w, "hidden_size"); qlora_jw_int(&w, C);
        qlora_jw_key(&w, "intermediate_size"); qlora_jw_int(&w, cfg.intermediate_size);
        qlora_jw_key(&w, "num_hidden_layers"); qlora_jw_int(&w, L);
        qlora_jw_key(&w, "num_attention_heads"); qlora_jw_int(&w, cfg.n_heads);
        qlora_jw_key(&w, "num_key_value_heads"); qlora_jw_int(&w, cfg.n_kv_heads);
        qlora_jw_key(&w, "head_dim"); qlora_jw_int(&w, cfg.head_dim);
        qlora_jw_key(&w, "vocab_size"); qlora_jw_int(&w, V);
        qlora_jw_key(&w, "max_position_embeddings"); qlora_jw_int(&w, cfg.max_position_embeddings);
        qlora_jw_key(&w, "tie_word_embeddings"); qlora_jw_bool(&w, cfg.tie_word_embeddings);
        qlora_jw_object_end(&w);
        qlora_jw_key(&w, "params");
        qlora_jw_object_begin(&w);
        qlora_jw_key(&w, "total"); qlora_jw_int(&w, embed + head + norms + proj_params);
        qlora_jw_key(&w, "projections"); qlora_jw_int(&w, proj_params);
        qlora_jw_key(&w, "embedding"); qlora_jw_int(&w, embed);
        qlora_jw_key(&w, "lm_head"); qlora_jw_int(&w, head);
        qlora_jw_key(&w, "norms"); qlora_jw_int(&w, norms);
        qlora_jw_key(&w, "lora"); qlora_jw_int(&w, lora_params);
        qlora_jw_object_end(&w);
        qlora_jw_key(&w, "bytes");
        qlora_jw_object_begin(&w);
        qlora_jw_key(&w, "nf4_weights"); qlora_jw_int(&w, proj_bytes);
        qlora_jw_key(&w, "fp32_embeddings_norms_head"); qlora_jw_int(&w, fp32_bytes);
        qlora_jw_key(&w, "weights_total"); qlora_jw_int(&w, proj_bytes + fp32_bytes);
        qlora_jw_key(&w, "lora"); qlora_jw_int(&w, lora_bytes);
        qlora_jw_key(&w, "lora_grads"); qlora_jw_int(&w, grad_bytes);
        qlora_jw_key(&w, "optimizer_state"); qlora_jw_int(&w, optim_bytes);
        qlora_jw_key(&w, "activations"); qlora_jw_int(&w, act);
        qlora_jw_key(&w, "activations_other_checkpointing"); qlora_jw_int(&w, act_nockpt);
        qlora_jw_key(&w, "training_total"); qlora_jw_int(&w, total);
        qlora_jw_object_end(&w);
        qlora_jw_key(&w, "nf4_bits_per_param"); qlora_jw_double(&w, qlora_nf4_bits_per_param(bs, dq));
        qlora_jw_object_end(&w);
        if (qlora_jw_finish(&w, 1, &err) != QLORA_OK) {
            cli_error("%s", err.detail);
            qlora_jw_free(&w);
            return 1;
        }
        fputs(w.buf, stdout);
        qlora_jw_free(&w);
        return 0;
    }
    printf("model %s\n", dir);
    printf("  layers %lld, hidden %lld, intermediate %d, heads %d (kv %d, head dim %d), vocab %lld, "
           "context %d%s\n",
           (long long)L, (long long)C, (int)cfg.intermediate_size, (int)cfg.n_heads, (int)cfg.n_kv_heads,
           (int)cfg.head_dim, (long long)V, (int)cfg.max_position_embeddings,
           cfg.tie_word_embeddings ? ", tied embeddings" : "");
    printf("parameters %lld (%.3f B)\n", (long long)(embed + head + norms + proj_params),
           (double)(embed + head + norms + proj_params) / 1e9);
    printf("  %-28s %15s %14s\n", "part", "parameters", "bytes");
    for (int t = 0; t < QLORA_TARGET_COUNT; t++)
        printf("  %-28s %15lld %14lld  NF4\n", qlora_target_path((qlora_target)t), (long long)per_t_params[t],
               (long long)per_t_bytes[t]);
    printf("  %-28s %15lld %14lld  NF4, blocksize %d%s = %.3f bits/param\n", "projections (frozen)",
           (long long)proj_params, (long long)proj_bytes, (int)bs, dq ? " + double quant" : "",
           qlora_nf4_bits_per_param(bs, dq));
    printf("  %-28s %15lld %14lld  fp32\n", "embedding", (long long)embed, (long long)(4 * embed));
    printf("  %-28s %15lld %14lld  fp32%s\n", "lm_head", (long long)head, (long long)(4 * head),
           cfg.tie_word_embeddings ? " (tied)" : "");
    printf("  %-28s %15lld %14lld  fp32\n", "norms", (long long)norms, (long long)(4 * norms));
    char tg[128];
    cli_targets_text(tg, sizeof tg, targets);
    printf("LoRA r %d on %s: %lld trainable parameters (%.4f%% of the model)\n", (int)r, tg,
           (long long)lora_params,
           100.0 * (double)lora_params / (double)(embed + head + norms + proj_params));
    printf("  %-28s %15s %14lld  fp32\n", "LoRA weights", "", (long long)lora_bytes);
    printf("  %-28s %15s %14lld  fp32\n", "LoRA gradients", "", (long long)grad_bytes);
    printf("  %-28s %15s %14lld  %s\n", "optimizer state", "", (long long)optim_bytes, cfg_str(c, "optim"));
    printf("  %-28s %15s %14lld  batch %lld x %lld tokens, checkpointing %s (%lld without)\n", "activations",
           "", (long long)act, (long long)B, (long long)T, ckpt ? "on" : "off", (long long)act_nockpt);
    printf("training memory ~ %.1f MB (weights %.1f + LoRA/grads/optimizer %.1f + activations %.1f)\n",
           (double)total / 1e6, (double)(proj_bytes + fp32_bytes) / 1e6,
           (double)(lora_bytes + grad_bytes + optim_bytes) / 1e6, (double)(act > 0 ? act : 0) / 1e6);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// qlora quantize

static const char *const cli_side_files[] = { "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                                              "special_tokens_map.json", "generation_config.json" };

static int cli_copy_side_files(const char *from, const char *to) {
    for (size_t i = 0; i < sizeof cli_side_files / sizeof cli_side_files[0]; i++) {
        char *s = cli_fmt("%s/%s", from, cli_side_files[i]), *d = cli_fmt("%s/%s", to, cli_side_files[i]);
        int ok = !cli_is_file(s) || cli_copy_file(s, d);
        free(s);
        free(d);
        if (!ok) return 0;
    }
    return 1;
}

static int cmd_quantize(cli_cfg *c) {
    if (!cfg_given(c, "output")) {
        cli_error("--output DIR is required");
        return 1;
    }
    cli_threads(c);
    qlora_model m;
    if (!cli_load_model(&m, c, NULL, 0, 0, NULL)) return 1;
    const char *out = cfg_str(c, "output");
    qlora_error err;
    memset(&err, 0, sizeof err);
    int ok = cli_mkdirs(out);
    if (ok && qlora_model_save_bnb4(&m, out, &err) != QLORA_OK) {
        cli_error("quantize: %s", err.detail);
        ok = 0;
    }
    if (ok) ok = cli_copy_side_files(cfg_str(c, "model"), out);
    if (ok)
        cli_note("wrote %s: NF4 blocksize %d%s, %.1f MB of weights", out, (int)cfg_int(c, "blocksize"),
                 cfg_bool(c, "double_quant") ? " + double quant" : "",
                 (double)qlora_model_weight_bytes(&m) / 1e6);
    qlora_model_free(&m);
    return ok ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// qlora train

typedef struct trainer {
    cli_cfg             *cfg;
    const char          *out;
    const char          *model_dir;
    qlora_model          m;
    cli_backend          be;
    qlora_tokenizer      tok;
    int                  have_tok, have_model, have_opt;
    cli_dataset          train, eval;
    // adapters and optimizer
    int64_t              n_mods;
    qlora_adapter_module *mods;      // (n_mods)
    char                *mod_names;  // (n_mods, 96)
    qlora_param         *params;     // (2·n_mods) A, B of each module
    char                *param_names;
    qlora_adamw          opt;
    // shapes
    int64_t              B, GA, eval_B, cap;
    int                  ckpt;
    cli_state            st, est;
    int32_t             *tok_buf, *lab_buf;  // (B, cap)
    uint8_t             *mask_buf;           // (B, cap)
    int64_t             *order;              // (N) this epoch's order
    int64_t              order_epoch;
    // position: the next example is order[index] of epoch `epoch`; `step` updates are done
    int64_t              step, total_steps, steps_per_epoch, epoch, index;
    // history (this run and, after a resume, the runs before)
    int64_t              nh, hcap, ne, ecap;
    double              *h_step, *h_loss, *h_lr, *h_gn, *e_step, *e_loss;
    // MLflow
    qlora_mlflow_run     run;
    int                  have_run;
    char                 prev_run_id[40];
    // progress
    int                  tty;
    double               t_start, tokens_done;
    int64_t              steps_done_here, peak_rss;
    char                 last_ckpt[1024];   // the newest complete checkpoint
    char                 resume_dir[1024];  // the checkpoint this run continues, or ""
} trainer;

static void tr_hist_push(double **a, double **b, double **c2, double **d, int64_t *n, int64_t *cap, double va,
                         double vb, double vc, double vd) {
    if (*n == *cap) {
        int64_t nc = *cap ? 2 * *cap : 256;
        double **arrs[4];
        arrs[0] = a;
        arrs[1] = b;
        arrs[2] = c2;
        arrs[3] = d;
        for (int k = 0; k < 4; k++) {
            if (!arrs[k]) continue;
            double *na = (double *)cli_alloc(sizeof(double) * (size_t)nc);
            if (*n) memcpy(na, *arrs[k], sizeof(double) * (size_t)*n);
            free(*arrs[k]);
            *arrs[k] = na;
        }
        *cap = nc;
    }
    (*a)[*n] = va;
    (*b)[*n] = vb;
    if (c2) (*c2)[*n] = vc;
    if (d) (*d)[*n] = vd;
    (*n)++;
}

// The adapter modules and optimizer parameters of the model's current adapters.
static void tr_make_params(trainer *tr) {
    qlora_model *m = &tr->m;
    int64_t n = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) n += m->layers[l].lora[t].A != NULL;
    tr->n_mods = n;
    tr->mods = (qlora_adapter_module *)cli_calloc(sizeof(qlora_adapter_module) * (size_t)(n ? n : 1));
    tr->mod_names = (char *)cli_calloc((size_t)(n ? n : 1) * 96);
    tr->params = (qlora_param *)cli_calloc(sizeof(qlora_param) * (size_t)(2 * n + 1));
    tr->param_names = (char *)cli_calloc((size_t)(2 * n + 1) * 112);
    int64_t k = 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            qlora_lora *a = &m->layers[l].lora[t];
            if (!a->A) continue;
            char *nm = tr->mod_names + k * 96;
            snprintf(nm, 96, "model.layers.%d.%s", l, qlora_target_path((qlora_target)t));
            tr->mods[k].name = nm;
            tr->mods[k].lora = a;
            tr->mods[k].in = a->in;
            tr->mods[k].out = a->out;
            for (int ab = 0; ab < 2; ab++) {
                char *pn = tr->param_names + (2 * k + ab) * 112;
                snprintf(pn, 112, "%s.lora_%c.weight", nm, ab ? 'B' : 'A');
                qlora_param *p = &tr->params[2 * k + ab];
                p->name = pn;
                p->w = ab ? a->B : a->A;
                p->g = ab ? a->dB : a->dA;
                p->n = (int64_t)a->rank * (ab ? a->out : a->in);
            }
            k++;
        }
}

// RNG blob of the checkpoint: the dropout RNG of every (layer, target), 32 bytes each.
static int64_t tr_rng_bytes(const trainer *tr) {
    return (int64_t)tr->m.cfg.n_layers * QLORA_TARGET_COUNT * (int64_t)sizeof(qlora_rng);
}

static void tr_rng_get(const trainer *tr, qlora_rng *blob) {
    for (int l = 0; l < tr->m.cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++)
            blob[l * QLORA_TARGET_COUNT + t] = tr->m.layers[l].lora[t].rng;
}

static void tr_rng_set(trainer *tr, const qlora_rng *blob) {
    for (int l = 0; l < tr->m.cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++)
            tr->m.layers[l].lora[t].rng = blob[l * QLORA_TARGET_COUNT + t];
}

static void tr_write_state_json(const trainer *tr, qlora_json_writer *w) {
    qlora_jw_object_begin(w);
    qlora_jw_key(w, "global_step");
    qlora_jw_int(w, tr->step);
    qlora_jw_key(w, "max_steps");
    qlora_jw_int(w, tr->total_steps);
    qlora_jw_key(w, "epoch");
    qlora_jw_double(w, (double)tr->epoch + (tr->train.n ? (double)tr->index / (double)tr->train.n : 0.0));
    qlora_jw_key(w, "data_position");
    qlora_jw_object_begin(w);
    qlora_jw_key(w, "epoch");
    qlora_jw_int(w, tr->epoch);
    qlora_jw_key(w, "index");
    qlora_jw_int(w, tr->index);
    qlora_jw_key(w, "accumulation_step");
    qlora_jw_int(w, 0);
    qlora_jw_object_end(w);
    qlora_jw_key(w, "mlflow_run_id");
    qlora_jw_string(w, tr->have_run ? tr->run.run_id : NULL);
    qlora_jw_key(w, "log_history");
    qlora_jw_array_begin(w);
    // training entries in step order; an evaluation follows the training entry of its step
    for (int64_t i = 0, j = 0; i < tr->nh || j < tr->ne;) {
        qlora_jw_object_begin(w);
        if (i < tr->nh && (j == tr->ne || tr->h_step[i] <= tr->e_step[j])) {
            qlora_jw_key(w, "step");
            qlora_jw_int(w, (int64_t)tr->h_step[i]);
            qlora_jw_key(w, "loss");
            qlora_jw_double(w, tr->h_loss[i]);
            qlora_jw_key(w, "learning_rate");
            qlora_jw_double(w, tr->h_lr[i]);
            qlora_jw_key(w, "grad_norm");
            qlora_jw_double(w, tr->h_gn[i]);
            i++;
        } else {
            qlora_jw_key(w, "step");
            qlora_jw_int(w, (int64_t)tr->e_step[j]);
            qlora_jw_key(w, "eval_loss");
            qlora_jw_double(w, tr->e_loss[j]);
            j++;
        }
        qlora_jw_object_end(w);
    }
    qlora_jw_array_end(w);
    qlora_jw_object_end(w);
}

// Writes OUT/checkpoint-<step>: every file into a temp folder, then one rename. Keeps the last
// save_total_limit checkpoints. On failure the temp folder goes and older checkpoints stay.
static int tr_save_checkpoint(trainer *tr) {
    char *final_dir = cli_fmt("%s/checkpoint-%lld", tr->out, (long long)tr->step);
    if (cli_is_dir(final_dir)) {   // e.g. Ctrl-C right after a scheduled save
        snprintf(tr->last_ckpt, sizeof tr->last_ckpt, "%s", final_dir);
        free(final_dir);
        return 1;
    }
    char *tmp = cli_fmt("%s/.tmp-checkpoint-%lld", tr->out, (long long)tr->step);
    char *opt_path = cli_fmt("%s/optimizer.bin", tmp), *ts_path = cli_fmt("%s/trainer_state.json", tmp),
         *cfg_path = cli_fmt("%s/resolved_config.json", tmp);
    qlora_error err;
    memset(&err, 0, sizeof err);
    int ok = cli_rm_rf(tmp) && cli_mkdirs(tmp);
    if (ok && qlora_adapter_save(tmp, tr->mods, tr->n_mods, tr->model_dir, &err) != QLORA_OK) {
        cli_error("checkpoint %lld: adapter: %s", (long long)tr->step, err.detail);
        ok = 0;
    }
    if (ok) {
        qlora_rng *blob = (qlora_rng *)cli_alloc((size_t)tr_rng_bytes(tr));
        qlora_resume_info info;
        memset(&info, 0, sizeof info);
        tr_rng_get(tr, blob);
        info.rng = blob;
        info.rng_bytes = tr_rng_bytes(tr);
        info.data_pos[0] = tr->epoch;
        info.data_pos[1] = tr->index;
        info.data_pos[2] = 0;   // accumulation step: checkpoints fall between optimizer steps
        info.data_pos[3] = tr->step;
        if (qlora_adamw_save(&tr->opt, opt_path, &info, &err) != QLORA_OK) {
            cli_error("checkpoint %lld: optimizer: %s", (long long)tr->step, err.detail);
            ok = 0;
        }
        free(blob);
    }
    if (ok) {
        qlora_json_writer w;
        qlora_jw_init(&w, 2, 0);
        cli_cfg_write_json(tr->cfg, &w);
        ok = cli_write_json(cfg_path, &w);
        qlora_jw_free(&w);
    }
    if (ok) {   // trainer_state.json last: a checkpoint folder with it is complete
        qlora_json_writer w;
        qlora_jw_init(&w, 2, 0);
        tr_write_state_json(tr, &w);
        ok = cli_write_json(ts_path, &w);
        qlora_jw_free(&w);
    }
    if (ok) {
        cli_fsync_path(tmp);
        if (rename(tmp, final_dir) != 0) {
            cli_error("checkpoint %lld: rename %s → %s: %s", (long long)tr->step, tmp, final_dir,
                      strerror(errno));
            ok = 0;
        } else cli_fsync_path(tr->out);
    }
    if (!ok) {
        cli_rm_rf(tmp);
        cli_error("checkpoint %lld was not written; %s", (long long)tr->step,
                  tr->last_ckpt[0] ? "the previous checkpoint is intact" : "no earlier checkpoint exists");
        if (tr->last_ckpt[0]) cli_note("last good checkpoint: %s", tr->last_ckpt);
    } else {
        snprintf(tr->last_ckpt, sizeof tr->last_ckpt, "%s", final_dir);
        int64_t limit = cfg_int(tr->cfg, "save_total_limit");
        int64_t *steps = NULL, n = cli_list_checkpoints(tr->out, &steps);
        for (int64_t i = 0; limit > 0 && i + limit < n; i++) {
            // renamed first, so a kill during the removal leaves a temp folder, not a partial checkpoint
            char *old = cli_fmt("%s/checkpoint-%lld", tr->out, (long long)steps[i]);
            char *gone = cli_fmt("%s/.tmp-checkpoint-old-%lld", tr->out, (long long)steps[i]);
            if (rename(old, gone) != 0 || !cli_rm_rf(gone))
                cli_note("could not remove the old checkpoint %s", old);
            free(old);
            free(gone);
        }
        free(steps);
        cli_note("saved %s", final_dir);
    }
    free(final_dir);
    free(tmp);
    free(opt_path);
    free(ts_path);
    free(cfg_path);
    return ok;
}

// Restores the adapter, optimizer, RNG, data position and history of checkpoint dir.
static int tr_resume(trainer *tr, const char *dir) {
    qlora_error err;
    memset(&err, 0, sizeof err);
    qlora_lora_config want = tr->m.lora_cfg;
    uint32_t want_targets = tr->m.lora_targets;
    if (!cli_load_adapter(&tr->m, dir)) return 0;
    if (tr->m.lora_targets != want_targets || tr->m.lora_cfg.rank != want.rank ||
        tr->m.lora_cfg.alpha != want.alpha || tr->m.lora_cfg.dropout != want.dropout ||
        tr->m.lora_cfg.use_rslora != want.use_rslora) {
        cli_error("checkpoint %s holds an adapter with r %d, alpha %g, dropout %g; the configuration "
                  "asks for r %d, alpha %g, dropout %g (or other targets)",
                  dir, (int)tr->m.lora_cfg.rank, (double)tr->m.lora_cfg.alpha, (double)tr->m.lora_cfg.dropout,
                  (int)want.rank, (double)want.alpha, (double)want.dropout);
        return 0;
    }
    return 1;
}

static int tr_resume_optimizer(trainer *tr, const char *dir) {
    qlora_error err;
    memset(&err, 0, sizeof err);
    char *path = cli_fmt("%s/optimizer.bin", dir);
    qlora_rng *blob = (qlora_rng *)cli_alloc((size_t)tr_rng_bytes(tr));
    qlora_resume_info info;
    memset(&info, 0, sizeof info);
    info.rng = blob;
    info.rng_bytes = tr_rng_bytes(tr);
    int ok = qlora_adamw_load(&tr->opt, path, &info, &err) == QLORA_OK;
    if (!ok) cli_error("resume: %s", err.detail);
    if (ok) {
        tr_rng_set(tr, blob);
        tr->epoch = info.data_pos[0];
        tr->index = info.data_pos[1];
        tr->step = info.data_pos[3];
        if (tr->step != tr->opt.step || tr->index < 0 || tr->index > tr->train.n || tr->epoch < 0) {
            cli_error(
                "resume: %s is inconsistent (step %lld, optimizer step %lld, index %lld of %lld examples)",
                path, (long long)tr->step, (long long)tr->opt.step, (long long)tr->index,
                (long long)tr->train.n);
            ok = 0;
        }
    }
    free(path);
    free(blob);
    if (!ok) return 0;
    // history, for the loss curve and trainer_state.json
    char *ts = cli_fmt("%s/trainer_state.json", dir);
    qlora_json_doc doc;
    if (qlora_json_read_file(&doc, ts, &err) == QLORA_OK) {
        const qlora_json *h = qlora_json_get(&doc.root, "log_history");
        for (int64_t i = 0; h && i < h->count; i++) {
            const qlora_json *e = qlora_json_at(h, i);
            double s = qlora_json_get_number(e, "step", -1);
            if (qlora_json_get(e, "loss"))
                tr_hist_push(&tr->h_step, &tr->h_loss, &tr->h_lr, &tr->h_gn, &tr->nh, &tr->hcap, s,
                             qlora_json_get_number(e, "loss", NAN),
                             qlora_json_get_number(e, "learning_rate", NAN),
                             qlora_json_get_number(e, "grad_norm", NAN));
            else if (qlora_json_get(e, "eval_loss"))
                tr_hist_push(&tr->e_step, &tr->e_loss, NULL, NULL, &tr->ne, &tr->ecap, s,
                             qlora_json_get_number(e, "eval_loss", NAN), 0, 0);
        }
        const char *rid = qlora_json_get_string(&doc.root, "mlflow_run_id", "");
        snprintf(tr->prev_run_id, sizeof tr->prev_run_id, "%s", rid);
        qlora_json_free(&doc);
    } else cli_note("resume: %s (the loss history starts here)", err.detail);
    free(ts);
    return 1;
}

static void tr_metric(trainer *tr, const char *key, double v, int64_t step) {
    if (!tr->have_run) return;
    qlora_error err;
    if (qlora_mlflow_log_metric(&tr->run, key, v, step, 0, &err) != QLORA_OK) {
        cli_note("mlflow: %s (tracking stops)", err.detail);
        tr->have_run = 0;
    }
}

static void tr_param(trainer *tr, const char *key, const char *v) {
    if (!tr->have_run) return;
    qlora_error err;
    if (qlora_mlflow_log_param(&tr->run, key, v, &err) != QLORA_OK)
        cli_note("mlflow param %s: %s", key, err.detail);
}

static void tr_tag(trainer *tr, const char *key, const char *v) {
    if (!tr->have_run) return;
    qlora_error err;
    if (qlora_mlflow_set_tag(&tr->run, key, v, &err) != QLORA_OK)
        cli_note("mlflow tag %s: %s", key, err.detail);
}

static void tr_progress(trainer *tr, double loss, double lr, double gn, int force) {
    double el = cli_now() - tr->t_start;
    double per = tr->steps_done_here ? el / (double)tr->steps_done_here : 0.0;
    double eta = per * (double)(tr->total_steps - tr->step), tps = el > 0 ? tr->tokens_done / el : 0.0;
    double ep = (double)tr->epoch + (tr->train.n ? (double)tr->index / (double)tr->train.n : 0.0);
    int64_t rss = cli_rss_bytes();
    if (rss > tr->peak_rss) tr->peak_rss = rss;
    char etas[32];
    cli_fmt_duration(etas, sizeof etas, eta);
    if (tr->tty) {
        fprintf(
            stderr,
            "\rstep %lld/%lld | epoch %.2f | loss %.4f | lr %.2e | %.0f tok/s | ETA %s | RSS %.0f MB\033[K",
            (long long)tr->step, (long long)tr->total_steps, ep, loss, lr, tps, etas, (double)rss / 1e6);
        cli_progress_active = 1;
        fflush(stderr);
        return;
    }
    int64_t every = cfg_int(tr->cfg, "logging_steps");
    if (!force && !(every > 0 && tr->step % every == 0) && tr->step != 1) return;
    fprintf(stderr,
            "step %lld/%lld epoch %.2f loss %.4f lr %.3g grad_norm %.4g tok/s %.0f eta %s rss %.0fMB\n",
            (long long)tr->step, (long long)tr->total_steps, ep, loss, lr, gn, tps, etas, (double)rss / 1e6);
    fflush(stderr);
}

// Evaluates the eval file; logs eval_loss. Returns 0 on failure.
static int tr_eval(trainer *tr, double *out_loss) {
    double sum;
    int64_t cnt;
    if (!cli_evaluate(&tr->m, &tr->est, &tr->eval, tr->eval_B, tr->cap, &sum, &cnt)) return 0;
    double loss = cnt ? sum / (double)cnt : 0.0;
    *out_loss = loss;
    tr_hist_push(&tr->e_step, &tr->e_loss, NULL, NULL, &tr->ne, &tr->ecap, (double)tr->step, loss, 0, 0);
    tr_metric(tr, "eval_loss", loss, tr->step);
    tr_metric(tr, "eval_perplexity", exp(loss), tr->step);
    cli_note("step %lld: eval_loss %.4f perplexity %.3f (%lld tokens)", (long long)tr->step, loss, exp(loss),
             (long long)cnt);
    return 1;
}

static void tr_free(trainer *tr) {
    if (tr->have_opt) qlora_adamw_free(&tr->opt);
    cli_state_free(&tr->st);
    cli_state_free(&tr->est);
    cli_backend_close(&tr->be, &tr->m);
    if (tr->have_model) qlora_model_free(&tr->m);
    if (tr->have_tok) qlora_tokenizer_free(&tr->tok);
    cli_dataset_free(&tr->train);
    cli_dataset_free(&tr->eval);
    free(tr->mods);
    free(tr->mod_names);
    free(tr->params);
    free(tr->param_names);
    free(tr->tok_buf);
    free(tr->lab_buf);
    free(tr->mask_buf);
    free(tr->order);
    free(tr->h_step);
    free(tr->h_loss);
    free(tr->h_lr);
    free(tr->h_gn);
    free(tr->e_step);
    free(tr->e_loss);
    if (tr->have_run) qlora_mlflow_run_free(&tr->run);
}

// Writes the final adapter, trainer_state.json and the loss curve into OUT.
static int tr_save_final(trainer *tr) {
    qlora_error err;
    memset(&err, 0, sizeof err);
    if (qlora_adapter_save(tr->out, tr->mods, tr->n_mods, tr->model_dir, &err) != QLORA_OK) {
        cli_error("final adapter: %s", err.detail);
        return 0;
    }
    char *p = cli_fmt("%s/trainer_state.json", tr->out);
    qlora_json_writer w;
    qlora_jw_init(&w, 2, 0);
    tr_write_state_json(tr, &w);
    int ok = cli_write_json(p, &w);
    qlora_jw_free(&w);
    free(p);
    char *png = cli_fmt("%s/loss_curve.png", tr->out), *tmp = cli_fmt("%s/.loss_curve.png.tmp", tr->out);
    if (cli_plot_loss(tmp, tr->h_step, tr->h_loss, tr->nh, tr->e_step, tr->e_loss, tr->ne) &&
        rename(tmp, png) != 0)
        cli_note("%s: %s", png, strerror(errno));
    free(png);
    free(tmp);
    return ok;
}

static void tr_log_artifacts(trainer *tr, int final) {
    if (!tr->have_run) return;
    qlora_error err;
    memset(&err, 0, sizeof err);
    static const char *const files[] = { "resolved_config.json", "trainer_state.json", "loss_curve.png" };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        char *p = cli_fmt("%s/%s", tr->out, files[i]);
        if (cli_is_file(p) && qlora_mlflow_log_artifact(&tr->run, p, NULL, &err) != QLORA_OK)
            cli_note("mlflow artifact %s: %s", files[i], err.detail);
        free(p);
    }
    if (!final) return;
    static const char *const ad[] = { "adapter_model.safetensors", "adapter_config.json" };
    int ok = 1;
    for (size_t i = 0; i < 2 && ok; i++) {
        char *p = cli_fmt("%s/%s", tr->out, ad[i]), *d = cli_fmt("adapter/%s", ad[i]);
        if (qlora_mlflow_log_artifact(&tr->run, p, d, &err) != QLORA_OK) {
            cli_note("mlflow artifact %s: %s", ad[i], err.detail);
            ok = 0;
        }
        free(p);
        free(d);
    }
    if (!ok) return;
    const char *kv[] = { "peft_type", "LORA", "format", "safetensors", "base_model", tr->model_dir, NULL };
    if (qlora_mlflow_log_model(&tr->run, "adapter", "peft", kv, &err) != QLORA_OK) {
        cli_note("mlflow log model: %s", err.detail);
        return;
    }
    const char *reg = cfg_str(tr->cfg, "register_model");
    if (*reg) {
        int64_t version = 0;
        if (qlora_mlflow_register_model(&tr->run, reg, "adapter", &version, &err) != QLORA_OK)
            cli_note("mlflow register %s: %s", reg, err.detail);
        else cli_note("registered model %s version %lld", reg, (long long)version);
    }
}

enum { TR_OK = 0, TR_FAILED = 1, TR_KILLED = 2 };

// The checks of the options that training needs, before anything is written.
static int tr_validate(cli_cfg *c) {
    struct { const char *k; int64_t lo; } ints[] = {
        { "max_len", 2 }, { "rank", 1 }, { "batch_size", 1 }, { "grad_accum", 1 }, { "epochs", 1 },
        { "max_steps", 0 }, { "eval_batch_size", 0 }, { "logging_steps", 0 }, { "save_steps", 0 },
        { "save_total_limit", 0 }, { "eval_steps", 0 }, { "warmup_steps", 0 }, { "optim_memory_mb", 0 },
        { "seed", 0 }, { "data_seed", 0 }, { "threads", 0 },
    };
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        if (cfg_int(c, ints[i].k) < ints[i].lo) {
            char flag[64];
            cli_flag_name(flag, sizeof flag, ints[i].k);
            cli_error("--%s must be at least %lld", flag, (long long)ints[i].lo);
            return 0;
        }
    if (cfg_int(c, "max_len") > 1000000 || cfg_int(c, "batch_size") > 65536) {
        cli_error("--max-len or --batch-size is unreasonably large");
        return 0;
    }
    double d = cfg_float(c, "dropout"), wr = cfg_float(c, "warmup_ratio");
    if (!(d >= 0 && d < 1) || !(wr >= 0 && wr <= 1) || cfg_float(c, "lr") < 0 || cfg_float(c, "alpha") <= 0 ||
        cfg_float(c, "max_grad_norm") < 0 || cfg_float(c, "weight_decay") < 0) {
        cli_error(
            "--dropout must be in [0, 1), --warmup-ratio in [0, 1], --alpha positive, --lr, --max-grad-norm "
            "and --weight-decay non-negative");
        return 0;
    }
    if (!*cfg_str(c, "model") || !*cfg_str(c, "data")) {
        cli_error("qlora train needs --model DIR and --data FILE.jsonl");
        return 0;
    }
    uint32_t mask;
    return cli_parse_targets(cfg_str(c, "targets"), &mask);
}

// Keys that must not change when a run resumes (they define what the steps compute).
static const char *const tr_strict_keys[] = {
    "data",       "template",        "max_len",       "no_truncate",  "skip_bad_lines", "train_on_source",
    "rank",       "alpha",           "dropout",       "targets",      "use_rslora",     "optim",
    "lr",         "lr_scheduler",    "warmup_ratio",  "warmup_steps", "weight_decay",   "adam_beta1",
    "adam_beta2", "adam_epsilon",    "max_grad_norm", "batch_size",   "grad_accum",     "seed",
    "data_seed",  "group_by_length", "blocksize",     "double_quant",   "compute",
};

// c's file layer is a checkpoint's resolved_config.json. One written before `compute` was recorded (compute is
// still train's default, neither the file nor a flag set it) was trained in fp32, then the only arithmetic.
static void tr_compute_of_old_checkpoint(cli_cfg *c) {
    const int i = cli_opt_index("compute");
    if (c->src[i] == SRC_DEFAULT) cli_set(c, i, "fp32", SRC_CONFIG);
}

// The configuration a checkpoint was trained with: train's defaults under its resolved_config.json.
static int tr_checkpoint_config(cli_cfg *old, const char *path) {
    cli_cfg_defaults(old, CMD_TRAIN, "train");
    const int ok = cli_cfg_apply_json(old, path);
    tr_compute_of_old_checkpoint(old);
    return ok;
}

static int tr_check_resume_config(const cli_cfg *c, const char *ckdir) {
    char *path = cli_fmt("%s/resolved_config.json", ckdir);
    cli_cfg old;
    int ok = tr_checkpoint_config(&old, path);
    for (size_t i = 0; ok && i < sizeof tr_strict_keys / sizeof tr_strict_keys[0]; i++)
        if (strcmp(cfg_str(&old, tr_strict_keys[i]), cfg_str(c, tr_strict_keys[i])) != 0) {
            char flag[64];
            cli_flag_name(flag, sizeof flag, tr_strict_keys[i]);
            cli_error("resume: --%s is '%s' but the checkpoint was trained with '%s' (a resumed run "
                      "must compute the same steps; start a new run in another --output instead)",
                      flag, cfg_str(c, tr_strict_keys[i]), cfg_str(&old, tr_strict_keys[i]));
            ok = 0;
        }
    if (ok && (strcmp(cfg_str(&old, "max_steps"), cfg_str(c, "max_steps")) ||
               strcmp(cfg_str(&old, "epochs"), cfg_str(c, "epochs"))))
        cli_note("resume: the run length changed (--max-steps / --epochs); a non-constant schedule "
                 "follows the new length");
    cli_cfg_free(&old);
    free(path);
    return ok;
}

static int tr_run(trainer *tr);

static int cmd_train(cli_cfg *c) {
    trainer tr;
    memset(&tr, 0, sizeof tr);
    tr.cfg = c;
    tr.out = cfg_str(c, "output");
    tr.tty = isatty(fileno(stderr));
    // --resume without --config: the checkpoint's configuration is the file layer
    char *ckdir = NULL;
    const char *resume = cfg_str(c, "resume");
    if (*resume) {
        if (!strcmp(resume, "latest")) {
            int64_t *steps = NULL, n = cli_list_checkpoints(tr.out, &steps);
            if (n == 0) {
                cli_error("--resume: no checkpoint-<step> folder in %s", tr.out);
                free(steps);
                return 1;
            }
            ckdir = cli_fmt("%s/checkpoint-%lld", tr.out, (long long)steps[n - 1]);
            free(steps);
        } else ckdir = cli_strdup(resume);
        char *rc = cli_fmt("%s/resolved_config.json", ckdir);
        if (!cli_is_dir(ckdir) || !cli_is_file(rc)) {
            cli_error("--resume: %s is not a checkpoint folder (no resolved_config.json)", ckdir);
            free(rc);
            free(ckdir);
            return 1;
        }
        if (!c->config_path && !cli_reapply(c, rc)) {
            free(rc);
            free(ckdir);
            return 1;
        }
        if (!c->config_path) tr_compute_of_old_checkpoint(c);
        free(rc);
        tr.out = cfg_str(c, "output");
    }
    if (!tr_validate(c)) {
        free(ckdir);
        return 1;
    }
    {   // the default --max-len never exceeds the model's context (an explicit one that does is an error)
        qlora_llama_config mc;
        qlora_error err;
        char *cp = cli_fmt("%s/config.json", cfg_str(c, "model"));
        int okc = qlora_llama_config_read(&mc, cp, &err) == QLORA_OK;
        free(cp);
        if (!okc) {
            cli_error("model: %s", err.detail);
            free(ckdir);
            return 1;
        }
        if (!cfg_given(c, "max_len") && cfg_int(c, "max_len") > mc.max_position_embeddings) {
            char v[32];
            snprintf(v, sizeof v, "%d", (int)mc.max_position_embeddings);
            cli_set(c, cli_opt_index("max_len"), v, SRC_DEFAULT);
        }
    }
    if (ckdir && !tr_check_resume_config(c, ckdir)) {
        free(ckdir);
        return 1;
    }
    tr.model_dir = cfg_str(c, "model");
    cli_threads(c);
    // the output folder: stale temp folders of a killed run go; old checkpoints need --resume or --overwrite
    if (!cli_mkdirs(tr.out)) {
        free(ckdir);
        return 1;
    }
    {
        DIR *d = opendir(tr.out);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL)
            if (!strncmp(e->d_name, ".tmp-checkpoint-", 16)) {
                char *p = cli_fmt("%s/%s", tr.out, e->d_name);
                cli_rm_rf(p);
                free(p);
            }
        if (d) closedir(d);
        int64_t *steps = NULL, n = cli_list_checkpoints(tr.out, &steps);
        if (n > 0 && !ckdir) {
            if (!cfg_bool(c, "overwrite")) {
                cli_error(
                    "%s already holds checkpoints (checkpoint-%lld): pass --resume to continue that run or "
                    "--overwrite to start over",
                    tr.out, (long long)steps[n - 1]);
                free(steps);
                return 1;
            }
            for (int64_t i = 0; i < n; i++) {
                char *p = cli_fmt("%s/checkpoint-%lld", tr.out, (long long)steps[i]);
                cli_rm_rf(p);
                free(p);
            }
        }
        free(steps);
    }
    cli_install_signals();
    // MLflow run first, so that every later failure is recorded
    if (!cfg_bool(c, "no_mlflow")) {
        qlora_mlflow_options mo;
        qlora_error err;
        memset(&mo, 0, sizeof mo);
        memset(&err, 0, sizeof err);
        const char *user = getenv("USER");
        mo.experiment_name = cfg_str(c, "experiment");
        mo.run_name = *cfg_str(c, "run_name") ? cfg_str(c, "run_name") : NULL;
        mo.user = user && *user ? user : NULL;
        mo.source_name = "qlora train";
        if (qlora_mlflow_run_start(&tr.run, cfg_str(c, "mlruns"), &mo, &err) != QLORA_OK) {
            cli_error("mlflow: %s (pass --no-mlflow to train without tracking)", err.detail);
            free(ckdir);
            return 1;
        }
        tr.have_run = 1;
        for (int i = 0; i < CLI_NOPTS; i++) {
            const cli_opt *o = &cli_opts[i];
            if (!(o->cmds & CMD_TRAIN) || (o->hidden && c->src[i] == SRC_DEFAULT)) continue;
            tr_param(&tr, o->key, c->val[i]);
        }
        tr_tag(&tr, "qlora.version", CLI_VERSION);
        tr_tag(&tr, "qlora.command", "train");
        tr_tag(&tr, "qlora.output_dir", tr.out);
        if (ckdir) tr_tag(&tr, "qlora.resumed_from", ckdir);
        cli_note("mlflow run %s in %s (experiment %s)", tr.run.run_id, cfg_str(c, "mlruns"),
                 cfg_str(c, "experiment"));
    }
    {
        qlora_json_writer w;
        qlora_jw_init(&w, 2, 0);
        cli_cfg_write_json(c, &w);
        char *p = cli_fmt("%s/resolved_config.json", tr.out);
        cli_write_json(p, &w);
        free(p);
        qlora_jw_free(&w);
    }
    tr.last_ckpt[0] = 0;
    if (ckdir) snprintf(tr.last_ckpt, sizeof tr.last_ckpt, "%s", ckdir);
    int rc = TR_FAILED;
    // everything else: a failure from here on ends the MLflow run as FAILED
    if (ckdir) {
        snprintf(tr.resume_dir, sizeof tr.resume_dir, "%s", ckdir);
        cli_note("resuming from %s", ckdir);
    }
    if (cli_backend_open(&tr.be, c)) {
        tr_tag(&tr, "qlora.backend", tr.be.name);
        rc = tr_run(&tr) ? (cli_interrupted ? TR_KILLED : TR_OK) : TR_FAILED;
    }
    if (tr.have_run) {
        qlora_error err;
        memset(&err, 0, sizeof err);
        if (tr.last_ckpt[0]) tr_tag(&tr, "qlora.last_checkpoint", tr.last_ckpt);
        if (tr.prev_run_id[0]) tr_tag(&tr, "qlora.previous_run_id", tr.prev_run_id);
        tr_log_artifacts(&tr, rc == TR_OK);
        qlora_mlflow_status ms = rc == TR_OK ? QLORA_MLFLOW_FINISHED
                                 : rc == TR_KILLED ? QLORA_MLFLOW_KILLED : QLORA_MLFLOW_FAILED;
        if (qlora_mlflow_run_end(&tr.run, ms, &err) != QLORA_OK) cli_note("mlflow: %s", err.detail);
    }
    free(ckdir);
    tr_free(&tr);
    return rc == TR_OK ? 0 : rc == TR_KILLED ? 130 : 1;
}

// Loads data and model, optionally resumes, and runs the steps. 0 on failure. An interrupt ends
// it early with 1 (the caller sees cli_interrupted) after writing a checkpoint.
static int tr_run(trainer *tr) {
    cli_cfg *c = tr->cfg;
    qlora_error err;
    memset(&err, 0, sizeof err);
    const char *resume_dir = tr->resume_dir;
    // tokenizer and data
    if (!cli_load_tokenizer(&tr->tok, c)) return 0;
    tr->have_tok = 1;
    cli_data_opts dopt;
    memset(&dopt, 0, sizeof dopt);
    dopt.template_ = cfg_str(c, "template");
    dopt.max_len = (int32_t)cfg_int(c, "max_len");
    dopt.no_truncate = cfg_bool(c, "no_truncate");
    dopt.skip_bad = cfg_bool(c, "skip_bad_lines");
    dopt.train_on_source = cfg_bool(c, "train_on_source");
    const char *data = cfg_str(c, "data"), *evf = cfg_str(c, "eval_file");
    if (!cli_dataset_load(&tr->train, data, &tr->tok, &dopt)) return 0;
    cli_dataset_report(&tr->train, "train", data, dopt.max_len);
    if (tr->train.n == 0) {
        cli_error(
            "%s: no training examples (%lld non-empty lines, %lld skipped, %lld without a completion token)",
            data, (long long)tr->train.lines, (long long)tr->train.bad, (long long)tr->train.no_target);
        return 0;
    }
    if (*evf) {
        if (!cli_dataset_load(&tr->eval, evf, &tr->tok, &dopt)) return 0;
        cli_dataset_report(&tr->eval, "eval", evf, dopt.max_len);
        if (tr->eval.n == 0) {
            cli_error("%s: no evaluation examples", evf);
            return 0;
        }
    }
    // model with fresh adapters
    uint32_t targets;
    cli_parse_targets(cfg_str(c, "targets"), &targets);
    qlora_lora_config lc;
    memset(&lc, 0, sizeof lc);
    lc.rank = (int32_t)cfg_int(c, "rank");
    lc.alpha = (float)cfg_float(c, "alpha");
    lc.dropout = (float)cfg_float(c, "dropout");
    lc.use_rslora = cfg_bool(c, "use_rslora");
    if (!cli_load_model(&tr->m, c, &lc, targets, (uint64_t)cfg_int(c, "seed"), &tr->be)) return 0;
    tr->have_model = 1;
    if (!cli_check_vocab(&tr->train, data, tr->m.cfg.vocab_size) ||
        (*evf && !cli_check_vocab(&tr->eval, evf, tr->m.cfg.vocab_size)))
        return 0;
    if (dopt.max_len > tr->m.cfg.max_position_embeddings) {
        cli_error("--max-len %d exceeds the model's max_position_embeddings %d", (int)dopt.max_len,
                  (int)tr->m.cfg.max_position_embeddings);
        return 0;
    }
    if (resume_dir[0] && !tr_resume(tr, resume_dir)) return 0;
    tr_make_params(tr);
    // optimizer
    qlora_adamw_config ac = qlora_adamw_default_config();
    const char *optim = cfg_str(c, "optim");
    ac.lr = (float)cfg_float(c, "lr");
    ac.beta1 = (float)cfg_float(c, "adam_beta1");
    ac.beta2 = (float)cfg_float(c, "adam_beta2");
    ac.eps = (float)cfg_float(c, "adam_epsilon");
    ac.weight_decay = (float)cfg_float(c, "weight_decay");
    ac.optim_bits = strstr(optim, "8bit") ? 8 : 32;
    ac.max_grad_norm = (float)cfg_float(c, "max_grad_norm");
    const char *sch = cfg_str(c, "lr_scheduler");
    ac.schedule = !strcmp(sch, "linear") ? QLORA_LR_LINEAR : !strcmp(sch, "cosine") ? QLORA_LR_COSINE
                  : !strcmp(sch, "constant_with_warmup") ? QLORA_LR_CONSTANT_WITH_WARMUP : QLORA_LR_CONSTANT;
    tr->B = cfg_int(c, "batch_size");
    tr->GA = cfg_int(c, "grad_accum");
    tr->eval_B = cfg_int(c, "eval_batch_size") > 0 ? cfg_int(c, "eval_batch_size") : tr->B;
    int64_t micro = (tr->train.n + tr->B - 1) / tr->B;
    tr->steps_per_epoch = (micro + tr->GA - 1) / tr->GA;
    tr->total_steps =
        cfg_int(c, "max_steps") > 0 ? cfg_int(c, "max_steps") : cfg_int(c, "epochs") * tr->steps_per_epoch;
    ac.total_steps = tr->total_steps;
    ac.warmup_steps = cfg_int(c, "warmup_steps") > 0
                          ? cfg_int(c, "warmup_steps")
                          : (int64_t)ceil(cfg_float(c, "warmup_ratio") * (double)tr->total_steps);
    if (!strncmp(optim, "paged_", 6)) ac.pager.budget_bytes = cfg_int(c, "optim_memory_mb") << 20;
    ac.pager.dir = tr->out;
    if (qlora_adamw_init(&tr->opt, tr->params, 2 * tr->n_mods, &ac, &err) != QLORA_OK) {
        cli_error("optimizer: %s", err.detail);
        return 0;
    }
    tr->have_opt = 1;
    if (resume_dir[0] && !tr_resume_optimizer(tr, resume_dir)) return 0;
    // buffers
    tr->cap = dopt.max_len;
    tr->ckpt = cfg_bool(c, "gradient_checkpointing");
    tr->tok_buf = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(tr->B * tr->cap));
    tr->lab_buf = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(tr->B * tr->cap));
    tr->mask_buf = (uint8_t *)cli_alloc((size_t)(tr->B * tr->cap));
    tr->order = (int64_t *)cli_alloc(sizeof(int64_t) * (size_t)tr->train.n);
    tr->order_epoch = -1;
    // derived values: printed and recorded
    {
        char tg[128], buf[64];
        cli_targets_text(tg, sizeof tg, targets);
        int64_t lp = qlora_model_lora_params(&tr->m), act = 0;
        qlora_train_state_bytes(&tr->m, tr->B, tr->train.longest, tr->ckpt, &act, &err);
        cli_note(
            "LoRA r %d alpha %g dropout %g on %s: %lld trainable parameters; %s, lr %g %s; batch %lld x %lld "
            "accumulation; %lld steps (%lld per epoch)",
            (int)lc.rank, (double)lc.alpha, (double)lc.dropout, tg, (long long)lp, optim, (double)ac.lr, sch,
            (long long)tr->B, (long long)tr->GA, (long long)tr->total_steps, (long long)tr->steps_per_epoch);
        cli_note("memory: weights %.1f MB, optimizer state %.1f MB, activations up to %.1f MB",
                 (double)qlora_model_weight_bytes(&tr->m) / 1e6,
                 (double)qlora_adamw_state_bytes(&tr->opt) / 1e6, (double)act / 1e6);
        snprintf(buf, sizeof buf, "%lld", (long long)tr->total_steps);
        tr_param(tr, "derived.total_steps", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)tr->steps_per_epoch);
        tr_param(tr, "derived.steps_per_epoch", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)ac.warmup_steps);
        tr_param(tr, "derived.warmup_steps", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)lp);
        tr_param(tr, "derived.lora_params", buf);
        qlora_format_double(
            buf,
            lc.use_rslora ? (double)lc.alpha / sqrt((double)lc.rank) : (double)lc.alpha / (double)lc.rank, 0);
        tr_param(tr, "derived.lora_scale", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)tr->train.n);
        tr_param(tr, "derived.train_examples", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)tr->train.tokens);
        tr_param(tr, "derived.train_tokens", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)tr->train.truncated);
        tr_param(tr, "derived.train_truncated_examples", buf);
        snprintf(buf, sizeof buf, "%lld", (long long)tr->train.tokens_dropped);
        tr_param(tr, "derived.train_truncated_tokens", buf);
        if (tr->eval.n) {
            snprintf(buf, sizeof buf, "%lld", (long long)tr->eval.n);
            tr_param(tr, "derived.eval_examples", buf);
        }
        qlora_cpu_info ci = qlora_cpu_info_get();
        snprintf(buf, sizeof buf, "%d", ci.omp_threads);
        tr_tag(tr, "qlora.omp_threads", buf);
    }
    if (tr->step >= tr->total_steps)
        cli_note("the checkpoint is at step %lld of %lld: nothing left to train", (long long)tr->step,
                 (long long)tr->total_steps);
    // the loop
    int64_t debug_nan = cfg_int(c, "debug_nan_at_step"), debug_sleep = cfg_int(c, "debug_sleep_ms");
    int64_t debug_sigint = cfg_int(c, "debug_sigint_at_step");
    int64_t save_steps = cfg_int(c, "save_steps"), eval_steps = cfg_int(c, "eval_steps");
    int64_t N = tr->train.n;
    qlora_rng *snap = (qlora_rng *)cli_alloc((size_t)tr_rng_bytes(tr));
    double last_loss = NAN, last_eval = NAN, sum_loss = 0;
    int ok = 1;
    tr->t_start = cli_now();
    while (ok && tr->step < tr->total_steps) {
        if (tr->order_epoch != tr->epoch) {
            cli_epoch_order(tr->order, &tr->train, (uint64_t)cfg_int(c, "data_seed"), tr->epoch, tr->B,
                            cfg_bool(c, "group_by_length"));
            tr->order_epoch = tr->epoch;
        }
        double t0 = cli_now();
        tr_rng_get(tr, snap);
        int64_t remaining = (N - tr->index + tr->B - 1) / tr->B;
        int64_t nmicro = remaining < tr->GA ? remaining : tr->GA;
        int64_t count = 0, real = 0;
        for (int64_t i = tr->index; i < tr->index + nmicro * tr->B && i < N; i++)
            count += tr->train.ex[tr->order[i]].n_count;
        qlora_model_zero_grad(&tr->m);
        double loss_sum = 0;
        int interrupted = 0;
        for (int64_t mi = 0; mi < nmicro && ok; mi++) {
            if (cli_interrupted) {
                interrupted = 1;
                break;
            }
            int64_t s = tr->index + mi * tr->B, nb = N - s < tr->B ? N - s : tr->B;
            int64_t T = cli_batch_fill(tr->tok_buf, tr->mask_buf, tr->lab_buf, &tr->train, tr->order + s, nb,
                                       tr->cap);
            if (!cli_state_get(&tr->st, &tr->m, nb, T, tr->ckpt)) {
                ok = 0;
                break;
            }
            if (qlora_model_forward_train(&tr->m, &tr->st.ts, tr->tok_buf, tr->mask_buf, tr->lab_buf, NULL,
                                          &err) != QLORA_OK) {
                cli_error("step %lld: forward: %s", (long long)tr->step + 1, err.detail);
                ok = 0;
                break;
            }
            double ls = tr->st.ts.loss_sum;
            if (debug_nan == tr->step + 1) ls = NAN;
            if (!isfinite(ls)) {
                cli_error(
                    "step %lld: the loss is %s; stopping without saving. The last good checkpoint is %s",
                    (long long)tr->step + 1, isnan(ls) ? "NaN" : "infinite",
                    tr->last_ckpt[0] ? tr->last_ckpt : "(none: no checkpoint was written yet)");
                ok = 0;
                break;
            }
            if (qlora_model_backward_scaled(&tr->m, &tr->st.ts, 1.0f / (float)count, &err) != QLORA_OK) {
                cli_error("step %lld: backward: %s", (long long)tr->step + 1, err.detail);
                ok = 0;
                break;
            }
            loss_sum += ls;
            for (int64_t k = 0; k < nb * T; k++) real += tr->mask_buf[k];
            if (debug_sigint == tr->step + 1 && mi == 0) raise(SIGINT);
        }
        if (!ok) break;
        if (interrupted) {
            // the partial accumulation is dropped: restore the step's starting RNG and save the
            // state after the last completed step, from which a resume recomputes this step
            tr_rng_set(tr, snap);
            cli_note("interrupted (signal %d): saving a checkpoint at step %lld", (int)cli_interrupted,
                     (long long)tr->step);
            if (tr->step > 0) ok = tr_save_checkpoint(tr);
            if (ok && tr->step > 0)
                cli_note("stopped; continue with: qlora train --output %s --resume", tr->out);
            free(snap);
            return ok;
        }
        qlora_step_stats ss;
        memset(&ss, 0, sizeof ss);
        if (qlora_adamw_step(&tr->opt, &ss, &err) != QLORA_OK) {
            cli_error("step %lld: optimizer: %s", (long long)tr->step + 1, err.detail);
            ok = 0;
            break;
        }
        if (!isfinite(ss.grad_norm)) {
            cli_error("step %lld: the gradient norm is not finite; stopping without saving. The last good "
                      "checkpoint is %s", (long long)tr->step + 1,
                      tr->last_ckpt[0] ? tr->last_ckpt : "(none: no checkpoint was written yet)");
            ok = 0;
            break;
        }
        tr->step++;
        tr->index += nmicro * tr->B;
        if (tr->index >= N) {
            tr->epoch++;
            tr->index = 0;
        }
        double dt = cli_now() - t0, loss = loss_sum / (double)count;
        char lrs[40];   // the fp32 rate as its shortest decimal (0.0002, not 0.00019999999494757503)
        qlora_format_double(lrs, (double)ss.lr, 1);
        double lr = strtod(lrs, NULL);
        tr->tokens_done += (double)real;
        tr->steps_done_here++;
        last_loss = loss;
        sum_loss += loss;
        tr_hist_push(&tr->h_step, &tr->h_loss, &tr->h_lr, &tr->h_gn, &tr->nh, &tr->hcap, (double)tr->step,
                     loss, lr, ss.grad_norm);
        tr_metric(tr, "loss", loss, tr->step);
        tr_metric(tr, "learning_rate", lr, tr->step);
        tr_metric(tr, "grad_norm", ss.grad_norm, tr->step);
        tr_metric(tr, "tokens_per_second", dt > 0 ? (double)real / dt : 0.0, tr->step);
        tr_metric(tr, "epoch", (double)tr->epoch + (double)tr->index / (double)N, tr->step);
        tr_progress(tr, loss, lr, ss.grad_norm, tr->step == tr->total_steps);
        if (debug_sleep > 0) cli_sleep_ms((long)debug_sleep);
        if (tr->eval.n && eval_steps > 0 && tr->step % eval_steps == 0 && tr->step < tr->total_steps)
            ok = tr_eval(tr, &last_eval);
        if (ok && save_steps > 0 && tr->step % save_steps == 0) ok = tr_save_checkpoint(tr);
    }
    free(snap);
    if (!ok) return 0;
    if (cli_interrupted) {   // a signal during the last step's bookkeeping: the state is complete
        cli_note("interrupted (signal %d): saving a checkpoint at step %lld", (int)cli_interrupted,
                 (long long)tr->step);
        return tr_save_checkpoint(tr);
    }
    if (tr->eval.n && !tr_eval(tr, &last_eval)) return 0;
    if (!tr_save_final(tr)) return 0;
    double el = cli_now() - tr->t_start;
    tr_metric(tr, "train_runtime", el, tr->step);
    if (tr->steps_done_here) tr_metric(tr, "train_loss", sum_loss / (double)tr->steps_done_here, tr->step);
    int64_t rss = cli_rss_bytes();
    if (rss > tr->peak_rss) tr->peak_rss = rss;
    cli_clear_progress();
    char dur[32];
    cli_fmt_duration(dur, sizeof dur, el);
    char evs[64] = "";
    if (isfinite(last_eval)) snprintf(evs, sizeof evs, ", eval_loss %.4f", last_eval);
    fprintf(stderr,
            "%s: done: %lld steps (%lld this run) in %s, loss %.4f%s, %.0f tok/s, peak RSS %.0f MB; "
            "adapter in %s\n",
            cli_prog, (long long)tr->step, (long long)tr->steps_done_here, dur, last_loss, evs,
            el > 0 ? tr->tokens_done / el : 0.0, (double)tr->peak_rss / 1e6, tr->out);
    return 1;
}

// ---------------------------------------------------------------------------------------------
// qlora generate / score / eval

typedef struct cli_printer {
    const qlora_tokenizer *tok;
    int32_t               *ids;
    int64_t                n, cap;
    char                  *text;
    size_t                 text_cap, printed;
} cli_printer;

static int cli_on_token(void *user, int32_t token) {
    cli_printer *p = (cli_printer *)user;
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

// Model (+ adapter) and tokenizer for the inference commands.
static int cli_open_inference(const cli_cfg *c, qlora_model *m, qlora_tokenizer *tok, cli_backend *be) {
    cli_threads(c);
    if (!cli_backend_open(be, c)) return 0;
    if (!cli_load_tokenizer(tok, c)) {
        cli_backend_close(be, NULL);
        return 0;
    }
    if (!cli_load_model(m, c, NULL, 0, 0, be)) {
        qlora_tokenizer_free(tok);
        cli_backend_close(be, NULL);
        return 0;
    }
    const char *ad = cfg_str(c, "adapter");
    if (*ad && !cli_load_adapter(m, ad)) {
        cli_backend_close(be, m);
        qlora_model_free(m);
        qlora_tokenizer_free(tok);
        return 0;
    }
    if (tok->vocab_size > m->cfg.vocab_size)
        cli_note("warning: the tokenizer has %d ids, the model %d", (int)tok->vocab_size,
                 (int)m->cfg.vocab_size);
    return 1;
}

static int cmd_generate(cli_cfg *c) {
    qlora_model m;
    qlora_tokenizer tok;
    cli_backend be;
    if (!cli_open_inference(c, &m, &tok, &be)) return 1;
    qlora_error err;
    memset(&err, 0, sizeof err);
    const char *pr = cfg_str(c, "prompt");
    char *prompt = cli_apply_template(cfg_str(c, "template"), pr, strlen(pr));
    int32_t *ids = NULL;
    int64_t n = 0, max_new = cfg_int(c, "max_new"), ctx = cfg_int(c, "ctx");
    int rc = 1;
    qlora_kv_cache kv;
    memset(&kv, 0, sizeof kv);
    if (cli_encode(&tok, prompt, strlen(prompt), 1, 0, &ids, &n, &err) != QLORA_OK)
        cli_error("prompt: %s", err.detail);
    else if (n == 0) cli_error("the prompt is empty and the tokenizer has no BOS token");
    else if (max_new < 0) cli_error("--max-new must be non-negative");
    else {
        if (ctx <= 0) ctx = n + max_new;
        if (ctx > m.cfg.max_position_embeddings) ctx = m.cfg.max_position_embeddings;
        if (n >= ctx)
            cli_error("the prompt (%lld tokens) does not fit the context of %lld", (long long)n,
                      (long long)ctx);
        else if (qlora_kv_cache_init(&kv, &m, ctx, 0, &err) != QLORA_OK)
            cli_error("kv cache: %s", err.detail);
        else {
            if (n + max_new > ctx) max_new = ctx - n;
            cli_printer p;
            memset(&p, 0, sizeof p);
            p.tok = &tok;
            p.cap = max_new;
            p.ids = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(max_new + 1));
            p.text_cap = (size_t)(max_new + 1) * 64 + 64;
            p.text = (char *)cli_alloc(p.text_cap);
            int32_t *out = (int32_t *)cli_alloc(sizeof(int32_t) * (size_t)(max_new + 1));
            qlora_generate_options go;
            memset(&go, 0, sizeof go);
            go.temperature = (float)cfg_float(c, "temperature");
            go.top_p = (float)cfg_float(c, "top_p");
            go.seed = (uint64_t)cfg_int(c, "seed");
            go.on_token = cli_on_token;
            go.user = &p;
            if (m.cfg.eos_token_id < 0) go.no_stop_at_eos = 1;
            int64_t n_out = 0;
            double t0 = cli_now();
            qlora_status st = qlora_model_generate(&m, &kv, ids, n, max_new, &go, out, &n_out, &err);
            double dt = cli_now() - t0;
            printf("\n");
            if (st != QLORA_OK) cli_error("generate: %s", err.detail);
            else {
                cli_note("%lld prompt + %lld generated tokens in %.2f s (%.1f tokens/s)", (long long)n,
                         (long long)n_out, dt, dt > 0 ? (double)(n + n_out) / dt : 0.0);
                rc = 0;
            }
            free(p.ids);
            free(p.text);
            free(out);
        }
    }
    qlora_kv_cache_free(&kv);
    free(ids);
    free(prompt);
    cli_backend_close(&be, &m);
    qlora_model_free(&m);
    qlora_tokenizer_free(&tok);
    return rc;
}

// Scores continuations: --prompt with --candidates "a|b", or every line of --data (prompt and
// completion; the completion is scored with its EOS, as in training). Prints numbers only.
static int cmd_score(cli_cfg *c) {
    const char *cands = cfg_str(c, "candidates"), *data = cfg_str(c, "data");
    if (!*cands == !*data) {
        cli_error("qlora score needs either --prompt and --candidates, or --data FILE.jsonl");
        return 1;
    }
    qlora_model m;
    qlora_tokenizer tok;
    cli_backend be;
    if (!cli_open_inference(c, &m, &tok, &be)) return 1;
    qlora_error err;
    memset(&err, 0, sizeof err);
    int rc = 0;
    qlora_kv_cache kv;
    memset(&kv, 0, sizeof kv);
    if (*cands) {
        const char *pr = cfg_str(c, "prompt");
        char *prompt = cli_apply_template(cfg_str(c, "template"), pr, strlen(pr));
        int32_t *pids = NULL;
        int64_t np = 0;
        int nc = 1;
        for (const char *s = cands; *s; s++) nc += *s == '|';
        int32_t **cids = (int32_t **)cli_calloc(sizeof(int32_t *) * (size_t)nc);
        int64_t *clen = (int64_t *)cli_calloc(sizeof(int64_t) * (size_t)nc), longest = 0;
        char *copy = cli_strdup(cands), *s = copy;
        char **cand = (char **)cli_calloc(sizeof(char *) * (size_t)nc);
        if (cli_encode(&tok, prompt, strlen(prompt), 1, 0, &pids, &np, &err) != QLORA_OK || np == 0) {
            cli_error("prompt: %s", np == 0 ? "empty and no BOS token" : err.detail);
            rc = 1;
        }
        for (int k = 0; k < nc && rc == 0; k++) {
            char *bar = strchr(s, '|');
            if (bar) *bar = 0;
            cand[k] = s;
            if (cli_encode(&tok, s, strlen(s), 0, 0, &cids[k], &clen[k], &err) != QLORA_OK) {
                cli_error("candidate %d: %s", k + 1, err.detail);
                rc = 1;
            }
            if (clen[k] > longest) longest = clen[k];
            s = bar ? bar + 1 : s + strlen(s);
        }
        int64_t ctx = cfg_int(c, "ctx") > 0 ? cfg_int(c, "ctx") : np + longest;
        if (rc == 0 && (ctx > m.cfg.max_position_embeddings || np + longest > ctx)) {
            cli_error("prompt + longest candidate (%lld tokens) exceed the context",
                      (long long)(np + longest));
            rc = 1;
        }
        if (rc == 0 && qlora_kv_cache_init(&kv, &m, ctx, 0, &err) != QLORA_OK) {
            cli_error("kv cache: %s", err.detail);
            rc = 1;
        }
        if (rc == 0) {
            double *lp = (double *)cli_alloc(sizeof(double) * (size_t)nc);
            if (qlora_model_score(&m, &kv, pids, np, (const int32_t *const *)cids, clen, nc, lp, &err) !=
                QLORA_OK) {
                cli_error("score: %s", err.detail);
                rc = 1;
            } else {
                printf("%12s %7s %10s  candidate\n", "logprob", "tokens", "mean");
                for (int k = 0; k < nc; k++)
                    printf("%12.4f %7lld %10.4f  %s\n", lp[k], (long long)clen[k],
                           clen[k] ? lp[k] / (double)clen[k] : 0.0, cand[k]);
            }
            free(lp);
        }
        for (int k = 0; k < nc; k++) free(cids[k]);
        free(cids);
        free(clen);
        free(cand);
        free(copy);
        free(pids);
        free(prompt);
    } else {
        // each JSONL line: the prompt is the source (BOS + template), the completion + EOS the target
        cli_data_opts dopt;
        memset(&dopt, 0, sizeof dopt);
        dopt.template_ = cfg_str(c, "template");
        dopt.max_len = m.cfg.max_position_embeddings;
        dopt.no_truncate = 1;
        dopt.skip_bad = cfg_bool(c, "skip_bad_lines");
        cli_dataset d;
        if (!cli_dataset_load(&d, data, &tok, &dopt)) rc = 1;
        else if (!cli_check_vocab(&d, data, m.cfg.vocab_size)) rc = 1;
        else {
            printf("%8s %12s %7s %10s\n", "line", "logprob", "tokens", "mean");
            int64_t ctx = d.longest > 0 ? d.longest : 1;
            if (qlora_kv_cache_init(&kv, &m, ctx, 0, &err) != QLORA_OK) {
                cli_error("kv cache: %s", err.detail);
                rc = 1;
            }
            for (int64_t i = 0; i < d.n && rc == 0; i++) {
                const cli_example *e = &d.ex[i];
                int64_t np = 1;   // the prompt: positions whose labels are ignored (at least BOS)
                while (np < e->n && e->labels[np] == CLI_IGNORE) np++;
                const int32_t *cont = e->ids + np;
                int64_t nt = e->n - np;
                double lp = 0;
                if (qlora_model_score(&m, &kv, e->ids, np, &cont, &nt, 1, &lp, &err) != QLORA_OK) {
                    cli_error("%s:%lld: score: %s", data, (long long)e->line, err.detail);
                    rc = 1;
                    break;
                }
                printf("%8lld %12.4f %7lld %10.4f\n", (long long)e->line, lp, (long long)nt,
                       nt ? lp / (double)nt : 0.0);
            }
        }
        cli_dataset_free(&d);
    }
    qlora_kv_cache_free(&kv);
    cli_backend_close(&be, &m);
    qlora_model_free(&m);
    qlora_tokenizer_free(&tok);
    return rc;
}

static int cmd_eval(cli_cfg *c) {
    const char *data = cfg_str(c, "data");
    if (!*data) {
        cli_error("qlora eval needs --data FILE.jsonl");
        return 1;
    }
    if (cfg_int(c, "batch_size") < 1 || cfg_int(c, "max_len") < 2) {
        cli_error("--batch-size must be positive and --max-len at least 2");
        return 1;
    }
    qlora_model m;
    qlora_tokenizer tok;
    cli_backend be;
    if (!cli_open_inference(c, &m, &tok, &be)) return 1;
    cli_data_opts dopt;
    memset(&dopt, 0, sizeof dopt);
    dopt.template_ = cfg_str(c, "template");
    dopt.max_len = (int32_t)cfg_int(c, "max_len");
    if (!cfg_given(c, "max_len") && dopt.max_len > m.cfg.max_position_embeddings)
        dopt.max_len = m.cfg.max_position_embeddings;
    dopt.no_truncate = cfg_bool(c, "no_truncate");
    dopt.skip_bad = cfg_bool(c, "skip_bad_lines");
    dopt.train_on_source = cfg_bool(c, "train_on_source");
    cli_dataset d;
    int rc = 1;
    if (dopt.max_len > m.cfg.max_position_embeddings)
        cli_error("--max-len %d exceeds the model's max_position_embeddings %d", (int)dopt.max_len,
                  (int)m.cfg.max_position_embeddings);
    else if (cli_dataset_load(&d, data, &tok, &dopt)) {
        cli_dataset_report(&d, "eval", data, dopt.max_len);
        if (d.n == 0) cli_error("%s: no examples to evaluate", data);
        else if (cli_check_vocab(&d, data, m.cfg.vocab_size)) {
            cli_state st;
            memset(&st, 0, sizeof st);
            double sum = 0;
            int64_t cnt = 0;
            double t0 = cli_now();
            if (cli_evaluate(&m, &st, &d, cfg_int(c, "batch_size"), dopt.max_len, &sum, &cnt)) {
                double loss = cnt ? sum / (double)cnt : 0.0;
                printf("eval_loss %.6f perplexity %.4f examples %lld tokens %lld truncated %lld\n", loss,
                       exp(loss), (long long)d.n, (long long)cnt, (long long)d.truncated);
                cli_note("evaluated in %.2f s", cli_now() - t0);
                rc = 0;
            }
            cli_state_free(&st);
        }
        cli_dataset_free(&d);
    }
    cli_backend_close(&be, &m);
    qlora_model_free(&m);
    qlora_tokenizer_free(&tok);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// qlora merge: dense HF checkpoint with W' = dequant(W) + s·B·A for every adapted projection

// Copies a JSON value into a writer.
static void cli_json_copy(qlora_json_writer *w, const qlora_json *v) {
    switch (v->type) {
    case QLORA_JSON_NULL: qlora_jw_null(w); break;
    case QLORA_JSON_BOOL: qlora_jw_bool(w, v->boolean); break;
    case QLORA_JSON_NUMBER:
        if (v->is_integer) qlora_jw_int(w, v->integer);
        else qlora_jw_double(w, v->number);
        break;
    case QLORA_JSON_STRING: qlora_jw_string_n(w, v->str, v->str_len); break;
    case QLORA_JSON_ARRAY:
        qlora_jw_array_begin(w);
        for (int64_t i = 0; i < v->count; i++) cli_json_copy(w, &v->items[i]);
        qlora_jw_array_end(w);
        break;
    case QLORA_JSON_OBJECT:
        qlora_jw_object_begin(w);
        for (int64_t i = 0; i < v->count; i++) {
            qlora_jw_key(w, v->keys[i]);
            cli_json_copy(w, &v->items[i]);
        }
        qlora_jw_object_end(w);
        break;
    }
}

static int cmd_merge(cli_cfg *c) {
    if (!cfg_given(c, "output")) {
        cli_error("--output DIR is required");
        return 1;
    }
    cli_threads(c);
    const char *dtype = cfg_str(c, "dtype"), *out = cfg_str(c, "output"), *ad = cfg_str(c, "adapter");
    qlora_dtype dt = !strcmp(dtype, "fp32") ? QLORA_DTYPE_F32 : !strcmp(dtype, "bf16") ? QLORA_DTYPE_BF16
                                                                                       : QLORA_DTYPE_F16;
    const char *torch_dtype = dt == QLORA_DTYPE_F32    ? "float32"
                              : dt == QLORA_DTYPE_BF16 ? "bfloat16"
                                                       : "float16";
    qlora_model m;
    if (!cli_load_model(&m, c, NULL, 0, 0, NULL)) return 1;
    if (*ad) {
        if (!cli_load_adapter(&m, ad)) {
            qlora_model_free(&m);
            return 1;
        }
    } else cli_note("no --adapter: writing the dequantized base model");
    const qlora_llama_config *mc = &m.cfg;
    int64_t L = mc->n_layers, V = mc->vocab_size, C = mc->hidden_size;
    int64_t cap = 3 + 9 * L, n = 0;
    qlora_st_entry *e = (qlora_st_entry *)cli_calloc(sizeof(qlora_st_entry) * (size_t)cap);
    char *names = (char *)cli_calloc((size_t)cap * 96);
    // kinds: 0 embed, 1 input norm, 2 post norm, 3 projection, 4 final norm, 5 lm_head
    int *kind = (int *)cli_calloc(sizeof(int) * (size_t)cap),
        *lay = (int *)cli_calloc(sizeof(int) * (size_t)cap),
        *tgt = (int *)cli_calloc(sizeof(int) * (size_t)cap);
#define CLI_ENTRY(k, l, t, d0, d1, nd, ...)                    \
    do {                                                       \
        snprintf(names + n * 96, 96, __VA_ARGS__);             \
        e[n].name = names + n * 96;                            \
        e[n].dtype = dt;                                       \
        e[n].data = names; /* ignored by the streaming writer */ \
        e[n].ndim = nd;                                        \
        e[n].shape[0] = d0;                                    \
        e[n].shape[1] = d1;                                    \
        kind[n] = k;                                           \
        lay[n] = l;                                            \
        tgt[n] = t;                                            \
        n++;                                                   \
    } while (0)
    CLI_ENTRY(0, 0, 0, V, C, 2, "model.embed_tokens.weight");
    for (int l = 0; l < L; l++) {
        CLI_ENTRY(1, l, 0, C, 0, 1, "model.layers.%d.input_layernorm.weight", l);
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            int64_t o, i;
            cli_target_shape(mc, t, &o, &i);
            CLI_ENTRY(3, l, t, o, i, 2, "model.layers.%d.%s.weight", l, qlora_target_path((qlora_target)t));
            if (t == QLORA_TARGET_O)
                CLI_ENTRY(2, l, 0, C, 0, 1, "model.layers.%d.post_attention_layernorm.weight", l);
        }
    }
    CLI_ENTRY(4, 0, 0, C, 0, 1, "model.norm.weight");
    if (!mc->tie_word_embeddings) CLI_ENTRY(5, 0, 0, V, C, 2, "lm_head.weight");
#undef CLI_ENTRY
    qlora_error err;
    memset(&err, 0, sizeof err);
    int ok = cli_mkdirs(out);
    char *path = cli_fmt("%s/model.safetensors", out);
    qlora_st_writer w;
    memset(&w, 0, sizeof w);
    int64_t biggest = V * C;
    for (int64_t k = 0; k < n; k++)
        if (e[k].ndim == 2 && e[k].shape[0] * e[k].shape[1] > biggest)
            biggest = e[k].shape[0] * e[k].shape[1];
    float *buf = (float *)cli_alloc(sizeof(float) * (size_t)biggest);
    uint16_t *half = dt == QLORA_DTYPE_F32 ? NULL : (uint16_t *)cli_alloc(sizeof(uint16_t) * (size_t)biggest);
    int64_t merged = 0;
    if (ok && qlora_st_writer_begin(&w, path, e, n, NULL, &err) != QLORA_OK) {
        cli_error("merge: %s", err.detail);
        ok = 0;
    }
    for (int64_t k = 0; k < n && ok; k++) {
        int64_t cnt = e[k].ndim == 2 ? e[k].shape[0] * e[k].shape[1] : e[k].shape[0];
        const float *src = buf;
        qlora_status st = QLORA_OK;
        switch (kind[k]) {
        case 0: src = m.embed; break;
        case 1: src = m.layers[lay[k]].input_norm; break;
        case 2: src = m.layers[lay[k]].post_norm; break;
        case 4: src = m.final_norm; break;
        case 5: src = m.lm_head; break;
        default: {
            qlora_llama_layer *ly = &m.layers[lay[k]];
            if (ly->lora[tgt[k]].A) {
                st = qlora_lora_merge(buf, &ly->lora[tgt[k]], &ly->w[tgt[k]], &err);
                merged++;
            } else st = qlora_nf4_dequantize(buf, &ly->w[tgt[k]], &err);
        }
        }
        if (st != QLORA_OK) {
            cli_error("merge %s: %s", e[k].name, err.detail);
            ok = 0;
            break;
        }
        const void *bytes = src;
        int64_t nbytes = cnt * 4;
        if (dt == QLORA_DTYPE_F16) qlora_f32_to_f16(half, src, cnt);
        if (dt == QLORA_DTYPE_BF16) qlora_f32_to_bf16(half, src, cnt);
        if (dt != QLORA_DTYPE_F32) {
            bytes = half;
            nbytes = cnt * 2;
        }
        if (qlora_st_writer_append(&w, bytes, nbytes, &err) != QLORA_OK) {
            cli_error("merge: %s", err.detail);
            ok = 0;
        }
    }
    if (ok && qlora_st_writer_finish(&w, &err) != QLORA_OK) {
        cli_error("merge: %s", err.detail);
        ok = 0;
    }
    if (!ok) qlora_st_writer_abort(&w);
    // config.json: the base model's, without quantization_config, with the new torch_dtype
    if (ok) {
        char *src = cli_fmt("%s/config.json", cfg_str(c, "model")), *dst = cli_fmt("%s/config.json", out);
        qlora_json_doc doc;
        if (qlora_json_read_file(&doc, src, &err) != QLORA_OK) {
            cli_error("%s", err.detail);
            ok = 0;
        } else {
            qlora_json_writer jw;
            qlora_jw_init(&jw, 2, 0);
            qlora_jw_object_begin(&jw);
            int wrote_dtype = 0;
            for (int64_t i = 0; i < doc.root.count; i++) {
                const char *key = doc.root.keys[i];
                if (!strcmp(key, "quantization_config")) continue;
                qlora_jw_key(&jw, key);
                if (!strcmp(key, "torch_dtype")) {
                    qlora_jw_string(&jw, torch_dtype);
                    wrote_dtype = 1;
                } else cli_json_copy(&jw, &doc.root.items[i]);
            }
            if (!wrote_dtype) {
                qlora_jw_key(&jw, "torch_dtype");
                qlora_jw_string(&jw, torch_dtype);
            }
            qlora_jw_object_end(&jw);
            ok = cli_write_json(dst, &jw);
            qlora_jw_free(&jw);
            qlora_json_free(&doc);
        }
        free(src);
        free(dst);
    }
    if (ok) ok = cli_copy_side_files(cfg_str(c, "model"), out);
    if (ok)
        cli_note("wrote %s (%s): %lld tensors, %lld projections merged with the adapter", out, dtype,
                 (long long)n, (long long)merged);
    free(path);
    free(buf);
    free(half);
    free(e);
    free(names);
    free(kind);
    free(lay);
    free(tgt);
    qlora_model_free(&m);
    return ok ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------
// main

typedef struct cli_command {
    const char *name;
    unsigned    bit;
    int       (*run)(cli_cfg *c);
    const char *usage;
    const char *about;
} cli_command;

static const cli_command cli_commands[] = {
    {"info", CMD_INFO, cmd_info,
     "qlora info --model DIR [--rank N --targets LIST --batch-size N --max-len N] [--json]",
     "Prints the model's configuration, parameter counts and the bytes of every part of a QLoRA run: NF4\n"
     "projections, fp32 embedding / norms / lm_head, LoRA weights and gradients, optimizer state and the\n"
     "activations of one micro-batch. Reads only config.json."},
    {"quantize", CMD_QUANTIZE, cmd_quantize,
     "qlora quantize --model DIR --output DIR [--blocksize 64] [--no-double-quant]",
     "Quantizes the seven projections of every layer to NF4 (bitsandbytes layout, double quantization by\n"
     "default) and writes a bitsandbytes 4-bit checkpoint (config.json with quantization_config,\n"
     "model.safetensors) that loads without re-quantizing; tokenizer files are copied."},
    {"train", CMD_TRAIN, cmd_train, "qlora train --model DIR --data FILE.jsonl [--output DIR] [options]",
     "Fine-tunes LoRA adapters on a frozen NF4 model with the QLoRA recipe's defaults (r 64, alpha 16,\n"
     "dropout 0.1, all seven projections, paged AdamW 32-bit, lr 2e-4 constant, max_grad_norm 0.3,\n"
     "batch 1 x 16 accumulation, group_by_length, gradient checkpointing, seed 0).\n"
     "Data: JSONL, {\"prompt\", \"completion\"} (loss on the completion + EOS only) or {\"text\"} (loss on\n"
     "every token). Writes OUT/resolved_config.json, OUT/checkpoint-<step>/ every --save-steps (adapter,\n"
     "optimizer, RNG state and data position; --resume continues bit-identically), and at the end the\n"
     "adapter (adapter_model.safetensors + adapter_config.json, PEFT format), trainer_state.json and\n"
     "loss_curve.png. Records an MLflow run in --mlruns. Ctrl-C saves a checkpoint and stops (exit 130);\n"
     "a NaN loss stops without saving (the last good checkpoint stays)."},
    {"generate", CMD_GENERATE, cmd_generate,
     "qlora generate --model DIR [--adapter DIR] --prompt TEXT [--max-new N]",
     "Generates a continuation of the prompt (BOS + template(prompt)); greedy unless --temperature > 0."},
    {"score", CMD_SCORE, cmd_score,
     "qlora score --model DIR [--adapter DIR] (--prompt TEXT --candidates 'a|b' | --data FILE.jsonl)",
     "Log-likelihood of continuations: each candidate given the prompt, or each JSONL line's completion\n"
     "(+ EOS) given its prompt. Prints numbers and line numbers only."},
    {"eval", CMD_EVAL, cmd_eval, "qlora eval --model DIR [--adapter DIR] --data FILE.jsonl [--max-len N]",
     "Token-weighted mean loss (as in training: completion tokens only for prompt/completion lines) and\n"
     "perplexity = exp(loss) on a JSONL file, without dropout."},
    {"merge", CMD_MERGE, cmd_merge,
     "qlora merge --model DIR --adapter DIR --output DIR [--dtype fp16|bf16|fp32]",
     "Writes a dense Hugging Face checkpoint (model.safetensors + config.json without quantization_config)\n"
     "in which every adapted projection is dequant(W) + (alpha/r)·B·A; other tensors are copied.\n"
     "dequant(W) keeps the NF4 rounding of the base model."},
};
#define CLI_NCMDS ((int)(sizeof cli_commands / sizeof cli_commands[0]))

static void cli_usage(FILE *f) {
    fprintf(f, "qlora %s - QLoRA fine-tuning of Llama models (qlora.h)\n\nusage: qlora COMMAND [options]\n\n"
               "commands:\n", CLI_VERSION);
    for (int i = 0; i < CLI_NCMDS; i++) fprintf(f, "  %s\n", cli_commands[i].usage);
    fprintf(f, "\n'qlora COMMAND --help' lists the options of a command.\n");
}

// The whole program; main() calls it (tests call it too, in a child process).
int qlora_cli_main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        cli_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("qlora %s (qlora.h %d.%d)\n", CLI_VERSION, QLORA_VERSION_MAJOR, QLORA_VERSION_MINOR);
        return 0;
    }
    const cli_command *cmd = NULL;
    for (int i = 0; i < CLI_NCMDS; i++)
        if (!strcmp(argv[1], cli_commands[i].name)) cmd = &cli_commands[i];
    if (!cmd) {
        cli_error("unknown command '%s'", argv[1]);
        cli_usage(stderr);
        return 2;
    }
    cli_cfg c;
    cli_cfg_defaults(&c, cmd->bit, cmd->name);
    int p = cli_parse_args(&c, argc - 2, argv + 2);
    if (p == 2) {
        printf("usage: %s\n\n%s\n\n", cmd->usage, cmd->about);
        cli_print_options(cmd->bit);
        cli_cfg_free(&c);
        return 0;
    }
    if (p == 0) {
        cli_cfg_free(&c);
        return 2;
    }
    if (!qlora_nf4_blocksize_valid((int32_t)cfg_int(&c, "blocksize"))) {
        cli_error("--blocksize %lld: must be a power of two in 32..4096",
                  (long long)cfg_int(&c, "blocksize"));
        cli_cfg_free(&c);
        return 2;
    }
    int rc = cmd->run(&c);
    cli_cfg_free(&c);
    return rc;
}

#endif // QLORA_COMMANDS_H
