// vae_fused.wgsl — the VAE's latent step and objective fused into few passes over the batch.
//
// The encoder's last layer is one matmul to the posterior parameters h[B, 2Z] = [mu | logvar]
// (row b holds mu[b, 0..Z) then logvar[b, 0..Z)). Instead of ~20 small kernels (split, Philox,
// reparameterize, KL, BCE, row sums, scalings, gradient broadcasts, accumulations) a training
// step runs five:
//   latent_forward   z = mu + exp(logvar/2)·eps (eps drawn here from Philox) and KL per example
//   recon_fused      −log p(x|z) per chunk of a row, and its gradient scaled by the objective's
//                    reconstruction weight, and the KL term's gradient with respect to h scaled
//                    by its weight (the loss is the root of backward, so its upstream gradient
//                    is 1 unless the caller scales it; src/ops/vae.rs checks)
//   loss_finalize    fixed-order sums: recon, KL, total = rs·recon + ks·KL, epoch accumulators
//   latent_backward  the reparameterization's gradient added into h's (eps recomputed)
// (kl_head_backward computes the KL term's gradient in the backward pass instead, for an upstream
// gradient other than 1.)
// Philox counters are those of random.wgsl:normal (element i of eps is word pair i/2, Box-Muller
// cos for even i, sin for odd), so eps equals what `normal` would draw for the same (seed, step,
// stream): src/rng.rs mirrors it on the CPU.
//
// Parameter block (16 words): see each kernel. Bindings per kernel below (inputs, then outputs).

struct Params {
    n: u32,       // invocations that do work
    zdim: u32,    // Z (latent kernels) or D (recon kernels)
    nch: u32,     // chunks per row (recon) or rows (finalize: B)
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    flag: u32,    // latent_backward: add into the existing gradient; loss_finalize: accumulate
    s0: f32,      // scale: rs (recon), ks (KL)
    s1: f32,      // ks (finalize), variance (gaussian recon)
    hz: u32,      // recon_fused: Z of the KL head gradient it also computes (0: none)
    s2: f32,      // recon_fused: that gradient's scale, ks
}

@group(0) @binding(0) var<uniform> p: Params;

// NaN and ±Inf have every exponent bit set (a bit test: comparisons with NaN may be folded away).
fn is_finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

fn eps_at(i: u32) -> f32 {
    let r = philox(vec4<u32>(i / 2u, p.step, p.stream, 0u), vec2<u32>(p.seed_lo, p.seed_hi));
    let z = box_muller(r.x, r.y);
    return select(z.y, z.x, i % 2u == 0u);
}

// ---- latent_forward: h[B,2Z] -> z[B,Z], kl[B]. One invocation per example (n = B).
// Bindings: 1 h | 2 z | 3 kl
@group(0) @binding(1) var<storage, read> lf_h: array<f32>;
@group(0) @binding(2) var<storage, read_write> lf_z: array<f32>;
@group(0) @binding(3) var<storage, read_write> lf_kl: array<f32>;

@compute @workgroup_size(64)
fn latent_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = flat_index(wid, lid.x, nwg.x, 64u);
    if (b >= p.n) { return; }
    let z = p.zdim;
    var kl = 0.0;
    for (var j = 0u; j < z; j++) {
        let mu = lf_h[b * 2u * z + j];
        let lv = lf_h[b * 2u * z + z + j];
        lf_z[b * z + j] = mu + exp(0.5 * lv) * eps_at(b * z + j);
        kl += 0.5 * (mu * mu + exp(lv) - 1.0 - lv);
    }
    lf_kl[b] = kl;
}

// ---- latent_backward: dz[B,Z], h -> dh[B,2Z] = [dz | dz·exp(logvar/2)·eps/2] (+ prev[B,2Z], the
// gradient h already had, when flag = 1). One invocation per latent element (n = B*Z).
// Bindings: 1 dz | 2 h | 3 prev (h again when flag = 0) | 4 dh
@group(0) @binding(1) var<storage, read> lb_dz: array<f32>;
@group(0) @binding(2) var<storage, read> lb_h: array<f32>;
@group(0) @binding(3) var<storage, read> lb_prev: array<f32>;
@group(0) @binding(4) var<storage, read_write> lb_dh: array<f32>;

