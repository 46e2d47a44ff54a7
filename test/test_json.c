// test_json.c - JSON parser (RFC 8259) and writer (Python json.dumps layout).
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

static int parse_fails(const char *text, size_t len, qlora_status want, const char *detail_has, char *detail_out) {
    qlora_json_doc doc;
    qlora_error e;
    e.detail[0] = 0;
    qlora_status st = qlora_json_parse(&doc, text, len, &e);
    if (detail_out) strcpy(detail_out, e.detail);
    if (st == QLORA_OK) { qlora_json_free(&doc); return 0; }
    return st == want && doc.arena == NULL && (!detail_has || strstr(e.detail, detail_has) != NULL);
}

static void test_basic(void) {
    const char *t = "{\n \"s\": \"h\\u00e9llo\", \"n\": -12.5e-1, \"i\": 42, \"t\": true, \"f\": false,\n"
                    " \"z\": null, \"a\": [1, [2, []], {}], \"o\": {\"k\": \"v\"}, \"dup\": 1, \"dup\": 2 }  \n";
    qlora_json_doc doc;
    qlora_error e;
    qlora_status st = qlora_json_parse(&doc, t, strlen(t), &e);
    if (!tu_check(st == QLORA_OK, "json_parse_basic", "%s", e.detail)) return;
    const qlora_json *r = &doc.root;
    tu_check(r->type == QLORA_JSON_OBJECT && r->count == 10, "json_object_count", "type %d count %lld", r->type,
             (long long)r->count);
    tu_check(strcmp(qlora_json_get_string(r, "s", ""), "h\xc3\xa9llo") == 0, "json_string_escape_u", "got '%s'",
             qlora_json_get_string(r, "s", ""));
    tu_check(qlora_json_get_number(r, "n", 0) == -1.25, "json_number_exp", "got %g", qlora_json_get_number(r, "n", 0));
    tu_check(qlora_json_get_int(r, "i", 0) == 42 && qlora_json_get(r, "i")->is_integer, "json_integer", NULL);
    tu_check(qlora_json_get_bool(r, "t", 0) == 1 && qlora_json_get_bool(r, "f", 1) == 0, "json_bool", NULL);
    tu_check(qlora_json_get(r, "z") && qlora_json_get(r, "z")->type == QLORA_JSON_NULL, "json_null", NULL);
    const qlora_json *a = qlora_json_get(r, "a");
    tu_check(a && a->count == 3 && qlora_json_at(a, 1)->count == 2 && qlora_json_at(qlora_json_at(a, 1), 1)->count == 0 &&
                 qlora_json_at(a, 2)->type == QLORA_JSON_OBJECT && qlora_json_at(a, 3) == NULL,
             "json_nested_array", NULL);
    tu_check(strcmp(qlora_json_get_string(qlora_json_get(r, "o"), "k", ""), "v") == 0, "json_nested_object", NULL);
    tu_check(qlora_json_get_int(r, "dup", 0) == 2, "json_duplicate_key_last_wins", "got %lld",
             (long long)qlora_json_get_int(r, "dup", 0));
    tu_check(qlora_json_get(r, "missing") == NULL && qlora_json_get_int(r, "missing", 7) == 7 &&
                 strcmp(qlora_json_get_string(r, "i", "def"), "def") == 0 && qlora_json_get(a, "x") == NULL &&
                 qlora_json_get(NULL, "x") == NULL,
             "json_getter_defaults", NULL);
    qlora_json_free(&doc);
    qlora_json_free(&doc);  // second free is a no-op
}

