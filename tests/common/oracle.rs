//! The f64 CPU reference ("oracle"), free of any GPU: matrices, op(A)·op(B), sums, activations,
//! tolerance checks and finite differences. The native tests include it through `common`, and the
//! browser checks (web/) include the same file, so both targets are judged by one reference.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use wgvae::MatmulVariant;

/// Row-major f64 matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Mat {
    pub r: usize,
    pub c: usize,
    pub d: Vec<f64>,
}

impl Mat {
    pub fn new(r: usize, c: usize, d: Vec<f64>) -> Self {
        assert_eq!(d.len(), r * c);
        Mat { r, c, d }
    }
    pub fn zeros(r: usize, c: usize) -> Self {
        Mat::new(r, c, vec![0.0; r * c])
    }
    /// Uniform(lo, hi) values from a seeded generator, rounded to f32 so the GPU sees the same.
    pub fn rand(r: usize, c: usize, lo: f64, hi: f64, seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Mat::new(r, c, (0..r * c).map(|_| rng.random_range(lo..hi) as f32 as f64).collect())
    }
    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.d[i * self.c + j]
    }
    pub fn t(&self) -> Mat {
        let mut o = Mat::zeros(self.c, self.r);
        for i in 0..self.r {
            for j in 0..self.c {
                o.d[j * self.r + i] = self.at(i, j);
            }
        }
        o
    }
    pub fn map(&self, f: impl Fn(f64) -> f64) -> Mat {
        Mat::new(self.r, self.c, self.d.iter().map(|&x| f(x)).collect())
    }
    pub fn zip(&self, o: &Mat, f: impl Fn(f64, f64) -> f64) -> Mat {
        assert_eq!((self.r, self.c), (o.r, o.c));
        Mat::new(self.r, self.c, self.d.iter().zip(&o.d).map(|(&a, &b)| f(a, b)).collect())
    }
    pub fn f32s(&self) -> Vec<f32> {
        self.d.iter().map(|&x| x as f32).collect()
    }
    pub fn sum(&self) -> f64 {
        self.d.iter().sum()
    }
    /// Σ self ⊙ o (a scalar loss whose gradient w.r.t. self is o).
    pub fn dot(&self, o: &Mat) -> f64 {
        self.d.iter().zip(&o.d).map(|(a, b)| a * b).sum()
    }
}

/// op(A)·op(B) in f64.
pub fn matmul(a: &Mat, b: &Mat, ta: bool, tb: bool) -> Mat {
    let a = if ta { a.t() } else { a.clone() };
    let b = if tb { b.t() } else { b.clone() };
    assert_eq!(a.c, b.r);
    let mut o = Mat::zeros(a.r, b.c);
    for i in 0..a.r {
        for k in 0..a.c {
            let x = a.at(i, k);
            for j in 0..b.c {
                o.d[i * b.c + j] += x * b.d[k * b.c + j];
            }
        }
    }
    o
}

/// Adds a [1,N] row to every row.
pub fn add_row(m: &Mat, row: &Mat) -> Mat {
    let mut o = m.clone();
    for i in 0..m.r {
        for j in 0..m.c {
            o.d[i * m.c + j] += row.d[j];
        }
    }
    o
}

pub fn col_sum(m: &Mat) -> Mat {
    let mut o = Mat::zeros(1, m.c);
    for i in 0..m.r {
        for j in 0..m.c {
            o.d[j] += m.at(i, j);
        }
    }
    o
}

pub fn row_sum(m: &Mat) -> Mat {
    Mat::new(m.r, 1, (0..m.r).map(|i| (0..m.c).map(|j| m.at(i, j)).sum()).collect())
}

/// Activation ids as in shaders/common.wgsl.
pub fn act_fwd(act: wgvae::ops::Act, x: f64) -> f64 {
    use wgvae::ops::Act::*;
    match act {
        Identity => x,
        Relu => x.max(0.0),
        LeakyRelu(a) => {
            if x > 0.0 {
                x
            } else {
                a as f64 * x
            }
        }
        Tanh => x.tanh(),
        Sigmoid => 1.0 / (1.0 + (-x).exp()),
        Elu(a) => {
            if x > 0.0 {
                x
            } else {
                a as f64 * x.exp_m1()
            }
        }
    }
}