@compute @workgroup_size(256)
fn latent_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let z = p.zdim;
    let b = i / z;
    let j = i % z;
    let g = lb_dz[i];
    let im = b * 2u * z + j;
    let il = im + z;
    var dmu = g;
    var dlv = g * 0.5 * exp(0.5 * lb_h[il]) * eps_at(i);
    if (p.flag == 1u) {
        dmu += lb_prev[im];
        dlv += lb_prev[il];
    }
    lb_dh[im] = dmu;
    lb_dh[il] = dlv;
}

// ---- kl_head_backward: the gradient of s0·g·Σ KL with respect to h[B,2Z]:
// dmu = c·mu, dlogvar = c·(exp(logvar) − 1)/2 with c = s0·g[0]. One invocation per latent
// element (n = B*Z). Bindings: 1 g[1,1] | 2 h | 3 dh
@group(0) @binding(1) var<storage, read> kb_g: array<f32>;
@group(0) @binding(2) var<storage, read> kb_h: array<f32>;
@group(0) @binding(3) var<storage, read_write> kb_dh: array<f32>;

@compute @workgroup_size(256)
fn kl_head_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let z = p.zdim;
    let im = (i / z) * 2u * z + i % z;
    let il = im + z;
    let c = p.s0 * kb_g[0];
    kb_dh[im] = c * kb_h[im];
    kb_dh[il] = c * 0.5 * (exp(kb_h[il]) - 1.0);
}

// ---- recon_fused: per chunk of RCH pixels of one row, the negative log-likelihood summed, and
// (GRAD) the gradient of s0·Σ nll with respect to the decoder output, in one pass.
// LIKELIHOOD 0: Bernoulli from logits, nll = max(x,0) − x·t + log(1 + e^−|x|), grad σ(x) − t.
// LIKELIHOOD 1: Gaussian, variance s1: nll = (x − t)²/(2 s1) + ½ log(2π s1), grad (x − t)/s1.
// With hz = Z > 0 the same dispatch writes the gradient of s2·Σ KL with respect to the posterior
// parameters h[B,2Z] (as kl_head_backward with an upstream gradient of 1): one pass over the batch
// for both terms' gradients, and one dispatch less per training step.
// n = B*nch invocations for the reconstruction (B*Z for the KL gradient; the grid covers the larger),
// zdim = D. Bindings: 1 out[B,D] | 2 target[B,D] | 3 h[B,2Z] (out again when hz = 0)
// | 4 partial[B*nch] | 5 d_out[B,D] | 6 d_h[B,2Z]
const RCH: u32 = 16u;
@group(0) @binding(1) var<storage, read> rf_x: array<f32>;
@group(0) @binding(2) var<storage, read> rf_t: array<f32>;
@group(0) @binding(3) var<storage, read> rf_h: array<f32>;
@group(0) @binding(4) var<storage, read_write> rf_partial: array<f32>;
@group(0) @binding(5) var<storage, read_write> rf_dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> rf_dh: array<f32>;

// Invocation i's share of the KL head gradient (recon_fused's second job, for i < B*Z).
fn rf_kl_head(i: u32) {
    if (p.hz > 0u && i < (p.n / p.nch) * p.hz) {
        let im = (i / p.hz) * 2u * p.hz + i % p.hz;
        let il = im + p.hz;
        rf_dh[im] = p.s2 * rf_h[im];
        rf_dh[il] = p.s2 * 0.5 * (exp(rf_h[il]) - 1.0);
    }
}

// One pixel: (nll, its gradient before the s0 scale) for output x and target t.
fn rf_term(x: f32, t: f32) -> vec2<f32> {
    if (LIKELIHOOD == 0u) {
        return vec2<f32>(max(x, 0.0) - x * t + log(1.0 + exp(-abs(x))), sigmoid(x) - t);
    }
    let e = x - t;
    return vec2<f32>(0.5 * e * e / p.s1 + 0.5 * log(6.283185307179586 * p.s1), e / p.s1);
}

