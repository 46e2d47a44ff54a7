// rad_core.h - the radiology protocol engine behind build/radiology: prompt construction, label scoring
// over a token trie of the 61 catalogue labels (60 exams + REVIEW), temperature calibration, the REVIEW
// threshold, the deterministic safety check on top, and text embeddings for semantic similarity.
//
// This is part of the radiology program, not a library: include it after "qlora.h" has been included with
// QLORA_IMPLEMENTATION in the same translation unit (demo/qlora_commands.h does that), e.g.
//
//     #include "qlora_commands.h"      // qlora.h implementation + the qlora CLI (train)
//     #include "rad_core.h"            // defines RAD_RULES_IMPLEMENTATION and includes radiology_rules.h
//
// Every function is static. Nothing here prints or exits; errors come back as qlora_status + qlora_error,
// and an error detail never contains note text (it names the file, the label or the line only).
//
// THE PROMPT (rad_prompt_build). The model sees, as one string tokenized as BOS + encode(prompt):
//
//     "Order: <note text, truncated to max_note_tokens>\nFacts: <summary>\nProtocol:"
//
// and the completion is the label text followed by EOS, tokenized separately as encode(label) + EOS. This
// is exactly what `qlora train` does with a {"prompt": ..., "completion": ...} JSONL line (template
// "{prompt}": BOS + encode(prompt), then encode(completion) + EOS, loss on the completion only), so the
// training data written by `radiology train` and the scoring path here see identical tokens.
// The "Facts:" line is feature engineering: a compact, canonical rendering of what rad_extract read from
// the note (eGFR, creatinine, AKI, dialysis, CKD stage, prior contrast reaction by class and severity,
// pregnancy, implant MR status, anticoagulation, age/sex, negative decision rules, context cues), e.g.
// "Facts: 67F; anticoagulated; eGFR 70". It makes the modifiers (G1-G15) that a small model would
// otherwise have to learn from many spellings explicit; the safety check still runs on the facts
// afterwards, so the model is never the only guard. "Facts: none" when nothing was found.
// Truncation cuts the note text (at a word boundary) so that the note part encodes to at most
// max_note_tokens tokens; rad_result.truncated reports it. The cut is done on the text, so the trainer
// re-encoding the same prompt string gets the same tokens.
//
// SCORING. Each label's score is log p(label tokens + EOS | prompt) from one batched pass over the label
// trie (qlora_model_score_tree): the prompt is prefilled once and all trie nodes run together under a tree
// attention mask. Calibrated probabilities p[k] = softmax_k(score_k / T) over all 61 labels (REVIEW is a
// label the model was trained to produce); the model's label is the argmax, its confidence p[argmax].
//
// DECISION (rad_classify), in order:
//   1. empty note (only blanks)           -> REVIEW, reason "empty note", the model is not run
//   2. model label = argmax p; the safety check (rad_safety_check) may switch it to its documented safe
//      alternative or to REVIEW (reason "safety switch"); flags are the check's flags
//   3. under-triage guards: the facts show an acute stroke work-up (G11: code stroke, wake-up stroke, large
//      vessel occlusion, thrombectomy / thrombolysis candidate, last known well within 24 h) and the label is
//      not the CT stroke protocol -> REVIEW (reason "stroke window"); an anticoagulated patient who hit the head
//      (G9) and a label other than CT head or the CT stroke protocol -> REVIEW (reason "anticoagulated head
//      strike")
//   4. if the result is not REVIEW and confidence < threshold -> REVIEW (reason "low confidence"); the
//      alternatives and the flags of step 2 are kept
//   5. the model itself chose REVIEW       -> reason "model abstained"
// confidence is always the model's calibrated confidence p[model_label].
//
// THREADS. A rad_engine is read-only after rad_engine_open and may be shared by any number of threads; each
// thread uses its own rad_worker. When more than one worker runs at once, call rad_threads_single() first
// so that OpenMP/OpenBLAS inside each call do not oversubscribe the cores.
#ifndef RAD_CORE_H
#define RAD_CORE_H

#ifndef QLORA_H
#error "include qlora.h (with QLORA_IMPLEMENTATION) or qlora_commands.h before rad_core.h"
#endif

#define RAD_RULES_IMPLEMENTATION
#define RAD_STATIC
#include "radiology_rules.h"

#if defined(__GNUC__) || defined(__clang__)
#define RADC_FN static __attribute__((unused))
#else
#define RADC_FN static
#endif

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

// ---------------------------------------------------------------------------------------------------------------
// API

#define RAD_DEFAULT_MAX_NOTE_TOKENS 256   // token budget of the note part of the prompt
#define RAD_PROMPT_VERSION 1              // recorded in calibration.json; bump when rad_prompt_build changes
#define RAD_CALIBRATION_FILE "calibration.json"
#ifndef RAD_CHUNK
#define RAD_CHUNK 128                     // rows per model step (prompt and trie)
#endif

// Options of rad_engine_open. Zero-initialize, then set model_dir.
typedef struct rad_engine_options {
    const char *model_dir;        // HF Llama directory: config.json, model.safetensors, tokenizer.model (required)
    const char *adapter_dir;      // PEFT adapter directory; NULL or "" = base model only
    const char *calibration;      // calibration.json; NULL = <adapter_dir>/calibration.json when it exists;
                                  //   "" = none (T = 1, threshold 0)
    int         max_note_tokens;  // 0 = RAD_DEFAULT_MAX_NOTE_TOKENS
    int         no_facts;         // 1 = leave out the "Facts:" line (must match how the adapter was trained)
    int         blocksize;        // NF4 block size, 0 = 64
} rad_engine_options;

typedef struct rad_engine {
    qlora_model     model;
    qlora_tokenizer tok;
    int             has_adapter;
    int             max_note_tokens, no_facts;
    // label trie over encode(label) + EOS of the 61 labels; parents precede children
    int64_t         n_nodes;
    int64_t         n_inner;                    // nodes with children: those that run through the model
    int32_t        *node_token;                 // (n_nodes)
    int32_t        *node_parent;                // (n_nodes), -1 = child of the prompt
    int32_t         label_leaf[RAD_NUM_LABELS]; // node of the label's final (EOS) token
    int32_t         label_len[RAD_NUM_LABELS];  // tokens of the label incl. EOS
    int32_t         max_prompt_tokens;          // prompt budget: note budget + fixed text + facts line
    int64_t         ctx;                        // KV-cache positions a worker needs
    // calibration
    double          temperature;                // 1 when not calibrated
    double          threshold;                  // auto-assign when confidence >= threshold; 0 when not calibrated
    int             calibrated;
    // identity, for the audit log
    char            model_sha256[65];           // of model.safetensors (or the index file)
    char            adapter_sha256[65];         // of adapter_model.safetensors ("" when none)
} rad_engine;

