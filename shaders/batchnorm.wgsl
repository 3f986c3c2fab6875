// batchnorm.wgsl — batch normalization without a learned shift, scaled per feature by
// gamma_j = sqrt(tau + (1 - tau) * sigmoid(theta_j)): the BN-VAE posterior-mean layer (Zhu et al.
// 2020). Every normalised feature has unit variance over the batch, so E[mu_j^2] = gamma_j^2 >= tau
// and the expected KL is bounded below by Z*tau/2: the posterior cannot collapse.
//
// Shapes: x, y, dy, dx [B, N]; mean, var, theta, dtheta, running stats [N]; sums [2N].
// Statistics use one invocation per column walking the rows in order (deterministic; B <= 16384
// keeps llvmpipe's 65535-iteration cap away); elementwise kernels are 1-D over B*N.
// Parameter block: rows B, cols N, s0 = tau (or the "variance" flag of bn_running), s1 = eps (or
// the momentum of bn_running).

struct Params {
    rows: u32,
    cols: u32,
    s0: f32,
    s1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(4) var<storage, read> in3: array<f32>;
@group(0) @binding(5) var<storage, read> in4: array<f32>;
@group(0) @binding(6) var<storage, read> in5: array<f32>;
@group(0) @binding(2) var<storage, read_write> out2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out3: array<f32>;
@group(0) @binding(5) var<storage, read_write> out5: array<f32>;
@group(0) @binding(6) var<storage, read_write> out6: array<f32>;
@group(0) @binding(7) var<storage, read_write> out7: array<f32>;

fn gamma(theta: f32) -> f32 {
    return sqrt(p.s0 + (1.0 - p.s0) * sigmoid(theta));
}

// mean[N], biased var[N] over the B rows.  Bindings: 1 x | 2 mean | 3 var.  Dispatch (ceil(N/64),1,1).
@compute @workgroup_size(64)
fn bn_stats(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    if (c >= p.cols) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r++) { s += in0[r * p.cols + c]; }
    let m = s / f32(p.rows);
    var v = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let d = in0[r * p.cols + c] - m;
        v += d * d;
    }
    out2[c] = m;
    out3[c] = v / f32(p.rows);
}

// y = gamma(theta) * (x - mean) / sqrt(var + eps), eps = s1.
// Bindings: 1 x | 2 mean | 3 var | 4 theta | 5 y.  1-D over B*N.
@compute @workgroup_size(256)
fn bn_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.rows * p.cols) { return; }
    let c = i % p.cols;
    out5[i] = gamma(in3[c]) * (in0[i] - in1[c]) / sqrt(in2[c] + p.s1);
}

// Running statistics, in place: r = (1 - m) r + m * batch with m = s1. With s0 = 1 the statistic
// is a variance and takes Bessel's correction B/(B-1), as PyTorch's running_var does.
// Bindings: 1 batch statistic | 2 running statistic (rw).  Dispatch (ceil(N/64),1,1).
@compute @workgroup_size(64)
fn bn_running(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    if (c >= p.cols) { return; }
    var batch = in0[c];
    if (p.s0 > 0.5) {
        batch = batch * f32(p.rows) / max(f32(p.rows) - 1.0, 1.0);
    }
    out2[c] = (1.0 - p.s1) * out2[c] + p.s1 * batch;
}

// Backward, first half: with xhat = (x - mean)/sqrt(var + eps) and dxhat = dy * gamma,
// sums[c] = sum_b dxhat, sums[N + c] = sum_b dxhat * xhat, and
// dtheta[c] = (sum_b dy * xhat) * dgamma/dtheta, dgamma/dtheta = (1 - tau) s (1 - s) / (2 gamma).
// Bindings: 1 dy | 2 x | 3 mean | 4 var | 5 theta | 6 sums[2N] | 7 dtheta[N].  Dispatch (ceil(N/64),1,1).
@compute @workgroup_size(64)
fn bn_backward_sums(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    if (c >= p.cols) { return; }
    let gm = gamma(in4[c]);
    let inv = 1.0 / sqrt(in3[c] + p.s1);
    var s1 = 0.0;
    var s2 = 0.0;
    for (var r = 0u; r < p.rows; r++) {
        let i = r * p.cols + c;
        let xhat = (in1[i] - in2[c]) * inv;
        s1 += in0[i];
        s2 += in0[i] * xhat;
    }
    let sg = sigmoid(in4[c]);
    out6[c] = gm * s1;
    out6[p.cols + c] = gm * s2;
    out7[c] = s2 * (1.0 - p.s0) * sg * (1.0 - sg) / (2.0 * gm);
}

// Backward, second half: dx = (dxhat - sums[c]/B - xhat * sums[N + c]/B) / sqrt(var + eps).
// Bindings: 1 dy | 2 x | 3 mean | 4 var | 5 theta | 6 sums | 7 dx.  1-D over B*N.
@compute @workgroup_size(256)
fn bn_backward_dx(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.rows * p.cols) { return; }
    let c = i % p.cols;
    let n = f32(p.rows);
    let inv = 1.0 / sqrt(in3[c] + p.s1);
    let xhat = (in1[i] - in2[c]) * inv;
    let dxhat = in0[i] * gamma(in4[c]);
    out7[i] = (dxhat - in5[c] / n - xhat * in5[p.cols + c] / n) * inv;
}
