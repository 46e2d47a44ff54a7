// test_kernels.c - the NF4 dequant-matmul kernels (section 4) and qlora_sgemm.
//
// Every CPU path (SIMD, BLAS, AUTO) is compared with the scalar reference (QLORA_KERNEL_REF) over
// many shapes: M from 1 (the fused GEMV) to 64 (the blocked GEMM), in/out that are not multiples of
// 16, 32 or 64, odd element counts, blocks that straddle rows, blocksizes 32..4096, with and without
// double quantization. The tolerance is relative to Σ|x·w| of each output (a float sum's error
// scale). Backward must accumulate, and is also checked against central differences in double.
// Results must be bit-identical for 1, 2 and 3 OpenMP threads.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

static int quick;   // QLORA_TEST_QUICK=1: smaller shape lists (sanitizer and matrix runs)

// A random W of shape (rows, cols): random code bytes and random positive scales. The kernels do
// not care how W was produced. Exactly (n+1)/2 code bytes are allocated, so ASan sees overreads.
static int make_w(qlora_nf4 *w, int64_t rows, int64_t cols, int32_t bs, int dq, unsigned long long seed) {
    int64_t n = rows * cols, nb = qlora_nf4_num_blocks(n, bs), nbytes = (n + 1) / 2;
    memset(w, 0, sizeof *w);
    tu_seed(seed);
    w->rows = rows;
    w->cols = cols;
    w->blocksize = bs;
    w->double_quant = dq;
    w->codes = (uint8_t *)malloc((size_t)(nbytes > 0 ? nbytes : 1));
    if (!w->codes) return 0;
    for (int64_t i = 0; i < nbytes; i++) w->codes[i] = (uint8_t)(tu_uniform() * 128.0 + 128.0);
    if (n & 1) w->codes[nbytes - 1] = (uint8_t)((w->codes[nbytes - 1] & 0xF0) | 7);   // code 7 = 0.0
    if (!dq) {
        w->absmax = (float *)malloc((size_t)(nb > 0 ? nb : 1) * sizeof(float));
        if (!w->absmax) return 0;
        for (int64_t b = 0; b < nb; b++) w->absmax[b] = (float)(1.0 + 0.5 * tu_uniform());
    } else {
        int64_t nn = qlora_nf4_num_blocks(nb, QLORA_DQ_BLOCK);
        w->qabsmax = (uint8_t *)malloc((size_t)(nb > 0 ? nb : 1));
        w->nested_absmax = (float *)malloc((size_t)(nn > 0 ? nn : 1) * sizeof(float));
        if (!w->qabsmax || !w->nested_absmax) return 0;
        for (int64_t b = 0; b < nb; b++) w->qabsmax[b] = (uint8_t)(tu_uniform() * 128.0 + 128.0);
        for (int64_t b = 0; b < nn; b++) w->nested_absmax[b] = (float)(0.35 + 0.1 * tu_uniform());
        w->nested_offset = 1.0f;
        qlora_dynamic_map(w->nested_map, 1);
    }
    return 1;
}

static void free_w(qlora_nf4 *w) {
    free(w->codes);
    free(w->absmax);
    free(w->qabsmax);
    free(w->nested_absmax);
    memset(w, 0, sizeof *w);
}

// W dequantized in double: wd (rows, cols) = code · scale.
static double *dequant_double(const qlora_nf4 *w) {
    int64_t n = w->rows * w->cols;
    double *wd = (double *)malloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    const float *cb = qlora_nf4_codebook();
    for (int64_t e = 0; e < n; e++) {
        int c = (e & 1) ? (w->codes[e >> 1] & 15) : (w->codes[e >> 1] >> 4);
        wd[e] = (double)cb[c] * (double)qlora_nf4_block_scale(w, e / w->blocksize);
    }
    return wd;
}

typedef struct shape { int64_t in, out; int32_t bs; int dq; const char *what; } shape;

static const shape shapes_full[] = {
    { 64, 64, 64, 0, "64x64 bs64" },
    { 128, 96, 32, 0, "in128 out96 bs32" },
    { 128, 80, 64, 1, "in128 out80 bs64 DQ" },
    { 96, 33, 64, 0, "in96 out33 bs64 (blocks straddle rows)" },
    { 33, 17, 32, 1, "in33 out17 bs32 DQ (odd n, odd rows)" },
    { 255, 7, 128, 0, "in255 out7 bs128 (odd n)" },
    { 100, 41, 4096, 1, "in100 out41 bs4096 DQ (one block)" },
    { 576, 70, 256, 1, "in576 out70 bs256 DQ (3 KC panels)" },
    { 320, 600, 64, 0, "in320 out600 bs64 (2 NC blocks)" },
    { 1, 5, 32, 0, "in1 out5" },
    { 256, 40, 128, 1, "in256 out40 bs128 DQ" },
    { 384, 11, 4096, 0, "in384 out11 bs4096 (blocks span rows)" },
    { 640, 70, 64, 1, "in640 out70 bs64 DQ (3 DQ blocks, rows across their ends)" },
};
static const shape shapes_quick[] = {
    { 64, 64, 64, 0, "64x64 bs64" },
    { 96, 33, 64, 1, "in96 out33 bs64 DQ (blocks straddle rows)" },
    { 33, 17, 32, 0, "in33 out17 bs32 (odd n, odd rows)" },
    { 288, 40, 4096, 0, "in288 out40 bs4096" },
    { 256, 24, 32, 1, "in256 out24 bs32 DQ" },
    { 640, 70, 64, 1, "in640 out70 bs64 DQ (3 DQ blocks, rows across their ends)" },
};
static const int64_t Ms_full[] = { 1, 2, 3, 5, 8, 9, 17, 64 };
static const int64_t Ms_quick[] = { 1, 3, 9, 17 };

static const qlora_kernel kernels[] = { QLORA_KERNEL_SIMD, QLORA_KERNEL_BLAS, QLORA_KERNEL_AUTO };
static const char *const kernel_names[] = { "simd", "blas", "auto" };

