// fuzz_adapter_load.c - libFuzzer harness for reading a PEFT LoRA adapter directory onto a model:
// adapter_config.json (r, lora_alpha, target_modules as a list or a regex, rank_pattern / alpha_pattern,
// layers_to_transform, rsLoRA, DoRA, bias, fan_in_fan_out) against adapter_model.safetensors.
//
//   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -I. test/fuzz_adapter_load.c -o build/fuzz_adapter_load -lm
//   ./build/fuzz_adapter_load -max_total_time=60 -max_len=4096 build/fuzz_al_corpus test/fuzz_adapter_load_corpus
//
// An input is adapter_config.json, one NUL byte, then adapter_model.safetensors (no NUL: all of it is the
// config). Both are written to a scratch directory of this process and loaded with qlora_model_load_adapter
// onto a fresh two-layer model with rank-2 adapters on every projection. A failed load must say why and change
// nothing: the adapters keep their pointers, ranks, scales and bytes. An adapter that loads must have the
// shapes of the projections it sits on and must prefill two tokens.
#define _XOPEN_SOURCE 700
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include "test/fuzz_dir.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// FNV-1a over every adapter's rank, scale and A, B bytes: what a failed load must leave as it was.
static uint64_t adapters_hash(const qlora_model *m) {
    uint64_t h = 1469598103934665603ull;
    for (int32_t l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_lora *a = &m->layers[l].lora[t];
            const unsigned char *parts[4] = {(const unsigned char *)&a->rank, (const unsigned char *)&a->scale,
                                             (const unsigned char *)a->A, (const unsigned char *)a->B};
            const size_t sizes[4] = {sizeof a->rank, sizeof a->scale,
                                     a->A ? sizeof(float) * (size_t)(a->rank * a->in) : 0,
                                     a->B ? sizeof(float) * (size_t)(a->out * a->rank) : 0};
            for (int k = 0; k < 4; k++)
                for (size_t i = 0; i < sizes[k]; i++) h = (h ^ parts[k][i]) * 1099511628211ull;
        }
    return h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *dir =
        fuzz_dir_files("fuzz_adapter_load", "adapter_config.json", "adapter_model.safetensors", data, size);

    // C 16, H 24, 2 layers, 2 heads over 1 KV head of 8: q/o 16 -> 16, k/v 16 -> 8, gate/up 16 -> 24, down 24 -> 16
    qlora_llama_config cfg = {16, 24, 2, 2, 1, 8, 32, 8, 1e-5f, 10000.0f, 1.0f, 0, 1, 2, -1};
    qlora_model_options o;
    qlora_model m;
    qlora_error err;
    memset(&o, 0, sizeof o);
    o.lora.rank = 2;
    o.lora.alpha = 4;
    err.detail[0] = 0;
    if (qlora_model_init_random(&m, &cfg, &o, 1, &err) != QLORA_OK) __builtin_trap();
    const uint64_t before = adapters_hash(&m);
    const uint32_t targets = m.lora_targets;
    const float *a0 = m.layers[0].lora[0].A;

    if (qlora_model_load_adapter(&m, dir, &err) != QLORA_OK) {
        // a reason, and nothing changed
        if (!err.detail[0] || m.lora_targets != targets || m.layers[0].lora[0].A != a0 || adapters_hash(&m) != before)
            __builtin_trap();
        qlora_model_free(&m);
        return 0;
    }
    for (int32_t l = 0; l < cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_lora *a = &m.layers[l].lora[t];
            if (!a->A) continue;
            if (a->in != m.layers[l].w[t].cols || a->out != m.layers[l].w[t].rows || a->rank < 1 || !a->B)
                __builtin_trap();
        }
    qlora_kv_cache kv;
    const int32_t tokens[2] = {0, cfg.vocab_size - 1};
    float logits[32];
    if (qlora_kv_cache_init(&kv, &m, 2, 0, &err) != QLORA_OK) __builtin_trap();
    if (qlora_model_prefill(&m, &kv, tokens, 2, logits, &err) != QLORA_OK && !err.detail[0]) __builtin_trap();
    qlora_kv_cache_free(&kv);
    qlora_model_free(&m);
    return 0;
}
