// matmul_operands_buffer.wgsl — the `subgroup` and `unrolled` matmuls' operands A and B as storage
// buffers of Word4 (words_*.wgsl): load_a(i) / load_b(i) return vec4 number i of the row-major
// operand. The host prepends this file or matmul_operands_texture.wgsl to the kernel.

@group(0) @binding(1) var<storage, read> a4: array<Word4>;
@group(0) @binding(2) var<storage, read> b4: array<Word4>;

fn load_a(i: u32) -> vec4<f32> {
    return unword(a4[i]);
}

fn load_b(i: u32) -> vec4<f32> {
    return unword(b4[i]);
}
