//! A training run as a program (or the `wgvae train` command) describes it: where the data comes
//! from, the model and objective, the options, and the run directory; and the rules that make a
//! run directory trustworthy:
//! * a resumed run continues with the options the checkpoint was trained with; a flag that
//!   contradicts them is refused with the reason, unless `allow_override` says the change is
//!   meant (it is then recorded in `metrics.jsonl`);
//! * a fresh run never writes into a directory that holds another run;
//! * on resume, `metrics.jsonl` is trimmed to the checkpoint's epoch and temporary files left by
//!   killed writers are removed.

use std::path::{Path, PathBuf};

use crate::checkpoint::Checkpoint;
use crate::data::Split;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::Act;
use crate::train::{FitOptions, TrainOptions, Trainer, METRICS_FILE};
use crate::vae::objective::{KlSchedule, Objective, Reduction};
use crate::vae::{ConvNet, Likelihood, ModelKind, VaeConfig};

/// KL schedule names (`--kl-schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum ScheduleName {
    /// No annealing.
    Constant,
    /// Linear over the warm-up.
    Linear,
    /// Logistic over the warm-up (Bowman et al. 2015).
    Sigmoid,
    /// Cycles over the run (Fu et al. 2019).
    Cyclical,
}

/// Named architectures (`--preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Preset {
    /// 784-400-20-400-784, ReLU, Bernoulli (Kingma & Welling; PyTorch's example).
    Classic,
    /// Convolutional, for 28x28 grayscale: Conv2d(1,32,3,s2,p1)-ReLU-Conv2d(32,64,3,s2,p1)-ReLU-
    /// flatten -> fc_mu/fc_logvar (Z 20); Linear(Z,32·7·7)-ReLU -> ConvTranspose2d(32,64,3,s2,p1,op1)-
    /// ReLU-ConvTranspose2d(64,32,3,s2,p1,op1)-ReLU-ConvTranspose2d(32,1,3,s1,p1), Bernoulli.
    Conv,
    /// Convolutional, the common CelebA VAE for 64x64 colour (default data: the built-in shapes):
    /// channels 32-64-128-256-512, 3x3 stride-2 convolutions each with BatchNorm2d and LeakyReLU,
    /// mirrored transposed convolutions, Z 128; on other images the same stack fitted to their size.
    Conv64,
}

#[cfg(feature = "cli")]
fn parse<T: std::str::FromStr<Err = Error>>(s: &str) -> std::result::Result<T, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

