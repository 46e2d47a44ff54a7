// bench_nf4.c - throughput of the NF4 dequant-matmul kernels (section 4) against measured references.
//
//   1. GEMM, M = 512: NF4 forward / backward GFLOP/s against OpenBLAS sgemm on the same shapes with
//      a dense fp32 W (target >= 0.90), plus the FMA peak of this machine.
//   2. GEMV, M = 1: NF4 bytes read per second on weights larger than the LLC, against a streaming
//      read of a large float buffer (target >= 0.70).
//   3. dequantization throughput.
//   4. qlora_sgemm on LoRA shapes (rank 16) against cblas_sgemm.
// Runs on 2 threads. Every figure is the best of several repetitions (other jobs may share the CPU).
// If OpenBLAS picked a core that does not match this CPU, the program re-executes itself once with
// OPENBLAS_CORETYPE set, so that the reference is OpenBLAS at its best. Arguments: `quick` shortens
// the run; `cputime` times with process CPU time (for a machine shared with other jobs).
#define _POSIX_C_SOURCE 200809L
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "bench_common.h"

// Wall-clock seconds, or with the argument `cputime` the process CPU time divided by the thread
// count: on a machine shared with other jobs that is the time our threads actually ran (spin
// waits still count, for OpenBLAS and for us alike).
static int cpu_clock;
static double now_s(void) { return cpu_clock ? bc_cpu_now() / BC_THREADS : bc_now(); }

static uint64_t rng_state = 0x243F6A8885A308D3ull;   // bc_rng_u64 / bc_rng_float

// A random NF4 weight (rows, cols) with double quantization: random codes, scales around 1.
static void make_weight(qlora_nf4 *w, int64_t rows, int64_t cols, int32_t bs) {
    int64_t n = rows * cols, nb = qlora_nf4_num_blocks(n, bs), nn = qlora_nf4_num_blocks(nb, QLORA_DQ_BLOCK);
    memset(w, 0, sizeof *w);
    w->rows = rows;
    w->cols = cols;
    w->blocksize = bs;
    w->double_quant = 1;
    w->codes = (uint8_t *)bc_xmalloc((size_t)(n + 1) / 2);
    w->qabsmax = (uint8_t *)bc_xmalloc((size_t)nb);
    w->nested_absmax = (float *)bc_xmalloc((size_t)nn * sizeof(float));
    for (int64_t i = 0; i + 8 <= (n + 1) / 2; i += 8) {
        uint64_t r = bc_rng_u64(&rng_state);
        memcpy(w->codes + i, &r, 8);
    }
    for (int64_t i = (n + 1) / 2 / 8 * 8; i < (n + 1) / 2; i++) w->codes[i] = (uint8_t)bc_rng_u64(&rng_state);
    for (int64_t b = 0; b < nb; b++) w->qabsmax[b] = (uint8_t)bc_rng_u64(&rng_state);
    for (int64_t b = 0; b < nn; b++) w->nested_absmax[b] = 0.01f;
    w->nested_offset = 0.02f;
    qlora_dynamic_map(w->nested_map, 1);
}

static void free_weight(qlora_nf4 *w) {
    free(w->codes);
    free(w->qabsmax);
    free(w->nested_absmax);
}

static volatile float bench_sink;                 // keeps results alive
static volatile float bench_one = 0.9999999f, bench_tiny = 1e-7f;   // runtime values: no constant folding

