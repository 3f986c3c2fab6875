// batchnorm2d.wgsl — per-channel batch normalization of NCHW rows (PyTorch's BatchNorm2d) with
// the activation that follows it fused: y = act(gamma_c * (x - mean_c) / sqrt(var_c + eps) + beta_c).
// The conv layers of `--preset conv64` (conv -> batch norm -> LeakyReLU) run it after every
// convolution but the last.
//
// Shapes: x, y, dy, dx [B, C*HW] (row b, channel c, pixel i at b*C*HW + c*HW + i);
// gamma, beta, dgamma, dbeta, running_mean, running_var [C]; stats [2C] = (mean[C], var[C]),
// the biased batch variance while training, the running statistics in evaluation.
// Statistics over the N = B*HW values of a channel: one workgroup of 256 per channel, each
// invocation walking every 256th value in a fixed order, then a fixed tree: deterministic, and
// N <= 256 * 30000 keeps llvmpipe's 65535-iteration cap away (checked by the caller).

struct Params {
    batch: u32,
    channels: u32,
    hw: u32,
    act: u32,
    alpha: f32,
    eps: f32,
    momentum: f32,
    pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read> in3: array<f32>;
@group(0) @binding(5) var<storage, read> in4: array<f32>;
@group(0) @binding(6) var<storage, read> in5: array<f32>;
@group(0) @binding(7) var<storage, read> in6: array<f32>;
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
@group(0) @binding(4) var<storage, read_write> out4: array<f32>;
@group(0) @binding(5) var<storage, read_write> out5: array<f32>;
@group(0) @binding(6) var<storage, read_write> out6: array<f32>;
@group(0) @binding(8) var<storage, read_write> out8: array<f32>;

var<workgroup> red_a: array<f32, 256>;
var<workgroup> red_b: array<f32, 256>;

// The flat index of value e (0 <= e < B*HW) of channel c.
fn at(c: u32, e: u32) -> u32 {
    let b = e / p.hw;
    return (b * p.channels + c) * p.hw + (e - b * p.hw);
}

// Sums red_a and red_b over the workgroup (fixed tree); the totals end in element 0.
fn reduce_pair(l: u32) {
    for (var s = 128u; s > 0u; s >>= 1u) {
        workgroupBarrier();
        if (l < s) {
            red_a[l] += red_a[l + s];
            red_b[l] += red_b[l + s];
        }
    }
    workgroupBarrier();
}

// Batch statistics and the running ones, in place: stats = (mean, biased var) over the channel's
// B*HW values (two passes: mean, then squared deviations); running = (1 - m) running + m batch,
// the variance with Bessel's correction N/(N-1) as PyTorch's running_var.
// Bindings: 1 x | 2 stats[2C] | 3 running_mean (rw) | 4 running_var (rw).  Dispatch (C, 1, 1).
@compute @workgroup_size(256)
fn bn2d_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x;
    let l = lid.x;
    let n = p.batch * p.hw;
    var s = 0.0;
    for (var e = l; e < n; e += 256u) { s += in0[at(c, e)]; }
    red_a[l] = s;
    red_b[l] = 0.0;
    reduce_pair(l);
    let mean = red_a[0] / f32(n);
    workgroupBarrier();
    var v = 0.0;
    for (var e = l; e < n; e += 256u) {
        let d = in0[at(c, e)] - mean;
        v += d * d;
    }
    red_b[l] = v;
    reduce_pair(l);
    if (l == 0u) {
        let var_b = red_b[0] / f32(n);
        out2[c] = mean;
        out2[p.channels + c] = var_b;
        let m = p.momentum;
        out3[c] = (1.0 - m) * out3[c] + m * mean;
        out4[c] = (1.0 - m) * out4[c] + m * var_b * f32(n) / max(f32(n) - 1.0, 1.0);
    }
}

// Evaluation: stats = (running_mean, running_var).
// Bindings: 1 running_mean | 2 running_var | 3 stats[2C].  Dispatch (ceil(C/64), 1, 1).
@compute @workgroup_size(64)
fn bn2d_eval_stats(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    if (c >= p.channels) { return; }
    out3[c] = in0[c];
    out3[p.channels + c] = in1[c];
}

// y = act(gamma_c * (x - mean_c) / sqrt(var_c + eps) + beta_c).
// Bindings: 1 x | 2 stats | 3 gamma | 4 beta | 5 y.  1-D over B*C*HW.
@compute @workgroup_size(256)
fn bn2d_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.batch * p.channels * p.hw) { return; }
    let c = (i / p.hw) % p.channels;
    let xhat = (in0[i] - in1[c]) / sqrt(in1[p.channels + c] + p.eps);
    out5[i] = act_fwd(p.act, p.alpha, in2[c] * xhat + in3[c]);
}

// Backward, per channel: with g = dy * act'(y) (the gradient at the normalised, shifted value),
// dbeta_c = sum g and dgamma_c = sum g * xhat over the channel's B*HW values.
// Bindings: 1 dy | 2 y | 3 x | 4 stats | 5 dgamma | 6 dbeta.  Dispatch (C, 1, 1).
@compute @workgroup_size(256)
fn bn2d_backward_sums(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let c = wid.x;
    let l = lid.x;
    let n = p.batch * p.hw;
    let mean = in3[c];
    let inv = 1.0 / sqrt(in3[p.channels + c] + p.eps);
    var s1 = 0.0;
    var s2 = 0.0;
    for (var e = l; e < n; e += 256u) {
        let i = at(c, e);
        let g = in0[i] * act_grad_from_y(p.act, p.alpha, in1[i]);
        s1 += g;
        s2 += g * (in2[i] - mean) * inv;
    }
    red_a[l] = s1;
    red_b[l] = s2;
    reduce_pair(l);
    if (l == 0u) {
        out5[c] = red_b[0];
        out6[c] = red_a[0];
    }
}

// Backward, per value: dx = gamma_c / sqrt(var_c + eps) * (g - dbeta_c / N - xhat * dgamma_c / N).
// Bindings: 1 dy | 2 y | 3 x | 4 stats | 5 gamma | 6 dgamma | 7 dbeta | 8 dx.  1-D over B*C*HW.
@compute @workgroup_size(256)
fn bn2d_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.batch * p.channels * p.hw) { return; }
    let c = (i / p.hw) % p.channels;
    let n = f32(p.batch * p.hw);
    let inv = 1.0 / sqrt(in3[p.channels + c] + p.eps);
    let xhat = (in2[i] - in3[c]) * inv;
    let g = in0[i] * act_grad_from_y(p.act, p.alpha, in1[i]);
    out8[i] = in4[c] * inv * (g - in6[c] / n - xhat * in5[c] / n);
}
