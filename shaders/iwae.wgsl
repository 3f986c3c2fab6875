// iwae.wgsl — the importance-weighted estimate of log p(x) (Burda et al. 2016), streamed over
// chunks of the K samples of each example (src/vae/iwae.rs drives it):
//
//   log p(x) ≈ logsumexp_k [ log p(x|z_k) + log p(z_k) − log q(z_k|x) ] − log K,
//   z_k = mu + exp(logvar/2)·eps_k.
//
// A chunk holds the samples k0 .. k0+S of B examples as R = B*S rows, example-major:
// row r = b*S + s is example b, sample k0 + s. `sample` draws z and log p(z) − log q(z|x) per row,
// the decoder and the reconstruction kernels of vae.wgsl give −log p(x|z) per row, and
// `lse_update` folds the chunk into a running (max, sum) per example.
//
// Parameter block (fields unused by a kernel are ignored):
//   n      elements (repeat_rows) or rows (sample) or examples (lse_update)
//   cols   D (repeat_rows) or Z (sample)
//   s      S, samples per example in this chunk
//   k0     index of the chunk's first sample
//   k      K, samples per example in all
//   seed_lo, seed_hi, step, stream: the Philox key and counter words (as random.wgsl)
//   first  1 for the first chunk (lse_update overwrites the state instead of merging)

struct Params {
    n: u32,
    cols: u32,
    s: u32,
    k0: u32,
    k: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    first: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_after_1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_after_2: array<f32>;
@group(0) @binding(4) var<storage, read_write> out2_after_2: array<f32>;

fn gid(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return flat_index(wid, lid.x, nwg.x, 256u);
}

// out[B*S, D]: row r is row r / S of x[B, D] (each example's row repeated S times, the targets of
// the chunk's reconstruction term). n = B*S*D, cols = D, s = S. Bindings: 1 x | 2 out
@compute @workgroup_size(256)
fn repeat_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    let r = i / p.cols;
    let c = i - r * p.cols;
    out_after_1[i] = in0[(r / p.s) * p.cols + c];
}

// One invocation per row r = b*S + s of the chunk (n = B*S rows, cols = Z):
//   eps[r, j] = element e = ((b*K + k0 + s)*Z + j) of the normals random.wgsl's `normal` writes
//               for (seed, step, stream): Box-Muller of Philox block (e/2, step, stream, 0), its
//               first value for even e and its second for odd e;
//   z[r, j]   = mu[b, j] + exp(logvar[b, j]/2)·eps[r, j];
//   lw[r]     = log p(z) − log q(z|x) = Σ_j (eps² + logvar − z²)/2   (the ½log 2π terms cancel;
//               (z − mu)²/σ² = eps² exactly).
// Bindings: 1 mu[B, Z] | 2 logvar[B, Z] | 3 z[R, Z] | 4 lw[R, 1]
@compute @workgroup_size(256)
fn sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let r = gid(wid, nwg, lid);
    if (r >= p.n) { return; }
    let zd = p.cols;
    let b = r / p.s;
    let kk = p.k0 + (r - b * p.s);
    let e0 = (b * p.k + kk) * zd;
    let key = vec2<u32>(p.seed_lo, p.seed_hi);
    var block = 0xffffffffu;
    var pair = vec2<f32>(0.0, 0.0);
    var acc = 0.0;
    for (var j = 0u; j < zd; j++) {
        let e = e0 + j;
        let i = e >> 1u;
        if (i != block) {
            let w = philox(vec4<u32>(i, p.step, p.stream, 0u), key);
            pair = box_muller(w.x, w.y);
            block = i;
        }
        let eps = select(pair.x, pair.y, (e & 1u) == 1u);
        let lv = in1[b * zd + j];
        let z = in0[b * zd + j] + exp(0.5 * lv) * eps;
        out_after_2[r * zd + j] = z;
        acc += eps * eps + lv - z * z;
    }
    out2_after_2[r] = 0.5 * acc;
}

// Streaming logsumexp, one invocation per example b (n = B, s = S): with v_s = lw[b*S + s] −
// nll[b*S + s] = log w of the chunk's samples, m_c = max_s v_s and t_c = Σ_s exp(v_s − m_c),
// the state (m, t) of state[b, 0..2] becomes (m_c, t_c) on the first chunk and otherwise
// (m', t·exp(m − m') + t_c·exp(m_c − m')) with m' = max(m, m_c). After the last chunk
// logsumexp_k log w_k = m + log t.  Bindings: 1 nll[R, 1] | 2 lw[R, 1] | 3 state[B, 2]
@compute @workgroup_size(256)
fn lse_update(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let b = gid(wid, nwg, lid);
    if (b >= p.n) { return; }
    let r0 = b * p.s;
    var mc = in1[r0] - in0[r0];
    for (var s = 1u; s < p.s; s++) {
        mc = max(mc, in1[r0 + s] - in0[r0 + s]);
    }
    var tc = 0.0;
    for (var s = 0u; s < p.s; s++) {
        tc += exp(in1[r0 + s] - in0[r0 + s] - mc);
    }
    if (p.first == 1u) {
        out_after_2[2u * b] = mc;
        out_after_2[2u * b + 1u] = tc;
        return;
    }
    let m = out_after_2[2u * b];
    let t = out_after_2[2u * b + 1u];
    let mn = max(m, mc);
    out_after_2[2u * b] = mn;
    out_after_2[2u * b + 1u] = t * exp(m - mn) + tc * exp(mc - mn);
}
