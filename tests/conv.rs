//! Convolution and transposed convolution (`shaders/conv.wgsl`) against the f64 reference
//! (`common::conv2d_ref` and its two adjoints): forward with fused bias and activation at odd
//! sizes (13x11 images, 3 and 5 channels, batch 3, kernels 2-5, strides 1-3 and one above its
//! kernel, paddings 0-2, output paddings), each backward rule checked by f64 finite differences
//! first and the GPU against it, the K-sliced weight gradient, the z-dimension grid, and bad
//! geometry as errors.
//! Everything runs on a device per matmul variant: the `subgroup` one runs `conv_gemm_subgroup`
//! (row operands shared by 8-lane subgroups) wherever a product has more than 4 columns, the
//! others `conv_gemm`; each test checks which ran. The `subgroup` entry reads its operands from
//! textures by default and runs on a device with buffer operands too.

mod common;
use common::*;
use wgvae::ops::conv::{self, ConvShape, ConvTransposeShape};
use wgvae::ops::Act;
use wgvae::{Error, Gpu, MatmulVariant, Operands, Tape};

/// A device per matmul variant the adapter runs, with the conv entry point it uses for products
/// of more than 4 columns.
/// The `subgroup` device reads the operands from textures (the default); where it runs, a device
/// with buffer operands is added (`conv_subgroup.wgsl` without `+textures`).
fn devices() -> Vec<(&'static Gpu, &'static str)> {
    let mut d: Vec<(&'static Gpu, &'static str)> = variants()
        .into_iter()
        .map(|v| (gpu_for(v), if v == MatmulVariant::Subgroup { "conv_gemm_subgroup" } else { "conv_gemm" }))
        .collect();
    if variants().contains(&MatmulVariant::Subgroup) && gpu().matmul_variant() == MatmulVariant::Subgroup {
        d.push((gpu_operands(Operands::Buffers), "conv_gemm_subgroup"));
    }
    d
}

/// Asserts that the wide entry point `entry` ran (and the subgroup one only when meant).
fn assert_entry(ran: &std::collections::BTreeMap<&'static str, u64>, entry: &str, what: &str) {
    assert!(ran.get(entry).copied().unwrap_or(0) > 0, "{what}: expected `{entry}` to run; ran {ran:?}");
    if entry != "conv_gemm_subgroup" {
        assert!(!ran.contains_key("conv_gemm_subgroup"), "{what}: the subgroup kernel ran on {ran:?}");
    }
}

