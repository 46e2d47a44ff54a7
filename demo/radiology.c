// radiology.c - protocol assignment for radiology orders: build/radiology train | calibrate | predict | eval | demo.
//
// The model reads the ordering clinician's note and scores every catalogue label (60 exams + REVIEW) as a
// continuation (demo/rad_core.h); calibrated confidence, a REVIEW threshold and the deterministic safety check
// (demo/radiology_rules.h) decide the final label. `radiology demo` is the main job: fine-tune, calibrate,
// evaluate, batch-predict, report. Every subcommand takes --help.
//
// Sensitive data: note text never goes to stderr, logs, MLflow or error messages (errors name the line or id);
// prediction, training-data and audit files are created with mode 0600.
#include "qlora_commands.h"   // qlora.h implementation, the qlora CLI (train), cli_* helpers
#include "rad_core.h"

#if defined(__has_include) && !defined(RAD_NO_EVAL)   // -DRAD_NO_EVAL: build without helper C's evaluation
#if __has_include("rad_eval.h")
#include "rad_eval.h"
#define RAD_HAVE_EVAL 1
#endif
#endif

#include <errno.h>
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------------------------------
// options

typedef struct rad_opts {
    const char *model, *adapter, *out, *data, *train, *val, *mlruns, *audit_log, *input;
    const char *calibration, *lr_scheduler;
    int         threads, epochs, batch_size, grad_accum, rank, max_steps, max_note_tokens, no_facts;
    int         seed;   // LoRA init and data order of training; -1: the trainer's defaults (0 and 42)
    int         skip_train, keep_data, no_mlflow, quiet;
    double      lr, alpha, dropout, target, min_threshold;
    int         adapter_given, out_given, data_given;
} rad_opts;

static int rad_default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

static void rad_opts_default(rad_opts *o) {
    memset(o, 0, sizeof *o);
    o->model = "data/base";
    o->adapter = "data/adapter";
    o->out = "";
    o->data = "";
    o->train = "data/train.jsonl";
    o->val = "data/val.jsonl";
    o->mlruns = "mlruns";
    o->audit_log = "audit.log";
    o->input = "-";
    o->threads = rad_default_threads();
    // fine-tuning recipe: QLoRA (NF4 + DQ, paged AdamW, clipping 0.3) with a cosine schedule and rank/lr/epochs
    // sized for the small embedded base model and a 10-minute budget on 2 cores. Trials on data/base (8 train
    // styles; val / test exact match after calibration): lr 1e-3, dropout 0.1, batch 8 x 2, 6 epochs 0.83 / 0.80;
    // dropout 0: 0.75 / 0.80; + batch 8 x 1 (twice the steps): 0.77 / 0.84; + lr 2e-3: 0.83 / 0.89. The training
    // loss ends near 0.005 either way: the limit is how far the model generalizes to unseen note styles, not fit.
    // With the 16 train styles (default, shipped): 0.91 / 0.90. The same steps over twice the notes (`radgen --train
    // 6000`, 3 epochs): 0.88 / 0.88, val NLL 0.48 against 0.39 — more distinct notes did not beat more passes.
    // Without dropout the q/k/v and gate/up adapters also run fused (qlora.h), and no mask is drawn.
    o->epochs = 6;
    o->batch_size = 8;
    o->grad_accum = 1;
    o->rank = 16;
    o->alpha = 32;
    o->dropout = 0.0;
    o->lr = 2e-3;
    o->lr_scheduler = "cosine";
    o->target = 0.97;
    o->seed = -1;
}

// Parses --key VALUE / --key=VALUE / flags; one positional argument allowed when `positional` is not NULL.
static int rad_parse(rad_opts *o, int argc, char **argv, const char *allowed, const char **positional) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (a[0] != '-' || !a[1] || (a[0] == '-' && a[1] != '-' && a[1])) {
            if (!strcmp(a, "-") || a[0] != '-') {
                if (positional && !*positional) {
                    *positional = a;
                    continue;
                }
                cli_error("unexpected argument '%s'", a);
                return 0;
            }
        }
        char key[64];
        const char *eq = strchr(a, '=');
        size_t kl = eq ? (size_t)(eq - a) : strlen(a);
        if (kl >= sizeof key) kl = sizeof key - 1;
        memcpy(key, a, kl);
        key[kl] = 0;
        // is it allowed for this command?
        char pat[80];
        snprintf(pat, sizeof pat, " %s ", key + 2);
        if (!strstr(allowed, pat)) {
            cli_error("unknown option %s (see --help)", key);
            return 0;
        }
        static const char *const flags[] = {"skip-train", "keep-data", "no-mlflow", "no-facts", "quiet"};
        int is_flag = 0;
        for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++) is_flag |= !strcmp(key + 2, flags[f]);
        const char *v = NULL;
        if (!is_flag) {
            if (eq) v = eq + 1;
            else if (i + 1 < argc) v = argv[++i];
            else {
                cli_error("%s needs a value", key);
                return 0;
            }
        }
        const char *k = key + 2;
        char *end = NULL;
        if (!strcmp(k, "model")) o->model = v;
        else if (!strcmp(k, "adapter")) { o->adapter = v; o->adapter_given = 1; }
        else if (!strcmp(k, "out")) { o->out = v; o->out_given = 1; }
        else if (!strcmp(k, "data")) { o->data = v; o->data_given = 1; }
        else if (!strcmp(k, "train")) o->train = v;
        else if (!strcmp(k, "val")) o->val = v;
        else if (!strcmp(k, "mlruns")) o->mlruns = v;
        else if (!strcmp(k, "audit-log")) o->audit_log = v;
        else if (!strcmp(k, "calibration")) o->calibration = v;
        else if (!strcmp(k, "lr-scheduler")) o->lr_scheduler = v;
        else if (!strcmp(k, "skip-train")) o->skip_train = 1;
        else if (!strcmp(k, "keep-data")) o->keep_data = 1;
        else if (!strcmp(k, "no-mlflow")) o->no_mlflow = 1;
        else if (!strcmp(k, "no-facts")) o->no_facts = 1;
        else if (!strcmp(k, "quiet")) o->quiet = 1;
        else {
            double x = strtod(v, &end);
            if (!end || *end || end == v) {
                cli_error("%s: '%s' is not a number", key, v);
                return 0;
            }
            int bad = 0;
            if (!strcmp(k, "threads")) bad = (o->threads = (int)x) < 1;
            else if (!strcmp(k, "epochs")) bad = (o->epochs = (int)x) < 1;
            else if (!strcmp(k, "batch-size")) bad = (o->batch_size = (int)x) < 1;
            else if (!strcmp(k, "grad-accum")) bad = (o->grad_accum = (int)x) < 1;
            else if (!strcmp(k, "rank")) bad = (o->rank = (int)x) < 1;
            else if (!strcmp(k, "max-steps")) bad = (o->max_steps = (int)x) < 0;
            else if (!strcmp(k, "seed")) bad = !(x >= 0 && x <= 2147483647.0 && (o->seed = (int)x) == x);
            else if (!strcmp(k, "max-note-tokens")) bad = (o->max_note_tokens = (int)x) < 16;
            else if (!strcmp(k, "lr")) bad = !((o->lr = x) > 0);
            else if (!strcmp(k, "alpha")) bad = !((o->alpha = x) > 0);
            else if (!strcmp(k, "dropout")) bad = !((o->dropout = x) >= 0 && x < 1);
            else if (!strcmp(k, "target")) bad = !((o->target = x) > 0 && x <= 1);
            else if (!strcmp(k, "min-threshold")) bad = !((o->min_threshold = x) >= 0 && x <= 1);
            if (bad) {
                cli_error("%s %s: out of range", key, v);
                return 0;
            }
        }
    }
    return 1;
}

