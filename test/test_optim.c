// test_optim.c - AdamW (bitsandbytes 32-bit and 8-bit blockwise arithmetic, torch order), LR
// schedules, global gradient clipping, the pager (bit-identical under any budget, resident memory
// within budget), thread-count independence, and the optimizer checkpoint (resume bit-identical,
// validation of damaged files). References: test/ref/optim_ref.py (numpy re-implementation of the
// bitsandbytes kernels; torch.optim.AdamW; transformers' schedule formulas).
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

static int quick;

// ---------------------------------------------------------------------------------------------
// helpers

typedef struct tset {
    int      n;          // tensors
    int64_t  size[8];
    float   *w[8], *g[8];
    qlora_param p[8];
} tset;

static void tset_init(tset *t, int n, const int64_t *sizes, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->n = n;
    tu_seed(seed);
    for (int i = 0; i < n; i++) {
        t->size[i] = sizes[i];
        t->w[i] = (float *)malloc((size_t)sizes[i] * 4);
        t->g[i] = (float *)calloc((size_t)sizes[i], 4);
        tu_fill_normal(t->w[i], (long)sizes[i], 0.05);
        t->p[i].w = t->w[i];
        t->p[i].g = t->g[i];
        t->p[i].n = sizes[i];
    }
}

static void tset_free(tset *t) {
    for (int i = 0; i < t->n; i++) {
        free(t->w[i]);
        free(t->g[i]);
    }
}

static int tset_equal(const tset *a, const tset *b) {
    for (int i = 0; i < a->n; i++)
        if (a->size[i] != b->size[i] || memcmp(a->w[i], b->w[i], (size_t)a->size[i] * 4) != 0) return 0;
    return 1;
}

// Gradients that depend on the weights (so any deviation propagates) plus counter-based noise.
static void grads_from_weights(tset *t, int64_t step) {
    for (int i = 0; i < t->n; i++)
        for (int64_t j = 0; j < t->size[i]; j++) {
            float u = qlora_hash_uniform(0x5EEDull + (uint64_t)step * 131 + (uint64_t)i, (uint64_t)j) - 0.5f;
            t->g[i][j] = 0.05f * t->w[i][j] + 0.02f * u;
        }
}

// Copies the fp32 state (m, v) or the 8-bit state (a1, a2, q1, q2) of tensor i out of the pages.
static void get_state(qlora_adamw *opt, int64_t i, float *m, float *v, uint8_t *q1, uint8_t *q2, float *a1, float *a2) {
    for (int64_t j = 0; j < opt->n_chunks; j++) {
        const qlora_adamw_chunk *ch = &opt->chunks[j];
        if (ch->param != i) continue;
        int64_t k = ch->hi - ch->lo, nb = (k + 255) / 256;
        uint8_t *base;
        if (qlora_pager_get(&opt->pager, ch->page, 0, &base, NULL) != QLORA_OK) return;
        base += ch->offset;
        if (!opt->is8bit[i]) {
            memcpy(m + ch->lo, base, (size_t)k * 4);
            memcpy(v + ch->lo, base + 4 * k, (size_t)k * 4);
        } else {
            memcpy(a1 + ch->lo / 256, base, (size_t)nb * 4);
            memcpy(a2 + ch->lo / 256, base + 4 * nb, (size_t)nb * 4);
            memcpy(q1 + ch->lo, base + 8 * nb, (size_t)k);
            memcpy(q2 + ch->lo, base + 8 * nb + k, (size_t)k);
        }
    }
}

static int64_t count_equal(const void *a, const void *b, int64_t n) {
    int64_t e = 0;
    for (int64_t i = 0; i < n; i++) e += memcmp((const char *)a + 4 * i, (const char *)b + 4 * i, 4) == 0;
    return e;
}

static int read_f32(const char *path, float *x, int64_t n) { return tu_read(path, x, (size_t)n * 4); }

// ---------------------------------------------------------------------------------------------
// LR schedules

static int have_ref = -1;   // /usr/bin/python3 has numpy and torch (checked once: importing torch is slow)
static char ref_args[4096];  // "MODE DIR" pairs for the single optim_ref.py call

static int need_ref(const char *name) {
    if (have_ref < 0) have_ref = tu_have_python("numpy torch");
    if (!have_ref) tu_skip(name, "/usr/bin/python3 lacks numpy or torch (apt-get install python3-numpy python3-torch)");
    return have_ref;
}

static void add_ref(const char *mode, const char *dir) {
    size_t n = strlen(ref_args);
    snprintf(ref_args + n, sizeof ref_args - n, " %s %s", mode, dir);
}

// 0 when optim_ref.py finished the job in dir.
static int ref_status(const char *dir) {
    char path[600];
    snprintf(path, sizeof path, "%s/ref_status", dir);
    FILE *f = fopen(path, "r");
    int rc = -1;
    if (f) {
        if (fscanf(f, "%d", &rc) != 1) rc = -1;
        fclose(f);
    }
    return rc;
}

