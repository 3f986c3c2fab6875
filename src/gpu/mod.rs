//! GPU context: adapter choice, device limits, and the caches every op goes through.
//!
//! [`Gpu`] is a cheap, clonable handle (`Arc` inside) that is `Send + Sync`, so one device can be
//! shared by threads (tests do). It owns
//! * the [`pool`] of buffers (by size class, reused so that a repeated step allocates nothing),
//! * the [`pipeline`] cache (kernel + defines + entry point -> compiled pipeline) and the bind
//!   group cache (keyed by buffer identity),
//! * the kernel-variant choice for this adapter ([`MatmulVariant`]).

mod future;
pub mod pipeline;
pub mod pool;
pub mod profile;

pub(crate) use future::oneshot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
pub use pipeline::Module;
use pool::Pool;
pub use profile::{Profile, ProfileRow};

/// Which matmul implementation to use. Both compute the same thing; they differ in how they use
/// the hardware.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulVariant {
    /// Shared-memory tiled kernel (64x64 tile, 4x4 outputs per invocation): for discrete and
    /// integrated GPUs, where workgroup memory is fast and barriers are cheap.
    Tiled,
    /// Register-blocked kernels with no shared memory and no barriers: for CPU adapters without
    /// 8-lane subgroups (SwiftShader, llvmpipe through GL), where barriers are emulated and every
    /// storage load is a loop over lanes. Shapes in multiples of 4 run `matmul_unrolled` (16x8
    /// outputs per invocation in named variables: SwiftShader keeps indexed local arrays in
    /// memory); others load operands as vec4s where they can (`matmul_register4`), else scalars.
    Register,
    /// The register kernel with operands shared between the 8 lanes of a subgroup, so each float
    /// is loaded once per subgroup: the fastest choice on llvmpipe/lavapipe. Needs 8-wide
    /// subgroups and dimensions that are multiples of 4; other cases run [`MatmulVariant::Register`].
    Subgroup,
}

impl MatmulVariant {
    /// All variants, for tests and benchmarks that must cover each one.
    pub const ALL: [MatmulVariant; 3] = [MatmulVariant::Tiled, MatmulVariant::Register, MatmulVariant::Subgroup];

    /// Short lowercase name (`tiled`, `register`, `subgroup`).
    pub fn name(self) -> &'static str {
        match self {
            MatmulVariant::Tiled => "tiled",
            MatmulVariant::Register => "register",
            MatmulVariant::Subgroup => "subgroup",
        }
    }

    /// The variant an adapter of type `t` should use by default (`subgroups_of_8`: whether it
    /// runs 8-lane subgroups).
    pub fn for_adapter(t: wgpu::DeviceType, subgroups_of_8: bool) -> Self {
        match t {
            wgpu::DeviceType::Cpu if subgroups_of_8 => MatmulVariant::Subgroup,
            wgpu::DeviceType::Cpu => MatmulVariant::Register,
            _ => MatmulVariant::Tiled,
        }
    }
}

impl std::fmt::Display for MatmulVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MatmulVariant {
    type Err = Error;
    /// Parses the name printed by [`MatmulVariant::name`] (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tiled" => Ok(MatmulVariant::Tiled),
            "register" | "vec4" => Ok(MatmulVariant::Register),
            "subgroup" => Ok(MatmulVariant::Subgroup),
            other => Err(Error::arg("matmul variant", format!("`{other}` is not one of: tiled, register, subgroup"))),
        }
    }
}

/// How the vec4 storage views of the CPU-adapter kernels (the `subgroup` matmul and Adam) are
/// typed in WGSL. Both hold the same bytes and give bit-identical results; they differ in what the
/// shader compiler makes of an access.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Words {
    /// `vec4<f32>`: every adapter.
    F32,
    /// `vec2<u64>`, unpacked in registers: needs [`wgpu::Features::SHADER_INT64`]. Mesa's
    /// llvmpipe/lavapipe compiles a storage access into a loop over SIMD lanes with work per
    /// component, so two 64-bit components move 16 bytes for about half the work of four 32-bit
    /// ones. The default on CPU adapters that have 64-bit integers. With it, Adam also updates
    /// eight elements per invocation through 32-byte `Word8` views (one `vec4<u64>` access).
    U64,
}

impl Words {
    /// Both kinds, for tests and benchmarks that must cover each one.
    pub const ALL: [Words; 2] = [Words::F32, Words::U64];

    /// Short lowercase name (`f32`, `u64`).
    pub fn name(self) -> &'static str {
        match self {
            Words::F32 => "f32",
            Words::U64 => "u64",
        }
    }

    /// The kind an adapter of type `t` should use by default (`int64`: whether the device has
    /// [`wgpu::Features::SHADER_INT64`]). GPUs load a vec4 in one access either way and keep `f32`.
    pub fn for_adapter(t: wgpu::DeviceType, int64: bool) -> Self {
        if t == wgpu::DeviceType::Cpu && int64 {
            Words::U64
        } else {
            Words::F32
        }
    }
}

impl std::fmt::Display for Words {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Words {
    type Err = Error;
    /// Parses the name printed by [`Words::name`] (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Words::F32),
            "u64" => Ok(Words::U64),
            other => Err(Error::arg("storage words", format!("`{other}` is not one of: f32, u64"))),
        }
    }
}

/// Where the `subgroup` matmul reads its operands A and B from. Both give bit-identical results;
/// they differ in what lavapipe's compiler makes of a load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operands {
    /// The tensors' storage buffers, as every other kernel reads them.
    Buffers,
    /// Read-only storage textures (`rgba32float`, 1024 texels wide) that each operand is copied
    /// into before the product (a `copy_buffer_to_texture`, one or two per operand). Mesa 22.3's
    /// lavapipe fetches texels with straight-line vector code, but compiles a storage-buffer load
    /// into a loop over the lanes whose vector insert goes through the stack on CPUs without
    /// AVX-512: there a buffer load costs 5-8x a texel's (`shaders/matmul_operands_texture.wgsl`,
    /// BENCHMARKS.md). The default wherever the `subgroup` kernel runs.
    Textures,
}

impl Operands {
    /// Both kinds, for tests and benchmarks that must cover each one.
    pub const ALL: [Operands; 2] = [Operands::Buffers, Operands::Textures];

