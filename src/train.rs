//! The training loop: epochs of shuffled batches gathered on the GPU, one submission per step
//! (forward, backward, Adam), losses accumulated on the GPU and read back once per log interval,
//! per-epoch evaluation on the test split, and the run directory: `metrics.jsonl`,
//! `checkpoint.safetensors`, `samples.png`, `reconstructions.png`.

use std::collections::HashMap;
use std::io::Write;

use crate::clock::Clock;
use std::path::{Path, PathBuf};

use crate::checkpoint::{self, Checkpoint};
use crate::data::gpu::GpuImages;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Adam, Optimizer};
use crate::ops::vae::Noise;
use crate::tape::Tape;
use crate::tensor::Tensor;
use crate::vae::metrics::{active_units, kl_per_dim};
use crate::vae::objective::Objective;
use crate::vae::{Vae, VaeConfig, STREAM_EPS};

/// Noise stream of dynamic binarization.
const STREAM_BINARIZE: u32 = 1;
/// Seed offset of the evaluation noise (fixed per run, so test losses are comparable).
const EVAL_SEED: u64 = 0xE7A1_5EED;

/// Optimisation settings (stored in checkpoints, so a resumed run continues with the same ones).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    /// Examples per step (the last batch of an epoch may be smaller, as in PyTorch's loader).
    pub batch: usize,
    /// Adam learning rate.
    pub lr: f32,
    /// Seed of initialisation, shuffling and every random draw.
    pub seed: u64,
    /// β, reduction, KL schedule and free bits (default: the plain ELBO).
    pub objective: Objective,
    /// Draw binary pixels x ~ Bernoulli(pixel) anew every step.
    pub binarize: bool,
    /// Steps between progress read-backs.
    pub log_every: usize,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions { batch: 128, lr: 1e-3, seed: 1, objective: Objective::default(), binarize: false, log_every: 20 }
    }
}

impl TrainOptions {
    /// Refuses nonsensical values, naming the flag.
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(Error::arg("batch", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::arg("lr", format!("{} is not a positive learning rate", self.lr)));
        }
        self.objective.validate()?;
        if self.log_every == 0 {
            return Err(Error::arg("log_every", "must be at least 1"));
        }
        Ok(())
    }
}

/// Losses of an evaluation, in nats per example (negative-ELBO convention: lower is better).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalLoss {
    /// recon + kl: the negative ELBO, whatever β or schedule the objective used.
    pub loss: f64,
    /// −log p(x|z), one sample of z per example.
    pub recon: f64,
    /// KL(q(z|x) || N(0, I)).
    pub kl: f64,
}

/// One line of `metrics.jsonl` (serialized in this field order: the timings last, everything
/// else deterministic for a seed).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based epoch.
    pub epoch: u64,
    /// Optimizer steps taken so far.
    pub step: u64,
    /// Mean training loss over the epoch's batches (per example).
    pub train_loss: f64,
    /// Training reconstruction term (per example).
    pub train_recon: f64,
    /// Training KL term (per example).
    pub train_kl: f64,
    /// Test loss (per example).
    pub test_loss: f64,
    /// Test reconstruction term.
    pub recon: f64,
    /// Test KL term.
    pub kl: f64,
    /// β·w(step): the KL multiplier at the end of the epoch.
    pub kl_weight: f64,
    /// Active units on the test split (Cov_x(E_q\[z\]) > 0.01, Burda et al.).
    pub active_units: usize,
    /// Test KL per latent dimension (nats per example).
    pub kl_per_dim: Vec<f64>,
    /// Wall time of the epoch's training steps.
    pub epoch_seconds: f64,
    /// Training examples per second.
    pub examples_per_second: f64,
}

impl std::fmt::Display for EpochMetrics {
    /// One line: the epoch's losses, KL weight, active units and speed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "epoch {:>3}  train {:8.2}  test {:8.2} (recon {:8.2}, kl {:6.2})  kl weight {:.3}  AU {:>2}/{}  {:5.1} s  {:6.0} ex/s",
            self.epoch,
            self.train_loss,
            self.test_loss,
            self.recon,
            self.kl,
            self.kl_weight,
            self.active_units,
            self.kl_per_dim.len(),
            self.epoch_seconds,
            self.examples_per_second
        )
    }
}

