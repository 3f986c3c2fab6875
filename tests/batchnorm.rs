//! The BN-VAE layer (scaled batch normalization) against the f64 reference: forward with batch
//! statistics, running statistics, evaluation mode, and the backward rule for x and θ checked by
//! finite differences first.

mod common;
use common::*;
use wgvae::ops;
use wgvae::ops::batchnorm::{scaled_batch_norm, BnRunning, BN_EPS};
use wgvae::Tape;

fn gamma(theta: f64, tau: f64) -> f64 {
    (tau + (1.0 - tau) / (1.0 + (-theta).exp())).sqrt()
}

fn bn_ref(x: &Mat, theta: &Mat, tau: f64) -> Mat {
    let n = x.r as f64;
    let mean = col_sum(x).map(|s| s / n);
    let var =
        col_sum(&x.zip(&Mat::new(x.r, x.c, (0..x.r * x.c).map(|i| mean.d[i % x.c]).collect()), |a, m| (a - m).powi(2)))
            .map(|s| s / n);
    Mat::new(
        x.r,
        x.c,
        (0..x.r * x.c)
            .map(|i| {
                let c = i % x.c;
                gamma(theta.d[c], tau) * (x.d[i] - mean.d[c]) / (var.d[c] + BN_EPS as f64).sqrt()
            })
            .collect(),
    )
}

#[test]
fn forward_backward_and_running_statistics() {
    let (b, n, tau) = (37, 5, 0.3);
    let x = Mat::rand(b, n, -2.0, 3.0, 1);
    let theta = Mat::rand(1, n, -1.0, 1.0, 2);
    let up = Mat::rand(b, n, -1.0, 1.0, 3);
    let running = BnRunning::new(gpu(), n).unwrap();
    let mut tape = Tape::new(gpu());
    let (vx, vt) = (tape.leaf(x.upload(), true), tape.leaf(theta.upload(), true));
    let y = scaled_batch_norm(&mut tape, vx, vt, tau as f32, &running, true).unwrap();
    let yv = tape.value(y).clone();
    let w = tape.input(up.upload());
    let yw = ops::mul(&mut tape, y, w).unwrap();
    let l = ops::sum(&mut tape, yw).unwrap();
    tape.backward(l).unwrap();
    tape.submit().unwrap();
    assert_close(&download(&yv), &bn_ref(&x, &theta, tau), 1e-5, 1e-5, "BN forward");
    let fd_x = fd_grad(&x, 1e-6, |xx| bn_ref(xx, &theta, tau).dot(&up));
    let fd_t = fd_grad(&theta, 1e-6, |tt| bn_ref(&x, tt, tau).dot(&up));
    assert_close(&download(tape.grad(vx).unwrap()), &fd_x, 1e-4, 1e-3, "BN d x");
    assert_close(&download(tape.grad(vt).unwrap()), &fd_t, 1e-4, 1e-3, "BN d theta");

    // Running statistics after one batch: 0.9*init + 0.1*batch (unbiased variance).
    let mean = col_sum(&x).map(|s| s / b as f64);
    let var: Vec<f64> =
        (0..n).map(|c| (0..b).map(|r| (x.at(r, c) - mean.d[c]).powi(2)).sum::<f64>() / (b as f64 - 1.0)).collect();
    assert_close(&download(&running.mean), &mean.map(|m| 0.1 * m), 1e-6, 1e-5, "running mean");
    assert_close(
        &download(&running.var),
        &Mat::new(1, n, var.iter().map(|v| 0.9 + 0.1 * v).collect()),
        1e-6,
        1e-5,
        "running var",
    );

    // Evaluation mode normalises with the running statistics.
    let mut tape = Tape::no_grad(gpu());
    let (vx, vt) = (tape.input(x.upload()), tape.input(theta.upload()));
    let y = scaled_batch_norm(&mut tape, vx, vt, tau as f32, &running, false).unwrap();
    let yv = tape.value(y).clone();
    tape.submit().unwrap();
    let (rm, rv) = (download(&running.mean), download(&running.var));
    let want = Mat::new(
        b,
        n,
        (0..b * n)
            .map(|i| {
                let c = i % n;
                gamma(theta.d[c], tau) * (x.d[i] - rm.d[c]) / (rv.d[c] + BN_EPS as f64).sqrt()
            })
            .collect(),
    );
    assert_close(&download(&yv), &want, 1e-5, 1e-5, "BN evaluation mode");
}

