// common.glsl - shared by every NF4 kernel: descriptor bindings, the push-constant block, the NF4
// codebook and the code/scale decoding helpers. Mirrors section 3 of qlora.h.
//
// One weight is uploaded in row CHUNKS (so that no binding exceeds maxStorageBufferRange); a dispatch
// sees one chunk. Inside a chunk, element (r, k) of the weight has the chunk-local flat index
// e = r*K + k. The three weight bindings do not start exactly at chunk row 0:
//   codes   start at an element that is a multiple of 8 (one uint word holds 8 codes), pc.e_off before row 0;
//   scales  start at the first block that touches row 0, pc.b_off elements before row 0
//           (for DQ that block index is rounded down to a multiple of 4: 4 byte codes per word);
//   nested  holds the 256-entry DQ map first, then nested_absmax from entry (first scales block)/256 on,
//           pc.nb_mod = (first scales block) % 256.
//
// Packing (bitsandbytes): element 2i is the HIGH nibble of byte i, element 2i+1 the low nibble.
// Words are little-endian, so inside word w (elements 8w .. 8w+7) element 8w+j sits at bit
// 8*(j/2) + (j even ? 4 : 0).

#define QLORA_NF4_CODES 16

// Bindings: packed NF4 codes; fp32 absmax bits or DQ bytes; (256) DQ map then nested_absmax;
// X (forward) or dY (backward); Y (forward) or dX (backward).
layout(std430, set = 0, binding = 0) readonly buffer qlora_codes_buf  { uint  codes[];  };
layout(std430, set = 0, binding = 1) readonly buffer qlora_scales_buf { uint  scales[]; };
layout(std430, set = 0, binding = 2) readonly buffer qlora_nested_buf { float nested[]; };
layout(std430, set = 0, binding = 3) readonly buffer qlora_in_buf     { float xin[];    };
layout(std430, set = 0, binding = 4) buffer qlora_out_buf             { float yout[];   };

layout(push_constant) uniform qlora_push {
    uint  M;          // activation rows in this dispatch (dequantize: element count)
    uint  N;          // weight rows in this chunk
    uint  K;          // weight columns (in features)
    uint  ldy;        // row stride of Y / dY (all out features of the weight)
    uint  col0;       // column of Y / dY that holds chunk row 0
    uint  e_off;      // codes binding start → chunk row 0, in elements (0..7)
    uint  b_off;      // first scales block start → chunk row 0, in elements
    uint  bs_log2;    // log2(blocksize)
    uint  dq;         // 1: scales are 8-bit DQ codes into the nested map
    uint  nb_mod;     // (first scales block index) % 256
    float dq_offset;  // mean absmax subtracted by DQ
    uint  aligned;    // 1: K % 8 == 0, so rows start on words and a word never straddles a block
    uint  g0;         // first workgroup (x) of this dispatch (workgroup-count folding)
    uint  g1;         // first workgroup (y) of this dispatch
    uint  r0;         // first chunk row of this dispatch (dequantize)
} pc;

// NF4 codebook as exact fp32 bit patterns (code 7 = 0.0, codes 0 and 15 = -1 and +1).
const uint qlora_nf4_bits[QLORA_NF4_CODES] = uint[QLORA_NF4_CODES](
    0xbf800000u, 0xbf3239b1u, 0xbf066b30u, 0xbeca32a0u, 0xbe91a24du, 0xbe3d353fu, 0xbdba7871u, 0x00000000u,
    0x3da2faffu, 0x3e24cae3u, 0x3e7c04ddu, 0x3ead033au, 0x3ee1a4b8u, 0x3f1007abu, 0x3f3913b3u, 0x3f800000u);

shared float lut[QLORA_NF4_CODES];

// Copies the codebook into shared memory. Strided over the workgroup so that workgroups with fewer
// than 16 invocations fill it completely; every invocation must call it before any early return.
void init_lut() {
    const uint n = gl_WorkGroupSize.x * gl_WorkGroupSize.y;
    for (uint i = gl_LocalInvocationIndex; i < QLORA_NF4_CODES; i += n) {
        lut[i] = uintBitsToFloat(qlora_nf4_bits[i]);
    }
    barrier();
}

// Code j (0..7) of a word of 8 codes.
uint nibble(uint word, uint j) {
    return (word >> (((j >> 1u) << 3u) + (((j & 1u) == 0u) ? 4u : 0u))) & 15u;
}

// fp32 absmax of scales-binding block b. DQ: map[q] * nested_absmax[block / 256] + offset.
float block_scale(uint b) {
    if (pc.dq != 0u) {
        uint q = (scales[b >> 2u] >> ((b & 3u) << 3u)) & 255u;
        return nested[q] * nested[256u + ((b + pc.nb_mod) >> 8u)] + pc.dq_offset;
    }
    return uintBitsToFloat(scales[b]);
}

// Dequantized value of chunk-local element e (any alignment).
float dequant_elem(uint e) {
    uint c = e + pc.e_off;
    uint code = nibble(codes[c >> 3u], c & 7u);
    return lut[code] * block_scale((e + pc.b_off) >> pc.bs_log2);
}
