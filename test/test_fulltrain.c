// test_fulltrain.c - full-parameter training of dense fp32 Llama models (qlora_model_backward_full)
// against an independent PyTorch autograd (test/ref/llama_full_ref.py, float64).
//
// Flow: for each tiny random dense model (GQA, tied and untied embeddings, odd sizes, left and right
// padding, -100 labels) this program computes the loss and the gradient of every parameter, saves
// the model with qlora_model_save_dense (F32) next to the inputs, and `llama_full_ref.py ref`
// recomputes loss and gradients with torch autograd plus central finite differences in float64 on
// two elements of every tensor. Own checks: checkpointing on/off and 1 vs 2 threads bit-identical,
// accumulation, KV-cache inference on a dense model, a 30-step AdamW run whose loss falls, the
// save_dense → qlora_model_load round trips (NF4: the same codes and logits as quantizing the dense
// weights; dense: bit-identical; BF16: rounded), and the error paths.
//
// Tolerances: gradients per tensor |got - want| <= 1e-3·max|want| + 1e-3·|want|; loss 1e-5
// relative; finite differences 1e-3·max|grad of the tensor| + 1e-3·|fd|.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#include <sys/stat.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int quick;
static char ROOT[512];

typedef struct fcase {
    const char *name;
    int C, H, L, NH, NKV, HD, V;   // HD 0: C / NH
    int tied, left_pad, B, T;
} fcase;

static const fcase CASES[] = {
    { "gqa_untied", 48, 97, 2, 6, 2, 0, 301, 0, 0, 2, 12 },
    { "tied_gqa", 36, 50, 2, 4, 2, 10, 211, 1, 1, 3, 9 },
};
#define N_CASES ((int)(sizeof CASES / sizeof CASES[0]))

static void set_cfg(qlora_llama_config *c, const fcase *f) {
    memset(c, 0, sizeof *c);
    c->hidden_size = f->C;
    c->intermediate_size = f->H;
    c->n_layers = f->L;
    c->n_heads = f->NH;
    c->n_kv_heads = f->NKV;
    c->head_dim = f->HD ? f->HD : f->C / f->NH;
    c->vocab_size = f->V;
    c->max_position_embeddings = 64;
    c->rms_norm_eps = 1e-5f;
    c->rope_theta = 10000.0f;
    c->rope_scaling_factor = 1.0f;
    c->tie_word_embeddings = f->tied;
    c->bos_token_id = 1;
    c->eos_token_id = 2;
    c->pad_token_id = 0;
}

// A dense model with weights of unit-scale activations (so every gradient is well above rounding).
static int make_model(qlora_model *m, const fcase *f, unsigned long long seed) {
    qlora_llama_config cfg;
    set_cfg(&cfg, f);
    if (qlora_model_init_random_dense(m, &cfg, NULL, seed, NULL) != QLORA_OK) return 0;
    tu_seed(seed);
    int64_t V = cfg.vocab_size, C = cfg.hidden_size;
    tu_fill_normal(m->embed, (long)(V * C), 1.0);
    if (!cfg.tie_word_embeddings) tu_fill_normal(m->lm_head, (long)(V * C), 2.0 / sqrt((double)C));
    for (int64_t i = 0; i < C; i++) m->final_norm[i] = (float)(1.0 + 0.2 * tu_normal());
    for (int l = 0; l < cfg.n_layers; l++) {
        for (int64_t i = 0; i < C; i++) {
            m->layers[l].input_norm[i] = (float)(1.0 + 0.2 * tu_normal());
            m->layers[l].post_norm[i] = (float)(1.0 + 0.2 * tu_normal());
        }
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            int64_t out = 0, in = 0;
            switch (t) {
            case QLORA_TARGET_Q: out = (int64_t)cfg.n_heads * cfg.head_dim; in = C; break;
            case QLORA_TARGET_K: case QLORA_TARGET_V: out = (int64_t)cfg.n_kv_heads * cfg.head_dim; in = C; break;
            case QLORA_TARGET_O: out = C; in = (int64_t)cfg.n_heads * cfg.head_dim; break;
            case QLORA_TARGET_GATE: case QLORA_TARGET_UP: out = cfg.intermediate_size; in = C; break;
            default: out = C; in = cfg.intermediate_size; break;
            }
            tu_fill_normal(m->layers[l].dense[t], (long)(out * in), 1.0 / sqrt((double)in));
        }
    }
    return 1;
}

typedef struct inputs {
    int      B, T;
    int32_t  tokens[512], labels[512];
    uint8_t  mask[512];
} inputs;