    /// Short lowercase name (`buffers`, `textures`).
    pub fn name(self) -> &'static str {
        match self {
            Operands::Buffers => "buffers",
            Operands::Textures => "textures",
        }
    }
}

impl std::fmt::Display for Operands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Operands {
    type Err = Error;
    /// Parses the name printed by [`Operands::name`] (case-insensitive).
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "buffers" => Ok(Operands::Buffers),
            "textures" => Ok(Operands::Textures),
            other => Err(Error::arg("matmul operands", format!("`{other}` is not one of: buffers, textures"))),
        }
    }
}

/// The tile of the [`MatmulVariant::Tiled`] kernel: a workgroup of 16x16 invocations computes
/// `m` x `n` outputs, each invocation (`m`/16) x (`n`/16), staging slabs of `k` along the contracted
/// dimension in workgroup memory. Small tiles give small products enough workgroups to fill a GPU;
/// large ones reuse each staged value more. `wgvae tune` measures which wins for which size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileConfig {
    /// Rows of C per workgroup (a multiple of 16; of 64 when `blocked`).
    pub m: u32,
    /// Columns of C per workgroup (a multiple of 16; of 64 when `blocked`).
    pub n: u32,
    /// Slab depth along K.
    pub k: u32,
    /// Each invocation owns blocks of 4x4 consecutive outputs and reads its operands from
    /// workgroup memory as vec4s (`matmul_tiled_blocked`), instead of single outputs strided by 16
    /// read one f32 at a time (`matmul_tiled`).
    pub blocked: bool,
    /// Each invocation loads its share of the next slab from global memory into registers before
    /// the arithmetic on the current one (software pipelining: the loads' latency hides behind the
    /// multiply-adds, at the cost of one more register set), instead of just before staging.
    pub prefetch: bool,
    /// A blocked tile that stages its slabs from global memory as vec4s (`matmul_tiled_blocked4`)
    /// where the product's shape allows it (every operand's contiguous dimension a multiple of 4,
    /// as in all of the VAE's layers); other shapes run the same tile with scalar staging.
    pub vec4: bool,
    /// Split-K: up to this many workgroups share each output tile, each taking a chunk of K (at
    /// least [`TileConfig::MIN_SPLIT_K`] deep) and writing partial sums that a second pass
    /// (`matmul_split_reduce`) adds up in a fixed order before the epilogue. For products with
    /// few output tiles and a long K (weight gradients at large batch, narrow layers), which
    /// would otherwise leave most of a GPU idle. 1: no split.
    pub split: u32,
}

impl TileConfig {
    /// An `m` x `n` tile with slabs of `k`, outputs strided by 16 (`matmul_tiled`).
    pub const fn new(m: u32, n: u32, k: u32) -> Self {
        TileConfig { m, n, k, blocked: false, prefetch: false, vec4: false, split: 1 }
    }
    /// An `m` x `n` tile with slabs of `k`, 4x4 output blocks read as vec4s
    /// (`matmul_tiled_blocked`).
    pub const fn blocked(m: u32, n: u32, k: u32) -> Self {
        TileConfig { m, n, k, blocked: true, prefetch: false, vec4: false, split: 1 }
    }
    /// This tile with the next slab's global loads issued before the current slab's arithmetic.
    pub const fn prefetched(self) -> Self {
        TileConfig { prefetch: true, ..self }
    }
    /// This (blocked) tile with slabs staged as vec4s where the shape allows.
    pub const fn vec4_staged(self) -> Self {
        TileConfig { vec4: true, ..self }
    }
    /// This tile with K split among up to `splits` workgroups per output tile (see
    /// [`TileConfig::split`]).
    pub const fn split_k(self, splits: u32) -> Self {
        TileConfig { split: splits, ..self }
    }
    /// The shallowest chunk of K a split-K workgroup takes: below it, writing and re-reading a
    /// partial sum per output costs more than the split gains (a product whose K is shorter than
    /// two chunks runs unsplit).
    pub const MIN_SPLIT_K: u32 = 128;
    /// The largest split a tile may ask for.
    pub const MAX_SPLIT: u32 = 16;

    /// How a K range of `len` divides among this tile's splits, at most `max_parts` of them (the
    /// partial sums take `parts` x M x N values): (chunk, number of chunks). The chunk is a
    /// multiple of the slab depth and at least [`TileConfig::MIN_SPLIT_K`]; a range shorter than
    /// two such chunks, or a `max_parts` below 2, is one chunk, no split.
    pub fn split_chunks(self, len: usize, max_parts: usize) -> (usize, usize) {
        let (k, s) = (self.k as usize, (self.split.max(1) as usize).min(max_parts));
        if s < 2 || len < 2 * Self::MIN_SPLIT_K as usize {
            return (len.max(1), 1);
        }
        let chunk = len.div_ceil(s).div_ceil(k) * k;
        let chunk = chunk.max(Self::MIN_SPLIT_K as usize);
        (chunk, len.div_ceil(chunk))
    }
    /// The most memory split-K's partial sums may take, in bytes (with the device's buffer
    /// limits): a product large enough to need more has output tiles enough to fill any GPU.
    pub const MAX_SPLIT_BYTES: u64 = 64 << 20;

    /// The tile used when nothing was measured: 64x64, slabs of 16.
    pub const DEFAULT: TileConfig = TileConfig::new(64, 64, 16);
    /// The tiles the tuner measures (and the tests prove against the f64 reference).
    pub const ALL: [TileConfig; 14] = [
        TileConfig::new(32, 32, 16),
        TileConfig::DEFAULT,
        TileConfig::new(128, 64, 16),
        TileConfig::new(64, 128, 16),
        TileConfig::new(128, 128, 8),
        TileConfig::blocked(64, 64, 16),
        TileConfig::blocked(128, 128, 8),
        TileConfig::blocked(128, 128, 16),
        TileConfig::blocked(64, 64, 16).prefetched().vec4_staged(),
        TileConfig::blocked(128, 128, 8).prefetched().vec4_staged(),
        TileConfig::blocked(128, 128, 16).prefetched().vec4_staged(),
        TileConfig::blocked(64, 64, 16).prefetched().vec4_staged().split_k(4),
        TileConfig::blocked(128, 128, 16).prefetched().vec4_staged().split_k(4),
        TileConfig::blocked(64, 64, 16).prefetched().vec4_staged().split_k(16),
    ];

