// fuzz_dir.h - the scratch directory of a libFuzzer harness whose code under test reads files by path (a model or
// adapter directory): one directory per process under /tmp, made at the first input and removed with the files
// written into it when libFuzzer exits. An input holds two files: the first, one NUL byte, then the second (an
// input without a NUL byte is all first file and an empty second). Include after qlora.h; needs _XOPEN_SOURCE 700.
#ifndef FUZZ_DIR_H
#define FUZZ_DIR_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char        fuzz_dir[256];
static const char *fuzz_dir_names[2];

static void fuzz_dir_cleanup(void) {
    char path[320];
    for (int i = 0; i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s", fuzz_dir, fuzz_dir_names[i]);
        unlink(path);
    }
    rmdir(fuzz_dir);
}

static int fuzz_dir_write(const char *name, const uint8_t *p, size_t n) {
    char path[320];
    snprintf(path, sizeof path, "%s/%s", fuzz_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

// Writes the input's two files as `first` and `second` into the scratch directory (made on the first call,
// named after `harness`) and returns the directory. Traps when the files cannot be written.
static const char *fuzz_dir_files(const char *harness, const char *first, const char *second, const uint8_t *data,
                                  size_t size) {
    if (!fuzz_dir[0]) {
        snprintf(fuzz_dir, sizeof fuzz_dir, "/tmp/%s_%ld", harness, (long)getpid());
        if (mkdir(fuzz_dir, 0700) != 0 && errno != EEXIST) __builtin_trap();
        fuzz_dir_names[0] = first;
        fuzz_dir_names[1] = second;
        atexit(fuzz_dir_cleanup);
    }
    const uint8_t *nul = (const uint8_t *)memchr(data, 0, size);
    const size_t n1 = nul ? (size_t)(nul - data) : size;
    if (!fuzz_dir_write(first, data, n1)) __builtin_trap();
    if (!fuzz_dir_write(second, nul ? nul + 1 : data, nul ? size - n1 - 1 : 0)) __builtin_trap();
    return fuzz_dir;
}

#endif