static void test_schedules_local(void) {
    float lr = 2e-4f;
    // hand-checked values (transformers semantics: the factor of the update after `step` updates)
    int ok = qlora_lr_at(QLORA_LR_CONSTANT, lr, 0, 10, 100) == lr && qlora_lr_at(QLORA_LR_CONSTANT, lr, 5, 10, 100) == lr;
    tu_check(ok, "constant ignores warmup (transformers 'constant')", "got %g at step 0",
             (double)qlora_lr_at(QLORA_LR_CONSTANT, lr, 0, 10, 100));
    ok = qlora_lr_at(QLORA_LR_CONSTANT_WITH_WARMUP, lr, 0, 10, 100) == 0.0f &&
         qlora_lr_at(QLORA_LR_CONSTANT_WITH_WARMUP, lr, 5, 10, 100) == (float)(0.5 * (double)lr) &&
         qlora_lr_at(QLORA_LR_CONSTANT_WITH_WARMUP, lr, 10, 10, 100) == lr &&
         qlora_lr_at(QLORA_LR_CONSTANT_WITH_WARMUP, lr, 1000, 10, 100) == lr;
    tu_check(ok, "constant_with_warmup: 0, lr/2, lr, lr", NULL);
    ok = qlora_lr_at(QLORA_LR_LINEAR, lr, 55, 10, 100) == (float)(0.5 * (double)lr) &&
         qlora_lr_at(QLORA_LR_LINEAR, lr, 100, 10, 100) == 0.0f && qlora_lr_at(QLORA_LR_LINEAR, lr, 150, 10, 100) == 0.0f;
    tu_check(ok, "linear: lr/2 half-way after warmup, 0 at and after total", NULL);
    ok = qlora_lr_at(QLORA_LR_COSINE, lr, 55, 10, 100) == (float)(0.5 * (double)lr) &&
         qlora_lr_at(QLORA_LR_COSINE, lr, 10, 10, 100) == lr && qlora_lr_at(QLORA_LR_COSINE, lr, 100, 10, 100) == 0.0f;
    tu_check(ok, "cosine: lr at warmup end, lr/2 half-way, 0 at total", "got %.9g at 55",
             (double)qlora_lr_at(QLORA_LR_COSINE, lr, 55, 10, 100));
}

static const struct { const char *name; qlora_lr_schedule k; int64_t warm, total, n; } sched_cases[] = {
    {"constant", QLORA_LR_CONSTANT, 3, 20, 25}, {"constant_with_warmup", QLORA_LR_CONSTANT_WITH_WARMUP, 3, 20, 25},
    {"linear", QLORA_LR_LINEAR, 3, 20, 25},     {"cosine", QLORA_LR_COSINE, 3, 20, 25},
    {"linear", QLORA_LR_LINEAR, 0, 7, 9},        {"cosine", QLORA_LR_COSINE, 0, 7, 9}};
#define N_SCHED ((int)(sizeof sched_cases / sizeof sched_cases[0]))
static const float sched_lr = 2e-4f;

static int sched_prepare(void) {
    if (!need_ref("schedules equal transformers' formulas")) return 0;
    const char *dir = tu_path("optim_sched");
    char cmd[600], path[600];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0) return 0;
    snprintf(path, sizeof path, "%s/sched.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    for (int i = 0; i < N_SCHED; i++)
        fprintf(f, "%s %.9g %lld %lld %lld\n", sched_cases[i].name, (double)sched_lr, (long long)sched_cases[i].warm,
                (long long)sched_cases[i].total, (long long)sched_cases[i].n);
    fclose(f);
    add_ref("sched", dir);
    return 1;
}

static void sched_compare(void) {
    const char *name = "schedules equal transformers' formulas";
    const char *dir = tu_path("optim_sched");
    if (ref_status(dir) != 0) {
        tu_check(0, name, "optim_ref.py sched failed");
        return;
    }
    int total = 0, k = 0;
    for (int i = 0; i < N_SCHED; i++) total += (int)sched_cases[i].n;
    float *want = (float *)malloc((size_t)total * 4), *got = (float *)malloc((size_t)total * 4);
    char path[600];
    snprintf(path, sizeof path, "%s/ref_sched.f32", dir);
    if (read_f32(path, want, total)) {
        for (int i = 0; i < N_SCHED; i++)
            for (int64_t s = 0; s < sched_cases[i].n; s++)
                got[k++] = qlora_lr_at(sched_cases[i].k, sched_lr, s, sched_cases[i].warm, sched_cases[i].total);
        tu_close(name, got, want, total, 0.0, 1e-6);
    } else {
        tu_check(0, name, "cannot read %s", path);
    }
    free(want);
    free(got);
}

// ---------------------------------------------------------------------------------------------
// AdamW against the references

typedef struct refcase {
    const char *name;
    int bits, torch_order, steps, nt;
    int64_t sizes[4];
    float lr, wd, clip, gscale;
    qlora_lr_schedule sched;
    const char *sched_name;
    int64_t warmup, total;
} refcase;

// What a case's C run leaves for the comparison after the Python call.
typedef struct refrun {
    const refcase *c;
    int            ready;
    char           dir[400];
    char           name[200];
    tset           t;
    qlora_adamw    opt;
    double         norms[16];
    int64_t        nonfinite;
} refrun;

static int write_config(const char *dir, const refcase *c) {
    char path[600];
    snprintf(path, sizeof path, "%s/config.txt", dir);
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fprintf(f, "bits %d\nlr %.9g\nbeta1 0.9\nbeta2 0.999\neps 1e-08\nwd %.9g\nsteps %d\nschedule %s\nwarmup %lld\n"
               "total %lld\nclip %.9g\nmin8 4096\nnparams %d\n",
            c->bits, (double)c->lr, (double)c->wd, c->steps, c->sched_name, (long long)c->warmup,
            (long long)c->total, (double)c->clip, c->nt);
    for (int i = 0; i < c->nt; i++) fprintf(f, "size %lld\n", (long long)c->sizes[i]);
    return fclose(f) == 0;
}

