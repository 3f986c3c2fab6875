// words_u64.wgsl — the vec4 storage views as two u64 each (needs the SHADER_INT64 feature); chosen
// on CPU adapters (src/gpu/mod.rs, Words). Same bytes as words_f32.wgsl, so results are bit-identical.
//
// Why: Mesa's llvmpipe/lavapipe compiles each storage load or store into a loop over the SIMD lanes
// with a bounds check, a scalar access and a vector insert per *component*. A vec2<u64> moves the
// 16 bytes of a vec4<f32> in two components instead of four, which makes the training step's
// matmuls and Adam (mostly such accesses) about 10% faster there (BENCHMARKS.md). A GPU loads
// either in one 16-byte access, so it keeps the plain view.
//
//   Word4: 16 bytes, two u64 (little-endian: f32 lanes x, y in the first, z, w in the second)
//   unword(Word4) -> vec4<f32>,  word(vec4<f32>) -> Word4  (bit moves only: exact)
//   Word8: 32 bytes, four u64 (the first Word4 in .xy, the second in .zw): ONE access of four
//   components, where two Word4s are two accesses (llvmpipe's per-access loop is shared)
//   unword8(Word8) -> mat2x4<f32>,  word8(mat2x4<f32>) -> Word8

alias Word4 = vec2<u64>;

fn unword(w: Word4) -> vec4<f32> {
    return bitcast<vec4<f32>>(vec4<u32>(u32(w.x & 0xFFFFFFFFlu), u32(w.x >> 32u), u32(w.y & 0xFFFFFFFFlu), u32(w.y >> 32u)));
}

fn word(v: vec4<f32>) -> Word4 {
    let u = bitcast<vec4<u32>>(v);
    return Word4(u64(u.x) | (u64(u.y) << 32u), u64(u.z) | (u64(u.w) << 32u));
}

alias Word8 = vec4<u64>;

fn unword8(w: Word8) -> mat2x4<f32> {
    return mat2x4<f32>(unword(w.xy), unword(w.zw));
}

fn word8(v: mat2x4<f32>) -> Word8 {
    return Word8(word(v[0]), word(v[1]));
}