/// Everything that defines a training run. Unset fields take their defaults for a fresh run and
/// the checkpoint's values on resume. With the `cli` feature this is also the `wgvae train`
/// argument parser (the doc comments are its help).
#[derive(Clone, Debug, Default)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct RunSpec {
    /// MNIST-layout directory with train-/t10k- IDX files, raw or .gz; an image folder (PNG/JPEG,
    /// one subfolder per class, optional train/ and test/ subfolders); or a built-in dataset:
    /// `sprites` (28x28 grey) or `shapes` (64x64 colour) (default: shapes with --preset conv64,
    /// sprites otherwise).
    #[cfg_attr(feature = "cli", arg(long))]
    pub data: Option<PathBuf>,
    /// For an image folder given as --data: resize each image's shorter side to S pixels and
    /// centre-crop it to S x S (default: every image must already have one size).
    #[cfg_attr(feature = "cli", arg(long, value_name = "S"))]
    pub image_size: Option<usize>,
    /// Total epochs, with --resume until this many are done (default: 50 on sprites, 5 on shapes,
    /// 10 on --data).
    #[cfg_attr(feature = "cli", arg(long))]
    pub epochs: Option<u64>,
    /// Examples per step (default 128).
    #[cfg_attr(feature = "cli", arg(long))]
    pub batch: Option<usize>,
    /// Adam learning rate (default 0.001).
    #[cfg_attr(feature = "cli", arg(long, allow_negative_numbers = true))]
    pub lr: Option<f32>,
    /// Latent dimension (default 20).
    #[cfg_attr(feature = "cli", arg(long))]
    pub latent: Option<usize>,
    /// Hidden layer sizes, comma separated (default 400).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
    pub hidden: Option<Vec<usize>>,
    /// Hidden activation: relu, leaky_relu or leaky_relu:SLOPE, tanh, sigmoid, elu or elu:ALPHA,
    /// identity (default relu).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse::<Act>))]
    pub activation: Option<Act>,
    /// Decoder likelihood: bernoulli, gaussian or gaussian:VARIANCE (fixed variance, default 1) or
    /// gaussian:learned (a learned per-pixel variance), reported in nats (default bernoulli).
    #[cfg_attr(feature = "cli", arg(long, visible_alias = "recon", value_parser = parse::<Likelihood>))]
    pub likelihood: Option<Likelihood>,
    /// A named architecture.
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub preset: Option<Preset>,
    /// A convolutional model for image data: output channels of each stride-2 convolution, comma
    /// separated (e.g. 32,64,128), mirrored by the decoder, with BatchNorm2d (none with --preset
    /// conv, whose network has none).
    #[cfg_attr(feature = "cli", arg(long, value_delimiter = ','))]
    pub channels: Option<Vec<usize>>,
    /// Kernel size of the convolutions built by --channels or --preset conv64 (default 3).
    #[cfg_attr(feature = "cli", arg(long))]
    pub kernel: Option<usize>,
    /// KL weight β (1: the ELBO).
    #[cfg_attr(feature = "cli", arg(long, allow_negative_numbers = true))]
    pub beta: Option<f32>,
    /// How reconstruction and KL are reduced: sum (the ELBO), mean (reconstruction averaged over the
    /// pixels too, so KL weighs D times more), normalized (reconstruction / D, KL / Z) (default sum).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse::<Reduction>))]
    pub reduction: Option<Reduction>,
    /// KL annealing: constant, linear or sigmoid over --kl-warmup steps, cyclical with --kl-cycles.
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub kl_schedule: Option<ScheduleName>,
    /// Steps over which linear or sigmoid annealing reaches the full KL weight.
    #[cfg_attr(feature = "cli", arg(long))]
    pub kl_warmup: Option<u64>,
    /// Cycles of the cyclical schedule over the run.
    #[cfg_attr(feature = "cli", arg(long))]
    pub kl_cycles: Option<u64>,
    /// Free bits: each latent dimension's KL counts at least this many nats (batch average).
    #[cfg_attr(feature = "cli", arg(long, allow_negative_numbers = true))]
    pub free_bits: Option<f32>,
    /// BN-VAE (Zhu et al. 2020): batch-normalize the posterior mean so each dimension's expected KL
    /// stays above tau/2 (tau from 0 to 1).
    #[cfg_attr(feature = "cli", arg(long, allow_negative_numbers = true))]
    pub bn_vae: Option<f32>,
    /// vae; ae (deterministic autoencoder: no sampling, no KL); cvae (conditional VAE on the one-hot
    /// label: IDX labels, the sprites' shape) (default vae).
    #[cfg_attr(feature = "cli", arg(long, value_parser = parse::<ModelKind>))]
    pub model: Option<ModelKind>,
    /// Resample binary pixels x ~ Bernoulli(pixel) every step.
    #[cfg_attr(feature = "cli", arg(long))]
    pub binarize: bool,
    /// Seed of initialisation, shuffling and noise (default 1).
    #[cfg_attr(feature = "cli", arg(long))]
    pub seed: Option<u64>,
    /// Run directory (default: runs/DATE-TIME, or the checkpoint's directory with --resume).
    #[cfg_attr(feature = "cli", arg(long))]
    pub out: Option<PathBuf>,
    /// Continue from this checkpoint: weights, Adam state, step, epoch and every training option.
    #[cfg_attr(feature = "cli", arg(long))]
    pub resume: Option<PathBuf>,
    /// With --resume: accept options that differ from the checkpoint's (the change is recorded in
    /// metrics.jsonl).
    #[cfg_attr(feature = "cli", arg(long = "override"))]
    pub allow_override: bool,
    /// When a step's loss becomes NaN or infinite: stop, or roll back to the start of the epoch,
    /// halve the learning rate and go on (at most 3 times) (default rollback).
    #[cfg_attr(feature = "cli", arg(long, value_enum))]
    pub on_nan: Option<crate::train::OnNan>,
    /// Also keep the checkpoints of the last N epochs (checkpoint-epoch-E.safetensors) besides
    /// checkpoint.safetensors, the latest (default 1: the latest only).
    #[cfg_attr(feature = "cli", arg(long))]
    pub keep: Option<usize>,
    /// Also write the checkpoint every STEPS steps inside an epoch (long epochs); a resume from
    /// it continues the epoch where it stopped, exactly.
    #[cfg_attr(feature = "cli", arg(long, value_name = "STEPS", value_parser = clap::value_parser!(u64).range(1..)))]
    pub checkpoint_every: Option<u64>,
    /// Steps between progress updates (default 10).
    #[cfg_attr(feature = "cli", arg(long))]
    pub log_every: Option<usize>,
    /// Training steps per GPU submission (default 1). More saves the per-submission cost where
    /// a step is short (small models on fast GPUs); the results are the same bit for bit.
    #[cfg_attr(feature = "cli", arg(long, value_name = "K"))]
    pub steps_per_submit: Option<usize>,
}

