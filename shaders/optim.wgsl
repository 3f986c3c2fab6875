// optim.wgsl — fused Adam / AdamW update of one parameter tensor, in place.
//
//   m = b1*m + (1-b1)*g          v = b2*v + (1-b2)*g^2
//   Adam  (L2):    g' = g + wd*p before the moments
//   AdamW (decoupled): p = p - lr*wd*p
//   p = p - lr * (m / bc1) / (sqrt(v / bc2) + eps),   bc1 = 1 - b1^t, bc2 = 1 - b2^t
//
// Shapes: g, p, m, v all [n] (any matrix, flattened). Workgroup 256, flat_index over a 2-D grid;
// one element per invocation (adam_step), four (adam_step4, n % 4 == 0) or eight (adam_step8,
// n % 8 == 0).
// Bindings: 0 params | 1 g | 2 p (read_write) | 3 m (read_write) | 4 v (read_write), except
// adam_step8t (below).

struct Params {
    n: u32,
    decoupled: u32,
    lr: f32,
    b1: f32,
    b2: f32,
    eps: f32,
    wd: f32,
    bc1: f32,
    bc2: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> m1: array<f32>;
@group(0) @binding(4) var<storage, read_write> m2: array<f32>;

@compute @workgroup_size(256)
fn adam_step(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    var w = param[i];
    var g = grad[i];
    if (p.decoupled == 1u) {
        w = w - p.lr * p.wd * w;
    } else {
        g = g + p.wd * w;
    }
    let m = p.b1 * m1[i] + (1.0 - p.b1) * g;
    let v = p.b2 * m2[i] + (1.0 - p.b2) * g * g;
    m1[i] = m;
    m2[i] = v;
    param[i] = w - p.lr * (m / p.bc1) / (sqrt(v / p.bc2) + p.eps);
}

// The same update four elements at a time, for n % 4 == 0 (every VAE weight): on CPU adapters a
// storage access costs a loop over SIMD lanes with work per component, so vec4 accesses make it
// several times cheaper per float, and Word4 (words_u64.wgsl on CPU adapters) cheaper again.
// Bindings as above, viewed as Word4 arrays (words_f32.wgsl / words_u64.wgsl, prepended by the
// host); n is still the scalar count.
@group(0) @binding(1) var<storage, read> grad4: array<Word4>;
@group(0) @binding(2) var<storage, read_write> param4: array<Word4>;
@group(0) @binding(3) var<storage, read_write> m14: array<Word4>;
@group(0) @binding(4) var<storage, read_write> m24: array<Word4>;

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

@compute @workgroup_size(256)
fn adam_step4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (4u * i >= p.n) { return; }
    let r = adam4(unword(param4[i]), unword(grad4[i]), unword(m14[i]), unword(m24[i]));
    m14[i] = word(r[1]);
    m24[i] = word(r[2]);
    param4[i] = word(r[0]);
}

// Eight elements per invocation, for n % 8 == 0, through Word8 views (32 bytes). With u64 words
// (CPU adapters) a Word8 is one access of four u64 where two Word4s are two accesses: Adam, which
// is almost nothing but loads and stores there, gets about a fifth faster (BENCHMARKS.md). The
// host picks it only with u64 words; GPUs keep adam_step4. Bindings as adam_step4, viewed as
// Word8 arrays.
@group(0) @binding(1) var<storage, read> grad8: array<Word8>;
@group(0) @binding(2) var<storage, read_write> param8: array<Word8>;
@group(0) @binding(3) var<storage, read_write> m18: array<Word8>;
@group(0) @binding(4) var<storage, read_write> m28: array<Word8>;

@compute @workgroup_size(256)
fn adam_step8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (8u * i >= p.n) { return; }
    let w = unword8(param8[i]);
    let g = unword8(grad8[i]);
    let m = unword8(m18[i]);
    let v = unword8(m28[i]);
    let lo = adam4(w[0], g[0], m[0], v[0]);
    let hi = adam4(w[1], g[1], m[1], v[1]);
    m18[i] = word8(mat2x4<f32>(lo[1], hi[1]));
    m28[i] = word8(mat2x4<f32>(lo[2], hi[2]));
    param8[i] = word8(mat2x4<f32>(lo[0], hi[0]));
}

// adam_step8 reading g, p, m and v from operand textures (rgba32float, 1024 texels per row, texel
// i % 1024, i / 1024 holding elements 4i..4i+3; the host copies the buffers in before the
// dispatch, as for the `subgroup` matmul's operands, see matmul_operands_texture.wgsl) and
// writing p, m and v through Word8 views. lavapipe fetches texels with straight-line vector code
// where each storage load is a loop over the lanes: on AVX2-only CPUs this update takes about 0.57
// of adam_step8's time, the copies included (BENCHMARKS.md). Same bits as adam_step8.
// Bindings: 0 params | 1 g | 2 p | 3 m | 4 v (textures) | 5 p | 6 m | 7 v (read_write Word8 views).
@group(0) @binding(1) var g_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(2) var p_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(3) var m_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(4) var v_tex: texture_storage_2d<rgba32float, read>;
@group(0) @binding(5) var<storage, read_write> param8_out: array<Word8>;
@group(0) @binding(6) var<storage, read_write> m18_out: array<Word8>;
@group(0) @binding(7) var<storage, read_write> m28_out: array<Word8>;

fn texel(t: texture_storage_2d<rgba32float, read>, i: u32) -> vec4<f32> {
    return textureLoad(t, vec2<u32>(i & 1023u, i >> 10u));
}

@compute @workgroup_size(256)
fn adam_step8t(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (8u * i >= p.n) { return; }
    let lo = adam4(texel(p_tex, 2u * i), texel(g_tex, 2u * i), texel(m_tex, 2u * i), texel(v_tex, 2u * i));
    let hi = adam4(texel(p_tex, 2u * i + 1u), texel(g_tex, 2u * i + 1u), texel(m_tex, 2u * i + 1u), texel(v_tex, 2u * i + 1u));
    m18_out[i] = word8(mat2x4<f32>(lo[1], hi[1]));
    m28_out[i] = word8(mat2x4<f32>(lo[2], hi[2]));
    param8_out[i] = word8(mat2x4<f32>(lo[0], hi[0]));
}