static int rad_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return 1;
    return 0;
}

// "none" / "" = no adapter.
static const char *rad_adapter_or_null(const char *a) { return (!a || !*a || !strcmp(a, "none")) ? NULL : a; }

static int rad_open_engine(rad_engine *e, const rad_opts *o, const char *calibration) {
    rad_engine_options eo;
    memset(&eo, 0, sizeof eo);
    eo.model_dir = o->model;
    eo.adapter_dir = rad_adapter_or_null(o->adapter);
    eo.calibration = calibration ? calibration : o->calibration;
    eo.max_note_tokens = o->max_note_tokens;
    eo.no_facts = o->no_facts;
    qlora_error err;
    memset(&err, 0, sizeof err);
    if (rad_engine_open(e, &eo, &err) != QLORA_OK) {
        cli_error("%s", err.detail);
        return 0;
    }
    return 1;
}

// Creates (truncating) a file with mode 0600, whatever the umask and whatever mode an old file had.
static FILE *rad_fopen_private(const char *path, const char *mode_flags) {
    int append = strchr(mode_flags, 'a') != NULL;
    int fd = open(path, O_WRONLY | O_CREAT | (append ? O_APPEND : O_TRUNC), 0600);
    if (fd < 0) return NULL;
    if (fchmod(fd, 0600) != 0) {
        close(fd);
        return NULL;
    }
    FILE *f = fdopen(fd, append ? "a" : "w");
    if (!f) close(fd);
    return f;
}

// ---------------------------------------------------------------------------------------------------------------
// labelled JSONL ({"id", "note", "label", ...}) for train / calibrate

typedef struct rad_set {
    char   **notes;
    size_t  *lens;
    int     *gold;
    int64_t  n;
    void    *text;
} rad_set;

static void rad_set_free(rad_set *s) {
    for (int64_t i = 0; i < s->n; i++) free(s->notes[i]);
    free(s->notes);
    free(s->lens);
    free(s->gold);
    memset(s, 0, sizeof *s);
}

// Loads every line; a malformed line or an unknown label is an error naming the file and line.
static int rad_set_load(rad_set *s, const char *path) {
    memset(s, 0, sizeof *s);
    void *data = NULL;
    size_t size = 0;
    qlora_error err;
    if (qlora_read_file(path, &data, &size, &err) != QLORA_OK) {
        cli_error("%s", err.detail);
        return 0;
    }
    int64_t cap = 0, line = 0;
    const char *t = (const char *)data, *end = t + size;
    int ok = 1;
    while (t < end && ok) {
        const char *nl = (const char *)memchr(t, '\n', (size_t)(end - t));
        const char *e = nl ? nl : end;
        line++;
        size_t len = (size_t)(e - t);
        const char *ls = t;
        t = nl ? nl + 1 : end;
        if (rad__blank(ls, len)) continue;
        qlora_json_doc doc;
        const qlora_json *nv, *lv;
        if (qlora_json_parse(&doc, ls, len, &err) != QLORA_OK) {
            cli_error("%s:%lld: malformed JSON", path, (long long)line);
            ok = 0;
            break;
        }
        nv = qlora_json_get(&doc.root, "note");
        lv = qlora_json_get(&doc.root, "label");
        int g = lv && lv->type == QLORA_JSON_STRING ? rad_label_index(lv->str) : -1;
        if (!nv || nv->type != QLORA_JSON_STRING || g < 0) {
            cli_error("%s:%lld: needs a \"note\" string and a catalogue \"label\"", path, (long long)line);
            qlora_json_free(&doc);
            ok = 0;
            break;
        }
        if (s->n == cap) {
            cap = cap ? 2 * cap : 256;
            s->notes = (char **)realloc(s->notes, sizeof(char *) * (size_t)cap);
            s->lens = (size_t *)realloc(s->lens, sizeof(size_t) * (size_t)cap);
            s->gold = (int *)realloc(s->gold, sizeof(int) * (size_t)cap);
            if (!s->notes || !s->lens || !s->gold) {
                cli_error("out of memory");
                exit(1);
            }
        }
        s->notes[s->n] = (char *)cli_alloc(nv->str_len + 1);
        memcpy(s->notes[s->n], nv->str, nv->str_len + 1);
        s->lens[s->n] = nv->str_len;
        s->gold[s->n] = g;
        s->n++;
        qlora_json_free(&doc);
    }
    QLORA_FREE(data);
    if (!ok) rad_set_free(s);
    return ok;
}

// ---------------------------------------------------------------------------------------------------------------
// train

static const char *const rad_train_allowed =
    " model adapter out train val epochs lr lr-scheduler batch-size grad-accum rank alpha dropout max-steps "
    "max-note-tokens no-facts mlruns no-mlflow keep-data threads seed help ";

static void rad_train_help(void) {
    printf("usage: radiology train [--model DIR] [--adapter OUT_DIR] [options]\n\n"
           "Fine-tunes the base model with QLoRA on the training split: writes prompt/completion JSONL files\n"
           "(mode 0600) into the adapter directory, then runs the qlora trainer (NF4 + double quantization,\n"
           "paged AdamW, LoRA on all seven projections, completion-only loss, progress display, an MLflow run).\n"
           "The prompt is the note (cut to --max-note-tokens) plus a summary of extracted facts; the completion is\n"
           "the label text + EOS, exactly the tokens `predict` scores.\n\n"
           "options:\n"
           "  --model DIR            base model (default data/base)\n"
           "  --adapter DIR          output adapter directory (default data/adapter)\n"
           "  --train FILE           training split (default data/train.jsonl)\n"
           "  --val FILE             validation split, evaluated at the end (default data/val.jsonl)\n"
           "  --epochs N             passes over the training split (default 6)\n"
           "  --max-steps N          optimizer steps; > 0 overrides --epochs\n"
           "  --lr X                 peak learning rate (default 2e-3)\n"
           "  --lr-scheduler S       cosine (default), linear or constant (QLoRA's); warmup 3%%\n"
           "  --batch-size N         examples per micro-batch (default 8)\n"
           "  --grad-accum N         micro-batches per step (default 1)\n"
           "  --rank N --alpha X     LoRA rank and alpha (default 16, 32); --dropout X (default 0)\n"
           "  --max-note-tokens N    token budget of the note in the prompt (default %d)\n"
           "  --no-facts             leave the extracted-facts line out of the prompt\n"
           "  --mlruns DIR           MLflow file store (default mlruns); --no-mlflow to skip\n"
           "  --keep-data            keep the generated JSONL files after training\n"
           "  --threads N            OpenMP threads of the trainer (default: every core)\n"
           "  --seed N               seed of the LoRA initialization and of the data order (default: the\n"
           "                         trainer's, 0 and 42); another seed is another draw of the same recipe\n",
           RAD_DEFAULT_MAX_NOTE_TOKENS);
}

