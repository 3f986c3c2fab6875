//! Fixed-order reductions (`shaders/reduce.wgsl`): column sums x\[R,C\] -> \[1,C\] (bias gradients),
//! row sums x\[R,C\] -> \[R,1\] (per-example totals) and full sums x\[R,C\] -> \[1,1\] (loss totals).
//! Deterministic: the same input gives the same bits on the same adapter.

use super::elementwise::broadcast_to;
use super::val;
use crate::error::Result;
use crate::gpu::pipeline::{KernelKey, Module};
use crate::tape::{Params, Tape, Var};
use crate::tensor::Tensor;

/// Elements each invocation adds before the tree (ITEMS in reduce.wgsl) times the workgroup size.
const CHUNK: usize = 16 * 256;

fn key(entry: &'static str) -> KernelKey {
    KernelKey { module: Module::Reduce, entry, defines: Vec::new(), inputs: 1, outputs: 1 }
}

fn params(rows: usize, cols: usize, s: f32) -> Params {
    Params::new().u(rows as u32).u(cols as u32).f(s)
}

/// Rows (or columns) one invocation of col_sum/row_sum adds (SPAN in reduce.wgsl).
const SPAN: usize = 4096;

/// y\[1,C\] = s · Σ_r x\[r, :\], in levels of at most SPAN rows per invocation.
pub fn col_sum(tape: &mut Tape, x: &Tensor, s: f32) -> Result<Tensor> {
    col_sum_into(tape, x, s, None)
}

/// [`col_sum`] with the result written into `out` when given (a \[1, C\] tensor or view).
pub fn col_sum_into(tape: &mut Tape, x: &Tensor, s: f32, out: Option<Tensor>) -> Result<Tensor> {
    if let Some(o) = &out {
        if o.shape() != [1, x.cols()] {
            return Err(crate::Error::shape(
                "col_sum",
                format!("output is {:?}, expected [1, {}]", o.shape(), x.cols()),
            ));
        }
    }
    let mut cur = x.clone();
    loop {
        let chunks = cur.rows().div_ceil(SPAN);
        let last = chunks == 1;
        let y = match (&out, last) {
            (Some(o), true) => o.clone(),
            _ => Tensor::empty(tape.gpu(), chunks, cur.cols())?,
        };
        let p = params(cur.rows(), cur.cols(), if last { s } else { 1.0 });
        tape.dispatch(&key("col_sum"), p, &[&cur, &y], [cur.cols().div_ceil(64) as u32, chunks as u32, 1])?;
        if last {
            return Ok(y);
        }
        cur = y;
    }
}

/// y\[R,1\] = s · Σ_c x\[:, c\], in levels of at most SPAN columns per invocation.
pub fn row_sum(tape: &mut Tape, x: &Tensor, s: f32) -> Result<Tensor> {
    let mut cur = x.clone();
    loop {
        let chunks = cur.cols().div_ceil(SPAN);
        let last = chunks == 1;
        let y = Tensor::empty(tape.gpu(), cur.rows(), chunks)?;
        let p = params(cur.rows(), cur.cols(), if last { s } else { 1.0 });
        tape.dispatch(&key("row_sum"), p, &[&cur, &y], [cur.rows().div_ceil(64) as u32, chunks as u32, 1])?;
        if last {
            return Ok(y);
        }
        cur = y;
    }
}

/// y\[1,1\] = s · Σ x, by levels of per-workgroup fixed-shape trees.
pub fn sum_all(tape: &mut Tape, x: &Tensor, s: f32) -> Result<Tensor> {
    let mut cur = x.clone();
    loop {
        let n = cur.len();
        let groups = n.div_ceil(CHUNK);
        let last = groups == 1;
        let y = Tensor::empty(tape.gpu(), 1, groups)?;
        let scale = if last { s } else { 1.0 };
        tape.dispatch(&key("sum_partial"), params(n, CHUNK, scale), &[&cur, &y], [groups as u32, 1, 1])?;
        cur = y;
        if last {
            return Ok(cur);
        }
    }
}

// ------------------------------------------------------------------------- differentiable ops

/// Σ x -> \[1,1\].  Backward: dx = dz broadcast.
pub fn sum(tape: &mut Tape, x: Var) -> Result<Var> {
    scaled_sum(tape, x, 1.0)
}

/// mean(x) -> \[1,1\].  Backward: dx = dz / n broadcast.
pub fn mean(tape: &mut Tape, x: Var) -> Result<Var> {
    let n = tape.value(x).len() as f32;
    scaled_sum(tape, x, 1.0 / n)
}

fn scaled_sum(tape: &mut Tape, x: Var, s: f32) -> Result<Var> {
    let xv = val(tape, x);
    let z = sum_all(tape, &xv, s)?;
    let (r, c) = (xv.rows(), xv.cols());
    Ok(tape.record(&[x], z, move |t, g, _| Ok(vec![Some(broadcast_to(t, g, r, c, s)?)])))
}

/// Column sums x\[R,C\] -> \[1,C\].  Backward: every row of dx is dz.
pub fn sum_cols(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = val(tape, x);
    let z = col_sum(tape, &xv, 1.0)?;
    let (r, c) = (xv.rows(), xv.cols());
    Ok(tape.record(&[x], z, move |t, g, _| Ok(vec![Some(broadcast_to(t, g, r, c, 1.0)?)])))
}

/// Row sums x\[R,C\] -> \[R,1\].  Backward: every column of dx is dz.
pub fn sum_rows(tape: &mut Tape, x: Var) -> Result<Var> {
    let xv = val(tape, x);
    let z = row_sum(tape, &xv, 1.0)?;
    let (r, c) = (xv.rows(), xv.cols());
    Ok(tape.record(&[x], z, move |t, g, _| Ok(vec![Some(broadcast_to(t, g, r, c, 1.0)?)])))
}