static void make_inputs(inputs *in, const fcase *f, unsigned long long seed) {
    tu_seed(seed);
    in->B = f->B;
    in->T = f->T;
    int n = f->B * f->T;
    for (int i = 0; i < n; i++) {
        in->tokens[i] = 3 + (int32_t)((tu_uniform() + 1.0) * 0.5 * (f->V - 3));
        if (in->tokens[i] >= f->V) in->tokens[i] = f->V - 1;
        in->mask[i] = 1;
    }
    int T = f->T, b = f->B - 1;
    for (int t = 0; t < 3; t++) in->mask[b * T + (f->left_pad ? t : T - 1 - t)] = 0;
    for (int i = 0; i < n; i++) {
        if (!in->mask[i]) in->tokens[i] = 0;
        in->labels[i] = in->mask[i] ? in->tokens[i] : -100;
    }
    if (f->left_pad) in->labels[b * T + 3] = -100;   // would be predicted from a padding position
    in->labels[4] = -100;
}

// forward (labels) + backward_full with the mean-loss scale into g (accumulating).
static qlora_status fwd_bwd(qlora_model *m, qlora_train_state *ts, const inputs *in, qlora_model_grads *g,
                            float *loss, qlora_error *err) {
    qlora_status st = qlora_model_forward_train(m, ts, in->tokens, in->mask, in->labels, loss, err);
    if (st == QLORA_OK) st = qlora_model_backward_full(m, ts, g, 1.0f / (float)ts->n_counted, err);
    return st;
}

// One train state of (B, T), forward + backward into fresh gradients; returns the concatenated
// gradients (params order) or NULL.
static float *grads_of(qlora_model *m, const inputs *in, int ckpt, float *loss, int64_t *n_out) {
    qlora_train_state ts;
    qlora_model_grads g;
    qlora_error err;
    float *out = NULL;
    if (qlora_train_state_init(&ts, m, in->B, in->T, ckpt, &err) != QLORA_OK) return NULL;
    if (qlora_model_grads_init(&g, m, &err) == QLORA_OK && fwd_bwd(m, &ts, in, &g, loss, &err) == QLORA_OK) {
        out = (float *)malloc(sizeof(float) * (size_t)g.n_floats);
        int64_t k = 0;
        for (int64_t i = 0; out && i < g.n_params; i++) {
            memcpy(out + k, g.params[i].g, sizeof(float) * (size_t)g.params[i].n);
            k += g.params[i].n;
        }
        *n_out = g.n_floats;
    } else {
        printf("# grads_of: %s\n", err.detail);
    }
    qlora_model_grads_free(&g);
    qlora_train_state_free(&ts);
    return out;
}

static int write_meta(const char *path, const inputs *in) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    int n = in->B * in->T;
    fprintf(f, "%d %d\n", in->B, in->T);
    for (int i = 0; i < n; i++) fprintf(f, "%d%c", (int)in->tokens[i], i + 1 < n ? ' ' : '\n');
    for (int i = 0; i < n; i++) fprintf(f, "%d%c", (int)in->mask[i], i + 1 < n ? ' ' : '\n');
    for (int i = 0; i < n; i++) fprintf(f, "%d%c", (int)in->labels[i], i + 1 < n ? ' ' : '\n');
    return fclose(f) == 0;
}

typedef struct cres {
    int               ok;
    qlora_model       m;
    inputs            in;
    qlora_model_grads g;
    double            loss;
} cres;

static const char *cdir(const char *cs, const char *rest) {
    static char buf[8][768];
    static int slot;
    char *p = buf[slot++ & 7];
    if (snprintf(p, 768, "%s/%s%s%s", ROOT, cs, *rest ? "/" : "", rest) >= 768) p[0] = 0;
    return p;
}

