// test_radiology_eval.c - `radiology eval` and the demo report (demo/rad_eval.h) without a model.
//
// Checks: the metric functions (exact / acceptable match, macro-F1, per-class recall / precision / F1, top-3,
// contrast decision, ECE, both accuracy-vs-coverage curves, bootstrap percentile intervals replayed with the
// same resample indices) on generated arrays against test/ref/rad_metrics_ref.py (numpy; contrast classes read
// from data/catalogue.tsv); hand-computed small cases (ties, unreachable coverage, percentile); the safety
// violation detector on constructed notes (each kind detected, the safe counterpart not); the JSONL loader's
// errors (line numbers, no note text); rad_eval_finish on hand-made engine results with a marker planted in
// every note: every output file mode 0600 in a 0700 folder, PNGs decodable with the right size, metrics.json
// consistent, the MLflow run valid (test/ref/mlflow_check.py), and the marker in no file written; the demo
// report (rad_report_write) likewise.
#include "../demo/qlora_commands.h"
#include "../demo/rad_core.h"
#include "../demo/rad_eval.h"
#include "test_util.h"

#ifdef CLI_HAVE_STB
#define STB_IMAGE_IMPLEMENTATION

#include <stb/stb_image.h>
#endif

#include <dirent.h>

#define MARKER "ZQX7MARKERNOTE"

static int quick(void) {
    const char *q = getenv("QLORA_TEST_QUICK");
    return q && *q && strcmp(q, "0") != 0;
}

static int same_d(double a, double b, double tol) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b);
    if (isinf(a) || isinf(b)) return a == b;
    return fabs(a - b) <= tol * (1 + fabs(b));
}

// NaN-aware comparison of n doubles; reports the first difference.
static void check_vec(const char *name, const double *got, const double *want, int n, double tol) {
    for (int i = 0; i < n; i++)
        if (!same_d(got[i], want[i], tol)) {
            tu_check(0, name, "[%d] got %.12g want %.12g", i, got[i], want[i]);
            return;
        }
    tu_check(1, name, NULL);
}

static void mkdir_p(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *s = buf + 1; *s; s++)
        if (*s == '/') {
            *s = 0;
            mkdir(buf, 0777);
            *s = '/';
        }
    mkdir(buf, 0777);
}

// --- recording resample generator --------------------------------------------------------------------------

typedef struct rec_gen {
    qlora_rng rng;
    int64_t  *buf;   // (R, n)
    int64_t   used, cap;
} rec_gen;

static void rec_draw(void *g, int64_t n, int64_t *idx) {
    rec_gen *r = (rec_gen *)g;
    rad_eval_draw_rng(&r->rng, n, idx);
    if (r->used + n <= r->cap) memcpy(r->buf + r->used, idx, sizeof(int64_t) * (size_t)n);
    r->used += n;
}

// --- 1. metrics against numpy --------------------------------------------------------------------------------

