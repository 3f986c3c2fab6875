//! Evaluating a trained model on a dataset: the summary `wgvae eval` prints, as a value a program
//! can use (the negative ELBO and its terms, the latent space's use, and optionally the
//! importance-weighted log-likelihood and disentanglement against known factors).

use crate::data::gpu::GpuImages;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tape::Tape;
use crate::vae::{iwae, Vae};

/// What to evaluate besides the ELBO.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    /// Examples per evaluation batch (each batch draws its own z).
    pub batch: usize,
    /// Seed of the evaluation's noise.
    pub seed: u64,
    /// Importance samples per example for the IWAE log-likelihood (Burda et al. 2016), if wanted.
    pub iwae_k: Option<usize>,
    /// Only the first this many test examples for IWAE (it costs K decoder passes per example).
    pub iwae_examples: Option<usize>,
    /// Also the Mutual Information Gap (Chen et al. 2018) of the posterior means of every example
    /// (train and test) against the data's generating factors.
    pub disentanglement: bool,
}

/// The evaluation of a model on a split's test examples, in nats per example (negative-ELBO
/// convention: lower is better).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct EvalSummary {
    /// The checkpoint evaluated, if the model came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Its epoch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    /// Its KL weight β·w(step) at the last step.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kl_weight: Option<f64>,
    /// Where the data came from.
    pub data: String,
    /// Test examples evaluated.
    pub examples: usize,
    /// `vae`, `ae` or `cvae`.
    pub model: String,
    /// recon + kl.
    pub test_loss: f64,
    /// −log p(x|z), one z per example.
    pub recon: f64,
    /// KL(q(z|x) || N(0, I)).
    pub kl: f64,
    /// Dimensions whose posterior mean varies over the data (variance > 0.01).
    pub active_units: usize,
    /// KL per latent dimension.
    pub kl_per_dim: Vec<f64>,
    /// The unit of the losses.
    pub unit: &'static str,
    /// log p(x) ≈ IWAE bound with `iwae_k` samples, averaged over `iwae_examples`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iwae_log_likelihood: Option<f64>,
    /// Importance samples per example.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iwae_k: Option<usize>,
    /// Examples the IWAE estimate averages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iwae_examples: Option<usize>,
    /// The Mutual Information Gap in \[0, 1\].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mig: Option<f64>,
    /// MIG per generating factor, by the factor's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mig_per_factor: Option<std::collections::BTreeMap<String, f64>>,
}

/// Evaluates `vae` on `split` (see [`EvalOptions`]).
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate_split(gpu: &Gpu, vae: &Vae, split: &Split, o: &EvalOptions) -> Result<EvalSummary> {
    if o.batch == 0 {
        return Err(Error::arg("batch", "must be at least 1"));
    }
    let test = GpuImages::upload(gpu, &split.test)?;
    let r = crate::train::evaluate_full(gpu, vae, &test, o.batch, o.seed)?;
    let mut s = EvalSummary {
        checkpoint: None,
        epoch: None,
        kl_weight: None,
        data: split.name.clone(),
        examples: split.test.n(),
        model: vae.config.model.to_string(),
        test_loss: r.loss.loss,
        recon: r.loss.recon,
        kl: r.loss.kl,
        active_units: r.active_units,
        kl_per_dim: r.kl_per_dim.clone(),
        unit: "nats per example (negative ELBO, lower is better)",
        iwae_log_likelihood: None,
        iwae_k: None,
        iwae_examples: None,
        mig: None,
        mig_per_factor: None,
    };
    if let Some(k) = o.iwae_k {
        if o.iwae_examples == Some(0) {
            return Err(Error::arg("iwae_examples", "must be at least 1"));
        }
        let imgs = split.test.head(o.iwae_examples.unwrap_or(split.test.n()));
        let gi = GpuImages::upload(gpu, &imgs)?;
        let iw = iwae_log_likelihood(gpu, vae, &gi, k, o.seed)?;
        s.iwae_log_likelihood = Some(iw.log_likelihood);
        s.iwae_k = Some(iw.k);
        s.iwae_examples = Some(iw.examples);
    }
    if o.disentanglement {
        let (Some(trf), Some(tf)) = (split.train.factors(), split.test.factors()) else {
            return Err(Error::arg(
                "disentanglement",
                format!("{} has no known generating factors; the built-in sprites and shapes do", split.name),
            ));
        };
        // Codes of every example (train and test): MIG's histograms need thousands of samples.
        let train = GpuImages::upload(gpu, &split.train)?;
        let mut codes = crate::train::evaluate_full(gpu, vae, &train, o.batch, o.seed)?.mu;
        codes.extend(&r.mu);
        let factors: Vec<Vec<u8>> = trf.iter().chain(tf).cloned().collect();
        let names = split.train.factor_names();
        let sizes: Vec<usize> =
            (0..names.len()).map(|k| factors.iter().map(|f| f[k] as usize + 1).max().unwrap_or(1)).collect();
        let m = crate::vae::metrics::mutual_information_gap(
            &codes,
            factors.len(),
            vae.config.latent,
            &factors,
            &sizes,
            20,
        )?;
        s.mig = Some(m.mig);
        s.mig_per_factor = Some(names.iter().cloned().zip(m.per_factor).collect());
    }
    Ok(s)
}