// C side of one case: gradients, bit-identity checks, the dump for the reference.
static void run_case(const fcase *f, cres *r, int idx) {
    char nm[160];
    qlora_error err;
    memset(r, 0, sizeof *r);
    snprintf(nm, sizeof nm, "fulltrain/%s/make", f->name);
    if (!tu_check(make_model(&r->m, f, 100 + (unsigned long long)idx), nm, "init_random_dense failed")) return;
    make_inputs(&r->in, f, 200 + (unsigned long long)idx);
    qlora_train_state ts;
    float loss = 0.0f;
    qlora_status st = qlora_train_state_init(&ts, &r->m, f->B, f->T, 0, &err);
    if (st == QLORA_OK) st = qlora_model_grads_init(&r->g, &r->m, &err);
    if (st == QLORA_OK) st = fwd_bwd(&r->m, &ts, &r->in, &r->g, &loss, &err);
    qlora_train_state_free(&ts);
    snprintf(nm, sizeof nm, "fulltrain/%s/backward_full", f->name);
    if (!tu_check(st == QLORA_OK, nm, "%s", err.detail)) return;
    r->loss = loss;
    // parameter list: every tensor once, counts add up to the model's size
    {
        int64_t L = f->L, sum = 0;
        for (int64_t i = 0; i < r->g.n_params; i++) sum += r->g.params[i].n;
        snprintf(nm, sizeof nm, "fulltrain/%s/param_list", f->name);
        tu_check(r->g.n_params == 9 * L + (f->tied ? 2 : 3) && sum == r->g.n_floats &&
                     !strcmp(r->g.params[0].name, "model.embed_tokens.weight") &&
                     !strcmp(r->g.params[2].name, "model.layers.0.self_attn.q_proj.weight") &&
                     !strcmp(r->g.params[6].name, "model.layers.0.post_attention_layernorm.weight") &&
                     r->g.params[2].w == r->m.layers[0].dense[QLORA_TARGET_Q],
                 nm, "n_params %lld, n_floats %lld (sum %lld), first names %s %s", (long long)r->g.n_params,
                 (long long)r->g.n_floats, (long long)sum, r->g.params[0].name, r->g.params[2].name);
    }
    // checkpointing on/off bit for bit, and accumulation: a second backward doubles every gradient
    // (exactly, except a tied embedding, whose two contributions then add in another order)
    {
        int64_t n1 = 0, n2 = 0;
        float l1, l2;
        float *a = grads_of(&r->m, &r->in, 0, &l1, &n1), *b = grads_of(&r->m, &r->in, 1, &l2, &n2);
        snprintf(nm, sizeof nm, "fulltrain/%s/checkpointing_bit_identical", f->name);
        tu_check(a && b && n1 == n2 && n1 == r->g.n_floats && l1 == l2 &&
                     !memcmp(a, b, sizeof(float) * (size_t)n1),
                 nm, "gradients differ with checkpointing on");
        qlora_train_state ts2;
        int dbl = 0;
        if (a && qlora_train_state_init(&ts2, &r->m, f->B, f->T, 1, &err) == QLORA_OK) {
            qlora_model_grads g2;
            if (qlora_model_grads_init(&g2, &r->m, &err) == QLORA_OK) {
                float lx;
                if (fwd_bwd(&r->m, &ts2, &r->in, &g2, &lx, &err) == QLORA_OK &&
                    fwd_bwd(&r->m, &ts2, &r->in, &g2, &lx, &err) == QLORA_OK) {
                    dbl = 1;
                    int64_t k = 0;
                    for (int64_t i = 0; i < g2.n_params; i++) {
                        double tol = 0.0;
                        for (int64_t j = 0; f->tied && i == 0 && j < g2.params[i].n; j++)
                            if (fabs(a[j]) > tol) tol = fabs(a[j]);
                        for (int64_t j = 0; j < g2.params[i].n; j++, k++)
                            if (!(fabs(g2.params[i].g[j] - 2.0f * a[k]) <= 1e-6 * tol)) dbl = 0;
                    }
                }
                qlora_model_grads_zero(&g2);
                for (int64_t i = 0; i < g2.n_params; i++)
                    for (int64_t j = 0; j < g2.params[i].n; j++)
                        if (g2.params[i].g[j] != 0.0f) dbl = 0;
                qlora_model_grads_free(&g2);
            }
            qlora_train_state_free(&ts2);
        }
        snprintf(nm, sizeof nm, "fulltrain/%s/accumulates_and_zero", f->name);
        tu_check(dbl, nm, "two backwards do not give exactly twice the gradient, or zero left values");
        free(a);
        free(b);
    }
    // the dump: model (F32 safetensors) + inputs
    mkdir(cdir(f->name, ""), 0755);
    mkdir(cdir(f->name, "model"), 0755);
    st = qlora_model_save_dense(&r->m, cdir(f->name, "model"), QLORA_DTYPE_F32, &err);
    snprintf(nm, sizeof nm, "fulltrain/%s/save_dense", f->name);
    if (!tu_check(st == QLORA_OK && write_meta(cdir(f->name, "meta.txt"), &r->in), nm, "%s", err.detail)) return;
    r->ok = 1;
}

static float *read_f32(const char *path, int64_t n) {
    float *p = (float *)malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    if (p && !tu_read(path, p, sizeof(float) * (size_t)n)) {
        free(p);
        p = NULL;
    }
    return p;
}

