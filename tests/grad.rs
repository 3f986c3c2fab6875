//! Every backward rule: the f64 reference rule is checked against central finite differences in
//! f64, then the GPU backward (through the tape) against the reference rule. The scalar loss is
//! L = Σ upstream ⊙ op(inputs), so the upstream gradient is a random matrix, not ones.

mod common;
use common::*;
use wgvae::nn::{Mlp, Sgd};
use wgvae::ops::{self, Act};
use wgvae::Optimizer;
use wgvae::{Gpu, MatmulVariant, Tape, Var};

/// Gradients of Σ upstream ⊙ build(inputs) on the GPU, one per input.
fn gpu_grads(inputs: &[&Mat], upstream: &Mat, build: impl FnOnce(&mut Tape, &[Var]) -> wgvae::Result<Var>) -> Vec<Mat> {
    gpu_grads_on(gpu(), inputs, upstream, build).0
}

/// [`gpu_grads`] on device `g`, also returning the tape (which kernels ran).
fn gpu_grads_on(
    g: &Gpu,
    inputs: &[&Mat],
    upstream: &Mat,
    build: impl FnOnce(&mut Tape, &[Var]) -> wgvae::Result<Var>,
) -> (Vec<Mat>, Tape) {
    let mut tape = Tape::new(g);
    let vars: Vec<Var> = inputs.iter().map(|m| tape.leaf(m.upload_to(g), true)).collect();
    let y = build(&mut tape, &vars).unwrap();
    let w = tape.input(upstream.upload_to(g));
    let yw = ops::mul(&mut tape, y, w).unwrap();
    let l = ops::sum(&mut tape, yw).unwrap();
    tape.backward(l).unwrap();
    tape.submit().unwrap();
    let grads = vars.iter().map(|v| download(tape.grad(*v).expect("every input receives a gradient"))).collect();
    (grads, tape)
}

/// The matmul kernel a device defaulting to `v` must use on shapes every vec4 path takes.
fn aligned_kernel(v: MatmulVariant) -> &'static str {
    match v {
        MatmulVariant::Tiled => "matmul_tiled",
        MatmulVariant::Register => "matmul_unrolled",
        MatmulVariant::Subgroup => "matmul_subgroup",
    }
}

#[test]
fn matmul_backward_every_layout_and_variant() {
    // 7x9x5 reaches only the scalar kernels; 12x16x20 (every dimension a multiple of 4) sends every
    // product of the forward and backward pass down the variant's vec4 / subgroup path.
    for v in variants() {
        let g = gpu_for(v);
        for (m, k, n) in [(7, 9, 5), (12, 16, 20)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = if ta { Mat::rand(k, m, -1.0, 1.0, 1) } else { Mat::rand(m, k, -1.0, 1.0, 1) };
                    let b = if tb { Mat::rand(n, k, -1.0, 1.0, 2) } else { Mat::rand(k, n, -1.0, 1.0, 2) };
                    let up = Mat::rand(m, n, -1.0, 1.0, 3);
                    let f = |x: &[Mat]| matmul(&x[0], &x[1], ta, tb);
                    let opb = if tb { b.t() } else { b.clone() };
                    let opa = if ta { a.t() } else { a.clone() };
                    let dopa = matmul(&up, &opb, false, true);
                    let dopb = matmul(&opa, &up, true, false);
                    let reference = [if ta { dopa.t() } else { dopa }, if tb { dopb.t() } else { dopb }];
                    let (got, tape) = gpu_grads_on(g, &[&a, &b], &up, |t, v| ops::matmul(t, v[0], v[1], ta, tb));
                    let name = format!("{} matmul {m}x{k}x{n} ta={ta} tb={tb}", v.name());
                    if m % 4 == 0 {
                        // Forward and both gradients: three products, all on the variant's vec4 kernel.
                        assert_eq!(
                            tape.kernels_run().get(aligned_kernel(v)),
                            Some(&3),
                            "{name}: {:?}",
                            tape.kernels_run()
                        );
                    }
                    check_rule(&name, &[&a, &b], &up, f, &reference, &got, 1e-5);
                }
            }
        }
    }
}

