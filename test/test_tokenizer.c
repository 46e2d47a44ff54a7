// test_tokenizer.c - the Llama tokenizer against Debian's python3-sentencepiece (test/ref/tokenizer_ref.py):
// every corpus string is encoded and decoded and compared exactly; tokenizer.json files built from the
// same model are checked against the Hugging Face pipeline; malformed model files must fail cleanly.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#include <time.h>

// ---------------------------------------------------------------------------------------------
// record files written by tokenizer_ref.py: u32 count, then per record u32 length + payload

typedef struct recs {
    uint32_t       n;
    uint32_t      *len;    // (n) bytes, or int32 count for id files
    unsigned char **data;  // (n)
    unsigned char *blob;
} recs;

static void recs_free(recs *r) {
    free(r->len);
    free(r->data);
    free(r->blob);
    memset(r, 0, sizeof(*r));
}

static unsigned char *read_all(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    long sz;
    unsigned char *buf;
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = (unsigned char *)malloc((size_t)sz + 1);
    if (buf && fread(buf, 1, (size_t)sz, f) != (size_t)sz) { free(buf); buf = NULL; }
    fclose(f);
    if (buf) buf[sz] = 0;
    *size = sz;
    return buf;
}

// elem: 1 for byte strings, 4 for int32 id arrays
static int recs_read(recs *r, const char *path, int elem) {
    long sz = 0, pos = 4;
    uint32_t i;
    memset(r, 0, sizeof(*r));
    r->blob = read_all(path, &sz);
    if (!r->blob || sz < 4) return 0;
    memcpy(&r->n, r->blob, 4);
    r->len = (uint32_t *)calloc(r->n + 1, sizeof(uint32_t));
    r->data = (unsigned char **)calloc(r->n + 1, sizeof(unsigned char *));
    for (i = 0; i < r->n; i++) {
        if (pos + 4 > sz) return 0;
        memcpy(&r->len[i], r->blob + pos, 4);
        pos += 4;
        r->data[i] = r->blob + pos;
        pos += (long)r->len[i] * elem;
        if (pos > sz) return 0;
    }
    return pos == sz;
}

static int32_t rec_id(const recs *r, uint32_t i, uint32_t k) {
    int32_t v;
    memcpy(&v, r->data[i] + 4 * k, 4);
    return v;
}

// printable excerpt of a byte string
static void escape(char *out, size_t cap, const unsigned char *s, size_t n) {
    size_t o = 0, i;
    for (i = 0; i < n && o + 8 < cap; i++) {
        unsigned c = s[i];
        if (c == '\n') { out[o++] = '\\'; out[o++] = 'n'; }
        else if (c == '\t') { out[o++] = '\\'; out[o++] = 't'; }
        else if (c < 0x20 || c == 0x7f) o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
        else out[o++] = (char)c;
    }
    if (i < n && o + 4 < cap) { out[o++] = '.'; out[o++] = '.'; out[o++] = '.'; }
    out[o] = 0;
}

static void ids_str(char *out, size_t cap, const int32_t *ids, int64_t n) {
    size_t o = 0;
    int64_t i;
    o += (size_t)snprintf(out, cap, "[");
    for (i = 0; i < n && i < 10 && o + 16 < cap; i++) o += (size_t)snprintf(out + o, cap - o, i ? " %d" : "%d", (int)ids[i]);
    snprintf(out + o, cap - o, "%s] (%lld)", i < n ? " ..." : "", (long long)n);
}

// ---------------------------------------------------------------------------------------------
// compare encode (and decode of the result) against expected records

typedef struct cmp {
    long   bad, checked;
    char   first[3][400];
    int    nfirst;
} cmp;

static void cmp_note(cmp *c, const char *fmt, ...) {
    va_list ap;
    c->bad++;
    if (c->nfirst >= 3) return;
    va_start(ap, fmt);
    vsnprintf(c->first[c->nfirst++], sizeof(c->first[0]), fmt, ap);
    va_end(ap);
}

static void cmp_report(const cmp *c, const char *name) {
    if (c->bad == 0) {
        tu_check(c->checked > 0, name, "nothing was compared");
        return;
    }
    tu_check(0, name, "%ld of %ld differ; %s%s%s%s%s", c->bad, c->checked, c->first[0], c->nfirst > 1 ? " | " : "",
             c->nfirst > 1 ? c->first[1] : "", c->nfirst > 2 ? " | " : "", c->nfirst > 2 ? c->first[2] : "");
}