static void compare_case(const fcase *f, cres *r) {
    char nm[200], path[900];
    if (!r->ok) return;
    double wl = 0.0;
    snprintf(nm, sizeof nm, "fulltrain/%s/loss_vs_torch", f->name);
    if (!tu_read(cdir(f->name, "ref/loss.f64"), &wl, sizeof wl)) tu_check(0, nm, "missing reference loss");
    else tu_check(fabs(r->loss - wl) <= 1e-5 * fabs(wl), nm, "got %.9g want %.9g", r->loss, wl);
    int bad = 0;
    for (int64_t i = 0; i < r->g.n_params; i++) {
        const qlora_param *p = &r->g.params[i];
        snprintf(path, sizeof path, "%s/ref/grad.%s.f32", cdir(f->name, ""), p->name);
        float *want = read_f32(path, p->n);
        snprintf(nm, sizeof nm, "fulltrain/%s/grad/%s", f->name, p->name);
        if (!want) {
            tu_check(0, nm, "missing %s", path);
            continue;
        }
        double mx = 0.0;
        for (int64_t j = 0; j < p->n; j++)
            if (fabs(want[j]) > mx) mx = fabs(want[j]);
        if (!tu_close(nm, p->g, want, (long)p->n, 1e-3 * mx, 1e-3)) bad++;
        free(want);
    }
    // finite differences (float64, torch model) on two elements of every tensor
    FILE *fp = fopen(cdir(f->name, "ref/fd.txt"), "r");
    snprintf(nm, sizeof nm, "fulltrain/%s/finite_differences", f->name);
    if (!fp) {
        tu_check(0, nm, "missing fd.txt");
        return;
    }
    char name[128];
    long long idx;
    double fd;
    int n = 0, nbad = 0, tensors_seen = 0;
    char worst[256] = "";
    const char *last = "";
    while (fscanf(fp, "%127s %lld %lf", name, &idx, &fd) == 3) {
        const qlora_param *p = NULL;
        for (int64_t i = 0; i < r->g.n_params && !p; i++)
            if (!strcmp(r->g.params[i].name, name)) p = &r->g.params[i];
        n++;
        if (!p || idx < 0 || idx >= p->n) {
            nbad++;
            snprintf(worst, sizeof worst, "unknown tensor/index %s %lld", name, idx);
            continue;
        }
        if (strcmp(last, p->name)) tensors_seen++;
        last = p->name;
        double mx = 0.0;
        for (int64_t j = 0; j < p->n; j++)
            if (fabs(p->g[j]) > mx) mx = fabs(p->g[j]);
        double got = p->g[idx];
        if (!(fabs(got - fd) <= 1e-3 * mx + 1e-3 * fabs(fd))) {
            nbad++;
            snprintf(worst, sizeof worst, "%s[%lld] got %.9g fd %.9g", name, idx, got, fd);
        }
    }
    fclose(fp);
    tu_check(nbad == 0 && n == 2 * r->g.n_params && tensors_seen == r->g.n_params, nm,
             "%d of %d off (%d tensors seen of %lld); %s", nbad, n, tensors_seen, (long long)r->g.n_params,
             worst);
}

// The dense projections are plain sgemm: KV-cache prefill gives the full forward's last logits.
static void check_inference(cres *r) {
    qlora_kv_cache kv;
    qlora_train_state ts;
    qlora_error err;
    const inputs *in = &r->in;
    int64_t V = r->m.cfg.vocab_size, T = in->T;
    float *last = (float *)malloc(sizeof(float) * (size_t)V);
    int ok = 0;
    if (qlora_train_state_init(&ts, &r->m, in->B, T, 0, &err) == QLORA_OK) {
        if (qlora_model_forward_eval(&r->m, &ts, in->tokens, in->mask, NULL, NULL, &err) == QLORA_OK &&
            qlora_kv_cache_init(&kv, &r->m, T, 0, &err) == QLORA_OK) {
            if (qlora_model_prefill(&r->m, &kv, in->tokens, T, last, &err) == QLORA_OK) {
                ok = 1;
                double mx = 0.0;
                for (int64_t j = 0; j < V; j++)
                    if (fabs(ts.logits[(T - 1) * V + j]) > mx) mx = fabs(ts.logits[(T - 1) * V + j]);
                tu_close("fulltrain/dense_prefill_matches_forward", last, ts.logits + (T - 1) * V, (long)V,
                         1e-5 * mx, 1e-5);
            }
            qlora_kv_cache_free(&kv);
        }
        qlora_train_state_free(&ts);
    }
    if (!ok) tu_check(0, "fulltrain/dense_prefill_matches_forward", "%s", err.detail);
    free(last);
}

#ifdef _OPENMP
// 1 vs 2 OpenMP threads on the built-in GEMM engine (QLORA_KERNEL_SIMD), whose sums do not depend on
// the thread count. (OpenBLAS, the AUTO choice in BLAS builds, may split its sums differently with
// another thread count; that holds for the LoRA path's lm_head backward as well.)
static void check_threads(void) {
    const fcase f = { "threads", 128, 344, 2, 8, 4, 0, 1000, 0, 0, 2, quick ? 16 : 32 };
    qlora_model m;
    inputs in;
    int max_threads = omp_get_max_threads();
    if (!make_model(&m, &f, 31)) {
        tu_check(0, "fulltrain/threads_1_vs_2_bit_identical_engine", "model");
        return;
    }
    make_inputs(&in, &f, 32);
    m.exec.kernel = QLORA_KERNEL_SIMD;
    float l1 = 0, l2 = 0;
    int64_t n1 = 0, n2 = 0;
    omp_set_num_threads(1);
    float *a = grads_of(&m, &in, 0, &l1, &n1);
    omp_set_num_threads(2);
    float *b = grads_of(&m, &in, 0, &l2, &n2);
    omp_set_num_threads(max_threads);
    long first = -1;
    for (int64_t i = 0; a && b && i < n1 && first < 0; i++)
        if (memcmp(&a[i], &b[i], sizeof(float))) first = (long)i;
    tu_check(a && b && n1 == n2 && l1 == l2 && first < 0, "fulltrain/threads_1_vs_2_bit_identical_engine",
             "loss %.9g vs %.9g, first differing gradient element %ld", (double)l1, (double)l2, first);
    free(a);
    free(b);
    qlora_model_free(&m);
}
#endif

