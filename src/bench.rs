//! Shared by `wgvae bench` and `cargo bench`: the matmul shapes that matter for the classic VAE
//! (784-400-20-400-784, batch 128) in every layout the training step uses, plus square sizes, and
//! a timer that measures GFLOP/s of one kernel variant on one shape; and the whole training step
//! ([`bench_step`]): the trainer's own step, timed with what it costs the host and the device.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::gpu::{Gpu, KernelChoice, MatmulVariant};
use crate::nn::Optimizer;
use crate::ops::matmul::{matmul_forward, MatmulOpts};
use crate::tape::Tape;
use crate::tensor::Tensor;

/// One matmul problem: C\[M,N\] = op(A)·op(B) with op(A) \[M,K\], op(B) \[K,N\].
#[derive(Clone, Copy, Debug)]
pub struct MatmulShape {
    /// What the product is in a VAE step.
    pub name: &'static str,
    /// Rows of C.
    pub m: usize,
    /// Contracted dimension.
    pub k: usize,
    /// Columns of C.
    pub n: usize,
    /// A stored transposed.
    pub ta: bool,
    /// B stored transposed.
    pub tb: bool,
}

impl MatmulShape {
    /// Floating-point operations of one product (2·M·N·K).
    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64
    }
    /// `NN`, `NT`, `TN` or `TT`.
    pub fn layout(&self) -> &'static str {
        match (self.ta, self.tb) {
            (false, false) => "NN",
            (false, true) => "NT",
            (true, false) => "TN",
            (true, true) => "TT",
        }
    }
}

/// A [`MatmulShape`] in one line.
pub const fn shape(name: &'static str, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> MatmulShape {
    MatmulShape { name, m, k, n, ta, tb }
}

/// The classic VAE's products at batch 128, as a training step runs them (forward X·Wᵀ is NT,
/// d_X = dY·W is NN, d_W = dYᵀ·X is TN; the posterior head is one 400->40 layer), and square
/// references.
pub const SHAPES: [MatmulShape; 13] = [
    shape("fc 784->400 fwd", 128, 784, 400, false, true),
    shape("fc 784->400 dW", 400, 128, 784, true, false),
    shape("fc 400->784 fwd", 128, 400, 784, false, true),
    shape("fc 400->784 dX", 128, 784, 400, false, false),
    shape("fc 400->784 dW", 784, 128, 400, true, false),
    shape("head 400->40 fwd", 128, 400, 40, false, true),
    shape("head 400->40 dX", 128, 40, 400, false, false),
    shape("head 400->40 dW", 40, 128, 400, true, false),
    shape("fc 20->400 fwd", 128, 20, 400, false, true),
    shape("fc 20->400 dX", 128, 400, 20, false, false),
    shape("fc 20->400 dW", 400, 128, 20, true, false),
    shape("square 512", 512, 512, 512, false, false),
    shape("square 1024", 1024, 1024, 1024, false, false),
];

/// Operands for `shape`, filled with small deterministic values.
pub fn operands(gpu: &Gpu, shape: &MatmulShape) -> Result<(Tensor, Tensor)> {
    let (ar, ac) = if shape.ta { (shape.k, shape.m) } else { (shape.m, shape.k) };
    let (br, bc) = if shape.tb { (shape.n, shape.k) } else { (shape.k, shape.n) };
    let fill =
        |n: usize, seed: usize| -> Vec<f32> { (0..n).map(|i| (((i * 7 + seed) % 13) as f32 - 6.0) / 13.0).collect() };
    Ok((Tensor::from_slice(gpu, ar, ac, &fill(ar * ac, 1))?, Tensor::from_slice(gpu, br, bc, &fill(br * bc, 5))?))
}

/// Records `reps` products of `shape` with `variant` on one tape, submits once and waits: the unit
/// of work both benchmarks time.
pub fn run_matmul(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    shape: &MatmulShape,
    variant: MatmulVariant,
    reps: usize,
) -> Result<()> {
    run_matmul_with(gpu, a, b, shape, KernelChoice::of(variant), reps)
}

