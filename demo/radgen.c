// radgen.c - deterministic generator of synthetic radiology order notes with gold protocol label and flags.
//
//     build/radgen --seed 7 --out data/        the committed splits (train, val, test, sample_orders)
//     build/radgen --corpus 5000 --seed 1      unlabeled clinical text for pretraining, to stdout
//     build/radgen --check --seed 7            generate in memory, report generator/extractor disagreements
//
// How a note is made: a scenario (the clinical question, with its base label and the facts its wording implies)
// plus modifiers (renal function, prior contrast reaction, pregnancy, implants, anticoagulants, risk factors,
// distractors and negations), wrapped in a style (terse, EHR fields, referral letter, ALL CAPS, telephone order,
// progress note, consult plan, request form, sign-out, ...), with a few seeded typos that never touch a word the
// fact extractor reads. The gold label and flags come from the
// generator's own structured facts run through the safety check of demo/radiology_rules.h: the label the
// scenario asks for, switched to the documented safe alternative (or REVIEW) when a modifier contraindicates it.
// test/test_radiology_rules.c then checks that extracting the facts back from the text gives the same answer.
//
// Template ids are the style names; every style belongs to exactly one split (rg_style_split), so train, val and
// test share no template. Train has 16 styles (the 8 original ones, which alone feed --corpus, and 8 train-only
// ones that also reword the indication and the facts); val and test have 2 each. Output JSONL, one object a line:
//     {"id", "note", "label", "flags": [...], "template", "acceptable": [...]}
// The generator uses only integer arithmetic and its own RNG (xorshift64*), so output is identical on every
// platform for a given seed. Build: gcc -std=c99 -O2 -I. demo/radgen.c -o build/radgen -lm
#define RAD_RULES_IMPLEMENTATION

#include "demo/radiology_rules.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// RNG

typedef struct rg_rng { unsigned long long s; } rg_rng;
static void rg_seed(rg_rng *r, unsigned long long seed) {
    unsigned long long z = seed + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    r->s = (z ^ (z >> 31)) | 1ull;
}
static unsigned rg_u32(rg_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return (unsigned)((r->s * 0x2545F4914F6CDD1Dull) >> 32);
}
static int rg_int(rg_rng *r, int lo, int hi) { return lo + (int)(rg_u32(r) % (unsigned)(hi - lo + 1)); }
static int rg_pct(rg_rng *r, int p) { return (int)(rg_u32(r) % 100u) < p; }
#define RG_PICK(r, arr) ((arr)[rg_u32(r) % (unsigned)(sizeof(arr) / sizeof((arr)[0]))])

// ---------------------------------------------------------------------------------------------------------------
// String builder (notes are short: a fixed buffer, truncation is a bug the word-count check would catch)

#define RG_CAP 4096
typedef struct rg_sb { char s[RG_CAP]; size_t n; } rg_sb;
static void sb_clear(rg_sb *b) { b->n = 0; b->s[0] = 0; }
static void sb_put(rg_sb *b, const char *t) {
    size_t k = strlen(t);
    if (b->n + k >= RG_CAP) k = RG_CAP - 1 - b->n;
    memcpy(b->s + b->n, t, k);
    b->n += k;
    b->s[b->n] = 0;
}
static void sb_printf(rg_sb *b, const char *fmt, ...);
#include <stdarg.h>
static void sb_printf(rg_sb *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->s + b->n, RG_CAP - b->n, fmt, ap);
    va_end(ap);
    if (k > 0) b->n = (b->n + (size_t)k < RG_CAP) ? b->n + (size_t)k : RG_CAP - 1;
}

// ---------------------------------------------------------------------------------------------------------------
// Scenarios: base label, who (sex, ages), the facts the wording carries, an acceptable alternative, phrasings.

enum { SC_ANTICOAG = 1, SC_PREG = 2, SC_NOTPREG = 4, SC_AKI = 8, SC_NOMODS = 16 };

typedef struct rg_scen {
    int         label;          // base label the order asks for (RAD_REVIEW for vague / outside the catalogue)
    char        sex;            // 'F', 'M' or 0
    int         amin, amax;     // age range
    unsigned    ctx, rule;      // RAD_CTX_* and RAD_RULE_* the wording implies
    unsigned    tags;           // SC_*
    int         alt;            // an acceptable alternative label, -1 none
    const char *kind;           // "exam", "vague", "outside", "rule_negative"
    const char *ind[3];         // phrasings (NULL-terminated when fewer)
} rg_scen;