// 30 AdamW steps on one fixed batch of a tiny model made by qlora_model_init_random_dense: the loss
// must fall well below its start (memorization).
static void check_adamw(void) {
    qlora_llama_config cfg;
    const fcase f = { "adamw", 64, 128, 2, 4, 2, 0, 64, 1, 0, 4, 16 };
    set_cfg(&cfg, &f);
    qlora_model m;
    qlora_train_state ts;
    qlora_model_grads g;
    qlora_adamw opt;
    qlora_error err;
    inputs in;
    int steps = 30;
    float first = 0.0f, loss = 0.0f;
    make_inputs(&in, &f, 41);
    for (int i = 0; i < in.B * in.T; i++) {   // no padding here
        in.mask[i] = 1;
        in.tokens[i] = in.labels[i] = 3 + (int32_t)((i * 7 + i / 5) % 61);
    }
    qlora_status st = qlora_model_init_random_dense(&m, &cfg, NULL, 5, &err);
    if (st != QLORA_OK) {
        tu_check(0, "fulltrain/adamw_30_steps_loss_falls", "%s", err.detail);
        return;
    }
    memset(&ts, 0, sizeof ts);
    memset(&g, 0, sizeof g);
    memset(&opt, 0, sizeof opt);
    st = qlora_train_state_init(&ts, &m, in.B, in.T, 1, &err);
    if (st == QLORA_OK) st = qlora_model_grads_init(&g, &m, &err);
    qlora_adamw_config ac = qlora_adamw_default_config();
    ac.lr = 1e-2f;
    ac.weight_decay = 0.0f;
    ac.max_grad_norm = 1.0f;
    if (st == QLORA_OK) st = qlora_adamw_init(&opt, g.params, g.n_params, &ac, &err);
    for (int s = 0; s < steps && st == QLORA_OK; s++) {
        qlora_model_grads_zero(&g);
        st = fwd_bwd(&m, &ts, &in, &g, &loss, &err);
        if (st == QLORA_OK) st = qlora_adamw_step(&opt, NULL, &err);
        if (s == 0) first = loss;
    }
    tu_check(st == QLORA_OK && first > 3.5f && loss < 0.5f * first, "fulltrain/adamw_30_steps_loss_falls",
             "status %d (%s); loss %.4f -> %.4f", (int)st, st == QLORA_OK ? "" : err.detail, (double)first,
             (double)loss);
    printf("# adamw: loss %.4f -> %.4f after %d steps, %lld parameters\n", (double)first, (double)loss, steps,
           (long long)g.n_floats);
    qlora_adamw_free(&opt);
    qlora_model_grads_free(&g);
    qlora_train_state_free(&ts);
    qlora_model_free(&m);
}

static int file_contains(const char *path, const char *needle) {
    void *d = NULL;
    size_t n = 0;
    if (qlora_read_file(path, &d, &n, NULL) != QLORA_OK) return -1;
    int r = strstr((const char *)d, needle) != NULL;
    QLORA_FREE(d);
    return r;
}

static int same_nf4(const qlora_nf4 *a, const qlora_nf4 *b) {
    int64_t n = a->rows * a->cols, nb = qlora_nf4_num_blocks(n, a->blocksize);
    if (a->rows != b->rows || a->cols != b->cols || a->blocksize != b->blocksize ||
        a->double_quant != b->double_quant || memcmp(a->codes, b->codes, (size_t)((n + 1) / 2)))
        return 0;
    if (!a->double_quant) return !memcmp(a->absmax, b->absmax, sizeof(float) * (size_t)nb);
    return !memcmp(a->qabsmax, b->qabsmax, (size_t)nb) && a->nested_offset == b->nested_offset &&
           !memcmp(a->nested_absmax, b->nested_absmax,
                   sizeof(float) * (size_t)qlora_nf4_num_blocks(nb, QLORA_DQ_BLOCK));
}

