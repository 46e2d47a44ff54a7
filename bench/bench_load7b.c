// bench_load7b.c - loading a Meditron-7b-shaped checkpoint from disk: peak RSS (target < 6 GiB)
// and load time. Runs only with the argument "7b" (./build.sh bench 7b): it first writes a
// 13.5 GB bf16 checkpoint in Hugging Face's sharded layout (random weights, Meditron-7b's config,
// spec §6.4) under build/tmp, then loads it in a child process, quantizing the seven projections
// to NF4 + DQ as they stream in, and reads the child's VmHWM. The checkpoint is deleted afterwards
// unless QLORA_BENCH_KEEP=1.
#define _POSIX_C_SOURCE 200809L
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define HIDDEN 4096
#define INTER 11008
#define LAYERS 32
#define VOCAB 32017
#define SHARDS 4

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static long vmhwm_kb(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
    fclose(f);
    return kb;
}

typedef struct tensor_spec { char name[96]; int64_t rows, cols; int shard; } tensor_spec;

static int list_tensors(tensor_spec *t) {
    int n = 0;
    static const char *proj[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"};
    snprintf(t[n].name, 96, "model.embed_tokens.weight"); t[n].rows = VOCAB; t[n].cols = HIDDEN; t[n++].shard = 0;
    for (int l = 0; l < LAYERS; l++) {
        int shard = l * SHARDS / LAYERS;
        for (int p = 0; p < 7; p++) {
            snprintf(t[n].name, 96, "model.layers.%d.%s.weight", l, proj[p]);
            t[n].rows = p >= 4 && p < 6 ? INTER : HIDDEN;
            t[n].cols = p == 6 ? INTER : HIDDEN;
            t[n++].shard = shard;
        }
        snprintf(t[n].name, 96, "model.layers.%d.input_layernorm.weight", l); t[n].rows = 1; t[n].cols = HIDDEN; t[n++].shard = shard;
        snprintf(t[n].name, 96, "model.layers.%d.post_attention_layernorm.weight", l); t[n].rows = 1; t[n].cols = HIDDEN; t[n++].shard = shard;
    }
    snprintf(t[n].name, 96, "model.norm.weight"); t[n].rows = 1; t[n].cols = HIDDEN; t[n++].shard = SHARDS - 1;
    snprintf(t[n].name, 96, "lm_head.weight"); t[n].rows = VOCAB; t[n].cols = HIDDEN; t[n++].shard = SHARDS - 1;
    return n;
}

// Writes config.json, the shards and model.safetensors.index.json. Random bf16 values come from a
// small table of N(0, 0.02²)-like values indexed by a cheap LCG, so writing is I/O-bound.
static int write_checkpoint(const char *dir) {
    static tensor_spec t[LAYERS * 9 + 3];
    int n = list_tensors(t);
    char path[1024];
    qlora_error err = {0};
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/config.json", dir);
    const char *cfg = "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": 4096, "
                      "\"intermediate_size\": 11008, \"num_hidden_layers\": 32, \"num_attention_heads\": 32, "
                      "\"num_key_value_heads\": 32, \"vocab_size\": 32017, \"max_position_embeddings\": 2048, "
                      "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
                      "\"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"torch_dtype\": \"bfloat16\"}\n";
    if (qlora_write_file_atomic(path, cfg, strlen(cfg), &err) != QLORA_OK) { fprintf(stderr, "%s\n", err.detail); return 0; }
    uint16_t table[4096];
    qlora_rng rng;
    qlora_rng_seed(&rng, 7);
    for (int i = 0; i < 4096; i++) table[i] = qlora_bf16_from_f32(0.02f * qlora_rng_normal(&rng));
    const int64_t chunk = 1 << 22;
    uint16_t *buf = (uint16_t *)malloc(sizeof(uint16_t) * chunk);
    uint32_t lcg = 12345;
    qlora_json_writer index;
    qlora_jw_init(&index, 2, 0);
    qlora_jw_object_begin(&index);
    qlora_jw_key(&index, "metadata");
    qlora_jw_object_begin(&index);
    int64_t total = 0;
    for (int i = 0; i < n; i++) total += t[i].rows * t[i].cols * 2;
    qlora_jw_key(&index, "total_size");
    qlora_jw_int(&index, total);
    qlora_jw_object_end(&index);
    qlora_jw_key(&index, "weight_map");
    qlora_jw_object_begin(&index);
    for (int s = 0; s < SHARDS; s++) {
        qlora_st_entry e[LAYERS * 9 + 3];
        int ne = 0;
        char shard[64];
        snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", s + 1, SHARDS);
        for (int i = 0; i < n; i++) {
            if (t[i].shard != s) continue;
            memset(&e[ne], 0, sizeof e[ne]);
            e[ne].name = t[i].name;
            e[ne].dtype = QLORA_DTYPE_BF16;
            e[ne].data = buf;   // begin ignores the data; the bytes are appended below
            e[ne].ndim = t[i].rows == 1 ? 1 : 2;
            e[ne].shape[0] = t[i].rows == 1 ? t[i].cols : t[i].rows;
            e[ne].shape[1] = t[i].cols;
            ne++;
            qlora_jw_key(&index, t[i].name);
            qlora_jw_string(&index, shard);
        }
        qlora_st_writer w;
        snprintf(path, sizeof path, "%s/%s", dir, shard);
        if (qlora_st_writer_begin(&w, path, e, ne, NULL, &err) != QLORA_OK) { fprintf(stderr, "%s\n", err.detail); return 0; }
        for (int i = 0; i < n; i++) {
            if (t[i].shard != s) continue;
            int64_t left = t[i].rows * t[i].cols;
            int norm = t[i].rows == 1;
            while (left > 0) {
                int64_t k = left < chunk ? left : chunk;
                for (int64_t j = 0; j < k; j++) {
                    lcg = lcg * 1664525u + 1013904223u;
                    buf[j] = norm ? qlora_bf16_from_f32(1.0f) : table[lcg >> 20];
                }
                if (qlora_st_writer_append(&w, buf, k * 2, &err) != QLORA_OK) { fprintf(stderr, "%s\n", err.detail); return 0; }
                left -= k;
            }
        }
        if (qlora_st_writer_finish(&w, &err) != QLORA_OK) { fprintf(stderr, "%s\n", err.detail); return 0; }
    }
    qlora_jw_object_end(&index);
    qlora_jw_object_end(&index);
    if (qlora_jw_finish(&index, 1, &err) != QLORA_OK) return 0;
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    int ok = qlora_write_file_atomic(path, index.buf, index.len, &err) == QLORA_OK;
    qlora_jw_free(&index);
    free(buf);
    return ok;
}

int main(int argc, char **argv) {
    int run = 0;
    for (int i = 1; i < argc; i++) run |= !strcmp(argv[i], "7b");
    if (!run) {
        printf("7B checkpoint load: not run (it writes a 13.5 GB checkpoint; use ./build.sh bench 7b)\n");
        return 0;
    }
    const char *dir = getenv("QLORA_BENCH_7B_DIR") ? getenv("QLORA_BENCH_7B_DIR") : "build/tmp/meditron7b-shaped";
    mkdir("build", 0755);
    mkdir("build/tmp", 0755);
    char probe[1024];
    snprintf(probe, sizeof probe, "%s/model.safetensors.index.json", dir);
    struct stat st;
    if (stat(probe, &st) != 0) {
        double t0 = now_s();
        printf("writing a Meditron-7b-shaped bf16 checkpoint to %s ...\n", dir);
        fflush(stdout);
        if (!write_checkpoint(dir)) return 1;
        printf("  written in %.1f s\n", now_s() - t0);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        qlora_model m;
        qlora_model_options opt;
        memset(&opt, 0, sizeof opt);
        opt.lora.rank = 16;
        opt.lora.alpha = 16.0f;
        qlora_error err = {0};
        double t0 = now_s();
        if (qlora_model_load(&m, dir, &opt, &err) != QLORA_OK) { fprintf(stderr, "load: %s\n", err.detail); fflush(stdout); _exit(1); }
        double secs = now_s() - t0;
        long hwm = vmhwm_kb();
        double gib = 1024.0 * 1024.0 * 1024.0;
        printf("| 7B checkpoint load (bf16 → NF4+DQ, r=16 LoRA on 7 targets) | peak RSS %.2f GiB | target < 6 GiB | %s |\n",
               hwm * 1024.0 / gib, hwm * 1024.0 / gib < 6.0 ? "met" : "MISSED");
        printf("|   frozen weights held %.2f GiB; load time %.1f s (%.0f M params/s) |\n",
               (double)qlora_model_weight_bytes(&m) / gib, secs, 6.74e9 / secs / 1e6);
        qlora_model_free(&m);
        fflush(stdout);   // _exit does not flush stdio
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (!getenv("QLORA_BENCH_KEEP")) {
        char cmd[1200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : 1;
}
