// matmul_operands_texture.wgsl — the `subgroup` matmul's operands A and B as read-only storage
// textures (rgba32float): load_a(i) / load_b(i) return vec4 number i of the row-major operand,
// stored row after row in a texture 1024 texels wide (texel (i % 1024, i / 1024)). The host copies
// each operand's buffer into such a texture before the dispatch (src/ops/matmul.rs).
//
// Why: Mesa 22.3's lavapipe compiles a storage-buffer load whose address differs between lanes
// into a loop over the 8 lanes that inserts each lane's value at a variable position of a vector.
// Without AVX-512, LLVM does that insert through the stack, and the reload that follows cannot
// take the value from the store in flight: a load costs 20-35 ns per lane on an AVX2-only CPU
// (AMD Zen 3), against 3-4 ns for a texel of an image, which lavapipe fetches with straight-line
// vector code (BENCHMARKS.md). The values are the same bits either way.

@group(0) @binding(1) var a_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var b_tex: texture_storage_2d<rgba32float, read>;

fn load_a(i: u32) -> vec4<f32> {
    return textureLoad(a_tex, vec2<u32>(i & 1023u, i >> 10u));
}

fn load_b(i: u32) -> vec4<f32> {
    return textureLoad(b_tex, vec2<u32>(i & 1023u, i >> 10u));
}