/// Evaluates the model of checkpoint `ck` on its data (or `data`), with the evaluation batch and
/// seed its training used (so the figures match its metrics.jsonl) unless `batch` is given.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate_checkpoint(
    gpu: &Gpu,
    ck: &crate::checkpoint::Checkpoint,
    data: Option<&std::path::Path>,
    batch: Option<usize>,
    mut o: EvalOptions,
) -> Result<EvalSummary> {
    let split = ck.data(data)?;
    let vae = ck.vae(gpu)?;
    let opts = ck.train_options()?;
    o.batch = batch.unwrap_or(crate::train::eval_batch(opts.batch));
    o.seed = opts.seed;
    let mut s = evaluate_split(gpu, &vae, &split, &o)?;
    s.checkpoint = Some(ck.path.display().to_string());
    s.epoch = ck.meta_parsed("epoch")?;
    s.kl_weight = ck.meta_parsed("kl_weight")?;
    Ok(s)
}

/// The mean IWAE estimate of log p(x) over every image of `images` (in order, unbinarized), with
/// `k` importance samples per image (1..=5000). Batch i of the evaluation draws its eps from
/// (seed, step = i, [`iwae::STREAM_IWAE`]) as the [module docs](crate::vae::iwae) describe; the batches hold
/// max(32, 1024 / k) images (fewer in the last), so the result is a function of (model, images,
/// k, seed) only.
///
/// Errors: `k` out of range and the plain autoencoder ([`crate::vae::ModelKind::Ae`], which has
/// no q(z|x)) are [`Error::InvalidArgument`].
pub fn iwae_log_likelihood(gpu: &Gpu, vae: &Vae, images: &GpuImages, k: usize, seed: u64) -> Result<iwae::IwaeResult> {
    crate::vae::iwae::check(vae, k)?;
    let n = images.n;
    let z = vae.config.latent;
    // Keep the Philox element index (b·K + k)·Z + j within u32.
    let max_b = (u32::MAX as usize / (k * z)).max(1);
    let b = (iwae::CHUNK_ROWS / k).max(iwae::MIN_BATCH).min(max_b).clamp(1, n);
    let (_, order) = images.order(gpu, seed, 0, false)?;
    let mut total = 0.0;
    for (i, off) in (0..n).step_by(b).enumerate() {
        let bs = b.min(n - off);
        let mut tape = Tape::no_grad(gpu);
        let x = images.batch(&mut tape, &order, off, bs, None)?;
        let est = crate::vae::iwae::run_batch(tape, vae, &x, k, seed, i as u32, iwae::CHUNK_ROWS)?;
        total += est.iter().sum::<f64>();
    }
    Ok(iwae::IwaeResult { log_likelihood: total / n as f64, k, examples: n })
}