// save_dense → qlora_model_load: NF4 (the normal QLoRA path), dense (continued pretraining), BF16.
static void check_roundtrip(cres *r) {
    qlora_error err;
    qlora_model *m = &r->m, q, d, e;
    const qlora_llama_config *c = &m->cfg;
    const inputs *in = &r->in;
    int64_t M = (int64_t)in->B * in->T, V = c->vocab_size, C = c->hidden_size;
    const char *dir = cdir(CASES[0].name, "model");   // F32, written by run_case
    memset(&q, 0, sizeof q);
    memset(&d, 0, sizeof d);
    memset(&e, 0, sizeof e);
    // NF4: the loader quantizes exactly what qlora_nf4_quantize makes of the dense weights
    qlora_status st = qlora_model_load(&q, dir, NULL, &err);
    if (!tu_check(st == QLORA_OK && !q.dense, "fulltrain/save_dense_load_nf4", "%s", err.detail)) return;
    int same = 1;
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            qlora_nf4 w;
            const qlora_nf4 *lw = &q.layers[l].w[t];
            if (qlora_nf4_quantize(&w, m->layers[l].dense[t], lw->rows, lw->cols, QLORA_NF4_BLOCK_DEFAULT, 1,
                                   &err) != QLORA_OK || !same_nf4(&w, lw))
                same = 0;
            qlora_nf4_free(&w);
        }
    same = same && !memcmp(q.embed, m->embed, sizeof(float) * (size_t)(V * C)) &&
           !memcmp(q.lm_head, m->lm_head, sizeof(float) * (size_t)(V * C));
    tu_check(same, "fulltrain/save_dense_nf4_codes_equal_quantized_dense", "NF4 weights differ");
    // logits of the NF4 model = logits of the dense model whose projections are dequant(quant(W))
    qlora_train_state ts;
    float *lq = (float *)malloc(sizeof(float) * (size_t)(M * V));
    int ok = 0;
    {
        qlora_model_options o;
        memset(&o, 0, sizeof o);
        o.dense = 1;
        st = qlora_model_load(&e, dir, &o, &err);   // a dense copy, projections replaced below
    }
    for (int l = 0; st == QLORA_OK && l < c->n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT && st == QLORA_OK; t++)
            st = qlora_nf4_dequantize(e.layers[l].dense[t], &q.layers[l].w[t], &err);
    if (st == QLORA_OK && qlora_train_state_init(&ts, &q, in->B, in->T, 0, &err) == QLORA_OK) {
        if (qlora_model_forward_eval(&q, &ts, in->tokens, in->mask, NULL, NULL, &err) == QLORA_OK) {
            memcpy(lq, ts.logits, sizeof(float) * (size_t)(M * V));
            if (qlora_model_forward_eval(&e, &ts, in->tokens, in->mask, NULL, NULL, &err) == QLORA_OK) {
                ok = 1;
                double mx = 0.0;
                for (int64_t j = 0; j < M * V; j++)
                    if (fabs(ts.logits[j]) > mx) mx = fabs(ts.logits[j]);
                tu_close("fulltrain/save_dense_nf4_logits_equal_quantized_dense", lq, ts.logits, (long)(M * V),
                         1e-4 * mx, 1e-4);
            }
        }
        qlora_train_state_free(&ts);
    }
    if (!ok) tu_check(0, "fulltrain/save_dense_nf4_logits_equal_quantized_dense", "%s", err.detail);
    qlora_model_free(&e);
    // dense reload: every tensor and the logits bit-identical
    {
        qlora_model_options o;
        memset(&o, 0, sizeof o);
        o.dense = 1;
        st = qlora_model_load(&d, dir, &o, &err);
    }
    if (tu_check(st == QLORA_OK && d.dense, "fulltrain/save_dense_load_dense", "%s", err.detail)) {
        same = !memcmp(d.embed, m->embed, sizeof(float) * (size_t)(V * C)) &&
               !memcmp(d.lm_head, m->lm_head, sizeof(float) * (size_t)(V * C)) &&
               !memcmp(d.final_norm, m->final_norm, sizeof(float) * (size_t)C);
        for (int l = 0; l < c->n_layers; l++) {
            same = same && !memcmp(d.layers[l].input_norm, m->layers[l].input_norm, sizeof(float) * (size_t)C) &&
                   !memcmp(d.layers[l].post_norm, m->layers[l].post_norm, sizeof(float) * (size_t)C);
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
                const qlora_nf4 *lw = &q.layers[l].w[t];
                same = same && !memcmp(d.layers[l].dense[t], m->layers[l].dense[t],
                                       sizeof(float) * (size_t)(lw->rows * lw->cols));
            }
        }
        tu_check(same, "fulltrain/save_dense_dense_reload_bit_identical", "a tensor differs");
        tu_check(file_contains(cdir(CASES[0].name, "model/config.json"), "quantization_config") == 0 &&
                     file_contains(cdir(CASES[0].name, "model/config.json"), "\"float32\"") == 1,
                 "fulltrain/save_dense_config_json", "config.json has a quantization_config or no float32");
        // errors: grads of another model of the same shape; NF4 model; no forward
        qlora_model_grads gq;
        st = qlora_model_grads_init(&gq, &q, &err);
        tu_check(st == QLORA_ERR_UNSUPPORTED && strstr(err.detail, "NF4"), "fulltrain/err_grads_of_nf4_model",
                 "status %d: %s", (int)st, err.detail);
        qlora_model_grads gd;
        memset(&gd, 0, sizeof gd);
        if (qlora_train_state_init(&ts, &d, in->B, in->T, 0, &err) == QLORA_OK &&
            qlora_model_grads_init(&gd, &d, &err) == QLORA_OK) {
            st = qlora_model_backward_full(&d, &ts, &gd, 1.0f, &err);
            tu_check(st == QLORA_ERR_ARG && strstr(err.detail, "forward"), "fulltrain/err_backward_without_forward",
                     "status %d: %s", (int)st, err.detail);
            st = qlora_model_forward_train(&d, &ts, in->tokens, in->mask, in->labels, NULL, &err);
            if (st == QLORA_OK) st = qlora_model_backward_full(&d, &ts, &r->g, 1.0f, &err);
            tu_check(st == QLORA_ERR_ARG && strstr(err.detail, "another model"),
                     "fulltrain/err_grads_of_another_model", "status %d: %s", (int)st, err.detail);
        }
        qlora_model_grads_free(&gd);
        qlora_train_state_free(&ts);
        if (qlora_train_state_init(&ts, &q, in->B, in->T, 0, &err) == QLORA_OK) {
            st = qlora_model_forward_train(&q, &ts, in->tokens, in->mask, in->labels, NULL, &err);
            if (st == QLORA_OK) st = qlora_model_backward_full(&q, &ts, &r->g, 1.0f, &err);
            tu_check(st == QLORA_ERR_UNSUPPORTED, "fulltrain/err_backward_full_nf4_model", "status %d: %s", (int)st,
                     err.detail);
            qlora_train_state_free(&ts);
        }
        st = qlora_model_save_bnb4(&d, cdir(CASES[0].name, "model"), &err);
        tu_check(st == QLORA_ERR_UNSUPPORTED, "fulltrain/err_save_bnb4_dense", "status %d", (int)st);
        st = qlora_model_load_adapter(&d, cdir(CASES[0].name, "model"), &err);
        tu_check(st == QLORA_ERR_UNSUPPORTED, "fulltrain/err_load_adapter_dense", "status %d", (int)st);
        st = qlora_model_save_dense(&d, cdir(CASES[0].name, "model"), QLORA_DTYPE_I32, &err);
        tu_check(st == QLORA_ERR_ARG, "fulltrain/err_save_dense_dtype", "status %d", (int)st);
        st = qlora_model_backward_full(&d, NULL, &r->g, 1.0f, &err);
        tu_check(st == QLORA_ERR_ARG, "fulltrain/err_null", "status %d", (int)st);
    }
    // BF16 save of the dense model → dense load gives the bf16-rounded weights
    char bdir[800];
    snprintf(bdir, sizeof bdir, "%s", cdir("bf16", ""));
    mkdir(bdir, 0755);
    st = qlora_model_save_dense(m, bdir, QLORA_DTYPE_BF16, &err);
    qlora_model_free(&e);
    if (st == QLORA_OK) {
        qlora_model_options o;
        memset(&o, 0, sizeof o);
        o.dense = 1;
        st = qlora_model_load(&e, bdir, &o, &err);
    }
    if (tu_check(st == QLORA_OK, "fulltrain/save_dense_bf16", "%s", err.detail)) {
        const qlora_nf4 *lw = &q.layers[1].w[QLORA_TARGET_DOWN];
        int64_t n = lw->rows * lw->cols;
        uint16_t *h = (uint16_t *)malloc(2 * (size_t)n);
        float *back = (float *)malloc(4 * (size_t)n);
        qlora_f32_to_bf16(h, m->layers[1].dense[QLORA_TARGET_DOWN], n);
        qlora_bf16_to_f32(back, h, n);
        int eq = !memcmp(back, e.layers[1].dense[QLORA_TARGET_DOWN], 4 * (size_t)n);
        qlora_f32_to_bf16(h, m->embed, 1);
        qlora_bf16_to_f32(back, h, 1);
        eq = eq && back[0] == e.embed[0];
        tu_check(eq && file_contains(cdir("bf16", "config.json"), "\"bfloat16\"") == 1,
                 "fulltrain/save_dense_bf16_rounded", "weights are not the bf16 rounding, or torch_dtype wrong");
        free(h);
        free(back);
    }
    qlora_model_free(&e);
    // an NF4 model saves dequantized: reloading it dense gives dequant(W) exactly
    char ndir[800];
    snprintf(ndir, sizeof ndir, "%s", cdir("nf4_dense", ""));
    mkdir(ndir, 0755);
    st = qlora_model_save_dense(&q, ndir, QLORA_DTYPE_F32, &err);
    if (st == QLORA_OK) {
        qlora_model_options o;
        memset(&o, 0, sizeof o);
        o.dense = 1;
        st = qlora_model_load(&e, ndir, &o, &err);
    }
    if (tu_check(st == QLORA_OK, "fulltrain/save_dense_of_nf4_model", "%s", err.detail)) {
        const qlora_nf4 *lw = &q.layers[0].w[QLORA_TARGET_GATE];
        float *w = (float *)malloc(4 * (size_t)(lw->rows * lw->cols));
        qlora_nf4_dequantize(w, lw, NULL);
        tu_check(!memcmp(w, e.layers[0].dense[QLORA_TARGET_GATE], 4 * (size_t)(lw->rows * lw->cols)),
                 "fulltrain/save_dense_of_nf4_model_dequantized", "gate_proj differs from dequant(W)");
        free(w);
    }
    qlora_model_free(&e);
    qlora_model_free(&d);
    qlora_model_free(&q);
    free(lq);
}

