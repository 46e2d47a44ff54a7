// test_mlflow.c - the MLflow file-store writer: runs, experiments, params, metrics, tags, artifacts,
// MLmodel + log-model history, model registry; key validation and immutability; then
// test/ref/mlflow_check.py reads everything back with PyYAML the way MLflow does and checks the spec's
// rules (integer status, millisecond timestamps, no empty metric files, key characters, required
// folders, run_id = folder name, URIs, registry versions).
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

static FILE *expect;

static void esc(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '\n') fputs("\\n", f);
        else if (*s == '\t') fputs("\\t", f);
        else fputc(*s, f);
    }
}

static int param(qlora_mlflow_run *r, const char *k, const char *v) {
    qlora_error e;
    qlora_status st = qlora_mlflow_log_param(r, k, v, &e);
    if (st != QLORA_OK) printf("# log_param %s: %s\n", k, e.detail);
    fprintf(expect, "param\t%s\t%s\t", r->run_id, k);
    esc(expect, v);
    fputc('\n', expect);
    return st == QLORA_OK;
}

static int tag(qlora_mlflow_run *r, const char *k, const char *v) {
    qlora_error e;
    qlora_status st = qlora_mlflow_set_tag(r, k, v, &e);
    if (st != QLORA_OK) printf("# set_tag %s: %s\n", k, e.detail);
    fprintf(expect, "tag\t%s\t%s\t", r->run_id, k);
    esc(expect, v);
    fputc('\n', expect);
    return st == QLORA_OK;
}

static int metric(qlora_mlflow_run *r, const char *k, double v, int64_t step) {
    qlora_error e;
    qlora_status st = qlora_mlflow_log_metric(r, k, v, step, 0, &e);
    if (st != QLORA_OK) printf("# log_metric %s: %s\n", k, e.detail);
    if (isnan(v)) fprintf(expect, "metric\t%s\t%s\tnan\t%lld\n", r->run_id, k, (long long)step);
    else if (isinf(v)) fprintf(expect, "metric\t%s\t%s\t%s\t%lld\n", r->run_id, k, v > 0 ? "inf" : "-inf", (long long)step);
    else fprintf(expect, "metric\t%s\t%s\t%.17g\t%lld\n", r->run_id, k, v, (long long)step);
    return st == QLORA_OK;
}

static int hex32(const char *s) {
    if (strlen(s) != 32) return 0;
    for (; *s; s++)
        if (!((*s >= '0' && *s <= '9') || (*s >= 'a' && *s <= 'f'))) return 0;
    return 1;
}

static int file_is(const char *path, const char *want) {
    void *d = NULL;
    size_t n = 0;
    int ok = qlora_read_file(path, &d, &n, NULL) == QLORA_OK && n == strlen(want) && memcmp(d, want, n) == 0;
    QLORA_FREE(d);
    return ok;
}

