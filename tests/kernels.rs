//! Every kernel against the f64 CPU reference, at sizes that are not multiples of any workgroup or
//! tile size, for every kernel variant (not only the one this adapter would pick).

mod common;
use common::*;
use wgvae::ops::matmul::{matmul_accumulate, matmul_forward, MatmulOpts};
use wgvae::ops::{elementwise as ew, reduce, Act};
use wgvae::{MatmulVariant, Operands, Tape};

/// (M, K, N): ones, primes, one past tile/workgroup multiples, and the 785-wide MNIST+bias case.
const SIZES: [(usize, usize, usize); 7] =
    [(1, 1, 1), (7, 3, 5), (33, 17, 65), (1, 130, 7), (65, 1, 129), (130, 785, 33), (257, 64, 67)];

fn matmul_case(v: MatmulVariant, m: usize, k: usize, n: usize, ta: bool, tb: bool, seed: u64) {
    matmul_case_acc(v, m, k, n, ta, tb, seed, false)
}

/// op(A)·op(B) (or C0 + op(A)·op(B) with `accumulate`) under variant `v` against the f64 reference,
/// asserting that the kernel `v` promises for this shape is the one that ran.
#[allow(clippy::too_many_arguments)]
fn matmul_case_acc(v: MatmulVariant, m: usize, k: usize, n: usize, ta: bool, tb: bool, seed: u64, accumulate: bool) {
    let a = if ta { Mat::rand(k, m, -1.0, 1.0, seed) } else { Mat::rand(m, k, -1.0, 1.0, seed) };
    let b = if tb { Mat::rand(n, k, -1.0, 1.0, seed + 1) } else { Mat::rand(k, n, -1.0, 1.0, seed + 1) };
    let c0 = Mat::rand(m, n, -1.0, 1.0, seed + 2);
    let mut want = matmul(&a, &b, ta, tb);
    let mut tape = Tape::no_grad(gpu());
    let o = MatmulOpts::nn().trans(ta, tb).variant(v);
    let c = if accumulate {
        want = want.zip(&c0, |x, y| x + y);
        let c = c0.upload();
        matmul_accumulate(&mut tape, &a.upload(), &b.upload(), &c, o).unwrap();
        c
    } else {
        matmul_forward(&mut tape, &a.upload(), &b.upload(), None, o).unwrap()
    };
    tape.submit().unwrap();
    let what = format!("{} matmul {m}x{k}x{n} ta={ta} tb={tb} accumulate={accumulate}", v.name());
    assert_ran(&tape, expected_kernel(v, m, k, n, ta, tb), &what);
    // f32 products summed over K: error grows like sqrt(K) * eps * |terms|.
    let atol = 1e-6 * (k as f64).sqrt() * 4.0;
    assert_close(&download(&c), &want, atol, 1e-5, &what);
}

#[test]
fn matmul_every_variant_layout_and_odd_size() {
    for v in variants() {
        for (i, &(m, k, n)) in SIZES.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    matmul_case(v, m, k, n, ta, tb, 100 + i as u64);
                }
            }
        }
    }
}

#[test]
fn matmul_long_k_every_variant() {
    // llvmpipe caps an invocation's loop iterations at 65535: long K must still be exact.
    for v in variants() {
        for k in [4099, 70001] {
            matmul_case(v, 3, k, 5, false, false, 3);
            matmul_case(v, 2, k, 3, true, true, 4);
        }
    }
}

#[test]
fn matmul_long_aligned_k_every_variant_and_layout() {
    // K = 6144 is three K slices of 2048, and K, M, N multiples of 4 send `register` and
    // `subgroup` down their vec4 paths: the slicing of the vec4 kernels, with and without
    // accumulation into C, in every layout.
    for v in variants() {
        for ta in [false, true] {
            for tb in [false, true] {
                matmul_case_acc(v, 32, 6144, 64, ta, tb, 21, false);
                matmul_case_acc(v, 32, 6144, 64, ta, tb, 22, true);
            }
        }
    }
}

