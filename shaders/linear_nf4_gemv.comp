// linear_nf4_gemv.comp - Y = X·Wᵀ for small M (decode): one workgroup per weight row, the row is read
// once and dotted with all NCOLS activation rows; partial sums are reduced in shared memory (no subgroup
// operations, so it runs with any subgroup size). Pairs with qlora_nf4_linear_forward.
// NCOLS (= M, 1..8) is a specialization constant so that every loop over it unrolls and acc[] stays
// in registers.
#version 450
#include "common.glsl"

#define BLOCK_SIZE 64   // default workgroup size; a power of two set by the host (specialization constant 0)

layout(constant_id = 0) const uint WG = BLOCK_SIZE;
layout(constant_id = 1) const uint NCOLS = 1;   // activation rows per dispatch, 1..8
layout(local_size_x_id = 0) in;

// X viewed as vec4 (same binding) for the aligned path: with K % 8 == 0 each row of X starts on a vec4.
layout(std430, set = 0, binding = 3) readonly buffer qlora_in4_buf { vec4 xin4[]; };

shared float red[NCOLS * WG];

void main() {
    init_lut();
    const uint t = gl_LocalInvocationID.x;
    const uint row = gl_WorkGroupID.x + pc.g0;           // chunk row = output column col0 + row
    const uint nrow = min(row, pc.N - 1u);                // clamped: every invocation reaches the barriers
    float acc[NCOLS];
    for (uint m = 0u; m < NCOLS; m++) acc[m] = 0.0;

    if (pc.aligned != 0u) {
        // Word j of the row holds elements 8j..8j+7, all in one block (blocksize >= 32, row start on a word).
        const uint words = pc.K >> 3u;
        const uint wbase = (nrow * pc.K) >> 3u;
        for (uint j = t; j < words; j += WG) {
            uint word = codes[wbase + j];
            float s = block_scale((nrow * pc.K + (j << 3u) + pc.b_off) >> pc.bs_log2);
            vec4 w0 = vec4(lut[nibble(word, 0u)], lut[nibble(word, 1u)],
                           lut[nibble(word, 2u)], lut[nibble(word, 3u)]) * s;
            vec4 w1 = vec4(lut[nibble(word, 4u)], lut[nibble(word, 5u)],
                           lut[nibble(word, 6u)], lut[nibble(word, 7u)]) * s;
            for (uint m = 0u; m < NCOLS; m++) {
                uint xv = (m * pc.K + (j << 3u)) >> 2u;
                acc[m] += dot(w0, xin4[xv]) + dot(w1, xin4[xv + 1u]);
            }
        }
    } else {
        for (uint k = t; k < pc.K; k += WG) {
            float w = dequant_elem(nrow * pc.K + k);
            for (uint m = 0u; m < NCOLS; m++) acc[m] += w * xin[m * pc.K + k];
        }
    }

    // Tree reduction of all NCOLS partial sums at once.
    for (uint m = 0u; m < NCOLS; m++) red[m * WG + t] = acc[m];
    barrier();
    for (uint s = WG >> 1u; s > 0u; s >>= 1u) {
        if (t < s) {
            for (uint m = 0u; m < NCOLS; m++) red[m * WG + t] += red[m * WG + t + s];
        }
        barrier();
    }
    if (t == 0u && row < pc.N) {
        for (uint m = 0u; m < NCOLS; m++) yout[m * pc.ldy + pc.col0 + row] = red[m * WG];
    }
}
