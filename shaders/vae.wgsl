// vae.wgsl — the VAE-specific kernels: reparameterization, KL(q(z|x) || N(0, I)), Bernoulli and
// Gaussian reconstruction terms, each forward and backward. Losses are written per element and
// summed per example by reduce.wgsl's fixed-order row sums (so long rows stay exact on llvmpipe).
//
// All kernels are 1-D over n = B*Z or B*D elements, workgroup 256 (flat_index over a 2-D grid).
// Parameter block: n, cols (Z or D), s0 (a scale), s1.

struct Params {
    n: u32,
    cols: u32,
    s0: f32,
    s1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(3) var<storage, read> in2: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_after_2: array<f32>;
@group(0) @binding(4) var<storage, read_write> out_after_3: array<f32>;
@group(0) @binding(5) var<storage, read_write> out2_after_3: array<f32>;

fn gid(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return flat_index(wid, lid.x, nwg.x, 256u);
}

// z[B,Z] = mu + exp(0.5 * logvar) * eps.  Bindings: 1 mu | 2 logvar | 3 eps | 4 z
@compute @workgroup_size(256)
fn reparam_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_3[i] = in0[i] + exp(0.5 * in1[i]) * in2[i];
}

// d logvar[B,Z] = dz * 0.5 * exp(0.5 * logvar) * eps  (d mu = dz needs no kernel).
// Bindings: 1 dz | 2 logvar | 3 eps | 4 dlogvar
@compute @workgroup_size(256)
fn reparam_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_3[i] = in0[i] * 0.5 * exp(0.5 * in1[i]) * in2[i];
}

// Per-element KL of N(mu, exp(logvar)) from N(0, 1), in nats:
// kl[B,Z] = 0.5 * (mu^2 + exp(logvar) - 1 - logvar).  Bindings: 1 mu | 2 logvar | 3 kl
@compute @workgroup_size(256)
fn kl_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let mu = in0[i];
    let lv = in1[i];
    out_after_2[i] = 0.5 * (mu * mu + exp(lv) - 1.0 - lv);
}

// Given g[B,1] = dL/d(per-example KL): dmu = g * mu, dlogvar = g * 0.5 * (exp(logvar) - 1).
// Bindings: 1 g | 2 mu | 3 logvar | 4 dmu | 5 dlogvar
@compute @workgroup_size(256)
fn kl_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let g = in0[i / p.cols];
    out_after_3[i] = g * in1[i];
    out2_after_3[i] = g * 0.5 * (exp(in2[i]) - 1.0);
}

// Bernoulli negative log-likelihood from logits x with targets t in [0, 1], in the stable form
// max(x, 0) - x*t + log(1 + exp(-|x|)).  Bindings: 1 logits | 2 targets | 3 nll[B,D]
@compute @workgroup_size(256)
fn bce_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let x = in0[i];
    let t = in1[i];
    out_after_2[i] = max(x, 0.0) - x * t + log(1.0 + exp(-abs(x)));
}

// d logits[B,D] = g[row] * (sigmoid(x) - t).  Bindings: 1 g[B,1] | 2 logits | 3 targets | 4 dlogits
@compute @workgroup_size(256)
fn bce_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_3[i] = in0[i / p.cols] * (sigmoid(in1[i]) - in2[i]);
}

// Gaussian negative log-likelihood with fixed variance s0 = sigma^2 (in nats):
// nll = (x - t)^2 / (2 sigma^2) + 0.5 * log(2 pi sigma^2).  Bindings: 1 mean | 2 targets | 3 nll
@compute @workgroup_size(256)
fn gauss_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let d = in0[i] - in1[i];
    out_after_2[i] = 0.5 * d * d / p.s0 + 0.5 * log(6.283185307179586 * p.s0);
}

// d mean[B,D] = g[row] * (x - t) / sigma^2.  Bindings: 1 g[B,1] | 2 mean | 3 targets | 4 dmean
@compute @workgroup_size(256)
fn gauss_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_3[i] = in0[i / p.cols] * (in1[i] - in2[i]) / p.s0;
}

// ---- Free bits (Kingma et al. 2016): per latent dimension, the batch's KL counts at least
// lambda*B nats, and dimensions under that floor get no KL gradient.

@group(0) @binding(2) var<storage, read_write> out_after_1: array<f32>;
@group(0) @binding(4) var<storage, read> in3: array<f32>;
@group(0) @binding(5) var<storage, read_write> out_after_4: array<f32>;
@group(0) @binding(6) var<storage, read_write> out2_after_4: array<f32>;

// floored[Z] = max(s, s0) with s[Z] = sum over the batch of the KL elements, s0 = lambda*B.
// Bindings: 1 s | 2 floored
@compute @workgroup_size(256)
fn free_bits_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_1[i] = max(in0[i], p.s0);
}

// Gradient of g * sum_z max(lambda*B, s_z): for dimensions at or above the floor, the KL gradient
// g*mu and g*(exp(logvar)-1)/2; zero under it. n = B*Z, cols = Z.
// Bindings: 1 g[1,1] | 2 s[Z] | 3 mu[B,Z] | 4 logvar[B,Z] | 5 dmu | 6 dlogvar
@compute @workgroup_size(256)
fn kl_backward_free_bits(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let on = in1[i % p.cols] >= p.s0;
    let g = select(0.0, in0[0], on);
    out_after_4[i] = g * in2[i];
    out2_after_4[i] = g * 0.5 * (exp(in3[i]) - 1.0);
}

// ---- Gaussian likelihood with a learned per-pixel log-variance lv[D] (decoder.logvar):
// nll = 0.5 * (x - t)^2 * exp(-lv) + 0.5 * lv + 0.5 * log(2 pi), per element, in nats.
// Bindings: 1 mean | 2 targets | 3 lv[D] | 4 nll[B,D]
@compute @workgroup_size(256)
fn gauss_learned_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let lv = in2[i % p.cols];
    let d = in0[i] - in1[i];
    out_after_3[i] = 0.5 * d * d * exp(-lv) + 0.5 * lv + 0.9189385332046727;
}

// Given g[B,1]: dmean = g * (x - t) * exp(-lv); per-element lv gradient
// g * 0.5 * (1 - (x - t)^2 * exp(-lv)) (summed over the batch by the host's column sum).
// Bindings: 1 g | 2 mean | 3 targets | 4 lv | 5 dmean | 6 dlv_elem
@compute @workgroup_size(256)
fn gauss_learned_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let g = in0[i / p.cols];
    let iv = exp(-in3[i % p.cols]);
    let d = in1[i] - in2[i];
    out_after_4[i] = g * d * iv;
    out2_after_4[i] = g * 0.5 * (1.0 - d * d * iv);
}
