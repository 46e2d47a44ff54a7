// fuzz_tokenizer.c - libFuzzer harness for the two tokenizer loaders: SentencePiece's tokenizer.model
// (protobuf) and Hugging Face's tokenizer.json.
//
//   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -I. test/fuzz_tokenizer.c -o build/fuzz_tokenizer -lm
//   ./build/fuzz_tokenizer -max_total_time=60 -max_len=4096 build/fuzz_tok_corpus test/fuzz_tokenizer_corpus
//
// Each input is loaded both ways (borrowed, so ASan sees any read past its end). A failed load must say why
// and leave the tokenizer empty (LeakSanitizer sees anything it kept). A tokenizer that loads must encode and
// decode fixed texts (byte fallback, unicode, whitespace runs, an added special token) and slices of the input
// itself: every id is below the vocabulary size, the sizing calls agree with the filling ones, and decode
// writes exactly the length it reports. Broken promises stop the run with __builtin_trap().
#define QLORA_IMPLEMENTATION
#include "qlora.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// Encodes text and decodes the ids back, checking what the API promises.
static void fuzz_round(const qlora_tokenizer *t, const char *text, size_t len) {
    qlora_error err;
    int64_t n = -1;
    qlora_status st = qlora_tokenizer_encode(t, text, len, 1, 1, NULL, 0, &n, &err);
    if (st != QLORA_OK && st != QLORA_ERR_SHAPE) {
        if (!err.detail[0]) __builtin_trap();
        return;
    }
    if (n < 0 || (st == QLORA_OK && n != 0)) __builtin_trap();   // with cap 0, OK only for no tokens
    int32_t *ids = (int32_t *)malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    if (!ids) return;
    int64_t n2 = -1;
    if (qlora_tokenizer_encode(t, text, len, 1, 1, ids, n, &n2, &err) != QLORA_OK || n2 != n) __builtin_trap();
    for (int64_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->vocab_size) __builtin_trap();
    size_t need = 0;
    st = qlora_tokenizer_decode(t, ids, n, NULL, 0, &need, &err);
    if (st == QLORA_OK || st == QLORA_ERR_SHAPE) {
        char *out = (char *)malloc(need + 1);
        size_t got = 0;
        if (out) {
            out[need] = 'x';
            if (qlora_tokenizer_decode(t, ids, n, out, need + 1, &got, &err) != QLORA_OK || got != need ||
                out[need] != 0)
                __builtin_trap();
            free(out);
        }
    } else if (!err.detail[0]) {
        __builtin_trap();
    }
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *const texts[] = {
        "",
        " ",
        "67F, 3 d after liver biopsy, on apixaban, Hgb drop, ?bleed",
        "  two  spaces\tand a tab\nnewline",
        "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80 \xe4\xb8\xad\xe6\x96\x87",
        "\xff\xfe invalid \xc3 utf-8 \xe2\x82",
        "<s> typed </s> and <fuzz> special",
        "eGFR 28 mL/min/1.73m2, Cr 2.4 mg/dL (212 umol/L)",
    };
    for (int kind = 0; kind < 2; kind++) {
        qlora_tokenizer t;
        qlora_error err;
        err.detail[0] = 0;
        qlora_status st = kind ? qlora_tokenizer_load_json_buffer(&t, (const char *)data, size, "fuzz.json", &err)
                               : qlora_tokenizer_load_model_buffer(&t, data, size, "fuzz.model", &err);
        if (st != QLORA_OK) {
            if (t.d || !err.detail[0]) __builtin_trap();   // empty, and an error that says why
            qlora_tokenizer_free(&t);
            continue;
        }
        if (t.vocab_size <= 0 || !t.d) __builtin_trap();
        if (t.bos_id >= t.vocab_size || t.eos_id >= t.vocab_size || t.unk_id >= t.vocab_size) __builtin_trap();
        for (int32_t id = 0; id < t.vocab_size && id < 512; id++)
            if (!qlora_tokenizer_piece(&t, id)) __builtin_trap();
        if (qlora_tokenizer_piece(&t, t.vocab_size)) __builtin_trap();
        if (qlora_tokenizer_add_special(&t, "<fuzz>", -1, &err) != QLORA_OK && !err.detail[0]) __builtin_trap();
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) fuzz_round(&t, texts[i], strlen(texts[i]));
        // slices of the input as text: its head, its tail, and all of it (bounded)
        const size_t k = size < 96 ? size : 96;
        fuzz_round(&t, (const char *)data, k);
        fuzz_round(&t, (const char *)data + size - k, k);
        fuzz_round(&t, (const char *)data, size < 1024 ? size : 1024);
        qlora_tokenizer_free(&t);
    }
    return 0;
}
