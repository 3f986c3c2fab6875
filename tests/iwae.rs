//! The importance-weighted log-likelihood estimate (`wgvae::vae::iwae`): per-example values against
//! an f64 CPU reference with the same Philox eps (Bernoulli and Gaussian, one chunk and many),
//! IWAE(1) against the ELBO, the bound tightening with K on a VAE trained on sprites, and the
//! argument errors.

mod common;
use std::sync::OnceLock;

use common::*;
use wgvae::data::gpu::GpuImages;
use wgvae::data::{sprites, Images};
use wgvae::eval::iwae_log_likelihood;
use wgvae::ops::Act;
use wgvae::train::{evaluate, TrainOptions, Trainer};
use wgvae::vae::iwae::{iwae_batch, iwae_batch_chunked, IwaeResult, STREAM_IWAE};
use wgvae::vae::{Likelihood, ModelKind, Vae, VaeConfig};
use wgvae::{rng, Error, Tensor};

const LN_2PI: f64 = 1.837_877_066_409_345_5;

fn tiny(model: ModelKind, likelihood: Likelihood) -> VaeConfig {
    VaeConfig {
        model,
        input_dim: 11,
        hidden: vec![6],
        latent: 3,
        activation: Act::Relu,
        likelihood,
        ..VaeConfig::classic()
    }
}

fn lin(x: &[f64], w: &Mat, b: &Mat, relu: bool) -> Vec<f64> {
    (0..w.r)
        .map(|o| {
            let v = b.d[o] + (0..w.c).map(|i| w.at(o, i) * x[i]).sum::<f64>();
            if relu {
                v.max(0.0)
            } else {
                v
            }
        })
        .collect()
}

/// The IWAE estimate of every row of `x` in f64 for the 1-hidden-layer ReLU VAE with parameters
/// `p` (encoder.0, fc_mu, fc_logvar, decoder.0, decoder.1; weight then bias), eps as documented in
/// `wgvae::vae::iwae`.
fn reference(p: &[Mat], x: &Mat, like: Likelihood, k: usize, seed: u64, step: u32) -> Vec<f64> {
    let zd = p[2].r;
    let eps = rng::normals(x.r * k * zd, seed, step, STREAM_IWAE);
    (0..x.r)
        .map(|b| {
            let xb = &x.d[b * x.c..(b + 1) * x.c];
            let h = lin(xb, &p[0], &p[1], true);
            let mu = lin(&h, &p[2], &p[3], false);
            let lv = lin(&h, &p[4], &p[5], false);
            let lw: Vec<f64> = (0..k)
                .map(|s| {
                    let e = &eps[(b * k + s) * zd..(b * k + s + 1) * zd];
                    let z: Vec<f64> = (0..zd).map(|j| mu[j] + (0.5 * lv[j]).exp() * e[j]).collect();
                    let out = lin(&lin(&z, &p[6], &p[7], true), &p[8], &p[9], false);
                    let log_px: f64 = out
                        .iter()
                        .zip(xb)
                        .map(|(&o, &t)| match like {
                            Likelihood::Bernoulli => -(o.max(0.0) - o * t + (-o.abs()).exp().ln_1p()),
                            Likelihood::Gaussian { variance } => {
                                let v = variance as f64;
                                -((o - t) * (o - t) / (2.0 * v) + 0.5 * (LN_2PI + v.ln()))
                            }
                            Likelihood::GaussianLearned => unreachable!("not among the reference cases"),
                        })
                        .sum();
                    let log_pz: f64 = z.iter().map(|z| -0.5 * z * z - 0.5 * LN_2PI).sum();
                    let log_q: f64 = (0..zd).map(|j| -0.5 * e[j] * e[j] - 0.5 * lv[j] - 0.5 * LN_2PI).sum();
                    log_px + log_pz - log_q
                })
                .collect();
            let m = lw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + lw.iter().map(|v| (v - m).exp()).sum::<f64>().ln() - (k as f64).ln()
        })
        .collect()
}

#[test]
fn matches_f64_reference_for_k_1_7_130_5000() {
    let g = gpu();
    for (i, like) in [Likelihood::Bernoulli, Likelihood::Gaussian { variance: 0.5 }].into_iter().enumerate() {
        let vae = Vae::new(g, tiny(ModelKind::Vae, like), 3 + i as u64).unwrap();
        let p: Vec<Mat> = vae_params(&vae);
        let x = Mat::rand(5, 11, 0.0, 1.0, 8);
        let xt = x.upload();
        for (k, seed, step) in [(1, 11u64, 0u32), (7, 12, 3), (130, 13, 5), (5000, 14, 9)] {
            let want = reference(&p, &x, like, k, seed, step);
            let want = Mat::new(5, 1, want);
            let got = Mat::new(5, 1, iwae_batch(g, &vae, &xt, k, seed, step).unwrap());
            assert_close(&got, &want, 2e-4, 2e-5, &format!("{like:?}, K = {k}"));
            if k > 1000 {
                continue;
            }
            // Many chunks (4 samples per example, the last chunk partial) give the same estimate.
            let chunked = Mat::new(5, 1, iwae_batch_chunked(g, &vae, &xt, k, seed, step, 20).unwrap());
            assert_close(&chunked, &want, 2e-4, 2e-5, &format!("{like:?}, K = {k}, chunks of 4 samples"));
        }
    }
}