impl EpochMetrics {
    /// The JSON line of `metrics.jsonl`.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// What the loop reports while it runs.
#[derive(Clone, Debug)]
pub struct Progress {
    /// 1-based epoch.
    pub epoch: u64,
    /// Batches done in this epoch.
    pub batch: usize,
    /// Batches in the epoch.
    pub batches: usize,
    /// Mean loss per example over the epoch so far (read back every `log_every` steps).
    pub running_loss: f64,
    /// Training throughput so far this epoch.
    pub examples_per_second: f64,
}

/// One epoch in progress (see [`Trainer::begin_epoch`]).
pub struct EpochState {
    /// 1-based epoch number.
    pub epoch: u64,
    order: Tensor,
    /// Examples per step.
    pub batch: usize,
    /// Steps in the epoch.
    pub batches: usize,
    /// Examples the epoch visits.
    pub n: usize,
    acc_recon: Tensor,
    acc_kl: Tensor,
}

/// File names in a run directory ([`FitOptions::run_dir`]).
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// One JSON object per epoch ([`EpochMetrics`]).
pub const METRICS_FILE: &str = "metrics.jsonl";

/// Whether [`Trainer::fit`] goes on after an epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// Train the next epoch.
    Continue,
    /// Stop after this one.
    Stop,
}

/// Options of [`Trainer::fit`].
#[derive(Clone, Debug, Default)]
pub struct FitOptions {
    /// Train until this many epochs are done (a resumed trainer counts its earlier ones).
    pub epochs: u64,
    /// A run directory (created when missing): after every epoch, `checkpoint.safetensors` is
    /// written there (atomically) and then one line is appended to `metrics.jsonl`.
    pub run_dir: Option<PathBuf>,
    /// Extra checkpoint metadata (e.g. `data`: where the data came from).
    pub meta: HashMap<String, String>,
}

/// Checkpoint metadata key holding the `metrics.jsonl` line of the checkpoint's epoch.
pub const METRICS_META: &str = "metrics";

/// Refuses to start a new run in `dir` when it already holds a run's checkpoint or metrics: a
/// second run would overwrite the first's checkpoint and mix its epochs into the same metrics.
pub fn check_fresh_run_dir(dir: &Path) -> Result<()> {
    if dir.join(CHECKPOINT_FILE).exists() || dir.join(METRICS_FILE).exists() {
        return Err(Error::arg(
            "out",
            format!(
                "{} already holds a run; continue it with --resume {} (Trainer::resume) or choose another directory",
                dir.display(),
                dir.join(CHECKPOINT_FILE).display()
            ),
        ));
    }
    Ok(())
}

/// A model, its optimizer and the data on the GPU.
pub struct Trainer {
    /// The device.
    pub gpu: Gpu,
    /// The model being trained.
    pub vae: Vae,
    /// Its optimizer.
    pub opt: Adam,
    /// Options.
    pub opts: TrainOptions,
    /// Training images on the GPU.
    pub train: GpuImages,
    /// Test images on the GPU.
    pub test: GpuImages,
    /// Steps taken.
    pub step: u64,
    /// Epochs completed.
    pub epoch: u64,
}

impl Trainer {
    /// A fresh model for `split`.
    pub fn new(gpu: &Gpu, config: VaeConfig, opts: TrainOptions, split: &Split) -> Result<Self> {
        opts.validate()?;
        check_split(&config, split)?;
        let vae = Vae::new(gpu, config, opts.seed)?;
        let opt = Adam::new(opts.lr)?;
        Self::with_model(gpu, vae, opt, opts, split, 0, 0)
    }

    /// Continues from a checkpoint: weights, Adam moments, step, epoch, and the options the run
    /// was trained with (learning rate, batch, seed, objective, binarization), so that training
    /// on continues exactly as the uninterrupted run would. Change `opts` afterwards to deviate.
    pub fn resume(gpu: &Gpu, ck: &Checkpoint, split: &Split) -> Result<Self> {
        let opts = ck.train_options()?;
        opts.validate().map_err(|e| Error::Checkpoint { path: ck.path.clone(), detail: e.to_string() })?;
        check_split(&ck.config, split)?;
        let vae = ck.vae(gpu)?;
        let mut opt = Adam::new(opts.lr)?;
        ck.restore_adam(gpu, &vae, &mut opt)?;
        let step = ck.meta_u64("step").unwrap_or(0);
        let epoch = ck.meta_u64("epoch").unwrap_or(0);
        Self::with_model(gpu, vae, opt, opts, split, step, epoch)
    }