static void ref_prepare(refrun *r, const refcase *c) {
    memset(r, 0, sizeof *r);
    r->c = c;
    snprintf(r->name, sizeof r->name, "%s equals %s", c->name, c->torch_order ? "torch.optim.AdamW" : "the numpy bnb kernel");
    if (!need_ref(r->name)) return;
    char path[600], cmd[900];
    snprintf(r->dir, sizeof r->dir, "%s/optim_%d%s", tu_tmpdir(), c->bits, c->torch_order ? "_torch" : "_bnb");
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", r->dir, r->dir);
    if (system(cmd) != 0 || !write_config(r->dir, c)) {
        tu_check(0, r->name, "cannot prepare %s", r->dir);
        return;
    }
    tset *t = &r->t;
    tset_init(t, c->nt, c->sizes, 1234 + (uint64_t)c->bits);
    for (int i = 0; i < t->n; i++) {
        snprintf(path, sizeof path, "%s/p%d.f32", r->dir, i);
        tu_write(path, t->w[i], (size_t)t->size[i] * 4);
    }
    qlora_adamw_config cfg = qlora_adamw_default_config();
    cfg.lr = c->lr;
    cfg.weight_decay = c->wd;
    cfg.optim_bits = c->bits;
    cfg.torch_order = c->torch_order;
    cfg.max_grad_norm = c->clip;
    cfg.schedule = c->sched;
    cfg.warmup_steps = c->warmup;
    cfg.total_steps = c->total;
    cfg.pager.page_bytes = 16384;   // several chunks per tensor
    qlora_error e;
    if (qlora_adamw_init(&r->opt, t->p, t->n, &cfg, &e) != QLORA_OK) {
        tu_check(0, r->name, "init: %s", e.detail);
        tset_free(t);
        return;
    }
    for (int s = 0; s < c->steps; s++) {
        for (int i = 0; i < t->n; i++) {
            tu_fill_normal(t->g[i], (long)t->size[i], c->gscale);
            if (!c->torch_order && s == 2 && i == 1) t->g[i][7] = NAN;        // skip rule
            if (!c->torch_order && s == 3 && i == t->n - 1) t->g[i][100] = -INFINITY;
            snprintf(path, sizeof path, "%s/g%d_%d.f32", r->dir, s, i);
            tu_write(path, t->g[i], (size_t)t->size[i] * 4);
        }
        qlora_step_stats st;
        qlora_adamw_step(&r->opt, &st, NULL);
        r->norms[s] = st.grad_norm;
        r->nonfinite += st.nonfinite;
    }
    if (!c->torch_order) {   // the reference also reads the checkpoint with its own parser
        snprintf(path, sizeof path, "%s/opt.ckpt", r->dir);
        qlora_adamw_save(&r->opt, path, NULL, NULL);
    }
    add_ref(c->torch_order ? "torch" : "bnb", r->dir);
    r->ready = 1;
}

static void ref_compare(refrun *r) {
    if (!r->ready) return;
    const refcase *c = r->c;
    tset *t = &r->t;
    qlora_adamw *opt = &r->opt;
    char path[600], name[260];
    int rc = ref_status(r->dir);
    if (rc != 0) {
        tu_check(0, r->name, "optim_ref.py exited with %d%s", rc,
                 rc == 3 ? " (its reader of the checkpoint found a difference)" : "");
    } else if (!c->torch_order) {
        tu_check(r->nonfinite == 2, "NaN/Inf gradient elements are counted and skipped", "%lld", (long long)r->nonfinite);
        // bit-exact: the numpy kernel uses the same fp32 operations in the same order
        int64_t total = 0, equal = 0;
        int states_ok = 1;
        for (int i = 0; i < t->n; i++) {
            int64_t n = t->size[i];
            float *want = (float *)malloc((size_t)n * 4);
            snprintf(path, sizeof path, "%s/ref_p%d.f32", r->dir, i);
            if (read_f32(path, want, n)) {
                equal += count_equal(t->w[i], want, n);
                total += n;
            }
            free(want);
            if (!opt->is8bit[i]) {
                float *m = (float *)malloc((size_t)n * 4), *v = (float *)malloc((size_t)n * 4);
                float *rm = (float *)malloc((size_t)n * 4), *rv = (float *)malloc((size_t)n * 4);
                get_state(opt, i, m, v, NULL, NULL, NULL, NULL);
                snprintf(path, sizeof path, "%s/ref_m%d.f32", r->dir, i);
                int r1 = read_f32(path, rm, n);
                snprintf(path, sizeof path, "%s/ref_v%d.f32", r->dir, i);
                int r2 = read_f32(path, rv, n);
                if (!r1 || !r2 || count_equal(m, rm, n) != n || count_equal(v, rv, n) != n) states_ok = 0;
                free(m); free(v); free(rm); free(rv);
            } else {
                int64_t nb = (n + 255) / 256;
                uint8_t *q1 = (uint8_t *)malloc((size_t)n), *q2 = (uint8_t *)malloc((size_t)n);
                uint8_t *r1 = (uint8_t *)malloc((size_t)n), *r2 = (uint8_t *)malloc((size_t)n);
                float *a1 = (float *)malloc((size_t)nb * 4), *a2 = (float *)malloc((size_t)nb * 4);
                float *ra1 = (float *)malloc((size_t)nb * 4), *ra2 = (float *)malloc((size_t)nb * 4);
                get_state(opt, i, NULL, NULL, q1, q2, a1, a2);
                int ok = 1;
                snprintf(path, sizeof path, "%s/ref_q1_%d.u8", r->dir, i);
                ok &= tu_read(path, r1, (size_t)n);
                snprintf(path, sizeof path, "%s/ref_q2_%d.u8", r->dir, i);
                ok &= tu_read(path, r2, (size_t)n);
                snprintf(path, sizeof path, "%s/ref_a1_%d.f32", r->dir, i);
                ok &= read_f32(path, ra1, nb);
                snprintf(path, sizeof path, "%s/ref_a2_%d.f32", r->dir, i);
                ok &= read_f32(path, ra2, nb);
                if (!ok || memcmp(q1, r1, (size_t)n) || memcmp(q2, r2, (size_t)n) || count_equal(a1, ra1, nb) != nb ||
                    count_equal(a2, ra2, nb) != nb)
                    states_ok = 0;
                free(q1); free(q2); free(r1); free(r2); free(a1); free(a2); free(ra1); free(ra2);
            }
        }
        tu_check(total > 0 && equal == total, r->name, "%lld of %lld parameters bit-equal", (long long)equal,
                 (long long)total);
        snprintf(name, sizeof name, "%s states (m, v%s) bit-equal, also as read from the checkpoint by Python", c->name,
                 c->bits == 8 ? ", codes, absmax" : "");
        tu_check(states_ok, name, "state differs");
    } else {
        for (int i = 0; i < t->n; i++) {
            int64_t n = t->size[i];
            float *want = (float *)malloc((size_t)n * 4);
            snprintf(path, sizeof path, "%s/ref_p%d.f32", r->dir, i);
            snprintf(name, sizeof name, "%s (tensor %d)", r->name, i);
            if (read_f32(path, want, n)) tu_close(name, t->w[i], want, (long)n, 1e-7, 2e-6);
            else tu_check(0, name, "cannot read %s", path);
            free(want);
        }
        double want_norm[16];
        snprintf(path, sizeof path, "%s/ref_norm.f64", r->dir);
        if (tu_read(path, want_norm, (size_t)c->steps * 8))
            tu_close_d("pre-clip global grad norm equals float64 reference", r->norms, want_norm, c->steps, 0.0, 1e-12);
        else
            tu_check(0, "pre-clip global grad norm equals float64 reference", "cannot read %s", path);
    }
    qlora_adamw_free(opt);
    tset_free(t);
}

