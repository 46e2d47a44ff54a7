// test_ops.c - the transformer ops of qlora.h: RMSNorm, RoPE, attention (+ decode), SwiGLU, embedding,
// cross-entropy, log-softmax.
//   1. every backward against finite differences of a double-precision twin of its forward (in this file)
//   2. forward and backward against PyTorch autograd (test/ref/ops_ref.py, one run for all cases)
//   3. decode = last row of the full forward, bit for bit
//   4. backward accumulates; results do not depend on the OpenMP thread count; SIMD helpers vs _ref
//   5. argument errors (embedding token range, RoPE table arguments)
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#include <stdint.h>

static int quick;

static float *fnew(long n) { return (float *)calloc((size_t)(n > 0 ? n : 1), sizeof(float)); }
static double *dnew(long n) { return (double *)calloc((size_t)(n > 0 ? n : 1), sizeof(double)); }
static double *to_d(const float *x, long n) {
    double *d = dnew(n);
    for (long i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static float *to_f(const double *x, long n) {
    float *f = fnew(n);
    for (long i = 0; i < n; i++) f[i] = (float)x[i];
    return f;
}
static double maxabs(const float *x, long n) {
    double m = 0;
    for (long i = 0; i < n; i++) m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}
// got vs want with a tolerance relative to the tensor's scale (atol = rel·max|want|) and to each element.
static int close_rel(const char *name, const float *got, const float *want, long n, double rel) {
    return tu_close(name, got, want, n, rel * maxabs(want, n) + 1e-30, rel);
}

// =============================================================================================
// double-precision twins of the forwards (the finite-difference references)

static void ref_rmsnorm(double *out, const double *x, const double *w, int N, int C, double eps) {
    for (int n = 0; n < N; n++) {
        double ss = 0;
        for (int c = 0; c < C; c++) ss += x[n * C + c] * x[n * C + c];
        double r = 1.0 / sqrt(ss / C + eps);
        for (int c = 0; c < C; c++) out[n * C + c] = x[n * C + c] * r * w[c];
    }
}

static void ref_rope(double *out, const double *x, const int32_t *pos, const float *cos_t, const float *sin_t,
                     int N, int NH, int HD) {
    int half = HD / 2;
    for (int n = 0; n < N; n++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < half; i++) {
                double c = cos_t[pos[n] * half + i], s = sin_t[pos[n] * half + i];
                const double *xr = x + (n * NH + h) * HD;
                double *yr = out + (n * NH + h) * HD;
                yr[i] = xr[i] * c - xr[i + half] * s;
                yr[i + half] = xr[i + half] * c + xr[i] * s;
            }
}

static void ref_attention(double *out, const double *q, const double *k, const double *v, const uint8_t *mask,
                          int B, int T, int NH, int NKV, int HD) {
    int G = NH / NKV;
    double scale = 1.0 / sqrt((double)HD);
    double *p = dnew(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < T; i++) {
                const double *qi = q + ((b * T + i) * NH + h) * HD;
                double *oi = out + ((b * T + i) * NH + h) * HD;
                double mx = -INFINITY, sum = 0;
                int any = 0;
                for (int j = 0; j <= i; j++) {
                    if (mask && !mask[b * T + j]) continue;
                    const double *kj = k + ((b * T + j) * NKV + h / G) * HD;
                    double s = 0;
                    for (int d = 0; d < HD; d++) s += qi[d] * kj[d];
                    p[j] = s * scale;
                    if (p[j] > mx) mx = p[j];
                    any = 1;
                }
                for (int d = 0; d < HD; d++) oi[d] = 0;
                if (!any) continue;
                for (int j = 0; j <= i; j++) {
                    if (mask && !mask[b * T + j]) { p[j] = 0; continue; }
                    p[j] = exp(p[j] - mx);
                    sum += p[j];
                }
                for (int j = 0; j <= i; j++) {
                    const double *vj = v + ((b * T + j) * NKV + h / G) * HD;
                    for (int d = 0; d < HD; d++) oi[d] += p[j] / sum * vj[d];
                }
            }
    free(p);
}

static void ref_swiglu(double *h, const double *g, const double *u, int n) {
    for (int i = 0; i < n; i++) h[i] = g[i] / (1.0 + exp(-g[i])) * u[i];
}

static double ref_ce(const double *x, const int32_t *t, int N, int V) {
    double L = 0;
    for (int n = 0; n < N; n++) {
        if (t[n] == -100) continue;
        double mx = -INFINITY, s = 0;
        for (int i = 0; i < V; i++) mx = x[n * V + i] > mx ? x[n * V + i] : mx;
        for (int i = 0; i < V; i++) s += exp(x[n * V + i] - mx);
        L += mx + log(s) - x[n * V + t[n]];
    }
    return L;
}

// Central differences of L(x) for every element of x (perturbed in place): grad (n).
typedef double (*loss_fn)(void *ctx);
static void fd_grad(double *grad, double *x, long n, loss_fn L, void *ctx) {
    for (long i = 0; i < n; i++) {
        double x0 = x[i], h = 1e-5 * (fabs(x0) > 1 ? fabs(x0) : 1);
        x[i] = x0 + h;
        double lp = L(ctx);
        x[i] = x0 - h;
        double lm = L(ctx);
        x[i] = x0;
        grad[i] = (lp - lm) / (2 * h);
    }
}
static double dot_d(const double *a, const double *b, long n) {
    double s = 0;
    for (long i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}
// float analytic gradient vs double numeric gradient
static int fd_close(const char *name, const float *analytic, const double *numeric, long n) {
    float *nf = to_f(numeric, n);
    int ok = close_rel(name, analytic, nf, n, 2e-4);
    free(nf);
    return ok;
}

// =============================================================================================
// 1. finite differences

typedef struct { double *x, *w, *g, *tmp; int N, C; double eps; } rms_ctx;
static double rms_loss(void *p) {
    rms_ctx *c = (rms_ctx *)p;
    ref_rmsnorm(c->tmp, c->x, c->w, c->N, c->C, c->eps);
    return dot_d(c->tmp, c->g, (long)c->N * c->C);
}
static void fd_rmsnorm(void) {
    const int N = 3, C = 7;
    const float eps = 1e-5f;
    float *x = fnew(N * C), *w = fnew(C), *g = fnew(N * C), *y = fnew(N * C), *r = fnew(N);
    float *dx = fnew(N * C), *dw = fnew(C);
    tu_fill_normal(x, N * C, 1.0);
    tu_fill_uniform(w, C, 2.0);
    tu_fill_normal(g, N * C, 1.0);
    qlora_rmsnorm_forward(y, r, x, w, N, C, eps);
    qlora_rmsnorm_backward(dx, dw, g, x, w, r, N, C);
    rms_ctx c;
    c.x = to_d(x, N * C); c.w = to_d(w, C); c.g = to_d(g, N * C); c.tmp = dnew(N * C);
    c.N = N; c.C = C; c.eps = eps;
    double *want = dnew(N * C), *num = dnew(N * C);
    ref_rmsnorm(want, c.x, c.w, N, C, eps);
    float *wf = to_f(want, N * C);
    close_rel("fd rmsnorm forward vs double", y, wf, N * C, 1e-6);
    fd_grad(num, c.x, N * C, rms_loss, &c);
    fd_close("fd rmsnorm dx", dx, num, N * C);
    fd_grad(num, c.w, C, rms_loss, &c);
    fd_close("fd rmsnorm dweight", dw, num, C);
    free(x); free(w); free(g); free(y); free(r); free(dx); free(dw); free(wf);
    free(c.x); free(c.w); free(c.g); free(c.tmp); free(want); free(num);
}

typedef struct { double *x, *g, *tmp; const int32_t *pos; const float *ct, *st; int N, NH, HD; } rope_ctx;
static double rope_loss(void *p) {
    rope_ctx *c = (rope_ctx *)p;
    ref_rope(c->tmp, c->x, c->pos, c->ct, c->st, c->N, c->NH, c->HD);
    return dot_d(c->tmp, c->g, (long)c->N * c->NH * c->HD);
}
static void fd_rope(void) {
    const int N = 4, NH = 2, HD = 6, MP = 50;
    const long n = N * NH * HD;
    int32_t pos[4] = {0, 1, 17, 49};
    float *ct = fnew(MP * HD / 2), *st = fnew(MP * HD / 2), *x = fnew(n), *g = fnew(n), *y = fnew(n), *dx = fnew(n);
    qlora_status s = qlora_rope_table(ct, st, MP, HD, 10000.0f, 1.0f, NULL);
    tu_check(s == QLORA_OK, "fd rope table", "status %d", (int)s);
    tu_fill_normal(x, n, 1.0);
    tu_fill_normal(g, n, 1.0);
    memcpy(y, x, n * sizeof(float));
    qlora_rope_forward(y, pos, ct, st, N, NH, HD);
    memcpy(dx, g, n * sizeof(float));
    qlora_rope_backward(dx, pos, ct, st, N, NH, HD);
    rope_ctx c;
    c.x = to_d(x, n); c.g = to_d(g, n); c.tmp = dnew(n); c.pos = pos; c.ct = ct; c.st = st;
    c.N = N; c.NH = NH; c.HD = HD;
    double *want = dnew(n), *num = dnew(n);
    ref_rope(want, c.x, pos, ct, st, N, NH, HD);
    float *wf = to_f(want, n);
    close_rel("fd rope forward vs double", y, wf, n, 1e-6);
    fd_grad(num, c.x, n, rope_loss, &c);
    fd_close("fd rope dx", dx, num, n);
    // backward is the inverse rotation: backward(forward(x)) = x
    qlora_rope_backward(y, pos, ct, st, N, NH, HD);
    close_rel("rope backward inverts forward", y, x, n, 1e-6);
    free(ct); free(st); free(x); free(g); free(y); free(dx); free(c.x); free(c.g); free(c.tmp); free(want);
    free(num); free(wf);
}

typedef struct { double *q, *k, *v, *g, *tmp; const uint8_t *mask; int B, T, NH, NKV, HD; } attn_ctx;
static double attn_loss(void *p) {
    attn_ctx *c = (attn_ctx *)p;
    ref_attention(c->tmp, c->q, c->k, c->v, c->mask, c->B, c->T, c->NH, c->NKV, c->HD);
    return dot_d(c->tmp, c->g, (long)c->B * c->T * c->NH * c->HD);
}
static void fd_attention(const char *tag, int B, int T, int NH, int NKV, int HD, const uint8_t *mask) {
    const long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD, na = (long)B * NH * T * T;
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *g = fnew(nq), *o = fnew(nq), *att = fnew(na);
    float *dq = fnew(nq), *dk = fnew(nk), *dv = fnew(nk);
    char name[128];
    tu_fill_normal(q, nq, 1.0);
    tu_fill_normal(k, nk, 1.0);
    tu_fill_normal(v, nk, 1.0);
    tu_fill_normal(g, nq, 1.0);
    qlora_attention_forward(o, att, q, k, v, mask, B, T, NH, NKV, HD);
    qlora_attention_backward(dq, dk, dv, g, o, q, k, v, att, B, T, NH, NKV, HD);
    attn_ctx c;
    c.q = to_d(q, nq); c.k = to_d(k, nk); c.v = to_d(v, nk); c.g = to_d(g, nq); c.tmp = dnew(nq); c.mask = mask;
    c.B = B; c.T = T; c.NH = NH; c.NKV = NKV; c.HD = HD;
    double *want = dnew(nq), *num = dnew(nq > nk ? nq : nk);
    ref_attention(want, c.q, c.k, c.v, mask, B, T, NH, NKV, HD);
    float *wf = to_f(want, nq);
    snprintf(name, sizeof name, "fd attention %s forward vs double", tag);
    close_rel(name, o, wf, nq, 1e-5);
    fd_grad(num, c.q, nq, attn_loss, &c);
    snprintf(name, sizeof name, "fd attention %s dq", tag);
    fd_close(name, dq, num, nq);
    fd_grad(num, c.k, nk, attn_loss, &c);
    snprintf(name, sizeof name, "fd attention %s dk", tag);
    fd_close(name, dk, num, nk);
    fd_grad(num, c.v, nk, attn_loss, &c);
    snprintf(name, sizeof name, "fd attention %s dv", tag);
    fd_close(name, dv, num, nk);
    free(q); free(k); free(v); free(g); free(o); free(att); free(dq); free(dk); free(dv);
    free(c.q); free(c.k); free(c.v); free(c.g); free(c.tmp); free(want); free(num); free(wf);
}

typedef struct { double *gt, *u, *g, *tmp; int n; } swi_ctx;
static double swi_loss(void *p) {
    swi_ctx *c = (swi_ctx *)p;
    ref_swiglu(c->tmp, c->gt, c->u, c->n);
    return dot_d(c->tmp, c->g, c->n);
}
static void fd_swiglu(void) {
    const int n = 23;
    float *gt = fnew(n), *u = fnew(n), *g = fnew(n), *h = fnew(n), *dg = fnew(n), *du = fnew(n);
    tu_fill_normal(gt, n, 3.0);
    gt[0] = -30.0f; gt[1] = 30.0f; gt[2] = 0.0f;   // saturated and zero gates
    tu_fill_normal(u, n, 1.0);
    tu_fill_normal(g, n, 1.0);
    qlora_swiglu_forward(h, gt, u, n);
    qlora_swiglu_backward(dg, du, g, gt, u, n);
    swi_ctx c;
    c.gt = to_d(gt, n); c.u = to_d(u, n); c.g = to_d(g, n); c.tmp = dnew(n); c.n = n;
    double *want = dnew(n), *num = dnew(n);
    ref_swiglu(want, c.gt, c.u, n);
    float *wf = to_f(want, n);
    close_rel("fd swiglu forward vs double", h, wf, n, 1e-6);
    fd_grad(num, c.gt, n, swi_loss, &c);
    fd_close("fd swiglu dgate", dg, num, n);
    fd_grad(num, c.u, n, swi_loss, &c);
    fd_close("fd swiglu dup", du, num, n);
    free(gt); free(u); free(g); free(h); free(dg); free(du); free(c.gt); free(c.u); free(c.g); free(c.tmp);
    free(want); free(num); free(wf);
}

typedef struct { double *x; const int32_t *t; int N, V; double dscale; } ce_ctx;
static double ce_loss(void *p) {
    ce_ctx *c = (ce_ctx *)p;
    return c->dscale * ref_ce(c->x, c->t, c->N, c->V);
}
static void fd_cross_entropy(void) {
    const int N = 5, V = 9;
    int32_t t[5] = {3, -100, 0, 8, 3};
    float *x = fnew(N * V), *dx = fnew(N * V), *rows = fnew(N), *ls = fnew(V);
    tu_fill_normal(x, N * V, 2.0);
    double L = 0;
    int64_t cnt = 0;
    qlora_cross_entropy_forward(&L, &cnt, rows, x, t, N, V);
    qlora_cross_entropy_backward(dx, x, t, N, V, 1.0f / (float)cnt);
    ce_ctx c;
    c.x = to_d(x, N * V); c.t = t; c.N = N; c.V = V; c.dscale = 1.0 / 4.0;
    double want = ref_ce(c.x, t, N, V);
    tu_check(cnt == 4 && fabs(L - want) <= 1e-6 * fabs(want), "fd cross_entropy forward vs double",
             "count %lld loss %.9g want %.9g", (long long)cnt, L, want);
    tu_check(rows[1] == 0.0f, "cross_entropy ignored row loss 0", "row_loss[1] = %g", (double)rows[1]);
    double *num = dnew(N * V);
    fd_grad(num, c.x, N * V, ce_loss, &c);
    fd_close("fd cross_entropy dlogits", dx, num, N * V);
    // log_softmax(row 0) vs double
    qlora_log_softmax(ls, x, V);
    {
        double mx = -INFINITY, s = 0;
        float *lw = fnew(V);
        for (int i = 0; i < V; i++) mx = c.x[i] > mx ? c.x[i] : mx;
        for (int i = 0; i < V; i++) s += exp(c.x[i] - mx);
        for (int i = 0; i < V; i++) lw[i] = (float)(c.x[i] - mx - log(s));
        close_rel("log_softmax vs double", ls, lw, V, 1e-6);
        free(lw);
    }
    // all rows ignored: count 0, loss 0, no gradient
    int32_t ign[5] = {-100, -100, -100, -100, -100};
    float *dz = fnew(N * V);
    qlora_cross_entropy_forward(&L, &cnt, NULL, x, ign, N, V);
    qlora_cross_entropy_backward(dz, x, ign, N, V, 1.0f);
    tu_check(cnt == 0 && L == 0.0 && maxabs(dz, N * V) == 0.0, "cross_entropy all ignored", "count %lld loss %g",
             (long long)cnt, L);
    free(x); free(dx); free(rows); free(ls); free(c.x); free(num); free(dz);
}

static void fd_embedding(void) {
    const int N = 6, C = 5, V = 4;
    int32_t tok[6] = {2, 0, 2, 3, 2, 0};
    float *table = fnew(V * C), *out = fnew(N * C), *g = fnew(N * C), *dt = fnew(V * C), *want = fnew(V * C);
    tu_fill_normal(table, V * C, 1.0);
    tu_fill_normal(g, N * C, 1.0);
    qlora_status s = qlora_embedding_forward(out, tok, table, N, C, V, NULL);
    int ok = s == QLORA_OK;
    for (int n = 0; n < N && ok; n++) ok = memcmp(out + n * C, table + tok[n] * C, C * sizeof(float)) == 0;
    tu_check(ok, "embedding forward", "status %d or a row differs", (int)s);
    qlora_embedding_backward(dt, g, tok, N, C);
    for (int vv = 0; vv < V; vv++)
        for (int c = 0; c < C; c++) {
            double a = 0;
            for (int n = 0; n < N; n++) if (tok[n] == vv) a += g[n * C + c];
            want[vv * C + c] = (float)a;
        }
    close_rel("embedding backward (sum of rows per token)", dt, want, V * C, 1e-6);
    free(table); free(out); free(g); free(dt); free(want);
}

// =============================================================================================
// 2. PyTorch reference: every case's inputs are written first, the script runs once, then all compare

static FILE *cfg;
static int wr(const char *tag, const char *name, const char *ext, const void *p, size_t bytes) {
    char fn[128];
    snprintf(fn, sizeof fn, "%s_%s.%s", tag, name, ext);
    return tu_write(tu_path(fn), p, bytes);
}
static int rd(const char *tag, const char *name, float *p, long n) {
    char fn[128];
    snprintf(fn, sizeof fn, "%s_%s.ref.f32", tag, name);
    return tu_read(tu_path(fn), p, (size_t)n * sizeof(float));
}
// got vs the reference; the absolute tolerance is rel·max(max|want|, scale).
static void cmp_ref_scaled(const char *tag, const char *name, const float *got, long n, double rel, double scale) {
    char label[160];
    float *want = fnew(n);
    snprintf(label, sizeof label, "torch %s %s", tag, name);
    if (!rd(tag, name, want, n)) tu_check(0, label, "cannot read the reference output");
    else {
        double m = maxabs(want, n);
        tu_close(label, got, want, n, rel * (m > scale ? m : scale) + 1e-30, rel);
    }
    free(want);
}
static void cmp_ref(const char *tag, const char *name, const float *got, long n, double rel) {
    cmp_ref_scaled(tag, name, got, n, rel, 0.0);
}

#define FWD_TOL 1e-5
#define BWD_TOL 1e-4

typedef struct { int N, C; float eps; float *x, *w, *g; } rms_case;
static void rms_prep(rms_case *c, const char *tag, int N, int C, float eps) {
    c->N = N; c->C = C; c->eps = eps;
    c->x = fnew(N * C); c->w = fnew(C); c->g = fnew(N * C);
    tu_fill_normal(c->x, N * C, 2.0);
    tu_fill_uniform(c->w, C, 1.5);
    tu_fill_normal(c->g, N * C, 1.0);
    wr(tag, "x", "f32", c->x, N * C * 4); wr(tag, "w", "f32", c->w, C * 4); wr(tag, "g", "f32", c->g, N * C * 4);
    fprintf(cfg, "rmsnorm %s %d %d %.9e\n", tag, N, C, (double)eps);
}
static void rms_check(rms_case *c, const char *tag) {
    int N = c->N, C = c->C;
    float *y = fnew(N * C), *r = fnew(N), *dx = fnew(N * C), *dw = fnew(C);
    qlora_rmsnorm_forward(y, r, c->x, c->w, N, C, c->eps);
    qlora_rmsnorm_backward(dx, dw, c->g, c->x, c->w, r, N, C);
    cmp_ref(tag, "out", y, N * C, FWD_TOL);
    cmp_ref(tag, "rstd", r, N, FWD_TOL);
    cmp_ref(tag, "dx", dx, N * C, BWD_TOL);
    cmp_ref(tag, "dw", dw, C, BWD_TOL);
    free(y); free(r); free(dx); free(dw); free(c->x); free(c->w); free(c->g);
}

typedef struct { int N, NH, HD, MP; float theta, factor; float *x, *g; int32_t *pos; } rope_case;
static void rope_prep(rope_case *c, const char *tag, int N, int NH, int HD, int MP, float theta, float factor) {
    c->N = N; c->NH = NH; c->HD = HD; c->MP = MP; c->theta = theta; c->factor = factor;
    long n = (long)N * NH * HD;
    c->x = fnew(n); c->g = fnew(n);
    c->pos = (int32_t *)calloc((size_t)N, sizeof(int32_t));
    tu_fill_normal(c->x, n, 1.0);
    tu_fill_normal(c->g, n, 1.0);
    for (int i = 0; i < N; i++) c->pos[i] = (int32_t)((i * 977 + 3) % MP);
    c->pos[0] = 0; c->pos[N - 1] = MP - 1;
    wr(tag, "x", "f32", c->x, n * 4); wr(tag, "g", "f32", c->g, n * 4); wr(tag, "pos", "i32", c->pos, N * 4);
    fprintf(cfg, "rope %s %d %d %d %.9e %.9e %d\n", tag, N, NH, HD, (double)theta, (double)factor, MP);
}
static void rope_check(rope_case *c, const char *tag) {
    long n = (long)c->N * c->NH * c->HD, nt = (long)c->MP * c->HD / 2;
    float *ct = fnew(nt), *st = fnew(nt), *y = fnew(n), *dx = fnew(n), *want = fnew(nt);
    char label[160];
    qlora_rope_table(ct, st, c->MP, c->HD, c->theta, c->factor, NULL);
    // Tables: the angle is rounded to fp32 as HF does, so they agree to the ulp-level of cos/sin of the
    // same fp32 angle, plus pos·ulp(inv_freq) where powf and torch's pow round inv_freq differently.
    snprintf(label, sizeof label, "torch %s cos table", tag);
    if (rd(tag, "cos", want, nt)) tu_close(label, ct, want, nt, 4e-7, 0);
    else tu_check(0, label, "cannot read");
    snprintf(label, sizeof label, "torch %s sin table", tag);
    if (rd(tag, "sin", want, nt)) tu_close(label, st, want, nt, 4e-7, 0);
    else tu_check(0, label, "cannot read");
    memcpy(y, c->x, n * 4);
    qlora_rope_forward(y, c->pos, ct, st, c->N, c->NH, c->HD);
    memcpy(dx, c->g, n * 4);
    qlora_rope_backward(dx, c->pos, ct, st, c->N, c->NH, c->HD);
    cmp_ref(tag, "out", y, n, FWD_TOL);
    cmp_ref(tag, "dx", dx, n, BWD_TOL);
    free(ct); free(st); free(y); free(dx); free(want); free(c->x); free(c->g); free(c->pos);
}

typedef struct { int B, T, NH, NKV, HD; float *q, *k, *v, *g; uint8_t *mask; } attn_case;
static void attn_prep(attn_case *c, const char *tag, int B, int T, int NH, int NKV, int HD, int pad_left,
                      int pad_right) {
    c->B = B; c->T = T; c->NH = NH; c->NKV = NKV; c->HD = HD;
    long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD;
    c->q = fnew(nq); c->k = fnew(nk); c->v = fnew(nk); c->g = fnew(nq);
    tu_fill_normal(c->q, nq, 1.5);
    tu_fill_normal(c->k, nk, 1.5);
    tu_fill_normal(c->v, nk, 1.0);
    tu_fill_normal(c->g, nq, 1.0);
    c->mask = NULL;
    if (pad_left || pad_right) {   // padding in the last sequence only
        c->mask = (uint8_t *)malloc((size_t)B * T);
        memset(c->mask, 1, (size_t)B * T);
        for (int t = 0; t < pad_left; t++) c->mask[(B - 1) * T + t] = 0;
        for (int t = 0; t < pad_right; t++) c->mask[(B - 1) * T + T - 1 - t] = 0;
        wr(tag, "mask", "u8", c->mask, (size_t)B * T);
    }
    wr(tag, "q", "f32", c->q, nq * 4); wr(tag, "k", "f32", c->k, nk * 4); wr(tag, "v", "f32", c->v, nk * 4);
    wr(tag, "g", "f32", c->g, nq * 4);
    fprintf(cfg, "attention %s %d %d %d %d %d %d\n", tag, B, T, NH, NKV, HD, c->mask != NULL);
}
static void attn_check(attn_case *c, const char *tag) {
    int B = c->B, T = c->T, NH = c->NH, NKV = c->NKV, HD = c->HD;
    long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD, na = (long)B * NH * T * T;
    float *o = fnew(nq), *att = fnew(na), *dq = fnew(nq), *dk = fnew(nk), *dv = fnew(nk);
    for (long i = 0; i < na; i++) att[i] = 7.0f;   // forward must write every entry
    for (long i = 0; i < nq; i++) o[i] = 7.0f;
    qlora_attention_forward(o, att, c->q, c->k, c->v, c->mask, B, T, NH, NKV, HD);
    qlora_attention_backward(dq, dk, dv, c->g, o, c->q, c->k, c->v, att, B, T, NH, NKV, HD);
    cmp_ref(tag, "out", o, nq, FWD_TOL);
    cmp_ref(tag, "att", att, na, FWD_TOL);
    // one scale for the three gradients: dq, dk come from differences p·(dp − δ) that cancel to rounding
    // level (exactly 0 for T = 1 in torch), so their error is relative to dv's and dq's magnitude
    double gs = maxabs(dq, nq);
    if (maxabs(dk, nk) > gs) gs = maxabs(dk, nk);
    if (maxabs(dv, nk) > gs) gs = maxabs(dv, nk);
    cmp_ref_scaled(tag, "dq", dq, nq, BWD_TOL, gs);
    cmp_ref_scaled(tag, "dk", dk, nk, BWD_TOL, gs);
    cmp_ref_scaled(tag, "dv", dv, nk, BWD_TOL, gs);
    free(o); free(att); free(dq); free(dk); free(dv);
    free(c->q); free(c->k); free(c->v); free(c->g); free(c->mask);
}

typedef struct { int n; float *gt, *u, *g; } swi_case;
static void swi_prep(swi_case *c, const char *tag, int n) {
    c->n = n;
    c->gt = fnew(n); c->u = fnew(n); c->g = fnew(n);
    tu_fill_normal(c->gt, n, 4.0);
    tu_fill_normal(c->u, n, 1.0);
    tu_fill_normal(c->g, n, 1.0);
    wr(tag, "gate", "f32", c->gt, n * 4); wr(tag, "up", "f32", c->u, n * 4); wr(tag, "g", "f32", c->g, n * 4);
    fprintf(cfg, "swiglu %s %d\n", tag, n);
}
static void swi_check(swi_case *c, const char *tag) {
    int n = c->n;
    float *h = fnew(n), *dg = fnew(n), *du = fnew(n);
    qlora_swiglu_forward(h, c->gt, c->u, n);
    qlora_swiglu_backward(dg, du, c->g, c->gt, c->u, n);
    cmp_ref(tag, "h", h, n, FWD_TOL);
    cmp_ref(tag, "dgate", dg, n, BWD_TOL);
    cmp_ref(tag, "dup", du, n, BWD_TOL);
    free(h); free(dg); free(du); free(c->gt); free(c->u); free(c->g);
}

typedef struct { int N, C, V; float *table, *g; int32_t *tok; } emb_case;
static void emb_prep(emb_case *c, const char *tag, int N, int C, int V) {
    c->N = N; c->C = C; c->V = V;
    c->table = fnew(V * C); c->g = fnew(N * C);
    c->tok = (int32_t *)calloc((size_t)N, sizeof(int32_t));
    tu_fill_normal(c->table, V * C, 1.0);
    tu_fill_normal(c->g, N * C, 1.0);
    for (int i = 0; i < N; i++) c->tok[i] = (int32_t)((tu_uniform() * 0.5 + 0.5) * V) % V;
    c->tok[0] = V - 1; c->tok[N - 1] = c->tok[1];
    wr(tag, "table", "f32", c->table, V * C * 4); wr(tag, "g", "f32", c->g, N * C * 4);
    wr(tag, "tok", "i32", c->tok, N * 4);
    fprintf(cfg, "embedding %s %d %d %d\n", tag, N, C, V);
}
static void emb_check(emb_case *c, const char *tag) {
    float *out = fnew(c->N * c->C), *dt = fnew(c->V * c->C);
    qlora_embedding_forward(out, c->tok, c->table, c->N, c->C, c->V, NULL);
    qlora_embedding_backward(dt, c->g, c->tok, c->N, c->C);
    cmp_ref(tag, "out", out, c->N * c->C, FWD_TOL);
    cmp_ref(tag, "dtable", dt, c->V * c->C, BWD_TOL);
    free(out); free(dt); free(c->table); free(c->g); free(c->tok);
}

typedef struct { int N, V; float *x; int32_t *t; } ce_case;
static void ce_prep(ce_case *c, const char *tag, int N, int V) {
    c->N = N; c->V = V;
    c->x = fnew(N * V);
    c->t = (int32_t *)calloc((size_t)N, sizeof(int32_t));
    tu_fill_normal(c->x, N * V, 3.0);
    for (int i = 0; i < N; i++) c->t[i] = (int32_t)((i * 7919 + 5) % V);
    c->t[1] = -100; c->t[N - 2] = -100;
    c->x[3 * V + 2] = 60.0f;   // a confident row
    wr(tag, "logits", "f32", c->x, N * V * 4); wr(tag, "tgt", "i32", c->t, N * 4);
    fprintf(cfg, "cross_entropy %s %d %d\n", tag, N, V);
}
static void ce_check(ce_case *c, const char *tag) {
    int N = c->N, V = c->V;
    float *rows = fnew(N), *dx = fnew(N * V), *ls = fnew(N * V);
    double L = 0, want = 0;
    int64_t cnt = 0;
    char fn[128], label[128];
    qlora_cross_entropy_forward(&L, &cnt, rows, c->x, c->t, N, V);
    qlora_cross_entropy_backward(dx, c->x, c->t, N, V, 1.0f / (float)cnt);
    for (int n = 0; n < N; n++) qlora_log_softmax(ls + n * V, c->x + n * V, V);
    snprintf(fn, sizeof fn, "%s_loss.ref.f64", tag);
    snprintf(label, sizeof label, "torch %s loss_sum", tag);
    if (!tu_read(tu_path(fn), &want, sizeof want)) tu_check(0, label, "cannot read");
    else tu_check(cnt == N - 2 && fabs(L - want) <= FWD_TOL * fabs(want), label, "count %lld loss %.9g want %.9g",
                  (long long)cnt, L, want);
    cmp_ref(tag, "rows", rows, N, FWD_TOL);
    cmp_ref(tag, "dlogits", dx, N * V, BWD_TOL);
    cmp_ref(tag, "logsm", ls, N * V, FWD_TOL);
    free(rows); free(dx); free(ls); free(c->x); free(c->t);
}

static void torch_reference(void) {
    if (!tu_have_python("torch numpy")) {
        tu_skip("torch reference", "/usr/bin/python3 cannot import torch and numpy");
        return;
    }
    cfg = fopen(tu_path("ops_cfg.txt"), "w");
    if (!cfg) { tu_check(0, "torch reference", "cannot write %s", tu_path("ops_cfg.txt")); return; }
    rms_case r1, r2;
    rope_case p1, p2;
    attn_case a1, a2, a3, a4, a5;
    swi_case s1;
    emb_case e1;
    ce_case c1;
    rms_prep(&r1, "rms_a", 13, 37, 1e-5f);
    rms_prep(&r2, "rms_b", 1, 8, 1e-6f);
    rope_prep(&p1, "rope_a", 7, 3, 10, 2048, 10000.0f, 1.0f);
    rope_prep(&p2, "rope_b", 5, 2, 6, 300, 500000.0f, 4.0f);
    attn_prep(&a1, "attn_gqa", 2, 13, 6, 2, 6, 3, 0);      // GQA, left padding: 3 rows see no key
    attn_prep(&a2, "attn_mha", 2, 7, 3, 3, 10, 0, 2);      // NH = NKV, right padding
    attn_prep(&a3, "attn_t1", 1, 1, 2, 1, 6, 0, 0);        // T = 1
    attn_prep(&a4, "attn_big", 1, 19, 4, 1, 70, 2, 0);     // HD > 64: the chunked delta in backward
    attn_prep(&a5, "attn_long", 2, 70, 4, 2, 16, 5, 3);    // T > the 64-row query blocks, full vectors
    swi_prep(&s1, "swiglu", 101);
    emb_prep(&e1, "emb", 9, 5, 11);
    ce_prep(&c1, "ce", 9, 37);
    fclose(cfg);
    int rc = tu_python("test/ref/ops_ref.py %s", tu_tmpdir());
    if (!tu_check(rc == 0, "torch reference script", "ops_ref.py exited with %d", rc)) return;
    rms_check(&r1, "rms_a");
    rms_check(&r2, "rms_b");
    rope_check(&p1, "rope_a");
    rope_check(&p2, "rope_b");
    attn_check(&a1, "attn_gqa");
    attn_check(&a2, "attn_mha");
    attn_check(&a3, "attn_t1");
    attn_check(&a4, "attn_big");
    attn_check(&a5, "attn_long");
    swi_check(&s1, "swiglu");
    emb_check(&e1, "emb");
    ce_check(&c1, "ce");
}

// =============================================================================================
// 3. decode and the tiled kernels against the row-at-a-time _ref kernels

// Decode of the last position equals the last row of the _ref forward bit for bit (the same row kernel)
// and the tiled forward to rounding.
static void decode_matches_forward(int T, int NH, int NKV, int HD) {
    long nq = (long)T * NH * HD, nk = (long)T * NKV * HD, na = (long)NH * T * T;
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *o = fnew(nq), *att = fnew(na), *o2 = fnew(nq);
    float *att2 = fnew(na), *od = fnew(NH * HD), *sc = fnew((long)NH * T), *last = fnew((long)NH * T);
    char name[128];
    tu_fill_normal(q, nq, 1.0);
    tu_fill_normal(k, nk, 1.0);
    tu_fill_normal(v, nk, 1.0);
    const float scale = (float)(1.0 / sqrt((double)HD));
    for (int h = 0; h < NH; h++) qlora__attention_forward_ref(o, att, q, k, v, NULL, 0, h, T, NH, NKV, HD, scale);
    qlora_attention_forward(o2, att2, q, k, v, NULL, 1, T, NH, NKV, HD);
    qlora_attention_decode(od, sc, q + (long)(T - 1) * NH * HD, k, v, T, NH, NKV, HD);
    const float *olast = o + (long)(T - 1) * NH * HD, *o2last = o2 + (long)(T - 1) * NH * HD;
    int same = memcmp(od, olast, (size_t)NH * HD * sizeof(float)) == 0;
    for (int h = 0; h < NH; h++) {
        same = same && memcmp(sc + (long)h * T, att + ((long)h * T + T - 1) * T, (size_t)T * sizeof(float)) == 0;
        memcpy(last + (long)h * T, att2 + ((long)h * T + T - 1) * T, (size_t)T * sizeof(float));
    }
    snprintf(name, sizeof name, "decode = last _ref forward row bitwise (T %d, NH %d, NKV %d, HD %d)", T, NH, NKV, HD);
    tu_check(same, name, "outputs or probabilities differ");
    snprintf(name, sizeof name, "decode = last forward row out (T %d, NH %d, NKV %d, HD %d)", T, NH, NKV, HD);
    close_rel(name, od, o2last, NH * HD, 2e-6);
    snprintf(name, sizeof name, "decode = last forward row att (T %d, NH %d, NKV %d, HD %d)", T, NH, NKV, HD);
    close_rel(name, sc, last, (long)NH * T, 2e-6);
    free(q); free(k); free(v); free(o); free(att); free(o2); free(att2); free(od); free(sc); free(last);
}

// Tiled forward/backward against the _ref kernels on shapes that exercise partial tiles, head-dim tails,
// several 64-row query blocks and padding.
static void tiled_vs_ref(int B, int T, int NH, int NKV, int HD, int pad) {
    const long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD, na = (long)B * NH * T * T;
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *g = fnew(nq);
    float *o1 = fnew(nq), *o2 = fnew(nq), *a1 = fnew(na), *a2 = fnew(na);
    float *dq1 = fnew(nq), *dq2 = fnew(nq), *dk1 = fnew(nk), *dk2 = fnew(nk), *dv1 = fnew(nk), *dv2 = fnew(nk);
    uint8_t *mask = NULL;
    char name[160];
    tu_fill_normal(q, nq, 1.0); tu_fill_normal(k, nk, 1.0); tu_fill_normal(v, nk, 1.0); tu_fill_normal(g, nq, 1.0);
    if (pad) {
        mask = (uint8_t *)malloc((size_t)B * T);
        memset(mask, 1, (size_t)B * T);
        for (int t = 0; t < pad && t < T; t++) mask[(long)(B - 1) * T + t] = 0;   // left padding
    }
    const float scale = (float)(1.0 / sqrt((double)HD));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < NH; h++) qlora__attention_forward_ref(o1, a1, q, k, v, mask, b, h, T, NH, NKV, HD, scale);
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < NKV; kvh++)
            qlora__attention_backward_ref(dq1, dk1, dv1, g, NULL, q, k, v, a1, b, kvh, T, NH, NKV, HD, scale);
    qlora_attention_forward(o2, a2, q, k, v, mask, B, T, NH, NKV, HD);
    qlora_attention_backward(dq2, dk2, dv2, g, o2, q, k, v, a2, B, T, NH, NKV, HD);
    // the _ref kernel with the forward's output for δ equals the one that rebuilds it
    float *dq3 = fnew(nq), *dk3 = fnew(nk), *dv3 = fnew(nk);
    for (int b = 0; b < B; b++)
        for (int kvh = 0; kvh < NKV; kvh++)
            qlora__attention_backward_ref(dq3, dk3, dv3, g, o1, q, k, v, a1, b, kvh, T, NH, NKV, HD, scale);
    double gs = maxabs(dq1, nq);
    if (maxabs(dk1, nk) > gs) gs = maxabs(dk1, nk);
    if (maxabs(dv1, nk) > gs) gs = maxabs(dv1, nk);
#define TVR(what, got, want, n, atol)                                                                   \
    snprintf(name, sizeof name, "tiled = _ref attention %s (B %d T %d NH %d NKV %d HD %d pad %d)", what, B, T, \
             NH, NKV, HD, pad);                                                                           \
    tu_close(name, got, want, n, atol, 1e-5)
    TVR("out", o2, o1, nq, 1e-5 * maxabs(o1, nq));
    TVR("att", a2, a1, na, 1e-6);
    TVR("dq", dq2, dq1, nq, 2e-5 * gs);
    TVR("dk", dk2, dk1, nk, 2e-5 * gs);
    TVR("dv", dv2, dv1, nk, 2e-5 * gs);
    TVR("dq (_ref given out)", dq3, dq1, nq, 2e-5 * gs);
    TVR("dk (_ref given out)", dk3, dk1, nk, 2e-5 * gs);
    TVR("dv (_ref given out)", dv3, dv1, nk, 2e-5 * gs);
    free(dq3); free(dk3); free(dv3);
#undef TVR
    free(q); free(k); free(v); free(g); free(o1); free(o2); free(a1); free(a2);
    free(dq1); free(dq2); free(dk1); free(dk2); free(dv1); free(dv2); free(mask);
}

// =============================================================================================
// 4. accumulation, thread-count independence, SIMD helpers

// Runs every backward twice into the same buffers: the second result must be twice the first.
static void accumulates(void) {
    const int B = 2, T = 5, NH = 4, NKV = 2, HD = 8, C = 12, n = 17, V = 6;
    const long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD, na = (long)B * NH * T * T;
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *g = fnew(nq), *o = fnew(nq), *att = fnew(na);
    float *d1[3], *d2[3];
    long sz[3] = {nq, nk, nk};
    const char *names[3] = {"attention backward accumulates dq", "attention backward accumulates dk",
                            "attention backward accumulates dv"};
    tu_fill_normal(q, nq, 1.0); tu_fill_normal(k, nk, 1.0); tu_fill_normal(v, nk, 1.0); tu_fill_normal(g, nq, 1.0);
    qlora_attention_forward(o, att, q, k, v, NULL, B, T, NH, NKV, HD);
    for (int i = 0; i < 3; i++) { d1[i] = fnew(sz[i]); d2[i] = fnew(sz[i]); }
    // once rebuilding the output for δ, twice given it: the two ways agree, and backward accumulates
    qlora_attention_backward(d1[0], d1[1], d1[2], g, NULL, q, k, v, att, B, T, NH, NKV, HD);
    qlora_attention_backward(d2[0], d2[1], d2[2], g, o, q, k, v, att, B, T, NH, NKV, HD);
    qlora_attention_backward(d2[0], d2[1], d2[2], g, o, q, k, v, att, B, T, NH, NKV, HD);
    for (int i = 0; i < 3; i++) {
        for (long j = 0; j < sz[i]; j++) d1[i][j] *= 2.0f;
        tu_close(names[i], d2[i], d1[i], sz[i], 1e-5 * maxabs(d1[i], sz[i]), 1e-5);
        free(d1[i]); free(d2[i]);
    }
    // rmsnorm, swiglu, embedding, cross-entropy: start from a nonzero gradient
    {
        float *x = fnew(3 * C), *w = fnew(C), *gg = fnew(3 * C), *y = fnew(3 * C), *r = fnew(3);
        float *dx = fnew(3 * C), *dw = fnew(C), *dx0 = fnew(3 * C), *dw0 = fnew(C), *base = fnew(3 * C);
        tu_fill_normal(x, 3 * C, 1.0); tu_fill_uniform(w, C, 1.0); tu_fill_normal(gg, 3 * C, 1.0);
        tu_fill_normal(base, 3 * C, 1.0);
        qlora_rmsnorm_forward(y, r, x, w, 3, C, 1e-5f);
        qlora_rmsnorm_backward(dx0, dw0, gg, x, w, r, 3, C);
        memcpy(dx, base, 3 * C * 4);
        memcpy(dw, base, C * 4);
        qlora_rmsnorm_backward(dx, dw, gg, x, w, r, 3, C);
        for (int i = 0; i < 3 * C; i++) dx0[i] += base[i];
        for (int i = 0; i < C; i++) dw0[i] += base[i];
        tu_close("rmsnorm backward accumulates dx", dx, dx0, 3 * C, 1e-6, 1e-6);
        tu_close("rmsnorm backward accumulates dweight", dw, dw0, C, 1e-6, 1e-6);
        free(x); free(w); free(gg); free(y); free(r); free(dx); free(dw); free(dx0); free(dw0); free(base);
    }
    {
        float *gt = fnew(n), *u = fnew(n), *dh = fnew(n), *a = fnew(n), *b = fnew(n), *a0 = fnew(n), *b0 = fnew(n);
        tu_fill_normal(gt, n, 2.0); tu_fill_normal(u, n, 1.0); tu_fill_normal(dh, n, 1.0);
        qlora_swiglu_backward(a0, b0, dh, gt, u, n);
        for (int i = 0; i < n; i++) { a[i] = 1.0f; b[i] = -1.0f; a0[i] += 1.0f; b0[i] -= 1.0f; }
        qlora_swiglu_backward(a, b, dh, gt, u, n);
        tu_close("swiglu backward accumulates dgate", a, a0, n, 1e-6, 1e-6);
        tu_close("swiglu backward accumulates dup", b, b0, n, 1e-6, 1e-6);
        free(gt); free(u); free(dh); free(a); free(b); free(a0); free(b0);
    }
    {
        int32_t tok[3] = {1, 1, 0}, tg[3] = {2, -100, 5};
        float *dout = fnew(3 * C), *dt = fnew(V * C), *dt0 = fnew(V * C);
        float *lg = fnew(3 * V), *dl = fnew(3 * V), *dl0 = fnew(3 * V);
        tu_fill_normal(dout, 3 * C, 1.0); tu_fill_normal(lg, 3 * V, 1.0);
        qlora_embedding_backward(dt0, dout, tok, 3, C);
        for (int i = 0; i < V * C; i++) { dt[i] = 0.5f; dt0[i] += 0.5f; }
        qlora_embedding_backward(dt, dout, tok, 3, C);
        tu_close("embedding backward accumulates", dt, dt0, V * C, 1e-6, 1e-6);
        qlora_cross_entropy_backward(dl0, lg, tg, 3, V, 0.5f);
        for (int i = 0; i < 3 * V; i++) { dl[i] = 0.25f; dl0[i] += 0.25f; }
        qlora_cross_entropy_backward(dl, lg, tg, 3, V, 0.5f);
        tu_close("cross_entropy backward accumulates", dl, dl0, 3 * V, 1e-6, 1e-6);
        free(dout); free(dt); free(dt0); free(lg); free(dl); free(dl0);
    }
    free(q); free(k); free(v); free(g); free(o); free(att);
}

#ifdef _OPENMP
// Every op at sizes that pass its OpenMP threshold, with 1 and with 2 threads: bit-identical.
typedef struct { float *buf[24]; long n[24]; int cnt; double loss; } run_out;
static float *keep(run_out *r, long n) {
    r->buf[r->cnt] = fnew(n);
    r->n[r->cnt] = n;
    return r->buf[r->cnt++];
}
static void run_all(run_out *r, int threads) {
    const int B = 2, T = quick ? 24 : 48, NH = 4, NKV = 2, HD = 40, N = 300, C = 260, V = 500;
    const long nq = (long)B * T * NH * HD, nk = (long)B * T * NKV * HD;
    omp_set_num_threads(threads);
    tu_seed(77);
    memset(r, 0, sizeof *r);
    float *q = fnew(nq), *k = fnew(nk), *v = fnew(nk), *g = fnew(nq);
    uint8_t *mask = (uint8_t *)malloc((size_t)B * T);
    memset(mask, 1, (size_t)B * T);
    mask[T] = mask[T + 1] = 0;
    tu_fill_normal(q, nq, 1.0); tu_fill_normal(k, nk, 1.0); tu_fill_normal(v, nk, 1.0); tu_fill_normal(g, nq, 1.0);
    float *o = keep(r, nq), *att = keep(r, (long)B * NH * T * T);
    qlora_attention_forward(o, att, q, k, v, mask, B, T, NH, NKV, HD);
    qlora_attention_backward(keep(r, nq), keep(r, nk), keep(r, nk), g, o, q, k, v, att, B, T, NH, NKV, HD);
    float *x = fnew((long)N * C), *w = fnew(C), *gg = fnew((long)N * C), *rs = keep(r, N);
    tu_fill_normal(x, (long)N * C, 1.0); tu_fill_uniform(w, C, 1.0); tu_fill_normal(gg, (long)N * C, 1.0);
    qlora_rmsnorm_forward(keep(r, (long)N * C), rs, x, w, N, C, 1e-5f);
    qlora_rmsnorm_backward(keep(r, (long)N * C), keep(r, C), gg, x, w, rs, N, C);
    int32_t *tok = (int32_t *)malloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++) tok[i] = (i * 31) % 7 == 3 ? -100 : (i * 13) % V;
    float *lg = fnew((long)N * V);
    tu_fill_normal(lg, (long)N * V, 2.0);
    int64_t cnt;
    qlora_cross_entropy_forward(&r->loss, &cnt, keep(r, N), lg, tok, N, V);
    qlora_cross_entropy_backward(keep(r, (long)N * V), lg, tok, N, V, 1.0f / (float)cnt);
    for (int i = 0; i < N; i++) tok[i] = (i * 13) % 17;
    qlora_embedding_backward(keep(r, 17L * C), gg, tok, N, C);
    float *hh = keep(r, (long)N * C);
    qlora_swiglu_forward(hh, x, gg, (long)N * C);
    qlora_swiglu_backward(keep(r, (long)N * C), keep(r, (long)N * C), hh, x, gg, (long)N * C);
    float *ct = fnew(64L * 20), *st = fnew(64L * 20), *xr = keep(r, (long)N * C);
    int32_t *pos = (int32_t *)malloc(N * sizeof(int32_t));
    for (int i = 0; i < N; i++) pos[i] = i % 64;
    qlora_rope_table(ct, st, 64, 40, 10000.0f, 1.0f, NULL);
    memcpy(xr, x, (size_t)N * C * sizeof(float));
    qlora_rope_forward(xr, pos, ct, st, N, C / 40, 40);
    free(ct); free(st); free(pos);
    free(q); free(k); free(v); free(g); free(mask); free(x); free(w); free(gg); free(tok); free(lg);
}
static void thread_independence(void) {
    run_out a, b;
    int max_threads = omp_get_max_threads();
    run_all(&a, 1);
    run_all(&b, 2);
    omp_set_num_threads(max_threads);
    int same = a.loss == b.loss;
    int first = -1;
    for (int i = 0; i < a.cnt; i++) {
        if (memcmp(a.buf[i], b.buf[i], (size_t)a.n[i] * sizeof(float)) != 0 && first < 0) first = i;
        free(a.buf[i]);
        free(b.buf[i]);
    }
    tu_check(same && first < 0, "1 vs 2 OpenMP threads bit-identical", "loss equal %d, first differing output #%d",
             same, first);
}
#endif

