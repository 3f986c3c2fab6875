//! `wgvae` command-line tool: argument parsing and printing over the library.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wgvae::checkpoint::Checkpoint;
use wgvae::data::{idx, sprites, Split};
use wgvae::ops::Act;
use wgvae::train::{Control, EpochMetrics, FitOptions, TrainOptions, Trainer};
use wgvae::vae::objective::{KlSchedule, Objective, Reduction};
use wgvae::vae::{Likelihood, ModelKind, VaeConfig};
use wgvae::{Error, Gpu, MatmulVariant, Result};

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
    Eval(EvalArgs),
    /// Decode draws from the prior into a PNG grid.
    Sample(SampleArgs),
    /// Write test images above their reconstructions as a PNG grid.
    Reconstruct {
        #[command(flatten)]
        src: Source,
        /// Number of test images.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=4096))]
        n: u64,
    },
    /// Decode the straight line between the latent codes of two test images.
    Interpolate {
        #[command(flatten)]
        src: Source,
        /// Index of the first test image.
        #[arg(long, default_value_t = 0)]
        from: usize,
        /// Index of the second test image.
        #[arg(long, default_value_t = 1)]
        to: usize,
        /// Decoded images between them, ends included.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(2..=4096))]
        steps: u64,
    },
    /// Sweep each latent dimension around a test image's code, one row each, most active first.
    Traverse {
        #[command(flatten)]
        src: Source,
        /// The test image whose code is the centre of the sweep.
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// Half-width of the sweep in latent units.
        #[arg(long, default_value_t = 3.0)]
        range: f32,
        /// Images per row.
        #[arg(long, default_value_t = 11, value_parser = clap::value_parser!(u64).range(2..=4096))]
        steps: u64,
    },
    /// For a 2-D latent space: the decoded manifold grid and a scatter of the test codes by label
    /// (manifold.png and scatter.png in --out, a directory).
    Manifold {
        #[command(flatten)]
        src: Source,
        /// Grid side.
        #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=256))]
        n: u64,
        /// Half-width of the grid in latent units.
        #[arg(long, default_value_t = 3.0)]
        range: f32,
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
    /// Print the adapter, backend, device type, limits and features in use.
    Info {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks: matmul GFLOP/s per kernel variant (`bench`, `bench matmul`) or the classic VAE's
    /// whole training step (`bench step`).
    Bench(BenchArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// 784-400-20-400-784, ReLU, Bernoulli (Kingma & Welling; PyTorch's example).
    Classic,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleName {
    Constant,
    Linear,
    Sigmoid,
    Cyclical,
}

fn parse_act(s: &str) -> std::result::Result<Act, String> {
    s.parse().map_err(|e: Error| e.to_string())
}
fn parse_likelihood(s: &str) -> std::result::Result<Likelihood, String> {
    s.parse().map_err(|e: Error| e.to_string())
}
fn parse_model(s: &str) -> std::result::Result<ModelKind, String> {
    s.parse().map_err(|e: Error| e.to_string())
}
fn parse_reduction(s: &str) -> std::result::Result<Reduction, String> {
    s.parse().map_err(|e: Error| e.to_string())
}
fn parse_variant(s: &str) -> std::result::Result<MatmulVariant, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

#[derive(Args)]
struct TrainArgs {
    /// MNIST-layout directory with train-/t10k- IDX files, raw or .gz (default: built-in sprites).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Total epochs, with --resume until this many are done (default: 50 on sprites, 10 on --data).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    epochs: Option<u64>,
    /// Examples per step.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3, allow_negative_numbers = true)]
    lr: f32,
    /// Latent dimension (default 20).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    latent: Option<u64>,
    /// Hidden layer sizes, comma separated (default 400).
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    /// Hidden activation: relu, leaky_relu[:SLOPE], tanh, sigmoid, elu[:ALPHA], identity (default relu).
    #[arg(long, value_parser = parse_act)]
    activation: Option<Act>,
    /// Decoder likelihood: bernoulli, gaussian[:VARIANCE] (fixed variance, default 1) or
    /// gaussian:learned (a learned per-pixel variance); reported in nats (default bernoulli).
    #[arg(long, visible_alias = "recon", value_parser = parse_likelihood)]
    likelihood: Option<Likelihood>,
    /// A named architecture.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// KL weight β (1: the ELBO).
    #[arg(long, allow_negative_numbers = true)]
    beta: Option<f32>,
    /// How reconstruction and KL are reduced: sum (the ELBO), mean (reconstruction averaged over
    /// the pixels too, so KL weighs D times more), normalized (reconstruction / D, KL / Z).
    #[arg(long, default_value = "sum", value_parser = parse_reduction)]
    reduction: Reduction,
    /// KL annealing: constant, linear or sigmoid over --kl-warmup steps (Bowman et al. 2015), or
    /// cyclical with --kl-cycles cycles (Fu et al. 2019).
    #[arg(long, value_enum)]
    kl_schedule: Option<ScheduleName>,
    /// Steps over which linear or sigmoid annealing reaches the full KL weight.
    #[arg(long, default_value_t = 0)]
    kl_warmup: u64,
    /// Cycles of the cyclical schedule over the run.
    #[arg(long, default_value_t = 0)]
    kl_cycles: u64,
    /// Free bits: each latent dimension's KL counts at least this many nats (batch average); dimensions
    /// under it get no KL gradient.
    #[arg(long, allow_negative_numbers = true)]
    free_bits: Option<f32>,
    /// BN-VAE (Zhu et al. 2020): batch-normalize the posterior mean so each dimension's expected KL
    /// stays above tau/2 (tau in [0, 1]).
    #[arg(long, allow_negative_numbers = true)]
    bn_vae: Option<f32>,
    /// vae, ae (deterministic autoencoder: no sampling, no KL) or cvae (conditional VAE on the
    /// one-hot label: IDX labels, the sprites' shape).
    #[arg(long, default_value = "vae", value_parser = parse_model)]
    model: ModelKind,
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
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    log_every: u64,
    /// Time every kernel of the first epoch (timestamp queries; slows that epoch) and print the GPU
    /// time per step by kernel.
    #[arg(long)]
    profile: bool,
    /// Print nothing but errors and the final list of files.
    #[arg(long)]
    quiet: bool,
    /// Print one JSON object per epoch on stdout (the metrics.jsonl line) and nothing else there.
    #[arg(long, conflicts_with = "quiet")]
    json: bool,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint to evaluate.
    #[arg(long)]
    checkpoint: PathBuf,
    /// MNIST-layout directory (default: the data the checkpoint was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Examples per evaluation batch (default: the one training evaluated with, so the figures
    /// match metrics.jsonl; each batch draws its own z).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// Also the Mutual Information Gap (Chen et al. 2018) of the posterior means against the data's
    /// known generating factors (the built-in sprites).
    #[arg(long)]
    disentanglement: bool,
    /// Also log p(x) estimated with K importance samples per example (Burda et al. 2016), K up to 5000.
    #[arg(long)]
    iwae: Option<usize>,
    /// Use only the first N test images for --iwae (it costs K decoder passes per image).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    iwae_examples: Option<u64>,
}

#[derive(Args)]
struct SampleArgs {
    /// Checkpoint to sample from.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Number of samples.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    n: u64,
    /// Output PNG (default: samples-SEED.png beside the checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed of the prior draws.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Class to draw (conditional VAE only; default: one class per row of the grid).
    #[arg(long)]
    label: Option<usize>,
}

/// A checkpoint, its data and where a picture goes.
#[derive(Args)]
struct Source {
    /// Checkpoint to use.
    #[arg(long)]
    checkpoint: PathBuf,
    /// MNIST-layout directory (default: the data the checkpoint was trained on).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Output PNG (a directory for `manifold`; default: beside the checkpoint).
    #[arg(long)]
    out: Option<PathBuf>,
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
    /// The classic VAE's full training step (what `train` runs) at several batch sizes: ms per
    /// step, examples/s, dispatches, host time, allocations.
    Step(StepBenchArgs),
}

#[derive(Args)]
struct MatmulBenchArgs {
    /// Only shapes whose name contains this (e.g. `square`, `784`).
    #[arg(long, default_value = "")]
    filter: String,
    /// Only this variant (tiled, register, subgroup); default: every one the adapter runs.
    #[arg(long, value_parser = parse_variant)]
    variant: Option<MatmulVariant>,
    /// Seconds per (shape, variant).
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

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Train(a) => train(*a),
        Cmd::Eval(a) => eval(&a),
        Cmd::Sample(a) => sample(&a),
        Cmd::Reconstruct { src, n } => reconstruct(&src, n as usize),
        Cmd::Interpolate { src, from, to, steps } => interpolate(&src, from, to, steps as usize),
        Cmd::Traverse { src, index, range, steps } => traverse(&src, index, range, steps as usize),
        Cmd::Manifold { src, n, range } => manifold(&src, n as usize, range),
        Cmd::Plot { metrics, out } => plot(&metrics, out.as_deref()).map(|p| println!("wrote {}", p.display())),
        Cmd::Info { json } => info(json),
        Cmd::Bench(b) => match b.what {
            Some(BenchWhat::Step(a)) => bench_step(&a),
            Some(BenchWhat::Matmul(m)) => bench_matmul(&m),
            None => bench_matmul(&b.matmul),
        },
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", with_flags(e));
            ExitCode::FAILURE
        }
    }
}

/// The library names arguments by field (`batch`, `free_bits`); the CLI's user knows them as
/// flags (`--batch`, `--free-bits`).
fn with_flags(e: Error) -> String {
    const RENAMED: [(&str, &str); 5] = [
        ("bn_tau", "--bn-vae"),
        ("iwae_k", "--iwae"),
        ("labels", "--model cvae"),
        ("classes", "--model cvae"),
        ("n", "--n"),
    ];
    if let Error::InvalidArgument { name, detail } = &e {
        if let Some((_, flag)) = RENAMED.iter().find(|(f, _)| f == name) {
            return format!("invalid argument `{flag}`: {detail}");
        }
        if name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return format!("invalid argument `--{}`: {detail}", name.replace('_', "-"));
        }
    }
    e.to_string()
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
        for fd in [devnull, saved] {
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
    f()
}

fn load_data(data: Option<&Path>) -> Result<Split> {
    match data {
        Some(d) => idx::load_dir(d),
        None => Ok(sprites::sprites(0)),
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
    let name = match a.kl_schedule.unwrap_or(ScheduleName::Constant) {
        ScheduleName::Constant => "constant",
        ScheduleName::Linear => "linear",
        ScheduleName::Sigmoid => "sigmoid",
        ScheduleName::Cyclical => "cyclical",
    };
    let o = Objective {
        beta: a.beta.unwrap_or(1.0),
        reduction: a.reduction,
        schedule: KlSchedule::from_name(name, a.kl_warmup, a.kl_cycles, total_steps)?,
        free_bits: a.free_bits.unwrap_or(0.0),
    };
    o.validate()?;
    Ok(o)
}

fn model_config(a: &TrainArgs, input_dim: usize, classes: usize) -> Result<VaeConfig> {
    let mut c = match a.preset {
        None | Some(Preset::Classic) => VaeConfig::classic(),
    };
    c.input_dim = input_dim;
    c.model = a.model;
    c.bn_tau = a.bn_vae;
    c.classes = if c.model == ModelKind::Cvae { classes } else { 0 };
    c.latent = a.latent.map_or(c.latent, |l| l as usize);
    c.hidden = a.hidden.clone().unwrap_or(c.hidden);
    c.activation = a.activation.unwrap_or(c.activation);
    c.likelihood = a.likelihood.unwrap_or(c.likelihood);
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
    let checks = [
        ("--latent", a.latent.map(|l| l.to_string()), c.latent.to_string()),
        ("--hidden", a.hidden.as_ref().map(|h| format!("{h:?}")), format!("{:?}", c.hidden)),
        ("--activation", a.activation.map(|x| x.to_string()), c.activation.to_string()),
        ("--likelihood", a.likelihood.map(|x| x.to_string()), c.likelihood.to_string()),
        ("--bn-vae", a.bn_vae.map(|t| format!("{:?}", Some(t))), format!("{:?}", c.bn_tau)),
    ];
    match checks.into_iter().find(|(_, given, saved)| given.as_ref().is_some_and(|g| g != saved)) {
        Some((flag, given, saved)) => Err(clash(flag, given.unwrap_or_default(), saved)),
        None => Ok(()),
    }
}

fn train(a: TrainArgs) -> Result<()> {
    // Flags that need no data are checked before anything is loaded or written.
    objective(&a, a.model, 1)?;
    if a.model != ModelKind::Cvae {
        model_config(&a, 1, 0)?;
    }
    let mut opts = TrainOptions {
        batch: a.batch as usize,
        lr: a.lr,
        seed: a.seed,
        binarize: a.binarize,
        log_every: a.log_every as usize,
        ..Default::default()
    };
    opts.validate()?;
    let ck = a.resume.as_ref().map(Checkpoint::load).transpose()?;
    if let Some(ck) = &ck {
        check_resume_flags(&a, ck)?;
    }
    let split = match (&ck, &a.data) {
        (Some(ck), None) => ck.data(None)?,
        _ => load_data(a.data.as_deref())?,
    };
    let config = match &ck {
        Some(ck) => ck.config.clone(),
        None => model_config(&a, split.train.dim(), split.train.num_classes())?,
    };
    let epochs = a.epochs.unwrap_or(if split.name == "sprites" { 50 } else { 10 });
    let total_steps = epochs * split.train.n().div_ceil(opts.batch.min(split.train.n())) as u64;
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
    let talk = !(a.quiet || a.json);
    if talk {
        print_header(&gpu, &split, &trainer, &config, &out);
    }
    if trainer.epoch >= epochs {
        println!("the checkpoint has already trained {} epochs (--epochs {epochs}): nothing to do", trainer.epoch);
        return Ok(());
    }
    let data_name = match (&a.data, &ck) {
        (Some(d), _) => d.display().to_string(),
        (None, Some(c)) => c.meta.get("data").cloned().unwrap_or_else(|| "sprites".into()),
        (None, None) => "sprites".into(),
    };
    let fit = FitOptions { epochs, run_dir: Some(out.clone()), meta: [("data".to_string(), data_name)].into() };
    if a.profile {
        gpu.set_profiling(true)?;
        if talk {
            println!("profiling the first epoch: every kernel is timed, so it runs slower than the others");
        }
    }
    let bar: RefCell<Option<indicatif::ProgressBar>> = RefCell::new(None);
    let steps_per_epoch = split.train.n().div_ceil(trainer.opts.batch.min(split.train.n()));
    let mut on_progress = |p: &wgvae::train::Progress| {
        if !talk {
            return;
        }
        let mut b = bar.borrow_mut();
        let pb = b.get_or_insert_with(|| {
            let pb = indicatif::ProgressBar::new(p.batches as u64);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "epoch {prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            pb.set_prefix(format!("{}/{epochs}", p.epoch));
            pb
        });
        pb.set_position(p.batch as u64);
        pb.set_message(format!("loss {:.2}  {:.0} ex/s", p.running_loss, p.examples_per_second));
    };
    let mut on_epoch = |m: &EpochMetrics| {
        if let Some(pb) = bar.borrow_mut().take() {
            pb.finish_and_clear();
        }
        if gpu.profiling() {
            let _ = gpu.set_profiling(false);
            let p = gpu.take_profile();
            println!("GPU time per training step by kernel (epoch {}, {steps_per_epoch} steps):", m.epoch);
            print!("{}", p.table(steps_per_epoch as f64, 15));
        }
        if a.json {
            println!("{}", m.to_json_line());
        } else if talk {
            println!(
                "epoch {:>3}/{epochs}  train {:8.2}  test {:8.2} (recon {:8.2}, kl {:6.2})  kl weight {:.3}  AU {:>2}/{}  {:5.1} s  {:6.0} ex/s",
                m.epoch, m.train_loss, m.test_loss, m.recon, m.kl, m.kl_weight, m.active_units,
                m.kl_per_dim.len(), m.epoch_seconds, m.examples_per_second
            );
        }
        Control::Continue
    };
    trainer.fit(&fit, &mut on_progress, &mut on_epoch)?;
    let (sp, rp) = wgvae::train::write_pictures(&out, &gpu, &trainer.vae, &split.test, trainer.opts.seed)?;
    let metrics_path = out.join(wgvae::train::METRICS_FILE);
    let pp = plot(&metrics_path, None)?;
    let mut files = vec![
        ("metrics", format!("{} (plotted: {})", metrics_path.display(), pp.display())),
        ("checkpoint", out.join(wgvae::train::CHECKPOINT_FILE).display().to_string()),
        ("samples", sp.display().to_string()),
        ("reconstructions", rp.display().to_string()),
    ];
    if config.latent == 2 {
        let (grid, scatter) =
            wgvae::pictures::manifold_pictures(&gpu, &trainer.vae, &split.test, 15, 3.0, eval_of(&trainer))?;
        grid.save(out.join("manifold.png"))?;
        wgvae::checkpoint::write_atomic(out.join("scatter.png"), &scatter)?;
        files.push(("latent manifold", out.join("manifold.png").display().to_string()));
        files.push(("latent scatter", out.join("scatter.png").display().to_string()));
    }
    if !a.json {
        let plural = if trainer.epoch == 1 { "" } else { "s" };
        println!("done: {} epoch{plural}, {} steps", trainer.epoch, trainer.step);
        for (what, path) in files {
            println!("  {what:<16} {path}");
        }
    }
    Ok(())
}

fn eval_of(t: &Trainer) -> (usize, u64) {
    (wgvae::train::eval_batch(t.opts.batch), t.opts.seed)
}

fn print_header(gpu: &Gpu, split: &Split, t: &Trainer, c: &VaeConfig, out: &Path) {
    let (tr, te) = (&split.train, &split.test);
    println!(
        "wgvae: {} ({} train / {} test images of {}x{}) on {} ({:?})",
        split.name,
        tr.n(),
        te.n(),
        tr.rows(),
        tr.cols(),
        gpu.adapter().name,
        gpu.adapter().backend
    );
    let hidden: Vec<String> = c.hidden.iter().map(|h| h.to_string()).collect();
    println!(
        "model: {} {}-{}-{} {} {}, batch {}, lr {}, seed {}",
        c.model,
        c.input_dim,
        hidden.join("-"),
        c.latent,
        c.activation,
        c.likelihood,
        t.opts.batch,
        t.opts.lr,
        t.opts.seed
    );
    if c.model != ModelKind::Ae {
        let o = &t.opts.objective;
        let w = o.effective_kl_weight(c.input_dim, c.latent);
        let fb = if o.free_bits > 0.0 { format!(", free bits {} nats/dim", o.free_bits) } else { String::new() };
        let bn = c.bn_tau.map(|tau| format!(", BN-VAE tau {tau} (KL >= {:.2})", 0.5 * tau * c.latent as f32));
        println!(
            "objective: recon + {} x KL, reduction {}, schedule {}{fb}{}: the KL term weighs {w} x its weight in the ELBO{}",
            o.beta,
            o.reduction,
            o.schedule.describe(),
            bn.unwrap_or_default(),
            if w == 1.0 { " (the true ELBO)" } else { "" }
        );
    }
    println!("writing to {}", out.display());
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
    let split = ck.data(data)?;
    let gpu = open_gpu()?;
    let vae = ck.vae(&gpu)?;
    if split.test.dim() != vae.config.input_dim {
        return Err(Error::InvalidArgument {
            name: "--data".into(),
            detail: format!(
                "{} has {} values per example, the model takes {}",
                split.name,
                split.test.dim(),
                vae.config.input_dim
            ),
        });
    }
    Ok(Loaded { gpu, vae, split, ck })
}

impl Loaded {
    /// The evaluation batch and seed training used, so figures match metrics.jsonl.
    fn eval(&self) -> (usize, u64) {
        (
            wgvae::train::eval_batch(self.ck.meta_u64("batch").unwrap_or(128) as usize),
            self.ck.meta_u64("seed").unwrap_or(0),
        )
    }
    /// `out`, or `name` beside the checkpoint.
    fn out(&self, out: &Option<PathBuf>, name: &str) -> PathBuf {
        out.clone().unwrap_or_else(|| self.ck.path.parent().unwrap_or(Path::new(".")).join(name))
    }
}

fn eval(a: &EvalArgs) -> Result<()> {
    let l = load(&a.checkpoint, a.data.as_deref())?;
    let (batch, seed) = l.eval();
    let o = wgvae::eval::EvalOptions {
        batch: a.batch.map_or(batch, |b| b as usize),
        seed,
        iwae_k: a.iwae,
        iwae_examples: a.iwae_examples.map(|n| n as usize),
        disentanglement: a.disentanglement,
    };
    let s = wgvae::eval::evaluate_split(&l.gpu, &l.vae, &l.split, &o)?;
    let mut v = serde_json::to_value(&s).map_err(|e| Error::Gpu(e.to_string()))?;
    v["checkpoint"] = serde_json::json!(a.checkpoint.display().to_string());
    v["epoch"] = serde_json::json!(l.ck.meta_u64("epoch"));
    v["kl_weight"] = serde_json::json!(l.ck.meta.get("kl_weight").and_then(|w| w.parse::<f64>().ok()));
    println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    Ok(())
}

fn sample(a: &SampleArgs) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let gpu = open_gpu()?;
    let vae = ck.vae(&gpu)?;
    let out = a.out.clone().unwrap_or_else(|| a.checkpoint.with_file_name(format!("samples-{}.png", a.seed)));
    wgvae::pictures::sample_grid(&gpu, &vae, a.n as usize, a.seed, a.label)?.save(&out)?;
    println!("wrote {} samples to {}", a.n, out.display());
    Ok(())
}

fn reconstruct(a: &Source, n: usize) -> Result<()> {
    let l = load(&a.checkpoint, a.data.as_deref())?;
    let out = l.out(&a.out, "reconstructions.png");
    let g = wgvae::pictures::reconstruction_grid(&l.gpu, &l.vae, &l.split.test, n)?;
    g.save(&out)?;
    println!("wrote {} test images (top) and their reconstructions (bottom) to {}", g.cols, out.display());
    Ok(())
}

fn interpolate(a: &Source, from: usize, to: usize, steps: usize) -> Result<()> {
    let l = load(&a.checkpoint, a.data.as_deref())?;
    let out = l.out(&a.out, &format!("interpolation-{from}-{to}.png"));
    wgvae::pictures::interpolation_grid(&l.gpu, &l.vae, &l.split.test, from, to, steps)?.save(&out)?;
    println!("wrote input {from}, {steps} decoded steps and input {to} to {}", out.display());
    Ok(())
}

fn traverse(a: &Source, index: usize, range: f32, steps: usize) -> Result<()> {
    let l = load(&a.checkpoint, a.data.as_deref())?;
    let out = l.out(&a.out, &format!("traversal-{index}.png"));
    let (g, order) = wgvae::pictures::traversal_grid(&l.gpu, &l.vae, &l.split.test, index, range, steps, l.eval())?;
    g.save(&out)?;
    let order: Vec<String> = order.iter().map(|(d, act)| format!("z{d} ({act:.2})")).collect();
    println!("wrote {} rows (dimension order, activity: {}) to {}", order.len(), order.join(", "), out.display());
    Ok(())
}

fn manifold(a: &Source, n: usize, range: f32) -> Result<()> {
    let l = load(&a.checkpoint, a.data.as_deref())?;
    let dir = a.out.clone().unwrap_or_else(|| l.out(&None, ""));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let (grid, scatter) = wgvae::pictures::manifold_pictures(&l.gpu, &l.vae, &l.split.test, n, range, l.eval())?;
    let (mp, sp) = (dir.join("manifold.png"), dir.join("scatter.png"));
    grid.save(&mp)?;
    wgvae::checkpoint::write_atomic(&sp, &scatter)?;
    println!("wrote {} and {}", mp.display(), sp.display());
    Ok(())
}

/// Plots `metrics` into `out` (default metrics.png beside it) and returns the path.
fn plot(metrics: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let text = std::fs::read_to_string(metrics).map_err(|source| Error::Io { path: metrics.to_path_buf(), source })?;
    let lines = wgvae::plot::parse_metrics(&text)
        .map_err(|e| Error::Data { path: metrics.to_path_buf(), detail: e.to_string() })?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| metrics.with_file_name("metrics.png"));
    wgvae::checkpoint::write_atomic(&out, &wgvae::plot::metrics_png(&lines)?)?;
    Ok(out)
}

