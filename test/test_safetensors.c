// test_safetensors.c - safetensors reader/writer, sharded model directories, F16/BF16 conversions.
#include <stdlib.h>
#include <stddef.h>

// Track the largest single allocation so bad headers can be shown not to cause huge ones.
static size_t st_max_alloc;
static void *st_test_malloc(size_t n) {
    if (n > st_max_alloc) st_max_alloc = n;
    return malloc(n);
}
#define QLORA_MALLOC(sz) st_test_malloc(sz)
#define QLORA_FREE(p)    free(p)

#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#define HAVE_GETPID 1
#endif

static int file_exists(const char *p) {
    FILE *f = fopen(p, "rb");
    if (f) fclose(f);
    return f != NULL;
}

// Writes u64 header length + header text (+ pad) + n data bytes (value i & 255).
static void write_st_raw(const char *path, uint64_t hlen_field, const char *header, size_t hlen, size_t ndata) {
    FILE *f = fopen(path, "wb");
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hlen_field >> (8 * i));
    fwrite(len8, 1, 8, f);
    fwrite(header, 1, hlen, f);
    for (size_t i = 0; i < ndata; i++) fputc((int)(i & 255), f);
    fclose(f);
}

static void write_st(const char *path, const char *header, size_t ndata) {
    write_st_raw(path, strlen(header), header, strlen(header), ndata);
}

// Opens path expecting failure `want`; the detail must name the file and contain `has` (and `has2`).
static void expect_bad(const char *name, const char *path, qlora_status want, const char *has, const char *has2) {
    qlora_safetensors st;
    qlora_error e;
    e.detail[0] = 0;
    st_max_alloc = 0;
    qlora_status s = qlora_safetensors_open(&st, path, &e);
    size_t peak = st_max_alloc;
    if (s == QLORA_OK) qlora_safetensors_close(&st);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    int ok = s == want && strstr(e.detail, base) && (!has || strstr(e.detail, has)) && (!has2 || strstr(e.detail, has2)) &&
             peak < ((size_t)4 << 20) && st.tensors == NULL && st.base == NULL;
    tu_check(ok, name, "status %d (want %d), peak alloc %lu, detail '%s' (want '%s' '%s')", s, want, (unsigned long)peak,
             e.detail, has ? has : "", has2 ? has2 : "");
}

// ---------------------------------------------------------------------------------------------

static void test_dtype_table(void) {
    int ok = 1;
    for (int i = 0; i < QLORA_DTYPE_COUNT; i++) {
        qlora_dtype d;
        const char *n = qlora_dtype_name((qlora_dtype)i);
        if (!qlora_dtype_from_name(n, strlen(n), &d) || d != (qlora_dtype)i || qlora_dtype_bits(d) <= 0) ok = 0;
    }
    qlora_dtype d;
    ok = ok && !qlora_dtype_from_name("F3", 2, &d) && !qlora_dtype_from_name("F32", 2, &d) && qlora_dtype_from_name("BF16", 4, &d) && d == QLORA_DTYPE_BF16 &&
         qlora_dtype_bits(QLORA_DTYPE_BF16) == 16 && qlora_dtype_bits(QLORA_DTYPE_F4) == 4 &&
         qlora_dtype_bits(QLORA_DTYPE_C64) == 64;
    tu_check(ok, "dtype_names_roundtrip", NULL);
}

static uint8_t *rand_bytes(size_t n, unsigned seed) {
    uint8_t *p = (uint8_t *)malloc(n ? n : 1);
    tu_seed(seed);
    for (size_t i = 0; i < n; i++) p[i] = (uint8_t)((tu_uniform() + 1.0) * 127.9);
    return p;
}

static int64_t entry_bytes(const qlora_st_entry *e) {
    int64_t n = 1;
    for (int d = 0; d < e->ndim; d++) n *= e->shape[d];
    return n * qlora_dtype_bits(e->dtype) / 8;
}