// FMA peak: independent register-only FMA chains on every thread, GFLOP/s.
static double fma_peak(void) {
    double best = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        const long iters = 20000000;
        int nt = 1;
        double t0 = now_s();
#ifdef _OPENMP
#pragma omp parallel
#endif
        {
#ifdef _OPENMP
#pragma omp single
            nt = omp_get_num_threads();
#endif
#if defined(QLORA__AVX512)
            // Distinct starting values, or the compiler merges the identical chains into one.
            __m512 a0 = _mm512_set1_ps(1.0f), a1 = _mm512_set1_ps(1.1f), a2 = _mm512_set1_ps(1.2f);
            __m512 a3 = _mm512_set1_ps(1.3f), a4 = _mm512_set1_ps(1.4f), a5 = _mm512_set1_ps(1.5f);
            __m512 a6 = _mm512_set1_ps(1.6f), a7 = _mm512_set1_ps(1.7f), a8 = _mm512_set1_ps(1.8f);
            __m512 a9 = _mm512_set1_ps(1.9f), b = _mm512_set1_ps(bench_one), c = _mm512_set1_ps(bench_tiny);
            for (long i = 0; i < iters; i++) {
                a0 = _mm512_fmadd_ps(a0, b, c); a1 = _mm512_fmadd_ps(a1, b, c); a2 = _mm512_fmadd_ps(a2, b, c);
                a3 = _mm512_fmadd_ps(a3, b, c); a4 = _mm512_fmadd_ps(a4, b, c); a5 = _mm512_fmadd_ps(a5, b, c);
                a6 = _mm512_fmadd_ps(a6, b, c); a7 = _mm512_fmadd_ps(a7, b, c); a8 = _mm512_fmadd_ps(a8, b, c);
                a9 = _mm512_fmadd_ps(a9, b, c);
            }
            a0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                               _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
            a0 = _mm512_add_ps(a0, _mm512_add_ps(a8, a9));
            bench_sink = _mm512_reduce_add_ps(a0);
#elif defined(QLORA__AVX2)
            // Distinct starting values, or the compiler merges the identical chains into one.
            __m256 a0 = _mm256_set1_ps(1.0f), a1 = _mm256_set1_ps(1.1f), a2 = _mm256_set1_ps(1.2f);
            __m256 a3 = _mm256_set1_ps(1.3f), a4 = _mm256_set1_ps(1.4f), a5 = _mm256_set1_ps(1.5f);
            __m256 a6 = _mm256_set1_ps(1.6f), a7 = _mm256_set1_ps(1.7f), a8 = _mm256_set1_ps(1.8f);
            __m256 a9 = _mm256_set1_ps(1.9f), b = _mm256_set1_ps(bench_one), c = _mm256_set1_ps(bench_tiny);
            for (long i = 0; i < iters; i++) {
                a0 = _mm256_fmadd_ps(a0, b, c); a1 = _mm256_fmadd_ps(a1, b, c); a2 = _mm256_fmadd_ps(a2, b, c);
                a3 = _mm256_fmadd_ps(a3, b, c); a4 = _mm256_fmadd_ps(a4, b, c); a5 = _mm256_fmadd_ps(a5, b, c);
                a6 = _mm256_fmadd_ps(a6, b, c); a7 = _mm256_fmadd_ps(a7, b, c); a8 = _mm256_fmadd_ps(a8, b, c);
                a9 = _mm256_fmadd_ps(a9, b, c);
            }
            a0 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                               _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
            a0 = _mm256_add_ps(a0, _mm256_add_ps(a8, a9));
            float lanes[8];
            _mm256_storeu_ps(lanes, a0);
            bench_sink = lanes[0] + lanes[7];
#else
            float a[16], b = bench_one, c = bench_tiny;
            for (int j = 0; j < 16; j++) a[j] = 1.0f + 0.1f * (float)j;
            for (long i = 0; i < iters; i++)
                for (int j = 0; j < 16; j++) a[j] = a[j] * b + c;
            bench_sink = a[0] + a[15];
#endif
        }
#if defined(QLORA__AVX512)
        const double fpi = 320.0;   // flops per iteration: 10 FMAs x 16 lanes x 2
#elif defined(QLORA__AVX2)
        const double fpi = 160.0;
#else
        const double fpi = 32.0;
#endif
        double g = fpi * (double)iters * nt / (now_s() - t0) / 1e9;
        if (g > best) best = g;
    }
    return best;
}