/// [`run_matmul`] with a kernel choice (the tiled variant's tile too).
pub fn run_matmul_with(
    gpu: &Gpu,
    a: &Tensor,
    b: &Tensor,
    shape: &MatmulShape,
    kernel: KernelChoice,
    reps: usize,
) -> Result<()> {
    let mut tape = Tape::no_grad(gpu);
    let mut o = MatmulOpts::nn().trans(shape.ta, shape.tb).variant(kernel.variant);
    if kernel.variant == MatmulVariant::Tiled {
        o = o.tile(kernel.tile);
    }
    for _ in 0..reps {
        let _c = matmul_forward(&mut tape, a, b, None, o)?;
    }
    tape.submit()?;
    gpu.wait()
}

/// Measured throughput of one variant on one shape.
#[derive(Clone, Copy, Debug)]
pub struct MatmulResult {
    /// Median seconds per product.
    pub seconds: f64,
    /// GFLOP/s at the median.
    pub gflops: f64,
}

/// Times `variant` on `shape`: a warm-up (compiles the pipeline), then batches of products per
/// submission until `budget` is spent; reports the median batch.
pub fn time_matmul(gpu: &Gpu, shape: &MatmulShape, variant: MatmulVariant, budget: Duration) -> Result<MatmulResult> {
    time_matmul_with(gpu, shape, KernelChoice::of(variant), budget)
}

/// [`time_matmul`] with a kernel choice (the tiled variant's tile too).
pub fn time_matmul_with(
    gpu: &Gpu,
    shape: &MatmulShape,
    kernel: KernelChoice,
    budget: Duration,
) -> Result<MatmulResult> {
    let (a, b) = operands(gpu, shape)?;
    run_matmul_with(gpu, &a, &b, shape, kernel, 1)?;
    // Enough products per submission that the submit/wait round trip (~0.3 ms on llvmpipe)
    // stays small against the kernels.
    let t0 = Instant::now();
    run_matmul_with(gpu, &a, &b, shape, kernel, 1)?;
    let one = t0.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.05 / one).ceil() as usize).clamp(1, 64);
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed() < budget && times.len() < 50) {
        let t = Instant::now();
        run_matmul_with(gpu, &a, &b, shape, kernel, reps)?;
        times.push(t.elapsed().as_secs_f64() / reps as f64);
    }
    times.sort_by(f64::total_cmp);
    let seconds = times[times.len() / 2];
    Ok(MatmulResult { seconds, gflops: shape.flops() / seconds / 1e9 })
}

/// Parts of a training step, for [`time_train_step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepPart {
    /// Forward pass and loss only (no-grad tape).
    Forward,
    /// Forward, loss and backward.
    ForwardBackward,
    /// The whole step: forward, backward and Adam.
    Full,
}

/// A classic-VAE training step on fixed random pixels, ready to be timed.
pub struct StepBench {
    gpu: Gpu,
    vae: crate::vae::Vae,
    opt: crate::nn::Adam,
    x: Tensor,
    step: u32,
}

impl StepBench {
    /// A model of `config` and a batch of `b` examples.
    pub fn new(gpu: &Gpu, config: &crate::vae::VaeConfig, b: usize) -> Result<Self> {
        let vae = crate::vae::Vae::new(gpu, config.clone(), 0)?;
        let px: Vec<f32> = (0..b * config.input_dim).map(|i| ((i * 7919) % 256) as f32 / 255.0).collect();
        let x = Tensor::from_slice(gpu, b, config.input_dim, &px)?;
        Ok(StepBench { gpu: gpu.clone(), vae, opt: crate::nn::Adam::new(1e-3)?, x, step: 0 })
    }

    /// Records `part` of one step on one tape, submits it and waits for the GPU.
    pub fn run(&mut self, part: StepPart) -> Result<()> {
        use crate::ops::vae::Noise;
        let mut tape = if part == StepPart::Forward { Tape::no_grad(&self.gpu) } else { Tape::new(&self.gpu) };
        let xv = tape.input(self.x.clone());
        let out = self.vae.forward(&mut tape, xv, Noise { seed: 1, step: self.step, stream: 0 })?;
        let loss = self.vae.loss(&mut tape, &out, &self.x, 1.0)?;
        if part != StepPart::Forward {
            tape.backward(loss.total)?;
        }
        if part == StepPart::Full {
            self.opt.step(&mut tape, &self.vae.params())?;
        }
        tape.submit()?;
        self.step += 1;
        self.gpu.wait()
    }
}

