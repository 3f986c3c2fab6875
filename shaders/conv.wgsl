// conv.wgsl — 2-D convolution as an implicit GEMM: no im2col buffer, operands are gathered from
// NCHW tensors inside the product loop. One kernel body serves three products (MODE):
//
//   MODE 0, conv forward:    Y[n,co,oy,ox]  = act( Σ_{ci,ky,kx} X[n,ci,oy*S-P+ky,ox*S-P+kx]·W[co,ci,ky,kx] + b[co] )
//            GEMM rows (n,oy,ox), columns co, K (ci,ky,kx)
//   MODE 1, conv input grad: DX[n,ci,iy,ix] = Σ_{co,ky,kx} DY[n,co,oy,ox]·W[co,ci,ky,kx]   where iy = oy*S-P+ky
//            GEMM rows (n,iy,ix), columns ci, K (co,ky,kx). This is also ConvTranspose2d's forward
//            (its weight [Cin_t,Cout_t,KH,KW] is a conv weight with co = the transpose's input
//            channel), so it takes the same bias + activation epilogue.
//   MODE 2, conv weight grad: DW[co,ci,ky,kx] = Σ_{n,oy,ox} DY[n,co,oy,ox]·X[n,ci,oy*S-P+ky,ox*S-P+kx]
//            GEMM rows co, columns (ci,ky,kx), K (n,oy,ox): long, so the host splits it into
//            slices accumulated into DW (llvmpipe stops an invocation after 65535 loop iterations).
//
// Shapes (row-major f32, one example per row, channels then rows then columns: PyTorch's NCHW
// flattened): X [N, CI*H*W], W [CO, CI*KH*KW], Y and DY [N, CO*OH*OW], bias [CO] (MODE 0) or [CI]
// (MODE 1), DW [CO, CI*KH*KW]. Defines: MODE: u32; BIAS, ACCUM, NARROW: bool; ACT: u32; ALPHA: f32.
//
// Bindings: 0 params | 1 first operand (X in modes 0, 2 as the gathered image; DY in mode 1) |
// 2 second operand (W in modes 0, 1; DY in mode 2) | 3 bias (bound to operand 1 when unused) |
// 4 output.
//
// Each invocation computes a block of RB rows by 4 columns of the GEMM output; a workgroup of
// 8x8 invocations covers 32 columns and 8 row blocks. Row blocks past 65535 workgroups continue in
// the z dimension.
//
// SG (the `conv_gemm_subgroup` entry of conv_subgroup.wgsl, for adapters with 8-lane subgroups:
// llvmpipe): the 8 invocations of a workgroup row are one subgroup and share their RB = 8 GEMM
// rows, so instead of each loading all 8 row operands per K step, lane l loads row l's and
// `share_row` hands them round with subgroupBroadcast (a register extract on llvmpipe, where every
// storage load is a loop over the lanes). Lanes whose columns are past the end still load and
// share their row. Not with NARROW (there each invocation has its own rows). The entry points
// (`conv_gemm` in conv_plain.wgsl, `conv_gemm_subgroup`) call `conv_body` below.
//
// MODE 1 visits only the taps that contribute. With stride S, output pixel iy receives tap ky only
// when S divides iy + P − ky, i.e. for ky ≡ iy + P (mod S): its "phase". An invocation's RB rows
// are RB pixels of one image row S apart (ix, ix+S, ix+2S, ...), so they share both phases and
// walk the same ⌈K/S⌉² taps, reading RB consecutive DY columns. Its row blocks are numbered
// (n, iy, x phase, block of RB within the phase): `rows` holds their count and `kdim` the blocks per
// image row, and K is sliced by output channel (k_begin..k_end are channels).

struct Params {
    n: u32,
    ci: u32,
    h: u32,
    w: u32,
    co: u32,
    oh: u32,
    ow: u32,
    kh: u32,
    kw: u32,
    stride: u32,
    pad: u32,
    k_begin: u32,
    k_end: u32,
    rows: u32,
    cols: u32,
    kdim: u32,
}

// Rows per invocation (the GEMM's register block is RB rows by 4 columns). With SG it is also the
// subgroup width (one row per lane). 16 rows per invocation measured slower on llvmpipe (spills).
const RB: u32 = 8u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> op1: array<f32>;
@group(0) @binding(2) var<storage, read> op2: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// The image value X[n, ci, y, x] with zero padding: `base` is n's and ci's offset, (y, x) signed.
fn image(base: u32, y: i32, x: i32) -> f32 {
    if (y < 0 || x < 0 || y >= i32(p.h) || x >= i32(p.w)) {
        return 0.0;
    }
    return op1[base + u32(y) * p.w + u32(x)];
}

