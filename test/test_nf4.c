// test_nf4.c - NF4 and double quantization: the codebook, known-answer vectors from the spec,
// byte-for-byte equality with the independent numpy reference (test/ref/nf4_ref.py), round-trip
// error bounds and bad input.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#include <stdint.h>

static uint32_t bits_of(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

static void test_codebook(void) {
    // float32 bit patterns of the codebook as listed in the spec (§1.1).
    static const uint32_t want[16] = {0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu,
                                      0xbdba7871u, 0x00000000u, 0x3da2fafful, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au,
                                      0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u};
    const float *c = qlora_nf4_codebook(), *t = qlora_nf4_thresholds();
    int ok = 1, okt = 1;
    for (int i = 0; i < 16; i++) ok &= bits_of(c[i]) == want[i];
    for (int i = 0; i < 15; i++) okt &= t[i] == (c[i] + c[i + 1]) / 2.0f;
    tu_check(ok, "nf4 codebook bits equal bitsandbytes", "a codebook entry differs");
    tu_check(okt, "nf4 thresholds are the float32 midpoints", "a threshold differs");
}

static void test_kat_b1(void) {
    float a[70];
    for (int k = 0; k < 70; k++) a[k] = (float)(((37 * k) % 29) - 14) / 10.0f;
    static const int want_codes[70] = {0, 3, 9, 14, 1, 5, 11, 15, 2, 7, 13, 0, 3, 10, 14, 1, 5, 12, 15, 2, 8, 14, 0, 4,
                                       10, 14, 1, 6, 12, 0, 3, 9, 14, 1, 5, 11, 15, 2, 7, 13, 0, 3, 10, 14, 1, 5, 12, 15,
                                       2, 8, 14, 0, 4, 10, 14, 1, 6, 12, 0, 3, 9, 14, 1, 5, 11, 15, 1, 7, 13, 0};
    static const char *want_hex = "039e15bf27d03ae15cf28e04ae16c039e15bf27d03ae15cf28e04ae16c039e15bf17d0";
    uint8_t codes[35];
    float absmax[2], deq[70];
    qlora_error err = {0};
    qlora_status st = qlora_nf4_quantize_raw(codes, absmax, a, 70, 64, &err);
    tu_check(st == QLORA_OK, "KAT B.1 quantizes", "%s", err.detail);
    int ok = 1;
    for (int i = 0; i < 70; i++) ok &= ((i & 1) ? (codes[i / 2] & 15) : (codes[i / 2] >> 4)) == want_codes[i];
    tu_check(ok, "KAT B.1 codes", "codes differ from the spec");
    char hex[71];
    for (int i = 0; i < 35; i++) snprintf(hex + 2 * i, 3, "%02x", codes[i]);
    tu_check(strcmp(hex, want_hex) == 0, "KAT B.1 packed bytes (high nibble first)", "got %s", hex);
    tu_check(absmax[0] == 1.39999998f && absmax[1] == 1.29999995f, "KAT B.1 absmax", "got %.9g %.9g",
             (double)absmax[0], (double)absmax[1]);
    qlora_nf4_dequantize_raw(deq, codes, absmax, 70, 64, &err);
    static const float want_deq[8] = {-1.4f, -0.552884459f, 0.225302279f, 1.01213956f, -0.974669933f,
                                      -0.258682787f, 0.473081321f, 1.4f};
    tu_close("KAT B.1 dequant", deq, want_deq, 8, 0.0, 2e-7);
}

static void test_kat_b2(void) {
    float x[320], absmax[5], map[256], nested[1], offset, rec[5];
    uint8_t codes[160], q[5];
    for (int k = 0; k < 320; k++) x[k] = (float)((((53 * k) % 31) - 15) / 7.0 * (1.0 + 0.37 * (k / 64)));
    qlora_nf4_quantize_raw(codes, absmax, x, 320, 64, NULL);
    static const float want_absmax[5] = {2.14285707f, 2.93571424f, 3.72857141f, 4.52142859f, 5.31428576f};
    tu_close("KAT B.2 absmax", absmax, want_absmax, 5, 0.0, 2.5e-7);
    qlora_dynamic_map(map, 1);
    qlora_error err = {0};
    qlora_status st = qlora_dq_quantize(q, nested, &offset, absmax, 5, map, &err);
    tu_check(st == QLORA_OK, "KAT B.2 double-quantizes", "%s", err.detail);
    tu_check(fabsf(offset - 3.72857141f) <= 4e-7f, "KAT B.2 offset = mean(absmax)", "got %.9g", (double)offset);
    tu_check(fabsf(nested[0] - 1.58571434f) <= 4e-7f, "KAT B.2 nested absmax", "got %.9g", (double)nested[0]);
    tu_check(q[0] == 0 && q[1] == 35 && q[2] == 127 && q[3] == 219 && q[4] == 255, "KAT B.2 qabsmax codes",
             "got %d %d %d %d %d", q[0], q[1], q[2], q[3], q[4]);
    qlora_dq_dequantize(rec, q, nested, offset, 5, map);
    static const float want_rec[5] = {2.15400648f, 2.93447542f, 3.72857141f, 4.52266741f, 5.31428576f};
    tu_close("KAT B.2 reconstructed absmax", rec, want_rec, 5, 0.0, 5e-7);
}

static void test_dynamic_maps(void) {
    float s[256], u[256];
    qlora_dynamic_map(s, 1);
    qlora_dynamic_map(u, 0);
    // Anchors from the spec (§2.2 and Appendix A).
    tu_check(s[0] == -0.992968738f && s[127] == 0.0f && s[255] == 1.0f && s[128] == 5.50000038e-07f &&
             s[126] == -5.50000038e-07f && s[191] == 0.107031256f,
             "signed dynamic map anchors", "s[0]=%.9g s[127]=%.9g s[255]=%.9g", (double)s[0], (double)s[127], (double)s[255]);
    tu_check(u[0] == 0.0f && u[1] == 3.2500003e-07f && u[254] == 0.996484399f && u[255] == 1.0f,
             "unsigned dynamic map anchors", "u[1]=%.9g u[254]=%.9g", (double)u[1], (double)u[254]);
    int sorted = 1;
    for (int i = 0; i < 255; i++) sorted &= s[i] < s[i + 1] && u[i] < u[i + 1];
    tu_check(sorted, "dynamic maps strictly increasing", "not sorted");
}

// --- byte-for-byte comparison with the numpy reference ---
typedef struct ref_case { const char *name; int64_t n; int32_t bs; float *x; } ref_case;

static float *make_case(int kind, int64_t n) {
    float *x = (float *)malloc(sizeof(float) * (size_t)n);
    const float *t = qlora_nf4_thresholds();
    for (int64_t i = 0; i < n; i++) {
        switch (kind) {
        case 0: x[i] = (float)tu_normal(); break;                                        // normal
        case 1: x[i] = (i % 64 == 0) ? 1.0f : ((i % 3) ? t[i % 15] : -t[(i / 3) % 15]); break;   // ties
        case 2: x[i] = (i / 64) % 3 == 1 ? 0.0f : (float)tu_normal(); break;             // all-zero blocks
        case 3: x[i] = (float)(tu_normal() * 1e-30); break;                              // tiny
        case 4: x[i] = (float)(tu_normal() * 1e-39); break;                              // subnormal
        case 5: x[i] = (float)(tu_uniform() * 3.0e38); break;                            // huge
        default: x[i] = (float)(tu_normal() * pow(10.0, (double)((i / 64) % 13) - 6.0)); break;   // mixed scales
        }
    }
    return x;
}

static void test_numpy_reference(void) {
    if (!tu_have_python("numpy torch")) {
        tu_skip("nf4/dq equal the numpy reference", "/usr/bin/python3 lacks numpy or torch (apt-get install python3-numpy python3-torch)");
        return;
    }
    int quick = getenv("QLORA_TEST_QUICK") != NULL;
    ref_case cases[32];
    int nc = 0;
    static const int32_t bss[8] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
    static char names[32][32];
    tu_seed(42);
    for (int b = 0; b < 8; b++) {   // every blocksize on normal data, odd lengths included
        int64_t n = (b % 2) ? 70001 : 65536 + 63;
        if (quick) n /= 8;
        snprintf(names[nc], 32, "normal_bs%d", (int)bss[b]);
        cases[nc].name = names[nc]; cases[nc].n = n; cases[nc].bs = bss[b]; cases[nc].x = make_case(0, n); nc++;
    }
    static const int64_t small_n[4] = {1, 2, 3, 65};
    for (int i = 0; i < 4; i++) {
        snprintf(names[nc], 32, "short_%d", (int)small_n[i]);
        cases[nc].name = names[nc]; cases[nc].n = small_n[i]; cases[nc].bs = 64; cases[nc].x = make_case(0, small_n[i]); nc++;
    }
    static const char *kinds[6] = {"ties", "zero_blocks", "tiny", "subnormal", "huge", "mixed_scales"};
    for (int k = 1; k <= 6; k++) {
        int64_t n = 64 * 300 + 17;
        snprintf(names[nc], 32, "%s", kinds[k - 1]);
        cases[nc].name = names[nc]; cases[nc].n = n; cases[nc].bs = 64; cases[nc].x = make_case(k, n); nc++;
    }
    char path[600];
    snprintf(path, sizeof path, "%s/nf4ref", tu_tmpdir());
    char cmd[700];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", path);
    if (system(cmd) != 0) { tu_check(0, "nf4 reference scratch dir", "%s", path); return; }
    char f[800];
    snprintf(f, sizeof f, "%s/cases.txt", path);
    FILE *cf = fopen(f, "w");
    for (int i = 0; i < nc; i++) {
        fprintf(cf, "%s %lld %d\n", cases[i].name, (long long)cases[i].n, (int)cases[i].bs);
        snprintf(f, sizeof f, "%s/%s.x", path, cases[i].name);
        tu_write(f, cases[i].x, sizeof(float) * (size_t)cases[i].n);
    }
    fclose(cf);
    int rc = tu_python("test/ref/nf4_ref.py %s", path);
    if (!tu_check(rc == 0, "numpy reference ran", "exit status %d", rc)) return;

    float maps[512], s[256], u[256];
    snprintf(f, sizeof f, "%s/maps.bin", path);
    tu_read(f, maps, sizeof maps);
    qlora_dynamic_map(s, 1);
    qlora_dynamic_map(u, 0);
    tu_check(memcmp(maps, s, sizeof s) == 0, "signed dynamic map equals torch's construction", "maps differ");
    tu_check(memcmp(maps + 256, u, sizeof u) == 0, "unsigned dynamic map equals torch's construction", "maps differ");

    for (int i = 0; i < nc; i++) {
        ref_case *c = &cases[i];
        char name[160];
        qlora_nf4 w;
        qlora_error err = {0};
        // One row of n elements: the flattened layout is what bitsandbytes quantizes.
        qlora_status st = qlora_nf4_quantize(&w, c->x, 1, c->n, c->bs, 1, &err);
        snprintf(name, sizeof name, "%s quantizes", c->name);
        if (!tu_check(st == QLORA_OK, name, "%s", err.detail)) continue;
        int64_t nb = qlora_nf4_num_blocks(c->n, c->bs), nn = qlora_nf4_num_blocks(nb, 256);
        int64_t ncodes = (c->n + 1) / 2;
        uint8_t *rc_codes = (uint8_t *)malloc((size_t)ncodes), *rq = (uint8_t *)malloc((size_t)nb);
        float *rabs = (float *)malloc(sizeof(float) * (size_t)nb), *rnest = (float *)malloc(sizeof(float) * (size_t)nn);
        float *mine = (float *)malloc(sizeof(float) * (size_t)nb), roff = 0;
        uint8_t *mycodes = (uint8_t *)malloc((size_t)ncodes);
        snprintf(f, sizeof f, "%s/%s.codes", path, c->name);  int ok = tu_read(f, rc_codes, (size_t)ncodes);
        snprintf(f, sizeof f, "%s/%s.absmax", path, c->name); ok &= tu_read(f, rabs, sizeof(float) * (size_t)nb);
        snprintf(f, sizeof f, "%s/%s.qabsmax", path, c->name); ok &= tu_read(f, rq, (size_t)nb);
        snprintf(f, sizeof f, "%s/%s.nested", path, c->name); ok &= tu_read(f, rnest, sizeof(float) * (size_t)nn);
        snprintf(f, sizeof f, "%s/%s.offset", path, c->name); ok &= tu_read(f, &roff, sizeof(float));
        snprintf(name, sizeof name, "%s reference files", c->name);
        if (tu_check(ok, name, "could not read the reference outputs")) {
            // fp32 absmax (the plain NF4 path) from the low-level quantizer
            qlora_nf4_quantize_raw(mycodes, mine, c->x, c->n, c->bs, NULL);
            snprintf(name, sizeof name, "%s NF4 codes byte-equal (n=%lld bs=%d)", c->name, (long long)c->n, (int)c->bs);
            int64_t first = -1;
            for (int64_t k = 0; k < ncodes && first < 0; k++) if (w.codes[k] != rc_codes[k]) first = k;
            tu_check(first < 0, name, "first differing byte %lld: got %02x want %02x", (long long)first,
                     first >= 0 ? w.codes[first] : 0, first >= 0 ? rc_codes[first] : 0);
            snprintf(name, sizeof name, "%s fp32 absmax bit-equal", c->name);
            tu_check(memcmp(mine, rabs, sizeof(float) * (size_t)nb) == 0, name, "absmax differs");
            snprintf(name, sizeof name, "%s DQ codes, nested absmax and offset bit-equal", c->name);
            tu_check(memcmp(w.qabsmax, rq, (size_t)nb) == 0 && memcmp(w.nested_absmax, rnest, sizeof(float) * (size_t)nn) == 0 &&
                     bits_of(w.nested_offset) == bits_of(roff), name, "offset %.9g vs %.9g", (double)w.nested_offset, (double)roff);
        }
        free(rc_codes); free(rq); free(rabs); free(rnest); free(mine); free(mycodes);
        qlora_nf4_free(&w);
    }
    for (int i = 0; i < nc; i++) free(cases[i].x);
}

static void test_roundtrip(void) {
    int64_t rows = 256, cols = 320, n = rows * cols;
    float *x = (float *)malloc(sizeof(float) * (size_t)n), *y = (float *)malloc(sizeof(float) * (size_t)n);
    tu_seed(7);
    tu_fill_normal(x, n, 1.0);
    const float *code = qlora_nf4_codebook();
    double max_half_gap = 0;
    for (int i = 0; i < 15; i++) max_half_gap = fmax(max_half_gap, (code[i + 1] - code[i]) / 2.0);
    for (int dq = 0; dq <= 1; dq++) {
        qlora_nf4 w;
        qlora_error err = {0};
        qlora_nf4_quantize(&w, x, rows, cols, 64, dq, &err);
        qlora_nf4_dequantize(y, &w, &err);
        double se = 0, worst = 0;
        int64_t nb = qlora_nf4_num_blocks(n, 64);
        for (int64_t b = 0; b < nb; b++) {
            float amax = 0;
            for (int64_t i = b * 64; i < (b + 1) * 64; i++) amax = fmaxf(amax, fabsf(x[i]));
            float scale = qlora_nf4_block_scale(&w, b);
            for (int64_t i = b * 64; i < (b + 1) * 64; i++) {
                double e = fabs((double)x[i] - y[i]);
                se += e * e;
                // error ≤ half the widest code gap at the true scale, plus the scale's own DQ error
                double bound = max_half_gap * amax + fabs((double)scale - amax) + 1e-6 * amax;
                if (e > bound) worst = fmax(worst, e - bound);
            }
        }
        double rmse = sqrt(se / (double)n);
        char name[128];
        snprintf(name, sizeof name, "round-trip error within the half-gap bound (dq=%d)", dq);
        tu_check(worst == 0, name, "exceeds the bound by %.3g", worst);
        // NF4 on N(0,1) at blocksize 64: RMSE ≈ 0.1 of σ; DQ adds very little.
        snprintf(name, sizeof name, "round-trip RMSE on N(0,1) below 0.11 (dq=%d, got %.4f)", dq, rmse);
        tu_check(rmse < 0.11, name, "rmse %.4f", rmse);
        qlora_nf4_free(&w);
    }
    // DQ reconstruction of absmax: error ≤ nested_absmax · (largest half-gap of the signed map)
    {
        qlora_nf4 w;
        float map[256], *absmax;
        qlora_nf4_quantize(&w, x, rows, cols, 64, 1, NULL);
        int64_t nb = qlora_nf4_num_blocks(n, 64);
        absmax = (float *)malloc(sizeof(float) * (size_t)nb);
        qlora_nf4_quantize_raw((uint8_t *)y, absmax, x, n, 64, NULL);
        qlora_dynamic_map(map, 1);
        double gap = 0, worst = 0;
        for (int i = 0; i < 255; i++) gap = fmax(gap, (map[i + 1] - map[i]) / 2.0);
        for (int64_t b = 0; b < nb; b++) {
            double e = fabs((double)qlora_nf4_block_scale(&w, b) - absmax[b]);
            double bound = gap * w.nested_absmax[b / 256] * 1.0001 + 1e-6;
            if (e > bound) worst = fmax(worst, e - bound);
        }
        tu_check(worst == 0, "DQ absmax reconstruction within the map's half-gap", "exceeds by %.3g", worst);
        free(absmax);
        qlora_nf4_free(&w);
    }
    // All-zero tensor: every code 7, every byte 0x77, dequantizes to 0.
    {
        float z[130] = {0};
        qlora_nf4 w;
        qlora_nf4_quantize(&w, z, 1, 129, 64, 1, NULL);
        int ok = 1;
        for (int i = 0; i < 65; i++) ok &= w.codes[i] == 0x77;
        qlora_nf4_dequantize(y, &w, NULL);
        for (int i = 0; i < 129; i++) ok &= y[i] == 0.0f;
        tu_check(ok, "all-zero blocks take code 7 and dequantize to 0", "codes or values differ");
        qlora_nf4_free(&w);
    }
    free(x);
    free(y);
}

static void test_bits(void) {
    tu_check(qlora_nf4_bits_per_param(64, 0) == 4.5, "bits/param 4.5 without DQ", "got %.9g", qlora_nf4_bits_per_param(64, 0));
    tu_check(qlora_nf4_bits_per_param(64, 1) == 4.126953125, "bits/param 4.126953125 with DQ", "got %.9g",
             qlora_nf4_bits_per_param(64, 1));
    qlora_nf4 w;
    float x[4096];
    for (int i = 0; i < 4096; i++) x[i] = (float)i;
    qlora_nf4_quantize(&w, x, 64, 64, 64, 1, NULL);
    tu_check(qlora_nf4_bytes(&w) == 2048 + 64 + 4, "nf4 byte count with DQ", "got %zu", qlora_nf4_bytes(&w));
    qlora_nf4_free(&w);
}

static void test_bad_input(void) {
    qlora_nf4 w;
    qlora_error err;
    float x[64] = {0}, out[64];
    uint8_t codes[32];
    float absmax[2];
#define EXPECT(call, want, label)                                                                          \
    do {                                                                                                   \
        memset(&err, 0, sizeof err);                                                                       \
        qlora_status st_ = (call);                                                                         \
        tu_check(st_ == (want) && err.detail[0] != 0, label, "status %s, detail '%s'", qlora_status_string(st_), \
                 err.detail);                                                                              \
    } while (0)
    EXPECT(qlora_nf4_quantize(&w, NULL, 8, 8, 64, 0, &err), QLORA_ERR_ARG, "bad input: NULL data");
    EXPECT(qlora_nf4_quantize(NULL, x, 8, 8, 64, 0, &err), QLORA_ERR_ARG, "bad input: NULL weight");
    EXPECT(qlora_nf4_quantize(&w, x, 8, 8, 48, 0, &err), QLORA_ERR_ARG, "bad input: blocksize 48");
    EXPECT(qlora_nf4_quantize(&w, x, 8, 8, 16, 0, &err), QLORA_ERR_ARG, "bad input: blocksize 16");
    EXPECT(qlora_nf4_quantize(&w, x, 8, 8, 8192, 0, &err), QLORA_ERR_ARG, "bad input: blocksize 8192");
    EXPECT(qlora_nf4_quantize(&w, x, INT64_MAX / 2, 4, 64, 0, &err), QLORA_ERR_SHAPE, "bad input: size overflow");
    EXPECT(qlora_nf4_quantize(&w, x, -1, 4, 64, 0, &err), QLORA_ERR_SHAPE, "bad input: negative rows");
    x[5] = NAN;
    EXPECT(qlora_nf4_quantize(&w, x, 8, 8, 64, 1, &err), QLORA_ERR_NONFINITE, "bad input: NaN rejected");
    tu_check(strstr(err.detail, "element 5") != NULL && w.codes == NULL, "NaN detail names the element, nothing kept",
             "detail '%s'", err.detail);
    x[5] = INFINITY;
    EXPECT(qlora_nf4_quantize_raw(codes, absmax, x, 64, 64, &err), QLORA_ERR_NONFINITE, "bad input: Inf rejected");
    x[5] = 0;
    EXPECT(qlora_nf4_quantize_raw(codes, absmax, x, -3, 64, &err), QLORA_ERR_ARG, "bad input: negative length");
    EXPECT(qlora_nf4_dequantize(out, NULL, &err), QLORA_ERR_ARG, "bad input: dequantize NULL weight");
    EXPECT(qlora_nf4_dequantize_raw(out, codes, absmax, 64, 100, &err), QLORA_ERR_ARG, "bad input: dequantize blocksize 100");
    float nan_absmax[3] = {1.0f, NAN, 2.0f}, map[256], nested[1], off;
    uint8_t q[3];
    qlora_dynamic_map(map, 1);
    EXPECT(qlora_dq_quantize(q, nested, &off, nan_absmax, 3, map, &err), QLORA_ERR_NONFINITE, "bad input: DQ NaN absmax");
    EXPECT(qlora_dq_quantize(q, nested, &off, nan_absmax, 0, map, &err), QLORA_ERR_ARG, "bad input: DQ zero blocks");
#undef EXPECT
}

int main(void) {
    test_codebook();
    test_kat_b1();
    test_kat_b2();
    test_dynamic_maps();
    test_numpy_reference();
    test_roundtrip();
    test_bits();
    test_bad_input();
    return tu_finish();
}
