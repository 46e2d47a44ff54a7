// bench_llama.c - model-level benchmarks of qlora.h (section 7 and the optimizer), each figure next
// to a reference measured in the same run, and the ratio.
//
//   1. QLoRA training step (forward + backward) tokens/s of Llama configs S and M, LoRA r 16 on all
//      seven projections, against the bound FLOPs per step / best sgemm GFLOP/s (target M >= 0.45).
//      Peak RSS of each config (each runs in its own child process, so the peaks are separate).
//      Where the time goes: NF4 forward, NF4 backward, LoRA, attention, lm_head + CE, AdamW, other.
//      Each config runs twice: fp32 compute (the arithmetic the tests hold against PyTorch), then
//      QLORA_COMPUTE_BF16 (bitsandbytes' compute_dtype=bfloat16, QLoRA's recipe: the NF4 and lm_head
//      matmuls round both operands to bf16 and sum in fp32; rows "S bf16", "M bf16").
//   2. (`7b`) decode tokens/s of a Meditron-7b-shaped model with random NF4 weights made in memory,
//      against the bytes one token must read / the streaming-read bandwidth (target >= 0.70).
//   3. Train step (forward + backward + AdamW) tokens/s and peak RSS of S and M against a PyTorch
//      fp32 LoRA step of the same model (test/ref/torch_lora_step.py; dense fp32 frozen weights,
//      since torch has no NF4 on the CPU), which runs in its best configuration here (see the script).
//      Target >= 1.5x its tokens/s at <= 0.5x its peak RSS, for the trainer as `qlora train` runs it:
//      in bf16 compute, its default (QLoRA's compute_dtype). Two rows in matched arithmetic follow
//      for information: ours in fp32 against torch fp32, and ours in bf16 against torch under
//      torch.autocast('cpu', bfloat16) (the script's --autocast-bf16: oneDNN's bf16 matmuls).
//   4. (`7b`) one QLoRA step of the 7b-shaped model, B 1 x T 512, gradient checkpointing, paged
//      8-bit AdamW: peak RSS (target <= 5.5 GiB) and step time against the FLOP bound (<= 1.5x);
//      in fp32 compute, then in bf16.
//
// Arguments: `7b` adds 2 and 4 (about 5.5 GB of memory and about 6 minutes), `7b-only` runs only
// them, `quick` shortens everything, `notorch` skips the PyTorch reference, `passive` runs everything
// (references included) with OMP_WAIT_POLICY=passive: on a machine shared with other jobs, threads
// that spin while they wait take the cores their descheduled teammates need (config S ran 2.9x
// faster so at load 5; see the S diagnostic below, which runs the other policy).
// Runs on 2 threads. Each model runs in a child process (this program with `--child ...`), so that
// its peak RSS (VmHWM) is its own. Other jobs on the machine slow every figure down: the load
// average and each step's CPU-seconds / wall-seconds are printed (2.0 = both cores were ours).
// For experiments: `bench_llama --child train S|M PEAK WARMUP STEPS TAG own` runs one config with
// exec.kernel = QLORA_KERNEL_SIMD (the library's own GEMM for every matmul, no OpenBLAS call), or
// with TAG bf16 in QLORA_COMPUTE_BF16;
// `bench_llama --child decode LAYERS TOKENS` runs the decode of item 2 on the 7b shape cut to LAYERS
// layers (about 0.45 GB of NF4 + 1 GB of fp32 embedding and lm_head for 4), with its own bandwidth figure.
//
// FLOPs of one LoRA training step (N = B·T tokens, per layer the seven frozen projections hold
// P_l = in·out weights summed, r the LoRA rank, NH heads of HD dims, V vocab, C hidden):
//   frozen forward     2·N·P_l per layer (counted again for every layer that checkpointing recomputes)
//   frozen backward    2·N·P_l per layer: only the input gradient dX = dY·W, W gets no gradient;
//                      layer 0's q/k/v input gradient is not needed (it would only reach the
//                      frozen embedding) and is not counted
//   LoRA forward       2·N·r·(in + out) per adapter (x·Aᵀ, then ·Bᵀ)
//   LoRA backward      4·N·r·(in + out) per adapter (dB, dY·B, dA, dX; no dX for layer 0's q/k/v)
//   attention          causal: B·NH·T(T+1)/2 (query, key) pairs per layer; forward 4·HD per pair
//                      (q·k and p·v), backward 8·HD per pair (dV, dP, dQ, dK)
//   lm_head            2·N·C·V forward + 2·N·C·V backward (input gradient only)
//   not counted        elementwise work: RMSNorm, RoPE, SwiGLU, softmax, cross-entropy, AdamW
#define _POSIX_C_SOURCE 200809L
#define QLORA_IMPLEMENTATION
#include "qlora.h"

#include "bench_common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BL_RANK 16
#define BL_ALPHA 32.0f
#define BL_TORCH_SCRIPT "test/ref/torch_lora_step.py"
#define BL_PYTHON "/usr/bin/python3"
#define GIB (1024.0 * 1024.0 * 1024.0)
#define BL_PASSIVE_ENV "OMP_WAIT_POLICY=passive OPENBLAS_THREAD_TIMEOUT=4"

typedef struct bl_cfg {
    const char *name;
    int dim, layers, heads, hidden, vocab, T, B;
    int ckpt;         // gradient checkpointing
    int optim_bits;   // AdamW state bits (32 or 8)
} bl_cfg;

static const bl_cfg bl_configs[3] = {
    { "S", 288, 6, 6, 768, 32000, 256, 8, 0, 32 },
    { "M", 768, 12, 12, 2048, 32000, 512, 2, 0, 32 },
    { "7b", 4096, 32, 32, 11008, 32017, 512, 1, 1, 8 },
};

static const char *bl_tag = "";   // child: prefix of its `@ key value` lines
static int bl_own_gemm;           // child: exec.kernel = QLORA_KERNEL_SIMD (no OpenBLAS call in the step)
static int bl_bf16;               // child: exec.compute = QLORA_COMPUTE_BF16 (bitsandbytes' compute_dtype=bfloat16)

static const bl_cfg *bl_find(const char *name) {
    for (int i = 0; i < 3; i++)
        if (!strcmp(bl_configs[i].name, name)) return &bl_configs[i];
    return NULL;
}

// (out, in) of target t for config c (no GQA: NKV = NH).
static void bl_shape(const bl_cfg *c, int t, int64_t *out, int64_t *in) {
    int64_t C = c->dim, H = c->hidden;
    switch (t) {
    case QLORA_TARGET_GATE: case QLORA_TARGET_UP: *out = H; *in = C; break;
    case QLORA_TARGET_DOWN: *out = C; *in = H; break;
    default: *out = C; *in = C; break;
    }
}

// ---------------------------------------------------------------------------------------------
// FLOP count of one training step (see the header comment for the formula)

typedef struct bl_flops {
    double nf4_fwd, nf4_bwd, lora_fwd, lora_bwd, attn_fwd, attn_bwd, head_fwd, head_bwd, total;
    double p_frozen;   // frozen projection parameters (all layers)
} bl_flops;

static bl_flops bl_count(const bl_cfg *c, int R) {
    bl_flops f;
    const double N = (double)c->B * c->T, L = c->layers, rec = c->ckpt ? c->layers - 1 : 0;
    const double HD = (double)c->dim / c->heads, pairs = (double)c->B * c->T * (c->T + 1.0) / 2.0;
    double p_layer = 0.0, p_qkv = 0.0, r_layer = 0.0, r_bwd_layer = 0.0, r_qkv_in = 0.0;
    memset(&f, 0, sizeof f);
    for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
        int64_t out, in;
        bl_shape(c, t, &out, &in);
        p_layer += (double)in * (double)out;
        r_layer += (double)R * (double)(in + out);
        r_bwd_layer += 2.0 * R * (double)(in + out);
        if (t <= QLORA_TARGET_V) {
            p_qkv += (double)in * (double)out;
            r_qkv_in += (double)R * (double)in;
        }
    }
    f.p_frozen = L * p_layer;
    f.nf4_fwd = (L + rec) * 2.0 * N * p_layer;
    f.nf4_bwd = L * 2.0 * N * p_layer - 2.0 * N * p_qkv;
    f.lora_fwd = (L + rec) * 2.0 * N * r_layer;
    f.lora_bwd = L * 2.0 * N * r_bwd_layer - 2.0 * N * r_qkv_in;
    f.attn_fwd = (L + rec) * c->heads * pairs * 4.0 * HD;
    f.attn_bwd = L * c->heads * pairs * 8.0 * HD;
    f.head_fwd = 2.0 * N * c->dim * (double)c->vocab;
    f.head_bwd = 2.0 * N * c->dim * (double)c->vocab;
    f.total = f.nf4_fwd + f.nf4_bwd + f.lora_fwd + f.lora_bwd + f.attn_fwd + f.attn_bwd + f.head_fwd + f.head_bwd;
    return f;
}

