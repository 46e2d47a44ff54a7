// lora_math.c - the arithmetic behind QLoRA, computed for real:
//   1. how few parameters a LoRA adapter trains;
//   2. the NF4 codebook, and its error on normal data against int4 and fp4;
//   3. bits per parameter with and without double quantization, for 7B and 65B models;
//   4. a LoRA on a frozen NF4 layer fitting a target, its loss falling.
// usage: build/lora_math [--steps N] [--seed S]
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(void) {
    fprintf(stderr, "usage: lora_math [--steps N] [--seed S]\n"
                    "  Prints the parameter, precision and memory arithmetic of QLoRA and fits a LoRA\n"
                    "  adapter on a frozen NF4 layer. Defaults: --steps 300 --seed 1.\n");
}

static void section(const char *title) { printf("\n== %s ==\n", title); }

// --- 2. three 4-bit formats, all blockwise absmax with blocksize 64 ---

// int4: symmetric integers -7..7 scaled by absmax/7, round to nearest.
static float int4_roundtrip(float x, float absmax) {
    if (absmax == 0.0f) return 0.0f;
    float q = roundf(x / absmax * 7.0f);
    return q / 7.0f * absmax;
}

// fp4 as bitsandbytes defines it (1 sign, 2 exponent, 1 mantissa bit; the normalized magnitudes
// of spec §1.6), nearest value.
static float fp4_roundtrip(float x, float absmax) {
    static const float mag[8] = {0.0f, 0.005208333f, 0.6666667f, 1.0f, 0.3333333f, 0.5f, 0.1666667f, 0.25f};
    if (absmax == 0.0f) return 0.0f;
    float y = fabsf(x / absmax), best = 0.0f;
    for (int i = 0; i < 8; i++)
        if (fabsf(mag[i] - y) < fabsf(best - y)) best = mag[i];
    return (x < 0 ? -best : best) * absmax;
}

static void compare_formats(uint64_t seed) {
    const int64_t n = 1 << 20;
    float *x = (float *)malloc(sizeof(float) * n), *y = (float *)malloc(sizeof(float) * n);
    qlora_rng rng;
    qlora_rng_seed(&rng, seed);
    for (int64_t i = 0; i < n; i++) x[i] = qlora_rng_normal(&rng);
    // NF4 through the library
    qlora_nf4 w;
    qlora_error err = {0};
    if (qlora_nf4_quantize(&w, x, 1, n, 64, 0, &err) != QLORA_OK || qlora_nf4_dequantize(y, &w, &err) != QLORA_OK) {
        fprintf(stderr, "nf4: %s\n", err.detail);
        exit(1);
    }
    double se_nf4 = 0, se_int4 = 0, se_fp4 = 0;
    for (int64_t b = 0; b < n / 64; b++) {
        float amax = 0;
        for (int64_t i = b * 64; i < (b + 1) * 64; i++) amax = fmaxf(amax, fabsf(x[i]));
        for (int64_t i = b * 64; i < (b + 1) * 64; i++) {
            double e1 = x[i] - y[i], e2 = x[i] - int4_roundtrip(x[i], amax), e3 = x[i] - fp4_roundtrip(x[i], amax);
            se_nf4 += e1 * e1;
            se_int4 += e2 * e2;
            se_fp4 += e3 * e3;
        }
    }
    printf("RMSE of 4-bit formats on %lld N(0,1) values, blocksize 64 (lower is better):\n", (long long)n);
    printf("  int4 (symmetric, 15 levels) %.4f\n", sqrt(se_int4 / n));
    printf("  fp4  (bitsandbytes E2M1)    %.4f\n", sqrt(se_fp4 / n));
    printf("  nf4  (normal float)         %.4f   <- quantiles of N(0,1): most codes where most weights are\n",
           sqrt(se_nf4 / n));
    qlora_nf4_free(&w);
    free(x);
    free(y);
}