static void check_options(void) {
    qlora_llama_config cfg;
    qlora_model m;
    qlora_model_options o;
    qlora_error err;
    set_cfg(&cfg, &CASES[0]);
    memset(&o, 0, sizeof o);
    o.dense = 1;
    o.lora.rank = 4;
    o.lora.alpha = 8.0f;
    qlora_status st = qlora_model_init_random_dense(&m, &cfg, &o, 1, &err);
    tu_check(st == QLORA_ERR_UNSUPPORTED && strstr(err.detail, "dense"), "fulltrain/err_lora_on_dense",
             "status %d: %s", (int)st, err.detail);
    // the init: norms 1, o/down std 0.02/√(2L), others 0.02, thread-count independent by construction
    o.lora.rank = 0;
    cfg.hidden_size = 64;
    cfg.n_heads = 4;
    cfg.n_kv_heads = 2;
    cfg.head_dim = 16;
    cfg.intermediate_size = 256;
    cfg.n_layers = 2;
    st = qlora_model_init_random(&m, &cfg, &o, 9, &err);   // dense = 1 → init_random_dense
    if (tu_check(st == QLORA_OK && m.dense, "fulltrain/init_random_dense", "%s", err.detail)) {
        double s1 = 0, s2 = 0, m1 = 0;
        int64_t n1 = 64 * 256, n2 = 256 * 64;
        for (int64_t i = 0; i < n1; i++) {
            s1 += (double)m.layers[0].dense[QLORA_TARGET_GATE][i] * m.layers[0].dense[QLORA_TARGET_GATE][i];
            m1 += m.layers[0].dense[QLORA_TARGET_GATE][i];
        }
        for (int64_t i = 0; i < n2; i++)
            s2 += (double)m.layers[1].dense[QLORA_TARGET_DOWN][i] * m.layers[1].dense[QLORA_TARGET_DOWN][i];
        double sd1 = sqrt(s1 / (double)n1), sd2 = sqrt(s2 / (double)n2), mean = m1 / (double)n1;
        tu_check(fabs(sd1 - 0.02) < 0.001 && fabs(sd2 - 0.01) < 0.0005 && fabs(mean) < 0.001 &&
                     m.layers[1].post_norm[5] == 1.0f && m.final_norm[0] == 1.0f &&
                     qlora_model_weight_bytes(&m) > 4 * 2 * 7 * 64 * 64,
                 "fulltrain/init_random_dense_statistics", "std %.5f (want 0.02), down std %.5f (want 0.01), "
                 "mean %.5f", sd1, sd2, mean);
        qlora_model_free(&m);
    }
}