#[test]
fn linear_backward_every_activation_variant_with_and_without_bias() {
    // Odd sizes reach the scalar kernels; multiples of 4 every variant's vec4 / subgroup path.
    for v in variants() {
        let dev = gpu_for(v);
        for (bsz, i, o) in [(6, 11, 5), (8, 12, 16)] {
            let x = Mat::rand(bsz, i, -1.5, 1.5, 4);
            let w = Mat::rand(o, i, -1.0, 1.0, 5);
            let b = Mat::rand(1, o, -0.5, 0.5, 6);
            let up = Mat::rand(bsz, o, -1.0, 1.0, 7);
            let name = |what: String| format!("{} {bsz}x{i}->{o} {what}", v.name());
            for act in Act::ALL {
                let pre = add_row(&matmul(&x, &w, false, true), &b);
                let g = up.zip(&pre, |u, p| u * act_grad(act, p));
                let reference = [matmul(&g, &w, false, false), matmul(&g, &x, true, false), col_sum(&g)];
                let f = |v: &[Mat]| add_row(&matmul(&v[0], &v[1], false, true), &v[2]).map(|p| act_fwd(act, p));
                let (got, tape) =
                    gpu_grads_on(dev, &[&x, &w, &b], &up, |t, v| ops::linear(t, v[0], v[1], Some(v[2]), act));
                if bsz % 4 == 0 {
                    assert_ran(&tape, aligned_kernel(v), &name(format!("linear {act:?}")));
                }
                check_rule(&name(format!("linear {act:?}")), &[&x, &w, &b], &up, f, &reference, &got, 1e-5);
            }
            // Without bias.
            let pre = matmul(&x, &w, false, true);
            let g = up.zip(&pre, |u, p| u * act_grad(Act::Relu, p));
            let reference = [matmul(&g, &w, false, false), matmul(&g, &x, true, false)];
            let f = |v: &[Mat]| matmul(&v[0], &v[1], false, true).map(|p| act_fwd(Act::Relu, p));
            let (got, _) = gpu_grads_on(dev, &[&x, &w], &up, |t, v| ops::linear(t, v[0], v[1], None, Act::Relu));
            check_rule(&name("linear relu, no bias".into()), &[&x, &w], &up, f, &reference, &got, 1e-5);
        }
    }
}

#[test]
fn layer_chains_fuse_the_activation_derivative_only_for_a_single_consumer() {
    // y = tanh(x·W1ᵀ) feeds a second layer z = y·W2ᵀ; in the second case y also feeds Σ u ⊙ y.
    // The second layer's dx may include tanh' (sparing the first layer its act_backward) only when
    // it is y's one consumer.
    let (b, i, h, o) = (5, 7, 6, 3);
    let x = Mat::rand(b, i, -1.0, 1.0, 60);
    let w1 = Mat::rand(h, i, -1.0, 1.0, 61);
    let w2 = Mat::rand(o, h, -1.0, 1.0, 62);
    let up = Mat::rand(b, o, -1.0, 1.0, 63);
    let u = Mat::rand(b, h, -1.0, 1.0, 64);
    for second_use in [false, true] {
        let loss = |w1: &Mat, w2: &Mat| {
            let y = matmul(&x, w1, false, true).map(f64::tanh);
            let z = matmul(&y, w2, false, true);
            z.dot(&up) + if second_use { y.dot(&u) } else { 0.0 }
        };
        let mut tape = Tape::new(gpu());
        let (v1, v2) = (tape.leaf(w1.upload(), true), tape.leaf(w2.upload(), true));
        let xv = tape.input(x.upload());
        let y = ops::linear(&mut tape, xv, v1, None, Act::Tanh).unwrap();
        // The other use is recorded first, so its gradient reaches y AFTER the second layer's.
        let other = if second_use {
            let uv = tape.input(u.upload());
            let yu = ops::mul(&mut tape, y, uv).unwrap();
            Some(ops::sum(&mut tape, yu).unwrap())
        } else {
            None
        };
        let z = ops::linear(&mut tape, y, v2, None, Act::Identity).unwrap();
        let upv = tape.input(up.upload());
        let zu = ops::mul(&mut tape, z, upv).unwrap();
        let mut l = ops::sum(&mut tape, zu).unwrap();
        if let Some(s) = other {
            l = ops::add(&mut tape, s, l).unwrap();
        }
        tape.backward(l).unwrap();
        tape.submit().unwrap();
        assert_eq!(
            tape.kernels_run().get("act_backward").is_some(),
            second_use,
            "tanh's backward is fused into the second layer exactly when y has one consumer: {:?}",
            tape.kernels_run()
        );
        let want1 = fd_grad(&w1, 1e-6, |m| loss(m, &w2));
        let want2 = fd_grad(&w2, 1e-6, |m| loss(&w1, m));
        let what = |k: usize| format!("two-layer chain (y used twice: {second_use}), W{k}");
        assert_close(&download(tape.grad(v1).unwrap()), &want1, 1e-5, 1e-4, &what(1));
        assert_close(&download(tape.grad(v2).unwrap()), &want2, 1e-5, 1e-4, &what(2));
    }
}

