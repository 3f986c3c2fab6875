//! The trainer's wiring, step by step against an f64 reference trainer written here from the
//! documented behaviour (README, src/train.rs docs), not from the library's own helpers:
//! * each step draws eps from Philox at (seed, step, eps stream) — a new draw every step;
//! * with `binarize`, each step's batch is the threshold of the binarization stream's uniforms;
//! * the KL weight β·w(step) of every schedule is applied at the *step*, and the reductions scale
//!   reconstruction and KL as documented (sum, mean, normalized);
//! * each epoch visits the data in its own shuffled order, and resume reproduces that order;
//! * under every matmul variant (tiled included), training matches the same reference.
//!
//! The reference model is the 1-hidden-layer ReLU VAE with an analytic f64 backward, itself checked
//! against central finite differences.

mod common;
use common::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use wgvae::checkpoint::Checkpoint;
use wgvae::data::{Images, Split};
use wgvae::ops::Act;
use wgvae::train::{TrainOptions, Trainer};
use wgvae::vae::objective::{KlSchedule, Objective, Reduction};
use wgvae::vae::{Likelihood, ModelKind, VaeConfig};
use wgvae::{rng, Gpu, MatmulVariant, Operands, Words};

/// Image size (3x4 = 12 pixels), hidden width, latent size: multiples of 4, so every variant's
/// vec4 and subgroup kernels take the full batches (the 2-row tail batch takes the scalar ones).
const H_PX: usize = 3;
const W_PX: usize = 4;
const HID: usize = 8;
const Z: usize = 4;
const D: usize = H_PX * W_PX;
const N_TRAIN: usize = 10;
const BATCH: usize = 4;
/// Steps per epoch: batches of 4, 4 and 2.
const STEPS_PER_EPOCH: usize = 3;
const LR: f64 = 1e-2;
/// Philox streams (documented in src/train.rs): eps 0, binarization 1.
const STREAM_EPS: u32 = 0;
const STREAM_BINARIZE: u32 = 1;

fn config() -> VaeConfig {
    VaeConfig {
        model: ModelKind::Vae,
        input_dim: D,
        hidden: vec![HID],
        latent: Z,
        activation: Act::Relu,
        likelihood: Likelihood::Bernoulli,
        bn_tau: None,
        classes: 0,
        conv: None,
    }
}

fn images(n: usize, seed: u64) -> Images {
    use rand::Rng;
    let mut r = rand::rngs::StdRng::seed_from_u64(seed);
    Images::from_u8((0..n * D).map(|_| r.random::<u8>()).collect(), n, &[H_PX, W_PX]).unwrap()
}

fn split() -> Split {
    Split { name: "tiny".into(), train: images(N_TRAIN, 1), test: images(6, 2) }
}

/// The documented epoch order: 0..n shuffled by `StdRng::seed_from_u64(seed ^ epoch·0x9E3779B97F4A7C15)`.
fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..n).collect();
    let mut r = rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    idx.shuffle(&mut r);
    idx
}

/// The KL schedule w(step), from the formulas in the README / KL annealing literature.
fn schedule_weight(s: KlSchedule, step: u64) -> f64 {
    let t = step as f64;
    match s {
        KlSchedule::Constant => 1.0,
        KlSchedule::Linear { warmup } => (t / warmup as f64).min(1.0),
        KlSchedule::Sigmoid { warmup } => 1.0 / (1.0 + (-10.0 * (t / warmup as f64 - 0.5)).exp()),
        KlSchedule::Cyclical { cycles, total } => {
            let period = total as f64 / cycles as f64;
            ((t % period) / period * 2.0).min(1.0)
        }
    }
}

/// (reconstruction scale, KL scale) of a batch of `b` at `step` (module docs of `objective`).
fn scales(o: &Objective, step: u64, b: usize) -> (f64, f64) {
    let w = o.beta as f64 * schedule_weight(o.schedule, step);
    match o.reduction {
        Reduction::Sum => (1.0, w),
        Reduction::Mean => (1.0 / (b * D) as f64, w / b as f64),
        Reduction::Normalized => (1.0 / D as f64, w / Z as f64),
    }
}

