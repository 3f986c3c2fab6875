//! The importance-weighted estimate of log p(x) (Burda, Grosse & Salakhutdinov, "Importance
//! Weighted Autoencoders", ICLR 2016), computed on the GPU (`shaders/iwae.wgsl`):
//!
//! ```text
//! log p(x) ≈ L_K(x) = logsumexp_k [ log p(x|z_k) + log p(z_k) − log q(z_k|x) ] − log K,
//! z_k = mu + exp(logvar/2)·eps_k,  eps_k ~ N(0, I),  k = 1..K
//! ```
//!
//! with log p(x|z) the decoder's likelihood summed over the pixels (minus the Bernoulli NLL from
//! logits, or minus the Gaussian NLL with the config's fixed variance), log p(z) = Σ_j log N(z_j; 0, 1)
//! and log q(z|x) = Σ_j log N(z_j; mu_j, exp(logvar_j)). L_1 is an unbiased estimate of the ELBO;
//! E\[L_K\] increases with K and tends to log p(x) (it is a lower bound in expectation).
//!
//! The K samples of a batch of B examples are processed in chunks of S samples per example
//! (B·S decoder rows, [`CHUNK_ROWS`] by default), each chunk folded into a running (max, sum) per
//! example on the GPU (a numerically stable streaming logsumexp), one submission per chunk and one
//! read-back per batch.
//!
//! Random numbers: for the batch `step`, the eps of example b (row b of the batch), sample k
//! (0-based) and latent dimension j is element `(b·K + k)·Z + j` of
//! [`crate::rng::normals`]`(B·K·Z, seed, step, STREAM_IWAE)` — the values `random.wgsl`'s `normal`
//! kernel would write for a \[B·K, Z\] tensor — whatever the chunking.

use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::gpu::Gpu;
use crate::ops::grid_1d;
use crate::tape::{Params, Tape};
use crate::tensor::Tensor;
use crate::vae::Vae;

/// Largest K accepted.
pub const MAX_K: usize = 5000;
/// Noise stream of the IWAE samples (the reparameterization uses 0, binarization 1).
pub const STREAM_IWAE: u32 = 2;
/// Default decoder rows per chunk (B examples × S samples).
pub const CHUNK_ROWS: usize = 1024;
/// Fewest examples per evaluation batch of [`crate::eval::iwae_log_likelihood`] (more when K is small, so that
/// a chunk still has about [`CHUNK_ROWS`] rows).
pub(crate) const MIN_BATCH: usize = 32;
/// Most samples per example in one chunk: `lse_update` loops over them, and Mesa's llvmpipe aborts
/// an invocation after 65535 loop iterations.
const MAX_SAMPLES_PER_CHUNK: usize = 4096;

/// The result of [`crate::eval::iwae_log_likelihood`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IwaeResult {
    /// Mean over the examples of the estimate L_K(x) of log p(x), in nats (higher is better; the
    /// negative ELBO of [`crate::train::evaluate`] is on the opposite sign convention).
    pub log_likelihood: f64,
    /// Importance samples per example.
    pub k: usize,
    /// Number of examples averaged.
    pub examples: usize,
}

pub(crate) fn check(vae: &Vae, k: usize) -> Result<()> {
    if !(1..=MAX_K).contains(&k) {
        return Err(Error::arg("iwae_k", format!("{k} importance samples: K must be in 1..={MAX_K}")));
    }
    if !vae.has_logvar() {
        return Err(Error::arg(
            "model",
            "the importance-weighted estimate needs the posterior q(z|x), but a plain autoencoder has none \
             (train a `vae` instead of an `ae`)",
        ));
    }
    if vae.config.model == crate::vae::ModelKind::Cvae {
        return Err(Error::arg(
            "iwae_k",
            "the estimate of a conditional VAE would be log p(x|y), which needs every example's label; \
             it is not implemented (evaluate a `--model vae` checkpoint)",
        ));
    }
    Ok(())
}

fn key(entry: &'static str, inputs: u32, outputs: u32) -> KernelKey {
    KernelKey { module: Module::Iwae, entry, defines: Vec::new(), inputs, outputs }
}

/// The IWAE estimates L_K(x_b) of log p(x_b) for the rows of `x` \[B, D\] (pixels in \[0, 1\]), in
/// nats, one per row, with eps drawn from (seed, step, [`STREAM_IWAE`]) as the
/// [module docs](self) describe. Decodes chunks of about [`CHUNK_ROWS`] rows.
///
/// Errors: as [`crate::eval::iwae_log_likelihood`], plus [`Error::Shape`] when `x` does not have the model's
/// input width and [`Error::InvalidArgument`] when B·K·Z reaches 2^32.
pub fn iwae_batch(gpu: &Gpu, vae: &Vae, x: &Tensor, k: usize, seed: u64, step: u32) -> Result<Vec<f64>> {
    iwae_batch_chunked(gpu, vae, x, k, seed, step, CHUNK_ROWS)
}