#[test]
fn matmul_epilogue_activation_derivative_and_row_sums_every_variant() {
    use wgvae::ops::matmul::{matmul_fused, Epilogue};
    // Scalar and vec4 paths, and K = 6144 (three K slices: the row sums accumulate over them).
    let sizes = [(7, 3, 5), (12, 16, 20), (36, 6144, 8)];
    let acts = [Act::Relu, Act::Tanh, Act::LeakyRelu(0.2), Act::Elu(0.5), Act::Sigmoid];
    for v in variants() {
        for (i, &(m, k, n)) in sizes.iter().enumerate() {
            for ta in [false, true] {
                for tb in [false, true] {
                    let act = acts[(i + 2 * ta as usize + tb as usize) % acts.len()];
                    let seed = 300 + i as u64;
                    let a = if ta { Mat::rand(k, m, -1.0, 1.0, seed) } else { Mat::rand(m, k, -1.0, 1.0, seed) };
                    let b =
                        if tb { Mat::rand(n, k, -1.0, 1.0, seed + 1) } else { Mat::rand(k, n, -1.0, 1.0, seed + 1) };
                    // Y is an output of `act` (the derivative is read from the output).
                    let pre = Mat::rand(m, n, -2.0, 2.0, seed + 2);
                    let y = pre.map(|x| act_fwd(act, x));
                    let mut tape = Tape::no_grad(gpu());
                    let sums = wgvae::Tensor::empty(gpu(), 1, m).unwrap();
                    let ep = Epilogue { grad_act: Some((act, y.upload())), row_sums: Some(sums.clone()) };
                    let o = MatmulOpts::nn().trans(ta, tb).variant(v);
                    let c = matmul_fused(&mut tape, &a.upload(), &b.upload(), None, None, o, ep).unwrap();
                    tape.submit().unwrap();
                    let what = format!("{} {act:?} epilogue {m}x{k}x{n} ta={ta} tb={tb}", v.name());
                    assert_ran(&tape, expected_kernel(v, m, k, n, ta, tb), &what);
                    let want = matmul(&a, &b, ta, tb).zip(&pre, |p, x| p * act_grad(act, x));
                    let atol = 1e-6 * (k as f64).sqrt() * 4.0;
                    assert_close(&download(&c), &want, atol, 1e-5, &what);
                    let opa = if ta { a.t() } else { a.clone() };
                    assert_close(&download(&sums), &row_sum(&opa).t(), atol, 1e-5, &format!("{what}: row sums"));
                }
            }
        }
    }
}

#[test]
fn forcing_a_variant_the_adapter_cannot_run_is_an_error() {
    // A forced variant never silently becomes another one.
    let g = gpu();
    match g.check_variant(MatmulVariant::Subgroup) {
        Ok(()) => assert!(g.has_subgroups_of_8()),
        Err(e) => {
            let mut tape = Tape::no_grad(g);
            let a = Mat::rand(8, 8, -1.0, 1.0, 1).upload();
            let o = MatmulOpts::nn().variant(MatmulVariant::Subgroup);
            let r = matmul_forward(&mut tape, &a, &a, None, o);
            assert!(r.is_err(), "subgroup matmul on an adapter without 8-lane subgroups must fail: {e}");
            assert!(g.set_matmul_variant(MatmulVariant::Subgroup).is_err());
        }
    }
}

#[test]
fn matmul_vae_shapes_every_variant() {
    for v in variants() {
        for s in wgvae::bench::SHAPES.iter().filter(|s| s.m * s.n * s.k < 50_000_000) {
            matmul_case(v, s.m, s.k, s.n, s.ta, s.tb, 7);
        }
    }
}

#[test]
fn matmul_fused_bias_and_every_activation() {
    // (M, K, N): scalar paths; vec4 loads with N % 4 != 0 (the subgroup variant falls back to the
    // register kernel); vec4 loads and stores.
    for (m, k, n) in [(37, 29, 70), (37, 28, 70), (37, 28, 68)] {
        let x = Mat::rand(m, k, -2.0, 2.0, 1);
        let w = Mat::rand(n, k, -1.0, 1.0, 2);
        let b = Mat::rand(1, n, -1.0, 1.0, 3);
        let pre = add_row(&matmul(&x, &w, false, true), &b);
        for v in variants() {
            for act in Act::ALL.into_iter().chain([Act::LeakyRelu(0.2), Act::Elu(0.5)]) {
                let mut tape = Tape::no_grad(gpu());
                let o = MatmulOpts::nn().trans(false, true).act(act).variant(v);
                let y = matmul_forward(&mut tape, &x.upload(), &w.upload(), Some(&b.upload()), o).unwrap();
                tape.submit().unwrap();
                let what = format!("{} linear {m}x{k}x{n} {act:?}", v.name());
                assert_ran(&tape, expected_kernel(v, m, k, n, false, true), &what);
                assert_close(&download(&y), &pre.map(|p| act_fwd(act, p)), 2e-5, 1e-5, &what);
            }
        }
    }
}

