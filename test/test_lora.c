// test_lora.c - the LoRA linear layer: initialization, forward/backward against PyTorch autograd
// (test/ref/lora_ref.py), a double-precision finite-difference check of every gradient, dropout
// replay, merge, and bad input.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

typedef struct lcase {
    const char *name;
    int64_t M, in, out;
    int32_t rank;
    float alpha, dropout;
    int rslora;
} lcase;

// Everything one case produces, kept for the reference comparison.
typedef struct lrun {
    lcase c;
    float *x, *w, *a, *b, *dy, *mask, *y, *dx, *da, *db, *merged;
    float dx0, d0;   // the values dx, dA and dB held before backward (checks accumulation)
} lrun;

static float *fnew(int64_t n) { return (float *)calloc((size_t)n, sizeof(float)); }

// The layer's loss L = Σ dy ⊙ y evaluated in double from the definition, for finite differences.
static double loss_double(const lrun *r, const double *x, const double *a, const double *b, float scale) {
    const lcase *c = &r->c;
    double L = 0;
    double *xa = (double *)calloc((size_t)(c->M * c->rank), sizeof(double));
    for (int64_t m = 0; m < c->M; m++)
        for (int32_t k = 0; k < c->rank; k++) {
            double s = 0;
            for (int64_t i = 0; i < c->in; i++) s += x[m * c->in + i] * r->mask[m * c->in + i] * a[k * c->in + i];
            xa[m * c->rank + k] = s;
        }
    for (int64_t m = 0; m < c->M; m++)
        for (int64_t o = 0; o < c->out; o++) {
            double y = 0;
            for (int64_t i = 0; i < c->in; i++) y += x[m * c->in + i] * (double)r->w[o * c->in + i];
            double l = 0;
            for (int32_t k = 0; k < c->rank; k++) l += xa[m * c->rank + k] * b[o * c->rank + k];
            L += (double)r->dy[m * c->out + o] * (y + scale * l);
        }
    free(xa);
    return L;
}

// Central differences in double on a few entries of each of x, A and B.
static void check_fd(const lrun *r, float scale) {
    const lcase *c = &r->c;
    int64_t nx = c->M * c->in, na = c->rank * c->in, nb = c->out * c->rank;
    double *x = (double *)malloc(sizeof(double) * (size_t)nx), *a = (double *)malloc(sizeof(double) * (size_t)na),
           *b = (double *)malloc(sizeof(double) * (size_t)nb);
    for (int64_t i = 0; i < nx; i++) x[i] = r->x[i];
    for (int64_t i = 0; i < na; i++) a[i] = r->a[i];
    for (int64_t i = 0; i < nb; i++) b[i] = r->b[i];
    const double h = 1e-4;
    double worst = 0;
    struct { double *p; int64_t n; const float *g; float g0; } params[3] = {
        {x, nx, r->dx, r->dx0}, {a, na, r->da, r->d0}, {b, nb, r->db, r->d0}};
    for (int p = 0; p < 3; p++) {
        for (int t = 0; t < 12; t++) {
            int64_t i = (int64_t)((t * 7919 + 13) % params[p].n);
            double keep = params[p].p[i];
            params[p].p[i] = keep + h;
            double lp = loss_double(r, x, a, b, scale);
            params[p].p[i] = keep - h;
            double lm = loss_double(r, x, a, b, scale);
            params[p].p[i] = keep;
            double fd = (lp - lm) / (2 * h);
            double got = (double)params[p].g[i] - params[p].g0;   // remove the pre-filled value
            double rel = fabs(got - fd) / (fabs(fd) + 1e-3);
            if (rel > worst) worst = rel;
        }
    }
    char name[160];
    snprintf(name, sizeof name, "%s: dx, dA, dB match double finite differences (worst rel %.2g)", c->name, worst);
    tu_check(worst < 2e-4, name, "worst relative error %.3g", worst);
    free(x); free(a); free(b);
}

