// matmul_subgroup.wgsl — C[M,N] = act(op(A)·op(B) + bias) for CPU adapters (Mesa llvmpipe/lavapipe):
// the `register` variant's fast path when the adapter has subgroups of exactly 8 lanes.
//
// Why this shape: llvmpipe turns every storage-buffer load into a loop over the 8 SIMD lanes (a
// vec4 load costs about what a scalar one does), and runs barriers as coroutine switches. So the
// kernel uses no workgroup memory and no barriers, loads only vec4s, and loads each float once per
// subgroup: the A block that every lane of a subgroup needs is loaded cooperatively (lane l loads
// vec4 number l, l+8, ...) and handed round with subgroupBroadcast, which llvmpipe compiles to a
// register extract + splat. Only B, which differs per lane, is loaded per lane.
//
// Shapes/layouts as in matmul.wgsl (A [M,K] or [K,M] when TA; B [K,N] or [N,K] when TB; bias [N]).
// Requires K % 4 == 0, N % 4 == 0 and M % 4 == 0 when TA (the host checks; other shapes use the
// `register` kernels). Defines: TA, TB, BIAS, ACCUM, ACT, ALPHA, WG (a multiple of 8).
// Invocation x of workgroup (gx, gy) owns rows gy*32 .. +31 and columns (gx*WG + x)*4 .. +3.
// Dispatch: (ceil(N / (4*WG)), ceil(M / 32), 1).
// Bindings: 0 params | 1 A | 2 B | 3 bias (A again when BIAS is false) | 4 C (read_write)