/// The generated straight-line kernels (shaders/gen_matmul_subgroup.py) and the variant that runs
/// each on shapes in multiples of 4, where the adapter can run it.
fn generated_kernels() -> Vec<(MatmulVariant, &'static str)> {
    [(MatmulVariant::Subgroup, "matmul_subgroup"), (MatmulVariant::Register, "matmul_unrolled")]
        .into_iter()
        .filter(|(v, _)| variants().contains(v))
        .collect()
}

#[test]
fn generated_matmuls_take_identity_relu_and_leaky_relu_at_run_time() {
    // These three activations and their derivatives are run-time parameters of the `subgroup`
    // and `unrolled` kernels (RT_ACT): one pipeline per layout serves every such layer, the leaky
    // slope included. The other activations, and every product with a transposed A (the weight
    // gradients), keep them compiled in. Both paths against the f64 reference, with the path that
    // ran asserted.
    for (v, kernel) in generated_kernels() {
        run_time_activations(v, kernel);
    }
}

fn run_time_activations(v: MatmulVariant, kernel: &str) {
    use wgvae::ops::matmul::{matmul_fused, Epilogue};
    // Multiples of 4 (the kernel's vec4 accesses; M too, for the transposed A), of no tile.
    let (m, k, n) = (36, 28, 68);
    let acts = Act::ALL.into_iter().chain([Act::LeakyRelu(0.2), Act::Elu(0.5)]);
    let mut leaky_pipelines: Vec<Vec<String>> = Vec::new();
    for (i, act) in acts.enumerate() {
        for ta in [false, true] {
            let seed = 900 + 2 * i as u64 + ta as u64;
            let a = if ta { Mat::rand(k, m, -2.0, 2.0, seed) } else { Mat::rand(m, k, -2.0, 2.0, seed) };
            let b = Mat::rand(n, k, -1.0, 1.0, seed + 1);
            let bias = Mat::rand(1, n, -1.0, 1.0, seed + 2);
            let pre = Mat::rand(m, n, -2.0, 2.0, seed + 3);
            let y = pre.map(|x| act_fwd(act, x));
            let mut tape = Tape::no_grad(gpu());
            let o = MatmulOpts::nn().trans(ta, true).variant(v);
            let fwd = matmul_forward(&mut tape, &a.upload(), &b.upload(), Some(&bias.upload()), o.act(act)).unwrap();
            let ep = Epilogue { grad_act: Some((act, y.upload())), row_sums: None };
            let bwd = matmul_fused(&mut tape, &a.upload(), &b.upload(), None, None, o, ep).unwrap();
            tape.submit().unwrap();
            let what = format!("{kernel} {act:?} ta={ta}");
            let prod = matmul(&a, &b, ta, true);
            let atol = 1e-6 * (k as f64).sqrt() * 4.0;
            assert_close(&download(&fwd), &add_row(&prod, &bias).map(|x| act_fwd(act, x)), atol, 1e-5, &what);
            assert_close(&download(&bwd), &prod.zip(&pre, |p, x| p * act_grad(act, x)), atol, 1e-5, &what);
            let runtime = !ta && matches!(act, Act::Identity | Act::Relu | Act::LeakyRelu(_));
            let names: Vec<String> =
                tape.kernel_names_run().keys().filter(|k| k.contains(&format!(":{kernel}["))).cloned().collect();
            assert_eq!(names.len(), 2, "{what}: forward and backward products, ran {names:?}");
            for name in &names {
                assert!(name.contains(&format!("RT_ACT={runtime}")), "{what}: expected RT_ACT={runtime}, ran {name}");
            }
            if runtime && matches!(act, Act::LeakyRelu(_)) {
                leaky_pipelines.push(names);
            }
        }
    }
    // Slopes 0.01 and 0.2 ran on the same two pipelines.
    assert_eq!(leaky_pipelines.len(), 2);
    assert_eq!(leaky_pipelines[0], leaky_pipelines[1], "the leaky slope must be a run-time parameter");
}