static void run_case(lrun *r) {
    lcase *c = &r->c;
    int64_t nx = c->M * c->in, ny = c->M * c->out, na = c->rank * c->in, nb = c->out * c->rank;
    qlora_lora_config cfg;
    cfg.rank = c->rank; cfg.alpha = c->alpha; cfg.dropout = c->dropout; cfg.use_rslora = c->rslora;
    qlora_lora l;
    qlora_nf4 w;
    qlora_error err = {0};
    char name[160];
    float *wf = fnew(c->out * c->in);
    tu_fill_normal(wf, c->out * c->in, 0.2);
    qlora_nf4_quantize(&w, wf, c->out, c->in, 64, 1, NULL);
    r->w = fnew(c->out * c->in);
    qlora_nf4_dequantize(r->w, &w, NULL);
    free(wf);
    qlora_status st = qlora_lora_init(&l, c->in, c->out, &cfg, 1234, &err);
    snprintf(name, sizeof name, "%s: init", c->name);
    tu_check(st == QLORA_OK, name, "%s", err.detail);
    tu_fill_normal(l.B, nb, 0.3);   // a trained-looking B so every gradient is non-trivial
    r->x = fnew(nx); r->dy = fnew(ny); r->y = fnew(ny); r->dx = fnew(nx); r->mask = fnew(nx);
    tu_fill_normal(r->x, nx, 1.0);
    tu_fill_normal(r->dy, ny, 1.0);
    r->a = fnew(na); r->b = fnew(nb);
    memcpy(r->a, l.A, sizeof(float) * (size_t)na);
    memcpy(r->b, l.B, sizeof(float) * (size_t)nb);
    qlora_lora_cache cache;
    cache.xa = fnew(c->M * c->rank);
    cache.xd = fnew(nx);
    st = qlora_lora_forward(NULL, r->y, &cache, r->x, &l, &w, c->M, 1, &err);
    snprintf(name, sizeof name, "%s: forward", c->name);
    tu_check(st == QLORA_OK, name, "%s", err.detail);
    for (int64_t i = 0; i < nx; i++)
        r->mask[i] = !cache.dropped ? 1.0f
                     : (qlora_hash_uniform(cache.dropout_key, (uint64_t)i) >= c->dropout ? 1.0f / (1.0f - c->dropout) : 0.0f);
    r->dx0 = 0.25f; r->d0 = -0.5f;   // backward accumulates onto these
    for (int64_t i = 0; i < nx; i++) r->dx[i] = r->dx0;
    for (int64_t i = 0; i < na; i++) l.dA[i] = r->d0;
    for (int64_t i = 0; i < nb; i++) l.dB[i] = r->d0;
    st = qlora_lora_backward(NULL, r->dx, &l, r->dy, r->x, &cache, &w, c->M, &err);
    snprintf(name, sizeof name, "%s: backward", c->name);
    tu_check(st == QLORA_OK, name, "%s", err.detail);
    r->da = fnew(na); r->db = fnew(nb);
    memcpy(r->da, l.dA, sizeof(float) * (size_t)na);
    memcpy(r->db, l.dB, sizeof(float) * (size_t)nb);
    r->merged = fnew(c->out * c->in);
    qlora_lora_merge(r->merged, &l, &w, NULL);
    check_fd(r, l.scale);
    if (c->dropout > 0) {   // the mask really drops about p of the inputs
        int64_t dropped = 0;
        for (int64_t i = 0; i < nx; i++) dropped += r->mask[i] == 0.0f;
        double frac = (double)dropped / (double)nx;
        snprintf(name, sizeof name, "%s: dropout drops %.3f of inputs (p = %.2f)", c->name, frac, (double)c->dropout);
        tu_check(fabs(frac - c->dropout) < 0.03, name, "fraction %.3f", frac);
    }
    free(cache.xa); free(cache.xd);
    qlora_lora_free(&l);
    qlora_nf4_free(&w);
}

