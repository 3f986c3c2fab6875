// common.wgsl — prepended to every kernel family at load time (after the `const` defines that
// select a variant).
//
// Binding convention of every kernel (src/gpu/pipeline.rs builds the matching layouts):
//   @binding(0)                    uniform parameter block, 64 bytes, at a dynamic offset
//   @binding(1 ..= I)              read-only storage inputs
//   @binding(I+1 ..= I+O)          read-write storage outputs
// Tensors are row-major f32. Shape letters: M rows, N columns, K the contracted dimension.

// Activation ids, shared with src/ops/activation.rs (Act::id).
const ACT_IDENTITY: u32 = 0u;
const ACT_RELU: u32 = 1u;
const ACT_LEAKY_RELU: u32 = 2u;
const ACT_TANH: u32 = 3u;
const ACT_SIGMOID: u32 = 4u;
const ACT_ELU: u32 = 5u;

// Overflow-free logistic function.
fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) {
        return 1.0 / (1.0 + exp(-x));
    }
    let e = exp(x);
    return e / (1.0 + e);
}

// tanh through exp(-2|x|), so large |x| gives +-1 instead of inf/inf.
fn tanh_stable(x: f32) -> f32 {
    let t = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - t) / (1.0 + t);
}

// y = act(x). `alpha` is the leaky-ReLU slope or the ELU alpha. `a` is a compile-time constant at
// every call site, so the switch folds away.
fn act_fwd(a: u32, alpha: f32, x: f32) -> f32 {
    switch a {
        case 1u: { return max(x, 0.0); }
        case 2u: { return select(alpha * x, x, x > 0.0); }
        case 3u: { return tanh_stable(x); }
        case 4u: { return sigmoid(x); }
        case 5u: { return select(alpha * (exp(x) - 1.0), x, x > 0.0); }
        default: { return x; }
    }
}

// d act / d x written in terms of the OUTPUT y = act(x), so fused kernels need not keep x:
// relu: y>0; leaky: y>0 ? 1 : alpha (alpha>0 keeps the sign); tanh: 1-y^2; sigmoid: y(1-y);
// elu: y>0 ? 1 : y+alpha.
fn act_grad_from_y(a: u32, alpha: f32, y: f32) -> f32 {
    switch a {
        case 1u: { return select(0.0, 1.0, y > 0.0); }
        case 2u: { return select(alpha, 1.0, y > 0.0); }
        case 3u: { return 1.0 - y * y; }
        case 4u: { return y * (1.0 - y); }
        case 5u: { return select(y + alpha, 1.0, y > 0.0); }
        default: { return 1.0; }
    }
}

// Flattened invocation index for 1-D kernels dispatched as a 2-D grid (x, y) of workgroups, which
// lets element counts exceed 65535 workgroups in x.
fn flat_index(wid: vec3<u32>, lid: u32, groups_x: u32, wg: u32) -> u32 {
    return (wid.y * groups_x + wid.x) * wg + lid;
}

// ---- Philox4x32-10 (used by random.wgsl and data.wgsl) ----

// High 32 bits of a 32x32-bit product (WGSL has no 64-bit integers): schoolbook on 16-bit halves.
fn mul_hi(a: u32, b: u32) -> u32 {
    let a_lo = a & 0xffffu;
    let a_hi = a >> 16u;
    let b_lo = b & 0xffffu;
    let b_hi = b >> 16u;
    let t = a_hi * b_lo + ((a_lo * b_lo) >> 16u);
    let w = (t & 0xffffu) + a_lo * b_hi;
    return a_hi * b_hi + (t >> 16u) + (w >> 16u);
}

fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
    var c = counter;
    var k = key;
    for (var r = 0u; r < 10u; r++) {
        let hi0 = mul_hi(0xD2511F53u, c.x);
        let lo0 = 0xD2511F53u * c.x;
        let hi1 = mul_hi(0xCD9E8D57u, c.z);
        let lo1 = 0xCD9E8D57u * c.z;
        c = vec4<u32>(hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0);
        k = k + vec2<u32>(0x9E3779B9u, 0xBB67AE85u);
    }
    return c;
}

// A 32-bit word to a float in (0, 1): the top 23 bits, centred in their interval. Exact in f32
// (with 24 bits the largest value would round up to 1.0).
fn u01(x: u32) -> f32 {
    return (f32(x >> 9u) + 0.5) * (1.0 / 8388608.0);
}

// Two independent N(0,1) values from two words (Box-Muller).
fn box_muller(x: u32, y: u32) -> vec2<f32> {
    let r = sqrt(-2.0 * log(u01(x)));
    let t = 6.283185307179586 * u01(y);
    return vec2<f32>(r * cos(t), r * sin(t));
}