#[test]
fn matmul_accumulate_adds_into_output() {
    for v in variants() {
        // Shapes the vec4 paths cannot take (odd K; N % 4 != 0 with B stored [K, N]) and can.
        for (m, k, n) in [(19, 23, 45), (20, 24, 45), (20, 24, 44)] {
            matmul_case_acc(v, m, k, n, true, false, 4, true);
        }
    }
}

#[test]
fn activations_forward_and_backward() {
    // Wide range, including |x| where naive tanh/sigmoid overflow.
    let mut x = Mat::rand(33, 31, -6.0, 6.0, 9);
    x.d[0] = 90.0;
    x.d[1] = -90.0;
    x.d[2] = 0.0;
    let dy = Mat::rand(33, 31, -1.0, 1.0, 10);
    for act in Act::ALL.into_iter().chain([Act::LeakyRelu(0.3), Act::Elu(0.7)]) {
        let mut tape = Tape::no_grad(gpu());
        let y = ew::act_forward(&mut tape, &x.upload(), act).unwrap();
        let dx = ew::act_backward(&mut tape, &dy.upload(), &y, act).unwrap();
        tape.submit().unwrap();
        assert_close(&download(&y), &x.map(|v| act_fwd(act, v)), 1e-6, 1e-5, &format!("{act:?} forward"));
        let want = dy.zip(&x, |g, v| g * act_grad(act, v));
        assert_close(&download(&dx), &want, 1e-5, 1e-4, &format!("{act:?} backward"));
    }
}

#[test]
fn elementwise_ops() {
    let n = (37, 1031);
    let a = Mat::rand(n.0, n.1, -3.0, 3.0, 11);
    let b = Mat::rand(n.0, n.1, -3.0, 3.0, 12);
    let (ga, gb) = (a.upload(), b.upload());
    let acc = b.upload();
    let mut tape = Tape::no_grad(gpu());
    let axpby = ew::axpby(&mut tape, 0.5, &ga, -2.0, &gb).unwrap();
    let mul = ew::mul_t(&mut tape, &ga, &gb).unwrap();
    let aff = ew::affine(&mut tape, &ga, -1.5, 0.25).unwrap();
    let cp = ew::copy(&mut tape, &ga).unwrap();
    let fill = ew::fill(&mut tape, 3, 70001, 2.5).unwrap();
    ew::axpy_inplace(&mut tape, 0.75, &ga, &acc).unwrap();
    tape.submit().unwrap();
    assert_close(&download(&axpby), &a.zip(&b, |x, y| 0.5 * x - 2.0 * y), 1e-6, 1e-6, "axpby");
    assert_close(&download(&mul), &a.zip(&b, |x, y| x * y), 1e-6, 1e-6, "mul");
    assert_close(&download(&aff), &a.map(|x| -1.5 * x + 0.25), 1e-6, 1e-6, "affine");
    assert_eq!(download(&cp), a, "copy is exact");
    assert!(download(&fill).d.iter().all(|&v| v == 2.5), "fill");
    assert_close(&download(&acc), &b.zip(&a, |y, x| y + 0.75 * x), 1e-6, 1e-6, "axpy_inplace");
}

#[test]
fn large_elementwise_uses_2d_grid() {
    // 65535 workgroups of 256 cover 16.7M elements; go past that so the y dimension is used.
    let n = 65535 * 256 + 1000;
    let mut tape = Tape::no_grad(gpu());
    let f = ew::fill(&mut tape, 1, n, 1.0).unwrap();
    let s = reduce::sum_all(&mut tape, &f, 1.0).unwrap();
    tape.submit().unwrap();
    assert_eq!(download(&s).d[0], n as f64, "every element written once");
}

