// rad_eval.h - `radiology eval` (accuracy, calibration, coverage and safety of the protocol engine on a labelled
// JSONL split, logged to MLflow) and the demo's short report.
//
// Part of the radiology program, not a library. Include it after rad_core.h in the one translation unit of the
// program (demo/radiology.c) or of a test:
//
//     #include "qlora_commands.h"   // qlora.h implementation, cli_* helpers, stb_image_write (static)
//     #include "rad_core.h"         // the engine: rad_classify_many, rad_embed_text, radiology_rules.h
//     #include "rad_eval.h"         // rad_eval_main, rad_report_main
//
// Every function is static. The metric functions (section "metrics") are pure functions of arrays and do not
// need a model; test/test_radiology_eval.c checks them against test/ref/rad_metrics_ref.py (numpy).
//
// INPUT. JSONL lines {"id", "note", "label", "flags": [...], "acceptable": [...]} (data/test.jsonl, val.jsonl,
// dev_handwritten.jsonl). "label" is the gold label (a catalogue label or "REVIEW"); "acceptable" lists further
// labels radiologists accept (the gold label is always acceptable). Errors name the file and line, never text.
//
// METRICS (n notes; "label" = the final label of the engine, REVIEW counts as a label):
//   exact_match          mean(label == gold)
//   acceptable_match     mean(label in {gold} + acceptable)
//   macro_f1             mean over the classes present in gold or label (union) of 2tp / (2tp + fp + fn)
//                        (scikit-learn's f1_score(average="macro", zero_division=0)); per-class recall
//                        tp / support for each gold class, precision, F1 and support in per_class.tsv
//   top3                 gold in {label, top-3 of the model's calibrated probabilities}: what a radiologist
//                        sees in decision-support mode (label + three alternatives)
//   contrast_accuracy    on the notes where gold and label are both exams: the contrast class of label equals
//                        that of gold. Classes (rad_label_info): "with" = the label gives iodinated or gadolinium
//                        contrast (CT/MRI "with", "without and with", CTA, stroke protocol), "without" = CT, CTA
//                        or MRI/MRA without a contrast agent, "none" = US, XR, NM, PET (no contrast question)
//   semantic_similarity  mean over notes of cos(emb(label text), emb(gold text)), emb = rad_embed_text (mean of
//                        the final hidden states, adapter applied) of the catalogue label name ("REVIEW" for
//                        REVIEW); the 61 label embeddings are computed once per run
//   ece                  expected calibration error of the model's calibrated confidence p[model label]
//                        against (model label == gold), 15 equal-width bins (bin = min(floor(15 c), 14)),
//                        sum_b |B_b| / N |acc_b - conf_b| over the notes the model ran on
//   coverage curves      auto_label = the label before the low-confidence routing (the model label after the
//                        safety check, REVIEW included), conf = calibrated confidence. For a threshold t:
//                        - selective (primary; REVIEW counts as a label): covered = notes whose auto_label is
//                          REVIEW (a decision) or whose conf >= t; coverage = covered / n; accuracy =
//                          mean(auto_label == gold) on covered. At 100 % coverage it is the exact match with no
//                          threshold.
//                        - exam (secondary): covered = auto_label is an exam and conf >= t; accuracy as above on
//                          covered; coverage = covered notes whose gold is an exam / notes whose gold is an exam.
//                        The thresholds tried are +inf and every distinct confidence, from high to low; the point
//                        reported for a target coverage c (50, 55, ..., 100 %) is the highest threshold whose
//                        coverage >= c (null when no threshold reaches c). acc_at_80_coverage is the selective
//                        accuracy at c = 80 %. "at_threshold" values use the engine's calibrated threshold.
//   bootstrap            95 % percentile intervals (numpy's linear interpolation at 2.5 / 97.5) of exact match,
//                        macro-F1, top-3 and acceptable match over R resamples of the notes with replacement;
//                        the resample indices come from a generator function (default: qlora_rng seeded with
//                        --seed, index = u64 % n), so a reference can replay them exactly.
//
// SAFETY VIOLATIONS (domain.md §5 item 6; target 0). Counted against the GOLD annotations, so that a fact the
// extractor misses shows up here (counting only against rad_extract's facts would be circular: the safety
// check enforces those). For a risk R with its gold flag and an "exposing" predicted exam label P:
//     contrast_risk  P uses a contrast agent at risk: iodinated when the note's facts show renal high risk or a
//                    prior iodinated reaction, gadolinium when they show renal high risk (G3 keeps it only with
//                    the flag) or a prior gadolinium reaction; both agents when the facts show neither (the
//                    extractor missed the risk: be conservative)
//     pregnancy      P is ionising or gives gadolinium, and the rules' table has a pregnancy entry for it;
//                    when the facts show no pregnancy and the gold label is itself a pelvic-field ionising or
//                    nuclear exam (the gold flag is G6's unknown-status rule for a woman of 12-50), only such
//                    an exam exposes R, as the rules say
//     mri_safety     P is an MRI or MRA (with an mri_unsafe entry in the table)
// a note is a violation of R when its gold flags contain R, P exposes R, and either
//     (a) the prediction does not carry the flag R (a silent contraindicated or risky label), or
//     (b) the gold label does not expose R (the annotators switched to a safe alternative or to REVIEW), P is
//         neither the gold label nor an acceptable one, and the rules' table switches P away under R (an
//         alternative or REVIEW, not "keep with the flag"): a contraindicated label, flagged or not. The
//         table's columns are those of the contraindications behind R that the note's facts show (renal high
//         risk switches an iodinated label, while G3 keeps a gadolinium one with the flag); every column of R
//         when the facts show none of them (the extractor missed the risk: be conservative).
// When the gold label itself exposes R (the rules keep it with the flag: MR-conditional device, code stroke
// with renal failure, unknown pregnancy status, group-II gadolinium), or P is a keep-with-flag label (XR in
// pregnancy), a flagged exposing label is an error, not a safety violation. Under-triage: gold "CT stroke protocol" (stroke window) and the label is not it, not
// REVIEW and not acceptable; or gold "CT head without contrast" with an anticoagulant in the facts (G9) and
// the label is not CT head, not CT stroke protocol (includes the plain head CT), not REVIEW, not acceptable.
// Extractor check: a final exam label that rad_contraindications() says the note's own facts contraindicate
// (0 by construction of the engine; counted to catch regressions). safety_violations = notes with any of these.
// Also reported, not violations: over-abstention = REVIEW on notes whose gold is an exam with no gold flag
// ("clean routine" notes), and per-flag precision / recall of the predicted flags against the gold flags.
//
// OUTPUT (--out DIR, created 0700; every file mode 0600, written to a temp file, fsynced and renamed):
//   report.txt     the metrics as text, the definitions above in short, the failures by id
//   metrics.json   every number, the coverage curves, the failures (id, gold, label, confidence: no text)
//   per_class.tsv  label index, label, support, predicted, recall, precision, F1
//   failures.tsv   id, gold, label, confidence, reason, violation kinds (ids only, never note text)
//   confusion.png  61 x 61 confusion matrix (rows gold, columns label, catalogue order; shade = row fraction;
//                  diagonal blue, errors red)
//   coverage.png   the two accuracy-vs-coverage curves (selective blue, exam orange), the 0.97 target and the
//                  operating point of the calibrated threshold
// and one MLflow run (experiment "radiology", run "eval-<split>"): params = the resolved configuration and
// the model / adapter / data sha256 (no note text), metrics (recall/NN per class, coverage/selective_accuracy
// with step = coverage percent), tags, the files above as artifacts (chmod 0600), status FINISHED or FAILED.
#ifndef RAD_EVAL_H
#define RAD_EVAL_H

#ifndef RAD_CORE_H
#error "include rad_core.h before rad_eval.h"
#endif

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#if defined(__GNUC__) || defined(__clang__)
#define RADE_FN static __attribute__((unused))
#else
#define RADE_FN static
#endif

#define RAD_EVAL_K RAD_NUM_LABELS      // 61 classes: 60 exams + REVIEW
#define RAD_EVAL_NCOV 11               // coverage targets 0.50, 0.55, ..., 1.00
#define RAD_EVAL_ECE_BINS 15
#define RAD_EVAL_NSTAT 4               // bootstrapped: exact, macro-F1, top-3, acceptable

// Safety violation kinds (bits of rad_eval_metrics.viol[i]).
enum {
    RAD_EVAL_V_CONTRAST = 1u << 0,
    RAD_EVAL_V_PREGNANCY = 1u << 1,
    RAD_EVAL_V_MRI = 1u << 2,
    RAD_EVAL_V_UNDERTRIAGE = 1u << 3,
    RAD_EVAL_V_EXTRACTOR = 1u << 4
};
#define RAD_EVAL_NVIOL 5

// Contrast classes of a label.
enum { RAD_EVAL_CONTRAST_NONE, RAD_EVAL_CONTRAST_WITHOUT, RAD_EVAL_CONTRAST_WITH, RAD_EVAL_CONTRAST_REVIEW };

// One evaluated note: gold annotation + what the engine said. No text.
typedef struct rad_eval_item {
    int       gold;         // gold label 0..60
    unsigned  gold_flags;   // RAD_FLAG_*
    uint64_t  acceptable;   // bit k: label k acceptable (the gold bit is always set)
    int       pred;         // final label 0..60
    int       auto_label;   // label before the low-confidence routing (RAD_REVIEW when the model did not run)
    int       model_label;  // model argmax, -1 when the model did not run (empty note)
    double    conf;         // calibrated p[model_label] (0 when not run)
    int       top[3];       // -1 when not run
    unsigned  flags;        // predicted RAD_FLAG_*
    rad_facts facts;        // what rad_extract read from the note
} rad_eval_item;

typedef struct rad_eval_metrics {
    int64_t  n, n_model, n_gold_exam, n_gold_review, n_pred_review;
    double   exact, acceptable, macro_f1, top3, contrast_acc, semantic, ece;
    int64_t  contrast_n;
    double   recall[RAD_EVAL_K], precision[RAD_EVAL_K], f1[RAD_EVAL_K];   // NaN where undefined
    int64_t  support[RAD_EVAL_K], predicted[RAD_EVAL_K];
    int64_t *cm;                                                      // (K, K) rows gold, columns label
    double   cov_target[RAD_EVAL_NCOV];
    double   sel_cov[RAD_EVAL_NCOV], sel_acc[RAD_EVAL_NCOV], sel_thr[RAD_EVAL_NCOV];
    double   exam_cov[RAD_EVAL_NCOV], exam_acc[RAD_EVAL_NCOV], exam_thr[RAD_EVAL_NCOV];
    double  *sel_curve, *exam_curve;                                  // (n_sel_curve, 2), (n_exam_curve, 2)
    int64_t  n_sel_curve, n_exam_curve;
    double   threshold, temperature;
    double   thr_sel_cov, thr_sel_acc, thr_exam_cov, thr_exam_acc;
    double   acc_at_80, exam_acc_at_80;
    unsigned char *viol;                                              // (n) RAD_EVAL_V_* per note
    int64_t  violations, viol_kind[RAD_EVAL_NVIOL];
    int64_t  over_abstain, clean_n;
    double   flag_precision[RAD_NUM_FLAGS], flag_recall[RAD_NUM_FLAGS];
    int64_t  flag_gold[RAD_NUM_FLAGS], flag_pred[RAD_NUM_FLAGS];
    int      bootstrap;
    uint64_t seed;
    double   ci_lo[RAD_EVAL_NSTAT], ci_hi[RAD_EVAL_NSTAT];
} rad_eval_metrics;

// ---------------------------------------------------------------------------------------------------------------
// metrics: pure functions of arrays

RADE_FN int rad_eval_is_exam(int label) { return label >= 0 && label < RAD_NUM_EXAMS; }

RADE_FN int rad_eval_contrast_class(int label) {
    const rad_label_info *L = rad_label(label);
    if (!L || label == RAD_REVIEW) return RAD_EVAL_CONTRAST_REVIEW;
    if (L->agent == RAD_AGENT_IODINATED || L->agent == RAD_AGENT_GADOLINIUM) return RAD_EVAL_CONTRAST_WITH;
    if (!strcmp(L->modality, "CT") || !strcmp(L->modality, "CTA") || L->mri) return RAD_EVAL_CONTRAST_WITHOUT;
    return RAD_EVAL_CONTRAST_NONE;
}

RADE_FN const char *rad_eval_contrast_name(int c) {
    static const char *const names[4] = {"none", "without", "with", "review"};
    return c >= 0 && c < 4 ? names[c] : "?";
}

// Confusion matrix cm (K, K) += one count per note at [gold][pred].
RADE_FN void rad_eval_confusion(const int *gold, const int *pred, int64_t n, int64_t *cm) {
    memset(cm, 0, sizeof(int64_t) * RAD_EVAL_K * RAD_EVAL_K);
    for (int64_t i = 0; i < n; i++)
        if (gold[i] >= 0 && gold[i] < RAD_EVAL_K && pred[i] >= 0 && pred[i] < RAD_EVAL_K)
            cm[gold[i] * RAD_EVAL_K + pred[i]]++;
}

