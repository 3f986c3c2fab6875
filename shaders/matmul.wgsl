// matmul.wgsl — C[M,N] = act( op(A)·op(B) + bias ) (or C += op(A)·op(B) when ACCUM), with two
// optional epilogue parts that fuse a layer's backward pass into its two products:
//   GRAD_ACT != 0:  C = (op(A)·op(B)) ⊙ act'(Y), the derivative written in terms of the
//                   activation's output Y[M,N] (dX of a layer whose input came out of GRAD_ACT)
//   COLSUM:         S[M] = Σ_k op(A)[m,k] over this dispatch's K range (added to S when ACCUM):
//                   with op(A) = dYᵀ this is the bias gradient, next to dW = dYᵀ·X
//
// Shapes and layouts (row-major f32):
//   A stored [M,K] (TA=false) or [K,M] (TA=true, op(A) = Aᵀ)
//   B stored [K,N] (TB=false) or [N,K] (TB=true, op(B) = Bᵀ)
//   bias [N] (read only when BIAS), Y [M,N] (read only when GRAD_ACT != 0), C [M,N], S [M]
// Defines prepended by src/ops/matmul.rs: TA, TB, BIAS, ACCUM, COLSUM: bool; ACT, GRAD_ACT: u32;
// ALPHA, GRAD_ALPHA: f32; TILE_M, TILE_N, TILE_K: u32 and PREFETCH: bool (the tiled variant's
// tile and whether it loads the next slab during the current one's arithmetic); for the register
// variant also RM (rows per workgroup) and WG (invocations per workgroup).
//
// Bindings: 0 params | 1 A | 2 B | 3 bias | 4 Y | 5 C (read_write) | 6 S (read_write); unused
// inputs are bound to A again and an unused S to C.