int main(void) {
    const char *qe = getenv("QLORA_TEST_QUICK");
    quick = qe && *qe && strcmp(qe, "0") != 0;
    mkdir(tu_tmpdir(), 0755);
    snprintf(ROOT, sizeof ROOT, "%s", tu_path("fulltrain"));
    mkdir(ROOT, 0755);
    check_options();
    static cres res[N_CASES];
    for (int i = 0; i < N_CASES; i++) run_case(&CASES[i], &res[i], i);
    if (res[0].ok) {
        check_inference(&res[0]);
        check_roundtrip(&res[0]);
    }
#ifdef _OPENMP
    check_threads();
#else
    tu_skip("fulltrain/threads_1_vs_2_bit_identical_engine", "built without OpenMP");
#endif
    check_adamw();
    if (!tu_have_python("torch numpy")) {
        tu_skip("fulltrain/torch_reference", "/usr/bin/python3 with torch and numpy is not available");
    } else if (tu_check(tu_python("test/ref/llama_full_ref.py ref %s", ROOT) == 0, "fulltrain/torch_reference",
                        "llama_full_ref.py ref failed")) {
        for (int i = 0; i < N_CASES; i++) compare_case(&CASES[i], &res[i]);
    }
    for (int i = 0; i < N_CASES; i++) {
        qlora_model_grads_free(&res[i].g);
        qlora_model_free(&res[i].m);
    }
    return tu_finish();
}