    /// The WGSL entry point that runs this tile on a product whose shape is `aligned` for vec4
    /// loads ([`crate::ops::matmul::vec4_aligned`]).
    pub fn entry(self, aligned: bool) -> &'static str {
        match (self.blocked, self.vec4 && aligned) {
            (true, true) => "matmul_tiled_blocked4",
            (true, false) => "matmul_tiled_blocked",
            (false, _) => "matmul_tiled",
        }
    }

    /// Refuses tiles the kernel cannot run: sides that are not multiples of 16 (up to 256), slabs
    /// that 256 invocations cannot stage evenly, or more workgroup memory than `max_shared` bytes.
    pub fn check(self, max_shared: u32) -> Result<()> {
        let bad = |why: String| Err(Error::arg("matmul tile", format!("{self}: {why}")));
        if self.m == 0 || self.n == 0 || self.k == 0 || !self.m.is_multiple_of(16) || !self.n.is_multiple_of(16) {
            return bad("rows and columns must be positive multiples of 16".into());
        }
        if self.m > 256 || self.n > 256 || self.k > 64 {
            return bad("at most 256x256 with slabs of 64".into());
        }
        if !(self.m * self.k).is_multiple_of(256) || !(self.n * self.k).is_multiple_of(256) {
            return bad("rows x slab and columns x slab must be multiples of 256".into());
        }
        if self.blocked && (!self.m.is_multiple_of(64) || !self.n.is_multiple_of(64)) {
            return bad("a blocked tile's rows and columns must be multiples of 64".into());
        }
        if self.split == 0 || self.split > Self::MAX_SPLIT {
            return bad(format!("split-K must be 1 to {} (s1 to s{0})", Self::MAX_SPLIT));
        }
        if self.vec4 && !self.blocked {
            return bad("vec4 staging (v) is for blocked tiles (b)".into());
        }
        if self.vec4 && (!(self.m * self.k).is_multiple_of(1024) || !(self.n * self.k).is_multiple_of(1024)) {
            return bad("with vec4 staging, rows x slab and columns x slab must be multiples of 1024".into());
        }
        let shared = (self.m + self.n) * self.k * 4;
        if shared > max_shared {
            return bad(format!("needs {shared} bytes of workgroup memory, the device has {max_shared}"));
        }
        Ok(())
    }
}

impl std::fmt::Display for TileConfig {
    /// `MxNxK`, e.g. `64x64x16`, followed by `b` when blocked, `p` when it prefetches, `v`
    /// when it stages vec4s and `s` with the number of splits when K is split, in that order
    /// (`128x128x8b`, `128x128x16bpv`, `64x64x16bpvs4`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flag = |on: bool, c: &'static str| if on { c } else { "" };
        let (b, p, v) = (flag(self.blocked, "b"), flag(self.prefetch, "p"), flag(self.vec4, "v"));
        let s = if self.split != 1 { format!("s{}", self.split) } else { String::new() };
        write!(f, "{}x{}x{}{b}{p}{v}{s}", self.m, self.n, self.k)
    }
}

impl std::str::FromStr for TileConfig {
    type Err = Error;
    /// Parses `MxNxK`, with `b` (blocked), `p` (prefetch), `v` (vec4 staging) and `s` followed by
    /// a number (split-K) after K, in that order, where wanted.
    fn from_str(s: &str) -> Result<Self> {
        let flag = |d: &str, c: char| d.strip_suffix(c).map_or((d.to_string(), false), |d| (d.to_string(), true));
        let bad = || {
            Error::arg(
                "matmul tile",
                format!(
                    "`{s}` is not MxNxK followed by b, p, v, sN if wanted (e.g. 64x64x16, 128x128x8bpv, 64x64x16bs4)"
                ),
            )
        };
        let (rest, split) = match s.rfind('s') {
            Some(i) => (&s[..i], s[i + 1..].parse::<u32>().map_err(|_| bad())?),
            None => (s, 1),
        };
        let (dims, vec4) = flag(rest, 'v');
        let (dims, prefetch) = flag(&dims, 'p');
        let (dims, blocked) = flag(&dims, 'b');
        let v: Vec<u32> = dims.split('x').filter_map(|p| p.trim().parse().ok()).collect();
        match v[..] {
            [m, n, k] if dims.split('x').count() == 3 => Ok(TileConfig { m, n, k, blocked, prefetch, vec4, split }),
            _ => Err(bad()),
        }
    }
}

/// A matmul kernel: a variant and, for [`MatmulVariant::Tiled`], its tile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KernelChoice {
    /// The variant.
    pub variant: MatmulVariant,
    /// The tile (used by the tiled variant only).
    pub tile: TileConfig,
}

impl KernelChoice {
    /// `variant` with the default tile.
    pub fn of(variant: MatmulVariant) -> Self {
        KernelChoice { variant, tile: TileConfig::DEFAULT }
    }
    /// The tiled kernel with `tile`.
    pub fn tiled(tile: TileConfig) -> Self {
        KernelChoice { variant: MatmulVariant::Tiled, tile }
    }
}

impl std::fmt::Display for KernelChoice {
    /// `tiled 64x64x16`, `register`, `subgroup`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.variant {
            MatmulVariant::Tiled => write!(f, "tiled {}", self.tile),
            v => f.write_str(v.name()),
        }
    }
}

impl std::str::FromStr for KernelChoice {
    type Err = Error;
    /// Parses what [`KernelChoice`]'s `Display` prints (`tiled` alone is the default tile).
    fn from_str(s: &str) -> Result<Self> {
        let mut parts = s.split_whitespace();
        let variant: MatmulVariant = parts.next().unwrap_or("").parse()?;
        let tile = match parts.next() {
            Some(t) if variant == MatmulVariant::Tiled => t.parse()?,
            Some(t) => return Err(Error::arg("matmul kernel", format!("`{t}`: only `tiled` takes a tile"))),
            None => TileConfig::DEFAULT,
        };
        match parts.next() {
            Some(extra) => Err(Error::arg("matmul kernel", format!("unexpected `{extra}` in `{s}`"))),
            None => Ok(KernelChoice { variant, tile }),
        }
    }
}