// Encodes corpus[i] for i < limit and compares with want ids; if dec is given, compares
// decode(ids) with it.
static void check_encode(const qlora_tokenizer *t, const recs *corpus, const recs *want, const recs *dec, uint32_t limit,
                         const char *name_enc, const char *name_dec) {
    cmp ce, cd;
    uint32_t i;
    int32_t *ids = NULL;
    char *text = NULL;
    size_t text_cap = 0;
    int64_t ids_cap = 0;
    memset(&ce, 0, sizeof(ce));
    memset(&cd, 0, sizeof(cd));
    if (limit > corpus->n) limit = corpus->n;
    if (limit > want->n) limit = want->n;
    for (i = 0; i < limit; i++) {
        int64_t n = 0, k;
        qlora_error e;
        qlora_status st;
        char a[120], g[160], w[160];
        int same;
        st = qlora_tokenizer_encode(t, (const char *)corpus->data[i], corpus->len[i], 0, 0, ids, ids_cap, &n, &e);
        if (st == QLORA_ERR_SHAPE) {
            free(ids);
            ids_cap = n + 16;
            ids = (int32_t *)malloc((size_t)ids_cap * sizeof(int32_t));
            st = qlora_tokenizer_encode(t, (const char *)corpus->data[i], corpus->len[i], 0, 0, ids, ids_cap, &n, &e);
        }
        ce.checked++;
        escape(a, sizeof a, corpus->data[i], corpus->len[i] > 50 ? 50 : corpus->len[i]);
        if (st != QLORA_OK) { cmp_note(&ce, "#%u '%s': %s", i, a, e.detail); continue; }
        same = n == (int64_t)want->len[i];
        for (k = 0; same && k < n; k++) same = ids[k] == rec_id(want, i, (uint32_t)k);
        if (!same) {
            int32_t wv[12];
            int64_t wn = want->len[i], m;
            int64_t diff = 0;
            while (diff < n && diff < wn && ids[diff] == rec_id(want, i, (uint32_t)diff)) diff++;
            for (m = 0; m < 10 && diff + m < wn; m++) wv[m] = rec_id(want, i, (uint32_t)(diff + m));
            ids_str(g, sizeof g, ids + diff, n - diff);
            ids_str(w, sizeof w, wv, wn - diff < 10 ? wn - diff : 10);
            cmp_note(&ce, "#%u '%s' from token %lld got %s want %s", i, a, (long long)diff, g, w);
        }
        if (dec) {
            size_t len = 0;
            if (text_cap < 4 * (size_t)dec->len[i] + 64) {
                free(text);
                text_cap = 4 * (size_t)dec->len[i] + 64;
                text = (char *)malloc(text_cap);
            }
            cd.checked++;
            st = qlora_tokenizer_decode(t, ids, n, text, text_cap, &len, &e);
            if (st != QLORA_OK) { cmp_note(&cd, "#%u: %s", i, e.detail); continue; }
            if (len != dec->len[i] || memcmp(text, dec->data[i], len) != 0) {
                char x[120];
                escape(g, sizeof g, (const unsigned char *)text, len > 50 ? 50 : len);
                escape(x, sizeof x, dec->data[i], dec->len[i] > 50 ? 50 : dec->len[i]);
                cmp_note(&cd, "#%u got '%s' (%zu) want '%s' (%u)", i, g, len, x, dec->len[i]);
            }
        }
    }
    printf("# %s: %ld strings compared, %ld differ\n", name_enc, ce.checked, ce.bad);
    cmp_report(&ce, name_enc);
    if (dec) cmp_report(&cd, name_dec);
    free(ids);
    free(text);
}

static void check_decode(const qlora_tokenizer *t, const recs *ids, const recs *dec, const char *name) {
    cmp c;
    uint32_t i;
    char buf[8192];
    memset(&c, 0, sizeof(c));
    for (i = 0; i < ids->n && i < dec->n; i++) {
        int32_t v[512];
        uint32_t k;
        size_t len = 0;
        qlora_error e;
        for (k = 0; k < ids->len[i] && k < 512; k++) v[k] = rec_id(ids, i, k);
        c.checked++;
        if (qlora_tokenizer_decode(t, v, ids->len[i], buf, sizeof buf, &len, &e) != QLORA_OK) {
            cmp_note(&c, "#%u: %s", i, e.detail);
        } else if (len != dec->len[i] || memcmp(buf, dec->data[i], len) != 0) {
            char g[120], w[120], s[160];
            escape(g, sizeof g, (const unsigned char *)buf, len > 40 ? 40 : len);
            escape(w, sizeof w, dec->data[i], dec->len[i] > 40 ? 40 : dec->len[i]);
            ids_str(s, sizeof s, v, ids->len[i]);
            cmp_note(&c, "#%u ids %s got '%s' want '%s'", i, s, g, w);
        }
    }
    printf("# %s: %ld sequences compared, %ld differ\n", name, c.checked, c.bad);
    cmp_report(&c, name);
}

// ---------------------------------------------------------------------------------------------

static const char *find_model(void) {
    static const char *cands[] = { "shared/models/llama2-tokenizer.model", "../shared/models/llama2-tokenizer.model",
                                   "/work/shared/models/llama2-tokenizer.model" };
    const char *env = getenv("QLORA_TOKENIZER_MODEL");
    size_t i;
    if (env && *env) return env;
    for (i = 0; i < sizeof(cands) / sizeof(cands[0]); i++) {
        FILE *f = fopen(cands[i], "rb");
        if (f) { fclose(f); return cands[i]; }
    }
    return NULL;
}

static int add_specials_from(qlora_tokenizer *t, const char *path) {
    long sz = 0;
    unsigned char *txt = read_all(path, &sz);
    char *line, *end;
    int ok = 1;
    if (!txt) return 0;
    for (line = (char *)txt; ok && *line; line = end + 1) {
        char *tab = strchr(line, '\t');
        qlora_error e;
        end = strchr(line, '\n');
        if (!end || !tab || tab > end) { ok = 0; break; }
        *tab = 0;
        *end = 0;
        ok = qlora_tokenizer_add_special(t, tab + 1, (int32_t)atoi(line), &e) == QLORA_OK;
        if (!ok) printf("# add_special: %s\n", e.detail);
    }
    free(txt);
    return ok;
}

