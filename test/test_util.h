// test_util.h - the tests' shared helpers: named checks, tensor comparison, skips, and the
// file exchange with the Python references in test/ref/ (run with /usr/bin/python3).
//
// Protocol read by build.sh: every check prints exactly one line,
//     PASS <name>            FAIL <name>: <detail>            SKIP <name>: <reason>
// and the program exits 1 if any check failed, else 0. A SKIP is never counted as a pass.
#ifndef QLORA_TEST_UTIL_H
#define QLORA_TEST_UTIL_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tu_passed, tu_failed, tu_skipped;

static inline void tu_vreport(const char *kind, const char *name, const char *fmt, va_list ap) {
    printf("%s %s", kind, name);
    if (fmt && *fmt) {
        printf(": ");
        vprintf(fmt, ap);
    }
    printf("\n");
    fflush(stdout);
}

// Records one named check. fmt describes the failure (printed only when cond is false).
static inline int tu_check(int cond, const char *name, const char *fmt, ...) {
    if (cond) {
        tu_passed++;
        printf("PASS %s\n", name);
        fflush(stdout);
    } else {
        va_list ap;
        va_start(ap, fmt);
        tu_failed++;
        tu_vreport("FAIL", name, fmt, ap);
        va_end(ap);
    }
    return cond;
}

static inline void tu_skip(const char *name, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    tu_skipped++;
    tu_vreport("SKIP", name, fmt, ap);
    va_end(ap);
}

// |got - want| <= atol + rtol·|want| elementwise; NaN anywhere fails. Reports the worst element.
static inline int tu_close(const char *name, const float *got, const float *want, long n, double atol, double rtol) {
    long worst = -1, bad = 0;
    double worst_excess = 0.0, maxabs = 0.0;
    for (long i = 0; i < n; i++) {
        double g = got[i], w = want[i], d = fabs(g - w);
        double lim = atol + rtol * fabs(w);
        if (d > maxabs || d != d) maxabs = d;
        if (!(d <= lim)) {
            bad++;
            if (worst < 0 || d - lim > worst_excess || d != d) { worst = i; worst_excess = d - lim; }
        }
    }
    if (bad == 0) return tu_check(1, name, NULL);
    return tu_check(0, name, "%ld of %ld elements off; worst [%ld] got %.9g want %.9g; max |diff| %.3g",
                    bad, n, worst, (double)got[worst], (double)want[worst], maxabs);
}

// Same for doubles.
static inline int tu_close_d(const char *name, const double *got, const double *want, long n, double atol, double rtol) {
    long worst = -1, bad = 0;
    for (long i = 0; i < n; i++) {
        double d = fabs(got[i] - want[i]);
        if (!(d <= atol + rtol * fabs(want[i]))) { bad++; if (worst < 0) worst = i; }
    }
    if (bad == 0) return tu_check(1, name, NULL);
    return tu_check(0, name, "%ld of %ld elements off; first [%ld] got %.12g want %.12g",
                    bad, n, worst, got[worst], want[worst]);
}

// Exit code for main(): nonzero when anything failed.
static inline int tu_finish(void) {
    printf("# %d passed, %d failed, %d skipped\n", tu_passed, tu_failed, tu_skipped);
    return tu_failed ? 1 : 0;
}

// Scratch directory for reference exchange files: $QLORA_TEST_TMP, else build/tmp.
static inline const char *tu_tmpdir(void) {
    const char *d = getenv("QLORA_TEST_TMP");
    return (d && *d) ? d : "build/tmp";
}

// Path inside the scratch directory (static buffer rotated over 8 slots).
static inline const char *tu_path(const char *name) {
    static char buf[8][512];
    static int slot;
    char *p = buf[slot++ & 7];
    snprintf(p, 512, "%s/%s", tu_tmpdir(), name);
    return p;
}

// 1 if /usr/bin/python3 can import every module in the space-separated list.
static inline int tu_have_python(const char *modules) {
    char cmd[1024];
    char mods[512];
    snprintf(mods, sizeof mods, "%s", modules);
    for (char *p = mods; *p; p++) if (*p == ' ') *p = ',';
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c 'import %s' >/dev/null 2>&1", mods);
    return system(cmd) == 0;
}

// Runs `/usr/bin/python3 <args>`; returns its exit status (0 = success).
static inline int tu_python(const char *fmt, ...) {
    char args[2048], cmd[2304];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s", args);
    int rc = system(cmd);
    return rc;
}

// Raw little-endian arrays for the exchange with Python (numpy.fromfile / tofile).
static inline int tu_write(const char *path, const void *data, size_t bytes) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    size_t n = fwrite(data, 1, bytes, f);
    return fclose(f) == 0 && n == bytes;
}

static inline int tu_read(const char *path, void *data, size_t bytes) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(data, 1, bytes, f);
    int extra = fgetc(f) != EOF;
    fclose(f);
    return n == bytes && !extra;
}

// Deterministic test data: xorshift64* uniform in [-1, 1) and approximately normal values.
static unsigned long long tu_rng_state = 0x9E3779B97F4A7C15ull;
static inline void tu_seed(unsigned long long s) { tu_rng_state = s ? s : 1; }
static inline double tu_uniform(void) {
    tu_rng_state ^= tu_rng_state >> 12;
    tu_rng_state ^= tu_rng_state << 25;
    tu_rng_state ^= tu_rng_state >> 27;
    return (double)((tu_rng_state * 0x2545F4914F6CDD1Dull) >> 11) / 9007199254740992.0 * 2.0 - 1.0;
}
static inline double tu_normal(void) {
    double s = 0;
    for (int i = 0; i < 12; i++) s += tu_uniform() * 0.5 + 0.5;
    return s - 6.0;
}
static inline void tu_fill_normal(float *x, long n, double stddev) {
    for (long i = 0; i < n; i++) x[i] = (float)(tu_normal() * stddev);
}
static inline void tu_fill_uniform(float *x, long n, double scale) {
    for (long i = 0; i < n; i++) x[i] = (float)(tu_uniform() * scale);
}

#endif // QLORA_TEST_UTIL_H