static void test_clip(void) {
    int64_t sizes[3] = {1000, 3, 70000};
    tset t;
    tset_init(&t, 3, sizes, 99);
    double want = 0.0;
    for (int i = 0; i < 3; i++) {
        tu_fill_normal(t.g[i], (long)sizes[i], 1.0);
        for (int64_t j = 0; j < sizes[i]; j++) want += (double)t.g[i][j] * t.g[i][j];
    }
    want = sqrt(want);
    double norm = qlora_clip_grad_norm(t.p, 3, 0.3f);
    double after = qlora_grad_norm(t.p, 3);
    tu_check(fabs(norm - want) <= 1e-9 * want, "grad norm is the global L2 norm (double)", "%.12g vs %.12g", norm, want);
    tu_check(fabs(after - 0.3) < 1e-6, "clipping scales the global norm to max_grad_norm", "norm after %.9g", after);
    double again = qlora_clip_grad_norm(t.p, 3, 0.3f);
    float before0 = t.g[0][0];
    tu_check(fabs(again - after) < 1e-12 && t.g[0][0] == before0, "a norm below the threshold is left alone", NULL);
    t.g[1][1] = NAN;
    double nn = qlora_clip_grad_norm(t.p, 3, 0.3f);
    tu_check(isnan(nn) && t.g[0][0] == before0, "a NaN gradient gives a NaN norm and no scaling", NULL);
    tset_free(&t);
}

// ---------------------------------------------------------------------------------------------
// Pager: bit-identical under any budget / page size; peak resident within budget

static void train(tset *t, qlora_adamw *opt, int64_t steps) {
    for (int64_t s = 0; s < steps; s++) {
        grads_from_weights(t, opt->step);
        qlora_adamw_step(opt, NULL, NULL);
    }
}

static void test_paged(int bits) {
    static const int64_t sizes[4] = {8 * 512, 512 * 8, 8 * 700, 900 * 8};   // LoRA-shaped A and B
    int64_t steps = quick ? 20 : 50;
    struct { int64_t page, budget; } run[4] = {{0, 0}, {16384, 16384}, {16384, 32768}, {4096, 3 * 4096}};
    tset t[4];
    qlora_adamw opt[4];
    char name[200];
    int init_ok = 1;
    for (int r = 0; r < 4; r++) {
        tset_init(&t[r], 4, sizes, 7);
        qlora_adamw_config cfg = qlora_adamw_default_config();
        cfg.lr = 1e-3f;
        cfg.optim_bits = bits;
        cfg.max_grad_norm = 0.3f;
        cfg.schedule = QLORA_LR_COSINE;
        cfg.warmup_steps = 3;
        cfg.total_steps = steps;
        cfg.pager.page_bytes = run[r].page;
        cfg.pager.budget_bytes = run[r].budget;
        cfg.pager.dir = tu_tmpdir();
        qlora_error e;
        if (qlora_adamw_init(&opt[r], t[r].p, 4, &cfg, &e) != QLORA_OK) {
            tu_check(0, "paged init", "%s", e.detail);
            init_ok = 0;
        }
    }
    if (init_ok) {
        for (int r = 0; r < 4; r++) train(&t[r], &opt[r], steps);
        int same = 1;
        for (int r = 1; r < 4; r++) same &= tset_equal(&t[0], &t[r]);
        snprintf(name, sizeof name, "%d-bit: %lld steps under budgets of 1, 2, 3 pages = unlimited (memcmp)", bits,
                 (long long)steps);
        tu_check(same, name, "parameters differ");
        int within = 1, paged = 1;
        for (int r = 1; r < 4; r++) {
            within &= opt[r].pager.peak_resident_bytes <= run[r].budget;
            paged &= opt[r].pager.page_outs > 0 && opt[r].pager.page_ins > 0;
        }
        snprintf(name, sizeof name, "%d-bit: pager peak resident bytes <= budget, pages went to the file and back", bits);
        tu_check(within && paged, name, "peak %lld for budget %lld; outs %lld ins %lld",
                 (long long)opt[1].pager.peak_resident_bytes, (long long)run[1].budget, (long long)opt[1].pager.page_outs,
                 (long long)opt[1].pager.page_ins);
    }
    for (int r = 0; r < 4; r++) {
        qlora_adamw_free(&opt[r]);
        tset_free(&t[r]);
    }
}