#[test]
fn bad_tau_and_batch_are_refused() {
    let running = BnRunning::new(gpu(), 3).unwrap();
    let mut tape = Tape::new(gpu());
    let x = tape.leaf(Mat::rand(4, 3, 0.0, 1.0, 1).upload(), true);
    let t = tape.leaf(Mat::zeros(1, 3).upload(), true);
    assert!(scaled_batch_norm(&mut tape, x, t, 1.5, &running, true).is_err());
    assert!(scaled_batch_norm(&mut tape, x, t, -0.1, &running, true).is_err());
    let one = tape.leaf(Mat::rand(1, 3, 0.0, 1.0, 1).upload(), true);
    assert!(scaled_batch_norm(&mut tape, one, t, 0.5, &running, true).is_err(), "one row has no batch statistics");
}

/// f64 reference of the BN-VAE's evaluation-mode posterior mean: the encoder (ReLU hidden layer),
/// fc_mu, then γ(θ)·(mu − running mean)/√(running var + ε).
fn bn_vae_eval_mu(vae: &wgvae::vae::Vae, x: &Mat, theta: &[f64], rmean: &[f64], rvar: &[f64], tau: f64) -> Mat {
    let p = vae_params(vae);
    let h = add_row(&matmul(x, &p[0], false, true), &p[1]).map(|v| v.max(0.0));
    let mu = add_row(&matmul(&h, &p[2], false, true), &p[3]);
    Mat::new(
        mu.r,
        mu.c,
        (0..mu.r * mu.c)
            .map(|i| {
                let c = i % mu.c;
                gamma(theta[c], tau) * (mu.d[i] - rmean[c]) / (rvar[c] + BN_EPS as f64).sqrt()
            })
            .collect(),
    )
}

#[test]
fn bn_vae_evaluation_uses_running_statistics_leaves_them_and_ignores_the_batch() {
    use wgvae::vae::{Likelihood, ModelKind, Vae, VaeConfig};
    let g = gpu();
    let tau = 0.4;
    let cfg = VaeConfig {
        model: ModelKind::Vae,
        input_dim: 12,
        hidden: vec![6],
        latent: 3,
        activation: wgvae::ops::Act::Relu,
        likelihood: Likelihood::Bernoulli,
        bn_tau: Some(tau as f32),
        classes: 0,
        conv: None,
    };
    let vae = Vae::new(g, cfg, 5).unwrap();
    let bn = vae.bn.as_ref().unwrap();
    // Running statistics far from any batch's own (so batch statistics would give other means).
    let (rmean, rvar, theta) = ([0.7f32, -1.3, 0.2], [2.5f32, 0.3, 4.0], [0.5f32, -0.8, 1.2]);
    bn.running.mean.write(g, &rmean).unwrap();
    bn.running.var.write(g, &rvar).unwrap();
    bn.theta.value().write(g, &theta).unwrap();
    let f64s = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    let x = Mat::rand(9, 12, 0.0, 1.0, 7);
    let want = bn_vae_eval_mu(&vae, &x, &f64s(&theta), &f64s(&rmean), &f64s(&rvar), tau);

    let (mu, _) = vae.encode(g, &x.upload()).unwrap();
    assert_close(&download(&mu), &want, 1e-5, 1e-5, "BN-VAE evaluation mean vs f64 with running statistics");
    // Each example's mean whatever batch surrounds it: alone, and among other examples.
    for i in [0, 4, 8] {
        let alone = Mat::new(1, 12, x.d[i * 12..(i + 1) * 12].to_vec());
        let (m1, _) = vae.encode(g, &alone.upload()).unwrap();
        let others = Mat::rand(5, 12, 0.0, 1.0, 30 + i as u64);
        let mut mixed = others.d[..24].to_vec();
        mixed.extend_from_slice(&alone.d);
        mixed.extend_from_slice(&others.d[24..]);
        let (m2, _) = vae.encode(g, &Mat::new(6, 12, mixed).upload()).unwrap();
        let row = Mat::new(1, 3, want.d[i * 3..(i + 1) * 3].to_vec());
        assert_close(&download(&m1), &row, 1e-5, 1e-5, &format!("example {i} encoded alone"));
        assert_close(
            &Mat::new(1, 3, download(&m2).d[6..9].to_vec()),
            &row,
            1e-5,
            1e-5,
            &format!("example {i} in another batch"),
        );
    }
    // Evaluation (encode, the trainer's evaluation) leaves the running statistics as they were.
    let imgs = wgvae::data::Images::from_f32(x.f32s(), 9, &[3, 4]).unwrap();
    let gi = wgvae::data::gpu::GpuImages::upload(g, &imgs).unwrap();
    wgvae::train::evaluate_full(g, &vae, &gi, 4, 1).unwrap();
    assert_eq!(bn.running.mean.to_vec(g).unwrap(), rmean, "running mean untouched by evaluation");
    assert_eq!(bn.running.var.to_vec(g).unwrap(), rvar, "running variance untouched by evaluation");
}
