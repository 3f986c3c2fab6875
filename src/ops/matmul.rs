//! Matrix products (`shaders/matmul.wgsl`) and the differentiable `matmul` and `linear` ops.
//!
//! C\[M,N\] = act(op(A)·op(B) + bias): A stored \[M,K\] or, transposed, \[K,M\]; B stored \[K,N\] or
//! \[N,K\]; bias \[1,N\]. The backward pass needs the transposed layouts: for a PyTorch-layout weight
//! W\[out,in\], forward is X·Wᵀ (NT), d_X = dY·W (NN) and d_W = dYᵀ·X (TN).

use super::elementwise::act_backward;
use super::{val, Act};
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::gpu::pool::OPERAND_TEXTURE_ROW_BYTES;
use crate::gpu::{MatmulVariant, Operands, TileConfig};
use crate::tape::{grid_1d, Params, Tape, Var};
use crate::tensor::Tensor;

/// Options of one matrix product.
#[derive(Clone, Copy, Debug)]
pub struct MatmulOpts {
    /// Use Aᵀ (A stored \[K,M\]).
    pub trans_a: bool,
    /// Use Bᵀ (B stored \[N,K\]).
    pub trans_b: bool,
    /// Activation applied in the epilogue (after the bias).
    pub act: Act,
    /// Kernel variant; `None` uses the device's choice: its measured plan
    /// ([`crate::Gpu::set_matmul_plan`]) or else [`crate::Gpu::matmul_variant`].
    pub variant: Option<MatmulVariant>,
    /// The tiled variant's tile when `variant` is forced (default [`TileConfig::DEFAULT`]).
    pub tile: Option<TileConfig>,
}

impl Default for MatmulOpts {
    fn default() -> Self {
        MatmulOpts { trans_a: false, trans_b: false, act: Act::Identity, variant: None, tile: None }
    }
}

impl MatmulOpts {
    /// Plain A·B with the device's variant.
    pub fn nn() -> Self {
        Self::default()
    }
    /// Sets the transposes.
    pub fn trans(mut self, a: bool, b: bool) -> Self {
        self.trans_a = a;
        self.trans_b = b;
        self
    }
    /// Sets the epilogue activation.
    pub fn act(mut self, act: Act) -> Self {
        self.act = act;
        self
    }
    /// Forces a variant.
    pub fn variant(mut self, v: MatmulVariant) -> Self {
        self.variant = Some(v);
        self
    }
    /// Forces the tiled variant with `tile`.
    pub fn tile(mut self, tile: TileConfig) -> Self {
        self.variant = Some(MatmulVariant::Tiled);
        self.tile = Some(tile);
        self
    }
}

/// Rows per workgroup of the register kernels (RM in matmul.wgsl; a multiple of 4).
const REG_RM: usize = 8;
/// Invocations per workgroup of the register and subgroup kernels (a multiple of 8).
const REG_WG: usize = 16;
/// Rows and columns per invocation of `matmul_unrolled` (ROWS_PER_BLOCK and COLS_PER_LANE in
/// shaders/matmul_unrolled.wgsl).
const UNROLLED_ROWS: usize = 16;
const UNROLLED_COLS: usize = 8;
/// Columns per invocation of `matmul_register4` (a multiple of 4).
const REG4_CN: usize = 4;

/// Whether the vec4 kernels (`matmul_register4`, `matmul_subgroup`) can take this product: every
/// vec4 they load must be a 16-byte aligned run within one row of a stored operand.
pub fn vec4_aligned(m: usize, k: usize, n: usize, ta: bool, tb: bool) -> bool {
    k.is_multiple_of(4) && (!ta || m.is_multiple_of(4)) && (tb || n.is_multiple_of(4))
}

/// Longest K one dispatch handles. llvmpipe stops an invocation after 65535 loop iterations, and
/// one K step of either variant costs up to ~17 of them.
const K_SLICE: usize = 2048;