#[test]
fn reductions_match_reference_and_are_deterministic() {
    for &(r, c) in &[(1, 1), (7, 3), (129, 65), (1, 4097), (3, 70001), (70001, 3), (785, 130)] {
        let x = Mat::rand(r, c, -1.0, 1.0, (r * c) as u64);
        let gx = x.upload();
        let mut tape = Tape::no_grad(gpu());
        let cs = reduce::col_sum(&mut tape, &gx, 1.0).unwrap();
        let rs = reduce::row_sum(&mut tape, &gx, 1.0).unwrap();
        let s1 = reduce::sum_all(&mut tape, &gx, 0.5).unwrap();
        let s2 = reduce::sum_all(&mut tape, &gx, 0.5).unwrap();
        tape.submit().unwrap();
        let atol = 1e-6 * ((r * c) as f64).sqrt() * 2.0;
        assert_close(&download(&cs), &col_sum(&x), atol, 1e-5, &format!("col_sum {r}x{c}"));
        assert_close(&download(&rs), &row_sum(&x), atol, 1e-5, &format!("row_sum {r}x{c}"));
        let (a, b) = (download(&s1), download(&s2));
        assert_close(&a, &Mat::new(1, 1, vec![0.5 * x.sum()]), atol, 1e-5, &format!("sum {r}x{c}"));
        assert_eq!(a.d[0].to_bits(), b.d[0].to_bits(), "sum is bit-for-bit repeatable");

        // Again in a later submission, from a copy in another buffer, with every free buffer of the
        // pool filled with NaN first and other work in between: a reduction that read a stale or
        // uninitialised partial, or depended on where its buffers came from, would differ.
        let poison: Vec<wgvae::Tensor> = [1usize, 3, 17, 65, 257, 4097, 70001, r * c]
            .iter()
            .flat_map(|&n| (0..3).map(move |_| n))
            .map(|n| wgvae::Tensor::from_slice(gpu(), 1, n, &vec![f32::NAN; n]).unwrap())
            .collect();
        drop(poison);
        let mut tape = Tape::no_grad(gpu());
        let gx2 = ew::affine(&mut tape, &gx, 1.0, 0.0).unwrap();
        let _other = reduce::row_sum(&mut tape, &Mat::rand(33, 17, -1.0, 1.0, 5).upload(), 1.0).unwrap();
        let cs2 = reduce::col_sum(&mut tape, &gx2, 1.0).unwrap();
        let rs2 = reduce::row_sum(&mut tape, &gx2, 1.0).unwrap();
        let s3 = reduce::sum_all(&mut tape, &gx2, 0.5).unwrap();
        tape.submit().unwrap();
        let bits = |t: &wgvae::Tensor| download(t).d.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let what = format!("{r}x{c}: a later submission from another buffer");
        assert_eq!(bits(&cs2), bits(&cs), "col_sum, {what}");
        assert_eq!(bits(&rs2), bits(&rs), "row_sum, {what}");
        assert_eq!(bits(&s3), bits(&s1), "sum, {what}");
    }
}

#[test]
fn broadcasts() {
    let s = Mat::rand(1, 1, -1.0, 1.0, 1);
    let row = Mat::rand(1, 9, -1.0, 1.0, 2);
    let col = Mat::rand(7, 1, -1.0, 1.0, 3);
    let mut tape = Tape::new(gpu());
    // Broadcasts are the backward rules of the reductions: check them through the tape.
    let (vs, vr, vc) = (tape.leaf(s.upload(), true), tape.leaf(row.upload(), true), tape.leaf(col.upload(), true));
    let _ = (vs, vr, vc);
    let bs = ew_broadcast(&mut tape, &s, 7, 9);
    let br = ew_broadcast(&mut tape, &row, 7, 9);
    let bc = ew_broadcast(&mut tape, &col, 7, 9);
    tape.submit().unwrap();
    assert_close(&download(&bs), &Mat::new(7, 9, vec![-2.0 * s.d[0]; 63]), 1e-7, 0.0, "scalar");
    let want_r = Mat::new(7, 9, (0..63).map(|i| -2.0 * row.d[i % 9]).collect());
    let want_c = Mat::new(7, 9, (0..63).map(|i| -2.0 * col.d[i / 9]).collect());
    assert_close(&download(&br), &want_r, 1e-7, 0.0, "row");
    assert_close(&download(&bc), &want_c, 1e-7, 0.0, "col");
}

/// Broadcast via the sum ops' backward: d(Σ −2·x)/dx... expressed directly with the public API.
fn ew_broadcast(tape: &mut Tape, x: &Mat, rows: usize, cols: usize) -> wgvae::Tensor {
    ew::broadcast_to(tape, &x.upload(), rows, cols, -2.0).unwrap()
}