// Resident memory: VmHWM of a child process that trains ~200 MB of fp32 state, unlimited vs 2 pages.
static long proc_status_kb(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0) v = strtol(line + n, NULL, 10);
    fclose(f);
    return v;
}

static void hwm_child(int fd, int64_t n, int64_t budget) {
#ifdef _OPENMP
    omp_set_num_threads(1);   // this measures memory; one thread keeps it quick on a busy machine
#endif
    long base = proc_status_kb("VmRSS:");
    float *w = (float *)calloc((size_t)n, 4), *g = (float *)malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) g[i] = 1e-3f * (float)(i % 97);
    qlora_param p;
    memset(&p, 0, sizeof p);
    p.name = "big";
    p.w = w;
    p.g = g;
    p.n = n;
    qlora_adamw_config cfg = qlora_adamw_default_config();
    cfg.pager.budget_bytes = budget;
    cfg.pager.dir = tu_tmpdir();
    qlora_adamw opt;
    long out[3] = {-1, -1, -1};
    if (qlora_adamw_init(&opt, &p, 1, &cfg, NULL) == QLORA_OK) {
        qlora_adamw_step(&opt, NULL, NULL);
        qlora_adamw_step(&opt, NULL, NULL);
        out[0] = base;
        out[1] = proc_status_kb("VmHWM:");
        out[2] = (long)(opt.pager.peak_resident_bytes / 1024);
        qlora_adamw_free(&opt);
    }
    if (write(fd, out, sizeof out) != (ssize_t)sizeof out) _exit(2);
    _exit(0);
}

static int hwm_run(int64_t n, int64_t budget, long out[3]) {
    int fds[2];
    if (pipe(fds) != 0) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        hwm_child(fds[1], n, budget);
    }
    close(fds[1]);
    int ok = pid > 0 && read(fds[0], out, 3 * sizeof(long)) == (ssize_t)(3 * sizeof(long));
    close(fds[0]);
    int status = 0;
    if (pid > 0) waitpid(pid, &status, 0);
    return ok && out[1] > 0;
}

static void test_resident(void) {
    if (proc_status_kb("VmHWM:") < 0) {
        tu_skip("paged state keeps resident memory within budget (VmHWM)", "no /proc/self/status");
        return;
    }
    int64_t n = quick ? (int64_t)2500000 : (int64_t)25000000;   // fp32 state: 8 bytes per element
    int64_t budget = 2 << 20;
    long a[3], b[3];
    if (!hwm_run(n, 0, a) || !hwm_run(n, budget, b)) {
        tu_check(0, "paged state keeps resident memory within budget (VmHWM)", "child process failed");
        return;
    }
    long state_kb = (long)(n * 8 / 1024), params_kb = (long)(n * 8 / 1024);
    printf("# VmHWM with %lld MB of AdamW state: unlimited %ld MB, budget 2 MiB %ld MB (params+grads %ld MB, start %ld MB)\n",
           (long long)(n * 8 >> 20), a[1] >> 10, b[1] >> 10, params_kb >> 10, b[0] >> 10);
    tu_check(b[2] <= budget / 1024 && b[1] - b[0] <= params_kb + budget / 1024 + 16 * 1024 &&
                 a[1] - b[1] >= state_kb * 8 / 10,
             "paged state keeps resident memory within budget (VmHWM)",
             "unlimited %ld kB, budget %ld kB (start %ld kB, pager peak %ld kB)", a[1], b[1], b[0], b[2]);
}

// ---------------------------------------------------------------------------------------------
// Threads

static void test_threads(void) {
#ifndef _OPENMP
    tu_skip("1 and 2 OpenMP threads give identical bits", "built without OpenMP");
#else
    static const int64_t sizes[3] = {300000, 8 * 4096 + 77, 1000};
    int same = 1;
    for (int bits = 8; bits <= 32; bits += 24) {
        tset t[2];
        double norm[2];
        for (int r = 0; r < 2; r++) {
            omp_set_num_threads(r + 1);
            tset_init(&t[r], 3, sizes, 5);
            qlora_adamw_config cfg = qlora_adamw_default_config();
            cfg.optim_bits = bits;
            cfg.max_grad_norm = 0.3f;
            qlora_adamw opt;
            qlora_adamw_init(&opt, t[r].p, 3, &cfg, NULL);
            for (int s = 0; s < 4; s++) {
                grads_from_weights(&t[r], s);
                qlora_step_stats st;
                qlora_adamw_step(&opt, &st, NULL);
                norm[r] = st.grad_norm;
            }
            qlora_adamw_free(&opt);
        }
        same &= tset_equal(&t[0], &t[1]) && memcmp(&norm[0], &norm[1], sizeof(double)) == 0;
        tset_free(&t[0]);
        tset_free(&t[1]);
    }
    omp_set_num_threads(omp_get_num_procs());
    tu_check(same, "1 and 2 OpenMP threads give identical bits (8-bit and fp32, grad norm)", NULL);
#endif
}

