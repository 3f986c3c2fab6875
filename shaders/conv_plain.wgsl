// conv_plain.wgsl — the `conv_gemm` entry point of conv.wgsl (appended to it), for every adapter.
// `row_values` exists only to satisfy the shared body: with SG = false it is never called.

fn row_values(v: f32) -> array<f32, RB> {
    return array<f32, RB>(v, v, v, v, v, v, v, v);
}

@compute @workgroup_size(8, 8, 1)
fn conv_gemm(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    conv_body(gid, wid, lid, nwg, 0u);
}
