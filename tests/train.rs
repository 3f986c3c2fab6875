//! End to end: a few full VAE training steps against an f64 CPU reference trainer with the same
//! eps; training on sprites lowers the test loss; same seed, same numbers; resume == uninterrupted.

mod common;
use common::*;
use wgvae::checkpoint::Checkpoint;
use wgvae::data::sprites;
use wgvae::nn::Adam;
use wgvae::ops::vae::Noise;
use wgvae::ops::Act;
use wgvae::train::{TrainOptions, Trainer};
use wgvae::vae::{Likelihood, ModelKind, Vae, VaeConfig, STREAM_EPS};
use wgvae::Optimizer;
use wgvae::{rng, Tape};

fn relu(m: &Mat) -> Mat {
    m.map(|v| v.max(0.0))
}

fn lin(x: &Mat, w: &Mat, b: &Mat) -> Mat {
    add_row(&matmul(x, w, false, true), b)
}

/// Negative ELBO (sum over the batch) of the reference VAE 1 hidden layer each side, in f64.
fn ref_loss(p: &[Mat], x: &Mat, eps: &Mat) -> (f64, f64) {
    let h = relu(&lin(x, &p[0], &p[1]));
    let mu = lin(&h, &p[2], &p[3]);
    let lv = lin(&h, &p[4], &p[5]);
    let z = mu.zip(&lv.zip(eps, |l, e| (0.5 * l).exp() * e), |m, s| m + s);
    let h3 = relu(&lin(&z, &p[6], &p[7]));
    let logits = lin(&h3, &p[8], &p[9]);
    let bce = logits.zip(x, |l, t| l.max(0.0) - l * t + (-l.abs()).exp().ln_1p()).sum();
    let kl = mu.zip(&lv, |m, l| 0.5 * (m * m + l.exp() - 1.0 - l)).sum();
    (bce + kl, kl)
}