/// Parameters in `Vae::params` order: encoder.0 w b, fc_mu w b, fc_logvar w b, decoder.0 w b,
/// decoder.1 w b.
type Params = Vec<Mat>;

fn relu(m: &Mat) -> Mat {
    m.map(|v| v.max(0.0))
}
fn lin(x: &Mat, w: &Mat, b: &Mat) -> Mat {
    add_row(&matmul(x, w, false, true), b)
}
fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// Σ recon, Σ KL of a batch, and the gradient of rs·Σrecon + ks·ΣKL with respect to every parameter.
fn loss_and_grads(p: &Params, x: &Mat, eps: &Mat, rs: f64, ks: f64) -> (f64, f64, Params) {
    let h = relu(&lin(x, &p[0], &p[1]));
    let mu = lin(&h, &p[2], &p[3]);
    let lv = lin(&h, &p[4], &p[5]);
    let sd = lv.map(|l| (0.5 * l).exp());
    let z = mu.zip(&sd.zip(eps, |s, e| s * e), |m, n| m + n);
    let h3 = relu(&lin(&z, &p[6], &p[7]));
    let o = lin(&h3, &p[8], &p[9]);
    let recon = o.zip(x, |l, t| l.max(0.0) - l * t + (-l.abs()).exp().ln_1p()).sum();
    let kl = mu.zip(&lv, |m, l| 0.5 * (m * m + l.exp() - 1.0 - l)).sum();

    let d_o = o.zip(x, |l, t| rs * (sigmoid(l) - t));
    let dh3 = matmul(&d_o, &p[8], false, false).zip(&h3, |g, y| if y > 0.0 { g } else { 0.0 });
    let dz = matmul(&dh3, &p[6], false, false);
    let dmu = dz.zip(&mu, |g, m| g + ks * m);
    let dlv = dz.zip(&sd.zip(eps, |s, e| 0.5 * s * e), |g, f| g * f).zip(&lv, |g, l| g + ks * 0.5 * (l.exp() - 1.0));
    let dh = matmul(&dmu, &p[2], false, false).zip(&matmul(&dlv, &p[4], false, false), |a, b| a + b).zip(&h, |g, y| {
        if y > 0.0 {
            g
        } else {
            0.0
        }
    });
    let grads = vec![
        matmul(&dh, x, true, false),
        col_sum(&dh),
        matmul(&dmu, &h, true, false),
        col_sum(&dmu),
        matmul(&dlv, &h, true, false),
        col_sum(&dlv),
        matmul(&dh3, &z, true, false),
        col_sum(&dh3),
        matmul(&d_o, &h3, true, false),
        col_sum(&d_o),
    ];
    (recon, kl, grads)
}

/// The f64 reference trainer: Adam (PyTorch defaults) on the same data, order and noise.
struct Reference {
    p: Params,
    m: Params,
    v: Params,
    t: i32,
    step: u64,
    epoch: u64,
}

impl Reference {
    fn new(p: Params) -> Self {
        let zeros: Params = p.iter().map(|q| Mat::zeros(q.r, q.c)).collect();
        Reference { m: zeros.clone(), v: zeros, p, t: 0, step: 0, epoch: 0 }
    }

