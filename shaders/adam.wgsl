// adam.wgsl — the Adam/AdamW update of four elements, shared by optim.wgsl (adam_step4/8) and
// the weight-gradient matmul's fused update (matmul_subgroup.wgsl with ADAM), so both compute the
// same bits. The including module's `p` must have the fields decoupled, lr, b1, b2, eps, wd, bc1
// and bc2 (see optim.wgsl for the update's formulas).

// Adam/AdamW on four elements (w, g, m, v): the new (w, m, v) as the columns of a mat3x4. The
// vec4 and the 8-wide kernels both call it, so they compute the same bits.
fn adam4(w0: vec4<f32>, g0: vec4<f32>, m0: vec4<f32>, v0: vec4<f32>) -> mat3x4<f32> {
    var w = w0;
    var g = g0;
    if (p.decoupled == 1u) {
        w = w - p.lr * p.wd * w;
    } else {
        g = g + p.wd * w;
    }
    let m = p.b1 * m0 + (1.0 - p.b1) * g;
    let v = p.b2 * v0 + (1.0 - p.b2) * g * g;
    return mat3x4<f32>(w - p.lr * (m / p.bc1) / (sqrt(v / p.bc2) + p.eps), m, v);
}