#[test]
fn vae_steps_match_f64_reference_trainer() {
    let g = gpu();
    let cfg = VaeConfig {
        model: ModelKind::Vae,
        input_dim: 11,
        hidden: vec![6],
        latent: 3,
        activation: Act::Relu,
        likelihood: Likelihood::Bernoulli,
        bn_tau: None,
        classes: 0,
        conv: None,
    };
    let vae = Vae::new(g, cfg, 3).unwrap();
    let mut p: Vec<Mat> = vae_params(&vae);
    let (b, seed) = (5, 42u64);
    let x = Mat::rand(b, 11, 0.0, 1.0, 8);
    let mut opt = Adam::new(1e-2).unwrap();
    let (mut m, mut v): (Vec<Mat>, Vec<Mat>) = p.iter().map(|q| (Mat::zeros(q.r, q.c), Mat::zeros(q.r, q.c))).unzip();
    for step in 0..4u32 {
        // GPU step.
        let mut tape = Tape::new(g);
        let xt = x.upload();
        let xv = tape.input(xt.clone());
        let out = vae.forward(&mut tape, xv, Noise { seed, step, stream: STREAM_EPS }).unwrap();
        let loss = vae.loss(&mut tape, &out, &xt, 1.0).unwrap();
        tape.backward(loss.total).unwrap();
        opt.step(&mut tape, &vae.params()).unwrap();
        let lt = tape.value(loss.total).clone();
        let rb = tape.read(&lt).unwrap();
        tape.submit().unwrap();
        let gpu_loss = rb.get().unwrap()[0] as f64;
        // Reference step: same eps, gradients by central differences of the f64 loss, Adam in f64.
        let eps = Mat::new(b, 3, rng::normals(b * 3, seed, step, STREAM_EPS));
        let (ref_l, _) = ref_loss(&p, &x, &eps);
        assert!(
            (gpu_loss - ref_l).abs() <= 1e-4 * ref_l.abs(),
            "step {step}: GPU loss {gpu_loss}, f64 reference {ref_l}"
        );
        let grads: Vec<Mat> = (0..p.len())
            .map(|i| {
                fd_grad(&p[i], 1e-6, |pi| {
                    let mut q = p.clone();
                    q[i] = pi.clone();
                    ref_loss(&q, &x, &eps).0
                })
            })
            .collect();
        let t = step as i32 + 1;
        let (bc1, bc2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
        for i in 0..p.len() {
            for j in 0..p[i].d.len() {
                let gr = grads[i].d[j];
                m[i].d[j] = 0.9 * m[i].d[j] + 0.1 * gr;
                v[i].d[j] = 0.999 * v[i].d[j] + 0.001 * gr * gr;
                p[i].d[j] -= 1e-2 * (m[i].d[j] / bc1) / ((v[i].d[j] / bc2).sqrt() + 1e-8);
            }
        }
        for (i, (got, want)) in vae_params(&vae).iter().zip(&p).enumerate() {
            assert_close(got, want, 2e-4, 1e-3, &format!("step {step}: parameter {i}"));
        }
    }
}

fn small() -> VaeConfig {
    VaeConfig {
        model: ModelKind::Vae,
        input_dim: 784,
        hidden: vec![64],
        latent: 6,
        activation: Act::Relu,
        likelihood: Likelihood::Bernoulli,
        bn_tau: None,
        classes: 0,
        conv: None,
    }
}

fn opts(seed: u64) -> TrainOptions {
    TrainOptions { batch: 128, lr: 2e-3, seed, log_every: 10, ..Default::default() }
}

#[test]
fn training_on_sprites_lowers_the_test_loss() {
    let split = sprites::sprites(0);
    let mut t = Trainer::new(gpu(), small(), opts(5), &split).unwrap();
    let before = t.evaluate(&t.test).unwrap();
    let mut reports = 0;
    for _ in 0..2 {
        t.train_epoch(&mut |p| {
            assert!(p.running_loss.is_finite() && p.batch <= p.batches);
            reports += 1;
        })
        .unwrap();
    }
    let after = t.evaluate(&t.test).unwrap();
    assert!(reports >= 2, "progress is reported during the epoch");
    assert!(after.loss < 0.6 * before.loss, "test loss {} -> {}", before.loss, after.loss);
    assert!(after.kl > 0.0 && after.recon > 0.0);
    assert!((after.loss - (after.recon + after.kl)).abs() < 1e-6 * after.loss);
}

#[test]
fn same_seed_same_losses_and_resume_equals_uninterrupted() {
    let split = sprites::sprites(0);
    let run = |epochs: usize| {
        let mut t = Trainer::new(gpu(), small(), opts(11), &split).unwrap();
        let mut out = Vec::new();
        for _ in 0..epochs {
            let (tr, _) = t.train_epoch(&mut |_| {}).unwrap();
            out.push((tr, t.evaluate(&t.test).unwrap()));
        }
        (t, out)
    };
    let (_, a) = run(2);
    let (b_trainer, b) = run(1);
    assert_eq!(a[0], b[0], "same seed, same first epoch (bit for bit)");

    let dir = std::env::temp_dir().join(format!("wgvae-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    b_trainer.save(&path).unwrap();
    let ck = Checkpoint::load(&path).unwrap();
    assert_eq!(ck.config, small());
    let mut c = Trainer::resume(gpu(), &ck, &split).unwrap();
    assert_eq!(
        (c.epoch, c.step, c.opts.seed),
        (1, b_trainer.step, 11),
        "epoch, step and seed come from the checkpoint"
    );
    assert_eq!(c.opts, b_trainer.opts, "every training option comes from the checkpoint");
    let (tr, _) = c.train_epoch(&mut |_| {}).unwrap();
    let te = c.evaluate(&c.test).unwrap();
    assert_eq!((tr, te), a[1], "resumed epoch 2 equals the uninterrupted epoch 2");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn several_steps_per_submission_give_the_same_bits_and_fewer_submissions() {
    // Private devices: the submission counts must not see other tests' work.
    let split = sprites::sprites(0);
    let run = |k: usize| {
        let g = wgvae::Gpu::new().unwrap();
        let o = TrainOptions { steps_per_submit: k, log_every: 1000, ..opts(9) };
        let mut t = Trainer::new(&g, small(), o, &split).unwrap();
        // The first epochs fill the pool (k steps in flight hold k sets of intermediates; the
        // first epoch's first step submits alone, for its read-back, so the second epoch groups
        // its steps differently).
        let first = t.train_epoch(&mut |_| {}).unwrap().0;
        t.train_epoch(&mut |_| {}).unwrap();
        let (s0, e0) = (g.stats(), t.step);
        let second = t.train_epoch(&mut |_| {}).unwrap().0;
        let (s1, steps) = (g.stats(), t.step - e0);
        let params: Vec<Vec<u32>> =
            vae_params(&t.vae).iter().map(|m| m.d.iter().map(|&v| (v as f32).to_bits()).collect()).collect();
        let losses = [first.loss, second.loss, t.evaluate(&t.test).unwrap().loss].map(f64::to_bits);
        (
            params,
            losses,
            s1.submissions - s0.submissions,
            s1.buffers_created + s1.textures_created - s0.buffers_created - s0.textures_created,
            steps,
        )
    };
    let (p1, l1, subs1, _, steps) = run(1);
    let (p5, l5, subs5, new5, steps5) = run(5);
    assert_eq!(steps, steps5);
    assert_eq!(l1, l5, "losses differ with 5 steps per submission");
    assert_eq!(p1, p5, "parameters differ with 5 steps per submission");
    // One submission per step, plus the epoch's first step (its read-back) and end; with 5 steps
    // per submission a fifth of that, the last group of the epoch being shorter.
    let (first_report, end) = (0, 1);
    assert!(subs1 >= steps && subs1 <= steps + first_report + end + 1, "{subs1} submissions for {steps} steps");
    assert!(subs5 <= steps.div_ceil(5) + 2, "{subs5} submissions for {steps} steps at 5 per submission");
    assert_eq!(new5, 0, "a warmed-up epoch at 5 steps per submission created {new5} buffers or textures");
    let bad = TrainOptions { steps_per_submit: 0, ..opts(9) };
    let e = Trainer::new(gpu(), small(), bad, &split).err().expect("0 steps per submission is refused").to_string();
    assert!(e.contains("steps_per_submit"), "{e}");
}

#[test]
fn progress_reports_arrive_in_order_with_the_values_an_immediate_read_back_gives() {
    // train_epoch waits for each progress read-back one step late (so the device never idles
    // while the host waits); the reports must still be every report step's running loss, in
    // order, exactly as `Trainer::step` returns it when it waits at once, then the epoch's loss.
    let split = sprites::sprites(0);
    let o = TrainOptions { log_every: 7, ..opts(11) };
    let mut a = Trainer::new(gpu(), small(), o.clone(), &split).unwrap();
    let mut got = Vec::new();
    a.train_epoch(&mut |p| got.push((p.batch, p.running_loss))).unwrap();
    let mut b = Trainer::new(gpu(), small(), o, &split).unwrap();
    let mut e = b.begin_epoch().unwrap();
    let batches = e.batches;
    let mut want = Vec::new();
    for i in 0..batches {
        let report = i == 0 || ((i + 1) % 7 == 0 && i + 1 < batches);
        if let Some(loss) = b.step(&mut e, i, report).unwrap() {
            want.push((i + 1, loss));
        }
    }
    want.push((batches, b.end_epoch(e).unwrap().loss));
    assert!(want.len() >= 3, "{batches} batches give several reports: {want:?}");
    assert_eq!(got, want);
}