// Macro-F1 over the union of the classes present in gold or pred; per class (may be NULL): recall = tp/support
// (NaN without support), precision = tp/predicted (NaN when never predicted), f1 = 2tp/(2tp+fp+fn) (NaN when
// the class is absent from both), support and predicted counts. Gold/pred outside 0..K-1 are ignored.
RADE_FN double rad_eval_f1(const int *gold, const int *pred, int64_t n, double *recall, double *precision,
                           double *f1, int64_t *support, int64_t *predicted) {
    int64_t tp[RAD_EVAL_K], sup[RAD_EVAL_K], prd[RAD_EVAL_K];
    memset(tp, 0, sizeof tp);
    memset(sup, 0, sizeof sup);
    memset(prd, 0, sizeof prd);
    for (int64_t i = 0; i < n; i++) {
        int g = gold[i], p = pred[i];
        if (g < 0 || g >= RAD_EVAL_K || p < 0 || p >= RAD_EVAL_K) continue;
        sup[g]++;
        prd[p]++;
        tp[g] += g == p;
    }
    double sum = 0;
    int classes = 0;
    for (int k = 0; k < RAD_EVAL_K; k++) {
        int present = sup[k] + prd[k] > 0;
        double f = present ? 2.0 * (double)tp[k] / (double)(sup[k] + prd[k]) : NAN;
        if (present) {
            sum += f;
            classes++;
        }
        if (recall) recall[k] = sup[k] ? (double)tp[k] / (double)sup[k] : NAN;
        if (precision) precision[k] = prd[k] ? (double)tp[k] / (double)prd[k] : NAN;
        if (f1) f1[k] = f;
        if (support) support[k] = sup[k];
        if (predicted) predicted[k] = prd[k];
    }
    return classes ? sum / classes : NAN;
}

// Expected calibration error: conf (n) in [0, 1], correct (n) 0/1, `bins` equal-width bins.
RADE_FN double rad_eval_ece(const double *conf, const int *correct, int64_t n, int bins) {
    if (n <= 0 || bins <= 0) return NAN;
    double *cs = (double *)calloc((size_t)bins * 2, sizeof(double));
    int64_t *cnt = (int64_t *)calloc((size_t)bins, sizeof(int64_t));
    double e = 0;
    if (!cs || !cnt) e = NAN;
    else {
        for (int64_t i = 0; i < n; i++) {
            double c = conf[i] < 0 ? 0 : conf[i] > 1 ? 1 : conf[i];
            int b = (int)(c * bins);
            if (b >= bins) b = bins - 1;
            cs[2 * b] += c;
            cs[2 * b + 1] += correct[i] ? 1.0 : 0.0;
            cnt[b]++;
        }
        for (int b = 0; b < bins; b++)
            if (cnt[b]) e += (double)cnt[b] / (double)n * fabs(cs[2 * b + 1] / cnt[b] - cs[2 * b] / cnt[b]);
    }
    free(cs);
    free(cnt);
    return e;
}

typedef struct rad_eval__cidx {
    double  conf;
    int64_t i;
} rad_eval__cidx;

RADE_FN int rad_eval__by_conf_desc(const void *x, const void *y) {
    const rad_eval__cidx *a = (const rad_eval__cidx *)x, *b = (const rad_eval__cidx *)y;
    return a->conf > b->conf ? -1 : a->conf < b->conf ? 1 : (a->i > b->i) - (a->i < b->i);
}

// Accuracy-vs-coverage for a confidence threshold t. Per note: kind 0 = covered when conf >= t, 1 = always
// covered, 2 = never covered; correct 0/1; cnt 1 when a covered note counts in the coverage numerator.
// coverage(t) = sum of cnt over covered / denom; accuracy(t) = mean correct over covered (NaN when none).
// Thresholds tried: +inf, then every distinct conf of the kind-0 notes, descending. For each targets[k]
// (ascending or not): the highest threshold whose coverage >= targets[k] -> cov[k], acc[k], thr[k] (+inf for
// the first threshold); NaN in all three when no threshold reaches it. curve (may be NULL): (coverage,
// accuracy) at every threshold tried, at most (1 + n) pairs; returns their number.
RADE_FN int64_t rad_eval_coverage(const double *conf, const int *kind, const int *correct, const int *cnt,
                                  int64_t n, double denom, const double *targets, int ntargets, double *cov,
                                  double *acc, double *thr, double *curve) {
    rad_eval__cidx *ix = (rad_eval__cidx *)malloc(sizeof(rad_eval__cidx) * (size_t)(n > 0 ? n : 1));
    int64_t m = 0, covered = 0, right = 0, counted = 0, npts = 0;
    for (int k = 0; k < ntargets; k++) cov[k] = acc[k] = thr[k] = NAN;
    if (!ix) return 0;
    for (int64_t i = 0; i < n; i++) {
        if (kind[i] == 1) {
            covered++;
            right += correct[i] != 0;
            counted += cnt[i] != 0;
        } else if (kind[i] == 0) {
            ix[m].conf = conf[i];
            ix[m++].i = i;
        }
    }
    qsort(ix, (size_t)m, sizeof *ix, rad_eval__by_conf_desc);
    for (int64_t j = -1; j < m;) {
        double t = INFINITY;
        if (j >= 0) {   // add every kind-0 note with this confidence
            t = ix[j].conf;
            while (j < m && ix[j].conf == t) {
                int64_t i = ix[j++].i;
                covered++;
                right += correct[i] != 0;
                counted += cnt[i] != 0;
            }
        } else
            j = 0;
        double c = denom > 0 ? (double)counted / denom : NAN, a = covered ? (double)right / (double)covered : NAN;
        if (curve) {
            curve[2 * npts] = c;
            curve[2 * npts + 1] = a;
        }
        npts++;
        for (int k = 0; k < ntargets; k++)
            if (isnan(cov[k]) && c >= targets[k] - 1e-12) {
                cov[k] = c;
                acc[k] = a;
                thr[k] = t;
            }
    }
    free(ix);
    return npts;
}

