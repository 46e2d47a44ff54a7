// test_vulkan.c - the Vulkan backend (qlora_vulkan.h) against a double-precision CPU reference.
//
// Runs on whatever device QLORA_VK_DEVICE names, else asks for the CPU device (Mesa lavapipe) explicitly,
// always with the validation layer on; any validation message fails the test. Without a Vulkan loader or
// device every check is a SKIP (QLORA_VK_REQUIRE=1 turns that into a failure, for CI). QLORA_TEST_QUICK=1
// shrinks the shape matrix.
//
// The reference dequantizes exactly as section 3 of qlora.h specifies (fp32 code·absmax, DQ absmax =
// map[q]·nested[b/256] + offset in fp32) and accumulates in double. Most weights are built by hand from
// random codes and scales, so every nibble and scale path is exercised independently of the quantizer;
// one group uses qlora_nf4_quantize and compares with qlora.h's QLORA_KERNEL_REF through a qlora_exec.
//
// Sanitizer runs: Mesa's ICD leaks a one-time 128-byte allocation per vkCreateInstance (made under
// pthread_once inside the driver, which the loader unloads again), and LSan cannot suppress it by name
// because the driver is gone when the report is printed; ASAN_OPTIONS=fast_unwind_on_malloc=0, which
// would name it, deadlocks with lavapipe's threads. Run this test with ASAN_OPTIONS=detect_leaks=0.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#define QLORA_VULKAN_IMPLEMENTATION
#include "qlora_vulkan.h"
#include "test_util.h"

// NF4 codebook, fp32 bit patterns from the format spec (independent of the shaders' copy).
static const uint32_t nf4_bits[16] = {
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u,
};

static float nf4_value(int code) {
    float f;
    memcpy(&f, &nf4_bits[code], sizeof f);
    return f;
}

// A plausible signed 8-bit dynamic map (sorted, 0 at 127, +1 at 255); the test only needs a fixed table.
static void dynamic_map(float map[256]) {
    int n = 0;
    for (int i = 0; i < 7; i++) {
        int k = (1 << i) + 1;
        for (int j = 0; j + 1 < k; j++) {
            double lo = 0.1 + 0.9 * j / (k - 1), hi = 0.1 + 0.9 * (j + 1) / (k - 1);
            double v  = (lo + hi) / 2 * pow(10.0, i - 6);
            map[n++] = (float)v;
            map[n++] = (float)-v;
        }
    }
    map[n++] = 0.0f;
    map[n++] = 1.0f;
    for (int i = 1; i < 256; i++) {   // insertion sort
        float v = map[i];
        int   j = i - 1;
        while (j >= 0 && map[j] > v) { map[j + 1] = map[j]; j--; }
        map[j + 1] = v;
    }
}

// Random NF4 weight (rows, cols): random code bytes, random scales; odd n pads the last low nibble with 7.
static int make_nf4(qlora_nf4 *w, int64_t rows, int64_t cols, int bs, int dq) {
    memset(w, 0, sizeof *w);
    int64_t n = rows * cols, nb = (n + bs - 1) / bs, nbytes = (n + 1) / 2;
    w->rows         = rows;
    w->cols         = cols;
    w->blocksize    = bs;
    w->double_quant = dq;
    w->codes        = (uint8_t *)malloc((size_t)nbytes);
    if (!w->codes) return 0;
    for (int64_t i = 0; i < nbytes; i++) w->codes[i] = (uint8_t)(tu_uniform() * 128.0 + 128.0);
    if (n & 1) w->codes[nbytes - 1] = (uint8_t)((w->codes[nbytes - 1] & 0xF0) | 0x07);
    if (dq) {
        int64_t nn = (nb + 255) / 256;
        w->qabsmax       = (uint8_t *)malloc((size_t)nb);
        w->nested_absmax = (float *)malloc(sizeof(float) * (size_t)nn);
        if (!w->qabsmax || !w->nested_absmax) return 0;
        for (int64_t i = 0; i < nb; i++) w->qabsmax[i] = (uint8_t)(tu_uniform() * 128.0 + 128.0);
        for (int64_t i = 0; i < nn; i++) w->nested_absmax[i] = (float)(0.75 + 0.5 * tu_uniform());
        w->nested_offset = 0.9f;
        dynamic_map(w->nested_map);
    } else {
        w->absmax = (float *)malloc(sizeof(float) * (size_t)nb);
        if (!w->absmax) return 0;
        for (int64_t i = 0; i < nb; i++) w->absmax[i] = (float)(1.0 + 0.9 * tu_uniform());
    }
    return 1;
}