#[test]
fn activation_backward_every_activation() {
    let x = Mat::rand(9, 13, -3.0, 3.0, 8);
    let up = Mat::rand(9, 13, -1.0, 1.0, 9);
    for act in Act::ALL.into_iter().chain([Act::LeakyRelu(0.2), Act::Elu(0.5)]) {
        let reference = [up.zip(&x, |u, v| u * act_grad(act, v))];
        let got = gpu_grads(&[&x], &up, |t, v| ops::activation(t, v[0], act));
        check_rule(
            &format!("activation {act:?}"),
            &[&x],
            &up,
            |v| v[0].map(|p| act_fwd(act, p)),
            &reference,
            &got,
            1e-5,
        );
    }
}

#[test]
fn elementwise_backward() {
    let a = Mat::rand(5, 17, -2.0, 2.0, 10);
    let b = Mat::rand(5, 17, -2.0, 2.0, 11);
    let up = Mat::rand(5, 17, -1.0, 1.0, 12);
    let got = gpu_grads(&[&a, &b], &up, |t, v| ops::add(t, v[0], v[1]));
    check_rule("add", &[&a, &b], &up, |v| v[0].zip(&v[1], |x, y| x + y), &[up.clone(), up.clone()], &got, 1e-6);
    let got = gpu_grads(&[&a, &b], &up, |t, v| ops::sub(t, v[0], v[1]));
    check_rule("sub", &[&a, &b], &up, |v| v[0].zip(&v[1], |x, y| x - y), &[up.clone(), up.map(|u| -u)], &got, 1e-6);
    let got = gpu_grads(&[&a, &b], &up, |t, v| ops::mul(t, v[0], v[1]));
    let reference = [up.zip(&b, |u, y| u * y), up.zip(&a, |u, x| u * x)];
    check_rule("mul", &[&a, &b], &up, |v| v[0].zip(&v[1], |x, y| x * y), &reference, &got, 1e-6);
    let got = gpu_grads(&[&a], &up, |t, v| ops::scale(t, v[0], -0.3));
    check_rule("scale", &[&a], &up, |v| v[0].map(|x| -0.3 * x), &[up.map(|u| -0.3 * u)], &got, 1e-6);
    // The same var used twice: gradients accumulate (d(a*a) = 2a).
    let got = gpu_grads(&[&a], &up, |t, v| ops::mul(t, v[0], v[0]));
    check_rule("mul(a, a)", &[&a], &up, |v| v[0].map(|x| x * x), &[up.zip(&a, |u, x| 2.0 * u * x)], &got, 1e-5);
}

#[test]
fn reduction_backward() {
    let x = Mat::rand(6, 9, -1.0, 1.0, 13);
    let up1 = Mat::rand(1, 1, -1.0, 1.0, 14);
    let got = gpu_grads(&[&x], &up1, |t, v| ops::sum(t, v[0]));
    check_rule("sum", &[&x], &up1, |v| Mat::new(1, 1, vec![v[0].sum()]), &[x.map(|_| up1.d[0])], &got, 1e-6);
    let got = gpu_grads(&[&x], &up1, |t, v| ops::mean(t, v[0]));
    check_rule(
        "mean",
        &[&x],
        &up1,
        |v| Mat::new(1, 1, vec![v[0].sum() / 54.0]),
        &[x.map(|_| up1.d[0] / 54.0)],
        &got,
        1e-6,
    );
    let upc = Mat::rand(1, 9, -1.0, 1.0, 15);
    let got = gpu_grads(&[&x], &upc, |t, v| ops::sum_cols(t, v[0]));
    let reference = Mat::new(6, 9, (0..54).map(|i| upc.d[i % 9]).collect());
    check_rule("sum_cols", &[&x], &upc, |v| col_sum(&v[0]), &[reference], &got, 1e-6);
    let upr = Mat::rand(6, 1, -1.0, 1.0, 16);
    let got = gpu_grads(&[&x], &upr, |t, v| ops::sum_rows(t, v[0]));
    let reference = Mat::new(6, 9, (0..54).map(|i| upr.d[i / 9]).collect());
    check_rule("sum_rows", &[&x], &upr, |v| row_sum(&v[0]), &[reference], &got, 1e-6);
}

// ------------------------------------------------------------------------------ a 2-layer MLP

