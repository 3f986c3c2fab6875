// reduce.wgsl — deterministic, fixed-order reductions (WGSL has no float atomics, and a fixed
// order makes the same inputs give the same bits on the same adapter).
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

// y[C] = s0 * sum_r x[r, c] — bias gradients. One invocation per column walks the rows in order;
// neighbouring invocations read neighbouring addresses. Dispatch: (ceil(C/64), 1, 1).
@compute @workgroup_size(64)
fn col_sum(@builtin(global_invocation_id) g: vec3<u32>) {
    let c = g.x;
    if (c >= p.cols) { return; }
    var s = 0.0;
    for (var r = 0u; r < p.rows; r++) { s += x[r * p.cols + c]; }
    y[c] = p.s0 * s;
}

// y[R] = s0 * sum_c x[r, c] — per-example totals. Dispatch: (ceil(R/64), 1, 1).
@compute @workgroup_size(64)
fn row_sum(@builtin(global_invocation_id) g: vec3<u32>) {
    let r = g.x;
    if (r >= p.rows) { return; }
    var s = 0.0;
    for (var c = 0u; c < p.cols; c++) { s += x[r * p.cols + c]; }
    y[r] = p.s0 * s;
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