static void test_roundtrip(void) {
    // One tensor of every dtype (packed ones sized to whole bytes), a scalar, a zero-size and an 8-dim tensor.
    enum { NE = QLORA_DTYPE_COUNT + 3 };
    qlora_st_entry e[NE];
    char names[NE][32];
    memset(e, 0, sizeof e);
    for (int i = 0; i < NE; i++) {
        e[i].ndim = 2;
        e[i].shape[0] = 3;
        e[i].shape[1] = 4;
        if (i < QLORA_DTYPE_COUNT) {
            e[i].dtype = (qlora_dtype)i;
            sprintf(names[i], "t.%s", qlora_dtype_name((qlora_dtype)i));
        } else if (i == QLORA_DTYPE_COUNT) {
            e[i].dtype = QLORA_DTYPE_F32;
            e[i].ndim = 0;
            strcpy(names[i], "scalar");
        } else if (i == QLORA_DTYPE_COUNT + 1) {
            e[i].dtype = QLORA_DTYPE_F16;
            e[i].shape[0] = 0;
            strcpy(names[i], "empty");
        } else {
            e[i].dtype = QLORA_DTYPE_BF16;
            e[i].ndim = 8;
            for (int d = 0; d < 8; d++) e[i].shape[d] = 1 + (d % 3 == 1);
            strcpy(names[i], "eight.dims");
        }
        e[i].name = names[i];
    }
    // Reverse the order of the first few so "order as given" differs from name order.
    qlora_st_entry tmp = e[0]; e[0] = e[5]; e[5] = tmp;
    uint8_t *data[NE];
    for (int i = 0; i < NE; i++) {
        data[i] = rand_bytes((size_t)entry_bytes(&e[i]), 100u + (unsigned)i);
        e[i].data = entry_bytes(&e[i]) ? data[i] : NULL;
    }
    const char *path = tu_path("roundtrip.safetensors");
    const char *meta[] = {"format", "pt", "note", "caf\xc3\xa9 \"quoted\"\n", NULL};
    qlora_error err;
    qlora_status s = qlora_safetensors_write(path, e, NE, meta, &err);
    if (!tu_check(s == QLORA_OK, "st_write_all_dtypes", "%s", err.detail)) return;
    qlora_safetensors st;
    s = qlora_safetensors_open(&st, path, &err);
    if (!tu_check(s == QLORA_OK, "st_open_all_dtypes", "%s", err.detail)) return;
    int ok = st.n_tensors == NE && st.header_size % 8 == 0;
    int64_t off = 0;
    for (int i = 0; ok && i < NE; i++) {
        const qlora_st_tensor *t = &st.tensors[i];  // file order == given order
        int64_t nb = entry_bytes(&e[i]), numel = 1;
        for (int d = 0; d < e[i].ndim; d++) numel *= e[i].shape[d];
        ok = strcmp(t->name, e[i].name) == 0 && t->dtype == e[i].dtype && t->ndim == e[i].ndim && t->nbytes == nb &&
             t->numel == numel && t->offset == off && qlora_safetensors_find(&st, e[i].name) == t &&
             (nb == 0 || memcmp(t->data, data[i], (size_t)nb) == 0);
        for (int d = 0; ok && d < e[i].ndim; d++) ok = t->shape[d] == e[i].shape[d];
        if (!ok) tu_check(0, "st_roundtrip_tensors", "tensor #%d '%s' differs", i, e[i].name);
        off += nb;
    }
    if (ok) tu_check(1, "st_roundtrip_tensors", NULL);
    tu_check(st.n_meta == 2 && strcmp(qlora_safetensors_meta(&st, "note"), meta[3]) == 0 &&
                 strcmp(qlora_safetensors_meta(&st, "format"), "pt") == 0 && qlora_safetensors_meta(&st, "x") == NULL,
             "st_roundtrip_metadata", NULL);
    tu_check(qlora_safetensors_find(&st, "nope") == NULL && qlora_safetensors_find(&st, "") == NULL &&
                 qlora_safetensors_find(NULL, "x") == NULL,
             "st_find_missing", NULL);
    tu_check(st.tensors[NE - 3].ndim == 0 && st.tensors[NE - 3].numel == 1 && st.tensors[NE - 2].numel == 0 &&
                 st.tensors[NE - 2].nbytes == 0,
             "st_scalar_and_zero_size", NULL);
    qlora_safetensors_close(&st);
    qlora_safetensors_close(&st);  // idempotent

    // Same bytes through the in-memory reader (borrowed and copied).
    void *img;
    size_t n;
    qlora_read_file(path, &img, &n, NULL);
    s = qlora_safetensors_open_memory(&st, img, n, 0, "img", &err);
    ok = s == QLORA_OK && st.n_tensors == NE && st.tensors[1].data >= (const uint8_t *)img;
    qlora_safetensors_close(&st);
    s = qlora_safetensors_open_memory(&st, img, n, 1, NULL, &err);
    ok = ok && s == QLORA_OK && st.n_tensors == NE && (st.tensors[1].data < (const uint8_t *)img ||
                                                       st.tensors[1].data >= (const uint8_t *)img + n);
    qlora_safetensors_close(&st);
    QLORA_FREE(img);
    tu_check(ok, "st_open_memory", "%s", err.detail);

    // Default metadata and no metadata.
    s = qlora_safetensors_write(path, e, 3, NULL, &err);
    ok = s == QLORA_OK && qlora_safetensors_open(&st, path, &err) == QLORA_OK && st.n_meta == 1 &&
         strcmp(qlora_safetensors_meta(&st, "format"), "pt") == 0;
    qlora_safetensors_close(&st);
    tu_check(ok, "st_default_metadata_format_pt", "%s", err.detail);
    const char *nometa[] = {NULL};
    s = qlora_safetensors_write(path, e, 2, nometa, &err);
    ok = s == QLORA_OK && qlora_safetensors_open(&st, path, &err) == QLORA_OK && st.n_meta == 0 && st.n_tensors == 2;
    qlora_safetensors_close(&st);
    tu_check(ok, "st_empty_metadata", "%s", err.detail);
    s = qlora_safetensors_write(path, e, 0, NULL, &err);
    ok = s == QLORA_OK && qlora_safetensors_open(&st, path, &err) == QLORA_OK && st.n_tensors == 0 && st.data_size == 0;
    qlora_safetensors_close(&st);
    tu_check(ok, "st_no_tensors", "%s", err.detail);

    // An independent (numpy) reader checks the layout and bytes of a file we wrote.
    if (!tu_have_python("numpy")) {
        tu_skip("st_python_reads_c_file", "/usr/bin/python3 with numpy not available");
    } else {
        int known = 0;  // Python decodes only numpy dtypes; it still checks raw bytes of all
        const char *mpath = tu_path("c_manifest.json"), *xpath = tu_path("c_expect.bin");
        qlora_json_writer w;
        qlora_jw_init(&w, -1, 0);
        qlora_jw_array_begin(&w);
        FILE *xf = fopen(xpath, "wb");
        int64_t xo = 0;
        for (int i = 0; i < NE; i++) {
            int64_t nb = entry_bytes(&e[i]);
            qlora_jw_object_begin(&w);
            qlora_jw_key(&w, "name"); qlora_jw_string(&w, e[i].name);
            qlora_jw_key(&w, "dtype"); qlora_jw_string(&w, qlora_dtype_name(e[i].dtype));
            qlora_jw_key(&w, "shape"); qlora_jw_array_begin(&w);
            for (int d = 0; d < e[i].ndim; d++) qlora_jw_int(&w, e[i].shape[d]);
            qlora_jw_array_end(&w);
            qlora_jw_key(&w, "offset"); qlora_jw_int(&w, xo);
            qlora_jw_key(&w, "nbytes"); qlora_jw_int(&w, nb);
            qlora_jw_object_end(&w);
            fwrite(data[i], 1, (size_t)nb, xf);
            xo += nb;
            known++;
        }
        fclose(xf);
        qlora_jw_array_end(&w);
        qlora_jw_finish(&w, 1, NULL);
        tu_write(mpath, w.buf, w.len);
        qlora_jw_free(&w);
        s = qlora_safetensors_write(path, e, NE, NULL, &err);
        int rc = tu_python("test/ref/safetensors_ref.py read %s %s %s > %s 2>&1", path, mpath, xpath, tu_path("py_read.log"));
        tu_check(s == QLORA_OK && rc == 0 && known == NE, "st_python_reads_c_file", "rc %d (see %s)", rc, tu_path("py_read.log"));
    }
    for (int i = 0; i < NE; i++) free(data[i]);
}