// --- 4. fit y = x·(W + ΔW)ᵀ with a LoRA on the frozen NF4 W ---
static void fit_lora(int steps, uint64_t seed) {
    const int64_t in = 256, out = 128, M = 64, true_rank = 4;
    qlora_rng rng;
    qlora_rng_seed(&rng, seed + 1);
    float *w = (float *)malloc(sizeof(float) * out * in), *target = (float *)malloc(sizeof(float) * out * in);
    for (int64_t i = 0; i < out * in; i++) w[i] = qlora_rng_normal(&rng) * 0.05f;
    // ΔW = U·V with rank 4: the update a fine-tune would want
    float *u = (float *)malloc(sizeof(float) * out * true_rank), *v = (float *)malloc(sizeof(float) * true_rank * in);
    for (int64_t i = 0; i < out * true_rank; i++) u[i] = qlora_rng_normal(&rng) * 0.1f;
    for (int64_t i = 0; i < true_rank * in; i++) v[i] = qlora_rng_normal(&rng) * 0.1f;
    memcpy(target, w, sizeof(float) * out * in);
    qlora_sgemm(NULL, 0, 0, out, in, true_rank, 1.0f, u, true_rank, v, in, 1.0f, target, in);

    qlora_nf4 wq;
    qlora_lora lora;
    qlora_lora_config cfg = {8, 16.0f, 0.0f, 0};
    qlora_error err = {0};
    if (qlora_nf4_quantize(&wq, w, out, in, 64, 1, &err) != QLORA_OK ||
        qlora_lora_init(&lora, in, out, &cfg, seed, &err) != QLORA_OK) {
        fprintf(stderr, "setup: %s\n", err.detail);
        exit(1);
    }
    float *x = (float *)malloc(sizeof(float) * M * in), *y = (float *)malloc(sizeof(float) * M * out);
    float *yt = (float *)malloc(sizeof(float) * M * out), *dy = (float *)malloc(sizeof(float) * M * out);
    float *xa = (float *)malloc(sizeof(float) * M * cfg.rank);
    // Adam moments for A and B
    int64_t na = cfg.rank * in, nb = out * cfg.rank;
    float *m = (float *)calloc((size_t)(na + nb), sizeof(float)), *s2 = (float *)calloc((size_t)(na + nb), sizeof(float));
    const float lr = 1e-2f, b1 = 0.9f, b2 = 0.999f;
    printf("LoRA r=%d on a frozen NF4 (%lld x %lld) layer, fitting a rank-%lld change to it (Adam, lr %g):\n",
           (int)cfg.rank, (long long)out, (long long)in, (long long)true_rank, (double)lr);
    double first = 0, last = 0;
    for (int step = 1; step <= steps; step++) {
        for (int64_t i = 0; i < M * in; i++) x[i] = qlora_rng_normal(&rng);
        qlora_sgemm(NULL, 0, 1, M, out, in, 1.0f, x, in, target, in, 0.0f, yt, out);   // what we want
        qlora_lora_cache cache = {xa, NULL, 0, 0};
        if (qlora_lora_forward(NULL, y, &cache, x, &lora, &wq, M, 1, &err) != QLORA_OK) {
            fprintf(stderr, "forward: %s\n", err.detail);
            exit(1);
        }
        double loss = 0;
        for (int64_t i = 0; i < M * out; i++) {
            float d = y[i] - yt[i];
            loss += (double)d * d;
            dy[i] = 2.0f * d / (float)(M * out);
        }
        loss /= (double)(M * out);
        qlora_lora_zero_grad(&lora);
        qlora_lora_backward(NULL, NULL, &lora, dy, x, &cache, &wq, M, &err);
        float c1 = 1.0f - powf(b1, (float)step), c2 = 1.0f - powf(b2, (float)step);
        for (int64_t i = 0; i < na + nb; i++) {
            float *p = i < na ? &lora.A[i] : &lora.B[i - na];
            float g = i < na ? lora.dA[i] : lora.dB[i - na];
            m[i] = b1 * m[i] + (1 - b1) * g;
            s2[i] = b2 * s2[i] + (1 - b2) * g * g;
            *p -= lr * (m[i] / c1) / (sqrtf(s2[i] / c2) + 1e-8f);
        }
        if (step == 1) first = loss;
        last = loss;
        if (step == 1 || step % (steps / 10 > 0 ? steps / 10 : 1) == 0) printf("  step %4d  loss %.6f\n", step, loss);
    }
    // What is left: the NF4 error of W itself, which a LoRA cannot see past.
    float *deq = (float *)malloc(sizeof(float) * out * in);
    qlora_nf4_dequantize(deq, &wq, NULL);
    double qerr = 0;
    for (int64_t i = 0; i < out * in; i++) qerr += ((double)deq[i] - w[i]) * ((double)deq[i] - w[i]);
    printf("  loss fell from %.5f to %.5f (%.1fx). The floor is the NF4 error of W itself: about %.5f.\n", first, last,
           first / (last > 0 ? last : 1e-30), qerr / (double)out);
    qlora_lora_free(&lora);
    qlora_nf4_free(&wq);
    free(w); free(target); free(u); free(v); free(x); free(y); free(yt); free(dy); free(xa); free(m); free(s2); free(deq);
}

