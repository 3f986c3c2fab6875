//! The f64 CPU reference ("oracle") every GPU kernel and backward rule is checked against, plus
//! shared helpers: one GPU per test binary, seeded data, tolerance checks, finite differences.
#![allow(dead_code)]

use std::sync::{Mutex, OnceLock};

use wgvae::{ops, Gpu, GpuOptions, MatmulVariant, Operands, Tape, Tensor, Var, Words};

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

/// A device whose CPU-adapter kernels type their vec4 views as `w` (one per kind per test binary),
/// with the adapter's default matmul variant.
pub fn gpu_words(w: Words) -> &'static Gpu {
    static GPUS: [OnceLock<Gpu>; 2] = [const { OnceLock::new() }; 2];
    quiet_drivers();
    let i = Words::ALL.iter().position(|&x| x == w).expect("a listed kind");
    GPUS[i].get_or_init(|| {
        let g = Gpu::with_options(GpuOptions { words: Some(w), ..Default::default() })
            .unwrap_or_else(|e| panic!("a device with {} storage words: {e}", w.name()));
        track(&g);
        g
    })
}

/// A device whose `subgroup` matmul reads its operands from `o` (one per kind per test binary),
/// with the adapter's default matmul variant and storage words.
pub fn gpu_operands(o: Operands) -> &'static Gpu {
    static GPUS: [OnceLock<Gpu>; 2] = [const { OnceLock::new() }; 2];
    quiet_drivers();
    let i = Operands::ALL.iter().position(|&x| x == o).expect("a listed kind");
    GPUS[i].get_or_init(|| {
        let g = Gpu::with_options(GpuOptions { operands: Some(o), ..Default::default() })
            .unwrap_or_else(|e| panic!("a device with {} operands: {e}", o.name()));
        track(&g);
        g
    })
}

/// The storage-word kinds this adapter can run: both on the CI adapter (lavapipe has 64-bit
/// integers). Elsewhere `u64` is skipped with a note where the adapter lacks them, unless
/// `WGVAE_REQUIRE_ALL_VARIANTS=1`.
pub fn words_kinds() -> Vec<Words> {
    let int64 = gpu().features().contains(wgvae::wgpu::Features::SHADER_INT64);
    Words::ALL
        .into_iter()
        .filter(|&w| match w {
            Words::U64 if !int64 => {
                assert!(
                    std::env::var_os("WGVAE_REQUIRE_ALL_VARIANTS").is_none(),
                    "WGVAE_REQUIRE_ALL_VARIANTS is set but this adapter has no 64-bit integers for u64 words"
                );
                eprintln!("note: skipping u64 storage words: the adapter has no 64-bit integers in shaders");
                false
            }
            _ => true,
        })
        .collect()
}

/// Asserts that a kernel whose name starts with `prefix` (`file[+words]:entry`, see
/// `Gpu::kernel_name_dispatches`) was dispatched on `g`.
pub fn assert_ran_named(g: &Gpu, prefix: &str, what: &str) {
    let ran = g.kernel_name_dispatches();
    assert!(
        ran.iter().any(|(name, &n)| name.starts_with(prefix) && n > 0),
        "{what}: expected a kernel named {prefix}… to run; ran {:?}",
        ran.keys().collect::<Vec<_>>()
    );
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

mod oracle;
pub use oracle::*;

impl Mat {
    pub fn upload(&self) -> Tensor {
        self.upload_to(gpu())
    }
    pub fn upload_to(&self, g: &Gpu) -> Tensor {
        Tensor::from_slice(g, self.r, self.c, &self.f32s()).expect("upload")
    }
}

/// Reads a tensor back as a Mat (from whichever device holds it).
pub fn download(t: &Tensor) -> Mat {
    let v = t.to_vec(&t.gpu()).expect("download");
    Mat::new(t.rows(), t.cols(), v.into_iter().map(f64::from).collect())
}

/// Asserts |got − want| <= atol + rtol·|want| elementwise, reporting the worst element.
pub fn assert_close(got: &Mat, want: &Mat, atol: f64, rtol: f64, what: &str) {
    if let Err(e) = check_close(got, want, atol, rtol, what) {
        panic!("{e}");
    }
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

/// The GPU value of build(leaves) and the gradients of Σ upstream ⊙ build(leaves) (every leaf
/// requires grad): how backward rules are checked against their references.
pub fn gpu_grads(
    inputs: &[&Mat],
    upstream: &Mat,
    build: impl FnOnce(&mut Tape, &[Var]) -> wgvae::Result<Var>,
) -> (Mat, Vec<Mat>) {
    gpu_grads_on(gpu(), inputs, upstream, build).0
}

/// [`gpu_grads`] on device `g`, also returning the kernels the tape ran.
pub fn gpu_grads_on(
    g: &Gpu,
    inputs: &[&Mat],
    upstream: &Mat,
    build: impl FnOnce(&mut Tape, &[Var]) -> wgvae::Result<Var>,
) -> ((Mat, Vec<Mat>), std::collections::BTreeMap<&'static str, u64>) {
    let mut tape = Tape::new(g);
    let vars: Vec<Var> = inputs.iter().map(|m| tape.leaf(m.upload_to(g), true)).collect();
    let y = build(&mut tape, &vars).unwrap();
    let yv = tape.value(y).clone();
    let w = tape.input(upstream.upload_to(g));
    let yw = ops::mul(&mut tape, y, w).unwrap();
    let l = ops::sum(&mut tape, yw).unwrap();
    tape.backward(l).unwrap();
    tape.submit().unwrap();
    ((download(&yv), vars.iter().map(|v| download(tape.grad(*v).unwrap())).collect()), tape.kernels_run().clone())
}

/// A backward rule checked twice: the analytic `reference` gradients of Σ up ⊙ f(inputs) against
/// f64 central finite differences of `f`, then the GPU's gradients `got` against the reference.
pub fn check_rule(
    name: &str,
    inputs: &[&Mat],
    up: &Mat,
    f: impl Fn(&[Mat]) -> Mat,
    reference: &[Mat],
    got: &[Mat],
    tol: f64,
) {
    for (i, x) in inputs.iter().enumerate() {
        let fd = fd_grad(x, 1e-6, |xi| {
            let mut all: Vec<Mat> = inputs.iter().map(|m| (*m).clone()).collect();
            all[i] = xi.clone();
            f(&all).dot(up)
        });
        assert_close(&reference[i], &fd, 1e-6, 1e-6, &format!("{name}: reference rule vs finite differences ({i})"));
        assert_close(&got[i], &reference[i], tol, tol, &format!("{name}: GPU backward vs reference ({i})"));
    }
}
