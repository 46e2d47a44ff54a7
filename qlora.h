/* qlora.h - v0.1 - QLoRA fine-tuning of Llama-architecture models in one C99 header. MIT license.

   Do this:
      #define QLORA_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the implementation.

   QUICK NOTES
      NF4 4-bit quantization with double quantization, bit-compatible with bitsandbytes.
      NF4 dequant-matmul kernels (scalar reference, AVX2/AVX-512/NEON, OpenBLAS) for a frozen W.
      LoRA linear layers with PEFT semantics (forward, backward, merge).

   TABLE OF CONTENTS (sections appear in this order, in data-flow order)
      1. status codes and error details
      2. deterministic RNG
      3. NF4 quantization and double quantization
      4. NF4 linear: Y = X·Wᵀ and dX += dY·W
      5. LoRA linear layer (PEFT semantics)

   COMPILE-TIME OPTIONS (set before including the implementation)
      QLORA_STATIC          make every function static (for a private copy in one TU)
      QLORA_USE_OPENBLAS    use cblas_sgemm from OpenBLAS for large matmuls (link -lopenblas)
      QLORA_NO_SIMD         force the portable scalar kernels
      QLORA_MALLOC/QLORA_FREE
                            replace malloc/free (define both or neither)

   CONVENTIONS
      Every fallible function returns qlora_status and takes a `qlora_error *err` (may be NULL)
      that receives a detail message naming the argument, tensor or file at fault. The library
      never prints, never exits and never aborts. Matrices are row-major; shapes are written
      (rows, cols) next to each pointer. Backward functions ACCUMULATE into their outputs.

   LICENSE: MIT, see the end of this file.
*/
#ifndef QLORA_H
#define QLORA_H

#include <stddef.h>
#include <stdint.h>

#define QLORA_VERSION_MAJOR 0
#define QLORA_VERSION_MINOR 1

#ifndef QLORADEF
#if defined(QLORA_STATIC) && (defined(__GNUC__) || defined(__clang__))
#define QLORADEF static __attribute__((unused))   // a private copy need not use every function
#elif defined(QLORA_STATIC)
#define QLORADEF static
#else
#define QLORADEF extern
#endif
#endif

#if defined(__cplusplus)
#define QLORA_RESTRICT __restrict
#elif defined(_MSC_VER)
#define QLORA_RESTRICT __restrict
#else
#define QLORA_RESTRICT restrict
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// 1. status codes and error details

typedef enum qlora_status {
    QLORA_OK = 0,
    QLORA_ERR_NOMEM,        // an allocation failed
    QLORA_ERR_IO,           // a file could not be opened, read or written
    QLORA_ERR_FORMAT,       // a file or buffer is malformed
    QLORA_ERR_SHAPE,        // shapes do not match, or a size overflows
    QLORA_ERR_ARG,          // a NULL pointer or an out-of-range argument
    QLORA_ERR_NONFINITE,    // NaN or Inf where a finite value is required
    QLORA_ERR_BACKEND,      // an accelerator backend failed (its code is in the detail)
    QLORA_ERR_UNSUPPORTED   // valid input that this build cannot handle
} qlora_status;

// Detail of the last failure, filled by the function that returned the status.
typedef struct qlora_error {
    qlora_status status;
    char         detail[256];
} qlora_error;

QLORADEF const char *qlora_status_string(qlora_status st);

// ---------------------------------------------------------------------------------------------
// 2. deterministic RNG (splitmix64 seeding + xoshiro256**), held in the struct that uses it

typedef struct qlora_rng { uint64_t s[4]; } qlora_rng;

QLORADEF void     qlora_rng_seed(qlora_rng *r, uint64_t seed);
QLORADEF uint64_t qlora_rng_u64(qlora_rng *r);
QLORADEF float    qlora_rng_uniform(qlora_rng *r);                 // [0, 1)
QLORADEF float    qlora_rng_normal(qlora_rng *r);                  // N(0, 1), Box-Muller
// Counter-based draw: a pure function of (key, index), so a mask can be regenerated in backward.
QLORADEF float    qlora_hash_uniform(uint64_t key, uint64_t index);  // [0, 1)

// ---------------------------------------------------------------------------------------------
// 3. NF4 quantization and double quantization (bitsandbytes layout)
//
//   Packing (bitsandbytes order): element 2i goes in the HIGH nibble of byte i.
//
//        byte i:   7 6 5 4 | 3 2 1 0
//                  code(x[2i]) | code(x[2i+1])        (odd n: the last low nibble is code 7)
//
//   Scale per block of `blocksize` consecutive elements of the row-major flattened tensor:
//   absmax[b] = max |x| over the block (fp32). Code = number of thresholds t with x/absmax > t.
//   Double quantization (DQ): absmax - mean(absmax) is quantized blockwise (256) to 8 bits with
//   the signed dynamic map; nested_absmax holds one fp32 scale per 256 absmax values.

#define QLORA_NF4_BLOCK_DEFAULT 64
#define QLORA_DQ_BLOCK          256

typedef struct qlora_nf4 {
    int64_t  rows, cols;        // logical shape (out, in) of the weight, torch Linear layout
    int32_t  blocksize;         // 32, 64, ..., 4096
    int32_t  double_quant;      // 1: absmax stored as 8-bit codes (qabsmax) + nested fp32 scales
    uint8_t *codes;             // ((rows*cols + 1) / 2) packed 4-bit codes
    float   *absmax;            // (nblocks) fp32 block scales; NULL when double_quant
    uint8_t *qabsmax;           // (nblocks) 8-bit codes into nested_map; DQ only
    float   *nested_absmax;     // (ceil(nblocks / 256)) DQ only
    float    nested_offset;     // mean of the fp32 absmax that DQ subtracted; DQ only
    float    nested_map[256];   // signed dynamic map used by DQ; DQ only
    void    *backend_data;      // resident copy owned by an accelerator backend, or NULL
} qlora_nf4;

// The NF4 codebook (16 values, code 7 = 0.0) and the 15 decision thresholds between adjacent codes.
QLORADEF const float *qlora_nf4_codebook(void);
QLORADEF const float *qlora_nf4_thresholds(void);

// Number of blocks of `blocksize` in n elements: ceil(n / blocksize).
QLORADEF int64_t qlora_nf4_num_blocks(int64_t n, int32_t blocksize);
// Whether bitsandbytes allows this blocksize (32..4096, powers of two).
QLORADEF int     qlora_nf4_blocksize_valid(int32_t blocksize);

// Low level: quantize n floats into codes ((n+1)/2 bytes) and absmax (nblocks).
QLORADEF qlora_status qlora_nf4_quantize_raw(uint8_t *codes, float *absmax, const float *x, int64_t n,
                                             int32_t blocksize, qlora_error *err);
// Low level: out[i] = code[nibble i] * absmax[i / blocksize] for i < n.
QLORADEF qlora_status qlora_nf4_dequantize_raw(float *out, const uint8_t *codes, const float *absmax,
                                               int64_t n, int32_t blocksize, qlora_error *err);

// The 8-bit dynamic map of bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8).
QLORADEF void qlora_dynamic_map(float map[256], int is_signed);
// Blockwise 8-bit quantization against a sorted 256-entry map (nearest entry, ties to the lower).
// q: (n) codes, scale: (ceil(n/blocksize)) fp32 absmax per block.
QLORADEF qlora_status qlora_quantize_blockwise8(uint8_t *q, float *scale, const float *x, int64_t n,
                                                int32_t blocksize, const float map[256], qlora_error *err);
QLORADEF void         qlora_dequantize_blockwise8(float *out, const uint8_t *q, const float *scale, int64_t n,
                                                  int32_t blocksize, const float map[256]);
