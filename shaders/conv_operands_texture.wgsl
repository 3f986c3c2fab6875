// conv_operands_texture.wgsl — conv.wgsl's operands as read-only storage textures (r32float):
// op1_at(i) / op2_at(i) return element i of the operand, stored row after row in a texture 4096
// texels wide (texel (i % 4096, i / 4096)). The host copies each operand's buffer into such a
// texture before the dispatch. Why: see matmul_operands_texture.wgsl (lavapipe's storage-buffer
// loads are a loop over the lanes that stalls on AVX2-only CPUs; texel fetches are not).

@group(0) @binding(1) var op1_tex: texture_storage_2d<r32float, read>;
@group(0) @binding(2) var op2_tex: texture_storage_2d<r32float, read>;

fn op1_at(i: u32) -> f32 {
    return textureLoad(op1_tex, vec2<u32>(i & 4095u, i >> 12u)).x;
}

fn op2_at(i: u32) -> f32 {
    return textureLoad(op2_tex, vec2<u32>(i & 4095u, i >> 12u)).x;
}