// K is processed in the slice [k_begin, k_end): the host splits long K into slices (accumulating
// into C) because llvmpipe stops an invocation after 65535 loop iterations. The tiled kernels
// further divide a slice among the dispatch's z workgroups in chunks of k_chunk (split-K, below;
// k_chunk spans the slice when there is one z).
struct Params {
    m: u32,
    n: u32,
    k: u32,
    k_begin: u32,
    k_end: u32,
    k_chunk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read> y: array<f32>;
@group(0) @binding(5) var<storage, read_write> c: array<f32>;
@group(0) @binding(6) var<storage, read_write> colsum: array<f32>;

// op(A)[row, kk] and op(B)[kk, col]; callers keep indices in range.
fn a_at(row: u32, kk: u32) -> f32 {
    if (TA) { return a[kk * p.m + row]; }
    return a[row * p.k + kk];
}
fn b_at(kk: u32, col: u32) -> f32 {
    if (TB) { return b[col * p.k + kk]; }
    return b[kk * p.n + col];
}

// Split-K (TileConfig::split, the tiled kernels only): workgroup z of a dispatch with several z
// covers K in [k_begin + z*k_chunk, +k_chunk) clipped to k_end, and writes its raw partial sums to
// slot z of C, then [splits, M, N], and of S, [splits, M] (the host compiles that pass without
// ACCUM, BIAS, GRAD_ACT and ACT). `matmul_split_reduce` then adds the slots in order and applies
// the epilogue, so products with few output tiles but a long K still fill a GPU.
// (The loops take the range from split_range's return value, not from the private copies: a
// value read back from a private variable is not uniform for Tint, and the loops hold barriers.)
var<private> kz: u32; // this workgroup's split (0 without split-K, and in the other variants)
var<private> k_stop: u32; // the end of its K range, for the slab loads' bounds
fn split_range(z: u32) -> vec2<u32> {
    let kb = p.k_begin + z * p.k_chunk;
    let ke = min(kb + p.k_chunk, p.k_end);
    kz = z;
    k_stop = ke;
    return vec2<u32>(kb, ke);
}

// The epilogue shared by every variant: (accumulate onto C), bias, activation derivative,
// activation, store (into split slot kz).
fn store(row: u32, col: u32, v: f32) {
    let i = row * p.n + col;
    let o = kz * p.m * p.n + i;
    var x = v;
    if (ACCUM) { x = x + c[o]; }
    if (BIAS) { x = x + bias[col]; }
    if (GRAD_ACT != 0u) { x = x * act_grad_from_y(GRAD_ACT, GRAD_ALPHA, y[i]); }
    c[o] = act_fwd(ACT, ALPHA, x);
}

// S[row] (+)= v: one row sum of op(A) over this dispatch's K range (into split slot kz).
fn store_colsum(row: u32, v: f32) {
    let o = kz * p.m + row;
    if (ACCUM) { colsum[o] = colsum[o] + v; } else { colsum[o] = v; }
}

// The second pass of split-K: C = epilogue(Σ_z P[z]) with P [splits, M, N] bound as A, and
// S (+)= Σ_z Q[z] with Q [splits, M] bound as B (COLSUM), adding the slots in increasing z (the
// same order every run). One invocation per output. Params as the first pass (splits =
// ceil((k_end - k_begin) / k_chunk)). Dispatch: 1-D over M*N in workgroups of 256 (x, then y).
@compute @workgroup_size(256, 1, 1)
fn matmul_split_reduce(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.x + gid.y * nw.x * 256u;
    let mn = p.m * p.n;
    let splits = (p.k_end - p.k_begin + p.k_chunk - 1u) / p.k_chunk;
    if (i < mn) {
        var v = 0.0;
        for (var z = 0u; z < splits; z++) { v += a[z * mn + i]; }
        store(i / p.n, i % p.n, v);
    }
    if (COLSUM && i < p.m) {
        var v = 0.0;
        for (var z = 0u; z < splits; z++) { v += b[z * p.m + i]; }
        store_colsum(i, v);
    }
}

// ---------------------------------------------------------------------------------------------
// Variant `tiled` (discrete/integrated GPUs): a 16x16 workgroup computes a TILE_M x TILE_N tile of
// C, each invocation a (TILE_M/16) x (TILE_N/16) register block at rows ty+16i, cols tx+16j
// (strided, so shared-memory reads are conflict-free and stores coalesce). K advances in slabs of
// TILE_K staged in workgroup memory. TILE_M, TILE_N (multiples of 16) and TILE_K are defines
// (src/ops/matmul.rs, `TileConfig`): small tiles give small products enough workgroups to fill a
// GPU, large ones reuse each staged value more; `wgvae tune` measures which wins where.
// Needs TILE_M*TILE_K and TILE_N*TILE_K to be multiples of 256 (each invocation stages the same
// number of elements). Dispatch: (ceil(N/TILE_N), ceil(M/TILE_M), splits) (split-K above).
const TRM: u32 = TILE_M / 16u; // rows per invocation
const TRN: u32 = TILE_N / 16u; // columns per invocation
const STAGE_A: u32 = TILE_M * TILE_K / 256u; // elements of A each invocation stages per slab
const STAGE_B: u32 = TILE_N * TILE_K / 256u;
var<workgroup> tile_a: array<f32, TILE_M * TILE_K>; // [TILE_K][TILE_M]: tile_a[kk*TILE_M + row]
var<workgroup> tile_b: array<f32, TILE_N * TILE_K>; // [TILE_K][TILE_N]: tile_b[kk*TILE_N + col]

// One element of a slab being staged: its flat index in the [TILE_K][TILE_M] (or [TILE_K][TILE_N])
// tile and its value.
struct Staged {
    at: u32,
    v: f32,
}

// Element e (0 .. TILE_M*TILE_K) of the A slab at k0 of the tile at row0: consecutive e read
// consecutive addresses of the stored layout (coalesced); 0 past the matrix or the K slice.
fn slab_a(e: u32, row0: u32, k0: u32) -> Staged {
    var ra: u32; var ka: u32;
    if (TA) { ka = e / TILE_M; ra = e % TILE_M; } else { ra = e / TILE_K; ka = e % TILE_K; }
    let gr = row0 + ra;
    let gk = k0 + ka;
    var v = 0.0;
    if (gr < p.m && gk < k_stop) { v = a_at(gr, gk); }
    return Staged(ka * TILE_M + ra, v);
}

// The same for element e (0 .. TILE_N*TILE_K) of the B slab at k0 of the tile at col0.
fn slab_b(e: u32, col0: u32, k0: u32) -> Staged {
    var cb: u32; var kb: u32;
    if (TB) { cb = e / TILE_K; kb = e % TILE_K; } else { kb = e / TILE_N; cb = e % TILE_N; }
    let gc = col0 + cb;
    let gk = k0 + kb;
    var v = 0.0;
    if (gc < p.n && gk < k_stop) { v = b_at(gk, gc); }
    return Staged(kb * TILE_N + cb, v);
}

// What invocation t stages of the A and B slabs at k0 (its STAGE_A and STAGE_B elements; consecutive
// invocations read consecutive addresses of the stored layout, coalesced), held in registers until
// written to workgroup memory. With PREFETCH the tiled kernels call these for slab k0 + TILE_K
// before the arithmetic on slab k0, so the global loads' latency hides behind it at the cost of
// one more register set per invocation; without, just before staging, as a plain tiled kernel.
fn fetch_a(t: u32, row0: u32, k0: u32) -> array<Staged, STAGE_A> {
    var r: array<Staged, STAGE_A>;
    for (var s = 0u; s < STAGE_A; s++) { r[s] = slab_a(t + 256u * s, row0, k0); }
    return r;
}
fn fetch_b(t: u32, col0: u32, k0: u32) -> array<Staged, STAGE_B> {
    var r: array<Staged, STAGE_B>;
    for (var s = 0u; s < STAGE_B; s++) { r[s] = slab_b(t + 256u * s, col0, k0); }
    return r;
}

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * 16u + tx;
    let row0 = wid.y * TILE_M;
    let col0 = wid.x * TILE_N;
    let kr = split_range(wid.z);
    let kb = kr.x;
    let ke = kr.y;
    var acc: array<array<f32, TRN>, TRM>;
    for (var i = 0u; i < TRM; i++) { for (var j = 0u; j < TRN; j++) { acc[i][j] = 0.0; } }
    var rsum: array<f32, TRM>;
    for (var i = 0u; i < TRM; i++) { rsum[i] = 0.0; }

