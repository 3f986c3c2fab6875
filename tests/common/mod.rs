//! The f64 CPU reference ("oracle") every GPU kernel and backward rule is checked against, plus
//! shared helpers: one GPU per test binary, seeded data, tolerance checks, finite differences.
#![allow(dead_code)]

use std::sync::{Mutex, OnceLock};

use rand::{Rng, SeedableRng};
use wgvae::{Gpu, GpuOptions, MatmulVariant, Tensor};

/// The test program quiets what Mesa prints while adapters are probed (the library itself never
/// touches the environment): lavapipe's conformance warning, and EGL's complaint about a missing
/// XDG_RUNTIME_DIR on headless machines.
pub fn quiet_drivers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("MESA_VK_IGNORE_CONFORMANCE_WARNING").is_none() {
            std::env::set_var("MESA_VK_IGNORE_CONFORMANCE_WARNING", "1");
        }
        if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
            let d = std::env::temp_dir().join(format!("wgvae-test-xdg-{}", std::process::id()));
            if std::fs::create_dir_all(&d).is_ok() {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
                }
                std::env::set_var("XDG_RUNTIME_DIR", d);
            }
        }
    });
}

/// One device shared by every test of a binary (adapter setup and shader JIT are not free).
pub fn gpu() -> &'static Gpu {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    quiet_drivers();
    GPU.get_or_init(|| {
        let g = Gpu::new().expect("tests need a GPU adapter; without a GPU install mesa-vulkan-drivers");
        track(&g);
        g
    })
}

/// A device whose default matmul variant is `v` (one per variant per test binary): backward rules
/// and whole training steps use the device's variant, so this is how they run under each one.
pub fn gpu_for(v: MatmulVariant) -> &'static Gpu {
    static GPUS: [OnceLock<Gpu>; 3] = [const { OnceLock::new() }; 3];
    quiet_drivers();
    let i = MatmulVariant::ALL.iter().position(|&x| x == v).expect("a listed variant");
    GPUS[i].get_or_init(|| {
        let g = Gpu::with_options(GpuOptions { matmul: Some(v), ..Default::default() })
            .unwrap_or_else(|e| panic!("a device with the {} matmul: {e}", v.name()));
        track(&g);
        g
    })
}

/// The matmul variants this adapter can run: every one on the CI adapter (lavapipe). Elsewhere a
/// variant the adapter lacks (`subgroup` needs 8-lane subgroups) is skipped with a note, unless
/// `WGVAE_REQUIRE_ALL_VARIANTS=1` (set by .ci/run), which turns the skip into a failure.
pub fn variants() -> Vec<MatmulVariant> {
    MatmulVariant::ALL
        .into_iter()
        .filter(|&v| match gpu().check_variant(v) {
            Ok(()) => true,
            Err(e) if std::env::var_os("WGVAE_REQUIRE_ALL_VARIANTS").is_some() => {
                panic!("WGVAE_REQUIRE_ALL_VARIANTS is set but this adapter cannot run {}: {e}", v.name())
            }
            Err(e) => {
                eprintln!("note: skipping the {} matmul on this adapter: {e}", v.name());
                false
            }
        })
        .collect()
}

/// Asserts that `tape` submitted `entry` (a WGSL entry point) at least once: a test that means to
/// exercise a kernel variant proves it ran instead of trusting the dispatcher's choice.
pub fn assert_ran(tape: &wgvae::Tape, entry: &str, what: &str) {
    let ran = tape.kernels_run();
    assert!(ran.get(entry).copied().unwrap_or(0) > 0, "{what}: expected kernel `{entry}` to run; ran {ran:?}");
}

static TRACKED: Mutex<Vec<Gpu>> = Mutex::new(Vec::new());