// ---------------------------------------------------------------------------------------------
// Checkpoint: resume bit-identical; damaged files rejected

typedef struct trainer {
    tset        t;
    qlora_adamw opt;
    qlora_rng   rng;   // drives the gradient noise: part of what a resume must restore
} trainer;

static void noisy_steps(trainer *tr, int64_t steps) {
    for (int64_t s = 0; s < steps; s++) {
        for (int i = 0; i < tr->t.n; i++)
            for (int64_t j = 0; j < tr->t.size[i]; j++)
                tr->t.g[i][j] = 0.05f * tr->t.w[i][j] + 0.01f * qlora_rng_normal(&tr->rng);
        qlora_adamw_step(&tr->opt, NULL, NULL);
    }
}

static const int64_t ck_sizes[3] = {4096, 5000, 300};
static const char *ck_names[3] = {"model.layers.0.self_attn.q_proj.lora_A.weight",
                                  "model.layers.0.self_attn.q_proj.lora_B.weight", "small"};

static qlora_status trainer_init(trainer *tr, int bits, int64_t budget, const float *const *weights, qlora_error *e) {
    tset_init(&tr->t, 3, ck_sizes, 11);
    for (int i = 0; i < 3; i++) {
        tr->t.p[i].name = ck_names[i];
        if (weights) memcpy(tr->t.w[i], weights[i], (size_t)ck_sizes[i] * 4);
    }
    qlora_rng_seed(&tr->rng, 2024);
    qlora_adamw_config cfg = qlora_adamw_default_config();
    cfg.lr = 2e-3f;
    cfg.optim_bits = bits;
    cfg.max_grad_norm = 0.3f;
    cfg.schedule = QLORA_LR_LINEAR;
    cfg.warmup_steps = 4;
    cfg.total_steps = 30;
    cfg.pager.page_bytes = budget ? 8192 : 0;
    cfg.pager.budget_bytes = budget;
    cfg.pager.dir = tu_tmpdir();
    return qlora_adamw_init(&tr->opt, tr->t.p, 3, &cfg, e);
}

static void trainer_free(trainer *tr) {
    qlora_adamw_free(&tr->opt);
    tset_free(&tr->t);
}

static int files_equal(const char *a, const char *b) {
    void *da = NULL, *db = NULL;
    size_t na = 0, nb = 0;
    int eq = qlora_read_file(a, &da, &na, NULL) == QLORA_OK && qlora_read_file(b, &db, &nb, NULL) == QLORA_OK &&
             na == nb && memcmp(da, db, na) == 0;
    QLORA_FREE(da);
    QLORA_FREE(db);
    return eq;
}

