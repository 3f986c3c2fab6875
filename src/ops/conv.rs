//! 2-D convolution and transposed convolution (`shaders/conv.wgsl`): the kernel launches on
//! tensors and the differentiable ops with their backward rules.
//!
//! Images are rows of a 2-D tensor in PyTorch's NCHW order: an example with C channels of H x W
//! pixels is one row of C·H·W values (channel, then row, then column), so a conv layer's output
//! flattens into a dense layer's input exactly as `torch.flatten(x, 1)` does. Weights use
//! PyTorch's layouts: `Conv2d` \[C_out, C_in·K·K\] (= \[C_out, C_in, K, K\]) and `ConvTranspose2d`
//! \[C_in, C_out·K·K\] (= \[C_in, C_out, K, K\]); biases \[1, C_out\].
//!
//! One implicit-GEMM kernel body computes the three products a layer needs (no im2col buffer):
//! the convolution, its input gradient (which is also the transposed convolution) and its weight
//! gradient; bias gradients are channel sums through the fixed-order reductions.

use super::elementwise::act_backward;
use super::reduce;
use super::{val, Act};
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::tape::{Params, Tape, Var};
use crate::tensor::Tensor;

/// GEMM rows per invocation (`RB` in conv.wgsl), with or without subgroups.
const RB: usize = 8;

/// Longest K range one invocation walks (llvmpipe's 65535-iteration cap; see `conv.wgsl`).
const K_SLICE: usize = 2048;

/// The geometry of a convolution: square kernel, equal stride and padding in both directions.
/// `height` and `width` are the input's; the output is `out_height()` x `out_width()`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Kernel size K (K x K).
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
}

impl ConvShape {
    /// Output rows: ⌊(H + 2P − K) / S⌋ + 1.
    pub fn out_height(&self) -> usize {
        (self.height + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Output columns.
    pub fn out_width(&self) -> usize {
        (self.width + 2 * self.padding - self.kernel) / self.stride + 1
    }
    /// Values per example of the input (C_in·H·W).
    pub fn in_len(&self) -> usize {
        self.in_channels * self.height * self.width
    }
    /// Values per example of the output (C_out·OH·OW).
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_height() * self.out_width()
    }
    /// Columns of the weight (C_in·K·K).
    pub fn weight_cols(&self) -> usize {
        self.in_channels * self.kernel * self.kernel
    }
    /// Every size at least 1 and the padded input at least one kernel wide.
    pub fn validate(&self) -> Result<()> {
        let sizes = [self.in_channels, self.out_channels, self.height, self.width, self.kernel, self.stride];
        if sizes.contains(&0) {
            return Err(Error::shape(
                "conv2d",
                format!("{self:?}: channels, sizes, kernel and stride must be at least 1"),
            ));
        }
        if self.height + 2 * self.padding < self.kernel || self.width + 2 * self.padding < self.kernel {
            return Err(Error::shape("conv2d", format!("{self:?}: the padded input is smaller than the kernel")));
        }
        if self.padding >= self.kernel {
            return Err(Error::shape("conv2d", format!("{self:?}: padding must be smaller than the kernel")));
        }
        let big = [self.in_len(), self.out_len(), self.weight_cols() * self.out_channels];
        if big.iter().any(|&n| n > u32::MAX as usize / 4) {
            return Err(Error::shape("conv2d", format!("{self:?} is too large")));
        }
        Ok(())
    }
}

/// The geometry of a transposed convolution (PyTorch's `ConvTranspose2d`): `height` and `width`
/// are its input's; the output is (H − 1)·S − 2P + K + output_padding on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvTransposeShape {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Input rows.
    pub height: usize,
    /// Input columns.
    pub width: usize,
    /// Kernel size K.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding (as in PyTorch: removed from the output).
    pub padding: usize,
    /// Extra rows and columns on one side of the output (less than the stride).
    pub output_padding: usize,
}