static void test_basics(const qlora_tokenizer *t) {
    int32_t ids[64];
    int64_t n = 0;
    char buf[64];
    size_t len = 0;
    qlora_error e;
    qlora_status st;
    tu_check(t->vocab_size == 32000 && t->bos_id == 1 && t->eos_id == 2 && t->pad_id == -1 && t->unk_id == 0,
             "tok_model_ids", "vocab %d bos %d eos %d pad %d unk %d", (int)t->vocab_size, (int)t->bos_id,
             (int)t->eos_id, (int)t->pad_id, (int)t->unk_id);
    tu_check(strcmp(qlora_tokenizer_piece(t, 29871), "\xe2\x96\x81") == 0 && strcmp(qlora_tokenizer_piece(t, 1), "<s>") == 0 &&
             strcmp(qlora_tokenizer_piece(t, 3 + 0x0A), "<0x0A>") == 0 && qlora_tokenizer_piece(t, 32000) == NULL &&
             qlora_tokenizer_piece(t, -1) == NULL && qlora_tokenizer_piece_type(t, 1) == QLORA_PIECE_CONTROL &&
             qlora_tokenizer_piece_type(t, 0) == QLORA_PIECE_UNKNOWN && qlora_tokenizer_piece_type(t, 3) == QLORA_PIECE_BYTE &&
             qlora_tokenizer_piece_type(t, 500) == QLORA_PIECE_NORMAL && qlora_tokenizer_score(t, 260) == -1.0f &&
             qlora_tokenizer_find(t, "\xe2\x96\x81the", 6) == 278 && qlora_tokenizer_find(t, "zzzzqq", 6) == -1,
             "tok_model_pieces", "piece / type / score / find accessors disagree with the model");
    // "Hello world" = [15043, 3186] (sentencepiece)
    st = qlora_tokenizer_encode(t, "Hello world", 11, 1, 1, ids, 64, &n, &e);
    tu_check(st == QLORA_OK && n == 4 && ids[0] == 1 && ids[1] == 15043 && ids[2] == 3186 && ids[3] == 2,
             "tok_encode_hello", "st %d n %lld ids %d %d %d %d", (int)st, (long long)n, ids[0], ids[1], ids[2], ids[3]);
    st = qlora_tokenizer_encode(t, "Hello world", 11, 1, 0, ids, 1, &n, &e);
    tu_check(st == QLORA_ERR_SHAPE && n == 3, "tok_encode_cap", "st %d n %lld (want SHAPE, 3)", (int)st, (long long)n);
    st = qlora_tokenizer_encode(t, "Hello world", 11, 0, 0, NULL, 0, &n, &e);
    tu_check(st == QLORA_ERR_SHAPE && n == 2, "tok_encode_size_query", "st %d n %lld", (int)st, (long long)n);
    st = qlora_tokenizer_encode(t, "", 0, 0, 0, NULL, 0, &n, &e);
    tu_check(st == QLORA_OK && n == 0, "tok_encode_empty", "st %d n %lld", (int)st, (long long)n);
    ids[0] = 15043; ids[1] = 3186;
    st = qlora_tokenizer_decode(t, ids, 2, buf, 5, &len, &e);
    tu_check(st == QLORA_ERR_SHAPE && len == 11, "tok_decode_cap", "st %d len %zu", (int)st, len);
    st = qlora_tokenizer_decode(t, ids, 2, buf, sizeof buf, &len, &e);
    tu_check(st == QLORA_OK && len == 11 && strcmp(buf, "Hello world") == 0, "tok_decode_hello", "st %d '%s'", (int)st, buf);
    ids[0] = 32000;
    st = qlora_tokenizer_decode(t, ids, 1, buf, sizeof buf, &len, &e);
    tu_check(st == QLORA_ERR_ARG && strstr(e.detail, "32000") != NULL, "tok_decode_range", "st %d: %s", (int)st, e.detail);
}

// Truncated and bit-flipped model files must load or fail with FORMAT/UNSUPPORTED; never crash.
static void test_corrupt(const unsigned char *model, long size, int quick) {
    unsigned char *buf = (unsigned char *)malloc((size_t)size + 64);
    int n_trunc = quick ? 60 : 200, n_flip = quick ? 60 : 200, i, bad = 0, loaded = 0, fmt = 0, named = 0;
    char first_bad[300] = "";
    qlora_tokenizer t;
    qlora_error e;
    for (i = 0; i <= n_trunc; i++) {
        long cut = i < 20 ? i : (long)((double)size * (i - 20) / (n_trunc - 20));
        qlora_status st;
        if (cut > size) cut = size;
        memcpy(buf, model, (size_t)cut);
        e.detail[0] = 0;
        st = qlora_tokenizer_load_model_buffer(&t, buf, (size_t)cut, "trunc.model", &e);
        if (st == QLORA_OK) {
            loaded++;
            if (cut != size && !(t.vocab_size > 0)) bad++;
            qlora_tokenizer_free(&t);
        } else if (st == QLORA_ERR_FORMAT || st == QLORA_ERR_UNSUPPORTED) {
            fmt++;
            if (strstr(e.detail, "trunc.model") && (st != QLORA_ERR_FORMAT || strstr(e.detail, "byte") || strstr(e.detail, "piece"))) named++;
            else if (!first_bad[0]) snprintf(first_bad, sizeof first_bad, "cut %ld: %s", cut, e.detail);
            if (t.d != NULL) bad++;
        } else {
            bad++;
            if (!first_bad[0]) snprintf(first_bad, sizeof first_bad, "cut %ld: status %d %s", cut, (int)st, e.detail);
        }
    }
    tu_check(bad == 0 && named == fmt && fmt >= n_trunc - 2, "tok_corrupt_truncations",
             "%d bad, %d failed (%d named the file and offset), %d loaded; %s", bad, fmt, named, loaded, first_bad);
    printf("# truncations: %d points, %d failed cleanly, %d loaded (the full file)\n", n_trunc + 1, fmt, loaded);

    tu_seed(4242);
    bad = loaded = fmt = 0;
    first_bad[0] = 0;
    for (i = 0; i < n_flip; i++) {
        int k, nf = 1 + (int)((tu_uniform() * 0.5 + 0.5) * 8);
        qlora_status st;
        memcpy(buf, model, (size_t)size);
        for (k = 0; k < nf; k++) {
            long pos = (long)((tu_uniform() * 0.5 + 0.5) * (double)size);
            // favor the structural bytes near the start and the spec messages at the end
            if (k == 0 && i % 3 == 0) pos = (long)((tu_uniform() * 0.5 + 0.5) * 64.0);
            if (k == 0 && i % 3 == 1) pos = size - 1 - (long)((tu_uniform() * 0.5 + 0.5) * 400.0);
            if (pos < 0) pos = 0;
            if (pos >= size) pos = size - 1;
            buf[pos] = (unsigned char)(tu_uniform() * 128.0 + 128.0);
        }
        st = qlora_tokenizer_load_model_buffer(&t, buf, (size_t)size, "flip.model", &e);
        if (st == QLORA_OK) {
            int32_t ids[256];
            int64_t n = 0;
            char out[1024];
            size_t len;
            loaded++;
            // whatever loaded must still encode and decode without crashing
            if (qlora_tokenizer_encode(&t, "67F, 3 d after liver bx \xf0\x9f\x98\x80 <s>", 32, 1, 1, ids, 256, &n, &e) == QLORA_OK)
                qlora_tokenizer_decode(&t, ids, n, out, sizeof out, &len, &e);
            qlora_tokenizer_free(&t);
        } else if (st == QLORA_ERR_FORMAT || st == QLORA_ERR_UNSUPPORTED) {
            fmt++;
            if (!strstr(e.detail, "flip.model")) { bad++; if (!first_bad[0]) snprintf(first_bad, sizeof first_bad, "%s", e.detail); }
        } else {
            bad++;
            if (!first_bad[0]) snprintf(first_bad, sizeof first_bad, "status %d %s", (int)st, e.detail);
        }
    }
    tu_check(bad == 0, "tok_corrupt_flips", "%d bad; %s", bad, first_bad);
    printf("# byte flips: %d files, %d failed cleanly, %d loaded\n", n_flip, fmt, loaded);
    free(buf);
}