/// A run ready to train: the trainer, its data and what `Trainer::fit` needs.
pub struct Run {
    /// Model, optimizer and data on the GPU.
    pub trainer: Trainer,
    /// The data.
    pub split: Split,
    /// Epochs, run directory and checkpoint metadata.
    pub fit: FitOptions,
    /// The run directory.
    pub out: PathBuf,
    /// Options changed on resume with `allow_override`, as "name: old -> new".
    pub overrides: Vec<String>,
}

fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

impl RunSpec {
    fn schedule(&self, total_steps: u64) -> Result<KlSchedule> {
        let name = match self.kl_schedule.unwrap_or(ScheduleName::Constant) {
            ScheduleName::Constant => "constant",
            ScheduleName::Linear => "linear",
            ScheduleName::Sigmoid => "sigmoid",
            ScheduleName::Cyclical => "cyclical",
        };
        KlSchedule::from_name(name, self.kl_warmup.unwrap_or(0), self.kl_cycles.unwrap_or(0), total_steps)
    }

    /// The objective of a fresh run; KL options on a plain autoencoder are refused.
    fn objective(&self, model: ModelKind, total_steps: u64) -> Result<Objective> {
        if model == ModelKind::Ae {
            let kl = [
                ("beta", self.beta.is_some()),
                ("kl_schedule", self.kl_schedule.is_some()),
                ("free_bits", self.free_bits.is_some()),
                ("kl_warmup", self.kl_warmup.is_some()),
                ("kl_cycles", self.kl_cycles.is_some()),
            ];
            if let Some((name, _)) = kl.iter().find(|(_, given)| *given) {
                return Err(Error::arg(*name, "the plain autoencoder (model ae) has no KL term to weigh or schedule"));
            }
        }
        let o = Objective {
            beta: self.beta.unwrap_or(1.0),
            reduction: self.reduction.unwrap_or(Reduction::Sum),
            schedule: self.schedule(total_steps)?,
            free_bits: self.free_bits.unwrap_or(0.0),
        };
        o.validate()?;
        Ok(o)
    }