int main(void) {
    char root[600], cmd[3000], path[2400], src[700];
    snprintf(root, sizeof root, "%s/mlruns", tu_tmpdir());
    snprintf(src, sizeof src, "%s/mlflow_src", tu_tmpdir());
    snprintf(cmd, sizeof cmd, "rm -rf %s %s && mkdir -p %s/adapter/nested", root, src, src);
    if (system(cmd) != 0) return 1;
    snprintf(path, sizeof path, "%s/expect.txt", tu_tmpdir());
    expect = fopen(path, "w");
    qlora_error e;

    // --- run A in the Default experiment -------------------------------------------------------
    qlora_mlflow_options o;
    memset(&o, 0, sizeof o);
    o.run_name = "baseline-c";
    o.user = "alice";
    o.source_name = "./qlora";
    o.git_commit = "0123456789abcdef0123456789abcdef01234567";
    o.seed = 42;
    qlora_mlflow_run a;
    qlora_status st = qlora_mlflow_run_start(&a, root, &o, &e);
    tu_check(st == QLORA_OK && hex32(a.run_id) && strcmp(a.experiment_id, "0") == 0 && a.root[0] == '/' &&
                 strncmp(a.artifact_uri, "file:///", 8) == 0,
             "run start: 32-hex run id, experiment 0, absolute root, file:// artifact URI", "%s", st ? e.detail : a.run_id);
    if (st != QLORA_OK) return tu_finish();
    tu_check(a.run_id[12] == '4' && strchr("89ab", a.run_id[16]), "run id is a uuid4 (version 4, variant 10)", "%s", a.run_id);
    snprintf(path, sizeof path, "%s/tags/mlflow.source.git.commit", a.run_dir);
    tu_check(file_is(path, o.git_commit), "tag mlflow.source.git.commit written raw, no newline", NULL);
    fprintf(expect, "experiment\t0\tDefault\n");
    int ok = param(&a, "lr", "0.0002") && param(&a, "lora/r", "64") && param(&a, "model name", "meditron-7b") &&
             param(&a, "dataset", "radiology \xc3\xa9t\xc3\xa9") && param(&a, "lr", "0.0002");
    tu_check(ok, "params: plain, nested (lora/r), space in key, UTF-8 value; same value again is a no-op", NULL);
    st = qlora_mlflow_log_param(&a, "lr", "0.0003", &e);
    tu_check(st == QLORA_ERR_ARG && strstr(e.detail, "immutable"), "a param logged with a different value is QLORA_ERR_ARG",
             "%s", e.detail);
    double vals[6] = {0.6931471805599453, 0.1, 1e16, 1.5e-07, NAN, INFINITY};
    ok = 1;
    for (int s = 0; s < 6; s++) ok &= metric(&a, "loss", vals[s], s);
    ok &= metric(&a, "train/loss", 2.5, 10) && metric(&a, "train/loss", -INFINITY, 20) && metric(&a, "eval:acc", 0.75, 3);
    tu_check(ok, "metrics: values incl. nan/inf, nested key, colon in key", NULL);
    snprintf(path, sizeof path, "%s/metrics/loss", a.run_dir);
    void *txt = NULL;
    size_t n = 0;
    qlora_read_file(path, &txt, &n, NULL);
    tu_check(txt && strstr((char *)txt, " 0.6931471805599453 0\n") && strstr((char *)txt, " 1e+16 2\n") &&
                 strstr((char *)txt, " 1.5e-07 3\n") && strstr((char *)txt, " nan 4\n") && strstr((char *)txt, " inf 5\n"),
             "metric lines '<ms> <repr(value)> <step>' with nan / inf spelled for Python", "%s", txt ? (char *)txt : "");
    QLORA_FREE(txt);
    ok = tag(&a, "mlflow.note.content", "QLoRA run\nsecond line") && qlora_mlflow_set_tag(&a, "stage", "sft", NULL) == QLORA_OK && tag(&a, "stage", "dpo");
    tu_check(ok, "tags: multi-line note, overwrite", NULL);

    // invalid keys and values
    static const char *bad_keys[] = {"a=b", "../x", "/x", "x/", "a//b", "a/./b", "..x", "", "loss(val)", "a+b", "caf\xc3\xa9"};
    ok = 1;
    for (size_t i = 0; i < sizeof bad_keys / sizeof bad_keys[0]; i++) {
        st = qlora_mlflow_log_metric(&a, bad_keys[i], 1.0, 0, 0, &e);
        if (st != QLORA_ERR_ARG) { ok = 0; printf("# key '%s' accepted\n", bad_keys[i]); }
        st = qlora_mlflow_log_param(&a, bad_keys[i], "v", &e);
        if (st != QLORA_ERR_ARG) ok = 0;
    }
    char longkey[300];
    memset(longkey, 'k', 251);
    longkey[251] = 0;
    ok &= qlora_mlflow_set_tag(&a, longkey, "v", NULL) == QLORA_ERR_ARG && !qlora_mlflow_key_valid(longkey);
    longkey[250] = 0;
    ok &= qlora_mlflow_key_valid(longkey) && qlora_mlflow_key_valid("train/loss") && qlora_mlflow_key_valid("a b:c-d.e_f");
    tu_check(ok, "keys outside MLflow's rule are QLORA_ERR_ARG (=, +, (), .., leading/trailing/double /, >250, non-ASCII)",
             NULL);
    char *big = (char *)malloc(6002);
    memset(big, 'x', 6001);
    big[6001] = 0;
    st = qlora_mlflow_log_param(&a, "big", big, &e);
    big[6000] = 0;
    qlora_status st2 = qlora_mlflow_log_param(&a, "big", big, NULL);
    fprintf(expect, "param\t%s\tbig\t%s\n", a.run_id, big);
    free(big);
    qlora_status st3 = qlora_mlflow_set_tag(&a, "bad", "\xff\xfe", NULL);
    tu_check(st == QLORA_ERR_ARG && st2 == QLORA_OK && st3 == QLORA_ERR_ARG,
             "param values: 6000 characters ok, 6001 and invalid UTF-8 rejected", "%s", e.detail);
    st = qlora_mlflow_log_metric(&a, "loss/x", 1.0, 0, 0, &e);
    st2 = qlora_mlflow_log_metric(&a, "train", 1.0, 0, 0, NULL);
    tu_check(st == QLORA_ERR_ARG && st2 == QLORA_ERR_ARG, "a key cannot be both a value and a prefix", "%s", e.detail);

    // artifacts, MLmodel, registry
    snprintf(path, sizeof path, "%s/adapter/adapter_config.json", src);
    tu_write(path, "{\"r\": 64}", 9);
    snprintf(path, sizeof path, "%s/adapter/nested/notes.txt", src);
    tu_write(path, "hello", 5);
    snprintf(path, sizeof path, "%s/adapter", src);
    st = qlora_mlflow_log_artifacts(&a, path, "adapter", &e);
    snprintf(path, sizeof path, "%s/adapter/nested/notes.txt", src);
    if (st == QLORA_OK) st = qlora_mlflow_log_artifact(&a, path, NULL, &e);
    char got[2400];
    snprintf(got, sizeof got, "%s/artifacts/adapter/nested/notes.txt", a.run_dir);
    snprintf(path, sizeof path, "%s/artifacts/notes.txt", a.run_dir);
    tu_check(st == QLORA_OK && file_is(got, "hello") && file_is(path, "hello"),
             "artifacts copied (a folder recursively, and one file)", "%s", st ? e.detail : "");
    static const char *const kv[] = {"adapter_config", "adapter_config.json", "format", "peft-lora", NULL};
    st = qlora_mlflow_log_model(&a, "adapter", "peft_lora", kv, &e);
    tu_check(st == QLORA_OK, "log model: MLmodel + mlflow.log-model.history", "%s", e.detail);
    int64_t v1 = 0, v2 = 0;
    st = qlora_mlflow_register_model(&a, "qlora-adapter", "adapter", &v1, &e);
    st2 = qlora_mlflow_register_model(&a, "qlora-adapter", "adapter", &v2, NULL);
    tu_check(st == QLORA_OK && st2 == QLORA_OK && v1 == 1 && v2 == 2, "registry: versions 1 and 2", "%s (v%lld, v%lld)",
             st ? e.detail : "", (long long)v1, (long long)v2);
    fprintf(expect, "model\tqlora-adapter\t1\t%s\tadapter\nmodel\tqlora-adapter\t2\t%s\tadapter\n", a.run_id, a.run_id);
    st = qlora_mlflow_register_model(&a, "bad/name", "adapter", NULL, &e);
    st2 = qlora_mlflow_register_model(&a, "other", "adapter/nested", NULL, NULL);
    tu_check(st == QLORA_ERR_ARG && st2 == QLORA_ERR_ARG, "registry: bad name, or a folder without MLmodel, is QLORA_ERR_ARG",
             "%s", e.detail);
    st = qlora_mlflow_run_end(&a, (qlora_mlflow_status)2, &e);
    tu_check(st == QLORA_ERR_ARG, "run end with a non-final status is QLORA_ERR_ARG", NULL);
    st = qlora_mlflow_run_end(&a, QLORA_MLFLOW_FINISHED, &e);
    tu_check(st == QLORA_OK && a.end_time_ms >= a.start_time_ms, "run end FINISHED", "%s", e.detail);
    fprintf(expect, "run\t0\t%s\t3\tbaseline-c\talice\n", a.run_id);
    fprintf(expect, "tag\t%s\tmlflow.user\talice\n", a.run_id);
    fprintf(expect, "tag\t%s\tmlflow.source.name\t./qlora\n", a.run_id);

    // --- runs B and C in a named experiment ------------------------------------------------------
    qlora_mlflow_run b, c;
    memset(&o, 0, sizeof o);
    o.experiment_name = "radiology-qlora";
    st = qlora_mlflow_run_start(&b, root, &o, &e);
    st2 = st == QLORA_OK ? qlora_mlflow_run_start(&c, root, &o, NULL) : st;
    tu_check(st == QLORA_OK && st2 == QLORA_OK && strlen(b.experiment_id) == 18 && b.experiment_id[0] != '0' &&
                 strcmp(b.experiment_id, c.experiment_id) == 0 && strcmp(b.run_id, c.run_id) != 0 &&
                 strncmp(b.run_name, "qlora-", 6) == 0 && strcmp(b.user, "unknown") == 0,
             "named experiment: 18-digit id created once, found again by name; defaults for run name and user", "%s",
             st ? e.detail : "");
    if (st == QLORA_OK && st2 == QLORA_OK) {
        metric(&b, "loss", 1.25, 0);
        qlora_mlflow_run_end(&b, QLORA_MLFLOW_FAILED, NULL);
        qlora_mlflow_run_end(&c, QLORA_MLFLOW_KILLED, NULL);
        fprintf(expect, "experiment\t%s\tradiology-qlora\n", b.experiment_id);
        fprintf(expect, "run\t%s\t%s\t4\t%s\tunknown\n", b.experiment_id, b.run_id, b.run_name);
        fprintf(expect, "run\t%s\t%s\t5\t%s\tunknown\n", c.experiment_id, c.run_id, c.run_name);
        qlora_mlflow_run_free(&b);
        qlora_mlflow_run_free(&c);
    }
    // a run left RUNNING (end_time null) must also read back
    qlora_mlflow_run d;
    if (qlora_mlflow_run_start(&d, root, NULL, NULL) == QLORA_OK) {
        fprintf(expect, "run\t0\t%s\t1\t%s\tunknown\n", d.run_id, d.run_name);
        qlora_mlflow_run_free(&d);
    }
    st = qlora_mlflow_run_start(&d, "build/tmp/artifacts/mlruns", NULL, &e);
    tu_check(st == QLORA_ERR_ARG && strstr(e.detail, "artifacts"), "a root under a folder named 'artifacts' is refused",
             "%s", e.detail);
    qlora_mlflow_run_free(&a);
    fclose(expect);

    if (!tu_have_python("yaml")) {
        tu_skip("mlruns tree passes mlflow_check.py (PyYAML, MLflow's reading rules)",
                "/usr/bin/python3 lacks yaml (apt-get install python3-yaml)");
    } else {
        snprintf(path, sizeof path, "%s/expect.txt", tu_tmpdir());
        int rc = tu_python("test/ref/mlflow_check.py %s %s", root, path);
        tu_check(rc == 0, "mlruns tree passes mlflow_check.py (PyYAML, MLflow's reading rules)", "exit %d", rc);
    }
    return tu_finish();
}