typedef struct rad_worker {
    const rad_engine *eng;
    qlora_kv_cache    kv;
    double           *node_logp;    // (n_nodes)
    int32_t          *ids;          // (ctx) prompt tokens
    char             *prompt;       // prompt text scratch
    size_t            prompt_cap;
} rad_worker;

typedef struct rad_result {
    int         label;                   // final label: 0..59 exam (radiology_rules.h indices), 60 = RAD_REVIEW
    int         model_label;             // the model's argmax (-1 when the model was not run)
    int         safety_label;            // what the safety check made of model_label (-1 when not run)
    double      confidence;              // calibrated p[model_label] (0 when the model was not run)
    double      p[RAD_NUM_LABELS];       // calibrated probabilities over all 61 labels (0 when not run)
    double      score[RAD_NUM_LABELS];   // raw log p(label + EOS | prompt), uncalibrated (0 when not run)
    int         top[3];                  // the three most probable labels by p (-1 when not run)
    double      top_p[3];
    unsigned    flags;                   // RAD_FLAG_* (rad_safety_check on model_label)
    unsigned    reasons;                 // rad_decision.reasons: contraindications that switched the label
    int         review;                  // label == RAD_REVIEW
    int         truncated;               // the note was cut to max_note_tokens
    int         prompt_tokens;           // tokens of the prompt as scored (BOS included)
    const char *reason;                  // static string: "", "empty note", "low confidence",
                                         //   "safety switch", "model abstained", "safety review",
                                         //   "stroke window", "anticoagulated head strike"
    rad_facts   facts;                   // what rad_extract read
} rad_result;

// Loads model, tokenizer (model_dir/tokenizer.model or .json), the adapter and calibration; builds the trie.
// A missing directory/file or an adapter whose shapes do not fit the model fails here with a clear message.
RADC_FN qlora_status rad_engine_open(rad_engine *e, const rad_engine_options *o, qlora_error *err);
RADC_FN void         rad_engine_close(rad_engine *e);
RADC_FN qlora_status rad_worker_init(rad_worker *w, const rad_engine *e, qlora_error *err);
RADC_FN void         rad_worker_free(rad_worker *w);

// Builds the prompt text of a note into *out (malloc'd, NUL-terminated; caller frees). *truncated = 1 when the
// note was cut.
RADC_FN qlora_status rad_prompt_build(const rad_engine *e, const char *note, size_t len, char **out,
                                     int *truncated, qlora_error *err);

// Classifies one note (len bytes, need not be NUL-terminated). Fills *out completely. Thread-safe per worker.
RADC_FN qlora_status rad_classify(const rad_engine *e, rad_worker *w, const char *note, size_t len,
                                 rad_result *out, qlora_error *err);
// Same, with given temperature and threshold instead of the engine's (calibration, evaluation sweeps).
RADC_FN qlora_status rad_classify_with(const rad_engine *e, rad_worker *w, const char *note, size_t len,
                                      double temperature, double threshold, rad_result *out, qlora_error *err);
// Classifies n notes with `threads` workers (threads <= 1: in the calling thread). out (n). Calls
// rad_threads_single(threads) itself. A failing note stops the batch: *failed_index receives it (-1 when all
// succeeded; may be NULL) and err its detail.
RADC_FN qlora_status rad_classify_many(const rad_engine *e, const char *const *notes, const size_t *lens, int64_t n,
                                       int threads, rad_result *out, int64_t *failed_index, qlora_error *err);
// Re-derives p, model_label, top-3, final label, flags and reason of r from r->score and r->facts for another
// temperature/threshold, without running the model (r must come from rad_classify on a non-empty note).
RADC_FN void rad_result_recalibrate(rad_result *r, double temperature, double threshold);

// Sentence embedding of text for semantic similarity: mean of the final hidden states over BOS +
// encode(text) (qlora_model_embed, adapter applied). out has rad_embed_dim(e) floats.
RADC_FN int64_t      rad_embed_dim(const rad_engine *e);
RADC_FN qlora_status rad_embed_text(const rad_engine *e, rad_worker *w, const char *text, float *out,
                                   qlora_error *err);
RADC_FN double       rad_cosine(const float *a, const float *b, int64_t n);

// Calibration fit (pure functions of score arrays; used by `radiology calibrate` and tests).
// scores: (n, RAD_NUM_LABELS) raw label scores; gold: (n) label indices. Returns the T in [0.05, 20]
// minimising the mean NLL of the gold labels under softmax(score / T) (golden-section search on log T).
RADC_FN double rad_fit_temperature(const double *scores, const int *gold, int64_t n);
// Lowest confidence threshold at which the auto-assigned notes reach accuracy >= target. conf (n): calibrated
// confidence; auto_label (n): the label after the safety check (what is assigned when confident); gold (n).
// A note is auto-assigned when auto_label is an exam (not RAD_REVIEW: REVIEW decisions of the model or the
// safety check go to a radiologist anyway) and conf >= threshold; accuracy = exact match over the auto-assigned
// notes; coverage = auto-assigned / n. The lowest qualifying threshold keeps coverage as high as possible.
// Returns 1.0000001 when none qualifies (every exam label goes to REVIEW). *coverage and *accuracy (may be
// NULL) describe the choice.
RADC_FN double rad_fit_threshold(const double *conf, const int *auto_label, const int *gold, int64_t n,
                                double target, double *coverage, double *accuracy);
// Reads/writes <dir>/calibration.json: {"temperature", "threshold", "prompt_version", "max_note_tokens",
// "no_facts", "val_nll", "val_coverage", "val_accuracy"}.
RADC_FN qlora_status rad_calibration_write(const char *dir, double temperature, double threshold,
                                          const rad_engine *e, double nll, double coverage, double accuracy,
                                          qlora_error *err);