static void simd_helpers(void) {
    float a[300], b[300], y1[300], y2[300];
    int ok_dot = 1, ok_axpy = 1;
    tu_fill_normal(a, 300, 1.0);
    tu_fill_normal(b, 300, 1.0);
    for (int n = 0; n <= 300; n += (n < 70 ? 1 : 23)) {
        double exact = 0, mag = 0;
        for (int i = 0; i < n; i++) { exact += (double)a[i] * b[i]; mag += fabs((double)a[i] * b[i]); }
        float d1 = qlora__ops_dot(a, b, n), d2 = qlora__ops_dot_ref(a, b, n);
        if (fabs(d1 - exact) > 1e-6 * mag + 1e-30 || fabs(d2 - exact) > 1e-6 * mag + 1e-30) ok_dot = 0;
        memcpy(y1, b, sizeof y1);
        memcpy(y2, b, sizeof y2);
        qlora__ops_axpy(y1, 0.37f, a, n);
        qlora__ops_axpy_ref(y2, 0.37f, a, n);
        for (int i = 0; i < 300; i++)
            if (fabs(y1[i] - y2[i]) > 1e-6 * (fabs(y2[i]) + 1)) ok_axpy = 0;
    }
    tu_check(ok_dot, "dot SIMD and _ref vs double, n = 0..300", "a length disagrees");
    tu_check(ok_axpy, "axpy SIMD vs _ref, n = 0..300 (tail untouched)", "a length disagrees");

    // the vector exp (used by softmax, cross-entropy, SwiGLU) against exp in double
    enum { NE = 20011 };
    float *x = fnew(NE), *e = fnew(NE), *y = fnew(NE);
    double worst = 0, sum = 0, got_sum;
    int ok_small = 1;
    for (int i = 0; i < NE; i++) x[i] = -100.0f + 188.3f * (float)i / (float)(NE - 1);
    x[5] = -INFINITY;
    qlora__ops_exp_pass(NULL, e, x, NE, 0.0f, 0.0f);
    for (int i = 0; i < NE; i++) {
        double want = exp((double)x[i]);
        if (x[i] >= -87.0f) {
            double rel = fabs(e[i] - want) / want;
            if (rel > worst) worst = rel;
        } else if (!(e[i] >= 0.0f && e[i] <= 1.7e-38f)) ok_small = 0;
    }
    tu_check(worst < 4e-7, "exp (vector) relative error < 4e-7 on [-87, 88.3]", "worst %.3g", worst);
    tu_check(ok_small && e[5] == 0.0f, "exp (vector) below -87.5 and of -inf is ~0", "exp(-inf) = %g", (double)e[5]);
    for (int i = 0; i < NE; i++) x[i] = (float)(tu_uniform() * 20.0);
    got_sum = qlora__ops_exp_pass(NULL, NULL, x, NE, 2.0f, 0.0f);
    for (int i = 0; i < NE; i++) sum += exp((double)x[i] - 2.0);
    tu_check(fabs(got_sum - sum) <= 1e-6 * sum, "exp pass sum", "%.9g vs %.9g", got_sum, sum);
    x[7] = NAN;
    qlora__ops_exp_pass(NULL, e, x, 16, 0.0f, 0.0f);
    tu_check(e[7] != e[7], "exp (vector) keeps NaN", "exp(NaN) = %g", (double)e[7]);
    for (int i = 0; i < NE; i++) { x[i] = (float)(tu_uniform() * 20.0); y[i] = 0.5f; }
    qlora__ops_exp_pass(y, NULL, x, NE, 3.0f, 0.25f);
    worst = 0;
    for (int i = 0; i < NE; i++) {
        double want = 0.5 + 0.25 * exp((double)x[i] - 3.0);
        if (fabs(y[i] - want) / want > worst) worst = fabs(y[i] - want) / want;
    }
    tu_check(worst < 4e-7, "exp pass y += a·exp(x - shift)", "worst relative error %.3g", worst);
    free(x); free(e); free(y);
}

