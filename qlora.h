/* qlora.h - v0.1 - QLoRA fine-tuning of Llama-architecture models in one C99 header. MIT license.

   Do this:
      #define QLORA_IMPLEMENTATION
   before you include this file in *one* C or C++ file to create the implementation.

   QUICK NOTES
      NF4 4-bit quantization with double quantization, bit-compatible with bitsandbytes.
      NF4 dequant-matmul kernels (scalar reference, AVX2/AVX-512/NEON, OpenBLAS) for a frozen W.
      LoRA linear layers with PEFT semantics (forward, backward, merge).
      Hugging Face checkpoints: safetensors (mmap, validated), sharded directories, bitsandbytes 4-bit.
      The Llama SentencePiece BPE tokenizer (tokenizer.model or tokenizer.json), exact.
      The Llama model: training forward/backward through NF4 + LoRA, KV-cache inference, scoring.
      AdamW (fp32 or 8-bit blockwise states) with paged state, PEFT adapter files, MLflow file store.
      An optional Vulkan backend lives in qlora_vulkan.h.

   TABLE OF CONTENTS (declarations and implementation follow the same order, data flow first)
      1. status codes and error details
      2. deterministic RNG
      3. NF4 quantization and double quantization
      4. NF4 linear: Y = X·Wᵀ and dX += dY·W; dense qlora_sgemm
      5. LoRA linear layer (PEFT semantics)
      JSON parser and writer
      safetensors reader and writer, model directories
      tokenizer (SentencePiece BPE)
      6. transformer ops: RMSNorm, RoPE, attention, SwiGLU, embedding, cross-entropy
      7. Llama model: config, loading, training forward/backward, inference
      pager, AdamW, optimizer checkpoints
      PEFT adapter files
      MLflow file store

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

// The arithmetic of the matmuls on frozen weights. fp32 is the default and the specification (what
// the tests hold against PyTorch). BF16 is bitsandbytes' compute_dtype=bfloat16 (the QLoRA recipe's),
// in the two forms bitsandbytes has:
//   GEMV form: forward calls with M <= 8 rows and in (cols) a multiple of 128 (token-by-token
//     decoding): inputs and the codebook rounded to bf16 (round to nearest even; bf16 subnormals
//     become 0), their products summed in fp32 per block, then scaled in fp32.
//   GEMM form: every other NF4 forward and every NF4 backward, and the lm_head matmuls of training
//     and of prompts (more than 8 rows): W dequantized in fp32 then rounded to bf16, the input (dY)
//     rounded to bf16, the exact products summed in fp32.
// With AVX-512 BF16 (qlora_cpu_info.bf16_dot) both run on vdpbf16ps, which does twice the
// multiply-adds of an fp32 FMA per instruction: the GEMMs of a training step run about 1.85x faster
// (config M of bench_llama: step 2.6-2.8 s -> 1.65 s on Zen 4). Elsewhere the same roundings run at
// fp32 speed. The CPU path alone reads it (a backend computes in fp32).
typedef enum qlora_compute {
    QLORA_COMPUTE_F32 = 0,
    QLORA_COMPUTE_BF16
} qlora_compute;

// How a kernel call executes. NULL means { QLORA_KERNEL_AUTO, no backend, fp32 }.
typedef struct qlora_exec {
    qlora_kernel         kernel;
    const qlora_backend *backend;
    qlora_compute        compute;
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
    int         bf16_dot;        // 1: built with AVX-512 BF16, so QLORA_COMPUTE_BF16 runs at bf16 speed
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

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// JSON: RFC 8259 parser (DOM in one arena) and a small writer
//
//   Parsing is strict RFC 8259: one value, optional whitespace around it, nothing after it; the
//   text must be valid UTF-8; no comments, no trailing commas, no NaN/Infinity. Strings are decoded
//   (escapes, \uXXXX incl. surrogate pairs; a lone surrogate is an error) into NUL-terminated
//   UTF-8. Duplicate object keys are kept in order; qlora_json_get returns the LAST one, like
//   Python's json and serde_json. Nesting deeper than QLORA_JSON_MAX_DEPTH is an error.
//   Error details read "line L col C: what" (1-based, columns count bytes).

#ifndef QLORA_JSON_MAX_DEPTH
#define QLORA_JSON_MAX_DEPTH 512
#endif

typedef enum qlora_json_type {
    QLORA_JSON_NULL,
    QLORA_JSON_BOOL,
    QLORA_JSON_NUMBER,
    QLORA_JSON_STRING,
    QLORA_JSON_ARRAY,
    QLORA_JSON_OBJECT
} qlora_json_type;

// One value. Arrays: items[0..count). Objects: keys[i] -> items[i] for i < count, in text order.
typedef struct qlora_json qlora_json;
struct qlora_json {
    qlora_json_type type;
    int32_t      boolean;     // BOOL: 0 or 1
    int32_t      is_integer;  // NUMBER: 1 when written without fraction/exponent and it fits int64
    int64_t      integer;     // NUMBER: exact value when is_integer
    double       number;      // NUMBER: value (nearest double)
    const char  *str;         // STRING: decoded UTF-8, NUL-terminated (may contain \0 from \u0000)
    size_t       str_len;     // STRING: bytes, without the terminating NUL
    int64_t      count;       // ARRAY/OBJECT: number of children
    const char **keys;        // OBJECT: (count) decoded keys, NUL-terminated
    size_t      *key_lens;    // OBJECT: (count) key lengths in bytes
    qlora_json  *items;       // ARRAY/OBJECT: (count) children
};

// A parsed document; everything it points to lives in `arena`.
typedef struct qlora_json_doc {
    qlora_json root;
    void      *arena;
} qlora_json_doc;

// Parses text[0..len) (need not be NUL-terminated) into doc. On failure doc is empty and
// QLORA_ERR_FORMAT carries "line L col C: ..."; QLORA_ERR_NOMEM if the arena cannot grow.
QLORADEF qlora_status qlora_json_parse(qlora_json_doc *doc, const char *text, size_t len, qlora_error *err);
// Reads and parses a whole file; details are prefixed with the path. QLORA_ERR_IO if unreadable.
QLORADEF qlora_status qlora_json_read_file(qlora_json_doc *doc, const char *path, qlora_error *err);
// Releases the arena; doc becomes empty. qlora_json_free of an empty/zeroed doc is a no-op.
QLORADEF void         qlora_json_free(qlora_json_doc *doc);

// Lookup helpers (all accept NULL). get: last member named key, or NULL if absent / not an object.
QLORADEF const qlora_json *qlora_json_get(const qlora_json *obj, const char *key);
// Element i of an array, or NULL if out of range / not an array.
QLORADEF const qlora_json *qlora_json_at(const qlora_json *arr, int64_t i);
// Typed getters: the member's value when present with the right type, else def.
QLORADEF double      qlora_json_get_number(const qlora_json *obj, const char *key, double def);
// Integral numbers only (1, -3, also 2.0 / 1e3 when exactly integral and in int64 range).
QLORADEF int64_t     qlora_json_get_int(const qlora_json *obj, const char *key, int64_t def);
QLORADEF const char *qlora_json_get_string(const qlora_json *obj, const char *key, const char *def);
QLORADEF int         qlora_json_get_bool(const qlora_json *obj, const char *key, int def);
// Exact value of an integral number: 1 and *out set when v is a NUMBER that is integral and fits.
QLORADEF int         qlora_json_as_int(const qlora_json *v, int64_t *out);

// --- writer ---------------------------------------------------------------------------------
//   A growable NUL-terminated buffer; commas, colons and indentation are inserted automatically.
//   Layout mirrors Python's json.dumps so files match what transformers / PEFT write:
//     indent < 0   compact:          {"a":1,"b":[1,2]}
//     indent = 0   json.dumps():     {"a": 1, "b": [1, 2]}         (separators ", " and ": ")
//     indent = n   json.dumps(indent=n): newline + n spaces per level, "," and ": ", empty {} / []
//   ascii_only = 1 escapes every non-ASCII character as \uXXXX (Python's ensure_ascii=True);
//   invalid UTF-8 in input strings is replaced by U+FFFD. Numbers follow Python's float repr:
//   the shortest digits that round-trip, fixed notation for 1e-4 <= |x| < 1e16 (with ".0" when
//   integral), else "1e-05" / "1.5e+16". Non-finite numbers are written as null (RFC 8259 has no
//   NaN). Errors (allocation failure, key outside an object, unbalanced ends, nesting > 64) are
//   sticky and reported by qlora_jw_finish; until then calls just return.

#define QLORA_JW_MAX_DEPTH 64

typedef struct qlora_json_writer {
    char   *buf;           // (cap) bytes, NUL-terminated text of length len; owned
    size_t  len, cap;
    int32_t indent;        // see above
    int32_t ascii_only;    // 1: escape non-ASCII as \uXXXX
    int32_t depth;         // open containers
    int32_t after_key;     // 1 right after qlora_jw_key: the next value needs no separator
    int32_t failed;        // sticky status (qlora_status) of the first misuse / allocation failure
    uint8_t is_object[QLORA_JW_MAX_DEPTH];  // per open container: object (1) or array (0)
    uint8_t has_items[QLORA_JW_MAX_DEPTH];  // per open container: something was written into it
    int32_t done;          // a complete top-level value has been written
} qlora_json_writer;

QLORADEF void qlora_jw_init(qlora_json_writer *w, int indent, int ascii_only);
QLORADEF void qlora_jw_free(qlora_json_writer *w);
QLORADEF void qlora_jw_object_begin(qlora_json_writer *w);
QLORADEF void qlora_jw_object_end(qlora_json_writer *w);
QLORADEF void qlora_jw_array_begin(qlora_json_writer *w);
QLORADEF void qlora_jw_array_end(qlora_json_writer *w);
QLORADEF void qlora_jw_key(qlora_json_writer *w, const char *key);         // inside an object
QLORADEF void qlora_jw_string(qlora_json_writer *w, const char *s);        // NULL writes null
QLORADEF void qlora_jw_string_n(qlora_json_writer *w, const char *s, size_t n);
QLORADEF void qlora_jw_double(qlora_json_writer *w, double x);   // shortest round-trip for double
QLORADEF void qlora_jw_float(qlora_json_writer *w, float x);     // shortest that round-trips to this float
QLORADEF void qlora_jw_int(qlora_json_writer *w, int64_t x);
QLORADEF void qlora_jw_bool(qlora_json_writer *w, int b);
QLORADEF void qlora_jw_null(qlora_json_writer *w);
// Inserts pre-formatted JSON text as one value (not validated).
QLORADEF void qlora_jw_raw(qlora_json_writer *w, const char *json);
// Appends a trailing newline (optional) and checks that the value is complete. On success w->buf
// holds the text (w->len bytes); the writer still owns it. QLORA_ERR_NOMEM or QLORA_ERR_ARG.
QLORADEF qlora_status qlora_jw_finish(qlora_json_writer *w, int trailing_newline, qlora_error *err);
// Formats x like Python's repr(float) into buf (at least 32 bytes); returns the length.
// as_float = 1 uses the shortest digits that round-trip through float instead of double.
QLORADEF int qlora_format_double(char *buf, double x, int as_float);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// safetensors: reader (mmap), writer (atomic), sharded model directories, dtype conversion
//
//   File = u64 little-endian N | N bytes of JSON header | data buffer.
//   Header: {"__metadata__": {str: str}, "NAME": {"dtype": "F16", "shape": [..],
//            "data_offsets": [BEGIN, END]}, ...}; offsets relative to the data buffer, END exclusive.
//   The reader validates everything before trusting a byte, like the reference reader: N <= 1e8,
//   8 + N <= file size, header starts with '{' (right-padding with spaces allowed), valid JSON,
//   no duplicate names, metadata values are strings, known dtype, shape of non-negative integers
//   (at most QLORA_ST_MAX_DIMS), END - BEGIN == numel * bits / 8 (overflow-checked, whole bytes),
//   offsets contiguous from 0 with no hole or overlap, and the buffer covered exactly.
//   Every error is QLORA_ERR_FORMAT (or _IO) with a detail naming the file and the tensor.
//   Data is little-endian, C order; tensor data is NOT guaranteed to be aligned (the header
//   length decides); use memcpy or qlora_tensor_to_f32 rather than casting `data`.

#define QLORA_ST_MAX_DIMS 8
#define QLORA_ST_MAX_HEADER 100000000

typedef enum qlora_dtype {
    QLORA_DTYPE_F32 = 0,
    QLORA_DTYPE_F16,
    QLORA_DTYPE_BF16,
    QLORA_DTYPE_F64,
    QLORA_DTYPE_U8,
    QLORA_DTYPE_I8,
    QLORA_DTYPE_I16,
    QLORA_DTYPE_U16,
    QLORA_DTYPE_I32,
    QLORA_DTYPE_U32,
    QLORA_DTYPE_I64,
    QLORA_DTYPE_U64,
    QLORA_DTYPE_BOOL,
    QLORA_DTYPE_F8_E4M3,
    QLORA_DTYPE_F8_E5M2,
    QLORA_DTYPE_F8_E8M0,
    QLORA_DTYPE_F8_E4M3FNUZ,
    QLORA_DTYPE_F8_E5M2FNUZ,
    QLORA_DTYPE_F6_E2M3,     // 6 bits per element, packed
    QLORA_DTYPE_F6_E3M2,     // 6 bits per element, packed
    QLORA_DTYPE_F4,          // 4 bits per element, packed
    QLORA_DTYPE_C64,         // complex64: two F32
    QLORA_DTYPE_COUNT
} qlora_dtype;

// The safetensors name ("F32", "BF16", ...) and the storage bits per element of a dtype.
QLORADEF const char *qlora_dtype_name(qlora_dtype dt);
QLORADEF int         qlora_dtype_bits(qlora_dtype dt);
// Looks up a safetensors dtype name of n bytes. Returns 1 and sets *out, or 0 if unknown.
QLORADEF int         qlora_dtype_from_name(const char *name, size_t n, qlora_dtype *out);

// One tensor of an open file (views into the file; valid until close).
typedef struct qlora_st_tensor {
    const char    *name;
    qlora_dtype    dtype;
    int32_t        ndim;                      // 0 for a scalar
    int64_t        shape[QLORA_ST_MAX_DIMS];  // (ndim) dims; unused entries are 0
    int64_t        numel;                     // product of shape (1 for a scalar)
    int64_t        nbytes;                    // END - BEGIN
    int64_t        offset;                    // BEGIN, relative to the data buffer
    const uint8_t *data;                      // (nbytes) raw little-endian bytes, maybe unaligned
} qlora_st_tensor;

typedef struct qlora_safetensors {
    char            *path;         // copy of the path ("<memory>" for open_memory)
    int64_t          n_tensors;
    qlora_st_tensor *tensors;      // (n_tensors) in file order (ascending offset, header order on ties)
    int64_t          n_meta;
    const char     **meta_keys;    // (n_meta) __metadata__ keys, header order
    const char     **meta_values;  // (n_meta) their string values
    const uint8_t   *data;         // (data_size) the data buffer (after the header)
    int64_t          data_size;
    int64_t          header_size;  // N
    // internal
    qlora_st_tensor **by_name;     // (n_tensors) sorted by name, for qlora_safetensors_find
    qlora_json_doc   doc;          // parsed header (owns names and metadata strings)
    void            *base;         // mapping or heap copy of the whole file
    size_t           base_size;
    int32_t          mapped;       // 1: base is an mmap; 0: heap (or caller's memory, see owns_base)
    int32_t          fd;           // the mapped file, open while mapped
    int32_t          owns_base;
} qlora_safetensors;

// Opens and validates a file. POSIX: mmap (read-only, private); with QLORA_NO_MMAP defined at
// compile time, or on non-POSIX systems, the file is read into memory instead.
QLORADEF qlora_status qlora_safetensors_open(qlora_safetensors *st, const char *path, qlora_error *err);
// Validates a safetensors image held in memory. copy = 1 copies it; copy = 0 borrows buf, which
// must outlive st. `name` (may be NULL) is used in error details instead of a path.
QLORADEF qlora_status qlora_safetensors_open_memory(qlora_safetensors *st, const void *buf, size_t size,
                                                    int copy, const char *name, qlora_error *err);
// Tensor by exact name (binary search), or NULL.
QLORADEF const qlora_st_tensor *qlora_safetensors_find(const qlora_safetensors *st, const char *name);
// Metadata value for key, or NULL.
QLORADEF const char *qlora_safetensors_meta(const qlora_safetensors *st, const char *key);
// Releases everything; st becomes empty. Closing a zeroed struct is a no-op.
QLORADEF void qlora_safetensors_close(qlora_safetensors *st);
// Drops the file pages that hold t's bytes from this process's resident memory (a mapped file
// only; a no-op otherwise). The bytes stay readable: later reads fault them in from the file
// again. A loader that converts tensor by tensor calls it after each one, so the file's pages do
// not accumulate in RSS while a large model loads.
QLORADEF void qlora_safetensors_evict(const qlora_safetensors *st, const qlora_st_tensor *t);

// --- dtype conversion -----------------------------------------------------------------------
// out (numel) = tensor values as fp32, from F32, F16, BF16 or F64 (F64 rounds to nearest).
// Other dtypes return QLORA_ERR_UNSUPPORTED naming the tensor.
QLORADEF qlora_status qlora_tensor_to_f32(float *out, const qlora_st_tensor *t, qlora_error *err);
// Same for raw little-endian bytes of n elements of dtype dt.
QLORADEF qlora_status qlora_convert_to_f32(float *out, const void *src, qlora_dtype dt, int64_t n,
                                           qlora_error *err);
// fp32 -> IEEE half, round to nearest even (as numpy/torch); |x| >= 65520 -> ±inf; NaN -> sign|0x7E00.
QLORADEF void  qlora_f32_to_f16(uint16_t *out, const float *x, int64_t n);
QLORADEF void  qlora_f16_to_f32(float *out, const uint16_t *h, int64_t n);
// fp32 -> bfloat16, round to nearest even on the raw bits (as torch); NaN -> 0x7FC0.
QLORADEF void  qlora_f32_to_bf16(uint16_t *out, const float *x, int64_t n);
QLORADEF void  qlora_bf16_to_f32(float *out, const uint16_t *h, int64_t n);
// Scalar forms.
QLORADEF uint16_t qlora_f16_from_f32(float x);
QLORADEF float    qlora_f16_to_f32_1(uint16_t h);
QLORADEF uint16_t qlora_bf16_from_f32(float x);
QLORADEF float    qlora_bf16_to_f32_1(uint16_t h);

// --- writer ---------------------------------------------------------------------------------
// One tensor to write. data: (numel * bits / 8) bytes, little-endian, C order; may be NULL only
// when that is 0 bytes.
typedef struct qlora_st_entry {
    const char *name;
    qlora_dtype dtype;
    int32_t     ndim;
    int64_t     shape[QLORA_ST_MAX_DIMS];
    const void *data;
} qlora_st_entry;

// Writes a complete file atomically (temp file in the same directory, fsync, rename, fsync dir).
// Tensors are stored in the order given (offsets ascending in that order), header compact JSON
// with "__metadata__" first, padded with spaces so 8 + N is a multiple of 8.
// meta_kv: NULL -> {"format": "pt"}; else pairs k0, v0, k1, v1, ..., NULL (an empty list writes no
// __metadata__). Rejects duplicate / empty names, "__metadata__" as a name, ndim outside 0..8,
// negative dims, sizes that overflow or are not whole bytes.
QLORADEF qlora_status qlora_safetensors_write(const char *path, const qlora_st_entry *t, int64_t n,
                                              const char *const *meta_kv, qlora_error *err);

// Streaming writer for files too large to hold at once: begin with the entries (their data is
// ignored), then append each tensor's bytes in entry order (any chunking), then finish.
typedef struct qlora_st_writer {
    char   *path;        // final path
    char   *tmp_path;    // temp file in the same directory
    int     fd;          // temp file descriptor (POSIX) or -1
    void   *fp;          // FILE* on non-POSIX builds
    int64_t expected;    // data buffer bytes announced by the header
    int64_t written;     // data bytes appended so far
} qlora_st_writer;

QLORADEF qlora_status qlora_st_writer_begin(qlora_st_writer *w, const char *path, const qlora_st_entry *t,
                                            int64_t n, const char *const *meta_kv, qlora_error *err);
QLORADEF qlora_status qlora_st_writer_append(qlora_st_writer *w, const void *data, int64_t nbytes,
                                             qlora_error *err);
// Checks that exactly the announced bytes were appended, then fsync + rename + fsync dir.
QLORADEF qlora_status qlora_st_writer_finish(qlora_st_writer *w, qlora_error *err);
// Discards the temp file (also safe after finish or a failed begin).
QLORADEF void         qlora_st_writer_abort(qlora_st_writer *w);

// Atomic small-file write used by every writer of config.json, adapter_config.json etc.:
// temp file "<path>.tmp.<pid>.<n>" in the same directory, write, fsync, rename over path, fsync dir.
// On failure the temp file is removed and path is untouched.
QLORADEF qlora_status qlora_write_file_atomic(const char *path, const void *data, size_t n, qlora_error *err);
// Reads a whole file into a fresh buffer (NUL-terminated; *size excludes the NUL). Free with QLORA_FREE.
QLORADEF qlora_status qlora_read_file(const char *path, void **data, size_t *size, qlora_error *err);

// --- model directories ----------------------------------------------------------------------
// A directory holding model.safetensors, or model.safetensors.index.json + its shards (the index
// wins when both exist). Every weight_map entry must exist in its shard; each shard opens once.
// Config-independent: only names the files.
typedef struct qlora_st_model {
    char              *dir;
    int64_t            n_shards;
    qlora_safetensors *shards;      // (n_shards) open files
    int64_t            n_tensors;   // total over shards
    // internal: name -> (shard, tensor) sorted by name
    const qlora_st_tensor **by_name; // (n_tensors)
} qlora_st_model;

QLORADEF qlora_status qlora_st_model_open(qlora_st_model *m, const char *dir, qlora_error *err);
// Tensor by name across shards, or NULL.
QLORADEF const qlora_st_tensor *qlora_st_model_find(const qlora_st_model *m, const char *name);
QLORADEF void qlora_st_model_close(qlora_st_model *m);
// qlora_safetensors_evict for a tensor of any shard.
QLORADEF void qlora_st_model_evict(const qlora_st_model *m, const qlora_st_tensor *t);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// Tokenizer: Llama SentencePiece BPE (tokenizer.model) and Hugging Face BPE (tokenizer.json)
//
//   tokenizer.model (SentencePiece ModelProto, model_type BPE): encode equals sentencepiece's
//   `sp.encode(text)` (v0.1.97) and decode equals `sp.decode(ids)`:
//     normalize   identity rule: invalid UTF-8 bytes become U+FFFD, ' ' becomes U+2581 "▁",
//                 a dummy "▁" prefix (add_dummy_prefix), optional removal of extra spaces;
//                 USER_DEFINED pieces pass through untouched. An empty text has no tokens.
//     BPE         every adjacent symbol pair whose concatenation is a piece is a candidate; the
//                 candidate with the highest piece score merges first (ties: leftmost). Symbols
//                 start as single UTF-8 characters (USER_DEFINED pieces as one frozen symbol).
//     fallback    a symbol that is not a piece becomes one <0xXX> piece per UTF-8 byte
//                 (byte_fallback), else <unk> (a run of unknowns gives one <unk>).
//   tokenizer.json (model.type "BPE"): Hugging Face tokenizers semantics: merges by rank from
//   model.merges, byte_fallback, fuse_unk, ignore_merges; normalizer Sequence of Prepend /
//   Replace(String); pre_tokenizer Metaspace (prepend_scheme always|first|never, split) or null.
//
//   Added tokens (tokenizer.json added_tokens, or qlora_tokenizer_add_special) are matched in the
//   raw text first, leftmost-longest, and are never split; the text between them is encoded
//   segment by segment (each segment gets its own dummy prefix, as Hugging Face does). Hugging
//   Face tokens with "normalized": true are matched in the normalized text instead, against
//   their normalized content; lstrip/rstrip swallow Unicode whitespace; single_word looks at
//   ASCII letters, digits and '_' only. A tokenizer.json takes bos/eos/pad from "<s>", "</s>"
//   and "<pad>" (the post_processor is not read).
//   "<s>" typed in a text is plain text for a .model tokenizer (as in sentencepiece) but the
//   BOS token for a tokenizer.json that lists it in added_tokens (as in Hugging Face).
//
//   Decode follows sentencepiece for both sources: CONTROL/special tokens decode to "", <unk>
//   to " ⁇ ", runs of byte pieces are reassembled into UTF-8 with U+FFFD for each invalid byte,
//   "▁" becomes ' ', and the leading space of the first piece is dropped.
//
//   A loaded tokenizer is read-only: concurrent encode/decode calls on one tokenizer are safe
//   (each call allocates its own scratch). Encoding is O(n log n) in the text length.

typedef enum qlora_piece_type {
    QLORA_PIECE_NORMAL       = 1,
    QLORA_PIECE_UNKNOWN      = 2,
    QLORA_PIECE_CONTROL      = 3,   // <s>, </s> and special added tokens: decode to ""
    QLORA_PIECE_USER_DEFINED = 4,
    QLORA_PIECE_UNUSED       = 5,
    QLORA_PIECE_BYTE         = 6    // <0x00> ... <0xFF>
} qlora_piece_type;

typedef enum qlora_tokenizer_kind {
    QLORA_TOKENIZER_SPM = 1,        // loaded from a SentencePiece tokenizer.model
    QLORA_TOKENIZER_HF  = 2         // loaded from a Hugging Face tokenizer.json
} qlora_tokenizer_kind;

struct qlora__tok_data;

typedef struct qlora_tokenizer {
    int32_t vocab_size;     // number of ids, added tokens included
    int32_t bos_id;         // -1 when absent; may be overwritten by the caller before use
    int32_t eos_id;         // -1 when absent
    int32_t pad_id;         // -1 when absent
    int32_t unk_id;         // -1 when absent (tokenizer.json without unk_token)
    int32_t kind;           // qlora_tokenizer_kind
    struct qlora__tok_data *d;  // internal, read-only after load
} qlora_tokenizer;

// Loads tokenizer.model (SentencePiece protobuf) or tokenizer.json (chosen by a ".json" suffix or
// a leading '{'). Malformed files fail with QLORA_ERR_FORMAT naming the file and byte offset;
// models this code cannot reproduce exactly (unigram, NFKC charsmaps, ByteLevel) with
// QLORA_ERR_UNSUPPORTED. On failure *t is left empty (qlora_tokenizer_free is still safe).
QLORADEF qlora_status qlora_tokenizer_load(qlora_tokenizer *t, const char *path, qlora_error *err);
// The same from memory; `name` is used in error details only.
QLORADEF qlora_status qlora_tokenizer_load_model_buffer(qlora_tokenizer *t, const void *data, size_t len,
                                                        const char *name, qlora_error *err);
QLORADEF qlora_status qlora_tokenizer_load_json_buffer(qlora_tokenizer *t, const char *text, size_t len,
                                                       const char *name, qlora_error *err);
QLORADEF void         qlora_tokenizer_free(qlora_tokenizer *t);

// Adds a special token matched in raw text before BPE and never split. id < vocab_size reuses an
// existing id (e.g. 1 for "<s>"); id == vocab_size appends a new CONTROL token; id == -1 means
// vocab_size. Not thread-safe against concurrent encodes.
QLORADEF qlora_status qlora_tokenizer_add_special(qlora_tokenizer *t, const char *text, int32_t id,
                                                  qlora_error *err);

// ids (cap) receives the tokens of text[0..len), BOS first when add_bos, EOS last when add_eos.
// *n_out is the token count; when it exceeds cap nothing is written and QLORA_ERR_SHAPE is
// returned with *n_out set, so a caller may size the buffer (ids may be NULL when cap is 0).
QLORADEF qlora_status qlora_tokenizer_encode(const qlora_tokenizer *t, const char *text, size_t len, int add_bos,
                                             int add_eos, int32_t *ids, int64_t cap, int64_t *n_out,
                                             qlora_error *err);
// out (cap) receives the UTF-8 text of ids[0..n) and a terminating NUL; *len_out is the text
// length without the NUL. When cap < *len_out + 1 nothing is written and QLORA_ERR_SHAPE is
// returned with *len_out set. Ids outside [0, vocab_size) are QLORA_ERR_ARG.
QLORADEF qlora_status qlora_tokenizer_decode(const qlora_tokenizer *t, const int32_t *ids, int64_t n, char *out,
                                             size_t cap, size_t *len_out, qlora_error *err);

// The piece string of id (NUL-terminated, "▁" for spaces), or NULL when out of range.
QLORADEF const char *qlora_tokenizer_piece(const qlora_tokenizer *t, int32_t id);
// qlora_piece_type of id, or 0 when out of range.
QLORADEF int         qlora_tokenizer_piece_type(const qlora_tokenizer *t, int32_t id);
// Score of a SentencePiece piece (0 for tokenizer.json tokens).
QLORADEF float       qlora_tokenizer_score(const qlora_tokenizer *t, int32_t id);
// Id of the piece spelled exactly s[0..len) (added tokens included), or -1.
QLORADEF int32_t     qlora_tokenizer_find(const qlora_tokenizer *t, const char *s, size_t len);
QLORADEF int32_t     qlora_tokenizer_vocab_size(const qlora_tokenizer *t);
QLORADEF int32_t     qlora_tokenizer_bos_id(const qlora_tokenizer *t);
QLORADEF int32_t     qlora_tokenizer_eos_id(const qlora_tokenizer *t);
QLORADEF int32_t     qlora_tokenizer_pad_id(const qlora_tokenizer *t);
QLORADEF int32_t     qlora_tokenizer_unk_id(const qlora_tokenizer *t);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// 6. transformer ops: RMSNorm, RoPE, attention, SwiGLU, embedding, cross-entropy
//
//   Dimensions: N rows (= B·T tokens), C model dim, B batch, T sequence, NH query heads,
//   NKV kv heads, HD head dim, V vocab. Forward: outputs (and caches), inputs, weights, dims.
//   Backward: the gradients it produces, the upstream gradient, saved inputs/caches, weights,
//   dims; backward ACCUMULATES (+=) into every gradient it produces. None of them allocates
//   (attention keeps ≤ 72 KiB of tiles on each thread's stack). Results do not depend on the
//   OpenMP thread count: every output element is summed by one thread in a fixed order.

// RMSNorm (HF LlamaRMSNorm): out = x · rsqrt(mean(x²) + eps) · weight. Caches rstd (N).
QLORADEF void qlora_rmsnorm_forward(float *out /*(N,C)*/, float *rstd /*(N)*/, const float *x /*(N,C)*/,
                                    const float *weight /*(C)*/, int64_t N, int64_t C, float eps);
// dx (N,C) += ∂out/∂x · dout;  dweight (C) += Σ_n dout ⊙ x·rstd (dweight may be NULL). Accumulates.
QLORADEF void qlora_rmsnorm_backward(float *dx /*(N,C)*/, float *dweight /*(C) or NULL*/,
                                     const float *dout /*(N,C)*/, const float *x /*(N,C)*/,
                                     const float *weight /*(C)*/, const float *rstd /*(N)*/,
                                     int64_t N, int64_t C);

// RoPE tables, HF rotate_half convention: pair (x[i], x[i+HD/2]) rotates by angle
// pos/linear_factor · inv_freq[i], inv_freq[i] = 1/theta^(2i/HD), computed in fp32 like HF.
// cos_t, sin_t: (max_pos, HD/2). linear_factor = 1 for no rope_scaling. HD must be even.
QLORADEF qlora_status qlora_rope_table(float *cos_t /*(max_pos, HD/2)*/, float *sin_t /*(max_pos, HD/2)*/,
                                       int64_t max_pos, int64_t head_dim, float theta, float linear_factor,
                                       qlora_error *err);
// In place: x[i] ← x[i]·cos − x[i+HD/2]·sin,  x[i+HD/2] ← x[i+HD/2]·cos + x[i]·sin, angle of pos[n].
// pos[n] must lie in [0, max_pos) of the tables (not checked).
QLORADEF void qlora_rope_forward(float *x /*(N, NH, HD) in place*/, const int32_t *pos /*(N)*/,
                                 const float *cos_t /*(max_pos, HD/2)*/, const float *sin_t /*(max_pos, HD/2)*/,
                                 int64_t N, int64_t n_heads, int64_t head_dim);
// In place: dx ← Rᵀ·dx, the rotation by −angle (RoPE is orthogonal). Overwrites: the one op that
// does not accumulate, because it transforms the gradient buffer itself.
QLORADEF void qlora_rope_backward(float *dx /*(N, NH, HD) in place*/, const int32_t *pos /*(N)*/,
                                  const float *cos_t /*(max_pos, HD/2)*/, const float *sin_t /*(max_pos, HD/2)*/,
                                  int64_t N, int64_t n_heads, int64_t head_dim);

// Causal GQA attention with a key padding mask: query head h uses kv head h / (NH/NKV); NH must be a
// multiple of NKV (the attention functions do nothing otherwise). Scale 1/sqrt(HD).
//   att[b,h,i,j] = softmax_j(q_i·k_j / sqrt(HD)) over keys j ≤ i with key_mask[b,j] = 1, else 0;
//   out[b,i,h]   = Σ_j att[b,h,i,j] · v[b,j,h/(NH/NKV)].
// key_mask (B,T): 1 = real token, 0 = padding; NULL = all real. A query row whose allowed keys are
// all masked (e.g. a left-padding position) gets att row 0 and output 0. Caches att for backward
// (B·NH·T² floats). Parallel over (b, h) pairs.
QLORADEF void qlora_attention_forward(float *out /*(B,T,NH,HD)*/, float *att /*(B,NH,T,T)*/,
                                      const float *q /*(B,T,NH,HD)*/, const float *k /*(B,T,NKV,HD)*/,
                                      const float *v /*(B,T,NKV,HD)*/, const uint8_t *key_mask /*(B,T) or NULL*/,
                                      int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD);
// dq (B,T,NH,HD), dk, dv (B,T,NKV,HD) += gradients of out given dout. Accumulates. Parallel over
// (b, kv head) pairs, so that the query heads sharing a kv head add into dk/dv from one thread.
// out is the forward's output, for δ_i = dout_i·out_i; NULL rebuilds it from att and v (more work).
QLORADEF void qlora_attention_backward(float *dq /*(B,T,NH,HD)*/, float *dk /*(B,T,NKV,HD)*/,
                                       float *dv /*(B,T,NKV,HD)*/, const float *dout /*(B,T,NH,HD)*/,
                                       const float *out /*(B,T,NH,HD) or NULL*/, const float *q /*(B,T,NH,HD)*/, const float *k /*(B,T,NKV,HD)*/,
                                       const float *v /*(B,T,NKV,HD)*/, const float *att /*(B,NH,T,T)*/,
                                       int64_t B, int64_t T, int64_t NH, int64_t NKV, int64_t HD);
// Incremental decoding: one query position attends over cached keys 0..n_ctx-1 (all allowed).
// out (NH,HD) = softmax(q·Kᵀ/sqrt(HD))·V per head; scores (NH, n_ctx) receives the probabilities.
// Equals the last row of qlora_attention_forward to rounding (a row kernel instead of tiles).
QLORADEF void qlora_attention_decode(float *out /*(NH,HD)*/, float *scores /*(NH, n_ctx)*/,
                                     const float *q /*(NH,HD)*/, const float *k_cache /*(n_ctx, NKV, HD)*/,
                                     const float *v_cache /*(n_ctx, NKV, HD)*/, int64_t n_ctx,
                                     int64_t NH, int64_t NKV, int64_t HD);

// SwiGLU: h = silu(g) ⊙ u, silu(z) = z·σ(z).
QLORADEF void qlora_swiglu_forward(float *h /*(n)*/, const float *g /*(n)*/, const float *u /*(n)*/, int64_t n);
// dg += dh ⊙ u ⊙ σ(g)(1 + g(1−σ(g)));  du += dh ⊙ silu(g). Accumulates.
QLORADEF void qlora_swiglu_backward(float *dg /*(n)*/, float *du /*(n)*/, const float *dh /*(n)*/,
                                    const float *g /*(n)*/, const float *u /*(n)*/, int64_t n);

// Embedding lookup: out[n] = table[tokens[n]]. A token outside [0, V) returns QLORA_ERR_ARG naming
// its position (out is then unspecified).
QLORADEF qlora_status qlora_embedding_forward(float *out /*(N,C)*/, const int32_t *tokens /*(N)*/,
                                              const float *table /*(V,C)*/, int64_t N, int64_t C, int64_t V,
                                              qlora_error *err);
// dtable[tokens[n]] += dout[n]. Accumulates; tokens must have passed forward.
QLORADEF void qlora_embedding_backward(float *dtable /*(V,C)*/, const float *dout /*(N,C)*/,
                                       const int32_t *tokens /*(N)*/, int64_t N, int64_t C);

// Cross-entropy: row_loss[n] = logsumexp(logits[n]) − logits[n, targets[n]], or 0 for an ignored row
// (target −100). *loss_sum = Σ row_loss (double), *count = number of counted rows. row_loss may be NULL.
// A target outside [0, V) other than −100 is treated as ignored too (the model validates targets).
#define QLORA_IGNORE_INDEX (-100)
QLORADEF void qlora_cross_entropy_forward(double *loss_sum, int64_t *count, float *row_loss /*(N) or NULL*/,
                                          const float *logits /*(N,V)*/, const int32_t *targets /*(N)*/,
                                          int64_t N, int64_t V);
// dlogits += dscale · (softmax(logits) − onehot(target)) for counted rows; ignored rows get nothing.
// dscale = 1/count gives the gradient of the mean loss. Accumulates.
QLORADEF void qlora_cross_entropy_backward(float *dlogits /*(N,V)*/, const float *logits /*(N,V)*/,
                                           const int32_t *targets /*(N)*/, int64_t N, int64_t V, float dscale);
// out = logits − logsumexp(logits), numerically stable (max subtracted). out may equal logits.
QLORADEF void qlora_log_softmax(float *out /*(V)*/, const float *logits /*(V)*/, int64_t V);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// 7. Llama model: config, NF4 weights + LoRA, training forward/backward, inference
//
//   Semantics are HF transformers' LlamaForCausalLM (modeling_llama.py):
//     x = embed[tokens]
//     per layer:  h = x + o_proj(attn(rope(q_proj(n1)), rope(k_proj(n1)), v_proj(n1))),  n1 = rmsnorm_in(x)
//                 x = h + down_proj(silu(gate_proj(n2)) ⊙ up_proj(n2)),                  n2 = rmsnorm_post(h)
//     logits = lm_head(rmsnorm_final(x))        (lm_head = embed when tie_word_embeddings)
//   RoPE uses HF's rotate_half pairing (x[i], x[i+HD/2]); GQA query head h reads kv head
//   h / (NH/NKV). The seven projections are frozen NF4 weights, optionally with a LoRA adapter
//   each (PEFT semantics, section 5); embedding, norms and lm_head are frozen fp32.
//
//   Dimensions: B batch, T sequence, M = B·T rows, C hidden, H intermediate, NH heads, NKV kv heads,
//   HD head dim, L layers, V vocab, R LoRA rank. Activations are fp32, row-major, one row per token.

// The seven projections of a layer, in checkpoint order. Bit t of a target mask selects target t.
typedef enum qlora_target {
    QLORA_TARGET_Q = 0,     // self_attn.q_proj   (NH·HD, C)
    QLORA_TARGET_K,         // self_attn.k_proj   (NKV·HD, C)
    QLORA_TARGET_V,         // self_attn.v_proj   (NKV·HD, C)
    QLORA_TARGET_O,         // self_attn.o_proj   (C, NH·HD)
    QLORA_TARGET_GATE,      // mlp.gate_proj      (H, C)
    QLORA_TARGET_UP,        // mlp.up_proj        (H, C)
    QLORA_TARGET_DOWN,      // mlp.down_proj      (C, H)
    QLORA_TARGET_COUNT
} qlora_target;
#define QLORA_TARGETS_ALL 0x7Fu

// Module path inside a layer ("self_attn.q_proj", ...) and the short PEFT name ("q_proj", ...).
QLORADEF const char *qlora_target_path(qlora_target t);
QLORADEF const char *qlora_target_name(qlora_target t);

// --- config ----------------------------------------------------------------------------------
// The fields of an HF LlamaConfig that the model uses. Missing fields take LlamaConfig's defaults
// (num_key_value_heads = num_attention_heads, head_dim = hidden_size / num_attention_heads,
// rms_norm_eps 1e-6, rope_theta 10000, max_position_embeddings 2048, tie_word_embeddings false).
// The RoPE tables hold every position, so max_position_embeddings above QLORA_MAX_POSITIONS (1 Mi positions:
// 512 MB of tables at head_dim 128) is refused instead of allocated.
#ifndef QLORA_MAX_POSITIONS
#define QLORA_MAX_POSITIONS (1 << 20)
#endif
typedef struct qlora_llama_config {
    int32_t hidden_size;              // C
    int32_t intermediate_size;        // H
    int32_t n_layers;                 // L   (num_hidden_layers)
    int32_t n_heads;                  // NH  (num_attention_heads)
    int32_t n_kv_heads;               // NKV (num_key_value_heads)
    int32_t head_dim;                 // HD, even
    int32_t vocab_size;               // V
    int32_t max_position_embeddings;  // RoPE table length: positions must stay below it (<= QLORA_MAX_POSITIONS)
    float   rms_norm_eps;
    float   rope_theta;
    float   rope_scaling_factor;      // rope_scaling {"type"/"rope_type": "linear", "factor": f}; 1 = none
    int32_t tie_word_embeddings;      // 1: lm_head is the embedding matrix
    int32_t bos_token_id;             // -1 when absent or null
    int32_t eos_token_id;             // -1 when absent; the first entry when config.json has a list
    int32_t pad_token_id;             // -1 when absent or null
} qlora_llama_config;

// Parses config.json text. `name` (may be NULL) names the file in error details. Fields of the
// wrong JSON type are QLORA_ERR_FORMAT; hidden_act other than "silu", rope_scaling types other than
// "linear"/"default", attention_bias or mlp_bias true are QLORA_ERR_UNSUPPORTED. Validates.
QLORADEF qlora_status qlora_llama_config_parse(qlora_llama_config *cfg, const char *json, size_t len,
                                               const char *name, qlora_error *err);
QLORADEF qlora_status qlora_llama_config_read(qlora_llama_config *cfg, const char *path, qlora_error *err);
// Positive sizes, NH a multiple of NKV, even HD, finite positive eps/theta/factor, no size overflow.
QLORADEF qlora_status qlora_llama_config_validate(const qlora_llama_config *cfg, qlora_error *err);

// --- model -----------------------------------------------------------------------------------
typedef struct qlora_llama_layer {
    float     *input_norm;                   // (C)  input_layernorm.weight
    float     *post_norm;                    // (C)  post_attention_layernorm.weight
    qlora_nf4  w[QLORA_TARGET_COUNT];        // frozen projections, (out, in) each; empty in a dense model
    qlora_lora lora[QLORA_TARGET_COUNT];     // adapters; lora[t].A == NULL where target t has none
    float     *dense[QLORA_TARGET_COUNT];    // (out, in) fp32 projections of a dense model, else NULL
} qlora_llama_layer;

// Zero-initialized = defaults.
typedef struct qlora_model_options {
    int32_t           blocksize;        // NF4 block size for weights quantized at load; 0 → 64
    int32_t           no_double_quant;  // 1: keep fp32 absmax (double quantization is the default)
    qlora_lora_config lora;             // lora.rank 0 → no adapters
    uint32_t          lora_targets;     // mask of (1u << QLORA_TARGET_*); 0 → all seven
    uint64_t          lora_seed;        // A of (layer l, target t) is seeded from (lora_seed, l, t)
    qlora_exec        exec;             // kernel choice / backend for every matmul of the model
    int32_t           dense;            // 1: keep the projections fp32 (full-parameter training, below);
                                        // NF4 options are then ignored and LoRA (lora.rank > 0) unsupported
} qlora_model_options;

typedef struct qlora_model {
    qlora_llama_config cfg;
    float             *embed;        // (V, C)  model.embed_tokens.weight
    float             *final_norm;   // (C)     model.norm.weight
    float             *lm_head;      // (V, C)  lm_head.weight; == embed when tied
    qlora_llama_layer *layers;       // (L)
    float             *rope_cos;     // (max_position_embeddings, HD/2)
    float             *rope_sin;     // (max_position_embeddings, HD/2)
    uint32_t           lora_targets; // targets that carry an adapter (0 when none)
    qlora_lora_config  lora_cfg;     // their config (rank 0 when none)
    qlora_exec         exec;
    int32_t            dense;        // 1: projections are fp32 layers[l].dense[t] (w[t] empty, no adapters)
    void              *arena;        // owns embed, norms, lm_head, rope tables (and dense projections)
} qlora_model;

// Loads an HF Llama checkpoint directory: config.json plus model.safetensors or
// model.safetensors.index.json with its shards. F32/F16/BF16 weights are converted to fp32 one
// tensor at a time and the seven projections quantized to NF4 as they load (peak memory ≈ the
// NF4 model + one fp32 tensor). Projections stored as bitsandbytes 4-bit (`P.weight` U8 with
// `P.weight.quant_state.bitsandbytes__nf4`, absmax U8 + nested_* for double quantization or F32)
// are taken as they are, with the stored nested_quant_map. A tensor whose shape contradicts
// config.json is QLORA_ERR_SHAPE naming the tensor, its file and both shapes; a missing tensor is
// QLORA_ERR_FORMAT. Adapters are created per opt->lora (A kaiming-uniform, B zero).
QLORADEF qlora_status qlora_model_load(qlora_model *m, const char *dir, const qlora_model_options *opt,
                                       qlora_error *err);
// A model with random weights, made in memory (for benchmarks): embedding and lm_head N(0, 0.02²)
// approximated by uniform draws, norms 1, projections uniform with std 1/√in, generated and quantized
// one chunk of blocks at a time, so peak memory stays ≈ the NF4 model. With opt->dense = 1 it is
// qlora_model_init_random_dense.
QLORADEF qlora_status qlora_model_init_random(qlora_model *m, const qlora_llama_config *cfg,
                                              const qlora_model_options *opt, uint64_t seed, qlora_error *err);
QLORADEF void         qlora_model_free(qlora_model *m);
// Writes dir/config.json (with a bitsandbytes "quantization_config") and dir/model.safetensors in
// the bitsandbytes 4-bit layout (spec §3): projections as NF4 + quant_state, the rest F32.
// Adapters are not part of it. Both files are written atomically. dir must exist.
QLORADEF qlora_status qlora_model_save_bnb4(const qlora_model *m, const char *dir, qlora_error *err);
// Replaces the model's adapters by a PEFT LoRA adapter directory (adapter_config.json +
// adapter_model.safetensors), read by qlora_adapter_load with the model's projections as its modules
// ("model.layers.L.self_attn.q_proj", ...): whatever that accepts (rank_pattern / alpha_pattern,
// layers_to_transform, regex target_modules, F16/BF16 tensors, rsLoRA) loads here too. lora_targets
// becomes the targets that received weights and lora_cfg the file's r / alpha / dropout / rsLoRA, with
// rank the largest of the modules'. Nothing changes on failure. Train states and KV caches made before
// must be made again.
QLORADEF qlora_status qlora_model_load_adapter(qlora_model *m, const char *dir, qlora_error *err);

// dA = dB = 0 for every adapter.
QLORADEF void    qlora_model_zero_grad(qlora_model *m);
// Trainable LoRA parameters (Σ R·(in + out) over adapters) and bytes held by the frozen weights.
QLORADEF int64_t qlora_model_lora_params(const qlora_model *m);
QLORADEF int64_t qlora_model_weight_bytes(const qlora_model *m);

// --- training --------------------------------------------------------------------------------
// Activations one layer keeps for backward (views into the train state's arena).
typedef struct qlora_llama_acts {
    float           *ln1;      // (M, C)       rmsnorm_in(x)
    float           *rstd1;    // (M)
    float           *q;        // (M, NH·HD)   after RoPE
    float           *k;        // (M, NKV·HD)  after RoPE
    float           *v;        // (M, NKV·HD)
    float           *att;      // (B, NH, T, T) attention probabilities
    float           *ao;       // (M, NH·HD)   attention output (o_proj input)
    float           *h;        // (M, C)       x + o_proj(ao)
    float           *ln2;      // (M, C)       rmsnorm_post(h)
    float           *rstd2;    // (M)
    float           *g;        // (M, H)       gate_proj(ln2)
    float           *u;        // (M, H)       up_proj(ln2)
    float           *a;        // (M, H)       silu(g) ⊙ u (down_proj input)
    qlora_lora_cache cache[QLORA_TARGET_COUNT];  // xa (M, R); xd (M, in) when the adapter has dropout
} qlora_llama_acts;

// Everything a training step needs, sized once for (B, T): forward, backward and the loss never
// allocate. One arena; the views below point into it.
typedef struct qlora_train_state {
    int64_t           B, T, M;        // M = B·T
    int32_t           checkpointing;  // 1: keep only each layer's input, recompute the layer in backward
    int32_t           n_acts;         // L, or 1 with checkpointing
    int32_t           training;       // the last forward used dropout
    int32_t           ready;          // a forward with labels ran; backward may follow
    uint32_t          lora_targets;   // adapters it was sized for: targets, rank, dropout buffers
    int32_t           lora_rank;
    int32_t           lora_xd;
    int32_t          *tokens;         // (B, T) input ids of the last forward
    int32_t          *targets;        // (B, T) shifted labels: targets[b,t] = labels[b,t+1]; -100 at t = T-1
    uint8_t          *key_mask;       // (B, T) 1 = real token (all ones when the caller passed NULL)
    int32_t          *pos;            // (M) position of each row (t)
    float            *resid;          // (L+1, M, C) input of every layer; resid[L] = output of the last
    float            *lnf;            // (M, C) rmsnorm_final(resid[L]); the model's last hidden state
    float            *rstdf;          // (M)
    float            *logits;         // (M, V)
    float            *lse;            // (M) logsumexp of each counted row of logits (for the loss's backward)
    qlora_llama_acts *acts;           // (n_acts)
    qlora_rng        *rng_saved;      // (L, 7) adapter RNG states before each layer's forward
    // backward scratch
    float            *dres;           // (M, C) gradient of the residual stream
    float            *dln;            // (M, C) gradient of a norm output
    float            *dq;             // (M, NH·HD)
    float            *dk, *dv;        // (M, NKV·HD)
    float            *dao;            // (M, NH·HD)
    float            *dg, *du, *da;   // (M, H)
    float            *dlogits;        // (logit_rows, V)
    int64_t           logit_rows;     // rows of dlogits processed at a time
    // fused LoRA of the projections that read one input (q, k, v; gate, up), when no dropout mask applies
    float            *lora_xg;        // (M, 3·R) their x·Aᵀ side by side in forward, s·dy·B in backward
    float            *lora_a;         // (3·R, C) their A matrices stacked
    float            *lora_da;        // (3·R, C) gᵀ·x before it is split into their dA
    double            loss_sum;       // Σ per-token cross-entropy of the last forward
    int64_t           n_counted;      // tokens counted in the loss
    float             loss;           // loss_sum / n_counted (0 when nothing counted)
    void             *arena;
    int64_t           arena_bytes;
} qlora_train_state;

// Bytes the train state of (B, T) would allocate for this model.
QLORADEF qlora_status qlora_train_state_bytes(const qlora_model *m, int64_t B, int64_t T, int checkpointing,
                                              int64_t *bytes, qlora_error *err);
QLORADEF qlora_status qlora_train_state_init(qlora_train_state *ts, const qlora_model *m, int64_t B, int64_t T,
                                             int checkpointing, qlora_error *err);
QLORADEF void         qlora_train_state_free(qlora_train_state *ts);

// Training forward (LoRA dropout active). tokens (B, T); key_mask (B, T) 1 = real token, 0 =
// padding (NULL = all real); labels (B, T) or NULL (logits only, no loss).
// LOSS CONVENTION = HF LlamaForCausalLM: labels are aligned with tokens and shifted inside, i.e.
// the logits at position t are scored against labels[b, t+1]; labels[b, 0] is never used and -100
// is ignored. loss = mean over counted tokens (0 when no token counts). Logits stay in ts->logits.
// Rows at padding positions get finite logits that do not influence anything else.
QLORADEF qlora_status qlora_model_forward_train(qlora_model *m, qlora_train_state *ts, const int32_t *tokens,
                                                const uint8_t *key_mask, const int32_t *labels, float *loss,
                                                qlora_error *err);
// Same without dropout (evaluation); backward may still follow.
QLORADEF qlora_status qlora_model_forward_eval(qlora_model *m, qlora_train_state *ts, const int32_t *tokens,
                                               const uint8_t *key_mask, const int32_t *labels, float *loss,
                                               qlora_error *err);
// Gradient of the mean loss of the last forward, ACCUMULATED into every adapter's dA, dB.
// Frozen weights (NF4, embedding, norms, lm_head) get no gradient. With checkpointing the layer
// is recomputed with the same dropout masks; results are bit-identical to checkpointing off.
QLORADEF qlora_status qlora_model_backward(qlora_model *m, qlora_train_state *ts, qlora_error *err);
// Same for scale·(Σ token losses) instead of the mean (gradient accumulation over micro-batches
// normalized by the total token count: scale = 1 / total).
QLORADEF qlora_status qlora_model_backward_scaled(qlora_model *m, qlora_train_state *ts, float scale,
                                                  qlora_error *err);

// --- full-parameter training of dense fp32 models ----------------------------------------------
// A dense model (qlora_model_options.dense = 1, or qlora_model_init_random_dense) keeps the seven
// projections as fp32 (out, in) matrices in layers[l].dense[t]; every forward, inference and
// qlora_model_backward work on it as on an NF4 model. qlora_model_backward_full gives the gradient
// of EVERY parameter: embedding, norms, lm_head and the projections (dW += dYᵀ·X). Loading with
// dense = 1 takes F32/F16/BF16 projections as fp32 (bitsandbytes 4-bit ones are dequantized).
// LoRA adapters on a dense model, qlora_model_save_bnb4 and qlora_model_load_adapter of a dense
// model are QLORA_ERR_UNSUPPORTED.

// A dense model with random weights (GPT-2 / Llama pretraining init): embedding, lm_head and the
// projections N(0, 0.02²), except o_proj and down_proj N(0, (0.02/√(2L))²); norms 1. The normal
// draws are a pure function of (seed, tensor, index), so the model does not depend on the thread
// count. opt may be NULL; its dense flag is implied, its lora.rank must be 0.
QLORADEF qlora_status qlora_model_init_random_dense(qlora_model *m, const qlora_llama_config *cfg,
                                                    const qlora_model_options *opt, uint64_t seed,
                                                    qlora_error *err);

// Gradients of one layer's parameters, shapes as the parameters.
typedef struct qlora_llama_layer_grads {
    float *input_norm;                // (C)
    float *post_norm;                 // (C)
    float *w[QLORA_TARGET_COUNT];     // (out, in) each, of layers[l].dense[t]
} qlora_llama_layer_grads;

// The gradient of every parameter of a dense model, one arena. params lists (name, parameter,
// gradient, count) for every tensor, in checkpoint order (embed; per layer input_layernorm, q, k,
// v, o, post_attention_layernorm, gate, up, down; norm; lm_head when untied), HF names:
// qlora_adamw_init(&opt, g.params, g.n_params, &cfg, err) trains the whole model.
typedef struct qlora_model_grads {
    const qlora_model       *model;       // the model it was made for (backward_full checks it)
    qlora_llama_config       cfg;         // its config at init
    float                   *embed;       // (V, C); with tied embeddings it also gets the lm_head part
    float                   *final_norm;  // (C)
    float                   *lm_head;     // (V, C) untied; NULL when tied
    qlora_llama_layer_grads *layers;      // (L)
    struct qlora_param      *params;      // (n_params) qlora_param, declared with AdamW below; norms no_decay
    int64_t                  n_params;
    int64_t                  n_floats;    // Σ counts = number of trainable parameters
    char                    *names;       // storage of the params' names
    void                    *arena;
} qlora_model_grads;

// Allocates zeroed gradients for dense model m (an NF4 model is QLORA_ERR_UNSUPPORTED).
QLORADEF qlora_status qlora_model_grads_init(qlora_model_grads *g, qlora_model *m, qlora_error *err);
QLORADEF void         qlora_model_grads_zero(qlora_model_grads *g);
QLORADEF void         qlora_model_grads_free(qlora_model_grads *g);
// Gradient of scale·(Σ token losses) of the last forward (as qlora_model_backward_scaled; scale =
// 1 / ts->n_counted for the mean loss of one batch), ACCUMULATED into every gradient of g. Needs a
// dense model, g made for it and a forward with labels; consumes that forward like the LoRA
// backward. Checkpointing on/off does not change a bit of the result, nor does the OpenMP thread
// count on the built-in GEMM engine (OpenBLAS may sum differently with another thread count).
QLORADEF qlora_status qlora_model_backward_full(qlora_model *m, qlora_train_state *ts, qlora_model_grads *g,
                                                float scale, qlora_error *err);
// Writes dir/config.json (HF LlamaConfig, no quantization_config, torch_dtype of `dtype`) and
// dir/model.safetensors with every tensor in HF Llama names as dtype F32, BF16 or F16 (rounded to
// nearest even); both atomically, dir must exist. A dense model writes its weights; an NF4 model
// writes the dequantized projections with its adapters merged (W + s·B·A). The result loads with
// qlora_model_load, NF4-quantized by default or dense with options.dense = 1.
QLORADEF qlora_status qlora_model_save_dense(const qlora_model *m, const char *dir, qlora_dtype dtype,
                                             qlora_error *err);

// --- inference -------------------------------------------------------------------------------
// KV cache plus the scratch of incremental forward passes over up to `chunk` tokens at a time.
typedef struct qlora_kv_cache {
    int64_t  max_ctx;       // positions it holds
    int64_t  n;             // positions filled: the next token goes to position n
    int64_t  chunk;         // rows per internal forward step
    int32_t  lora_rank;     // largest adapter rank it was sized for
    float   *k;             // (L, max_ctx, NKV·HD) keys after RoPE
    float   *v;             // (L, max_ctx, NKV·HD)
    // scratch, (chunk, ·) rows
    float   *x, *ln, *tmp;  // (chunk, C)
    float   *q, *ao;        // (chunk, NH·HD)
    float   *g, *u, *a;     // (chunk, H)
    float   *xa;            // (chunk, R)
    float   *logits;        // (chunk, V)
    float   *scores;        // (NH, max_ctx)
    float   *rstd;          // (chunk)
    int32_t *pos;           // (chunk)
    float   *probs;         // (V) sampling / log-softmax scratch
    int32_t *idx;           // (V) sampling scratch
    double  *pool;          // (C) embedding accumulator
    void    *arena;
} qlora_kv_cache;

// max_ctx ≤ max_position_embeddings; chunk 0 → 64.
QLORADEF qlora_status qlora_kv_cache_init(qlora_kv_cache *kv, const qlora_model *m, int64_t max_ctx,
                                          int64_t chunk, qlora_error *err);
QLORADEF void         qlora_kv_cache_free(qlora_kv_cache *kv);

// Runs tokens (n) at positions kv->n .. kv->n+n-1 (appending to the cache, batched in chunks) and
// writes the logits of the last one to logits_last (V) unless NULL.
QLORADEF qlora_status qlora_model_prefill(qlora_model *m, qlora_kv_cache *kv, const int32_t *tokens, int64_t n,
                                          float *logits_last, qlora_error *err);
// One token at position pos (0 ≤ pos ≤ kv->n; pos < kv->n rolls the cache back to pos first).
// logits (V). Adapters apply unmerged, without dropout.
QLORADEF qlora_status qlora_model_forward_decode(qlora_model *m, qlora_kv_cache *kv, int32_t token, int64_t pos,
                                                 float *logits, qlora_error *err);

// Zero-initialized = greedy decoding of up to max_new tokens, stopping after eos.
typedef struct qlora_generate_options {
    float    temperature;    // ≤ 0: greedy (argmax, lowest id on ties)
    float    top_p;          // nucleus sampling; 0 or ≥ 1: off
    uint64_t seed;           // sampling RNG seed
    int32_t  no_stop_at_eos; // 1: keep going after cfg.eos_token_id
    // Called with each new token; return nonzero to stop. May be NULL.
    int    (*on_token)(void *user, int32_t token);
    void    *user;
} qlora_generate_options;

// Samples a token from logits (V) as HF does: logits / temperature, then top-p (keep the smallest
// set of most likely tokens whose probability reaches top_p), then a draw from rng. Uses kv's
// probs/idx scratch. Greedy when temperature ≤ 0.
QLORADEF int32_t qlora_sample_token(qlora_kv_cache *kv, const float *logits, int64_t V, float temperature,
                                    float top_p, qlora_rng *rng);
// Resets kv, prefills the prompt (n_prompt ≥ 1) and generates up to max_new tokens into out
// (max_new); *n_out receives the count (an eos that stops generation is included).
QLORADEF qlora_status qlora_model_generate(qlora_model *m, qlora_kv_cache *kv, const int32_t *prompt,
                                           int64_t n_prompt, int64_t max_new, const qlora_generate_options *opt,
                                           int32_t *out, int64_t *n_out, qlora_error *err);
// Log-likelihood of each continuation given the prompt: out[c] = Σ_j log p(conts[c][j] | prompt,
// conts[c][<j]). The prompt (n_prompt ≥ 1) is prefilled once; each continuation then runs from a
// rollback of the cache to n_prompt. kv must hold n_prompt + the longest continuation.
QLORADEF qlora_status qlora_model_score(qlora_model *m, qlora_kv_cache *kv, const int32_t *prompt,
                                        int64_t n_prompt, const int32_t *const *conts, const int64_t *cont_lens,
                                        int64_t n_conts, double *out, qlora_error *err);
// Scores a token trie (e.g. every label of a closed set, with shared prefixes) in one batched pass:
// the prompt (n_prompt ≥ 1) is prefilled once, then all n nodes run in chunks of rows under a tree
// attention mask. Node i holds token node_token[i] and has parent node_parent[i] (-1: a child of the
// prompt; parents precede children, node_parent[i] < i); it sits at position n_prompt + depth(i) and
// attends to the prompt and to its ancestors only. logp[i] = log p(node_token[i] | prompt, ancestors),
// so a root-to-node path scores Σ logp over its nodes, as qlora_model_score of that path would.
// Only inner nodes (those with children) run through the model; a leaf's logp comes from its parent's
// logits. kv must hold n_prompt + (number of inner nodes) slots. Resets kv.
QLORADEF qlora_status qlora_model_score_tree(qlora_model *m, qlora_kv_cache *kv, const int32_t *prompt,
                                             int64_t n_prompt, const int32_t *node_token,
                                             const int32_t *node_parent, int64_t n, double *logp,
                                             qlora_error *err);
// Sentence embedding: the mean over the n tokens of the model's last hidden state AFTER the final
// RMSNorm (HF LlamaModel's last_hidden_state). out (C). Resets kv.
QLORADEF qlora_status qlora_model_embed(qlora_model *m, qlora_kv_cache *kv, const int32_t *tokens, int64_t n,
                                        float *out, qlora_error *err);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// Pager: optimizer state in fixed-size pages under a memory budget
//
//   The host analogue of bitsandbytes' paged optimizers (CUDA unified memory, evicted to CPU RAM
//   under pressure and prefetched before each parameter's update): the state is one flat byte
//   array cut into pages of page_bytes. At most budget_bytes of pages are resident; a page that
//   must make room is written to a backing store (by default an unlinked temp file in `dir`,
//   written with write/read at page offsets) and read back when next touched. Eviction is LRU.
//   Without a budget every page is resident and no file is ever created. Pages that were never
//   written read as zeros, like bitsandbytes' zero-filled managed buffers.

#define QLORA_PAGE_BYTES_DEFAULT (1 << 20)

// A backing store for evicted pages. Both members are required when a store is given.
typedef struct qlora_page_store {
    void *user;
    qlora_status (*write)(void *user, int64_t page, const void *buf, int64_t bytes, qlora_error *err);
    qlora_status (*read)(void *user, int64_t page, void *buf, int64_t bytes, qlora_error *err);
} qlora_page_store;

typedef struct qlora_pager_config {
    int64_t                 page_bytes;    // 0: QLORA_PAGE_BYTES_DEFAULT; else a multiple of 64, >= 4096
    int64_t                 budget_bytes;  // 0: unlimited (all resident); else >= page_bytes
    const char             *dir;           // directory of the default temp file; NULL: "."
    const qlora_page_store *store;         // NULL: the default temp-file store
} qlora_pager_config;

typedef struct qlora_pager {
    int64_t          page_bytes;
    int64_t          budget_bytes;        // 0 = unlimited
    int64_t          n_pages;
    int64_t          n_slots;             // resident page buffers
    uint8_t        **slot_buf;            // (n_slots) page buffers of page_bytes
    int64_t         *slot_page;           // (n_slots) page held by the slot, -1 when free
    uint64_t        *slot_stamp;          // (n_slots) last use, for LRU
    uint8_t         *slot_dirty;          // (n_slots) 1 when the buffer differs from the store
    int64_t         *page_slot;           // (n_pages) slot holding the page, -1 when not resident
    uint8_t         *page_stored;         // (n_pages) 1 when the store holds the page (else all zero)
    uint64_t         clock;
    qlora_page_store store;               // store.write == NULL: the default temp file
    char            *dir;                 // default store: directory of the temp file
    char            *file_path;           // default store: the temp file (unlinked at once on POSIX)
    int              fd;                  // default store: descriptor, -1 until the first eviction
    void            *fp;                  // default store without POSIX: FILE *
    // statistics
    int64_t          page_ins, page_outs; // pages read from / written to the store
    int64_t          resident_bytes;      // bytes of page buffers allocated now
    int64_t          peak_resident_bytes;
} qlora_pager;

// Cuts total_bytes into pages (the last one padded). No file is touched until a page is evicted.
QLORADEF qlora_status qlora_pager_init(qlora_pager *p, int64_t total_bytes, const qlora_pager_config *cfg,
                                       qlora_error *err);
// *data = the page's page_bytes bytes, paged in if needed (evicting the least recently used page).
// dirty = 1 when the caller will modify them. The pointer is valid until the next qlora_pager_get.
QLORADEF qlora_status qlora_pager_get(qlora_pager *p, int64_t page, int dirty, uint8_t **data, qlora_error *err);
QLORADEF void         qlora_pager_free(qlora_pager *p);

// ---------------------------------------------------------------------------------------------
// AdamW (bitsandbytes semantics), 8-bit blockwise states, LR schedules, gradient clipping
//
//   Per element, with t the step (from 1), g the (clipped) gradient, lr the scheduled rate
//   (bitsandbytes kOptimizer32bit2State, the default arithmetic):
//       m  = β1·m + (1−β1)·g            v  = β2·v + (1−β2)·g²
//       c1 = 1 − β1^t                   c2 = √(1 − β2^t)
//       p  = p − lr·(c2/c1) · m / (√v + eps·c2)
//       p  = p · (1 − lr·wd)            decoupled decay AFTER the Adam step (bitsandbytes)
//   torch_order = 1 follows torch.optim.AdamW instead: p ·= (1 − lr·wd) BEFORE the Adam step, and
//   p −= (lr/c1) · m / (√v/c2 + eps). The two agree exactly at wd = 0 up to rounding.
//
//   8-bit states (optim_bits = 8; bitsandbytes >= 0.44 kOptimizerStatic8bit2StateBlockwise):
//   m as codes into the signed dynamic map, v into the unsigned map, one fp32 absmax per block of
//   256 elements for each. Per block: dequantize, update as above, new absmax = max|m|, max|v|
//   over the block, re-quantize to the nearest map entry; a code whose map value has the wrong
//   sign for m moves one step toward m's sign. Tensors with numel < min_8bit_size keep fp32
//   states. In both modes a NaN/Inf gradient element zeroes that element's m and v and leaves its
//   parameter unchanged (bitsandbytes does this in the 8-bit kernel; its 32-bit kernel would
//   propagate the NaN into the weight, which no trainer wants).
//
//   Clipping: the global L2 norm over all gradients (fixed summation order in double, so the
//   result does not depend on the thread count); when max_grad_norm > 0 and the norm is finite,
//   gradients are scaled by min(1, max_grad_norm / (norm + 1e-6)) as torch.nn.utils.clip_grad_norm_.
//
//   The state lives in a qlora_pager: per tensor, runs of elements ("chunks", a multiple of 256
//   elements except at a tensor's end) packed into pages, each chunk holding its m and v (or
//   codes and absmax) together, so one resident page is enough for a step and the result is
//   bit-identical for every budget and page size.

typedef enum qlora_lr_schedule {
    QLORA_LR_CONSTANT = 0,          // lr at every step; warmup is IGNORED, as transformers' "constant"
                                    // (so qlora.py's warmup_ratio 0.03 with "constant" is a no-op)
    QLORA_LR_CONSTANT_WITH_WARMUP,  // linear warmup 0 → lr, then lr
    QLORA_LR_LINEAR,                // linear warmup, then linear decay to 0 at total_steps
    QLORA_LR_COSINE                 // linear warmup, then half a cosine down to 0 at total_steps
} qlora_lr_schedule;

// Learning rate of the update that follows `step` completed updates (0 for the first), the
// value transformers' get_*_schedule(_with_warmup) LambdaLR gives: warmup factor step/warmup
// (so the first update with warmup has lr 0); linear max(0, (total−step)/(total−warmup));
// cosine max(0, ½(1 + cos(π·(step−warmup)/(total−warmup)))). Computed in double.
QLORADEF float qlora_lr_at(qlora_lr_schedule schedule, float lr, int64_t step, int64_t warmup_steps,
                           int64_t total_steps);

// One trained tensor: values and gradient, both (n) floats owned by the caller.
// Zero-initialize it (memset, calloc) and set the fields, so that flags default to off.
typedef struct qlora_param {
    const char *name;  // used in error details and checked by qlora_adamw_load; may be NULL
    float      *w;     // (n) parameter, updated in place
    float      *g;     // (n) gradient; scaled in place by clipping
    int64_t     n;
    int32_t     no_decay;  // 1: AdamW applies no weight decay to it (norm weights, as HF's Trainer does)
} qlora_param;

// Global L2 norm of the gradients (double; 64 fixed segments per tensor, summed in order).
QLORADEF double qlora_grad_norm(const qlora_param *params, int64_t n_params);
// Scales every gradient by min(1, max_norm / (norm + 1e-6)) when max_norm > 0 and the norm is
// finite; returns the norm before clipping (NaN/Inf when a gradient is not finite).
QLORADEF double qlora_clip_grad_norm(const qlora_param *params, int64_t n_params, float max_norm);

typedef struct qlora_adamw_config {
    float             lr;             // peak learning rate (bitsandbytes default 1e-3; QLoRA 2e-4)
    float             beta1, beta2;   // 0.9, 0.999
    float             eps;            // 1e-8, enters as eps·c2 (see above)
    float             weight_decay;   // 0.01 (bitsandbytes default; QLoRA uses 0.0)
    int32_t           optim_bits;     // 32: fp32 m, v;  8: blockwise 8-bit m, v
    int32_t           min_8bit_size;  // 4096: smaller tensors keep fp32 states in 8-bit mode
    int32_t           torch_order;    // 0: bitsandbytes arithmetic (decay after); 1: torch.optim.AdamW
    float             max_grad_norm;  // global clipping threshold; 0 = off (QLoRA 0.3)
    qlora_lr_schedule schedule;
    int64_t           warmup_steps;
    int64_t           total_steps;    // linear / cosine: the step where lr reaches 0
    qlora_pager_config pager;         // page size, memory budget ("optim_memory"), temp directory
} qlora_adamw_config;

// bitsandbytes AdamW defaults: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01,
// 32-bit, min_8bit_size 4096, no clipping, constant lr, unlimited memory.
QLORADEF qlora_adamw_config qlora_adamw_default_config(void);

// A run of elements [lo, hi) of one tensor whose state sits at byte `offset` of page `page`.
typedef struct qlora_adamw_chunk {
    int64_t param, lo, hi, page, offset;
} qlora_adamw_chunk;

typedef struct qlora_adamw {
    qlora_adamw_config  cfg;
    int64_t             n_params;
    qlora_param        *params;     // (n_params) copy of the list; names copied into `names`
    uint8_t            *is8bit;     // (n_params) 1: 8-bit state, 0: fp32 state
    int64_t             step;       // updates done (t of the last one)
    int64_t             n_chunks;
    qlora_adamw_chunk  *chunks;     // (n_chunks) in parameter order
    qlora_pager         pager;      // owns all m / v bytes
    float               map1[256];  // signed dynamic map (m codes)
    float               map2[256];  // unsigned dynamic map (v codes)
    char               *names;      // storage of the copied names
} qlora_adamw;

// What one step did.
typedef struct qlora_step_stats {
    double  grad_norm;   // global L2 norm before clipping
    float   clip_coef;   // factor applied to the gradients (1 when not clipped)
    float   lr;          // learning rate used
    int64_t nonfinite;   // gradient elements that were NaN/Inf (state zeroed, update skipped)
} qlora_step_stats;

// Lays out the state of every tensor (all zero) under cfg->pager. params is copied; the arrays it
// points to must outlive the optimizer.
QLORADEF qlora_status qlora_adamw_init(qlora_adamw *opt, const qlora_param *params, int64_t n_params,
                                       const qlora_adamw_config *cfg, qlora_error *err);
// One update of every parameter from its gradient: clip, schedule, AdamW. Allocates nothing.
// I/O errors of the pager are the only failures; stats may be NULL.
QLORADEF qlora_status qlora_adamw_step(qlora_adamw *opt, qlora_step_stats *stats, qlora_error *err);
QLORADEF void         qlora_adamw_free(qlora_adamw *opt);
// Bytes of optimizer state as laid out in pages (n_pages × page_bytes; resident or not).
QLORADEF int64_t      qlora_adamw_state_bytes(const qlora_adamw *opt);

// ---------------------------------------------------------------------------------------------
// Optimizer checkpoint: AdamW state + the caller's RNG blob and data position
//
//   File layout (little-endian), written atomically:
//     header, 256 bytes:  0 magic "QLORAOPT"   8 u32 version (1)   12 u32 header bytes (256)
//                        16 i64 step   24 i64 n_params   32 i32 optim_bits   36 i32 min_8bit_size
//                        40 i32 torch_order   44 i32 8-bit blocksize (256)   48 i64 rng_bytes
//                        56 i64 data_pos[4]   88 f32 lr, beta1, beta2, eps, weight_decay
//                        (informational)   108..255 zero
//     per parameter:     u32 name bytes, name, i64 n, i32 kind (0 fp32, 1 8-bit), i32 0, then
//                        fp32: m (n f32), v (n f32);  8-bit: absmax1, absmax2 (ceil(n/256) f32),
//                        codes1, codes2 (n u8)
//     rng blob (rng_bytes), then u64 FNV-1a 64 of everything before it, then "QLORAEND".
//   The layout does not depend on the page size or budget, so a run may resume with other ones.

typedef struct qlora_resume_info {
    int64_t data_pos[4];   // the caller's data position (e.g. epoch, sample index), stored verbatim
    void   *rng;           // save: rng_bytes of the caller's RNG state; load: receives them
    int64_t rng_bytes;     // load: must equal the saved size
} qlora_resume_info;

// info may be NULL (no blob, zero position).
QLORADEF qlora_status qlora_adamw_save(qlora_adamw *opt, const char *path, const qlora_resume_info *info,
                                       qlora_error *err);
// Validates the whole file (magic, version, sizes, names, state kinds, checksum) before changing
// opt, then restores step and state. QLORA_ERR_FORMAT for a damaged or truncated file,
// QLORA_ERR_SHAPE when it does not match opt's parameter list or info->rng_bytes.
QLORADEF qlora_status qlora_adamw_load(qlora_adamw *opt, const char *path, qlora_resume_info *info,
                                       qlora_error *err);

// ---------------------------------------------------------------------------------------------
// PEFT adapter files: adapter_config.json + adapter_model.safetensors
//
//   Tensor keys: "base_model.model." + module name + ".lora_A.weight" (rank, in) and
//   ".lora_B.weight" (out, rank), F32, metadata {"format": "pt"}. Module names are the base
//   model's, e.g. "model.layers.0.self_attn.q_proj", "model.layers.3.mlp.down_proj".
//   adapter_config.json is the LoraConfig as PEFT writes it (indent 2, sorted keys); modules whose
//   rank / alpha differ from the most common one go into rank_pattern / alpha_pattern.

typedef struct qlora_adapter_module {
    const char *name;    // module path in the base model, e.g. "model.layers.0.self_attn.q_proj"
    qlora_lora *lora;    // save: the trained layer; load: (re)initialized from the files
    int64_t     in, out; // load: the shape the model expects; save: ignored when 0, else checked
} qlora_adapter_module;

// What adapter_config.json said (after defaults) and what was loaded.
typedef struct qlora_adapter_config {
    int32_t r;                           // default rank (8 when absent)
    float   lora_alpha;                  // default alpha (8 when absent)
    float   lora_dropout;                // 0 when absent
    int32_t use_rslora;
    int64_t n_loaded;                    // modules that received weights
    char    base_model_name_or_path[512];
} qlora_adapter_config;

// Writes dir/adapter_model.safetensors, then dir/adapter_config.json (both atomic; dir is created
// if missing). base_model may be NULL (written as null). All modules must share dropout and rsLoRA.
// target_modules lists the modules' last name components ("q_proj", ...) when every layer has all of
// them, else the modules' full names (PEFT matches a suffix in every layer).
QLORADEF qlora_status qlora_adapter_save(const char *dir, const qlora_adapter_module *mods, int64_t n,
                                         const char *base_model, qlora_error *err);
// Reads an adapter written by PEFT or qlora_adapter_save. Accepts missing optional config keys
// (PEFT defaults), target_modules as a list or a regex string, keys with an adapter name
// ("lora_A.default.weight"), F32/F16/BF16 tensors, rank_pattern / alpha_pattern entries that name
// a module (or a dotted suffix of it). Each listed module whose tensors are in the file is
// re-initialized (qlora_lora_free + qlora_lora_init with the file's rank, alpha, dropout, rsLoRA;
// dropout RNG seeded with 0) and filled; a module absent from the file gets an empty lora
// (A == NULL). A shape that differs from (in, out) is QLORA_ERR_SHAPE naming the module and both
// shapes; a targeted module without tensors is QLORA_ERR_FORMAT; DoRA, biases, fan_in_fan_out and
// tensors of modules not in `mods` are QLORA_ERR_UNSUPPORTED. Nothing is changed on failure.
// cfg may be NULL.
QLORADEF qlora_status qlora_adapter_load(const char *dir, qlora_adapter_module *mods, int64_t n,
                                         qlora_adapter_config *cfg, qlora_error *err);

// ---------------------------------------------------------------------------------------------
// MLflow file store (./mlruns) writer
//
//   Writes the layout MLflow 1.x–3.x reads from a file store (see shared/spec/mlflow-filestore.md):
//   mlruns/<exp>/meta.yaml, mlruns/<exp>/<run_id>/{meta.yaml, metrics/, params/, tags/, artifacts/},
//   mlruns/models/<name>/{meta.yaml, version-<n>/meta.yaml}. meta.yaml, params and tags are written
//   atomically (temp file outside metrics/params/tags, then rename); metric lines are appended
//   with one write() each ("<ms> <value> <step>\n"), a new metric file appears with its first line.
//   Keys must match MLflow's rule: characters [A-Za-z0-9_.\- :/], at most 250, no leading or
//   trailing '/', no "//", no "." or ".." component. The API records only what it is given: it
//   reads no environment variable and prints nothing. POSIX only (else QLORA_ERR_UNSUPPORTED).

typedef enum qlora_mlflow_status {
    QLORA_MLFLOW_RUNNING   = 1,
    QLORA_MLFLOW_SCHEDULED = 2,
    QLORA_MLFLOW_FINISHED  = 3,
    QLORA_MLFLOW_FAILED    = 4,
    QLORA_MLFLOW_KILLED    = 5
} qlora_mlflow_status;

typedef struct qlora_mlflow_options {
    const char *experiment_name;  // NULL or "Default": experiment "0"; else found by name or created
    const char *run_name;         // NULL: "qlora-" + the first 8 hex digits of the run id
    const char *user;             // NULL: "unknown"
    const char *source_name;      // tag mlflow.source.name (program path); NULL: ""
    const char *git_commit;       // tag mlflow.source.git.commit; NULL: not written
    uint64_t    seed;             // ids: 0 draws from the clock and addresses, else reproducible
    int64_t     start_time_ms;    // 0: now
} qlora_mlflow_options;

typedef struct qlora_mlflow_run {
    char     *root;              // absolute path of the mlruns directory
    char     *run_dir;           // root/<experiment_id>/<run_id>
    char     *run_name;
    char     *user;
    char     *artifact_uri;      // file://.../<run_id>/artifacts (percent-encoded)
    char      experiment_id[24];
    char      run_id[33];        // 32 lowercase hex digits (uuid4)
    int64_t   start_time_ms;
    int64_t   end_time_ms;       // 0 while running
    int32_t   status;            // qlora_mlflow_status
    qlora_rng rng;               // further ids (model uuids)
} qlora_mlflow_run;

// 1 when key is a valid MLflow metric / param / tag key (see above), else 0.
QLORADEF int          qlora_mlflow_key_valid(const char *key);
// Creates root (and root/.trash, experiment 0 "Default") if missing, the experiment if needed, and
// the run: meta.yaml (status RUNNING), metrics/ params/ tags/ artifacts/, and the tags
// mlflow.runName, mlflow.user, mlflow.source.name, mlflow.source.type = LOCAL
// (+ mlflow.source.git.commit). opts may be NULL.
QLORADEF qlora_status qlora_mlflow_run_start(qlora_mlflow_run *run, const char *root,
                                             const qlora_mlflow_options *opts, qlora_error *err);
// params/<key> = value (no newline; at most 6000 characters). Logging the same value again is a
// no-op; a different value for a logged key is QLORA_ERR_ARG (params are immutable).
QLORADEF qlora_status qlora_mlflow_log_param(qlora_mlflow_run *run, const char *key, const char *value,
                                             qlora_error *err);
// Appends "<timestamp_ms> <value> <step>" to metrics/<key>; timestamp_ms 0 means now. NaN and
// ±Inf are written as nan, inf, -inf; other values as Python's repr.
QLORADEF qlora_status qlora_mlflow_log_metric(qlora_mlflow_run *run, const char *key, double value, int64_t step,
                                              int64_t timestamp_ms, qlora_error *err);
// tags/<key> = value (overwrites; at most 8000 characters).
QLORADEF qlora_status qlora_mlflow_set_tag(qlora_mlflow_run *run, const char *key, const char *value,
                                           qlora_error *err);
// Copies the file src to artifacts/<dest> (NULL: the file name of src), creating folders.
QLORADEF qlora_status qlora_mlflow_log_artifact(qlora_mlflow_run *run, const char *src, const char *dest,
                                                qlora_error *err);
// Copies the regular files under src_dir (recursively) to artifacts/<dest_dir> (NULL: artifacts/).
QLORADEF qlora_status qlora_mlflow_log_artifacts(qlora_mlflow_run *run, const char *src_dir,
                                                 const char *dest_dir, qlora_error *err);
// Marks artifacts/<artifact_path> as an MLflow Model: writes its MLmodel file with one flavor
// (flavor_kv: key, value, ..., NULL string pairs inside the flavor) and appends the model to the
// run tag mlflow.log-model.history.
QLORADEF qlora_status qlora_mlflow_log_model(qlora_mlflow_run *run, const char *artifact_path, const char *flavor,
                                             const char *const *flavor_kv, qlora_error *err);
// Registers artifacts/<artifact_path> as the next version of registered model `name`
// (root/models/<name>/meta.yaml and version-<n>/meta.yaml, status READY). *version may be NULL.
QLORADEF qlora_status qlora_mlflow_register_model(qlora_mlflow_run *run, const char *name,
                                                  const char *artifact_path, int64_t *version, qlora_error *err);
// Rewrites meta.yaml with status (FINISHED, FAILED or KILLED) and end_time = now.
QLORADEF qlora_status qlora_mlflow_run_end(qlora_mlflow_run *run, qlora_mlflow_status status, qlora_error *err);
QLORADEF void         qlora_mlflow_run_free(qlora_mlflow_run *run);

#ifdef __cplusplus
}
#endif

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
#if defined(__AVX512BF16__)
#define QLORA__AVX512BF16 1
#endif
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

// ---------------------------------------------------------------------------------------------
// 4. NF4 linear: Y = X·Wᵀ and dX += dY·W, and the dense qlora_sgemm
//
//   Dimensions in this section: M rows of X (tokens), N = w->rows (out features), K = w->cols
//   (in features). Element (n, k) of W is flat element e = n·K + k: its code is nibble e (byte
//   e/2, high nibble when e is even) and its scale is block e / blocksize.
//
//   Paths (qlora_exec.kernel):
//     REF   plain loops, one element at a time: the specification the others are tested against.
//     SIMD  the library's own kernels, with AVX-512, AVX2 or NEON inner loops (portable C in a
//           scalar build):
//             M <= 8  fused dequant-GEMV: W is streamed once and never materialized;
//             M >  8  blocked GEMM in the BLIS manner: W is dequantized while panels are packed,
//                     and a register-tile micro-kernel does the FMAs.
//     BLAS  dequantize panels of W into a buffer and multiply with cblas_sgemm
//           (QLORA_USE_OPENBLAS only, else SIMD).
//     AUTO  SIMD when a SIMD level is compiled (its GEMM matches OpenBLAS' sgemm and needs no fp32
//           copy of W); in a portable-C build, BLAS for M > 8 when built with it and its core suits
//           this CPU (qlora_cpu_info_get().blas_trusted). qlora_sgemm's AUTO uses cblas whenever
//           that core is trusted, else the own GEMM; but M <= 8 rows against a transposed B
//           (decoding: lm_head, LoRA) go to own dot products, and with AVX-512 LoRA's rank-r
//           shapes (N or K <= 64, or a transposed A of <= 64 rows) to an unpacked narrow kernel,
//           AUTO and SIMD alike.
//   With OpenMP, link OpenBLAS' OpenMP build (build.sh does): its sgemm then runs on the same
//   thread team as these kernels. The pthread build keeps a second pool whose threads spin
//   against the OpenMP threads between calls.
//   Threads (OpenMP) split outputs only: rows or columns of Y, columns of dX, tiles of C. Every
//   output element is computed by one thread in a fixed order, so the results are bit-identical
//   for any thread count.
//   The SIMD and BLAS paths allocate packing buffers per call (QLORA_ERR_NOMEM if that fails).

// g++ 12 flags its own AVX-512 intrinsics (_mm512_undefined_* is a self-initialization) with
// -Wmaybe-uninitialized and -Wuninitialized once they are inlined here; silence those for this
// section only.
#if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#if defined(QLORA__AVX512)
#define QLORA__MR 12            // micro-tile rows: 12 x 32 floats = 24 zmm accumulators
#define QLORA__NR 32
#elif defined(QLORA__AVX2) || defined(QLORA__NEON)
#define QLORA__MR 6             // 6 x 16: 12 ymm / 24 q accumulators
#define QLORA__NR 16
#else
#define QLORA__MR 4
#define QLORA__NR 16
#endif
#define QLORA__KC     256       // depth of one packed panel (the reduction is cut in KC steps)
#define QLORA__NC     512       // columns of one packed B block (a multiple of QLORA__NR)
#define QLORA__MC     1536      // rows of one packed A panel (a multiple of QLORA__MR)
#define QLORA__GEMV_M 8         // M up to this uses the fused GEMV

#if defined(__GNUC__) || defined(__clang__)
#define QLORA__FORCEINLINE static inline __attribute__((always_inline))
#define QLORA__NOINLINE __attribute__((noinline))
#elif defined(_MSC_VER)
#define QLORA__FORCEINLINE static __forceinline
#define QLORA__NOINLINE __declspec(noinline)
#else
#define QLORA__FORCEINLINE static inline
#define QLORA__NOINLINE
#endif

// Full unrolling of the short loops over the rows of X in the GEMV kernels, so their accumulators
// become registers.
#if defined(__clang__)
#define QLORA__NF4_UNROLL _Pragma("unroll")
#elif defined(__GNUC__) && __GNUC__ >= 8
#define QLORA__NF4_UNROLL _Pragma("GCC unroll 8")
#else
#define QLORA__NF4_UNROLL
#endif

static inline int64_t qlora__min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Code of flat element e.
static inline int qlora__nf4_nibble(const uint8_t *codes, int64_t e) {
    return (e & 1) ? (codes[e >> 1] & 15) : (codes[e >> 1] >> 4);
}

// fp32 scale of block b; the same two statements (no FMA) as qlora_nf4_block_scale, inlined.
static inline float qlora__nf4_scale(const qlora_nf4 *w, int64_t b) {
    if (!w->double_quant) return w->absmax[b];
    float v = w->nested_map[w->qabsmax[b]] * w->nested_absmax[b / QLORA_DQ_BLOCK];
    return v + w->nested_offset;
}

// log2 of a power-of-two blocksize (validated by the entry points).
static inline int qlora__log2i(int64_t v) {
    int s = 0;
    while (((int64_t)1 << s) < v) s++;
    return s;
}

// ---------------------------------------------------------------------------------------------
// Reference kernels: straightforward loops, one element at a time. They are the specification
// the fast paths are tested against (QLORA_KERNEL_REF selects them).

// v rounded to bf16 (nearest, ties to even), as the fp32 value it stands for. NaN stays NaN (quieted),
// ±Inf stays, and inputs below bf16's normal range become ±0, as the AVX-512 BF16 instructions take them.
static inline float qlora__bf16_round(float v) {
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u) {
        if (u & 0x007fffffu) u |= 0x00400000u;
    } else if ((u & 0x7f800000u) == 0) {
        u &= 0x80000000u;
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
    }
    u &= 0xffff0000u;
    memcpy(&v, &u, sizeof v);
    return v;
}

// The 16 bits of bf16(v) (the upper half of qlora__bf16_round(v)).
static inline uint16_t qlora__bf16_bits(float v) {
    const float r = qlora__bf16_round(v);
    uint32_t u;
    memcpy(&u, &r, sizeof u);
    return (uint16_t)(u >> 16);
}

// y (M, N) = x (M, K) · Wᵀ. bf16 = 1: QLORA_COMPUTE_BF16 for M > 8 (see qlora__nf4_dispatch): x and
// the dequantized W rounded to bf16, their exact products summed in fp32.
static void qlora__nf4_forward_ref(float *y, const float *x, const qlora_nf4 *w, int64_t M, int bf16) {
    const int64_t N = w->rows, K = w->cols, bs = w->blocksize;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.0f, s = 0.0f;
            int64_t b = -1;
            for (int64_t k = 0; k < K; k++) {
                int64_t e = n * K + k;
                if (e / bs != b) { b = e / bs; s = qlora_nf4_block_scale(w, b); }
                const float xv = x[m * K + k], wv = qlora__nf4_code[qlora__nf4_nibble(w->codes, e)] * s;
                acc += bf16 ? qlora__bf16_round(xv) * qlora__bf16_round(wv) : xv * wv;
            }
            y[m * N + n] = acc;
        }
    }
}

// QLORA_COMPUTE_BF16 (its specification): y (M, N) = X·Wᵀ with y[m][n] = Σ_b s_b · Σ_{k in b}
// bf16(code_k) · bf16(x[m][k]): the products are exact in fp32 and summed in fp32 per block b (the
// part of NF4 block b that lies in row n), then scaled by the block's fp32 scale s_b.
static void qlora__nf4_forward_bf16_ref(float *y, const float *x, const qlora_nf4 *w, int64_t M) {
    const int64_t N = w->rows, K = w->cols, bs = w->blocksize;
    for (int64_t n = 0; n < N; n++) {
        for (int64_t m = 0; m < M; m++) {
            float acc = 0.0f, part = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                const int64_t e = n * K + k;
                part += qlora__bf16_round(qlora__nf4_code[qlora__nf4_nibble(w->codes, e)]) *
                        qlora__bf16_round(x[m * K + k]);
                if ((e + 1) % bs == 0 || k == K - 1) {
                    acc += part * qlora_nf4_block_scale(w, e / bs);
                    part = 0.0f;
                }
            }
            y[m * N + n] = acc;
        }
    }
}

// dx (M, K) += dy (M, N) · W; bf16 as in qlora__nf4_forward_ref.
static void qlora__nf4_backward_ref(float *dx, const float *dy, const qlora_nf4 *w, int64_t M, int bf16) {
    const int64_t N = w->rows, K = w->cols, bs = w->blocksize;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t k = 0; k < K; k++) {
            float acc = 0.0f;
            for (int64_t n = 0; n < N; n++) {
                int64_t e = n * K + k;
                const float dv = dy[m * N + n],
                            wv = qlora__nf4_code[qlora__nf4_nibble(w->codes, e)] * qlora_nf4_block_scale(w, e / bs);
                acc += bf16 ? qlora__bf16_round(dv) * qlora__bf16_round(wv) : dv * wv;
            }
            dx[m * K + k] += acc;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dequantization of a span of W
//
// 32 consecutive codes starting at a multiple of 32 are 16 whole bytes and lie in one block
// (every valid blocksize is a multiple of 32), so they decode with one scale:
//     out[2i] = code[c[i] >> 4]·s,   out[2i+1] = code[c[i] & 15]·s,   i < 16.

#if defined(QLORA__NEON)
// 16 codes (one per byte, 0..15) -> 16 floats: byte-table lookups of the 64-byte codebook.
QLORA__FORCEINLINE void qlora__neon_lut16(float32x4_t out[4], uint8x16_t codes, const uint8x16x4_t *tab) {
    static const uint8_t rep[4][16] = { { 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3 },
                                        { 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7 },
                                        { 8, 8, 8, 8, 9, 9, 9, 9, 10, 10, 10, 10, 11, 11, 11, 11 },
                                        { 12, 12, 12, 12, 13, 13, 13, 13, 14, 14, 14, 14, 15, 15, 15, 15 } };
    static const uint8_t lane[16] = { 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3 };
    uint8x16_t c4 = vshlq_n_u8(codes, 2), ln = vld1q_u8(lane);
    for (int g = 0; g < 4; g++) {
        uint8x16_t idx = vaddq_u8(vqtbl1q_u8(c4, vld1q_u8(rep[g])), ln);  // 4·code + byte lane
        out[g] = vreinterpretq_f32_u8(vqtbl4q_u8(*tab, idx));
    }
}

QLORA__FORCEINLINE uint8x16x4_t qlora__neon_codebook(void) {
    const uint8_t *p = (const uint8_t *)qlora__nf4_code;
    uint8x16x4_t t;
    t.val[0] = vld1q_u8(p);
    t.val[1] = vld1q_u8(p + 16);
    t.val[2] = vld1q_u8(p + 32);
    t.val[3] = vld1q_u8(p + 48);
    return t;
}
#endif

// out (32) = the 32 elements whose codes are the 16 bytes c, times s.
QLORA__FORCEINLINE void qlora__nf4_decode32(float *out, const uint8_t *c, float s) {
#if defined(QLORA__AVX512)
    // vpermps looks up the 16-entry codebook held in one zmm (index bits 3..0 only, so the low
    // nibble needs no mask); vpermt2ps interleaves the even (high) and odd (low) nibble values.
    static const int32_t lo[16] = { 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23 };
    static const int32_t hi[16] = { 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31 };
    const __m512 cb = _mm512_loadu_ps(qlora__nf4_code), vs = _mm512_set1_ps(s);
    __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)c));
    __m512 e = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), cb);
    __m512 o = _mm512_permutexvar_ps(v, cb);
    _mm512_storeu_ps(out, _mm512_mul_ps(_mm512_permutex2var_ps(e, _mm512_loadu_si512(lo), o), vs));
    _mm512_storeu_ps(out + 16, _mm512_mul_ps(_mm512_permutex2var_ps(e, _mm512_loadu_si512(hi), o), vs));
#elif defined(QLORA__AVX2)
    // Two 8-entry halves of the codebook; bit 3 of the code (moved to the sign bit) picks the half.
    const __m256 cl = _mm256_loadu_ps(qlora__nf4_code), ch = _mm256_loadu_ps(qlora__nf4_code + 8);
    const __m256 vs = _mm256_set1_ps(s);
    for (int h = 0; h < 2; h++) {
        __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + 8 * h)));
        __m256i vh = _mm256_srli_epi32(v, 4);
        __m256 e = _mm256_blendv_ps(_mm256_permutevar8x32_ps(cl, vh), _mm256_permutevar8x32_ps(ch, vh),
                                    _mm256_castsi256_ps(_mm256_slli_epi32(vh, 28)));
        __m256 o = _mm256_blendv_ps(_mm256_permutevar8x32_ps(cl, v), _mm256_permutevar8x32_ps(ch, v),
                                    _mm256_castsi256_ps(_mm256_slli_epi32(v, 28)));
        __m256 a = _mm256_unpacklo_ps(e, o), b = _mm256_unpackhi_ps(e, o);  // e0 o0 e1 o1 | e4 o4 e5 o5 ...
        _mm256_storeu_ps(out + 16 * h, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x20), vs));
        _mm256_storeu_ps(out + 16 * h + 8, _mm256_mul_ps(_mm256_permute2f128_ps(a, b, 0x31), vs));
    }
#elif defined(QLORA__NEON)
    const uint8x16x4_t tab = qlora__neon_codebook();
    uint8x16_t b = vld1q_u8(c);
    uint8x16_t hi = vshrq_n_u8(b, 4), lo = vandq_u8(b, vdupq_n_u8(15));
    float32x4_t f[4];
    qlora__neon_lut16(f, vzip1q_u8(hi, lo), &tab);       // elements 0..15
    for (int g = 0; g < 4; g++) vst1q_f32(out + 4 * g, vmulq_n_f32(f[g], s));
    qlora__neon_lut16(f, vzip2q_u8(hi, lo), &tab);       // elements 16..31
    for (int g = 0; g < 4; g++) vst1q_f32(out + 16 + 4 * g, vmulq_n_f32(f[g], s));
#else
    for (int i = 0; i < 16; i++) {
        out[2 * i] = qlora__nf4_code[c[i] >> 4] * s;
        out[2 * i + 1] = qlora__nf4_code[c[i] & 15] * s;
    }
#endif
}

// out (len) = dequant(W) over flat elements [e0, e0 + len): any alignment, any blocksize.
// sh = log2(blocksize).
static void qlora__nf4_span(float *out, const qlora_nf4 *w, int64_t e0, int64_t len, int sh) {
    int64_t i = 0;
    while (i < len && ((e0 + i) & 31)) {                  // head up to a 32-element boundary
        int64_t e = e0 + i;
        out[i++] = qlora__nf4_code[qlora__nf4_nibble(w->codes, e)] * qlora__nf4_scale(w, e >> sh);
    }
    for (; i + 32 <= len; i += 32) {
        int64_t e = e0 + i;
        qlora__nf4_decode32(out + i, w->codes + (e >> 1), qlora__nf4_scale(w, e >> sh));
    }
    for (; i < len; i++) {                                 // tail
        int64_t e = e0 + i;
        out[i] = qlora__nf4_code[qlora__nf4_nibble(w->codes, e)] * qlora__nf4_scale(w, e >> sh);
    }
}

#if defined(QLORA__AVX512)
// The 16 elements whose codes are the 8 bytes c, times s, in natural order: each byte is doubled
// (bytes b0 b0 b1 b1 ...), widened to 16 lanes, and even lanes shifted right by 4 (the high nibble);
// vpermps ignores index bits above 3.
QLORA__FORCEINLINE __m512 qlora__nf4_decode16_avx512(const uint8_t *c, __m512 cb, __m512i shifts, float s) {
    __m128i b = _mm_loadl_epi64((const __m128i *)c);
    __m512i v = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(b, b)), shifts);
    return _mm512_mul_ps(_mm512_permutexvar_ps(v, cb), _mm512_set1_ps(s));
}

// dst rows 0..15 (stride ldd) = the columns of the 16 x 16 block held in r[0..15] (rows), of which
// the lanes in `mask` are stored: unpack pairs of rows, shuffle quads, then move 128-bit lanes.
QLORA__FORCEINLINE void qlora__transpose16(float *dst, int64_t ldd, __m512 r[16], __mmask16 mask) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);       // lane L: r_i[4L], r_i+1[4L], r_i[4L+1], r_i+1[4L+1]
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);   // the same for columns 4L+2, 4L+3
    }
    for (int g = 0; g < 4; g++) {                        // r[4g + c], lane L: rows 4g..4g+3 of column 4L+c
        const int b = 4 * g;
        r[b + 0] = _mm512_shuffle_ps(t[b + 0], t[b + 2], 0x44);
        r[b + 1] = _mm512_shuffle_ps(t[b + 0], t[b + 2], 0xEE);
        r[b + 2] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0x44);
        r[b + 3] = _mm512_shuffle_ps(t[b + 1], t[b + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {                        // column 4L+c = lane L of r[c], r[4+c], r[8+c], r[12+c]
        __m512 p0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44), p1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
        __m512 q0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44), q1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        _mm512_mask_storeu_ps(dst + (0 + c) * ldd, mask, _mm512_shuffle_f32x4(p0, q0, 0x88));
        _mm512_mask_storeu_ps(dst + (4 + c) * ldd, mask, _mm512_shuffle_f32x4(p0, q0, 0xDD));
        _mm512_mask_storeu_ps(dst + (8 + c) * ldd, mask, _mm512_shuffle_f32x4(p1, q1, 0x88));
        _mm512_mask_storeu_ps(dst + (12 + c) * ldd, mask, _mm512_shuffle_f32x4(p1, q1, 0xDD));
    }
}
#endif

// ---------------------------------------------------------------------------------------------
// Blocked GEMM engine: C (M, N) (+)= A (M, K) · B (K, N)
//
//   for each MC rows of A, each KC slice of the reduction:
//       pack A (MC, KC) into slivers of MR rows (k-major, zero rows past M)
//       for each NC columns of B: pack B (KC, NC) into slivers of NR columns (k-major, zero
//       columns past N), dequantizing NF4 here; then the micro-kernel runs every MR x NR tile.
//   A is dense (strided, times alpha); B is dense (strided) or NF4: B = Wᵀ (forward) or W
//   (backward). Every C element accumulates its reduction in the same order whatever the
//   tiling around it, so threads may split C freely.
//   bf16 (QLORA_COMPUTE_BF16): the packed A and B are rounded to bf16, and the micro-kernel sums
//   their exact products in fp32. With AVX-512 BF16 the packed operands are then stored as pairs
//   (k, k+1) of bf16 and qlora__ukernel_bf16 multiplies a pair per instruction lane (vdpbf16ps: twice
//   the multiply-adds of an fp32 FMA per instruction); elsewhere the fp32 micro-kernel multiplies
//   the rounded values, which gives the same products at fp32 speed.

typedef struct qlora__mm {
    int64_t          M, N, K;
    const float     *a;             // A(i, k) = alpha · a[i·a_rs + k·a_cs]
    int64_t          a_rs, a_cs;
    float            alpha;
    const float     *b;             // dense B(k, n) = b[k·b_rs + n·b_cs], or NULL when w is set
    int64_t          b_rs, b_cs;
    const qlora_nf4 *w;             // NF4 B: B(k, n) = W[n][k] when w_trans, else W[k][n]
    int              w_trans;
    float           *c;             // C(i, n) = c[i·ldc + n]
    int64_t          ldc;
    int              overwrite;     // 1: C = A·B (old C ignored), 0: C += A·B
    int              bf16;          // 1: A and B rounded to bf16 (QLORA_COMPUTE_BF16)
} qlora__mm;

#if defined(QLORA__AVX512)
// The mask of the 16 columns j0 .. j0+15 of a tile nr columns wide (the AVX-512 GEMM kernels).
QLORA__FORCEINLINE __mmask16 qlora__col_mask(int nr, int j0) {
    return (__mmask16)(nr >= j0 + 16 ? 0xFFFF : nr > j0 ? (1u << (nr - j0)) - 1 : 0);
}

// One row (c0, c1) of a 32-column tile of the packed micro-kernels (fp32 and bf16) stored to cr under
// the column masks m0, m1; add = 1 adds it to cr.
QLORA__FORCEINLINE void qlora__uk_store_row(float *cr, __m512 c0, __m512 c1, __mmask16 m0, __mmask16 m1, int add) {
    if (add) {
        c0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, cr), c0);
        c1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, cr + 16), c1);
    }
    _mm512_mask_storeu_ps(cr, m0, c0);
    _mm512_mask_storeu_ps(cr + 16, m1, c1);
}
#endif

// C (mr, nr) (+)= sum over k < kc of a (kc, MR) row k ⊗ b (kc, NR) row k. Rows >= mr and columns
// >= nr of the packed operands are padding. add = 0 stores the tile, add = 1 adds it to C.
static void qlora__ukernel(int64_t kc, const float *QLORA_RESTRICT a, const float *QLORA_RESTRICT b,
                           float *c, int64_t ldc, int mr, int nr, int add) {
#if defined(QLORA__AVX512)
#define QLORA__UK_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define QLORA__UK_FMA(i)                                         \
    {                                                            \
        __m512 ai = _mm512_set1_ps(a[i]);                        \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);              \
        c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);              \
    }
#define QLORA__UK_STORE(i) \
    if (i < mr) qlora__uk_store_row(c + (int64_t)i * ldc, c##i##0, c##i##1, m0, m1, add);
    QLORA__UK_DECL(0) QLORA__UK_DECL(1) QLORA__UK_DECL(2) QLORA__UK_DECL(3)
    QLORA__UK_DECL(4) QLORA__UK_DECL(5) QLORA__UK_DECL(6) QLORA__UK_DECL(7)
    QLORA__UK_DECL(8) QLORA__UK_DECL(9) QLORA__UK_DECL(10) QLORA__UK_DECL(11)
    for (int64_t k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        QLORA__UK_FMA(0) QLORA__UK_FMA(1) QLORA__UK_FMA(2) QLORA__UK_FMA(3)
        QLORA__UK_FMA(4) QLORA__UK_FMA(5) QLORA__UK_FMA(6) QLORA__UK_FMA(7)
        QLORA__UK_FMA(8) QLORA__UK_FMA(9) QLORA__UK_FMA(10) QLORA__UK_FMA(11)
        a += 12;
        b += 32;
    }
    const __mmask16 m0 = qlora__col_mask(nr, 0), m1 = qlora__col_mask(nr, 16);
    QLORA__UK_STORE(0) QLORA__UK_STORE(1) QLORA__UK_STORE(2) QLORA__UK_STORE(3)
    QLORA__UK_STORE(4) QLORA__UK_STORE(5) QLORA__UK_STORE(6) QLORA__UK_STORE(7)
    QLORA__UK_STORE(8) QLORA__UK_STORE(9) QLORA__UK_STORE(10) QLORA__UK_STORE(11)
#elif defined(QLORA__AVX2)
#define QLORA__UK_DECL(i) __m256 c##i##0 = _mm256_setzero_ps(), c##i##1 = _mm256_setzero_ps();
#define QLORA__UK_FMA(i)                                         \
    {                                                            \
        __m256 ai = _mm256_broadcast_ss(a + i);                  \
        c##i##0 = _mm256_fmadd_ps(ai, b0, c##i##0);              \
        c##i##1 = _mm256_fmadd_ps(ai, b1, c##i##1);              \
    }
#define QLORA__UK_STORE(i)                                                            \
    if (i < mr) {                                                                     \
        float *cr = c + (int64_t)i * ldc;                                             \
        if (add) {                                                                    \
            c##i##0 = _mm256_add_ps(_mm256_maskload_ps(cr, m0), c##i##0);             \
            c##i##1 = _mm256_add_ps(_mm256_maskload_ps(cr + 8, m1), c##i##1);         \
        }                                                                             \
        _mm256_maskstore_ps(cr, m0, c##i##0);                                         \
        _mm256_maskstore_ps(cr + 8, m1, c##i##1);                                     \
    }
    QLORA__UK_DECL(0) QLORA__UK_DECL(1) QLORA__UK_DECL(2)
    QLORA__UK_DECL(3) QLORA__UK_DECL(4) QLORA__UK_DECL(5)
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        QLORA__UK_FMA(0) QLORA__UK_FMA(1) QLORA__UK_FMA(2)
        QLORA__UK_FMA(3) QLORA__UK_FMA(4) QLORA__UK_FMA(5)
        a += 6;
        b += 16;
    }
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), lane);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), lane);
    QLORA__UK_STORE(0) QLORA__UK_STORE(1) QLORA__UK_STORE(2)
    QLORA__UK_STORE(3) QLORA__UK_STORE(4) QLORA__UK_STORE(5)
#elif defined(QLORA__NEON)
#define QLORA__UK_DECL(i)                                                               \
    float32x4_t c##i##0 = vdupq_n_f32(0.0f), c##i##1 = c##i##0, c##i##2 = c##i##0,      \
                c##i##3 = c##i##0;
#define QLORA__UK_FMA4(i, av, l)                                 \
    c##i##0 = vfmaq_laneq_f32(c##i##0, b0, av, l);               \
    c##i##1 = vfmaq_laneq_f32(c##i##1, b1, av, l);               \
    c##i##2 = vfmaq_laneq_f32(c##i##2, b2, av, l);               \
    c##i##3 = vfmaq_laneq_f32(c##i##3, b3, av, l);
#define QLORA__UK_FMA2(i, av, l)                                 \
    c##i##0 = vfmaq_lane_f32(c##i##0, b0, av, l);                \
    c##i##1 = vfmaq_lane_f32(c##i##1, b1, av, l);                \
    c##i##2 = vfmaq_lane_f32(c##i##2, b2, av, l);                \
    c##i##3 = vfmaq_lane_f32(c##i##3, b3, av, l);
#define QLORA__UK_STORE(i)                                                             \
    if (i < mr) {                                                                      \
        float *cr = c + (int64_t)i * ldc, t[16];                                       \
        vst1q_f32(t, c##i##0);                                                         \
        vst1q_f32(t + 4, c##i##1);                                                     \
        vst1q_f32(t + 8, c##i##2);                                                     \
        vst1q_f32(t + 12, c##i##3);                                                    \
        for (int j = 0; j < nr; j++) cr[j] = add ? cr[j] + t[j] : t[j];                \
    }
    QLORA__UK_DECL(0) QLORA__UK_DECL(1) QLORA__UK_DECL(2)
    QLORA__UK_DECL(3) QLORA__UK_DECL(4) QLORA__UK_DECL(5)
    for (int64_t k = 0; k < kc; k++) {
        float32x4_t b0 = vld1q_f32(b), b1 = vld1q_f32(b + 4), b2 = vld1q_f32(b + 8), b3 = vld1q_f32(b + 12);
        float32x4_t a03 = vld1q_f32(a);
        float32x2_t a45 = vld1_f32(a + 4);
        QLORA__UK_FMA4(0, a03, 0) QLORA__UK_FMA4(1, a03, 1) QLORA__UK_FMA4(2, a03, 2)
        QLORA__UK_FMA4(3, a03, 3) QLORA__UK_FMA2(4, a45, 0) QLORA__UK_FMA2(5, a45, 1)
        a += 6;
        b += 16;
    }
    QLORA__UK_STORE(0) QLORA__UK_STORE(1) QLORA__UK_STORE(2)
    QLORA__UK_STORE(3) QLORA__UK_STORE(4) QLORA__UK_STORE(5)
#undef QLORA__UK_FMA4
#undef QLORA__UK_FMA2
#else
    float acc[QLORA__MR][QLORA__NR];
    for (int i = 0; i < QLORA__MR; i++)
        for (int j = 0; j < QLORA__NR; j++) acc[i][j] = 0.0f;
    for (int64_t k = 0; k < kc; k++) {
        for (int i = 0; i < QLORA__MR; i++) {
            float ai = a[i];
            for (int j = 0; j < QLORA__NR; j++) acc[i][j] += ai * b[j];
        }
        a += QLORA__MR;
        b += QLORA__NR;
    }
    for (int i = 0; i < mr; i++) {
        float *cr = c + (int64_t)i * ldc;
        for (int j = 0; j < nr; j++) cr[j] = add ? cr[j] + acc[i][j] : acc[i][j];
    }
#endif
#undef QLORA__UK_DECL
#undef QLORA__UK_FMA
#undef QLORA__UK_STORE
}

#if defined(QLORA__AVX512BF16)
// C (mr, nr) (+)= sum over pairs p < kc2 of a (kc2, MR) pair row p ⊗ b (kc2, NR) pair row p, each
// element a uint32 holding bf16(x[2p]) in its low half and bf16(x[2p+1]) in its high half (see
// qlora__bf16_pairs). Rows >= mr and columns >= nr are padding; add as in qlora__ukernel. Its scalar
// twin: qlora__ukernel on the rounded fp32 values (the build without AVX-512 BF16 runs that).
static void qlora__ukernel_bf16(int64_t kc2, const uint32_t *QLORA_RESTRICT a, const uint32_t *QLORA_RESTRICT b,
                                float *c, int64_t ldc, int mr, int nr, int add) {
#define QLORA__UKB_DECL(i) __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = _mm512_setzero_ps();
#define QLORA__UKB_DOT(i)                                                        \
    {                                                                            \
        const __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i]);              \
        c##i##0 = _mm512_dpbf16_ps(c##i##0, ai, b0);                             \
        c##i##1 = _mm512_dpbf16_ps(c##i##1, ai, b1);                             \
    }
#define QLORA__UKB_STORE(i) \
    if (i < mr) qlora__uk_store_row(c + (int64_t)i * ldc, c##i##0, c##i##1, m0, m1, add);
    QLORA__UKB_DECL(0) QLORA__UKB_DECL(1) QLORA__UKB_DECL(2) QLORA__UKB_DECL(3)
    QLORA__UKB_DECL(4) QLORA__UKB_DECL(5) QLORA__UKB_DECL(6) QLORA__UKB_DECL(7)
    QLORA__UKB_DECL(8) QLORA__UKB_DECL(9) QLORA__UKB_DECL(10) QLORA__UKB_DECL(11)
    for (int64_t p = 0; p < kc2; p++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
        QLORA__UKB_DOT(0) QLORA__UKB_DOT(1) QLORA__UKB_DOT(2) QLORA__UKB_DOT(3)
        QLORA__UKB_DOT(4) QLORA__UKB_DOT(5) QLORA__UKB_DOT(6) QLORA__UKB_DOT(7)
        QLORA__UKB_DOT(8) QLORA__UKB_DOT(9) QLORA__UKB_DOT(10) QLORA__UKB_DOT(11)
        a += 12;
        b += 32;
    }
    const __mmask16 m0 = qlora__col_mask(nr, 0), m1 = qlora__col_mask(nr, 16);
    QLORA__UKB_STORE(0) QLORA__UKB_STORE(1) QLORA__UKB_STORE(2) QLORA__UKB_STORE(3)
    QLORA__UKB_STORE(4) QLORA__UKB_STORE(5) QLORA__UKB_STORE(6) QLORA__UKB_STORE(7)
    QLORA__UKB_STORE(8) QLORA__UKB_STORE(9) QLORA__UKB_STORE(10) QLORA__UKB_STORE(11)
#undef QLORA__UKB_DECL
#undef QLORA__UKB_DOT
#undef QLORA__UKB_STORE
}

// dst = the packed slivers src (nsl slivers of (kc, L) floats) as bf16 pairs: nsl slivers of
// (kc2 = ceil(kc/2), L) uint32, dst[s][p][l] = bf16(src[s][2p][l]) | bf16(src[s][2p+1][l]) << 16,
// the high half 0 past kc. The rounding is qlora__bf16_round's (vcvtneps2bf16). L is 12 or 32.
static void qlora__bf16_pairs(uint32_t *dst, const float *src, int64_t nsl, int64_t kc, int L) {
    const int64_t kc2 = (kc + 1) / 2;
    for (int64_t s = 0; s < nsl; s++)
        for (int64_t p = 0; p < kc2; p++) {
            const float *r0 = src + (s * kc + 2 * p) * L;
            const int odd = 2 * p + 1 < kc;
            uint32_t *d = dst + (s * kc2 + p) * L;
            for (int l = 0; l < L; l += 16) {
                const __mmask16 m = (__mmask16)(L - l >= 16 ? 0xFFFF : (1u << (L - l)) - 1);
                const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r0 + l)));
                const __m512i hi = odd ? _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, r0 + L + l)))
                                       : _mm512_setzero_si512();
                _mm512_mask_storeu_epi32(d + l, m, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
            }
        }
}

// ap16 = A rows [i0, i0+mc) x reduction [k0, k0+kc), alpha applied, as the bf16 pairs of MR-row
// slivers (the layout qlora__bf16_pairs gives qlora__pack_a's output) in one pass, for a row-major A
// (a_cs = 1): a pair is two neighbours in a row of A, so 32 floats of a row round to one vector of 16
// pairs (vcvtne2ps2bf16), and 16 rows of those transpose like floats.
static void qlora__pack_a_bf16(uint32_t *ap16, const qlora__mm *p, int64_t i0, int64_t mc, int64_t k0, int64_t kc) {
    const int64_t kc2 = (kc + 1) / 2;
    const __m512 al = _mm512_set1_ps(p->alpha);
    for (int64_t s = 0; s * QLORA__MR < mc; s++) {
        uint32_t *dst = ap16 + s * kc2 * QLORA__MR;
        const int64_t rows = qlora__min64(QLORA__MR, mc - s * QLORA__MR);
        const float *base = p->a + (i0 + s * QLORA__MR) * p->a_rs + k0;
        int64_t k = 0;
        for (; k + 32 <= kc; k += 32) {
            __m512 r[16];
            for (int i = 0; i < 16; i++) {
                if (i >= rows) {
                    r[i] = _mm512_setzero_ps();
                    continue;
                }
                const float *src = base + i * p->a_rs + k;
                const __m512bh b = _mm512_cvtne2ps_pbh(_mm512_mul_ps(al, _mm512_loadu_ps(src + 16)),
                                                       _mm512_mul_ps(al, _mm512_loadu_ps(src)));
                r[i] = _mm512_castsi512_ps((__m512i)b);
            }
            qlora__transpose16((float *)(dst + (k / 2) * QLORA__MR), QLORA__MR, r, (__mmask16)((1u << QLORA__MR) - 1));
        }
        for (int64_t q = k / 2; q < kc2; q++)
            for (int64_t r = 0; r < QLORA__MR; r++) {
                const float *src = base + r * p->a_rs;
                const int64_t k_even = 2 * q;
                uint32_t v = 0;
                if (r < rows) {
                    v = qlora__bf16_bits(p->alpha * src[k_even]);
                    if (k_even + 1 < kc) v |= (uint32_t)qlora__bf16_bits(p->alpha * src[k_even + 1]) << 16;
                }
                dst[q * QLORA__MR + r] = v;
            }
    }
}
#else
// v (n) rounded to bf16 in place (the packed operands of a bf16 GEMM without AVX-512 BF16).
static void qlora__bf16_round_span(float *v, int64_t n) {
    for (int64_t i = 0; i < n; i++) v[i] = qlora__bf16_round(v[i]);
}
#endif

// ap = A rows [i0, i0+mc) x reduction [k0, k0+kc), alpha applied, as MR-row slivers:
// ap[s·kc·MR + k·MR + r] = A(i0 + s·MR + r, k0 + k), rows past mc zero.
static void qlora__pack_a(float *ap, const qlora__mm *p, int64_t i0, int64_t mc, int64_t k0, int64_t kc) {
    for (int64_t s = 0; s * QLORA__MR < mc; s++) {
        float *dst = ap + s * kc * QLORA__MR;
        const int64_t rows = qlora__min64(QLORA__MR, mc - s * QLORA__MR);
        const float *base = p->a + (i0 + s * QLORA__MR) * p->a_rs + k0 * p->a_cs;
        if (p->a_cs == 1) {
            // Rows are contiguous in k: a transpose (16 x 16 blocks in registers with AVX-512).
            int64_t k = 0;
#if defined(QLORA__AVX512)
            const __m512 al = _mm512_set1_ps(p->alpha);
            for (; k + 16 <= kc; k += 16) {
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = i < rows ? _mm512_mul_ps(al, _mm512_loadu_ps(base + i * p->a_rs + k)) : _mm512_setzero_ps();
                qlora__transpose16(dst + k * QLORA__MR, QLORA__MR, r, (__mmask16)((1u << QLORA__MR) - 1));
            }
#endif
            for (int64_t r = 0; r < rows; r++) {
                const float *src = base + r * p->a_rs;
                for (int64_t kk = k; kk < kc; kk++) dst[kk * QLORA__MR + r] = p->alpha * src[kk];
            }
            for (int64_t r = rows; r < QLORA__MR; r++)
                for (int64_t kk = k; kk < kc; kk++) dst[kk * QLORA__MR + r] = 0.0f;
            continue;
        }
        for (int64_t k = 0; k < kc; k++) {                 // rows contiguous in i (a transposed A)
            const float *src = base + k * p->a_cs;
            for (int64_t r = 0; r < rows; r++) dst[k * QLORA__MR + r] = p->alpha * src[r * p->a_rs];
        }
        for (int64_t r = rows; r < QLORA__MR; r++)
            for (int64_t k = 0; k < kc; k++) dst[k * QLORA__MR + r] = 0.0f;
    }
}

// bp = B reduction [k0, k0+kc) x columns [j0, j0+nc) as NR-column slivers:
// bp[s·kc·NR + k·NR + j] = B(k0 + k, j0 + s·NR + j), columns past nc zero.
// tmp holds QLORA__NR·QLORA__KC floats.
static void qlora__pack_b(float *bp, float *tmp, const qlora__mm *p, int64_t k0, int64_t kc, int64_t j0,
                          int64_t nc) {
    const int64_t nsl = (nc + QLORA__NR - 1) / QLORA__NR;
    if (p->w && !p->w_trans) {
        // B(k, n) = W[k][n]: each sliver row is 32 (or 16) consecutive elements of W row k0+k.
        const int64_t ld = p->w->cols;
        const int sh = qlora__log2i(p->w->blocksize);
        for (int64_t s = 0; s < nsl; s++) {
            float *dst = bp + s * kc * QLORA__NR;
            const int64_t cols = qlora__min64(QLORA__NR, nc - s * QLORA__NR);
            for (int64_t k = 0; k < kc; k++) {
                qlora__nf4_span(dst + k * QLORA__NR, p->w, (k0 + k) * ld + j0 + s * QLORA__NR, cols, sh);
                for (int64_t j = cols; j < QLORA__NR; j++) dst[k * QLORA__NR + j] = 0.0f;
            }
        }
        return;
    }
    for (int64_t s = 0; s < nsl; s++) {
        float *dst = bp + s * kc * QLORA__NR;
        const int64_t n0 = j0 + s * QLORA__NR, cols = qlora__min64(QLORA__NR, nc - s * QLORA__NR);
        if (p->w) {
            // B(k, n) = W[n][k]: sliver row k is element k of W rows n0 .. n0+NR-1.
            const int64_t ld = p->w->cols;
            const int sh = qlora__log2i(p->w->blocksize);
            int64_t k = 0;
#if defined(QLORA__AVX512)
            // 16 rows x 16 elements: decode each row's 8 code bytes into a register, transpose in
            // registers. Needs every 16-element piece to start on a byte and block boundary.
            if (ld % 16 == 0 && k0 % 16 == 0) {
                const __m512 cb = _mm512_loadu_ps(qlora__nf4_code);
                const __m512i shifts = _mm512_set_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
                for (; k + 16 <= kc; k += 16)
                    for (int h = 0; h < QLORA__NR / 16; h++) {
                        __m512 r[16];
                        for (int i = 0; i < 16; i++) {
                            const int64_t j = h * 16 + i, e = (n0 + j) * ld + k0 + k;
                            r[i] = j < cols ? qlora__nf4_decode16_avx512(p->w->codes + (e >> 1), cb, shifts,
                                                                         qlora__nf4_scale(p->w, e >> sh))
                                            : _mm512_setzero_ps();
                        }
                        qlora__transpose16(dst + k * QLORA__NR + h * 16, QLORA__NR, r, 0xFFFF);
                    }
            }
#endif
            if (k < kc) {
                // Generic: dequantize the rest of each row into tmp (NR, kc - k), then transpose.
                const int64_t len = kc - k;
                for (int64_t j = 0; j < cols; j++) qlora__nf4_span(tmp + j * len, p->w, (n0 + j) * ld + k0 + k, len, sh);
                for (int64_t j = cols; j < QLORA__NR; j++) memset(tmp + j * len, 0, (size_t)len * sizeof(float));
                for (int64_t kk = 0; kk < len; kk++)
                    for (int64_t j = 0; j < QLORA__NR; j++) dst[(k + kk) * QLORA__NR + j] = tmp[j * len + kk];
            }
            continue;
        }
        if (p->b_cs == 1) {
            for (int64_t k = 0; k < kc; k++)
                memcpy(dst + k * QLORA__NR, p->b + (k0 + k) * p->b_rs + n0, (size_t)cols * sizeof(float));
        } else {
            // Columns are contiguous in k (b_rs = 1): a transpose, in registers with AVX-512.
            int64_t k = 0;
#if defined(QLORA__AVX512)
            if (p->b_rs == 1)
                for (; k + 16 <= kc; k += 16)
                    for (int h = 0; h < QLORA__NR / 16; h++) {
                        __m512 r[16];
                        for (int i = 0; i < 16; i++)
                            r[i] = h * 16 + i < cols ? _mm512_loadu_ps(p->b + (n0 + h * 16 + i) * p->b_cs + k0 + k)
                                                     : _mm512_setzero_ps();
                        qlora__transpose16(dst + k * QLORA__NR + h * 16, QLORA__NR, r, 0xFFFF);
                    }
#endif
            for (int64_t j = 0; j < cols; j++) {
                const float *src = p->b + (n0 + j) * p->b_cs + k0 * p->b_rs;
                for (int64_t kk = k; kk < kc; kk++) dst[kk * QLORA__NR + j] = src[kk * p->b_rs];
            }
        }
        if (cols < QLORA__NR)
            for (int64_t k = 0; k < kc; k++)
                for (int64_t j = cols; j < QLORA__NR; j++) dst[k * QLORA__NR + j] = 0.0f;
    }
}

// One thread's share: a tile of C (rows in MR units, columns in NR units) chosen from tid, nt.
// ap16 and bp16 hold the bf16 pairs of ap and bp (p->bf16 with AVX-512 BF16 only).
static void qlora__mm_thread(const qlora__mm *p, float *ap, float *bp, float *tmp, uint32_t *ap16, uint32_t *bp16,
                             int tid, int nt) {
    const int64_t M = p->M, N = p->N, K = p->K;
    const int64_t nsn = (N + QLORA__NR - 1) / QLORA__NR, nsm = (M + QLORA__MR - 1) / QLORA__MR;
    // Grid: columns first (each column range packs its own part of B), rows when columns run out.
    int64_t tn = nt < nsn ? nt : nsn, tm = nt / tn;
    if (tm > nsm) tm = nsm;
    if (tid >= tn * tm) return;
    const int64_t tj = tid % tn, ti = tid / tn;
    const int64_t j_begin = nsn * tj / tn * QLORA__NR, j_end = qlora__min64(N, nsn * (tj + 1) / tn * QLORA__NR);
    const int64_t i_begin = nsm * ti / tm * QLORA__MR, i_end = qlora__min64(M, nsm * (ti + 1) / tm * QLORA__MR);
    for (int64_t ic = i_begin; ic < i_end; ic += QLORA__MC) {
        const int64_t mc = qlora__min64(QLORA__MC, i_end - ic);
        for (int64_t pc = 0; pc < K; pc += QLORA__KC) {
            const int64_t kc = qlora__min64(QLORA__KC, K - pc);
            const int add = !(p->overwrite && pc == 0);
            const int64_t nsa = (mc + QLORA__MR - 1) / QLORA__MR;
#if defined(QLORA__AVX512BF16)
            if (p->bf16 && p->a_cs == 1) {
                qlora__pack_a_bf16(ap16, p, ic, mc, pc, kc);
            } else {
                qlora__pack_a(ap, p, ic, mc, pc, kc);
                if (p->bf16) qlora__bf16_pairs(ap16, ap, nsa, kc, QLORA__MR);
            }
#else
            qlora__pack_a(ap, p, ic, mc, pc, kc);
            if (p->bf16) qlora__bf16_round_span(ap, nsa * QLORA__MR * kc);
            (void)ap16;
            (void)bp16;
#endif
            for (int64_t jc = j_begin; jc < j_end; jc += QLORA__NC) {
                const int64_t nc = qlora__min64(QLORA__NC, j_end - jc), nsb = (nc + QLORA__NR - 1) / QLORA__NR;
                qlora__pack_b(bp, tmp, p, pc, kc, jc, nc);
#if defined(QLORA__AVX512BF16)
                if (p->bf16) {
                    const int64_t kc2 = (kc + 1) / 2;
                    qlora__bf16_pairs(bp16, bp, nsb, kc, QLORA__NR);
                    for (int64_t ir = 0; ir < mc; ir += QLORA__MR)
                        for (int64_t jr = 0; jr < nc; jr += QLORA__NR)
                            qlora__ukernel_bf16(kc2, ap16 + ir * kc2, bp16 + jr * kc2, p->c + (ic + ir) * p->ldc + jc + jr,
                                                p->ldc, (int)qlora__min64(QLORA__MR, mc - ir),
                                                (int)qlora__min64(QLORA__NR, nc - jr), add);
                    continue;
                }
#else
                if (p->bf16) qlora__bf16_round_span(bp, nsb * QLORA__NR * kc);
#endif
                for (int64_t ir = 0; ir < mc; ir += QLORA__MR)
                    for (int64_t jr = 0; jr < nc; jr += QLORA__NR)
                        qlora__ukernel(kc, ap + ir * kc, bp + jr * kc, p->c + (ic + ir) * p->ldc + jc + jr, p->ldc,
                                       (int)qlora__min64(QLORA__MR, mc - ir), (int)qlora__min64(QLORA__NR, nc - jr), add);
            }
        }
    }
}

// Runs the GEMM on all OpenMP threads. Returns 0 when the packing buffers cannot be allocated.
static int qlora__mm_run(const qlora__mm *p) {
    const int64_t M = p->M, N = p->N, K = p->K;
    if (M <= 0 || N <= 0) return 1;
    if (K == 0) {
        if (p->overwrite)
            for (int64_t i = 0; i < M; i++) memset(p->c + i * p->ldc, 0, (size_t)N * sizeof(float));
        return 1;
    }
    int nt = 1;
#ifdef _OPENMP
    nt = omp_get_max_threads();
    if ((double)M * (double)N * (double)K < 262144.0) nt = 1;   // too small to pay for a thread team
#endif
    // Per-thread buffers, each rounded to 16 floats (64 bytes).
    const int64_t kc = qlora__min64(QLORA__KC, K);
    const int64_t mc = (qlora__min64(QLORA__MC, M) + QLORA__MR - 1) / QLORA__MR * QLORA__MR;
    const int64_t nc = (qlora__min64(QLORA__NC, N) + QLORA__NR - 1) / QLORA__NR * QLORA__NR;
    const int64_t na = (mc * kc + 15) / 16 * 16, nb = (kc * nc + 15) / 16 * 16;
    const int64_t ntmp = (int64_t)QLORA__NR * QLORA__KC;
    // bf16 pairs of the packed A and B (uint32 each): half as many elements, rounded up to 16
#if defined(QLORA__AVX512BF16)
    const int64_t kc2 = (kc + 1) / 2;
    const int64_t na16 = p->bf16 ? (mc * kc2 + 15) / 16 * 16 : 0, nb16 = p->bf16 ? (kc2 * nc + 15) / 16 * 16 : 0;
#else
    const int64_t na16 = 0, nb16 = 0;
#endif
    const int64_t per = na + nb + ntmp + na16 + nb16;
    float *buf = (float *)qlora__alloc(((int64_t)nt * per + 16) * (int64_t)sizeof(float));
    if (!buf) return 0;
    float *base = (float *)(((uintptr_t)buf + 63) & ~(uintptr_t)63);
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
#endif
    {
        int tid = 0, team = 1;
#ifdef _OPENMP
        tid = omp_get_thread_num();
        team = omp_get_num_threads();
#endif
        float *mine = base + (int64_t)tid * per;
        float *pairs = mine + na + nb + ntmp;
        qlora__mm_thread(p, mine, mine + na, mine + na + nb, (uint32_t *)pairs, (uint32_t *)(pairs + na16), tid, team);
    }
    QLORA_FREE(buf);
    return 1;
}

// ---------------------------------------------------------------------------------------------
// Fused dequant-GEMV for small M (M <= QLORA__GEMV_M): W is read once, straight from its codes.
//
// AVX-512 and AVX2 ("G8" kernels; K must be a multiple of the group, 8 x the L lanes of a vector:
// 128 or 64 elements): one vector load holds the codes of a group; dword lane j holds the bytes of
// elements 8j..8j+7, so shifting it right by 4t brings the nibble of element 8j + (t^1) into the
// low index bits, and one lookup (vpermps; AVX2: two 8-entry halves and a blend) decodes L of them.
// Rather than interleaving the eight results, x is permuted once per call to match:
//     xs[g + L·t + j] = x[g + 8j + (t^1)]      for each group g, t < 8, j < L,
// and backward accumulates into dx permuted the same way, then permutes it back. A group lies in
// at most 4 blocks (blocksize >= 32), so one vector holds the scales of its L lanes.
// Other ISAs (K % blocksize == 0) decode 32 elements at a time in natural order.

#if defined(QLORA__AVX512)
#define QLORA__G8_LANES 16
#elif defined(QLORA__AVX2)
#define QLORA__G8_LANES 8
#else
#define QLORA__G8_LANES 0
#endif

// How far ahead (bytes of codes) the AVX-512 GEMV prefetches W: the stream of one core alone does
// not keep enough reads in flight to run at the speed the kernel decodes.
#ifndef QLORA__GEMV_PF
#define QLORA__GEMV_PF 2048
#endif

#if QLORA__G8_LANES
#define QLORA__GEMV_GROUP (8 * QLORA__G8_LANES)

// dst (len) = src (len) in G8 order; len is a multiple of the group.
static void qlora__g8_permute(float *dst, const float *src, int64_t len) {
    for (int64_t g = 0; g < len; g += QLORA__GEMV_GROUP)
        for (int t = 0; t < 8; t++)
            for (int j = 0; j < QLORA__G8_LANES; j++) dst[g + QLORA__G8_LANES * t + j] = src[g + 8 * j + (t ^ 1)];
}

// dst (len) = src (len) back from G8 order.
static void qlora__g8_unpermute(float *dst, const float *src, int64_t len) {
    for (int64_t g = 0; g < len; g += QLORA__GEMV_GROUP)
        for (int t = 0; t < 8; t++)
            for (int j = 0; j < QLORA__G8_LANES; j++) dst[g + 8 * j + (t ^ 1)] = src[g + QLORA__G8_LANES * t + j];
}
#else
#define QLORA__GEMV_GROUP 32
#endif

#if QLORA__G8_LANES
// The block scales of one DQ block of a weight (QLORA_DQ_BLOCK blocks), by their 8-bit code:
//     v[q] = nested_map[q] · nested_absmax[d] + nested_offset      (qlora__nf4_scale's two roundings)
// so that the scale of a block of DQ block d is one lookup, v[qabsmax[b]]. The GEMV kernels keep one on
// their stack (d = -1: empty) and refill it when a group lies in another DQ block (a group never spans
// two: it holds at most 4 blocks, a DQ block 256, both aligned).
typedef struct qlora__scale_tab {
    int64_t d;
    float   v[256];
} qlora__scale_tab;

static QLORA__NOINLINE void qlora__scale_tab_fill(const qlora_nf4 *w, qlora__scale_tab *t, int64_t d) {
    const float a = w->nested_absmax[d], off = w->nested_offset;
    // a multiply, then an add: no FMA, the roundings of qlora__nf4_scale
#if defined(QLORA__AVX512)
    for (int q = 0; q < 256; q += 16)
        _mm512_storeu_ps(t->v + q, _mm512_add_ps(_mm512_mul_ps(_mm512_loadu_ps(w->nested_map + q), _mm512_set1_ps(a)),
                                                 _mm512_set1_ps(off)));
#else
    for (int q = 0; q < 256; q += 8)
        _mm256_storeu_ps(t->v + q, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(w->nested_map + q), _mm256_set1_ps(a)),
                                                 _mm256_set1_ps(off)));
#endif
    t->d = d;
}

// The 8-bit scale codes of the group starting at flat element e of a DQ blocksize-64 weight, with t made the
// table of the group's DQ block: the scale of the group's k-th block is t->v[codes[k]].
QLORA__FORCEINLINE const uint8_t *qlora__dq64_codes(const qlora_nf4 *w, qlora__scale_tab *t, int64_t e) {
    const uint64_t b = (uint64_t)e >> 6;
    if ((int64_t)(b / QLORA_DQ_BLOCK) != t->d) qlora__scale_tab_fill(w, t, (int64_t)(b / QLORA_DQ_BLOCK));
    return w->qabsmax + b;
}
#endif

// 1 when W is double-quantized with blocksize 64, QLoRA's format. The GEMV kernels take it as a
// compile-time constant (dq64) and keep a copy for it, whose group scales (AVX-512, AVX2) are plain
// lookups in a qlora__scale_tab: in that copy the M = 1 bf16 GEMV runs about 1.25x faster from L2 than
// with qlora__nf4_scale and the blocksize tests in every group.
static int qlora__gemv_dq64(const qlora_nf4 *w) { return w->double_quant && w->blocksize == 64; }

#if defined(QLORA__AVX512)
// Scales of the 16 lanes of the group starting at flat element e (lane j: elements e+8j..e+8j+7);
// t: the kernel's table, used when dq64 (see qlora__gemv_dq64).
QLORA__FORCEINLINE __m512 qlora__nf4_group_scales(const qlora_nf4 *w, qlora__scale_tab *t, int64_t e, int sh,
                                                  const int dq64) {
    if (dq64) {   // the group holds two blocks
        const uint8_t *q = qlora__dq64_codes(w, t, e);
        return _mm512_insertf32x8(_mm512_set1_ps(t->v[q[0]]), _mm256_set1_ps(t->v[q[1]]), 1);
    }
    const int64_t b = e >> sh;
    if (sh >= 7) return _mm512_set1_ps(qlora__nf4_scale(w, b));
    if (sh == 6)
        return _mm512_insertf32x8(_mm512_set1_ps(qlora__nf4_scale(w, b)), _mm256_set1_ps(qlora__nf4_scale(w, b + 1)), 1);
    const __m128 s4 = _mm_setr_ps(qlora__nf4_scale(w, b), qlora__nf4_scale(w, b + 1), qlora__nf4_scale(w, b + 2),
                                  qlora__nf4_scale(w, b + 3));
    return _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                                 _mm512_castps128_ps512(s4));
}
#elif defined(QLORA__AVX2)
// Scales of the 8 lanes of the group starting at flat element e (lane j: elements e+8j..e+8j+7);
// t: the kernel's table, used when dq64 (see qlora__gemv_dq64).
QLORA__FORCEINLINE __m256 qlora__nf4_group_scales(const qlora_nf4 *w, qlora__scale_tab *t, int64_t e, int sh,
                                                  const int dq64) {
    if (dq64) return _mm256_set1_ps(t->v[qlora__dq64_codes(w, t, e)[0]]);   // the group is one block
    const int64_t b = e >> sh;
    if (sh >= 6) return _mm256_set1_ps(qlora__nf4_scale(w, b));
    return _mm256_insertf128_ps(_mm256_set1_ps(qlora__nf4_scale(w, b)), _mm_set1_ps(qlora__nf4_scale(w, b + 1)), 1);
}

// Codebook lookup of the low 4 bits of each lane: two 8-entry halves, bit 3 (moved to the sign
// bit) picks one.
QLORA__FORCEINLINE __m256 qlora__nf4_lut8(__m256i idx, __m256 lo, __m256 hi) {
    return _mm256_blendv_ps(_mm256_permutevar8x32_ps(lo, idx), _mm256_permutevar8x32_ps(hi, idx),
                            _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// Sum of the 8 lanes.
QLORA__FORCEINLINE float qlora__hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

// y[m][n] for rows n in [n0, n1): xs (MM, K) is x (G8 order with AVX-512 / AVX2); code (16) is the
// codebook (qlora__nf4_code, or its bf16 rounding for QLORA_COMPUTE_BF16 without bf16 instructions).
// MM is a compile-time constant after inlining, so the accumulators stay in registers.
QLORA__FORCEINLINE void qlora__gemv_fwd_rows(float *y, const float *xs, const qlora_nf4 *w, const float *code,
                                              const int MM, int64_t n0, int64_t n1, const int dq64) {
    const int64_t N = w->rows, K = w->cols;
    (void)dq64;   // used by the AVX-512 / AVX2 group scales
#if defined(QLORA__AVX512)
    const int sh = qlora__log2i(w->blocksize);
    qlora__scale_tab tab;
    tab.d = -1;
    const __m512 cb = _mm512_loadu_ps(code);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *cr = w->codes + n * (K / 2);
        __m512 tot[QLORA__GEMV_M];
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++) tot[m] = _mm512_setzero_ps();
        for (int64_t g = 0; g < K; g += 128) {
            // Σ x·code per lane over the group (two chains), then one multiply by the lane scales.
            const __m512i v = _mm512_loadu_si512(cr + g / 2);
            _mm_prefetch((const char *)(cr + g / 2) + QLORA__GEMV_PF, _MM_HINT_T0);
            __m512 a0[QLORA__GEMV_M], a1[QLORA__GEMV_M];
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++) a0[m] = a1[m] = _mm512_setzero_ps();
            QLORA__NF4_UNROLL
            for (int t = 0; t < 8; t += 2) {
                const __m512 p0 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * t), cb);
                const __m512 p1 = _mm512_permutexvar_ps(_mm512_srli_epi32(v, 4 * t + 4), cb);
                QLORA__NF4_UNROLL
                for (int m = 0; m < MM; m++) {
                    const float *xm = xs + m * K + g + 16 * t;
                    a0[m] = _mm512_fmadd_ps(p0, _mm512_loadu_ps(xm), a0[m]);
                    a1[m] = _mm512_fmadd_ps(p1, _mm512_loadu_ps(xm + 16), a1[m]);
                }
            }
            const __m512 sv = qlora__nf4_group_scales(w, &tab, n * K + g, sh, dq64);
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++) tot[m] = _mm512_fmadd_ps(_mm512_add_ps(a0[m], a1[m]), sv, tot[m]);
        }
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++) y[m * N + n] = _mm512_reduce_add_ps(tot[m]);
    }
#elif defined(QLORA__AVX2)
    const int sh = qlora__log2i(w->blocksize);
    qlora__scale_tab tab;
    tab.d = -1;
    const __m256 cl = _mm256_loadu_ps(code), ch = _mm256_loadu_ps(code + 8);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *cr = w->codes + n * (K / 2);
        __m256 tot[QLORA__GEMV_M];
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++) tot[m] = _mm256_setzero_ps();
        for (int64_t g = 0; g < K; g += 64) {
            const __m256i v = _mm256_loadu_si256((const __m256i *)(cr + g / 2));
            __m256 a0[QLORA__GEMV_M], a1[QLORA__GEMV_M];
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++) a0[m] = a1[m] = _mm256_setzero_ps();
            QLORA__NF4_UNROLL
            for (int t = 0; t < 8; t += 2) {
                const __m256 p0 = qlora__nf4_lut8(_mm256_srli_epi32(v, 4 * t), cl, ch);
                const __m256 p1 = qlora__nf4_lut8(_mm256_srli_epi32(v, 4 * t + 4), cl, ch);
                QLORA__NF4_UNROLL
                for (int m = 0; m < MM; m++) {
                    const float *xm = xs + m * K + g + 8 * t;
                    a0[m] = _mm256_fmadd_ps(p0, _mm256_loadu_ps(xm), a0[m]);
                    a1[m] = _mm256_fmadd_ps(p1, _mm256_loadu_ps(xm + 8), a1[m]);
                }
            }
            const __m256 sv = qlora__nf4_group_scales(w, &tab, n * K + g, sh, dq64);
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++) tot[m] = _mm256_fmadd_ps(_mm256_add_ps(a0[m], a1[m]), sv, tot[m]);
        }
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++) y[m * N + n] = qlora__hsum256(tot[m]);
    }
#else
    // Decode 32 codes at a time (unscaled), then 16-lane partial sums the compiler can vectorize.
    const int64_t bs = w->blocksize, nblk = K / bs, cpb = bs / 32;
    const int round_w = code != qlora__nf4_code;   // bf16 codebook: round the decoded values
    float wv[32];
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *cr = w->codes + n * (K / 2);
        float tot[QLORA__GEMV_M][16];
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++)
            for (int j = 0; j < 16; j++) tot[m][j] = 0.0f;
        for (int64_t blk = 0; blk < nblk; blk++) {
            float acc[QLORA__GEMV_M][16];
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++)
                for (int j = 0; j < 16; j++) acc[m][j] = 0.0f;
            for (int64_t ch = blk * cpb; ch < (blk + 1) * cpb; ch++) {
                qlora__nf4_decode32(wv, cr + ch * 16, 1.0f);
                if (round_w)
                    for (int j = 0; j < 32; j++) wv[j] = qlora__bf16_round(wv[j]);
                QLORA__NF4_UNROLL
                for (int m = 0; m < MM; m++) {
                    const float *xm = xs + m * K + ch * 32;
                    for (int j = 0; j < 16; j++) acc[m][j] += wv[j] * xm[j];
                    for (int j = 0; j < 16; j++) acc[m][j] += wv[16 + j] * xm[16 + j];
                }
            }
            const float s = qlora__nf4_scale(w, n * nblk + blk);
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++)
                for (int j = 0; j < 16; j++) tot[m][j] += acc[m][j] * s;
        }
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++) {
            float t = 0.0f;
            for (int j = 0; j < 16; j++) t += tot[m][j];
            y[m * N + n] = t;
        }
    }
#endif
}

#if defined(QLORA__AVX512BF16)
// QLORA_COMPUTE_BF16 with AVX-512 BF16 (its reference: qlora__nf4_forward_bf16_ref). Groups of 128
// elements, as G8: word lane j of the group's 64 code bytes, shifted right by 4t (t < 4), holds the
// nibble of element 4j + (t^1) in its low bits; vpermw looks up 32 of them in the bf16 codebook (the
// table holds it twice, since vpermw reads 5 index bits), and vdpbf16ps adds the products of word
// pairs (2i, 2i+1), elements 8i + (t^1) and 8i + 4 + (t^1), into fp32 lane i. So lane i sums
// elements 8i..8i+7, as a G8 lane does, and takes the same scales. x is rounded and permuted once:
//     xb[g + 32t + j] = bf16(x[g + 4j + (t^1)])      for each group g, t < 4, j < 32
// Per 128 elements: 3 shifts, 4 lookups and 4 dot products, against 7, 8 and 8 in fp32.

// dst (len) = bf16 bits of src (len) in the order above; len is a multiple of 128.
static void qlora__b4_permute(uint16_t *dst, const float *src, int64_t len) {
    for (int64_t g = 0; g < len; g += 128)
        for (int t = 0; t < 4; t++)
            for (int j = 0; j < 32; j++) dst[g + 32 * t + j] = qlora__bf16_bits(src[g + 4 * j + (t ^ 1)]);
}

// y[m][n] for rows n in [n0, n1): xb (MM, K) as above; cbw (32) the bf16 codebook twice.
QLORA__FORCEINLINE void qlora__gemv_bf16_fwd_rows(float *y, const uint16_t *xb, const qlora_nf4 *w,
                                                   const uint16_t *cbw, const int MM, int64_t n0, int64_t n1,
                                                   const int dq64) {
    const int64_t N = w->rows, K = w->cols;
    const int sh = qlora__log2i(w->blocksize);
    qlora__scale_tab tab;
    tab.d = -1;
    const __m512i cb = _mm512_loadu_si512(cbw);
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *cr = w->codes + n * (K / 2);
        __m512 tot[QLORA__GEMV_M];
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++) tot[m] = _mm512_setzero_ps();
        for (int64_t g = 0; g < K; g += 128) {
            const __m512i v = _mm512_loadu_si512(cr + g / 2);
            _mm_prefetch((const char *)(cr + g / 2) + QLORA__GEMV_PF, _MM_HINT_T0);
            __m512 a0[QLORA__GEMV_M], a1[QLORA__GEMV_M];
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++) a0[m] = a1[m] = _mm512_setzero_ps();
            QLORA__NF4_UNROLL
            for (int t = 0; t < 4; t += 2) {
                const __m512i p0 = _mm512_permutexvar_epi16(t ? _mm512_srli_epi16(v, 4 * t) : v, cb);
                const __m512i p1 = _mm512_permutexvar_epi16(_mm512_srli_epi16(v, 4 * t + 4), cb);
                QLORA__NF4_UNROLL
                for (int m = 0; m < MM; m++) {
                    const uint16_t *xm = xb + m * K + g + 32 * t;
                    a0[m] = _mm512_dpbf16_ps(a0[m], (__m512bh)p0, (__m512bh)_mm512_loadu_si512(xm));
                    a1[m] = _mm512_dpbf16_ps(a1[m], (__m512bh)p1, (__m512bh)_mm512_loadu_si512(xm + 32));
                }
            }
            const __m512 sv = qlora__nf4_group_scales(w, &tab, n * K + g, sh, dq64);
            QLORA__NF4_UNROLL
            for (int m = 0; m < MM; m++) tot[m] = _mm512_fmadd_ps(_mm512_add_ps(a0[m], a1[m]), sv, tot[m]);
        }
        QLORA__NF4_UNROLL
        for (int m = 0; m < MM; m++) y[m * N + n] = _mm512_reduce_add_ps(tot[m]);
    }
}
#endif

// ds (MM, K) += dy (MM, rows n0..n1-1) · W (rows n0..n1-1) over the columns [k0, k1) (multiples of
// QLORA__GEMV_GROUP); ds is (part of) dx in G8 order with AVX-512 / AVX2. Four rows of W at a
// time, so each ds vector is loaded and stored once per four rows.
QLORA__FORCEINLINE void qlora__gemv_bwd_rows(float *ds, const float *dy, const qlora_nf4 *w, const int MM,
                                              int64_t n0, int64_t n1, int64_t k0, int64_t k1, const int dq64) {
    const int64_t N = w->rows, K = w->cols;
    (void)dq64;   // used by the AVX-512 / AVX2 group scales
#if defined(QLORA__AVX512)
    const int sh = qlora__log2i(w->blocksize);
    qlora__scale_tab tab;
    tab.d = -1;
    const __m512 cb = _mm512_loadu_ps(qlora__nf4_code);
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t rr = qlora__min64(4, n1 - n);
        const uint8_t *r[4];
        float d[QLORA__GEMV_M * 4];               // dy[m][n+i], 0 for padding rows
        for (int i = 0; i < 4; i++) {
            r[i] = w->codes + (n + (i < rr ? i : 0)) * (K / 2);
            for (int m = 0; m < MM; m++) d[m * 4 + i] = i < rr ? dy[m * N + n + i] : 0.0f;
        }
        for (int64_t g = k0; g < k1; g += 128) {
            __m512i v[4];
            __m512 sv[4];
            QLORA__NF4_UNROLL
            for (int i = 0; i < 4; i++) {
                v[i] = _mm512_loadu_si512(r[i] + g / 2);
                sv[i] = qlora__nf4_group_scales(w, &tab, (n + (i < rr ? i : 0)) * K + g, sh, dq64);
            }
            if (MM <= 2) {
                // Few rows of dy: fold the scales into per-(m, row) coefficient vectors.
                __m512 cf[2][4];
                QLORA__NF4_UNROLL
                for (int m = 0; m < MM; m++)
                    QLORA__NF4_UNROLL
                    for (int i = 0; i < 4; i++) cf[m][i] = _mm512_mul_ps(sv[i], _mm512_set1_ps(d[m * 4 + i]));
                QLORA__NF4_UNROLL
                for (int t = 0; t < 8; t++) {
                    __m512 p[4];
                    QLORA__NF4_UNROLL
                    for (int i = 0; i < 4; i++) p[i] = _mm512_permutexvar_ps(_mm512_srli_epi32(v[i], 4 * t), cb);
                    QLORA__NF4_UNROLL
                    for (int m = 0; m < MM; m++) {
                        float *dm = ds + m * K + g + 16 * t;
                        __m512 acc = _mm512_loadu_ps(dm);
                        QLORA__NF4_UNROLL
                        for (int i = 0; i < 4; i++) acc = _mm512_fmadd_ps(p[i], cf[m][i], acc);
                        _mm512_storeu_ps(dm, acc);
                    }
                }
            } else {
                // More rows: scale the decoded W once, broadcast dy.
                QLORA__NF4_UNROLL
                for (int t = 0; t < 8; t++) {
                    __m512 p[4];
                    QLORA__NF4_UNROLL
                    for (int i = 0; i < 4; i++)
                        p[i] = _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v[i], 4 * t), cb), sv[i]);
                    QLORA__NF4_UNROLL
                    for (int m = 0; m < MM; m++) {
                        float *dm = ds + m * K + g + 16 * t;
                        __m512 acc = _mm512_loadu_ps(dm);
                        QLORA__NF4_UNROLL
                        for (int i = 0; i < 4; i++) acc = _mm512_fmadd_ps(p[i], _mm512_set1_ps(d[m * 4 + i]), acc);
                        _mm512_storeu_ps(dm, acc);
                    }
                }
            }
        }
    }
#elif defined(QLORA__AVX2)
    // As AVX-512, with the decoded W scaled once per row (16 registers leave no room for per-row
    // coefficient vectors).
    const int sh = qlora__log2i(w->blocksize);
    qlora__scale_tab tab;
    tab.d = -1;
    const __m256 cl = _mm256_loadu_ps(qlora__nf4_code), ch = _mm256_loadu_ps(qlora__nf4_code + 8);
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t rr = qlora__min64(4, n1 - n);
        const uint8_t *r[4];
        float d[QLORA__GEMV_M * 4];               // dy[m][n+i], 0 for padding rows
        for (int i = 0; i < 4; i++) {
            r[i] = w->codes + (n + (i < rr ? i : 0)) * (K / 2);
            for (int m = 0; m < MM; m++) d[m * 4 + i] = i < rr ? dy[m * N + n + i] : 0.0f;
        }
        for (int64_t g = k0; g < k1; g += 64) {
            __m256i v[4];
            __m256 sv[4];
            QLORA__NF4_UNROLL
            for (int i = 0; i < 4; i++) {
                v[i] = _mm256_loadu_si256((const __m256i *)(r[i] + g / 2));
                sv[i] = qlora__nf4_group_scales(w, &tab, (n + (i < rr ? i : 0)) * K + g, sh, dq64);
            }
            QLORA__NF4_UNROLL
            for (int t = 0; t < 8; t++) {
                __m256 p[4];
                QLORA__NF4_UNROLL
                for (int i = 0; i < 4; i++) p[i] = _mm256_mul_ps(qlora__nf4_lut8(_mm256_srli_epi32(v[i], 4 * t), cl, ch), sv[i]);
                QLORA__NF4_UNROLL
                for (int m = 0; m < MM; m++) {
                    float *dm = ds + m * K + g + 8 * t;
                    __m256 acc = _mm256_loadu_ps(dm);
                    QLORA__NF4_UNROLL
                    for (int i = 0; i < 4; i++) acc = _mm256_fmadd_ps(p[i], _mm256_broadcast_ss(d + m * 4 + i), acc);
                    _mm256_storeu_ps(dm, acc);
                }
            }
        }
    }
#else
    const int64_t bs = w->blocksize, nblk = K / bs, cpb = bs / 32, c0 = k0 / 32, c1 = k1 / 32;
    float wv[4][32];
    for (int64_t n = n0; n < n1; n += 4) {
        const int64_t rr = qlora__min64(4, n1 - n);
        const uint8_t *r[4];
        for (int i = 0; i < 4; i++) r[i] = w->codes + (n + (i < rr ? i : 0)) * (K / 2);  // padding rows: coef 0
        for (int64_t blk = c0 / cpb; blk * cpb < c1; blk++) {
            // coef[m][i] = dy[m][n+i] · scale of (row n+i, this block)
            float coef[QLORA__GEMV_M * 4];
            for (int i = 0; i < 4; i++) {
                const float s = i < rr ? qlora__nf4_scale(w, (n + i) * nblk + blk) : 0.0f;
                for (int m = 0; m < MM; m++) coef[m * 4 + i] = i < rr ? dy[m * N + n + i] * s : 0.0f;
            }
            const int64_t ch0 = blk * cpb > c0 ? blk * cpb : c0, ch1 = qlora__min64(c1, (blk + 1) * cpb);
            for (int64_t ch = ch0; ch < ch1; ch++) {
                for (int i = 0; i < 4; i++) qlora__nf4_decode32(wv[i], r[i] + ch * 16, 1.0f);
                QLORA__NF4_UNROLL
                for (int m = 0; m < MM; m++) {
                    float *dm = ds + m * K + ch * 32;
                    for (int i = 0; i < 4; i++) {
                        const float cf = coef[m * 4 + i];
                        for (int j = 0; j < 32; j++) dm[j] += wv[i][j] * cf;
                    }
                }
            }
        }
    }
#endif
}

// One function per M, so that M is a compile-time constant in each (a switch calling the inline
// kernel with case constants gets merged back into one runtime-M copy by the compiler).
#define QLORA__GEMV_SPECIALIZE(MM)                                                                          \
    static void qlora__gemv_fwd_##MM(float *y, const float *xs, const qlora_nf4 *w, const float *code,       \
                                     int64_t n0, int64_t n1) {                                              \
        if (qlora__gemv_dq64(w)) qlora__gemv_fwd_rows(y, xs, w, code, MM, n0, n1, 1);                       \
        else qlora__gemv_fwd_rows(y, xs, w, code, MM, n0, n1, 0);                                           \
    }                                                                                                       \
    static void qlora__gemv_bwd_##MM(float *ds, const float *dy, const qlora_nf4 *w, int64_t n0, int64_t n1,     \
                                     int64_t k0, int64_t k1) {                                              \
        if (qlora__gemv_dq64(w)) qlora__gemv_bwd_rows(ds, dy, w, MM, n0, n1, k0, k1, 1);                    \
        else qlora__gemv_bwd_rows(ds, dy, w, MM, n0, n1, k0, k1, 0);                                        \
    }
QLORA__GEMV_SPECIALIZE(1)
QLORA__GEMV_SPECIALIZE(2)
QLORA__GEMV_SPECIALIZE(3)
QLORA__GEMV_SPECIALIZE(4)
QLORA__GEMV_SPECIALIZE(5)
QLORA__GEMV_SPECIALIZE(6)
QLORA__GEMV_SPECIALIZE(7)
QLORA__GEMV_SPECIALIZE(8)
#undef QLORA__GEMV_SPECIALIZE

#if defined(QLORA__AVX512BF16)
#define QLORA__GEMV_BF16_SPECIALIZE(MM)                                                                          \
    static void qlora__gemv_bf16_fwd_##MM(float *y, const uint16_t *xb, const qlora_nf4 *w, const uint16_t *cbw, \
                                          int64_t n0, int64_t n1) {                                              \
        if (qlora__gemv_dq64(w)) qlora__gemv_bf16_fwd_rows(y, xb, w, cbw, MM, n0, n1, 1);                        \
        else qlora__gemv_bf16_fwd_rows(y, xb, w, cbw, MM, n0, n1, 0);                                            \
    }
QLORA__GEMV_BF16_SPECIALIZE(1)
QLORA__GEMV_BF16_SPECIALIZE(2)
QLORA__GEMV_BF16_SPECIALIZE(3)
QLORA__GEMV_BF16_SPECIALIZE(4)
QLORA__GEMV_BF16_SPECIALIZE(5)
QLORA__GEMV_BF16_SPECIALIZE(6)
QLORA__GEMV_BF16_SPECIALIZE(7)
QLORA__GEMV_BF16_SPECIALIZE(8)
#undef QLORA__GEMV_BF16_SPECIALIZE
typedef void (*qlora__gemv_bf16_fwd_t)(float *, const uint16_t *, const qlora_nf4 *, const uint16_t *, int64_t,
                                       int64_t);
static const qlora__gemv_bf16_fwd_t qlora__gemv_bf16_fwd_fn[QLORA__GEMV_M] = {
    qlora__gemv_bf16_fwd_1, qlora__gemv_bf16_fwd_2, qlora__gemv_bf16_fwd_3, qlora__gemv_bf16_fwd_4,
    qlora__gemv_bf16_fwd_5, qlora__gemv_bf16_fwd_6, qlora__gemv_bf16_fwd_7, qlora__gemv_bf16_fwd_8,
};
#endif

typedef void (*qlora__gemv_fwd_t)(float *, const float *, const qlora_nf4 *, const float *, int64_t, int64_t);
typedef void (*qlora__gemv_bwd_t)(float *, const float *, const qlora_nf4 *, int64_t, int64_t, int64_t, int64_t);
static const qlora__gemv_fwd_t qlora__gemv_fwd_fn[QLORA__GEMV_M] = {
    qlora__gemv_fwd_1, qlora__gemv_fwd_2, qlora__gemv_fwd_3, qlora__gemv_fwd_4,
    qlora__gemv_fwd_5, qlora__gemv_fwd_6, qlora__gemv_fwd_7, qlora__gemv_fwd_8,
};
static const qlora__gemv_bwd_t qlora__gemv_bwd_fn[QLORA__GEMV_M] = {
    qlora__gemv_bwd_1, qlora__gemv_bwd_2, qlora__gemv_bwd_3, qlora__gemv_bwd_4,
    qlora__gemv_bwd_5, qlora__gemv_bwd_6, qlora__gemv_bwd_7, qlora__gemv_bwd_8,
};

// Whether the fused GEMV handles this layout.
static int qlora__gemv_ok(const qlora_nf4 *w, int64_t M) {
#if QLORA__G8_LANES
    return M <= QLORA__GEMV_M && w->cols % QLORA__GEMV_GROUP == 0;
#else
    return M <= QLORA__GEMV_M && w->cols % w->blocksize == 0;
#endif
}

// Fused GEMV entry points (1 <= M <= QLORA__GEMV_M, qlora__gemv_ok). Return 0 on NOMEM.
// Work is cut into pieces fixed by the shape alone and handed out dynamically, so a thread that
// the OS pauses does not hold up the others, and results still do not depend on the thread count.
// Forward pieces hold QLORA__GEMV_PIECE bytes of codes, or a quarter of W when that is less (a W
// that fits the caches still spreads over the threads): two threads that take turns on 32 KB pieces
// read DRAM at about 23 GB/s on the development machine, against 32-38 GB/s with 256 KB pieces (the
// hardware prefetcher restarts at each jump). Each output row is one dot product, so the pieces do
// not change any result.
#define QLORA__GEMV_PIECE  (256 * 1024)
#define QLORA__GEMV_BLOCKS 8        // backward: W is cut into at most this many row blocks

static int qlora__nf4_gemv_forward(float *y, const float *x, const qlora_nf4 *w, int64_t M, int bf16) {
    const int64_t N = w->rows, K = w->cols;
    const int64_t by_bytes = (QLORA__GEMV_PIECE + K / 2 - 1) / (K / 2 > 0 ? K / 2 : 1);
    const int64_t rows = qlora__min64(by_bytes, (N + 3) / 4 > 0 ? (N + 3) / 4 : 1);
    const int64_t npieces = (N + rows - 1) / rows;
    const int par = N * K >= 65536;
    (void)par;
#if defined(QLORA__AVX512BF16)
    if (bf16) {
        uint16_t cbw[32];
        for (int i = 0; i < 32; i++) cbw[i] = qlora__bf16_bits(qlora__nf4_code[i & 15]);
        uint16_t *xb = (uint16_t *)qlora__alloc(M * K * (int64_t)sizeof(uint16_t));
        if (!xb) return 0;
        for (int64_t m = 0; m < M; m++) qlora__b4_permute(xb + m * K, x + m * K, K);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (par)
#endif
        for (int64_t i = 0; i < npieces; i++)
            qlora__gemv_bf16_fwd_fn[M - 1](y, xb, w, cbw, i * rows, qlora__min64(N, (i + 1) * rows));
        QLORA_FREE(xb);
        return 1;
    }
#endif
    // fp32 kernels; for bf16 without the instructions, on bf16-rounded x and codebook.
    float code[16];
    for (int i = 0; i < 16; i++) code[i] = bf16 ? qlora__bf16_round(qlora__nf4_code[i]) : qlora__nf4_code[i];
    const float *cb = bf16 ? code : qlora__nf4_code;
    // x as the kernels read it: permuted to G8 order (AVX-512 / AVX2) and/or rounded to bf16, else x itself
    float *xs = NULL;
    if (QLORA__G8_LANES || bf16) {
        xs = (float *)qlora__alloc(M * K * (int64_t)sizeof(float));
        if (!xs) return 0;
#if QLORA__G8_LANES
        for (int64_t m = 0; m < M; m++) qlora__g8_permute(xs + m * K, x + m * K, K);
#else
        memcpy(xs, x, (size_t)(M * K) * sizeof(float));
#endif
        if (bf16)
            for (int64_t i = 0; i < M * K; i++) xs[i] = qlora__bf16_round(xs[i]);
    }
    const float *xin = xs ? xs : x;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (par)
#endif
    for (int64_t i = 0; i < npieces; i++)
        qlora__gemv_fwd_fn[M - 1](y, xin, w, cb, i * rows, qlora__min64(N, (i + 1) * rows));
    QLORA_FREE(xs);
    return 1;
}

// dx += dy·W as (((dx + P_0) + P_1) + ...): P_b = the product over row block b of W, accumulated
// in a private buffer; the blocks (at least 64 rows each) are fixed by N alone.
static int qlora__nf4_gemv_backward(float *dx, const float *dy, const qlora_nf4 *w, int64_t M) {
    const int64_t N = w->rows, K = w->cols, ng = K / QLORA__GEMV_GROUP;
    int64_t rows = (N + QLORA__GEMV_BLOCKS - 1) / QLORA__GEMV_BLOCKS;
    rows = (rows < 64 ? 64 : rows + 3) / 4 * 4;
    const int64_t nblocks = (N + rows - 1) / rows;
    float *ds = (float *)qlora__alloc(nblocks * M * K * (int64_t)sizeof(float));
    if (!ds) return 0;
#ifdef _OPENMP
#pragma omp parallel if (N * K >= 65536)
#endif
    {
        // 1. Each block's product into its buffer; block 0 starts from dx (in G8 order).
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t b = 0; b < nblocks; b++) {
            float *acc = ds + b * M * K;
            for (int64_t m = 0; m < M; m++) {
#if QLORA__G8_LANES
                if (b == 0) qlora__g8_permute(acc + m * K, dx + m * K, K);
#else
                if (b == 0) memcpy(acc + m * K, dx + m * K, (size_t)K * sizeof(float));
#endif
                else memset(acc + m * K, 0, (size_t)K * sizeof(float));
            }
            qlora__gemv_bwd_fn[M - 1](acc, dy, w, b * rows, qlora__min64(N, (b + 1) * rows), 0, K);
        }
        // 2. Sum the blocks in order, per group of columns, and bring the result back into dx.
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t g = 0; g < ng; g++) {
            const int64_t k = g * QLORA__GEMV_GROUP;
            for (int64_t m = 0; m < M; m++) {
                float *a0 = ds + m * K + k;
                for (int64_t b = 1; b < nblocks; b++) {
                    const float *ab = ds + b * M * K + m * K + k;
                    for (int j = 0; j < QLORA__GEMV_GROUP; j++) a0[j] += ab[j];
                }
#if QLORA__G8_LANES
                qlora__g8_unpermute(dx + m * K + k, a0, QLORA__GEMV_GROUP);
#else
                memcpy(dx + m * K + k, a0, (size_t)QLORA__GEMV_GROUP * sizeof(float));
#endif
            }
        }
    }
    QLORA_FREE(ds);
    return 1;
}

// ---------------------------------------------------------------------------------------------
// BLAS path: dequantize a panel of W rows into a buffer, multiply it with cblas_sgemm.

#ifdef QLORA_USE_OPENBLAS
char *openblas_get_corename(void);

// Every cblas_sgemm call goes through here. OpenBLAS blocks the sum over K by its GEMM_Q (448 on SkylakeX)
// and splits the last two blocks one way with one thread and another way with several, so a sum longer than
// GEMM_Q changes its last bits with the thread count (K = 449..463, 688, 1089, ...). Sums of at most
// QLORA__BLAS_KC (below GEMM_Q on every core type OpenBLAS knows) are one block either way; longer ones run as
// consecutive chunks of that length accumulating into C, so results do not depend on the thread count.
#define QLORA__BLAS_KC 256
static void qlora__cblas(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                         int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    int64_t k0 = 0;
    do {
        const int64_t kk = K - k0 < QLORA__BLAS_KC ? K - k0 : QLORA__BLAS_KC;
        const float *a = trans_a ? A + k0 * lda : A + k0;   // op(A) columns k0.. (M, kk)
        const float *b = trans_b ? B + k0 : B + k0 * ldb;   // op(B) rows k0.. (kk, N)
        cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)M,
                    (int)N, (int)kk, alpha, a, (int)lda, b, (int)ldb, k0 == 0 ? beta : 1.0f, C, (int)ldc);
        k0 += kk;
    } while (k0 < K);
}

// Whether OpenBLAS picked kernels that suit this CPU. Debian's 0.3.21 may misdetect a CPU
// (e.g. "Prescott" on an AVX-512 Xeon, several times slower); then AUTO keeps to our own kernels.
// The CPU's level comes from the compiler (-march), not from CPUID.
static int qlora__blas_core_trusted(const char *core) {
#if defined(__AVX512F__)
    // AVX-512 cores; "Zen" is AMD-only and its AVX2 kernels run at full FMA rate on Zen 4.
    static const char *const ok[] = { "SkylakeX", "Cooperlake", "SapphireRapids", "Zen", NULL };
#elif defined(__AVX2__)
    static const char *const ok[] = { "Haswell", "Zen", "SkylakeX", "Cooperlake", "SapphireRapids", NULL };
#else
    static const char *const ok[] = { NULL };
    (void)ok;
    (void)core;
    return 1;
#endif
#if defined(__AVX512F__) || defined(__AVX2__)
    if (!core) return 0;
    for (int i = 0; ok[i]; i++) {
        const char *a = ok[i], *b = core;
        while (*a && *b && (*a | 32) == (*b | 32)) { a++; b++; }
        if (!*a && !*b) return 1;
    }
    return 0;
#endif
}

// out = X·Wᵀ (fwd, out (M, N) overwritten) or out += X·W (bwd, x (M, N), out (M, K)).
// Returns 0 on NOMEM. Sizes were checked to fit cblas' int by the caller.
static int qlora__nf4_blas(int fwd, float *out, const float *x, const qlora_nf4 *w, int64_t M) {
    const int64_t N = w->rows, K = w->cols;
    // Panels of about 8 MB of fp32 (at least 64 rows): big GEMMs for OpenBLAS, cache-sized buffer.
    int64_t nb = qlora__min64(N, ((int64_t)1 << 21) / (K > 0 ? K : 1));
    if (nb < 64) nb = qlora__min64(N, 64);
    float *panel = (float *)qlora__alloc(nb * K * (int64_t)sizeof(float));
    if (!panel) return 0;
    for (int64_t n0 = 0; n0 < N; n0 += nb) {
        const int64_t rows = qlora__min64(nb, N - n0), len = rows * K;
        // Dequantize rows [n0, n0+rows) = flat elements [n0·K, n0·K + len), in 32-aligned pieces.
#ifdef _OPENMP
#pragma omp parallel if (len >= 65536)
#endif
        {
            int64_t tid = 0, nt = 1;
#ifdef _OPENMP
            tid = omp_get_thread_num();
            nt = omp_get_num_threads();
#endif
            const int64_t a = (len / 32) * tid / nt * 32, b = (tid + 1 == nt) ? len : (len / 32) * (tid + 1) / nt * 32;
            qlora__nf4_span(panel + a, w, n0 * K + a, b - a, qlora__log2i(w->blocksize));
        }
        if (fwd) qlora__cblas(0, 1, M, rows, K, 1.0f, x, K, panel, K, 0.0f, out + n0, N);
        else qlora__cblas(0, 0, M, K, rows, 1.0f, x + n0, N, panel, K, 1.0f, out, K);
    }
    QLORA_FREE(panel);
    return 1;
}
#endif

QLORADEF qlora_cpu_info qlora_cpu_info_get(void) {
    qlora_cpu_info ci;
#if defined(QLORA__AVX512)
    ci.simd = "avx512";
#elif defined(QLORA__AVX2)
    ci.simd = "avx2";
#elif defined(QLORA__NEON)
    ci.simd = "neon";
#else
    ci.simd = "scalar";
#endif
#ifdef _OPENMP
    ci.omp_threads = omp_get_max_threads();
#else
    ci.omp_threads = 1;
#endif
#ifdef QLORA_USE_OPENBLAS
    ci.blas_compiled = 1;
    ci.blas_core = openblas_get_corename();
    if (!ci.blas_core) ci.blas_core = "unknown";
    ci.blas_trusted = qlora__blas_core_trusted(ci.blas_core);
#else
    ci.blas_compiled = 0;
    ci.blas_core = "none";
    ci.blas_trusted = 0;
#endif
#ifdef QLORA__AVX512BF16
    ci.bf16_dot = 1;
#else
    ci.bf16_dot = 0;
#endif
    return ci;
}

#ifdef QLORA_USE_OPENBLAS
// Whether a BLAS call is allowed: when asked explicitly, or for AUTO when the core is trusted;
// and only when every size fits cblas' int.
static int qlora__use_blas(qlora_kernel kernel, int64_t a, int64_t b, int64_t c, int64_t d) {
    if (kernel != QLORA_KERNEL_BLAS && kernel != QLORA_KERNEL_AUTO) return 0;
    if (a > 2147483647 || b > 2147483647 || c > 2147483647 || d > 2147483647) return 0;
    if (kernel == QLORA_KERNEL_AUTO) return qlora__blas_core_trusted(openblas_get_corename());
    return 1;
}
#endif

// ---------------------------------------------------------------------------------------------
// Public entry points: validation, backend hand-off, path choice

static qlora_status qlora__nf4_linear_check(const char *fn, const void *out, const char *out_name,
                                            const void *in, const char *in_name, const qlora_nf4 *w,
                                            int64_t M, qlora_error *err) {
    int64_t n, t;
    if (!out) return qlora__fail(err, QLORA_ERR_ARG, "%s: %s is NULL", fn, out_name);
    if (!in) return qlora__fail(err, QLORA_ERR_ARG, "%s: %s is NULL", fn, in_name);
    if (!w) return qlora__fail(err, QLORA_ERR_ARG, "%s: w is NULL", fn);
    if (M < 0) return qlora__fail(err, QLORA_ERR_ARG, "%s: M = %lld is negative", fn, (long long)M);
    if (w->rows < 0 || w->cols < 0)
        return qlora__fail(err, QLORA_ERR_SHAPE, "%s: w has negative shape (%lld, %lld)", fn,
                           (long long)w->rows, (long long)w->cols);
    if (!qlora__mul_ok(w->rows, w->cols, &n) || !qlora__mul_ok(n, 4, &t) || !qlora__mul_ok(M, w->rows, &t) ||
        !qlora__mul_ok(t, (int64_t)sizeof(float), &t) || !qlora__mul_ok(M, w->cols, &t) ||
        !qlora__mul_ok(t, (int64_t)sizeof(float), &t) || (uint64_t)t > (uint64_t)SIZE_MAX)
        return qlora__fail(err, QLORA_ERR_SHAPE, "%s: sizes overflow: M = %lld, w (%lld, %lld)", fn,
                           (long long)M, (long long)w->rows, (long long)w->cols);
    if (!qlora_nf4_blocksize_valid(w->blocksize))
        return qlora__fail(err, QLORA_ERR_ARG, "%s: w->blocksize = %d is not one of 32, 64, ..., 4096", fn,
                           (int)w->blocksize);
    if (n > 0 && !w->codes) return qlora__fail(err, QLORA_ERR_ARG, "%s: w->codes is NULL", fn);
    if (n > 0 && w->double_quant && (!w->qabsmax || !w->nested_absmax))
        return qlora__fail(err, QLORA_ERR_ARG, "%s: w has double_quant = 1 but %s is NULL", fn,
                           w->qabsmax ? "w->nested_absmax" : "w->qabsmax");
    if (n > 0 && !w->double_quant && !w->absmax)
        return qlora__fail(err, QLORA_ERR_ARG, "%s: w->absmax is NULL", fn);
    return QLORA_OK;
}

// The NF4 GEMM on the own kernels: fwd: y (M, N) = x (M, K)·Wᵀ; bwd: dx (M, K) += dy (M, N)·W.
// bf16: both operands rounded to bf16 (see qlora__nf4_dispatch).
static int qlora__nf4_gemm(int fwd, float *out, const float *in, const qlora_nf4 *w, int64_t M, int bf16) {
    qlora__mm p;
    memset(&p, 0, sizeof p);
    p.M = M;
    p.N = fwd ? w->rows : w->cols;
    p.K = fwd ? w->cols : w->rows;
    p.a = in;
    p.a_rs = p.K;
    p.a_cs = 1;
    p.alpha = 1.0f;
    p.w = w;
    p.w_trans = fwd;
    p.c = out;
    p.ldc = p.N;
    p.overwrite = fwd;
    p.bf16 = bf16;
    return qlora__mm_run(&p);
}

// Runs one NF4 matmul on the CPU path `kernel` asks for. Returns 0 on NOMEM.
// AUTO takes the BLAS panel path only when the own kernels are portable C (no SIMD level compiled):
// with a SIMD micro-kernel they match OpenBLAS' sgemm and need no fp32 copy of W.
// QLORA_COMPUTE_BF16 has two forms, as bitsandbytes does: a forward of M <= 8 rows with in % 128 == 0
// (decoding) is the GEMV form (qlora__nf4_forward_bf16_ref: the codebook rounded, per-block fp32
// scales); every other forward and every backward is the GEMM form (dequantize W in fp32, round it
// and X (dY) to bf16, sum the exact products in fp32), on the own GEMM whatever `kernel` says
// except REF.
static int qlora__nf4_dispatch(qlora_kernel kernel, qlora_compute compute, int fwd, float *out, const float *in,
                               const qlora_nf4 *w, int64_t M) {
    const int bf16 = compute == QLORA_COMPUTE_BF16;
    if (bf16 && fwd && M <= QLORA__GEMV_M && w->cols % 128 == 0) {
        if (kernel == QLORA_KERNEL_REF || !qlora__gemv_ok(w, M)) {
            qlora__nf4_forward_bf16_ref(out, in, w, M);
            return 1;
        }
        return qlora__nf4_gemv_forward(out, in, w, M, 1);
    }
    if (kernel == QLORA_KERNEL_REF) {
        if (fwd) qlora__nf4_forward_ref(out, in, w, M, bf16);
        else qlora__nf4_backward_ref(out, in, w, M, bf16);
        return 1;
    }
    if (bf16) return qlora__nf4_gemm(fwd, out, in, w, M, 1);
#ifdef QLORA_USE_OPENBLAS
#if defined(QLORA__AVX512) || defined(QLORA__AVX2) || defined(QLORA__NEON)
    const int auto_blas = 0;
#else
    const int auto_blas = M > QLORA__GEMV_M;
#endif
    if ((kernel == QLORA_KERNEL_BLAS || (kernel == QLORA_KERNEL_AUTO && auto_blas)) &&
        qlora__use_blas(kernel, M, w->rows, w->cols, M > w->rows ? M : w->rows))
        return qlora__nf4_blas(fwd, out, in, w, M);
#endif
    if (qlora__gemv_ok(w, M))
        return fwd ? qlora__nf4_gemv_forward(out, in, w, M, 0) : qlora__nf4_gemv_backward(out, in, w, M);
    return qlora__nf4_gemm(fwd, out, in, w, M, 0);
}

QLORADEF qlora_status qlora_nf4_linear_forward(const qlora_exec *ex, float *y, const float *x,
                                               const qlora_nf4 *w, int64_t M, qlora_error *err) {
    static const char fn[] = "qlora_nf4_linear_forward";
    qlora_status st = qlora__nf4_linear_check(fn, y, "y", x, "x", w, M, err);
    if (st != QLORA_OK) return st;
    if (M == 0 || w->rows == 0) return QLORA_OK;
    if (ex && ex->backend && ex->backend->nf4_linear_forward) {
        st = ex->backend->nf4_linear_forward(ex->backend->user, y, x, w, M, err);
        if (st != QLORA_ERR_UNSUPPORTED) return st;
    }
    if (w->cols == 0) {
        memset(y, 0, (size_t)(M * w->rows) * sizeof(float));
        return QLORA_OK;
    }
    if (!qlora__nf4_dispatch(ex ? ex->kernel : QLORA_KERNEL_AUTO, ex ? ex->compute : QLORA_COMPUTE_F32, 1, y, x, w, M))
        return qlora__fail(err, QLORA_ERR_NOMEM, "%s: no memory for the packing buffers (M = %lld, w (%lld, %lld))",
                           fn, (long long)M, (long long)w->rows, (long long)w->cols);
    return QLORA_OK;
}

QLORADEF qlora_status qlora_nf4_linear_backward(const qlora_exec *ex, float *dx, const float *dy,
                                                const qlora_nf4 *w, int64_t M, qlora_error *err) {
    static const char fn[] = "qlora_nf4_linear_backward";
    qlora_status st = qlora__nf4_linear_check(fn, dx, "dx", dy, "dy", w, M, err);
    if (st != QLORA_OK) return st;
    if (M == 0 || w->cols == 0 || w->rows == 0) return QLORA_OK;
    if (ex && ex->backend && ex->backend->nf4_linear_backward) {
        st = ex->backend->nf4_linear_backward(ex->backend->user, dx, dy, w, M, err);
        if (st != QLORA_ERR_UNSUPPORTED) return st;
    }
    if (!qlora__nf4_dispatch(ex ? ex->kernel : QLORA_KERNEL_AUTO, ex ? ex->compute : QLORA_COMPUTE_F32, 0, dx, dy, w, M))
        return qlora__fail(err, QLORA_ERR_NOMEM, "%s: no memory for the packing buffers (M = %lld, w (%lld, %lld))",
                           fn, (long long)M, (long long)w->rows, (long long)w->cols);
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// Dense fp32 matmul

// C (M, N) = alpha·op(A)·op(B) + beta·C with plain loops (the reference). bf16: alpha·op(A) and
// op(B) rounded to bf16, their exact products summed in fp32 (qlora__sgemm_frozen's arithmetic).
static void qlora__sgemm_ref(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                             const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                             float *C, int64_t ldc, int bf16) {
    for (int64_t i = 0; i < M; i++) {
        for (int64_t j = 0; j < N; j++) {
            float acc = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                float a = trans_a ? A[k * lda + i] : A[i * lda + k];
                float b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
                acc += bf16 ? qlora__bf16_round(alpha * a) * qlora__bf16_round(b) : a * b;
            }
            float *c = C + i * ldc + j;
            if (bf16) *c = (beta == 0.0f) ? acc : acc + beta * *c;
            else *c = (beta == 0.0f) ? alpha * acc : alpha * acc + beta * *c;
        }
    }
}

// Σ a[k]·b[k] over k < K: lane-wise partial sums (k mod 32 with AVX-512, k mod 16 otherwise), then
// the lanes in a fixed order: the same result on every call.
static float qlora__sdot(const float *a, const float *b, int64_t K) {
#if defined(QLORA__AVX512)
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= K; k += 32) {
        s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), _mm512_loadu_ps(b + k), s0);
        s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(b + k + 16), s1);
    }
    for (; k < K; k += 16) {   // masked tail: lanes past K load 0
        const __mmask16 mk = (__mmask16)(K - k >= 16 ? 0xFFFF : (1u << (K - k)) - 1);
        s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mk, a + k), _mm512_maskz_loadu_ps(mk, b + k), s0);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
#else
    float s[16];
    int64_t k = 0;
    for (int j = 0; j < 16; j++) s[j] = 0.0f;
    for (; k + 16 <= K; k += 16)
        for (int j = 0; j < 16; j++) s[j] += a[k + j] * b[k + j];
    for (int j = 0; k + j < K; j++) s[j] += a[k + j] * b[k + j];
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) s[j] += s[j + w];
    return s[0];
#endif
}

// Small-M GEMM with B transposed, the decode shapes (lm_head, LoRA at M = 1): C (M, N) =
// alpha·A (M, K)·B (N, K)ᵀ + beta·C as dot products, reading B once, with no packing and no buffer.
// Threads take fixed pieces of columns, so the result does not depend on the thread count; below
// about 1M multiply-adds (LoRA's A and B at M = 1) one thread does it all: a fork and join would
// cost more, and much more when another job holds one of the cores.
#define QLORA__SGEMV_COLS 64
static void qlora__sgemm_small_bt(int64_t M, int64_t N, int64_t K, float alpha, const float *A, int64_t lda,
                                  const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    const int64_t npieces = (N + QLORA__SGEMV_COLS - 1) / QLORA__SGEMV_COLS;
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) if (npieces > 1 && (double)M * (double)N * (double)K >= 1048576.0)
#endif
    for (int64_t p = 0; p < npieces; p++) {
        const int64_t j1 = qlora__min64(N, (p + 1) * QLORA__SGEMV_COLS);
        for (int64_t j = p * QLORA__SGEMV_COLS; j < j1; j++)
            for (int64_t m = 0; m < M; m++) {
                const float s = alpha * qlora__sdot(A + m * lda, B + j * ldb, K);
                float *c = C + m * ldc + j;
                *c = beta == 0.0f ? s : s + beta * *c;
            }
    }
}

// C (M, N) *= beta, for the paths that then add A·B to C (beta 0 and 1 need no pass: 0 overwrites, 1 adds).
static void qlora__sgemm_scale_c(float *C, int64_t M, int64_t N, int64_t ldc, float beta) {
    if (beta == 0.0f || beta == 1.0f) return;
    for (int64_t i = 0; i < M; i++)
        for (int64_t j = 0; j < N; j++) C[i * ldc + j] *= beta;
}

// Narrow GEMM, the rank-r shapes of LoRA: C (M, N) (+)= alpha·A(i, k)·Bk(k, n) when one of N, K is at most
// QLORA__NARROW (x·Aᵀ, s·dy·B, xa·Bᵀ, g·A), or A is transposed with at most QLORA__NARROW rows (gᵀ·x,
// dyᵀ·xa). A packed GEMM wastes most of its work there: its 12 x 32 register tile is half padding at
// N = 16, and packing copies the wide operand for a reduction of 16. Here nothing is packed; a register
// tile of MR rows x 16·NV columns of C runs the whole reduction (k ascending) with Bk(k, ·) as the vector
// operand and A(i, k) broadcast, so every C element is one thread's fixed-order sum (thread-count
// independent). A transposed B is first copied to Bk (K, N). AVX-512 only; elsewhere qlora_sgemm keeps
// its other paths. The specification is qlora__sgemm_ref.
#define QLORA__NARROW 64
#if defined(QLORA__AVX512)
// One tile: C (mr, nr) (+)= alpha·Σ_k A(i, k)·Bk(k, n), A(i, k) = a[i·a_rs + k·a_cs], Bk(k, n) = b[k·ldb + n].
// MR ≤ 12 and NV ≤ 3 are constants in each shape function below, so the tests on them fold away and the
// accumulators c<row><vector> are registers. Rows past mr repeat row mr-1 (read, never stored); columns
// past nr are masked. (Written out per row: loops over accumulator arrays need an unroll pragma, which
// tripled the compile time of clang's sanitizer builds.)
QLORA__FORCEINLINE void qlora__narrow_tile(const int MR, const int NV, int64_t K, const float *a, int64_t a_rs,
                                           int64_t a_cs, const float *b, int64_t ldb, float alpha, float *c,
                                           int64_t ldc, int mr, int nr, int add) {
    const __mmask16 m0 = qlora__col_mask(nr, 0), m1 = qlora__col_mask(nr, 16), m2 = qlora__col_mask(nr, 32);
#define QLORA__NW_DECL(i)                                                          \
    const float *a##i = a + (int64_t)(i < mr ? i : mr - 1) * a_rs;                 \
    __m512 c##i##0 = _mm512_setzero_ps(), c##i##1 = c##i##0, c##i##2 = c##i##0;
#define QLORA__NW_FMA(i)                                                           \
    if (i < MR) {                                                                  \
        const __m512 ai = _mm512_set1_ps(a##i[k * a_cs]);                          \
        c##i##0 = _mm512_fmadd_ps(ai, b0, c##i##0);                                \
        if (NV > 1) c##i##1 = _mm512_fmadd_ps(ai, b1, c##i##1);                    \
        if (NV > 2) c##i##2 = _mm512_fmadd_ps(ai, b2, c##i##2);                    \
    }
#define QLORA__NW_STORE1(i, v, m)                                                  \
    {                                                                              \
        __m512 r = _mm512_mul_ps(va, c##i##v);                                     \
        if (add) r = _mm512_add_ps(_mm512_maskz_loadu_ps(m, cr + 16 * v), r);      \
        _mm512_mask_storeu_ps(cr + 16 * v, m, r);                                  \
    }
#define QLORA__NW_STORE(i)                                                         \
    if (i < MR && i < mr) {                                                        \
        float *cr = c + (int64_t)i * ldc;                                          \
        QLORA__NW_STORE1(i, 0, m0)                                                 \
        if (NV > 1) QLORA__NW_STORE1(i, 1, m1)                                     \
        if (NV > 2) QLORA__NW_STORE1(i, 2, m2)                                     \
    }
    QLORA__NW_DECL(0) QLORA__NW_DECL(1) QLORA__NW_DECL(2) QLORA__NW_DECL(3)
    QLORA__NW_DECL(4) QLORA__NW_DECL(5) QLORA__NW_DECL(6) QLORA__NW_DECL(7)
    QLORA__NW_DECL(8) QLORA__NW_DECL(9) QLORA__NW_DECL(10) QLORA__NW_DECL(11)
    for (int64_t k = 0; k < K; k++) {
        const float *bk = b + k * ldb;
        const __m512 b0 = _mm512_maskz_loadu_ps(m0, bk);
        const __m512 b1 = NV > 1 ? _mm512_maskz_loadu_ps(m1, bk + 16) : b0;
        const __m512 b2 = NV > 2 ? _mm512_maskz_loadu_ps(m2, bk + 32) : b0;
        QLORA__NW_FMA(0) QLORA__NW_FMA(1) QLORA__NW_FMA(2) QLORA__NW_FMA(3)
        QLORA__NW_FMA(4) QLORA__NW_FMA(5) QLORA__NW_FMA(6) QLORA__NW_FMA(7)
        QLORA__NW_FMA(8) QLORA__NW_FMA(9) QLORA__NW_FMA(10) QLORA__NW_FMA(11)
    }
    const __m512 va = _mm512_set1_ps(alpha);
    QLORA__NW_STORE(0) QLORA__NW_STORE(1) QLORA__NW_STORE(2) QLORA__NW_STORE(3)
    QLORA__NW_STORE(4) QLORA__NW_STORE(5) QLORA__NW_STORE(6) QLORA__NW_STORE(7)
    QLORA__NW_STORE(8) QLORA__NW_STORE(9) QLORA__NW_STORE(10) QLORA__NW_STORE(11)
#undef QLORA__NW_DECL
#undef QLORA__NW_FMA
#undef QLORA__NW_STORE1
#undef QLORA__NW_STORE
}

// The tile shapes, one function each (kept apart: inlined into one caller, they cost clang's sanitizer
// builds a quarter of a minute per file).
#define QLORA__NW_SHAPE(name, MR, NV)                                                                      \
    static QLORA__NOINLINE void name(int64_t K, const float *a, int64_t a_rs, int64_t a_cs, const float *b, \
                                     int64_t ldb, float alpha, float *c, int64_t ldc, int mr, int nr,       \
                                     int add) {                                                             \
        qlora__narrow_tile(MR, NV, K, a, a_rs, a_cs, b, ldb, alpha, c, ldc, mr, nr, add);                  \
    }
QLORA__NW_SHAPE(qlora__narrow_8x16, 8, 1)
QLORA__NW_SHAPE(qlora__narrow_12x16, 12, 1)
QLORA__NW_SHAPE(qlora__narrow_12x32, 12, 2)
QLORA__NW_SHAPE(qlora__narrow_8x48, 8, 3)
#undef QLORA__NW_SHAPE

// All tiles of C (M, N). The tile is 12 x 16 for N ≤ 16 (8 x 16 when A is row-major: with 12 or 16 rows of A
// streamed at once, x·Aᵀ at K = 2048 ran 1.4-1.9x slower), 12 x 32 for N ≤ 32, else 8 x 48.
static void qlora__narrow_run(int64_t M, int64_t N, int64_t K, const float *a, int64_t a_rs, int64_t a_cs,
                              const float *b, int64_t ldb, float alpha, float *c, int64_t ldc, int add) {
    const int nv = N <= 16 ? 1 : N <= 32 ? 2 : 3;
    const int mr = nv == 1 ? (a_cs == 1 ? 8 : 12) : nv == 2 ? 12 : 8;
    const int64_t tm = (M + mr - 1) / mr, tn = (N + 16 * nv - 1) / (16 * nv);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (tm * tn > 1 && (double)M * (double)N * (double)K >= 1048576.0)
#endif
    for (int64_t t = 0; t < tm * tn; t++) {
        const int64_t i0 = (t / tn) * mr, j0 = (t % tn) * 16 * nv;
        const int rows = (int)qlora__min64(mr, M - i0), cols = (int)qlora__min64(16 * nv, N - j0);
        const float *ai = a + i0 * a_rs, *bj = b + j0;
        float *cij = c + i0 * ldc + j0;
        if (nv == 1 && mr == 8) qlora__narrow_8x16(K, ai, a_rs, a_cs, bj, ldb, alpha, cij, ldc, rows, cols, add);
        else if (nv == 1) qlora__narrow_12x16(K, ai, a_rs, a_cs, bj, ldb, alpha, cij, ldc, rows, cols, add);
        else if (nv == 2) qlora__narrow_12x32(K, ai, a_rs, a_cs, bj, ldb, alpha, cij, ldc, rows, cols, add);
        else qlora__narrow_8x48(K, ai, a_rs, a_cs, bj, ldb, alpha, cij, ldc, rows, cols, add);
    }
}
#endif

// qlora_sgemm's narrow path (arguments already validated). Returns 0 when it does not apply: not a narrow
// shape, no AVX-512, or no memory for the copy of a transposed B (the caller then takes another path).
static int qlora__sgemm_narrow(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                               const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                               int64_t ldc) {
#if defined(QLORA__AVX512)
    if (!(N <= QLORA__NARROW || K <= QLORA__NARROW || (trans_a && M <= QLORA__NARROW))) return 0;
    float *bt = NULL;   // (K, N) = Bᵀ when B is given transposed
    if (trans_b && K > 0) {
        if ((double)K * (double)N > 16777216.0 || !(bt = (float *)qlora__alloc(K * N * 4))) return 0;
        for (int64_t n = 0; n < N; n++)
            for (int64_t k = 0; k < K; k++) bt[k * N + n] = B[n * ldb + k];
    }
    qlora__sgemm_scale_c(C, M, N, ldc, beta);
    qlora__narrow_run(M, N, K, A, trans_a ? 1 : lda, trans_a ? lda : 1, bt ? bt : B, bt ? N : ldb, alpha, C, ldc,
                      beta != 0.0f);
    QLORA_FREE(bt);
    return 1;
#else
    (void)trans_a; (void)trans_b; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
    (void)beta; (void)C; (void)ldc;
    return 0;
#endif
}

// The dense GEMM on the packed engine: C = beta·C first (beta = 0 overwrites, as cblas does: old NaNs
// do not survive), then C += alpha·op(A)·op(B); bf16 as in qlora__mm.
static void qlora__sgemm_packed(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                                const float *A, int64_t lda, const float *B, int64_t ldb, float beta, float *C,
                                int64_t ldc, int bf16) {
    qlora__mm p;
    memset(&p, 0, sizeof p);
    p.M = M;
    p.N = N;
    p.K = K;
    p.a = A;
    p.a_rs = trans_a ? 1 : lda;
    p.a_cs = trans_a ? lda : 1;
    p.alpha = alpha;
    p.b = B;
    p.b_rs = trans_b ? 1 : ldb;
    p.b_cs = trans_b ? ldb : 1;
    p.c = C;
    p.ldc = ldc;
    p.overwrite = (beta == 0.0f);
    p.bf16 = bf16;
    qlora__sgemm_scale_c(C, M, N, ldc, beta);
    if (!qlora__mm_run(&p)) {
        // No memory for packing buffers: the reference loops need none (C already holds beta·C).
        qlora__sgemm_ref(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta == 0.0f ? 0.0f : 1.0f, C, ldc, bf16);
    }
}

QLORADEF void qlora_sgemm(const qlora_exec *ex, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                          float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
                          float beta, float *C, int64_t ldc) {
    // Invalid arguments make this a no-op (it has no status to report them).
    if (M <= 0 || N <= 0 || K < 0 || !C || ldc < N) return;
    if (K > 0 && (!A || !B || lda < (trans_a ? M : K) || lda < 1 || ldb < (trans_b ? K : N) || ldb < 1)) return;
    const qlora_kernel kernel = ex ? ex->kernel : QLORA_KERNEL_AUTO;
    if (kernel == QLORA_KERNEL_REF) {
        qlora__sgemm_ref(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 0);
        return;
    }
    // A few rows against a transposed B (decoding): dot products beat a packed GEMM, which would copy
    // all of B (the 0.5 GB lm_head of a 7B model) for each token.
    if ((kernel == QLORA_KERNEL_AUTO || kernel == QLORA_KERNEL_SIMD) && !trans_a && trans_b && M <= QLORA__GEMV_M &&
        K > 0) {
        qlora__sgemm_small_bt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    // LoRA's rank-r shapes: the narrow kernel (faster than cblas and the packed GEMM there)
    if ((kernel == QLORA_KERNEL_AUTO || kernel == QLORA_KERNEL_SIMD) &&
        qlora__sgemm_narrow(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
        return;
#ifdef QLORA_USE_OPENBLAS
    // AUTO: cblas whenever its core is trusted (without AVX-512 it is also faster than the packed GEMM on
    // LoRA's thin rank-r shapes).
    if (qlora__use_blas(kernel, M, N, K > lda ? K : lda, ldb > ldc ? ldb : ldc)) {
        qlora__cblas(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#endif
    qlora__sgemm_packed(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 0);
}

// The matmuls on a frozen dense weight (the model's lm_head): qlora_sgemm, except that
// QLORA_COMPUTE_BF16 with more than 8 rows rounds alpha·op(A) and op(B) to bf16 as the own GEMM packs
// them and sums the exact products in fp32, as the NF4 GEMMs do (bitsandbytes' recipe keeps lm_head in
// bf16). Decoding (M <= 8) stays fp32: rounding on the fly would not read fewer bytes.
static void qlora__sgemm_frozen(const qlora_exec *ex, int trans_a, int trans_b, int64_t M, int64_t N, int64_t K,
                                float alpha, const float *A, int64_t lda, const float *B, int64_t ldb, float beta,
                                float *C, int64_t ldc) {
    if (!ex || ex->compute != QLORA_COMPUTE_BF16 || M <= QLORA__GEMV_M || K <= 0) {
        qlora_sgemm(ex, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    if (ex->kernel == QLORA_KERNEL_REF) {
        qlora__sgemm_ref(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1);
        return;
    }
    qlora__sgemm_packed(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 1);
}

#if defined(__cplusplus) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

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


// ---------------------------------------------------------------------------------------------
// JSON implementation

#include <locale.h>

// --- arena: a list of blocks, bump allocation, 16-byte aligned ---
typedef struct qlora__arena_block {
    struct qlora__arena_block *next;
    size_t used, cap;
} qlora__arena_block;

#define QLORA__ARENA_HDR ((sizeof(qlora__arena_block) + 15) & ~(size_t)15)

static void *qlora__arena_alloc(void **arena, size_t n) {
    qlora__arena_block *b = (qlora__arena_block *)*arena;
    n = (n + 15) & ~(size_t)15;
    if (n == 0) n = 16;
    if (!b || b->cap - b->used < n) {
        size_t cap = b ? b->cap * 2 : (size_t)1 << 14;
        if (cap > ((size_t)1 << 24)) cap = (size_t)1 << 24;
        if (cap < n) cap = n;
        if (cap > (size_t)INT64_MAX - QLORA__ARENA_HDR) return NULL;
        qlora__arena_block *nb = (qlora__arena_block *)qlora__alloc((int64_t)(QLORA__ARENA_HDR + cap));
        if (!nb) return NULL;
        nb->next = b;
        nb->used = 0;
        nb->cap = cap;
        *arena = nb;
        b = nb;
    }
    void *p = (char *)b + QLORA__ARENA_HDR + b->used;
    b->used += n;
    return p;
}

static void qlora__arena_free(void *arena) {
    qlora__arena_block *b = (qlora__arena_block *)arena;
    while (b) {
        qlora__arena_block *next = b->next;
        QLORA_FREE(b);
        b = next;
    }
}

// --- parser state; children of open containers wait on a shared stack until their container closes ---
typedef struct qlora__jparse {
    const char  *s;
    size_t       n, pos;
    void        *arena;
    qlora_json  *stk;        // (stk_cap) pending children
    const char **stk_keys;   // (stk_cap) their keys (objects) or NULL
    size_t      *stk_klen;   // (stk_cap)
    int64_t      stk_len, stk_cap;
    qlora_error *err;
    qlora_status st;         // first failure
} qlora__jparse;

static qlora_status qlora__jfail(qlora__jparse *p, size_t at, const char *what) {
    if (p->st != QLORA_OK) return p->st;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < p->n; i++) {
        if (p->s[i] == '\n') { line++; col = 1; } else col++;
    }
    p->st = qlora__fail(p->err, QLORA_ERR_FORMAT, "line %lu col %lu: %s", (unsigned long)line,
                        (unsigned long)col, what);
    return p->st;
}

static qlora_status qlora__jnomem(qlora__jparse *p) {
    if (p->st == QLORA_OK) p->st = qlora__fail(p->err, QLORA_ERR_NOMEM, "out of memory while parsing JSON");
    return p->st;
}

static void qlora__jskip_ws(qlora__jparse *p) {
    while (p->pos < p->n) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

// Length of the valid UTF-8 sequence at s[0..n), or 0 if invalid (overlong, surrogate, > U+10FFFF).
static size_t qlora__utf8_len(const unsigned char *s, size_t n, uint32_t *cp) {
    unsigned c = s[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c < 0xC2) return 0;
    if (c < 0xE0) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
        return 2;
    }
    if (c < 0xF0) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[1] < 0xA0) return 0;  // overlong
        if (c == 0xED && s[1] > 0x9F) return 0;  // UTF-16 surrogate
        *cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        if (c == 0xF0 && s[1] < 0x90) return 0;  // overlong
        if (c == 0xF4 && s[1] > 0x8F) return 0;  // > U+10FFFF
        *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) | (s[3] & 0x3Fu);
        return 4;
    }
    return 0;
}

static size_t qlora__utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int qlora__hex4(const char *s, uint32_t *out) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (uint32_t)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (uint32_t)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (uint32_t)(c - 'A' + 10);
        else return 0;
    }
    *out = v;
    return 1;
}

// Parses a string at p->pos (the opening quote) into arena memory.
static qlora_status qlora__jstring(qlora__jparse *p, const char **out, size_t *out_len) {
    size_t start = ++p->pos, i = start;
    // Pass 1: find the closing quote and validate; the decoded text is never longer than the raw one.
    while (1) {
        if (i >= p->n) return qlora__jfail(p, start - 1, "unterminated string");
        unsigned char c = (unsigned char)p->s[i];
        if (c == '"') break;
        if (c < 0x20) return qlora__jfail(p, i, "control character in string (must be escaped)");
        if (c == '\\') {
            if (i + 1 >= p->n) return qlora__jfail(p, start - 1, "unterminated string");
            char e = p->s[i + 1];
            if (e == 'u') {
                uint32_t u, lo;
                if (i + 6 > p->n || !qlora__hex4(p->s + i + 2, &u)) return qlora__jfail(p, i, "bad \\u escape");
                if (u >= 0xDC00 && u <= 0xDFFF) return qlora__jfail(p, i, "lone low surrogate in \\u escape");
                if (u >= 0xD800 && u <= 0xDBFF) {
                    if (i + 12 > p->n || p->s[i + 6] != '\\' || p->s[i + 7] != 'u' ||
                        !qlora__hex4(p->s + i + 8, &lo) || lo < 0xDC00 || lo > 0xDFFF)
                        return qlora__jfail(p, i, "high surrogate not followed by a low surrogate escape");
                    i += 12;
                } else {
                    i += 6;
                }
                continue;
            }
            if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' && e != 'r' && e != 't')
                return qlora__jfail(p, i, "invalid escape in string");
            i += 2;
            continue;
        }
        uint32_t cp;
        size_t k = qlora__utf8_len((const unsigned char *)p->s + i, p->n - i, &cp);
        if (!k) return qlora__jfail(p, i, "invalid UTF-8 in string");
        i += k;
    }
    size_t raw = i - start;
    char *o = (char *)qlora__arena_alloc(&p->arena, raw + 1);
    if (!o) return qlora__jnomem(p);
    // Pass 2: decode.
    size_t w = 0;
    for (size_t j = start; j < i;) {
        char c = p->s[j];
        if (c != '\\') { o[w++] = c; j++; continue; }
        char e = p->s[j + 1];
        switch (e) {
        case 'b': o[w++] = '\b'; j += 2; break;
        case 'f': o[w++] = '\f'; j += 2; break;
        case 'n': o[w++] = '\n'; j += 2; break;
        case 'r': o[w++] = '\r'; j += 2; break;
        case 't': o[w++] = '\t'; j += 2; break;
        case 'u': {
            uint32_t u, lo;
            qlora__hex4(p->s + j + 2, &u);
            j += 6;
            if (u >= 0xD800 && u <= 0xDBFF) {
                qlora__hex4(p->s + j + 2, &lo);
                u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                j += 6;
            }
            w += qlora__utf8_put(o + w, u);
            break;
        }
        default: o[w++] = e; j += 2; break;  // " \ /
        }
    }
    o[w] = 0;
    *out = o;
    *out_len = w;
    p->pos = i + 1;
    return QLORA_OK;
}

static qlora_status qlora__jnumber(qlora__jparse *p, qlora_json *v) {
    size_t start = p->pos, i = start;
    const char *s = p->s;
    int integral = 1;
    if (i < p->n && s[i] == '-') i++;
    if (i >= p->n || !(s[i] >= '0' && s[i] <= '9')) return qlora__jfail(p, start, "invalid number");
    if (s[i] == '0') {
        i++;
        if (i < p->n && s[i] >= '0' && s[i] <= '9') return qlora__jfail(p, start, "leading zero in number");
    } else {
        while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < p->n && s[i] == '.') {
        integral = 0;
        i++;
        if (i >= p->n || !(s[i] >= '0' && s[i] <= '9')) return qlora__jfail(p, i, "digit expected after '.'");
        while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
    }
    if (i < p->n && (s[i] == 'e' || s[i] == 'E')) {
        integral = 0;
        i++;
        if (i < p->n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= p->n || !(s[i] >= '0' && s[i] <= '9')) return qlora__jfail(p, i, "digit expected in exponent");
        while (i < p->n && s[i] >= '0' && s[i] <= '9') i++;
    }
    size_t len = i - start;
    v->type = QLORA_JSON_NUMBER;
    // Exact int64 for integer literals.
    if (integral) {
        int neg = s[start] == '-';
        uint64_t acc = 0, lim = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
        int fits = 1;
        for (size_t j = start + (size_t)neg; j < i; j++) {
            uint64_t d = (uint64_t)(s[j] - '0');
            if (acc > (lim - d) / 10) { fits = 0; break; }
            acc = acc * 10 + d;
        }
        if (fits) {
            v->is_integer = 1;
            v->integer = neg ? (acc == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)acc) : (int64_t)acc;
        }
    }
    // strtod needs a NUL-terminated copy; it honours the C locale's decimal point, so retry with the
    // current locale's point if the first attempt stops early.
    char small[64];
    char *buf = small;
    if (len + 1 > sizeof small) {
        buf = (char *)qlora__alloc((int64_t)len + 1);
        if (!buf) return qlora__jnomem(p);
    }
    memcpy(buf, s + start, len);
    buf[len] = 0;
    char *end = NULL;
    double d = strtod(buf, &end);
    if (end != buf + len) {
        const struct lconv *lc = localeconv();
        char *dot = strchr(buf, '.');
        if (dot && lc && lc->decimal_point && lc->decimal_point[0] && !lc->decimal_point[1]) {
            *dot = lc->decimal_point[0];
            d = strtod(buf, &end);
        }
    }
    int ok = end == buf + len;
    if (buf != small) QLORA_FREE(buf);
    if (!ok) return qlora__jfail(p, start, "invalid number");
    if (d == HUGE_VAL || d == -HUGE_VAL) return qlora__jfail(p, start, "number out of range");
    v->number = d;
    p->pos = i;
    return QLORA_OK;
}

static qlora_status qlora__jpush(qlora__jparse *p, const qlora_json *v, const char *key, size_t klen) {
    if (p->stk_len == p->stk_cap) {
        int64_t cap = p->stk_cap ? p->stk_cap * 2 : 256;
        qlora_json *ns = (qlora_json *)qlora__alloc(cap * (int64_t)sizeof(qlora_json));
        const char **nk = (const char **)qlora__alloc(cap * (int64_t)sizeof(char *));
        size_t *nl = (size_t *)qlora__alloc(cap * (int64_t)sizeof(size_t));
        if (!ns || !nk || !nl) {
            QLORA_FREE(ns); QLORA_FREE(nk); QLORA_FREE(nl);
            return qlora__jnomem(p);
        }
        if (p->stk_len) {
            memcpy(ns, p->stk, (size_t)p->stk_len * sizeof(qlora_json));
            memcpy(nk, p->stk_keys, (size_t)p->stk_len * sizeof(char *));
            memcpy(nl, p->stk_klen, (size_t)p->stk_len * sizeof(size_t));
        }
        QLORA_FREE(p->stk); QLORA_FREE(p->stk_keys); QLORA_FREE(p->stk_klen);
        p->stk = ns; p->stk_keys = nk; p->stk_klen = nl;
        p->stk_cap = cap;
    }
    p->stk[p->stk_len] = *v;
    p->stk_keys[p->stk_len] = key;
    p->stk_klen[p->stk_len] = klen;
    p->stk_len++;
    return QLORA_OK;
}

// Moves the children pushed since `base` into arena arrays owned by container v.
static qlora_status qlora__jcollect(qlora__jparse *p, qlora_json *v, int64_t base, int is_object) {
    int64_t cnt = p->stk_len - base;
    v->count = cnt;
    if (cnt > 0) {
        v->items = (qlora_json *)qlora__arena_alloc(&p->arena, (size_t)cnt * sizeof(qlora_json));
        if (!v->items) return qlora__jnomem(p);
        memcpy(v->items, p->stk + base, (size_t)cnt * sizeof(qlora_json));
        if (is_object) {
            v->keys = (const char **)qlora__arena_alloc(&p->arena, (size_t)cnt * sizeof(char *));
            v->key_lens = (size_t *)qlora__arena_alloc(&p->arena, (size_t)cnt * sizeof(size_t));
            if (!v->keys || !v->key_lens) return qlora__jnomem(p);
            memcpy((void *)v->keys, p->stk_keys + base, (size_t)cnt * sizeof(char *));
            memcpy(v->key_lens, p->stk_klen + base, (size_t)cnt * sizeof(size_t));
        }
    }
    p->stk_len = base;
    return QLORA_OK;
}

static qlora_status qlora__jvalue(qlora__jparse *p, qlora_json *v, int depth) {
    memset(v, 0, sizeof *v);
    qlora__jskip_ws(p);
    if (p->pos >= p->n) return qlora__jfail(p, p->pos, "unexpected end of input, value expected");
    char c = p->s[p->pos];
    if (c == '{' || c == '[') {
        int is_object = c == '{';
        size_t open_at = p->pos;
        if (depth >= QLORA_JSON_MAX_DEPTH) return qlora__jfail(p, p->pos, "nesting too deep");
        v->type = is_object ? QLORA_JSON_OBJECT : QLORA_JSON_ARRAY;
        int64_t base = p->stk_len;
        p->pos++;
        qlora__jskip_ws(p);
        if (p->pos < p->n && p->s[p->pos] == (is_object ? '}' : ']')) {
            p->pos++;
            return QLORA_OK;
        }
        while (1) {
            const char *key = NULL;
            size_t klen = 0;
            qlora_json child;
            if (is_object) {
                qlora__jskip_ws(p);
                if (p->pos >= p->n) return qlora__jfail(p, open_at, "unterminated object");
                if (p->s[p->pos] != '"') return qlora__jfail(p, p->pos, "object key (string) expected");
                if (qlora__jstring(p, &key, &klen) != QLORA_OK) return p->st;
                qlora__jskip_ws(p);
                if (p->pos >= p->n || p->s[p->pos] != ':') return qlora__jfail(p, p->pos, "':' expected after key");
                p->pos++;
            }
            if (qlora__jvalue(p, &child, depth + 1) != QLORA_OK) return p->st;
            if (qlora__jpush(p, &child, key, klen) != QLORA_OK) return p->st;
            qlora__jskip_ws(p);
            if (p->pos >= p->n) return qlora__jfail(p, open_at, is_object ? "unterminated object" : "unterminated array");
            c = p->s[p->pos];
            if (c == ',') { p->pos++; continue; }
            if (c == (is_object ? '}' : ']')) { p->pos++; break; }
            return qlora__jfail(p, p->pos, is_object ? "',' or '}' expected" : "',' or ']' expected");
        }
        return qlora__jcollect(p, v, base, is_object);
    }
    if (c == '"') {
        v->type = QLORA_JSON_STRING;
        return qlora__jstring(p, &v->str, &v->str_len);
    }
    if (c == '-' || (c >= '0' && c <= '9')) return qlora__jnumber(p, v);
    static const char *const lits[3] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t l = strlen(lits[k]);
        if (p->n - p->pos >= l && memcmp(p->s + p->pos, lits[k], l) == 0) {
            v->type = k == 2 ? QLORA_JSON_NULL : QLORA_JSON_BOOL;
            v->boolean = k == 0;
            p->pos += l;
            return QLORA_OK;
        }
    }
    return qlora__jfail(p, p->pos, "invalid value");
}

QLORADEF qlora_status qlora_json_parse(qlora_json_doc *doc, const char *text, size_t len, qlora_error *err) {
    if (!doc) return qlora__fail(err, QLORA_ERR_ARG, "qlora_json_parse: doc is NULL");
    memset(doc, 0, sizeof *doc);
    if (!text && len) return qlora__fail(err, QLORA_ERR_ARG, "qlora_json_parse: text is NULL");
    qlora__jparse p;
    memset(&p, 0, sizeof p);
    p.s = text ? text : "";
    p.n = len;
    p.err = err;
    p.st = QLORA_OK;
    if (qlora__jvalue(&p, &doc->root, 0) == QLORA_OK) {
        qlora__jskip_ws(&p);
        if (p.pos < p.n) qlora__jfail(&p, p.pos, "unexpected data after the JSON value");
    }
    QLORA_FREE(p.stk);
    QLORA_FREE(p.stk_keys);
    QLORA_FREE(p.stk_klen);
    if (p.st != QLORA_OK) {
        qlora__arena_free(p.arena);
        memset(doc, 0, sizeof *doc);
        return p.st;
    }
    doc->arena = p.arena;
    return QLORA_OK;
}

QLORADEF void qlora_json_free(qlora_json_doc *doc) {
    if (!doc) return;
    qlora__arena_free(doc->arena);
    memset(doc, 0, sizeof *doc);
}

QLORADEF qlora_status qlora_json_read_file(qlora_json_doc *doc, const char *path, qlora_error *err) {
    if (!doc || !path) return qlora__fail(err, QLORA_ERR_ARG, "qlora_json_read_file: NULL argument");
    memset(doc, 0, sizeof *doc);
    void *data = NULL;
    size_t n = 0;
    qlora_status st = qlora_read_file(path, &data, &n, err);
    if (st != QLORA_OK) return st;
    const char *t = (const char *)data;
    if (n >= 3 && (unsigned char)t[0] == 0xEF && (unsigned char)t[1] == 0xBB && (unsigned char)t[2] == 0xBF) {
        t += 3;  // a UTF-8 byte order mark is tolerated in files
        n -= 3;
    }
    qlora_error e;
    e.detail[0] = 0;
    st = qlora_json_parse(doc, t, n, &e);
    QLORA_FREE(data);
    if (st != QLORA_OK) return qlora__fail(err, st, "%s: %s", path, e.detail);
    return QLORA_OK;
}

QLORADEF const qlora_json *qlora_json_get(const qlora_json *obj, const char *key) {
    if (!obj || !key || obj->type != QLORA_JSON_OBJECT) return NULL;
    size_t kl = strlen(key);
    for (int64_t i = obj->count - 1; i >= 0; i--)
        if (obj->key_lens[i] == kl && memcmp(obj->keys[i], key, kl) == 0) return &obj->items[i];
    return NULL;
}

QLORADEF const qlora_json *qlora_json_at(const qlora_json *arr, int64_t i) {
    if (!arr || arr->type != QLORA_JSON_ARRAY || i < 0 || i >= arr->count) return NULL;
    return &arr->items[i];
}

QLORADEF int qlora_json_as_int(const qlora_json *v, int64_t *out) {
    if (!v || v->type != QLORA_JSON_NUMBER) return 0;
    if (v->is_integer) { *out = v->integer; return 1; }
    double d = v->number;
    if (d != floor(d) || !(d >= -9223372036854775808.0 && d < 9223372036854775808.0)) return 0;
    *out = (int64_t)d;
    return 1;
}

QLORADEF double qlora_json_get_number(const qlora_json *obj, const char *key, double def) {
    const qlora_json *v = qlora_json_get(obj, key);
    return v && v->type == QLORA_JSON_NUMBER ? v->number : def;
}

QLORADEF int64_t qlora_json_get_int(const qlora_json *obj, const char *key, int64_t def) {
    int64_t r;
    return qlora_json_as_int(qlora_json_get(obj, key), &r) ? r : def;
}

QLORADEF const char *qlora_json_get_string(const qlora_json *obj, const char *key, const char *def) {
    const qlora_json *v = qlora_json_get(obj, key);
    return v && v->type == QLORA_JSON_STRING ? v->str : def;
}

QLORADEF int qlora_json_get_bool(const qlora_json *obj, const char *key, int def) {
    const qlora_json *v = qlora_json_get(obj, key);
    return v && v->type == QLORA_JSON_BOOL ? v->boolean : def;
}

// --- writer ---

static void qlora__jw_put(qlora_json_writer *w, const char *s, size_t n) {
    if (w->failed) return;
    if (w->len + n + 1 > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n + 1) {
            if (cap > SIZE_MAX / 2) { w->failed = QLORA_ERR_NOMEM; return; }
            cap *= 2;
        }
        char *nb = (char *)qlora__alloc((int64_t)cap);
        if (!nb) { w->failed = QLORA_ERR_NOMEM; return; }
        if (w->len) memcpy(nb, w->buf, w->len);
        QLORA_FREE(w->buf);
        w->buf = nb;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, s, n);
    w->len += n;
    w->buf[w->len] = 0;
}

static void qlora__jw_newline(qlora_json_writer *w, int level) {
    static const char spaces[] = "                                ";
    qlora__jw_put(w, "\n", 1);
    int64_t n = (int64_t)w->indent * level;
    while (n > 0) {
        int64_t k = n < 32 ? n : 32;
        qlora__jw_put(w, spaces, (size_t)k);
        n -= k;
    }
}

// Separator/indentation before an array element or object key. Returns 0 if the writer failed.
static int qlora__jw_item(qlora_json_writer *w) {
    if (w->failed) return 0;
    if (w->depth == 0) return 1;
    int d = w->depth - 1;
    if (w->has_items[d]) qlora__jw_put(w, w->indent == 0 ? ", " : ",", w->indent == 0 ? 2 : 1);
    if (w->indent > 0) qlora__jw_newline(w, w->depth);
    w->has_items[d] = 1;
    return !w->failed;
}

// Called before any value: checks the position and writes the separator.
static int qlora__jw_value(qlora_json_writer *w) {
    if (w->failed) return 0;
    if (w->depth == 0) {
        if (w->done) { w->failed = QLORA_ERR_ARG; return 0; }  // a second top-level value
        return 1;
    }
    if (w->after_key) { w->after_key = 0; return 1; }
    if (w->is_object[w->depth - 1]) { w->failed = QLORA_ERR_ARG; return 0; }  // value without a key
    return qlora__jw_item(w);
}

static void qlora__jw_scalar_done(qlora_json_writer *w) {
    if (w->depth == 0) w->done = 1;
}

QLORADEF void qlora_jw_init(qlora_json_writer *w, int indent, int ascii_only) {
    memset(w, 0, sizeof *w);
    w->indent = indent < 0 ? -1 : indent;
    w->ascii_only = ascii_only ? 1 : 0;
}

QLORADEF void qlora_jw_free(qlora_json_writer *w) {
    if (!w) return;
    QLORA_FREE(w->buf);
    memset(w, 0, sizeof *w);
}

static void qlora__jw_begin(qlora_json_writer *w, int is_object) {
    if (!qlora__jw_value(w)) return;
    if (w->depth >= QLORA_JW_MAX_DEPTH) { w->failed = QLORA_ERR_ARG; return; }
    qlora__jw_put(w, is_object ? "{" : "[", 1);
    w->is_object[w->depth] = (uint8_t)is_object;
    w->has_items[w->depth] = 0;
    w->depth++;
}

static void qlora__jw_end(qlora_json_writer *w, int is_object) {
    if (w->failed) return;
    if (w->depth == 0 || w->after_key || w->is_object[w->depth - 1] != is_object) {
        w->failed = QLORA_ERR_ARG;
        return;
    }
    w->depth--;
    if (w->has_items[w->depth] && w->indent > 0) qlora__jw_newline(w, w->depth);
    qlora__jw_put(w, is_object ? "}" : "]", 1);
    if (w->depth == 0) w->done = 1;
}

QLORADEF void qlora_jw_object_begin(qlora_json_writer *w) { qlora__jw_begin(w, 1); }
QLORADEF void qlora_jw_object_end(qlora_json_writer *w) { qlora__jw_end(w, 1); }
QLORADEF void qlora_jw_array_begin(qlora_json_writer *w) { qlora__jw_begin(w, 0); }
QLORADEF void qlora_jw_array_end(qlora_json_writer *w) { qlora__jw_end(w, 0); }

static void qlora__jw_quoted(qlora_json_writer *w, const char *s, size_t n) {
    static const char hex[] = "0123456789abcdef";
    qlora__jw_put(w, "\"", 1);
    size_t run = 0;  // start of the pending run of bytes copied verbatim
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        const char *esc = NULL;
        char ubuf[16];
        size_t adv = 1;
        if (c == '"') esc = "\\\"";
        else if (c == '\\') esc = "\\\\";
        else if (c == '\n') esc = "\\n";
        else if (c == '\r') esc = "\\r";
        else if (c == '\t') esc = "\\t";
        else if (c == '\b') esc = "\\b";
        else if (c == '\f') esc = "\\f";
        else if (c < 0x20) {
            ubuf[0] = '\\'; ubuf[1] = 'u'; ubuf[2] = '0'; ubuf[3] = '0';
            ubuf[4] = hex[c >> 4]; ubuf[5] = hex[c & 15]; ubuf[6] = 0;
            esc = ubuf;
        } else if (c >= 0x80) {
            uint32_t cp = 0xFFFD;
            size_t k = qlora__utf8_len((const unsigned char *)s + i, n - i, &cp);
            if (k == 0) { cp = 0xFFFD; k = 1; }
            adv = k;
            if (w->ascii_only) {
                uint32_t u[2];
                int nu = 1;
                if (cp >= 0x10000) {
                    u[0] = 0xD800 + ((cp - 0x10000) >> 10);
                    u[1] = 0xDC00 + ((cp - 0x10000) & 0x3FF);
                    nu = 2;
                } else {
                    u[0] = cp;
                }
                size_t o = 0;
                for (int j = 0; j < nu; j++) {
                    ubuf[o++] = '\\'; ubuf[o++] = 'u';
                    for (int sh = 12; sh >= 0; sh -= 4) ubuf[o++] = hex[(u[j] >> sh) & 15];
                }
                ubuf[o] = 0;
                esc = ubuf;
            } else if (k == 1 && cp == 0xFFFD) {
                esc = "\xEF\xBF\xBD";  // invalid byte -> U+FFFD
            }
        }
        if (esc) {
            qlora__jw_put(w, s + run, i - run);
            qlora__jw_put(w, esc, strlen(esc));
            i += adv;
            run = i;
        } else {
            i += adv;
        }
    }
    qlora__jw_put(w, s + run, n - run);
    qlora__jw_put(w, "\"", 1);
}

QLORADEF void qlora_jw_key(qlora_json_writer *w, const char *key) {
    if (w->failed) return;
    if (!key || w->depth == 0 || !w->is_object[w->depth - 1] || w->after_key) {
        w->failed = QLORA_ERR_ARG;
        return;
    }
    if (!qlora__jw_item(w)) return;
    qlora__jw_quoted(w, key, strlen(key));
    if (w->indent < 0) qlora__jw_put(w, ":", 1);
    else qlora__jw_put(w, ": ", 2);
    w->after_key = 1;
}

QLORADEF void qlora_jw_string_n(qlora_json_writer *w, const char *s, size_t n) {
    if (!s) { qlora_jw_null(w); return; }
    if (!qlora__jw_value(w)) return;
    qlora__jw_quoted(w, s, n);
    qlora__jw_scalar_done(w);
}

QLORADEF void qlora_jw_string(qlora_json_writer *w, const char *s) {
    qlora_jw_string_n(w, s, s ? strlen(s) : 0);
}

QLORADEF void qlora_jw_raw(qlora_json_writer *w, const char *json) {
    if (!json) { w->failed = w->failed ? w->failed : QLORA_ERR_ARG; return; }
    if (!qlora__jw_value(w)) return;
    qlora__jw_put(w, json, strlen(json));
    qlora__jw_scalar_done(w);
}

QLORADEF void qlora_jw_null(qlora_json_writer *w) { qlora_jw_raw(w, "null"); }
QLORADEF void qlora_jw_bool(qlora_json_writer *w, int b) { qlora_jw_raw(w, b ? "true" : "false"); }

QLORADEF void qlora_jw_int(qlora_json_writer *w, int64_t x) {
    char buf[32];
    snprintf(buf, sizeof buf, "%lld", (long long)x);
    qlora_jw_raw(w, buf);
}

QLORADEF int qlora_format_double(char *buf, double x, int as_float) {
    if (x != x) { strcpy(buf, "nan"); return 3; }
    if (x == HUGE_VAL) { strcpy(buf, "inf"); return 3; }
    if (x == -HUGE_VAL) { strcpy(buf, "-inf"); return 4; }
    char *o = buf;
    if (x < 0 || (x == 0 && 1.0 / x < 0)) { *o++ = '-'; x = -x; }
    if (x == 0) { strcpy(o, "0.0"); return (int)(o - buf) + 3; }
    // Shortest precision whose correctly rounded %e form reads back as the same value.
    char e[40];
    int maxp = as_float ? 9 : 17;
    for (int prec = 1; prec <= maxp; prec++) {
        snprintf(e, sizeof e, "%.*e", prec - 1, x);
        if (as_float ? (strtof(e, NULL) == (float)x) : (strtod(e, NULL) == x)) break;
    }
    // Split "d.ddde±XX" into digits and decimal exponent (locale-independent: skip non-digits).
    char dig[24];
    int nd = 0, i = 0;
    for (; e[i] && e[i] != 'e' && e[i] != 'E'; i++)
        if (e[i] >= '0' && e[i] <= '9' && nd < 23) dig[nd++] = e[i];
    while (nd > 1 && dig[nd - 1] == '0') nd--;
    int exp10 = e[i] ? atoi(e + i + 1) : 0;
    int decpt = exp10 + 1;  // digits d1 d2 ... have the decimal point after position decpt
    if (decpt > -4 && decpt <= 16) {
        if (decpt <= 0) {
            *o++ = '0'; *o++ = '.';
            for (int k = 0; k < -decpt; k++) *o++ = '0';
            for (int k = 0; k < nd; k++) *o++ = dig[k];
        } else if (decpt >= nd) {
            for (int k = 0; k < nd; k++) *o++ = dig[k];
            for (int k = nd; k < decpt; k++) *o++ = '0';
            *o++ = '.'; *o++ = '0';
        } else {
            for (int k = 0; k < nd; k++) {
                if (k == decpt) *o++ = '.';
                *o++ = dig[k];
            }
        }
        *o = 0;
    } else {
        *o++ = dig[0];
        if (nd > 1) {
            *o++ = '.';
            for (int k = 1; k < nd; k++) *o++ = dig[k];
        }
        o += sprintf(o, "e%c%02d", exp10 < 0 ? '-' : '+', exp10 < 0 ? -exp10 : exp10);
    }
    return (int)(o - buf);
}

QLORADEF void qlora_jw_double(qlora_json_writer *w, double x) {
    char buf[48];
    if (x != x || x == HUGE_VAL || x == -HUGE_VAL) { qlora_jw_null(w); return; }
    qlora_format_double(buf, x, 0);
    qlora_jw_raw(w, buf);
}

QLORADEF void qlora_jw_float(qlora_json_writer *w, float x) {
    char buf[48];
    if (x != x || x == HUGE_VALF || x == -HUGE_VALF) { qlora_jw_null(w); return; }
    qlora_format_double(buf, (double)x, 1);
    qlora_jw_raw(w, buf);
}

QLORADEF qlora_status qlora_jw_finish(qlora_json_writer *w, int trailing_newline, qlora_error *err) {
    if (!w) return qlora__fail(err, QLORA_ERR_ARG, "qlora_jw_finish: writer is NULL");
    if (!w->failed && (!w->done || w->depth != 0)) w->failed = QLORA_ERR_ARG;
    if (!w->failed && trailing_newline) qlora__jw_put(w, "\n", 1);
    if (w->failed == QLORA_ERR_NOMEM) return qlora__fail(err, QLORA_ERR_NOMEM, "JSON writer: out of memory");
    if (w->failed)
        return qlora__fail(err, (qlora_status)w->failed,
                           "JSON writer: misuse (key outside an object, value without key, unbalanced "
                           "begin/end, nesting > %d, or incomplete value) near byte %lu",
                           QLORA_JW_MAX_DEPTH, (unsigned long)w->len);
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// safetensors implementation

#if (defined(__unix__) || defined(__unix) || defined(__APPLE__)) && !defined(QLORA_NO_POSIX)
#define QLORA__POSIX 1
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#if !defined(QLORA_NO_MMAP)
#include <sys/mman.h>
#define QLORA__MMAP 1
#endif
#endif

static const struct { const char *name; int bits; } qlora__dtypes[QLORA_DTYPE_COUNT] = {
    {"F32", 32}, {"F16", 16}, {"BF16", 16}, {"F64", 64}, {"U8", 8}, {"I8", 8}, {"I16", 16}, {"U16", 16},
    {"I32", 32}, {"U32", 32}, {"I64", 64}, {"U64", 64}, {"BOOL", 8}, {"F8_E4M3", 8}, {"F8_E5M2", 8},
    {"F8_E8M0", 8}, {"F8_E4M3FNUZ", 8}, {"F8_E5M2FNUZ", 8}, {"F6_E2M3", 6}, {"F6_E3M2", 6}, {"F4", 4},
    {"C64", 64}};

QLORADEF const char *qlora_dtype_name(qlora_dtype dt) {
    return ((int)dt >= 0 && dt < QLORA_DTYPE_COUNT) ? qlora__dtypes[dt].name : "?";
}

QLORADEF int qlora_dtype_bits(qlora_dtype dt) {
    return ((int)dt >= 0 && dt < QLORA_DTYPE_COUNT) ? qlora__dtypes[dt].bits : 0;
}

QLORADEF int qlora_dtype_from_name(const char *name, size_t n, qlora_dtype *out) {
    if (!name) return 0;
    for (int i = 0; i < QLORA_DTYPE_COUNT; i++) {
        const char *d = qlora__dtypes[i].name;
        if (strlen(d) == n && memcmp(d, name, n) == 0) {
            *out = (qlora_dtype)i;
            return 1;
        }
    }
    return 0;
}

static char *qlora__strdup(const char *s) {
    size_t n = strlen(s);
    char *r = (char *)qlora__alloc((int64_t)n + 1);
    if (r) memcpy(r, s, n + 1);
    return r;
}

// Directory part of path ("." when none), freshly allocated.
static char *qlora__dirname(const char *path) {
    const char *slash = strrchr(path, '/');
#ifdef _WIN32
    const char *bs = strrchr(path, '\\');
    if (bs && (!slash || bs > slash)) slash = bs;
#endif
    if (!slash) return qlora__strdup(".");
    size_t n = slash == path ? 1 : (size_t)(slash - path);
    char *r = (char *)qlora__alloc((int64_t)n + 1);
    if (r) { memcpy(r, path, n); r[n] = 0; }
    return r;
}

// "a" + "/" + "b", freshly allocated.
static char *qlora__path_join(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    char *r = (char *)qlora__alloc((int64_t)(na + nb + 2));
    if (!r) return NULL;
    memcpy(r, a, na);
    size_t k = na;
    if (na && a[na - 1] != '/') r[k++] = '/';
    memcpy(r + k, b, nb + 1);
    return r;
}

static const char *qlora__errstr(void) {
#ifdef QLORA__POSIX
    return strerror(errno);
#else
    return "system error";
#endif
}

// --- whole-file read -------------------------------------------------------------------------

QLORADEF qlora_status qlora_read_file(const char *path, void **data, size_t *size, qlora_error *err) {
    if (!path || !data || !size) return qlora__fail(err, QLORA_ERR_ARG, "qlora_read_file: NULL argument");
    *data = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return qlora__fail(err, QLORA_ERR_IO, "%s: cannot open: %s", path, qlora__errstr());
    // Read in growing chunks (works for pipes too and never trusts a size from elsewhere).
    size_t cap = 1 << 16, len = 0;
    char *buf = (char *)qlora__alloc((int64_t)cap);
    if (!buf) { fclose(f); return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path); }
    while (1) {
        if (len + 1 >= cap) {
            if (cap > SIZE_MAX / 4) { QLORA_FREE(buf); fclose(f); return qlora__fail(err, QLORA_ERR_NOMEM, "%s: file too large", path); }
            char *nb = (char *)qlora__alloc((int64_t)cap * 2);
            if (!nb) { QLORA_FREE(buf); fclose(f); return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path); }
            memcpy(nb, buf, len);
            QLORA_FREE(buf);
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - 1 - len, f);
        len += got;
        if (got == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) { QLORA_FREE(buf); return qlora__fail(err, QLORA_ERR_IO, "%s: read error", path); }
    buf[len] = 0;
    *data = buf;
    *size = len;
    return QLORA_OK;
}

// --- conversions -----------------------------------------------------------------------------

static inline uint32_t qlora__f32_bits(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float    qlora__bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

QLORADEF uint16_t qlora_f16_from_f32(float x) {
    uint32_t u = qlora__f32_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7FFFFFFFu;
    if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00u);           // NaN -> quiet NaN (as torch)
    if (a >= 0x477FF000u) return (uint16_t)(sign | 0x7C00u);          // >= 65520 rounds to inf
    if (a >= 0x38800000u) {                                            // normal half (>= 2^-14)
        a += 0xFFFu + ((a >> 13) & 1u);                                // round to nearest even on bit 13
        return (uint16_t)(sign | ((a - 0x38000000u) >> 13));           // rebias 127 -> 15
    }
    if (a <= 0x33000000u) return sign;                                 // <= 2^-25 rounds to 0 (tie -> even)
    // Subnormal half: value = m · 2^(e-150) = h · 2^-24  =>  h = m >> (126 - e), rounded to nearest even.
    uint32_t e = a >> 23, m = (a & 0x7FFFFFu) | 0x800000u, sh = 126u - e;
    uint32_t h = m >> sh, rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1u);
    if (rem > half || (rem == half && (h & 1u))) h++;
    return (uint16_t)(sign | h);
}

QLORADEF float qlora_f16_to_f32_1(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;
    if (e == 0) {  // zero or subnormal: m · 2^-24, exact in float
        float v = (float)m * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    if (e == 31) return qlora__bits_f32(sign | 0x7F800000u | (m << 13));
    return qlora__bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

QLORADEF uint16_t qlora_bf16_from_f32(float x) {
    uint32_t u = qlora__f32_bits(x);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0u;  // NaN (as torch)
    u += 0x7FFFu + ((u >> 16) & 1u);                      // round to nearest even
    return (uint16_t)(u >> 16);
}

QLORADEF float qlora_bf16_to_f32_1(uint16_t h) { return qlora__bits_f32((uint32_t)h << 16); }

QLORADEF void qlora_f32_to_f16(uint16_t *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = qlora_f16_from_f32(x[i]);
}
QLORADEF void qlora_f16_to_f32(float *out, const uint16_t *h, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = qlora_f16_to_f32_1(h[i]);
}
QLORADEF void qlora_f32_to_bf16(uint16_t *out, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = qlora_bf16_from_f32(x[i]);
}
QLORADEF void qlora_bf16_to_f32(float *out, const uint16_t *h, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = qlora_bf16_to_f32_1(h[i]);
}

// Little-endian loads from possibly unaligned bytes (endian-independent).
static inline uint16_t qlora__ld16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t qlora__ld32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t qlora__ld64(const uint8_t *p) {
    return (uint64_t)qlora__ld32(p) | ((uint64_t)qlora__ld32(p + 4) << 32);
}

QLORADEF qlora_status qlora_convert_to_f32(float *out, const void *src, qlora_dtype dt, int64_t n,
                                           qlora_error *err) {
    const uint8_t *p = (const uint8_t *)src;
    if (dt != QLORA_DTYPE_F32 && dt != QLORA_DTYPE_F16 && dt != QLORA_DTYPE_BF16 && dt != QLORA_DTYPE_F64)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "cannot convert dtype %s to F32", qlora_dtype_name(dt));
    if (n < 0) return qlora__fail(err, QLORA_ERR_ARG, "qlora_convert_to_f32: negative count");
    if (n > 0 && (!out || !src)) return qlora__fail(err, QLORA_ERR_ARG, "qlora_convert_to_f32: NULL buffer");
    switch (dt) {
    case QLORA_DTYPE_F32:
        for (int64_t i = 0; i < n; i++) out[i] = qlora__bits_f32(qlora__ld32(p + 4 * i));
        return QLORA_OK;
    case QLORA_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) out[i] = qlora_f16_to_f32_1(qlora__ld16(p + 2 * i));
        return QLORA_OK;
    case QLORA_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) out[i] = qlora_bf16_to_f32_1(qlora__ld16(p + 2 * i));
        return QLORA_OK;
    case QLORA_DTYPE_F64:
        for (int64_t i = 0; i < n; i++) {
            uint64_t u = qlora__ld64(p + 8 * i);
            double d;
            memcpy(&d, &u, 8);
            out[i] = (float)d;
        }
        return QLORA_OK;
    default:
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "cannot convert dtype %s to F32", qlora_dtype_name(dt));
    }
}

QLORADEF qlora_status qlora_tensor_to_f32(float *out, const qlora_st_tensor *t, qlora_error *err) {
    if (!t) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tensor_to_f32: tensor is NULL");
    qlora_error e;
    qlora_status st = qlora_convert_to_f32(out, t->data, t->dtype, t->numel, &e);
    if (st != QLORA_OK) return qlora__fail(err, st, "tensor '%.120s': %s", t->name, e.detail);
    return QLORA_OK;
}

// --- reader ----------------------------------------------------------------------------------

typedef struct qlora__st_order { int64_t begin, idx; } qlora__st_order;

static int qlora__st_cmp_order(const void *a, const void *b) {
    const qlora__st_order *x = (const qlora__st_order *)a, *y = (const qlora__st_order *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

static int qlora__st_cmp_name(const void *a, const void *b) {
    const qlora_st_tensor *x = *(const qlora_st_tensor *const *)a, *y = *(const qlora_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

// A key with its length (keys may contain NUL), ordered by bytes then length.
typedef struct qlora__st_key { const char *s; size_t n; } qlora__st_key;

static int qlora__st_cmp_key(const void *a, const void *b) {
    const qlora__st_key *x = (const qlora__st_key *)a, *y = (const qlora__st_key *)b;
    int c = memcmp(x->s, y->s, x->n < y->n ? x->n : y->n);
    if (c) return c;
    return x->n < y->n ? -1 : (x->n > y->n);
}

// 1 if s is valid UTF-8 (the header is JSON text; names must survive the round trip unchanged).
static int qlora__utf8_valid(const char *s) {
    size_t n = strlen(s);
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t k = qlora__utf8_len((const unsigned char *)s + i, n - i, &cp);
        if (!k) return 0;
        i += k;
    }
    return 1;
}

// Non-negative integer literal -> *out.
static int qlora__st_uint(const qlora_json *v, int64_t *out) {
    if (!v || v->type != QLORA_JSON_NUMBER || !v->is_integer || v->integer < 0) return 0;
    *out = v->integer;
    return 1;
}

// Validates st->base[0..base_size) and fills st. `fn` names the file in errors.
static qlora_status qlora__st_parse(qlora_safetensors *st, const char *fn, qlora_error *err) {
    const uint8_t *b = (const uint8_t *)st->base;
    size_t size = st->base_size;
    if (size < 8)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: %lu bytes, too small for the 8-byte header length", fn,
                           (unsigned long)size);
    uint64_t n = qlora__ld64(b);
    if (n > QLORA_ST_MAX_HEADER)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: header length %llu exceeds the limit of %d bytes", fn,
                           (unsigned long long)n, QLORA_ST_MAX_HEADER);
    if (n > (uint64_t)(size - 8))
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: header length %llu exceeds the file size %lu - 8", fn,
                           (unsigned long long)n, (unsigned long)size);
    if (n < 2 || b[8] != '{')
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: header does not start with '{'", fn);
    st->header_size = (int64_t)n;
    st->data = b + 8 + n;
    st->data_size = (int64_t)(size - 8 - (size_t)n);

    qlora_error je;
    je.detail[0] = 0;
    qlora_status s = qlora_json_parse(&st->doc, (const char *)b + 8, (size_t)n, &je);
    if (s != QLORA_OK) return qlora__fail(err, s, "%s: header JSON: %s", fn, je.detail);
    const qlora_json *root = &st->doc.root;
    if (root->type != QLORA_JSON_OBJECT) return qlora__fail(err, QLORA_ERR_FORMAT, "%s: header is not a JSON object", fn);

    // Count tensors; check __metadata__.
    const qlora_json *meta = NULL;
    int64_t nt = 0;
    for (int64_t i = 0; i < root->count; i++) {
        if (strcmp(root->keys[i], "__metadata__") == 0 && root->key_lens[i] == 12) {
            if (meta) return qlora__fail(err, QLORA_ERR_FORMAT, "%s: duplicate __metadata__", fn);
            meta = &root->items[i];
            if (meta->type != QLORA_JSON_OBJECT && meta->type != QLORA_JSON_NULL)
                return qlora__fail(err, QLORA_ERR_FORMAT, "%s: __metadata__ is not an object", fn);
        } else {
            nt++;
        }
    }
    if (meta && meta->type == QLORA_JSON_OBJECT && meta->count > 0) {
        st->meta_keys = (const char **)qlora__alloc(meta->count * (int64_t)sizeof(char *));
        st->meta_values = (const char **)qlora__alloc(meta->count * (int64_t)sizeof(char *));
        if (!st->meta_keys || !st->meta_values) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", fn);
        for (int64_t i = 0; i < meta->count; i++) {
            if (meta->items[i].type != QLORA_JSON_STRING)
                return qlora__fail(err, QLORA_ERR_FORMAT, "%s: __metadata__ value of '%.80s' is not a string", fn,
                                   meta->keys[i]);
            st->meta_keys[i] = meta->keys[i];
            st->meta_values[i] = meta->items[i].str;
        }
        st->n_meta = meta->count;
        // Duplicate keys: sort a copy (n log n, a header may hold millions of keys).
        qlora__st_key *ks = (qlora__st_key *)qlora__alloc(meta->count * (int64_t)sizeof(qlora__st_key));
        if (!ks) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", fn);
        for (int64_t i = 0; i < meta->count; i++) { ks[i].s = meta->keys[i]; ks[i].n = meta->key_lens[i]; }
        qsort(ks, (size_t)meta->count, sizeof *ks, qlora__st_cmp_key);
        for (int64_t i = 1; i < meta->count; i++)
            if (qlora__st_cmp_key(&ks[i - 1], &ks[i]) == 0) {
                qlora_status s2 = qlora__fail(err, QLORA_ERR_FORMAT, "%s: duplicate __metadata__ key '%.80s'", fn, ks[i].s);
                QLORA_FREE(ks);
                return s2;
            }
        QLORA_FREE(ks);
    }

    // Parse every tensor entry.
    qlora_st_tensor *tmp = (qlora_st_tensor *)qlora__calloc(nt * (int64_t)sizeof(qlora_st_tensor));
    qlora__st_order *ord = (qlora__st_order *)qlora__alloc(nt * (int64_t)sizeof(qlora__st_order));
    st->tensors = (qlora_st_tensor *)qlora__calloc(nt * (int64_t)sizeof(qlora_st_tensor));
    st->by_name = (qlora_st_tensor **)qlora__alloc(nt * (int64_t)sizeof(qlora_st_tensor *));
    if (!tmp || !ord || !st->tensors || !st->by_name) {
        QLORA_FREE(tmp);
        QLORA_FREE(ord);
        return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", fn);
    }
    s = QLORA_OK;
    int64_t k = 0;
    for (int64_t i = 0; i < root->count && s == QLORA_OK; i++) {
        if (&root->items[i] == meta) continue;
        const char *name = root->keys[i];
        const qlora_json *v = &root->items[i];
        qlora_st_tensor *t = &tmp[k];
        t->name = name;
        if (strlen(name) != root->key_lens[i]) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': name contains a NUL character", fn, name);
            break;
        }
        if (v->type != QLORA_JSON_OBJECT) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': entry is not an object", fn, name);
            break;
        }
        const qlora_json *jd = NULL, *js = NULL, *jo = NULL;
        for (int64_t f = 0; f < v->count; f++) {
            const qlora_json **slot = NULL;
            if (strcmp(v->keys[f], "dtype") == 0) slot = &jd;
            else if (strcmp(v->keys[f], "shape") == 0) slot = &js;
            else if (strcmp(v->keys[f], "data_offsets") == 0) slot = &jo;
            if (!slot) continue;  // unknown fields are ignored, like the reference reader
            if (*slot) {
                s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': duplicate field '%s'", fn, name, v->keys[f]);
                break;
            }
            *slot = &v->items[f];
        }
        if (s != QLORA_OK) break;
        if (!jd || !js || !jo) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': missing '%s'", fn, name,
                            !jd ? "dtype" : !js ? "shape" : "data_offsets");
            break;
        }
        if (jd->type != QLORA_JSON_STRING || !qlora_dtype_from_name(jd->str, jd->str_len, &t->dtype)) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': unknown dtype %s%.20s%s", fn, name,
                            jd->type == QLORA_JSON_STRING ? "'" : "", jd->type == QLORA_JSON_STRING ? jd->str : "(not a string)",
                            jd->type == QLORA_JSON_STRING ? "'" : "");
            break;
        }
        if (js->type != QLORA_JSON_ARRAY || js->count > QLORA_ST_MAX_DIMS) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': shape is not an array of at most %d dims", fn,
                            name, QLORA_ST_MAX_DIMS);
            break;
        }
        t->ndim = (int32_t)js->count;
        int64_t numel = 1;
        int ovf = 0;
        for (int64_t d = 0; d < js->count; d++) {
            if (!qlora__st_uint(&js->items[d], &t->shape[d])) {
                s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': shape[%lld] is not a non-negative integer",
                                fn, name, (long long)d);
                break;
            }
            if (!qlora__mul_ok(numel, t->shape[d], &numel)) ovf = 1;
        }
        if (s != QLORA_OK) break;
        int64_t bits = 0;
        if (ovf || !qlora__mul_ok(numel, qlora_dtype_bits(t->dtype), &bits)) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': element count overflows", fn, name);
            break;
        }
        int64_t ob, oe;
        if (jo->type != QLORA_JSON_ARRAY || jo->count != 2 || !qlora__st_uint(&jo->items[0], &ob) ||
            !qlora__st_uint(&jo->items[1], &oe)) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': data_offsets is not [begin, end] of non-negative integers",
                            fn, name);
            break;
        }
        if (ob > oe) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': data_offsets [%lld, %lld] has begin > end", fn,
                            name, (long long)ob, (long long)oe);
            break;
        }
        if (oe > st->data_size) {
            s = qlora__fail(err, QLORA_ERR_FORMAT,
                            "%s: tensor '%.80s': data_offsets [%lld, %lld] run past the end of the %lld-byte data buffer",
                            fn, name, (long long)ob, (long long)oe, (long long)st->data_size);
            break;
        }
        if (bits % 8 != 0 || bits / 8 != oe - ob) {
            s = qlora__fail(err, QLORA_ERR_FORMAT,
                            "%s: tensor '%.80s': %s with %lld elements needs %lld bits but data_offsets [%lld, %lld] span %lld bytes",
                            fn, name, qlora_dtype_name(t->dtype), (long long)numel, (long long)bits, (long long)ob,
                            (long long)oe, (long long)(oe - ob));
            break;
        }
        t->numel = numel;
        t->nbytes = oe - ob;
        t->offset = ob;
        t->data = st->data + ob;
        ord[k].begin = ob;
        ord[k].idx = k;
        k++;
    }
    if (s == QLORA_OK) {
        // File order; the buffer must be tiled exactly: each begin equals the previous end.
        qsort(ord, (size_t)nt, sizeof *ord, qlora__st_cmp_order);
        int64_t expect = 0;
        for (int64_t i = 0; i < nt && s == QLORA_OK; i++) {
            const qlora_st_tensor *t = &tmp[ord[i].idx];
            if (t->offset != expect)
                s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': data_offsets begin %lld but %s at %lld (%s)",
                                fn, t->name, (long long)t->offset, i ? "the previous tensor ends" : "the buffer starts",
                                (long long)expect, t->offset > expect ? "hole" : "overlap");
            expect = t->offset + t->nbytes;
            st->tensors[i] = *t;
        }
        if (s == QLORA_OK && expect != st->data_size)
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensors cover %lld bytes but the data buffer has %lld (%s)", fn,
                            (long long)expect, (long long)st->data_size,
                            nt ? "trailing bytes after the last tensor" : "no tensors");
    }
    QLORA_FREE(tmp);
    QLORA_FREE(ord);
    if (s != QLORA_OK) return s;
    st->n_tensors = nt;
    for (int64_t i = 0; i < nt; i++) st->by_name[i] = &st->tensors[i];
    qsort(st->by_name, (size_t)nt, sizeof *st->by_name, qlora__st_cmp_name);
    for (int64_t i = 1; i < nt; i++)
        if (strcmp(st->by_name[i - 1]->name, st->by_name[i]->name) == 0)
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': duplicate tensor name", fn, st->by_name[i]->name);
    return QLORA_OK;
}

QLORADEF void qlora_safetensors_close(qlora_safetensors *st) {
    if (!st) return;
    if (st->base) {
#ifdef QLORA__MMAP
        if (st->mapped) {
            munmap(st->base, st->base_size);
            close(st->fd);
        }
        else
#endif
        if (st->owns_base) QLORA_FREE(st->base);
    }
    qlora_json_free(&st->doc);
    QLORA_FREE(st->path);
    QLORA_FREE(st->tensors);
    QLORA_FREE(st->by_name);
    QLORA_FREE((void *)st->meta_keys);
    QLORA_FREE((void *)st->meta_values);
    memset(st, 0, sizeof *st);
}

QLORADEF qlora_status qlora_safetensors_open_memory(qlora_safetensors *st, const void *buf, size_t size, int copy,
                                                    const char *name, qlora_error *err) {
    if (!st) return qlora__fail(err, QLORA_ERR_ARG, "qlora_safetensors_open_memory: st is NULL");
    memset(st, 0, sizeof *st);
    if (!name) name = "<memory>";
    if (!buf && size) return qlora__fail(err, QLORA_ERR_ARG, "%s: buffer is NULL", name);
    st->path = qlora__strdup(name);
    if (!st->path) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", name);
    if (copy) {
        st->base = qlora__alloc((int64_t)size);
        if (!st->base) { qlora_safetensors_close(st); return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", name); }
        if (size) memcpy(st->base, buf, size);
        st->owns_base = 1;
    } else {
        st->base = (void *)buf;
    }
    st->base_size = size;
    qlora_status s = qlora__st_parse(st, name, err);
    if (s != QLORA_OK) qlora_safetensors_close(st);
    return s;
}

QLORADEF qlora_status qlora_safetensors_open(qlora_safetensors *st, const char *path, qlora_error *err) {
    if (!st) return qlora__fail(err, QLORA_ERR_ARG, "qlora_safetensors_open: st is NULL");
    memset(st, 0, sizeof *st);
    if (!path) return qlora__fail(err, QLORA_ERR_ARG, "qlora_safetensors_open: path is NULL");
    st->path = qlora__strdup(path);
    if (!st->path) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
#ifdef QLORA__MMAP
    {
        int fd = open(path, O_RDONLY);
        if (fd < 0) {
            qlora_status s = qlora__fail(err, QLORA_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
            qlora_safetensors_close(st);
            return s;
        }
        struct stat sb;
        if (fstat(fd, &sb) != 0 || S_ISDIR(sb.st_mode)) {
            qlora_status s = qlora__fail(err, QLORA_ERR_IO, "%s: cannot stat or is a directory", path);
            close(fd);
            qlora_safetensors_close(st);
            return s;
        }
        if (S_ISREG(sb.st_mode) && sb.st_size >= 8) {
            if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
                close(fd);
                qlora_safetensors_close(st);
                return qlora__fail(err, QLORA_ERR_IO, "%s: file too large to map", path);
            }
            void *m = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
            if (m == MAP_FAILED) {
                close(fd);
                qlora_status s = qlora__fail(err, QLORA_ERR_IO, "%s: mmap failed: %s", path, strerror(errno));
                qlora_safetensors_close(st);
                return s;
            }
            st->base = m;
            st->base_size = (size_t)sb.st_size;
            st->mapped = 1;
            st->fd = fd;   // kept open so qlora_safetensors_evict can map pages afresh
        } else {
            close(fd);  // tiny or special file: read it below
        }
    }
#endif
    if (!st->base) {
        void *data = NULL;
        size_t n = 0;
        qlora_status s = qlora_read_file(path, &data, &n, err);
        if (s != QLORA_OK) { qlora_safetensors_close(st); return s; }
        st->base = data;
        st->base_size = n;
        st->owns_base = 1;
    }
    qlora_status s = qlora__st_parse(st, path, err);
    if (s != QLORA_OK) qlora_safetensors_close(st);
    return s;
}

// Binary search of a tensor list sorted by name (a file's or a whole model directory's).
static const qlora_st_tensor *qlora__st_find_sorted(const qlora_st_tensor *const *by_name, int64_t n,
                                                    const char *name) {
    if (!by_name || !name) return NULL;
    int64_t lo = 0, hi = n;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(by_name[mid]->name, name);
        if (c == 0) return by_name[mid];
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return NULL;
}

QLORADEF const qlora_st_tensor *qlora_safetensors_find(const qlora_safetensors *st, const char *name) {
    return st ? qlora__st_find_sorted((const qlora_st_tensor *const *)st->by_name, st->n_tensors, name) : NULL;
}

QLORADEF const char *qlora_safetensors_meta(const qlora_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (int64_t i = 0; i < st->n_meta; i++)
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    return NULL;
}

// --- atomic writes ---------------------------------------------------------------------------

static void qlora__fsync_dir(const char *path) {
#ifdef QLORA__POSIX
    char *dir = qlora__dirname(path);
    if (!dir) return;
    int fd = open(dir, O_RDONLY);
    if (fd >= 0) {
        (void)fsync(fd);  // best effort: some file systems refuse fsync on directories
        close(fd);
    }
    QLORA_FREE(dir);
#else
    (void)path;
#endif
}

// Creates a fresh temp file next to path; sets w->tmp_path and w->fd / w->fp.
static qlora_status qlora__tmp_create(qlora_st_writer *w, const char *path, qlora_error *err) {
    size_t n = strlen(path);
    w->tmp_path = (char *)qlora__alloc((int64_t)n + 48);
    if (!w->tmp_path) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    for (int attempt = 0; attempt < 1000; attempt++) {
#ifdef QLORA__POSIX
        snprintf(w->tmp_path, n + 48, "%s.tmp.%ld.%d", path, (long)getpid(), attempt);
        w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL, 0666);
        if (w->fd >= 0) return QLORA_OK;
        if (errno != EEXIST) break;
#else
        snprintf(w->tmp_path, n + 48, "%s.tmp.%d", path, attempt);
        FILE *probe = fopen(w->tmp_path, "rb");
        if (probe) { fclose(probe); continue; }
        w->fp = fopen(w->tmp_path, "wb");
        if (w->fp) return QLORA_OK;
        break;
#endif
    }
    qlora_status s = qlora__fail(err, QLORA_ERR_IO, "%s: cannot create temp file %s: %s", path, w->tmp_path,
                                 qlora__errstr());
    QLORA_FREE(w->tmp_path);
    w->tmp_path = NULL;
    return s;
}

static qlora_status qlora__tmp_write(qlora_st_writer *w, const void *data, size_t n, qlora_error *err) {
    const char *p = (const char *)data;
#ifdef QLORA__POSIX
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t k = write(w->fd, p, chunk);
        if (k < 0) {
            if (errno == EINTR) continue;
            return qlora__fail(err, QLORA_ERR_IO, "%s: write failed: %s", w->tmp_path, strerror(errno));
        }
        p += k;
        n -= (size_t)k;
    }
#else
    if (n && fwrite(p, 1, n, (FILE *)w->fp) != n)
        return qlora__fail(err, QLORA_ERR_IO, "%s: write failed", w->tmp_path);
#endif
    return QLORA_OK;
}

// Flushes, closes and renames the temp file over w->path; removes it on failure.
static qlora_status qlora__tmp_commit(qlora_st_writer *w, qlora_error *err) {
    qlora_status s = QLORA_OK;
#ifdef QLORA__POSIX
    if (fsync(w->fd) != 0) s = qlora__fail(err, QLORA_ERR_IO, "%s: fsync failed: %s", w->tmp_path, strerror(errno));
    if (close(w->fd) != 0 && s == QLORA_OK)
        s = qlora__fail(err, QLORA_ERR_IO, "%s: close failed: %s", w->tmp_path, strerror(errno));
    w->fd = -1;
    if (s == QLORA_OK && rename(w->tmp_path, w->path) != 0)
        s = qlora__fail(err, QLORA_ERR_IO, "%s: rename from %s failed: %s", w->path, w->tmp_path, strerror(errno));
#else
    if (fflush((FILE *)w->fp) != 0) s = qlora__fail(err, QLORA_ERR_IO, "%s: flush failed", w->tmp_path);
    if (fclose((FILE *)w->fp) != 0 && s == QLORA_OK) s = qlora__fail(err, QLORA_ERR_IO, "%s: close failed", w->tmp_path);
    w->fp = NULL;
    if (s == QLORA_OK) {
        remove(w->path);  // rename does not replace an existing file everywhere
        if (rename(w->tmp_path, w->path) != 0) s = qlora__fail(err, QLORA_ERR_IO, "%s: rename failed", w->path);
    }
#endif
    if (s != QLORA_OK) {
        remove(w->tmp_path);
        return s;
    }
    qlora__fsync_dir(w->path);
    return QLORA_OK;
}

QLORADEF void qlora_st_writer_abort(qlora_st_writer *w) {
    if (!w) return;
#ifdef QLORA__POSIX
    if (w->fd >= 0 && w->tmp_path) close(w->fd);
#else
    if (w->fp) fclose((FILE *)w->fp);
#endif
    if (w->tmp_path) remove(w->tmp_path);
    QLORA_FREE(w->tmp_path);
    QLORA_FREE(w->path);
    memset(w, 0, sizeof *w);
    w->fd = -1;
}

QLORADEF qlora_status qlora_write_file_atomic(const char *path, const void *data, size_t n, qlora_error *err) {
    if (!path || (!data && n)) return qlora__fail(err, QLORA_ERR_ARG, "qlora_write_file_atomic: NULL argument");
    qlora_st_writer w;
    memset(&w, 0, sizeof w);
    w.fd = -1;
    w.path = qlora__strdup(path);
    if (!w.path) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    qlora_status s = qlora__tmp_create(&w, path, err);
    if (s == QLORA_OK) s = qlora__tmp_write(&w, data, n, err);
    if (s == QLORA_OK) {
        s = qlora__tmp_commit(&w, err);
        QLORA_FREE(w.tmp_path);
        w.tmp_path = NULL;
    }
    qlora_st_writer_abort(&w);
    return s;
}

// --- safetensors writer ----------------------------------------------------------------------

static int qlora__st_cmp_str(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// Builds the padded header text; *total receives the data buffer size.
static qlora_status qlora__st_header(const char *path, const qlora_st_entry *t, int64_t n, const char *const *meta_kv,
                                     qlora_json_writer *jw, int64_t *total, qlora_error *err) {
    if (n < 0 || (n > 0 && !t)) return qlora__fail(err, QLORA_ERR_ARG, "%s: bad tensor list", path);
    // Unique, non-empty names.
    const char **names = (const char **)qlora__alloc(n * (int64_t)sizeof(char *));
    if (!names) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    for (int64_t i = 0; i < n; i++) {
        if (!t[i].name || !t[i].name[0] || strcmp(t[i].name, "__metadata__") == 0 || !qlora__utf8_valid(t[i].name)) {
            QLORA_FREE((void *)names);
            return qlora__fail(err, QLORA_ERR_ARG, "%s: tensor %lld has an empty, reserved or non-UTF-8 name", path,
                               (long long)i);
        }
        names[i] = t[i].name;
    }
    qsort((void *)names, (size_t)n, sizeof *names, qlora__st_cmp_str);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            qlora_status s = qlora__fail(err, QLORA_ERR_ARG, "%s: tensor '%.80s': duplicate name", path, names[i]);
            QLORA_FREE((void *)names);
            return s;
        }
    QLORA_FREE((void *)names);

    qlora_jw_init(jw, -1, 0);
    qlora_jw_object_begin(jw);
    if (!meta_kv || meta_kv[0]) {
        qlora_jw_key(jw, "__metadata__");
        qlora_jw_object_begin(jw);
        if (!meta_kv) {
            qlora_jw_key(jw, "format");
            qlora_jw_string(jw, "pt");
        } else {
            for (int64_t i = 0; meta_kv[i]; i += 2) {
                if (!meta_kv[i + 1] || !qlora__utf8_valid(meta_kv[i]) || !qlora__utf8_valid(meta_kv[i + 1])) {
                    qlora_jw_free(jw);
                    return qlora__fail(err, QLORA_ERR_ARG, "%s: metadata key '%.80s' has no value or is not UTF-8", path,
                                           meta_kv[i]);
                }
                for (int64_t j = 0; j < i; j += 2)
                    if (strcmp(meta_kv[j], meta_kv[i]) == 0) {
                        qlora_jw_free(jw);
                        return qlora__fail(err, QLORA_ERR_ARG, "%s: duplicate metadata key '%.80s'", path, meta_kv[i]);
                    }
                qlora_jw_key(jw, meta_kv[i]);
                qlora_jw_string(jw, meta_kv[i + 1]);
            }
        }
        qlora_jw_object_end(jw);
    }
    int64_t off = 0;
    for (int64_t i = 0; i < n; i++) {
        const qlora_st_entry *e = &t[i];
        int bits = qlora_dtype_bits(e->dtype);
        if (bits == 0 || e->ndim < 0 || e->ndim > QLORA_ST_MAX_DIMS) {
            qlora_jw_free(jw);
            return qlora__fail(err, QLORA_ERR_ARG, "%s: tensor '%.80s': bad dtype or ndim", path, e->name);
        }
        int64_t numel = 1, nb = 0;
        for (int d = 0; d < e->ndim; d++)
            if (e->shape[d] < 0 || !qlora__mul_ok(numel, e->shape[d], &numel)) {
                qlora_jw_free(jw);
                return qlora__fail(err, QLORA_ERR_SHAPE, "%s: tensor '%.80s': negative dim or size overflow", path, e->name);
            }
        if (!qlora__mul_ok(numel, bits, &nb) || nb % 8 != 0 || off > INT64_MAX - nb / 8) {
            qlora_jw_free(jw);
            return qlora__fail(err, QLORA_ERR_SHAPE, "%s: tensor '%.80s': size overflows or is not whole bytes", path,
                               e->name);
        }
        nb /= 8;
        if (nb > 0 && !e->data) {
            qlora_jw_free(jw);
            return qlora__fail(err, QLORA_ERR_ARG, "%s: tensor '%.80s': data is NULL", path, e->name);
        }
        qlora_jw_key(jw, e->name);
        qlora_jw_object_begin(jw);
        qlora_jw_key(jw, "dtype");
        qlora_jw_string(jw, qlora_dtype_name(e->dtype));
        qlora_jw_key(jw, "shape");
        qlora_jw_array_begin(jw);
        for (int d = 0; d < e->ndim; d++) qlora_jw_int(jw, e->shape[d]);
        qlora_jw_array_end(jw);
        qlora_jw_key(jw, "data_offsets");
        qlora_jw_array_begin(jw);
        qlora_jw_int(jw, off);
        qlora_jw_int(jw, off + nb);
        qlora_jw_array_end(jw);
        qlora_jw_object_end(jw);
        off += nb;
    }
    qlora_jw_object_end(jw);
    qlora_status s = qlora_jw_finish(jw, 0, err);
    while (s == QLORA_OK && jw->len % 8 != 0) qlora__jw_put(jw, " ", 1);  // pad: data starts 8-aligned
    if (s == QLORA_OK && jw->failed) s = qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    if (s == QLORA_OK && jw->len > QLORA_ST_MAX_HEADER)
        s = qlora__fail(err, QLORA_ERR_ARG, "%s: header of %lu bytes exceeds the safetensors limit", path,
                        (unsigned long)jw->len);
    if (s != QLORA_OK) { qlora_jw_free(jw); return s; }
    *total = off;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_st_writer_begin(qlora_st_writer *w, const char *path, const qlora_st_entry *t, int64_t n,
                                            const char *const *meta_kv, qlora_error *err) {
    if (!w) return qlora__fail(err, QLORA_ERR_ARG, "qlora_st_writer_begin: writer is NULL");
    memset(w, 0, sizeof *w);
    w->fd = -1;
    if (!path) return qlora__fail(err, QLORA_ERR_ARG, "qlora_st_writer_begin: path is NULL");
    qlora_json_writer jw;
    int64_t total = 0;
    qlora_status s = qlora__st_header(path, t, n, meta_kv, &jw, &total, err);
    if (s != QLORA_OK) return s;
    w->path = qlora__strdup(path);
    if (!w->path) { qlora_jw_free(&jw); return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path); }
    s = qlora__tmp_create(w, path, err);
    if (s == QLORA_OK) {
        uint8_t len8[8];
        uint64_t hl = (uint64_t)jw.len;
        for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hl >> (8 * i));
        s = qlora__tmp_write(w, len8, 8, err);
        if (s == QLORA_OK) s = qlora__tmp_write(w, jw.buf, jw.len, err);
    }
    qlora_jw_free(&jw);
    if (s != QLORA_OK) { qlora_st_writer_abort(w); return s; }
    w->expected = total;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_st_writer_append(qlora_st_writer *w, const void *data, int64_t nbytes, qlora_error *err) {
    if (!w || !w->tmp_path) return qlora__fail(err, QLORA_ERR_ARG, "qlora_st_writer_append: writer not open");
    if (nbytes < 0 || (nbytes > 0 && !data) || nbytes > w->expected - w->written)
        return qlora__fail(err, QLORA_ERR_ARG, "%s: append of %lld bytes exceeds the %lld announced (%lld written)",
                           w->path, (long long)nbytes, (long long)w->expected, (long long)w->written);
    if ((uint64_t)nbytes > (uint64_t)SIZE_MAX) return qlora__fail(err, QLORA_ERR_ARG, "%s: chunk too large", w->path);
    qlora_status s = qlora__tmp_write(w, data, (size_t)nbytes, err);
    if (s == QLORA_OK) w->written += nbytes;
    return s;
}

QLORADEF qlora_status qlora_st_writer_finish(qlora_st_writer *w, qlora_error *err) {
    if (!w || !w->tmp_path) return qlora__fail(err, QLORA_ERR_ARG, "qlora_st_writer_finish: writer not open");
    qlora_status s;
    if (w->written != w->expected) {
        s = qlora__fail(err, QLORA_ERR_ARG, "%s: %lld data bytes written but the header announces %lld", w->path,
                        (long long)w->written, (long long)w->expected);
    } else {
        s = qlora__tmp_commit(w, err);
        QLORA_FREE(w->tmp_path);  // committed or already removed
        w->tmp_path = NULL;
    }
    qlora_st_writer_abort(w);
    return s;
}

QLORADEF qlora_status qlora_safetensors_write(const char *path, const qlora_st_entry *t, int64_t n,
                                              const char *const *meta_kv, qlora_error *err) {
    qlora_st_writer w;
    qlora_status s = qlora_st_writer_begin(&w, path, t, n, meta_kv, err);
    if (s != QLORA_OK) return s;
    for (int64_t i = 0; i < n && s == QLORA_OK; i++) {
        int64_t numel = 1;
        for (int d = 0; d < t[i].ndim; d++) numel *= t[i].shape[d];  // checked by begin
        s = qlora_st_writer_append(&w, t[i].data, numel * qlora_dtype_bits(t[i].dtype) / 8, err);
    }
    if (s != QLORA_OK) { qlora_st_writer_abort(&w); return s; }
    return qlora_st_writer_finish(&w, err);
}

// --- model directories -----------------------------------------------------------------------

static int qlora__file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    fclose(f);
    return 1;
}

static int qlora__st_cmp_tensor_ptr(const void *a, const void *b) {
    const qlora_st_tensor *x = *(const qlora_st_tensor *const *)a, *y = *(const qlora_st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

QLORADEF void qlora_safetensors_evict(const qlora_safetensors *st, const qlora_st_tensor *t) {
#ifdef QLORA__POSIX
    // Whole 64 KiB units inside the tensor's bytes (a multiple of every common page size), mapped
    // again over themselves with MAP_FIXED: the fresh mapping holds no resident pages.
    const uintptr_t unit = 65536;
    if (!st || !t || !st->mapped || t->nbytes <= 0) return;
    uintptr_t base = (uintptr_t)st->base, lo = (uintptr_t)t->data, hi = lo + (uintptr_t)t->nbytes;
    if (lo < base || hi > base + st->base_size) return;
    uintptr_t a = base + ((lo - base + unit - 1) / unit) * unit, b = base + ((hi - base) / unit) * unit;
    if (b <= a) return;
    void *m = mmap((void *)a, (size_t)(b - a), PROT_READ, MAP_PRIVATE | MAP_FIXED, st->fd, (off_t)(a - base));
    (void)m;   // on failure the old pages simply stay resident
#else
    (void)st;
    (void)t;
#endif
}

QLORADEF void qlora_st_model_evict(const qlora_st_model *m, const qlora_st_tensor *t) {
    if (!m || !t) return;
    for (int64_t i = 0; i < m->n_shards; i++) {
        const qlora_safetensors *s = &m->shards[i];
        if (t >= s->tensors && t < s->tensors + s->n_tensors) qlora_safetensors_evict(s, t);
    }
}

QLORADEF void qlora_st_model_close(qlora_st_model *m) {
    if (!m) return;
    for (int64_t i = 0; i < m->n_shards; i++) qlora_safetensors_close(&m->shards[i]);
    QLORA_FREE(m->shards);
    QLORA_FREE((void *)m->by_name);
    QLORA_FREE(m->dir);
    memset(m, 0, sizeof *m);
}

// Fills m->by_name from all shards and rejects a name present in two shards.
static qlora_status qlora__st_model_index(qlora_st_model *m, qlora_error *err) {
    int64_t total = 0;
    for (int64_t i = 0; i < m->n_shards; i++) total += m->shards[i].n_tensors;
    m->by_name = (const qlora_st_tensor **)qlora__alloc(total * (int64_t)sizeof(qlora_st_tensor *));
    if (!m->by_name) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", m->dir);
    int64_t k = 0;
    for (int64_t i = 0; i < m->n_shards; i++)
        for (int64_t j = 0; j < m->shards[i].n_tensors; j++) m->by_name[k++] = &m->shards[i].tensors[j];
    m->n_tensors = total;
    qsort((void *)m->by_name, (size_t)total, sizeof *m->by_name, qlora__st_cmp_tensor_ptr);
    for (int64_t i = 1; i < total; i++)
        if (strcmp(m->by_name[i - 1]->name, m->by_name[i]->name) == 0)
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s' appears in more than one shard", m->dir,
                               m->by_name[i]->name);
    return QLORA_OK;
}

QLORADEF qlora_status qlora_st_model_open(qlora_st_model *m, const char *dir, qlora_error *err) {
    if (!m) return qlora__fail(err, QLORA_ERR_ARG, "qlora_st_model_open: m is NULL");
    memset(m, 0, sizeof *m);
    if (!dir) return qlora__fail(err, QLORA_ERR_ARG, "qlora_st_model_open: dir is NULL");
    m->dir = qlora__strdup(dir);
    char *index = qlora__path_join(dir, "model.safetensors.index.json");
    char *single = qlora__path_join(dir, "model.safetensors");
    qlora_status s = QLORA_OK;
    qlora_json_doc doc;
    memset(&doc, 0, sizeof doc);
    const char **files = NULL;  // (n_entries) weight_map values, sorted
    if (!m->dir || !index || !single) { s = qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", dir); goto done; }
    if (!qlora__file_exists(index)) {
        if (!qlora__file_exists(single)) {
            s = qlora__fail(err, QLORA_ERR_IO, "%s: neither model.safetensors nor model.safetensors.index.json found", dir);
            goto done;
        }
        m->shards = (qlora_safetensors *)qlora__calloc((int64_t)sizeof(qlora_safetensors));
        if (!m->shards) { s = qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", dir); goto done; }
        s = qlora_safetensors_open(&m->shards[0], single, err);
        if (s != QLORA_OK) goto done;
        m->n_shards = 1;
        s = qlora__st_model_index(m, err);
        goto done;
    }
    s = qlora_json_read_file(&doc, index, err);
    if (s != QLORA_OK) goto done;
    {
        const qlora_json *wm = qlora_json_get(&doc.root, "weight_map");
        if (!wm || wm->type != QLORA_JSON_OBJECT || wm->count == 0) {
            s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: missing or empty \"weight_map\" object", index);
            goto done;
        }
        files = (const char **)qlora__alloc(wm->count * (int64_t)sizeof(char *));
        if (!files) { s = qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", index); goto done; }
        for (int64_t i = 0; i < wm->count; i++) {
            const qlora_json *v = &wm->items[i];
            if (v->type != QLORA_JSON_STRING || v->str_len == 0 || strlen(v->str) != v->str_len || v->str[0] == '/' ||
                strstr(v->str, "..") || strchr(v->str, '\\')) {
                s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s': weight_map value is not a plain shard file name",
                                index, wm->keys[i]);
                goto done;
            }
            files[i] = v->str;
        }
        qsort((void *)files, (size_t)wm->count, sizeof *files, qlora__st_cmp_str);
        int64_t ns = 0;
        for (int64_t i = 0; i < wm->count; i++)
            if (i == 0 || strcmp(files[i], files[i - 1]) != 0) files[ns++] = files[i];
        m->shards = (qlora_safetensors *)qlora__calloc(ns * (int64_t)sizeof(qlora_safetensors));
        if (!m->shards) { s = qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", index); goto done; }
        for (int64_t i = 0; i < ns; i++) {
            char *sp = qlora__path_join(dir, files[i]);
            if (!sp) { s = qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", index); goto done; }
            s = qlora_safetensors_open(&m->shards[i], sp, err);
            QLORA_FREE(sp);
            if (s != QLORA_OK) goto done;
            m->n_shards = i + 1;
        }
        // Every weight_map entry must exist in the shard it names.
        for (int64_t i = 0; i < wm->count; i++) {
            const char *want = wm->items[i].str;
            int64_t lo = 0, hi = ns;
            while (lo < hi) {
                int64_t mid = lo + (hi - lo) / 2;
                if (strcmp(files[mid], want) < 0) lo = mid + 1; else hi = mid;
            }
            if (!qlora_safetensors_find(&m->shards[lo], wm->keys[i])) {
                s = qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor '%.80s' listed in weight_map is missing from shard %s",
                                index, wm->keys[i], want);
                goto done;
            }
        }
        s = qlora__st_model_index(m, err);
    }
done:
    QLORA_FREE((void *)files);
    qlora_json_free(&doc);
    QLORA_FREE(index);
    QLORA_FREE(single);
    if (s != QLORA_OK) qlora_st_model_close(m);
    return s;
}

QLORADEF const qlora_st_tensor *qlora_st_model_find(const qlora_st_model *m, const char *name) {
    return m ? qlora__st_find_sorted(m->by_name, m->n_tensors, name) : NULL;
}

// ---------------------------------------------------------------------------------------------
// Tokenizer implementation

#define QLORA__TOK_MAX_TEXT ((int64_t)1 << 26)   // longest text one encode call accepts (bytes); keeps
                                                  // every derived buffer position below 2^31

// One added token: matched in the raw text (or, HF normalized=true, in the normalized text).
typedef struct qlora__tok_added {
    char    *content;       // (len + 1) NUL-terminated
    int32_t  len;
    char    *norm;          // (norm_len + 1) content after the HF normalizer (normalized tokens)
    int32_t  norm_len;
    int32_t  id;
    uint8_t  special, normalized, lstrip, rstrip, single_word;
} qlora__tok_added;

// Longest-prefix matcher over a small set of strings: entries bucketed by first byte, each bucket
// sorted by length (longest first), so the first hit is the longest match.
typedef struct qlora__tok_matcher {
    int32_t      n;
    const char **str;       // (n)
    int32_t     *len;       // (n)
    int32_t     *val;       // (n) caller's value for entry i
    int32_t      first[257];// bucket of byte b is [first[b], first[b+1])
} qlora__tok_matcher;

#define QLORA__TOK_MAXNORM 4

struct qlora__tok_data {
    const char **piece;     // (vocab_size) NUL-terminated strings
    int32_t     *piece_len; // (vocab_size)
    float       *score;     // (vocab_size)
    uint8_t     *type;      // (vocab_size) qlora_piece_type
    char        *blob;      // storage of the pieces read from the file
    int32_t      n_base;    // pieces of the model proper (ids >= n_base are added tokens)
    int32_t      cap;       // allocated length of piece/piece_len/score/type

    // piece -> id, open addressing (-1 empty). SPM: `normal` holds NORMAL, USER_DEFINED and UNUSED
    // pieces (the ones BPE may form), `reserved` holds CONTROL, UNKNOWN and BYTE. HF: `normal`
    // holds model.vocab and `reserved` is unused.
    int32_t     *normal;    // (map_cap)
    int32_t     *reserved;  // (map_cap)
    int64_t      map_cap;
    int32_t      byte_id[256];  // id of <0xXX>, or -1

    // HF merges: (left id, right id) -> (rank, merged id), open addressing (key ~0 empty).
    uint64_t    *merge_key; // (merge_cap)
    int32_t     *merge_rank;// (merge_cap)
    int32_t     *merge_id;  // (merge_cap)
    int64_t      merge_cap;

    qlora__tok_matcher user;    // SPM USER_DEFINED pieces (value: id)
    qlora__tok_added  *added;   // (n_added)
    int32_t            n_added, added_cap;
    qlora__tok_matcher added_raw;   // value: index into added
    qlora__tok_matcher added_norm;  // value: index into added

    // SPM normalizer
    int32_t add_dummy_prefix, remove_extra_ws, escape_ws, ws_suffix, byte_fallback;
    char   *unk_surface;
    // HF pipeline
    int32_t fuse_unk, ignore_merges, has_unk_token;
    int32_t n_norm;                           // normalizer steps
    int32_t norm_op[QLORA__TOK_MAXNORM];      // 1 Prepend(a), 2 Replace(a -> b)
    char   *norm_a[QLORA__TOK_MAXNORM];
    char   *norm_b[QLORA__TOK_MAXNORM];
    int32_t metaspace;                        // 1 when the pre_tokenizer is Metaspace
    int32_t ms_scheme;                        // 0 never, 1 always, 2 first
    int32_t ms_split;
    char    ms_repl[8];                       // the replacement character, UTF-8
};

static const char qlora__tok_ws[] = "\xe2\x96\x81";    // U+2581 LOWER ONE EIGHTH BLOCK
static const char qlora__tok_fffd[] = "\xef\xbf\xbd";  // U+FFFD REPLACEMENT CHARACTER

// --- small helpers ---------------------------------------------------------------------------

static uint64_t qlora__tok_hash(const char *s, int64_t n) {
    uint64_t h = 1469598103934665603ull;   // FNV-1a, then a final mix
    int64_t i;
    for (i = 0; i < n; i++) { h ^= (uint8_t)s[i]; h *= 1099511628211ull; }
    h ^= h >> 29; h *= 0xbf58476d1ce4e5b9ull; h ^= h >> 32;
    return h;
}

static char *qlora__tok_strdup(const char *s, int64_t n) {
    char *p = (char *)qlora__alloc(n + 1);
    if (!p) return NULL;
    if (n > 0) memcpy(p, s, (size_t)n);
    p[n] = 0;
    return p;
}

// Bytes of the UTF-8 character starting with byte c, by its high nibble (sentencepiece's rule:
// a stray continuation byte counts as one).
static int qlora__tok_onechar(uint8_t c) {
    static const uint8_t len[16] = { 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4 };
    return len[c >> 4];
}

// Decodes one character of s[0..n) (n >= 1). Returns 1 and its length when it is valid UTF-8
// (shortest form, no surrogates, <= U+10FFFF), else 0 with *mblen = 1.
static int qlora__tok_utf8(const char *s, int64_t n, int *mblen) {
    const uint8_t *u = (const uint8_t *)s;
    uint32_t cp;
    if (u[0] < 0x80) { *mblen = 1; return 1; }
    if (n >= 2 && (u[0] & 0xE0) == 0xC0) {
        cp = ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
        if ((u[1] & 0xC0) == 0x80 && cp >= 0x80) { *mblen = 2; return 1; }
    } else if (n >= 3 && (u[0] & 0xF0) == 0xE0) {
        cp = ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
        if ((u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)) {
            *mblen = 3;
            return 1;
        }
    } else if (n >= 4 && (u[0] & 0xF8) == 0xF0) {
        cp = ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) |
             ((uint32_t)(u[2] & 0x3F) << 6) | (u[3] & 0x3F);
        if ((u[1] & 0xC0) == 0x80 && (u[2] & 0xC0) == 0x80 && (u[3] & 0xC0) == 0x80 && cp >= 0x10000 &&
            cp <= 0x10FFFF) {
            *mblen = 4;
            return 1;
        }
    }
    *mblen = 1;
    return 0;
}

// Code point of the valid UTF-8 character at s (length mblen).
static uint32_t qlora__tok_cp(const char *s, int mblen) {
    const uint8_t *u = (const uint8_t *)s;
    if (mblen == 1) return u[0];
    if (mblen == 2) return ((uint32_t)(u[0] & 0x1F) << 6) | (u[1] & 0x3F);
    if (mblen == 3) return ((uint32_t)(u[0] & 0x0F) << 12) | ((uint32_t)(u[1] & 0x3F) << 6) | (u[2] & 0x3F);
    return ((uint32_t)(u[0] & 0x07) << 18) | ((uint32_t)(u[1] & 0x3F) << 12) | ((uint32_t)(u[2] & 0x3F) << 6) |
           (u[3] & 0x3F);
}

// Rust's char::is_whitespace (Unicode White_Space), used by Hugging Face lstrip/rstrip.
static int qlora__tok_is_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
           c == 0x3000;
}

// "<0xXX>" (upper-case hex, the only spelling sentencepiece accepts) -> byte, else -1.
static int qlora__tok_piece_byte(const char *s, int32_t n) {
    int v = 0, i;
    if (n != 6 || s[0] != '<' || s[1] != '0' || s[2] != 'x' || s[5] != '>') return -1;
    for (i = 3; i < 5; i++) {
        int c = s[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return -1;
    }
    return v;
}

// Growable int32 vector (each encode call owns its own).
typedef struct qlora__tok_vec {
    int32_t *v;
    int64_t  n, cap;
} qlora__tok_vec;

static int qlora__tok_push(qlora__tok_vec *a, int32_t x) {
    if (a->n == a->cap) {
        int64_t nc = a->cap ? a->cap * 2 : 64;
        int32_t *nv = (int32_t *)qlora__alloc(nc * (int64_t)sizeof(int32_t));
        if (!nv) return 0;
        if (a->n) memcpy(nv, a->v, (size_t)a->n * sizeof(int32_t));
        QLORA_FREE(a->v);
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = x;
    return 1;
}

// --- piece maps ------------------------------------------------------------------------------

static int32_t qlora__tok_map_find(const struct qlora__tok_data *d, const int32_t *map, const char *s, int64_t n) {
    uint64_t mask, h;
    if (!map || d->map_cap == 0) return -1;
    mask = (uint64_t)d->map_cap - 1;
    h = qlora__tok_hash(s, n) & mask;
    for (;;) {
        int32_t id = map[h];
        if (id < 0) return -1;
        if (d->piece_len[id] == n && memcmp(d->piece[id], s, (size_t)n) == 0) return id;
        h = (h + 1) & mask;
    }
}

// Inserts id; returns the id already stored under the same string, or -1 when inserted.
static int32_t qlora__tok_map_insert(struct qlora__tok_data *d, int32_t *map, int32_t id) {
    uint64_t mask = (uint64_t)d->map_cap - 1;
    uint64_t h = qlora__tok_hash(d->piece[id], d->piece_len[id]) & mask;
    for (;;) {
        int32_t o = map[h];
        if (o < 0) { map[h] = id; return -1; }
        if (d->piece_len[o] == d->piece_len[id] && memcmp(d->piece[o], d->piece[id], (size_t)d->piece_len[id]) == 0)
            return o;
        h = (h + 1) & mask;
    }
}

// sentencepiece's PieceToId: reserved pieces first, then normal ones, else the unknown id.
static int32_t qlora__tok_piece_to_id(const qlora_tokenizer *t, const char *s, int64_t n) {
    int32_t id = qlora__tok_map_find(t->d, t->d->reserved, s, n);
    if (id >= 0) return id;
    id = qlora__tok_map_find(t->d, t->d->normal, s, n);
    return id >= 0 ? id : t->unk_id;
}

static uint64_t qlora__tok_merge_hash(uint64_t k) {
    k ^= k >> 33; k *= 0xff51afd7ed558ccdull; k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ull; k ^= k >> 33;
    return k;
}

// HF merge lookup: 1 and (rank, merged id) when (a, b) is a merge.
static int qlora__tok_merge_find(const struct qlora__tok_data *d, int32_t a, int32_t b, int32_t *rank, int32_t *id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b, mask, h;
    if (d->merge_cap == 0) return 0;
    mask = (uint64_t)d->merge_cap - 1;
    h = qlora__tok_merge_hash(key) & mask;
    for (;;) {
        if (d->merge_key[h] == ~(uint64_t)0) return 0;
        if (d->merge_key[h] == key) { *rank = d->merge_rank[h]; *id = d->merge_id[h]; return 1; }
        h = (h + 1) & mask;
    }
}

// --- longest-prefix matcher ------------------------------------------------------------------

static void qlora__tok_matcher_free(qlora__tok_matcher *m) {
    QLORA_FREE((void *)m->str);
    QLORA_FREE(m->len);
    QLORA_FREE(m->val);
    memset(m, 0, sizeof(*m));
}

// Builds m over strings str[i] (len[i] > 0), values val[i], i < n.
static int qlora__tok_matcher_build(qlora__tok_matcher *m, int32_t n, const char *const *str, const int32_t *len,
                                    const int32_t *val) {
    int32_t i, j, b, count[256];
    qlora__tok_matcher_free(m);
    if (n == 0) return 1;
    m->str = (const char **)qlora__alloc((int64_t)n * (int64_t)sizeof(char *));
    m->len = (int32_t *)qlora__alloc((int64_t)n * 4);
    m->val = (int32_t *)qlora__alloc((int64_t)n * 4);
    if (!m->str || !m->len || !m->val) { qlora__tok_matcher_free(m); return 0; }
    m->n = n;
    memset(count, 0, sizeof(count));
    for (i = 0; i < n; i++) count[(uint8_t)str[i][0]]++;
    m->first[0] = 0;
    for (b = 0; b < 256; b++) m->first[b + 1] = m->first[b] + count[b];
    memset(count, 0, sizeof(count));
    for (i = 0; i < n; i++) {
        b = (uint8_t)str[i][0];
        j = m->first[b] + count[b]++;
        m->str[j] = str[i];
        m->len[j] = len[i];
        m->val[j] = val[i];
    }
    // insertion sort inside each bucket: longer first, then by value (earlier wins among equals)
    for (b = 0; b < 256; b++) {
        for (i = m->first[b] + 1; i < m->first[b + 1]; i++) {
            const char *s = m->str[i];
            int32_t l = m->len[i], v = m->val[i];
            for (j = i; j > m->first[b] && (m->len[j - 1] < l || (m->len[j - 1] == l && m->val[j - 1] > v)); j--) {
                m->str[j] = m->str[j - 1];
                m->len[j] = m->len[j - 1];
                m->val[j] = m->val[j - 1];
            }
            m->str[j] = s;
            m->len[j] = l;
            m->val[j] = v;
        }
    }
    return 1;
}

// Longest entry that is a prefix of s[0..n): returns its index in m (or -1).
static int32_t qlora__tok_match(const qlora__tok_matcher *m, const char *s, int64_t n) {
    int32_t b, i;
    if (m->n == 0 || n <= 0) return -1;
    b = (uint8_t)s[0];
    for (i = m->first[b]; i < m->first[b + 1]; i++)
        if (m->len[i] <= n && memcmp(m->str[i], s, (size_t)m->len[i]) == 0) return i;
    return -1;
}

// --- construction and release ----------------------------------------------------------------

QLORADEF void qlora_tokenizer_free(qlora_tokenizer *t) {
    struct qlora__tok_data *d;
    int32_t i;
    if (!t) return;
    d = t->d;
    if (d) {
        QLORA_FREE((void *)d->piece);
        QLORA_FREE(d->piece_len);
        QLORA_FREE(d->score);
        QLORA_FREE(d->type);
        QLORA_FREE(d->blob);
        QLORA_FREE(d->normal);
        QLORA_FREE(d->reserved);
        QLORA_FREE(d->merge_key);
        QLORA_FREE(d->merge_rank);
        QLORA_FREE(d->merge_id);
        qlora__tok_matcher_free(&d->user);
        qlora__tok_matcher_free(&d->added_raw);
        qlora__tok_matcher_free(&d->added_norm);
        for (i = 0; i < d->n_added; i++) {
            QLORA_FREE(d->added[i].content);
            QLORA_FREE(d->added[i].norm);
        }
        QLORA_FREE(d->added);
        QLORA_FREE(d->unk_surface);
        for (i = 0; i < QLORA__TOK_MAXNORM; i++) {
            QLORA_FREE(d->norm_a[i]);
            QLORA_FREE(d->norm_b[i]);
        }
        QLORA_FREE(d);
    }
    memset(t, 0, sizeof(*t));
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
}

// Allocates room for n pieces whose strings take blob_bytes (NULs included).
static qlora_status qlora__tok_alloc(qlora_tokenizer *t, int32_t n, int64_t blob_bytes, const char *name,
                                     qlora_error *err) {
    struct qlora__tok_data *d;
    int64_t cap = 16, i;
    memset(t, 0, sizeof(*t));
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    d = (struct qlora__tok_data *)qlora__calloc((int64_t)sizeof(*d));
    if (!d) return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name);
    t->d = d;
    d->cap = n;
    d->piece = (const char **)qlora__calloc((int64_t)n * (int64_t)sizeof(char *));
    d->piece_len = (int32_t *)qlora__calloc((int64_t)n * 4);
    d->score = (float *)qlora__calloc((int64_t)n * 4);
    d->type = (uint8_t *)qlora__calloc(n);
    d->blob = (char *)qlora__alloc(blob_bytes);
    while (cap < 2 * (int64_t)n) cap *= 2;
    d->map_cap = cap;
    d->normal = (int32_t *)qlora__alloc(cap * 4);
    d->reserved = (int32_t *)qlora__alloc(cap * 4);
    if (!d->piece || !d->piece_len || !d->score || !d->type || !d->blob || !d->normal || !d->reserved) {
        qlora_tokenizer_free(t);
        return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory for %d pieces", name, (int)n);
    }
    for (i = 0; i < cap; i++) d->normal[i] = d->reserved[i] = -1;
    for (i = 0; i < 256; i++) d->byte_id[i] = -1;
    d->add_dummy_prefix = d->remove_extra_ws = d->escape_ws = 1;
    t->vocab_size = n;
    d->n_base = n;
    return QLORA_OK;
}

// Rebuilds the two added-token matchers after the list changed.
static qlora_status qlora__tok_added_rebuild(qlora_tokenizer *t, qlora_error *err) {
    struct qlora__tok_data *d = t->d;
    const char **s = NULL;
    int32_t *l = NULL, *v = NULL, i, nr = 0, nn = 0, ok = 1;
    if (d->n_added > 0) {
        s = (const char **)qlora__alloc((int64_t)d->n_added * (int64_t)sizeof(char *));
        l = (int32_t *)qlora__alloc((int64_t)d->n_added * 4);
        v = (int32_t *)qlora__alloc((int64_t)d->n_added * 4);
        if (!s || !l || !v) ok = 0;
    }
    if (ok) {
        for (i = 0; i < d->n_added; i++)
            if (!d->added[i].normalized && d->added[i].len > 0) { s[nr] = d->added[i].content; l[nr] = d->added[i].len; v[nr++] = i; }
        ok = qlora__tok_matcher_build(&d->added_raw, nr, s, l, v);
    }
    if (ok) {
        for (i = 0; i < d->n_added; i++)
            if (d->added[i].normalized && d->added[i].norm_len > 0) { s[nn] = d->added[i].norm; l[nn] = d->added[i].norm_len; v[nn++] = i; }
        ok = qlora__tok_matcher_build(&d->added_norm, nn, s, l, v);
    }
    QLORA_FREE((void *)s);
    QLORA_FREE(l);
    QLORA_FREE(v);
    return ok ? QLORA_OK : qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer: out of memory for added tokens");
}

// Appends one added token (content copied). Does not rebuild the matchers.
static qlora_status qlora__tok_added_push(qlora_tokenizer *t, const char *s, int64_t n, int32_t id, int special,
                                          int normalized, int lstrip, int rstrip, int single_word, qlora_error *err) {
    struct qlora__tok_data *d = t->d;
    qlora__tok_added *a;
    if (d->n_added == d->added_cap) {
        int32_t nc = d->added_cap ? d->added_cap * 2 : 16;
        qlora__tok_added *na = (qlora__tok_added *)qlora__calloc((int64_t)nc * (int64_t)sizeof(*na));
        if (!na) return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer: out of memory for added tokens");
        if (d->n_added) memcpy(na, d->added, (size_t)d->n_added * sizeof(*na));
        QLORA_FREE(d->added);
        d->added = na;
        d->added_cap = nc;
    }
    a = &d->added[d->n_added];
    memset(a, 0, sizeof(*a));
    a->content = qlora__tok_strdup(s, n);
    if (!a->content) return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer: out of memory for added tokens");
    a->len = (int32_t)n;
    a->id = id;
    a->special = (uint8_t)(special != 0);
    a->normalized = (uint8_t)(normalized != 0);
    a->lstrip = (uint8_t)(lstrip != 0);
    a->rstrip = (uint8_t)(rstrip != 0);
    a->single_word = (uint8_t)(single_word != 0);
    d->n_added++;
    return QLORA_OK;
}

// Grows the per-id arrays to hold at least n ids.
static qlora_status qlora__tok_grow(qlora_tokenizer *t, int32_t n, qlora_error *err) {
    struct qlora__tok_data *d = t->d;
    const char **p;
    int32_t *pl;
    float *sc;
    uint8_t *ty;
    int32_t nc;
    if (n <= d->cap) return QLORA_OK;
    nc = d->cap + d->cap / 2 + 16;
    if (nc < n) nc = n;
    p = (const char **)qlora__calloc((int64_t)nc * (int64_t)sizeof(char *));
    pl = (int32_t *)qlora__calloc((int64_t)nc * 4);
    sc = (float *)qlora__calloc((int64_t)nc * 4);
    ty = (uint8_t *)qlora__calloc(nc);
    if (!p || !pl || !sc || !ty) {
        QLORA_FREE((void *)p); QLORA_FREE(pl); QLORA_FREE(sc); QLORA_FREE(ty);
        return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer: out of memory growing the vocabulary");
    }
    memcpy((void *)p, d->piece, (size_t)t->vocab_size * sizeof(char *));
    memcpy(pl, d->piece_len, (size_t)t->vocab_size * 4);
    memcpy(sc, d->score, (size_t)t->vocab_size * 4);
    memcpy(ty, d->type, (size_t)t->vocab_size);
    QLORA_FREE((void *)d->piece); QLORA_FREE(d->piece_len); QLORA_FREE(d->score); QLORA_FREE(d->type);
    d->piece = p; d->piece_len = pl; d->score = sc; d->type = ty;
    d->cap = nc;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_tokenizer_add_special(qlora_tokenizer *t, const char *text, int32_t id, qlora_error *err) {
    struct qlora__tok_data *d;
    int64_t n;
    qlora_status st;
    if (!t || !t->d || !text) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_add_special: NULL argument");
    d = t->d;
    n = (int64_t)strlen(text);
    if (n == 0 || n > 4096) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_add_special: text length %lld not in [1, 4096]", (long long)n);
    if (id == -1) id = t->vocab_size;
    if (id < 0 || id > t->vocab_size || id == INT32_MAX)
        return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_add_special: id %d not in [0, vocab_size %d]", (int)id, (int)t->vocab_size);
    st = qlora__tok_added_push(t, text, n, id, 1, 0, 0, 0, 0, err);
    if (st != QLORA_OK) return st;
    if (id == t->vocab_size) {
        st = qlora__tok_grow(t, id + 1, err);
        if (st != QLORA_OK) { d->n_added--; QLORA_FREE(d->added[d->n_added].content); QLORA_FREE(d->added[d->n_added].norm); return st; }
        d->piece[id] = d->added[d->n_added - 1].content;
        d->piece_len[id] = (int32_t)n;
        d->score[id] = 0.0f;
        d->type[id] = QLORA_PIECE_CONTROL;
        t->vocab_size++;
    }
    return qlora__tok_added_rebuild(t, err);
}

// --- SentencePiece protobuf reader -----------------------------------------------------------
//   Wire format: key = varint (field << 3 | wire type); wire types 0 varint, 1 fixed64,
//   2 length-delimited, 5 fixed32. Groups (3, 4) and 6, 7 are rejected.

typedef struct qlora__pb {
    const uint8_t *p;       // (n) bytes of the current message
    int64_t        n, pos;
    int64_t        base;    // file offset of p[0]
    const char    *name;    // file name for details
} qlora__pb;

static qlora_status qlora__pb_varint(qlora__pb *b, uint64_t *v, qlora_error *err) {
    uint64_t x = 0;
    int shift = 0;
    int64_t start = b->pos;
    for (;;) {
        uint8_t c;
        if (b->pos >= b->n)
            return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': truncated varint at byte %lld", b->name,
                               (long long)(b->base + start));
        if (shift > 63)
            return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': varint longer than 10 bytes at byte %lld",
                               b->name, (long long)(b->base + start));
        c = b->p[b->pos++];
        x |= (uint64_t)(c & (shift == 63 ? 0x01 : 0x7F)) << shift;   // the 10th byte holds bit 63 only
        if (!(c & 0x80)) break;
        shift += 7;
    }
    *v = x;
    return QLORA_OK;
}

static qlora_status qlora__pb_key(qlora__pb *b, uint32_t *field, int *wt, qlora_error *err) {
    uint64_t k;
    int64_t at = b->pos;
    qlora_status st = qlora__pb_varint(b, &k, err);
    if (st != QLORA_OK) return st;
    *field = (uint32_t)(k >> 3);
    *wt = (int)(k & 7);
    if ((k >> 3) == 0 || (k >> 3) > 0x1FFFFFFF)
        return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': invalid field number %llu at byte %lld", b->name,
                           (unsigned long long)(k >> 3), (long long)(b->base + at));
    if (*wt != 0 && *wt != 1 && *wt != 2 && *wt != 5)
        return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': unsupported wire type %d (field %u) at byte %lld",
                           b->name, *wt, *field, (long long)(b->base + at));
    return QLORA_OK;
}

// Length-delimited payload: *sub covers it and b moves past it.
static qlora_status qlora__pb_bytes(qlora__pb *b, qlora__pb *sub, qlora_error *err) {
    uint64_t len;
    int64_t at = b->pos;
    qlora_status st = qlora__pb_varint(b, &len, err);
    if (st != QLORA_OK) return st;
    if (len > (uint64_t)(b->n - b->pos))
        return qlora__fail(err, QLORA_ERR_FORMAT,
                           "tokenizer '%s': length %llu at byte %lld runs past the end of its message (byte %lld)",
                           b->name, (unsigned long long)len, (long long)(b->base + at), (long long)(b->base + b->n));
    sub->p = b->p + b->pos;
    sub->n = (int64_t)len;
    sub->pos = 0;
    sub->base = b->base + b->pos;
    sub->name = b->name;
    b->pos += (int64_t)len;
    return QLORA_OK;
}

static qlora_status qlora__pb_fixed(qlora__pb *b, int bytes, uint64_t *v, qlora_error *err) {
    int i;
    uint64_t x = 0;
    *v = 0;
    if (b->n - b->pos < bytes)
        return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': truncated fixed%d at byte %lld", b->name, bytes * 8,
                           (long long)(b->base + b->pos));
    for (i = 0; i < bytes; i++) x |= (uint64_t)b->p[b->pos + i] << (8 * i);
    b->pos += bytes;
    *v = x;
    return QLORA_OK;
}

static qlora_status qlora__pb_skip(qlora__pb *b, int wt, qlora_error *err) {
    uint64_t v;
    qlora__pb sub;
    if (wt == 0) return qlora__pb_varint(b, &v, err);
    if (wt == 1) return qlora__pb_fixed(b, 8, &v, err);
    if (wt == 5) return qlora__pb_fixed(b, 4, &v, err);
    return qlora__pb_bytes(b, &sub, err);
}

static qlora_status qlora__pb_want(qlora__pb *b, int64_t at, uint32_t field, int wt, int want, const char *msg,
                                   qlora_error *err) {
    if (wt == want) return QLORA_OK;
    return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': %s field %u has wire type %d, expected %d, at byte %lld",
                       b->name, msg, field, wt, want, (long long)(b->base + at));
}

// One ModelProto.SentencePiece: piece (1, string), score (2, float), type (3, enum).
typedef struct qlora__pb_piece {
    const char *s;
    int64_t     n;
    float       score;
    int32_t     type;
    int64_t     at;   // file offset of the message
} qlora__pb_piece;

static qlora_status qlora__pb_read_piece(qlora__pb *m, qlora__pb_piece *pc, qlora_error *err) {
    qlora_status st;
    pc->s = NULL;
    pc->n = 0;
    pc->score = 0.0f;
    pc->type = QLORA_PIECE_NORMAL;
    pc->at = m->base;
    while (m->pos < m->n) {
        uint32_t f;
        int wt;
        int64_t at = m->pos;
        uint64_t v = 0;
        if ((st = qlora__pb_key(m, &f, &wt, err)) != QLORA_OK) return st;
        if (f == 1) {
            qlora__pb sub;
            if ((st = qlora__pb_want(m, at, f, wt, 2, "SentencePiece", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_bytes(m, &sub, err)) != QLORA_OK) return st;
            pc->s = (const char *)sub.p;
            pc->n = sub.n;
        } else if (f == 2) {
            uint32_t u;
            if ((st = qlora__pb_want(m, at, f, wt, 5, "SentencePiece", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_fixed(m, 4, &v, err)) != QLORA_OK) return st;
            u = (uint32_t)v;
            memcpy(&pc->score, &u, 4);
        } else if (f == 3) {
            if ((st = qlora__pb_want(m, at, f, wt, 0, "SentencePiece", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_varint(m, &v, err)) != QLORA_OK) return st;
            if (v < 1 || v > 6)
                return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': piece type %lld at byte %lld is not 1..6",
                                   m->name, (long long)(int64_t)v, (long long)(m->base + at));
            pc->type = (int32_t)v;
        } else {
            if ((st = qlora__pb_skip(m, wt, err)) != QLORA_OK) return st;
        }
    }
    return QLORA_OK;
}

// Model-level settings read from trainer_spec (2), normalizer_spec (3), denormalizer_spec (5).
typedef struct qlora__pb_spec {
    int32_t model_type, byte_fallback, ws_suffix;
    int32_t add_dummy_prefix, remove_extra_ws, escape_ws;
    int32_t ids[4];          // unk, bos, eos, pad from trainer_spec (fields 40..43)
    int64_t ids_at[4];       // offset where each was read, -1 when absent
    const char *names[4];    // unk_piece, bos_piece, eos_piece, pad_piece (fields 45..48)
    int64_t name_len[4];
    const char *unk_surface; // field 44
    int64_t unk_surface_len;
    int64_t charsmap_len, charsmap_at, denorm_len, denorm_at;
} qlora__pb_spec;

static qlora_status qlora__pb_read_trainer(qlora__pb *m, qlora__pb_spec *sp, qlora_error *err) {
    qlora_status st;
    while (m->pos < m->n) {
        uint32_t f;
        int wt;
        int64_t at = m->pos;
        uint64_t v;
        if ((st = qlora__pb_key(m, &f, &wt, err)) != QLORA_OK) return st;
        if (f == 3 || f == 24 || f == 35 || (f >= 40 && f <= 43)) {
            if ((st = qlora__pb_want(m, at, f, wt, 0, "TrainerSpec", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_varint(m, &v, err)) != QLORA_OK) return st;
            if (f == 3) sp->model_type = (int32_t)(uint32_t)v;
            else if (f == 24) sp->ws_suffix = v != 0;
            else if (f == 35) sp->byte_fallback = v != 0;
            else { sp->ids[f - 40] = (int32_t)(uint32_t)v; sp->ids_at[f - 40] = m->base + at; }
        } else if (f >= 44 && f <= 48) {
            qlora__pb sub;
            if ((st = qlora__pb_want(m, at, f, wt, 2, "TrainerSpec", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_bytes(m, &sub, err)) != QLORA_OK) return st;
            if (f == 44) { sp->unk_surface = (const char *)sub.p; sp->unk_surface_len = sub.n; }
            else { sp->names[f - 45] = (const char *)sub.p; sp->name_len[f - 45] = sub.n; }
        } else {
            if ((st = qlora__pb_skip(m, wt, err)) != QLORA_OK) return st;
        }
    }
    return QLORA_OK;
}

static qlora_status qlora__pb_read_normalizer(qlora__pb *m, qlora__pb_spec *sp, int denorm, qlora_error *err) {
    qlora_status st;
    while (m->pos < m->n) {
        uint32_t f;
        int wt;
        int64_t at = m->pos;
        uint64_t v;
        if ((st = qlora__pb_key(m, &f, &wt, err)) != QLORA_OK) return st;
        if (f == 2) {
            qlora__pb sub;
            if ((st = qlora__pb_want(m, at, f, wt, 2, "NormalizerSpec", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_bytes(m, &sub, err)) != QLORA_OK) return st;
            if (denorm) { sp->denorm_len = sub.n; sp->denorm_at = sub.base; }
            else { sp->charsmap_len = sub.n; sp->charsmap_at = sub.base; }
        } else if (f >= 3 && f <= 5 && !denorm) {
            if ((st = qlora__pb_want(m, at, f, wt, 0, "NormalizerSpec", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_varint(m, &v, err)) != QLORA_OK) return st;
            if (f == 3) sp->add_dummy_prefix = v != 0;
            else if (f == 4) sp->remove_extra_ws = v != 0;
            else sp->escape_ws = v != 0;
        } else {
            if ((st = qlora__pb_skip(m, wt, err)) != QLORA_OK) return st;
        }
    }
    return QLORA_OK;
}

// Walks the ModelProto. fill == 0: validates, counts pieces and their bytes, reads the specs.
// fill == 1: stores the pieces into t (allocated for the counts of the first walk).
static qlora_status qlora__pb_walk(qlora__pb *top, qlora__pb_spec *sp, int fill, int64_t *n_pieces,
                                   int64_t *blob_bytes, qlora_tokenizer *t, qlora_error *err) {
    qlora_status st;
    int64_t np = 0, bb = 0;
    top->pos = 0;
    while (top->pos < top->n) {
        uint32_t f;
        int wt;
        int64_t at = top->pos;
        qlora__pb sub;
        if ((st = qlora__pb_key(top, &f, &wt, err)) != QLORA_OK) return st;
        if (f == 1 || f == 2 || f == 3 || f == 5) {
            if ((st = qlora__pb_want(top, at, f, wt, 2, "ModelProto", err)) != QLORA_OK) return st;
            if ((st = qlora__pb_bytes(top, &sub, err)) != QLORA_OK) return st;
            if (f == 1) {
                qlora__pb_piece pc;
                if ((st = qlora__pb_read_piece(&sub, &pc, err)) != QLORA_OK) return st;
                if (pc.n == 0)
                    return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': piece %lld (byte %lld) is empty",
                                       top->name, (long long)np, (long long)pc.at);
                if (pc.score != pc.score)
                    return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': piece %lld (byte %lld) has a NaN score",
                                       top->name, (long long)np, (long long)pc.at);
                if (np >= INT32_MAX / 2 || pc.n > INT32_MAX / 2)
                    return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': too many pieces at byte %lld",
                                       top->name, (long long)pc.at);
                if (fill) {
                    struct qlora__tok_data *d = t->d;
                    char *dst = d->blob + bb;
                    memcpy(dst, pc.s, (size_t)pc.n);
                    dst[pc.n] = 0;
                    d->piece[np] = dst;
                    d->piece_len[np] = (int32_t)pc.n;
                    d->score[np] = pc.score == 0.0f ? 0.0f : pc.score;   // -0 -> +0
                    d->type[np] = (uint8_t)pc.type;
                }
                np++;
                bb += pc.n + 1;
            } else if (!fill) {
                if (f == 2) st = qlora__pb_read_trainer(&sub, sp, err);
                else st = qlora__pb_read_normalizer(&sub, sp, f == 5, err);
                if (st != QLORA_OK) return st;
            }
        } else {
            if ((st = qlora__pb_skip(top, wt, err)) != QLORA_OK) return st;
        }
    }
    *n_pieces = np;
    *blob_bytes = bb;
    return QLORA_OK;
}

// File offset of the message of piece `index` (for error details), or -1.
static long long qlora__pb_piece_offset(const qlora__pb *top, int32_t index) {
    qlora__pb b = *top, sub;
    int32_t k = 0;
    b.pos = 0;
    while (b.pos < b.n) {
        uint32_t f;
        int wt;
        if (qlora__pb_key(&b, &f, &wt, NULL) != QLORA_OK) return -1;
        if (f == 1 && wt == 2) {
            if (qlora__pb_bytes(&b, &sub, NULL) != QLORA_OK) return -1;
            if (k++ == index) return (long long)sub.base;
        } else if (qlora__pb_skip(&b, wt, NULL) != QLORA_OK) {
            return -1;
        }
    }
    return -1;
}

// Checks pieces the way sentencepiece's InitializePieces does and fills the maps and ids.
static qlora_status qlora__tok_spm_finish(qlora_tokenizer *t, const qlora__pb_spec *sp, const qlora__pb *top,
                                          const char *name, qlora_error *err) {
    struct qlora__tok_data *d = t->d;
    int32_t i, n = t->vocab_size, n_user = 0;
    int32_t unk = -1, nbytes = 0;
    static const char *const defaults[4] = { "<unk>", "<s>", "</s>", "<pad>" };
    int32_t *ids[4];
    for (i = 0; i < n; i++) {
        int ty = d->type[i];
        int normal = ty == QLORA_PIECE_NORMAL || ty == QLORA_PIECE_USER_DEFINED || ty == QLORA_PIECE_UNUSED;
        int32_t dup = qlora__tok_map_insert(d, normal ? d->normal : d->reserved, i);
        if (dup >= 0)
            return qlora__fail(err, QLORA_ERR_FORMAT,
                               "tokenizer '%s': piece %d '%.40s' at byte %lld is already defined as piece %d", name,
                               (int)i, d->piece[i], qlora__pb_piece_offset(top, i), (int)dup);
        if (ty == QLORA_PIECE_USER_DEFINED) n_user++;
        if (ty == QLORA_PIECE_UNKNOWN) {
            if (unk >= 0)
                return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': pieces %d and %d (byte %lld) are both UNKNOWN",
                                   name, (int)unk, (int)i, qlora__pb_piece_offset(top, i));
            unk = i;
        }
        if (ty == QLORA_PIECE_BYTE) {
            int b = qlora__tok_piece_byte(d->piece[i], d->piece_len[i]);
            if (!sp->byte_fallback)
                return qlora__fail(err, QLORA_ERR_FORMAT,
                                   "tokenizer '%s': byte piece %d at byte %lld but trainer_spec.byte_fallback is false",
                                   name, (int)i, qlora__pb_piece_offset(top, i));
            if (b < 0)
                return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': byte piece %d '%.40s' at byte %lld is not <0xXX>",
                                   name, (int)i, d->piece[i], qlora__pb_piece_offset(top, i));
            if (d->byte_id[b] < 0) nbytes++;
            d->byte_id[b] = i;
        }
    }
    if (unk < 0) return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': no UNKNOWN piece", name);
    if (sp->byte_fallback && nbytes != 256)
        return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': byte_fallback with %d of 256 byte pieces", name,
                           (int)nbytes);
    for (i = 0; i < 4; i++) {
        if (sp->ids_at[i] >= 0 && (sp->ids[i] < -1 || sp->ids[i] >= n))
            return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': trainer_spec %s_id %d at byte %lld is outside [-1, %d)",
                               name, i == 0 ? "unk" : i == 1 ? "bos" : i == 2 ? "eos" : "pad", (int)sp->ids[i],
                               (long long)sp->ids_at[i], (int)n);
    }
    t->unk_id = unk;
    // Like sentencepiece, the special ids come from the piece names (defaults <s>, </s>, <pad>).
    ids[0] = &t->unk_id; ids[1] = &t->bos_id; ids[2] = &t->eos_id; ids[3] = &t->pad_id;
    for (i = 1; i < 4; i++) {
        const char *s = sp->names[i] && sp->name_len[i] > 0 ? sp->names[i] : defaults[i];
        int64_t l = sp->names[i] && sp->name_len[i] > 0 ? sp->name_len[i] : (int64_t)strlen(defaults[i]);
        int32_t id = qlora__tok_piece_to_id(t, s, l);
        *ids[i] = (id >= 0 && d->type[id] == QLORA_PIECE_CONTROL) ? id : -1;
    }
    if (n_user > 0) {
        const char **s = (const char **)qlora__alloc((int64_t)n_user * (int64_t)sizeof(char *));
        int32_t *l = (int32_t *)qlora__alloc((int64_t)n_user * 4);
        int32_t *v = (int32_t *)qlora__alloc((int64_t)n_user * 4);
        int32_t k = 0, ok = s && l && v;
        if (ok) {
            for (i = 0; i < n; i++)
                if (d->type[i] == QLORA_PIECE_USER_DEFINED) { s[k] = d->piece[i]; l[k] = d->piece_len[i]; v[k++] = i; }
            ok = qlora__tok_matcher_build(&d->user, k, s, l, v);
        }
        QLORA_FREE((void *)s); QLORA_FREE(l); QLORA_FREE(v);
        if (!ok) return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name);
    }
    d->byte_fallback = sp->byte_fallback;
    d->add_dummy_prefix = sp->add_dummy_prefix;
    d->remove_extra_ws = sp->remove_extra_ws;
    d->escape_ws = sp->escape_ws;
    d->ws_suffix = sp->ws_suffix;
    d->unk_surface = sp->unk_surface ? qlora__tok_strdup(sp->unk_surface, sp->unk_surface_len)
                                     : qlora__tok_strdup(" \xe2\x81\x87 ", 5);
    if (!d->unk_surface) return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name);
    return QLORA_OK;
}

QLORADEF qlora_status qlora_tokenizer_load_model_buffer(qlora_tokenizer *t, const void *data, size_t len,
                                                        const char *name, qlora_error *err) {
    qlora__pb top;
    qlora__pb_spec sp;
    int64_t np = 0, bb = 0, np2 = 0, bb2 = 0;
    qlora_status st;
    int i;
    if (!name) name = "(buffer)";
    if (!t) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_load_model_buffer: t is NULL");
    memset(t, 0, sizeof(*t));
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    if (!data && len > 0) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_load_model_buffer: data is NULL");
    if ((uint64_t)len > (uint64_t)INT64_MAX / 2)
        return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': %llu bytes is too large", name, (unsigned long long)len);
    memset(&sp, 0, sizeof(sp));
    sp.model_type = 1;          // proto default UNIGRAM
    sp.add_dummy_prefix = sp.remove_extra_ws = sp.escape_ws = 1;
    for (i = 0; i < 4; i++) sp.ids_at[i] = -1;
    top.p = (const uint8_t *)data;
    top.n = (int64_t)len;
    top.pos = 0;
    top.base = 0;
    top.name = name;
    st = qlora__pb_walk(&top, &sp, 0, &np, &bb, t, err);
    if (st != QLORA_OK) return st;
    if (np == 0) return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': no pieces (%llu bytes)", name, (unsigned long long)len);
    if (sp.model_type != 2)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': trainer_spec.model_type %d is not BPE (2)", name,
                           (int)sp.model_type);
    if (sp.charsmap_len > 0)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED,
                           "tokenizer '%s': normalizer_spec has a precompiled charsmap (%lld bytes at byte %lld); only the identity normalizer is supported",
                           name, (long long)sp.charsmap_len, (long long)sp.charsmap_at);
    if (sp.denorm_len > 0)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': denormalizer charsmap at byte %lld is not supported",
                           name, (long long)sp.denorm_at);
    st = qlora__tok_alloc(t, (int32_t)np, bb, name, err);
    if (st != QLORA_OK) return st;
    t->kind = QLORA_TOKENIZER_SPM;
    st = qlora__pb_walk(&top, &sp, 1, &np2, &bb2, t, err);
    if (st == QLORA_OK) st = qlora__tok_spm_finish(t, &sp, &top, name, err);
    if (st != QLORA_OK) qlora_tokenizer_free(t);
    return st;
}

// --- tokenizer.json (Hugging Face) -----------------------------------------------------------

// Applies the HF normalizer (Prepend / Replace steps) to s[0..n); *out is allocated (NUL-terminated).
static qlora_status qlora__tok_hf_normalize(const struct qlora__tok_data *d, const char *s, int64_t n, char **out,
                                            int64_t *out_n) {
    char *cur = qlora__tok_strdup(s, n);
    int64_t cn = n;
    int32_t k;
    if (!cur) return QLORA_ERR_NOMEM;
    for (k = 0; k < d->n_norm; k++) {
        const char *a = d->norm_a[k];
        int64_t al = (int64_t)strlen(a);
        if (d->norm_op[k] == 1) {
            char *nx;
            if (cn == 0) continue;   // Prepend leaves an empty string empty
            nx = (char *)qlora__alloc(cn + al + 1);
            if (!nx) { QLORA_FREE(cur); return QLORA_ERR_NOMEM; }
            memcpy(nx, a, (size_t)al);
            memcpy(nx + al, cur, (size_t)cn + 1);
            QLORA_FREE(cur);
            cur = nx;
            cn += al;
        } else if (d->norm_op[k] == 2 && al > 0) {
            const char *b = d->norm_b[k];
            int64_t bl = (int64_t)strlen(b), hits = 0, i, o = 0, need;
            char *nx;
            for (i = 0; i + al <= cn;) {
                if (memcmp(cur + i, a, (size_t)al) == 0) { hits++; i += al; } else i++;
            }
            if (hits == 0) continue;
            need = cn + hits * (bl - al) + 1;
            nx = (char *)qlora__alloc(need > 1 ? need : 1);
            if (!nx) { QLORA_FREE(cur); return QLORA_ERR_NOMEM; }
            for (i = 0; i < cn;) {
                if (i + al <= cn && memcmp(cur + i, a, (size_t)al) == 0) { memcpy(nx + o, b, (size_t)bl); o += bl; i += al; }
                else nx[o++] = cur[i++];
            }
            nx[o] = 0;
            QLORA_FREE(cur);
            cur = nx;
            cn = o;
        }
    }
    *out = cur;
    *out_n = cn;
    return QLORA_OK;
}

static qlora_status qlora__tok_json_fail(qlora_error *err, const char *name, const char *what) {
    return qlora__fail(err, QLORA_ERR_FORMAT, "tokenizer '%s': %s", name, what);
}

static int qlora__tok_streq(const qlora_json *v, const char *s) {
    return v && v->type == QLORA_JSON_STRING && strcmp(v->str, s) == 0 && v->str_len == strlen(s);
}

// Reads one normalizer object (Prepend, Replace with a String pattern, Sequence of those).
static qlora_status qlora__tok_json_normalizer(struct qlora__tok_data *d, const qlora_json *nz, const char *name,
                                               qlora_error *err) {
    const qlora_json *ty;
    if (!nz || nz->type == QLORA_JSON_NULL) return QLORA_OK;
    if (nz->type != QLORA_JSON_OBJECT) return qlora__tok_json_fail(err, name, "normalizer is not an object");
    ty = qlora_json_get(nz, "type");
    if (qlora__tok_streq(ty, "Sequence")) {
        const qlora_json *list = qlora_json_get(nz, "normalizers");
        int64_t i;
        if (!list || list->type != QLORA_JSON_ARRAY)
            return qlora__tok_json_fail(err, name, "normalizer Sequence without a normalizers array");
        for (i = 0; i < list->count; i++) {
            qlora_status st = qlora__tok_json_normalizer(d, &list->items[i], name, err);
            if (st != QLORA_OK) return st;
        }
        return QLORA_OK;
    }
    if (d->n_norm >= QLORA__TOK_MAXNORM)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': more than %d normalizer steps", name, QLORA__TOK_MAXNORM);
    if (qlora__tok_streq(ty, "Prepend")) {
        const qlora_json *p = qlora_json_get(nz, "prepend");
        if (!p || p->type != QLORA_JSON_STRING) return qlora__tok_json_fail(err, name, "Prepend normalizer without a prepend string");
        d->norm_op[d->n_norm] = 1;
        d->norm_a[d->n_norm] = qlora__tok_strdup(p->str, (int64_t)p->str_len);
        if (!d->norm_a[d->n_norm]) return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name);
        d->n_norm++;
        return QLORA_OK;
    }
    if (qlora__tok_streq(ty, "Replace")) {
        const qlora_json *pat = qlora_json_get(nz, "pattern");
        const qlora_json *ps = pat ? qlora_json_get(pat, "String") : NULL;
        const qlora_json *c = qlora_json_get(nz, "content");
        if (pat && qlora_json_get(pat, "Regex"))
            return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': Replace normalizer with a Regex pattern", name);
        if (!ps || ps->type != QLORA_JSON_STRING || !c || c->type != QLORA_JSON_STRING || ps->str_len == 0)
            return qlora__tok_json_fail(err, name, "Replace normalizer needs pattern.String and content strings");
        d->norm_op[d->n_norm] = 2;
        d->norm_a[d->n_norm] = qlora__tok_strdup(ps->str, (int64_t)ps->str_len);
        d->norm_b[d->n_norm] = qlora__tok_strdup(c->str, (int64_t)c->str_len);
        if (!d->norm_a[d->n_norm] || !d->norm_b[d->n_norm])
            return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name);
        d->n_norm++;
        return QLORA_OK;
    }
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': normalizer type '%s' is not supported", name,
                       ty && ty->type == QLORA_JSON_STRING ? ty->str : "?");
}

static qlora_status qlora__tok_json_pretok(struct qlora__tok_data *d, const qlora_json *pt, const char *name,
                                           qlora_error *err) {
    const qlora_json *ty, *r, *ps, *sp, *ap;
    int ml;
    if (!pt || pt->type == QLORA_JSON_NULL) return QLORA_OK;
    if (pt->type != QLORA_JSON_OBJECT) return qlora__tok_json_fail(err, name, "pre_tokenizer is not an object");
    ty = qlora_json_get(pt, "type");
    if (qlora__tok_streq(ty, "Sequence")) {
        const qlora_json *list = qlora_json_get(pt, "pretokenizers");
        if (list && list->type == QLORA_JSON_ARRAY && list->count == 1)
            return qlora__tok_json_pretok(d, &list->items[0], name, err);
        if (list && list->type == QLORA_JSON_ARRAY && list->count == 0) return QLORA_OK;
    }
    if (!qlora__tok_streq(ty, "Metaspace"))
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': pre_tokenizer type '%s' is not supported", name,
                           ty && ty->type == QLORA_JSON_STRING ? ty->str : "?");
    r = qlora_json_get(pt, "replacement");
    if (!r || r->type != QLORA_JSON_STRING || r->str_len == 0 || r->str_len >= sizeof(d->ms_repl) ||
        !qlora__tok_utf8(r->str, (int64_t)r->str_len, &ml) || (size_t)ml != r->str_len)
        return qlora__tok_json_fail(err, name, "Metaspace replacement must be one character");
    memcpy(d->ms_repl, r->str, r->str_len);
    d->ms_repl[r->str_len] = 0;
    d->metaspace = 1;
    ps = qlora_json_get(pt, "prepend_scheme");
    ap = qlora_json_get(pt, "add_prefix_space");
    if (ps && ps->type == QLORA_JSON_STRING) {
        if (strcmp(ps->str, "always") == 0) d->ms_scheme = 1;
        else if (strcmp(ps->str, "first") == 0) d->ms_scheme = 2;
        else if (strcmp(ps->str, "never") == 0) d->ms_scheme = 0;
        else return qlora__tok_json_fail(err, name, "Metaspace prepend_scheme is not always/first/never");
    } else {
        d->ms_scheme = (ap && ap->type == QLORA_JSON_BOOL) ? ap->boolean : 1;
    }
    sp = qlora_json_get(pt, "split");
    d->ms_split = (sp && sp->type == QLORA_JSON_BOOL) ? sp->boolean : 1;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_tokenizer_load_json_buffer(qlora_tokenizer *t, const char *text, size_t len,
                                                       const char *name, qlora_error *err) {
    qlora_json_doc doc;
    const qlora_json *root, *model, *vocab, *merges, *added, *v;
    struct qlora__tok_data *d;
    qlora_status st;
    int64_t i, nv, blob = 0, entries;
    int32_t n = 0, max_id = -1;
    int32_t *seen = NULL;
    char msg[200];
    if (!name) name = "(buffer)";
    if (!t) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_load_json_buffer: t is NULL");
    memset(t, 0, sizeof(*t));
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    memset(&doc, 0, sizeof(doc));
    st = qlora_json_parse(&doc, text, len, err);
    if (st != QLORA_OK) {
        if (err) {   // prefix the parser's "line L col C: ..." with the file name
            char tmp[sizeof(err->detail)];
            const char *parts[4];
            size_t k = 0, j, m, cap = sizeof(err->detail) - 1;
            int q;
            memcpy(tmp, err->detail, sizeof(tmp));
            tmp[sizeof(tmp) - 1] = 0;
            parts[0] = "tokenizer '"; parts[1] = name; parts[2] = "': "; parts[3] = tmp;
            for (q = 0; q < 4; q++) {
                m = strlen(parts[q]);
                for (j = 0; j < m && k < cap; j++) err->detail[k++] = parts[q][j];
            }
            err->detail[k] = 0;
        }
        return st;
    }
    root = &doc.root;
    model = qlora_json_get(root, "model");
    if (!model || model->type != QLORA_JSON_OBJECT) { st = qlora__tok_json_fail(err, name, "no \"model\" object"); goto done; }
    v = qlora_json_get(model, "type");
    if (v && !qlora__tok_streq(v, "BPE")) {
        st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': model.type '%s' is not BPE", name,
                         v->type == QLORA_JSON_STRING ? v->str : "?");
        goto done;
    }
    vocab = qlora_json_get(model, "vocab");
    merges = qlora_json_get(model, "merges");
    if (!vocab || vocab->type != QLORA_JSON_OBJECT || vocab->count == 0) { st = qlora__tok_json_fail(err, name, "model.vocab is missing or empty"); goto done; }
    if (merges && merges->type != QLORA_JSON_ARRAY) { st = qlora__tok_json_fail(err, name, "model.merges is not an array"); goto done; }
    v = qlora_json_get(model, "continuing_subword_prefix");
    if (v && v->type != QLORA_JSON_NULL && !(v->type == QLORA_JSON_STRING && v->str_len == 0)) {
        st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': continuing_subword_prefix is not supported", name);
        goto done;
    }
    v = qlora_json_get(model, "end_of_word_suffix");
    if (v && v->type != QLORA_JSON_NULL && !(v->type == QLORA_JSON_STRING && v->str_len == 0)) {
        st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "tokenizer '%s': end_of_word_suffix is not supported", name);
        goto done;
    }
    // ids: vocab values, then added tokens (which may extend the vocabulary)
    nv = vocab->count;
    for (i = 0; i < nv; i++) {
        int64_t id;
        if (!qlora_json_as_int(&vocab->items[i], &id) || id < 0 || id >= INT32_MAX / 2) {
            snprintf(msg, sizeof msg, "model.vocab entry %lld ('%.40s') has an invalid id", (long long)i, vocab->keys[i]);
            st = qlora__tok_json_fail(err, name, msg);
            goto done;
        }
        if (vocab->key_lens[i] == 0) {
            snprintf(msg, sizeof msg, "model.vocab entry %lld is an empty string", (long long)i);
            st = qlora__tok_json_fail(err, name, msg);
            goto done;
        }
        if (id > max_id) max_id = (int32_t)id;
        blob += (int64_t)vocab->key_lens[i] + 1;
    }
    added = qlora_json_get(root, "added_tokens");
    if (added && added->type != QLORA_JSON_ARRAY && added->type != QLORA_JSON_NULL) { st = qlora__tok_json_fail(err, name, "added_tokens is not an array"); goto done; }
    if (added && added->type == QLORA_JSON_ARRAY) {
        for (i = 0; i < added->count; i++) {
            const qlora_json *a = &added->items[i];
            const qlora_json *c = qlora_json_get(a, "content");
            int64_t id;
            if (!c || c->type != QLORA_JSON_STRING || c->str_len == 0 || !qlora_json_as_int(qlora_json_get(a, "id"), &id) ||
                id < 0 || id >= INT32_MAX / 2) {
                snprintf(msg, sizeof msg, "added_tokens[%lld] needs a non-empty content and a valid id", (long long)i);
                st = qlora__tok_json_fail(err, name, msg);
                goto done;
            }
            if (id > max_id) max_id = (int32_t)id;
            blob += (int64_t)c->str_len + 1;
        }
    }
    // every id below the largest needs a token, so the entries bound the ids: checked before the tables
    // are sized by the largest id
    entries = nv + (added && added->type == QLORA_JSON_ARRAY ? added->count : 0);
    if ((int64_t)max_id >= entries) {
        snprintf(msg, sizeof msg, "id %lld is larger than the %lld entries of model.vocab and added_tokens allow",
                 (long long)max_id, (long long)entries);
        st = qlora__tok_json_fail(err, name, msg);
        goto done;
    }
    n = max_id + 1;
    st = qlora__tok_alloc(t, n, blob, name, err);
    if (st != QLORA_OK) goto done;
    t->kind = QLORA_TOKENIZER_HF;
    d = t->d;
    d->n_base = n;
    seen = (int32_t *)qlora__alloc((int64_t)n * 4);
    if (!seen) { st = qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name); goto done; }
    for (i = 0; i < n; i++) seen[i] = 0;
    blob = 0;
    for (i = 0; i < nv; i++) {
        int64_t id;
        int32_t dup;
        qlora_json_as_int(&vocab->items[i], &id);
        if (seen[id]) {
            snprintf(msg, sizeof msg, "model.vocab id %lld is used twice ('%.40s')", (long long)id, vocab->keys[i]);
            st = qlora__tok_json_fail(err, name, msg);
            goto done;
        }
        seen[id] = 1;
        memcpy(d->blob + blob, vocab->keys[i], vocab->key_lens[i] + 1);
        d->piece[id] = d->blob + blob;
        d->piece_len[id] = (int32_t)vocab->key_lens[i];
        d->type[id] = QLORA_PIECE_NORMAL;
        blob += (int64_t)vocab->key_lens[i] + 1;
        dup = qlora__tok_map_insert(d, d->normal, (int32_t)id);
        if (dup >= 0) {
            snprintf(msg, sizeof msg, "model.vocab has '%.40s' twice (ids %d and %lld)", vocab->keys[i], (int)dup, (long long)id);
            st = qlora__tok_json_fail(err, name, msg);
            goto done;
        }
    }
    if (added && added->type == QLORA_JSON_ARRAY) {
        for (i = 0; i < added->count; i++) {
            const qlora_json *a = &added->items[i];
            const qlora_json *c = qlora_json_get(a, "content");
            int64_t id = 0;
            int special = qlora_json_get_bool(a, "special", 0);
            int normalized = qlora_json_get_bool(a, "normalized", !special);
            qlora_json_as_int(qlora_json_get(a, "id"), &id);
            if (seen[id] == 1 && (d->piece_len[id] != (int32_t)c->str_len || memcmp(d->piece[id], c->str, c->str_len) != 0)) {
                snprintf(msg, sizeof msg, "added_tokens[%lld] '%.40s' reuses id %lld of '%.40s'", (long long)i, c->str,
                         (long long)id, d->piece[id]);
                st = qlora__tok_json_fail(err, name, msg);
                goto done;
            }
            if (!seen[id]) {
                memcpy(d->blob + blob, c->str, c->str_len + 1);
                d->piece[id] = d->blob + blob;
                d->piece_len[id] = (int32_t)c->str_len;
                blob += (int64_t)c->str_len + 1;
                seen[id] = 2;
            }
            if (special) d->type[id] = QLORA_PIECE_CONTROL;
            st = qlora__tok_added_push(t, c->str, (int64_t)c->str_len, (int32_t)id, special, normalized,
                                       qlora_json_get_bool(a, "lstrip", 0), qlora_json_get_bool(a, "rstrip", 0),
                                       qlora_json_get_bool(a, "single_word", 0), err);
            if (st != QLORA_OK) goto done;
        }
    }
    for (i = 0; i < n; i++) {
        if (!seen[i]) {
            snprintf(msg, sizeof msg, "id %lld has no token in model.vocab or added_tokens", (long long)i);
            st = qlora__tok_json_fail(err, name, msg);
            goto done;
        }
    }
    // model settings
    d->byte_fallback = qlora_json_get_bool(model, "byte_fallback", 0);
    d->fuse_unk = qlora_json_get_bool(model, "fuse_unk", 0);
    d->ignore_merges = qlora_json_get_bool(model, "ignore_merges", 0);
    v = qlora_json_get(model, "unk_token");
    if (v && v->type == QLORA_JSON_STRING) {
        int32_t id = qlora__tok_map_find(d, d->normal, v->str, (int64_t)v->str_len);
        if (id < 0) {
            snprintf(msg, sizeof msg, "model.unk_token '%.40s' is not in model.vocab", v->str);
            st = qlora__tok_json_fail(err, name, msg);
            goto done;
        }
        t->unk_id = id;
        d->has_unk_token = 1;
        d->type[id] = QLORA_PIECE_UNKNOWN;
    }
    if (d->byte_fallback) {
        for (i = 0; i < 256; i++) {
            char b[8];
            snprintf(b, sizeof b, "<0x%02X>", (unsigned)i);
            d->byte_id[i] = qlora__tok_map_find(d, d->normal, b, 6);
            if (d->byte_id[i] >= 0 && d->type[d->byte_id[i]] == QLORA_PIECE_NORMAL) d->type[d->byte_id[i]] = QLORA_PIECE_BYTE;
        }
    }
    // merges: "a b" strings or ["a", "b"] pairs; rank = position
    if (merges && merges->count > 0) {
        int64_t cap = 16, k;
        while (cap < 2 * merges->count) cap *= 2;
        d->merge_cap = cap;
        d->merge_key = (uint64_t *)qlora__alloc(cap * 8);
        d->merge_rank = (int32_t *)qlora__alloc(cap * 4);
        d->merge_id = (int32_t *)qlora__alloc(cap * 4);
        if (!d->merge_key || !d->merge_rank || !d->merge_id) { st = qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name); goto done; }
        for (k = 0; k < cap; k++) d->merge_key[k] = ~(uint64_t)0;
        for (k = 0; k < merges->count && k < INT32_MAX; k++) {
            const qlora_json *m = &merges->items[k];
            const char *a = NULL, *b = NULL;
            int64_t al = 0, bl = 0;
            int32_t ia, ib, im;
            char *cat;
            uint64_t key, mask = (uint64_t)cap - 1, h;
            if (m->type == QLORA_JSON_STRING) {
                const char *sp = (const char *)memchr(m->str, ' ', m->str_len);
                if (sp && !memchr(sp + 1, ' ', m->str_len - (size_t)(sp - m->str) - 1)) {
                    a = m->str; al = sp - m->str; b = sp + 1; bl = (int64_t)m->str_len - al - 1;
                }
            } else if (m->type == QLORA_JSON_ARRAY && m->count == 2 && m->items[0].type == QLORA_JSON_STRING &&
                       m->items[1].type == QLORA_JSON_STRING) {
                a = m->items[0].str; al = (int64_t)m->items[0].str_len;
                b = m->items[1].str; bl = (int64_t)m->items[1].str_len;
            }
            if (!a) {
                snprintf(msg, sizeof msg, "model.merges[%lld] is not \"a b\" or [\"a\", \"b\"]", (long long)k);
                st = qlora__tok_json_fail(err, name, msg);
                goto done;
            }
            ia = qlora__tok_map_find(d, d->normal, a, al);
            ib = qlora__tok_map_find(d, d->normal, b, bl);
            cat = (char *)qlora__alloc(al + bl + 1);
            if (!cat) { st = qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name); goto done; }
            memcpy(cat, a, (size_t)al);
            memcpy(cat + al, b, (size_t)bl);
            im = qlora__tok_map_find(d, d->normal, cat, al + bl);
            QLORA_FREE(cat);
            if (ia < 0 || ib < 0 || im < 0) {
                snprintf(msg, sizeof msg, "model.merges[%lld] uses a token that is not in model.vocab", (long long)k);
                st = qlora__tok_json_fail(err, name, msg);
                goto done;
            }
            key = ((uint64_t)(uint32_t)ia << 32) | (uint32_t)ib;
            h = qlora__tok_merge_hash(key) & mask;
            while (d->merge_key[h] != ~(uint64_t)0 && d->merge_key[h] != key) h = (h + 1) & mask;
            if (d->merge_key[h] == ~(uint64_t)0) {   // the first occurrence keeps its rank
                d->merge_key[h] = key;
                d->merge_rank[h] = (int32_t)k;
                d->merge_id[h] = im;
            }
        }
    }
    st = qlora__tok_json_normalizer(d, qlora_json_get(root, "normalizer"), name, err);
    if (st == QLORA_OK) st = qlora__tok_json_pretok(d, qlora_json_get(root, "pre_tokenizer"), name, err);
    if (st != QLORA_OK) goto done;
    // the normalized content of normalized added tokens needs the normalizer read just above
    for (i = 0; i < d->n_added; i++) {
        if (d->added[i].normalized) {
            int64_t nl = 0;
            st = qlora__tok_hf_normalize(d, d->added[i].content, d->added[i].len, &d->added[i].norm, &nl);
            if (st != QLORA_OK) { st = qlora__fail(err, st, "tokenizer '%s': out of memory", name); goto done; }
            d->added[i].norm_len = (int32_t)nl;
        }
    }
    st = qlora__tok_added_rebuild(t, err);
    if (st != QLORA_OK) goto done;
    // decode: a leading "▁" is dropped when the pipeline prepends one
    d->add_dummy_prefix = 0;
    for (i = 0; i < d->n_norm; i++)
        if (d->norm_op[i] == 1) d->add_dummy_prefix = 1;
    if (d->metaspace && d->ms_scheme != 0) d->add_dummy_prefix = 1;
    d->remove_extra_ws = 0;
    d->escape_ws = 1;
    d->unk_surface = qlora__tok_strdup(" \xe2\x81\x87 ", 5);
    if (!d->unk_surface) { st = qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory", name); goto done; }
    t->bos_id = qlora_tokenizer_find(t, "<s>", 3);
    t->eos_id = qlora_tokenizer_find(t, "</s>", 4);
    t->pad_id = qlora_tokenizer_find(t, "<pad>", 5);
done:
    QLORA_FREE(seen);
    qlora_json_free(&doc);
    if (st != QLORA_OK) qlora_tokenizer_free(t);
    return st;
}

// Reads a whole file into memory (NUL appended).
static qlora_status qlora__tok_read_file(const char *path, char **data, int64_t *len, qlora_error *err) {
    FILE *f = fopen(path, "rb");
    long sz;
    char *buf;
    if (!f) return qlora__fail(err, QLORA_ERR_IO, "tokenizer '%s': cannot open", path);
    if (fseek(f, 0, SEEK_END) != 0 || (sz = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return qlora__fail(err, QLORA_ERR_IO, "tokenizer '%s': cannot determine the size", path);
    }
    buf = (char *)qlora__alloc((int64_t)sz + 1);
    if (!buf) { fclose(f); return qlora__fail(err, QLORA_ERR_NOMEM, "tokenizer '%s': out of memory for %ld bytes", path, sz); }
    if (sz > 0 && fread(buf, 1, (size_t)sz, f) != (size_t)sz) {
        fclose(f);
        QLORA_FREE(buf);
        return qlora__fail(err, QLORA_ERR_IO, "tokenizer '%s': read failed", path);
    }
    fclose(f);
    buf[sz] = 0;
    *data = buf;
    *len = sz;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_tokenizer_load(qlora_tokenizer *t, const char *path, qlora_error *err) {
    char *data = NULL;
    int64_t len = 0, i;
    size_t pl;
    int is_json;
    qlora_status st;
    if (!t || !path) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_load: NULL argument");
    memset(t, 0, sizeof(*t));
    t->bos_id = t->eos_id = t->pad_id = t->unk_id = -1;
    st = qlora__tok_read_file(path, &data, &len, err);
    if (st != QLORA_OK) return st;
    // ".json" / ".model" decide; otherwise a text starting with '{' is JSON (a ModelProto starts with
    // byte 0x0a, the key of its first piece, so '\n' does not count as leading whitespace here)
    pl = strlen(path);
    is_json = pl >= 5 && strcmp(path + pl - 5, ".json") == 0;
    if (!is_json && !(pl >= 6 && strcmp(path + pl - 6, ".model") == 0)) {
        for (i = 0; i < len; i++) {
            if (data[i] == ' ' || data[i] == '\r' || data[i] == '\t') continue;
            is_json = data[i] == '{';
            break;
        }
    }
    if (is_json) st = qlora_tokenizer_load_json_buffer(t, data, (size_t)len, path, err);
    else st = qlora_tokenizer_load_model_buffer(t, data, (size_t)len, path, err);
    QLORA_FREE(data);
    return st;
}

// --- accessors -------------------------------------------------------------------------------

QLORADEF const char *qlora_tokenizer_piece(const qlora_tokenizer *t, int32_t id) {
    if (!t || !t->d || id < 0 || id >= t->vocab_size) return NULL;
    return t->d->piece[id];
}
QLORADEF int qlora_tokenizer_piece_type(const qlora_tokenizer *t, int32_t id) {
    if (!t || !t->d || id < 0 || id >= t->vocab_size) return 0;
    return t->d->type[id];
}
QLORADEF float qlora_tokenizer_score(const qlora_tokenizer *t, int32_t id) {
    if (!t || !t->d || id < 0 || id >= t->vocab_size) return 0.0f;
    return t->d->score[id];
}
QLORADEF int32_t qlora_tokenizer_find(const qlora_tokenizer *t, const char *s, size_t len) {
    int32_t id, i;
    if (!t || !t->d || !s) return -1;
    for (i = 0; i < t->d->n_added; i++)
        if ((size_t)t->d->added[i].len == len && memcmp(t->d->added[i].content, s, len) == 0) return t->d->added[i].id;
    id = qlora__tok_map_find(t->d, t->d->reserved, s, (int64_t)len);
    if (id < 0) id = qlora__tok_map_find(t->d, t->d->normal, s, (int64_t)len);
    return id;
}
QLORADEF int32_t qlora_tokenizer_vocab_size(const qlora_tokenizer *t) { return t ? t->vocab_size : 0; }
QLORADEF int32_t qlora_tokenizer_bos_id(const qlora_tokenizer *t) { return t ? t->bos_id : -1; }
QLORADEF int32_t qlora_tokenizer_eos_id(const qlora_tokenizer *t) { return t ? t->eos_id : -1; }
QLORADEF int32_t qlora_tokenizer_pad_id(const qlora_tokenizer *t) { return t ? t->pad_id : -1; }
QLORADEF int32_t qlora_tokenizer_unk_id(const qlora_tokenizer *t) { return t ? t->unk_id : -1; }

// --- BPE core --------------------------------------------------------------------------------

// A candidate merge. SPM: pri = order-preserving bits of the merged piece's score; HF:
// pri = ~rank. Larger pri first, then smaller left.
typedef struct qlora__tok_pair {
    uint32_t pri;
    int32_t  left, right, size, id;
} qlora__tok_pair;

static int qlora__tok_pair_before(const qlora__tok_pair *a, const qlora__tok_pair *b) {
    return a->pri > b->pri || (a->pri == b->pri && a->left < b->left);
}

static void qlora__tok_heap_push(qlora__tok_pair *h, int64_t *n, qlora__tok_pair x) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!qlora__tok_pair_before(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static qlora__tok_pair qlora__tok_heap_pop(qlora__tok_pair *h, int64_t *n) {
    qlora__tok_pair top = h[0], x = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && qlora__tok_pair_before(&h[c + 1], &h[c])) c++;
        if (!qlora__tok_pair_before(&h[c], &x)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = x;
    return top;
}

static uint32_t qlora__tok_score_bits(float s) {
    uint32_t u;
    memcpy(&u, &s, 4);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

typedef struct qlora__tok_sym {
    int32_t prev, next, start, len, id;
    int32_t freeze;
} qlora__tok_sym;

// Scratch of one encode call.
typedef struct qlora__tok_work {
    qlora__tok_sym  *sym;     // (cap_sym)
    qlora__tok_pair *heap;    // (cap_heap)
    int64_t          cap_sym, cap_heap;
    qlora__tok_vec   rev;     // SPM UNUSED-piece splits: pairs (id, left length)
    qlora__tok_vec  *out;
    int32_t          prev_unk;
} qlora__tok_work;

static int qlora__tok_work_reserve(qlora__tok_work *w, int64_t nsym) {
    if (nsym > w->cap_sym) {
        QLORA_FREE(w->sym);
        w->sym = (qlora__tok_sym *)qlora__alloc(nsym * (int64_t)sizeof(qlora__tok_sym));
        w->cap_sym = w->sym ? nsym : 0;
        if (!w->sym) return 0;
    }
    if (3 * nsym + 4 > w->cap_heap) {
        QLORA_FREE(w->heap);
        w->heap = (qlora__tok_pair *)qlora__alloc((3 * nsym + 4) * (int64_t)sizeof(qlora__tok_pair));
        w->cap_heap = w->heap ? 3 * nsym + 4 : 0;
        if (!w->heap) return 0;
    }
    return 1;
}

// SPM: emits one final piece the way sentencepiece's PopulateSentencePieceText does.
static int qlora__spm_emit(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int32_t n, int32_t id) {
    const struct qlora__tok_data *d = t->d;
    int is_unk = id >= 0 && d->type[id] == QLORA_PIECE_UNKNOWN;
    int ok = 1;
    if (is_unk && d->byte_fallback) {
        int32_t i;
        for (i = 0; i < n && ok; i++) ok = qlora__tok_push(w->out, d->byte_id[(uint8_t)s[i]]);
    } else if (!(is_unk && w->prev_unk)) {   // a run of unknown pieces is one <unk>
        ok = qlora__tok_push(w->out, id);
    }
    w->prev_unk = is_unk;
    return ok;
}

// SPM: splits a piece formed through an UNUSED piece back into its parts (sentencepiece's
// resegment). Recursion depth is bounded by the piece length.
static int qlora__spm_resegment(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int32_t n) {
    int32_t id = qlora__tok_piece_to_id(t, s, n);
    int64_t k;
    if (id < 0 || t->d->type[id] != QLORA_PIECE_UNUSED) return qlora__spm_emit(t, w, s, n, id);
    for (k = w->rev.n - 2; k >= 0; k -= 2) {
        if (w->rev.v[k] == id) {
            int32_t l = w->rev.v[k + 1];
            return qlora__spm_resegment(t, w, s, l) && qlora__spm_resegment(t, w, s + l, n - l);
        }
    }
    return qlora__spm_emit(t, w, s, n, id);
}

static int qlora__spm_add_pair(const qlora_tokenizer *t, qlora__tok_work *w, const char *text, int32_t l, int32_t r,
                               int64_t *nh) {
    const struct qlora__tok_data *d = t->d;
    qlora__tok_sym *sy = w->sym;
    qlora__tok_pair p;
    int32_t id, size;
    int64_t k;
    if (l < 0 || r < 0 || sy[l].freeze || sy[r].freeze) return 1;
    size = sy[l].len + sy[r].len;
    id = qlora__tok_map_find(d, d->normal, text + sy[l].start, size);
    if (id < 0) return 1;
    p.pri = qlora__tok_score_bits(d->score[id]);
    p.left = l;
    p.right = r;
    p.size = size;
    p.id = id;
    qlora__tok_heap_push(w->heap, nh, p);
    if (d->type[id] == QLORA_PIECE_UNUSED) {   // remember the split (the last one wins)
        for (k = 0; k < w->rev.n; k += 2)
            if (w->rev.v[k] == id) { w->rev.v[k + 1] = sy[l].len; return 1; }
        return qlora__tok_push(&w->rev, id) && qlora__tok_push(&w->rev, sy[l].len);
    }
    return 1;
}

// SPM BPE over the normalized text[0..n).
static int qlora__spm_bpe(const qlora_tokenizer *t, qlora__tok_work *w, const char *text, int64_t n) {
    const struct qlora__tok_data *d = t->d;
    qlora__tok_sym *sy;
    int64_t ns = 0, nh = 0, i = 0;
    int32_t k;
    if (n == 0) return 1;
    if (!qlora__tok_work_reserve(w, n)) return 0;
    sy = w->sym;
    w->rev.n = 0;
    while (i < n) {
        int32_t m = qlora__tok_match(&d->user, text + i, n - i);
        int64_t len;
        if (m >= 0) {
            len = d->user.len[m];
            sy[ns].freeze = 1;
        } else {
            len = qlora__tok_onechar((uint8_t)text[i]);
            if (len > n - i) len = n - i;
            sy[ns].freeze = 0;
        }
        sy[ns].start = (int32_t)i;
        sy[ns].len = (int32_t)len;
        sy[ns].prev = (int32_t)ns - 1;
        sy[ns].next = i + len < n ? (int32_t)ns + 1 : -1;
        sy[ns].id = -1;
        ns++;
        i += len;
    }
    for (k = 1; k < ns; k++)
        if (!qlora__spm_add_pair(t, w, text, k - 1, k, &nh)) return 0;
    while (nh > 0) {
        qlora__tok_pair top = qlora__tok_heap_pop(w->heap, &nh);
        qlora__tok_sym *L = &sy[top.left], *R = &sy[top.right];
        if (L->len == 0 || R->len == 0 || L->len + R->len != top.size) continue;   // stale
        L->len += R->len;
        L->next = R->next;
        if (R->next >= 0) sy[R->next].prev = top.left;
        R->len = 0;
        if (!qlora__spm_add_pair(t, w, text, L->prev, top.left, &nh)) return 0;
        if (!qlora__spm_add_pair(t, w, text, top.left, L->next, &nh)) return 0;
    }
    for (k = 0; k != -1; k = sy[k].next)
        if (!qlora__spm_resegment(t, w, text + sy[k].start, sy[k].len)) return 0;
    return 1;
}

// SPM normalizer (identity rule). out must hold 3 * n + 3 bytes.
static int64_t qlora__spm_normalize(const struct qlora__tok_data *d, const char *s, int64_t n, char *out) {
    int64_t i = 0, o = 0;
    int is_prev_space;
    if (n == 0) return 0;
    if (d->remove_extra_ws) {   // leading spaces
        while (i < n) {
            int32_t m = qlora__tok_match(&d->user, s + i, n - i);
            if (m >= 0) { if (d->user.len[m] == 1 && s[i] == ' ') { i++; continue; } break; }
            if (s[i] != ' ') break;
            i++;
        }
        if (i == n) return 0;
    }
    if (!d->ws_suffix && d->add_dummy_prefix) {
        if (d->escape_ws) { memcpy(out, qlora__tok_ws, 3); o = 3; } else out[o++] = ' ';
    }
    is_prev_space = d->remove_extra_ws;
    while (i < n) {
        const char *p;
        int64_t pl, consumed, k;
        int32_t m = qlora__tok_match(&d->user, s + i, n - i);
        if (m >= 0) {
            p = s + i;
            pl = consumed = d->user.len[m];
        } else {
            int ml;
            if (qlora__tok_utf8(s + i, n - i, &ml)) { p = s + i; pl = consumed = ml; }
            else { p = qlora__tok_fffd; pl = 3; consumed = 1; }
        }
        if (is_prev_space)
            while (pl > 0 && p[0] == ' ') { p++; pl--; }
        if (pl > 0) {
            for (k = 0; k < pl; k++) {
                if (d->escape_ws && p[k] == ' ') { memcpy(out + o, qlora__tok_ws, 3); o += 3; }
                else out[o++] = p[k];
            }
            is_prev_space = p[pl - 1] == ' ';
        }
        i += consumed;
        if (!d->remove_extra_ws) is_prev_space = 0;
    }
    if (d->remove_extra_ws) {   // trailing spaces
        if (d->escape_ws) { while (o >= 3 && memcmp(out + o - 3, qlora__tok_ws, 3) == 0) o -= 3; }
        else { while (o >= 1 && out[o - 1] == ' ') o--; }
    }
    if (d->ws_suffix && d->add_dummy_prefix) {
        if (d->escape_ws) { memcpy(out + o, qlora__tok_ws, 3); o += 3; } else out[o++] = ' ';
    }
    return o;
}

static int qlora__spm_segment(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int64_t n) {
    char *norm;
    int64_t nn;
    int ok;
    if (n == 0) return 1;
    norm = (char *)qlora__alloc(3 * n + 3);
    if (!norm) return 0;
    nn = qlora__spm_normalize(t->d, s, n, norm);
    w->prev_unk = 0;
    ok = qlora__spm_bpe(t, w, norm, nn);
    QLORA_FREE(norm);
    return ok;
}

// HF: BPE of one word (valid UTF-8), Hugging Face tokenizers' merge_word + merge_all.
static int qlora__hf_word(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int64_t n) {
    const struct qlora__tok_data *d = t->d;
    qlora__tok_sym *sy;
    int64_t ns = 0, nh = 0, i = 0, k;
    int32_t unk_len = 0, have_unk = 0, rank, mid;
    if (n == 0) return 1;
    if (d->ignore_merges) {
        int32_t id = qlora__tok_map_find(d, d->normal, s, n);
        if (id >= 0) return qlora__tok_push(w->out, id);
    }
    if (!qlora__tok_work_reserve(w, n)) return 0;
    sy = w->sym;
#define QLORA__HF_ADD(ID, LEN)                                   \
    do {                                                         \
        sy[ns].id = (ID); sy[ns].len = (LEN); sy[ns].start = 0;  \
        sy[ns].prev = (int32_t)ns - 1; sy[ns].next = -1;         \
        if (ns > 0) sy[ns - 1].next = (int32_t)ns;               \
        sy[ns].freeze = 0; ns++;                                 \
    } while (0)
    while (i < n) {
        int32_t cl = qlora__tok_onechar((uint8_t)s[i]), id;
        if (cl > n - i) cl = (int32_t)(n - i);
        id = qlora__tok_map_find(d, d->normal, s + i, cl);
        if (id >= 0) {
            if (have_unk) { QLORA__HF_ADD(t->unk_id, unk_len); have_unk = 0; }
            QLORA__HF_ADD(id, cl);
        } else {
            int all = d->byte_fallback;
            int32_t b;
            for (b = 0; b < cl && all; b++) all = d->byte_id[(uint8_t)s[i + b]] >= 0;
            if (all) {
                for (b = 0; b < cl; b++) QLORA__HF_ADD(d->byte_id[(uint8_t)s[i + b]], 1);
            } else if (d->has_unk_token) {
                if (have_unk && d->fuse_unk) unk_len += cl;
                else {
                    if (have_unk) QLORA__HF_ADD(t->unk_id, unk_len);
                    have_unk = 1;
                    unk_len = cl;
                }
            }
        }
        i += cl;
    }
    if (have_unk) QLORA__HF_ADD(t->unk_id, unk_len);
#undef QLORA__HF_ADD
    for (k = 0; k + 1 < ns; k++) {
        if (qlora__tok_merge_find(d, sy[k].id, sy[k + 1].id, &rank, &mid)) {
            qlora__tok_pair p;
            p.pri = ~(uint32_t)rank; p.left = (int32_t)k; p.right = (int32_t)k + 1; p.size = 0; p.id = mid;
            qlora__tok_heap_push(w->heap, &nh, p);
        }
    }
    while (nh > 0) {
        qlora__tok_pair top = qlora__tok_heap_pop(w->heap, &nh);
        qlora__tok_sym *L = &sy[top.left];
        int32_t nx;
        if (L->len == 0 || L->next == -1) continue;
        nx = L->next;
        if (!qlora__tok_merge_find(d, L->id, sy[nx].id, &rank, &mid) || mid != top.id) continue;   // stale
        L->id = top.id;
        L->len += sy[nx].len;
        L->next = sy[nx].next;
        sy[nx].len = 0;
        if (L->next >= 0) sy[L->next].prev = top.left;
        if (nh + 2 > w->cap_heap) return 0;
        if (L->prev >= 0 && qlora__tok_merge_find(d, sy[L->prev].id, L->id, &rank, &mid)) {
            qlora__tok_pair p;
            p.pri = ~(uint32_t)rank; p.left = L->prev; p.right = top.left; p.size = 0; p.id = mid;
            qlora__tok_heap_push(w->heap, &nh, p);
        }
        if (L->next >= 0 && qlora__tok_merge_find(d, L->id, sy[L->next].id, &rank, &mid)) {
            qlora__tok_pair p;
            p.pri = ~(uint32_t)rank; p.left = top.left; p.right = L->next; p.size = 0; p.id = mid;
            qlora__tok_heap_push(w->heap, &nh, p);
        }
    }
    for (k = 0; k < ns; k++)
        if (sy[k].len != 0 && !qlora__tok_push(w->out, sy[k].id)) return 0;
    return 1;
}

// HF: Metaspace pre-tokenizer (if any) on the normalized piece s[0..n), then BPE of each word.
// first: the piece starts at offset 0 of the original text (prepend_scheme "first").
static int qlora__hf_pretok(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int64_t n, int first) {
    const struct qlora__tok_data *d = t->d;
    char *buf;
    const char *r = d->ms_repl;
    int64_t rl, o = 0, i, start;
    int ok = 1;
    if (n == 0) return 1;
    if (!d->metaspace) return qlora__hf_word(t, w, s, n);
    rl = (int64_t)strlen(r);
    buf = (char *)qlora__alloc(n * rl + rl + 1);
    if (!buf) return 0;
    if (d->ms_scheme == 1 || (d->ms_scheme == 2 && first)) {
        // prepend unless the text, spaces replaced, already starts with the replacement
        int starts = s[0] == ' ' || (n >= rl && memcmp(s, r, (size_t)rl) == 0);
        if (!starts) { memcpy(buf, r, (size_t)rl); o = rl; }
    }
    for (i = 0; i < n; i++) {
        if (s[i] == ' ') { memcpy(buf + o, r, (size_t)rl); o += rl; }
        else buf[o++] = s[i];
    }
    if (!d->ms_split) {
        ok = qlora__hf_word(t, w, buf, o);
    } else {   // split before every replacement character (MergedWithNext)
        start = 0;
        for (i = 0; i <= o && ok; i++) {
            if (i == o || (i > start && i + rl <= o && memcmp(buf + i, r, (size_t)rl) == 0)) {
                ok = qlora__hf_word(t, w, buf + start, i - start);
                start = i;
            }
        }
    }
    QLORA_FREE(buf);
    return ok;
}

// Replaces invalid UTF-8 bytes by U+FFFD (one per byte). Returns a new buffer or NULL.
static char *qlora__tok_sanitize(const char *s, int64_t n, int64_t *out_n) {
    char *o = (char *)qlora__alloc(3 * n + 1);
    int64_t i = 0, k = 0;
    if (!o) return NULL;
    while (i < n) {
        int ml;
        if (qlora__tok_utf8(s + i, n - i, &ml)) { memcpy(o + k, s + i, (size_t)ml); k += ml; i += ml; }
        else { memcpy(o + k, qlora__tok_fffd, 3); k += 3; i++; }
    }
    o[k] = 0;
    *out_n = k;
    return o;
}

// Splits s[0..n) at added tokens of matcher m (leftmost-longest, with lstrip/rstrip). Calls
// seg(text range) for the text between tokens and pushes the token ids. offset: position of s
// in the original text (for "first").
typedef int (*qlora__tok_seg_fn)(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int64_t n, int first);

static int qlora__tok_split_added(const qlora_tokenizer *t, qlora__tok_work *w, const qlora__tok_matcher *m,
                                  const char *s, int64_t n, int64_t offset, qlora__tok_seg_fn seg) {
    const struct qlora__tok_data *d = t->d;
    int64_t i = 0, text_start = 0;
    while (i < n) {
        int32_t k = qlora__tok_match(m, s + i, n - i);
        if (k >= 0) {
            const qlora__tok_added *a = &d->added[m->val[k]];
            int64_t mstart = i, mend = i + m->len[k];
            if (a->single_word) {   // ASCII word characters only
                int bw = mstart > 0 && ((s[mstart - 1] >= '0' && s[mstart - 1] <= '9') || s[mstart - 1] == '_' ||
                                        ((s[mstart - 1] | 32) >= 'a' && (s[mstart - 1] | 32) <= 'z'));
                int aw = mend < n && ((s[mend] >= '0' && s[mend] <= '9') || s[mend] == '_' ||
                                      ((s[mend] | 32) >= 'a' && (s[mend] | 32) <= 'z'));
                if (bw || aw) { i++; continue; }
            }
            if (a->lstrip) {   // swallow whitespace before the token
                while (mstart > text_start) {
                    int64_t p = mstart - 1;
                    int ml;
                    while (p > text_start && ((uint8_t)s[p] & 0xC0) == 0x80) p--;
                    if (!qlora__tok_utf8(s + p, n - p, &ml) || p + ml != mstart || !qlora__tok_is_space(qlora__tok_cp(s + p, ml))) break;
                    mstart = p;
                }
            }
            if (a->rstrip) {
                while (mend < n) {
                    int ml;
                    if (!qlora__tok_utf8(s + mend, n - mend, &ml) || !qlora__tok_is_space(qlora__tok_cp(s + mend, ml))) break;
                    mend += ml;
                }
            }
            if (mstart > text_start && !seg(t, w, s + text_start, mstart - text_start, offset + text_start == 0)) return 0;
            if (!qlora__tok_push(w->out, a->id)) return 0;
            w->prev_unk = 0;
            i = text_start = mend;
        } else {
            i++;
        }
    }
    if (n > text_start && !seg(t, w, s + text_start, n - text_start, offset + text_start == 0)) return 0;
    return 1;
}

static int qlora__spm_seg_cb(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int64_t n, int first) {
    (void)first;
    return qlora__spm_segment(t, w, s, n);
}

static int qlora__hf_pretok_cb(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int64_t n, int first) {
    return qlora__hf_pretok(t, w, s, n, first);
}

// HF: one raw segment: sanitize, normalize, split at normalized added tokens, pre-tokenize, BPE.
static int qlora__hf_seg_cb(const qlora_tokenizer *t, qlora__tok_work *w, const char *s, int64_t n, int first) {
    char *clean, *norm = NULL;
    int64_t cn, nn;
    int ok;
    clean = qlora__tok_sanitize(s, n, &cn);
    if (!clean) return 0;
    if (qlora__tok_hf_normalize(t->d, clean, cn, &norm, &nn) != QLORA_OK) { QLORA_FREE(clean); return 0; }
    QLORA_FREE(clean);
    ok = qlora__tok_split_added(t, w, &t->d->added_norm, norm, nn, first ? 0 : 1, qlora__hf_pretok_cb);
    QLORA_FREE(norm);
    return ok;
}

QLORADEF qlora_status qlora_tokenizer_encode(const qlora_tokenizer *t, const char *text, size_t len, int add_bos,
                                             int add_eos, int32_t *ids, int64_t cap, int64_t *n_out,
                                             qlora_error *err) {
    qlora__tok_vec out;
    qlora__tok_work w;
    int ok = 1;
    if (n_out) *n_out = 0;
    if (!t || !t->d) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_encode: tokenizer is NULL or not loaded");
    if (!text && len > 0) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_encode: text is NULL");
    if (!n_out) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_encode: n_out is NULL");
    if (cap < 0 || (cap > 0 && !ids)) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_encode: ids is NULL or cap %lld < 0", (long long)cap);
    if ((uint64_t)len > (uint64_t)QLORA__TOK_MAX_TEXT)
        return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_encode: text of %llu bytes exceeds %lld", (unsigned long long)len,
                           (long long)QLORA__TOK_MAX_TEXT);
    if (add_bos && t->bos_id < 0) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_encode: add_bos but the tokenizer has no BOS token");
    if (add_eos && t->eos_id < 0) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_encode: add_eos but the tokenizer has no EOS token");
    memset(&out, 0, sizeof(out));
    memset(&w, 0, sizeof(w));
    w.out = &out;
    if (add_bos) ok = qlora__tok_push(&out, t->bos_id);
    if (ok) {
        if (t->kind == QLORA_TOKENIZER_SPM)
            ok = qlora__tok_split_added(t, &w, &t->d->added_raw, text, (int64_t)len, 0, qlora__spm_seg_cb);
        else
            ok = qlora__tok_split_added(t, &w, &t->d->added_raw, text, (int64_t)len, 0, qlora__hf_seg_cb);
    }
    if (ok && add_eos) ok = qlora__tok_push(&out, t->eos_id);
    QLORA_FREE(w.sym);
    QLORA_FREE(w.heap);
    QLORA_FREE(w.rev.v);
    if (!ok) {
        QLORA_FREE(out.v);
        return qlora__fail(err, QLORA_ERR_NOMEM, "qlora_tokenizer_encode: out of memory for a text of %llu bytes",
                           (unsigned long long)len);
    }
    *n_out = out.n;
    if (out.n > cap) {
        QLORA_FREE(out.v);
        return qlora__fail(err, QLORA_ERR_SHAPE, "qlora_tokenizer_encode: %lld tokens do not fit in cap %lld",
                           (long long)*n_out, (long long)cap);
    }
    if (out.n > 0) memcpy(ids, out.v, (size_t)out.n * sizeof(int32_t));
    QLORA_FREE(out.v);
    return QLORA_OK;
}

// --- decode ----------------------------------------------------------------------------------

typedef struct qlora__tok_out {
    char  *buf;
    size_t cap, n;
} qlora__tok_out;

static void qlora__tok_put(qlora__tok_out *o, const char *s, size_t n) {
    if (o->n + n < o->cap) memcpy(o->buf + o->n, s, n);
    o->n += n;
}

// Emits whole characters from the pending byte run b[0..*nb); keeps up to 3 bytes unless final.
static void qlora__tok_flush_bytes(qlora__tok_out *o, uint8_t *b, int *nb, int final) {
    while (*nb > 0 && (final || *nb >= 4)) {
        int ml;
        if (qlora__tok_utf8((const char *)b, *nb, &ml)) qlora__tok_put(o, (const char *)b, (size_t)ml);
        else { qlora__tok_put(o, qlora__tok_fffd, 3); ml = 1; }
        memmove(b, b + ml, (size_t)(*nb - ml));
        *nb -= ml;
    }
}

QLORADEF qlora_status qlora_tokenizer_decode(const qlora_tokenizer *t, const int32_t *ids, int64_t n, char *out,
                                             size_t cap, size_t *len_out, qlora_error *err) {
    const struct qlora__tok_data *d;
    qlora__tok_out o;
    uint8_t bytes[8];
    int nb = 0, is_bos_ws = 1, bos_ws_seen = 0;
    int64_t i;
    if (len_out) *len_out = 0;
    if (!t || !t->d) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_decode: tokenizer is NULL or not loaded");
    if (!len_out) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_decode: len_out is NULL");
    if (n < 0 || (n > 0 && !ids)) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_decode: ids is NULL or n %lld < 0", (long long)n);
    if (cap > 0 && !out) return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_decode: out is NULL with cap %llu", (unsigned long long)cap);
    for (i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->vocab_size)
            return qlora__fail(err, QLORA_ERR_ARG, "qlora_tokenizer_decode: ids[%lld] = %d is outside [0, %d)", (long long)i,
                               (int)ids[i], (int)t->vocab_size);
    d = t->d;
    o.buf = out;
    o.cap = cap;
    o.n = 0;
    for (i = 0; i < n; i++) {
        int32_t id = ids[i];
        int ty = d->type[id];
        const char *p;
        int64_t pl, k;
        if (ty == QLORA_PIECE_BYTE) {
            bytes[nb++] = (uint8_t)qlora__tok_piece_byte(d->piece[id], d->piece_len[id]);
            qlora__tok_flush_bytes(&o, bytes, &nb, 0);
            continue;
        }
        qlora__tok_flush_bytes(&o, bytes, &nb, 1);
        if (bos_ws_seen || o.n > 0) is_bos_ws = 0;
        bos_ws_seen = 0;
        if (ty == QLORA_PIECE_CONTROL) continue;
        if (ty == QLORA_PIECE_UNKNOWN) {
            qlora__tok_put(&o, d->unk_surface, strlen(d->unk_surface));
            continue;
        }
        p = d->piece[id];
        pl = d->piece_len[id];
        if (is_bos_ws && (d->add_dummy_prefix || d->remove_extra_ws) && pl >= 3 && memcmp(p, qlora__tok_ws, 3) == 0) {
            p += 3;
            pl -= 3;
            bos_ws_seen = !d->remove_extra_ws;
        }
        for (k = 0; k < pl;) {
            if (k + 3 <= pl && memcmp(p + k, qlora__tok_ws, 3) == 0) { qlora__tok_put(&o, " ", 1); k += 3; }
            else { qlora__tok_put(&o, p + k, 1); k++; }
        }
    }
    qlora__tok_flush_bytes(&o, bytes, &nb, 1);
    *len_out = o.n;
    if (o.n + 1 > cap)
        return qlora__fail(err, QLORA_ERR_SHAPE, "qlora_tokenizer_decode: %llu bytes (+1 for NUL) do not fit in cap %llu",
                           (unsigned long long)o.n, (unsigned long long)cap);
    out[o.n] = 0;
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// 6. transformer ops: RMSNorm, RoPE, attention, SwiGLU, embedding, cross-entropy
//
// The kernels are written once against a small vector layer of QLORA__OPS_VW float lanes (16 AVX-512,
// 8 AVX2, 4 NEON, 1 scalar), so QLORA_NO_SIMD compiles the same loops over plain floats. The scalar
// _ref twins below are the specification the tests hold the vector paths to.

#if defined(QLORA__AVX512)
#define QLORA__OPS_VW 16
typedef __m512 qlora__ops_v;
static inline qlora__ops_v qlora__ops_vload(const float *p) { return _mm512_loadu_ps(p); }
static inline void qlora__ops_vstore(float *p, qlora__ops_v v) { _mm512_storeu_ps(p, v); }
static inline qlora__ops_v qlora__ops_vset(float x) { return _mm512_set1_ps(x); }
static inline qlora__ops_v qlora__ops_vadd(qlora__ops_v a, qlora__ops_v b) { return _mm512_add_ps(a, b); }
static inline qlora__ops_v qlora__ops_vsub(qlora__ops_v a, qlora__ops_v b) { return _mm512_sub_ps(a, b); }
static inline qlora__ops_v qlora__ops_vmul(qlora__ops_v a, qlora__ops_v b) { return _mm512_mul_ps(a, b); }
static inline qlora__ops_v qlora__ops_vdiv(qlora__ops_v a, qlora__ops_v b) { return _mm512_div_ps(a, b); }
static inline qlora__ops_v qlora__ops_vmax(qlora__ops_v a, qlora__ops_v b) {   // b where a or b is NaN
    return _mm512_maskz_max_ps((__mmask16)0xFFFF, a, b);
}
static inline qlora__ops_v qlora__ops_vfma(qlora__ops_v a, qlora__ops_v b, qlora__ops_v c) {
    return _mm512_fmadd_ps(a, b, c);   // a·b + c
}
// exp(x): 2^n·e^r with n = round(x·log2 e), r = x − n·ln2 (ln2 in two parts), e^r by Cephes' degree-6
// polynomial (≈1 ulp), 2^n by scalef. x < −87.5 gives 0 (so −inf gives 0), NaN stays NaN.
// Only zero-masking forms of the shuffling/rounding intrinsics are used: the unmasked ones in g++ 12's
// headers trip -Wuninitialized in C++ (their _mm512_undefined_ps self-initialization).
static inline qlora__ops_v qlora__ops_vexp(qlora__ops_v x) {
    const __mmask16 all = (__mmask16)0xFFFF;
    const __mmask16 live = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.5f), _CMP_NLT_UQ);
    x = _mm512_maskz_min_ps(all, _mm512_set1_ps(88.75f), x);
    const __m512 n = _mm512_maskz_roundscale_ps(all, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-6f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_maskz_scalef_ps(live, p, n);
}
#elif defined(QLORA__AVX2)
#define QLORA__OPS_VW 8
typedef __m256 qlora__ops_v;
static inline qlora__ops_v qlora__ops_vload(const float *p) { return _mm256_loadu_ps(p); }
static inline void qlora__ops_vstore(float *p, qlora__ops_v v) { _mm256_storeu_ps(p, v); }
static inline qlora__ops_v qlora__ops_vset(float x) { return _mm256_set1_ps(x); }
static inline qlora__ops_v qlora__ops_vadd(qlora__ops_v a, qlora__ops_v b) { return _mm256_add_ps(a, b); }
static inline qlora__ops_v qlora__ops_vsub(qlora__ops_v a, qlora__ops_v b) { return _mm256_sub_ps(a, b); }
static inline qlora__ops_v qlora__ops_vmul(qlora__ops_v a, qlora__ops_v b) { return _mm256_mul_ps(a, b); }
static inline qlora__ops_v qlora__ops_vdiv(qlora__ops_v a, qlora__ops_v b) { return _mm256_div_ps(a, b); }
static inline qlora__ops_v qlora__ops_vmax(qlora__ops_v a, qlora__ops_v b) { return _mm256_max_ps(a, b); }
static inline qlora__ops_v qlora__ops_vfma(qlora__ops_v a, qlora__ops_v b, qlora__ops_v c) {
    return _mm256_fmadd_ps(a, b, c);
}
// exp(x) as in the AVX-512 version; 2^n is built in the exponent field, so x is capped at 88.37.
static inline qlora__ops_v qlora__ops_vexp(qlora__ops_v x) {
    const __m256 live = _mm256_cmp_ps(x, _mm256_set1_ps(-87.5f), _CMP_NLT_UQ);
    x = _mm256_min_ps(_mm256_set1_ps(88.37f), x);
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187e-6f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), live);
}
#elif defined(QLORA__NEON)
#define QLORA__OPS_VW 4
typedef float32x4_t qlora__ops_v;
static inline qlora__ops_v qlora__ops_vload(const float *p) { return vld1q_f32(p); }
static inline void qlora__ops_vstore(float *p, qlora__ops_v v) { vst1q_f32(p, v); }
static inline qlora__ops_v qlora__ops_vset(float x) { return vdupq_n_f32(x); }
static inline qlora__ops_v qlora__ops_vadd(qlora__ops_v a, qlora__ops_v b) { return vaddq_f32(a, b); }
static inline qlora__ops_v qlora__ops_vsub(qlora__ops_v a, qlora__ops_v b) { return vsubq_f32(a, b); }
static inline qlora__ops_v qlora__ops_vmul(qlora__ops_v a, qlora__ops_v b) { return vmulq_f32(a, b); }
static inline qlora__ops_v qlora__ops_vdiv(qlora__ops_v a, qlora__ops_v b) { return vdivq_f32(a, b); }
static inline qlora__ops_v qlora__ops_vmax(qlora__ops_v a, qlora__ops_v b) {   // b where a or b is NaN
    return vbslq_f32(vcgtq_f32(a, b), a, b);
}
static inline qlora__ops_v qlora__ops_vfma(qlora__ops_v a, qlora__ops_v b, qlora__ops_v c) {
    return vfmaq_f32(c, a, b);
}
static inline qlora__ops_v qlora__ops_vexp(qlora__ops_v x) {   // lane by lane with expf
    float t[4];
    vst1q_f32(t, x);
    for (int i = 0; i < 4; i++) t[i] = expf(t[i]);
    return vld1q_f32(t);
}
#else
#define QLORA__OPS_VW 1
typedef float qlora__ops_v;
static inline qlora__ops_v qlora__ops_vload(const float *p) { return *p; }
static inline void qlora__ops_vstore(float *p, qlora__ops_v v) { *p = v; }
static inline qlora__ops_v qlora__ops_vset(float x) { return x; }
static inline qlora__ops_v qlora__ops_vadd(qlora__ops_v a, qlora__ops_v b) { return a + b; }
static inline qlora__ops_v qlora__ops_vsub(qlora__ops_v a, qlora__ops_v b) { return a - b; }
static inline qlora__ops_v qlora__ops_vmul(qlora__ops_v a, qlora__ops_v b) { return a * b; }
static inline qlora__ops_v qlora__ops_vdiv(qlora__ops_v a, qlora__ops_v b) { return a / b; }
static inline qlora__ops_v qlora__ops_vmax(qlora__ops_v a, qlora__ops_v b) { return a > b ? a : b; }
static inline qlora__ops_v qlora__ops_vfma(qlora__ops_v a, qlora__ops_v b, qlora__ops_v c) { return a * b + c; }
static inline qlora__ops_v qlora__ops_vexp(qlora__ops_v x) { return expf(x); }
#endif
#define QLORA__OPS_W ((int64_t)QLORA__OPS_VW)

// Full unrolling of the fixed-trip loops over a register tile, so its accumulators stay in registers
// (at -O2 GCC would otherwise keep the accumulator array in memory).
#if defined(__GNUC__) || defined(__clang__)
#define QLORA__UNROLL _Pragma("GCC unroll 16")
#else
#define QLORA__UNROLL
#endif

// Σ lanes of v, in lane order.
static inline float qlora__ops_vsum(qlora__ops_v v) {
    float t[QLORA__OPS_VW], s = 0.0f;
    qlora__ops_vstore(t, v);
    for (int i = 0; i < QLORA__OPS_VW; i++) s += t[i];
    return s;
}

static inline float qlora__ops_dot_ref(const float *a, const float *b, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

// Σ a·b (four vector accumulators, then the tail)
static inline float qlora__ops_dot(const float *a, const float *b, int64_t n) {
    const int64_t W = QLORA__OPS_W;
    qlora__ops_v s0 = qlora__ops_vset(0.0f), s1 = s0, s2 = s0, s3 = s0;
    int64_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
        s0 = qlora__ops_vfma(qlora__ops_vload(a + i), qlora__ops_vload(b + i), s0);
        s1 = qlora__ops_vfma(qlora__ops_vload(a + i + W), qlora__ops_vload(b + i + W), s1);
        s2 = qlora__ops_vfma(qlora__ops_vload(a + i + 2 * W), qlora__ops_vload(b + i + 2 * W), s2);
        s3 = qlora__ops_vfma(qlora__ops_vload(a + i + 3 * W), qlora__ops_vload(b + i + 3 * W), s3);
    }
    for (; i + W <= n; i += W) s0 = qlora__ops_vfma(qlora__ops_vload(a + i), qlora__ops_vload(b + i), s0);
    float s = qlora__ops_vsum(qlora__ops_vadd(qlora__ops_vadd(s0, s1), qlora__ops_vadd(s2, s3)));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void qlora__ops_axpy_ref(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

// y += a·x
static inline void qlora__ops_axpy(float *y, float a, const float *x, int64_t n) {
    const int64_t W = QLORA__OPS_W;
    const qlora__ops_v va = qlora__ops_vset(a);
    int64_t i = 0;
    for (; i + W <= n; i += W)
        qlora__ops_vstore(y + i, qlora__ops_vfma(va, qlora__ops_vload(x + i), qlora__ops_vload(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

// x *= a
static inline void qlora__ops_scale(float *x, float a, int64_t n) {
    const int64_t W = QLORA__OPS_W;
    const qlora__ops_v va = qlora__ops_vset(a);
    int64_t i = 0;
    for (; i + W <= n; i += W) qlora__ops_vstore(x + i, qlora__ops_vmul(qlora__ops_vload(x + i), va));
    for (; i < n; i++) x[i] *= a;
}

// max of x (−inf for n = 0; NaN entries are skipped here and surface through exp)
static inline float qlora__ops_max(const float *x, int64_t n) {
    const int64_t W = QLORA__OPS_W;
    qlora__ops_v vm = qlora__ops_vset(-INFINITY);
    float t[QLORA__OPS_VW], m = -INFINITY;
    int64_t i = 0;
    for (; i + W <= n; i += W) vm = qlora__ops_vmax(qlora__ops_vload(x + i), vm);
    qlora__ops_vstore(t, vm);
    for (int l = 0; l < QLORA__OPS_VW; l++) m = t[l] > m ? t[l] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

// Exponentials with a shift, summed in double (float lanes per block of 256, then double):
//   mode 0: return Σ exp(x − shift)                 (x untouched)
//   mode 1: x ← exp(x − shift), return Σ
//   mode 2: y += a·exp(x − shift), return 0
static double qlora__ops_exp_pass(float *y, float *x_out, const float *x, int64_t n, float shift, float a) {
    const int64_t W = QLORA__OPS_W;
    const qlora__ops_v vs = qlora__ops_vset(shift), va = qlora__ops_vset(a);
    double total = 0.0;
    int64_t i = 0;
    while (i + W <= n) {
        qlora__ops_v acc = qlora__ops_vset(0.0f);
        const int64_t end = (n - i) / W > 256 / W ? i + 256 : i + (n - i) / W * W;
        for (; i < end; i += W) {
            const qlora__ops_v e = qlora__ops_vexp(qlora__ops_vsub(qlora__ops_vload(x + i), vs));
            if (y) qlora__ops_vstore(y + i, qlora__ops_vfma(va, e, qlora__ops_vload(y + i)));
            else {
                if (x_out) qlora__ops_vstore(x_out + i, e);
                acc = qlora__ops_vadd(acc, e);
            }
        }
        total += (double)qlora__ops_vsum(acc);
    }
    for (; i < n; i++) {
        const float e = expf(x[i] - shift);
        if (y) y[i] += a * e;
        else {
            if (x_out) x_out[i] = e;
            total += (double)e;
        }
    }
    return total;
}

// ---- RMSNorm (HF LlamaRMSNorm; https://pytorch.org/docs/stable/generated/torch.nn.RMSNorm.html) ----

QLORADEF void qlora_rmsnorm_forward(float *out, float *rstd, const float *x, const float *weight,
                                    int64_t N, int64_t C, float eps) {
    const int64_t W = QLORA__OPS_W;
#ifdef _OPENMP
#pragma omp parallel for if (N * C > 32768)
#endif
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C;
        float *yr = out + n * C;
        // r = 1/sqrt(mean(x²) + eps) in fp32 like HF; y = (x·r)·w, the weight applied last
        const float r = 1.0f / sqrtf(qlora__ops_dot(xr, xr, C) / (float)C + eps);
        const qlora__ops_v vr = qlora__ops_vset(r);
        rstd[n] = r;
        int64_t c = 0;
        for (; c + W <= C; c += W)
            qlora__ops_vstore(yr + c, qlora__ops_vmul(qlora__ops_vmul(qlora__ops_vload(xr + c), vr),
                                                      qlora__ops_vload(weight + c)));
        for (; c < C; c++) yr[c] = (xr[c] * r) * weight[c];
    }
}

QLORADEF void qlora_rmsnorm_backward(float *dx, float *dweight, const float *dout, const float *x,
                                     const float *weight, const float *rstd, int64_t N, int64_t C) {
    const int64_t W = QLORA__OPS_W;
    // forward: y_c = w_c·x_c·r,  r = (Σ_j x_j²/C + eps)^(-1/2)  ⇒  ∂r/∂x_c = −r³·x_c/C, so
    // backward 1 (into x, rows in parallel): dx_c += r·w_c·dy_c − (r³/C)·x_c·Σ_j dy_j·w_j·x_j
#ifdef _OPENMP
#pragma omp parallel for if (N * C > 32768)
#endif
    for (int64_t n = 0; n < N; n++) {
        const float *xr = x + n * C, *dyr = dout + n * C;
        float *dxr = dx + n * C;
        const float r = rstd[n];
        qlora__ops_v acc = qlora__ops_vset(0.0f);
        int64_t c = 0;
        for (; c + W <= C; c += W)
            acc = qlora__ops_vfma(qlora__ops_vmul(qlora__ops_vload(dyr + c), qlora__ops_vload(weight + c)),
                                  qlora__ops_vload(xr + c), acc);
        float s = qlora__ops_vsum(acc);
        for (; c < C; c++) s += (dyr[c] * weight[c]) * xr[c];
        const float kx = (float)((double)s * (double)r * (double)r * (double)r / (double)C);
        const qlora__ops_v vr = qlora__ops_vset(r), vk = qlora__ops_vset(kx);
        for (c = 0; c + W <= C; c += W) {
            const qlora__ops_v g = qlora__ops_vmul(qlora__ops_vmul(vr, qlora__ops_vload(weight + c)),
                                                   qlora__ops_vload(dyr + c));
            const qlora__ops_v d = qlora__ops_vsub(g, qlora__ops_vmul(vk, qlora__ops_vload(xr + c)));
            qlora__ops_vstore(dxr + c, qlora__ops_vadd(qlora__ops_vload(dxr + c), d));
        }
        for (; c < C; c++) dxr[c] += (r * weight[c]) * dyr[c] - kx * xr[c];
    }
    if (!dweight) return;
    // backward 2 (into weight): dw_c += Σ_n dy_nc·x_nc·r_n. Column blocks in parallel, rows in order:
    // one writer per element and a fixed summation order (in double).
    enum { CB = 256 };
    const int64_t nblk = (C + CB - 1) / CB;
#ifdef _OPENMP
#pragma omp parallel for if (N * C > 32768)
#endif
    for (int64_t blk = 0; blk < nblk; blk++) {
        double acc[CB];
        const int64_t c0 = blk * CB, nc = (C - c0 < (int64_t)CB) ? C - c0 : (int64_t)CB;
        for (int64_t c = 0; c < nc; c++) acc[c] = 0.0;
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + n * C + c0, *dyr = dout + n * C + c0;
            const float r = rstd[n];
            for (int64_t c = 0; c < nc; c++) acc[c] += (double)(dyr[c] * (xr[c] * r));
        }
        for (int64_t c = 0; c < nc; c++) dweight[c0 + c] += (float)acc[c];
    }
}

// ---- RoPE (HF rotate_half pairing) ----

QLORADEF qlora_status qlora_rope_table(float *cos_t, float *sin_t, int64_t max_pos, int64_t head_dim, float theta,
                                       float linear_factor, qlora_error *err) {
    if (!cos_t || !sin_t) return qlora__fail(err, QLORA_ERR_ARG, "rope_table: cos_t or sin_t is NULL");
    if (head_dim <= 0 || head_dim % 2 != 0)
        return qlora__fail(err, QLORA_ERR_ARG, "rope_table: head_dim %lld must be even and positive",
                           (long long)head_dim);
    if (max_pos < 0) return qlora__fail(err, QLORA_ERR_ARG, "rope_table: max_pos %lld < 0", (long long)max_pos);
    if (!(theta > 0.0f) || isinf(theta))
        return qlora__fail(err, QLORA_ERR_ARG, "rope_table: rope_theta %g must be finite and > 0", (double)theta);
    if (!(linear_factor > 0.0f) || isinf(linear_factor))
        return qlora__fail(err, QLORA_ERR_ARG, "rope_table: linear rope_scaling factor %g must be finite and > 0",
                           (double)linear_factor);
    const int64_t half = head_dim / 2;
    // fp32 throughout, as HF: inv_freq = 1/theta^(arange(0,hd,2)/hd); t = pos/factor; angle = t·inv_freq
    for (int64_t p = 0; p < max_pos; p++) {
        const float t = (float)p / linear_factor;
        for (int64_t i = 0; i < half; i++) {
            const float inv_freq = 1.0f / powf(theta, (float)(2 * i) / (float)head_dim);
            const float a = t * inv_freq;
            cos_t[p * half + i] = cosf(a);
            sin_t[p * half + i] = sinf(a);
        }
    }
    return QLORA_OK;
}

// Rotates each (x[i], x[i+hd/2]) pair of every head of row n by ±angle(pos[n], i).
static void qlora__rope_apply(float *x, const int32_t *pos, const float *cos_t, const float *sin_t, int64_t N,
                              int64_t n_heads, int64_t head_dim, float sign) {
    const int64_t half = head_dim / 2;
#ifdef _OPENMP
#pragma omp parallel for if (N * n_heads * head_dim > 32768)
#endif
    for (int64_t n = 0; n < N; n++) {
        const float *cr = cos_t + (int64_t)pos[n] * half, *sr = sin_t + (int64_t)pos[n] * half;
        for (int64_t h = 0; h < n_heads; h++) {
            float *x1 = x + (n * n_heads + h) * head_dim, *x2 = x1 + half;
            for (int64_t i = 0; i < half; i++) {
                const float c = cr[i], s = sign * sr[i], a = x1[i], b = x2[i];
                x1[i] = a * c - b * s;   // x·cos + rotate_half(x)·sin, rotate_half = [−x2, x1]
                x2[i] = b * c + a * s;
            }
        }
    }
}

QLORADEF void qlora_rope_forward(float *x, const int32_t *pos, const float *cos_t, const float *sin_t, int64_t N,
                                 int64_t n_heads, int64_t head_dim) {
    qlora__rope_apply(x, pos, cos_t, sin_t, N, n_heads, head_dim, 1.0f);
}

QLORADEF void qlora_rope_backward(float *dx, const int32_t *pos, const float *cos_t, const float *sin_t, int64_t N,
                                  int64_t n_heads, int64_t head_dim) {
    // forward: x' = R(angle)·x per pair  ⇒  dx = R(angle)ᵀ·dx' = R(−angle)·dx'
    qlora__rope_apply(dx, pos, cos_t, sin_t, N, n_heads, head_dim, -1.0f);
}

// ---- causal GQA attention with key padding ----
//
// Per (b, h) the T×T×HD products run on register tiles of QLORA__ATT_R query rows × W keys (W = vector
// lanes, 16 with AVX-512), in FlashAttention-2 order: key tile outer, query tiles inner. A key tile is
// first copied to the stack, transposed (HD, W) where its keys are the vector lanes, or contiguous (W, HD)
// where head dims are, so the inner loops stream contiguous memory and are chains of broadcast-FMAs with
// no horizontal sums. att doubles as the score buffer. Partial sums that many tiles add to (o, dq of a
// block of query rows, qlora__att_block_rows; dk, dv of one key tile) live in stack blocks (≤ 72 KiB) and
// reach the strided (B, T, heads, HD) tensors once per block.
// Head dims above QLORA__ATT_MAX_HD take the row-at-a-time _ref kernels (a stack bound only).

#define QLORA__ATT_R      8
#define QLORA__ATT_MAX_HD 128
#define QLORA__ATT_QC     64      // query rows of a stack block at QLORA__ATT_MAX_HD dims; more at fewer dims
#define QLORA__ATT_QC_MAX 256

// Query rows of one stack block at HD dims: as many as QLORA__ATT_QC rows of QLORA__ATT_MAX_HD floats hold,
// at most QLORA__ATT_QC_MAX, a multiple of QLORA__ATT_R. Fewer, longer blocks: each key tile is then copied,
// and its dk, dv added, fewer times.
static int64_t qlora__att_block_rows(int64_t HD) {
    int64_t qc = QLORA__ATT_QC * QLORA__ATT_MAX_HD / (HD > 0 ? HD : 1);
    qc = qc < QLORA__ATT_QC_MAX ? qc : QLORA__ATT_QC_MAX;
    return qc / QLORA__ATT_R * QLORA__ATT_R;
}

// Softmax of one score row in place over its n causal keys: s_j ← softmax_j(scale·s_j) over unmasked j,
// 0 for masked j, and all 0 when no key is unmasked.
static void qlora__att_softmax_row(float *s, int64_t n, const uint8_t *mask, float scale) {
    float mx;
    if (mask) {
        mx = -INFINITY;
        for (int64_t j = 0; j < n; j++) {
            if (!mask[j]) { s[j] = -INFINITY; continue; }
            s[j] *= scale;
            mx = s[j] > mx ? s[j] : mx;
        }
    } else {
        qlora__ops_scale(s, scale, n);
        mx = qlora__ops_max(s, n);
    }
    if (mx == -INFINITY) {                               // every key masked: probabilities 0, output 0
        memset(s, 0, (size_t)n * sizeof(float));
        return;
    }
    const double sum = qlora__ops_exp_pass(NULL, s, s, n, mx, 0.0f);   // exp(−inf) = 0 for masked keys
    qlora__ops_scale(s, (float)(1.0 / sum), n);
}

// One query row, the _ref kernel: p (n_keys) = softmax over keys 0..n_keys-1 of q·k_j (rows of k, v
// `stride` floats apart); out (HD) = Σ_j p_j·v_j. Used by decode, by the _ref forward and for large HD.
static void qlora__att_row(float *out, float *p, const float *q, const float *k, const float *v, int64_t stride,
                           const uint8_t *mask, int64_t n_keys, int64_t HD, float scale) {
    for (int64_t j = 0; j < n_keys; j++)
        p[j] = (mask && !mask[j]) ? 0.0f : qlora__ops_dot(q, k + j * stride, HD);
    qlora__att_softmax_row(p, n_keys, mask, scale);
    for (int64_t d = 0; d < HD; d++) out[d] = 0.0f;
    for (int64_t j = 0; j < n_keys; j++)
        if (p[j] != 0.0f) qlora__ops_axpy(out, p[j], v + j * stride, HD);
}

static void qlora__attention_forward_ref(float *out, float *att, const float *q, const float *k, const float *v,
                                         const uint8_t *key_mask, int64_t b, int64_t h, int64_t T, int64_t NH,
                                         int64_t NKV, int64_t HD, float scale) {
    const int64_t kvh = h / (NH / NKV);
    const uint8_t *mask = key_mask ? key_mask + b * T : NULL;
    const float *kb = k + (b * T * NKV + kvh) * HD, *vb = v + (b * T * NKV + kvh) * HD;
    for (int64_t i = 0; i < T; i++) {
        float *p = att + ((b * NH + h) * T + i) * T;
        qlora__att_row(out + ((b * T + i) * NH + h) * HD, p, q + ((b * T + i) * NH + h) * HD, kb, vb, NKV * HD,
                       mask, i + 1, HD, scale);
        if (T > i + 1) memset(p + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));   // causal: future keys
    }
}

// kt (HD, W) ← keys 0..nk-1 of k (rows `stride` apart), transposed; lanes nk..W-1 are 0.
static void qlora__att_transpose(float *kt, const float *k, int64_t stride, int64_t nk, int64_t HD) {
    const int64_t W = QLORA__OPS_W;
#if defined(QLORA__AVX512)
    if (nk == W && stride <= INT32_MAX / 16) {   // a row of kt is a gather of one column of k
        const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
        const __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32((int)stride));
        const __m512 zero = _mm512_setzero_ps();
        for (int64_t d = 0; d < HD; d++)
            _mm512_storeu_ps(kt + d * W, _mm512_mask_i32gather_ps(zero, (__mmask16)0xFFFF, idx, k + d, 4));
        return;
    }
#endif
    for (int64_t c = 0; c < W; c++) {
        const float *kr = k + c * stride;
        if (c < nk) for (int64_t d = 0; d < HD; d++) kt[d * W + c] = kr[d];
        else        for (int64_t d = 0; d < HD; d++) kt[d * W + c] = 0.0f;
    }
}

// kc (nk, HD) ← rows 0..nk-1 of k (rows `stride` apart), contiguous.
static void qlora__att_gather(float *kc, const float *k, int64_t stride, int64_t nk, int64_t HD) {
    for (int64_t c = 0; c < nk; c++) memcpy(kc + c * HD, k + c * stride, (size_t)HD * sizeof(float));
}

// s (R, W) = rows·kt: s[r][c] = Σ_d row_r[d]·kt[d][c], one FMA chain per element (d ascending).
static void qlora__att_tile_nt(float *s, const float *const *row, const float *kt, int64_t HD) {
    const int64_t W = QLORA__OPS_W;
    qlora__ops_v acc[QLORA__ATT_R];
    QLORA__UNROLL for (int r = 0; r < QLORA__ATT_R; r++) acc[r] = qlora__ops_vset(0.0f);
    for (int64_t d = 0; d < HD; d++) {
        const qlora__ops_v kv = qlora__ops_vload(kt + d * W);
        QLORA__UNROLL for (int r = 0; r < QLORA__ATT_R; r++)
            acc[r] = qlora__ops_vfma(qlora__ops_vset(row[r][d]), kv, acc[r]);
    }
    QLORA__UNROLL for (int r = 0; r < QLORA__ATT_R; r++) qlora__ops_vstore(s + r * W, acc[r]);
}

// out_r (HD) (+)= Σ_{c<nk} coef_r[c]·x_c for the first nr rows; x (nk, HD) contiguous. Rows r ≥ nr of
// out/coef must still be valid pointers (callers repeat the last row). overwrite: out = sum.
static void qlora__att_tile_rows(float *const *out, const float *const *coef, const float *x, int64_t nk,
                                 int64_t HD, int nr, int overwrite) {
    const int64_t W = QLORA__OPS_W;
    int64_t d0 = 0;
    for (; d0 + W <= HD; d0 += W) {
        qlora__ops_v acc[QLORA__ATT_R];
        QLORA__UNROLL for (int r = 0; r < QLORA__ATT_R; r++) acc[r] = qlora__ops_vset(0.0f);
        for (int64_t c = 0; c < nk; c++) {
            const qlora__ops_v xv = qlora__ops_vload(x + c * HD + d0);
            QLORA__UNROLL for (int r = 0; r < QLORA__ATT_R; r++)
                acc[r] = qlora__ops_vfma(qlora__ops_vset(coef[r][c]), xv, acc[r]);
        }
        QLORA__UNROLL for (int r = 0; r < QLORA__ATT_R; r++)
            if (r < nr) {
                float *o = out[r] + d0;
                qlora__ops_vstore(o, overwrite ? acc[r] : qlora__ops_vadd(qlora__ops_vload(o), acc[r]));
            }
    }
    for (; d0 < HD; d0++)
        for (int r = 0; r < nr; r++) {
            float s = 0.0f;
            for (int64_t c = 0; c < nk; c++) s += coef[r][c] * x[c * HD + d0];
            out[r][d0] = overwrite ? s : out[r][d0] + s;
        }
}

// out (W, HD) += coefᵀ·y: out_c += Σ_{r<R} coef[r][c]·y_r; coef (R, W) is zero in the rows and columns
// a partial tile lacks.
static void qlora__att_tile_cols(float *out, const float *coef, const float *const *y, int64_t HD) {
    const int64_t W = QLORA__OPS_W;
    int64_t d0 = 0;
    for (; d0 + W <= HD; d0 += W) {
        qlora__ops_v acc[QLORA__OPS_VW];
        QLORA__UNROLL for (int c = 0; c < QLORA__OPS_VW; c++) acc[c] = qlora__ops_vset(0.0f);
        for (int r = 0; r < QLORA__ATT_R; r++) {
            const qlora__ops_v yv = qlora__ops_vload(y[r] + d0);
            QLORA__UNROLL for (int c = 0; c < QLORA__OPS_VW; c++)
                acc[c] = qlora__ops_vfma(qlora__ops_vset(coef[r * W + c]), yv, acc[c]);
        }
        QLORA__UNROLL for (int c = 0; c < QLORA__OPS_VW; c++)
            qlora__ops_vstore(out + c * HD + d0, qlora__ops_vadd(qlora__ops_vload(out + c * HD + d0), acc[c]));
    }
    for (; d0 < HD; d0++)
        for (int64_t c = 0; c < W; c++) {
            float s = 0.0f;
            for (int r = 0; r < QLORA__ATT_R; r++) s += coef[r * W + c] * y[r][d0];
            out[c * HD + d0] += s;
        }
}

// Forward of one (b, h) on tiles.
static void qlora__attention_forward_bh(float *out, float *att, const float *q, const float *k, const float *v,
                                        const uint8_t *key_mask, int64_t b, int64_t h, int64_t T, int64_t NH,
                                        int64_t NKV, int64_t HD, float scale) {
    const int64_t W = QLORA__OPS_W, R = QLORA__ATT_R, QC = qlora__att_block_rows(HD);
    const int64_t kvh = h / (NH / NKV), qs = NH * HD, kvs = NKV * HD;
    const float *qb = q + (b * T * NH + h) * HD;
    const float *kb = k + (b * T * NKV + kvh) * HD, *vb = v + (b * T * NKV + kvh) * HD;
    float *ob = out + (b * T * NH + h) * HD, *ab = att + (b * NH + h) * T * T;
    const uint8_t *mask = key_mask ? key_mask + b * T : NULL;
    float kt[QLORA__ATT_MAX_HD * QLORA__OPS_VW], s[QLORA__ATT_R * QLORA__OPS_VW];
    float oc[QLORA__ATT_QC * QLORA__ATT_MAX_HD];
    const float *row[QLORA__ATT_R];
    float *orow[QLORA__ATT_R];
    // pass 1, the scores s_ij = q_i·k_j for j ≤ i, written into att
    for (int64_t j0 = 0; j0 < T; j0 += W) {
        const int64_t nk = T - j0 < W ? T - j0 : W;
        qlora__att_transpose(kt, kb + j0 * kvs, kvs, nk, HD);
        for (int64_t i0 = j0 / R * R; i0 < T; i0 += R) {
            const int nr = (int)(T - i0 < R ? T - i0 : R);
            for (int r = 0; r < R; r++) row[r] = qb + (i0 + (r < nr ? r : nr - 1)) * qs;
            qlora__att_tile_nt(s, row, kt, HD);
            for (int r = 0; r < nr; r++) {
                const int64_t i = i0 + r, nc = i - j0 + 1 < nk ? i - j0 + 1 : nk;
                if (nc > 0) memcpy(ab + i * T + j0, s + r * W, (size_t)nc * sizeof(float));
            }
        }
    }
    // pass 2, the softmax of each row over its keys j ≤ i; future keys get 0
    for (int64_t i = 0; i < T; i++) {
        qlora__att_softmax_row(ab + i * T, i + 1, mask, scale);
        if (T > i + 1) memset(ab + i * T + i + 1, 0, (size_t)(T - i - 1) * sizeof(float));
    }
    // pass 3, the value sum o_i = Σ_j p_ij·v_j (p_ij = 0 for j > i), key tile by key tile into a stack
    // block of QC output rows
    for (int64_t q0 = 0; q0 < T; q0 += QC) {
        const int64_t q1 = T - q0 < QC ? T : q0 + QC;
        memset(oc, 0, (size_t)((q1 - q0) * HD) * sizeof(float));
        for (int64_t j0 = 0; j0 < q1; j0 += W) {
            const int64_t nk = T - j0 < W ? T - j0 : W;
            qlora__att_gather(kt, vb + j0 * kvs, kvs, nk, HD);
            for (int64_t i0 = j0 > q0 ? q0 + (j0 - q0) / R * R : q0; i0 < q1; i0 += R) {
                const int nr = (int)(q1 - i0 < R ? q1 - i0 : R);
                for (int r = 0; r < R; r++) {
                    const int64_t i = i0 + (r < nr ? r : nr - 1);
                    orow[r] = oc + (i - q0) * HD;
                    row[r] = ab + i * T + j0;
                }
                qlora__att_tile_rows(orow, row, kt, nk, HD, nr, 0);
            }
        }
        for (int64_t i = q0; i < q1; i++) memcpy(ob + i * qs, oc + (i - q0) * HD, (size_t)HD * sizeof(float));
    }
}

QLORADEF void qlora_attention_forward(float *out, float *att, const float *q, const float *k, const float *v,
                                      const uint8_t *key_mask, int64_t B, int64_t T, int64_t NH, int64_t NKV,
                                      int64_t HD) {
    if (NKV <= 0 || NH % NKV != 0) return;
    const float scale = (float)(1.0 / sqrt((double)HD));
#ifdef _OPENMP
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (B * NH * T * T * HD > 65536)
#endif
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < NH; h++) {
            if (HD <= QLORA__ATT_MAX_HD)
                qlora__attention_forward_bh(out, att, q, k, v, key_mask, b, h, T, NH, NKV, HD, scale);
            else qlora__attention_forward_ref(out, att, q, k, v, key_mask, b, h, T, NH, NKV, HD, scale);
        }
}

// Backward of one (b, kv head), the _ref kernel: row at a time, no scratch.
static void qlora__attention_backward_ref(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                          const float *q, const float *k, const float *v, const float *att,
                                          int64_t b, int64_t kvh, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                                          float scale) {
    const int64_t G = NH / NKV, kvs = NKV * HD;
    const float *kb = k + (b * T * NKV + kvh) * HD, *vb = v + (b * T * NKV + kvh) * HD;
    float *dkb = dk + (b * T * NKV + kvh) * HD, *dvb = dv + (b * T * NKV + kvh) * HD;
    for (int64_t h = kvh * G; h < (kvh + 1) * G; h++) {
        for (int64_t i = 0; i < T; i++) {
            const float *p = att + ((b * NH + h) * T + i) * T;
            const int64_t qo = ((b * T + i) * NH + h) * HD;
            const float *doi = dout + qo, *qi = q + qo;
            float *dqi = dq + qo;
            // δ = Σ_j p_j·dp_j = do·o_i, with o_i from the forward or rebuilt in chunks of 64 dims
            float delta = out ? qlora__ops_dot(doi, out + qo, HD) : 0.0f;
            for (int64_t d0 = 0; d0 < HD && !out; d0 += 64) {
                float o[64];
                const int64_t nd = (HD - d0 < 64) ? HD - d0 : 64;
                for (int64_t d = 0; d < nd; d++) o[d] = 0.0f;
                for (int64_t j = 0; j <= i; j++)
                    if (p[j] != 0.0f) qlora__ops_axpy(o, p[j], vb + j * kvs + d0, nd);
                delta += qlora__ops_dot(doi + d0, o, nd);
            }
            for (int64_t j = 0; j <= i; j++) {
                if (p[j] == 0.0f) continue;              // masked or future key: no gradient
                const float ds = p[j] * (qlora__ops_dot(doi, vb + j * kvs, HD) - delta) * scale;
                qlora__ops_axpy(dvb + j * kvs, p[j], doi, HD);
                qlora__ops_axpy(dqi, ds, kb + j * kvs, HD);
                qlora__ops_axpy(dkb + j * kvs, ds, qi, HD);
            }
        }
    }
}

// Backward of one (b, kv head) on tiles. The q heads that share the kv head run one after another in this
// thread, so dk/dv have one writer and a fixed summation order.
static void qlora__attention_backward_bkv(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                          const float *q, const float *k, const float *v, const float *att,
                                          int64_t b, int64_t kvh, int64_t T, int64_t NH, int64_t NKV, int64_t HD,
                                          float scale) {
    const int64_t W = QLORA__OPS_W, R = QLORA__ATT_R, QC = qlora__att_block_rows(HD);
    const int64_t G = NH / NKV, qs = NH * HD, kvs = NKV * HD;
    const float *kb = k + (b * T * NKV + kvh) * HD, *vb = v + (b * T * NKV + kvh) * HD;
    float *dkb = dk + (b * T * NKV + kvh) * HD, *dvb = dv + (b * T * NKV + kvh) * HD;
    float vt[QLORA__ATT_MAX_HD * QLORA__OPS_VW], kc[QLORA__OPS_VW * QLORA__ATT_MAX_HD];
    float dkt[QLORA__OPS_VW * QLORA__ATT_MAX_HD], dvt[QLORA__OPS_VW * QLORA__ATT_MAX_HD];
    float oc[QLORA__ATT_QC * QLORA__ATT_MAX_HD], delta[QLORA__ATT_QC_MAX];
    float pt[QLORA__ATT_R * QLORA__OPS_VW], st[QLORA__ATT_R * QLORA__OPS_VW];
    const float *row[QLORA__ATT_R], *qrow[QLORA__ATT_R], *dorow[QLORA__ATT_R];
    float *orow[QLORA__ATT_R];
    for (int64_t h = kvh * G; h < (kvh + 1) * G; h++) {
        const float *qb = q + (b * T * NH + h) * HD, *dob = dout + (b * T * NH + h) * HD;
        const float *ob = out ? out + (b * T * NH + h) * HD : NULL;
        const float *ab = att + (b * NH + h) * T * T;
        float *dqb = dq + (b * T * NH + h) * HD;
        for (int64_t q0 = 0; q0 < T; q0 += QC) {
            const int64_t q1 = T - q0 < QC ? T : q0 + QC;
            // forward: o_i = Σ_j p_ij·v_j.  δ_i = Σ_j p_ij·dp_ij = do_i·o_i, with o from the forward or
            // rebuilt for these rows
            if (ob)
                for (int64_t i = q0; i < q1; i++) delta[i - q0] = qlora__ops_dot(dob + i * qs, ob + i * qs, HD);
            else memset(oc, 0, (size_t)((q1 - q0) * HD) * sizeof(float));
            for (int64_t j0 = 0; j0 < q1 && !ob; j0 += W) {
                const int64_t nk = T - j0 < W ? T - j0 : W;
                qlora__att_gather(kc, vb + j0 * kvs, kvs, nk, HD);
                const int64_t first = j0 > q0 ? q0 + (j0 - q0) / R * R : q0;
                for (int64_t i0 = first; i0 < q1; i0 += R) {
                    const int nr = (int)(q1 - i0 < R ? q1 - i0 : R);
                    for (int r = 0; r < R; r++) {
                        const int64_t i = i0 + (r < nr ? r : nr - 1);
                        orow[r] = oc + (i - q0) * HD;
                        row[r] = ab + i * T + j0;
                    }
                    qlora__att_tile_rows(orow, row, kc, nk, HD, nr, 0);
                }
            }
            for (int64_t i = q0; i < q1 && !ob; i++)
                delta[i - q0] = qlora__ops_dot(dob + i * qs, oc + (i - q0) * HD, HD);
            memset(oc, 0, (size_t)((q1 - q0) * HD) * sizeof(float));   // from here on: dq of these rows
            for (int64_t j0 = 0; j0 < q1; j0 += W) {
                const int64_t nk = T - j0 < W ? T - j0 : W;
                qlora__att_transpose(vt, vb + j0 * kvs, kvs, nk, HD);
                qlora__att_gather(kc, kb + j0 * kvs, kvs, nk, HD);
                memset(dkt, 0, (size_t)(W * HD) * sizeof(float));
                memset(dvt, 0, (size_t)(W * HD) * sizeof(float));
#if defined(__GNUC__) || defined(__clang__)
                // the probabilities of the next key tile, one cache line per row T floats apart: att was written
                // by the forward long ago, and the hardware prefetcher does not follow this pattern
                for (int64_t i = j0 + W > q0 ? j0 + W : q0; j0 + W < q1 && i < q1; i++)
                    __builtin_prefetch(ab + i * T + j0 + W);
#endif
                int touched = 0;
                const int64_t first = j0 > q0 ? q0 + (j0 - q0) / R * R : q0;
                for (int64_t i0 = first; i0 < q1; i0 += R) {
                    const int nr = (int)(q1 - i0 < R ? q1 - i0 : R);
                    for (int r = 0; r < R; r++) {
                        const int64_t i = i0 + (r < nr ? r : nr - 1);
                        qrow[r] = qb + i * qs;
                        dorow[r] = dob + i * qs;
                        orow[r] = oc + (i - q0) * HD;
                    }
                    // backward 3, the value sum o_i = Σ_j p_ij·v_j:  dp_ij = do_i·v_j
                    qlora__att_tile_nt(st, dorow, vt, HD);
                    // backward 2, the softmax:  ds_ij = p_ij·(dp_ij − δ_i)·scale (0 for masked/future keys)
                    int any = 0;
                    if (nr == R && nk == W && j0 + W - 1 <= i0) {   // a full tile below the diagonal
                        const qlora__ops_v vscale = qlora__ops_vset(scale);
                        for (int r = 0; r < R; r++) {
                            const qlora__ops_v p = qlora__ops_vload(ab + (i0 + r) * T + j0);
                            const qlora__ops_v dp = qlora__ops_vsub(qlora__ops_vload(st + r * W),
                                                                    qlora__ops_vset(delta[i0 + r - q0]));
                            qlora__ops_vstore(pt + r * W, p);
                            qlora__ops_vstore(st + r * W, qlora__ops_vmul(qlora__ops_vmul(p, dp), vscale));
                        }
                        any = 1;
                    } else
                    for (int r = 0; r < R; r++)
                        for (int64_t c = 0; c < W; c++) {
                            const int64_t i = i0 + r, j = j0 + c;
                            const float p = (r < nr && c < nk && j <= i) ? ab[i * T + j] : 0.0f;
                            pt[r * W + c] = p;
                            st[r * W + c] = p != 0.0f ? p * (st[r * W + c] - delta[i - q0]) * scale : 0.0f;
                            any |= p != 0.0f;
                        }
                    if (!any) continue;
                    touched = 1;
                    for (int r = 0; r < R; r++) row[r] = st + r * W;
                    // backward 1, the scores s_ij = q_i·k_j:  dq_i += Σ_j ds_ij·k_j;  dk_j += Σ_i ds_ij·q_i
                    qlora__att_tile_rows(orow, row, kc, nk, HD, nr, 0);
                    qlora__att_tile_cols(dkt, st, qrow, HD);
                    // backward 3:  dv_j += Σ_i p_ij·do_i
                    qlora__att_tile_cols(dvt, pt, dorow, HD);
                }
                if (!touched) continue;
                for (int64_t c = 0; c < nk; c++) {
                    qlora__ops_axpy(dkb + (j0 + c) * kvs, 1.0f, dkt + c * HD, HD);
                    qlora__ops_axpy(dvb + (j0 + c) * kvs, 1.0f, dvt + c * HD, HD);
                }
            }
            for (int64_t i = q0; i < q1; i++) qlora__ops_axpy(dqb + i * qs, 1.0f, oc + (i - q0) * HD, HD);
        }
    }
}

QLORADEF void qlora_attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                       const float *q, const float *k, const float *v, const float *att, int64_t B,
                                       int64_t T, int64_t NH, int64_t NKV, int64_t HD) {
    if (NKV <= 0 || NH % NKV != 0) return;
    const float scale = (float)(1.0 / sqrt((double)HD));
    // forward: s_ij = scale·q_i·k_j;  p_ij = softmax_j(s_ij);  o_i = Σ_j p_ij·v_j. Parallel over
    // (b, kv head) so that the q heads sharing a kv head add into dk/dv from one thread.
#ifdef _OPENMP
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if (B * NH * T * T * HD > 65536)
#endif
    for (int64_t b = 0; b < B; b++)
        for (int64_t kvh = 0; kvh < NKV; kvh++) {
            if (HD <= QLORA__ATT_MAX_HD)
                qlora__attention_backward_bkv(dq, dk, dv, dout, out, q, k, v, att, b, kvh, T, NH, NKV, HD, scale);
            else qlora__attention_backward_ref(dq, dk, dv, dout, out, q, k, v, att, b, kvh, T, NH, NKV, HD, scale);
        }
}

QLORADEF void qlora_attention_decode(float *out, float *scores, const float *q, const float *k_cache,
                                     const float *v_cache, int64_t n_ctx, int64_t NH, int64_t NKV, int64_t HD) {
    if (NKV <= 0 || NH % NKV != 0) return;
    const int64_t G = NH / NKV;
    const float scale = (float)(1.0 / sqrt((double)HD));
#ifdef _OPENMP
#pragma omp parallel for if (NH * n_ctx * HD > 65536)
#endif
    for (int64_t h = 0; h < NH; h++)
        qlora__att_row(out + h * HD, scores + h * n_ctx, q + h * HD, k_cache + (h / G) * HD,
                       v_cache + (h / G) * HD, NKV * HD, NULL, n_ctx, HD, scale);
}

// ---- SwiGLU (HF LlamaMLP: down(silu(gate(x)) * up(x))) ----

QLORADEF void qlora_swiglu_forward(float *h, const float *g, const float *u, int64_t n) {
    const int64_t W = QLORA__OPS_W, CH = 4096;
    const qlora__ops_v one = qlora__ops_vset(1.0f), zero = qlora__ops_vset(0.0f);
#ifdef _OPENMP
#pragma omp parallel for if (n > 65536)
#endif
    for (int64_t i0 = 0; i0 < n; i0 += CH) {
        const int64_t i1 = n - i0 < CH ? n : i0 + CH;
        int64_t i = i0;
        for (; i + W <= i1; i += W) {   // silu(g)·u = g / (1 + exp(−g)) · u
            const qlora__ops_v gv = qlora__ops_vload(g + i);
            const qlora__ops_v e = qlora__ops_vexp(qlora__ops_vsub(zero, gv));
            const qlora__ops_v silu = qlora__ops_vdiv(gv, qlora__ops_vadd(one, e));
            qlora__ops_vstore(h + i, qlora__ops_vmul(silu, qlora__ops_vload(u + i)));
        }
        for (; i < i1; i++) h[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

QLORADEF void qlora_swiglu_backward(float *dg, float *du, const float *dh, const float *g, const float *u,
                                    int64_t n) {
    // forward: h = silu(g)·u, silu(g) = g·σ(g)  ⇒  dsilu/dg = σ(g)·(1 + g·(1 − σ(g)))
    const int64_t W = QLORA__OPS_W, CH = 4096;
    const qlora__ops_v one = qlora__ops_vset(1.0f), zero = qlora__ops_vset(0.0f);
#ifdef _OPENMP
#pragma omp parallel for if (n > 65536)
#endif
    for (int64_t i0 = 0; i0 < n; i0 += CH) {
        const int64_t i1 = n - i0 < CH ? n : i0 + CH;
        int64_t i = i0;
        for (; i + W <= i1; i += W) {
            const qlora__ops_v gv = qlora__ops_vload(g + i), dhv = qlora__ops_vload(dh + i);
            const qlora__ops_v e = qlora__ops_vexp(qlora__ops_vsub(zero, gv));
            const qlora__ops_v sg = qlora__ops_vdiv(one, qlora__ops_vadd(one, e));
            const qlora__ops_v t = qlora__ops_vadd(one, qlora__ops_vmul(gv, qlora__ops_vsub(one, sg)));
            const qlora__ops_v ds = qlora__ops_vmul(sg, t);
            const qlora__ops_v gg = qlora__ops_vmul(qlora__ops_vmul(dhv, qlora__ops_vload(u + i)), ds);
            const qlora__ops_v gu = qlora__ops_vmul(dhv, qlora__ops_vmul(gv, sg));
            qlora__ops_vstore(dg + i, qlora__ops_vadd(qlora__ops_vload(dg + i), gg));
            qlora__ops_vstore(du + i, qlora__ops_vadd(qlora__ops_vload(du + i), gu));
        }
        for (; i < i1; i++) {
            const float sg = 1.0f / (1.0f + expf(-g[i]));
            dg[i] += (dh[i] * u[i]) * (sg * (1.0f + g[i] * (1.0f - sg)));
            du[i] += dh[i] * (g[i] * sg);
        }
    }
}

// ---- embedding ----

QLORADEF qlora_status qlora_embedding_forward(float *out, const int32_t *tokens, const float *table, int64_t N,
                                              int64_t C, int64_t V, qlora_error *err) {
    if (N < 0 || C < 0 || V < 0)
        return qlora__fail(err, QLORA_ERR_ARG, "embedding: negative size (N %lld, C %lld, V %lld)", (long long)N,
                           (long long)C, (long long)V);
    if (N > 0 && (!out || !tokens || !table))
        return qlora__fail(err, QLORA_ERR_ARG, "embedding: out, tokens or table is NULL");
    for (int64_t n = 0; n < N; n++)
        if (tokens[n] < 0 || tokens[n] >= V)
            return qlora__fail(err, QLORA_ERR_ARG, "embedding: tokens[%lld] = %ld is outside the vocabulary "
                               "[0, %lld)", (long long)n, (long)tokens[n], (long long)V);
    for (int64_t n = 0; n < N; n++)
        memcpy(out + n * C, table + (int64_t)tokens[n] * C, (size_t)C * sizeof(float));
    return QLORA_OK;
}

QLORADEF void qlora_embedding_backward(float *dtable, const float *dout, const int32_t *tokens, int64_t N,
                                       int64_t C) {
    // forward: out_n = table[tok_n]  ⇒  dtable[tok_n] += dout_n. A token can repeat, so threads split the
    // columns and walk all rows in order: one writer per element, fixed summation order.
    enum { CB = 256 };
    const int64_t nblk = (C + CB - 1) / CB;
#ifdef _OPENMP
#pragma omp parallel for if (N * C > 65536)
#endif
    for (int64_t blk = 0; blk < nblk; blk++) {
        const int64_t c0 = blk * CB, nc = (C - c0 < (int64_t)CB) ? C - c0 : (int64_t)CB;
        for (int64_t n = 0; n < N; n++)
            qlora__ops_axpy(dtable + (int64_t)tokens[n] * C + c0, 1.0f, dout + n * C + c0, nc);
    }
}

// ---- cross-entropy and log-softmax ----

// log Σ_v exp(x_v), with the max subtracted; the exponentials summed in double.
static double qlora__logsumexp(const float *x, int64_t V) {
    const float mx = qlora__ops_max(x, V);
    if (mx == -INFINITY || mx == INFINITY) return (double)mx;
    return (double)mx + log(qlora__ops_exp_pass(NULL, NULL, x, V, mx, 0.0f));
}

// Cross-entropy forward, with each counted row's logsumexp into row_lse when it is not NULL (for
// qlora__ce_backward).
static void qlora__ce_forward(double *loss_sum, int64_t *count, float *row_loss, float *row_lse, const float *logits,
                              const int32_t *targets, int64_t N, int64_t V) {
    // Rows are cut into a fixed number of chunks (not one per thread), each summed in order, and the
    // chunk sums added in order: the result does not depend on the thread count.
    enum { NCHUNK = 64 };
    double part[NCHUNK];
    int64_t cnt[NCHUNK];
#ifdef _OPENMP
#pragma omp parallel for if (N * V > 65536)
#endif
    for (int c = 0; c < NCHUNK; c++) {
        const int64_t n0 = N * c / NCHUNK, n1 = N * (c + 1) / NCHUNK;
        double s = 0.0;
        int64_t k = 0;
        for (int64_t n = n0; n < n1; n++) {
            const int32_t t = targets[n];
            double l = 0.0;
            if (t >= 0 && t < V) {
                const float *x = logits + n * V;
                const double lse = qlora__logsumexp(x, V);
                if (row_lse) row_lse[n] = (float)lse;
                l = lse - (double)x[t];
                s += l;
                k++;
            }
            if (row_loss) row_loss[n] = (float)l;
        }
        part[c] = s;
        cnt[c] = k;
    }
    double s = 0.0;
    int64_t k = 0;
    for (int c = 0; c < NCHUNK; c++) { s += part[c]; k += cnt[c]; }
    *loss_sum = s;
    *count = k;
}

QLORADEF void qlora_cross_entropy_forward(double *loss_sum, int64_t *count, float *row_loss, const float *logits,
                                          const int32_t *targets, int64_t N, int64_t V) {
    qlora__ce_forward(loss_sum, count, row_loss, NULL, logits, targets, N, V);
}

// Cross-entropy backward. row_lse (N) or NULL: the rows' logsumexp from qlora__ce_forward (else computed
// again). overwrite: dlogits = the gradient and ignored rows 0, the same bits as zeroing first and adding.
static void qlora__ce_backward(float *dlogits, const float *logits, const float *row_lse, const int32_t *targets,
                               int64_t N, int64_t V, float dscale, int overwrite) {
    // forward: l = logsumexp(x) − x_t  ⇒  dl/dx_v = softmax(x)_v − [v = t] = exp(x_v − lse) − [v = t]
#ifdef _OPENMP
#pragma omp parallel for if (N * V > 65536)
#endif
    for (int64_t n = 0; n < N; n++) {
        const int32_t t = targets[n];
        float *d = dlogits + n * V;
        if (t < 0 || t >= V) {
            if (overwrite) memset(d, 0, sizeof(float) * (size_t)V);
            continue;
        }
        const float *x = logits + n * V;
        const float lse = row_lse ? row_lse[n] : (float)qlora__logsumexp(x, V);
        if (overwrite) {   // d = exp(x − lse), then ·dscale: round(dscale·e), as 0 + dscale·e rounds
            qlora__ops_exp_pass(NULL, d, x, V, lse, 0.0f);
            qlora__ops_scale(d, dscale, V);
        } else qlora__ops_exp_pass(d, NULL, x, V, lse, dscale);
        d[t] -= dscale;
    }
}

QLORADEF void qlora_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int64_t N,
                                           int64_t V, float dscale) {
    qlora__ce_backward(dlogits, logits, NULL, targets, N, V, dscale, 0);
}

QLORADEF void qlora_log_softmax(float *out, const float *logits, int64_t V) {
    const float lse = (float)qlora__logsumexp(logits, V);
    for (int64_t i = 0; i < V; i++) out[i] = logits[i] - lse;
}

// ---------------------------------------------------------------------------------------------
// 7. Llama model
//
// Dimension legend as in the declarations: B, T, M = B·T, C, H, NH, NKV, HD, QD = NH·HD,
// KD = NKV·HD, L, V, R. Every fp32 view of the model and of the train state / KV cache comes from
// one layout function each (a carver walked once to size, once to assign), so sizes and pointers
// cannot drift apart.

// X(enum suffix, module path, PEFT name, out dim, in dim) with dims among C, H, QD, KD.
#define QLORA__LLAMA_TARGETS(X)                        \
    X(Q,    "self_attn.q_proj", "q_proj",    QD, C)    \
    X(K,    "self_attn.k_proj", "k_proj",    KD, C)    \
    X(V,    "self_attn.v_proj", "v_proj",    KD, C)    \
    X(O,    "self_attn.o_proj", "o_proj",    C,  QD)   \
    X(GATE, "mlp.gate_proj",    "gate_proj", H,  C)    \
    X(UP,   "mlp.up_proj",      "up_proj",   H,  C)    \
    X(DOWN, "mlp.down_proj",    "down_proj", C,  H)

QLORADEF const char *qlora_target_path(qlora_target t) {
    switch (t) {
#define QLORA__X(e, path, name, o, i) case QLORA_TARGET_##e: return path;
        QLORA__LLAMA_TARGETS(QLORA__X)
#undef QLORA__X
    default: break;
    }
    return "?";
}

QLORADEF const char *qlora_target_name(qlora_target t) {
    switch (t) {
#define QLORA__X(e, path, name, o, i) case QLORA_TARGET_##e: return name;
        QLORA__LLAMA_TARGETS(QLORA__X)
#undef QLORA__X
    default: break;
    }
    return "?";
}

// (out, in) of target t under cfg.
static void qlora__ll_shape(const qlora_llama_config *cfg, int t, int64_t *out, int64_t *in) {
    int64_t C = cfg->hidden_size, H = cfg->intermediate_size;
    int64_t QD = (int64_t)cfg->n_heads * cfg->head_dim, KD = (int64_t)cfg->n_kv_heads * cfg->head_dim;
    *out = *in = 0;
    switch (t) {
#define QLORA__X(e, path, name, o, i) case QLORA_TARGET_##e: *out = o; *in = i; break;
        QLORA__LLAMA_TARGETS(QLORA__X)
#undef QLORA__X
    default: break;
    }
}

// Prepends "prefix: " to the detail already in err (the callee's message keeps its specifics).
static qlora_status qlora__ll_wrap(qlora_error *err, qlora_status st, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static qlora_status qlora__ll_wrap(qlora_error *err, qlora_status st, const char *fmt, ...) {
    if (err) {
        char prefix[160], old[sizeof(err->detail)];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(prefix, sizeof prefix, fmt, ap);
        va_end(ap);
        memcpy(old, err->detail, sizeof old);
        old[sizeof old - 1] = 0;
        // prefix + ": " + old, truncated to the detail's size
        size_t cap = sizeof err->detail - 1, a = strlen(prefix), b = strlen(old);
        if (a > cap - 2) a = cap - 2;
        if (b > cap - 2 - a) b = cap - 2 - a;
        memcpy(err->detail, prefix, a);
        err->detail[a] = ':';
        err->detail[a + 1] = ' ';
        memcpy(err->detail + a + 2, old, b);
        err->detail[a + 2 + b] = 0;
        err->status = st;
    }
    return st;
}

// "dir/name" in a fresh buffer (QLORA_FREE), or NULL.
static char *qlora__ll_join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = (char *)qlora__alloc((int64_t)(a + b + 2));
    if (!p) return NULL;
    memcpy(p, dir, a);
    size_t k = a;
    if (a > 0 && dir[a - 1] != '/') p[k++] = '/';
    memcpy(p + k, name, b + 1);
    return p;
}

// 64-byte aligned sub-allocations of one arena. Walked with base == NULL it only sums the size.
typedef struct qlora__ll_carver {
    char   *base;
    int64_t off;
    int     ok;
} qlora__ll_carver;

static void *qlora__ll_carve(qlora__ll_carver *c, int64_t a, int64_t b, int64_t elem) {
    int64_t n, bytes;
    if (!c->ok || !qlora__mul_ok(a, b, &n) || !qlora__mul_ok(n, elem, &bytes) ||
        c->off > INT64_MAX - bytes - 64) {
        c->ok = 0;
        return NULL;
    }
    int64_t at = (c->off + 63) & ~(int64_t)63;
    c->off = at + bytes;
    return c->base ? (void *)(c->base + at) : NULL;
}

// The 64-byte aligned start of an arena allocated with 64 spare bytes.
static char *qlora__ll_align(void *p) {
    uintptr_t u = (uintptr_t)p;
    return (char *)p + ((64 - (u & 63)) & 63);
}

// ---------------------------------------------------------------------------------------------
// config.json

static qlora_status qlora__ll_cfg_int(const qlora_json *root, const char *key, int64_t def, int32_t *out,
                                      const char *name, qlora_error *err) {
    const qlora_json *v = qlora_json_get(root, key);
    int64_t x = def;
    if (v && v->type != QLORA_JSON_NULL && !qlora_json_as_int(v, &x))
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"%s\" must be an integer", name, key);
    if (x < INT32_MIN || x > INT32_MAX)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"%s\" = %lld is out of range", name, key, (long long)x);
    *out = (int32_t)x;
    return QLORA_OK;
}

static qlora_status qlora__ll_cfg_num(const qlora_json *root, const char *key, double def, float *out,
                                      const char *name, qlora_error *err) {
    const qlora_json *v = qlora_json_get(root, key);
    double x = def;
    if (v && v->type != QLORA_JSON_NULL) {
        if (v->type != QLORA_JSON_NUMBER)
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"%s\" must be a number", name, key);
        x = v->number;
    }
    *out = (float)x;
    return QLORA_OK;
}

// Token ids: integer, null (→ -1), or a list (its first entry).
static qlora_status qlora__ll_cfg_token(const qlora_json *root, const char *key, int64_t def, int32_t *out,
                                        const char *name, qlora_error *err) {
    const qlora_json *v = qlora_json_get(root, key);
    int64_t x = def;
    if (v && v->type == QLORA_JSON_ARRAY) {   // Llama 3 style list: the first id (an empty list is null)
        if (v->count == 0) {
            *out = -1;
            return QLORA_OK;
        }
        v = qlora_json_at(v, 0);
    }
    if (v && v->type != QLORA_JSON_NULL && !qlora_json_as_int(v, &x))
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"%s\" must be an integer, a list of integers or null",
                           name, key);
    if (v && v->type == QLORA_JSON_NULL) x = -1;
    *out = (x < 0 || x > INT32_MAX) ? -1 : (int32_t)x;
    return QLORA_OK;
}

// rope_scaling / rope_parameters: {"rope_type" or "type": "default" | "linear", "factor": f}.
static qlora_status qlora__ll_cfg_rope(const qlora_json *rs, const char *key, float *factor, const char *name,
                                       qlora_error *err) {
    if (!rs || rs->type == QLORA_JSON_NULL) return QLORA_OK;
    if (rs->type != QLORA_JSON_OBJECT)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"%s\" must be an object or null", name, key);
    const char *type = qlora_json_get_string(rs, "rope_type", NULL);
    if (!type) type = qlora_json_get_string(rs, "type", NULL);
    if (!type) return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"%s\" has no \"rope_type\"/\"type\"", name, key);
    if (strcmp(type, "default") == 0) return QLORA_OK;
    if (strcmp(type, "linear") != 0)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: %s type \"%s\" (only \"linear\" is supported)",
                           name, key, type);
    const qlora_json *f = qlora_json_get(rs, "factor");
    if (!f || f->type != QLORA_JSON_NUMBER)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s \"linear\" needs a numeric \"factor\"", name, key);
    *factor = (float)f->number;
    return QLORA_OK;
}

static qlora_status qlora__ll_cfg_from_json(qlora_llama_config *cfg, const qlora_json *root, const char *name,
                                            qlora_error *err) {
    qlora_status st = QLORA_OK;
    memset(cfg, 0, sizeof *cfg);
    if (!root || root->type != QLORA_JSON_OBJECT)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: the top level is not an object", name);
    // LlamaConfig defaults for absent fields
    if (st == QLORA_OK) st = qlora__ll_cfg_int(root, "hidden_size", 4096, &cfg->hidden_size, name, err);
    if (st == QLORA_OK)
        st = qlora__ll_cfg_int(root, "intermediate_size", 11008, &cfg->intermediate_size, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_int(root, "num_hidden_layers", 32, &cfg->n_layers, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_int(root, "num_attention_heads", 32, &cfg->n_heads, name, err);
    if (st == QLORA_OK)
        st = qlora__ll_cfg_int(root, "num_key_value_heads", cfg->n_heads, &cfg->n_kv_heads, name, err);
    if (st == QLORA_OK)
        st = qlora__ll_cfg_int(root, "head_dim", cfg->n_heads > 0 ? cfg->hidden_size / cfg->n_heads : 0,
                               &cfg->head_dim, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_int(root, "vocab_size", 32000, &cfg->vocab_size, name, err);
    if (st == QLORA_OK)
        st = qlora__ll_cfg_int(root, "max_position_embeddings", 2048, &cfg->max_position_embeddings, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_num(root, "rms_norm_eps", 1e-6, &cfg->rms_norm_eps, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_num(root, "rope_theta", 10000.0, &cfg->rope_theta, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_token(root, "bos_token_id", 1, &cfg->bos_token_id, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_token(root, "eos_token_id", 2, &cfg->eos_token_id, name, err);
    if (st == QLORA_OK) st = qlora__ll_cfg_token(root, "pad_token_id", -1, &cfg->pad_token_id, name, err);
    if (st != QLORA_OK) return st;
    const qlora_json *v = qlora_json_get(root, "tie_word_embeddings");
    if (v && v->type != QLORA_JSON_BOOL && v->type != QLORA_JSON_NULL)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"tie_word_embeddings\" must be a boolean", name);
    cfg->tie_word_embeddings = (v && v->type == QLORA_JSON_BOOL) ? v->boolean : 0;
    cfg->rope_scaling_factor = 1.0f;
    const qlora_json *rp = qlora_json_get(root, "rope_parameters");   // transformers v5 layout
    if (rp && rp->type == QLORA_JSON_OBJECT) {
        st = qlora__ll_cfg_num(rp, "rope_theta", cfg->rope_theta, &cfg->rope_theta, name, err);
        if (st == QLORA_OK)
            st = qlora__ll_cfg_rope(rp, "rope_parameters", &cfg->rope_scaling_factor, name, err);
    }
    if (st == QLORA_OK)
        st = qlora__ll_cfg_rope(qlora_json_get(root, "rope_scaling"), "rope_scaling", &cfg->rope_scaling_factor,
                                name, err);
    if (st != QLORA_OK) return st;
    v = qlora_json_get(root, "hidden_act");
    if (v && v->type != QLORA_JSON_NULL) {
        if (v->type != QLORA_JSON_STRING)
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: \"hidden_act\" must be a string", name);
        if (strcmp(v->str, "silu") != 0)
            return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: hidden_act \"%s\" (only \"silu\")", name,
                               v->str);
    }
    if (qlora_json_get_bool(root, "attention_bias", 0) || qlora_json_get_bool(root, "mlp_bias", 0))
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: attention_bias / mlp_bias are not supported", name);
    st = qlora_llama_config_validate(cfg, err);
    if (st != QLORA_OK) return qlora__ll_wrap(err, st, "%s", name);
    return QLORA_OK;
}

QLORADEF qlora_status qlora_llama_config_validate(const qlora_llama_config *cfg, qlora_error *err) {
    if (!cfg) return qlora__fail(err, QLORA_ERR_ARG, "llama config: NULL");
    const char *bad = NULL;
    int32_t val = 0;
#define QLORA__POS(f, label) if (!bad && cfg->f <= 0) { bad = label; val = cfg->f; }
    QLORA__POS(hidden_size, "hidden_size")
    QLORA__POS(intermediate_size, "intermediate_size")
    QLORA__POS(n_layers, "num_hidden_layers")
    QLORA__POS(n_heads, "num_attention_heads")
    QLORA__POS(n_kv_heads, "num_key_value_heads")
    QLORA__POS(head_dim, "head_dim")
    QLORA__POS(vocab_size, "vocab_size")
    QLORA__POS(max_position_embeddings, "max_position_embeddings")
#undef QLORA__POS
    if (bad) return qlora__fail(err, QLORA_ERR_FORMAT, "%s = %d must be positive", bad, (int)val);
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return qlora__fail(err, QLORA_ERR_FORMAT,
                           "num_attention_heads %d is not a multiple of num_key_value_heads %d",
                           (int)cfg->n_heads, (int)cfg->n_kv_heads);
    if (cfg->head_dim % 2 != 0)
        return qlora__fail(err, QLORA_ERR_FORMAT, "head_dim %d must be even for RoPE", (int)cfg->head_dim);
    if (cfg->max_position_embeddings > QLORA_MAX_POSITIONS)   // the RoPE tables hold every position
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "max_position_embeddings %d is above the %d positions supported",
                           (int)cfg->max_position_embeddings, (int)QLORA_MAX_POSITIONS);
    if (!(cfg->rms_norm_eps > 0.0f) || !isfinite(cfg->rms_norm_eps))
        return qlora__fail(err, QLORA_ERR_FORMAT, "rms_norm_eps %g must be finite and positive",
                           (double)cfg->rms_norm_eps);
    if (!(cfg->rope_theta > 0.0f) || !isfinite(cfg->rope_theta))
        return qlora__fail(err, QLORA_ERR_FORMAT, "rope_theta %g must be finite and positive",
                           (double)cfg->rope_theta);
    if (!(cfg->rope_scaling_factor > 0.0f) || !isfinite(cfg->rope_scaling_factor))
        return qlora__fail(err, QLORA_ERR_FORMAT, "rope_scaling factor %g must be finite and positive",
                           (double)cfg->rope_scaling_factor);
    // every weight's element count must fit comfortably (int64 element offsets everywhere)
    int64_t t, C = cfg->hidden_size;
    if (!qlora__mul_ok((int64_t)cfg->n_heads, cfg->head_dim, &t) || !qlora__mul_ok(t, C, &t) ||
        !qlora__mul_ok((int64_t)cfg->intermediate_size, C, &t) ||
        !qlora__mul_ok((int64_t)cfg->vocab_size, C, &t) || t > ((int64_t)1 << 50))
        return qlora__fail(err, QLORA_ERR_SHAPE, "llama config: weight sizes overflow");
    return QLORA_OK;
}

QLORADEF qlora_status qlora_llama_config_parse(qlora_llama_config *cfg, const char *json, size_t len,
                                               const char *name, qlora_error *err) {
    if (!cfg || !json) return qlora__fail(err, QLORA_ERR_ARG, "llama config parse: NULL argument");
    if (!name) name = "config.json";
    qlora_json_doc doc;
    memset(&doc, 0, sizeof doc);
    qlora_status st = qlora_json_parse(&doc, json, len, err);
    if (st != QLORA_OK) return qlora__ll_wrap(err, st, "%s", name);
    st = qlora__ll_cfg_from_json(cfg, &doc.root, name, err);
    qlora_json_free(&doc);
    return st;
}

QLORADEF qlora_status qlora_llama_config_read(qlora_llama_config *cfg, const char *path, qlora_error *err) {
    if (!cfg || !path) return qlora__fail(err, QLORA_ERR_ARG, "llama config read: NULL argument");
    qlora_json_doc doc;
    memset(&doc, 0, sizeof doc);
    qlora_status st = qlora_json_read_file(&doc, path, err);   // details already name the path
    if (st != QLORA_OK) return st;
    st = qlora__ll_cfg_from_json(cfg, &doc.root, path, err);
    qlora_json_free(&doc);
    return st;
}


// ---------------------------------------------------------------------------------------------
// model memory

// The model's fp32 views, all from one arena: embed, per-layer norms, final norm, lm_head (untied),
// RoPE tables. Returns the byte size; assigns the views when base != NULL.
static int64_t qlora__ll_model_layout(qlora_model *m, char *base) {
    const qlora_llama_config *c = &m->cfg;
    qlora__ll_carver cv;
    cv.base = base;
    cv.off = 0;
    cv.ok = 1;
    int64_t V = c->vocab_size, C = c->hidden_size;
    float *embed = (float *)qlora__ll_carve(&cv, V, C, 4);
    for (int l = 0; l < c->n_layers; l++) {
        float *a = (float *)qlora__ll_carve(&cv, 1, C, 4), *b = (float *)qlora__ll_carve(&cv, 1, C, 4);
        if (base) {
            m->layers[l].input_norm = a;
            m->layers[l].post_norm = b;
        }
    }
    float *fn = (float *)qlora__ll_carve(&cv, 1, C, 4);
    float *head = c->tie_word_embeddings ? embed : (float *)qlora__ll_carve(&cv, V, C, 4);
    float *rc = (float *)qlora__ll_carve(&cv, c->max_position_embeddings, c->head_dim / 2, 4);
    float *rs = (float *)qlora__ll_carve(&cv, c->max_position_embeddings, c->head_dim / 2, 4);
    for (int l = 0; m->dense && l < c->n_layers; l++)   // dense projections, (out, in) each
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            int64_t out, in;
            qlora__ll_shape(c, t, &out, &in);
            float *w = (float *)qlora__ll_carve(&cv, out, in, 4);
            if (base) m->layers[l].dense[t] = w;
        }
    if (base) {
        m->embed = embed;
        m->final_norm = fn;
        m->lm_head = head;
        m->rope_cos = rc;
        m->rope_sin = rs;
    }
    return cv.ok ? cv.off + 64 : -1;
}

static qlora_model_options qlora__ll_opts(const qlora_model_options *opt) {
    qlora_model_options o;
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    if (o.blocksize == 0) o.blocksize = QLORA_NF4_BLOCK_DEFAULT;
    if (o.lora_targets == 0) o.lora_targets = QLORA_TARGETS_ALL;
    o.lora_targets &= QLORA_TARGETS_ALL;
    return o;
}

// Allocates layers and the fp32 arena for m->cfg (validated) and fills the RoPE tables.
static qlora_status qlora__ll_model_alloc(qlora_model *m, const qlora_model_options *o, qlora_error *err) {
    if (!qlora_nf4_blocksize_valid(o->blocksize))
        return qlora__fail(err, QLORA_ERR_ARG, "model options: NF4 blocksize %d not in {32, ..., 4096}",
                           (int)o->blocksize);
    if (o->lora.rank < 0) return qlora__fail(err, QLORA_ERR_ARG, "model options: negative LoRA rank");
    if (o->dense && o->lora.rank > 0)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED,
                           "model options: LoRA adapters on a dense model (options.dense = 1)");
    m->exec = o->exec;
    m->dense = o->dense ? 1 : 0;
    m->layers =
        (qlora_llama_layer *)qlora__calloc((int64_t)m->cfg.n_layers * (int64_t)sizeof(qlora_llama_layer));
    int64_t bytes = qlora__ll_model_layout(m, NULL);
    if (bytes < 0) return qlora__fail(err, QLORA_ERR_SHAPE, "model: fp32 weight sizes overflow");
    m->arena = (float *)qlora__alloc(bytes);
    if (!m->layers || !m->arena)
        return qlora__fail(err, QLORA_ERR_NOMEM, "model: %lld bytes of fp32 weights", (long long)bytes);
    qlora__ll_model_layout(m, qlora__ll_align(m->arena));
    return qlora_rope_table(m->rope_cos, m->rope_sin, m->cfg.max_position_embeddings, m->cfg.head_dim,
                            m->cfg.rope_theta, m->cfg.rope_scaling_factor, err);
}

// Adapters for the targets in o->lora_targets (none when o->lora.rank == 0).
static qlora_status qlora__ll_make_loras(qlora_model *m, const qlora_model_options *o, qlora_error *err) {
    m->lora_targets = 0;
    memset(&m->lora_cfg, 0, sizeof m->lora_cfg);
    if (o->lora.rank == 0) return QLORA_OK;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            if (!((o->lora_targets >> t) & 1u)) continue;
            int64_t out, in;
            qlora__ll_shape(&m->cfg, t, &out, &in);
            uint64_t seed = o->lora_seed + 0x9E3779B97F4A7C15ull * (uint64_t)(l * QLORA_TARGET_COUNT + t + 1);
            qlora_status st = qlora_lora_init(&m->layers[l].lora[t], in, out, &o->lora, seed, err);
            if (st != QLORA_OK)
                return qlora__ll_wrap(err, st, "layer %d %s", l, qlora_target_name((qlora_target)t));
        }
    m->lora_targets = o->lora_targets;
    m->lora_cfg = o->lora;
    return QLORA_OK;
}

QLORADEF void qlora_model_free(qlora_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->cfg.n_layers; l++)
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
                qlora_nf4_free(&m->layers[l].w[t]);
                qlora_lora_free(&m->layers[l].lora[t]);
            }
        QLORA_FREE(m->layers);
    }
    QLORA_FREE(m->arena);
    memset(m, 0, sizeof *m);
}

QLORADEF void qlora_model_zero_grad(qlora_model *m) {
    if (!m || !m->layers) return;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) qlora_lora_zero_grad(&m->layers[l].lora[t]);
}

QLORADEF int64_t qlora_model_lora_params(const qlora_model *m) {
    int64_t n = 0;
    if (!m || !m->layers) return 0;
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_lora *a = &m->layers[l].lora[t];
            if (a->A) n += (int64_t)a->rank * (a->in + a->out);
        }
    return n;
}

QLORADEF int64_t qlora_model_weight_bytes(const qlora_model *m) {
    if (!m || !m->layers) return 0;
    const qlora_llama_config *c = &m->cfg;
    int64_t n = 4 * ((int64_t)c->vocab_size * c->hidden_size * (c->tie_word_embeddings ? 1 : 2) +
                     (int64_t)c->hidden_size * (2 * c->n_layers + 1));
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            int64_t out, in;
            qlora__ll_shape(c, t, &out, &in);
            n += m->dense ? 4 * out * in : (int64_t)qlora_nf4_bytes(&m->layers[l].w[t]);
        }
    return n;
}

// ---------------------------------------------------------------------------------------------
// loading

// Path of the shard holding t (for error details).
static const char *qlora__ll_file_of(const qlora_st_model *stm, const qlora_st_tensor *t) {
    for (int64_t i = 0; i < stm->n_shards; i++) {
        const qlora_safetensors *s = &stm->shards[i];
        if (t >= s->tensors && t < s->tensors + s->n_tensors) return s->path;
    }
    return stm->dir;
}

static void qlora__ll_shape_str(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t k = 0;
    buf[k++] = '[';
    for (int i = 0; i < ndim && k + 24 < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    snprintf(buf + k, cap - k, "]");
}

// Finds `name` and checks it is a float tensor of exactly the expected shape (ndim 1 or 2).
static qlora_status qlora__ll_find_float(const qlora_st_tensor **out, const qlora_st_model *stm,
                                         const char *name, int64_t d0, int64_t d1, int ndim, qlora_error *err) {
    const qlora_st_tensor *t = qlora_st_model_find(stm, name);
    *out = t;
    if (!t) return qlora__fail(err, QLORA_ERR_FORMAT, "%s: tensor %s is missing", stm->dir, name);
    int64_t want[2];
    want[0] = d0;
    want[1] = d1;
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == want[i];
    if (!same) {
        char a[96], b[96];
        qlora__ll_shape_str(a, sizeof a, t->shape, t->ndim);
        qlora__ll_shape_str(b, sizeof b, want, ndim);
        return qlora__fail(err, QLORA_ERR_SHAPE, "%s: tensor %s has shape %s but config.json implies %s",
                           qlora__ll_file_of(stm, t), name, a, b);
    }
    if (t->dtype != QLORA_DTYPE_F32 && t->dtype != QLORA_DTYPE_F16 && t->dtype != QLORA_DTYPE_BF16 &&
        t->dtype != QLORA_DTYPE_F64)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: tensor %s has dtype %s (expected F32, F16 or BF16)",
                           qlora__ll_file_of(stm, t), name, qlora_dtype_name(t->dtype));
    return QLORA_OK;
}

static qlora_status qlora__ll_load_f32(float *dst, const qlora_st_model *stm, const char *name, int64_t d0,
                                       int64_t d1, int ndim, qlora_error *err) {
    const qlora_st_tensor *t;
    qlora_status st = qlora__ll_find_float(&t, stm, name, d0, d1, ndim, err);
    if (st != QLORA_OK) return st;
    st = qlora_tensor_to_f32(dst, t, err);
    qlora_st_model_evict(stm, t);   // the file's pages leave RSS once converted
    if (st == QLORA_OK) st = qlora__check_finite(dst, t->numel, name, err);
    return st == QLORA_OK ? st : qlora__ll_wrap(err, st, "%s", qlora__ll_file_of(stm, t));
}

// The tensors of the fp32 arena with the config's shapes: embedding, lm_head (unless tied), final norm, every
// layer's two norms. load 0 only checks that they are there with those shapes; qlora_model_load does that before
// anything is sized by the config, so that a config.json claiming more than the files hold fails naming the
// tensor instead of allocating what it claims (each projection is checked the same way before its NF4 storage
// is allocated). load 1 converts them into the allocated arena.
static qlora_status qlora__ll_arena_tensors(qlora_model *m, const qlora_st_model *stm, int load, qlora_error *err) {
    const qlora_llama_config *c = &m->cfg;
    const int64_t V = c->vocab_size, C = c->hidden_size;
    qlora_status st = QLORA_OK;
    for (int i = 0; st == QLORA_OK && i < 3 + 2 * c->n_layers; i++) {
        char name[160];
        float *dst;
        int64_t d0 = C, d1 = 0;
        int ndim = 1;
        if (i < 2) {   // (V, C)
            if (i == 1 && c->tie_word_embeddings) continue;
            snprintf(name, sizeof name, "%s", i == 0 ? "model.embed_tokens.weight" : "lm_head.weight");
            dst = i == 0 ? m->embed : m->lm_head;
            d0 = V;
            d1 = C;
            ndim = 2;
        } else if (i == 2) {
            snprintf(name, sizeof name, "model.norm.weight");
            dst = m->final_norm;
        } else {
            const int l = (i - 3) / 2, post = (i - 3) % 2;
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l,
                     post ? "post_attention_layernorm" : "input_layernorm");
            dst = load ? (post ? m->layers[l].post_norm : m->layers[l].input_norm) : NULL;
        }
        const qlora_st_tensor *t;
        st = load ? qlora__ll_load_f32(dst, stm, name, d0, d1, ndim, err)
                  : qlora__ll_find_float(&t, stm, name, d0, d1, ndim, err);
    }
    return st;
}

// A bitsandbytes 4-bit projection `P.weight` (spec §3), taken as stored.
static qlora_status qlora__ll_load_bnb(qlora_nf4 *w, const qlora_st_model *stm, const char *wname, int64_t rows,
                                       int64_t cols, qlora_error *err) {
    char key[320];
    const qlora_st_tensor *tw = qlora_st_model_find(stm, wname), *t;
    const char *file = qlora__ll_file_of(stm, tw);
    qlora_json_doc doc;
    memset(&doc, 0, sizeof doc);
    memset(w, 0, sizeof *w);
    snprintf(key, sizeof key, "%s.quant_state.bitsandbytes__fp4", wname);
    if (qlora_st_model_find(stm, key))
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: %s is FP4-quantized (only NF4 is supported)", file,
                           wname);
    snprintf(key, sizeof key, "%s.quant_state.bitsandbytes__nf4", wname);
    const qlora_st_tensor *tq = qlora_st_model_find(stm, key);
    if (!tq) return qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s is %s but %s is missing", file, wname,
                                qlora_dtype_name(tw->dtype), key);
    if (tw->dtype != QLORA_DTYPE_U8)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED,
                           "%s: %s stores 4-bit codes as %s (only quant_storage uint8)", file, wname,
                           qlora_dtype_name(tw->dtype));
    if (tq->dtype != QLORA_DTYPE_U8)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s must be U8 JSON bytes", qlora__ll_file_of(stm, tq),
                           key);
    qlora_status st = qlora_json_parse(&doc, (const char *)tq->data, (size_t)tq->nbytes, err);
    if (st != QLORA_OK) return qlora__ll_wrap(err, st, "%s: %s", qlora__ll_file_of(stm, tq), key);
    const qlora_json *qs = &doc.root, *shape = qlora_json_get(qs, "shape");
    const char *qt = qlora_json_get_string(qs, "quant_type", "");
    int64_t bs = qlora_json_get_int(qs, "blocksize", -1), s0 = -1, s1 = -1;
    if (shape && shape->type == QLORA_JSON_ARRAY && shape->count == 2) {
        qlora_json_as_int(qlora_json_at(shape, 0), &s0);
        qlora_json_as_int(qlora_json_at(shape, 1), &s1);
    }
    int64_t n = rows * cols, nblocks = 0;
    if (strcmp(qt, "nf4") != 0)
        st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: %s quant_type \"%s\" (only nf4)", file, key, qt);
    else if (bs < 32 || bs > 4096 || !qlora_nf4_blocksize_valid((int32_t)bs))
        st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s blocksize %lld is not valid", file, key, (long long)bs);
    else if (s0 != rows || s1 != cols)
        st = qlora__fail(err, QLORA_ERR_SHAPE,
                         "%s: tensor %s has quant_state shape [%lld, %lld] but config.json "
                         "implies [%lld, %lld]",
                         file, wname, (long long)s0, (long long)s1, (long long)rows, (long long)cols);
    else if (tw->numel != (n + 1) / 2)
        st = qlora__fail(err, QLORA_ERR_SHAPE,
                         "%s: tensor %s holds %lld bytes of codes, shape [%lld, %lld] needs %lld", file, wname,
                         (long long)tw->numel, (long long)rows, (long long)cols, (long long)((n + 1) / 2));
    if (st != QLORA_OK) {
        qlora_json_free(&doc);
        return st;
    }
    nblocks = qlora_nf4_num_blocks(n, (int32_t)bs);
    // quant_map must be the NF4 codebook
    snprintf(key, sizeof key, "%s.quant_map", wname);
    t = qlora_st_model_find(stm, key);
    float qm[16];
    if (!t || t->dtype != QLORA_DTYPE_F32 || t->numel != 16)
        st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s must be an F32 tensor of 16 values", file, key);
    else {
        memcpy(qm, t->data, sizeof qm);
        for (int i = 0; i < 16 && st == QLORA_OK; i++)
            if (!(fabsf(qm[i] - qlora_nf4_codebook()[i]) <= 1e-6f))
                st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: %s entry %d is %g, not the NF4 codebook's %g",
                                 file, key, i, (double)qm[i], (double)qlora_nf4_codebook()[i]);
    }
    w->rows = rows;
    w->cols = cols;
    w->blocksize = (int32_t)bs;
    snprintf(key, sizeof key, "%s.absmax", wname);
    const qlora_st_tensor *ta = qlora_st_model_find(stm, key);
    if (st == QLORA_OK &&
        (!ta || ta->numel != nblocks || (ta->dtype != QLORA_DTYPE_U8 && ta->dtype != QLORA_DTYPE_F32)))
        st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s must be U8 or F32 with %lld values", file, key,
                         (long long)nblocks);
    if (st == QLORA_OK) {
        w->codes = (uint8_t *)qlora__alloc((n + 1) / 2 + 1);
        if (!w->codes) st = qlora__fail(err, QLORA_ERR_NOMEM, "%s: %s", file, wname);
        else {
            memcpy(w->codes, tw->data, (size_t)((n + 1) / 2));
            qlora_st_model_evict(stm, tw);   // the file's pages leave RSS once copied
        }
    }
    if (st == QLORA_OK && ta->dtype == QLORA_DTYPE_F32) {
        w->double_quant = 0;
        w->absmax = (float *)qlora__alloc(nblocks * 4);
        if (!w->absmax) st = qlora__fail(err, QLORA_ERR_NOMEM, "%s: %s", file, key);
        else st = qlora_tensor_to_f32(w->absmax, ta, err);
    } else if (st == QLORA_OK) {
        int64_t nn = qlora_nf4_num_blocks(nblocks, QLORA_DQ_BLOCK);
        const qlora_json *off = qlora_json_get(qs, "nested_offset");
        int64_t nbs = qlora_json_get_int(qs, "nested_blocksize", QLORA_DQ_BLOCK);
        snprintf(key, sizeof key, "%s.nested_absmax", wname);
        const qlora_st_tensor *tn = qlora_st_model_find(stm, key);
        snprintf(key, sizeof key, "%s.nested_quant_map", wname);
        const qlora_st_tensor *tm = qlora_st_model_find(stm, key);
        w->double_quant = 1;
        if (!off || off->type != QLORA_JSON_NUMBER || nbs != QLORA_DQ_BLOCK)
            st = qlora__fail(err, QLORA_ERR_FORMAT,
                             "%s: %s.quant_state needs nested_offset and nested_blocksize 256", file, wname);
        else if (!tn || tn->dtype != QLORA_DTYPE_F32 || tn->numel != nn)
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s.nested_absmax must be F32 with %lld values", file,
                             wname, (long long)nn);
        else if (!tm || tm->dtype != QLORA_DTYPE_F32 || tm->numel != 256)
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s.nested_quant_map must be F32 with 256 values", file,
                             wname);
        else {
            w->nested_offset = (float)off->number;
            memcpy(w->nested_map, tm->data, sizeof w->nested_map);
            w->qabsmax = (uint8_t *)qlora__alloc(nblocks);
            w->nested_absmax = (float *)qlora__alloc(nn * 4);
            if (!w->qabsmax || !w->nested_absmax) st = qlora__fail(err, QLORA_ERR_NOMEM, "%s: %s", file, wname);
            else {
                memcpy(w->qabsmax, ta->data, (size_t)nblocks);
                memcpy(w->nested_absmax, tn->data, (size_t)nn * 4);
            }
        }
    }
    qlora_json_free(&doc);
    if (st != QLORA_OK) qlora_nf4_free(w);
    return st;
}

// Projection t of layer l: bnb 4-bit as stored, or a float tensor quantized through tmp (≥ out·in floats).
static qlora_status qlora__ll_load_proj(qlora_model *m, const qlora_st_model *stm, int l, int t, float *tmp,
                                        const qlora_model_options *o, qlora_error *err) {
    char name[256], qkey[320];
    int64_t out, in;
    qlora__ll_shape(&m->cfg, t, &out, &in);
    snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, qlora_target_path((qlora_target)t));
    snprintf(qkey, sizeof qkey, "%s.quant_state.bitsandbytes__nf4", name);
    const qlora_st_tensor *tw = qlora_st_model_find(stm, name);
    int bnb = tw && (tw->dtype == QLORA_DTYPE_U8 || qlora_st_model_find(stm, qkey));
    if (m->dense && !bnb) return qlora__ll_load_f32(m->layers[l].dense[t], stm, name, out, in, 2, err);
    if (m->dense) {   // a bitsandbytes 4-bit projection into a dense model: dequantized
        qlora_nf4 w;
        qlora_status st = qlora__ll_load_bnb(&w, stm, name, out, in, err);
        if (st == QLORA_OK) st = qlora_nf4_dequantize(m->layers[l].dense[t], &w, err);
        qlora_nf4_free(&w);
        return st;
    }
    if (bnb) return qlora__ll_load_bnb(&m->layers[l].w[t], stm, name, out, in, err);
    qlora_status st = qlora__ll_load_f32(tmp, stm, name, out, in, 2, err);
    if (st != QLORA_OK) return st;
    st = qlora_nf4_quantize(&m->layers[l].w[t], tmp, out, in, o->blocksize, !o->no_double_quant, err);
    if (st != QLORA_OK) return qlora__ll_wrap(err, st, "%s: %s", qlora__ll_file_of(stm, tw), name);
    return QLORA_OK;
}

QLORADEF qlora_status qlora_model_load(qlora_model *m, const char *dir, const qlora_model_options *opt,
                                       qlora_error *err) {
    if (!m || !dir) return qlora__fail(err, QLORA_ERR_ARG, "model load: NULL model or directory");
    memset(m, 0, sizeof *m);
    qlora_model_options o = qlora__ll_opts(opt);
    qlora_st_model stm;
    memset(&stm, 0, sizeof stm);
    float *tmp = NULL;
    char *cpath = qlora__ll_join(dir, "config.json");
    if (!cpath) return qlora__fail(err, QLORA_ERR_NOMEM, "model load: path");
    qlora_status st = qlora_llama_config_read(&m->cfg, cpath, err);
    QLORA_FREE(cpath);
    if (st == QLORA_OK) st = qlora_st_model_open(&stm, dir, err);
    if (st == QLORA_OK) st = qlora__ll_arena_tensors(m, &stm, 0, err);   // checked before the config sizes anything
    if (st == QLORA_OK) st = qlora__ll_model_alloc(m, &o, err);
    if (st == QLORA_OK) st = qlora__ll_arena_tensors(m, &stm, 1, err);
    const qlora_llama_config *c = &m->cfg;
    // one fp32 staging buffer, as large as the largest projection
    int64_t maxn = 0;
    for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
        int64_t out, in;
        qlora__ll_shape(c, t, &out, &in);
        if (out * in > maxn) maxn = out * in;
    }
    for (int l = 0; st == QLORA_OK && l < c->n_layers; l++) {
        for (int t = 0; st == QLORA_OK && t < QLORA_TARGET_COUNT; t++) {
            if (!tmp) {
                tmp = (float *)qlora__alloc(maxn * 4);
                if (!tmp) {
                    st = qlora__fail(err, QLORA_ERR_NOMEM, "model load: %lld-float staging buffer",
                                     (long long)maxn);
                    break;
                }
            }
            st = qlora__ll_load_proj(m, &stm, l, t, tmp, &o, err);
        }
    }
    QLORA_FREE(tmp);
    qlora_st_model_close(&stm);
    if (st == QLORA_OK) st = qlora__ll_make_loras(m, &o, err);
    if (st != QLORA_OK) qlora_model_free(m);
    return st;
}

// Fills n values with uniform draws of standard deviation `std` from the counter-based hash,
// so the values do not depend on the thread count.
static void qlora__ll_fill_uniform(float *x, int64_t n, float std, uint64_t key, uint64_t first) {
    float a = std * 1.7320508f;   // U(-a, a) has std a/√3
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 15))
#endif
    for (int64_t i = 0; i < n; i++) x[i] = (2.0f * qlora_hash_uniform(key, first + (uint64_t)i) - 1.0f) * a;
}

QLORADEF qlora_status qlora_model_init_random(qlora_model *m, const qlora_llama_config *cfg,
                                              const qlora_model_options *opt, uint64_t seed, qlora_error *err) {
    if (!m || !cfg) return qlora__fail(err, QLORA_ERR_ARG, "model init random: NULL model or config");
    if (opt && opt->dense) return qlora_model_init_random_dense(m, cfg, opt, seed, err);
    memset(m, 0, sizeof *m);
    qlora_status st = qlora_llama_config_validate(cfg, err);
    if (st != QLORA_OK) return st;
    qlora_model_options o = qlora__ll_opts(opt);
    m->cfg = *cfg;
    st = qlora__ll_model_alloc(m, &o, err);
    const int64_t V = cfg->vocab_size, C = cfg->hidden_size;
    int32_t bs = o.blocksize;
    // chunk = a whole number of blocks (even), ≈ 1 Mi elements
    int64_t chunk = ((int64_t)1 << 20) / bs * bs;
    float *tmp = st == QLORA_OK ? (float *)qlora__alloc(chunk * 4) : NULL;
    if (st == QLORA_OK && !tmp) st = qlora__fail(err, QLORA_ERR_NOMEM, "model init random: staging buffer");
    if (st == QLORA_OK) {
        qlora__ll_fill_uniform(m->embed, V * C, 0.02f, seed, 0);
        if (!cfg->tie_word_embeddings) qlora__ll_fill_uniform(m->lm_head, V * C, 0.02f, seed ^ 0x5151u, 0);
        for (int64_t i = 0; i < C; i++) m->final_norm[i] = 1.0f;
    }
    for (int l = 0; st == QLORA_OK && l < cfg->n_layers; l++) {
        for (int64_t i = 0; i < C; i++) m->layers[l].input_norm[i] = m->layers[l].post_norm[i] = 1.0f;
        for (int t = 0; st == QLORA_OK && t < QLORA_TARGET_COUNT; t++) {
            qlora_nf4 *w = &m->layers[l].w[t];
            int64_t out, in;
            qlora__ll_shape(cfg, t, &out, &in);
            int64_t n = out * in, nblocks = qlora_nf4_num_blocks(n, bs);
            uint64_t key = seed + 0x9E3779B97F4A7C15ull * (uint64_t)(l * QLORA_TARGET_COUNT + t + 1);
            w->rows = out;
            w->cols = in;
            w->blocksize = bs;
            w->codes = (uint8_t *)qlora__alloc(n / 2 + 1);
            w->absmax = (float *)qlora__alloc(nblocks * 4);
            if (!w->codes || !w->absmax) {
                st = qlora__fail(err, QLORA_ERR_NOMEM, "model init random: layer %d %s", l,
                                 qlora_target_name((qlora_target)t));
                break;
            }
            for (int64_t s = 0; st == QLORA_OK && s < n; s += chunk) {
                int64_t k = n - s < chunk ? n - s : chunk;
                qlora__ll_fill_uniform(tmp, k, 1.0f / sqrtf((float)in), key, (uint64_t)s);
                st = qlora_nf4_quantize_raw(w->codes + s / 2, w->absmax + s / bs, tmp, k, bs, err);
            }
            if (st == QLORA_OK && !o.no_double_quant) {
                int64_t nn = qlora_nf4_num_blocks(nblocks, QLORA_DQ_BLOCK);
                w->double_quant = 1;
                w->qabsmax = (uint8_t *)qlora__alloc(nblocks);
                w->nested_absmax = (float *)qlora__alloc(nn * 4);
                qlora_dynamic_map(w->nested_map, 1);
                if (!w->qabsmax || !w->nested_absmax)
                    st = qlora__fail(err, QLORA_ERR_NOMEM, "model init random: DQ");
                else st = qlora_dq_quantize(w->qabsmax, w->nested_absmax, &w->nested_offset, w->absmax, nblocks,
                                            w->nested_map, err);
                QLORA_FREE(w->absmax);
                w->absmax = NULL;
            }
        }
    }
    QLORA_FREE(tmp);
    if (st == QLORA_OK) st = qlora__ll_make_loras(m, &o, err);
    if (st != QLORA_OK) qlora_model_free(m);
    return st;
}


// ---------------------------------------------------------------------------------------------
// training

// All views of a train state for (B, T); with base == NULL only the size. Returns bytes or -1.
static int64_t qlora__ll_ts_layout(qlora_train_state *ts, const qlora_model *m, int64_t B, int64_t T,
                                   int ckpt, char *base) {
    const qlora_llama_config *c = &m->cfg;
    int64_t M = B * T, C = c->hidden_size, H = c->intermediate_size, V = c->vocab_size, L = c->n_layers;
    int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t R = m->lora_cfg.rank, n_acts = ckpt ? 1 : L;
    int64_t rows = M < 256 ? M : 256;
    qlora__ll_carver cv;
    cv.base = base;
    cv.off = 0;
    cv.ok = 1;
    qlora_train_state s;
    memset(&s, 0, sizeof s);
    s.tokens = (int32_t *)qlora__ll_carve(&cv, M, 1, 4);
    s.targets = (int32_t *)qlora__ll_carve(&cv, M, 1, 4);
    s.key_mask = (uint8_t *)qlora__ll_carve(&cv, M, 1, 1);
    s.pos = (int32_t *)qlora__ll_carve(&cv, M, 1, 4);
    s.resid = (float *)qlora__ll_carve(&cv, (L + 1) * M, C, 4);
    s.lnf = (float *)qlora__ll_carve(&cv, M, C, 4);
    s.rstdf = (float *)qlora__ll_carve(&cv, M, 1, 4);
    s.logits = (float *)qlora__ll_carve(&cv, M, V, 4);
    s.lse = (float *)qlora__ll_carve(&cv, M, 1, 4);
    s.acts = (qlora_llama_acts *)qlora__ll_carve(&cv, n_acts, (int64_t)sizeof(qlora_llama_acts), 1);
    s.rng_saved = (qlora_rng *)qlora__ll_carve(&cv, L * QLORA_TARGET_COUNT, (int64_t)sizeof(qlora_rng), 1);
    for (int64_t i = 0; i < n_acts; i++) {
        qlora_llama_acts a;
        memset(&a, 0, sizeof a);
        a.ln1 = (float *)qlora__ll_carve(&cv, M, C, 4);
        a.rstd1 = (float *)qlora__ll_carve(&cv, M, 1, 4);
        a.q = (float *)qlora__ll_carve(&cv, M, QD, 4);
        a.k = (float *)qlora__ll_carve(&cv, M, KD, 4);
        a.v = (float *)qlora__ll_carve(&cv, M, KD, 4);
        a.att = (float *)qlora__ll_carve(&cv, B * c->n_heads, T * T, 4);
        a.ao = (float *)qlora__ll_carve(&cv, M, QD, 4);
        a.h = (float *)qlora__ll_carve(&cv, M, C, 4);
        a.ln2 = (float *)qlora__ll_carve(&cv, M, C, 4);
        a.rstd2 = (float *)qlora__ll_carve(&cv, M, 1, 4);
        a.g = (float *)qlora__ll_carve(&cv, M, H, 4);
        a.u = (float *)qlora__ll_carve(&cv, M, H, 4);
        a.a = (float *)qlora__ll_carve(&cv, M, H, 4);
        for (int t = 0; t < QLORA_TARGET_COUNT && R > 0; t++) {
            if (!((m->lora_targets >> t) & 1u)) continue;
            int64_t out, in;
            qlora__ll_shape(c, t, &out, &in);
            a.cache[t].xa = (float *)qlora__ll_carve(&cv, M, R, 4);
            if (m->lora_cfg.dropout > 0.0f) a.cache[t].xd = (float *)qlora__ll_carve(&cv, M, in, 4);
        }
        if (base) s.acts[i] = a;
    }
    s.dres = (float *)qlora__ll_carve(&cv, M, C, 4);
    s.dln = (float *)qlora__ll_carve(&cv, M, C, 4);
    s.dq = (float *)qlora__ll_carve(&cv, M, QD, 4);
    s.dk = (float *)qlora__ll_carve(&cv, M, KD, 4);
    s.dv = (float *)qlora__ll_carve(&cv, M, KD, 4);
    s.dao = (float *)qlora__ll_carve(&cv, M, QD, 4);
    s.dg = (float *)qlora__ll_carve(&cv, M, H, 4);
    s.du = (float *)qlora__ll_carve(&cv, M, H, 4);
    s.da = (float *)qlora__ll_carve(&cv, M, H, 4);
    s.dlogits = (float *)qlora__ll_carve(&cv, rows, V, 4);
    if (R > 0) {
        s.lora_xg = (float *)qlora__ll_carve(&cv, M, 3 * R, 4);
        s.lora_a = (float *)qlora__ll_carve(&cv, 3 * R, C, 4);
        s.lora_da = (float *)qlora__ll_carve(&cv, 3 * R, C, 4);
    }
    if (!cv.ok) return -1;
    if (base) {
        s.B = B;
        s.T = T;
        s.M = M;
        s.checkpointing = ckpt ? 1 : 0;
        s.n_acts = (int32_t)n_acts;
        s.logit_rows = rows;
        s.lora_targets = R > 0 ? m->lora_targets : 0;
        s.lora_rank = (int32_t)R;
        s.lora_xd = R > 0 && m->lora_cfg.dropout > 0.0f;
        s.arena = ts->arena;
        s.arena_bytes = cv.off + 64;
        *ts = s;
    }
    return cv.off + 64;
}

static qlora_status qlora__ll_ts_check(const qlora_model *m, int64_t B, int64_t T, qlora_error *err) {
    if (!m || !m->layers) return qlora__fail(err, QLORA_ERR_ARG, "train state: NULL or empty model");
    if (B <= 0 || T <= 0)
        return qlora__fail(err, QLORA_ERR_ARG, "train state: B = %lld, T = %lld must be positive", (long long)B,
                           (long long)T);
    if (T > m->cfg.max_position_embeddings)
        return qlora__fail(err, QLORA_ERR_ARG, "train state: T = %lld exceeds max_position_embeddings %d",
                           (long long)T, (int)m->cfg.max_position_embeddings);
    int64_t M;
    if (!qlora__mul_ok(B, T, &M) || M > INT32_MAX)
        return qlora__fail(err, QLORA_ERR_SHAPE, "train state: B·T overflows");
    return QLORA_OK;
}

QLORADEF qlora_status qlora_train_state_bytes(const qlora_model *m, int64_t B, int64_t T, int checkpointing,
                                              int64_t *bytes, qlora_error *err) {
    qlora_status st = qlora__ll_ts_check(m, B, T, err);
    if (st != QLORA_OK) return st;
    if (!bytes) return qlora__fail(err, QLORA_ERR_ARG, "train state bytes: NULL output");
    *bytes = qlora__ll_ts_layout(NULL, m, B, T, checkpointing, NULL);
    if (*bytes < 0)
        return qlora__fail(err, QLORA_ERR_SHAPE, "train state: size overflows for B = %lld, T = %lld",
                           (long long)B, (long long)T);
    return QLORA_OK;
}

QLORADEF qlora_status qlora_train_state_init(qlora_train_state *ts, const qlora_model *m, int64_t B, int64_t T,
                                             int checkpointing, qlora_error *err) {
    if (!ts) return qlora__fail(err, QLORA_ERR_ARG, "train state init: NULL state");
    memset(ts, 0, sizeof *ts);
    int64_t bytes;
    qlora_status st = qlora_train_state_bytes(m, B, T, checkpointing, &bytes, err);
    if (st != QLORA_OK) return st;
    ts->arena = qlora__alloc(bytes);
    if (!ts->arena) return qlora__fail(err, QLORA_ERR_NOMEM, "train state: %lld bytes for B = %lld, T = %lld",
                                       (long long)bytes, (long long)B, (long long)T);
    qlora__ll_ts_layout(ts, m, B, T, checkpointing, qlora__ll_align(ts->arena));
    return QLORA_OK;
}

QLORADEF void qlora_train_state_free(qlora_train_state *ts) {
    if (!ts) return;
    QLORA_FREE(ts->arena);
    memset(ts, 0, sizeof *ts);
}

// y = x·Wᵀ (+ LoRA) for target t of layer l over M rows.
static qlora_status qlora__ll_proj(qlora_model *m, int l, int t, float *y, const float *x,
                                   qlora_lora_cache *cache, int64_t M, int training, qlora_error *err) {
    qlora_llama_layer *ly = &m->layers[l];
    qlora_status st;
    if (ly->dense[t]) {   // dense model: y (M, out) = x (M, in) · Wᵀ
        int64_t out, in;
        qlora__ll_shape(&m->cfg, t, &out, &in);
        qlora_sgemm(&m->exec, 0, 1, M, out, in, 1.0f, x, in, ly->dense[t], in, 0.0f, y, out);
        return QLORA_OK;
    }
    if (ly->lora[t].A)
        st = qlora_lora_forward(&m->exec, y, cache, x, &ly->lora[t], &ly->w[t], M, training, err);
    else st = qlora_nf4_linear_forward(&m->exec, y, x, &ly->w[t], M, err);
    return st == QLORA_OK ? st : qlora__ll_wrap(err, st, "layer %d %s", l, qlora_target_name((qlora_target)t));
}

// dx += dy·W (+ LoRA input gradient; dx may be NULL), and the adapter's dA, dB.
static qlora_status qlora__ll_proj_back(qlora_model *m, int l, int t, float *dx, const float *dy,
                                        const float *x, const qlora_lora_cache *cache, int64_t M,
                                        qlora_error *err) {
    qlora_llama_layer *ly = &m->layers[l];
    qlora_status st = QLORA_OK;
    if (ly->dense[t]) {   // dense model: dx (M, in) += dy (M, out) · W
        int64_t out, in;
        qlora__ll_shape(&m->cfg, t, &out, &in);
        if (dx) qlora_sgemm(&m->exec, 0, 0, M, in, out, 1.0f, dy, out, ly->dense[t], in, 1.0f, dx, in);
        return QLORA_OK;
    }
    if (ly->lora[t].A) st = qlora_lora_backward(&m->exec, dx, &ly->lora[t], dy, x, cache, &ly->w[t], M, err);
    else if (dx) st = qlora_nf4_linear_backward(&m->exec, dx, dy, &ly->w[t], M, err);
    return st == QLORA_OK
               ? st
               : qlora__ll_wrap(err, st, "layer %d %s backward", l, qlora_target_name((qlora_target)t));
}

// The projections tg[0..n-1] of layer l read one input x (M, C): q, k, v, or gate, up. Their LoRA runs
// fused when at least two of them carry an adapter and no dropout mask applies (each projection would
// draw its own): with their A stacked as A_s (Σr, C), x·A_sᵀ is one product, and in backward gᵀ·x and
// g·A_s (g = the s·dy·B side by side) are one each, so x and dx stream through once instead of n times.
// Returns the number of fused projections (0: run them one by one); marks them in fused[].
static int qlora__ll_group_fusable(const qlora_model *m, const qlora_train_state *ts, int l, const int *tg, int n,
                                   int training, int *fused) {
    const qlora_llama_layer *ly = &m->layers[l];
    int k = 0;
    for (int i = 0; i < n; i++) {
        const qlora_lora *a = &ly->lora[tg[i]];
        fused[i] = !ly->dense[tg[i]] && a->A && a->rank <= ts->lora_rank;
        if (fused[i] && training && a->dropout > 0.0f) return 0;
        k += fused[i];
    }
    return ts->lora_xg && k >= 2 ? k : 0;
}

// lora_a (Σr, C) = the A of the fused projections, stacked in order. Returns Σr.
static int64_t qlora__ll_group_stack_a(const qlora_model *m, qlora_train_state *ts, int l, const int *tg, int n,
                                       const int *fused) {
    const qlora_llama_layer *ly = &m->layers[l];
    int64_t r = 0;
    for (int i = 0; i < n; i++) {
        if (!fused[i]) continue;
        const qlora_lora *a = &ly->lora[tg[i]];
        memcpy(ts->lora_a + r * a->in, a->A, sizeof(float) * (size_t)(a->rank * a->in));
        r += a->rank;
    }
    return r;
}

// y[i] (M, out_i) = x·W_iᵀ + s_i·x·A_iᵀ·B_iᵀ for the projections tg[i] of layer l that share x (M, C).
static qlora_status qlora__ll_proj_group(qlora_model *m, qlora_train_state *ts, int l, const int *tg, int n,
                                         float *const *y, const float *x, qlora_llama_acts *A, int64_t M,
                                         int training, qlora_error *err) {
    int fused[3];
    qlora_status st = QLORA_OK;
    if (!qlora__ll_group_fusable(m, ts, l, tg, n, training, fused)) {
        for (int i = 0; i < n && st == QLORA_OK; i++)
            st = qlora__ll_proj(m, l, tg[i], y[i], x, &A->cache[tg[i]], M, training, err);
        return st;
    }
    qlora_llama_layer *ly = &m->layers[l];
    const int64_t C = m->cfg.hidden_size;
    for (int i = 0; i < n && st == QLORA_OK; i++) {
        if (!fused[i]) {
            st = qlora__ll_proj(m, l, tg[i], y[i], x, &A->cache[tg[i]], M, training, err);
            continue;
        }
        st = qlora__lora_check("lora forward", &ly->lora[tg[i]], &ly->w[tg[i]], M, err);
        if (st == QLORA_OK) st = qlora_nf4_linear_forward(&m->exec, y[i], x, &ly->w[tg[i]], M, err);   // y = x·Wᵀ
        if (st != QLORA_OK) return qlora__ll_wrap(err, st, "layer %d %s", l, qlora_target_name((qlora_target)tg[i]));
    }
    if (st != QLORA_OK) return st;
    const int64_t R = qlora__ll_group_stack_a(m, ts, l, tg, n, fused);
    // xg (M, Σr) = x (M, C) · A_sᵀ;  then per projection xa (M, r) = its columns, y += s·xa·Bᵀ
    qlora_sgemm(&m->exec, 0, 1, M, R, C, 1.0f, x, C, ts->lora_a, C, 0.0f, ts->lora_xg, R);
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        if (!fused[i]) continue;
        const qlora_lora *a = &ly->lora[tg[i]];
        qlora_lora_cache *cache = &A->cache[tg[i]];
        const int64_t r = a->rank;
        for (int64_t row = 0; row < M; row++)
            memcpy(cache->xa + row * r, ts->lora_xg + row * R + off, sizeof(float) * (size_t)r);
        cache->dropped = 0;
        qlora_sgemm(&m->exec, 0, 1, M, a->out, r, a->scale, cache->xa, r, a->B, r, 1.0f, y[i], a->out);
        off += r;
    }
    return QLORA_OK;
}

// Backward of qlora__ll_proj_group: dx (M, C) += Σ_i dy_i·W_i + LoRA (dx may be NULL); dA_i, dB_i accumulate.
static qlora_status qlora__ll_proj_back_group(qlora_model *m, qlora_train_state *ts, int l, const int *tg, int n,
                                              float *dx, const float *const *dy, const float *x,
                                              const qlora_llama_acts *A, int64_t M, qlora_error *err) {
    int fused[3];
    qlora_status st = QLORA_OK;
    int ok = qlora__ll_group_fusable(m, ts, l, tg, n, 0, fused);
    for (int i = 0; i < n && ok; i++) ok = !fused[i] || !A->cache[tg[i]].dropped;
    if (!ok) {
        for (int i = 0; i < n && st == QLORA_OK; i++)
            st = qlora__ll_proj_back(m, l, tg[i], dx, dy[i], x, &A->cache[tg[i]], M, err);
        return st;
    }
    qlora_llama_layer *ly = &m->layers[l];
    const int64_t C = m->cfg.hidden_size;
    const int64_t R = qlora__ll_group_stack_a(m, ts, l, tg, n, fused);   // lora_a was another group's since forward
    // per projection: dB += s·dyᵀ·xa;  g (M, r) = s·dy·B into its columns of xg (M, Σr)
    int64_t off = 0;
    for (int i = 0; i < n && st == QLORA_OK; i++) {
        if (!fused[i]) {
            st = qlora__ll_proj_back(m, l, tg[i], dx, dy[i], x, &A->cache[tg[i]], M, err);
            continue;
        }
        qlora_lora *a = &ly->lora[tg[i]];
        st = qlora__lora_check("lora backward", a, &ly->w[tg[i]], M, err);
        if (st == QLORA_OK && (!a->dA || !a->dB))
            st = qlora__fail(err, QLORA_ERR_ARG, "lora backward: layer has no gradient buffers");
        if (st != QLORA_OK)
            return qlora__ll_wrap(err, st, "layer %d %s backward", l, qlora_target_name((qlora_target)tg[i]));
        const int64_t r = a->rank, out = a->out;
        qlora_sgemm(&m->exec, 1, 0, out, r, M, a->scale, dy[i], out, A->cache[tg[i]].xa, r, 1.0f, a->dB, r);
        qlora_sgemm(&m->exec, 0, 0, M, r, out, a->scale, dy[i], out, a->B, r, 0.0f, ts->lora_xg + off, R);
        if (dx) {
            st = qlora_nf4_linear_backward(&m->exec, dx, dy[i], &ly->w[tg[i]], M, err);   // dx += dy·W
            if (st != QLORA_OK)
                return qlora__ll_wrap(err, st, "layer %d %s backward", l, qlora_target_name((qlora_target)tg[i]));
        }
        off += r;
    }
    if (st != QLORA_OK) return st;
    // da (Σr, C) = gᵀ·x, split into the dA;  dx += g·A_s
    qlora_sgemm(&m->exec, 1, 0, R, C, M, 1.0f, ts->lora_xg, R, x, C, 0.0f, ts->lora_da, C);
    off = 0;
    for (int i = 0; i < n; i++) {
        if (!fused[i]) continue;
        qlora_lora *a = &ly->lora[tg[i]];
        const float *src = ts->lora_da + off * C;
        for (int64_t j = 0; j < a->rank * C; j++) a->dA[j] += src[j];
        off += a->rank;
    }
    if (dx) qlora_sgemm(&m->exec, 0, 0, M, C, R, 1.0f, ts->lora_xg, R, ts->lora_a, C, 1.0f, dx, C);
    return QLORA_OK;
}

// y += x elementwise.
static void qlora__ll_add(float *y, const float *x, int64_t n) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 16))
#endif
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

// One decoder layer over the train state's M rows: resid[l] → resid[l+1], caching into A.
static qlora_status qlora__ll_layer_forward(qlora_model *m, qlora_train_state *ts, int l, qlora_llama_acts *A,
                                            int training, qlora_error *err) {
    const qlora_llama_config *c = &m->cfg;
    const qlora_llama_layer *ly = &m->layers[l];
    int64_t M = ts->M, C = c->hidden_size, H = c->intermediate_size;
    const float *x = ts->resid + (int64_t)l * M * C;
    float *y = ts->resid + (int64_t)(l + 1) * M * C;
    qlora_status st = QLORA_OK;
    // 1. attention block: h = x + o_proj(attn(rope(q), rope(k), v)) on n1 = rmsnorm_in(x)
    qlora_rmsnorm_forward(A->ln1, A->rstd1, x, ly->input_norm, M, C, c->rms_norm_eps);
    const int qkv[3] = {QLORA_TARGET_Q, QLORA_TARGET_K, QLORA_TARGET_V};
    float *const qkv_out[3] = {A->q, A->k, A->v};
    st = qlora__ll_proj_group(m, ts, l, qkv, 3, qkv_out, A->ln1, A, M, training, err);
    if (st != QLORA_OK) return st;
    qlora_rope_forward(A->q, ts->pos, m->rope_cos, m->rope_sin, M, c->n_heads, c->head_dim);
    qlora_rope_forward(A->k, ts->pos, m->rope_cos, m->rope_sin, M, c->n_kv_heads, c->head_dim);
    qlora_attention_forward(A->ao, A->att, A->q, A->k, A->v, ts->key_mask, ts->B, ts->T, c->n_heads,
                            c->n_kv_heads, c->head_dim);
    st = qlora__ll_proj(m, l, QLORA_TARGET_O, A->h, A->ao, &A->cache[QLORA_TARGET_O], M, training, err);
    if (st != QLORA_OK) return st;
    qlora__ll_add(A->h, x, M * C);
    // 2. MLP block: y = h + down(silu(gate(n2)) ⊙ up(n2)) on n2 = rmsnorm_post(h)
    qlora_rmsnorm_forward(A->ln2, A->rstd2, A->h, ly->post_norm, M, C, c->rms_norm_eps);
    const int gu[2] = {QLORA_TARGET_GATE, QLORA_TARGET_UP};
    float *const gu_out[2] = {A->g, A->u};
    st = qlora__ll_proj_group(m, ts, l, gu, 2, gu_out, A->ln2, A, M, training, err);
    if (st != QLORA_OK) return st;
    qlora_swiglu_forward(A->a, A->g, A->u, M * H);
    st = qlora__ll_proj(m, l, QLORA_TARGET_DOWN, y, A->a, &A->cache[QLORA_TARGET_DOWN], M, training, err);
    if (st != QLORA_OK) return st;
    qlora__ll_add(y, A->h, M * C);
    return QLORA_OK;
}

// dW (out, in) += dyᵀ (out, M) · x (M, in): the weight gradient of dense projection t.
static void qlora__ll_proj_wgrad(qlora_model *m, int t, float *dw, const float *dy, const float *x, int64_t M) {
    int64_t out, in;
    qlora__ll_shape(&m->cfg, t, &out, &in);
    qlora_sgemm(&m->exec, 1, 0, out, in, M, 1.0f, dy, out, x, in, 1.0f, dw, in);
}

// Backward of one layer: on entry ts->dres = dL/d resid[l+1]; on exit dL/d resid[l] (for layer 0
// only with g, whose embedding takes it; without g it would only reach the frozen embedding).
// Adapter gradients accumulate; with g (dense model) every weight gradient of the layer too.
static qlora_status qlora__ll_layer_backward(qlora_model *m, qlora_train_state *ts, int l, qlora_llama_acts *A,
                                             qlora_model_grads *g, qlora_error *err) {
    const qlora_llama_config *c = &m->cfg;
    const qlora_llama_layer *ly = &m->layers[l];
    qlora_llama_layer_grads *gl = g ? &g->layers[l] : NULL;
    int64_t M = ts->M, C = c->hidden_size, H = c->intermediate_size;
    int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    const float *x = ts->resid + (int64_t)l * M * C;
    qlora_status st;
    // 4. y = h + down(a): da = dy·W_down (+ LoRA); dres passes on unchanged to h
    memset(ts->da, 0, sizeof(float) * (size_t)(M * H));
    st = qlora__ll_proj_back(m, l, QLORA_TARGET_DOWN, ts->da, ts->dres, A->a, &A->cache[QLORA_TARGET_DOWN], M,
                             err);
    if (st != QLORA_OK) return st;
    if (gl) qlora__ll_proj_wgrad(m, QLORA_TARGET_DOWN, gl->w[QLORA_TARGET_DOWN], ts->dres, A->a, M);
    // 3. a = silu(g) ⊙ u
    memset(ts->dg, 0, sizeof(float) * (size_t)(M * H));
    memset(ts->du, 0, sizeof(float) * (size_t)(M * H));
    qlora_swiglu_backward(ts->dg, ts->du, ts->da, A->g, A->u, M * H);
    // 2. g = gate(ln2), u = up(ln2), ln2 = rmsnorm_post(h): dres += ∂ln2/∂h · dln2
    memset(ts->dln, 0, sizeof(float) * (size_t)(M * C));
    const int gu[2] = {QLORA_TARGET_GATE, QLORA_TARGET_UP};
    const float *const gu_grad[2] = {ts->dg, ts->du};
    st = qlora__ll_proj_back_group(m, ts, l, gu, 2, ts->dln, gu_grad, A->ln2, A, M, err);
    if (st != QLORA_OK) return st;
    if (gl) {
        qlora__ll_proj_wgrad(m, QLORA_TARGET_GATE, gl->w[QLORA_TARGET_GATE], ts->dg, A->ln2, M);
        qlora__ll_proj_wgrad(m, QLORA_TARGET_UP, gl->w[QLORA_TARGET_UP], ts->du, A->ln2, M);
    }
    qlora_rmsnorm_backward(ts->dres, gl ? gl->post_norm : NULL, ts->dln, A->h, ly->post_norm, A->rstd2, M, C);
    // 1. h = x + o(ao), ao = attn(rope(q), rope(k), v), q|k|v = proj(ln1), ln1 = rmsnorm_in(x)
    int need_qkv =
        l > 0 || gl || ly->lora[QLORA_TARGET_Q].A || ly->lora[QLORA_TARGET_K].A || ly->lora[QLORA_TARGET_V].A;
    float *dao = need_qkv ? ts->dao : NULL;
    if (dao) memset(dao, 0, sizeof(float) * (size_t)(M * QD));
    st = qlora__ll_proj_back(m, l, QLORA_TARGET_O, dao, ts->dres, A->ao, &A->cache[QLORA_TARGET_O], M, err);
    if (st == QLORA_OK && gl) qlora__ll_proj_wgrad(m, QLORA_TARGET_O, gl->w[QLORA_TARGET_O], ts->dres, A->ao, M);
    if (st != QLORA_OK || !need_qkv) return st;
    memset(ts->dq, 0, sizeof(float) * (size_t)(M * QD));
    memset(ts->dk, 0, sizeof(float) * (size_t)(M * KD));
    memset(ts->dv, 0, sizeof(float) * (size_t)(M * KD));
    qlora_attention_backward(ts->dq, ts->dk, ts->dv, ts->dao, A->ao, A->q, A->k, A->v, A->att, ts->B, ts->T,
                             c->n_heads, c->n_kv_heads, c->head_dim);
    qlora_rope_backward(ts->dq, ts->pos, m->rope_cos, m->rope_sin, M, c->n_heads, c->head_dim);
    qlora_rope_backward(ts->dk, ts->pos, m->rope_cos, m->rope_sin, M, c->n_kv_heads, c->head_dim);
    float *dln = l > 0 || gl ? ts->dln : NULL;
    if (dln) memset(dln, 0, sizeof(float) * (size_t)(M * C));
    const int qkv[3] = {QLORA_TARGET_Q, QLORA_TARGET_K, QLORA_TARGET_V};
    const float *const qkv_grad[3] = {ts->dq, ts->dk, ts->dv};
    st = qlora__ll_proj_back_group(m, ts, l, qkv, 3, dln, qkv_grad, A->ln1, A, M, err);
    if (st != QLORA_OK) return st;
    if (gl) {
        qlora__ll_proj_wgrad(m, QLORA_TARGET_Q, gl->w[QLORA_TARGET_Q], ts->dq, A->ln1, M);
        qlora__ll_proj_wgrad(m, QLORA_TARGET_K, gl->w[QLORA_TARGET_K], ts->dk, A->ln1, M);
        qlora__ll_proj_wgrad(m, QLORA_TARGET_V, gl->w[QLORA_TARGET_V], ts->dv, A->ln1, M);
    }
    if (dln) qlora_rmsnorm_backward(ts->dres, gl ? gl->input_norm : NULL, dln, x, ly->input_norm, A->rstd1, M, C);
    return QLORA_OK;
}

static qlora_status qlora__ll_forward(qlora_model *m, qlora_train_state *ts, const int32_t *tokens,
                                      const uint8_t *key_mask, const int32_t *labels, float *loss, int training,
                                      qlora_error *err) {
    if (!m || !m->layers || !ts || !ts->arena || !tokens)
        return qlora__fail(err, QLORA_ERR_ARG, "model forward: NULL model, train state or tokens");
    const qlora_llama_config *c = &m->cfg;
    int64_t B = ts->B, T = ts->T, M = ts->M, C = c->hidden_size, V = c->vocab_size;
    ts->ready = 0;
    ts->loss = 0.0f;
    ts->loss_sum = 0.0;
    ts->n_counted = 0;
    if (loss) *loss = 0.0f;
    for (int l = 0; l < c->n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            const qlora_lora *a = &m->layers[l].lora[t];
            if (a->A && (!((ts->lora_targets >> t) & 1u) || a->rank > ts->lora_rank ||
                         (training && a->dropout > 0.0f && !ts->lora_xd)))
                return qlora__fail(err, QLORA_ERR_ARG,
                                   "model forward: the train state was sized for other adapters "
                                   "than layer %d %s has (initialize it again after changing them)",
                                   l, qlora_target_name((qlora_target)t));
        }
    for (int64_t i = 0; i < M; i++) {
        if (tokens[i] < 0 || tokens[i] >= V)
            return qlora__fail(err, QLORA_ERR_ARG,
                               "model forward: token %d at [%lld, %lld] is outside [0, %lld)", (int)tokens[i],
                               (long long)(i / T), (long long)(i % T), (long long)V);
        if (labels && labels[i] != QLORA_IGNORE_INDEX && (labels[i] < 0 || labels[i] >= V))
            return qlora__fail(err, QLORA_ERR_ARG,
                               "model forward: label %d at [%lld, %lld] is neither -100 nor in [0, %lld)",
                               (int)labels[i], (long long)(i / T), (long long)(i % T), (long long)V);
    }
    memcpy(ts->tokens, tokens, sizeof(int32_t) * (size_t)M);
    for (int64_t b = 0; b < B; b++)
        for (int64_t t = 0; t < T; t++) {
            int64_t i = b * T + t;
            ts->key_mask[i] = key_mask ? (key_mask[i] != 0) : 1;
            ts->pos[i] = (int32_t)t;
            // HF shift: logits at t are scored against labels[t+1]
            ts->targets[i] = (labels && t + 1 < T) ? labels[i + 1] : QLORA_IGNORE_INDEX;
        }
    qlora_status st = qlora_embedding_forward(ts->resid, ts->tokens, m->embed, M, C, V, err);
    if (st != QLORA_OK) return st;
    for (int l = 0; l < c->n_layers; l++) {
        for (int t = 0; t < QLORA_TARGET_COUNT; t++)
            ts->rng_saved[l * QLORA_TARGET_COUNT + t] = m->layers[l].lora[t].rng;
        st = qlora__ll_layer_forward(m, ts, l, &ts->acts[ts->checkpointing ? 0 : l], training, err);
        if (st != QLORA_OK) return st;
    }
    qlora_rmsnorm_forward(ts->lnf, ts->rstdf, ts->resid + (int64_t)c->n_layers * M * C, m->final_norm, M, C,
                          c->rms_norm_eps);
    // logits (M, V) = lnf (M, C) · lm_headᵀ
    qlora__sgemm_frozen(&m->exec, 0, 1, M, V, C, 1.0f, ts->lnf, C, m->lm_head, C, 0.0f, ts->logits, V);
    ts->training = training;
    if (!labels) return QLORA_OK;
    qlora__ce_forward(&ts->loss_sum, &ts->n_counted, NULL, ts->lse, ts->logits, ts->targets, M, V);
    ts->loss = ts->n_counted > 0 ? (float)(ts->loss_sum / (double)ts->n_counted) : 0.0f;
    if (loss) *loss = ts->loss;
    ts->ready = 1;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_model_forward_train(qlora_model *m, qlora_train_state *ts, const int32_t *tokens,
                                                const uint8_t *key_mask, const int32_t *labels, float *loss,
                                                qlora_error *err) {
    return qlora__ll_forward(m, ts, tokens, key_mask, labels, loss, 1, err);
}

QLORADEF qlora_status qlora_model_forward_eval(qlora_model *m, qlora_train_state *ts, const int32_t *tokens,
                                               const uint8_t *key_mask, const int32_t *labels, float *loss,
                                               qlora_error *err) {
    return qlora__ll_forward(m, ts, tokens, key_mask, labels, loss, 0, err);
}

// The backward of the last forward: adapter gradients, and with g (a dense model) every parameter's.
static qlora_status qlora__ll_backward(qlora_model *m, qlora_train_state *ts, float scale, qlora_model_grads *g,
                                       qlora_error *err) {
    if (!m || !m->layers || !ts || !ts->arena)
        return qlora__fail(err, QLORA_ERR_ARG, "model backward: NULL argument");
    if (!ts->ready)
        return qlora__fail(err, QLORA_ERR_ARG,
                           "model backward: needs a forward with labels first (once per forward)");
    if (!isfinite(scale))
        return qlora__fail(err, QLORA_ERR_NONFINITE, "model backward: scale %g", (double)scale);
    ts->ready = 0;   // backward consumes the adapter caches
    if (scale == 0.0f) return QLORA_OK;   // every gradient would be zero
    const qlora_llama_config *c = &m->cfg;
    int64_t M = ts->M, C = c->hidden_size, V = c->vocab_size, L = c->n_layers;
    qlora_status st = QLORA_OK;
    // 6. logits = lnf·lm_headᵀ with the loss on top: dlnf = dlogits·lm_head, a block of rows at a time
    for (int64_t r0 = 0; r0 < M; r0 += ts->logit_rows) {
        int64_t R = M - r0 < ts->logit_rows ? M - r0 : ts->logit_rows;
        float *dlnf = ts->dln + r0 * C;
        int any = 0;
        for (int64_t i = 0; i < R && !any; i++) any = ts->targets[r0 + i] != QLORA_IGNORE_INDEX;
        if (!any) {
            memset(dlnf, 0, sizeof(float) * (size_t)(R * C));
            continue;
        }
        qlora__ce_backward(ts->dlogits, ts->logits + r0 * V, ts->lse + r0, ts->targets + r0, R, V, scale, 1);
        qlora__sgemm_frozen(&m->exec, 0, 0, R, C, V, 1.0f, ts->dlogits, V, m->lm_head, C, 0.0f, dlnf, C);
        // d lm_head (V, C) += dlogitsᵀ · lnf (the embedding's gradient when tied)
        if (g)
            qlora_sgemm(&m->exec, 1, 0, V, C, R, 1.0f, ts->dlogits, V, ts->lnf + r0 * C, C, 1.0f,
                        g->lm_head ? g->lm_head : g->embed, C);
    }
    // 5. lnf = rmsnorm_final(resid[L])
    memset(ts->dres, 0, sizeof(float) * (size_t)(M * C));
    qlora_rmsnorm_backward(ts->dres, g ? g->final_norm : NULL, ts->dln, ts->resid + L * M * C, m->final_norm,
                           ts->rstdf, M, C);
    for (int l = (int)L - 1; l >= 0 && st == QLORA_OK; l--) {
        qlora_llama_acts *A = &ts->acts[ts->checkpointing ? 0 : l];
        if (ts->checkpointing && l != L - 1) {
            // recompute the layer from its saved input with the adapters' RNG rewound, so the
            // dropout keys (and so every bit) match the original forward
            qlora_rng after[QLORA_TARGET_COUNT];
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
                after[t] = m->layers[l].lora[t].rng;
                m->layers[l].lora[t].rng = ts->rng_saved[l * QLORA_TARGET_COUNT + t];
            }
            st = qlora__ll_layer_forward(m, ts, l, A, ts->training, err);
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) m->layers[l].lora[t].rng = after[t];
            if (st != QLORA_OK) break;
        }
        st = qlora__ll_layer_backward(m, ts, l, A, g, err);
    }
    // 0. x = embed[tokens]: dres now holds dL/d resid[0]
    if (st == QLORA_OK && g) qlora_embedding_backward(g->embed, ts->dres, ts->tokens, M, C);
    return st;
}

QLORADEF qlora_status qlora_model_backward_scaled(qlora_model *m, qlora_train_state *ts, float scale,
                                                  qlora_error *err) {
    return qlora__ll_backward(m, ts, scale, NULL, err);
}

QLORADEF qlora_status qlora_model_backward(qlora_model *m, qlora_train_state *ts, qlora_error *err) {
    if (!ts) return qlora__fail(err, QLORA_ERR_ARG, "model backward: NULL train state");
    float scale = ts->n_counted > 0 ? 1.0f / (float)ts->n_counted : 0.0f;
    return qlora_model_backward_scaled(m, ts, scale, err);
}

// ---------------------------------------------------------------------------------------------
// full-parameter training of dense models

// Fills n values with N(0, std²) draws, Box-Muller on two counter-based uniforms per value, so the
// values are a pure function of (key, index) and do not depend on the thread count.
static void qlora__ll_fill_normal(float *x, int64_t n, float std, uint64_t key) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 15))
#endif
    for (int64_t i = 0; i < n; i++) {
        float u1 = 1.0f - qlora_hash_uniform(key, 2 * (uint64_t)i);   // (0, 1]
        float u2 = qlora_hash_uniform(key, 2 * (uint64_t)i + 1);
        x[i] = std * sqrtf(-2.0f * logf(u1)) * cosf(6.28318531f * u2);
    }
}

QLORADEF qlora_status qlora_model_init_random_dense(qlora_model *m, const qlora_llama_config *cfg,
                                                    const qlora_model_options *opt, uint64_t seed,
                                                    qlora_error *err) {
    if (!m || !cfg) return qlora__fail(err, QLORA_ERR_ARG, "model init random dense: NULL model or config");
    memset(m, 0, sizeof *m);
    qlora_status st = qlora_llama_config_validate(cfg, err);
    if (st != QLORA_OK) return st;
    qlora_model_options o = qlora__ll_opts(opt);
    o.dense = 1;
    m->cfg = *cfg;
    st = qlora__ll_model_alloc(m, &o, err);
    if (st != QLORA_OK) {
        qlora_model_free(m);
        return st;
    }
    const int64_t V = cfg->vocab_size, C = cfg->hidden_size;
    const uint64_t gold = 0x9E3779B97F4A7C15ull;
    const float std = 0.02f, std_out = 0.02f / sqrtf(2.0f * (float)cfg->n_layers);
    qlora__ll_fill_normal(m->embed, V * C, std, seed + gold);
    if (!cfg->tie_word_embeddings) qlora__ll_fill_normal(m->lm_head, V * C, std, seed + 2 * gold);
    for (int64_t i = 0; i < C; i++) m->final_norm[i] = 1.0f;
    for (int l = 0; l < cfg->n_layers; l++) {
        for (int64_t i = 0; i < C; i++) m->layers[l].input_norm[i] = m->layers[l].post_norm[i] = 1.0f;
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            int64_t out, in;
            qlora__ll_shape(cfg, t, &out, &in);
            qlora__ll_fill_normal(m->layers[l].dense[t], out * in,
                                  t == QLORA_TARGET_O || t == QLORA_TARGET_DOWN ? std_out : std,
                                  seed + gold * (uint64_t)(3 + l * QLORA_TARGET_COUNT + t));
        }
    }
    return QLORA_OK;
}

// The gradient views of a dense model, one arena; with base == NULL only the size. Returns bytes or -1.
static int64_t qlora__ll_grads_layout(qlora_model_grads *g, const qlora_model *m, char *base) {
    const qlora_llama_config *c = &m->cfg;
    int64_t V = c->vocab_size, C = c->hidden_size;
    qlora__ll_carver cv;
    cv.base = base;
    cv.off = 0;
    cv.ok = 1;
    float *embed = (float *)qlora__ll_carve(&cv, V, C, 4);
    float *fn = (float *)qlora__ll_carve(&cv, 1, C, 4);
    float *head = c->tie_word_embeddings ? NULL : (float *)qlora__ll_carve(&cv, V, C, 4);
    for (int l = 0; l < c->n_layers; l++) {
        qlora_llama_layer_grads lg;
        memset(&lg, 0, sizeof lg);
        lg.input_norm = (float *)qlora__ll_carve(&cv, 1, C, 4);
        lg.post_norm = (float *)qlora__ll_carve(&cv, 1, C, 4);
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            int64_t out, in;
            qlora__ll_shape(c, t, &out, &in);
            lg.w[t] = (float *)qlora__ll_carve(&cv, out, in, 4);
        }
        if (base) g->layers[l] = lg;
    }
    if (base) {
        g->embed = embed;
        g->final_norm = fn;
        g->lm_head = head;
    }
    return cv.ok ? cv.off + 64 : -1;
}

// Appends (name, parameter, gradient, n) to g->params; no_decay for norm weights.
static void qlora__ll_grads_param(qlora_model_grads *g, float *w, float *grad, int64_t n, const char *name,
                                  int no_decay) {
    qlora_param *p = &g->params[g->n_params];
    char *s = g->names + g->n_params * 96;
    snprintf(s, 96, "%s", name);
    p->name = s;
    p->w = w;
    p->g = grad;
    p->n = n;
    p->no_decay = no_decay;
    g->n_params++;
    g->n_floats += n;
}

QLORADEF qlora_status qlora_model_grads_init(qlora_model_grads *g, qlora_model *m, qlora_error *err) {
    if (!g) return qlora__fail(err, QLORA_ERR_ARG, "model grads: NULL gradients");
    memset(g, 0, sizeof *g);
    if (!m || !m->layers) return qlora__fail(err, QLORA_ERR_ARG, "model grads: NULL or empty model");
    if (!m->dense)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED,
                           "model grads: the model's projections are NF4 (full-parameter training needs a "
                           "dense model: options.dense = 1 or qlora_model_init_random_dense)");
    const qlora_llama_config *c = &m->cfg;
    int64_t L = c->n_layers, V = c->vocab_size, C = c->hidden_size;
    int64_t cap = 3 + 9 * L, bytes = qlora__ll_grads_layout(g, m, NULL);
    if (bytes < 0) return qlora__fail(err, QLORA_ERR_SHAPE, "model grads: sizes overflow");
    g->layers = (qlora_llama_layer_grads *)qlora__calloc(L * (int64_t)sizeof(qlora_llama_layer_grads));
    g->params = (qlora_param *)qlora__calloc(cap * (int64_t)sizeof(qlora_param));
    g->names = (char *)qlora__calloc(cap * 96);
    g->arena = qlora__calloc(bytes);
    if (!g->layers || !g->params || !g->names || !g->arena) {
        qlora_model_grads_free(g);
        return qlora__fail(err, QLORA_ERR_NOMEM, "model grads: %lld bytes", (long long)bytes);
    }
    qlora__ll_grads_layout(g, m, qlora__ll_align(g->arena));
    g->model = m;
    g->cfg = *c;
    char name[96];
    qlora__ll_grads_param(g, m->embed, g->embed, V * C, "model.embed_tokens.weight", 0);
    for (int l = 0; l < c->n_layers; l++) {
        qlora_llama_layer *ly = &m->layers[l];
        qlora_llama_layer_grads *lg = &g->layers[l];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        qlora__ll_grads_param(g, ly->input_norm, lg->input_norm, C, name, 1);
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            int64_t out, in;
            qlora__ll_shape(c, t, &out, &in);
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, qlora_target_path((qlora_target)t));
            qlora__ll_grads_param(g, ly->dense[t], lg->w[t], out * in, name, 0);
            if (t == QLORA_TARGET_O) {
                snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
                qlora__ll_grads_param(g, ly->post_norm, lg->post_norm, C, name, 1);
            }
        }
    }
    qlora__ll_grads_param(g, m->final_norm, g->final_norm, C, "model.norm.weight", 1);
    if (g->lm_head) qlora__ll_grads_param(g, m->lm_head, g->lm_head, V * C, "lm_head.weight", 0);
    return QLORA_OK;
}

QLORADEF void qlora_model_grads_zero(qlora_model_grads *g) {
    if (!g || !g->params) return;
    for (int64_t i = 0; i < g->n_params; i++) memset(g->params[i].g, 0, sizeof(float) * (size_t)g->params[i].n);
}

QLORADEF void qlora_model_grads_free(qlora_model_grads *g) {
    if (!g) return;
    QLORA_FREE(g->layers);
    QLORA_FREE(g->params);
    QLORA_FREE(g->names);
    QLORA_FREE(g->arena);
    memset(g, 0, sizeof *g);
}

QLORADEF qlora_status qlora_model_backward_full(qlora_model *m, qlora_train_state *ts, qlora_model_grads *g,
                                                float scale, qlora_error *err) {
    if (!m || !m->layers || !ts || !ts->arena || !g)
        return qlora__fail(err, QLORA_ERR_ARG, "backward full: NULL model, train state or gradients");
    if (!m->dense)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED,
                           "backward full: the model's projections are NF4 (use qlora_model_backward for "
                           "LoRA, or a dense model)");
    const qlora_llama_config *a = &m->cfg, *b = &g->cfg;
    if (g->model != m || !g->arena || a->vocab_size != b->vocab_size || a->hidden_size != b->hidden_size ||
        a->intermediate_size != b->intermediate_size || a->n_layers != b->n_layers || a->n_heads != b->n_heads ||
        a->n_kv_heads != b->n_kv_heads || a->head_dim != b->head_dim ||
        a->tie_word_embeddings != b->tie_word_embeddings)
        return qlora__fail(err, QLORA_ERR_ARG, "backward full: the gradients were made for another model");
    return qlora__ll_backward(m, ts, scale, g, err);
}


// ---------------------------------------------------------------------------------------------
// inference

static int64_t qlora__ll_kv_layout(qlora_kv_cache *kv, const qlora_model *m, int64_t max_ctx, int64_t chunk,
                                   char *base) {
    const qlora_llama_config *c = &m->cfg;
    int64_t C = c->hidden_size, H = c->intermediate_size, V = c->vocab_size, L = c->n_layers;
    int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t R = m->lora_cfg.rank > 0 ? m->lora_cfg.rank : 1;
    qlora__ll_carver cv;
    cv.base = base;
    cv.off = 0;
    cv.ok = 1;
    qlora_kv_cache s;
    memset(&s, 0, sizeof s);
    s.k = (float *)qlora__ll_carve(&cv, L * max_ctx, KD, 4);
    s.v = (float *)qlora__ll_carve(&cv, L * max_ctx, KD, 4);
    s.x = (float *)qlora__ll_carve(&cv, chunk, C, 4);
    s.ln = (float *)qlora__ll_carve(&cv, chunk, C, 4);
    s.tmp = (float *)qlora__ll_carve(&cv, chunk, C, 4);
    s.q = (float *)qlora__ll_carve(&cv, chunk, QD, 4);
    s.ao = (float *)qlora__ll_carve(&cv, chunk, QD, 4);
    s.g = (float *)qlora__ll_carve(&cv, chunk, H, 4);
    s.u = (float *)qlora__ll_carve(&cv, chunk, H, 4);
    s.a = (float *)qlora__ll_carve(&cv, chunk, H, 4);
    s.xa = (float *)qlora__ll_carve(&cv, chunk, R, 4);
    s.logits = (float *)qlora__ll_carve(&cv, chunk, V, 4);
    s.scores = (float *)qlora__ll_carve(&cv, c->n_heads, max_ctx, 4);
    s.rstd = (float *)qlora__ll_carve(&cv, chunk, 1, 4);
    s.pos = (int32_t *)qlora__ll_carve(&cv, chunk, 1, 4);
    s.probs = (float *)qlora__ll_carve(&cv, V, 1, 4);
    s.idx = (int32_t *)qlora__ll_carve(&cv, V, 1, 4);
    s.pool = (double *)qlora__ll_carve(&cv, C, 1, 8);
    if (!cv.ok) return -1;
    if (base) {
        s.max_ctx = max_ctx;
        s.chunk = chunk;
        s.lora_rank = (int32_t)R;
        s.arena = kv->arena;
        *kv = s;
    }
    return cv.off + 64;
}

QLORADEF qlora_status qlora_kv_cache_init(qlora_kv_cache *kv, const qlora_model *m, int64_t max_ctx,
                                          int64_t chunk, qlora_error *err) {
    if (!kv) return qlora__fail(err, QLORA_ERR_ARG, "kv cache init: NULL cache");
    memset(kv, 0, sizeof *kv);
    if (!m || !m->layers) return qlora__fail(err, QLORA_ERR_ARG, "kv cache init: NULL or empty model");
    if (chunk == 0) chunk = 64;
    if (max_ctx <= 0 || max_ctx > m->cfg.max_position_embeddings || chunk < 0 || chunk > INT32_MAX)
        return qlora__fail(err, QLORA_ERR_ARG,
                           "kv cache init: max_ctx %lld not in [1, max_position_embeddings %d] "
                           "or chunk %lld negative",
                           (long long)max_ctx, (int)m->cfg.max_position_embeddings, (long long)chunk);
    int64_t bytes = qlora__ll_kv_layout(kv, m, max_ctx, chunk, NULL);
    if (bytes < 0)
        return qlora__fail(err, QLORA_ERR_SHAPE, "kv cache: size overflows for max_ctx %lld",
                           (long long)max_ctx);
    kv->arena = qlora__alloc(bytes);
    if (!kv->arena) return qlora__fail(err, QLORA_ERR_NOMEM, "kv cache: %lld bytes", (long long)bytes);
    qlora__ll_kv_layout(kv, m, max_ctx, chunk, qlora__ll_align(kv->arena));
    return QLORA_OK;
}

QLORADEF void qlora_kv_cache_free(qlora_kv_cache *kv) {
    if (!kv) return;
    QLORA_FREE(kv->arena);
    memset(kv, 0, sizeof *kv);
}

// A token tree run through the cache (qlora_model_score_tree): row i of a step is node rows[i], kept in cache
// slot n_prompt + slot[node], at position n_prompt + depth(node), attending to the prompt and its ancestors.
typedef struct qlora__ll_tree {
    const int32_t *parent;    // (nodes) parent node, -1 = child of the prompt; parents precede children
    const int32_t *slot;      // (nodes) cache slot (after the prompt) of each node that is run
    const int32_t *rows;      // (step rows) node of each row
    int64_t        n_prompt;  // prompt positions 0 .. n_prompt-1 in the cache
    uint8_t       *mask;      // (max_ctx) scratch: keys a row may attend to
} qlora__ll_tree;

static qlora_status qlora__ll_infer_ex(qlora_model *m, qlora_kv_cache *kv, const int32_t *tokens, int64_t n,
                                       int want, double *pool, const qlora__ll_tree *tree, qlora_error *err);

// Forward of n ≤ chunk tokens at positions kv->n.. (appended to the cache). want: 0 no logits,
// 1 logits of the last row into kv->logits[0], 2 logits of every row. pool: adds the final
// hidden rows when not NULL. Token ids must have been checked.
static qlora_status qlora__ll_infer(qlora_model *m, qlora_kv_cache *kv, const int32_t *tokens, int64_t n,
                                    int want, double *pool, qlora_error *err) {
    return qlora__ll_infer_ex(m, kv, tokens, n, want, pool, NULL, err);
}

// Depth of a tree node: 0 for a child of the prompt.
static int64_t qlora__ll_tree_depth(const int32_t *parent, int64_t node) {
    int64_t d = 0;
    for (int64_t a = parent[node]; a >= 0; a = parent[a]) d++;
    return d;
}

// The same with tree == NULL; with a tree, rows get tree positions and tree-masked attention.
static qlora_status qlora__ll_infer_ex(qlora_model *m, qlora_kv_cache *kv, const int32_t *tokens, int64_t n,
                                       int want, double *pool, const qlora__ll_tree *tree, qlora_error *err) {
    const qlora_llama_config *c = &m->cfg;
    int64_t C = c->hidden_size, H = c->intermediate_size, V = c->vocab_size, p0 = kv->n;
    int64_t QD = (int64_t)c->n_heads * c->head_dim, KD = (int64_t)c->n_kv_heads * c->head_dim;
    float eps = c->rms_norm_eps;
    qlora_lora_cache cache;
    memset(&cache, 0, sizeof cache);
    cache.xa = kv->xa;
    for (int64_t i = 0; i < n; i++)
        kv->pos[i] = (int32_t)(tree ? tree->n_prompt + qlora__ll_tree_depth(tree->parent, tree->rows[i]) : p0 + i);
    qlora_status st = qlora_embedding_forward(kv->x, tokens, m->embed, n, C, V, err);
    for (int l = 0; l < c->n_layers && st == QLORA_OK; l++) {
        const qlora_llama_layer *ly = &m->layers[l];
        float *kl = kv->k + ((int64_t)l * kv->max_ctx) * KD, *vl = kv->v + ((int64_t)l * kv->max_ctx) * KD;
        qlora_rmsnorm_forward(kv->ln, kv->rstd, kv->x, ly->input_norm, n, C, eps);
        st = qlora__ll_proj(m, l, QLORA_TARGET_Q, kv->q, kv->ln, &cache, n, 0, err);
        if (st == QLORA_OK) st = qlora__ll_proj(m, l, QLORA_TARGET_K, kl + p0 * KD, kv->ln, &cache, n, 0, err);
        if (st == QLORA_OK) st = qlora__ll_proj(m, l, QLORA_TARGET_V, vl + p0 * KD, kv->ln, &cache, n, 0, err);
        if (st != QLORA_OK) break;
        qlora_rope_forward(kv->q, kv->pos, m->rope_cos, m->rope_sin, n, c->n_heads, c->head_dim);
        qlora_rope_forward(kl + p0 * KD, kv->pos, m->rope_cos, m->rope_sin, n, c->n_kv_heads, c->head_dim);
        for (int64_t i = 0; i < n && !tree; i++)   // row i sees positions 0 .. p0+i
            qlora_attention_decode(kv->ao + i * QD, kv->scores, kv->q + i * QD, kl, vl, p0 + i + 1, c->n_heads,
                                   c->n_kv_heads, c->head_dim);
        for (int64_t i = 0; i < n && tree; i++) {   // node sees the prompt, its ancestors and itself
            int64_t node = tree->rows[i], np = tree->n_prompt, G = c->n_heads / c->n_kv_heads;
            int64_t nk = np + tree->slot[node] + 1;   // ancestors sit in earlier slots
            memset(tree->mask, 1, (size_t)np);
            memset(tree->mask + np, 0, (size_t)(nk - np));
            for (int64_t a = node; a >= 0; a = tree->parent[a]) tree->mask[np + tree->slot[a]] = 1;
            float scale = (float)(1.0 / sqrt((double)c->head_dim));
            for (int64_t h = 0; h < c->n_heads; h++)
                qlora__att_row(kv->ao + i * QD + h * c->head_dim, kv->scores + h * kv->max_ctx,
                               kv->q + i * QD + h * c->head_dim, kl + (h / G) * c->head_dim,
                               vl + (h / G) * c->head_dim, KD, tree->mask, nk, c->head_dim, scale);
        }
        st = qlora__ll_proj(m, l, QLORA_TARGET_O, kv->tmp, kv->ao, &cache, n, 0, err);
        if (st != QLORA_OK) break;
        qlora__ll_add(kv->x, kv->tmp, n * C);
        qlora_rmsnorm_forward(kv->ln, kv->rstd, kv->x, ly->post_norm, n, C, eps);
        st = qlora__ll_proj(m, l, QLORA_TARGET_GATE, kv->g, kv->ln, &cache, n, 0, err);
        if (st == QLORA_OK) st = qlora__ll_proj(m, l, QLORA_TARGET_UP, kv->u, kv->ln, &cache, n, 0, err);
        if (st != QLORA_OK) break;
        qlora_swiglu_forward(kv->a, kv->g, kv->u, n * H);
        st = qlora__ll_proj(m, l, QLORA_TARGET_DOWN, kv->tmp, kv->a, &cache, n, 0, err);
        if (st == QLORA_OK) qlora__ll_add(kv->x, kv->tmp, n * C);
    }
    if (st != QLORA_OK) return st;
    qlora_rmsnorm_forward(kv->ln, kv->rstd, kv->x, m->final_norm, n, C, eps);
    if (pool)
        for (int64_t i = 0; i < n; i++)
            for (int64_t j = 0; j < C; j++) pool[j] += kv->ln[i * C + j];
    if (want == 1)
        qlora_sgemm(&m->exec, 0, 1, 1, V, C, 1.0f, kv->ln + (n - 1) * C, C, m->lm_head, C, 0.0f, kv->logits, V);
    if (want == 2) qlora_sgemm(&m->exec, 0, 1, n, V, C, 1.0f, kv->ln, C, m->lm_head, C, 0.0f, kv->logits, V);
    kv->n = p0 + n;
    return QLORA_OK;
}

static qlora_status qlora__ll_infer_check(const qlora_model *m, const qlora_kv_cache *kv, const int32_t *tokens,
                                          int64_t n, const char *fn, qlora_error *err) {
    if (!m || !m->layers || !kv || !kv->arena || (n > 0 && !tokens))
        return qlora__fail(err, QLORA_ERR_ARG, "%s: NULL model, cache or tokens", fn);
    if (m->lora_cfg.rank > kv->lora_rank)
        return qlora__fail(err, QLORA_ERR_ARG,
                           "%s: the cache was sized for LoRA rank %d, the model has %d "
                           "(initialize it again after changing adapters)",
                           fn, (int)kv->lora_rank, (int)m->lora_cfg.rank);
    if (n < 0 || n > kv->max_ctx - kv->n)
        return qlora__fail(err, QLORA_ERR_ARG,
                           "%s: %lld tokens at position %lld exceed the cache's %lld positions", fn,
                           (long long)n, (long long)kv->n, (long long)kv->max_ctx);
    for (int64_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= m->cfg.vocab_size)
            return qlora__fail(err, QLORA_ERR_ARG, "%s: token %d at %lld is outside [0, %d)", fn,
                               (int)tokens[i], (long long)i, (int)m->cfg.vocab_size);
    return QLORA_OK;
}

QLORADEF qlora_status qlora_model_prefill(qlora_model *m, qlora_kv_cache *kv, const int32_t *tokens, int64_t n,
                                          float *logits_last, qlora_error *err) {
    qlora_status st = qlora__ll_infer_check(m, kv, tokens, n, "model prefill", err);
    if (st != QLORA_OK) return st;
    if (n == 0 && logits_last)
        return qlora__fail(err, QLORA_ERR_ARG, "model prefill: no tokens to take logits from");
    for (int64_t i = 0; i < n && st == QLORA_OK; i += kv->chunk) {
        int64_t k = n - i < kv->chunk ? n - i : kv->chunk;
        st = qlora__ll_infer(m, kv, tokens + i, k, (i + k == n && logits_last) ? 1 : 0, NULL, err);
    }
    if (st == QLORA_OK && logits_last)
        memcpy(logits_last, kv->logits, sizeof(float) * (size_t)m->cfg.vocab_size);
    return st;
}

QLORADEF qlora_status qlora_model_forward_decode(qlora_model *m, qlora_kv_cache *kv, int32_t token, int64_t pos,
                                                 float *logits, qlora_error *err) {
    if (!kv || pos < 0 || pos > kv->n)
        return qlora__fail(err, QLORA_ERR_ARG, "model decode: position %lld outside [0, %lld]", (long long)pos,
                           kv ? (long long)kv->n : 0LL);
    int64_t saved = kv->n;
    kv->n = pos;   // rollback: positions ≥ pos are overwritten
    qlora_status st = qlora__ll_infer_check(m, kv, &token, 1, "model decode", err);
    if (st == QLORA_OK) st = qlora__ll_infer(m, kv, &token, 1, logits ? 1 : 0, NULL, err);
    if (st != QLORA_OK) {
        kv->n = saved < pos ? saved : pos;
        return st;
    }
    if (logits) memcpy(logits, kv->logits, sizeof(float) * (size_t)m->cfg.vocab_size);
    return QLORA_OK;
}

// Sorts idx[0..n) by descending probs[idx] (ties: lower id first). Heap sort: no allocation, O(n log n).
static int qlora__ll_before(const float *p, int32_t a, int32_t b) {
    return p[a] > p[b] || (p[a] == p[b] && a < b);
}
static void qlora__ll_sift(int32_t *idx, const float *p, int64_t i, int64_t n) {
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= n) return;
        // max-heap on "comes later" so the first element ends up first after sorting
        if (c + 1 < n && qlora__ll_before(p, idx[c], idx[c + 1])) c++;
        if (!qlora__ll_before(p, idx[i], idx[c])) return;
        int32_t t = idx[i];
        idx[i] = idx[c];
        idx[c] = t;
        i = c;
    }
}
static void qlora__ll_sort_desc(int32_t *idx, const float *p, int64_t n) {
    for (int64_t i = n / 2 - 1; i >= 0; i--) qlora__ll_sift(idx, p, i, n);
    for (int64_t e = n - 1; e > 0; e--) {
        int32_t t = idx[0];
        idx[0] = idx[e];
        idx[e] = t;
        qlora__ll_sift(idx, p, 0, e);
    }
}

QLORADEF int32_t qlora_sample_token(qlora_kv_cache *kv, const float *logits, int64_t V, float temperature,
                                    float top_p, qlora_rng *rng) {
    int64_t best = 0;
    for (int64_t i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (!(temperature > 0.0f) || !kv || !kv->probs || !rng) return (int32_t)best;
    // p_i ∝ exp((l_i - max) / temperature)
    float *p = kv->probs;
    double sum = 0.0;
    for (int64_t i = 0; i < V; i++) {
        p[i] = expf((logits[i] - logits[best]) / temperature);
        sum += p[i];
    }
    int64_t n = V;
    int32_t *idx = kv->idx;
    for (int64_t i = 0; i < V; i++) idx[i] = (int32_t)i;
    if (top_p > 0.0f && top_p < 1.0f) {
        // keep the most likely tokens while the mass before them is below top_p (at least one)
        qlora__ll_sort_desc(idx, p, V);
        double cum = 0.0;
        for (n = 0; n < V; n++) {
            if (n > 0 && cum >= (double)top_p * sum) break;
            cum += p[idx[n]];
        }
        sum = cum;   // renormalize over the kept set
    }
    double u = (double)qlora_rng_uniform(rng) * sum, acc = 0.0;
    for (int64_t j = 0; j < n; j++) {
        acc += p[idx[j]];
        if (u < acc) return idx[j];
    }
    return idx[n - 1];
}

QLORADEF qlora_status qlora_model_generate(qlora_model *m, qlora_kv_cache *kv, const int32_t *prompt,
                                           int64_t n_prompt, int64_t max_new, const qlora_generate_options *opt,
                                           int32_t *out, int64_t *n_out, qlora_error *err) {
    qlora_generate_options o;
    memset(&o, 0, sizeof o);
    if (opt) o = *opt;
    if (n_out) *n_out = 0;
    if (!kv || n_prompt < 1 || max_new < 0 || (max_new > 0 && !out))
        return qlora__fail(err, QLORA_ERR_ARG,
                           "model generate: needs a cache, n_prompt ≥ 1 and an output for %lld tokens",
                           (long long)max_new);
    kv->n = 0;
    qlora_status st = qlora__ll_infer_check(m, kv, prompt, n_prompt, "model generate", err);
    // all but the last prompt token without logits, then the last one with its logits in kv->logits
    if (st == QLORA_OK) st = qlora_model_prefill(m, kv, prompt, n_prompt - 1, NULL, err);
    if (st == QLORA_OK) st = qlora__ll_infer(m, kv, prompt + n_prompt - 1, 1, 1, NULL, err);
    qlora_rng rng;
    qlora_rng_seed(&rng, o.seed);
    int64_t k = 0, V = m->cfg.vocab_size;
    while (st == QLORA_OK && k < max_new) {
        int32_t tok = qlora_sample_token(kv, kv->logits, V, o.temperature, o.top_p, &rng);
        out[k++] = tok;
        if (n_out) *n_out = k;
        if (o.on_token && o.on_token(o.user, tok)) break;
        if (!o.no_stop_at_eos && tok == m->cfg.eos_token_id) break;
        if (k == max_new || kv->n >= kv->max_ctx) break;   // done, or the context is full
        st = qlora__ll_infer(m, kv, &tok, 1, 1, NULL, err);
    }
    return st;
}

QLORADEF qlora_status qlora_model_score(qlora_model *m, qlora_kv_cache *kv, const int32_t *prompt,
                                        int64_t n_prompt, const int32_t *const *conts, const int64_t *cont_lens,
                                        int64_t n_conts, double *out, qlora_error *err) {
    if (!kv || n_prompt < 1 || n_conts < 0 || (n_conts > 0 && (!conts || !cont_lens || !out)))
        return qlora__fail(err, QLORA_ERR_ARG,
                           "model score: needs a cache, n_prompt ≥ 1 and continuation arrays");
    kv->n = 0;
    qlora_status st = qlora__ll_infer_check(m, kv, prompt, n_prompt, "model score", err);
    for (int64_t c = 0; c < n_conts && st == QLORA_OK; c++) {
        if (cont_lens[c] < 0 || (cont_lens[c] > 0 && !conts[c]))
            return qlora__fail(err, QLORA_ERR_ARG, "model score: continuation %lld has no tokens array",
                               (long long)c);
        kv->n = n_prompt;
        st = qlora__ll_infer_check(m, kv, conts[c], cont_lens[c], "model score", err);
        if (st != QLORA_OK) return qlora__ll_wrap(err, st, "continuation %lld", (long long)c);
    }
    if (st != QLORA_OK) return st;
    kv->n = 0;
    int64_t V = m->cfg.vocab_size;
    st = qlora_model_prefill(m, kv, prompt, n_prompt, kv->probs, err);
    if (st != QLORA_OK) return st;
    qlora_log_softmax(kv->probs, kv->probs, V);   // log p(· | prompt)
    for (int64_t c = 0; c < n_conts && st == QLORA_OK; c++) {
        const int32_t *x = conts[c];
        int64_t len = cont_lens[c];
        double sum = len > 0 ? (double)kv->probs[x[0]] : 0.0;
        kv->n = n_prompt;   // rollback to the end of the prompt
        // rows for x[0 .. len-2] predict x[1 .. len-1]
        for (int64_t i = 0; i + 1 < len && st == QLORA_OK; i += kv->chunk) {
            int64_t k = len - 1 - i < kv->chunk ? len - 1 - i : kv->chunk;
            st = qlora__ll_infer(m, kv, x + i, k, 2, NULL, err);
            for (int64_t j = 0; j < k && st == QLORA_OK; j++) {
                float *row = kv->logits + j * V;
                qlora_log_softmax(row, row, V);
                sum += row[x[i + j + 1]];
            }
        }
        out[c] = sum;
    }
    return st;
}

QLORADEF qlora_status qlora_model_score_tree(qlora_model *m, qlora_kv_cache *kv, const int32_t *prompt,
                                             int64_t n_prompt, const int32_t *node_token,
                                             const int32_t *node_parent, int64_t n, double *logp,
                                             qlora_error *err) {
    if (!kv || n_prompt < 1 || n < 0 || (n > 0 && (!node_token || !node_parent || !logp)))
        return qlora__fail(err, QLORA_ERR_ARG,
                           "model score tree: needs a cache, n_prompt ≥ 1, n ≥ 0 and node arrays");
    kv->n = 0;
    qlora_status st = qlora__ll_infer_check(m, kv, prompt, n_prompt, "model score tree", err);
    if (st != QLORA_OK) return st;
    for (int64_t i = 0; i < n; i++) {
        if (node_parent[i] < -1 || node_parent[i] >= i)
            return qlora__fail(err, QLORA_ERR_ARG, "model score tree: node %lld has parent %d (must be -1 or < %lld)",
                               (long long)i, (int)node_parent[i], (long long)i);
        if (node_token[i] < 0 || node_token[i] >= m->cfg.vocab_size)
            return qlora__fail(err, QLORA_ERR_ARG, "model score tree: node %lld has token %d outside [0, %d)",
                               (long long)i, (int)node_token[i], (int)m->cfg.vocab_size);
    }
    int64_t V = m->cfg.vocab_size, chunk = kv->chunk;
    // Only nodes with children run through the model: a leaf's probability comes from its parent's logits, and
    // no node attends to it. Scratch: the mask (max_ctx), slot (n), rows + tokens of a step (chunk each).
    int64_t mask_bytes = ((kv->max_ctx + 63) / 64) * 64;
    uint8_t *buf = (uint8_t *)qlora__alloc(mask_bytes + (int64_t)sizeof(int32_t) * (n + 2 * chunk) + 64);
    if (!buf) return qlora__fail(err, QLORA_ERR_NOMEM, "model score tree: scratch for %lld nodes", (long long)n);
    int32_t *slot = (int32_t *)(void *)(buf + mask_bytes);   // (n): slot of a node that runs, -1 for leaves
    int32_t *rows = slot + n, *toks = rows + chunk;         // (chunk) each
    int64_t n_run = 0;
    for (int64_t i = 0; i < n; i++) slot[i] = -1;
    for (int64_t i = 0; i < n; i++)
        if (node_parent[i] >= 0) slot[node_parent[i]] = 0;   // has a child
    for (int64_t i = 0; i < n; i++)
        if (slot[i] == 0) slot[i] = (int32_t)n_run++;   // in node order, so parents get earlier slots
    if (n_run > kv->max_ctx - n_prompt) {
        QLORA_FREE(buf);
        return qlora__fail(err, QLORA_ERR_ARG,
                           "model score tree: %lld prompt tokens + %lld inner nodes exceed the cache's %lld slots",
                           (long long)n_prompt, (long long)n_run, (long long)kv->max_ctx);
    }
    qlora__ll_tree tree;
    tree.parent = node_parent;
    tree.slot = slot;
    tree.rows = rows;
    tree.n_prompt = n_prompt;
    tree.mask = buf;
    st = qlora_model_prefill(m, kv, prompt, n_prompt, kv->probs, err);
    if (st == QLORA_OK) {
        qlora_log_softmax(kv->probs, kv->probs, V);   // log p(· | prompt)
        for (int64_t i = 0; i < n; i++)
            if (node_parent[i] < 0) logp[i] = (double)kv->probs[node_token[i]];
    }
    int64_t next = 0;   // next node to consider for a step
    for (int64_t s0 = 0; s0 < n_run && st == QLORA_OK; s0 += chunk) {
        int64_t k = 0;
        for (; next < n && k < chunk; next++)
            if (slot[next] >= 0) {
                rows[k] = (int32_t)next;
                toks[k++] = node_token[next];
            }
        kv->n = n_prompt + s0;   // these rows fill slots s0 .. s0+k-1
        st = qlora__ll_infer_ex(m, kv, toks, k, 2, NULL, &tree, err);
        if (st != QLORA_OK) break;
        for (int64_t r = 0; r < k; r++) qlora_log_softmax(kv->logits + r * V, kv->logits + r * V, V);
        for (int64_t c = rows[0] + 1; c < n; c++) {
            int32_t p = node_parent[c];
            if (p >= 0 && slot[p] >= s0 && slot[p] < s0 + k)
                logp[c] = (double)kv->logits[(int64_t)(slot[p] - s0) * V + node_token[c]];
        }
    }
    QLORA_FREE(buf);
    kv->n = 0;
    return st;
}

QLORADEF qlora_status qlora_model_embed(qlora_model *m, qlora_kv_cache *kv, const int32_t *tokens, int64_t n,
                                        float *out, qlora_error *err) {
    if (!kv || !out || n < 1)
        return qlora__fail(err, QLORA_ERR_ARG, "model embed: needs a cache, an output and n ≥ 1");
    kv->n = 0;
    qlora_status st = qlora__ll_infer_check(m, kv, tokens, n, "model embed", err);
    if (st != QLORA_OK) return st;
    int64_t C = m->cfg.hidden_size;
    for (int64_t j = 0; j < C; j++) kv->pool[j] = 0.0;
    for (int64_t i = 0; i < n && st == QLORA_OK; i += kv->chunk) {
        int64_t k = n - i < kv->chunk ? n - i : kv->chunk;
        st = qlora__ll_infer(m, kv, tokens + i, k, 0, kv->pool, err);
    }
    if (st == QLORA_OK)
        for (int64_t j = 0; j < C; j++) out[j] = (float)(kv->pool[j] / (double)n);
    return st;
}


// ---------------------------------------------------------------------------------------------
// bitsandbytes 4-bit checkpoint writer and PEFT adapter reader

// config.json of the model with a bitsandbytes quantization_config (dq 0 or 1: its double-quant flag)
// or none (dq < 0); keys sorted as transformers writes.
static qlora_status qlora__ll_bnb_config(const qlora_model *m, int dq, const char *torch_dtype, qlora_json_writer *w,
                                         qlora_error *err) {
    const qlora_llama_config *c = &m->cfg;
    qlora_jw_init(w, 2, 1);
    qlora_jw_object_begin(w);
    qlora_jw_key(w, "architectures");
    qlora_jw_array_begin(w);
    qlora_jw_string(w, "LlamaForCausalLM");
    qlora_jw_array_end(w);
    qlora_jw_key(w, "attention_bias");
    qlora_jw_bool(w, 0);
    qlora_jw_key(w, "bos_token_id");
    if (c->bos_token_id >= 0) qlora_jw_int(w, c->bos_token_id); else qlora_jw_null(w);
    qlora_jw_key(w, "eos_token_id");
    if (c->eos_token_id >= 0) qlora_jw_int(w, c->eos_token_id); else qlora_jw_null(w);
    qlora_jw_key(w, "head_dim");
    qlora_jw_int(w, c->head_dim);
    qlora_jw_key(w, "hidden_act");
    qlora_jw_string(w, "silu");
    qlora_jw_key(w, "hidden_size");
    qlora_jw_int(w, c->hidden_size);
    qlora_jw_key(w, "intermediate_size");
    qlora_jw_int(w, c->intermediate_size);
    qlora_jw_key(w, "max_position_embeddings");
    qlora_jw_int(w, c->max_position_embeddings);
    qlora_jw_key(w, "mlp_bias");
    qlora_jw_bool(w, 0);
    qlora_jw_key(w, "model_type");
    qlora_jw_string(w, "llama");
    qlora_jw_key(w, "num_attention_heads");
    qlora_jw_int(w, c->n_heads);
    qlora_jw_key(w, "num_hidden_layers");
    qlora_jw_int(w, c->n_layers);
    qlora_jw_key(w, "num_key_value_heads");
    qlora_jw_int(w, c->n_kv_heads);
    qlora_jw_key(w, "pad_token_id");
    if (c->pad_token_id >= 0) qlora_jw_int(w, c->pad_token_id); else qlora_jw_null(w);
    if (dq >= 0) {
        qlora_jw_key(w, "quantization_config");   // spec §3.3, BitsAndBytesConfig.to_dict()
        qlora_jw_object_begin(w);
        qlora_jw_key(w, "_load_in_4bit");
        qlora_jw_bool(w, 1);
        qlora_jw_key(w, "_load_in_8bit");
        qlora_jw_bool(w, 0);
        qlora_jw_key(w, "bnb_4bit_compute_dtype");
        qlora_jw_string(w, "float32");
        qlora_jw_key(w, "bnb_4bit_quant_storage");
        qlora_jw_string(w, "uint8");
        qlora_jw_key(w, "bnb_4bit_quant_type");
        qlora_jw_string(w, "nf4");
        qlora_jw_key(w, "bnb_4bit_use_double_quant");
        qlora_jw_bool(w, dq);
        qlora_jw_key(w, "llm_int8_enable_fp32_cpu_offload");
        qlora_jw_bool(w, 0);
        qlora_jw_key(w, "llm_int8_has_fp16_weight");
        qlora_jw_bool(w, 0);
        qlora_jw_key(w, "llm_int8_skip_modules");
        qlora_jw_null(w);
        qlora_jw_key(w, "llm_int8_threshold");
        qlora_jw_double(w, 6.0);
        qlora_jw_key(w, "load_in_4bit");
        qlora_jw_bool(w, 1);
        qlora_jw_key(w, "load_in_8bit");
        qlora_jw_bool(w, 0);
        qlora_jw_key(w, "quant_method");
        qlora_jw_string(w, "bitsandbytes");
        qlora_jw_object_end(w);
    }
    qlora_jw_key(w, "rms_norm_eps");
    qlora_jw_float(w, c->rms_norm_eps);
    qlora_jw_key(w, "rope_scaling");
    if (c->rope_scaling_factor != 1.0f) {
        qlora_jw_object_begin(w);
        qlora_jw_key(w, "factor");
        qlora_jw_float(w, c->rope_scaling_factor);
        qlora_jw_key(w, "type");
        qlora_jw_string(w, "linear");
        qlora_jw_object_end(w);
    } else {
        qlora_jw_null(w);
    }
    qlora_jw_key(w, "rope_theta");
    qlora_jw_float(w, c->rope_theta);
    qlora_jw_key(w, "tie_word_embeddings");
    qlora_jw_bool(w, c->tie_word_embeddings);
    qlora_jw_key(w, "torch_dtype");
    qlora_jw_string(w, torch_dtype);
    qlora_jw_key(w, "vocab_size");
    qlora_jw_int(w, c->vocab_size);
    qlora_jw_object_end(w);
    return qlora_jw_finish(w, 1, err);
}

QLORADEF qlora_status qlora_model_save_bnb4(const qlora_model *m, const char *dir, qlora_error *err) {
    if (!m || !m->layers || !dir) return qlora__fail(err, QLORA_ERR_ARG, "save bnb4: NULL model or directory");
    if (m->dense)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED,
                           "save bnb4: a dense model (save it with qlora_model_save_dense; loading that "
                           "quantizes it)");
    const qlora_llama_config *c = &m->cfg;
    int64_t L = c->n_layers, V = c->vocab_size, C = c->hidden_size;
    int64_t n_proj = L * QLORA_TARGET_COUNT, cap = 3 + 2 * L + 6 * n_proj;
    qlora_st_entry *e = (qlora_st_entry *)qlora__calloc(cap * (int64_t)sizeof(qlora_st_entry));
    char *names = (char *)qlora__alloc(cap * 128);
    qlora_json_writer *qs = (qlora_json_writer *)qlora__calloc(n_proj * (int64_t)sizeof(qlora_json_writer));
    char *path = qlora__ll_join(dir, "model.safetensors"), *cpath = qlora__ll_join(dir, "config.json");
    qlora_json_writer cw;
    memset(&cw, 0, sizeof cw);
    qlora_status st = QLORA_OK;
    int64_t n = 0;
    int dq = 1;
    if (!e || !names || !qs || !path || !cpath) st = qlora__fail(err, QLORA_ERR_NOMEM, "save bnb4: %s", dir);
#define QLORA__ENTRY(dt, d0, d1, nd, ptr, ...)                                     \
    do {                                                                           \
        snprintf(names + n * 128, 128, __VA_ARGS__);                               \
        e[n].name = names + n * 128;                                               \
        e[n].dtype = dt;                                                           \
        e[n].ndim = nd;                                                            \
        e[n].shape[0] = d0;                                                        \
        e[n].shape[1] = d1;                                                        \
        e[n].data = ptr;                                                           \
        n++;                                                                       \
    } while (0)
    if (st == QLORA_OK) {
        QLORA__ENTRY(QLORA_DTYPE_F32, V, C, 2, m->embed, "model.embed_tokens.weight");
        for (int64_t l = 0; l < L && st == QLORA_OK; l++) {
            const qlora_llama_layer *ly = &m->layers[l];
            QLORA__ENTRY(QLORA_DTYPE_F32, C, 0, 1, ly->input_norm, "model.layers.%lld.input_layernorm.weight",
                         (long long)l);
            QLORA__ENTRY(QLORA_DTYPE_F32, C, 0, 1, ly->post_norm,
                         "model.layers.%lld.post_attention_layernorm.weight", (long long)l);
            for (int t = 0; t < QLORA_TARGET_COUNT && st == QLORA_OK; t++) {
                const qlora_nf4 *w = &ly->w[t];
                const char *mp = qlora_target_path((qlora_target)t);
                int64_t ne = w->rows * w->cols, nb = qlora_nf4_num_blocks(ne, w->blocksize);
                qlora_json_writer *j = &qs[l * QLORA_TARGET_COUNT + t];
                if (!w->double_quant) dq = 0;
                // quant_state blob: json.dumps order quant_type, blocksize, dtype, shape (+ nested_*)
                qlora_jw_init(j, 0, 1);
                qlora_jw_object_begin(j);
                qlora_jw_key(j, "quant_type");
                qlora_jw_string(j, "nf4");
                qlora_jw_key(j, "blocksize");
                qlora_jw_int(j, w->blocksize);
                qlora_jw_key(j, "dtype");
                qlora_jw_string(j, "float32");
                qlora_jw_key(j, "shape");
                qlora_jw_array_begin(j);
                qlora_jw_int(j, w->rows);
                qlora_jw_int(j, w->cols);
                qlora_jw_array_end(j);
                if (w->double_quant) {
                    qlora_jw_key(j, "nested_blocksize");
                    qlora_jw_int(j, QLORA_DQ_BLOCK);
                    qlora_jw_key(j, "nested_dtype");
                    qlora_jw_string(j, "float32");
                    qlora_jw_key(j, "nested_offset");
                    qlora_jw_double(j, (double)w->nested_offset);
                }
                qlora_jw_object_end(j);
                st = qlora_jw_finish(j, 0, err);
                if (st != QLORA_OK) break;
                QLORA__ENTRY(QLORA_DTYPE_U8, (ne + 1) / 2, 1, 2, w->codes, "model.layers.%lld.%s.weight",
                             (long long)l, mp);
                if (w->double_quant) {
                    QLORA__ENTRY(QLORA_DTYPE_U8, nb, 0, 1, w->qabsmax, "model.layers.%lld.%s.weight.absmax",
                                 (long long)l, mp);
                    QLORA__ENTRY(QLORA_DTYPE_F32, qlora_nf4_num_blocks(nb, QLORA_DQ_BLOCK), 0, 1,
                                 w->nested_absmax, "model.layers.%lld.%s.weight.nested_absmax", (long long)l,
                                 mp);
                    QLORA__ENTRY(QLORA_DTYPE_F32, 256, 0, 1, w->nested_map,
                                 "model.layers.%lld.%s.weight.nested_quant_map", (long long)l, mp);
                } else {
                    QLORA__ENTRY(QLORA_DTYPE_F32, nb, 0, 1, w->absmax, "model.layers.%lld.%s.weight.absmax",
                                 (long long)l, mp);
                }
                QLORA__ENTRY(QLORA_DTYPE_F32, 16, 0, 1, qlora_nf4_codebook(),
                             "model.layers.%lld.%s.weight.quant_map", (long long)l, mp);
                QLORA__ENTRY(QLORA_DTYPE_U8, (int64_t)j->len, 0, 1, j->buf,
                             "model.layers.%lld.%s.weight.quant_state.bitsandbytes__nf4", (long long)l, mp);
            }
        }
        QLORA__ENTRY(QLORA_DTYPE_F32, C, 0, 1, m->final_norm, "model.norm.weight");
        if (!c->tie_word_embeddings) QLORA__ENTRY(QLORA_DTYPE_F32, V, C, 2, m->lm_head, "lm_head.weight");
    }
#undef QLORA__ENTRY
    if (st == QLORA_OK) st = qlora_safetensors_write(path, e, n, NULL, err);
    if (st == QLORA_OK) st = qlora__ll_bnb_config(m, dq, "float32", &cw, err);
    if (st == QLORA_OK) st = qlora_write_file_atomic(cpath, cw.buf, cw.len, err);
    qlora_jw_free(&cw);
    if (qs)
        for (int64_t i = 0; i < n_proj; i++) qlora_jw_free(&qs[i]);
    QLORA_FREE(qs);
    QLORA_FREE(e);
    QLORA_FREE(names);
    QLORA_FREE(path);
    QLORA_FREE(cpath);
    return st;
}

// Every tensor of the model as fp32 in HF names, projections dequantized (+ adapters merged) unless
// dense, converted to dtype and streamed into dir/model.safetensors; then config.json.
QLORADEF qlora_status qlora_model_save_dense(const qlora_model *m, const char *dir, qlora_dtype dtype,
                                             qlora_error *err) {
    if (!m || !m->layers || !dir) return qlora__fail(err, QLORA_ERR_ARG, "save dense: NULL model or directory");
    if (dtype != QLORA_DTYPE_F32 && dtype != QLORA_DTYPE_BF16 && dtype != QLORA_DTYPE_F16)
        return qlora__fail(err, QLORA_ERR_ARG, "save dense: dtype %s (F32, BF16 or F16)", qlora_dtype_name(dtype));
    const qlora_llama_config *c = &m->cfg;
    int64_t L = c->n_layers, V = c->vocab_size, C = c->hidden_size, cap = 3 + 9 * L, n = 0, biggest = V * C;
    for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
        int64_t out, in;
        qlora__ll_shape(c, t, &out, &in);
        if (out * in > biggest) biggest = out * in;
    }
    qlora_st_entry *e = (qlora_st_entry *)qlora__calloc(cap * (int64_t)sizeof(qlora_st_entry));
    const float **src = (const float **)qlora__calloc(cap * (int64_t)sizeof(float *));
    int32_t *proj = (int32_t *)qlora__calloc(cap * 4);   // l·7 + t + 1 for an NF4 projection, else 0
    char *names = (char *)qlora__alloc(cap * 96);
    float *buf = m->dense ? NULL : (float *)qlora__alloc(biggest * 4);
    uint16_t *half = dtype == QLORA_DTYPE_F32 ? NULL : (uint16_t *)qlora__alloc(biggest * 2);
    char *path = qlora__ll_join(dir, "model.safetensors"), *cpath = qlora__ll_join(dir, "config.json");
    qlora_st_writer sw;
    memset(&sw, 0, sizeof sw);
    qlora_json_writer cw;
    memset(&cw, 0, sizeof cw);
    qlora_status st = QLORA_OK;
    if (!e || !src || !proj || !names || (!m->dense && !buf) || (dtype != QLORA_DTYPE_F32 && !half) || !path ||
        !cpath)
        st = qlora__fail(err, QLORA_ERR_NOMEM, "save dense: %s", dir);
#define QLORA__ENTRY(p, pj, d0, d1, nd, ...)                                       \
    do {                                                                           \
        snprintf(names + n * 96, 96, __VA_ARGS__);                                 \
        e[n].name = names + n * 96;                                                \
        e[n].dtype = dtype;                                                        \
        e[n].ndim = nd;                                                            \
        e[n].shape[0] = d0;                                                        \
        e[n].shape[1] = d1;                                                        \
        e[n].data = names; /* the streaming writer ignores it */                   \
        src[n] = p;                                                                \
        proj[n] = pj;                                                              \
        n++;                                                                       \
    } while (0)
    if (st == QLORA_OK) {
        QLORA__ENTRY(m->embed, 0, V, C, 2, "model.embed_tokens.weight");
        for (int l = 0; l < L; l++) {
            const qlora_llama_layer *ly = &m->layers[l];
            QLORA__ENTRY(ly->input_norm, 0, C, 0, 1, "model.layers.%d.input_layernorm.weight", l);
            for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
                int64_t out, in;
                qlora__ll_shape(c, t, &out, &in);
                QLORA__ENTRY(ly->dense[t], m->dense ? 0 : l * QLORA_TARGET_COUNT + t + 1, out, in, 2,
                             "model.layers.%d.%s.weight", l, qlora_target_path((qlora_target)t));
                if (t == QLORA_TARGET_O)
                    QLORA__ENTRY(ly->post_norm, 0, C, 0, 1, "model.layers.%d.post_attention_layernorm.weight", l);
            }
        }
        QLORA__ENTRY(m->final_norm, 0, C, 0, 1, "model.norm.weight");
        if (!c->tie_word_embeddings) QLORA__ENTRY(m->lm_head, 0, V, C, 2, "lm_head.weight");
    }
#undef QLORA__ENTRY
    if (st == QLORA_OK) st = qlora_st_writer_begin(&sw, path, e, n, NULL, err);
    for (int64_t k = 0; k < n && st == QLORA_OK; k++) {
        int64_t cnt = e[k].ndim == 2 ? e[k].shape[0] * e[k].shape[1] : e[k].shape[0];
        const float *x = src[k];
        if (proj[k]) {
            const qlora_llama_layer *ly = &m->layers[(proj[k] - 1) / QLORA_TARGET_COUNT];
            int t = (proj[k] - 1) % QLORA_TARGET_COUNT;
            st = ly->lora[t].A ? qlora_lora_merge(buf, &ly->lora[t], &ly->w[t], err)
                               : qlora_nf4_dequantize(buf, &ly->w[t], err);
            if (st != QLORA_OK) {
                st = qlora__ll_wrap(err, st, "save dense: %s", e[k].name);
                break;
            }
            x = buf;
        }
        const void *bytes = x;
        if (dtype == QLORA_DTYPE_BF16) qlora_f32_to_bf16(half, x, cnt);
        if (dtype == QLORA_DTYPE_F16) qlora_f32_to_f16(half, x, cnt);
        if (dtype != QLORA_DTYPE_F32) bytes = half;
        st = qlora_st_writer_append(&sw, bytes, cnt * (dtype == QLORA_DTYPE_F32 ? 4 : 2), err);
    }
    if (st == QLORA_OK) st = qlora_st_writer_finish(&sw, err);
    if (st != QLORA_OK) qlora_st_writer_abort(&sw);
    if (st == QLORA_OK)
        st = qlora__ll_bnb_config(m, -1,
                                  dtype == QLORA_DTYPE_F32    ? "float32"
                                  : dtype == QLORA_DTYPE_BF16 ? "bfloat16"
                                                              : "float16",
                                  &cw, err);
    if (st == QLORA_OK) st = qlora_write_file_atomic(cpath, cw.buf, cw.len, err);
    qlora_jw_free(&cw);
    QLORA_FREE(e);
    QLORA_FREE(src);
    QLORA_FREE(proj);
    QLORA_FREE(names);
    QLORA_FREE(buf);
    QLORA_FREE(half);
    QLORA_FREE(path);
    QLORA_FREE(cpath);
    return st;
}

QLORADEF qlora_status qlora_model_load_adapter(qlora_model *m, const char *dir, qlora_error *err) {
    if (!m || !m->layers || !dir)
        return qlora__fail(err, QLORA_ERR_ARG, "load adapter: NULL model or directory");
    if (m->dense)
        return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "load adapter: %s: LoRA adapters on a dense model", dir);
    // Every projection of the model as a PEFT module; qlora_adapter_load fills the ones the adapter has and
    // changes nothing on failure, so the model's adapters are replaced only when everything loaded.
    const qlora_llama_config *c = &m->cfg;
    const int64_t n = (int64_t)c->n_layers * QLORA_TARGET_COUNT, name_cap = 64;
    qlora_lora *fresh = (qlora_lora *)qlora__calloc(n * (int64_t)sizeof(qlora_lora));
    qlora_adapter_module *mods = (qlora_adapter_module *)qlora__calloc(n * (int64_t)sizeof(qlora_adapter_module));
    char *names = (char *)qlora__alloc(n * name_cap);
    qlora_status st = fresh && mods && names ? QLORA_OK : qlora__fail(err, QLORA_ERR_NOMEM, "load adapter: %s", dir);
    for (int64_t i = 0; st == QLORA_OK && i < n; i++) {
        const int l = (int)(i / QLORA_TARGET_COUNT), t = (int)(i % QLORA_TARGET_COUNT);
        snprintf(names + i * name_cap, (size_t)name_cap, "model.layers.%d.%s", l, qlora_target_path((qlora_target)t));
        mods[i].name = names + i * name_cap;
        mods[i].lora = &fresh[i];
        qlora__ll_shape(c, t, &mods[i].out, &mods[i].in);
    }
    qlora_adapter_config ac;
    memset(&ac, 0, sizeof ac);
    if (st == QLORA_OK) st = qlora_adapter_load(dir, mods, n, &ac, err);
    if (st == QLORA_OK && ac.n_loaded == 0)
        st = qlora__fail(err, QLORA_ERR_FORMAT, "load adapter: %s adapts none of the model's projections", dir);
    if (st == QLORA_OK) {   // install: the old adapters go, the new ones take their place
        uint32_t targets = 0;
        int32_t rank = 0;
        for (int64_t i = 0; i < n; i++) {
            qlora_lora *slot = &m->layers[i / QLORA_TARGET_COUNT].lora[i % QLORA_TARGET_COUNT];
            qlora_lora_free(slot);
            *slot = fresh[i];
            memset(&fresh[i], 0, sizeof(qlora_lora));
            if (slot->A) {
                targets |= 1u << (i % QLORA_TARGET_COUNT);
                if (slot->rank > rank) rank = slot->rank;
            }
        }
        m->lora_targets = targets;
        memset(&m->lora_cfg, 0, sizeof m->lora_cfg);
        m->lora_cfg.rank = rank;   // the largest: train states are sized for it
        m->lora_cfg.alpha = ac.lora_alpha;
        m->lora_cfg.dropout = ac.lora_dropout;
        m->lora_cfg.use_rslora = ac.use_rslora;
    }
    for (int64_t i = 0; fresh && i < n; i++) qlora_lora_free(&fresh[i]);
    QLORA_FREE(fresh);
    QLORA_FREE(mods);
    QLORA_FREE(names);
    return st;
}

// ---------------------------------------------------------------------------------------------
// Pager implementation
//
// Slots are page buffers allocated once at init (all pages when unlimited, else budget / page
// size of them); the step never allocates. The default store is a temp file created at the first
// eviction, unlinked at once on POSIX so that it disappears with the process.

static void qlora__pager_file_close(qlora_pager *p) {
#ifdef QLORA__POSIX
    if (p->fd >= 0) close(p->fd);
#else
    if (p->fp) {
        fclose((FILE *)p->fp);
        if (p->file_path) remove(p->file_path);
    }
#endif
    p->fd = -1;
    p->fp = NULL;
}

static qlora_status qlora__pager_file_open(qlora_pager *p, qlora_error *err) {
    size_t n = strlen(p->dir) + 80;
    p->file_path = (char *)qlora__alloc((int64_t)n);
    if (!p->file_path) return qlora__fail(err, QLORA_ERR_NOMEM, "pager: temp file name in %s", p->dir);
    for (int attempt = 0; attempt < 1000; attempt++) {
#ifdef QLORA__POSIX
        snprintf(p->file_path, n, "%s/.qlora-pages.%ld.%lx.%d", p->dir, (long)getpid(),
                 (unsigned long)(uintptr_t)p, attempt);
        p->fd = open(p->file_path, O_RDWR | O_CREAT | O_EXCL, 0600);
        if (p->fd >= 0) {
            unlink(p->file_path);   // the open descriptor keeps the data; nothing is left behind
            return QLORA_OK;
        }
        if (errno != EEXIST) break;
#else
        snprintf(p->file_path, n, "%s/.qlora-pages.%lx.%d", p->dir, (unsigned long)(uintptr_t)p, attempt);
        FILE *probe = fopen(p->file_path, "rb");
        if (probe) { fclose(probe); continue; }
        p->fp = fopen(p->file_path, "w+b");
        if (p->fp) return QLORA_OK;
        break;
#endif
    }
    return qlora__fail(err, QLORA_ERR_IO, "pager: cannot create a temp file in %s: %s", p->dir, qlora__errstr());
}

// Moves the file position of the default store to page `page`.
static qlora_status qlora__pager_seek(qlora_pager *p, int64_t page, qlora_error *err) {
    int64_t off = page * p->page_bytes;
#ifdef QLORA__POSIX
    if ((int64_t)(off_t)off != off || lseek(p->fd, (off_t)off, SEEK_SET) < 0)
#else
    if ((int64_t)(long)off != off || fseek((FILE *)p->fp, (long)off, SEEK_SET) != 0)
#endif
        return qlora__fail(err, QLORA_ERR_IO, "pager: cannot seek to page %lld of %s: %s", (long long)page,
                           p->file_path, qlora__errstr());
    return QLORA_OK;
}

// Moves one page between buf and the store: writing = 1 stores buf, 0 fills buf. The default store
// opens its temp file on the first write; a page is only read after it was written.
static qlora_status qlora__pager_io(qlora_pager *p, int64_t page, uint8_t *buf, int writing, qlora_error *err) {
    const char *verb = writing ? "writing" : "reading", *prep = writing ? "to" : "from";
    if (writing) p->page_outs++;
    else p->page_ins++;
    if (writing && p->store.write) return p->store.write(p->store.user, page, buf, p->page_bytes, err);
    if (!writing && p->store.read) return p->store.read(p->store.user, page, buf, p->page_bytes, err);
    qlora_status st = QLORA_OK;
    if (writing && p->fd < 0 && !p->fp) st = qlora__pager_file_open(p, err);
    if (st == QLORA_OK) st = qlora__pager_seek(p, page, err);
    if (st != QLORA_OK) return st;
    size_t left = (size_t)p->page_bytes;
#ifdef QLORA__POSIX
    while (left > 0) {
        ssize_t k = writing ? write(p->fd, buf, left) : read(p->fd, buf, left);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0)
            return qlora__fail(err, QLORA_ERR_IO, "pager: %s page %lld %s %s failed: %s", verb, (long long)page,
                               prep, p->file_path, k < 0 ? strerror(errno) : (writing ? "no progress" : "short file"));
        buf += k;
        left -= (size_t)k;
    }
#else
    if ((writing ? fwrite(buf, 1, left, (FILE *)p->fp) : fread(buf, 1, left, (FILE *)p->fp)) != left)
        return qlora__fail(err, QLORA_ERR_IO, "pager: %s page %lld %s %s failed", verb, (long long)page, prep,
                           p->file_path);
#endif
    return QLORA_OK;
}

QLORADEF void qlora_pager_free(qlora_pager *p) {
    if (!p) return;
    if (p->slot_buf)
        for (int64_t s = 0; s < p->n_slots; s++) QLORA_FREE(p->slot_buf[s]);
    qlora__pager_file_close(p);
    QLORA_FREE(p->slot_buf);
    QLORA_FREE(p->slot_page);
    QLORA_FREE(p->slot_stamp);
    QLORA_FREE(p->slot_dirty);
    QLORA_FREE(p->page_slot);
    QLORA_FREE(p->page_stored);
    QLORA_FREE(p->dir);
    QLORA_FREE(p->file_path);
    memset(p, 0, sizeof *p);
    p->fd = -1;
}

QLORADEF qlora_status qlora_pager_init(qlora_pager *p, int64_t total_bytes, const qlora_pager_config *cfg,
                                       qlora_error *err) {
    if (!p) return qlora__fail(err, QLORA_ERR_ARG, "pager init: NULL pager");
    memset(p, 0, sizeof *p);
    p->fd = -1;
    int64_t page = cfg && cfg->page_bytes ? cfg->page_bytes : QLORA_PAGE_BYTES_DEFAULT;
    int64_t budget = cfg ? cfg->budget_bytes : 0;
    if (total_bytes < 0) return qlora__fail(err, QLORA_ERR_ARG, "pager init: negative size %lld", (long long)total_bytes);
    if (page < 4096 || page % 64 != 0 || (uint64_t)page > (uint64_t)SIZE_MAX)
        return qlora__fail(err, QLORA_ERR_ARG, "pager init: page size %lld is not a multiple of 64 >= 4096",
                           (long long)page);
    if (budget < 0 || (budget > 0 && budget < page))
        return qlora__fail(err, QLORA_ERR_ARG, "pager init: budget %lld bytes holds no page of %lld bytes",
                           (long long)budget, (long long)page);
    if (cfg && cfg->store && (!cfg->store->write || !cfg->store->read))
        return qlora__fail(err, QLORA_ERR_ARG, "pager init: a page store needs both write and read");
    p->page_bytes = page;
    p->budget_bytes = budget;
    p->n_pages = (total_bytes + page - 1) / page;
    p->n_slots = budget > 0 && budget / page < p->n_pages ? budget / page : p->n_pages;
    if (cfg && cfg->store) p->store = *cfg->store;
    p->dir = qlora__strdup(cfg && cfg->dir ? cfg->dir : ".");
    int64_t ns = p->n_slots > 0 ? p->n_slots : 1, np = p->n_pages > 0 ? p->n_pages : 1;
    p->slot_buf = (uint8_t **)qlora__calloc(ns * (int64_t)sizeof(uint8_t *));
    p->slot_page = (int64_t *)qlora__alloc(ns * 8);
    p->slot_stamp = (uint64_t *)qlora__calloc(ns * 8);
    p->slot_dirty = (uint8_t *)qlora__calloc(ns);
    p->page_slot = (int64_t *)qlora__alloc(np * 8);
    p->page_stored = (uint8_t *)qlora__calloc(np);
    int ok = p->dir && p->slot_buf && p->slot_page && p->slot_stamp && p->slot_dirty && p->page_slot && p->page_stored;
    for (int64_t s = 0; ok && s < p->n_slots; s++) {
        p->slot_buf[s] = (uint8_t *)qlora__calloc(page);   // zero: a never-written page reads as zeros
        if (!p->slot_buf[s]) ok = 0;
        p->slot_page[s] = -1;
    }
    if (!ok) {
        qlora_pager_free(p);
        return qlora__fail(err, QLORA_ERR_NOMEM, "pager init: %lld pages of %lld bytes", (long long)p->n_pages,
                           (long long)page);
    }
    for (int64_t i = 0; i < p->n_pages; i++) p->page_slot[i] = -1;
    if (budget == 0)   // unlimited: page i lives in slot i for good
        for (int64_t i = 0; i < p->n_pages; i++) {
            p->page_slot[i] = i;
            p->slot_page[i] = i;
        }
    p->resident_bytes = p->peak_resident_bytes = p->n_slots * page;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_pager_get(qlora_pager *p, int64_t page, int dirty, uint8_t **data, qlora_error *err) {
    if (!p || !data || page < 0 || page >= p->n_pages)
        return qlora__fail(err, QLORA_ERR_ARG, "pager get: page %lld of %lld", (long long)page,
                           (long long)(p ? p->n_pages : 0));
    int64_t s = p->page_slot[page];
    if (s < 0) {
        // Victim: a free slot, else the least recently used one (written back when dirty).
        s = 0;
        for (int64_t k = 0; k < p->n_slots; k++) {
            if (p->slot_page[k] < 0) { s = k; break; }
            if (p->slot_stamp[k] < p->slot_stamp[s]) s = k;
        }
        int64_t old = p->slot_page[s];
        if (old >= 0) {
            if (p->slot_dirty[s]) {
                qlora_status st = qlora__pager_io(p, old, p->slot_buf[s], 1, err);
                if (st != QLORA_OK) return st;
                p->page_stored[old] = 1;
            }
            p->page_slot[old] = -1;
            p->slot_page[s] = -1;
        }
        p->slot_dirty[s] = 0;
        if (p->page_stored[page]) {
            qlora_status st = qlora__pager_io(p, page, p->slot_buf[s], 0, err);
            if (st != QLORA_OK) return st;
        } else {
            memset(p->slot_buf[s], 0, (size_t)p->page_bytes);
        }
        p->slot_page[s] = page;
        p->page_slot[page] = s;
    }
    p->slot_stamp[s] = ++p->clock;
    if (dirty) p->slot_dirty[s] = 1;
    *data = p->slot_buf[s];
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// AdamW implementation
//
// The update is specified as separate fp32 operations (bitsandbytes' kernel order). GCC in ISO C
// mode never fuses them into FMAs; clang does by default (-ffp-contract=on), so the functions
// below switch contraction off: the same bits from every compiler, and a checkpoint written by one
// build resumes bit-identically in another.
#if defined(__clang__)
#define QLORA__FP_EXACT _Pragma("clang fp contract(off)")
#else
#define QLORA__FP_EXACT
#endif

QLORADEF float qlora_lr_at(qlora_lr_schedule schedule, float lr, int64_t step, int64_t warmup_steps,
                           int64_t total_steps) {
    double f = 1.0;
    if (step < 0) step = 0;
    if (schedule != QLORA_LR_CONSTANT && step < warmup_steps) {
        f = (double)step / (double)(warmup_steps > 1 ? warmup_steps : 1);
    } else if (schedule == QLORA_LR_LINEAR) {
        int64_t span = total_steps - warmup_steps > 1 ? total_steps - warmup_steps : 1;
        f = (double)(total_steps - step) / (double)span;
        if (f < 0.0) f = 0.0;
    } else if (schedule == QLORA_LR_COSINE) {
        int64_t span = total_steps - warmup_steps > 1 ? total_steps - warmup_steps : 1;
        double progress = (double)(step - warmup_steps) / (double)span;
        f = 0.5 * (1.0 + cos(QLORA__PI * progress));   // num_cycles 0.5, unclamped like transformers
        if (f < 0.0) f = 0.0;
    }
    return (float)((double)lr * f);
}

// Σ g² of one tensor in double: 64 fixed segments summed in order, so threads change nothing.
#define QLORA__NORM_SEGS 64
static double qlora__sumsq(const float *g, int64_t n) {
    QLORA__FP_EXACT
    double seg[QLORA__NORM_SEGS];
    int64_t len = (n + QLORA__NORM_SEGS - 1) / QLORA__NORM_SEGS;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 16))
#endif
    for (int s = 0; s < QLORA__NORM_SEGS; s++) {
        int64_t lo = s * len, hi = lo + len < n ? lo + len : n;
        double acc = 0.0;
        for (int64_t i = lo; i < hi; i++) acc += (double)g[i] * (double)g[i];
        seg[s] = acc;
    }
    double total = 0.0;
    for (int s = 0; s < QLORA__NORM_SEGS; s++) total += seg[s];
    return total;
}

QLORADEF double qlora_grad_norm(const qlora_param *params, int64_t n_params) {
    double total = 0.0;
    for (int64_t i = 0; params && i < n_params; i++)
        if (params[i].g && params[i].n > 0) total += qlora__sumsq(params[i].g, params[i].n);
    return sqrt(total);
}

// torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6) in fp32, applied when < 1.
static double qlora__clip(const qlora_param *params, int64_t n_params, float max_norm, float *coef_out) {
    double norm = qlora_grad_norm(params, n_params);
    float coef = 1.0f;
    if (max_norm > 0.0f && isfinite(norm)) {
        float c = max_norm / ((float)norm + 1e-6f);
        if (c < 1.0f) {
            coef = c;
            for (int64_t i = 0; i < n_params; i++) {
                float *g = params[i].g;
                int64_t n = params[i].n;
                if (!g) continue;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 16))
#endif
                for (int64_t j = 0; j < n; j++) g[j] *= c;
            }
        }
    }
    if (coef_out) *coef_out = coef;
    return norm;
}

QLORADEF double qlora_clip_grad_norm(const qlora_param *params, int64_t n_params, float max_norm) {
    return qlora__clip(params, n_params, max_norm, NULL);
}

QLORADEF qlora_adamw_config qlora_adamw_default_config(void) {
    qlora_adamw_config c;
    memset(&c, 0, sizeof c);
    c.lr = 1e-3f;
    c.beta1 = 0.9f;
    c.beta2 = 0.999f;
    c.eps = 1e-8f;
    c.weight_decay = 1e-2f;
    c.optim_bits = 32;
    c.min_8bit_size = 4096;
    c.schedule = QLORA_LR_CONSTANT;
    return c;
}

// Per-step scalars, computed once on the host (as bitsandbytes does before its kernel launch).
typedef struct qlora__adam_coef {
    float b1, b2, one_m_b1, one_m_b2;
    float step_size;   // bitsandbytes: −lr·c2/c1;  torch: −lr/c1
    float eps_c2;      // bitsandbytes: eps·c2
    float eps, c2;     // torch: denominator √v/c2 + eps
    float decay;       // 1 − lr·wd
    int   has_decay, torch_order;
} qlora__adam_coef;

static void qlora__adam_coef_init(qlora__adam_coef *c, const qlora_adamw_config *cfg, float lr, int64_t t) {
    QLORA__FP_EXACT
    memset(c, 0, sizeof *c);
    c->b1 = cfg->beta1;
    c->b2 = cfg->beta2;
    c->has_decay = cfg->weight_decay > 0.0f;
    c->torch_order = cfg->torch_order != 0;
    if (!c->torch_order) {
        // fp32, in the order of kOptimizer32bit2State; β^t is evaluated in double and rounded once
        // (libm / CUDA powf results differ in the last bit for some t; this is portable)
        c->one_m_b1 = 1.0f - cfg->beta1;
        c->one_m_b2 = 1.0f - cfg->beta2;
        float c1 = 1.0f - (float)pow((double)cfg->beta1, (double)t);
        float c2 = sqrtf(1.0f - (float)pow((double)cfg->beta2, (double)t));
        c->step_size = -lr * c2 / c1;
        c->eps_c2 = c2 * cfg->eps;
        c->decay = 1.0f - lr * cfg->weight_decay;
    } else {
        // torch computes the scalars in Python (double) and applies them to fp32 tensors
        double b1 = cfg->beta1, b2 = cfg->beta2;
        c->one_m_b1 = (float)(1.0 - b1);
        c->one_m_b2 = (float)(1.0 - b2);
        c->step_size = (float)(-(double)lr / (1.0 - pow(b1, (double)t)));
        c->c2 = (float)sqrt(1.0 - pow(b2, (double)t));
        c->eps = cfg->eps;
        c->decay = (float)(1.0 - (double)lr * (double)cfg->weight_decay);
    }
}

// One element. Returns 1 (and zeroes m, v, leaving p) when g is NaN or Inf.
static inline int qlora__adam_elem(float *p, float g, float *m, float *v, const qlora__adam_coef *c) {
    QLORA__FP_EXACT
    if (!isfinite(g)) {
        *m = 0.0f;
        *v = 0.0f;
        return 1;
    }
    float mi = *m * c->b1 + c->one_m_b1 * g;
    float w = *p;
    if (!c->torch_order) {
        float vi = *v * c->b2 + c->one_m_b2 * (g * g);
        w = w + c->step_size * (mi / (sqrtf(vi) + c->eps_c2));
        if (c->has_decay) w = w * c->decay;   // decoupled decay after the step
        *v = vi;
    } else {
        float vi = *v * c->b2 + (c->one_m_b2 * g) * g;
        if (c->has_decay) w = w * c->decay;   // torch.optim.AdamW decays first
        float denom = sqrtf(vi) / c->c2 + c->eps;
        w = w + c->step_size * (mi / denom);
        *v = vi;
    }
    *m = mi;
    *p = w;
    return 0;
}

// fp32 state: m (k) then v (k) at the chunk's offset.
static int64_t qlora__adam32_chunk(float *p, const float *g, float *m, float *v, int64_t k, const qlora__adam_coef *c) {
    int64_t bad = 0;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(+ : bad) if (k > (1 << 14))
#endif
    for (int64_t i = 0; i < k; i++) bad += qlora__adam_elem(&p[i], g[i], &m[i], &v[i], c);
    return bad;
}

// 8-bit state of one block of k <= 256 elements: dequantize, update, new absmax, requantize.
static int64_t qlora__adam8_block(float *p, const float *g, uint8_t *q1, uint8_t *q2, float *absmax1, float *absmax2,
                                  int64_t k, const float *map1, const float *map2, const qlora__adam_coef *c) {
    float m[256], v[256];   // (k) the block's new states
    float old1 = *absmax1, old2 = *absmax2, new1 = 0.0f, new2 = 0.0f;
    int64_t bad = 0;
    for (int64_t i = 0; i < k; i++) {
        m[i] = map1[q1[i]] * old1;
        v[i] = map2[q2[i]] * old2;
        bad += qlora__adam_elem(&p[i], g[i], &m[i], &v[i], c);
        new1 = fmaxf(new1, fabsf(m[i]));
        new2 = fmaxf(new2, fabsf(v[i]));
    }
    *absmax1 = new1;
    *absmax2 = new2;
    for (int64_t i = 0; i < k; i++) {
        int c1 = 127, c2 = 0;   // codes of 0 in the signed / unsigned map (an all-zero block)
        if (new1 > 0.0f) {
            c1 = qlora__map_encode(map1, m[i] / new1);
            if (signbit(map1[c1]) != signbit(m[i])) c1 += m[i] > 0.0f ? 1 : -1;   // keep m's sign
        }
        if (new2 > 0.0f) c2 = qlora__map_encode(map2, v[i] / new2);
        q1[i] = (uint8_t)c1;
        q2[i] = (uint8_t)c2;
    }
    return bad;
}

// Byte size of the state of k elements in one chunk (8-aligned): fp32 m, v; or 8-bit
// absmax1, absmax2 (ceil(k/256) each), codes1, codes2 (k each).
static int64_t qlora__chunk_bytes(int is8, int64_t k) {
    int64_t b = is8 ? 8 * ((k + 255) / 256) + 2 * k : 8 * k;
    return (b + 7) & ~(int64_t)7;
}

// Packs every tensor's state into pages (chunks never straddle a page). out may be NULL to count.
static int64_t qlora__adamw_layout(const qlora_adamw *opt, int64_t page_bytes, qlora_adamw_chunk *out,
                                   int64_t *total_bytes) {
    int64_t page = 0, off = 0, count = 0;
    for (int64_t i = 0; i < opt->n_params; i++) {
        int is8 = opt->is8bit[i];
        int64_t n = opt->params[i].n, lo = 0, per256 = qlora__chunk_bytes(is8, 256);
        while (lo < n) {
            int64_t k = n - lo;
            if (qlora__chunk_bytes(is8, k) > page_bytes - off) {
                k = (page_bytes - off) / per256 * 256;
                if (k == 0) {
                    page++;
                    off = 0;
                    continue;
                }
            }
            if (out) {
                out[count].param = i;
                out[count].lo = lo;
                out[count].hi = lo + k;
                out[count].page = page;
                out[count].offset = off;
            }
            count++;
            off += qlora__chunk_bytes(is8, k);
            lo += k;
        }
    }
    *total_bytes = page * page_bytes + off;
    return count;
}

QLORADEF void qlora_adamw_free(qlora_adamw *opt) {
    if (!opt) return;
    qlora_pager_free(&opt->pager);
    QLORA_FREE(opt->params);
    QLORA_FREE(opt->is8bit);
    QLORA_FREE(opt->chunks);
    QLORA_FREE(opt->names);
    memset(opt, 0, sizeof *opt);
}

QLORADEF qlora_status qlora_adamw_init(qlora_adamw *opt, const qlora_param *params, int64_t n_params,
                                       const qlora_adamw_config *cfg, qlora_error *err) {
    if (!opt || !cfg || (!params && n_params)) return qlora__fail(err, QLORA_ERR_ARG, "adamw init: NULL argument");
    memset(opt, 0, sizeof *opt);
    opt->pager.fd = -1;
    if (n_params < 0) return qlora__fail(err, QLORA_ERR_ARG, "adamw init: %lld parameters", (long long)n_params);
    if (!(cfg->lr >= 0.0f) || !isfinite(cfg->lr))
        return qlora__fail(err, QLORA_ERR_ARG, "adamw init: lr %g", (double)cfg->lr);
    if (!(cfg->beta1 >= 0.0f && cfg->beta1 < 1.0f) || !(cfg->beta2 >= 0.0f && cfg->beta2 < 1.0f))
        return qlora__fail(err, QLORA_ERR_ARG, "adamw init: betas (%g, %g) not in [0, 1)", (double)cfg->beta1,
                           (double)cfg->beta2);
    if (!(cfg->eps > 0.0f) || !isfinite(cfg->eps) || !(cfg->weight_decay >= 0.0f) || !isfinite(cfg->weight_decay))
        return qlora__fail(err, QLORA_ERR_ARG, "adamw init: eps %g, weight_decay %g", (double)cfg->eps,
                           (double)cfg->weight_decay);
    if (cfg->optim_bits != 32 && cfg->optim_bits != 8)
        return qlora__fail(err, QLORA_ERR_ARG, "adamw init: optim_bits %d (8 or 32)", (int)cfg->optim_bits);
    if (cfg->min_8bit_size < 0 || !(cfg->max_grad_norm >= 0.0f) || !isfinite(cfg->max_grad_norm))
        return qlora__fail(err, QLORA_ERR_ARG, "adamw init: min_8bit_size %d, max_grad_norm %g",
                           (int)cfg->min_8bit_size, (double)cfg->max_grad_norm);
    if ((int)cfg->schedule < 0 || (int)cfg->schedule > (int)QLORA_LR_COSINE || cfg->warmup_steps < 0 ||
        ((cfg->schedule == QLORA_LR_LINEAR || cfg->schedule == QLORA_LR_COSINE) && cfg->total_steps <= 0))
        return qlora__fail(err, QLORA_ERR_ARG, "adamw init: schedule %d, warmup %lld, total %lld steps",
                           (int)cfg->schedule, (long long)cfg->warmup_steps, (long long)cfg->total_steps);
    int64_t name_bytes = 0;
    for (int64_t i = 0; i < n_params; i++) {
        const qlora_param *q = &params[i];
        if (!q->w || !q->g || q->n < 0 || q->n > INT64_MAX / 16)
            return qlora__fail(err, QLORA_ERR_ARG, "adamw init: param %lld (%s): NULL arrays or size %lld",
                               (long long)i, q->name ? q->name : "unnamed", (long long)q->n);
        name_bytes += q->name ? (int64_t)strlen(q->name) + 1 : 0;
    }
    opt->cfg = *cfg;
    opt->cfg.pager.dir = NULL;     // the pager keeps its own copy
    opt->cfg.pager.store = NULL;
    opt->n_params = n_params;
    opt->params = (qlora_param *)qlora__alloc(n_params * (int64_t)sizeof(qlora_param));
    opt->is8bit = (uint8_t *)qlora__calloc(n_params);
    opt->names = (char *)qlora__alloc(name_bytes);
    if (!opt->params || !opt->is8bit || !opt->names) {
        qlora_adamw_free(opt);
        return qlora__fail(err, QLORA_ERR_NOMEM, "adamw init: %lld parameters", (long long)n_params);
    }
    char *np = opt->names;
    for (int64_t i = 0; i < n_params; i++) {
        opt->params[i] = params[i];
        if (params[i].name) {
            size_t len = strlen(params[i].name) + 1;
            memcpy(np, params[i].name, len);
            opt->params[i].name = np;
            np += len;
        }
        opt->is8bit[i] = (uint8_t)(cfg->optim_bits == 8 && params[i].n >= cfg->min_8bit_size);
    }
    qlora_dynamic_map(opt->map1, 1);
    qlora_dynamic_map(opt->map2, 0);
    int64_t page_bytes = cfg->pager.page_bytes ? cfg->pager.page_bytes : QLORA_PAGE_BYTES_DEFAULT, total = 0;
    qlora_status st = qlora_pager_init(&opt->pager, 0, &cfg->pager, err);   // validates the pager options
    qlora_pager_free(&opt->pager);
    if (st != QLORA_OK) {
        qlora_adamw_free(opt);
        return st;
    }
    opt->n_chunks = qlora__adamw_layout(opt, page_bytes, NULL, &total);
    opt->chunks = (qlora_adamw_chunk *)qlora__alloc(opt->n_chunks * (int64_t)sizeof(qlora_adamw_chunk));
    if (!opt->chunks) {
        qlora_adamw_free(opt);
        return qlora__fail(err, QLORA_ERR_NOMEM, "adamw init: %lld state chunks", (long long)opt->n_chunks);
    }
    qlora__adamw_layout(opt, page_bytes, opt->chunks, &total);
    st = qlora_pager_init(&opt->pager, total, &cfg->pager, err);
    if (st != QLORA_OK) qlora_adamw_free(opt);
    return st;
}

QLORADEF int64_t qlora_adamw_state_bytes(const qlora_adamw *opt) {
    return opt ? opt->pager.n_pages * opt->pager.page_bytes : 0;
}

// One chunk: its state starts at base (page buffer + offset).
static int64_t qlora__adamw_chunk(const qlora_adamw *opt, const qlora_adamw_chunk *ch, uint8_t *base,
                                  const qlora__adam_coef *c) {
    const qlora_param *q = &opt->params[ch->param];
    int64_t k = ch->hi - ch->lo, bad = 0;
    qlora__adam_coef plain;
    if (q->no_decay && c->has_decay) {   // this tensor takes no weight decay
        plain = *c;
        plain.has_decay = 0;
        c = &plain;
    }
    float *p = q->w + ch->lo;
    const float *g = q->g + ch->lo;
    if (!opt->is8bit[ch->param]) return qlora__adam32_chunk(p, g, (float *)base, (float *)base + k, k, c);
    int64_t nb = (k + 255) / 256;
    float *a1 = (float *)base, *a2 = a1 + nb;
    uint8_t *q1 = (uint8_t *)(a2 + nb), *q2 = q1 + k;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) reduction(+ : bad) if (nb > 64)
#endif
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * 256, len = k - lo < 256 ? k - lo : 256;
        bad += qlora__adam8_block(p + lo, g + lo, q1 + lo, q2 + lo, a1 + b, a2 + b, len, opt->map1, opt->map2, c);
    }
    return bad;
}

QLORADEF qlora_status qlora_adamw_step(qlora_adamw *opt, qlora_step_stats *stats, qlora_error *err) {
    if (!opt || (!opt->params && opt->n_params)) return qlora__fail(err, QLORA_ERR_ARG, "adamw step: NULL optimizer");
    qlora_step_stats s;
    memset(&s, 0, sizeof s);
    s.grad_norm = qlora__clip(opt->params, opt->n_params, opt->cfg.max_grad_norm, &s.clip_coef);
    s.lr = qlora_lr_at(opt->cfg.schedule, opt->cfg.lr, opt->step, opt->cfg.warmup_steps, opt->cfg.total_steps);
    int64_t t = opt->step + 1;
    qlora__adam_coef c;
    qlora__adam_coef_init(&c, &opt->cfg, s.lr, t);
    // Chunks are independent, so they run in parallel in groups whose pages are all resident: every
    // chunk when nothing is paged (page i lives in slot i), else the chunks of one page at a time.
    // A group of one chunk parallelizes inside the chunk instead.
    int unlimited = opt->pager.budget_bytes == 0;
    for (int64_t j0 = 0; j0 < opt->n_chunks;) {
        int64_t j1 = j0 + 1;
        while (j1 < opt->n_chunks && (unlimited || opt->chunks[j1].page == opt->chunks[j0].page)) j1++;
        uint8_t *page_base;
        qlora_status st = qlora_pager_get(&opt->pager, opt->chunks[j0].page, 1, &page_base, err);
        if (st != QLORA_OK) return st;
        int64_t bad = 0;
        if (j1 - j0 == 1) {
            bad = qlora__adamw_chunk(opt, &opt->chunks[j0], page_base + opt->chunks[j0].offset, &c);
        } else {
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : bad)
#endif
            for (int64_t j = j0; j < j1; j++) {
                const qlora_adamw_chunk *ch = &opt->chunks[j];
                uint8_t *base = unlimited ? opt->pager.slot_buf[ch->page] : page_base;   // (never evicted)
                bad += qlora__adamw_chunk(opt, ch, base + ch->offset, &c);
            }
        }
        s.nonfinite += bad;
        j0 = j1;
    }
    opt->step = t;
    if (stats) *stats = s;
    return QLORA_OK;
}


// ---------------------------------------------------------------------------------------------
// Optimizer checkpoint implementation
//
// Streams through the pager (a checkpoint of paged state never needs it all in memory) with a
// 64 KiB buffer; FNV-1a 64 covers every byte before the trailer. Load reads the file twice: the
// first pass validates everything (sizes against opt, names, kinds, checksum) without touching
// opt, the second fills it.

#define QLORA__CKPT_MAGIC   "QLORAOPT"
#define QLORA__CKPT_END     "QLORAEND"
#define QLORA__CKPT_VERSION 1
#define QLORA__CKPT_HEADER  256
#define QLORA__CKPT_BUF     (1 << 16)
#define QLORA__CKPT_NAME    1024   // parameter names are shorter than this

static int qlora__host_le(void) {
    uint16_t x = 1;
    uint8_t b;
    memcpy(&b, &x, 1);
    return b == 1;
}

static void qlora__put32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void qlora__put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t qlora__fnv1a(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001B3ull;
    return h;
}

// Byte range of part `part` of a chunk's state: fp32 m, v; 8-bit absmax1, absmax2, codes1, codes2.
static void qlora__ckpt_part(int is8, int64_t k, int part, int64_t *off, int64_t *bytes) {
    int64_t nb = (k + 255) / 256;
    if (!is8) {
        *off = part * 4 * k;
        *bytes = 4 * k;
    } else if (part < 2) {
        *off = part * 4 * nb;
        *bytes = 4 * nb;
    } else {
        *off = 8 * nb + (part - 2) * k;
        *bytes = k;
    }
}

// Bytes of one parameter's record after its name.
static int64_t qlora__ckpt_param_bytes(int is8, int64_t n) {
    return 16 + (is8 ? 8 * ((n + 255) / 256) + 2 * n : 8 * n);
}

typedef struct qlora__ckpt_out {
    qlora_st_writer w;
    uint8_t        *buf;    // (QLORA__CKPT_BUF)
    size_t          len;
    uint64_t        hash;
} qlora__ckpt_out;

static qlora_status qlora__co_flush(qlora__ckpt_out *o, qlora_error *err) {
    qlora_status st = o->len ? qlora__tmp_write(&o->w, o->buf, o->len, err) : QLORA_OK;
    o->len = 0;
    return st;
}

static qlora_status qlora__co_put(qlora__ckpt_out *o, const void *data, size_t n, qlora_error *err) {
    const uint8_t *p = (const uint8_t *)data;
    o->hash = qlora__fnv1a(o->hash, p, n);
    while (n > 0) {
        size_t k = QLORA__CKPT_BUF - o->len < n ? QLORA__CKPT_BUF - o->len : n;
        memcpy(o->buf + o->len, p, k);
        o->len += k;
        p += k;
        n -= k;
        if (o->len == QLORA__CKPT_BUF) {
            qlora_status st = qlora__co_flush(o, err);
            if (st != QLORA_OK) return st;
        }
    }
    return QLORA_OK;
}

QLORADEF qlora_status qlora_adamw_save(qlora_adamw *opt, const char *path, const qlora_resume_info *info,
                                       qlora_error *err) {
    if (!opt || !path) return qlora__fail(err, QLORA_ERR_ARG, "adamw save: NULL optimizer or path");
    if (info && (info->rng_bytes < 0 || (info->rng_bytes > 0 && !info->rng)))
        return qlora__fail(err, QLORA_ERR_ARG, "adamw save %s: rng blob of %lld bytes", path, (long long)info->rng_bytes);
    if (!qlora__host_le()) return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "adamw save %s: big-endian host", path);
    qlora__ckpt_out o;
    memset(&o, 0, sizeof o);
    o.w.fd = -1;
    o.hash = 0xCBF29CE484222325ull;
    o.buf = (uint8_t *)qlora__alloc(QLORA__CKPT_BUF);
    o.w.path = qlora__strdup(path);
    if (!o.buf || !o.w.path) {
        QLORA_FREE(o.buf);
        qlora_st_writer_abort(&o.w);
        return qlora__fail(err, QLORA_ERR_NOMEM, "adamw save %s: out of memory", path);
    }
    qlora_status st = qlora__tmp_create(&o.w, path, err);
    // header
    uint8_t h[QLORA__CKPT_HEADER];
    memset(h, 0, sizeof h);
    memcpy(h, QLORA__CKPT_MAGIC, 8);
    qlora__put32(h + 8, QLORA__CKPT_VERSION);
    qlora__put32(h + 12, QLORA__CKPT_HEADER);
    qlora__put64(h + 16, (uint64_t)opt->step);
    qlora__put64(h + 24, (uint64_t)opt->n_params);
    qlora__put32(h + 32, (uint32_t)opt->cfg.optim_bits);
    qlora__put32(h + 36, (uint32_t)opt->cfg.min_8bit_size);
    qlora__put32(h + 40, (uint32_t)opt->cfg.torch_order);
    qlora__put32(h + 44, 256);
    qlora__put64(h + 48, (uint64_t)(info ? info->rng_bytes : 0));
    for (int i = 0; i < 4; i++) qlora__put64(h + 56 + 8 * i, (uint64_t)(info ? info->data_pos[i] : 0));
    float hp[5] = {opt->cfg.lr, opt->cfg.beta1, opt->cfg.beta2, opt->cfg.eps, opt->cfg.weight_decay};
    for (int i = 0; i < 5; i++) {
        uint32_t u;
        memcpy(&u, &hp[i], 4);
        qlora__put32(h + 88 + 4 * i, u);
    }
    if (st == QLORA_OK) st = qlora__co_put(&o, h, sizeof h, err);
    // parameters, each part streamed chunk by chunk from its pages
    int64_t j0 = 0;
    for (int64_t i = 0; st == QLORA_OK && i < opt->n_params; i++) {
        const qlora_param *q = &opt->params[i];
        int is8 = opt->is8bit[i];
        uint32_t name_len = q->name ? (uint32_t)strlen(q->name) : 0;
        uint8_t rec[16];
        if (name_len >= QLORA__CKPT_NAME) {
            st = qlora__fail(err, QLORA_ERR_ARG, "adamw save %s: parameter name of %u bytes (at most %d)", path,
                             (unsigned)name_len, QLORA__CKPT_NAME - 1);
            break;
        }
        qlora__put32(rec, name_len);
        st = qlora__co_put(&o, rec, 4, err);
        if (st == QLORA_OK && name_len) st = qlora__co_put(&o, q->name, name_len, err);
        qlora__put64(rec, (uint64_t)q->n);
        qlora__put32(rec + 8, (uint32_t)is8);
        qlora__put32(rec + 12, 0);
        if (st == QLORA_OK) st = qlora__co_put(&o, rec, 16, err);
        int64_t j1 = j0;
        while (j1 < opt->n_chunks && opt->chunks[j1].param == i) j1++;
        for (int part = 0; st == QLORA_OK && part < (is8 ? 4 : 2); part++)
            for (int64_t j = j0; st == QLORA_OK && j < j1; j++) {
                const qlora_adamw_chunk *ch = &opt->chunks[j];
                int64_t off, bytes;
                uint8_t *base;
                qlora__ckpt_part(is8, ch->hi - ch->lo, part, &off, &bytes);
                st = qlora_pager_get(&opt->pager, ch->page, 0, &base, err);
                if (st == QLORA_OK) st = qlora__co_put(&o, base + ch->offset + off, (size_t)bytes, err);
            }
        j0 = j1;
    }
    if (st == QLORA_OK && info && info->rng_bytes) st = qlora__co_put(&o, info->rng, (size_t)info->rng_bytes, err);
    if (st == QLORA_OK) {
        uint8_t tail[16];
        qlora__put64(tail, o.hash);
        memcpy(tail + 8, QLORA__CKPT_END, 8);
        st = qlora__co_put(&o, tail, 16, err);
    }
    if (st == QLORA_OK) st = qlora__co_flush(&o, err);
    if (st == QLORA_OK) {
        st = qlora__tmp_commit(&o.w, err);
        QLORA_FREE(o.w.tmp_path);
        o.w.tmp_path = NULL;
    }
    qlora_st_writer_abort(&o.w);
    QLORA_FREE(o.buf);
    return st;
}

typedef struct qlora__ckpt_in {
    FILE       *f;
    const char *path;
    int64_t     pos, size;
    uint64_t    hash;
} qlora__ckpt_in;

// Reads exactly n bytes into dst (NULL: discard through scratch), hashing them.
static qlora_status qlora__ci_get(qlora__ckpt_in *in, void *dst, int64_t n, uint8_t *scratch, const char *what,
                                  qlora_error *err) {
    if (n > in->size - in->pos)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: truncated: %s needs %lld bytes at offset %lld, file has %lld",
                           in->path, what, (long long)n, (long long)in->pos, (long long)in->size);
    uint8_t *p = (uint8_t *)dst;
    while (n > 0) {
        size_t k = dst ? (size_t)n : (size_t)(n < QLORA__CKPT_BUF ? n : QLORA__CKPT_BUF);
        uint8_t *to = dst ? p : scratch;
        if (fread(to, 1, k, in->f) != k)
            return qlora__fail(err, QLORA_ERR_IO, "%s: read failed at offset %lld (%s)", in->path, (long long)in->pos, what);
        in->hash = qlora__fnv1a(in->hash, to, k);
        in->pos += (int64_t)k;
        n -= (int64_t)k;
        if (dst) p += k;
    }
    return QLORA_OK;
}

// One pass over the file; apply = 0 only validates, apply = 1 also fills opt and info.
static qlora_status qlora__adamw_read(qlora_adamw *opt, qlora__ckpt_in *in, qlora_resume_info *info, int apply,
                                      uint8_t *scratch, qlora_error *err) {
    const char *path = in->path;
    uint8_t h[QLORA__CKPT_HEADER];
    qlora_status st = qlora__ci_get(in, h, QLORA__CKPT_HEADER, scratch, "the header", err);
    if (st != QLORA_OK) return st;
    if (memcmp(h, QLORA__CKPT_MAGIC, 8) != 0)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: not a qlora optimizer checkpoint (bad magic)", path);
    if (qlora__ld32(h + 8) != QLORA__CKPT_VERSION || qlora__ld32(h + 12) != QLORA__CKPT_HEADER)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: version %u with a %u-byte header (this build reads version %d)",
                           path, (unsigned)qlora__ld32(h + 8), (unsigned)qlora__ld32(h + 12), QLORA__CKPT_VERSION);
    int64_t step = (int64_t)qlora__ld64(h + 16), n_params = (int64_t)qlora__ld64(h + 24);
    int64_t rng_bytes = (int64_t)qlora__ld64(h + 48);
    int64_t want_rng = info ? info->rng_bytes : 0;
    if (step < 0 || qlora__ld32(h + 44) != 256)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: step %lld, 8-bit blocksize %u", path, (long long)step,
                           (unsigned)qlora__ld32(h + 44));
    if (n_params != opt->n_params)
        return qlora__fail(err, QLORA_ERR_SHAPE, "%s: %lld parameters in the checkpoint, %lld in the optimizer", path,
                           (long long)n_params, (long long)opt->n_params);
    if (rng_bytes != want_rng)
        return qlora__fail(err, QLORA_ERR_SHAPE, "%s: rng state of %lld bytes in the checkpoint, caller expects %lld",
                           path, (long long)rng_bytes, (long long)want_rng);
    int64_t j0 = 0;
    for (int64_t i = 0; i < n_params; i++) {
        const qlora_param *q = &opt->params[i];
        int is8 = opt->is8bit[i];
        uint8_t rec[16];
        char name[QLORA__CKPT_NAME];
        st = qlora__ci_get(in, rec, 4, scratch, "a parameter record", err);
        if (st != QLORA_OK) return st;
        uint32_t name_len = qlora__ld32(rec);
        if (name_len >= sizeof name)
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: parameter %lld has a %u-byte name", path, (long long)i,
                               (unsigned)name_len);
        st = qlora__ci_get(in, name, name_len, scratch, "a parameter name", err);
        if (st == QLORA_OK) st = qlora__ci_get(in, rec, 16, scratch, "a parameter record", err);
        if (st != QLORA_OK) return st;
        name[name_len] = 0;
        const char *label = q->name ? q->name : name;
        if (name_len && q->name && strcmp(name, q->name) != 0)
            return qlora__fail(err, QLORA_ERR_SHAPE, "%s: parameter %lld is '%s' in the checkpoint but '%s' here", path,
                               (long long)i, name, q->name);
        int64_t n = (int64_t)qlora__ld64(rec);
        uint32_t kind = qlora__ld32(rec + 8);
        if (n != q->n)
            return qlora__fail(err, QLORA_ERR_SHAPE, "%s: parameter %lld (%s) has %lld elements in the checkpoint, %lld here",
                               path, (long long)i, label, (long long)n, (long long)q->n);
        if (kind > 1 || qlora__ld32(rec + 12) != 0)
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: parameter %lld (%s): state kind %u", path, (long long)i,
                               label, (unsigned)kind);
        if ((int)kind != is8)
            return qlora__fail(err, QLORA_ERR_SHAPE, "%s: parameter %lld (%s) has %s state in the checkpoint, %s here",
                               path, (long long)i, label, kind ? "8-bit" : "fp32", is8 ? "8-bit" : "fp32");
        if (qlora__ckpt_param_bytes(is8, n) - 16 > in->size - in->pos)
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: truncated: parameter %s needs %lld bytes at offset %lld, file has %lld",
                               path, label, (long long)(qlora__ckpt_param_bytes(is8, n) - 16), (long long)in->pos,
                               (long long)in->size);
        int64_t j1 = j0;
        while (j1 < opt->n_chunks && opt->chunks[j1].param == i) j1++;
        for (int part = 0; part < (is8 ? 4 : 2); part++)
            for (int64_t j = j0; j < j1; j++) {
                const qlora_adamw_chunk *ch = &opt->chunks[j];
                int64_t off, bytes;
                uint8_t *base = NULL;
                qlora__ckpt_part(is8, ch->hi - ch->lo, part, &off, &bytes);
                if (apply) {
                    st = qlora_pager_get(&opt->pager, ch->page, 1, &base, err);
                    if (st != QLORA_OK) return st;
                    base += ch->offset + off;
                }
                st = qlora__ci_get(in, base, bytes, scratch, label, err);
                if (st != QLORA_OK) return st;
            }
        j0 = j1;
    }
    st = qlora__ci_get(in, apply && rng_bytes ? info->rng : NULL, rng_bytes, scratch, "the rng state", err);
    if (st != QLORA_OK) return st;
    uint64_t hash = in->hash;
    uint8_t tail[16];
    st = qlora__ci_get(in, tail, 16, scratch, "the trailer", err);
    if (st != QLORA_OK) return st;
    if (qlora__ld64(tail) != hash || memcmp(tail + 8, QLORA__CKPT_END, 8) != 0)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: checksum mismatch (file damaged)", path);
    if (in->pos != in->size)
        return qlora__fail(err, QLORA_ERR_FORMAT, "%s: %lld unexpected bytes after the trailer", path,
                           (long long)(in->size - in->pos));
    if (apply) {
        opt->step = step;
        if (info)
            for (int i = 0; i < 4; i++) info->data_pos[i] = (int64_t)qlora__ld64(h + 56 + 8 * i);
    }
    return QLORA_OK;
}

QLORADEF qlora_status qlora_adamw_load(qlora_adamw *opt, const char *path, qlora_resume_info *info,
                                       qlora_error *err) {
    if (!opt || !path) return qlora__fail(err, QLORA_ERR_ARG, "adamw load: NULL optimizer or path");
    if (info && (info->rng_bytes < 0 || (info->rng_bytes > 0 && !info->rng)))
        return qlora__fail(err, QLORA_ERR_ARG, "adamw load %s: rng buffer of %lld bytes", path, (long long)info->rng_bytes);
    if (!qlora__host_le()) return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "adamw load %s: big-endian host", path);
    qlora__ckpt_in in;
    memset(&in, 0, sizeof in);
    in.path = path;
    in.f = fopen(path, "rb");
    if (!in.f) return qlora__fail(err, QLORA_ERR_IO, "%s: cannot open: %s", path, qlora__errstr());
    uint8_t *scratch = (uint8_t *)qlora__alloc(QLORA__CKPT_BUF);
    qlora_status st = scratch ? QLORA_OK : qlora__fail(err, QLORA_ERR_NOMEM, "adamw load %s: out of memory", path);
    for (int apply = 0; st == QLORA_OK && apply < 2; apply++) {
        long size;
        if (fseek(in.f, 0, SEEK_END) != 0 || (size = ftell(in.f)) < 0 || fseek(in.f, 0, SEEK_SET) != 0) {
            st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot determine the size: %s", path, qlora__errstr());
            break;
        }
        in.size = size;
        in.pos = 0;
        in.hash = 0xCBF29CE484222325ull;
        st = qlora__adamw_read(opt, &in, info, apply, scratch, err);
    }
    QLORA_FREE(scratch);
    fclose(in.f);
    return st;
}


// ---------------------------------------------------------------------------------------------
// PEFT adapter implementation

#define QLORA__PEFT_PREFIX "base_model.model."

// Creates one directory level; an existing directory is fine.
static qlora_status qlora__mkdir(const char *path, qlora_error *err) {
#ifdef QLORA__POSIX
    struct stat sb;
    if (mkdir(path, 0777) == 0) return QLORA_OK;
    int e = errno;
    if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) return QLORA_OK;
    errno = e;
    return qlora__fail(err, QLORA_ERR_IO, "%s: cannot create directory: %s", path, strerror(e));
#else
    (void)path;
    (void)err;
    return QLORA_OK;   // without POSIX the directory must exist already (the writes will say so)
#endif
}

// name == key, or name ends with "." + key (how PEFT matches target_modules entries and, for
// literal keys, rank_pattern / alpha_pattern).
static int qlora__module_match(const char *name, const char *key) {
    size_t n = strlen(name), k = strlen(key);
    if (n == k) return strcmp(name, key) == 0;
    return n > k && name[n - k - 1] == '.' && strcmp(name + n - k, key) == 0;
}

// Layer index of a module name: the first dot-separated component made only of digits, or -1.
static int64_t qlora__module_layer(const char *name) {
    const char *s = name;
    while (*s) {
        const char *e = strchr(s, '.');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        int digits = len > 0 && len < 10;
        for (size_t i = 0; digits && i < len; i++) digits = s[i] >= '0' && s[i] <= '9';
        if (digits) return strtol(s, NULL, 10);
        if (!e) break;
        s = e + 1;
    }
    return -1;
}

static int qlora__cmp_st_entry(const void *a, const void *b) {
    return strcmp(((const qlora_st_entry *)a)->name, ((const qlora_st_entry *)b)->name);
}

typedef struct qlora__name_idx { const char *name; int64_t i; } qlora__name_idx;

static int qlora__cmp_name_idx(const void *a, const void *b) {
    return strcmp(((const qlora__name_idx *)a)->name, ((const qlora__name_idx *)b)->name);
}

static int qlora__cmp_cstr(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

// lora_alpha as PEFT writes it: an int when integral (16), else a float (0.5).
static void qlora__jw_alpha(qlora_json_writer *w, float alpha) {
    if (alpha == floorf(alpha) && fabsf(alpha) < 16777216.0f) qlora_jw_int(w, (int64_t)alpha);
    else qlora_jw_float(w, alpha);
}

// The most frequent value of v[0..n) (the first one on ties).
static float qlora__mode_f32(const float *v, int64_t n) {
    float best = v[0];
    int64_t best_count = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t c = 0;
        for (int64_t j = 0; j < n; j++) c += v[j] == v[i];
        if (c > best_count) { best = v[i]; best_count = c; }
    }
    return best;
}

// Whether target_modules as the modules' last name components (targets, sorted) selects exactly the modules:
// every layer that has one of the suffixes has all of them, once (PEFT selects "model.layers.3.self_attn.q_proj"
// by "q_proj" in every layer, so an adapter that leaves a module out must name its modules in full).
static int qlora__adapter_suffixes_exact(const qlora_adapter_module *mods, int64_t n, const char *const *targets) {
    int64_t n_suffix = 0, n_layer = 0;
    for (int64_t k = 0; k < n; k++) n_suffix += k == 0 || strcmp(targets[k], targets[k - 1]) != 0;
    for (int64_t i = 0; i < n; i++) {
        const int64_t li = qlora__module_layer(mods[i].name);
        int64_t first = 1;   // i is the first module of its layer
        const char *di = strrchr(mods[i].name, '.');
        for (int64_t j = 0; j < i && first; j++) first = qlora__module_layer(mods[j].name) != li;
        n_layer += first;
        for (int64_t j = 0; j < i; j++) {   // one module per (layer, suffix)
            const char *dj = strrchr(mods[j].name, '.');
            if (qlora__module_layer(mods[j].name) == li &&
                strcmp(dj ? dj + 1 : mods[j].name, di ? di + 1 : mods[i].name) == 0)
                return 0;
        }
    }
    return n == n_layer * n_suffix;
}

// The body of qlora_adapter_save once its buffers exist (the caller frees them).
static qlora_status qlora__adapter_save_impl(const char *dir, const qlora_adapter_module *mods, int64_t n,
                                             const char *base_model, qlora_st_entry *ent, char *names, float *ranks,
                                             float *alphas, qlora__name_idx *order, const char **targets, char *path,
                                             qlora_json_writer *w, qlora_error *err) {
    qlora_status st = QLORA_OK;
    char *np = names;
    for (int64_t i = 0; i < n; i++) {
        const qlora_lora *l = mods[i].lora;
        for (int ab = 0; ab < 2; ab++) {
            qlora_st_entry *e = &ent[2 * i + ab];
            int len = sprintf(np, "%s%s.lora_%c.weight", QLORA__PEFT_PREFIX, mods[i].name, ab ? 'B' : 'A');
            e->name = np;
            np += len + 1;
            e->dtype = QLORA_DTYPE_F32;
            e->ndim = 2;
            e->shape[0] = ab ? l->out : l->rank;   // A (rank, in), B (out, rank)
            e->shape[1] = ab ? l->rank : l->in;
            e->data = ab ? (const void *)l->B : (const void *)l->A;
        }
        ranks[i] = (float)l->rank;
        alphas[i] = l->alpha;
        order[i].name = mods[i].name;
        order[i].i = i;
        const char *dot = strrchr(mods[i].name, '.');
        targets[i] = dot ? dot + 1 : mods[i].name;
    }
    qsort(ent, (size_t)(2 * n), sizeof *ent, qlora__cmp_st_entry);   // Python's order for one dtype
    qsort(order, (size_t)n, sizeof *order, qlora__cmp_name_idx);
    qsort(targets, (size_t)n, sizeof *targets, qlora__cmp_cstr);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(order[i].name, order[i - 1].name) == 0) {
            st = qlora__fail(err, QLORA_ERR_ARG, "adapter save %s: module %s listed twice", dir, order[i].name);
            return st;
        }
    sprintf(path, "%s/adapter_model.safetensors", dir);
    st = qlora_safetensors_write(path, ent, 2 * n, NULL, err);
    if (st != QLORA_OK) return st;

    {
        float r_default = qlora__mode_f32(ranks, n), alpha_default = qlora__mode_f32(alphas, n);
        const qlora_lora *l0 = mods[0].lora;
        // LoraConfig fields in sorted order (json.dumps(indent=2, sort_keys=True) as PEFT writes)
        qlora_jw_object_begin(w);
        qlora_jw_key(w, "alpha_pattern");
        qlora_jw_object_begin(w);
        for (int64_t k = 0; k < n; k++)
            if (alphas[order[k].i] != alpha_default) {
                qlora_jw_key(w, order[k].name);
                qlora__jw_alpha(w, alphas[order[k].i]);
            }
        qlora_jw_object_end(w);
        qlora_jw_key(w, "base_model_name_or_path");
        qlora_jw_string(w, base_model);
        qlora_jw_key(w, "bias");
        qlora_jw_string(w, "none");
        qlora_jw_key(w, "fan_in_fan_out");
        qlora_jw_bool(w, 0);
        qlora_jw_key(w, "inference_mode");
        qlora_jw_bool(w, 1);
        qlora_jw_key(w, "init_lora_weights");
        qlora_jw_bool(w, 1);
        qlora_jw_key(w, "layers_pattern");
        qlora_jw_null(w);
        qlora_jw_key(w, "layers_to_transform");
        qlora_jw_null(w);
        qlora_jw_key(w, "lora_alpha");
        qlora__jw_alpha(w, alpha_default);
        qlora_jw_key(w, "lora_bias");
        qlora_jw_bool(w, 0);
        qlora_jw_key(w, "lora_dropout");
        qlora_jw_float(w, l0->dropout);
        qlora_jw_key(w, "modules_to_save");
        qlora_jw_null(w);
        qlora_jw_key(w, "peft_type");
        qlora_jw_string(w, "LORA");
        qlora_jw_key(w, "r");
        qlora_jw_int(w, (int64_t)r_default);
        qlora_jw_key(w, "rank_pattern");
        qlora_jw_object_begin(w);
        for (int64_t k = 0; k < n; k++)
            if (ranks[order[k].i] != r_default) {
                qlora_jw_key(w, order[k].name);
                qlora_jw_int(w, (int64_t)ranks[order[k].i]);
            }
        qlora_jw_object_end(w);
        qlora_jw_key(w, "revision");
        qlora_jw_null(w);
        qlora_jw_key(w, "target_modules");
        qlora_jw_array_begin(w);
        if (qlora__adapter_suffixes_exact(mods, n, targets)) {   // ["q_proj", "v_proj", ...], as PEFT users write
            for (int64_t k = 0; k < n; k++)
                if (k == 0 || strcmp(targets[k], targets[k - 1]) != 0) qlora_jw_string(w, targets[k]);
        } else {   // the suffixes would also select modules left out: every module by its name
            for (int64_t k = 0; k < n; k++) qlora_jw_string(w, order[k].name);
        }
        qlora_jw_array_end(w);
        qlora_jw_key(w, "task_type");
        qlora_jw_string(w, "CAUSAL_LM");
        qlora_jw_key(w, "use_dora");
        qlora_jw_bool(w, 0);
        qlora_jw_key(w, "use_rslora");
        qlora_jw_bool(w, l0->use_rslora);
        qlora_jw_object_end(w);
        st = qlora_jw_finish(w, 0, err);   // PEFT writes no trailing newline
        if (st != QLORA_OK) return st;
        sprintf(path, "%s/adapter_config.json", dir);
        st = qlora_write_file_atomic(path, w->buf, w->len, err);
    }
    return st;
}

QLORADEF qlora_status qlora_adapter_save(const char *dir, const qlora_adapter_module *mods, int64_t n,
                                         const char *base_model, qlora_error *err) {
    if (!dir || !mods || n <= 0) return qlora__fail(err, QLORA_ERR_ARG, "adapter save: NULL directory or no modules");
    if (!qlora__host_le()) return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "adapter save %s: big-endian host", dir);
    for (int64_t i = 0; i < n; i++) {
        const qlora_adapter_module *m = &mods[i];
        if (!m->name || !*m->name || !m->lora || !m->lora->A || !m->lora->B)
            return qlora__fail(err, QLORA_ERR_ARG, "adapter save %s: module %lld (%s) has no name or no weights", dir,
                               (long long)i, m->name ? m->name : "NULL");
        if ((m->in && m->in != m->lora->in) || (m->out && m->out != m->lora->out))
            return qlora__fail(err, QLORA_ERR_SHAPE, "adapter save %s: module %s is (%lld, %lld), expected (%lld, %lld)",
                               dir, m->name, (long long)m->lora->out, (long long)m->lora->in, (long long)m->out,
                               (long long)m->in);
        if (m->lora->dropout != mods[0].lora->dropout || m->lora->use_rslora != mods[0].lora->use_rslora)
            return qlora__fail(err, QLORA_ERR_ARG,
                               "adapter save %s: module %s has dropout %g / rsLoRA %d, module %s %g / %d (PEFT "
                               "stores one value)", dir, m->name, (double)m->lora->dropout, (int)m->lora->use_rslora,
                               mods[0].name, (double)mods[0].lora->dropout, (int)mods[0].lora->use_rslora);
    }
    qlora_status st = qlora__mkdir(dir, err);
    if (st != QLORA_OK) return st;
    // buffers: entries, their names, ranks/alphas, names sorted, target module names
    size_t name_bytes = 0;
    for (int64_t i = 0; i < n; i++) name_bytes += 2 * (strlen(mods[i].name) + sizeof(QLORA__PEFT_PREFIX) + 16);
    qlora_st_entry *ent = (qlora_st_entry *)qlora__calloc(2 * n * (int64_t)sizeof(qlora_st_entry));
    char *names = (char *)qlora__alloc((int64_t)name_bytes);
    float *ranks = (float *)qlora__alloc(n * 4), *alphas = (float *)qlora__alloc(n * 4);
    qlora__name_idx *order = (qlora__name_idx *)qlora__alloc(n * (int64_t)sizeof(qlora__name_idx));
    const char **targets = (const char **)qlora__alloc(n * (int64_t)sizeof(char *));
    char *path = (char *)qlora__alloc((int64_t)strlen(dir) + 40);
    qlora_json_writer w;
    qlora_jw_init(&w, 2, 0);
    if (!ent || !names || !ranks || !alphas || !order || !targets || !path) {
        st = qlora__fail(err, QLORA_ERR_NOMEM, "adapter save %s: out of memory", dir);
        goto done;
    }
    st = qlora__adapter_save_impl(dir, mods, n, base_model, ent, names, ranks, alphas, order, targets, path, &w, err);
done:
    qlora_jw_free(&w);
    QLORA_FREE(ent);
    QLORA_FREE(names);
    QLORA_FREE(ranks);
    QLORA_FREE(alphas);
    QLORA_FREE(order);
    QLORA_FREE(targets);
    QLORA_FREE(path);
    return st;
}

// What the file holds for one requested module.
typedef struct qlora__adapter_slot {
    const qlora_st_tensor *a, *b;
    int32_t                rank;
    float                  alpha;
} qlora__adapter_slot;

// rank_pattern / alpha_pattern: the first key that names the module (regex keys are refused).
static const qlora_json *qlora__pattern_get(const qlora_json *pat, const char *module) {
    if (!pat || pat->type != QLORA_JSON_OBJECT) return NULL;
    for (int64_t i = 0; i < pat->count; i++)
        if (qlora__module_match(module, pat->keys[i])) return &pat->items[i];
    return NULL;
}

static qlora_status qlora__pattern_check(const qlora_json *pat, const char *what, const char *path, qlora_error *err) {
    if (!pat || pat->type == QLORA_JSON_NULL) return QLORA_OK;
    if (pat->type != QLORA_JSON_OBJECT) return qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s is not an object", path, what);
    for (int64_t i = 0; i < pat->count; i++) {
        if (strpbrk(pat->keys[i], "*+?()[]{}|^$\\"))
            return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: %s key '%s' is a regular expression (only module names "
                               "and dotted suffixes are supported)", path, what, pat->keys[i]);
        if (pat->items[i].type != QLORA_JSON_NUMBER || !(pat->items[i].number > 0.0) || !isfinite(pat->items[i].number))
            return qlora__fail(err, QLORA_ERR_FORMAT, "%s: %s['%s'] is not a positive number", path, what, pat->keys[i]);
    }
    return QLORA_OK;
}

// Whether the config's target_modules / layers_to_transform select module `name`. A regex string
// cannot be evaluated here: then presence in the safetensors file decides (returns 0).
static int qlora__adapter_targeted(const qlora_json *cfg, const char *name) {
    const qlora_json *tm = qlora_json_get(cfg, "target_modules");
    if (!tm || tm->type != QLORA_JSON_ARRAY) return 0;
    int hit = 0;
    for (int64_t i = 0; i < tm->count && !hit; i++)
        hit = tm->items[i].type == QLORA_JSON_STRING && qlora__module_match(name, tm->items[i].str);
    if (!hit) return 0;
    const qlora_json *lt = qlora_json_get(cfg, "layers_to_transform");
    if (!lt || lt->type == QLORA_JSON_NULL) return 1;
    int64_t layer = qlora__module_layer(name), v;
    if (qlora_json_as_int(lt, &v)) return v == layer;
    for (int64_t i = 0; lt->type == QLORA_JSON_ARRAY && i < lt->count; i++)
        if (qlora_json_as_int(&lt->items[i], &v) && v == layer) return 1;
    return 0;
}

// The body of qlora_adapter_load once its buffers exist (the caller frees them).
static qlora_status qlora__adapter_load_impl(const char *dir, qlora_adapter_module *mods, int64_t n,
                                             qlora_adapter_config *cfg_out, char *cpath, char *spath,
                                             qlora__adapter_slot *slot, qlora_lora *fresh, qlora_json_doc *doc,
                                             qlora_safetensors *sf, qlora_error *err) {
    qlora_status st = QLORA_OK;
    int64_t loaded = 0;
    sprintf(cpath, "%s/adapter_config.json", dir);
    sprintf(spath, "%s/adapter_model.safetensors", dir);
    st = qlora_json_read_file(doc, cpath, err);
    if (st != QLORA_OK) return st;
    const qlora_json *c = &doc->root;
    if (c->type != QLORA_JSON_OBJECT) {
        st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: not a JSON object", cpath);
        return st;
    }
    // what this loader supports (PEFT defaults for everything absent)
    const char *peft_type = qlora_json_get_string(c, "peft_type", "LORA");
    const char *bias = qlora_json_get_string(c, "bias", "none");
    if (strcmp(peft_type, "LORA") != 0 || qlora_json_get_bool(c, "use_dora", 0) || strcmp(bias, "none") != 0 ||
        qlora_json_get_bool(c, "fan_in_fan_out", 0) || qlora_json_get_bool(c, "lora_bias", 0)) {
        st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: peft_type %s, use_dora %d, bias %s, fan_in_fan_out %d, "
                         "lora_bias %d (supported: LORA, false, none, false, false)", cpath, peft_type,
                         qlora_json_get_bool(c, "use_dora", 0), bias, qlora_json_get_bool(c, "fan_in_fan_out", 0),
                         qlora_json_get_bool(c, "lora_bias", 0));
        return st;
    }
    int64_t r = qlora_json_get_int(c, "r", 8);
    double alpha = qlora_json_get_number(c, "lora_alpha", 8.0), dropout = qlora_json_get_number(c, "lora_dropout", 0.0);
    int rslora = qlora_json_get_bool(c, "use_rslora", 0);
    if (r <= 0 || r > INT32_MAX || !isfinite(alpha) || !(dropout >= 0.0 && dropout < 1.0)) {
        st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: r %lld, lora_alpha %g, lora_dropout %g", cpath, (long long)r, alpha,
                         dropout);
        return st;
    }
    const qlora_json *rank_pat = qlora_json_get(c, "rank_pattern"), *alpha_pat = qlora_json_get(c, "alpha_pattern");
    st = qlora__pattern_check(rank_pat, "rank_pattern", cpath, err);
    if (st == QLORA_OK) st = qlora__pattern_check(alpha_pat, "alpha_pattern", cpath, err);
    if (st != QLORA_OK) return st;

    // tensors: "[base_model.model.]<module>.lora_{A,B}[.<adapter>].weight"
    st = qlora_safetensors_open(sf, spath, err);
    if (st != QLORA_OK) return st;
    for (int64_t t = 0; t < sf->n_tensors; t++) {
        const qlora_st_tensor *ten = &sf->tensors[t];
        const char *key = ten->name;
        if (strncmp(key, QLORA__PEFT_PREFIX, strlen(QLORA__PEFT_PREFIX)) == 0) key += strlen(QLORA__PEFT_PREFIX);
        const char *lp = NULL;
        for (const char *s = strstr(key, ".lora_"); s; s = strstr(s + 1, ".lora_")) lp = s;
        int which = -1;
        if (lp && (lp[6] == 'A' || lp[6] == 'B') && lp[7] == '.') {
            const char *rest = lp + 8, *dot = strchr(rest, '.');
            if (strcmp(rest, "weight") == 0 || (dot && dot > rest && strcmp(dot, ".weight") == 0)) which = lp[6] == 'B';
        }
        if (which < 0) {
            st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: tensor %s is not a LoRA A/B weight (DoRA, embeddings and "
                             "modules_to_save are not supported)", spath, ten->name);
            return st;
        }
        size_t mlen = (size_t)(lp - key);
        int64_t m = -1;
        for (int64_t i = 0; i < n && m < 0; i++)
            if (strlen(mods[i].name) == mlen && strncmp(mods[i].name, key, mlen) == 0) m = i;
        if (m < 0) {
            st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: tensor %s belongs to no module of the model", spath, ten->name);
            return st;
        }
        const qlora_st_tensor **dst = which ? &slot[m].b : &slot[m].a;
        if (*dst) {
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: two lora_%c tensors for module %s (%s and %s)", spath,
                             which ? 'B' : 'A', mods[m].name, (*dst)->name, ten->name);
            return st;
        }
        if (ten->dtype != QLORA_DTYPE_F32 && ten->dtype != QLORA_DTYPE_F16 && ten->dtype != QLORA_DTYPE_BF16) {
            st = qlora__fail(err, QLORA_ERR_UNSUPPORTED, "%s: tensor %s has dtype %s (F32, F16 or BF16 expected)", spath,
                             ten->name, qlora_dtype_name(ten->dtype));
            return st;
        }
        *dst = ten;
    }
    // shapes, ranks and alphas per module, before anything is changed
    for (int64_t i = 0; i < n; i++) {
        const qlora__adapter_slot *s = &slot[i];
        const char *name = mods[i].name;
        if (!s->a && !s->b) {
            if (qlora__adapter_targeted(c, name)) {
                st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: module %s is in target_modules but has no tensors", spath, name);
                return st;
            }
            continue;
        }
        if (!s->a || !s->b) {
            st = qlora__fail(err, QLORA_ERR_FORMAT, "%s: module %s has lora_%c but no lora_%c", spath, name,
                             s->a ? 'A' : 'B', s->a ? 'B' : 'A');
            return st;
        }
        int64_t ar = s->a->ndim == 2 ? s->a->shape[0] : -1, ai = s->a->ndim == 2 ? s->a->shape[1] : -1;
        int64_t bo = s->b->ndim == 2 ? s->b->shape[0] : -1, br = s->b->ndim == 2 ? s->b->shape[1] : -1;
        if (ar <= 0 || ai != mods[i].in || bo != mods[i].out || br != ar) {
            st = qlora__fail(err, QLORA_ERR_SHAPE, "%s: module %s: lora_A has shape [%lld, %lld] and lora_B [%lld, %lld], "
                             "the model expects [r, %lld] and [%lld, r]", spath, name, (long long)ar, (long long)ai,
                             (long long)bo, (long long)br, (long long)mods[i].in, (long long)mods[i].out);
            return st;
        }
        const qlora_json *rp = qlora__pattern_get(rank_pat, name), *ap = qlora__pattern_get(alpha_pat, name);
        int64_t want = rp ? (int64_t)rp->number : r;
        if (want != ar) {
            st = qlora__fail(err, QLORA_ERR_SHAPE, "%s: module %s: %s says rank %lld but lora_A has %lld rows", cpath, name,
                             rp ? "rank_pattern" : "r", (long long)want, (long long)ar);
            return st;
        }
        slot[i].rank = (int32_t)ar;
        slot[i].alpha = (float)(ap ? ap->number : alpha);
    }
    // build the new layers aside; the caller's are replaced only when all succeeded
    for (int64_t i = 0; i < n && st == QLORA_OK; i++) {
        if (!slot[i].a) continue;
        qlora_lora_config lc;
        lc.rank = slot[i].rank;
        lc.alpha = slot[i].alpha;
        lc.dropout = (float)dropout;
        lc.use_rslora = rslora;
        st = qlora_lora_init(&fresh[i], mods[i].in, mods[i].out, &lc, 0, err);
        if (st == QLORA_OK) st = qlora_tensor_to_f32(fresh[i].A, slot[i].a, err);
        if (st == QLORA_OK) st = qlora_tensor_to_f32(fresh[i].B, slot[i].b, err);
        loaded++;
    }
    if (st != QLORA_OK) return st;
    for (int64_t i = 0; i < n; i++) {
        qlora_lora_free(mods[i].lora);
        *mods[i].lora = fresh[i];   // zeroed (A == NULL) for a module the adapter does not touch
        memset(&fresh[i], 0, sizeof fresh[i]);
    }
    if (cfg_out) {
        memset(cfg_out, 0, sizeof *cfg_out);
        cfg_out->r = (int32_t)r;
        cfg_out->lora_alpha = (float)alpha;
        cfg_out->lora_dropout = (float)dropout;
        cfg_out->use_rslora = rslora;
        cfg_out->n_loaded = loaded;
        snprintf(cfg_out->base_model_name_or_path, sizeof cfg_out->base_model_name_or_path, "%s",
                 qlora_json_get_string(c, "base_model_name_or_path", ""));
    }
    return st;
}

QLORADEF qlora_status qlora_adapter_load(const char *dir, qlora_adapter_module *mods, int64_t n,
                                         qlora_adapter_config *cfg_out, qlora_error *err) {
    if (!dir || (!mods && n)) return qlora__fail(err, QLORA_ERR_ARG, "adapter load: NULL directory or modules");
    for (int64_t i = 0; i < n; i++)
        if (!mods[i].name || !mods[i].lora || mods[i].in <= 0 || mods[i].out <= 0)
            return qlora__fail(err, QLORA_ERR_ARG, "adapter load %s: module %lld (%s) needs a name, a lora and its "
                               "(in, out)", dir, (long long)i, mods[i].name ? mods[i].name : "NULL");
    size_t dl = strlen(dir);
    char *cpath = (char *)qlora__alloc((int64_t)dl + 40), *spath = (char *)qlora__alloc((int64_t)dl + 40);
    qlora__adapter_slot *slot = (qlora__adapter_slot *)qlora__calloc(n * (int64_t)sizeof(qlora__adapter_slot));
    qlora_lora *fresh = (qlora_lora *)qlora__calloc(n * (int64_t)sizeof(qlora_lora));
    qlora_json_doc doc;
    qlora_safetensors sf;
    memset(&doc, 0, sizeof doc);
    memset(&sf, 0, sizeof sf);
    qlora_status st = QLORA_OK;
    if (!cpath || !spath || !slot || !fresh) {
        st = qlora__fail(err, QLORA_ERR_NOMEM, "adapter load %s: out of memory", dir);
        goto done;
    }
    st = qlora__adapter_load_impl(dir, mods, n, cfg_out, cpath, spath, slot, fresh, &doc, &sf, err);
done:
    for (int64_t i = 0; fresh && i < n; i++) qlora_lora_free(&fresh[i]);
    qlora_safetensors_close(&sf);
    qlora_json_free(&doc);
    QLORA_FREE(cpath);
    QLORA_FREE(spath);
    QLORA_FREE(slot);
    QLORA_FREE(fresh);
    return st;
}

// ---------------------------------------------------------------------------------------------
// MLflow file store implementation

#define QLORA__MLFLOW_MAX_KEY   250
#define QLORA__MLFLOW_MAX_PARAM 6000
#define QLORA__MLFLOW_MAX_TAG   8000

QLORADEF int qlora_mlflow_key_valid(const char *key) {
    if (!key || !*key || strlen(key) > QLORA__MLFLOW_MAX_KEY) return 0;
    for (const char *s = key; *s; s++) {
        char ch = *s;
        int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '_' ||
                 ch == '.' || ch == '-' || ch == ' ' || ch == ':' || ch == '/';
        if (!ok) return 0;
    }
    // posixpath.normpath(key) == key: no leading / trailing '/', no "//", no "." or ".." component
    if (key[0] == '/' || key[strlen(key) - 1] == '/' || strstr(key, "//")) return 0;
    for (const char *s = key; *s;) {
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if ((len == 1 && s[0] == '.') || (len == 2 && s[0] == '.' && s[1] == '.')) return 0;
        if (!e) break;
        s = e + 1;
    }
    return strncmp(key, "..", 2) != 0;
}

#ifdef QLORA__POSIX
#include <dirent.h>
#include <sys/time.h>
#include <time.h>

// Creates path and its missing parents.
static qlora_status qlora__mkdirs(const char *path, qlora_error *err) {
    char *p = qlora__strdup(path);
    if (!p) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    qlora_status st = QLORA_OK;
    for (char *s = p + 1; *s && st == QLORA_OK; s++)
        if (*s == '/') {
            *s = 0;
            st = qlora__mkdir(p, err);
            *s = '/';
        }
    if (st == QLORA_OK) st = qlora__mkdir(p, err);
    QLORA_FREE(p);
    return st;
}

// Number of code points when s is valid UTF-8 without NUL bytes, else -1.
static int64_t qlora__utf8_chars(const char *s) {
    const unsigned char *p = (const unsigned char *)s;
    int64_t n = 0;
    while (*p) {
        int len = *p < 0x80 ? 1 : (*p >> 5) == 6 ? 2 : (*p >> 4) == 14 ? 3 : (*p >> 3) == 30 ? 4 : 0;
        if (!len || (len == 2 && *p < 0xC2) || (len == 4 && *p > 0xF4)) return -1;
        uint32_t cp = len == 1 ? *p : (uint32_t)(*p & (0x7F >> len));
        for (int i = 1; i < len; i++) {
            if ((p[i] & 0xC0) != 0x80) return -1;
            cp = (cp << 6) | (p[i] & 0x3F);
        }
        if ((len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
            return -1;
        p += len;
        n++;
    }
    return n;
}

// A growable NUL-terminated string; allocation failure is sticky.
typedef struct qlora__sb { char *p; size_t len, cap; int failed; } qlora__sb;

static void qlora__sb_put(qlora__sb *b, const char *s, size_t n) {
    if (b->failed) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *np = (char *)qlora__alloc((int64_t)cap);
        if (!np) { b->failed = 1; return; }
        if (b->p) memcpy(np, b->p, b->len);
        QLORA_FREE(b->p);
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void qlora__sb_str(qlora__sb *b, const char *s) { qlora__sb_put(b, s, strlen(s)); }

static void qlora__sb_printf(qlora__sb *b, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void qlora__sb_printf(qlora__sb *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof tmp) { b->failed = 1; return; }
    qlora__sb_put(b, tmp, (size_t)n);
}

// A YAML string scalar: single-quoted ('' for '), or double-quoted with escapes when it holds
// control characters (a single-quoted scalar would fold its line breaks).
static void qlora__sb_yaml(qlora__sb *b, const char *s) {
    int ctrl = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) ctrl |= *p < 0x20 || *p == 0x7F;
    qlora__sb_put(b, ctrl ? "\"" : "'", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (!ctrl) {
            qlora__sb_put(b, *p == '\'' ? "''" : (const char *)p, 1 + (*p == '\''));
        } else if (*p < 0x20 || *p == 0x7F || *p == '"' || *p == '\\') {
            if (*p == '\n') qlora__sb_str(b, "\\n");
            else if (*p == '\t') qlora__sb_str(b, "\\t");
            else if (*p == '"') qlora__sb_str(b, "\\\"");
            else if (*p == '\\') qlora__sb_str(b, "\\\\");
            else qlora__sb_printf(b, "\\x%02X", *p);
        } else {
            qlora__sb_put(b, (const char *)p, 1);
        }
    }
    qlora__sb_put(b, ctrl ? "\"" : "'", 1);
}

// "key: 'value'\n" with the value quoted (NULL writes null).
static void qlora__sb_yaml_kv(qlora__sb *b, const char *key, const char *value) {
    qlora__sb_printf(b, "%s: ", key);
    if (value) qlora__sb_yaml(b, value);
    else qlora__sb_str(b, "null");
    qlora__sb_str(b, "\n");
}

// file:// URI of an absolute path, percent-encoded like pathlib.Path.as_uri().
static void qlora__sb_file_uri(qlora__sb *b, const char *path) {
    qlora__sb_str(b, "file://");
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        int keep = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
                   *p == '.' || *p == '-' || *p == '~' || *p == '/';
        if (keep) qlora__sb_put(b, (const char *)p, 1);
        else qlora__sb_printf(b, "%%%02X", *p);
    }
}


static int64_t qlora__now_ms(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static int qlora__is_dir(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static int qlora__is_file(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

// Writes data to path through a temp file named after tmp_prefix (a directory MLflow does not
// read as keys), then renames it over path.
static qlora_status qlora__write_via(const char *path, const char *tmp_prefix, const void *data, size_t n,
                                     qlora_error *err) {
    qlora_st_writer w;
    memset(&w, 0, sizeof w);
    w.fd = -1;
    w.path = qlora__strdup(path);
    if (!w.path) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    qlora_status st = qlora__tmp_create(&w, tmp_prefix, err);
    if (st == QLORA_OK) st = qlora__tmp_write(&w, data, n, err);
    if (st == QLORA_OK) {
        st = qlora__tmp_commit(&w, err);
        QLORA_FREE(w.tmp_path);
        w.tmp_path = NULL;
    }
    qlora_st_writer_abort(&w);
    return st;
}

// Writes a YAML builder's text atomically (the temp file goes next to path).
static qlora_status qlora__write_sb(const char *path, qlora__sb *b, qlora_error *err) {
    if (b->failed) return qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", path);
    return qlora_write_file_atomic(path, b->p ? b->p : "", b->len, err);
}

// The value of a top-level "key: value" line of a small YAML file we (or MLflow) wrote: plain,
// 'single' or "double" quoted scalars. Returns a fresh string or NULL.
static char *qlora__yaml_get(const char *text, const char *key) {
    size_t kl = strlen(key);
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, key, kl) != 0 || line[kl] != ':') continue;
        const char *v = line + kl + 1;
        while (*v == ' ') v++;
        const char *end = v;
        while (*end && *end != '\n') end++;
        char *out = (char *)qlora__alloc((int64_t)(end - v) + 1);
        if (!out) return NULL;
        size_t n = 0;
        if (*v == '\'') {
            for (const char *p = v + 1; p < end; p++) {
                if (*p == '\'' && p + 1 < end && p[1] == '\'') { out[n++] = '\''; p++; }
                else if (*p == '\'') break;
                else out[n++] = *p;
            }
        } else if (*v == '"') {
            for (const char *p = v + 1; p < end && *p != '"'; p++) {
                if (*p == '\\' && p + 1 < end) {
                    p++;
                    out[n++] = *p == 'n' ? '\n' : *p == 't' ? '\t' : *p;
                } else {
                    out[n++] = *p;
                }
            }
        } else {
            while (end > v && (end[-1] == ' ' || end[-1] == '\r')) end--;
            memcpy(out, v, (size_t)(end - v));
            n = (size_t)(end - v);
        }
        out[n] = 0;
        return out;
    }
    return NULL;
}

// Absolute, normalized form of path (os.path.abspath: joins the cwd, drops "." and resolves "..").
static char *qlora__abspath(const char *path) {
    qlora__sb b;
    memset(&b, 0, sizeof b);
    if (path[0] != '/') {
        char cwd[4096];
        if (!getcwd(cwd, sizeof cwd)) return NULL;
        qlora__sb_str(&b, cwd);
        qlora__sb_str(&b, "/");
    }
    qlora__sb_str(&b, path);
    if (b.failed) { QLORA_FREE(b.p); return NULL; }
    char *out = (char *)qlora__alloc((int64_t)b.len + 2);
    if (!out) { QLORA_FREE(b.p); return NULL; }
    size_t n = 0;
    for (const char *s = b.p; *s;) {
        while (*s == '/') s++;
        if (!*s) break;
        const char *e = strchr(s, '/');
        size_t len = e ? (size_t)(e - s) : strlen(s);
        if (len == 1 && s[0] == '.') {
        } else if (len == 2 && s[0] == '.' && s[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 0) n--;
        } else {
            out[n++] = '/';
            memcpy(out + n, s, len);
            n += len;
        }
        s += len;
    }
    if (n == 0) out[n++] = '/';
    out[n] = 0;
    QLORA_FREE(b.p);
    return out;
}

static void qlora__run_meta(qlora__sb *b, const qlora_mlflow_run *run) {
    qlora__sb_yaml_kv(b, "artifact_uri", run->artifact_uri);
    qlora__sb_str(b, "deleted_time: null\n");
    if (run->end_time_ms) qlora__sb_printf(b, "end_time: %lld\n", (long long)run->end_time_ms);
    else qlora__sb_str(b, "end_time: null\n");
    qlora__sb_str(b, "entry_point_name: ''\n");
    qlora__sb_yaml_kv(b, "experiment_id", run->experiment_id);
    qlora__sb_str(b, "lifecycle_stage: active\n");
    qlora__sb_yaml_kv(b, "run_id", run->run_id);
    qlora__sb_yaml_kv(b, "run_name", run->run_name);
    qlora__sb_yaml_kv(b, "run_uuid", run->run_id);   // read by MLflow 1.x / 2.x
    qlora__sb_str(b, "source_name: ''\nsource_type: 4\nsource_version: ''\n");
    qlora__sb_printf(b, "start_time: %lld\nstatus: %d\ntags: []\n", (long long)run->start_time_ms, (int)run->status);
    qlora__sb_yaml_kv(b, "user_id", run->user);
}

static qlora_status qlora__write_run_meta(const qlora_mlflow_run *run, qlora_error *err) {
    qlora__sb b;
    memset(&b, 0, sizeof b);
    qlora__run_meta(&b, run);
    qlora__sb p;
    memset(&p, 0, sizeof p);
    qlora__sb_printf(&p, "%s/meta.yaml", run->run_dir);
    qlora_status st = p.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory") : qlora__write_sb(p.p, &b, err);
    QLORA_FREE(b.p);
    QLORA_FREE(p.p);
    return st;
}

// mlruns/<id>/meta.yaml of an experiment (created once; MLflow never needs it rewritten).
static qlora_status qlora__write_experiment(const char *root, const char *id, const char *name, qlora_error *err) {
    qlora__sb dir, b, path;
    memset(&dir, 0, sizeof dir);
    memset(&b, 0, sizeof b);
    memset(&path, 0, sizeof path);
    qlora__sb_printf(&dir, "%s/%s", root, id);
    qlora__sb_printf(&path, "%s/%s/meta.yaml", root, id);
    int64_t now = qlora__now_ms();
    qlora__sb uri;
    memset(&uri, 0, sizeof uri);
    qlora__sb_file_uri(&uri, dir.p ? dir.p : "");
    qlora__sb_yaml_kv(&b, "artifact_location", uri.p);
    qlora__sb_printf(&b, "creation_time: %lld\n", (long long)now);
    qlora__sb_yaml_kv(&b, "experiment_id", id);
    qlora__sb_printf(&b, "last_update_time: %lld\n", (long long)now);
    qlora__sb_str(&b, "lifecycle_stage: active\n");
    qlora__sb_yaml_kv(&b, "name", name);
    qlora_status st = dir.failed || path.failed || uri.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory")
                                                              : qlora__mkdir(dir.p, err);
    if (st == QLORA_OK) st = qlora__write_sb(path.p, &b, err);
    QLORA_FREE(dir.p);
    QLORA_FREE(b.p);
    QLORA_FREE(path.p);
    QLORA_FREE(uri.p);
    return st;
}

// The id of the active experiment called name under root, or "" when none. A deleted experiment
// of that name is QLORA_ERR_ARG (MLflow refuses to reuse its name).
static qlora_status qlora__find_experiment(const char *root, const char *name, char id[24], qlora_error *err) {
    id[0] = 0;
    DIR *d = opendir(root);
    if (!d) return qlora__fail(err, QLORA_ERR_IO, "%s: cannot list: %s", root, strerror(errno));
    qlora_status st = QLORA_OK;
    struct dirent *e;
    while (st == QLORA_OK && (e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        int digits = len > 0 && len < 24;
        for (size_t i = 0; digits && i < len; i++) digits = e->d_name[i] >= '0' && e->d_name[i] <= '9';
        if (!digits) continue;
        qlora__sb p;
        memset(&p, 0, sizeof p);
        qlora__sb_printf(&p, "%s/%s/meta.yaml", root, e->d_name);
        void *text = NULL;
        size_t size = 0;
        if (!p.failed && qlora_read_file(p.p, &text, &size, NULL) == QLORA_OK) {
            char *nm = qlora__yaml_get((const char *)text, "name");
            char *stage = qlora__yaml_get((const char *)text, "lifecycle_stage");
            if (nm && strcmp(nm, name) == 0) {
                if (stage && strcmp(stage, "deleted") == 0)
                    st = qlora__fail(err, QLORA_ERR_ARG, "%s: experiment '%s' (id %s) is deleted", root, name, e->d_name);
                else
                    memcpy(id, e->d_name, len + 1);
            }
            QLORA_FREE(nm);
            QLORA_FREE(stage);
        }
        QLORA_FREE(text);
        QLORA_FREE(p.p);
        if (id[0]) break;
    }
    closedir(d);
    return st;
}

static void qlora__hex(char *out, const uint8_t *b, int n) {
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < n; i++) {
        out[2 * i] = hx[b[i] >> 4];
        out[2 * i + 1] = hx[b[i] & 15];
    }
    out[2 * n] = 0;
}

// uuid4().hex: 16 random bytes, version nibble 4, variant bits 10.
static void qlora__uuid_hex(qlora_rng *rng, char out[33]) {
    uint8_t b[16];
    uint64_t x = qlora_rng_u64(rng), y = qlora_rng_u64(rng);
    for (int i = 0; i < 8; i++) {
        b[i] = (uint8_t)(x >> (8 * i));
        b[8 + i] = (uint8_t)(y >> (8 * i));
    }
    b[6] = (uint8_t)((b[6] & 0x0F) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3F) | 0x80);
    qlora__hex(out, b, 16);
}

// run_dir/<sub>/<key>, with the key validated and its parent folders created.
static qlora_status qlora__run_key_path(qlora_mlflow_run *run, const char *sub, const char *key, qlora__sb *path,
                                        qlora_error *err) {
    if (!run || !run->run_dir) return qlora__fail(err, QLORA_ERR_ARG, "mlflow: run not started");
    if (!qlora_mlflow_key_valid(key))
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow %s: invalid key '%s' (allowed: letters, digits, _ . - space : /; "
                           "at most 250; no leading, trailing or double '/', no '.' or '..' parts)", sub, key ? key : "NULL");
    memset(path, 0, sizeof *path);
    qlora__sb_printf(path, "%s/%s/%s", run->run_dir, sub, key);
    if (path->failed) return qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory");
    qlora_status st = QLORA_OK;
    char *slash = strrchr(path->p, '/');
    *slash = 0;
    if (strchr(key, '/')) {
        st = qlora__mkdirs(path->p, err);
        if (st != QLORA_OK)
            st = qlora__fail(err, QLORA_ERR_ARG, "mlflow %s: key '%s' conflicts with an existing key (a key cannot be "
                             "both a value and a prefix)", sub, key);
    }
    *slash = '/';
    if (st == QLORA_OK && qlora__is_dir(path->p))
        st = qlora__fail(err, QLORA_ERR_ARG, "mlflow %s: key '%s' is already a prefix of other keys", sub, key);
    if (st != QLORA_OK) { QLORA_FREE(path->p); path->p = NULL; }
    return st;
}

// Temp-file prefix inside the run directory (outside metrics/, params/, tags/).
static void qlora__run_tmp(const qlora_mlflow_run *run, qlora__sb *b) {
    memset(b, 0, sizeof *b);
    qlora__sb_printf(b, "%s/.qlora", run->run_dir);
}

static qlora_status qlora__run_value(qlora_mlflow_run *run, const char *sub, const char *key, const char *value,
                                     int64_t max_chars, int immutable, qlora_error *err) {
    if (!value) return qlora__fail(err, QLORA_ERR_ARG, "mlflow %s %s: NULL value", sub, key ? key : "NULL");
    int64_t chars = qlora__utf8_chars(value);
    if (chars < 0 || chars > max_chars)
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow %s %s: value is %s (at most %lld characters of UTF-8)", sub, key,
                           chars < 0 ? "not valid UTF-8" : "too long", (long long)max_chars);
    qlora__sb path, tmp;
    qlora_status st = qlora__run_key_path(run, sub, key, &path, err);
    if (st != QLORA_OK) return st;
    if (immutable && qlora__is_file(path.p)) {
        void *old = NULL;
        size_t n = 0;
        st = qlora_read_file(path.p, &old, &n, err);
        if (st == QLORA_OK && (n != strlen(value) || memcmp(old, value, n) != 0))
            st = qlora__fail(err, QLORA_ERR_ARG, "mlflow param %s: already logged with a different value (params are "
                             "immutable)", key);
        QLORA_FREE(old);
        QLORA_FREE(path.p);
        return st;
    }
    qlora__run_tmp(run, &tmp);
    st = tmp.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory")
                    : qlora__write_via(path.p, tmp.p, value, strlen(value), err);   // no trailing newline
    QLORA_FREE(path.p);
    QLORA_FREE(tmp.p);
    return st;
}

QLORADEF qlora_status qlora_mlflow_log_param(qlora_mlflow_run *run, const char *key, const char *value,
                                             qlora_error *err) {
    return qlora__run_value(run, "params", key, value, QLORA__MLFLOW_MAX_PARAM, 1, err);
}

QLORADEF qlora_status qlora_mlflow_set_tag(qlora_mlflow_run *run, const char *key, const char *value,
                                           qlora_error *err) {
    return qlora__run_value(run, "tags", key, value, QLORA__MLFLOW_MAX_TAG, 0, err);
}

QLORADEF qlora_status qlora_mlflow_log_metric(qlora_mlflow_run *run, const char *key, double value, int64_t step,
                                              int64_t timestamp_ms, qlora_error *err) {
    if (timestamp_ms < 0) return qlora__fail(err, QLORA_ERR_ARG, "mlflow metric %s: negative timestamp", key ? key : "NULL");
    char num[40], line[128];
    if (isnan(value)) strcpy(num, "nan");
    else if (isinf(value)) strcpy(num, value > 0 ? "inf" : "-inf");
    else qlora_format_double(num, value, 0);   // Python's repr, as MLflow writes
    int len = snprintf(line, sizeof line, "%lld %s %lld\n", (long long)(timestamp_ms ? timestamp_ms : qlora__now_ms()),
                       num, (long long)step);
    qlora__sb path;
    qlora_status st = qlora__run_key_path(run, "metrics", key, &path, err);
    if (st != QLORA_OK) return st;
    // One write() per line on an O_APPEND descriptor; a new file appears together with its first
    // line (written to a temp file, then hard-linked into place, which fails if it already exists).
    for (int attempt = 0; attempt < 2 && st == QLORA_OK; attempt++) {
        int fd = open(path.p, O_WRONLY | O_APPEND);
        if (fd >= 0) {
            ssize_t k = write(fd, line, (size_t)len);
            if (k != len) st = qlora__fail(err, QLORA_ERR_IO, "%s: append failed: %s", path.p, k < 0 ? strerror(errno) : "short write");
            close(fd);
            break;
        }
        if (errno != ENOENT) {
            st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot open: %s", path.p, strerror(errno));
            break;
        }
        qlora__sb tmp;
        qlora__run_tmp(run, &tmp);
        qlora_st_writer w;
        memset(&w, 0, sizeof w);
        w.fd = -1;
        st = tmp.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory") : qlora__tmp_create(&w, tmp.p, err);
        if (st == QLORA_OK) st = qlora__tmp_write(&w, line, (size_t)len, err);
        if (st == QLORA_OK) {
            close(w.fd);
            w.fd = -1;
            if (link(w.tmp_path, path.p) == 0) attempt = 2;   // done
            else if (errno != EEXIST) st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot create: %s", path.p, strerror(errno));
        }
        qlora_st_writer_abort(&w);   // removes the temp name
        QLORA_FREE(tmp.p);
    }
    QLORA_FREE(path.p);
    return st;
}

// Copies src to dst through a temp file in the run directory.
static qlora_status qlora__copy_file(qlora_mlflow_run *run, const char *src, const char *dst, qlora_error *err) {
    FILE *f = fopen(src, "rb");
    if (!f) return qlora__fail(err, QLORA_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    qlora__sb tmp;
    qlora__run_tmp(run, &tmp);
    qlora_st_writer w;
    memset(&w, 0, sizeof w);
    w.fd = -1;
    w.path = qlora__strdup(dst);
    char *buf = (char *)qlora__alloc(1 << 20);
    qlora_status st = !w.path || !buf || tmp.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "%s: out of memory", dst)
                                                    : qlora__tmp_create(&w, tmp.p, err);
    while (st == QLORA_OK) {
        size_t k = fread(buf, 1, 1 << 20, f);
        if (k) st = qlora__tmp_write(&w, buf, k, err);
        if (k < (1 << 20)) {
            if (ferror(f)) st = qlora__fail(err, QLORA_ERR_IO, "%s: read failed", src);
            break;
        }
    }
    if (st == QLORA_OK) {
        st = qlora__tmp_commit(&w, err);
        QLORA_FREE(w.tmp_path);
        w.tmp_path = NULL;
    }
    qlora_st_writer_abort(&w);
    fclose(f);
    QLORA_FREE(buf);
    QLORA_FREE(tmp.p);
    return st;
}

QLORADEF qlora_status qlora_mlflow_log_artifact(qlora_mlflow_run *run, const char *src, const char *dest,
                                                qlora_error *err) {
    if (!src) return qlora__fail(err, QLORA_ERR_ARG, "mlflow artifact: NULL source");
    if (!dest) {
        const char *slash = strrchr(src, '/');
        dest = slash ? slash + 1 : src;
    }
    if (!qlora__is_file(src)) return qlora__fail(err, QLORA_ERR_IO, "%s: not a readable regular file", src);
    qlora__sb path;
    qlora_status st = qlora__run_key_path(run, "artifacts", dest, &path, err);
    if (st != QLORA_OK) return st;
    st = qlora__copy_file(run, src, path.p, err);
    QLORA_FREE(path.p);
    return st;
}

QLORADEF qlora_status qlora_mlflow_log_artifacts(qlora_mlflow_run *run, const char *src_dir, const char *dest_dir,
                                                 qlora_error *err) {
    if (!src_dir) return qlora__fail(err, QLORA_ERR_ARG, "mlflow artifacts: NULL source directory");
    DIR *d = opendir(src_dir);
    if (!d) return qlora__fail(err, QLORA_ERR_IO, "%s: cannot list: %s", src_dir, strerror(errno));
    qlora_status st = QLORA_OK;
    struct dirent *e;
    while (st == QLORA_OK && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        qlora__sb src, dst;
        memset(&src, 0, sizeof src);
        memset(&dst, 0, sizeof dst);
        qlora__sb_printf(&src, "%s/%s", src_dir, e->d_name);
        if (dest_dir && *dest_dir) qlora__sb_printf(&dst, "%s/%s", dest_dir, e->d_name);
        else qlora__sb_str(&dst, e->d_name);
        if (src.failed || dst.failed) st = qlora__fail(err, QLORA_ERR_NOMEM, "mlflow artifacts: out of memory");
        else if (qlora__is_dir(src.p)) st = qlora_mlflow_log_artifacts(run, src.p, dst.p, err);
        else if (qlora__is_file(src.p)) st = qlora_mlflow_log_artifact(run, src.p, dst.p, err);
        QLORA_FREE(src.p);
        QLORA_FREE(dst.p);
    }
    closedir(d);
    return st;
}

// "YYYY-MM-DD HH:MM:SS.ffffff" in UTC, as Python's str(datetime.utcnow()) (no fraction when 0).
static void qlora__utc_now(char out[40]) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    time_t s = (time_t)tv.tv_sec;
    struct tm *t = gmtime(&s);
    size_t n = strftime(out, 40, "%Y-%m-%d %H:%M:%S", t);
    if (tv.tv_usec) snprintf(out + n, 40 - n, ".%06ld", (long)tv.tv_usec);
}

static int qlora__yaml_word(const char *s) {
    if (!s || !*s) return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_')) return 0;
    return 1;
}

QLORADEF qlora_status qlora_mlflow_log_model(qlora_mlflow_run *run, const char *artifact_path, const char *flavor,
                                             const char *const *flavor_kv, qlora_error *err) {
    if (!run || !run->run_dir) return qlora__fail(err, QLORA_ERR_ARG, "mlflow log model: run not started");
    if (!artifact_path || !qlora_mlflow_key_valid(artifact_path) || !qlora__yaml_word(flavor))
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow log model: artifact path '%s' or flavor '%s' invalid",
                           artifact_path ? artifact_path : "NULL", flavor ? flavor : "NULL");
    for (int i = 0; flavor_kv && flavor_kv[i]; i += 2)
        if (!qlora__yaml_word(flavor_kv[i]) || !flavor_kv[i + 1])
            return qlora__fail(err, QLORA_ERR_ARG, "mlflow log model: flavor key '%s' invalid or without value", flavor_kv[i]);
    qlora__sb dir, yaml, path, tmp;
    memset(&dir, 0, sizeof dir);
    memset(&yaml, 0, sizeof yaml);
    memset(&path, 0, sizeof path);
    qlora__sb_printf(&dir, "%s/artifacts/%s", run->run_dir, artifact_path);
    qlora__sb_printf(&path, "%s/MLmodel", dir.p ? dir.p : "");
    qlora__run_tmp(run, &tmp);
    char uuid[33], when[40];
    qlora__uuid_hex(&run->rng, uuid);
    qlora__utc_now(when);
    // MLmodel (2.x style: artifact_path relative to the run's artifacts)
    qlora__sb_yaml_kv(&yaml, "artifact_path", artifact_path);
    qlora__sb_printf(&yaml, "flavors:\n  %s:\n", flavor);
    for (int i = 0; flavor_kv && flavor_kv[i]; i += 2) {
        qlora__sb_printf(&yaml, "    %s: ", flavor_kv[i]);
        qlora__sb_yaml(&yaml, flavor_kv[i + 1]);
        qlora__sb_str(&yaml, "\n");
    }
    if (!flavor_kv || !flavor_kv[0]) qlora__sb_str(&yaml, "    {}\n");
    qlora__sb_yaml_kv(&yaml, "model_uuid", uuid);
    qlora__sb_yaml_kv(&yaml, "run_id", run->run_id);
    qlora__sb_yaml_kv(&yaml, "utc_time_created", when);
    qlora_status st = QLORA_OK;
    if (dir.failed || path.failed || tmp.failed || yaml.failed) st = qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory");
    else if (!qlora__is_dir(dir.p)) st = qlora__fail(err, QLORA_ERR_ARG, "mlflow log model: %s is not a directory (log "
                                                     "the model files first)", dir.p);
    else st = qlora__write_via(path.p, tmp.p, yaml.p, yaml.len, err);
    // run tag mlflow.log-model.history: a JSON list, one object per logged model
    qlora_json_writer w;
    qlora_jw_init(&w, 0, 0);
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, "run_id");
    qlora_jw_string(&w, run->run_id);
    qlora_jw_key(&w, "artifact_path");
    qlora_jw_string(&w, artifact_path);
    qlora_jw_key(&w, "utc_time_created");
    qlora_jw_string(&w, when);
    qlora_jw_key(&w, "model_uuid");
    qlora_jw_string(&w, uuid);
    qlora_jw_key(&w, "flavors");
    qlora_jw_object_begin(&w);
    qlora_jw_key(&w, flavor);
    qlora_jw_object_begin(&w);
    for (int i = 0; flavor_kv && flavor_kv[i]; i += 2) {
        qlora_jw_key(&w, flavor_kv[i]);
        qlora_jw_string(&w, flavor_kv[i + 1]);
    }
    qlora_jw_object_end(&w);
    qlora_jw_object_end(&w);
    qlora_jw_object_end(&w);
    if (st == QLORA_OK) st = qlora_jw_finish(&w, 0, err);
    if (st == QLORA_OK) {
        qlora__sb hist, tpath;
        memset(&hist, 0, sizeof hist);
        memset(&tpath, 0, sizeof tpath);
        qlora__sb_printf(&tpath, "%s/tags/mlflow.log-model.history", run->run_dir);
        void *old = NULL;
        size_t n = 0;
        qlora_json_doc doc;
        memset(&doc, 0, sizeof doc);
        int append = !tpath.failed && qlora_read_file(tpath.p, &old, &n, NULL) == QLORA_OK &&
                     qlora_json_parse(&doc, (const char *)old, n, NULL) == QLORA_OK && doc.root.type == QLORA_JSON_ARRAY;
        if (append && doc.root.count > 0) {
            char *close = strrchr((char *)old, ']');
            qlora__sb_put(&hist, (const char *)old, (size_t)(close - (char *)old));
            qlora__sb_str(&hist, ", ");
        } else {
            qlora__sb_str(&hist, "[");
        }
        qlora__sb_put(&hist, w.buf, w.len);
        qlora__sb_str(&hist, "]");
        st = hist.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory")
                         : qlora_mlflow_set_tag(run, "mlflow.log-model.history", hist.p, err);
        qlora_json_free(&doc);
        QLORA_FREE(old);
        QLORA_FREE(hist.p);
        QLORA_FREE(tpath.p);
    }
    qlora_jw_free(&w);
    QLORA_FREE(dir.p);
    QLORA_FREE(yaml.p);
    QLORA_FREE(path.p);
    QLORA_FREE(tmp.p);
    return st;
}

QLORADEF qlora_status qlora_mlflow_register_model(qlora_mlflow_run *run, const char *name,
                                                  const char *artifact_path, int64_t *version, qlora_error *err) {
    if (!run || !run->run_dir) return qlora__fail(err, QLORA_ERR_ARG, "mlflow register: run not started");
    if (!name || !*name || strpbrk(name, "/:%") || strcmp(name, ".") == 0 || strcmp(name, "..") == 0 ||
        strncmp(name, "..", 2) == 0 || qlora__utf8_chars(name) < 0)
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow register: invalid model name '%s' (non-empty, no / : %%)",
                           name ? name : "NULL");
    if (!artifact_path || !qlora_mlflow_key_valid(artifact_path))
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow register: invalid artifact path '%s'", artifact_path ? artifact_path : "NULL");
    qlora__sb mlmodel, models, mdir, meta, vdir, src, yaml;
    memset(&mlmodel, 0, sizeof mlmodel);
    memset(&models, 0, sizeof models);
    memset(&mdir, 0, sizeof mdir);
    memset(&meta, 0, sizeof meta);
    memset(&vdir, 0, sizeof vdir);
    memset(&src, 0, sizeof src);
    memset(&yaml, 0, sizeof yaml);
    qlora__sb_printf(&mlmodel, "%s/artifacts/%s/MLmodel", run->run_dir, artifact_path);
    qlora__sb_printf(&models, "%s/models", run->root);
    qlora__sb_printf(&mdir, "%s/models/%s", run->root, name);
    qlora__sb_printf(&meta, "%s/models/%s/meta.yaml", run->root, name);
    qlora__sb_str(&src, run->artifact_uri);
    qlora__sb_str(&src, "/");
    for (const unsigned char *p = (const unsigned char *)artifact_path; *p; p++) {   // percent-encoded like the root
        int keep = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
                   *p == '.' || *p == '-' || *p == '~' || *p == '/';
        if (keep) qlora__sb_put(&src, (const char *)p, 1);
        else qlora__sb_printf(&src, "%%%02X", *p);
    }
    int64_t now = qlora__now_ms(), created = now, v = 0;
    qlora_status st = QLORA_OK;
    if (mlmodel.failed || models.failed || mdir.failed || meta.failed || src.failed)
        st = qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory");
    else if (!qlora__is_file(mlmodel.p))
        st = qlora__fail(err, QLORA_ERR_ARG, "mlflow register: %s is missing (call qlora_mlflow_log_model first)", mlmodel.p);
    if (st == QLORA_OK) st = qlora__mkdir(models.p, err);
    if (st == QLORA_OK) st = qlora__mkdir(mdir.p, err);
    if (st == QLORA_OK) {
        // keep the registered model's creation time; bump last_updated_timestamp
        void *old = NULL;
        size_t n = 0;
        if (qlora_read_file(meta.p, &old, &n, NULL) == QLORA_OK) {
            char *c = qlora__yaml_get((const char *)old, "creation_timestamp");
            if (c) created = strtoll(c, NULL, 10);
            QLORA_FREE(c);
        }
        QLORA_FREE(old);
        qlora__sb_printf(&yaml, "creation_timestamp: %lld\ndescription: ''\nlast_updated_timestamp: %lld\n",
                         (long long)created, (long long)now);
        qlora__sb_yaml_kv(&yaml, "name", name);
        st = qlora__write_sb(meta.p, &yaml, err);
    }
    if (st == QLORA_OK) {
        // next version = max(existing) + 1; mkdir decides races
        DIR *d = opendir(mdir.p);
        struct dirent *e;
        while (d && (e = readdir(d)) != NULL)
            if (strncmp(e->d_name, "version-", 8) == 0) {
                int64_t k = strtoll(e->d_name + 8, NULL, 10);
                if (k > v) v = k;
            }
        if (d) closedir(d);
        for (int attempt = 0; attempt < 100; attempt++) {
            v++;
            QLORA_FREE(vdir.p);
            memset(&vdir, 0, sizeof vdir);
            qlora__sb_printf(&vdir, "%s/version-%lld", mdir.p, (long long)v);
            if (vdir.failed || mkdir(vdir.p, 0777) == 0 || errno != EEXIST) break;
        }
        if (vdir.failed || !qlora__is_dir(vdir.p))
            st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot create version %lld: %s", mdir.p, (long long)v, strerror(errno));
    }
    if (st == QLORA_OK) {
        QLORA_FREE(yaml.p);
        memset(&yaml, 0, sizeof yaml);
        qlora__sb_printf(&yaml, "creation_timestamp: %lld\ncurrent_stage: 'None'\ndescription: ''\n"
                         "last_updated_timestamp: %lld\n", (long long)now, (long long)now);
        qlora__sb_yaml_kv(&yaml, "name", name);
        qlora__sb_yaml_kv(&yaml, "run_id", run->run_id);
        qlora__sb_str(&yaml, "run_link: null\n");
        qlora__sb_yaml_kv(&yaml, "source", src.p);
        qlora__sb_str(&yaml, "status: READY\nstatus_message: null\n");
        qlora__sb_yaml_kv(&yaml, "storage_location", src.p);
        qlora__sb_str(&yaml, "user_id: null\n");
        qlora__sb_printf(&yaml, "version: %lld\n", (long long)v);
        QLORA_FREE(meta.p);
        memset(&meta, 0, sizeof meta);
        qlora__sb_printf(&meta, "%s/meta.yaml", vdir.p);
        st = meta.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory") : qlora__write_sb(meta.p, &yaml, err);
    }
    if (st == QLORA_OK && version) *version = v;
    QLORA_FREE(mlmodel.p);
    QLORA_FREE(models.p);
    QLORA_FREE(mdir.p);
    QLORA_FREE(meta.p);
    QLORA_FREE(vdir.p);
    QLORA_FREE(src.p);
    QLORA_FREE(yaml.p);
    return st;
}

QLORADEF void qlora_mlflow_run_free(qlora_mlflow_run *run) {
    if (!run) return;
    QLORA_FREE(run->root);
    QLORA_FREE(run->run_dir);
    QLORA_FREE(run->run_name);
    QLORA_FREE(run->user);
    QLORA_FREE(run->artifact_uri);
    memset(run, 0, sizeof *run);
}

static qlora_status qlora__mlflow_start(qlora_mlflow_run *run, const char *root, const qlora_mlflow_options *o,
                                        qlora_error *err) {
    const char *exp_name = o && o->experiment_name ? o->experiment_name : "Default";
    int64_t name_chars = qlora__utf8_chars(exp_name);
    if (name_chars <= 0 || name_chars > 500)
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow: experiment name must be 1-500 characters of UTF-8");
    run->root = qlora__abspath(root);
    if (!run->root) return qlora__fail(err, QLORA_ERR_IO, "%s: cannot make the path absolute", root);
    if (strstr(run->root, "/artifacts/") || (strlen(run->root) >= 10 && strcmp(run->root + strlen(run->root) - 10, "/artifacts") == 0))
        return qlora__fail(err, QLORA_ERR_ARG, "%s: MLflow rejects runs under a folder named 'artifacts'", run->root);
    // root, .trash and the Default experiment
    qlora__sb p;
    memset(&p, 0, sizeof p);
    qlora_status st = qlora__mkdirs(run->root, err);
    qlora__sb_printf(&p, "%s/.trash", run->root);
    if (st == QLORA_OK) st = p.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory") : qlora__mkdir(p.p, err);
    QLORA_FREE(p.p);
    memset(&p, 0, sizeof p);
    qlora__sb_printf(&p, "%s/0/meta.yaml", run->root);
    if (st == QLORA_OK && !p.failed && !qlora__is_file(p.p)) st = qlora__write_experiment(run->root, "0", "Default", err);
    QLORA_FREE(p.p);
    if (st != QLORA_OK) return st;
    // ids: reproducible from the seed, else from the clock, the pid and an address
    uint64_t seed = o && o->seed ? o->seed : 0;
    if (!seed) {
        struct timeval tv;
        gettimeofday(&tv, NULL);
        seed = ((uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec) ^ ((uint64_t)getpid() << 40) ^ (uint64_t)(uintptr_t)run;
    }
    qlora_rng_seed(&run->rng, seed);
    // experiment
    if (strcmp(exp_name, "Default") == 0) {
        strcpy(run->experiment_id, "0");
    } else {
        st = qlora__find_experiment(run->root, exp_name, run->experiment_id, err);
        for (int attempt = 0; st == QLORA_OK && !run->experiment_id[0] && attempt < 100; attempt++) {
            // an 18-digit id with no leading zero, as MLflow generates
            char id[24];
            uint64_t x = qlora_rng_u64(&run->rng) % 900000000000000000ull + 100000000000000000ull;
            snprintf(id, sizeof id, "%llu", (unsigned long long)x);
            memset(&p, 0, sizeof p);
            qlora__sb_printf(&p, "%s/%s", run->root, id);
            if (!p.failed && mkdir(p.p, 0777) == 0) {
                st = qlora__write_experiment(run->root, id, exp_name, err);
                if (st == QLORA_OK) strcpy(run->experiment_id, id);
            }
            QLORA_FREE(p.p);
        }
        if (st == QLORA_OK && !run->experiment_id[0])
            st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot create experiment '%s'", run->root, exp_name);
        if (st != QLORA_OK) return st;
    }
    // run directory (a fresh id if one exists), meta.yaml first, then the required folders
    for (int attempt = 0; attempt < 100 && !run->run_dir; attempt++) {
        qlora__uuid_hex(&run->rng, run->run_id);
        memset(&p, 0, sizeof p);
        qlora__sb_printf(&p, "%s/%s/%s", run->root, run->experiment_id, run->run_id);
        if (p.failed) return qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory");
        if (mkdir(p.p, 0777) == 0) run->run_dir = p.p;
        else if (errno != EEXIST) {
            st = qlora__fail(err, QLORA_ERR_IO, "%s: cannot create: %s", p.p, strerror(errno));
            QLORA_FREE(p.p);
            return st;
        } else QLORA_FREE(p.p);
    }
    if (!run->run_dir) return qlora__fail(err, QLORA_ERR_IO, "%s: no free run id", run->root);
    char default_name[16];
    snprintf(default_name, sizeof default_name, "qlora-%.8s", run->run_id);
    run->run_name = qlora__strdup(o && o->run_name ? o->run_name : default_name);
    run->user = qlora__strdup(o && o->user ? o->user : "unknown");
    qlora__sb uri;
    memset(&uri, 0, sizeof uri);
    qlora__sb_file_uri(&uri, run->run_dir);
    qlora__sb_str(&uri, "/artifacts");
    run->artifact_uri = uri.p;
    if (!run->run_name || !run->user || uri.failed) return qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory");
    run->start_time_ms = o && o->start_time_ms ? o->start_time_ms : qlora__now_ms();
    run->status = QLORA_MLFLOW_RUNNING;
    st = qlora__write_run_meta(run, err);
    static const char *const subs[4] = {"metrics", "params", "tags", "artifacts"};
    for (int i = 0; i < 4 && st == QLORA_OK; i++) {
        memset(&p, 0, sizeof p);
        qlora__sb_printf(&p, "%s/%s", run->run_dir, subs[i]);
        st = p.failed ? qlora__fail(err, QLORA_ERR_NOMEM, "mlflow: out of memory") : qlora__mkdir(p.p, err);
        QLORA_FREE(p.p);
    }
    if (st == QLORA_OK) st = qlora_mlflow_set_tag(run, "mlflow.runName", run->run_name, err);
    if (st == QLORA_OK) st = qlora_mlflow_set_tag(run, "mlflow.user", run->user, err);
    if (st == QLORA_OK) st = qlora_mlflow_set_tag(run, "mlflow.source.name", o && o->source_name ? o->source_name : "", err);
    if (st == QLORA_OK) st = qlora_mlflow_set_tag(run, "mlflow.source.type", "LOCAL", err);
    if (st == QLORA_OK && o && o->git_commit) st = qlora_mlflow_set_tag(run, "mlflow.source.git.commit", o->git_commit, err);
    return st;
}

QLORADEF qlora_status qlora_mlflow_run_start(qlora_mlflow_run *run, const char *root, const qlora_mlflow_options *opts,
                                             qlora_error *err) {
    if (!run || !root || !*root) return qlora__fail(err, QLORA_ERR_ARG, "mlflow run start: NULL run or root");
    memset(run, 0, sizeof *run);
    if ((opts && opts->run_name && qlora__utf8_chars(opts->run_name) < 0) ||
        (opts && opts->user && qlora__utf8_chars(opts->user) < 0))
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow run start: run name or user is not valid UTF-8");
    qlora_status st = qlora__mlflow_start(run, root, opts, err);
    if (st != QLORA_OK) qlora_mlflow_run_free(run);
    return st;
}

QLORADEF qlora_status qlora_mlflow_run_end(qlora_mlflow_run *run, qlora_mlflow_status status, qlora_error *err) {
    if (!run || !run->run_dir) return qlora__fail(err, QLORA_ERR_ARG, "mlflow run end: run not started");
    if (status != QLORA_MLFLOW_FINISHED && status != QLORA_MLFLOW_FAILED && status != QLORA_MLFLOW_KILLED)
        return qlora__fail(err, QLORA_ERR_ARG, "mlflow run end: status %d (FINISHED 3, FAILED 4 or KILLED 5)", (int)status);
    run->status = status;
    run->end_time_ms = qlora__now_ms();
    if (run->end_time_ms < run->start_time_ms) run->end_time_ms = run->start_time_ms;
    return qlora__write_run_meta(run, err);
}

#else   // no POSIX: every MLflow call is unsupported

QLORADEF qlora_status qlora_mlflow_run_start(qlora_mlflow_run *run, const char *root, const qlora_mlflow_options *opts,
                                             qlora_error *err) {
    (void)root; (void)opts;
    if (run) memset(run, 0, sizeof *run);
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_log_param(qlora_mlflow_run *run, const char *key, const char *value, qlora_error *err) {
    (void)run; (void)key; (void)value;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_log_metric(qlora_mlflow_run *run, const char *key, double value, int64_t step,
                                              int64_t timestamp_ms, qlora_error *err) {
    (void)run; (void)key; (void)value; (void)step; (void)timestamp_ms;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_set_tag(qlora_mlflow_run *run, const char *key, const char *value, qlora_error *err) {
    (void)run; (void)key; (void)value;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_log_artifact(qlora_mlflow_run *run, const char *src, const char *dest, qlora_error *err) {
    (void)run; (void)src; (void)dest;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_log_artifacts(qlora_mlflow_run *run, const char *src_dir, const char *dest_dir,
                                                 qlora_error *err) {
    (void)run; (void)src_dir; (void)dest_dir;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_log_model(qlora_mlflow_run *run, const char *artifact_path, const char *flavor,
                                             const char *const *flavor_kv, qlora_error *err) {
    (void)run; (void)artifact_path; (void)flavor; (void)flavor_kv;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_register_model(qlora_mlflow_run *run, const char *name, const char *artifact_path,
                                                  int64_t *version, qlora_error *err) {
    (void)run; (void)name; (void)artifact_path; (void)version;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF qlora_status qlora_mlflow_run_end(qlora_mlflow_run *run, qlora_mlflow_status status, qlora_error *err) {
    (void)run; (void)status;
    return qlora__fail(err, QLORA_ERR_UNSUPPORTED, "mlflow: needs a POSIX system");
}
QLORADEF void qlora_mlflow_run_free(qlora_mlflow_run *run) {
    if (run) memset(run, 0, sizeof *run);
}

#endif   // QLORA__POSIX

#endif // QLORA__IMPLEMENTED
#endif // QLORA_IMPLEMENTATION

/*
   REVISION HISTORY
      0.1  first release: NF4 + DQ, NF4 dequant-matmul kernels, LoRA layers.

   LICENSE
      MIT License. Copyright (c) 2026 the qlora.h authors. See LICENSE.
*/