impl ConvTransposeShape {
    /// Output rows.
    pub fn out_height(&self) -> usize {
        ((self.height - 1) * self.stride + self.kernel + self.output_padding).saturating_sub(2 * self.padding)
    }
    /// Output columns.
    pub fn out_width(&self) -> usize {
        ((self.width - 1) * self.stride + self.kernel + self.output_padding).saturating_sub(2 * self.padding)
    }
    /// Values per example of the output.
    pub fn out_len(&self) -> usize {
        self.out_channels * self.out_height() * self.out_width()
    }
    /// The convolution whose input gradient this is: from the output back to the input.
    pub fn as_conv(&self) -> ConvShape {
        ConvShape {
            in_channels: self.out_channels,
            out_channels: self.in_channels,
            height: self.out_height(),
            width: self.out_width(),
            kernel: self.kernel,
            stride: self.stride,
            padding: self.padding,
        }
    }
    /// Sizes usable, output_padding below the stride, and the adjoint convolution consistent.
    pub fn validate(&self) -> Result<()> {
        if [self.in_channels, self.out_channels, self.height, self.width, self.kernel, self.stride].contains(&0) {
            return Err(Error::shape("conv_transpose2d", format!("{self:?}: sizes must be at least 1")));
        }
        if self.output_padding >= self.stride {
            return Err(Error::shape("conv_transpose2d", format!("{self:?}: output_padding must be below the stride")));
        }
        let c = self.as_conv();
        if c.height == 0 || c.width == 0 {
            return Err(Error::shape("conv_transpose2d", format!("{self:?}: the output would be empty")));
        }
        c.validate()?;
        if (c.out_height(), c.out_width()) != (self.height, self.width) {
            return Err(Error::shape("conv_transpose2d", format!("{self:?}: inconsistent geometry")));
        }
        Ok(())
    }
}

/// The product `mode` of `conv.wgsl` (0 conv, 1 input gradient / transposed conv, 2 weight
/// gradient) for convolution `s` over a batch of `n`, into `out` (added to it with `accum`).
#[allow(clippy::too_many_arguments)]
fn conv_gemm(
    tape: &mut Tape,
    mode: u32,
    n: usize,
    op1: &Tensor,
    op2: &Tensor,
    bias: Option<&Tensor>,
    out: &Tensor,
    s: &ConvShape,
    act: Act,
    accum: bool,
) -> Result<()> {
    let (oh, ow, kk) = (s.out_height(), s.out_width(), s.kernel * s.kernel);
    let cols = match mode {
        0 => s.out_channels,
        1 => s.in_channels,
        _ => s.weight_cols(),
    };
    // At most 4 columns (one input channel, one output channel): every invocation of a workgroup
    // takes its own row block (`NARROW` in conv.wgsl).
    let narrow = cols <= 4;
    // Row operands shared by 8-lane subgroups where the device runs the subgroup matmul (the
    // same adapters: llvmpipe); not with NARROW, whose invocations have rows of their own.
    let sg = !narrow && tape.gpu().matmul_variant() == crate::MatmulVariant::Subgroup;
    // With the `subgroup` entry, the operands come from textures where the device takes them
    // (Operands::Textures; lavapipe's texel loads are the cheap ones) and they fit.
    let max_rows = tape.gpu().limits().max_texture_dimension_2d as u64;
    let fits = |t: &Tensor| t.bytes().div_ceil(crate::gpu::pool::OPERAND_TEXTURE_ROW_BYTES) <= max_rows;
    let textures = sg && tape.gpu().operands() == crate::Operands::Textures && fits(op1) && fits(op2);
    let (module, entry) = match (sg, textures) {
        (true, true) => (Module::ConvSubgroupTextures, "conv_gemm_subgroup"),
        (true, false) => (Module::ConvSubgroup, "conv_gemm_subgroup"),
        _ => (Module::Conv, "conv_gemm"),
    };
    let rb = RB;
    // (GEMM rows or, in MODE 1, row blocks; K; K per slice; `kdim`)
    let (rows, k, k_slice, kdim) = match mode {
        0 => (n * oh * ow, s.weight_cols(), K_SLICE, s.weight_cols()),
        1 => {
            // Row blocks: per image row, blocks of RB pixels within each x phase (see conv.wgsl);
            // K is sliced by output channel, each one at most K·K taps.
            let st = s.stride;
            let per_row: usize = (0..st.min(s.width)).map(|ph| (s.width - ph).div_ceil(st).div_ceil(rb)).sum();
            (n * s.height * per_row, s.out_channels, (K_SLICE / kk).max(1), per_row)
        }
        _ => (s.out_channels, n * oh * ow, K_SLICE, s.weight_cols()),
    };
    if rows > u32::MAX as usize / 4 || k > u32::MAX as usize {
        return Err(Error::shape("conv2d", format!("a batch of {n} is too large for {s:?}")));
    }
    let row_blocks = if mode == 1 { rows } else { rows.div_ceil(rb) };
    let wg_rows = row_blocks.div_ceil(if narrow { 64 } else { 8 });
    let gy = wg_rows.min(65535);
    let gx = if narrow { 1 } else { cols.div_ceil(32) };
    let groups = [gx as u32, gy as u32, wg_rows.div_ceil(gy) as u32];
    let slices = k.div_ceil(k_slice).max(1);
    for sl in 0..slices {
        let (k0, k1) = (sl * k_slice, ((sl + 1) * k_slice).min(k));
        let last = sl + 1 == slices;
        let slice_bias = if last { bias } else { None };
        let slice_act = if last { act } else { Act::Identity };
        let mut defines = vec![
            ("MODE", format!("{mode}u")),
            ("BIAS", slice_bias.is_some().to_string()),
            ("ACCUM", (accum || sl > 0).to_string()),
            ("NARROW", narrow.to_string()),
            ("SG", sg.to_string()),
        ];
        defines.extend(slice_act.defines());
        let key = KernelKey { module, entry, defines, inputs: 3, outputs: 1 };
        let params = Params::new()
            .u(n as u32)
            .u(s.in_channels as u32)
            .u(s.height as u32)
            .u(s.width as u32)
            .u(s.out_channels as u32)
            .u(oh as u32)
            .u(ow as u32)
            .u(s.kernel as u32)
            .u(s.kernel as u32)
            .u(s.stride as u32)
            .u(s.padding as u32)
            .u(k0 as u32)
            .u(k1 as u32)
            .u(rows as u32)
            .u(cols as u32)
            .u(kdim as u32);
        tape.dispatch(&key, params, &[op1, op2, slice_bias.unwrap_or(op1), out], groups)?;
    }
    Ok(())
}