// Writes one prompt/completion file; *longest receives the longest example in tokens.
static int rad_write_prompts(const char *src, const char *dst, const qlora_tokenizer *tok, int max_note,
                             int no_facts, int64_t *longest, int64_t *count, int64_t *truncated) {
    rad_set s;
    if (!rad_set_load(&s, src)) return 0;
    FILE *f = rad_fopen_private(dst, "w");
    if (!f) {
        cli_error("%s: %s", dst, strerror(errno));
        rad_set_free(&s);
        return 0;
    }
    int ok = 1;
    for (int64_t i = 0; i < s.n && ok; i++) {
        rad_facts facts;
        rad_extract(s.notes[i], s.lens[i], &facts);
        char *prompt = NULL;
        int tr = 0;
        qlora_error err;
        if (rad__blank(s.notes[i], s.lens[i])) continue;   // nothing to learn from an empty note
        if (rad__prompt(tok, max_note, no_facts, s.notes[i], s.lens[i], &facts, &prompt, &tr, &err) != QLORA_OK) {
            cli_error("%s: example %lld: %s", src, (long long)(i + 1), err.detail);
            ok = 0;
            break;
        }
        const char *label = rad_label_name(s.gold[i]);
        int64_t np = rad__count(tok, prompt, strlen(prompt)) + 1, nl = rad__count(tok, label, strlen(label)) + 1;
        if (np + nl > *longest) *longest = np + nl;
        *truncated += tr;
        qlora_json_writer w;
        qlora_jw_init(&w, -1, 0);
        qlora_jw_object_begin(&w);
        qlora_jw_key(&w, "prompt");
        qlora_jw_string(&w, prompt);
        qlora_jw_key(&w, "completion");
        qlora_jw_string(&w, label);
        qlora_jw_object_end(&w);
        if (qlora_jw_finish(&w, 1, &err) != QLORA_OK || fwrite(w.buf, 1, w.len, f) != w.len) ok = 0;
        qlora_jw_free(&w);
        free(prompt);
        (*count)++;
    }
    if (fclose(f) != 0) ok = 0;
    if (!ok) cli_error("%s: could not write", dst);
    rad_set_free(&s);
    return ok;
}