// Hand-built protobuf edits: each appends a field to the real file (protobuf: last one wins).
static void test_proto_edits(const unsigned char *model, long size) {
    static const struct { const char *name; unsigned char tail[16]; int n; qlora_status want; const char *in_detail; } cases[] = {
        { "tok_proto_unigram",  { 0x12, 0x02, 0x18, 0x01 }, 4, QLORA_ERR_UNSUPPORTED, "model_type" },
        { "tok_proto_charsmap", { 0x1a, 0x03, 0x12, 0x01, 0x41 }, 5, QLORA_ERR_UNSUPPORTED, "charsmap" },
        { "tok_proto_wiretype", { 0x08, 0x01 }, 2, QLORA_ERR_FORMAT, "wire type" },
        { "tok_proto_bos_range", { 0x12, 0x05, 0xc8, 0x02, 0xc0, 0xb8, 0x02 }, 7, QLORA_ERR_FORMAT, "bos_id" },
        { "tok_proto_len_past_end", { 0x0a, 0x7f, 0x0a }, 3, QLORA_ERR_FORMAT, "past the end" },
        { "tok_proto_trunc_varint", { 0x12, 0x80 }, 2, QLORA_ERR_FORMAT, "truncated varint" },
        { "tok_proto_group", { 0x0b }, 1, QLORA_ERR_FORMAT, "wire type" },
        { "tok_proto_dup_piece", { 0x0a, 0x05, 0x0a, 0x03, 0xe2, 0x96, 0x81 }, 7, QLORA_ERR_FORMAT, "already defined" },
        { "tok_proto_bad_type", { 0x0a, 0x04, 0x0a, 0x00, 0x18, 0x09 }, 6, QLORA_ERR_FORMAT, "type" },
    };
    unsigned char *buf = (unsigned char *)malloc((size_t)size + 16);
    size_t i;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        qlora_tokenizer t;
        qlora_error e;
        qlora_status st;
        memcpy(buf, model, (size_t)size);
        memcpy(buf + size, cases[i].tail, (size_t)cases[i].n);
        e.detail[0] = 0;
        st = qlora_tokenizer_load_model_buffer(&t, buf, (size_t)size + (size_t)cases[i].n, "edit.model", &e);
        tu_check(st == cases[i].want && strstr(e.detail, cases[i].in_detail) && strstr(e.detail, "edit.model"),
                 cases[i].name, "status %d (want %d): %s", (int)st, (int)cases[i].want, e.detail);
        if (st == QLORA_OK) qlora_tokenizer_free(&t);
    }
    {
        qlora_tokenizer t;
        qlora_error e;
        qlora_status st = qlora_tokenizer_load_model_buffer(&t, buf, 0, "empty.model", &e);
        tu_check(st == QLORA_ERR_FORMAT && strstr(e.detail, "no pieces"), "tok_proto_empty", "status %d: %s", (int)st, e.detail);
        st = qlora_tokenizer_load(&t, "build/tmp/does-not-exist.model", &e);
        tu_check(st == QLORA_ERR_IO, "tok_load_missing", "status %d: %s", (int)st, e.detail);
    }
    free(buf);
}

// The load of json files with deliberate mistakes.
static void test_json_errors(void) {
    static const struct { const char *name; const char *json; qlora_status want; } cases[] = {
        { "tok_json_truncated", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0", QLORA_ERR_FORMAT },
        { "tok_json_unigram", "{\"model\": {\"type\": \"Unigram\", \"vocab\": [[\"a\", 0.0]]}}", QLORA_ERR_UNSUPPORTED },
        { "tok_json_merge_oov", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1}, \"merges\": [\"a c\"]}}", QLORA_ERR_FORMAT },
        { "tok_json_hole", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 2}, \"merges\": []}}", QLORA_ERR_FORMAT },
        // found by fuzz_tokenizer: one id of 1e8 made the loader size its tables (1.2 GB) before finding the holes
        { "tok_json_huge_id_refused_before_allocating",
          "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1e8}, \"merges\": []}}", QLORA_ERR_FORMAT },
        { "tok_json_bytelevel", "{\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}", QLORA_ERR_UNSUPPORTED },
        { "tok_json_nfkc", "{\"normalizer\": {\"type\": \"NFKC\"}, \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}}", QLORA_ERR_UNSUPPORTED },
    };
    size_t i;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        qlora_tokenizer t;
        qlora_error e;
        qlora_status st;
        e.detail[0] = 0;
        st = qlora_tokenizer_load_json_buffer(&t, cases[i].json, strlen(cases[i].json), "bad.json", &e);
        tu_check(st == cases[i].want && strstr(e.detail, "bad.json") &&
                     (!strstr(cases[i].name, "huge_id") || strstr(e.detail, "id 100000000 is larger than the 2 entries")),
                 cases[i].name, "status %d (want %d): %s", (int)st, (int)cases[i].want, e.detail);
        if (st == QLORA_OK) qlora_tokenizer_free(&t);
    }
}