    /// The architecture of a fresh run for examples of `shape` (`[d]`, `[h, w]` or `[c, h, w]`)
    /// and `classes` labels.
    pub fn config(&self, shape: &[usize], classes: usize) -> Result<VaeConfig> {
        let mut c = match self.preset {
            None | Some(Preset::Classic) => VaeConfig::classic(),
            Some(Preset::Conv) => VaeConfig::conv(),
            Some(Preset::Conv64) => VaeConfig::conv64(),
        };
        if self.preset == Some(Preset::Conv64) || self.channels.is_some() || self.kernel.is_some() {
            let image = match *shape {
                [h, w] => [1, h, w],
                [ch, h, w] => [ch, h, w],
                _ => {
                    return Err(Error::arg(
                        "channels",
                        format!("a convolutional model needs images; the data's examples have shape {shape:?}"),
                    ))
                }
            };
            let base = c.conv.clone().unwrap_or_else(ConvNet::preset_conv64);
            let channels = self.channels.clone().unwrap_or_else(|| base.encoder_channels());
            let kernel = self.kernel.unwrap_or(3);
            let batch_norm = self.preset != Some(Preset::Conv);
            c.conv = Some(ConvNet::from_channels(image, &channels, kernel, batch_norm)?);
            c.hidden = vec![];
        }
        c.input_dim = shape.iter().product();
        c.model = self.model.unwrap_or(ModelKind::Vae);
        c.bn_tau = self.bn_vae;
        c.classes = if c.model == ModelKind::Cvae { classes } else { 0 };
        c.latent = self.latent.unwrap_or(c.latent);
        c.hidden = self.hidden.clone().unwrap_or(c.hidden);
        c.activation = self.activation.unwrap_or(c.activation);
        c.likelihood = self.likelihood.unwrap_or(c.likelihood);
        c.validate()?;
        Ok(c)
    }

    fn fit_options(&self, epochs: u64, out: &Path, meta: std::collections::HashMap<String, String>) -> FitOptions {
        let (on_nan, keep) = (self.on_nan.unwrap_or_default(), self.keep.unwrap_or(1));
        let checkpoint_every = self.checkpoint_every;
        FitOptions { epochs, run_dir: Some(out.to_path_buf()), meta, on_nan, keep, checkpoint_every }
    }

    fn options(&self, base: TrainOptions) -> TrainOptions {
        TrainOptions {
            batch: self.batch.unwrap_or(base.batch),
            lr: self.lr.unwrap_or(base.lr),
            seed: self.seed.unwrap_or(base.seed),
            binarize: self.binarize || base.binarize,
            log_every: self.log_every.unwrap_or(base.log_every),
            steps_per_submit: self.steps_per_submit.unwrap_or(base.steps_per_submit),
            objective: base.objective,
        }
    }

    /// Checks what can be checked without data or a device, loads the data (or the checkpoint's),
    /// prepares the run directory and builds the trainer on the device `open` gives.
    pub fn prepare(&self, open: impl FnOnce() -> Result<Gpu>) -> Result<Run> {
        // Flags that need no data are refused before anything is loaded or written.
        let model = self.model.unwrap_or(ModelKind::Vae);
        if self.resume.is_none() {
            self.objective(model, 1)?;
            // Any input size will do for the dense presets; a conv preset fixes its image, and
            // convolutions built for the data are checked on the default 64x64 colour images
            // (other data is checked once loaded).
            let probe: Option<&[usize]> = match self.preset {
                Some(Preset::Conv) => Some(&[1, 28, 28]),
                _ if self.preset == Some(Preset::Conv64) || self.channels.is_some() || self.kernel.is_some() => {
                    self.data.is_none().then_some(&[3, 64, 64])
                }
                _ => Some(&[1]),
            };
            if let (true, Some(shape)) = (model != ModelKind::Cvae, probe) {
                self.config(shape, 0)?;
            }
        }
        self.options(TrainOptions::default()).validate()?;
        if self.epochs == Some(0) {
            return Err(Error::arg("epochs", "must be at least 1"));
        }
        match &self.resume {
            Some(path) => self.prepare_resume(path, open),
            None => self.prepare_fresh(open),
        }
    }