// Flags as a JSON array body: "\"contrast_risk\",\"pregnancy\"" (no brackets); buf of cap bytes.
RADC_FN void rad_flags_json(unsigned flags, char *buf, size_t cap);
// SHA-256 of a file as 64 hex digits (+NUL); "" on error. And of a buffer.
RADC_FN int  rad_sha256_file(const char *path, char out[65]);
RADC_FN void rad_sha256_hex(const void *data, size_t n, char out[65]);
// One thread inside each model call (OpenMP and OpenBLAS): workers parallelize across notes. Called by
// rad_classify_many and by every worker thread it starts.
RADC_FN void rad_threads_single(int n_workers);

// ---------------------------------------------------------------------------------------------------------------
// implementation

static const char *const rad__reason_empty = "empty note";

// ---- SHA-256 (FIPS 180-4) ----

typedef struct rad__sha256 {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t   fill;
} rad__sha256;

static const uint32_t rad__sha_k[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u, 0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u, 0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu, 0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u, 0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u, 0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u, 0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u, 0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u, 0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u};

RADC_FN uint32_t rad__ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

RADC_FN void rad__sha_block(rad__sha256 *s, const unsigned char *p) {
    uint32_t w[64], a[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rad__ror(w[i - 15], 7) ^ rad__ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rad__ror(w[i - 2], 17) ^ rad__ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    for (int i = 0; i < 8; i++) a[i] = s->h[i];
    for (int i = 0; i < 64; i++) {
        uint32_t S1 = rad__ror(a[4], 6) ^ rad__ror(a[4], 11) ^ rad__ror(a[4], 25);
        uint32_t ch = (a[4] & a[5]) ^ (~a[4] & a[6]);
        uint32_t t1 = a[7] + S1 + ch + rad__sha_k[i] + w[i];
        uint32_t S0 = rad__ror(a[0], 2) ^ rad__ror(a[0], 13) ^ rad__ror(a[0], 22);
        uint32_t mj = (a[0] & a[1]) ^ (a[0] & a[2]) ^ (a[1] & a[2]);
        uint32_t t2 = S0 + mj;
        a[7] = a[6]; a[6] = a[5]; a[5] = a[4]; a[4] = a[3] + t1;
        a[3] = a[2]; a[2] = a[1]; a[1] = a[0]; a[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++) s->h[i] += a[i];
}

RADC_FN void rad__sha_init(rad__sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au,
                                   0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->fill = 0;
}

RADC_FN void rad__sha_update(rad__sha256 *s, const void *data, size_t n) {
    const unsigned char *p = (const unsigned char *)data;
    s->len += n;
    while (n > 0) {
        size_t k = 64 - s->fill < n ? 64 - s->fill : n;
        memcpy(s->buf + s->fill, p, k);
        s->fill += k;
        p += k;
        n -= k;
        if (s->fill == 64) {
            rad__sha_block(s, s->buf);
            s->fill = 0;
        }
    }
}

RADC_FN void rad__sha_final(rad__sha256 *s, char out[65]) {
    uint64_t bits = s->len * 8;
    unsigned char pad = 0x80, zero = 0, lenb[8];
    rad__sha_update(s, &pad, 1);
    while (s->fill != 56) rad__sha_update(s, &zero, 1);
    for (int i = 0; i < 8; i++) lenb[i] = (unsigned char)(bits >> (56 - 8 * i));
    rad__sha_update(s, lenb, 8);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", (unsigned)s->h[i]);
    out[64] = 0;
}

RADC_FN void rad_sha256_hex(const void *data, size_t n, char out[65]) {
    rad__sha256 s;
    rad__sha_init(&s);
    rad__sha_update(&s, data, n);
    rad__sha_final(&s, out);
}

RADC_FN int rad_sha256_file(const char *path, char out[65]) {
    out[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    rad__sha256 s;
    rad__sha_init(&s);
    unsigned char *buf = (unsigned char *)malloc(1 << 16);
    size_t k;
    if (!buf) {
        fclose(f);
        return 0;
    }
    while ((k = fread(buf, 1, 1 << 16, f)) > 0) rad__sha_update(&s, buf, k);
    int ok = !ferror(f);
    fclose(f);
    free(buf);
    if (ok) rad__sha_final(&s, out);
    return ok;
}

// ---- small helpers ----

RADC_FN int rad__is_file(const char *p) {
    FILE *f = fopen(p, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

RADC_FN char *rad__path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *p = (char *)malloc(n);
    if (p) snprintf(p, n, "%s/%s", dir, name);
    return p;
}

RADC_FN void rad_flags_json(unsigned flags, char *buf, size_t cap) {
    size_t at = 0;
    if (cap) buf[0] = 0;
    for (int k = 0; k < RAD_NUM_FLAGS; k++)
        if (flags >> k & 1u) {
            int w = snprintf(buf + at, cap > at ? cap - at : 0, "%s\"%s\"", at ? "," : "", rad_flag_name(1u << k));
            if (w > 0) at += (size_t)w;
            if (at >= cap) {
                if (cap) buf[cap - 1] = 0;
                return;
            }
        }
}

RADC_FN void rad_threads_single(int n_workers) {
    // Parallelism is across notes only: the matrices of one note are small, and OpenMP / OpenBLAS thread pools
    // inside each call spin against each other and against the other workers (measured: 1 worker with 2 OpenMP
    // threads on a busy 2-core machine ran 10x slower than 2 single-threaded workers). omp_set_num_threads
    // applies to the calling thread: each worker thread calls this too.
#ifdef _OPENMP
    omp_set_num_threads(1);
#endif
#ifdef QLORA_USE_OPENBLAS
    openblas_set_num_threads(1);
#endif
    (void)n_workers;
}

RADC_FN double rad_cosine(const float *a, const float *b, int64_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (int64_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : 0.0;
}

// ---- the prompt ----

// Appends text to a growable buffer.
typedef struct rad__buf {
    char  *s;
    size_t n, cap;
    int    oom;
} rad__buf;

RADC_FN void rad__put(rad__buf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2 + 64;
        char *t = (char *)realloc(b->s, cap);
        if (!t) {
            b->oom = 1;
            return;
        }
        b->s = t;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

RADC_FN void rad__puts(rad__buf *b, const char *s) { rad__put(b, s, strlen(s)); }

RADC_FN void rad__item(rad__buf *b, int *first, const char *s) {
    if (!*first) rad__puts(b, "; ");
    *first = 0;
    rad__puts(b, s);
}

static const char *rad__severity(int r) {
    return r == RAD_REACT_MILD ? "mild" : r == RAD_REACT_SEVERE ? "severe" : "unknown severity";
}

// The "Facts:" summary of rad_extract's output (canonical, short, no free text from the note).
RADC_FN void rad__facts_summary(const rad_facts *f, rad__buf *b) {
    char t[96];
    int first = 1;
    if (f->age >= 0 || f->sex) {
        if (f->age >= 0) snprintf(t, sizeof t, "%d%s", f->age, f->sex == 'F' ? "F" : f->sex == 'M' ? "M" : "y");
        else snprintf(t, sizeof t, "%s", f->sex == 'F' ? "female" : "male");
        rad__item(b, &first, t);
    }
    if (f->egfr >= 0) {
        snprintf(t, sizeof t, "eGFR %.0f", (double)f->egfr);
        rad__item(b, &first, t);
    }
    if (f->creat >= 0) {
        snprintf(t, sizeof t, "Cr %.1f mg/dL", (double)f->creat);
        rad__item(b, &first, t);
    }
    if (f->aki) rad__item(b, &first, "AKI");
    if (f->dialysis) rad__item(b, &first, f->dialysis == RAD_DIALYSIS_ANURIC ? "dialysis, anuric" : "dialysis");
    if (f->ckd_stage) {
        snprintf(t, sizeof t, "CKD %d", (int)f->ckd_stage);
        rad__item(b, &first, t);
    }
    if (f->renal_risk) rad__item(b, &first, "renal risk factors");
    if (f->reaction[RAD_CLASS_IOD]) {
        snprintf(t, sizeof t, "iodinated contrast reaction, %s", rad__severity(f->reaction[RAD_CLASS_IOD]));
        rad__item(b, &first, t);
    }
    if (f->reaction[RAD_CLASS_GAD]) {
        snprintf(t, sizeof t, "gadolinium reaction, %s", rad__severity(f->reaction[RAD_CLASS_GAD]));
        rad__item(b, &first, t);
    }
    if (f->distractors & RAD_DIS_IODINE_SHELLFISH) rad__item(b, &first, "iodine/shellfish allergy only");
    if (f->pregnant > 0) rad__item(b, &first, "pregnant");
    else if (f->pregnant < 0) rad__item(b, &first, "not pregnant");
    if (f->breastfeeding) rad__item(b, &first, "breastfeeding");
    if (f->implant == RAD_IMPLANT_CONDITIONAL) rad__item(b, &first, "implant, MR conditional");
    else if (f->implant == RAD_IMPLANT_UNKNOWN) rad__item(b, &first, "implant, MR status unknown");
    else if (f->implant == RAD_IMPLANT_UNSAFE) rad__item(b, &first, "implant, MR unsafe");
    if (f->anticoag) rad__item(b, &first, "anticoagulated");
    if (f->rule_negative) {
        static const char *const names[8] = {"c-spine", "head CT", "ankle", "knee", "PE", "low back pain",
                                             "headache", "sinusitis"};
        for (int k = 0; k < 8; k++)
            if (f->rule_negative >> k & 1u) {
                snprintf(t, sizeof t, "%s decision rule negative", names[k]);
                rad__item(b, &first, t);
            }
    }
    if (f->incomplete) rad__item(b, &first, "too many cues");
    if (first) rad__puts(b, "none");
}

RADC_FN int rad__blank(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!(s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == '\f' || s[i] == '\v')) return 0;
    return 1;
}

// Tokens of text without BOS/EOS (-1 on error).
RADC_FN int64_t rad__count(const qlora_tokenizer *tok, const char *s, size_t n) {
    int64_t k = 0;
    qlora_status st = qlora_tokenizer_encode(tok, s, n, 0, 0, NULL, 0, &k, NULL);
    return (st == QLORA_OK || st == QLORA_ERR_SHAPE) ? k : -1;
}

// Length in bytes of the longest prefix of the (trimmed) note that ends at a word boundary and encodes to at
// most `budget` tokens (binary search over the blank positions).
RADC_FN size_t rad__cut(const qlora_tokenizer *tok, const char *s, size_t n, int64_t budget) {
    size_t lo = 0, hi = n;   // prefix of lo bytes fits; hi does not
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2, c = mid;
        while (c > lo && !(s[c] == ' ' || s[c] == '\n' || s[c] == '\t')) c--;   // back to a blank
        if (c == lo) {   // no blank in (lo, mid]: a long word; cut at a UTF-8 boundary instead
            c = mid;
            while (c > lo && ((unsigned char)s[c] & 0xC0) == 0x80) c--;
            if (c == lo) break;
        }
        int64_t k = rad__count(tok, s, c);
        if (k >= 0 && k <= budget) lo = c;
        else hi = c;
    }
    while (lo > 0 && (s[lo - 1] == ' ' || s[lo - 1] == '\t' || s[lo - 1] == '\n')) lo--;
    return lo;
}

RADC_FN qlora_status rad__prompt(const qlora_tokenizer *tok, int max_note_tokens, int no_facts, const char *note,
                                size_t len, const rad_facts *facts, char **out, int *truncated, qlora_error *err) {
    *out = NULL;
    *truncated = 0;
    // trim blanks at both ends
    while (len > 0 && rad__blank(note, 1)) {
        note++;
        len--;
    }
    while (len > 0 && rad__blank(note + len - 1, 1)) len--;
    size_t keep = len;
    int64_t k = rad__count(tok, note, len);
    if (k < 0) return qlora__fail(err, QLORA_ERR_ARG, "prompt: the note could not be tokenized");
    if (k > max_note_tokens) {
        keep = rad__cut(tok, note, len, max_note_tokens);
        *truncated = 1;
    }
    rad__buf b;
    memset(&b, 0, sizeof b);
    rad__puts(&b, "Order: ");
    rad__put(&b, note, keep);
    if (!no_facts) {
        rad__puts(&b, "\nFacts: ");
        rad__facts_summary(facts, &b);
    }
    rad__puts(&b, "\nProtocol:");
    if (b.oom) {
        free(b.s);
        return qlora__fail(err, QLORA_ERR_NOMEM, "prompt: out of memory");
    }
    *out = b.s;
    return QLORA_OK;
}

RADC_FN qlora_status rad_prompt_build(const rad_engine *e, const char *note, size_t len, char **out,
                                     int *truncated, qlora_error *err) {
    rad_facts f;
    rad_extract(note, len, &f);
    return rad__prompt(&e->tok, e->max_note_tokens, e->no_facts, note, len, &f, out, truncated, err);
}

// ---- engine ----

RADC_FN void rad_engine_close(rad_engine *e) {
    if (!e) return;
    qlora_model_free(&e->model);
    qlora_tokenizer_free(&e->tok);
    free(e->node_token);
    free(e->node_parent);
    memset(e, 0, sizeof *e);
}

// Builds the label trie from encode(label) + EOS.
RADC_FN qlora_status rad__trie(rad_engine *e, qlora_error *err) {
    int64_t cap = 0, total = 0;
    int32_t *ids[RAD_NUM_LABELS];
    int64_t len[RAD_NUM_LABELS];
    qlora_status st = QLORA_OK;
    memset(ids, 0, sizeof ids);
    for (int k = 0; k < RAD_NUM_LABELS && st == QLORA_OK; k++) {
        const char *name = rad_label_name(k);
        int64_t n = rad__count(&e->tok, name, strlen(name)) + 1;
        ids[k] = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + 1));
        if (!ids[k]) st = qlora__fail(err, QLORA_ERR_NOMEM, "label trie");
        else st = qlora_tokenizer_encode(&e->tok, name, strlen(name), 0, 1, ids[k], n, &len[k], err);
        if (st == QLORA_OK) {
            total += len[k];
            for (int64_t j = 0; j < len[k]; j++)
                if (ids[k][j] < 0 || ids[k][j] >= e->model.cfg.vocab_size)
                    st = qlora__fail(err, QLORA_ERR_SHAPE,
                                     "label \"%s\": token id %d is outside the model's vocabulary of %d (does the "
                                     "tokenizer belong to this model?)",
                                     name, (int)ids[k][j], (int)e->model.cfg.vocab_size);
        }
    }
    cap = total > 0 ? total : 1;
    if (st == QLORA_OK) {
        e->node_token = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap);
        e->node_parent = (int32_t *)malloc(sizeof(int32_t) * (size_t)cap);
        if (!e->node_token || !e->node_parent) st = qlora__fail(err, QLORA_ERR_NOMEM, "label trie");
    }
    e->n_nodes = 0;
    for (int k = 0; k < RAD_NUM_LABELS && st == QLORA_OK; k++) {
        int32_t at = -1;
        for (int64_t j = 0; j < len[k]; j++) {
            int32_t found = -1;
            for (int64_t i = at + 1; i < e->n_nodes && found < 0; i++)   // children come after their parent
                if (e->node_parent[i] == at && e->node_token[i] == ids[k][j]) found = (int32_t)i;
            if (found < 0) {
                e->node_token[e->n_nodes] = ids[k][j];
                e->node_parent[e->n_nodes] = at;
                found = (int32_t)e->n_nodes++;
            } else if (j == len[k] - 1) {
                st = qlora__fail(err, QLORA_ERR_FORMAT, "label trie: two labels encode to the same tokens");
            }
            at = found;
        }
        e->label_leaf[k] = at;
        e->label_len[k] = (int32_t)len[k];
    }
    e->n_inner = 0;
    for (int64_t i = 0; i < e->n_nodes && st == QLORA_OK; i++) {
        int has = 0;
        for (int64_t j = i + 1; j < e->n_nodes && !has; j++) has = e->node_parent[j] == i;
        e->n_inner += has;
    }
    for (int k = 0; k < RAD_NUM_LABELS; k++) free(ids[k]);
    return st;
}

RADC_FN qlora_status rad__read_calibration(rad_engine *e, const char *path, qlora_error *err) {
    qlora_json_doc doc;
    qlora_status st = qlora_json_read_file(&doc, path, err);
    if (st != QLORA_OK) return st;
    const qlora_json *t = qlora_json_get(&doc.root, "temperature"), *h = qlora_json_get(&doc.root, "threshold");
    const qlora_json *pv = qlora_json_get(&doc.root, "prompt_version");
    if (!t || t->type != QLORA_JSON_NUMBER || !(t->number > 0) || !h || h->type != QLORA_JSON_NUMBER ||
        !(h->number >= 0)) {
        qlora_json_free(&doc);
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: needs a positive \"temperature\" and a \"threshold\" >= 0",
                           path);
    }
    if (pv && pv->type == QLORA_JSON_NUMBER && pv->number != RAD_PROMPT_VERSION) {
        qlora_json_free(&doc);
        return qlora__fail(err, QLORA_ERR_FORMAT,
                           "%s: made for prompt version %g, this program builds version %d (train and calibrate again)",
                           path, pv->number, RAD_PROMPT_VERSION);
    }
    e->temperature = t->number;
    e->threshold = h->number;
    e->calibrated = 1;
    const qlora_json *mx = qlora_json_get(&doc.root, "max_note_tokens"), *nf = qlora_json_get(&doc.root, "no_facts");
    if (mx && mx->type == QLORA_JSON_NUMBER && mx->number >= 16) e->max_note_tokens = (int)mx->number;
    if (nf && nf->type == QLORA_JSON_BOOL) e->no_facts = nf->boolean;
    qlora_json_free(&doc);
    return QLORA_OK;
}