/// d act / dx at x (the reference uses the input, the GPU the output: they must agree).
pub fn act_grad(act: wgvae::ops::Act, x: f64) -> f64 {
    use wgvae::ops::Act::*;
    match act {
        Identity => 1.0,
        Relu => (x > 0.0) as u8 as f64,
        LeakyRelu(a) => {
            if x > 0.0 {
                1.0
            } else {
                a as f64
            }
        }
        Tanh => 1.0 - x.tanh().powi(2),
        Sigmoid => {
            let s = 1.0 / (1.0 + (-x).exp());
            s * (1.0 - s)
        }
        Elu(a) => {
            if x > 0.0 {
                1.0
            } else {
                a as f64 * x.exp()
            }
        }
    }
}

/// Checks |got − want| <= atol + rtol·|want| elementwise (and that every value is finite),
/// describing the worst element when it fails.
pub fn check_close(got: &Mat, want: &Mat, atol: f64, rtol: f64, what: &str) -> Result<(), String> {
    if (got.r, got.c) != (want.r, want.c) {
        return Err(format!("{what}: shape {}x{} but the reference is {}x{}", got.r, got.c, want.r, want.c));
    }
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.d.iter().zip(&want.d).enumerate() {
        if !g.is_finite() {
            return Err(format!("{what}: element {i} is {g}"));
        }
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    if worst.0 > 0.0 {
        let i = worst.1;
        return Err(format!(
            "{what}: element {i} (row {}, col {}) is {} but the f64 reference says {} (atol {atol}, rtol {rtol})",
            i / want.c,
            i % want.c,
            got.d[i],
            want.d[i]
        ));
    }
    Ok(())
}

/// Central finite differences of a scalar function of `x`, in f64.
pub fn fd_grad(x: &Mat, h: f64, f: impl Fn(&Mat) -> f64) -> Mat {
    let mut g = Mat::zeros(x.r, x.c);
    let mut xp = x.clone();
    for i in 0..x.d.len() {
        let x0 = x.d[i];
        xp.d[i] = x0 + h;
        let fp = f(&xp);
        xp.d[i] = x0 - h;
        let fm = f(&xp);
        xp.d[i] = x0;
        g.d[i] = (fp - fm) / (2.0 * h);
    }
    g
}

/// KL(N(mu, exp(lv)) || N(0, I)) per row, [B,Z] -> [B,1].
pub fn kl_ref(mu: &Mat, lv: &Mat) -> Mat {
    let e = mu.zip(lv, |m, l| 0.5 * (m * m + l.exp() - 1.0 - l));
    row_sum(&e)
}

/// Binary cross-entropy of logits x against targets t per row, [B,D] -> [B,1] (the stable form).
pub fn bce_ref(x: &Mat, t: &Mat) -> Mat {
    row_sum(&x.zip(t, |x, t| x.max(0.0) - x * t + (-x.abs()).exp().ln_1p()))
}

/// The kernel each variant must run for a shape (README, "Kernels and variants"): the vec4 paths
/// need every vec4 they load to be a 16-byte aligned run within one row of a stored operand, and
/// the subgroup kernel also stores C as vec4s.
pub fn expected_kernel(v: MatmulVariant, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> &'static str {
    let vec4 = k.is_multiple_of(4) && (!ta || m.is_multiple_of(4)) && (tb || n.is_multiple_of(4));
    match v {
        MatmulVariant::Tiled => "matmul_tiled",
        MatmulVariant::Subgroup if vec4 && n.is_multiple_of(4) => "matmul_subgroup",
        MatmulVariant::Register if vec4 && n.is_multiple_of(4) => "matmul_unrolled",
        MatmulVariant::Register | MatmulVariant::Subgroup if vec4 => "matmul_register4",
        MatmulVariant::Register | MatmulVariant::Subgroup => "matmul_register",
    }
}

/// The entry point the tiled kernel must run for `tile` on a shape: the blocked tiles with vec4
/// staging take `matmul_tiled_blocked4` exactly when every operand's contiguous dimension is a
/// multiple of 4, and otherwise run as the same tile with scalar staging. Spelled out here rather
/// than taken from `TileConfig::entry`, so that a wrong choice there fails.
pub fn expected_tile_kernel(tile: wgvae::TileConfig, m: usize, k: usize, n: usize, ta: bool, tb: bool) -> &'static str {
    let vec4 = k.is_multiple_of(4) && (!ta || m.is_multiple_of(4)) && (tb || n.is_multiple_of(4));
    match (tile.blocked, tile.vec4 && vec4) {
        (false, _) => "matmul_tiled",
        (true, false) => "matmul_tiled_blocked",
        (true, true) => "matmul_tiled_blocked4",
    }
}