/// Median seconds of `steps` runs of [`StepBench::run`] after one warm-up step (which compiles
/// the pipelines and fills the pool).
pub fn time_train_step(
    gpu: &Gpu,
    config: &crate::vae::VaeConfig,
    b: usize,
    part: StepPart,
    steps: usize,
) -> Result<f64> {
    let mut sb = StepBench::new(gpu, config, b)?;
    sb.run(part)?;
    let mut times = Vec::new();
    for _ in 0..steps.max(1) {
        let t = Instant::now();
        sb.run(part)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// What one training step costs, measured by [`bench_step`] (`wgvae bench step`); serialized
/// with the keys the PyTorch peer prints too.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct StepReport {
    /// Examples per step.
    pub batch: usize,
    /// Steps timed (after the warm-up).
    pub steps: usize,
    /// Median over the rounds of the wall milliseconds per step (steps submitted back to back, as
    /// the trainer does, then one wait per round).
    pub ms_per_step: f64,
    /// Fastest round, ms per step.
    pub ms_min: f64,
    /// Slowest round, ms per step.
    pub ms_max: f64,
    /// batch / median step time.
    pub examples_per_second: f64,
    /// Kernel launches per step.
    pub dispatches_per_step: f64,
    /// Command buffers per step.
    pub submissions_per_step: f64,
    /// Training steps recorded per command buffer ([`crate::train::TrainOptions::steps_per_submit`]).
    pub steps_per_submit: usize,
    /// Host milliseconds per step spent recording, encoding and submitting (not waiting).
    pub cpu_ms_per_step: f64,
    /// `wgpu::Buffer`s and operand textures created per step after the warm-up (0: the pool serves
    /// every request).
    pub buffers_allocated_per_step: f64,
    /// Bind groups created per step after the warm-up (0: all cached).
    pub bind_groups_created_per_step: f64,
    /// Bytes written from the host per step (per-dispatch parameter blocks; no data: it lives on
    /// the GPU).
    pub bytes_uploaded_per_step: f64,
}

/// Synthetic images for the step benchmark: `n` deterministic pseudo-random images of `dim` pixels.
fn synthetic_split(n: usize, rows: usize, cols: usize) -> crate::data::Split {
    let pixels: Vec<u8> = (0..n * rows * cols).map(|i| ((i as u64 * 2_654_435_761) >> 13) as u8).collect();
    let images = crate::data::Images::from_u8(pixels, n, &[rows, cols]).expect("consistent sizes");
    crate::data::Split { name: "synthetic".into(), train: images.clone(), test: images }
}

/// Times the trainer's own training step ([`crate::train::Trainer::step`]: batch gather on the
/// GPU, forward, backward, Adam, loss sums, one submission) of `config` at batch `batch`:
/// warm-up steps (pipelines compile, the pool fills), then rounds of back-to-back steps with one
/// wait per round until `budget` is spent (at least 3 rounds). Data: `4 * batch` synthetic images
/// on the GPU. With `profile` the device times each dispatch (timestamp queries; the adapter must
/// have them) and the profile is returned too.
pub fn bench_step(
    gpu: &Gpu,
    config: &crate::vae::VaeConfig,
    batch: usize,
    budget: Duration,
    profile: bool,
    steps_per_submit: usize,
) -> Result<(StepReport, Option<crate::gpu::Profile>)> {
    check_budget(budget)?;
    if batch == 0 {
        return Err(Error::arg("batch", "0: must be at least 1"));
    }
    let side = (config.input_dim as f64).sqrt() as usize;
    let (rows, cols) = if side * side == config.input_dim { (side, side) } else { (1, config.input_dim) };
    // Enough batches that a submission of `steps_per_submit` steps never reaches the epoch's
    // last batch (which submits on its own).
    let k = steps_per_submit;
    let split = synthetic_split(4 * batch * k.max(1), rows, cols);
    let opts = crate::train::TrainOptions { batch, steps_per_submit: k, ..Default::default() };
    let mut t = crate::train::Trainer::new(gpu, config.clone(), opts, &split)?;
    let mut e = t.begin_epoch()?;
    let mut i = 0usize;
    // Steps stay inside the epoch's first batches - 1, so only `steps_per_submit` decides
    // when a submission happens (counting from the last flush).
    let mut next = |t: &mut crate::train::Trainer, e: &mut crate::train::EpochState| -> Result<()> {
        t.step(e, i % (e.batches - 1).max(1), false)?;
        i += 1;
        Ok(())
    };
    // Warm-up: two submissions so that every buffer of a submission's steady state is in the pool.
    let w0 = Instant::now();
    for _ in 0..2 * k {
        next(&mut t, &mut e)?;
    }
    t.flush()?;
    gpu.wait()?;
    let one = (w0.elapsed().as_secs_f64() / (2 * k) as f64).max(1e-6);
    // Rounds of about 0.25 s (2 to 50 steps, whole submissions), one wait each.
    let per_round = ((0.25 / one).round() as usize).clamp(2, 50).div_ceil(k) * k;
    let before = gpu.stats();
    let mut rounds = Vec::new();
    let mut cpu = 0.0;
    let start = Instant::now();
    while rounds.len() < 3 || (start.elapsed() < budget && rounds.len() < 100) {
        let r0 = Instant::now();
        for _ in 0..per_round {
            let c0 = Instant::now();
            next(&mut t, &mut e)?;
            cpu += c0.elapsed().as_secs_f64();
        }
        t.flush()?;
        gpu.wait()?;
        rounds.push(r0.elapsed().as_secs_f64() * 1e3 / per_round as f64);
    }
    let after = gpu.stats();
    // The profile comes from separate steps: timing every dispatch waits after every submission,
    // which would distort the figures above.
    let prof = if profile {
        gpu.set_profiling(true)?;
        let r = (0..per_round.max(5).div_ceil(k) * k).try_for_each(|_| next(&mut t, &mut e)).and_then(|_| t.flush());
        gpu.set_profiling(false)?;
        r?;
        Some(gpu.take_profile())
    } else {
        None
    };
    let steps = rounds.len() * per_round;
    let per = |a: u64, b: u64| (a - b) as f64 / steps as f64;
    let mut sorted = rounds.clone();
    sorted.sort_by(f64::total_cmp);
    let ms = sorted[sorted.len() / 2];
    Ok((
        StepReport {
            batch,
            steps,
            ms_per_step: ms,
            ms_min: sorted[0],
            ms_max: sorted[sorted.len() - 1],
            examples_per_second: batch as f64 / (ms * 1e-3),
            dispatches_per_step: per(after.dispatches, before.dispatches),
            submissions_per_step: per(after.submissions, before.submissions),
            steps_per_submit: k,
            cpu_ms_per_step: cpu * 1e3 / steps as f64,
            buffers_allocated_per_step: per(
                after.buffers_created + after.textures_created,
                before.buffers_created + before.textures_created,
            ),
            bind_groups_created_per_step: per(after.bind_groups_created, before.bind_groups_created),
            bytes_uploaded_per_step: per(after.bytes_uploaded, before.bytes_uploaded),
        },
        prof,
    ))
}

/// One measured (shape, variant) of [`matmul_table`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct MatmulRow {
    /// The product in a VAE step (or `square N`).
    pub shape: &'static str,
    /// Rows of C.
    pub m: usize,
    /// Contracted dimension.
    pub k: usize,
    /// Columns of C.
    pub n: usize,
    /// `NN`, `NT`, `TN` or `TT`.
    pub layout: &'static str,
    /// The kernel variant.
    pub variant: String,
    /// Median seconds per product.
    pub seconds: f64,
    /// GFLOP/s at the median.
    pub gflops: f64,
}