RADC_FN qlora_status rad_engine_open(rad_engine *e, const rad_engine_options *o, qlora_error *err) {
    memset(e, 0, sizeof *e);
    e->temperature = 1.0;
    e->threshold = 0.0;
    if (!o || !o->model_dir || !*o->model_dir) return qlora__fail(err, QLORA_ERR_ARG, "no model directory given");
    e->max_note_tokens = o->max_note_tokens > 0 ? o->max_note_tokens : RAD_DEFAULT_MAX_NOTE_TOKENS;
    e->no_facts = o->no_facts;
    const char *ad = o->adapter_dir && *o->adapter_dir ? o->adapter_dir : NULL;
    qlora_status st = QLORA_OK;
    char *cfg = rad__path(o->model_dir, "config.json");
    if (!cfg || !rad__is_file(cfg))
        st = qlora__fail(err, QLORA_ERR_IO, "model directory %s: no config.json (pass --model DIR)", o->model_dir);
    free(cfg);
    if (st == QLORA_OK && ad) {
        char *ac = rad__path(ad, "adapter_config.json");
        if (!ac || !rad__is_file(ac))
            st = qlora__fail(err, QLORA_ERR_IO,
                             "adapter directory %s: no adapter_config.json (train one with `radiology train`, or "
                             "pass --adapter none)",
                             ad);
        free(ac);
    }
    // tokenizer
    if (st == QLORA_OK) {
        char *tp = rad__path(o->model_dir, "tokenizer.model");
        if (tp && !rad__is_file(tp)) {
            free(tp);
            tp = rad__path(o->model_dir, "tokenizer.json");
        }
        if (!tp || !rad__is_file(tp))
            st = qlora__fail(err, QLORA_ERR_IO, "model directory %s: no tokenizer.model or tokenizer.json",
                             o->model_dir);
        else st = qlora_tokenizer_load(&e->tok, tp, err);
        free(tp);
    }
    // model (+ adapter)
    if (st == QLORA_OK) {
        qlora_model_options mo;
        memset(&mo, 0, sizeof mo);
        mo.blocksize = o->blocksize > 0 ? o->blocksize : 64;
        st = qlora_model_load(&e->model, o->model_dir, &mo, err);
        if (st == QLORA_OK && ad) {
            st = qlora_model_load_adapter(&e->model, ad, err);
            e->has_adapter = st == QLORA_OK;
        }
    }
    if (st == QLORA_OK && e->tok.eos_id < 0)
        st = qlora__fail(err, QLORA_ERR_FORMAT, "the tokenizer has no EOS token (labels end with EOS)");
    if (st == QLORA_OK && e->tok.bos_id < 0)
        st = qlora__fail(err, QLORA_ERR_FORMAT, "the tokenizer has no BOS token");
    if (st == QLORA_OK) st = rad__trie(e, err);
    // calibration
    if (st == QLORA_OK) {
        if (o->calibration && *o->calibration) st = rad__read_calibration(e, o->calibration, err);
        else if (!o->calibration && ad) {
            char *cp = rad__path(ad, RAD_CALIBRATION_FILE);
            if (cp && rad__is_file(cp)) st = rad__read_calibration(e, cp, err);
            free(cp);
        }
    }
    // identity
    if (st == QLORA_OK) {
        char *mp = rad__path(o->model_dir, "model.safetensors");
        if (mp && !rad__is_file(mp)) {
            free(mp);
            mp = rad__path(o->model_dir, "model.safetensors.index.json");
        }
        if (mp) rad_sha256_file(mp, e->model_sha256);
        free(mp);
        if (ad) {
            char *ap = rad__path(ad, "adapter_model.safetensors");
            if (ap) rad_sha256_file(ap, e->adapter_sha256);
            free(ap);
        }
    }
    // context: prompt budget (note + fixed text + facts line) + one slot per inner trie node. A model with a
    // short context gets a smaller note budget; `radiology train` opens the engine too, so training prompts
    // are cut the same way.
    if (st == QLORA_OK) {
        int64_t maxpos = e->model.cfg.max_position_embeddings;
        int64_t fixed = 128;
        if (e->n_inner + fixed + 32 > maxpos)
            st = qlora__fail(err, QLORA_ERR_SHAPE,
                             "the label trie has %lld inner nodes: it needs max_position_embeddings >= %lld, the "
                             "model has %lld",
                             (long long)e->n_inner, (long long)(e->n_inner + fixed + 32), (long long)maxpos);
        else {
            if (e->max_note_tokens + fixed + e->n_inner > maxpos)
                e->max_note_tokens = (int)(maxpos - fixed - e->n_inner);
            e->max_prompt_tokens = (int32_t)(e->max_note_tokens + fixed);
            e->ctx = e->max_prompt_tokens + e->n_inner;
        }
    }
    if (st != QLORA_OK) {
        qlora_error keep;
        if (err) keep = *err;
        rad_engine_close(e);
        if (err) *err = keep;
    }
    return st;
}