// ---------------------------------------------------------------------------------------------
// NF4 timing: the model's matmuls on frozen weights go through qlora_exec.backend when one is set,
// so a backend that runs the CPU path itself between two clock reads measures exactly the NF4
// share of a real step.

typedef struct bl_nf4_timer {
    double fwd_s, bwd_s;
    int64_t fwd_calls, bwd_calls;
    qlora_kernel  kernel;    // the CPU path to run (the model's exec.kernel)
    qlora_compute compute;   // and its arithmetic (exec.compute)
} bl_nf4_timer;

static void bl_timer_reset(bl_nf4_timer *t, const qlora_exec *ex) {
    memset(t, 0, sizeof *t);
    t->kernel = ex->kernel;
    t->compute = ex->compute;
}

static qlora_status bl_timer_fwd(void *user, float *y, const float *x, const qlora_nf4 *w, int64_t M,
                                 qlora_error *err) {
    bl_nf4_timer *t = (bl_nf4_timer *)user;
    double t0 = bc_now();
    qlora_exec ex;
    ex.kernel = t->kernel;
    ex.backend = NULL;
    ex.compute = t->compute;
    qlora_status st = qlora_nf4_linear_forward(&ex, y, x, w, M, err);   // the CPU path
    t->fwd_s += bc_now() - t0;
    t->fwd_calls++;
    return st;
}

static qlora_status bl_timer_bwd(void *user, float *dx, const float *dy, const qlora_nf4 *w, int64_t M,
                                 qlora_error *err) {
    bl_nf4_timer *t = (bl_nf4_timer *)user;
    double t0 = bc_now();
    qlora_exec ex;
    ex.kernel = t->kernel;
    ex.backend = NULL;
    ex.compute = t->compute;
    qlora_status st = qlora_nf4_linear_backward(&ex, dx, dy, w, M, err);
    t->bwd_s += bc_now() - t0;
    t->bwd_calls++;
    return st;
}

// A backend whose NF4 matmuls run the CPU kernels through the timer t.
static qlora_backend bl_timer_backend(bl_nf4_timer *t) {
    qlora_backend be;
    memset(&be, 0, sizeof be);
    be.name = "bench-timer";
    be.user = t;
    be.nf4_linear_forward = bl_timer_fwd;
    be.nf4_linear_backward = bl_timer_bwd;
    return be;
}

// ---------------------------------------------------------------------------------------------
// child processes: one model each

static void bl_die(const char *what, qlora_status st, const qlora_error *err) {
    printf("ERROR %s: %s (%s)\n", what, qlora_status_string(st), err ? err->detail : "");
    fflush(stdout);
    exit(1);
}

static qlora_llama_config bl_llama_config(const bl_cfg *c) {
    qlora_llama_config lc;
    memset(&lc, 0, sizeof lc);
    lc.hidden_size = c->dim;
    lc.intermediate_size = c->hidden;
    lc.n_layers = c->layers;
    lc.n_heads = c->heads;
    lc.n_kv_heads = c->heads;
    lc.head_dim = c->dim / c->heads;
    lc.vocab_size = c->vocab;
    lc.max_position_embeddings = c->T > 2048 ? c->T : 2048;
    lc.rms_norm_eps = 1e-5f;
    lc.rope_theta = 10000.0f;
    lc.rope_scaling_factor = 1.0f;
    lc.tie_word_embeddings = 0;
    lc.bos_token_id = 1;
    lc.eos_token_id = 2;
    lc.pad_token_id = -1;
    return lc;
}

static void bl_model_init(qlora_model *m, const bl_cfg *c) {
    qlora_llama_config lc = bl_llama_config(c);
    qlora_model_options o;
    qlora_error err;
    memset(&o, 0, sizeof o);
    o.exec.kernel = bl_own_gemm ? QLORA_KERNEL_SIMD : QLORA_KERNEL_AUTO;
    o.exec.compute = bl_bf16 ? QLORA_COMPUTE_BF16 : QLORA_COMPUTE_F32;
    o.blocksize = 64;          // bitsandbytes' default, with double quantization
    o.lora.rank = BL_RANK;
    o.lora.alpha = BL_ALPHA;
    o.lora.dropout = 0.0f;     // qlora.py's default; the PyTorch reference has none either
    o.lora_targets = QLORA_TARGETS_ALL;
    o.lora_seed = 7;
    double t0 = bc_now();
    qlora_status st = qlora_model_init_random(m, &lc, &o, 1234, &err);
    if (st != QLORA_OK) bl_die("qlora_model_init_random", st, &err);
    int64_t nf4 = 0;
    for (int l = 0; l < c->layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) nf4 += (int64_t)qlora_nf4_bytes(&m->layers[l].w[t]);
    printf("   model: NF4 projections %.1f MB (bs 64 + DQ), fp32 embedding + lm_head %.1f MB, "
           "%lld LoRA parameters; made in %.1f s\n",
           (double)nf4 / 1e6, 8.0 * c->vocab * (double)c->dim / 1e6, (long long)qlora_model_lora_params(m),
           bc_now() - t0);
}

// AdamW over every adapter: (A, dA) and (B, dB) per adapter.
static void bl_optim_init(qlora_adamw *opt, qlora_param **params, qlora_model *m, int bits) {
    int64_t n = 0;
    qlora_error err;
    *params = (qlora_param *)bc_xmalloc(sizeof(qlora_param) * (size_t)(m->cfg.n_layers * QLORA_TARGET_COUNT * 2));
    memset(*params, 0, sizeof(qlora_param) * (size_t)(m->cfg.n_layers * QLORA_TARGET_COUNT * 2));
    for (int l = 0; l < m->cfg.n_layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            qlora_lora *a = &m->layers[l].lora[t];
            if (!a->A) continue;
            (*params)[n].name = NULL;
            (*params)[n].w = a->A;
            (*params)[n].g = a->dA;
            (*params)[n].n = (int64_t)a->rank * a->in;
            n++;
            (*params)[n].name = NULL;
            (*params)[n].w = a->B;
            (*params)[n].g = a->dB;
            (*params)[n].n = (int64_t)a->rank * a->out;
            n++;
        }
    qlora_adamw_config cfg = qlora_adamw_default_config();
    cfg.lr = 2e-4f;
    cfg.weight_decay = 0.0f;
    cfg.optim_bits = bits;
    qlora_status st = qlora_adamw_init(opt, *params, n, &cfg, &err);
    if (st != QLORA_OK) bl_die("qlora_adamw_init", st, &err);
}

// Seconds of the phases the replays measure, per step.
typedef struct bl_replay {
    double attn_fwd, attn_bwd;   // one layer: RoPE + attention (+ their backward)
    double lora_fwd, lora_bwd;   // one layer: the LoRA part of the seven adapters, NF4 excluded
    double head_fwd, head_bwd;   // lm_head + cross-entropy, forward and backward
    double elem_fwd, elem_bwd;   // one layer: RMSNorms, SwiGLU, residual adds, gradient zeroing
} bl_replay;

// y += x, as the model's residual adds.
static void bl_add(float *y, const float *x, int64_t n) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (n > (1 << 16))
#endif
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

