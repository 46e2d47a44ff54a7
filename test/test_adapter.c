// test_adapter.c - PEFT adapter files: adapter_config.json field by field and adapter_model.safetensors
// key by key (with the library's own parsers and with test/ref/adapter_ref.py: Python json + a numpy
// safetensors reader), a bit-exact round trip, loading PEFT-style adapters written by Python
// (".default." keys, rank_pattern / alpha_pattern, F16 / BF16, regex target_modules, missing keys),
// and the errors (shape mismatch naming module and shapes, missing targeted module, DoRA, ...).
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

// A 2-layer toy Llama: hidden 64, kv 32 (GQA), intermediate 96.
static const char *proj[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                              "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
static const int64_t proj_in[7] = {64, 64, 64, 64, 64, 64, 96};
static const int64_t proj_out[7] = {64, 32, 32, 64, 96, 96, 64};

#define NMOD 14
static char names[NMOD][64];

static void module_list(qlora_adapter_module *mods, qlora_lora *loras) {
    for (int l = 0; l < 2; l++)
        for (int p = 0; p < 7; p++) {
            int i = 7 * l + p;
            snprintf(names[i], sizeof names[i], "model.layers.%d.%s", l, proj[p]);
            mods[i].name = names[i];
            mods[i].lora = &loras[i];
            mods[i].in = proj_in[p];
            mods[i].out = proj_out[p];
        }
}

static int mkdir_p(const char *dir) {
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s/raw", dir, dir);
    return system(cmd) == 0;
}

static const qlora_json *get(const qlora_json *o, const char *k) { return qlora_json_get(o, k); }

static int is_str(const qlora_json *v, const char *s) { return v && v->type == QLORA_JSON_STRING && strcmp(v->str, s) == 0; }
static int is_bool(const qlora_json *v, int b) { return v && v->type == QLORA_JSON_BOOL && v->boolean == b; }
static int is_null(const qlora_json *v) { return v && v->type == QLORA_JSON_NULL; }
static int is_int(const qlora_json *v, int64_t x) { return v && v->type == QLORA_JSON_NUMBER && v->is_integer && v->integer == x; }

static void test_save(const char *dir, qlora_lora *loras, qlora_adapter_module *mods) {
    qlora_error e;
    // ranks 8 (one module 4), alpha 16 (one module 32), dropout 0.05; B random so it is not all zero
    for (int i = 0; i < NMOD; i++) {
        qlora_lora_config c;
        c.rank = i == 9 ? 4 : 8;   // layer 1 v_proj
        c.alpha = i == 3 ? 32.0f : 16.0f;   // layer 0 o_proj
        c.dropout = 0.05f;
        c.use_rslora = 0;
        qlora_lora_init(&loras[i], mods[i].in, mods[i].out, &c, 100 + (uint64_t)i, NULL);
        tu_fill_normal(loras[i].B, (long)(loras[i].out * loras[i].rank), 0.02);
    }
    qlora_status st = qlora_adapter_save(dir, mods, NMOD, "test/base-model", &e);
    tu_check(st == QLORA_OK, "adapter save", "%s", e.detail);
    if (st != QLORA_OK) return;

    // adapter_config.json, field by field (spec §5.3), with the library's JSON parser
    char path[1200];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    qlora_json_doc doc;
    st = qlora_json_read_file(&doc, path, &e);
    tu_check(st == QLORA_OK, "adapter_config.json parses", "%s", e.detail);
    if (st != QLORA_OK) return;
    const qlora_json *c = &doc.root;
    int sorted = c->type == QLORA_JSON_OBJECT && c->count == 20;
    for (int64_t i = 1; sorted && i < c->count; i++) sorted = strcmp(c->keys[i - 1], c->keys[i]) < 0;
    tu_check(sorted, "adapter_config.json: 20 LoraConfig keys in sorted order", "%lld keys", (long long)c->count);
    tu_check(is_str(get(c, "peft_type"), "LORA") && is_str(get(c, "task_type"), "CAUSAL_LM") && is_int(get(c, "r"), 8) &&
                 is_int(get(c, "lora_alpha"), 16) && is_str(get(c, "bias"), "none"),
             "adapter_config.json: peft_type LORA, task_type CAUSAL_LM, r 8, lora_alpha 16 (int), bias none", NULL);
    const qlora_json *dp = get(c, "lora_dropout");
    tu_check(dp && dp->type == QLORA_JSON_NUMBER && (float)dp->number == 0.05f, "adapter_config.json: lora_dropout 0.05",
             NULL);
    tu_check(is_bool(get(c, "fan_in_fan_out"), 0) && is_bool(get(c, "use_rslora"), 0) && is_bool(get(c, "use_dora"), 0) &&
                 is_bool(get(c, "init_lora_weights"), 1) && is_bool(get(c, "inference_mode"), 1) &&
                 is_bool(get(c, "lora_bias"), 0),
             "adapter_config.json: fan_in_fan_out, use_rslora, use_dora, lora_bias false; init_lora_weights, inference_mode true",
             NULL);
    tu_check(is_null(get(c, "modules_to_save")) && is_null(get(c, "revision")) && is_null(get(c, "layers_to_transform")) &&
                 is_null(get(c, "layers_pattern")) && is_str(get(c, "base_model_name_or_path"), "test/base-model"),
             "adapter_config.json: modules_to_save, revision, layers_* null; base_model_name_or_path", NULL);
    const qlora_json *tm = get(c, "target_modules");
    static const char *want_tm[7] = {"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"};
    int tm_ok = tm && tm->type == QLORA_JSON_ARRAY && tm->count == 7;
    for (int i = 0; tm_ok && i < 7; i++) tm_ok = is_str(&tm->items[i], want_tm[i]);
    tu_check(tm_ok, "adapter_config.json: target_modules = the 7 projections, sorted", NULL);
    const qlora_json *rp = get(c, "rank_pattern"), *ap = get(c, "alpha_pattern");
    tu_check(rp && rp->type == QLORA_JSON_OBJECT && rp->count == 1 && is_int(get(rp, "model.layers.1.self_attn.v_proj"), 4) &&
                 ap && ap->type == QLORA_JSON_OBJECT && ap->count == 1 &&
                 is_int(get(ap, "model.layers.0.self_attn.o_proj"), 32),
             "adapter_config.json: rank_pattern / alpha_pattern hold the odd modules", NULL);
    qlora_json_free(&doc);

    // adapter_model.safetensors, key by key, with the library's reader
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    qlora_safetensors sf;
    st = qlora_safetensors_open(&sf, path, &e);
    int ok = st == QLORA_OK && sf.n_tensors == 2 * NMOD && qlora_safetensors_meta(&sf, "format") &&
             strcmp(qlora_safetensors_meta(&sf, "format"), "pt") == 0 && sf.n_meta == 1;
    for (int i = 0; ok && i < NMOD; i++) {
        char key[160];
        snprintf(key, sizeof key, "base_model.model.%s.lora_A.weight", names[i]);
        const qlora_st_tensor *a = qlora_safetensors_find(&sf, key);
        snprintf(key, sizeof key, "base_model.model.%s.lora_B.weight", names[i]);
        const qlora_st_tensor *b = qlora_safetensors_find(&sf, key);
        ok = a && b && a->dtype == QLORA_DTYPE_F32 && b->dtype == QLORA_DTYPE_F32 && a->ndim == 2 && b->ndim == 2 &&
             a->shape[0] == loras[i].rank && a->shape[1] == mods[i].in && b->shape[0] == mods[i].out &&
             b->shape[1] == loras[i].rank && memcmp(a->data, loras[i].A, (size_t)a->nbytes) == 0 &&
             memcmp(b->data, loras[i].B, (size_t)b->nbytes) == 0;
        if (!ok) printf("# tensor check failed for %s\n", names[i]);
    }
    tu_check(ok, "adapter_model.safetensors: {\"format\":\"pt\"}, 28 keys base_model.model.<module>.lora_{A,B}.weight, "
                 "F32 [r,in] / [out,r], values", "%s", st == QLORA_OK ? "" : e.detail);
    qlora_safetensors_close(&sf);

    // the same through Python's json and a numpy safetensors reader
    if (!tu_have_python("numpy")) {
        tu_skip("adapter files read back by Python json + numpy", "/usr/bin/python3 lacks numpy");
        return;
    }
    snprintf(path, sizeof path, "%s/expect.txt", dir);
    FILE *f = fopen(path, "w");
    fprintf(f, "config 8 16 0.05 test/base-model\n");
    for (int i = 0; i < NMOD; i++) {
        fprintf(f, "module %s %lld %lld %d %g\n", names[i], (long long)mods[i].in, (long long)mods[i].out,
                (int)loras[i].rank, (double)loras[i].alpha);
        char raw[2400];
        snprintf(raw, sizeof raw, "%s/raw/%s.A.f32", dir, names[i]);
        tu_write(raw, loras[i].A, (size_t)(loras[i].rank * loras[i].in) * 4);
        snprintf(raw, sizeof raw, "%s/raw/%s.B.f32", dir, names[i]);
        tu_write(raw, loras[i].B, (size_t)(loras[i].out * loras[i].rank) * 4);
    }
    fclose(f);
    int rc = tu_python("test/ref/adapter_ref.py check %s", dir);
    tu_check(rc == 0, "adapter files read back by Python json + numpy: json.dumps(indent=2, sort_keys=True) layout, "
                      "fields, keys, shapes, values", "adapter_ref.py check exited with %d", rc);
}

static void test_roundtrip(const char *dir, qlora_lora *saved, qlora_adapter_module *mods_saved) {
    qlora_lora loras[NMOD];
    qlora_adapter_module mods[NMOD];
    memset(loras, 0, sizeof loras);
    module_list(mods, loras);
    qlora_adapter_config cfg;
    qlora_error e;
    qlora_status st = qlora_adapter_load(dir, mods, NMOD, &cfg, &e);
    int ok = st == QLORA_OK && cfg.n_loaded == NMOD && cfg.r == 8 && cfg.lora_alpha == 16.0f && cfg.lora_dropout == 0.05f &&
             strcmp(cfg.base_model_name_or_path, "test/base-model") == 0;
    for (int i = 0; ok && i < NMOD; i++) {
        const qlora_lora *a = &loras[i], *b = &saved[i];
        ok = a->A && a->rank == b->rank && a->alpha == b->alpha && a->scale == b->scale && a->dropout == b->dropout &&
             a->use_rslora == b->use_rslora && a->in == b->in && a->out == b->out &&
             memcmp(a->A, b->A, (size_t)(a->rank * a->in) * 4) == 0 && memcmp(a->B, b->B, (size_t)(a->out * a->rank) * 4) == 0;
    }
    tu_check(ok, "round trip save -> load is bit-exact (A, B, rank, alpha, scale, dropout) incl. rank/alpha patterns", "%s",
             st == QLORA_OK ? "" : e.detail);

    // errors leave the caller's layers untouched
    float *a0 = loras[0].A;
    mods[5].in = 65;   // layer 0 up_proj expects in 65
    st = qlora_adapter_load(dir, mods, NMOD, NULL, &e);
    tu_check(st == QLORA_ERR_SHAPE && strstr(e.detail, "model.layers.0.mlp.up_proj") && strstr(e.detail, "[8, 64]") &&
                 strstr(e.detail, "65") && loras[0].A == a0,
             "shape mismatch is QLORA_ERR_SHAPE naming the module and both shapes; nothing changed", "%s", e.detail);
    mods[5].in = 64;
    st = qlora_adapter_load(dir, mods, NMOD - 1, NULL, &e);
    tu_check(st == QLORA_ERR_UNSUPPORTED && strstr(e.detail, "model.layers.1.mlp.down_proj"),
             "a tensor of a module the model lacks is QLORA_ERR_UNSUPPORTED naming it", "%s", e.detail);
    char bad[1200];
    snprintf(bad, sizeof bad, "%s/missing-dir", dir);
    st = qlora_adapter_load(bad, mods, NMOD, NULL, &e);
    tu_check(st == QLORA_ERR_IO && strstr(e.detail, "adapter_config.json"), "a missing adapter is QLORA_ERR_IO naming the file",
             "%s", e.detail);
    for (int i = 0; i < NMOD; i++) qlora_lora_free(&loras[i]);

    // save refuses mixed dropout (PEFT stores one lora_dropout)
    float keep = saved[2].dropout;
    saved[2].dropout = 0.1f;
    snprintf(bad, sizeof bad, "%s/mixed", dir);
    st = qlora_adapter_save(bad, mods_saved, NMOD, NULL, &e);
    tu_check(st == QLORA_ERR_ARG && strstr(e.detail, "dropout"), "save with mixed dropout is QLORA_ERR_ARG", "%s", e.detail);
    saved[2].dropout = keep;
}

// Replaces the first occurrence of `from` in dir/adapter_config.json.
static void edit_config(const char *src_dir, const char *dst_dir, const char *from, const char *to) {
    char cmd[4000];
    snprintf(cmd, sizeof cmd, "rm -rf %s && cp -r %s %s", dst_dir, src_dir, dst_dir);
    if (system(cmd) != 0) return;
    char path[2400];
    snprintf(path, sizeof path, "%s/adapter_config.json", dst_dir);
    void *data = NULL;
    size_t n = 0;
    if (qlora_read_file(path, &data, &n, NULL) != QLORA_OK) return;
    char *s = (char *)data, *p = strstr(s, from);
    if (p) {
        FILE *f = fopen(path, "wb");
        fwrite(s, 1, (size_t)(p - s), f);
        fputs(to, f);
        fputs(p + strlen(from), f);
        fclose(f);
    }
    QLORA_FREE(data);
}

static int raw_equal(const char *dir, const char *name, char ab, const float *x, int64_t n) {
    char path[2400];
    snprintf(path, sizeof path, "%s/raw/%s.%c.f32", dir, name, ab);
    float *want = (float *)malloc((size_t)n * 4);
    int ok = tu_read(path, want, (size_t)n * 4) && memcmp(want, x, (size_t)n * 4) == 0;
    free(want);
    return ok;
}

static void test_peft_written(const char *base) {
    if (!tu_have_python("numpy")) {
        tu_skip("load PEFT-style adapters written by Python", "/usr/bin/python3 lacks numpy");
        return;
    }
    char cmd[2400], d1[1200], d2[1200];
    snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", base, base);
    if (system(cmd) != 0 || tu_python("test/ref/adapter_ref.py write %s", base) != 0) {
        tu_check(0, "load PEFT-style adapters written by Python", "adapter_ref.py write failed");
        return;
    }
    snprintf(d1, sizeof d1, "%s/peft1", base);
    snprintf(d2, sizeof d2, "%s/peft2", base);
    qlora_lora loras[NMOD];
    qlora_adapter_module mods[NMOD];
    memset(loras, 0, sizeof loras);
    module_list(mods, loras);
    qlora_adapter_config cfg;
    qlora_error e;
    qlora_status st = qlora_adapter_load(d1, mods, NMOD, &cfg, &e);
    // q_proj (index 0, 7) and v_proj (2, 9) loaded; v_proj of layer 1 rank 4; v alpha 32 via "v_proj"
    int ok = st == QLORA_OK && cfg.n_loaded == 4 && cfg.r == 8 && cfg.lora_alpha == 16.0f && cfg.lora_dropout == 0.0f &&
             !cfg.use_rslora && strcmp(cfg.base_model_name_or_path, "peft/base") == 0;
    static const int loaded[4] = {0, 2, 7, 9};
    for (int k = 0; ok && k < 4; k++) {
        const qlora_lora *l = &loras[loaded[k]];
        int32_t want_rank = loaded[k] == 9 ? 4 : 8;
        float want_alpha = (loaded[k] == 2 || loaded[k] == 9) ? 32.0f : 16.0f;
        ok = l->A && l->rank == want_rank && l->alpha == want_alpha && l->scale == want_alpha / (float)want_rank &&
             raw_equal(d1, names[loaded[k]], 'A', l->A, l->rank * l->in) &&
             raw_equal(d1, names[loaded[k]], 'B', l->B, l->out * l->rank);
        if (!ok) printf("# module %s: rank %d alpha %g\n", names[loaded[k]], (int)l->rank, (double)l->alpha);
    }
    for (int i = 0; ok && i < NMOD; i++)
        if (i != 0 && i != 2 && i != 7 && i != 9) ok = loras[i].A == NULL;
    tu_check(ok, "PEFT adapter with .default. keys, rank_pattern, alpha_pattern by suffix, an F16 tensor, missing optional "
                 "keys (PEFT defaults) loads exactly", "%s", st == QLORA_OK ? "" : e.detail);
    for (int i = 0; i < NMOD; i++) qlora_lora_free(&loras[i]);

    st = qlora_adapter_load(d2, mods, NMOD, &cfg, &e);
    ok = st == QLORA_OK && cfg.n_loaded == 2 && cfg.use_rslora && (float)cfg.lora_dropout == 0.1f && loras[0].A && loras[1].A &&
         loras[0].rank == 4 && loras[0].scale == 8.0f / 2.0f && loras[0].use_rslora && loras[0].dropout == 0.1f &&
         raw_equal(d2, names[0], 'A', loras[0].A, 4 * 64) && raw_equal(d2, names[1], 'B', loras[1].B, 32 * 4);
    for (int i = 2; ok && i < NMOD; i++) ok = loras[i].A == NULL;
    tu_check(ok, "PEFT adapter with a regex target_modules, layers_to_transform, BF16 tensors, rsLoRA loads exactly", "%s",
             st == QLORA_OK ? "" : e.detail);
    for (int i = 0; i < NMOD; i++) qlora_lora_free(&loras[i]);

    // a module targeted by the list but without tensors
    char d3[2400];
    snprintf(d3, sizeof d3, "%s/peft_missing", base);
    edit_config(d1, d3, "\"q_proj\",", "\"q_proj\",\n    \"k_proj\",");
    st = qlora_adapter_load(d3, mods, NMOD, NULL, &e);
    tu_check(st == QLORA_ERR_FORMAT && strstr(e.detail, "model.layers.0.self_attn.k_proj"),
             "a targeted module without tensors is QLORA_ERR_FORMAT naming it", "%s", e.detail);
    snprintf(d3, sizeof d3, "%s/peft_dora", base);
    edit_config(d1, d3, "\"r\": 8,", "\"r\": 8,\n  \"use_dora\": true,");
    st = qlora_adapter_load(d3, mods, NMOD, NULL, &e);
    tu_check(st == QLORA_ERR_UNSUPPORTED && strstr(e.detail, "use_dora"), "a DoRA adapter is QLORA_ERR_UNSUPPORTED", "%s",
             e.detail);
    snprintf(d3, sizeof d3, "%s/peft_rank", base);
    edit_config(d1, d3, "\"model.layers.1.self_attn.v_proj\": 4", "\"model.layers.1.self_attn.v_proj\": 6");
    st = qlora_adapter_load(d3, mods, NMOD, NULL, &e);
    tu_check(st == QLORA_ERR_SHAPE && strstr(e.detail, "rank_pattern") && strstr(e.detail, "v_proj"),
             "rank_pattern disagreeing with the tensor is QLORA_ERR_SHAPE", "%s", e.detail);
    snprintf(d3, sizeof d3, "%s/peft_regexkey", base);
    edit_config(d1, d3, "\"v_proj\": 32", "\".*v_proj\": 32");
    st = qlora_adapter_load(d3, mods, NMOD, NULL, &e);
    tu_check(st == QLORA_ERR_UNSUPPORTED && strstr(e.detail, "alpha_pattern"),
             "a regular-expression alpha_pattern key is QLORA_ERR_UNSUPPORTED (not silently ignored)", "%s", e.detail);
}

int main(void) {
    char dir[512], cmd[1200];
    snprintf(cmd, sizeof cmd, "mkdir -p %s", tu_tmpdir());
    if (system(cmd) != 0) return 1;
    snprintf(dir, sizeof dir, "%s/adapter_saved", tu_tmpdir());
    if (!mkdir_p(dir)) return 1;
    qlora_lora loras[NMOD];
    qlora_adapter_module mods[NMOD];
    memset(loras, 0, sizeof loras);
    module_list(mods, loras);
    tu_seed(3);
    test_save(dir, loras, mods);
    test_roundtrip(dir, loras, mods);
    for (int i = 0; i < NMOD; i++) qlora_lora_free(&loras[i]);
    snprintf(dir, sizeof dir, "%s/adapter_peft", tu_tmpdir());
    test_peft_written(dir);
    return tu_finish();
}