static void free_nf4(qlora_nf4 *w) {
    free(w->codes);
    free(w->absmax);
    free(w->qabsmax);
    free(w->nested_absmax);
    memset(w, 0, sizeof *w);
}

// The specification: fp32 absmax of block b and fp32 dequantized element e.
static float ref_scale(const qlora_nf4 *w, int64_t b) {
    if (!w->double_quant) return w->absmax[b];
    float s = w->nested_map[w->qabsmax[b]] * w->nested_absmax[b / 256];
    return s + w->nested_offset;
}

static void ref_dequant(const qlora_nf4 *w, float *out) {
    for (int64_t e = 0; e < w->rows * w->cols; e++) {
        uint8_t byte = w->codes[e / 2];
        int     code = (e & 1) ? (byte & 15) : (byte >> 4);
        out[e] = nf4_value(code) * ref_scale(w, e / w->blocksize);
    }
}

// Compares got with a double reference: |got - want| <= tol·scale per element (scale = Σ|a||b| of that
// dot product), no NaN, and NMSE <= 1e-10. Reports the worst element.
static int check_vs_ref(const char *name, const float *got, const double *want, const double *scale,
                        int64_t n, double tol) {
    double  num = 0, den = 0, worst = 0;
    int64_t bad = 0, wi = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        num += d * d;
        den += want[i] * want[i];
        double lim = tol * scale[i] + 1e-30;
        if (!(d <= lim)) {
            bad++;
            if (d != d || d / lim > worst) { worst = d != d ? 1e300 : d / lim; wi = i; }
        }
    }
    double nmse = den > 0 ? num / den : num;
    if (bad == 0 && nmse <= 1e-10) return tu_check(1, name, NULL);
    return tu_check(0, name, "%lld of %lld off (worst [%lld] got %.9g want %.9g), NMSE %.3g", (long long)bad,
                    (long long)n, (long long)wi, (double)got[wi], want[wi], nmse);
}

static int g_validation = 1;   // validation layer on for this run

static int check_validation(qlora_vk *vk, const char *name) {
    if (!g_validation) return 1;
    int64_t n = qlora_vk_validation_messages(vk);
    return tu_check(n == 0, name, "%lld validation messages, last: %.300s", (long long)n,
                    qlora_vk_validation_last(vk));
}