// Double quantization of nblocks fp32 absmax values. q: (nblocks), nested_absmax: (ceil(nblocks/256)).
QLORADEF qlora_status qlora_dq_quantize(uint8_t *q, float *nested_absmax, float *offset, const float *absmax,
                                        int64_t nblocks, const float map[256], qlora_error *err);
QLORADEF void         qlora_dq_dequantize(float *absmax, const uint8_t *q, const float *nested_absmax,
                                          float offset, int64_t nblocks, const float map[256]);

// Quantize a (rows, cols) fp32 weight. Allocates w's arrays; release with qlora_nf4_free.
// NaN/Inf input returns QLORA_ERR_NONFINITE and leaves *w empty.
QLORADEF qlora_status qlora_nf4_quantize(qlora_nf4 *w, const float *x, int64_t rows, int64_t cols,
                                         int32_t blocksize, int double_quant, qlora_error *err);
// out: (rows, cols) = dequant(w), fp32.
QLORADEF qlora_status qlora_nf4_dequantize(float *out, const qlora_nf4 *w, qlora_error *err);
// fp32 scale of block b (decodes DQ on the fly).
QLORADEF float        qlora_nf4_block_scale(const qlora_nf4 *w, int64_t b);
QLORADEF void         qlora_nf4_free(qlora_nf4 *w);
// Storage bits per parameter: 4 + 32/blocksize, or with DQ 4 + 8/blocksize + 32/(blocksize*256).
QLORADEF double       qlora_nf4_bits_per_param(int32_t blocksize, int double_quant);
// Bytes held by w (codes + scales).
QLORADEF size_t       qlora_nf4_bytes(const qlora_nf4 *w);

// ---------------------------------------------------------------------------------------------
// 4. NF4 linear: Y = X·Wᵀ (forward) and dX += dY·W (backward). W is frozen: no weight gradient.

typedef enum qlora_kernel {
    QLORA_KERNEL_AUTO = 0,  // the fastest path this build and machine allow
    QLORA_KERNEL_REF,       // portable scalar reference (the specification)
    QLORA_KERNEL_SIMD,      // AVX-512 / AVX2 / NEON, chosen at compile time (falls back to REF)
    QLORA_KERNEL_BLAS       // dequantize panels, then cblas_sgemm (falls back to SIMD)
} qlora_kernel;

// An accelerator plugs in as a table of function pointers. Every member is optional:
// NULL, or a return of QLORA_ERR_UNSUPPORTED, sends that call to the CPU path.
typedef struct qlora_backend {
    const char *name;
    void       *user;
    qlora_status (*nf4_linear_forward)(void *user, float *y, const float *x, const qlora_nf4 *w,
                                       int64_t M, qlora_error *err);
    qlora_status (*nf4_linear_backward)(void *user, float *dx, const float *dy, const qlora_nf4 *w,
                                        int64_t M, qlora_error *err);
} qlora_backend;

// How a kernel call executes. NULL means { QLORA_KERNEL_AUTO, no backend }.
typedef struct qlora_exec {
    qlora_kernel         kernel;
    const qlora_backend *backend;
} qlora_exec;

// Y (M, out) = X (M, in) · Wᵀ. Overwrites Y.
QLORADEF qlora_status qlora_nf4_linear_forward(const qlora_exec *ex, float *y, const float *x,
                                               const qlora_nf4 *w, int64_t M, qlora_error *err);
// dX (M, in) += dY (M, out) · W. Accumulates.
QLORADEF qlora_status qlora_nf4_linear_backward(const qlora_exec *ex, float *dx, const float *dy,
                                                const qlora_nf4 *w, int64_t M, qlora_error *err);
// What the build and the machine offer: SIMD level, OpenMP threads, BLAS core and whether it is used.
typedef struct qlora_cpu_info {
    const char *simd;            // "avx512", "avx2", "neon" or "scalar"
    int         omp_threads;     // 1 without OpenMP
    int         blas_compiled;   // built with QLORA_USE_OPENBLAS
    const char *blas_core;       // openblas_get_corename(), or "none"
    int         blas_trusted;    // 0 when the BLAS core is misdetected for this CPU (then AUTO avoids BLAS)
} qlora_cpu_info;
QLORADEF qlora_cpu_info qlora_cpu_info_get(void);

// Dense fp32 matmul used by LoRA and the model: C (M,N) = alpha·op(A)·op(B) + beta·C, row-major,
// op(A) is (M,K), op(B) is (K,N); trans_a/trans_b select the transpose as in cblas.
QLORADEF void qlora_sgemm(const qlora_exec *ex, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                          float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float beta, float *C, int64_t ldc);

// ---------------------------------------------------------------------------------------------
// 5. LoRA linear layer (PEFT semantics)
//
//   y = x·Wᵀ + s · dropout(x)·Aᵀ·Bᵀ,   s = alpha / r  (rsLoRA: alpha / sqrt(r))
//   A: (r, in) kaiming-uniform(a = √5) ⇒ U(-1/√in, 1/√in);  B: (out, r) zeros.
//   Dropout applies only to the input of A, with inverted scaling 1/(1-p), in training only.

typedef struct qlora_lora_config {
    int32_t rank;          // r
    float   alpha;         // lora_alpha
    float   dropout;       // lora_dropout p in [0, 1)
    int32_t use_rslora;    // 1: s = alpha / sqrt(r)
} qlora_lora_config;

typedef struct qlora_lora {
    int64_t in, out;
    int32_t rank;
    float   alpha, scale, dropout;
    int32_t use_rslora;
    float  *A;             // (rank, in)   lora_A.weight
    float  *B;             // (out, rank)  lora_B.weight
    float  *dA;            // (rank, in)   gradient, accumulated by backward
    float  *dB;            // (out, rank)  gradient, accumulated by backward
    qlora_rng rng;         // draws the dropout keys
} qlora_lora;

// What forward keeps for backward. The caller owns the buffers.
typedef struct qlora_lora_cache {
    float   *xa;           // (M, rank) dropout(x)·Aᵀ
    float   *xd;           // (M, in)   dropout(x); needed only when training with dropout > 0
    uint64_t dropout_key;  // key of this forward's mask; backward regenerates the mask from it
    int32_t  dropped;      // 1 when a dropout mask was applied
} qlora_lora_cache;

// Allocates A, B, dA, dB; initializes A kaiming-uniform from `seed`, B and the gradients to zero.
QLORADEF qlora_status qlora_lora_init(qlora_lora *l, int64_t in, int64_t out, const qlora_lora_config *cfg,
                                      uint64_t seed, qlora_error *err);
QLORADEF void         qlora_lora_free(qlora_lora *l);
// y (M, out) = x·Wᵀ + s·dropout(x)·Aᵀ·Bᵀ. training = 0 disables dropout. Overwrites y.
QLORADEF qlora_status qlora_lora_forward(const qlora_exec *ex, float *y, qlora_lora_cache *cache,
                                         const float *x, qlora_lora *l, const qlora_nf4 *w, int64_t M,
                                         int training, qlora_error *err);
// dx (M, in) += dy·W + s·((dy·B)·A) ⊙ mask;  dA += s·(dy·B)ᵀ·dropout(x);  dB += s·dyᵀ·xa.
// dx may be NULL when the input gradient is not needed. Accumulates. Consumes the cache (its buffers
// serve as scratch), so each backward needs its own forward.
QLORADEF qlora_status qlora_lora_backward(const qlora_exec *ex, float *dx, qlora_lora *l, const float *dy,
                                          const float *x, const qlora_lora_cache *cache, const qlora_nf4 *w,
                                          int64_t M, qlora_error *err);
