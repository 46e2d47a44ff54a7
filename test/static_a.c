// static_a.c - half of the QLORA_STATIC link check: static_a.c and static_b.c each hold a private copy of the
// implementation (QLORA_STATIC makes every function static), and build.sh links both into one program.
// A clash of any external symbol (a function or table left non-static) fails the link.
#define QLORA_STATIC
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include <stdio.h>

typedef const char *(*status_fn)(qlora_status st);

int static_b_run(status_fn *fn);   // in static_b.c: returns its failures and its copy of qlora_status_string

int main(void) {
    enum { N = 128 };
    float x[N], y[N];
    qlora_error err;
    int i, failed = 0, ok = 1;
    status_fn b_fn = NULL;
    for (i = 0; i < N; i++) x[i] = (float)(i % 17) * 0.25f - 2.0f;
    {
        uint8_t codes[N / 2];
        float absmax[N / 64];
        if (qlora_nf4_quantize_raw(codes, absmax, x, N, 64, &err) != QLORA_OK ||
            qlora_nf4_dequantize_raw(y, codes, absmax, N, 64, &err) != QLORA_OK) {
            ok = 0;
        }
        for (i = 0; ok && i < N; i++) ok = y[i] >= -2.0f && y[i] <= 2.0f;
    }
    printf("%s static_a: nf4 round trip in the first private copy\n", ok ? "PASS" : "FAIL");
    failed += !ok;
    failed += static_b_run(&b_fn);
    ok = b_fn != NULL && b_fn != qlora_status_string;
    printf("%s static_a: each translation unit has its own qlora_status_string\n", ok ? "PASS" : "FAIL");
    failed += !ok;
    return failed ? 1 : 0;
}