/// Remembers a test device so that, with `WGVAE_KERNEL_COVERAGE=DIR` set, the WGSL entry points it
/// dispatched are written to DIR when the test binary exits (`.ci/kernel-coverage` then checks that
/// every entry point in shaders/ ran in some test).
pub fn track(g: &Gpu) {
    let mut t = TRACKED.lock().unwrap_or_else(|p| p.into_inner());
    if t.is_empty() && std::env::var_os("WGVAE_KERNEL_COVERAGE").is_some() {
        #[cfg(unix)]
        // SAFETY: registers a plain extern "C" function; it runs once at process exit.
        unsafe {
            libc::atexit(write_coverage);
        }
    }
    t.push(g.clone());
}

#[cfg(unix)]
extern "C" fn write_coverage() {
    let Some(dir) = std::env::var_os("WGVAE_KERNEL_COVERAGE") else { return };
    let t = TRACKED.lock().unwrap_or_else(|p| p.into_inner());
    let mut entries = std::collections::BTreeSet::new();
    for g in t.iter() {
        entries.extend(g.kernel_dispatches().into_iter().filter(|(_, n)| *n > 0).map(|(e, _)| e));
    }
    let exe = std::env::current_exe().ok();
    let name = exe.as_ref().and_then(|p| p.file_stem()).map(|s| s.to_string_lossy().into_owned());
    let path = std::path::Path::new(&dir).join(format!("{}-{}.txt", name.unwrap_or_default(), std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let text: String = entries.iter().map(|e| format!("{e}\n")).collect();
    let _ = std::fs::write(path, text);
}

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
    pub fn upload(&self) -> Tensor {
        self.upload_to(gpu())
    }
    pub fn upload_to(&self, g: &Gpu) -> Tensor {
        Tensor::from_slice(g, self.r, self.c, &self.f32s()).expect("upload")
    }
    pub fn sum(&self) -> f64 {
        self.d.iter().sum()
    }
    /// Σ self ⊙ o (a scalar loss whose gradient w.r.t. self is o).
    pub fn dot(&self, o: &Mat) -> f64 {
        self.d.iter().zip(&o.d).map(|(a, b)| a * b).sum()
    }
}

/// Reads a tensor back as a Mat (from whichever device holds it).
pub fn download(t: &Tensor) -> Mat {
    let v = t.to_vec(&t.gpu()).expect("download");
    Mat::new(t.rows(), t.cols(), v.into_iter().map(f64::from).collect())
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

/// Asserts |got − want| <= atol + rtol·|want| elementwise, reporting the worst element.
pub fn assert_close(got: &Mat, want: &Mat, atol: f64, rtol: f64, what: &str) {
    assert_eq!((got.r, got.c), (want.r, want.c), "{what}: shape");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.d.iter().zip(&want.d).enumerate() {
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        let excess = (g - w).abs() - (atol + rtol * w.abs());
        if excess > worst.0 {
            worst = (excess, i);
        }
    }
    if worst.0 > 0.0 {
        let i = worst.1;
        panic!(
            "{what}: element {i} (row {}, col {}) is {} but the f64 reference says {} (atol {atol}, rtol {rtol})",
            i / want.c,
            i % want.c,
            got.d[i],
            want.d[i]
        );
    }
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

/// The weights of a one-hidden-layer VAE by their PyTorch names, in the order encoder.0, fc_mu,
/// fc_logvar, decoder.0, decoder.1 (weight, then bias as a \[1, n\] row).
pub fn vae_params(vae: &wgvae::vae::Vae) -> Vec<Mat> {
    let g = vae.head.weight.value().gpu();
    let sd = wgvae::checkpoint::state_dict(&g, vae).expect("state dict");
    ["encoder.0", "fc_mu", "fc_logvar", "decoder.0", "decoder.1"]
        .iter()
        .flat_map(|n| [format!("{n}.weight"), format!("{n}.bias")])
        .map(|name| {
            let (_, shape, v) = sd.iter().find(|(k, _, _)| *k == name).unwrap_or_else(|| panic!("{name} missing"));
            let (r, c) = if shape.len() == 2 { (shape[0], shape[1]) } else { (1, shape[0]) };
            Mat::new(r, c, v.iter().map(|&x| x as f64).collect())
        })
        .collect()
}