crate::string_serde!(KernelChoice);

/// Which matmul kernel runs for which product size, chosen by measurement ([`crate::tune`]): the
/// first rule that covers a product decides. Rule `i` covers products with fewer than
/// `rules[i].below` outputs (M·N) and, when it has a `min_k`, a K at least that long (a deep
/// product: one where splitting K pays, see [`TileConfig::split`]); the last rule
/// (`below: None`, no `min_k`) covers the rest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MatmulPlan {
    /// Size classes in increasing order, a class's deep-K rule before its other one.
    pub rules: Vec<PlanRule>,
}

/// One size class of a [`MatmulPlan`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanRule {
    /// Exclusive upper bound on M·N (`None`: no bound).
    pub below: Option<u64>,
    /// Only products whose K is at least this long (`None`: any K).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_k: Option<u64>,
    /// The kernel for this class.
    pub kernel: KernelChoice,
}

impl PlanRule {
    /// A rule for every K.
    pub fn new(below: Option<u64>, kernel: KernelChoice) -> Self {
        PlanRule { below, min_k: None, kernel }
    }
}

impl MatmulPlan {
    /// The kernel for an M x K x N product.
    pub fn choose(&self, m: usize, k: usize, n: usize) -> Option<KernelChoice> {
        let outputs = m as u64 * n as u64;
        self.rules
            .iter()
            .find(|r| r.below.is_none_or(|b| outputs < b) && r.min_k.is_none_or(|d| k as u64 >= d))
            .map(|r| r.kernel)
    }
}

impl std::fmt::Display for MatmulPlan {
    /// `tiled 32x32x16 below 131072 outputs, tiled 64x64x16bpvs4 below 1048576 outputs with K >=
    /// 1024, tiled 64x64x16 below 1048576 outputs, tiled 128x128x8 above`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, r) in self.rules.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            match r.below {
                Some(b) => write!(f, "{} below {b} outputs", r.kernel)?,
                None if i == 0 && r.min_k.is_none() => write!(f, "{}", r.kernel)?,
                None => write!(f, "{} above", r.kernel)?,
            }
            if let Some(d) = r.min_k {
                write!(f, " with K >= {d}")?;
            }
        }
        Ok(())
    }
}

/// Description of the chosen adapter, as printed by `wgvae info`.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Adapter name, e.g. `llvmpipe (LLVM 15.0.6, 256 bits)`.
    pub name: String,
    /// Backend (Vulkan, Metal, Dx12, Gl).
    pub backend: wgpu::Backend,
    /// Discrete / integrated / virtual / CPU / other.
    pub device_type: wgpu::DeviceType,
    /// Driver name and version.
    pub driver: String,
    /// Driver details.
    pub driver_info: String,
    /// PCI vendor id.
    pub vendor: u32,
    /// PCI device id.
    pub device: u32,
    /// Smallest and largest subgroup (SIMD width) the adapter may use.
    pub subgroup_size: (u32, u32),
}

/// What `wgvae info` prints: the adapter, the kernels chosen for it, and the limits that matter.
#[derive(Clone, Debug, serde::Serialize)]
pub struct AdapterReport {
    /// Adapter name.
    pub adapter: String,
    /// Backend (Vulkan, Metal, Dx12, Gl, BrowserWebGpu).
    pub backend: String,
    /// Discrete / integrated / virtual / CPU / other.
    pub device_type: String,
    /// Driver name.
    pub driver: String,
    /// Driver details.
    pub driver_info: String,
    /// PCI vendor id, hex.
    pub vendor: String,
    /// PCI device id, hex.
    pub device: String,
    /// The matmul variant used by default, or the measured plan (`tuned: ...`) when one is set.
    pub matmul_variant: String,
    /// How the CPU-adapter kernels type their vec4 views ([`Words`]: `f32` or `u64`).
    pub storage_words: String,
    /// Where the `subgroup` matmul reads its operands ([`Operands`]: `buffers` or `textures`).
    pub matmul_operands: String,
    /// Optional features enabled on the device.
    pub features: Vec<String>,
    /// The device limits wgvae checks its sizes against.
    pub limits: std::collections::BTreeMap<String, u64>,
}

impl std::fmt::Display for AdapterReport {
    /// The text `wgvae info` prints.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "adapter        {}", self.adapter)?;
        writeln!(f, "backend        {}", self.backend)?;
        writeln!(f, "device type    {}", self.device_type)?;
        writeln!(f, "driver         {} {}", self.driver, self.driver_info)?;
        writeln!(f, "matmul kernel  {}", self.matmul_variant)?;
        writeln!(f, "storage words  {}", self.storage_words)?;
        writeln!(f, "operands       {}", self.matmul_operands)?;
        let feats =
            if self.features.is_empty() { "(none beyond WebGPU core)".into() } else { self.features.join(", ") };
        writeln!(f, "features       {feats}")?;
        writeln!(f, "limits")?;
        for (k, v) in &self.limits {
            writeln!(f, "  {k:<40} {v}")?;
        }
        Ok(())
    }
}

/// Counters that show what the context has done (used by the pool-reuse test and `wgvae info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// `wgpu::Buffer`s created so far (pool misses).
    pub buffers_created: u64,
    /// Operand textures created so far (pool misses; [`Operands::Textures`]).
    pub textures_created: u64,
    /// Bytes in all created buffers and textures.
    pub bytes_created: u64,
    /// Compute pipelines compiled so far.
    pub pipelines_compiled: u64,
    /// Bind groups created so far (cache misses).
    pub bind_groups_created: u64,
    /// Command buffers submitted.
    pub submissions: u64,
    /// Kernel launches submitted.
    pub dispatches: u64,
    /// Bytes written from the host into GPU buffers (tensor uploads, per-dispatch parameters).
    pub bytes_uploaded: u64,
}