/// [`iwae_batch`] with about `chunk_rows` decoder rows per chunk: each chunk holds
/// S = clamp(chunk_rows / B, 1, min(K, 4096)) samples of every example (the last chunk the
/// remaining K mod S). The chunking changes neither the samples nor, beyond f32 rounding, the
/// result.
pub fn iwae_batch_chunked(
    gpu: &Gpu,
    vae: &Vae,
    x: &Tensor,
    k: usize,
    seed: u64,
    step: u32,
    chunk_rows: usize,
) -> Result<Vec<f64>> {
    if chunk_rows == 0 {
        return Err(Error::arg("chunk_rows", "must be at least 1"));
    }
    run_batch(Tape::no_grad(gpu), vae, x, k, seed, step, chunk_rows)
}

/// Runs one batch, starting on `tape` (which may already hold the work that produced `x`).
pub(crate) fn run_batch(
    mut tape: Tape,
    vae: &Vae,
    x: &Tensor,
    k: usize,
    seed: u64,
    step: u32,
    chunk_rows: usize,
) -> Result<Vec<f64>> {
    check(vae, k)?;
    let gpu = tape.gpu().clone();
    let (b, d, zd) = (x.rows(), x.cols(), vae.config.latent);
    if (b as u64) * (k as u64) * (zd as u64) > u32::MAX as u64 {
        return Err(Error::arg(
            "k",
            format!("{b} examples × {k} samples × {zd} latents exceed 2^32 random numbers: use a smaller batch"),
        ));
    }
    let xv = tape.input(x.clone());
    let (mu, lv) = vae.encode_vars(&mut tape, xv)?;
    let Some(lv) = lv else {
        return Err(Error::arg("model", "the importance-weighted estimate needs q(z|x)"));
    };
    let (mu, lv) = (tape.value(mu).clone(), tape.value(lv).clone());
    let s_full = (chunk_rows / b).clamp(1, k.min(MAX_SAMPLES_PER_CHUNK));
    let state = Tensor::empty(&gpu, b, 2)?;
    let rng = crate::rng::key(seed);
    // Targets of the reconstruction term: x repeated S times, per distinct chunk size.
    let mut targets: Option<(usize, Tensor)> = None;
    let mut k0 = 0;
    let mut readback = None;
    while k0 < k {
        let s = s_full.min(k - k0);
        let rows = b * s;
        let target = match &targets {
            Some((ts, t)) if *ts == s => t.clone(),
            _ => {
                let t = Tensor::empty(&gpu, rows, d)?;
                let n = t.len();
                let p = Params::new().u(n as u32).u(d as u32).u(s as u32);
                tape.dispatch(&key("repeat_rows", 1, 1), p, &[x, &t], grid_1d(n, 256))?;
                targets = Some((s, t.clone()));
                t
            }
        };
        let z = Tensor::empty(&gpu, rows, zd)?;
        let lw = Tensor::empty(&gpu, rows, 1)?;
        let p = Params::new()
            .u(rows as u32)
            .u(zd as u32)
            .u(s as u32)
            .u(k0 as u32)
            .u(k as u32)
            .u(rng[0])
            .u(rng[1])
            .u(step)
            .u(STREAM_IWAE);
        tape.dispatch(&key("sample", 2, 2), p, &[&mu, &lv, &z, &lw], grid_1d(rows, 256))?;
        let zv = tape.input(z);
        let out = vae.decode_vars(&mut tape, zv)?;
        let nll = vae.recon_nll(&mut tape, out, &target)?;
        let nll = tape.value(nll).clone();
        let p = Params::new().u(b as u32).u(0).u(s as u32).u(0).u(0).u(0).u(0).u(0).u(0).u((k0 == 0) as u32);
        tape.dispatch(&key("lse_update", 2, 1), p, &[&nll, &lw, &state], grid_1d(b, 256))?;
        k0 += s;
        if k0 == k {
            readback = Some(tape.read(&state)?);
        }
        // One submission per chunk: the chunk's temporaries go back to the pool.
        tape.submit()?;
        tape = Tape::no_grad(&gpu);
    }
    let st = readback.ok_or_else(|| Error::Gpu("the IWAE state was never read back".into()))?.get()?;
    let log_k = (k as f64).ln();
    Ok(st.chunks_exact(2).map(|mt| mt[0] as f64 + (mt[1] as f64).ln() - log_k).collect())
}