// Replays, after a step (its activations are still in ts), the pieces of one step with the
// library's own public functions and the same shapes, and times them: one layer of elementwise
// work, of attention and of adapters (LoRA = the adapters' time minus their NF4 matmuls), and the
// lm_head + cross-entropy part. Each is the best of 3 (the head: of 1).
static bl_replay bl_replay_phases(qlora_model *m, qlora_train_state *ts) {
    const qlora_llama_config *c = &m->cfg;
    const int64_t M = ts->M, C = c->hidden_size, H = c->intermediate_size, V = c->vocab_size;
    const int64_t NH = c->n_heads, NKV = c->n_kv_heads, HD = c->head_dim;
    qlora_llama_acts *A = &ts->acts[ts->n_acts - 1];
    bl_replay r;
    qlora_error err;
    memset(&r, 0, sizeof r);
    r.attn_fwd = r.attn_bwd = r.lora_fwd = r.lora_bwd = r.elem_fwd = r.elem_bwd = 1e30;
    // elementwise work of the last layer, as qlora__ll_layer_forward / _backward do it
    for (int rep = 0; rep < 3; rep++) {
        const int64_t l = c->n_layers - 1;
        const float *x = ts->resid + l * M * C;
        float *y = ts->resid + (l + 1) * M * C;
        const qlora_llama_layer *ly = &m->layers[l];
        double t0 = bc_now();
        qlora_rmsnorm_forward(A->ln1, A->rstd1, x, ly->input_norm, M, C, c->rms_norm_eps);
        bl_add(A->h, x, M * C);
        qlora_rmsnorm_forward(A->ln2, A->rstd2, A->h, ly->post_norm, M, C, c->rms_norm_eps);
        qlora_swiglu_forward(A->a, A->g, A->u, M * H);
        bl_add(y, A->h, M * C);
        double t1 = bc_now();
        memset(ts->da, 0, sizeof(float) * (size_t)(M * H));
        memset(ts->dg, 0, sizeof(float) * (size_t)(M * H));
        memset(ts->du, 0, sizeof(float) * (size_t)(M * H));
        qlora_swiglu_backward(ts->dg, ts->du, ts->da, A->g, A->u, M * H);
        memset(ts->dln, 0, sizeof(float) * (size_t)(M * C));
        qlora_rmsnorm_backward(ts->dres, NULL, ts->dln, A->h, ly->post_norm, A->rstd2, M, C);
        memset(ts->dao, 0, sizeof(float) * (size_t)(M * NH * HD));
        memset(ts->dln, 0, sizeof(float) * (size_t)(M * C));
        qlora_rmsnorm_backward(ts->dres, NULL, ts->dln, x, ly->input_norm, A->rstd1, M, C);
        double t2 = bc_now();
        if (t1 - t0 < r.elem_fwd) r.elem_fwd = t1 - t0;
        if (t2 - t1 < r.elem_bwd) r.elem_bwd = t2 - t1;
    }
    for (int rep = 0; rep < 3; rep++) {
        double t0 = bc_now();
        qlora_rope_forward(A->q, ts->pos, m->rope_cos, m->rope_sin, M, NH, HD);
        qlora_rope_forward(A->k, ts->pos, m->rope_cos, m->rope_sin, M, NKV, HD);
        qlora_attention_forward(A->ao, A->att, A->q, A->k, A->v, ts->key_mask, ts->B, ts->T, NH, NKV, HD);
        double t1 = bc_now();
        memset(ts->dq, 0, sizeof(float) * (size_t)(M * NH * HD));
        memset(ts->dk, 0, sizeof(float) * (size_t)(M * NKV * HD));
        memset(ts->dv, 0, sizeof(float) * (size_t)(M * NKV * HD));
        qlora_attention_backward(ts->dq, ts->dk, ts->dv, ts->dao, A->ao, A->q, A->k, A->v, A->att, ts->B, ts->T, NH, NKV,
                                 HD);
        qlora_rope_backward(ts->dq, ts->pos, m->rope_cos, m->rope_sin, M, NH, HD);
        qlora_rope_backward(ts->dk, ts->pos, m->rope_cos, m->rope_sin, M, NKV, HD);
        double t2 = bc_now();
        if (t1 - t0 < r.attn_fwd) r.attn_fwd = t1 - t0;
        if (t2 - t1 < r.attn_bwd) r.attn_bwd = t2 - t1;
    }
    // adapters of the last layer: the seven projections forward, then backward in the model's order, through
    // the model's own projection functions (q, k, v and gate, up fused as in a step), with the real NF4
    // matmuls in between (so the thread pools switch as in a step); the NF4 time measured by the timing
    // backend is taken out, the rest is LoRA
    {
        int64_t wmax = C > H ? C : H;
        wmax = wmax > NH * HD ? wmax : NH * HD;
        float *x = (float *)bc_xmalloc(sizeof(float) * (size_t)(M * wmax));
        float *dy = (float *)bc_xmalloc(sizeof(float) * (size_t)(M * wmax));
        float *dx = (float *)bc_xmalloc(sizeof(float) * (size_t)(M * wmax));
        float *y[3];
        for (int i = 0; i < 3; i++) y[i] = (float *)bc_xmalloc(sizeof(float) * (size_t)(M * wmax));
        uint64_t s = 99;
        for (int64_t i = 0; i < M * wmax; i++) {
            x[i] = bc_rng_float(&s);
            dy[i] = 1e-3f * bc_rng_float(&s);
            dx[i] = 0.0f;
        }
        static const int qkv[3] = { QLORA_TARGET_Q, QLORA_TARGET_K, QLORA_TARGET_V };
        static const int gu[2] = { QLORA_TARGET_GATE, QLORA_TARGET_UP };
        const float *const dys[3] = { dy, dy, dy };
        const int l = c->n_layers - 1;
        bl_nf4_timer nt;
        qlora_backend be = bl_timer_backend(&nt);
        const qlora_backend *saved = m->exec.backend;
        m->exec.backend = &be;
        for (int rep = 0; rep < 3; rep++) {
            qlora_status st = QLORA_OK;
            bl_timer_reset(&nt, &m->exec);
            double t0 = bc_now();
            st = qlora__ll_proj_group(m, ts, l, qkv, 3, y, x, A, M, 1, &err);
            if (st == QLORA_OK) st = qlora__ll_proj(m, l, QLORA_TARGET_O, y[0], x, &A->cache[QLORA_TARGET_O], M, 1, &err);
            if (st == QLORA_OK) st = qlora__ll_proj_group(m, ts, l, gu, 2, y, x, A, M, 1, &err);
            if (st == QLORA_OK)
                st = qlora__ll_proj(m, l, QLORA_TARGET_DOWN, y[0], x, &A->cache[QLORA_TARGET_DOWN], M, 1, &err);
            double t1 = bc_now();
            if (st == QLORA_OK)
                st = qlora__ll_proj_back(m, l, QLORA_TARGET_DOWN, dx, dy, x, &A->cache[QLORA_TARGET_DOWN], M, &err);
            if (st == QLORA_OK) st = qlora__ll_proj_back_group(m, ts, l, gu, 2, dx, dys, x, A, M, &err);
            if (st == QLORA_OK)
                st = qlora__ll_proj_back(m, l, QLORA_TARGET_O, dx, dy, x, &A->cache[QLORA_TARGET_O], M, &err);
            if (st == QLORA_OK) st = qlora__ll_proj_back_group(m, ts, l, qkv, 3, dx, dys, x, A, M, &err);
            double t2 = bc_now();
            if (st != QLORA_OK) bl_die("LoRA replay", st, &err);
            if (t1 - t0 - nt.fwd_s < r.lora_fwd) r.lora_fwd = t1 - t0 - nt.fwd_s;
            if (t2 - t1 - nt.bwd_s < r.lora_bwd) r.lora_bwd = t2 - t1 - nt.bwd_s;
        }
        m->exec.backend = saved;
        free(x);
        free(dy);
        free(dx);
        for (int i = 0; i < 3; i++) free(y[i]);
    }
    // lm_head + cross-entropy, as qlora_model_forward_train / qlora_model_backward run them
    {
        double loss_sum = 0.0;
        int64_t count = 0;
        double t0 = bc_now();
        qlora__sgemm_frozen(&m->exec, 0, 1, M, V, C, 1.0f, ts->lnf, C, m->lm_head, C, 0.0f, ts->logits, V);
        qlora_cross_entropy_forward(&loss_sum, &count, NULL, ts->logits, ts->targets, M, V);
        double t1 = bc_now();
        float scale = count > 0 ? 1.0f / (float)count : 0.0f;
        for (int64_t r0 = 0; r0 < M; r0 += ts->logit_rows) {
            int64_t R = M - r0 < ts->logit_rows ? M - r0 : ts->logit_rows;
            memset(ts->dlogits, 0, sizeof(float) * (size_t)(R * V));
            qlora_cross_entropy_backward(ts->dlogits, ts->logits + r0 * V, ts->targets + r0, R, V, scale);
            qlora__sgemm_frozen(&m->exec, 0, 0, R, C, V, 1.0f, ts->dlogits, V, m->lm_head, C, 0.0f, ts->dln + r0 * C, C);
        }
        double t2 = bc_now();
        r.head_fwd = t1 - t0;
        r.head_bwd = t2 - t1;
    }
    return r;
}