fn expect(op: &'static str, what: &str, t: &Tensor, shape: [usize; 2]) -> Result<()> {
    if t.shape() != shape {
        return Err(Error::shape(op, format!("{what} is {:?}, expected {shape:?}", t.shape())));
    }
    Ok(())
}

/// MODE 0 (`from` = the image side) or MODE 1 (`from` = the output side) into a new tensor of the
/// other side, shapes checked: the two directions of one convolution.
#[allow(clippy::too_many_arguments)]
fn directed(
    tape: &mut Tape,
    op: &'static str,
    mode: u32,
    from: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    s: &ConvShape,
    act: Act,
) -> Result<Tensor> {
    s.validate()?;
    let n = from.rows();
    let (from_len, to_len, to_channels) = match mode {
        0 => (s.in_len(), s.out_len(), s.out_channels),
        _ => (s.out_len(), s.in_len(), s.in_channels),
    };
    expect(op, "the input", from, [n, from_len])?;
    expect(op, "the weight", w, [s.out_channels, s.weight_cols()])?;
    if let Some(b) = bias {
        expect(op, "the bias", b, [1, to_channels])?;
    }
    let to = Tensor::empty(tape.gpu(), n, to_len)?;
    conv_gemm(tape, mode, n, from, w, bias, &to, s, act, false)?;
    Ok(to)
}

/// y\[N, C_out·OH·OW\] = act(conv(x\[N, C_in·H·W\], w\[C_out, C_in·K·K\]) + b\[1, C_out\]): one
/// kernel, bias and activation fused.
pub fn conv2d_forward(
    tape: &mut Tape,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    s: &ConvShape,
    act: Act,
) -> Result<Tensor> {
    directed(tape, "conv2d", 0, x, w, bias, s, act)
}

/// dx\[N, C_in·H·W\] of convolution `s` from dy\[N, C_out·OH·OW\] and w\[C_out, C_in·K·K\]; with a
/// bias \[1, C_in\] and activation this is the transposed convolution's forward.
pub fn conv2d_input_grad(
    tape: &mut Tape,
    dy: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    s: &ConvShape,
    act: Act,
) -> Result<Tensor> {
    directed(tape, "conv2d input gradient", 1, dy, w, bias, s, act)
}

