//! Which matmul kernel to run for which product size, chosen by measurement once per adapter and
//! driver and cached on disk.
//!
//! The fastest kernel depends on the device and on the size of the product: on a GPU a small
//! product (a VAE layer at batch 128 has 50-100k outputs) needs small tiles to give every core a
//! workgroup, while a large one (4096 x 4096) runs best with large tiles that reuse each staged
//! value more; on a CPU adapter the `subgroup` and `register` kernels are the candidates.
//! [`search`] times every candidate kernel ([`TuneOptions::candidates`]) on representative products
//! of each size class ([`SIZE_CLASSES`], by M·N, and within a class by whether K is at least
//! [`DEEP_K`]) and picks, per class, the kernel with the least total time: a [`MatmulPlan`] for
//! [`Gpu::set_matmul_plan`]. Deep products are a class of their own because the same number of
//! outputs with a long K is where splitting K among workgroups pays ([`TileConfig::split`]): a
//! weight gradient at batch 4096 has the outputs of a batch-128 one and 32 times its K.
//!
//! [`PlanCache`] keeps plans in a JSON file keyed by the adapter (name, backend, type, PCI ids,
//! driver and its version) and by a hash of the matmul kernels' source, so that a new driver or a
//! changed kernel is measured again. The library writes nothing by itself: [`use_plan`] (what the
//! `wgvae` binary calls) loads a cached plan and, when asked, measures and saves a missing one.
//!
//! ```no_run
//! # fn main() -> wgvae::Result<()> {
//! let gpu = wgvae::Gpu::new()?;
//! let report = wgvae::tune::search(&gpu, &wgvae::tune::TuneOptions::for_gpu(&gpu, false), &mut |_| {})?;
//! println!("{}", report.plan);
//! gpu.set_matmul_plan(Some(report.plan))?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::bench::{time_matmul_with, MatmulShape};
use crate::error::{Error, Result};
use crate::gpu::{Gpu, KernelChoice, MatmulPlan, MatmulVariant, PlanRule, TileConfig};

/// Exclusive upper bounds on a product's outputs (M·N) that separate the size classes: below
/// 2^17 (a VAE layer at batch 128), below 2^20 (batch 1024), below 2^22 (batch 4096, 1024²), and
/// the rest (2048² and up).
pub const SIZE_CLASSES: [u64; 3] = [1 << 17, 1 << 20, 1 << 22];

/// The K from which a product is deep: within each size class, deep products get their own rule
/// when their fastest kernel differs (a split-K tile, typically: weight gradients at batch 1024
/// and up, squares from 1024).
pub const DEEP_K: u64 = 1024;

use crate::bench::shape;

/// The classic VAE's three products of its large layer (forward X·Wᵀ, dX = dY·W, dW = dYᵀ·X) at
/// batch 128, 1024 and 4096: what [`TuneOptions::for_gpu`] times, with [`SQUARES`] (CPU adapters
/// skip batch 4096, which takes them seconds; the largest class then takes the choice of the
/// class below it).
pub const LAYER_SHAPES: [MatmulShape; 9] = [
    shape("fc 784->400 fwd, batch 128", 128, 784, 400, false, true),
    shape("fc 400->784 dX, batch 128", 128, 784, 400, false, false),
    shape("fc 400->784 dW, batch 128", 784, 128, 400, true, false),
    shape("fc 784->400 fwd, batch 1024", 1024, 784, 400, false, true),
    shape("fc 400->784 dX, batch 1024", 1024, 784, 400, false, false),
    shape("fc 400->784 dW, batch 1024", 784, 1024, 400, true, false),
    shape("fc 784->400 fwd, batch 4096", 4096, 784, 400, false, true),
    shape("fc 400->784 dX, batch 4096", 4096, 784, 400, false, false),
    shape("fc 400->784 dW, batch 4096", 784, 4096, 400, true, false),
];

