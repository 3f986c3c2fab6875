//! The browser's share of the kernel oracle tests (`tests/kernels.rs`, `tests/vae_kernels.rs`):
//! the same cases against the same f64 reference (`tests/common/oracle.rs`, included as
//! [`crate::oracle`]), run on the browser's WebGPU, where a second WGSL compiler (Tint in
//! Chromium) builds the kernels. Each check also asserts which kernel ran, so a variant that fell
//! back to another cannot pass as itself.
//!
//! Covered: matmul in every layout at odd and vec4-aligned sizes for every variant the adapter
//! can run and for two blocked tiles with prefetch and vec4 staging (and accumulate mode), the Philox uniforms bit for bit against the CPU mirror,
//! reparameterization, KL and BCE forward and backward, fused Adam (scalar and vec4 kernels), and
//! the column, row and full reductions, and the convolution kernels (forward, both gradients,
//! transposed). Where the adapter has subgroups but cannot run the `subgroup` matmul, its module
//! is still compiled.

use serde::Serialize;
use wgvae::ops::matmul::{matmul_accumulate, matmul_forward, MatmulOpts};
use wgvae::ops::vae::{self as vops, Noise};
use wgvae::ops::{self, reduce};
use wgvae::{nn::Adam, nn::Param, rng, wgpu, Gpu, MatmulVariant, Optimizer, Tape, Tensor, TileConfig, Var};

use crate::oracle::*;

/// One check's outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Passed (or skipped).
    pub ok: bool,
    /// Skipped because the adapter cannot run it (said why in `detail`).
    pub skipped: bool,
    /// Cases run, or the failure.
    pub detail: String,
}

type R = Result<String, String>;

fn up(gpu: &Gpu, m: &Mat) -> Result<Tensor, String> {
    Tensor::from_slice(gpu, m.r, m.c, &m.f32s()).map_err(|e| e.to_string())
}

async fn down(gpu: &Gpu, t: &Tensor) -> Result<Mat, String> {
    let v = t.to_vec_async(gpu).await.map_err(|e| e.to_string())?;
    Ok(Mat::new(t.rows(), t.cols(), v.into_iter().map(f64::from).collect()))
}

fn ran(tape: &Tape, entry: &str, what: &str) -> Result<(), String> {
    if tape.kernels_run().get(entry).copied().unwrap_or(0) == 0 {
        let got: Vec<&str> = tape.kernels_run().keys().copied().collect();
        return Err(format!("{what}: expected {entry} to run, but the tape ran {got:?}"));
    }
    Ok(())
}