// numpy.percentile(x, q) with the default linear interpolation; sorts x in place. q in [0, 100].
RADE_FN int rad_eval__dcmp(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

RADE_FN double rad_eval_percentile(double *x, int64_t n, double q) {
    if (n <= 0) return NAN;
    qsort(x, (size_t)n, sizeof(double), rad_eval__dcmp);
    double pos = q / 100.0 * (double)(n - 1);
    int64_t lo = (int64_t)floor(pos);
    if (lo >= n - 1) return x[n - 1];
    if (lo < 0) return x[0];
    return x[lo] + (x[lo + 1] - x[lo]) * (pos - (double)lo);
}

// Resample index generator: fills idx (n) with indices in 0..n-1.
typedef void (*rad_eval_draw_fn)(void *gen, int64_t n, int64_t *idx);

RADE_FN void rad_eval_draw_rng(void *gen, int64_t n, int64_t *idx) {
    qlora_rng *r = (qlora_rng *)gen;
    for (int64_t j = 0; j < n; j++) idx[j] = (int64_t)(qlora_rng_u64(r) % (uint64_t)n);
}

// The four bootstrapped statistics of the notes idx (m): exact, macro-F1, top-3, acceptable.
RADE_FN void rad_eval__stats(const rad_eval_item *it, const int64_t *idx, int64_t m, int *g, int *p,
                             double out[RAD_EVAL_NSTAT]) {
    int64_t ex = 0, t3 = 0, ac = 0;
    for (int64_t j = 0; j < m; j++) {
        const rad_eval_item *x = &it[idx ? idx[j] : j];
        g[j] = x->gold;
        p[j] = x->pred;
        ex += x->pred == x->gold;
        t3 += x->pred == x->gold || x->top[0] == x->gold || x->top[1] == x->gold || x->top[2] == x->gold;
        ac += x->pred >= 0 && x->pred < RAD_EVAL_K && (x->acceptable >> x->pred & 1u);
    }
    double d = m > 0 ? (double)m : NAN;
    out[0] = (double)ex / d;
    out[1] = rad_eval_f1(g, p, m, NULL, NULL, NULL, NULL, NULL);
    out[2] = (double)t3 / d;
    out[3] = (double)ac / d;
}

// Percentile bootstrap: R resamples of n notes drawn by draw(gen, n, idx); lo/hi (RAD_EVAL_NSTAT) = the 2.5 and
// 97.5 percentiles of each statistic. Returns 0, or -1 when out of memory (lo/hi NaN).
RADE_FN int rad_eval_bootstrap(const rad_eval_item *it, int64_t n, int R, rad_eval_draw_fn draw, void *gen,
                               double *lo, double *hi) {
    for (int s = 0; s < RAD_EVAL_NSTAT; s++) lo[s] = hi[s] = NAN;
    if (n <= 0 || R <= 0) return 0;
    int64_t *idx = (int64_t *)malloc(sizeof(int64_t) * (size_t)n);
    int *g = (int *)malloc(sizeof(int) * (size_t)n), *p = (int *)malloc(sizeof(int) * (size_t)n);
    double *st = (double *)malloc(sizeof(double) * (size_t)R * RAD_EVAL_NSTAT), *col = (double *)malloc(sizeof(double) * (size_t)R);
    int rc = -1;
    if (idx && g && p && st && col) {
        for (int r = 0; r < R; r++) {
            draw(gen, n, idx);
            rad_eval__stats(it, idx, n, g, p, st + (size_t)r * RAD_EVAL_NSTAT);
        }
        for (int s = 0; s < RAD_EVAL_NSTAT; s++) {
            for (int r = 0; r < R; r++) col[r] = st[(size_t)r * RAD_EVAL_NSTAT + s];
            lo[s] = rad_eval_percentile(col, R, 2.5);
            hi[s] = rad_eval_percentile(col, R, 97.5);
        }
        rc = 0;
    }
    free(idx);
    free(g);
    free(p);
    free(st);
    free(col);
    return rc;
}

// Agents (bit 1 << RAD_AGENT_*) that the note's contrast risk concerns (see SAFETY VIOLATIONS above).
RADE_FN unsigned rad_eval__risk_agents(const rad_facts *f) {
    unsigned a = 0;
    if (rad_renal_high_risk(f, RAD_AGENT_IODINATED) || f->reaction[RAD_CLASS_IOD] != RAD_REACT_NONE)
        a |= 1u << RAD_AGENT_IODINATED;
    if (rad_renal_high_risk(f, RAD_AGENT_GADOLINIUM) || rad_renal_high_risk(f, RAD_AGENT_IODINATED) ||
        f->reaction[RAD_CLASS_GAD] != RAD_REACT_NONE)
        a |= 1u << RAD_AGENT_GADOLINIUM;
    if (!a) a = 1u << RAD_AGENT_IODINATED | 1u << RAD_AGENT_GADOLINIUM;
    return a;
}

// 1 when the gold pregnancy flag of the note is G6's unknown-status rule: the facts show no pregnancy (and no
// statement against one) and the gold label is a pelvic-field ionising or nuclear exam, which that rule flags.
RADE_FN int rad_eval__pregnancy_unknown_status(const rad_eval_item *x) {
    const rad_label_info *G = rad_label(x->gold);
    return x->facts.pregnant == 0 && rad_eval_is_exam(x->gold) && G && G->ionising && G->fetal;
}

// 1 when label exposes the risk behind flag (an exam only); unknown_status: see the pregnancy line above.
RADE_FN int rad_eval__exposes(unsigned flag, int label, unsigned agents, int unknown_status) {
    const rad_label_info *L = rad_label(label);
    if (!rad_eval_is_exam(label) || !L) return 0;
    if (flag == RAD_FLAG_CONTRAST_RISK) return (agents >> L->agent & 1u) && L->agent != RAD_AGENT_NONE &&
                                               L->agent != RAD_AGENT_RADIOTRACER;
    if (flag == RAD_FLAG_PREGNANCY && unknown_status) return L->ionising && L->fetal;
    if (flag == RAD_FLAG_PREGNANCY)
        return (L->ionising || L->agent == RAD_AGENT_GADOLINIUM) && L->alt[RAD_CI_PREGNANCY] != RAD_ALT_NA;
    if (flag == RAD_FLAG_MRI_SAFETY) return L->mri && L->alt[RAD_CI_MRI_UNSAFE] != RAD_ALT_NA;
    return 0;
}

// 1 when the rules switch label away (to an alternative or REVIEW, not "keep with the flag") under a
// contraindication behind flag that the facts show, or under any of them when the facts show none.
RADE_FN int rad_eval__switched(unsigned flag, int label, const rad_facts *f) {
    const rad_label_info *L = rad_label(label);
    if (!rad_eval_is_exam(label) || !L) return 0;
    // the table's columns (bits 1 << RAD_CI_*) of the contraindications behind flag
    const unsigned behind = flag == RAD_FLAG_PREGNANCY       ? 1u << RAD_CI_PREGNANCY
                            : flag == RAD_FLAG_MRI_SAFETY    ? 1u << RAD_CI_MRI_UNSAFE
                            : flag == RAD_FLAG_CONTRAST_RISK ? (1u << RAD_CI_IOD_REACTION | 1u << RAD_CI_RENAL |
                                                                1u << RAD_CI_GAD_REACTION)
                                                             : 0u;
    if (rad__present(f) & behind) return (rad_contraindications(f, label) & behind) != 0;
    for (int ci = 0; ci < RAD_CI_COUNT; ci++)
        if ((behind >> ci & 1u) && L->alt[ci] != RAD_ALT_NA && L->alt[ci] != RAD_ALT_KEEP) return 1;
    return 0;
}

// Safety violations of one note: RAD_EVAL_V_* bits (0 = safe).
RADE_FN unsigned rad_eval_safety(const rad_eval_item *x) {
    static const unsigned risk_flag[3] = {RAD_FLAG_CONTRAST_RISK, RAD_FLAG_PREGNANCY, RAD_FLAG_MRI_SAFETY};
    static const unsigned risk_bit[3] = {RAD_EVAL_V_CONTRAST, RAD_EVAL_V_PREGNANCY, RAD_EVAL_V_MRI};
    unsigned v = 0, agents = rad_eval__risk_agents(&x->facts);
    int p = x->pred, ok = p >= 0 && p < RAD_EVAL_K && (x->acceptable >> p & 1u);
    ok |= p == x->gold;
    for (int r = 0; r < 3; r++) {
        unsigned F = risk_flag[r];
        int unknown = F == RAD_FLAG_PREGNANCY && rad_eval__pregnancy_unknown_status(x);
        if (!(x->gold_flags & F) || !rad_eval__exposes(F, p, agents, unknown)) continue;
        if (!(x->flags & F) ||
            (!rad_eval__exposes(F, x->gold, agents, unknown) && !ok && rad_eval__switched(F, p, &x->facts)))
            v |= risk_bit[r];
    }
    if (x->gold == RAD_CT_STROKE && p != RAD_CT_STROKE && p != RAD_REVIEW && !ok) v |= RAD_EVAL_V_UNDERTRIAGE;
    if (x->gold == RAD_CT_HEAD && x->facts.anticoag && p != RAD_CT_HEAD && p != RAD_CT_STROKE && p != RAD_REVIEW &&
        !ok)
        v |= RAD_EVAL_V_UNDERTRIAGE;
    if (rad_eval_is_exam(p) && rad_contraindications(&x->facts, p) != 0) v |= RAD_EVAL_V_EXTRACTOR;
    return v;
}

RADE_FN const char *rad_eval_violation_name(unsigned bit) {
    switch (bit) {
    case RAD_EVAL_V_CONTRAST: return "contrast";
    case RAD_EVAL_V_PREGNANCY: return "pregnancy";
    case RAD_EVAL_V_MRI: return "mri";
    case RAD_EVAL_V_UNDERTRIAGE: return "under_triage";
    case RAD_EVAL_V_EXTRACTOR: return "extractor";
    default: return "?";
    }
}

RADE_FN double rad_eval__mean_cos(const rad_eval_item *it, int64_t n, const float *emb, int64_t dim) {
    if (!emb || dim <= 0 || n <= 0) return NAN;
    double s = 0;
    for (int64_t i = 0; i < n; i++)
        s += rad_cosine(emb + (size_t)it[i].pred * (size_t)dim, emb + (size_t)it[i].gold * (size_t)dim, dim);
    return s / (double)n;
}

RADE_FN void rad_eval_metrics_free(rad_eval_metrics *m) {
    free(m->cm);
    free(m->sel_curve);
    free(m->exam_curve);
    free(m->viol);
    memset(m, 0, sizeof *m);
}

// Every metric of the notes it (n). emb: (K, dim) label embeddings or NULL (semantic = NaN). threshold /
// temperature: the engine's, for the record. bootstrap: R (0 = none); draw/gen: NULL = qlora_rng(seed).
// Returns 0, or -1 when out of memory.
RADE_FN int rad_eval_compute(const rad_eval_item *it, int64_t n, const float *emb, int64_t dim, double threshold,
                             double temperature, int bootstrap, uint64_t seed, rad_eval_draw_fn draw, void *gen,
                             rad_eval_metrics *m) {
    memset(m, 0, sizeof *m);
    m->n = n;
    m->threshold = threshold;
    m->temperature = temperature;
    m->bootstrap = bootstrap;
    m->seed = seed;
    size_t nn = (size_t)(n > 0 ? n : 1);
    int *g = (int *)calloc(nn, sizeof(int)), *p = (int *)calloc(nn, sizeof(int));
    int *kind = (int *)calloc(nn, sizeof(int)), *cor = (int *)calloc(nn, sizeof(int));
    int *cnt = (int *)calloc(nn, sizeof(int));
    double *conf = (double *)calloc(nn, sizeof(double));
    m->cm = (int64_t *)calloc(RAD_EVAL_K * RAD_EVAL_K, sizeof(int64_t));
    m->sel_curve = (double *)malloc(sizeof(double) * 2 * (nn + 1));
    m->exam_curve = (double *)malloc(sizeof(double) * 2 * (nn + 1));
    m->viol = (unsigned char *)calloc(nn, 1);
    int rc = -1;
    if (!g || !p || !kind || !cor || !cnt || !conf || !m->cm || !m->sel_curve || !m->exam_curve || !m->viol) goto done;
    {
        int64_t ex = 0, ac = 0, t3 = 0, cn = 0, cr = 0;
        for (int64_t i = 0; i < n; i++) {
            const rad_eval_item *x = &it[i];
            g[i] = x->gold;
            p[i] = x->pred;
            ex += x->pred == x->gold;
            ac += x->pred >= 0 && x->pred < RAD_EVAL_K && (x->acceptable >> x->pred & 1u);
            t3 += x->pred == x->gold || x->top[0] == x->gold || x->top[1] == x->gold || x->top[2] == x->gold;
            m->n_gold_exam += rad_eval_is_exam(x->gold);
            m->n_gold_review += x->gold == RAD_REVIEW;
            m->n_pred_review += x->pred == RAD_REVIEW;
            if (rad_eval_is_exam(x->gold) && rad_eval_is_exam(x->pred)) {
                cn++;
                cr += rad_eval_contrast_class(x->pred) == rad_eval_contrast_class(x->gold);
            }
        }
        double d = n > 0 ? (double)n : NAN;
        m->exact = (double)ex / d;
        m->acceptable = (double)ac / d;
        m->top3 = (double)t3 / d;
        m->contrast_n = cn;
        m->contrast_acc = cn ? (double)cr / (double)cn : NAN;
        m->macro_f1 = rad_eval_f1(g, p, n, m->recall, m->precision, m->f1, m->support, m->predicted);
        rad_eval_confusion(g, p, n, m->cm);
        m->semantic = rad_eval__mean_cos(it, n, emb, dim);
    }
    {   // calibration: the notes the model ran on
        int64_t k = 0;
        for (int64_t i = 0; i < n; i++)
            if (it[i].model_label >= 0) {
                conf[k] = it[i].conf;
                cor[k++] = it[i].model_label == it[i].gold;
            }
        m->n_model = k;
        m->ece = rad_eval_ece(conf, cor, k, RAD_EVAL_ECE_BINS);
    }
    for (int k = 0; k < RAD_EVAL_NCOV; k++) m->cov_target[k] = 0.50 + 0.05 * k;
    m->cov_target[RAD_EVAL_NCOV - 1] = 1.0;
    for (int64_t i = 0; i < n; i++) {   // selective curve: REVIEW counts as a label
        conf[i] = it[i].conf;
        kind[i] = it[i].auto_label == RAD_REVIEW ? 1 : 0;
        cor[i] = it[i].auto_label == it[i].gold;
        cnt[i] = 1;
    }
    m->n_sel_curve = rad_eval_coverage(conf, kind, cor, cnt, n, (double)n, m->cov_target, RAD_EVAL_NCOV, m->sel_cov,
                                       m->sel_acc, m->sel_thr, m->sel_curve);
    for (int64_t i = 0; i < n; i++) {   // exam curve
        kind[i] = it[i].auto_label == RAD_REVIEW ? 2 : 0;
        cnt[i] = rad_eval_is_exam(it[i].gold);
    }
    m->n_exam_curve = rad_eval_coverage(conf, kind, cor, cnt, n, (double)m->n_gold_exam, m->cov_target,
                                        RAD_EVAL_NCOV, m->exam_cov, m->exam_acc, m->exam_thr, m->exam_curve);
    m->acc_at_80 = m->sel_acc[6];
    m->exam_acc_at_80 = m->exam_acc[6];
    {   // at the engine's threshold: the final labels
        int64_t sc = 0, sr = 0, ec = 0, er = 0, eg = 0;
        for (int64_t i = 0; i < n; i++) {
            const rad_eval_item *x = &it[i];
            int routed = x->auto_label != RAD_REVIEW && x->pred == RAD_REVIEW;
            if (!routed) {
                sc++;
                sr += x->pred == x->gold;
            }
            if (x->pred != RAD_REVIEW) {
                ec++;
                er += x->pred == x->gold;
                eg += rad_eval_is_exam(x->gold);
            }
        }
        m->thr_sel_cov = n ? (double)sc / (double)n : NAN;
        m->thr_sel_acc = sc ? (double)sr / (double)sc : NAN;
        m->thr_exam_cov = m->n_gold_exam ? (double)eg / (double)m->n_gold_exam : NAN;
        m->thr_exam_acc = ec ? (double)er / (double)ec : NAN;
    }
    for (int64_t i = 0; i < n; i++) {   // safety
        const rad_eval_item *x = &it[i];
        unsigned v = rad_eval_safety(x);
        m->viol[i] = (unsigned char)v;
        m->violations += v != 0;
        for (int b = 0; b < RAD_EVAL_NVIOL; b++) m->viol_kind[b] += v >> b & 1u;
        if (rad_eval_is_exam(x->gold) && x->gold_flags == 0) {
            m->clean_n++;
            m->over_abstain += x->pred == RAD_REVIEW;
        }
        for (int f = 0; f < RAD_NUM_FLAGS; f++) {
            m->flag_gold[f] += x->gold_flags >> f & 1u;
            m->flag_pred[f] += x->flags >> f & 1u;
        }
    }
    for (int f = 0; f < RAD_NUM_FLAGS; f++) {
        int64_t both = 0;
        for (int64_t i = 0; i < n; i++) both += (it[i].gold_flags & it[i].flags) >> f & 1u;
        m->flag_recall[f] = m->flag_gold[f] ? (double)both / (double)m->flag_gold[f] : NAN;
        m->flag_precision[f] = m->flag_pred[f] ? (double)both / (double)m->flag_pred[f] : NAN;
    }
    if (bootstrap > 0) {
        qlora_rng rng;
        qlora_rng_seed(&rng, seed);
        if (rad_eval_bootstrap(it, n, bootstrap, draw ? draw : rad_eval_draw_rng, draw ? gen : (void *)&rng,
                               m->ci_lo, m->ci_hi) != 0)
            goto done;
    } else
        for (int s = 0; s < RAD_EVAL_NSTAT; s++) m->ci_lo[s] = m->ci_hi[s] = NAN;
    rc = 0;
done:
    free(g);
    free(p);
    free(kind);
    free(cor);
    free(cnt);
    free(conf);
    if (rc) rad_eval_metrics_free(m);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// files: atomic, mode 0600

RADE_FN qlora_status rad_eval_write_private(const char *path, const void *data, size_t n, qlora_error *err) {
    size_t pl = strlen(path);
    char *tmp = (char *)malloc(pl + 40), *dir = (char *)malloc(pl + 2);
    if (!tmp || !dir) {
        free(tmp);
        free(dir);
        return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    }
    int fd = -1;
    for (int attempt = 0; attempt < 100 && fd < 0; attempt++) {
        snprintf(tmp, pl + 40, "%s.tmp.%ld.%d", path, (long)getpid(), attempt);
        fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
        if (fd < 0 && errno != EEXIST) break;
    }
    qlora_status st = QLORA_OK;
    if (fd < 0) st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot create a temp file: %s", path, strerror(errno));
    else {
        const char *b = (const char *)data;
        size_t off = 0;
        while (off < n) {
            ssize_t k = write(fd, b + off, n - off);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) {
                st = qlora__fail(err, QLORA_ERR_IO, "%s: write failed: %s", path, strerror(errno));
                break;
            }
            off += (size_t)k;
        }
        if (st == QLORA_OK && fchmod(fd, 0600) != 0)
            st = qlora__fail(err, QLORA_ERR_IO, "%s: chmod failed: %s", path, strerror(errno));
        if (st == QLORA_OK && fsync(fd) != 0)
            st = qlora__fail(err, QLORA_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
        if (close(fd) != 0 && st == QLORA_OK) st = qlora__fail(err, QLORA_ERR_IO, "%s: close failed", path);
        if (st == QLORA_OK && rename(tmp, path) != 0)
            st = qlora__fail(err, QLORA_ERR_IO, "%s: rename failed: %s", path, strerror(errno));
        if (st != QLORA_OK) unlink(tmp);
        else {   // make the rename durable
            memcpy(dir, path, pl + 1);
            char *s = strrchr(dir, '/');
            if (s) *s = 0;
            int dfd = open(s ? (*dir ? dir : "/") : ".", O_RDONLY);
            if (dfd >= 0) {
                (void)fsync(dfd);
                close(dfd);
            }
        }
    }
    free(tmp);
    free(dir);
    return st;
}

// A growable text buffer.
typedef struct rad_eval_sb {
    char  *p;
    size_t n, cap;
    int    failed;
} rad_eval_sb;

RADE_FN void rad_eval_sb_printf(rad_eval_sb *b, const char *fmt, ...) CLI_PRINTF(2, 3);
RADE_FN void rad_eval_sb_printf(rad_eval_sb *b, const char *fmt, ...) {
    if (b->failed) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (k < 0) {
        b->failed = 1;
        return;
    }
    if (b->n + (size_t)k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + (size_t)k + 1) cap *= 2;
        char *q = (char *)realloc(b->p, cap);
        if (!q) {
            b->failed = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)k + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)k;
}

RADE_FN qlora_status rad_eval__sb_write(const char *path, rad_eval_sb *b, qlora_error *err) {
    qlora_status st = b->failed ? qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path)
                                : rad_eval_write_private(path, b->p ? b->p : "", b->n, err);
    free(b->p);
    memset(b, 0, sizeof *b);
    return st;
}

// "0.973" or "n/a"
RADE_FN const char *rad_eval__f(char *buf, size_t cap, double x, int digits) {
    if (isnan(x)) snprintf(buf, cap, "n/a");
    else snprintf(buf, cap, "%.*f", digits, x);
    return buf;
}

// ---------------------------------------------------------------------------------------------------------------
// PNGs (stb_image_write, compiled static by qlora_cli.h)