/// One product of a generated kernel (`v` running `kernel`) on `g` with every epilogue part the
/// kernel has: bias and activation (forward), accumulation into C, and the activation derivative
/// with row sums (a backward product). Returns (forward, accumulated, backward, row sums) as raw
/// f32s.
#[allow(clippy::too_many_arguments)]
fn generated_products(
    g: &wgvae::Gpu,
    (v, kernel): (MatmulVariant, &str),
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    seed: u64,
) -> [Vec<f32>; 4] {
    use wgvae::ops::matmul::{matmul_fused, Epilogue};
    let a = if ta { Mat::rand(k, m, -1.0, 1.0, seed) } else { Mat::rand(m, k, -1.0, 1.0, seed) };
    let b = if tb { Mat::rand(n, k, -1.0, 1.0, seed + 1) } else { Mat::rand(k, n, -1.0, 1.0, seed + 1) };
    let bias = Mat::rand(1, n, -1.0, 1.0, seed + 2);
    let c0 = Mat::rand(m, n, -1.0, 1.0, seed + 3);
    let pre = Mat::rand(m, n, -2.0, 2.0, seed + 4);
    let y = pre.map(|x| act_fwd(Act::Tanh, x));
    let o = MatmulOpts::nn().trans(ta, tb).variant(v);
    let mut tape = Tape::no_grad(g);
    let (at, bt) = (a.upload_to(g), b.upload_to(g));
    let fwd = matmul_forward(&mut tape, &at, &bt, Some(&bias.upload_to(g)), o.act(Act::Relu)).unwrap();
    let acc = c0.upload_to(g);
    matmul_accumulate(&mut tape, &at, &bt, &acc, o).unwrap();
    let sums = wgvae::Tensor::empty(g, 1, m).unwrap();
    let ep = Epilogue { grad_act: Some((Act::Tanh, y.upload_to(g))), row_sums: Some(sums.clone()) };
    let bwd = matmul_fused(&mut tape, &at, &bt, None, None, o, ep).unwrap();
    tape.submit().unwrap();
    assert_ran(&tape, kernel, &format!("{kernel} {m}x{k}x{n} ta={ta} tb={tb}"));
    // The f64 reference for each of the four results.
    let prod = matmul(&a, &b, ta, tb);
    let atol = 1e-6 * (k as f64).sqrt() * 4.0;
    let what = format!("{kernel}, {} words, {m}x{k}x{n} ta={ta} tb={tb}", g.words());
    let got: Vec<Mat> = [&fwd, &acc, &bwd, &sums].iter().map(|t| download(t)).collect();
    assert_close(
        &got[0],
        &add_row(&prod, &bias).map(|x| act_fwd(Act::Relu, x)),
        atol,
        1e-5,
        &format!("{what}: bias+relu"),
    );
    assert_close(&got[1], &prod.zip(&c0, |p, c| p + c), atol, 1e-5, &format!("{what}: accumulate"));
    assert_close(&got[2], &prod.zip(&pre, |p, x| p * act_grad(Act::Tanh, x)), atol, 1e-5, &format!("{what}: tanh'"));
    let opa = if ta { a.t() } else { a };
    assert_close(&got[3], &row_sum(&opa).t(), atol, 1e-5, &format!("{what}: row sums"));
    [&fwd, &acc, &bwd, &sums].map(|t| t.to_vec(g).unwrap())
}

#[test]
fn generated_matmuls_under_every_storage_word_and_operand_kind_are_exact_and_bit_identical() {
    // The `subgroup` and `unrolled` kernels with their vec4 views typed as vec4<f32> and as
    // vec2<u64> (the CPU adapters' default): the same bytes, so the results must agree to the bit,
    // and each must match the f64 reference. Multiples of 4 (the vec4 path) that are not multiples
    // of the 32- or 16-row block or the 64- or 128-column workgroup; K = 6144 is three K slices.
    for gk in generated_kernels() {
        words_bit_identical(gk);
    }
}