static void test_metrics_vs_numpy(void) {
    const char *name = "metrics match numpy reference (rad_metrics_ref.py)";
    if (!tu_have_python("numpy")) {
        tu_skip(name, "numpy not importable by /usr/bin/python3");
        return;
    }
    const int n = 257, R = quick() ? 50 : 300;
    rad_eval_item *it = (rad_eval_item *)calloc((size_t)n, sizeof *it);
    qlora_rng rng;
    qlora_rng_seed(&rng, 7);
    for (int i = 0; i < n; i++) {
        rad_eval_item *x = &it[i];
        double u = qlora_rng_uniform(&rng);
        x->gold = qlora_rng_uniform(&rng) < 0.15f ? RAD_REVIEW : (int)(50 * u * u);   // labels 50..59 never gold
        x->acceptable = 1ull << x->gold;
        if (qlora_rng_uniform(&rng) < 0.2f) x->acceptable |= 1ull << (qlora_rng_u64(&rng) % 61);
        x->pred = qlora_rng_uniform(&rng) < 0.7f ? x->gold : (int)(qlora_rng_u64(&rng) % 61);
        x->auto_label = x->pred;
        if (x->pred == RAD_REVIEW && qlora_rng_uniform(&rng) < 0.5f) x->auto_label = (int)(qlora_rng_u64(&rng) % 60);
        x->model_label = qlora_rng_uniform(&rng) < 0.04f ? -1 : x->auto_label;
        x->conf = x->model_label < 0 ? 0.0 : floor(qlora_rng_uniform(&rng) * 40) / 40.0 + 0.01;   // ties
        for (int j = 0; j < 3; j++) x->top[j] = x->model_label < 0 ? -1 : (int)(qlora_rng_u64(&rng) % 61);
        if (x->model_label >= 0 && qlora_rng_uniform(&rng) < 0.3f) x->top[1] = x->gold;
    }
    rec_gen g;
    memset(&g, 0, sizeof g);
    qlora_rng_seed(&g.rng, 99);
    g.cap = (int64_t)R * n;
    g.buf = (int64_t *)malloc(sizeof(int64_t) * (size_t)g.cap);
    rad_eval_metrics m;
    int rc = rad_eval_compute(it, n, NULL, 0, 0.5, 1.0, R, 0, rec_draw, &g, &m);
    tu_check(rc == 0 && g.used == g.cap, "rad_eval_compute runs; generator drew R x n indices", "rc %d used %lld",
             rc, (long long)g.used);
    char dir[512];
    snprintf(dir, sizeof dir, "%s/rad_eval_ref", tu_tmpdir());
    mkdir_p(dir);
    int32_t *gi = (int32_t *)malloc(sizeof(int32_t) * (size_t)n * 3), *pi = gi + n, *ai = pi + n;
    int32_t *mi = (int32_t *)malloc(sizeof(int32_t) * (size_t)n), *ti = (int32_t *)malloc(sizeof(int32_t) * (size_t)n * 3);
    uint64_t *acc = (uint64_t *)malloc(sizeof(uint64_t) * (size_t)n);
    double *conf = (double *)malloc(sizeof(double) * (size_t)n);
    for (int i = 0; i < n; i++) {
        gi[i] = it[i].gold;
        pi[i] = it[i].pred;
        ai[i] = it[i].auto_label;
        mi[i] = it[i].model_label;
        for (int j = 0; j < 3; j++) ti[3 * i + j] = it[i].top[j];
        acc[i] = it[i].acceptable;
        conf[i] = it[i].conf;
    }
    char p[600];
    int ok = 1;
#define W(file, ptr, bytes) (snprintf(p, sizeof p, "%s/%s", dir, file), ok &= tu_write(p, ptr, bytes))
    W("gold.i32", gi, sizeof(int32_t) * (size_t)n);
    W("pred.i32", pi, sizeof(int32_t) * (size_t)n);
    W("auto.i32", ai, sizeof(int32_t) * (size_t)n);
    W("model.i32", mi, sizeof(int32_t) * (size_t)n);
    W("top.i32", ti, sizeof(int32_t) * (size_t)n * 3);
    W("acc.u64", acc, sizeof(uint64_t) * (size_t)n);
    W("conf.f64", conf, sizeof(double) * (size_t)n);
    W("idx.i64", g.buf, sizeof(int64_t) * (size_t)g.cap);
    char meta[512];
    int ml = snprintf(meta, sizeof meta, "{\"n\": %d, \"R\": %d, \"bins\": %d, \"targets\": [", n, R, RAD_EVAL_ECE_BINS);
    for (int k = 0; k < RAD_EVAL_NCOV; k++) ml += snprintf(meta + ml, sizeof meta - (size_t)ml, "%s%.17g", k ? ", " : "", m.cov_target[k]);
    snprintf(meta + ml, sizeof meta - (size_t)ml, "]}");
    W("meta.json", meta, strlen(meta));
#undef W
    int T = RAD_EVAL_NCOV, nref = 6 + 3 * 61 + 6 * T + 8 + 61;
    double *ref = (double *)malloc(sizeof(double) * (size_t)nref);
    snprintf(p, sizeof p, "%s/ref.f64", dir);
    remove(p);
    int prc = ok ? tu_python("test/ref/rad_metrics_ref.py %s data/catalogue.tsv", dir) : -1;
    if (!tu_check(ok && prc == 0 && tu_read(p, ref, sizeof(double) * (size_t)nref), "numpy reference ran",
                  "write ok %d, python exit %d", ok, prc)) {
        free(ref);
        goto done;
    }
    {
        double got[6];
        got[0] = m.exact;
        got[1] = m.acceptable;
        got[2] = m.macro_f1;
        got[3] = m.top3;
        got[4] = m.ece;
        got[5] = m.contrast_acc;
        check_vec("exact match = numpy", got, ref, 1, 1e-12);
        check_vec("acceptable match = numpy", got + 1, ref + 1, 1, 1e-12);
        check_vec("macro-F1 (union of classes, zero_division 0) = numpy", got + 2, ref + 2, 1, 1e-12);
        check_vec("top-3 accuracy = numpy", got + 3, ref + 3, 1, 1e-12);
        check_vec("ECE (15 bins) = numpy", got + 4, ref + 4, 1, 1e-12);
        check_vec("contrast decision accuracy = numpy (classes from catalogue.tsv)", got + 5, ref + 5, 1, 1e-12);
        check_vec("per-class recall = numpy (NaN without support)", m.recall, ref + 6, 61, 1e-12);
        check_vec("per-class precision = numpy", m.precision, ref + 6 + 61, 61, 1e-12);
        check_vec("per-class F1 = numpy", m.f1, ref + 6 + 122, 61, 1e-12);
        const double *r = ref + 6 + 183;
        check_vec("selective coverage points = numpy", m.sel_cov, r, T, 1e-12);
        check_vec("selective accuracy at coverage = numpy", m.sel_acc, r + T, T, 1e-12);
        check_vec("selective thresholds = numpy", m.sel_thr, r + 2 * T, T, 1e-12);
        check_vec("exam coverage points = numpy", m.exam_cov, r + 3 * T, T, 1e-12);
        check_vec("exam accuracy at coverage = numpy", m.exam_acc, r + 4 * T, T, 1e-12);
        check_vec("exam thresholds = numpy", m.exam_thr, r + 5 * T, T, 1e-12);
        check_vec("bootstrap 2.5% (same indices) = numpy percentile", m.ci_lo, r + 6 * T, 4, 1e-12);
        check_vec("bootstrap 97.5% (same indices) = numpy percentile", m.ci_hi, r + 6 * T + 4, 4, 1e-12);
        double cls[61];
        for (int k = 0; k < 61; k++) cls[k] = rad_eval_contrast_class(k);
        check_vec("contrast class of every label = catalogue.tsv columns", cls, r + 6 * T + 8, 61, 0);
        int lo_le_hi = 1;
        for (int s = 0; s < 4; s++) lo_le_hi &= m.ci_lo[s] <= m.ci_hi[s];
        tu_check(lo_le_hi && m.ci_lo[0] <= m.exact && m.exact <= m.ci_hi[0], "bootstrap interval brackets the estimate",
                 "exact %g in [%g, %g]", m.exact, m.ci_lo[0], m.ci_hi[0]);
    }
    free(ref);
done:
    rad_eval_metrics_free(&m);
    free(gi);
    free(mi);
    free(ti);
    free(acc);
    free(conf);
    free(g.buf);
    free(it);
}

// --- 2. hand-made cases -------------------------------------------------------------------------------------

static void test_small_cases(void) {
    {   // coverage: 2 always-covered (one right), 4 thresholded with a tie at 0.9
        double conf[6] = {0.0, 0.0, 0.9, 0.9, 0.8, 0.5};
        int kind[6] = {1, 1, 0, 0, 0, 0}, cor[6] = {1, 0, 1, 1, 0, 1}, cnt[6] = {1, 1, 1, 1, 1, 1};
        double tg[4] = {0.3, 0.5, 0.8, 1.01}, cov[4], acc[4], thr[4], curve[14];
        int64_t np = rad_eval_coverage(conf, kind, cor, cnt, 6, 6.0, tg, 4, cov, acc, thr, curve);
        // thresholds: inf (2/6, 1/2), 0.9 (4/6, 3/4), 0.8 (5/6, 3/5), 0.5 (6/6, 4/6)
        tu_check(np == 4 && same_d(cov[0], 2.0 / 6, 1e-15) && isinf(thr[0]) && same_d(acc[0], 0.5, 1e-15) &&
                     same_d(cov[1], 4.0 / 6, 1e-15) && thr[1] == 0.9 && same_d(acc[1], 0.75, 1e-15) &&
                     same_d(cov[2], 5.0 / 6, 1e-15) && thr[2] == 0.8 && same_d(acc[2], 0.6, 1e-15) &&
                     isnan(cov[3]) && isnan(acc[3]) && isnan(thr[3]),
                 "coverage curve: ties go together, unreachable target is NaN", "np %lld cov %g %g %g acc %g %g %g",
                 (long long)np, cov[0], cov[1], cov[2], acc[0], acc[1], acc[2]);
    }
    {
        double x[4] = {4, 1, 3, 2};
        double a = rad_eval_percentile(x, 4, 2.5), b = rad_eval_percentile(x, 4, 97.5), c = rad_eval_percentile(x, 4, 50);
        tu_check(same_d(a, 1.075, 1e-12) && same_d(b, 3.925, 1e-12) && same_d(c, 2.5, 1e-12),
                 "percentile: numpy linear interpolation", "%g %g %g", a, b, c);
    }
    {   // macro-F1 by hand: gold {0,0,1,2}, pred {0,1,1,3}: F1(0)=2/3, F1(1)=2/3, F1(2)=0, F1(3)=0 -> 1/3
        int g[4] = {0, 0, 1, 2}, p[4] = {0, 1, 1, 3};
        double rec[61];
        double f = rad_eval_f1(g, p, 4, rec, NULL, NULL, NULL, NULL);
        tu_check(same_d(f, 1.0 / 3, 1e-15) && same_d(rec[0], 0.5, 1e-15) && rec[1] == 1 && rec[2] == 0 && isnan(rec[3]),
                 "macro-F1 and recall by hand", "f1 %g rec %g %g %g %g", f, rec[0], rec[1], rec[2], rec[3]);
    }
    {   // ECE by hand: conf 0.95 right, 0.95 wrong, 0.25 wrong -> bins 14: |0.5-0.95| * 2/3, bin 3: 0.25 * 1/3
        double c[3] = {0.95, 0.95, 0.25};
        int r[3] = {1, 0, 0};
        double e = rad_eval_ece(c, r, 3, 15);
        tu_check(same_d(e, 0.45 * 2 / 3 + 0.25 / 3, 1e-12), "ECE by hand", "%g", e);
    }
    tu_check(rad_eval_contrast_class(RAD_CT_AP_IV) == RAD_EVAL_CONTRAST_WITH &&
                 rad_eval_contrast_class(RAD_CT_STONE) == RAD_EVAL_CONTRAST_WITHOUT &&
                 rad_eval_contrast_class(RAD_MR_BRAIN_C) == RAD_EVAL_CONTRAST_WITH &&
                 rad_eval_contrast_class(RAD_US_RLQ) == RAD_EVAL_CONTRAST_NONE &&
                 rad_eval_contrast_class(RAD_CT_STROKE) == RAD_EVAL_CONTRAST_WITH &&
                 rad_eval_contrast_class(RAD_REVIEW) == RAD_EVAL_CONTRAST_REVIEW,
             "contrast classes of a few labels", "");
}

