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
use crate::tape::{Readback, Tape};
use crate::tensor::Tensor;
use crate::vae::metrics::{active_units, kl_per_dim};
use crate::vae::objective::Objective;
use crate::vae::{Likelihood, Vae, VaeConfig, STREAM_EPS};

/// Noise stream of dynamic binarization.
const STREAM_BINARIZE: u32 = 1;
/// Seed offset of the evaluation noise (fixed per run, so test losses are comparable).
const EVAL_SEED: u64 = 0xE7A1_5EED;

/// A progress read-back of the epoch's loss sums, recorded at a step and not yet waited for.
struct PendingReport {
    recon: Readback,
    kl: Readback,
    /// Examples the sums cover.
    seen: usize,
    /// Batches done when it was recorded.
    batch: usize,
}

/// Most training steps one submission may hold ([`TrainOptions::steps_per_submit`]): each step
/// in flight keeps its own intermediate buffers.
pub const MAX_STEPS_PER_SUBMIT: usize = 64;

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
    /// Training steps recorded into one command buffer before it is submitted (1: every step
    /// is its own submission). More saves the per-submission cost on GPUs where a step is short;
    /// the work and its order are the same, so the results are bit-identical whatever the value.
    #[serde(default = "one")]
    pub steps_per_submit: usize,
}

fn one() -> usize {
    1
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            batch: 128,
            lr: 1e-3,
            seed: 1,
            objective: Objective::default(),
            binarize: false,
            log_every: 20,
            steps_per_submit: 1,
        }
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
        if !(1..=MAX_STEPS_PER_SUBMIT).contains(&self.steps_per_submit) {
            return Err(Error::arg(
                "steps_per_submit",
                format!("{} is not between 1 and {MAX_STEPS_PER_SUBMIT}", self.steps_per_submit),
            ));
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
    /// Something the user should know now: the loss exploding, or a rollback after a
    /// non-finite loss.
    pub warning: Option<String>,
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
    /// The trainer's step count when the epoch began.
    pub start_step: u64,
    /// The first batch to train (not 0 when resuming from a mid-epoch checkpoint).
    pub first_batch: usize,
    acc_recon: Tensor,
    /// \[KL sum, steps, first non-finite step, which term\]: see `loss_finalize`'s guard.
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
    /// What to do when a step's loss becomes NaN or infinite.
    pub on_nan: OnNan,
    /// With `run_dir`: also write the checkpoint every this many steps inside an epoch (for long
    /// epochs); a resume from it continues the epoch exactly where it stopped.
    pub checkpoint_every: Option<u64>,
    /// With `run_dir`: also keep the checkpoints of the last `keep` epochs as
    /// `checkpoint-epoch-E.safetensors` (0 or 1: only `checkpoint.safetensors`, the latest).
    pub keep: usize,
}

/// What [`Trainer::fit`] does when the GPU's guard sees a NaN or infinite loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum OnNan {
    /// Return [`Error::Diverged`] at once.
    Stop,
    /// Go back to the state at the start of the epoch (weights, Adam, step), halve the learning
    /// rate and train the epoch again; give up after [`MAX_ROLLBACKS`].
    #[default]
    Rollback,
}

/// Rollbacks [`OnNan::Rollback`] makes in one `fit` before it gives up.
pub const MAX_ROLLBACKS: u32 = 3;

/// A running loss this many times the first batch's (in absolute value) is reported as an
/// explosion ([`Progress::warning`]) before it turns into NaN.
pub const EXPLOSION_FACTOR: f64 = 100.0;

/// Where a mid-epoch checkpoint ([`FitOptions::checkpoint_every`]) stopped: resuming from it
/// continues the epoch at `batch` with the epoch's loss sums as they were, so the epoch's
/// metrics equal the uninterrupted run's. Stored as JSON under the `partial_epoch` metadata key.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PartialEpoch {
    /// The epoch in progress (1-based).
    pub epoch: u64,
    /// Batches of it done.
    pub batch: usize,
    /// Its reconstruction sum so far.
    pub acc_recon: f32,
    /// Its KL sum and non-finite guard so far (see `loss_finalize`).
    pub acc_kl: [f32; 4],
}