    fn prepare_fresh(&self, open: impl FnOnce() -> Result<Gpu>) -> Result<Run> {
        let out = self.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(timestamp()));
        if self.out.is_some() {
            crate::train::check_fresh_run_dir(&out)?;
        }
        // The device first: its limits bound what the data files may make us allocate.
        let gpu = open()?;
        let split = match self.data.as_deref().map(builtin_name) {
            Some(Ok(d)) => crate::data::load_dir(d, self.image_size, 0, crate::data::MAX_DATASET_BYTES)?,
            Some(Err(name)) => crate::data::builtin(name, 0).expect("a built-in name"),
            None if self.preset == Some(Preset::Conv64) => crate::data::shapes::shapes(0),
            None => crate::data::sprites::sprites(0),
        };
        let config = self.config(split.train.shape(), split.train.num_classes())?;
        let mut opts = self.options(TrainOptions::default());
        let epochs = self.epochs.unwrap_or(default_epochs(&split.name));
        let steps = epochs * split.train.n().div_ceil(opts.batch.min(split.train.n())) as u64;
        opts.objective = self.objective(config.model, steps)?;
        prepare_dir(&out)?;
        crate::train::check_fresh_run_dir(&out)?;
        let trainer = Trainer::new(&gpu, config, opts, &split)?;
        let mut meta = data_meta(self.data.as_deref().and_then(|d| builtin_name(d).ok()), &split.name);
        if let Some(size) = self.image_size {
            meta.insert("image_size".into(), size.to_string());
        }
        let fit = self.fit_options(epochs, &out, meta);
        Ok(Run { trainer, split, fit, out, overrides: vec![] })
    }

    fn prepare_resume(&self, path: &Path, open: impl FnOnce() -> Result<Gpu>) -> Result<Run> {
        let ck = Checkpoint::load(path)?;
        let c = &ck.config;
        // The architecture cannot change.
        let arch = [
            ("latent", self.latent.map(|l| l.to_string()), c.latent.to_string()),
            ("hidden", self.hidden.as_ref().map(|h| format!("{h:?}")), format!("{:?}", c.hidden)),
            ("activation", self.activation.map(|x| x.to_string()), c.activation.to_string()),
            ("likelihood", self.likelihood.map(|x| x.to_string()), c.likelihood.to_string()),
            ("bn_vae", self.bn_vae.map(|t| t.to_string()), c.bn_tau.map_or("none".into(), |t| t.to_string())),
            ("model", self.model.map(|m| m.to_string()), c.model.to_string()),
            (
                "channels",
                self.channels.as_ref().map(|v| format!("{v:?}")),
                c.conv.as_ref().map_or("none".into(), |n| format!("{:?}", n.encoder_channels())),
            ),
            (
                "kernel",
                self.kernel.map(|k| k.to_string()),
                c.conv.as_ref().and_then(|n| n.encoder.first()).map_or("none".into(), |l| l.kernel.to_string()),
            ),
        ];
        if let Some((flag, Some(given), saved)) = arch.into_iter().find(|(_, g, s)| g.as_ref().is_some_and(|g| g != s))
        {
            let flag = format!("--{}", flag.replace('_', "-"));
            return Err(Error::Checkpoint {
                path: ck.path.clone(),
                detail: format!(
                    "it was trained with {flag} {saved} but {flag} {given} was given; drop the flag or start a new run"
                ),
            });
        }
        let saved_size = ck.meta.get("image_size").map(String::as_str).unwrap_or("none");
        if let Some(size) = self.image_size.filter(|s| s.to_string() != saved_size) {
            return Err(Error::Checkpoint {
                path: ck.path.clone(),
                detail: format!(
                    "it was trained with --image-size {saved_size} but --image-size {size} was given; drop the flag"
                ),
            });
        }
        let gpu = open()?;
        let given = self.data.as_deref().map(builtin_name);
        let split = match given {
            Some(Err(name)) => crate::data::builtin(name, 0).expect("a built-in name"),
            Some(Ok(d)) => ck.data_within(Some(d), crate::data::MAX_DATASET_BYTES)?,
            None => ck.data_within(None, crate::data::MAX_DATASET_BYTES)?,
        };
        let stored = ck.train_options()?;
        let epochs = self.epochs.unwrap_or(default_epochs(&split.name));
        let mut wanted = self.options(stored.clone());
        let steps = epochs * split.train.n().div_ceil(wanted.batch.min(split.train.n())) as u64;
        let o = stored.objective;
        wanted.objective = Objective {
            beta: self.beta.unwrap_or(o.beta),
            reduction: self.reduction.unwrap_or(o.reduction),
            schedule: if self.kl_schedule.is_some() { self.schedule(steps)? } else { o.schedule },
            free_bits: self.free_bits.unwrap_or(o.free_bits),
        };
        wanted.validate()?;
        let overrides = differences(&stored, &wanted);
        if !overrides.is_empty() && !self.allow_override {
            return Err(Error::Checkpoint {
                path: ck.path.clone(),
                detail: format!(
                    "it was trained with other options ({}); resume without those flags to continue the run \
                     exactly, or add --override to change them",
                    overrides.join(", ")
                ),
            });
        }
        let out = match &self.out {
            Some(o) => o.clone(),
            None => ck.path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf(),
        };
        prepare_dir(&out)?;
        let epoch = ck.meta_parsed::<u64>("epoch")?.unwrap_or(0);
        reconcile_metrics(&out.join(METRICS_FILE), epoch, ck.meta.get(crate::train::METRICS_META))?;
        let mut trainer = Trainer::resume(&gpu, &ck, &split)?;
        trainer.opts = wanted.clone();
        trainer.opt.lr = wanted.lr;
        if !overrides.is_empty() {
            let line = serde_json::json!({"epoch": epoch, "override": overrides});
            crate::train::append_jsonl(&out.join(METRICS_FILE), &line.to_string())?;
        }
        let dir = match given {
            Some(Ok(d)) => Some(d.to_path_buf()),
            Some(Err(_)) => None,
            None => ck.data_path(),
        };
        let mut meta = data_meta(dir.as_deref(), &split.name);
        if let Some(size) = ck.meta.get("image_size") {
            meta.insert("image_size".into(), size.clone());
        }
        let fit = self.fit_options(epochs, &out, meta);
        Ok(Run { trainer, split, fit, out, overrides })
    }
}