    var sa = fetch_a(t, row0, kb);
    var sb = fetch_b(t, col0, kb);
    for (var k0 = kb; k0 < ke; k0 += TILE_K) {
        // Each of the 256 invocations stages STAGE_A elements of A's slab and STAGE_B of B's
        // (zero past the edges).
        if (!PREFETCH && k0 != kb) {
            sa = fetch_a(t, row0, k0);
            sb = fetch_b(t, col0, k0);
        }
        for (var s = 0u; s < STAGE_A; s++) { tile_a[sa[s].at] = sa[s].v; }
        for (var s = 0u; s < STAGE_B; s++) { tile_b[sb[s].at] = sb[s].v; }
        workgroupBarrier();
        if (PREFETCH && k0 + TILE_K < ke) {
            sa = fetch_a(t, row0, k0 + TILE_K);
            sb = fetch_b(t, col0, k0 + TILE_K);
        }
        for (var kk = 0u; kk < TILE_K; kk++) {
            var ar: array<f32, TRM>;
            var br: array<f32, TRN>;
            for (var i = 0u; i < TRM; i++) { ar[i] = tile_a[kk * TILE_M + ty + 16u * i]; }
            for (var j = 0u; j < TRN; j++) { br[j] = tile_b[kk * TILE_N + tx + 16u * j]; }
            for (var i = 0u; i < TRM; i++) {
                for (var j = 0u; j < TRN; j++) { acc[i][j] = fma(ar[i], br[j], acc[i][j]); }
            }
            if (COLSUM) { for (var i = 0u; i < TRM; i++) { rsum[i] += ar[i]; } }
        }
        workgroupBarrier();
    }
    // Row sums: the first column block's tx == 0 invocations own rows ty + 16i.
    if (COLSUM && wid.x == 0u && tx == 0u) {
        for (var i = 0u; i < TRM; i++) {
            let row = row0 + ty + 16u * i;
            if (row < p.m) { store_colsum(row, rsum[i]); }
        }
    }
    for (var i = 0u; i < TRM; i++) {
        let row = row0 + ty + 16u * i;
        if (row >= p.m) { continue; }
        for (var j = 0u; j < TRN; j++) {
            let col = col0 + tx + 16u * j;
            if (col < p.n) { store(row, col, acc[i][j]); }
        }
    }
}