// out (out, in) = dequant(W) + s·B·A, the merged dense weight for export.
QLORADEF qlora_status qlora_lora_merge(float *merged, const qlora_lora *l, const qlora_nf4 *w, qlora_error *err);
QLORADEF void         qlora_lora_zero_grad(qlora_lora *l);

#ifdef __cplusplus
}
#endif

// Sections under development in wip/ (folded into this file before they land).
#define QLORA__PART_API
#include "wip/parts.inc"
#undef QLORA__PART_API

#endif // QLORA_H

// =============================================================================================
//                                     IMPLEMENTATION
// =============================================================================================
#ifdef QLORA_IMPLEMENTATION
#ifndef QLORA__IMPLEMENTED
#define QLORA__IMPLEMENTED

#include <math.h>
#include <string.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>

#if defined(QLORA_MALLOC) != defined(QLORA_FREE)
#error "Define both or neither of QLORA_MALLOC and QLORA_FREE"
#endif
#ifndef QLORA_MALLOC
#define QLORA_MALLOC(sz) malloc(sz)
#define QLORA_FREE(p)    free(p)
#endif

// --- platform: SIMD level (compile time only) and OpenMP ---
#if !defined(QLORA_NO_SIMD) && defined(__AVX512F__) && defined(__AVX512BW__)
#define QLORA__AVX512 1
#include <immintrin.h>
#elif !defined(QLORA_NO_SIMD) && defined(__AVX2__) && defined(__FMA__)
#define QLORA__AVX2 1
#include <immintrin.h>
#elif !defined(QLORA_NO_SIMD) && (defined(__ARM_NEON) || defined(__ARM_NEON__)) && defined(__aarch64__)
#define QLORA__NEON 1
#include <arm_neon.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef QLORA_USE_OPENBLAS
#include <cblas.h>
#endif

#define QLORA__PI 3.14159265358979323846

// ---------------------------------------------------------------------------------------------
// internal utilities

// Formats a detail into err (if any) and returns st, so a failure site is one line.
static inline qlora_status qlora__fail(qlora_error *err, qlora_status st, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static inline qlora_status qlora__fail(qlora_error *err, qlora_status st, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
        va_end(ap);
        err->status = st;
    }
    return st;
}

// a*b with overflow detection on int64 sizes (both non-negative). Returns 0 on overflow.
static inline int qlora__mul_ok(int64_t a, int64_t b, int64_t *out) {
    if (a < 0 || b < 0) return 0;
    if (a != 0 && b > INT64_MAX / a) return 0;
    *out = a * b;
    return 1;
}

// Allocation of n bytes as size_t, failing on sizes a size_t cannot hold.
static inline void *qlora__alloc(int64_t n) {
    if (n < 0 || (uint64_t)n > (uint64_t)SIZE_MAX) return NULL;
    return QLORA_MALLOC((size_t)(n > 0 ? n : 1));
}

static inline void *qlora__calloc(int64_t n) {
    void *p = qlora__alloc(n);
    if (p) memset(p, 0, (size_t)n);
    return p;
}

QLORADEF const char *qlora_status_string(qlora_status st) {
    switch (st) {
    case QLORA_OK:              return "ok";
    case QLORA_ERR_NOMEM:       return "out of memory";
    case QLORA_ERR_IO:          return "i/o error";
    case QLORA_ERR_FORMAT:      return "malformed input";
    case QLORA_ERR_SHAPE:       return "shape mismatch or size overflow";
    case QLORA_ERR_ARG:         return "invalid argument";
    case QLORA_ERR_NONFINITE:   return "non-finite value";
    case QLORA_ERR_BACKEND:     return "backend failure";
    case QLORA_ERR_UNSUPPORTED: return "unsupported";
    }
    return "unknown status";
}

// ---------------------------------------------------------------------------------------------
// 2. deterministic RNG
//
// splitmix64 expands a seed into xoshiro256** state; qlora_hash_uniform is splitmix64's finalizer
// applied to (key, index), a counter-based draw that backward can replay without stored masks.

static uint64_t qlora__splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint64_t qlora__rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

QLORADEF void qlora_rng_seed(qlora_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = qlora__splitmix64(&seed);
}

QLORADEF uint64_t qlora_rng_u64(qlora_rng *r) {
    uint64_t *s = r->s;
    uint64_t result = qlora__rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = qlora__rotl(s[3], 45);
    return result;
}

// 24 random bits scaled by 2^-24: exactly representable floats in [0, 1).
QLORADEF float qlora_rng_uniform(qlora_rng *r) { return (float)(qlora_rng_u64(r) >> 40) * (1.0f / 16777216.0f); }