// Forward (poisoned output) and backward (pre-filled dX) of one shape against the reference.
static void check_linear(qlora_vk *vk, const char *tag, int64_t M, int64_t N, int64_t K, int bs, int dq) {
    char      name[160];
    qlora_nf4 w;
    qlora_error err;
    memset(&err, 0, sizeof err);
    if (!make_nf4(&w, N, K, bs, dq)) { tu_check(0, tag, "out of memory"); return; }
    float  *wd = (float *)malloc(sizeof(float) * (size_t)(N * K));
    float *x = (float *)malloc(sizeof(float) * (size_t)(M * K)),
          *y = (float *)malloc(sizeof(float) * (size_t)(M * N));
    float *dy = (float *)malloc(sizeof(float) * (size_t)(M * N)),
          *dx = (float *)malloc(sizeof(float) * (size_t)(M * K));
    double *ry = (double *)malloc(sizeof(double) * (size_t)(M * N)),
           *sy = (double *)malloc(sizeof(double) * (size_t)(M * N));
    double *rx = (double *)malloc(sizeof(double) * (size_t)(M * K)),
           *sx = (double *)malloc(sizeof(double) * (size_t)(M * K));
    qlora_status st;
    if (!wd || !x || !y || !dy || !dx || !ry || !sy || !rx || !sx) {
        tu_check(0, tag, "out of memory");
        goto done;
    }
    ref_dequant(&w, wd);
    tu_fill_uniform(x, (long)(M * K), 1.0);
    tu_fill_uniform(dy, (long)(M * N), 1.0);
    tu_fill_uniform(dx, (long)(M * K), 1.0);
    for (int64_t m = 0; m < M; m++) {
        for (int64_t n = 0; n < N; n++) {
            double s = 0, a = 0;
            for (int64_t k = 0; k < K; k++) {
                s += (double)x[m * K + k] * wd[n * K + k];
                a += fabs((double)x[m * K + k] * wd[n * K + k]);
            }
            ry[m * N + n] = s;
            sy[m * N + n] = a;
        }
        for (int64_t k = 0; k < K; k++) {
            double s = dx[m * K + k], a = fabs(dx[m * K + k]);
            for (int64_t n = 0; n < N; n++) {
                s += (double)dy[m * N + n] * wd[n * K + k];
                a += fabs((double)dy[m * N + n] * wd[n * K + k]);
            }
            rx[m * K + k] = s;
            sx[m * K + k] = a;
        }
    }

    for (int64_t i = 0; i < M * N; i++) y[i] = NAN;   // every element must be written
    st = qlora_vk_nf4_linear_forward(vk, y, x, &w, M, &err);
    snprintf(name, sizeof name, "%s forward M=%lld N=%lld K=%lld bs=%d%s", tag, (long long)M, (long long)N,
             (long long)K, bs, dq ? " dq" : "");
    if (st != QLORA_OK) tu_check(0, name, "%s: %s", qlora_status_string(st), err.detail);
    else check_vs_ref(name, y, ry, sy, M * N, 1e-5);

    st = qlora_vk_nf4_linear_backward(vk, dx, dy, &w, M, &err);
    snprintf(name, sizeof name, "%s backward M=%lld N=%lld K=%lld bs=%d%s", tag, (long long)M, (long long)N,
             (long long)K, bs, dq ? " dq" : "");
    if (st != QLORA_OK) tu_check(0, name, "%s: %s", qlora_status_string(st), err.detail);
    else check_vs_ref(name, dx, rx, sx, M * K, 1e-5);
    qlora_vk_release(vk, &w);
done:
    free(wd); free(x); free(y); free(dy); free(dx); free(ry); free(sy); free(rx); free(sx);
    free_nf4(&w);
}

static void check_dequantize(qlora_vk *vk, const char *tag, int64_t N, int64_t K, int bs, int dq) {
    char        name[160];
    qlora_nf4   w;
    qlora_error err;
    if (!make_nf4(&w, N, K, bs, dq)) { tu_check(0, tag, "out of memory"); return; }
    float *want = (float *)malloc(sizeof(float) * (size_t)(N * K)),
          *got = (float *)malloc(sizeof(float) * (size_t)(N * K));
    snprintf(name, sizeof name, "%s dequantize N=%lld K=%lld bs=%d%s", tag, (long long)N, (long long)K, bs,
             dq ? " dq" : "");
    if (want && got) {
        ref_dequant(&w, want);
        for (int64_t i = 0; i < N * K; i++) got[i] = NAN;
        qlora_status st = qlora_vk_nf4_dequantize(vk, got, &w, &err);
        if (st != QLORA_OK) tu_check(0, name, "%s: %s", qlora_status_string(st), err.detail);
        else tu_close(name, got, want, (long)(N * K), 0.0, 1e-6);
    }
    qlora_vk_release(vk, &w);
    free(want);
    free(got);
    free_nf4(&w);
}

// Opens a context on the test device (env override, else the CPU device) with validation.
static qlora_status open_ctx(qlora_vk **vk, qlora_vk_options *o, qlora_error *err) {
    o->allow_cpu  = 1;
    o->validation = g_validation;
    return qlora_vk_init(vk, o, err);
}