// The tiled variant with blocked register tiles, `matmul_tiled_blocked` (TileConfig::blocked):
// the same workgroup, tile and staging, but each invocation owns (TILE_M/64) x (TILE_N/64) blocks of
// 4x4 outputs, at rows 64g + 4ty .. +3 and columns 64h + 4tx .. +3, so that it reads its operands
// from workgroup memory as vec4s (one 16-byte read per 4 values; consecutive tx read consecutive
// vec4s, conflict-free) instead of one f32 at a time. Needs TILE_M and TILE_N multiples of 64.
// Dispatch as `matmul_tiled`.
const BQM: u32 = TILE_M / 4u; // vec4s of rows per staged k
const BQN: u32 = TILE_N / 4u;
// 4-row and 4-column blocks per invocation (rounded up so that modules compiled for the other
// tiles, which never run this entry, still have arrays of at least one element).
const BGM: u32 = (TILE_M + 63u) / 64u;
const BGN: u32 = (TILE_N + 63u) / 64u;
var<workgroup> tile_a4: array<vec4<f32>, TILE_M * TILE_K / 4u>; // [TILE_K][TILE_M/4]
var<workgroup> tile_b4: array<vec4<f32>, TILE_N * TILE_K / 4u>; // [TILE_K][TILE_N/4]

// The arithmetic on one staged slab, shared by both blocked entry points: acc[4g + r][h] holds row
// 64g + 4ty + r, columns 64h + 4tx .. +3; rsum[g] the row sums of op(A) for rows 64g + 4ty .. +3.
fn blocked_slab(tx: u32, ty: u32, acc: ptr<function, array<array<vec4<f32>, BGN>, TRM>>,
                rsum: ptr<function, array<vec4<f32>, BGM>>) {
    for (var kk = 0u; kk < TILE_K; kk++) {
        var av: array<vec4<f32>, BGM>;
        var bv: array<vec4<f32>, BGN>;
        for (var g = 0u; g < BGM; g++) { av[g] = tile_a4[kk * BQM + 16u * g + ty]; }
        for (var h = 0u; h < BGN; h++) { bv[h] = tile_b4[kk * BQN + 16u * h + tx]; }
        for (var g = 0u; g < BGM; g++) {
            for (var r = 0u; r < 4u; r++) {
                for (var h = 0u; h < BGN; h++) {
                    (*acc)[4u * g + r][h] = fma(vec4<f32>(av[g][r]), bv[h], (*acc)[4u * g + r][h]);
                }
            }
        }
        if (COLSUM) { for (var g = 0u; g < BGM; g++) { (*rsum)[g] += av[g]; } }
    }
}