// Best seconds of `reps` runs of one NF4 call.
static double time_nf4(int fwd, qlora_kernel kernel, float *out, const float *in, const qlora_nf4 *w, int64_t M,
                       int reps) {
    qlora_exec ex = { kernel, NULL, QLORA_COMPUTE_F32 };
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        qlora_status st = fwd ? qlora_nf4_linear_forward(&ex, out, in, w, M, NULL)
                              : qlora_nf4_linear_backward(&ex, out, in, w, M, NULL);
        double t = now_s() - t0;
        if (st != QLORA_OK) { fprintf(stderr, "bench_nf4: status %s\n", qlora_status_string(st)); exit(1); }
        if (t < best) best = t;
    }
    return best;
}

#ifdef QLORA_USE_OPENBLAS
// Best seconds of cblas_sgemm: fwd Y = X·Wᵀ, bwd dX += dY·W, W dense (N, K).
static double time_blas(int fwd, float *out, const float *in, const float *wd, int64_t M, int64_t N, int64_t K,
                        int reps) {
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        if (fwd)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, in, (int)K, wd, (int)K,
                        0.0f, out, (int)N);
        else
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)K, (int)N, 1.0f, in, (int)N, wd,
                        (int)K, 1.0f, out, (int)K);
        double t = now_s() - t0;
        if (t < best) best = t;
    }
    return best;
}
#endif

int main(int argc, char **argv) {
    int quick = 0;
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "quick")) quick = 1;
        else if (!strcmp(argv[i], "cputime")) cpu_clock = 1;
    const char *blas_msg = bc_blas_setup(argv);   // may re-execute this program once
#ifndef QLORA_USE_OPENBLAS
    blas_msg = "built without OpenBLAS: no BLAS reference";
