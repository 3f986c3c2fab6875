//! GPU context: adapter choice, device limits, and the caches every op goes through.
//!
//! [`Gpu`] is a cheap, clonable handle (`Arc` inside) that is `Send + Sync`, so one device can be
//! shared by threads (tests do). It owns
//! * the [`pool`] of buffers (by size class, reused so that a repeated step allocates nothing),
//! * the [`pipeline`] cache (kernel + defines + entry point -> compiled pipeline) and the bind
//!   group cache (keyed by buffer identity),
//! * the kernel-variant choice for this adapter ([`MatmulVariant`]).

pub mod pipeline;
pub mod pool;
pub mod profile;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

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
    /// Register-blocked kernel with no shared memory and no barriers, loading operands as vec4s
    /// (scalar loads on shapes that are not multiples of 4): for CPU adapters such as Mesa's
    /// llvmpipe/lavapipe, where barriers are emulated and every storage load is a loop over lanes.
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

    /// Parses the name printed by [`MatmulVariant::name`].
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tiled" => Ok(MatmulVariant::Tiled),
            "register" | "vec4" => Ok(MatmulVariant::Register),
            "subgroup" => Ok(MatmulVariant::Subgroup),
            other => Err(Error::arg("matmul variant", format!("`{other}` is not one of: tiled, register, subgroup"))),
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

/// Counters that show what the context has done (used by the pool-reuse test and `wgvae info`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GpuStats {
    /// `wgpu::Buffer`s created so far (pool misses).
    pub buffers_created: u64,
    /// Bytes in all created buffers.
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

/// Options for [`Gpu::with_options`]. The defaults honour `WGPU_BACKEND`, `WGPU_ADAPTER_NAME` and
/// `WGVAE_MATMUL`.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Restrict to these backends (default: `WGPU_BACKEND`, else all).
    pub backends: Option<wgpu::Backends>,
    /// Only adapters whose name contains this (case-insensitive; default: `WGPU_ADAPTER_NAME`).
    pub adapter_name: Option<String>,
    /// Force a matmul variant (default: `WGVAE_MATMUL`, else chosen from the adapter type).
    pub matmul: Option<MatmulVariant>,
}

static QUIET_MESA: Once = Once::new();

/// Mesa's lavapipe prints a conformance warning to stderr for every Vulkan instance; it would
/// drown the program's own output, so ask Mesa to skip it unless the user set the variable.
fn quiet_mesa() {
    QUIET_MESA.call_once(|| {
        if std::env::var_os("MESA_VK_IGNORE_CONFORMANCE_WARNING").is_none() {
            // SAFETY-ish: done once, before any wgpu call of ours creates threads that read the
            // environment; std marks set_var unsafe only from edition 2024 on.
            std::env::set_var("MESA_VK_IGNORE_CONFORMANCE_WARNING", "1");
        }
    });
}

/// Runs `f` with file descriptor 2 pointed at /dev/null. Vulkan/EGL loaders and Mesa print lines
/// such as "XDG_RUNTIME_DIR is invalid" while adapters are probed; they are not errors of ours and
/// would drown the program's own output. `WGVAE_DRIVER_STDERR=1` keeps them.
fn with_quiet_stderr<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(unix)]
    {
        if std::env::var_os("WGVAE_DRIVER_STDERR").is_none() {
            // SAFETY: plain fd juggling; every fd opened here is closed, and fd 2 is restored.
            unsafe {
                let devnull = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                let saved = libc::dup(2);
                if devnull >= 0 && saved >= 0 {
                    libc::dup2(devnull, 2);
                    let r = f();
                    libc::dup2(saved, 2);
                    libc::close(saved);
                    libc::close(devnull);
                    return r;
                }
                if devnull >= 0 {
                    libc::close(devnull);
                }
                if saved >= 0 {
                    libc::close(saved);
                }
            }
        }
    }
    f()
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

impl Gpu {
    /// Opens the best adapter: discrete > integrated > virtual > other > CPU, native APIs before
    /// OpenGL; `WGPU_BACKEND` (e.g. `vulkan`, `gl`) and `WGPU_ADAPTER_NAME` (substring) filter.
    pub fn new() -> Result<Self> {
        Self::with_options(GpuOptions::default())
    }