QLORADEF float qlora_rng_normal(qlora_rng *r) {
    // Box-Muller in double; u1 in (0, 1] keeps the log finite.
    double u1 = ((double)(qlora_rng_u64(r) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double u2 = (double)(qlora_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
    return (float)(sqrt(-2.0 * log(u1)) * cos(2.0 * QLORA__PI * u2));
}

QLORADEF float qlora_hash_uniform(uint64_t key, uint64_t index) {
    uint64_t x = key ^ (index * 0xD1B54A32D192ED03ull);
    return (float)(qlora__splitmix64(&x) >> 40) * (1.0f / 16777216.0f);
}

// ---------------------------------------------------------------------------------------------
// 3. NF4 quantization and double quantization
//
// The codebook and thresholds are bitsandbytes' (functional.py get_4bit_type("nf4"), kernels.cu
// dQuantizeNF4): 7 negative values, an exact 0 and 8 positive values, both ends ±1.0. A value
// y = x·(1/absmax) takes the code equal to the number of thresholds strictly below it, so a
// value exactly on a threshold takes the lower code.

static const float qlora__nf4_code[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
};

static const float qlora__nf4_threshold[15] = {
    -0.8480963706970215f, -0.6106328964233398f, -0.4599952697753906f, -0.33967941999435425f,
    -0.23460739850997925f, -0.13791173696517944f, -0.045525018125772476f, 0.03979014977812767f,
    0.120255246758461f, 0.2035212516784668f, 0.2920137643814087f, 0.3893125355243683f,
    0.5016634464263916f, 0.6427869200706482f, 0.8614784479141235f,
};

// NF4 layout facts, checked at compile time: 16 codes, 15 thresholds, two codes per byte.
typedef char qlora__check_nf4_tables[(sizeof(qlora__nf4_code) == 16 * sizeof(float) &&
                                      sizeof(qlora__nf4_threshold) == 15 * sizeof(float)) ? 1 : -1];

QLORADEF const float *qlora_nf4_codebook(void) { return qlora__nf4_code; }
QLORADEF const float *qlora_nf4_thresholds(void) { return qlora__nf4_threshold; }

// Code of a normalized value: the number of thresholds strictly below y. Fifteen branch-free
// comparisons; the compiler vectorizes the loops that call this.
static inline int qlora__nf4_encode(float y) {
    int c = 0;
    for (int t = 0; t < 15; t++) c += y > qlora__nf4_threshold[t];
    return c;
}

// c[i] = qlora__nf4_encode(y[i]) for a block. SIMD: one compare per threshold on 16 (AVX-512)
// or 8 (AVX2) values at a time, counting the thresholds below each value; the scalar twin
// qlora__nf4_encode finishes the tail and is the reference.
static void qlora__nf4_encode_block(uint8_t *c, const float *y, int64_t len) {
    int64_t i = 0;
#if defined(QLORA__AVX512)
    for (; i + 16 <= len; i += 16) {
        __m512 v = _mm512_loadu_ps(y + i);
        __m512i count = _mm512_setzero_si512();
        for (int t = 0; t < 15; t++) {
            __mmask16 above = _mm512_cmp_ps_mask(v, _mm512_set1_ps(qlora__nf4_threshold[t]), _CMP_GT_OQ);
            count = _mm512_mask_add_epi32(count, above, count, _mm512_set1_epi32(1));
        }
        _mm_storeu_si128((__m128i *)(c + i), _mm512_maskz_cvtepi32_epi8(0xFFFF, count));
    }
#elif defined(QLORA__AVX2)
    for (; i + 8 <= len; i += 8) {
        __m256 v = _mm256_loadu_ps(y + i);
        __m256i count = _mm256_setzero_si256();
        for (int t = 0; t < 15; t++)   // a true compare is all ones (-1): subtracting counts it
            count = _mm256_sub_epi32(count, _mm256_castps_si256(_mm256_cmp_ps(v, _mm256_set1_ps(qlora__nf4_threshold[t]), _CMP_GT_OQ)));
        int32_t lanes[8];
        _mm256_storeu_si256((__m256i *)lanes, count);
        for (int k = 0; k < 8; k++) c[i + k] = (uint8_t)lanes[k];
    }
#endif
    for (; i < len; i++) c[i] = (uint8_t)qlora__nf4_encode(y[i]);
}

QLORADEF int64_t qlora_nf4_num_blocks(int64_t n, int32_t blocksize) {
    if (n <= 0 || blocksize <= 0) return 0;
    return (n + blocksize - 1) / blocksize;
}

QLORADEF int qlora_nf4_blocksize_valid(int32_t blocksize) {
    return blocksize >= 32 && blocksize <= 4096 && (blocksize & (blocksize - 1)) == 0;
}

static qlora_status qlora__check_finite(const float *x, int64_t n, const char *what, qlora_error *err) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return qlora__fail(err, QLORA_ERR_NONFINITE, "%s: element %lld is %s", what, (long long)i,
                               isnan(x[i]) ? "NaN" : "Inf");
    return QLORA_OK;
}

QLORADEF qlora_status qlora_nf4_quantize_raw(uint8_t *codes, float *absmax, const float *x, int64_t n,
                                             int32_t blocksize, qlora_error *err) {
    if (!codes || !absmax || !x) return qlora__fail(err, QLORA_ERR_ARG, "nf4 quantize: NULL codes, absmax or input");
    if (n < 0) return qlora__fail(err, QLORA_ERR_ARG, "nf4 quantize: negative length %lld", (long long)n);
    if (!qlora_nf4_blocksize_valid(blocksize))
        return qlora__fail(err, QLORA_ERR_ARG, "nf4 quantize: blocksize %d not in {32, 64, ..., 4096}", (int)blocksize);
    qlora_status st = qlora__check_finite(x, n, "nf4 quantize input", err);
    if (st != QLORA_OK) return st;
    int64_t nblocks = qlora_nf4_num_blocks(n, blocksize);
    // Blocks are independent; each thread writes whole blocks, and a block starts on an even
    // element (blocksize is even), so no two threads share a byte.
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 16))
#endif
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t lo = b * blocksize, hi = lo + blocksize < n ? lo + blocksize : n;
        float amax = 0.0f;
        for (int64_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i]));
        absmax[b] = amax;
        // y = x·(1/absmax) as bitsandbytes computes it. An all-zero block gives y = 0 (code 7); a
        // subnormal absmax whose reciprocal overflows divides instead, so y stays in [-1, 1].
        float inv = amax > 0.0f ? 1.0f / amax : 0.0f;
        int divide = !isfinite(inv);
        float y[4096];     // normalized block
        uint8_t c[4096 + 2];   // codes of this block (+ the odd tail's pad), then packed two per byte
        int64_t len = hi - lo;   // 1..4096
        for (int64_t i = 0; i < len; i++) y[i] = divide ? x[lo + i] / amax : x[lo + i] * inv;
        qlora__nf4_encode_block(c, y, len);
        if ((len & 1) && len > 0 && len < 4096) c[len++] = 7;   // odd tail: the low nibble is the code of 0
        for (int64_t i = 0; i < len; i += 2) codes[(lo + i) / 2] = (uint8_t)((c[i] << 4) | c[i + 1]);
    }
    return QLORA_OK;
}

QLORADEF qlora_status qlora_nf4_dequantize_raw(float *out, const uint8_t *codes, const float *absmax, int64_t n,
                                               int32_t blocksize, qlora_error *err) {
    if (!out || !codes || !absmax) return qlora__fail(err, QLORA_ERR_ARG, "nf4 dequantize: NULL argument");
    if (n < 0) return qlora__fail(err, QLORA_ERR_ARG, "nf4 dequantize: negative length %lld", (long long)n);
    if (!qlora_nf4_blocksize_valid(blocksize))
        return qlora__fail(err, QLORA_ERR_ARG, "nf4 dequantize: blocksize %d not in {32, 64, ..., 4096}", (int)blocksize);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 16))
#endif
    for (int64_t i = 0; i < n; i++) {
        int c = (i & 1) ? (codes[i >> 1] & 15) : (codes[i >> 1] >> 4);
        out[i] = qlora__nf4_code[c] * absmax[i / blocksize];
    }
    return QLORA_OK;
}