#define N_ -1
static const rg_scen rg_scens[] = {
    {RAD_CT_HEAD, 0, 25, 90, 0, 0, 0, N_, "exam", {"fell from standing, struck head, GCS 15, r/o ICH",
        "sudden worst headache of life, thunderclap onset", "acute confusion since this morning, r/o intracranial bleed"}},
    {RAD_CT_HEAD, 0, 65, 95, 0, 0, SC_ANTICOAG, N_, "exam", {"mechanical fall at home on apixaban, hit head, GCS 15",
        "found on floor, takes warfarin for AF, scalp hematoma, r/o ICH", "fall on Eliquis, occipital laceration"}},
    {RAD_CT_STROKE, 0, 45, 90, 0, 0, 0, N_, "exam", {"code stroke, LKW 07:30, R arm and leg weakness, aphasia, NIHSS 12",
        "sudden L facial droop and L hemiparesis, onset 40 min ago, tPA candidate",
        "acute aphasia, last known well 1 h ago, NIHSS 8, thrombectomy candidate"}},
    {RAD_CTA_HEAD_NECK, 0, 35, 85, 0, 0, 0, RAD_MRA_HEAD, "exam", {"TIA yesterday with resolved R arm weakness, vessel imaging",
        "neck pain after chiropractic manipulation, new Horner syndrome, r/o dissection",
        "carotid stenosis 70 percent on duplex, pre-op vessel imaging"}},
    {RAD_CT_SINUS, 0, 20, 75, 0, 0, 0, N_, "exam", {"chronic rhinosinusitis over 12 wks despite meds, pre-FESS planning",
        "nasal polyps and recurrent sinus infections, ENT surgical planning",
        "facial pressure and congestion for 4 months, failed 2 courses of antibiotics"}},
    {RAD_CT_MAXFACE, 0, 18, 70, 0, 0, 0, N_, "exam", {"assault, punched in face, periorbital swelling, diplopia",
        "fell onto face, malocclusion, r/o mandible fracture", "blow to L orbit, ?orbital floor fracture"}},
    {RAD_CT_NECK, 0, 18, 75, 0, 0, 0, N_, "exam", {"odynophagia, fever and trismus, r/o peritonsillar abscess",
        "firm L neck mass 3 cm, weight loss", "fever and neck swelling, r/o deep neck abscess"}},
    {RAD_CT_CSPINE, 0, 18, 90, 0, 0, 0, N_, "exam", {"MVC at highway speed, midline neck tenderness",
        "fall down a flight of stairs, neck pain, dangerous mechanism",
        "intoxicated trauma pt, neck pain, cannot clear c-spine clinically"}},
    {RAD_CT_CHEST_IV, 0, 40, 85, 0, 0, 0, N_, "exam", {"lung mass on CXR, staging", "hemoptysis, hilar fullness on CXR",
        "complex pleural effusion, r/o empyema"}},
    {RAD_CT_CHEST, 0, 40, 85, 0, 0, 0, N_, "exam", {"pulmonary nodule 6 mm, 12 month follow-up per Fleischner",
        "progressive dyspnea and basal crackles, ?ILD, HRCT please", "chronic productive cough, suspected bronchiectasis"}},
    {RAD_CT_LDCT, 0, 52, 77, 0, 0, 0, N_, "exam", {"lung cancer screening, 30 pack-years, current smoker, asymptomatic",
        "annual LDCT, quit smoking 6 years ago, 40 pack-years",
        "asymptomatic former smoker, 25 pack-years, eligible for screening"}},
    {RAD_CTA_PE, 0, 20, 85, 0, 0, 0, N_, "exam", {"acute SOB and pleuritic CP, HR 118, D-dimer 2.4, Wells 6",
        "sudden dyspnea POD 5 after hip surgery, SpO2 89% RA, r/o PE",
        "tachycardia and hypoxia, on OCP, D-dimer elevated, ?PE"}},
    {RAD_CTA_AORTA, 0, 35, 85, 0, 0, 0, N_, "exam", {"tearing chest pain radiating to back, BP differential between arms",
        "Marfan syndrome, sudden chest and back pain, r/o dissection",
        "widened mediastinum on CXR, acute chest pain, ?aortic dissection"}},
    {RAD_CTA_CORONARY, 0, 40, 70, 0, 0, 0, RAD_NM_MPI, "exam", {"stable exertional chest pain, intermediate risk",
        "equivocal stress test, ongoing chest pain, CAD assessment",
        "atypical chest pain, calcium score and CCTA requested"}},
    {RAD_CT_AP_IV, 0, 18, 80, RAD_CTX_RLQ, 0, 0, N_, "exam", {"RLQ pain x1d, fever, WBC 14.5, ?appendicitis",
        "periumbilical pain moving to RLQ, anorexia, ?appy", "right lower quadrant pain and guarding, r/o appendicitis"}},
    {RAD_CT_AP_IV, 0, 40, 85, 0, 0, 0, N_, "exam", {"LLQ pain and fever, ?diverticulitis",
        "POD 6 after bowel resection, fever and abdominal pain, r/o abscess",
        "distended abdomen, vomiting, ?SBO, prior laparotomy"}},
    {RAD_CT_AP_IV, 0, 55, 85, 0, 0, SC_ANTICOAG, RAD_CTA_AP, "exam", {"3 d after liver biopsy, on apixaban, Hgb drop, ?bleed",
        "post renal biopsy, on warfarin, Hgb 11.8 to 8.9, ?hematoma",
        "day 2 after percutaneous drain, rivaroxaban restarted, falling Hgb"}},
    {RAD_CT_STONE, 0, 20, 75, RAD_CTX_FLANK, 0, 0, N_, "exam", {"L flank pain radiating to groin, hematuria, h/o kidney stones",
        "renal colic, microscopic hematuria", "R flank pain, CVA tenderness, r/o ureteric calculus"}},
    {RAD_CT_UROGRAM, 0, 45, 85, 0, 0, 0, N_, "exam", {"painless gross hematuria, 40 pack-year smoker",
        "microhematuria, high risk, urothelial workup", "filling defect in the collecting system on US"}},
    {RAD_CT_LIVER, 0, 40, 80, 0, 0, 0, RAD_MR_ABD_C, "exam", {"cirrhosis, rising AFP, new liver lesion on US",
        "HCC surveillance, MRI not available", "indeterminate hypervascular liver lesion, known carcinoid"}},
    {RAD_CT_PANCREAS, 0, 45, 85, 0, 0, 0, N_, "exam", {"painless jaundice and weight loss, CA 19-9 elevated",
        "pancreatic head mass on US, staging before Whipple", "dilated pancreatic duct, r/o pancreatic neoplasm"}},
    {RAD_CTA_AP, 0, 45, 90, 0, 0, 0, N_, "exam", {"bright red blood per rectum, HR 125, BP 85/50, active GI bleed",
        "pain out of proportion to exam, AF, lactate 5, r/o mesenteric ischemia",
        "suspected active arterial bleeding after angioplasty, unstable"}},
    {RAD_MR_BRAIN, 0, 50, 90, 0, 0, 0, N_, "exam", {"progressive memory loss, dementia workup",
        "TIA 3 days ago with resolved symptoms, r/o infarct on DWI", "new onset seizure in an adult"}},
    {RAD_MR_BRAIN_C, 0, 30, 80, 0, 0, 0, N_, "exam", {"known breast cancer, new headaches, r/o brain mets",
        "suspected MS, optic neuritis last month", "HIV with fever and headache, r/o abscess"}},
    {RAD_MR_PITUITARY, 'F', 20, 45, 0, 0, 0, N_, "exam", {"elevated prolactin, galactorrhea, amenorrhea",
        "bitemporal hemianopsia, ?pituitary macroadenoma", "acromegaly features, high IGF-1"}},
    {RAD_MR_IAC, 0, 30, 80, 0, 0, 0, N_, "exam", {"asymmetric sensorineural hearing loss L>R",
        "unilateral tinnitus and hearing loss, r/o vestibular schwannoma", "vestibular schwannoma follow-up"}},
    {RAD_MRA_HEAD, 0, 25, 70, 0, 0, 0, N_, "exam", {"two first-degree relatives with brain aneurysm, screening",
        "ADPKD, intracranial aneurysm screening", "unruptured 4 mm aneurysm, annual follow-up"}},
    {RAD_MR_CSPINE, 0, 30, 80, 0, 0, 0, N_, "exam", {"cervical radiculopathy C6 distribution for 8 weeks, failed PT",
        "gait imbalance, hand clumsiness, hyperreflexia, ?myelopathy",
        "neck pain with arm weakness, CT shows no fracture"}},
    {RAD_MR_LSPINE, 0, 25, 80, 0, 0, 0, N_, "exam", {"sciatica L leg for 10 weeks, failed conservative tx, surgical candidate",
        "saddle anaesthesia and urinary retention, ?cauda equina", "foot drop, L5 radiculopathy"}},
    {RAD_MR_LSPINE_C, 0, 30, 80, 0, 0, 0, N_, "exam", {"s/p L4-5 laminectomy, recurrent radicular pain",
        "fever and back pain, IVDU, r/o epidural abscess", "known prostate ca, new back pain"}},
    {RAD_MR_SPINE_C, 0, 40, 85, 0, 0, 0, N_, "exam", {"metastatic lung cancer, back pain, bilateral leg weakness, r/o cord compression",
        "multiple myeloma, multilevel back pain", "known melanoma, ?leptomeningeal disease"}},
    {RAD_MR_KNEE, 0, 18, 60, 0, 0, 0, N_, "exam", {"twisting injury, locking and catching, ?meniscal tear, XR unremarkable",
        "felt a pop playing soccer, instability, ?ACL tear", "persistent knee pain after unremarkable radiographs"}},
    {RAD_MR_SHOULDER, 0, 30, 75, 0, 0, 0, N_, "exam", {"weakness on abduction, ?rotator cuff tear",
        "impingement symptoms failing 3 months PT", "painful arc and night pain, ?cuff tear"}},
    {RAD_MR_HIP, 0, 20, 85, 0, 0, 0, N_, "exam", {"fall, cannot bear weight, XR unremarkable, ?occult fracture",
        "long-term steroids, hip pain, r/o AVN", "runner with groin pain, ?femoral neck stress fracture"}},
    {RAD_MR_ABD_C, 0, 35, 80, 0, 0, 0, RAD_CT_LIVER, "exam", {"indeterminate liver lesion on CT, characterise",
        "adrenal nodule 2 cm, characterisation", "pancreatic cyst follow-up"}},
    {RAD_MRCP, 0, 30, 85, 0, 0, 0, N_, "exam", {"dilated CBD on US, rising bilirubin, ?choledocholithiasis",
        "PSC surveillance", "elevated ALP and dilated ducts, ?CBD stone"}},
    {RAD_MR_PELVIS_C, 'F', 25, 70, RAD_CTX_PELVIC, 0, 0, N_, "exam", {"indeterminate adnexal mass on US, characterise",
        "adnexal lesion O-RADS 4, problem solving", "complex adnexal cyst on TVUS"}},
    {RAD_MR_PELVIS_C, 'F', 25, 70, 0, 0, 0, N_, "exam", {"fibroid mapping before UAE", "cervical cancer staging",
        "endometrial cancer, local staging"}},
    {RAD_MR_PROSTATE, 'M', 50, 80, 0, 0, 0, N_, "exam", {"PSA 8.2 and rising, biopsy naive",
        "active surveillance, PI-RADS follow-up", "elevated PSA density, prior benign biopsy"}},
    {RAD_MR_AP, 'F', 20, 40, RAD_CTX_RLQ, 0, SC_PREG, RAD_US_RLQ, "exam", {"pregnant, RLQ pain, appendix not seen on US",
        "IUP 24 wks, RLQ pain, ultrasound non-diagnostic for appendicitis", NULL}},
    {RAD_US_RUQ, 0, 25, 80, RAD_CTX_RUQ, 0, 0, N_, "exam", {"RUQ pain after fatty meals, ?gallstones",
        "fever, RUQ pain, positive Murphy sign", "epigastric and RUQ pain, ?cholecystitis"}},
    {RAD_US_RUQ, 0, 25, 80, 0, 0, 0, N_, "exam", {"elevated LFTs and jaundice", "abnormal liver enzymes, ?fatty liver",
        "painless jaundice, ?duct dilatation"}},
    {RAD_US_KIDNEY, 0, 40, 85, 0, 0, SC_AKI, N_, "exam", {"AKI on the ward, r/o hydronephrosis",
        "AKI after surgery, ?obstruction", NULL}},
    {RAD_US_KIDNEY, 0, 40, 85, 0, 0, 0, N_, "exam", {"urinary retention, renal size and hydronephrosis",
        "recurrent UTI, r/o structural abnormality", "palpable kidney, ?hydronephrosis"}},
    {RAD_US_PELVIS, 'F', 18, 45, RAD_CTX_PELVIC, 0, SC_NOTPREG, N_, "exam", {"pelvic pain, hCG negative, r/o ovarian torsion",
        "pelvic pain and fever, hCG neg, ?tubo-ovarian abscess", NULL}},
    {RAD_US_PELVIS, 'F', 52, 80, 0, 0, SC_NOTPREG, N_, "exam", {"postmenopausal bleeding",
        "postmenopausal, thickened endometrium on prior study", NULL}},
    {RAD_US_PELVIS, 'F', 25, 45, 0, 0, 0, N_, "exam", {"menorrhagia, ?fibroids", "abnormal uterine bleeding, enlarged uterus",
        "dysmenorrhea, ?endometrioma"}},
    {RAD_US_OB, 'F', 18, 42, RAD_CTX_PELVIC, 0, SC_PREG, N_, "exam", {"positive beta-hCG, vaginal bleeding, r/o ectopic",
        "hCG 2300, spotting and cramping, ?ectopic", "IUP? LMP 7 wks ago, vaginal bleeding, viability"}},
    {RAD_US_SCROTUM, 'M', 12, 70, 0, 0, 0, N_, "exam", {"acute L testicular pain, r/o torsion",
        "scrotal swelling and fever, ?epididymo-orchitis", "palpable testicular mass"}},
    {RAD_US_DVT, 0, 25, 90, RAD_CTX_LEG, 0, 0, N_, "exam", {"unilateral L leg swelling and calf pain, r/o DVT",
        "R calf tenderness after a long flight", "swollen leg for 3 days, ?DVT"}},
    {RAD_US_CAROTID, 0, 50, 85, 0, 0, 0, N_, "exam", {"asymptomatic L carotid bruit", "amaurosis fugax R eye, outpatient workup",
        "pre-op carotid screen before CABG"}},
    {RAD_US_THYROID, 0, 20, 80, 0, 0, 0, N_, "exam", {"palpable thyroid nodule", "incidental thyroid nodule on CT",
        "goitre, TI-RADS follow-up"}},
    {RAD_US_RLQ, 0, 5, 15, RAD_CTX_RLQ, 0, 0, RAD_CT_AP_IV, "exam", {"RLQ pain and fever, ?appy",
        "periumbilical pain migrating to RLQ, vomiting", "r/o appendicitis, RLQ tenderness"}},
    {RAD_US_RLQ, 'F', 20, 40, RAD_CTX_RLQ, 0, SC_PREG, RAD_MR_AP, "exam", {"RLQ pain, IUP 14 wks, r/o appendicitis",
        "pregnant 20 weeks, RLQ pain and fever", NULL}},
    {RAD_US_AORTA, 'M', 65, 75, 0, 0, 0, N_, "exam", {"AAA screening, ever-smoker", "pulsatile abdominal mass",
        "known 4.2 cm AAA, surveillance"}},
    {RAD_XR_CHEST, 0, 20, 90, 0, 0, 0, N_, "exam", {"cough and fever for 4 days, ?pneumonia", "pre-op chest film",
        "SOB, r/o effusion"}},
    {RAD_XR_CHEST_PORT, 0, 30, 90, 0, 0, 0, N_, "exam", {"ICU, ETT position check", "new R IJ CVC placement, r/o pneumothorax",
        "NG tube placement check, bedbound"}},
    {RAD_XR_ABD, 0, 20, 90, 0, 0, 0, N_, "exam", {"constipation and abdominal distension", "swallowed a coin, foreign body",
        "feeding tube position"}},
    {RAD_XR_ANKLE, 0, 15, 80, 0, 0, 0, N_, "exam", {"inversion injury, lateral malleolar tenderness, unable to bear weight",
        "twisted ankle, bony tenderness at the posterior malleolus", "ankle swelling after a fall, cannot walk 4 steps"}},
    {RAD_XR_HIP, 0, 65, 95, 0, 0, 0, RAD_MR_HIP, "exam", {"elderly fall, R hip pain, shortened externally rotated leg",
        "hip OA, pre-arthroplasty", "cannot bear weight after a fall"}},
    {RAD_XR_KNEE, 0, 20, 85, 0, 0, 0, N_, "exam", {"knee effusion after a fall, bony tenderness", "chronic knee pain, ?OA",
        "anterior knee pain, patellar tenderness"}},
    {RAD_NM_BONE, 'M', 55, 85, 0, 0, 0, RAD_PET_PSMA, "exam", {"prostate cancer Gleason 8, PSA 40, staging",
        "prostate ca with new bone pain", NULL}},
    {RAD_NM_BONE, 'F', 40, 80, 0, 0, 0, N_, "exam", {"breast cancer, new bone pain, high ALP", "osteoblastic mets suspected",
        NULL}},
    {RAD_NM_VQ, 0, 30, 85, 0, 0, 0, N_, "exam", {"CTEPH evaluation, chronic dyspnea", "suspected PE, clear CXR today",
        NULL}},
    {RAD_NM_HIDA, 0, 25, 80, RAD_CTX_RUQ, 0, 0, N_, "exam", {"equivocal US for acute cholecystitis",
        "post-cholecystectomy, ?bile leak", "biliary dyskinesia, GB ejection fraction"}},
    {RAD_NM_MPI, 0, 50, 85, 0, 0, 0, N_, "exam", {"chest pain, known CAD with prior PCI",
        "cannot exercise, regadenoson stress, pre-op risk", "LBBB, exertional chest pain"}},
    {RAD_NM_THYROID, 0, 25, 75, 0, 0, 0, RAD_US_THYROID, "exam", {"low TSH, high FT4, Graves vs toxic nodule",
        "hyperthyroidism, pre-RAI dosing", "thyroiditis vs Graves"}},
    {RAD_PET_FDG, 0, 30, 85, 0, 0, 0, N_, "exam", {"newly diagnosed lung adenocarcinoma, staging",
        "Hodgkin lymphoma, interim response", "rising CEA, colon ca surveillance"}},
    {RAD_PET_FDG_WB, 0, 30, 85, 0, 0, 0, N_, "exam", {"melanoma of the foot, staging", "multiple myeloma, whole-body survey",
        "extremity sarcoma, staging"}},
    {RAD_PET_PSMA, 'M', 55, 85, 0, 0, 0, RAD_NM_BONE, "exam", {"rising PSA after prostatectomy",
        "high-risk prostate cancer staging", "Lu-177 PSMA therapy candidacy"}},

    // vague orders and orders outside the catalogue -> REVIEW
    {RAD_REVIEW, 0, 20, 85, 0, 0, 0, N_, "vague", {"pain, eval", "ICD-10 R10.9", "r/o pathology"}},
    {RAD_REVIEW, 0, 20, 85, 0, 0, 0, N_, "vague", {"abnormal labs, please image", "follow up",
        "imaging as per consultant"}},
    {RAD_REVIEW, 0, 20, 70, 0, 0, 0, N_, "outside", {"MR arthrogram R shoulder, ?labral tear",
        "CT temporal bone, conductive hearing loss, ?cholesteatoma", "CT enterography, Crohn disease activity"}},
    {RAD_REVIEW, 'F', 40, 75, 0, 0, 0, N_, "outside", {"screening mammogram", "breast US for palpable lump",
        "barium swallow under fluoroscopy, dysphagia"}},
    {RAD_REVIEW, 0, 20, 70, 0, 0, 0, N_, "outside", {"cardiac MRI, ?myocarditis", "CT venogram, ?venous sinus thrombosis",
        "fluoroscopic guided joint injection"}},
    // decision rule negative -> REVIEW with not_indicated
    {RAD_CT_CSPINE, 0, 18, 60, 0, RAD_RULE_CSPINE, SC_NOMODS, N_, "rule_negative", {"low-speed MVC, neck pain, NEXUS negative",
        "neck stiffness after rear-end collision, Canadian C-spine rule negative", NULL}},
    {RAD_XR_ANKLE, 0, 18, 60, 0, RAD_RULE_ANKLE, SC_NOMODS, N_, "rule_negative", {"ankle sprain, Ottawa ankle rules negative",
        "rolled ankle, walking, Ottawa negative", NULL}},
    {RAD_XR_KNEE, 0, 18, 60, 0, RAD_RULE_KNEE, SC_NOMODS, N_, "rule_negative", {"knee twist, Ottawa knee rule negative",
        "minor knee bump, Ottawa knee negative", NULL}},
    {RAD_CTA_PE, 0, 20, 49, 0, RAD_RULE_PE, SC_NOMODS, N_, "rule_negative", {"pleuritic CP, Wells 1, D-dimer negative",
        "chest tightness, low pretest probability, D-dimer <0.5", NULL}},
    {RAD_MR_LSPINE, 0, 20, 55, 0, RAD_RULE_LBP, SC_NOMODS, N_, "rule_negative", {"low back pain for 2 wks, no red flags",
        "acute LBP after lifting, no red flags", NULL}},
    {RAD_CT_HEAD, 0, 20, 55, 0, RAD_RULE_HEADACHE, SC_NOMODS, N_, "rule_negative", {"typical migraine, normal neuro exam",
        "recurrent migraine, neuro exam normal", NULL}},
    {RAD_CT_SINUS, 0, 20, 60, 0, RAD_RULE_SINUS, SC_NOMODS, N_, "rule_negative", {"uncomplicated acute sinusitis for 5 days",
        "uncomplicated sinusitis, first episode", NULL}},
};
#undef N_
#define RG_NSCEN ((int)(sizeof rg_scens / sizeof rg_scens[0]))