// =============================================================================================
// 5. errors

static void errors(void) {
    float table[8] = {0}, out[8];
    int32_t tok[3] = {0, 1, 4};
    qlora_error e;
    memset(&e, 0, sizeof e);
    qlora_status s = qlora_embedding_forward(out, tok, table, 3, 2, 4, &e);
    tu_check(s == QLORA_ERR_ARG && e.status == QLORA_ERR_ARG && strstr(e.detail, "tokens[2]") != NULL,
             "embedding token out of range names the position", "status %d detail '%s'", (int)s, e.detail);
    tok[2] = -1;
    s = qlora_embedding_forward(out, tok, table, 3, 2, 4, NULL);
    tu_check(s == QLORA_ERR_ARG, "embedding negative token", "status %d", (int)s);
    float ct[8], st[8];
    s = qlora_rope_table(ct, st, 2, 5, 10000.0f, 1.0f, &e);
    tu_check(s == QLORA_ERR_ARG && strstr(e.detail, "head_dim") != NULL, "rope_table odd head_dim",
             "status %d detail '%s'", (int)s, e.detail);
    s = qlora_rope_table(ct, st, 2, 4, 10000.0f, 0.0f, &e);
    tu_check(s == QLORA_ERR_ARG && strstr(e.detail, "factor") != NULL, "rope_table zero scaling factor",
             "status %d detail '%s'", (int)s, e.detail);
    s = qlora_rope_table(ct, st, 2, 4, -1.0f, 1.0f, NULL);
    tu_check(s == QLORA_ERR_ARG, "rope_table negative theta", "status %d", (int)s);
}