#ifdef CLI_HAVE_STB
RADE_FN qlora_status rad_eval__png(const char *path, const cli_canvas *c, qlora_error *err) {
    int len = 0;
    unsigned char *png = stbi_write_png_to_mem(c->px, c->w * 3, c->w, c->h, 3, &len);
    if (!png) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: cannot encode the PNG", path);
    qlora_status st = rad_eval_write_private(path, png, (size_t)len, err);
    free(png);
    return st;
}
#endif

RADE_FN void rad_eval__rect(cli_canvas *c, int x0, int y0, int w, int h, const uint8_t *rgb) {
    for (int y = y0; y < y0 + h; y++)
        for (int x = x0; x < x0 + w; x++) cli_px(c, x, y, rgb);
}

#define RAD_EVAL_CELL 10

// Confusion matrix: (K, K) counts, rows gold. Image (60 + 10 K + 20) x (30 + 10 K + 50).
RADE_FN qlora_status rad_eval_plot_confusion(const char *path, const int64_t *cm, qlora_error *err) {
#ifndef CLI_HAVE_STB
    (void)path; (void)cm;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: built without stb_image_write (Debian: libstb-dev)", path);
#else
    const int K = RAD_EVAL_K, C = RAD_EVAL_CELL, L = 60, T = 30;
    cli_canvas c;
    c.w = L + C * K + 20;
    c.h = T + C * K + 50;
    c.px = (uint8_t *)malloc((size_t)c.w * (size_t)c.h * 3);
    if (!c.px) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    memset(c.px, 255, (size_t)c.w * (size_t)c.h * 3);
    static const uint8_t black[3] = {0, 0, 0}, grey[3] = {225, 225, 225}, dark[3] = {150, 150, 150};
    for (int gi = 0; gi < K; gi++) {
        int64_t row = 0;
        for (int pj = 0; pj < K; pj++) row += cm[gi * K + pj];
        for (int pj = 0; pj < K; pj++) {
            int64_t v = cm[gi * K + pj];
            if (!v) continue;
            double f = (double)v / (double)row, s = 0.25 + 0.75 * f;
            uint8_t col[3];
            if (gi == pj) {   // blue
                col[0] = (uint8_t)(255 - s * (255 - 31));
                col[1] = (uint8_t)(255 - s * (255 - 119));
                col[2] = (uint8_t)(255 - s * (255 - 180));
            } else {          // red
                col[0] = (uint8_t)(255 - s * (255 - 214));
                col[1] = (uint8_t)(255 - s * (255 - 39));
                col[2] = (uint8_t)(255 - s * (255 - 40));
            }
            rad_eval__rect(&c, L + pj * C, T + gi * C, C, C, col);
        }
    }
    for (int k = 0; k <= K; k++) {   // grid, darker every 10 labels
        const uint8_t *col = k % 10 == 0 || k == K ? dark : grey;
        cli_line(&c, L + k * C, T, L + k * C, T + K * C, col, 1);
        cli_line(&c, L, T + k * C, L + K * C, T + k * C, col, 1);
    }
    for (int k = 0; k < K; k += 10) {   // index labels (catalogue order; 60 = REVIEW)
        char lab[8];
        snprintf(lab, sizeof lab, "%d", k);
        cli_text(&c, L - 6 - (int)strlen(lab) * 8, T + k * C + 1, lab, 2, black);
        cli_text(&c, L + k * C + 1, T + K * C + 6, lab, 2, black);
    }
    qlora_status st = rad_eval__png(path, &c, err);
    free(c.px);
    return st;
#endif
}

// Accuracy-vs-coverage curves: up to 4 series of (coverage, accuracy) pairs, x in [0, 1], y from ylo to 1.
// mark_x/mark_y: operating point (NaN = none); the 0.97 target as a green line.
RADE_FN qlora_status rad_eval_plot_coverage(const char *path, const double *const *curves, const int64_t *npts,
                                            int nseries, double mark_x, double mark_y, qlora_error *err) {
#ifndef CLI_HAVE_STB
    (void)curves; (void)npts; (void)nseries; (void)mark_x; (void)mark_y;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: built without stb_image_write (Debian: libstb-dev)", path);
#else
    cli_canvas c;
    c.w = 800;
    c.h = 480;
    c.px = (uint8_t *)malloc((size_t)c.w * (size_t)c.h * 3);
    if (!c.px) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    memset(c.px, 255, (size_t)c.w * (size_t)c.h * 3);
    static const uint8_t black[3] = {0, 0, 0}, grey[3] = {220, 220, 220}, green[3] = {44, 160, 44};
    static const uint8_t colors[4][3] = {{31, 119, 180}, {255, 127, 14}, {148, 103, 189}, {140, 86, 75}};
    double ylo = 1.0;
    for (int s = 0; s < nseries; s++)
        for (int64_t i = 0; i < npts[s]; i++)
            if (!isnan(curves[s][2 * i + 1]) && curves[s][2 * i + 1] < ylo) ylo = curves[s][2 * i + 1];
    ylo = floor(ylo * 10.0) / 10.0;
    if (ylo > 0.9) ylo = 0.9;
    if (ylo < 0) ylo = 0;
    int L = 80, R = c.w - 20, Tp = 20, Bm = c.h - 40;
    double x0 = 0, x1 = 1;
#define RAD_EVAL_X(v) (L + (int)(((v) - x0) / (x1 - x0) * (R - L) + 0.5))
#define RAD_EVAL_Y(v) (Bm - (int)(((v) - ylo) / (1.0 - ylo) * (Bm - Tp) + 0.5))
    for (int k = 0; k <= 5; k++) {
        double yv = ylo + (1.0 - ylo) * k / 5.0, xv = x0 + (x1 - x0) * k / 5.0;
        char lab[32];
        cli_line(&c, L, RAD_EVAL_Y(yv), R, RAD_EVAL_Y(yv), grey, 1);
        cli_line(&c, RAD_EVAL_X(xv), Tp, RAD_EVAL_X(xv), Bm, grey, 1);
        snprintf(lab, sizeof lab, "%.2f", yv);
        cli_text(&c, 8, RAD_EVAL_Y(yv) - 5, lab, 2, black);
        snprintf(lab, sizeof lab, "%.1f", xv);
        cli_text(&c, RAD_EVAL_X(xv) - 12, Bm + 12, lab, 2, black);
    }
    if (0.97 >= ylo) cli_line(&c, L, RAD_EVAL_Y(0.97), R, RAD_EVAL_Y(0.97), green, 1);
    cli_line(&c, RAD_EVAL_X(0.8), Tp, RAD_EVAL_X(0.8), Bm, green, 1);
    cli_line(&c, L, Tp, L, Bm, black, 2);
    cli_line(&c, L, Bm, R, Bm, black, 2);
    for (int s = 0; s < nseries && s < 4; s++) {
        int px = -1, py = -1, valid = 0;
        for (int64_t i = 0; i < npts[s]; i++) {
            double xv = curves[s][2 * i], yv = curves[s][2 * i + 1];
            if (isnan(xv) || isnan(yv)) continue;
            if (xv > 1) xv = 1;
            int x = RAD_EVAL_X(xv), y = RAD_EVAL_Y(yv);
            if (px >= 0) cli_line(&c, px, py, x, y, colors[s], 2);
            px = x;
            py = y;
            valid++;
        }
        if (valid == 1) rad_eval__rect(&c, px - 4, py - 4, 9, 9, colors[s]);   // a lone point: a dot
    }
    if (!isnan(mark_x) && !isnan(mark_y) && mark_y >= ylo) {
        int x = RAD_EVAL_X(mark_x > 1 ? 1 : mark_x), y = RAD_EVAL_Y(mark_y);
        for (int a = -5; a <= 5; a++) cli_line(&c, x - 5, y + a, x + 5, y + a, black, 1);
    }
#undef RAD_EVAL_X
#undef RAD_EVAL_Y
    qlora_status st = rad_eval__png(path, &c, err);
    free(c.px);
    return st;
#endif
}

// ---------------------------------------------------------------------------------------------------------------
// data: labelled JSONL

typedef struct rad_eval_data {
    int64_t        n;
    char         **ids;     // (n)
    char         **notes;   // (n) NUL-terminated note text: kept in memory only, never written
    size_t        *lens;    // (n)
    rad_eval_item *items;   // (n) gold fields filled; prediction fields set by rad_eval_fill
} rad_eval_data;

RADE_FN void rad_eval_data_free(rad_eval_data *d) {
    for (int64_t i = 0; i < d->n; i++) {
        if (d->ids) free(d->ids[i]);
        if (d->notes) free(d->notes[i]);
    }
    free(d->ids);
    free(d->notes);
    free(d->lens);
    free(d->items);
    memset(d, 0, sizeof *d);
}

RADE_FN char *rad_eval__strndup(const char *s, size_t n) {
    char *p = (char *)malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

// Reads a labelled JSONL file. Errors name the file and the line, never the text of a note.
RADE_FN qlora_status rad_eval_load(const char *path, rad_eval_data *d, qlora_error *err) {
    memset(d, 0, sizeof *d);
    void *raw = NULL;
    size_t size = 0;
    qlora_error e2;
    if (qlora_read_file(path, &raw, &size, &e2) != QLORA_OK)
        return qlora__fail(err, QLORA_ERR_IO, "%s: cannot read the file", path);
    const char *text = (const char *)raw;
    int64_t lines = 1;
    for (size_t i = 0; i < size; i++) lines += text[i] == '\n';
    size_t cap = (size_t)lines;
    d->ids = (char **)calloc(cap, sizeof(char *));
    d->notes = (char **)calloc(cap, sizeof(char *));
    d->lens = (size_t *)calloc(cap, sizeof(size_t));
    d->items = (rad_eval_item *)calloc(cap, sizeof(rad_eval_item));
    qlora_status st = d->ids && d->notes && d->lens && d->items ? QLORA_OK
                                                                 : qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    int64_t line = 0;
    for (size_t pos = 0; st == QLORA_OK && pos < size;) {
        size_t end = pos;
        while (end < size && text[end] != '\n') end++;
        line++;
        size_t a = pos, b = end;
        pos = end + 1;
        while (a < b && (text[a] == ' ' || text[a] == '\t' || text[a] == '\r')) a++;
        while (b > a && (text[b - 1] == ' ' || text[b - 1] == '\t' || text[b - 1] == '\r')) b--;
        if (a == b) continue;
        qlora_json_doc doc;
        if (qlora_json_parse(&doc, text + a, b - a, NULL) != QLORA_OK) {
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s:%lld: malformed JSON", path, (long long)line);
            break;
        }
        const qlora_json *o = &doc.root, *id = qlora_json_get(o, "id"), *note = qlora_json_get(o, "note");
        const qlora_json *lab = qlora_json_get(o, "label"), *fl = qlora_json_get(o, "flags");
        const qlora_json *acc = qlora_json_get(o, "acceptable");
        rad_eval_item *x = &d->items[d->n];
        char idbuf[32];
        const char *ids = NULL;
        size_t idn = 0;
        if (id && id->type == QLORA_JSON_STRING) {
            ids = id->str;
            idn = id->str_len;
        } else if (id && id->type == QLORA_JSON_NUMBER && id->is_integer) {
            snprintf(idbuf, sizeof idbuf, "%lld", (long long)id->integer);
            ids = idbuf;
            idn = strlen(idbuf);
        } else {
            snprintf(idbuf, sizeof idbuf, "line-%lld", (long long)line);
            ids = idbuf;
            idn = strlen(idbuf);
        }
        if (o->type != QLORA_JSON_OBJECT)
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s:%lld: not a JSON object", path, (long long)line);
        else if (!note || note->type != QLORA_JSON_STRING)
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s:%lld: no \"note\" string", path, (long long)line);
        else if (!lab || lab->type != QLORA_JSON_STRING || (x->gold = rad_label_index(lab->str)) < 0)
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s:%lld: \"label\" is missing or not a catalogue label (or REVIEW)",
                             path, (long long)line);
        if (st == QLORA_OK) {
            x->acceptable = 1ull << x->gold;
            for (int64_t k = 0; fl && fl->type == QLORA_JSON_ARRAY && k < fl->count && st == QLORA_OK; k++) {
                const qlora_json *f = &fl->items[k];
                unsigned bit = f->type == QLORA_JSON_STRING ? rad_flag_from_name(f->str, f->str_len) : 0u;
                if (!bit) st = qlora__fail(err, QLORA_ERR_FORMAT, "%s:%lld: unknown flag (item %lld of \"flags\")",
                                           path, (long long)line, (long long)k);
                x->gold_flags |= bit;
            }
            for (int64_t k = 0; acc && acc->type == QLORA_JSON_ARRAY && k < acc->count && st == QLORA_OK; k++) {
                const qlora_json *f = &acc->items[k];
                int li = f->type == QLORA_JSON_STRING ? rad_label_index(f->str) : -1;
                if (li < 0) st = qlora__fail(err, QLORA_ERR_FORMAT, "%s:%lld: item %lld of \"acceptable\" is not a "
                                             "catalogue label", path, (long long)line, (long long)k);
                else x->acceptable |= 1ull << li;
            }
        }
        if (st == QLORA_OK) {
            d->ids[d->n] = rad_eval__strndup(ids, idn);
            d->notes[d->n] = rad_eval__strndup(note->str, note->str_len);
            d->lens[d->n] = note->str_len;
            if (!d->ids[d->n] || !d->notes[d->n]) {
                free(d->ids[d->n]);
                free(d->notes[d->n]);
                d->ids[d->n] = d->notes[d->n] = NULL;
                st = qlora__fail(err, QLORA_ERR_NOMEM, "%s:%lld: out of memory", path, (long long)line);
            } else
                d->n++;
        }
        qlora_json_free(&doc);
    }
    QLORA_FREE(raw);
    if (st == QLORA_OK && d->n == 0) st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: no notes", path);
    if (st != QLORA_OK) rad_eval_data_free(d);
    return st;
}