static void test_strings(void) {
    const char *t = "[\"\\\"\\\\\\/\\b\\f\\n\\r\\t\", \"\\ud83d\\ude00\\u0000x\", \"\xe4\xb8\xad\xf0\x9f\x98\x80\", \"\"]";
    qlora_json_doc doc;
    qlora_error e;
    if (!tu_check(qlora_json_parse(&doc, t, strlen(t), &e) == QLORA_OK, "json_parse_strings", "%s", e.detail)) return;
    const qlora_json *s0 = qlora_json_at(&doc.root, 0), *s1 = qlora_json_at(&doc.root, 1);
    const qlora_json *s2 = qlora_json_at(&doc.root, 2), *s3 = qlora_json_at(&doc.root, 3);
    tu_check(s0->str_len == 8 && memcmp(s0->str, "\"\\/\b\f\n\r\t", 8) == 0, "json_simple_escapes", NULL);
    tu_check(s1->str_len == 6 && memcmp(s1->str, "\xf0\x9f\x98\x80\0x", 6) == 0 && s1->str[6] == 0,
             "json_surrogate_pair_and_nul", "len %lu", (unsigned long)s1->str_len);
    tu_check(s2->str_len == 7 && strcmp(s2->str, "\xe4\xb8\xad\xf0\x9f\x98\x80") == 0, "json_raw_utf8", NULL);
    tu_check(s3->str_len == 0 && s3->str && s3->str[0] == 0, "json_empty_string", NULL);
    qlora_json_free(&doc);
}

static void test_numbers(void) {
    const char *t = "[0, -0, 1.5e3, -2E-2, 123456789012345678, 9223372036854775807, -9223372036854775808, "
                    "9223372036854775808, 1E+2, 0.1, 2.0, 1e-400, 5e-324]";
    qlora_json_doc doc;
    qlora_error e;
    if (!tu_check(qlora_json_parse(&doc, t, strlen(t), &e) == QLORA_OK, "json_parse_numbers", "%s", e.detail)) return;
    const qlora_json *r = &doc.root;
    int64_t v;
    tu_check(qlora_json_at(r, 0)->is_integer && qlora_json_at(r, 0)->integer == 0 && qlora_json_at(r, 1)->is_integer,
             "json_zero", NULL);
    tu_check(qlora_json_at(r, 2)->number == 1500.0 && !qlora_json_at(r, 2)->is_integer &&
                 qlora_json_as_int(qlora_json_at(r, 2), &v) && v == 1500,
             "json_exponent_integral", NULL);
    tu_check(qlora_json_at(r, 3)->number == -0.02, "json_negative_exponent", NULL);
    tu_check(qlora_json_at(r, 4)->integer == 123456789012345678LL, "json_int64_exact", NULL);
    tu_check(qlora_json_at(r, 5)->is_integer && qlora_json_at(r, 5)->integer == INT64_MAX && qlora_json_at(r, 6)->is_integer &&
                 qlora_json_at(r, 6)->integer == INT64_MIN,
             "json_int64_limits", NULL);
    tu_check(!qlora_json_at(r, 7)->is_integer && qlora_json_at(r, 7)->number == 9223372036854775808.0 &&
                 !qlora_json_as_int(qlora_json_at(r, 7), &v),
             "json_int64_overflow_is_double", NULL);
    tu_check(qlora_json_at(r, 8)->number == 100.0 && qlora_json_at(r, 9)->number == 0.1 &&
                 qlora_json_as_int(qlora_json_at(r, 10), &v) && v == 2 && qlora_json_at(r, 11)->number == 0.0 &&
                 qlora_json_at(r, 12)->number == 5e-324,
             "json_number_values", NULL);
    qlora_json_free(&doc);
}