static int cmd_rad_train(int argc, char **argv) {
    if (rad_wants_help(argc, argv)) {
        rad_train_help();
        return 0;
    }
    rad_opts o;
    rad_opts_default(&o);
    if (!rad_parse(&o, argc, argv, rad_train_allowed, NULL)) return 2;
    const char *out = rad_adapter_or_null(o.adapter);
    if (!out) {
        cli_error("--adapter DIR: the output directory is required");
        return 2;
    }
    if (!cli_mkdirs(out)) {
        cli_error("cannot create %s", out);
        return 1;
    }
    // the engine over the base model gives the tokenizer and the note budget that predict will use
    rad_engine e;
    rad_opts ob = o;
    ob.adapter = "none";
    ob.calibration = "";
    if (!rad_open_engine(&e, &ob, "")) return 1;
    int max_note = e.max_note_tokens;
    char *ftrain = cli_fmt("%s/train_prompts.jsonl", out), *fval = cli_fmt("%s/val_prompts.jsonl", out);
    int64_t longest = 0, ntr = 0, nva = 0, trunc = 0;
    int ok = rad_write_prompts(o.train, ftrain, &e.tok, max_note, o.no_facts, &longest, &ntr, &trunc) &&
             rad_write_prompts(o.val, fval, &e.tok, max_note, o.no_facts, &longest, &nva, &trunc);
    rad_engine_close(&e);
    int rc = 1;
    if (ok) {
        cli_note("training data: %lld train + %lld val examples (%lld notes cut to %d tokens), longest %lld tokens",
                 (long long)ntr, (long long)nva, (long long)trunc, max_note, (long long)longest);
        char s_ep[24], s_lr[32], s_bs[24], s_ga[24], s_r[24], s_a[32], s_d[32], s_ml[24], s_ms[24], s_th[24];
        snprintf(s_ep, sizeof s_ep, "%d", o.epochs);
        snprintf(s_lr, sizeof s_lr, "%g", o.lr);
        snprintf(s_bs, sizeof s_bs, "%d", o.batch_size);
        snprintf(s_ga, sizeof s_ga, "%d", o.grad_accum);
        snprintf(s_r, sizeof s_r, "%d", o.rank);
        snprintf(s_a, sizeof s_a, "%g", o.alpha);
        snprintf(s_d, sizeof s_d, "%g", o.dropout);
        snprintf(s_ml, sizeof s_ml, "%lld", (long long)(longest + 1));
        snprintf(s_ms, sizeof s_ms, "%d", o.max_steps);
        snprintf(s_th, sizeof s_th, "%d", o.threads);
        char s_seed[24];
        snprintf(s_seed, sizeof s_seed, "%d", o.seed);
        char *av[64];
        int ac = 0;
        av[ac++] = (char *)"qlora";
        av[ac++] = (char *)"train";
        av[ac++] = (char *)"--model";
        av[ac++] = (char *)o.model;
        av[ac++] = (char *)"--data";
        av[ac++] = ftrain;
        av[ac++] = (char *)"--eval-file";
        av[ac++] = fval;
        av[ac++] = (char *)"--output";
        av[ac++] = (char *)out;
        av[ac++] = (char *)"--overwrite";
        av[ac++] = (char *)"--epochs";
        av[ac++] = s_ep;
        av[ac++] = (char *)"--max-steps";
        av[ac++] = s_ms;
        av[ac++] = (char *)"--lr";
        av[ac++] = s_lr;
        av[ac++] = (char *)"--lr-scheduler";
        av[ac++] = (char *)o.lr_scheduler;
        av[ac++] = (char *)"--batch-size";
        av[ac++] = s_bs;
        av[ac++] = (char *)"--grad-accum";
        av[ac++] = s_ga;
        av[ac++] = (char *)"--rank";
        av[ac++] = s_r;
        av[ac++] = (char *)"--alpha";
        av[ac++] = s_a;
        av[ac++] = (char *)"--dropout";
        av[ac++] = s_d;
        av[ac++] = (char *)"--max-len";
        av[ac++] = s_ml;
        av[ac++] = (char *)"--no-truncate";
        av[ac++] = (char *)"--save-steps";
        av[ac++] = (char *)"0";
        av[ac++] = (char *)"--eval-steps";
        av[ac++] = (char *)"0";
        av[ac++] = (char *)"--logging-steps";
        av[ac++] = (char *)"10";
        av[ac++] = (char *)"--threads";
        av[ac++] = s_th;
        // fp32, not the trainer's bf16 default: the arithmetic data/adapter was trained with (bf16 trains this
        // recipe in 4 min 14 s instead of 5 min 31 s, measured once; switching is a change of recipe)
        av[ac++] = (char *)"--compute";
        av[ac++] = (char *)"fp32";
        if (o.seed >= 0) {
            av[ac++] = (char *)"--seed";
            av[ac++] = s_seed;
            av[ac++] = (char *)"--data-seed";
            av[ac++] = s_seed;
        }
        if (o.no_mlflow) av[ac++] = (char *)"--no-mlflow";
        else {
            av[ac++] = (char *)"--mlruns";
            av[ac++] = (char *)o.mlruns;
            av[ac++] = (char *)"--experiment";
            av[ac++] = (char *)"radiology";
            av[ac++] = (char *)"--run-name";
            av[ac++] = (char *)"radiology-train";
        }
        av[ac] = NULL;
        rc = qlora_cli_main(ac, av);
        if (rc == 0 && !o.keep_data) {
            remove(ftrain);
            remove(fval);
        }
        // a new adapter invalidates an old calibration
        if (rc == 0) {
            char *cal = cli_fmt("%s/%s", out, RAD_CALIBRATION_FILE);
            remove(cal);
            free(cal);
        }
    }
    free(ftrain);
    free(fval);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// calibrate

static const char *const rad_calibrate_allowed =
    " model adapter val data threads target min-threshold max-note-tokens no-facts help ";

static void rad_calibrate_help(void) {
    printf("usage: radiology calibrate [--model DIR] [--adapter DIR] [--val FILE] [--threads N]\n\n"
           "Scores the validation split and fits (1) the temperature T of the label softmax, minimising the\n"
           "negative log-likelihood of the gold labels (golden-section search over log T), and (2) the REVIEW\n"
           "threshold: the lowest confidence at which the notes auto-assigned (final label not REVIEW after the\n"
           "safety check) reach --target accuracy (default 0.97), which keeps coverage as high as possible.\n"
           "Writes <adapter>/calibration.json.\n\n"
           "options:\n"
           "  --model DIR        base model (default data/base)\n"
           "  --adapter DIR      adapter directory (default data/adapter)\n"
           "  --val FILE         validation split (default data/val.jsonl)\n"
           "  --target X         accuracy required on auto-assigned notes (default 0.97)\n"
           "  --min-threshold X  never set the threshold below X (default 0)\n"
           "  --threads N        worker threads (default: every core)\n");
}

static int cmd_rad_calibrate(int argc, char **argv) {
    if (rad_wants_help(argc, argv)) {
        rad_calibrate_help();
        return 0;
    }
    rad_opts o;
    rad_opts_default(&o);
    if (!rad_parse(&o, argc, argv, rad_calibrate_allowed, NULL)) return 2;
    const char *ad = rad_adapter_or_null(o.adapter);
    if (!ad) {
        cli_error("calibrate writes into the adapter directory: --adapter DIR is required");
        return 2;
    }
    const char *valf = o.data_given ? o.data : o.val;
    rad_set s;
    if (!rad_set_load(&s, valf)) return 1;
    rad_engine e;
    if (!rad_open_engine(&e, &o, "")) {
        rad_set_free(&s);
        return 1;
    }
    rad_result *r = (rad_result *)cli_calloc(sizeof(rad_result) * (size_t)(s.n ? s.n : 1));
    double t0 = cli_now();
    int64_t bad = -1;
    qlora_error err;
    int rc = 0;
    if (rad_classify_many(&e, (const char *const *)s.notes, s.lens, s.n, o.threads, r, &bad, &err) != QLORA_OK) {
        cli_error("%s: note %lld: %s", valf, (long long)(bad + 1), err.detail);
        rc = 1;
    }
    double dt = cli_now() - t0;
    if (rc == 0) {
        // notes the model scored (empty ones have no scores)
        double *scores = (double *)cli_calloc(sizeof(double) * RAD_NUM_LABELS * (size_t)(s.n ? s.n : 1));
        int *gold = (int *)cli_calloc(sizeof(int) * (size_t)(s.n ? s.n : 1));
        int *autol = (int *)cli_calloc(sizeof(int) * (size_t)(s.n ? s.n : 1));
        double *conf = (double *)cli_calloc(sizeof(double) * (size_t)(s.n ? s.n : 1));
        int64_t m = 0, right1 = 0;
        for (int64_t i = 0; i < s.n; i++) {
            if (r[i].model_label < 0) continue;
            memcpy(scores + m * RAD_NUM_LABELS, r[i].score, sizeof r[i].score);
            gold[m] = s.gold[i];
            right1 += r[i].model_label == s.gold[i];
            m++;
        }
        double nll1 = rad__nll(scores, gold, m, 1.0);
        double T = rad_fit_temperature(scores, gold, m);
        double nllT = rad__nll(scores, gold, m, T);
        m = 0;
        for (int64_t i = 0; i < s.n; i++) {
            if (r[i].model_label < 0) continue;
            rad_result_recalibrate(&r[i], T, 0.0);
            conf[m] = r[i].confidence;
            autol[m] = r[i].safety_label;
            m++;
        }
        double cov = 0, acc = 0;
        double thr = rad_fit_threshold(conf, autol, gold, m, o.target, &cov, &acc);
        if (thr < o.min_threshold) {
            thr = o.min_threshold;
            int64_t na = 0, nr = 0;
            for (int64_t i = 0; i < m; i++)
                if (autol[i] != RAD_REVIEW && conf[i] >= thr) {
                    na++;
                    nr += autol[i] == gold[i];
                }
            cov = m ? (double)na / (double)m : 0;
            acc = na ? (double)nr / (double)na : 1;
        }
        cli_note("calibrate: %lld validation notes in %.1f s (%.1f notes/s); model argmax accuracy %.4f",
                 (long long)s.n, dt, dt > 0 ? (double)s.n / dt : 0.0, m ? (double)right1 / (double)m : 0.0);
        cli_note("temperature %.4f (NLL %.4f -> %.4f); REVIEW threshold %.4f: coverage %.4f, accuracy %.4f on "
                 "auto-assigned (target %.2f)",
                 T, nll1, nllT, thr, cov, acc, o.target);
        if (rad_calibration_write(ad, T, thr, &e, nllT, cov, acc, &err) != QLORA_OK) {
            cli_error("%s", err.detail);
            rc = 1;
        } else cli_note("wrote %s/%s", ad, RAD_CALIBRATION_FILE);
        free(scores);
        free(gold);
        free(autol);
        free(conf);
    }
    free(r);
    rad_engine_close(&e);
    rad_set_free(&s);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// predict: a streaming JSONL filter, threads across notes, output order = input order

static const char *const rad_predict_allowed =
    " model adapter out threads audit-log calibration max-note-tokens no-facts quiet help ";

static void rad_predict_help(void) {
    printf("usage: radiology predict [FILE|-] [--model DIR] [--adapter DIR] [--out FILE] [--threads N]\n\n"
           "Reads JSONL lines {\"id\": ..., \"note\": ...} from FILE or stdin and streams one JSON line per input\n"
           "line, in input order:\n"
           "  {\"id\", \"label\", \"confidence\", \"alternatives\": [{\"label\", \"p\"} x3], \"flags\": [...],\n"
           "   \"review\": bool, \"reason\": \"...\", \"truncated\": bool}\n"
           "label is a catalogue label or REVIEW (never an invented string); confidence is the model's calibrated\n"
           "probability; flags come from the safety check (contrast_risk, pregnancy, mri_safety,\n"
           "renal_function_unknown, not_indicated; \"truncated\" when the note was cut). A malformed line gives\n"
           "{\"line\": N, \"error\": ...} and the rest continue; an empty note gives REVIEW with a reason.\n"
           "Each run appends an audit line (time, user, input sha256, model and adapter sha256, counts; no note\n"
           "text) to the audit log. Output files are created with mode 0600.\n\n"
           "As a stdin-to-stdout filter it scales out under any engine that pipes records, e.g. Spark:\n"
           "  rdd.map(json.dumps).pipe(\"build/radiology predict --threads 2\")\n\n"
           "options:\n"
           "  --model DIR        base model (default data/base)\n"
           "  --adapter DIR      adapter (default data/adapter; 'none' = base model only)\n"
           "  --out FILE         write the predictions to FILE (mode 0600) instead of stdout\n"
           "  --threads N        notes classified in parallel (default: every core)\n"
           "  --audit-log FILE   audit log (default audit.log)\n"
           "  --calibration FILE calibration.json to use (default: the adapter's)\n"
           "  --quiet            no summary line on stderr\n");
}

typedef struct rad_pslot {
    int64_t line;      // 1-based input line
    char   *text;      // the raw line (owned)
    size_t  len;
    int     state;     // 0 free, 1 queued, 2 running, 3 done
    char   *out;       // output line incl. '\n' (owned), or NULL (blank input line)
    size_t  out_len;
    int     kind;      // 0 prediction, 1 error record, 2 blank
    int     review;
} rad_pslot;

typedef struct rad_counts {
    int64_t lines, predicted, review, errors, blank;
} rad_counts;

typedef struct rad_pctx {
    const rad_engine *e;
    FILE             *out;       // where records go, in input order
    rad_counts        n;
    int               write_ok;
    rad_pslot        *ring;
    int64_t           W;         // ring size: the reorder window
    int64_t           head;      // next sequence number to write
    int64_t           tail;      // next sequence number to fill
    int64_t           next_job;  // next sequence number to classify
    int               eof;
    pthread_mutex_t   mu;
    pthread_cond_t    cv_work, cv_done;
    qlora_status      fatal;
    qlora_error       fatal_err;
    int               threads;   // workers
} rad_pctx;

static char *rad_strdup_n(const char *s, size_t n, size_t *len) {
    char *p = (char *)cli_alloc(n + 1);
    memcpy(p, s, n);
    p[n] = 0;
    if (len) *len = n;
    return p;
}

static void rad_jw_id(qlora_json_writer *w, const qlora_json *id) {
    if (!id) qlora_jw_null(w);
    else if (id->type == QLORA_JSON_STRING) qlora_jw_string_n(w, id->str, id->str_len);
    else if (id->type == QLORA_JSON_NUMBER && id->is_integer) qlora_jw_int(w, id->integer);
    else if (id->type == QLORA_JSON_NUMBER) qlora_jw_double(w, id->number);
    else qlora_jw_null(w);
}

static void rad_jw_num(qlora_json_writer *w, double x) {
    char b[32];
    snprintf(b, sizeof b, "%.4f", x);
    qlora_jw_raw(w, b);
}

// The output line of one classified note.
static char *rad_format_result(const qlora_json *id, const rad_result *r, size_t *len) {
    qlora_json_writer w;
    qlora_jw_init(&w, 0, 0);
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "id");
    rad_jw_id(&w, id);
    qlora_jw_key(&w, "label");
    qlora_jw_string(&w, rad_label_name(r->label));
    qlora_jw_key(&w, "confidence");
    rad_jw_num(&w, r->confidence);
    qlora_jw_key(&w, "alternatives");
    qlora_jw_array_begin(&w);
    for (int k = 0; k < 3; k++) {
        if (r->top[k] < 0) continue;
        qlora_jw_object_begin(&w);
        qlora_jw_key(&w, "label");
        qlora_jw_string(&w, rad_label_name(r->top[k]));
        qlora_jw_key(&w, "p");
        rad_jw_num(&w, r->top_p[k]);
        qlora_jw_object_end(&w);
    }
    qlora_jw_array_end(&w);
    qlora_jw_key(&w, "flags");
    qlora_jw_array_begin(&w);
    for (int k = 0; k < RAD_NUM_FLAGS; k++)
        if (r->flags >> k & 1u) qlora_jw_string(&w, rad_flag_name(1u << k));
    if (r->truncated) qlora_jw_string(&w, "truncated");
    qlora_jw_array_end(&w);
    qlora_jw_key(&w, "review");
    qlora_jw_bool(&w, r->review);
    qlora_jw_key(&w, "reason");
    qlora_jw_string(&w, r->reason);
    qlora_jw_key(&w, "truncated");
    qlora_jw_bool(&w, r->truncated);
    qlora_jw_object_end(&w);
    char *out = NULL;
    if (qlora_jw_finish(&w, 1, NULL) == QLORA_OK) out = rad_strdup_n(w.buf, w.len, len);
    qlora_jw_free(&w);
    return out;
}

// {"line": N, ["id": ...,] "error": "..."}; the message never contains note text.
static char *rad_format_error(int64_t line, const qlora_json *id, const char *msg, size_t *len) {
    qlora_json_writer w;
    qlora_jw_init(&w, 0, 0);
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "line");
    qlora_jw_int(&w, line);
    if (id) {
        qlora_jw_key(&w, "id");
        rad_jw_id(&w, id);
    }
    qlora_jw_key(&w, "error");
    qlora_jw_string(&w, msg);
    qlora_jw_object_end(&w);
    char *out = NULL;
    if (qlora_jw_finish(&w, 1, NULL) == QLORA_OK) out = rad_strdup_n(w.buf, w.len, len);
    qlora_jw_free(&w);
    return out;
}

