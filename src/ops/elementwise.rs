//! Elementwise kernels (`shaders/elementwise.wgsl`) and the differentiable ops on them:
//! activation, add, sub, mul, scale. Every op here maps x\[M,N\] (and y\[M,N\]) to z\[M,N\].

use super::{grid_1d, same_shape, val, Act};
use crate::error::Result;
use crate::gpu::pipeline::{KernelKey, Module};
use crate::tape::{Params, Tape, Var};
use crate::tensor::Tensor;

const WG: usize = 256;

fn key(entry: &'static str, inputs: u32, outputs: u32, act: Act) -> KernelKey {
    KernelKey { module: Module::Elementwise, entry, defines: act.defines(), inputs, outputs }
}

fn params(n: usize, cols: usize, s0: f32, s1: f32) -> Params {
    Params::new().u(n as u32).u(cols as u32).f(s0).f(s1)
}

fn launch(
    tape: &mut Tape,
    entry: &'static str,
    inputs: &[&Tensor],
    out: &Tensor,
    act: Act,
    s0: f32,
    s1: f32,
) -> Result<()> {
    let k = key(entry, inputs.len() as u32, 1, act);
    let mut bufs: Vec<&Tensor> = inputs.to_vec();
    bufs.push(out);
    tape.dispatch(&k, params(out.len(), out.cols(), s0, s1), &bufs, grid_1d(out.len(), WG))
}

/// y\[M,N\] = value.
pub fn fill(tape: &mut Tape, rows: usize, cols: usize, value: f32) -> Result<Tensor> {
    let y = Tensor::empty(tape.gpu(), rows, cols)?;
    launch(tape, "fill", &[], &y, Act::Identity, value, 0.0)?;
    Ok(y)
}

/// z = a·x + b·y (add: 1, 1; sub: 1, −1).
pub fn axpby(tape: &mut Tape, a: f32, x: &Tensor, b: f32, y: &Tensor) -> Result<Tensor> {
    same_shape("axpby", x, y)?;
    let z = Tensor::empty(tape.gpu(), x.rows(), x.cols())?;
    launch(tape, "axpby", &[x, y], &z, Act::Identity, a, b)?;
    Ok(z)
}

/// z = x ⊙ y.
pub fn mul_t(tape: &mut Tape, x: &Tensor, y: &Tensor) -> Result<Tensor> {
    same_shape("mul", x, y)?;
    let z = Tensor::empty(tape.gpu(), x.rows(), x.cols())?;
    launch(tape, "mul", &[x, y], &z, Act::Identity, 0.0, 0.0)?;
    Ok(z)
}

/// y = s·x + t (copy: s = 1, t = 0).
pub fn affine(tape: &mut Tape, x: &Tensor, s: f32, t: f32) -> Result<Tensor> {
    let y = Tensor::empty(tape.gpu(), x.rows(), x.cols())?;
    launch(tape, "affine", &[x], &y, Act::Identity, s, t)?;
    Ok(y)
}

/// dst = x (same shape; dst may be a view, e.g. a packed parameter's gradient).
pub fn copy_into(tape: &mut Tape, x: &Tensor, dst: &Tensor) -> Result<()> {
    same_shape("copy_into", x, dst)?;
    launch(tape, "affine", &[x], dst, Act::Identity, 1.0, 0.0)
}

/// A copy of x in a new buffer.
pub fn copy(tape: &mut Tape, x: &Tensor) -> Result<Tensor> {
    affine(tape, x, 1.0, 0.0)
}

/// y += s·x, in place (gradient accumulation, SGD updates). x and y must not share a buffer.
pub fn axpy_inplace(tape: &mut Tape, s: f32, x: &Tensor, y: &Tensor) -> Result<()> {
    same_shape("axpy_inplace", x, y)?;
    if x.same_buffer(y) {
        return Err(crate::Error::arg("axpy_inplace", "x and y are the same buffer; use affine instead"));
    }
    launch(tape, "axpy_inplace", &[x], y, Act::Identity, s, 0.0)
}