// Every kernel vs the reference on one shape, all M, forward and backward.
static void check_shape(const shape *sh, const int64_t *Ms, int nM) {
    qlora_nf4 w;
    const int64_t N = sh->out, K = sh->in;
    if (!make_w(&w, N, K, sh->bs, sh->dq, 1000 + (unsigned long long)(N * 131 + K))) {
        tu_check(0, "make_w", "out of memory");
        return;
    }
    double *wd = dequant_double(&w);
    int64_t Mmax = Ms[nM - 1];
    float *x = (float *)malloc((size_t)(Mmax * K) * sizeof(float));
    float *dy = (float *)malloc((size_t)(Mmax * N) * sizeof(float));
    float *dx0 = (float *)malloc((size_t)(Mmax * K) * sizeof(float));
    float *yref = (float *)malloc((size_t)(Mmax * N) * sizeof(float));
    float *y = (float *)malloc((size_t)(Mmax * N) * sizeof(float));
    float *dxref = (float *)malloc((size_t)(Mmax * K) * sizeof(float));
    float *dx = (float *)malloc((size_t)(Mmax * K) * sizeof(float));
    double *ybound = (double *)malloc((size_t)(Mmax * N) * sizeof(double));
    double *dxbound = (double *)malloc((size_t)(Mmax * K) * sizeof(double));
    tu_fill_normal(x, (long)(Mmax * K), 1.0);
    tu_fill_normal(dy, (long)(Mmax * N), 1.0);
    tu_fill_normal(dx0, (long)(Mmax * K), 1.0);   // backward accumulates onto this

    int ref_ok_f = 1, ref_ok_b = 1;
    int ok[3][2] = { { 1, 1 }, { 1, 1 }, { 1, 1 } };
    char detail[3][2][256];
    memset(detail, 0, sizeof detail);
    for (int im = 0; im < nM; im++) {
        const int64_t M = Ms[im];
        qlora_exec ex = { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_F32 };
        qlora_error err = { QLORA_OK, "" };
        // Reference, then check the reference itself against double precision.
        for (int64_t i = 0; i < M * N; i++) yref[i] = NAN;   // forward must overwrite
        qlora_status st = qlora_nf4_linear_forward(&ex, yref, x, &w, M, &err);
        memcpy(dxref, dx0, (size_t)(M * K) * sizeof(float));
        qlora_status st2 = qlora_nf4_linear_backward(&ex, dxref, dy, &w, M, &err);
        if (st != QLORA_OK || st2 != QLORA_OK) { ref_ok_f = ref_ok_b = 0; break; }
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double s = 0.0, b = 0.0;
                for (int64_t k = 0; k < K; k++) {
                    double t = (double)x[m * K + k] * wd[n * K + k];
                    s += t;
                    b += fabs(t);
                }
                ybound[m * N + n] = b;
                if (fabs(s - yref[m * N + n]) > 1e-5 * b + 1e-6) ref_ok_f = 0;
            }
        for (int64_t m = 0; m < M; m++)
            for (int64_t k = 0; k < K; k++) {
                double s = dx0[m * K + k], b = fabs(dx0[m * K + k]);
                for (int64_t n = 0; n < N; n++) {
                    double t = (double)dy[m * N + n] * wd[n * K + k];
                    s += t;
                    b += fabs(t);
                }
                dxbound[m * K + k] = b;
                if (fabs(s - dxref[m * K + k]) > 1e-5 * b + 1e-6) ref_ok_b = 0;
            }
        for (int ik = 0; ik < 3; ik++) {
            ex.kernel = kernels[ik];
            char name[64];
            snprintf(name, sizeof name, "M=%lld", (long long)M);
            for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
            st = qlora_nf4_linear_forward(&ex, y, x, &w, M, &err);
            if (st != QLORA_OK) {
                if (ok[ik][0]) snprintf(detail[ik][0], 256, "M=%lld: status %s (%s)", (long long)M, qlora_status_string(st), err.detail);
                ok[ik][0] = 0;
            } else {
                for (int64_t i = 0; i < M * N; i++) {
                    double d = fabs((double)y[i] - yref[i]);
                    if (!(d <= 1e-5 * ybound[i] + 1e-6)) {
                        if (ok[ik][0])
                            snprintf(detail[ik][0], 256, "M=%lld [%lld,%lld] got %.9g want %.9g (bound %.3g)",
                                     (long long)M, (long long)(i / N), (long long)(i % N), (double)y[i],
                                     (double)yref[i], ybound[i]);
                        ok[ik][0] = 0;
                        break;
                    }
                }
            }
            memcpy(dx, dx0, (size_t)(M * K) * sizeof(float));
            st = qlora_nf4_linear_backward(&ex, dx, dy, &w, M, &err);
            if (st != QLORA_OK) {
                if (ok[ik][1]) snprintf(detail[ik][1], 256, "M=%lld: status %s (%s)", (long long)M, qlora_status_string(st), err.detail);
                ok[ik][1] = 0;
            } else {
                for (int64_t i = 0; i < M * K; i++) {
                    double d = fabs((double)dx[i] - dxref[i]);
                    if (!(d <= 1e-5 * dxbound[i] + 1e-6)) {
                        if (ok[ik][1])
                            snprintf(detail[ik][1], 256, "M=%lld [%lld,%lld] got %.9g want %.9g (bound %.3g)",
                                     (long long)M, (long long)(i / K), (long long)(i % K), (double)dx[i],
                                     (double)dxref[i], dxbound[i]);
                        ok[ik][1] = 0;
                        break;
                    }
                }
            }
        }
    }
    char name[160];
    snprintf(name, sizeof name, "ref forward vs double: %s", sh->what);
    tu_check(ref_ok_f, name, "reference differs from the double-precision product");
    snprintf(name, sizeof name, "ref backward vs double: %s", sh->what);
    tu_check(ref_ok_b, name, "reference differs from the double-precision product");
    for (int ik = 0; ik < 3; ik++) {
        snprintf(name, sizeof name, "%s forward vs ref: %s", kernel_names[ik], sh->what);
        tu_check(ok[ik][0], name, "%s", detail[ik][0]);
        snprintf(name, sizeof name, "%s backward (accumulating) vs ref: %s", kernel_names[ik], sh->what);
        tu_check(ok[ik][1], name, "%s", detail[ik][1]);
    }
    free(x); free(dy); free(dx0); free(yref); free(y); free(dxref); free(dx); free(ybound); free(dxbound);
    free(wd);
    free_w(&w);
}

// Backward against central differences of L = Σ G ⊙ (X·Wᵀ) in double, W dequantized to double.
static void check_finite_differences(void) {
    static const struct { int64_t M, K, N; int32_t bs; int dq; } cases[] = {
        { 3, 64, 24, 64, 0 }, { 9, 33, 17, 32, 1 }, { 2, 128, 20, 64, 1 },
    };
    for (int c = 0; c < 3; c++) {
        const int64_t M = cases[c].M, K = cases[c].K, N = cases[c].N;
        qlora_nf4 w;
        make_w(&w, N, K, cases[c].bs, cases[c].dq, 77 + (unsigned long long)c);
        double *wd = dequant_double(&w);
        float *g = (float *)malloc((size_t)(M * N) * sizeof(float));
        float *xf = (float *)malloc((size_t)(M * K) * sizeof(float));
        double *x = (double *)malloc((size_t)(M * K) * sizeof(double));
        double *fd = (double *)malloc((size_t)(M * K) * sizeof(double));
        double *got = (double *)malloc((size_t)(M * K) * sizeof(double));
        float *dx = (float *)malloc((size_t)(M * K) * sizeof(float));
        tu_fill_normal(g, (long)(M * N), 1.0);
        tu_fill_normal(xf, (long)(M * K), 1.0);
        for (int64_t i = 0; i < M * K; i++) x[i] = xf[i];
        const double h = 1e-3;
        for (int64_t i = 0; i < M * K; i++) {
            double l[2];
            for (int sgn = 0; sgn < 2; sgn++) {
                double save = x[i];
                x[i] = save + (sgn ? -h : h);
                double L = 0.0;
                for (int64_t m = 0; m < M; m++)
                    for (int64_t n = 0; n < N; n++) {
                        double s = 0.0;
                        for (int64_t k = 0; k < K; k++) s += x[m * K + k] * wd[n * K + k];
                        L += (double)g[m * N + n] * s;
                    }
                l[sgn] = L;
                x[i] = save;
            }
            fd[i] = (l[0] - l[1]) / (2.0 * h);
        }
        for (int ik = -1; ik < 3; ik++) {
            qlora_exec ex = { ik < 0 ? QLORA_KERNEL_REF : kernels[ik], NULL, QLORA_COMPUTE_F32 };
            for (int64_t i = 0; i < M * K; i++) dx[i] = 0.5f;   // accumulate onto 0.5
            qlora_status st = qlora_nf4_linear_backward(&ex, dx, g, &w, M, NULL);
            for (int64_t i = 0; i < M * K; i++) got[i] = (double)dx[i] - 0.5;
            char name[128];
            snprintf(name, sizeof name, "%s backward vs finite differences (M=%lld K=%lld N=%lld bs=%d%s)",
                     ik < 0 ? "ref" : kernel_names[ik], (long long)M, (long long)K, (long long)N, (int)cases[c].bs,
                     cases[c].dq ? " DQ" : "");
            if (st != QLORA_OK) tu_check(0, name, "status %s", qlora_status_string(st));
            else tu_close_d(name, got, fd, (long)(M * K), 1e-4, 1e-4);
        }
        free(g); free(xf); free(x); free(fd); free(got); free(dx); free(wd);
        free_w(&w);
    }
}