static void test_errors(void) {
    static const struct { const char *text; const char *has; } bad[] = {
        {"", "line 1 col 1"}, {"  ", "unexpected end"}, {"01", "leading zero"}, {"1.", "after '.'"}, {".5", "invalid value"},
        {"+1", "invalid value"}, {"-", "invalid number"}, {"1e", "exponent"}, {"1e+", "exponent"}, {"[1,]", "invalid value"},
        {"{\"a\"}", "':' expected"}, {"{'a':1}", "object key"}, {"{\"a\":1,}", "object key"}, {"tru", "invalid value"},
        {"nul", "invalid value"}, {"\"\\x\"", "invalid escape"}, {"\"\\u12\"", "bad \\u"}, {"\"\\u12g4\"", "bad \\u"},
        {"\"\\ud800\"", "high surrogate"}, {"\"\\ud800\\u0041\"", "high surrogate"}, {"\"\\udc00\"", "lone low"},
        {"\"\x01\"", "control character"}, {"\"a\nb\"", "control character"}, {"\"\xc0\xaf\"", "UTF-8"},
        {"\"\xed\xa0\x80\"", "UTF-8"}, {"\"\xf4\x90\x80\x80\"", "UTF-8"}, {"\"\xe4\xb8\"", "UTF-8"}, {"\"\x80\"", "UTF-8"},
        {"\xef\xbb\xbf{}", "invalid value"}, {"[] x", "after the JSON value"}, {"{} {}", "after the JSON value"},
        {"NaN", "invalid value"}, {"Infinity", "invalid value"}, {"-Infinity", "invalid number"}, {"[1 2]", "',' or ']'"},
        {"{\"a\" 1}", "':' expected"}, {"/*c*/1", "invalid value"}, {"\"abc", "unterminated string"},
        {"[1, 2", "unterminated array"}, {"{\"a\": [", "unexpected end"}, {"1e400", "out of range"},
        {"-1e400", "out of range"}, {"[\"a\" : 1]", "',' or ']'"}, {"{1: 2}", "object key"}, {"\"\\", "unterminated"},
        {"truex", "after the JSON value"}, {"[01]", "leading zero"}, {"-01", "leading zero"}, {"1.e5", "after '.'"},
    };
    int nbad = (int)(sizeof bad / sizeof bad[0]), ok = 1;
    char detail[256];
    for (int i = 0; i < nbad; i++) {
        if (!parse_fails(bad[i].text, strlen(bad[i].text), QLORA_ERR_FORMAT, bad[i].has, detail)) {
            tu_check(0, "json_reject_invalid", "input #%d '%s' -> detail '%s' (want '%s')", i, bad[i].text, detail, bad[i].has);
            ok = 0;
        }
    }
    if (ok) tu_check(1, "json_reject_invalid", NULL);
    // Embedded NUL after a value is trailing garbage; the length decides, not a terminator.
    tu_check(parse_fails("[1]\0", 4, QLORA_ERR_FORMAT, "line 1 col 4", NULL), "json_embedded_nul_trailing", NULL);
    // Line:col of an error on line 3.
    const char *t3 = "{\n  \"a\": 1,\n}";
    tu_check(parse_fails(t3, strlen(t3), QLORA_ERR_FORMAT, "line 3 col 1", detail), "json_error_line_col", "detail '%s'", detail);
    const char *t4 = "[1,\n 2,\n   tx]";
    tu_check(parse_fails(t4, strlen(t4), QLORA_ERR_FORMAT, "line 3 col 4", detail), "json_error_line_col_2", "detail '%s'", detail);
    // NULL arguments.
    qlora_json_doc doc;
    tu_check(qlora_json_parse(NULL, "1", 1, NULL) == QLORA_ERR_ARG && qlora_json_parse(&doc, NULL, 3, NULL) == QLORA_ERR_ARG,
             "json_null_args", NULL);
}

static void test_depth(void) {
    int n = QLORA_JSON_MAX_DEPTH;
    char *s = (char *)malloc(200002);
    for (int i = 0; i < n; i++) { s[i] = '['; s[2 * n - 1 - i] = ']'; }
    qlora_json_doc doc;
    qlora_error e;
    qlora_status st = qlora_json_parse(&doc, s, (size_t)(2 * n), &e);
    tu_check(st == QLORA_OK, "json_depth_at_limit", "%s", st ? e.detail : "");
    qlora_json_free(&doc);
    for (int i = 0; i <= n; i++) { s[i] = '['; s[2 * n + 1 - i] = ']'; }
    tu_check(parse_fails(s, (size_t)(2 * n + 2), QLORA_ERR_FORMAT, "nesting too deep", NULL), "json_depth_over_limit", NULL);
    memset(s, '[', 200000);
    tu_check(parse_fails(s, 200000, QLORA_ERR_FORMAT, "nesting too deep", NULL), "json_depth_200k_no_crash", NULL);
    for (int i = 0; i < 100000; i++) { s[2 * i] = '{'; s[2 * i + 1] = '"'; }
    tu_check(parse_fails(s, 200000, QLORA_ERR_FORMAT, NULL, NULL), "json_deep_object_garbage", NULL);
    free(s);
}

