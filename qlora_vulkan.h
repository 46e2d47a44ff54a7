/* qlora_vulkan.h - v0.1 - Vulkan compute backend for qlora.h (NF4 dequant-matmul). MIT license.

   Do this:
      #define QLORA_VULKAN_IMPLEMENTATION
   before you include this file in *one* C or C++ file, after qlora.h:
      #include "qlora.h"
      #define QLORA_VULKAN_IMPLEMENTATION
      #include "qlora_vulkan.h"
   (qlora.h's own QLORA_IMPLEMENTATION may live in the same or in another file.)

   TABLE OF CONTENTS
      1. public API: context, options, devices, the qlora_backend table, residency, direct calls, stats
      2. implementation: loader, instance/device, buffers, pipelines, resident weights, dispatch

   QUICK START
      qlora_vk *vk = NULL;
      qlora_vk_options opt;  memset(&opt, 0, sizeof opt);              // zero = defaults
      if (qlora_vk_init(&vk, &opt, &err) == QLORA_OK) {
          qlora_exec ex = { QLORA_KERNEL_AUTO, qlora_vk_backend(vk), QLORA_COMPUTE_F32 };
          qlora_nf4_linear_forward(&ex, y, x, &w, M, &err);            // runs on the GPU
          qlora_vk_release(vk, &w);                                    // before qlora_nf4_free(&w)
          qlora_vk_free(vk);
      }                                                                 // else: CPU path, no GPU

   BUILDING
      The implementation needs the Vulkan HEADERS (<vulkan/vulkan.h>; Debian: libvulkan-dev) but NOT the
      Vulkan library at link time: it opens the loader at run time (libvulkan.so.1, vulkan-1.dll,
      libvulkan.1.dylib) with dlopen/LoadLibrary and fetches every entry point through
      vkGetInstanceProcAddr, so it builds with VK_NO_PROTOTYPES and no -lvulkan. On glibc >= 2.34 dlopen
      is in libc; older glibc needs -ldl. Without a loader or a usable device, qlora_vk_init returns
      QLORA_ERR_UNSUPPORTED and the caller keeps the CPU path. The SPIR-V comes from the generated header
      shaders/qlora_shaders.h (next to this file; regenerate with tools/gen_shaders.sh, needs glslc).

   WHAT RUNS ON THE DEVICE
      nf4_linear_forward   Y (M, out) = X (M, in) · dequant(W)ᵀ    shaders/linear_nf4_forward.comp (GEMM)
                                                                   shaders/linear_nf4_gemv.comp (M <= 8)
      nf4_linear_backward  dX (M, in) += dY (M, out) · dequant(W)  shaders/linear_nf4_backward.comp
      qlora_vk_nf4_dequantize (debugging)                           shaders/nf4_dequantize.comp
      All arithmetic is fp32 (fp32 activations, fp32 accumulation); NF4 codes are read as uint words and
      DQ absmax is decoded on the fly (absmax = map[q] · nested_absmax[b / 256] + offset). The LoRA
      matmuls (rank r << in, out) stay on the CPU: their cost is small and a round trip would dominate.

   RESIDENCY
      A weight is uploaded on first use and stays resident; the copy is found again through
      w->backend_data (which the backend writes even through a const qlora_nf4 *). Call
      qlora_vk_release(vk, w) before freeing or changing w's arrays; qlora_vk_free releases everything.
      Weights larger than maxStorageBufferRange (or options.max_binding_bytes) are cut into row chunks,
      each its own buffer and dispatch; activations are processed in row slabs for the same reason.

   DEVICE CHOICE (qlora_vk_init)
      Discrete GPU > integrated > virtual > other. CPU devices (Mesa lavapipe) only when
      options.allow_cpu is set. QLORA_VK_DEVICE=<index or name substring> overrides everything
      (and may name a CPU device). QLORA_VK_VALIDATION=1 enables VK_LAYER_KHRONOS_validation with a
      counting debug-utils messenger, =gpu adds GPU-assisted validation, =0 disables it.

   ERRORS & THREAD SAFETY
      Every Vulkan failure returns QLORA_ERR_BACKEND with the call, the VkResult name and number in the
      detail. No Vulkan loader / driver / suitable device → QLORA_ERR_UNSUPPORTED. The backend never
      prints, exits or aborts. A qlora_vk context is not thread-safe: use one per thread or lock around
      it. After QLORA_ERR_BACKEND (e.g. VK_ERROR_DEVICE_LOST) free the context.

   LIMITATIONS
      Calls are synchronous: each one copies X (and dX) to the device, runs, and copies the result back
      (one submission per activation slab). No fp16-storage or subgroup variants yet, no cooperative
      matrices; the kernels were validated on lavapipe only (tools/gpu_check.sh runs them on a GPU).

   LICENSE: MIT, see qlora.h.
*/
#ifndef QLORA_VULKAN_H
#define QLORA_VULKAN_H

#ifndef QLORA_H
#error "include qlora.h before qlora_vulkan.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------------------------------------
// 1. public API

typedef struct qlora_vk qlora_vk;   // opaque: instance, device, pipelines, resident weights

// Zero-initialized options are the defaults.
typedef struct qlora_vk_options {
    const char *device;            // device index ("1") or name substring; NULL/"": automatic choice
    int32_t     allow_cpu;         // 1: the automatic choice may take a CPU device (lavapipe)
    int32_t     validation;        // 1: validation layer + message counter; 2: plus GPU-assisted validation
    int32_t     gemm_variant;      // 0 auto; 1 small (8×8 tile, 16 invocations); 2 medium (64×64, 256);
                                   //   3 large (128×128, 256)
    int32_t     gemv_threads;      // 0 auto; else GEMV / dequantize workgroup size, a power of two 8..256
    int32_t     gemv_max_m;        // forward uses the GEMV kernel for M <= this (0: 8, at most 8; -1: never)
    int64_t     max_binding_bytes; // 0: device limit; else a smaller cap per storage binding (forces splits)
    uint32_t    max_workgroups;    // 0: device limit; else a smaller cap per dispatch dimension (folds)
    int32_t     poison_outputs;    // 1: NaN-fill the device output before each forward / dequantize (tests)
    int32_t     force_staging;     // 1: copy through host staging buffers even on host-visible device memory
                                   //   (the discrete-GPU path, for tests on lavapipe / integrated GPUs)
} qlora_vk_options;

// Creates a context on the chosen device. *ctx is NULL on failure.
// QLORA_ERR_UNSUPPORTED: no loader, no driver, no suitable device (or the validation layer is missing).
QLORADEF qlora_status qlora_vk_init(qlora_vk **ctx, const qlora_vk_options *opt, qlora_error *err);
// Waits for the device, releases every resident weight and the device. NULL is a no-op.
QLORADEF void         qlora_vk_free(qlora_vk *ctx);
// Number of Vulkan physical devices (all types, CPU included). No loader → QLORA_ERR_UNSUPPORTED.
QLORADEF qlora_status qlora_vk_device_count(int32_t *count, qlora_error *err);
// Name of device `index` with its type, e.g. "llvmpipe (LLVM 15.0.6, 256 bits) [cpu]", into name (cap bytes).
QLORADEF qlora_status qlora_vk_device_name(int32_t index, char *name, size_t cap, qlora_error *err);
// The backend table to put in a qlora_exec; valid until qlora_vk_free.
QLORADEF const qlora_backend *qlora_vk_backend(qlora_vk *ctx);
// The device the context runs on, e.g. "NVIDIA H200 [discrete, device 0]".
QLORADEF const char  *qlora_vk_name(const qlora_vk *ctx);
// Validation messages (warnings and errors) received so far, and the text of the last one ("" if none).
QLORADEF int64_t      qlora_vk_validation_messages(const qlora_vk *ctx);
QLORADEF const char  *qlora_vk_validation_last(const qlora_vk *ctx);

// Work this context has done on the device so far (reports, and tests that the backend was used).
typedef struct qlora_vk_stats {
    int64_t forward;      // nf4_linear_forward calls completed (GEMM and GEMV)
    int64_t backward;     // nf4_linear_backward calls completed
    int64_t dequantize;   // qlora_vk_nf4_dequantize calls completed
    int64_t uploads;      // weights made resident
    double  flops;        // 2·M·rows·cols summed over the forward and backward calls
} qlora_vk_stats;
QLORADEF qlora_vk_stats qlora_vk_get_stats(const qlora_vk *ctx);   // zeros for NULL

// Uploads w now (otherwise the first forward/backward does). Idempotent.
QLORADEF qlora_status qlora_vk_upload(qlora_vk *ctx, const qlora_nf4 *w, qlora_error *err);
// Drops w's resident copy and clears w->backend_data if it is this context's. Unknown w: no-op.
QLORADEF void         qlora_vk_release(qlora_vk *ctx, qlora_nf4 *w);

// Direct calls (what the backend table runs). Same contracts as the qlora.h functions.
// y (M, w->rows) = x (M, w->cols) · dequant(w)ᵀ. Overwrites y.
QLORADEF qlora_status qlora_vk_nf4_linear_forward(qlora_vk *ctx, float *y, const float *x, const qlora_nf4 *w,
                                                  int64_t M, qlora_error *err);
// dx (M, w->cols) += dy (M, w->rows) · dequant(w). Accumulates.
QLORADEF qlora_status qlora_vk_nf4_linear_backward(qlora_vk *ctx, float *dx, const float *dy,
                                                   const qlora_nf4 *w, int64_t M, qlora_error *err);
// out (w->rows, w->cols) = dequant(w) computed on the device.
QLORADEF qlora_status qlora_vk_nf4_dequantize(qlora_vk *ctx, float *out, const qlora_nf4 *w,
                                              qlora_error *err);

// Benchmark helper: `reps` forward (backward = 0) or backward (backward = 1) passes over M rows on
// device-resident activations (contents unspecified), recorded in one submission; returns when done.
// Time it with the host clock; no host transfer is included.
QLORADEF qlora_status qlora_vk_bench_linear(qlora_vk *ctx, const qlora_nf4 *w, int64_t M, int backward,
                                            int reps, qlora_error *err);
// Benchmark helper: `reps` device-to-device copies of `bytes` in one submission.
QLORADEF qlora_status qlora_vk_bench_copy(qlora_vk *ctx, int64_t bytes, int reps, qlora_error *err);

#ifdef __cplusplus
}
#endif

#endif // QLORA_VULKAN_H

// =============================================================================================
//                                     IMPLEMENTATION
// =============================================================================================
#ifdef QLORA_VULKAN_IMPLEMENTATION
#ifndef QLORA_VULKAN__IMPLEMENTED
#define QLORA_VULKAN__IMPLEMENTED

#ifndef VK_NO_PROTOTYPES
#define VK_NO_PROTOTYPES
#endif
#include <vulkan/vulkan.h>

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(_WIN32)
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <dlfcn.h>
#endif

#include "shaders/qlora_shaders.h"

#if defined(QLORA_MALLOC) != defined(QLORA_FREE)
#error "Define both or neither of QLORA_MALLOC and QLORA_FREE"
#endif
#ifndef QLORA_MALLOC
#define QLORA_MALLOC(sz) malloc(sz)
#define QLORA_FREE(p)    free(p)
#endif

// ---------------------------------------------------------------------------------------------
// 2.1 entry points, loaded at run time (X-macro tables)

#define QLORA__VK_GLOBAL_FUNCS(X)                                                                   \
    X(vkCreateInstance) X(vkEnumerateInstanceLayerProperties) X(vkEnumerateInstanceExtensionProperties)

#define QLORA__VK_INSTANCE_FUNCS(X)                                                                 \
    X(vkDestroyInstance) X(vkEnumeratePhysicalDevices) X(vkGetPhysicalDeviceProperties)             \
    X(vkGetPhysicalDeviceQueueFamilyProperties) X(vkGetPhysicalDeviceMemoryProperties)              \
    X(vkEnumerateDeviceExtensionProperties) X(vkCreateDevice) X(vkGetDeviceProcAddr)

#define QLORA__VK_DEVICE_FUNCS(X)                                                                   \
    X(vkDestroyDevice) X(vkGetDeviceQueue) X(vkDeviceWaitIdle) X(vkQueueSubmit)                     \
    X(vkCreateBuffer) X(vkDestroyBuffer) X(vkGetBufferMemoryRequirements) X(vkBindBufferMemory)     \
    X(vkAllocateMemory) X(vkFreeMemory) X(vkMapMemory) X(vkUnmapMemory)                             \
    X(vkCreateShaderModule) X(vkDestroyShaderModule) X(vkCreateComputePipelines) X(vkDestroyPipeline) \
    X(vkCreateDescriptorSetLayout) X(vkDestroyDescriptorSetLayout)                                  \
    X(vkCreatePipelineLayout) X(vkDestroyPipelineLayout)                                            \
    X(vkCreateDescriptorPool) X(vkDestroyDescriptorPool) X(vkResetDescriptorPool)                   \
    X(vkAllocateDescriptorSets) X(vkUpdateDescriptorSets)                                           \
    X(vkCreateCommandPool) X(vkDestroyCommandPool) X(vkAllocateCommandBuffers)                      \
    X(vkResetCommandBuffer) X(vkBeginCommandBuffer) X(vkEndCommandBuffer)                           \
    X(vkCmdBindPipeline) X(vkCmdBindDescriptorSets) X(vkCmdPushConstants) X(vkCmdDispatch)          \
    X(vkCmdPipelineBarrier) X(vkCmdCopyBuffer) X(vkCmdFillBuffer)                                   \
    X(vkCreateFence) X(vkDestroyFence) X(vkResetFences) X(vkWaitForFences)

