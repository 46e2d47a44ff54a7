// bench_common.h - helpers shared by the benchmarks in bench/: wall clock, peak RSS, the OpenBLAS
// core check, thread setup, and the two machine references every model-level figure is divided by:
// the best sgemm GFLOP/s this build can reach and the streaming-read bandwidth.
//
// Include after qlora.h (with QLORA_IMPLEMENTATION) in a TU that defines _POSIX_C_SOURCE 200809L.
// Everything here is static inline, so a benchmark pays only for what it uses. POSIX (Linux for
// /proc); the benchmarks are not part of the portable library.
#ifndef QLORA_BENCH_COMMON_H
#define QLORA_BENCH_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BC_THREADS 2   // every benchmark runs on 2 threads (the size of the reference machine)

#ifdef QLORA_USE_OPENBLAS
void openblas_set_num_threads(int num_threads);
int openblas_get_parallel(void);
#endif

// How OpenBLAS runs its threads: 2 = OpenMP (libgomp's team, the same threads as the NF4 kernels:
// one pool), 1 = its own pthread pool (its threads and the OpenMP threads spin against each other
// on a small machine), 0 = single-threaded build, -1 = built without OpenBLAS.
static inline int bc_blas_parallel(void) {
#ifdef QLORA_USE_OPENBLAS
    return openblas_get_parallel();
#else
    return -1;
#endif
}
static inline const char *bc_blas_parallel_name(void) {
    switch (bc_blas_parallel()) {
    case 2: return "OpenMP build of OpenBLAS: one thread pool with the kernels";
    case 1: return "pthread build of OpenBLAS: its own thread pool next to OpenMP's";
    case 0: return "single-threaded build of OpenBLAS";
    default: return "no OpenBLAS";
    }
}

static inline double bc_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// CPU seconds of every thread of this process (user + system). CPU / wall over a phase that
// runs on 2 threads is 2.0 on an idle machine; other jobs on the same cores push it down.
static inline double bc_cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// CPU seconds of the calling thread.
static inline double bc_thread_cpu_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static inline void *bc_xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "bench: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    return p;
}

// xorshift64: cheap deterministic fill values in [-1, 1).
static inline uint64_t bc_rng_u64(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static inline float bc_rng_float(uint64_t *s) {
    return (float)(bc_rng_u64(s) >> 40) * (1.0f / 16777216.0f) * 2.0f - 1.0f;
}

// A field of /proc/self/status in kB (VmHWM = peak RSS, VmRSS = current), -1 when unavailable.
static inline long bc_status_kb(const char *field) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    size_t n = strlen(field);
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

// "1.23 0.98 0.75" of /proc/loadavg: other jobs on the machine make every figure slower.
static inline const char *bc_loadavg(void) {
    static char buf[64];
    FILE *f = fopen("/proc/loadavg", "r");
    strcpy(buf, "?");
    if (f) {
        if (fscanf(f, "%15s", buf) != 1) strcpy(buf, "?");
        else {
            char b2[16], b3[16];
            if (fscanf(f, "%15s %15s", b2, b3) == 2) {
                size_t k = strlen(buf);
                snprintf(buf + k, sizeof buf - k, " %s %s", b2, b3);
            }
        }
        fclose(f);
    }
    return buf;
}

// The CPU's model name from /proc/cpuinfo, or "?".
static inline const char *bc_cpu_name(void) {
    static char buf[128];
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    strcpy(buf, "?");
    if (!f) return buf;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':');
            if (p) {
                p++;
                while (*p == ' ') p++;
                snprintf(buf, sizeof buf, "%s", p);
                buf[strcspn(buf, "\n")] = 0;
            }
            break;
        }
    fclose(f);
    return buf;
}

static inline void bc_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#endif
#ifdef QLORA_USE_OPENBLAS
    openblas_set_num_threads(n);
#endif
    (void)n;
}

// OpenBLAS core check. When the core OpenBLAS detected does not suit this CPU (see
// qlora_cpu_info.blas_trusted), the program re-executes itself once with OPENBLAS_CORETYPE set
// (SkylakeX on AVX-512, Haswell on AVX2), so that the sgemm reference is OpenBLAS at its best.
// The variable the user had (or its absence) is kept in QLORA_BENCH_CORETYPE_ORIG, so that child
// processes that must see the user's environment can get it back with bc_blas_restore_env().
// Returns a sentence for the report.
static inline const char *bc_blas_setup(char **argv) {
#ifdef QLORA_USE_OPENBLAS
    static char msg[256];
    const char *core = openblas_get_corename();
    const char *prev = getenv("QLORA_BENCH_CORE_WAS");
    if (prev) {
        snprintf(msg, sizeof msg, "re-executed with OPENBLAS_CORETYPE=%s (OpenBLAS had detected %s); now %s",
                 getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "?", prev, core ? core : "?");
        return msg;
    }
    if (!qlora_cpu_info_get().blas_trusted) {
#if defined(__AVX512F__)
        const char *want = "SkylakeX";
#elif defined(__AVX2__)
        const char *want = "Haswell";
#else
        const char *want = NULL;
#endif
        if (want) {
            const char *orig = getenv("OPENBLAS_CORETYPE");
            fflush(stdout);
            setenv("QLORA_BENCH_CORETYPE_ORIG", orig ? orig : "", 1);
            setenv("QLORA_BENCH_CORE_WAS", core ? core : "?", 1);
            setenv("OPENBLAS_CORETYPE", want, 1);
            execv("/proc/self/exe", argv);
            snprintf(msg, sizeof msg, "OpenBLAS core %s does not match this CPU and the re-exec failed",
                     core ? core : "?");
            return msg;
        }
    }
    snprintf(msg, sizeof msg, "OpenBLAS detected core %s, which suits this CPU: used as is", core ? core : "?");
    return msg;
#else
    (void)argv;
    return "built without OpenBLAS: the sgemm reference is the library's own GEMM";
#endif
}

