// fuzz_radiology_rules.c - libFuzzer harness for what the radiology program does to a note's text before and
// after the model: fact extraction (demo/radiology_rules.h), the cue mask, the prompt's "Facts:" line, the safety
// check on every label, and the final decision with its guards (demo/rad_core.h, rad__decide).
//
//   clang -std=c99 -g -O1 -fsanitize=fuzzer,address,undefined -I. test/fuzz_radiology_rules.c -o build/fuzz_rules -lm
//   ./build/fuzz_rules -max_total_time=60 -max_len=4096 build/fuzz_rad_corpus test/fuzz_radiology_rules_corpus
//
// The input is the note (not NUL-terminated, so ASan sees any read past its end); its bytes also give the
// model's label scores. What must hold for every note, or the run stops with __builtin_trap():
// - the safety promise: a label that comes out auto-assigned is never one the note's facts contraindicate
//   (rad_contraindications), whatever label the model proposed;
// - the guards: an acute stroke work-up leaves only the stroke CT or REVIEW, an anticoagulated head strike only a
//   head CT, the stroke CT or REVIEW, and a note with too many cues only REVIEW;
// - the "Facts:" line is canonical text: bounded in length, so no note text can travel in it;
// - the cue mask marks bytes with 0 or 1 only.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#include "../demo/rad_core.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *note = (const char *)data;
    rad_facts f;
    const int over = rad_extract(note, size, &f);
    if ((over != 0 && over != 1) || (over && !f.incomplete)) __builtin_trap();

    unsigned char *mask = (unsigned char *)malloc(size ? size : 1);
    if (mask) {
        rad_cue_mask(note, size, mask);
        for (size_t i = 0; i < size; i++)
            if (mask[i] > 1) __builtin_trap();
        free(mask);
    }

    rad__buf b;
    memset(&b, 0, sizeof b);
    rad__facts_summary(&f, &b);
    if (!b.oom && (!b.s || b.n == 0 || b.n > 600)) __builtin_trap();
    free(b.s);

    for (int k = 0; k < RAD_NUM_LABELS; k++) {
        rad_decision d;
        if (rad_safety_check_index(&f, k, &d) != 0) __builtin_trap();
        if (d.label < 0 || d.label >= RAD_NUM_LABELS) __builtin_trap();
        if (d.label != RAD_REVIEW && rad_contraindications(&f, d.label) != 0) __builtin_trap();
    }

    // The final decision for model scores read off the input's bytes, at two thresholds.
    rad_result r;
    memset(&r, 0, sizeof r);
    r.facts = f;
    for (int k = 0; k < RAD_NUM_LABELS; k++) r.score[k] = size ? -(double)data[(size_t)k * 7 % size] / 16.0 : -1.0;
    for (int t = 0; t < 2; t++) {
        rad__decide(&r, 1.0, t ? 0.9 : 0.0);
        if (r.label < 0 || r.label >= RAD_NUM_LABELS || !r.reason || r.review != (r.label == RAD_REVIEW)) __builtin_trap();
        if (r.label != RAD_REVIEW && rad_contraindications(&f, r.label) != 0) __builtin_trap();
        if (f.stroke_window && r.label != RAD_REVIEW && r.label != RAD_CT_STROKE) __builtin_trap();
        if (f.anticoag && f.head_strike && r.label != RAD_REVIEW && r.label != RAD_CT_HEAD && r.label != RAD_CT_STROKE)
            __builtin_trap();
        if (f.incomplete && r.label != RAD_REVIEW) __builtin_trap();
    }

    // Catalogue lookups on the input as a name.
    char name[128];
    const size_t n = size < sizeof name - 1 ? size : sizeof name - 1;
    memcpy(name, data, n);
    name[n] = 0;
    const int li = rad_label_index(name);
    if (li < -1 || li >= RAD_NUM_LABELS || (li >= 0 && !rad_label_name(li))) __builtin_trap();
    (void)rad_flag_from_name(note, size);
    return 0;
}
