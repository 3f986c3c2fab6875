// elementwise.wgsl — activations forward/backward and the elementwise ops the tape needs.
//
// All kernels are 1-D over n elements, workgroup 256, dispatched as a 2-D grid of workgroups
// (x capped at 65535) so n may exceed 65535*256; flat index i = (wid.y*nwg.x + wid.x)*256 + lid.
// Defines (per pipeline): ACT: u32, ALPHA: f32 (activation kernels only; 0u / 0.0 elsewhere).
//
// Parameter block (same for every entry): n elements, `cols` for row/column broadcasts, and two
// scalars s0, s1.

struct Params {
    n: u32,
    cols: u32,
    s0: f32,
    s1: f32,
}

@group(0) @binding(0) var<uniform> p: Params;

// Inputs are bound at 1 and 2, outputs after them; entries that take one input bind the output
// at 2. WGSL needs the access mode fixed per binding, hence the per-arity names below.
@group(0) @binding(1) var<storage, read> in0: array<f32>;
@group(0) @binding(2) var<storage, read> in1: array<f32>;
@group(0) @binding(2) var<storage, read_write> out_after_1: array<f32>;
@group(0) @binding(3) var<storage, read_write> out_after_2: array<f32>;
@group(0) @binding(1) var<storage, read_write> out_only: array<f32>;

const WG_SIZE: u32 = 256u;

fn gid(wid: vec3<u32>, nwg: vec3<u32>, lid: vec3<u32>) -> u32 {
    return flat_index(wid, lid.x, nwg.x, WG_SIZE);
}

// y[n] = act(x[n]).  Bindings: 1 x | 2 y
@compute @workgroup_size(256)
fn act_forward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_1[i] = act_fwd(ACT, ALPHA, in0[i]);
}

// dx[n] = dy[n] * act'(x) computed from y = act(x).  Bindings: 1 dy | 2 y | 3 dx
@compute @workgroup_size(256)
fn act_backward(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_2[i] = in0[i] * act_grad_from_y(ACT, ALPHA, in1[i]);
}

// c[n] = s0*a[n] + s1*b[n] (add: 1,1; sub: 1,-1).  Bindings: 1 a | 2 b | 3 c
@compute @workgroup_size(256)
fn axpby(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_2[i] = p.s0 * in0[i] + p.s1 * in1[i];
}

// c[n] = a[n] * b[n].  Bindings: 1 a | 2 b | 3 c
@compute @workgroup_size(256)
fn mul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_2[i] = in0[i] * in1[i];
}

// y[n] = s0*x[n] + s1 (scale, copy with s0=1, s1=0).  Bindings: 1 x | 2 y
@compute @workgroup_size(256)
fn affine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_1[i] = p.s0 * in0[i] + p.s1;
}

// y[n] = s0 (fill).  Bindings: 1 y
@compute @workgroup_size(256)
fn fill(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_only[i] = p.s0;
}

// y[n] += s0 * x[n] (in place; gradient accumulation, SGD with s0 = -lr).  Bindings: 1 x | 2 y
@compute @workgroup_size(256)
fn axpy_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_1[i] = out_after_1[i] + p.s0 * in0[i];
}

// Broadcasts, y[R,C] with n = R*C:
//   scalar: y[i] = s0 * x[0]        (x [1])
//   row:    y[r,c] = s0 * x[c]      (x [C], e.g. a column-sum's gradient)
//   col:    y[r,c] = s0 * x[r]      (x [R], e.g. a row-sum's gradient)
// Bindings: 1 x | 2 y
@compute @workgroup_size(256)
fn broadcast_scalar(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_1[i] = p.s0 * in0[0];
}

@compute @workgroup_size(256)
fn broadcast_row(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_1[i] = p.s0 * in0[i % p.cols];
}

@compute @workgroup_size(256)
fn broadcast_col(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = gid(wid, nwg, lid);
    if (i >= p.n) { return; }
    out_after_1[i] = p.s0 * in0[i / p.cols];
}