/// y = act(x).
pub fn act_forward(tape: &mut Tape, x: &Tensor, act: Act) -> Result<Tensor> {
    let y = Tensor::empty(tape.gpu(), x.rows(), x.cols())?;
    launch(tape, "act_forward", &[x], &y, act, 0.0, 0.0)?;
    Ok(y)
}

/// dx = dy ⊙ act'(x), from the forward output y = act(x).
pub fn act_backward(tape: &mut Tape, dy: &Tensor, y: &Tensor, act: Act) -> Result<Tensor> {
    same_shape("act_backward", dy, y)?;
    if act == Act::Identity {
        return Ok(dy.clone());
    }
    let dx = Tensor::empty(tape.gpu(), y.rows(), y.cols())?;
    launch(tape, "act_backward", &[dy, y], &dx, act, 0.0, 0.0)?;
    Ok(dx)
}

/// Broadcasts into y[rows, cols]: `Scalar` x\[1,1\], `Row` x\[1,cols\] (every row), `Col` x\[rows,1\]
/// (every column), each times s.
pub fn broadcast_to(tape: &mut Tape, x: &Tensor, rows: usize, cols: usize, s: f32) -> Result<Tensor> {
    let entry = match x.shape() {
        [1, 1] => "broadcast_scalar",
        [1, c] if c == cols => "broadcast_row",
        [r, 1] if r == rows => "broadcast_col",
        other => {
            return Err(crate::Error::shape("broadcast", format!("cannot broadcast {other:?} to [{rows}, {cols}]")));
        }
    };
    let y = Tensor::empty(tape.gpu(), rows, cols)?;
    launch(tape, entry, &[x], &y, Act::Identity, s, 0.0)?;
    Ok(y)
}

// ------------------------------------------------------------------------- differentiable ops

/// z = act(x).  Backward: dx = dz ⊙ act'(x) (computed from z).
pub fn activation(tape: &mut Tape, x: Var, act: Act) -> Result<Var> {
    let y = act_forward(tape, &val(tape, x), act)?;
    let yk = y.clone();
    Ok(tape.record(&[x], y, move |t, g, _| Ok(vec![Some(act_backward(t, g, &yk, act)?)])))
}

/// z = x + y.  Backward: dx = dz, dy = dz.
pub fn add(tape: &mut Tape, x: Var, y: Var) -> Result<Var> {
    let z = axpby(tape, 1.0, &val(tape, x), 1.0, &val(tape, y))?;
    Ok(tape.record(&[x, y], z, |_, g, _| Ok(vec![Some(g.clone()), Some(g.clone())])))
}

/// z = x − y.  Backward: dx = dz, dy = −dz.
pub fn sub(tape: &mut Tape, x: Var, y: Var) -> Result<Var> {
    let z = axpby(tape, 1.0, &val(tape, x), -1.0, &val(tape, y))?;
    Ok(tape.record(&[x, y], z, |t, g, needs| {
        let dy = if needs[1] { Some(affine(t, g, -1.0, 0.0)?) } else { None };
        Ok(vec![Some(g.clone()), dy])
    }))
}

/// z = x ⊙ y.  Backward: dx = dz ⊙ y, dy = dz ⊙ x.
pub fn mul(tape: &mut Tape, x: Var, y: Var) -> Result<Var> {
    let (xv, yv) = (val(tape, x), val(tape, y));
    let z = mul_t(tape, &xv, &yv)?;
    Ok(tape.record(&[x, y], z, move |t, g, needs| {
        let dx = if needs[0] { Some(mul_t(t, g, &yv)?) } else { None };
        let dy = if needs[1] { Some(mul_t(t, g, &xv)?) } else { None };
        Ok(vec![dx, dy])
    }))
}

/// z = s·x.  Backward: dx = s·dz.
pub fn scale(tape: &mut Tape, x: Var, s: f32) -> Result<Var> {
    let z = affine(tape, &val(tape, x), s, 0.0)?;
    Ok(tape.record(&[x], z, move |t, g, _| Ok(vec![Some(affine(t, g, s, 0.0)?)])))
}