#[test]
fn log_weights_far_below_zero_stay_finite_and_match_f64() {
    // 401 Bernoulli pixels: every log-weight is about −280 nats, where exp() underflows to 0 in
    // f32, so only a logsumexp that subtracts the running maximum stays finite and exact.
    let g = gpu();
    let cfg = VaeConfig { input_dim: 401, ..tiny(ModelKind::Vae, Likelihood::Bernoulli) };
    let vae = Vae::new(g, cfg, 17).unwrap();
    let p: Vec<Mat> = vae_params(&vae);
    let x = Mat::rand(3, 401, 0.0, 1.0, 18).map(|v| (v > 0.5) as u8 as f64);
    for (k, seed, step) in [(1, 21u64, 0u32), (40, 22, 1), (300, 23, 2)] {
        let want = Mat::new(3, 1, reference(&p, &x, Likelihood::Bernoulli, k, seed, step));
        assert!(want.d.iter().all(|&v| v < -200.0), "the case is meant to be far below zero: {want:?}");
        let got = Mat::new(3, 1, iwae_batch(g, &vae, &x.upload(), k, seed, step).unwrap());
        assert_close(&got, &want, 2e-3, 2e-5, &format!("log-weights near -280, K = {k}"));
        let chunked = Mat::new(3, 1, iwae_batch_chunked(g, &vae, &x.upload(), k, seed, step, 30).unwrap());
        assert_close(&chunked, &want, 2e-3, 2e-5, &format!("log-weights near -280, K = {k}, chunked"));
    }
}

/// A VAE (hidden [64], latent 6) trained one epoch on sprites, its test split, and the first 48
/// test images.
struct Trained {
    vae: Vae,
    test: GpuImages,
    test_x: Tensor,
    subset: GpuImages,
}

fn subset(imgs: &Images, n: usize) -> Images {
    imgs.head(n)
}

