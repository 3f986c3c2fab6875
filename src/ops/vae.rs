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
use crate::gpu::Words;
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
        return Err(Error::arg("free_bits", format!("{lambda} nats: the floor must be zero or positive")));
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

// ------------------------------------------------------------------------- fused (vae_fused.wgsl)

/// The likelihoods the fused objective computes in one pass.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FusedLikelihood {
    /// Bernoulli from logits.
    Bernoulli,
    /// Gaussian with a fixed variance σ².
    Gaussian(f32),
}

fn fused_key(
    words: Words,
    entry: &'static str,
    inputs: u32,
    outputs: u32,
    like: FusedLikelihood,
    grad: bool,
) -> KernelKey {
    let l = match like {
        FusedLikelihood::Bernoulli => 0,
        FusedLikelihood::Gaussian(_) => 1,
    };
    KernelKey {
        module: Module::VaeFused(words),
        entry,
        defines: vec![("LIKELIHOOD", format!("{l}u")), ("GRAD", grad.to_string())],
        inputs,
        outputs,
    }
}

/// Adds a batch's loss sums `recon`, `kl` (\[1, 1\] each) into the epoch accumulators: `acc_recon`
/// \[1, 1\] and `acc_kl`, \[1, 1\] or \[1, 4\] with the non-finite guard of [`fused_objective`]
/// (for losses built from the unfused ops). No gradient.
pub fn accumulate_loss(
    tape: &mut Tape,
    recon: &Tensor,
    kl: &Tensor,
    acc_recon: &Tensor,
    acc_kl: &Tensor,
) -> Result<()> {
    for (t, want) in [(recon, 1), (kl, 1), (acc_recon, 1), (acc_kl, acc_kl.len().max(1))] {
        if t.shape() != [1, want] || !(want == 1 || want == 4) {
            return Err(Error::shape("accumulate_loss", format!("{:?} is not a loss sum or accumulator", t.shape())));
        }
    }
    let key = fused_key(tape.gpu().words(), "accumulate_guarded", 2, 2, FusedLikelihood::Bernoulli, false);
    tape.dispatch(&key, Params::new(), &[recon, kl, acc_recon, acc_kl], [1, 1, 1])
}

fn latent_params(n: usize, z: usize, noise: Noise, flag: u32, s0: f32) -> Params {
    let k = crate::rng::key(noise.seed);
    Params::new().u(n as u32).u(z as u32).u(0).u(k[0]).u(k[1]).u(noise.step).u(noise.stream).u(flag).f(s0).f(0.0)
}

/// The reparameterization from the posterior parameters h\[B, 2Z\] = \[mu | logvar\] in one kernel:
/// z\[B, Z\] = mu + exp(logvar/2)·eps with eps drawn in the kernel from `noise` (the numbers
/// [`normal`] would draw), and KL(q(z|x) || N(0, I)) per example, \[B, 1\] (a constant tensor for
/// [`fused_objective`]). Backward: dmu = dz, dlogvar = dz·exp(logvar/2)·eps/2, added inside the
/// kernel to the gradient h already has (the KL term's).
pub fn latent(tape: &mut Tape, h: Var, z: usize, noise: Noise) -> Result<(Var, Tensor)> {
    let hv = val(tape, h);
    if z == 0 || hv.cols() != 2 * z {
        return Err(Error::shape(
            "latent",
            format!("posterior parameters are {:?}, expected [B, {}]", hv.shape(), 2 * z),
        ));
    }
    let b = hv.rows();
    let zt = Tensor::empty(tape.gpu(), b, z)?;
    let kl = Tensor::empty(tape.gpu(), b, 1)?;
    let like = FusedLikelihood::Bernoulli;
    tape.dispatch(
        &fused_key(tape.gpu().words(), "latent_forward", 1, 2, like, false),
        latent_params(b, z, noise, 0, 0.0),
        &[&hv, &zt, &kl],
        grid_1d(b, 64),
    )?;
    let out = tape.record(&[h], zt, move |t, dz, _| {
        let prev = t.take_grad(h);
        let dh = Tensor::empty(t.gpu(), b, 2 * z)?;
        let flag = prev.is_some() as u32;
        t.dispatch(
            &fused_key(t.gpu().words(), "latent_backward", 3, 1, like, false),
            latent_params(b * z, z, noise, flag, 0.0),
            &[dz, &hv, prev.as_ref().unwrap_or(&hv), &dh],
            grid_1d(b * z, 256),
        )?;
        Ok(vec![Some(dh)])
    });
    Ok((out, kl))
}