    fn with_model(
        gpu: &Gpu,
        vae: Vae,
        opt: Adam,
        opts: TrainOptions,
        split: &Split,
        step: u64,
        epoch: u64,
    ) -> Result<Self> {
        Ok(Trainer {
            gpu: gpu.clone(),
            train: GpuImages::upload(gpu, &split.train)?,
            test: GpuImages::upload(gpu, &split.test)?,
            vae,
            opt,
            opts,
            step,
            epoch,
        })
    }

    /// One epoch over the training split. Returns (loss, recon, kl) per example and the seconds.
    /// Blocks; see [`Trainer::train_epoch_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn train_epoch(&mut self, on_progress: &mut dyn FnMut(&Progress)) -> Result<(EvalLoss, f64)> {
        pollster::block_on(self.train_epoch_async(on_progress))
    }

    /// [`Trainer::train_epoch`] without blocking: it awaits the progress read-backs (every
    /// `log_every` steps) and the epoch's sums, which in a browser hands the tab back to the page.
    pub async fn train_epoch_async(&mut self, on_progress: &mut dyn FnMut(&Progress)) -> Result<(EvalLoss, f64)> {
        let mut e = self.begin_epoch()?;
        let start = Clock::now();
        for i in 0..e.batches {
            let report = (i + 1) % self.opts.log_every == 0 && i + 1 < e.batches;
            if let Some(seen_loss) = self.step_async(&mut e, i, report).await? {
                let seen = ((i + 1) * e.batch).min(e.n) as f64;
                let eps = seen / start.elapsed().max(1e-9);
                on_progress(&Progress {
                    epoch: e.epoch,
                    batch: i + 1,
                    batches: e.batches,
                    running_loss: seen_loss,
                    examples_per_second: eps,
                });
            }
        }
        let (batches, n, epoch) = (e.batches, e.n, e.epoch);
        let loss = self.end_epoch_async(e).await?;
        let secs = start.elapsed();
        on_progress(&Progress {
            epoch,
            batch: batches,
            batches,
            running_loss: loss.loss,
            examples_per_second: n as f64 / secs,
        });
        Ok((loss, secs))
    }

    /// Starts the next epoch: draws and uploads its order and zeroes the loss accumulators. Then
    /// [`Trainer::step`] each batch and [`Trainer::end_epoch`] (what [`Trainer::train_epoch`]
    /// does; benchmarks time the steps alone).
    pub fn begin_epoch(&mut self) -> Result<EpochState> {
        let gpu = self.gpu.clone();
        let epoch = self.epoch + 1;
        let (_, order) = self.train.order(&gpu, self.opts.seed, epoch, true)?;
        let n = self.train.n;
        let b = self.opts.batch.min(n);
        // Batch normalization (BN-VAE) has no statistics for a lone example: drop such a tail.
        let batches = if self.vae.bn.is_some() && n % b == 1 && n > 1 { n / b } else { n.div_ceil(b) };
        let n = if batches * b < n { batches * b } else { n };
        Ok(EpochState {
            epoch,
            order,
            batch: b,
            batches,
            n,
            acc_recon: Tensor::zeros(&gpu, 1, 1)?,
            acc_kl: Tensor::zeros(&gpu, 1, 1)?,
        })
    }

    /// Records and submits training step `i` of the epoch (batch `i` of its order): forward,
    /// backward and Adam in one submission, the batch's loss terms added to the epoch's sums on
    /// the GPU. With `report`, reads those sums back and returns the running loss per example.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step(&mut self, e: &mut EpochState, i: usize, report: bool) -> Result<Option<f64>> {
        pollster::block_on(self.step_async(e, i, report))
    }

    /// [`Trainer::step`] without blocking (only a report waits for the GPU).
    pub async fn step_async(&mut self, e: &mut EpochState, i: usize, report: bool) -> Result<Option<f64>> {
        if i >= e.batches {
            return Err(Error::arg("step", format!("batch {i} is past the epoch's {} batches", e.batches)));
        }
        let off = i * e.batch;
        let bs = e.batch.min(e.n - off);
        let mut tape = Tape::new(&self.gpu);
        let noise = |stream| Noise { seed: self.opts.seed, step: self.step as u32, stream };
        let bin = self.opts.binarize.then(|| noise(STREAM_BINARIZE));
        let x = self.train.batch(&mut tape, &e.order, off, bs, bin)?;
        let xv = tape.input(x.clone());
        let y = condition(&mut tape, &self.train, &e.order, off, bs, &self.vae.config)?;
        let out = self.vae.forward_cond(&mut tape, xv, y, noise(STREAM_EPS))?;
        let cfg = &self.vae.config;
        let (rs, ks) = self.opts.objective.scales(self.step, bs, cfg.input_dim, cfg.latent);
        let acc = Some((&e.acc_recon, &e.acc_kl));
        let loss = self.vae.objective_loss_acc(&mut tape, &out, &x, rs, ks, self.opts.objective.free_bits, acc)?;
        tape.backward(loss.total)?;
        self.opt.step(&mut tape, &self.vae.params())?;

        let reads = if report { Some((tape.read(&e.acc_recon)?, tape.read(&e.acc_kl)?)) } else { None };
        tape.submit()?;
        self.step += 1;
        match reads {
            Some((rr, rk)) => {
                let seen = (off + bs) as f64;
                Ok(Some((rr.get_async().await?[0] as f64 + rk.get_async().await?[0] as f64) / seen))
            }
            None => Ok(None),
        }
    }

    /// Ends the epoch begun by [`Trainer::begin_epoch`]: reads the loss sums back (the only
    /// wait) and returns (loss, recon, kl) per example.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn end_epoch(&mut self, e: EpochState) -> Result<EvalLoss> {
        pollster::block_on(self.end_epoch_async(e))
    }

    /// [`Trainer::end_epoch`] without blocking.
    pub async fn end_epoch_async(&mut self, e: EpochState) -> Result<EvalLoss> {
        let recon = e.acc_recon.to_vec_async(&self.gpu).await?[0] as f64 / e.n as f64;
        let kl = e.acc_kl.to_vec_async(&self.gpu).await?[0] as f64 / e.n as f64;
        let loss = recon + kl;
        if !loss.is_finite() {
            return Err(Error::Gpu(format!(
                "the training loss became {loss} in epoch {}: lower the learning rate or check the data",
                e.epoch
            )));
        }
        self.epoch = e.epoch;
        Ok(EvalLoss { loss, recon, kl })
    }

    /// The negative ELBO on `images` (one z sample per example from a fixed evaluation seed).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate(&self, images: &GpuImages) -> Result<EvalLoss> {
        Ok(self.evaluate_full(images)?.loss)
    }

    /// [`Trainer::evaluate`] plus the latent statistics.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn evaluate_full(&self, images: &GpuImages) -> Result<EvalReport> {
        pollster::block_on(self.evaluate_full_async(images))
    }

    /// [`Trainer::evaluate_full`] without blocking.
    pub async fn evaluate_full_async(&self, images: &GpuImages) -> Result<EvalReport> {
        evaluate_full_async(&self.gpu, &self.vae, images, eval_batch(self.opts.batch), self.opts.seed).await
    }

    /// Trains until `opts.epochs` epochs are done: after each epoch it evaluates on the test split,
    /// builds the epoch's [`EpochMetrics`] (what `metrics.jsonl` holds), writes the checkpoint and
    /// then appends the metrics line when `opts.run_dir` is set, and calls `on_epoch`, which may
    /// stop the run. `on_progress` sees the running loss during each epoch. Returns every epoch's
    /// metrics. Blocks; see [`Trainer::fit_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn fit(
        &mut self,
        opts: &FitOptions,
        on_progress: &mut dyn FnMut(&Progress),
        on_epoch: &mut dyn FnMut(&EpochMetrics) -> Control,
    ) -> Result<Vec<EpochMetrics>> {
        pollster::block_on(self.fit_async(opts, on_progress, on_epoch))
    }

    /// [`Trainer::fit`] without blocking.
    pub async fn fit_async(
        &mut self,
        opts: &FitOptions,
        on_progress: &mut dyn FnMut(&Progress),
        on_epoch: &mut dyn FnMut(&EpochMetrics) -> Control,
    ) -> Result<Vec<EpochMetrics>> {
        if let Some(dir) = &opts.run_dir {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
            if self.epoch == 0 {
                check_fresh_run_dir(dir)?;
            }
        }
        let mut all = Vec::new();
        while self.epoch < opts.epochs {
            let m = self.epoch_with_metrics_async(on_progress).await?;
            if let Some(dir) = &opts.run_dir {
                // The checkpoint carries its epoch's metrics line: a run killed between the two
                // writes gets the line back on resume (see `run`), so the files never disagree.
                let mut meta = opts.meta.clone();
                meta.insert(METRICS_META.to_string(), m.to_json_line());
                self.save_with(&dir.join(CHECKPOINT_FILE), &meta)?;
                append_jsonl(&dir.join(METRICS_FILE), &m.to_json_line())?;
            }
            let control = on_epoch(&m);
            all.push(m);
            if control == Control::Stop {
                break;
            }
        }
        Ok(all)
    }

    /// One epoch of training, then the test evaluation: the epoch's [`EpochMetrics`].
    pub async fn epoch_with_metrics_async(&mut self, on_progress: &mut dyn FnMut(&Progress)) -> Result<EpochMetrics> {
        let (tr, secs) = self.train_epoch_async(on_progress).await?;
        let report = self.evaluate_full_async(&self.test).await?;
        let te = report.loss;
        Ok(EpochMetrics {
            epoch: self.epoch,
            step: self.step,
            train_loss: tr.loss,
            train_recon: tr.recon,
            train_kl: tr.kl,
            test_loss: te.loss,
            recon: te.recon,
            kl: te.kl,
            kl_weight: self.opts.objective.kl_weight(self.step.saturating_sub(1)),
            active_units: report.active_units,
            kl_per_dim: report.kl_per_dim,
            epoch_seconds: secs,
            examples_per_second: self.train.n as f64 / secs,
        })
    }

    /// Writes a checkpoint of the current state (atomic).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path.as_ref(), &HashMap::new())
    }

    /// Like [`Trainer::save`] with extra metadata (e.g. `data`: where the data came from).
    pub fn save_with(&self, path: &Path, extra: &HashMap<String, String>) -> Result<()> {
        let mut meta = extra.clone();
        meta.insert("step".to_string(), self.step.to_string());
        meta.insert("epoch".to_string(), self.epoch.to_string());
        meta.insert("seed".to_string(), self.opts.seed.to_string());
        meta.insert("lr".to_string(), self.opt.lr.to_string());
        meta.insert("batch".to_string(), self.opts.batch.to_string());
        let o = &self.opts.objective;
        meta.insert("beta".to_string(), o.beta.to_string());
        meta.insert("reduction".to_string(), o.reduction.name().to_string());
        meta.insert("kl_schedule".to_string(), o.schedule.describe());
        meta.insert("free_bits".to_string(), o.free_bits.to_string());
        meta.insert("kl_weight".to_string(), o.kl_weight(self.step.saturating_sub(1)).to_string());
        let mut opts = self.opts.clone();
        opts.lr = self.opt.lr;
        let json = serde_json::to_string(&opts)
            .map_err(|e| Error::Checkpoint { path: path.to_path_buf(), detail: e.to_string() })?;
        meta.insert("options".to_string(), json);
        checkpoint::save(path, &self.gpu, &self.vae, Some(&self.opt), &meta)
    }
}