static void bl_phase_row(const char *name, double s, double step, double flops, double peak, const char *how) {
    if (flops > 0.0)
        printf("     %-22s %8.3f s %6.1f%% %10.1f %9.1f %7.0f%%   %s\n", name, s, 100.0 * s / step, flops / 1e9,
               s > 0.0 ? flops / s / 1e9 : 0.0, s > 0.0 ? 100.0 * flops / s / 1e9 / peak : 0.0, how);
    else
        printf("     %-22s %8.3f s %6.1f%% %10s %9s %8s   %s\n", name, s, 100.0 * s / step, "-", "-", "-", how);
}

// Prints the phase table of one step. nf4f/nf4b measured inside the step; the rest from replays.
static void bl_breakdown(const bl_cfg *c, const bl_flops *f, double step, double nf4f, double nf4b, double opt,
                         const bl_replay *r, double peak) {
    const double L = c->layers, Lf = c->layers + (c->ckpt ? c->layers - 1 : 0);
    const double lora = r->lora_fwd * Lf + r->lora_bwd * L, attn = r->attn_fwd * Lf + r->attn_bwd * L;
    const double head = r->head_fwd + r->head_bwd, elem = r->elem_fwd * Lf + r->elem_bwd * L;
    const double other = step - nf4f - nf4b - lora - attn - head - opt - elem;
    printf("   where the time of one step goes (GFLOP/s against the sgemm reference %.1f GFLOP/s):\n", peak);
    printf("     %-22s %10s %7s %10s %9s %8s   %s\n", "phase", "time", "share", "GFLOP", "GFLOP/s", "%sgemm",
           "measured");
    bl_phase_row("NF4 forward", nf4f, step, f->nf4_fwd, peak, "in the step (timing backend)");
    bl_phase_row("NF4 backward (dX)", nf4b, step, f->nf4_bwd, peak, "in the step (timing backend)");
    bl_phase_row("LoRA (fwd + bwd)", lora, step, f->lora_fwd + f->lora_bwd, peak, "replay of one layer x layers, minus NF4");
    bl_phase_row("attention + RoPE", attn, step, f->attn_fwd + f->attn_bwd, peak, "replay of one layer x layers");
    bl_phase_row("lm_head + CE", head, step, f->head_fwd + f->head_bwd, peak, "replay");
    bl_phase_row("AdamW", opt, step, 0.0, peak, "in the step");
    bl_phase_row("norms, SwiGLU, adds", elem, step, 0.0, peak, "replay of one layer x layers");
    bl_phase_row("rest (unaccounted)", other, step, 0.0, peak, "step - the above: embedding, final norm, noise");
    bl_phase_row("whole step", step, step, f->total, peak, "");
    if (!bl_bf16 &&   // bf16 multiplies at twice the fp32 rate: its phases may pass the fp32 sgemm reference
        (f->nf4_fwd / nf4f > peak * 1e9 || f->nf4_bwd / nf4b > peak * 1e9 || f->head_fwd / r->head_fwd > peak * 1e9))
        printf("   note: a phase ran faster than the sgemm reference, so the reference was measured while other "
               "jobs took more of the cores than during the step: ratios to it are optimistic\n");
    if (other < -0.05 * step || other > 0.15 * step)
        printf("   note: the replays and the step ran under different load (rest %.0f%% of the step): the shares "
               "are rough\n",
               100.0 * other / step);
    printf("@ %s.nf4_fwd_s %.6f\n@ %s.nf4_bwd_s %.6f\n@ %s.lora_s %.6f\n@ %s.attn_s %.6f\n@ %s.head_s %.6f\n"
           "@ %s.opt_s %.6f\n@ %s.elem_s %.6f\n@ %s.other_s %.6f\n",
           bl_tag, nf4f, bl_tag, nf4b, bl_tag, lora, bl_tag, attn, bl_tag, head, bl_tag, opt, bl_tag, elem, bl_tag,
           other);
}

static void bl_print_flops(const bl_cfg *c, const bl_flops *f) {
    const double N = (double)c->B * c->T;
    printf("   FLOPs per step: frozen fwd %.1f + frozen bwd (dX only) %.1f + LoRA %.1f + attention (causal) %.1f "
           "+ lm_head %.1f = %.1f GFLOP (%.0f per token)\n",
           f->nf4_fwd / 1e9, f->nf4_bwd / 1e9, (f->lora_fwd + f->lora_bwd) / 1e9, (f->attn_fwd + f->attn_bwd) / 1e9,
           (f->head_fwd + f->head_bwd) / 1e9, f->total / 1e9, f->total / N);
}

// The sgemm reference again, measured in this child just before its model (the load of the machine
// changes over a run): the best of the parent's figure and these.
static double bl_child_peak(double parent_peak, int big) {
    double p = parent_peak;
    double g0 = bc_sgemm_gflops(0, 1, 1024, 768, 2048, 3), g1 = bc_sgemm_gflops(1, 1, 1024, 768, 2048, 3);
    if (g0 > p) p = g0;
    if (g1 > p) p = g1;
    printf("   sgemm (1024, 768, 2048) measured again here: cblas %.1f, own %.1f GFLOP/s", g0, g1);
    if (big) {
        double g2 = bc_sgemm_gflops(0, 1, 512, 4096, 4096, 2), g3 = bc_sgemm_gflops(1, 1, 512, 4096, 4096, 2);
        if (g2 > p) p = g2;
        if (g3 > p) p = g3;
        printf("; (512, 4096, 4096): cblas %.1f, own %.1f", g2, g3);
    }
    printf("; reference for this child %.1f GFLOP/s\n@ %s.peak %.6f\n", p, bl_tag, p);
    fflush(stdout);
    return p;
}

// One training configuration: `steps` timed steps after `warmup`, then the phase replays.
static int bl_child_train(const bl_cfg *c, double peak, int warmup, int steps) {
    qlora_model m;
    qlora_train_state ts;
    qlora_adamw opt;
    qlora_param *params;
    qlora_error err;
    qlora_status st;
    const int64_t N = (int64_t)c->B * c->T;
    printf("   %s: dim %d, %d layers, %d heads, hidden %d, vocab %d, T %d, B %d (%lld tokens/step); LoRA r %d "
           "alpha %.0f on all 7 projections, no dropout; checkpointing %s; AdamW %d-bit\n",
           c->name, c->dim, c->layers, c->heads, c->hidden, c->vocab, c->T, c->B, (long long)N, BL_RANK,
           (double)BL_ALPHA, c->ckpt ? "on" : "off", c->optim_bits);
    fflush(stdout);
    peak = bl_child_peak(peak, 0);
    bl_model_init(&m, c);
    st = qlora_train_state_init(&ts, &m, c->B, c->T, c->ckpt, &err);
    if (st != QLORA_OK) bl_die("qlora_train_state_init", st, &err);
    bl_optim_init(&opt, &params, &m, c->optim_bits);
    printf("   train state %.1f MB, AdamW state %.1f MB\n", (double)ts.arena_bytes / 1e6,
           (double)qlora_adamw_state_bytes(&opt) / 1e6);
    int32_t *tokens = (int32_t *)bc_xmalloc(sizeof(int32_t) * (size_t)N);
    uint64_t s = 12345;
    for (int64_t i = 0; i < N; i++) tokens[i] = (int32_t)(bc_rng_u64(&s) % (uint64_t)c->vocab);

    bl_nf4_timer nt;
    bl_timer_reset(&nt, &m.exec);
    qlora_backend be = bl_timer_backend(&nt);
    m.exec.backend = &be;

    double best = 1e30, b_fwd = 0, b_bwd = 0, b_opt = 0, b_nf4f = 0, b_nf4b = 0, sum = 0.0, cpu_min = 1e30;
    float loss = 0.0f;
    printf("   steps, wall s (CPU s / wall s; 2.0 = both cores busy for this process):");
    for (int i = 0; i < warmup + steps; i++) {
        bl_timer_reset(&nt, &m.exec);
        double c0 = bc_cpu_now(), t0 = bc_now();
        qlora_model_zero_grad(&m);
        st = qlora_model_forward_train(&m, &ts, tokens, NULL, tokens, &loss, &err);
        if (st != QLORA_OK) bl_die("forward", st, &err);
        double t1 = bc_now();
        st = qlora_model_backward(&m, &ts, &err);
        if (st != QLORA_OK) bl_die("backward", st, &err);
        double t2 = bc_now();
        st = qlora_adamw_step(&opt, NULL, &err);
        if (st != QLORA_OK) bl_die("AdamW step", st, &err);
        double t3 = bc_now();
        const double cpu = bc_cpu_now() - c0;
        printf(" %s%.3f (%.2f)", i < warmup ? "warmup " : "", t3 - t0, cpu / (t3 - t0));
        fflush(stdout);
        if (i < warmup) continue;
        sum += t3 - t0;
        if (cpu < cpu_min) cpu_min = cpu;
        if (t3 - t0 < best) {
            best = t3 - t0;
            b_fwd = t1 - t0;
            b_bwd = t2 - t1;
            b_opt = t3 - t2;
            b_nf4f = nt.fwd_s;
            b_nf4b = nt.bwd_s;
        }
    }
    const long hwm = bc_status_kb("VmHWM");
    printf("\n   best step %.3f s = forward %.3f + backward %.3f + AdamW %.3f (mean %.3f s, loss %.3f); "
           "peak RSS %.1f MB\n",
           best, b_fwd, b_bwd, b_opt, sum / steps, (double)loss, (double)hwm / 1024.0);
    m.exec.backend = NULL;
    peak = bl_child_peak(peak, 0);   // again after the steps: the best of both is the reference

    const bl_flops f = bl_count(c, BL_RANK);
    bl_print_flops(c, &f);
    bl_replay rp = bl_replay_phases(&m, &ts);
    bl_breakdown(c, &f, best, b_nf4f, b_nf4b, b_opt, &rp, peak);
    printf("@ %s.step_s %.6f\n@ %s.fb_s %.6f\n@ %s.tokens %lld\n@ %s.flops %.6e\n@ %s.hwm_kb %ld\n"
           "@ %s.step_cpu_s %.6f\n",
           bl_tag, best, bl_tag, b_fwd + b_bwd, bl_tag, (long long)N, bl_tag, f.total, bl_tag, hwm, bl_tag, cpu_min);
    fflush(stdout);
    free(tokens);
    qlora_adamw_free(&opt);
    free(params);
    qlora_train_state_free(&ts);
    qlora_model_free(&m);
    return 0;
}