pub(crate) struct GpuInner {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub limits: wgpu::Limits,
    pub features: wgpu::Features,
    pub variant: Mutex<MatmulVariant>,
    /// How the CPU-adapter kernels type their vec4 views (fixed when the device is opened).
    pub words: Words,
    /// Where the `subgroup` matmul reads A and B (see [`Gpu::set_operands`]).
    pub operands: Mutex<Operands>,
    /// Measured per-size kernel choices (see [`Gpu::set_matmul_plan`]).
    pub plan: Mutex<Option<Arc<MatmulPlan>>>,
    pub pool: Mutex<Pool>,
    pub pipelines: Mutex<pipeline::PipelineCache>,
    pub stats: Mutex<GpuStats>,
    /// First uncaptured wgpu error (validation, OOM, device lost): reported by the next submit.
    pub device_error: Arc<Mutex<Option<String>>>,
    /// Bytes between two dispatches' parameter blocks in the per-submit uniform buffer.
    pub params_stride: u64,
    /// Whether submissions time their dispatches (see [`profile`]).
    pub profiling: AtomicBool,
    pub profile: Mutex<profile::ProfileAcc>,
    /// Tensors of ones by shape, uploaded once (see [`Gpu::ones`]).
    pub ones: Mutex<std::collections::HashMap<(usize, usize), crate::tensor::Tensor>>,
}

/// A GPU device and everything cached on it. Clone it freely: clones share the device.
#[derive(Clone)]
pub struct Gpu {
    pub(crate) inner: Arc<GpuInner>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("adapter", &self.inner.summary.name)
            .field("backend", &self.inner.summary.backend)
            .finish()
    }
}

/// Options for [`Gpu::with_options`]. `Default` asks for nothing in particular; [`GpuOptions::from_env`]
/// reads the environment variables the `wgvae` binary honours.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to these backends (default: all).
    pub backends: Option<wgpu::Backends>,
    /// Only adapters whose name contains this (case-insensitive).
    pub adapter_name: Option<String>,
    /// Force a matmul variant (default: chosen from the adapter's type and subgroups).
    pub matmul: Option<MatmulVariant>,
    /// Force how the CPU-adapter kernels type their vec4 views (default: [`Words::for_adapter`]).
    pub words: Option<Words>,
    /// Force where the `subgroup` matmul reads its operands (default: [`Operands::Textures`]).
    pub operands: Option<Operands>,
}

impl GpuOptions {
    /// Options from `WGPU_BACKEND` (e.g. `vulkan`, `gl`), `WGPU_ADAPTER_NAME` (a substring of the
    /// adapter's name), `WGVAE_MATMUL` (`tiled`, `register`, `subgroup`), `WGVAE_WORDS` (`f32`,
    /// `u64`) and `WGVAE_OPERANDS` (`buffers`, `textures`). Reads the environment, changes nothing.
    pub fn from_env() -> Result<Self> {
        let matmul = match std::env::var("WGVAE_MATMUL") {
            Ok(s) if !s.is_empty() => Some(s.parse::<MatmulVariant>()?),
            _ => None,
        };
        let words = match std::env::var("WGVAE_WORDS") {
            Ok(s) if !s.is_empty() => Some(s.parse::<Words>()?),
            _ => None,
        };
        let operands = match std::env::var("WGVAE_OPERANDS") {
            Ok(s) if !s.is_empty() => Some(s.parse::<Operands>()?),
            _ => None,
        };
        Ok(GpuOptions {
            backends: wgpu::Backends::from_env(),
            adapter_name: std::env::var("WGPU_ADAPTER_NAME").ok().filter(|s| !s.is_empty()),
            matmul,
            words,
            operands,
        })
    }
}

fn unsupported_subgroup(adapter: &str, sizes: (u32, u32)) -> Error {
    Error::arg(
        "matmul variant",
        format!(
            "`subgroup` needs 8-lane subgroups, but `{adapter}` has subgroups of {}..{} lanes{}; use `tiled` or `register`",
            sizes.0,
            sizes.1,
            if sizes == (0, 0) { " (or none)" } else { "" }
        ),
    )
}

fn type_rank(t: wgpu::DeviceType) -> u8 {
    match t {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    }
}

fn backend_rank(b: wgpu::Backend) -> u8 {
    match b {
        wgpu::Backend::Vulkan | wgpu::Backend::Metal | wgpu::Backend::Dx12 => 0,
        wgpu::Backend::Gl => 1,
        _ => 2,
    }
}

/// The optional features wgvae uses when the adapter has them: subgroups (the CPU-adapter matmul
/// shares operands between SIMD lanes), 64-bit integers ([`Words::U64`]) and timestamps inside
/// passes (`--profile`).
fn wanted_features(available: wgpu::Features) -> wgpu::Features {
    let timestamps = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    let mut f = available & (wgpu::Features::SUBGROUP | wgpu::Features::SHADER_INT64);
    if available.contains(timestamps) {
        f |= timestamps;
    }
    f
}