@compute @workgroup_size(256)
fn recon_fused(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    rf_kl_head(i);
    if (i >= p.n) { return; }
    let d = p.zdim;
    let row = i / p.nch;
    let d0 = (i % p.nch) * RCH;
    let d1 = min(d0 + RCH, d);
    var s = 0.0;
    for (var c = d0; c < d1; c++) {
        let k = row * d + c;
        let r = rf_term(rf_x[k], rf_t[k]);
        s += r.x;
        if (GRAD) { rf_dx[k] = p.s0 * r.y; }
    }
    rf_partial[i] = s;
}

// ---- recon_fused4: recon_fused for D % 4 == 0 (every chunk of RCH = 16 is then whole vec4s), with
// the output, the target and their gradient read and written four pixels at a time as Word4s
// (words_f32.wgsl / words_u64.wgsl, prepended by the host): a quarter of the storage accesses, which
// on CPU adapters cost a loop over the SIMD lanes each. The same arithmetic in the same order, so
// the same bits as recon_fused. Bindings as recon_fused, with 1, 2 and 5 viewed as Word4s.
@group(0) @binding(1) var<storage, read> rf_x4: array<Word4>;
@group(0) @binding(2) var<storage, read> rf_t4: array<Word4>;
@group(0) @binding(5) var<storage, read_write> rf_dx4: array<Word4>;

@compute @workgroup_size(256)
fn recon_fused4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    rf_kl_head(i);
    if (i >= p.n) { return; }
    let d = p.zdim;
    let row = i / p.nch;
    let d0 = (i % p.nch) * RCH;
    let d1 = min(d0 + RCH, d);
    var s = 0.0;
    for (var c = d0; c < d1; c += 4u) {
        let q = (row * d + c) / 4u;
        let x = unword(rf_x4[q]);
        let t = unword(rf_t4[q]);
        let r0 = rf_term(x.x, t.x);
        let r1 = rf_term(x.y, t.y);
        let r2 = rf_term(x.z, t.z);
        let r3 = rf_term(x.w, t.w);
        s += r0.x;
        s += r1.x;
        s += r2.x;
        s += r3.x;
        if (GRAD) { rf_dx4[q] = word(p.s0 * vec4<f32>(r0.y, r1.y, r2.y, r3.y)); }
    }
    rf_partial[i] = s;
}

// ---- loss_finalize: one workgroup. recon = Σ partial (n values), kl = Σ kl_rows (nch values,
// none for the autoencoder), total = s0·recon + s1·kl; with flag = 1 also acc_recon += recon and
// acc_kl += kl (the epoch's sums, read back once per epoch). Every invocation adds a fixed strided
// subset, then a fixed tree: the same inputs give the same bits.
// Bindings: 1 partial | 2 kl_rows (partial again when nch = 0) | 3 recon[1] | 4 kl[1] | 5 total[1]
//           | 6 acc_recon[1] | 7 acc_kl[1] or [4] with the non-finite guard (recon/kl again when
//           flag = 0)
@group(0) @binding(1) var<storage, read> lz_partial: array<f32>;
@group(0) @binding(2) var<storage, read> lz_kl: array<f32>;
@group(0) @binding(3) var<storage, read_write> lz_recon: array<f32>;
@group(0) @binding(4) var<storage, read_write> lz_klsum: array<f32>;
@group(0) @binding(5) var<storage, read_write> lz_total: array<f32>;
@group(0) @binding(6) var<storage, read_write> lz_acc_recon: array<f32>;
@group(0) @binding(7) var<storage, read_write> lz_acc_kl: array<f32>;
var<workgroup> lz_r: array<f32, 256>;
var<workgroup> lz_k: array<f32, 256>;