/// A timing budget must be positive and finite.
fn check_budget(budget: Duration) -> Result<()> {
    match budget.is_zero() {
        true => Err(Error::arg("seconds", "must be a positive duration")),
        false => Ok(()),
    }
}

impl std::fmt::Display for MatmulRow {
    /// One line of the matmul table: shape, MxKxN, layout, variant, GFLOP/s.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dims = format!("{}x{}x{}", self.m, self.k, self.n);
        write!(f, "{:<18} {:>16} {:>6} {:>17} {:>8.2}", self.shape, dims, self.layout, self.variant, self.gflops)
    }
}

/// Times every shape of [`SHAPES`] whose name contains `filter` with `variant` (or every variant
/// this adapter runs), `budget` per (shape, variant); calls `on_row` as each is measured.
#[cfg(not(target_arch = "wasm32"))]
pub fn matmul_table(
    gpu: &Gpu,
    filter: &str,
    variant: Option<MatmulVariant>,
    budget: Duration,
    on_row: &mut dyn FnMut(&MatmulRow),
) -> Result<Vec<MatmulRow>> {
    check_budget(budget)?;
    let variants: Vec<MatmulVariant> = match variant {
        Some(v) => gpu.check_variant(v).map(|_| vec![v])?,
        None => MatmulVariant::ALL.into_iter().filter(|&v| gpu.check_variant(v).is_ok()).collect(),
    };
    // The `subgroup` kernel once per operand kind (`subgroup+textures`, `subgroup+buffers`); the
    // device's own choice is restored afterwards.
    let mut runs: Vec<(MatmulVariant, Option<crate::gpu::Operands>)> = Vec::new();
    for &v in &variants {
        if v == MatmulVariant::Subgroup {
            runs.extend(crate::gpu::Operands::ALL.map(|o| (v, Some(o))));
        } else {
            runs.push((v, None));
        }
    }
    let chosen = gpu.operands();
    let mut rows = Vec::new();
    let result = (|| {
        for s in SHAPES.iter().filter(|s| s.name.contains(filter)) {
            for &(v, o) in &runs {
                if let Some(o) = o {
                    gpu.set_operands(o);
                }
                let r = time_matmul(gpu, s, v, budget)?;
                let row = MatmulRow {
                    shape: s.name,
                    m: s.m,
                    k: s.k,
                    n: s.n,
                    layout: s.layout(),
                    variant: o.map_or(v.to_string(), |o| format!("{v}+{o}")),
                    seconds: r.seconds,
                    gflops: r.gflops,
                };
                on_row(&row);
                rows.push(row);
            }
        }
        Ok(())
    })();
    gpu.set_operands(chosen);
    result.map(|()| rows)
}