fn cs(
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> ConvShape {
    ConvShape { in_channels, out_channels, height, width, kernel, stride, padding }
}

#[allow(clippy::too_many_arguments)]
fn ts(
    in_channels: usize,
    out_channels: usize,
    height: usize,
    width: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    output_padding: usize,
) -> ConvTransposeShape {
    ConvTransposeShape { in_channels, out_channels, height, width, kernel, stride, padding, output_padding }
}

/// Odd sizes: none a multiple of the kernel's 32x32 blocks or 4x4 register tiles.
fn conv_cases() -> Vec<ConvShape> {
    vec![
        cs(3, 5, 13, 11, 3, 1, 1),
        cs(5, 3, 13, 11, 3, 2, 1),
        cs(3, 4, 13, 11, 4, 2, 1),
        cs(5, 2, 13, 11, 5, 1, 2),
        cs(1, 3, 9, 7, 5, 3, 0),
        cs(2, 33, 7, 9, 3, 2, 0),
        cs(3, 5, 13, 11, 2, 3, 1),
    ]
}

fn transpose_cases() -> Vec<ConvTransposeShape> {
    vec![
        ts(3, 5, 7, 6, 3, 2, 1, 1),
        ts(5, 3, 7, 6, 4, 2, 1, 0),
        ts(2, 4, 5, 5, 5, 1, 2, 0),
        ts(33, 1, 7, 7, 3, 1, 1, 0),
        ts(4, 3, 6, 5, 3, 3, 0, 2),
        // Stride above the kernel: output pixels of some phases receive no tap (bias only).
        ts(3, 5, 5, 4, 2, 3, 0, 1),
    ]
}

fn act_ref(act: Act, m: &Mat) -> Mat {
    m.map(|v| act_fwd(act, v))
}

#[test]
fn conv2d_forward_with_bias_and_activation() {
    for (g, entry) in devices() {
        for (i, s) in conv_cases().into_iter().enumerate() {
            let n = 3;
            let x = Mat::rand(n, s.in_len(), -1.0, 1.0, 10 + i as u64);
            let w = Mat::rand(s.out_channels, s.weight_cols(), -0.5, 0.5, 20 + i as u64);
            let b = Mat::rand(1, s.out_channels, -0.5, 0.5, 30 + i as u64);
            for act in [Act::Identity, Act::Relu, Act::Tanh] {
                let mut tape = Tape::no_grad(g);
                let (xg, wg, bg) = (x.upload_to(g), w.upload_to(g), b.upload_to(g));
                let y = conv::conv2d_forward(&mut tape, &xg, &wg, Some(&bg), &s, act).unwrap();
                tape.submit().unwrap();
                let wide = if s.out_channels > 4 { entry } else { "conv_gemm" };
                assert_entry(tape.kernels_run(), wide, "conv2d");
                let want = act_ref(act, &add_channel_bias(&conv2d_ref(&x, &w, &s), &b));
                let atol = 1e-6 * (s.weight_cols() as f64).sqrt() * 4.0;
                assert_close(&download(&y), &want, atol, 1e-5, &format!("conv2d {s:?} {act:?} ({entry})"));
            }
        }
    }
}

#[test]
fn conv_transpose2d_forward_with_bias_and_activation() {
    for (g, entry) in devices() {
        for (i, t) in transpose_cases().into_iter().enumerate() {
            let n = 3;
            let c = t.as_conv();
            let x = Mat::rand(n, t.in_channels * t.height * t.width, -1.0, 1.0, 40 + i as u64);
            let w = Mat::rand(t.in_channels, t.out_channels * t.kernel * t.kernel, -0.5, 0.5, 50 + i as u64);
            let b = Mat::rand(1, t.out_channels, -0.5, 0.5, 60 + i as u64);
            for act in [Act::Identity, Act::Sigmoid] {
                let mut tape = Tape::new(g);
                let (xv, wv, bv) = (tape.input(x.upload_to(g)), tape.input(w.upload_to(g)), tape.input(b.upload_to(g)));
                let y = conv::conv_transpose2d(&mut tape, xv, wv, Some(bv), t, act).unwrap();
                let yt = tape.value(y).clone();
                tape.submit().unwrap();
                let wide = if t.out_channels > 4 { entry } else { "conv_gemm" };
                assert_entry(tape.kernels_run(), wide, "conv_transpose2d");
                assert_eq!(yt.cols(), t.out_len(), "{t:?}: output size");
                let want = act_ref(act, &add_channel_bias(&conv2d_input_grad_ref(&x, &w, &c), &b));
                let atol = 1e-6 * ((t.in_channels * t.kernel * t.kernel) as f64).sqrt() * 4.0;
                assert_close(&download(&yt), &want, atol, 1e-5, &format!("conv_transpose2d {t:?} {act:?} ({entry})"));
            }
        }
    }
}

/// The reference rules for Σ up ⊙ act(conv(x, w) + b) against f64 finite differences, then the
/// GPU backward against the rules.
#[test]
fn conv2d_backward_matches_finite_differences() {
    for (i, s) in [cs(2, 3, 6, 5, 3, 2, 1), cs(3, 2, 5, 7, 4, 1, 2), cs(1, 2, 7, 6, 5, 3, 0), cs(2, 3, 7, 8, 2, 3, 1)]
        .into_iter()
        .enumerate()
    {
        let n = 2;
        let act = Act::Tanh;
        let x = Mat::rand(n, s.in_len(), -1.0, 1.0, 70 + i as u64);
        let w = Mat::rand(s.out_channels, s.weight_cols(), -0.5, 0.5, 71 + i as u64);
        let b = Mat::rand(1, s.out_channels, -0.5, 0.5, 72 + i as u64);
        let up = Mat::rand(n, s.out_len(), -1.0, 1.0, 73 + i as u64);
        let f = |v: &[Mat]| act_ref(act, &add_channel_bias(&conv2d_ref(&v[0], &v[1], &s), &v[2]));
        let pre = add_channel_bias(&conv2d_ref(&x, &w, &s), &b);
        let g = up.zip(&pre, |u, p| u * act_grad(act, p));
        let rules = [
            conv2d_input_grad_ref(&g, &w, &s),
            conv2d_weight_grad_ref(&x, &g, &s),
            channel_sums_ref(&g, s.out_channels),
        ];
        for (g, entry) in devices() {
            let ((val, got), ran) =
                gpu_grads_on(g, &[&x, &w, &b], &up, |t, v| conv::conv2d(t, v[0], v[1], Some(v[2]), s, act));
            // The weight gradient has C_in·K·K > 4 columns.
            assert_entry(&ran, entry, "conv2d backward");
            assert_close(&val, &f(&[x.clone(), w.clone(), b.clone()]), 1e-5, 1e-5, &format!("conv2d forward {s:?}"));
            check_rule(&format!("conv2d {s:?} ({entry})"), &[&x, &w, &b], &up, f, &rules, &got, 1e-5);
        }
    }
}

#[test]
fn conv_transpose2d_backward_matches_finite_differences() {
    for (i, t) in
        [ts(3, 2, 4, 3, 3, 2, 1, 1), ts(2, 3, 3, 4, 4, 2, 1, 0), ts(2, 1, 3, 3, 5, 1, 2, 0)].into_iter().enumerate()
    {
        let n = 2;
        let act = Act::Sigmoid;
        let c = t.as_conv();
        let x = Mat::rand(n, t.in_channels * t.height * t.width, -1.0, 1.0, 80 + i as u64);
        let w = Mat::rand(t.in_channels, t.out_channels * t.kernel * t.kernel, -0.5, 0.5, 81 + i as u64);
        let b = Mat::rand(1, t.out_channels, -0.5, 0.5, 82 + i as u64);
        let up = Mat::rand(n, t.out_len(), -1.0, 1.0, 83 + i as u64);
        let f = |v: &[Mat]| act_ref(act, &add_channel_bias(&conv2d_input_grad_ref(&v[0], &v[1], &c), &v[2]));
        let pre = add_channel_bias(&conv2d_input_grad_ref(&x, &w, &c), &b);
        let g = up.zip(&pre, |u, p| u * act_grad(act, p));
        // The transposed convolution's adjoints are the convolution's forward and weight gradient.
        let rules = [conv2d_ref(&g, &w, &c), conv2d_weight_grad_ref(&g, &x, &c), channel_sums_ref(&g, t.out_channels)];
        for (g, entry) in devices() {
            let ((_, got), ran) =
                gpu_grads_on(g, &[&x, &w, &b], &up, |tp, v| conv::conv_transpose2d(tp, v[0], v[1], Some(v[2]), t, act));
            assert_entry(&ran, entry, "conv_transpose2d backward");
            check_rule(&format!("conv_transpose2d {t:?} ({entry})"), &[&x, &w, &b], &up, f, &rules, &got, 1e-5);
        }
    }
}

/// A weight gradient whose K (batch x output pixels = 4805) spans three 2048-long slices, added
/// into an existing gradient.
#[test]
fn long_weight_gradient_is_sliced_and_accumulates() {
    let s = cs(2, 3, 31, 31, 3, 1, 1);
    let n = 5;
    let x = Mat::rand(n, s.in_len(), -1.0, 1.0, 90);
    let dy = Mat::rand(n, s.out_len(), -1.0, 1.0, 91);
    let d0 = Mat::rand(s.out_channels, s.weight_cols(), -1.0, 1.0, 92);
    let want = conv2d_weight_grad_ref(&x, &dy, &s);
    let atol = 1e-6 * ((n * s.out_height() * s.out_width()) as f64).sqrt() * 4.0;
    for (g, entry) in devices() {
        let mut tape = Tape::no_grad(g);
        let (xg, dyg) = (x.upload_to(g), dy.upload_to(g));
        let fresh = conv::conv2d_weight_grad(&mut tape, &xg, &dyg, &s, None).unwrap();
        let dw = d0.upload_to(g);
        conv::conv2d_weight_grad(&mut tape, &xg, &dyg, &s, Some(&dw)).unwrap();
        tape.submit().unwrap();
        assert_entry(tape.kernels_run(), entry, "sliced weight gradient");
        assert_close(&download(&fresh), &want, atol, 1e-5, &format!("sliced weight gradient ({entry})"));
        let want = want.zip(&d0, |a, b| a + b);
        assert_close(&download(&dw), &want, atol, 1e-5, &format!("sliced weight gradient added ({entry})"));
    }
}

/// More row blocks than 65535 workgroups hold (8 invocations of 8 rows each per workgroup): the
/// grid continues in z. The examples on both sides of the boundary are checked.
#[test]
fn very_many_output_rows_use_the_z_dimension() {
    let s = cs(1, 5, 64, 64, 3, 1, 1);
    let n = 1070; // 1070 x 4096 = 4.38M rows > 65535 x 64
    let x = Mat::rand(n, s.in_len(), -1.0, 1.0, 93);
    let w = Mat::rand(5, 9, -1.0, 1.0, 94);
    for (g, entry) in devices() {
        let mut tape = Tape::no_grad(g);
        let y = conv::conv2d_forward(&mut tape, &x.upload_to(g), &w.upload_to(g), None, &s, Act::Identity).unwrap();
        tape.submit().unwrap();
        assert_entry(tape.kernels_run(), entry, "z grid");
        let y = download(&y);
        // Row block 65535·8 starts at GEMM row 65535·64 = example 1023.98: check examples 0, 1023,
        // 1024 and the last.
        for e in [0, 1023, 1024, n - 1] {
            let xe = Mat::new(1, x.c, x.d[e * x.c..(e + 1) * x.c].to_vec());
            let ye = Mat::new(1, y.c, y.d[e * y.c..(e + 1) * y.c].to_vec());
            let what = format!("example {e} of a 4.4M-row convolution ({entry})");
            assert_close(&ye, &conv2d_ref(&xe, &w, &s), 1e-5, 1e-5, &what);
        }
    }
}

#[test]
fn bad_geometry_is_a_typed_error() {
    let x = Mat::rand(2, 3 * 13 * 11, -1.0, 1.0, 95).upload();
    let w = Mat::rand(5, 27, -1.0, 1.0, 96).upload();
    let mut tape = Tape::no_grad(gpu());
    for (s, what) in [
        (cs(3, 5, 13, 11, 3, 0, 1), "stride 0"),
        (cs(3, 5, 13, 11, 3, 1, 3), "padding as large as the kernel"),
        (cs(3, 5, 13, 12, 3, 1, 1), "input width that disagrees with the tensor"),
        (cs(3, 5, 1, 1, 5, 1, 1), "kernel larger than the padded input"),
    ] {
        let r = conv::conv2d_forward(&mut tape, &x, &w, None, &s, Act::Identity);
        assert!(matches!(r, Err(Error::Shape { .. })), "{what}: {r:?}");
    }
    let t = ts(5, 3, 4, 4, 3, 2, 1, 2);
    assert!(matches!(t.validate(), Err(Error::Shape { .. })), "output_padding >= stride is refused");
}

/// The `subgroup` entry with operand textures (one copy per operand for all of a product's K
/// slices) and with buffers: the same bits, each module proven to have run. The weight gradient's
/// three K slices read the textures filled for the first.
#[test]
fn operand_textures_and_buffers_give_the_same_bits() {
    if !variants().contains(&MatmulVariant::Subgroup) || gpu().matmul_variant() != MatmulVariant::Subgroup {
        return;
    }
    let s = cs(3, 6, 31, 29, 3, 2, 1);
    let n = 20; // K of the weight gradient: 20 x 16 x 15 = 4800, three slices
    let x = Mat::rand(n, s.in_len(), -1.0, 1.0, 95);
    let w = Mat::rand(s.out_channels, s.weight_cols(), -1.0, 1.0, 96);
    let dy = Mat::rand(n, s.out_len(), -1.0, 1.0, 97);
    let mut results: Vec<(String, Vec<Vec<f32>>)> = Vec::new();
    for (g, module) in [
        (gpu_for(MatmulVariant::Subgroup), "conv_subgroup.wgsl+textures:conv_gemm_subgroup"),
        (gpu_operands(Operands::Buffers), "conv_subgroup.wgsl:conv_gemm_subgroup"),
    ] {
        let mut tape = Tape::no_grad(g);
        let (xg, wg, dyg) = (x.upload_to(g), w.upload_to(g), dy.upload_to(g));
        let y = conv::conv2d_forward(&mut tape, &xg, &wg, None, &s, Act::Relu).unwrap();
        let dx = conv::conv2d_input_grad(&mut tape, &dyg, &wg, None, &s, Act::Identity).unwrap();
        let dw = conv::conv2d_weight_grad(&mut tape, &xg, &dyg, &s, None).unwrap();
        tape.submit().unwrap();
        assert!(
            tape.kernel_names_run().keys().any(|k| k.starts_with(module)),
            "expected {module} to run; ran {:?}",
            tape.kernel_names_run().keys().collect::<Vec<_>>()
        );
        let atol = 1e-6 * ((n * s.out_height() * s.out_width()) as f64).sqrt() * 4.0;
        assert_close(
            &download(&dw),
            &conv2d_weight_grad_ref(&x, &dy, &s),
            atol,
            1e-5,
            &format!("{module}: weight grad"),
        );
        results.push((module.to_string(), [y, dx, dw].iter().map(|t| t.to_vec(g).unwrap()).collect()));
    }
    let (a, b) = (&results[0], &results[1]);
    for (i, (x, y)) in a.1.iter().zip(&b.1).enumerate() {
        assert!(
            x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "result {i} differs between {} and {}",
            a.0,
            b.0
        );
    }
}