// Bit-identical results for 1, 2 and 3 threads on every path (and for both GEMV and GEMM).
#ifdef _OPENMP
// C (M, N) = op(A)·op(B) + beta·C (C starting at 0.5) with 1, 2 and 3 threads: the three results have the same bits.
static void sgemm_same_bits(qlora_kernel kernel, int ta, int tb, int64_t M, int64_t N, int64_t K, float beta,
                            const char *name) {
    float *A = (float *)malloc((size_t)(M * K) * sizeof(float)), *B = (float *)malloc((size_t)(K * N) * sizeof(float));
    float *C[3];
    tu_fill_normal(A, (long)(M * K), 1.0);
    tu_fill_normal(B, (long)(K * N), 1.0);
    int same = 1;
    for (int t = 0; t < 3; t++) {
        C[t] = (float *)malloc((size_t)(M * N) * sizeof(float));
        for (int64_t i = 0; i < M * N; i++) C[t][i] = 0.5f;
        omp_set_num_threads(t + 1);
        qlora_exec ex = { kernel, NULL, QLORA_COMPUTE_F32 };
        qlora_sgemm(&ex, ta, tb, M, N, K, 1.0f, A, ta ? M : K, B, tb ? K : N, beta, C[t], N);
        if (t) same = same && !memcmp(C[0], C[t], (size_t)(M * N) * sizeof(float));
    }
    tu_check(same, name, "results differ");
    for (int t = 0; t < 3; t++) free(C[t]);
    free(A);
    free(B);
}
#endif

static void check_thread_independence(void) {
#ifdef _OPENMP
    const int saved = omp_get_max_threads();
    static const struct { int64_t M, K, N; int32_t bs; int dq; } cases[] = {
        { 1, 512, 300, 64, 0 }, { 5, 512, 300, 64, 1 }, { 64, 320, 300, 64, 0 }, { 3, 320, 301, 128, 0 },
        { 200, 512, 301, 64, 1 },
    };
    for (int c = 0; c < 5; c++) {
        const int64_t M = cases[c].M, K = cases[c].K, N = cases[c].N;
        qlora_nf4 w;
        make_w(&w, N, K, cases[c].bs, cases[c].dq, 500 + (unsigned long long)c);
        float *x = (float *)malloc((size_t)(M * K) * sizeof(float));
        float *dy = (float *)malloc((size_t)(M * N) * sizeof(float));
        float *y[3], *dx[3];
        tu_fill_normal(x, (long)(M * K), 1.0);
        tu_fill_normal(dy, (long)(M * N), 1.0);
        for (int ik = 0; ik < 3; ik++) {
            qlora_exec ex = { kernels[ik], NULL, QLORA_COMPUTE_F32 };
            int same = 1;
            for (int t = 0; t < 3; t++) {
                y[t] = (float *)malloc((size_t)(M * N) * sizeof(float));
                dx[t] = (float *)malloc((size_t)(M * K) * sizeof(float));
                for (int64_t i = 0; i < M * K; i++) dx[t][i] = 0.25f;
                omp_set_num_threads(t + 1);
                qlora_nf4_linear_forward(&ex, y[t], x, &w, M, NULL);
                qlora_nf4_linear_backward(&ex, dx[t], dy, &w, M, NULL);
            }
            for (int t = 1; t < 3; t++)
                same = same && !memcmp(y[0], y[t], (size_t)(M * N) * sizeof(float)) &&
                       !memcmp(dx[0], dx[t], (size_t)(M * K) * sizeof(float));
            char name[128];
            snprintf(name, sizeof name, "%s: bit-identical with 1, 2, 3 threads (M=%lld K=%lld N=%lld)",
                     kernel_names[ik], (long long)M, (long long)K, (long long)N);
            tu_check(same, name, "results depend on the thread count");
            for (int t = 0; t < 3; t++) { free(y[t]); free(dx[t]); }
        }
        {   // QLORA_COMPUTE_BF16: the bf16 GEMV's pieces (M <= 8 forward), the bf16 GEMM otherwise
            qlora_exec ex = { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_BF16 };
            int same = 1;
            for (int t = 0; t < 3; t++) {
                y[t] = (float *)malloc((size_t)(M * N) * sizeof(float));
                dx[t] = (float *)malloc((size_t)(M * K) * sizeof(float));
                for (int64_t i = 0; i < M * K; i++) dx[t][i] = 0.25f;
                omp_set_num_threads(t + 1);
                qlora_nf4_linear_forward(&ex, y[t], x, &w, M, NULL);
                qlora_nf4_linear_backward(&ex, dx[t], dy, &w, M, NULL);
                if (t)
                    same = same && !memcmp(y[0], y[t], (size_t)(M * N) * sizeof(float)) &&
                           !memcmp(dx[0], dx[t], (size_t)(M * K) * sizeof(float));
            }
            char name[128];
            snprintf(name, sizeof name, "bf16 compute: bit-identical with 1, 2, 3 threads (M=%lld K=%lld N=%lld)",
                     (long long)M, (long long)K, (long long)N);
            tu_check(same, name, "results depend on the thread count");
            for (int t = 0; t < 3; t++) { free(y[t]); free(dx[t]); }
        }
        free(x); free(dy);
        free_w(&w);
    }
    // qlora_sgemm, GEMM split by columns and (few columns) by rows.
    sgemm_same_bits(QLORA_KERNEL_SIMD, 0, 0, 200, 16, 300, 0.0f,
                    "sgemm simd: bit-identical with 1, 2, 3 threads (M=200 N=16 K=300)");
    // qlora_sgemm AUTO (OpenBLAS where it is built in) with sums longer than OpenBLAS' K block: OpenBLAS alone
    // splits the last K blocks differently with one thread and with several (K = 449..463, 688, ... on SkylakeX).
    {
        static const struct { int64_t M, N, K; int ta, tb; } sh[] = {
            { 256, 64, 449, 0, 0 }, { 512, 16, 688, 0, 1 }, { 512, 256, 688, 0, 0 }, { 16, 688, 1040, 1, 0 },
            { 300, 40, 1100, 0, 1 },
        };
        for (int c = 0; c < 5; c++) {
            char name[160];
            snprintf(name, sizeof name, "sgemm auto: bit-identical with 1, 2, 3 threads (M=%lld N=%lld K=%lld ta %d tb %d)",
                     (long long)sh[c].M, (long long)sh[c].N, (long long)sh[c].K, sh[c].ta, sh[c].tb);
            sgemm_same_bits(QLORA_KERNEL_AUTO, sh[c].ta, sh[c].tb, sh[c].M, sh[c].N, sh[c].K, 1.0f, name);
        }
    }
    // qlora_sgemm's narrow path (LoRA's rank-r shapes), tiles of C split over the threads.
    {
        static const struct { int64_t M, N, K; int ta, tb; } sh[] = {
            { 301, 48, 500, 0, 1 }, { 48, 700, 600, 1, 0 }, { 700, 16, 300, 1, 0 }, { 500, 700, 16, 0, 1 },
            { 400, 16, 900, 0, 0 }, { 300, 32, 257, 0, 1 },
        };
        for (int c = 0; c < 6; c++) {
            char name[160];
            snprintf(name, sizeof name, "sgemm narrow: bit-identical with 1, 2, 3 threads (M=%lld N=%lld K=%lld ta %d tb %d)",
                     (long long)sh[c].M, (long long)sh[c].N, (long long)sh[c].K, sh[c].ta, sh[c].tb);
            sgemm_same_bits(QLORA_KERNEL_AUTO, sh[c].ta, sh[c].tb, sh[c].M, sh[c].N, sh[c].K, 1.0f, name);
        }
    }
    // qlora_sgemm's small-M path (decoding: a few rows against a transposed B), split by columns.
    sgemm_same_bits(QLORA_KERNEL_AUTO, 0, 1, 3, 1000, 701, 0.0f,
                    "sgemm small M, B transposed: bit-identical with 1, 2, 3 threads (M=3 N=1000 K=701)");
    omp_set_num_threads(saved);
#else
    tu_skip("thread independence", "built without OpenMP");
#endif
}