// Parses and classifies one input line into its slot.
static void rad_predict_one(const rad_engine *e, rad_worker *w, rad_pslot *s) {
    s->kind = 0;
    s->review = 0;
    if (rad__blank(s->text, s->len)) {
        s->kind = 2;
        s->out = NULL;
        return;
    }
    qlora_json_doc doc;
    qlora_error err;
    if (qlora_json_parse(&doc, s->text, s->len, &err) != QLORA_OK) {
        // keep only the position from the parser's detail ("line 1 col C: ...")
        const char *col = strstr(err.detail, "col ");
        char msg[96];
        snprintf(msg, sizeof msg, "malformed JSON (column %d)", col ? atoi(col + 4) : 0);
        s->kind = 1;
        s->out = rad_format_error(s->line, NULL, msg, &s->out_len);
        return;
    }
    const qlora_json *id = qlora_json_get(&doc.root, "id"), *note = qlora_json_get(&doc.root, "note");
    if (doc.root.type != QLORA_JSON_OBJECT) {
        s->kind = 1;
        s->out = rad_format_error(s->line, NULL, "expected a JSON object {\"id\": ..., \"note\": ...}", &s->out_len);
    } else if (!note || (note->type != QLORA_JSON_STRING && note->type != QLORA_JSON_NULL)) {
        s->kind = 1;
        s->out = rad_format_error(s->line, id, "expected a \"note\" string", &s->out_len);
    } else {
        rad_result r;
        const char *text = note->type == QLORA_JSON_STRING ? note->str : "";
        size_t tl = note->type == QLORA_JSON_STRING ? note->str_len : 0;
        if (rad_classify(e, w, text, tl, &r, &err) != QLORA_OK) {
            char msg[300];
            snprintf(msg, sizeof msg, "classification failed: %s", err.detail);
            s->kind = 1;
            s->out = rad_format_error(s->line, id, msg, &s->out_len);
        } else {
            s->review = r.review;
            s->out = rad_format_result(id, &r, &s->out_len);
        }
    }
    qlora_json_free(&doc);
}


