// words_f32.wgsl — how a kernel's vec4 storage views are stored: as vec4<f32> (every adapter).
// Prepended (after common.wgsl) to the kernel families that load and store through `Word4`
// (matmul_subgroup.wgsl, optim.wgsl, vae_fused.wgsl, data.wgsl); words_u64.wgsl is the alternative. Both views hold the same
// bytes, so a kernel computes bit-identical results under either.
//
//   Word4: 16 bytes, four f32 (x, y, z, w at byte offsets 0, 4, 8, 12)
//   unword(Word4) -> vec4<f32>,  word(vec4<f32>) -> Word4
//   Word8: 32 bytes, two Word4s (columns 0 and 1 of a mat2x4<f32>)
//   unword8(Word8) -> mat2x4<f32>,  word8(mat2x4<f32>) -> Word8

alias Word4 = vec4<f32>;

fn unword(w: Word4) -> vec4<f32> {
    return w;
}

fn word(v: vec4<f32>) -> Word4 {
    return v;
}

alias Word8 = mat2x4<f32>;

fn unword8(w: Word8) -> mat2x4<f32> {
    return w;
}

fn word8(v: mat2x4<f32>) -> Word8 {
    return v;
}
