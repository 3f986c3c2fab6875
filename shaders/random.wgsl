// random.wgsl — counter-based random numbers on the GPU: Philox4x32-10 (Salmon et al., SC'11).
//
// A draw is a pure function of (key = seed, counter = (index, step, stream, 0)): no state lives on
// the GPU, any element can be recomputed, and the same seed gives the same numbers on every
// adapter (the integer part is exact; src/rng.rs mirrors it on the CPU for the tests).
//
// Parameter block: n outputs, seed_lo, seed_hi, step, stream.

struct Params {
    n: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

// Normals, out[n] ~ N(0, 1): invocation i draws one Philox block for counter (i, step, stream, 0)
// and turns its first two words into out[2i] and out[2i+1] by Box-Muller.
// Dispatch: 1-D grid over ceil(n/2) invocations (flat_index), workgroup 256.
@compute @workgroup_size(256)
fn normal(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (2u * i >= p.n) { return; }
    let r = philox(vec4<u32>(i, p.step, p.stream, 0u), vec2<u32>(p.seed_lo, p.seed_hi));
    let z = box_muller(r.x, r.y);
    out[2u * i] = z.x;
    if (2u * i + 1u < p.n) { out[2u * i + 1u] = z.y; }
}

// Uniforms, out[n] in (0, 1): out[i] = u01(word 0 of the block for counter (i, step, stream, 0)).
@compute @workgroup_size(256)
fn uniform01(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    out[i] = u01(philox(vec4<u32>(i, p.step, p.stream, 0u), vec2<u32>(p.seed_lo, p.seed_hi)).x);
}