// The epilogue of both blocked entry points. Row sums: the first column block's tx == 0
// invocations own rows 64g + 4ty + r.
fn blocked_store(tx: u32, ty: u32, row0: u32, col0: u32, first_col_block: bool,
                 acc: array<array<vec4<f32>, BGN>, TRM>, rsum: array<vec4<f32>, BGM>) {
    if (COLSUM && first_col_block && tx == 0u) {
        for (var g = 0u; g < BGM; g++) {
            for (var r = 0u; r < 4u; r++) {
                let row = row0 + 64u * g + 4u * ty + r;
                if (row < p.m) { store_colsum(row, rsum[g][r]); }
            }
        }
    }
    for (var i = 0u; i < TRM; i++) {
        let row = row0 + 64u * (i / 4u) + 4u * ty + i % 4u;
        if (row >= p.m) { continue; }
        for (var h = 0u; h < BGN; h++) {
            for (var c = 0u; c < 4u; c++) {
                let col = col0 + 64u * h + 4u * tx + c;
                if (col < p.n) { store(row, col, acc[i][h][c]); }
            }
        }
    }
}

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled_blocked(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * 16u + tx;
    let row0 = wid.y * TILE_M;
    let col0 = wid.x * TILE_N;
    let kr = split_range(wid.z);
    let kb = kr.x;
    let ke = kr.y;
    // Function-scope variables start at zero.
    var acc: array<array<vec4<f32>, BGN>, TRM>;
    var rsum: array<vec4<f32>, BGM>;
    var sa = fetch_a(t, row0, kb);
    var sb = fetch_b(t, col0, kb);
    for (var k0 = kb; k0 < ke; k0 += TILE_K) {
        // Staging (and PREFETCH) as in `matmul_tiled`, written one component at a time into the
        // vec4 tiles (flat index / 4 and % 4: TILE_M and TILE_N are multiples of 4).
        if (!PREFETCH && k0 != kb) {
            sa = fetch_a(t, row0, k0);
            sb = fetch_b(t, col0, k0);
        }
        for (var s = 0u; s < STAGE_A; s++) { tile_a4[sa[s].at / 4u][sa[s].at % 4u] = sa[s].v; }
        for (var s = 0u; s < STAGE_B; s++) { tile_b4[sb[s].at / 4u][sb[s].at % 4u] = sb[s].v; }
        workgroupBarrier();
        if (PREFETCH && k0 + TILE_K < ke) {
            sa = fetch_a(t, row0, k0 + TILE_K);
            sb = fetch_b(t, col0, k0 + TILE_K);
        }
        blocked_slab(tx, ty, &acc, &rsum);
        workgroupBarrier();
    }
    blocked_store(tx, ty, row0, col0, wid.x == 0u, acc, rsum);
}

// The blocked kernel with slabs staged from global memory as vec4s, `matmul_tiled_blocked4`
// (TileConfig::vec4): a quarter of the load instructions and index arithmetic. The host runs it
// only when every operand's contiguous dimension is a multiple of 4 (`vec4_aligned`: K when A is
// [M,K] or B is [N,K], M when A is [K,M], N when B is [K,N]) and otherwise runs
// `matmul_tiled_blocked` with the same tile. Each invocation stages SA4 vec4s of A and SB4 of B
// (TILE_M*TILE_K and TILE_N*TILE_K multiples of 1024). Reads A and B through the vec4 views a4 and
// b4 (declared with the `register` variant below).
const SA4: u32 = (TILE_M * TILE_K + 1023u) / 1024u;
const SB4: u32 = (TILE_N * TILE_K + 1023u) / 1024u;
const KQ: u32 = (TILE_K + 3u) / 4u; // vec4s along K in a slab's row (K-contiguous layouts)

// Vec4 number e4 of the A slab at k0 of the tile at row0; consecutive e4 read consecutive vec4s of
// the stored layout. A stored [K,M]: rows 4(e4 % BQM) .. +3 of k e4 / BQM; stored [M,K]: k
// 4(e4 % KQ) .. +3 of row e4 / KQ. Zero past the matrix or the K slice (a vec4 is wholly in or out:
// the contiguous dimension, k0 and the slice end are multiples of 4).
fn slab_a4(e4: u32, row0: u32, k0: u32) -> vec4<f32> {
    if (TA) {
        let gk = k0 + e4 / BQM;
        let gr = row0 + 4u * (e4 % BQM);
        if (gk < k_stop && gr < p.m) { return a4[gk * (p.m / 4u) + gr / 4u]; }
    } else {
        let gr = row0 + e4 / KQ;
        let gk = k0 + 4u * (e4 % KQ);
        if (gr < p.m && gk < k_stop) { return a4[gr * (p.k / 4u) + gk / 4u]; }
    }
    return vec4<f32>(0.0);
}