// Decode of n_dec tokens after a 32-token prompt, with the NF4 GEMV in `compute` arithmetic (fp32, or
// bf16 as bitsandbytes' compute_dtype): tokens/s against the NF4 bytes one token must read over the
// streaming-read bandwidth bw (GB/s). The NF4 GEMV time comes from the timing backend be.
static void bl_decode(qlora_model *m, const bl_cfg *c, double bw, int n_dec, bl_nf4_timer *nt, qlora_backend *be,
                      qlora_compute compute) {
    const char *sfx = compute == QLORA_COMPUTE_BF16 ? "_bf16" : "";
    printf("   -- decode, NF4 GEMV compute %s\n", compute == QLORA_COMPUTE_BF16 ? "bf16" : "fp32");
    const int n_prompt = 32;
    qlora_error err;
    qlora_status st;
    qlora_kv_cache kv;
    st = qlora_kv_cache_init(&kv, m, 128, 0, &err);
    if (st != QLORA_OK) bl_die("qlora_kv_cache_init", st, &err);
    int32_t prompt[32];
    uint64_t s = 777;
    for (int i = 0; i < n_prompt; i++) prompt[i] = (int32_t)(bc_rng_u64(&s) % (uint64_t)c->vocab);
    float *logits = (float *)bc_xmalloc(sizeof(float) * (size_t)c->vocab);
    double t0 = bc_now();
    st = qlora_model_prefill(m, &kv, prompt, n_prompt, logits, &err);
    if (st != QLORA_OK) bl_die("prefill", st, &err);
    const double t_prefill = bc_now() - t0;
    m->exec.backend = be;
    m->exec.compute = compute;
    bl_timer_reset(nt, &m->exec);
    double best = 1e30, total = 0.0, c0 = bc_cpu_now();
    int32_t tok = prompt[n_prompt - 1];
    for (int i = 0; i < n_dec; i++) {
        double a = bc_now();
        st = qlora_model_forward_decode(m, &kv, tok, kv.n, logits, &err);
        if (st != QLORA_OK) bl_die("decode", st, &err);
        double t = bc_now() - a;
        total += t;
        if (t < best) best = t;
        tok = (int32_t)(bc_rng_u64(&s) % (uint64_t)c->vocab);
    }
    m->exec.backend = NULL;
    m->exec.compute = QLORA_COMPUTE_F32;
    // bytes one token must read: NF4 projections (codes + scales), the fp32 lm_head, the LoRA A and
    // B of every adapter, one embedding row and the KV cache so far
    double nf4 = 0.0, lora = 0.0;
    for (int l = 0; l < c->layers; l++)
        for (int t = 0; t < QLORA_TARGET_COUNT; t++) {
            nf4 += (double)qlora_nf4_bytes(&m->layers[l].w[t]);
            const qlora_lora *ad = &m->layers[l].lora[t];
            if (ad->A) lora += 4.0 * ad->rank * (double)(ad->in + ad->out);
        }
    const double head = 4.0 * c->vocab * (double)c->dim;
    const double kvb = 2.0 * 4.0 * c->layers * (double)c->dim * (n_prompt + n_dec / 2.0);
    const double all = nf4 + head + lora + kvb + 4.0 * c->dim;
    const double tps = n_dec / total;
    const long hwm = bc_status_kb("VmHWM");
    printf("   prefill of %d tokens: %.2f s (%.1f tokens/s)\n", n_prompt, t_prefill, n_prompt / t_prefill);
    printf("   decode: %d tokens, mean %.3f s/token (best %.3f) = %.2f tokens/s (CPU s / wall s %.2f); NF4 GEMV "
           "%.0f%% of it at %.1f GB/s\n",
           n_dec, total / n_dec, best, tps, (bc_cpu_now() - c0) / total, 100.0 * (nt->fwd_s / total),
           nf4 * n_dec / (nt->fwd_s > 0 ? nt->fwd_s : 1) / 1e9);
    printf("   bytes per token: NF4 %.0f MB + fp32 lm_head %.0f MB + LoRA A,B %.0f MB + KV %.0f MB = %.0f MB; "
           "streaming read %.1f GB/s\n",
           nf4 / 1e6, head / 1e6, lora / 1e6, kvb / 1e6, all / 1e6, bw);
    printf("   bound (NF4 bytes / bandwidth) %.2f tokens/s -> ratio %.2f;  bound (all bytes) %.2f tokens/s -> "
           "ratio %.2f;  peak RSS %.2f GiB\n",
           bw * 1e9 / nf4, tps / (bw * 1e9 / nf4), bw * 1e9 / all, tps / (bw * 1e9 / all),
           (double)hwm / 1024.0 / 1024.0);
    // Other jobs preempt single tokens (a token waits on any descheduled thread): the best token
    // shows what the code does when it has both cores.
    printf("   best token alone: %.2f tokens/s -> ratio %.2f to the NF4 bound (diagnostic; the target is on the mean)\n",
           1.0 / best, (1.0 / best) / (bw * 1e9 / nf4));
    printf("@ %s.dec%s_tps %.6f\n@ %s.dec%s_nf4_bytes %.6e\n@ %s.dec%s_all_bytes %.6e\n@ %s.dec%s_hwm_kb %ld\n"
           "@ %s.dec%s_nf4_share %.4f\n@ %s.dec%s_best_tps %.6f\n",
           bl_tag, sfx, tps, bl_tag, sfx, nf4, bl_tag, sfx, all, bl_tag, sfx, hwm, bl_tag, sfx, nt->fwd_s / total,
           bl_tag, sfx, 1.0 / best);
    fflush(stdout);
    free(logits);
    qlora_kv_cache_free(&kv);
}

// Decode only, on the 7b shape cut to `layers` layers (for kernel work: a few layers already read
// far more than the LLC). The streaming-read bandwidth is measured here, just before.
static int bl_child_decode(int layers, int n_dec) {
    bl_cfg c = *bl_find("7b");
    qlora_model m;
    c.layers = layers;
    bl_tag = "dec";
    printf("   7b shape cut to %d layers: hidden %d, intermediate %d, vocab %d; LoRA r %d on all 7 projections\n",
           c.layers, c.dim, c.hidden, c.vocab, BL_RANK);
    bl_model_init(&m, &c);
    const double bw = bc_stream_read((int64_t)1 << 29, 4);
    bl_nf4_timer nt;
    qlora_backend be = bl_timer_backend(&nt);
    bl_decode(&m, &c, bw, n_dec, &nt, &be, QLORA_COMPUTE_F32);
    bl_decode(&m, &c, bw, n_dec, &nt, &be, QLORA_COMPUTE_BF16);
    qlora_model_free(&m);
    return 0;
}

