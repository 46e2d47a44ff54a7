// bench_vulkan.c - throughput of the Vulkan NF4 kernels on every Vulkan device present.
//
//   usage: bench_vulkan [--device I] [--quick] [--variant V]
//
// Per device: forward and backward GEMM GFLOP/s at (M, K, N) = (512, 4096, 4096) and (512, 4096, 11008)
// (K = in features, N = out features; 2·M·N·K flops), GEMV (M = 1) in GB/s of weight + activation traffic,
// and device copy bandwidth for scale (read + write bytes per second). "kernel" times repeat the dispatches
// on device-resident activations; "e2e" times include the host copies of X and Y. CPU devices (lavapipe,
// ~1 GFLOP/s) get small shapes. The ratios that matter on a GPU are against PyTorch's fp32 matmul with
// dense weights on the same GPU (tools/gpu_check.sh) and GEMV against the copy bandwidth.
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#define QLORA_IMPLEMENTATION
#include "qlora.h"
#define QLORA_VULKAN_IMPLEMENTATION
#include "qlora_vulkan.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 16);
}

// A random DQ NF4 weight (rows, cols), blocksize 64 (the QLoRA layout), built without the quantizer.
static int make_weight(qlora_nf4 *w, int64_t rows, int64_t cols) {
    memset(w, 0, sizeof *w);
    int64_t n = rows * cols, nb = (n + 63) / 64, nn = (nb + 255) / 256;
    w->rows = rows;
    w->cols = cols;
    w->blocksize = 64;
    w->double_quant = 1;
    w->codes = (uint8_t *)malloc((size_t)((n + 1) / 2));
    w->qabsmax = (uint8_t *)malloc((size_t)nb);
    w->nested_absmax = (float *)malloc(sizeof(float) * (size_t)nn);
    if (!w->codes || !w->qabsmax || !w->nested_absmax) return 0;
    for (int64_t i = 0; i < (n + 1) / 2; i++) w->codes[i] = (uint8_t)rnd();
    for (int64_t i = 0; i < nb; i++) w->qabsmax[i] = (uint8_t)rnd();
    for (int64_t i = 0; i < nn; i++) w->nested_absmax[i] = 0.01f;
    for (int i = 0; i < 256; i++) w->nested_map[i] = (float)(i - 127) / 128.0f;
    w->nested_offset = 0.02f;
    return 1;
}

static void free_weight(qlora_nf4 *w) {
    free(w->codes);
    free(w->qabsmax);
    free(w->nested_absmax);
}

// Seconds per pass of qlora_vk_bench_linear, calibrated to run about `budget` seconds.
static double time_kernel(qlora_vk *vk, const qlora_nf4 *w, int64_t M, int backward, double budget,
                          qlora_error *err) {
    if (qlora_vk_bench_linear(vk, w, M, backward, 1, err) != QLORA_OK) return -1;   // upload + pipeline JIT
    double t0 = now_s();
    if (qlora_vk_bench_linear(vk, w, M, backward, 1, err) != QLORA_OK) return -1;
    double one = now_s() - t0;
    int reps = one > 0 ? (int)(budget / one) : 100;
    if (reps < 1) return one;
    if (reps > 200) reps = 200;
    t0 = now_s();
    if (qlora_vk_bench_linear(vk, w, M, backward, reps, err) != QLORA_OK) return -1;
    return (now_s() - t0) / reps;
}

// Seconds per end-to-end call (host X in, host Y out), a few calls.
static double time_e2e(qlora_vk *vk, const qlora_nf4 *w, int64_t M, int backward, int calls,
                       qlora_error *err) {
    int64_t in = backward ? w->rows : w->cols, out = backward ? w->cols : w->rows;
    float *x = (float *)calloc((size_t)(M * in), sizeof(float)),
          *y = (float *)calloc((size_t)(M * out), sizeof(float));
    double t = -1;
    if (x && y) {
        qlora_status st = backward ? qlora_vk_nf4_linear_backward(vk, y, x, w, M, err)
                                   : qlora_vk_nf4_linear_forward(vk, y, x, w, M, err);
        double t0 = now_s();
        for (int i = 0; i < calls && st == QLORA_OK; i++) {
            st = backward ? qlora_vk_nf4_linear_backward(vk, y, x, w, M, err)
                          : qlora_vk_nf4_linear_forward(vk, y, x, w, M, err);
        }
        if (st == QLORA_OK) t = (now_s() - t0) / calls;
    }
    free(x);
    free(y);
    return t;
}

