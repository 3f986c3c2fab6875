// conv_subgroup.wgsl — the `conv_gemm_subgroup` entry point of conv.wgsl (appended to it, SG =
// true) for adapters with 8-lane subgroups (llvmpipe/lavapipe): the 8 lanes of a workgroup row
// share their 8 GEMM rows, each loading one row operand per K step (see conv.wgsl).

// Element i: the row operand `v` that lane i loaded, for the RB = 8 rows of the subgroup.
// subgroupBroadcast takes a constant lane, hence the lanes written out.
fn row_values(v: f32) -> array<f32, RB> {
    return array<f32, RB>(
        subgroupBroadcast(v, 0u),
        subgroupBroadcast(v, 1u),
        subgroupBroadcast(v, 2u),
        subgroupBroadcast(v, 3u),
        subgroupBroadcast(v, 4u),
        subgroupBroadcast(v, 5u),
        subgroupBroadcast(v, 6u),
        subgroupBroadcast(v, 7u),
    );
}

// One-dimensional (naga takes subgroup builtins only there): invocation l plays (l % 8, l / 8)
// of conv_gemm's 8x8 workgroup, so the 8 lanes of a subgroup are one workgroup row.
@compute @workgroup_size(64, 1, 1)
fn conv_gemm_subgroup(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let l2 = vec3<u32>(lid.x % 8u, lid.x / 8u, 0u);
    let g2 = vec3<u32>(wid.x * 8u + l2.x, wid.y * 8u + l2.y, wid.z);
    conv_body(g2, wid, l2, nwg, lane);
}