fn words_bit_identical((v, kernel): (MatmulVariant, &'static str)) {
    // The `subgroup` kernel also reads its operands from textures (the default) or buffers: every
    // storage-word kind with the default operands, and buffer operands with the default words.
    // 68x100x76: operands of more than one 1024-texel row with a partial last row (the two copies
    // into an operand texture); 12x6144x8: whole rows only.
    let mut configs: Vec<(&'static wgvae::Gpu, String)> = words_kinds()
        .into_iter()
        .map(|w| {
            let g = gpu_words(w);
            assert_eq!(g.words(), w);
            let textures = if kernel == "matmul_subgroup" { "+textures" } else { "" };
            (g, format!("{kernel}.wgsl+{w}{textures}:{kernel}"))
        })
        .collect();
    if kernel == "matmul_subgroup" {
        let g = gpu_operands(Operands::Buffers);
        configs.push((g, format!("{kernel}.wgsl+{}:{kernel}", g.words())));
    }
    let sizes = [(36, 20, 44), (132, 28, 68), (68, 100, 76), (12, 6144, 8)];
    for (i, &(m, k, n)) in sizes.iter().enumerate() {
        for ta in [false, true] {
            for tb in [false, true] {
                let mut first: Option<(&str, [Vec<f32>; 4])> = None;
                for (g, name) in &configs {
                    let got = generated_products(g, (v, kernel), m, k, n, ta, tb, 500 + i as u64);
                    assert_ran_named(g, name, name);
                    if let Some((name0, want)) = &first {
                        for (j, (x, y)) in got.iter().zip(want).enumerate() {
                            let same = x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits());
                            assert!(same, "{m}x{k}x{n} ta={ta} tb={tb}: result {j} differs between {name0} and {name}");
                        }
                    } else {
                        first = Some((name, got));
                    }
                }
            }
        }
    }
}

#[test]
fn an_operand_texture_is_refilled_after_a_dispatch_writes_its_buffer() {
    // Within one submission a texture filled from a range serves later reads of that range
    // without a new copy, until a dispatch writes the buffer: here W is read by a product,
    // updated in place (W += P·Q), then read again, all in one tape. A stale texture would give
    // the second product the old W. The same on the device with buffer operands, for the bits.
    let (x, w, pm, qm) = (
        Mat::rand(36, 28, -1.0, 1.0, 60),
        Mat::rand(28, 44, -1.0, 1.0, 61),
        Mat::rand(28, 12, -1.0, 1.0, 62),
        Mat::rand(12, 44, -1.0, 1.0, 63),
    );
    let w2 = w.zip(&matmul(&pm, &qm, false, false), |a, b| a + b);
    let mut outs = Vec::new();
    for g in [gpu(), gpu_operands(Operands::Buffers)] {
        let mut tape = Tape::no_grad(g);
        let (xg, wg) = (x.upload_to(g), w.upload_to(g));
        let o = MatmulOpts::nn();
        let first = matmul_forward(&mut tape, &xg, &wg, None, o).unwrap();
        let again = matmul_forward(&mut tape, &xg, &wg, None, o).unwrap();
        matmul_accumulate(&mut tape, &pm.upload_to(g), &qm.upload_to(g), &wg, o).unwrap();
        let after = matmul_forward(&mut tape, &xg, &wg, None, o).unwrap();
        tape.submit().unwrap();
        let what = format!("{} operands", g.operands());
        if g.matmul_variant() == MatmulVariant::Subgroup && g.operands() == Operands::Textures {
            let ran = tape.kernel_names_run();
            assert!(ran.keys().any(|k| k.contains("+textures:matmul_subgroup")), "{what}: ran {ran:?}");
        }
        assert_close(&download(&first), &matmul(&x, &w, false, false), 1e-5, 1e-5, &format!("{what}: first"));
        assert_close(&download(&again), &matmul(&x, &w, false, false), 1e-5, 1e-5, &format!("{what}: again"));
        assert_close(
            &download(&after),
            &matmul(&x, &w2, false, false),
            1e-5,
            1e-5,
            &format!("{what}: after the update"),
        );
        outs.push([first, again, after].map(|t| t.to_vec(g).unwrap()));
    }
    // The same bits when both devices run the same variant (a forced WGVAE_MATMUL changes only
    // the default device).
    if gpu().matmul_variant() == gpu_operands(Operands::Buffers).matmul_variant() {
        assert_eq!(
            outs[0].iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>(),
            outs[1].iter().flatten().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