RADC_FN int64_t rad_embed_dim(const rad_engine *e) { return e->model.cfg.hidden_size; }

RADC_FN void rad_worker_free(rad_worker *w) {
    if (!w) return;
    qlora_kv_cache_free(&w->kv);
    free(w->node_logp);
    free(w->ids);
    memset(w, 0, sizeof *w);
}

RADC_FN qlora_status rad_worker_init(rad_worker *w, const rad_engine *e, qlora_error *err) {
    memset(w, 0, sizeof *w);
    w->eng = e;
    qlora_status st = qlora_kv_cache_init(&w->kv, &e->model, e->ctx, RAD_CHUNK, err);
    w->node_logp = (double *)malloc(sizeof(double) * (size_t)(e->n_nodes > 0 ? e->n_nodes : 1));
    w->ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(e->ctx + 1));
    if (st == QLORA_OK && (!w->node_logp || !w->ids)) st = qlora__fail(err, QLORA_ERR_NOMEM, "worker buffers");
    if (st != QLORA_OK) rad_worker_free(w);
    return st;
}

// ---- decision ----

RADC_FN void rad__softmax(const double *score, double T, double *p) {
    double mx = -INFINITY, sum = 0;
    for (int k = 0; k < RAD_NUM_LABELS; k++) mx = score[k] / T > mx ? score[k] / T : mx;
    for (int k = 0; k < RAD_NUM_LABELS; k++) sum += (p[k] = exp(score[k] / T - mx));
    for (int k = 0; k < RAD_NUM_LABELS; k++) p[k] /= sum;
}