// A tiny tokenizer.json exercising rank order, unk fusing, normalized added tokens and lstrip/rstrip.
static void test_json_small(void) {
    const char *js =
        "{\"added_tokens\": ["
        "{\"id\": 9, \"content\": \"<eot>\", \"special\": true, \"normalized\": false, \"lstrip\": true, \"rstrip\": true},"
        "{\"id\": 10, \"content\": \"[x]\", \"special\": false, \"normalized\": true}],"
        " \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"_\"},"
        " {\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"_\"}]},"
        " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, \"byte_fallback\": false,"
        " \"vocab\": {\"<unk>\": 0, \"_\": 1, \"a\": 2, \"b\": 3, \"ab\": 4, \"_a\": 5, \"_ab\": 6, \"bb\": 7, \"abb\": 8},"
        " \"merges\": [[\"a\", \"b\"], [\"_\", \"a\"], [\"_a\", \"b\"], [\"b\", \"b\"], [\"ab\", \"b\"]]}}";
    static const struct { const char *text; int n; int32_t ids[8]; } cases[] = {
        { "ab", 2, { 1, 4 } },              // "_ab": (a,b) has rank 0, and (_,ab) is no merge
        { "abb", 2, { 1, 8 } },             // then (ab,b) -> abb
        { "a b", 3, { 5, 1, 3 } },
        { "zzab", 3, { 1, 0, 4 } },          // unknown z z fused into one <unk>
        { "a<eot>b", 4, { 5, 9, 1, 3 } },
        { "a <eot> b", 4, { 5, 9, 1, 3 } },  // lstrip/rstrip swallow the spaces
        { "a [x]b", 3, { 5, 10, 3 } },       // "[x]" normalizes to "_[x]", matched after normalization
        { "a[x]b", 0, { 0 } },
    };
    qlora_tokenizer t;
    qlora_error e;
    qlora_status st = qlora_tokenizer_load_json_buffer(&t, js, strlen(js), "small.json", &e);
    size_t i;
    char msg[512] = "";
    int bad = 0;
    if (!tu_check(st == QLORA_OK, "tok_json_small_load", "%s", e.detail)) return;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int32_t ids[32];
        int64_t n = 0, k;
        int same;
        st = qlora_tokenizer_encode(&t, cases[i].text, strlen(cases[i].text), 0, 0, ids, 32, &n, &e);
        if (cases[i].n == 0) continue;
        same = st == QLORA_OK && n == cases[i].n;
        for (k = 0; same && k < n; k++) same = ids[k] == cases[i].ids[k];
        if (!same) {
            char g[160];
            ids_str(g, sizeof g, ids, n);
            if (!bad) snprintf(msg, sizeof msg, "'%s' -> %s", cases[i].text, g);
            bad++;
        }
    }
    tu_check(bad == 0, "tok_json_small_encode", "%d cases differ, first %s", bad, msg);
    qlora_tokenizer_free(&t);
}

// Metaspace with split=true: words start at each "_" and never merge across it.
static void test_json_metaspace_split(void) {
    const char *fmt =
        "{\"pre_tokenizer\": {\"type\": \"Metaspace\", \"replacement\": \"_\", \"prepend_scheme\": \"always\", \"split\": %s},"
        " \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\","
        " \"vocab\": {\"<unk>\": 0, \"_\": 1, \"a\": 2, \"b\": 3, \"a_\": 4, \"_a\": 5},"
        " \"merges\": [\"a _\", \"_ a\"]}}";
    char js[1024];
    int split, ok = 1;
    char msg[256] = "";
    for (split = 0; split < 2; split++) {
        qlora_tokenizer t;
        qlora_error e;
        int32_t ids[16];
        int64_t n = 0;
        // "a b" -> "_a_b": unsplit, (a,_) has rank 0 -> [_, a_, b]; split -> "_a" "_b" -> [_a, _, b]
        static const int32_t want[2][3] = { { 1, 4, 3 }, { 5, 1, 3 } };
        snprintf(js, sizeof js, fmt, split ? "true" : "false");
        if (qlora_tokenizer_load_json_buffer(&t, js, strlen(js), "ms.json", &e) != QLORA_OK ||
            qlora_tokenizer_encode(&t, "a b", 3, 0, 0, ids, 16, &n, &e) != QLORA_OK || n != 3 || ids[0] != want[split][0] ||
            ids[1] != want[split][1] || ids[2] != want[split][2]) {
            ok = 0;
            snprintf(msg, sizeof msg, "split=%d: n %lld ids %d %d %d (%.150s)", split, (long long)n, ids[0], ids[1], ids[2], e.detail);
        }
        qlora_tokenizer_free(&t);
    }
    tu_check(ok, "tok_json_metaspace_split", "%s", msg);
}

static void test_speed(const qlora_tokenizer *t, int quick) {
    const char *unit = "67F, 3 d after liver bx, on apixaban, Hgb \xe2\x86\x93, ?bleed. eGFR 28 mL/min/1.73m\xc2\xb2 \xe4\xb8\xad\xe6\x96\x87 ";
    size_t ul = strlen(unit), small = quick ? 20000 : 100000, big = small * 8, i;
    char *text = (char *)malloc(big + 1);
    int64_t n1 = 0, n2 = 0;
    clock_t c0, c1, c2;
    qlora_error e;
    int32_t *ids = (int32_t *)malloc(big * sizeof(int32_t));
    for (i = 0; i < big; i++) text[i] = unit[i % ul];
    c0 = clock();
    qlora_tokenizer_encode(t, text, small, 0, 0, ids, (int64_t)big, &n1, &e);
    c1 = clock();
    qlora_tokenizer_encode(t, text, big, 0, 0, ids, (int64_t)big, &n2, &e);
    c2 = clock();
    {
        double t1 = (double)(c1 - c0) / CLOCKS_PER_SEC, t2 = (double)(c2 - c1) / CLOCKS_PER_SEC;
        printf("# encode speed: %zu bytes in %.3f s, %zu bytes in %.3f s (%.1f MB/s)\n", small, t1, big, t2,
               (double)big / 1e6 / (t2 > 1e-9 ? t2 : 1e-9));
        tu_check(n2 > 7 * n1 && t2 < 30.0 * (t1 > 0.002 ? t1 : 0.002), "tok_encode_scaling",
                 "8x text took %.3f s vs %.3f s (tokens %lld vs %lld)", t2, t1, (long long)n2, (long long)n1);
    }
    free(text);
    free(ids);
}