// The committed SPIR-V header must equal a fresh regeneration (same glslc version).
static void check_shaders_fresh(void) {
    const char *name = "shaders/qlora_shaders.h up to date";
    if (system("command -v glslc >/dev/null 2>&1") != 0) { tu_skip(name, "glslc not installed"); return; }
    const char *fresh = tu_path("qlora_shaders_fresh.h");
    char        cmd[1024];
    snprintf(cmd, sizeof cmd, "sh tools/gen_shaders.sh %s", fresh);
    if (system(cmd) != 0) { tu_check(0, name, "tools/gen_shaders.sh failed"); return; }
    FILE *a = fopen("shaders/qlora_shaders.h", "rb"), *b = fopen(fresh, "rb");
    if (!a || !b) {
        tu_check(0, name, "cannot open %s", a ? fresh : "shaders/qlora_shaders.h");
        if (a) fclose(a);
        if (b) fclose(b);
        return;
    }
    char la[512] = "", lb[512] = "";
    int  same = 1, line = 0, first_diff = 0, version_differs = 0;
    for (;;) {
        char *ra = fgets(la, sizeof la, a), *rb = fgets(lb, sizeof lb, b);
        line++;
        if (!ra && !rb) break;
        if (!ra || !rb || strcmp(la, lb) != 0) {
            if (same) first_diff = line;
            same = 0;
            if (line == 2) version_differs = 1;   // "// glslc: <version>"
            break;
        }
    }
    fclose(a);
    fclose(b);
    if (same) tu_check(1, name, NULL);
    else if (version_differs)
        tu_skip(name, "the installed glslc differs from the one that generated the header");
    else
        tu_check(0, name, "stale: differs from a fresh tools/gen_shaders.sh at line %d (rerun it)",
                 first_diff);
}