// qlora_sgemm: all transpose combinations, padded leading dimensions, alpha/beta cases.
static void check_sgemm(void) {
    static const struct { int64_t M, N, K; } cases[] = {
        { 1, 1, 1 }, { 17, 33, 9 }, { 64, 16, 256 }, { 64, 256, 16 }, { 16, 300, 64 }, { 5, 7, 0 }, { 1600, 40, 40 },
        { 203, 48, 300 }, { 70, 16, 1000 }, { 45, 130, 65 },   // the narrow kernel's three tiles, and beside it
    };
    static const float ab[4][2] = { { 1.0f, 0.0f }, { 0.5f, 1.0f }, { -1.5f, -0.5f }, { 2.0f, 0.0f } };
    const int ncases = quick ? 5 : (int)(sizeof cases / sizeof cases[0]);
    for (int c = 0; c < ncases; c++) {
        const int64_t M = cases[c].M, N = cases[c].N, K = cases[c].K;
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++) {
                const int64_t lda = (ta ? M : K) + 3, ldb = (tb ? K : N) + 2, ldc = N + 1;
                const int64_t arows = ta ? K : M, brows = tb ? N : K;
                float *A = (float *)malloc((size_t)(arows * lda + 1) * sizeof(float));
                float *B = (float *)malloc((size_t)(brows * ldb + 1) * sizeof(float));
                float *C0 = (float *)malloc((size_t)(M * ldc) * sizeof(float));
                float *Cref = (float *)malloc((size_t)(M * ldc) * sizeof(float));
                float *C = (float *)malloc((size_t)(M * ldc) * sizeof(float));
                double *bound = (double *)malloc((size_t)(M * ldc) * sizeof(double));
                tu_fill_normal(A, (long)(arows * lda + 1), 1.0);
                tu_fill_normal(B, (long)(brows * ldb + 1), 1.0);
                tu_fill_normal(C0, (long)(M * ldc), 1.0);
                int ok[3] = { 1, 1, 1 };
                char detail[3][200];
                memset(detail, 0, sizeof detail);
                for (int iab = 0; iab < 4; iab++) {
                    const float alpha = ab[iab][0], beta = ab[iab][1];
                    for (int64_t i = 0; i < M; i++)
                        for (int64_t j = 0; j < N; j++) {
                            double b = fabs((double)beta * C0[i * ldc + j]);
                            for (int64_t k = 0; k < K; k++)
                                b += fabs((double)alpha * (ta ? A[k * lda + i] : A[i * lda + k]) *
                                          (tb ? B[j * ldb + k] : B[k * ldb + j]));
                            bound[i * ldc + j] = b;
                        }
                    memcpy(Cref, C0, (size_t)(M * ldc) * sizeof(float));
                    if (beta == 0.0f)   // beta = 0 must ignore C, NaNs included
                        for (int64_t i = 0; i < M; i++) Cref[i * ldc] = NAN;
                    qlora_exec ex = { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_F32 };
                    qlora_sgemm(&ex, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, Cref, ldc);
                    for (int ik = 0; ik < 3; ik++) {
                        memcpy(C, C0, (size_t)(M * ldc) * sizeof(float));
                        if (beta == 0.0f)
                            for (int64_t i = 0; i < M; i++) C[i * ldc] = NAN;
                        ex.kernel = kernels[ik];
                        qlora_sgemm(&ex, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                        for (int64_t i = 0; i < M && ok[ik]; i++)
                            for (int64_t j = 0; j < ldc; j++) {
                                double want = Cref[i * ldc + j], got = C[i * ldc + j];
                                double lim = j < N ? 1e-5 * bound[i * ldc + j] + 1e-6 : 0.0;
                                if (j == N ? got != C0[i * ldc + j] : !(fabs(got - want) <= lim)) {
                                    snprintf(detail[ik], 200, "alpha %g beta %g: C[%lld][%lld] got %.9g want %.9g",
                                             (double)alpha, (double)beta, (long long)i, (long long)j, got,
                                             j == N ? (double)C0[i * ldc + j] : want);
                                    ok[ik] = 0;
                                    break;
                                }
                            }
                    }
                }
                for (int ik = 0; ik < 3; ik++) {
                    char name[160];
                    snprintf(name, sizeof name, "sgemm %s vs ref: trans_a=%d trans_b=%d M=%lld N=%lld K=%lld (padded ld)",
                             kernel_names[ik], ta, tb, (long long)M, (long long)N, (long long)K);
                    tu_check(ok[ik], name, "%s", detail[ik]);
                }
                free(A); free(B); free(C0); free(Cref); free(C); free(bound);
            }
    }
}

// The span dequantizer at every alignment against the element-wise definition (and against
// section 3's qlora_nf4_dequantize).
static void check_span(void) {
    static const struct { int64_t rows, cols; int32_t bs; int dq; } cases[] = {
        { 7, 45, 32, 0 }, { 5, 77, 64, 1 }, { 3, 200, 128, 0 }, { 1, 4097, 4096, 1 },
    };
    int ok = 1, ok_lib = 1;
    for (int c = 0; c < 4 && ok; c++) {
        qlora_nf4 w;
        make_w(&w, cases[c].rows, cases[c].cols, cases[c].bs, cases[c].dq, 900 + (unsigned long long)c);
        const int64_t n = w.rows * w.cols;
        double *wd = dequant_double(&w);
        float *out = (float *)malloc((size_t)n * sizeof(float)), *lib = (float *)malloc((size_t)n * sizeof(float));
        for (int64_t e0 = 0; e0 < n && ok; e0 += (e0 < 70 ? 1 : 37)) {
            int64_t len = (n - e0) < 100 ? (n - e0) : 100 + (e0 % 7);
            if (len > n - e0) len = n - e0;
            qlora__nf4_span(out, &w, e0, len, qlora__log2i(w.blocksize));
            for (int64_t i = 0; i < len; i++)
                if ((double)out[i] != (double)(float)wd[e0 + i]) {
                    ok = 0;
                    tu_check(0, "span dequantization at every alignment", "case %d e0 %lld i %lld: %.9g vs %.9g", c,
                             (long long)e0, (long long)i, (double)out[i], wd[e0 + i]);
                    break;
                }
        }
        qlora__nf4_span(out, &w, 0, n, qlora__log2i(w.blocksize));
        if (qlora_nf4_dequantize(lib, &w, NULL) != QLORA_OK || memcmp(out, lib, (size_t)n * sizeof(float))) ok_lib = 0;
        free(out); free(lib); free(wd);
        free_w(&w);
    }
    if (ok) tu_check(1, "span dequantization at every alignment", NULL);
    tu_check(ok_lib, "span dequantization equals qlora_nf4_dequantize bit for bit", "differs");
}