// ---------------------------------------------------------------------------------------------------------------
// Modifiers: each writes a phrase and sets the facts it states.

typedef struct rg_note {
    rad_facts f;                // the generator's facts (gold)
    const char *age_phrase_style;
    char mods[12][160];         // modifier phrases
    int nmods;
    char meds[200];
    char allergy[160];          // allergy line (may be empty)
} rg_note;

static void add_mod(rg_note *n, const char *fmt, ...) {
    va_list ap;
    if (n->nmods >= 12) return;
    va_start(ap, fmt);
    vsnprintf(n->mods[n->nmods], sizeof n->mods[0], fmt, ap);
    va_end(ap);
    n->nmods++;
}

static const char *const rg_meds_other[] = {"atorvastatin", "amlodipine", "omeprazole", "levothyroxine", "sertraline",
                                            "metoprolol", "pantoprazole", "vitamin D", "paracetamol prn", "tamsulosin",
                                            "allopurinol", "furosemide", "salbutamol inhaler", "gabapentin"};

static void gen_renal(rg_rng *r, rg_note *n) {
    rad_facts *f = &n->f;
    int p = rg_int(r, 0, 99);
    if (p < 50) return;
    if (p < 62) {
        int v = rg_int(r, 62, 110);
        f->egfr = (float)v;
        switch (rg_int(r, 0, 2)) {
        case 0: add_mod(n, "eGFR %d", v); break;
        case 1: add_mod(n, "GFR %d mL/min", v); break;
        default: f->egfr = 61.0f; add_mod(n, "eGFR >60"); break;
        }
    } else if (p < 70) {
        int v = rg_int(r, 6, 10);
        f->creat = (float)v / 10.0f;
        if (rg_pct(r, 50)) add_mod(n, "Cr 0.%d", v == 10 ? 9 : v), f->creat = (float)(v == 10 ? 9 : v) / 10.0f;
        else add_mod(n, "creatinine %d.%d mg/dL", v / 10, v % 10);
    } else if (p < 76) {
        int v = rg_int(r, 55, 88);
        f->creat = (float)v / 88.4f;
        add_mod(n, rg_pct(r, 50) ? "creat %d umol/L" : "Cr %d \xC2\xB5mol/L", v);
    } else if (p < 82) {
        int v = rg_int(r, 12, 29);
        f->egfr = (float)v;
        switch (rg_int(r, 0, 2)) {
        case 0: add_mod(n, "eGFR %d", v); break;
        case 1: add_mod(n, "eGFR %d, not on dialysis", v); break;
        default: f->egfr = 29.9f; add_mod(n, "GFR<30"); break;
        }
    } else if (p < 85) {
        int v = rg_int(r, 31, 44);
        f->egfr = (float)v;
        add_mod(n, "eGFR %d", v);
    } else if (p < 89) {
        int v = rg_int(r, 21, 39);
        f->creat = (float)v / 10.0f;
        add_mod(n, rg_pct(r, 50) ? "Cr %d.%d" : "creat %d.%d mg/dL", v / 10, v % 10);
    } else if (p < 92) {
        int v = rg_int(r, 186, 350);
        f->creat = (float)v / 88.4f;
        add_mod(n, rg_pct(r, 50) ? "creat %d umol/L" : "creatinine %d \xC2\xB5mol/L", v);
    } else if (p < 95) {
        f->aki = 1;
        if (rg_pct(r, 50)) {
            int a = rg_int(r, 7, 10), b = rg_int(r, 16, 28);
            f->creat = (float)b / 10.0f;
            add_mod(n, "AKI, Cr %d.%d -> %d.%d", a / 10, a % 10, b / 10, b % 10);
        } else {
            add_mod(n, "AKI this admission");
        }
    } else if (p < 97) {
        f->ckd_stage = 5;
        f->dialysis = RAD_DIALYSIS_ANURIC;
        add_mod(n, rg_pct(r, 50) ? "ESRD on HD, anuric" : "ESRD on hemodialysis MWF, anuric");
    } else if (p < 99) {
        f->dialysis = RAD_DIALYSIS_RESIDUAL;
        add_mod(n, "on hemodialysis, still makes urine");
    } else {
        f->ckd_stage = 4;
        add_mod(n, "CKD stage 4");
    }
}

// Allergy line: contrast reactions, negations, distractors.
static void gen_allergy(rg_rng *r, rg_note *n) {
    rad_facts *f = &n->f;
    int p = rg_int(r, 0, 99);
    n->allergy[0] = 0;
    if (p < 30) return;
    if (p < 45) { snprintf(n->allergy, sizeof n->allergy, "NKDA"); return; }
    if (p < 53) {
        static const char *const neg[] = {"no contrast allergy", "no known contrast allergy",
                                          "no h/o contrast reaction", "no prior reaction to IV contrast"};
        snprintf(n->allergy, sizeof n->allergy, "%s", RG_PICK(r, neg));
        return;
    }
    if (p < 62) {
        static const char *const dis[] = {"shellfish allergy", "allergic to iodine (betadine rash)",
                                          "Allergies: shellfish, penicillin", "seafood allergy", "PCN allergy (rash)",
                                          "allergic to sulfa"};
        snprintf(n->allergy, sizeof n->allergy, "%s", RG_PICK(r, dis));
        return;
    }
    if (p < 74) {
        static const char *const mild[] = {"IV contrast allergy (hives)", "prior iodinated contrast reaction: itching",
                                           "CT dye -> rash 2015", "hives after CT contrast in 2018"};
        f->reaction[RAD_CLASS_IOD] = RAD_REACT_MILD;
        snprintf(n->allergy, sizeof n->allergy, "%s", RG_PICK(r, mild));
    } else if (p < 86) {
        static const char *const sev[] = {"anaphylaxis to IV contrast 2019", "iodinated contrast: bronchospasm",
                                          "severe reaction to CT contrast (laryngeal edema)",
                                          "IV contrast -> hypotension and wheeze"};
        f->reaction[RAD_CLASS_IOD] = RAD_REACT_SEVERE;
        snprintf(n->allergy, sizeof n->allergy, "%s", RG_PICK(r, sev));
    } else if (p < 91) {
        static const char *const unk[] = {"allergic to IV contrast", "Allergies: iodinated contrast"};
        f->reaction[RAD_CLASS_IOD] = RAD_REACT_UNKNOWN;
        snprintf(n->allergy, sizeof n->allergy, "%s", RG_PICK(r, unk));
    } else if (p < 95) {
        static const char *const gm[] = {"gadolinium allergy (hives)", "MRI contrast reaction: itching"};
        f->reaction[RAD_CLASS_GAD] = RAD_REACT_MILD;
        snprintf(n->allergy, sizeof n->allergy, "%s", RG_PICK(r, gm));
    } else {
        static const char *const gs[] = {"anaphylaxis to gadolinium", "MRI contrast reaction: throat swelling"};
        f->reaction[RAD_CLASS_GAD] = RAD_REACT_SEVERE;
        snprintf(n->allergy, sizeof n->allergy, "%s", RG_PICK(r, gs));
    }
}

static void gen_pregnancy(rg_rng *r, rg_note *n) {
    rad_facts *f = &n->f;
    int p = rg_int(r, 0, 99);
    if (p < 45) return;
    if (p < 72) {
        static const char *const neg[] = {"hCG neg", "denies pregnancy", "not pregnant", "urine pregnancy test negative",
                                          "beta-hCG negative"};
        f->pregnant = -1;
        add_mod(n, "%s", RG_PICK(r, neg));
        return;
    }
    f->pregnant = 1;
    switch (rg_int(r, 0, 4)) {
    case 0: add_mod(n, "%d wks pregnant", rg_int(r, 6, 32)); break;
    case 1: add_mod(n, "IUP %d wks", rg_int(r, 6, 30)); break;
    case 2: add_mod(n, "beta-hCG positive"); break;
    case 3: add_mod(n, "G2P1, currently %d weeks gestation", rg_int(r, 8, 34)); break;
    default: add_mod(n, "LMP %d wks ago", rg_int(r, 6, 10)); break;
    }
}

