// fuzz_model_load.c - libFuzzer harness for loading a whole Hugging Face model directory: config.json against
// model.safetensors, quantization to NF4 as the tensors load, the adapters, then a two-token prefill.
//
//   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -I. test/fuzz_model_load.c -o build/fuzz_model_load -lm
//   ./build/fuzz_model_load -max_total_time=60 -max_len=20000 build/fuzz_ml_corpus test/fuzz_model_load_corpus
//
// libFuzzer max_len: 20000 (build.sh reads this line: the bitsandbytes 4-bit seed, one layer of 16, is 18 KB)
//
// An input is config.json, one NUL byte, then model.safetensors (no NUL: all of it is config.json). Both are
// written to a scratch directory of this process and loaded with qlora_model_load. A failed load must say why
// and leave the model empty; a model that loads must prefill two tokens. libFuzzer's malloc limit (the RSS limit,
// 2 GB) stops the run when a file makes the loader allocate what it claims before checking it.
#define _XOPEN_SOURCE 700
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include "test/fuzz_dir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir = fuzz_dir_files("fuzz_model_load", "config.json", "model.safetensors", data, size);

    qlora_model m;
    qlora_model_options o;
    qlora_error err;
    memset(&o, 0, sizeof o);
    o.lora.rank = 2;
    o.lora.alpha = 4;
    err.detail[0] = 0;
    if (qlora_model_load(&m, dir, &o, &err) != QLORA_OK) {
        if (!err.detail[0] || m.layers || m.arena) __builtin_trap();   // a reason, and nothing kept
        return 0;
    }
    qlora_kv_cache kv;
    const int32_t tokens[2] = { 0, m.cfg.vocab_size - 1 };
    if (m.cfg.max_position_embeddings >= 2 && qlora_kv_cache_init(&kv, &m, 2, 0, &err) == QLORA_OK) {
        float *logits = (float *)malloc(sizeof(float) * (size_t)m.cfg.vocab_size);
        if (logits && qlora_model_prefill(&m, &kv, tokens, 2, logits, &err) != QLORA_OK && !err.detail[0])
            __builtin_trap();
        free(logits);
        qlora_kv_cache_free(&kv);
    }
    qlora_model_free(&m);
    return 0;
}