int main(int argc, char **argv) {
    int steps = 300;
    uint64_t seed = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else { usage(); return strcmp(argv[i], "--help") ? 2 : 0; }
    }
    if (steps < 1) { usage(); return 2; }

    section("1. LoRA trains few parameters");
    const double in = 20000, out = 10000, r = 8;
    double full = in * out, lora = r * (in + out);
    printf("A 10,000 x 20,000 weight has %.0f parameters (%.0fM).\n", full, full / 1e6);
    printf("A rank-8 LoRA trains A (8 x 20,000) and B (10,000 x 8): %.0f parameters (%.0fk),\n", lora, lora / 1e3);
    printf("a cut of %.2f%%: the update B·A is a 10,000 x 20,000 matrix of rank at most 8.\n", 100.0 * (1 - lora / full));

    section("2. The NF4 codebook");
    const float *code = qlora_nf4_codebook();
    for (int i = 0; i < 16; i++) printf("  code %2d  %+.10f\n", i, (double)code[i]);
    printf("Seven negative values, an exact zero and eight positive: the quantiles of a normal distribution,\n"
           "scaled to [-1, 1]. Each block of 64 weights stores one absmax and sixteen-way choices.\n");
    compare_formats(seed);

    section("3. Bits per parameter");
    double plain = qlora_nf4_bits_per_param(64, 0), dq = qlora_nf4_bits_per_param(64, 1);
    printf("NF4, blocksize 64, fp32 absmax:      4 + 32/64            = %.6f bits\n", plain);
    printf("NF4 + double quantization (8-bit absmax, fp32 per 256): 4 + 8/64 + 32/(64*256) = %.6f bits\n", dq);
    printf("Saving: %.6f bits per parameter.\n", plain - dq);
    // LLaMA-7B linear layers: 6,476,005,376 parameters (spec §2.3); a 65B model: 65e9.
    const double p7 = 6476005376.0, p65 = 65e9;
    printf("  7B linear layers (%.3e params): %.2f GB without DQ, %.2f GB with DQ (fp16: %.2f GB)\n", p7,
           p7 * plain / 8 / 1e9, p7 * dq / 8 / 1e9, p7 * 2 / 1e9);
    printf("  65B model       (%.1e params): %.2f GB without DQ, %.2f GB with DQ, saving %.2f GB\n", p65,
           p65 * plain / 8 / 1e9, p65 * dq / 8 / 1e9, p65 * (plain - dq) / 8 / 1e9);

    section("4. A LoRA on a frozen NF4 layer learns");
    fit_lora(steps, seed);
    return 0;
}
