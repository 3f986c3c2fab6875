//! `wgvae` command-line tool.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use wgvae::checkpoint::Checkpoint;
use wgvae::data::{idx, sprites, Split};
use wgvae::ops::Act;
use wgvae::train::{append_jsonl, write_pictures, EpochMetrics, TrainOptions, Trainer};
use wgvae::vae::objective::{KlSchedule, Objective, Reduction};
use wgvae::vae::{Likelihood, ModelKind, VaeConfig};
use wgvae::{Error, Gpu, Result};

#[derive(Parser)]
#[command(name = "wgvae", version, about = "Train variational autoencoders on any GPU with WGSL compute shaders")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Train a VAE (default: the classic 784-400-20 model on the built-in sprites).
    Train(Box<TrainArgs>),
    /// Print the test negative ELBO, reconstruction, KL (per dimension) and active units as JSON.
    Eval {
        /// Checkpoint to evaluate.
        #[arg(long)]
        checkpoint: PathBuf,
        /// MNIST-layout directory (default: the data the checkpoint was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Examples per evaluation batch [default: the one training evaluated with, so the figures
        /// match metrics.jsonl exactly; each batch draws its own z samples].
        #[arg(long)]
        batch: Option<usize>,
        /// Also report the Mutual Information Gap (Chen et al. 2018) of the posterior means against
        /// the sprites' known generating factors (built-in sprites only).
        #[arg(long)]
        disentanglement: bool,
        /// Also estimate log p(x) with K importance samples per example (Burda et al. 2016, K up to
        /// 5000), on the GPU; comparable with published tables.
        #[arg(long)]
        iwae: Option<usize>,
        /// Use only the first N test images for --iwae (it costs K decoder passes per image).
        #[arg(long)]
        iwae_examples: Option<usize>,
    },
    /// Decode the straight line between the latent codes of two test images.
    Interpolate {
        /// Checkpoint to use.
        #[arg(long)]
        checkpoint: PathBuf,
        /// MNIST-layout directory (default: the data the checkpoint was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Index of the first test image.
        #[arg(long, default_value_t = 0)]
        from: usize,
        /// Index of the second test image.
        #[arg(long, default_value_t = 1)]
        to: usize,
        /// Images in the row, ends included.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Output PNG.
        #[arg(long, default_value = "interpolation.png")]
        out: PathBuf,
    },
    /// Sweep each latent dimension from -range to +range around a test image's code, one row per
    /// dimension, most active (highest KL) first.
    Traverse {
        /// Checkpoint to use.
        #[arg(long)]
        checkpoint: PathBuf,
        /// MNIST-layout directory (default: the data the checkpoint was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Test image whose code is the centre of the sweep.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Half-width of the sweep.
        #[arg(long, default_value_t = 3.0)]
        range: f32,
        /// Images per row.
        #[arg(long, default_value_t = 11)]
        steps: usize,
        /// Output PNG.
        #[arg(long, default_value = "traversal.png")]
        out: PathBuf,
    },
    /// For a 2-D latent space: the decoded manifold grid and a scatter of the test codes by label.
    Manifold {
        /// Checkpoint to use (latent dimension 2).
        #[arg(long)]
        checkpoint: PathBuf,
        /// MNIST-layout directory (default: the data the checkpoint was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Grid side.
        #[arg(long, default_value_t = 15)]
        n: usize,
        /// Half-width of the grid in latent units.
        #[arg(long, default_value_t = 3.0)]
        range: f32,
        /// Directory for manifold.png and scatter.png.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Plot a run's metrics.jsonl (loss, recon, KL, KL weight, active units per epoch) as a PNG.
    Plot {
        /// The metrics.jsonl file.
        #[arg(long)]
        metrics: PathBuf,
        /// Output PNG (default: metrics.png beside the metrics file).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Decode draws from the prior into a PNG grid.
    Sample {
        /// Checkpoint to sample from.
        #[arg(long)]
        checkpoint: PathBuf,
        /// Number of samples.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Output PNG.
        #[arg(long, default_value = "samples.png")]
        out: PathBuf,
        /// Seed of the prior draws.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Class to draw (conditional VAE only; default: one class per row of the grid).
        #[arg(long)]
        label: Option<usize>,
    },
    /// Write test inputs above their reconstructions as a PNG grid.
    Reconstruct {
        /// Checkpoint to use.
        #[arg(long)]
        checkpoint: PathBuf,
        /// MNIST-layout directory (default: the data the checkpoint was trained on).
        #[arg(long)]
        data: Option<PathBuf>,
        /// Number of test images.
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Output PNG.
        #[arg(long, default_value = "reconstructions.png")]
        out: PathBuf,
    },
    /// Print the adapter, backend, device type, limits and features in use.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: matmul GFLOP/s of every kernel variant (`bench` or `bench matmul`), or the
    /// classic VAE's whole training step (`bench step`).
    Bench(BenchArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchWhat>,
    #[command(flatten)]
    matmul: MatmulBenchArgs,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Matmul GFLOP/s of every kernel variant on the classic VAE's shapes (the default).
    Matmul(MatmulBenchArgs),
    /// The classic VAE's full training step (gather, forward, backward, Adam: what `train` runs)
    /// at several batch sizes: ms per step, examples/s, dispatches, host time, allocations.
    Step(StepBenchArgs),
}

#[derive(Args)]
struct MatmulBenchArgs {
    /// Only shapes whose name contains this (e.g. `square`, `784`).
    #[arg(long, default_value = "")]
    filter: String,
    /// Only this variant (`tiled`, `register` or `subgroup`); default: every one the adapter runs.
    #[arg(long)]
    variant: Option<String>,
    /// Seconds spent per (shape, variant).
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print JSON lines instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct StepBenchArgs {
    /// Batch sizes, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "128,1024,4096")]
    batch: Vec<usize>,
    /// Seconds of timed steps per batch size (at least 3 rounds run whatever this says).
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Also time every kernel (timestamp queries) and print the top kernels per batch size.
    #[arg(long)]
    profile: bool,
    /// Rows of the profile table.
    #[arg(long, default_value_t = 12)]
    top: usize,
    /// Print one JSON object per batch size instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// MNIST-layout directory with train-/t10k- IDX files, raw or .gz (default: built-in sprites).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Total epochs, with --resume until this many are done \[default: 50 on sprites, 10 on --data\].
    #[arg(long)]
    epochs: Option<u64>,
    /// Examples per step.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f32,
    /// Latent dimension (default 20).
    #[arg(long)]
    latent: Option<usize>,
    /// Hidden layer sizes, comma separated (default 400).
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Hidden activation: relu, leaky_relu\[:slope\], tanh, sigmoid, elu\[:alpha\] (default relu).
    #[arg(long)]
    activation: Option<String>,
    /// Decoder likelihood (alias --recon): bernoulli, gaussian\[:VARIANCE\] (fixed σ², default 1) or
    /// gaussian:learned (a learned per-pixel variance) \[default: bernoulli\]. Reported in nats.
    #[arg(long, visible_alias = "recon")]
    likelihood: Option<String>,
    /// A named architecture: `classic` (784-400-20-400-784, ReLU, Bernoulli, as PyTorch's example).
    #[arg(long)]
    preset: Option<String>,
    /// KL weight β (1 = the ELBO) \[default: 1\].
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f32>,
    /// How recon and KL are reduced: sum (the ELBO), mean (recon averaged over pixels too: KL
    /// weighs D times more), normalized (recon / D, KL / Z).
    #[arg(long, default_value = "sum")]
    reduction: String,
    /// KL annealing: constant, linear, sigmoid (Bowman et al. 2015), cyclical (Fu et al. 2019).
    #[arg(long)]
    kl_schedule: Option<String>,
    /// Steps over which linear/sigmoid annealing reaches the full KL weight.
    #[arg(long, default_value_t = 0)]
    kl_warmup: u64,
    /// Number of cycles of the cyclical schedule over the run.
    #[arg(long, default_value_t = 0)]
    kl_cycles: u64,
    /// Free bits: each latent dimension's KL counts at least this many nats (batch average), and
    /// dimensions under it get no KL gradient.
    #[arg(long, allow_negative_numbers = true)]
    free_bits: Option<f32>,
    /// BN-VAE (Zhu et al. 2020): batch-normalize the posterior mean, scaled so each dimension's
    /// expected KL stays above tau/2 (tau in \[0, 1\]).
    #[arg(long, allow_negative_numbers = true)]
    bn_vae: Option<f32>,
    /// Model: vae; ae (deterministic autoencoder: no sampling, no KL) for comparison; cvae
    /// (conditional VAE on the one-hot label: IDX labels, the sprites' shape).
    #[arg(long, default_value = "vae")]
    model: String,
    /// Resample binary pixels x ~ Bernoulli(pixel) every step.
    #[arg(long)]
    binarize: bool,
    /// Seed of initialisation, shuffling and noise.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Run directory (default: runs/<timestamp>, or the checkpoint's directory with --resume).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from this checkpoint (weights, Adam state, step, epoch, seed).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Steps between progress updates.
    #[arg(long, default_value_t = 10)]
    log_every: usize,
    /// Time every kernel of the first epoch (timestamp queries; slows that epoch) and print the
    /// GPU time per step by kernel, the top kernels first.
    #[arg(long)]
    profile: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Train(a) => train(*a),
        Cmd::Eval { checkpoint, data, batch, disentanglement, iwae, iwae_examples } => {
            eval(&checkpoint, data.as_deref(), batch, disentanglement, iwae, iwae_examples)
        }
        Cmd::Interpolate { checkpoint, data, from, to, steps, out } => {
            interpolate(&checkpoint, data.as_deref(), from, to, steps, &out)
        }
        Cmd::Traverse { checkpoint, data, index, range, steps, out } => {
            traverse(&checkpoint, data.as_deref(), index, range, steps, &out)
        }
        Cmd::Manifold { checkpoint, data, n, range, out_dir } => {
            manifold(&checkpoint, data.as_deref(), n, range, &out_dir)
        }
        Cmd::Plot { metrics, out } => plot(&metrics, out.as_deref()),
        Cmd::Sample { checkpoint, n, out, seed, label } => sample(&checkpoint, n, &out, seed, label),
        Cmd::Reconstruct { checkpoint, data, n, out } => reconstruct(&checkpoint, data.as_deref(), n, &out),
        Cmd::Info { json } => info(json),
        Cmd::Bench(b) => match b.what {
            Some(BenchWhat::Step(a)) => bench_step(&a),
            Some(BenchWhat::Matmul(m)) => bench(&m.filter, m.variant.as_deref(), m.seconds, m.json),
            None => bench(&b.matmul.filter, b.matmul.variant.as_deref(), b.matmul.seconds, b.matmul.json),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_data(data: Option<&Path>, seed: u64) -> Result<Split> {
    match data {
        Some(d) => idx::load_dir(d),
        None => Ok(sprites::sprites(seed)),
    }
}

/// The data a checkpoint was trained on (`sprites` or a directory), unless overridden.
fn checkpoint_data(ck: &Checkpoint, data: Option<&Path>) -> Result<Split> {
    match (data, ck.meta.get("data").map(String::as_str)) {
        (Some(d), _) => idx::load_dir(d),
        (None, None) | (None, Some("sprites")) => Ok(sprites::sprites(ck.meta_u64("data_seed").unwrap_or(0))),
        (None, Some(d)) => idx::load_dir(Path::new(d)),
    }
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

/// The objective from the flags, refusing contradictions (e.g. KL options on a plain autoencoder).
fn objective(a: &TrainArgs, model: ModelKind, total_steps: u64) -> Result<Objective> {
    if model == ModelKind::Ae {
        let kl_flags = [
            ("--beta", a.beta.is_some()),
            ("--kl-schedule", a.kl_schedule.is_some()),
            ("--free-bits", a.free_bits.is_some()),
            ("--kl-warmup", a.kl_warmup > 0),
            ("--kl-cycles", a.kl_cycles > 0),
        ];
        if let Some((flag, _)) = kl_flags.iter().find(|(_, given)| *given) {
            return Err(Error::InvalidArgument {
                name: flag.to_string(),
                detail: "the plain autoencoder (--model ae) has no KL term to weigh or schedule".into(),
            });
        }
    }
    let o = Objective {
        beta: a.beta.unwrap_or(1.0),
        reduction: Reduction::parse(&a.reduction)?,
        schedule: KlSchedule::from_name(
            a.kl_schedule.as_deref().unwrap_or("constant"),
            a.kl_warmup,
            a.kl_cycles,
            total_steps,
        )?,
        free_bits: a.free_bits.unwrap_or(0.0),
    };
    o.validate()?;
    Ok(o)
}

fn model_config(a: &TrainArgs, input_dim: usize, classes: usize) -> Result<VaeConfig> {
    let mut c = match a.preset.as_deref() {
        None | Some("classic") => VaeConfig::classic(),
        Some(p) => {
            return Err(Error::InvalidArgument {
                name: "--preset".into(),
                detail: format!("`{p}` is not one of: classic"),
            })
        }
    };
    c.input_dim = input_dim;
    c.model = ModelKind::parse(&a.model)?;
    c.bn_tau = a.bn_vae;
    if c.model == ModelKind::Cvae {
        c.classes = classes;
    }
    if let Some(l) = a.latent {
        c.latent = l;
    }
    if let Some(h) = &a.hidden {
        c.hidden = h.clone();
    }
    if let Some(s) = &a.activation {
        c.activation = Act::parse(s)?;
    }
    if let Some(s) = &a.likelihood {
        c.likelihood = Likelihood::parse(s)?;
    }
    c.validate()?;
    Ok(c)
}

/// With --resume, architecture flags must agree with the checkpoint.
fn check_resume_flags(a: &TrainArgs, ck: &Checkpoint) -> Result<()> {
    let c = &ck.config;
    let clash = |flag: &str, given: String, saved: String| Error::Checkpoint {
        path: ck.path.clone(),
        detail: format!(
            "it was trained with {flag} {saved} but {flag} {given} was given; drop the flag or start a new run"
        ),
    };
    if let Some(l) = a.latent.filter(|l| *l != c.latent) {
        return Err(clash("--latent", l.to_string(), c.latent.to_string()));
    }
    if let Some(h) = a.hidden.as_ref().filter(|h| **h != c.hidden) {
        return Err(clash("--hidden", format!("{h:?}"), format!("{:?}", c.hidden)));
    }
    if let Some(s) = &a.activation {
        if Act::parse(s)? != c.activation {
            return Err(clash("--activation", s.clone(), wgvae::vae::act_name(c.activation)));
        }
    }
    if let Some(s) = &a.likelihood {
        if Likelihood::parse(s)? != c.likelihood {
            return Err(clash("--likelihood", s.clone(), c.likelihood.name()));
        }
    }
    if a.bn_vae.is_some() && a.bn_vae != c.bn_tau {
        return Err(clash("--bn-vae", format!("{:?}", a.bn_vae), format!("{:?}", c.bn_tau)));
    }
    Ok(())
}

fn train(a: TrainArgs) -> Result<()> {
    // Flags that need no data are checked before anything is loaded or written.
    objective(&a, ModelKind::parse(&a.model)?, 1)?;
    if a.model != "cvae" {
        model_config(&a, 1, 0)?;
    }
    let mut opts = TrainOptions {
        batch: a.batch,
        lr: a.lr,
        seed: a.seed,
        objective: Objective::default(),
        binarize: a.binarize,
        log_every: a.log_every,
    };
    opts.validate()?;
    if a.epochs == Some(0) {
        return Err(Error::InvalidArgument { name: "--epochs".into(), detail: "must be at least 1".into() });
    }
    let ck = match &a.resume {
        Some(p) => {
            let ck = Checkpoint::load(p)?;
            check_resume_flags(&a, &ck)?;
            Some(ck)
        }
        None => None,
    };
    let split = match (&ck, &a.data) {
        (Some(ck), None) => checkpoint_data(ck, None)?,
        _ => load_data(a.data.as_deref(), 0)?,
    };
    let config = match &ck {
        Some(ck) => ck.config.clone(),
        None => model_config(&a, split.train.dim(), split.train.num_classes)?,
    };
    let epochs = a.epochs.unwrap_or(if split.name == "sprites" { 50 } else { 10 });
    let total_steps = epochs * split.train.n.div_ceil(a.batch.min(split.train.n)) as u64;
    opts.objective = objective(&a, config.model, total_steps)?;
    let out = match (&a.out, &a.resume) {
        (Some(o), _) => o.clone(),
        (None, Some(r)) => r.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf(),
        (None, None) => PathBuf::from("runs").join(timestamp()),
    };
    std::fs::create_dir_all(&out).map_err(|source| Error::Io { path: out.clone(), source })?;
    let probe = out.join(".wgvae-write-test");
    std::fs::write(&probe, b"").map_err(|source| Error::Io { path: out.clone(), source })?;
    let _ = std::fs::remove_file(&probe);

    let gpu = open_gpu()?;
    let mut trainer = match &ck {
        Some(ck) => Trainer::resume(&gpu, ck, opts, &split)?,
        None => Trainer::new(&gpu, config.clone(), opts, &split)?,
    };
    let hidden: Vec<String> = config.hidden.iter().map(|h| h.to_string()).collect();
    println!(
        "wgvae: {} ({} train / {} test images of {}x{}) on {} ({:?})",
        split.name,
        split.train.n,
        split.test.n,
        split.train.rows,
        split.train.cols,
        gpu.adapter().name,
        gpu.adapter().backend
    );
    println!(
        "model: {} {}-{}-{} {} {}, batch {}, lr {}, seed {}",
        config.model.name(),
        config.input_dim,
        hidden.join("-"),
        config.latent,
        wgvae::vae::act_name(config.activation),
        config.likelihood.name(),
        trainer.opts.batch,
        trainer.opts.lr,
        trainer.opts.seed
    );
    if config.model == ModelKind::Vae {
        let o = &trainer.opts.objective;
        println!(
            "objective: recon + {} x KL, reduction {}, schedule {}{}: the KL term weighs {} x its weight in the ELBO{}",
            o.beta,
            o.reduction.name(),
            o.schedule.describe(),
            if o.free_bits > 0.0 { format!(", free bits {} nats/dim", o.free_bits) } else { String::new() }
                + &config
                    .bn_tau
                    .map(|t| format!(", BN-VAE tau {t} (KL >= {:.2})", 0.5 * t * config.latent as f32))
                    .unwrap_or_default(),
            o.effective_kl_weight(config.input_dim, config.latent),
            if o.effective_kl_weight(config.input_dim, config.latent) == 1.0 { " (the true ELBO)" } else { "" }
        );
    }
    println!("writing to {}", out.display());
    if trainer.epoch >= epochs {
        println!("the checkpoint has already trained {} epochs (--epochs {epochs}): nothing to do", trainer.epoch);
        return Ok(());
    }
    let data_name = match &a.data {
        Some(d) => d.display().to_string(),
        None => ck.as_ref().and_then(|c| c.meta.get("data").cloned()).unwrap_or_else(|| "sprites".into()),
    };
    let ck_path = out.join("checkpoint.safetensors");
    let metrics_path = out.join("metrics.jsonl");
    let mut profiling = a.profile;
    if profiling {
        gpu.set_profiling(true)?;
        println!("profiling the first epoch: every kernel is timed, so it runs slower than the others");
    }
    while trainer.epoch < epochs {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("{}/{epochs}", trainer.epoch + 1));
        let (tr, secs) = trainer.train_epoch(&mut |p| {
            bar.set_length(p.batches as u64);
            bar.set_position(p.batch as u64);
            bar.set_message(format!("loss {:.2}  {:.0} ex/s", p.running_loss, p.examples_per_second));
        })?;
        bar.finish_and_clear();
        if profiling {
            gpu.set_profiling(false)?;
            profiling = false;
            let p = gpu.take_profile();
            let steps = split.train.n.div_ceil(trainer.opts.batch.min(split.train.n)) as f64;
            println!("GPU time per training step by kernel (epoch {}, {} steps):", trainer.epoch, steps);
            print!("{}", p.table(steps, 15));
        }
        let report = trainer.evaluate_full(&trainer.test)?;
        let te = report.loss;
        let m = EpochMetrics {
            epoch: trainer.epoch,
            step: trainer.step,
            train_loss: tr.loss,
            train_recon: tr.recon,
            train_kl: tr.kl,
            test_loss: te.loss,
            recon: te.recon,
            kl: te.kl,
            epoch_seconds: secs,
            examples_per_second: split.train.n as f64 / secs,
            kl_weight: trainer.opts.objective.kl_weight(trainer.step.saturating_sub(1)),
            kl_per_dim: report.kl_per_dim.clone(),
            active_units: report.active_units,
        };
        append_jsonl(&metrics_path, &m.to_json())?;
        let mut extra = std::collections::HashMap::new();
        extra.insert("data".to_string(), data_name.clone());
        trainer.save_with(&ck_path, &extra)?;
        println!(
            "epoch {:>3}/{}  train {:8.2}  test {:8.2} (recon {:8.2}, kl {:6.2})  kl weight {:.3}  AU {:>2}/{}  {:5.1} s  {:6.0} ex/s",
            m.epoch,
            epochs,
            m.train_loss,
            m.test_loss,
            m.recon,
            m.kl,
            m.kl_weight,
            m.active_units,
            config.latent,
            secs,
            m.examples_per_second
        );
    }
    let (sp, rp) = write_pictures(&out, &gpu, &trainer.vae, &split.test, trainer.opts.seed)?;
    let pp = plot_file(&metrics_path, None)?;
    let latent_maps =
        if config.latent == 2 { Some(manifold_files(&ck_path, a.data.as_deref(), 15, 3.0, &out)?) } else { None };
    println!("done: {} epochs, {} steps", trainer.epoch, trainer.step);
    println!("  metrics          {} (plotted: {})", metrics_path.display(), pp.display());
    println!("  checkpoint       {}", ck_path.display());
    println!("  samples          {}", sp.display());
    println!("  reconstructions  {}", rp.display());
    if let Some((mp, scp)) = latent_maps {
        println!("  latent manifold  {}", mp.display());
        println!("  latent scatter   {}", scp.display());
    }
    Ok(())
}

/// A checkpoint's model with its data, checked to fit together.
struct Loaded {
    gpu: Gpu,
    vae: wgvae::vae::Vae,
    split: Split,
    ck: Checkpoint,
}

fn load(checkpoint: &Path, data: Option<&Path>) -> Result<Loaded> {
    let ck = Checkpoint::load(checkpoint)?;
    let split = checkpoint_data(&ck, data)?;
    let gpu = open_gpu()?;
    let vae = ck.vae(&gpu)?;
    if split.test.dim() != vae.config.input_dim {
        return Err(Error::InvalidArgument {
            name: "--data".into(),
            detail: format!(
                "{} has {} pixels per image, the model takes {}",
                split.name,
                split.test.dim(),
                vae.config.input_dim
            ),
        });
    }
    Ok(Loaded { gpu, vae, split, ck })
}

fn test_image(split: &Split, i: usize, flag: &str) -> Result<Vec<f32>> {
    if i >= split.test.n {
        return Err(Error::InvalidArgument {
            name: flag.into(),
            detail: format!("{i} is past the {} test images", split.test.n),
        });
    }
    Ok(split.test.image(i).iter().map(|&p| p as f32 / 255.0).collect())
}

/// The label of test image `i`, when there are labels (a conditional VAE decodes with it).
fn test_label(split: &Split, i: usize) -> Option<usize> {
    split.test.labels.as_ref().and_then(|l| l.get(i)).map(|&v| v as usize)
}

fn interpolate(checkpoint: &Path, data: Option<&Path>, from: usize, to: usize, steps: usize, out: &Path) -> Result<()> {
    let l = load(checkpoint, data)?;
    let mut x = test_image(&l.split, from, "--from")?;
    x.extend(test_image(&l.split, to, "--to")?);
    // A conditional VAE encodes each end with its own label and decodes the row with the first's.
    let (la, lb) = (test_label(&l.split, from), test_label(&l.split, to));
    let zl = l.vae.config.latent;
    let mut z = wgvae::pictures::encode_means(&l.gpu, &l.vae, &x[..x.len() / 2], 1, la)?;
    z.extend(wgvae::pictures::encode_means(&l.gpu, &l.vae, &x[x.len() / 2..], 1, lb)?);
    let px = wgvae::pictures::interpolation(&l.gpu, &l.vae, &z[..zl], &z[zl..], steps, la)?;
    let (h, w) = (l.split.test.rows, l.split.test.cols);
    // The two inputs framing the decoded row.
    let mut row = x[..h * w].to_vec();
    row.extend(px);
    row.extend(&x[h * w..]);
    wgvae::image::save_grid(out, &row, steps + 2, h, w, steps + 2)?;
    println!("wrote input {from}, {steps} decoded steps and input {to} to {}", out.display());
    Ok(())
}

fn traverse(checkpoint: &Path, data: Option<&Path>, index: usize, range: f32, steps: usize, out: &Path) -> Result<()> {
    let l = load(checkpoint, data)?;
    let x = test_image(&l.split, index, "--index")?;
    let label = test_label(&l.split, index);
    let base = wgvae::pictures::encode_means(&l.gpu, &l.vae, &x, 1, label)?;
    let test = wgvae::data::gpu::GpuImages::upload(&l.gpu, &l.split.test)?;
    let r = wgvae::train::evaluate_full(&l.gpu, &l.vae, &test, 500, l.ck.meta_u64("seed").unwrap_or(0))?;
    // Most active first: KL per dimension for a VAE, the variance of the code for an autoencoder.
    let activity = if r.loss.kl > 0.0 {
        r.kl_per_dim.clone()
    } else {
        wgvae::vae::metrics::active_units(&r.mu, l.split.test.n, l.vae.config.latent, 0.01)?.variances
    };
    let dims = wgvae::pictures::by_activity(&activity);
    let px = wgvae::pictures::traversal(&l.gpu, &l.vae, &base, &dims, range, steps, label)?;
    wgvae::image::save_grid(out, &px, dims.len() * steps, l.split.test.rows, l.split.test.cols, steps)?;
    let order: Vec<String> = dims.iter().map(|&d| format!("z{d} ({:.2})", activity[d])).collect();
    println!("wrote {} rows (dimension order, activity: {}) to {}", dims.len(), order.join(", "), out.display());
    Ok(())
}

fn manifold(checkpoint: &Path, data: Option<&Path>, n: usize, range: f32, out_dir: &Path) -> Result<()> {
    let (mp, sp) = manifold_files(checkpoint, data, n, range, out_dir)?;
    println!("wrote {} and {}", mp.display(), sp.display());
    Ok(())
}

/// Writes manifold.png and scatter.png into `out_dir` and returns their paths.
fn manifold_files(
    checkpoint: &Path,
    data: Option<&Path>,
    n: usize,
    range: f32,
    out_dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let l = load(checkpoint, data)?;
    // A conditional VAE's manifold is drawn for class 0.
    let px = wgvae::pictures::manifold(&l.gpu, &l.vae, n, range, Some(0))?;
    std::fs::create_dir_all(out_dir).map_err(|source| Error::Io { path: out_dir.to_path_buf(), source })?;
    let mp = out_dir.join("manifold.png");
    wgvae::image::save_grid(&mp, &px, n * n, l.split.test.rows, l.split.test.cols, n)?;
    let test = wgvae::data::gpu::GpuImages::upload(&l.gpu, &l.split.test)?;
    let r = wgvae::train::evaluate_full(&l.gpu, &l.vae, &test, 500, l.ck.meta_u64("seed").unwrap_or(0))?;
    let pts: Vec<(f32, f32)> = r.mu.chunks_exact(2).map(|c| (c[0], c[1])).collect();
    let png = wgvae::plot::scatter_png(&pts, l.split.test.labels.as_deref(), "test codes (posterior means)")?;
    let sp = out_dir.join("scatter.png");
    wgvae::checkpoint::write_atomic(&sp, &png)?;
    Ok((mp, sp))
}

fn plot(metrics: &Path, out: Option<&Path>) -> Result<()> {
    let out = plot_file(metrics, out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// Plots `metrics` into `out` (default metrics.png beside it) and returns the path.
fn plot_file(metrics: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let text = std::fs::read_to_string(metrics).map_err(|source| Error::Io { path: metrics.to_path_buf(), source })?;
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Data { path: metrics.to_path_buf(), detail: format!("line {}: {e}", i + 1) })
        })
        .collect::<Result<Vec<serde_json::Value>>>()?;
    let png = wgvae::plot::metrics_png(&lines)?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| metrics.with_file_name("metrics.png"));
    wgvae::checkpoint::write_atomic(&out, &png)?;
    Ok(out)
}

fn eval(
    checkpoint: &Path,
    data: Option<&Path>,
    batch: Option<usize>,
    disentanglement: bool,
    iwae: Option<usize>,
    iwae_examples: Option<usize>,
) -> Result<()> {
    if batch == Some(0) {
        return Err(Error::InvalidArgument { name: "--batch".into(), detail: "must be at least 1".into() });
    }
    let Loaded { gpu, vae, split, ck } = load(checkpoint, data)?;
    let batch = batch.unwrap_or_else(|| wgvae::train::eval_batch(ck.meta_u64("batch").unwrap_or(128) as usize));
    let test = wgvae::data::gpu::GpuImages::upload(&gpu, &split.test)?;
    let seed = ck.meta_u64("seed").unwrap_or(0);
    let r = wgvae::train::evaluate_full(&gpu, &vae, &test, batch, seed)?;
    let e = r.loss;
    let v = serde_json::json!({
        "checkpoint": checkpoint.display().to_string(), "data": split.name, "examples": split.test.n,
        "epoch": ck.meta_u64("epoch"), "model": vae.config.model.name(),
        "test_loss": e.loss, "recon": e.recon, "kl": e.kl,
        "active_units": r.active_units, "kl_per_dim": r.kl_per_dim,
        "kl_weight": ck.meta.get("kl_weight").and_then(|w| w.parse::<f64>().ok()),
        "unit": "nats per example (negative ELBO, lower is better)",
    });
    let mut v = v;
    if let Some(k) = iwae {
        let mut imgs = split.test.clone();
        if let Some(m) = iwae_examples {
            if m == 0 {
                return Err(Error::InvalidArgument {
                    name: "--iwae-examples".into(),
                    detail: "must be at least 1".into(),
                });
            }
            imgs.n = imgs.n.min(m);
            imgs.pixels.truncate(imgs.n * imgs.dim());
        }
        let gi = wgvae::data::gpu::GpuImages::upload(&gpu, &imgs)?;
        let r = wgvae::vae::iwae::iwae_log_likelihood(&gpu, &vae, &gi, k, seed)?;
        v["iwae_log_likelihood"] = serde_json::json!(r.log_likelihood);
        v["iwae_k"] = serde_json::json!(r.k);
        v["iwae_examples"] = serde_json::json!(r.examples);
    }
    if disentanglement {
        let (Some(tf), Some(trf)) = (&split.test.factors, &split.train.factors) else {
            return Err(Error::InvalidArgument {
                name: "--disentanglement".into(),
                detail: format!("{} has no known generating factors; the built-in sprites do", split.name),
            });
        };
        // Codes of every image (train and test): MIG's histograms need thousands of samples.
        let train = wgvae::data::gpu::GpuImages::upload(&gpu, &split.train)?;
        let rt = wgvae::train::evaluate_full(&gpu, &vae, &train, batch, seed)?;
        let mut codes = rt.mu;
        codes.extend(&r.mu);
        let mut factors = trf.clone();
        factors.extend(tf.iter().cloned());
        let m = wgvae::vae::metrics::mutual_information_gap(
            &codes,
            factors.len(),
            vae.config.latent,
            &factors,
            &wgvae::data::sprites::FACTOR_SIZES,
            20,
        )?;
        v["mig"] = serde_json::json!(m.mig);
        v["mig_per_factor"] = serde_json::json!(split
            .train
            .factor_names
            .iter()
            .zip(&m.per_factor)
            .map(|(n, g)| (n.clone(), serde_json::json!(g)))
            .collect::<serde_json::Map<_, _>>());
    }
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

fn sample(checkpoint: &Path, n: usize, out: &Path, seed: u64, label: Option<usize>) -> Result<()> {
    let ck = Checkpoint::load(checkpoint)?;
    let gpu = open_gpu()?;
    let vae = ck.vae(&gpu)?;
    let side = (vae.config.input_dim as f64).sqrt() as usize;
    if side * side != vae.config.input_dim {
        return Err(Error::InvalidArgument {
            name: "--checkpoint".into(),
            detail: "the model's inputs are not square images".into(),
        });
    }
    let cols = (n as f64).sqrt().ceil() as usize;
    let y = match (vae.config.model, label) {
        (ModelKind::Cvae, l) => {
            let c = vae.config.classes;
            let labels: Vec<usize> = (0..n).map(|i| l.unwrap_or((i / cols) % c)).collect();
            Some(wgvae::data::gpu::onehot_rows(&gpu, &labels, c)?)
        }
        (_, Some(_)) => {
            return Err(Error::InvalidArgument {
                name: "--label".into(),
                detail: format!(
                    "only a conditional VAE (--model cvae) draws chosen classes; this is a {}",
                    vae.config.model.name()
                ),
            })
        }
        (_, None) => None,
    };
    let px = vae.sample_cond(&gpu, n, seed, y.as_ref())?.to_vec(&gpu)?;
    wgvae::image::save_grid(out, &px, n, side, side, cols)?;
    println!("wrote {n} samples to {}", out.display());
    Ok(())
}

fn reconstruct(checkpoint: &Path, data: Option<&Path>, n: usize, out: &Path) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidArgument { name: "--n".into(), detail: "must be at least 1".into() });
    }
    let Loaded { gpu, vae, split, .. } = load(checkpoint, data)?;
    let t = &split.test;
    let k = n.min(t.n);
    let inputs: Vec<f32> = t.pixels[..k * t.dim()].iter().map(|&p| p as f32 / 255.0).collect();
    let x = wgvae::Tensor::from_slice(&gpu, k, t.dim(), &inputs)?;
    let y = match (&t.labels, vae.config.model) {
        (Some(l), ModelKind::Cvae) => {
            let labels: Vec<usize> = l[..k].iter().map(|&v| v as usize).collect();
            Some(wgvae::data::gpu::onehot_rows(&gpu, &labels, vae.config.classes)?)
        }
        _ => None,
    };
    let rec = vae.reconstruct_cond(&gpu, &x, y.as_ref())?.to_vec(&gpu)?;
    let mut both = inputs;
    both.extend(rec);
    wgvae::image::save_grid(out, &both, 2 * k, t.rows, t.cols, k)?;
    println!("wrote {k} test images (top) and their reconstructions (bottom) to {}", out.display());
    Ok(())
}

fn info(json: bool) -> wgvae::Result<()> {
    let gpu = open_gpu()?;
    let a = gpu.adapter();
    let l = gpu.limits();
    let limits = serde_json::json!({
        "max_storage_buffer_binding_size": l.max_storage_buffer_binding_size,
        "max_buffer_size": l.max_buffer_size,
        "max_storage_buffers_per_shader_stage": l.max_storage_buffers_per_shader_stage,
        "max_compute_workgroup_storage_size": l.max_compute_workgroup_storage_size,
        "max_compute_invocations_per_workgroup": l.max_compute_invocations_per_workgroup,
        "max_compute_workgroup_size_x": l.max_compute_workgroup_size_x,
        "max_compute_workgroups_per_dimension": l.max_compute_workgroups_per_dimension,
        "min_uniform_buffer_offset_alignment": l.min_uniform_buffer_offset_alignment,
    });
    let features: Vec<String> = gpu.features().iter_names().map(|(n, _)| n.to_string()).collect();
    let v = serde_json::json!({
        "adapter": a.name,
        "backend": format!("{:?}", a.backend),
        "device_type": format!("{:?}", a.device_type),
        "driver": a.driver,
        "driver_info": a.driver_info,
        "vendor": format!("0x{:04x}", a.vendor),
        "device": format!("0x{:04x}", a.device),
        "matmul_variant": gpu.matmul_variant().name(),
        "features": features,
        "limits": limits,
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        println!("adapter        {}", a.name);
        println!("backend        {:?}", a.backend);
        println!("device type    {:?}", a.device_type);
        println!("driver         {} {}", a.driver, a.driver_info);
        println!("matmul kernel  {}", gpu.matmul_variant().name());
        println!(
            "features       {}",
            if features.is_empty() { "(none beyond WebGPU core)".to_string() } else { features.join(", ") }
        );
        println!("limits");
        if let Some(obj) = limits.as_object() {
            for (k, val) in obj {
                println!("  {k:<40} {val}");
            }
        }
    }
    Ok(())
}

fn bench(filter: &str, variant: Option<&str>, seconds: f64, json: bool) -> wgvae::Result<()> {
    use wgvae::bench::{time_matmul, SHAPES};
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(wgvae::Error::InvalidArgument {
            name: "--seconds".into(),
            detail: format!("{seconds} is not a positive duration"),
        });
    }
    let variants = match variant {
        Some(v) => vec![v.parse::<wgvae::MatmulVariant>()?],
        None => wgvae::MatmulVariant::ALL.to_vec(),
    };
    let gpu = open_gpu()?;
    // A variant asked for by name must run; of "all", those this adapter cannot run are left out.
    let variants: Vec<_> = match variant {
        Some(_) => {
            variants.iter().try_for_each(|&v| gpu.check_variant(v))?;
            variants
        }
        None => variants.into_iter().filter(|&v| gpu.check_variant(v).is_ok()).collect(),
    };
    let a = gpu.adapter();
    if !json {
        println!(
            "matmul on {} ({:?}, {:?}); default variant: {}",
            a.name,
            a.backend,
            a.device_type,
            gpu.matmul_variant().name()
        );
        print!("{:<18} {:>16} {:>6}", "shape", "MxKxN", "layout");
        for v in &variants {
            print!(" {:>12}", format!("{} GF/s", v.name()));
        }
        println!();
    }
    for s in SHAPES.iter().filter(|s| s.name.contains(filter)) {
        if !json {
            print!("{:<18} {:>16} {:>6}", s.name, format!("{}x{}x{}", s.m, s.k, s.n), s.layout());
        }
        for v in &variants {
            let r = time_matmul(&gpu, s, *v, std::time::Duration::from_secs_f64(seconds))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"adapter": a.name, "shape": s.name, "m": s.m, "k": s.k, "n": s.n,
                        "layout": s.layout(), "variant": v.name(), "seconds": r.seconds, "gflops": r.gflops})
                );
            } else {
                print!(" {:>12.2}", r.gflops);
                use std::io::Write;
                let _ = std::io::stdout().flush();
            }
        }
        if !json {
            println!();
        }
    }
    Ok(())
}