/// What [`fused_objective`] computed: the objective to back-propagate and the plain sums.
pub struct FusedLoss {
    /// rs·Σ recon + ks·Σ KL, \[1,1\].
    pub total: Var,
    /// Σ_b −log p(x_b|z_b), \[1,1\] (a value, no gradient).
    pub recon: Tensor,
    /// Σ_b KL_b, \[1,1\] (zero without a KL term).
    pub kl: Tensor,
}

/// The negative ELBO of a batch in three kernels: the reconstruction term of `out` (decoder
/// output \[B, D\]) against `target` with its gradient (one pass), then fixed-order sums of it and
/// of `kl_rows` (from [`latent`]; `None` for the autoencoder), total = rs·recon + ks·kl, and with
/// `acc` = (Σ recon, Σ kl) accumulators, the batch's sums added to them (a \[1, 4\] KL accumulator
/// also keeps the non-finite guard: \[1\] steps added, \[2\] the first, 1-based, whose recon or KL
/// sum was NaN or infinite, \[3\] which: 1 recon, 2 KL, 3 both). The KL term's gradient
/// flows to `head` (the posterior parameters \[B, 2Z\] the KL came from).
///
/// Backward: d out = g·rs·∂nll (computed in the forward pass, for g = 1 as when the total is the
/// loss; otherwise scaled by g), d head = g·ks·\[mu, (exp(logvar) − 1)/2\].
#[allow(clippy::too_many_arguments)]
pub fn fused_objective(
    tape: &mut Tape,
    out: Var,
    target: &Tensor,
    like: FusedLikelihood,
    kl: Option<(Var, &Tensor)>,
    rs: f32,
    ks: f32,
    acc: Option<(&Tensor, &Tensor)>,
) -> Result<FusedLoss> {
    let xv = val(tape, out);
    same_shape("fused_objective", &xv, target)?;
    if let FusedLikelihood::Gaussian(v) = like {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::arg("variance", format!("{v} is not a positive variance")));
        }
    }
    let (b, d) = (xv.rows(), xv.cols());
    let nch = d.div_ceil(16);
    let gpu = tape.gpu().clone();
    let needs_grad = tape.grad_enabled() && tape.requires_grad(out);
    let partial = Tensor::empty(&gpu, b, nch)?;
    let dout = if needs_grad { Some(Tensor::empty(&gpu, b, d)?) } else { None };
    let var = match like {
        FusedLikelihood::Bernoulli => 1.0,
        FusedLikelihood::Gaussian(v) => v,
    };
    let (head, kl_rows) = match kl {
        Some((h, rows)) => {
            if rows.shape() != [b, 1] {
                return Err(Error::shape(
                    "fused_objective",
                    format!("KL rows are {:?}, expected [{b}, 1]", rows.shape()),
                ));
            }
            (Some(h), Some(rows.clone()))
        }
        None => (None, None),
    };
    let head_val = head.map(|h| val(tape, h));
    // The KL term's gradient with respect to the head, for an upstream gradient of 1 (the total
    // is the loss, as in training), computed by the reconstruction's dispatch.
    let dhead = match (&head_val, head) {
        (Some(hv), Some(h)) if tape.grad_enabled() && tape.requires_grad(h) => Some(Tensor::empty(&gpu, b, hv.cols())?),
        _ => None,
    };
    let hz = if dhead.is_some() { head_val.as_ref().map_or(0, |h| h.cols() / 2) } else { 0 };
    let rp = Params::new()
        .u((b * nch) as u32)
        .u(d as u32)
        .u(nch as u32)
        .u(0)
        .u(0)
        .u(0)
        .u(0)
        .u(0)
        .f(rs)
        .f(var)
        .u(hz as u32)
        .f(ks);
    // Four pixels per access when rows are whole vec4s (every 28x28 or 64x64 image): same bits.
    let entry = if d.is_multiple_of(4) { "recon_fused4" } else { "recon_fused" };
    // Profiled under the reconstruction's shape (the default label would take the KL gradient's).
    let label = tape.gpu().profiling().then(|| format!("{entry} {b}x{d}"));
    tape.dispatch_labeled(
        &fused_key(tape.gpu().words(), entry, 3, 3, like, needs_grad),
        rp,
        &[
            &xv,
            target,
            head_val.as_ref().filter(|_| hz > 0).unwrap_or(&xv),
            &partial,
            dout.as_ref().unwrap_or(&partial),
            dhead.as_ref().unwrap_or(&partial),
        ],
        grid_1d((b * nch).max(b * hz), 256),
        label,
    )?;
    let (recon, klsum, total) = (Tensor::empty(&gpu, 1, 1)?, Tensor::empty(&gpu, 1, 1)?, Tensor::empty(&gpu, 1, 1)?);
    let fp = Params::new()
        .u((b * nch) as u32)
        .u(0)
        .u(if kl_rows.is_some() { b as u32 } else { 0 })
        .u(0)
        .u(0)
        .u(0)
        .u(0)
        .u(acc.is_some() as u32)
        .f(rs)
        .f(ks);
    let (ar, ak) = acc.unwrap_or((&recon, &klsum));
    tape.dispatch(
        &fused_key(tape.gpu().words(), "loss_finalize", 2, 5, like, false),
        fp,
        &[&partial, kl_rows.as_ref().unwrap_or(&partial), &recon, &klsum, &total, ar, ak],
        [1, 1, 1],
    )?;
    let mut inputs = vec![out];
    inputs.extend(head);
    let total = tape.record(&inputs, total, move |t, g, needs| {
        let dx = match (&dout, needs[0]) {
            (Some(d), true) if t.is_seed(g) => Some(d.clone()),
            (Some(d), true) => {
                let y = Tensor::empty(t.gpu(), b, d.cols())?;
                let n = y.len();
                let p = Params::new().u(n as u32);
                t.dispatch(
                    &fused_key(t.gpu().words(), "scale_by", 2, 1, like, false),
                    p,
                    &[g, d, &y],
                    grid_1d(n, 256),
                )?;
                Some(y)
            }
            _ => None,
        };
        let mut grads = vec![dx];
        if let Some(hv) = &head_val {
            let dh = if let (Some(d), true, true) = (&dhead, needs[1], t.is_seed(g)) {
                Some(d.clone())
            } else if needs[1] {
                let z = hv.cols() / 2;
                let dh = Tensor::empty(t.gpu(), b, 2 * z)?;
                let p = Params::new().u((b * z) as u32).u(z as u32).u(0).u(0).u(0).u(0).u(0).u(0).f(ks);
                t.dispatch(
                    &fused_key(t.gpu().words(), "kl_head_backward", 2, 1, like, false),
                    p,
                    &[g, hv, &dh],
                    grid_1d(b * z, 256),
                )?;
                Some(dh)
            } else {
                None
            };
            grads.push(dh);
        }
        Ok(grads)
    });
    Ok(FusedLoss { total, recon, kl: klsum })
}