/// "name: old -> new" for every option that differs.
fn differences(a: &TrainOptions, b: &TrainOptions) -> Vec<String> {
    let pairs = [
        ("lr", a.lr.to_string(), b.lr.to_string()),
        ("batch", a.batch.to_string(), b.batch.to_string()),
        ("seed", a.seed.to_string(), b.seed.to_string()),
        ("binarize", a.binarize.to_string(), b.binarize.to_string()),
        ("beta", a.objective.beta.to_string(), b.objective.beta.to_string()),
        ("reduction", a.objective.reduction.to_string(), b.objective.reduction.to_string()),
        ("kl_schedule", a.objective.schedule.to_string(), b.objective.schedule.to_string()),
        ("free_bits", a.objective.free_bits.to_string(), b.objective.free_bits.to_string()),
    ];
    pairs.into_iter().filter(|(_, x, y)| x != y).map(|(n, x, y)| format!("{n}: {x} -> {y}")).collect()
}

/// Creates `dir`, checks it is writable, and removes temporary checkpoint files whose writer died.
fn prepare_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let probe = dir.join(".wgvae-write-test");
    std::fs::write(&probe, b"").map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
    let _ = std::fs::remove_file(&probe);
    crate::checkpoint::remove_stale_temporaries(dir);
    Ok(())
}

/// The checkpoint metadata naming the data: the directory, or the built-in dataset's name.
fn data_meta(dir: Option<&Path>, name: &str) -> std::collections::HashMap<String, String> {
    match dir {
        Some(d) => crate::checkpoint::data_meta(d).into_iter().collect(),
        None => [("data".to_string(), name.to_string())].into(),
    }
}

/// `--data`: a directory (`Ok`), or the name of a built-in dataset (`Err`) when no such
/// directory exists.
fn builtin_name(d: &Path) -> std::result::Result<&Path, &'static str> {
    for name in ["sprites", "shapes"] {
        if d == Path::new(name) && !d.exists() {
            return Err(name);
        }
    }
    Ok(d)
}