struct Params {
    m: u32,
    n: u32,
    k: u32,
    k_begin: u32,
    k_end: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> bias4: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> c4: array<vec4<f32>>;


// One K step of 4 for a subgroup: every lane adds op(A)[32 rows, k0..k0+3] · op(B)[k0..k0+3, its 4
// columns] into its 32 row accumulators. Straight-line code only: llvmpipe keeps indexed local
// arrays in memory behind per-lane loops, so the block is written out (it was generated for 32
// rows). C and the bias are addressed as vec4s, so each accumulator row is one store (the epilogue
// matters when K is short, as in the weight gradients, K = batch).
@compute @workgroup_size(WG, 1, 1)
fn matmul_subgroup(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32) {
    let col0 = (wid.x * WG + lid.x) * 4u;
    let row0 = wid.y * 32u;
    let qk = p.k / 4u;
    let qm = p.m / 4u;
    let qn = p.n / 4u;
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0);
    var acc5 = vec4<f32>(0.0);
    var acc6 = vec4<f32>(0.0);
    var acc7 = vec4<f32>(0.0);
    var acc8 = vec4<f32>(0.0);
    var acc9 = vec4<f32>(0.0);
    var acc10 = vec4<f32>(0.0);
    var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0);
    var acc13 = vec4<f32>(0.0);
    var acc14 = vec4<f32>(0.0);
    var acc15 = vec4<f32>(0.0);
    var acc16 = vec4<f32>(0.0);
    var acc17 = vec4<f32>(0.0);
    var acc18 = vec4<f32>(0.0);
    var acc19 = vec4<f32>(0.0);
    var acc20 = vec4<f32>(0.0);
    var acc21 = vec4<f32>(0.0);
    var acc22 = vec4<f32>(0.0);
    var acc23 = vec4<f32>(0.0);
    var acc24 = vec4<f32>(0.0);
    var acc25 = vec4<f32>(0.0);
    var acc26 = vec4<f32>(0.0);
    var acc27 = vec4<f32>(0.0);
    var acc28 = vec4<f32>(0.0);
    var acc29 = vec4<f32>(0.0);
    var acc30 = vec4<f32>(0.0);
    var acc31 = vec4<f32>(0.0);
    let row_0 = min(row0 + 0u + lane, p.m - 1u);
    let row_1 = min(row0 + 8u + lane, p.m - 1u);
    let row_2 = min(row0 + 16u + lane, p.m - 1u);
    let row_3 = min(row0 + 24u + lane, p.m - 1u);
    let cq = min(col0 / 4u, qn - 1u);
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += 4u) {
        let kb = k0 / 4u;
        var a_0: vec4<f32>;
        var a_1: vec4<f32>;
        var a_2: vec4<f32>;
        var a_3: vec4<f32>;
        if (TA) {
            a_0 = a4[(k0 + (0u + lane) / 8u) * qm + min(row0 / 4u + (0u + lane) % 8u, qm - 1u)];
            a_1 = a4[(k0 + (8u + lane) / 8u) * qm + min(row0 / 4u + (8u + lane) % 8u, qm - 1u)];
            a_2 = a4[(k0 + (16u + lane) / 8u) * qm + min(row0 / 4u + (16u + lane) % 8u, qm - 1u)];
            a_3 = a4[(k0 + (24u + lane) / 8u) * qm + min(row0 / 4u + (24u + lane) % 8u, qm - 1u)];
        } else {
            a_0 = a4[row_0 * qk + kb];
            a_1 = a4[row_1 * qk + kb];
            a_2 = a4[row_2 * qk + kb];
            a_3 = a4[row_3 * qk + kb];
        }
        let v0 = subgroupBroadcast(a_0, 0u);
        let v1 = subgroupBroadcast(a_0, 1u);
        let v2 = subgroupBroadcast(a_0, 2u);
        let v3 = subgroupBroadcast(a_0, 3u);
        let v4 = subgroupBroadcast(a_0, 4u);
        let v5 = subgroupBroadcast(a_0, 5u);
        let v6 = subgroupBroadcast(a_0, 6u);
        let v7 = subgroupBroadcast(a_0, 7u);
        let v8 = subgroupBroadcast(a_1, 0u);
        let v9 = subgroupBroadcast(a_1, 1u);
        let v10 = subgroupBroadcast(a_1, 2u);
        let v11 = subgroupBroadcast(a_1, 3u);
        let v12 = subgroupBroadcast(a_1, 4u);
        let v13 = subgroupBroadcast(a_1, 5u);
        let v14 = subgroupBroadcast(a_1, 6u);
        let v15 = subgroupBroadcast(a_1, 7u);
        let v16 = subgroupBroadcast(a_2, 0u);
        let v17 = subgroupBroadcast(a_2, 1u);
        let v18 = subgroupBroadcast(a_2, 2u);
        let v19 = subgroupBroadcast(a_2, 3u);
        let v20 = subgroupBroadcast(a_2, 4u);
        let v21 = subgroupBroadcast(a_2, 5u);
        let v22 = subgroupBroadcast(a_2, 6u);
        let v23 = subgroupBroadcast(a_2, 7u);
        let v24 = subgroupBroadcast(a_3, 0u);
        let v25 = subgroupBroadcast(a_3, 1u);
        let v26 = subgroupBroadcast(a_3, 2u);
        let v27 = subgroupBroadcast(a_3, 3u);
        let v28 = subgroupBroadcast(a_3, 4u);
        let v29 = subgroupBroadcast(a_3, 5u);
        let v30 = subgroupBroadcast(a_3, 6u);
        let v31 = subgroupBroadcast(a_3, 7u);
        var bm: mat4x4<f32>;
        if (TB) {
            let c = min(col0, p.n - 1u);
            bm = transpose(mat4x4<f32>(b4[c * qk + kb], b4[min(c + 1u, p.n - 1u) * qk + kb],
                                       b4[min(c + 2u, p.n - 1u) * qk + kb], b4[min(c + 3u, p.n - 1u) * qk + kb]));
        } else {
            bm = mat4x4<f32>(b4[k0 * qn + cq], b4[(k0 + 1u) * qn + cq], b4[(k0 + 2u) * qn + cq], b4[(k0 + 3u) * qn + cq]);
        }
        if (TA) {
            let q0 = transpose(mat4x4<f32>(v0, v8, v16, v24));
            let q1 = transpose(mat4x4<f32>(v1, v9, v17, v25));
            let q2 = transpose(mat4x4<f32>(v2, v10, v18, v26));
            let q3 = transpose(mat4x4<f32>(v3, v11, v19, v27));
            let q4 = transpose(mat4x4<f32>(v4, v12, v20, v28));
            let q5 = transpose(mat4x4<f32>(v5, v13, v21, v29));
            let q6 = transpose(mat4x4<f32>(v6, v14, v22, v30));
            let q7 = transpose(mat4x4<f32>(v7, v15, v23, v31));
            acc0 += bm * q0[0];
            acc1 += bm * q0[1];
            acc2 += bm * q0[2];
            acc3 += bm * q0[3];
            acc4 += bm * q1[0];
            acc5 += bm * q1[1];
            acc6 += bm * q1[2];
            acc7 += bm * q1[3];
            acc8 += bm * q2[0];
            acc9 += bm * q2[1];
            acc10 += bm * q2[2];
            acc11 += bm * q2[3];
            acc12 += bm * q3[0];
            acc13 += bm * q3[1];
            acc14 += bm * q3[2];
            acc15 += bm * q3[3];
            acc16 += bm * q4[0];
            acc17 += bm * q4[1];
            acc18 += bm * q4[2];
            acc19 += bm * q4[3];
            acc20 += bm * q5[0];
            acc21 += bm * q5[1];
            acc22 += bm * q5[2];
            acc23 += bm * q5[3];
            acc24 += bm * q6[0];
            acc25 += bm * q6[1];
            acc26 += bm * q6[2];
            acc27 += bm * q6[3];
            acc28 += bm * q7[0];
            acc29 += bm * q7[1];
            acc30 += bm * q7[2];
            acc31 += bm * q7[3];
        } else {
            acc0 += bm * v0;
            acc1 += bm * v1;
            acc2 += bm * v2;
            acc3 += bm * v3;
            acc4 += bm * v4;
            acc5 += bm * v5;
            acc6 += bm * v6;
            acc7 += bm * v7;
            acc8 += bm * v8;
            acc9 += bm * v9;
            acc10 += bm * v10;
            acc11 += bm * v11;
            acc12 += bm * v12;
            acc13 += bm * v13;
            acc14 += bm * v14;
            acc15 += bm * v15;
            acc16 += bm * v16;
            acc17 += bm * v17;
            acc18 += bm * v18;
            acc19 += bm * v19;
            acc20 += bm * v20;
            acc21 += bm * v21;
            acc22 += bm * v22;
            acc23 += bm * v23;
            acc24 += bm * v24;
            acc25 += bm * v25;
            acc26 += bm * v26;
            acc27 += bm * v27;
            acc28 += bm * v28;
            acc29 += bm * v29;
            acc30 += bm * v30;
            acc31 += bm * v31;
        }
    }
    store_v4(row0 + 0u, col0, acc0);
    store_v4(row0 + 1u, col0, acc1);
    store_v4(row0 + 2u, col0, acc2);
    store_v4(row0 + 3u, col0, acc3);
    store_v4(row0 + 4u, col0, acc4);
    store_v4(row0 + 5u, col0, acc5);
    store_v4(row0 + 6u, col0, acc6);
    store_v4(row0 + 7u, col0, acc7);
    store_v4(row0 + 8u, col0, acc8);
    store_v4(row0 + 9u, col0, acc9);
    store_v4(row0 + 10u, col0, acc10);
    store_v4(row0 + 11u, col0, acc11);
    store_v4(row0 + 12u, col0, acc12);
    store_v4(row0 + 13u, col0, acc13);
    store_v4(row0 + 14u, col0, acc14);
    store_v4(row0 + 15u, col0, acc15);
    store_v4(row0 + 16u, col0, acc16);
    store_v4(row0 + 17u, col0, acc17);
    store_v4(row0 + 18u, col0, acc18);
    store_v4(row0 + 19u, col0, acc19);
    store_v4(row0 + 20u, col0, acc20);
    store_v4(row0 + 21u, col0, acc21);
    store_v4(row0 + 22u, col0, acc22);
    store_v4(row0 + 23u, col0, acc23);
    store_v4(row0 + 24u, col0, acc24);
    store_v4(row0 + 25u, col0, acc25);
    store_v4(row0 + 26u, col0, acc26);
    store_v4(row0 + 27u, col0, acc27);
    store_v4(row0 + 28u, col0, acc28);
    store_v4(row0 + 29u, col0, acc29);
    store_v4(row0 + 30u, col0, acc30);
    store_v4(row0 + 31u, col0, acc31);
}


fn store_v4(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m || col0 >= p.n) { return; }
    let i = (row * p.n + col0) / 4u;
    var x = v;
    if (ACCUM) { x = x + c4[i]; }
    if (BIAS) { x = x + bias4[col0 / 4u]; }
    c4[i] = vec4<f32>(act_fwd(ACT, ALPHA, x.x), act_fwd(ACT, ALPHA, x.y), act_fwd(ACT, ALPHA, x.z), act_fwd(ACT, ALPHA, x.w));
}
