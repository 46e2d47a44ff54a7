// radiology_rules.h - facts from a radiology order note, and the deterministic safety check that runs on every
// protocol label the model predicts. Single header, stb style, C99 (also compiles as C++). MIT licence (LICENSE).
//
//     #define RAD_RULES_IMPLEMENTATION      // in exactly one .c file, before the include
//     #include "radiology_rules.h"
//
// TABLE OF CONTENTS
//     1. quick start
//     2. what is extracted (rad_facts) and the decisions taken on ambiguous wording
//     3. the safety check: contraindications, alternatives, flags
//     4. options, errors, thread safety, speed
//     5. public API
//     6. implementation: label table, cue table, scanner, extraction, check
//
// 1. QUICK START
//     rad_facts f;  rad_decision d;
//     rad_extract(note, strlen(note), &f);                      // facts from the free text
//     rad_safety_check(&f, model_label, &d);                    // d.name: label to use, d.flags: RAD_FLAG_*
//     for (int k = 0; k < RAD_NUM_FLAGS; k++) if (d.flags >> k & 1) use(rad_flag_name(1u << k));
//
// 2. FACTS (rad_facts). Matching is ASCII case-insensitive, on word boundaries, and a cue is skipped when a
//    negation governs it ("no", "not", "denies", "without", "negative for" ... before it, in the same clause and,
//    except for list negators such as "denies", before the next comma; "neg", "negative", "removed", "resolved",
//    "none" right after it). List negators never cross a comma for facts that add risk (implants and their
//    MR-conditional qualifier, contrast reactions, dialysis, AKI, CKD, anticoagulants, pregnancy and pregnancy tests,
//    renal risk factors): "no h/o contrast reaction, AICD" keeps the AICD, "no prior reaction to contrast, hCG
//    positive" the positive test and "denies fever, IV contrast allergy (hives)" the reaction, since a wrong
//    negation would hide a contraindication (a missed one costs a flag). "->" between numbers is an arrow, not
//    "greater than".
//    Decisions on ambiguous wording:
//    - eGFR: "eGFR 28", "GFR<30" (stored as 29.9), "eGFR >60" (61), "CrCl 25" (used as eGFR). The last value
//      written wins ("eGFR 45 -> 22" gives 22). "EGFR mutation" has no number after it and is ignored.
//    - Creatinine: "Cr 2.1", "creat 186 umol/L", "SCr 1.4 mg/dL". Values with a µmol/L unit, or without a unit
//      and above 20, are µmol/L and are divided by 88.4. A series "Cr 1.0 -> 2.3" / "Cr up from 0.9 to 1.8"
//      keeps the last value and sets aki when it rose by >= 0.3 mg/dL or to >= 1.5x (KDIGO).
//    - Creatinine without eGFR (decision): renal risk is high when Cr >= 2.0 mg/dL (>= 177 µmol/L), or when
//      age and sex are known and the race-free CKD-EPI 2021 equation gives eGFR < 30. Both sides are on purpose
//      conservative: a 90-year-old woman with Cr 1.7 is already below 30.
//    - AKI: "AKI", "acute kidney injury", "rising creatinine", a rising Cr series. Dialysis: "HD", "dialysis",
//      "PD"-free wording only ("peritoneal dialysis", "CAPD"); "anuric"/"no urine output" = anuric, "still
//      makes urine"/"non-anuric"/unstated = residual function (still high risk for iodinated contrast, G2).
//      "CKD 4", "CKD stage IV", "ESRD" set ckd_stage; CKD without stage (or stage 1-3) is a risk factor only.
//    - Prior contrast reaction: a contrast word ("IV contrast", "iodinated", "CT dye", "gadolinium", "MRI
//      contrast", brand names) and a reaction word in the same list item, with no other allergen between them,
//      or a contrast word inside an "Allergies:" list. Unspecified "contrast"/"dye" is iodinated. Severity:
//      hives/itching/rash/urticaria/flushing = mild; anaphylaxis, bronchospasm, wheeze, hypotension, laryngeal
//      oedema, throat swelling, stridor, angioedema, intubation, epinephrine = severe; a reaction with no
//      wording of its kind = unknown, which the check treats like severe. "Needs premedication" alone = mild.
//      Shellfish, "iodine", betadine/povidone "allergy" is NOT a contrast reaction (G5): only recorded as a
//      distractor.
//    - Pregnancy: +1 for "pregnant", "IUP", "x wks gestation", "trimester", "gravid", a positive or numeric
//      (> 5) hCG, or "LMP n weeks ago" with n >= 5 (possible pregnancy, unless a negative test is stated);
//      -1 for "hCG neg", "not pregnant", "denies pregnancy", "postmenopausal", "s/p hysterectomy". A positive
//      statement beats a negative one. G/P notation alone ("G2P1") is obstetric history, not pregnancy; G/P with
//      a gestational age after it ("G1P0 at 29 wks", "G2P1 18/40") is a current pregnancy.
//      Always 0 for a male patient.
//    - Implants: PPM/pacemaker/AICD/ICD/CIED/DBS/neurostimulator/any "stimulator"/cochlear implant/aneurysm clip
//      -> status
//      unknown unless "MR conditional"/"MRI compatible" (conditional) or "not MR conditional"/"legacy"/"MR
//      unsafe" (unsafe) is written next to it; metal in the eye / orbital foreign body, abandoned or epicardial
//      leads, ferromagnetic clips = unsafe. "removed", "explanted", "s/p removal of", "no pacemaker" = none.
//      "ICD-10" and "ICD code" are diagnosis codes, not devices. ORIF, joint replacements, stents: ignored.
//    - Renal risk factors (G15): DM/diabetes/insulin, HTN, metformin, single kidney/nephrectomy, renal
//      transplant, CKD without a stage; age > 60 counts as well (taken from age).
//    - Decision rules negative (G12): NEXUS / Canadian C-spine rule negative (c-spine), Canadian CT head rule /
//      PECARN negative (head; ignored for the anticoagulated, G9), Ottawa ankle / knee negative, PERC negative
//      or low pre-test probability (Wells <= 4, "low probability") with a negative D-dimer (PE), back pain
//      "no red flags" lasting < 6 weeks (the duration in the back-pain sentence) (LBP), migraine/tension headache with a normal neuro exam and no
//      trauma or red flag (headache), "uncomplicated" acute sinusitis (sinus).
//    - Context for the alternatives: RLQ/appendicitis, RUQ/biliary, flank/renal colic, pelvic pain, leg
//      swelling/calf pain/DVT.
//
// 3. THE SAFETY CHECK. rad_safety_check(facts, label) returns the label to use and flags. It never lets a
//    label through silently that the facts contraindicate (rules G1, G4, G6, G8 of the domain notes); it
//    switches to the documented alternative (the table in section 6, one column per contraindication) or to
//    REVIEW. The contraindications, applied in this order, each re-checked on the new label:
//      not indicated  a decision rule is negative for the label's question -> REVIEW              (G12)
//      pregnancy      pregnant (for NM thyroid also breastfeeding)                                (G6)
//      mri_unsafe     implant with unknown or non-conditional MR status, MRI/MRA label            (G8)
//      iod_reaction   prior moderate/severe (or unknown severity) reaction to iodinated contrast  (G4)
//      renal          eGFR < 30, AKI, CKD 4-5, non-anuric dialysis, or the creatinine rule above  (G1, G2)
//      gad_reaction   prior moderate/severe (or unknown severity) reaction to gadolinium          (G4)
//    A label that would be reached twice (MRA -> CTA -> MRA) becomes REVIEW. Kept with a flag, not switched:
//    gadolinium with eGFR < 30/dialysis/AKI (group II agent, G3); a mild prior reaction to the same class
//    (premedication, G4); an MR-conditional implant; ionising exams in pregnancy that have no catalogue
//    alternative (trauma CT, chest XR); the code-stroke CT with known renal failure (time-critical; G1 allows
//    "contrast label with flag").
//
//    Flags (RAD_FLAG_*) are a function of the facts and of the FINAL label only, so that a model that already
//    predicted the safe label gets the same flags as one that was switched:
//      contrast_risk         renal risk or a prior reaction, and the label uses that agent, or the label is
//                            where that contraindication sends some label (V/Q for CTA PE, non-contrast chest
//                            CT for contrast chest CT, ...), or REVIEW reached that way.
//      pregnancy             pregnant and the label is ionising/gadolinium or is a pregnancy alternative; also
//                            a woman aged 12-50 with no pregnancy status and an ionising exam that reaches a
//                            pregnancy (a field covering the pelvis, or any radiotracer study).
//      mri_safety            implant with unknown/unsafe MR status and the label is MRI or an MRI alternative;
//                            an MR-conditional implant and an MRI label.
//      renal_function_unknown  iodinated label (not the code stroke), no eGFR/Cr/AKI/dialysis/CKD stage in the
//                            note, and a renal risk factor (G15). Never changes the label.
//      not_indicated         a negative decision rule sent the label to REVIEW.
//    Formally: flag F is raised for final label X when F's fact is present and either X keeps its label with F
//    (the "keep" entries above), or some catalogue label A is switched, by a step caused by F, along a chain
//    that ends at X. That witness search is what rad_safety_check computes.
//
// 4. OPTIONS, ERRORS, THREAD SAFETY, SPEED
//    RAD_STATIC     define before the include to make every function static (private copy per file).
//    No allocation, no global mutable state, no printing, no exit: every function is reentrant and safe to call
//    from many threads. rad_extract scans the note once (cue matching only at word starts, bucketed by first
//    letter) and then works on at most RAD_MAX_HITS cue hits; a note with more cues than that sets
//    facts.incomplete and the check answers REVIEW. Typical cost: a few microseconds per 100-word note.
//    Clinical rules here are for building and testing software, not for patient care; a radiologist must sign
//    off the table before any real use.
#ifndef RADIOLOGY_RULES_H
#define RADIOLOGY_RULES_H

#include <stddef.h>

#if defined(RAD_STATIC) && (defined(__GNUC__) || defined(__clang__))
#define RADDEF static __attribute__((unused))
#elif defined(RAD_STATIC)
#define RADDEF static
#else
#define RADDEF extern
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------------------------
// 5. Public API

// The 60 catalogue labels and REVIEW, in catalogue order (data/catalogue.tsv).
enum {
    RAD_CT_HEAD, RAD_CT_STROKE, RAD_CTA_HEAD_NECK, RAD_CT_SINUS, RAD_CT_MAXFACE, RAD_CT_NECK, RAD_CT_CSPINE,
    RAD_CT_CHEST_IV, RAD_CT_CHEST, RAD_CT_LDCT, RAD_CTA_PE, RAD_CTA_AORTA, RAD_CTA_CORONARY, RAD_CT_AP_IV,
    RAD_CT_STONE, RAD_CT_UROGRAM, RAD_CT_LIVER, RAD_CT_PANCREAS, RAD_CTA_AP,
    RAD_MR_BRAIN, RAD_MR_BRAIN_C, RAD_MR_PITUITARY, RAD_MR_IAC, RAD_MRA_HEAD, RAD_MR_CSPINE, RAD_MR_LSPINE,
    RAD_MR_LSPINE_C, RAD_MR_SPINE_C, RAD_MR_KNEE, RAD_MR_SHOULDER, RAD_MR_HIP, RAD_MR_ABD_C, RAD_MRCP,
    RAD_MR_PELVIS_C, RAD_MR_PROSTATE, RAD_MR_AP,
    RAD_US_RUQ, RAD_US_KIDNEY, RAD_US_PELVIS, RAD_US_OB, RAD_US_SCROTUM, RAD_US_DVT, RAD_US_CAROTID,
    RAD_US_THYROID, RAD_US_RLQ, RAD_US_AORTA,
    RAD_XR_CHEST, RAD_XR_CHEST_PORT, RAD_XR_ABD, RAD_XR_ANKLE, RAD_XR_HIP, RAD_XR_KNEE,
    RAD_NM_BONE, RAD_NM_VQ, RAD_NM_HIDA, RAD_NM_MPI, RAD_NM_THYROID,
    RAD_PET_FDG, RAD_PET_FDG_WB, RAD_PET_PSMA,
    RAD_REVIEW,                         // abstain: a radiologist protocols this order
    RAD_NUM_LABELS                      // 61 = 60 exams + REVIEW
};
#define RAD_NUM_EXAMS 60

// Output flags.
enum {
    RAD_FLAG_CONTRAST_RISK = 1u << 0,   // "contrast_risk"
    RAD_FLAG_PREGNANCY     = 1u << 1,   // "pregnancy"
    RAD_FLAG_MRI_SAFETY    = 1u << 2,   // "mri_safety"
    RAD_FLAG_RENAL_UNKNOWN = 1u << 3,   // "renal_function_unknown"
    RAD_FLAG_NOT_INDICATED = 1u << 4    // "not_indicated"
};
#define RAD_NUM_FLAGS 5

// Contraindications, in the order the check applies them (bit k of rad_decision.reasons = 1 << k).
enum { RAD_CI_PREGNANCY, RAD_CI_MRI_UNSAFE, RAD_CI_IOD_REACTION, RAD_CI_RENAL, RAD_CI_GAD_REACTION, RAD_CI_COUNT };
#define RAD_REASON_NOT_INDICATED (1u << RAD_CI_COUNT)

// Contrast agent of a label.
enum { RAD_AGENT_NONE, RAD_AGENT_IODINATED, RAD_AGENT_GADOLINIUM, RAD_AGENT_RADIOTRACER };

// Entries of rad_label_info.alt: a label index (RAD_REVIEW included) or one of these.
#define RAD_ALT_NA   (-1)               // not affected by this contraindication
#define RAD_ALT_KEEP (-2)               // allowed: keep the label and raise the flag
#define RAD_ALT_CTX  (-3)               // alternative depends on the clinical context (see rad__alt_ctx)

// Decision-rule domains (rad_facts.rule_negative, rad_label_info.rule).
enum {
    RAD_RULE_CSPINE = 1u << 0, RAD_RULE_HEAD = 1u << 1, RAD_RULE_ANKLE = 1u << 2, RAD_RULE_KNEE = 1u << 3,
    RAD_RULE_PE = 1u << 4, RAD_RULE_LBP = 1u << 5, RAD_RULE_HEADACHE = 1u << 6, RAD_RULE_SINUS = 1u << 7
};

// Clinical context cues (rad_facts.context).
enum { RAD_CTX_RLQ = 1u << 0, RAD_CTX_RUQ = 1u << 1, RAD_CTX_FLANK = 1u << 2, RAD_CTX_PELVIC = 1u << 3,
       RAD_CTX_LEG = 1u << 4 };

// Renal risk factors without a measurement (rad_facts.renal_risk, G15).
enum { RAD_RISK_DM = 1u << 0, RAD_RISK_HTN = 1u << 1, RAD_RISK_METFORMIN = 1u << 2, RAD_RISK_SINGLE_KIDNEY = 1u << 3,
       RAD_RISK_TRANSPLANT = 1u << 4, RAD_RISK_CKD = 1u << 5 };

// Implant kinds (rad_facts.implant_kinds) and MR status (rad_facts.implant, worst one wins).
enum { RAD_DEV_CIED = 1u << 0, RAD_DEV_NEURO = 1u << 1, RAD_DEV_COCHLEAR = 1u << 2, RAD_DEV_CLIP = 1u << 3,
       RAD_DEV_METAL_EYE = 1u << 4, RAD_DEV_LEADS = 1u << 5, RAD_DEV_FRAGMENT = 1u << 6 };
enum { RAD_IMPLANT_NONE, RAD_IMPLANT_CONDITIONAL, RAD_IMPLANT_UNKNOWN, RAD_IMPLANT_UNSAFE };

// Severity of a prior contrast reaction (rad_facts.reaction[class], worst one wins).
enum { RAD_REACT_NONE, RAD_REACT_MILD, RAD_REACT_UNKNOWN, RAD_REACT_SEVERE };
enum { RAD_CLASS_IOD, RAD_CLASS_GAD };

// Dialysis (rad_facts.dialysis).
enum { RAD_DIALYSIS_NONE, RAD_DIALYSIS_RESIDUAL, RAD_DIALYSIS_ANURIC };

// Distractors and negations seen (rad_facts.distractors): recorded for tests and audits, never change a label.
enum { RAD_DIS_IODINE_SHELLFISH = 1u << 0, RAD_DIS_NEG_ALLERGY = 1u << 1, RAD_DIS_DEVICE_REMOVED = 1u << 2,
       RAD_DIS_OTHER_IMPLANT = 1u << 3, RAD_DIS_NEG_PREGNANCY = 1u << 4 };

typedef struct rad_facts rad_facts;
struct rad_facts {
    int           age;                  // years; -1 unknown
    char          sex;                  // 'F', 'M', or 0 unknown
    float         egfr;                 // mL/min/1.73 m²; -1 unknown
    float         creat;                // serum creatinine, mg/dL (µmol/L converted); -1 unknown
    unsigned char aki;                  // AKI / rising creatinine
    unsigned char dialysis;             // RAD_DIALYSIS_*
    unsigned char ckd_stage;            // 0 not stated, 1..5 (ESRD = 5)
    unsigned char reaction[2];          // RAD_REACT_*, indexed by RAD_CLASS_IOD / RAD_CLASS_GAD
    signed char   pregnant;             // 1 pregnant or possibly, 0 not stated, -1 stated not pregnant
    unsigned char breastfeeding;
    unsigned char implant;              // RAD_IMPLANT_*
    unsigned char anticoag;             // anticoagulant or P2Y12 antiplatelet
    unsigned char incomplete;           // more cues than RAD_MAX_HITS: facts may be missing
    unsigned char stroke_window;        // acute stroke work-up: "code stroke" / "stroke alert", a wake-up stroke,
                                        // a large vessel occlusion, a thrombectomy / thrombolysis candidate, or
                                        // last known well / symptom onset given in hours or minutes (<= 24 h) or
                                        // as a clock time (G11); the engine never auto-assigns a non-stroke label
                                        // then
    unsigned char head_strike;          // the head was hit: "hit/struck/bumped ... head", "head strike", "head
                                        // injury", a scalp or occipital hematoma / laceration (with anticoag: G9)
    unsigned      implant_kinds;        // RAD_DEV_* of the implants that count
    unsigned      renal_risk;           // RAD_RISK_*
    unsigned      rule_negative;        // RAD_RULE_*
    unsigned      context;              // RAD_CTX_*
    unsigned      distractors;          // RAD_DIS_*
};

typedef struct rad_label_info rad_label_info;
struct rad_label_info {
    const char   *name;                 // catalogue label
    const char   *modality;             // CT, CTA, MRI, MRA, US, XR, NM, PET/CT ("" for REVIEW)
    const char   *region;               // body region
    const char   *contrast;             // catalogue contrast column: none, IV, none+IV, radiotracer (...)
    const char   *desc;                 // short description (data/catalogue.tsv)
    unsigned char agent;                // RAD_AGENT_*
    unsigned char ionising;             // uses ionising radiation
    unsigned char mri;                  // MRI or MRA
    unsigned char fetal;                // exposes a pregnancy (G6, unknown pregnancy status): an ionising field
                                        // that covers the pelvis, or a radiotracer (it circulates, and the
                                        // bladder that excretes it lies against the uterus)
    unsigned char rule;                 // RAD_RULE_* domains whose negative decision rule makes it not indicated
    signed char   alt[RAD_CI_COUNT];    // per contraindication: label index, RAD_REVIEW, RAD_ALT_NA/KEEP/CTX
};

