// linear_nf4_backward.comp - dX (M, K) += dY (M, ldy) [:, col0 .. col0+N) · W for one weight chunk W (N, K).
// Pairs with qlora_nf4_linear_backward; accumulates. Same tiling as linear_nf4_forward.comp with the
// roles swapped: a workgroup owns a BM×BN tile of dX (BN along K), the reduction runs over the N
// weight rows of the chunk in steps of BK, and W tiles are read along their rows (coalesced words).
#version 450
#include "common.glsl"

#define BLOCK_SIZE 256  // default workgroup size WM·WN; the host sets all tile constants per variant
#define TMAX 8          // largest TM / TN a variant may use (register block bound)

layout(constant_id = 0) const uint WM = 16;   // invocations along M
layout(constant_id = 1) const uint WN = 16;   // invocations along K
layout(constant_id = 2) const uint TM = 4;    // rows per invocation (<= TMAX)
layout(constant_id = 3) const uint TN = 4;    // columns per invocation (<= TMAX); BN = WN·TN: multiple of 8
layout(constant_id = 4) const uint BK = 16;   // step over weight rows
layout(local_size_x_id = 5) in;               // = WM·WN

const uint BM = WM * TM;
const uint BN = WN * TN;
const uint NT = WM * WN;
const uint SA = BM + 1u;    // padded shared row strides: staging stores along k hit distinct banks
const uint SB = BN + 1u;

shared float ds[BK * SA];   // ds[n·SA + m] = dY[m0 + m, col0 + n0 + n]
shared float ws[BK * SB];   // ws[n·SB + k] = W[n0 + n, k0 + k]

void main() {
    init_lut();
    const uint tid = gl_LocalInvocationIndex;
    const uint tx = tid % WN, ty = tid / WN;
    const uint k0 = (gl_WorkGroupID.x + pc.g0) * BN;
    const uint m0 = (gl_WorkGroupID.y + pc.g1) * BM;

    float acc[TMAX * TMAX];
    for (uint i = 0u; i < TM * TN; i++) acc[i] = 0.0;

    for (uint n0 = 0u; n0 < pc.N; n0 += BK) {
        // Stage dY: consecutive invocations read consecutive columns of one row.
        for (uint i = tid; i < BM * BK; i += NT) {
            uint m = i / BK, n = i % BK;
            uint gm = m0 + m, gn = n0 + n;
            ds[n * SA + m] = (gm < pc.M && gn < pc.N) ? xin[gm * pc.ldy + pc.col0 + gn] : 0.0;
        }
        // Stage W rows n0.. dequantized, columns k0 .. k0+BN.
        if (pc.aligned != 0u) {
            const uint WPR = BN / 8u;
            for (uint i = tid; i < BK * WPR; i += NT) {
                uint n = i / WPR, kw = (i % WPR) * 8u;
                uint gn = n0 + n, gk = k0 + kw;
                if (gn < pc.N && gk < pc.K) {
                    uint e = gn * pc.K + gk;
                    uint word = codes[e >> 3u];
                    float s = block_scale((e + pc.b_off) >> pc.bs_log2);
                    for (uint j = 0u; j < 8u; j++) ws[n * SB + kw + j] = lut[nibble(word, j)] * s;
                } else {
                    for (uint j = 0u; j < 8u; j++) ws[n * SB + kw + j] = 0.0;
                }
            }
        } else {
            for (uint i = tid; i < BK * BN; i += NT) {
                uint n = i / BN, k = i % BN;
                uint gn = n0 + n, gk = k0 + k;
                ws[n * SB + k] = (gn < pc.N && gk < pc.K) ? dequant_elem(gn * pc.K + gk) : 0.0;
            }
        }
        barrier();

        for (uint n = 0u; n < BK; n++) {
            float a[TMAX], b[TMAX];
            for (uint i = 0u; i < TM; i++) a[i] = ds[n * SA + ty + i * WM];
            for (uint j = 0u; j < TN; j++) b[j] = ws[n * SB + tx + j * WN];
            for (uint i = 0u; i < TM; i++) {
                for (uint j = 0u; j < TN; j++) acc[i * TN + j] += a[i] * b[j];
            }
        }
        barrier();
    }

    for (uint i = 0u; i < TM; i++) {
        uint gm = m0 + ty + i * WM;
        for (uint j = 0u; j < TN; j++) {
            uint gk = k0 + tx + j * WN;
            if (gm < pc.M && gk < pc.K) yout[gm * pc.K + gk] += acc[i * TN + j];
        }
    }
}