fn info(json: bool) -> Result<()> {
    let r = open_gpu()?.report();
    if json {
        println!("{}", serde_json::to_string_pretty(&r).unwrap_or_default());
        return Ok(());
    }
    println!("adapter        {}", r.adapter);
    println!("backend        {}", r.backend);
    println!("device type    {}", r.device_type);
    println!("driver         {} {}", r.driver, r.driver_info);
    println!("matmul kernel  {}", r.matmul_variant);
    let f = if r.features.is_empty() { "(none beyond WebGPU core)".to_string() } else { r.features.join(", ") };
    println!("features       {f}");
    println!("limits");
    for (k, v) in &r.limits {
        println!("  {k:<40} {v}");
    }
    Ok(())
}

fn positive_seconds(s: f64) -> Result<()> {
    if s.is_finite() && s > 0.0 {
        return Ok(());
    }
    Err(Error::InvalidArgument { name: "--seconds".into(), detail: format!("{s} is not a positive duration") })
}

fn bench_matmul(a: &MatmulBenchArgs) -> Result<()> {
    use wgvae::bench::{time_matmul, SHAPES};
    positive_seconds(a.seconds)?;
    let gpu = open_gpu()?;
    // A variant asked for by name must run; of "all", those this adapter cannot run are left out.
    let variants: Vec<MatmulVariant> = match a.variant {
        Some(v) => gpu.check_variant(v).map(|_| vec![v])?,
        None => MatmulVariant::ALL.into_iter().filter(|&v| gpu.check_variant(v).is_ok()).collect(),
    };
    let ad = gpu.adapter();
    if !a.json {
        println!(
            "matmul on {} ({:?}, {:?}); default variant: {}",
            ad.name,
            ad.backend,
            ad.device_type,
            gpu.matmul_variant()
        );
        let heads: String = variants.iter().map(|v| format!(" {:>12}", format!("{v} GF/s"))).collect();
        println!("{:<18} {:>16} {:>6}{heads}", "shape", "MxKxN", "layout");
    }
    for s in SHAPES.iter().filter(|s| s.name.contains(a.filter.as_str())) {
        let mut row = format!("{:<18} {:>16} {:>6}", s.name, format!("{}x{}x{}", s.m, s.k, s.n), s.layout());
        for v in &variants {
            let r = time_matmul(&gpu, s, *v, std::time::Duration::from_secs_f64(a.seconds))?;
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"adapter": ad.name, "shape": s.name, "m": s.m, "k": s.k, "n": s.n,
                        "layout": s.layout(), "variant": v.name(), "seconds": r.seconds, "gflops": r.gflops})
                );
            }
            row += &format!(" {:>12.2}", r.gflops);
        }
        if !a.json {
            println!("{row}");
        }
    }
    Ok(())
}