#endif
    bc_set_threads(BC_THREADS);
    qlora_cpu_info ci = qlora_cpu_info_get();
    printf("bench_nf4: %d threads, SIMD %s, %s\n", ci.omp_threads, ci.simd, blas_msg);
    {
        const char *la = bc_loadavg();
        double load = la[0] == '?' ? -1.0 : atof(la);
        printf("timing: %s; load average before the run: %.2f%s\n",
               cpu_clock ? "process CPU time / threads (argument cputime)" : "wall clock", load,
               !cpu_clock && load > 1.5 ? " (busy machine: wall-clock figures are low; try `cputime`)" : "");
    }
    // The AUTO rule of qlora_nf4_linear_*: own kernels when a SIMD level is compiled, else the BLAS
    // panel path for M > 8 when OpenBLAS is trusted.
    const int simd = strcmp(ci.simd, "scalar") != 0;
    printf("AUTO path: M <= 8 -> fused dequant-GEMV (%s); M > 8 -> %s\n", ci.simd,
           simd ? "own blocked GEMM, W dequantized while packing (SIMD micro-kernel)"
                : ci.blas_compiled && ci.blas_trusted ? "BLAS (dequantized panels + cblas_sgemm)"
                                                      : "own blocked GEMM (portable C)");
    printf("qlora_sgemm AUTO: %s\n", ci.blas_compiled && ci.blas_trusted ? "cblas_sgemm" : "own blocked GEMM");
    const double peak = fma_peak();
    printf("FMA peak (register-only, %d threads): %.1f GFLOP/s\n\n", ci.omp_threads, peak);

    // --- 1. GEMM ---
    static const int64_t shapes[3][2] = { { 4096, 4096 }, { 4096, 11008 }, { 11008, 4096 } };  // (in, out)
    const int64_t M = 512;
    const int reps = quick ? 2 : 4;
    printf("1. NF4 GEMM, M = %lld, blocksize 64 + DQ; GFLOP/s (best of %d); ratio = AUTO / OpenBLAS dense sgemm\n",
           (long long)M, reps);
    printf("   %-22s %-4s %10s %10s %10s %12s %8s %7s\n", "(M, in, out)", "dir", "AUTO", "own", "BLAS-path",
           "OpenBLAS", "ratio", "%peak");
    for (int s = 0; s < (quick ? 1 : 3); s++) {
        const int64_t K = shapes[s][0], N = shapes[s][1];
        qlora_nf4 w;
        make_weight(&w, N, K, 64);
        float *x = (float *)bc_xmalloc((size_t)(M * K) * sizeof(float)), *y = (float *)bc_xmalloc((size_t)(M * N) * sizeof(float));
        float *dy = (float *)bc_xmalloc((size_t)(M * N) * sizeof(float)), *dx = (float *)bc_xmalloc((size_t)(M * K) * sizeof(float));
        for (int64_t i = 0; i < M * K; i++) { x[i] = bc_rng_float(&rng_state); dx[i] = 0.0f; }
        for (int64_t i = 0; i < M * N; i++) dy[i] = bc_rng_float(&rng_state);
        const double gflop = 2.0 * (double)M * (double)N * (double)K / 1e9;
#ifdef QLORA_USE_OPENBLAS
        float *wd = (float *)bc_xmalloc((size_t)(N * K) * sizeof(float));
        qlora_nf4_dequantize(wd, &w, NULL);
#endif
        for (int fwd = 1; fwd >= 0; fwd--) {
            float *out = fwd ? y : dx;
            const float *in = fwd ? x : dy;
            double t_auto = time_nf4(fwd, QLORA_KERNEL_AUTO, out, in, &w, M, reps);
            double t_own = time_nf4(fwd, QLORA_KERNEL_SIMD, out, in, &w, M, reps);
            double t_bp = 0.0, t_ref = 0.0;
#ifdef QLORA_USE_OPENBLAS
            t_bp = time_nf4(fwd, QLORA_KERNEL_BLAS, out, in, &w, M, reps);
            t_ref = time_blas(fwd, out, in, wd, M, N, K, reps);
#endif
            char sh[64];
            snprintf(sh, sizeof sh, "(%lld, %lld, %lld)", (long long)M, (long long)K, (long long)N);
            if (t_ref > 0.0)
                printf("   %-22s %-4s %10.1f %10.1f %10.1f %12.1f %8.2f %6.0f%%\n", sh, fwd ? "fwd" : "bwd", gflop / t_auto,
                       gflop / t_own, gflop / t_bp, gflop / t_ref, t_ref / t_auto, 100.0 * gflop / t_auto / peak);
            else
                printf("   %-22s %-4s %10.1f %10.1f %10s %12s %8s %6.0f%%\n", sh, fwd ? "fwd" : "bwd", gflop / t_auto,
                       gflop / t_own, "-", "-", "-", 100.0 * gflop / t_auto / peak);
            fflush(stdout);
        }
#ifdef QLORA_USE_OPENBLAS
        free(wd);
#endif
        free(x); free(y); free(dy); free(dx);
        free_weight(&w);
    }

    // --- 2. GEMV ---
    {
        const int nw = quick ? 8 : 32;
        const int64_t K = 4096, N = 11008;
        qlora_nf4 *ws = (qlora_nf4 *)bc_xmalloc((size_t)nw * sizeof(qlora_nf4));
        for (int i = 0; i < nw; i++) make_weight(&ws[i], N, K, 64);
        const double bytes = (double)qlora_nf4_bytes(&ws[0]) * nw;
        const double bw = bc_stream_read_timed((int64_t)1 << 29, 4, cpu_clock);   // 512 MB
        float *x = (float *)bc_xmalloc((size_t)(8 * K) * sizeof(float)), *y = (float *)bc_xmalloc((size_t)(16 * N) * sizeof(float));
        float *dy = (float *)bc_xmalloc((size_t)(8 * N) * sizeof(float)), *dx = (float *)bc_xmalloc((size_t)(16 * K) * sizeof(float));
        for (int64_t i = 0; i < 8 * K; i++) x[i] = bc_rng_float(&rng_state);
        for (int64_t i = 0; i < 16 * K; i++) dx[i] = 0.0f;
        for (int64_t i = 0; i < 8 * N; i++) dy[i] = bc_rng_float(&rng_state);
        printf("\n2. NF4 GEMV: %d weights of (%lld, %lld) NF4 bs64 + DQ = %.0f MB, cycled (beyond the LLC)\n", nw,
               (long long)N, (long long)K, bytes / 1e6);
        printf("   streaming read (plain float sum, %d threads): %.1f GB/s\n", ci.omp_threads, bw);
        if (cpu_clock)
            printf("   (cputime: %d concurrent single-threaded streams, each timed by its thread CPU time)\n", BC_THREADS);
        printf("   %-18s %-9s %12s %8s   (bf16* = emulated: this build has no AVX-512 BF16)\n", "M", "dir", "NF4 GB/s",
               "ratio");
        static const int64_t gm[3] = { 1, 4, 8 };
        // forward in fp32, forward with QLORA_COMPUTE_BF16 (bitsandbytes' compute_dtype=bf16), backward
        const qlora_exec ebf = { QLORA_KERNEL_AUTO, NULL, QLORA_COMPUTE_BF16 };
        for (int im = 0; im < (quick ? 1 : 3); im++)
            for (int dir = 0; dir < 3; dir++) {
                const int fwd = dir < 2;
                const qlora_exec *ex = dir == 1 ? &ebf : NULL;
                double best = 1e30;
                for (int r = 0; r < 6; r++) {
                    double t, t0 = now_s(), tmax = 0.0;
                    int bad = 0;
                    if (!cpu_clock) {
                        for (int i = 0; i < nw; i++) {
                            qlora_status st = fwd ? qlora_nf4_linear_forward(ex, y, x, &ws[i], gm[im], NULL)
                                                  : qlora_nf4_linear_backward(NULL, dx, dy, &ws[i], gm[im], NULL);
                            bad |= st != QLORA_OK;
                        }
                        t = now_s() - t0;
                    } else {
                        // Two concurrent streams: each thread runs half of the weights through the API
                        // (single-threaded inside this parallel region); time = the larger thread CPU time.
#ifdef _OPENMP
#pragma omp parallel reduction(max : tmax) reduction(| : bad)
#endif
                        {
                            int tid = 0, nt = 1;
#ifdef _OPENMP
                            tid = omp_get_thread_num();
                            nt = omp_get_num_threads();
#endif
                            float *yo = y + (size_t)tid * 8 * N, *dxo = dx + (size_t)tid * 8 * K;
                            const double c0 = bc_thread_cpu_now();
                            for (int i = tid; i < nw; i += nt) {
                                qlora_status st = fwd ? qlora_nf4_linear_forward(ex, yo, x, &ws[i], gm[im], NULL)
                                                      : qlora_nf4_linear_backward(NULL, dxo, dy, &ws[i], gm[im], NULL);
                                bad |= st != QLORA_OK;
                            }
                            tmax = bc_thread_cpu_now() - c0;
                        }
                        t = tmax;
                    }
                    if (bad) { fprintf(stderr, "gemv failed\n"); return 1; }
                    if (t < best) best = t;
                }
                printf("   M = %-14lld %-9s %12.1f %8.2f%s\n", (long long)gm[im],
                       dir == 0 ? "fwd" : dir == 1 ? (ci.bf16_dot ? "fwd bf16" : "fwd bf16*") : "bwd", bytes / best / 1e9,
                       bytes / best / 1e9 / bw, gm[im] == 1 ? "   (target >= 0.70)" : "");
                fflush(stdout);
            }
        free(x); free(y); free(dy); free(dx);

        // --- 3. dequantization ---
        printf("\n3. dequantization of one (%lld, %lld) weight to fp32\n", (long long)N, (long long)K);
        float *out = (float *)bc_xmalloc((size_t)(N * K) * sizeof(float));
        double t_lib = 1e30, t_span = 1e30;
        for (int r = 0; r < 4; r++) {
            double t0 = now_s();
            qlora_nf4_dequantize(out, &ws[r % nw], NULL);
            double t = now_s() - t0;
            if (t < t_lib) t_lib = t;
            t0 = now_s();
#ifdef _OPENMP
#pragma omp parallel
#endif
            {
                int64_t tid = 0, nt = 1;
#ifdef _OPENMP
                tid = omp_get_thread_num();
                nt = omp_get_num_threads();
#endif
                int64_t n = N * K, a = n / 32 * tid / nt * 32, b = (tid + 1 == nt) ? n : n / 32 * (tid + 1) / nt * 32;
                qlora__nf4_span(out + a, &ws[(r + 1) % nw], a, b - a, qlora__log2i(64));
            }
            t = now_s() - t0;
            if (t < t_span) t_span = t;
        }
        const double ne = (double)N * (double)K;
        printf("   qlora_nf4_dequantize (section 3):      %6.2f G elements/s (%5.1f GB/s written)\n", ne / t_lib / 1e9,
               4.0 * ne / t_lib / 1e9);
        printf("   SIMD span decode (section 4 packing):  %6.2f G elements/s (%5.1f GB/s written)\n", ne / t_span / 1e9,
               4.0 * ne / t_span / 1e9);
        free(out);
        for (int i = 0; i < nw; i++) free_weight(&ws[i]);
        free(ws);
    }

    // --- 4. qlora_sgemm on LoRA shapes ---
    {
        static const struct { int ta, tb; int64_t M, N, K; const char *what; } ls[4] = {
            { 0, 1, 512, 16, 4096, "x·Aᵀ   (512,4096)·(16,4096)ᵀ" },
            { 0, 1, 512, 4096, 16, "xa·Bᵀ  (512,16)·(4096,16)ᵀ" },
            { 1, 0, 16, 4096, 512, "dA     (512,16)ᵀ·(512,4096)" },
            { 1, 0, 4096, 16, 512, "dB     (512,4096)ᵀ·(512,16)" },
        };
        printf("\n4. qlora_sgemm on LoRA shapes (rank 16), GFLOP/s\n");
        printf("   %-30s %10s %10s %12s\n", "shape", "AUTO", "own", "cblas");
        for (int i = 0; i < 4; i++) {
            const int64_t Mm = ls[i].M, Nn = ls[i].N, Kk = ls[i].K;
            float *A = (float *)bc_xmalloc((size_t)(Mm * Kk) * sizeof(float)), *B = (float *)bc_xmalloc((size_t)(Kk * Nn) * sizeof(float));
            float *C = (float *)bc_xmalloc((size_t)(Mm * Nn) * sizeof(float));
            for (int64_t j = 0; j < Mm * Kk; j++) A[j] = bc_rng_float(&rng_state);
            for (int64_t j = 0; j < Kk * Nn; j++) B[j] = bc_rng_float(&rng_state);
            const int64_t lda = ls[i].ta ? Mm : Kk, ldb = ls[i].tb ? Kk : Nn;
            double best[3] = { 1e30, 1e30, 1e30 };
            for (int r = 0; r < 20; r++)
                for (int k = 0; k < 3; k++) {
                    qlora_exec ex = { k == 0 ? QLORA_KERNEL_AUTO : k == 1 ? QLORA_KERNEL_SIMD : QLORA_KERNEL_BLAS, NULL, QLORA_COMPUTE_F32 };
#ifndef QLORA_USE_OPENBLAS
                    if (k == 2) continue;
#endif
                    double t0 = now_s();
                    qlora_sgemm(&ex, ls[i].ta, ls[i].tb, Mm, Nn, Kk, 1.0f, A, lda, B, ldb, 0.0f, C, Nn);
                    double t = now_s() - t0;
                    if (t < best[k]) best[k] = t;
                }
            const double gf = 2.0 * (double)Mm * (double)Nn * (double)Kk / 1e9;
            printf("   %-30s %10.1f %10.1f %12.1f\n", ls[i].what, gf / best[0], gf / best[1], best[2] < 1e29 ? gf / best[2] : 0.0);
            free(A); free(B); free(C);
        }
    }
    return 0;
}