// Prediction fields of the items from the engine's results (n).
RADE_FN void rad_eval_fill(rad_eval_item *it, const rad_result *res, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const rad_result *r = &res[i];
        rad_eval_item *x = &it[i];
        x->pred = r->label;
        x->model_label = r->model_label;
        x->auto_label = r->safety_label < 0 ? RAD_REVIEW : r->safety_label;
        x->conf = r->model_label < 0 ? 0.0 : r->confidence;
        for (int j = 0; j < 3; j++) x->top[j] = r->top[j];
        x->flags = r->flags;
        x->facts = r->facts;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// outputs

typedef struct rad_eval_config {
    const char *split, *data, *model, *adapter, *calibration, *out, *mlflow, *experiment;
    int         threads, bootstrap, no_mlflow, quiet;
    uint64_t    seed;
    // filled while running
    double      seconds_classify, seconds_total, notes_per_s;
    char        model_sha[65], adapter_sha[65], data_sha[65];
    int         calibrated, max_note_tokens, no_facts;
} rad_eval_config;

static const char *const rad_eval_stat_names[RAD_EVAL_NSTAT] = {"exact_match", "macro_f1", "top3",
                                                                 "acceptable_match"};

RADE_FN void rad_eval__jd(qlora_json_writer *w, const char *key, double x) {
    qlora_jw_key(w, key);
    qlora_jw_double(w, x);   // NaN / inf -> null
}

RADE_FN void rad_eval__ji(qlora_json_writer *w, const char *key, int64_t x) {
    qlora_jw_key(w, key);
    qlora_jw_int(w, x);
}

RADE_FN void rad_eval__js(qlora_json_writer *w, const char *key, const char *s) {
    qlora_jw_key(w, key);
    qlora_jw_string(w, s);
}

RADE_FN void rad_eval__viol_names(unsigned v, char *buf, size_t cap) {
    buf[0] = 0;
    for (int b = 0; b < RAD_EVAL_NVIOL; b++)
        if (v >> b & 1u) {
            size_t k = strlen(buf);
            snprintf(buf + k, cap - k, "%s%s", k ? "," : "", rad_eval_violation_name(1u << b));
        }
}

RADE_FN qlora_status rad_eval_write_json(const char *path, const rad_eval_config *c, const rad_eval_data *d,
                                         const rad_eval_metrics *m, qlora_error *err) {
    qlora_json_writer w;
    qlora_jw_init(&w, 1, 1);
    qlora_jw_object_begin(&w);
    rad_eval__js(&w, "split", c->split);
    rad_eval__js(&w, "data", c->data);
    rad_eval__js(&w, "data_sha256", c->data_sha);
    rad_eval__js(&w, "model", c->model);
    rad_eval__js(&w, "model_sha256", c->model_sha);
    rad_eval__js(&w, "adapter", c->adapter);
    rad_eval__js(&w, "adapter_sha256", c->adapter_sha);
    rad_eval__ji(&w, "n", m->n);
    rad_eval__ji(&w, "n_model", m->n_model);
    rad_eval__ji(&w, "gold_review", m->n_gold_review);
    rad_eval__ji(&w, "pred_review", m->n_pred_review);
    rad_eval__jd(&w, "exact_match", m->exact);
    rad_eval__jd(&w, "acceptable_match", m->acceptable);
    rad_eval__jd(&w, "macro_f1", m->macro_f1);
    rad_eval__jd(&w, "top3", m->top3);
    rad_eval__jd(&w, "contrast_accuracy", m->contrast_acc);
    rad_eval__ji(&w, "contrast_n", m->contrast_n);
    rad_eval__jd(&w, "semantic_similarity", m->semantic);
    rad_eval__jd(&w, "ece", m->ece);
    rad_eval__jd(&w, "temperature", m->temperature);
    rad_eval__jd(&w, "threshold", m->threshold);
    rad_eval__jd(&w, "acc_at_80_coverage", m->acc_at_80);
    rad_eval__jd(&w, "exam_acc_at_80_coverage", m->exam_acc_at_80);
    qlora_jw_key(&w, "at_threshold");
    qlora_jw_object_begin(&w);
    rad_eval__jd(&w, "selective_coverage", m->thr_sel_cov);
    rad_eval__jd(&w, "selective_accuracy", m->thr_sel_acc);
    rad_eval__jd(&w, "exam_coverage", m->thr_exam_cov);
    rad_eval__jd(&w, "exam_accuracy", m->thr_exam_acc);
    qlora_jw_object_end(&w);
    qlora_jw_key(&w, "coverage");
    qlora_jw_array_begin(&w);
    for (int k = 0; k < RAD_EVAL_NCOV; k++) {
        qlora_jw_object_begin(&w);
        rad_eval__jd(&w, "target", m->cov_target[k]);
        rad_eval__jd(&w, "coverage", m->sel_cov[k]);
        rad_eval__jd(&w, "accuracy", m->sel_acc[k]);
        rad_eval__jd(&w, "threshold", m->sel_thr[k]);
        rad_eval__jd(&w, "exam_coverage", m->exam_cov[k]);
        rad_eval__jd(&w, "exam_accuracy", m->exam_acc[k]);
        rad_eval__jd(&w, "exam_threshold", m->exam_thr[k]);
        qlora_jw_object_end(&w);
    }
    qlora_jw_array_end(&w);
    qlora_jw_key(&w, "bootstrap");
    qlora_jw_object_begin(&w);
    rad_eval__ji(&w, "resamples", m->bootstrap);
    rad_eval__ji(&w, "seed", (int64_t)m->seed);
    for (int s = 0; s < RAD_EVAL_NSTAT; s++) {
        qlora_jw_key(&w, rad_eval_stat_names[s]);
        qlora_jw_array_begin(&w);
        qlora_jw_double(&w, m->ci_lo[s]);
        qlora_jw_double(&w, m->ci_hi[s]);
        qlora_jw_array_end(&w);
    }
    qlora_jw_object_end(&w);
    rad_eval__ji(&w, "safety_violations", m->violations);
    qlora_jw_key(&w, "violations");
    qlora_jw_object_begin(&w);
    for (int b = 0; b < RAD_EVAL_NVIOL; b++) rad_eval__ji(&w, rad_eval_violation_name(1u << b), m->viol_kind[b]);
    qlora_jw_object_end(&w);
    rad_eval__ji(&w, "over_abstention", m->over_abstain);
    rad_eval__ji(&w, "clean_notes", m->clean_n);
    qlora_jw_key(&w, "flags");
    qlora_jw_object_begin(&w);
    for (int f = 0; f < RAD_NUM_FLAGS; f++) {
        qlora_jw_key(&w, rad_flag_name(1u << f));
        qlora_jw_object_begin(&w);
        rad_eval__ji(&w, "gold", m->flag_gold[f]);
        rad_eval__ji(&w, "predicted", m->flag_pred[f]);
        rad_eval__jd(&w, "precision", m->flag_precision[f]);
        rad_eval__jd(&w, "recall", m->flag_recall[f]);
        qlora_jw_object_end(&w);
    }
    qlora_jw_object_end(&w);
    rad_eval__ji(&w, "threads", c->threads);
    rad_eval__jd(&w, "seconds_classify", c->seconds_classify);
    rad_eval__jd(&w, "notes_per_second", c->notes_per_s);
    qlora_jw_key(&w, "per_class");
    qlora_jw_array_begin(&w);
    for (int k = 0; k < RAD_EVAL_K; k++) {
        qlora_jw_object_begin(&w);
        rad_eval__js(&w, "label", rad_label_name(k));
        rad_eval__ji(&w, "support", m->support[k]);
        rad_eval__ji(&w, "predicted", m->predicted[k]);
        rad_eval__jd(&w, "recall", m->recall[k]);
        rad_eval__jd(&w, "precision", m->precision[k]);
        rad_eval__jd(&w, "f1", m->f1[k]);
        qlora_jw_object_end(&w);
    }
    qlora_jw_array_end(&w);
    for (int pass = 0; pass < 2; pass++) {
        qlora_jw_key(&w, pass ? "exam_curve" : "selective_curve");
        qlora_jw_array_begin(&w);
        const double *cv = pass ? m->exam_curve : m->sel_curve;
        int64_t np = pass ? m->n_exam_curve : m->n_sel_curve;
        for (int64_t i = 0; i < np; i++) {
            qlora_jw_array_begin(&w);
            qlora_jw_double(&w, cv[2 * i]);
            qlora_jw_double(&w, cv[2 * i + 1]);
            qlora_jw_array_end(&w);
        }
        qlora_jw_array_end(&w);
    }
    qlora_jw_key(&w, "failures");   // ids and labels only
    qlora_jw_array_begin(&w);
    for (int64_t i = 0; i < d->n; i++) {
        const rad_eval_item *x = &d->items[i];
        if (x->pred == x->gold && !m->viol[i]) continue;
        char vn[96];
        rad_eval__viol_names(m->viol[i], vn, sizeof vn);
        qlora_jw_object_begin(&w);
        rad_eval__js(&w, "id", d->ids[i]);
        rad_eval__js(&w, "gold", rad_label_name(x->gold));
        rad_eval__js(&w, "label", rad_label_name(x->pred));
        rad_eval__jd(&w, "confidence", x->conf);
        qlora_jw_key(&w, "acceptable");
        qlora_jw_bool(&w, (int)(x->acceptable >> x->pred & 1u));
        rad_eval__js(&w, "violations", vn);
        qlora_jw_object_end(&w);
    }
    qlora_jw_array_end(&w);
    qlora_jw_object_end(&w);
    qlora_status st = qlora_jw_finish(&w, 1, err);
    if (st == QLORA_OK) st = rad_eval_write_private(path, w.buf, w.len, err);
    qlora_jw_free(&w);
    return st;
}

RADE_FN qlora_status rad_eval_write_tsv(const char *dir, const rad_eval_data *d, const rad_eval_metrics *m,
                                        qlora_error *err) {
    rad_eval_sb b;
    memset(&b, 0, sizeof b);
    rad_eval_sb_printf(&b, "index\tlabel\tsupport\tpredicted\trecall\tprecision\tf1\n");
    for (int k = 0; k < RAD_EVAL_K; k++) {
        char r[16], p[16], f[16];
        rad_eval_sb_printf(&b, "%d\t%s\t%lld\t%lld\t%s\t%s\t%s\n", k, rad_label_name(k), (long long)m->support[k],
                           (long long)m->predicted[k], rad_eval__f(r, sizeof r, m->recall[k], 4),
                           rad_eval__f(p, sizeof p, m->precision[k], 4), rad_eval__f(f, sizeof f, m->f1[k], 4));
    }
    char *path = cli_fmt("%s/per_class.tsv", dir);
    qlora_status st = rad_eval__sb_write(path, &b, err);
    free(path);
    if (st != QLORA_OK) return st;
    rad_eval_sb_printf(&b, "id\tgold\tlabel\tconfidence\tacceptable\tviolations\n");
    for (int64_t i = 0; i < d->n; i++) {
        const rad_eval_item *x = &d->items[i];
        if (x->pred == x->gold && !m->viol[i]) continue;
        char vn[96];
        rad_eval__viol_names(m->viol[i], vn, sizeof vn);
        rad_eval_sb_printf(&b, "%s\t%s\t%s\t%.4f\t%s\t%s\n", d->ids[i], rad_label_name(x->gold),
                           rad_label_name(x->pred), x->conf, (x->acceptable >> x->pred & 1u) ? "yes" : "no",
                           *vn ? vn : "-");
    }
    path = cli_fmt("%s/failures.tsv", dir);
    st = rad_eval__sb_write(path, &b, err);
    free(path);
    return st;
}

RADE_FN void rad_eval__report_text(rad_eval_sb *b, const rad_eval_config *c, const rad_eval_data *d,
                                   const rad_eval_metrics *m) {
    char s1[16], s2[16], s3[16], s4[16];
    rad_eval_sb_printf(b, "radiology eval: %s (%s, %lld notes)\n", c->split, c->data, (long long)m->n);
    rad_eval_sb_printf(b, "model %s (sha256 %.16s), adapter %s (sha256 %.16s)\n", c->model, c->model_sha,
                       c->adapter && *c->adapter ? c->adapter : "none", c->adapter_sha);
    rad_eval_sb_printf(b, "calibration: temperature %s, threshold %s%s; %d threads, %.1f s, %.1f notes/s\n\n",
                       rad_eval__f(s1, sizeof s1, m->temperature, 4), rad_eval__f(s2, sizeof s2, m->threshold, 4),
                       c->calibrated ? "" : " (not calibrated)", c->threads, c->seconds_classify, c->notes_per_s);
    rad_eval_sb_printf(b, "%-44s %8s   %s\n", "metric", "value", "bootstrap 95% CI");
    for (int s = 0; s < RAD_EVAL_NSTAT; s++) {
        double v = s == 0 ? m->exact : s == 1 ? m->macro_f1 : s == 2 ? m->top3 : m->acceptable;
        static const char *const desc[RAD_EVAL_NSTAT] = {"exact match (REVIEW counts as a label)", "macro-F1",
                                                         "top-3 (label or one of 3 alternatives)",
                                                         "acceptable match (gold or acceptable list)"};
        rad_eval_sb_printf(b, "%-44s %8s   [%s, %s]\n", desc[s], rad_eval__f(s1, sizeof s1, v, 4),
                           rad_eval__f(s2, sizeof s2, m->ci_lo[s], 4), rad_eval__f(s3, sizeof s3, m->ci_hi[s], 4));
    }
    rad_eval_sb_printf(b, "%-44s %8s   (%lld notes: gold and label exams)\n", "contrast decision accuracy",
                       rad_eval__f(s1, sizeof s1, m->contrast_acc, 4), (long long)m->contrast_n);
    rad_eval_sb_printf(b, "%-44s %8s\n", "semantic similarity (mean cosine)", rad_eval__f(s1, sizeof s1, m->semantic, 4));
    rad_eval_sb_printf(b, "%-44s %8s   (%lld notes the model ran on)\n", "ECE (15 bins)",
                       rad_eval__f(s1, sizeof s1, m->ece, 4), (long long)m->n_model);
    rad_eval_sb_printf(b, "%-44s %8s\n", "accuracy at >= 80% coverage (selective)", rad_eval__f(s1, sizeof s1, m->acc_at_80, 4));
    rad_eval_sb_printf(b, "%-44s %8s\n", "accuracy at >= 80% coverage (exam labels)",
                       rad_eval__f(s1, sizeof s1, m->exam_acc_at_80, 4));
    rad_eval_sb_printf(b, "%-44s %8lld   (must be 0)\n", "SAFETY VIOLATIONS", (long long)m->violations);
    for (int v = 0; v < RAD_EVAL_NVIOL; v++)
        rad_eval_sb_printf(b, "  %-42s %8lld\n", rad_eval_violation_name(1u << v), (long long)m->viol_kind[v]);
    rad_eval_sb_printf(b, "%-44s %8lld   of %lld clean routine notes\n", "over-abstention (REVIEW, gold clean exam)",
                       (long long)m->over_abstain, (long long)m->clean_n);
    rad_eval_sb_printf(b, "%-44s %8lld   (gold %lld)\n\n", "REVIEW predicted", (long long)m->n_pred_review,
                       (long long)m->n_gold_review);
    rad_eval_sb_printf(b, "accuracy vs coverage (highest threshold reaching the coverage)\n");
    rad_eval_sb_printf(b, "  target   selective: coverage accuracy threshold   exam: coverage accuracy threshold\n");
    for (int k = 0; k < RAD_EVAL_NCOV; k++) {
        char t1[16], t2[16], t3[16], t4[16];
        rad_eval_sb_printf(b, "  %5.2f   %19s %8s %9s   %14s %8s %9s\n", m->cov_target[k],
                           rad_eval__f(s1, sizeof s1, m->sel_cov[k], 3), rad_eval__f(s2, sizeof s2, m->sel_acc[k], 4),
                           rad_eval__f(s3, sizeof s3, m->sel_thr[k], 4), rad_eval__f(t1, sizeof t1, m->exam_cov[k], 3),
                           rad_eval__f(t2, sizeof t2, m->exam_acc[k], 4), rad_eval__f(t3, sizeof t3, m->exam_thr[k], 4));
        (void)t4;
    }
    rad_eval_sb_printf(b, "  at the calibrated threshold: selective coverage %s accuracy %s; exam coverage %s accuracy %s\n\n",
                       rad_eval__f(s1, sizeof s1, m->thr_sel_cov, 3), rad_eval__f(s2, sizeof s2, m->thr_sel_acc, 4),
                       rad_eval__f(s3, sizeof s3, m->thr_exam_cov, 3), rad_eval__f(s4, sizeof s4, m->thr_exam_acc, 4));
    rad_eval_sb_printf(b, "flags          gold  predicted  precision  recall\n");
    for (int f = 0; f < RAD_NUM_FLAGS; f++)
        rad_eval_sb_printf(b, "  %-24s %5lld %9lld %10s %7s\n", rad_flag_name(1u << f), (long long)m->flag_gold[f],
                           (long long)m->flag_pred[f], rad_eval__f(s1, sizeof s1, m->flag_precision[f], 3),
                           rad_eval__f(s2, sizeof s2, m->flag_recall[f], 3));
    rad_eval_sb_printf(b, "\nper-class recall (index = catalogue order, 60 = REVIEW)\n");
    for (int k = 0; k < RAD_EVAL_K; k++)
        if (m->support[k] || m->predicted[k])
            rad_eval_sb_printf(b, "  %2d %-68.68s %4lld %7s  (predicted %lld)\n", k, rad_label_name(k),
                               (long long)m->support[k], rad_eval__f(s1, sizeof s1, m->recall[k], 3),
                               (long long)m->predicted[k]);
    rad_eval_sb_printf(b, "\nfailures by id (gold -> label; ids only)\n");
    int64_t nf = 0;
    for (int64_t i = 0; i < d->n; i++) {
        const rad_eval_item *x = &d->items[i];
        if (x->pred == x->gold && !m->viol[i]) continue;
        char vn[96];
        rad_eval__viol_names(m->viol[i], vn, sizeof vn);
        nf++;
        rad_eval_sb_printf(b, "  %s: %s -> %s (conf %.3f%s%s%s)\n", d->ids[i], rad_label_name(x->gold),
                           rad_label_name(x->pred), x->conf, (x->acceptable >> x->pred & 1u) ? ", acceptable" : "",
                           *vn ? ", VIOLATION " : "", vn);
    }
    if (!nf) rad_eval_sb_printf(b, "  none\n");
    rad_eval_sb_printf(b, "\nDefinitions: demo/rad_eval.h (METRICS, SAFETY VIOLATIONS). Files: metrics.json, "
                          "per_class.tsv, failures.tsv, confusion.png (rows gold, columns label), coverage.png.\n");
}

// Writes every output file into dir (created 0700 when missing).
RADE_FN qlora_status rad_eval_write_outputs(const char *dir, const rad_eval_config *c, const rad_eval_data *d,
                                            const rad_eval_metrics *m, qlora_error *err) {
    qlora_status st = QLORA_OK;
    {
        char *p = cli_strdup(dir);
        for (char *s = p + 1; *s; s++)
            if (*s == '/') {
                *s = 0;
                mkdir(p, 0700);
                *s = '/';
            }
        if (mkdir(p, 0700) != 0 && errno != EEXIST) st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot create: %s", p, strerror(errno));
        free(p);
        if (st != QLORA_OK) return st;
    }
    char *path = cli_fmt("%s/metrics.json", dir);
    st = rad_eval_write_json(path, c, d, m, err);
    free(path);
    if (st == QLORA_OK) st = rad_eval_write_tsv(dir, d, m, err);
    if (st == QLORA_OK) {
        rad_eval_sb b;
        memset(&b, 0, sizeof b);
        rad_eval__report_text(&b, c, d, m);
        path = cli_fmt("%s/report.txt", dir);
        st = rad_eval__sb_write(path, &b, err);
        free(path);
    }
#ifdef CLI_HAVE_STB
    if (st == QLORA_OK) {
        path = cli_fmt("%s/confusion.png", dir);
        st = rad_eval_plot_confusion(path, m->cm, err);
        free(path);
    }
    if (st == QLORA_OK) {
        const double *curves[2];
        int64_t np[2];
        curves[0] = m->sel_curve;
        curves[1] = m->exam_curve;
        np[0] = m->n_sel_curve;
        np[1] = m->n_exam_curve;
        path = cli_fmt("%s/coverage.png", dir);
        st = rad_eval_plot_coverage(path, curves, np, 2, m->thr_sel_cov, m->thr_sel_acc, err);
        free(path);
    }
#endif
    return st;
}

static const char *const rad_eval_files[] = {"report.txt", "metrics.json", "per_class.tsv", "failures.tsv",
                                             "confusion.png", "coverage.png"};
#define RAD_EVAL_NFILES 6

// ---------------------------------------------------------------------------------------------------------------
// MLflow

RADE_FN void rad_eval__param(qlora_mlflow_run *run, const char *k, const char *v) {
    qlora_error e;
    if (qlora_mlflow_log_param(run, k, v ? v : "", &e) != QLORA_OK) cli_note("mlflow: %s", e.detail);
}

RADE_FN void rad_eval__metric(qlora_mlflow_run *run, const char *k, double v, int64_t step) {
    qlora_error e;
    if (qlora_mlflow_log_metric(run, k, v, step, 0, &e) != QLORA_OK) cli_note("mlflow: %s", e.detail);
}

RADE_FN void rad_eval_log_params(qlora_mlflow_run *run, const rad_eval_config *c) {
    char buf[64];
    rad_eval__param(run, "split", c->split);
    rad_eval__param(run, "data", c->data);
    rad_eval__param(run, "model", c->model);
    rad_eval__param(run, "adapter", c->adapter);
    rad_eval__param(run, "calibration", c->calibration ? c->calibration : "");
    rad_eval__param(run, "out", c->out);
    snprintf(buf, sizeof buf, "%d", c->threads);
    rad_eval__param(run, "threads", buf);
    snprintf(buf, sizeof buf, "%d", c->bootstrap);
    rad_eval__param(run, "bootstrap", buf);
    snprintf(buf, sizeof buf, "%llu", (unsigned long long)c->seed);
    rad_eval__param(run, "seed", buf);
}

// Engine-dependent params, metrics, artifacts (chmod 0600 in the run).
RADE_FN void rad_eval_log_results(qlora_mlflow_run *run, const rad_eval_config *c, const rad_eval_metrics *m) {
    char buf[64];
    rad_eval__param(run, "data_sha256", c->data_sha);
    rad_eval__param(run, "model_sha256", c->model_sha);
    rad_eval__param(run, "adapter_sha256", c->adapter_sha);
    snprintf(buf, sizeof buf, "%lld", (long long)m->n);
    rad_eval__param(run, "n_notes", buf);
    snprintf(buf, sizeof buf, "%.17g", m->temperature);
    rad_eval__param(run, "temperature", buf);
    snprintf(buf, sizeof buf, "%.17g", m->threshold);
    rad_eval__param(run, "threshold", buf);
    rad_eval__param(run, "calibrated", c->calibrated ? "true" : "false");
    snprintf(buf, sizeof buf, "%d", c->max_note_tokens);
    rad_eval__param(run, "max_note_tokens", buf);
    rad_eval__param(run, "no_facts", c->no_facts ? "true" : "false");
    rad_eval__metric(run, "exact_match", m->exact, 0);
    rad_eval__metric(run, "acceptable_match", m->acceptable, 0);
    rad_eval__metric(run, "macro_f1", m->macro_f1, 0);
    rad_eval__metric(run, "top3", m->top3, 0);
    rad_eval__metric(run, "contrast_accuracy", m->contrast_acc, 0);
    rad_eval__metric(run, "semantic_similarity", m->semantic, 0);
    rad_eval__metric(run, "ece", m->ece, 0);
    rad_eval__metric(run, "acc_at_80_coverage", m->acc_at_80, 0);
    rad_eval__metric(run, "exam_acc_at_80_coverage", m->exam_acc_at_80, 0);
    rad_eval__metric(run, "threshold_selective_coverage", m->thr_sel_cov, 0);
    rad_eval__metric(run, "threshold_selective_accuracy", m->thr_sel_acc, 0);
    rad_eval__metric(run, "threshold_exam_coverage", m->thr_exam_cov, 0);
    rad_eval__metric(run, "threshold_exam_accuracy", m->thr_exam_acc, 0);
    rad_eval__metric(run, "safety_violations", (double)m->violations, 0);
    for (int v = 0; v < RAD_EVAL_NVIOL; v++) {
        snprintf(buf, sizeof buf, "violations/%s", rad_eval_violation_name(1u << v));
        rad_eval__metric(run, buf, (double)m->viol_kind[v], 0);
    }
    rad_eval__metric(run, "over_abstention", (double)m->over_abstain, 0);
    rad_eval__metric(run, "n_notes", (double)m->n, 0);
    rad_eval__metric(run, "notes_per_second", c->notes_per_s, 0);
    for (int s = 0; s < RAD_EVAL_NSTAT; s++) {
        snprintf(buf, sizeof buf, "ci_low/%s", rad_eval_stat_names[s]);
        rad_eval__metric(run, buf, m->ci_lo[s], 0);
        snprintf(buf, sizeof buf, "ci_high/%s", rad_eval_stat_names[s]);
        rad_eval__metric(run, buf, m->ci_hi[s], 0);
    }
    for (int k = 0; k < RAD_EVAL_K; k++)
        if (m->support[k]) {
            snprintf(buf, sizeof buf, "recall/%02d", k);
            rad_eval__metric(run, buf, m->recall[k], 0);
        }
    for (int f = 0; f < RAD_NUM_FLAGS; f++) {
        snprintf(buf, sizeof buf, "flag_recall/%s", rad_flag_name(1u << f));
        rad_eval__metric(run, buf, m->flag_recall[f], 0);
    }
    for (int k = 0; k < RAD_EVAL_NCOV; k++) {
        int64_t step = (int64_t)floor(m->cov_target[k] * 100 + 0.5);
        rad_eval__metric(run, "coverage/selective_accuracy", m->sel_acc[k], step);
        rad_eval__metric(run, "coverage/exam_accuracy", m->exam_acc[k], step);
    }
    qlora_error e;
    if (qlora_mlflow_set_tag(run, "radiology.command", "eval", &e) != QLORA_OK ||
        qlora_mlflow_set_tag(run, "radiology.split", c->split, &e) != QLORA_OK)
        cli_note("mlflow: %s", e.detail);
    mode_t old_mask = umask(077);   // the copies are private from the start (chmod below is belt and braces)
    for (int i = 0; i < RAD_EVAL_NFILES; i++) {
        char *src = cli_fmt("%s/%s", c->out, rad_eval_files[i]);
        if (cli_is_file(src)) {
            if (qlora_mlflow_log_artifact(run, src, rad_eval_files[i], &e) != QLORA_OK) cli_note("mlflow: %s", e.detail);
            char *dst = cli_fmt("%s/artifacts/%s", run->run_dir, rad_eval_files[i]);
            chmod(dst, 0600);
            free(dst);
        }
        free(src);
    }
    umask(old_mask);
}

// ---------------------------------------------------------------------------------------------------------------
// the eval command

// From the engine's results on d: metrics, files in c->out, MLflow (run may be NULL). Model-free: a test calls it
// with hand-made results. emb (K, dim) or NULL.
RADE_FN qlora_status rad_eval_finish(rad_eval_config *c, rad_eval_data *d, const rad_result *res, const float *emb,
                                     int64_t dim, double temperature, double threshold, qlora_mlflow_run *run,
                                     rad_eval_metrics *m, qlora_error *err) {
    rad_eval_fill(d->items, res, d->n);
    if (rad_eval_compute(d->items, d->n, emb, dim, threshold, temperature, c->bootstrap, c->seed, NULL, NULL, m) != 0)
        return qlora__fail(err, QLORA_ERR_NOMEM, "eval: out of memory computing the metrics");
    qlora_status st = rad_eval_write_outputs(c->out, c, d, m, err);
    if (st == QLORA_OK && run) rad_eval_log_results(run, c, m);
    return st;
}

RADE_FN void rad_eval_usage(FILE *f) {
    fputs("usage: radiology eval [--split test|val|dev|FILE.jsonl] [--model DIR] [--adapter DIR] [--threads N]\n"
          "                      [--out DIR] [--mlflow DIR] [--experiment NAME] [--no-mlflow] [--bootstrap N]\n"
          "                      [--seed S] [--calibration FILE] [--quiet]\n"
          "Classifies every note of a labelled JSONL split and compares with the gold label: exact match, macro-F1,\n"
          "per-class recall, top-3, contrast decision, semantic similarity, accuracy vs coverage, ECE, safety\n"
          "violations (must be 0), bootstrap 95% intervals, failures by id. Writes report.txt, metrics.json,\n"
          "per_class.tsv, failures.tsv, confusion.png and coverage.png (mode 0600) into --out and one MLflow run.\n"
          "  --split      test (data/test.jsonl), val, dev (data/dev_handwritten.jsonl) or a file (default test;\n"
          "               --data FILE is the same)\n"
          "  --model      base model directory (default data/base)\n"
          "  --adapter    adapter directory, \"none\" for the base model only (default data/adapter)\n"
          "  --out        output directory (default build/eval-<split>)\n"
          "  --mlflow     MLflow file store (default mlruns; --mlruns is the same)\n", f);
}

RADE_FN int rad_eval_main(int argc, char **argv) {
    rad_eval_config c;
    memset(&c, 0, sizeof c);
    c.split = "test";
    c.model = "data/base";
    c.adapter = "data/adapter";
    c.mlflow = "mlruns";
    c.experiment = "radiology";
    c.threads = 2;
    c.bootstrap = 1000;
    c.seed = 1234;
    const char *out = NULL;
    for (int i = 1; i < argc;) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        int takes = 1;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            rad_eval_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--no-mlflow")) {
            c.no_mlflow = 1;
            takes = 0;
        } else if (!strcmp(a, "--quiet")) {
            c.quiet = 1;
            takes = 0;
        } else if (!v) {
            cli_error("eval: %s needs a value (or is unknown; see radiology eval --help)", a);
            return 2;
        } else if (!strcmp(a, "--split") || !strcmp(a, "--data")) c.split = v;
        else if (!strcmp(a, "--model")) c.model = v;
        else if (!strcmp(a, "--adapter")) c.adapter = v;
        else if (!strcmp(a, "--calibration")) c.calibration = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--mlflow") || !strcmp(a, "--mlruns")) c.mlflow = v;
        else if (!strcmp(a, "--experiment")) c.experiment = v;
        else if (!strcmp(a, "--threads")) c.threads = atoi(v);
        else if (!strcmp(a, "--bootstrap")) c.bootstrap = atoi(v);
        else if (!strcmp(a, "--seed")) c.seed = strtoull(v, NULL, 10);
        else {
            cli_error("eval: unknown option %s (see radiology eval --help)", a);
            return 2;
        }
        i += 1 + takes;
    }
    if (c.threads < 1 || c.threads > 256 || c.bootstrap < 0 || c.bootstrap > 100000) {
        cli_error("eval: --threads must be 1..256 and --bootstrap 0..100000");
        return 2;
    }
    char *data = NULL, *outbuf = NULL;
    const char *name = c.split;
    if (!strcmp(c.split, "test")) data = cli_strdup("data/test.jsonl");
    else if (!strcmp(c.split, "val")) data = cli_strdup("data/val.jsonl");
    else if (!strcmp(c.split, "dev")) data = cli_strdup("data/dev_handwritten.jsonl");
    else {   // a file: the split name is its base name without .jsonl
        data = cli_strdup(c.split);
        const char *s = strrchr(c.split, '/');
        s = s ? s + 1 : c.split;
        outbuf = cli_strdup(s);
        char *dot = strstr(outbuf, ".jsonl");
        if (dot && dot != outbuf) *dot = 0;
        name = outbuf;
    }
    c.data = data;
    c.split = name;
    char *outdef = cli_fmt("build/eval-%s", name);
    c.out = out ? out : outdef;
    double t0 = cli_now();
    qlora_error err;
    memset(&err, 0, sizeof err);
    rad_eval_data d;
    memset(&d, 0, sizeof d);
    rad_engine eng;
    int have_eng = 0, have_run = 0, rc = 1;
    qlora_mlflow_run run;
    memset(&run, 0, sizeof run);
    memset(&eng, 0, sizeof eng);
    rad_result *res = NULL;
    float *emb = NULL;
    rad_eval_metrics m;
    memset(&m, 0, sizeof m);
    qlora_status st = rad_eval_load(c.data, &d, &err);
    if (st != QLORA_OK) {
        cli_error("eval: %s", err.detail);
        goto out;
    }
    if (!rad_sha256_file(c.data, c.data_sha)) c.data_sha[0] = 0;
    if (!c.no_mlflow) {
        qlora_mlflow_options mo;
        memset(&mo, 0, sizeof mo);
        const char *user = getenv("USER");
        char *rn = cli_fmt("eval-%s", name);
        mo.experiment_name = c.experiment;
        mo.run_name = rn;
        mo.user = user && *user ? user : NULL;
        mo.source_name = "radiology eval";
        st = qlora_mlflow_run_start(&run, c.mlflow, &mo, &err);
        free(rn);
        if (st != QLORA_OK) {
            cli_error("eval: mlflow: %s (pass --no-mlflow to evaluate without tracking)", err.detail);
            goto out;
        }
        have_run = 1;
        rad_eval_log_params(&run, &c);
    }
    {
        rad_engine_options eo;
        memset(&eo, 0, sizeof eo);
        eo.model_dir = c.model;
        eo.adapter_dir = !strcmp(c.adapter, "none") ? "" : c.adapter;
        eo.calibration = c.calibration;
        st = rad_engine_open(&eng, &eo, &err);
        if (st != QLORA_OK) {
            cli_error("eval: %s", err.detail);
            goto out;
        }
        have_eng = 1;
        memcpy(c.model_sha, eng.model_sha256, 65);
        memcpy(c.adapter_sha, eng.adapter_sha256, 65);
        c.calibrated = eng.calibrated;
        c.max_note_tokens = eng.max_note_tokens;
        c.no_facts = eng.no_facts;
    }
    res = (rad_result *)calloc((size_t)d.n, sizeof(rad_result));
    if (!res) {
        cli_error("eval: out of memory");
        goto out;
    }
    if (!c.quiet) cli_note("eval: %lld notes of %s, %d threads", (long long)d.n, c.data, c.threads);
    {
        double t1 = cli_now();
        int64_t failed = -1;
        st = rad_classify_many(&eng, (const char *const *)d.notes, d.lens, d.n, c.threads, res, &failed, &err);
        if (st != QLORA_OK) {
            cli_error("eval: note %s of %s: %s", failed >= 0 ? d.ids[failed] : "?", c.data, err.detail);
            goto out;
        }
        c.seconds_classify = cli_now() - t1;
        c.notes_per_s = c.seconds_classify > 0 ? (double)d.n / c.seconds_classify : 0;
    }
    {   // the 61 label embeddings, once
        int64_t dim = rad_embed_dim(&eng);
        rad_worker w;
        emb = (float *)malloc(sizeof(float) * (size_t)dim * RAD_EVAL_K);
        if (!emb || rad_worker_init(&w, &eng, &err) != QLORA_OK) {
            cli_error("eval: embeddings: %s", emb ? err.detail : "out of memory");
            goto out;
        }
        int k = 0;
        for (; k < RAD_EVAL_K && st == QLORA_OK; k++)
            st = rad_embed_text(&eng, &w, rad_label_name(k), emb + (size_t)k * (size_t)dim, &err);
        rad_worker_free(&w);
        if (st != QLORA_OK) {
            cli_error("eval: embedding label %d: %s", k - 1, err.detail);
            goto out;
        }
        st = rad_eval_finish(&c, &d, res, emb, dim, eng.temperature, eng.threshold, have_run ? &run : NULL, &m, &err);
        if (st != QLORA_OK) {
            cli_error("eval: %s", err.detail);
            goto out;
        }
    }
    c.seconds_total = cli_now() - t0;
    {
        char a[16], b1[16], b2[16];
        printf("%s: exact match %s [%s, %s]", name, rad_eval__f(a, sizeof a, m.exact, 4),
               rad_eval__f(b1, sizeof b1, m.ci_lo[0], 4), rad_eval__f(b2, sizeof b2, m.ci_hi[0], 4));
        printf(", acceptable %s, macro-F1 %s, top-3 %s", rad_eval__f(a, sizeof a, m.acceptable, 4),
               rad_eval__f(b1, sizeof b1, m.macro_f1, 4), rad_eval__f(b2, sizeof b2, m.top3, 4));
        printf(", acc@80%% %s, ECE %s", rad_eval__f(a, sizeof a, m.acc_at_80, 4), rad_eval__f(b1, sizeof b1, m.ece, 4));
        printf(", safety violations %lld, %.1f notes/s -> %s/report.txt\n", (long long)m.violations, c.notes_per_s,
               c.out);
        fflush(stdout);
        if (m.violations) cli_note("eval: WARNING: %lld safety violations (see %s/failures.tsv)", (long long)m.violations, c.out);
    }
    rc = 0;