// The same for the B slab at k0 of the tile at col0: B stored [K,N]: columns 4(e4 % BQN) .. +3
// of k e4 / BQN; stored [N,K]: k 4(e4 % KQ) .. +3 of column e4 / KQ.
fn slab_b4(e4: u32, col0: u32, k0: u32) -> vec4<f32> {
    if (TB) {
        let gc = col0 + e4 / KQ;
        let gk = k0 + 4u * (e4 % KQ);
        if (gc < p.n && gk < k_stop) { return b4[gc * (p.k / 4u) + gk / 4u]; }
    } else {
        let gk = k0 + e4 / BQN;
        let gc = col0 + 4u * (e4 % BQN);
        if (gk < k_stop && gc < p.n) { return b4[gk * (p.n / 4u) + gc / 4u]; }
    }
    return vec4<f32>(0.0);
}

fn fetch_a4(t: u32, row0: u32, k0: u32) -> array<vec4<f32>, SA4> {
    var r: array<vec4<f32>, SA4>;
    for (var s = 0u; s < SA4; s++) { r[s] = slab_a4(t + 256u * s, row0, k0); }
    return r;
}
fn fetch_b4(t: u32, col0: u32, k0: u32) -> array<vec4<f32>, SB4> {
    var r: array<vec4<f32>, SB4>;
    for (var s = 0u; s < SB4; s++) { r[s] = slab_b4(t + 256u * s, col0, k0); }
    return r;
}

// Where vec4 e4 of a slab goes in tile_a4 / tile_b4 ([TILE_K][TILE_M/4], [TILE_K][TILE_N/4]): when
// the stored layout is contiguous along rows (A [K,M]) or columns (B [K,N]) it lands whole at
// e4; when contiguous along K, its four values go to four consecutive k of one row or column.
fn stash_a4(e4: u32, v: vec4<f32>) {
    if (TA) { tile_a4[e4] = v; return; }
    let r = e4 / KQ;
    let k = 4u * (e4 % KQ);
    for (var j = 0u; j < 4u; j++) { tile_a4[(k + j) * BQM + r / 4u][r % 4u] = v[j]; }
}
fn stash_b4(e4: u32, v: vec4<f32>) {
    if (!TB) { tile_b4[e4] = v; return; }
    let c = e4 / KQ;
    let k = 4u * (e4 % KQ);
    for (var j = 0u; j < 4u; j++) { tile_b4[(k + j) * BQN + c / 4u][c % 4u] = v[j]; }
}

@compute @workgroup_size(16, 16, 1)
fn matmul_tiled_blocked4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let t = ty * 16u + tx;
    let row0 = wid.y * TILE_M;
    let col0 = wid.x * TILE_N;
    let kr = split_range(wid.z);
    let kb = kr.x;
    let ke = kr.y;
    var acc: array<array<vec4<f32>, BGN>, TRM>;
    var rsum: array<vec4<f32>, BGM>;
    var sa = fetch_a4(t, row0, kb);
    var sb = fetch_b4(t, col0, kb);
    for (var k0 = kb; k0 < ke; k0 += TILE_K) {
        if (!PREFETCH && k0 != kb) {
            sa = fetch_a4(t, row0, k0);
            sb = fetch_b4(t, col0, k0);
        }
        for (var s = 0u; s < SA4; s++) { stash_a4(t + 256u * s, sa[s]); }
        for (var s = 0u; s < SB4; s++) { stash_b4(t + 256u * s, sb[s]); }
        workgroupBarrier();
        if (PREFETCH && k0 + TILE_K < ke) {
            sa = fetch_a4(t, row0, k0 + TILE_K);
            sb = fetch_b4(t, col0, k0 + TILE_K);
        }
        blocked_slab(tx, ty, &acc, &rsum);
        workgroupBarrier();
    }
    blocked_store(tx, ty, row0, col0, wid.x == 0u, acc, rsum);
}