// A W made by section 3's quantizer (real data path) against the dequantized dense product.
static void check_quantized_weight(void) {
    const int64_t M = 12, N = 96, K = 256;
    float *wf = (float *)malloc((size_t)(N * K) * sizeof(float)), *wdq = (float *)malloc((size_t)(N * K) * sizeof(float));
    float *x = (float *)malloc((size_t)(M * K) * sizeof(float)), *y = (float *)malloc((size_t)(M * N) * sizeof(float));
    float *yd = (float *)malloc((size_t)(M * N) * sizeof(float));
    tu_fill_normal(wf, (long)(N * K), 0.02);
    tu_fill_normal(x, (long)(M * K), 1.0);
    qlora_nf4 w;
    qlora_error err = { QLORA_OK, "" };
    if (qlora_nf4_quantize(&w, wf, N, K, 64, 1, &err) != QLORA_OK) {
        tu_check(0, "forward of a qlora_nf4_quantize weight", "quantize failed: %s", err.detail);
    } else {
        qlora_nf4_dequantize(wdq, &w, NULL);
        qlora_exec ex = { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_F32 };
        qlora_sgemm(&ex, 0, 1, M, N, K, 1.0f, x, K, wdq, K, 0.0f, yd, N);
        qlora_nf4_linear_forward(NULL, y, x, &w, M, NULL);
        tu_close("forward of a qlora_nf4_quantize weight (bs64 DQ) = x·dequant(W)ᵀ", y, yd, (long)(M * N), 1e-5, 1e-4);
        qlora_nf4_free(&w);
    }
    free(wf); free(wdq); free(x); free(y); free(yd);
}

// Backend hand-off: OK result is final, UNSUPPORTED falls back to the CPU, errors propagate.
static qlora_status fake_forward(void *user, float *y, const float *x, const qlora_nf4 *w, int64_t M, qlora_error *err) {
    int mode = *(int *)user;
    (void)x;
    if (mode == 0) { for (int64_t i = 0; i < M * w->rows; i++) y[i] = 42.0f; return QLORA_OK; }
    if (mode == 1) return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "fake: unsupported");
    return qlora__fail(err, QLORA_ERR_BACKEND, "fake: device lost (code -4)");
}

static qlora_status fake_backward(void *user, float *dx, const float *dy, const qlora_nf4 *w, int64_t M, qlora_error *err) {
    int mode = *(int *)user;
    (void)dy;
    if (mode == 0) { for (int64_t i = 0; i < M * w->cols; i++) dx[i] += 1.0f; return QLORA_OK; }
    if (mode == 1) return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "fake: unsupported");
    return qlora__fail(err, QLORA_ERR_BACKEND, "fake: device lost (code -4)");
}

static void check_backend(void) {
    enum { M = 2, N = 8, K = 64 };
    qlora_nf4 w;
    make_w(&w, N, K, 64, 0, 31);
    int mode = 0;
    qlora_backend be;
    memset(&be, 0, sizeof be);
    be.name = "fake";
    be.user = &mode;
    be.nf4_linear_forward = fake_forward;
    be.nf4_linear_backward = fake_backward;
    qlora_exec ex = { QLORA_KERNEL_AUTO, &be, QLORA_COMPUTE_F32 };
    float x[M * K], y[M * N], yref[M * N], dy[M * N], dx[M * K];
    tu_fill_normal(x, M * K, 1.0);
    tu_fill_normal(dy, M * N, 1.0);
    qlora_exec rex = { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_F32 };
    qlora_nf4_linear_forward(&rex, yref, x, &w, M, NULL);
    qlora_error err = { QLORA_OK, "" };
    qlora_status st = qlora_nf4_linear_forward(&ex, y, x, &w, M, &err);
    tu_check(st == QLORA_OK && y[0] == 42.0f && y[M * N - 1] == 42.0f, "backend forward result is used", "st %d", (int)st);
    mode = 1;
    st = qlora_nf4_linear_forward(&ex, y, x, &w, M, &err);
    tu_close("backend UNSUPPORTED falls back to the CPU (forward)", y, yref, M * N, 1e-5, 1e-5);
    for (int i = 0; i < M * K; i++) dx[i] = 0.0f;
    st = qlora_nf4_linear_backward(&ex, dx, dy, &w, M, &err);
    tu_check(st == QLORA_OK && dx[0] != 0.0f && dx[0] != 1.0f, "backend UNSUPPORTED falls back to the CPU (backward)", "st %d", (int)st);
    mode = 2;
    err.detail[0] = 0;
    st = qlora_nf4_linear_forward(&ex, y, x, &w, M, &err);
    tu_check(st == QLORA_ERR_BACKEND && strstr(err.detail, "device lost"), "backend error propagates (forward)",
             "st %d detail '%s'", (int)st, err.detail);
    st = qlora_nf4_linear_backward(&ex, dx, dy, &w, M, &err);
    tu_check(st == QLORA_ERR_BACKEND, "backend error propagates (backward)", "st %d", (int)st);
    be.nf4_linear_forward = NULL;   // a NULL member sends the call to the CPU
    st = qlora_nf4_linear_forward(&ex, y, x, &w, M, &err);
    tu_check(st == QLORA_OK && fabsf(y[3] - yref[3]) <= 1e-4f, "backend NULL member uses the CPU", "st %d", (int)st);
    free_w(&w);
}

// Bad input returns the right status with a detail and does not crash.
static void check_bad_input(void) {
    qlora_nf4 w;
    make_w(&w, 8, 64, 64, 0, 3);
    float x[2 * 64], y[2 * 8];
    memset(x, 0, sizeof x);
    struct { const char *what; qlora_status want; } r[16];
    qlora_status got[16];
    char det[16][256];
    int nr = 0;
    qlora_error err;
#define QLORA__TRY(desc, expect, call)                                   \
    do {                                                                 \
        memset(&err, 0, sizeof err);                                     \
        r[nr].what = desc;                                               \
        r[nr].want = expect;                                             \
        got[nr] = call;                                                  \
        snprintf(det[nr], 256, "%s", err.detail);                        \
        nr++;                                                            \
    } while (0)
    QLORA__TRY("forward y NULL", QLORA_ERR_ARG, qlora_nf4_linear_forward(NULL, NULL, x, &w, 2, &err));
    QLORA__TRY("forward x NULL", QLORA_ERR_ARG, qlora_nf4_linear_forward(NULL, y, NULL, &w, 2, &err));
    QLORA__TRY("forward w NULL", QLORA_ERR_ARG, qlora_nf4_linear_forward(NULL, y, x, NULL, 2, &err));
    QLORA__TRY("forward M < 0", QLORA_ERR_ARG, qlora_nf4_linear_forward(NULL, y, x, &w, -1, &err));
    QLORA__TRY("backward dx NULL", QLORA_ERR_ARG, qlora_nf4_linear_backward(NULL, NULL, y, &w, 2, &err));
    QLORA__TRY("backward dy NULL", QLORA_ERR_ARG, qlora_nf4_linear_backward(NULL, x, NULL, &w, 2, &err));
    QLORA__TRY("backward M < 0", QLORA_ERR_ARG, qlora_nf4_linear_backward(NULL, x, y, &w, -5, &err));
    qlora_nf4 b = w;
    b.rows = -1;
    QLORA__TRY("negative rows", QLORA_ERR_SHAPE, qlora_nf4_linear_forward(NULL, y, x, &b, 2, &err));
    b = w;
    b.rows = (int64_t)1 << 40;
    b.cols = (int64_t)1 << 40;
    QLORA__TRY("rows*cols overflows", QLORA_ERR_SHAPE, qlora_nf4_linear_forward(NULL, y, x, &b, 2, &err));
    b = w;
    b.cols = (int64_t)1 << 33;
    QLORA__TRY("M*cols*4 overflows", QLORA_ERR_SHAPE, qlora_nf4_linear_backward(NULL, x, y, &b, (int64_t)1 << 31, &err));
    b = w;
    b.blocksize = 48;
    QLORA__TRY("blocksize 48", QLORA_ERR_ARG, qlora_nf4_linear_forward(NULL, y, x, &b, 2, &err));
    b = w;
    b.codes = NULL;
    QLORA__TRY("codes NULL", QLORA_ERR_ARG, qlora_nf4_linear_forward(NULL, y, x, &b, 2, &err));
    b = w;
    b.absmax = NULL;
    QLORA__TRY("absmax NULL", QLORA_ERR_ARG, qlora_nf4_linear_backward(NULL, x, y, &b, 2, &err));
    b = w;
    b.double_quant = 1;
    QLORA__TRY("DQ without qabsmax", QLORA_ERR_ARG, qlora_nf4_linear_forward(NULL, y, x, &b, 2, &err));
#undef QLORA__TRY
    for (int i = 0; i < nr; i++) {
        char name[128];
        snprintf(name, sizeof name, "bad input: %s -> %s", r[i].what, qlora_status_string(r[i].want));
        tu_check(got[i] == r[i].want && det[i][0] != 0, name, "got %s, detail '%s'", qlora_status_string(got[i]), det[i]);
    }
    // M = 0 and NULL err are fine.
    tu_check(qlora_nf4_linear_forward(NULL, y, x, &w, 0, NULL) == QLORA_OK, "M = 0 is a no-op", "status");
    tu_check(qlora_nf4_linear_forward(NULL, NULL, x, &w, 2, NULL) == QLORA_ERR_ARG, "err may be NULL", "status");
    // qlora_sgemm has no status: bad arguments must leave C alone.
    float C[4] = { 1, 2, 3, 4 }, A[4] = { 1, 1, 1, 1 };
    qlora_sgemm(NULL, 0, 0, 2, 2, 2, 1.0f, NULL, 2, A, 2, 0.0f, C, 2);
    qlora_sgemm(NULL, 0, 0, 2, 2, 2, 1.0f, A, 1, A, 2, 0.0f, C, 2);
    qlora_sgemm(NULL, 0, 0, -2, 2, 2, 1.0f, A, 2, A, 2, 0.0f, C, 2);
    tu_check(C[0] == 1 && C[3] == 4, "sgemm: bad arguments are a no-op", "C changed");
    free_w(&w);
}