/// The adapter as the benchmarks' JSON and BENCHMARKS.md describe it.
fn adapter_json(gpu: &Gpu) -> serde_json::Value {
    let a = gpu.adapter();
    serde_json::json!({
        "adapter": a.name, "backend": format!("{:?}", a.backend), "device_type": format!("{:?}", a.device_type),
        "driver": format!("{} {}", a.driver, a.driver_info).trim(), "matmul": gpu.matmul_variant().name(),
    })
}

fn bench_step(a: &StepBenchArgs) -> Result<()> {
    if !(a.seconds.is_finite() && a.seconds > 0.0) {
        return Err(Error::InvalidArgument {
            name: "--seconds".into(),
            detail: format!("{} is not a positive duration", a.seconds),
        });
    }
    if let Some(b) = a.batch.iter().find(|&&b| b == 0) {
        return Err(Error::InvalidArgument { name: "--batch".into(), detail: format!("{b}: must be at least 1") });
    }
    let gpu = open_gpu()?;
    if a.profile && !gpu.can_profile() {
        gpu.set_profiling(true)?; // the error names the adapter
    }
    let config = VaeConfig::classic();
    let info = adapter_json(&gpu);
    if !a.json {
        println!(
            "training step of the classic VAE (784-400-20-400-784, Adam) on {} ({:?}, {:?}), matmul {}",
            gpu.adapter().name,
            gpu.adapter().backend,
            gpu.adapter().device_type,
            gpu.matmul_variant().name()
        );
        println!(
            "{:>6} {:>10} {:>17} {:>11} {:>10} {:>11} {:>12} {:>14}",
            "batch", "ms/step", "(min-max)", "examples/s", "dispatches", "host ms", "buffers new", "bytes up"
        );
    }
    for &b in &a.batch {
        let (r, prof) =
            wgvae::bench::bench_step(&gpu, &config, b, std::time::Duration::from_secs_f64(a.seconds), a.profile)?;
        if a.json {
            let mut v = r.to_json();
            v["runner"] = serde_json::json!(format!("wgvae {}", env!("CARGO_PKG_VERSION")));
            v["model"] = serde_json::json!("classic");
            for (k, val) in info.as_object().into_iter().flatten() {
                v[k] = val.clone();
            }
            if let Some(p) = &prof {
                let per = p.submissions.max(1) as f64;
                v["profile"] = serde_json::json!(p
                    .rows
                    .iter()
                    .map(|row| serde_json::json!({"kernel": row.label, "calls_per_step": row.calls as f64 / per,
                        "ms_per_step": row.total_ms / per}))
                    .collect::<Vec<_>>());
            }
            println!("{v}");
        } else {
            println!(
                "{:>6} {:>10.2} {:>17} {:>11.0} {:>10.1} {:>11.2} {:>12.2} {:>14.0}",
                b,
                r.ms_per_step,
                format!("({:.2}-{:.2})", r.ms_min, r.ms_max),
                r.examples_per_second,
                r.dispatches_per_step,
                r.cpu_ms_per_step,
                r.buffers_allocated_per_step,
                r.bytes_uploaded_per_step
            );
            if let Some(p) = &prof {
                println!("  GPU time per step by kernel (batch {b}, {} steps timed one by one):", p.submissions);
                for line in p.table(p.submissions as f64, a.top).lines() {
                    println!("    {line}");
                }
            }
        }
    }
    Ok(())
}