fn check_split(config: &VaeConfig, split: &Split) -> Result<()> {
    for imgs in [&split.train, &split.test] {
        if config.model == crate::vae::ModelKind::Cvae
            && (imgs.labels().is_none() || imgs.num_classes() != config.classes)
        {
            return Err(Error::arg(
                "model",
                format!(
                    "{} has {} label classes but the conditional VAE needs labels of {} classes",
                    split.name,
                    imgs.num_classes(),
                    config.classes
                ),
            ));
        }
        if imgs.dim() != config.input_dim {
            return Err(Error::arg(
                "data",
                format!(
                    "{} has examples of shape {:?} ({} values) but the model takes {} inputs",
                    split.name,
                    imgs.shape(),
                    imgs.dim(),
                    config.input_dim
                ),
            ));
        }
        if config.likelihood == crate::vae::Likelihood::Bernoulli && !imgs.in_unit_interval() {
            return Err(Error::arg(
                "data",
                format!(
                    "{} has values outside [0, 1], which a Bernoulli likelihood cannot model; scale them to \
                     [0, 1] or use a Gaussian likelihood",
                    split.name
                ),
            ));
        }
    }
    Ok(())
}

/// The evaluation batch used with training batch `b` (evaluation draws z per batch, so the same
/// batching gives the same figures).
pub fn eval_batch(b: usize) -> usize {
    b.max(256)
}