// --- 3. safety violations on constructed cases --------------------------------------------------------------

static rad_eval_item mk(const char *note, int gold, unsigned gold_flags, int pred, unsigned flags) {
    rad_eval_item x;
    memset(&x, 0, sizeof x);
    rad_extract(note, strlen(note), &x.facts);
    x.gold = gold;
    x.gold_flags = gold_flags;
    x.acceptable = 1ull << gold;
    x.pred = x.auto_label = x.model_label = pred;
    x.flags = flags;
    x.conf = 0.9;
    x.top[0] = pred;
    x.top[1] = x.top[2] = -1;
    return x;
}

static void safety_case(const char *name, rad_eval_item x, unsigned want) {
    unsigned got = rad_eval_safety(&x);
    tu_check(got == want, name, "violations 0x%x, expected 0x%x", got, want);
}

static void test_safety(void) {
    const unsigned CR = RAD_FLAG_CONTRAST_RISK, PG = RAD_FLAG_PREGNANCY, MR = RAD_FLAG_MRI_SAFETY;
    const char *renal = "72M flank pain, h/o stones. CKD 4, eGFR 22, not on dialysis.";
    // the note's facts contraindicate CT A/P with IV contrast: both the gold-based and the extractor check fire
    safety_case("safety: iodinated label with eGFR 22, no flag -> contrast + extractor",
                mk(renal, RAD_CT_STONE, CR, RAD_CT_AP_IV, 0), RAD_EVAL_V_CONTRAST | RAD_EVAL_V_EXTRACTOR);
    safety_case("safety: iodinated label with eGFR 22, flagged but not acceptable -> contrast",
                mk(renal, RAD_CT_STONE, CR, RAD_CT_AP_IV, CR), RAD_EVAL_V_CONTRAST | RAD_EVAL_V_EXTRACTOR);
    safety_case("safety: safe alternative with flag -> clean", mk(renal, RAD_CT_STONE, CR, RAD_CT_STONE, CR), 0);
    safety_case("safety: REVIEW -> clean", mk(renal, RAD_CT_STONE, CR, RAD_REVIEW, CR), 0);
    // the extractor missed the risk (no fact in the note): only the gold annotation shows it
    safety_case("safety: gold contrast_risk the extractor cannot see, silent contrast label -> contrast",
                mk("abd pain, r/o abscess", RAD_CT_STONE, CR, RAD_CT_AP_IV, 0), RAD_EVAL_V_CONTRAST);
    // iodinated reaction only: a gadolinium MRI does not expose it
    safety_case("safety: iodinated anaphylaxis, gadolinium MRI unflagged -> clean (other agent)",
                mk("55F new HA, known breast ca, eval mets. Allergy: IV contrast -> anaphylaxis.", RAD_MR_BRAIN_C, CR,
                   RAD_MR_BRAIN_C, 0), 0);
    // code stroke with renal failure: the rules keep the contrast label with the flag
    const char *stroke = "66M LKW 07:15, R arm weakness, aphasia, NIHSS 12. Code stroke. On HD, eGFR 9.";
    safety_case("safety: kept stroke CT with flag -> clean", mk(stroke, RAD_CT_STROKE, CR, RAD_CT_STROKE, CR), 0);
    safety_case("safety: kept stroke CT without the flag -> contrast",
                mk(stroke, RAD_CT_STROKE, CR, RAD_CT_STROKE, 0), RAD_EVAL_V_CONTRAST);
    safety_case("safety: stroke window missed (MRI brain) -> under-triage",
                mk(stroke, RAD_CT_STROKE, CR, RAD_MR_BRAIN, 0), RAD_EVAL_V_UNDERTRIAGE);
    safety_case("safety: stroke window to REVIEW -> clean", mk(stroke, RAD_CT_STROKE, CR, RAD_REVIEW, CR), 0);
    // pregnancy
    const char *preg = "27F G2P1 IUP ~11 wks, RLQ pain + vomiting, WBC 13. r/o appendicitis.";
    {
        rad_eval_item x = mk(preg, RAD_US_RLQ, PG, RAD_CT_AP_IV, PG);
        tu_check(x.facts.pregnant == 1 && rad_contraindications(&x.facts, RAD_CT_AP_IV) != 0,
                 "safety fixture: the extractor reads the pregnancy", "pregnant %d", x.facts.pregnant);
        safety_case("safety: pregnant, CT A/P with IV contrast flagged -> pregnancy + extractor", x,
                    RAD_EVAL_V_PREGNANCY | RAD_EVAL_V_EXTRACTOR);
    }
    safety_case("safety: pregnant, US RLQ -> clean", mk(preg, RAD_US_RLQ, PG, RAD_US_RLQ, PG), 0);
    safety_case("safety: pregnant, XR ankle (kept with flag by the rules) flagged -> an error, not a violation",
                mk(preg, RAD_US_RLQ, PG, RAD_XR_ANKLE, PG), 0);
    safety_case("safety: pregnant, XR ankle without the flag -> pregnancy", mk(preg, RAD_US_RLQ, PG, RAD_XR_ANKLE, 0),
                RAD_EVAL_V_PREGNANCY);
    safety_case("safety: pregnant, MRI without contrast (not exposing) -> clean",
                mk(preg, RAD_US_RLQ, PG, RAD_MR_AP, PG), 0);
    const char *unk = "34F RLQ pain x1d, T 38.2, WBC 14.5. Cr 0.7. ?appy";
    safety_case("safety: unknown pregnancy status, ionising gold kept with flag -> clean",
                mk(unk, RAD_CT_AP_IV, PG, RAD_CT_AP_IV, PG), 0);
    safety_case("safety: unknown pregnancy status, flag missing -> pregnancy",
                mk(unk, RAD_CT_AP_IV, PG, RAD_CT_AP_IV, 0), RAD_EVAL_V_PREGNANCY);
    // unknown status (the gold flag is G6's rule for a nuclear exam in a woman of 12-50): gadolinium does not
    // expose it, a pelvic-field ionising exam does
    const char *unk_nm = "Age 31, sex female. Indication: equivocal US for acute cholecystitis. AKI this admission.";
    safety_case("safety: unknown pregnancy status, gadolinium MRI pelvis unflagged -> an error, not a violation",
                mk(unk_nm, RAD_NM_HIDA, PG, RAD_MR_PELVIS_C, CR), 0);
    safety_case("safety: unknown pregnancy status, CT A/P without contrast unflagged -> pregnancy",
                mk(unk_nm, RAD_NM_HIDA, PG, RAD_CT_STONE, 0), RAD_EVAL_V_PREGNANCY);
    safety_case("safety: known pregnancy, gadolinium MRI pelvis unflagged -> pregnancy + extractor",
                mk("31F 14 wks pregnant, equivocal US for acute cholecystitis.", RAD_US_RUQ, PG, RAD_MR_PELVIS_C, 0),
                RAD_EVAL_V_PREGNANCY | RAD_EVAL_V_EXTRACTOR);
    // renal high risk and an iodinated bronchospasm, gold REVIEW: G3 keeps a gadolinium MRI with the flag (an
    // error, not a violation); an iodinated CT is switched by the rules (a violation, flagged or not)
    const char *renal_iod = "76F tearing chest pain to back. Creatinine 314 umol/L, iodinated contrast: bronchospasm.";
    safety_case("safety: renal high risk, gadolinium MRI with the flag (G3 keeps it) -> an error, not a violation",
                mk(renal_iod, RAD_REVIEW, CR, RAD_MR_LSPINE_C, CR), 0);
    safety_case("safety: renal high risk, gadolinium MRI without the flag -> contrast",
                mk(renal_iod, RAD_REVIEW, CR, RAD_MR_LSPINE_C, 0), RAD_EVAL_V_CONTRAST);
    safety_case("safety: renal high risk, iodinated CTA with the flag -> contrast + extractor",
                mk(renal_iod, RAD_REVIEW, CR, RAD_CTA_AORTA, CR), RAD_EVAL_V_CONTRAST | RAD_EVAL_V_EXTRACTOR);
    // MRI safety
    const char *ppm = "82M legacy PPM (not MR conditional per EP), L-sided weakness since 3 days, r/o infarct.";
    safety_case("safety: non-conditional pacemaker, MRI brain flagged -> mri + extractor",
                mk(ppm, RAD_CT_HEAD, MR, RAD_MR_BRAIN, MR), RAD_EVAL_V_MRI | RAD_EVAL_V_EXTRACTOR);
    safety_case("safety: non-conditional pacemaker, CT head -> clean", mk(ppm, RAD_CT_HEAD, MR, RAD_CT_HEAD, MR), 0);
    const char *cond = "60F MR conditional pacemaker, new seizures, eval for lesion.";
    safety_case("safety: MR-conditional device, MRI kept with flag -> clean",
                mk(cond, RAD_MR_BRAIN_C, MR, RAD_MR_BRAIN_C, MR), 0);
    safety_case("safety: MR-conditional device, MRI without flag -> mri",
                mk(cond, RAD_MR_BRAIN_C, MR, RAD_MR_BRAIN_C, 0), RAD_EVAL_V_MRI);
    // anticoagulated head trauma
    const char *fall = "78F mechanical fall at NH, struck occiput, on apixaban for AF. GCS 15.";
    safety_case("safety: anticoagulated head strike, XR chest -> under-triage",
                mk(fall, RAD_CT_HEAD, 0, RAD_XR_CHEST, 0), RAD_EVAL_V_UNDERTRIAGE);
    safety_case("safety: anticoagulated head strike, CT head -> clean", mk(fall, RAD_CT_HEAD, 0, RAD_CT_HEAD, 0), 0);
    safety_case("safety: CT head gold without anticoagulant, MRI -> an error, not a violation",
                mk("41F thunderclap headache 2 h ago, worst of life.", RAD_CT_HEAD, 0, RAD_MR_BRAIN, 0), 0);
    {   // acceptable alternative of the annotators
        rad_eval_item x = mk("post liver bx day 3, on apixaban, Hgb 11.8 -> 8.9, eGFR 70", RAD_CT_AP_IV, 0, RAD_CTA_AP, 0);
        x.acceptable |= 1ull << RAD_CTA_AP;
        safety_case("safety: acceptable alternative, no risk flag -> clean", x, 0);
    }
    // counts in rad_eval_compute
    rad_eval_item its[3];
    its[0] = mk(renal, RAD_CT_STONE, CR, RAD_CT_AP_IV, 0);
    its[1] = mk(renal, RAD_CT_STONE, CR, RAD_CT_STONE, CR);
    its[2] = mk("routine f/u ankle sprain, pain on weight bearing, Ottawa positive", RAD_XR_ANKLE, 0, RAD_REVIEW, 0);
    rad_eval_metrics m;
    rad_eval_compute(its, 3, NULL, 0, 0, 1, 0, 1, NULL, NULL, &m);
    tu_check(m.violations == 1 && m.viol_kind[0] == 1 && m.viol_kind[4] == 1 && m.over_abstain == 1 && m.clean_n == 1,
             "safety counts and over-abstention in rad_eval_compute", "violations %lld over %lld/%lld",
             (long long)m.violations, (long long)m.over_abstain, (long long)m.clean_n);
    rad_eval_metrics_free(&m);
}