out:
    if (have_run) {
        qlora_error e;
        char buf[32];
        snprintf(buf, sizeof buf, "%.3f", cli_now() - t0);
        qlora_mlflow_set_tag(&run, "radiology.seconds", buf, &e);
        if (qlora_mlflow_run_end(&run, rc == 0 ? QLORA_MLFLOW_FINISHED : QLORA_MLFLOW_FAILED, &e) != QLORA_OK)
            cli_note("mlflow: %s", e.detail);
        else if (!c.quiet)
            cli_note("eval: mlflow run %s in %s", run.run_id, c.mlflow);
        qlora_mlflow_run_free(&run);
    }
    if (have_eng) rad_engine_close(&eng);
    rad_eval_metrics_free(&m);
    if (d.items || d.ids) rad_eval_data_free(&d);
    free(res);
    free(emb);
    free(data);
    free(outbuf);
    free(outdef);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// the demo's report: test split + hand-written dev set + timings

RADE_FN double rad_eval__jnum(const qlora_json *v) {
    return v && v->type == QLORA_JSON_NUMBER ? v->number : NAN;
}

RADE_FN double rad_eval__jget(const qlora_json *o, const char *key) { return rad_eval__jnum(qlora_json_get(o, key)); }

// Curve [[c, a], ...] of a metrics.json into a fresh (n, 2) array.
RADE_FN double *rad_eval__jcurve(const qlora_json *o, const char *key, int64_t *n) {
    const qlora_json *a = qlora_json_get(o, key);
    *n = 0;
    if (!a || a->type != QLORA_JSON_ARRAY) return NULL;
    double *c = (double *)malloc(sizeof(double) * 2 * (size_t)(a->count + 1));
    if (!c) return NULL;
    for (int64_t i = 0; i < a->count; i++) {
        c[2 * i] = rad_eval__jnum(qlora_json_at(&a->items[i], 0));
        c[2 * i + 1] = rad_eval__jnum(qlora_json_at(&a->items[i], 1));
    }
    *n = a->count;
    return c;
}

