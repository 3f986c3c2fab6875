// conv_operands_buffer.wgsl — conv.wgsl's operands as storage buffers of f32: op1_at(i) /
// op2_at(i) return element i of the first / second operand. The host prepends this file or
// conv_operands_texture.wgsl.

@group(0) @binding(1) var<storage, read> op1: array<f32>;
@group(0) @binding(2) var<storage, read> op2: array<f32>;

fn op1_at(i: u32) -> f32 {
    return op1[i];
}

fn op2_at(i: u32) -> f32 {
    return op2[i];
}