#ifdef _OPENMP
// Concurrent encodes on one tokenizer must give the serial result.
static void test_threads(const qlora_tokenizer *t, const recs *corpus, const recs *want) {
    long bad = 0;
    int i;
#pragma omp parallel for schedule(dynamic, 8) reduction(+ : bad)
    for (i = 0; i < (int)corpus->n; i++) {
        int32_t ids[8192];
        int64_t n = 0, k;
        qlora_error e;
        if (qlora_tokenizer_encode(t, (const char *)corpus->data[i], corpus->len[i], 0, 0, ids, 8192, &n, &e) != QLORA_OK) {
            if (n <= 8192) bad++;
            continue;
        }
        if (n != (int64_t)want->len[i]) { bad++; continue; }
        for (k = 0; k < n; k++) if (ids[k] != rec_id(want, (uint32_t)i, (uint32_t)k)) { bad++; break; }
    }
    tu_check(bad == 0, "tok_threads", "%ld strings differ when encoded concurrently (%d threads)", bad, omp_get_max_threads());
}
#endif

// ---------------------------------------------------------------------------------------------
// The embedded base model's tokenizer (data/base/tokenizer.model, trained by spm_train, see
// tools/make_base_model.sh) against python3-sentencepiece on every note of data/, the catalogue,
// label continuations, 2000 lines of the pretraining corpus (when build/radgen exists) and the edge
// cases of tokenizer_corpus.py. Failures name the string's source line, never its text.

