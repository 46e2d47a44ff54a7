// test_hybrid.c - the hybrid trainer: `qlora train / generate / score --backend vulkan` runs the NF4
// matmuls on a Vulkan device (qlora_vulkan.h) and everything else on the CPU, and must agree with the
// same commands on the CPU.
//
// On a tiny random Llama (dense F32 checkpoint, quantized to NF4 on load) the CLI trains the same
// adapter twice, with --backend cpu and with --backend vulkan=required, and the test compares every
// step's loss, the final eval loss and every tensor of the final adapter (max |diff| / max |cpu|) within
// 1e-4 relative, and every step's grad_norm within 1e-3; then greedy `generate` (same text) and `score` (same log-probabilities) with that
// adapter. The Vulkan runs use the device qlora_vk_init picks with allow_cpu (a GPU if there is one,
// else Mesa's lavapipe), or QLORA_VK_DEVICE, with the validation layer on (QLORA_VK_VALIDATION=1).
// When the CLI closes the device it notes how many NF4 matmuls ran there (every projection's forward
// and backward must have: the numbers alone cannot show it, as the scalar build matches lavapipe bit
// for bit) and the count of validation messages, if any (a failure).
//
// Without a device: plain `--backend vulkan` falls back to the CPU with a note (and computes exactly
// what the CPU computes), `--backend vulkan=required` exits 1 naming the reason; both for a device name
// that matches nothing (QLORA_VK_DEVICE) and for a loader without any driver (VK_DRIVER_FILES).
// No Vulkan device at all: the comparisons are SKIPs (QLORA_VK_REQUIRE=1 makes that a failure).
// QLORA_TEST_QUICK=1: 6 steps instead of 20. Every command runs in a child process (test/cli_harness.h).
#include "../demo/qlora_commands.h"
#include "test_util.h"
#include "cli_harness.h"

static ch_model_cfg tiny = { 64, 128, 2, 4, 2, 16 };   // hidden 64, intermediate 128, 2 layers, GQA 4/2
static char         dense[700], data[700], evalf[700];

// |a - b| <= rel·|b| (or both NaN-free and equal); tracks the worst relative difference seen.
static int rel_ok(double a, double b, double rel, double *worst) {
    double d = fabs(a - b), r = d / (fabs(b) > 1e-30 ? fabs(b) : 1e-30);
    if (a != a || b != b) r = INFINITY;
    if (r > *worst) *worst = r;
    return r <= rel;
}

// log_history of OUT/trainer_state.json: per-step loss and grad_norm (index = step - 1), final eval_loss.
typedef struct history {
    int    n;
    double loss[64], gn[64], eval_loss;
} history;

static int read_history(const char *out, history *h) {
    qlora_json_doc doc;
    qlora_error    err;
    memset(h, 0, sizeof *h);
    h->eval_loss = NAN;
    if (qlora_json_read_file(&doc, ch_fmt("%s/trainer_state.json", out), &err) != QLORA_OK) return 0;
    const qlora_json *lh = qlora_json_get(&doc.root, "log_history");
    for (int64_t i = 0; lh && i < lh->count; i++) {
        const qlora_json *e    = qlora_json_at(lh, i);
        int64_t           step = qlora_json_get_int(e, "step", 0);
        if (qlora_json_get(e, "eval_loss")) h->eval_loss = qlora_json_get_number(e, "eval_loss", NAN);
        else if (qlora_json_get(e, "loss") && step >= 1 && step <= 64) {
            h->loss[step - 1] = qlora_json_get_number(e, "loss", NAN);
            h->gn[step - 1]   = qlora_json_get_number(e, "grad_norm", NAN);
            if (step > h->n) h->n = (int)step;
        }
    }
    qlora_json_free(&doc);
    return 1;
}