impl StepReport {
    /// The column heads of [`StepReport`]'s `Display` rows.
    pub const HEADER: &'static str =
        " batch    ms/step         (min-max)  examples/s dispatches     host ms  buffers new       bytes up";
}

impl std::fmt::Display for StepReport {
    /// One row under [`StepReport::HEADER`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>6} {:>10.2} {:>17} {:>11.0} {:>10.1} {:>11.2} {:>12.2} {:>14.0}",
            self.batch,
            self.ms_per_step,
            format!("({:.2}-{:.2})", self.ms_min, self.ms_max),
            self.examples_per_second,
            self.dispatches_per_step,
            self.cpu_ms_per_step,
            self.buffers_allocated_per_step,
            self.bytes_uploaded_per_step
        )
    }
}

/// One kernel's share of a profiled step (see [`StepRecord::profile`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct ProfileShare {
    /// Kernel entry point and shape.
    pub kernel: String,
    /// Dispatches per step.
    pub calls_per_step: f64,
    /// GPU milliseconds per step.
    pub ms_per_step: f64,
}

/// A [`StepReport`] with what produced it: the JSON object `wgvae bench step --json` prints
/// (`benches/peers/pytorch_step.py` prints the same keys).
#[derive(Clone, Debug, serde::Serialize)]
pub struct StepRecord {
    /// The figures.
    #[serde(flatten)]
    pub report: StepReport,
    /// `wgvae VERSION`.
    pub runner: String,
    /// The model stepped (`classic`).
    pub model: &'static str,
    /// Adapter name.
    pub adapter: String,
    /// Backend.
    pub backend: String,
    /// Device type.
    pub device_type: String,
    /// Driver and version.
    pub driver: String,
    /// The matmul variant used.
    pub matmul: String,
    /// How the CPU-adapter kernels typed their vec4 views (`f32`, `u64`).
    pub storage_words: String,
    /// Where the `subgroup` matmul read its operands (`buffers`, `textures`).
    pub matmul_operands: String,
    /// Per-kernel GPU time, when profiled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<ProfileShare>>,
}

impl StepRecord {
    /// The record of `report` measured on `gpu`, with its profile if there is one.
    pub fn new(gpu: &Gpu, report: StepReport, profile: Option<&crate::gpu::Profile>) -> Self {
        let r = gpu.report();
        let profile = profile.map(|p| {
            let per = p.submissions.max(1) as f64;
            p.rows
                .iter()
                .map(|row| ProfileShare {
                    kernel: row.label.clone(),
                    calls_per_step: row.calls as f64 / per,
                    ms_per_step: row.total_ms / per,
                })
                .collect()
        });
        StepRecord {
            report,
            runner: format!("wgvae {}", env!("CARGO_PKG_VERSION")),
            model: "classic",
            adapter: r.adapter,
            backend: r.backend,
            device_type: r.device_type,
            driver: format!("{} {}", r.driver, r.driver_info),
            matmul: r.matmul_variant,
            storage_words: r.storage_words,
            matmul_operands: r.matmul_operands,
            profile,
        }
    }
}