// --- 4. loader, outputs, MLflow, report ---------------------------------------------------------------------

static int file_mode(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 ? (int)(s.st_mode & 0777) : -1;
}

// 1 when MARKER occurs in some regular file under dir (recursively); *files counts the files read.
static int marker_in_tree(const char *dir, int *files, char *where, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *e;
    int found = 0;
    while (!found && (e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat s;
        if (stat(p, &s) != 0) continue;
        if (S_ISDIR(s.st_mode)) found = marker_in_tree(p, files, where, cap);
        else if (S_ISREG(s.st_mode)) {
            void *data = NULL;
            size_t n = 0;
            (*files)++;
            if (qlora_read_file(p, &data, &n, NULL) == QLORA_OK) {
                const char *t = (const char *)data;
                for (size_t i = 0; i + strlen(MARKER) <= n && !found; i++)
                    if (!memcmp(t + i, MARKER, strlen(MARKER))) found = 1;
                if (found) snprintf(where, cap, "%s", p);
            }
            QLORA_FREE(data);
        }
    }
    closedir(d);
    return found;
}

static void check_png(const char *name, const char *path, int w, int h) {
#ifdef CLI_HAVE_STB
    int x = 0, y = 0, c = 0;
    unsigned char *px = stbi_load(path, &x, &y, &c, 3);
    tu_check(px && x == w && y == h, name, "%s: decoded %d x %d (want %d x %d)%s", path, x, y, w, h, px ? "" : " failed");
    if (px) stbi_image_free(px);
#else
    (void)path; (void)w; (void)h;
    tu_skip(name, "built without stb (libstb-dev)");
#endif
}

static void test_loader_errors(const char *root) {
    char p[600];
    qlora_error err;
    rad_eval_data d;
    snprintf(p, sizeof p, "%s/bad.jsonl", root);
    const char *bad = "{\"id\": \"a\", \"note\": \"" MARKER " one\", \"label\": \"REVIEW\"}\n"
                      "\n"
                      "{\"id\": \"b\", \"note\": \"" MARKER " two\", \"label\": \"CT head with contrast\"}\n";
    tu_write(p, bad, strlen(bad));
    memset(&err, 0, sizeof err);
    qlora_status st = rad_eval_load(p, &d, &err);
    tu_check(st != QLORA_OK && strstr(err.detail, ":3:") && !strstr(err.detail, MARKER),
             "loader: unknown gold label names line 3, no note text", "status %d: %s", (int)st, err.detail);
    const char *bad2 = "{\"id\": \"a\", \"note\": \"" MARKER "\", \"label\": \"REVIEW\"}\n{\"id\": \"b\", \"note\": \"" MARKER;
    tu_write(p, bad2, strlen(bad2));
    st = rad_eval_load(p, &d, &err);
    tu_check(st != QLORA_OK && strstr(err.detail, ":2:") && !strstr(err.detail, MARKER),
             "loader: malformed JSON names line 2, no note text", "status %d: %s", (int)st, err.detail);
    const char *bad3 = "{\"id\": \"a\", \"note\": \"" MARKER "\", \"label\": \"REVIEW\", \"flags\": [\"" MARKER "\"]}\n";
    tu_write(p, bad3, strlen(bad3));
    st = rad_eval_load(p, &d, &err);
    tu_check(st != QLORA_OK && strstr(err.detail, ":1:") && !strstr(err.detail, MARKER), "loader: unknown flag",
             "status %d: %s", (int)st, err.detail);
}

static void test_outputs(void) {
    char root[512], data[600], out[600], mlruns[600], p[800];
    snprintf(root, sizeof root, "%s/rad_eval_out", tu_tmpdir());
    cli_rm_rf(root);
    mkdir_p(root);
    test_loader_errors(root);
    // a labelled file built from the first notes of data/test.jsonl-like cases, each with the marker
    static const char *const notes[][2] = {
        {"CT head without contrast", "78F fall on apixaban, struck head, GCS 15"},
        {"CT stroke protocol (CT head without contrast + CTA head and neck)", "LKW 1 h, aphasia, NIHSS 8, code stroke"},
        {"CT abdomen pelvis with IV contrast", "34F RLQ pain, fever, WBC 14, hCG neg, Cr 0.7"},
        {"US abdomen right lower quadrant", "27F IUP 11 wks, RLQ pain, r/o appendicitis"},
        {"CT abdomen pelvis without contrast (renal stone protocol)", "45M L flank pain, hematuria, h/o stones, Cr 1.0"},
        {"REVIEW", "pain, eval"},
        {"CT head without contrast", "82M legacy PPM not MR conditional, L weakness 3 days ago"},
        {"CTA chest pulmonary embolism protocol", "59F POD12 TKA, SOB, HR 114, D-dimer 3.1, eGFR 82"},
    };
    const int nn = (int)(sizeof notes / sizeof notes[0]), reps = 5, n = nn * reps;
    snprintf(data, sizeof data, "%s/notes.jsonl", root);
    FILE *f = fopen(data, "w");
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < nn; i++)
            fprintf(f, "{\"id\": \"n%02d\", \"note\": \"%s %s (%d)\", \"label\": \"%s\", \"flags\": [%s], "
                       "\"acceptable\": []}\n",
                    r * nn + i, notes[i][1], MARKER, r, notes[i][0], i == 3 ? "\"pregnancy\"" : i == 6 ? "\"mri_safety\"" : "");
    fclose(f);
    rad_eval_data d;
    qlora_error err;
    memset(&err, 0, sizeof err);
    qlora_status st = rad_eval_load(data, &d, &err);
    if (!tu_check(st == QLORA_OK && d.n == n, "loader reads the labelled JSONL", "%s (n %lld)", err.detail, (long long)d.n))
        return;
    // hand-made engine results: mostly right, some wrong, one low-confidence REVIEW, one empty-note style result
    rad_result *res = (rad_result *)calloc((size_t)n, sizeof(rad_result));
    qlora_rng rng;
    qlora_rng_seed(&rng, 3);
    for (int i = 0; i < n; i++) {
        rad_result *r = &res[i];
        rad_extract(d.notes[i], d.lens[i], &r->facts);
        int g = d.items[i].gold, lab = i % 7 == 3 ? (g + 5) % 60 : g;
        r->model_label = lab;
        r->confidence = 0.5 + 0.5 * qlora_rng_uniform(&rng);
        rad_decision dec;
        rad_safety_check_index(&r->facts, lab, &dec);
        r->safety_label = dec.label;
        r->label = dec.label;
        r->flags = dec.flags;
        if (i % 11 == 5 && r->label != RAD_REVIEW) {
            r->label = RAD_REVIEW;
            r->confidence = 0.3;
        }
        r->top[0] = lab;
        r->top[1] = g;
        r->top[2] = RAD_REVIEW;
        r->review = r->label == RAD_REVIEW;
        r->reason = "";
        if (i == n - 1) {   // like an empty note: the model did not run
            memset(r, 0, sizeof *r);
            r->label = RAD_REVIEW;
            r->model_label = r->safety_label = -1;
            r->top[0] = r->top[1] = r->top[2] = -1;
            r->reason = "empty note";
        }
    }
    float emb[61 * 8];
    for (int k = 0; k < 61 * 8; k++) emb[k] = qlora_rng_normal(&rng);
    snprintf(out, sizeof out, "%s/eval", root);
    snprintf(mlruns, sizeof mlruns, "%s/mlruns", root);
    rad_eval_config c;
    memset(&c, 0, sizeof c);
    c.split = "notes";
    c.data = data;
    c.model = "fake-model";
    c.adapter = "fake-adapter";
    c.out = out;
    c.mlflow = mlruns;
    c.threads = 2;
    c.bootstrap = 200;
    c.seed = 5;
    snprintf(c.model_sha, sizeof c.model_sha, "%064d", 1);
    qlora_mlflow_run run;
    qlora_mlflow_options mo;
    memset(&mo, 0, sizeof mo);
    mo.experiment_name = "radiology";
    mo.run_name = "eval-notes";
    mo.user = "tester";
    mo.seed = 11;
    st = qlora_mlflow_run_start(&run, mlruns, &mo, &err);
    tu_check(st == QLORA_OK, "mlflow run starts", "%s", err.detail);
    rad_eval_log_params(&run, &c);
    rad_eval_metrics m;
    st = rad_eval_finish(&c, &d, res, emb, 8, 1.5, 0.4, &run, &m, &err);
    tu_check(st == QLORA_OK, "rad_eval_finish writes the outputs", "%s", err.detail);
    qlora_mlflow_run_end(&run, QLORA_MLFLOW_FINISHED, &err);
    // files and modes
    int modes_ok = file_mode(out) == 0700;
    char bad[256] = "";
    for (int i = 0; i < RAD_EVAL_NFILES; i++) {
        snprintf(p, sizeof p, "%s/%s", out, rad_eval_files[i]);
        int md = file_mode(p);
        if (md != 0600) {
            modes_ok = 0;
            snprintf(bad, sizeof bad, "%s mode %o", rad_eval_files[i], md);
        }
        snprintf(p, sizeof p, "%s/artifacts/%s", run.run_dir, rad_eval_files[i]);
        if (file_mode(p) != 0600) {
            modes_ok = 0;
            snprintf(bad, sizeof bad, "artifact %s mode %o", rad_eval_files[i], file_mode(p));
        }
    }
    tu_check(modes_ok, "every output file and MLflow artifact is mode 0600 (folder 0700)", "%s", bad);
    snprintf(p, sizeof p, "%s/confusion.png", out);
    check_png("confusion.png decodes, 61x61 cells + margins", p, 60 + RAD_EVAL_CELL * 61 + 20, 30 + RAD_EVAL_CELL * 61 + 50);
    snprintf(p, sizeof p, "%s/coverage.png", out);
    check_png("coverage.png decodes, 800x480", p, 800, 480);
    // metrics.json agrees with the in-memory metrics
    qlora_json_doc doc;
    snprintf(p, sizeof p, "%s/metrics.json", out);
    if (tu_check(qlora_json_read_file(&doc, p, &err) == QLORA_OK, "metrics.json parses", "%s", err.detail)) {
        const qlora_json *r = &doc.root;
        int ok = qlora_json_get_int(r, "n", -1) == n && same_d(qlora_json_get_number(r, "exact_match", -1), m.exact, 1e-15) &&
                 qlora_json_get_int(r, "safety_violations", -1) == m.violations &&
                 same_d(qlora_json_get_number(r, "macro_f1", -1), m.macro_f1, 1e-15) &&
                 qlora_json_get(r, "failures") && qlora_json_get(r, "failures")->count > 0 &&
                 qlora_json_get(r, "selective_curve")->count == m.n_sel_curve;
        tu_check(ok, "metrics.json holds the metrics, curves and failures", "");
        int exact_ok = 0;
        for (int i = 0; i < n; i++) exact_ok += d.items[i].pred == d.items[i].gold;
        tu_check(same_d(m.exact, (double)exact_ok / n, 1e-15) && m.n_model == n - 1 && !isnan(m.semantic) &&
                     m.semantic <= 1.0 + 1e-9,
                 "exact match, model-run count and semantic similarity of the fake run", "exact %g model %lld sem %g",
                 m.exact, (long long)m.n_model, m.semantic);
        qlora_json_free(&doc);
    }
    // MLflow run readable the way MLflow reads it
    if (!tu_have_python("yaml")) tu_skip("eval MLflow run passes mlflow_check.py", "PyYAML not importable");
    else {
        char ex[900];
        snprintf(ex, sizeof ex, "%s/expect.tsv", root);
        f = fopen(ex, "w");
        fprintf(f, "run\t%s\t%s\t3\teval-notes\ttester\n", run.experiment_id, run.run_id);
        fprintf(f, "param\t%s\tsplit\tnotes\n", run.run_id);
        fprintf(f, "param\t%s\tthreads\t2\n", run.run_id);
        fprintf(f, "param\t%s\tn_notes\t%d\n", run.run_id, n);
        fprintf(f, "tag\t%s\tradiology.command\teval\n", run.run_id);
        fprintf(f, "metric\t%s\texact_match\t%.17g\t0\n", run.run_id, m.exact);
        fprintf(f, "metric\t%s\tsafety_violations\t%.17g\t0\n", run.run_id, (double)m.violations);
        fprintf(f, "metric\t%s\tcoverage/selective_accuracy\t%.17g\t100\n", run.run_id, m.sel_acc[RAD_EVAL_NCOV - 1]);
        fclose(f);
        int rc = tu_python("test/ref/mlflow_check.py %s %s > %s/mlflow_check.log 2>&1", mlruns, ex, root);
        tu_check(rc == 0, "eval MLflow run passes mlflow_check.py", "exit %d (see %s/mlflow_check.log)", rc, root);
    }
    // the demo report from the same folder used as test and dev set
    char rep[600];
    snprintf(rep, sizeof rep, "%s/report", root);
    const char *tn[2] = {"train", "total"};
    double ts[2] = {123.4, 456.7};
    st = rad_report_write(rep, out, out, tn, ts, 2, &err);
    tu_check(st == QLORA_OK, "rad_report_write", "%s", err.detail);
    int rok = 1;
    static const char *const rfiles[4] = {"report.txt", "coverage.png", "confusion_test.png", "confusion_dev.png"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", rep, rfiles[i]);
        if (file_mode(p) != 0600) {
            rok = 0;
            snprintf(bad, sizeof bad, "%s mode %o", rfiles[i], file_mode(p));
        }
    }
    tu_check(rok, "report files are mode 0600", "%s", bad);
    snprintf(p, sizeof p, "%s/coverage.png", rep);
    check_png("report coverage.png decodes", p, 800, 480);
    {
        void *txt = NULL;
        size_t tl = 0;
        snprintf(p, sizeof p, "%s/report.txt", rep);
        int has = qlora_read_file(p, &txt, &tl, NULL) == QLORA_OK && strstr((char *)txt, "exact match, hand-written dev set") &&
                  strstr((char *)txt, "demo wall time") && strstr((char *)txt, "where it fails");
        tu_check(has, "report.txt has the targets table, timings and where it fails", "");
        QLORA_FREE(txt);
    }
    // no note text anywhere
    int files = 0;
    char where[1024] = "";
    int found = marker_in_tree(root, &files, where, sizeof where);
    // the input file itself holds the marker: look only at what was written
    files = 0;
    found = marker_in_tree(out, &files, where, sizeof where) || marker_in_tree(mlruns, &files, where, sizeof where) ||
            marker_in_tree(rep, &files, where, sizeof where);
    tu_check(!found && files >= 15, "no note text (planted marker) in any output, MLflow or report file",
             "found in %s (%d files read)", where, files);
    // a run folder in place of the output folder's parent fails cleanly
    rad_eval_metrics_free(&m);
    rad_eval_data_free(&d);
    qlora_mlflow_run_free(&run);
    free(res);
}

