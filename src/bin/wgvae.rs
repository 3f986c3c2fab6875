//! `wgvae` command-line tool: argument parsing and printing over the library.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use std::process::ExitCode;
use std::time::Duration;
use wgvae::run::RunSpec;

use clap::{Args, Parser, Subcommand};
use wgvae::checkpoint::Checkpoint;
use wgvae::data::Split;
use wgvae::pictures::{self, Grid};
use wgvae::train::{Control, EpochMetrics};
use wgvae::vae::VaeConfig;
use wgvae::{Error, Gpu, MatmulVariant, Result};

#[derive(Parser)]
#[command(name = "wgvae", version, about = "Train variational autoencoders on any GPU with WGSL compute shaders")]
struct Cli {
    /// Ignore the measured matmul plan (`wgvae tune`) and measure none: the adapter's default
    /// kernel runs.
    #[arg(long, global = true)]
    no_tune: bool,
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
    /// Measure which matmul kernel (variant and tile) is fastest for which product size on this
    /// adapter, and cache the plan (`train` and `bench step` measure it on their own on GPUs).
    Tune(TuneArgs),
    /// Benchmarks: matmul GFLOP/s per kernel variant (`bench`, `bench matmul`) or the classic VAE's
    /// whole training step (`bench step`).
    Bench(BenchArgs),
}

fn parse_variant(s: &str) -> std::result::Result<MatmulVariant, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_seconds(s: &str) -> std::result::Result<Duration, String> {
    let d = s.parse::<f64>().ok().and_then(|x| Duration::try_from_secs_f64(x).ok()).filter(|d| !d.is_zero());
    d.ok_or_else(|| format!("`{s}` is not a positive number of seconds"))
}