static void bench_device(int index, int quick, int variant) {
    qlora_vk        *vk = NULL;
    qlora_vk_options o;
    qlora_error      err;
    char             idx[16];
    memset(&o, 0, sizeof o);
    memset(&err, 0, sizeof err);
    snprintf(idx, sizeof idx, "%d", index);
    o.device = idx;
    o.allow_cpu = 1;
    o.gemm_variant = variant;
    if (qlora_vk_init(&vk, &o, &err) != QLORA_OK) {
        printf("SKIP device %d: %s: %s\n", index, qlora_status_string(err.status), err.detail);
        return;
    }
    int cpu = vk->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU;
    printf("device %d: %s%s\n", index, qlora_vk_name(vk), cpu ? " (CPU Vulkan: small shapes)" : "");
    double budget = quick ? 0.1 : 0.4;

    // Copy bandwidth (device to device), read + write bytes.
    int64_t cbytes = cpu ? ((int64_t)32 << 20) : ((int64_t)512 << 20);
    double  copy_gbs = 0;
    if (qlora_vk_bench_copy(vk, cbytes, 1, &err) == QLORA_OK) {
        int    reps = cpu ? 4 : 20;
        double t0 = now_s();
        if (qlora_vk_bench_copy(vk, cbytes, reps, &err) == QLORA_OK) {
            double t = (now_s() - t0) / reps;
            copy_gbs = 2.0 * (double)cbytes / t / 1e9;
            printf("  copy %lld MiB: %.3f ms, %.1f GB/s (read + write)\n", (long long)(cbytes >> 20), t * 1e3,
                   copy_gbs);
        }
    }
    if (err.detail[0]) printf("  copy: %s\n", err.detail);

    // GEMM shapes (M, K, N).
    static const int64_t gpu_shapes[2][3] = { { 512, 4096, 4096 }, { 512, 4096, 11008 } };
    static const int64_t cpu_shapes[2][3] = { { 64, 512, 512 }, { 64, 512, 1376 } };
    for (int s = 0; s < 2; s++) {
        const int64_t *sh = cpu ? cpu_shapes[s] : gpu_shapes[s];
        int64_t M = sh[0], K = sh[1], N = sh[2];
        qlora_nf4 w;
        if (!make_weight(&w, N, K)) { printf("  out of memory\n"); break; }
        double flops = 2.0 * (double)M * (double)N * (double)K;
        for (int b = 0; b < 2; b++) {
            memset(&err, 0, sizeof err);
            double tk = time_kernel(vk, &w, M, b, budget, &err);
            double te = tk > 0 ? time_e2e(vk, &w, M, b, cpu ? 1 : 5, &err) : -1;
            if (tk <= 0 || te <= 0) {
                printf("  %s M=%lld K=%lld N=%lld: FAILED %s\n", b ? "bwd" : "fwd", (long long)M,
                       (long long)K, (long long)N, err.detail);
                continue;
            }
            printf("  %s GEMM M=%lld K=%lld N=%lld: kernel %.3f ms %.1f GFLOP/s | e2e %.3f ms %.1f GFLOP/s\n",
                   b ? "bwd" : "fwd", (long long)M, (long long)K, (long long)N, tk * 1e3, flops / tk / 1e9,
                   te * 1e3, flops / te / 1e9);
        }
        qlora_vk_release(vk, &w);
        free_weight(&w);
    }

    // GEMV, M = 1: bytes = codes + DQ scales + x + y.
    static const int64_t gemv_shapes[2][2] = { { 4096, 4096 }, { 4096, 11008 } };
    for (int s = 0; s < 2; s++) {
        int64_t K = gemv_shapes[s][0], N = gemv_shapes[s][1];
        qlora_nf4 w;
        if (!make_weight(&w, N, K)) { printf("  out of memory\n"); break; }
        double nel = (double)N * (double)K;
        double bytes = nel / 2 + nel / 64 + 4.0 * (double)(K + N);   // codes + 8-bit DQ scales + x + y
        memset(&err, 0, sizeof err);
        double tk = time_kernel(vk, &w, 1, 0, budget, &err);
        double te = tk > 0 ? time_e2e(vk, &w, 1, 0, 10, &err) : -1;
        if (tk <= 0 || te <= 0) {
            printf("  gemv K=%lld N=%lld: FAILED %s\n", (long long)K, (long long)N, err.detail);
        } else {
            double gbs = bytes / tk / 1e9;
            printf("  GEMV M=1 K=%lld N=%lld: kernel %.3f ms %.2f GB/s", (long long)K, (long long)N, tk * 1e3,
                   gbs);
            if (copy_gbs > 0) printf(" (%.0f%% of copy)", 100.0 * gbs / copy_gbs);
            printf(" | e2e %.3f ms\n", te * 1e3);
        }
        qlora_vk_release(vk, &w);
        free_weight(&w);
    }
    qlora_vk_free(vk);
}

int main(int argc, char **argv) {
    int only = -1, quick = 0, variant = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--device") == 0 && i + 1 < argc) only = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0) quick = 1;
        else if (strcmp(argv[i], "--variant") == 0 && i + 1 < argc) variant = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--device I] [--quick] [--variant 0..3]\n", argv[0]);
            return 2;
        }
    }
    int32_t     n = 0;
    qlora_error err;
    memset(&err, 0, sizeof err);
    if (qlora_vk_device_count(&n, &err) != QLORA_OK || n == 0) {
        printf("SKIP bench_vulkan: no Vulkan device (%s)\n", err.detail[0] ? err.detail : "none listed");
        return 0;
    }
    for (int i = 0; i < n; i++) {
        if (only < 0 || only == i) bench_device(i, quick, variant);
    }
    return 0;
}