/// y\[B, len\] = x\[B, start .. start+len).  Backward: dx = dy in those columns, zeros elsewhere.
pub fn slice_cols(tape: &mut Tape, x: Var, start: usize, len: usize) -> Result<Var> {
    let xv = val(tape, x);
    if len == 0 || start + len > xv.cols() {
        return Err(Error::shape("slice_cols", format!("columns {start}..{} of {:?}", start + len, xv.shape())));
    }
    let (b, n) = (xv.rows(), xv.cols());
    let y = Tensor::empty(tape.gpu(), b, len)?;
    let like = FusedLikelihood::Bernoulli;
    let p =
        move |count: usize| Params::new().u(count as u32).u(n as u32).u(start as u32).u(0).u(0).u(0).u(0).u(len as u32);
    tape.dispatch(
        &fused_key(tape.gpu().words(), "slice_cols", 1, 1, like, false),
        p(b * len),
        &[&xv, &y],
        grid_1d(b * len, 256),
    )?;
    Ok(tape.record(&[x], y, move |t, g, _| {
        let dx = Tensor::empty(t.gpu(), b, n)?;
        t.dispatch(
            &fused_key(t.gpu().words(), "pad_cols", 1, 1, like, false),
            p(b * n),
            &[g, &dx],
            grid_1d(b * n, 256),
        )?;
        Ok(vec![Some(dx)])
    }))
}