    /// One epoch; returns (Σ recon, Σ KL) over it.
    fn epoch(&mut self, data: &Images, o: &TrainOptions) -> (f64, f64) {
        self.epoch += 1;
        let order = epoch_order(data.n(), o.seed, self.epoch);
        let (mut rsum, mut ksum) = (0.0, 0.0);
        for off in (0..data.n()).step_by(o.batch) {
            let rows = &order[off..(off + o.batch).min(data.n())];
            let b = rows.len();
            let step = self.step as u32;
            let mut x = Mat::zeros(b, D);
            let u = rng::uniforms(b * D, o.seed, step, STREAM_BINARIZE);
            for (r, &i) in rows.iter().enumerate() {
                for j in 0..D {
                    // The shader's arithmetic, in f32: pixel / 255, then u < pixel.
                    let px = match data.pixels() {
                        wgvae::data::Pixels::U8(v) => v[i * D + j] as f32 / 255.0,
                        wgvae::data::Pixels::F32(v) => v[i * D + j],
                    };
                    x.d[r * D + j] = if o.binarize { (u[r * D + j] < px) as u8 as f64 } else { px as f64 };
                }
            }
            let eps = Mat::new(b, Z, rng::normals(b * Z, o.seed, step, STREAM_EPS));
            let (rs, ks) = scales(&o.objective, self.step, b);
            let (recon, kl, g) = loss_and_grads(&self.p, &x, &eps, rs, ks);
            rsum += recon;
            ksum += kl;
            self.t += 1;
            let (bc1, bc2) = (1.0 - 0.9f64.powi(self.t), 1.0 - 0.999f64.powi(self.t));
            for (((p, m), v), g) in self.p.iter_mut().zip(&mut self.m).zip(&mut self.v).zip(&g) {
                for j in 0..p.d.len() {
                    m.d[j] = 0.9 * m.d[j] + 0.1 * g.d[j];
                    v.d[j] = 0.999 * v.d[j] + 0.001 * g.d[j] * g.d[j];
                    p.d[j] -= LR * (m.d[j] / bc1) / ((v.d[j] / bc2).sqrt() + 1e-8);
                }
            }
            self.step += 1;
        }
        (rsum, ksum)
    }
}

fn options(objective: Objective, binarize: bool) -> TrainOptions {
    TrainOptions { batch: BATCH, lr: LR as f32, seed: 7, objective, binarize, log_every: 1, steps_per_submit: 1 }
}

/// The trainer's parameters in the reference's order, by their PyTorch names.
fn params_of(t: &Trainer) -> Params {
    vae_params(&t.vae)
}

/// After each epoch: the trainer's parameters and its reported per-example losses equal the
/// reference's.
fn assert_matches(t: &Trainer, r: &Reference, losses: ((f64, f64), (f64, f64)), what: &str) {
    let ((gr, gk), (rr, rk)) = losses;
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
    assert!(
        close(gr, rr) && close(gk, rk),
        "{what}, epoch {}: trainer recon {gr} KL {gk} per example, reference {rr} {rk}",
        r.epoch
    );
    for (i, (got, want)) in params_of(t).iter().zip(&r.p).enumerate() {
        assert_close(got, want, 2e-4, 1e-3, &format!("{what}, epoch {} (step {}): parameter {i}", r.epoch, r.step));
    }
}

/// Trains `epochs` epochs with the trainer on `g` and the reference side by side.
fn run(g: &Gpu, o: TrainOptions, epochs: usize, what: &str) -> (Trainer, Reference) {
    let s = split();
    let mut t = Trainer::new(g, config(), o.clone(), &s).unwrap();
    let mut r = Reference::new(params_of(&t));
    for _ in 0..epochs {
        let (tr, _) = t.train_epoch(&mut |_| {}).unwrap();
        let (rr, rk) = r.epoch(&s.train, &o);
        let n = s.train.n() as f64;
        assert_matches(&t, &r, ((tr.recon, tr.kl), (rr / n, rk / n)), what);
    }
    assert_eq!(t.step, r.step, "{what}: steps taken");
    (t, r)
}

#[test]
fn reference_backward_matches_finite_differences() {
    let p: Params = [(HID, D), (1, HID), (Z, HID), (1, Z), (Z, HID), (1, Z), (HID, Z), (1, HID), (D, HID), (1, D)]
        .iter()
        .enumerate()
        .map(|(i, &(r, c))| Mat::rand(r, c, -0.6, 0.6, 40 + i as u64))
        .collect();
    let x = Mat::rand(5, D, 0.0, 1.0, 3);
    let eps = Mat::rand(5, Z, -2.0, 2.0, 4);
    let (rs, ks) = (0.3, 1.7);
    let (_, _, g) = loss_and_grads(&p, &x, &eps, rs, ks);
    for i in 0..p.len() {
        let fd = fd_grad(&p[i], 1e-6, |pi| {
            let mut q = p.clone();
            q[i] = pi.clone();
            let (r, k, _) = loss_and_grads(&q, &x, &eps, rs, ks);
            rs * r + ks * k
        });
        assert_close(&g[i], &fd, 1e-6, 1e-5, &format!("reference gradient of parameter {i}"));
    }
}