// --- 5. command line ----------------------------------------------------------------------------------------

static void test_cli_args(void) {
    char a0[] = "eval", a1[] = "--bogus", a2[] = "x";
    char *av[3];
    av[0] = a0;
    av[1] = a1;
    av[2] = a2;
    fflush(stdout);
    int saved = dup(2), nul = open("/dev/null", O_WRONLY);
    dup2(nul, 2);
    int rc1 = rad_eval_main(3, av);
    char b1[] = "--threads", b2[] = "0";
    av[1] = b1;
    av[2] = b2;
    int rc2 = rad_eval_main(3, av);
    char c1[] = "--split", c2[] = "build/tmp/does-not-exist.jsonl";
    av[1] = c1;
    av[2] = c2;
    int rc3 = rad_eval_main(3, av);
    dup2(saved, 2);
    close(saved);
    close(nul);
    tu_check(rc1 == 2 && rc2 == 2 && rc3 == 1, "eval: unknown option / bad --threads exit 2, missing data exits 1",
             "%d %d %d", rc1, rc2, rc3);
}


// --- 6. end to end on a tiny random model -------------------------------------------------------------------

// tokenizer.json: <unk> <s> </s>, 256 byte pieces, "▁", a-z, four merges.
static int write_tiny_tokenizer(const char *path) {
    FILE *f = fopen(path, "w");
    if (!f) return 0;
    fputs("{\"added_tokens\": [{\"id\": 0, \"content\": \"<unk>\", \"special\": true, \"normalized\": false}, "
          "{\"id\": 1, \"content\": \"<s>\", \"special\": true, \"normalized\": false}, "
          "{\"id\": 2, \"content\": \"</s>\", \"special\": true, \"normalized\": false}], "
          "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": \"\\u2581\"}, "
          "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\\u2581\"}]}, "
          "\"pre_tokenizer\": null, \"model\": {\"type\": \"BPE\", \"unk_token\": \"<unk>\", \"fuse_unk\": true, "
          "\"byte_fallback\": true, \"vocab\": {\"<unk>\": 0, \"<s>\": 1, \"</s>\": 2", f);
    int id = 3;
    for (int b = 0; b < 256; b++) fprintf(f, ", \"<0x%02X>\": %d", b, id++);
    fprintf(f, ", \"\\u2581\": %d", id++);
    for (char ch = 'a'; ch <= 'z'; ch++) fprintf(f, ", \"%c\": %d", ch, id++);
    static const char *const mg[4][2] = {{"o", "n"}, {"i", "t"}, {"a", "s"}, {"e", "n"}};
    for (int k = 0; k < 4; k++) fprintf(f, ", \"%s%s\": %d", mg[k][0], mg[k][1], id++);
    fputs("}, \"merges\": [", f);
    for (int k = 0; k < 4; k++) fprintf(f, "%s\"%s %s\"", k ? ", " : "", mg[k][0], mg[k][1]);
    fputs("]}}\n", f);
    return fclose(f) == 0;
}