// Puts OPENBLAS_CORETYPE back as the user had it (for child processes that measure the library
// in the environment a user runs it in).
static inline void bc_blas_restore_env(void) {
    const char *orig = getenv("QLORA_BENCH_CORETYPE_ORIG");
    if (!orig) return;
    if (*orig) setenv("OPENBLAS_CORETYPE", orig, 1);
    else unsetenv("OPENBLAS_CORETYPE");
    unsetenv("QLORA_BENCH_CORETYPE_ORIG");
    unsetenv("QLORA_BENCH_CORE_WAS");
}

// Best GFLOP/s of C (M,N) = A (M,K)·B (K,N)ᵀ-or-not over `reps` runs: impl 0 = cblas_sgemm (when
// compiled), impl 1 = qlora_sgemm on the library's own kernels (QLORA_KERNEL_SIMD). Returns 0 for
// an implementation this build lacks.
static inline double bc_sgemm_gflops(int impl, int trans_b, int64_t M, int64_t N, int64_t K, int reps) {
    uint64_t s = 0x9E3779B97F4A7C15ull;
    float *A = (float *)bc_xmalloc((size_t)(M * K) * sizeof(float));
    float *B = (float *)bc_xmalloc((size_t)(K * N) * sizeof(float));
    float *C = (float *)bc_xmalloc((size_t)(M * N) * sizeof(float));
    double best = 1e30;
    for (int64_t i = 0; i < M * K; i++) A[i] = bc_rng_float(&s);
    for (int64_t i = 0; i < K * N; i++) B[i] = bc_rng_float(&s);
    memset(C, 0, (size_t)(M * N) * sizeof(float));
#ifndef QLORA_USE_OPENBLAS
    if (impl == 0) reps = 0;
#endif
    for (int r = 0; r < reps; r++) {
        double t0 = bc_now();
        if (impl == 0) {
#ifdef QLORA_USE_OPENBLAS
            cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K, 1.0f,
                        A, (int)K, B, trans_b ? (int)K : (int)N, 0.0f, C, (int)N);
#endif
        } else {
            qlora_exec ex;
            ex.kernel = QLORA_KERNEL_SIMD;
            ex.backend = NULL;
            qlora_sgemm(&ex, 0, trans_b, M, N, K, 1.0f, A, K, B, trans_b ? K : N, 0.0f, C, N);
        }
        double t = bc_now() - t0;
        if (t < best) best = t;
    }
    free(A);
    free(B);
    free(C);
    return best < 1e29 ? 2.0 * (double)M * (double)N * (double)K / best / 1e9 : 0.0;
}

// Streaming read bandwidth in GB/s: a plain float sum over `bytes` (beyond the LLC) on every
// thread, best of `reps`. thread_cpu = 1 times each pass by the largest thread CPU time instead of
// the wall clock (for a machine shared with other jobs; see bench_nf4's `cputime`).
static inline double bc_stream_read_timed(int64_t bytes, int reps, int thread_cpu) {
    const int64_t n = bytes / 4 / 64 * 64;
    float *buf = (float *)bc_xmalloc((size_t)n * sizeof(float));
    double best = 0.0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
    for (int64_t i = 0; i < n; i++) buf[i] = 1.0f;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = bc_now(), total = 0.0, tmax = 0.0;
#ifdef _OPENMP
#pragma omp parallel reduction(+ : total) reduction(max : tmax)
#endif
        {
            int64_t tid = 0, nt = 1;
#ifdef _OPENMP
            tid = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            const double c0 = bc_thread_cpu_now();
            int64_t a = n * tid / nt / 64 * 64, b = (tid + 1 == nt) ? n : n * (tid + 1) / nt / 64 * 64;
            float acc[16] = { 0 };
            for (int64_t i = a; i < b; i += 16)
                for (int j = 0; j < 16; j++) acc[j] += buf[i + j];
            for (int j = 0; j < 16; j++) total += acc[j];
            tmax = bc_thread_cpu_now() - c0;
        }
        double t = thread_cpu ? tmax : bc_now() - t0;
        if (total != (double)n) fprintf(stderr, "bench: stream read: bad sum\n");
        if ((double)n * 4.0 / t / 1e9 > best) best = (double)n * 4.0 / t / 1e9;
    }
    free(buf);
    return best;
}
static inline double bc_stream_read(int64_t bytes, int reps) { return bc_stream_read_timed(bytes, reps, 0); }

#endif // QLORA_BENCH_COMMON_H