// Writes every finished slot at the head of the ring (called with the mutex held).
static int rad_flush(rad_pctx *c, FILE *out, rad_counts *n) {
    int ok = 1;
    while (c->head < c->tail && c->ring[c->head % c->W].state == 3) {
        rad_pslot *s = &c->ring[c->head % c->W];
        if (s->kind == 2) n->blank++;
        else if (!s->out) ok = 0;
        else {
            if (fwrite(s->out, 1, s->out_len, out) != s->out_len) ok = 0;
            if (s->kind == 1) n->errors++;
            else {
                n->predicted++;
                n->review += s->review;
            }
        }
        if (out == stdout) fflush(out);   // streaming: a consumer sees each record as soon as it is in order
        free(s->text);
        free(s->out);
        memset(s, 0, sizeof *s);
        c->head++;
    }
    return ok;
}

static void *rad_predict_worker(void *arg) {
    rad_pctx *c = (rad_pctx *)arg;
    rad_worker w;
    qlora_error err;
    rad_threads_single(c->threads);
    qlora_status st = rad_worker_init(&w, c->e, &err);
    pthread_mutex_lock(&c->mu);
    if (st != QLORA_OK) {
        if (c->fatal == QLORA_OK) {
            c->fatal = st;
            c->fatal_err = err;
        }
        pthread_cond_broadcast(&c->cv_done);
        pthread_mutex_unlock(&c->mu);
        return NULL;
    }
    for (;;) {
        while (c->next_job == c->tail && !c->eof && c->fatal == QLORA_OK) pthread_cond_wait(&c->cv_work, &c->mu);
        if (c->fatal != QLORA_OK || (c->next_job == c->tail && c->eof)) break;
        rad_pslot *s = &c->ring[c->next_job % c->W];
        c->next_job++;
        s->state = 2;
        pthread_mutex_unlock(&c->mu);
        rad_predict_one(c->e, &w, s);
        pthread_mutex_lock(&c->mu);
        s->state = 3;
        c->write_ok &= rad_flush(c, c->out, &c->n);   // stream a record as soon as it is in order
        pthread_cond_broadcast(&c->cv_done);
    }
    pthread_mutex_unlock(&c->mu);
    rad_worker_free(&w);
    return NULL;
}

static void rad_iso_time(char *buf, size_t cap) {
    time_t t = time(NULL);
    struct tm tmv;
    gmtime_r(&t, &tmv);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tmv);
}

static const char *rad_user(void) {
    const char *u = getenv("USER");
    if (u && *u) return u;
    struct passwd *pw = getpwuid(getuid());
    return pw && pw->pw_name ? pw->pw_name : "unknown";
}

// Appends one JSON line to the audit log (mode 0600). No note text: hashes, names and counts only.
static int rad_audit(const char *path, const char *command, const char *input, const char *input_sha,
                     const rad_engine *e, const rad_opts *o, const rad_counts *n, double seconds) {
    char when[32];
    rad_iso_time(when, sizeof when);
    qlora_json_writer w;
    qlora_jw_init(&w, -1, 0);
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "time");
    qlora_jw_string(&w, when);
    qlora_jw_key(&w, "user");
    qlora_jw_string(&w, rad_user());
    qlora_jw_key(&w, "command");
    qlora_jw_string(&w, command);
    qlora_jw_key(&w, "input");
    qlora_jw_string(&w, input);
    qlora_jw_key(&w, "input_sha256");
    qlora_jw_string(&w, input_sha);
    qlora_jw_key(&w, "model");
    qlora_jw_string(&w, o->model);
    qlora_jw_key(&w, "model_sha256");
    qlora_jw_string(&w, e->model_sha256);
    qlora_jw_key(&w, "adapter");
    qlora_jw_string(&w, e->has_adapter ? o->adapter : "none");
    qlora_jw_key(&w, "adapter_sha256");
    qlora_jw_string(&w, e->adapter_sha256);
    qlora_jw_key(&w, "temperature");
    qlora_jw_double(&w, e->temperature);
    qlora_jw_key(&w, "threshold");
    qlora_jw_double(&w, e->threshold);
    qlora_jw_key(&w, "lines");
    qlora_jw_int(&w, n->lines);
    qlora_jw_key(&w, "predictions");
    qlora_jw_int(&w, n->predicted);
    qlora_jw_key(&w, "review");
    qlora_jw_int(&w, n->review);
    qlora_jw_key(&w, "errors");
    qlora_jw_int(&w, n->errors);
    qlora_jw_key(&w, "seconds");
    rad_jw_num(&w, seconds);
    qlora_jw_object_end(&w);
    int ok = qlora_jw_finish(&w, 1, NULL) == QLORA_OK;
    FILE *f = ok ? rad_fopen_private(path, "a") : NULL;
    if (f) {
        ok = fwrite(w.buf, 1, w.len, f) == w.len;
        ok &= fclose(f) == 0;
    } else ok = 0;
    qlora_jw_free(&w);
    if (!ok) cli_error("audit log %s: could not append", path);
    return ok;
}