typedef struct rad_decision rad_decision;
struct rad_decision {
    int         label;                  // label to use (RAD_REVIEW = abstain)
    const char *name;                   // its catalogue name
    int         input;                  // the label that was checked; -1 when it is not in the catalogue
    unsigned    flags;                  // RAD_FLAG_*
    unsigned    reasons;                // (1 << RAD_CI_*) | RAD_REASON_NOT_INDICATED: what switched the label
};

#define RAD_MAX_HITS 1024               // cue hits one note may have before facts.incomplete is set

// Sets every fact to "unknown / not stated".
RADDEF void rad_facts_clear(rad_facts *f);
// Extracts the facts of a note of len bytes (need not be NUL-terminated). Returns 0, or 1 when the note had more
// than RAD_MAX_HITS cues (f->incomplete is then set and the check answers REVIEW).
RADDEF int rad_extract(const char *note, size_t len, rad_facts *f);
// Marks with 1 each byte of the note that belongs to a cue the extractor reads (mask has len bytes): numbers and
// the words around them are included. Lets a data generator keep typos away from facts. Returns the hit count.
RADDEF int rad_cue_mask(const char *note, size_t len, unsigned char *mask);

// The catalogue: index of a label name (exact, or case-insensitive ignoring outer blanks), -1 if unknown.
RADDEF int rad_label_index(const char *name);
RADDEF const char *rad_label_name(int label);          // NULL outside 0..RAD_NUM_LABELS-1
RADDEF const rad_label_info *rad_label(int label);     // NULL outside 0..RAD_NUM_LABELS-1
RADDEF const char *rad_flag_name(unsigned flag);       // "contrast_risk", ... for one RAD_FLAG_* bit, else NULL
RADDEF unsigned rad_flag_from_name(const char *name, size_t len);  // 0 if unknown

// The safety check on a predicted label. Returns 0, or -1 when the label is not in the catalogue (then out is
// REVIEW with the flags that REVIEW gets). out may not be NULL.
RADDEF int rad_safety_check(const rad_facts *f, const char *label, rad_decision *out);
RADDEF int rad_safety_check_index(const rad_facts *f, int label, rad_decision *out);

// Derived facts, as the check uses them.
RADDEF float rad_egfr_ckd_epi(float creat_mgdl, int age, char sex);   // CKD-EPI 2021 (race-free); -1 if unknown
RADDEF int rad_renal_high_risk(const rad_facts *f, int agent);        // G1/G2 for iodinated, G3 for gadolinium
RADDEF int rad_renal_function_known(const rad_facts *f);
RADDEF int rad_contraindications(const rad_facts *f, int label);      // bits (1 << RAD_CI_*) that switch label

#ifdef __cplusplus
}
#endif
#endif // RADIOLOGY_RULES_H

// ---------------------------------------------------------------------------------------------------------------
// 6. Implementation

#ifdef RAD_RULES_IMPLEMENTATION
#ifndef RAD_RULES_IMPLEMENTATION_DONE
#define RAD_RULES_IMPLEMENTATION_DONE

