// test_radiology.c - the radiology engine (demo/rad_core.h) and program (demo/radiology.c) on a tiny random
// model with a random adapter: label-trie scoring against brute-force qlora_model_score, prompt tokens equal
// to what the trainer's data loader builds, the decision (empty note, low confidence, safety switch), the
// calibration fits on synthetic logits, and `radiology predict` end to end in child processes: its JSON
// contract, order preservation with threads, malformed lines, empty and over-long notes, 0600 modes, the audit
// line (without note text), note text absent from stderr, clear errors before any output.
//
// The fixture uses the embedded model's tokenizer (data/base/tokenizer.model) with random weights; without it
// the checks that need a tokenizer are skipped.
#define RAD_NO_MAIN
#include "../demo/radiology.c"
#include "test_util.h"
#include "cli_harness.h"   // ch_fmt, ch_slurp

#include <poll.h>
#include <sys/wait.h>

static char self_exe[4096];
static char root[512];
static const char *MARK = "Zebrafinch";   // a word that appears in notes only: never in logs or stderr

// Runs `radiology ARGS...` (this binary re-executed with --cli) with stdin from `in` (or /dev/null), stdout and
// stderr into root/<tag>.out / .err. Returns the exit status.
static int run_cli(const char *tag, const char *in, const char *const *args) {
    const char *av[64];
    int n = 0;
    av[n++] = self_exe;
    av[n++] = "--cli";
    for (int i = 0; args[i] && n < 62; i++) av[n++] = args[i];
    av[n] = NULL;
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        int fi = open(in ? in : "/dev/null", O_RDONLY);
        int fo = open(ch_fmt("%s/%s.out", root, tag), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(ch_fmt("%s/%s.err", root, tag), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fi < 0 || fo < 0 || fe < 0) _exit(125);
        dup2(fi, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        execv(self_exe, (char *const *)av);
        _exit(126);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// --- fixture ---------------------------------------------------------------------------------------------------

static int make_fixture(const char *tokpath, const char *mdir, const char *adir, int C) {
    qlora_tokenizer tok;
    if (qlora_tokenizer_load(&tok, tokpath, NULL) != QLORA_OK) return 0;
    qlora_llama_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = C;
    c.intermediate_size = 2 * C;
    c.n_layers = 2;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = C / 4;
    c.vocab_size = tok.vocab_size;
    c.max_position_embeddings = 1024;
    c.rms_norm_eps = 1e-5f;
    c.rope_theta = 10000.0f;
    c.rope_scaling_factor = 1.0f;
    c.bos_token_id = tok.bos_id;
    c.eos_token_id = tok.eos_id;
    c.pad_token_id = -1;
    qlora_tokenizer_free(&tok);
    qlora_model_options o;
    memset(&o, 0, sizeof o);
    o.blocksize = 64;
    o.lora.rank = 4;
    o.lora.alpha = 8.0f;
    qlora_model m;
    qlora_error err;
    if (qlora_model_init_random(&m, &c, &o, 5, &err) != QLORA_OK) return 0;
    cli_mkdirs(mdir);
    int ok = qlora_model_save_bnb4(&m, mdir, &err) == QLORA_OK;
    ok = ok && cli_copy_file(tokpath, ch_fmt("%s/tokenizer.model", mdir));
    // an adapter with nonzero B on every projection
    qlora_adapter_module mods[64];
    char names[64][96];
    int nm = 0;
    for (int l = 0; l < c.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT && nm < 64; t++) {
            qlora_lora *a = &m.layers[l].lora[t];
            tu_fill_normal(a->B, (long)(a->out * a->rank), 0.5);
            snprintf(names[nm], sizeof names[nm], "model.layers.%d.%s", l, qlora_target_path((qlora_target)t));
            mods[nm].name = names[nm];
            mods[nm].lora = a;
            mods[nm].in = a->in;
            mods[nm].out = a->out;
            nm++;
        }
    ok = ok && (!adir || qlora_adapter_save(adir, mods, nm, mdir, &err) == QLORA_OK);
    if (!ok) printf("# fixture: %s\n", err.detail);
    qlora_model_free(&m);
    return ok;
}

static const char *const NOTES[] = {
    "67F, 3 d after liver biopsy, on apixaban, Hgb drop, ?bleed",
    "78F mechanical fall at NH, struck occiput, on apixaban for AF. GCS 15, no LOC. r/o ICH.",
    "34F RLQ pain x1d, anorexia, T 38.2, WBC 14.5. beta-hCG neg. Cr 0.7. NKDA. ?appy",
    "71M pleuritic CP, tachycardic, Wells 6. CKD4 eGFR 22, not on HD. CXR clear.",
    "45M sudden L flank pain radiating to groin, gross hematuria, h/o kidney stones, Cr 1.0.",
    "82M legacy PPM (not MR conditional per EP), L-sided weakness since 3 days ago. r/o infarct.",
    "Dear colleague, chronic sinus congestion for 4 months despite antibiotics. Kind regards.",
    "screening, 30 pack-years, quit 5 y ago, age 62, asymptomatic",
};
#define NNOTES ((int)(sizeof NOTES / sizeof NOTES[0]))

// --- checks ----------------------------------------------------------------------------------------------------

static void check_sha256(void) {
    char h[65];
    rad_sha256_hex("abc", 3, h);
    tu_check(!strcmp(h, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "sha256 abc", "%s", h);
    rad_sha256_hex("", 0, h);
    tu_check(!strcmp(h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "sha256 empty", "%s", h);
    char big[1000];
    memset(big, 'a', sizeof big);
    rad__sha256 s;
    rad__sha_init(&s);
    for (int i = 0; i < 1000; i++) rad__sha_update(&s, big, sizeof big);   // a million 'a'
    rad__sha_final(&s, h);
    tu_check(!strcmp(h, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"), "sha256 1e6 x a", "%s",
             h);
}

static double u01(void) { return tu_uniform() * 0.5 + 0.5; }

static void check_calibration_fit(void) {
    // gold drawn from softmax(z / T0): the NLL fit on z must recover T0
    const double T0 = 2.5;
    int64_t n = getenv("QLORA_TEST_QUICK") ? 1500 : 4000;
    double *z = (double *)malloc(sizeof(double) * RAD_NUM_LABELS * (size_t)n);
    int *gold = (int *)malloc(sizeof(int) * (size_t)n);
    tu_seed(3);
    for (int64_t i = 0; i < n; i++) {
        double p[RAD_NUM_LABELS], sum = 0;
        for (int k = 0; k < RAD_NUM_LABELS; k++) z[i * RAD_NUM_LABELS + k] = 6.0 * tu_normal();
        for (int k = 0; k < RAD_NUM_LABELS; k++) sum += (p[k] = exp(z[i * RAD_NUM_LABELS + k] / T0));
        double u = u01() * sum, acc = 0;
        int g = RAD_NUM_LABELS - 1;
        for (int k = 0; k < RAD_NUM_LABELS; k++) {
            acc += p[k];
            if (u < acc) {
                g = k;
                break;
            }
        }
        gold[i] = g;
    }
    double T = rad_fit_temperature(z, gold, n);
    tu_check(fabs(T - T0) / T0 < 0.08, "temperature fit recovers T0 = 2.5", "got %.4f", T);
    // the fitted T is a minimum of the NLL
    double f = rad__nll(z, gold, n, T);
    tu_check(f <= rad__nll(z, gold, n, T * 1.05) && f <= rad__nll(z, gold, n, T / 1.05), "temperature fit is a minimum",
             "nll %.6f", f);
    // scaled scores: T scales with them
    for (int64_t i = 0; i < n * RAD_NUM_LABELS; i++) z[i] *= 0.5;
    double T2 = rad_fit_temperature(z, gold, n);
    tu_check(fabs(T2 - T / 2) / T < 0.01, "temperature fit scales with the scores", "%.4f vs %.4f", T2, T / 2);
    free(z);
    free(gold);

    // threshold: the lowest threshold whose auto-assigned accuracy reaches the target (brute force)
    int m = 300;
    double *conf = (double *)malloc(sizeof(double) * (size_t)m);
    int *al = (int *)malloc(sizeof(int) * (size_t)m), *gl = (int *)malloc(sizeof(int) * (size_t)m);
    for (int i = 0; i < m; i++) {
        conf[i] = floor(u01() * 50) / 50;   // ties
        gl[i] = (int)(u01() * 10);
        al[i] = u01() < 0.1 ? RAD_REVIEW : (u01() < 0.4 + 0.6 * conf[i] ? gl[i] : (gl[i] + 1) % 10);
        if (al[i] == RAD_REVIEW && u01() < 0.9) gl[i] = RAD_REVIEW;   // REVIEW decisions, mostly right
    }
    double cov, acc;
    double thr = rad_fit_threshold(conf, al, gl, m, 0.9, &cov, &acc);
    double best = 1.0000001;
    for (int j = 0; j < m; j++) {   // auto-assigned: an exam label with confidence >= conf[j]
        int na = 0, nr = 0;
        for (int i = 0; i < m; i++)
            if (al[i] != RAD_REVIEW && conf[i] >= conf[j]) {
                na++;
                nr += al[i] == gl[i];
            }
        if (na > 0 && (double)nr / na >= 0.9 && conf[j] < best && al[j] != RAD_REVIEW) best = conf[j];
    }
    tu_check(thr == best && acc >= 0.9 && cov > 0, "threshold fit = lowest qualifying threshold (brute force)",
             "got %.3f want %.3f (coverage %.3f accuracy %.3f)", thr, best, cov, acc);
    for (int i = 0; i < m; i++) al[i] = (gl[i] + 1) % 10;   // always wrong: nothing qualifies
    thr = rad_fit_threshold(conf, al, gl, m, 0.9, &cov, &acc);
    tu_check(thr > 1.0 && cov == 0 && acc == 1, "threshold fit: unreachable target sends everything to REVIEW",
             "%.4f cov %.3f acc %.3f", thr, cov, acc);
    free(conf);
    free(al);
    free(gl);
}

// The decision for a note whose model scores make `top` the confident first label (p about 0.99).
static rad_result decide_with_top(const char *note, int top) {
    rad_result q;
    memset(&q, 0, sizeof q);
    rad_extract(note, strlen(note), &q.facts);
    for (int k = 0; k < RAD_NUM_LABELS; k++) q.score[k] = -20.0;
    q.score[top] = -0.1;
    rad_result_recalibrate(&q, 1.0, 0.5);
    return q;
}

static void check_decision(void) {
    // a model that wants CTA PE; the facts say eGFR 22: the check must not let CTA PE through silently
    rad_result r;
    memset(&r, 0, sizeof r);
    const char *note = "71M pleuritic CP, Wells 6, D-dimer positive. CKD4 eGFR 22. CXR clear.";
    rad_extract(note, strlen(note), &r.facts);
    for (int k = 0; k < RAD_NUM_LABELS; k++) r.score[k] = -20.0;
    r.score[RAD_CTA_PE] = -1.0;
    r.model_label = 0;
    rad_result_recalibrate(&r, 1.0, 0.5);
    tu_check(r.model_label == RAD_CTA_PE && r.label != RAD_CTA_PE && (r.flags & RAD_FLAG_CONTRAST_RISK) &&
                 (!strcmp(r.reason, "safety switch") || !strcmp(r.reason, "safety review")),
             "decision: eGFR 22 switches CTA PE with contrast_risk", "label %d flags %u reason %s", r.label, r.flags,
             r.reason);
    tu_check(r.top[0] == RAD_CTA_PE && r.top_p[0] > 0.99 && r.confidence == r.p[RAD_CTA_PE],
             "decision: alternatives keep the model's ranking", "top %d %.3f", r.top[0], r.top_p[0]);
    // low confidence -> REVIEW, alternatives kept
    for (int k = 0; k < RAD_NUM_LABELS; k++) r.score[k] = -1.0 - 0.01 * k;
    rad_result_recalibrate(&r, 1.0, 0.5);
    tu_check(r.label == RAD_REVIEW && r.review && !strcmp(r.reason, "low confidence") && r.top[0] == 0 &&
                 r.top[1] == 1 && r.top[2] == 2,
             "decision: low confidence -> REVIEW with alternatives", "label %d reason %s", r.label, r.reason);
    // under-triage guard: a code stroke never auto-assigns a label other than the stroke protocol
    {
        rad_result q = decide_with_top("74M code stroke, LKW 1 hr ago, L face/arm weakness, NIHSS 11. eGFR 22.",
                                       RAD_CT_MAXFACE);
        tu_check(q.facts.stroke_window && q.label == RAD_REVIEW && !strcmp(q.reason, "stroke window") &&
                     q.top[0] == RAD_CT_MAXFACE,
                 "decision: a confident non-stroke label in a code stroke goes to REVIEW", "window %d label %d reason %s",
                 q.facts.stroke_window, q.label, q.reason);
        q.score[RAD_CT_MAXFACE] = -20.0;
        q.score[RAD_CT_STROKE] = -0.1;
        rad_result_recalibrate(&q, 1.0, 0.5);
        tu_check(q.label == RAD_CT_STROKE && (q.flags & RAD_FLAG_CONTRAST_RISK),
                 "decision: the stroke protocol passes in a code stroke (with contrast_risk at eGFR 22)",
                 "label %d flags %u reason %s", q.label, q.flags, q.reason);
    }
    // under-triage guard (G9): an anticoagulated head strike never auto-assigns a label other than a head CT
    {
        rad_result q = decide_with_top("82 yo M on apixaban, admitted for UTI. Found on floor, hit the back of his head "
                                       "on the nightstand. GCS 15. CKD3a.", RAD_CT_PANCREAS);
        tu_check(q.facts.anticoag && q.facts.head_strike && q.label == RAD_REVIEW &&
                     !strcmp(q.reason, "anticoagulated head strike") && q.top[0] == RAD_CT_PANCREAS,
                 "decision: a confident non-head label after an anticoagulated head strike goes to REVIEW",
                 "anticoag %d strike %d label %d reason %s", q.facts.anticoag, q.facts.head_strike, q.label, q.reason);
        q.score[RAD_CT_PANCREAS] = -20.0;
        q.score[RAD_CT_HEAD] = -0.1;
        rad_result_recalibrate(&q, 1.0, 0.5);
        tu_check(q.label == RAD_CT_HEAD && !strcmp(q.reason, ""),
                 "decision: CT head passes after an anticoagulated head strike", "label %d reason %s", q.label,
                 q.reason);
    }
    // a temperature flattens the distribution; p sums to 1
    double s = 0;
    for (int k = 0; k < RAD_NUM_LABELS; k++) s += r.p[k];
    tu_check(fabs(s - 1) < 1e-12, "decision: probabilities sum to 1", "%.15f", s);
}

// Tokens the trainer's data loader makes of one prompt/completion line.
static int loader_ids(const char *jsonl, const qlora_tokenizer *tok, cli_dataset *d) {
    cli_data_opts o;
    memset(&o, 0, sizeof o);
    o.template_ = "{prompt}";
    o.max_len = 100000;
    return cli_dataset_load(d, jsonl, tok, &o);
}

static void check_engine(const char *mdir, const char *adir) {
    rad_engine e;
    rad_engine_options eo;
    memset(&eo, 0, sizeof eo);
    eo.model_dir = mdir;
    eo.adapter_dir = adir;
    qlora_error err;
    if (!tu_check(rad_engine_open(&e, &eo, &err) == QLORA_OK, "engine opens model + adapter", "%s", err.detail))
        return;
    tu_check(e.has_adapter && !e.calibrated && e.temperature == 1.0 && strlen(e.model_sha256) == 64 &&
                 strlen(e.adapter_sha256) == 64,
             "engine: adapter, no calibration yet, sha256 of both", "%d %d", e.has_adapter, e.calibrated);
    printf("# label trie: %lld nodes for %d labels, context %lld\n", (long long)e.n_nodes, RAD_NUM_LABELS,
           (long long)e.ctx);
    rad_worker w;
    if (!tu_check(rad_worker_init(&w, &e, &err) == QLORA_OK, "worker", "%s", err.detail)) {
        rad_engine_close(&e);
        return;
    }
    // trie scores == brute force qlora_model_score of every label, on two notes
    qlora_kv_cache kv;
    qlora_kv_cache_init(&kv, &e.model, e.ctx, 0, NULL);
    double worst = 0;
    for (int ni = 0; ni < 2; ni++) {
        rad_result r;
        if (rad_classify(&e, &w, NOTES[ni], strlen(NOTES[ni]), &r, &err) != QLORA_OK) {
            worst = 1e30;
            break;
        }
        for (int k = 0; k < RAD_NUM_LABELS; k++) {
            const char *name = rad_label_name(k);
            int32_t ids[256];
            int64_t nl = 0, np = 0;
            qlora_tokenizer_encode(&e.tok, name, strlen(name), 0, 1, ids, 256, &nl, NULL);
            const int32_t *cp = ids;
            double want = 0;
            int32_t pids[1024];
            char *prompt;
            int tr;
            rad_prompt_build(&e, NOTES[ni], strlen(NOTES[ni]), &prompt, &tr, NULL);
            qlora_tokenizer_encode(&e.tok, prompt, strlen(prompt), 1, 0, pids, 1024, &np, NULL);
            free(prompt);
            if (qlora_model_score(&e.model, &kv, pids, np, &cp, &nl, 1, &want, &err) != QLORA_OK) worst = 1e30;
            double d = fabs(want - r.score[k]) / (1 + fabs(want));
            if (d > worst) worst = d;
        }
    }
    tu_check(worst < 1e-4, "trie scores = qlora_model_score of each label (61 labels, 2 notes)", "worst %.3g", worst);
    qlora_kv_cache_free(&kv);

    // the trainer's loader tokenizes the written prompt/completion exactly as the scorer does
    {
        const char *src = ch_fmt("%s/labelled.jsonl", root), *dst = ch_fmt("%s/prompts.jsonl", root);
        FILE *f = fopen(src, "w");
        for (int i = 0; i < NNOTES; i++) {
            qlora_json_writer jw;
            qlora_jw_init(&jw, -1, 0);
            qlora_jw_object_begin(&jw);
            qlora_jw_key(&jw, "note");
            qlora_jw_string(&jw, NOTES[i]);
            qlora_jw_key(&jw, "label");
            qlora_jw_string(&jw, rad_label_name((i * 7) % RAD_NUM_LABELS));
            qlora_jw_object_end(&jw);
            qlora_jw_finish(&jw, 1, NULL);
            fwrite(jw.buf, 1, jw.len, f);
            qlora_jw_free(&jw);
        }
        fclose(f);
        int64_t longest = 0, count = 0, trunc = 0;
        umask(022);
        int ok = rad_write_prompts(src, dst, &e.tok, e.max_note_tokens, 0, &longest, &count, &trunc);
        struct stat st;
        tu_check(ok && stat(dst, &st) == 0 && (st.st_mode & 0777) == 0600 && count == NNOTES,
                 "train: prompt/completion JSONL written with mode 0600", "ok %d mode %o count %lld", ok,
                 (unsigned)(st.st_mode & 0777), (long long)count);
        cli_dataset d;
        int same = ok && loader_ids(dst, &e.tok, &d) && d.n == NNOTES;
        for (int i = 0; same && i < NNOTES; i++) {
            char *prompt;
            int tr;
            int32_t pids[1024];
            int64_t np = 0;
            rad_prompt_build(&e, NOTES[i], strlen(NOTES[i]), &prompt, &tr, NULL);
            qlora_tokenizer_encode(&e.tok, prompt, strlen(prompt), 1, 0, pids, 1024, &np, NULL);
            free(prompt);
            int k = (i * 7) % RAD_NUM_LABELS;
            // the label's trie path, root first
            int32_t path[256];
            int depth = 0;
            for (int32_t a = e.label_leaf[k]; a >= 0; a = e.node_parent[a]) depth++;
            int at = depth;
            for (int32_t a = e.label_leaf[k]; a >= 0; a = e.node_parent[a]) path[--at] = e.node_token[a];
            same = d.ex[i].n == np + depth;
            for (int64_t j = 0; same && j < np; j++) same = d.ex[i].ids[j] == pids[j] && d.ex[i].labels[j] == CLI_IGNORE;
            for (int j = 0; same && j < depth; j++) same = d.ex[i].ids[np + j] == path[j];
        }
        tu_check(same, "train data tokens = scored tokens (prompt, then label + EOS)", "mismatch");
        if (ok) cli_dataset_free(&d);
    }
    // empty note
    {
        rad_result r;
        rad_classify(&e, &w, "   \n\t ", 6, &r, &err);
        tu_check(r.label == RAD_REVIEW && r.review && !strcmp(r.reason, "empty note") && r.model_label < 0,
                 "empty note -> REVIEW (model not run)", "%d %s", r.label, r.reason);
    }
    // truncation
    {
        size_t cap = 20000, n = 0;
        char *big = (char *)malloc(cap);
        while (n + 40 < cap) n += (size_t)snprintf(big + n, cap - n, "%s ", NOTES[n % NNOTES]);
        rad_result r;
        qlora_status st = rad_classify(&e, &w, big, n, &r, &err);
        char *prompt;
        int tr = 0;
        rad_prompt_build(&e, big, n, &prompt, &tr, NULL);
        int64_t nt = rad__count(&e.tok, prompt, strlen(prompt));
        free(prompt);
        tu_check(st == QLORA_OK && r.truncated && tr && r.prompt_tokens <= e.max_prompt_tokens && nt < e.max_note_tokens + 100,
                 "over-long note truncated to the budget, flagged", "st %d truncated %d tokens %d", (int)st,
                 r.truncated, r.prompt_tokens);
        free(big);
    }
    // embeddings: deterministic, cosine of a text with itself is 1
    {
        int64_t C = rad_embed_dim(&e);
        float *a = (float *)malloc(sizeof(float) * (size_t)C), *b = (float *)malloc(sizeof(float) * (size_t)C);
        int ok = rad_embed_text(&e, &w, "CT head without contrast", a, &err) == QLORA_OK &&
                 rad_embed_text(&e, &w, "CT head without contrast", b, &err) == QLORA_OK;
        double c1 = ok ? rad_cosine(a, b, C) : 0;
        ok = ok && rad_embed_text(&e, &w, "US pelvis", b, &err) == QLORA_OK;
        double c2 = ok ? rad_cosine(a, b, C) : 2;
        tu_check(ok && fabs(c1 - 1) < 1e-6 && c2 < 1 - 1e-6, "embeddings: cos(x, x) = 1, different texts < 1",
                 "%.8f %.8f", c1, c2);
        free(a);
        free(b);
    }
    // classify_many with 3 threads = one by one
    {
        rad_result *r3 = (rad_result *)calloc(NNOTES, sizeof(rad_result));
        int64_t bad;
        qlora_status st = rad_classify_many(&e, NOTES, NULL, NNOTES, 3, r3, &bad, &err);
        int same = st == QLORA_OK;
        for (int i = 0; same && i < NNOTES; i++) {
            rad_result r1;
            rad_classify(&e, &w, NOTES[i], strlen(NOTES[i]), &r1, &err);
            for (int k = 0; k < RAD_NUM_LABELS; k++) same &= fabs(r1.score[k] - r3[i].score[k]) < 1e-9;
            same &= r1.label == r3[i].label;
        }
        tu_check(same, "classify_many (3 threads) = one by one", "st %d", (int)st);
        free(r3);
    }
    rad_worker_free(&w);
    rad_engine_close(&e);
}

// Input for predict: good notes (with the marker word), a malformed line, an empty note, a missing note, a
// blank line, a numeric id, an over-long note.
static int write_input(const char *path, int n_good) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    for (int i = 0; i < n_good; i++) {
        fprintf(f, "{\"id\": \"n%03d\", \"note\": \"%s %s\"}\n", i, MARK, NOTES[i % NNOTES]);
        if (i == 2) fprintf(f, "{\"id\": \"bad\", \"note\": \"%s unterminated\n", MARK);
        if (i == 3) fprintf(f, "{\"id\": \"empty\", \"note\": \"  \"}\n");
        if (i == 4) fprintf(f, "{\"id\": \"nonote\"}\n");
        if (i == 5) fprintf(f, "\n");
        if (i == 6) fprintf(f, "{\"id\": 42, \"note\": \"%s fall on warfarin\"}\n", MARK);
        if (i == 7) {
            fprintf(f, "{\"id\": \"long\", \"note\": \"");
            for (int k = 0; k < 400; k++) fprintf(f, "%s word%d ", MARK, k);
            fprintf(f, "\"}\n");
        }
    }
    return fclose(f) == 0;
}

static void check_predict(const char *mdir, const char *adir) {
    char in[1024], audit[1024], outf[1024];
    snprintf(in, sizeof in, "%s/orders.jsonl", root);
    snprintf(audit, sizeof audit, "%s/audit.log", root);
    snprintf(outf, sizeof outf, "%s/pred.jsonl", root);
    int n_good = getenv("QLORA_TEST_QUICK") ? 10 : 24;
    if (!tu_check(write_input(in, n_good), "predict input written", "")) return;
    remove(audit);
    umask(022);
    // threads 1 to stdout; threads 3 to --out
    const char *a1[] = {"predict", in, "--model", mdir, "--adapter", adir, "--threads", "1", "--audit-log", audit, NULL};
    int rc1 = run_cli("p1", NULL, a1);
    const char *a3[] = {"predict", "--model", mdir, "--adapter", adir, "--threads", "3", "--audit-log", audit,
                        "--out", outf, NULL};
    int rc3 = run_cli("p3", in, a3);   // from stdin
    size_t n1 = 0, n3 = 0;
    char *o1 = ch_slurp(ch_fmt("%s/p1.out", root), &n1), *o3 = ch_slurp(outf, &n3);
    tu_check(rc1 == 0 && rc3 == 0 && o1 && o3, "predict runs (file and stdin, 1 and 3 threads)", "rc %d %d", rc1, rc3);
    if (!o1 || !o3) return;
    tu_check(n1 == n3 && !memcmp(o1, o3, n1), "predict: 3 threads give the same output, in the same order",
             "%zu vs %zu bytes", n1, n3);
    // parse every output line
    int lines = 0, preds = 0, errors = 0, contract = 1, order = 1, empty_ok = 0, long_ok = 0, bad_ok = 0,
        nonote_ok = 0, num_ok = 0, last_good = -1;
    for (char *s = o1; *s;) {
        char *nl = strchr(s, '\n');
        size_t len = nl ? (size_t)(nl - s) : strlen(s);
        qlora_json_doc doc;
        lines++;
        if (qlora_json_parse(&doc, s, len, NULL) != QLORA_OK) {
            contract = 0;
            break;
        }
        const qlora_json *id = qlora_json_get(&doc.root, "id"), *err = qlora_json_get(&doc.root, "error");
        if (err) {
            errors++;
            const qlora_json *ln = qlora_json_get(&doc.root, "line");
            if (!ln || ln->type != QLORA_JSON_NUMBER || err->type != QLORA_JSON_STRING) contract = 0;
            else if (ln->integer == 4 && strstr(err->str, "malformed")) bad_ok = 1;   // 3 good lines, then the bad one
            else if (id && id->type == QLORA_JSON_STRING && !strcmp(id->str, "nonote") && strstr(err->str, "note"))
                nonote_ok = 1;
            if (strstr(err->str, MARK)) contract = 0;
        } else {
            preds++;
            const qlora_json *lab = qlora_json_get(&doc.root, "label"), *cf = qlora_json_get(&doc.root, "confidence"),
                             *alt = qlora_json_get(&doc.root, "alternatives"),
                             *fl = qlora_json_get(&doc.root, "flags"), *rv = qlora_json_get(&doc.root, "review"),
                             *rs = qlora_json_get(&doc.root, "reason");
            int ok = id && lab && lab->type == QLORA_JSON_STRING && rad_label_index(lab->str) >= 0 && cf &&
                     cf->type == QLORA_JSON_NUMBER && cf->number >= 0 && cf->number <= 1 && alt &&
                     alt->type == QLORA_JSON_ARRAY && fl && fl->type == QLORA_JSON_ARRAY && rv &&
                     rv->type == QLORA_JSON_BOOL && rs && rs->type == QLORA_JSON_STRING;
            ok = ok && rv->boolean == (strcmp(lab->str, "REVIEW") == 0);
            int is_empty = id && id->type == QLORA_JSON_STRING && !strcmp(id->str, "empty");
            if (ok && !is_empty) {
                ok = alt->count == 3;
                double prev = 2;
                for (int64_t k = 0; ok && k < alt->count; k++) {
                    const qlora_json *al = qlora_json_get(&alt->items[k], "label"), *p = qlora_json_get(&alt->items[k], "p");
                    ok = al && al->type == QLORA_JSON_STRING && rad_label_index(al->str) >= 0 && p &&
                         p->type == QLORA_JSON_NUMBER && p->number <= prev + 1e-12;
                    if (ok) prev = p->number;
                }
            }
            for (int64_t k = 0; ok && k < fl->count; k++)
                ok = fl->items[k].type == QLORA_JSON_STRING &&
                     (rad_flag_from_name(fl->items[k].str, fl->items[k].str_len) || !strcmp(fl->items[k].str, "truncated"));
            if (!ok) contract = 0;
            if (is_empty) empty_ok = !strcmp(lab->str, "REVIEW") && !strcmp(rs->str, "empty note");
            if (id && id->type == QLORA_JSON_STRING && !strcmp(id->str, "long")) {
                const qlora_json *tr = qlora_json_get(&doc.root, "truncated");
                int inflags = 0;
                for (int64_t k = 0; k < fl->count; k++) inflags |= !strcmp(fl->items[k].str, "truncated");
                long_ok = tr && tr->type == QLORA_JSON_BOOL && tr->boolean && inflags;
            }
            if (id && id->type == QLORA_JSON_NUMBER && id->integer == 42) num_ok = 1;
            if (id && id->type == QLORA_JSON_STRING && id->str[0] == 'n' && isdigit((unsigned char)id->str[1])) {
                int k = atoi(id->str + 1);
                if (k != last_good + 1) order = 0;
                last_good = k;
            }
        }
        qlora_json_free(&doc);
        s = nl ? nl + 1 : s + len;
    }
    int n_in = n_good + 5;   // good + bad + empty + nonote + numeric + long (+ a blank line: no output)
    tu_check(contract, "predict: every line follows the JSON contract (label in catalogue, 3 alternatives, flags)",
             "line %d", lines);
    tu_check(lines == n_in && errors == 2 && preds == n_in - 2, "predict: one output per non-blank input line",
             "%d lines, %d predictions, %d errors (want %d lines)", lines, preds, errors, n_in);
    tu_check(order && last_good == n_good - 1, "predict: output order = input order", "last %d", last_good);
    tu_check(bad_ok, "predict: malformed line -> {\"line\": N, \"error\"} and the rest continue", "");
    tu_check(nonote_ok, "predict: a line without a note -> error record naming it", "");
    tu_check(empty_ok, "predict: empty note -> REVIEW with reason", "");
    tu_check(long_ok, "predict: over-long note truncated, with a flag", "");
    tu_check(num_ok, "predict: a numeric id is echoed as a number", "");
    // modes and audit
    struct stat st;
    tu_check(stat(outf, &st) == 0 && (st.st_mode & 0777) == 0600, "predict --out file has mode 0600", "%o",
             (unsigned)(st.st_mode & 0777));
    tu_check(stat(audit, &st) == 0 && (st.st_mode & 0777) == 0600, "audit.log has mode 0600", "%o",
             (unsigned)(st.st_mode & 0777));
    char *al = ch_slurp(audit, NULL), want_sha[65];
    rad_sha256_file(in, want_sha);
    int nlines = 0;
    for (char *s = al; s && *s; s++) nlines += *s == '\n';
    int audit_ok = al && nlines == 2 && !strstr(al, MARK) && strstr(al, want_sha) && strstr(al, "\"model_sha256\"") &&
                   strstr(al, "\"adapter_sha256\"") && strstr(al, "\"user\"") && strstr(al, "\"time\"");
    if (audit_ok) {   // the last line's counts
        char *last = al + strlen(al) - 1;
        while (last > al && last[-1] != '\n') last--;
        qlora_json_doc doc;
        audit_ok = qlora_json_parse(&doc, last, strlen(last), NULL) == QLORA_OK;
        const qlora_json *pr = audit_ok ? qlora_json_get(&doc.root, "predictions") : NULL,
                         *er = audit_ok ? qlora_json_get(&doc.root, "errors") : NULL,
                         *ad = audit_ok ? qlora_json_get(&doc.root, "adapter_sha256") : NULL;
        char ash[65];
        rad_sha256_file(ch_fmt("%s/adapter_model.safetensors", adir), ash);
        audit_ok = pr && er && pr->integer == preds && er->integer == 2 && ad && !strcmp(ad->str, ash);
        if (doc.arena) qlora_json_free(&doc);
    }
    tu_check(audit_ok, "audit line per batch: time, user, input/model/adapter sha256, counts, no note text", "");
    free(al);
    char *e1 = ch_slurp(ch_fmt("%s/p1.err", root), NULL), *e3 = ch_slurp(ch_fmt("%s/p3.err", root), NULL);
    tu_check(e1 && e3 && !strstr(e1, MARK) && !strstr(e3, MARK) && strstr(e1, "predictions"),
             "note text never on stderr", "");
    free(e1);
    free(e3);
    free(o1);
    free(o3);

    // bad model / adapter: a clear error before any output
    const char *b1[] = {"predict", in, "--model", ch_fmt("%s/nowhere", root), "--adapter", adir, NULL};
    int rc = run_cli("nomodel", NULL, b1);
    size_t no = 0;
    char *o = ch_slurp(ch_fmt("%s/nomodel.out", root), &no), *er = ch_slurp(ch_fmt("%s/nomodel.err", root), NULL);
    tu_check(rc != 0 && no == 0 && er && strstr(er, "nowhere") && strstr(er, "config.json"),
             "missing model: clear error, no output", "rc %d, %zu bytes out", rc, no);
    free(o);
    free(er);
    const char *b2[] = {"predict", in, "--model", mdir, "--adapter", ch_fmt("%s/noadapter", root), NULL};
    rc = run_cli("noadapter", NULL, b2);
    o = ch_slurp(ch_fmt("%s/noadapter.out", root), &no);
    er = ch_slurp(ch_fmt("%s/noadapter.err", root), NULL);
    tu_check(rc != 0 && no == 0 && er && strstr(er, "noadapter"), "missing adapter: clear error, no output",
             "rc %d, %zu bytes out", rc, no);
    free(o);
    free(er);
    // an adapter of another shape: copy the adapter and make a model with another hidden size
    char m2[1024];
    snprintf(m2, sizeof m2, "%s/model2", root);
    const char *tokf = ch_fmt("%s/tokenizer.model", mdir);
    if (make_fixture(tokf, m2, NULL, 48)) {
        const char *b4[] = {"predict", in, "--model", m2, "--adapter", adir, NULL};
        rc = run_cli("shape", NULL, b4);
        o = ch_slurp(ch_fmt("%s/shape.out", root), &no);
        er = ch_slurp(ch_fmt("%s/shape.err", root), NULL);
        tu_check(rc != 0 && no == 0 && er && strstr(er, "adapter") != NULL,
                 "adapter that does not fit the model: clear error, no output", "rc %d, %zu bytes out", rc, no);
        if (er) printf("#   (%.*s)\n", (int)strcspn(er, "\n"), er);
        free(o);
        free(er);
    } else tu_check(0, "adapter that does not fit the model: clear error, no output", "fixture failed");
    // low confidence everywhere with a calibration threshold above 1: every prediction is REVIEW
    const char *cal = ch_fmt("%s/cal.json", root);
    FILE *f = fopen(cal, "w");
    fprintf(f, "{\"temperature\": 1.5, \"threshold\": 1.01, \"prompt_version\": %d}\n", RAD_PROMPT_VERSION);
    fclose(f);
    const char *b3[] = {"predict", in, "--model", mdir, "--adapter", adir, "--calibration", cal, "--audit-log", audit,
                        NULL};
    rc = run_cli("lowconf", NULL, b3);
    o = ch_slurp(ch_fmt("%s/lowconf.out", root), &no);
    int all_review = rc == 0 && o && !strstr(o, "\"review\": false") && strstr(o, "\"low confidence\"");
    tu_check(all_review, "threshold above every confidence: all REVIEW (low confidence), alternatives kept", "rc %d", rc);
    free(o);
    // streaming: each record comes out before the next input line is written (pipes both ways)
    {
        int pin[2], pout[2], ok = pipe(pin) == 0 && pipe(pout) == 0;
        const char *av[] = {self_exe, "--cli", "predict", "--model", mdir, "--adapter", adir, "--threads", "2",
                            "--audit-log", audit, "--quiet", NULL};
        fflush(stdout);
        pid_t pid = ok ? fork() : -1;
        if (pid == 0) {
            dup2(pin[0], 0);
            dup2(pout[1], 1);
            close(pin[1]);
            close(pout[0]);
            execv(self_exe, (char *const *)av);
            _exit(126);
        }
        close(pin[0]);
        close(pout[1]);
        int got = 0;
        for (int i = 0; ok && pid > 0 && i < 3; i++) {
            char line[512], buf[4096];
            int n = snprintf(line, sizeof line, "{\"id\": \"s%d\", \"note\": \"%s\"}\n", i, NOTES[i]);
            ok = write(pin[1], line, (size_t)n) == n;
            struct pollfd pf;
            pf.fd = pout[0];
            pf.events = POLLIN;
            size_t have = 0;
            while (ok && (have == 0 || buf[have - 1] != '\n')) {   // one record, within 60 s
                if (poll(&pf, 1, 60000) <= 0) { ok = 0; break; }
                ssize_t k = read(pout[0], buf + have, sizeof buf - 1 - have);
                if (k <= 0) { ok = 0; break; }
                have += (size_t)k;
            }
            buf[have] = 0;
            char want[16];
            snprintf(want, sizeof want, "\"s%d\"", i);
            if (ok && strstr(buf, want)) got++;
        }
        close(pin[1]);
        int status = 0;
        if (pid > 0) waitpid(pid, &status, 0);
        close(pout[0]);
        tu_check(got == 3 && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                 "predict streams: each record before the next input line arrives", "%d of 3 records", got);
    }
    // help of every command
    static const char *const cmds[] = {"train", "calibrate", "predict", "demo"};
    int help_ok = 1;
    for (int i = 0; i < 4; i++) {
        const char *h[] = {cmds[i], "--help", NULL};
        help_ok &= run_cli("help", NULL, h) == 0;
        char *ho = ch_slurp(ch_fmt("%s/help.out", root), NULL);
        help_ok &= ho && strstr(ho, "usage: radiology") != NULL;
        free(ho);
    }
    tu_check(help_ok, "--help of train, calibrate, predict, demo", "");
    const char *u[] = {"predict", "--bogus", NULL};
    tu_check(run_cli("bogus", NULL, u) == 2, "unknown option -> exit 2", "");
}

// The command dispatch: every command, `report` included, answers --help; an unknown one is a usage error whose
// message names the program as "radiology".
static void check_commands(void) {
    static const char *const cmds[] = {"train", "calibrate", "predict", "eval", "demo", "report"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        const char *a[] = {cmds[i], "--help", NULL};
        int rc = run_cli("help", NULL, a);
        char *o = ch_slurp(ch_fmt("%s/help.out", root), NULL);
        tu_check(rc == 0 && o && strstr(o, "usage: radiology"), ch_fmt("radiology %s --help", cmds[i]),
                 "rc %d, stdout: %.80s", rc, o ? o : "(none)");
        free(o);
    }
    // --seed takes a whole number in [0, 2^31): anything else is a usage error before any work
    static const char *const bad_seeds[] = {"-1", "1.5", "x", "4294967296"};
    for (size_t i = 0; i < sizeof bad_seeds / sizeof bad_seeds[0]; i++) {
        const char *t[] = {"train", "--seed", bad_seeds[i], NULL};
        int trc = run_cli("seed", NULL, t);
        tu_check(trc == 2, ch_fmt("radiology train --seed %s: exit 2", bad_seeds[i]), "rc %d", trc);
    }
    const char *a[] = {"bogus", NULL};
    int rc = run_cli("bogus", NULL, a);
    char *e = ch_slurp(ch_fmt("%s/bogus.err", root), NULL);
    tu_check(rc == 2 && e && strstr(e, "radiology: error: unknown command 'bogus'"),
             "an unknown command: exit 2, 'radiology: error: ...'", "rc %d, stderr: %.120s", rc, e ? e : "(none)");
    free(e);
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "--cli")) return rad_main(argc - 1, argv + 1);
    ssize_t k = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (k <= 0) snprintf(self_exe, sizeof self_exe, "%s", argv[0]);
    else self_exe[k] = 0;
    snprintf(root, sizeof root, "%s/radiology", tu_tmpdir());
    cli_rm_rf(root);
    cli_mkdirs(root);
    check_sha256();
    check_calibration_fit();
    check_decision();
    check_commands();
    const char *tok = "data/base/tokenizer.model";
    if (!cli_is_file(tok)) tok = "../shared/models/llama2-tokenizer.model";
    if (!cli_is_file(tok)) {
        tu_skip("engine and predict checks", "no tokenizer (data/base/tokenizer.model)");
        return tu_finish();
    }
    const char *mdir = ch_fmt("%s/model", root), *adir = ch_fmt("%s/adapter", root);
    char md[1024], ad[1024];
    snprintf(md, sizeof md, "%s", mdir);
    snprintf(ad, sizeof ad, "%s", adir);
    if (!tu_check(make_fixture(tok, md, ad, 32), "fixture: tiny random model + adapter", "")) return tu_finish();
    check_engine(md, ad);
    check_predict(md, ad);
    return tu_finish();
}