fn bench_step(a: &StepBenchArgs) -> Result<()> {
    positive_seconds(a.seconds)?;
    if let Some(b) = a.batch.iter().find(|&&b| b == 0) {
        return Err(Error::InvalidArgument { name: "--batch".into(), detail: format!("{b}: must be at least 1") });
    }
    let gpu = open_gpu()?;
    if a.profile {
        gpu.set_profiling(true)?; // names the adapter when it cannot time kernels
        gpu.set_profiling(false)?;
    }
    let r = gpu.report();
    if !a.json {
        println!(
            "training step of the classic VAE (784-400-20-400-784, Adam) on {} ({}, {}), matmul {}",
            r.adapter, r.backend, r.device_type, r.matmul_variant
        );
        println!(
            "{:>6} {:>10} {:>17} {:>11} {:>10} {:>11} {:>12} {:>14}",
            "batch", "ms/step", "(min-max)", "examples/s", "dispatches", "host ms", "buffers new", "bytes up"
        );
    }
    for &b in &a.batch {
        let budget = std::time::Duration::from_secs_f64(a.seconds);
        let (s, prof) = wgvae::bench::bench_step(&gpu, &VaeConfig::classic(), b, budget, a.profile)?;
        if a.json {
            let mut v = serde_json::to_value(&s).map_err(|e| Error::Gpu(e.to_string()))?;
            v["runner"] = serde_json::json!(format!("wgvae {}", env!("CARGO_PKG_VERSION")));
            v["model"] = serde_json::json!("classic");
            for (k, val) in [("adapter", &r.adapter), ("backend", &r.backend), ("device_type", &r.device_type)] {
                v[k] = serde_json::json!(val);
            }
            v["driver"] = serde_json::json!(format!("{} {}", r.driver, r.driver_info));
            v["matmul"] = serde_json::json!(r.matmul_variant);
            if let Some(p) = &prof {
                let per = p.submissions.max(1) as f64;
                let rows: Vec<_> = p
                    .rows
                    .iter()
                    .map(|row| {
                        serde_json::json!({"kernel": row.label,
                    "calls_per_step": row.calls as f64 / per, "ms_per_step": row.total_ms / per})
                    })
                    .collect();
                v["profile"] = serde_json::json!(rows);
            }
            println!("{v}");
            continue;
        }
        println!(
            "{:>6} {:>10.2} {:>17} {:>11.0} {:>10.1} {:>11.2} {:>12.2} {:>14.0}",
            b,
            s.ms_per_step,
            format!("({:.2}-{:.2})", s.ms_min, s.ms_max),
            s.examples_per_second,
            s.dispatches_per_step,
            s.cpu_ms_per_step,
            s.buffers_allocated_per_step,
            s.bytes_uploaded_per_step
        );
        if let Some(p) = &prof {
            println!("  GPU time per step by kernel (batch {b}, {} steps timed one by one):", p.submissions);
            for line in p.table(p.submissions as f64, a.top).lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
}
