// fuzz_safetensors.c - libFuzzer harness for the safetensors reader, the JSON parser and config.json.
//
//   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -I. test/fuzz_safetensors.c -o build/fuzz_safetensors -lm
//   mkdir -p build/fuzz_corpus && ./build/fuzz_safetensors -max_total_time=60 -max_len=4096 build/fuzz_corpus
//
// Each input is validated as a safetensors image (borrowed, not copied, so ASan sees any read past
// its end), parsed as JSON text and as a model's config.json. On success every tensor byte is touched
// and the lookups are exercised; invariants that the reader promises are checked with __builtin_trap().
#define QLORA_IMPLEMENTATION
#include "qlora.h"

static volatile uint8_t fuzz_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    qlora_safetensors st;
    qlora_error err;
    if (qlora_safetensors_open_memory(&st, data, size, 0, "fuzz", &err) == QLORA_OK) {
        int64_t covered = 0;
        for (int64_t i = 0; i < st.n_tensors; i++) {
            const qlora_st_tensor *t = &st.tensors[i];
            if (t->offset != covered || t->data < st.data || t->data + t->nbytes > st.data + st.data_size) __builtin_trap();
            if (qlora_safetensors_find(&st, t->name) != t) __builtin_trap();
            uint8_t acc = 0;
            for (int64_t j = 0; j < t->nbytes; j++) acc ^= t->data[j];
            fuzz_sink = acc;
            if (t->numel <= 4096 && (t->dtype == QLORA_DTYPE_F16 || t->dtype == QLORA_DTYPE_BF16 ||
                                     t->dtype == QLORA_DTYPE_F32 || t->dtype == QLORA_DTYPE_F64)) {
                float buf[4096];
                if (qlora_tensor_to_f32(buf, t, &err) != QLORA_OK) __builtin_trap();
            }
            covered += t->nbytes;
        }
        if (covered != st.data_size) __builtin_trap();
        for (int64_t i = 0; i < st.n_meta; i++)
            if (qlora_safetensors_meta(&st, st.meta_keys[i]) == NULL) __builtin_trap();
        qlora_safetensors_close(&st);
    } else if (st.base || st.tensors || st.path) {
        __builtin_trap();  // a failed open must leave the struct empty
    }

    // The same bytes as JSON text.
    qlora_json_doc doc;
    if (qlora_json_parse(&doc, (const char *)data, size, &err) == QLORA_OK) {
        // Re-serialise strings through the writer and parse the result back.
        qlora_json_writer w;
        qlora_jw_init(&w, (int)(size % 3) - 1, (int)(size & 1));
        const qlora_json *r = &doc.root;
        qlora_jw_array_begin(&w);
        if (r->type == QLORA_JSON_STRING) qlora_jw_string_n(&w, r->str, r->str_len);
        if (r->type == QLORA_JSON_NUMBER) qlora_jw_double(&w, r->number);
        for (int64_t i = 0; i < r->count && i < 64; i++) {
            if (r->keys) qlora_jw_string(&w, r->keys[i]);
            if (r->items[i].type == QLORA_JSON_STRING) qlora_jw_string_n(&w, r->items[i].str, r->items[i].str_len);
            if (r->items[i].type == QLORA_JSON_NUMBER) qlora_jw_double(&w, r->items[i].number);
        }
        qlora_jw_array_end(&w);
        if (qlora_jw_finish(&w, 0, &err) != QLORA_OK) __builtin_trap();
        qlora_json_doc back;
        if (qlora_json_parse(&back, w.buf, w.len, &err) != QLORA_OK) __builtin_trap();
        qlora_json_free(&back);
        qlora_jw_free(&w);
        qlora_json_free(&doc);
    }

    // The same bytes as a model's config.json: what parses must also validate (the parser validates), within
    // the limits the loader sizes tables by.
    qlora_llama_config cfg;
    if (qlora_llama_config_parse(&cfg, (const char *)data, size, "fuzz.json", &err) == QLORA_OK) {
        if (qlora_llama_config_validate(&cfg, &err) != QLORA_OK) __builtin_trap();
        if (cfg.hidden_size <= 0 || cfg.head_dim <= 0 || cfg.head_dim % 2 || cfg.n_heads % cfg.n_kv_heads ||
            cfg.max_position_embeddings > QLORA_MAX_POSITIONS)
            __builtin_trap();
    }
    return 0;
}