static void test_base_tokenizer(int quick) {
    const char *model = getenv("QLORA_BASE_TOKENIZER");
    const char *bdir = getenv("QLORA_BUILD_DIR");
    char dir[512], p[700], corpus[600], cmd[1600];
    recs texts, ids, dec, bos;
    qlora_tokenizer t;
    qlora_error e;
    FILE *f;
    int vocab = 0, unk = -9, bos_id = -9, eos_id = -9, pad = -9, have_corpus;
    char **src = NULL;
    unsigned char *srcbuf;
    long srcsize = 0;
    uint32_t i, nsrc = 0;
    cmp ce, cd, cb;
    int32_t *v = NULL;
    int64_t vcap = 0;
    char *text = NULL;
    size_t text_cap = 0;
    long unk_hits = 0;

    if (!model || !*model) model = "data/base/tokenizer.model";
    if (!bdir || !*bdir) bdir = "build";
    f = fopen(model, "rb");
    if (!f) {
        tu_skip("base_tok_vs_sentencepiece", "%s absent (tools/make_base_model.sh writes it)", model);
        return;
    }
    fclose(f);
    if (!tu_have_python("sentencepiece")) {
        tu_skip("base_tok_vs_sentencepiece", "/usr/bin/python3 cannot import sentencepiece");
        return;
    }
    if (qlora_tokenizer_load(&t, model, &e) != QLORA_OK) {
        tu_check(0, "base_tok_load", "%s", e.detail);
        return;
    }
    snprintf(dir, sizeof dir, "%s/base_tokenizer", tu_tmpdir());
    snprintf(corpus, sizeof corpus, "%s/base_corpus.txt", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "mkdir -p '%s' && '%s/radgen' --corpus %d --seed 1 > '%s' 2>/dev/null", dir, bdir,
             quick ? 300 : 2000, corpus);
    have_corpus = system(cmd) == 0;
    if (!have_corpus) printf("# base_tok: %s/radgen not runnable; checking without corpus lines\n", bdir);
    if (tu_python("test/ref/base_tokenizer_ref.py '%s' '%s' '%s' %d", model, dir, have_corpus ? corpus : "",
                  quick ? 300 : 2000) != 0) {
        tu_check(0, "base_tok_reference", "test/ref/base_tokenizer_ref.py failed");
        qlora_tokenizer_free(&t);
        return;
    }
    snprintf(p, sizeof p, "%s/base_meta.txt", dir);
    f = fopen(p, "r");
    if (!f || fscanf(f, "%d %d %d %d %d", &vocab, &unk, &bos_id, &eos_id, &pad) != 5) vocab = -1;
    if (f) fclose(f);
    tu_check(vocab == t.vocab_size && unk == 0 && bos_id == 1 && eos_id == 2 && t.unk_id == 0 && t.bos_id == 1 &&
                 t.eos_id == 2 && t.pad_id == (pad < 0 ? -1 : pad) && qlora_tokenizer_find(&t, "<0x0A>", 6) >= 3,
             "base_tok_specials", "sp vocab %d unk %d bos %d eos %d; ours vocab %d unk %d bos %d eos %d pad %d",
             vocab, unk, bos_id, eos_id, (int)t.vocab_size, (int)t.unk_id, (int)t.bos_id, (int)t.eos_id,
             (int)t.pad_id);
    snprintf(p, sizeof p, "%s/base_src.txt", dir);
    srcbuf = read_all(p, &srcsize);
    if (srcbuf) {   // one source name per line
        long k;
        for (k = 0; k < srcsize; k++) if (srcbuf[k] == '\n') nsrc++;
        src = (char **)calloc(nsrc + 1, sizeof(char *));
        nsrc = 0;
        src[nsrc++] = (char *)srcbuf;
        for (k = 0; k < srcsize; k++)
            if (srcbuf[k] == '\n') {
                srcbuf[k] = 0;
                if (k + 1 < srcsize) src[nsrc++] = (char *)srcbuf + k + 1;
            }
    }
    snprintf(p, sizeof p, "%s/base_corpus.bin", dir);
    recs_read(&texts, p, 1);
    snprintf(p, sizeof p, "%s/base_ids.bin", dir);
    recs_read(&ids, p, 4);
    snprintf(p, sizeof p, "%s/base_dec.bin", dir);
    recs_read(&dec, p, 1);
    snprintf(p, sizeof p, "%s/base_bos.bin", dir);
    recs_read(&bos, p, 4);
    tu_check(texts.n >= (quick ? 1000u : 4000u) && ids.n == texts.n && dec.n == texts.n && bos.n == 64 &&
                 nsrc == texts.n,
             "base_tok_reference", "strings %u, ids %u, decodes %u, bos %u, sources %u", texts.n, ids.n, dec.n,
             bos.n, nsrc);
    memset(&ce, 0, sizeof ce);
    memset(&cd, 0, sizeof cd);
    memset(&cb, 0, sizeof cb);
    for (i = 0; i < texts.n && i < ids.n && i < dec.n && i < nsrc; i++) {
        int64_t n = 0, k;
        size_t len = 0;
        qlora_status st;
        int same;
        for (k = 0; k < 2; k++) {
            st = qlora_tokenizer_encode(&t, (const char *)texts.data[i], texts.len[i], 0, 0, v, vcap, &n, &e);
            if (st != QLORA_ERR_SHAPE) break;
            free(v);
            vcap = n + 16;
            v = (int32_t *)malloc((size_t)vcap * sizeof(int32_t));
        }
        ce.checked++;
        if (st != QLORA_OK) { cmp_note(&ce, "%s: encode failed (%s)", src[i], e.detail); continue; }
        same = n == (int64_t)ids.len[i];
        for (k = 0; same && k < n; k++) same = v[k] == rec_id(&ids, i, (uint32_t)k);
        for (k = 0; k < n; k++) unk_hits += v[k] == t.unk_id;
        if (!same) {
            int64_t d = 0;
            while (d < n && d < (int64_t)ids.len[i] && v[d] == rec_id(&ids, i, (uint32_t)d)) d++;
            cmp_note(&ce, "%s: %lld tokens, want %u, first difference at token %lld", src[i], (long long)n,
                     ids.len[i], (long long)d);
        }
        if (text_cap < 4 * (size_t)dec.len[i] + 64) {
            free(text);
            text_cap = 4 * (size_t)dec.len[i] + 64;
            text = (char *)malloc(text_cap);
        }
        cd.checked++;
        st = qlora_tokenizer_decode(&t, v, n, text, text_cap, &len, &e);
        if (st != QLORA_OK) cmp_note(&cd, "%s: decode failed (%s)", src[i], e.detail);
        else if (len != dec.len[i] || memcmp(text, dec.data[i], len) != 0)
            cmp_note(&cd, "%s: decoded text differs (%zu bytes, want %u)", src[i], len, dec.len[i]);
        if (i < bos.n) {
            cb.checked++;
            if (vcap < n + 2) {
                free(v);
                vcap = n + 16;
                v = (int32_t *)malloc((size_t)vcap * sizeof(int32_t));
            }
            st = qlora_tokenizer_encode(&t, (const char *)texts.data[i], texts.len[i], 1, 1, v, vcap, &n, &e);
            same = st == QLORA_OK && n == (int64_t)bos.len[i];
            for (k = 0; same && k < n; k++) same = v[k] == rec_id(&bos, i, (uint32_t)k);
            if (!same) cmp_note(&cb, "%s: with BOS/EOS differs (%lld tokens, want %u)", src[i], (long long)n, bos.len[i]);
        }
    }
    printf("# base_tok: %ld strings compared (%s corpus lines), %ld differ, %ld <unk> tokens\n", ce.checked,
           have_corpus ? "with" : "without", ce.bad, unk_hits);
    cmp_report(&ce, "base_tok_encode_vs_sp");
    cmp_report(&cd, "base_tok_decode_vs_sp");
    cmp_report(&cb, "base_tok_bos_eos_vs_sp");
    free(v);
    free(text);
    free(src);
    free(srcbuf);
    recs_free(&texts);
    recs_free(&ids);
    recs_free(&dec);
    recs_free(&bos);
    qlora_tokenizer_free(&t);
}