// Every tensor of two adapter files: same names and sizes, max |a - b| <= rel · max |b| per tensor.
static void compare_adapters(const char *a_dir, const char *b_dir, double rel) {
    const char       *name = "hybrid_train_adapter_matches_cpu";
    qlora_safetensors a, b;
    qlora_error       err;
    if (qlora_safetensors_open(&a, ch_fmt("%s/adapter_model.safetensors", a_dir), &err) != QLORA_OK) {
        tu_check(0, name, "%s", err.detail);
        return;
    }
    if (qlora_safetensors_open(&b, ch_fmt("%s/adapter_model.safetensors", b_dir), &err) != QLORA_OK) {
        tu_check(0, name, "%s", err.detail);
        qlora_safetensors_close(&a);
        return;
    }
    double      worst = 0, worst_elem = 0;
    const char *worst_name = "";
    int64_t     bad = 0, missing = 0, elems = 0;
    for (int64_t i = 0; i < b.n_tensors; i++) {
        const qlora_st_tensor *tb = &b.tensors[i], *ta = qlora_safetensors_find(&a, tb->name);
        if (!ta || ta->numel != tb->numel) {
            missing++;
            continue;
        }
        float *x = (float *)malloc(sizeof(float) * (size_t)(tb->numel + 1)),
              *y = (float *)malloc(sizeof(float) * (size_t)(tb->numel + 1));
        if (!x || !y || qlora_tensor_to_f32(x, ta, &err) != QLORA_OK || qlora_tensor_to_f32(y, tb, &err) != QLORA_OK) {
            missing++;
        } else {
            double scale = 0, d = 0, de = 0;
            for (int64_t k = 0; k < tb->numel; k++) scale = fmax(scale, fabs((double)y[k]));
            for (int64_t k = 0; k < tb->numel; k++) {
                double dk = fabs((double)x[k] - (double)y[k]);
                if (dk != dk) dk = INFINITY;
                d = fmax(d, dk);
                if (fabs((double)y[k]) > 1e-3 * scale) de = fmax(de, dk / fabs((double)y[k]));
            }
            double r = scale > 0 ? d / scale : d;
            bad += !(r <= rel);
            if (r > worst || r != r) {
                worst      = r != r ? INFINITY : r;
                worst_name = tb->name;
            }
            worst_elem = fmax(worst_elem, de);
            elems += tb->numel;
        }
        free(x);
        free(y);
    }
    printf("# adapter: %lld tensors, %lld values; worst max|diff|/max|cpu| %.3g (%s); worst elementwise "
           "relative diff (|cpu| > 1e-3 max) %.3g\n",
           (long long)b.n_tensors, (long long)elems, worst, worst_name, worst_elem);
    tu_check(bad == 0 && missing == 0 && a.n_tensors == b.n_tensors && b.n_tensors > 0, name,
             "%lld tensors off, %lld missing or unreadable (%lld vs %lld tensors); worst %.3g in %s",
             (long long)bad, (long long)missing, (long long)a.n_tensors, (long long)b.n_tensors, worst,
             worst_name);
    qlora_safetensors_close(&a);
    qlora_safetensors_close(&b);
}

// The CLI's closing note "backend vulkan: F forward and B backward NF4 matmuls ran on the device":
// proof that the device did the work (the numbers alone may match the CPU bit for bit when the CPU
// kernel sums in the device's order, as the scalar build does on lavapipe). 0 when absent.
static int device_calls(const char *err_path, long long *fwd, long long *bwd) {
    const char *line = ch_line(err_path, "NF4 matmuls ran on the device");
    const char *p    = strstr(line, "backend vulkan: ");
    *fwd = *bwd = 0;
    return p && sscanf(p, "backend vulkan: %lld forward and %lld backward", fwd, bwd) == 2;
}

// Numbers of a `score` output (the logprob column of every row), at most cap.
static int read_scores(const char *path, double *v, int cap) {
    char *s = ch_slurp(path, NULL);
    int   n = 0;
    for (char *line = s; line && *line && n < cap;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        double    lp;
        long long a, b;
        double    mean;
        // "%12.4f %7lld %10.4f  candidate" or "%8lld %12.4f %7lld %10.4f"
        if (sscanf(line, "%lld %lf %lld %lf", &a, &lp, &b, &mean) == 4) v[n++] = lp;
        else if (sscanf(line, "%lf %lld %lf", &lp, &b, &mean) == 3) v[n++] = lp;
        line = nl ? nl + 1 : NULL;
    }
    free(s);
    return n;
}