static int cmd_rad_predict(int argc, char **argv) {
    if (rad_wants_help(argc, argv)) {
        rad_predict_help();
        return 0;
    }
    rad_opts o;
    rad_opts_default(&o);
    const char *input = NULL;
    if (!rad_parse(&o, argc, argv, rad_predict_allowed, &input)) return 2;
    if (!input) input = "-";
    FILE *in = strcmp(input, "-") ? fopen(input, "rb") : stdin;
    if (!in) {
        cli_error("%s: %s", input, strerror(errno));
        return 2;
    }
    // the model and adapter are checked before any output
    rad_engine e;
    if (!rad_open_engine(&e, &o, NULL)) {
        if (in != stdin) fclose(in);
        return 2;
    }
    if (!e.calibrated && !o.quiet)
        cli_note("warning: no calibration.json for this adapter: confidences are uncalibrated (T = 1) and no "
                 "REVIEW threshold applies (run `radiology calibrate`)");
    FILE *out = stdout;
    char *tmp = NULL;
    if (*o.out) {
        tmp = cli_fmt("%s.tmp.%ld", o.out, (long)getpid());
        out = rad_fopen_private(tmp, "w");
        if (!out) {
            cli_error("%s: %s", o.out, strerror(errno));
            free(tmp);
            rad_engine_close(&e);
            if (in != stdin) fclose(in);
            return 2;
        }
    }
    rad_pctx c;
    memset(&c, 0, sizeof c);
    c.e = &e;
    c.out = out;
    c.write_ok = 1;
    int threads = o.threads;
    c.threads = threads;
    c.W = 8 * (int64_t)threads + 8;
    c.ring = (rad_pslot *)cli_calloc(sizeof(rad_pslot) * (size_t)c.W);
    c.fatal = QLORA_OK;
    pthread_mutex_init(&c.mu, NULL);
    pthread_cond_init(&c.cv_work, NULL);
    pthread_cond_init(&c.cv_done, NULL);
    rad_threads_single(threads);
    pthread_t *th = (pthread_t *)cli_alloc(sizeof(pthread_t) * (size_t)threads);
    int started = 0;
    for (int t = 0; t < threads; t++)
        if (pthread_create(&th[t], NULL, rad_predict_worker, &c) == 0) started++;
    rad__sha256 sha;
    rad__sha_init(&sha);
    double t0 = cli_now();
    int ok = started > 0;
    if (!ok) cli_error("could not start a worker thread");
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int64_t lineno = 0;
    while (ok && (got = getline(&line, &cap, in)) >= 0) {
        rad__sha_update(&sha, line, (size_t)got);
        lineno++;
        size_t len = (size_t)got;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        pthread_mutex_lock(&c.mu);
        while (c.tail - c.head == c.W && c.fatal == QLORA_OK) {
            ok &= rad_flush(&c, out, &c.n);
            if (c.tail - c.head == c.W) pthread_cond_wait(&c.cv_done, &c.mu);
        }
        if (c.fatal != QLORA_OK) {
            pthread_mutex_unlock(&c.mu);
            break;
        }
        rad_pslot *s = &c.ring[c.tail % c.W];
        s->line = lineno;
        s->text = rad_strdup_n(line, len, &s->len);
        s->state = 1;
        c.tail++;
        pthread_cond_signal(&c.cv_work);
        ok &= rad_flush(&c, out, &c.n);
        pthread_mutex_unlock(&c.mu);
    }
    free(line);
    int read_error = ferror(in);
    if (in != stdin) fclose(in);
    pthread_mutex_lock(&c.mu);
    c.eof = 1;
    pthread_cond_broadcast(&c.cv_work);
    while (c.head < c.tail && c.fatal == QLORA_OK) {
        ok &= rad_flush(&c, out, &c.n);
        if (c.head < c.tail) pthread_cond_wait(&c.cv_done, &c.mu);
    }
    pthread_mutex_unlock(&c.mu);
    for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
    free(th);
    ok &= c.write_ok;
    rad_counts n = c.n;
    if (c.fatal != QLORA_OK) {
        cli_error("%s", c.fatal_err.detail);
        ok = 0;
    }
    for (int64_t i = 0; i < c.W; i++) {
        free(c.ring[i].text);
        free(c.ring[i].out);
    }
    free(c.ring);
    pthread_mutex_destroy(&c.mu);
    pthread_cond_destroy(&c.cv_work);
    pthread_cond_destroy(&c.cv_done);
    if (read_error) {
        cli_error("%s: read error", input);
        ok = 0;
    }
    if (fflush(out) != 0) ok = 0;
    if (tmp) {
        ok &= fsync(fileno(out)) == 0;
        ok &= fclose(out) == 0;
        if (ok && rename(tmp, o.out) != 0) {
            cli_error("%s: %s", o.out, strerror(errno));
            ok = 0;
        }
        if (!ok) remove(tmp);
        free(tmp);
    }
    double dt = cli_now() - t0;
    n.lines = lineno;
    char hex[65];
    rad__sha_final(&sha, hex);
    ok &= rad_audit(o.audit_log, "predict", input, hex, &e, &o, &n, dt);
    if (!o.quiet)
        cli_note("predict: %lld lines, %lld predictions (%lld to review), %lld errors in %.2f s (%.1f notes/s, %d "
                 "threads)",
                 (long long)n.lines, (long long)n.predicted, (long long)n.review, (long long)n.errors, dt,
                 dt > 0 ? (double)n.predicted / dt : 0.0, threads);
    rad_engine_close(&e);
    return ok ? 0 : 1;
}

// ---------------------------------------------------------------------------------------------------------------
// eval and demo

static int cmd_rad_eval(int argc, char **argv) {
#ifdef RAD_HAVE_EVAL
    return rad_eval_main(argc, argv);
#else
    (void)argc;
    (void)argv;
    cli_error("eval is not part of this build (demo/rad_eval.h is missing)");
    return 2;
#endif
}

static const char *const rad_demo_allowed =
    " model adapter out threads skip-train epochs max-steps lr lr-scheduler batch-size grad-accum rank alpha "
    "seed mlruns no-mlflow help ";

static void rad_demo_help(void) {
    printf("usage: radiology demo [--model DIR] [--out DIR] [--skip-train] [--threads N]\n\n"
           "The main job: fine-tune the base model with QLoRA on the training split (unless --skip-train), calibrate\n"
           "on the validation split, evaluate on the test split and on the hand-written dev set, batch-predict\n"
           "data/sample_orders.jsonl, and write the report (text + PNGs) into --out (default build/demo).\n\n"
           "options:\n"
           "  --model DIR    base model (default data/base)\n"
           "  --adapter DIR  adapter to train / use (default <out>/adapter; with --skip-train data/adapter)\n"
           "  --out DIR      output directory (default build/demo)\n"
           "  --skip-train   use the existing adapter\n"
           "  --threads N    worker threads (default: every core)\n"
           "  training options as for `radiology train`: --epochs --max-steps --lr --lr-scheduler --batch-size\n"
           "  --grad-accum --rank --alpha --seed --mlruns --no-mlflow\n");
}

static int rad_run(const char *what, int (*fn)(int, char **), int argc, char **argv, double *seconds) {
    double t0 = cli_now();
    fprintf(stderr, "\n== radiology %s\n", what);
    int rc = fn(argc, argv);
    *seconds = cli_now() - t0;
    fprintf(stderr, "== %s: %s in %.1f s\n", what, rc == 0 ? "done" : "FAILED", *seconds);
    return rc;
}