RADC_FN void rad__decide(rad_result *r, double T, double threshold) {
    rad__softmax(r->score, T, r->p);
    int best = 0;
    for (int k = 1; k < RAD_NUM_LABELS; k++)
        if (r->p[k] > r->p[best]) best = k;
    r->model_label = best;
    r->confidence = r->p[best];
    for (int j = 0; j < 3; j++) {
        int pick = -1;
        for (int k = 0; k < RAD_NUM_LABELS; k++) {
            int used = 0;
            for (int i = 0; i < j; i++) used |= r->top[i] == k;
            if (!used && (pick < 0 || r->p[k] > r->p[pick])) pick = k;
        }
        r->top[j] = pick;
        r->top_p[j] = r->p[pick];
    }
    rad_decision d;
    rad_safety_check(&r->facts, rad_label_name(best), &d);
    r->safety_label = d.label;
    r->flags = d.flags;
    r->reasons = d.reasons;
    r->label = d.label;
    if (best == RAD_REVIEW) r->reason = "model abstained";
    else if (d.label == RAD_REVIEW) r->reason = "safety review";
    else if (d.label != best) r->reason = "safety switch";
    else r->reason = "";
    if (r->facts.stroke_window && r->label != RAD_REVIEW && r->label != RAD_CT_STROKE) {
        r->label = RAD_REVIEW;   // under-triage guard (G11)
        r->reason = "stroke window";
    }
    if (r->facts.anticoag && r->facts.head_strike && r->label != RAD_REVIEW && r->label != RAD_CT_HEAD &&
        r->label != RAD_CT_STROKE) {
        r->label = RAD_REVIEW;   // under-triage guard (G9)
        r->reason = "anticoagulated head strike";
    }
    if (r->label != RAD_REVIEW && r->confidence < threshold) {
        r->label = RAD_REVIEW;
        r->reason = "low confidence";
    }
    r->review = r->label == RAD_REVIEW;
}

