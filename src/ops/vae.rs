//! VAE ops (`shaders/vae.wgsl`, `shaders/random.wgsl`): GPU random numbers, the
//! reparameterization z = mu + exp(logvar/2)·eps, the analytic KL(q(z|x) || N(0, I)) and the
//! Bernoulli / Gaussian reconstruction terms, each per example (\[B,1\], nats).

use super::{
    grid_1d,
    reduce::{col_sum, row_sum, sum_all},
    same_shape, val,
};
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::tape::{Params, Tape, Var};
use crate::tensor::Tensor;

fn key(module: Module, entry: &'static str, inputs: u32, outputs: u32) -> KernelKey {
    KernelKey { module, entry, defines: Vec::new(), inputs, outputs }
}

/// Identifies a random draw: the same (seed, step, stream) gives the same numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Noise {
    /// Run seed.
    pub seed: u64,
    /// Training step (or evaluation batch index).
    pub step: u32,
    /// Which use within the step (reparameterization, binarization, ...).
    pub stream: u32,
}

fn rng_params(n: usize, noise: Noise) -> Params {
    let k = crate::rng::key(noise.seed);
    Params::new().u(n as u32).u(k[0]).u(k[1]).u(noise.step).u(noise.stream)
}

/// eps\[rows, cols\] ~ N(0, 1) from Philox (see [`crate::rng::normals`] for the CPU mirror).
pub fn normal(tape: &mut Tape, rows: usize, cols: usize, noise: Noise) -> Result<Tensor> {
    let out = Tensor::empty(tape.gpu(), rows, cols)?;
    let n = out.len();
    tape.dispatch(&key(Module::Random, "normal", 0, 1), rng_params(n, noise), &[&out], grid_1d(n.div_ceil(2), 256))?;
    Ok(out)
}

/// u\[rows, cols\] ~ U(0, 1) from Philox (see [`crate::rng::uniforms`]).
pub fn uniform(tape: &mut Tape, rows: usize, cols: usize, noise: Noise) -> Result<Tensor> {
    let out = Tensor::empty(tape.gpu(), rows, cols)?;
    let n = out.len();
    tape.dispatch(&key(Module::Random, "uniform01", 0, 1), rng_params(n, noise), &[&out], grid_1d(n, 256))?;
    Ok(out)
}

fn ew_params(n: usize, cols: usize, s0: f32) -> Params {
    Params::new().u(n as u32).u(cols as u32).f(s0).f(0.0)
}

/// z\[B,Z\] = mu + exp(logvar/2)·eps.  Backward: dmu = dz; dlogvar = dz·exp(logvar/2)·eps/2.
pub fn reparameterize(tape: &mut Tape, mu: Var, logvar: Var, eps: &Tensor) -> Result<Var> {
    let (m, lv) = (val(tape, mu), val(tape, logvar));
    same_shape("reparameterize", &m, &lv)?;
    same_shape("reparameterize", &m, eps)?;
    let z = Tensor::empty(tape.gpu(), m.rows(), m.cols())?;
    let n = z.len();
    let p = ew_params(n, m.cols(), 0.0);
    tape.dispatch(&key(Module::Vae, "reparam_forward", 3, 1), p, &[&m, &lv, eps, &z], grid_1d(n, 256))?;
    let eps = eps.clone();
    Ok(tape.record(&[mu, logvar], z, move |t, g, needs| {
        let dlv = if needs[1] {
            let d = Tensor::empty(t.gpu(), g.rows(), g.cols())?;
            t.dispatch(&key(Module::Vae, "reparam_backward", 3, 1), p, &[g, &lv, &eps, &d], grid_1d(n, 256))?;
            Some(d)
        } else {
            None
        };
        Ok(vec![Some(g.clone()), dlv])
    }))
}

/// Per-example KL(N(mu, exp(logvar)) || N(0, I)) = ½ Σ_z (mu² + exp(logvar) − 1 − logvar), \[B,1\].
/// Backward: dmu = g·mu; dlogvar = g·(exp(logvar) − 1)/2.
pub fn kl_normal(tape: &mut Tape, mu: Var, logvar: Var) -> Result<Var> {
    let (m, lv) = (val(tape, mu), val(tape, logvar));
    same_shape("kl_normal", &m, &lv)?;
    let elem = Tensor::empty(tape.gpu(), m.rows(), m.cols())?;
    let n = elem.len();
    let p = ew_params(n, m.cols(), 0.0);
    tape.dispatch(&key(Module::Vae, "kl_forward", 2, 1), p, &[&m, &lv, &elem], grid_1d(n, 256))?;
    let kl = row_sum(tape, &elem, 1.0)?;
    Ok(tape.record(&[mu, logvar], kl, move |t, g, _| {
        let dmu = Tensor::empty(t.gpu(), m.rows(), m.cols())?;
        let dlv = Tensor::empty(t.gpu(), m.rows(), m.cols())?;
        t.dispatch(&key(Module::Vae, "kl_backward", 3, 2), p, &[g, &m, &lv, &dmu, &dlv], grid_1d(n, 256))?;
        Ok(vec![Some(dmu), Some(dlv)])
    }))
}