// bf16 rounding written independently of qlora.h: keep 8 significant bits with nearbyint (ties to
// even in the default rounding mode); below FLT_MIN → ±0 (qlora.h's documented flush).
static double bf16_indep(float v) {
    if (v != v || isinf(v) || v == 0.0f) return v;
    if (fabs((double)v) < 1.1754943508222875e-38) return v < 0 ? -0.0 : 0.0;
    int e;
    frexp((double)v, &e);
    return ldexp(nearbyint(ldexp((double)v, 8 - e)), e - 8);
}

// QLORA_COMPUTE_BF16: the scalar reference against a double-precision product of bf16-rounded x and
// codebook, every kernel against the reference, the distance to fp32 (bf16 precision, not more),
// the GEMM form outside the GEMV's contract (M > 8, in % 128 != 0, backward), NaN rows, and the rounding.
static void check_bf16_compute(void) {
    {
        const float one_tie = 1.0f + 1.0f / 256.0f, odd_tie = 1.0f + 3.0f / 256.0f;
        const float r1 = qlora__bf16_round(one_tie), r2 = qlora__bf16_round(odd_tie);
        const float rn = qlora__bf16_round(NAN), ri = qlora__bf16_round(-INFINITY), rs = qlora__bf16_round(-1e-39f);
        const float rmax = qlora__bf16_round(3.4e38f), rsmall = qlora__bf16_round(1.0f + 1.0f / 512.0f);
        tu_check(r1 == 1.0f && r2 == 1.0f + 1.0f / 64.0f && rn != rn && ri == -INFINITY && rs == 0.0f &&
                     signbit(rs) && isinf(rmax) && rsmall == 1.0f && qlora__bf16_round(-2.5f) == -2.5f,
                 "bf16 rounding: ties to even, NaN, Inf, subnormal to -0, overflow to Inf",
                 "%.9g %.9g %.9g %.9g %.9g %.9g %.9g", (double)r1, (double)r2, (double)rn, (double)ri, (double)rs,
                 (double)rmax, (double)rsmall);
    }
    static const struct { int64_t K, N; int32_t bs; int dq; } cases[] = {
        { 128, 40, 64, 1 }, { 256, 37, 32, 0 }, { 384, 70, 256, 1 }, { 1024, 19, 4096, 0 }, { 128, 7, 128, 1 },
        { 4096, 40, 64, 1 },
    };
    static const int64_t Ms[] = { 1, 3, 8 };
    const int ncases = quick ? 3 : (int)(sizeof cases / sizeof *cases);
    const float *cb = qlora_nf4_codebook();
    for (int c = 0; c < ncases; c++) {
        const int64_t K = cases[c].K, N = cases[c].N;
        qlora_nf4 w;
        if (!make_w(&w, N, K, cases[c].bs, cases[c].dq, 900 + (unsigned long long)c)) {
            tu_check(0, "make_w", "out of memory");
            return;
        }
        float *x = (float *)malloc((size_t)(8 * K) * sizeof(float));
        float *yr = (float *)malloc((size_t)(8 * N) * sizeof(float));
        float *y = (float *)malloc((size_t)(8 * N) * sizeof(float));
        float *yf = (float *)malloc((size_t)(8 * N) * sizeof(float));
        tu_fill_normal(x, (long)(8 * K), 1.0);
        int ok_ref = 1, ok_k[3] = { 1, 1, 1 }, ok_f32 = 1, differs = 0;
        char det[160] = "";
        for (int im = 0; im < 3; im++) {
            const int64_t M = Ms[im];
            qlora_exec ex = { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_BF16 };
            qlora_exec ef = { QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_F32 };
            for (int64_t i = 0; i < M * N; i++) yr[i] = NAN;
            if (qlora_nf4_linear_forward(&ex, yr, x, &w, M, NULL) != QLORA_OK ||
                qlora_nf4_linear_forward(&ef, yf, x, &w, M, NULL) != QLORA_OK) {
                ok_ref = 0;
                break;
            }
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++) {
                    double s = 0.0, b = 0.0;
                    for (int64_t k = 0; k < K; k++) {
                        const int64_t e = n * K + k;
                        const int code = (e & 1) ? (w.codes[e >> 1] & 15) : (w.codes[e >> 1] >> 4);
                        const double t = bf16_indep(cb[code]) * bf16_indep(x[m * K + k]) *
                                         (double)qlora_nf4_block_scale(&w, e / w.blocksize);
                        s += t;
                        b += fabs(t);
                    }
                    const double got = yr[m * N + n], f = yf[m * N + n];
                    if (!(fabs(got - s) <= 1e-5 * b + 1e-6)) {
                        if (ok_ref) snprintf(det, sizeof det, "M=%lld [%lld,%lld] got %.9g want %.9g", (long long)M,
                                             (long long)m, (long long)n, got, s);
                        ok_ref = 0;
                    }
                    if (!(fabs(got - f) <= b / 128.0)) ok_f32 = 0;   // bf16 keeps 8 bits: each factor within 2^-9
                    if (got != f) differs = 1;
                }
            for (int ik = 0; ik < 3; ik++) {
                ex.kernel = kernels[ik];
                for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
                if (qlora_nf4_linear_forward(&ex, y, x, &w, M, NULL) != QLORA_OK) { ok_k[ik] = 0; continue; }
                for (int64_t i = 0; i < M * N; i++) {
                    double b = 0.0;
                    for (int64_t k = 0; k < K; k++) b += fabs((double)x[(i / N) * K + k]) * 1.6;
                    if (!(fabs((double)y[i] - yr[i]) <= 1e-5 * b + 1e-6)) ok_k[ik] = 0;
                }
            }
        }
        char name[160];
        snprintf(name, sizeof name, "bf16 compute: ref vs double of bf16 inputs (K=%lld N=%lld bs %d%s)", (long long)K,
                 (long long)N, cases[c].bs, cases[c].dq ? " DQ" : "");
        tu_check(ok_ref, name, "%s", det);
        for (int ik = 0; ik < 3; ik++) {
            snprintf(name, sizeof name, "bf16 compute: %s vs ref (K=%lld N=%lld bs %d%s)", kernel_names[ik],
                     (long long)K, (long long)N, cases[c].bs, cases[c].dq ? " DQ" : "");
            tu_check(ok_k[ik], name, "differs from the bf16 reference");
        }
        snprintf(name, sizeof name, "bf16 compute: within bf16 precision of fp32, and not equal to it (K=%lld N=%lld)",
                 (long long)K, (long long)N);
        tu_check(ok_f32 && differs, name, "within %d, differs %d", ok_f32, differs);
        free(x); free(yr); free(y); free(yf);
        free_w(&w);
    }
    // The GEMM form (every forward outside M <= 8 with in % 128 == 0, every backward): x (dy) and the
    // dequantized W rounded to bf16, exact products summed in fp32. Against a double-precision sum of
    // the independently rounded factors, for REF and every kernel, forward and backward; and at bf16
    // distance from fp32, not equal to it (an fp32 GEMM would be 2^-9 away from this reference).
    {
        static const struct { int64_t M, K, N; int32_t bs; int dq; } oc[] = {
            { 9, 128, 30, 64, 1 }, { 1, 96, 30, 32, 0 }, { 3, 200, 17, 64, 1 }, { 37, 130, 45, 64, 0 },
            { 100, 512, 70, 64, 1 }, { 13, 777, 33, 128, 1 },
        };
        for (int c = 0; c < (int)(sizeof oc / sizeof *oc); c++) {
            const int64_t M = oc[c].M, K = oc[c].K, N = oc[c].N;
            qlora_nf4 w;
            if (!make_w(&w, N, K, oc[c].bs, oc[c].dq, 950 + (unsigned long long)c)) {
                tu_check(0, "make_w", "out of memory");
                return;
            }
            float *x = (float *)malloc((size_t)(M * K) * sizeof(float));
            float *dy = (float *)malloc((size_t)(M * N) * sizeof(float));
            float *y = (float *)malloc((size_t)(M * N) * sizeof(float));
            float *dx = (float *)malloc((size_t)(M * K) * sizeof(float));
            float *yf = (float *)malloc((size_t)(M * N) * sizeof(float));
            double *wd = (double *)malloc((size_t)(N * K) * sizeof(double));
            double *ys = (double *)calloc((size_t)(M * N), sizeof(double)), *yb = (double *)calloc((size_t)(M * N), sizeof(double));
            double *xs = (double *)calloc((size_t)(M * K), sizeof(double)), *xb = (double *)calloc((size_t)(M * K), sizeof(double));
            tu_fill_normal(x, (long)(M * K), 1.0);
            tu_fill_normal(dy, (long)(M * N), 1.0);
            for (int64_t n = 0; n < N; n++)   // bf16 of the fp32 dequantized element (code · scale)
                for (int64_t k = 0; k < K; k++) {
                    const int64_t e = n * K + k;
                    const int code = (e & 1) ? (w.codes[e >> 1] & 15) : (w.codes[e >> 1] >> 4);
                    wd[e] = bf16_indep(cb[code] * qlora_nf4_block_scale(&w, e / w.blocksize));
                }
            for (int64_t m = 0; m < M; m++)
                for (int64_t n = 0; n < N; n++)
                    for (int64_t k = 0; k < K; k++) {
                        const double tf = bf16_indep(x[m * K + k]) * wd[n * K + k];
                        const double tb = bf16_indep(dy[m * N + n]) * wd[n * K + k];
                        ys[m * N + n] += tf;
                        yb[m * N + n] += fabs(tf);
                        xs[m * K + k] += tb;
                        xb[m * K + k] += fabs(tb);
                    }
            int ok[4] = { 1, 1, 1, 1 }, ok_f32 = 1, differs = 0;
            char det[200] = "";
            static const qlora_kernel ks[] = { QLORA_KERNEL_REF, QLORA_KERNEL_SIMD, QLORA_KERNEL_BLAS, QLORA_KERNEL_AUTO };
            static const char *const kn[] = { "ref", "simd", "blas", "auto" };
            for (int ik = 0; ik < 4; ik++) {
                qlora_exec ex = { ks[ik], NULL, QLORA_COMPUTE_BF16 };
                for (int64_t i = 0; i < M * N; i++) y[i] = NAN;
                for (int64_t i = 0; i < M * K; i++) dx[i] = 0.5f;
                if (qlora_nf4_linear_forward(&ex, y, x, &w, M, NULL) != QLORA_OK ||
                    qlora_nf4_linear_backward(&ex, dx, dy, &w, M, NULL) != QLORA_OK) {
                    ok[ik] = 0;
                    continue;
                }
                const int gemv = M <= 8 && K % 128 == 0;
                for (int64_t i = 0; i < M * N && !gemv; i++)
                    if (!(fabs(y[i] - ys[i]) <= 1e-5 * yb[i] + 1e-6)) {
                        if (ok[ik]) snprintf(det, sizeof det, "%s forward [%lld] got %.9g want %.9g", kn[ik], (long long)i,
                                             (double)y[i], ys[i]);
                        ok[ik] = 0;
                    }
                for (int64_t i = 0; i < M * K; i++)
                    if (!(fabs(dx[i] - 0.5 - xs[i]) <= 1e-5 * xb[i] + 1e-6)) {
                        if (ok[ik]) snprintf(det, sizeof det, "%s backward [%lld] got %.9g want %.9g", kn[ik], (long long)i,
                                             (double)dx[i] - 0.5, xs[i]);
                        ok[ik] = 0;
                    }
                if (ks[ik] == QLORA_KERNEL_AUTO && !gemv) {
                    qlora_exec ef = { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_F32 };
                    qlora_nf4_linear_forward(&ef, yf, x, &w, M, NULL);
                    for (int64_t i = 0; i < M * N; i++) {
                        if (!(fabs(y[i] - yf[i]) <= yb[i] / 128.0)) ok_f32 = 0;
                        if (y[i] != yf[i]) differs = 1;
                    }
                }
            }
            char name[192];
            for (int ik = 0; ik < 4; ik++) {
                snprintf(name, sizeof name, "bf16 compute, GEMM form: %s forward + backward vs double of bf16 factors "
                         "(M=%lld K=%lld N=%lld bs %d%s)", kn[ik], (long long)M, (long long)K, (long long)N, oc[c].bs,
                         oc[c].dq ? " DQ" : "");
                tu_check(ok[ik], name, "%s", det);
            }
            if (!(M <= 8 && K % 128 == 0)) {
                snprintf(name, sizeof name, "bf16 compute, GEMM form: within bf16 precision of fp32, not equal to it "
                         "(M=%lld K=%lld)", (long long)M, (long long)K);
                tu_check(ok_f32 && differs, name, "within %d, differs %d", ok_f32, differs);
            }
            free(x); free(dy); free(y); free(dx); free(yf); free(wd); free(ys); free(yb); free(xs); free(xb);
            free_w(&w);
        }
    }
    // The dense frozen-weight GEMM (lm_head) in bf16: alpha·op(A) and op(B) rounded, exact products summed
    // in fp32, beta 0 and 1, B transposed (logits) and not (dlnf); REF and AUTO against a double sum of
    // the independently rounded factors; M <= 8 stays fp32 (bit-identical with qlora_sgemm).
    {
        static const struct { int64_t M, N, K; int tb; float alpha, beta; } fc[] = {
            { 40, 70, 96, 1, 1.0f, 0.0f }, { 33, 96, 150, 0, 0.5f, 1.0f }, { 100, 257, 64, 1, 1.0f, 1.0f },
        };
        for (int c = 0; c < 3; c++) {
            const int64_t M = fc[c].M, N = fc[c].N, K = fc[c].K;
            float *A = (float *)malloc(sizeof(float) * (size_t)(M * K));
            float *Bm = (float *)malloc(sizeof(float) * (size_t)(K * N));
            float *C0 = (float *)malloc(sizeof(float) * (size_t)(M * N));
            float *C = (float *)malloc(sizeof(float) * (size_t)(M * N));
            tu_fill_normal(A, (long)(M * K), 1.0);
            tu_fill_normal(Bm, (long)(K * N), 1.0);
            tu_fill_normal(C0, (long)(M * N), 1.0);
            const int64_t ldb = fc[c].tb ? K : N;
            int ok[2] = { 1, 1 }, differs = 0;
            for (int ik = 0; ik < 2; ik++) {
                qlora_exec ex = { ik ? QLORA_KERNEL_AUTO : QLORA_KERNEL_REF, NULL, QLORA_COMPUTE_BF16 };
                memcpy(C, C0, sizeof(float) * (size_t)(M * N));
                qlora__sgemm_frozen(&ex, 0, fc[c].tb, M, N, K, fc[c].alpha, A, K, Bm, ldb, fc[c].beta, C, N);
                for (int64_t i = 0; i < M; i++)
                    for (int64_t j = 0; j < N; j++) {
                        double sum = 0.0, b = 0.0;
                        for (int64_t k = 0; k < K; k++) {
                            const double t = bf16_indep(fc[c].alpha * A[i * K + k]) *
                                             bf16_indep(fc[c].tb ? Bm[j * K + k] : Bm[k * N + j]);
                            sum += t;
                            b += fabs(t);
                        }
                        const double want = sum + (fc[c].beta != 0.0f ? (double)fc[c].beta * C0[i * N + j] : 0.0);
                        if (!(fabs(C[i * N + j] - want) <= 1e-5 * b + 1e-5)) ok[ik] = 0;
                    }
                if (ik) {
                    float *Cf = (float *)malloc(sizeof(float) * (size_t)(M * N));
                    memcpy(Cf, C0, sizeof(float) * (size_t)(M * N));
                    qlora_sgemm(NULL, 0, fc[c].tb, M, N, K, fc[c].alpha, A, K, Bm, ldb, fc[c].beta, Cf, N);
                    differs = memcmp(Cf, C, sizeof(float) * (size_t)(M * N)) != 0;
                    free(Cf);
                }
            }
            char name[160];
            snprintf(name, sizeof name, "bf16 compute, dense frozen GEMM: ref and auto vs double of bf16 factors, "
                     "differs from fp32 (M=%lld N=%lld K=%lld%s)", (long long)M, (long long)N, (long long)K,
                     fc[c].tb ? " B^T" : "");
            tu_check(ok[0] && ok[1] && differs, name, "ref %d auto %d differs %d", ok[0], ok[1], differs);
            free(A); free(Bm); free(C0); free(C);
        }
        {   // decoding rows stay fp32
            float A[3 * 64], Bm[50 * 64], C1[3 * 50], C2[3 * 50];
            tu_fill_normal(A, 3 * 64, 1.0);
            tu_fill_normal(Bm, 50 * 64, 1.0);
            qlora_exec ex = { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_BF16 };
            qlora__sgemm_frozen(&ex, 0, 1, 3, 50, 64, 1.0f, A, 64, Bm, 64, 0.0f, C1, 50);
            qlora_sgemm(&ex, 0, 1, 3, 50, 64, 1.0f, A, 64, Bm, 64, 0.0f, C2, 50);
            tu_check(!memcmp(C1, C2, sizeof C1), "bf16 compute, dense frozen GEMM: M <= 8 is qlora_sgemm's fp32",
                     "differs");
        }
    }
    // A NaN in one row of x stays in that row of y (thread independence: check_thread_independence).
    {
        const int64_t M = 3, K = 512, N = 300;
        qlora_nf4 w;
        make_w(&w, N, K, 64, 1, 960);
        float *x = (float *)malloc((size_t)(M * K) * sizeof(float));
        float *y = (float *)malloc((size_t)(M * N) * sizeof(float));
        tu_fill_normal(x, (long)(M * K), 1.0);
        x[1 * K + 77] = NAN;
        qlora_exec ex = { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_BF16 };
        int nan_ok = qlora_nf4_linear_forward(&ex, y, x, &w, M, NULL) == QLORA_OK;
        for (int64_t i = 0; i < M * N; i++) nan_ok = nan_ok && ((i / N == 1) == (y[i] != y[i]));
        tu_check(nan_ok, "bf16 compute: a NaN in one row of x stays in that row of y", "NaN spread or vanished");
        free(x);
        free(y);
        free_w(&w);
    }
}