RADE_FN void rad_eval__report_set(rad_eval_sb *b, const char *title, const qlora_json *r, int max_ids) {
    char s1[16], s2[16], s3[16], s4[16];
    const qlora_json *bs = qlora_json_get(r, "bootstrap");
    rad_eval_sb_printf(b, "\n== %s: %s (%lld notes) ==\n", title, qlora_json_get_string(r, "data", "?"),
                       (long long)qlora_json_get_int(r, "n", 0));
    for (int s = 0; s < RAD_EVAL_NSTAT; s++) {
        const qlora_json *ci = qlora_json_get(bs, rad_eval_stat_names[s]);
        rad_eval_sb_printf(b, "  %-36s %8s  [%s, %s]\n", rad_eval_stat_names[s],
                           rad_eval__f(s1, sizeof s1, rad_eval__jget(r, rad_eval_stat_names[s]), 4),
                           rad_eval__f(s2, sizeof s2, rad_eval__jnum(qlora_json_at(ci, 0)), 4),
                           rad_eval__f(s3, sizeof s3, rad_eval__jnum(qlora_json_at(ci, 1)), 4));
    }
    static const char *const keys[] = {"contrast_accuracy", "semantic_similarity", "ece", "acc_at_80_coverage",
                                       "exam_acc_at_80_coverage"};
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
        rad_eval_sb_printf(b, "  %-36s %8s\n", keys[k], rad_eval__f(s1, sizeof s1, rad_eval__jget(r, keys[k]), 4));
    const qlora_json *at = qlora_json_get(r, "at_threshold");
    rad_eval_sb_printf(b, "  %-36s coverage %s, accuracy %s (exam labels: coverage %s, accuracy %s)\n",
                       "at the calibrated threshold", rad_eval__f(s1, sizeof s1, rad_eval__jget(at, "selective_coverage"), 3),
                       rad_eval__f(s2, sizeof s2, rad_eval__jget(at, "selective_accuracy"), 4),
                       rad_eval__f(s3, sizeof s3, rad_eval__jget(at, "exam_coverage"), 3),
                       rad_eval__f(s4, sizeof s4, rad_eval__jget(at, "exam_accuracy"), 4));
    rad_eval_sb_printf(b, "  %-36s %8lld   over-abstention %lld of %lld clean notes\n", "safety violations",
                       (long long)qlora_json_get_int(r, "safety_violations", -1),
                       (long long)qlora_json_get_int(r, "over_abstention", -1),
                       (long long)qlora_json_get_int(r, "clean_notes", -1));
    rad_eval_sb_printf(b, "  %-36s %8.1f notes/s (%lld threads)\n", "classification speed",
                       rad_eval__jget(r, "notes_per_second"), (long long)qlora_json_get_int(r, "threads", 0));
    // where it fails: the most frequent (gold -> label) pairs, then the ids
    const qlora_json *f = qlora_json_get(r, "failures");
    int64_t nf = f && f->type == QLORA_JSON_ARRAY ? f->count : 0;
    rad_eval_sb_printf(b, "  where it fails (%lld notes; gold -> label x count):\n", (long long)nf);
    unsigned char *done = (unsigned char *)calloc((size_t)(nf > 0 ? nf : 1), 1);
    for (int shown = 0; done && shown < 12;) {
        int64_t best = -1, bestc = 0;
        for (int64_t i = 0; i < nf; i++) {
            if (done[i]) continue;
            const char *g = qlora_json_get_string(&f->items[i], "gold", ""), *l = qlora_json_get_string(&f->items[i], "label", "");
            int64_t cnt = 0;
            for (int64_t j = i; j < nf; j++)
                cnt += !done[j] && !strcmp(g, qlora_json_get_string(&f->items[j], "gold", "")) &&
                       !strcmp(l, qlora_json_get_string(&f->items[j], "label", ""));
            if (cnt > bestc) {
                bestc = cnt;
                best = i;
            }
        }
        if (best < 0) break;
        const char *g = qlora_json_get_string(&f->items[best], "gold", ""), *l = qlora_json_get_string(&f->items[best], "label", "");
        rad_eval_sb_printf(b, "    %s -> %s x %lld\n", g, l, (long long)bestc);
        for (int64_t j = best; j < nf; j++)
            if (!strcmp(g, qlora_json_get_string(&f->items[j], "gold", "")) &&
                !strcmp(l, qlora_json_get_string(&f->items[j], "label", "")))
                done[j] = 1;
        shown++;
    }
    free(done);
    rad_eval_sb_printf(b, "  failing ids:");
    for (int64_t i = 0; i < nf && i < max_ids; i++)
        rad_eval_sb_printf(b, "%s%s", i % 8 ? " " : "\n    ", qlora_json_get_string(&f->items[i], "id", "?"));
    if (nf > max_ids) rad_eval_sb_printf(b, "\n    ... (%lld more in failures.tsv)", (long long)(nf - max_ids));
    rad_eval_sb_printf(b, "%s\n", nf ? "" : " none");
}

