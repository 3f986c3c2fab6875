//! Balancing KL against reconstruction: the free-bits kernel against the f64 reference (forward,
//! and its masked gradient checked by finite differences), and the behaviours the options exist
//! for: larger β gives lower KL, the autoencoder reports zero KL, free bits hold every dimension's
//! KL near the floor where the plain objective collapses, schedules are logged.

mod common;
use common::*;
use wgvae::data::sprites;
use wgvae::ops::vae as vops;
use wgvae::ops::{self, Act};
use wgvae::train::{TrainOptions, Trainer};
use wgvae::vae::objective::{KlSchedule, Objective};
use wgvae::vae::{Likelihood, ModelKind, VaeConfig};
use wgvae::{Tape, Var};

fn free_bits_ref(mu: &Mat, lv: &Mat, lambda: f64) -> f64 {
    let e = mu.zip(lv, |m, l| 0.5 * (m * m + l.exp() - 1.0 - l));
    col_sum(&e).d.iter().map(|s| s.max(lambda * mu.r as f64)).sum()
}

#[test]
fn free_bits_kernel_matches_reference_and_masks_gradients() {
    let (b, z) = (9, 6);
    // Dimensions 0-2 carry KL well above the floor, 3-5 well below it.
    let mut mu = Mat::rand(b, z, -0.05, 0.05, 1);
    let mut lv = Mat::rand(b, z, -0.05, 0.05, 2);
    for r in 0..b {
        for c in 0..3 {
            mu.d[r * z + c] = 1.5 + 0.1 * r as f64;
            lv.d[r * z + c] = -1.0 - 0.05 * c as f64;
        }
    }
    let lambda = 0.2;
    let up = 0.7;
    let mut tape = Tape::new(gpu());
    let (vm, vl): (Var, Var) = (tape.leaf(mu.upload(), true), tape.leaf(lv.upload(), true));
    let kl = vops::kl_free_bits(&mut tape, vm, vl, lambda as f32).unwrap();
    let klv = tape.value(kl).clone();
    let scaled = ops::scale(&mut tape, kl, up as f32).unwrap();
    tape.backward(scaled).unwrap();
    tape.submit().unwrap();
    let want = free_bits_ref(&mu, &lv, lambda);
    assert!((download(&klv).d[0] - want).abs() < 1e-4 * want, "free-bits KL {} vs {want}", download(&klv).d[0]);
    let fd_mu = fd_grad(&mu, 1e-6, |m| up * free_bits_ref(m, &lv, lambda));
    let fd_lv = fd_grad(&lv, 1e-6, |l| up * free_bits_ref(&mu, l, lambda));
    let (gm, gl) = (download(tape.grad(vm).unwrap()), download(tape.grad(vl).unwrap()));
    assert_close(&gm, &fd_mu, 1e-5, 1e-4, "free-bits d mu");
    assert_close(&gl, &fd_lv, 1e-5, 1e-4, "free-bits d logvar");
    for r in 0..b {
        for c in 3..z {
            assert_eq!((gm.d[r * z + c], gl.d[r * z + c]), (0.0, 0.0), "dimension {c} is under the floor: no gradient");
        }
    }
}

fn cfg(model: ModelKind, latent: usize) -> VaeConfig {
    VaeConfig {
        model,
        input_dim: 784,
        hidden: vec![64],
        latent,
        activation: Act::Relu,
        likelihood: Likelihood::Bernoulli,
        bn_tau: None,
        classes: 0,
        conv: None,
    }
}

fn train(config: VaeConfig, objective: Objective, epochs: usize) -> (Trainer, wgvae::train::EvalReport) {
    let split = sprites::sprites(0);
    let opts =
        TrainOptions { batch: 128, lr: 2e-3, seed: 3, objective, binarize: false, log_every: 100, steps_per_submit: 1 };
    let mut t = Trainer::new(gpu(), config, opts, &split).unwrap();
    for _ in 0..epochs {
        t.train_epoch(&mut |_| {}).unwrap();
    }
    let r = t.evaluate_full(&t.test).unwrap();
    (t, r)
}