/// The classic VAE's narrow products around its latent layer, timed on GPUs (half of a training
/// step's products are narrow, and a GPU runs them very differently from the wide ones they share
/// a size class with): the mu and logvar heads and the decoder's first layer forward at batch 128
/// (5,120 and 51,200 outputs, K = 400 and 20), and the heads' weight gradient at batch 4096
/// (16,000 outputs, K = 4096), which a GPU can only fill by splitting K.
pub const NARROW_SHAPES: [MatmulShape; 3] = [
    shape("fc 400->40 fwd, batch 128", 128, 400, 40, false, true),
    shape("fc 20->400 fwd, batch 128", 128, 20, 400, false, true),
    shape("fc 400->40 dW, batch 4096", 40, 4096, 400, true, false),
];

/// Square products: 1024³ (timed everywhere), 2048³ (GPUs) and 4096³, the size GPU matmul peaks
/// are quoted at (GPUs, with `wgvae tune --all`: a weak GPU takes seconds per kernel over it, too
/// long for the search `train` runs by itself).
pub const SQUARES: [MatmulShape; 3] = [
    shape("square 1024", 1024, 1024, 1024, false, false),
    shape("square 2048", 2048, 2048, 2048, false, false),
    shape("square 4096", 4096, 4096, 4096, false, false),
];

/// What [`search`] measures.
#[derive(Clone, Debug)]
pub struct TuneOptions {
    /// The kernels to compare.
    pub candidates: Vec<KernelChoice>,
    /// The products to time them on.
    pub shapes: Vec<MatmulShape>,
    /// Exclusive upper bounds on M·N between size classes, increasing (see [`SIZE_CLASSES`]).
    pub classes: Vec<u64>,
    /// Products with a K at least this long form classes of their own (see [`DEEP_K`]).
    pub deep_k: u64,
    /// Timing budget per (product, kernel); at least three timed rounds run whatever it says.
    pub seconds: Duration,
}

impl TuneOptions {
    /// The search `wgvae tune` runs on `gpu`: on GPUs every tile of [`TileConfig::ALL`] the device
    /// has workgroup memory for, and the `register` kernel, on [`LAYER_SHAPES`] and the squares up
    /// to 2048 (4096 too with `all`); on CPU adapters the `subgroup` (where it runs) and
    /// `register` kernels, plus every tile with `all`, on the layers at batch 128 and 1024 and
    /// 1024³.
    pub fn for_gpu(gpu: &Gpu, all: bool) -> Self {
        let cpu = gpu.adapter().device_type == wgpu::DeviceType::Cpu;
        let shared = gpu.limits().max_compute_workgroup_storage_size;
        let tiles = TileConfig::ALL.into_iter().filter(|t| t.check(shared).is_ok()).map(KernelChoice::tiled);
        let mut candidates = Vec::new();
        if !cpu || all {
            candidates.extend(tiles);
        }
        for v in [MatmulVariant::Subgroup, MatmulVariant::Register] {
            if gpu.check_variant(v).is_ok() {
                candidates.push(KernelChoice::of(v));
            }
        }
        let shapes = match (cpu, all) {
            (true, _) => [&LAYER_SHAPES[..6], &SQUARES[..1]].concat(),
            (false, false) => [&LAYER_SHAPES[..], &NARROW_SHAPES[..], &SQUARES[..2]].concat(),
            (false, true) => [&LAYER_SHAPES[..], &NARROW_SHAPES[..], &SQUARES[..]].concat(),
        };
        // A GPU times 15 candidates on 14 products, so its budget per pair is shorter: the search a
        // first `wgvae train` waits for stays near 17 s of timing, and a product there takes
        // microseconds to milliseconds, so 0.08 s is still many rounds.
        let seconds = Duration::from_millis(if cpu { 150 } else { 80 });
        TuneOptions { candidates, shapes, classes: SIZE_CLASSES.to_vec(), deep_k: DEEP_K, seconds }
    }
}

/// One timed (product, kernel) of a search.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Measurement {
    /// What the product is.
    pub shape: String,
    /// Rows of C.
    pub m: usize,
    /// Contracted dimension.
    pub k: usize,
    /// Columns of C.
    pub n: usize,
    /// `NN`, `NT`, `TN` or `TT`.
    pub layout: String,
    /// The kernel.
    pub kernel: KernelChoice,
    /// Median milliseconds per product.
    pub ms: f64,
    /// GFLOP/s at the median.
    pub gflops: f64,
}

