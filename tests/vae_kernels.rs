//! The VAE kernels against the f64 CPU reference: random numbers (bit-exact uniforms, normals,
//! statistics), reparameterization, KL, Bernoulli and Gaussian terms (forward, and backward rules
//! checked by finite differences first), fused Adam/AdamW, and the GPU batch gather.

mod common;
use common::*;
use wgvae::data::gpu::GpuImages;
use wgvae::data::Images;
use wgvae::nn::{Adam, Param};
use wgvae::ops::vae::{self as vops, Noise};
use wgvae::ops::{self};
use wgvae::Optimizer;
use wgvae::{rng, Tape};

fn noise(step: u32, stream: u32) -> Noise {
    Noise { seed: 0xDEADBEEF12345, step, stream }
}

#[test]
fn uniforms_match_the_cpu_mirror_bit_for_bit() {
    let mut tape = Tape::no_grad(gpu());
    let u = vops::uniform(&mut tape, 37, 29, noise(3, 1)).unwrap();
    tape.submit().unwrap();
    let got = u.to_vec(gpu()).unwrap();
    let want = rng::uniforms(37 * 29, 0xDEADBEEF12345, 3, 1);
    assert_eq!(got, want);
}

#[test]
fn normals_match_the_cpu_mirror_and_have_the_right_statistics() {
    let (r, c) = (401, 251); // odd count: the last Box-Muller pair is half used
    let mut tape = Tape::no_grad(gpu());
    let a = vops::normal(&mut tape, r, c, noise(0, 0)).unwrap();
    let b = vops::normal(&mut tape, r, c, noise(1, 0)).unwrap();
    tape.submit().unwrap();
    let (ga, gb) = (download(&a), download(&b));
    let want = Mat::new(r, c, rng::normals(r * c, 0xDEADBEEF12345, 0, 0));
    assert_close(&ga, &want, 2e-5, 2e-5, "normals vs CPU mirror");
    let n = (r * c) as f64;
    let mean = ga.sum() / n;
    let var = ga.d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let lag1 = ga.d.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / n;
    let cross = ga.dot(&gb) / n;
    let kurt = ga.d.iter().map(|x| x.powi(4)).sum::<f64>() / n;
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!((var - 1.0).abs() < 0.015, "variance {var}");
    assert!(lag1.abs() < 0.01, "neighbours correlate: {lag1}");
    assert!(cross.abs() < 0.01, "steps 0 and 1 correlate: {cross}");
    assert!((kurt - 3.0).abs() < 0.1, "fourth moment {kurt} (normal: 3)");
}

#[test]
fn kl_forward_and_backward() {
    let (b, z) = (7, 13);
    let mu = Mat::rand(b, z, -2.0, 2.0, 1);
    let lv = Mat::rand(b, z, -3.0, 2.0, 2);
    let up = Mat::rand(b, 1, -1.0, 1.0, 3);
    let (val, got) = gpu_grads(&[&mu, &lv], &up, |t, v| vops::kl_normal(t, v[0], v[1]));
    assert_close(&val, &kl_ref(&mu, &lv), 1e-5, 1e-5, "KL forward");
    let g = |r: usize| up.d[r];
    let dmu = Mat::new(b, z, (0..b * z).map(|i| g(i / z) * mu.d[i]).collect());
    let dlv = Mat::new(b, z, (0..b * z).map(|i| g(i / z) * 0.5 * (lv.d[i].exp() - 1.0)).collect());
    check_rule("KL", &[&mu, &lv], &up, |v| kl_ref(&v[0], &v[1]), &[dmu, dlv], &got, 1e-5);
}

