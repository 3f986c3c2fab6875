// data.wgsl — builds a training batch on the GPU from the dataset uploaded once in compact form.
//
// The dataset is N images of D u8 pixels packed four to a u32 (byte j of the dataset is bits
// 8*(j%4).. of word j/4), the order is a u32 permutation of the image indices uploaded once per
// epoch, and batch b takes images order[offset .. offset+B). Optional dynamic binarization draws
// x ~ Bernoulli(pixel/255) with the Philox stream of random.wgsl (counter (i, step, stream, 0)).
//
// A dataset larger than one storage binding is split into shards of whole images; `data` is then
// one shard, holding images first .. first+count (packed from its own byte 0), and a gather writes
// only the batch rows whose image lies in it: one dispatch per shard fills the batch.
//
// x[B,D] f32 in [0, 1]. Parameter block: n = B*D, d = D, offset, binarize (0/1), seed_lo,
// seed_hi, step, stream, first, count. Bindings: 0 params | 1 data (u32) | 2 order (u32) | 3 x
// Dispatch: 1-D grid over n (flat_index), workgroup 256.

struct Params {
    n: u32,
    d: u32,
    offset: u32,
    binarize: u32,
    seed_lo: u32,
    seed_hi: u32,
    step: u32,
    stream: u32,
    first: u32,
    count: u32,
}

// The image of batch row `row` as an index into this shard, or count when it lies elsewhere.
fn shard_image(row: u32) -> u32 {
    let img = order[p.offset + row];
    return select(p.count, img - p.first, img >= p.first && img - p.first < p.count);
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> data: array<u32>;
@group(0) @binding(2) var<storage, read> order: array<u32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let row = i / p.d;
    let col = i % p.d;
    let img = shard_image(row);
    if (img == p.count) { return; }
    let byte = img * p.d + col;
    let v = f32((data[byte / 4u] >> (8u * (byte % 4u))) & 0xffu) / 255.0;
    if (p.binarize == 1u) {
        let u = u01(philox(vec4<u32>(i, p.step, p.stream, 0u), vec2<u32>(p.seed_lo, p.seed_hi)).x);
        x[i] = select(0.0, 1.0, u < v);
    } else {
        x[i] = v;
    }
}

// The same batch four pixels per invocation, for D % 4 == 0 (every image row then starts on a word
// boundary): one word of the dataset and one vec4 store per invocation instead of four of each.
// On CPU adapters every storage access costs a loop over the SIMD lanes per component, so this
// halves the gather's cost. n = B*D/4; binarization draws counter 4*(i) + c as `gather` does.
// The vec4 is stored as a Word4 (words_f32.wgsl / words_u64.wgsl, prepended by the host).
@group(0) @binding(3) var<storage, read_write> x4: array<Word4>;

@compute @workgroup_size(256)
fn gather4(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let q = p.d / 4u;
    let row = i / q;
    let img = shard_image(row);
    if (img == p.count) { return; }
    x4[i] = word(pixels4(data[img * q + i % q], 4u * i));
}

// The same batch eight pixels per invocation, for D % 8 == 0 (every 28x28 or 64x64 image): two
// dataset words read as one vec2<u32> and the eight values stored as one Word8 (32 bytes; one
// access of four u64 with u64 words, where gather4's two invocations make four accesses). Chosen
// with u64 words (CPU adapters). n = B*D/8; binarization draws counter 8*i + c, the same counter
// gather and gather4 use for that pixel, so all three give the same batch.
@group(0) @binding(1) var<storage, read> data2: array<vec2<u32>>;
@group(0) @binding(3) var<storage, read_write> x8: array<Word8>;

// The four pixels of dataset word w as values in [0, 1], or (binarize) Bernoulli draws with those
// probabilities, pixel c drawing Philox counter c0 + c (the batch's pixel index, as `gather`).
fn pixels4(w: u32, c0: u32) -> vec4<f32> {
    var v = vec4<f32>(f32(w & 0xffu), f32((w >> 8u) & 0xffu), f32((w >> 16u) & 0xffu), f32(w >> 24u)) / 255.0;
    if (p.binarize == 1u) {
        let key = vec2<u32>(p.seed_lo, p.seed_hi);
        for (var c = 0u; c < 4u; c++) {
            let u = u01(philox(vec4<u32>(c0 + c, p.step, p.stream, 0u), key).x);
            v[c] = select(0.0, 1.0, u < v[c]);
        }
    }
    return v;
}

@compute @workgroup_size(256)
fn gather8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let q = p.d / 8u;
    let row = i / q;
    let img = shard_image(row);
    if (img == p.count) { return; }
    let w = data2[img * q + i % q];
    x8[i] = word8(mat2x4<f32>(pixels4(w.x, 8u * i), pixels4(w.y, 8u * i + 4u)));
}

// The same batch from f32 values (datasets given as floats): x = data[order[..] * D + col], or a
// Bernoulli draw with that probability. n = B*D. Bindings as `gather`, data viewed as f32.
@group(0) @binding(1) var<storage, read> data_f32: array<f32>;

@compute @workgroup_size(256)
fn gather_f32(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let img = shard_image(i / p.d);
    if (img == p.count) { return; }
    let v = data_f32[img * p.d + i % p.d];
    if (p.binarize == 1u) {
        let u = u01(philox(vec4<u32>(i, p.step, p.stream, 0u), vec2<u32>(p.seed_lo, p.seed_hi)).x);
        x[i] = select(0.0, 1.0, u < v);
    } else {
        x[i] = v;
    }
}

// ---- Conditioning (CVAE): one-hot labels gathered like the images, and column concatenation.

@group(0) @binding(1) var<storage, read> fa: array<f32>;
@group(0) @binding(2) var<storage, read> fb: array<f32>;
@group(0) @binding(2) var<storage, read_write> sa: array<f32>;

// y[B,C] = one_hot(labels[order[offset + b]], C).  n = B*C, d = C.
// Bindings: 1 labels (u32, one per image) | 2 order (u32) | 3 y
@compute @workgroup_size(256)
fn onehot(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let label = data[order[p.offset + i / p.d]];
    x[i] = select(0.0, 1.0, label == i % p.d);
}

// out[B, Na+Nb] = [a[B,Na] | b[B,Nb]].  n = B*(Na+Nb), d = Na+Nb, offset = Na.
// Bindings: 1 a | 2 b | 3 out
@compute @workgroup_size(256)
fn concat_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let r = i / p.d;
    let c = i % p.d;
    let nb = p.d - p.offset;
    if (c < p.offset) { x[i] = fa[r * p.offset + c]; } else { x[i] = fb[r * nb + c - p.offset]; }
}

// The gradient of concat_cols: g[B, Na+Nb] -> ga[B,Na], gb[B,Nb].  n = B*(Na+Nb), d, offset as above.
// Bindings: 1 g | 2 ga | 3 gb
@compute @workgroup_size(256)
fn split_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let i = flat_index(wid, lid.x, nwg.x, 256u);
    if (i >= p.n) { return; }
    let r = i / p.d;
    let c = i % p.d;
    let nb = p.d - p.offset;
    if (c < p.offset) { sa[r * p.offset + c] = fa[i]; } else { x[r * nb + c - p.offset] = fa[i]; }
}