// The 7b-shaped model: decode first (peak RSS of inference), then one training step.
static int bl_child_7b(double peak, double bw, int quick) {
    const bl_cfg *c = bl_find("7b");
    qlora_model m;
    qlora_error err;
    qlora_status st;
    printf("   Meditron-7b shape: hidden %d, intermediate %d, %d layers, %d heads, vocab %d; random NF4 weights "
           "(bs 64 + DQ) made in memory; LoRA r %d on all 7 projections\n",
           c->dim, c->hidden, c->layers, c->heads, c->vocab, BL_RANK);
    fflush(stdout);
    bl_tag = "7b";
    peak = bl_child_peak(peak, 1);
    bl_model_init(&m, c);
    printf("   RSS after the model is made: %.2f GiB\n", (double)bc_status_kb("VmRSS") / 1024.0 / 1024.0);

    bl_nf4_timer nt;
    bl_timer_reset(&nt, &m.exec);
    qlora_backend be = bl_timer_backend(&nt);

    // --- decode ---
    bl_decode(&m, c, bw, quick ? 4 : 16, &nt, &be, QLORA_COMPUTE_F32);
    bl_decode(&m, c, bw, quick ? 4 : 16, &nt, &be, QLORA_COMPUTE_BF16);

    // --- one training step in fp32 compute, then one in bf16 ---
    for (int pass = 0; pass < 2; pass++) {
        qlora_train_state ts;
        qlora_adamw opt;
        qlora_param *params;
        const int64_t N = (int64_t)c->B * c->T;
        const char *sfx = pass ? "_bf16" : "";
        m.exec.compute = pass ? QLORA_COMPUTE_BF16 : QLORA_COMPUTE_F32;
        bl_bf16 = pass;   // (what bl_breakdown reads)
        printf("   -- training step, compute %s\n", pass ? "bf16" : "fp32");
        st = qlora_train_state_init(&ts, &m, c->B, c->T, c->ckpt, &err);
        if (st != QLORA_OK) bl_die("qlora_train_state_init", st, &err);
        bl_optim_init(&opt, &params, &m, c->optim_bits);
        printf("   training: B %d x T %d, gradient checkpointing on, paged 8-bit AdamW (pager without a memory "
               "budget: every page resident); train state %.0f MB, AdamW state %.0f MB\n",
               c->B, c->T, (double)ts.arena_bytes / 1e6, (double)qlora_adamw_state_bytes(&opt) / 1e6);
        fflush(stdout);
        int32_t *tokens = (int32_t *)bc_xmalloc(sizeof(int32_t) * (size_t)N);
        uint64_t s = 4242;
        for (int64_t i = 0; i < N; i++) tokens[i] = (int32_t)(bc_rng_u64(&s) % (uint64_t)c->vocab);
        m.exec.backend = &be;
        bl_timer_reset(&nt, &m.exec);
        float loss = 0.0f;
        double c0 = bc_cpu_now(), t0 = bc_now();
        qlora_model_zero_grad(&m);
        st = qlora_model_forward_train(&m, &ts, tokens, NULL, tokens, &loss, &err);
        if (st != QLORA_OK) bl_die("forward", st, &err);
        double t1 = bc_now();
        st = qlora_model_backward(&m, &ts, &err);
        if (st != QLORA_OK) bl_die("backward", st, &err);
        double t2 = bc_now();
        st = qlora_adamw_step(&opt, NULL, &err);
        if (st != QLORA_OK) bl_die("AdamW step", st, &err);
        double t3 = bc_now();
        m.exec.backend = NULL;
        const long hwm = bc_status_kb("VmHWM");
        const bl_flops f = bl_count(c, BL_RANK);
        const double step = t3 - t0;
        printf("   step %.1f s = forward %.1f + backward (with recompute) %.1f + AdamW %.2f (loss %.3f; CPU s / wall s "
               "%.2f); peak RSS %.2f GiB\n",
               step, t1 - t0, t2 - t1, t3 - t2, (double)loss, (bc_cpu_now() - c0) / step,
               (double)hwm / 1024.0 / 1024.0);
        peak = bl_child_peak(peak, 1);   // again after the step: the best of both is the reference
        bl_print_flops(c, &f);
        printf("   6·P·T with P = %.3g frozen projection weights + lm_head = %.1f GFLOP (the simple estimate)\n",
               f.p_frozen + (double)c->vocab * c->dim, 6.0 * (f.p_frozen + (double)c->vocab * c->dim) * N / 1e9);
        bl_replay rp = bl_replay_phases(&m, &ts);
        bl_breakdown(c, &f, step, nt.fwd_s, nt.bwd_s, t3 - t2, &rp, peak);
        printf("@ 7b.step%s_s %.6f\n@ 7b.tokens %lld\n@ 7b.flops %.6e\n@ 7b.flops6pt %.6e\n@ 7b.hwm%s_kb %ld\n", sfx,
               step, (long long)N, f.total, 6.0 * (f.p_frozen + (double)c->vocab * c->dim) * N, sfx, hwm);
        fflush(stdout);
        free(tokens);
        qlora_adamw_free(&opt);
        free(params);
        qlora_train_state_free(&ts);
    }
    qlora_model_free(&m);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// parent: references, children, summary

typedef struct bl_kv {
    char key[48];
    double v;
} bl_kv;
static bl_kv bl_data[256];
static int bl_ndata;

static void bl_put(const char *key, double v) {
    for (int i = 0; i < bl_ndata; i++)
        if (!strcmp(bl_data[i].key, key)) {
            bl_data[i].v = v;
            return;
        }
    if (bl_ndata < 256) {
        snprintf(bl_data[bl_ndata].key, sizeof bl_data[0].key, "%s", key);
        bl_data[bl_ndata++].v = v;
    }
}

static int bl_get(const char *key, double *v) {
    for (int i = 0; i < bl_ndata; i++)
        if (!strcmp(bl_data[i].key, key)) {
            *v = bl_data[i].v;
            return 1;
        }
    return 0;
}

static double bl_val(const char *prefix, const char *key) {
    char k[64];
    double v = NAN;
    snprintf(k, sizeof k, "%s.%s", prefix, key);
    bl_get(k, &v);
    return v;
}

// Runs cmd, echoes its lines (indented; `@ key value` lines are stored, not shown). For the torch
// script, `key value` lines are stored under `prefix.key`. Returns the exit status.
static int bl_run(const char *cmd, const char *torch_prefix, char *text, size_t text_len) {
    fflush(stdout);
    FILE *p = popen(cmd, "r");
    char line[1024];
    if (text && text_len) text[0] = 0;
    if (!p) {
        printf("   could not start: %s\n", cmd);
        return -1;
    }
    while (fgets(line, sizeof line, p)) {
        char key[64];
        double v;
        if (line[0] == '@' && sscanf(line, "@ %63s %lf", key, &v) == 2) {
            bl_put(key, v);
            continue;
        }
        if (torch_prefix) {
            char k2[128];
            if (sscanf(line, "%63s %lf", key, &v) == 2) {
                snprintf(k2, sizeof k2, "%s.%s", torch_prefix, key);
                bl_put(k2, v);
            }
            if (text && strlen(text) + strlen(line) + 4 < text_len) {
                strcat(text, "     ");
                strcat(text, line);
            }
            continue;
        }
        fputs(line, stdout);
        fflush(stdout);
    }
    return pclose(p);
}

static const char *bl_exe(const char *argv0) {
    static char path[1024];
    ssize_t n = readlink("/proc/self/exe", path, sizeof path - 1);
    if (n > 0) {
        path[n] = 0;
        return path;
    }
    return argv0;
}

static const char *bl_mark(double ratio, double target, int higher_better) {
    if (!(ratio == ratio)) return "";
    return (higher_better ? ratio >= target : ratio <= target) ? "met" : "MISSED";
}

int main(int argc, char **argv) {
    int want7b = 0, only7b = 0, quick = 0, notorch = 0;
    if (argc >= 3 && !strcmp(argv[1], "--child")) {
        // --child train NAME PEAK WARMUP STEPS [TAG [own|bf16]] | --child 7b PEAK BW QUICK |
        // --child decode LAYERS TOKENS
        bc_set_threads(BC_THREADS);
        if (!strcmp(argv[2], "train") && argc >= 7) {
            const bl_cfg *c = bl_find(argv[3]);
            if (!c) return 2;
            bl_tag = argc >= 8 ? argv[7] : c->name;
            bl_own_gemm = argc >= 9 && !strcmp(argv[8], "own");
            bl_bf16 = argc >= 9 && !strcmp(argv[8], "bf16");
            return bl_child_train(c, atof(argv[4]), atoi(argv[5]), atoi(argv[6]));
        }
        if (!strcmp(argv[2], "7b") && argc >= 6) return bl_child_7b(atof(argv[3]), atof(argv[4]), atoi(argv[5]));
        if (!strcmp(argv[2], "decode") && argc >= 5) return bl_child_decode(atoi(argv[3]), atoi(argv[4]));
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "7b")) want7b = 1;
        if (!strcmp(argv[i], "7b-only")) want7b = only7b = 1;
        if (!strcmp(argv[i], "quick")) quick = 1;
        if (!strcmp(argv[i], "notorch")) notorch = 1;
        if (!strcmp(argv[i], "passive")) {
            // libgomp reads the policy when it starts: set it, then start again
            const char *pol = getenv("OMP_WAIT_POLICY");
            if (!pol || strcmp(pol, "passive")) {
                setenv("OMP_WAIT_POLICY", "passive", 1);
                fflush(stdout);
                execv("/proc/self/exe", argv);
                printf("bench_llama: could not re-execute with OMP_WAIT_POLICY=passive; going on without\n");
            }
        }
    }
    const char *wait_policy = getenv("OMP_WAIT_POLICY") ? getenv("OMP_WAIT_POLICY") : "unset (libgomp spins, then sleeps)";
    const int passive_now = getenv("OMP_WAIT_POLICY") && !strcmp(getenv("OMP_WAIT_POLICY"), "passive");
    const char *diag_env = passive_now ? "OMP_WAIT_POLICY=active" : BL_PASSIVE_ENV;
    const char *blas_msg = bc_blas_setup(argv);
    bc_set_threads(BC_THREADS);
    const qlora_cpu_info ci = qlora_cpu_info_get();
    const double t_start = bc_now();
    printf("bench_llama: %s; %d threads, SIMD %s; %s; %s\n", bc_cpu_name(), ci.omp_threads, ci.simd, blas_msg,
           bc_blas_parallel_name());
    printf("load average at start: %s (other jobs on these cores slow every figure; references are measured "
           "in the same run); OMP_WAIT_POLICY %s\n",
           bc_loadavg(), wait_policy);

    // --- sgemm reference: the best of cblas_sgemm and the library's own GEMM over model-like shapes ---
    static const int64_t shapes[4][3] = { { 2048, 768, 288 }, { 1024, 2048, 768 }, { 1024, 768, 2048 }, { 512, 4096, 4096 } };
    double peak = 0.0;
    printf("\nsgemm reference, fp32 GFLOP/s, C (M,N) = A (M,K)·B (N,K)ᵀ, best of 3 (the best figure is the "
           "reference 'peak'):\n");
    printf("   %-22s %12s %12s\n", "(M, N, K)", "cblas_sgemm", "own GEMM");
    for (int i = 0; i < 4; i++) {
        double g0 = bc_sgemm_gflops(0, 1, shapes[i][0], shapes[i][1], shapes[i][2], 3);
        double g1 = bc_sgemm_gflops(1, 1, shapes[i][0], shapes[i][1], shapes[i][2], 3);
        char sh[64];
        snprintf(sh, sizeof sh, "(%lld, %lld, %lld)", (long long)shapes[i][0], (long long)shapes[i][1],
                 (long long)shapes[i][2]);
        if (g0 > 0.0) printf("   %-22s %12.1f %12.1f\n", sh, g0, g1);
        else printf("   %-22s %12s %12.1f\n", sh, "-", g1);
        if (g0 > peak) peak = g0;
        if (g1 > peak) peak = g1;
    }
    printf("   sgemm peak (reference): %.1f GFLOP/s\n", peak);
    double bw = 0.0;
    if (want7b) {
        bw = bc_stream_read((int64_t)1 << 29, 4);
        printf("streaming read (plain float sum over 512 MB, %d threads): %.1f GB/s\n", BC_THREADS, bw);
    }
    bc_blas_restore_env();   // the children measure the library as a user runs it
    const char *exe = bl_exe(argv[0]);
    char cmd[2048];
    static char ttext[2][8192];

    // --- S and M: our step, then PyTorch's ---
    if (!only7b) {
        for (int i = 0; i < 2; i++) {
            const bl_cfg *c = &bl_configs[i];
            // best of 3 (S) or 4 (M) steps on each side: one step of either side swings by 5-10% when
            // another job touches the machine, and the ratio needs both sides' undisturbed figure
            const int warmup = 1, steps = quick ? 1 : (i == 0 ? 3 : 4);
            printf("\n== config %s: QLoRA training step (child process; load %s)\n", c->name, bc_loadavg());
            snprintf(cmd, sizeof cmd, "'%s' --child train %s %.6f %d %d", exe, c->name, peak, warmup, steps);
            if (bl_run(cmd, NULL, NULL, 0) != 0) printf("   ✗ the child for %s failed\n", c->name);
            printf("\n== config %s with QLORA_COMPUTE_BF16 (bitsandbytes' compute_dtype=bfloat16, QLoRA's recipe: the "
                   "NF4 and lm_head matmuls round both operands to bf16 and sum in fp32; load %s)\n", c->name,
                   bc_loadavg());
            snprintf(cmd, sizeof cmd, "'%s' --child train %s %.6f %d %d %sbf16 bf16", exe, c->name, peak, warmup, steps,
                     c->name);
            if (bl_run(cmd, NULL, NULL, 0) != 0) printf("   ✗ the bf16 child for %s failed\n", c->name);
            if (notorch) continue;
            printf("\n== config %s: PyTorch reference (%s %s, OMP_NUM_THREADS=%d; load %s)\n", c->name, BL_PYTHON,
                   BL_TORCH_SCRIPT, BC_THREADS, bc_loadavg());
            if (access(BL_PYTHON, X_OK) != 0 || access(BL_TORCH_SCRIPT, R_OK) != 0) {
                printf("   skipped: %s or %s missing (run from the repository root)\n", BL_PYTHON, BL_TORCH_SCRIPT);
                continue;
            }
            // fp32 (the reference), then torch's own bf16 (autocast; the matched row for ours in bf16)
            for (int bf = 0; bf < 2; bf++) {
                if (bf)
                    printf("\n== config %s: PyTorch in bf16 (--autocast-bf16: torch.autocast('cpu', bfloat16); load "
                           "%s)\n", c->name, bc_loadavg());
                snprintf(cmd, sizeof cmd,
                         "OMP_NUM_THREADS=%d OPENBLAS_NUM_THREADS=%d %s %s --dim %d --layers %d --heads %d --hidden %d "
                         "--vocab %d --T %d --B %d --rank %d --alpha %.1f --warmup %d --steps %d%s 2>&1",
                         BC_THREADS, BC_THREADS, BL_PYTHON, BL_TORCH_SCRIPT, c->dim, c->layers, c->heads, c->hidden,
                         c->vocab, c->T, c->B, BL_RANK, (double)BL_ALPHA, warmup, steps, bf ? " --autocast-bf16" : "");
                char prefix[24];
                snprintf(prefix, sizeof prefix, "torch%s%s", c->name, bf ? "bf16" : "");
                bl_run(cmd, prefix, ttext[i], sizeof ttext[i]);
                fputs(ttext[i], stdout);
            }
        }
    }

    // --- diagnostic: S again with passive waiting. Waiting threads spin (libgomp's default; OpenBLAS'
    // pthread pool too): with a second pool they spin against each other, and when other jobs share
    // the cores a spinning thread takes the time its descheduled teammate needs ---
    if (!only7b) {
        printf("\n== config S again with %s (diagnostic: %s; spinning waits cost most when other jobs "
               "share the cores; load %s)\n",
               diag_env, bc_blas_parallel_name(), bc_loadavg());
        snprintf(cmd, sizeof cmd, "%s '%s' --child train S %.6f 1 %d S_passive", diag_env, exe, peak,
                 quick ? 1 : 3);
        if (bl_run(cmd, NULL, NULL, 0) != 0) printf("   ✗ the child failed\n");
    }

    // --- 7b ---
    if (want7b) {
        printf("\n== Meditron-7b shape: decode and one training step (child process; load %s)\n", bc_loadavg());
        snprintf(cmd, sizeof cmd, "'%s' --child 7b %.6f %.6f %d", exe, peak, bw, quick);
        if (bl_run(cmd, NULL, NULL, 0) != 0) printf("   ✗ the 7b child failed\n");
    } else {
        printf("\n== Meditron-7b shape (decode, one training step): not run; `./build.sh bench 7b` runs it "
               "(about 6 GB of memory and several minutes)\n");
    }

    // --- summary ---
    {
        static const char *const tags[6] = { "S", "M", "Sbf16", "Mbf16", "S_passive", "7b" };
        for (int i = 0; i < 6; i++) {
            double p = bl_val(tags[i], "peak");
            if (p == p && p > peak) peak = p;
        }
    }
    printf("\n== summary (2 threads; load average now %s); sgemm reference = the best sgemm figure measured in "
           "this run: %.1f GFLOP/s\n",
           bc_loadavg(), peak);
    if (!only7b) printf("1. training forward+backward tokens/s vs FLOPs/step / sgemm peak (%.1f GFLOP/s)\n", peak);
    if (!only7b)
        printf("   %-6s %10s %12s %12s %8s %8s %12s\n", "cfg", "GFLOP/step", "tokens/s", "bound", "ratio", "target",
               "peak RSS MB");
    // rows of item 1: our tag, its label
    static const char *const rows[5][2] = { { "S", "S" }, { "M", "M" }, { "Sbf16", "S bf16" }, { "Mbf16", "M bf16" },
                                            { "S_passive", "S*" } };
    for (int i = 0; i < 5 && !only7b; i++) {
        const char *n = rows[i][0];
        double fb = bl_val(n, "fb_s"), tok = bl_val(n, "tokens"), fl = bl_val(n, "flops"), hwm = bl_val(n, "hwm_kb");
        double tps = tok / fb, bound = tok / (fl / (peak * 1e9)), ratio = tps / bound;
        char tg[32];
        snprintf(tg, sizeof tg, i == 1 ? ">=0.45 %s" : "-", bl_mark(ratio, 0.45, 1));
        if (fb == fb)
            printf("   %-6s %10.1f %12.1f %12.1f %8.3f %8s %12.1f%s\n", rows[i][1], fl / 1e9, tps, bound, ratio,
                   i == 1 ? tg : "-", hwm / 1024.0,
                   i == 4 ? "   * with the other wait policy (diagnostic)"
                   : i >= 2 ? "   bf16 multiplies at twice the fp32 rate: the fp32 bound does not bound it" : "");
    }
    // rows of item 3: our tag, its label, our arithmetic, the torch run, its arithmetic, the row's role
    static const char *const cmp[7][6] = {
        { "Sbf16", "S", "bf16 (default)", "torchS", "fp32", "target" },
        { "Mbf16", "M", "bf16 (default)", "torchM", "fp32", "target" },
        { "S", "S", "fp32", "torchS", "fp32", "matched" },
        { "M", "M", "fp32", "torchM", "fp32", "matched" },
        { "Sbf16", "S", "bf16", "torchSbf16", "bf16 autocast", "matched" },
        { "Mbf16", "M", "bf16", "torchMbf16", "bf16 autocast", "matched" },
        { "S_passive", "S*", "fp32", "torchS", "fp32", "diagnostic" },
    };
    if (!only7b) {
        printf("3. train step (fwd + bwd + AdamW) vs PyTorch LoRA steps of the same model (versions above; dense frozen "
               "weights: torch has no NF4)\n");
        printf("   target: >= 1.5x the tokens/s of torch fp32 at <= 0.5x its peak RSS, for the trainer as `qlora train` "
               "runs it (bf16 compute by default, QLoRA's compute_dtype);\n"
               "   the matched rows (ours and torch in the same arithmetic) are for information\n");
        printf("   (best step of each side; CPU s/step = the least CPU-seconds of all threads of one step, a figure "
               "that other jobs on the cores disturb less than wall time)\n");
        printf("   %-4s %-15s %-14s %10s %12s %8s %7s %7s %6s %8s %10s %6s   %s\n", "cfg", "ours", "torch", "tokens/s",
               "torch tok/s", "speedup", "CPU s", "torch", "CPU x", "RSS MB", "torch RSS", "RSS x", "row");
    }
    for (int i = 0; i < 7 && !only7b; i++) {
        const char *n = cmp[i][0], *tp = cmp[i][3], *role = cmp[i][5];
        if (!(bl_val(n, "step_s") == bl_val(n, "step_s"))) continue;
        double st = bl_val(n, "step_s"), tok = bl_val(n, "tokens"), hwm = bl_val(n, "hwm_kb");
        double ttps = bl_val(tp, "tokens_per_s"), trss = bl_val(tp, "peak_rss_kb");
        double cpu = bl_val(n, "step_cpu_s"), tcpu = bl_val(tp, "step_cpu_s_min");
        double tps = tok / st;
        char verdict[96];
        if (!strcmp(role, "target"))
            snprintf(verdict, sizeof verdict, "target: speed %s, RSS %s", bl_mark(tps / ttps, 1.5, 1),
                     bl_mark(hwm / trss, 0.5, 0));
        else
            snprintf(verdict, sizeof verdict, "%s", !strcmp(role, "matched") ? "matched arithmetic (information)"
                                                                             : "* other wait policy (diagnostic)");
        if (ttps == ttps)
            printf("   %-4s %-15s %-14s %10.1f %12.1f %8.2f %7.2f %7.2f %6.2f %8.1f %10.1f %6.2f   %s\n", cmp[i][1],
                   cmp[i][2], cmp[i][4], tps, ttps, tps / ttps, cpu, tcpu, tcpu / cpu, hwm / 1024.0, trss / 1024.0,
                   hwm / trss, verdict);
        else
            printf("   %-4s %-15s %-14s %10.1f %12s %8s %7.2f %7s %6s %8.1f %10s %6s   torch reference %s\n",
                   cmp[i][1], cmp[i][2], cmp[i][4], tps, "-", "-", cpu, "-", "-", hwm / 1024.0, "-", "-",
                   notorch ? "not run (notorch)" : "unavailable");
        // torch allocates its activations afresh every step: where page faults are dear (some VMs), a large
        // kernel share slows torch and flatters the speedup
        const double tsys = bl_val(tp, "best_step_sys_share");
        if (ttps == ttps && !strcmp(role, "target") && tsys == tsys)
            printf("        torch's best %s step: %.0f%% of its CPU time in the kernel, %.0f minor page faults%s\n", tp,
                   100.0 * tsys, bl_val(tp, "best_step_minor_faults"),
                   tsys > 0.2 ? " (page faults are dear on this machine now: the speedup is higher than where they "
                                "are cheap)" : "");
    }
    if (want7b) {
        for (int bf = 0; bf < 2; bf++) {
            const char *k = bf ? "dec_bf16" : "dec";
            char key[64];
            snprintf(key, sizeof key, "%s_tps", k);
            double tps = bl_val("7b", key);
            snprintf(key, sizeof key, "%s_nf4_bytes", k);
            double nb = bl_val("7b", key);
            snprintf(key, sizeof key, "%s_all_bytes", k);
            double ab = bl_val("7b", key);
            snprintf(key, sizeof key, "%s_hwm_kb", k);
            double dh = bl_val("7b", key);
            printf("2. 7b decode, compute %s: %.2f tokens/s; bound NF4 bytes/bandwidth %.2f tokens/s -> ratio %.2f "
                   "(target >= 0.70: %s); bound all bytes %.2f -> ratio %.2f; peak RSS %.2f GiB\n",
                   bf ? "bf16" : "fp32", tps, bw * 1e9 / nb, tps / (bw * 1e9 / nb),
                   bl_mark(tps / (bw * 1e9 / nb), 0.70, 1), bw * 1e9 / ab, tps / (bw * 1e9 / ab), dh / 1024.0 / 1024.0);
        }
        for (int bf = 0; bf < 2; bf++) {
            double st = bl_val("7b", bf ? "step_bf16_s" : "step_s"), fl = bl_val("7b", "flops");
            double f6 = bl_val("7b", "flops6pt"), hwm = bl_val("7b", bf ? "hwm_bf16_kb" : "hwm_kb");
            printf("4. 7b QLoRA step (B 1 x T 512, checkpointing, 8-bit AdamW), compute %s: %.1f s; FLOP bound %.1f s "
                   "(6·P·T: %.1f s) -> step / bound %.2f (target <= 1.5: %s); peak RSS %.2f GiB (target <= 5.5: %s)\n",
                   bf ? "bf16" : "fp32", st, fl / (peak * 1e9), f6 / (peak * 1e9), st / (fl / (peak * 1e9)),
                   bl_mark(st / (fl / (peak * 1e9)), 1.5, 0), hwm * 1024.0 / GIB, bl_mark(hwm * 1024.0 / GIB, 5.5, 0));
        }
    }
    printf("bench_llama: %.0f s in all\n", bc_now() - t_start);
    return 0;
}
