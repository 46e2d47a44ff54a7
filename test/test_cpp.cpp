// test_cpp.cpp - qlora.h (and qlora_vulkan.h when present) compiled as C++ in one translation unit.
//
// build.sh builds this with g++ -std=c++11 -Wall -Wextra -pedantic -Werror: the header must stay valid C++
// (casts on malloc, no designated initializers, no VLAs). A few calls check that the C++ build also works.
// Prints PASS/FAIL lines like the C tests; exits 1 when a check fails.
#define QLORA_IMPLEMENTATION
#include "qlora.h"
#ifdef QLORA_TEST_VULKAN_H            // set by build.sh when qlora_vulkan.h exists
#define QLORA_VULKAN_IMPLEMENTATION
#include "qlora_vulkan.h"
#endif

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

static int failed = 0;

static void check(bool cond, const char *name, const char *detail) {
    if (cond) {
        std::printf("PASS %s\n", name);
    } else {
        std::printf("FAIL %s: %s\n", name, detail);
        failed++;
    }
}

int main() {
    // Status strings: distinct and non-empty for every code.
    bool strings_ok = true;
    for (int s = QLORA_OK; s <= QLORA_ERR_UNSUPPORTED; s++) {
        const char *str = qlora_status_string(static_cast<qlora_status>(s));
        if (!str || !*str) strings_ok = false;
        for (int t = QLORA_OK; t < s && strings_ok; t++)
            if (std::strcmp(str, qlora_status_string(static_cast<qlora_status>(t))) == 0) strings_ok = false;
    }
    check(strings_ok, "c++ qlora_status_string", "a status string is empty or repeated");

    // NF4 round trip of a small (8, 96) weight, with and without double quantization.
    const int64_t rows = 8, cols = 96;
    std::vector<float> x(static_cast<size_t>(rows * cols)), y(x.size());
    float maxabs = 0.0f;
    for (size_t i = 0; i < x.size(); i++) {
        x[i] = std::sin(0.37f * static_cast<float>(i)) * (1.0f + 0.01f * static_cast<float>(i % 7));
        if (std::fabs(x[i]) > maxabs) maxabs = std::fabs(x[i]);
    }
    for (int dq = 0; dq <= 1; dq++) {
        qlora_nf4 w;
        qlora_error err;
        std::memset(&w, 0, sizeof w);
        std::memset(&err, 0, sizeof err);
        qlora_status st = qlora_nf4_quantize(&w, x.data(), rows, cols, QLORA_NF4_BLOCK_DEFAULT, dq, &err);
        char name[64], detail[320];
        std::snprintf(name, sizeof name, "c++ qlora_nf4_quantize dq=%d", dq);
        std::snprintf(detail, sizeof detail, "%s: %s", qlora_status_string(st), err.detail);
        check(st == QLORA_OK, name, detail);
        if (st != QLORA_OK) continue;
        st = qlora_nf4_dequantize(y.data(), &w, &err);
        std::snprintf(name, sizeof name, "c++ qlora_nf4_dequantize dq=%d", dq);
        std::snprintf(detail, sizeof detail, "%s: %s", qlora_status_string(st), err.detail);
        check(st == QLORA_OK, name, detail);
        // Half the widest gap of the NF4 codebook is about 0.139 of the block's absmax; DQ adds under 1%.
        double worst = 0.0;
        for (size_t i = 0; i < x.size(); i++) worst = std::fmax(worst, std::fabs(static_cast<double>(x[i] - y[i])));
        std::snprintf(name, sizeof name, "c++ nf4 round trip error dq=%d", dq);
        std::snprintf(detail, sizeof detail, "max |x - dequant(quant(x))| = %g, bound %g", worst, 0.15 * maxabs);
        check(st == QLORA_OK && worst <= 0.15 * maxabs, name, detail);
        qlora_nf4_free(&w);
    }

    // A non-finite input is refused with QLORA_ERR_NONFINITE.
    {
        qlora_nf4 w;
        qlora_error err;
        std::memset(&w, 0, sizeof w);
        std::memset(&err, 0, sizeof err);
        x[5] = std::nanf("");
        qlora_status st = qlora_nf4_quantize(&w, x.data(), rows, cols, QLORA_NF4_BLOCK_DEFAULT, 0, &err);
        check(st == QLORA_ERR_NONFINITE, "c++ qlora_nf4_quantize refuses NaN", qlora_status_string(st));
        if (st == QLORA_OK) qlora_nf4_free(&w);
    }

#ifdef QLORA_TEST_VULKAN_H
    check(true, "c++ qlora_vulkan.h compiles as C++ with its implementation", "");
#endif
    std::printf("# c++: %d failed\n", failed);
    return failed ? 1 : 0;
}