fn e(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// (M, K, N): odd sizes past every tile and workgroup multiple, one MNIST-like long K, and
/// vec4-aligned ones so the vec4 and subgroup kernels run.
const SIZES: [(usize, usize, usize); 6] =
    [(7, 3, 5), (33, 17, 65), (130, 785, 33), (1, 130, 7), (32, 64, 36), (68, 400, 20)];

#[allow(clippy::too_many_arguments)]
async fn matmul_case(
    gpu: &Gpu,
    v: MatmulVariant,
    tile: Option<TileConfig>,
    (m, k, n): (usize, usize, usize),
    ta: bool,
    tb: bool,
    acc: bool,
    seed: u64,
) -> R {
    let a = if ta { Mat::rand(k, m, -1.0, 1.0, seed) } else { Mat::rand(m, k, -1.0, 1.0, seed) };
    let b = if tb { Mat::rand(n, k, -1.0, 1.0, seed + 1) } else { Mat::rand(k, n, -1.0, 1.0, seed + 1) };
    let c0 = Mat::rand(m, n, -1.0, 1.0, seed + 2);
    let mut want = matmul(&a, &b, ta, tb);
    let mut tape = Tape::no_grad(gpu);
    let o = MatmulOpts::nn().trans(ta, tb).variant(v);
    let o = if let Some(t) = tile { o.tile(t) } else { o };
    let c = if acc {
        want = want.zip(&c0, |x, y| x + y);
        let c = up(gpu, &c0)?;
        matmul_accumulate(&mut tape, &up(gpu, &a)?, &up(gpu, &b)?, &c, o).map_err(e)?;
        c
    } else {
        matmul_forward(&mut tape, &up(gpu, &a)?, &up(gpu, &b)?, None, o).map_err(e)?
    };
    tape.submit().map_err(e)?;
    let name = tile.map_or(v.name().to_string(), |t| format!("tiled {t}"));
    let what = format!("{name} matmul {m}x{k}x{n} ta={ta} tb={tb} accumulate={acc}");
    let kernel = match tile {
        Some(t) => expected_tile_kernel(t, m, k, n, ta, tb),
        None => expected_kernel(v, m, k, n, ta, tb),
    };
    ran(&tape, kernel, &what)?;
    // Split-K's second pass, where the tile splits and K is two chunks of 128 deep.
    let split = tile.is_some_and(|t| t.split > 1) && k >= 256;
    if split {
        ran(&tape, "matmul_split_reduce", &what)?;
    }
    let atol = 1e-6 * (k as f64).sqrt() * 4.0;
    check_close(&down(gpu, &c).await?, &want, atol, 1e-5, &what)?;
    Ok(if split { format!("{kernel} + matmul_split_reduce") } else { kernel.to_string() })
}

async fn matmul_variant(gpu: &Gpu, v: MatmulVariant, tile: Option<TileConfig>) -> R {
    let mut kernels = std::collections::BTreeSet::new();
    let mut cases = 0;
    for (i, &s) in SIZES.iter().enumerate() {
        for ta in [false, true] {
            for tb in [false, true] {
                for acc in [false, true] {
                    kernels.insert(matmul_case(gpu, v, tile, s, ta, tb, acc, 100 + i as u64).await?);
                    cases += 1;
                }
            }
        }
    }
    Ok(format!("{cases} cases, kernels {kernels:?}"))
}

/// GPU value and gradients of Σ upstream ⊙ build(leaves).
async fn grads(
    gpu: &Gpu,
    inputs: &[&Mat],
    upstream: &Mat,
    build: impl FnOnce(&mut Tape, &[Var]) -> wgvae::Result<Var>,
) -> Result<(Mat, Vec<Mat>), String> {
    let mut tape = Tape::new(gpu);
    let mut vars = Vec::new();
    for m in inputs {
        vars.push(tape.leaf(up(gpu, m)?, true));
    }
    let y = build(&mut tape, &vars).map_err(e)?;
    let yv = tape.value(y).clone();
    let w = tape.input(up(gpu, upstream)?);
    let yw = ops::mul(&mut tape, y, w).map_err(e)?;
    let l = ops::sum(&mut tape, yw).map_err(e)?;
    tape.backward(l).map_err(e)?;
    tape.submit().map_err(e)?;
    let mut g = Vec::new();
    for v in &vars {
        let t = tape.grad(*v).ok_or("no gradient")?.clone();
        g.push(down(gpu, &t).await?);
    }
    Ok((down(gpu, &yv).await?, g))
}

/// The analytic rule against f64 finite differences, then the GPU gradient against the rule.
fn rule(
    name: &str,
    inputs: &[&Mat],
    upm: &Mat,
    f: impl Fn(&[Mat]) -> Mat,
    reference: &[Mat],
    got: &[Mat],
    tol: f64,
) -> R {
    for (i, x) in inputs.iter().enumerate() {
        let fd = fd_grad(x, 1e-6, |xi| {
            let mut all: Vec<Mat> = inputs.iter().map(|m| (*m).clone()).collect();
            all[i] = xi.clone();
            f(&all).dot(upm)
        });
        check_close(&reference[i], &fd, 1e-6, 1e-6, &format!("{name}: reference rule vs finite differences ({i})"))?;
        check_close(&got[i], &reference[i], tol, tol, &format!("{name}: GPU backward vs reference ({i})"))?;
    }
    Ok("forward and backward match".into())
}

async fn kl(gpu: &Gpu) -> R {
    let (b, z) = (7, 13);
    let mu = Mat::rand(b, z, -2.0, 2.0, 1);
    let lv = Mat::rand(b, z, -3.0, 2.0, 2);
    let upm = Mat::rand(b, 1, -1.0, 1.0, 3);
    let (val, got) = grads(gpu, &[&mu, &lv], &upm, |t, v| vops::kl_normal(t, v[0], v[1])).await?;
    check_close(&val, &kl_ref(&mu, &lv), 1e-5, 1e-5, "KL forward")?;
    let dmu = Mat::new(b, z, (0..b * z).map(|i| upm.d[i / z] * mu.d[i]).collect());
    let dlv = Mat::new(b, z, (0..b * z).map(|i| upm.d[i / z] * 0.5 * (lv.d[i].exp() - 1.0)).collect());
    rule("KL", &[&mu, &lv], &upm, |v| kl_ref(&v[0], &v[1]), &[dmu, dlv], &got, 1e-5)
}

async fn bce(gpu: &Gpu) -> R {
    let (b, d) = (5, 785);
    let mut x = Mat::rand(b, d, -8.0, 8.0, 4);
    x.d[0] = 100.0;
    x.d[1] = -100.0;
    let t = Mat::rand(b, d, 0.0, 1.0, 5);
    let upm = Mat::rand(b, 1, -1.0, 1.0, 6);
    let tt = up(gpu, &t)?;
    let (val, got) = grads(gpu, &[&x], &upm, |tp, v| vops::bce_with_logits(tp, v[0], &tt)).await?;
    check_close(&val, &bce_ref(&x, &t), 2e-3, 1e-5, "BCE forward")?;
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let dx = Mat::new(b, d, (0..b * d).map(|i| upm.d[i / d] * (sig(x.d[i]) - t.d[i])).collect());
    rule("BCE", &[&x], &upm, |v| bce_ref(&v[0], &t), &[dx], &got, 1e-5)
}

async fn reparameterize(gpu: &Gpu) -> R {
    let (b, z) = (9, 7);
    let mu = Mat::rand(b, z, -1.0, 1.0, 10);
    let lv = Mat::rand(b, z, -2.0, 1.0, 11);
    let eps = Mat::new(b, z, rng::normals(b * z, 5, 2, 0).into_iter().map(|x| x as f32 as f64).collect());
    let upm = Mat::rand(b, z, -1.0, 1.0, 12);
    let f = |v: &[Mat]| v[0].zip(&v[1].zip(&eps, |l, e| (0.5 * l).exp() * e), |m, s| m + s);
    let et = up(gpu, &eps)?;
    let (val, got) = grads(gpu, &[&mu, &lv], &upm, |t, v| vops::reparameterize(t, v[0], v[1], &et)).await?;
    check_close(&val, &f(&[mu.clone(), lv.clone()]), 1e-6, 1e-5, "reparameterization forward")?;
    let dlv = Mat::new(b, z, (0..b * z).map(|i| upm.d[i] * 0.5 * (0.5 * lv.d[i]).exp() * eps.d[i]).collect());
    rule("reparameterization", &[&mu, &lv], &upm, f, &[upm.clone(), dlv], &got, 1e-6)
}

async fn uniforms(gpu: &Gpu) -> R {
    let mut tape = Tape::no_grad(gpu);
    let u = vops::uniform(&mut tape, 37, 29, Noise { seed: 0xDEADBEEF12345, step: 3, stream: 1 }).map_err(e)?;
    tape.submit().map_err(e)?;
    let got = u.to_vec_async(gpu).await.map_err(e)?;
    if got != rng::uniforms(37 * 29, 0xDEADBEEF12345, 3, 1) {
        return Err("Philox uniforms differ from the CPU mirror".into());
    }
    Ok("bit for bit".into())
}

async fn adam(gpu: &Gpu) -> R {
    // 13x27 runs the scalar kernel, 12x20 the vec4 one.
    for (r, c) in [(13, 27), (12, 20)] {
        let p0 = Mat::rand(r, c, -1.0, 1.0, 20);
        let param = Param::new("w", up(gpu, &p0)?);
        let mut opt = Adam::new(0.01).map_err(e)?;
        let (b1, b2, eps, lr) = (0.9f64, 0.999f64, 1e-8f64, 0.01f64);
        let (mut p, mut m, mut v) = (p0.clone(), Mat::zeros(r, c), Mat::zeros(r, c));
        for step in 1..=3 {
            let g = Mat::rand(r, c, -1.0, 1.0, 100 + step);
            let mut tape = Tape::new(gpu);
            let w = param.var(&mut tape);
            let gv = tape.input(up(gpu, &g)?);
            let y = ops::mul(&mut tape, w, gv).map_err(e)?;
            let l = ops::sum(&mut tape, y).map_err(e)?;
            tape.backward(l).map_err(e)?;
            opt.step(&mut tape, &[&param]).map_err(e)?;
            tape.submit().map_err(e)?;
            let kernel = if (r * c) % 4 == 0 { "adam_step4" } else { "adam_step" };
            ran(&tape, kernel, &format!("Adam on {r}x{c}"))?;
            let (bc1, bc2) = (1.0 - b1.powi(step as i32), 1.0 - b2.powi(step as i32));
            for i in 0..r * c {
                m.d[i] = b1 * m.d[i] + (1.0 - b1) * g.d[i];
                v.d[i] = b2 * v.d[i] + (1.0 - b2) * g.d[i] * g.d[i];
                p.d[i] -= lr * (m.d[i] / bc1) / ((v.d[i] / bc2).sqrt() + eps);
            }
            check_close(&down(gpu, param.value()).await?, &p, 1e-5, 1e-4, &format!("Adam {r}x{c} step {step}"))?;
        }
    }
    Ok("3 steps, scalar and vec4 kernels".into())
}

async fn convolutions(gpu: &Gpu) -> R {
    use wgvae::ops::conv::{self, ConvShape, ConvTransposeShape};
    let cases = [
        ConvShape { in_channels: 3, out_channels: 5, height: 13, width: 11, kernel: 3, stride: 2, padding: 1 },
        ConvShape { in_channels: 5, out_channels: 2, height: 13, width: 11, kernel: 5, stride: 1, padding: 2 },
    ];
    for (i, s) in cases.iter().enumerate() {
        let x = Mat::rand(3, s.in_len(), -1.0, 1.0, 10 + i as u64);
        let w = Mat::rand(s.out_channels, s.weight_cols(), -0.5, 0.5, 20 + i as u64);
        let b = Mat::rand(1, s.out_channels, -0.5, 0.5, 30 + i as u64);
        let mut tape = Tape::no_grad(gpu);
        let y = conv::conv2d_forward(&mut tape, &up(gpu, &x)?, &up(gpu, &w)?, Some(&up(gpu, &b)?), s, ops::Act::Relu)
            .map_err(e)?;
        let dx = conv::conv2d_input_grad(&mut tape, &y, &up(gpu, &w)?, None, s, ops::Act::Identity).map_err(e)?;
        let dw = conv::conv2d_weight_grad(&mut tape, &up(gpu, &x)?, &y, s, None).map_err(e)?;
        tape.submit().map_err(e)?;
        ran(&tape, "conv_gemm", "conv2d")?;
        let yr = add_channel_bias(&conv2d_ref(&x, &w, s), &b).map(|v| v.max(0.0));
        let atol = 1e-6 * (s.weight_cols() as f64).sqrt() * 4.0;
        check_close(&down(gpu, &y).await?, &yr, atol, 1e-5, &format!("conv2d {s:?}"))?;
        check_close(
            &down(gpu, &dx).await?,
            &conv2d_input_grad_ref(&yr, &w, s),
            1e-4,
            1e-4,
            &format!("conv2d input gradient {s:?}"),
        )?;
        check_close(
            &down(gpu, &dw).await?,
            &conv2d_weight_grad_ref(&x, &yr, s),
            1e-4,
            1e-4,
            &format!("conv2d weight gradient {s:?}"),
        )?;
    }
    let t = ConvTransposeShape {
        in_channels: 3,
        out_channels: 5,
        height: 7,
        width: 6,
        kernel: 3,
        stride: 2,
        padding: 1,
        output_padding: 1,
    };
    let x = Mat::rand(3, t.in_channels * t.height * t.width, -1.0, 1.0, 40);
    let w = Mat::rand(t.in_channels, t.out_channels * t.kernel * t.kernel, -0.5, 0.5, 50);
    let mut tape = Tape::new(gpu);
    let (xv, wv) = (tape.input(up(gpu, &x)?), tape.input(up(gpu, &w)?));
    let y = conv::conv_transpose2d(&mut tape, xv, wv, None, t, ops::Act::Identity).map_err(e)?;
    let yt = tape.value(y).clone();
    tape.submit().map_err(e)?;
    check_close(&down(gpu, &yt).await?, &conv2d_input_grad_ref(&x, &w, &t.as_conv()), 1e-5, 1e-5, "conv_transpose2d")?;
    Ok("conv2d forward and both gradients at 13x11, conv_transpose2d with output padding".into())
}

async fn reductions(gpu: &Gpu) -> R {
    for &(r, c) in &[(1, 1), (7, 3), (129, 65), (1, 4097), (785, 130), (3, 70001)] {
        let x = Mat::rand(r, c, -1.0, 1.0, (r * c) as u64);
        let gx = up(gpu, &x)?;
        let mut tape = Tape::no_grad(gpu);
        let cs = reduce::col_sum(&mut tape, &gx, 1.0).map_err(e)?;
        let rs = reduce::row_sum(&mut tape, &gx, 1.0).map_err(e)?;
        let s = reduce::sum_all(&mut tape, &gx, 0.5).map_err(e)?;
        tape.submit().map_err(e)?;
        let atol = 1e-6 * ((r * c) as f64).sqrt() * 2.0;
        check_close(&down(gpu, &cs).await?, &col_sum(&x), atol, 1e-5, &format!("col_sum {r}x{c}"))?;
        check_close(&down(gpu, &rs).await?, &row_sum(&x), atol, 1e-5, &format!("row_sum {r}x{c}"))?;
        check_close(&down(gpu, &s).await?, &Mat::new(1, 1, vec![0.5 * x.sum()]), atol, 1e-5, &format!("sum {r}x{c}"))?;
    }
    Ok("6 shapes up to 3x70001".into())
}

/// The `subgroup` matmul's module through the browser's compiler, without running it: an adapter
/// whose subgroups are not 8 lanes cannot run the kernel, but Tint must still accept the module
/// (its idle subgroups leave before their broadcasts, which Tint's `subgroup_uniformity` rule
/// would reject; the module turns the rule off). One layout with bias and ReLU.
async fn subgroup_module_compiles(gpu: &Gpu) -> R {
    use wgvae::gpu::pipeline::{KernelKey, Module};
    let defines = [
        ("TA", "false"),
        ("TB", "true"),
        ("BIAS", "true"),
        ("ACCUM", "false"),
        ("COLSUM", "false"),
        ("WG", "16u"),
        ("GRAD_ACT", "0u"),
        ("GRAD_ALPHA", "0.0f"),
        ("ACT", "1u"),
        ("ALPHA", "0.0f"),
    ];
    let key = KernelKey {
        module: Module::MatmulSubgroup(gpu.words()),
        entry: "matmul_subgroup",
        defines: defines.iter().map(|&(k, v)| (k, v.to_string())).collect(),
        inputs: 4,
        outputs: 2,
    };
    let scope = gpu.device().push_error_scope(wgpu::ErrorFilter::Validation);
    let compiled = gpu.kernel(&key).map(|k| k.name().to_string()).map_err(e);
    if let Some(err) = scope.pop().await {
        return Err(format!("the browser rejected {}: {err}", key.describe()));
    }
    Ok(format!("compiled {}, not run", compiled?))
}

/// Runs every check (none stops the others) and says how each went.
pub async fn run(gpu: &Gpu) -> Vec<Check> {
    let mut out = Vec::new();
    for v in MatmulVariant::ALL {
        let name = format!("matmul, {} variant, every layout", v.name());
        match gpu.check_variant(v) {
            Ok(()) => record(&mut out, name, matmul_variant(gpu, v, None).await),
            Err(why) => out.push(Check { name, ok: true, skipped: true, detail: format!("skipped: {why}") }),
        }
    }
    let name = "matmul, subgroup variant's module compiles".to_string();
    if gpu.features().contains(wgpu::Features::SUBGROUP) {
        record(&mut out, name, subgroup_module_compiles(gpu).await);
    } else {
        let detail = "skipped: the adapter has no subgroups".to_string();
        out.push(Check { name, ok: true, skipped: true, detail });
    }
    // The GPU tiles with prefetch and vec4 staging, one with split-K, through the browser's WGSL
    // compiler too.
    let shared = gpu.limits().max_compute_workgroup_storage_size;
    let bpv = |m, n| TileConfig::blocked(m, n, 16).prefetched().vec4_staged();
    for t in [bpv(64, 64), bpv(128, 128), bpv(64, 64).split_k(4)] {
        let name = format!("matmul, tiled {t}, every layout");
        match t.check(shared) {
            Ok(()) => record(&mut out, name, matmul_variant(gpu, MatmulVariant::Tiled, Some(t)).await),
            Err(why) => out.push(Check { name, ok: true, skipped: true, detail: format!("skipped: {why}") }),
        }
    }
    record(&mut out, "Philox uniforms".into(), uniforms(gpu).await);
    record(&mut out, "reparameterize".into(), reparameterize(gpu).await);
    record(&mut out, "KL".into(), kl(gpu).await);
    record(&mut out, "BCE with logits".into(), bce(gpu).await);
    record(&mut out, "Adam".into(), adam(gpu).await);
    record(&mut out, "reductions".into(), reductions(gpu).await);
    record(&mut out, "convolutions".into(), convolutions(gpu).await);
    // What no error scope caught reaches the device's handler (browsers report asynchronously).
    if let Err(err) = gpu.check_error() {
        record(&mut out, "no device errors".into(), Err(err.to_string()));
    }
    out
}

fn record(out: &mut Vec<Check>, name: String, r: R) {
    let (ok, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    out.push(Check { name, ok, skipped: false, detail });
}