static int cmd_rad_demo(int argc, char **argv) {
    if (rad_wants_help(argc, argv)) {
        rad_demo_help();
        return 0;
    }
    rad_opts o;
    rad_opts_default(&o);
    if (!rad_parse(&o, argc, argv, rad_demo_allowed, NULL)) return 2;
    const char *outdir = o.out_given ? o.out : "build/demo";
    if (!cli_mkdirs(outdir)) {
        cli_error("cannot create %s", outdir);
        return 1;
    }
    chmod(outdir, 0700);
    char *adapter = o.adapter_given ? cli_strdup(o.adapter)
                                    : (o.skip_train ? cli_strdup("data/adapter") : cli_fmt("%s/adapter", outdir));
    char s_th[24], s_ep[24], s_ms[24], s_lr[32], s_bs[24], s_ga[24], s_r[24], s_a[32], s_seed[24];
    snprintf(s_th, sizeof s_th, "%d", o.threads);
    snprintf(s_seed, sizeof s_seed, "%d", o.seed);
    snprintf(s_ep, sizeof s_ep, "%d", o.epochs);
    snprintf(s_ms, sizeof s_ms, "%d", o.max_steps);
    snprintf(s_lr, sizeof s_lr, "%g", o.lr);
    snprintf(s_bs, sizeof s_bs, "%d", o.batch_size);
    snprintf(s_ga, sizeof s_ga, "%d", o.grad_accum);
    snprintf(s_r, sizeof s_r, "%d", o.rank);
    snprintf(s_a, sizeof s_a, "%g", o.alpha);
    double t0 = cli_now(), secs[6] = {0, 0, 0, 0, 0, 0};
    static const char *const step_names[6] = {"train", "calibrate", "eval_test", "eval_dev", "predict", "total"};
    int rc = 0;
    if (!o.skip_train) {
        char *av[] = {(char *)"train", (char *)"--model", (char *)o.model, (char *)"--adapter", adapter,
                      (char *)"--epochs", s_ep, (char *)"--max-steps", s_ms, (char *)"--lr", s_lr,
                      (char *)"--lr-scheduler", (char *)o.lr_scheduler, (char *)"--batch-size", s_bs,
                      (char *)"--grad-accum", s_ga, (char *)"--rank", s_r,
                      (char *)"--alpha", s_a, (char *)"--threads", s_th, (char *)"--mlruns", (char *)o.mlruns,
                      NULL, NULL, NULL, NULL};
        int ac = (int)(sizeof av / sizeof av[0]) - 4;
        if (o.no_mlflow) av[ac++] = (char *)"--no-mlflow";
        if (o.seed >= 0) {
            av[ac++] = (char *)"--seed";
            av[ac++] = s_seed;
        }
        rc = rad_run("train", cmd_rad_train, ac, av, &secs[0]);
    }
    if (rc == 0) {
        char *av[] = {(char *)"calibrate", (char *)"--model", (char *)o.model, (char *)"--adapter", adapter,
                      (char *)"--threads", s_th, NULL};
        rc = rad_run("calibrate", cmd_rad_calibrate, 7, av, &secs[1]);
    }
    char *test_out = cli_fmt("%s/test", outdir), *dev_out = cli_fmt("%s/dev", outdir);
    if (rc == 0) {
        char *av[] = {(char *)"eval", (char *)"--model", (char *)o.model, (char *)"--adapter", adapter,
                      (char *)"--data", (char *)"data/test.jsonl", (char *)"--out", test_out,
                      (char *)"--threads", s_th, (char *)"--mlruns", (char *)o.mlruns,
                      o.no_mlflow ? (char *)"--no-mlflow" : NULL, NULL};
        rc = rad_run("eval (test split)", cmd_rad_eval, o.no_mlflow ? 14 : 13, av, &secs[2]);
    }
    if (rc == 0) {
        char *av[] = {(char *)"eval", (char *)"--model", (char *)o.model, (char *)"--adapter", adapter,
                      (char *)"--data", (char *)"data/dev_handwritten.jsonl", (char *)"--out", dev_out,
                      (char *)"--threads", s_th, (char *)"--mlruns", (char *)o.mlruns,
                      o.no_mlflow ? (char *)"--no-mlflow" : NULL, NULL};
        rc = rad_run("eval (hand-written dev set)", cmd_rad_eval, o.no_mlflow ? 14 : 13, av, &secs[3]);
    }
    char *pred = cli_fmt("%s/predictions.jsonl", outdir), *audit = cli_fmt("%s/audit.log", outdir);
    if (rc == 0) {
        char *av[] = {(char *)"predict", (char *)"data/sample_orders.jsonl", (char *)"--model", (char *)o.model,
                      (char *)"--adapter", adapter, (char *)"--out", pred, (char *)"--threads", s_th,
                      (char *)"--audit-log", audit, NULL};
        rc = rad_run("predict (data/sample_orders.jsonl)", cmd_rad_predict, 12, av, &secs[4]);
    }
    secs[5] = cli_now() - t0;
#ifdef RAD_HAVE_EVAL
    if (rc == 0) {
        char tv[6][64];
        char *av[32];
        int ac = 0;
        av[ac++] = (char *)"report";
        av[ac++] = (char *)"--out";
        av[ac++] = (char *)outdir;
        av[ac++] = (char *)"--test";
        av[ac++] = test_out;
        av[ac++] = (char *)"--dev";
        av[ac++] = dev_out;
        for (int k = 0; k < 6; k++) {
            if (k == 0 && o.skip_train) continue;
            snprintf(tv[k], sizeof tv[k], "%s=%.1f", step_names[k], secs[k]);
            av[ac++] = (char *)"--time";
            av[ac++] = tv[k];
        }
        av[ac] = NULL;
        double rs = 0;
        rc = rad_run("report", rad_report_main, ac, av, &rs);
    }
#else
    (void)step_names;
#endif
    fprintf(stderr, "\nradiology demo: %s in %.1f s; outputs in %s/\n", rc == 0 ? "done" : "FAILED", cli_now() - t0,
            outdir);
    free(test_out);
    free(dev_out);
    free(pred);
    free(audit);
    free(adapter);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------

static void rad_usage(FILE *f) {
    fprintf(f, "radiology - protocol assignment for radiology orders (QLoRA on qlora.h)\n\n"
               "usage: radiology COMMAND [options]     ('radiology COMMAND --help' for its options)\n\n"
               "commands:\n"
               "  demo       the main job: train -> calibrate -> eval (test, dev) -> predict -> report\n"
               "  train      QLoRA fine-tuning on data/train.jsonl -> adapter directory\n"
               "  calibrate  temperature and REVIEW threshold on data/val.jsonl -> <adapter>/calibration.json\n"
               "  predict    JSONL {\"id\",\"note\"} in, JSONL predictions out (stdin -> stdout filter)\n"
               "  eval       metrics on a labelled split (accuracy, macro-F1, ECE, safety, ...)\n"
               "  report     the summary report of eval runs: --out DIR [--test DIR] [--dev DIR]\n");
}

static int rad_main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        rad_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const char *c = argv[1];
    cli_prog = "radiology";
    if (!strcmp(c, "train")) return cmd_rad_train(argc - 1, argv + 1);
    if (!strcmp(c, "calibrate")) return cmd_rad_calibrate(argc - 1, argv + 1);
    if (!strcmp(c, "predict")) return cmd_rad_predict(argc - 1, argv + 1);
    if (!strcmp(c, "eval")) return cmd_rad_eval(argc - 1, argv + 1);
    if (!strcmp(c, "demo")) return cmd_rad_demo(argc - 1, argv + 1);
    if (!strcmp(c, "report")) return rad_report_main(argc - 1, argv + 1);
    cli_error("unknown command '%s'", c);
    rad_usage(stderr);
    return 2;
}

#ifndef RAD_NO_MAIN   // tests include this file and call the commands themselves
int main(int argc, char **argv) {
#ifdef _OPENMP
    // OpenMP threads that spin while waiting collapse on a shared, busy machine (measured on the 2-core box
    // with other jobs running: the trainer at 213 tokens/s with the default policy, 1321 with passive). The
    // policy is read when the OpenMP runtime loads, so set it and start again once, unless the user chose one.
    if (!getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);   // on failure: carry on with the default policy
    }
#endif
    return rad_main(argc, argv);
}
#endif