static void test_large_array(void) {
    // Many children: exercises the child stack growth and arena blocks.
    int n = getenv("QLORA_TEST_QUICK") ? 20000 : 200000;
    char *s = (char *)malloc((size_t)n * 24 + 16);
    size_t k = 0;
    s[k++] = '{';
    for (int i = 0; i < n; i++) k += (size_t)sprintf(s + k, "%s\"k%d\":%d", i ? "," : "", i, i);
    s[k++] = '}';
    qlora_json_doc doc;
    qlora_error e;
    int ok = qlora_json_parse(&doc, s, k, &e) == QLORA_OK && doc.root.count == n;
    for (int i = 0; ok && i < n; i += 997) {
        char key[16];
        sprintf(key, "k%d", i);
        ok = qlora_json_get_int(&doc.root, key, -1) == i;
    }
    tu_check(ok, "json_large_object", "n %d", n);
    qlora_json_free(&doc);
    free(s);
}

static void test_read_file(void) {
    qlora_json_doc doc;
    qlora_error e;
    const char *missing = tu_path("no_such_file.json");
    qlora_status st = qlora_json_read_file(&doc, missing, &e);
    tu_check(st == QLORA_ERR_IO && strstr(e.detail, "no_such_file.json"), "json_read_file_missing", "%d %s", st, e.detail);
    const char *p = tu_path("bom.json");
    tu_write(p, "\xef\xbb\xbf{\"a\": [1]}", 13);
    st = qlora_json_read_file(&doc, p, &e);
    tu_check(st == QLORA_OK && qlora_json_get(&doc.root, "a")->count == 1, "json_read_file_bom", "%s", e.detail);
    qlora_json_free(&doc);
    p = tu_path("bad.json");
    tu_write(p, "{\n\"a\": tru}", 11);
    st = qlora_json_read_file(&doc, p, &e);
    tu_check(st == QLORA_ERR_FORMAT && strstr(e.detail, "bad.json") && strstr(e.detail, "line 2 col 6"),
             "json_read_file_error_names_file", "%s", e.detail);
}

// Builds the document of safetensors_ref.py cmd_jsondump.
static void build_doc(qlora_json_writer *w) {
    qlora_jw_object_begin(w);
    qlora_jw_key(w, "name"); qlora_jw_string(w, "q\"l\\ora\n\t\x01");
    qlora_jw_key(w, "n"); qlora_jw_int(w, 3);
    qlora_jw_key(w, "x"); qlora_jw_float(w, 1e-5f);
    qlora_jw_key(w, "y"); qlora_jw_double(w, 0.029266357421875);
    qlora_jw_key(w, "big"); qlora_jw_double(w, 1e16);
    qlora_jw_key(w, "neg"); qlora_jw_double(w, -2.5);
    qlora_jw_key(w, "zero"); qlora_jw_double(w, 0.0);
    qlora_jw_key(w, "list");
    qlora_jw_array_begin(w);
    qlora_jw_int(w, 1); qlora_jw_double(w, 2.0); qlora_jw_bool(w, 1); qlora_jw_bool(w, 0); qlora_jw_null(w);
    qlora_jw_array_begin(w); qlora_jw_array_end(w);
    qlora_jw_object_begin(w); qlora_jw_object_end(w);
    qlora_jw_array_end(w);
    qlora_jw_key(w, "uni"); qlora_jw_string(w, "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80");
    qlora_jw_key(w, "nested");
    qlora_jw_object_begin(w);
    qlora_jw_key(w, "a");
    qlora_jw_object_begin(w);
    qlora_jw_key(w, "b");
    qlora_jw_array_begin(w);
    qlora_jw_object_begin(w); qlora_jw_key(w, "c"); qlora_jw_int(w, 1); qlora_jw_object_end(w);
    qlora_jw_array_end(w);
    qlora_jw_object_end(w);
    qlora_jw_object_end(w);
    qlora_jw_object_end(w);
}

