// conv_subgroup.wgsl — the `conv_gemm_subgroup` entry point of conv.wgsl (appended to it, SG =
// true) for adapters with 8-lane subgroups (llvmpipe/lavapipe): the 8 lanes of a workgroup row
// share their 8 GEMM rows, each loading one row operand per K step (see conv.wgsl).

// acc[i] += (row i's operand, loaded by lane i) * bv for the RB = 8 rows of the subgroup.
// subgroupBroadcast takes a constant lane, hence the unrolled lines.
fn share_row(acc: ptr<function, array<vec4<f32>, RB>>, v: f32, bv: vec4<f32>) {
    (*acc)[0] += subgroupBroadcast(v, 0u) * bv;
    (*acc)[1] += subgroupBroadcast(v, 1u) * bv;
    (*acc)[2] += subgroupBroadcast(v, 2u) * bv;
    (*acc)[3] += subgroupBroadcast(v, 3u) * bv;
    (*acc)[4] += subgroupBroadcast(v, 4u) * bv;
    (*acc)[5] += subgroupBroadcast(v, 5u) * bv;
    (*acc)[6] += subgroupBroadcast(v, 6u) * bv;
    (*acc)[7] += subgroupBroadcast(v, 7u) * bv;
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
