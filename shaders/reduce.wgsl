// reduce.wgsl — deterministic, fixed-order reductions (WGSL has no float atomics, and a fixed
// order makes the same inputs give the same bits on the same adapter).
//
// Mesa's llvmpipe stops an invocation's loops after 65535 iterations in total (a hang guard), so no
// invocation here loops more than 4096 + 16 times; long rows and columns take several levels.
//
// Parameter block: rows, cols (n = rows*cols for sum_partial: rows = n, cols = chunk), s0 scale.

struct Params {
    rows: u32,
    cols: u32,
    s0: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;

// Column sums, one level: partial[j, c] = s0 * sum of x[r, c] over rows r in chunk j (chunk =
// SPAN rows). Invocation (c, j) walks its rows in order; neighbouring invocations read neighbouring
// addresses. The host repeats levels on the [chunks, C] partials until one row is left (bias
// gradients at batch <= 4096 take one level). Dispatch: (ceil(C/64), chunks, 1).
const SPAN: u32 = 4096u;

@compute @workgroup_size(64)
fn col_sum(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    if (c >= p.cols) { return; }
    let r0 = g.y * SPAN;
    let r1 = min(r0 + SPAN, p.rows);
    var s = 0.0;
    for (var r = r0; r < r1; r++) { s += x[r * p.cols + c]; }
    y[g.y * p.cols + c] = p.s0 * s;
}

// Row sums, one level: partial[r, j] = s0 * sum of x[r, c] over columns c in chunk j (SPAN columns).
// Dispatch: (ceil(R/64), chunks, 1); output [R, chunks].
@compute @workgroup_size(64)
fn row_sum(@builtin(global_invocation_id) g: vec3<u32>) {
    let r = g.x;
    if (r >= p.rows) { return; }
    let c0 = g.y * SPAN;
    let c1 = min(c0 + SPAN, p.cols);
    let chunks = (p.cols + SPAN - 1u) / SPAN;
    var s = 0.0;
    for (var c = c0; c < c1; c++) { s += x[r * p.cols + c]; }
    y[r * chunks + g.y] = p.s0 * s;
}

// One level of a full sum: workgroup w reduces x[w*chunk .. (w+1)*chunk) (chunk = 256*ITEMS) to
// y[w] = s0 * partial. Each invocation first adds its ITEMS elements (stride 256, in order), then a
// fixed-shape tree in workgroup memory. The host repeats levels until one value is left.
// Dispatch: (ceil(n/chunk), 1, 1).
const ITEMS: u32 = 16u;
var<workgroup> part: array<f32, 256>;

@compute @workgroup_size(256)
fn sum_partial(@builtin(local_invocation_id) lid: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let base = wid.x * p.cols;
    var s = 0.0;
    for (var j = 0u; j < ITEMS; j++) {
        let i = base + j * 256u + lid.x;
        if (i < p.rows) { s += x[i]; }
    }
    part[lid.x] = s;
    workgroupBarrier();
    for (var w = 128u; w > 0u; w = w >> 1u) {
        if (lid.x < w) { part[lid.x] = part[lid.x] + part[lid.x + w]; }
        workgroupBarrier();
    }
    if (lid.x == 0u) { y[wid.x] = p.s0 * part[0]; }
}
