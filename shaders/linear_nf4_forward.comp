// linear_nf4_forward.comp - Y (M, ldy) [:, col0 .. col0+N) = X (M, K) · Wᵀ for one weight chunk W (N, K).
// Pairs with qlora_nf4_linear_forward. Tiled GEMM: a workgroup of WM×WN invocations owns a BM×BN tile
// of Y (BM = WM·TM, BN = WN·TN); per step of BK columns it stages X and the dequantized W in shared
// memory (both transposed so the inner loop reads consecutive addresses), then every invocation
// accumulates a TM×TN register block in fp32. Invocation (ty, tx) owns rows ty + i·WM and columns
// tx + j·WN of the tile, so neighbouring invocations write neighbouring columns of Y.
#version 450
#include "common.glsl"

#define BLOCK_SIZE 256  // default workgroup size WM·WN; the host sets all tile constants per variant
#define TMAX 8          // largest TM / TN a variant may use (register block bound)

layout(constant_id = 0) const uint WM = 16;   // invocations along M
layout(constant_id = 1) const uint WN = 16;   // invocations along N
layout(constant_id = 2) const uint TM = 4;    // rows per invocation (<= TMAX)
layout(constant_id = 3) const uint TN = 4;    // columns per invocation (<= TMAX)
layout(constant_id = 4) const uint BK = 16;   // K step, a multiple of 8
layout(local_size_x_id = 5) in;               // = WM·WN

const uint BM = WM * TM;
const uint BN = WN * TN;
const uint NT = WM * WN;
const uint SA = BM + 1u;    // padded shared row strides: staging stores along k hit distinct banks
const uint SB = BN + 1u;

shared float xs[BK * SA];   // xs[k·SA + m] = X[m0 + m, k0 + k]
shared float ws[BK * SB];   // ws[k·SB + n] = W[n0 + n, k0 + k]

void main() {
    init_lut();
    const uint tid = gl_LocalInvocationIndex;
    const uint tx = tid % WN, ty = tid / WN;
    const uint n0 = (gl_WorkGroupID.x + pc.g0) * BN;
    const uint m0 = (gl_WorkGroupID.y + pc.g1) * BM;

    float acc[TMAX * TMAX];
    for (uint i = 0u; i < TM * TN; i++) acc[i] = 0.0;

    for (uint k0 = 0u; k0 < pc.K; k0 += BK) {
        // Stage X: consecutive invocations read consecutive k of one row (coalesced), zero outside.
        for (uint i = tid; i < BM * BK; i += NT) {
            uint m = i / BK, k = i % BK;
            uint gm = m0 + m, gk = k0 + k;
            xs[k * SA + m] = (gm < pc.M && gk < pc.K) ? xin[gm * pc.K + gk] : 0.0;
        }
        // Stage W dequantized: a word of 8 codes at a time when rows are word aligned, else per element.
        if (pc.aligned != 0u) {
            const uint WPR = BK / 8u;   // words per tile row
            for (uint i = tid; i < BN * WPR; i += NT) {
                uint n = i / WPR, kw = (i % WPR) * 8u;
                uint gn = n0 + n, gk = k0 + kw;
                if (gn < pc.N && gk < pc.K) {
                    uint e = gn * pc.K + gk;
                    uint word = codes[e >> 3u];
                    float s = block_scale((e + pc.b_off) >> pc.bs_log2);
                    for (uint j = 0u; j < 8u; j++) ws[(kw + j) * SB + n] = lut[nibble(word, j)] * s;
                } else {
                    for (uint j = 0u; j < 8u; j++) ws[(kw + j) * SB + n] = 0.0;
                }
            }
        } else {
            for (uint i = tid; i < BN * BK; i += NT) {
                uint n = i / BK, k = i % BK;
                uint gn = n0 + n, gk = k0 + k;
                ws[k * SB + n] = (gn < pc.N && gk < pc.K) ? dequant_elem(gn * pc.K + gk) : 0.0;
            }
        }
        barrier();

        for (uint k = 0u; k < BK; k++) {
            float a[TMAX], b[TMAX];
            for (uint i = 0u; i < TM; i++) a[i] = xs[k * SA + ty + i * WM];
            for (uint j = 0u; j < TN; j++) b[j] = ws[k * SB + tx + j * WN];
            for (uint i = 0u; i < TM; i++) {
                for (uint j = 0u; j < TN; j++) acc[i * TN + j] += a[i] * b[j];
            }
        }
        barrier();
    }

    for (uint i = 0u; i < TM; i++) {
        uint gm = m0 + ty + i * WM;
        for (uint j = 0u; j < TN; j++) {
            uint gn = n0 + tx + j * WN;
            if (gm < pc.M && gn < pc.N) yout[gm * pc.ldy + pc.col0 + gn] = acc[i * TN + j];
        }
    }
}