/// The free-bits KL of a batch (Kingma et al. 2016), \[1,1\]: Σ_z max(λ·B, Σ_b KL\[b,z\]) — each
/// latent dimension's batch KL counts at least λ nats per example, and a dimension under the
/// floor gets no gradient from it (the masking happens in the backward kernel).
pub fn kl_free_bits(tape: &mut Tape, mu: Var, logvar: Var, lambda: f32) -> Result<Var> {
    if !(lambda.is_finite() && lambda >= 0.0) {
        return Err(Error::arg("--free-bits", format!("{lambda} nats: the floor must be zero or positive")));
    }
    let (m, lv) = (val(tape, mu), val(tape, logvar));
    same_shape("kl_free_bits", &m, &lv)?;
    let elem = Tensor::empty(tape.gpu(), m.rows(), m.cols())?;
    let n = elem.len();
    tape.dispatch(
        &key(Module::Vae, "kl_forward", 2, 1),
        ew_params(n, m.cols(), 0.0),
        &[&m, &lv, &elem],
        grid_1d(n, 256),
    )?;
    let s = col_sum(tape, &elem, 1.0)?;
    let floor = lambda * m.rows() as f32;
    let floored = Tensor::empty(tape.gpu(), 1, m.cols())?;
    let z = m.cols();
    tape.dispatch(
        &key(Module::Vae, "free_bits_forward", 1, 1),
        ew_params(z, z, floor),
        &[&s, &floored],
        grid_1d(z, 256),
    )?;
    let total = sum_all(tape, &floored, 1.0)?;
    Ok(tape.record(&[mu, logvar], total, move |t, g, _| {
        let dmu = Tensor::empty(t.gpu(), m.rows(), m.cols())?;
        let dlv = Tensor::empty(t.gpu(), m.rows(), m.cols())?;
        let p = ew_params(n, z, floor);
        t.dispatch(
            &key(Module::Vae, "kl_backward_free_bits", 4, 2),
            p,
            &[g, &s, &m, &lv, &dmu, &dlv],
            grid_1d(n, 256),
        )?;
        Ok(vec![Some(dmu), Some(dlv)])
    }))
}

/// Per-example Bernoulli negative log-likelihood of `target` (in \[0,1\]) under `logits`, in the
/// stable form max(x,0) − x·t + log(1 + e^−|x|), summed over features: \[B,1\] nats. The target is a
/// constant (no gradient). Backward: dlogits = g·(sigmoid(x) − t).
pub fn bce_with_logits(tape: &mut Tape, logits: Var, target: &Tensor) -> Result<Var> {
    recon(tape, logits, target, "bce_forward", "bce_backward", 1.0)
}

/// Per-example Gaussian negative log-likelihood with fixed variance `var` (σ²):
/// Σ_d (x − t)²/(2σ²) + ½ log(2πσ²), \[B,1\] nats. Backward: dmean = g·(x − t)/σ².
pub fn gaussian_nll(tape: &mut Tape, mean: Var, target: &Tensor, var: f32) -> Result<Var> {
    if !(var.is_finite() && var > 0.0) {
        return Err(Error::arg("variance", format!("{var} is not a positive variance")));
    }
    recon(tape, mean, target, "gauss_forward", "gauss_backward", var)
}

fn recon(tape: &mut Tape, x: Var, target: &Tensor, fwd: &'static str, bwd: &'static str, s0: f32) -> Result<Var> {
    let xv = val(tape, x);
    same_shape(fwd, &xv, target)?;
    let elem = Tensor::empty(tape.gpu(), xv.rows(), xv.cols())?;
    let n = elem.len();
    let p = ew_params(n, xv.cols(), s0);
    tape.dispatch(&key(Module::Vae, fwd, 2, 1), p, &[&xv, target, &elem], grid_1d(n, 256))?;
    let nll = row_sum(tape, &elem, 1.0)?;
    let target = target.clone();
    Ok(tape.record(&[x], nll, move |t, g, _| {
        let dx = Tensor::empty(t.gpu(), xv.rows(), xv.cols())?;
        t.dispatch(&key(Module::Vae, bwd, 3, 1), p, &[g, &xv, &target, &dx], grid_1d(n, 256))?;
        Ok(vec![Some(dx)])
    }))
}

/// Per-example Gaussian negative log-likelihood with a learned per-pixel log-variance
/// `logvar` [1, D]: Σ_d (x − t)²·e^−lv/2 + lv/2 + ½ log 2π, \[B,1\] nats. Backward:
/// dmean = g·(x − t)·e^−lv; dlogvar = Σ_b g·(1 − (x − t)²·e^−lv)/2.
pub fn gaussian_nll_learned(tape: &mut Tape, mean: Var, target: &Tensor, logvar: Var) -> Result<Var> {
    let (xv, lv) = (val(tape, mean), val(tape, logvar));
    same_shape("gaussian_nll_learned", &xv, target)?;
    if lv.shape() != [1, xv.cols()] {
        return Err(Error::shape(
            "gaussian_nll_learned",
            format!("log-variance is {:?}, expected [1, {}]", lv.shape(), xv.cols()),
        ));
    }
    let elem = Tensor::empty(tape.gpu(), xv.rows(), xv.cols())?;
    let n = elem.len();
    let p = ew_params(n, xv.cols(), 0.0);
    tape.dispatch(&key(Module::Vae, "gauss_learned_forward", 3, 1), p, &[&xv, target, &lv, &elem], grid_1d(n, 256))?;
    let nll = row_sum(tape, &elem, 1.0)?;
    let target = target.clone();
    Ok(tape.record(&[mean, logvar], nll, move |t, g, _| {
        let dx = Tensor::empty(t.gpu(), xv.rows(), xv.cols())?;
        let dl = Tensor::empty(t.gpu(), xv.rows(), xv.cols())?;
        t.dispatch(
            &key(Module::Vae, "gauss_learned_backward", 4, 2),
            p,
            &[g, &xv, &target, &lv, &dx, &dl],
            grid_1d(n, 256),
        )?;
        Ok(vec![Some(dx), Some(col_sum(t, &dl, 1.0)?)])
    }))
}