static void compare_with_torch(lrun *runs, int n) {
    if (!tu_have_python("numpy torch")) {
        tu_skip("lora forward/backward equal torch autograd", "/usr/bin/python3 lacks torch (apt-get install python3-torch)");
        return;
    }
    char dir[600], f[800];
    snprintf(dir, sizeof dir, "%s/loraref", tu_tmpdir());
    snprintf(f, sizeof f, "mkdir -p %s", dir);
    if (system(f) != 0) return;
    snprintf(f, sizeof f, "%s/meta.txt", dir);
    FILE *meta = fopen(f, "w");
    for (int i = 0; i < n; i++) {
        lrun *r = &runs[i];
        lcase *c = &r->c;
        float scale = c->rslora ? c->alpha / sqrtf((float)c->rank) : c->alpha / (float)c->rank;
        fprintf(meta, "%s %lld %lld %lld %d %.9g\n", c->name, (long long)c->M, (long long)c->in, (long long)c->out,
                (int)c->rank, (double)scale);
        struct { const char *ext; float *p; int64_t n; } arrs[6] = {
            {"x", r->x, c->M * c->in}, {"w", r->w, c->out * c->in}, {"a", r->a, c->rank * c->in},
            {"b", r->b, c->out * c->rank}, {"dy", r->dy, c->M * c->out}, {"mask", r->mask, c->M * c->in}};
        for (int k = 0; k < 6; k++) {
            snprintf(f, sizeof f, "%s/%s.%s", dir, c->name, arrs[k].ext);
            tu_write(f, arrs[k].p, sizeof(float) * (size_t)arrs[k].n);
        }
    }
    fclose(meta);
    int rc = tu_python("test/ref/lora_ref.py %s", dir);
    if (!tu_check(rc == 0, "torch LoRA reference ran", "exit status %d", rc)) return;
    for (int i = 0; i < n; i++) {
        lrun *r = &runs[i];
        lcase *c = &r->c;
        struct { const char *ext; float *got; int64_t n; float pre; } outs[5] = {
            {"y", r->y, c->M * c->out, 0}, {"dx", r->dx, c->M * c->in, r->dx0}, {"da", r->da, c->rank * c->in, r->d0},
            {"db", r->db, c->out * c->rank, r->d0}, {"merged", r->merged, c->out * c->in, 0}};
        for (int k = 0; k < 5; k++) {
            float *want = fnew(outs[k].n), *got = fnew(outs[k].n);
            snprintf(f, sizeof f, "%s/%s.%s", dir, c->name, outs[k].ext);
            char name[200];
            snprintf(name, sizeof name, "%s: %s equals torch autograd within 1e-5 relative", c->name, outs[k].ext);
            if (!tu_read(f, want, sizeof(float) * (size_t)outs[k].n)) {
                tu_check(0, name, "missing %s", f);
            } else {
                double scale = 0;
                for (int64_t j = 0; j < outs[k].n; j++) {
                    got[j] = outs[k].got[j] - outs[k].pre;   // torch's gradient starts from zero
                    scale = fmax(scale, fabs(want[j]));
                }
                tu_close(name, got, want, outs[k].n, 1e-5 * scale, 1e-5);
            }
            free(want); free(got);
        }
    }
}

static void test_init(void) {
    qlora_lora l, l2;
    qlora_lora_config cfg = {16, 32.0f, 0.0f, 0};
    qlora_lora_init(&l, 400, 50, &cfg, 99, NULL);
    qlora_lora_init(&l2, 400, 50, &cfg, 99, NULL);
    double bound = 1.0 / sqrt(400.0), mean = 0, var = 0, amax = 0;
    int64_t n = 16 * 400;
    for (int64_t i = 0; i < n; i++) { mean += l.A[i]; var += (double)l.A[i] * l.A[i]; amax = fmax(amax, fabs(l.A[i])); }
    mean /= (double)n;
    var = var / (double)n - mean * mean;
    tu_check(amax <= bound && amax > 0.98 * bound, "A kaiming-uniform(a=√5): |A| ≤ 1/√in and reaches it",
             "max %.5f bound %.5f", amax, bound);
    tu_check(fabs(var - bound * bound / 3) < 0.05 * bound * bound / 3 && fabs(mean) < 0.02 * bound,
             "A kaiming-uniform(a=√5): variance bound²/3, mean 0", "var %.3g want %.3g mean %.3g", var, bound * bound / 3, mean);
    int zero = 1;
    for (int64_t i = 0; i < 50 * 16; i++) zero &= l.B[i] == 0.0f && l.dB[i] == 0.0f;
    tu_check(zero, "B and the gradients start at zero", "non-zero entry");
    tu_check(memcmp(l.A, l2.A, sizeof(float) * (size_t)n) == 0, "same seed, same A", "A differs");
    tu_check(l.scale == 2.0f, "scale = alpha / r", "got %g", (double)l.scale);
    qlora_lora_free(&l2);
    cfg.use_rslora = 1;
    qlora_lora_init(&l2, 400, 50, &cfg, 100, NULL);
    tu_check(l2.scale == 8.0f, "rsLoRA scale = alpha / sqrt(r)", "got %g", (double)l2.scale);
    tu_check(memcmp(l.A, l2.A, sizeof(float) * (size_t)n) != 0, "different seed, different A", "A equal");
    qlora_lora_free(&l);
    qlora_lora_free(&l2);
}