fn trained() -> &'static Trained {
    static T: OnceLock<Trained> = OnceLock::new();
    T.get_or_init(|| {
        let g = gpu();
        let split = sprites::sprites(0);
        let cfg = VaeConfig {
            model: ModelKind::Vae,
            input_dim: 784,
            hidden: vec![64],
            latent: 6,
            activation: Act::Relu,
            likelihood: Likelihood::Bernoulli,
            ..VaeConfig::classic()
        };
        let opts = TrainOptions {
            batch: 128,
            lr: 2e-3,
            seed: 5,
            objective: Default::default(),
            binarize: false,
            log_every: 100,
            steps_per_submit: 1,
        };
        let mut t = Trainer::new(g, cfg, opts, &split).unwrap();
        t.train_epoch(&mut |_| {}).unwrap();
        let px: Vec<f32> = split.test.examples(split.test.n());
        let test_x = Tensor::from_slice(g, split.test.n(), 784, &px).unwrap();
        let subset = GpuImages::upload(g, &subset(&split.test, 48)).unwrap();
        Trained { vae: t.vae, test: t.test, test_x, subset }
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Standard deviation of the per-example differences of two estimates.
fn sd_diff(a: &[f64], b: &[f64]) -> f64 {
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let m = mean(&d);
    (d.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (d.len() - 1) as f64).sqrt()
}

#[test]
fn k1_is_an_unbiased_elbo_estimate() {
    let (g, t) = (gpu(), trained());
    let n = t.test.n;
    // IWAE(1) with two seeds: their per-example differences measure the sampling noise.
    let a = iwae_batch(g, &t.vae, &t.test_x, 1, 21, 0).unwrap();
    let b = iwae_batch(g, &t.vae, &t.test_x, 1, 22, 0).unwrap();
    let sd = sd_diff(&a, &b);
    let iwae1 = 0.5 * (mean(&a) + mean(&b));
    // iwae_log_likelihood takes the whole split as one batch (step 0) at K = 1.
    let r = iwae_log_likelihood(g, &t.vae, &t.test, 1, 21).unwrap();
    assert_eq!((r.k, r.examples), (1, n));
    assert!((r.log_likelihood - mean(&a)).abs() < 1e-3, "{} vs {}", r.log_likelihood, mean(&a));
    let elbo = -(0..4).map(|s| evaluate(g, &t.vae, &t.test, 256, 30 + s).unwrap().loss).sum::<f64>() / 4.0;
    let tol = 4.0 * sd / (n as f64).sqrt();
    eprintln!("IWAE(1) {iwae1:.4}, ELBO {elbo:.4}, tolerance {tol:.4} (sd of seed differences {sd:.3})");
    assert!((iwae1 - elbo).abs() <= tol, "IWAE(1) = {iwae1} nats but the ELBO is {elbo} (tolerance {tol})");
}

#[test]
fn bound_tightens_with_k() {
    let (g, t) = (gpu(), trained());
    let est = |k| -> IwaeResult { iwae_log_likelihood(g, &t.vae, &t.subset, k, 7).unwrap() };
    let (l1, l50, l500) = (est(1).log_likelihood, est(50).log_likelihood, est(500));
    assert_eq!((l500.k, l500.examples), (500, 48));
    let l500 = l500.log_likelihood;
    let elbo = -(0..4).map(|s| evaluate(g, &t.vae, &t.subset, 48, 40 + s).unwrap().loss).sum::<f64>() / 4.0;
    let px = t.test_x.to_vec(g).unwrap();
    let rows = |r0: usize, r1: usize| Tensor::from_slice(g, r1 - r0, 784, &px[r0 * 784..r1 * 784]).unwrap();
    let (x32, x16, x48) = (rows(0, 32), rows(32, 48), rows(0, 48));
    // At K = 1 the 48 images are one batch (step 0); at K = 50 batches of 32 (steps 0 and 1).
    let a1 = iwae_batch(g, &t.vae, &x48, 1, 7, 0).unwrap();
    let mut a50 = iwae_batch(g, &t.vae, &x32, 50, 7, 0).unwrap();
    a50.extend(iwae_batch(g, &t.vae, &x16, 50, 7, 1).unwrap());
    assert!((mean(&a1) - l1).abs() < 1e-3, "{} vs {l1}", mean(&a1));
    assert!((mean(&a50) - l50).abs() < 1e-3, "{} vs {l50}", mean(&a50));
    // Sampling noise of the means: the spread of the per-example differences to a second seed
    // (√2 times the standard error of one mean).
    let noise = |a: &[f64], k| sd_diff(a, &iwae_batch(g, &t.vae, &x48, k, 8, 0).unwrap()) / 48f64.sqrt();
    let (n1, n50) = (noise(&a1, 1), noise(&a50, 50));
    eprintln!("ELBO {elbo:.3}, IWAE(1) {l1:.3}, IWAE(50) {l50:.3}, IWAE(500) {l500:.3}; noise {n1:.3} (K = 1), {n50:.3} (K = 50)");
    for (k, l) in [(1, l1), (50, l50), (500, l500)] {
        assert!(l.is_finite() && l < 0.0, "IWAE({k}) = {l}");
    }
    // IWAE(K) >= ELBO, and it increases with K, within the sampling noise.
    assert!(l50 >= elbo - 3.0 * n1 && l500 >= elbo - 3.0 * n1, "ELBO {elbo}, IWAE(50) {l50}, IWAE(500) {l500}");
    assert!(l50 >= l1 - 3.0 * n1, "IWAE(1) {l1} > IWAE(50) {l50} (noise {n1})");
    assert!(l500 >= l50 - 3.0 * n50, "IWAE(50) {l50} > IWAE(500) {l500} (noise {n50})");
    // ... and the tightening from K = 1 to K = 500 is well beyond the noise.
    assert!(l500 - l1 > 3.0 * n1, "IWAE(1) {l1}, IWAE(500) {l500}: no clear tightening (noise {n1})");
}

#[test]
fn invalid_k_and_the_autoencoder_are_errors() {
    let g = gpu();
    let vae = Vae::new(g, tiny(ModelKind::Vae, Likelihood::Bernoulli), 1).unwrap();
    let x = Mat::rand(2, 11, 0.0, 1.0, 1).upload();
    let blank = Images::from_u8(vec![0; 22], 2, &[11]).unwrap();
    let imgs = GpuImages::upload(g, &blank).unwrap();
    for k in [0, 5001] {
        let e = iwae_batch(g, &vae, &x, k, 0, 0).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument { name, .. } if name == "iwae_k"), "K = {k}: {e}");
        assert!(e.to_string().contains("1..=5000"), "{e}");
        assert!(matches!(iwae_log_likelihood(g, &vae, &imgs, k, 0), Err(Error::InvalidArgument { .. })));
    }
    assert!(iwae_batch(g, &vae, &x, 5000, 0, 0).is_ok());
    let ae = Vae::new(g, tiny(ModelKind::Ae, Likelihood::Bernoulli), 1).unwrap();
    let e = iwae_batch(g, &ae, &x, 10, 0, 0).unwrap_err();
    assert!(matches!(&e, Error::InvalidArgument { .. }), "{e}");
    assert!(e.to_string().contains("q(z|x)"), "{e}");
    // The wrong input width is a shape error.
    let wide = Mat::rand(2, 12, 0.0, 1.0, 1).upload();
    assert!(matches!(iwae_batch(g, &vae, &wide, 1, 0, 0), Err(Error::Shape { .. })));
}