#define TINY_VOCAB 292

// Dense F32 Llama with random weights: hidden 32, 1 layer, 2 heads, 4096 positions (the label trie is long with
// a byte-level vocabulary).
static int write_tiny_model(const char *dir) {
    const int C = 32, H = 64, NH = 2, HD = 16;
    char p[700];
    mkdir_p(dir);
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "w");
    if (!f) return 0;
    fprintf(f, "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, "
               "\"intermediate_size\": %d, \"num_hidden_layers\": 1, \"num_attention_heads\": %d, "
               "\"num_key_value_heads\": %d, \"vocab_size\": %d, \"max_position_embeddings\": 4096, "
               "\"rms_norm_eps\": 1e-05, \"rope_theta\": 10000.0, \"tie_word_embeddings\": false, "
               "\"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"torch_dtype\": \"float32\"}\n",
            C, H, NH, NH, TINY_VOCAB);
    fclose(f);
    static const char *const names[12] = {"model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
                                          "model.layers.0.post_attention_layernorm.weight",
                                          "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
                                          "model.layers.0.self_attn.v_proj.weight", "model.layers.0.self_attn.o_proj.weight",
                                          "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight",
                                          "model.layers.0.mlp.down_proj.weight", "model.norm.weight", "lm_head.weight"};
    const int64_t shp[12][2] = {{TINY_VOCAB, C}, {C, 0}, {C, 0}, {NH * HD, C}, {NH * HD, C}, {NH * HD, C},
                                {C, NH * HD}, {H, C}, {H, C}, {C, H}, {C, 0}, {TINY_VOCAB, C}};
    qlora_st_entry e[12];
    float *bufs[12];
    memset(e, 0, sizeof e);
    tu_seed(17);
    for (int i = 0; i < 12; i++) {
        long cnt = (long)shp[i][0] * (shp[i][1] ? (long)shp[i][1] : 1L);
        bufs[i] = (float *)malloc(sizeof(float) * (size_t)cnt);
        if (shp[i][1]) tu_fill_normal(bufs[i], cnt, 1.0 / sqrt((double)shp[i][1]));
        else for (long q = 0; q < cnt; q++) bufs[i][q] = 1.0f;
        e[i].name = names[i];
        e[i].dtype = QLORA_DTYPE_F32;
        e[i].ndim = shp[i][1] ? 2 : 1;
        e[i].shape[0] = shp[i][0];
        e[i].shape[1] = shp[i][1];
        e[i].data = bufs[i];
    }
    qlora_error err;
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    int ok = qlora_safetensors_write(p, e, 12, NULL, &err) == QLORA_OK;
    if (!ok) printf("# fixture: %s\n", err.detail);
    for (int i = 0; i < 12; i++) free(bufs[i]);
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    return ok && write_tiny_tokenizer(p);
}