#[test]
fn noise_and_orders_change_every_step_and_epoch() {
    // What the reference relies on: each step has its own eps and binarization draws, each epoch
    // its own order.
    assert_ne!(rng::normals(16, 7, 0, STREAM_EPS), rng::normals(16, 7, 1, STREAM_EPS));
    assert_ne!(rng::uniforms(16, 7, 0, STREAM_BINARIZE), rng::uniforms(16, 7, 1, STREAM_BINARIZE));
    assert_ne!(epoch_order(N_TRAIN, 7, 1), epoch_order(N_TRAIN, 7, 2));
}

#[test]
fn every_schedule_and_reduction_is_applied_at_the_step() {
    // Warm-ups and cycles shorter than an epoch, so a weight taken per epoch instead of per step
    // differs from the reference within the first epoch.
    let schedules = [
        KlSchedule::Constant,
        KlSchedule::Linear { warmup: 4 },
        KlSchedule::Sigmoid { warmup: 4 },
        KlSchedule::Cyclical { cycles: 3, total: 6 },
    ];
    for schedule in schedules {
        for reduction in [Reduction::Sum, Reduction::Mean, Reduction::Normalized] {
            let o = Objective { beta: 1.5, reduction, schedule, free_bits: 0.0 };
            run(gpu(), options(o, false), 2, &format!("{schedule:?} {reduction:?}"));
        }
    }
}

#[test]
fn binarized_batches_are_the_threshold_of_their_own_stream() {
    run(gpu(), options(Objective::default(), true), 2, "binarize");
}

#[test]
fn every_matmul_variant_trains_like_the_reference() {
    for v in variants() {
        let g = gpu_for(v);
        let o =
            Objective { reduction: Reduction::Mean, schedule: KlSchedule::Linear { warmup: 4 }, ..Default::default() };
        let (t, _) = run(g, options(o, true), 2, &format!("{} matmul", v.name()));
        // The full batches (every size a multiple of 4) ran on the variant's own kernel.
        let want = match v {
            MatmulVariant::Tiled => "matmul_tiled",
            MatmulVariant::Register => "matmul_unrolled",
            MatmulVariant::Subgroup => "matmul_subgroup",
        };
        let ran = t.gpu.kernel_dispatches();
        assert!(ran.get(want).copied().unwrap_or(0) > 0, "{}: {want} never ran: {ran:?}", v.name());
        if v != MatmulVariant::Tiled {
            assert_eq!(ran.get("matmul_tiled"), None, "{}: the tiled kernel must not run", v.name());
        }
    }
}

#[test]
fn a_training_step_compiles_three_subgroup_matmul_pipelines() {
    // Every forward and input-gradient product of the VAE (relu layers, identity heads, relu
    // derivatives) shares one `subgroup` pipeline per layout, with the activation a run-time
    // parameter; the weight gradients have the third. lavapipe compiles each such pipeline for
    // 100-200 ms inside the first step, so five would cost a training run about 0.1 s more.
    if !variants().contains(&MatmulVariant::Subgroup) {
        return;
    }
    // A device of its own: the pipelines it compiles are this test's alone.
    let g =
        Gpu::with_options(wgvae::GpuOptions { matmul: Some(MatmulVariant::Subgroup), ..Default::default() }).unwrap();
    track(&g);
    run(&g, options(Objective::default(), true), 1, "subgroup pipelines");
    let ran = g.kernel_name_dispatches();
    let names: Vec<&String> = ran.keys().filter(|k| k.contains(":matmul_subgroup[")).collect();
    assert_eq!(names.len(), 3, "one pipeline per layout (NT, NN, TN), ran {names:?}");
    for name in names {
        let weight_gradient = name.contains("TA=true");
        assert!(name.contains(&format!("RT_ACT={}", !weight_gradient)), "{name}");
    }
}