int main(void) {
    const char *qe = getenv("QLORA_TEST_QUICK");
    quick = qe && *qe && strcmp(qe, "0") != 0;
    tu_seed(1234);
    fd_rmsnorm();
    fd_rope();
    {
        uint8_t m[2 * 5] = {1, 1, 1, 1, 1, 0, 0, 1, 1, 0};   // seq 1: 2 left pads + 1 right pad
        fd_attention("gqa+pad", 2, 5, 4, 2, 3, m);
        fd_attention("mha", 1, 4, 2, 2, 4, NULL);
    }
    fd_swiglu();
    fd_cross_entropy();
    fd_embedding();
    torch_reference();
    decode_matches_forward(1, 2, 1, 6);
    decode_matches_forward(13, 6, 2, 10);
    decode_matches_forward(quick ? 40 : 200, 8, 2, 64);
    tiled_vs_ref(1, 1, 2, 1, 6, 0);
    tiled_vs_ref(2, 13, 6, 2, 10, 4);
    tiled_vs_ref(1, 33, 4, 4, 16, 0);
    tiled_vs_ref(2, 70, 4, 1, 40, 9);
    tiled_vs_ref(1, quick ? 40 : 150, 2, 1, 128, 0);
    tiled_vs_ref(2, 200, 2, 2, 64, 7);    // stack blocks of 128 query rows at HD 64: two blocks, the second partial
    tiled_vs_ref(1, 300, 2, 1, 32, 0);    // and of 256 rows at HD 32
    tiled_vs_ref(1, 9, 2, 2, 130, 0);     // HD above the tiled kernels' bound: both sides are _ref
    accumulates();
#ifdef _OPENMP
    thread_independence();
#else
    tu_skip("1 vs 2 OpenMP threads bit-identical", "built without OpenMP");
#endif
    simd_helpers();
    errors();
    return tu_finish();
}