// --- 8-bit blockwise quantization against a dynamic map (used by DQ and the 8-bit optimizer) ---
//
// The maps are bitsandbytes' create_dynamic_map(signed, max_exponent_bits=7, total_bits=8) as
// torch 1.13 computes them in float32 (its linspace and scaling round differently from a
// double-precision evaluation in up to ~45 entries, so the exact values are tabulated).
// Signed: index 127 = 0, 255 = +1.0, no -1.0. Unsigned: index 0 = 0, 255 = 1.0.
static const float qlora__dynamic_map_signed[256] = {
    -0.992968738f, -0.978906214f, -0.96484375f, -0.950781226f, -0.936718702f, -0.922656238f,
    -0.908593774f, -0.89453125f, -0.880468726f, -0.866406202f, -0.852343738f, -0.838281214f,
    -0.82421875f, -0.810156226f, -0.796093702f, -0.782031238f, -0.767968774f, -0.75390625f,
    -0.739843786f, -0.725781262f, -0.711718798f, -0.697656274f, -0.68359375f, -0.669531286f,
    -0.655468762f, -0.641406238f, -0.627343774f, -0.61328125f, -0.599218726f, -0.585156262f,
    -0.571093798f, -0.557031274f, -0.54296875f, -0.528906226f, -0.514843762f, -0.500781238f,
    -0.486718774f, -0.47265625f, -0.458593726f, -0.444531262f, -0.430468738f, -0.416406214f,
    -0.40234375f, -0.388281226f, -0.374218762f, -0.360156238f, -0.346093714f, -0.33203125f,
    -0.317968726f, -0.303906262f, -0.289843738f, -0.275781274f, -0.26171875f, -0.247656256f,
    -0.233593762f, -0.219531253f, -0.205468744f, -0.19140625f, -0.177343741f, -0.163281247f,
    -0.149218753f, -0.135156244f, -0.12109375f, -0.107031256f, -0.0985937491f, -0.0957812443f,
    -0.0929687545f, -0.0901562497f, -0.0873437524f, -0.0845312476f, -0.0817187428f, -0.078906253f,
    -0.0760937482f, -0.0732812509f, -0.0704687461f, -0.0676562563f, -0.0648437515f, -0.0620312467f,
    -0.0592187531f, -0.0564062484f, -0.053593751f, -0.05078125f, -0.047968749f, -0.0451562516f,
    -0.0423437469f, -0.0395312496f, -0.0367187522f, -0.0339062475f, -0.0310937501f, -0.0282812472f,
    -0.0254687499f, -0.0226562507f, -0.0198437497f, -0.0170312505f, -0.0142187504f, -0.0114062503f,
    -0.00971874967f, -0.00915624946f, -0.00859375019f, -0.00803124998f, -0.00746874977f, -0.00690625003f,
    -0.00634374982f, -0.00578125007f, -0.00521875033f, -0.00465624966f, -0.00409374991f, -0.00353124971f,
    -0.00296874996f, -0.00240624999f, -0.00184375001f, -0.00128124992f, -0.000943750085f, -0.000831249985f,
    -0.00071875006f, -0.000606250076f, -0.000493750034f, -0.000381250022f, -0.000268750038f, -0.000156250011f,
    -8.87499991e-05f, -6.62500024e-05f, -4.37499984e-05f, -2.12499981e-05f, -7.7499999e-06f, -3.25000019e-06f,
    -5.50000038e-07f, 0.0f, 5.50000038e-07f, 3.25000019e-06f, 7.7499999e-06f, 2.12499981e-05f,
    4.37499984e-05f, 6.62500024e-05f, 8.87499991e-05f, 0.000156250011f, 0.000268750038f, 0.000381250022f,
    0.000493750034f, 0.000606250076f, 0.00071875006f, 0.000831249985f, 0.000943750085f, 0.00128124992f,
    0.00184375001f, 0.00240624999f, 0.00296874996f, 0.00353124971f, 0.00409374991f, 0.00465624966f,
    0.00521875033f, 0.00578125007f, 0.00634374982f, 0.00690625003f, 0.00746874977f, 0.00803124998f,
    0.00859375019f, 0.00915624946f, 0.00971874967f, 0.0114062503f, 0.0142187504f, 0.0170312505f,
    0.0198437497f, 0.0226562507f, 0.0254687499f, 0.0282812472f, 0.0310937501f, 0.0339062475f,
    0.0367187522f, 0.0395312496f, 0.0423437469f, 0.0451562516f, 0.047968749f, 0.05078125f,
    0.053593751f, 0.0564062484f, 0.0592187531f, 0.0620312467f, 0.0648437515f, 0.0676562563f,
    0.0704687461f, 0.0732812509f, 0.0760937482f, 0.078906253f, 0.0817187428f, 0.0845312476f,
    0.0873437524f, 0.0901562497f, 0.0929687545f, 0.0957812443f, 0.0985937491f, 0.107031256f,
    0.12109375f, 0.135156244f, 0.149218753f, 0.163281247f, 0.177343741f, 0.19140625f,
    0.205468744f, 0.219531253f, 0.233593762f, 0.247656256f, 0.26171875f, 0.275781274f,
    0.289843738f, 0.303906262f, 0.317968726f, 0.33203125f, 0.346093714f, 0.360156238f,
    0.374218762f, 0.388281226f, 0.40234375f, 0.416406214f, 0.430468738f, 0.444531262f,
    0.458593726f, 0.47265625f, 0.486718774f, 0.500781238f, 0.514843762f, 0.528906226f,
    0.54296875f, 0.557031274f, 0.571093798f, 0.585156262f, 0.599218726f, 0.61328125f,
    0.627343774f, 0.641406238f, 0.655468762f, 0.669531286f, 0.68359375f, 0.697656274f,
    0.711718798f, 0.725781262f, 0.739843786f, 0.75390625f, 0.767968774f, 0.782031238f,
    0.796093702f, 0.810156226f, 0.82421875f, 0.838281214f, 0.852343738f, 0.866406202f,
    0.880468726f, 0.89453125f, 0.908593774f, 0.922656238f, 0.936718702f, 0.950781226f,
    0.96484375f, 0.978906214f, 0.992968738f, 1.0f,
};
static const float qlora__dynamic_map_unsigned[256] = {
    0.0f, 3.2500003e-07f, 7.7499999e-07f, 2.12499981e-06f, 4.37499966e-06f, 6.62499997e-06f,
    8.87499937e-06f, 1.56249989e-05f, 2.68750009e-05f, 3.81249993e-05f, 4.93749976e-05f, 6.06250032e-05f,
    7.18750016e-05f, 8.31249927e-05f, 9.43749983e-05f, 0.000128125001f, 0.000184375007f, 0.000240624999f,
    0.00029687502f, 0.000353124982f, 0.000409375003f, 0.000465625024f, 0.000521875045f, 0.000578125007f,
    0.000634375028f, 0.000690625049f, 0.000746875012f, 0.000803125091f, 0.000859375054f, 0.000915625016f,
    0.000971875037f, 0.00114062498f, 0.00142187497f, 0.00170312496f, 0.00198437483f, 0.00226562493f,
    0.00254687481f, 0.00282812468f, 0.00310937478f, 0.00339062465f, 0.00367187499f, 0.00395312486f,
    0.0042343745f, 0.00451562507f, 0.00479687471f, 0.00507812481f, 0.00535937492f, 0.00564062456f,
    0.00592187513f, 0.0062031243f, 0.00648437487f, 0.00676562544f, 0.00704687461f, 0.00732812518f,
    0.00760937436f, 0.00789062493f, 0.0081718741f, 0.0084531242f, 0.00873437524f, 0.00901562441f,
    0.00929687452f, 0.00957812369f, 0.00985937472f, 0.010703126f, 0.0121093756f, 0.0135156242f,
    0.0149218757f, 0.0163281243f, 0.0177343749f, 0.0191406254f, 0.020546874f, 0.0219531264f,
    0.0233593769f, 0.0247656256f, 0.0261718761f, 0.0275781285f, 0.0289843734f, 0.0303906258f,
    0.0317968726f, 0.033203125f, 0.0346093737f, 0.036015626f, 0.0374218784f, 0.0388281234f,
    0.0402343757f, 0.0416406207f, 0.0430468731f, 0.0444531254f, 0.0458593741f, 0.0472656265f,
    0.0486718789f, 0.0500781238f, 0.0514843762f, 0.0528906249f, 0.0542968772f, 0.0557031296f,
    0.057109382f, 0.0585156269f, 0.0599218719f, 0.0613281243f, 0.0627343804f, 0.0641406253f,
    0.0655468777f, 0.0669531301f, 0.068359375f, 0.0697656274f, 0.0711718798f, 0.0725781247f,
    0.0739843771f, 0.0753906295f, 0.0767968819f, 0.0782031268f, 0.0796093717f, 0.0810156241f,
    0.0824218765f, 0.0838281214f, 0.0852343738f, 0.0866406187f, 0.0880468711f, 0.0894531235f,
    0.0908593759f, 0.0922656283f, 0.0936718732f, 0.0950781256f, 0.096484378f, 0.0978906229f,
    0.0992968753f, 0.103515625f, 0.110546872f, 0.117578126f, 0.124609374f, 0.131640613f,
    0.138671875f, 0.145703137f, 0.152734369f, 0.159765631f, 0.166796863f, 0.173828125f,
    0.180859387f, 0.187890619f, 0.194921881f, 0.201953113f, 0.208984375f, 0.216015637f,
    0.223046869f, 0.230078131f, 0.237109393f, 0.244140625f, 0.251171887f, 0.258203119f,
    0.265234381f, 0.272265643f, 0.279296875f, 0.286328137f, 0.293359399f, 0.300390631f,
    0.307421893f, 0.314453125f, 0.321484387f, 0.328515619f, 0.335546851f, 0.342578113f,
    0.349609375f, 0.356640607f, 0.363671869f, 0.370703101f, 0.377734363f, 0.384765625f,
    0.391796887f, 0.398828119f, 0.405859351f, 0.412890613f, 0.419921875f, 0.426953107f,
    0.433984369f, 0.441015631f, 0.448046863f, 0.455078125f, 0.462109387f, 0.469140619f,
    0.476171881f, 0.483203113f, 0.490234375f, 0.497265607f, 0.504296899f, 0.511328101f,
    0.518359303f, 0.525390625f, 0.532421827f, 0.539453149f, 0.546484351f, 0.553515673f,
    0.560546875f, 0.567578137f, 0.574609399f, 0.581640601f, 0.588671923f, 0.595703125f,
    0.602734387f, 0.609765649f, 0.616796851f, 0.623828113f, 0.630859375f, 0.637890577f,
    0.644921899f, 0.651953101f, 0.658984423f, 0.666015625f, 0.673046947f, 0.680078149f,
    0.687109351f, 0.694140673f, 0.701171875f, 0.708203197f, 0.715234399f, 0.722265601f,
    0.729296923f, 0.736328125f, 0.743359327f, 0.750390649f, 0.757421851f, 0.764453173f,
    0.771484375f, 0.778515577f, 0.785546899f, 0.792578101f, 0.799609303f, 0.806640625f,
    0.813671827f, 0.820703149f, 0.827734351f, 0.834765673f, 0.841796875f, 0.848828137f,
    0.855859399f, 0.862890601f, 0.869921923f, 0.876953125f, 0.883984387f, 0.891015649f,
    0.898046851f, 0.905078113f, 0.912109375f, 0.919140577f, 0.926171899f, 0.933203101f,
    0.940234423f, 0.947265625f, 0.954296947f, 0.961328149f, 0.968359351f, 0.975390673f,
    0.982421875f, 0.989453197f, 0.996484399f, 1.0f,
};