#[test]
fn larger_beta_gives_lower_kl() {
    let kl = |beta| train(cfg(ModelKind::Vae, 6), Objective { beta, ..Default::default() }, 2).1.loss.kl;
    let (low, high) = (kl(0.5), kl(4.0));
    assert!(high < 0.7 * low, "KL with beta 4 ({high}) should be well under KL with beta 0.5 ({low})");
}

#[test]
fn autoencoder_reports_zero_kl_and_still_learns() {
    let (t, r) = train(cfg(ModelKind::Ae, 6), Objective::default(), 2);
    assert!(!t.vae.has_logvar());
    assert_eq!(r.loss.kl, 0.0);
    assert!(r.kl_per_dim.iter().all(|&k| k == 0.0));
    assert!(r.loss.recon < 120.0, "the autoencoder reconstructs: {}", r.loss.recon);
    assert!(r.active_units > 0);
}

#[test]
fn free_bits_hold_every_dimension_at_the_floor_where_the_plain_objective_collapses() {
    // A heavy KL weight collapses the posterior without a remedy.
    let collapsing = Objective { beta: 30.0, ..Default::default() };
    let (_, plain) = train(cfg(ModelKind::Vae, 5), collapsing, 2);
    let lambda = 0.5;
    let (_, fb) = train(cfg(ModelKind::Vae, 5), Objective { free_bits: lambda, ..collapsing }, 2);
    assert!(
        plain.kl_per_dim.iter().all(|&k| k < 0.2 * lambda as f64),
        "plain objective collapses: {:?}",
        plain.kl_per_dim
    );
    assert!(
        fb.kl_per_dim.iter().all(|&k| k > 0.6 * lambda as f64),
        "free bits keep each dimension near {lambda}: {:?}",
        fb.kl_per_dim
    );
    assert!(fb.active_units > plain.active_units);
}

#[test]
fn kl_weight_follows_the_schedule() {
    let o = Objective { schedule: KlSchedule::Linear { warmup: 1000 }, ..Default::default() };
    assert_eq!(o.kl_weight(0), 0.0);
    assert_eq!(o.kl_weight(500), 0.5);
    let (t, _) = train(cfg(ModelKind::Vae, 4), o, 1);
    // 45 steps into a 1000-step warm-up.
    assert!((o.kl_weight(t.step - 1) - 44.0 / 1000.0).abs() < 1e-12);
}

#[test]
fn mig_of_a_trained_model_exceeds_that_of_an_untrained_one() {
    use wgvae::vae::metrics::mutual_information_gap;
    let split = sprites::sprites(0);
    let mig = |t: &Trainer| {
        let r = t.evaluate_full(&t.train).unwrap();
        let f = split.train.factors().unwrap();
        mutual_information_gap(&r.mu, f.len(), 6, f, &sprites::FACTOR_SIZES, 20).unwrap().mig
    };
    let opts = TrainOptions {
        batch: 128,
        lr: 2e-3,
        seed: 4,
        objective: Objective::default(),
        binarize: false,
        log_every: 100,
        steps_per_submit: 1,
    };
    let mut t = Trainer::new(gpu(), cfg(ModelKind::Vae, 6), opts, &split).unwrap();
    let before = mig(&t);
    for _ in 0..3 {
        t.train_epoch(&mut |_| {}).unwrap();
    }
    let after = mig(&t);
    assert!(after > before + 0.02, "MIG {before} untrained -> {after} trained");
}