    /// Opens an adapter with explicit options (see [`GpuOptions`]).
    pub fn with_options(opts: GpuOptions) -> Result<Self> {
        quiet_mesa();
        let backends = opts.backends.or_else(wgpu::Backends::from_env).unwrap_or(wgpu::Backends::all());
        let name_filter = opts
            .adapter_name
            .or_else(|| std::env::var("WGPU_ADAPTER_NAME").ok())
            .filter(|s| !s.is_empty())
            .map(|s| s.to_lowercase());
        // Native APIs first; OpenGL only when they offer nothing. Probing GL through EGL makes Mesa
        // print "XDG_RUNTIME_DIR is invalid" lines on headless machines, which would otherwise
        // drown the program's own output even when Vulkan works.
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
            // Unwanted adapters are dropped inside too: tearing down an EGL display also talks.
            adapters = with_quiet_stderr(|| {
                let instance = wgpu::Instance::new(desc);
                let mut found = pollster::block_on(instance.enumerate_adapters(tier_backends));
                if let Some(f) = &name_filter {
                    found.retain(|a| a.get_info().name.to_lowercase().contains(f.as_str()));
                }
                found
            });
            if !adapters.is_empty() {
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
        // Subgroups let the CPU-adapter matmul share operands between SIMD lanes without memory;
        // timestamps inside passes give `--profile` its per-kernel times (only used when asked).
        let timestamps = wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
        let mut features = adapter.features() & wgpu::Features::SUBGROUP;
        if adapter.features().contains(timestamps) {
            features |= timestamps;
        }
        let (device, queue) = with_quiet_stderr(|| {
            pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("wgvae"),
                required_features: features,
                required_limits: limits.clone(),
                experimental_features: wgpu::ExperimentalFeatures::disabled(),
                memory_hints: wgpu::MemoryHints::Performance,
                trace: wgpu::Trace::Off,
            }))
        })
        .map_err(|e| Error::RequestDevice { adapter: info.name.clone(), reason: e.to_string() })?;
        let device_error: Arc<Mutex<Option<String>>> = Arc::default();
        {
            let slot = device_error.clone();
            // wgpu's default handler panics; a library must turn GPU errors into values instead.
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
                if s.is_none() {
                    *s = Some(e.to_string());
                }
            }));
        }
        let subgroups_of_8 =
            features.contains(wgpu::Features::SUBGROUP) && (info.subgroup_min_size, info.subgroup_max_size) == (8, 8);
        let variant = match opts.matmul {
            Some(v) => v,
            None => match std::env::var("WGVAE_MATMUL") {
                Ok(s) if !s.is_empty() => MatmulVariant::parse(&s)?,
                _ => MatmulVariant::for_adapter(info.device_type, subgroups_of_8),
            },
        };
        // A forced variant this adapter cannot run is an error, never a silent substitute: a
        // benchmark or test that asks for `subgroup` must measure `subgroup`.
        if variant == MatmulVariant::Subgroup && !subgroups_of_8 {
            return Err(unsupported_subgroup(&info.name, (info.subgroup_min_size, info.subgroup_max_size)));
        }
        let params_stride = (limits.min_uniform_buffer_offset_alignment as u64).max(pipeline::PARAMS_BYTES);
        let summary = AdapterSummary {
            name: info.name,
            backend: info.backend,
            device_type: info.device_type,
            driver: info.driver,
            driver_info: info.driver_info,
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
                pool: Mutex::default(),
                pipelines: Mutex::default(),
                stats: Mutex::default(),
                device_error,
                params_stride,
                profiling: AtomicBool::new(false),
                profile: Mutex::default(),
            }),
        })
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

    /// Changes the default matmul variant (benchmarks and tests compare them). Refuses a variant
    /// this adapter cannot run.
    pub fn set_matmul_variant(&self, v: MatmulVariant) -> Result<()> {
        self.check_variant(v)?;
        *self.inner.variant.lock().unwrap_or_else(|p| p.into_inner()) = v;
        Ok(())
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
    pub fn wait(&self) -> Result<()> {
        self.inner
            .device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for the GPU failed: {e}")))?;
        self.check_error()
    }

    /// Returns (and clears) the first GPU error reported since the last check.
    pub(crate) fn check_error(&self) -> Result<()> {
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