QLORADEF void qlora_dynamic_map(float map[256], int is_signed) {
    memcpy(map, is_signed ? qlora__dynamic_map_signed : qlora__dynamic_map_unsigned, 256 * sizeof(float));
}

// Index of the map entry nearest to y: the number of midpoints (map[j] + map[j+1]) / 2 strictly
// below y (a value on a midpoint takes the lower index), found by binary search.
static inline int qlora__map_encode(const float *map, float y) {
    int lo = 0, hi = 255;   // answer in [lo, hi]
    while (lo < hi) {
        int mid = (lo + hi) >> 1;
        float m = (map[mid] + map[mid + 1]) * 0.5f;
        if (y > m) lo = mid + 1; else hi = mid;
    }
    return lo;
}

// q[i] = code of (x[i] - offset) / scale[block]; scale[block] = max |x - offset| over the block.
// A block whose values all equal offset gets scale 0 and the code of 0.
static void qlora__quantize_blockwise8(uint8_t *q, float *scale, const float *x, float offset, int64_t n,
                                       int32_t blocksize, const float *map) {
    int64_t nblocks = qlora_nf4_num_blocks(n, blocksize);
    for (int64_t b = 0; b < nblocks; b++) {
        int64_t lo = b * blocksize, hi = lo + blocksize < n ? lo + blocksize : n;
        float amax = 0.0f;
        for (int64_t i = lo; i < hi; i++) amax = fmaxf(amax, fabsf(x[i] - offset));
        scale[b] = amax;
        float inv = amax > 0.0f ? 1.0f / amax : 0.0f;   // same zero and subnormal rules as NF4
        int divide = !isfinite(inv);
        for (int64_t i = lo; i < hi; i++) {
            float v = x[i] - offset;
            q[i] = (uint8_t)qlora__map_encode(map, divide ? v / amax : v * inv);
        }
    }
}

QLORADEF qlora_status qlora_quantize_blockwise8(uint8_t *q, float *scale, const float *x, int64_t n,
                                                int32_t blocksize, const float map[256], qlora_error *err) {
    if (!q || !scale || !x || !map) return qlora__fail(err, QLORA_ERR_ARG, "blockwise8 quantize: NULL argument");
    if (n < 0 || blocksize <= 0)
        return qlora__fail(err, QLORA_ERR_ARG, "blockwise8 quantize: n %lld, blocksize %d", (long long)n, (int)blocksize);
    qlora_status st = qlora__check_finite(x, n, "blockwise8 quantize input", err);
    if (st != QLORA_OK) return st;
    qlora__quantize_blockwise8(q, scale, x, 0.0f, n, blocksize, map);
    return QLORA_OK;
}

QLORADEF void qlora_dequantize_blockwise8(float *out, const uint8_t *q, const float *scale, int64_t n,
                                          int32_t blocksize, const float map[256]) {
    for (int64_t i = 0; i < n; i++) out[i] = map[q[i]] * scale[i / blocksize];
}

// Double quantization (bitsandbytes quantize_4bit with compress_statistics): offset = mean(absmax),
// then absmax - offset goes through 8-bit blockwise quantization with blocksize 256.
QLORADEF qlora_status qlora_dq_quantize(uint8_t *q, float *nested_absmax, float *offset, const float *absmax,
                                        int64_t nblocks, const float map[256], qlora_error *err) {
    if (!q || !nested_absmax || !offset || !absmax || !map)
        return qlora__fail(err, QLORA_ERR_ARG, "double quantize: NULL argument");
    if (nblocks <= 0) return qlora__fail(err, QLORA_ERR_ARG, "double quantize: %lld blocks", (long long)nblocks);
    qlora_status st = qlora__check_finite(absmax, nblocks, "double quantize absmax", err);
    if (st != QLORA_OK) return st;
    double sum = 0.0;   // the mean in double, rounded once to fp32
    for (int64_t b = 0; b < nblocks; b++) sum += absmax[b];
    *offset = (float)(sum / (double)nblocks);
    qlora__quantize_blockwise8(q, nested_absmax, absmax, *offset, nblocks, QLORA_DQ_BLOCK, map);
    return QLORA_OK;
}

QLORADEF void qlora_dq_dequantize(float *absmax, const uint8_t *q, const float *nested_absmax, float offset,
                                  int64_t nblocks, const float map[256]) {
    for (int64_t b = 0; b < nblocks; b++) {
        float v = map[q[b]] * nested_absmax[b / QLORA_DQ_BLOCK];   // two roundings, as bitsandbytes:
        absmax[b] = v + offset;                                    // never contracted into an FMA
    }
}

QLORADEF float qlora_nf4_block_scale(const qlora_nf4 *w, int64_t b) {
    if (!w->double_quant) return w->absmax[b];
    float v = w->nested_map[w->qabsmax[b]] * w->nested_absmax[b / QLORA_DQ_BLOCK];
    return v + w->nested_offset;   // separate statements: no FMA contraction, same bits as qlora_dq_dequantize
}

QLORADEF void qlora_nf4_free(qlora_nf4 *w) {
    if (!w) return;
    QLORA_FREE(w->codes);
    QLORA_FREE(w->absmax);
    QLORA_FREE(w->qabsmax);
    QLORA_FREE(w->nested_absmax);
    memset(w, 0, sizeof *w);
}