#[test]
fn bce_with_logits_forward_backward_and_stability() {
    let (b, d) = (5, 785);
    let mut x = Mat::rand(b, d, -8.0, 8.0, 4);
    x.d[0] = 100.0; // naive log(sigmoid) overflows here
    x.d[1] = -100.0;
    let t = Mat::rand(b, d, 0.0, 1.0, 5);
    let up = Mat::rand(b, 1, -1.0, 1.0, 6);
    let (val, got) = gpu_grads(&[&x], &up, |tp, v| vops::bce_with_logits(tp, v[0], &t.upload()));
    assert_close(&val, &bce_ref(&x, &t), 2e-3, 1e-5, "BCE forward");
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let dx = Mat::new(b, d, (0..b * d).map(|i| up.d[i / d] * (sig(x.d[i]) - t.d[i])).collect());
    check_rule("BCE", &[&x], &up, |v| bce_ref(&v[0], &t), &[dx], &got, 1e-5);
}

#[test]
fn gaussian_nll_forward_and_backward() {
    let (b, d) = (6, 33);
    let x = Mat::rand(b, d, -1.0, 2.0, 7);
    let t = Mat::rand(b, d, 0.0, 1.0, 8);
    let up = Mat::rand(b, 1, -1.0, 1.0, 9);
    let var = 0.3;
    let f =
        |x: &Mat| row_sum(&x.zip(&t, |x, t| 0.5 * (x - t).powi(2) / var + 0.5 * (std::f64::consts::TAU * var).ln()));
    let (val, got) = gpu_grads(&[&x], &up, |tp, v| vops::gaussian_nll(tp, v[0], &t.upload(), var as f32));
    assert_close(&val, &f(&x), 1e-4, 1e-5, "Gaussian forward");
    let dx = Mat::new(b, d, (0..b * d).map(|i| up.d[i / d] * (x.d[i] - t.d[i]) / var).collect());
    check_rule("Gaussian", &[&x], &up, |v| f(&v[0]), &[dx], &got, 1e-5);
}

#[test]
fn reparameterize_forward_and_backward() {
    let (b, z) = (9, 7);
    let mu = Mat::rand(b, z, -1.0, 1.0, 10);
    let lv = Mat::rand(b, z, -2.0, 1.0, 11);
    let eps = Mat::new(b, z, rng::normals(b * z, 5, 2, 0).into_iter().map(|e| e as f32 as f64).collect());
    let up = Mat::rand(b, z, -1.0, 1.0, 12);
    let f = |v: &[Mat]| v[0].zip(&v[1].zip(&eps, |l, e| (0.5 * l).exp() * e), |m, s| m + s);
    let (val, got) = gpu_grads(&[&mu, &lv], &up, |t, v| vops::reparameterize(t, v[0], v[1], &eps.upload()));
    assert_close(&val, &f(&[mu.clone(), lv.clone()]), 1e-6, 1e-5, "reparameterization forward");
    let dlv = Mat::new(b, z, (0..b * z).map(|i| up.d[i] * 0.5 * (0.5 * lv.d[i]).exp() * eps.d[i]).collect());
    check_rule("reparameterization", &[&mu, &lv], &up, f, &[up.clone(), dlv], &got, 1e-6);
}

#[test]
fn adam_and_adamw_match_reference() {
    // 13x27 runs the scalar kernel; 12x21 (252 elements) the vec4 one under each storage-word
    // kind (its views as vec4<f32> or vec2<u64>); 12x20 (240) and 72x120 (two 1024-texel rows of an
    // operand texture and part of a third) the vec4 one with f32 words and the 8-wide one (views
    // as vec4<u64>) with u64 words. Same bytes and the same arithmetic, so the
    // parameters must agree to the bit across the kinds: that proves adam_step8 against adam_step4.
    // With u64 words and operand textures (lavapipe's defaults) the 8-wide update reads its inputs
    // from textures (adam_step8t); a device with buffer operands runs adam_step8 on the same cases.
    let mut first: Option<(String, Vec<Vec<f32>>)> = None;
    let mut devices: Vec<(&wgvae::Gpu, String)> =
        words_kinds().into_iter().map(|w| (gpu_words(w), format!("{w} words"))).collect();
    if words_kinds().contains(&wgvae::Words::U64) && gpu().words() == wgvae::Words::U64 {
        devices.push((gpu_operands(wgvae::Operands::Buffers), "u64 words, buffer operands".into()));
    }
    for (dev, what) in devices {
        let w = dev.words();
        let params = adam_against_reference(dev);
        assert_ran_named(dev, &format!("optim.wgsl+{w}:adam_step4"), &format!("Adam, {what}"));
        if w == wgvae::Words::U64 {
            let eight = match dev.operands() {
                wgvae::Operands::Textures => "optim.wgsl+u64+textures:adam_step8t",
                wgvae::Operands::Buffers => "optim.wgsl+u64:adam_step8",
            };
            assert_ran_named(dev, eight, &format!("Adam, {what}"));
        }
        match &first {
            Some((what0, want)) => assert!(
                params.iter().zip(want).all(|(x, y)| x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())),
                "Adam's parameters differ between {what0} and {what}"
            ),
            None => first = Some((what, params)),
        }
    }
}