/// dw\[C_out, C_in·K·K\] of convolution `s` from its input x\[N, C_in·H·W\] and dy\[N, C_out·OH·OW\]
/// (added into `into` when given).
pub fn conv2d_weight_grad(
    tape: &mut Tape,
    x: &Tensor,
    dy: &Tensor,
    s: &ConvShape,
    into: Option<&Tensor>,
) -> Result<Tensor> {
    s.validate()?;
    let n = x.rows();
    expect("conv2d weight gradient", "x", x, [n, s.in_len()])?;
    expect("conv2d weight gradient", "dy", dy, [n, s.out_len()])?;
    let dw = match into {
        Some(t) => {
            expect("conv2d weight gradient", "the destination", t, [s.out_channels, s.weight_cols()])?;
            t.clone()
        }
        None => Tensor::empty(tape.gpu(), s.out_channels, s.weight_cols())?,
    };
    conv_gemm(tape, 2, n, x, dy, None, &dw, s, Act::Identity, into.is_some())?;
    Ok(dw)
}

/// Per-channel sums \[1, C\] of y\[N, C·P\] (P values per channel): a conv layer's bias gradient.
pub fn channel_sums(tape: &mut Tape, y: &Tensor, channels: usize) -> Result<Tensor> {
    let n = y.rows();
    if channels == 0 || !y.cols().is_multiple_of(channels) {
        return Err(Error::shape("channel_sums", format!("{} columns are not {channels} channels", y.cols())));
    }
    let per = y.reshape(n * channels, y.cols() / channels)?;
    let sums = reduce::row_sum(tape, &per, 1.0)?.reshape(n, channels)?;
    reduce::col_sum(tape, &sums, 1.0)
}

/// Convolution layer (PyTorch's `Conv2d` followed by `act`): y\[N, C_out·OH·OW\] from
/// x\[N, C_in·H·W\], w\[C_out, C_in·K·K\] and b\[1, C_out\].
/// Backward: g = dy ⊙ act'(y); dx = conv input gradient of g; dw = weight gradient of (x, g);
/// db = channel sums of g.
pub fn conv2d(tape: &mut Tape, x: Var, w: Var, b: Option<Var>, s: ConvShape, act: Act) -> Result<Var> {
    let (xv, wv) = (val(tape, x), val(tape, w));
    let bv = b.map(|b| val(tape, b));
    let y = conv2d_forward(tape, &xv, &wv, bv.as_ref(), &s, act)?;
    let yk = y.clone();
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(tape.record(&inputs, y, move |t, dy, needs| {
        let g = act_backward(t, dy, &yk, act)?;
        let dx = if needs[0] { Some(conv2d_input_grad(t, &g, &wv, None, &s, Act::Identity)?) } else { None };
        let dw = if needs[1] { Some(conv2d_weight_grad(t, &xv, &g, &s, None)?) } else { None };
        let db = if needs.len() > 2 && needs[2] { Some(channel_sums(t, &g, s.out_channels)?) } else { None };
        Ok(vec![dx, dw, db])
    }))
}

/// Transposed convolution layer (PyTorch's `ConvTranspose2d` followed by `act`):
/// y\[N, C_out·OH·OW\] from x\[N, C_in·H·W\], w\[C_in, C_out·K·K\] and b\[1, C_out\].
/// Backward: g = dy ⊙ act'(y); dx = the convolution of g by w; dw = the adjoint convolution's
/// weight gradient with the roles of image and gradient swapped; db = channel sums of g.
pub fn conv_transpose2d(
    tape: &mut Tape,
    x: Var,
    w: Var,
    b: Option<Var>,
    s: ConvTransposeShape,
    act: Act,
) -> Result<Var> {
    s.validate()?;
    let c = s.as_conv();
    let (xv, wv) = (val(tape, x), val(tape, w));
    let bv = b.map(|b| val(tape, b));
    let y = conv2d_input_grad(tape, &xv, &wv, bv.as_ref(), &c, act)?;
    let yk = y.clone();
    let mut inputs = vec![x, w];
    inputs.extend(b);
    Ok(tape.record(&inputs, y, move |t, dy, needs| {
        let g = act_backward(t, dy, &yk, act)?;
        let dx = if needs[0] { Some(conv2d_forward(t, &g, &wv, None, &c, Act::Identity)?) } else { None };
        let dw = if needs[1] { Some(conv2d_weight_grad(t, &g, &xv, &c, None)?) } else { None };
        let db = if needs.len() > 2 && needs[2] { Some(channel_sums(t, &g, s.out_channels)?) } else { None };
        Ok(vec![dx, dw, db])
    }))
}