// The no-device paths: plain vulkan falls back (and computes what the CPU computes), required fails.
static void check_fallback(const char *gen_args, const char *cpu_out) {
    static const struct {
        const char *tag, *env, *why;
    } cases[2] = {
        { "nodev", "QLORA_VK_DEVICE=no-such-device", "no device matches" },
        { "nodrv", "VK_DRIVER_FILES=/nonexistent/icd.json VK_ICD_FILENAMES=/nonexistent/icd.json", "no driver" },
    };
    for (int c = 0; c < 2; c++) {
        char      name[160];
        ch_result r = ch_run(ch_fmt("%s_plain", cases[c].tag), cases[c].env, "generate %s --backend vulkan",
                             gen_args);
        snprintf(name, sizeof name, "hybrid_fallback_%s: --backend vulkan falls back to the CPU with a note",
                 cases[c].tag);
#ifdef CLI_HAVE_VULKAN
        const char *note = "backend vulkan: no usable device";
#else
        const char *note = "backend vulkan: this build has no Vulkan support; running on the CPU";
#endif
        int same = ch_same_file(r.out, cpu_out) && ch_line(r.out, NULL)[0];
        tu_check(r.rc == 0 && ch_file_has(r.err, note) && ch_file_has(r.err, "running on the CPU") && same,
                 name, "rc %d, output %s the CPU's; stderr: %s", r.rc, same ? "equals" : "differs from",
                 ch_line(r.err, "backend"));
        if (r.rc == 0) printf("# %s: %s\n", cases[c].why, ch_line(r.err, "backend vulkan"));

        r = ch_run(ch_fmt("%s_req", cases[c].tag), cases[c].env, "generate %s --backend vulkan=required",
                   gen_args);
        snprintf(name, sizeof name, "hybrid_fallback_%s: --backend vulkan=required fails clearly",
                 cases[c].tag);
        tu_check(r.rc == 1 && ch_file_has(r.err, "error: --backend vulkan=required") &&
                     !ch_file_has(r.out, "the"),
                 name, "rc %d; stderr: %s", r.rc, ch_line(r.err, "error"));
        if (r.rc == 1) printf("# %s, required: %s\n", cases[c].why, ch_line(r.err, "error"));
    }
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--cli")) return qlora_cli_main(argc - 1, argv + 1);
    int quick   = getenv("QLORA_TEST_QUICK") && atoi(getenv("QLORA_TEST_QUICK")) != 0;
    int require = getenv("QLORA_VK_REQUIRE") && atoi(getenv("QLORA_VK_REQUIRE")) != 0;
    int steps   = quick ? 6 : 20;
    ch_init(argv[0], "hybrid");
    snprintf(dense, sizeof dense, "%s/dense", ch_root);
    snprintf(data, sizeof data, "%s/train.jsonl", ch_root);
    snprintf(evalf, sizeof evalf, "%s/eval.jsonl", ch_root);
    if (!tu_check(ch_write_dense_model(dense, tiny, 77) && ch_write_data(data, 40, 0, 5) && ch_write_data(evalf, 8, 0, 6),
                  "hybrid_fixtures", "cannot write the fixtures under %s", ch_root))
        return tu_finish();

    char train_args[4096];
    snprintf(train_args, sizeof train_args,
             "train --model %s --data %s --eval-file %s --eval-steps 0 --rank 4 --alpha 8 --batch-size 4 "
             "--grad-accum 1 --max-steps %d --max-len 48 --lr 0.003 --logging-steps 1 --save-steps 0 "
             "--no-mlflow --seed 7 --compute fp32",   // a backend computes in fp32: compare in fp32
             dense, data, evalf, steps);

    // The CPU runs: the reference of everything below.
    const char *out_cpu = ch_fmt("%s/out_cpu", ch_root);
    char        oc[700];
    snprintf(oc, sizeof oc, "%s", out_cpu);
    double    t0 = cli_now();
    ch_result r  = ch_run("train_cpu", NULL, "%s --output %s --backend cpu", train_args, oc);
    double    t_cpu = cli_now() - t0;
    history   hc;
    memset(&hc, 0, sizeof hc);
    if (!tu_check(r.rc == 0 && read_history(oc, &hc) && hc.n == steps, "hybrid_train_cpu",
                  "rc %d, %d logged steps: %s", r.rc, hc.n, ch_line(r.err, "error")))
        return tu_finish();
    char gen_args[4096], score_args[4096], data_args[4096];
    snprintf(gen_args, sizeof gen_args, "--model %s --adapter %s --prompt 'the cat sat =' --max-new 8", dense,
             oc);
    snprintf(score_args, sizeof score_args,
             "score --model %s --adapter %s --prompt 'the cat =' --candidates ' cat the| mat on| there hen'",
             dense, oc);
    snprintf(data_args, sizeof data_args, "score --model %s --adapter %s --data %s", dense, oc, evalf);
    ch_result gc  = ch_run("gen_cpu", NULL, "generate %s --backend cpu", gen_args);
    ch_result sc  = ch_run("score_cpu", NULL, "%s --backend cpu", score_args);
    ch_result sdc = ch_run("scored_cpu", NULL, "%s --backend cpu", data_args);
    tu_check(gc.rc == 0 && sc.rc == 0 && sdc.rc == 0, "hybrid_inference_cpu", "rc %d %d %d: %s", gc.rc, sc.rc,
             sdc.rc, ch_line(gc.err, "error"));

    // No device: fallback and failure.
    check_fallback(gen_args, gc.out);

    // The device. (This source includes qlora_vulkan.h through qlora_commands.h; build.sh keys the ASan
    // driver preload on that name.)
#ifndef CLI_HAVE_VULKAN
    if (require) tu_check(0, "hybrid_vulkan", "built without the Vulkan headers (QLORA_VK_REQUIRE=1)");
    else tu_skip("hybrid_vulkan", "built without the Vulkan headers (libvulkan-dev): no hybrid comparison");
    return tu_finish();
#else
    qlora_vk        *vk = NULL;
    qlora_vk_options o;
    qlora_error      err;
    memset(&o, 0, sizeof o);
    memset(&err, 0, sizeof err);
    o.allow_cpu      = 1;
    o.validation     = 1;
    int          val = 1;
    qlora_status st  = qlora_vk_init(&vk, &o, &err);
    if (st == QLORA_ERR_UNSUPPORTED && strstr(err.detail, "validation")) {
        tu_skip("hybrid_validation_layer", "%s; the hybrid runs go without it", err.detail);
        val          = 0;
        o.validation = 0;
        st           = qlora_vk_init(&vk, &o, &err);
    }
    if (st != QLORA_OK) {
        if (require) tu_check(0, "hybrid_vulkan", "%s: %s (QLORA_VK_REQUIRE=1)", qlora_status_string(st), err.detail);
        else tu_skip("hybrid_vulkan", "no usable Vulkan device (%s: %s): no hybrid comparison",
                     qlora_status_string(st), err.detail);
        return tu_finish();
    }
    char dev_name[400];
    snprintf(dev_name, sizeof dev_name, "%s", qlora_vk_name(vk));
    qlora_vk_free(vk);
    const char *di  = strstr(dev_name, "device ");
    int         dev = di ? atoi(di + 7) : 0;
    printf("# hybrid runs on %s, validation %s\n", dev_name, val ? "on" : "off");
    char vk_env[200], vk_flags[100];
    snprintf(vk_env, sizeof vk_env, "QLORA_VK_VALIDATION=%d", val);
    snprintf(vk_flags, sizeof vk_flags, "--backend vulkan=required --vulkan-device %d", dev);
    char on_device[500];   // the CLI's note when it opened the same device
    snprintf(on_device, sizeof on_device, "backend vulkan: %s", dev_name);

    // Training: every step's loss and grad_norm, the eval loss and the adapter.
    const char *out_vk = ch_fmt("%s/out_vk", ch_root);
    char        ov[700];
    snprintf(ov, sizeof ov, "%s", out_vk);
    t0 = cli_now();
    history hv;
    memset(&hv, 0, sizeof hv);
    r = ch_run("train_vk", vk_env, "%s --output %s %s", train_args, ov, vk_flags);
    double t_vk = cli_now() - t0;
    int    ran  = r.rc == 0 && ch_file_has(r.err, on_device) && read_history(ov, &hv);
    tu_check(ran && hv.n == steps, "hybrid_train_vulkan_runs_on_the_device", "rc %d, %d steps; stderr: %s", r.rc,
             ran ? hv.n : -1, ch_line(r.err, r.rc ? "error" : "backend"));
    tu_check(!ch_file_has(r.err, "validation messages"), "hybrid_train_vulkan_no_validation_messages", "%s",
             ch_line(r.err, "validation messages"));
    long long nf = 0, nbk = 0;
    int       counted = device_calls(r.err, &nf, &nbk);
    // Per step (one micro-batch) 2 layers × 7 projections: at least 14 forward (more with the recompute
    // of gradient checkpointing and the evaluation) and 11 backward (layer 0's q/k/v need no dX: the
    // embeddings are frozen).
    tu_check(counted && nf >= 14LL * steps && nbk >= 11LL * steps, "hybrid_train_matmuls_ran_on_the_device",
             "%s", ch_line(r.err, "backend vulkan"));
    printf("# train: %s\n", ch_line(r.err, "NF4 matmuls ran on the device"));
    if (ran && hv.n == steps) {
        double wl = 0, wg = 0, we = 0;
        int    bad = 0;
        for (int s = 0; s < steps; s++) {
            bad += !rel_ok(hv.loss[s], hc.loss[s], 1e-4, &wl);
            bad += !rel_ok(hv.gn[s], hc.gn[s], 1e-3, &wg);
        }
        printf("# %d steps in %.2f s with the device (%.2f s on the CPU); loss step 1 %.7f (cpu %.7f), step %d "
               "%.7f (cpu %.7f)\n", steps, t_vk, t_cpu, hv.loss[0], hc.loss[0], steps, hv.loss[steps - 1], hc.loss[steps - 1]);
        printf("# worst relative difference: loss %.3g, grad_norm %.3g\n", wl, wg);
        tu_check(bad == 0, "hybrid_train_losses_match_cpu", "%d of %d steps off: worst loss %.3g (max 1e-4), "
                 "grad_norm %.3g (max 1e-3)", bad, 2 * steps, wl, wg);
        tu_check(rel_ok(hv.eval_loss, hc.eval_loss, 1e-4, &we), "hybrid_train_eval_loss_matches_cpu",
                 "%.8f vs cpu %.8f", hv.eval_loss, hc.eval_loss);
        printf("# eval_loss %.8f vs cpu %.8f (relative %.3g)\n", hv.eval_loss, hc.eval_loss, we);
        compare_adapters(ov, oc, 1e-4);
        int same_bytes = ch_same_file(ch_fmt("%s/adapter_model.safetensors", ov),
                                      ch_fmt("%s/adapter_model.safetensors", oc));
        printf("# adapter file %s the CPU run's\n", same_bytes ? "bit-identical to" : "differs in rounding from");
    }

    // Inference with the CPU-trained adapter: greedy text and log-probabilities.
    r = ch_run("gen_vk", vk_env, "generate %s %s", gen_args, vk_flags);
    {
        size_t na = 0, nb = 0;
        char  *x = ch_slurp(r.out, &na), *y = ch_slurp(gc.out, &nb);
        int    same = x && y && na == nb && memcmp(x, y, na) == 0;
        long long gf = 0, gb = 0;
        int       gcount = device_calls(r.err, &gf, &gb);
        tu_check(r.rc == 0 && ch_file_has(r.err, on_device) && same && gcount && gf >= 14 &&
                     !ch_file_has(r.err, "validation messages"),
                 "hybrid_generate_matches_cpu", "rc %d: '%.60s' vs cpu '%.60s'; %s", r.rc, x ? x : "",
                 y ? y : "", ch_line(r.err, r.rc ? "error" : "validation"));
        free(x);
        free(y);
    }
    for (int k = 0; k < 2; k++) {
        const char *name = k ? "hybrid_score_data_matches_cpu" : "hybrid_score_candidates_matches_cpu";
        r = ch_run(k ? "scored_vk" : "score_vk", vk_env, "%s %s", k ? data_args : score_args, vk_flags);
        double a[64], b[64], worst = 0;
        int    na = read_scores(r.out, a, 64), nb = read_scores(k ? sdc.out : sc.out, b, 64), bad = 0;
        for (int i = 0; i < na && i < nb; i++) bad += !(fabs(a[i] - b[i]) <= 1e-4 * fabs(b[i]) + 1.5e-4);
        for (int i = 0; i < na && i < nb; i++) worst = fmax(worst, fabs(a[i] - b[i]));
        printf("# %s: %d log-probabilities, max |diff| %.3g (printed to 4 decimals)\n", name, nb, worst);
        long long sf = 0, sb = 0;
        int       scount = device_calls(r.err, &sf, &sb);
        tu_check(r.rc == 0 && ch_file_has(r.err, on_device) && na == nb && nb > 0 && bad == 0 && scount &&
                     sf >= 14 && !ch_file_has(r.err, "validation messages"),
                 name, "rc %d, %d vs %d values, %d off (max |diff| %.3g); %s", r.rc, na, nb, bad, worst,
                 ch_line(r.err, r.rc ? "error" : "validation"));
    }
    int rc = tu_finish();
    if (rc == 0 && !getenv("QLORA_TEST_KEEP")) cli_rm_rf(ch_root);
    return rc;
#endif
}
