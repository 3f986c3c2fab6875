//! Scaled batch normalization (`shaders/batchnorm.wgsl`), the BN-VAE layer of Zhu et al. 2020:
//! y\[B,N\] = γ ⊙ (x − mean)/√(var + ε) with γ_j = √(τ + (1 − τ)·sigmoid(θ_j)) and no learned shift.
//! Training uses the batch statistics (and updates the running ones); evaluation uses the running
//! statistics and is not differentiated.

use super::{grid_1d, val};
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::tape::{Params, Tape, Var};
use crate::tensor::Tensor;

/// ε added to the variance.
pub const BN_EPS: f32 = 1e-5;

/// Running statistics of one layer, \[1, N\] each.
#[derive(Clone, Debug)]
pub struct BnRunning {
    /// Running mean (starts at 0).
    pub mean: Tensor,
    /// Running (unbiased) variance (starts at 1).
    pub var: Tensor,
    /// Weight of the newest batch (PyTorch's momentum, 0.1).
    pub momentum: f32,
}

impl BnRunning {
    /// Fresh statistics for `n` features.
    pub fn new(gpu: &crate::Gpu, n: usize) -> Result<Self> {
        Ok(BnRunning {
            mean: Tensor::zeros(gpu, 1, n)?,
            var: Tensor::from_slice(gpu, 1, n, &vec![1.0; n])?,
            momentum: 0.1,
        })
    }
}

fn key(entry: &'static str, inputs: u32, outputs: u32) -> KernelKey {
    KernelKey { module: Module::BatchNorm, entry, defines: Vec::new(), inputs, outputs }
}

fn params(rows: usize, cols: usize, s0: f32, s1: f32) -> Params {
    Params::new().u(rows as u32).u(cols as u32).f(s0).f(s1)
}

/// The BN-VAE layer on x\[B,N\] with scale parameters θ\[1,N\] and floor τ ∈ \[0, 1\].
/// Backward (training): with x̂ the normalised input and dx̂ = dy·γ,
/// dx = (dx̂ − mean_b dx̂ − x̂·mean_b(dx̂·x̂))/√(var + ε) and dθ = Σ_b dy·x̂ · dγ/dθ.
pub fn scaled_batch_norm(
    tape: &mut Tape,
    x: Var,
    theta: Var,
    tau: f32,
    running: &BnRunning,
    training: bool,
) -> Result<Var> {
    if !(0.0..=1.0).contains(&tau) {
        return Err(Error::arg("bn_tau", format!("tau = {tau} is outside [0, 1]")));
    }
    let (xv, th) = (val(tape, x), val(tape, theta));
    let (b, n) = (xv.rows(), xv.cols());
    if th.shape() != [1, n] || running.mean.shape() != [1, n] {
        return Err(Error::shape(
            "scaled_batch_norm",
            format!("x is {:?}, theta {:?}: theta must be [1, {n}]", xv.shape(), th.shape()),
        ));
    }
    if training && !(2..=16384).contains(&b) {
        return Err(Error::arg("batch", format!("batch normalization needs 2..=16384 rows per batch, got {b}")));
    }
    let cols_grid = [n.div_ceil(64) as u32, 1, 1];
    let (mean, var) = if training {
        let (m, v) = (Tensor::empty(tape.gpu(), 1, n)?, Tensor::empty(tape.gpu(), 1, n)?);
        tape.dispatch(&key("bn_stats", 1, 2), params(b, n, 0.0, 0.0), &[&xv, &m, &v], cols_grid)?;
        tape.dispatch(&key("bn_running", 1, 1), params(b, n, 0.0, running.momentum), &[&m, &running.mean], cols_grid)?;
        tape.dispatch(&key("bn_running", 1, 1), params(b, n, 1.0, running.momentum), &[&v, &running.var], cols_grid)?;
        (m, v)
    } else {
        (running.mean.clone(), running.var.clone())
    };
    let y = Tensor::empty(tape.gpu(), b, n)?;
    let p = params(b, n, tau, BN_EPS);
    tape.dispatch(&key("bn_forward", 4, 1), p, &[&xv, &mean, &var, &th, &y], grid_1d(b * n, 256))?;
    if !training {
        return Ok(tape.input(y));
    }
    Ok(tape.record(&[x, theta], y, move |t, dy, _| {
        let sums = Tensor::empty(t.gpu(), 2, n)?;
        let dtheta = Tensor::empty(t.gpu(), 1, n)?;
        t.dispatch(&key("bn_backward_sums", 5, 2), p, &[dy, &xv, &mean, &var, &th, &sums, &dtheta], cols_grid)?;
        let dx = Tensor::empty(t.gpu(), b, n)?;
        t.dispatch(&key("bn_backward_dx", 6, 1), p, &[dy, &xv, &mean, &var, &th, &sums, &dx], grid_1d(b * n, 256))?;
        Ok(vec![Some(dx), Some(dtheta)])
    }))
}