#include <math.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// The label table. Columns: name, modality, region, contrast, agent, ionising, mri, fetal, rule domains, then
// the alternative per contraindication {pregnancy, mri_unsafe, iod_reaction, renal, gad_reaction}.
// N = not affected, K = keep with flag, X = context-dependent, R = REVIEW. Where a row sends a label elsewhere the
// reason is the domain notes' "choose this over its neighbour" column; REVIEW where the catalogue has nothing
// that answers the question (CT head with contrast, CT temporal bone, MR arthrogram, CT lumbar spine ...).
// Context-dependent entries (rad__alt_ctx):
//   CTA PE, iod_reaction/renal: leg swelling/calf pain -> US venous duplex, else NM V/Q (clear CXR assumed).
//   CTA PE, pregnancy:           leg symptoms -> US venous duplex, else XR chest 2 views (ATS: CXR first).
//   CT abdomen pelvis with IV contrast, pregnancy: RLQ -> US RLQ, RUQ -> US RUQ, flank -> US kidneys and bladder,
//                                pelvic pain -> US OB first trimester, else MRI abdomen pelvis without contrast.
#define RAD__N RAD_ALT_NA
#define RAD__K RAD_ALT_KEEP
#define RAD__X RAD_ALT_CTX
#define RAD__R RAD_REVIEW
#define RAD__IOD RAD_AGENT_IODINATED
#define RAD__GAD RAD_AGENT_GADOLINIUM
#define RAD__TRC RAD_AGENT_RADIOTRACER
static const rad_label_info rad__labels[RAD_NUM_LABELS] = {
    // name, modality, region, contrast,
    //  short description,
    //  agent, ionising, mri, fetal, rule,
    //                                                   {preg, mri, iod_react, renal, gad_react}
    {"CT head without contrast", "CT", "head", "none",
     "Head CT without contrast: bleed, fracture or mass effect after trauma or a sudden neurological change",
     0, 1, 0, 0, RAD_RULE_HEAD | RAD_RULE_HEADACHE, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"CT stroke protocol (CT head without contrast + CTA head and neck)", "CT", "head and neck", "none+IV",
     "Code-stroke bundle: plain head CT, then CT angiography from aortic arch to vertex (perfusion where the site does it)",
     RAD__IOD, 1, 0, 0, 0, {RAD__K, RAD__N, RAD__R, RAD__K, RAD__N}},
    {"CTA head and neck with IV contrast", "CTA", "head and neck", "IV",
     "CT angiogram of the intracranial and neck arteries: dissection, stenosis, aneurysm",
     RAD__IOD, 1, 0, 0, RAD_RULE_HEADACHE, {RAD_MRA_HEAD, RAD__N, RAD_MRA_HEAD, RAD_MRA_HEAD, RAD__N}},
    {"CT sinus without contrast", "CT", "paranasal sinuses", "none",
     "Thin-slice CT of the paranasal sinuses for chronic disease and surgical planning",
     0, 1, 0, 0, RAD_RULE_SINUS, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"CT maxillofacial without contrast", "CT", "face", "none",
     "CT of the facial skeleton after trauma",
     0, 1, 0, 0, 0, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"CT soft tissue neck with IV contrast", "CT", "neck", "IV",
     "Contrast CT of the neck soft tissues: abscess, mass, lymph nodes",
     RAD__IOD, 1, 0, 0, 0, {RAD__K, RAD__N, RAD__R, RAD__R, RAD__N}},
    {"CT cervical spine without contrast", "CT", "cervical spine", "none",
     "Cervical spine CT with sagittal and coronal reformats after blunt trauma",
     0, 1, 0, 0, RAD_RULE_CSPINE, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"CT chest with IV contrast", "CT", "chest", "IV",
     "Contrast-enhanced chest CT: mediastinum, pleura, hila, cancer staging",
     RAD__IOD, 1, 0, 0, 0, {RAD__K, RAD__N, RAD_CT_CHEST, RAD_CT_CHEST, RAD__N}},
    {"CT chest without contrast", "CT", "chest", "none",
     "Chest CT without contrast, including the high-resolution lung protocol for nodules and interstitial disease",
     0, 1, 0, 0, 0, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"CT chest low-dose lung cancer screening", "CT", "chest", "none",
     "Annual low-dose chest CT to screen eligible smokers for lung cancer",
     0, 1, 0, 0, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"CTA chest pulmonary embolism protocol", "CTA", "chest", "IV",
     "CT pulmonary angiogram timed for the pulmonary arteries",
     RAD__IOD, 1, 0, 0, RAD_RULE_PE, {RAD__X, RAD__N, RAD__X, RAD__X, RAD__N}},
    {"CTA chest abdomen pelvis aortic dissection protocol", "CTA", "chest, abdomen, pelvis", "none+IV",
     "Unenhanced then arterial-phase CT angiogram of the whole aorta",
     RAD__IOD, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__R, RAD__R, RAD__N}},
    {"CTA coronary arteries", "CTA", "heart", "IV",
     "ECG-gated coronary CT angiogram, with or without calcium scoring",
     RAD__IOD, 1, 0, 0, 0, {RAD__R, RAD__N, RAD_NM_MPI, RAD_NM_MPI, RAD__N}},
    {"CT abdomen pelvis with IV contrast", "CT", "abdomen and pelvis", "IV",
     "Portal-venous phase CT of abdomen and pelvis, the default for acute abdominal pain",
     RAD__IOD, 1, 0, 1, 0, {RAD__X, RAD__N, RAD_CT_STONE, RAD_CT_STONE, RAD__N}},
    {"CT abdomen pelvis without contrast (renal stone protocol)", "CT", "abdomen and pelvis", "none",
     "Low-dose unenhanced CT of kidneys, ureters and bladder for stones",
     0, 1, 0, 1, 0, {RAD_US_KIDNEY, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"CT urogram", "CT", "abdomen and pelvis", "none+IV",
     "Multiphase CT of the urinary tract: unenhanced, nephrographic and excretory phases",
     RAD__IOD, 1, 0, 1, 0, {RAD_US_KIDNEY, RAD__N, RAD__R, RAD__R, RAD__N}},
    {"CT abdomen liver multiphase without and with IV contrast", "CT", "abdomen", "none+IV",
     "Liver CT in late arterial, portal venous and delayed phases to characterise lesions",
     RAD__IOD, 1, 0, 0, 0, {RAD__R, RAD__N, RAD_MR_ABD_C, RAD_MR_ABD_C, RAD__N}},
    {"CT abdomen pancreas protocol without and with IV contrast", "CT", "abdomen", "none+IV",
     "Pancreatic-phase plus portal-venous CT for pancreatic tumours",
     RAD__IOD, 1, 0, 0, 0, {RAD__R, RAD__N, RAD_MR_ABD_C, RAD_MR_ABD_C, RAD__N}},
    {"CTA abdomen pelvis", "CTA", "abdomen and pelvis", "none+IV",
     "Arterial-phase CT angiogram of abdomen and pelvis for bleeding or ischaemia",
     RAD__IOD, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__R, RAD__R, RAD__N}},
    {"MRI brain without contrast", "MRI", "brain", "none",
     "Routine brain MRI with diffusion, FLAIR and susceptibility sequences",
     0, 0, 1, 0, RAD_RULE_HEADACHE, {RAD__N, RAD_CT_HEAD, RAD__N, RAD__N, RAD__N}},
    {"MRI brain without and with IV contrast", "MRI", "brain", "none+IV",
     "Brain MRI before and after gadolinium: tumour, infection, inflammation",
     RAD__GAD, 0, 1, 0, RAD_RULE_HEADACHE, {RAD_MR_BRAIN, RAD__R, RAD__N, RAD__N, RAD__R}},
    {"MRI pituitary without and with IV contrast", "MRI", "sella/pituitary", "none+IV",
     "Dedicated thin-section MRI of the sella, dynamic where needed",
     RAD__GAD, 0, 1, 0, 0, {RAD__R, RAD__R, RAD__N, RAD__N, RAD__R}},
    {"MRI internal auditory canals without and with IV contrast", "MRI", "internal auditory canals", "none+IV",
     "MRI of the internal auditory canals and cerebellopontine angles with gadolinium",
     RAD__GAD, 0, 1, 0, 0, {RAD__R, RAD__R, RAD__N, RAD__N, RAD__R}},
    {"MRA head without contrast", "MRA", "head", "none",
     "Time-of-flight MR angiogram of the intracranial arteries, no contrast agent",
     0, 0, 1, 0, RAD_RULE_HEADACHE, {RAD__N, RAD_CTA_HEAD_NECK, RAD__N, RAD__N, RAD__N}},
    {"MRI cervical spine without contrast", "MRI", "cervical spine", "none",
     "Routine cervical spine MRI",
     0, 0, 1, 0, RAD_RULE_CSPINE, {RAD__N, RAD__R, RAD__N, RAD__N, RAD__N}},
    {"MRI lumbar spine without contrast", "MRI", "lumbar spine", "none",
     "Routine lumbar spine MRI",
     0, 0, 1, 0, RAD_RULE_LBP, {RAD__N, RAD__R, RAD__N, RAD__N, RAD__N}},
    {"MRI lumbar spine without and with IV contrast", "MRI", "lumbar spine", "none+IV",
     "Lumbar spine MRI before and after gadolinium: after surgery, infection, tumour",
     RAD__GAD, 0, 1, 0, RAD_RULE_LBP, {RAD_MR_LSPINE, RAD__R, RAD__N, RAD__N, RAD__R}},
    {"MRI complete spine without and with IV contrast", "MRI", "whole spine", "none+IV",
     "Whole-spine MRI (cervical, thoracic, lumbar) with gadolinium",
     RAD__GAD, 0, 1, 0, 0, {RAD__R, RAD__R, RAD__N, RAD__N, RAD__R}},
    {"MRI knee without contrast", "MRI", "knee", "none",
     "Routine knee MRI for internal derangement",
     0, 0, 1, 0, 0, {RAD__N, RAD__R, RAD__N, RAD__N, RAD__N}},
    {"MRI shoulder without contrast", "MRI", "shoulder", "none",
     "Routine shoulder MRI for rotator cuff and tendon problems",
     0, 0, 1, 0, 0, {RAD__N, RAD__R, RAD__N, RAD__N, RAD__N}},
    {"MRI hip without contrast", "MRI", "hip", "none",
     "Hip and pelvis MRI for occult fracture, avascular necrosis or stress injury",
     0, 0, 1, 0, 0, {RAD__N, RAD_NM_BONE, RAD__N, RAD__N, RAD__N}},
    {"MRI abdomen without and with IV contrast", "MRI", "abdomen (liver)", "none+IV",
     "Liver and upper abdomen MRI with gadolinium (extracellular or hepatobiliary agent), MRCP as needed",
     RAD__GAD, 0, 1, 0, 0, {RAD__R, RAD_CT_LIVER, RAD__N, RAD__N, RAD_CT_LIVER}},
    {"MRCP (MRI abdomen without contrast with MRCP)", "MRI", "biliary tree", "none",
     "Heavily T2-weighted MR cholangiopancreatography of the bile and pancreatic ducts",
     0, 0, 1, 0, 0, {RAD__N, RAD__R, RAD__N, RAD__N, RAD__N}},
    {"MRI pelvis without and with IV contrast", "MRI", "pelvis", "none+IV",
     "Pelvic MRI with gadolinium for adnexal, uterine, cervical or perianal disease",
     RAD__GAD, 0, 1, 0, 0, {RAD__R, RAD__R, RAD__N, RAD__N, RAD__R}},
    {"MRI prostate multiparametric without and with IV contrast", "MRI", "prostate", "none+IV",
     "Multiparametric prostate MRI with dynamic gadolinium (PI-RADS)",
     RAD__GAD, 0, 1, 0, 0, {RAD__R, RAD__R, RAD__N, RAD__N, RAD__R}},
    {"MRI abdomen pelvis without contrast", "MRI", "abdomen and pelvis", "none",
     "Abdomen and pelvis MRI without contrast: the pregnancy protocol for appendicitis and abdominal pain",
     0, 0, 1, 0, 0, {RAD__N, RAD__R, RAD__N, RAD__N, RAD__N}},
    {"US abdomen right upper quadrant", "US", "abdomen (RUQ)", "none",
     "Ultrasound of gallbladder, bile ducts and liver",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US kidneys and bladder", "US", "kidneys and bladder", "none",
     "Ultrasound of kidneys and bladder",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US pelvis transabdominal and transvaginal with Doppler", "US", "pelvis", "none",
     "Gynaecological pelvic ultrasound, transabdominal and transvaginal, with Doppler",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US OB first trimester transvaginal", "US", "pelvis (pregnancy)", "none",
     "Early-pregnancy transvaginal ultrasound: location, viability, dating",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US scrotum with Doppler", "US", "scrotum", "none",
     "Testicular ultrasound with colour Doppler",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US venous duplex lower extremity", "US", "lower extremity veins", "none",
     "Compression and Doppler ultrasound of the leg veins",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US carotid duplex", "US", "neck (carotid arteries)", "none",
     "Doppler ultrasound of the carotid arteries",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US thyroid", "US", "neck (thyroid)", "none",
     "Ultrasound of the thyroid and neck (TI-RADS)",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US abdomen right lower quadrant", "US", "abdomen (RLQ/appendix)", "none",
     "Graded-compression ultrasound of the appendix",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"US abdominal aorta", "US", "abdominal aorta", "none",
     "Ultrasound of the abdominal aorta for aneurysm",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"XR chest 2 views", "XR", "chest", "none",
     "Frontal (PA) and lateral chest radiograph",
     0, 1, 0, 0, 0, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"XR chest 1 view portable", "XR", "chest", "none",
     "Single AP chest radiograph taken at the bedside",
     0, 1, 0, 0, 0, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"XR abdomen 2 views", "XR", "abdomen", "none",
     "Supine and upright or decubitus abdominal radiographs",
     0, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"XR ankle 3 views", "XR", "ankle", "none",
     "Ankle radiographs: AP, mortise and lateral",
     0, 1, 0, 0, RAD_RULE_ANKLE, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"XR hip and pelvis", "XR", "hip and pelvis", "none",
     "AP pelvis and lateral hip radiographs",
     0, 1, 0, 1, 0, {RAD_MR_HIP, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"XR knee 3 views", "XR", "knee", "none",
     "Knee radiographs: AP, lateral and patellar view",
     0, 1, 0, 0, RAD_RULE_KNEE, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"NM bone scan whole body", "NM", "whole body", "radiotracer (Tc-99m MDP)",
     "Whole-body bone scintigraphy",
     RAD__TRC, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"NM lung ventilation perfusion scan", "NM", "lungs", "radiotracer (Tc-99m MAA +/- aerosol/gas)",
     "Ventilation and perfusion lung scintigraphy",
     RAD__TRC, 1, 0, 1, RAD_RULE_PE, {RAD__K, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"NM hepatobiliary scan", "NM", "gallbladder/biliary", "radiotracer (Tc-99m IDA)",
     "Hepatobiliary (HIDA) scintigraphy, with CCK where needed",
     RAD__TRC, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"NM myocardial perfusion SPECT", "NM", "heart", "radiotracer (Tc-99m sestamibi/tetrofosmin)",
     "Stress and rest myocardial perfusion SPECT, exercise or pharmacological",
     RAD__TRC, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"NM thyroid uptake and scan", "NM", "thyroid", "radiotracer (I-123 or Tc-99m)",
     "Thyroid uptake measurement and scintigraphy",
     RAD__TRC, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"PET/CT FDG skull base to mid-thigh", "PET/CT", "skull base to mid-thigh", "radiotracer (F-18 FDG)",
     "Oncological FDG PET/CT from skull base to mid-thigh",
     RAD__TRC, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"PET/CT FDG whole body", "PET/CT", "vertex to toes", "radiotracer (F-18 FDG)",
     "FDG PET/CT from the vertex to the toes",
     RAD__TRC, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"PET/CT PSMA", "PET/CT", "skull base to mid-thigh", "radiotracer (Ga-68/F-18 PSMA)",
     "PSMA PET/CT for prostate cancer staging and recurrence",
     RAD__TRC, 1, 0, 1, 0, {RAD__R, RAD__N, RAD__N, RAD__N, RAD__N}},
    {"REVIEW", "", "", "",
     "Abstain: a radiologist protocols the order (vague, outside the catalogue, not indicated, or unsafe without review)",
     0, 0, 0, 0, 0, {RAD__N, RAD__N, RAD__N, RAD__N, RAD__N}},
};
#undef RAD__N
#undef RAD__K
#undef RAD__X
#undef RAD__R
#undef RAD__IOD
#undef RAD__GAD
#undef RAD__TRC

static const char *const rad__flag_names[RAD_NUM_FLAGS] = {
    "contrast_risk", "pregnancy", "mri_safety", "renal_function_unknown", "not_indicated"};

// ---------------------------------------------------------------------------------------------------------------
// Cue table. Pattern syntax (lowercase): ' ' matches one or more of space/tab/newline/'-'; '_' matches zero or
// more of them; a trailing '*' makes it a prefix (no word boundary after). A pattern matches only at a word
// start; at each word start the longest matching pattern wins and the scan continues after it.

enum {
    RAD__K_IGNORE,      // words that look like cues but are not ("ICD-10", "HD#2")
    RAD__K_NEG,         // negator; val: RAD__NEG_* bits
    RAD__K_BREAK,       // ends a negation scope ("but", "however")
    RAD__K_EGFR, RAD__K_CREAT, RAD__K_AKI, RAD__K_DIALYSIS, RAD__K_ANURIC, RAD__K_RESIDUAL, RAD__K_CKD,
    RAD__K_ESRD, RAD__K_PREDIALYSIS, RAD__K_STROKE_CODE, RAD__K_LKW,
    RAD__K_ONSET,       // a bare onset time ("onset 09:47"): a stroke window only beside a focal deficit (K_DEFICIT)
    RAD__K_DEFICIT,     // a focal neurological deficit ("aphasia", "hemiparesis", "facial droop", "NIHSS")
    RAD__K_CLIPPED,     // "clipped": an aneurysm clip when "aneurysm" follows within three words, else nothing
    RAD__K_HITVERB,     // "hit", "struck", "bumped": a head strike (K_HEADHIT) when the head follows within six
                        // words of the same clause; else "struck" (val 1) is trauma and the others nothing
    RAD__K_HEADHIT,     // the head was hit ("head strike", "head injury", "scalp hematoma"); also trauma
    RAD__K_RISK,        // val: RAD_RISK_*
    RAD__K_IOD, RAD__K_GAD, RAD__K_CONTRAST,
    RAD__K_REACT,       // val: RAD_REACT_MILD / RAD_REACT_UNKNOWN (allergy words) / RAD_REACT_SEVERE
    RAD__K_ALLERGY,     // "allergies", "allergic" (header-capable reaction words), val as K_REACT (UNKNOWN)
    RAD__K_PREMED,
    RAD__K_DISTRACT,    // shellfish / iodine / betadine
    RAD__K_ALLERGEN,    // other allergens that end an association
    RAD__K_PREG,        // "pregnant", "pregnancy"
    RAD__K_GEST,        // strong pregnancy words: IUP, gestation, trimester, gravid
    RAD__K_HCG, RAD__K_LMP, RAD__K_NOTPREG, RAD__K_BREASTFEED, RAD__K_PREG_UNKNOWN,
    RAD__K_DEVICE,      // val: RAD_DEV_*, status unknown unless qualified
    RAD__K_DEVICE_UNSAFE, // val: RAD_DEV_*, unsafe by nature
    RAD__K_MRCOND, RAD__K_MRUNSAFE, RAD__K_REMOVED, RAD__K_OTHER_IMPLANT,
    RAD__K_ANTICOAG,
    RAD__K_RULE,        // val: RAD_RULE_* of a named decision rule
    RAD__K_OTTAWA,
    RAD__K_QUALNEG,     // negative qualifier of a decision rule ("low risk", "negative")
    RAD__K_QUALPOS,     // "positive", "high risk"
    RAD__K_DDIMER, RAD__K_WELLS, RAD__K_LOWPROB, RAD__K_BACKPAIN, RAD__K_NOREDFLAGS, RAD__K_MIGRAINE,
    RAD__K_NORMNEURO, RAD__K_HA_REDFLAG, RAD__K_TRAUMA, RAD__K_SINUSITIS, RAD__K_UNCOMPLICATED,
    RAD__K_ANKLE, RAD__K_KNEE, RAD__K_ACUTE, RAD__K_CHRONIC,
    RAD__K_CTX,         // val: RAD_CTX_*
    RAD__K_SEX,         // val: 'F' / 'M'
    RAD__K_SEXFIELD,    // "sex:", "gender:"
    RAD__K_AGEWORD,     // "age", "aged"
    RAD__K_COUNT
};

// Negator kinds.
#define RAD__NEG_PRE  1u                // negates the cues after it
#define RAD__NEG_POST 2u                // negates the cue right before it
#define RAD__NEG_LIST 4u                // its scope crosses commas ("denies A, B, C")

// Pattern flags: a digit may follow directly ("cr2.1", "ckd4", "egfr25"); the pattern's spaces do not cross a line
// break ("has an ICD\ncode status: full" is a device, not an "ICD code").
#define RAD__P_DIGIT 1u
#define RAD__P_LINE  2u
// The generator's cue mask (rad_cue_mask: where radgen puts no typos) must stay as it was when the committed splits
// and the base model's corpus were made, so it scans with the cue table of that time: RAD__P_NEW marks the cues
// added since (the facts see them, the mask does not), RAD__P_OLD the ones they replaced (the mask sees them, the
// facts do not).
#define RAD__P_NEW   4u
#define RAD__P_OLD   8u

typedef struct rad__cue {
    const char    *pat;
    unsigned char  kind;
    unsigned char  flags;
    unsigned short val;
} rad__cue;

#define RAD__PRE  RAD__NEG_PRE
#define RAD__POST RAD__NEG_POST
#define RAD__LIST RAD__NEG_LIST
static const rad__cue rad__cues[] = {
    // not cues
    {"icd_10*", RAD__K_IGNORE, 0, 0}, {"icd_9*", RAD__K_IGNORE, 0, 0}, {"icd code*", RAD__K_IGNORE, RAD__P_LINE, 0},
    {"icd_10_cm", RAD__K_IGNORE, 0, 0}, {"hd#", RAD__K_IGNORE, 0, 0}, {"hd #", RAD__K_IGNORE, 0, 0},
    {"hd day", RAD__K_IGNORE, 0, 0}, {"hd stable", RAD__K_IGNORE, 0, 0},
    {"hd unstable", RAD__K_IGNORE, 0, 0}, {"hds", RAD__K_IGNORE, 0, 0}, {"egfr mutation*", RAD__K_IGNORE, 0, 0}, {"egfr mutant", RAD__K_IGNORE, 0, 0},
    {"egfr+", RAD__K_IGNORE, 0, 0}, {"no change", RAD__K_IGNORE, 0, 0}, {"no longer", RAD__K_NEG, 0, RAD__PRE},
    {"no acute distress", RAD__K_IGNORE, 0, 0}, {"no other", RAD__K_IGNORE, 0, 0},
    {"not sure", RAD__K_IGNORE, 0, 0}, {"not known", RAD__K_IGNORE, 0, 0}, {"cr cl", RAD__K_EGFR, RAD__P_DIGIT, 0},

    // negators
    {"no", RAD__K_NEG, 0, RAD__PRE}, {"not", RAD__K_NEG, 0, RAD__PRE}, {"non", RAD__K_NEG, 0, RAD__PRE},
    {"nor", RAD__K_NEG, 0, RAD__PRE}, {"never", RAD__K_NEG, 0, RAD__PRE}, {"without", RAD__K_NEG, 0, RAD__PRE},
    {"w/o", RAD__K_NEG, 0, RAD__PRE}, {"free of", RAD__K_NEG, 0, RAD__PRE},
    {"denies", RAD__K_NEG, 0, RAD__PRE | RAD__LIST}, {"denied", RAD__K_NEG, 0, RAD__PRE | RAD__POST},
    {"deny", RAD__K_NEG, 0, RAD__PRE | RAD__LIST}, {"negative for", RAD__K_NEG, 0, RAD__PRE | RAD__LIST},
    {"neg for", RAD__K_NEG, 0, RAD__PRE | RAD__LIST}, {"no h/o", RAD__K_NEG, 0, RAD__PRE | RAD__LIST},
    {"no hx of", RAD__K_NEG, 0, RAD__PRE | RAD__LIST}, {"no history of", RAD__K_NEG, 0, RAD__PRE | RAD__LIST},
    {"no known", RAD__K_NEG, 0, RAD__PRE | RAD__LIST}, {"no prior", RAD__K_NEG, 0, RAD__PRE | RAD__LIST},
    {"no previous", RAD__K_NEG, 0, RAD__PRE | RAD__LIST}, {"neg", RAD__K_NEG, 0, RAD__PRE | RAD__POST},
    {"negative", RAD__K_NEG, 0, RAD__PRE | RAD__POST}, {"nil", RAD__K_NEG, 0, RAD__PRE | RAD__POST},
    {"none", RAD__K_NEG, 0, RAD__POST}, {"absent", RAD__K_NEG, 0, RAD__POST},
    {"resolved", RAD__K_NEG, 0, RAD__POST}, {"ruled out", RAD__K_NEG, 0, RAD__POST},
    {"excluded", RAD__K_NEG, 0, RAD__POST}, {"discontinued", RAD__K_NEG, 0, RAD__POST},
    {"stopped", RAD__K_NEG, 0, RAD__POST}, {"off", RAD__K_NEG, 0, RAD__PRE}, {"n/a", RAD__K_NEG, 0, RAD__POST},
    {"but", RAD__K_BREAK, 0, 0}, {"however", RAD__K_BREAK, 0, 0}, {"although", RAD__K_BREAK, 0, 0},
    {"though", RAD__K_BREAK, 0, 0}, {"except", RAD__K_BREAK, 0, 0}, {"apart from", RAD__K_BREAK, 0, 0},
    {"now", RAD__K_BREAK, 0, 0}, {"presents", RAD__K_BREAK, 0, 0}, {"yet", RAD__K_BREAK, 0, 0},

    // renal function
    {"egfr", RAD__K_EGFR, RAD__P_DIGIT, 0}, {"gfr", RAD__K_EGFR, RAD__P_DIGIT, 0},
    {"e_gfr", RAD__K_EGFR, RAD__P_DIGIT, 0}, {"estimated gfr", RAD__K_EGFR, RAD__P_DIGIT, 0},
    {"crcl", RAD__K_EGFR, RAD__P_DIGIT, 0}, {"creatinine clearance", RAD__K_EGFR, 0, 0},
    {"cr", RAD__K_CREAT, RAD__P_DIGIT, 0}, {"creat", RAD__K_CREAT, RAD__P_DIGIT, 0},
    {"creatinine", RAD__K_CREAT, RAD__P_DIGIT, 0}, {"scr", RAD__K_CREAT, RAD__P_DIGIT, 0},
    {"s_cr", RAD__K_CREAT, RAD__P_DIGIT, 0}, {"crea", RAD__K_CREAT, RAD__P_DIGIT, 0},
    {"serum creatinine", RAD__K_CREAT, RAD__P_DIGIT, 0}, {"serum cr", RAD__K_CREAT, RAD__P_DIGIT, 0},
    {"aki", RAD__K_AKI, 0, 0}, {"acute kidney injury", RAD__K_AKI, 0, 0}, {"acute renal failure", RAD__K_AKI, 0, 0},
    {"acute renal injury", RAD__K_AKI, 0, 0}, {"rising cr", RAD__K_AKI, 0, 0}, {"rising creat*", RAD__K_AKI, 0, 0},
    {"cr rising", RAD__K_AKI, 0, 0}, {"creatinine rising", RAD__K_AKI, 0, 0}, {"cr trending up", RAD__K_AKI, 0, 0},
    {"creatinine trending up", RAD__K_AKI, 0, 0}, {"worsening renal function", RAD__K_AKI, 0, 0},
    {"creatinine bump", RAD__K_AKI, 0, 0}, {"cr bump", RAD__K_AKI, 0, 0}, {"creatinine doubled", RAD__K_AKI, 0, 0},
    {"dialysis", RAD__K_DIALYSIS, 0, 0}, {"hd", RAD__K_DIALYSIS, 0, 0}, {"hemodialysis", RAD__K_DIALYSIS, 0, 0},
    {"haemodialysis", RAD__K_DIALYSIS, 0, 0}, {"capd", RAD__K_DIALYSIS, 0, 0},
    {"peritoneal dialysis", RAD__K_DIALYSIS, 0, 0}, {"pre_dialysis", RAD__K_PREDIALYSIS, 0, 0},
    {"anuric", RAD__K_ANURIC, 0, 0}, {"anuria", RAD__K_ANURIC, 0, 0}, {"no urine output", RAD__K_ANURIC, 0, 0},
    {"makes no urine", RAD__K_ANURIC, 0, 0}, {"no residual renal function", RAD__K_ANURIC, 0, 0},
    {"no residual function", RAD__K_ANURIC, 0, 0}, {"non_anuric", RAD__K_RESIDUAL, 0, 0},
    {"not anuric", RAD__K_RESIDUAL, 0, 0}, {"still makes urine", RAD__K_RESIDUAL, 0, 0},
    {"makes urine", RAD__K_RESIDUAL, 0, 0}, {"residual renal function", RAD__K_RESIDUAL, 0, 0},
    {"residual function", RAD__K_RESIDUAL, 0, 0}, {"still voiding", RAD__K_RESIDUAL, 0, 0},
    {"ckd", RAD__K_CKD, RAD__P_DIGIT, 0}, {"chronic kidney disease", RAD__K_CKD, 0, 0},
    {"renal insufficiency", RAD__K_CKD, 0, 0}, {"renal impairment", RAD__K_CKD, 0, 0},
    {"renal disease", RAD__K_CKD, 0, 0}, {"kidney disease", RAD__K_CKD, 0, 0},
    {"chronic renal failure", RAD__K_CKD, 0, 0}, {"esrd", RAD__K_ESRD, 0, 0}, {"eskd", RAD__K_ESRD, 0, 0},
    {"code stroke", RAD__K_STROKE_CODE, 0, 0}, {"stroke code", RAD__K_STROKE_CODE, 0, 0},
    {"stroke alert", RAD__K_STROKE_CODE, 0, 0}, {"stroke activation", RAD__K_STROKE_CODE, 0, 0},
    {"wake_up stroke", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"large vessel occlusion", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"lvo", RAD__K_STROKE_CODE, RAD__P_NEW, 0}, {"thrombectomy candidate", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"possible thrombectomy", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"for thrombectomy", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"candidate for thrombectomy", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"tpa candidate", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"tnk candidate", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"lytic candidate", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"thrombolysis candidate", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"candidate for tpa", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"candidate for thrombolysis", RAD__K_STROKE_CODE, RAD__P_NEW, 0},
    {"lkw", RAD__K_LKW, 0, 0}, {"last known well", RAD__K_LKW, 0, 0}, {"last seen well", RAD__K_LKW, 0, 0},
    {"last seen normal", RAD__K_LKW, 0, 0}, {"symptom onset", RAD__K_LKW, 0, 0}, {"onset of symptoms", RAD__K_LKW, 0, 0},
    {"onset", RAD__K_ONSET, RAD__P_NEW, 0}, {"onset witnessed", RAD__K_ONSET, RAD__P_NEW, 0},
    {"witnessed onset", RAD__K_ONSET, RAD__P_NEW, 0},
    {"aphasi*", RAD__K_DEFICIT, RAD__P_NEW, 0}, {"hemipares*", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"hemipleg*", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"facial droop", RAD__K_DEFICIT, RAD__P_NEW, 0}, {"face droop", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"dysarthri*", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"slurred speech", RAD__K_DEFICIT, RAD__P_NEW, 0}, {"nihss", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"gaze pref*", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"gaze deviation", RAD__K_DEFICIT, RAD__P_NEW, 0}, {"hemianop*", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"neglect", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"arm weakness", RAD__K_DEFICIT, RAD__P_NEW, 0}, {"leg weakness", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"sided weakness", RAD__K_DEFICIT, RAD__P_NEW, 0}, {"arm drift", RAD__K_DEFICIT, RAD__P_NEW, 0},
    {"end stage renal*", RAD__K_ESRD, 0, 0}, {"end stage kidney*", RAD__K_ESRD, 0, 0},

    // renal risk factors
    {"dm", RAD__K_RISK, RAD__P_DIGIT, RAD_RISK_DM}, {"t2dm", RAD__K_RISK, 0, RAD_RISK_DM},
    {"t1dm", RAD__K_RISK, 0, RAD_RISK_DM}, {"dm ii", RAD__K_RISK, 0, RAD_RISK_DM},
    {"iddm", RAD__K_RISK, 0, RAD_RISK_DM}, {"niddm", RAD__K_RISK, 0, RAD_RISK_DM},
    {"diabet*", RAD__K_RISK, 0, RAD_RISK_DM}, {"insulin", RAD__K_RISK, 0, RAD_RISK_DM},
    {"htn", RAD__K_RISK, 0, RAD_RISK_HTN}, {"hypertension", RAD__K_RISK, 0, RAD_RISK_HTN},
    {"hypertensive", RAD__K_RISK, 0, RAD_RISK_HTN}, {"metformin", RAD__K_RISK, 0, RAD_RISK_METFORMIN},
    {"glucophage", RAD__K_RISK, 0, RAD_RISK_METFORMIN}, {"janumet", RAD__K_RISK, 0, RAD_RISK_METFORMIN},
    {"single kidney", RAD__K_RISK, 0, RAD_RISK_SINGLE_KIDNEY},
    {"solitary kidney", RAD__K_RISK, 0, RAD_RISK_SINGLE_KIDNEY},
    {"one kidney", RAD__K_RISK, 0, RAD_RISK_SINGLE_KIDNEY}, {"nephrectomy", RAD__K_RISK, 0, RAD_RISK_SINGLE_KIDNEY},
    {"renal transplant", RAD__K_RISK, 0, RAD_RISK_TRANSPLANT},
    {"kidney transplant", RAD__K_RISK, 0, RAD_RISK_TRANSPLANT},
    {"renal tx", RAD__K_RISK, 0, RAD_RISK_TRANSPLANT}, {"transplant kidney", RAD__K_RISK, 0, RAD_RISK_TRANSPLANT},
    {"renal surgery", RAD__K_RISK, 0, RAD_RISK_SINGLE_KIDNEY},
    {"non_diabetic", RAD__K_IGNORE, 0, 0}, {"normotensive", RAD__K_IGNORE, 0, 0},

    // contrast agents
    {"iv contrast", RAD__K_IOD, 0, 0}, {"iodinated*", RAD__K_IOD, 0, 0}, {"ct contrast", RAD__K_IOD, 0, 0},
    {"ct dye", RAD__K_IOD, 0, 0}, {"contrast dye", RAD__K_IOD, 0, 0}, {"iodine dye", RAD__K_IOD, 0, 0},
    {"iodine contrast", RAD__K_IOD, 0, 0}, {"iodine based contrast", RAD__K_IOD, 0, 0},
    {"iodine_based contrast", RAD__K_IOD, 0, 0}, {"radiocontrast", RAD__K_IOD, 0, 0},
    {"contrast media", RAD__K_CONTRAST, 0, 0}, {"contrast medium", RAD__K_CONTRAST, 0, 0},
    {"omnipaque", RAD__K_IOD, 0, 0}, {"iohexol", RAD__K_IOD, 0, 0}, {"visipaque", RAD__K_IOD, 0, 0},
    {"iodixanol", RAD__K_IOD, 0, 0}, {"isovue", RAD__K_IOD, 0, 0}, {"iopamidol", RAD__K_IOD, 0, 0},
    {"ultravist", RAD__K_IOD, 0, 0}, {"iopromide", RAD__K_IOD, 0, 0}, {"cta dye", RAD__K_IOD, 0, 0},
    {"gadolinium", RAD__K_GAD, 0, 0}, {"gad", RAD__K_GAD, 0, 0}, {"gado*", RAD__K_GAD, 0, 0},
    {"mri contrast", RAD__K_GAD, 0, 0}, {"mr contrast", RAD__K_GAD, 0, 0}, {"mri dye", RAD__K_GAD, 0, 0},
    {"mr dye", RAD__K_GAD, 0, 0}, {"gbca", RAD__K_GAD, 0, 0}, {"multihance", RAD__K_GAD, 0, 0},
    {"eovist", RAD__K_GAD, 0, 0}, {"dotarem", RAD__K_GAD, 0, 0}, {"prohance", RAD__K_GAD, 0, 0},
    {"magnevist", RAD__K_GAD, 0, 0}, {"clariscan", RAD__K_GAD, 0, 0}, {"gadavist", RAD__K_GAD, 0, 0},
    {"contrast", RAD__K_CONTRAST, 0, 0}, {"dye", RAD__K_CONTRAST, 0, 0},

    // reactions
    {"allerg*", RAD__K_ALLERGY, 0, RAD_REACT_UNKNOWN}, {"reaction*", RAD__K_REACT, 0, RAD_REACT_UNKNOWN},
    {"reacted", RAD__K_REACT, 0, RAD_REACT_UNKNOWN}, {"sensitivity", RAD__K_REACT, 0, RAD_REACT_UNKNOWN},
    {"intolerance", RAD__K_REACT, 0, RAD_REACT_UNKNOWN}, {"hypersensitivity", RAD__K_REACT, 0, RAD_REACT_UNKNOWN},
    {"hives", RAD__K_REACT, 0, RAD_REACT_MILD}, {"urticaria*", RAD__K_REACT, 0, RAD_REACT_MILD},
    {"itch*", RAD__K_REACT, 0, RAD_REACT_MILD}, {"prurit*", RAD__K_REACT, 0, RAD_REACT_MILD},
    {"rash", RAD__K_REACT, 0, RAD_REACT_MILD}, {"flushing", RAD__K_REACT, 0, RAD_REACT_MILD},
    {"sneez*", RAD__K_REACT, 0, RAD_REACT_MILD}, {"mild", RAD__K_REACT, 0, RAD_REACT_MILD},
    {"welts", RAD__K_REACT, 0, RAD_REACT_MILD},
    {"anaphyla*", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"bronchospasm", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"wheez*", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"hypotension", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"hypotensive", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"laryngeal*", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"throat swelling", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"throat closing", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"throat tightness", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"stridor", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"angioedema", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"angio_oedema", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"intubat*", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"epinephrine", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"epi", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"epipen", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"adrenaline", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"severe", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"moderate", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"facial swelling", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"lip swelling", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"tongue swelling", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"airway", RAD__K_REACT, 0, RAD_REACT_SEVERE}, {"cardiac arrest", RAD__K_REACT, 0, RAD_REACT_SEVERE},
    {"premed*", RAD__K_PREMED, 0, 0}, {"pre_medicat*", RAD__K_PREMED, 0, 0},
    {"shellfish", RAD__K_DISTRACT, 0, 0}, {"iodine", RAD__K_DISTRACT, 0, 0}, {"betadine", RAD__K_DISTRACT, 0, 0},
    {"povidone*", RAD__K_DISTRACT, 0, 0}, {"seafood", RAD__K_DISTRACT, 0, 0}, {"shrimp", RAD__K_DISTRACT, 0, 0},
    {"fish", RAD__K_DISTRACT, 0, 0}, {"prawns", RAD__K_DISTRACT, 0, 0}, {"lobster", RAD__K_DISTRACT, 0, 0},
    {"pcn", RAD__K_ALLERGEN, 0, 0}, {"penicillin*", RAD__K_ALLERGEN, 0, 0}, {"sulfa*", RAD__K_ALLERGEN, 0, 0},
    {"latex", RAD__K_ALLERGEN, 0, 0}, {"codeine", RAD__K_ALLERGEN, 0, 0}, {"morphine", RAD__K_ALLERGEN, 0, 0},
    {"amoxicillin", RAD__K_ALLERGEN, 0, 0}, {"peanut*", RAD__K_ALLERGEN, 0, 0}, {"nuts", RAD__K_ALLERGEN, 0, 0},
    {"bee sting*", RAD__K_ALLERGEN, 0, 0}, {"nsaid*", RAD__K_ALLERGEN, 0, 0}, {"ibuprofen", RAD__K_ALLERGEN, 0, 0},
    {"cephalosporin*", RAD__K_ALLERGEN, 0, 0}, {"ceph*", RAD__K_ALLERGEN, 0, 0}, {"eggs", RAD__K_ALLERGEN, 0, 0},
    {"tape", RAD__K_ALLERGEN, 0, 0}, {"adhesive*", RAD__K_ALLERGEN, 0, 0}, {"vancomycin", RAD__K_ALLERGEN, 0, 0},
    {"ace inhibitor*", RAD__K_ALLERGEN, 0, 0}, {"lisinopril", RAD__K_ALLERGEN, 0, 0},
    {"tramadol", RAD__K_ALLERGEN, 0, 0}, {"erythromycin", RAD__K_ALLERGEN, 0, 0},
    {"ciprofloxacin", RAD__K_ALLERGEN, 0, 0}, {"cipro", RAD__K_ALLERGEN, 0, 0}, {"opioids", RAD__K_ALLERGEN, 0, 0},
    {"strawberries", RAD__K_ALLERGEN, 0, 0}, {"cats", RAD__K_ALLERGEN, 0, 0}, {"pollen", RAD__K_ALLERGEN, 0, 0},
    {"dust", RAD__K_ALLERGEN, 0, 0}, {"macrolides", RAD__K_ALLERGEN, 0, 0}, {"aspirin", RAD__K_ALLERGEN, 0, 0},
    {"nkda", RAD__K_IGNORE, 0, 0}, {"nka", RAD__K_IGNORE, 0, 0},

    // pregnancy
    {"pregnant", RAD__K_PREG, 0, 0}, {"pregnancy", RAD__K_PREG, 0, 0}, {"preg", RAD__K_PREG, 0, 0},
    {"non_pregnant", RAD__K_NOTPREG, 0, 0}, {"postmenopausal", RAD__K_NOTPREG, 0, 0},
    {"post_menopausal", RAD__K_NOTPREG, 0, 0}, {"hysterectomy", RAD__K_NOTPREG, 0, 0},
    {"menopause", RAD__K_NOTPREG, 0, 0}, {"tubal ligation", RAD__K_IGNORE, 0, 0},
    {"iup", RAD__K_GEST, 0, 0}, {"intrauterine pregnancy", RAD__K_GEST, 0, 0},
    {"intra_uterine pregnancy", RAD__K_GEST, 0, 0}, {"gestation*", RAD__K_GEST, 0, 0},
    {"ega", RAD__K_GEST, 0, 0}, {"trimester", RAD__K_GEST, 0, 0}, {"gravid", RAD__K_GEST, 0, 0},
    {"weeks pregnant", RAD__K_GEST, 0, 0}, {"wks pregnant", RAD__K_GEST, 0, 0}, {"wk pregnant", RAD__K_GEST, 0, 0},
    {"antenatal", RAD__K_GEST, 0, 0}, {"expecting", RAD__K_GEST, 0, 0},
    {"hcg", RAD__K_HCG, RAD__P_DIGIT, 0}, {"beta_hcg", RAD__K_HCG, RAD__P_DIGIT, 0},
    {"b_hcg", RAD__K_HCG, RAD__P_DIGIT, 0}, {"bhcg", RAD__K_HCG, RAD__P_DIGIT, 0},
    {"beta hcg", RAD__K_HCG, RAD__P_DIGIT, 0}, {"upt", RAD__K_HCG, 0, 0},
    {"urine preg*", RAD__K_HCG, 0, 0}, {"serum preg*", RAD__K_HCG, 0, 0}, {"pregnancy test", RAD__K_HCG, 0, 0},
    {"preg test", RAD__K_HCG, 0, 0}, {"lmp", RAD__K_LMP, 0, 0}, {"last menstrual period", RAD__K_LMP, 0, 0},
    {"breastfeeding", RAD__K_BREASTFEED, 0, 0}, {"breast feeding", RAD__K_BREASTFEED, 0, 0},
    {"breast_feeds", RAD__K_BREASTFEED, 0, 0}, {"lactating", RAD__K_BREASTFEED, 0, 0},
    {"nursing mother", RAD__K_BREASTFEED, 0, 0}, {"pregnancy status unknown", RAD__K_PREG_UNKNOWN, 0, 0},
    {"pregnancy unknown", RAD__K_PREG_UNKNOWN, 0, 0}, {"hcg pending", RAD__K_PREG_UNKNOWN, 0, 0},
    {"pregnancy test pending", RAD__K_PREG_UNKNOWN, 0, 0},

    // implants
    {"ppm", RAD__K_DEVICE, 0, RAD_DEV_CIED}, {"pacemaker", RAD__K_DEVICE, 0, RAD_DEV_CIED},
    {"pace maker", RAD__K_DEVICE, 0, RAD_DEV_CIED}, {"pacer", RAD__K_DEVICE, 0, RAD_DEV_CIED},
    {"aicd", RAD__K_DEVICE, 0, RAD_DEV_CIED}, {"icd", RAD__K_DEVICE, 0, RAD_DEV_CIED},
    {"defibrillator", RAD__K_DEVICE, 0, RAD_DEV_CIED}, {"cied", RAD__K_DEVICE, 0, RAD_DEV_CIED},
    {"crt_d", RAD__K_DEVICE, 0, RAD_DEV_CIED}, {"crt_p", RAD__K_DEVICE, 0, RAD_DEV_CIED},
    {"biv pacer", RAD__K_DEVICE, 0, RAD_DEV_CIED}, {"loop recorder", RAD__K_DEVICE, 0, RAD_DEV_CIED},
    {"dbs", RAD__K_DEVICE, 0, RAD_DEV_NEURO}, {"deep brain stim*", RAD__K_DEVICE, 0, RAD_DEV_NEURO},
    {"neurostimulator", RAD__K_DEVICE, 0, RAD_DEV_NEURO}, {"spinal cord stim*", RAD__K_DEVICE, 0, RAD_DEV_NEURO},
    {"stimulator", RAD__K_DEVICE, 0, RAD_DEV_NEURO}, {"nerve stimulator", RAD__K_DEVICE, 0, RAD_DEV_NEURO},
    {"vagal nerve stim*", RAD__K_DEVICE, 0, RAD_DEV_NEURO}, {"vagus nerve stim*", RAD__K_DEVICE, 0, RAD_DEV_NEURO},
    {"vns", RAD__K_DEVICE, 0, RAD_DEV_NEURO}, {"cochlear implant*", RAD__K_DEVICE, 0, RAD_DEV_COCHLEAR},
    {"cochlear device", RAD__K_DEVICE, 0, RAD_DEV_COCHLEAR}, {"aneurysm clip*", RAD__K_DEVICE, 0, RAD_DEV_CLIP},
    {"aneurysmal clip*", RAD__K_DEVICE, 0, RAD_DEV_CLIP}, {"clipped aneurysm", RAD__K_DEVICE, 0, RAD_DEV_CLIP},
    {"clipped", RAD__K_CLIPPED, 0, RAD_DEV_CLIP},
    {"ferromagnetic*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_CLIP},
    {"metal in eye*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal in his eye", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal in her eye", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal in the eye", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal in left eye", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal in right eye", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal in l eye", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal in r eye", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metal fragment in*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"orbital foreign body", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"orbital fb", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"intraocular metal*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"intraocular foreign body", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"metallic foreign body", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_METAL_EYE},
    {"abandoned lead*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_LEADS},
    {"epicardial lead*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_LEADS},
    {"retained lead*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_LEADS},
    {"lead fragment*", RAD__K_DEVICE_UNSAFE, 0, RAD_DEV_LEADS},
    {"shrapnel", RAD__K_DEVICE, 0, RAD_DEV_FRAGMENT}, {"bullet fragment*", RAD__K_DEVICE, 0, RAD_DEV_FRAGMENT},
    {"mr conditional", RAD__K_MRCOND, 0, 0}, {"mri conditional", RAD__K_MRCOND, 0, 0},
    {"mr compatible", RAD__K_MRCOND, 0, 0}, {"mri compatible", RAD__K_MRCOND, 0, 0},
    {"mri safe", RAD__K_MRCOND, 0, 0}, {"mr safe", RAD__K_MRCOND, 0, 0}, {"conditional", RAD__K_MRCOND, 0, 0},
    {"not mr conditional", RAD__K_MRUNSAFE, 0, 0}, {"not mri conditional", RAD__K_MRUNSAFE, 0, 0},
    {"non_conditional", RAD__K_MRUNSAFE, 0, 0}, {"non mr conditional", RAD__K_MRUNSAFE, 0, 0},
    {"non mri conditional", RAD__K_MRUNSAFE, 0, 0}, {"not mri compatible", RAD__K_MRUNSAFE, 0, 0},
    {"not mr compatible", RAD__K_MRUNSAFE, 0, 0}, {"not mri safe", RAD__K_MRUNSAFE, 0, 0},
    {"not mr safe", RAD__K_MRUNSAFE, 0, 0}, {"mr unsafe", RAD__K_MRUNSAFE, 0, 0},
    {"mri unsafe", RAD__K_MRUNSAFE, 0, 0}, {"legacy", RAD__K_MRUNSAFE, 0, 0},
    {"mri incompatible", RAD__K_MRUNSAFE, 0, 0}, {"mr incompatible", RAD__K_MRUNSAFE, 0, 0},
    {"removed", RAD__K_REMOVED, 0, 0}, {"explanted", RAD__K_REMOVED, 0, 0}, {"explant", RAD__K_REMOVED, 0, 0},
    {"extracted", RAD__K_REMOVED, 0, 0}, {"removal of", RAD__K_REMOVED, 0, 0}, {"taken out", RAD__K_REMOVED, 0, 0},
    {"orif", RAD__K_OTHER_IMPLANT, 0, 0}, {"tka", RAD__K_OTHER_IMPLANT, 0, 0},
    {"tha", RAD__K_OTHER_IMPLANT, 0, 0}, {"hip replacement", RAD__K_OTHER_IMPLANT, 0, 0},
    {"knee replacement", RAD__K_OTHER_IMPLANT, 0, 0}, {"stent*", RAD__K_OTHER_IMPLANT, 0, 0},
    {"iud", RAD__K_OTHER_IMPLANT, 0, 0}, {"dental implant*", RAD__K_OTHER_IMPLANT, 0, 0},
    {"sternal wires", RAD__K_OTHER_IMPLANT, 0, 0}, {"hernia mesh", RAD__K_OTHER_IMPLANT, 0, 0},

    // anticoagulants and P2Y12 antiplatelets
    {"apixaban", RAD__K_ANTICOAG, 0, 0}, {"eliquis", RAD__K_ANTICOAG, 0, 0}, {"rivaroxaban", RAD__K_ANTICOAG, 0, 0},
    {"xarelto", RAD__K_ANTICOAG, 0, 0}, {"warfarin", RAD__K_ANTICOAG, 0, 0}, {"coumadin", RAD__K_ANTICOAG, 0, 0},
    {"dabigatran", RAD__K_ANTICOAG, 0, 0}, {"pradaxa", RAD__K_ANTICOAG, 0, 0}, {"edoxaban", RAD__K_ANTICOAG, 0, 0},
    {"savaysa", RAD__K_ANTICOAG, 0, 0}, {"doac", RAD__K_ANTICOAG, 0, 0}, {"noac", RAD__K_ANTICOAG, 0, 0},
    {"enoxaparin", RAD__K_ANTICOAG, 0, 0}, {"lovenox", RAD__K_ANTICOAG, 0, 0},
    {"heparin drip", RAD__K_ANTICOAG, 0, 0}, {"heparin gtt", RAD__K_ANTICOAG, 0, 0},
    {"clopidogrel", RAD__K_ANTICOAG, 0, 0}, {"plavix", RAD__K_ANTICOAG, 0, 0}, {"ticagrelor", RAD__K_ANTICOAG, 0, 0},
    {"brilinta", RAD__K_ANTICOAG, 0, 0}, {"prasugrel", RAD__K_ANTICOAG, 0, 0},
    {"anticoagulated", RAD__K_ANTICOAG, 0, 0}, {"anticoagulation", RAD__K_ANTICOAG, 0, 0},
    {"anticoagulant*", RAD__K_ANTICOAG, 0, 0}, {"blood thinner*", RAD__K_ANTICOAG, 0, 0},

    // decision rules (G12)
    {"nexus", RAD__K_RULE, 0, RAD_RULE_CSPINE}, {"canadian c_spine*", RAD__K_RULE, 0, RAD_RULE_CSPINE},
    {"canadian cervical spine*", RAD__K_RULE, 0, RAD_RULE_CSPINE}, {"ccr", RAD__K_RULE, 0, RAD_RULE_CSPINE},
    {"c_spine rule*", RAD__K_RULE, 0, RAD_RULE_CSPINE}, {"canadian ct head*", RAD__K_RULE, 0, RAD_RULE_HEAD},
    {"canadian head ct*", RAD__K_RULE, 0, RAD_RULE_HEAD}, {"cchr", RAD__K_RULE, 0, RAD_RULE_HEAD},
    {"pecarn", RAD__K_RULE, 0, RAD_RULE_HEAD}, {"perc", RAD__K_RULE, 0, RAD_RULE_PE},
    {"ottawa", RAD__K_OTTAWA, 0, 0}, {"ankle", RAD__K_ANKLE, 0, 0}, {"knee", RAD__K_KNEE, 0, 0},
    {"low risk", RAD__K_LOWPROB, 0, 0}, {"low_risk", RAD__K_LOWPROB, 0, 0},
    {"low probability", RAD__K_LOWPROB, 0, 0}, {"low pretest*", RAD__K_LOWPROB, 0, 0},
    {"low pre_test*", RAD__K_LOWPROB, 0, 0}, {"low clinical prob*", RAD__K_LOWPROB, 0, 0},
    {"pe unlikely", RAD__K_LOWPROB, 0, 0}, {"wells", RAD__K_WELLS, RAD__P_DIGIT, 0},
    {"0/5", RAD__K_QUALNEG, 0, 0}, {"clear", RAD__K_QUALNEG, 0, 0}, {"passed", RAD__K_QUALNEG, 0, 0},
    {"passes", RAD__K_QUALNEG, 0, 0}, {"normal", RAD__K_QUALNEG, 0, 0}, {"undetectable", RAD__K_QUALNEG, 0, 0},
    {"positive", RAD__K_QUALPOS, 0, 0}, {"pos", RAD__K_QUALPOS, 0, 0}, {"high risk", RAD__K_QUALPOS, 0, 0},
    {"fails", RAD__K_QUALPOS, 0, 0}, {"failed", RAD__K_QUALPOS, 0, 0},
    {"d_dimer", RAD__K_DDIMER, RAD__P_DIGIT, 0}, {"dimer", RAD__K_DDIMER, RAD__P_DIGIT, 0},
    {"back pain", RAD__K_BACKPAIN, 0, 0}, {"lbp", RAD__K_BACKPAIN, 0, 0}, {"low back*", RAD__K_BACKPAIN, 0, 0},
    {"lumbago", RAD__K_BACKPAIN, 0, 0}, {"back ache", RAD__K_BACKPAIN, 0, 0}, {"backache", RAD__K_BACKPAIN, 0, 0},
    {"no red flags", RAD__K_NOREDFLAGS, 0, 0}, {"no red flag", RAD__K_NOREDFLAGS, 0, 0},
    {"without red flags", RAD__K_NOREDFLAGS, 0, 0}, {"red flags absent", RAD__K_NOREDFLAGS, 0, 0},
    {"red flags negative", RAD__K_NOREDFLAGS, 0, 0}, {"red flag free", RAD__K_NOREDFLAGS, 0, 0},
    {"red flags none", RAD__K_NOREDFLAGS, 0, 0}, {"red flags: none", RAD__K_NOREDFLAGS, 0, 0},
    {"migraine*", RAD__K_MIGRAINE, 0, 0}, {"tension headache*", RAD__K_MIGRAINE, 0, 0},
    {"tension_type headache*", RAD__K_MIGRAINE, 0, 0}, {"normal neuro*", RAD__K_NORMNEURO, 0, 0},
    {"neuro exam normal", RAD__K_NORMNEURO, 0, 0}, {"neuro exam nl", RAD__K_NORMNEURO, 0, 0},
    {"non_focal", RAD__K_NORMNEURO, 0, 0}, {"neuro intact", RAD__K_NORMNEURO, 0, 0},
    {"neurologically intact", RAD__K_NORMNEURO, 0, 0}, {"neuro exam unremarkable", RAD__K_NORMNEURO, 0, 0},
    {"normal exam", RAD__K_NORMNEURO, 0, 0}, {"nl neuro exam", RAD__K_NORMNEURO, 0, 0},
    {"thunderclap", RAD__K_HA_REDFLAG, 0, 0}, {"worst headache*", RAD__K_HA_REDFLAG, 0, 0},
    {"papill*", RAD__K_HA_REDFLAG, 0, 0}, {"focal deficit*", RAD__K_HA_REDFLAG, 0, 0},
    {"new pattern", RAD__K_HA_REDFLAG, 0, 0}, {"change in pattern", RAD__K_HA_REDFLAG, 0, 0},
    {"immunocompromised", RAD__K_HA_REDFLAG, 0, 0}, {"cancer", RAD__K_HA_REDFLAG, 0, 0},
    {"malignancy", RAD__K_HA_REDFLAG, 0, 0}, {"fall", RAD__K_TRAUMA, 0, 0}, {"fell", RAD__K_TRAUMA, 0, 0},
    {"trauma*", RAD__K_TRAUMA, 0, 0}, {"struck", RAD__K_HITVERB, RAD__P_NEW, 1},
    {"hit", RAD__K_HITVERB, RAD__P_NEW, 0},
    {"hits", RAD__K_HITVERB, RAD__P_NEW, 0}, {"hitting", RAD__K_HITVERB, RAD__P_NEW, 0},
    {"striking", RAD__K_HITVERB, RAD__P_NEW, 0},
    {"bumped", RAD__K_HITVERB, RAD__P_NEW, 0}, {"banged", RAD__K_HITVERB, RAD__P_NEW, 0},
    {"knocked", RAD__K_HITVERB, RAD__P_NEW, 0},
    {"mvc", RAD__K_TRAUMA, 0, 0}, {"assault*", RAD__K_TRAUMA, 0, 0}, {"injur*", RAD__K_TRAUMA, 0, 0},
    {"struck", RAD__K_TRAUMA, RAD__P_OLD, 0}, {"hit head", RAD__K_TRAUMA, RAD__P_OLD, 0},
    {"hit his head", RAD__K_TRAUMA, RAD__P_OLD, 0}, {"hit her head", RAD__K_TRAUMA, RAD__P_OLD, 0},
    {"head injury", RAD__K_TRAUMA, RAD__P_OLD, 0},
    {"head_strike", RAD__K_HEADHIT, RAD__P_NEW, 0}, {"head injur*", RAD__K_HEADHIT, RAD__P_NEW, 0},
    {"head trauma", RAD__K_HEADHIT, RAD__P_NEW, 0}, {"scalp hematoma", RAD__K_HEADHIT, RAD__P_NEW, 0},
    {"scalp haematoma", RAD__K_HEADHIT, RAD__P_NEW, 0}, {"scalp lac*", RAD__K_HEADHIT, RAD__P_NEW, 0},
    {"occipital hematoma", RAD__K_HEADHIT, RAD__P_NEW, 0},
    {"occipital haematoma", RAD__K_HEADHIT, RAD__P_NEW, 0},
    {"occipital lac*", RAD__K_HEADHIT, RAD__P_NEW, 0}, {"occipital abrasion", RAD__K_HEADHIT, RAD__P_NEW, 0},
    {"forehead lac*", RAD__K_HEADHIT, RAD__P_NEW, 0}, {"forehead hematoma", RAD__K_HEADHIT, RAD__P_NEW, 0},
    {"sinusitis", RAD__K_SINUSITIS, 0, 0}, {"rhinosinusitis", RAD__K_SINUSITIS, 0, 0},
    {"uncomplicated", RAD__K_UNCOMPLICATED, 0, 0}, {"acute", RAD__K_ACUTE, 0, 0}, {"chronic", RAD__K_CHRONIC, 0, 0},
    {"recurrent", RAD__K_CHRONIC, 0, 0},

    // context for the alternatives
    {"rlq", RAD__K_CTX, 0, RAD_CTX_RLQ}, {"right lower quadrant", RAD__K_CTX, 0, RAD_CTX_RLQ},
    {"append*", RAD__K_CTX, 0, RAD_CTX_RLQ}, {"appy", RAD__K_CTX, 0, RAD_CTX_RLQ},
    {"mcburney*", RAD__K_CTX, 0, RAD_CTX_RLQ}, {"ruq", RAD__K_CTX, 0, RAD_CTX_RUQ},
    {"right upper quadrant", RAD__K_CTX, 0, RAD_CTX_RUQ}, {"murphy*", RAD__K_CTX, 0, RAD_CTX_RUQ},
    {"gallbladder", RAD__K_CTX, 0, RAD_CTX_RUQ}, {"cholecyst*", RAD__K_CTX, 0, RAD_CTX_RUQ},
    {"biliary", RAD__K_CTX, 0, RAD_CTX_RUQ}, {"gallstone*", RAD__K_CTX, 0, RAD_CTX_RUQ},
    {"cholelith*", RAD__K_CTX, 0, RAD_CTX_RUQ}, {"flank", RAD__K_CTX, 0, RAD_CTX_FLANK},
    {"renal colic", RAD__K_CTX, 0, RAD_CTX_FLANK}, {"kidney stone*", RAD__K_CTX, 0, RAD_CTX_FLANK},
    {"nephrolith*", RAD__K_CTX, 0, RAD_CTX_FLANK}, {"urolith*", RAD__K_CTX, 0, RAD_CTX_FLANK},
    {"cva tender*", RAD__K_CTX, 0, RAD_CTX_FLANK}, {"cva ttp", RAD__K_CTX, 0, RAD_CTX_FLANK},
    {"pelvic pain", RAD__K_CTX, 0, RAD_CTX_PELVIC}, {"adnexal*", RAD__K_CTX, 0, RAD_CTX_PELVIC},
    {"ovarian", RAD__K_CTX, 0, RAD_CTX_PELVIC}, {"vaginal bleed*", RAD__K_CTX, 0, RAD_CTX_PELVIC},
    {"ectopic", RAD__K_CTX, 0, RAD_CTX_PELVIC}, {"leg swelling", RAD__K_CTX, 0, RAD_CTX_LEG},
    {"swollen leg", RAD__K_CTX, 0, RAD_CTX_LEG}, {"calf*", RAD__K_CTX, 0, RAD_CTX_LEG},
    {"dvt", RAD__K_CTX, 0, RAD_CTX_LEG}, {"leg pain", RAD__K_CTX, 0, RAD_CTX_LEG},
    {"leg edema", RAD__K_CTX, 0, RAD_CTX_LEG}, {"leg oedema", RAD__K_CTX, 0, RAD_CTX_LEG},

    // sex and age words
    {"female", RAD__K_SEX, 0, 'F'}, {"woman", RAD__K_SEX, 0, 'F'}, {"lady", RAD__K_SEX, 0, 'F'},
    {"girl", RAD__K_SEX, 0, 'F'}, {"mrs", RAD__K_SEX, 0, 'F'}, {"mrs.", RAD__K_SEX, 0, 'F'},
    {"miss", RAD__K_SEX, 0, 'F'}, {"she", RAD__K_SEX, 0, 'F'}, {"her", RAD__K_SEX, 0, 'F'},
    {"male", RAD__K_SEX, 0, 'M'}, {"man", RAD__K_SEX, 0, 'M'}, {"gentleman", RAD__K_SEX, 0, 'M'},
    {"boy", RAD__K_SEX, 0, 'M'}, {"mr.", RAD__K_SEX, 0, 'M'}, {"he", RAD__K_SEX, 0, 'M'},
    {"his", RAD__K_SEX, 0, 'M'}, {"him", RAD__K_SEX, 0, 'M'}, {"sex", RAD__K_SEXFIELD, 0, 0},
    {"gender", RAD__K_SEXFIELD, 0, 0}, {"age", RAD__K_AGEWORD, 0, 0}, {"aged", RAD__K_AGEWORD, 0, 0},
};
#undef RAD__PRE
#undef RAD__POST
#undef RAD__LIST
#define RAD__NUM_CUES ((int)(sizeof rad__cues / sizeof rad__cues[0]))

// ---------------------------------------------------------------------------------------------------------------
// Text helpers (ASCII case folding; bytes >= 128 are neither letters nor separators).

static int rad__lc(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }
static int rad__alnum(int c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
static int rad__digit(int c) { return c >= '0' && c <= '9'; }
static int rad__sep(int c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '-'; }
// Clause boundary for negation scope and rule qualifiers. A '.' between digits is a decimal point.
static int rad__clause_end(const char *s, size_t n, size_t i) {
    int c = (unsigned char)s[i];
    if (c == ';' || c == '|' || c == '\n' || c == '!' || c == '?') return 1;
    if (c == '.') {
        int prev = i > 0 ? (unsigned char)s[i - 1] : ' ', next = i + 1 < n ? (unsigned char)s[i + 1] : ' ';
        if (rad__digit(prev) && rad__digit(next)) return 0;
        // abbreviations with inner dots ("y.o.", "p.o.") end nothing: a letter right after the dot
        if (rad__alnum(next)) return 0;
        return 1;
    }
    return 0;
}

// Matches pattern p at position i of s[0..n). Returns the end position or 0 when it does not match.
static size_t rad__match(const char *s, size_t n, size_t i, const char *p, unsigned flags) {
    size_t j = i;
    for (; *p; p++) {
        if (*p == '*' && p[1] == 0) return j > i ? j : 0;     // prefix pattern: no boundary check
        if (*p == ' ' || *p == '_') {
            size_t k = j;
            while (k < n && rad__sep((unsigned char)s[k])) {
                if ((flags & RAD__P_LINE) && (s[k] == '\n' || s[k] == '\r')) return 0;
                k++;
            }
            if (*p == ' ' && k == j) return 0;
            j = k;
            continue;
        }
        if (j >= n || rad__lc((unsigned char)s[j]) != (unsigned char)*p) return 0;
        j++;
    }
    if (j < n) {
        int c = (unsigned char)s[j];
        if (rad__alnum(c) && !((flags & RAD__P_DIGIT) && rad__digit(c))) return 0;
        // "+" and "#" glued to a pattern belong to the word only when the pattern says so
    }
    return j;
}

typedef struct rad__hit {
    int            start, end;  // byte range in the note
    unsigned char  kind;
    unsigned char  flags;
    unsigned short val;
} rad__hit;

typedef struct rad__doc {
    const char *s;
    size_t      n;
    rad__hit   *hits;
    int         nhits;
    int         overflow;
    int         mask_table;   // scan with the generator's cue table (RAD__P_OLD in, RAD__P_NEW out): rad_cue_mask
} rad__doc;

// First-letter buckets of the cue table, computed on the fly in a small stack array (no static state).
static int rad__first_index(const rad__cue *c) { return (unsigned char)c->pat[0]; }

static int rad__word_at(const char *s, size_t n, size_t i, const char *w);

// The end of the first of `want` (a NULL-terminated list of words) among the next `words` words after position i,
// within `bytes` bytes and the same clause (words apart by spaces, '-' or '/' only); 0 when none is there.
static size_t rad__word_ahead(const char *s, size_t n, size_t i, int words, size_t bytes, const char *const *want) {
    size_t j = i;
    for (int w = 0; w < words && j < n && j - i < bytes; w++) {
        while (j < n && (s[j] == ' ' || s[j] == '-' || s[j] == '/')) j++;
        for (const char *const *x = want; *x; x++) {
            size_t L = (size_t)rad__word_at(s, n, j, *x);
            if (L) return j + L;
        }
        if (j >= n || !rad__alnum((unsigned char)s[j])) break;   // the clause ends
        while (j < n && rad__alnum((unsigned char)s[j])) j++;
    }
    return 0;
}

// One pass over word starts: at each, the longest cue that matches; then continue after it.
static void rad__scan(rad__doc *d, rad__hit *buf, int cap) {
    const char *s = d->s;
    size_t n = d->n, i = 0;
    // bucket: for each first byte, the cue indexes that start with it (a small sort of the table)
    short order[RAD__NUM_CUES];
    short start[257];
    int counts[256];
    memset(counts, 0, sizeof counts);
    for (int k = 0; k < RAD__NUM_CUES; k++) counts[rad__first_index(&rad__cues[k])]++;
    start[0] = 0;
    for (int b = 0; b < 256; b++) start[b + 1] = (short)(start[b] + counts[b]);
    {
        short fill[256];
        for (int b = 0; b < 256; b++) fill[b] = start[b];
        for (int k = 0; k < RAD__NUM_CUES; k++) order[fill[rad__first_index(&rad__cues[k])]++] = (short)k;
    }
    d->hits = buf;
    d->nhits = 0;
    d->overflow = 0;
    while (i < n) {
        int c = (unsigned char)s[i];
        if (!rad__alnum(c) || (i > 0 && rad__alnum((unsigned char)s[i - 1]))) { i++; continue; }
        int b = rad__lc(c), best = -1;
        size_t best_end = 0;
        for (int q = start[b]; q < start[b + 1]; q++) {
            const rad__cue *cue = &rad__cues[order[q]];
            if (cue->flags & (d->mask_table ? RAD__P_NEW : RAD__P_OLD)) continue;
            size_t e = rad__match(s, n, i, cue->pat, cue->flags);
            if (e > best_end) { best_end = e; best = order[q]; }
        }
        if (best < 0) {
            while (i < n && rad__alnum((unsigned char)s[i])) i++;
            continue;
        }
        if (d->nhits == cap) { d->overflow = 1; return; }
        rad__hit *h = &buf[d->nhits++];
        h->start = (int)i;
        h->end = (int)best_end;
        h->kind = rad__cues[best].kind;
        h->flags = rad__cues[best].flags;
        h->val = rad__cues[best].val;
        i = best_end;
        if (h->kind == RAD__K_CLIPPED) {   // "clipped R MCA aneurysm", "clipped left PCOM aneurysm 1996"
            static const char *const aneurysm[] = {"aneurysm", "aneurysms", NULL};
            size_t e = rad__word_ahead(s, n, i, 4, 32, aneurysm);
            if (e) {
                h->kind = RAD__K_DEVICE;
                h->end = (int)e;
                i = e;
            } else d->nhits--;   // no aneurysm: not a cue
        } else if (h->kind == RAD__K_HITVERB) {   // "hit the back of his head on the nightstand", "struck head"
            static const char *const head[] = {"head", "occiput", "forehead", "scalp", NULL};
            size_t e = rad__word_ahead(s, n, i, 6, 48, head);
            if (e) {
                h->kind = RAD__K_HEADHIT;
                h->end = (int)e;
                i = e;
            } else if (h->val) h->kind = RAD__K_TRAUMA;   // "struck" without a head: trauma, as before
            else d->nhits--;
        }
        // a prefix pattern may stop inside a word: skip the rest of it
        while (i < n && i > 0 && rad__alnum((unsigned char)s[i - 1]) && rad__alnum((unsigned char)s[i]) &&
               !rad__digit((unsigned char)s[i]))
            i++;
    }
}

// Is there a clause boundary in s[a..b)?
static int rad__boundary_between(const rad__doc *d, int a, int b) {
    for (int i = a; i < b; i++)
        if (rad__clause_end(d->s, d->n, (size_t)i)) return 1;
    return 0;
}
static int rad__char_between(const rad__doc *d, int a, int b, int ch) {
    for (int i = a; i < b; i++)
        if (d->s[i] == ch) return 1;
    return 0;
}

// Pre-negation: a K_NEG with PRE before hit k, in the same clause, not across a comma unless a list negator, not
// across a K_BREAK, not out of a parenthesis it was in.
static int rad__post_negated(const rad__doc *d, int k, unsigned long long transparent);
static int rad__pre_negated_scope(const rad__doc *d, int k, int allow_list) {
    const rad__hit *h = &d->hits[k];
    for (int j = k - 1; j >= 0; j--) {
        const rad__hit *g = &d->hits[j];
        if (h->start - g->end > 80) return 0;
        if (rad__boundary_between(d, g->end, h->start)) return 0;
        if (g->kind == RAD__K_BREAK) return 0;
        if (g->kind == RAD__K_NEG && (g->val & RAD__NEG_PRE)) {
            int comma = rad__char_between(d, g->end, h->start, ',');
            int closed = rad__char_between(d, g->end, h->start, ')');
            if (closed) return 0;
            if (comma && !(allow_list && (g->val & RAD__NEG_LIST))) return 0;
            return 1;
        }
    }
    return 0;
}
static int rad__pre_negated(const rad__doc *d, int k) { return rad__pre_negated_scope(d, k, 1); }
// Facts that add risk (devices, contrast reactions, dialysis, kidney injury, anticoagulants, pregnancy, renal risk
// factors) are not negated across a comma even by a list negator: "no h/o contrast reaction, AICD" keeps the AICD.
// A missed negation only costs a flag; a wrong one would hide a contraindication.
static int rad__negated_local(const rad__doc *d, int k) {
    return rad__pre_negated_scope(d, k, 0) || rad__post_negated(d, k, 0);
}

// Sets of cue kinds are 64-bit masks, RAD__BIT(kind) per member; there are more than 64 kinds (RAD__K_COUNT), so
// only kinds below 64 can be members (checked below for the ones used) and rad__kind_in answers 0 for the rest
// (a shift by 64 or more is undefined behaviour; fuzz_radiology_rules found one).
#define RAD__BIT(k) (1ull << (k))
static int rad__kind_in(unsigned long long set, int kind) { return kind < 64 && (set >> kind & 1ull); }
typedef char rad__mask_kinds_below_64[(RAD__K_IOD < 64 && RAD__K_GAD < 64 && RAD__K_CONTRAST < 64 &&
                                       RAD__K_MRCOND < 64 && RAD__K_MRUNSAFE < 64 && RAD__K_DEVICE < 64) ? 1 : -1];

// Post-negation: a K_NEG with POST after hit k, within 40 bytes, same clause, no comma, passing over hits whose
// kind is in the set `transparent`.
static int rad__post_negated(const rad__doc *d, int k, unsigned long long transparent) {
    const rad__hit *h = &d->hits[k];
    for (int j = k + 1; j < d->nhits; j++) {
        const rad__hit *g = &d->hits[j];
        if (g->start - h->end > 40) return 0;
        if (rad__boundary_between(d, h->end, g->start)) return 0;
        if (rad__char_between(d, h->end, g->start, ',')) return 0;
        if (g->kind == RAD__K_NEG && (g->val & RAD__NEG_POST)) return 1;
        if (rad__kind_in(transparent, g->kind)) continue;
        return 0;
    }
    return 0;
}

static int rad__negated(const rad__doc *d, int k) { return rad__pre_negated(d, k) || rad__post_negated(d, k, 0); }

// Numbers: skips filler after position i ("is", "of", ":", "=", "~", "(") and reads one number with an optional
// comparison (<, >, ≤, ≥). Returns the end position, 0 if no number within max bytes.
static int rad__word_at(const char *s, size_t n, size_t i, const char *w) {
    size_t k = 0;
    while (w[k]) {
        if (i + k >= n || rad__lc((unsigned char)s[i + k]) != (unsigned char)w[k]) return 0;
        k++;
    }
    return (i + k >= n || !rad__alnum((unsigned char)s[i + k])) ? (int)k : 0;
}
static size_t rad__number(const char *s, size_t n, size_t i, size_t max, float *val, int *cmp) {
    static const char *const fill[] = {"is", "of", "was", "now", "approx", "about", "at", "today", "level", "value",
                                       "est", "estimated", "around", "only", "currently", "recently", "baseline",
                                       "measured", "result", "ml/min", "latest", "last", "from", "up", "to", "then",
                                       "down", "score", "total"};
    size_t lim = i + max < n ? i + max : n;
    *cmp = 0;
    while (i < lim) {
        int c = (unsigned char)s[i];
        if (c == ' ' || c == '\t' || c == ':' || c == '=' || c == '~' || c == '(' || c == ',' || c == '-' ||
            c == '@') { i++; continue; }
        if (c == '<') { *cmp = -1; i++; continue; }
        if (c == '>' && i > 0 && s[i - 1] == '-') { i++; continue; }                 // "->" is an arrow
        if (c == '>') { *cmp = 1; i++; continue; }
        if (c == 0xE2 && i + 2 < n && (unsigned char)s[i + 1] == 0x89) {      // ≤ ≥
            *cmp = (unsigned char)s[i + 2] == 0xA4 ? -1 : 1;
            i += 3;
            continue;
        }
        if (c == 0xE2 && i + 2 < n && (unsigned char)s[i + 1] == 0x86 && (unsigned char)s[i + 2] == 0x92) {
            i += 3;                                                          // →
            continue;
        }
        if (rad__alnum(c) && !rad__digit(c)) {
            int skipped = 0;
            for (size_t w = 0; w < sizeof fill / sizeof fill[0]; w++) {
                int len = rad__word_at(s, n, i, fill[w]);
                if (len) { i += (size_t)len; skipped = 1; break; }
            }
            if (!skipped) {
                int len = rad__word_at(s, n, i, "less than");
                if (!len) len = rad__word_at(s, n, i, "under");
                if (!len) len = rad__word_at(s, n, i, "below");
                if (!len) len = rad__word_at(s, n, i, "lt");
                if (len) { *cmp = -1; i += (size_t)len; continue; }
                len = rad__word_at(s, n, i, "over");
                if (!len) len = rad__word_at(s, n, i, "above");
                if (!len) len = rad__word_at(s, n, i, "gt");
                if (!len) len = rad__word_at(s, n, i, "greater than");
                if (len) { *cmp = 1; i += (size_t)len; continue; }
                return 0;
            }
            continue;
        }
        if (rad__digit(c) || (c == '.' && i + 1 < n && rad__digit((unsigned char)s[i + 1]))) {
            double v = 0.0, scale = 0.1;
            int seen_dot = 0;
            while (i < n) {
                int e = (unsigned char)s[i];
                if (rad__digit(e)) {
                    if (seen_dot) { v += (e - '0') * scale; scale *= 0.1; }
                    else v = v * 10.0 + (e - '0');
                } else if (e == '.' && !seen_dot && i + 1 < n && rad__digit((unsigned char)s[i + 1])) {
                    seen_dot = 1;
                } else {
                    break;
                }
                i++;
            }
            *val = (float)v;
            return i;
        }
        return 0;
    }
    return 0;
}

// Unit right after a creatinine number: 1 = µmol/L, 2 = mg/dL, 0 none. Also returns the position after it.
static int rad__creat_unit(const char *s, size_t n, size_t *pi) {
    size_t i = *pi;
    while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
    if (i + 1 < n && ((unsigned char)s[i] == 0xC2 || (unsigned char)s[i] == 0xCE) &&
        ((unsigned char)s[i + 1] == 0xB5 || (unsigned char)s[i + 1] == 0xBC)) {  // µ (U+00B5) or μ (U+03BC)
        *pi = i + 2;
        return 1;
    }
    static const char *const umol[] = {"umol", "micromol", "mcmol", "micromole"};
    for (size_t w = 0; w < 4; w++) {
        size_t k = 0;
        while (umol[w][k] && i + k < n && rad__lc((unsigned char)s[i + k]) == (unsigned char)umol[w][k]) k++;
        if (!umol[w][k]) { *pi = i + k; return 1; }
    }
    if (i + 1 < n && rad__lc((unsigned char)s[i]) == 'm' && rad__lc((unsigned char)s[i + 1]) == 'g') {
        *pi = i + 2;
        return 2;
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Extraction

RADDEF void rad_facts_clear(rad_facts *f) {
    memset(f, 0, sizeof *f);
    f->age = -1;
    f->egfr = -1.0f;
    f->creat = -1.0f;
}

static float rad__to_mgdl(float v, int unit) {
    if (unit == 1 || (unit == 0 && v > 20.0f)) return v / 88.4f;
    return v;
}

// Age and sex from numbers: "67F", "67 yo F", "67-year-old woman", "67/F", "F/67", "age 67", "Age: 67".
static void rad__age_sex(const rad__doc *d, rad_facts *f) {
    const char *s = d->s;
    size_t n = d->n;
    int age = -1;
    char sex = 0;
    for (size_t i = 0; i < n && age < 0; i++) {
        if (!rad__digit((unsigned char)s[i]) || (i > 0 && rad__alnum((unsigned char)s[i - 1]))) continue;
        size_t j = i;
        int v = 0;
        while (j < n && rad__digit((unsigned char)s[j]) && j - i < 4) v = v * 10 + (s[j++] - '0');
        if (j < n && (rad__digit((unsigned char)s[j]) || (s[j] == '.' && j + 1 < n && rad__digit((unsigned char)s[j + 1]))))
            continue;
        if (v > 110) continue;
        // preceded by "T", "temp" (temperatures in F) or "x" (durations)? not an age
        size_t b = i;
        while (b > 0 && (s[b - 1] == ' ' || s[b - 1] == ':')) b--;
        if (b > 0) {
            size_t w = b;
            while (w > 0 && rad__alnum((unsigned char)s[w - 1])) w--;
            size_t wl = b - w;
            char word[8];
            if (wl > 0 && wl < sizeof word) {
                for (size_t q = 0; q < wl; q++) word[q] = (char)rad__lc((unsigned char)s[w + q]);
                word[wl] = 0;
                if (!strcmp(word, "t") || !strcmp(word, "temp") || !strcmp(word, "tmax") || !strcmp(word, "hr") ||
                    !strcmp(word, "bp") || !strcmp(word, "rr") || !strcmp(word, "x"))
                    continue;
                if (!strcmp(word, "age") || !strcmp(word, "aged")) { age = v; }
            }
            // "F/67", "M/67"
            if (age < 0 && i >= 2 && s[i - 1] == '/' && (rad__lc((unsigned char)s[i - 2]) == 'f' ||
                                                         rad__lc((unsigned char)s[i - 2]) == 'm') &&
                (i < 3 || !rad__alnum((unsigned char)s[i - 3]))) {
                age = v;
                sex = rad__lc((unsigned char)s[i - 2]) == 'f' ? 'F' : 'M';
                break;
            }
        }
        if (age >= 0) break;
        // after the number
        size_t k = j;
        static const char *const yo[] = {"_years_old", "_year_old", "_yrs_old", "_yr_old", "_y/o", "_yo", "_y.o.",
                                         "_y.o", "_yrs", "_yr", "_y", "_years", "_year"};
        size_t after = 0;
        int strong = 0;
        for (size_t w = 0; w < sizeof yo / sizeof yo[0]; w++) {
            size_t e = rad__match(s, n, k, yo[w], 0);
            if (e) { after = e; strong = (w <= 7); break; }
        }
        if (after) {
            // weak forms ("67 y", "67 yrs") need a sex word right after or a "old"; "2 yrs ago" is not an age
            size_t e = after;
            while (e < n && (s[e] == ' ' || s[e] == ',' || s[e] == '-')) e++;
            int c = e < n ? rad__lc((unsigned char)s[e]) : 0;
            int sexword = 0;
            char sx = 0;
            static const char *const fw[] = {"female", "woman", "lady", "girl", "f"};
            static const char *const mw[] = {"male", "man", "gentleman", "boy", "m"};
            for (size_t w = 0; w < 5 && !sx; w++) {
                if (rad__word_at(s, n, e, fw[w])) sx = 'F';
                else if (rad__word_at(s, n, e, mw[w])) sx = 'M';
            }
            sexword = sx != 0;
            (void)c;
            if (strong || sexword) {
                age = v;
                if (sx) sex = sx;
                break;
            }
            continue;
        }
        // "67F", "67M", "67/F", "67 F," at the start of a field
        if (k < n) {
            int c = rad__lc((unsigned char)s[k]);
            size_t e = k;
            if (c == '/' && k + 1 < n) { e = k + 1; c = rad__lc((unsigned char)s[e]); }
            else if (c == ' ' && k + 1 < n && (i == 0 || s[i - 1] == '(')) { e = k + 1; c = rad__lc((unsigned char)s[e]); }
            if ((c == 'f' || c == 'm') && (e + 1 >= n || !rad__alnum((unsigned char)s[e + 1]))) {
                age = v;
                sex = c == 'f' ? 'F' : 'M';
                break;
            }
            // "67 year" handled above; "67yF"
            if (c == 'y' && e + 2 <= n && e + 1 < n && (rad__lc((unsigned char)s[e + 1]) == 'f' ||
                                                        rad__lc((unsigned char)s[e + 1]) == 'm') &&
                (e + 2 >= n || !rad__alnum((unsigned char)s[e + 2]))) {
                age = v;
                sex = rad__lc((unsigned char)s[e + 1]) == 'f' ? 'F' : 'M';
                break;
            }
        }
    }
    // sex from "Sex: F" fields and words
    if (!sex) {
        for (int k = 0; k < d->nhits && !sex; k++) {
            const rad__hit *h = &d->hits[k];
            if (h->kind == RAD__K_SEXFIELD) {
                size_t e = (size_t)h->end;
                while (e < n && (s[e] == ' ' || s[e] == ':' || s[e] == '=' || s[e] == '-')) e++;
                if (rad__word_at(s, n, e, "f") || rad__word_at(s, n, e, "female")) sex = 'F';
                else if (rad__word_at(s, n, e, "m") || rad__word_at(s, n, e, "male")) sex = 'M';
            }
        }
        for (int k = 0; k < d->nhits && !sex; k++)
            if (d->hits[k].kind == RAD__K_SEX) sex = (char)d->hits[k].val;
    }
    f->age = age;
    f->sex = sex;
}

// Reaction association inside list items (bounded by , ; . | newline outside parentheses).
static void rad__item_bounds(const rad__doc *d, int pos, int *a, int *b) {
    const char *s = d->s;
    int n = (int)d->n, depth = 0, i;
    for (i = pos - 1; i >= 0; i--) {
        char c = s[i];
        if (c == ')') depth++;
        else if (c == '(') { if (depth > 0) depth--; }
        else if (depth == 0 && (c == ',' || rad__clause_end(s, d->n, (size_t)i))) break;
    }
    *a = i + 1;
    depth = 0;
    for (i = pos; i < n; i++) {
        char c = s[i];
        if (c == '(') depth++;
        else if (c == ')') { if (depth > 0) depth--; }
        else if (depth == 0 && (c == ',' || rad__clause_end(s, d->n, (size_t)i))) break;
    }
    *b = i;
}

static int rad__is_reaction_kind(int kind) {
    return kind == RAD__K_REACT || kind == RAD__K_ALLERGY || kind == RAD__K_PREMED;
}

static void rad__reactions(const rad__doc *d, rad_facts *f) {
    for (int k = 0; k < d->nhits; k++) {
        const rad__hit *c = &d->hits[k];
        if (c->kind != RAD__K_IOD && c->kind != RAD__K_GAD && c->kind != RAD__K_CONTRAST) continue;
        int cls = c->kind == RAD__K_GAD ? RAD_CLASS_GAD : RAD_CLASS_IOD;
        int a, b;
        rad__item_bounds(d, c->start, &a, &b);
        // A list negator stops at a comma here, as for the other facts that add risk: "denies pregnancy, severe
        // reaction to CT contrast" keeps the reaction. A missed negation costs a flag; a wrong one would hide a
        // contraindication.
        int contrast_neg = rad__pre_negated_scope(d, k, 0);
        int sev = 0, found = 0, neg_pair = 0;
        for (int j = 0; j < d->nhits; j++) {
            const rad__hit *r = &d->hits[j];
            if (r->start < a || r->end > b || !rad__is_reaction_kind(r->kind)) continue;
            // no other allergen or distractor between the contrast word and the reaction word
            int lo = r->start < c->start ? j : k, hi = r->start < c->start ? k : j, blocked = 0;
            for (int q = lo + 1; q < hi; q++) {
                int kk = d->hits[q].kind;
                if (kk == RAD__K_ALLERGEN || kk == RAD__K_DISTRACT) blocked = 1;
            }
            if (blocked) continue;
            int rneg = rad__pre_negated_scope(d, j, 0) || rad__post_negated(d, j, RAD__BIT(RAD__K_IOD) |
                                                                       RAD__BIT(RAD__K_GAD) |
                                                                       RAD__BIT(RAD__K_CONTRAST));
            if (rneg || contrast_neg) { neg_pair = 1; continue; }
            int v = r->kind == RAD__K_PREMED ? (int)RAD_REACT_MILD : (int)r->val;
            found = 1;
            if (v == RAD_REACT_SEVERE) sev = RAD_REACT_SEVERE;
            else if (v == RAD_REACT_MILD && sev != RAD_REACT_SEVERE) sev = RAD_REACT_MILD;
            else if (v == RAD_REACT_UNKNOWN && sev == 0) sev = RAD_REACT_UNKNOWN;
        }
        if (!found && !contrast_neg && !neg_pair) {
            // a contrast word inside an "Allergies:" list of the same clause
            for (int j = k - 1; j >= 0; j--) {
                const rad__hit *g = &d->hits[j];
                if (rad__boundary_between(d, g->end, c->start)) break;
                if (g->kind == RAD__K_ALLERGY && !rad__pre_negated(d, j)) {
                    // header: "allergies:" / "allergic to" / "allergy -" followed by the list
                    found = 1;
                    sev = RAD_REACT_UNKNOWN;
                    // severity words in the contrast's own item
                    for (int q = k + 1; q < d->nhits && d->hits[q].start < b; q++)
                        if (d->hits[q].kind == RAD__K_REACT && d->hits[q].val == RAD_REACT_SEVERE) sev = RAD_REACT_SEVERE;
                        else if (d->hits[q].kind == RAD__K_REACT && d->hits[q].val == RAD_REACT_MILD &&
                                 sev != RAD_REACT_SEVERE) sev = RAD_REACT_MILD;
                    break;
                }
                if (g->kind == RAD__K_NEG && (g->val & RAD__NEG_PRE) &&
                    !rad__char_between(d, g->end, c->start, ',')) break;
            }
        }
        if (neg_pair && !found) f->distractors |= RAD_DIS_NEG_ALLERGY;
        if (found && sev > f->reaction[cls]) f->reaction[cls] = (unsigned char)sev;
    }
}

static int rad__roman_or_digit(const char *s, size_t n, size_t i, size_t *end) {
    static const char *const rom[] = {"iv", "v", "iii", "ii", "i"};
    static const int rv[] = {4, 5, 3, 2, 1};
    if (i < n && s[i] >= '1' && s[i] <= '5') {
        *end = i + 1;
        return s[i] - '0';
    }
    for (int w = 0; w < 5; w++) {
        int len = rad__word_at(s, n, i, rom[w]);
        if (len) { *end = i + (size_t)len; return rv[w]; }
    }
    return 0;
}

// Durations in weeks: "x 3 wks", "for 10 days", "2 weeks", "6/52". Returns the longest duration in weeks found
// in s[a..b), or -1 when there is none.
static float rad__max_duration_weeks(const rad__doc *d, int a, int b) {
    const char *s = d->s;
    float best = -1.0f;
    for (int i = a; i < b; i++) {
        if (!rad__digit((unsigned char)s[i])) continue;
        if (i > 0 && rad__alnum((unsigned char)s[i - 1]) && rad__lc((unsigned char)s[i - 1]) != 'x') continue;
        int j = i, v = 0;
        for (; j < b && rad__digit((unsigned char)s[j]); j++)   // the whole run; the value saturates (no overflow)
            if (v < 1000000) v = v * 10 + (s[j] - '0');
        size_t e = (size_t)j;
        while (e < d->n && (s[e] == ' ' || s[e] == '-')) e++;
        float w = -1.0f;
        static const char *const dw[] = {"days", "day", "d", "weeks", "week", "wks", "wk", "w",
                                         "months", "month", "mos", "mo", "years", "year", "yrs", "yr"};
        static const float mul[] = {1.0f / 7, 1.0f / 7, 1.0f / 7, 1, 1, 1, 1, 1,
                                    4.3f, 4.3f, 4.3f, 4.3f, 52, 52, 52, 52};
        for (int q = 0; q < 16; q++) {
            if (rad__word_at(s, d->n, e, dw[q])) { w = (float)v * mul[q]; break; }
        }
        // "3 yrs old" is an age
        if (w >= 52.0f) {
            size_t g = e;
            while (g < d->n && rad__alnum((unsigned char)s[g])) g++;
            while (g < d->n && (s[g] == ' ' || s[g] == '-')) g++;
            if (rad__word_at(s, d->n, g, "old")) w = -1.0f;
        }
        if (w > best) best = w;
        i = j;
    }
    return best;
}

// Qualifier of a named decision rule within its clause: -1 negative, +1 positive, 0 none.
static int rad__rule_qualifier(const rad__doc *d, int k) {
    const rad__hit *h = &d->hits[k];
    int q = 0;
    for (int j = k + 1; j < d->nhits; j++) {
        const rad__hit *g = &d->hits[j];
        if (g->start - h->end > 48 || rad__boundary_between(d, h->end, g->start)) break;
        if (g->kind == RAD__K_QUALPOS) return 1;
        if (g->kind == RAD__K_QUALNEG || g->kind == RAD__K_LOWPROB ||
            (g->kind == RAD__K_NEG && (g->val & RAD__NEG_POST)))
            q = -1;
        if (g->kind == RAD__K_NEG && (g->val & RAD__NEG_PRE) && !(g->val & RAD__NEG_POST)) q = -1;  // "no criteria"
        if (g->kind == RAD__K_RULE || g->kind == RAD__K_OTTAWA) break;
    }
    if (q) return q;
    for (int j = k - 1; j >= 0; j--) {
        const rad__hit *g = &d->hits[j];
        if (h->start - g->end > 24 || rad__boundary_between(d, g->end, h->start)) break;
        if (g->kind == RAD__K_QUALPOS) return 1;
        if (g->kind == RAD__K_QUALNEG || g->kind == RAD__K_LOWPROB || g->kind == RAD__K_NEG) return -1;
    }
    return 0;
}

static void rad__rules(const rad__doc *d, rad_facts *f) {
    int ddimer_neg = 0, lowprob = 0, backpain = 0, noredflags = 0, migraine = 0, normneuro = 0, ha_red = 0;
    int trauma = 0, sinusitis = 0, uncomplicated = 0, chronic = 0, acute = 0, ankle = 0, knee = 0;
    int ottawa_pending = 0;
    float bp_weeks = -1.0f;
    for (int k = 0; k < d->nhits; k++) {
        const rad__hit *h = &d->hits[k];
        switch (h->kind) {
        case RAD__K_RULE:
            if (rad__rule_qualifier(d, k) < 0) f->rule_negative |= h->val;
            break;
        case RAD__K_OTTAWA: {
            if (rad__rule_qualifier(d, k) >= 0) break;
            // the joint: the next hit ("Ottawa ankle rules negative"), else any ankle/knee word of the note
            unsigned dom = 0;
            for (int j = k + 1; j < d->nhits && j <= k + 2; j++) {
                if (d->hits[j].kind == RAD__K_ANKLE) dom = RAD_RULE_ANKLE;
                if (d->hits[j].kind == RAD__K_KNEE) dom = RAD_RULE_KNEE;
            }
            if (dom) f->rule_negative |= dom;
            else ottawa_pending = 1;                    // resolved after the loop
            break;
        }
        case RAD__K_DDIMER: {
            // "D-dimer neg/negative/normal/<0.5"
            if (rad__post_negated(d, k, 0)) { ddimer_neg = 1; break; }
            size_t e = (size_t)h->end;
            float v;
            int cmp;
            size_t ne = rad__number(d->s, d->n, e, 16, &v, &cmp);
            if (ne && ((cmp < 0 && v <= 0.5f) || (cmp == 0 && v < 0.5f))) ddimer_neg = 1;
            for (int j = k + 1; j < d->nhits && j <= k + 2; j++)
                if (d->hits[j].kind == RAD__K_QUALNEG && !rad__boundary_between(d, h->end, d->hits[j].start) &&
                    !rad__char_between(d, h->end, d->hits[j].start, ',') && d->hits[j].start - h->end < 24)
                    ddimer_neg = 1;
            break;
        }
        case RAD__K_WELLS: {
            float v;
            int cmp;
            size_t ne = rad__number(d->s, d->n, (size_t)h->end, 12, &v, &cmp);
            if (ne && ((cmp <= 0 && v <= 4.0f) || (cmp < 0 && v <= 4.5f))) lowprob = 1;
            if (!ne && rad__rule_qualifier(d, k) < 0) lowprob = 1;
            break;
        }
        case RAD__K_LOWPROB:
            if (!rad__pre_negated(d, k)) lowprob = 1;
            break;
        case RAD__K_BACKPAIN: {
            // the duration that counts is the one in the back-pain sentence, not elsewhere in the note
            int a = h->start, b = h->end;
            while (a > 0 && !rad__clause_end(d->s, d->n, (size_t)(a - 1))) a--;
            while (b < (int)d->n && !rad__clause_end(d->s, d->n, (size_t)b)) b++;
            float w = rad__max_duration_weeks(d, a, b);
            if (w > bp_weeks) bp_weeks = w;
            backpain = 1;
            break;
        }
        case RAD__K_NOREDFLAGS: noredflags = 1; break;
        case RAD__K_MIGRAINE:
            if (!rad__pre_negated(d, k)) migraine = 1;
            break;
        case RAD__K_NORMNEURO:
            if (!rad__pre_negated(d, k)) normneuro = 1;
            break;
        case RAD__K_HA_REDFLAG:
            if (!rad__negated(d, k)) ha_red = 1;
            break;
        case RAD__K_TRAUMA:
        case RAD__K_HEADHIT:
            if (!rad__negated(d, k)) trauma = 1;
            break;
        case RAD__K_SINUSITIS: sinusitis = 1; break;
        case RAD__K_UNCOMPLICATED: uncomplicated = 1; break;
        case RAD__K_CHRONIC: chronic = 1; break;
        case RAD__K_ACUTE: acute = 1; break;
        case RAD__K_ANKLE: ankle = 1; break;
        case RAD__K_KNEE: knee = 1; break;
        default: break;
        }
    }
    // an Ottawa rule without its joint named next to it: the joint the note mentions (ankle wins a tie)
    if (ottawa_pending) {
        if (ankle) f->rule_negative |= RAD_RULE_ANKLE;
        else if (knee) f->rule_negative |= RAD_RULE_KNEE;
    }
    if (ddimer_neg && lowprob) f->rule_negative |= RAD_RULE_PE;
    if (backpain && noredflags) {
        float w = bp_weeks;
        if ((w >= 0.0f && w < 6.0f) || (w < 0.0f && acute && !chronic)) f->rule_negative |= RAD_RULE_LBP;
    }
    if (migraine && normneuro && !ha_red && !trauma) f->rule_negative |= RAD_RULE_HEADACHE;
    if (sinusitis && uncomplicated && !chronic) f->rule_negative |= RAD_RULE_SINUS;
}

RADDEF float rad_egfr_ckd_epi(float creat, int age, char sex) {
    if (creat <= 0.0f || age < 18 || (sex != 'F' && sex != 'M')) return -1.0f;
    double k = sex == 'F' ? 0.7 : 0.9, a = sex == 'F' ? -0.241 : -0.302, r = creat / k;
    double e = 142.0 * pow(r < 1.0 ? r : 1.0, a) * pow(r > 1.0 ? r : 1.0, -1.200) * pow(0.9938, (double)age);
    if (sex == 'F') e *= 1.012;
    return (float)e;
}

// 1 when the word right before position i (skipping spaces and "(" / "a") is w, e.g. "no" in "(no hCG in chart)".
static int rad__word_before_is(const char *s, size_t i, const char *w) {
    size_t wl = strlen(w);
    for (int pass = 0; pass < 2; pass++) {
        while (i > 0 && (s[i - 1] == ' ' || s[i - 1] == '(')) i--;
        size_t e = i;
        while (i > 0 && rad__alnum((unsigned char)s[i - 1])) i--;
        if (e - i == wl) {
            size_t k = 0;
            while (k < wl && rad__lc((unsigned char)s[i + k]) == (unsigned char)w[k]) k++;
            if (k == wl) return 1;
        }
        if (!(e - i == 1 && rad__lc((unsigned char)s[i]) == 'a')) return 0;   // skip one article: "without a"
    }
    return 0;
}

// G/P notation followed by a gestational age ("G1P0 at 29 wks", "G2P1, 18w"): a current pregnancy. G/P alone is
// obstetric history. The age must follow within 16 characters and lie in 4..42 weeks.
static int rad__gp_with_gestation(const char *s, size_t n) {
    for (size_t i = 0; i + 3 < n; i++) {
        if (rad__lc((unsigned char)s[i]) != 'g' || (i > 0 && rad__alnum((unsigned char)s[i - 1]))) continue;
        size_t j = i + 1;
        if (!rad__digit((unsigned char)s[j])) continue;
        while (j < n && rad__digit((unsigned char)s[j])) j++;
        if (j >= n || rad__lc((unsigned char)s[j]) != 'p' || j + 1 >= n || !rad__digit((unsigned char)s[j + 1]))
            continue;
        j++;
        while (j < n && (rad__digit((unsigned char)s[j]) || s[j] == '-' || s[j] == '/')) j++;
        for (size_t k = j; k < n && k < j + 16; k++) {
            if (!rad__digit((unsigned char)s[k]) || rad__digit((unsigned char)s[k - 1])) continue;
            int wk = 0;
            size_t e = k;
            while (e < n && rad__digit((unsigned char)s[e]) && wk < 1000) wk = wk * 10 + (s[e++] - '0');
            while (e < n && s[e] == ' ') e++;
            if (wk >= 4 && wk <= 42 && (rad__word_at(s, n, e, "wks") || rad__word_at(s, n, e, "wk") ||
                                        rad__word_at(s, n, e, "weeks") || rad__word_at(s, n, e, "w") ||
                                        (e < n && s[e] == '/' && rad__word_at(s, n, e + 1, "40"))))
                return 1;
        }
    }
    return 0;
}

// 1 when a time follows position e (past ':', '=', '@', '~', "at") that puts it inside the stroke window: a clock
// time ("07:15", "7h30", "0730") or hours <= 24 or minutes ("1 hr ago", "45 min"); not "3 days ago". After "LKW",
// "last known well", "symptom onset" (G11).
static int rad__time_in_window(const char *s, size_t n, size_t e) {
    while (e < n && (s[e] == ' ' || s[e] == ':' || s[e] == '=' || s[e] == '@' || s[e] == '~')) e++;
    while (e < n && rad__word_at(s, n, e, "at")) e += 2;
    while (e < n && s[e] == ' ') e++;
    if (e >= n || !rad__digit((unsigned char)s[e])) return 0;
    size_t q = e;
    float v = 0.0f;
    while (q < n && rad__digit((unsigned char)s[q])) v = v * 10.0f + (float)(s[q++] - '0');
    if (q < n && (s[q] == ':' || s[q] == 'h') && q + 2 < n && rad__digit((unsigned char)s[q + 1]) &&
        rad__digit((unsigned char)s[q + 2]))
        return 1;   // a clock time: 07:15, 7h30
    if (q - e == 4 && v <= 2359.0f) return 1;   // 0730
    if (q < n && s[q] == '.')
        for (q++; q < n && rad__digit((unsigned char)s[q]); q++) {}
    while (q < n && s[q] == ' ') q++;
    if (rad__word_at(s, n, q, "h") || rad__word_at(s, n, q, "hr") || rad__word_at(s, n, q, "hrs") ||
        rad__word_at(s, n, q, "hour") || rad__word_at(s, n, q, "hours"))
        return v <= 24.0f;
    return rad__word_at(s, n, q, "min") || rad__word_at(s, n, q, "mins") || rad__word_at(s, n, q, "minutes");
}

static void rad__extract_doc(const rad__doc *d, rad_facts *f) {
    const char *s = d->s;
    size_t n = d->n;
    int preg_strong = 0, preg_weak = 0, preg_neg = 0, preg_unknown = 0;
    int anuric = 0, residual = 0, dialysis = 0, implant_removed_all = 1, implant_seen = 0;
    int onset_in_window = 0, deficit = 0;   // a bare onset time counts beside a focal deficit only (G11)
    rad__age_sex(d, f);
    for (int k = 0; k < d->nhits; k++) {
        const rad__hit *h = &d->hits[k];
        switch (h->kind) {
        case RAD__K_EGFR: {
            float v;
            int cmp;
            size_t e = rad__number(s, n, (size_t)h->end, 24, &v, &cmp);
            if (!e) break;
            float last = v;
            int lastcmp = cmp;
            // a series "45 -> 22": keep the last
            for (int step = 0; step < 3; step++) {
                float v2;
                int c2;
                size_t e2 = rad__number(s, n, e, 12, &v2, &c2);
                if (!e2 || e2 == e) break;
                // only when linked by an arrow or a "to"/"now" (rad__number skipped them)
                int linked = 0;
                for (size_t q = e; q < e2; q++)
                    if (s[q] == '>' || (unsigned char)s[q] == 0xE2 || rad__lc((unsigned char)s[q]) == 't' ||
                        rad__lc((unsigned char)s[q]) == 'n')
                        linked = 1;
                if (!linked || rad__char_between(d, (int)e, (int)e2, ',')) break;
                last = v2;
                lastcmp = c2;
                e = e2;
            }
            f->egfr = lastcmp < 0 ? last - 0.1f : lastcmp > 0 ? last + 1.0f : last;
            break;
        }
        case RAD__K_CREAT: {
            float v;
            int cmp;
            size_t e = rad__number(s, n, (size_t)h->end, 24, &v, &cmp);
            if (!e) break;
            int unit = rad__creat_unit(s, n, &e);
            float first = rad__to_mgdl(v, unit), last = first;
            for (int step = 0; step < 3; step++) {
                float v2;
                int c2;
                size_t e2 = rad__number(s, n, e, 14, &v2, &c2);
                if (!e2) break;
                int linked = 0;
                for (size_t q = e; q < e2; q++)
                    if (s[q] == '>' || (unsigned char)s[q] == 0xE2 || rad__lc((unsigned char)s[q]) == 't' ||
                        rad__lc((unsigned char)s[q]) == 'n')
                        linked = 1;
                if (!linked || rad__char_between(d, (int)e, (int)e2, ',')) break;
                int u2 = rad__creat_unit(s, n, &e2);
                last = rad__to_mgdl(v2, u2 ? u2 : unit);
                e = e2;
            }
            if (last - first >= 0.3f - 1e-4f || (first > 0.0f && last >= 1.5f * first)) f->aki = 1;
            f->creat = last;
            break;
        }
        case RAD__K_AKI:
            if (!rad__negated_local(d, k)) f->aki = 1;
            break;
        case RAD__K_DIALYSIS:
            if (!rad__negated_local(d, k)) dialysis = 1;
            break;
        case RAD__K_ANURIC:
            if (rad__pre_negated_scope(d, k, 0)) residual = 1;
            else anuric = 1;
            break;
        case RAD__K_RESIDUAL:
            if (rad__pre_negated_scope(d, k, 0)) anuric = 1;
            else residual = 1;
            break;
        case RAD__K_CKD: {
            if (rad__negated_local(d, k)) break;
            size_t e = (size_t)h->end, end;
            while (e < n && (s[e] == ' ' || s[e] == '-' || s[e] == ':')) e++;
            int len = rad__word_at(s, n, e, "stage");
            if (len) {
                e += (size_t)len;
                while (e < n && (s[e] == ' ' || s[e] == ':')) e++;
            } else if (e < n && rad__lc((unsigned char)s[e]) == 'g' && e + 1 < n && rad__digit((unsigned char)s[e + 1])) {
                e++;
            }
            int st = rad__roman_or_digit(s, n, e, &end);
            if (!st) {
                // "stage 4 CKD"
                size_t b = (size_t)h->start;
                while (b > 0 && s[b - 1] == ' ') b--;
                if (b > 0 && s[b - 1] >= '1' && s[b - 1] <= '5') {
                    size_t w = b - 1;
                    while (w > 0 && s[w - 1] == ' ') w--;
                    if (w >= 5 && rad__word_at(s, n, w - 5, "stage")) st = s[b - 1] - '0';
                }
            }
            if (st > f->ckd_stage) f->ckd_stage = (unsigned char)st;
            if (st < 4) f->renal_risk |= RAD_RISK_CKD;
            break;
        }
        case RAD__K_ESRD:
            if (!rad__negated_local(d, k)) f->ckd_stage = 5;
            break;
        case RAD__K_STROKE_CODE:   // "code stroke", "stroke alert" (not "no stroke alert", "stroke alert cancelled")
            if (!rad__negated(d, k)) f->stroke_window = 1;
            break;
        case RAD__K_LKW:
            if (rad__time_in_window(s, n, (size_t)h->end)) f->stroke_window = 1;
            break;
        case RAD__K_ONSET:
            if (rad__time_in_window(s, n, (size_t)h->end)) onset_in_window = 1;
            break;
        case RAD__K_DEFICIT:
            if (!rad__negated(d, k)) deficit = 1;
            break;
        case RAD__K_RISK:
            if (!rad__negated_local(d, k)) f->renal_risk |= h->val;
            break;
        case RAD__K_DISTRACT:
            f->distractors |= RAD_DIS_IODINE_SHELLFISH;
            break;
        case RAD__K_PREG: {
            if (rad__pre_negated_scope(d, k, 0)) { preg_neg = 1; break; }
            if (rad__post_negated(d, k, 0)) { preg_neg = 1; break; }
            // "pregnancy" as a topic ("pregnancy test" is K_HCG); "possibly pregnant" counts as pregnant
            preg_strong = 1;
            break;
        }
        case RAD__K_GEST:
            if (!rad__negated_local(d, k)) preg_strong = 1;
            break;
        case RAD__K_NOTPREG:
            if (!rad__pre_negated(d, k)) preg_neg = 1;
            break;
        case RAD__K_PREG_UNKNOWN: preg_unknown = 1; break;
        case RAD__K_HCG: {
            // "hCG neg", "negative hCG", "hCG +", "hCG positive", "hCG 1450", "hCG: pending"
            // "no hCG (in chart)", "without a pregnancy test": the test is absent, not negative
            if (rad__word_before_is(s, (size_t)h->start, "no") || rad__word_before_is(s, (size_t)h->start, "without")) {
                preg_unknown = 1;
                break;
            }
            // a negative test lowers the risk: list negators ("no prior ...") do not reach it across a comma
            if (rad__negated_local(d, k)) { preg_neg = 1; break; }
            size_t e = (size_t)h->end;
            while (e < n && (s[e] == ' ' || s[e] == ':' || s[e] == '=' || s[e] == '(' || s[e] == ')')) e++;
            if (e < n && s[e] == '+') { preg_strong = 1; break; }
            if (h->start > 0 && s[h->start - 1] == '+') { preg_strong = 1; break; }     // "+UPT", "+hCG"
            if (e < n && s[e] == '-' && (e + 1 >= n || !rad__alnum((unsigned char)s[e + 1]))) { preg_neg = 1; break; }
            if (rad__word_at(s, n, e, "positive") || rad__word_at(s, n, e, "pos")) { preg_strong = 1; break; }
            float v;
            int cmp;
            size_t ne = rad__number(s, n, (size_t)h->end, 10, &v, &cmp);
            if (ne) {
                if (cmp < 0 || v <= 5.0f) preg_neg = 1;
                else preg_strong = 1;
                break;
            }
            // "positive hCG", "positive urine pregnancy test"
            for (int j = k - 1; j >= 0 && j >= k - 2; j--)
                if (d->hits[j].kind == RAD__K_QUALPOS && h->start - d->hits[j].end < 12) preg_strong = 1;
            break;
        }
        case RAD__K_LMP: {
            // "LMP 6 wks ago", "LMP ~7 weeks": n >= 5 weeks -> possible pregnancy
            float v;
            int cmp;
            size_t e = rad__number(s, n, (size_t)h->end, 12, &v, &cmp);
            if (!e) break;
            while (e < n && (s[e] == ' ' || s[e] == '-')) e++;
            float wk = -1.0f;
            if (rad__word_at(s, n, e, "wks") || rad__word_at(s, n, e, "weeks") || rad__word_at(s, n, e, "wk") ||
                rad__word_at(s, n, e, "week") || rad__word_at(s, n, e, "w"))
                wk = v;
            else if (rad__word_at(s, n, e, "days") || rad__word_at(s, n, e, "d"))
                wk = v / 7.0f;
            else if (rad__word_at(s, n, e, "months") || rad__word_at(s, n, e, "mo"))
                wk = v * 4.3f;
            if (wk >= 5.0f) preg_weak = 1;
            break;
        }
        case RAD__K_BREASTFEED:   // adds risk: a list negator does not reach it across a comma
            if (!rad__negated_local(d, k)) f->breastfeeding = 1;
            break;
        case RAD__K_DEVICE:
        case RAD__K_DEVICE_UNSAFE: {
            unsigned long long tr = RAD__BIT(RAD__K_MRCOND) | RAD__BIT(RAD__K_MRUNSAFE) | RAD__BIT(RAD__K_DEVICE);
            int removed = 0;
            // "no pacemaker", "denies metal in eye", "pacemaker removed 2018", "s/p removal of ..."
            if (rad__pre_negated_scope(d, k, 0)) removed = 1;
            for (int j = k + 1; j < d->nhits && !removed; j++) {
                const rad__hit *g = &d->hits[j];
                if (g->start - h->end > 40 || rad__boundary_between(d, h->end, g->start) ||
                    rad__char_between(d, h->end, g->start, ',')) break;
                if (g->kind == RAD__K_REMOVED || (g->kind == RAD__K_NEG && (g->val & RAD__NEG_POST))) removed = 1;
                else if (!rad__kind_in(tr, g->kind)) break;
            }
            for (int j = k - 1; j >= 0 && j >= k - 2 && !removed; j--) {
                const rad__hit *g = &d->hits[j];
                if (g->kind == RAD__K_REMOVED && h->start - g->end < 16 &&
                    !rad__boundary_between(d, g->end, h->start))
                    removed = 1;
            }
            if (removed) { f->distractors |= RAD_DIS_DEVICE_REMOVED; implant_seen = 1; break; }
            implant_seen = 1;
            implant_removed_all = 0;
            int st = h->kind == RAD__K_DEVICE_UNSAFE ? RAD_IMPLANT_UNSAFE : RAD_IMPLANT_UNKNOWN;
            if (st != RAD_IMPLANT_UNSAFE) {
                // qualifier within the clause, either side, not across a comma
                for (int j = k + 1; j < d->nhits; j++) {
                    const rad__hit *g = &d->hits[j];
                    if (g->start - h->end > 48 || rad__boundary_between(d, h->end, g->start) ||
                        rad__char_between(d, h->end, g->start, ',') ||
                        (g->kind == RAD__K_DEVICE || g->kind == RAD__K_DEVICE_UNSAFE))
                        break;
                    if (g->kind == RAD__K_MRUNSAFE) { st = RAD_IMPLANT_UNSAFE; break; }
                    if (g->kind == RAD__K_MRCOND) { st = rad__pre_negated_scope(d, j, 0) ? RAD_IMPLANT_UNSAFE
                                                                                         : RAD_IMPLANT_CONDITIONAL;
                                                    break; }
                }
                for (int j = k - 1; j >= 0 && st == RAD_IMPLANT_UNKNOWN; j--) {
                    const rad__hit *g = &d->hits[j];
                    if (h->start - g->end > 40 || rad__boundary_between(d, g->end, h->start) ||
                        rad__char_between(d, g->end, h->start, ',') ||
                        (g->kind == RAD__K_DEVICE || g->kind == RAD__K_DEVICE_UNSAFE))
                        break;
                    if (g->kind == RAD__K_MRUNSAFE) st = RAD_IMPLANT_UNSAFE;
                    else if (g->kind == RAD__K_MRCOND)   // "not MR conditional" negates it; "no allergy, MR
                        // conditional ICD" does not: a list negator stops at the comma here
                        st = rad__pre_negated_scope(d, j, 0) ? RAD_IMPLANT_UNSAFE : RAD_IMPLANT_CONDITIONAL;
                }
            }
            f->implant_kinds |= h->val;
            if (st > f->implant) f->implant = (unsigned char)st;
            break;
        }
        case RAD__K_OTHER_IMPLANT:
            f->distractors |= RAD_DIS_OTHER_IMPLANT;
            break;
        case RAD__K_ANTICOAG:
            if (!rad__negated_local(d, k)) f->anticoag = 1;
            break;
        case RAD__K_HEADHIT:
            if (!rad__negated(d, k)) f->head_strike = 1;
            break;
        case RAD__K_CTX:
            if (!rad__negated(d, k)) f->context |= h->val;
            break;
        default: break;
        }
    }
    (void)implant_removed_all;
    (void)implant_seen;
    if (onset_in_window && deficit) f->stroke_window = 1;   // "aphasia + R hemiparesis, onset witnessed 09:47"
    // dialysis: anuric only when said so
    if (dialysis || anuric) {
        if (dialysis) f->dialysis = (anuric && !residual) ? RAD_DIALYSIS_ANURIC : RAD_DIALYSIS_RESIDUAL;
    }
    // pregnancy
    if (preg_neg) f->distractors |= RAD_DIS_NEG_PREGNANCY;
    if (rad__gp_with_gestation(s, n)) preg_strong = 1;
    if (preg_strong) f->pregnant = 1;
    else if (preg_weak && !preg_neg) f->pregnant = 1;
    else if (preg_neg) f->pregnant = -1;
    (void)preg_unknown;
    if (f->sex == 'M') { f->pregnant = 0; f->breastfeeding = 0; }
    rad__reactions(d, f);
    rad__rules(d, f);
}

RADDEF int rad_extract(const char *note, size_t len, rad_facts *f) {
    rad__hit hits[RAD_MAX_HITS];
    rad__doc d;
    rad_facts_clear(f);
    if (!note) return 0;
    d.s = note;
    d.n = len;
    d.mask_table = 0;
    rad__scan(&d, hits, RAD_MAX_HITS);
    rad__extract_doc(&d, f);
    if (d.overflow) f->incomplete = 1;
    return d.overflow ? 1 : 0;
}

RADDEF int rad_cue_mask(const char *note, size_t len, unsigned char *mask) {
    rad__hit hits[RAD_MAX_HITS];
    rad__doc d;
    memset(mask, 0, len);
    d.s = note;
    d.n = len;
    d.mask_table = 1;
    rad__scan(&d, hits, RAD_MAX_HITS);
    for (int k = 0; k < d.nhits; k++) {
        // The stroke-window cues feed the engine's under-triage guard, not the facts the generator's gold comes
        // from: they stay unmasked, so that radgen's output (and the pretraining corpus) did not change with them.
        if (d.hits[k].kind == RAD__K_STROKE_CODE || d.hits[k].kind == RAD__K_LKW) continue;
        // the cue and its neighbourhood words (numbers, qualifiers) up to 12 bytes after it
        int a = d.hits[k].start, b = d.hits[k].end + 12;
        if (b > (int)len) b = (int)len;
        while (b < (int)len && rad__alnum((unsigned char)note[b])) b++;
        for (int i = a; i < b; i++) mask[i] = 1;
    }
    // every word with a digit, and the word after a number ("67F", "3 wks")
    for (size_t i = 0; i < len; i++)
        if (rad__digit((unsigned char)note[i])) {
            size_t a = i, b = i;
            while (a > 0 && rad__alnum((unsigned char)note[a - 1])) a--;
            while (b < len && (rad__alnum((unsigned char)note[b]) || note[b] == '.')) b++;
            while (b < len && (note[b] == ' ' || note[b] == '-')) b++;
            while (b < len && rad__alnum((unsigned char)note[b])) b++;
            for (size_t q = a; q < b; q++) mask[q] = 1;
        }
    return d.nhits;
}

// ---------------------------------------------------------------------------------------------------------------
// Catalogue lookups

RADDEF const char *rad_label_name(int label) {
    return (label >= 0 && label < RAD_NUM_LABELS) ? rad__labels[label].name : NULL;
}
RADDEF const rad_label_info *rad_label(int label) {
    return (label >= 0 && label < RAD_NUM_LABELS) ? &rad__labels[label] : NULL;
}
RADDEF int rad_label_index(const char *name) {
    if (!name) return -1;
    for (int i = 0; i < RAD_NUM_LABELS; i++)
        if (!strcmp(name, rad__labels[i].name)) return i;
    // case-insensitive, outer blanks ignored
    size_t a = 0, b = strlen(name);
    while (a < b && (name[a] == ' ' || name[a] == '\t' || name[a] == '\n' || name[a] == '\r')) a++;
    while (b > a && (name[b - 1] == ' ' || name[b - 1] == '\t' || name[b - 1] == '\n' || name[b - 1] == '\r')) b--;
    for (int i = 0; i < RAD_NUM_LABELS; i++) {
        const char *p = rad__labels[i].name;
        size_t k = 0;
        while (a + k < b && p[k] && rad__lc((unsigned char)name[a + k]) == rad__lc((unsigned char)p[k])) k++;
        if (a + k == b && !p[k]) return i;
    }
    return -1;
}
RADDEF const char *rad_flag_name(unsigned flag) {
    for (int k = 0; k < RAD_NUM_FLAGS; k++)
        if (flag == (1u << k)) return rad__flag_names[k];
    return NULL;
}
RADDEF unsigned rad_flag_from_name(const char *name, size_t len) {
    for (int k = 0; k < RAD_NUM_FLAGS; k++)
        if (strlen(rad__flag_names[k]) == len && !memcmp(rad__flag_names[k], name, len)) return 1u << k;
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// The safety check

RADDEF int rad_renal_function_known(const rad_facts *f) {
    return f->egfr >= 0.0f || f->creat >= 0.0f || f->aki || f->dialysis || f->ckd_stage;
}

// G1/G2 (iodinated) and G3 (gadolinium) high-risk renal state.
RADDEF int rad_renal_high_risk(const rad_facts *f, int agent) {
    int high = 0;
    if (f->egfr >= 0.0f) {
        if (f->egfr < 30.0f) high = 1;
    } else if (f->creat >= 0.0f) {
        float e = rad_egfr_ckd_epi(f->creat, f->age, f->sex);
        if (f->creat >= 2.0f || (e >= 0.0f && e < 30.0f)) high = 1;
    }
    if (f->aki || f->ckd_stage >= 4) high = 1;
    if (agent == RAD_AGENT_IODINATED) {
        if (f->dialysis == RAD_DIALYSIS_RESIDUAL) high = 1;
        if (f->dialysis == RAD_DIALYSIS_ANURIC) high = 0;    // G2: no renal function left to protect
        return high;
    }
    if (agent == RAD_AGENT_GADOLINIUM) return high || f->dialysis != RAD_DIALYSIS_NONE;
    return 0;
}

// Which contraindications are present at all (bits 1 << RAD_CI_*), independent of the label. Pregnancy for the
// NM thyroid label also counts breastfeeding: see rad__ci_on.
static unsigned rad__present(const rad_facts *f) {
    unsigned m = 0;
    if (f->pregnant > 0 && f->sex != 'M') m |= 1u << RAD_CI_PREGNANCY;
    if (f->implant == RAD_IMPLANT_UNKNOWN || f->implant == RAD_IMPLANT_UNSAFE) m |= 1u << RAD_CI_MRI_UNSAFE;
    if (f->reaction[RAD_CLASS_IOD] >= RAD_REACT_UNKNOWN) m |= 1u << RAD_CI_IOD_REACTION;
    if (rad_renal_high_risk(f, RAD_AGENT_IODINATED)) m |= 1u << RAD_CI_RENAL;
    if (f->reaction[RAD_CLASS_GAD] >= RAD_REACT_UNKNOWN) m |= 1u << RAD_CI_GAD_REACTION;
    return m;
}
static int rad__ci_on(const rad_facts *f, unsigned present, int label, int ci) {
    if (ci == RAD_CI_PREGNANCY && label == RAD_NM_THYROID && f->breastfeeding) return 1;
    return (present >> ci) & 1u;
}
static int rad__rule_applies(const rad_facts *f, int label) {
    unsigned r = f->rule_negative & rad__labels[label].rule;
    if (f->anticoag) r &= ~(unsigned)RAD_RULE_HEAD;     // G9: head CT rules exclude the anticoagulated
    return r != 0;
}

static int rad__alt_ctx(const rad_facts *f, int label, int ci) {
    if (label == RAD_CTA_PE) {
        if (f->context & RAD_CTX_LEG) return RAD_US_DVT;
        return ci == RAD_CI_PREGNANCY ? RAD_XR_CHEST : RAD_NM_VQ;
    }
    if (label == RAD_CT_AP_IV) {
        if (f->context & RAD_CTX_RLQ) return RAD_US_RLQ;
        if (f->context & RAD_CTX_RUQ) return RAD_US_RUQ;
        if (f->context & RAD_CTX_FLANK) return RAD_US_KIDNEY;
        if (f->context & RAD_CTX_PELVIC) return RAD_US_OB;
        return RAD_MR_AP;
    }
    return RAD_REVIEW;
}

RADDEF int rad_contraindications(const rad_facts *f, int label) {
    if (label < 0 || label >= RAD_NUM_EXAMS) return 0;
    unsigned present = rad__present(f), m = 0;
    for (int ci = 0; ci < RAD_CI_COUNT; ci++) {
        int a = rad__labels[label].alt[ci];
        if ((a >= 0 || a == RAD_ALT_CTX) && rad__ci_on(f, present, label, ci)) m |= 1u << ci;
    }
    if (rad__rule_applies(f, label)) m |= RAD_REASON_NOT_INDICATED;
    return (int)m;
}

// Follows the switches from label until a label no contraindication moves. *why gets the reasons of every step.
static int rad__resolve(const rad_facts *f, unsigned present, int label, unsigned *why) {
    unsigned long long seen = 0;
    int cur = label;
    *why = 0;
    for (int step = 0; step < RAD_NUM_LABELS; step++) {
        if (cur == RAD_REVIEW) return cur;
        seen |= 1ull << cur;
        int next = -1;
        if (rad__rule_applies(f, cur)) {
            *why |= RAD_REASON_NOT_INDICATED;
            next = RAD_REVIEW;
        } else {
            for (int ci = 0; ci < RAD_CI_COUNT && next < 0; ci++) {
                int a = rad__labels[cur].alt[ci];
                if (a == RAD_ALT_NA || a == RAD_ALT_KEEP || !rad__ci_on(f, present, cur, ci)) continue;
                next = a == RAD_ALT_CTX ? rad__alt_ctx(f, cur, ci) : a;
                *why |= 1u << ci;
            }
        }
        if (next < 0) return cur;
        if (next != RAD_REVIEW && (seen >> next & 1ull)) return RAD_REVIEW;   // a cycle: nothing safe answers it
        cur = next;
    }
    return RAD_REVIEW;
}

static unsigned rad__reason_flags(unsigned why) {
    unsigned fl = 0;
    if (why & (1u << RAD_CI_PREGNANCY)) fl |= RAD_FLAG_PREGNANCY;
    if (why & (1u << RAD_CI_MRI_UNSAFE)) fl |= RAD_FLAG_MRI_SAFETY;
    if (why & ((1u << RAD_CI_IOD_REACTION) | (1u << RAD_CI_RENAL) | (1u << RAD_CI_GAD_REACTION)))
        fl |= RAD_FLAG_CONTRAST_RISK;
    if (why & RAD_REASON_NOT_INDICATED) fl |= RAD_FLAG_NOT_INDICATED;
    return fl;
}

// Flags of final label x (see section 3): the keep-with-flag cases of x, plus every reason of a switch chain from
// any catalogue label that ends at x.
static unsigned rad__flags_for(const rad_facts *f, unsigned present, int x) {
    const rad_label_info *L = &rad__labels[x];
    unsigned fl = 0;
    if (x != RAD_REVIEW) {
        if (rad__ci_on(f, present, x, RAD_CI_PREGNANCY) && L->alt[RAD_CI_PREGNANCY] == RAD_ALT_KEEP)
            fl |= RAD_FLAG_PREGNANCY;
        if (f->pregnant == 0 && f->sex == 'F' && f->age >= 12 && f->age <= 50 && L->ionising && L->fetal)
            fl |= RAD_FLAG_PREGNANCY;
        if ((present >> RAD_CI_RENAL & 1u) && L->alt[RAD_CI_RENAL] == RAD_ALT_KEEP) fl |= RAD_FLAG_CONTRAST_RISK;
        if (L->agent == RAD_AGENT_IODINATED && f->reaction[RAD_CLASS_IOD] != RAD_REACT_NONE)
            fl |= RAD_FLAG_CONTRAST_RISK;
        if (L->agent == RAD_AGENT_GADOLINIUM &&
            (f->reaction[RAD_CLASS_GAD] != RAD_REACT_NONE || rad_renal_high_risk(f, RAD_AGENT_GADOLINIUM)))
            fl |= RAD_FLAG_CONTRAST_RISK;
        if (L->mri && f->implant == RAD_IMPLANT_CONDITIONAL) fl |= RAD_FLAG_MRI_SAFETY;
        if (L->agent == RAD_AGENT_IODINATED && x != RAD_CT_STROKE && !rad_renal_function_known(f) &&
            (f->renal_risk || f->age > 60))
            fl |= RAD_FLAG_RENAL_UNKNOWN;
    }
    if (present || f->rule_negative || f->breastfeeding) {
        for (int a = 0; a < RAD_NUM_EXAMS; a++) {
            unsigned why;
            if (rad__resolve(f, present, a, &why) == x) fl |= rad__reason_flags(why);
        }
    }
    return fl;
}

RADDEF int rad_safety_check_index(const rad_facts *f, int label, rad_decision *out) {
    unsigned present = rad__present(f), why = 0;
    int known = label >= 0 && label < RAD_NUM_LABELS;
    int x = known ? label : RAD_REVIEW;
    if (f->incomplete) x = RAD_REVIEW;
    else if (x != RAD_REVIEW) x = rad__resolve(f, present, x, &why);
    out->label = x;
    out->name = rad__labels[x].name;
    out->input = known ? label : -1;
    out->reasons = why;
    out->flags = rad__flags_for(f, present, x);
    return known ? 0 : -1;
}

RADDEF int rad_safety_check(const rad_facts *f, const char *label, rad_decision *out) {
    return rad_safety_check_index(f, rad_label_index(label), out);
}

#endif // RAD_RULES_IMPLEMENTATION_DONE
#endif // RAD_RULES_IMPLEMENTATION