static void test_end_to_end(void) {
    char root[512], model[600], data[600], out[600], mlruns[600], logp[600];
    snprintf(root, sizeof root, "%s/rad_eval_e2e", tu_tmpdir());
    cli_rm_rf(root);
    mkdir_p(root);
    snprintf(model, sizeof model, "%s/model", root);
    snprintf(data, sizeof data, "%s/split.jsonl", root);
    snprintf(out, sizeof out, "%s/out", root);
    snprintf(mlruns, sizeof mlruns, "%s/mlruns", root);
    snprintf(logp, sizeof logp, "%s/eval.log", root);
    if (!tu_check(write_tiny_model(model), "e2e: tiny random model fixture", "")) return;
    // a few lines of the real test split, each with the marker appended to its note
    FILE *in = fopen("data/test.jsonl", "r"), *f = fopen(data, "w");
    char line[8192];
    int n = 0, want = quick() ? 6 : 16;
    while (in && f && n < want && fgets(line, sizeof line, in)) {
        char *q = strstr(line, "\", \"label\"");
        if (!q) continue;
        fprintf(f, "%.*s %s%s", (int)(q - line), line, MARKER, q);
        n++;
    }
    if (in) fclose(in);
    if (f) fclose(f);
    const char *argv[] = {"eval", "--split", data, "--model", model, "--adapter", "none", "--out", out, "--mlflow",
                          mlruns, "--threads", "2", "--bootstrap", "100", "--quiet"};
    int argc = (int)(sizeof argv / sizeof argv[0]);
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2), lf = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    dup2(lf, 1);
    dup2(lf, 2);
    double t0 = cli_now();
    int rc = rad_eval_main(argc, (char **)argv);
    double dt = cli_now() - t0;
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    close(lf);
    if (!tu_check(rc == 0 && n > 0, "e2e: radiology eval on a tiny random model", "exit %d (log %s)", rc, logp)) return;
    printf("# e2e eval: %d notes in %.2f s\n", n, dt);
    char p[800];
    qlora_json_doc doc;
    qlora_error err;
    snprintf(p, sizeof p, "%s/metrics.json", out);
    if (tu_check(qlora_json_read_file(&doc, p, &err) == QLORA_OK, "e2e: metrics.json parses", "%s", err.detail)) {
        const qlora_json *r = &doc.root;
        double sem = qlora_json_get_number(r, "semantic_similarity", -2);
        tu_check(qlora_json_get_int(r, "n", -1) == n && qlora_json_get_int(r, "n_model", -1) == n && sem > -1.0001 &&
                     sem < 1.0001 && qlora_json_get(r, "safety_violations") != NULL,
                 "e2e: every note classified, semantic similarity from the model's embeddings", "n %lld sem %g",
                 (long long)qlora_json_get_int(r, "n", -1), sem);
        qlora_json_free(&doc);
    }
    int modes = 1;
    for (int i = 0; i < RAD_EVAL_NFILES; i++) {
        snprintf(p, sizeof p, "%s/%s", out, rad_eval_files[i]);
        modes &= file_mode(p) == 0600;
    }
    tu_check(modes, "e2e: outputs mode 0600", "");
    int files = 0;
    char where[1024] = "";
    int found = marker_in_tree(out, &files, where, sizeof where) || marker_in_tree(mlruns, &files, where, sizeof where) ||
                marker_in_tree(logp, &files, where, sizeof where);
    {   // the log is a file, not a folder: read it directly
        void *txt = NULL;
        size_t tl = 0;
        if (qlora_read_file(logp, &txt, &tl, NULL) == QLORA_OK && strstr((const char *)txt, MARKER)) {
            found = 1;
            snprintf(where, sizeof where, "%s", logp);
        }
        QLORA_FREE(txt);
    }
    tu_check(!found && files >= 10, "e2e: no note text in outputs, MLflow files or the console output",
             "found in %s (%d files)", where, files);
}