@compute @workgroup_size(256)
fn loss_finalize(@builtin(local_invocation_id) lid: vec3<u32>) {
    let t = lid.x;
    var r = 0.0;
    for (var i = t; i < p.n; i += 256u) { r += lz_partial[i]; }
    var k = 0.0;
    for (var i = t; i < p.nch; i += 256u) { k += lz_kl[i]; }
    lz_r[t] = r;
    lz_k[t] = k;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w / 2u) {
        if (t < w) {
            lz_r[t] += lz_r[t + w];
            lz_k[t] += lz_k[t + w];
        }
        workgroupBarrier();
    }
    if (t == 0u) {
        let rs = lz_r[0];
        let ks = lz_k[0];
        lz_recon[0] = rs;
        lz_klsum[0] = ks;
        lz_total[0] = p.s0 * rs + p.s1 * ks;
        if (p.flag == 1u) {
            lz_acc_recon[0] += rs;
            lz_acc_kl[0] += ks;
            // The non-finite guard, when the KL accumulator has room for it ([1, 4]):
            // [1] steps accumulated, [2] the first (1-based) whose recon or KL sum was NaN or
            // infinite, [3] which (1 recon, 2 KL, 3 both). Read with the running loss, so
            // divergence is seen without a read-back per step.
            if (arrayLength(&lz_acc_kl) >= 4u) {
                let s = lz_acc_kl[1] + 1.0;
                lz_acc_kl[1] = s;
                let bad = select(0.0, 1.0, !is_finite(rs)) + select(0.0, 2.0, !is_finite(ks));
                if (bad > 0.0 && lz_acc_kl[2] == 0.0) {
                    lz_acc_kl[2] = s;
                    lz_acc_kl[3] = bad;
                }
            }
        }
    }
}

// ---- accumulate_guarded: the epoch accumulators and non-finite guard of loss_finalize, for
// losses computed by the unfused ops (free bits, BN-VAE, learned variance): acc_recon += recon,
// acc_kl[0] += kl, and with acc_kl of 4 words the guard as in loss_finalize. One invocation.
// Bindings: 1 recon[1] | 2 kl[1] | 3 acc_recon[1] | 4 acc_kl[1] or [4]
@group(0) @binding(1) var<storage, read> ag_recon: array<f32>;
@group(0) @binding(2) var<storage, read> ag_kl: array<f32>;
@group(0) @binding(3) var<storage, read_write> ag_acc_recon: array<f32>;
@group(0) @binding(4) var<storage, read_write> ag_acc_kl: array<f32>;

@compute @workgroup_size(1)
fn accumulate_guarded() {
    let rs = ag_recon[0];
    let ks = ag_kl[0];
    ag_acc_recon[0] += rs;
    ag_acc_kl[0] += ks;
    if (arrayLength(&ag_acc_kl) >= 4u) {
        let s = ag_acc_kl[1] + 1.0;
        ag_acc_kl[1] = s;
        let bad = select(0.0, 1.0, !is_finite(rs)) + select(0.0, 2.0, !is_finite(ks));
        if (bad > 0.0 && ag_acc_kl[2] == 0.0) {
            ag_acc_kl[2] = s;
            ag_acc_kl[3] = bad;
        }
    }
}

// ---- scale_by: y[n] = g[0]·x (the fused gradients when the loss's upstream is not 1).
// Bindings: 1 g[1,1] | 2 x | 3 y
@group(0) @binding(1) var<storage, read> sb_g: array<f32>;
@group(0) @binding(2) var<storage, read> sb_x: array<f32>;
@group(0) @binding(3) var<storage, read_write> sb_y: array<f32>;

@compute @workgroup_size(256)
fn scale_by(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    sb_y[i] = sb_g[0] * sb_x[i];
}

// ---- slice_cols / pad_cols: y[B, len] = x[B, start .. start+len) and its gradient
// dx[B, N] = dy placed at those columns, zeros elsewhere. n = B*len (slice) or B*N (pad),
// zdim = N, nch = start, flag = len. Bindings: 1 x | 2 y
@group(0) @binding(1) var<storage, read> sc_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> sc_y: array<f32>;

@compute @workgroup_size(256)
fn slice_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let len = p.flag;
    sc_y[i] = sc_x[(i / len) * p.zdim + p.nch + i % len];
}

@compute @workgroup_size(256)
fn pad_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let len = p.flag;
    let c = i % p.zdim;
    var v = 0.0;
    if (c >= p.nch && c < p.nch + len) { v = sc_x[(i / p.zdim) * len + c - p.nch]; }
    sc_y[i] = v;
}