impl std::fmt::Display for Measurement {
    /// One row: product, kernel, ms, GFLOP/s.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = format!("{} ({}x{}x{} {})", self.shape, self.m, self.k, self.n, self.layout);
        write!(f, "{what:<46} {:<22} {:>10.4} ms {:>9.1} GFLOP/s", self.kernel.to_string(), self.ms, self.gflops)
    }
}

/// What [`search`] reports while it runs.
#[derive(Clone, Copy, Debug)]
pub enum TuneProgress<'a> {
    /// About to time `kernels` candidates on `products` products.
    Starting {
        /// Candidate kernels.
        kernels: usize,
        /// Products per kernel.
        products: usize,
    },
    /// One (product, kernel) was timed.
    Measured(&'a Measurement),
}

/// What [`search`] found: every measurement and the plan made of them, for one adapter.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TuneReport {
    /// [`adapter_key`] of the device measured.
    pub adapter: String,
    /// [`kernels_key`] of the kernels measured.
    pub kernels: String,
    /// The wgvae version that measured.
    pub wgvae: String,
    /// The chosen kernel per size class.
    pub plan: MatmulPlan,
    /// Every (product, kernel) timed.
    pub measurements: Vec<Measurement>,
}

/// Times every candidate on every product of `o` and returns the plan that picks, per size class,
/// the candidate with the least total time over the class's products. `progress` hears when the
/// timing starts and sees each measurement as it is made. A class with no product takes the choice of the nearest measured
/// class below it (above it for the first).
pub fn search(gpu: &Gpu, o: &TuneOptions, progress: &mut dyn FnMut(TuneProgress)) -> Result<TuneReport> {
    if o.candidates.is_empty() || o.shapes.is_empty() {
        return Err(Error::arg("tune", "needs at least one candidate kernel and one product"));
    }
    if !o.classes.windows(2).all(|w| w[0] < w[1]) {
        return Err(Error::arg("tune", "size class bounds must increase"));
    }
    for c in &o.candidates {
        gpu.check_variant(c.variant)?;
        if c.variant == MatmulVariant::Tiled {
            c.tile.check(gpu.limits().max_compute_workgroup_storage_size)?;
        }
    }
    progress(TuneProgress::Starting { kernels: o.candidates.len(), products: o.shapes.len() });
    let mut measurements = Vec::new();
    for s in &o.shapes {
        for &c in &o.candidates {
            let r = time_matmul_with(gpu, s, c, o.seconds)?;
            let m = Measurement {
                shape: s.name.to_string(),
                m: s.m,
                k: s.k,
                n: s.n,
                layout: s.layout().to_string(),
                kernel: c,
                ms: r.seconds * 1e3,
                gflops: r.gflops,
            };
            progress(TuneProgress::Measured(&m));
            measurements.push(m);
        }
    }
    let plan = plan_from(&o.classes, o.deep_k, &o.candidates, &measurements)?;
    Ok(TuneReport {
        adapter: adapter_key(gpu),
        kernels: kernels_key(),
        wgvae: env!("CARGO_PKG_VERSION").to_string(),
        plan,
        measurements,
    })
}

