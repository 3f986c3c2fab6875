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
// (MODE 1), DW [CO, CI*KH*KW]. Defines: MODE: u32; BIAS, ACCUM: bool; ACT: u32; ALPHA: f32.
//
// Bindings: 0 params | 1 first operand (X in modes 0, 2 as the gathered image; DY in mode 1) |
// 2 second operand (W in modes 0, 1; DY in mode 2) | 3 bias (bound to operand 1 when unused) |
// 4 output.
//
// Each invocation computes a 4x4 block of the GEMM output (4 rows, 4 columns); a workgroup of
// 8x8 invocations covers 32x32. Rows past 65535 workgroups continue in the z dimension.

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

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> op1: array<f32>;
@group(0) @binding(2) var<storage, read> op2: array<f32>;
@group(0) @binding(3) var<storage, read> bias: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

// The image value X[n, ci, y, x] with zero padding (y, x as signed offsets).
fn image(n: u32, c: u32, y: i32, x: i32) -> f32 {
    if (y < 0 || x < 0 || y >= i32(p.h) || x >= i32(p.w)) {
        return 0.0;
    }
    return op1[((n * p.ci + c) * p.h + u32(y)) * p.w + u32(x)];
}

// GEMM operand A[row, kk].
fn a_at(row: u32, kk: u32) -> f32 {
    if (MODE == 0u) {
        // row = (n, oy, ox), kk = (ci, ky, kx)
        let ox = row % p.ow;
        let oy = (row / p.ow) % p.oh;
        let n = row / (p.ow * p.oh);
        let kx = kk % p.kw;
        let ky = (kk / p.kw) % p.kh;
        let c = kk / (p.kw * p.kh);
        return image(n, c, i32(oy * p.stride + ky) - i32(p.pad), i32(ox * p.stride + kx) - i32(p.pad));
    } else if (MODE == 1u) {
        // row = (n, iy, ix), kk = (co, ky, kx): DY[n, co, oy, ox] with iy = oy*S - P + ky.
        let ix = row % p.w;
        let iy = (row / p.w) % p.h;
        let n = row / (p.w * p.h);
        let kx = kk % p.kw;
        let ky = (kk / p.kw) % p.kh;
        let c = kk / (p.kw * p.kh);
        let ty = i32(iy + p.pad) - i32(ky);
        let tx = i32(ix + p.pad) - i32(kx);
        if (ty < 0 || tx < 0) {
            return 0.0;
        }
        let oy = u32(ty) / p.stride;
        let ox = u32(tx) / p.stride;
        if (oy * p.stride != u32(ty) || ox * p.stride != u32(tx) || oy >= p.oh || ox >= p.ow) {
            return 0.0;
        }
        return op1[((n * p.co + c) * p.oh + oy) * p.ow + ox];
    } else {
        // row = co, kk = (n, oy, ox): DY[n, co, oy, ox]
        let ox = kk % p.ow;
        let oy = (kk / p.ow) % p.oh;
        let n = kk / (p.ow * p.oh);
        return op2[((n * p.co + row) * p.oh + oy) * p.ow + ox];
    }
}

// GEMM operand B[kk, col].
fn b_at(kk: u32, col: u32) -> f32 {
    if (MODE == 0u) {
        // W[col, kk]
        return op2[col * p.kdim + kk];
    } else if (MODE == 1u) {
        // W[co, ci, ky, kx] with kk = (co, ky, kx), col = ci
        let khw = p.kh * p.kw;
        let co = kk / khw;
        return op2[(co * p.ci + col) * khw + kk % khw];
    } else {
        // X[n, ci, oy*S-P+ky, ox*S-P+kx] with kk = (n, oy, ox), col = (ci, ky, kx)
        let ox = kk % p.ow;
        let oy = (kk / p.ow) % p.oh;
        let n = kk / (p.ow * p.oh);
        let kx = col % p.kw;
        let ky = (col / p.kw) % p.kh;
        let c = col / (p.kw * p.kh);
        return image(n, c, i32(oy * p.stride + ky) - i32(p.pad), i32(ox * p.stride + kx) - i32(p.pad));
    }
}

// Where GEMM output [row, col] is stored.
fn out_index(row: u32, col: u32) -> u32 {
    if (MODE == 0u) {
        let sp = p.oh * p.ow;
        return ((row / sp) * p.co + col) * sp + row % sp;
    } else if (MODE == 1u) {
        let sp = p.h * p.w;
        return ((row / sp) * p.ci + col) * sp + row % sp;
    }
    return row * p.cols + col;
}

@compute @workgroup_size(8, 8, 1)
fn conv_gemm(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_id) lid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    let col0 = gid.x * 4u;
    let row0 = ((wid.z * nwg.y + wid.y) * 8u + lid.y) * 4u;
    if (col0 >= p.cols || row0 >= p.rows) {
        return;
    }
    var acc: array<vec4<f32>, 4>;
    for (var kk = p.k_begin; kk < p.k_end; kk++) {
        var bv = vec4<f32>(0.0);
        for (var j = 0u; j < 4u; j++) {
            if (col0 + j < p.cols) {
                bv[j] = b_at(kk, col0 + j);
            }
        }
        for (var i = 0u; i < 4u; i++) {
            if (row0 + i < p.rows) {
                acc[i] += a_at(row0 + i, kk) * bv;
            }
        }
    }
    for (var i = 0u; i < 4u; i++) {
        let row = row0 + i;
        if (row >= p.rows) {
            break;
        }
        for (var j = 0u; j < 4u; j++) {
            let col = col0 + j;
            if (col >= p.cols) {
                break;
            }
            let o = out_index(row, col);
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