static void test_writer(void) {
    static const int modes[4][2] = {{0, 1}, {2, 1}, {-1, 1}, {2, 0}};  // (indent, ascii_only) as in jsondump
    char *out[4];
    for (int m = 0; m < 4; m++) {
        qlora_json_writer w;
        qlora_jw_init(&w, modes[m][0], modes[m][1]);
        build_doc(&w);
        qlora_error e;
        tu_check(qlora_jw_finish(&w, 0, &e) == QLORA_OK, "jw_finish_ok", "%s", e.detail);
        out[m] = w.buf;  // keep ownership
        // Round trip through the parser.
        qlora_json_doc doc;
        int ok = qlora_json_parse(&doc, w.buf, w.len, &e) == QLORA_OK &&
                 strcmp(qlora_json_get_string(&doc.root, "name", ""), "q\"l\\ora\n\t\x01") == 0 &&
                 strcmp(qlora_json_get_string(&doc.root, "uni", ""), "caf\xc3\xa9 \xe4\xb8\xad \xf0\x9f\x98\x80") == 0 &&
                 qlora_json_get_number(&doc.root, "x", 0) == 1e-5 && qlora_json_get(&doc.root, "list")->count == 7;
        tu_check(ok, "jw_roundtrip_parse", "mode %d: %s", m, w.buf);
        qlora_json_free(&doc);
    }
    if (!tu_have_python("numpy")) {
        tu_skip("jw_matches_python_json_dumps", "/usr/bin/python3 with numpy not available");
    } else {
        const char *ref = tu_path("jsondump.txt");
        int rc = tu_python("test/ref/safetensors_ref.py jsondump %s", ref);
        void *data = NULL;
        size_t n = 0;
        if (rc != 0 || qlora_read_file(ref, &data, &n, NULL) != QLORA_OK) {
            tu_check(0, "jw_matches_python_json_dumps", "reference script failed (rc %d)", rc);
        } else {
            char *txt = (char *)data, *part = txt;
            for (int m = 0; m < 4; m++) {
                char *sep = strstr(part, "\n----\n");
                if (sep) *sep = 0;
                char name[64];
                sprintf(name, "jw_matches_python_json_dumps_%d", m);
                tu_check(strcmp(part, out[m]) == 0, name, "\n got: %s\nwant: %s", out[m], part);
                part = sep ? sep + 6 : part + strlen(part);
            }
            QLORA_FREE(data);
        }
    }
    for (int m = 0; m < 4; m++) QLORA_FREE(out[m]);

    // Misuse is sticky and reported by finish.
    qlora_json_writer w;
    qlora_error e;
    qlora_jw_init(&w, -1, 0);
    qlora_jw_array_begin(&w); qlora_jw_key(&w, "k"); qlora_jw_array_end(&w);
    tu_check(qlora_jw_finish(&w, 0, &e) == QLORA_ERR_ARG, "jw_key_in_array_rejected", NULL);
    qlora_jw_free(&w);
    qlora_jw_init(&w, -1, 0);
    qlora_jw_object_begin(&w); qlora_jw_int(&w, 1); qlora_jw_object_end(&w);
    tu_check(qlora_jw_finish(&w, 0, &e) == QLORA_ERR_ARG, "jw_value_without_key_rejected", NULL);
    qlora_jw_free(&w);
    qlora_jw_init(&w, -1, 0);
    qlora_jw_object_begin(&w); qlora_jw_key(&w, "a");
    tu_check(qlora_jw_finish(&w, 0, &e) == QLORA_ERR_ARG, "jw_unbalanced_rejected", NULL);
    qlora_jw_free(&w);
    qlora_jw_init(&w, -1, 0);
    qlora_jw_int(&w, 1); qlora_jw_int(&w, 2);
    tu_check(qlora_jw_finish(&w, 0, &e) == QLORA_ERR_ARG, "jw_two_top_values_rejected", NULL);
    qlora_jw_free(&w);
    qlora_jw_init(&w, 0, 0);
    qlora_jw_array_begin(&w); qlora_jw_double(&w, NAN); qlora_jw_float(&w, -INFINITY); qlora_jw_string(&w, "a\xff" "b");
    qlora_jw_array_end(&w);
    tu_check(qlora_jw_finish(&w, 1, &e) == QLORA_OK && strcmp(w.buf, "[null, null, \"a\xef\xbf\xbd" "b\"]\n") == 0,
             "jw_nonfinite_null_invalid_utf8_replaced", "got %s", w.buf);
    qlora_jw_free(&w);
}