/// Four Adam/AdamW steps on `g` against the f64 reference; the final parameters of each case.
fn adam_against_reference(dev: &wgvae::Gpu) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    let cases = [(13, 27), (12, 21), (12, 20), (72, 120)];
    for (decoupled, (r, c)) in cases.iter().flat_map(|&s| [(false, s), (true, s)]) {
        let p0 = Mat::rand(r, c, -1.0, 1.0, 20);
        let param = Param::new("w", p0.upload_to(dev));
        let mut opt = if decoupled { Adam::adamw(0.01, 0.1).unwrap() } else { Adam::new(0.01).unwrap() };
        if !decoupled {
            opt.weight_decay = 0.05;
        }
        let (b1, b2, eps, lr, wd) = (0.9f64, 0.999f64, 1e-8f64, 0.01f64, opt.weight_decay as f64);
        let (mut p, mut m, mut v) = (p0.clone(), Mat::zeros(r, c), Mat::zeros(r, c));
        for step in 1..=4 {
            let g = Mat::rand(r, c, -1.0, 1.0, 100 + step);
            // GPU: gradient of Σ g ⊙ w is g.
            let mut tape = Tape::new(dev);
            let w = param.var(&mut tape);
            let gv = tape.input(g.upload_to(dev));
            let y = ops::mul(&mut tape, w, gv).unwrap();
            let l = ops::sum(&mut tape, y).unwrap();
            tape.backward(l).unwrap();
            opt.step(&mut tape, &[&param]).unwrap();
            tape.submit().unwrap();
            let kernel = match (r * c) % 8 {
                0 if dev.words() == wgvae::Words::U64 && dev.operands() == wgvae::Operands::Textures => "adam_step8t",
                0 if dev.words() == wgvae::Words::U64 => "adam_step8",
                0 | 4 => "adam_step4",
                _ => "adam_step",
            };
            assert_ran(&tape, kernel, &format!("Adam on {r}x{c}"));
            // f64 reference.
            let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for i in 0..r * c {
                let mut gi = g.d[i];
                if decoupled {
                    p.d[i] -= lr * wd * p.d[i];
                } else {
                    gi += wd * p.d[i];
                }
                m.d[i] = b1 * m.d[i] + (1.0 - b1) * gi;
                v.d[i] = b2 * v.d[i] + (1.0 - b2) * gi * gi;
                p.d[i] -= lr * (m.d[i] / bc1) / ((v.d[i] / bc2).sqrt() + eps);
            }
            assert_close(
                &download(param.value()),
                &p,
                1e-5,
                1e-4,
                &format!("Adam (decoupled={decoupled}) step {step}, {} words", dev.words()),
            );
        }
        out.push(param.value().to_vec(dev).unwrap());
    }
    out
}