impl Gpu {
    /// Opens the best adapter with the options of the environment ([`GpuOptions::from_env`]):
    /// discrete > integrated > virtual > other > CPU, native APIs before OpenGL. Blocks; see
    /// [`Gpu::new_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::from_env()?)
    }

    /// Opens an adapter with explicit options (see [`GpuOptions`]). Blocks; see
    /// [`Gpu::with_options_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_options(opts: GpuOptions) -> Result<Self> {
        pollster::block_on(Self::with_options_async(opts))
    }

    /// [`Gpu::new`] for a program that owns its process, like the `wgvae` binary: while adapters
    /// are probed, file descriptor 2 points at /dev/null, and `MESA_VK_IGNORE_CONFORMANCE_WARNING`
    /// is set when unset, so that Mesa's conformance warning and EGL's "XDG_RUNTIME_DIR is invalid"
    /// lines do not drown the program's output (`WGVAE_DRIVER_STDERR=1` keeps them). This changes
    /// process-wide state; a library embedding wgvae should call [`Gpu::new`], which changes none.
    #[cfg(all(feature = "cli", not(target_arch = "wasm32")))]
    pub fn open_quietly() -> Result<Self> {
        if std::env::var_os("WGVAE_DRIVER_STDERR").is_some() {
            return Self::new();
        }
        if std::env::var_os("MESA_VK_IGNORE_CONFORMANCE_WARNING").is_none() {
            // Set before any wgpu call of ours starts threads that read the environment.
            std::env::set_var("MESA_VK_IGNORE_CONFORMANCE_WARNING", "1");
        }
        let opts = GpuOptions::from_env()?;
        #[cfg(unix)]
        // SAFETY: plain fd juggling; every fd opened here is closed, and fd 2 is restored.
        unsafe {
            let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            let saved = libc::dup(2);
            if devnull >= 0 && saved >= 0 {
                libc::dup2(devnull, 2);
                let r = Self::with_options(opts);
                libc::dup2(saved, 2);
                libc::close(saved);
                libc::close(devnull);
                return r;
            }
            for fd in [devnull, saved] {
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        }
        Self::with_options(opts)
    }

    /// [`Gpu::new`] without blocking (the form a browser needs). In a browser the environment is
    /// not read: the default options are used.
    pub async fn new_async() -> Result<Self> {
        #[cfg(not(target_arch = "wasm32"))]
        let opts = GpuOptions::from_env()?;
        #[cfg(target_arch = "wasm32")]
        let opts = GpuOptions::default();
        Self::with_options_async(opts).await
    }

    /// [`Gpu::with_options`] without blocking. Creates its own wgpu instance and device; to run
    /// on a device the program already has, use [`Gpu::from_wgpu`].
    pub async fn with_options_async(opts: GpuOptions) -> Result<Self> {
        let backends = opts.backends.unwrap_or(wgpu::Backends::all());
        let name_filter = opts.adapter_name.as_ref().filter(|s| !s.is_empty()).map(|s| s.to_lowercase());
        // Native APIs first; OpenGL only when they offer nothing (probing GL through EGL on a
        // headless machine is slow and talkative).
        let mut adapters = Vec::new();
        for tier in [wgpu::Backends::PRIMARY, wgpu::Backends::SECONDARY] {
            let tier_backends = backends & tier;
            if tier_backends.is_empty() {
                continue;
            }
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
            desc.backends = tier_backends;
            // wgpu-core validates every call anyway; the Vulkan validation layers (on by default
            // in debug builds) are rarely installed and only add noise. WGPU_DEBUG/WGPU_VALIDATION
            // turn them back on.
            desc.flags = wgpu::InstanceFlags::empty().with_env();
            let instance = wgpu::Instance::new(desc);
            let mut found = instance.enumerate_adapters(tier_backends).await;
            if let Some(f) = &name_filter {
                found.retain(|a| a.get_info().name.to_lowercase().contains(f.as_str()));
            }
            if !found.is_empty() {
                adapters = found;
                break;
            }
        }
        adapters.sort_by_key(|a| {
            let i = a.get_info();
            (type_rank(i.device_type), backend_rank(i.backend))
        });
        let Some(adapter) = adapters.into_iter().next() else {
            let mut detail = Vec::new();
            if backends != wgpu::Backends::all() {
                detail.push(format!("backends {backends:?} (WGPU_BACKEND)"));
            }
            if let Some(f) = &name_filter {
                detail.push(format!("name containing `{f}` (WGPU_ADAPTER_NAME)"));
            }
            let detail = if detail.is_empty() { String::new() } else { format!(" matching {}", detail.join(" and ")) };
            return Err(Error::NoAdapter { detail });
        };
        let info = adapter.get_info();
        // The adapter's own limits: large datasets and batches need its real storage-binding and
        // buffer sizes, not WebGPU's conservative defaults.
        let limits = adapter.limits();
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("wgvae"),
                required_features: wanted_features(adapter.features()),
                required_limits: limits,
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            })
            .await
            .map_err(|e| Error::RequestDevice { adapter: info.name.clone(), reason: e.to_string() })?;
        let gpu = Self::build(&info, device, queue, opts.matmul, opts.words, true)?;
        if let Some(o) = opts.operands {
            gpu.set_operands(o);
        }
        Ok(gpu)
    }

    /// Runs wgvae on a device the program already has (a renderer's, a game engine's), sharing its
    /// memory and queue: no second device is created. `info` is the adapter's
    /// (`adapter.get_info()`): kernels are chosen from its type and subgroup sizes and from the
    /// device's enabled features (request `Features::SUBGROUP` and `Features::SHADER_INT64` for the
    /// fast CPU-adapter kernels and the timestamp features for profiling) and limits. wgvae installs no handler on the device:
    /// its own errors are caught with error scopes around its calls and returned as values, and
    /// anything else still reaches the program's handler.
    pub fn from_wgpu(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        matmul: Option<MatmulVariant>,
    ) -> Result<Self> {
        Self::build(info, device, queue, matmul, None, false)
    }

    fn build(
        info: &wgpu::AdapterInfo,
        device: wgpu::Device,
        queue: wgpu::Queue,
        matmul: Option<MatmulVariant>,
        words: Option<Words>,
        owned: bool,
    ) -> Result<Self> {
        let features = device.features();
        let limits = device.limits();
        let device_error: Arc<Mutex<Option<String>>> = Arc::default();
        if owned {
            // The device is ours: errors no scope caught (device loss) are kept for the next call
            // instead of wgpu's default handler, which panics.
            let slot = device_error.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                if s.is_none() {
                    *s = Some(e.to_string());
                }
            }));
        }
        let subgroups_of_8 =
            features.contains(wgpu::Features::SUBGROUP) && (info.subgroup_min_size, info.subgroup_max_size) == (8, 8);
        let variant = matmul.unwrap_or(MatmulVariant::for_adapter(info.device_type, subgroups_of_8));
        // A forced variant this adapter cannot run is an error, never a silent substitute: a
        // benchmark or test that asks for `subgroup` must measure `subgroup`.
        if variant == MatmulVariant::Subgroup && !subgroups_of_8 {
            return Err(unsupported_subgroup(&info.name, (info.subgroup_min_size, info.subgroup_max_size)));
        }
        let int64 = features.contains(wgpu::Features::SHADER_INT64);
        let words = words.unwrap_or(Words::for_adapter(info.device_type, int64));
        if words == Words::U64 && !int64 {
            return Err(Error::arg(
                "storage words",
                format!(
                    "`u64` needs 64-bit integers in shaders (SHADER_INT64), which `{}` lacks; use `f32`",
                    info.name
                ),
            ));
        }
        let params_stride = (limits.min_uniform_buffer_offset_alignment as u64).max(pipeline::PARAMS_BYTES);
        let summary = AdapterSummary {
            // Browsers may withhold the adapter's description (wgpu maps only that field there).
            name: if info.name.is_empty() { format!("unnamed {:?} adapter", info.backend) } else { info.name.clone() },
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver.clone(),
            driver_info: info.driver_info.clone(),
            vendor: info.vendor,
            device: info.device,
            subgroup_size: (info.subgroup_min_size, info.subgroup_max_size),
        };
        Ok(Gpu {
            inner: Arc::new(GpuInner {
                device,
                queue,
                summary,
                limits,
                features,
                variant: Mutex::new(variant),
                words,
                operands: Mutex::new(Operands::Textures),
                plan: Mutex::new(None),
                pool: Mutex::default(),
                pipelines: Mutex::default(),
                stats: Mutex::default(),
                device_error,
                params_stride,
                profiling: AtomicBool::new(false),
                profile: Mutex::default(),
                ones: Mutex::default(),
            }),
        })
    }

    /// Runs `f` (device calls) inside validation and out-of-memory error scopes and returns what
    /// they caught: wgvae's errors come back as values without touching the device's handler.
    pub(crate) fn scoped<T>(&self, what: &str, f: impl FnOnce() -> T) -> Result<T> {
        let dev = &self.inner.device;
        let oom = dev.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let val = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let r = f();
        let (ev, eo) = (val.pop(), oom.pop());
        // Natively, errors are known when the call returns: these futures are already ready.
        #[cfg(not(target_arch = "wasm32"))]
        {
            if let Some(e) = pollster::block_on(ev).or(pollster::block_on(eo)) {
                return Err(Error::Gpu(format!("{what}: {e}")));
            }
        }
        #[cfg(target_arch = "wasm32")]
        {
            // In a browser they arrive later; the scopes still keep them off the page's handler.
            let _ = (ev, eo, what);
        }
        Ok(r)
    }

    /// The adapter, kernels and limits in use (what `wgvae info` prints).
    pub fn report(&self) -> AdapterReport {
        let a = &self.inner.summary;
        let l = &self.inner.limits;
        let limits = [
            ("max_storage_buffer_binding_size", l.max_storage_buffer_binding_size),
            ("max_buffer_size", l.max_buffer_size),
            ("max_storage_buffers_per_shader_stage", l.max_storage_buffers_per_shader_stage as u64),
            ("max_compute_workgroup_storage_size", l.max_compute_workgroup_storage_size as u64),
            ("max_compute_invocations_per_workgroup", l.max_compute_invocations_per_workgroup as u64),
            ("max_compute_workgroup_size_x", l.max_compute_workgroup_size_x as u64),
            ("max_compute_workgroups_per_dimension", l.max_compute_workgroups_per_dimension as u64),
            ("min_uniform_buffer_offset_alignment", l.min_uniform_buffer_offset_alignment as u64),
            ("min_storage_buffer_offset_alignment", l.min_storage_buffer_offset_alignment as u64),
        ];
        AdapterReport {
            adapter: a.name.clone(),
            backend: format!("{:?}", a.backend),
            device_type: format!("{:?}", a.device_type),
            driver: a.driver.clone(),
            driver_info: a.driver_info.clone(),
            vendor: format!("0x{:04x}", a.vendor),
            device: format!("0x{:04x}", a.device),
            matmul_variant: match self.matmul_plan() {
                Some(p) => format!("tuned: {p}"),
                None => self.matmul_variant().to_string(),
            },
            storage_words: self.words().to_string(),
            matmul_operands: self.operands().to_string(),
            features: self.inner.features.iter_names().map(|(n, _)| n.to_string()).collect(),
            limits: limits.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    /// The chosen adapter.
    pub fn adapter(&self) -> &AdapterSummary {
        &self.inner.summary
    }

    /// The limits the device was created with (the adapter's own).
    pub fn limits(&self) -> &wgpu::Limits {
        &self.inner.limits
    }

    /// Optional features the engine enabled on the device.
    pub fn features(&self) -> wgpu::Features {
        self.inner.features
    }

    /// The raw wgpu device, for interop.
    pub fn device(&self) -> &wgpu::Device {
        &self.inner.device
    }

    /// The raw wgpu queue, for interop.
    pub fn queue(&self) -> &wgpu::Queue {
        &self.inner.queue
    }

    /// Matmul variant used by ops that do not name one.
    pub fn matmul_variant(&self) -> MatmulVariant {
        *self.inner.variant.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `rows x cols` tensor of ones, uploaded on first use and then shared: the seed of every
    /// backward (a fill per step would cost a dispatch, about 50 µs on a CPU adapter). No kernel
    /// may write it; [`crate::Tape`] refuses a dispatch that would.
    pub(crate) fn ones(&self, rows: usize, cols: usize) -> Result<crate::tensor::Tensor> {
        let mut cache = self.inner.ones.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = cache.get(&(rows, cols)) {
            return Ok(t.clone());
        }
        let t = crate::tensor::Tensor::from_slice(self, rows, cols, &vec![1.0; rows * cols])?;
        cache.insert((rows, cols), t.clone());
        Ok(t)
    }

    /// How the `subgroup` matmul and Adam type their vec4 storage views ([`Words`]; chosen when the
    /// device is opened, see [`GpuOptions::words`]).
    pub fn words(&self) -> Words {
        self.inner.words
    }

    /// Where the `subgroup` matmul reads its operands A and B ([`Operands`]; other kernels always
    /// read buffers).
    pub fn operands(&self) -> Operands {
        *self.inner.operands.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes where the `subgroup` matmul reads its operands (benchmarks and tests compare them;
    /// results are the same bits either way). Takes effect for products recorded afterwards.
    pub fn set_operands(&self, o: Operands) {
        *self.inner.operands.lock().unwrap_or_else(|p| p.into_inner()) = o;
    }

    /// Changes the default matmul variant (benchmarks and tests compare them). Refuses a variant
    /// this adapter cannot run.
    pub fn set_matmul_variant(&self, v: MatmulVariant) -> Result<()> {
        self.check_variant(v)?;
        *self.inner.variant.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
    }

    /// Installs (or with `None` removes) a measured plan of which matmul kernel runs for which
    /// product size ([`crate::tune`]). Ops that name no variant follow the plan; ops that name
    /// one, and devices without a plan, use [`Gpu::matmul_variant`]. Refuses kernels this adapter
    /// cannot run.
    pub fn set_matmul_plan(&self, plan: Option<MatmulPlan>) -> Result<()> {
        if let Some(p) = &plan {
            if p.rules.is_empty() || p.rules.last().is_some_and(|r| r.below.is_some() || r.min_k.is_some()) {
                return Err(Error::arg(
                    "matmul plan",
                    "the last rule must cover every size (`below: None`, no `min_k`)",
                ));
            }
            for r in &p.rules {
                self.check_variant(r.kernel.variant)?;
                if r.kernel.variant == MatmulVariant::Tiled {
                    r.kernel.tile.check(self.inner.limits.max_compute_workgroup_storage_size)?;
                }
            }
        }
        *self.inner.plan.lock().unwrap_or_else(|p| p.into_inner()) = plan.map(Arc::new);
        Ok(())
    }

    /// The installed plan, if any (see [`Gpu::set_matmul_plan`]).
    pub fn matmul_plan(&self) -> Option<Arc<MatmulPlan>> {
        self.inner.plan.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this adapter can run `v` (only [`MatmulVariant::Subgroup`] has a requirement).
    pub fn check_variant(&self, v: MatmulVariant) -> Result<()> {
        if v == MatmulVariant::Subgroup && !self.has_subgroups_of_8() {
            return Err(unsupported_subgroup(&self.inner.summary.name, self.inner.summary.subgroup_size));
        }
        Ok(())
    }

    /// What the context has allocated and compiled so far.
    pub fn stats(&self) -> GpuStats {
        *self.inner.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this adapter can time individual dispatches (timestamp queries inside passes).
    pub fn can_profile(&self) -> bool {
        self.inner.features.contains(wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES)
    }

    /// Turns per-kernel GPU timing on or off (see [`profile`]); an error where the adapter cannot
    /// time dispatches. Turning it on clears the previous profile.
    pub fn set_profiling(&self, on: bool) -> Result<()> {
        if on && !self.can_profile() {
            return Err(Error::arg(
                "--profile",
                format!(
                    "`{}` ({:?}) has no timestamp queries inside compute passes, so per-kernel GPU times \
                     cannot be measured on it",
                    self.inner.summary.name, self.inner.summary.backend
                ),
            ));
        }
        if on {
            self.take_profile();
        }
        self.inner.profiling.store(on, Ordering::Relaxed);
        Ok(())
    }

    /// Whether profiling is on.
    pub fn profiling(&self) -> bool {
        self.inner.profiling.load(Ordering::Relaxed)
    }

    /// The profile gathered since profiling was turned on (or last taken), and a fresh start.
    pub fn take_profile(&self) -> Profile {
        self.inner.profile.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Blocks until all submitted work has finished, and reports any GPU error seen meanwhile.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn wait(&self) -> Result<()> {
        pollster::block_on(self.wait_async())
    }

    /// Resolves when all submitted work has finished (natively it drives the device until then).
    pub async fn wait_async(&self) -> Result<()> {
        let (tx, rx) = oneshot();
        self.inner.queue.on_submitted_work_done(move || tx.send(()));
        self.drive()?;
        rx.await.ok_or_else(|| Error::Gpu("the device dropped a completion callback".into()))?;
        self.check_error()
    }

    /// Natively, runs the device until submitted work and its callbacks are done (a browser does
    /// this on its own).
    fn drive(&self) -> Result<()> {
        #[cfg(not(target_arch = "wasm32"))]
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        Ok(())
    }

    /// The first `bytes` of a mappable buffer once the GPU has written them.
    pub(crate) async fn map_read(&self, staging: &pool::PooledBuffer, bytes: u64) -> Result<Vec<u8>> {
        let slice = staging.raw().slice(0..bytes);
        let (tx, rx) = oneshot();
        slice.map_async(wgpu::MapMode::Read, move |r| tx.send(r));
        self.drive()?;
        rx.await
            .ok_or_else(|| Error::Gpu("the read-back mapping was dropped".into()))?
            .map_err(|e| Error::Gpu(format!("mapping a read-back buffer failed: {e}")))?;
        let out = {
            let view =
                slice.get_mapped_range().map_err(|e| Error::Gpu(format!("reading a mapped buffer failed: {e}")))?;
            view.to_vec()
        };
        staging.raw().unmap();
        self.check_error()?;
        Ok(out)
    }

    /// Copies `bytes` of `src` from `offset` into a staging buffer, submits, and returns them.
    pub(crate) async fn read_buffer(&self, src: &pool::PooledBuffer, offset: u64, bytes: u64) -> Result<Vec<u8>> {
        let staging = self.alloc(pool::BufferKind::Readback, bytes)?;
        let mut enc =
            self.inner.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgvae read") });
        enc.copy_buffer_to_buffer(src.raw(), offset, staging.raw(), 0, bytes);
        self.scoped("reading a tensor back", || self.inner.queue.submit([enc.finish()]))?;
        self.stats_mut().submissions += 1;
        self.map_read(&staging, bytes).await
    }

    /// Returns (and clears) the first GPU error the device reported outside wgvae's error scopes
    /// since the last check (in a browser, errors arrive after the call that caused them).
    pub fn check_error(&self) -> Result<()> {
        match self.inner.device_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(Error::Gpu(e)),
            None => Ok(()),
        }
    }

    pub(crate) fn stats_mut(&self) -> std::sync::MutexGuard<'_, GpuStats> {
        self.inner.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether kernels written for 8-lane subgroups can run (llvmpipe/lavapipe: yes).
    pub fn has_subgroups_of_8(&self) -> bool {
        self.inner.features.contains(wgpu::Features::SUBGROUP) && self.inner.summary.subgroup_size == (8, 8)
    }

    /// Largest number of f32 values one tensor may hold on this device.
    pub fn max_tensor_elements(&self) -> u64 {
        self.inner.limits.max_storage_buffer_binding_size.min(self.inner.limits.max_buffer_size) / 4
    }
}