static void test_python_file(void) {
    if (!tu_have_python("numpy")) {
        tu_skip("st_reads_python_file", "/usr/bin/python3 with numpy not available");
        return;
    }
    const char *path = tu_path("py.safetensors"), *mpath = tu_path("py_manifest.json"), *xpath = tu_path("py_expect.bin");
    if (tu_python("test/ref/safetensors_ref.py write %s %s %s", path, mpath, xpath) != 0) {
        tu_check(0, "st_reads_python_file", "reference script failed");
        return;
    }
    qlora_json_doc man;
    qlora_error err;
    void *blob;
    size_t bn;
    qlora_safetensors st;
    if (qlora_json_read_file(&man, mpath, &err) != QLORA_OK || qlora_read_file(xpath, &blob, &bn, &err) != QLORA_OK ||
        qlora_safetensors_open(&st, path, &err) != QLORA_OK) {
        tu_check(0, "st_reads_python_file", "%s", err.detail);
        return;
    }
    int ok = st.n_tensors == man.root.count, conv_ok = 1;
    const uint8_t *b = (const uint8_t *)blob;
    char why[200] = "";
    for (int64_t i = 0; ok && i < man.root.count; i++) {
        const qlora_json *m = qlora_json_at(&man.root, i);
        const char *name = qlora_json_get_string(m, "name", "");
        const qlora_st_tensor *t = qlora_safetensors_find(&st, name);
        const qlora_json *shape = qlora_json_get(m, "shape");
        int64_t off = qlora_json_get_int(m, "offset", -1), nb = qlora_json_get_int(m, "nbytes", -1);
        ok = t && strcmp(qlora_dtype_name(t->dtype), qlora_json_get_string(m, "dtype", "")) == 0 && shape &&
             t->ndim == shape->count && t->nbytes == nb && memcmp(t->data, b + off, (size_t)nb) == 0 && t == &st.tensors[i];
        for (int d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == qlora_json_at(shape, d)->integer;
        if (!ok) { snprintf(why, sizeof why, "tensor '%s'", name); break; }
        int64_t fo = qlora_json_get_int(m, "f32_offset", -1);
        if (fo >= 0) {
            float *got = (float *)malloc((size_t)(t->numel ? t->numel : 1) * 4), *want = (float *)malloc((size_t)(t->numel ? t->numel : 1) * 4);
            memcpy(want, b + fo, (size_t)t->numel * 4);
            if (qlora_tensor_to_f32(got, t, &err) != QLORA_OK || (t->numel && memcmp(got, want, (size_t)t->numel * 4) != 0)) {
                conv_ok = 0;
                snprintf(why, sizeof why, "f32 of '%s'", name);
            }
            free(got);
            free(want);
        }
    }
    tu_check(ok, "st_reads_python_file", "%s", why);
    tu_check(conv_ok, "st_python_file_to_f32", "%s", why);
    tu_check(st.n_meta == 2 && strcmp(qlora_safetensors_meta(&st, "note"), "written by numpy \xc3\xa9\xe4\xb8\xad") == 0,
             "st_python_file_metadata", NULL);
    qlora_error e2;
    tu_check(qlora_tensor_to_f32(NULL, qlora_safetensors_find(&st, "ids"), &e2) == QLORA_ERR_UNSUPPORTED &&
                 strstr(e2.detail, "'ids'") && strstr(e2.detail, "I64"),
             "st_to_f32_unsupported_names_tensor", "%s", e2.detail);
    qlora_safetensors_close(&st);
    qlora_json_free(&man);
    QLORA_FREE(blob);
}

static void test_conversions(void) {
    // Inputs: specials, f16/bf16 halfway cases, subnormal boundaries, random values over many scales.
    enum { N = 4096 };
    float *x = (float *)malloc(N * sizeof(float));
    int k = 0;
    static const float sp[] = {0.0f, -0.0f, 1.0f, -1.0f, 65504.0f, 65519.99f, 65520.0f, 65536.0f, 1e-8f,
                               2.9802322e-08f /* 2^-25 */, 2.9802326e-08f, 5.9604645e-08f /* 2^-24 */, 8.940697e-08f,
                               6.1035156e-05f /* 2^-14 */, 6.1035152e-05f, 6.0975552e-05f, 3.4028235e38f, 1e-40f,
                               1.17549435e-38f, 3.0e38f, 0.1f, 0.333333f};
    for (size_t i = 0; i < sizeof sp / sizeof sp[0]; i++) x[k++] = sp[i];
    uint32_t inf = 0x7F800000u, ninf = 0xFF800000u, nan = 0x7FC00000u, snan = 0x7F800001u, nnan = 0xFFC00001u;
    memcpy(&x[k++], &inf, 4); memcpy(&x[k++], &ninf, 4); memcpy(&x[k++], &nan, 4); memcpy(&x[k++], &snan, 4);
    memcpy(&x[k++], &nnan, 4);
    tu_seed(7);
    while (k < 1024) {  // f16 halfway points (exactly between two halves) over the whole range
        uint16_t h = (uint16_t)((tu_uniform() + 1.0) * 32767.0) & 0x7BFF;
        float lo = qlora_f16_to_f32_1(h), hi = qlora_f16_to_f32_1((uint16_t)(h + 1));
        x[k] = (lo + hi) * 0.5f * (k & 1 ? 1.0f : -1.0f);
        k++;
    }
    while (k < 2048) {  // bf16 halfway and near-halfway bit patterns
        uint32_t u = ((uint32_t)((tu_uniform() + 1.0) * 2147483647.0) & 0xFFFF0000u) | (k % 3 == 0 ? 0x8000u : k % 3 == 1 ? 0x7FFFu : 0x8001u);
        if ((u & 0x7F800000u) == 0x7F800000u) u &= 0xBFFFFFFFu;
        memcpy(&x[k++], &u, 4);
    }
    for (; k < N; k++) x[k] = (float)(tu_normal() * pow(2.0, (double)((k * 7) % 60 - 35)));

    uint16_t *h16 = (uint16_t *)malloc(N * 2), *hb = (uint16_t *)malloc(N * 2);
    qlora_f32_to_f16(h16, x, N);
    qlora_f32_to_bf16(hb, x, N);
    // Self-checks independent of Python: f16 -> f32 -> f16 is the identity on non-NaN halves.
    int ok = 1;
    for (uint32_t u = 0; u < 65536; u++) {
        uint16_t h = (uint16_t)u;
        float f = qlora_f16_to_f32_1(h);
        if (f == f && qlora_f16_from_f32(f) != h) ok = 0;
        if (f != f && (qlora_f16_from_f32(f) & 0x7FFF) != 0x7E00) ok = 0;
        float g = qlora_bf16_to_f32_1(h);
        if (g == g && qlora_bf16_from_f32(g) != h) ok = 0;
    }
    tu_check(ok, "f16_bf16_roundtrip_all_patterns", NULL);
    if (!tu_have_python("numpy")) {
        tu_skip("f32_to_f16_matches_numpy", "numpy not available");
    } else {
        const char *pin = tu_path("conv_in.bin"), *p16 = tu_path("conv_f16.bin"), *pbf = tu_path("conv_bf16.bin");
        const char *p16a = tu_path("conv_f16_all.bin"), *pbfa = tu_path("conv_bf16_all.bin");
        tu_write(pin, x, N * sizeof(float));
        int rc = tu_python("test/ref/safetensors_ref.py convert %s %s %s %s %s", pin, p16, pbf, p16a, pbfa);
        uint16_t *w16 = (uint16_t *)malloc(N * 2), *wbf = (uint16_t *)malloc(N * 2);
        uint32_t *a16 = (uint32_t *)malloc(65536 * 4), *abf = (uint32_t *)malloc(65536 * 4);
        if (rc != 0 || !tu_read(p16, w16, N * 2) || !tu_read(pbf, wbf, N * 2) || !tu_read(p16a, a16, 65536 * 4) ||
            !tu_read(pbfa, abf, 65536 * 4)) {
            tu_check(0, "f32_to_f16_matches_numpy", "reference script failed (rc %d)", rc);
        } else {
            int bad16 = 0, badbf = 0, first16 = -1, firstbf = -1;
            for (int i = 0; i < N; i++) {
                int isnan = x[i] != x[i];
                // NaN: both must be NaN (payloads differ between libraries); else bit-exact.
                int e16 = isnan ? ((h16[i] & 0x7C00) == 0x7C00 && (h16[i] & 0x3FF) && (w16[i] & 0x7C00) == 0x7C00 && (w16[i] & 0x3FF))
                                : h16[i] == w16[i];
                if (!e16) { bad16++; if (first16 < 0) first16 = i; }
                if (hb[i] != wbf[i]) { badbf++; if (firstbf < 0) firstbf = i; }
            }
            tu_check(bad16 == 0, "f32_to_f16_matches_numpy", "%d of %d differ; first x=%.9g got 0x%04x want 0x%04x", bad16, N,
                     first16 >= 0 ? (double)x[first16] : 0.0, first16 >= 0 ? h16[first16] : 0, first16 >= 0 ? w16[first16] : 0);
            tu_check(badbf == 0, "f32_to_bf16_matches_reference", "%d of %d differ; first x=%.9g got 0x%04x want 0x%04x", badbf, N,
                     firstbf >= 0 ? (double)x[firstbf] : 0.0, firstbf >= 0 ? hb[firstbf] : 0, firstbf >= 0 ? wbf[firstbf] : 0);
            int bada = 0, badb = 0;
            for (uint32_t u = 0; u < 65536; u++) {
                float f = qlora_f16_to_f32_1((uint16_t)u), g = qlora_bf16_to_f32_1((uint16_t)u);
                uint32_t fb, gb;
                memcpy(&fb, &f, 4);
                memcpy(&gb, &g, 4);
                if (fb != a16[u]) bada++;
                if (gb != abf[u]) badb++;
            }
            tu_check(bada == 0, "f16_to_f32_all_patterns_match_numpy", "%d differ", bada);
            tu_check(badb == 0, "bf16_to_f32_all_patterns_match_numpy", "%d differ", badb);
        }
        free(w16); free(wbf); free(a16); free(abf);
    }
    // Vector forms agree with the scalar ones; F64 -> F32 rounds like a cast.
    float back[8];
    double d64[8] = {0.1, -1e-50, 1e300, 3.0000001, -0.0, 65504.0, 1.0 / 3.0, 1e-40};
    qlora_convert_to_f32(back, d64, QLORA_DTYPE_F64, 8, NULL);
    ok = 1;
    for (int i = 0; i < 8; i++) if (back[i] != (float)d64[i]) ok = 0;
    tu_check(ok, "f64_to_f32_rounds_like_cast", NULL);
    free(x); free(h16); free(hb);
}

static void test_bad_input(void) {
    const char *p = tu_path("bad.safetensors");
    expect_bad("bad_missing_file", tu_path("does_not_exist.safetensors"), QLORA_ERR_IO, "cannot open", NULL);

    // Every truncation of a small valid file fails cleanly.
    {
        qlora_st_entry e[3];
        memset(e, 0, sizeof e);
        float a[6] = {1, 2, 3, 4, 5, 6};
        uint16_t b[3] = {1, 2, 3};
        uint8_t c[5] = {9, 8, 7, 6, 5};
        e[0].name = "a"; e[0].dtype = QLORA_DTYPE_F32; e[0].ndim = 2; e[0].shape[0] = 2; e[0].shape[1] = 3; e[0].data = a;
        e[1].name = "bb"; e[1].dtype = QLORA_DTYPE_F16; e[1].ndim = 1; e[1].shape[0] = 3; e[1].data = b;
        e[2].name = "c"; e[2].dtype = QLORA_DTYPE_U8; e[2].ndim = 1; e[2].shape[0] = 5; e[2].data = c;
        const char *full = tu_path("trunc_full.safetensors"), *tp = tu_path("trunc.safetensors");
        qlora_safetensors_write(full, e, 3, NULL, NULL);
        void *img;
        size_t n;
        qlora_read_file(full, &img, &n, NULL);
        int bad = 0, okfull;
        size_t peak = 0;
        char first[300] = "";
        for (size_t len = 0; len < n; len++) {
            tu_write(tp, img, len);
            qlora_safetensors st;
            qlora_error err;
            err.detail[0] = 0;
            st_max_alloc = 0;
            qlora_status s = qlora_safetensors_open(&st, tp, &err);
            if (st_max_alloc > peak) peak = st_max_alloc;
            if (s == QLORA_OK) qlora_safetensors_close(&st);
            if (s != QLORA_ERR_FORMAT || !strstr(err.detail, "trunc.safetensors")) {
                if (!bad) snprintf(first, sizeof first, "len %lu: status %d '%s'", (unsigned long)len, s, err.detail);
                bad++;
            }
        }
        qlora_safetensors st;
        okfull = qlora_safetensors_open(&st, full, NULL) == QLORA_OK;
        qlora_safetensors_close(&st);
        tu_check(okfull && bad == 0 && peak < ((size_t)1 << 20), "bad_every_truncation",
                 "%d of %lu lengths not rejected; peak alloc %lu; %s", bad, (unsigned long)n, (unsigned long)peak, first);
        // The same through the in-memory reader: borrowed buffers of every length (ASan catches over-reads).
        bad = 0;
        for (size_t len = 0; len < n; len++) {
            uint8_t *copy = (uint8_t *)malloc(len ? len : 1);
            memcpy(copy, img, len);
            qlora_safetensors m;
            if (qlora_safetensors_open_memory(&m, copy, len, 0, "mem", NULL) != QLORA_ERR_FORMAT) bad++;
            free(copy);
        }
        tu_check(bad == 0, "bad_every_truncation_memory", "%d lengths not rejected", bad);
        QLORA_FREE(img);
    }

    const char *h;
    write_st_raw(p, 1000, "{}", 2, 50);
    expect_bad("bad_header_longer_than_file", p, QLORA_ERR_FORMAT, "exceeds the file size", NULL);
    write_st_raw(p, 100000001ull, "{}", 2, 50);
    expect_bad("bad_header_over_100MB", p, QLORA_ERR_FORMAT, "exceeds the limit", NULL);
    write_st_raw(p, 0xFFFFFFFFFFFFFFFFull, "{}", 2, 0);
    expect_bad("bad_header_length_u64_max", p, QLORA_ERR_FORMAT, "exceeds the limit", NULL);
    write_st_raw(p, 0, "", 0, 0);
    expect_bad("bad_header_length_zero", p, QLORA_ERR_FORMAT, "start with '{'", NULL);
    tu_write(p, "\x02\0\0", 3);
    expect_bad("bad_too_small", p, QLORA_ERR_FORMAT, "too small", NULL);

    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 2);
    expect_bad("bad_offsets_past_end", p, QLORA_ERR_FORMAT, "'a'", "past the end");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", 6);
    expect_bad("bad_overlapping_offsets", p, QLORA_ERR_FORMAT, "'b'", "overlap");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[4,6]}}", 6);
    expect_bad("bad_hole", p, QLORA_ERR_FORMAT, "'b'", "hole");
    write_st(p, "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]}}", 4);
    expect_bad("bad_hole_at_start", p, QLORA_ERR_FORMAT, "'b'", "hole");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 4);
    expect_bad("bad_trailing_bytes", p, QLORA_ERR_FORMAT, "trailing bytes", NULL);
    write_st(p, "{}", 1);
    expect_bad("bad_no_tensors_but_data", p, QLORA_ERR_FORMAT, "no tensors", NULL);
    write_st(p, "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    expect_bad("bad_dtype_size_mismatch", p, QLORA_ERR_FORMAT, "'w'", "F32 with 2 elements");
    write_st(p, "{\"w\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1);
    expect_bad("bad_subbyte_not_whole_bytes", p, QLORA_ERR_FORMAT, "'w'", "12 bits");
    write_st(p, "{\"w\":{\"dtype\":\"F128\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    expect_bad("bad_unknown_dtype", p, QLORA_ERR_FORMAT, "'w'", "unknown dtype 'F128'");
    write_st(p, "{\"w\":{\"dtype\":5,\"shape\":[2],\"data_offsets\":[0,4]}}", 4);
    expect_bad("bad_dtype_not_string", p, QLORA_ERR_FORMAT, "'w'", "unknown dtype");
    write_st(p, "[{\"w\":1}]", 0);
    expect_bad("bad_header_array", p, QLORA_ERR_FORMAT, "start with '{'", NULL);
    write_st(p, " {}", 0);
    expect_bad("bad_header_leading_space", p, QLORA_ERR_FORMAT, "start with '{'", NULL);
    write_st(p, "{\"w\":1}", 0);
    expect_bad("bad_entry_not_object", p, QLORA_ERR_FORMAT, "'w'", "not an object");
    write_st(p, "{\"w\":{\"dtype\":\"U8\",\n\"shape\":[2]", 0);
    expect_bad("bad_json", p, QLORA_ERR_FORMAT, "header JSON: line 1 col 6", "unterminated object");
    write_st(p, "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}} x", 1);
    expect_bad("bad_json_trailing_garbage", p, QLORA_ERR_FORMAT, "header JSON", "after the JSON value");
    write_st(p, "{\"w\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1);
    expect_bad("bad_json_invalid_utf8", p, QLORA_ERR_FORMAT, "header JSON", "UTF-8");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2);
    expect_bad("bad_duplicate_tensor_names", p, QLORA_ERR_FORMAT, "'a'", "duplicate");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0);
    expect_bad("bad_negative_shape", p, QLORA_ERR_FORMAT, "'a'", "shape[0]");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1.0],\"data_offsets\":[0,1]}}", 1);
    expect_bad("bad_fractional_shape", p, QLORA_ERR_FORMAT, "'a'", "shape[0]");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[\"2\"],\"data_offsets\":[0,2]}}", 2);
    expect_bad("bad_string_shape", p, QLORA_ERR_FORMAT, "'a'", "shape[0]");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":2,\"data_offsets\":[0,2]}}", 2);
    expect_bad("bad_shape_not_array", p, QLORA_ERR_FORMAT, "'a'", "shape");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}", 1);
    expect_bad("bad_too_many_dims", p, QLORA_ERR_FORMAT, "'a'", "at most 8");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,1]}}", 1);
    expect_bad("bad_shape_overflow", p, QLORA_ERR_FORMAT, "'a'", "overflow");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[99999999999999999999],\"data_offsets\":[0,1]}}", 1);
    expect_bad("bad_shape_beyond_int64", p, QLORA_ERR_FORMAT, "'a'", "shape[0]");
    write_st(p, "{\"a\":{\"dtype\":\"F64\",\"shape\":[1152921504606846976,2],\"data_offsets\":[0,1]}}", 1);
    expect_bad("bad_bits_overflow", p, QLORA_ERR_FORMAT, "'a'", "overflow");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[576460752303423488],\"data_offsets\":[0,576460752303423488]}}", 1);
    expect_bad("bad_huge_tensor_small_file", p, QLORA_ERR_FORMAT, "'a'", "past the end");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,0]}}", 2);
    expect_bad("bad_offsets_reversed", p, QLORA_ERR_FORMAT, "'a'", "begin > end");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}}", 2);
    expect_bad("bad_offsets_one_value", p, QLORA_ERR_FORMAT, "'a'", "data_offsets");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[-1,1]}}", 2);
    expect_bad("bad_offsets_negative", p, QLORA_ERR_FORMAT, "'a'", "data_offsets");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2e0]}}", 2);
    expect_bad("bad_offsets_not_integer_literal", p, QLORA_ERR_FORMAT, "'a'", "data_offsets");
    write_st(p, "{\"a\":{\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    expect_bad("bad_missing_dtype", p, QLORA_ERR_FORMAT, "'a'", "missing 'dtype'");
    write_st(p, "{\"a\":{\"dtype\":\"U8\",\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    expect_bad("bad_duplicate_field", p, QLORA_ERR_FORMAT, "'a'", "duplicate field");
    write_st(p, "{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    expect_bad("bad_nul_in_name", p, QLORA_ERR_FORMAT, "NUL", NULL);
    write_st(p, "{\"__metadata__\":{\"format\":1},\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    expect_bad("bad_metadata_non_string", p, QLORA_ERR_FORMAT, "__metadata__", "'format'");
    write_st(p, "{\"__metadata__\":[\"x\"]}", 0);
    expect_bad("bad_metadata_not_object", p, QLORA_ERR_FORMAT, "__metadata__", NULL);
    write_st(p, "{\"__metadata__\":{},\"__metadata__\":{}}", 0);
    expect_bad("bad_metadata_duplicate", p, QLORA_ERR_FORMAT, "duplicate __metadata__", NULL);
    write_st(p, "{\"__metadata__\":{\"k\":\"a\",\"k\":\"b\"}}", 0);
    expect_bad("bad_metadata_duplicate_key", p, QLORA_ERR_FORMAT, "'k'", NULL);

    // Positive controls: padding spaces (and any JSON whitespace), null metadata, unknown fields.
    qlora_safetensors st;
    qlora_error err;
    h = "{\"__metadata__\":null,\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2],\"extra\":[1]}}      \n\t ";
    write_st(p, h, 2);
    qlora_status s = qlora_safetensors_open(&st, p, &err);
    tu_check(s == QLORA_OK && st.n_tensors == 1 && st.n_meta == 0 && st.tensors[0].data[1] == 1, "ok_padding_null_meta_extra_field",
             "%s", err.detail);
    qlora_safetensors_close(&st);
    h = "{\"z\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]},\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]},"
        "\"e\":{\"dtype\":\"F32\",\"shape\":[],\"data_offsets\":[2,6]}}";
    write_st(p, h, 6);
    s = qlora_safetensors_open(&st, p, &err);
    tu_check(s == QLORA_OK && st.n_tensors == 3 && strcmp(st.tensors[0].name, "a") == 0 && strcmp(st.tensors[1].name, "z") == 0 &&
                 strcmp(st.tensors[2].name, "e") == 0,
             "ok_file_order_with_zero_size_between", "%s", err.detail);
    qlora_safetensors_close(&st);
    tu_check(qlora_safetensors_open(NULL, p, &err) == QLORA_ERR_ARG && qlora_safetensors_open(&st, NULL, &err) == QLORA_ERR_ARG,
             "bad_null_args", NULL);
#if defined(__unix__) || defined(__APPLE__)
    expect_bad("bad_directory", tu_tmpdir(), QLORA_ERR_IO, NULL, NULL);
#endif
}

static void test_atomic_write(void) {
    const char *p = tu_path("atomic.safetensors");
    char tmpname[600];
#ifdef HAVE_GETPID
    snprintf(tmpname, sizeof tmpname, "%s.tmp.%ld.0", p, (long)getpid());
#else
    snprintf(tmpname, sizeof tmpname, "%s.tmp.0", p);
#endif
    uint8_t a[4] = {1, 2, 3, 4}, b[6] = {5, 6, 7, 8, 9, 10};
    qlora_st_entry e[2];
    memset(e, 0, sizeof e);
    e[0].name = "x"; e[0].dtype = QLORA_DTYPE_U8; e[0].ndim = 1; e[0].shape[0] = 4; e[0].data = a;
    remove(p);
    qlora_error err;
    qlora_status s = qlora_safetensors_write(p, e, 1, NULL, &err);
    tu_check(s == QLORA_OK && file_exists(p) && !file_exists(tmpname), "atomic_write_no_temp_left", "%s", err.detail);
    // Overwrite the existing file.
    e[0].shape[0] = 6; e[0].data = b;
    s = qlora_safetensors_write(p, e, 1, NULL, &err);
    qlora_safetensors st;
    int ok = s == QLORA_OK && qlora_safetensors_open(&st, p, &err) == QLORA_OK && st.tensors[0].nbytes == 6 &&
             st.tensors[0].data[5] == 10 && !file_exists(tmpname);
    qlora_safetensors_close(&st);
    tu_check(ok, "atomic_write_over_existing", "%s", err.detail);
    // A rejected write leaves the old file intact and no temp file.
    e[1] = e[0];
    s = qlora_safetensors_write(p, e, 2, NULL, &err);
    ok = s == QLORA_ERR_ARG && strstr(err.detail, "'x'") && strstr(err.detail, "duplicate") && !file_exists(tmpname) &&
         qlora_safetensors_open(&st, p, NULL) == QLORA_OK && st.tensors[0].nbytes == 6;
    qlora_safetensors_close(&st);
    tu_check(ok, "write_rejects_duplicate_names", "%s", err.detail);
    e[1].name = "y"; e[1].dtype = QLORA_DTYPE_F4; e[1].shape[0] = 3;
    tu_check(qlora_safetensors_write(p, e, 2, NULL, &err) == QLORA_ERR_SHAPE && strstr(err.detail, "'y'"), "write_rejects_partial_bytes", "%s", err.detail);
    e[1].dtype = QLORA_DTYPE_U8; e[1].shape[0] = -2;
    tu_check(qlora_safetensors_write(p, e, 2, NULL, &err) == QLORA_ERR_SHAPE, "write_rejects_negative_dim", "%s", err.detail);
    e[1].shape[0] = 2; e[1].data = NULL;
    tu_check(qlora_safetensors_write(p, e, 2, NULL, &err) == QLORA_ERR_ARG && strstr(err.detail, "NULL"), "write_rejects_null_data", "%s", err.detail);
    e[1].name = "__metadata__"; e[1].data = b;
    tu_check(qlora_safetensors_write(p, e, 2, NULL, &err) == QLORA_ERR_ARG, "write_rejects_reserved_name", "%s", err.detail);
    e[1].name = "bad\xff";
    tu_check(qlora_safetensors_write(p, e, 2, NULL, &err) == QLORA_ERR_ARG, "write_rejects_non_utf8_name", "%s", err.detail);
    e[1].name = "y"; e[1].ndim = 9;
    tu_check(qlora_safetensors_write(p, e, 2, NULL, &err) == QLORA_ERR_ARG, "write_rejects_ndim_9", "%s", err.detail);
    const char *dupmeta[] = {"a", "1", "a", "2", NULL};
    e[1].ndim = 1;
    tu_check(qlora_safetensors_write(p, e, 2, dupmeta, &err) == QLORA_ERR_ARG, "write_rejects_duplicate_meta", "%s", err.detail);
    tu_check(!file_exists(tmpname), "rejected_writes_leave_no_temp", NULL);
    // Unwritable destination.
    const char *nodir = tu_path("no_such_dir/x.safetensors");
    s = qlora_safetensors_write(nodir, e, 1, NULL, &err);
    tu_check(s == QLORA_ERR_IO && strstr(err.detail, "no_such_dir/x.safetensors"), "write_missing_dir_io_error", "%s", err.detail);
    s = qlora_write_file_atomic(nodir, "x", 1, &err);
    tu_check(s == QLORA_ERR_IO && strstr(err.detail, "no_such_dir"), "write_file_atomic_missing_dir", "%s", err.detail);
    // Small-file atomic write over an existing file.
    const char *cfg = tu_path("atomic.json");
    char tmpcfg[600];
#ifdef HAVE_GETPID
    snprintf(tmpcfg, sizeof tmpcfg, "%s.tmp.%ld.0", cfg, (long)getpid());
#else
    snprintf(tmpcfg, sizeof tmpcfg, "%s.tmp.0", cfg);
#endif
    qlora_write_file_atomic(cfg, "{\"a\": 1}", 8, NULL);
    s = qlora_write_file_atomic(cfg, "{\"b\": 22}", 9, &err);
    qlora_json_doc doc;
    ok = s == QLORA_OK && qlora_json_read_file(&doc, cfg, &err) == QLORA_OK && qlora_json_get_int(&doc.root, "b", 0) == 22 &&
         qlora_json_get(&doc.root, "a") == NULL && !file_exists(tmpcfg);
    qlora_json_free(&doc);
    tu_check(ok, "write_file_atomic_replaces", "%s", err.detail);
    // A stale temp file of the same name does not block the write (O_EXCL picks the next name).
    tu_write(tmpcfg, "stale", 5);
    s = qlora_write_file_atomic(cfg, "[]", 2, &err);
    tu_check(s == QLORA_OK, "write_file_atomic_skips_stale_temp", "%s", err.detail);
    remove(tmpcfg);

    // Streaming writer: chunked appends; a short or long write is refused and the target left alone.
    qlora_st_writer w;
    e[0].shape[0] = 6; e[0].data = b;
    e[1].name = "y"; e[1].dtype = QLORA_DTYPE_U8; e[1].ndim = 1; e[1].shape[0] = 4; e[1].data = a;
    ok = qlora_st_writer_begin(&w, p, e, 2, NULL, &err) == QLORA_OK && qlora_st_writer_append(&w, b, 3, &err) == QLORA_OK &&
         qlora_st_writer_append(&w, b + 3, 3, &err) == QLORA_OK && qlora_st_writer_append(&w, a, 4, &err) == QLORA_OK &&
         qlora_st_writer_append(&w, a, 1, &err) == QLORA_ERR_ARG && qlora_st_writer_finish(&w, &err) == QLORA_OK;
    ok = ok && qlora_safetensors_open(&st, p, &err) == QLORA_OK && st.n_tensors == 2 && st.tensors[1].data[3] == 4;
    qlora_safetensors_close(&st);
    tu_check(ok, "stream_writer_chunks", "%s", err.detail);
    ok = qlora_st_writer_begin(&w, p, e, 1, NULL, &err) == QLORA_OK && qlora_st_writer_append(&w, b, 2, &err) == QLORA_OK &&
         qlora_st_writer_finish(&w, &err) == QLORA_ERR_ARG && !file_exists(tmpname) &&
         qlora_safetensors_open(&st, p, NULL) == QLORA_OK && st.n_tensors == 2;
    qlora_safetensors_close(&st);
    tu_check(ok, "stream_writer_short_refused", "%s", err.detail);
    ok = qlora_st_writer_begin(&w, p, e, 1, NULL, &err) == QLORA_OK;
    qlora_st_writer_abort(&w);
    qlora_st_writer_abort(&w);
    tu_check(ok && !file_exists(tmpname), "stream_writer_abort", NULL);
}

// Writes shards + index for the sharded tests; returns 0 on failure.
static int make_sharded(const char *dir, const char *extra_map_name, const char *extra_map_file) {
    char path[600];
    float a[4] = {1, 2, 3, 4}, c[2] = {7, 8}, d = 9;
    uint16_t b[3] = {0x3C00, 0x4000, 0x4200};
    qlora_st_entry e[2];
    memset(e, 0, sizeof e);
    e[0].name = "model.a"; e[0].dtype = QLORA_DTYPE_F32; e[0].ndim = 2; e[0].shape[0] = 2; e[0].shape[1] = 2; e[0].data = a;
    e[1].name = "model.b"; e[1].dtype = QLORA_DTYPE_F16; e[1].ndim = 1; e[1].shape[0] = 3; e[1].data = b;
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", dir);
    if (qlora_safetensors_write(path, e, 2, NULL, NULL) != QLORA_OK) return 0;
    e[0].name = "model.c"; e[0].ndim = 1; e[0].shape[0] = 2; e[0].data = c;
    e[1].name = "model.d"; e[1].dtype = QLORA_DTYPE_F32; e[1].ndim = 0; e[1].data = &d;
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", dir);
    if (qlora_safetensors_write(path, e, 2, NULL, NULL) != QLORA_OK) return 0;
    qlora_json_writer w;
    qlora_jw_init(&w, 2, 1);
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "metadata");
    qlora_jw_object_begin(&w); qlora_jw_key(&w, "total_size"); qlora_jw_int(&w, 16 + 6 + 8 + 4); qlora_jw_object_end(&w);
    qlora_jw_key(&w, "weight_map");
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "model.a"); qlora_jw_string(&w, "model-00001-of-00002.safetensors");
    qlora_jw_key(&w, "model.b"); qlora_jw_string(&w, "model-00001-of-00002.safetensors");
    qlora_jw_key(&w, "model.c"); qlora_jw_string(&w, "model-00002-of-00002.safetensors");
    qlora_jw_key(&w, "model.d"); qlora_jw_string(&w, "model-00002-of-00002.safetensors");
    if (extra_map_name) { qlora_jw_key(&w, extra_map_name); qlora_jw_string(&w, extra_map_file); }
    qlora_jw_object_end(&w);
    qlora_jw_object_end(&w);
    int ok = qlora_jw_finish(&w, 1, NULL) == QLORA_OK;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    ok = ok && qlora_write_file_atomic(path, w.buf, w.len, NULL) == QLORA_OK;
    qlora_jw_free(&w);
    return ok;
}

static void test_sharded(void) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/sharded", tu_tmpdir());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    if (system(cmd) != 0 || !make_sharded(dir, NULL, NULL)) { tu_check(0, "sharded_setup", "cannot create %s", dir); return; }
    qlora_st_model m;
    qlora_error err;
    qlora_status s = qlora_st_model_open(&m, dir, &err);
    if (!tu_check(s == QLORA_OK, "sharded_open", "%s", err.detail)) return;
    const qlora_st_tensor *ta = qlora_st_model_find(&m, "model.a"), *tb = qlora_st_model_find(&m, "model.b");
    const qlora_st_tensor *tc = qlora_st_model_find(&m, "model.c"), *td = qlora_st_model_find(&m, "model.d");
    float fa[4], fb[3], fc[2], fd[1];
    int ok = m.n_shards == 2 && m.n_tensors == 4 && ta && tb && tc && td && qlora_st_model_find(&m, "model.e") == NULL &&
             qlora_tensor_to_f32(fa, ta, NULL) == QLORA_OK && qlora_tensor_to_f32(fb, tb, NULL) == QLORA_OK &&
             qlora_tensor_to_f32(fc, tc, NULL) == QLORA_OK && qlora_tensor_to_f32(fd, td, NULL) == QLORA_OK && fa[3] == 4 &&
             fb[0] == 1 && fb[1] == 2 && fb[2] == 3 && fc[1] == 8 && fd[0] == 9 && td->ndim == 0;
    tu_check(ok, "sharded_find_across_shards", NULL);
    qlora_st_model_close(&m);
    qlora_st_model_close(&m);

    // Single-file directory.
    char single[600];
    snprintf(dir, sizeof dir, "%s/single", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    float v[3] = {1, 2, 3};
    qlora_st_entry e;
    memset(&e, 0, sizeof e);
    e.name = "w"; e.dtype = QLORA_DTYPE_F32; e.ndim = 1; e.shape[0] = 3; e.data = v;
    ok = system(cmd) == 0 && qlora_safetensors_write(single, &e, 1, NULL, NULL) == QLORA_OK &&
         qlora_st_model_open(&m, dir, &err) == QLORA_OK && m.n_shards == 1 && qlora_st_model_find(&m, "w") != NULL;
    qlora_st_model_close(&m);
    tu_check(ok, "model_dir_single_file", "%s", err.detail);

    // Failures.
    snprintf(dir, sizeof dir, "%s/sharded_bad1", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    ok = system(cmd) == 0 && make_sharded(dir, "model.e", "model-00002-of-00002.safetensors");
    s = qlora_st_model_open(&m, dir, &err);
    tu_check(ok && s == QLORA_ERR_FORMAT && strstr(err.detail, "'model.e'") && strstr(err.detail, "model-00002-of-00002") &&
                 m.shards == NULL,
             "sharded_missing_tensor_in_shard", "%s", err.detail);
    snprintf(dir, sizeof dir, "%s/sharded_bad2", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    ok = system(cmd) == 0 && make_sharded(dir, "model.e", "model-00003-of-00002.safetensors");
    s = qlora_st_model_open(&m, dir, &err);
    tu_check(ok && s == QLORA_ERR_IO && strstr(err.detail, "model-00003-of-00002.safetensors"), "sharded_missing_shard_file", "%s",
             err.detail);
    snprintf(dir, sizeof dir, "%s/sharded_bad3", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    ok = system(cmd) == 0 && make_sharded(dir, "model.e", "../single/model.safetensors");
    s = qlora_st_model_open(&m, dir, &err);
    tu_check(ok && s == QLORA_ERR_FORMAT && strstr(err.detail, "'model.e'"), "sharded_rejects_path_escape", "%s", err.detail);
    snprintf(dir, sizeof dir, "%s/sharded_bad4", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    char ipath[600];
    snprintf(ipath, sizeof ipath, "%s/model.safetensors.index.json", dir);
    ok = system(cmd) == 0 && qlora_write_file_atomic(ipath, "{\"metadata\": {}}", 16, NULL) == QLORA_OK;
    s = qlora_st_model_open(&m, dir, &err);
    tu_check(ok && s == QLORA_ERR_FORMAT && strstr(err.detail, "weight_map") && strstr(err.detail, "index.json"),
             "sharded_no_weight_map", "%s", err.detail);
    qlora_write_file_atomic(ipath, "{\"weight_map\": {\"a\": ", 21, NULL);
    s = qlora_st_model_open(&m, dir, &err);
    tu_check(s == QLORA_ERR_FORMAT && strstr(err.detail, "index.json") && strstr(err.detail, "line 1"), "sharded_bad_index_json", "%s",
             err.detail);
    // The same tensor in two shards.
    snprintf(dir, sizeof dir, "%s/sharded_bad5", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p %s", dir);
    ok = system(cmd) == 0 && make_sharded(dir, NULL, NULL);
    snprintf(single, sizeof single, "%s/model-00002-of-00002.safetensors", dir);
    e.name = "model.a";
    ok = ok && qlora_safetensors_write(single, &e, 1, NULL, NULL) == QLORA_OK;
    s = qlora_st_model_open(&m, dir, &err);  // index maps c, d to shard 2, which no longer has them
    tu_check(ok && s == QLORA_ERR_FORMAT, "sharded_index_shard_mismatch", "%s", err.detail);
    s = qlora_st_model_open(&m, tu_path("no_such_model_dir"), &err);
    tu_check(s == QLORA_ERR_IO && strstr(err.detail, "no_such_model_dir"), "model_dir_missing", "%s", err.detail);
}

int main(void) {
    test_dtype_table();
    test_roundtrip();
    test_python_file();
    test_conversions();
    test_bad_input();
    test_atomic_write();
    test_sharded();
    return tu_finish();
}