static void test_resume(int bits) {
    char name[200], pa[600], pb[600], pc[600];
    snprintf(pa, sizeof pa, "%s/resume%d_straight.ckpt", tu_tmpdir(), bits);
    snprintf(pb, sizeof pb, "%s/resume%d_half.ckpt", tu_tmpdir(), bits);
    snprintf(pc, sizeof pc, "%s/resume%d_resumed.ckpt", tu_tmpdir(), bits);
    qlora_error e;
    // A: 30 steps straight
    trainer a;
    trainer_init(&a, bits, 0, NULL, NULL);
    noisy_steps(&a, 30);
    qlora_resume_info ia;
    memset(&ia, 0, sizeof ia);
    ia.data_pos[0] = 30;
    ia.data_pos[1] = 7;
    ia.rng = &a.rng;
    ia.rng_bytes = sizeof a.rng;
    qlora_adamw_save(&a.opt, pa, &ia, NULL);
    // B: 15 steps, save (state + rng + position), copy the weights out, drop everything
    trainer b;
    trainer_init(&b, bits, 0, NULL, NULL);
    noisy_steps(&b, 15);
    qlora_resume_info ib;
    memset(&ib, 0, sizeof ib);
    ib.data_pos[0] = 15;
    ib.data_pos[1] = 7;
    ib.rng = &b.rng;
    ib.rng_bytes = sizeof b.rng;
    qlora_status st = qlora_adamw_save(&b.opt, pb, &ib, &e);
    snprintf(name, sizeof name, "%d-bit: checkpoint saved", bits);
    tu_check(st == QLORA_OK, name, "%s", e.detail);
    float *wts[3];
    for (int i = 0; i < 3; i++) {
        wts[i] = (float *)malloc((size_t)ck_sizes[i] * 4);
        memcpy(wts[i], b.t.w[i], (size_t)ck_sizes[i] * 4);
    }
    trainer_free(&b);
    // C: fresh objects (paged this time, other page size), load, 15 more steps
    trainer c;
    trainer_init(&c, bits, 8192, (const float *const *)wts, NULL);
    qlora_rng junk;
    qlora_resume_info ic;
    memset(&ic, 0, sizeof ic);
    ic.rng = &junk;
    ic.rng_bytes = sizeof junk;
    st = qlora_adamw_load(&c.opt, pb, &ic, &e);
    snprintf(name, sizeof name, "%d-bit: checkpoint loads into fresh objects (step, rng, data position)", bits);
    tu_check(st == QLORA_OK && c.opt.step == 15 && ic.data_pos[0] == 15 && ic.data_pos[1] == 7 &&
                 memcmp(&junk, &b.rng, sizeof junk) == 0,
             name, "%s (step %lld)", st == QLORA_OK ? "" : e.detail, (long long)c.opt.step);
    c.rng = junk;
    noisy_steps(&c, 15);
    snprintf(name, sizeof name, "%d-bit: 15 steps + save + load + 15 steps = 30 steps (memcmp)", bits);
    tu_check(tset_equal(&a.t, &c.t), name, "weights differ");
    ic.data_pos[0] = 30;
    ic.rng = &c.rng;
    qlora_adamw_save(&c.opt, pc, &ic, NULL);
    snprintf(name, sizeof name, "%d-bit: resumed checkpoint file identical to the straight run's", bits);
    tu_check(files_equal(pa, pc), name, "%s and %s differ", pa, pc);

    if (bits == 8) {
        // damaged and mismatched files: a clear status, and the optimizer untouched
        void *data = NULL;
        size_t size = 0;
        qlora_read_file(pb, &data, &size, NULL);
        char bad[600];
        snprintf(bad, sizeof bad, "%s/damaged.ckpt", tu_tmpdir());
        int64_t step_before = c.opt.step;
        struct { const char *what; size_t len; long flip; qlora_status want; const char *needle; } cases[] = {
            {"truncated file", size / 2, -1, QLORA_ERR_FORMAT, "truncated"},
            {"truncated header", 100, -1, QLORA_ERR_FORMAT, "truncated"},
            {"bad magic", size, 0, QLORA_ERR_FORMAT, "magic"},
            {"flipped data byte", size, (long)size / 2, QLORA_ERR_FORMAT, "checksum"},
            {"extra bytes", size + 3, -1, QLORA_ERR_FORMAT, "unexpected bytes"},
        };
        for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
            unsigned char *buf = (unsigned char *)calloc(cases[k].len + 1, 1);
            memcpy(buf, data, cases[k].len < size ? cases[k].len : size);
            if (cases[k].flip >= 0) buf[cases[k].flip] ^= 0x40;
            tu_write(bad, buf, cases[k].len);
            free(buf);
            memset(&e, 0, sizeof e);
            st = qlora_adamw_load(&c.opt, bad, &ic, &e);
            snprintf(name, sizeof name, "checkpoint with %s is rejected (%s)", cases[k].what, qlora_status_string(cases[k].want));
            tu_check(st == cases[k].want && strstr(e.detail, cases[k].needle) && strstr(e.detail, bad) &&
                         c.opt.step == step_before,
                     name, "status %d: %s", (int)st, e.detail);
        }
        QLORA_FREE(data);
        // wrong rng size, wrong parameter list, 32-bit optimizer, missing file
        qlora_resume_info small = ic;
        small.rng_bytes = 8;
        st = qlora_adamw_load(&c.opt, pb, &small, &e);
        tu_check(st == QLORA_ERR_SHAPE && strstr(e.detail, "rng"), "checkpoint rng size mismatch is QLORA_ERR_SHAPE", "%s", e.detail);
        trainer d;
        trainer_init(&d, 32, 0, NULL, NULL);
        st = qlora_adamw_load(&d.opt, pb, &ic, &e);
        tu_check(st == QLORA_ERR_SHAPE && strstr(e.detail, "8-bit") && strstr(e.detail, ck_names[0]),
                 "8-bit checkpoint into a 32-bit optimizer is QLORA_ERR_SHAPE naming the tensor", "%s", e.detail);
        trainer_free(&d);
        int64_t other[3] = {4096, 5001, 300};
        tset ot;
        tset_init(&ot, 3, other, 1);
        for (int i = 0; i < 3; i++) ot.p[i].name = ck_names[i];
        qlora_adamw_config cfg = c.opt.cfg;
        qlora_adamw oo;
        qlora_adamw_init(&oo, ot.p, 3, &cfg, NULL);
        st = qlora_adamw_load(&oo, pb, &ic, &e);
        tu_check(st == QLORA_ERR_SHAPE && strstr(e.detail, "5000") && strstr(e.detail, "5001") && strstr(e.detail, ck_names[1]),
                 "a size that does not match the parameter list is QLORA_ERR_SHAPE with both sizes", "%s", e.detail);
        qlora_adamw_free(&oo);
        qlora_adamw_init(&oo, ot.p, 2, &cfg, NULL);
        st = qlora_adamw_load(&oo, pb, &ic, &e);
        tu_check(st == QLORA_ERR_SHAPE && strstr(e.detail, "3 parameters"), "a different parameter count is QLORA_ERR_SHAPE",
                 "%s", e.detail);
        qlora_adamw_free(&oo);
        ot.p[0].name = "renamed";
        qlora_adamw_init(&oo, ot.p, 3, &cfg, NULL);
        st = qlora_adamw_load(&oo, pb, &ic, &e);
        tu_check(st == QLORA_ERR_SHAPE && strstr(e.detail, "renamed"), "a different tensor name is QLORA_ERR_SHAPE", "%s",
                 e.detail);
        qlora_adamw_free(&oo);
        tset_free(&ot);
        snprintf(bad, sizeof bad, "%s/does-not-exist.ckpt", tu_tmpdir());
        st = qlora_adamw_load(&c.opt, bad, &ic, &e);
        tu_check(st == QLORA_ERR_IO && strstr(e.detail, bad), "a missing checkpoint is QLORA_ERR_IO naming the file", "%s",
                 e.detail);
    }
    for (int i = 0; i < 3; i++) free(wts[i]);
    trainer_free(&a);
    trainer_free(&c);
}