/// The plan that [`search`] makes of `measurements`: per size class (bounds `classes`), the
/// candidate with the least total time over the class's products (the earlier candidate on a
/// tie); classes without products take the nearest measured class's choice, and neighbouring
/// classes with the same kernel merge into one rule. Within a class, the products with K of at
/// least `deep_k` are a class of their own: they get a rule (before the class's other rule, which
/// is then chosen on the other products) where their winner differs; a class without deep
/// products has no such rule.
pub fn plan_from(
    classes: &[u64],
    deep_k: u64,
    candidates: &[KernelChoice],
    measurements: &[Measurement],
) -> Result<MatmulPlan> {
    let class_of =
        |m: &Measurement| classes.iter().position(|&b| (m.m as u64 * m.n as u64) < b).unwrap_or(classes.len());
    let is_deep = |m: &Measurement| m.k as u64 >= deep_k;
    // The fastest candidate in total over the measurements `keep` selects.
    let winner = |keep: &dyn Fn(&Measurement) -> bool| -> Option<KernelChoice> {
        let mut best: Option<(KernelChoice, f64)> = None;
        for c in candidates {
            let ms: Vec<f64> = measurements.iter().filter(|m| keep(m) && m.kernel == *c).map(|m| m.ms).collect();
            if ms.is_empty() {
                continue;
            }
            let t: f64 = ms.iter().sum();
            if best.is_none_or(|(_, w)| t < w) {
                best = Some((*c, t));
            }
        }
        best.map(|(c, _)| c)
    };
    // A class's own rule serves its shallow products when it has any (its deep ones may get a rule
    // of their own), else all of them.
    let mut best: Vec<Option<KernelChoice>> = (0..=classes.len())
        .map(|i| winner(&|m| class_of(m) == i && !is_deep(m)).or_else(|| winner(&|m| class_of(m) == i)))
        .collect();
    let deep: Vec<Option<KernelChoice>> =
        (0..=classes.len()).map(|i| winner(&|m| class_of(m) == i && is_deep(m))).collect();
    // Fill unmeasured classes from below, then the leading ones from above.
    for i in 1..best.len() {
        if best[i].is_none() {
            best[i] = best[i - 1];
        }
    }
    let first = best.iter().flatten().next().copied().ok_or_else(|| Error::arg("tune", "nothing was measured"))?;
    let mut rules: Vec<PlanRule> = Vec::new();
    for (i, b) in best.iter().enumerate() {
        let kernel = b.unwrap_or(first);
        let below = classes.get(i).copied();
        // A deep rule follows the rules of every smaller class (so it only sees this class's
        // products) and precedes this class's own rule.
        let deep_rule = deep[i].filter(|d| *d != kernel);
        if let Some(d) = deep_rule {
            rules.push(PlanRule { below, min_k: Some(deep_k), kernel: d });
        }
        match rules.last_mut() {
            Some(last) if deep_rule.is_none() && last.min_k.is_none() && last.kernel == kernel => last.below = below,
            _ => rules.push(PlanRule::new(below, kernel)),
        }
    }
    Ok(MatmulPlan { rules })
}

/// Identifies an adapter and its driver for the cache: name, backend, type, PCI vendor and device
/// ids, driver and driver version.
pub fn adapter_key(gpu: &Gpu) -> String {
    let a = gpu.adapter();
    format!(
        "{} | {:?} {:?} | {:04x}:{:04x} | {} {}",
        a.name, a.backend, a.device_type, a.vendor, a.device, a.driver, a.driver_info
    )
}