int main(void) {
    const char *model = find_model();
    const char *qenv = getenv("QLORA_TEST_QUICK");
    int quick = qenv && *qenv && strcmp(qenv, "0") != 0;
    unsigned char *model_bytes;
    long model_size = 0;
    qlora_tokenizer t;
    qlora_error e;
    qlora_status st;
    char dir[512], p[600];

    test_json_errors();
    test_json_small();
    test_json_metaspace_split();
    test_base_tokenizer(quick);
    if (!model) {
        tu_skip("tok_model", "llama2-tokenizer.model not found (set QLORA_TOKENIZER_MODEL)");
        return tu_finish();
    }
    model_bytes = read_all(model, &model_size);
    st = qlora_tokenizer_load(&t, model, &e);
    if (!tu_check(st == QLORA_OK && model_bytes, "tok_model_load", "%s", e.detail)) return tu_finish();
    test_basics(&t);
    test_proto_edits(model_bytes, model_size);
    test_corrupt(model_bytes, model_size, quick);
    test_speed(&t, quick);

    snprintf(dir, sizeof dir, "%s/tokenizer", tu_tmpdir());
    if (!tu_have_python("sentencepiece")) {
        tu_skip("tok_vs_sentencepiece", "/usr/bin/python3 cannot import sentencepiece");
    } else if (tu_python("test/ref/tokenizer_ref.py '%s' '%s' %d", model, dir, quick ? 300 : 2200) != 0) {
        tu_check(0, "tok_reference", "test/ref/tokenizer_ref.py failed");
    } else {
        recs corpus, ids, dec, r1, r2;
        snprintf(p, sizeof p, "%s/corpus.bin", dir);
        recs_read(&corpus, p, 1);
        snprintf(p, sizeof p, "%s/sp_ids.bin", dir);
        recs_read(&ids, p, 4);
        snprintf(p, sizeof p, "%s/sp_dec.bin", dir);
        recs_read(&dec, p, 1);
        tu_check(corpus.n >= (quick ? 300u : 2000u) && ids.n == corpus.n && dec.n == corpus.n, "tok_reference",
                 "corpus %u, ids %u, decodes %u", corpus.n, ids.n, dec.n);
        check_encode(&t, &corpus, &ids, &dec, corpus.n, "tok_encode_vs_sp", "tok_decode_roundtrip_vs_sp");
#ifdef _OPENMP
        test_threads(&t, &corpus, &ids);
#endif
        // BOS / EOS
        snprintf(p, sizeof p, "%s/bos_ids.bin", dir);
        if (recs_read(&r1, p, 4)) {
            recs plain;
            memset(&plain, 0, sizeof(plain));
            {
                cmp c;
                uint32_t i;
                memset(&c, 0, sizeof(c));
                for (i = 0; i < r1.n; i++) {
                    int32_t b[8192];
                    int64_t n = 0, k;
                    c.checked++;
                    if (qlora_tokenizer_encode(&t, (const char *)corpus.data[i], corpus.len[i], 1, 1, b, 8192, &n, &e) != QLORA_OK ||
                        n != (int64_t)r1.len[i]) { cmp_note(&c, "#%u n %lld want %u", i, (long long)n, r1.len[i]); continue; }
                    for (k = 0; k < n; k++) if (b[k] != rec_id(&r1, i, (uint32_t)k)) { cmp_note(&c, "#%u token %lld", i, (long long)k); break; }
                }
                cmp_report(&c, "tok_encode_bos_eos_vs_sp");
            }
            recs_free(&r1);
        }
        // random id sequences
        snprintf(p, sizeof p, "%s/rnd_ids.bin", dir);
        recs_read(&r1, p, 4);
        snprintf(p, sizeof p, "%s/rnd_dec.bin", dir);
        recs_read(&r2, p, 1);
        check_decode(&t, &r1, &r2, "tok_decode_random_vs_sp");
        recs_free(&r1);
        recs_free(&r2);
        // added tokens on the .model tokenizer (HF legacy segment rule)
        snprintf(p, sizeof p, "%s/hf_ids.bin", dir);
        recs_read(&r1, p, 4);
        snprintf(p, sizeof p, "%s/hf_dec.bin", dir);
        recs_read(&r2, p, 1);
        {
            qlora_tokenizer t2;
            snprintf(p, sizeof p, "%s/added.txt", dir);
            if (tu_check(qlora_tokenizer_load(&t2, model, &e) == QLORA_OK && add_specials_from(&t2, p) && t2.vocab_size == 32017,
                         "tok_add_special", "vocab %d", (int)t2.vocab_size))
                check_encode(&t2, &corpus, &r1, &r2, corpus.n, "tok_encode_added_tokens", "tok_decode_added_tokens");
            qlora_tokenizer_free(&t2);
            // tokenizer.json (Prepend + Replace normalizer, "a b" merges)
            snprintf(p, sizeof p, "%s/tokenizer.json", dir);
            st = qlora_tokenizer_load(&t2, p, &e);
            if (tu_check(st == QLORA_OK && t2.vocab_size == 32017 && t2.bos_id == 1 && t2.eos_id == 2 && t2.unk_id == 0,
                         "tok_json_load", "st %d vocab %d bos %d: %s", (int)st, (int)t2.vocab_size, (int)t2.bos_id, e.detail))
                check_encode(&t2, &corpus, &r1, &r2, corpus.n, "tok_json_encode_vs_hf", "tok_json_decode");
            qlora_tokenizer_free(&t2);
            recs_free(&r1);
            recs_free(&r2);
            // tokenizer_ms.json (Metaspace prepend_scheme "first", ["a", "b"] merges)
            snprintf(p, sizeof p, "%s/ms_ids.bin", dir);
            recs_read(&r1, p, 4);
            snprintf(p, sizeof p, "%s/tokenizer_ms.json", dir);
            st = qlora_tokenizer_load(&t2, p, &e);
            if (tu_check(st == QLORA_OK, "tok_json_ms_load", "%s", e.detail))
                check_encode(&t2, &corpus, &r1, NULL, corpus.n, "tok_json_ms_encode", NULL);
            qlora_tokenizer_free(&t2);
            recs_free(&r1);
        }
        // model variants: remove_extra_whitespaces, no dummy prefix, USER_DEFINED + UNUSED pieces
        {
            static const char *const names[3] = { "m1", "m2", "m3" };
            static const char *const what[3] = { "remove_ws", "no_prefix", "user_unused" };
            int v;
            for (v = 0; v < 3; v++) {
                qlora_tokenizer t3;
                char n1[64], n2[64];
                snprintf(p, sizeof p, "%s/%s.model", dir, names[v]);
                st = qlora_tokenizer_load(&t3, p, &e);
                snprintf(n1, sizeof n1, "tok_variant_%s_encode", what[v]);
                snprintf(n2, sizeof n2, "tok_variant_%s_decode", what[v]);
                if (!tu_check(st == QLORA_OK, n1, "load: %s", e.detail)) continue;
                snprintf(p, sizeof p, "%s/%s_ids.bin", dir, names[v]);
                recs_read(&r1, p, 4);
                snprintf(p, sizeof p, "%s/%s_dec.bin", dir, names[v]);
                recs_read(&r2, p, 1);
                check_encode(&t3, &corpus, &r1, &r2, r1.n, n1, n2);
                recs_free(&r1);
                recs_free(&r2);
                qlora_tokenizer_free(&t3);
            }
        }
        recs_free(&corpus);
        recs_free(&ids);
        recs_free(&dec);
    }
    qlora_tokenizer_free(&t);
    free(model_bytes);
    return tu_finish();
}
