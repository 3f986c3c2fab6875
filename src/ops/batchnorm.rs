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

/// The most values per channel ([`batch_norm2d`]'s B·H·W): each of a channel's 256 invocations
/// walks at most 30,000 of them, far below llvmpipe's 65,535-iteration cap.
pub const BN2D_MAX_VALUES: usize = 256 * 30_000;

fn key2d(entry: &'static str, inputs: u32, outputs: u32) -> KernelKey {
    KernelKey { module: Module::BatchNorm2d, entry, defines: Vec::new(), inputs, outputs }
}

/// Per-channel batch normalization of NCHW rows (PyTorch's `BatchNorm2d`, ε = 1e-5, momentum 0.1)
/// with the activation after it fused:
/// x\[B, C·HW\] -> y = act(γ_c (x − mean_c)/√(var_c + ε) + β_c), γ, β \[1, C\].
///
/// Training (`training`) normalises with the batch statistics over the B·HW values of each
/// channel (biased variance) and updates `running` (unbiased variance, as PyTorch); evaluation
/// uses `running` and records no backward. Backward, with g = dy·act'(y) and x̂ the normalised
/// input: dβ = Σ g, dγ = Σ g·x̂, dx = γ/√(var + ε)·(g − dβ/N − x̂·dγ/N), N = B·HW.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm2d(
    tape: &mut Tape,
    x: Var,
    gamma: Var,
    beta: Var,
    channels: usize,
    running: &BnRunning,
    training: bool,
    act: crate::ops::Act,
) -> Result<Var> {
    let (xv, gv, bv) = (val(tape, x), val(tape, gamma), val(tape, beta));
    let (b, cols) = (xv.rows(), xv.cols());
    if channels == 0 || cols % channels != 0 {
        return Err(Error::shape(
            "batch_norm2d",
            format!("x is {:?}: its rows are not {channels} channels of equal size", xv.shape()),
        ));
    }
    let hw = cols / channels;
    for (what, t) in [("gamma", &gv), ("beta", &bv), ("running mean", &running.mean), ("running var", &running.var)] {
        if t.len() != channels {
            return Err(Error::shape("batch_norm2d", format!("{what} is {:?}, expected [1, {channels}]", t.shape())));
        }
    }
    if training && (b * hw < 2 || b * hw > BN2D_MAX_VALUES) {
        return Err(Error::arg(
            "batch",
            format!(
                "batch normalization needs 2..={BN2D_MAX_VALUES} values per channel (batch x pixels), got {b} x {hw}"
            ),
        ));
    }
    let p = Params::new()
        .u(b as u32)
        .u(channels as u32)
        .u(hw as u32)
        .u(act.id())
        .f(act.alpha())
        .f(BN_EPS)
        .f(running.momentum)
        .u(0);
    let stats = Tensor::empty(tape.gpu(), 2, channels)?;
    if training {
        tape.dispatch(
            &key2d("bn2d_stats", 1, 3),
            p,
            &[&xv, &stats, &running.mean, &running.var],
            [channels as u32, 1, 1],
        )?;
    } else {
        let grid = [channels.div_ceil(64) as u32, 1, 1];
        tape.dispatch(&key2d("bn2d_eval_stats", 2, 1), p, &[&running.mean, &running.var, &stats], grid)?;
    }
    let y = Tensor::empty(tape.gpu(), b, cols)?;
    let n = b * cols;
    tape.dispatch(&key2d("bn2d_forward", 4, 1), p, &[&xv, &stats, &gv, &bv, &y], grid_1d(n, 256))?;
    if !training {
        return Ok(tape.input(y));
    }
    let yk = y.clone();
    Ok(tape.record(&[x, gamma, beta], y, move |t, dy, _| {
        let (dg, db) = (Tensor::empty(t.gpu(), 1, channels)?, Tensor::empty(t.gpu(), 1, channels)?);
        t.dispatch(&key2d("bn2d_backward_sums", 4, 2), p, &[dy, &yk, &xv, &stats, &dg, &db], [channels as u32, 1, 1])?;
        let dx = Tensor::empty(t.gpu(), b, cols)?;
        t.dispatch(&key2d("bn2d_backward_dx", 7, 1), p, &[dy, &yk, &xv, &stats, &gv, &dg, &db, &dx], grid_1d(n, 256))?;
        Ok(vec![Some(dx), Some(dg), Some(db)])
    }))
}
