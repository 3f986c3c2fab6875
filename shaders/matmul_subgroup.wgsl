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
// Invocation x of workgroup (gx, gy) owns rows gy*8 .. +7 and columns (gx*WG + x)*4 .. +3.
// Dispatch: (ceil(N / (4*WG)), ceil(M / 8), 1).
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

// One K step of 4 for a subgroup: every lane adds op(A)[rows, k0..k0+3] · op(B)[k0..k0+3, its 4
// columns] into its 8 row accumulators. Straight-line code only: llvmpipe keeps indexed local
// arrays in memory behind per-lane loops, so the block is written out by hand.
@compute @workgroup_size(WG, 1, 1)
fn matmul_subgroup(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>,
                   @builtin(subgroup_invocation_id) lane: u32) {
    let col0 = (wid.x * WG + lid.x) * 4u;
    let row0 = wid.y * 8u;
    let qk = p.k / 4u;
    let qm = p.m / 4u;
    let qn = p.n / 4u;
    var acc0 = vec4<f32>(0.0); var acc1 = vec4<f32>(0.0); var acc2 = vec4<f32>(0.0); var acc3 = vec4<f32>(0.0);
    var acc4 = vec4<f32>(0.0); var acc5 = vec4<f32>(0.0); var acc6 = vec4<f32>(0.0); var acc7 = vec4<f32>(0.0);
    // Clamped (in-bounds) addresses; rows/columns past the edge are computed and never stored.
    let my_row = min(row0 + lane, p.m - 1u);
    let cq = min(col0 / 4u, qn - 1u);
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += 4u) {
        let kb = k0 / 4u;
        // The A block (8 rows x 4 k) is 8 vec4s; lane l loads vec4 l.
        // !TA: vec4 l = k0..k0+3 of row l. TA: vec4 l = rows 4(l%2).. of k0 + l/2.
        var av: vec4<f32>;
        if (TA) {
            av = a4[(k0 + lane / 2u) * qm + min(row0 / 4u + lane % 2u, qm - 1u)];
        } else {
            av = a4[my_row * qk + kb];
        }
        let v0 = subgroupBroadcast(av, 0u);
        let v1 = subgroupBroadcast(av, 1u);
        let v2 = subgroupBroadcast(av, 2u);
        let v3 = subgroupBroadcast(av, 3u);
        let v4 = subgroupBroadcast(av, 4u);
        let v5 = subgroupBroadcast(av, 5u);
        let v6 = subgroupBroadcast(av, 6u);
        let v7 = subgroupBroadcast(av, 7u);
        // bm: column j = op(B)[k0 + j, this lane's 4 columns].
        var bm: mat4x4<f32>;
        if (TB) {
            let c = min(col0, p.n - 1u);
            bm = transpose(mat4x4<f32>(b4[c * qk + kb], b4[min(c + 1u, p.n - 1u) * qk + kb],
                                       b4[min(c + 2u, p.n - 1u) * qk + kb], b4[min(c + 3u, p.n - 1u) * qk + kb]));
        } else {
            bm = mat4x4<f32>(b4[k0 * qn + cq], b4[(k0 + 1u) * qn + cq], b4[(k0 + 2u) * qn + cq], b4[(k0 + 3u) * qn + cq]);
        }
        // Row r of the block as a vec4 over k: !TA: v_r; TA: regroup (v_l holds 4 rows of one k).
        if (TA) {
            let lo = transpose(mat4x4<f32>(v0, v2, v4, v6));
            let up = transpose(mat4x4<f32>(v1, v3, v5, v7));
            acc0 += bm * lo[0]; acc1 += bm * lo[1]; acc2 += bm * lo[2]; acc3 += bm * lo[3];
            acc4 += bm * up[0]; acc5 += bm * up[1]; acc6 += bm * up[2]; acc7 += bm * up[3];
        } else {
            acc0 += bm * v0; acc1 += bm * v1; acc2 += bm * v2; acc3 += bm * v3;
            acc4 += bm * v4; acc5 += bm * v5; acc6 += bm * v6; acc7 += bm * v7;
        }
    }
    store4(row0, col0, acc0); store4(row0 + 1u, col0, acc1); store4(row0 + 2u, col0, acc2); store4(row0 + 3u, col0, acc3);
    store4(row0 + 4u, col0, acc4); store4(row0 + 5u, col0, acc5); store4(row0 + 6u, col0, acc6); store4(row0 + 7u, col0, acc7);
}

fn store4(row: u32, col0: u32, v: vec4<f32>) {
    if (row >= p.m) { return; }
    for (var j = 0u; j < 4u; j++) {
        if (col0 + j < p.n) { store(row, col0 + j, v[j]); }
    }
}