/// Calls `f(n, out_index, in_index, co, w_col)` for every tap of convolution `s` over a batch of
/// `batch`: output value (n, out_index) of channel co receives input value (n, in_index) times
/// weight \[co, w_col\] (NCHW rows, zero padding: taps that fall in the padding are skipped).
pub fn conv_taps(batch: usize, s: &wgvae::ops::conv::ConvShape, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let (oh, ow, k) = (s.out_height(), s.out_width(), s.kernel);
    for n in 0..batch {
        for co in 0..s.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    for ci in 0..s.in_channels {
                        for ky in 0..k {
                            for kx in 0..k {
                                let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                                let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                                if iy < 0 || ix < 0 || iy >= s.height as isize || ix >= s.width as isize {
                                    continue;
                                }
                                let xi = (ci * s.height + iy as usize) * s.width + ix as usize;
                                f(n, (co * oh + oy) * ow + ox, xi, co, (ci * k + ky) * k + kx);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Convolution `s` of x\[N, C_in·H·W\] by w\[C_out, C_in·K·K\] in f64: \[N, C_out·OH·OW\].
pub fn conv2d_ref(x: &Mat, w: &Mat, s: &wgvae::ops::conv::ConvShape) -> Mat {
    let mut y = Mat::zeros(x.r, s.out_len());
    conv_taps(x.r, s, |n, o, i, co, wc| y.d[n * y.c + o] += x.at(n, i) * w.at(co, wc));
    y
}

/// The adjoint of [`conv2d_ref`] in x: dx\[N, C_in·H·W\] from dy\[N, C_out·OH·OW\] (also the
/// transposed convolution of dy by w).
pub fn conv2d_input_grad_ref(dy: &Mat, w: &Mat, s: &wgvae::ops::conv::ConvShape) -> Mat {
    let mut dx = Mat::zeros(dy.r, s.in_len());
    conv_taps(dy.r, s, |n, o, i, co, wc| dx.d[n * dx.c + i] += dy.at(n, o) * w.at(co, wc));
    dx
}

/// The adjoint of [`conv2d_ref`] in w: dw\[C_out, C_in·K·K\] from x and dy.
pub fn conv2d_weight_grad_ref(x: &Mat, dy: &Mat, s: &wgvae::ops::conv::ConvShape) -> Mat {
    let mut dw = Mat::zeros(s.out_channels, s.weight_cols());
    conv_taps(x.r, s, |n, o, i, co, wc| dw.d[co * dw.c + wc] += dy.at(n, o) * x.at(n, i));
    dw
}

/// Per-channel sums \[1, C\] of y\[N, C·P\].
pub fn channel_sums_ref(y: &Mat, channels: usize) -> Mat {
    let per = y.c / channels;
    let mut s = Mat::zeros(1, channels);
    for n in 0..y.r {
        for j in 0..y.c {
            s.d[j / per] += y.at(n, j);
        }
    }
    s
}

/// Adds b\[1, C\] to every value of channel c of y\[N, C·P\].
pub fn add_channel_bias(y: &Mat, b: &Mat) -> Mat {
    let per = y.c / b.c;
    let mut o = y.clone();
    for n in 0..y.r {
        for j in 0..y.c {
            o.d[n * y.c + j] += b.d[j / per];
        }
    }
    o
}
