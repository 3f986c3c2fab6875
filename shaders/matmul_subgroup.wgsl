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
// Requires K % 4 == 0, M % 4 == 0 when TA, N % 4 == 0 when !TB (the host checks; other shapes use
// `matmul_register`). Defines: TA, TB, BIAS, ACCUM, ACT, ALPHA, WG (a multiple of 8).
// Invocation x of workgroup (gx, gy) owns rows gy*16 .. +15 and columns (gx*WG + x)*4 .. +3.
// Dispatch: (ceil(N / (4*WG)), ceil(M / 16), 1).
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
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> c: array<f32>;

fn store(row: u32, col: u32, v: f32) {
    let i = row * p.n + col;
    var x = v;
    if (ACCUM) { x = x + c[i]; }
    if (BIAS) { x = x + bias[col]; }
    c[i] = act_fwd(ACT, ALPHA, x);
}

// One K step of 4 for a subgroup: every lane adds op(A)[16 rows, k0..k0+3] · op(B)[k0..k0+3, its 4
// columns] into its 16 row accumulators. Straight-line code only: llvmpipe keeps indexed local
// arrays in memory behind per-lane loops, so the block is written out by hand.
@compute @workgroup_size(WG, 1, 1)
fn matmul_subgroup(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32) {
    let col0 = (wid.x * WG + lid.x) * 4u;
    let row0 = wid.y * 16u;
    let qk = p.k / 4u;
    let qm = p.m / 4u;
    let qn = p.n / 4u;
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0); var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0);
    var acc8 = vec4<f32>(0.0); var acc9 = vec4<f32>(0.0); var acc10 = vec4<f32>(0.0); var acc11 = vec4<f32>(0.0);
    var acc12 = vec4<f32>(0.0); var acc13 = vec4<f32>(0.0); var acc14 = vec4<f32>(0.0); var acc15 = vec4<f32>(0.0);
    // Clamped (in-bounds) addresses; rows/columns past the edge are computed and never stored.
    let row_lo = min(row0 + lane, p.m - 1u);
    let row_hi = min(row0 + 8u + lane, p.m - 1u);
    let cq = min(col0 / 4u, qn - 1u);
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += 4u) {
        let kb = k0 / 4u;
        // The A block (16 rows x 4 k) is 16 vec4s; lane l loads vec4s l and l + 8.
        // !TA: vec4 v = k0..k0+3 of row v. TA: vec4 v = rows 4(v%4)..+3 of k0 + v/4.
        var a_lo: vec4<f32>;
        var a_hi: vec4<f32>;
        if (TA) {
            a_lo = a4[(k0 + lane / 4u) * qm + min(row0 / 4u + lane % 4u, qm - 1u)];
            a_hi = a4[(k0 + 2u + lane / 4u) * qm + min(row0 / 4u + lane % 4u, qm - 1u)];
        } else {
            a_lo = a4[row_lo * qk + kb];
            a_hi = a4[row_hi * qk + kb];
        }
        let v0 = subgroupBroadcast(a_lo, 0u);
        let v1 = subgroupBroadcast(a_lo, 1u);
        let v2 = subgroupBroadcast(a_lo, 2u);
        let v3 = subgroupBroadcast(a_lo, 3u);
        let v4 = subgroupBroadcast(a_lo, 4u);
        let v5 = subgroupBroadcast(a_lo, 5u);
        let v6 = subgroupBroadcast(a_lo, 6u);
        let v7 = subgroupBroadcast(a_lo, 7u);
        let v8 = subgroupBroadcast(a_hi, 0u);
        let v9 = subgroupBroadcast(a_hi, 1u);
        let v10 = subgroupBroadcast(a_hi, 2u);
        let v11 = subgroupBroadcast(a_hi, 3u);
        let v12 = subgroupBroadcast(a_hi, 4u);
        let v13 = subgroupBroadcast(a_hi, 5u);
        let v14 = subgroupBroadcast(a_hi, 6u);
        let v15 = subgroupBroadcast(a_hi, 7u);
        // bm: column j = op(B)[k0 + j, this lane's 4 columns].
        var bm: mat4x4<f32>;
        if (TB) {
            let c = min(col0, p.n - 1u);
            bm = transpose(mat4x4<f32>(b4[c * qk + kb], b4[min(c + 1u, p.n - 1u) * qk + kb],
                                       b4[min(c + 2u, p.n - 1u) * qk + kb], b4[min(c + 3u, p.n - 1u) * qk + kb]));
        } else {
            bm = mat4x4<f32>(b4[k0 * qn + cq], b4[(k0 + 1u) * qn + cq], b4[(k0 + 2u) * qn + cq], b4[(k0 + 3u) * qn + cq]);
        }
        // Row r of the block as a vec4 over k: !TA: v_r; TA: regroup (v_v holds 4 rows of one k).
        if (TA) {
            let q0 = transpose(mat4x4<f32>(v0, v4, v8, v12));
            let q1 = transpose(mat4x4<f32>(v1, v5, v9, v13));
            let q2 = transpose(mat4x4<f32>(v2, v6, v10, v14));
            let q3 = transpose(mat4x4<f32>(v3, v7, v11, v15));
            acc0 += bm * q0[0]; acc1 += bm * q0[1]; acc2 += bm * q0[2]; acc3 += bm * q0[3];
            acc4 += bm * q1[0]; acc5 += bm * q1[1]; acc6 += bm * q1[2]; acc7 += bm * q1[3];
            acc8 += bm * q2[0]; acc9 += bm * q2[1]; acc10 += bm * q2[2]; acc11 += bm * q2[3];
            acc12 += bm * q3[0]; acc13 += bm * q3[1]; acc14 += bm * q3[2]; acc15 += bm * q3[3];
        } else {
            acc0 += bm * v0; acc1 += bm * v1; acc2 += bm * v2; acc3 += bm * v3;
            acc4 += bm * v4; acc5 += bm * v5; acc6 += bm * v6; acc7 += bm * v7;
            acc8 += bm * v8; acc9 += bm * v9; acc10 += bm * v10; acc11 += bm * v11;
            acc12 += bm * v12; acc13 += bm * v13; acc14 += bm * v14; acc15 += bm * v15;
        }
    }
    store4(row0, col0, acc0); store4(row0 + 1u, col0, acc1); store4(row0 + 2u, col0, acc2); store4(row0 + 3u, col0, acc3);
    store4(row0 + 4u, col0, acc4); store4(row0 + 5u, col0, acc5); store4(row0 + 6u, col0, acc6); store4(row0 + 7u, col0, acc7);
    store4(row0 + 8u, col0, acc8); store4(row0 + 9u, col0, acc9); store4(row0 + 10u, col0, acc10); store4(row0 + 11u, col0, acc11);
    store4(row0 + 12u, col0, acc12); store4(row0 + 13u, col0, acc13); store4(row0 + 14u, col0, acc14); store4(row0 + 15u, col0, acc15);
}

fn store4(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (col0 + j < p.n) { store(row, col0 + j, v[j]); }
    }
}