/// Checkpoint metadata key of a mid-epoch checkpoint's [`PartialEpoch`].
pub const PARTIAL_META: &str = "partial_epoch";

/// The trained state at the start of an epoch, on the CPU (for [`OnNan::Rollback`]).
struct Snapshot {
    values: Vec<Vec<f32>>,
    moments: Vec<Option<(Vec<f32>, Vec<f32>)>>,
    buffers: Vec<Vec<f32>>,
    adam_t: u64,
    step: u64,
    epoch: u64,
    partial: Option<PartialEpoch>,
}

/// Copies the run's checkpoint to `checkpoint-epoch-E.safetensors` (atomically) and removes
/// the epoch copies older than the last `keep`.
fn keep_epoch_checkpoint(dir: &Path, epoch: u64, keep: usize) -> Result<()> {
    let src = dir.join(CHECKPOINT_FILE);
    let bytes = std::fs::read(&src).map_err(|source| Error::Io { path: src.clone(), source })?;
    checkpoint::write_atomic(dir.join(format!("checkpoint-epoch-{epoch}.safetensors")), &bytes)?;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let old = name
            .strip_prefix("checkpoint-epoch-")
            .and_then(|n| n.strip_suffix(".safetensors"))
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|k| k + keep as u64 <= epoch);
        if old {
            std::fs::remove_file(e.path()).map_err(|source| Error::Io { path: e.path(), source })?;
        }
    }
    Ok(())
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
                "{} already holds a run: resume it from {} or choose another directory",
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
    /// The first batch's loss per example (the explosion warning's reference), and whether the
    /// warning was given.
    first_loss: Option<f64>,
    warned: bool,
    /// The epoch a mid-epoch checkpoint stopped in (set by `resume`, taken by `begin_epoch`).
    partial: Option<PartialEpoch>,
    /// Mid-epoch checkpoints while `fit` runs: every this many steps, into this file, with
    /// this metadata.
    mid_epoch: Option<(u64, PathBuf, HashMap<String, String>)>,
    /// Steps recorded and not yet submitted ([`TrainOptions::steps_per_submit`]), and how many.
    pending: Option<(Tape, usize)>,
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
        let mut t = Self::with_model(gpu, vae, opt, opts, split, step, epoch)?;
        if let Some(p) = ck.meta.get(PARTIAL_META) {
            let bad = |d: String| Error::Checkpoint { path: ck.path.clone(), detail: d };
            let p: PartialEpoch =
                serde_json::from_str(p).map_err(|e| bad(format!("the `{PARTIAL_META}` metadata is invalid: {e}")))?;
            let batches = t.train.n.div_ceil(t.opts.batch.min(t.train.n));
            if p.epoch != epoch + 1 || p.batch == 0 || p.batch >= batches || (p.batch as u64) > step {
                return Err(bad(format!(
                    "the `{PARTIAL_META}` metadata ({p:?}) does not fit epoch {epoch}, step {step}"
                )));
            }
            t.partial = Some(p);
        }
        Ok(t)
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
            first_loss: None,
            warned: false,
            partial: None,
            mid_epoch: None,
            pending: None,
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
        // A progress read-back is waited for one step late, once the next step is queued behind
        // it: waiting at once would leave the device idle until the host records the next step,
        // and on a CPU adapter in a VM, idle cores wake up late (about 16 ms per read-back on the
        // 2-core VM of BENCHMARKS.md, 7% of an epoch at the default `log_every`).
        let mut pending: Option<PendingReport> = None;
        for i in e.first_batch..e.batches {
            // The very first step of a run is read back too: its loss is the reference of the
            // explosion warning.
            let first = self.first_loss.is_none() && i == 0;
            let report = first || ((i + 1) % self.opts.log_every == 0 && i + 1 < e.batches);
            let new = self.step_record(&mut e, i, report)?;
            if let Some(r) = pending.take() {
                self.deliver(&e, r, start, on_progress).await?;
            }
            pending = new;
            if let Some((every, path, meta)) = &self.mid_epoch {
                if self.step.is_multiple_of(*every) && i + 1 < e.batches {
                    let (path, meta) = (path.clone(), meta.clone());
                    self.save_partial(&e, i + 1, &path, meta).await?;
                }
            }
        }
        if let Some(r) = pending.take() {
            self.deliver(&e, r, start, on_progress).await?;
        }
        let (batches, n, epoch) = (e.batches, e.n, e.epoch);
        let loss = self.end_epoch_async(e).await?;
        let secs = start.elapsed();
        let warning = self.explosion(loss.loss);
        on_progress(&Progress {
            epoch,
            batch: batches,
            batches,
            running_loss: loss.loss,
            examples_per_second: n as f64 / secs,
            warning,
        });
        Ok((loss, secs))
    }

    /// Starts the next epoch: draws and uploads its order and zeroes the loss accumulators. Then
    /// [`Trainer::step`] each batch and [`Trainer::end_epoch`] (what [`Trainer::train_epoch`]
    /// does; benchmarks time the steps alone).
    pub fn begin_epoch(&mut self) -> Result<EpochState> {
        self.flush()?;
        let gpu = self.gpu.clone();
        let epoch = self.epoch + 1;
        let (_, order) = self.train.order(&gpu, self.opts.seed, epoch, true)?;
        let n = self.train.n;
        let b = self.opts.batch.min(n);
        // Batch normalization (BN-VAE) has no statistics for a lone example: drop such a tail.
        let batches = if self.vae.bn.is_some() && n % b == 1 && n > 1 { n / b } else { n.div_ceil(b) };
        let n = if batches * b < n { batches * b } else { n };
        let (acc_recon, acc_kl) = (Tensor::zeros(&gpu, 1, 1)?, Tensor::zeros(&gpu, 1, 4)?);
        let first_batch = match self.partial.take() {
            Some(p) if p.epoch == epoch && p.batch < batches => {
                acc_recon.write(&gpu, &[p.acc_recon])?;
                acc_kl.write(&gpu, &p.acc_kl)?;
                p.batch
            }
            _ => 0,
        };
        Ok(EpochState {
            epoch,
            order,
            batch: b,
            batches,
            n,
            start_step: self.step - first_batch as u64,
            first_batch,
            acc_recon,
            acc_kl,
        })
    }

    /// Records and submits training step `i` of the epoch (batch `i` of its order): forward,
    /// backward and Adam in one submission, the batch's loss terms added to the epoch's sums on
    /// the GPU. With `report`, reads those sums back and returns the running loss per example.
    /// With [`TrainOptions::steps_per_submit`] above 1 a step may wait on the trainer for the
    /// next ones to join its submission (a report, the epoch's last batch and a mid-epoch
    /// checkpoint submit at once): call [`Trainer::flush`] before reading the model between
    /// steps.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn step(&mut self, e: &mut EpochState, i: usize, report: bool) -> Result<Option<f64>> {
        pollster::block_on(self.step_async(e, i, report))
    }

    /// [`Trainer::step`] without blocking (only a report waits for the GPU).
    pub async fn step_async(&mut self, e: &mut EpochState, i: usize, report: bool) -> Result<Option<f64>> {
        match self.step_record(e, i, report)? {
            Some(r) => Ok(Some(self.resolve_report(e, r).await?)),
            None => Ok(None),
        }
    }

    /// A report's running loss per example, once its read-back has run (and the non-finite
    /// guard it carries is checked).
    async fn resolve_report(&self, e: &EpochState, r: PendingReport) -> Result<f64> {
        let kl = r.kl.get_async().await?;
        self.check_guard(e, &kl)?;
        Ok((r.recon.get_async().await?[0] as f64 + kl[0] as f64) / r.seen as f64)
    }

    /// Resolves `r` and hands its [`Progress`] to `on_progress` (see [`Trainer::train_epoch`]).
    async fn deliver(
        &mut self,
        e: &EpochState,
        r: PendingReport,
        start: Clock,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<()> {
        let (batch, seen) = (r.batch, r.seen);
        let seen_loss = self.resolve_report(e, r).await?;
        let warning = self.explosion(seen_loss);
        on_progress(&Progress {
            epoch: e.epoch,
            batch,
            batches: e.batches,
            running_loss: seen_loss,
            examples_per_second: seen as f64 / start.elapsed().max(1e-9),
            warning,
        });
        Ok(())
    }

    /// [`Trainer::step_async`] up to the submission: with `report`, the read-back of the epoch's
    /// sums, recorded and submitted but not waited for.
    fn step_record(&mut self, e: &mut EpochState, i: usize, report: bool) -> Result<Option<PendingReport>> {
        if i >= e.batches {
            return Err(Error::arg("step", format!("batch {i} is past the epoch's {} batches", e.batches)));
        }
        let off = i * e.batch;
        let bs = e.batch.min(e.n - off);
        let (mut tape, held) = match self.pending.take() {
            Some((mut t, held)) => {
                t.clear_graph();
                (t, held)
            }
            None => (Tape::new(&self.gpu), 0),
        };
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
        self.step += 1;
        // Submit with a read-back, at the end of the epoch, before a mid-epoch checkpoint, or
        // once `steps_per_submit` steps are recorded; otherwise the next step joins this tape.
        let checkpoint_next = self.mid_epoch.as_ref().is_some_and(|(every, _, _)| self.step.is_multiple_of(*every));
        if report || i + 1 == e.batches || checkpoint_next || held + 1 >= self.opts.steps_per_submit {
            tape.submit()?;
        } else {
            self.pending = Some((tape, held + 1));
        }
        Ok(reads.map(|(recon, kl)| PendingReport { recon, kl, seen: off + bs, batch: i + 1 }))
    }

    /// Submits the steps recorded and not yet submitted (see
    /// [`TrainOptions::steps_per_submit`]); [`Trainer::step`] does it on its own at the end of
    /// an epoch and whenever it reads back, so only code that waits on the device between steps
    /// (a benchmark) needs this.
    pub fn flush(&mut self) -> Result<()> {
        match self.pending.take() {
            Some((mut t, _)) => t.submit(),
            None => Ok(()),
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
        self.flush()?;
        let recon = e.acc_recon.to_vec_async(&self.gpu).await?[0] as f64 / e.n as f64;
        let acc_kl = e.acc_kl.to_vec_async(&self.gpu).await?;
        self.check_guard(&e, &acc_kl)?;
        let kl = acc_kl[0] as f64 / e.n as f64;
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

    /// The explosion warning for running loss `loss`, once per trainer: when it is
    /// [`EXPLOSION_FACTOR`] times the first batch's loss or more.
    fn explosion(&mut self, loss: f64) -> Option<String> {
        let first = *self.first_loss.get_or_insert(loss);
        // NaN is not an explosion here (the non-finite guard reports it).
        let exploded = loss.abs() >= EXPLOSION_FACTOR * first.abs().max(1e-3);
        if self.warned || !exploded {
            return None;
        }
        self.warned = true;
        Some(format!(
            "the training loss is exploding: {loss:.4e} per example, against {first:.4e} at the first step; \
             the learning rate ({}) is probably too high",
            self.opt.lr
        ))
    }

    /// Writes a mid-epoch checkpoint: the state after `batch` batches of epoch `e`, with its
    /// loss sums ([`PartialEpoch`]).
    async fn save_partial(
        &self,
        e: &EpochState,
        batch: usize,
        path: &Path,
        mut meta: HashMap<String, String>,
    ) -> Result<()> {
        let acc_recon = e.acc_recon.to_vec_async(&self.gpu).await?[0];
        let kl = e.acc_kl.to_vec_async(&self.gpu).await?;
        self.check_guard(e, &kl)?; // a diverged state is never saved
        let p = PartialEpoch { epoch: e.epoch, batch, acc_recon, acc_kl: [kl[0], kl[1], kl[2], kl[3]] };
        meta.insert(PARTIAL_META.to_string(), serde_json::to_string(&p).unwrap_or_default());
        checkpoint::write_atomic(path, &self.checkpoint_bytes_async(&meta).await?)
    }

    /// Copies the trained state to the CPU (for a rollback).
    async fn snapshot_async(&self) -> Result<Snapshot> {
        let params = self.vae.params();
        let mut values = Vec::new();
        let mut moments = Vec::new();
        for p in &params {
            values.push(p.value().to_vec_async(&self.gpu).await?);
            moments.push(match self.opt.moments(p) {
                Some((m, v)) => Some((m.to_vec_async(&self.gpu).await?, v.to_vec_async(&self.gpu).await?)),
                None => None,
            });
        }
        let mut buffers = Vec::new();
        for (_, t) in self.vae.buffers() {
            buffers.push(t.to_vec_async(&self.gpu).await?);
        }
        let partial = self.partial.clone();
        Ok(Snapshot { values, moments, buffers, adam_t: self.opt.t, step: self.step, epoch: self.epoch, partial })
    }

    /// Puts a [`Snapshot`] back, in place (no buffer is created).
    fn restore(&mut self, s: &Snapshot) -> Result<()> {
        let params = self.vae.params();
        for (i, p) in params.iter().enumerate() {
            p.value().write(&self.gpu, &s.values[i])?;
            if let (Some((m, v)), Some((sm, sv))) = (self.opt.moments(p), &s.moments[i]) {
                m.write(&self.gpu, sm)?;
                v.write(&self.gpu, sv)?;
            }
        }
        for ((_, t), b) in self.vae.buffers().into_iter().zip(&s.buffers) {
            t.write(&self.gpu, b)?;
        }
        self.opt.t = s.adam_t;
        self.step = s.step;
        self.epoch = s.epoch;
        self.partial = s.partial.clone();
        Ok(())
    }

    /// Turns the GPU's non-finite guard (the KL accumulator's words 2 and 3) into
    /// [`Error::Diverged`], naming the step, the term and the likely cause.
    fn check_guard(&self, e: &EpochState, acc_kl: &[f32]) -> Result<()> {
        let (first, which) = (acc_kl.get(2).copied().unwrap_or(0.0), acc_kl.get(3).copied().unwrap_or(0.0));
        if first == 0.0 {
            return Ok(());
        }
        let term = match which as u32 {
            1 => "reconstruction term",
            2 => "KL term",
            _ => "reconstruction and KL terms",
        };
        let advice = match self.vae.config.likelihood {
            Likelihood::Gaussian { variance: v } if which as u32 & 1 == 1 && v < 1e-3 => format!(
                "the Gaussian likelihood's variance {v:e} is tiny, so squared errors divided by it overflow: use a \
                 larger one (e.g. gaussian:0.1) or gaussian:learned"
            ),
            _ => format!(
                "the updates were probably too large: lower the learning rate (now {}) or check the data",
                self.opt.lr
            ),
        };
        Err(Error::Diverged { step: e.start_step + first as u64, term: term.to_string(), advice })
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
            if self.epoch == 0 && self.step == 0 {
                check_fresh_run_dir(dir)?;
            }
        }
        self.mid_epoch = match (&opts.run_dir, opts.checkpoint_every) {
            (Some(dir), Some(k)) if k > 0 => Some((k, dir.join(CHECKPOINT_FILE), opts.meta.clone())),
            _ => None,
        };
        let r = self.fit_epochs(opts, on_progress, on_epoch).await;
        self.mid_epoch = None;
        r
    }

    async fn fit_epochs(
        &mut self,
        opts: &FitOptions,
        on_progress: &mut dyn FnMut(&Progress),
        on_epoch: &mut dyn FnMut(&EpochMetrics) -> Control,
    ) -> Result<Vec<EpochMetrics>> {
        let mut all = Vec::new();
        let (mut rollbacks, lr0) = (0, self.opt.lr);
        while self.epoch < opts.epochs {
            let snap = match opts.on_nan {
                OnNan::Rollback => Some(self.snapshot_async().await?),
                OnNan::Stop => None,
            };
            let m = match (self.epoch_with_metrics_async(on_progress).await, &snap) {
                (Ok(m), _) => m,
                (Err(Error::Diverged { step, term, advice }), Some(snap)) => {
                    if rollbacks == MAX_ROLLBACKS {
                        let advice = format!(
                            "{advice} (gave up after {MAX_ROLLBACKS} rollbacks, which halved the learning rate from \
                             {lr0} to {})",
                            self.opt.lr
                        );
                        return Err(Error::Diverged { step, term, advice });
                    }
                    rollbacks += 1;
                    self.restore(snap)?;
                    self.opt.lr /= 2.0;
                    self.opts.lr = self.opt.lr;
                    let note = format!(
                        "non-finite {term} at step {step}: rolled back to the start of epoch {}, learning rate halved \
                         to {} (rollback {rollbacks} of {MAX_ROLLBACKS})",
                        self.epoch + 1,
                        self.opt.lr
                    );
                    if let Some(dir) = &opts.run_dir {
                        // The lr as its shortest decimal (an f32 widened to f64 would print 0.0005000000237).
                        let lr: f64 = self.opt.lr.to_string().parse().unwrap_or(f64::NAN);
                        let line = serde_json::json!({"epoch": self.epoch, "rollback": {"step": step, "term": term, "lr": lr}});
                        append_jsonl(&dir.join(METRICS_FILE), &line.to_string())?;
                    }
                    on_progress(&Progress {
                        epoch: self.epoch + 1,
                        batch: 0,
                        batches: 0,
                        running_loss: f64::NAN,
                        examples_per_second: 0.0,
                        warning: Some(note),
                    });
                    continue;
                }
                (Err(e), _) => return Err(e),
            };
            if let Some(dir) = &opts.run_dir {
                // The checkpoint carries its epoch's metrics line: a run killed between the two
                // writes gets the line back on resume (see `run`), so the files never disagree.
                let mut meta = opts.meta.clone();
                meta.insert(METRICS_META.to_string(), m.to_json_line());
                let bytes = self.checkpoint_bytes_async(&meta).await?;
                checkpoint::write_atomic(dir.join(CHECKPOINT_FILE), &bytes)?;
                if opts.keep > 1 {
                    keep_epoch_checkpoint(dir, self.epoch, opts.keep)?;
                }
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
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        self.save_with(path.as_ref(), &HashMap::new())
    }

    /// Like [`Trainer::save`] with extra metadata (e.g. `data`: where the data came from).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_with(&self, path: &Path, extra: &HashMap<String, String>) -> Result<()> {
        let bytes = pollster::block_on(self.checkpoint_bytes_async(extra)).map_err(|e| match e {
            Error::Checkpoint { detail, .. } => Error::Checkpoint { path: path.to_path_buf(), detail },
            e => e,
        })?;
        checkpoint::write_atomic(path, &bytes)
    }

    /// The bytes of the checkpoint [`Trainer::save_with`] writes (weights, Adam, step, epoch and
    /// every training option, plus `extra` metadata): what a browser offers as a download.
    pub async fn checkpoint_bytes_async(&self, extra: &HashMap<String, String>) -> Result<Vec<u8>> {
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
            .map_err(|e| Error::Checkpoint { path: "(in memory)".into(), detail: e.to_string() })?;
        meta.insert("options".to_string(), json);
        checkpoint::to_bytes_async(&self.gpu, &self.vae, Some(&self.opt), &meta).await
    }
}

fn check_split(config: &VaeConfig, split: &Split) -> Result<()> {
    // A conditional VAE cannot learn a class it never sees: a stray label (a 255 in a 10-class
    // label file) would otherwise silently make 256 classes, most of them empty.
    if let (crate::vae::ModelKind::Cvae, Some(labels)) = (config.model, split.train.labels()) {
        let mut seen = vec![false; config.classes];
        for &l in labels {
            if let Some(s) = seen.get_mut(l as usize) {
                *s = true;
            }
        }
        let missing: Vec<usize> = (0..config.classes).filter(|&c| !seen[c]).collect();
        if let Some(first) = missing.first() {
            let max = labels.iter().max().copied().unwrap_or(0);
            return Err(Error::arg(
                "labels",
                format!(
                    "{}: the training labels go up to {max}, so the conditional VAE would have {} classes, but {} of \
                     them (the first: {first}) have no training example; check the label file for stray values",
                    split.name,
                    config.classes,
                    missing.len()
                ),
            ));
        }
    }
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