/// (M, K, N) of op(A)·op(B), checking that the inner dimensions agree.
pub fn matmul_dims(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Result<(usize, usize, usize)> {
    let (m, k) = if ta { (a.cols(), a.rows()) } else { (a.rows(), a.cols()) };
    let (kb, n) = if tb { (b.cols(), b.rows()) } else { (b.rows(), b.cols()) };
    if k != kb {
        return Err(Error::shape(
            "matmul",
            format!(
                "op(A) is {m}x{k} (A {:?}{}) but op(B) is {kb}x{n} (B {:?}{}): inner dimensions differ",
                a.shape(),
                if ta { " transposed" } else { "" },
                b.shape(),
                if tb { " transposed" } else { "" }
            ),
        ));
    }
    Ok((m, k, n))
}

#[allow(clippy::too_many_arguments)]
fn launch(
    tape: &mut Tape,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    c: &Tensor,
    o: MatmulOpts,
    accum: bool,
    ep: Epilogue,
) -> Result<()> {
    let (m, k, n) = matmul_dims(a, b, o.trans_a, o.trans_b)?;
    if c.shape() != [m, n] {
        return Err(Error::shape("matmul", format!("output is {:?}, expected [{m}, {n}]", c.shape())));
    }
    if let Some(bias) = bias {
        if bias.shape() != [1, n] {
            return Err(Error::shape("matmul", format!("bias is {:?}, expected [1, {n}]", bias.shape())));
        }
    }
    if let Some((_, y)) = &ep.grad_act {
        if y.shape() != [m, n] {
            return Err(Error::shape("matmul", format!("activation output is {:?}, expected [{m}, {n}]", y.shape())));
        }
    }
    if let Some(s) = &ep.row_sums {
        if s.len() != m {
            return Err(Error::shape("matmul", format!("row sums are {:?}, expected {m} values", s.shape())));
        }
    }
    let (variant, tile) = match o.variant {
        Some(v) => (v, o.tile.unwrap_or(TileConfig::DEFAULT)),
        None => match tape.gpu().matmul_plan().and_then(|p| p.choose(m, k, n)) {
            Some(c) => (c.variant, c.tile),
            None => (tape.gpu().matmul_variant(), TileConfig::DEFAULT),
        },
    };
    tape.gpu().check_variant(variant)?;
    // The register kernels share the tiled kernel's module: they get the default tile, so one
    // compiled module serves them whatever tile the tiled kernel uses.
    let tile = if variant == MatmulVariant::Tiled { tile } else { TileConfig::DEFAULT };
    tile.check(tape.gpu().limits().max_compute_workgroup_storage_size)?;
    let aligned = vec4_aligned(m, k, n, o.trans_a, o.trans_b);
    // (entry, module, rows per workgroup, columns per workgroup)
    let (entry, module, rows, cols) = match variant {
        MatmulVariant::Tiled => (tile.entry(aligned), Module::Matmul, tile.m as usize, tile.n as usize),
        // The subgroup kernel also stores C (and reads the bias) as vec4s: N % 4 == 0. Other
        // shapes take the register kernels (documented on MatmulVariant::Subgroup).
        MatmulVariant::Subgroup if aligned && n.is_multiple_of(4) => {
            let words = tape.gpu().words();
            // Operand textures (Operands::Textures) when both operands fit the texture height
            // limit; the same kernel on buffers otherwise.
            let max_rows = tape.gpu().limits().max_texture_dimension_2d as u64;
            let fits = |t: &Tensor| t.bytes().div_ceil(OPERAND_TEXTURE_ROW_BYTES) <= max_rows;
            let module = if tape.gpu().operands() == Operands::Textures && fits(a) && fits(b) {
                Module::MatmulSubgroupTextures(words)
            } else {
                Module::MatmulSubgroup(words)
            };
            ("matmul_subgroup", module, 32, 4 * REG_WG)
        }
        // The register variant's straight-line block (SwiftShader keeps matmul_register4's
        // accumulator array in memory): the same shape rules as the subgroup kernel.
        MatmulVariant::Register if aligned && n.is_multiple_of(4) => {
            ("matmul_unrolled", Module::MatmulUnrolled(tape.gpu().words()), UNROLLED_ROWS, UNROLLED_COLS * REG_WG)
        }
        MatmulVariant::Register | MatmulVariant::Subgroup if aligned => {
            ("matmul_register4", Module::Matmul, REG_RM, REG4_CN * REG_WG)
        }
        MatmulVariant::Register | MatmulVariant::Subgroup => ("matmul_register", Module::Matmul, REG_RM, 4 * REG_WG),
    };
    let groups = [n.div_ceil(cols) as u32, m.div_ceil(rows) as u32, 1];
    let layout = format!("{}{}", if o.trans_a { "T" } else { "N" }, if o.trans_b { "T" } else { "N" });
    // The `subgroup` kernel takes identity, relu and leaky relu (and their derivatives) as run-time
    // parameters, so one pipeline per layout serves every layer (lavapipe compiles each for
    // 100-200 ms, inside the first step). Weight gradients (transposed A) have no activation and
    // keep their own pipeline: a classic VAE step compiles three `subgroup` pipelines, not five.
    let runtime_act = |act: Act| matches!(act, Act::Identity | Act::Relu | Act::LeakyRelu(_));
    let rt = |act: Act, grad_act: Act| {
        matches!(module, Module::MatmulSubgroup(_) | Module::MatmulSubgroupTextures(_) | Module::MatmulUnrolled(_))
            && !o.trans_a
            && runtime_act(act)
            && runtime_act(grad_act)
    };
    // The kernel's defines for one dispatch: the slice's epilogue parts, the tile and the row sums.
    let defines = |bias: bool, accum: bool, act: Act, grad_act: Act| {
        let rt = rt(act, grad_act);
        let (act, grad_act) = if rt { (Act::Identity, Act::Identity) } else { (act, grad_act) };
        let mut d = vec![
            ("TA", o.trans_a.to_string()),
            ("TB", o.trans_b.to_string()),
            ("BIAS", bias.to_string()),
            ("ACCUM", accum.to_string()),
            ("COLSUM", ep.row_sums.is_some().to_string()),
            ("RM", format!("{REG_RM}u")),
            ("WG", format!("{REG_WG}u")),
            ("CN", format!("{REG4_CN}u")),
            ("TILE_M", format!("{}u", tile.m)),
            ("TILE_N", format!("{}u", tile.n)),
            ("TILE_K", format!("{}u", tile.k)),
            ("PREFETCH", tile.prefetch.to_string()),
            ("GRAD_ACT", format!("{}u", grad_act.id())),
            ("GRAD_ALPHA", super::wgsl_f32(grad_act.alpha())),
            ("RT_ACT", rt.to_string()),
        ];
        d.extend(act.defines());
        d
    };
    // Long K runs as slices accumulated into C; bias and activation apply with the last slice.
    let slices = k.div_ceil(K_SLICE);
    for s in 0..slices {
        let (k0, k1) = (s * K_SLICE, ((s + 1) * K_SLICE).min(k));
        let last = s + 1 == slices;
        let slice_bias = if last { bias } else { None };
        let slice_act = if last { o.act } else { Act::Identity };
        let grad_act = if last { ep.grad_act.as_ref().map(|(a, _)| *a) } else { None }.unwrap_or(Act::Identity);
        let accum_slice = accum || s > 0;
        // Split-K (tiled tiles with `split` > 1, on a slice at least two chunks deep): the first
        // pass writes each chunk's raw partial sums to its own slot, the second adds them up and
        // applies this slice's epilogue.
        let (chunk, parts) = if variant == MatmulVariant::Tiled {
            let limits = tape.gpu().limits();
            let cap =
                TileConfig::MAX_SPLIT_BYTES.min(limits.max_storage_buffer_binding_size).min(limits.max_buffer_size);
            tile.split_chunks(k1 - k0, (cap / (m * n * 4).max(1) as u64) as usize)
        } else {
            (k1 - k0, 1)
        };
        let params = || {
            Params::new()
                .u(m as u32)
                .u(n as u32)
                .u(k as u32)
                .u(k0 as u32)
                .u(k1 as u32)
                .u(chunk as u32)
                .u(slice_act.id())
                .f(slice_act.alpha())
                .u(grad_act.id())
                .f(grad_act.alpha())
        };
        let profiling = tape.gpu().profiling();
        let label = |entry: &str, extra: String| {
            profiling.then(|| {
                let tiled = if variant == MatmulVariant::Tiled { format!(" {tile}") } else { String::new() };
                let sliced = if slices > 1 { format!(" k-slice {s}") } else { String::new() };
                format!("{entry}{tiled} {layout} {m}x{k}x{n}{sliced}{extra}")
            })
        };
        // Unused inputs are A again (read-only twice is allowed), unused row sums C again.
        let y = ep.grad_act.as_ref().filter(|_| last).map(|(_, y)| y).unwrap_or(a);
        let sums = ep.row_sums.as_ref().unwrap_or(c);
        let epilogue = defines(slice_bias.is_some(), accum_slice, slice_act, grad_act);
        let key = |entry, defines| KernelKey { module, entry, defines, inputs: 4, outputs: 2 };
        if parts == 1 {
            let bufs = [a, b, slice_bias.unwrap_or(a), y, c, sums];
            tape.dispatch_labeled(&key(entry, epilogue), params(), &bufs, groups, label(entry, String::new()))?;
            continue;
        }
        let gpu = tape.gpu().clone();
        let partial = Tensor::empty(&gpu, parts * m, n)?;
        let partial_sums = ep.row_sums.as_ref().map(|_| Tensor::empty(&gpu, parts, m)).transpose()?;
        let psums = partial_sums.as_ref().unwrap_or(&partial);
        let raw = defines(false, false, Act::Identity, Act::Identity);
        let split_groups = [groups[0], groups[1], parts as u32];
        let l = label(entry, format!(" split {parts}"));
        tape.dispatch_labeled(&key(entry, raw), params(), &[a, b, a, a, &partial, psums], split_groups, l)?;
        let reduce = "matmul_split_reduce";
        let l = label(reduce, format!(" split {parts}"));
        let y = ep.grad_act.as_ref().filter(|_| last).map(|(_, y)| y).unwrap_or(&partial);
        let bufs = [&partial, psums, slice_bias.unwrap_or(&partial), y, c, sums];
        tape.dispatch_labeled(&key(reduce, epilogue), params(), &bufs, grid_1d(m * n, 256), l)?;
    }
    Ok(())
}

/// What a matmul's epilogue may do besides bias and activation (see `shaders/matmul.wgsl`).
#[derive(Clone, Debug, Default)]
pub struct Epilogue {
    /// C = (op(A)·op(B)) ⊙ act'(Y): the derivative of `act` from its output Y \[M, N\] (a
    /// backward product fused with the activation's backward).
    pub grad_act: Option<(Act, Tensor)>,
    /// Also write the row sums of op(A) (M values; added to them when accumulating): the bias
    /// gradient, next to the weight gradient dW = dYᵀ·X.
    pub row_sums: Option<Tensor>,
}

/// C = act(op(A)·op(B) + bias) into a new tensor.
pub fn matmul_forward(tape: &mut Tape, a: &Tensor, b: &Tensor, bias: Option<&Tensor>, o: MatmulOpts) -> Result<Tensor> {
    matmul_forward_into(tape, a, b, bias, None, o)
}

/// [`matmul_forward`] with an [`Epilogue`], into `out` when given; returns C.
pub fn matmul_fused(
    tape: &mut Tape,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    out: Option<Tensor>,
    o: MatmulOpts,
    ep: Epilogue,
) -> Result<Tensor> {
    let (m, _, n) = matmul_dims(a, b, o.trans_a, o.trans_b)?;
    let c = match out {
        Some(c) => c,
        None => Tensor::empty(tape.gpu(), m, n)?,
    };
    launch(tape, a, b, bias, &c, o, false, ep)?;
    Ok(c)
}

/// [`matmul_forward`] into `out` when given (e.g. a packed parameter's gradient view), else a new
/// tensor; returns the output.
pub fn matmul_forward_into(
    tape: &mut Tape,
    a: &Tensor,
    b: &Tensor,
    bias: Option<&Tensor>,
    out: Option<Tensor>,
    o: MatmulOpts,
) -> Result<Tensor> {
    let (m, _, n) = matmul_dims(a, b, o.trans_a, o.trans_b)?;
    let c = match out {
        Some(c) => c,
        None => Tensor::empty(tape.gpu(), m, n)?,
    };
    launch(tape, a, b, bias, &c, o, false, Epilogue::default())?;
    Ok(c)
}

/// C += op(A)·op(B), in place (no bias, no activation).
pub fn matmul_accumulate(tape: &mut Tape, a: &Tensor, b: &Tensor, c: &Tensor, o: MatmulOpts) -> Result<()> {
    if c.same_buffer(a) || c.same_buffer(b) {
        return Err(Error::arg("matmul_accumulate", "the output must not share a buffer with an operand"));
    }
    launch(tape, a, b, None, c, MatmulOpts { act: Act::Identity, ..o }, true, Epilogue::default())
}

/// Gradients of C = op(A)·op(B) for upstream dC, with the variant of `o`:
/// dA = dC·op(B)ᵀ (stored transposed when A is), dB = op(A)ᵀ·dC (likewise).
pub fn matmul_backward(
    tape: &mut Tape,
    a: &Tensor,
    b: &Tensor,
    dc: &Tensor,
    o: MatmulOpts,
    need_a: bool,
    need_b: bool,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let base = MatmulOpts { act: Act::Identity, ..o };
    let da = if !need_a {
        None
    } else if !o.trans_a {
        Some(matmul_forward(tape, dc, b, None, base.trans(false, !o.trans_b))?)
    } else {
        Some(matmul_forward(tape, b, dc, None, base.trans(o.trans_b, true))?)
    };
    let db = if !need_b {
        None
    } else if !o.trans_b {
        Some(matmul_forward(tape, a, dc, None, base.trans(!o.trans_a, false))?)
    } else {
        Some(matmul_forward(tape, dc, a, None, base.trans(true, o.trans_a))?)
    };
    Ok((da, db))
}

// ------------------------------------------------------------------------- differentiable ops

/// C = op(A)·op(B).  Backward: see [`matmul_backward`].
pub fn matmul(tape: &mut Tape, a: Var, b: Var, trans_a: bool, trans_b: bool) -> Result<Var> {
    let (av, bv) = (val(tape, a), val(tape, b));
    let o = MatmulOpts::nn().trans(trans_a, trans_b);
    let c = matmul_forward(tape, &av, &bv, None, o)?;
    Ok(tape.record(&[a, b], c, move |t, g, needs| {
        let (da, db) = matmul_backward(t, &av, &bv, g, o, needs[0], needs[1])?;
        Ok(vec![da, db])
    }))
}

/// Fully connected layer with a PyTorch-layout weight: y\[B,out\] = act(x\[B,in\]·w\[out,in\]ᵀ + b\[1,out\]),
/// one fused kernel.  Backward: g = dy ⊙ act'(y); dx = g·w; dw = gᵀ·x; db = Σ_rows g.
///
/// The backward pass is two kernels where it can be: db comes out of the dw kernel (row sums of
/// gᵀ), dw and db are written straight into packed parameters' gradient buffers, and when x is
/// the output of another layer's activation and feeds only this layer, dx already includes that
/// activation's derivative (so that layer skips its own `act_backward`).
pub fn linear(tape: &mut Tape, x: Var, w: Var, b: Option<Var>, act: Act) -> Result<Var> {
    let (xv, wv) = (val(tape, x), val(tape, w));
    let bv = b.map(|b| val(tape, b));
    let o = MatmulOpts::nn().trans(false, true).act(act);
    let y = matmul_forward(tape, &xv, &wv, bv.as_ref(), o)?;
    let yk = y.clone();
    let mut inputs = vec![x, w];
    inputs.extend(b);
    let out = std::sync::Arc::new(std::sync::OnceLock::<Var>::new());
    let out_in_rule = out.clone();
    let yv = tape.record(&inputs, y, move |t, dy, needs| {
        let me = *out_in_rule.get().expect("the output var is set at recording");
        let g = if t.gradient_is_pre_activation(me) { dy.clone() } else { act_backward(t, dy, &yk, act)? };
        let plain = MatmulOpts::nn();
        let dx = if needs[0] {
            let ep = match t.fusable_activation(x) {
                Some(a) => Epilogue { grad_act: Some((Act::from_tag(a), xv.clone())), row_sums: None },
                None => Epilogue::default(),
            };
            let fused = ep.grad_act.is_some();
            let dx = matmul_fused(t, &g, &wv, None, None, plain, ep)?;
            if fused {
                t.mark_pre_activation(x);
            }
            Some(dx)
        } else {
            None
        };
        let need_db = needs.len() > 2 && needs[2];
        let dw_needed = needs[1];
        let mut db = None;
        let dw = if dw_needed {
            // Packed parameters' gradients are written straight into the store's gradient buffer.
            let dest = t.grad_destination(w);
            let sums = if need_db {
                let s = match b.and_then(|b| t.grad_destination(b)) {
                    Some(d) => d,
                    None => Tensor::empty(t.gpu(), 1, g.cols())?,
                };
                db = Some(s.clone());
                Some(s)
            } else {
                None
            };
            let ep = Epilogue { grad_act: None, row_sums: sums };
            Some(matmul_fused(t, &g, &xv, None, dest, plain.trans(true, false), ep)?)
        } else {
            None
        };
        let mut grads = vec![dx, dw];
        if b.is_some() {
            grads.push(match (need_db, db) {
                (true, Some(d)) => Some(d),
                (true, None) => Some(super::reduce::col_sum_into(t, &g, 1.0, b.and_then(|b| t.grad_destination(b)))?),
                (false, _) => None,
            });
        }
        Ok(grads)
    });
    let _ = out.set(yv);
    tape.set_activation(yv, act.tag());
    Ok(yv)
}