/// Epochs when `--epochs` is not given: many on the small sprites, few on the 64x64 shapes
/// (each epoch is costly on a CPU adapter), 10 on files.
fn default_epochs(data: &str) -> u64 {
    match data {
        "sprites" => 50,
        "shapes" => 5,
        _ => 10,
    }
}

/// Makes `metrics.jsonl` end at the checkpoint's epoch: lines of later epochs (written by a run
/// killed before its next checkpoint) are dropped, and the checkpoint's own line (`line`, stored
/// in it) is appended when a kill came between the checkpoint and its metrics line. Lines that
/// are not JSON objects with an `epoch` are kept.
fn reconcile_metrics(path: &Path, epoch: u64, line: Option<&String>) -> Result<()> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let epoch_of = |l: &str| serde_json::from_str::<serde_json::Value>(l).ok()?.get("epoch")?.as_u64();
    let mut keep: Vec<&str> = text.lines().filter(|l| epoch_of(l).is_none_or(|e| e <= epoch)).collect();
    let last = keep.iter().rev().find_map(|l| epoch_of(l)).unwrap_or(0);
    if let Some(line) = line.filter(|l| last < epoch && epoch_of(l) == Some(epoch)) {
        keep.push(line);
    }
    let mut body = keep.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    if body == text {
        return Ok(());
    }
    crate::checkpoint::write_atomic(path, body.as_bytes())
}

impl Run {
    /// What the run is: data, device, model, objective and where it writes (the lines
    /// `wgvae train` prints first).
    pub fn describe(&self) -> String {
        let (tr, te) = (&self.split.train, &self.split.test);
        let t = &self.trainer;
        let c = &t.vae.config;
        let a = t.gpu.adapter();
        let mut s = format!(
            "wgvae: {} ({} train / {} test examples of shape {:?}) on {} ({:?})\n",
            self.split.name,
            tr.n(),
            te.n(),
            tr.shape(),
            a.name,
            a.backend
        );
        let layers = match &c.conv {
            // conv: channels of each layer, e.g. conv 1x28x28-c32-c64-20-d32x7x7-t64-t32-t1
            Some(net) => {
                let [ch, h, w] = net.image;
                let [dc, dh, dw] = net.decoder_start;
                let enc: Vec<String> = net.encoder.iter().map(|l| format!("c{}", l.channels)).collect();
                let dec: Vec<String> = net.decoder.iter().map(|l| format!("t{}", l.channels)).collect();
                let bn = if net.batch_norm { " (batch norm)" } else { "" };
                format!("conv {ch}x{h}x{w}-{}-{}-d{dc}x{dh}x{dw}-{}{bn}", enc.join("-"), c.latent, dec.join("-"))
            }
            None => {
                let hidden: Vec<String> = c.hidden.iter().map(|h| h.to_string()).collect();
                format!("{}-{}-{}", c.input_dim, hidden.join("-"), c.latent)
            }
        };
        s += &format!(
            "model: {} {} {} {}, batch {}, lr {}, seed {}\n",
            c.model, layers, c.activation, c.likelihood, t.opts.batch, t.opts.lr, t.opts.seed
        );
        if c.model != ModelKind::Ae {
            let o = &t.opts.objective;
            let w = o.effective_kl_weight(c.input_dim, c.latent);
            let fb = if o.free_bits > 0.0 { format!(", free bits {} nats/dim", o.free_bits) } else { String::new() };
            let bn = c.bn_tau.map(|tau| format!(", BN-VAE tau {tau} (KL >= {:.2})", 0.5 * tau * c.latent as f32));
            s += &format!(
                "objective: recon + {} x KL, reduction {}, schedule {}{fb}{}: the KL term weighs {w} x its weight in the ELBO{}\n",
                o.beta,
                o.reduction,
                o.schedule.describe(),
                bn.unwrap_or_default(),
                if w == 1.0 { " (the true ELBO)" } else { "" }
            );
        }
        for o in &self.overrides {
            s += &format!("override: {o}\n");
        }
        s += &format!("writing to {}", self.out.display());
        s
    }
}