#[test]
fn gather_builds_batches_from_packed_bytes_with_optional_binarization() {
    // 35 bytes per image: words straddle images (one pixel per invocation); 28 bytes: whole words
    // per row (four pixels per invocation); 32 bytes: eight pixels per invocation through Word8
    // with u64 storage words (CPU adapters), four otherwise.
    let eight = if gpu().words() == wgvae::Words::U64 { "gather8" } else { "gather4" };
    for (h, w, kernel) in [(5, 7, "gather"), (4, 7, "gather4"), (4, 8, eight)] {
        let n = 11;
        let pixels: Vec<u8> = (0..n * h * w).map(|i| ((i * 37 + 11) % 256) as u8).collect();
        let imgs = Images::from_u8(pixels.clone(), n, &[h, w]).unwrap();
        let g = GpuImages::upload(gpu(), &imgs).unwrap();
        let (order, order_t) = g.order(gpu(), 9, 2, true).unwrap();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..n as u32).collect::<Vec<_>>(), "the order is a permutation");
        let (off, b) = (3, 6);
        let nz = Noise { seed: 77, step: 4, stream: 1 };
        let mut tape = Tape::no_grad(gpu());
        let x = g.batch(&mut tape, &order_t, off, b, None).unwrap();
        let xb = g.batch(&mut tape, &order_t, off, b, Some(nz)).unwrap();
        tape.submit().unwrap();
        assert_eq!(tape.kernels_run().get(kernel), Some(&2), "{h}x{w} images: {:?}", tape.kernels_run());
        let (x, xb) = (x.to_vec(gpu()).unwrap(), xb.to_vec(gpu()).unwrap());
        let u = rng::uniforms(b * h * w, 77, 4, 1);
        for r in 0..b {
            let img = order[off + r] as usize;
            for d in 0..h * w {
                let v = pixels[img * h * w + d] as f32 / 255.0;
                assert_eq!(x[r * h * w + d], v, "{h}x{w}: row {r} pixel {d}");
                let want = if u[r * h * w + d] < v { 1.0 } else { 0.0 };
                assert_eq!(xb[r * h * w + d], want, "{h}x{w}: binarized row {r} pixel {d}");
            }
        }
        let mut tape = Tape::no_grad(gpu());
        assert!(g.batch(&mut tape, &order_t, 8, 6, None).is_err(), "a batch past the end is an error");
    }
}

#[test]
fn gaussian_with_learned_variance_forward_and_backward() {
    let (b, d) = (7, 13);
    let x = Mat::rand(b, d, -1.0, 2.0, 30);
    let t = Mat::rand(b, d, 0.0, 1.0, 31);
    let lv = Mat::rand(1, d, -2.0, 1.0, 32);
    let up = Mat::rand(b, 1, -1.0, 1.0, 33);
    let f = |v: &[Mat]| {
        let (x, lv) = (&v[0], &v[1]);
        Mat::new(
            b,
            1,
            (0..b)
                .map(|r| {
                    (0..d)
                        .map(|c| {
                            let e = x.at(r, c) - t.at(r, c);
                            0.5 * e * e * (-lv.d[c]).exp() + 0.5 * lv.d[c] + 0.5 * std::f64::consts::TAU.ln()
                        })
                        .sum()
                })
                .collect(),
        )
    };
    let (val, got) = gpu_grads(&[&x, &lv], &up, |tp, v| vops::gaussian_nll_learned(tp, v[0], &t.upload(), v[1]));
    assert_close(&val, &f(&[x.clone(), lv.clone()]), 1e-4, 1e-5, "learned-variance Gaussian forward");
    let dx = Mat::new(b, d, (0..b * d).map(|i| up.d[i / d] * (x.d[i] - t.d[i]) * (-lv.d[i % d]).exp()).collect());
    let dlv = Mat::new(
        1,
        d,
        (0..d)
            .map(|c| (0..b).map(|r| up.d[r] * 0.5 * (1.0 - (x.at(r, c) - t.at(r, c)).powi(2) * (-lv.d[c]).exp())).sum())
            .collect(),
    );
    check_rule("learned-variance Gaussian", &[&x, &lv], &up, f, &[dx, dlv], &got, 1e-5);
}