// --- 7. a perfect model on the committed splits ------------------------------------------------------------

// argmax = gold label, then the real safety check: the detector must find no violation on the generated splits
// (the generator, the rules and the detector agree). The hand-written dev set is reported, not checked: its
// notes are not made by the rules' author.
static void test_oracle(void) {
    static const char *const files[3] = {"data/test.jsonl", "data/val.jsonl", "data/dev_handwritten.jsonl"};
    for (int s = 0; s < 3; s++) {
        rad_eval_data d;
        qlora_error err;
        char name[160];
        snprintf(name, sizeof name, "perfect model + safety check: 0 violations, exact 1 on %s", files[s]);
        if (rad_eval_load(files[s], &d, &err) != QLORA_OK) {
            tu_skip(name, "%s", err.detail);
            continue;
        }
        rad_result *res = (rad_result *)calloc((size_t)d.n, sizeof(rad_result));
        for (int64_t i = 0; i < d.n; i++) {
            rad_result *r = &res[i];
            rad_decision dec;
            rad_extract(d.notes[i], d.lens[i], &r->facts);
            rad_safety_check_index(&r->facts, d.items[i].gold, &dec);
            r->model_label = d.items[i].gold;
            r->safety_label = r->label = dec.label;
            r->flags = dec.flags;
            r->confidence = 0.9;
            r->top[0] = d.items[i].gold;
            r->top[1] = r->top[2] = -1;
        }
        rad_eval_fill(d.items, res, d.n);
        rad_eval_metrics m;
        rad_eval_compute(d.items, d.n, NULL, 0, 0, 1, 0, 1, NULL, NULL, &m);
        char ids[512] = "";
        for (int64_t i = 0; i < d.n; i++)
            if (m.viol[i] || d.items[i].pred != d.items[i].gold) {
                size_t k = strlen(ids);
                snprintf(ids + k, sizeof ids - k, "%s%s", k ? " " : "", d.ids[i]);
            }
        if (s < 2)
            tu_check(m.violations == 0 && m.exact == 1.0, name, "%lld violations, exact %g: %s", (long long)m.violations,
                     m.exact, ids);
        else
            printf("# perfect model on %s: exact %.4f, %lld safety violations, %lld flag misses%s%s\n", files[s], m.exact,
                   (long long)m.violations,
                   (long long)(m.flag_gold[0] + m.flag_gold[1] + m.flag_gold[2] + m.flag_gold[3] + m.flag_gold[4]) -
                       (long long)(m.flag_recall[0] * m.flag_gold[0] + m.flag_recall[1] * m.flag_gold[1] +
                                   m.flag_recall[2] * m.flag_gold[2] + m.flag_recall[3] * m.flag_gold[3] +
                                   m.flag_recall[4] * m.flag_gold[4] + 0.5),
                   *ids ? "; ids: " : "", ids);
        rad_eval_metrics_free(&m);
        rad_eval_data_free(&d);
        free(res);
    }
}

int main(void) {
    mkdir_p(tu_tmpdir());
    test_small_cases();
    test_metrics_vs_numpy();
    test_safety();
    test_outputs();
    test_cli_args();
    test_oracle();
    test_end_to_end();
    return tu_finish();
}