struct RefMlp {
    w1: Mat,
    b1: Mat,
    w2: Mat,
    b2: Mat,
}

impl RefMlp {
    fn from_gpu(m: &Mlp) -> Self {
        let l = &m.layers;
        RefMlp {
            w1: download(l[0].weight.value()),
            b1: download(l[0].bias.value()),
            w2: download(l[1].weight.value()),
            b2: download(l[1].bias.value()),
        }
    }
    fn params(&self) -> [&Mat; 4] {
        [&self.w1, &self.b1, &self.w2, &self.b2]
    }
    /// Σ (tanh(x·w1ᵀ+b1)·w2ᵀ + b2 − t)².
    fn loss(p: [&Mat; 4], x: &Mat, t: &Mat) -> f64 {
        let h = add_row(&matmul(x, p[0], false, true), p[1]).map(f64::tanh);
        let y = add_row(&matmul(&h, p[2], false, true), p[3]);
        y.zip(t, |a, b| (a - b).powi(2)).sum()
    }
    fn grads(&self, x: &Mat, t: &Mat) -> Vec<Mat> {
        (0..4)
            .map(|i| {
                fd_grad(self.params()[i], 1e-6, |pi| {
                    let mut p = self.params();
                    p[i] = pi;
                    Self::loss(p, x, t)
                })
            })
            .collect()
    }
}

fn mlp_step(mlp: &Mlp, x: &Mat, t: &Mat, opt: Option<&mut Sgd>) -> (f32, Tape) {
    let mut tape = Tape::new(gpu());
    let xv = tape.input(x.upload());
    let tv = tape.input(t.upload());
    let y = mlp.forward(&mut tape, xv).unwrap();
    let d = ops::sub(&mut tape, y, tv).unwrap();
    let sq = ops::mul(&mut tape, d, d).unwrap();
    let loss = ops::sum(&mut tape, sq).unwrap();
    tape.backward(loss).unwrap();
    if let Some(opt) = opt {
        opt.step(&mut tape, &mlp.params()).unwrap();
    }
    let lv = tape.value(loss).clone();
    let rb = tape.read(&lv).unwrap();
    tape.submit().unwrap();
    (rb.get().unwrap()[0], tape)
}

#[test]
fn mlp_gradients_match_finite_differences() {
    let mlp = Mlp::new(gpu(), "mlp", &[5, 7, 3], Act::Tanh, Act::Identity, 42).unwrap();
    let x = Mat::rand(6, 5, -1.0, 1.0, 20);
    let t = Mat::rand(6, 3, -1.0, 1.0, 21);
    let r = RefMlp::from_gpu(&mlp);
    let fd = r.grads(&x, &t);
    let (loss, tape) = mlp_step(&mlp, &x, &t, None);
    assert!((loss as f64 - RefMlp::loss(r.params(), &x, &t)).abs() < 1e-4);
    for (p, want) in mlp.params().iter().zip(&fd) {
        let got = download(p.grad(&tape).unwrap());
        assert_close(&got, want, 1e-4, 1e-4, &format!("MLP gradient of {}", p.name()));
    }
}

#[test]
fn mlp_training_matches_reference_sgd_and_lowers_loss() {
    let mlp = Mlp::new(gpu(), "mlp", &[5, 7, 3], Act::Tanh, Act::Identity, 7).unwrap();
    let x = Mat::rand(8, 5, -1.0, 1.0, 22);
    let t = Mat::rand(8, 3, -1.0, 1.0, 23);
    let mut opt = Sgd::new(0.02).unwrap();
    let mut r = RefMlp::from_gpu(&mlp);
    let mut first = None;
    let mut last = 0.0;
    for step in 0..25 {
        let (gpu_loss, _) = mlp_step(&mlp, &x, &t, Some(&mut opt));
        let ref_loss = RefMlp::loss(r.params(), &x, &t);
        assert!(
            (gpu_loss as f64 - ref_loss).abs() <= 1e-3 * ref_loss.max(1.0),
            "step {step}: GPU loss {gpu_loss} vs f64 reference {ref_loss}"
        );
        let g = r.grads(&x, &t);
        for (p, gi) in [&mut r.w1, &mut r.b1, &mut r.w2, &mut r.b2].into_iter().zip(&g) {
            *p = p.zip(gi, |a, b| a - 0.02 * b);
        }
        first.get_or_insert(gpu_loss);
        last = gpu_loss;
    }
    assert!(last < 0.5 * first.unwrap(), "training lowers the loss: {} -> {last}", first.unwrap());
}