RADE_FN qlora_status rad_eval__copy_private(const char *src, const char *dst, qlora_error *err) {
    void *data = NULL;
    size_t n = 0;
    qlora_status st = qlora_read_file(src, &data, &n, err);
    if (st == QLORA_OK) st = rad_eval_write_private(dst, data, n, err);
    QLORA_FREE(data);
    return st;
}

// Writes out_dir/report.txt (+ coverage.png with the curves of both sets, confusion_test.png, confusion_dev.png)
// from test_dir/metrics.json and dev_dir/metrics.json (either may be NULL or missing) and the named timings.
RADE_FN qlora_status rad_report_write(const char *out_dir, const char *test_dir, const char *dev_dir,
                                      const char *const *time_names, const double *time_s, int n_times,
                                      qlora_error *err) {
    qlora_json_doc doc[2];
    const char *dirs[2];
    int have[2];
    dirs[0] = test_dir;
    dirs[1] = dev_dir;
    memset(doc, 0, sizeof doc);
    if (mkdir(out_dir, 0700) != 0 && errno != EEXIST)
        return qlora__fail(err, QLORA_ERR_IO, "%s: cannot create: %s", out_dir, strerror(errno));
    for (int s = 0; s < 2; s++) {
        char *p = dirs[s] ? cli_fmt("%s/metrics.json", dirs[s]) : NULL;
        have[s] = p && cli_is_file(p) && qlora_json_read_file(&doc[s], p, NULL) == QLORA_OK;
        free(p);
    }
    const qlora_json *T = have[0] ? &doc[0].root : NULL, *D = have[1] ? &doc[1].root : NULL;
    rad_eval_sb b;
    memset(&b, 0, sizeof b);
    char when[64], s1[16], s2[16], s3[16];
    time_t now = time(NULL);
    struct tm tmv;
    gmtime_r(&now, &tmv);
    strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tmv);
    double total = NAN;
    for (int i = 0; i < n_times; i++)
        if (!strcmp(time_names[i], "total")) total = time_s[i];
    rad_eval_sb_printf(&b, "Radiology protocol assignment: demo report (%s)\n", when);
    if (T) rad_eval_sb_printf(&b, "model %s, adapter %s\n", qlora_json_get_string(T, "model", "?"),
                              qlora_json_get_string(T, "adapter", "?"));
    rad_eval_sb_printf(&b, "\n%-46s %-26s %-10s %s\n", "target (issue 5)", "measured", "target", "met");
#define RAD_EVAL_ROW(name, val, lo, hi, tgt, ok)                                                                      \
    rad_eval_sb_printf(&b, "%-46s %-8s [%s, %s]%*s %-10s %s\n", name, rad_eval__f(s1, sizeof s1, val, 4),             \
                       rad_eval__f(s2, sizeof s2, lo, 3), rad_eval__f(s3, sizeof s3, hi, 3), 1, "", tgt,              \
                       isnan(val) ? "n/a" : (ok) ? "yes" : "NO")
    if (T) {
        const qlora_json *ci = qlora_json_get(qlora_json_get(T, "bootstrap"), "exact_match");
        double v = rad_eval__jget(T, "exact_match");
        RAD_EVAL_ROW("exact match, generated test split", v, rad_eval__jnum(qlora_json_at(ci, 0)),
                     rad_eval__jnum(qlora_json_at(ci, 1)), ">= 0.97", v >= 0.97);
    }
    if (D) {
        const qlora_json *ci = qlora_json_get(qlora_json_get(D, "bootstrap"), "exact_match");
        double v = rad_eval__jget(D, "exact_match");
        RAD_EVAL_ROW("exact match, hand-written dev set", v, rad_eval__jnum(qlora_json_at(ci, 0)),
                     rad_eval__jnum(qlora_json_at(ci, 1)), ">= 0.85", v >= 0.85);
    }
#undef RAD_EVAL_ROW
    for (int s = 0; s < 2; s++) {
        const qlora_json *r = s ? D : T;
        if (!r) continue;
        double v = rad_eval__jget(r, "acc_at_80_coverage");
        char nm[64];
        snprintf(nm, sizeof nm, "accuracy at >= 80%% coverage, %s", s ? "dev" : "test");
        rad_eval_sb_printf(&b, "%-46s %-26s %-10s %s\n", nm, rad_eval__f(s1, sizeof s1, v, 4), ">= 0.97",
                           isnan(v) ? "n/a" : v >= 0.97 ? "yes" : "NO");
    }
    for (int s = 0; s < 2; s++) {
        const qlora_json *r = s ? D : T;
        if (!r) continue;
        int64_t v = qlora_json_get_int(r, "safety_violations", -1);
        char nm[64], val[32];
        snprintf(nm, sizeof nm, "safety violations, %s", s ? "dev" : "test");
        snprintf(val, sizeof val, "%lld", (long long)v);
        rad_eval_sb_printf(&b, "%-46s %-26s %-10s %s\n", nm, val, "0", v == 0 ? "yes" : "NO");
    }
    if (T) {
        double v = rad_eval__jget(T, "notes_per_second");
        char nm[80];
        snprintf(nm, sizeof nm, "classification speed (eval, %lld threads)", (long long)qlora_json_get_int(T, "threads", 0));
        rad_eval_sb_printf(&b, "%-46s %-26s %-10s %s\n", nm, rad_eval__f(s1, sizeof s1, v, 1), ">= 20/s",
                           isnan(v) ? "n/a" : v >= 20 ? "yes" : "NO");
    }
    if (!isnan(total))
        rad_eval_sb_printf(&b, "%-46s %-26s %-10s %s\n", "demo wall time (s)", rad_eval__f(s1, sizeof s1, total, 1),
                           "<= 600", total <= 600 ? "yes" : "NO");
    if (T) rad_eval__report_set(&b, "generated test split", T, 40);
    if (D) rad_eval__report_set(&b, "hand-written dev set", D, 1000);
    if (n_times > 0) {
        rad_eval_sb_printf(&b, "\n== timings ==\n");
        for (int i = 0; i < n_times; i++) rad_eval_sb_printf(&b, "  %-24s %9.1f s\n", time_names[i], time_s[i]);
    }
    rad_eval_sb_printf(&b, "\nFiles: coverage.png (selective accuracy vs coverage: test blue, dev orange; exam-label "
                           "curves: test purple, dev brown), confusion_test.png, confusion_dev.png (rows gold, columns "
                           "label, catalogue order, 60 = REVIEW); each set's report.txt, metrics.json, failures.tsv. "
                           "Definitions: demo/rad_eval.h.\n");
    char *path = cli_fmt("%s/report.txt", out_dir);
    qlora_status st = rad_eval__sb_write(path, &b, err);
    free(path);
#ifdef CLI_HAVE_STB
    if (st == QLORA_OK && (T || D)) {
        const double *curves[4];
        int64_t np[4];
        double *own[4];
        int ns = 0;
        memset(own, 0, sizeof own);
        for (int pass = 0; pass < 2; pass++)
            for (int s = 0; s < 2; s++) {
                const qlora_json *r = s ? D : T;
                int64_t k = 0;
                own[ns] = r ? rad_eval__jcurve(r, pass ? "exam_curve" : "selective_curve", &k) : NULL;
                curves[ns] = own[ns] ? own[ns] : (const double *)s1;
                np[ns] = own[ns] ? k : 0;
                ns++;
            }
        path = cli_fmt("%s/coverage.png", out_dir);
        st = rad_eval_plot_coverage(path, curves, np, ns, NAN, NAN, err);
        free(path);
        for (int i = 0; i < 4; i++) free(own[i]);
    }
#endif
    for (int s = 0; s < 2 && st == QLORA_OK; s++) {
        if (!dirs[s]) continue;
        char *src = cli_fmt("%s/confusion.png", dirs[s]), *dst = cli_fmt("%s/confusion_%s.png", out_dir, s ? "dev" : "test");
        if (cli_is_file(src)) st = rad_eval__copy_private(src, dst, err);
        free(src);
        free(dst);
    }
    qlora_json_free(&doc[0]);
    qlora_json_free(&doc[1]);
    return st;
}

// radiology report --out DIR [--test DIR] [--dev DIR] [--time NAME=SECONDS ...]
RADE_FN int rad_report_main(int argc, char **argv) {
    const char *out = NULL, *test = NULL, *dev = NULL;
    const char *names[32];
    double secs[32];
    char *own[32];
    int nt = 0, rc = 2;
    for (int i = 1; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs("usage: radiology report --out DIR [--test DIR] [--dev DIR] [--time NAME=SECONDS ...]\n"
                  "Combines the eval results in DIR/test and DIR/dev (metrics.json) and the timings into\n"
                  "DIR/report.txt, DIR/coverage.png, DIR/confusion_test.png and DIR/confusion_dev.png (mode 0600).\n",
                  stdout);
            for (int k = 0; k < nt; k++) free(own[k]);
            return 0;
        }
        if (!v) {
            cli_error("report: %s needs a value (or is unknown)", a);
            goto done;
        }
        if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--test")) test = v;
        else if (!strcmp(a, "--dev")) dev = v;
        else if (!strcmp(a, "--time") && nt < 32) {
            const char *eq = strchr(v, '=');
            if (!eq || eq == v) {
                cli_error("report: --time wants NAME=SECONDS");
                goto done;
            }
            own[nt] = rad_eval__strndup(v, (size_t)(eq - v));
            names[nt] = own[nt];
            secs[nt] = atof(eq + 1);
            nt++;
        } else {
            cli_error("report: unknown option %s", a);
            goto done;
        }
    }
    if (!out) {
        cli_error("report: --out DIR is required");
        goto done;
    }
    {
        char *t = test ? NULL : cli_fmt("%s/test", out), *d = dev ? NULL : cli_fmt("%s/dev", out);
        qlora_error err;
        memset(&err, 0, sizeof err);
        qlora_status st = rad_report_write(out, test ? test : t, dev ? dev : d, names, secs, nt, &err);
        free(t);
        free(d);
        if (st != QLORA_OK) {
            cli_error("report: %s", err.detail);
            rc = 1;
        } else {
            printf("report: %s/report.txt\n", out);
            rc = 0;
        }
    }
done:
    for (int k = 0; k < nt; k++) free(own[k]);
    return rc;
}

#endif // RAD_EVAL_H