// ---------------------------------------------------------------------------------------------
// 2.2 internal types

enum { QLORA__VK_DEQ = 0, QLORA__VK_GEMV, QLORA__VK_FWD, QLORA__VK_BWD, QLORA__VK_NKINDS };
#define QLORA__VK_GEMV_MAXM 8     // largest NCOLS of linear_nf4_gemv.comp
#define QLORA__VK_NVARIANTS 9     // GEMM: tile variant 1..3; GEMV: NCOLS 1..8; DEQ: 0
#define QLORA__VK_NBINDINGS 5     // codes, scales, nested, in, out (shaders/common.glsl)

// GEMM tile variants: invocations WM×WN, register block TM×TN, K step BK (tile = WM·TM × WN·TN).
static const uint32_t qlora__vk_tiles[4][5] = {
    { 0, 0, 0, 0, 0 },
    { 4, 4, 2, 2, 8 },       // small: 8×8, 16 invocations (smallest workgroup)
    { 16, 16, 4, 4, 16 },    // medium: 64×64, 256 invocations
    { 16, 16, 8, 8, 8 },     // large: 128×128, 256 invocations
};

// Mirrors the push-constant block of shaders/common.glsl (15 × 4 bytes).
typedef struct qlora__vk_push {
    uint32_t M, N, K, ldy, col0, e_off, b_off, bs_log2, dq, nb_mod;
    float    dq_offset;
    uint32_t aligned, g0, g1, r0;
} qlora__vk_push;

typedef struct qlora__vk_buf {
    VkBuffer       buf;
    VkDeviceMemory mem;
    VkDeviceSize   size;
    void          *map;       // persistent mapping, or NULL
} qlora__vk_buf;

// One row chunk of a resident weight: rows [row0, row0 + rows), its three sections in one buffer.
typedef struct qlora__vk_chunk {
    int64_t       row0, rows;
    VkDeviceSize  codes_off, codes_size, scales_off, scales_size, nested_off, nested_size, total;
    int64_t       code_byte0, code_bytes;    // source bytes of w->codes
    int64_t       block0, nblocks;           // source blocks of absmax / qabsmax (block0 % 4 == 0 for DQ)
    int64_t       nested0, nnested;          // source entries of nested_absmax
    uint32_t      e_off, b_off, nb_mod;
    qlora__vk_buf buf;
} qlora__vk_chunk;

typedef struct qlora__vk_weight {
    const qlora_nf4 *key;      // the qlora_nf4 this copy belongs to (compared, never dereferenced blindly)
    int64_t          rows, cols;
    int32_t          blocksize, dq;
    float            dq_offset;
    int32_t          nchunks;
    qlora__vk_chunk *chunks;   // (nchunks)
} qlora__vk_weight;

struct qlora_vk {
    qlora_backend    backend;
    qlora_vk_options opt;
    void            *lib;
    char             name[320];
    int              validation;     // 0, 1, 2 (GPU-assisted)
    int64_t          vmsg;           // validation messages counted by the messenger
    char             vlast[512];

    PFN_vkGetInstanceProcAddr                 vkGetInstanceProcAddr;
    PFN_vkEnumerateInstanceVersion            vkEnumerateInstanceVersion;    // NULL on 1.0 loaders
    PFN_vkGetPhysicalDeviceProperties2        vkGetPhysicalDeviceProperties2; // NULL on 1.0
    PFN_vkCreateDebugUtilsMessengerEXT        vkCreateDebugUtilsMessengerEXT;
    PFN_vkDestroyDebugUtilsMessengerEXT       vkDestroyDebugUtilsMessengerEXT;
#define QLORA__VK_DECLARE(f) PFN_##f f;
    QLORA__VK_GLOBAL_FUNCS(QLORA__VK_DECLARE)
    QLORA__VK_INSTANCE_FUNCS(QLORA__VK_DECLARE)
    QLORA__VK_DEVICE_FUNCS(QLORA__VK_DECLARE)
#undef QLORA__VK_DECLARE

    uint32_t                         api_version;
    VkInstance                       instance;
    VkDebugUtilsMessengerEXT         messenger;
    VkPhysicalDevice                 phys;
    VkPhysicalDeviceProperties       props;
    VkPhysicalDeviceMemoryProperties memprops;
    VkDevice                         device;
    VkQueue                          queue;
    uint32_t                         qfamily;
    int                              direct;        // device memory is host-visible and used without staging

    VkDeviceSize bind_limit;        // bytes per storage binding
    VkDeviceSize alloc_limit;       // bytes per allocation
    VkDeviceSize align;             // binding offset alignment
    uint32_t     max_groups[3];
    uint32_t     gemv_wg;

    VkDescriptorSetLayout dsl;
    VkPipelineLayout      playout;
    VkDescriptorPool      dpool;
    uint32_t              dpool_cap;
    VkShaderModule        modules[QLORA__VK_NKINDS];
    VkPipeline            pipes[QLORA__VK_NKINDS][QLORA__VK_NVARIANTS];
    VkCommandPool         cpool;
    VkCommandBuffer       cmd;
    VkFence               fence;

    qlora__vk_buf act_in, act_out;       // device activations (mapped when direct)
    qlora__vk_buf stage_in, stage_out;   // host staging (unused when direct)

    qlora__vk_weight **weights;          // resident weights
    int32_t            nweights, capweights;
    qlora_vk_stats     stats;
};

// ---------------------------------------------------------------------------------------------
// 2.3 errors

static const char *qlora__vk_result_name(VkResult r) {
    switch (r) {
    case VK_SUCCESS:                        return "VK_SUCCESS";
    case VK_NOT_READY:                      return "VK_NOT_READY";
    case VK_TIMEOUT:                        return "VK_TIMEOUT";
    case VK_INCOMPLETE:                     return "VK_INCOMPLETE";
    case VK_ERROR_OUT_OF_HOST_MEMORY:       return "VK_ERROR_OUT_OF_HOST_MEMORY";
    case VK_ERROR_OUT_OF_DEVICE_MEMORY:     return "VK_ERROR_OUT_OF_DEVICE_MEMORY";
    case VK_ERROR_INITIALIZATION_FAILED:    return "VK_ERROR_INITIALIZATION_FAILED";
    case VK_ERROR_DEVICE_LOST:              return "VK_ERROR_DEVICE_LOST";
    case VK_ERROR_MEMORY_MAP_FAILED:        return "VK_ERROR_MEMORY_MAP_FAILED";
    case VK_ERROR_LAYER_NOT_PRESENT:        return "VK_ERROR_LAYER_NOT_PRESENT";
    case VK_ERROR_EXTENSION_NOT_PRESENT:    return "VK_ERROR_EXTENSION_NOT_PRESENT";
    case VK_ERROR_FEATURE_NOT_PRESENT:      return "VK_ERROR_FEATURE_NOT_PRESENT";
    case VK_ERROR_INCOMPATIBLE_DRIVER:      return "VK_ERROR_INCOMPATIBLE_DRIVER";
    case VK_ERROR_TOO_MANY_OBJECTS:         return "VK_ERROR_TOO_MANY_OBJECTS";
    case VK_ERROR_FORMAT_NOT_SUPPORTED:     return "VK_ERROR_FORMAT_NOT_SUPPORTED";
    case VK_ERROR_FRAGMENTED_POOL:          return "VK_ERROR_FRAGMENTED_POOL";
    case VK_ERROR_OUT_OF_POOL_MEMORY:       return "VK_ERROR_OUT_OF_POOL_MEMORY";
    case VK_ERROR_INVALID_EXTERNAL_HANDLE:  return "VK_ERROR_INVALID_EXTERNAL_HANDLE";
    case VK_ERROR_FRAGMENTATION:            return "VK_ERROR_FRAGMENTATION";
    case VK_ERROR_UNKNOWN:                  return "VK_ERROR_UNKNOWN";
    default:                                return "VkResult";
    }
}

static qlora_status qlora__vk_failv(qlora_error *err, qlora_status st, const char *fmt, va_list ap) {
    if (err) {
        vsnprintf(err->detail, sizeof(err->detail), fmt, ap);
        err->status = st;
    }
    return st;
}

// Formats a detail into err (if any) and returns st.
static qlora_status qlora__vk_fail(qlora_error *err, qlora_status st, const char *fmt, ...)
#if defined(__GNUC__) || defined(__clang__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static qlora_status qlora__vk_fail(qlora_error *err, qlora_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    qlora__vk_failv(err, st, fmt, ap);
    va_end(ap);
    return st;
}

// QLORA_ERR_BACKEND naming the failed call, its context and the VkResult (name and number).
static qlora_status qlora__vk_fail_vk(qlora_error *err, VkResult r, const char *call, const char *what) {
    return qlora__vk_fail(err, QLORA_ERR_BACKEND, "%s (%s): %s (%d)", call, what, qlora__vk_result_name(r),
                          (int)r);
}

#define QLORA__VK_TRY(call, what)                                                                   \
    do {                                                                                            \
        VkResult qlora__vk_r = (call);                                                              \
        if (qlora__vk_r != VK_SUCCESS) return qlora__vk_fail_vk(err, qlora__vk_r, #call, (what));  \
    } while (0)

// ---------------------------------------------------------------------------------------------
// 2.4 loader and instance

static void *qlora__vk_sym(void *lib, const char *name) {
#if defined(_WIN32)
    FARPROC p = GetProcAddress((HMODULE)lib, name);
    void   *v;
    memcpy(&v, &p, sizeof v);
    return v;
#else
    return dlsym(lib, name);
#endif
}

static void qlora__vk_close_lib(void *lib) {
    if (!lib) return;
#if defined(_WIN32)
    FreeLibrary((HMODULE)lib);
#else
    dlclose(lib);
#endif
}

// Opens the Vulkan loader and fetches the global entry points.
static qlora_status qlora__vk_open(qlora_vk *vk, qlora_error *err) {
    static const char *const names[] = {
#if defined(_WIN32)
        "vulkan-1.dll",
#elif defined(__APPLE__)
        "libvulkan.1.dylib", "libvulkan.dylib", "libMoltenVK.dylib",
#else
        "libvulkan.so.1", "libvulkan.so",
#endif
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0] && !vk->lib; i++) {
#if defined(_WIN32)
        vk->lib = (void *)LoadLibraryA(names[i]);
#else
        vk->lib = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
#endif
    }
    if (!vk->lib)
        return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED, "no Vulkan loader (%s not found)", names[0]);
    void *gipa = qlora__vk_sym(vk->lib, "vkGetInstanceProcAddr");
    if (!gipa) return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED, "Vulkan loader lacks vkGetInstanceProcAddr");
    memcpy(&vk->vkGetInstanceProcAddr, &gipa, sizeof gipa);
#define QLORA__VK_LOAD_GLOBAL(f)                                                                    \
    vk->f = (PFN_##f)vk->vkGetInstanceProcAddr(NULL, #f);                                           \
    if (!vk->f) return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED, "Vulkan loader lacks %s", #f);
    QLORA__VK_GLOBAL_FUNCS(QLORA__VK_LOAD_GLOBAL)
#undef QLORA__VK_LOAD_GLOBAL
    vk->vkEnumerateInstanceVersion =
        (PFN_vkEnumerateInstanceVersion)vk->vkGetInstanceProcAddr(NULL, "vkEnumerateInstanceVersion");
    return QLORA_OK;
}

// Debug-utils messenger: counts validation warnings and errors and keeps the last text. Never prints.
static VKAPI_ATTR VkBool32 VKAPI_CALL qlora__vk_debug_cb(VkDebugUtilsMessageSeverityFlagBitsEXT severity,
                                                        VkDebugUtilsMessageTypeFlagsEXT types,
                                                        const VkDebugUtilsMessengerCallbackDataEXT *data,
                                                        void *user) {
    qlora_vk *vk = (qlora_vk *)user;
    int counted = (types & (VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                            VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT)) != 0 ||
                  (severity & VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT) != 0;
    if (vk && counted) {
        vk->vmsg++;
        snprintf(vk->vlast, sizeof vk->vlast, "%s", (data && data->pMessage) ? data->pMessage : "(no text)");
    }
    return VK_FALSE;
}

