// fuzz_model_load.c - libFuzzer harness for loading a whole Hugging Face model directory: config.json against
// model.safetensors, quantization to NF4 as the tensors load, the adapters, then a two-token prefill.
//
//   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -I. test/fuzz_model_load.c -o build/fuzz_model_load -lm
//   ./build/fuzz_model_load -max_total_time=60 -max_len=4096 build/fuzz_ml_corpus test/fuzz_model_load_corpus
//
// An input is config.json, one NUL byte, then model.safetensors (no NUL: all of it is config.json). Both are
// written to a scratch directory of this process and loaded with qlora_model_load. A failed load must say why
// and leave the model empty; a model that loads must prefill two tokens. libFuzzer's malloc limit (the RSS limit,
// 2 GB) stops the run when a file makes the loader allocate what it claims before checking it.
#define _XOPEN_SOURCE 700
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir[256];

// Removes the scratch directory when libFuzzer exits.
static void fuzz_cleanup(void) {
    char path[320];
    snprintf(path, sizeof path, "%s/config.json", fuzz_dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/model.safetensors", fuzz_dir);
    unlink(path);
    rmdir(fuzz_dir);
}

static int fuzz_write(const char *name, const uint8_t *p, size_t n) {
    char path[320];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!fuzz_dir[0]) {
        snprintf(fuzz_dir, sizeof fuzz_dir, "/tmp/fuzz_model_load_%ld", (long)getpid());
        if (mkdir(fuzz_dir, 0700) != 0 && errno != EEXIST) __builtin_trap();
        atexit(fuzz_cleanup);
    }
    const uint8_t *nul = (const uint8_t *)memchr(data, 0, size);
    const size_t nc = nul ? (size_t)(nul - data) : size;
    if (!fuzz_write("config.json", data, nc)) __builtin_trap();
    if (!fuzz_write("model.safetensors", nul ? nul + 1 : data, nul ? size - nc - 1 : 0)) __builtin_trap();

    qlora_model m;
    qlora_model_options o;
    qlora_error err;
    memset(&o, 0, sizeof o);
    o.lora.rank = 2;
    o.lora.alpha = 4;
    err.detail[0] = 0;
    if (qlora_model_load(&m, fuzz_dir, &o, &err) != QLORA_OK) {
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