static void test_bad_input(void) {
    qlora_lora l;
    qlora_nf4 w, wrong;
    qlora_error err;
    qlora_lora_config cfg = {4, 8.0f, 0.1f, 0};
    float wf[64 * 32] = {0}, x[2 * 64] = {0}, y[2 * 32], xa[8];
#define EXPECT(call, want, label)                                                                          \
    do {                                                                                                   \
        memset(&err, 0, sizeof err);                                                                       \
        qlora_status st_ = (call);                                                                         \
        tu_check(st_ == (want) && err.detail[0] != 0, label, "status %s, detail '%s'", qlora_status_string(st_), \
                 err.detail);                                                                              \
    } while (0)
    qlora_lora_config bad = cfg;
    bad.rank = 0;
    EXPECT(qlora_lora_init(&l, 64, 32, &bad, 1, &err), QLORA_ERR_SHAPE, "bad input: rank 0");
    bad = cfg;
    bad.dropout = 1.0f;
    EXPECT(qlora_lora_init(&l, 64, 32, &bad, 1, &err), QLORA_ERR_ARG, "bad input: dropout 1.0");
    bad = cfg;
    bad.dropout = NAN;
    EXPECT(qlora_lora_init(&l, 64, 32, &bad, 1, &err), QLORA_ERR_ARG, "bad input: dropout NaN");
    EXPECT(qlora_lora_init(&l, INT64_MAX / 2, 32, &cfg, 1, &err), QLORA_ERR_SHAPE, "bad input: size overflow");
    qlora_lora_init(&l, 64, 32, &cfg, 1, NULL);
    qlora_nf4_quantize(&w, wf, 32, 64, 64, 0, NULL);
    qlora_nf4_quantize(&wrong, wf, 64, 32, 64, 0, NULL);
    qlora_lora_cache cache = {xa, NULL, 0, 0};
    EXPECT(qlora_lora_forward(NULL, y, &cache, x, &l, &wrong, 2, 0, &err), QLORA_ERR_SHAPE,
           "bad input: adapter shape does not fit the weight");
    EXPECT(qlora_lora_forward(NULL, y, &cache, x, &l, &w, 2, 1, &err), QLORA_ERR_ARG,
           "bad input: dropout without an xd buffer");
    EXPECT(qlora_lora_forward(NULL, y, NULL, x, &l, &w, 2, 0, &err), QLORA_ERR_ARG, "bad input: NULL cache");
    EXPECT(qlora_lora_forward(NULL, y, &cache, x, &l, &w, -1, 0, &err), QLORA_ERR_ARG, "bad input: negative M");
    EXPECT(qlora_lora_backward(NULL, NULL, &l, NULL, x, &cache, &w, 2, &err), QLORA_ERR_ARG, "bad input: NULL dy");
    float merged[64 * 32];
    EXPECT(qlora_lora_merge(merged, &l, &wrong, &err), QLORA_ERR_SHAPE, "bad input: merge with a mismatched weight");
#undef EXPECT
    qlora_lora_free(&l);
    qlora_lora_free(NULL);   // a no-op
    qlora_nf4_free(&w);
    qlora_nf4_free(&wrong);
}

int main(void) {
    tu_seed(2024);
    test_init();
    lrun runs[4];
    memset(runs, 0, sizeof runs);
    lcase cases[4] = {
        {"plain", 5, 100, 37, 8, 16.0f, 0.0f, 0},
        {"dropout", 7, 128, 64, 4, 8.0f, 0.3f, 0},
        {"rslora", 3, 64, 33, 16, 16.0f, 0.1f, 1},
        {"single_row", 1, 96, 130, 2, 4.0f, 0.0f, 0},
    };
    for (int i = 0; i < 4; i++) { runs[i].c = cases[i]; run_case(&runs[i]); }
    compare_with_torch(runs, 4);
    test_bad_input();
    for (int i = 0; i < 4; i++) {
        lrun *r = &runs[i];
        free(r->x); free(r->w); free(r->a); free(r->b); free(r->dy); free(r->mask); free(r->y); free(r->dx);
        free(r->da); free(r->db); free(r->merged);
    }
    return tu_finish();
}