static void test_format_double(void) {
    // Python repr(float) for doubles; repr(float(shortest float32 digits)) for floats.
    enum { ND = 64, NF = 64 };
    double d[ND];
    float f[NF];
    static const double specials[] = {1.0, 0.1, -0.0, 1e16, 1e15, 9999999999999998.0, 1e-4, 1e-5, 0.00012345, 123456789.125,
                                      5e-324, 1.7976931348623157e308, 2.5, 100.0, 1e22, 1.5e-7, 0.3, 2.0 / 3.0};
    int ns = (int)(sizeof specials / sizeof specials[0]);
    tu_seed(42);
    for (int i = 0; i < ND; i++) d[i] = i < ns ? specials[i] : tu_uniform() * pow(10.0, (double)((i * 37) % 60 - 30));
    static const float fspecials[] = {1e-5f, 0.1f, 6.0f, 1e-6f, 0.029266357f, 3.4028235e38f, 1.4e-45f, 1.1754944e-38f,
                                      16777216.0f, 0.5f, -1.25f, 1e10f, 1e16f, 1e17f};
    int nfs = (int)(sizeof fspecials / sizeof fspecials[0]);
    for (int i = 0; i < NF; i++) f[i] = i < nfs ? fspecials[i] : (float)(tu_uniform() * pow(10.0, (double)((i * 13) % 40 - 20)));
    // Self-consistency (always): the text reads back to the same value.
    int ok = 1;
    char buf[64];
    for (int i = 0; i < ND; i++) { qlora_format_double(buf, d[i], 0); if (strtod(buf, NULL) != d[i]) ok = 0; }
    for (int i = 0; i < NF; i++) { qlora_format_double(buf, f[i], 1); if (strtof(buf, NULL) != f[i]) ok = 0; }
    tu_check(ok, "format_double_roundtrip", NULL);
    qlora_format_double(buf, 1e-5, 0);
    tu_check(strcmp(buf, "1e-05") == 0, "format_double_1e-05", "got %s", buf);
    if (!tu_have_python("numpy")) { tu_skip("format_double_matches_python_repr", "numpy not available"); return; }
    const char *p64 = tu_path("fmt64.bin"), *p32 = tu_path("fmt32.bin"), *pout = tu_path("fmt.txt");
    tu_write(p64, d, sizeof d);
    tu_write(p32, f, sizeof f);
    if (tu_python("test/ref/safetensors_ref.py floats %s %s %s", p64, p32, pout) != 0) {
        tu_check(0, "format_double_matches_python_repr", "reference script failed");
        return;
    }
    void *data;
    size_t n;
    if (qlora_read_file(pout, &data, &n, NULL) != QLORA_OK) { tu_check(0, "format_double_matches_python_repr", "no output"); return; }
    char *line = (char *)data;
    int bad = 0;
    char first[160] = "";
    for (int i = 0; i < ND + NF && line && *line; i++) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (i < ND) qlora_format_double(buf, d[i], 0); else qlora_format_double(buf, f[i - ND], 1);
        if (strcmp(buf, line) != 0) {
            if (!bad) snprintf(first, sizeof first, "#%d got %s want %s", i, buf, line);
            bad++;
        }
        line = nl ? nl + 1 : NULL;
    }
    QLORA_FREE(data);
    tu_check(bad == 0, "format_double_matches_python_repr", "%d mismatches, first %s", bad, first);
}

int main(void) {
    test_basic();
    test_strings();
    test_numbers();
    test_errors();
    test_depth();
    test_large_array();
    test_read_file();
    test_writer();
    test_format_double();
    return tu_finish();
}