static void qlora__vk_messenger_info(qlora_vk *vk, VkDebugUtilsMessengerCreateInfoEXT *mi) {
    memset(mi, 0, sizeof *mi);
    mi->sType           = VK_STRUCTURE_TYPE_DEBUG_UTILS_MESSENGER_CREATE_INFO_EXT;
    mi->messageSeverity =
        VK_DEBUG_UTILS_MESSAGE_SEVERITY_WARNING_BIT_EXT | VK_DEBUG_UTILS_MESSAGE_SEVERITY_ERROR_BIT_EXT;
    mi->messageType = VK_DEBUG_UTILS_MESSAGE_TYPE_GENERAL_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_VALIDATION_BIT_EXT |
                      VK_DEBUG_UTILS_MESSAGE_TYPE_PERFORMANCE_BIT_EXT;
    mi->pfnUserCallback = qlora__vk_debug_cb;
    mi->pUserData       = vk;
}

static int qlora__vk_has_layer(qlora_vk *vk, const char *name) {
    uint32_t n = 0, found = 0;
    if (vk->vkEnumerateInstanceLayerProperties(&n, NULL) != VK_SUCCESS || n == 0) return 0;
    VkLayerProperties *p = (VkLayerProperties *)QLORA_MALLOC(sizeof(VkLayerProperties) * n);
    if (!p) return 0;
    if (vk->vkEnumerateInstanceLayerProperties(&n, p) == VK_SUCCESS) {
        for (uint32_t i = 0; i < n; i++) found |= strcmp(p[i].layerName, name) == 0;
    }
    QLORA_FREE(p);
    return (int)found;
}

static int qlora__vk_has_instance_ext(qlora_vk *vk, const char *layer, const char *name) {
    uint32_t n = 0, found = 0;
    if (vk->vkEnumerateInstanceExtensionProperties(layer, &n, NULL) != VK_SUCCESS || n == 0) return 0;
    VkExtensionProperties *p = (VkExtensionProperties *)QLORA_MALLOC(sizeof(VkExtensionProperties) * n);
    if (!p) return 0;
    if (vk->vkEnumerateInstanceExtensionProperties(layer, &n, p) == VK_SUCCESS) {
        for (uint32_t i = 0; i < n; i++) found |= strcmp(p[i].extensionName, name) == 0;
    }
    QLORA_FREE(p);
    return (int)found;
}

// Creates the instance (Vulkan 1.1 when the loader has it), with validation and the messenger if asked.
static qlora_status qlora__vk_create_instance(qlora_vk *vk, int validation, qlora_error *err) {
    static const char *const layer = "VK_LAYER_KHRONOS_validation";
    const char *exts[4];
    uint32_t    nexts = 0;
    VkInstanceCreateFlags flags = 0;

    vk->api_version = VK_API_VERSION_1_0;
    if (vk->vkEnumerateInstanceVersion) {
        uint32_t v = 0;
        if (vk->vkEnumerateInstanceVersion(&v) == VK_SUCCESS && v >= VK_API_VERSION_1_1)
            vk->api_version = VK_API_VERSION_1_1;
    }
    if (validation) {
        if (!qlora__vk_has_layer(vk, layer)) {
            return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED, "validation asked for but %s is not installed",
                                  layer);
        }
        if (!qlora__vk_has_instance_ext(vk, NULL, VK_EXT_DEBUG_UTILS_EXTENSION_NAME) &&
            !qlora__vk_has_instance_ext(vk, layer, VK_EXT_DEBUG_UTILS_EXTENSION_NAME)) {
            return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED, "validation asked for but %s is missing",
                                  VK_EXT_DEBUG_UTILS_EXTENSION_NAME);
        }
        exts[nexts++] = VK_EXT_DEBUG_UTILS_EXTENSION_NAME;
        if (validation > 1) exts[nexts++] = VK_EXT_VALIDATION_FEATURES_EXTENSION_NAME;
    }
#ifdef VK_KHR_portability_enumeration
    // MoltenVK devices are only listed when the application opts in to portability drivers.
    if (qlora__vk_has_instance_ext(vk, NULL, VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME)) {
        exts[nexts++] = VK_KHR_PORTABILITY_ENUMERATION_EXTENSION_NAME;
        flags |= VK_INSTANCE_CREATE_ENUMERATE_PORTABILITY_BIT_KHR;
    }
#endif

    VkApplicationInfo app;
    memset(&app, 0, sizeof app);
    app.sType            = VK_STRUCTURE_TYPE_APPLICATION_INFO;
    app.pApplicationName = "qlora";
    app.pEngineName      = "qlora.h";
    app.engineVersion    = VK_MAKE_VERSION(QLORA_VERSION_MAJOR, QLORA_VERSION_MINOR, 0);
    app.apiVersion       = vk->api_version;

    VkDebugUtilsMessengerCreateInfoEXT mi;
    VkValidationFeaturesEXT            vf;
    VkValidationFeatureEnableEXT       gpu_av = VK_VALIDATION_FEATURE_ENABLE_GPU_ASSISTED_EXT;
    qlora__vk_messenger_info(vk, &mi);
    memset(&vf, 0, sizeof vf);
    vf.sType                         = VK_STRUCTURE_TYPE_VALIDATION_FEATURES_EXT;
    vf.enabledValidationFeatureCount = 1;
    vf.pEnabledValidationFeatures    = &gpu_av;
    if (validation > 1) mi.pNext = &vf;

    VkInstanceCreateInfo ci;
    memset(&ci, 0, sizeof ci);
    ci.sType                   = VK_STRUCTURE_TYPE_INSTANCE_CREATE_INFO;
    ci.pNext                   = validation ? (const void *)&mi : NULL;   // also reports instance creation
    ci.flags                   = flags;
    ci.pApplicationInfo        = &app;
    ci.enabledLayerCount       = validation ? 1u : 0u;
    ci.ppEnabledLayerNames     = validation ? &layer : NULL;
    ci.enabledExtensionCount   = nexts;
    ci.ppEnabledExtensionNames = nexts ? exts : NULL;
    VkResult r = vk->vkCreateInstance(&ci, NULL, &vk->instance);
    if (r == VK_ERROR_INCOMPATIBLE_DRIVER) {
        return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED, "no Vulkan driver: vkCreateInstance: %s (%d)",
                              qlora__vk_result_name(r), (int)r);
    }
    if (r != VK_SUCCESS) return qlora__vk_fail_vk(err, r, "vkCreateInstance", "qlora_vk_init");

#define QLORA__VK_LOAD_INSTANCE(f)                                                                  \
    vk->f = (PFN_##f)vk->vkGetInstanceProcAddr(vk->instance, #f);                                   \
    if (!vk->f) return qlora__vk_fail(err, QLORA_ERR_BACKEND, "Vulkan instance lacks %s", #f);
    QLORA__VK_INSTANCE_FUNCS(QLORA__VK_LOAD_INSTANCE)
#undef QLORA__VK_LOAD_INSTANCE
    if (vk->api_version >= VK_API_VERSION_1_1) {
        vk->vkGetPhysicalDeviceProperties2 = (PFN_vkGetPhysicalDeviceProperties2)vk->vkGetInstanceProcAddr(
            vk->instance, "vkGetPhysicalDeviceProperties2");
    }
    if (validation) {
        vk->vkCreateDebugUtilsMessengerEXT = (PFN_vkCreateDebugUtilsMessengerEXT)vk->vkGetInstanceProcAddr(
            vk->instance, "vkCreateDebugUtilsMessengerEXT");
        vk->vkDestroyDebugUtilsMessengerEXT = (PFN_vkDestroyDebugUtilsMessengerEXT)vk->vkGetInstanceProcAddr(
            vk->instance, "vkDestroyDebugUtilsMessengerEXT");
        if (!vk->vkCreateDebugUtilsMessengerEXT || !vk->vkDestroyDebugUtilsMessengerEXT) {
            return qlora__vk_fail(err, QLORA_ERR_BACKEND,
                                  "Vulkan instance lacks vkCreateDebugUtilsMessengerEXT");
        }
        qlora__vk_messenger_info(vk, &mi);
        QLORA__VK_TRY(vk->vkCreateDebugUtilsMessengerEXT(vk->instance, &mi, NULL, &vk->messenger),
                      "validation");
    }
    return QLORA_OK;
}

// Lists the physical devices into a new array (*out, caller frees); no device → QLORA_ERR_UNSUPPORTED.
static qlora_status qlora__vk_devices(qlora_vk *vk, VkPhysicalDevice **out, uint32_t *n, qlora_error *err) {
    *out = NULL;
    *n   = 0;
    QLORA__VK_TRY(vk->vkEnumeratePhysicalDevices(vk->instance, n, NULL), "counting devices");
    if (*n == 0) return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED, "no Vulkan device");
    *out = (VkPhysicalDevice *)QLORA_MALLOC(sizeof(VkPhysicalDevice) * *n);
    if (!*out) return qlora__vk_fail(err, QLORA_ERR_NOMEM, "device list of %u entries", *n);
    VkResult r = vk->vkEnumeratePhysicalDevices(vk->instance, n, *out);
    if (r != VK_SUCCESS && r != VK_INCOMPLETE) {
        QLORA_FREE(*out);
        *out = NULL;
        return qlora__vk_fail_vk(err, r, "vkEnumeratePhysicalDevices", "listing devices");
    }
    return QLORA_OK;
}

static const char *qlora__vk_type_name(VkPhysicalDeviceType t) {
    switch (t) {
    case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:   return "discrete";
    case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: return "integrated";
    case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:    return "virtual";
    case VK_PHYSICAL_DEVICE_TYPE_CPU:            return "cpu";
    default:                                     return "other";
    }
}

// Releases the instance side (messenger, instance, loader).
static void qlora__vk_close_instance(qlora_vk *vk) {
    if (vk->messenger && vk->vkDestroyDebugUtilsMessengerEXT) {
        vk->vkDestroyDebugUtilsMessengerEXT(vk->instance, vk->messenger, NULL);
    }
    if (vk->instance && vk->vkDestroyInstance) vk->vkDestroyInstance(vk->instance, NULL);
    qlora__vk_close_lib(vk->lib);
    vk->messenger = VK_NULL_HANDLE;
    vk->instance  = VK_NULL_HANDLE;
    vk->lib       = NULL;
}

// ---------------------------------------------------------------------------------------------
// 2.5 device choice and creation

// Index of the first queue family with compute, preferring one without graphics (async compute).
static int qlora__vk_compute_family(qlora_vk *vk, VkPhysicalDevice pd, uint32_t *family) {
    uint32_t n = 0;
    int      best = -1;
    vk->vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, NULL);
    if (n == 0) return 0;
    VkQueueFamilyProperties *q = (VkQueueFamilyProperties *)QLORA_MALLOC(sizeof(VkQueueFamilyProperties) * n);
    if (!q) return 0;
    vk->vkGetPhysicalDeviceQueueFamilyProperties(pd, &n, q);
    for (uint32_t i = 0; i < n; i++) {
        if (!(q[i].queueFlags & VK_QUEUE_COMPUTE_BIT) || q[i].queueCount == 0) continue;
        if (best < 0 || ((q[(uint32_t)best].queueFlags & VK_QUEUE_GRAPHICS_BIT) &&
                         !(q[i].queueFlags & VK_QUEUE_GRAPHICS_BIT))) {
            best = (int)i;
        }
    }
    QLORA_FREE(q);
    if (best < 0) return 0;
    *family = (uint32_t)best;
    return 1;
}

static int qlora__vk_contains_nocase(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i])) i++;
        if (i == n) return 1;
    }
    return n == 0;
}

// Picks the physical device: `want` (index or name substring) if given, else the best GPU, CPU only if
// allowed.
static qlora_status qlora__vk_pick(qlora_vk *vk, const char *want, int allow_cpu, qlora_error *err) {
    VkPhysicalDevice *pds = NULL;
    uint32_t          n = 0;
    qlora_status      st = qlora__vk_devices(vk, &pds, &n, err);
    if (st != QLORA_OK) return st;
    int best = -1, best_score = -1;
    int by_index = want && *want && strspn(want, "0123456789") == strlen(want);
    for (uint32_t i = 0; i < n; i++) {
        VkPhysicalDeviceProperties p;
        uint32_t                   fam;
        vk->vkGetPhysicalDeviceProperties(pds[i], &p);
        if (!qlora__vk_compute_family(vk, pds[i], &fam)) continue;
        int score;
        if (want && *want) {
            score = by_index ? (atoi(want) == (int)i) : qlora__vk_contains_nocase(p.deviceName, want);
            if (!score) continue;
        } else {
            switch (p.deviceType) {
            case VK_PHYSICAL_DEVICE_TYPE_DISCRETE_GPU:   score = 4; break;
            case VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU: score = 3; break;
            case VK_PHYSICAL_DEVICE_TYPE_VIRTUAL_GPU:    score = 2; break;
            case VK_PHYSICAL_DEVICE_TYPE_CPU:            score = allow_cpu ? 0 : -1; break;
            default:                                     score = 1; break;
            }
        }
        if (score > best_score) {
            best       = (int)i;
            best_score = score;
        }
    }
    if (best < 0) {
        QLORA_FREE(pds);
        if (want && *want) {
            return qlora__vk_fail(err, QLORA_ERR_ARG,
                                  "device \"%s\" matches none of the %u Vulkan devices with compute", want,
                                  n);
        }
        return qlora__vk_fail(
            err, QLORA_ERR_UNSUPPORTED,
            "no Vulkan GPU among %u devices (CPU devices need allow_cpu or QLORA_VK_DEVICE)", n);
    }
    vk->phys = pds[best];
    QLORA_FREE(pds);
    vk->vkGetPhysicalDeviceProperties(vk->phys, &vk->props);
    vk->vkGetPhysicalDeviceMemoryProperties(vk->phys, &vk->memprops);
    qlora__vk_compute_family(vk, vk->phys, &vk->qfamily);
    snprintf(vk->name, sizeof vk->name, "%s [%s, device %d]", vk->props.deviceName,
             qlora__vk_type_name(vk->props.deviceType), best);
    return QLORA_OK;
}