/// An evaluation: the losses and what the encoder does with the latent space.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalReport {
    /// Negative ELBO, reconstruction and KL, nats per example.
    pub loss: EvalLoss,
    /// KL per latent dimension, nats per example (zeros for the autoencoder).
    pub kl_per_dim: Vec<f64>,
    /// Active units: dimensions whose posterior mean varies over the data (variance > 0.01).
    pub active_units: usize,
    /// Posterior means of every example, \[n, Z\] row-major (for plots and disentanglement).
    pub mu: Vec<f32>,
}

/// The negative ELBO of `vae` on `images` in batches of `batch`, per example.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate(gpu: &Gpu, vae: &Vae, images: &GpuImages, batch: usize, seed: u64) -> Result<EvalLoss> {
    Ok(evaluate_full(gpu, vae, images, batch, seed)?.loss)
}

/// [`evaluate`] plus KL per dimension, active units and the posterior means.
#[cfg(not(target_arch = "wasm32"))]
pub fn evaluate_full(gpu: &Gpu, vae: &Vae, images: &GpuImages, batch: usize, seed: u64) -> Result<EvalReport> {
    pollster::block_on(evaluate_full_async(gpu, vae, images, batch, seed))
}

/// [`evaluate_full`] without blocking.
pub async fn evaluate_full_async(
    gpu: &Gpu,
    vae: &Vae,
    images: &GpuImages,
    batch: usize,
    seed: u64,
) -> Result<EvalReport> {
    let (_, order) = images.order(gpu, seed, 0, false)?;
    let n = images.n;
    let z = vae.config.latent;
    let b = batch.clamp(1, n);
    let acc_recon = Tensor::zeros(gpu, 1, 1)?;
    let acc_kl = Tensor::zeros(gpu, 1, 1)?;
    let (mut mus, mut lvs) = (Vec::with_capacity(n * z), Vec::with_capacity(n * z));
    for (i, off) in (0..n).step_by(b).enumerate() {
        let bs = b.min(n - off);
        let mut tape = Tape::no_grad(gpu);
        let x = images.batch(&mut tape, &order, off, bs, None)?;
        let xv = tape.input(x.clone());
        let y = condition(&mut tape, images, &order, off, bs, &vae.config)?;
        let out =
            vae.forward_cond(&mut tape, xv, y, Noise { seed: seed ^ EVAL_SEED, step: i as u32, stream: STREAM_EPS })?;
        vae.objective_loss_acc(&mut tape, &out, &x, 1.0, 1.0, 0.0, Some((&acc_recon, &acc_kl)))?;
        // The head's output holds [mu | logvar] per row (mu alone for the autoencoder); the
        // BN-VAE's mean is the normalized one.
        let head_read = tape.read(&tape.value(out.head).clone())?;
        let bn_mu_read = match (&vae.bn, out.mu) {
            (Some(_), Some(mu)) => Some(tape.read(&tape.value(mu).clone())?),
            _ => None,
        };
        tape.submit()?;
        let head = head_read.get_async().await?;
        let width = head.len() / bs;
        for row in head.chunks_exact(width) {
            if width == 2 * z {
                lvs.extend_from_slice(&row[z..]);
            } else {
                lvs.extend(std::iter::repeat_n(0.0, z));
            }
        }
        match bn_mu_read {
            Some(r) => mus.extend(r.get_async().await?),
            None => head.chunks_exact(width).for_each(|row| mus.extend_from_slice(&row[..z])),
        }
    }
    let recon = acc_recon.to_vec_async(gpu).await?[0] as f64 / n as f64;
    let kl = acc_kl.to_vec_async(gpu).await?[0] as f64 / n as f64;
    let kl_dims = if vae.has_logvar() { kl_per_dim(&mus, &lvs, n, z)? } else { vec![0.0; z] };
    let au = active_units(&mus, n, z, 0.01)?;
    Ok(EvalReport {
        loss: EvalLoss { loss: recon + kl, recon, kl },
        kl_per_dim: kl_dims,
        active_units: au.count,
        mu: mus,
    })
}

/// Appends one line to `path` (creating it) and syncs it to disk.
pub fn append_jsonl(path: &Path, line: &str) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
    writeln!(f, "{line}").map_err(io)?;
    f.sync_data().map_err(io)
}

/// The CVAE's one-hot labels of a batch as a tape input; `None` for other models (the data hands
/// out labels, the model decides whether it needs them).
fn condition(
    tape: &mut Tape,
    images: &GpuImages,
    order: &Tensor,
    offset: usize,
    b: usize,
    config: &VaeConfig,
) -> Result<Option<crate::tape::Var>> {
    if config.model != crate::vae::ModelKind::Cvae {
        return Ok(None);
    }
    let y = images.onehot(tape, order, offset, b, config.classes)?;
    Ok(Some(tape.input(y)))
}
