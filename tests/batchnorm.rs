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