#[derive(Args)]
struct TrainArgs {
    #[command(flatten)]
    run: RunSpec,
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
    /// known generating factors (the built-in sprites and shapes).
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
struct TuneArgs {
    /// Also try the tiled kernels on a CPU adapter (slow there; GPUs always try them); on a GPU,
    /// also time 4096³ products.
    #[arg(long)]
    all: bool,
    /// Seconds per (product, kernel).
    #[arg(long, default_value = "0.15", value_parser = parse_seconds)]
    seconds: Duration,
    /// Only products whose name contains this (e.g. `batch 128`).
    #[arg(long, default_value = "")]
    filter: String,
    /// Measure and print, but leave the cache as it is.
    #[arg(long)]
    no_save: bool,
    /// Print the report (measurements and plan) as JSON.
    #[arg(long)]
    json: bool,
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
    #[arg(long, default_value = "1", value_parser = parse_seconds)]
    seconds: Duration,
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
    #[arg(long, default_value = "2", value_parser = parse_seconds)]
    seconds: Duration,
    /// Also time every kernel (timestamp queries) and print the top kernels per batch size.
    #[arg(long)]
    profile: bool,
    /// Rows of the profile table.
    #[arg(long, default_value_t = 12)]
    top: usize,
    /// Print one JSON object per batch size instead of a table.
    #[arg(long)]
    json: bool,
    /// Training steps per GPU submission (as `train --steps-per-submit`).
    #[arg(long, default_value_t = 1)]
    steps_per_submit: usize,
}

thread_local! {
    /// `--no-tune`, for [`open_gpu`].
    static NO_TUNE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Opens the adapter and installs its measured matmul plan from the cache (`wgvae tune`). With
/// `measure`, on a GPU without a cached plan, measures one first (seconds, once per adapter and
/// driver). `--no-tune` or `WGVAE_MATMUL` leave the adapter's default kernel.
fn open_gpu(measure: bool) -> Result<Gpu> {
    let gpu = Gpu::open_quietly()?;
    let forced = std::env::var_os("WGVAE_MATMUL").is_some_and(|v| !v.is_empty());
    let Some(path) = wgvae::tune::PlanCache::default_path().filter(|_| !forced && !NO_TUNE.get()) else {
        return Ok(gpu);
    };
    let search = measure && wgvae::tune::searches_by_default(&gpu);
    let name = gpu.adapter().name.clone();
    let mut say = |p: wgvae::tune::TuneProgress| {
        if let wgvae::tune::TuneProgress::Starting { kernels, products } = p {
            eprintln!(
                "measuring {kernels} matmul kernels on {products} products on {name}, once per adapter and driver \
                 (cached in {}; --no-tune skips)",
                path.display()
            );
        }
    };
    match wgvae::tune::use_plan(&gpu, &path, search, &mut say) {
        Ok(wgvae::tune::PlanSource::Measured(_)) => {
            eprintln!("matmul plan: {}", gpu.matmul_plan().map(|p| p.to_string()).unwrap_or_default())
        }
        Ok(wgvae::tune::PlanSource::Unsaved(why)) => eprintln!(
            "matmul plan: {} (used by this run only; it could not be cached: {why})",
            gpu.matmul_plan().map(|p| p.to_string()).unwrap_or_default()
        ),
        Ok(_) => {}
        // A damaged cache must not stop training: the default kernel is correct, only slower.
        Err(e) => eprintln!("warning: matmul plan not used: {e}"),
    }
    Ok(gpu)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    NO_TUNE.set(cli.no_tune);
    let r = match cli.cmd {
        Cmd::Train(a) => train(*a),
        Cmd::Eval(a) => eval(&a),
        Cmd::Sample(a) => sample(&a),
        Cmd::Reconstruct { src, n } => picture(&src, "reconstructions.png", |l| {
            let g = pictures::reconstruction_grid(&l.gpu, &l.vae, &l.split.test, n as usize)?;
            Ok((g.clone(), format!("{} test images (top) and their reconstructions (bottom)", g.cols)))
        }),
        Cmd::Interpolate { src, from, to, steps } => picture(&src, &format!("interpolation-{from}-{to}.png"), |l| {
            let g = pictures::interpolation_grid(&l.gpu, &l.vae, &l.split.test, from, to, steps as usize)?;
            Ok((g, format!("input {from}, {steps} decoded steps and input {to}")))
        }),
        Cmd::Traverse { src, index, range, steps } => picture(&src, &format!("traversal-{index}.png"), |l| {
            let ev = l.ck.eval_settings()?;
            let (g, order) = pictures::traversal_grid(&l.gpu, &l.vae, &l.split.test, index, range, steps as usize, ev)?;
            let order: Vec<String> = order.iter().map(|(d, act)| format!("z{d} ({act:.2})")).collect();
            Ok((g, format!("{} rows (dimension order, activity: {})", order.len(), order.join(", "))))
        }),
        Cmd::Manifold { src, n, range } => manifold(&src, n as usize, range),
        Cmd::Plot { metrics, out } => {
            wgvae::plot::plot_metrics_file(&metrics, out.as_deref()).map(|p| println!("wrote {}", p.display()))
        }
        Cmd::Info { json } => info(json),
        Cmd::Tune(a) => tune(&a),
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
    const RENAMED: [(&str, &str); 4] =
        [("bn_tau", "--bn-vae"), ("iwae_k", "--iwae"), ("labels", "--model cvae"), ("classes", "--model cvae")];
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

fn train(a: TrainArgs) -> Result<()> {
    let mut run = a.run.prepare(|| open_gpu(true))?;
    let talk = !(a.quiet || a.json);
    if talk {
        println!("{}", run.describe());
    }
    let (trainer, epochs) = (&mut run.trainer, run.fit.epochs);
    if trainer.epoch >= epochs {
        println!("the checkpoint has already trained {} epochs (--epochs {epochs}): nothing to do", trainer.epoch);
        return Ok(());
    }
    let gpu = trainer.gpu.clone();
    if a.profile {
        gpu.set_profiling(true)?;
    }
    let bar: RefCell<Option<indicatif::ProgressBar>> = RefCell::new(None);
    let steps = run.split.train.n().div_ceil(trainer.opts.batch.min(run.split.train.n()));
    let mut on_progress = |p: &wgvae::train::Progress| {
        let mut b = bar.borrow_mut();
        if let Some(w) = &p.warning {
            match b.as_ref() {
                Some(pb) => pb.suspend(|| eprintln!("warning: {w}")),
                None => eprintln!("warning: {w}"),
            }
        }
        if !talk || p.batches == 0 {
            return;
        }
        let pb = b.get_or_insert_with(|| {
            let style = "epoch {prefix} [{bar:30}] {pos}/{len} {msg} [{elapsed_precise}, ETA {eta}]";
            let pb = indicatif::ProgressBar::new(p.batches as u64).with_prefix(format!("{}/{epochs}", p.epoch));
            pb.set_style(
                indicatif::ProgressStyle::with_template(style).expect("a valid template").progress_chars("=> "),
            );
            pb
        });
        pb.set_position(p.batch as u64);
        pb.set_message(format!("loss {:.2}  {:.0} ex/s", p.running_loss, p.examples_per_second));
    };
    let mut on_epoch = |m: &EpochMetrics| {
        if let Some(pb) = bar.borrow_mut().take() {
            pb.finish_and_clear();
        }
        if gpu.profiling() && gpu.set_profiling(false).is_ok() {
            println!("GPU time per training step by kernel (epoch {}, {steps} steps, timed one by one):", m.epoch);
            print!("{}", gpu.take_profile().table(steps as f64, 15));
        }
        match (a.json, talk) {
            (true, _) => println!("{}", m.to_json_line()),
            (false, true) => println!("{m}"),
            _ => {}
        }
        Control::Continue
    };
    trainer.fit(&run.fit, &mut on_progress, &mut on_epoch)?;
    let files = pictures::finish_run(&run.out, trainer, &run.split.test)?;
    if !a.json {
        let plural = if trainer.epoch == 1 { "" } else { "s" };
        println!("done: {} epoch{plural}, {} steps", trainer.epoch, trainer.step);
        for (what, path) in files {
            println!("  {what:<16} {}", path.display());
        }
    }
    Ok(())
}

/// A checkpoint's model with its data, on the device, and where a picture of it goes by default.
struct Loaded {
    gpu: Gpu,
    vae: wgvae::vae::Vae,
    split: Split,
    ck: Checkpoint,
}

fn load(a: &Source) -> Result<Loaded> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let gpu = open_gpu(false)?;
    let (vae, split) = ck.model_with_data(&gpu, a.data.as_deref())?;
    Ok(Loaded { gpu, vae, split, ck })
}

impl Loaded {
    /// `out`, or `name` beside the checkpoint.
    fn out(&self, out: &Option<PathBuf>, name: &str) -> PathBuf {
        out.clone().unwrap_or_else(|| self.ck.path.parent().unwrap_or(Path::new(".")).join(name))
    }
}

fn eval(a: &EvalArgs) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let gpu = open_gpu(false)?;
    let o = wgvae::eval::EvalOptions {
        batch: 0,
        seed: 0,
        iwae_k: a.iwae,
        iwae_examples: a.iwae_examples.map(|n| n as usize),
        disentanglement: a.disentanglement,
    };
    let s = wgvae::eval::evaluate_checkpoint(&gpu, &ck, a.data.as_deref(), a.batch.map(|b| b as usize), o)?;
    println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
    Ok(())
}

fn sample(a: &SampleArgs) -> Result<()> {
    let ck = Checkpoint::load(&a.checkpoint)?;
    let gpu = open_gpu(false)?;
    let vae = ck.vae(&gpu)?;
    let out = a.out.clone().unwrap_or_else(|| a.checkpoint.with_file_name(format!("samples-{}.png", a.seed)));
    pictures::sample_grid(&gpu, &vae, a.n as usize, a.seed, a.label)?.save(&out)?;
    println!("wrote {} samples to {}", a.n, out.display());
    Ok(())
}

/// Makes one picture of a checkpoint's model and writes it to --out or `name` beside it.
fn picture(a: &Source, name: &str, make: impl FnOnce(&Loaded) -> Result<(Grid, String)>) -> Result<()> {
    let l = load(a)?;
    let out = l.out(&a.out, name);
    let (grid, what) = make(&l)?;
    grid.save(&out)?;
    println!("wrote {what} to {}", out.display());
    Ok(())
}

fn manifold(a: &Source, n: usize, range: f32) -> Result<()> {
    let l = load(a)?;
    let dir = a.out.clone().unwrap_or_else(|| l.out(&None, ""));
    std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
    let (grid, scatter) = pictures::manifold_pictures(&l.gpu, &l.vae, &l.split.test, n, range, l.ck.eval_settings()?)?;
    let (mp, sp) = (dir.join("manifold.png"), dir.join("scatter.png"));
    grid.save(&mp)?;
    wgvae::checkpoint::write_atomic(&sp, &scatter)?;
    println!("wrote {} and {}", mp.display(), sp.display());
    Ok(())
}

fn info(json: bool) -> Result<()> {
    let r = open_gpu(false)?.report();
    let text = if json { serde_json::to_string_pretty(&r).unwrap_or_default() + "\n" } else { r.to_string() };
    print!("{text}");
    Ok(())
}

fn bench_matmul(a: &MatmulBenchArgs) -> Result<()> {
    let gpu = Gpu::open_quietly()?;
    let ad = gpu.adapter();
    if !a.json {
        println!(
            "matmul GFLOP/s on {} ({:?}, {:?}); default variant: {}; storage words: {}; subgroup operands: {}",
            ad.name,
            ad.backend,
            ad.device_type,
            gpu.matmul_variant(),
            gpu.words(),
            gpu.operands()
        );
    }
    wgvae::bench::matmul_table(&gpu, &a.filter, a.variant, a.seconds, &mut |r| match a.json {
        true => println!("{}", serde_json::to_string(r).unwrap_or_default()),
        false => println!("{r}"),
    })?;
    Ok(())
}

fn bench_step(a: &StepBenchArgs) -> Result<()> {
    let gpu = open_gpu(true)?;
    let r = gpu.report();
    if !a.json {
        println!(
            "training step of the classic VAE (784-400-20-400-784, Adam) on {} ({}, {}), matmul {}, words {}{}",
            r.adapter,
            r.backend,
            r.device_type,
            r.matmul_variant,
            r.storage_words,
            if r.matmul_variant.contains("subgroup") {
                format!(", operands {}", r.matmul_operands)
            } else {
                String::new()
            }
        );
        println!("{}", wgvae::bench::StepReport::HEADER);
    }
    for &b in &a.batch {
        let (s, prof) =
            wgvae::bench::bench_step(&gpu, &VaeConfig::classic(), b, a.seconds, a.profile, a.steps_per_submit)?;
        if a.json {
            let rec = wgvae::bench::StepRecord::new(&gpu, s, prof.as_ref());
            println!("{}", serde_json::to_string(&rec).unwrap_or_default());
            continue;
        }
        println!("{s}");
        if let Some(p) = &prof {
            let steps = p.submissions * a.steps_per_submit as u64;
            println!("  GPU time per step by kernel (batch {b}, {steps} steps, each dispatch timed):");
            for line in p.table(steps as f64, a.top).lines() {
                println!("    {line}");
            }
        }
    }
    Ok(())
}

fn tune(a: &TuneArgs) -> Result<()> {
    let gpu = Gpu::open_quietly()?;
    let mut o = wgvae::tune::TuneOptions::for_gpu(&gpu, a.all);
    o.seconds = a.seconds;
    o.shapes.retain(|s| s.name.contains(&a.filter));
    if o.shapes.is_empty() {
        return Err(Error::InvalidArgument {
            name: "filter".into(),
            detail: format!("no product's name contains `{}`", a.filter),
        });
    }
    let talk = !a.json;
    let report = wgvae::tune::search(&gpu, &o, &mut |p| match p {
        wgvae::tune::TuneProgress::Starting { kernels, products } if talk => println!(
            "timing {kernels} matmul kernels on {products} products on {} ({:?}, {:?})",
            gpu.adapter().name,
            gpu.adapter().backend,
            gpu.adapter().device_type
        ),
        wgvae::tune::TuneProgress::Measured(m) if talk => println!("  {m}"),
        _ => {}
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!("plan: {}", report.plan);
    }
    if a.no_save {
        return Ok(());
    }
    let path = wgvae::tune::PlanCache::default_path().ok_or_else(|| Error::InvalidArgument {
        name: "tune".into(),
        detail: "no cache directory: set WGVAE_CACHE_DIR, XDG_CACHE_HOME or HOME".into(),
    })?;
    let mut cache = wgvae::tune::PlanCache::open(&path).unwrap_or_else(|e| {
        eprintln!("warning: replacing the unreadable cache: {e}");
        wgvae::tune::PlanCache::empty(&path)
    });
    cache.put(report);
    cache.save()?;
    if talk {
        println!("saved to {} (train, eval, bench step use it on this adapter; --no-tune ignores it)", path.display());
    }
    Ok(())
}
