//! Per-channel batch normalization of conv layers (`shaders/batchnorm2d.wgsl`, PyTorch's
//! BatchNorm2d with the activation fused) against the f64 reference: forward with batch
//! statistics at odd sizes (batch 3, 5 channels of 13x11), the backward rule for x, γ and β checked
//! by f64 finite differences first and the GPU against it, with and without a fused LeakyReLU;
//! running statistics after a step; evaluation with the running statistics; a channel of 16,384
//! values (64 per invocation); and bad shapes as errors.

mod common;
use common::*;
use wgvae::ops::batchnorm::{batch_norm2d, BnRunning, BN_EPS};
use wgvae::ops::Act;
use wgvae::{Error, Tape};

/// Per-channel (mean, biased variance) of x \[B, C·HW\].
fn channel_stats(x: &Mat, c: usize) -> Vec<(f64, f64)> {
    let hw = x.c / c;
    (0..c)
        .map(|ch| {
            let vals: Vec<f64> =
                (0..x.r).flat_map(|b| (0..hw).map(move |i| (b, ch * hw + i))).map(|(b, j)| x.at(b, j)).collect();
            let n = vals.len() as f64;
            let m = vals.iter().sum::<f64>() / n;
            (m, vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n)
        })
        .collect()
}

/// y = act(γ x̂ + β) with the given statistics, and x̂.
fn bn2d_with(x: &Mat, g: &Mat, b: &Mat, stats: &[(f64, f64)], act: Act) -> (Mat, Mat) {
    let hw = x.c / g.c;
    let xhat = Mat::new(
        x.r,
        x.c,
        (0..x.r * x.c)
            .map(|i| {
                let (m, v) = stats[(i % x.c) / hw];
                (x.d[i] - m) / (v + BN_EPS as f64).sqrt()
            })
            .collect(),
    );
    let y = Mat::new(
        x.r,
        x.c,
        (0..x.r * x.c).map(|i| act_fwd(act, g.d[(i % x.c) / hw] * xhat.d[i] + b.d[(i % x.c) / hw])).collect(),
    );
    (y, xhat)
}

fn bn2d_ref(x: &Mat, g: &Mat, b: &Mat, act: Act) -> Mat {
    bn2d_with(x, g, b, &channel_stats(x, g.c), act).0
}

/// The analytic backward rule of Σ up ⊙ bn2d(x, γ, β): (dx, dγ, dβ).
fn bn2d_grads_ref(x: &Mat, g: &Mat, b: &Mat, act: Act, up: &Mat) -> Vec<Mat> {
    let c = g.c;
    let hw = x.c / c;
    let stats = channel_stats(x, c);
    let (_, xhat) = bn2d_with(x, g, b, &stats, act);
    let ch = |i: usize| (i % x.c) / hw;
    let gr: Vec<f64> = (0..x.r * x.c).map(|i| up.d[i] * act_grad(act, g.d[ch(i)] * xhat.d[i] + b.d[ch(i)])).collect();
    let (mut db, mut dg) = (vec![0.0; c], vec![0.0; c]);
    for i in 0..x.r * x.c {
        db[ch(i)] += gr[i];
        dg[ch(i)] += gr[i] * xhat.d[i];
    }
    let n = (x.r * hw) as f64;
    let dx = (0..x.r * x.c)
        .map(|i| {
            let k = ch(i);
            g.d[k] / (stats[k].1 + BN_EPS as f64).sqrt() * (gr[i] - db[k] / n - xhat.d[i] * dg[k] / n)
        })
        .collect();
    vec![Mat::new(x.r, x.c, dx), Mat::new(1, c, dg), Mat::new(1, c, db)]
}