// ---------------------------------------------------------------------------------------------
// Variant `register` (CPU adapters): no workgroup memory, no barriers. Invocation x of workgroup
// (gx, gy) owns 4 consecutive columns 4*(gx*WG + x) .. +3 and the RM rows gy*RM .. +RM-1, kept in
// RM vec4 accumulators. The row index depends only on the workgroup id, so A's loads are
// workgroup-uniform: a CPU adapter's SIMD compiler turns them into one scalar load + broadcast
// instead of a per-lane gather; only B is loaded per lane. Out-of-range rows/columns load clamped
// (in-bounds) addresses and are never stored, which keeps the inner loop branch-free.
// Dispatch: (ceil(N / (4*WG)), ceil(M / RM), 1).
@compute @workgroup_size(WG, 1, 1)
fn matmul_register(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col0 = 4u * (wid.x * WG + lid.x);
    let row0 = wid.y * RM;
    var cols: vec4<u32>;
    for (var j = 0u; j < 4u; j++) { cols[j] = min(col0 + j, p.n - 1u); }
    var rows: array<u32, RM>;
    for (var i = 0u; i < RM; i++) { rows[i] = min(row0 + i, p.m - 1u); }
    var acc: array<vec4<f32>, RM>;
    for (var i = 0u; i < RM; i++) { acc[i] = vec4<f32>(0.0); }

    var rsum: array<f32, RM>;
    for (var i = 0u; i < RM; i++) { rsum[i] = 0.0; }
    for (var kk = p.k_begin; kk < p.k_end; kk++) {
        let bv = vec4<f32>(b_at(kk, cols.x), b_at(kk, cols.y), b_at(kk, cols.z), b_at(kk, cols.w));
        for (var i = 0u; i < RM; i++) {
            let av = a_at(rows[i], kk);
            acc[i] = fma(vec4<f32>(av), bv, acc[i]);
            if (COLSUM) { rsum[i] += av; }
        }
    }
    if (COLSUM && wid.x == 0u && lid.x == 0u) {
        for (var i = 0u; i < RM; i++) {
            if (row0 + i < p.m) { store_colsum(row0 + i, rsum[i]); }
        }
    }
    for (var i = 0u; i < RM; i++) {
        let row = row0 + i;
        if (row >= p.m) { break; }
        for (var j = 0u; j < 4u; j++) {
            if (col0 + j < p.n) { store(row, col0 + j, acc[i][j]); }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Variant `register`, aligned path (K % 4 == 0, M % 4 == 0 when TA, N % 4 == 0 when !TB; the host
// checks). Mesa's llvmpipe (through Mesa 22 at least) turns EVERY storage-buffer load into a loop
// over the SIMD lanes, however uniform the address, so the cost is per load instruction, not per
// float: a vec4 load costs about what a scalar one does. This path therefore moves operands only
// as vec4s: per step of 4 along K an invocation loads RM/4 blocks of A and CN/4 blocks of B, each
// block a 4x4 sub-matrix in 4 vec4 loads, and multiplies them as mat4x4s (64 FMAs per block pair).
// Invocation x of workgroup (gx, gy) owns rows gy*RM .. +RM-1 and columns (gx*WG + x)*CN .. +CN-1.
// Out-of-range blocks load clamped, in-bounds addresses and are not stored.
// Dispatch: (ceil(N / (CN*WG)), ceil(M / RM), 1).
@group(0) @binding(1) var<storage, read> a4: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> b4: array<vec4<f32>>;

// The 4x4 block of op(A) at rows r0.., k0..: column j holds op(A)[r0 + i, k0 + j] over i.
fn a_block(r0: u32, k0: u32) -> mat4x4<f32> {
    if (TA) {
        // A stored [K, M]: rows r0..r0+3 of one k are contiguous (M % 4 == 0, r0 % 4 == 0).
        let rb = min(r0, p.m - 4u) / 4u;
        let q = p.m / 4u;
        return mat4x4<f32>(a4[k0 * q + rb], a4[(k0 + 1u) * q + rb], a4[(k0 + 2u) * q + rb], a4[(k0 + 3u) * q + rb]);
    }
    // A stored [M, K]: k0..k0+3 of one row are contiguous (K % 4 == 0).
    let q = p.k / 4u;
    let kb = k0 / 4u;
    let rows = mat4x4<f32>(
        a4[min(r0, p.m - 1u) * q + kb], a4[min(r0 + 1u, p.m - 1u) * q + kb],
        a4[min(r0 + 2u, p.m - 1u) * q + kb], a4[min(r0 + 3u, p.m - 1u) * q + kb]);
    return transpose(rows);
}

// The 4x4 block of op(B) at k0.., cols c0..: column c holds op(B)[k0 + j, c0 + c] over j.
fn b_block(k0: u32, c0: u32) -> mat4x4<f32> {
    if (TB) {
        // B stored [N, K]: k0..k0+3 of one column are contiguous (K % 4 == 0).
        let q = p.k / 4u;
        let kb = k0 / 4u;
        return mat4x4<f32>(
            b4[min(c0, p.n - 1u) * q + kb], b4[min(c0 + 1u, p.n - 1u) * q + kb],
            b4[min(c0 + 2u, p.n - 1u) * q + kb], b4[min(c0 + 3u, p.n - 1u) * q + kb]);
    }
    // B stored [K, N]: c0..c0+3 of one k are contiguous (N % 4 == 0, c0 % 4 == 0).
    let cb = min(c0, p.n - 4u) / 4u;
    let q = p.n / 4u;
    let ks = mat4x4<f32>(b4[k0 * q + cb], b4[(k0 + 1u) * q + cb], b4[(k0 + 2u) * q + cb], b4[(k0 + 3u) * q + cb]);
    return transpose(ks);
}

@compute @workgroup_size(WG, 1, 1)
fn matmul_register4(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let col0 = (wid.x * WG + lid.x) * CN;
    let row0 = wid.y * RM;
    // acc[i * (CN/4) + j]: block of rows row0+4i.., columns col0+4j.. (column c = output column).
    var acc: array<mat4x4<f32>, (RM / 4u) * (CN / 4u)>;
    for (var t = 0u; t < (RM / 4u) * (CN / 4u); t++) { acc[t] = mat4x4<f32>(); }
    var rsum: array<vec4<f32>, RM / 4u>;
    for (var i = 0u; i < RM / 4u; i++) { rsum[i] = vec4<f32>(0.0); }
    for (var k0 = p.k_begin; k0 < p.k_end; k0 += 4u) {
        var bb: array<mat4x4<f32>, CN / 4u>;
        for (var j = 0u; j < CN / 4u; j++) { bb[j] = b_block(k0, col0 + 4u * j); }
        for (var i = 0u; i < RM / 4u; i++) {
            let ab = a_block(row0 + 4u * i, k0);
            for (var j = 0u; j < CN / 4u; j++) {
                acc[i * (CN / 4u) + j] += ab * bb[j];
            }
            // ab's column j holds op(A)[rows, k0 + j]: their sum is the rows' partial sums.
            if (COLSUM) { rsum[i] += ab[0] + ab[1] + ab[2] + ab[3]; }
        }
    }
    if (COLSUM && wid.x == 0u && lid.x == 0u) {
        for (var i = 0u; i < RM; i++) {
            if (row0 + i < p.m) { store_colsum(row0 + i, rsum[i / 4u][i % 4u]); }
        }
    }
    for (var i = 0u; i < RM; i++) {
        let row = row0 + i;
        if (row >= p.m) { break; }
        for (var j = 0u; j < CN; j++) {
            let col = col0 + j;
            if (col < p.n) { store(row, col, acc[(i / 4u) * (CN / 4u) + j / 4u][j % 4u][i % 4u]); }
        }
    }
}