static void gen_implant(rg_rng *r, rg_note *n) {
    rad_facts *f = &n->f;
    int p = rg_int(r, 0, 99);
    if (p < 80) return;
    if (p < 86) {
        static const char *const unk[] = {"PPM in situ", "pacemaker, MR status unknown", "AICD", "DBS for Parkinson",
                                          "cochlear implant", "aneurysm clip 2009"};
        f->implant = RAD_IMPLANT_UNKNOWN;
        add_mod(n, "%s", RG_PICK(r, unk));
    } else if (p < 89) {
        static const char *const uns[] = {"legacy pacemaker, not MR conditional", "metal in eye (welder)",
                                          "abandoned pacer leads"};
        f->implant = RAD_IMPLANT_UNSAFE;
        add_mod(n, "%s", RG_PICK(r, uns));
    } else if (p < 92) {
        f->implant = RAD_IMPLANT_CONDITIONAL;
        add_mod(n, rg_pct(r, 50) ? "MR conditional pacemaker" : "MRI conditional ICD");
    } else if (p < 96) {
        static const char *const rem[] = {"pacemaker removed 2018", "ICD explanted last year", "no pacemaker"};
        add_mod(n, "%s", RG_PICK(r, rem));
    } else {
        static const char *const oth[] = {"ORIF L tibia", "s/p TKA", "hip replacement 2012"};
        add_mod(n, "%s", RG_PICK(r, oth));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Styles (template ids). split: 0 train, 1 val, 2 test.

// The styles after ST_CLINIC are train-only additions (how real requisitions also arrive: telephone orders,
// progress and consult notes, paper forms, ED notes, sign-out lines, questions, semicolon shorthand). They are
// appended so that the indices, and with them the val/test/sample RNG streams, stay as they were, and they are
// left out of the pretraining corpus (rg_style_corpus), which tools/make_base_model.sh reproduces byte for byte.
enum { ST_TERSE, ST_EHR, ST_LETTER, ST_CAPS, ST_SBAR, ST_TRIAGE, ST_BULLET, ST_NARR, ST_QUESTION, ST_HANDOVER,
       ST_COMMENT, ST_CLINIC, ST_PHONE, ST_PROGRESS, ST_CONSULT, ST_FORM, ST_EDNOTE, ST_SIGNOUT, ST_ASK,
       ST_SHORTHAND, ST_COUNT };
static const char *const rg_style_name[ST_COUNT] = {"terse", "ehr_fields", "referral_letter", "all_caps", "sbar",
                                                    "ed_triage", "bullets", "narrative", "clinical_question",
                                                    "ward_handover", "order_comment", "clinic_referral",
                                                    "phone_order", "progress_note", "consult_plan", "request_form",
                                                    "ed_provider", "signout", "question_first", "shorthand"};
static const int rg_style_split[ST_COUNT] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0};
// 1: the style's notes go into the --corpus text (the original train styles only).
static const int rg_style_corpus[ST_COUNT] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

static const char *sex_word(char sex, int age, int kind) {
    if (kind == 0) return sex == 'F' ? "F" : "M";
    if (kind == 1) return sex == 'F' ? "female" : "male";
    if (age < 16) return sex == 'F' ? "girl" : "boy";
    return sex == 'F' ? "woman" : "man";
}

static void join_list(rg_sb *b, char items[][160], int n, const char *sep) {
    for (int i = 0; i < n; i++) {
        if (i) sb_put(b, sep);
        sb_put(b, items[i]);
    }
}

static void cap_first(char *s) { if (s[0] >= 'a' && s[0] <= 'z') s[0] = (char)(s[0] - 32); }

// ---------------------------------------------------------------------------------------------------------------
// The train-only styles after ST_CLINIC. Everything random here is drawn only when one of these styles is chosen,
// so the val, test and sample streams (which never choose them) and the corpus are unchanged. Boilerplate words
// avoid every cue of demo/radiology_rules.h (negators, "fall", "acute", "severe", "reaction", "her"/"his" for the
// wrong sex, ...): the gold facts come from the modifiers alone, and `radgen --check` verifies it.

// Indication rewording, case-sensitive and on word boundaries: how the question is framed ("r/o", "eval for",
// "?", "concern for", "to exclude", "query", ...) and abbreviation in both directions.
typedef struct rg_abbr { const char *from; const char *to[8]; } rg_abbr;
static const rg_abbr rg_abbrs[] = {
    {"r/o ", {"rule out ", "eval for ", "to exclude ", "query ", "?", "concern for ", "assess for ", "evaluate for "}},
    {"?", {"query ", "possible ", "concern for ", "suspected ", "? ", "r/o ", "eval for ", "likely "}},
    {"right lower quadrant", {"RLQ"}},
    {"RLQ", {"right lower quadrant"}},
    {"RUQ", {"right upper quadrant"}},
    {"LLQ", {"left lower quadrant", "L lower quadrant"}},
    {"SOB", {"shortness of breath", "dyspnoea", "breathlessness"}},
    {"CP", {"chest pain", "chest pn"}},
    {"CXR", {"chest x-ray", "chest film"}},
    {"with", {"w/", "w"}},
    {"and", {"&", "+", "/"}},
    {"after", {"post", "following"}},
    {"fracture", {"fx", "#"}},
    {"h/o", {"hx of", "history of", "PMH"}},
    {"pt", {"patient", "pt."}},
    {"fever", {"fevers", "febrile", "pyrexia", "temps"}},
    {"vomiting", {"emesis", "N/V", "vomiting x3"}},
    {"tenderness", {"ttp", "tender"}},
    {"bilateral", {"bilat", "B/L"}},
    {"weakness", {"weak", "wkness"}},
    {"abdominal", {"abd", "abdo"}},
    {"hematuria", {"haematuria", "blood in urine"}},
    {"suspected", {"susp", "?", "possible", "query"}},
    {"follow-up", {"f/u", "FU", "follow up"}},
    {"weeks", {"wks", "wk"}},
    {"wks", {"weeks"}},
    {"years", {"yrs", "y"}},
    {"days", {"d", "dys"}},
    {"months", {"mo", "mths"}},
    {"headache", {"HA", "h/a"}},
    {"headaches", {"HAs", "h/a"}},
    {"elevated", {"raised", "high", "up"}},
    {"please", {"pls", "plz"}},
    {"L", {"left", "lt", "Lt"}},
    {"R", {"right", "rt", "Rt"}},
    {"surgery", {"surg", "op"}},
    {"unilateral", {"unilat", "one-sided"}},
    {"progressive", {"worsening", "progressing"}},
    {"sudden", {"abrupt", "abrupt onset", "sudden-onset"}},
    {"known", {"k/c/o", "hx of"}},
    {"pre-op", {"preop", "pre-operative"}},
    {"staging", {"stage", "for staging"}},
    {"evaluation", {"eval", "assessment"}},
};

// The same for the modifier phrases (the facts): other spellings of the same fact, kept only where the extractor
// reads them alike (`radgen --check` verifies every note).
static const rg_abbr rg_mod_words[] = {
    {"eGFR ", {"eGFR: ", "eGFR=", "e-GFR ", "GFR "}},
    {"Cr ", {"creat ", "SCr ", "creatinine "}},
    {"NKDA", {"NKA", "no known drug allergies", "nil known allergies"}},
    {"hCG neg", {"bHCG negative", "UPT neg", "hCG negative"}},
    {"not pregnant", {"non-pregnant", "states not pregnant"}},
    {"HTN", {"hypertension", "hx HTN"}},
    {"on apixaban", {"taking apixaban", "anticoagulated with apixaban", "on Eliquis"}},
    {"on rivaroxaban", {"takes Xarelto", "on Xarelto"}},
    {"PPM in situ", {"has a pacemaker", "permanent pacemaker", "PPM"}},
    {"AICD", {"has an ICD", "AICD in situ"}},
    {"shellfish allergy", {"allergic to shellfish", "shellfish - hives"}},
    {"IV contrast allergy (hives)", {"contrast allergy - hives", "hives with IV contrast"}},
    {"anaphylaxis to IV contrast 2019",
     {"IV contrast: anaphylaxis (2019)", "anaphylactic reaction to CT contrast 2019"}},
    {"ESRD on HD, anuric", {"ESRD, HD MWF, anuric", "anuric ESRD on HD"}},
    {"breastfeeding", {"breast feeding", "currently breastfeeding"}},
    {"beta-hCG positive", {"+bHCG", "hCG positive", "positive pregnancy test"}},
    {"wks pregnant", {"weeks pregnant"}},
    {"solitary kidney", {"single kidney", "s/p nephrectomy"}},
    {"DM2", {"T2DM", "type 2 diabetes"}},
    {"T2DM", {"DM2", "diabetic"}},
};

static int rg_alnum(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }

// Rewrites in into out (cap bytes) with the table tab[0..ntab): each match is replaced with probability p percent.
static void rg_reword(rg_rng *r, const rg_abbr *tab, size_t ntab, const char *in, char *out, size_t cap, int p) {
    size_t o = 0, i = 0;
    while (in[i] && o + 1 < cap) {
        const rg_abbr *hit = NULL;
        size_t hl = 0;
        int prev = i ? (unsigned char)in[i - 1] : ' ';
        if (!rg_alnum(prev) && prev != '<' && prev != '>' && prev != '/') {
            for (size_t k = 0; k < ntab && !hit; k++) {
                const char *fr = tab[k].from;
                size_t L = strlen(fr);
                if (strncmp(in + i, fr, L) != 0) continue;
                int next = (unsigned char)in[i + L];
                if (rg_alnum((unsigned char)fr[L - 1]) && (rg_alnum(next) || next == '<' || next == '>' || next == '/'))
                    continue;
                if (!strcmp(fr, "?") && !((next >= 'a' && next <= 'z') || (next >= 'A' && next <= 'Z'))) continue;
                hit = &tab[k];
                hl = L;
            }
        }
        if (hit && rg_pct(r, p)) {
            int nto = 0;
            while (nto < 8 && hit->to[nto]) nto++;
            const char *t = hit->to[rg_u32(r) % (unsigned)nto];
            for (size_t q = 0; t[q] && o + 1 < cap; q++) out[o++] = t[q];
            i += hl;
            continue;
        }
        size_t span = hit ? hl : 1;
        for (size_t q = 0; q < span && o + 1 < cap; q++) out[o++] = in[i++];
    }
    out[o] = 0;
}

static const char *const rg_doctors[] = {"Dr Osei", "Dr Lindqvist", "Dr Haddad", "Dr Nakamura", "Dr Byrne",
                                         "Dr Castillo", "Dr Mensah", "Dr Kowalski", "Dr Ferreira", "Dr Iyer"};
// Neutral chart noise: words the extractor does not read.
static const char *const rg_noise[] = {"code status: full", "daughter is HCP", "interpreter requested (Polish)",
                                       "NPO after midnight", "PT/OT following", "isolation: contact precautions",
                                       "outside images on CD, report to follow", "copied forward from yesterday",
                                       "lives with spouse", "wears glasses", "uses a walker at home",
                                       "Foley in place", "prefers to be called by first name"};

// Age and sex in one of the forms real notes use (all read by rad_extract).
static void put_age_sex(rg_rng *r, rg_sb *b, int age, char sx) {
    switch (rg_int(r, 0, 5)) {
    case 0: sb_printf(b, "%d%s", age, sex_word(sx, age, 0)); break;
    case 1: sb_printf(b, "%d yo %s", age, sex_word(sx, age, 0)); break;
    case 2: sb_printf(b, "%d y/o %s", age, sex_word(sx, age, 1)); break;
    case 3: sb_printf(b, "%d-year-old %s", age, sex_word(sx, age, 2)); break;
    case 4: sb_printf(b, "%s/%d", sex_word(sx, age, 0), age); break;
    default: sb_printf(b, "%dyo %s", age, sex_word(sx, age, 0)); break;
    }
}

// Vital signs, consistent with the indication (no normal heart rate for "tachycardia", fever when it says so);
// none when the indication already gives vitals or an unstable patient.
static int rg_has(const char *s, const char *w) { return strstr(s, w) != NULL; }
static void put_vitals(rg_rng *r, rg_sb *b, const char *ind, int age) {
    int febrile = rg_has(ind, "fever") || rg_has(ind, "febrile");
    int t = febrile ? rg_int(r, 381, 394) : rg_int(r, 362, 374);
    int hr = age < 16 ? rg_int(r, 78, 110) : rg_int(r, 62, 96), sys = rg_int(r, 108, 148), dia = rg_int(r, 62, 88);
    int rr = rg_int(r, 12, 18), sat = rg_int(r, 95, 99);
    switch (rg_int(r, 0, 2)) {
    case 0: sb_printf(b, "T %d.%d HR %d BP %d/%d RR %d SpO2 %d%% RA", t / 10, t % 10, hr, sys, dia, rr, sat); break;
    case 1: sb_printf(b, "T %d.%d, P %d, BP %d/%d, RR %d, sats %d%% on RA", t / 10, t % 10, hr, sys, dia, rr, sat);
        break;
    default: sb_printf(b, "T %d.%d / HR %d / BP %d/%d / RR %d / O2 sat %d%%", t / 10, t % 10, hr, sys, dia, rr, sat);
        break;
    }
}
static int vitals_ok(const char *ind) {
    static const char *const no[] = {"HR ", "BP ", "SpO2", "tachy", "hypox", "unstable", "lactate", "ICU", "bedbound"};
    for (size_t k = 0; k < sizeof no / sizeof no[0]; k++) if (rg_has(ind, no[k])) return 0;
    return 1;
}

// items[0..ni) holds the modifier phrases and the allergy line, already shuffled.
static void render_extra(rg_rng *r, int style, const rad_facts *f, const char *ind, char items[][160], int ni,
                         const rg_note *n, rg_sb *b) {
    int allergy = -1;       // index of the allergy line in items
    char sx = f->sex;
    int age = f->age;
    char w[240];
    int p = style == ST_SHORTHAND ? 70 : style == ST_PROGRESS || style == ST_CONSULT ? 35 : 50;
    rg_reword(r, rg_abbrs, sizeof rg_abbrs / sizeof rg_abbrs[0], ind, w, sizeof w, p);
    for (int i = 0; i < ni; i++) {
        char t[160];
        rg_reword(r, rg_mod_words, sizeof rg_mod_words / sizeof rg_mod_words[0], items[i], t, sizeof t, 40);
        if (!strcmp(items[i], n->allergy)) allergy = i;
        memcpy(items[i], t, sizeof t);
    }
    const char *doc = RG_PICK(r, rg_doctors);
    int noise = rg_pct(r, 35);
    const char *nz = RG_PICK(r, rg_noise);
    switch (style) {
    case ST_PHONE: {
        static const char *const hdr[] = {"Telephone order", "Verbal order", "T/O", "Phone order rec'd",
                                          "V/O, read back and verified"};
        static const char *const from[] = {"ED", "ICU", "ward 6B", "AMU", "surgical team", "urgent care",
                                           "on-call medical team", "GP"};
        const char *h = RG_PICK(r, hdr), *src = RG_PICK(r, from);
        int hh = rg_int(r, 0, 23), mm = rg_int(r, 0, 11) * 5;
        sb_printf(b, "%s %02d:%02d from %s (%s)", h, hh, mm, doc, src);
        if (rg_pct(r, 40)) sb_put(b, ", taken by RN");
        sb_put(b, ". Pt ");
        put_age_sex(r, b, age, sx);
        switch (rg_int(r, 0, 2)) {
        case 0: sb_printf(b, ". Caller requests imaging for %s.", w); break;
        case 1: sb_printf(b, ". Indication per caller: %s.", w); break;
        default: sb_printf(b, ", %s. Wants it done today.", w); break;
        }
        if (ni) {
            sb_put(b, rg_pct(r, 50) ? " Caller also states: " : " Per caller: ");
            join_list(b, items, ni, "; ");
            sb_put(b, ".");
        }
        if (n->meds[0]) sb_printf(b, " Meds per caller: %s.", n->meds);
        if (noise) sb_printf(b, " %s.", nz);
        switch (rg_int(r, 0, 3)) {
        case 0: sb_put(b, " Written order to follow."); break;
        case 1: sb_printf(b, " Call back ext 4%03d with protocol.", rg_int(r, 100, 999)); break;
        case 2: sb_put(b, " Read back, confirmed."); break;
        default: break;
        }
        break;
    }
    case ST_PROGRESS: {
        static const char *const hdr[] = {"Progress note, hospital day", "Daily progress note (medicine), day",
                                          "PN gen surg team, post-admission day", "Hospitalist note, day"};
        static const char *const subj[] = {"seen on rounds, comfortable", "slept poorly, tolerating diet",
                                           "seen with family at bedside", "walking with PT this morning",
                                           "pain controlled on current regimen"};
        const char *h = RG_PICK(r, hdr);
        sb_printf(b, "%s %d.", h, rg_int(r, 1, 9));
        sb_printf(b, "\nS: %s.", RG_PICK(r, subj));
        sb_put(b, "\nO: ");
        put_age_sex(r, b, age, sx);
        if (vitals_ok(ind) && rg_pct(r, 70)) { sb_put(b, ". "); put_vitals(r, b, ind, age); }
        int k = ni ? rg_int(r, 0, ni) : 0;   // items before the plan
        if (k) { sb_put(b, ". "); join_list(b, items, k, ". "); }
        sb_put(b, ".\nA/P: ");
        switch (rg_int(r, 0, 3)) {
        case 0: sb_printf(b, "%s - imaging today, d/w radiology re protocol", w); break;
        case 1: sb_printf(b, "%s. Plan: image today", w); break;
        case 2: sb_printf(b, "#%s -> scan ordered, f/u read", w); break;
        default: sb_printf(b, "%s; will get imaging", w); break;
        }
        if (k < ni) { sb_put(b, ". Also: "); join_list(b, items + k, ni - k, "; "); }
        if (n->meds[0]) sb_printf(b, ". Cont %s", n->meds);
        if (noise) sb_printf(b, ". %s", nz);
        sb_put(b, ".");
        break;
    }
    case ST_CONSULT: {
        static const char *const svc[] = {"Internal medicine", "General surgery", "Hospital medicine",
                                          "Acute medicine"};
        static const char *const lead[] = {"with", "presenting with", "seen for", "referred with"};
        static const char *const act[] = {"recommend imaging, radiology to protocol", "imaging recommended",
                                          "needs imaging today", "image, then reassess"};
        int numstyle = rg_int(r, 0, 2);
        sb_printf(b, "%s consult. Assessment: ", RG_PICK(r, svc));
        put_age_sex(r, b, age, sx);
        sb_printf(b, " %s %s.\nPlan:", RG_PICK(r, lead), w);
        int num = 1;
        if (numstyle == 0) sb_printf(b, "\n%d. ", num++);
        else if (numstyle == 1) sb_printf(b, "\n%d) ", num++);
        else sb_printf(b, "\n#%d ", num++);
        cap_first(w);
        const char *what = rg_pct(r, 50) ? w : "Imaging";
        sb_printf(b, "%s: %s", what, RG_PICK(r, act));
        for (int i = 0; i < ni; i++) {
            if (numstyle == 0) sb_printf(b, "\n%d. %s", num++, items[i]);
            else if (numstyle == 1) sb_printf(b, "\n%d) %s", num++, items[i]);
            else sb_printf(b, "\n#%d %s", num++, items[i]);
        }
        if (n->meds[0]) sb_printf(b, "\nMeds reviewed: %s", n->meds);
        if (noise) sb_printf(b, "\n%s", nz);
        sb_printf(b, "\nWill follow. %s", doc);
        break;
    }
    case ST_FORM: {
        static const char *const hdr[] = {"RADIOLOGY REQUEST", "Imaging requisition",
                                          "DIAGNOSTIC IMAGING REQUEST FORM"};
        static const char *const pri[] = {"[x] urgent [ ] routine", "[ ] urgent [x] routine", "[x] STAT",
                                          "routine", "[x] same day"};
        static const char *const mob[] = {"[x] walking", "[x] wheelchair", "[x] bed", "[x] trolley"};
        const char *h = RG_PICK(r, hdr);
        sb_printf(b, "%s\nPriority: %s\n", h, RG_PICK(r, pri));
        if (rg_pct(r, 50)) sb_printf(b, "Age: %d   Sex: %s", age, sex_word(sx, age, rg_int(r, 0, 1)));
        else { sb_put(b, "Patient: "); put_age_sex(r, b, age, sx); }
        cap_first(w);
        sb_printf(b, "\n%s: %s", rg_pct(r, 50) ? "Clinical details" : "Reason for request", w);
        char hx[16][160];
        int nh = 0;
        for (int i = 0; i < ni; i++) if (i != allergy) memcpy(hx[nh++], items[i], 160);
        if (nh) { sb_put(b, "\nRelevant history: "); join_list(b, hx, nh, "; "); }
        if (allergy >= 0) {
            if (!strncmp(items[allergy], "Allergies", 9)) sb_printf(b, "\n%s", items[allergy]);
            else sb_printf(b, "\nAllergies: %s", items[allergy]);
        }
        if (n->meds[0]) sb_printf(b, "\nCurrent medication: %s", n->meds);
        if (rg_pct(r, 50)) sb_printf(b, "\nMobility: %s", RG_PICK(r, mob));
        if (noise) sb_printf(b, "\nComments: %s", nz);
        sb_printf(b, "\nRequested by: %s, bleep %d", doc, rg_int(r, 1000, 8999));
        break;
    }
    case ST_EDNOTE: {
        static const char *const hdr[] = {"ED provider note", "EM physician note", "ED MD note", "Emergency dept note"};
        static const char *const lead[] = {"with", "here with", "BIBA with", "walk-in with", "sent in by GP with"};
        static const char *const mdm[] = {"imaging ordered, radiology to protocol", "will obtain imaging",
                                          "ddx broad, imaging to guide", "imaging then dispo"};
        sb_printf(b, "%s. HPI: ", RG_PICK(r, hdr));
        put_age_sex(r, b, age, sx);
        sb_printf(b, " %s %s.", RG_PICK(r, lead), w);
        if (vitals_ok(ind)) { sb_put(b, " Vitals: "); put_vitals(r, b, ind, age); sb_put(b, "."); }
        if (ni) { sb_put(b, rg_pct(r, 50) ? " PMH/SH: " : " Hx: "); join_list(b, items, ni, "; "); sb_put(b, "."); }
        if (n->meds[0]) sb_printf(b, " Current meds: %s.", n->meds);
        if (noise) sb_printf(b, " %s.", nz);
        sb_printf(b, " MDM: %s.", RG_PICK(r, mdm));
        break;
    }
    case ST_SIGNOUT: {
        static const char *const hdr[] = {"Signout", "Night float handoff", "Sign-out", "Evening signout"};
        static const char *const todo[] = {"TODO: f/u scan, call rads re protocol", "TODO: chase imaging",
                                           "to do: make sure scan happens tonight", "TODO: imaging, then update team"};
        const char *h = RG_PICK(r, hdr);
        int room = rg_int(r, 2, 9), bay = rg_int(r, 0, 3);
        sb_printf(b, "%s | Rm %d%c | ", h, room, "ABCD"[bay]);
        put_age_sex(r, b, age, sx);
        sb_printf(b, " | %s", w);
        if (ni) { sb_put(b, " | "); join_list(b, items, ni, "; "); }
        if (n->meds[0]) sb_printf(b, " | meds %s", n->meds);
        sb_printf(b, " | %s", RG_PICK(r, todo));
        if (rg_pct(r, 40)) sb_put(b, " | if worse -> call senior");
        break;
    }
    case ST_ASK: {
        static const char *const ask[] = {"Can we get imaging for %s?", "Could we please get a scan to look at %s?",
                                          "Hi radiology - can we image today re: %s?",
                                          "Requesting imaging: %s. Which study is best?",
                                          "Is a scan possible today? %s."};
        sb_printf(b, RG_PICK(r, ask), w);
        sb_put(b, " Pt is ");
        put_age_sex(r, b, age, sx);
        sb_put(b, ".");
        if (ni) { sb_put(b, " FYI "); join_list(b, items, ni, ". "); sb_put(b, "."); }
        if (n->meds[0]) sb_printf(b, " On %s.", n->meds);
        if (noise) sb_printf(b, " %s.", nz);
        switch (rg_int(r, 0, 4)) {
        case 0: sb_put(b, " Thanks!"); break;
        case 1: sb_put(b, " Thank you."); break;
        case 2: sb_printf(b, " Happy to discuss, ext %d.", rg_int(r, 1000, 8999)); break;
        case 3: break;
        default: sb_printf(b, " Many thanks, %s team.", RG_PICK(r, rg_doctors) + 3); break;
        }
        break;
    }
    default: { // ST_SHORTHAND: semicolons, no sentences
        char ws[240];
        size_t o = 0;
        for (size_t i = 0; w[i] && o + 1 < sizeof ws; i++) {
            if (w[i] == ',' && w[i + 1] == ' ') { ws[o++] = ';'; if (rg_pct(r, 50)) i++; }
            else ws[o++] = w[i];
        }
        ws[o] = 0;
        put_age_sex(r, b, age, sx);
        sb_printf(b, "; %s", ws);
        if (ni) { sb_put(b, "; "); join_list(b, items, ni, rg_pct(r, 50) ? "; " : ";"); }
        if (n->meds[0]) sb_printf(b, "; meds: %s", n->meds);
        static const char *const tail[] = {"; pls image", "; img pls", "; ?protocol", "", "; thx"};
        sb_put(b, RG_PICK(r, tail));
        if (rg_pct(r, 35))
            for (size_t i = 0; i < b->n; i++) if (b->s[i] >= 'A' && b->s[i] <= 'Z') b->s[i] = (char)(b->s[i] + 32);
        break;
    }
    }
}

// Writes the note for one style. ind: the indication phrase; mods, meds, allergy from n.
static void render(rg_rng *r, int style, const rad_facts *f, const char *ind, rg_note *n, rg_sb *b) {
    char sx = f->sex;
    int age = f->age;
    char items[16][160];
    int ni = 0;
    for (int i = 0; i < n->nmods; i++) snprintf(items[ni++], 160, "%s", n->mods[i]);
    if (n->allergy[0]) snprintf(items[ni++], 160, "%s", n->allergy);
    // facts in any order
    for (int i = ni - 1; i > 0; i--) {
        int j = rg_int(r, 0, i);
        char t[160];
        memcpy(t, items[i], 160); memcpy(items[i], items[j], 160); memcpy(items[j], t, 160);
    }
    char indc[200];
    snprintf(indc, sizeof indc, "%s", ind);
    sb_clear(b);
    switch (style) {
    case ST_TERSE:
    case ST_CAPS:
        sb_printf(b, "%d%s %s. ", age, sex_word(sx, age, 0), indc);
        join_list(b, items, ni, ". ");
        if (ni) sb_put(b, ".");
        if (n->meds[0]) sb_printf(b, " Meds: %s.", n->meds);
        if (style == ST_CAPS) for (size_t i = 0; i < b->n; i++) if (b->s[i] >= 'a' && b->s[i] <= 'z') b->s[i] = (char)(b->s[i] - 32);
        break;
    case ST_EHR: {
        sb_printf(b, "Reason for exam: %s | Age/Sex: %d/%s", indc, age, sex_word(sx, age, 0));
        if (ni) { sb_put(b, " | Hx: "); join_list(b, items, ni, "; "); }
        if (n->meds[0]) sb_printf(b, " | Meds: %s", n->meds);
        break;
    }
    case ST_LETTER: {
        cap_first(indc);
        sb_printf(b, "Dear colleague, I would be grateful if you could arrange imaging for this %d-year-old %s. %s.",
                  age, sex_word(sx, age, 2), indc);
        if (ni) { sb_put(b, " Relevant background: "); join_list(b, items, ni, "; "); sb_put(b, "."); }
        if (n->meds[0]) sb_printf(b, " Current medication: %s.", n->meds);
        sb_put(b, " Many thanks for your help. Kind regards, Dr M.");
        break;
    }
    case ST_SBAR:
        sb_printf(b, "S: %d yo %s, %s.\nB: ", age, sex_word(sx, age, 1), indc);
        if (ni) join_list(b, items, ni, "; "); else sb_put(b, "nil relevant");
        if (n->meds[0]) sb_printf(b, "; meds %s", n->meds);
        sb_put(b, ".\nA: needs imaging.\nR: please protocol.");
        break;
    case ST_TRIAGE:
        sb_printf(b, "ED triage - %d y/o %s. CC: %s.", age, sex_word(sx, age, 1), indc);
        if (ni) { sb_put(b, " Notes: "); join_list(b, items, ni, ". "); sb_put(b, "."); }
        if (n->meds[0]) sb_printf(b, " Home meds: %s.", n->meds);
        break;
    case ST_BULLET:
        sb_printf(b, "- %d yo %s\n- %s", age, sex_word(sx, age, 0), indc);
        for (int i = 0; i < ni; i++) sb_printf(b, "\n- %s", items[i]);
        if (n->meds[0]) sb_printf(b, "\n- meds: %s", n->meds);
        break;
    case ST_NARR:
        sb_printf(b, "Patient is a %d-year-old %s. Presenting with %s.", age, sex_word(sx, age, 1), indc);
        if (ni) { sb_put(b, " Other: "); join_list(b, items, ni, ". "); sb_put(b, "."); }
        if (n->meds[0]) sb_printf(b, " Takes %s.", n->meds);
        sb_put(b, " Please evaluate.");
        break;
    case ST_QUESTION:
        sb_printf(b, "Clinical question: %s? Pt %d%s.", indc, age, sex_word(sx, age, 0));
        if (ni) { sb_put(b, " Background: "); join_list(b, items, ni, "; "); sb_put(b, "."); }
        if (n->meds[0]) sb_printf(b, " Rx: %s.", n->meds);
        break;
    case ST_HANDOVER:
        sb_printf(b, "Ward handover, bed 12: %d yo %s. Issue: %s.", age, sex_word(sx, age, 1), indc);
        if (ni) { sb_put(b, "\n"); join_list(b, items, ni, "\n"); }
        if (n->meds[0]) sb_printf(b, "\nOn: %s", n->meds);
        sb_put(b, "\nScan today please.");
        break;
    case ST_COMMENT:
        sb_printf(b, "Order comment: %s (%d %s)", indc, age, sex_word(sx, age, 0));
        if (ni) { sb_put(b, ". "); join_list(b, items, ni, " | "); }
        if (n->meds[0]) sb_printf(b, ". Med list: %s", n->meds);
        break;
    case ST_CLINIC:
        cap_first(indc);
        sb_printf(b, "Outpatient clinic referral. Age %d, sex %s. Indication: %s.", age, sex_word(sx, age, 1), indc);
        if (ni) { sb_put(b, " Relevant: "); join_list(b, items, ni, ", "); sb_put(b, "."); }
        if (n->meds[0]) sb_printf(b, " Medications: %s.", n->meds);
        break;
    default:
        render_extra(r, style, f, ind, items, ni, n, b);
        break;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Typos: a few character edits in words of 4+ letters that carry no cue (rad_cue_mask), kept only when the
// extracted facts do not change.

static int facts_equal(const rad_facts *a, const rad_facts *b) {
    return a->age == b->age && a->sex == b->sex && a->egfr == b->egfr && a->creat == b->creat && a->aki == b->aki &&
           a->dialysis == b->dialysis && a->ckd_stage == b->ckd_stage && a->reaction[0] == b->reaction[0] &&
           a->reaction[1] == b->reaction[1] && a->pregnant == b->pregnant && a->breastfeeding == b->breastfeeding &&
           a->implant == b->implant && a->anticoag == b->anticoag && a->incomplete == b->incomplete &&
           a->renal_risk == b->renal_risk && a->rule_negative == b->rule_negative && a->context == b->context;
}

static void add_typos(rg_rng *r, rg_sb *b) {
    static unsigned char mask[RG_CAP];
    rad_facts f0, f1;
    rad_extract(b->s, b->n, &f0);
    rad_cue_mask(b->s, b->n, mask);
    int want = rg_int(r, 0, 3);
    if (!want) return;
    for (int attempt = 0; attempt < 4; attempt++) {
        rg_sb t = *b;
        int done = 0;
        for (int tries = 0; tries < 40 && done < want; tries++) {
            size_t i = (size_t)rg_u32(r) % t.n, a = i, e = i;
            int c = (unsigned char)t.s[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))) continue;
            while (a > 0 && ((t.s[a - 1] | 32) >= 'a' && (t.s[a - 1] | 32) <= 'z')) a--;
            while (e < t.n && ((t.s[e] | 32) >= 'a' && (t.s[e] | 32) <= 'z')) e++;
            if (e - a < 4 || i == a) continue;
            int masked = 0;
            for (size_t q = a; q < e; q++) masked |= mask[q];
            if (masked) continue;
            int op = rg_int(r, 0, 2);
            if (op == 0 && i + 1 < e) { char x = t.s[i]; t.s[i] = t.s[i + 1]; t.s[i + 1] = x; }
            else if (op == 1) { memmove(t.s + i, t.s + i + 1, t.n - i); t.n--; memmove(mask + i, mask + i + 1, t.n - i); }
            else if (t.n + 1 < RG_CAP) { memmove(t.s + i + 1, t.s + i, t.n - i + 1); t.n++; memmove(mask + i + 1, mask + i, t.n - i - 1); }
            done++;
        }
        rad_extract(t.s, t.n, &f1);
        if (facts_equal(&f0, &f1)) { *b = t; return; }
        rad_cue_mask(b->s, b->n, mask);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// One record

typedef struct rg_rec {
    char id[32];
    rg_sb note;
    int label, base;
    unsigned flags;
    int style;
    int acc[4], nacc;
    rad_facts gold;
} rg_rec;

static int word_count(const char *s) {
    int w = 0, in = 0;
    for (; *s; s++) {
        int sp = *s == ' ' || *s == '\n' || *s == '\t';
        if (!sp && !in) w++;
        in = !sp;
    }
    return w;
}

// pad2: a second closing phrase when the first still leaves fewer than 8 words (train only: the val, test and sample
// streams and the corpus keep their original bytes).
static void make_record(rg_rng *r, const rg_scen *sc, int style, int pad2, rg_rec *out) {
    rg_note n;
    memset(&n, 0, sizeof n);
    rad_facts *f = &n.f;
    rad_facts_clear(f);
    f->sex = sc->sex ? sc->sex : (rg_pct(r, 50) ? 'F' : 'M');
    f->age = rg_int(r, sc->amin, sc->amax);
    f->context = sc->ctx;
    f->rule_negative = sc->rule;
    if (sc->tags & SC_ANTICOAG) f->anticoag = 1;
    if (sc->tags & SC_PREG) f->pregnant = 1;
    if (sc->tags & SC_NOTPREG) f->pregnant = -1;
    if (sc->tags & SC_AKI) f->aki = 1;
    int nind = sc->ind[2] ? 3 : sc->ind[1] ? 2 : 1;
    const char *ind = sc->ind[rg_int(r, 0, nind - 1)];
    if (!(sc->tags & SC_NOMODS) || rg_pct(r, 30)) {
        if (!(sc->tags & SC_AKI) && rg_pct(r, 75)) gen_renal(r, &n);
        gen_allergy(r, &n);
        if (f->sex == 'F' && f->age >= 15 && f->age <= 45 && !(sc->tags & (SC_PREG | SC_NOTPREG))) gen_pregnancy(r, &n);
        gen_implant(r, &n);
        if (!(sc->tags & SC_ANTICOAG) && !(sc->rule & RAD_RULE_HEAD) && rg_pct(r, 10)) {
            static const char *const ac[] = {"on apixaban", "warfarin, INR 2.4", "takes Eliquis", "on rivaroxaban"};
            f->anticoag = 1;
            add_mod(&n, "%s", RG_PICK(r, ac));
        }
        if (rg_pct(r, 25)) {
            static const char *const rk[] = {"DM2 on metformin", "HTN", "metformin", "solitary kidney", "T2DM, HTN"};
            static const unsigned rv[] = {RAD_RISK_DM | RAD_RISK_METFORMIN, RAD_RISK_HTN, RAD_RISK_METFORMIN,
                                          RAD_RISK_SINGLE_KIDNEY, RAD_RISK_DM | RAD_RISK_HTN};
            int k = rg_int(r, 0, 4);
            f->renal_risk |= rv[k];
            add_mod(&n, "%s", rk[k]);
        }
        if (f->sex == 'F' && f->age >= 20 && f->age <= 40 && f->pregnant <= 0 && rg_pct(r, 3)) {
            f->breastfeeding = 1;
            add_mod(&n, "breastfeeding");
        }
    }
    if (rg_pct(r, 40)) {
        // irrelevant history: words the extractor does not read
        static const char *const fill[] = {
            "PMHx GERD and hypothyroidism", "lives alone, independent with ADLs", "ex-smoker, quit in her forties",
            "asthma as a child", "seen in clinic last month for the same complaint", "BP 138/82, afebrile today",
            "works as a teacher", "known osteoarthritis of both hands", "tonsillectomy as a teenager",
            "family history of colon polyps", "vaccinations up to date", "recent travel to Spain",
            "previous imaging at another hospital, report not available", "hearing aid, needs interpreter"};
        int k = rg_int(r, 1, 3);
        for (int i = 0; i < k; i++) add_mod(&n, "%s", RG_PICK(r, fill));
    }
    if (rg_pct(r, 45)) {
        int k = rg_int(r, 1, 3);
        n.meds[0] = 0;
        for (int i = 0; i < k; i++) {
            const char *m = RG_PICK(r, rg_meds_other);
            if (strstr(n.meds, m)) continue;
            if (n.meds[0]) strcat(n.meds, ", ");
            strcat(n.meds, m);
        }
    }
    if (f->sex == 'M') f->pregnant = 0;
    render(r, style, f, ind, &n, &out->note);
    if (word_count(out->note.s) < 8) sb_put(&out->note, style == ST_CAPS ? " PLEASE ADVISE ON IMAGING." : " Please advise on imaging.");
    if (pad2 && word_count(out->note.s) < 8) sb_put(&out->note, style == ST_CAPS ? " THANK YOU." : " Thank you.");
    if (rg_pct(r, 60)) add_typos(r, &out->note);

    rad_decision d;
    rad_safety_check_index(f, sc->label, &d);
    out->gold = *f;
    out->base = sc->label;
    out->label = d.label;
    out->flags = d.flags;
    out->style = style;
    out->nacc = 0;
    out->acc[out->nacc++] = d.label;
    // acceptable alternatives: the scenario's, and REVIEW when the check switched the label; each must pass the
    // check unchanged
    int cand[2] = {sc->alt, d.label != sc->label ? RAD_REVIEW : -1};
    for (int k = 0; k < 2; k++) {
        int a = cand[k];
        if (a < 0 || a == d.label) continue;
        rad_decision e;
        rad_safety_check_index(f, a, &e);
        if (e.label == a) out->acc[out->nacc++] = a;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// JSON output

static void json_str(FILE *fp, const char *s) {
    fputc('"', fp);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { fputc('\\', fp); fputc(c, fp); }
        else if (c == '\n') fputs("\\n", fp);
        else if (c == '\t') fputs("\\t", fp);
        else if (c < 0x20) fprintf(fp, "\\u%04x", c);
        else fputc(c, fp);
    }
    fputc('"', fp);
}

static void write_record(FILE *fp, const rg_rec *rc, int labeled) {
    fputs("{\"id\": ", fp);
    json_str(fp, rc->id);
    fputs(", \"note\": ", fp);
    json_str(fp, rc->note.s);
    if (labeled) {
        fputs(", \"label\": ", fp);
        json_str(fp, rad_label_name(rc->label));
        fputs(", \"flags\": [", fp);
        int first = 1;
        for (int k = 0; k < RAD_NUM_FLAGS; k++)
            if (rc->flags >> k & 1u) {
                if (!first) fputs(", ", fp);
                json_str(fp, rad_flag_name(1u << k));
                first = 0;
            }
        fputs("], \"template\": ", fp);
        json_str(fp, rg_style_name[rc->style]);
        fputs(", \"acceptable\": [", fp);
        for (int k = 0; k < rc->nacc; k++) {
            if (k) fputs(", ", fp);
            json_str(fp, rad_label_name(rc->acc[k]));
        }
        fputs("]", fp);
    }
    fputs("}\n", fp);
}

// ---------------------------------------------------------------------------------------------------------------
// Splits

typedef struct rg_split { const char *name; int count; int split; } rg_split;
static const rg_split rg_splits[] = {{"train", 3000, 0}, {"val", 400, 1}, {"test", 600, 2}};
static int rg_train_override;   // --train N (0: the table's count); its own stream: val, test, samples stay

static int styles_of(int split, int *out) {
    int k = 0;
    for (int s = 0; s < ST_COUNT; s++) if (rg_style_split[s] == split) out[k++] = s;
    return k;
}

// One of the exam scenarios whose base label is label.
static const rg_scen *pick_label(rg_rng *r, int label) {
    int idx[RG_NSCEN], k = 0;
    for (int i = 0; i < RG_NSCEN; i++)
        if (!strcmp(rg_scens[i].kind, "exam") && rg_scens[i].label == label) idx[k++] = i;
    return &rg_scens[idx[rg_u32(r) % (unsigned)k]];
}

// Scenario choice: 85% an exam scenario with its label drawn uniformly (so every label is covered), 15% a REVIEW
// scenario (vague, outside the catalogue, decision rule negative).
static const rg_scen *pick_scenario(rg_rng *r, int *turn) {
    int review = rg_pct(r, 15), idx[RG_NSCEN], k = 0;
    if (review) {
        for (int i = 0; i < RG_NSCEN; i++) if (strcmp(rg_scens[i].kind, "exam") != 0) idx[k++] = i;
        return &rg_scens[idx[rg_u32(r) % (unsigned)k]];
    }
    return pick_label(r, (*turn)++ % RAD_NUM_EXAMS);   // exam labels in turn: equal base counts
}

// The seed example of the task description, always the first test record.
static void seed_record(rg_rec *rc) {
    static const rg_scen s = {RAD_CT_AP_IV, 'F', 67, 67, 0, 0, SC_ANTICOAG, RAD_CTA_AP, "exam", {"", NULL, NULL}};
    rad_facts f;
    rad_decision d;
    rad_facts_clear(&f);
    f.age = 67; f.sex = 'F'; f.anticoag = 1;
    memset(rc, 0, sizeof *rc);
    snprintf(rc->id, sizeof rc->id, "test-seed");
    sb_clear(&rc->note);
    sb_put(&rc->note, "67F, 3 d after liver biopsy, on apixaban, Hgb drop, ?bleed");
    rad_safety_check_index(&f, s.label, &d);
    rc->gold = f;
    rc->base = s.label;
    rc->label = d.label;
    rc->flags = d.flags;
    rc->style = ST_COMMENT;
    rc->acc[0] = d.label;
    rc->acc[1] = RAD_CTA_AP;
    rc->nacc = 2;
}

// Train only: in the last fifth of the split, an exam label with fewer than RG_TRAIN_FLOOR notes so far is drawn
// instead of the one in turn (a scenario of that label), so that every label keeps at least that many train notes
// whatever the stream does; labels that the safety check often switches away (MRI pituitary in women of
// childbearing age, ...) would otherwise dip below the coverage the tests ask for (25).
#define RG_TRAIN_FLOOR 30
static int train_deficit(const int *have) {
    int best = -1;
    for (int l = 0; l < RAD_NUM_EXAMS; l++)
        if (have[l] < RG_TRAIN_FLOOR && (best < 0 || have[l] < have[best])) best = l;
    return best;
}

typedef void (*rg_sink)(void *ctx, const char *split, const rg_rec *rc);

// Generates every split in order; calls sink for each record. Returns 0, or the number of records whose word count
// is outside 8..150 (a generator bug).
static int generate(unsigned long long seed, rg_sink sink, void *ctx) {
    static rg_rec rc;
    int bad = 0;
    for (size_t sp = 0; sp < sizeof rg_splits / sizeof rg_splits[0]; sp++) {
        rg_rng r;
        int st[ST_COUNT], nst = styles_of(rg_splits[sp].split, st);
        int turn = 0, have[RAD_NUM_LABELS];
        memset(have, 0, sizeof have);
        rg_seed(&r, seed * 1000003ull + sp);
        const int train = rg_splits[sp].split == 0;
        const int count = train && rg_train_override > 0 ? rg_train_override : rg_splits[sp].count;
        for (int i = 0; i < count; i++) {
            if (rg_splits[sp].split == 2 && i == 0) {
                seed_record(&rc);
            } else {
                int want = train && i >= count * 4 / 5 ? train_deficit(have) : -1;
                const rg_scen *sc = want >= 0 ? pick_label(&r, want) : pick_scenario(&r, &turn);
                make_record(&r, sc, st[rg_u32(&r) % (unsigned)nst], train, &rc);
                snprintf(rc.id, sizeof rc.id, "%s-%04d", rg_splits[sp].name, i);
            }
            int w = word_count(rc.note.s);
            if (w < 8 || w > 150) bad++;
            have[rc.label]++;
            sink(ctx, rg_splits[sp].name, &rc);
        }
    }
    // sample orders: unlabeled notes in the test styles, from their own stream
    {
        rg_rng r;
        int st[ST_COUNT], nst = styles_of(2, st);
        int turn = 0;
        rg_seed(&r, seed * 1000003ull + 99);
        for (int i = 0; i < 30; i++) {
            const rg_scen *sc = pick_scenario(&r, &turn);
            make_record(&r, sc, st[rg_u32(&r) % (unsigned)nst], 0, &rc);
            snprintf(rc.id, sizeof rc.id, "order-%03d", i + 1);
            sink(ctx, "sample_orders", &rc);
        }
    }
    return bad;
}

// --check: extract the facts back from the text and compare the check's answer with the gold one.
typedef struct check_sink { int n, bad, per_label[RAD_NUM_LABELS]; } check_sink;
static void to_check(void *ctx, const char *split, const rg_rec *rc) {
    check_sink *c = (check_sink *)ctx;
    rad_facts f;
    rad_decision d;
    if (!strcmp(split, "train")) c->per_label[rc->label]++;
    rad_extract(rc->note.s, rc->note.n, &f);
    rad_safety_check_index(&f, rc->label, &d);
    c->n++;
    if (d.label != rc->label || d.flags != rc->flags) {
        const rad_facts *g = &rc->gold;
        c->bad++;
        fprintf(stderr, "%s: gold %d/%x got %d/%x | age %d/%d sex %c/%c egfr %g/%g cr %g/%g aki %d/%d dia %d/%d "
                "ckd %d/%d react %d%d/%d%d preg %d/%d bf %d/%d impl %d/%d ac %d/%d risk %x/%x rule %x/%x ctx %x/%x\n",
                rc->id, rc->label, rc->flags, d.label, d.flags, g->age, f.age, g->sex ? g->sex : '?',
                f.sex ? f.sex : '?', (double)g->egfr, (double)f.egfr, (double)g->creat, (double)f.creat, g->aki,
                f.aki, g->dialysis, f.dialysis, g->ckd_stage, f.ckd_stage, g->reaction[0], g->reaction[1],
                f.reaction[0], f.reaction[1], g->pregnant, f.pregnant, g->breastfeeding, f.breastfeeding, g->implant,
                f.implant, g->anticoag, f.anticoag, g->renal_risk, f.renal_risk, g->rule_negative, f.rule_negative,
                g->context, f.context);
    }
}

// --corpus N: plain clinical text, one paragraph a line: order notes (the 8 original train styles only, so the
// validation and test templates stay unseen and the shipped base model's corpus is reproduced byte for byte; never
// a record of the splits themselves), report-like paragraphs headed by
// a catalogue exam, and catalogue descriptions in a few phrasings. No line pairs an order with its label.
static void corpus_finding(rg_rng *r, rg_sb *b) {
    static const char *const rep[] = {
        "No acute intracranial haemorrhage, mass effect or midline shift.",
        "The appendix is dilated to %d mm with periappendiceal fat stranding, consistent with acute appendicitis.",
        "No filling defect in the pulmonary arteries to the subsegmental level.",
        "A %d mm obstructing calculus at the %s ureterovesical junction with mild hydronephrosis.",
        "Gallbladder wall thickening and pericholecystic fluid; sonographic Murphy sign positive.",
        "Compression and Doppler of the %s leg veins show no deep vein thrombosis.",
        "Restricted diffusion in the %s MCA territory in keeping with an acute infarct.",
        "Complete tear of the supraspinatus tendon with %d cm retraction.",
        "Lungs are clear; no pleural effusion or pneumothorax. Heart size is normal.",
        "Intrauterine gestational sac with yolk sac and fetal pole; cardiac activity present.",
        "FDG-avid %s hilar node, SUVmax %d.%d, suspicious for nodal metastasis.",
        "Multilevel degenerative change with moderate foraminal narrowing at L%d-%d.",
        "Protocol changed to non-contrast study because of renal function; radiologist informed.",
        "MRI deferred: pacemaker not MR conditional. CT performed instead.",
        "Premedication given for prior mild contrast reaction; no reaction this time.",
        "A %d mm solid nodule in the %s upper lobe, unchanged from the prior study.",
        "Small %s pleural effusion with adjacent atelectasis.",
        "No fracture or dislocation. Soft tissues are unremarkable.",
        "Simple cyst in the %s kidney measuring %d mm; no follow-up needed.",
        "Free fluid in the pelvis, small volume, likely physiological.",
        "Contrast given without complication; eGFR %d checked before the scan.",
        "Motion artefact limits assessment of the posterior fossa.",
        "Diverticulosis of the sigmoid colon without evidence of diverticulitis.",
        "Hepatic steatosis. No focal liver lesion.",
        "The aorta is of normal calibre; no dissection flap.",
        "Mild chronic small vessel ischaemic change. No acute territorial infarct."};
    static const char *const side[] = {"left", "right"};
    int k = rg_int(r, 0, (int)(sizeof rep / sizeof rep[0]) - 1), a = rg_int(r, 2, 19), c = rg_int(r, 1, 9);
    const char *s = RG_PICK(r, side);
    switch (k) {
    case 1: case 7: sb_printf(b, rep[k], k == 7 ? c % 4 + 1 : a % 10 + 7); break;
    case 3: case 15: sb_printf(b, rep[k], a, s); break;
    case 5: case 6: case 16: sb_printf(b, rep[k], s); break;
    case 10: sb_printf(b, rep[k], s, a % 10 + 3, c); break;
    case 11: sb_printf(b, rep[k], c % 4 + 1, c % 4 + 2); break;
    case 18: sb_printf(b, rep[k], s, a); break;
    case 20: sb_printf(b, rep[k], 30 + a * 4); break;
    default: sb_put(b, rep[k]); break;
    }
}

// all_train (--corpus-styles train): the corpus notes come from every train style (rg_style_split 0), not only
// the original eight; the validation and test styles stay out either way.
static void corpus(FILE *out, unsigned long long seed, int count, int all_train) {
    static const char *const cmp[] = {"none", "none available", "prior study from last year", "CT of 3 months ago",
                                      "outside imaging, report only"};
    static const char *const imp[] = {"No acute abnormality.", "Findings as above.", "Correlate clinically.",
                                      "Recommend follow-up imaging as per guidelines.", "Discussed with the referrer."};
    rg_rng r;
    static rg_rec rc;
    static rg_sb b;
    int turn = 0, st[ST_COUNT], nst = 0;
    for (int s = 0; s < ST_COUNT; s++)
        if (all_train ? rg_style_split[s] == 0 : rg_style_corpus[s]) st[nst++] = s;
    rg_seed(&r, seed * 7919ull + 5);
    for (int i = 0; i < count; i++) {
        int k = rg_int(&r, 0, 19);
        if (k < 12) {
            const rg_scen *sc = pick_scenario(&r, &turn);
            make_record(&r, sc, st[rg_u32(&r) % (unsigned)nst], 0, &rc);
            for (char *p = rc.note.s; *p; p++) if (*p == '\n') *p = ' ';
            fprintf(out, "%s\n", rc.note.s);
            continue;
        }
        const rad_label_info *L = rad_label(rg_int(&r, 0, RAD_NUM_EXAMS - 1));
        sb_clear(&b);
        if (k < 17) {
            int caps = rg_pct(&r, 50), nf = rg_int(&r, 1, 3);
            sb_printf(&b, caps ? "EXAM: %s. " : "Examination: %s. ", L->name);
            if (rg_pct(&r, 50)) sb_printf(&b, caps ? "TECHNIQUE: %s of the %s, contrast %s. " :
                                          "Technique: %s of the %s, contrast %s. ", L->modality, L->region, L->contrast);
            sb_printf(&b, caps ? "COMPARISON: %s. FINDINGS: " : "Comparison: %s. Findings: ", RG_PICK(&r, cmp));
            for (int f = 0; f < nf; f++) { if (f) sb_put(&b, " "); corpus_finding(&r, &b); }
            sb_printf(&b, caps ? " IMPRESSION: %s" : " Impression: %s", RG_PICK(&r, imp));
        } else {
            switch (rg_int(&r, 0, 3)) {
            case 0: sb_printf(&b, "%s: %s. Modality %s, region %s.", L->name, L->desc, L->modality, L->region); break;
            case 1: sb_printf(&b, "%s (%s, %s, contrast %s).", L->desc, L->modality, L->region, L->contrast); break;
            case 2: sb_printf(&b, "Protocol %s - %s.", L->name, L->desc); break;
            default: sb_printf(&b, "The %s study of the %s: %s.", L->modality, L->region, L->desc); break;
            }
        }
        fprintf(out, "%s\n", b.s);
    }
}

#ifndef RADGEN_NO_MAIN

typedef struct file_sink { FILE *fp[4]; } file_sink;
static int split_index(const char *name) {
    if (!strcmp(name, "train")) return 0;
    if (!strcmp(name, "val")) return 1;
    if (!strcmp(name, "test")) return 2;
    return 3;
}
static void to_files(void *ctx, const char *split, const rg_rec *rc) {
    file_sink *s = (file_sink *)ctx;
    int k = split_index(split);
    write_record(s->fp[k], rc, k < 3);
}

static void usage(FILE *fp) {
    fputs("usage: radgen [--seed N] [--train N] [--out DIR] | --corpus N [--corpus-styles original|train] [--seed N]\n"
          "              | --check [--seed N] | --help\n"
          "  --out DIR     write DIR/train.jsonl (3000), val.jsonl (400), test.jsonl (600), sample_orders.jsonl (30)\n"
          "  --train N     notes in train.jsonl (default 3000); the other files do not change with it\n"
          "  --corpus N    print N lines of unlabeled clinical text (pretraining corpus) to stdout: notes in the\n"
          "                8 original train styles only, report-like paragraphs, catalogue descriptions\n"
          "  --corpus-styles train   the --corpus notes come from all 16 train styles (default original: the 8\n"
          "                that made the shipped base model's corpus); validation and test styles never do\n"
          "  --check       generate in memory; report (by id) notes where the facts extracted from the text give a\n"
          "                different label or flags than the generator's gold; exit 1 if any\n"
          "  --seed N      seed (default 7)\n"
          "The committed splits are reproduced exactly by:  build/radgen --seed 7 --out data/\n"
          "Template ids (styles) per split: train terse, ehr_fields, referral_letter, all_caps, sbar, ed_triage,\n"
          "bullets, narrative (these 8 also make the --corpus notes), phone_order, progress_note, consult_plan,\n"
          "request_form, ed_provider, signout, question_first, shorthand; val clinical_question, ward_handover;\n"
          "test order_comment, clinic_referral.\n",
          fp);
}

int main(int argc, char **argv) {
    unsigned long long seed = 7;
    const char *out = NULL;
    int corpus_n = -1, corpus_all_train = 0, check = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) { usage(stdout); return 0; }
        else if (!strcmp(argv[i], "--seed") && i + 1 < argc) seed = strtoull(argv[++i], NULL, 10);
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--corpus") && i + 1 < argc) corpus_n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--corpus-styles") && i + 1 < argc) {
            const char *v = argv[++i];
            if (!strcmp(v, "train")) corpus_all_train = 1;
            else if (strcmp(v, "original")) {
                fprintf(stderr, "radgen: --corpus-styles takes original or train\n");
                return 2;
            }
        }
        else if (!strcmp(argv[i], "--train") && i + 1 < argc) {
            rg_train_override = atoi(argv[++i]);
            if (rg_train_override < 1) { fprintf(stderr, "radgen: --train needs a count of at least 1\n"); return 2; }
        }
        else if (!strcmp(argv[i], "--check")) check = 1;
        else { fprintf(stderr, "radgen: unknown argument %d\n", i); usage(stderr); return 2; }
    }
    if (corpus_n >= 0) { corpus(stdout, seed, corpus_n, corpus_all_train); return 0; }
    if (check) {
        check_sink c;
        memset(&c, 0, sizeof c);
        int bad = generate(seed, to_check, &c);
        fprintf(stderr, "radgen: %d of %d notes disagree; %d outside 8..150 words\n", c.bad, c.n, bad);
        for (int l = 0; l < RAD_NUM_LABELS; l++)
            if (c.per_label[l] < 25) fprintf(stderr, "radgen: train has %d notes of label %d\n", c.per_label[l], l);
        return c.bad || bad ? 1 : 0;
    }
    if (!out) { usage(stderr); return 2; }
    static const char *const names[4] = {"train.jsonl", "val.jsonl", "test.jsonl", "sample_orders.jsonl"};
    file_sink s;
    char path[4][1024], tmp[4][1100];
    for (int k = 0; k < 4; k++) {
        snprintf(path[k], sizeof path[k], "%s/%s", out, names[k]);
        snprintf(tmp[k], sizeof tmp[k], "%s.tmp", path[k]);
        s.fp[k] = fopen(tmp[k], "wb");
        if (!s.fp[k]) { fprintf(stderr, "radgen: cannot write %s\n", tmp[k]); return 1; }
    }
    int bad = generate(seed, to_files, &s);
    for (int k = 0; k < 4; k++) {
        if (fclose(s.fp[k]) != 0 || rename(tmp[k], path[k]) != 0) {
            fprintf(stderr, "radgen: cannot write %s\n", path[k]);
            return 1;
        }
    }
    if (bad) fprintf(stderr, "radgen: warning: %d notes outside 8..150 words\n", bad);
    return 0;
}
#endif // RADGEN_NO_MAIN