int main(void) {
    int        quick = getenv("QLORA_TEST_QUICK") && atoi(getenv("QLORA_TEST_QUICK")) != 0;
    int        require = getenv("QLORA_VK_REQUIRE") && atoi(getenv("QLORA_VK_REQUIRE")) != 0;
    qlora_error err;
    memset(&err, 0, sizeof err);
    tu_seed(20260401);

    check_shaders_fresh();

    // Devices.
    int32_t      ndev = 0;
    qlora_status st = qlora_vk_device_count(&ndev, &err);
    if (st == QLORA_OK) {
        for (int32_t i = 0; i < ndev; i++) {
            char nm[300];
            if (qlora_vk_device_name(i, nm, sizeof nm, &err) == QLORA_OK)
                printf("# device %d: %s\n", (int)i, nm);
        }
    }
    qlora_vk        *vk = NULL;
    qlora_vk_options o;
    memset(&o, 0, sizeof o);
    o.poison_outputs = 1;
    if (st == QLORA_OK) st = open_ctx(&vk, &o, &err);
    if (st == QLORA_ERR_UNSUPPORTED && strstr(err.detail, "validation")) {
        tu_skip("validation layer", "%s; running without it", err.detail);
        g_validation = 0;
        st = open_ctx(&vk, &o, &err);
    }
    if (st != QLORA_OK) {
        if (require || st != QLORA_ERR_UNSUPPORTED) {   // a named device that does not exist is an error
            tu_check(0, "vulkan device", "%s: %s%s", qlora_status_string(st), err.detail,
                     require ? " (QLORA_VK_REQUIRE=1)" : "");
        }
        else tu_skip("vulkan", "no usable device: %s: %s", qlora_status_string(st), err.detail);
        return tu_finish();
    }
    printf("# running on %s, validation %s\n", qlora_vk_name(vk), g_validation ? "on" : "off");

    // Backend table.
    const qlora_backend *be = qlora_vk_backend(vk);
    tu_check(be && be->nf4_linear_forward && be->nf4_linear_backward && be->user == (void *)vk &&
                 strcmp(be->name, "vulkan") == 0,
             "backend table", "incomplete");

    // Dequantize: aligned and unaligned rows, odd element count, DQ across several nested blocks.
    check_dequantize(vk, "default", 37, 100, 64, 0);
    check_dequantize(vk, "default", 33, 99, 128, 1);
    check_dequantize(vk, "default", 300, 264, 64, 1);

    // Forward / backward matrix: M = 1, 3 (GEMV) and 17, 64 (GEMM); K aligned (136) and not (100);
    // sizes not multiples of any tile; blocksize 64 and 128; with and without DQ.
    static const int64_t Ms[4] = { 1, 3, 17, 64 };
    static const int64_t shapes[2][2] = { { 37, 100 }, { 70, 136 } };
    for (int mi = 0; mi < 4; mi++) {
        for (int si = 0; si < 2; si++) {
            for (int bi = 0; bi < 2; bi++) {
                for (int dq = 0; dq < 2; dq++) {
                    if (quick && (mi & 1) != (si ^ bi ^ dq)) continue;
                    check_linear(vk, "default", Ms[mi], shapes[si][0], shapes[si][1], bi ? 128 : 64, dq);
                }
            }
        }
    }
    // DQ with more than 256 blocks (nested_absmax index b/256 > 0), GEMV and GEMM.
    check_linear(vk, "default", 2, 300, 264, 64, 1);
    if (!quick) check_linear(vk, "default", 17, 300, 264, 64, 1);

    // Through qlora.h: a weight from qlora_nf4_quantize, run via the backend table of a qlora_exec, against
    // the CPU reference kernel (QLORA_KERNEL_REF). GEMV (M = 2) and GEMM (M = 33); K aligned and not.
    {
        static const int64_t cases[4][3] = {{2, 70, 136}, {33, 70, 136}, {2, 37, 100}, {33, 37, 100}};
        for (int c = 0; c < 4; c++) {
            int64_t     M = cases[c][0], N = cases[c][1], K = cases[c][2];
            qlora_nf4   w;
            qlora_exec  ref, gpu;
            char        name[128];
            float      *wf = (float *)malloc(sizeof(float) * (size_t)(N * K));
            float *x = (float *)malloc(sizeof(float) * (size_t)(M * K)),
                  *dy = (float *)malloc(sizeof(float) * (size_t)(M * N));
            float *y0 = (float *)malloc(sizeof(float) * (size_t)(M * N)),
                  *y1 = (float *)malloc(sizeof(float) * (size_t)(M * N));
            float *dx0 = (float *)malloc(sizeof(float) * (size_t)(M * K)),
                  *dx1 = (float *)malloc(sizeof(float) * (size_t)(M * K));
            ref.kernel  = QLORA_KERNEL_REF;
            ref.backend = NULL;
            ref.compute = QLORA_COMPUTE_F32;
            gpu.kernel  = QLORA_KERNEL_REF;
            gpu.backend = be;
            tu_fill_normal(wf, (long)(N * K), 0.05);
            tu_fill_uniform(x, (long)(M * K), 1.0);
            tu_fill_uniform(dy, (long)(M * N), 1.0);
            tu_fill_uniform(dx0, (long)(M * K), 1.0);
            memcpy(dx1, dx0, sizeof(float) * (size_t)(M * K));
            st = qlora_nf4_quantize(&w, wf, N, K, 64, c & 1, &err);
            snprintf(name, sizeof name,
                     "qlora_exec backend vs QLORA_KERNEL_REF, quantized W (%lld, %lld) M=%lld%s",
                     (long long)N, (long long)K, (long long)M, (c & 1) ? " dq" : "");
            if (st == QLORA_OK) st = qlora_nf4_linear_forward(&ref, y0, x, &w, M, &err);
            for (int64_t i = 0; i < M * N; i++) y1[i] = NAN;
            if (st == QLORA_OK) st = qlora_nf4_linear_forward(&gpu, y1, x, &w, M, &err);
            if (st == QLORA_OK) st = qlora_nf4_linear_backward(&ref, dx0, dy, &w, M, &err);
            if (st == QLORA_OK) st = qlora_nf4_linear_backward(&gpu, dx1, dy, &w, M, &err);
            if (st != QLORA_OK) {
                tu_check(0, name, "%s: %s", qlora_status_string(st), err.detail);
            } else {
                char n2[160];
                snprintf(n2, sizeof n2, "%s forward", name);
                tu_close(n2, y1, y0, (long)(M * N), 2e-5, 1e-4);
                snprintf(n2, sizeof n2, "%s backward", name);
                tu_close(n2, dx1, dx0, (long)(M * K), 2e-5, 1e-4);
                snprintf(n2, sizeof n2, "%s: weight left resident", name);
                tu_check(w.backend_data != NULL, n2, "backend_data is NULL");
            }
            qlora_vk_release(vk, &w);
            qlora_nf4_free(&w);
            free(wf); free(x); free(dy); free(y0); free(y1); free(dx0); free(dx1);
        }
        // An empty weight (0 columns) is a sum over nothing.
        qlora_nf4 e;
        float     ye[6] = { 1, 2, 3, 4, 5, 6 }, xe[1] = { 0 };
        memset(&e, 0, sizeof e);
        e.rows = 3;
        e.blocksize = 64;
        st = qlora_vk_nf4_linear_forward(vk, ye, xe, &e, 2, &err);
        tu_check(st == QLORA_OK && ye[0] == 0 && ye[5] == 0, "empty weight: zeros", "%s",
                 qlora_status_string(st));
    }

    // NaN in one row of X stays in that row of Y (GEMV at M = 5, GEMM at M = 12).
    for (int g = 0; g < 2; g++) {
        qlora_nf4 w;
        int64_t   M = g ? 12 : 5, N = 19, K = 40;
        float     x[12 * 40], y[12 * 19];
        char      name[96];
        make_nf4(&w, N, K, 64, 0);
        tu_fill_uniform(x, (long)(M * K), 1.0);
        x[2 * K + 7] = NAN;
        int ok = qlora_vk_nf4_linear_forward(vk, y, x, &w, M, &err) == QLORA_OK, rows_ok = 1;
        for (int64_t m = 0; m < M && ok; m++) {
            for (int64_t n = 0; n < N; n++) rows_ok &= (m == 2) == (y[m * N + n] != y[m * N + n]);
        }
        snprintf(name, sizeof name, "NaN in X row 2 confined to Y row 2 (M=%d)", (int)M);
        tu_check(ok && rows_ok, name, "%s", ok ? "other rows touched" : err.detail);
        qlora_vk_release(vk, &w);
        free_nf4(&w);
    }

    // Residency: uploaded once, found again through backend_data, dropped by qlora_vk_release.
    {
        qlora_nf4 w;
        float     x[3 * 24], y[3 * 10];
        make_nf4(&w, 10, 24, 64, 0);
        tu_fill_uniform(x, 3 * 24, 1.0);
        qlora_vk_stats s0 = qlora_vk_get_stats(vk);
        qlora_vk_nf4_linear_forward(vk, y, x, &w, 3, &err);
        void   *first = w.backend_data;
        int32_t n1 = vk->nweights;
        qlora_vk_nf4_linear_forward(vk, y, x, &w, 3, &err);
        int reused = first != NULL && w.backend_data == first && vk->nweights == n1;
        float dxr[3 * 24] = { 0 };
        qlora_vk_nf4_linear_backward(vk, dxr, y, &w, 3, &err);
        qlora_vk_stats s1 = qlora_vk_get_stats(vk), sn = qlora_vk_get_stats(NULL);
        tu_check(s1.forward == s0.forward + 2 && s1.backward == s0.backward + 1 && s1.uploads == s0.uploads + 1 &&
                     s1.dequantize == s0.dequantize && s1.flops - s0.flops == 3 * 2.0 * 3 * 10 * 24 &&
                     sn.forward == 0 && sn.flops == 0,
                 "stats count the calls", "forward +%lld, backward +%lld, uploads +%lld, flops +%g",
                 (long long)(s1.forward - s0.forward), (long long)(s1.backward - s0.backward),
                 (long long)(s1.uploads - s0.uploads), s1.flops - s0.flops);
        qlora_vk_release(vk, &w);
        tu_check(reused && w.backend_data == NULL && vk->nweights == n1 - 1, "residency cache",
                 "first %p now %p, %d -> %d resident", first, w.backend_data, (int)n1, (int)vk->nweights);
        free_nf4(&w);
    }
    check_validation(vk, "no validation messages (default variants)");
    qlora_vk_free(vk);
    vk = NULL;

    // Smallest and largest workgroup variants: GEMM tiles 1 and 3, GEMV workgroups of 8 and 256.
    for (int v = 0; v < 2; v++) {
        memset(&o, 0, sizeof o);
        o.poison_outputs = 1;
        o.gemm_variant   = v ? 3 : 1;
        o.gemv_threads   = v ? 256 : 8;
        o.force_staging  = v;   // the largest variants also take the discrete-GPU path (staging copies)
        const char *tag  = v ? "largest+staging" : "smallest";
        if (open_ctx(&vk, &o, &err) != QLORA_OK) { tu_check(0, tag, "init: %s", err.detail); continue; }
        check_linear(vk, tag, 3, 70, 136, 64, 1);
        check_linear(vk, tag, 3, 37, 100, 128, 0);
        check_linear(vk, tag, 130, 70, 136, 64, 0);
        if (!quick) check_linear(vk, tag, 20, 37, 100, 64, 1);
        check_dequantize(vk, tag, 37, 100, 64, 1);
        char name[96];
        snprintf(name, sizeof name, "no validation messages (%s variants)", tag);
        check_validation(vk, name);
        qlora_vk_free(vk);
        vk = NULL;
    }

    // Splitting: a 2 KiB binding cap cuts weights into many row chunks and activations into 1-row slabs;
    // 3 workgroups per dimension force dispatch folding. Staging copies as on a discrete GPU.
    memset(&o, 0, sizeof o);
    o.poison_outputs    = 1;
    o.max_binding_bytes = 2048;
    o.max_workgroups    = 3;
    o.force_staging     = 1;
    if (open_ctx(&vk, &o, &err) != QLORA_OK) {
        tu_check(0, "split", "init: %s", err.detail);
    } else {
        qlora_nf4 w;
        make_nf4(&w, 300, 264, 64, 1);
        int up = qlora_vk_upload(vk, &w, &err) == QLORA_OK;
        int nchunks = up ? ((qlora__vk_weight *)w.backend_data)->nchunks : 0;
        tu_check(up && nchunks > 1, "split: weight cut into row chunks", "%d chunks (%s)", nchunks,
                 err.detail);
        printf("# split: (300, 264) DQ weight in %d chunks of <= 2048-byte bindings\n", nchunks);
        qlora_vk_release(vk, &w);
        free_nf4(&w);
        check_linear(vk, "split", 3, 300, 264, 64, 1);
        check_linear(vk, "split", 17, 300, 264, 128, 0);
        check_linear(vk, "split", 17, 37, 100, 64, 1);
        if (!quick) check_linear(vk, "split", 2, 37, 100, 128, 0);
        check_linear(vk, "split", 3, 37, 256, 64, 0);   // GEMV in slabs of 2 + 1 rows (two pipelines)
        check_dequantize(vk, "split", 300, 264, 64, 1);
        check_dequantize(vk, "split", 37, 99, 64, 0);

        // A row wider than the cap cannot be split further: a clean QLORA_ERR_UNSUPPORTED.
        qlora_nf4 wide;
        make_nf4(&wide, 2, 8192, 64, 0);
        float *xw = (float *)calloc(8192, sizeof(float)), yw[2];
        st = qlora_vk_nf4_linear_forward(vk, yw, xw, &wide, 1, &err);
        tu_check(st == QLORA_ERR_UNSUPPORTED, "split: too-wide row is unsupported", "got %s",
                 qlora_status_string(st));
        free(xw);
        free_nf4(&wide);
        check_validation(vk, "no validation messages (split)");
        qlora_vk_free(vk);
        vk = NULL;
    }

    // Argument errors come back as statuses with a detail.
    memset(&o, 0, sizeof o);
    o.gemm_variant = 7;
    st = qlora_vk_init(&vk, &o, &err);
    tu_check(st == QLORA_ERR_ARG && vk == NULL, "bad option rejected", "got %s", qlora_status_string(st));
    qlora_vk_free(NULL);
    return tu_finish();
}
