// static_b.c - second half of the QLORA_STATIC link check (see static_a.c).
#define QLORA_STATIC
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include <stdio.h>
#include <string.h>

typedef const char *(*status_fn)(qlora_status st);

int static_b_run(status_fn *fn);

int static_b_run(status_fn *fn) {
    int ok = strcmp(qlora_status_string(QLORA_OK), qlora_status_string(QLORA_ERR_IO)) != 0;
    printf("%s static_b: qlora_status_string in the second private copy\n", ok ? "PASS" : "FAIL");
    *fn = qlora_status_string;
    return !ok;
}