// The decoding of GEMM indices into (n, y, x) and (channel, ky, kx) is hoisted out of the K
// loop: what is fixed for an invocation (its rows in modes 0 and 1, its columns in mode 2) is
// decoded once, and the K index is stepped as a mixed-radix counter instead of divided.
// `lane`: the subgroup lane (SG only; it picks the row this invocation loads for the subgroup).
fn conv_body(gid: vec3<u32>, wid: vec3<u32>, lid: vec3<u32>, nwg: vec3<u32>, lane: u32) {
    // NARROW (at most 4 columns): all 64 invocations of a workgroup take row blocks, instead of
    // 7 in 8 finding no column to compute.
    let wg = wid.z * nwg.y + wid.y;
    var col0 = gid.x * 4u;
    var block = wg * 8u + lid.y;
    if (NARROW) {
        col0 = 0u;
        block = wg * 64u + lid.y * 8u + lid.x;
    }
    let row0 = block * RB;
    // With SG every lane stays: its row operand is shared with the others.
    if (col0 >= p.cols && !SG) {
        return;
    }
    let me = lane % RB;
    if ((MODE == 1u && block >= p.rows) || (MODE != 1u && row0 >= p.rows)) {
        return;
    }
    let khw = p.kh * p.kw;
    let hw = p.h * p.w;
    let ohw = p.oh * p.ow;
    var acc: array<vec4<f32>, RB>;
    var live: array<bool, RB>;
    // Where row i's column 0 is stored, and the distance between consecutive columns.
    var obase: array<u32, RB>;
    var ostride = 1u;
    var base: array<u32, RB>;
    var y0: array<i32, RB>;
    var x0: array<i32, RB>;
    var cols_live = vec4<bool>(false);
    for (var j = 0u; j < 4u; j++) {
        cols_live[j] = col0 + j < p.cols;
    }
    if (MODE == 0u) {
        // Rows (n, oy, ox): the image of example n and the window's top-left corner.
        for (var i = 0u; i < RB; i++) {
            let r = min(row0 + i, p.rows - 1u);
            live[i] = row0 + i < p.rows;
            base[i] = (r / ohw) * p.ci * hw;
            y0[i] = i32(((r / p.ow) % p.oh) * p.stride) - i32(p.pad);
            x0[i] = i32((r % p.ow) * p.stride) - i32(p.pad);
            obase[i] = (r / ohw) * p.co * ohw + r % ohw;
        }
        ostride = ohw;
        var kx = p.k_begin % p.kw;
        var ky = (p.k_begin / p.kw) % p.kh;
        var cb = (p.k_begin / khw) * hw;
        for (var kk = p.k_begin; kk < p.k_end; kk++) {
            var bv = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                if (cols_live[j]) {
                    bv[j] = op2[(col0 + j) * p.kdim + kk];
                }
            }
            if (SG) {
                let v = image(base[me] + cb, y0[me] + i32(ky), x0[me] + i32(kx));
                share_row(&acc, select(0.0, v, live[me]), bv);
            } else {
                for (var i = 0u; i < RB; i++) {
                    if (live[i]) {
                        acc[i] += image(base[i] + cb, y0[i] + i32(ky), x0[i] + i32(kx)) * bv;
                    }
                }
            }
            kx += 1u;
            if (kx == p.kw) {
                kx = 0u;
                ky += 1u;
                if (ky == p.kh) {
                    ky = 0u;
                    cb += hw;
                }
            }
        }
    } else if (MODE == 1u) {
        // Row block -> (n, iy, x phase, block within the phase).
        let niy = block / p.kdim;
        var b = block % p.kdim;
        let n = niy / p.h;
        let iy = niy % p.h;
        var phase = 0u;
        loop {
            let count = select(0u, (p.w - phase + p.stride - 1u) / p.stride, phase < p.w);
            let blocks = (count + RB - 1u) / RB;
            if (b < blocks || phase + 1u >= p.stride) {
                break;
            }
            b -= blocks;
            phase += 1u;
        }
        let ix0 = phase + p.stride * RB * b;
        for (var i = 0u; i < RB; i++) {
            live[i] = ix0 + p.stride * i < p.w;
            obase[i] = n * p.ci * hw + iy * p.w + ix0 + p.stride * i;
        }
        ostride = hw;
        // Taps ky = py + S·t reach oy = qy − t; kx = px + S·u reach ox = qx0 + i − u for row i.
        let py = (iy + p.pad) % p.stride;
        let qy = (iy + p.pad) / p.stride;
        let px = (ix0 + p.pad) % p.stride;
        let qx0 = (ix0 + p.pad) / p.stride;
        let ty_n = select(0u, (p.kh - py + p.stride - 1u) / p.stride, py < p.kh);
        let tx_n = select(0u, (p.kw - px + p.stride - 1u) / p.stride, px < p.kw);
        for (var c = p.k_begin; c < p.k_end; c++) {
            let dyb = (n * p.co + c) * ohw;
            let wb = c * p.ci * khw;
            for (var t = 0u; t < ty_n; t++) {
                if (t > qy || qy - t >= p.oh) {
                    continue;
                }
                let drow = dyb + (qy - t) * p.ow;
                let ky = py + p.stride * t;
                for (var u = 0u; u < tx_n; u++) {
                    let kx = px + p.stride * u;
                    var bv = vec4<f32>(0.0);
                    for (var j = 0u; j < 4u; j++) {
                        if (cols_live[j]) {
                            bv[j] = op2[wb + (col0 + j) * khw + ky * p.kw + kx];
                        }
                    }
                    if (SG) {
                        let q = qx0 + me;
                        var v = 0.0;
                        if (live[me] && q >= u && q - u < p.ow) {
                            v = op1[drow + q - u];
                        }
                        share_row(&acc, v, bv);
                    } else {
                        for (var i = 0u; i < RB; i++) {
                            let q = qx0 + i;
                            if (live[i] && q >= u && q - u < p.ow) {
                                acc[i] += op1[drow + q - u] * bv;
                            }
                        }
                    }
                }
            }
        }
    } else {
        // Rows co, columns (ci, ky, kx) decoded once; K (n, oy, ox) stepped.
        var cb: array<u32, 4>;
        var cky: array<i32, 4>;
        var ckx: array<i32, 4>;
        for (var j = 0u; j < 4u; j++) {
            let col = min(col0 + j, p.cols - 1u);
            cb[j] = (col / khw) * hw;
            cky[j] = i32((col / p.kw) % p.kh) - i32(p.pad);
            ckx[j] = i32(col % p.kw) - i32(p.pad);
        }
        for (var i = 0u; i < RB; i++) {
            live[i] = row0 + i < p.rows;
            obase[i] = (row0 + i) * p.cols;
        }
        var ox = p.k_begin % p.ow;
        var oy = (p.k_begin / p.ow) % p.oh;
        var n = p.k_begin / ohw;
        for (var kk = p.k_begin; kk < p.k_end; kk++) {
            let ib = n * p.ci * hw;
            var bv = vec4<f32>(0.0);
            for (var j = 0u; j < 4u; j++) {
                if (cols_live[j]) {
                    bv[j] = image(ib + cb[j], i32(oy * p.stride) + cky[j], i32(ox * p.stride) + ckx[j]);
                }
            }
            let db = n * p.co * ohw + oy * p.ow + ox;
            if (SG) {
                let v = op2[db + min(row0 + me, p.rows - 1u) * ohw];
                share_row(&acc, select(0.0, v, live[me]), bv);
            } else {
                for (var i = 0u; i < RB; i++) {
                    if (live[i]) {
                        acc[i] += op2[db + (row0 + i) * ohw] * bv;
                    }
                }
            }
            ox += 1u;
            if (ox == p.ow) {
                ox = 0u;
                oy += 1u;
                if (oy == p.oh) {
                    oy = 0u;
                    n += 1u;
                }
            }
        }
    }
    for (var i = 0u; i < RB; i++) {
        if (!live[i]) {
            continue;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + j;
            if (col >= p.cols) {
                break;
            }
            let o = obase[i] + col * ostride;
            var v = acc[i][j];
            if (ACCUM) {
                v += out[o];
            }
            if (BIAS) {
                v += bias[col];
            }
            out[o] = act_fwd(ACT, ALPHA, v);
        }
    }
}