QLORADEF qlora_status qlora_nf4_quantize(qlora_nf4 *w, const float *x, int64_t rows, int64_t cols,
                                         int32_t blocksize, int double_quant, qlora_error *err) {
    if (!w || !x) return qlora__fail(err, QLORA_ERR_ARG, "nf4 quantize: NULL weight or input");
    memset(w, 0, sizeof *w);
    int64_t n;
    if (rows <= 0 || cols <= 0 || !qlora__mul_ok(rows, cols, &n))
        return qlora__fail(err, QLORA_ERR_SHAPE, "nf4 quantize: bad shape (%lld, %lld)", (long long)rows, (long long)cols);
    if (!qlora_nf4_blocksize_valid(blocksize))
        return qlora__fail(err, QLORA_ERR_ARG, "nf4 quantize: blocksize %d not in {32, 64, ..., 4096}", (int)blocksize);
    int64_t nblocks = qlora_nf4_num_blocks(n, blocksize);
    w->rows = rows;
    w->cols = cols;
    w->blocksize = blocksize;
    w->double_quant = double_quant ? 1 : 0;
    w->codes = (uint8_t *)qlora__alloc(n / 2 + 1);
    w->absmax = (float *)qlora__alloc(nblocks * (int64_t)sizeof(float));
    if (!w->codes || !w->absmax) {
        qlora_nf4_free(w);
        return qlora__fail(err, QLORA_ERR_NOMEM, "nf4 quantize: %lld elements", (long long)n);
    }
    qlora_status st = qlora_nf4_quantize_raw(w->codes, w->absmax, x, n, blocksize, err);
    if (st == QLORA_OK && w->double_quant) {
        int64_t nnested = qlora_nf4_num_blocks(nblocks, QLORA_DQ_BLOCK);
        w->qabsmax = (uint8_t *)qlora__alloc(nblocks);
        w->nested_absmax = (float *)qlora__alloc(nnested * (int64_t)sizeof(float));
        qlora_dynamic_map(w->nested_map, 1);
        if (!w->qabsmax || !w->nested_absmax)
            st = qlora__fail(err, QLORA_ERR_NOMEM, "nf4 quantize: %lld absmax codes", (long long)nblocks);
        else
            st = qlora_dq_quantize(w->qabsmax, w->nested_absmax, &w->nested_offset, w->absmax, nblocks,
                                   w->nested_map, err);
        QLORA_FREE(w->absmax);   // DQ keeps only the 8-bit codes
        w->absmax = NULL;
    }
    if (st != QLORA_OK) qlora_nf4_free(w);
    return st;
}

QLORADEF qlora_status qlora_nf4_dequantize(float *out, const qlora_nf4 *w, qlora_error *err) {
    if (!out || !w || !w->codes) return qlora__fail(err, QLORA_ERR_ARG, "nf4 dequantize: NULL output or weight");
    int64_t n;
    if (!qlora__mul_ok(w->rows, w->cols, &n) || !qlora_nf4_blocksize_valid(w->blocksize))
        return qlora__fail(err, QLORA_ERR_SHAPE, "nf4 dequantize: bad weight (%lld, %lld) blocksize %d",
                           (long long)w->rows, (long long)w->cols, (int)w->blocksize);
    int64_t nblocks = qlora_nf4_num_blocks(n, w->blocksize);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 16))
#endif
    for (int64_t b = 0; b < nblocks; b++) {
        float s = qlora_nf4_block_scale(w, b);
        int64_t lo = b * w->blocksize, hi = lo + w->blocksize < n ? lo + w->blocksize : n;
        for (int64_t i = lo; i < hi; i++) {
            int c = (i & 1) ? (w->codes[i >> 1] & 15) : (w->codes[i >> 1] >> 4);
            out[i] = qlora__nf4_code[c] * s;
        }
    }
    return QLORA_OK;
}

QLORADEF double qlora_nf4_bits_per_param(int32_t blocksize, int double_quant) {
    if (!qlora_nf4_blocksize_valid(blocksize)) return 0.0;
    if (!double_quant) return 4.0 + 32.0 / blocksize;
    return 4.0 + 8.0 / blocksize + 32.0 / ((double)blocksize * QLORA_DQ_BLOCK);
}

QLORADEF size_t qlora_nf4_bytes(const qlora_nf4 *w) {
    if (!w || !w->codes) return 0;
    int64_t n = w->rows * w->cols, nblocks = qlora_nf4_num_blocks(n, w->blocksize);
    size_t bytes = (size_t)(n + 1) / 2;
    if (w->double_quant)
        bytes += (size_t)nblocks + sizeof(float) * (size_t)qlora_nf4_num_blocks(nblocks, QLORA_DQ_BLOCK);
    else
        bytes += sizeof(float) * (size_t)nblocks;
    return bytes;
}

// (section 4, NF4 linear, is in wip/nf4_linear.inc until it is folded in)

// ---------------------------------------------------------------------------------------------
// 5. LoRA linear layer (PEFT semantics)
//
// Forward, with s the scale and D the dropout mask (keep with probability 1-p, scaled 1/(1-p)):
//     xd = D ⊙ x            (M, in)     only when training with p > 0, else xd = x
//     xa = xd·Aᵀ            (M, rank)   cached
//     y  = x·Wᵀ + s·xa·Bᵀ   (M, out)
// The mask is a pure function of (dropout_key, element index), so backward regenerates it.

static float qlora__lora_scale(float alpha, int32_t rank, int use_rslora) {
    return use_rslora ? alpha / sqrtf((float)rank) : alpha / (float)rank;
}

QLORADEF qlora_status qlora_lora_init(qlora_lora *l, int64_t in, int64_t out, const qlora_lora_config *cfg,
                                      uint64_t seed, qlora_error *err) {
    if (!l || !cfg) return qlora__fail(err, QLORA_ERR_ARG, "lora init: NULL layer or config");
    memset(l, 0, sizeof *l);
    int64_t na, nb;
    if (in <= 0 || out <= 0 || cfg->rank <= 0 || !qlora__mul_ok(in, cfg->rank, &na) ||
        !qlora__mul_ok(out, cfg->rank, &nb) || na > INT64_MAX / 8 || nb > INT64_MAX / 8)
        return qlora__fail(err, QLORA_ERR_SHAPE, "lora init: bad shape in %lld, out %lld, rank %d",
                           (long long)in, (long long)out, (int)cfg->rank);
    if (!(cfg->dropout >= 0.0f && cfg->dropout < 1.0f))
        return qlora__fail(err, QLORA_ERR_ARG, "lora init: dropout %g not in [0, 1)", (double)cfg->dropout);
    if (!isfinite(cfg->alpha)) return qlora__fail(err, QLORA_ERR_NONFINITE, "lora init: alpha is not finite");
    l->in = in;
    l->out = out;
    l->rank = cfg->rank;
    l->alpha = cfg->alpha;
    l->dropout = cfg->dropout;
    l->use_rslora = cfg->use_rslora ? 1 : 0;
    l->scale = qlora__lora_scale(cfg->alpha, cfg->rank, l->use_rslora);
    l->A = (float *)qlora__alloc(na * 4);
    l->B = (float *)qlora__calloc(nb * 4);
    l->dA = (float *)qlora__calloc(na * 4);
    l->dB = (float *)qlora__calloc(nb * 4);
    if (!l->A || !l->B || !l->dA || !l->dB) {
        qlora_lora_free(l);
        return qlora__fail(err, QLORA_ERR_NOMEM, "lora init: rank %d for (%lld, %lld)", (int)cfg->rank,
                           (long long)out, (long long)in);
    }
    // kaiming_uniform_(a=√5) on A (rank, in): gain = √(2/(1+5)), bound = √3·gain/√fan_in = 1/√in.
    qlora_rng_seed(&l->rng, seed);
    float bound = 1.0f / sqrtf((float)in);
    for (int64_t i = 0; i < na; i++) l->A[i] = (2.0f * qlora_rng_uniform(&l->rng) - 1.0f) * bound;
    return QLORA_OK;
}

QLORADEF void qlora_lora_free(qlora_lora *l) {
    if (!l) return;
    QLORA_FREE(l->A);
    QLORA_FREE(l->B);
    QLORA_FREE(l->dA);
    QLORA_FREE(l->dB);
    memset(l, 0, sizeof *l);
}