#[test]
fn forward_backward_running_and_eval_at_odd_sizes() {
    let (batch, c, hw) = (3, 5, 13 * 11);
    for (k, act) in [Act::Identity, Act::LeakyRelu(0.2)].into_iter().enumerate() {
        let x = Mat::rand(batch, c * hw, -2.0, 3.0, 10 + k as u64);
        let g = Mat::rand(1, c, 0.5, 1.5, 20 + k as u64);
        let b = Mat::rand(1, c, -0.5, 0.5, 30 + k as u64);
        let up = Mat::rand(batch, c * hw, -1.0, 1.0, 40 + k as u64);
        let running = BnRunning::new(gpu(), c).unwrap();
        let mut tape = Tape::new(gpu());
        let v: Vec<_> = [&x, &g, &b].iter().map(|m| tape.leaf(m.upload(), true)).collect();
        let yvar = batch_norm2d(&mut tape, v[0], v[1], v[2], c, &running, true, act).unwrap();
        let yv = tape.value(yvar).clone();
        let w = tape.input(up.upload());
        let yw = wgvae::ops::mul(&mut tape, yvar, w).unwrap();
        let l = wgvae::ops::sum(&mut tape, yw).unwrap();
        tape.backward(l).unwrap();
        tape.submit().unwrap();
        for k in ["bn2d_stats", "bn2d_forward", "bn2d_backward_sums", "bn2d_backward_dx"] {
            assert_ran(&tape, k, "training batch norm");
        }
        let y = download(&yv);
        let got: Vec<Mat> = v.iter().map(|v| download(tape.grad(*v).unwrap())).collect();
        assert_close(&y, &bn2d_ref(&x, &g, &b, act), 1e-5, 1e-5, &format!("bn2d forward ({act})"));
        check_rule(
            &format!("bn2d ({act})"),
            &[&x, &g, &b],
            &up,
            |m| bn2d_ref(&m[0], &m[1], &m[2], act),
            &bn2d_grads_ref(&x, &g, &b, act, &up),
            &got,
            2e-4,
        );

        // Running statistics after the one training batch: 0.9·(0, 1) + 0.1·(mean, unbiased var).
        let n = (batch * hw) as f64;
        let stats = channel_stats(&x, c);
        let rm = Mat::new(1, c, stats.iter().map(|s| 0.1 * s.0).collect());
        let rv = Mat::new(1, c, stats.iter().map(|s| 0.9 + 0.1 * s.1 * n / (n - 1.0)).collect());
        assert_close(&download(&running.mean), &rm, 1e-6, 1e-5, "running mean");
        assert_close(&download(&running.var), &rv, 1e-6, 1e-5, "running var");

        // Evaluation normalises with the running statistics and leaves them alone.
        let mut tape = Tape::no_grad(gpu());
        let (vx, vg, vb) = (tape.input(x.upload()), tape.input(g.upload()), tape.input(b.upload()));
        let y = batch_norm2d(&mut tape, vx, vg, vb, c, &running, false, act).unwrap();
        let yv = tape.value(y).clone();
        tape.submit().unwrap();
        assert_ran(&tape, "bn2d_eval_stats", "evaluation batch norm");
        let run_stats: Vec<(f64, f64)> = (0..c).map(|i| (rm.d[i], rv.d[i])).collect();
        assert_close(&download(&yv), &bn2d_with(&x, &g, &b, &run_stats, act).0, 1e-5, 1e-5, "bn2d eval");
        assert_close(&download(&running.mean), &rm, 1e-6, 1e-5, "running mean after eval");
    }
}

#[test]
fn long_channels_reduce_in_fixed_order() {
    // 16,384 values per channel: every invocation of the 256 walks 64 of them.
    let (batch, c, hw) = (4, 2, 64 * 64);
    let x = Mat::rand(batch, c * hw, 1.0, 5.0, 7);
    let g = Mat::rand(1, c, 0.5, 1.5, 8);
    let b = Mat::rand(1, c, -0.5, 0.5, 9);
    let running = BnRunning::new(gpu(), c).unwrap();
    let run = || {
        let mut tape = Tape::new(gpu());
        let (vx, vg, vb) = (tape.input(x.upload()), tape.input(g.upload()), tape.input(b.upload()));
        let y = batch_norm2d(&mut tape, vx, vg, vb, c, &running, true, Act::Relu).unwrap();
        let yv = tape.value(y).clone();
        tape.submit().unwrap();
        download(&yv)
    };
    let first = run();
    assert_close(&first, &bn2d_ref(&x, &g, &b, Act::Relu), 1e-5, 1e-4, "bn2d forward, long channels");
    assert_eq!(first.d, run().d, "the same batch twice gives the same bits");
}

#[test]
fn bad_shapes_are_errors() {
    let running = BnRunning::new(gpu(), 3).unwrap();
    let mut tape = Tape::new(gpu());
    let x = tape.input(Mat::rand(2, 10, 0.0, 1.0, 1).upload());
    let g = tape.input(Mat::rand(1, 3, 0.0, 1.0, 2).upload());
    let b = tape.input(Mat::rand(1, 3, 0.0, 1.0, 3).upload());
    // 10 values per row are not 3 equal channels.
    let e = batch_norm2d(&mut tape, x, g, b, 3, &running, true, Act::Identity).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");
    // One value per channel has no batch variance.
    let x1 = tape.input(Mat::rand(1, 3, 0.0, 1.0, 4).upload());
    let e = batch_norm2d(&mut tape, x1, g, b, 3, &running, true, Act::Identity).unwrap_err();
    assert!(e.to_string().contains("values per channel"), "{e}");
    // γ of the wrong length.
    let x2 = tape.input(Mat::rand(2, 12, 0.0, 1.0, 5).upload());
    let g4 = tape.input(Mat::rand(1, 4, 0.0, 1.0, 6).upload());
    let e = batch_norm2d(&mut tape, x2, g4, b, 3, &running, true, Act::Identity).unwrap_err();
    assert!(e.to_string().contains("gamma"), "{e}");
}