/// A hash (FNV-1a, 64 bits) of the matmul kernels' source: a changed kernel invalidates the plans
/// measured with the old one.
pub fn kernels_key() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for src in [
        include_str!("../shaders/common.wgsl"),
        include_str!("../shaders/matmul.wgsl"),
        include_str!("../shaders/matmul_subgroup.wgsl"),
    ] {
        for b in src.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct CacheFile {
    /// Format version of the file.
    version: u32,
    plans: Vec<TuneReport>,
}

const CACHE_VERSION: u32 = 1;

/// Plans measured on this machine, one per (adapter, kernels), in a JSON file.
#[derive(Debug)]
pub struct PlanCache {
    path: PathBuf,
    file: CacheFile,
}

impl PlanCache {
    /// `matmul-plans.json` in `$WGVAE_CACHE_DIR`, else `$XDG_CACHE_HOME/wgvae`, else
    /// `$HOME/.cache/wgvae`; `None` when none of them is set.
    pub fn default_path() -> Option<PathBuf> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        let dir = var("WGVAE_CACHE_DIR")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("wgvae")))
            .or_else(|| var("HOME").map(|d| d.join(".cache").join("wgvae")))?;
        Some(dir.join("matmul-plans.json"))
    }

    /// Reads the cache at `path`; a missing file is an empty cache. An unreadable or malformed file
    /// is an error naming it (delete it, or run `wgvae tune` to rewrite it).
    pub fn open(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::empty(path)),
            Err(source) => return Err(Error::Io { path: path.to_path_buf(), source }),
        };
        let bad = |why: String| Error::arg("matmul plan cache", format!("{}: {why}", path.display()));
        let file: CacheFile = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if file.version != CACHE_VERSION {
            return Err(bad(format!("format version {} (this wgvae writes {CACHE_VERSION})", file.version)));
        }
        Ok(PlanCache { path: path.to_path_buf(), file })
    }

    /// An empty cache that [`PlanCache::save`] writes to `path` (replacing what is there).
    pub fn empty(path: &Path) -> Self {
        PlanCache { path: path.to_path_buf(), file: CacheFile { version: CACHE_VERSION, plans: vec![] } }
    }

    /// Where the cache lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plan measured on `gpu`'s adapter and driver with the current kernels, if any.
    pub fn get(&self, gpu: &Gpu) -> Option<&TuneReport> {
        let (adapter, kernels) = (adapter_key(gpu), kernels_key());
        self.file.plans.iter().find(|p| p.adapter == adapter && p.kernels == kernels)
    }

    /// Every cached report (all adapters).
    pub fn reports(&self) -> &[TuneReport] {
        &self.file.plans
    }

    /// Adds `report`, replacing any earlier one for its adapter (whatever kernels it measured).
    pub fn put(&mut self, report: TuneReport) {
        self.file.plans.retain(|p| p.adapter != report.adapter);
        self.file.plans.push(report);
    }

    /// Writes the cache (creating its directory), atomically.
    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io { path: dir.to_path_buf(), source })?;
        }
        let text =
            serde_json::to_string_pretty(&self.file).map_err(|e| Error::arg("matmul plan cache", e.to_string()))?;
        crate::checkpoint::write_atomic(&self.path, text.as_bytes())
    }
}

/// Where the plan [`use_plan`] installed came from.
#[derive(Clone, Debug, PartialEq)]
pub enum PlanSource {
    /// Read from the cache at this path.
    Cached(PathBuf),
    /// Measured now and saved to the cache at this path.
    Measured(PathBuf),
    /// Measured now and installed, but the cache could not be written (why): the next run
    /// measures again.
    Unsaved(String),
    /// No plan: the device's default variant runs.
    Default,
}

/// Installs the plan cached for `gpu` at `path`; when there is none and `search_if_missing`,
/// measures one with [`TuneOptions::for_gpu`] (telling `progress` as [`search`] does), installs it
/// and saves it (replacing a cache file that cannot be read). Without a cached plan and without a
/// search, the device keeps its default variant, and an unreadable cache is an error.
pub fn use_plan(
    gpu: &Gpu,
    path: &Path,
    search_if_missing: bool,
    progress: &mut dyn FnMut(TuneProgress),
) -> Result<PlanSource> {
    // A cache that cannot be read is an error unless a search is allowed, which then replaces it
    // (or runs unsaved when the path cannot be written either).
    let mut cache = match PlanCache::open(path) {
        Ok(c) => c,
        Err(_) if search_if_missing => PlanCache::empty(path),
        Err(e) => return Err(e),
    };
    if let Some(r) = cache.get(gpu) {
        gpu.set_matmul_plan(Some(r.plan.clone()))?;
        return Ok(PlanSource::Cached(path.to_path_buf()));
    }
    if !search_if_missing {
        return Ok(PlanSource::Default);
    }
    let report = search(gpu, &TuneOptions::for_gpu(gpu, false), progress)?;
    gpu.set_matmul_plan(Some(report.plan.clone()))?;
    cache.put(report);
    match cache.save() {
        Ok(()) => Ok(PlanSource::Measured(path.to_path_buf())),
        Err(e) => Ok(PlanSource::Unsaved(e.to_string())),
    }
}

/// Whether the `wgvae` binary measures a plan on its own when none is cached: on GPUs, where the
/// tile matters and a search takes seconds; not on CPU adapters, whose default (`subgroup` or
/// `register`) is the measured best there and where a search takes minutes (`wgvae tune` runs it
/// on request).
pub fn searches_by_default(gpu: &Gpu) -> bool {
    gpu.adapter().device_type != wgpu::DeviceType::Cpu
}
