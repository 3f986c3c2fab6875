//! The fused VAE kernels (`shaders/vae_fused.wgsl`) against the f64 reference, each backward rule's
//! reference first checked by finite differences: the latent step (eps from Philox inside the
//! kernel, z, KL per example, and the gradient added to the one the head already has), the fused
//! objective for both likelihoods (values, sums, the accumulators, the gradient when the loss is
//! the root of backward and when it is scaled by an upstream gradient), the autoencoder's
//! KL-free objective, and column slicing. Sizes are not multiples of any workgroup (64, 256) or of
//! the 16-pixel chunks of the reconstruction kernel.

mod common;
use common::*;
use wgvae::ops::vae::{fused_objective, latent, slice_cols, FusedLikelihood, Noise};
use wgvae::ops::{self};
use wgvae::{rng, Tape, Tensor};

const SEED: u64 = 0x5EED_0FFA;

fn noise(step: u32) -> Noise {
    Noise { seed: SEED, step, stream: 0 }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// z and KL per example of h = [mu | logvar] with eps, in f64.
fn latent_ref(h: &Mat, z: usize, eps: &[f64]) -> (Mat, Mat) {
    let b = h.r;
    let mut zz = Mat::zeros(b, z);
    let mut kl = Mat::zeros(b, 1);
    for i in 0..b {
        for j in 0..z {
            let (mu, lv) = (h.at(i, j), h.at(i, z + j));
            zz.d[i * z + j] = mu + (0.5 * lv).exp() * eps[i * z + j];
            kl.d[i] += 0.5 * (mu * mu + lv.exp() - 1.0 - lv);
        }
    }
    (zz, kl)
}

#[test]
fn latent_forward_matches_reference_with_the_documented_eps() {
    for (b, z) in [(1, 1), (7, 3), (65, 20), (130, 33)] {
        let h = Mat::rand(b, 2 * z, -1.5, 1.5, 3);
        let mut tape = Tape::no_grad(gpu());
        let hv = tape.input(h.upload());
        let (zv, kl) = latent(&mut tape, hv, z, noise(4)).unwrap();
        let zt = tape.value(zv).clone();
        tape.submit().unwrap();
        let eps = rng::normals(b * z, SEED, 4, 0);
        let (zr, klr) = latent_ref(&h, z, &eps);
        assert_close(&download(&zt), &zr, 2e-5, 2e-5, &format!("latent z {b}x{z}"));
        assert_close(&download(&kl), &klr, 1e-5 * z as f64, 1e-5, &format!("latent KL {b}x{z}"));
    }
}

#[test]
fn latent_backward_adds_to_the_heads_gradient() {
    let (b, z) = (9, 5);
    let h = Mat::rand(b, 2 * z, -1.0, 1.0, 5);
    let up_z = Mat::rand(b, z, -1.0, 1.0, 6);
    let up_h = Mat::rand(b, 2 * z, -1.0, 1.0, 7);
    let eps = rng::normals(b * z, SEED, 2, 0);
    // L = Σ up_z ⊙ z(h) + Σ up_h ⊙ h: the second term gives h a gradient before the latent's.
    let f = |h: &Mat| latent_ref(h, z, &eps).0.dot(&up_z) + h.dot(&up_h);
    let mut want = up_h.clone();
    for i in 0..b {
        for j in 0..z {
            let g = up_z.at(i, j);
            want.d[i * 2 * z + j] += g;
            want.d[i * 2 * z + z + j] += g * 0.5 * (0.5 * h.at(i, z + j)).exp() * eps[i * z + j];
        }
    }
    assert_close(&want, &fd_grad(&h, 1e-6, f), 1e-6, 1e-6, "reference latent gradient vs finite differences");
    for with_prev in [false, true] {
        let mut tape = Tape::new(gpu());
        let hv = tape.leaf(h.upload(), true);
        let (zv, _) = latent(&mut tape, hv, z, noise(2)).unwrap();
        let uz = tape.input(up_z.upload());
        let a = ops::mul(&mut tape, zv, uz).unwrap();
        let mut l = ops::sum(&mut tape, a).unwrap();
        let mut want = want.clone();
        if with_prev {
            let uh = tape.input(up_h.upload());
            let c = ops::mul(&mut tape, hv, uh).unwrap();
            let c = ops::sum(&mut tape, c).unwrap();
            l = ops::add(&mut tape, l, c).unwrap();
        } else {
            want = want.zip(&up_h, |w, u| w - u);
        }
        tape.backward(l).unwrap();
        tape.submit().unwrap();
        assert_ran(&tape, "latent_backward", "latent backward");
        let what = format!("latent backward (head already has a gradient: {with_prev})");
        assert_close(&download(tape.grad(hv).unwrap()), &want, 1e-5, 1e-5, &what);
    }
}

/// (Σ nll, d Σ nll / d out) of the decoder output `x` against targets `t`, in f64.
fn recon_ref(x: &Mat, t: &Mat, like: FusedLikelihood) -> (f64, Mat) {
    match like {
        FusedLikelihood::Bernoulli => {
            (x.zip(t, |l, t| l.max(0.0) - l * t + (-l.abs()).exp().ln_1p()).sum(), x.zip(t, |l, t| sigmoid(l) - t))
        }
        FusedLikelihood::Gaussian(v) => {
            let v = v as f64;
            (
                x.zip(t, |m, t| (m - t).powi(2) / (2.0 * v) + 0.5 * (std::f64::consts::TAU * v).ln()).sum(),
                x.zip(t, |m, t| (m - t) / v),
            )
        }
    }
}

fn kl_ref(h: &Mat, z: usize) -> (f64, Mat) {
    let mut kl = 0.0;
    let mut d = Mat::zeros(h.r, 2 * z);
    for i in 0..h.r {
        for j in 0..z {
            let (mu, lv) = (h.at(i, j), h.at(i, z + j));
            kl += 0.5 * (mu * mu + lv.exp() - 1.0 - lv);
            d.d[i * 2 * z + j] = mu;
            d.d[i * 2 * z + z + j] = 0.5 * (lv.exp() - 1.0);
        }
    }
    (kl, d)
}

#[test]
fn fused_objective_values_sums_accumulators_and_gradients() {
    // D = 37 and 785: chunks of 16 with a partial last one; B = 3 and 70; Z = 21 with D = 19:
    // more KL gradient values (B·Z = 420) than reconstruction chunks (B·2 = 40), more than one
    // workgroup of 256: the grid must cover the former. D = 36 and 784 (multiples of 4) run
    // `recon_fused4`, with a partial last chunk of 4 at D = 36.
    for (like, (b, d, z)) in [
        (FusedLikelihood::Bernoulli, (3, 37, 2)),
        (FusedLikelihood::Bernoulli, (20, 19, 21)),
        (FusedLikelihood::Bernoulli, (70, 785, 20)),
        (FusedLikelihood::Bernoulli, (5, 36, 3)),
        (FusedLikelihood::Bernoulli, (70, 784, 20)),
        (FusedLikelihood::Gaussian(0.3), (3, 37, 2)),
        (FusedLikelihood::Gaussian(1.0), (70, 785, 20)),
        (FusedLikelihood::Gaussian(0.5), (5, 36, 3)),
    ] {
        let x = Mat::rand(b, d, -4.0, 4.0, 11);
        let t = Mat::rand(b, d, 0.0, 1.0, 12);
        let h = Mat::rand(b, 2 * z, -1.0, 1.0, 13);
        let (rs, ks) = (0.7f32, 1.9f32);
        let (rsum, drec) = recon_ref(&x, &t, like);
        let (ksum, dkl) = kl_ref(&h, z);
        // The reference gradients, against finite differences of the f64 objective.
        let obj = |x: &Mat, h: &Mat| rs as f64 * recon_ref(x, &t, like).0 + ks as f64 * kl_ref(h, z).0;
        if b < 10 {
            let fx = fd_grad(&x, 1e-6, |xi| obj(xi, &h));
            assert_close(&drec.map(|v| v * rs as f64), &fx, 1e-5, 1e-6, "reference recon gradient vs FD");
            let fh = fd_grad(&h, 1e-6, |hi| obj(&x, hi));
            assert_close(&dkl.map(|v| v * ks as f64), &fh, 1e-5, 1e-6, "reference KL gradient vs FD");
        }
        // Upstream 1 (the loss is the root: the gradient computed in the forward pass is used as is)
        // and 2.5 (the loss scaled after the fact: scaled by the upstream in backward).
        for upstream in [1.0, 2.5] {
            let mut tape = Tape::new(gpu());
            let xv = tape.leaf(x.upload(), true);
            let hv = tape.leaf(h.upload(), true);
            let mut tape_rows = Tape::no_grad(gpu());
            let hr = tape_rows.input(h.upload());
            let (_, kl_rows) = latent(&mut tape_rows, hr, z, noise(0)).unwrap();
            tape_rows.submit().unwrap();
            let acc_r = Tensor::from_slice(gpu(), 1, 1, &[10.0]).unwrap();
            let acc_k = Tensor::from_slice(gpu(), 1, 1, &[-3.0]).unwrap();
            let f =
                fused_objective(&mut tape, xv, &t.upload(), like, Some((hv, &kl_rows)), rs, ks, Some((&acc_r, &acc_k)))
                    .unwrap();
            let loss = if upstream == 1.0 { f.total } else { ops::scale(&mut tape, f.total, upstream as f32).unwrap() };
            tape.backward(loss).unwrap();
            tape.submit().unwrap();
            if upstream != 1.0 {
                assert_ran(&tape, "scale_by", "a scaled upstream multiplies the precomputed gradient");
                assert_ran(&tape, "kl_head_backward", "a scaled upstream computes the KL gradient in backward");
            } else {
                // The reconstruction's dispatch computed the KL gradient in the forward pass.
                let ran = tape.kernels_run();
                assert!(!ran.contains_key("kl_head_backward"), "upstream 1 needs no KL gradient pass: {ran:?}");
            }
            let what = format!("{like:?} {b}x{d}, Z = {z}, upstream {upstream}");
            assert_ran(&tape, if d % 4 == 0 { "recon_fused4" } else { "recon_fused" }, &what);
            let tol = |v: f64| 1e-6 * v.abs() + 1e-4;
            let got = |t: &Tensor| download(t).d[0];
            assert!((got(&f.recon) - rsum).abs() < tol(rsum), "{what}: recon {} vs {rsum}", got(&f.recon));
            assert!((got(&f.kl) - ksum).abs() < tol(ksum), "{what}: KL {} vs {ksum}", got(&f.kl));
            let total = rs as f64 * rsum + ks as f64 * ksum;
            let gt = download(tape.value(f.total)).d[0];
            assert!((gt - total).abs() < tol(total), "{what}: total {gt} vs {total}");
            assert!((got(&acc_r) - (10.0 + rsum)).abs() < tol(rsum), "{what}: recon accumulator");
            assert!((got(&acc_k) - (-3.0 + ksum)).abs() < tol(ksum), "{what}: KL accumulator");
            let s = upstream * rs as f64;
            assert_close(&download(tape.grad(xv).unwrap()), &drec.map(|v| v * s), 1e-5, 1e-5, &what);
            let s = upstream * ks as f64;
            assert_close(&download(tape.grad(hv).unwrap()), &dkl.map(|v| v * s), 1e-5, 1e-5, &what);
        }
    }
}

#[test]
fn fused_objective_without_kl_is_the_autoencoders() {
    let (b, d) = (5, 19);
    let x = Mat::rand(b, d, -3.0, 3.0, 21);
    let t = Mat::rand(b, d, 0.0, 1.0, 22);
    let mut tape = Tape::new(gpu());
    let xv = tape.leaf(x.upload(), true);
    let f = fused_objective(&mut tape, xv, &t.upload(), FusedLikelihood::Bernoulli, None, 2.0, 5.0, None).unwrap();
    tape.backward(f.total).unwrap();
    tape.submit().unwrap();
    let (rsum, drec) = recon_ref(&x, &t, FusedLikelihood::Bernoulli);
    assert!((download(&f.kl).d[0]).abs() == 0.0, "no KL term");
    assert!((download(tape.value(f.total)).d[0] - 2.0 * rsum).abs() < 1e-4);
    assert_close(&download(tape.grad(xv).unwrap()), &drec.map(|v| 2.0 * v), 1e-5, 1e-5, "autoencoder gradient");
}

#[test]
fn fused_objective_on_a_no_grad_tape_writes_no_gradient() {
    let (b, d) = (4, 33);
    let x = Mat::rand(b, d, -3.0, 3.0, 31);
    let t = Mat::rand(b, d, 0.0, 1.0, 32);
    let mut tape = Tape::no_grad(gpu());
    let xv = tape.input(x.upload());
    let f = fused_objective(&mut tape, xv, &t.upload(), FusedLikelihood::Bernoulli, None, 1.0, 1.0, None).unwrap();
    tape.submit().unwrap();
    assert!((download(&f.recon).d[0] - recon_ref(&x, &t, FusedLikelihood::Bernoulli).0).abs() < 1e-4);
}

#[test]
fn slice_cols_forward_and_backward() {
    let (b, n) = (11, 13);
    let x = Mat::rand(b, n, -1.0, 1.0, 41);
    for (start, len) in [(0, 5), (5, 8), (12, 1)] {
        let up = Mat::rand(b, len, -1.0, 1.0, 42);
        let mut tape = Tape::new(gpu());
        let xv = tape.leaf(x.upload(), true);
        let y = slice_cols(&mut tape, xv, start, len).unwrap();
        let u = tape.input(up.upload());
        let yu = ops::mul(&mut tape, y, u).unwrap();
        let l = ops::sum(&mut tape, yu).unwrap();
        tape.backward(l).unwrap();
        tape.submit().unwrap();
        let want = Mat::new(b, len, (0..b * len).map(|i| x.at(i / len, start + i % len)).collect());
        assert_close(&download(tape.value(y)), &want, 0.0, 0.0, "slice");
        let mut dx = Mat::zeros(b, n);
        for i in 0..b {
            for j in 0..len {
                dx.d[i * n + start + j] = up.at(i, j);
            }
        }
        assert_close(&download(tape.grad(xv).unwrap()), &dx, 0.0, 0.0, "slice gradient");
    }
    let mut tape = Tape::new(gpu());
    let xv = tape.input(x.upload());
    assert!(slice_cols(&mut tape, xv, 10, 4).is_err(), "columns past the end are refused");
}