/// Opens the adapter the environment asks for (`WGPU_BACKEND`, `WGPU_ADAPTER_NAME`,
/// `WGVAE_MATMUL`). The binary owns its process, so it quiets what drivers print while adapters
/// are probed (Mesa's lavapipe conformance warning, EGL's "XDG_RUNTIME_DIR is invalid" lines)
/// unless `WGVAE_DRIVER_STDERR=1`; the library itself never touches stderr or the environment.
fn open_gpu() -> Result<Gpu> {
    let quiet = std::env::var_os("WGVAE_DRIVER_STDERR").is_none();
    if quiet && std::env::var_os("MESA_VK_IGNORE_CONFORMANCE_WARNING").is_none() {
        // Single-threaded here: no other thread reads the environment yet.
        std::env::set_var("MESA_VK_IGNORE_CONFORMANCE_WARNING", "1");
    }
    let opts = wgvae::GpuOptions::from_env()?;
    if quiet {
        with_stderr_silenced(|| Gpu::with_options(opts))
    } else {
        Gpu::with_options(opts)
    }
}

/// Runs `f` with file descriptor 2 pointed at /dev/null, then restores it.
fn with_stderr_silenced<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(unix)]
    // SAFETY: plain fd juggling; every fd opened here is closed, and fd 2 is restored.
    unsafe {
        let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        let saved = libc::dup(2);
        if devnull >= 0 && saved >= 0 {
            libc::dup2(devnull, 2);
            let r = f();
            libc::dup2(saved, 2);
            libc::close(saved);
            libc::close(devnull);
            return r;
        }
        if devnull >= 0 {
            libc::close(devnull);
        }
        if saved >= 0 {
            libc::close(saved);
        }
    }
    f()
}