#[test]
fn bn_vae_kl_never_falls_under_its_bound_where_the_plain_objective_collapses() {
    let (z, tau) = (5, 0.5f32);
    let bound = 0.5 * tau as f64 * z as f64;
    let split = sprites::sprites(0);
    let collapsing = Objective { beta: 30.0, ..Default::default() };
    let opts = TrainOptions {
        batch: 128,
        lr: 2e-3,
        seed: 3,
        objective: collapsing,
        binarize: false,
        log_every: 100,
        steps_per_submit: 1,
    };
    let config = VaeConfig { bn_tau: Some(tau), ..cfg(ModelKind::Vae, z) };
    let mut t = Trainer::new(gpu(), config, opts, &split).unwrap();
    for epoch in 0..2 {
        let (train, _) = t.train_epoch(&mut |_| {}).unwrap();
        // With batch statistics, each dimension's batch mean of mu^2 is gamma^2 >= tau exactly.
        assert!(train.kl >= bound * (1.0 - 1e-3), "epoch {epoch}: training KL {} under the bound {bound}", train.kl);
        let test = t.evaluate_full(&t.test).unwrap();
        assert!(test.loss.kl >= 0.9 * bound, "epoch {epoch}: test KL {} under 0.9 x {bound}", test.loss.kl);
        assert_eq!(test.active_units, z);
    }
    // The same run without BN collapses (see the free-bits test): KL per example far under the bound.
    let (_, plain) = train(cfg(ModelKind::Vae, z), collapsing, 2);
    assert!(plain.loss.kl < 0.2 * bound, "plain KL {}", plain.loss.kl);
}

#[test]
fn conditional_vae_uses_its_label() {
    use wgvae::data::gpu::onehot_rows;
    use wgvae::ops::vae::Noise;
    let split = sprites::sprites(0);
    let classes = split.train.num_classes();
    let config = VaeConfig { classes, ..cfg(ModelKind::Cvae, 4) };
    let opts = TrainOptions {
        batch: 128,
        lr: 2e-3,
        seed: 6,
        objective: Objective::default(),
        binarize: false,
        log_every: 100,
        steps_per_submit: 1,
    };
    let mut t = Trainer::new(gpu(), config, opts, &split).unwrap();
    for _ in 0..3 {
        t.train_epoch(&mut |_| {}).unwrap();
    }
    // Test reconstruction loss with the true labels vs every label shifted by one class.
    let n = 200;
    let x: Vec<f32> = split.test.examples(n);
    let labels = &split.test.labels().unwrap()[..n];
    let recon = |shift: usize| {
        let ls: Vec<usize> = labels.iter().map(|&l| (l as usize + shift) % classes).collect();
        let y = onehot_rows(gpu(), &ls, classes).unwrap();
        let xt = wgvae::Tensor::from_slice(gpu(), n, 784, &x).unwrap();
        let mut tape = Tape::no_grad(gpu());
        let (xv, yv) = (tape.input(xt.clone()), tape.input(y));
        let out = t.vae.forward_cond(&mut tape, xv, Some(yv), Noise { seed: 1, step: 0, stream: 0 }).unwrap();
        let loss = t.vae.loss(&mut tape, &out, &xt, 1.0).unwrap();
        let r = tape.value(loss.recon).clone();
        tape.submit().unwrap();
        download(&r).d[0] / n as f64
    };
    let (right, wrong) = (recon(0), recon(1));
    assert!(right < wrong - 1.0, "recon with the true label {right} vs a wrong one {wrong}");
    // Without labels the CVAE refuses to run.
    let mut tape = Tape::no_grad(gpu());
    let xv = tape.input(wgvae::Tensor::from_slice(gpu(), 1, 784, &x[..784]).unwrap());
    assert!(t.vae.forward(&mut tape, xv, Noise { seed: 1, step: 0, stream: 0 }).is_err());
}

#[test]
fn learned_gaussian_variance_beats_the_fixed_unit_variance() {
    let learned = VaeConfig { likelihood: Likelihood::GaussianLearned, ..cfg(ModelKind::Vae, 6) };
    let fixed = VaeConfig { likelihood: Likelihood::Gaussian { variance: 1.0 }, ..cfg(ModelKind::Vae, 6) };
    let (t, rl) = train(learned, Objective::default(), 2);
    let (_, rf) = train(fixed, Objective::default(), 2);
    let lv = download(t.vae.out_logvar.as_ref().unwrap().value());
    // Pixel errors are far below 1 on [0,1] images: every variance shrinks, and the likelihood in
    // nats improves on the unit-variance model's.
    assert!(lv.d.iter().all(|&v| v < 0.0), "learned log-variances {:?}", &lv.d[..8]);
    assert!(rl.loss.recon < rf.loss.recon - 50.0, "learned {} vs fixed {}", rl.loss.recon, rf.loss.recon);
}