#[test]
fn every_storage_word_and_operand_kind_trains_like_the_reference_and_bit_identically() {
    // The kernels with storage words (`subgroup` matmul, Adam over the packed parameters, the
    // reconstruction's and the gather's vec4 or 8-wide kernels) with their vec4 views as vec4<f32> and as
    // vec2<u64>: the same training to the bit.
    // The `subgroup` matmul's operands from textures (the default) and from buffers too.
    let mut first: Option<(String, Params)> = None;
    let mut configs: Vec<(&'static Gpu, String)> =
        words_kinds().into_iter().map(|w| (gpu_words(w), format!("{w} words"))).collect();
    if gpu().matmul_variant() == MatmulVariant::Subgroup {
        configs.push((gpu_operands(Operands::Buffers), "buffer operands".into()));
    }
    for (g, what) in configs {
        let w = g.words();
        let (t, _) = run(g, options(Objective::default(), true), 2, &what);
        // Adam over the packed parameters runs eight elements per invocation with u64 words.
        // With operand textures it reads its inputs from textures (adam_step8t).
        let adam = match (w, g.operands()) {
            (Words::U64, Operands::Textures) => "optim.wgsl+{w}+textures:adam_step8t".to_string(),
            (Words::U64, Operands::Buffers) => "optim.wgsl+{w}:adam_step8".to_string(),
            _ => "optim.wgsl+{w}:adam_step4".to_string(),
        };
        // The gather takes eight pixels per invocation only with u64 words and D % 8 == 0.
        let gather =
            if w == Words::U64 && D.is_multiple_of(8) { "data.wgsl+{w}:gather8" } else { "data.wgsl+{w}:gather4" };
        for kernel in [adam.as_str(), "vae_fused.wgsl+{w}:recon_fused4", gather] {
            assert_ran_named(g, &kernel.replace("{w}", w.name()), &what);
        }
        if g.matmul_variant() == MatmulVariant::Subgroup {
            let textures = if g.operands() == Operands::Textures { "+textures" } else { "" };
            assert_ran_named(g, &format!("matmul_subgroup.wgsl+{w}{textures}:matmul_subgroup"), &what);
        }
        let p = params_of(&t);
        match &first {
            Some((what0, want)) => {
                for (i, (x, y)) in p.iter().zip(want).enumerate() {
                    let same = x.d.iter().zip(&y.d).all(|(a, b)| (*a as f32).to_bits() == (*b as f32).to_bits());
                    assert!(same, "parameter {i} differs between {what0} and {what} after 2 epochs");
                }
            }
            None => first = Some((what, p)),
        }
    }
}

#[test]
fn resume_reproduces_the_next_epochs_order_and_noise() {
    let o = options(Objective { schedule: KlSchedule::Linear { warmup: 5 }, ..Default::default() }, true);
    let (t, mut r) = run(gpu(), o.clone(), 1, "before resume");
    let dir = std::env::temp_dir().join(format!("wgvae-trainer-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    t.save(&path).unwrap();
    drop(t);
    let s = split();
    let mut resumed = Trainer::resume(gpu(), &Checkpoint::load(&path).unwrap(), &s).unwrap();
    assert_eq!((resumed.epoch, resumed.step), (1, STEPS_PER_EPOCH as u64));
    let (tr, _) = resumed.train_epoch(&mut |_| {}).unwrap();
    let (rr, rk) = r.epoch(&s.train, &o);
    let n = s.train.n() as f64;
    assert_matches(&resumed, &r, ((tr.recon, tr.kl), (rr / n, rk / n)), "resumed epoch 2");
    std::fs::remove_dir_all(&dir).ok();
}
