// nf4_dequantize.comp - out = dequant(W) for rows [r0, r0 + M/K) of one chunk (debug/reference path,
// pairs with qlora_nf4_dequantize). One invocation per element.
#version 450
#include "common.glsl"

#define BLOCK_SIZE 64   // default workgroup size; the host sets it (specialization constant 0)
layout(constant_id = 0) const uint WG = BLOCK_SIZE;
layout(local_size_x_id = 0) in;

void main() {
    init_lut();
    uint i = (gl_WorkGroupID.x + pc.g0) * WG + gl_LocalInvocationID.x;   // element of this dispatch
    if (i < pc.M) {
        yout[i] = dequant_elem(pc.r0 * pc.K + i);
    }
}