static void check_cpu_info(void) {
    qlora_cpu_info ci = qlora_cpu_info_get();
    int ok = ci.simd && ci.blas_core && ci.omp_threads >= 1;
#ifdef QLORA_USE_OPENBLAS
    ok = ok && ci.blas_compiled == 1;
#if defined(__AVX512F__)
    ok = ok && qlora__blas_core_trusted("SkylakeX") && qlora__blas_core_trusted("cooperlake") &&
         !qlora__blas_core_trusted("Prescott") && !qlora__blas_core_trusted("Haswell") && !qlora__blas_core_trusted(NULL);
#elif defined(__AVX2__)
    ok = ok && qlora__blas_core_trusted("Haswell") && !qlora__blas_core_trusted("Prescott") &&
         !qlora__blas_core_trusted("Sandybridge");
#endif
#else
    ok = ok && ci.blas_compiled == 0 && ci.blas_trusted == 0;
#endif
    tu_check(ok, "cpu info and the BLAS core trust list", "simd %s core %s trusted %d", ci.simd ? ci.simd : "(null)",
             ci.blas_core ? ci.blas_core : "(null)", ci.blas_trusted);
    printf("# cpu: simd %s%s, %d OpenMP threads, BLAS %s (core %s, %s)\n", ci.simd, ci.bf16_dot ? " + bf16" : "",
           ci.omp_threads, ci.blas_compiled ? "compiled" : "not compiled", ci.blas_core,
           ci.blas_trusted ? "trusted" : "not trusted");
}

int main(void) {
    const char *q = getenv("QLORA_TEST_QUICK");
    quick = q && *q && *q != '0';
    check_cpu_info();
    check_span();
    const shape *shapes = quick ? shapes_quick : shapes_full;
    const int nshapes = quick ? (int)(sizeof shapes_quick / sizeof *shapes_quick)
                              : (int)(sizeof shapes_full / sizeof *shapes_full);
    for (int s = 0; s < nshapes; s++)
        check_shape(&shapes[s], quick ? Ms_quick : Ms_full, quick ? 4 : 8);
    check_finite_differences();
    check_thread_independence();
    check_bf16_compute();
    check_sgemm();
    check_quantized_weight();
    check_backend();
    check_bad_input();
    return tu_finish();
}