// First memory type in `bits` that has all `want` flags (and `prefer` flags if any such type exists).
static int qlora__vk_memtype(qlora_vk *vk, uint32_t bits, VkMemoryPropertyFlags want,
                             VkMemoryPropertyFlags prefer) {
    for (int pass = 0; pass < 2; pass++) {
        VkMemoryPropertyFlags f = pass == 0 ? (want | prefer) : want;
        for (uint32_t i = 0; i < vk->memprops.memoryTypeCount; i++) {
            if ((bits & (1u << i)) && (vk->memprops.memoryTypes[i].propertyFlags & f) == f) return (int)i;
        }
    }
    return -1;
}

static qlora_status qlora__vk_create_device(qlora_vk *vk, qlora_error *err) {
    const VkPhysicalDeviceLimits *lim = &vk->props.limits;
    const char *dev_exts[1];
    uint32_t    ndev_exts = 0;
    uint32_t    n = 0;

    // Portability drivers (MoltenVK) require VK_KHR_portability_subset to be enabled.
    if (vk->vkEnumerateDeviceExtensionProperties(vk->phys, NULL, &n, NULL) == VK_SUCCESS && n > 0) {
        VkExtensionProperties *p = (VkExtensionProperties *)QLORA_MALLOC(sizeof(VkExtensionProperties) * n);
        if (!p) return qlora__vk_fail(err, QLORA_ERR_NOMEM, "device extension list");
        if (vk->vkEnumerateDeviceExtensionProperties(vk->phys, NULL, &n, p) == VK_SUCCESS) {
            for (uint32_t i = 0; i < n; i++) {
                if (strcmp(p[i].extensionName, "VK_KHR_portability_subset") == 0)
                    dev_exts[ndev_exts++] = "VK_KHR_portability_subset";
            }
        }
        QLORA_FREE(p);
    }

    float                   prio = 1.0f;
    VkDeviceQueueCreateInfo qi;
    memset(&qi, 0, sizeof qi);
    qi.sType            = VK_STRUCTURE_TYPE_DEVICE_QUEUE_CREATE_INFO;
    qi.queueFamilyIndex = vk->qfamily;
    qi.queueCount       = 1;
    qi.pQueuePriorities = &prio;
    VkDeviceCreateInfo di;
    memset(&di, 0, sizeof di);
    di.sType                   = VK_STRUCTURE_TYPE_DEVICE_CREATE_INFO;
    di.queueCreateInfoCount    = 1;
    di.pQueueCreateInfos       = &qi;
    di.enabledExtensionCount   = ndev_exts;
    di.ppEnabledExtensionNames = ndev_exts ? dev_exts : NULL;
    QLORA__VK_TRY(vk->vkCreateDevice(vk->phys, &di, NULL, &vk->device), vk->name);

#define QLORA__VK_LOAD_DEVICE(f)                                                                    \
    vk->f = (PFN_##f)vk->vkGetDeviceProcAddr(vk->device, #f);                                       \
    if (!vk->f) return qlora__vk_fail(err, QLORA_ERR_BACKEND, "Vulkan device lacks %s", #f);
    QLORA__VK_DEVICE_FUNCS(QLORA__VK_LOAD_DEVICE)
#undef QLORA__VK_LOAD_DEVICE
    vk->vkGetDeviceQueue(vk->device, vk->qfamily, 0, &vk->queue);

    // Limits: allocation size from maintenance3 when available (1 GiB otherwise, a safe floor).
    vk->alloc_limit = (VkDeviceSize)1 << 30;
    if (vk->vkGetPhysicalDeviceProperties2 && vk->props.apiVersion >= VK_API_VERSION_1_1) {
        VkPhysicalDeviceMaintenance3Properties m3;
        VkPhysicalDeviceProperties2            p2;
        memset(&m3, 0, sizeof m3);
        memset(&p2, 0, sizeof p2);
        m3.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_MAINTENANCE_3_PROPERTIES;
        p2.sType = VK_STRUCTURE_TYPE_PHYSICAL_DEVICE_PROPERTIES_2;
        p2.pNext = &m3;
        vk->vkGetPhysicalDeviceProperties2(vk->phys, &p2);
        if (m3.maxMemoryAllocationSize > 0) vk->alloc_limit = m3.maxMemoryAllocationSize;
    }
    vk->bind_limit = lim->maxStorageBufferRange;
    if (vk->bind_limit > vk->alloc_limit) vk->bind_limit = vk->alloc_limit;
    if (vk->opt.max_binding_bytes > 0 && (VkDeviceSize)vk->opt.max_binding_bytes < vk->bind_limit) {
        vk->bind_limit = (VkDeviceSize)vk->opt.max_binding_bytes;
    }
    vk->bind_limit &= ~(VkDeviceSize)3;
    vk->align = lim->minStorageBufferOffsetAlignment > 16 ? lim->minStorageBufferOffsetAlignment : 16;
    for (int i = 0; i < 3; i++) {
        vk->max_groups[i] = lim->maxComputeWorkGroupCount[i];
        if (vk->opt.max_workgroups > 0 && vk->opt.max_workgroups < vk->max_groups[i])
            vk->max_groups[i] = vk->opt.max_workgroups;
    }

    // CPU and integrated devices share host memory: use host-visible device memory without staging.
    int mt = qlora__vk_memtype(vk, ~0u,
                               VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
                                   VK_MEMORY_PROPERTY_HOST_COHERENT_BIT,
                               0);
    vk->direct = mt >= 0 && !vk->opt.force_staging &&
                 (vk->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ||
                  vk->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_INTEGRATED_GPU);

    // GEMV/dequantize workgroup: 64 by default (8 on CPU devices, lavapipe's SIMD width, measured fastest
    // there), the option if valid, clamped to the device.
    uint32_t wg = vk->props.deviceType == VK_PHYSICAL_DEVICE_TYPE_CPU ? 8 : 64;
    if (vk->opt.gemv_threads > 0) {
        wg = (uint32_t)vk->opt.gemv_threads;
        if (wg < 8 || wg > 256 || (wg & (wg - 1))) {
            return qlora__vk_fail(err, QLORA_ERR_ARG, "gemv_threads = %u: want a power of two in 8..256", wg);
        }
    }
    while (wg > lim->maxComputeWorkGroupInvocations || wg > lim->maxComputeWorkGroupSize[0]) wg >>= 1;
    vk->gemv_wg = wg;

    // One descriptor-set layout (5 storage buffers) and one pipeline layout shared by every kernel.
    VkDescriptorSetLayoutBinding b[QLORA__VK_NBINDINGS];
    memset(b, 0, sizeof b);
    for (uint32_t i = 0; i < QLORA__VK_NBINDINGS; i++) {
        b[i].binding         = i;
        b[i].descriptorType  = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        b[i].descriptorCount = 1;
        b[i].stageFlags      = VK_SHADER_STAGE_COMPUTE_BIT;
    }
    VkDescriptorSetLayoutCreateInfo dl;
    memset(&dl, 0, sizeof dl);
    dl.sType        = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_LAYOUT_CREATE_INFO;
    dl.bindingCount = QLORA__VK_NBINDINGS;
    dl.pBindings    = b;
    QLORA__VK_TRY(vk->vkCreateDescriptorSetLayout(vk->device, &dl, NULL, &vk->dsl), "descriptor set layout");
    VkPushConstantRange pr;
    pr.stageFlags = VK_SHADER_STAGE_COMPUTE_BIT;
    pr.offset     = 0;
    pr.size       = (uint32_t)sizeof(qlora__vk_push);
    VkPipelineLayoutCreateInfo pl;
    memset(&pl, 0, sizeof pl);
    pl.sType                  = VK_STRUCTURE_TYPE_PIPELINE_LAYOUT_CREATE_INFO;
    pl.setLayoutCount         = 1;
    pl.pSetLayouts            = &vk->dsl;
    pl.pushConstantRangeCount = 1;
    pl.pPushConstantRanges    = &pr;
    QLORA__VK_TRY(vk->vkCreatePipelineLayout(vk->device, &pl, NULL, &vk->playout), "pipeline layout");

    VkCommandPoolCreateInfo cp;
    memset(&cp, 0, sizeof cp);
    cp.sType            = VK_STRUCTURE_TYPE_COMMAND_POOL_CREATE_INFO;
    cp.flags            = VK_COMMAND_POOL_CREATE_RESET_COMMAND_BUFFER_BIT;
    cp.queueFamilyIndex = vk->qfamily;
    QLORA__VK_TRY(vk->vkCreateCommandPool(vk->device, &cp, NULL, &vk->cpool), "command pool");
    VkCommandBufferAllocateInfo ca;
    memset(&ca, 0, sizeof ca);
    ca.sType              = VK_STRUCTURE_TYPE_COMMAND_BUFFER_ALLOCATE_INFO;
    ca.commandPool        = vk->cpool;
    ca.level              = VK_COMMAND_BUFFER_LEVEL_PRIMARY;
    ca.commandBufferCount = 1;
    QLORA__VK_TRY(vk->vkAllocateCommandBuffers(vk->device, &ca, &vk->cmd), "command buffer");
    VkFenceCreateInfo fi;
    memset(&fi, 0, sizeof fi);
    fi.sType = VK_STRUCTURE_TYPE_FENCE_CREATE_INFO;
    QLORA__VK_TRY(vk->vkCreateFence(vk->device, &fi, NULL, &vk->fence), "fence");
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// 2.6 buffers and command submission

enum { QLORA__VK_MEM_DEVICE = 0, QLORA__VK_MEM_HOST = 1 };

// Creates a storage buffer of `size` bytes: device memory (mapped when direct) or host staging memory
// (mapped).
static qlora_status qlora__vk_buf_create(qlora_vk *vk, qlora__vk_buf *b, VkDeviceSize size, int where,
                                         const char *what, qlora_error *err) {
    memset(b, 0, sizeof *b);
    if (size == 0) size = 16;
    if (size > vk->alloc_limit) {
        return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED,
                              "%s: %llu bytes exceed the device allocation limit %llu", what,
                              (unsigned long long)size, (unsigned long long)vk->alloc_limit);
    }
    VkBufferCreateInfo bi;
    memset(&bi, 0, sizeof bi);
    bi.sType       = VK_STRUCTURE_TYPE_BUFFER_CREATE_INFO;
    bi.size        = size;
    bi.usage = VK_BUFFER_USAGE_STORAGE_BUFFER_BIT | VK_BUFFER_USAGE_TRANSFER_SRC_BIT |
               VK_BUFFER_USAGE_TRANSFER_DST_BIT;
    bi.sharingMode = VK_SHARING_MODE_EXCLUSIVE;
    QLORA__VK_TRY(vk->vkCreateBuffer(vk->device, &bi, NULL, &b->buf), what);
    VkMemoryRequirements req;
    vk->vkGetBufferMemoryRequirements(vk->device, b->buf, &req);
    VkMemoryPropertyFlags want, prefer = 0;
    int                   map = 1;
    if (where == QLORA__VK_MEM_HOST) {
        want   = VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT | VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
        prefer = VK_MEMORY_PROPERTY_HOST_CACHED_BIT;   // fast host reads of results
    } else if (vk->direct) {
        want = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT | VK_MEMORY_PROPERTY_HOST_VISIBLE_BIT |
               VK_MEMORY_PROPERTY_HOST_COHERENT_BIT;
    } else {
        want = VK_MEMORY_PROPERTY_DEVICE_LOCAL_BIT;
        map  = 0;
    }
    int t = qlora__vk_memtype(vk, req.memoryTypeBits, want, prefer);
    if (t < 0)
        return qlora__vk_fail(err, QLORA_ERR_BACKEND, "%s: no memory type with flags 0x%x", what,
                              (unsigned)want);
    VkMemoryAllocateInfo ai;
    memset(&ai, 0, sizeof ai);
    ai.sType           = VK_STRUCTURE_TYPE_MEMORY_ALLOCATE_INFO;
    ai.allocationSize  = req.size;
    ai.memoryTypeIndex = (uint32_t)t;
    QLORA__VK_TRY(vk->vkAllocateMemory(vk->device, &ai, NULL, &b->mem), what);
    QLORA__VK_TRY(vk->vkBindBufferMemory(vk->device, b->buf, b->mem, 0), what);
    if (map) QLORA__VK_TRY(vk->vkMapMemory(vk->device, b->mem, 0, VK_WHOLE_SIZE, 0, &b->map), what);
    b->size = size;
    return QLORA_OK;
}

static void qlora__vk_buf_free(qlora_vk *vk, qlora__vk_buf *b) {
    if (b->map) vk->vkUnmapMemory(vk->device, b->mem);
    if (b->buf) vk->vkDestroyBuffer(vk->device, b->buf, NULL);
    if (b->mem) vk->vkFreeMemory(vk->device, b->mem, NULL);
    memset(b, 0, sizeof *b);
}

// Grows b to at least `size` bytes (contents are not kept).
static qlora_status qlora__vk_buf_reserve(qlora_vk *vk, qlora__vk_buf *b, VkDeviceSize size, int where,
                                          const char *what, qlora_error *err) {
    if (b->buf && b->size >= size) return QLORA_OK;
    VkDeviceSize grow = b->size + b->size / 2;
    if (grow > size && grow <= vk->bind_limit) size = grow;   // amortize growth
    qlora__vk_buf_free(vk, b);
    return qlora__vk_buf_create(vk, b, size, where, what, err);
}

static qlora_status qlora__vk_begin(qlora_vk *vk, qlora_error *err) {
    VkCommandBufferBeginInfo bi;
    memset(&bi, 0, sizeof bi);
    bi.sType = VK_STRUCTURE_TYPE_COMMAND_BUFFER_BEGIN_INFO;
    bi.flags = VK_COMMAND_BUFFER_USAGE_ONE_TIME_SUBMIT_BIT;
    QLORA__VK_TRY(vk->vkResetCommandBuffer(vk->cmd, 0), "command buffer");
    QLORA__VK_TRY(vk->vkBeginCommandBuffer(vk->cmd, &bi), "command buffer");
    return QLORA_OK;
}

// Ends the command buffer, submits it and waits for it to finish.
static qlora_status qlora__vk_submit(qlora_vk *vk, const char *what, qlora_error *err) {
    QLORA__VK_TRY(vk->vkEndCommandBuffer(vk->cmd), what);
    VkSubmitInfo si;
    memset(&si, 0, sizeof si);
    si.sType              = VK_STRUCTURE_TYPE_SUBMIT_INFO;
    si.commandBufferCount = 1;
    si.pCommandBuffers    = &vk->cmd;
    QLORA__VK_TRY(vk->vkQueueSubmit(vk->queue, 1, &si, vk->fence), what);
    QLORA__VK_TRY(vk->vkWaitForFences(vk->device, 1, &vk->fence, VK_TRUE, UINT64_MAX), what);
    QLORA__VK_TRY(vk->vkResetFences(vk->device, 1, &vk->fence), what);
    return QLORA_OK;
}

// Global memory barrier in the command buffer.
static void qlora__vk_barrier(qlora_vk *vk, VkPipelineStageFlags src, VkAccessFlags src_access,
                              VkPipelineStageFlags dst, VkAccessFlags dst_access) {
    VkMemoryBarrier mb;
    memset(&mb, 0, sizeof mb);
    mb.sType         = VK_STRUCTURE_TYPE_MEMORY_BARRIER;
    mb.srcAccessMask = src_access;
    mb.dstAccessMask = dst_access;
    vk->vkCmdPipelineBarrier(vk->cmd, src, dst, 0, 1, &mb, 0, NULL, 0, NULL);
}

// Allocates one descriptor set (the pool is reset per submission by qlora__vk_sets_reset).
static qlora_status qlora__vk_sets_reset(qlora_vk *vk, uint32_t count, qlora_error *err) {
    if (vk->dpool && count <= vk->dpool_cap) {
        QLORA__VK_TRY(vk->vkResetDescriptorPool(vk->device, vk->dpool, 0), "descriptor pool");
        return QLORA_OK;
    }
    if (vk->dpool) vk->vkDestroyDescriptorPool(vk->device, vk->dpool, NULL);
    vk->dpool     = VK_NULL_HANDLE;
    vk->dpool_cap = count < 16 ? 16 : count;
    VkDescriptorPoolSize ps;
    ps.type            = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
    ps.descriptorCount = vk->dpool_cap * QLORA__VK_NBINDINGS;
    VkDescriptorPoolCreateInfo pi;
    memset(&pi, 0, sizeof pi);
    pi.sType         = VK_STRUCTURE_TYPE_DESCRIPTOR_POOL_CREATE_INFO;
    pi.maxSets       = vk->dpool_cap;
    pi.poolSizeCount = 1;
    pi.pPoolSizes    = &ps;
    QLORA__VK_TRY(vk->vkCreateDescriptorPool(vk->device, &pi, NULL, &vk->dpool), "descriptor pool");
    return QLORA_OK;
}

// Allocates a descriptor set, points its 5 bindings at (buffer, offset, range) and binds it.
static qlora_status qlora__vk_bind(qlora_vk *vk, const VkBuffer *bufs, const VkDeviceSize *offs,
                                   const VkDeviceSize *ranges, qlora_error *err) {
    VkDescriptorSet             set;
    VkDescriptorSetAllocateInfo ai;
    memset(&ai, 0, sizeof ai);
    ai.sType              = VK_STRUCTURE_TYPE_DESCRIPTOR_SET_ALLOCATE_INFO;
    ai.descriptorPool     = vk->dpool;
    ai.descriptorSetCount = 1;
    ai.pSetLayouts        = &vk->dsl;
    QLORA__VK_TRY(vk->vkAllocateDescriptorSets(vk->device, &ai, &set), "descriptor set");
    VkDescriptorBufferInfo bi[QLORA__VK_NBINDINGS];
    VkWriteDescriptorSet   wr[QLORA__VK_NBINDINGS];
    memset(wr, 0, sizeof wr);
    for (uint32_t i = 0; i < QLORA__VK_NBINDINGS; i++) {
        bi[i].buffer          = bufs[i];
        bi[i].offset          = offs[i];
        bi[i].range           = ranges[i];
        wr[i].sType           = VK_STRUCTURE_TYPE_WRITE_DESCRIPTOR_SET;
        wr[i].dstSet          = set;
        wr[i].dstBinding      = i;
        wr[i].descriptorCount = 1;
        wr[i].descriptorType  = VK_DESCRIPTOR_TYPE_STORAGE_BUFFER;
        wr[i].pBufferInfo     = &bi[i];
    }
    vk->vkUpdateDescriptorSets(vk->device, QLORA__VK_NBINDINGS, wr, 0, NULL);
    vk->vkCmdBindDescriptorSets(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, vk->playout, 0, 1, &set, 0, NULL);
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// 2.7 pipelines (created on first use: each costs a driver compile, 20-90 ms on lavapipe)

static qlora_status qlora__vk_pipeline(qlora_vk *vk, int kind, int variant, VkPipeline *out,
                                       qlora_error *err) {
    static const char *const kind_names[QLORA__VK_NKINDS] = {
        "nf4_dequantize", "linear_nf4_gemv", "linear_nf4_forward", "linear_nf4_backward"
    };
    if (vk->pipes[kind][variant]) {
        *out = vk->pipes[kind][variant];
        return QLORA_OK;
    }
    const VkPhysicalDeviceLimits *lim = &vk->props.limits;
    if (!vk->modules[kind]) {
        const uint32_t *code = NULL;
        size_t          size = 0;
        switch (kind) {
        case QLORA__VK_DEQ:
            code = qlora__vk_spv_nf4_dequantize;
            size = sizeof qlora__vk_spv_nf4_dequantize;
            break;
        case QLORA__VK_GEMV:
            code = qlora__vk_spv_linear_nf4_gemv;
            size = sizeof qlora__vk_spv_linear_nf4_gemv;
            break;
        case QLORA__VK_FWD:
            code = qlora__vk_spv_linear_nf4_forward;
            size = sizeof qlora__vk_spv_linear_nf4_forward;
            break;
        default:
            code = qlora__vk_spv_linear_nf4_backward;
            size = sizeof qlora__vk_spv_linear_nf4_backward;
            break;
        }
        VkShaderModuleCreateInfo si;
        memset(&si, 0, sizeof si);
        si.sType    = VK_STRUCTURE_TYPE_SHADER_MODULE_CREATE_INFO;
        si.codeSize = size;
        si.pCode    = code;
        QLORA__VK_TRY(vk->vkCreateShaderModule(vk->device, &si, NULL, &vk->modules[kind]), kind_names[kind]);
    }

    // Specialization constants: (WG) for DEQ, (WG, NCOLS = variant) for GEMV,
    // (WM, WN, TM, TN, BK, WM·WN) for the GEMMs.
    uint32_t spec[6];
    uint32_t nspec, threads, shared_bytes;
    if (kind == QLORA__VK_DEQ || kind == QLORA__VK_GEMV) {
        spec[0]      = vk->gemv_wg;
        spec[1]      = (uint32_t)variant;
        nspec        = kind == QLORA__VK_GEMV ? 2 : 1;
        threads      = vk->gemv_wg;
        shared_bytes = 16 * 4 + (kind == QLORA__VK_GEMV ? (uint32_t)variant * threads * 4 : 0);
    } else {
        const uint32_t *t = qlora__vk_tiles[variant];
        for (int i = 0; i < 5; i++) spec[i] = t[i];
        spec[5]      = t[0] * t[1];
        nspec        = 6;
        threads      = spec[5];
        shared_bytes = 16 * 4 + t[4] * (t[0] * t[2] + 1 + t[1] * t[3] + 1) * 4;   // padded tiles
    }
    if (threads > lim->maxComputeWorkGroupInvocations || threads > lim->maxComputeWorkGroupSize[0] ||
        shared_bytes > lim->maxComputeSharedMemorySize) {
        return qlora__vk_fail(
            err, QLORA_ERR_UNSUPPORTED,
            "%s variant %d: %u invocations / %u shared bytes exceed the device limits (%u / %u)",
            kind_names[kind], variant, threads, shared_bytes, lim->maxComputeWorkGroupInvocations,
            lim->maxComputeSharedMemorySize);
    }
    VkSpecializationMapEntry me[6];
    for (uint32_t i = 0; i < nspec; i++) {
        me[i].constantID = i;
        me[i].offset     = i * 4;
        me[i].size       = 4;
    }
    VkSpecializationInfo sp;
    sp.mapEntryCount = nspec;
    sp.pMapEntries   = me;
    sp.dataSize      = nspec * 4;
    sp.pData         = spec;
    VkComputePipelineCreateInfo ci;
    memset(&ci, 0, sizeof ci);
    ci.sType                     = VK_STRUCTURE_TYPE_COMPUTE_PIPELINE_CREATE_INFO;
    ci.stage.sType               = VK_STRUCTURE_TYPE_PIPELINE_SHADER_STAGE_CREATE_INFO;
    ci.stage.stage               = VK_SHADER_STAGE_COMPUTE_BIT;
    ci.stage.module              = vk->modules[kind];
    ci.stage.pName               = "main";
    ci.stage.pSpecializationInfo = &sp;
    ci.layout                    = vk->playout;
    QLORA__VK_TRY(
        vk->vkCreateComputePipelines(vk->device, VK_NULL_HANDLE, 1, &ci, NULL, &vk->pipes[kind][variant]),
        kind_names[kind]);
    *out = vk->pipes[kind][variant];
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// 2.8 resident weights: row chunks, each within the binding and allocation limits

static VkDeviceSize qlora__vk_align_up(VkDeviceSize x, VkDeviceSize a) { return (x + a - 1) / a * a; }

// Lays out rows [r0, r0 + rows) of w as one chunk (see shaders/common.glsl for the offsets).
static void qlora__vk_chunk_layout(const qlora_vk *vk, const qlora_nf4 *w, int64_t r0, int64_t rows,
                                   qlora__vk_chunk *c) {
    const int64_t K = w->cols, bs = w->blocksize;
    const int64_t n = w->rows * w->cols;
    const int64_t e0 = r0 * K, e1 = (r0 + rows) * K;
    const int64_t e_base = e0 & ~(int64_t)7;
    int64_t       b0 = e0 / bs, b1 = (e1 + bs - 1) / bs;
    if (w->double_quant) b0 &= ~(int64_t)3;
    memset(c, 0, sizeof *c);
    c->row0       = r0;
    c->rows       = rows;
    c->code_byte0 = e_base / 2;
    c->code_bytes = ((e1 < n ? e1 : n) + 1) / 2 - c->code_byte0;
    c->block0     = b0;
    c->nblocks    = b1 - b0;
    c->e_off      = (uint32_t)(e0 - e_base);
    c->b_off      = (uint32_t)(e0 - b0 * bs);
    c->codes_size = qlora__vk_align_up((VkDeviceSize)c->code_bytes, 4);
    if (w->double_quant) {
        c->scales_size = qlora__vk_align_up((VkDeviceSize)c->nblocks, 4);
        c->nested0     = b0 / QLORA_DQ_BLOCK;
        c->nnested     = (b1 - 1) / QLORA_DQ_BLOCK + 1 - c->nested0;
        c->nb_mod      = (uint32_t)(b0 % QLORA_DQ_BLOCK);
        c->nested_size = (VkDeviceSize)(256 + c->nnested) * 4;
    } else {
        c->scales_size = (VkDeviceSize)c->nblocks * 4;
        c->nested_size = 16;   // never read; a binding must still be valid
    }
    c->codes_off  = 0;
    c->scales_off = qlora__vk_align_up(c->codes_size, vk->align);
    c->nested_off = qlora__vk_align_up(c->scales_off + c->scales_size, vk->align);
    c->total      = c->nested_off + c->nested_size;
}

static int qlora__vk_chunk_fits(const qlora_vk *vk, const qlora__vk_chunk *c, int64_t K) {
    return c->codes_size <= vk->bind_limit && c->scales_size <= vk->bind_limit &&
           c->nested_size <= vk->bind_limit && c->total <= vk->alloc_limit &&
           c->rows * K + 8 < ((int64_t)1 << 31);
}

// Copies rows of w into the chunk's three sections at dst (zero padded).
static void qlora__vk_chunk_fill(uint8_t *dst, const qlora_nf4 *w, const qlora__vk_chunk *c) {
    memset(dst, 0, (size_t)c->total);
    memcpy(dst + c->codes_off, w->codes + c->code_byte0, (size_t)c->code_bytes);
    if (w->double_quant) {
        memcpy(dst + c->scales_off, w->qabsmax + c->block0, (size_t)c->nblocks);
        memcpy(dst + c->nested_off, w->nested_map, 256 * sizeof(float));
        memcpy(dst + c->nested_off + 256 * sizeof(float), w->nested_absmax + c->nested0,
               (size_t)c->nnested * sizeof(float));
    } else {
        memcpy(dst + c->scales_off, w->absmax + c->block0, (size_t)c->nblocks * sizeof(float));
    }
}

static void qlora__vk_weight_free(qlora_vk *vk, qlora__vk_weight *rw) {
    if (!rw) return;
    for (int32_t i = 0; i < rw->nchunks; i++) qlora__vk_buf_free(vk, &rw->chunks[i].buf);
    QLORA_FREE(rw->chunks);
    QLORA_FREE(rw);
}

static qlora_status qlora__vk_check_nf4(const qlora_nf4 *w, qlora_error *err) {
    if (!w) return qlora__vk_fail(err, QLORA_ERR_ARG, "w is NULL");
    int pow2 = w->blocksize >= 32 && w->blocksize <= 4096 && (w->blocksize & (w->blocksize - 1)) == 0;
    if (w->rows <= 0 || w->cols <= 0 || !pow2) {
        return qlora__vk_fail(err, QLORA_ERR_ARG, "w: shape (%lld, %lld) / blocksize %d invalid",
                              (long long)w->rows, (long long)w->cols, (int)w->blocksize);
    }
    if (w->rows > INT64_MAX / w->cols || w->cols >= ((int64_t)1 << 31) || w->rows >= ((int64_t)1 << 31)) {
        return qlora__vk_fail(err, QLORA_ERR_SHAPE, "w: shape (%lld, %lld) too large", (long long)w->rows,
                              (long long)w->cols);
    }
    if (!w->codes || (w->double_quant ? (!w->qabsmax || !w->nested_absmax) : !w->absmax)) {
        return qlora__vk_fail(err, QLORA_ERR_ARG, "w (%lld, %lld): codes or scales missing",
                              (long long)w->rows, (long long)w->cols);
    }
    return QLORA_OK;
}

// Uploads all chunks of w into a new resident weight.
static qlora_status qlora__vk_weight_upload(qlora_vk *vk, const qlora_nf4 *w, qlora__vk_weight **out,
                                            qlora_error *err) {
    char what[96];
    snprintf(what, sizeof what, "NF4 weight (%lld, %lld)", (long long)w->rows, (long long)w->cols);
    qlora__vk_weight *rw = (qlora__vk_weight *)QLORA_MALLOC(sizeof *rw);
    if (!rw) return qlora__vk_fail(err, QLORA_ERR_NOMEM, "%s: resident record", what);
    memset(rw, 0, sizeof *rw);
    rw->key       = w;
    rw->rows      = w->rows;
    rw->cols      = w->cols;
    rw->blocksize = w->blocksize;
    rw->dq        = w->double_quant;
    rw->dq_offset = w->double_quant ? w->nested_offset : 0.0f;

    // Plan: the largest row count per chunk that fits (binary search; sizes grow with the rows).
    int64_t cap = 4, r0 = 0;
    rw->chunks = (qlora__vk_chunk *)QLORA_MALLOC(sizeof(qlora__vk_chunk) * (size_t)cap);
    if (!rw->chunks) { QLORA_FREE(rw); return qlora__vk_fail(err, QLORA_ERR_NOMEM, "%s: chunk table", what); }
    while (r0 < w->rows) {
        int64_t         lo = 0, hi = w->rows - r0;
        qlora__vk_chunk c;
        while (lo < hi) {
            int64_t mid = lo + (hi - lo + 1) / 2;
            qlora__vk_chunk_layout(vk, w, r0, mid, &c);
            if (qlora__vk_chunk_fits(vk, &c, w->cols)) lo = mid; else hi = mid - 1;
        }
        if (lo == 0) {
            qlora__vk_weight_free(vk, rw);
            return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED,
                                  "%s: one row exceeds the binding limit of %llu bytes", what,
                                  (unsigned long long)vk->bind_limit);
        }
        if (rw->nchunks == cap) {
            qlora__vk_chunk *nc =
                (qlora__vk_chunk *)QLORA_MALLOC(sizeof(qlora__vk_chunk) * (size_t)(cap * 2));
            if (!nc) {
                qlora__vk_weight_free(vk, rw);
                return qlora__vk_fail(err, QLORA_ERR_NOMEM, "%s: chunk table", what);
            }
            memcpy(nc, rw->chunks, sizeof(qlora__vk_chunk) * (size_t)cap);
            QLORA_FREE(rw->chunks);
            rw->chunks = nc;
            cap *= 2;
        }
        qlora__vk_chunk_layout(vk, w, r0, lo, &rw->chunks[rw->nchunks++]);
        r0 += lo;
    }

    // Upload each chunk: straight into mapped device memory, or through a staging buffer and a copy.
    for (int32_t i = 0; i < rw->nchunks; i++) {
        qlora__vk_chunk *c = &rw->chunks[i];
        qlora_status     st = qlora__vk_buf_create(vk, &c->buf, c->total, QLORA__VK_MEM_DEVICE, what, err);
        if (st == QLORA_OK && c->buf.map) {
            qlora__vk_chunk_fill((uint8_t *)c->buf.map, w, c);
            vk->vkUnmapMemory(vk->device, c->buf.mem);
            c->buf.map = NULL;
        } else if (st == QLORA_OK) {
            qlora__vk_buf stage;
            st = qlora__vk_buf_create(vk, &stage, c->total, QLORA__VK_MEM_HOST, what, err);
            if (st == QLORA_OK) {
                qlora__vk_chunk_fill((uint8_t *)stage.map, w, c);
                st = qlora__vk_begin(vk, err);
                if (st == QLORA_OK) {
                    VkBufferCopy bc;
                    bc.srcOffset = 0;
                    bc.dstOffset = 0;
                    bc.size      = c->total;
                    vk->vkCmdCopyBuffer(vk->cmd, stage.buf, c->buf.buf, 1, &bc);
                    qlora__vk_barrier(vk, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                                      VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_READ_BIT);
                    st = qlora__vk_submit(vk, what, err);
                }
            }
            qlora__vk_buf_free(vk, &stage);
        }
        if (st != QLORA_OK) {
            qlora__vk_weight_free(vk, rw);
            return st;
        }
    }
    *out = rw;
    return QLORA_OK;
}

static void qlora__vk_forget(qlora_vk *vk, int32_t i) {
    qlora__vk_weight_free(vk, vk->weights[i]);
    vk->weights[i] = vk->weights[--vk->nweights];
}

// The resident copy of w, uploading it if needed. A hit needs w->backend_data to point at a live record
// of this context whose key is w; a record for w's address without that link is stale (w was freed and
// the address reused) and is replaced.
static qlora_status qlora__vk_resident(qlora_vk *vk, const qlora_nf4 *w, qlora__vk_weight **out,
                                       qlora_error *err) {
    qlora_status st = qlora__vk_check_nf4(w, err);
    if (st != QLORA_OK) return st;
    for (int32_t i = 0; i < vk->nweights; i++) {
        qlora__vk_weight *rw = vk->weights[i];
        if (rw->key != w) continue;
        if ((void *)rw == w->backend_data && rw->rows == w->rows && rw->cols == w->cols &&
            rw->blocksize == w->blocksize && rw->dq == w->double_quant) {
            *out = rw;
            return QLORA_OK;
        }
        qlora__vk_forget(vk, i);
        break;
    }
    if (vk->nweights == vk->capweights) {
        int32_t            cap = vk->capweights ? vk->capweights * 2 : 16;
        qlora__vk_weight **nw  = (qlora__vk_weight **)QLORA_MALLOC(sizeof(qlora__vk_weight *) * (size_t)cap);
        if (!nw) return qlora__vk_fail(err, QLORA_ERR_NOMEM, "resident weight table");
        if (vk->nweights) memcpy(nw, vk->weights, sizeof(qlora__vk_weight *) * (size_t)vk->nweights);
        QLORA_FREE(vk->weights);
        vk->weights    = nw;
        vk->capweights = cap;
    }
    qlora__vk_weight *rw = NULL;
    st = qlora__vk_weight_upload(vk, w, &rw, err);
    if (st != QLORA_OK) return st;
    vk->weights[vk->nweights++] = rw;
    vk->stats.uploads++;
    ((qlora_nf4 *)w)->backend_data = rw;   // cache link: the one field a backend may write
    *out = rw;
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// 2.9 dispatch

static void qlora__vk_push_weight(const qlora__vk_weight *rw, const qlora__vk_chunk *c, qlora__vk_push *pc) {
    uint32_t lg = 0;
    while ((1 << lg) < rw->blocksize) lg++;
    pc->N         = (uint32_t)c->rows;
    pc->K         = (uint32_t)rw->cols;
    pc->e_off     = c->e_off;
    pc->b_off     = c->b_off;
    pc->bs_log2   = lg;
    pc->dq        = (uint32_t)(rw->dq != 0);
    pc->nb_mod    = c->nb_mod;
    pc->dq_offset = rw->dq_offset;
    pc->aligned   = (uint32_t)(rw->cols % 8 == 0);
}

// Records dispatches covering gx × gy workgroups, folded so no dimension exceeds the device maximum.
static void qlora__vk_dispatch(qlora_vk *vk, qlora__vk_push *pc, int64_t gx, int64_t gy) {
    for (int64_t y0 = 0; y0 < gy; y0 += vk->max_groups[1]) {
        for (int64_t x0 = 0; x0 < gx; x0 += vk->max_groups[0]) {
            int64_t nx = gx - x0 < vk->max_groups[0] ? gx - x0 : vk->max_groups[0];
            int64_t ny = gy - y0 < vk->max_groups[1] ? gy - y0 : vk->max_groups[1];
            pc->g0 = (uint32_t)x0;
            pc->g1 = (uint32_t)y0;
            vk->vkCmdPushConstants(vk->cmd, vk->playout, VK_SHADER_STAGE_COMPUTE_BIT, 0, (uint32_t)sizeof *pc,
                                   pc);
            vk->vkCmdDispatch(vk->cmd, (uint32_t)nx, (uint32_t)ny, 1);
        }
    }
}

// GEMM tile variant for this call: the option, or a size-based choice.
static int qlora__vk_variant(const qlora_vk *vk, int64_t M, int64_t cols_out) {
    if (vk->opt.gemm_variant >= 1 && vk->opt.gemm_variant <= 3) return vk->opt.gemm_variant;
    if (M <= 16) return 1;
    // Large tiles only when there are enough of them to fill a big GPU several times over.
    if (vk->props.deviceType != VK_PHYSICAL_DEVICE_TYPE_CPU &&
        ((M + 127) / 128) * ((cols_out + 127) / 128) >= 1024)
        return 3;
    return 2;
}

enum { QLORA__VK_OP_FWD = 0, QLORA__VK_OP_BWD = 1 };

// Forward (op 0): out (M, rows) = in (M, cols)·Wᵀ; backward (op 1): out (M, cols) += in (M, rows)·W.
// in/out NULL: device-only run on the resident activation buffers (benchmark), `reps` passes per slab.
static qlora_status qlora__vk_linear(qlora_vk *vk, int op, float *out, const float *in, const qlora_nf4 *w,
                                     int64_t M, int reps, qlora_error *err) {
    const char *fn = op == QLORA__VK_OP_FWD ? "qlora_vk_nf4_linear_forward" : "qlora_vk_nf4_linear_backward";
    if (!vk) return qlora__vk_fail(err, QLORA_ERR_ARG, "%s: ctx is NULL", fn);
    if (M < 0) return qlora__vk_fail(err, QLORA_ERR_ARG, "%s: M = %lld", fn, (long long)M);
    if ((!in) != (!out))
        return qlora__vk_fail(err, QLORA_ERR_ARG, "%s: %s is NULL", fn, in ? "output" : "input");
    if (w && w->rows >= 0 && w->cols >= 0 && (w->rows == 0 || w->cols == 0)) {
        // Empty weight: nothing to upload. Forward writes zeros (a sum over no terms); backward adds nothing.
        if (op == QLORA__VK_OP_FWD && out && M > 0) memset(out, 0, (size_t)(M * w->rows) * sizeof(float));
        return QLORA_OK;
    }
    qlora__vk_weight *rw = NULL;
    qlora_status      st = qlora__vk_resident(vk, w, &rw, err);
    if (st != QLORA_OK || M == 0) return st;

    const int64_t in_cols  = op == QLORA__VK_OP_FWD ? rw->cols : rw->rows;
    const int64_t out_cols = op == QLORA__VK_OP_FWD ? rw->rows : rw->cols;
    int gemv_max = vk->opt.gemv_max_m == 0 ? QLORA__VK_GEMV_MAXM : vk->opt.gemv_max_m;
    if (gemv_max > QLORA__VK_GEMV_MAXM) gemv_max = QLORA__VK_GEMV_MAXM;
    int kind    = op == QLORA__VK_OP_BWD ? QLORA__VK_BWD : (M <= gemv_max ? QLORA__VK_GEMV : QLORA__VK_FWD);

    // Row slabs of the activations so that each binding fits.
    int64_t slab = M;
    if (slab > (int64_t)(vk->bind_limit / 4) / in_cols) slab = (int64_t)(vk->bind_limit / 4) / in_cols;
    if (slab > (int64_t)(vk->bind_limit / 4) / out_cols) slab = (int64_t)(vk->bind_limit / 4) / out_cols;
    if (slab < 1) {
        return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED,
                              "%s: one activation row exceeds the binding limit (%llu bytes)", fn,
                              (unsigned long long)vk->bind_limit);
    }
    // GEMV pipelines are specialized on the row count; the last slab may need a second one.
    int        variant = kind == QLORA__VK_GEMV ? (int)slab : qlora__vk_variant(vk, M, out_cols);
    VkPipeline pipe, pipe_last;
    st = qlora__vk_pipeline(vk, kind, variant, &pipe, err);
    pipe_last = pipe;
    if (st == QLORA_OK && kind == QLORA__VK_GEMV && M % slab != 0) {
        st = qlora__vk_pipeline(vk, kind, (int)(M % slab), &pipe_last, err);
    }
    if (st != QLORA_OK) return st;
    VkDeviceSize in_max = (VkDeviceSize)(slab * in_cols * 4), out_max = (VkDeviceSize)(slab * out_cols * 4);
    st = qlora__vk_buf_reserve(vk, &vk->act_in, in_max, QLORA__VK_MEM_DEVICE, "activations in", err);
    if (st == QLORA_OK)
        st = qlora__vk_buf_reserve(vk, &vk->act_out, out_max, QLORA__VK_MEM_DEVICE, "activations out", err);
    if (st == QLORA_OK && !vk->direct && in) {
        st = qlora__vk_buf_reserve(vk, &vk->stage_in, in_max, QLORA__VK_MEM_HOST, "staging in", err);
        if (st == QLORA_OK)
            st = qlora__vk_buf_reserve(vk, &vk->stage_out, out_max, QLORA__VK_MEM_HOST, "staging out", err);
    }
    if (st != QLORA_OK) return st;
    const int staged = !vk->direct && in;
    const int bwd    = op == QLORA__VK_OP_BWD;

    for (int64_t m0 = 0; m0 < M; m0 += slab) {
        const int64_t      mr        = M - m0 < slab ? M - m0 : slab;
        const VkDeviceSize in_bytes  = (VkDeviceSize)(mr * in_cols * 4);
        const VkDeviceSize out_bytes = (VkDeviceSize)(mr * out_cols * 4);
        if (in) {
            memcpy(staged ? vk->stage_in.map : vk->act_in.map, in + m0 * in_cols, (size_t)in_bytes);
            if (bwd)
                memcpy(staged ? vk->stage_out.map : vk->act_out.map, out + m0 * out_cols, (size_t)out_bytes);
        }
        st = qlora__vk_sets_reset(vk, (uint32_t)rw->nchunks, err);
        if (st == QLORA_OK) st = qlora__vk_begin(vk, err);
        if (st != QLORA_OK) return st;
        if (staged) {
            VkBufferCopy bc;
            bc.srcOffset = 0;
            bc.dstOffset = 0;
            bc.size      = in_bytes;
            vk->vkCmdCopyBuffer(vk->cmd, vk->stage_in.buf, vk->act_in.buf, 1, &bc);
            if (bwd) {
                bc.size = out_bytes;
                vk->vkCmdCopyBuffer(vk->cmd, vk->stage_out.buf, vk->act_out.buf, 1, &bc);
            }
            qlora__vk_barrier(vk, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                              VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                              VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
        }
        if (vk->opt.poison_outputs && !bwd) {
            vk->vkCmdFillBuffer(vk->cmd, vk->act_out.buf, 0, out_bytes, 0x7fc00000u);   // quiet NaN
            qlora__vk_barrier(vk, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                              VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                              VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
        }
        vk->vkCmdBindPipeline(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, mr == slab ? pipe : pipe_last);
        for (int32_t ci = 0; ci < rw->nchunks; ci++) {
            const qlora__vk_chunk *c = &rw->chunks[ci];
            VkBuffer bufs[QLORA__VK_NBINDINGS] = {c->buf.buf, c->buf.buf, c->buf.buf, vk->act_in.buf,
                                                  vk->act_out.buf};
            VkDeviceSize offs[QLORA__VK_NBINDINGS] = { c->codes_off, c->scales_off, c->nested_off, 0, 0 };
            VkDeviceSize rngs[QLORA__VK_NBINDINGS] = {c->codes_size, c->scales_size, c->nested_size, in_bytes,
                                                      out_bytes};
            st = qlora__vk_bind(vk, bufs, offs, rngs, err);
            if (st != QLORA_OK) {
                vk->vkEndCommandBuffer(vk->cmd);
                return st;
            }
            qlora__vk_push pc;
            memset(&pc, 0, sizeof pc);
            qlora__vk_push_weight(rw, c, &pc);
            pc.M    = (uint32_t)mr;
            pc.ldy  = (uint32_t)rw->rows;
            pc.col0 = (uint32_t)c->row0;
            int64_t gx, gy;
            if (kind == QLORA__VK_GEMV) {
                gx = c->rows;
                gy = 1;
            } else {
                const uint32_t *t = qlora__vk_tiles[variant];
                int64_t bm = t[0] * t[2], bn = t[1] * t[3];
                gx = ((bwd ? rw->cols : c->rows) + bn - 1) / bn;
                gy = (mr + bm - 1) / bm;
            }
            for (int r = 0; r < reps; r++) {
                qlora__vk_dispatch(vk, &pc, gx, gy);
                // Backward chunks accumulate into the same dX: order them.
                if (bwd) {
                    qlora__vk_barrier(vk, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                                      VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT,
                                      VK_ACCESS_SHADER_READ_BIT | VK_ACCESS_SHADER_WRITE_BIT);
                }
            }
        }
        if (staged) {
            qlora__vk_barrier(vk, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                              VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_READ_BIT);
            VkBufferCopy bc;
            bc.srcOffset = 0;
            bc.dstOffset = 0;
            bc.size      = out_bytes;
            vk->vkCmdCopyBuffer(vk->cmd, vk->act_out.buf, vk->stage_out.buf, 1, &bc);
            qlora__vk_barrier(vk, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                              VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
        } else {
            qlora__vk_barrier(vk, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                              VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
        }
        st = qlora__vk_submit(vk, fn, err);
        if (st != QLORA_OK) return st;
        if (out) memcpy(out + m0 * out_cols, staged ? vk->stage_out.map : vk->act_out.map, (size_t)out_bytes);
    }
    return QLORA_OK;
}

// ---------------------------------------------------------------------------------------------
// 2.10 public functions

static qlora_status qlora__vk_be_forward(void *user, float *y, const float *x, const qlora_nf4 *w, int64_t M,
                                         qlora_error *err) {
    return qlora_vk_nf4_linear_forward((qlora_vk *)user, y, x, w, M, err);
}

static qlora_status qlora__vk_be_backward(void *user, float *dx, const float *dy, const qlora_nf4 *w,
                                          int64_t M, qlora_error *err) {
    return qlora_vk_nf4_linear_backward((qlora_vk *)user, dx, dy, w, M, err);
}

// Environment override of the validation setting: "0" off, "gpu"/"2" GPU-assisted, anything else on.
static int qlora__vk_env_validation(int dflt) {
    const char *v = getenv("QLORA_VK_VALIDATION");
    if (!v || !*v) return dflt;
    if (strcmp(v, "0") == 0) return 0;
    if (strcmp(v, "gpu") == 0 || strcmp(v, "2") == 0) return 2;
    return 1;
}

QLORADEF qlora_status qlora_vk_init(qlora_vk **ctx, const qlora_vk_options *opt, qlora_error *err) {
    if (!ctx) return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_init: ctx is NULL");
    *ctx = NULL;
    if (opt && (opt->gemm_variant < 0 || opt->gemm_variant > 3)) {
        return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_init: gemm_variant = %d (want 0..3)",
                              (int)opt->gemm_variant);
    }
    qlora_vk *vk = (qlora_vk *)QLORA_MALLOC(sizeof(qlora_vk));
    if (!vk) return qlora__vk_fail(err, QLORA_ERR_NOMEM, "qlora_vk_init: context");
    memset(vk, 0, sizeof *vk);
    if (opt) vk->opt = *opt;
    vk->validation = qlora__vk_env_validation(vk->opt.validation > 1 ? 2 : vk->opt.validation);
    const char *want = getenv("QLORA_VK_DEVICE");
    if (!want || !*want) want = vk->opt.device;

    qlora_status st = qlora__vk_open(vk, err);
    if (st == QLORA_OK) st = qlora__vk_create_instance(vk, vk->validation, err);
    if (st == QLORA_OK) st = qlora__vk_pick(vk, want, vk->opt.allow_cpu, err);
    if (st == QLORA_OK) st = qlora__vk_create_device(vk, err);
    if (st != QLORA_OK) {
        qlora_vk_free(vk);
        return st;
    }
    vk->backend.name                = "vulkan";
    vk->backend.user                = vk;
    vk->backend.nf4_linear_forward  = qlora__vk_be_forward;
    vk->backend.nf4_linear_backward = qlora__vk_be_backward;
    *ctx = vk;
    return QLORA_OK;
}

QLORADEF void qlora_vk_free(qlora_vk *vk) {
    if (!vk) return;
    if (vk->device && vk->vkWaitForFences) {   // every device entry point was loaded
        vk->vkDeviceWaitIdle(vk->device);
        for (int32_t i = 0; i < vk->nweights; i++) qlora__vk_weight_free(vk, vk->weights[i]);
        qlora__vk_buf_free(vk, &vk->act_in);
        qlora__vk_buf_free(vk, &vk->act_out);
        qlora__vk_buf_free(vk, &vk->stage_in);
        qlora__vk_buf_free(vk, &vk->stage_out);
        for (int k = 0; k < QLORA__VK_NKINDS; k++) {
            for (int v = 0; v < QLORA__VK_NVARIANTS; v++) {
                if (vk->pipes[k][v]) vk->vkDestroyPipeline(vk->device, vk->pipes[k][v], NULL);
            }
            if (vk->modules[k]) vk->vkDestroyShaderModule(vk->device, vk->modules[k], NULL);
        }
        if (vk->dpool) vk->vkDestroyDescriptorPool(vk->device, vk->dpool, NULL);
        if (vk->fence) vk->vkDestroyFence(vk->device, vk->fence, NULL);
        if (vk->cpool) vk->vkDestroyCommandPool(vk->device, vk->cpool, NULL);
        if (vk->playout) vk->vkDestroyPipelineLayout(vk->device, vk->playout, NULL);
        if (vk->dsl) vk->vkDestroyDescriptorSetLayout(vk->device, vk->dsl, NULL);
    }
    if (vk->device && vk->vkDestroyDevice) vk->vkDestroyDevice(vk->device, NULL);
    QLORA_FREE(vk->weights);
    qlora__vk_close_instance(vk);
    QLORA_FREE(vk);
}

// A context with only the instance (no validation), for the device queries.
static qlora_status qlora__vk_probe(qlora_vk *vk, qlora_error *err) {
    memset(vk, 0, sizeof *vk);
    qlora_status st = qlora__vk_open(vk, err);
    if (st == QLORA_OK) st = qlora__vk_create_instance(vk, 0, err);
    if (st != QLORA_OK) qlora__vk_close_instance(vk);
    return st;
}

QLORADEF qlora_status qlora_vk_device_count(int32_t *count, qlora_error *err) {
    if (!count) return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_device_count: count is NULL");
    *count = 0;
    qlora_vk *vk = (qlora_vk *)QLORA_MALLOC(sizeof(qlora_vk));
    if (!vk) return qlora__vk_fail(err, QLORA_ERR_NOMEM, "qlora_vk_device_count");
    qlora_status st = qlora__vk_probe(vk, err);
    if (st == QLORA_OK) {
        uint32_t n = 0;
        VkResult r = vk->vkEnumeratePhysicalDevices(vk->instance, &n, NULL);
        if (r != VK_SUCCESS)
            st = qlora__vk_fail_vk(err, r, "vkEnumeratePhysicalDevices", "qlora_vk_device_count");
        *count = (int32_t)n;
        qlora__vk_close_instance(vk);
    }
    QLORA_FREE(vk);
    return st;
}

QLORADEF qlora_status qlora_vk_device_name(int32_t index, char *name, size_t cap, qlora_error *err) {
    if (!name || cap == 0)
        return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_device_name: name buffer is empty");
    name[0] = 0;
    qlora_vk *vk = (qlora_vk *)QLORA_MALLOC(sizeof(qlora_vk));
    if (!vk) return qlora__vk_fail(err, QLORA_ERR_NOMEM, "qlora_vk_device_name");
    qlora_status st = qlora__vk_probe(vk, err);
    if (st == QLORA_OK) {
        VkPhysicalDevice *pds = NULL;
        uint32_t          n = 0;
        st = qlora__vk_devices(vk, &pds, &n, err);
        if (st == QLORA_OK && (index < 0 || (uint32_t)index >= n)) {
            st = qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_device_name: index %d of %u devices",
                                (int)index, n);
        } else if (st == QLORA_OK) {
            VkPhysicalDeviceProperties p;
            vk->vkGetPhysicalDeviceProperties(pds[index], &p);
            snprintf(name, cap, "%s [%s]", p.deviceName, qlora__vk_type_name(p.deviceType));
        }
        QLORA_FREE(pds);
        qlora__vk_close_instance(vk);
    }
    QLORA_FREE(vk);
    return st;
}

QLORADEF const qlora_backend *qlora_vk_backend(qlora_vk *vk) { return vk ? &vk->backend : NULL; }
QLORADEF const char *qlora_vk_name(const qlora_vk *vk) { return vk ? vk->name : ""; }
QLORADEF int64_t qlora_vk_validation_messages(const qlora_vk *vk) { return vk ? vk->vmsg : 0; }
QLORADEF qlora_vk_stats qlora_vk_get_stats(const qlora_vk *vk) {
    qlora_vk_stats s;
    if (vk) return vk->stats;
    memset(&s, 0, sizeof s);
    return s;
}
QLORADEF const char *qlora_vk_validation_last(const qlora_vk *vk) { return vk ? vk->vlast : ""; }

QLORADEF qlora_status qlora_vk_upload(qlora_vk *vk, const qlora_nf4 *w, qlora_error *err) {
    qlora__vk_weight *rw;
    if (!vk) return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_upload: ctx is NULL");
    return qlora__vk_resident(vk, w, &rw, err);
}

QLORADEF void qlora_vk_release(qlora_vk *vk, qlora_nf4 *w) {
    if (!vk || !w) return;
    for (int32_t i = 0; i < vk->nweights; i++) {
        if (vk->weights[i]->key != w) continue;
        if (w->backend_data == (void *)vk->weights[i]) w->backend_data = NULL;
        vk->vkDeviceWaitIdle(vk->device);
        qlora__vk_forget(vk, i);
        return;
    }
}

QLORADEF qlora_status qlora_vk_nf4_linear_forward(qlora_vk *vk, float *y, const float *x, const qlora_nf4 *w,
                                                  int64_t M, qlora_error *err) {
    if (!x || !y)
        return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_nf4_linear_forward: %s is NULL", x ? "y" : "x");
    qlora_status st = qlora__vk_linear(vk, QLORA__VK_OP_FWD, y, x, w, M, 1, err);
    if (st == QLORA_OK) {
        vk->stats.forward++;
        vk->stats.flops += 2.0 * (double)M * (double)w->rows * (double)w->cols;
    }
    return st;
}

QLORADEF qlora_status qlora_vk_nf4_linear_backward(qlora_vk *vk, float *dx, const float *dy,
                                                   const qlora_nf4 *w, int64_t M, qlora_error *err) {
    if (!dx || !dy)
        return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_nf4_linear_backward: %s is NULL",
                              dx ? "dy" : "dx");
    qlora_status st = qlora__vk_linear(vk, QLORA__VK_OP_BWD, dx, dy, w, M, 1, err);
    if (st == QLORA_OK) {
        vk->stats.backward++;
        vk->stats.flops += 2.0 * (double)M * (double)w->rows * (double)w->cols;
    }
    return st;
}

QLORADEF qlora_status qlora_vk_bench_linear(qlora_vk *vk, const qlora_nf4 *w, int64_t M, int backward,
                                            int reps, qlora_error *err) {
    if (reps < 1) return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_bench_linear: reps = %d", reps);
    return qlora__vk_linear(vk, backward ? QLORA__VK_OP_BWD : QLORA__VK_OP_FWD, NULL, NULL, w, M, reps, err);
}

QLORADEF qlora_status qlora_vk_nf4_dequantize(qlora_vk *vk, float *out, const qlora_nf4 *w,
                                              qlora_error *err) {
    if (!vk || !out)
        return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_nf4_dequantize: %s is NULL", vk ? "out" : "ctx");
    qlora__vk_weight *rw = NULL;
    VkPipeline        pipe;
    qlora_status      st = qlora__vk_resident(vk, w, &rw, err);
    if (st == QLORA_OK) st = qlora__vk_pipeline(vk, QLORA__VK_DEQ, 0, &pipe, err);
    if (st != QLORA_OK) return st;
    const int64_t K = rw->cols;
    int64_t slab = (int64_t)(vk->bind_limit / 4) / K; // rows per dispatch so that the output fits a binding
    if (slab < 1)
        return qlora__vk_fail(err, QLORA_ERR_UNSUPPORTED,
                              "qlora_vk_nf4_dequantize: a row exceeds the binding limit");
    st = qlora__vk_buf_reserve(vk, &vk->act_out, (VkDeviceSize)((slab < rw->rows ? slab : rw->rows) * K * 4),
                               QLORA__VK_MEM_DEVICE, "dequantized rows", err);
    if (st == QLORA_OK && !vk->direct) {
        st = qlora__vk_buf_reserve(vk, &vk->stage_out, vk->act_out.size, QLORA__VK_MEM_HOST, "staging out",
                                   err);
    }
    if (st != QLORA_OK) return st;
    for (int32_t ci = 0; ci < rw->nchunks; ci++) {
        const qlora__vk_chunk *c = &rw->chunks[ci];
        for (int64_t r0 = 0; r0 < c->rows; r0 += slab) {
            const int64_t      nr    = c->rows - r0 < slab ? c->rows - r0 : slab;
            const VkDeviceSize bytes = (VkDeviceSize)(nr * K * 4);
            st = qlora__vk_sets_reset(vk, 1, err);
            if (st == QLORA_OK) st = qlora__vk_begin(vk, err);
            if (st != QLORA_OK) return st;
            if (vk->opt.poison_outputs) {
                vk->vkCmdFillBuffer(vk->cmd, vk->act_out.buf, 0, bytes, 0x7fc00000u);   // quiet NaN
                qlora__vk_barrier(vk, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                                  VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT);
            }
            vk->vkCmdBindPipeline(vk->cmd, VK_PIPELINE_BIND_POINT_COMPUTE, pipe);
            VkBuffer bufs[QLORA__VK_NBINDINGS] = {c->buf.buf, c->buf.buf, c->buf.buf, vk->act_out.buf,
                                                  vk->act_out.buf};
            VkDeviceSize offs[QLORA__VK_NBINDINGS] = { c->codes_off, c->scales_off, c->nested_off, 0, 0 };
            VkDeviceSize rngs[QLORA__VK_NBINDINGS] = {c->codes_size, c->scales_size, c->nested_size, bytes,
                                                      bytes};
            st = qlora__vk_bind(vk, bufs, offs, rngs, err);
            if (st != QLORA_OK) {
                vk->vkEndCommandBuffer(vk->cmd);
                return st;
            }
            qlora__vk_push pc;
            memset(&pc, 0, sizeof pc);
            qlora__vk_push_weight(rw, c, &pc);
            pc.M  = (uint32_t)(nr * K);
            pc.r0 = (uint32_t)r0;
            qlora__vk_dispatch(vk, &pc, (nr * K + vk->gemv_wg - 1) / vk->gemv_wg, 1);
            if (vk->direct) {
                qlora__vk_barrier(vk, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                                  VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
            } else {
                qlora__vk_barrier(vk, VK_PIPELINE_STAGE_COMPUTE_SHADER_BIT, VK_ACCESS_SHADER_WRITE_BIT,
                                  VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_READ_BIT);
                VkBufferCopy bc;
                bc.srcOffset = 0;
                bc.dstOffset = 0;
                bc.size      = bytes;
                vk->vkCmdCopyBuffer(vk->cmd, vk->act_out.buf, vk->stage_out.buf, 1, &bc);
                qlora__vk_barrier(vk, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                                  VK_PIPELINE_STAGE_HOST_BIT, VK_ACCESS_HOST_READ_BIT);
            }
            st = qlora__vk_submit(vk, "qlora_vk_nf4_dequantize", err);
            if (st != QLORA_OK) return st;
            memcpy(out + (c->row0 + r0) * K, vk->direct ? vk->act_out.map : vk->stage_out.map, (size_t)bytes);
        }
    }
    vk->stats.dequantize++;
    return QLORA_OK;
}

QLORADEF qlora_status qlora_vk_bench_copy(qlora_vk *vk, int64_t bytes, int reps, qlora_error *err) {
    if (!vk || bytes <= 0 || reps < 1)
        return qlora__vk_fail(err, QLORA_ERR_ARG, "qlora_vk_bench_copy: bad arguments");
    qlora__vk_buf a, b;
    memset(&b, 0, sizeof b);
    int          saved = vk->direct;
    qlora_status st;
    vk->direct = 0;   // plain device-local buffers, no mapping
    st = qlora__vk_buf_create(vk, &a, (VkDeviceSize)bytes, QLORA__VK_MEM_DEVICE, "copy source", err);
    if (st == QLORA_OK)
        st = qlora__vk_buf_create(vk, &b, (VkDeviceSize)bytes, QLORA__VK_MEM_DEVICE, "copy target", err);
    vk->direct = saved;
    if (st == QLORA_OK) st = qlora__vk_begin(vk, err);
    if (st == QLORA_OK) {
        VkBufferCopy bc;
        bc.srcOffset = 0;
        bc.dstOffset = 0;
        bc.size      = (VkDeviceSize)bytes;
        vk->vkCmdFillBuffer(vk->cmd, a.buf, 0, VK_WHOLE_SIZE, 0);
        for (int r = 0; r < reps; r++) {
            qlora__vk_barrier(vk, VK_PIPELINE_STAGE_TRANSFER_BIT, VK_ACCESS_TRANSFER_WRITE_BIT,
                              VK_PIPELINE_STAGE_TRANSFER_BIT,
                              VK_ACCESS_TRANSFER_READ_BIT | VK_ACCESS_TRANSFER_WRITE_BIT);
            vk->vkCmdCopyBuffer(vk->cmd, a.buf, b.buf, 1, &bc);
        }
        st = qlora__vk_submit(vk, "qlora_vk_bench_copy", err);
    }
    qlora__vk_buf_free(vk, &a);
    qlora__vk_buf_free(vk, &b);
    return st;
}

#endif // QLORA_VULKAN__IMPLEMENTED
#endif // QLORA_VULKAN_IMPLEMENTATION