QLORADEF void qlora_lora_zero_grad(qlora_lora *l) {
    if (!l || !l->dA) return;
    memset(l->dA, 0, sizeof(float) * (size_t)(l->rank * l->in));
    memset(l->dB, 0, sizeof(float) * (size_t)(l->out * l->rank));
}

static qlora_status qlora__lora_check(const char *fn, const qlora_lora *l, const qlora_nf4 *w, int64_t M,
                                      qlora_error *err) {
    if (!l || !w || !l->A || !l->B || !w->codes) return qlora__fail(err, QLORA_ERR_ARG, "%s: NULL layer or weight", fn);
    if (M < 0) return qlora__fail(err, QLORA_ERR_ARG, "%s: negative row count %lld", fn, (long long)M);
    if (w->rows != l->out || w->cols != l->in)
        return qlora__fail(err, QLORA_ERR_SHAPE, "%s: weight is (%lld, %lld) but the adapter is (%lld, %lld)", fn,
                           (long long)w->rows, (long long)w->cols, (long long)l->out, (long long)l->in);
    int64_t t;
    if (!qlora__mul_ok(M, l->in, &t) || !qlora__mul_ok(M, l->out, &t))
        return qlora__fail(err, QLORA_ERR_SHAPE, "%s: %lld rows overflow", fn, (long long)M);
    return QLORA_OK;
}

// xd = D ⊙ x with D = 1/(1-p) where the draw is ≥ p, else 0.
static void qlora__dropout_apply(float *xd, const float *x, int64_t n, float p, uint64_t key) {
    float keep_scale = 1.0f / (1.0f - p);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 15))
#endif
    for (int64_t i = 0; i < n; i++) xd[i] = qlora_hash_uniform(key, (uint64_t)i) >= p ? x[i] * keep_scale : 0.0f;
}

QLORADEF qlora_status qlora_lora_forward(const qlora_exec *ex, float *y, qlora_lora_cache *cache, const float *x,
                                         qlora_lora *l, const qlora_nf4 *w, int64_t M, int training,
                                         qlora_error *err) {
    qlora_status st = qlora__lora_check("lora forward", l, w, M, err);
    if (st != QLORA_OK) return st;
    if (!y || !x || !cache || !cache->xa) return qlora__fail(err, QLORA_ERR_ARG, "lora forward: NULL y, x or cache->xa");
    const float *src = x;
    cache->dropped = 0;
    if (training && l->dropout > 0.0f) {
        if (!cache->xd) return qlora__fail(err, QLORA_ERR_ARG, "lora forward: dropout %g needs cache->xd", (double)l->dropout);
        cache->dropout_key = qlora_rng_u64(&l->rng);
        cache->dropped = 1;
        qlora__dropout_apply(cache->xd, x, M * l->in, l->dropout, cache->dropout_key);
        src = cache->xd;
    }
    st = qlora_nf4_linear_forward(ex, y, x, w, M, err);   // y = x·Wᵀ
    if (st != QLORA_OK) return st;
    // xa (M, r) = src (M, in) · Aᵀ;  y (M, out) += s · xa · Bᵀ
    qlora_sgemm(ex, 0, 1, M, l->rank, l->in, 1.0f, src, l->in, l->A, l->in, 0.0f, cache->xa, l->rank);
    qlora_sgemm(ex, 0, 1, M, l->out, l->rank, l->scale, cache->xa, l->rank, l->B, l->rank, 1.0f, y, l->out);
    return QLORA_OK;
}

// Backward, replaying the forward in reverse (g = dy·B is (M, rank)):
//   3. y += s·xa·Bᵀ      →  dB += s·dyᵀ·xa,   d(xa) = s·g
//   2. xa = xd·Aᵀ        →  dA += s·gᵀ·xd,    d(xd) = s·g·A
//   1. xd = D ⊙ x        →  dx += D ⊙ d(xd);  and the frozen path dx += dy·W
// Scratch: cache->xa is reused for g after dB is formed, and cache->xd (when dropout ran) for
// d(xd) after dA is formed, so backward consumes the cache: run forward again before another backward.
QLORADEF qlora_status qlora_lora_backward(const qlora_exec *ex, float *dx, qlora_lora *l, const float *dy,
                                          const float *x, const qlora_lora_cache *cache, const qlora_nf4 *w,
                                          int64_t M, qlora_error *err) {
    qlora_status st = qlora__lora_check("lora backward", l, w, M, err);
    if (st != QLORA_OK) return st;
    if (!dy || !x || !cache || !cache->xa || (cache->dropped && !cache->xd))
        return qlora__fail(err, QLORA_ERR_ARG, "lora backward: NULL dy, x or cache buffers");
    if (!l->dA || !l->dB) return qlora__fail(err, QLORA_ERR_ARG, "lora backward: layer has no gradient buffers");
    int64_t r = l->rank, in = l->in, out = l->out;
    float s = l->scale;
    float *xa = cache->xa, *g = cache->xa;   // (M, r): xa first, then reused for g
    const float *src = cache->dropped ? cache->xd : x;
    qlora_sgemm(ex, 1, 0, out, r, M, s, dy, out, xa, r, 1.0f, l->dB, r);      // dB (out, r) += s·dyᵀ·xa
    qlora_sgemm(ex, 0, 0, M, r, out, 1.0f, dy, out, l->B, r, 0.0f, g, r);     // g (M, r) = dy·B
    qlora_sgemm(ex, 1, 0, r, in, M, s, g, r, src, in, 1.0f, l->dA, in);       // dA (r, in) += s·gᵀ·xd
    if (!dx) return QLORA_OK;
    st = qlora_nf4_linear_backward(ex, dx, dy, w, M, err);                    // dx += dy·W
    if (st != QLORA_OK) return st;
    if (!cache->dropped) {
        qlora_sgemm(ex, 0, 0, M, in, r, s, g, r, l->A, in, 1.0f, dx, in);     // dx += s·g·A
        return QLORA_OK;
    }
    float *dxd = cache->xd;   // (M, in) = s·g·A, then masked into dx
    qlora_sgemm(ex, 0, 0, M, in, r, s, g, r, l->A, in, 0.0f, dxd, in);
    float keep_scale = 1.0f / (1.0f - l->dropout), p = l->dropout;
    int64_t n = M * in;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 15))
#endif
    for (int64_t i = 0; i < n; i++)
        if (qlora_hash_uniform(cache->dropout_key, (uint64_t)i) >= p) dx[i] += dxd[i] * keep_scale;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_lora_merge(float *merged, const qlora_lora *l, const qlora_nf4 *w, qlora_error *err) {
    if (!merged) return qlora__fail(err, QLORA_ERR_ARG, "lora merge: NULL output");
    qlora_status st = qlora__lora_check("lora merge", l, w, 0, err);
    if (st != QLORA_OK) return st;
    st = qlora_nf4_dequantize(merged, w, err);
    if (st != QLORA_OK) return st;
    // merged (out, in) += s · B (out, r) · A (r, in)
    qlora_sgemm(NULL, 0, 0, l->out, l->in, l->rank, l->scale, l->B, l->rank, l->A, l->in, 1.0f, merged, l->in);
    return QLORA_OK;
}


#define QLORA__PART_IMPL
#include "wip/parts.inc"
#undef QLORA__PART_IMPL

#endif // QLORA__IMPLEMENTED
#endif // QLORA_IMPLEMENTATION

/*
   REVISION HISTORY
      0.1  first release: NF4 + DQ, NF4 dequant-matmul kernels, LoRA layers.

   LICENSE
      MIT License. Copyright (c) 2026 the qlora.h authors. See LICENSE.
*/
