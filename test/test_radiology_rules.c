// test_radiology_rules.c - fact extraction and safety check of demo/radiology_rules.h, and the data of
// demo/radgen.c: minimal pairs, an exhaustive safety sweep (every label x every combination of contraindications),
// agreement of the generated gold with extraction + rules, template disjointness of the splits, byte-for-byte
// regeneration of the committed splits, and the hand-written dev set when present (SKIP when absent).
// Failures name ids, line numbers or pair numbers only, never note text.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "test_util.h"

#define RADGEN_NO_MAIN
#include "demo/radgen.c"

#include <time.h>

// ---------------------------------------------------------------------------------------------------------------
// Minimal pairs: the same note without and with one change; label checked, expected label and flags of each.

#define CR RAD_FLAG_CONTRAST_RISK
#define PG RAD_FLAG_PREGNANCY
#define MS RAD_FLAG_MRI_SAFETY
#define RU RAD_FLAG_RENAL_UNKNOWN
#define NI RAD_FLAG_NOT_INDICATED

typedef struct mpair {
    const char *a, *b;
    int in;
    int a_out; unsigned a_flags;
    int b_out; unsigned b_flags;
} mpair;

static const mpair pairs[] = {
    // renal function (G1): eGFR, creatinine in mg/dL and µmol/L, AKI, dialysis
    {"45M RLQ pain, ?appy.", "45M RLQ pain, ?appy. eGFR 25.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_STONE, CR},
    {"45M RLQ pain, ?appy. Cr 1.0", "45M RLQ pain, ?appy. Cr 2.4", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_STONE, CR},
    {"45M RLQ pain. creat 80 umol/L", "45M RLQ pain. creat 230 umol/L", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_STONE, CR},
    {"45M flank pain. GFR>60", "45M flank pain. GFR<30", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_STONE, CR},
    {"45M RLQ pain. no AKI, eGFR 80", "45M RLQ pain. AKI this admission", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_STONE, CR},
    {"45M RLQ pain. Cr 0.8", "45M RLQ pain. Cr 0.8 -> 1.6", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_STONE, CR},
    {"45M RLQ pain. ESRD on HD, anuric.", "45M RLQ pain. on HD, still makes urine.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0,
     RAD_CT_STONE, CR},
    {"50M lung mass, staging. EGFR mutation.", "50M lung mass, staging. eGFR 25.", RAD_CT_CHEST_IV, RAD_CT_CHEST_IV, 0,
     RAD_CT_CHEST, CR},
    {"45M acute SOB, HR 118, D-dimer 2.4, r/o PE.", "45M acute SOB, HR 118, D-dimer 2.4, r/o PE. eGFR 22.", RAD_CTA_PE,
     RAD_CTA_PE, 0, RAD_NM_VQ, CR},
    {"45M SOB, calf swelling, r/o PE.", "45M SOB, calf swelling, r/o PE. eGFR 22.", RAD_CTA_PE, RAD_CTA_PE, 0,
     RAD_US_DVT, CR},
    {"50M TIA, vessel imaging.", "50M TIA, vessel imaging. eGFR 20.", RAD_CTA_HEAD_NECK, RAD_CTA_HEAD_NECK, 0,
     RAD_MRA_HEAD, CR},
    {"55M code stroke, LKW 07:30, NIHSS 12.", "55M code stroke, LKW 07:30, NIHSS 12. eGFR 20.", RAD_CT_STROKE,
     RAD_CT_STROKE, 0, RAD_CT_STROKE, CR},
    {"45M lung cancer, new headaches, r/o mets.", "45M lung cancer, new headaches, r/o mets. eGFR 20.",
     RAD_MR_BRAIN_C, RAD_MR_BRAIN_C, 0, RAD_MR_BRAIN_C, CR},
    // renal risk factors without a value (G15) and metformin as a distractor (G14)
    {"45M RLQ pain, ?appy.", "45M RLQ pain, ?appy. DM2 on metformin.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_AP_IV, RU},
    {"45M RLQ pain. eGFR 80.", "45M RLQ pain. eGFR 80. On metformin.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_AP_IV, 0},
    // contrast reactions (G4) and distractors (G5)
    {"45M RLQ pain. no contrast allergy.", "45M RLQ pain. anaphylaxis to IV contrast.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0,
     RAD_CT_STONE, CR},
    {"45M RLQ pain. shellfish allergy.", "45M RLQ pain. hives after IV contrast.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0,
     RAD_CT_AP_IV, CR},
    {"45M RLQ pain. allergic to iodine (betadine rash).", "45M RLQ pain. allergic to IV contrast.", RAD_CT_AP_IV,
     RAD_CT_AP_IV, 0, RAD_CT_STONE, CR},
    {"45M RLQ pain. NKDA.", "45M RLQ pain. iodinated contrast: bronchospasm, intubated.", RAD_CT_AP_IV, RAD_CT_AP_IV,
     0, RAD_CT_STONE, CR},
    {"45M lung cancer, headaches, r/o mets.", "45M lung cancer, headaches, r/o mets. anaphylaxis to gadolinium.",
     RAD_MR_BRAIN_C, RAD_MR_BRAIN_C, 0, RAD_REVIEW, CR},
    {"45M lung cancer, headaches, r/o mets. NKDA.", "45M lung cancer, headaches, r/o mets. gadolinium allergy (hives).",
     RAD_MR_BRAIN_C, RAD_MR_BRAIN_C, 0, RAD_MR_BRAIN_C, CR},
    {"45M lung cancer, headaches, r/o mets.", "45M lung cancer, headaches, r/o mets. anaphylaxis to IV contrast.",
     RAD_MR_BRAIN_C, RAD_MR_BRAIN_C, 0, RAD_MR_BRAIN_C, 0},
    // pregnancy (G6) and its negations
    {"28F RLQ pain, ?appy. hCG neg.", "28F RLQ pain, ?appy. 10 wks pregnant.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0,
     RAD_US_RLQ, PG},
    {"28F RLQ pain, ?appy. denies pregnancy.", "28F RLQ pain, ?appy. beta-hCG positive.", RAD_CT_AP_IV, RAD_CT_AP_IV,
     0, RAD_US_RLQ, PG},
    {"28F RLQ pain, ?appy. not pregnant.", "28F RLQ pain, ?appy.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_AP_IV, PG},
    {"28F G2P1, RLQ pain.", "28F G2P1 IUP 10 wks, RLQ pain.", RAD_CT_AP_IV, RAD_CT_AP_IV, PG, RAD_US_RLQ, PG},
    {"31F G3P2, sudden SOB, r/o PE.", "31F G3P2 now 22 wks, sudden SOB, r/o PE.", RAD_CTA_PE, RAD_CTA_PE, 0,
     RAD_XR_CHEST, PG},
    {"33F G1P1 with RLQ pain.", "33F G1P0 @ 31/40 with RLQ pain.", RAD_CT_AP_IV, RAD_CT_AP_IV, PG, RAD_US_RLQ, PG},
    {"27F LLQ pain, CT A/P w contrast. hCG neg.", "27F LLQ pain, CT A/P w contrast. (no hCG on file)", RAD_CT_AP_IV,
     RAD_CT_AP_IV, 0, RAD_CT_AP_IV, PG},
    {"29F RLQ pain. urine hCG: negative.", "29F RLQ pain. +UPT today.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_US_RLQ, PG},
    // a list negator ("no prior ...") does not reach a pregnancy test after a comma
    {"26F RLQ pain. no prior reaction to IV contrast, beta-hCG negative.",
     "26F RLQ pain. no prior reaction to IV contrast, beta-hCG positive.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_US_RLQ, PG},
    {"28F pelvic pain. LMP 1 wk ago.", "28F pelvic pain. LMP 7 wks ago.", RAD_CT_AP_IV, RAD_CT_AP_IV, PG, RAD_US_OB, PG},
    {"45M RLQ pain, wife is pregnant.", "45F RLQ pain, pregnant.", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_US_RLQ, PG},
    {"30F acute SOB, r/o PE. hCG neg.", "30F acute SOB, r/o PE. 20 wks pregnant.", RAD_CTA_PE, RAD_CTA_PE, 0,
     RAD_XR_CHEST, PG},
    {"30F fell, hit head, GCS 14. hCG neg.", "30F fell, hit head, GCS 14. 12 wks pregnant.", RAD_CT_HEAD, RAD_CT_HEAD, 0,
     RAD_CT_HEAD, PG},
    {"30F hyperthyroidism, pre-RAI dosing. not breastfeeding.", "30F hyperthyroidism, pre-RAI dosing. breastfeeding.",
     RAD_NM_THYROID, RAD_NM_THYROID, PG, RAD_REVIEW, PG},
    // a radiotracer reaches a pregnancy wherever the field is: unknown status in a woman of 12-50 gets the flag
    {"42F RUQ pain, ?acalculous cholecystitis. hCG neg.", "42F RUQ pain, ?acalculous cholecystitis.", RAD_NM_HIDA,
     RAD_NM_HIDA, 0, RAD_NM_HIDA, PG},
    {"62F chest pain, stress test.", "38F chest pain, stress test.", RAD_NM_MPI, RAD_NM_MPI, 0, RAD_NM_MPI, PG},
    // implants (G8), removal and negation
    {"40M memory loss, dementia workup.", "40M memory loss, dementia workup. PPM.", RAD_MR_BRAIN, RAD_MR_BRAIN, 0,
     RAD_CT_HEAD, MS},
    {"40M memory loss. pacemaker removed 2018.", "40M memory loss. pacemaker in situ.", RAD_MR_BRAIN, RAD_MR_BRAIN, 0,
     RAD_CT_HEAD, MS},
    {"40M memory loss. no pacemaker.", "40M memory loss. MR conditional pacemaker.", RAD_MR_BRAIN, RAD_MR_BRAIN, 0,
     RAD_MR_BRAIN, MS},
    {"40M memory loss. ORIF L tibia.", "40M memory loss. metal in eye (welder).", RAD_MR_BRAIN, RAD_MR_BRAIN, 0,
     RAD_CT_HEAD, MS},
    {"40M memory loss. ORIF R wrist.", "40M memory loss. grinder, metal in R eye once.", RAD_MR_BRAIN, RAD_MR_BRAIN,
     0, RAD_CT_HEAD, MS},
    {"40M memory loss. ICD-10 G30.9.", "40M memory loss. ICD in situ.", RAD_MR_BRAIN, RAD_MR_BRAIN, 0, RAD_CT_HEAD, MS},
    {"40M memory loss. no h/o contrast reaction.", "40M memory loss. no h/o contrast reaction, AICD.", RAD_MR_BRAIN,
     RAD_MR_BRAIN, 0, RAD_CT_HEAD, MS},
    // a list negator does not reach a contrast reaction across a comma (found by radgen --check on seeds 2 and 4)
    {"45M RLQ pain, ?appy. denies pregnancy, no reaction to IV contrast.",
     "45M RLQ pain, ?appy. denies fever, IV contrast allergy (hives).", RAD_CT_AP_IV, RAD_CT_AP_IV, 0, RAD_CT_AP_IV,
     CR},
    {"50M lung mass, staging. no chest pain, no CT contrast reaction.",
     "50M lung mass, staging. denies chest pain, DBS, severe reaction to CT contrast (laryngeal edema).",
     RAD_CT_CHEST_IV, RAD_CT_CHEST_IV, 0, RAD_CT_CHEST, CR},
    // nor breastfeeding (radgen --check, seed 231); and an "ICD code" does not span a line break (seeds 46, 103, 139)
    {"30F hyperthyroidism, pre-RAI dosing. denies pregnancy, not breastfeeding.",
     "30F hyperthyroidism, pre-RAI dosing. denies pregnancy, breastfeeding.", RAD_NM_THYROID, RAD_NM_THYROID, 0,
     RAD_REVIEW, PG},
    {"40M memory loss.\nICD code G30.9\ncode status: full", "40M memory loss.\n4. has an ICD\ncode status: full",
     RAD_MR_BRAIN, RAD_MR_BRAIN, 0, RAD_CT_HEAD, MS},
    // a list negator stops at the comma before an MR-conditional qualifier; "not MR conditional" still negates it
    {"40M memory loss. no known contrast allergy, MRI conditional ICD.",
     "40M memory loss. no known contrast allergy, ICD not MRI conditional.", RAD_MR_BRAIN, RAD_MR_BRAIN, MS,
     RAD_CT_HEAD, MS},
    {"40M aneurysm screening. PPM.", "40M aneurysm screening. PPM. eGFR 20.", RAD_MRA_HEAD, RAD_CTA_HEAD_NECK, MS,
     RAD_REVIEW, MS | CR},
    {"40M knee locking, ?meniscal tear.", "40M knee locking, ?meniscal tear. cochlear implant.", RAD_MR_KNEE,
     RAD_MR_KNEE, 0, RAD_REVIEW, MS},
    // decision rules (G12) and the anticoagulant exception (G9)
    {"40M fell, hit head, Canadian CT head rule negative.", "40M fell, hit head, Canadian CT head rule negative. on apixaban.",
     RAD_CT_HEAD, RAD_REVIEW, NI, RAD_CT_HEAD, 0},
    {"40M neck pain after MVC, NEXUS negative.", "40M neck pain after MVC, NEXUS positive.", RAD_CT_CSPINE, RAD_REVIEW,
     NI, RAD_CT_CSPINE, 0},
    {"30M ankle sprain, Ottawa ankle rules negative.", "30M ankle sprain, Ottawa ankle rules positive.", RAD_XR_ANKLE,
     RAD_REVIEW, NI, RAD_XR_ANKLE, 0},
    {"30M knee twist, Ottawa knee rule negative.", "30M knee twist, Ottawa knee rule positive.", RAD_XR_KNEE, RAD_REVIEW,
     NI, RAD_XR_KNEE, 0},
    {"30M low back pain for 2 wks, no red flags.", "30M low back pain for 10 wks, no red flags.", RAD_MR_LSPINE,
     RAD_REVIEW, NI, RAD_MR_LSPINE, 0},
    {"30M pleuritic CP, Wells 1, D-dimer negative.", "30M pleuritic CP, Wells 1, D-dimer 2.1.", RAD_CTA_PE, RAD_REVIEW,
     NI, RAD_CTA_PE, 0},
    {"30M typical migraine, normal neuro exam.", "30M typical migraine, papilledema.", RAD_MR_BRAIN, RAD_REVIEW, NI,
     RAD_MR_BRAIN, 0},
    {"30M uncomplicated acute sinusitis.", "30M chronic sinusitis, pre-FESS.", RAD_CT_SINUS, RAD_REVIEW, NI,
     RAD_CT_SINUS, 0},
    // style variation: ALL CAPS and unit spelling do not change the facts
    {"45M RLQ PAIN. EGFR 25.", "45m rlq pain. egfr 25.", RAD_CT_AP_IV, RAD_CT_STONE, CR, RAD_CT_STONE, CR},
    {"45M RLQ pain. Cr 186 umol/L.", "45M RLQ pain. Cr 186 \xC2\xB5mol/L.", RAD_CT_AP_IV, RAD_CT_STONE, CR,
     RAD_CT_STONE, CR},
};
#define NPAIRS ((int)(sizeof pairs / sizeof pairs[0]))

static int run_one(const char *note, int in, int *out, unsigned *flags) {
    rad_facts f;
    rad_decision d;
    rad_extract(note, strlen(note), &f);
    rad_safety_check_index(&f, in, &d);
    *out = d.label;
    *flags = d.flags;
    return 0;
}

static void test_pairs(void) {
    int bad = 0, first = -1;
    for (int i = 0; i < NPAIRS; i++) {
        int la, lb;
        unsigned fa, fb;
        run_one(pairs[i].a, pairs[i].in, &la, &fa);
        run_one(pairs[i].b, pairs[i].in, &lb, &fb);
        int ok = la == pairs[i].a_out && fa == pairs[i].a_flags && lb == pairs[i].b_out && fb == pairs[i].b_flags;
        if (!ok) {
            bad++;
            if (first < 0) first = i;
            printf("# pair %d: a -> %d/%x (want %d/%x), b -> %d/%x (want %d/%x)\n", i, la, fa, pairs[i].a_out,
                   pairs[i].a_flags, lb, fb, pairs[i].b_out, pairs[i].b_flags);
        }
    }
    tu_check(NPAIRS >= 40 && bad == 0, "minimal_pairs", "%d of %d pairs wrong (first: pair %d)", bad, NPAIRS, first);
}

static int fact_stroke_window(const rad_facts *f) { return f->stroke_window; }
static int fact_head_strike(const rad_facts *f) { return f->head_strike; }

// How many of the n notes give fact(facts) == want.
static int count_facts(const char *const *notes, size_t n, int (*fact)(const rad_facts *), int want) {
    int hits = 0;
    for (size_t i = 0; i < n; i++) {
        rad_facts f;
        rad_extract(notes[i], strlen(notes[i]), &f);
        hits += fact(&f) == want;
    }
    return hits;
}
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

// Single facts, including the unit conversion and age/sex.
static void test_facts(void) {
    rad_facts f;
    const char *n1 = "67F, creat 186 umol/L, on apixaban";
    rad_extract(n1, strlen(n1), &f);
    int ok1 = f.age == 67 && f.sex == 'F' && fabsf(f.creat - 186.0f / 88.4f) < 1e-3f && f.anticoag;
    const char *n2 = "72 yo male, SCr 2.1 mg/dL, anuric on HD";
    rad_extract(n2, strlen(n2), &f);
    int ok2 = f.age == 72 && f.sex == 'M' && fabsf(f.creat - 2.1f) < 1e-4f && f.dialysis == RAD_DIALYSIS_ANURIC;
    const char *n3 = "Allergies: shellfish, iodine. No contrast allergy. Pacemaker removed 2018.";
    rad_extract(n3, strlen(n3), &f);
    int ok3 = f.reaction[0] == 0 && f.reaction[1] == 0 && f.implant == RAD_IMPLANT_NONE &&
              (f.distractors & RAD_DIS_IODINE_SHELLFISH) && (f.distractors & RAD_DIS_DEVICE_REMOVED);
    const char *n4 = "CKD stage IV, eGFR 45 -> 22";
    rad_extract(n4, strlen(n4), &f);
    int ok4 = f.ckd_stage == 4 && f.egfr == 22.0f;
    // a cue kind numbered 64 or more right after a device (here "aged"): found by fuzz_radiology_rules as a shift
    // by 64 (undefined behaviour; the asan phase's UBSan stops on it); the device stays unknown status
    const char *n5 = "pacemaker aged 76";
    rad_extract(n5, strlen(n5), &f);
    int ok5 = f.implant == RAD_IMPLANT_UNKNOWN && f.age == 76;
    // a digit run too long for an int in a duration (also found by the fuzzer: a signed overflow, which the asan
    // phase's UBSan stops on); the value saturates, so the pain reads as longer than six weeks and the low-back-pain
    // rule is not negative
    const char *n6 = "low back pain x 99999999999999 wks, no red flags";
    rad_extract(n6, strlen(n6), &f);
    int ok6 = !(f.rule_negative & RAD_RULE_LBP);
    tu_check(ok1 && ok2 && ok3 && ok4 && ok5 && ok6, "facts_single", "cases ok: %d %d %d %d %d %d", ok1, ok2, ok3, ok4,
             ok5, ok6);
    // acute stroke work-up (G11): a stroke code, or last known well / onset within 24 h or at a clock time
    static const char *const window_yes[] = {"66M code stroke, R arm weakness", "LKW 1 hr ago, aphasia",
                                             "LKW 45 min, L hemiparesis", "last known well 07:15, facial droop",
                                             "symptom onset 0730, dysarthria", "Stroke alert 14:02, NIHSS 9",
                                             "LKW @ 2h, R neglect", "Wake-up stroke, L gaze preference, NIHSS 16",
                                             "R MCA syndrome, LVO on OSH CTA, transfer", "?thrombectomy candidate",
                                             "aphasia since 09:10, tPA candidate per neuro",
                                             "sudden aphasia, onset witnessed 09:47 at church"};
    static const char *const window_no[] = {"no stroke alert called, dizzy", "LKW 3 days ago, now stable",
                                            "TIA last week, symptoms resolved", "h/o stroke 2019, new headache",
                                            "LKW unknown, found down 2 days",
                                            "not a thrombectomy candidate, deficits since last week",
                                            "sudden onset of L leg weakness 3 weeks ago, onset 3 weeks ago"};
    int wy = count_facts(window_yes, ARRAY_LEN(window_yes), fact_stroke_window, 1);
    int wn = count_facts(window_no, ARRAY_LEN(window_no), fact_stroke_window, 0);
    tu_check(wy == 12 && wn == 7, "facts_stroke_window", "%d of 12 windows read, %d of 7 non-windows", wy, wn);
    // a head strike (G9 with an anticoagulant): a hit verb with the head later in its clause, or a head-injury
    // phrase; not negated, not another body part, not a headache
    static const char *const strike_yes[] = {
        "found on floor, states he hit the back of his head on the nightstand", "mechanical fall with head strike",
        "fell and struck occiput on tile floor", "bumped her head on a cabinet door", "scalp hematoma after fall",
        "head injury at 14:00, GCS 15", "slipped on ice, hitting head, brief LOC"};
    static const char *const strike_no[] = {
        "fell onto R hip, no head strike", "denies hitting head, L wrist deformity", "struck by car, L leg deformity",
        "headache x3 days, no trauma", "fall, did not hit head, R hip pain", "hit R knee on dashboard"};
    int hy = count_facts(strike_yes, ARRAY_LEN(strike_yes), fact_head_strike, 1);
    int hn = count_facts(strike_no, ARRAY_LEN(strike_no), fact_head_strike, 0);
    tu_check(hy == 7 && hn == 6, "facts_head_strike", "%d of 7 head strikes read, %d of 6 non-strikes", hy, hn);
    // "clipped <words> aneurysm" is an aneurysm clip; "clipped" elsewhere is nothing
    const char *c1 = "Small cell lung ca, staging. PMH: clipped R MCA aneurysm 1996 (clip type unknown). eGFR 70.";
    rad_extract(c1, strlen(c1), &f);
    int clip1 = f.implant != RAD_IMPLANT_NONE && (f.implant_kinds & RAD_DEV_CLIP);
    const char *c2 = "Toenails clipped by podiatry, R foot ulcer, ?osteomyelitis.";
    rad_extract(c2, strlen(c2), &f);
    int clip2 = f.implant == RAD_IMPLANT_NONE && f.implant_kinds == 0;
    const char *c3 = "LBP with radiculopathy, MRI L spine. Has 'some kind of stimulator in my back', no paperwork.";
    rad_extract(c3, strlen(c3), &f);
    clip2 = clip2 && f.implant != RAD_IMPLANT_NONE && (f.implant_kinds & RAD_DEV_NEURO);
    tu_check(clip1 && clip2, "facts_implant_phrasings",
             "clipped aneurysm read %d; other clipping ignored and a bare stimulator read %d", clip1, clip2);
    // Cr without eGFR: the CKD-EPI rule (90-year-old woman, Cr 1.7 -> eGFR < 30) and the 2.0 mg/dL rule
    rad_facts_clear(&f);
    f.age = 90; f.sex = 'F'; f.creat = 1.7f;
    int r1 = rad_renal_high_risk(&f, RAD_AGENT_IODINATED);
    f.age = -1; f.sex = 0; f.creat = 2.0f;
    int r2 = rad_renal_high_risk(&f, RAD_AGENT_IODINATED);
    f.creat = 1.9f;
    int r3 = rad_renal_high_risk(&f, RAD_AGENT_IODINATED);
    tu_check(r1 && r2 && !r3, "facts_creatinine_rule", "%d %d %d", r1, r2, r3);
}

// ---------------------------------------------------------------------------------------------------------------
// Exhaustive safety sweep: every label x every combination of contraindicating facts. The output must be REVIEW
// or a label that the facts do not contraindicate, with the flag of every contraindication that applies to it;
// and it must be a fixed point of the check. Judged from the label properties, not the alternatives table.

static int violates(const rad_facts *f, int x, unsigned flags, char *why, size_t n) {
    if (x == RAD_REVIEW) return 0;
    const rad_label_info *L = rad_label(x);
    int ren_i = rad_renal_high_risk(f, RAD_AGENT_IODINATED), ren_g = rad_renal_high_risk(f, RAD_AGENT_GADOLINIUM);
    if (L->mri && (f->implant == RAD_IMPLANT_UNKNOWN || f->implant == RAD_IMPLANT_UNSAFE)) {
        snprintf(why, n, "MRI with unsafe implant");
        return 1;
    }
    if (L->mri && f->implant == RAD_IMPLANT_CONDITIONAL && !(flags & MS)) { snprintf(why, n, "no mri_safety"); return 1; }
    if (L->agent == RAD_AGENT_IODINATED && f->reaction[RAD_CLASS_IOD] >= RAD_REACT_UNKNOWN) {
        snprintf(why, n, "iodinated after severe reaction");
        return 1;
    }
    if (L->agent == RAD_AGENT_IODINATED && f->reaction[RAD_CLASS_IOD] == RAD_REACT_MILD && !(flags & CR)) {
        snprintf(why, n, "mild iodinated reaction without flag");
        return 1;
    }
    if (L->agent == RAD_AGENT_IODINATED && ren_i && (x != RAD_CT_STROKE || !(flags & CR))) {
        snprintf(why, n, "iodinated with renal risk");
        return 1;
    }
    if (L->agent == RAD_AGENT_GADOLINIUM && f->reaction[RAD_CLASS_GAD] >= RAD_REACT_UNKNOWN) {
        snprintf(why, n, "gadolinium after severe reaction");
        return 1;
    }
    if (L->agent == RAD_AGENT_GADOLINIUM && (ren_g || f->reaction[RAD_CLASS_GAD]) && !(flags & CR)) {
        snprintf(why, n, "gadolinium risk without flag");
        return 1;
    }
    if (f->pregnant > 0 && (L->ionising || L->agent == RAD_AGENT_GADOLINIUM) && !(flags & PG)) {
        snprintf(why, n, "ionising/gadolinium in pregnancy without flag");
        return 1;
    }
    if (f->pregnant > 0 && L->agent == RAD_AGENT_GADOLINIUM) { snprintf(why, n, "gadolinium in pregnancy"); return 1; }
    if (x == RAD_NM_THYROID && (f->pregnant > 0 || f->breastfeeding)) { snprintf(why, n, "NM thyroid"); return 1; }
    if (f->rule_negative & L->rule) {
        unsigned r = f->rule_negative & L->rule;
        if (f->anticoag) r &= ~(unsigned)RAD_RULE_HEAD;
        if (r) { snprintf(why, n, "decision rule negative"); return 1; }
    }
    return 0;
}

static void test_safety_sweep(void) {
    // toggles: 0 pregnant, 1-2 implant (unknown/unsafe/conditional), 3-4 iodinated reaction (mild/unknown/severe),
    // 5-6 renal (eGFR 20 / AKI / anuric dialysis), 7-8 gadolinium reaction, 9 breastfeeding, 10 anticoag,
    // 11 every decision rule negative, 12 context leg + RLQ
    long checks = 0, bad = 0;
    int first_label = -1, first_combo = -1;
    char first_why[64] = "";
    for (int combo = 0; combo < (1 << 13); combo++) {
        rad_facts f;
        rad_facts_clear(&f);
        f.age = 35;
        f.sex = 'F';
        if (combo & 1) f.pregnant = 1;
        f.implant = (unsigned char)((combo >> 1) & 3);
        f.reaction[RAD_CLASS_IOD] = (unsigned char)((combo >> 3) & 3);
        switch ((combo >> 5) & 3) {
        case 1: f.egfr = 20.0f; break;
        case 2: f.aki = 1; break;
        case 3: f.dialysis = RAD_DIALYSIS_ANURIC; f.ckd_stage = 5; break;
        default: break;
        }
        f.reaction[RAD_CLASS_GAD] = (unsigned char)((combo >> 7) & 3);
        if (combo >> 9 & 1) f.breastfeeding = 1;
        if (combo >> 10 & 1) f.anticoag = 1;
        if (combo >> 11 & 1) f.rule_negative = 0xFFu;
        if (combo >> 12 & 1) f.context = RAD_CTX_LEG | RAD_CTX_RLQ;
        for (int in = 0; in < RAD_NUM_LABELS; in++) {
            rad_decision d, e;
            char why[64] = "";
            rad_safety_check_index(&f, in, &d);
            rad_safety_check_index(&f, d.label, &e);
            int v = violates(&f, d.label, d.flags, why, sizeof why);
            if (!v && (e.label != d.label || e.flags != d.flags)) { v = 1; snprintf(why, sizeof why, "not a fixed point"); }
            if (!v && d.label != in && d.reasons == 0 && !f.incomplete) { v = 1; snprintf(why, sizeof why, "switch without reason"); }
            if (!v && d.label != in && !d.flags) { v = 1; snprintf(why, sizeof why, "switch without flag"); }
            checks++;
            if (v) {
                if (!bad) { first_label = in; first_combo = combo; snprintf(first_why, sizeof first_why, "%s", why); }
                bad++;
            }
        }
    }
    tu_check(bad == 0, "safety_sweep_exhaustive", "%ld of %ld label x fact combinations unsafe; first label %d combo %d: %s",
             bad, checks, first_label, first_combo, first_why);
    // labels outside the catalogue become REVIEW
    rad_facts f;
    rad_decision d;
    rad_facts_clear(&f);
    int rc = rad_safety_check(&f, "MR arthrogram shoulder", &d);
    int rc2 = rad_safety_check(&f, "  ct HEAD without contrast ", &d);
    tu_check(rc == -1 && rc2 == 0 && d.label == RAD_CT_HEAD, "safety_unknown_label", "rc %d rc2 %d", rc, rc2);
}

// ---------------------------------------------------------------------------------------------------------------
// JSONL reading (the fields of our schema only)

static char *read_file(const char *path, size_t *len) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    char *b = (char *)malloc((size_t)n + 1);
    if (!b) { fclose(fp); return NULL; }
    size_t got = fread(b, 1, (size_t)n, fp);
    fclose(fp);
    b[got] = 0;
    *len = got;
    return b;
}

// Parses the JSON string at p (p at the opening quote) into out (UTF-8). Returns the position after it, or NULL.
static const char *json_parse_str(const char *p, char *out, size_t cap) {
    size_t k = 0;
    if (*p != '"') return NULL;
    for (p++; *p && *p != '"'; p++) {
        unsigned c = (unsigned char)*p;
        if (c == '\\') {
            p++;
            switch (*p) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned v = 0;
                for (int i = 1; i <= 4; i++) {
                    char h = p[i];
                    v = v * 16 + (unsigned)(h >= '0' && h <= '9' ? h - '0' : (h | 32) - 'a' + 10);
                }
                p += 4;
                if (v < 0x80) c = v;
                else {
                    if (k + 3 < cap) {
                        if (v < 0x800) { out[k++] = (char)(0xC0 | (v >> 6)); }
                        else { out[k++] = (char)(0xE0 | (v >> 12)); out[k++] = (char)(0x80 | ((v >> 6) & 63)); }
                        out[k++] = (char)(0x80 | (v & 63));
                    }
                    continue;
                }
                break;
            }
            default: c = (unsigned char)*p; break;
            }
        }
        if (k + 1 < cap) out[k++] = (char)c;
    }
    out[k] = 0;
    return *p == '"' ? p + 1 : NULL;
}

// Finds "key": in the line and parses its string value. Returns 1 if found.
static int json_get(const char *line, const char *key, char *out, size_t cap) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\"", key);
    const char *p = strstr(line, pat);
    if (!p) return 0;
    p += strlen(pat);
    while (*p == ' ' || *p == ':') p++;
    return json_parse_str(p, out, cap) != NULL;
}

// Flags array of the line as RAD_FLAG_* bits; -1 if missing or an unknown flag.
static int json_flags(const char *line) {
    const char *p = strstr(line, "\"flags\"");
    if (!p) return -1;
    p = strchr(p, '[');
    if (!p) return -1;
    unsigned m = 0;
    p++;
    for (;;) {
        while (*p == ' ' || *p == ',') p++;
        if (*p == ']') return (int)m;
        char name[64];
        p = json_parse_str(p, name, sizeof name);
        if (!p) return -1;
        unsigned fl = rad_flag_from_name(name, strlen(name));
        if (!fl) return -1;
        m |= fl;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Generated splits and the dev set

typedef struct split_stats { int n, bad_parse, agree, label_kept; char templates[ST_COUNT + 2][64]; int ntemplates; } split_stats;

static void read_split(const char *path, split_stats *st, int check_template, int verbose) {
    size_t len;
    char *buf = read_file(path, &len);
    memset(st, 0, sizeof *st);
    if (!buf) { st->bad_parse = -1; return; }
    static char note[8192], label[256], tmpl[64];
    int line_no = 0, shown = 0;
    for (char *line = buf; line && *line; ) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        line_no++;
        if (*line) {
            int fl = json_flags(line);
            char id[64] = "?";
            json_get(line, "id", id, sizeof id);
            if (!json_get(line, "note", note, sizeof note) || !json_get(line, "label", label, sizeof label) || fl < 0 ||
                rad_label_index(label) < 0) {
                st->bad_parse++;
                if (verbose && shown++ < 10) printf("# %s line %d: cannot parse\n", path, line_no);
            } else {
                rad_facts f;
                rad_decision d;
                int gold = rad_label_index(label);
                rad_extract(note, strlen(note), &f);
                rad_safety_check_index(&f, gold, &d);
                st->n++;
                if (d.label == gold) st->label_kept++;
                if (d.label == gold && d.flags == (unsigned)fl) st->agree++;
                else if (verbose && shown++ < 20)
                    printf("# %s id %s: gold %d/%x, extracted+rules %d/%x\n", path, id, gold, (unsigned)fl, d.label,
                           d.flags);
            }
            if (check_template && json_get(line, "template", tmpl, sizeof tmpl)) {
                int seen = 0;
                for (int k = 0; k < st->ntemplates; k++) if (!strcmp(st->templates[k], tmpl)) seen = 1;
                if (!seen && st->ntemplates < ST_COUNT + 2) snprintf(st->templates[st->ntemplates++], 64, "%s", tmpl);
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
}

static void test_generated(void) {
    static const char *const names[3] = {"data/train.jsonl", "data/val.jsonl", "data/test.jsonl"};
    split_stats st[3];
    for (int k = 0; k < 3; k++) read_split(names[k], &st[k], 1, k == 2);
    if (st[0].bad_parse < 0 || st[1].bad_parse < 0 || st[2].bad_parse < 0) {
        tu_check(0, "generated_splits_present", "data/train.jsonl, val.jsonl or test.jsonl missing");
        return;
    }
    printf("# generated: train %d, val %d, test %d notes; test split extraction+rules agree %d/%d\n", st[0].n, st[1].n,
           st[2].n, st[2].agree, st[2].n);
    tu_check(st[0].n == 3000 && st[1].n == 400 && st[2].n == 600 && !st[0].bad_parse && !st[1].bad_parse &&
                 !st[2].bad_parse,
             "generated_splits_parse", "counts %d %d %d, unparsable lines %d %d %d", st[0].n, st[1].n, st[2].n,
             st[0].bad_parse, st[1].bad_parse, st[2].bad_parse);
    tu_check(st[2].agree == st[2].n, "generated_test_gold_equals_extraction", "%d of %d agree", st[2].agree, st[2].n);
    tu_check(st[0].agree == st[0].n && st[1].agree == st[1].n, "generated_train_val_gold_equals_extraction",
             "train %d/%d, val %d/%d", st[0].agree, st[0].n, st[1].agree, st[1].n);
    int overlap = 0;
    for (int a = 0; a < 3; a++)
        for (int b = a + 1; b < 3; b++)
            for (int i = 0; i < st[a].ntemplates; i++)
                for (int j = 0; j < st[b].ntemplates; j++)
                    if (!strcmp(st[a].templates[i], st[b].templates[j])) overlap++;
    tu_check(overlap == 0 && st[0].ntemplates > 0 && st[2].ntemplates > 0, "template_disjoint_splits",
             "%d templates shared between splits", overlap);
    // the seed example is in test, with its label
    size_t len;
    char *buf = read_file("data/test.jsonl", &len);
    int seed_ok = buf && strstr(buf, "\"note\": \"67F, 3 d after liver biopsy, on apixaban, Hgb drop, ?bleed\", "
                                     "\"label\": \"CT abdomen pelvis with IV contrast\"") != NULL;
    free(buf);
    tu_check(seed_ok, "seed_example_in_test", "test-seed record missing or relabelled");
}

// Every label at least 25 times in train.
static void test_coverage(void) {
    size_t len;
    char *buf = read_file("data/train.jsonl", &len);
    int count[RAD_NUM_LABELS];
    memset(count, 0, sizeof count);
    if (!buf) { tu_check(0, "train_label_coverage", "data/train.jsonl missing"); return; }
    static char label[256];
    for (char *line = buf; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        if (json_get(line, "label", label, sizeof label)) {
            int l = rad_label_index(label);
            if (l >= 0) count[l]++;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(buf);
    int worst = 0;
    for (int l = 1; l < RAD_NUM_LABELS; l++) if (count[l] < count[worst]) worst = l;
    tu_check(count[worst] >= 25, "train_label_coverage", "label %d has %d notes", worst, count[worst]);
}

// Regenerate with the documented command's seed and compare byte for byte.
typedef struct mem_sink { FILE *fp[4]; } mem_sink;
static void to_tmp(void *ctx, const char *split, const rg_rec *rc) {
    mem_sink *s = (mem_sink *)ctx;
    int k = !strcmp(split, "train") ? 0 : !strcmp(split, "val") ? 1 : !strcmp(split, "test") ? 2 : 3;
    write_record(s->fp[k], rc, k < 3);
}

static void test_regeneration(void) {
    static const char *const names[4] = {"train.jsonl", "val.jsonl", "test.jsonl", "sample_orders.jsonl"};
    char tmp[4][600], ref[4][64];
    mem_sink s;
    for (int k = 0; k < 4; k++) {
        snprintf(tmp[k], sizeof tmp[k], "%s", tu_path(names[k]));
        snprintf(ref[k], sizeof ref[k], "data/%s", names[k]);
        s.fp[k] = fopen(tmp[k], "wb");
        if (!s.fp[k]) { tu_check(0, "regenerate_bytes", "cannot write %s", tmp[k]); return; }
    }
    int badwords = generate(7, to_tmp, &s);
    for (int k = 0; k < 4; k++) fclose(s.fp[k]);
    int same = 1, which = -1;
    for (int k = 0; k < 4 && same; k++) {
        size_t la, lb;
        char *a = read_file(tmp[k], &la), *b = read_file(ref[k], &lb);
        if (!a || !b || la != lb || memcmp(a, b, la) != 0) { same = 0; which = k; }
        free(a);
        free(b);
    }
    tu_check(same, "regenerate_bytes", "build/radgen --seed 7 --out data/ differs from the committed %s",
             which >= 0 ? names[which] : "?");
    tu_check(badwords == 0, "generated_word_counts", "%d notes outside 8..150 words", badwords);
    // --train N: train.jsonl gets N notes; val, test and the sample orders stay byte for byte
    rg_train_override = 500;
    for (int k = 0; k < 4; k++) s.fp[k] = fopen(tmp[k], "wb");
    if (s.fp[0] && s.fp[1] && s.fp[2] && s.fp[3]) generate(7, to_tmp, &s);
    rg_train_override = 0;
    int lines = 0;
    for (int k = 0; k < 4; k++) if (s.fp[k]) fclose(s.fp[k]);
    same = 1;
    for (int k = 0; k < 4; k++) {
        size_t la, lb;
        char *a = read_file(tmp[k], &la), *b = read_file(ref[k], &lb);
        if (k == 0)
            for (size_t i = 0; a && i < la; i++) lines += a[i] == '\n';
        else if (!a || !b || la != lb || memcmp(a, b, la) != 0) same = 0;
        free(a);
        free(b);
    }
    tu_check(same && lines == 500, "radgen_train_count", "train lines %d (want 500), other splits same %d", lines, same);
}

// The pretraining corpus of the shipped base model (data/base/pretrain.json: `radgen --corpus 64000 --seed 1`,
// 12153479 bytes) must come out byte for byte, or tools/make_base_model.sh no longer reproduces data/base. The
// extractor's cue table feeds the generator's typo mask (rad_cue_mask), so a new cue can move a typo: this pins
// the corpus by its length and its 64-bit FNV-1a hash (0xd21e383418adab0c, computed from the corpus the shipped
// model was pretrained on).
static void test_corpus_bytes(void) {
    const char *path = tu_path("corpus.txt");
    FILE *fp = fopen(path, "wb");
    if (!fp) { tu_check(0, "corpus_bytes", "cannot write %s", path); return; }
    corpus(fp, 1, 64000, 0);
    fclose(fp);
    size_t len = 0;
    char *text = read_file(path, &len);
    const int read = text != NULL;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; read && i < len; i++) h = (h ^ (unsigned char)text[i]) * 0x100000001b3ull;
    free(text);
    tu_check(read && len == 12153479 && h == 0xd21e383418adab0cull, "corpus_bytes",
             "radgen --corpus 64000 --seed 1: %zu bytes (want 12153479), FNV-1a %016llx (want d21e383418adab0c)", len,
             (unsigned long long)h);
}

// The generator's gold against extraction + rules on other seeds than the committed one: other notes, other
// orders of the facts (seeds 2 and 4 once found a list negator that reached a contrast reaction across commas;
// seeds 46-291 an "ICD code" across a line break and a negated breastfeeding: `radgen --check` agrees on 1-400).
static void test_other_seeds(void) {
    const int nseeds = getenv("QLORA_TEST_QUICK") ? 4 : 9;
    int bad = 0, n = 0, first = 0;
    for (int seed = 1; seed <= nseeds; seed++) {
        check_sink c;
        memset(&c, 0, sizeof c);
        generate((unsigned long long)seed, to_check, &c);   // disagreements are listed on stderr, by id
        if (c.bad && !first) first = seed;
        bad += c.bad;
        n += c.n;
    }
    tu_check(bad == 0 && n > 0, "generated_gold_equals_extraction_other_seeds",
             "%d of %d notes disagree (first on seed %d)", bad, n, first);
}

static void test_dev(void) {
    FILE *fp = fopen("data/dev_handwritten.jsonl", "rb");
    if (!fp) { tu_skip("dev_handwritten_agreement", "data/dev_handwritten.jsonl not present"); return; }
    fclose(fp);
    split_stats st;
    read_split("data/dev_handwritten.jsonl", &st, 0, 1);
    printf("# dev_handwritten: %d notes, %d unparsable; label kept by the check %d/%d (%.1f%%), label+flags agree "
           "%d/%d (%.1f%%)\n",
           st.n, st.bad_parse, st.label_kept, st.n, st.n ? 100.0 * st.label_kept / st.n : 0.0, st.agree, st.n,
           st.n ? 100.0 * st.agree / st.n : 0.0);
    // informational agreement; the hard requirement is that the file parses with catalogue labels and flags
    tu_check(st.bad_parse == 0 && st.n >= 120, "dev_handwritten_parses", "%d notes, %d unparsable lines", st.n,
             st.bad_parse);
}

// Speed: extraction + check per note on the test split.
static void test_speed(void) {
    size_t len;
    char *buf = read_file("data/test.jsonl", &len);
    if (!buf) return;
    static char note[8192];
    int n = 0;
    clock_t t0 = clock();
    for (int rep = 0; rep < 5; rep++)
        for (char *line = buf; line && *line;) {
            char *nl = strchr(line, '\n');
            if (json_get(line, "note", note, sizeof note)) {
                rad_facts f;
                rad_decision d;
                rad_extract(note, strlen(note), &f);
                rad_safety_check_index(&f, RAD_CT_AP_IV, &d);
                n++;
            }
            line = nl ? nl + 1 : NULL;
        }
    double us = 1e6 * (double)(clock() - t0) / CLOCKS_PER_SEC / (n ? n : 1);
    free(buf);
    printf("# extraction + check: %.1f us per note (incl. JSON parse), %d notes\n", us, n);
    tu_check(us < 500.0, "speed_per_note", "%.1f us per note", us);
}

int main(void) {
    test_facts();
    test_pairs();
    test_safety_sweep();
    test_generated();
    test_coverage();
    test_regeneration();
    test_corpus_bytes();
    test_other_seeds();
    test_dev();
    test_speed();
    return tu_finish();
}