static void test_args(void) {
    qlora_adamw opt;
    qlora_error e;
    float w[4] = {0}, g[4] = {0};
    qlora_param p;
    memset(&p, 0, sizeof p);
    p.name = "x";
    p.w = w;
    p.g = g;
    p.n = 4;
    qlora_adamw_config cfg = qlora_adamw_default_config();
    cfg.optim_bits = 16;
    tu_check(qlora_adamw_init(&opt, &p, 1, &cfg, &e) == QLORA_ERR_ARG && strstr(e.detail, "optim_bits"),
             "optim_bits 16 is QLORA_ERR_ARG", "%s", e.detail);
    cfg = qlora_adamw_default_config();
    cfg.pager.page_bytes = 8192;
    cfg.pager.budget_bytes = 4096;
    tu_check(qlora_adamw_init(&opt, &p, 1, &cfg, &e) == QLORA_ERR_ARG && strstr(e.detail, "budget"),
             "a budget smaller than one page is QLORA_ERR_ARG", "%s", e.detail);
    cfg = qlora_adamw_default_config();
    cfg.schedule = QLORA_LR_LINEAR;
    tu_check(qlora_adamw_init(&opt, &p, 1, &cfg, &e) == QLORA_ERR_ARG, "linear schedule without total_steps is QLORA_ERR_ARG",
             "%s", e.detail);
    cfg = qlora_adamw_default_config();
    p.g = NULL;
    tu_check(qlora_adamw_init(&opt, &p, 1, &cfg, &e) == QLORA_ERR_ARG && strstr(e.detail, "x"),
             "a parameter without gradient is QLORA_ERR_ARG naming it", "%s", e.detail);
}

// no_decay: with zero gradients AdamW's update is 0, so only decoupled weight decay moves a weight: by
// exactly lr·wd·w per step on a decayed tensor, not at all on a no_decay one (fp32 and 8-bit states).
static void test_no_decay(void) {
    for (int bits = 32; bits >= 8; bits -= 24) {
        float w[2][300], g[2][300];
        qlora_param p[2];
        memset(p, 0, sizeof p);
        for (int k = 0; k < 2; k++) {
            for (int i = 0; i < 300; i++) {
                w[k][i] = 0.5f + 0.001f * (float)i;
                g[k][i] = 0.0f;
            }
            p[k].w = w[k];
            p[k].g = g[k];
            p[k].n = 300;
        }
        p[1].no_decay = 1;
        qlora_adamw_config cfg = qlora_adamw_default_config();
        cfg.lr = 0.01f;
        cfg.weight_decay = 0.1f;
        cfg.optim_bits = bits;
        qlora_adamw opt;
        qlora_error e;
        const qlora_status st_init = qlora_adamw_init(&opt, p, 2, &cfg, &e);
        qlora_status st = st_init;
        for (int s = 0; s < 3 && st == QLORA_OK; s++) st = qlora_adamw_step(&opt, NULL, &e);
        int decayed = st == QLORA_OK, kept = st == QLORA_OK;
        for (int i = 0; i < 300; i++) {
            double w0 = 0.5 + 0.001 * i, want = w0 * pow(1.0 - 0.01 * 0.1, 3);
            decayed &= fabs((double)w[0][i] - want) <= 1e-6 * w0;
            kept &= w[1][i] == (float)(0.5f + 0.001f * (float)i);
        }
        tu_check(decayed, bits == 32 ? "adamw32: weight decay shrinks a decayed tensor by (1 - lr*wd) per step"
                                     : "adamw8: weight decay shrinks a decayed tensor by (1 - lr*wd) per step",
                 "%s", st == QLORA_OK ? "wrong values" : e.detail);
        tu_check(kept, bits == 32 ? "adamw32: a no_decay tensor is left unchanged" : "adamw8: a no_decay tensor is left unchanged",
                 "%s", st == QLORA_OK ? "it changed" : e.detail);
        if (st_init == QLORA_OK) qlora_adamw_free(&opt);
    }
}

int main(void) {
    quick = getenv("QLORA_TEST_QUICK") != NULL;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", tu_tmpdir());
    if (system(cmd) != 0) return 1;
    test_resident();   // first: forks before any OpenMP thread exists
    test_args();
    test_no_decay();
    test_schedules_local();
    test_clip();
    static const refcase cases[] = {
        {"bnb 32-bit AdamW", 32, 0, 6, 3, {300, 5000, 4133, 0}, 1e-2f, 0.01f, 0.0f, 0.1f, QLORA_LR_LINEAR, "linear", 2, 8},
        {"bnb 8-bit blockwise AdamW", 8, 0, 6, 3, {300, 5000, 4133, 0}, 1e-2f, 0.01f, 0.0f, 0.1f, QLORA_LR_COSINE, "cosine", 2, 8},
        {"torch-order AdamW with clipping", 32, 1, 6, 2, {300, 5000, 0, 0}, 1e-2f, 0.1f, 0.3f, 1.0f, QLORA_LR_COSINE, "cosine", 2, 8},
    };
    enum { NCASES = sizeof cases / sizeof cases[0] };
    static refrun runs[NCASES];
    int sched_ready = sched_prepare();
    for (int i = 0; i < NCASES; i++) ref_prepare(&runs[i], &cases[i]);
    if (ref_args[0]) tu_python("test/ref/optim_ref.py%s", ref_args);   // one call: torch is imported once
    if (sched_ready) sched_compare();
    for (int i = 0; i < NCASES; i++) ref_compare(&runs[i]);
    test_paged(32);
    test_paged(8);
    test_threads();
    test_resume(32);
    test_resume(8);
    return tu_finish();
}