RADC_FN void rad_result_recalibrate(rad_result *r, double temperature, double threshold) {
    if (r->model_label < 0) return;   // empty note: the model was not run
    rad__decide(r, temperature > 0 ? temperature : 1.0, threshold);
}

RADC_FN qlora_status rad_classify_with(const rad_engine *e, rad_worker *w, const char *note, size_t len,
                                      double temperature, double threshold, rad_result *out, qlora_error *err) {
    memset(out, 0, sizeof *out);
    out->model_label = out->safety_label = -1;
    out->top[0] = out->top[1] = out->top[2] = -1;
    out->reason = "";
    if (!note && len > 0) return qlora__fail(err, QLORA_ERR_ARG, "classify: NULL note");
    rad_extract(note ? note : "", note ? len : 0, &out->facts);
    if (!note || rad__blank(note, len)) {
        out->label = RAD_REVIEW;
        out->review = 1;
        out->reason = rad__reason_empty;
        return QLORA_OK;
    }
    char *prompt = NULL;
    qlora_status st = rad__prompt(&e->tok, e->max_note_tokens, e->no_facts, note, len, &out->facts, &prompt,
                                  &out->truncated, err);
    int64_t np = 0;
    if (st == QLORA_OK)
        st = qlora_tokenizer_encode(&e->tok, prompt, strlen(prompt), 1, 0, w->ids, e->max_prompt_tokens, &np, err);
    free(prompt);
    if (st == QLORA_ERR_SHAPE)
        st = qlora__fail(err, QLORA_ERR_SHAPE, "classify: the prompt exceeds %d tokens", (int)e->max_prompt_tokens);
    if (st != QLORA_OK) return st;
    out->prompt_tokens = (int)np;
    // the model is only read during inference (adapters unmerged, no dropout): sharing it is safe
    st = qlora_model_score_tree((qlora_model *)&e->model, &w->kv, w->ids, np, e->node_token, e->node_parent,
                                e->n_nodes, w->node_logp, err);
    if (st != QLORA_OK) return st;
    for (int k = 0; k < RAD_NUM_LABELS; k++) {
        double s = 0;
        for (int32_t a = e->label_leaf[k]; a >= 0; a = e->node_parent[a]) s += w->node_logp[a];
        out->score[k] = s;
    }
    rad__decide(out, temperature > 0 ? temperature : 1.0, threshold);
    return QLORA_OK;
}

RADC_FN qlora_status rad_classify(const rad_engine *e, rad_worker *w, const char *note, size_t len,
                                 rad_result *out, qlora_error *err) {
    return rad_classify_with(e, w, note, len, e->temperature, e->threshold, out, err);
}

RADC_FN qlora_status rad_embed_text(const rad_engine *e, rad_worker *w, const char *text, float *out,
                                   qlora_error *err) {
    if (!text) return qlora__fail(err, QLORA_ERR_ARG, "embed: NULL text");
    int64_t n = 0, cap = w->kv.max_ctx;
    qlora_status st = qlora_tokenizer_encode(&e->tok, text, strlen(text), 1, 0, NULL, 0, &n, NULL);
    if (st != QLORA_OK && st != QLORA_ERR_SHAPE) return qlora__fail(err, st, "embed: tokenizer failed");
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * (size_t)(n + 1));
    if (!ids) return qlora__fail(err, QLORA_ERR_NOMEM, "embed: %lld tokens", (long long)n);
    st = qlora_tokenizer_encode(&e->tok, text, strlen(text), 1, 0, ids, n, &n, err);
    if (st == QLORA_OK) st = qlora_model_embed((qlora_model *)&e->model, &w->kv, ids, n < cap ? n : cap, out, err);
    free(ids);
    return st;
}

// ---- calibration ----

RADC_FN double rad__nll(const double *scores, const int *gold, int64_t n, double T) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *z = scores + i * RAD_NUM_LABELS;
        double mx = -INFINITY, sum = 0;
        for (int k = 0; k < RAD_NUM_LABELS; k++) mx = z[k] / T > mx ? z[k] / T : mx;
        for (int k = 0; k < RAD_NUM_LABELS; k++) sum += exp(z[k] / T - mx);
        s += mx + log(sum) - z[gold[i]] / T;
    }
    return n > 0 ? s / (double)n : 0.0;
}

RADC_FN double rad_fit_temperature(const double *scores, const int *gold, int64_t n) {
    // the NLL is convex in 1/T, so unimodal in log T: golden-section search
    double a = log(0.05), b = log(20.0), g = (sqrt(5.0) - 1) / 2;
    double c = b - g * (b - a), d = a + g * (b - a);
    double fc = rad__nll(scores, gold, n, exp(c)), fd = rad__nll(scores, gold, n, exp(d));
    for (int it = 0; it < 80 && b - a > 1e-7; it++) {
        if (fc < fd) {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = rad__nll(scores, gold, n, exp(c));
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = rad__nll(scores, gold, n, exp(d));
        }
    }
    return exp((a + b) / 2);
}

typedef struct rad__ci {
    double  conf;
    int64_t i;
} rad__ci;

RADC_FN int rad__conf_desc(const void *x, const void *y) {
    const rad__ci *a = (const rad__ci *)x, *b = (const rad__ci *)y;
    return a->conf > b->conf ? -1 : a->conf < b->conf ? 1 : (a->i > b->i) - (a->i < b->i);
}

RADC_FN double rad_fit_threshold(const double *conf, const int *auto_label, const int *gold, int64_t n,
                                 double target, double *coverage, double *accuracy) {
    double best = 1.0000001, cov = 0, acc = 1;
    rad__ci *idx = (rad__ci *)malloc(sizeof(rad__ci) * (size_t)(n > 0 ? n : 1));
    int64_t m = 0;
    if (idx) {
        for (int64_t i = 0; i < n; i++)
            if (auto_label[i] != RAD_REVIEW) {   // REVIEW decisions are never auto-assigned
                idx[m].conf = conf[i];
                idx[m++].i = i;
            }
        qsort(idx, (size_t)m, sizeof *idx, rad__conf_desc);
        int64_t right = 0;
        for (int64_t j = 0; j < m; j++) {
            right += auto_label[idx[j].i] == gold[idx[j].i];
            if (j + 1 < m && idx[j + 1].conf == idx[j].conf) continue;   // ties go together
            double a = (double)right / (double)(j + 1);
            if (a >= target) {   // lower thresholds come later: the last one that qualifies wins
                best = idx[j].conf;
                cov = (double)(j + 1) / (double)n;
                acc = a;
            }
        }
        free(idx);
    }
    if (coverage) *coverage = cov;
    if (accuracy) *accuracy = acc;
    return best;
}

RADC_FN qlora_status rad_calibration_write(const char *dir, double temperature, double threshold,
                                          const rad_engine *e, double nll, double coverage, double accuracy,
                                          qlora_error *err) {
    qlora_json_writer w;
    qlora_jw_init(&w, 2, 1);
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "temperature");
    qlora_jw_double(&w, temperature);
    qlora_jw_key(&w, "threshold");
    qlora_jw_double(&w, threshold);
    qlora_jw_key(&w, "prompt_version");
    qlora_jw_int(&w, RAD_PROMPT_VERSION);
    qlora_jw_key(&w, "max_note_tokens");
    qlora_jw_int(&w, e ? e->max_note_tokens : RAD_DEFAULT_MAX_NOTE_TOKENS);
    qlora_jw_key(&w, "no_facts");
    qlora_jw_bool(&w, e ? e->no_facts : 0);
    qlora_jw_key(&w, "val_nll");
    qlora_jw_double(&w, nll);
    qlora_jw_key(&w, "val_coverage");
    qlora_jw_double(&w, coverage);
    qlora_jw_key(&w, "val_accuracy");
    qlora_jw_double(&w, accuracy);
    qlora_jw_object_end(&w);
    qlora_status st = qlora_jw_finish(&w, 1, err);
    char *path = rad__path(dir, RAD_CALIBRATION_FILE);
    if (st == QLORA_OK) st = path ? qlora_write_file_atomic(path, w.buf, w.len, err)
                                  : qlora__fail(err, QLORA_ERR_NOMEM, "calibration path");
    free(path);
    qlora_jw_free(&w);
    return st;
}

// ---- batches across threads ----

typedef struct rad__batch {
    const rad_engine  *e;
    const char *const *notes;
    const size_t      *lens;
    int64_t            n, next, failed;
    int                threads;
    rad_result        *out;
    qlora_error        err;
    qlora_status       st;
    pthread_mutex_t    mu;
} rad__batch;

static void *rad__batch_worker(void *arg) {
    rad__batch *b = (rad__batch *)arg;
    rad_worker w;
    qlora_error err;
    rad_threads_single(b->threads);
    qlora_status st = rad_worker_init(&w, b->e, &err);
    if (st != QLORA_OK) {
        pthread_mutex_lock(&b->mu);
        if (b->st == QLORA_OK) {
            b->st = st;
            b->err = err;
        }
        pthread_mutex_unlock(&b->mu);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&b->mu);
        int64_t i = b->st == QLORA_OK && b->next < b->n ? b->next++ : -1;
        pthread_mutex_unlock(&b->mu);
        if (i < 0) break;
        st = rad_classify(b->e, &w, b->notes[i], b->lens ? b->lens[i] : strlen(b->notes[i]), &b->out[i], &err);
        if (st != QLORA_OK) {
            pthread_mutex_lock(&b->mu);
            if (b->st == QLORA_OK || i < b->failed) {
                b->st = st;
                b->err = err;
                b->failed = i;
            }
            pthread_mutex_unlock(&b->mu);
        }
    }
    rad_worker_free(&w);
    return NULL;
}

RADC_FN qlora_status rad_classify_many(const rad_engine *e, const char *const *notes, const size_t *lens, int64_t n,
                                       int threads, rad_result *out, int64_t *failed_index, qlora_error *err) {
    rad__batch b;
    memset(&b, 0, sizeof b);
    b.e = e;
    b.notes = notes;
    b.lens = lens;
    b.n = n;
    b.out = out;
    b.failed = -1;
    b.st = QLORA_OK;
    if (failed_index) *failed_index = -1;
    if (threads < 1) threads = 1;
    if (threads > n) threads = n > 0 ? (int)n : 1;
    b.threads = threads;
    rad_threads_single(threads);
    pthread_mutex_init(&b.mu, NULL);
    if (threads == 1) rad__batch_worker(&b);
    else {
        pthread_t *th = (pthread_t *)malloc(sizeof(pthread_t) * (size_t)threads);
        int started = 0;
        for (int t = 0; th && t < threads; t++)
            if (pthread_create(&th[t], NULL, rad__batch_worker, &b) == 0) started++;
            else break;
        if (started == 0) rad__batch_worker(&b);
        for (int t = 0; t < started; t++) pthread_join(th[t], NULL);
        free(th);
    }
    pthread_mutex_destroy(&b.mu);
    if (b.st != QLORA_OK) {
        if (err) *err = b.err;
        if (failed_index) *failed_index = b.failed;
    }
    return b.st;
}

#endif // RAD_CORE_H
