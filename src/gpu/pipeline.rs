//! Kernel sources, the pipeline cache and the bind-group cache.
//!
//! Every kernel follows one binding convention (shaders/common.wgsl documents it):
//! `@binding(0)` is a 64-byte uniform parameter block at a dynamic offset, then `inputs`
//! read-only storage buffers, then `outputs` read-write storage buffers. Compile-time choices
//! (tile sizes, transposes, activation) are `const` definitions prepended to the source; a pipeline
//! is cached under (module, defines, entry point), like override constants but also usable for
//! array sizes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Gpu, Words};
use crate::error::{Error, Result};

/// Bytes of one dispatch's parameter block (16 x u32/f32).
pub const PARAMS_BYTES: u64 = 64;

const COMMON: &str = include_str!("../../shaders/common.wgsl");
const WORDS_F32: &str = include_str!("../../shaders/words_f32.wgsl");
const WORDS_U64: &str = include_str!("../../shaders/words_u64.wgsl");

/// One `.wgsl` file of `shaders/` (a kernel family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Module {
    /// `matmul.wgsl`: C = op(A)·op(B) (+bias) (+activation).
    Matmul,
    /// `matmul_subgroup.wgsl`: the CPU-adapter matmul that shares operands through subgroups, its
    /// vec4 views typed as the given [`Words`].
    MatmulSubgroup(Words),
    /// `matmul_subgroup.wgsl` reading A and B from read-only storage textures
    /// (`matmul_operands_texture.wgsl`, [`crate::Operands::Textures`]): bindings 1 and 2 are
    /// textures the host copies the operands into.
    MatmulSubgroupTextures(Words),
    /// `matmul_unrolled.wgsl`: the `register` variant's kernel for shapes in multiples of 4 (the
    /// `subgroup` kernel's block without subgroups), its vec4 views typed as the given [`Words`].
    MatmulUnrolled(Words),
    /// `elementwise.wgsl`: activations, add/mul/scale/copy/fill, SGD update.
    Elementwise,
    /// `reduce.wgsl`: fixed-order column sums, row sums and full sums.
    Reduce,
    /// `random.wgsl`: Philox4x32-10 normals and uniforms.
    Random,
    /// `vae.wgsl`: reparameterization, KL, Bernoulli and Gaussian reconstruction terms.
    Vae,
    /// `vae_fused.wgsl`: the latent step and the objective fused into few passes (`recon_fused4`
    /// reads and writes through the given [`Words`]).
    VaeFused(Words),
    /// `optim.wgsl`: fused Adam / AdamW, its vec4 views typed as the given [`Words`].
    Optim(Words),
    /// `optim.wgsl`'s `adam_step8t`: reads g, p, m and v from operand textures (bindings 1-4,
    /// [`crate::Operands::Textures`]) and writes p, m and v (bindings 5-7).
    OptimTextures(Words),
    /// `data.wgsl`: batch gathering from the packed u8 dataset (`gather4` writes through the
    /// given [`Words`]).
    Data(Words),
    /// `batchnorm.wgsl`: scaled batch normalization (BN-VAE).
    BatchNorm,
    /// `batchnorm2d.wgsl`: per-channel batch normalization of conv layers (BatchNorm2d) with the
    /// activation fused.
    BatchNorm2d,
    /// `iwae.wgsl`: importance-weighted log-likelihood (sampling, streaming logsumexp).
    Iwae,
    /// `conv.wgsl`: 2-D convolution, its input and weight gradients (transposed convolution) as
    /// implicit GEMMs (`conv.wgsl` + `conv_plain.wgsl`: the `conv_gemm` entry point).
    Conv,
    /// `conv.wgsl` + `conv_subgroup.wgsl`: the same with row operands shared by 8-lane subgroups
    /// (`conv_gemm_subgroup`, llvmpipe).
    ConvSubgroup,
    /// [`Module::ConvSubgroup`] reading its two operands from read-only `r32float` storage
    /// textures (`conv_operands_texture.wgsl`, [`crate::Operands::Textures`]).
    ConvSubgroupTextures,
}

impl Module {
    fn file(self) -> &'static str {
        match self {
            Module::Matmul => "matmul.wgsl",
            Module::MatmulSubgroup(_) => "matmul_subgroup.wgsl",
            Module::MatmulSubgroupTextures(_) => "matmul_subgroup.wgsl",
            Module::MatmulUnrolled(_) => "matmul_unrolled.wgsl",
            Module::Elementwise => "elementwise.wgsl",
            Module::Reduce => "reduce.wgsl",
            Module::Random => "random.wgsl",
            Module::Vae => "vae.wgsl",
            Module::VaeFused(_) => "vae_fused.wgsl",
            Module::Optim(_) | Module::OptimTextures(_) => "optim.wgsl",
            Module::Data(_) => "data.wgsl",
            Module::BatchNorm => "batchnorm.wgsl",
            Module::BatchNorm2d => "batchnorm2d.wgsl",
            Module::Iwae => "iwae.wgsl",
            Module::Conv => "conv.wgsl",
            Module::ConvSubgroup | Module::ConvSubgroupTextures => "conv_subgroup.wgsl",
        }
    }
    /// Whether the module uses subgroup operations (a browser needs `enable subgroups;`).
    #[cfg(target_arch = "wasm32")]
    fn needs_subgroups(self) -> bool {
        matches!(
            self,
            Module::MatmulSubgroup(_)
                | Module::MatmulSubgroupTextures(_)
                | Module::ConvSubgroup
                | Module::ConvSubgroupTextures
        )
    }
    /// Bindings (counted from 1, as bit 0 = binding 1) that are read-only `rgba32float` storage
    /// textures instead of storage buffers.
    pub fn texture_bindings(self) -> u32 {
        match self {
            Module::MatmulSubgroupTextures(_) => 0b11,
            Module::OptimTextures(_) => 0b1111,
            Module::ConvSubgroupTextures => 0b11,
            _ => 0,
        }
    }
    /// The format of the module's operand textures ([`Module::texture_bindings`]): `r32float`
    /// for the convolution's scalar operands, `rgba32float` for the others' vec4s.
    pub fn texture_format(self) -> wgpu::TextureFormat {
        match self {
            Module::ConvSubgroupTextures => wgpu::TextureFormat::R32Float,
            _ => wgpu::TextureFormat::Rgba32Float,
        }
    }
    /// The [`Words`] the module's vec4 views are typed as, for modules that have such views.
    fn words(self) -> Option<Words> {
        match self {
            Module::MatmulSubgroup(w)
            | Module::MatmulSubgroupTextures(w)
            | Module::MatmulUnrolled(w)
            | Module::Optim(w)
            | Module::OptimTextures(w)
            | Module::VaeFused(w)
            | Module::Data(w) => Some(w),
            _ => None,
        }
    }
    /// The source, in parts concatenated in order (after the defines and common.wgsl).
    fn source(self) -> &'static [&'static str] {
        const CONV: &str = include_str!("../../shaders/conv.wgsl");
        const CONV_PLAIN: &str = include_str!("../../shaders/conv_plain.wgsl");
        const CONV_SUBGROUP: &str = include_str!("../../shaders/conv_subgroup.wgsl");
        const CONV_BUFFERS: &str = include_str!("../../shaders/conv_operands_buffer.wgsl");
        const CONV_TEXTURES: &str = include_str!("../../shaders/conv_operands_texture.wgsl");
        const MATMUL_SUBGROUP: &str = include_str!("../../shaders/matmul_subgroup.wgsl");
        const MATMUL_UNROLLED: &str = include_str!("../../shaders/matmul_unrolled.wgsl");
        const BUFFER_OPERANDS: &str = include_str!("../../shaders/matmul_operands_buffer.wgsl");
        const TEXTURE_OPERANDS: &str = include_str!("../../shaders/matmul_operands_texture.wgsl");
        const OPTIM: &str = include_str!("../../shaders/optim.wgsl");
        const VAE_FUSED: &str = include_str!("../../shaders/vae_fused.wgsl");
        const DATA: &str = include_str!("../../shaders/data.wgsl");
        match self {
            Module::Matmul => &[include_str!("../../shaders/matmul.wgsl")],
            Module::MatmulSubgroup(Words::F32) => &[WORDS_F32, BUFFER_OPERANDS, MATMUL_SUBGROUP],
            Module::MatmulSubgroup(Words::U64) => &[WORDS_U64, BUFFER_OPERANDS, MATMUL_SUBGROUP],
            Module::MatmulSubgroupTextures(Words::F32) => &[WORDS_F32, TEXTURE_OPERANDS, MATMUL_SUBGROUP],
            Module::MatmulSubgroupTextures(Words::U64) => &[WORDS_U64, TEXTURE_OPERANDS, MATMUL_SUBGROUP],
            Module::MatmulUnrolled(Words::F32) => &[WORDS_F32, BUFFER_OPERANDS, MATMUL_UNROLLED],
            Module::MatmulUnrolled(Words::U64) => &[WORDS_U64, BUFFER_OPERANDS, MATMUL_UNROLLED],
            Module::Elementwise => &[include_str!("../../shaders/elementwise.wgsl")],
            Module::Reduce => &[include_str!("../../shaders/reduce.wgsl")],
            Module::Random => &[include_str!("../../shaders/random.wgsl")],
            Module::Vae => &[include_str!("../../shaders/vae.wgsl")],
            Module::VaeFused(Words::F32) => &[WORDS_F32, VAE_FUSED],
            Module::VaeFused(Words::U64) => &[WORDS_U64, VAE_FUSED],
            Module::Optim(Words::F32) | Module::OptimTextures(Words::F32) => &[WORDS_F32, OPTIM],
            Module::Optim(Words::U64) | Module::OptimTextures(Words::U64) => &[WORDS_U64, OPTIM],
            Module::Data(Words::F32) => &[WORDS_F32, DATA],
            Module::Data(Words::U64) => &[WORDS_U64, DATA],
            Module::BatchNorm => &[include_str!("../../shaders/batchnorm.wgsl")],
            Module::BatchNorm2d => &[include_str!("../../shaders/batchnorm2d.wgsl")],
            Module::Iwae => &[include_str!("../../shaders/iwae.wgsl")],
            Module::Conv => &[CONV_BUFFERS, CONV, CONV_PLAIN],
            Module::ConvSubgroup => &[CONV_BUFFERS, CONV, CONV_SUBGROUP],
            Module::ConvSubgroupTextures => &[CONV_TEXTURES, CONV, CONV_SUBGROUP],
        }
    }
}

/// What identifies a compiled kernel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelKey {
    /// Source file.
    pub module: Module,
    /// Entry point.
    pub entry: &'static str,
    /// `const NAME = VALUE;` lines prepended to the source, in order.
    pub defines: Defines,
    /// Number of read-only storage bindings (1..=inputs).
    pub inputs: u32,
    /// Number of read-write storage bindings (after the inputs).
    pub outputs: u32,
}

impl KernelKey {
    /// Human-readable kernel name for error messages and tests: `matmul.wgsl:matmul_register[TA=false,..]`,
    /// with the [`Words`] after the file where the module has them (`optim.wgsl+u64:adam_step4[]`)
    /// and `+textures` after those where it reads operand textures
    /// (`matmul_subgroup.wgsl+u64+textures:matmul_subgroup[..]`).
    pub fn describe(&self) -> String {
        let d: Vec<String> = self.defines.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let words = self.module.words().map(|w| format!("+{w}")).unwrap_or_default();
        let textures = if self.module.texture_bindings() != 0 { "+textures" } else { "" };
        format!("{}{words}{textures}:{}[{}]", self.module.file(), self.entry, d.join(","))
    }
}

/// A compiled pipeline with its bind-group layout.
pub struct Kernel {
    pub(crate) pipeline: wgpu::ComputePipeline,
    pub(crate) layout: Arc<wgpu::BindGroupLayout>,
    pub(crate) layout_key: (u32, u32, u32),
    pub(crate) name: String,
    /// The WGSL entry point (unique across `shaders/`).
    pub(crate) entry: &'static str,
    /// Launches submitted so far: tests assert through it which kernel variant really ran.
    pub(crate) dispatched: AtomicU64,
}

impl Kernel {
    /// The WGSL entry point.
    pub fn entry(&self) -> &'static str {
        self.entry
    }
    /// Human-readable name (file, entry point and defines).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// `const` definitions prepended to a module's source.
pub type Defines = Vec<(&'static str, String)>;

#[derive(Default)]
pub(crate) struct PipelineCache {
    kernels: HashMap<KernelKey, Arc<Kernel>>,
    modules: HashMap<(Module, Defines), wgpu::ShaderModule>,
    layouts: HashMap<(u32, u32, u32), (Arc<wgpu::BindGroupLayout>, wgpu::PipelineLayout)>,
    bind_groups: HashMap<Vec<u64>, Arc<wgpu::BindGroup>>,
}

impl PipelineCache {
    pub(crate) fn clear_bind_groups(&mut self) {
        self.bind_groups.clear();
    }
}

/// The WGSL of `key`'s module: directives, its defines as `const`s, common.wgsl, then its parts.
fn module_source(key: &KernelKey) -> String {
    let mut src = String::new();
    // naga takes subgroup builtins on the device feature alone and rejects the directive;
    // a browser's compiler (Tint) requires it.
    #[cfg(target_arch = "wasm32")]
    if key.module.needs_subgroups() {
        src.push_str("enable subgroups;\n");
    }
    // The `subgroup` matmul lets a subgroup with no column to store leave before its
    // broadcasts, all its lanes together (`subgroupAll`), so every broadcast still runs on
    // whole subgroups. WGSL's uniformity analysis has no notion of subgroup-uniform
    // control flow, and Tint rejects subgroup builtins after such a branch unless this
    // rule is off; naga accepts the directive and ignores the rule it does not know.
    if matches!(key.module, Module::MatmulSubgroup(_) | Module::MatmulSubgroupTextures(_)) {
        src.push_str("diagnostic(off, subgroup_uniformity);\n");
    }
    for (k, v) in &key.defines {
        src.push_str(&format!("const {k} = {v};\n"));
    }
    src.push_str(COMMON);
    src.push('\n');
    for part in key.module.source() {
        src.push_str(part);
        src.push('\n');
    }
    src
}

/// Binding 0 the parameters, then `inputs` read-only and `outputs` read-write storage buffers,
/// except that the bindings in `textures` (bit i = binding i + 1) are read-only storage textures
/// of `format`.
fn layout_entries(
    inputs: u32,
    outputs: u32,
    textures: u32,
    format: wgpu::TextureFormat,
) -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut e = vec![wgpu::BindGroupLayoutEntry {
        binding: 0,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: true,
            min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
        },
        count: None,
    }];
    for i in 0..inputs + outputs {
        let ty = if textures & (1 << i) != 0 {
            wgpu::BindingType::StorageTexture {
                access: wgpu::StorageTextureAccess::ReadOnly,
                format,
                view_dimension: wgpu::TextureViewDimension::D2,
            }
        } else {
            wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only: i < inputs },
                has_dynamic_offset: false,
                min_binding_size: None,
            }
        };
        e.push(wgpu::BindGroupLayoutEntry { binding: 1 + i, visibility: wgpu::ShaderStages::COMPUTE, ty, count: None });
    }
    e
}

impl Gpu {
    /// The compiled kernel for `key`, compiling it on first use. Compile and validation errors
    /// come back as [`Error::Shader`] naming the kernel. Compilation happens outside the cache's
    /// lock, so several threads compile different kernels at once ([`Gpu::prepare_kernels`]).
    pub fn kernel(&self, key: &KernelKey) -> Result<Arc<Kernel>> {
        let mkey = (key.module, key.defines.clone());
        // The texture bits carry the format too (r32float textures as bits 8+), so layouts that
        // differ only in it are cached apart.
        let format = key.module.texture_format();
        let tex = key.module.texture_bindings();
        let tex_key = if format == wgpu::TextureFormat::R32Float { tex << 8 } else { tex };
        let lk = (key.inputs, key.outputs, tex_key);
        let dev = &self.inner.device;
        let (module, bgl, pl) = {
            let mut cache = self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(k) = cache.kernels.get(key) {
                return Ok(k.clone());
            }
            let (bgl, pl) = cache
                .layouts
                .entry(lk)
                .or_insert_with(|| {
                    let bgl = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                        label: Some("wgvae kernel layout"),
                        entries: &layout_entries(lk.0, lk.1, tex, format),
                    });
                    let pl = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some("wgvae kernel pipeline layout"),
                        bind_group_layouts: &[Some(&bgl)],
                        immediate_size: 0,
                    });
                    (Arc::new(bgl), pl)
                })
                .clone();
            (cache.modules.get(&mkey).cloned(), bgl, pl)
        };
        let name = key.describe();
        #[cfg(not(target_arch = "wasm32"))]
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let module = module.unwrap_or_else(|| {
            dev.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(key.module.file()),
                source: wgpu::ShaderSource::Wgsl(module_source(key).into()),
            })
        });
        let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&name),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                // Kernels initialise the workgroup memory they read; zero-filling it first is
                // pure overhead (and costly on CPU adapters).
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        // Natively the scope's result is ready when the call returns (error scopes are per
        // thread). In a browser it arrives later and cannot be waited for here, so no scope is
        // pushed: compile errors reach the page through the device's uncaptured-error handler.
        #[cfg(target_arch = "wasm32")]
        let popped: Option<wgpu::Error> = None;
        #[cfg(not(target_arch = "wasm32"))]
        let popped = pollster::block_on(scope.pop());
        let mut cache = self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(err) = popped {
            // A broken module would fail every entry point; forget it so the error repeats
            // faithfully instead of surfacing later as an invalid-object error.
            cache.modules.remove(&mkey);
            return Err(Error::Shader { kernel: name, message: err.to_string() });
        }
        // Another thread may have compiled the same kernel meanwhile: keep the first.
        if let Some(k) = cache.kernels.get(key) {
            return Ok(k.clone());
        }
        cache.modules.entry(mkey).or_insert(module);
        let k = Arc::new(Kernel {
            pipeline,
            layout: bgl,
            layout_key: lk,
            name,
            entry: key.entry,
            dispatched: AtomicU64::new(0),
        });
        cache.kernels.insert(key.clone(), k.clone());
        drop(cache);
        self.stats_mut().pipelines_compiled += 1;
        Ok(k)
    }

    /// Whether `key` is compiled already (no compilation).
    pub(crate) fn cached_kernel(&self, key: &KernelKey) -> Option<Arc<Kernel>> {
        self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner()).kernels.get(key).cloned()
    }

    /// Compiles the kernels of `keys` not compiled yet, natively on up to as many threads as the
    /// machine has cores (a driver compiles each pipeline on the calling thread: lavapipe spends
    /// ~50 ms on each `subgroup` matmul even with its shader cache warm), in a browser one after
    /// another. [`crate::Tape::submit`] does this for the kernels a submission uses for the first
    /// time. The first error is returned.
    pub fn prepare_kernels(&self, keys: &[&KernelKey]) -> Result<()> {
        let mut missing: Vec<&KernelKey> = Vec::new();
        for &k in keys {
            if self.cached_kernel(k).is_none() && !missing.contains(&k) {
                missing.push(k);
            }
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(missing.len());
            if threads > 1 {
                let next = std::sync::atomic::AtomicUsize::new(0);
                let errors: Vec<Error> = std::thread::scope(|s| {
                    let workers: Vec<_> = (0..threads)
                        .map(|_| {
                            s.spawn(|| {
                                let mut errs = Vec::new();
                                loop {
                                    let i = next.fetch_add(1, Ordering::Relaxed);
                                    let Some(k) = missing.get(i) else { break errs };
                                    if let Err(e) = self.kernel(k) {
                                        errs.push(e);
                                    }
                                }
                            })
                        })
                        .collect();
                    workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
                });
                return errors.into_iter().next().map_or(Ok(()), Err);
            }
        }
        missing.into_iter().try_for_each(|k| self.kernel(k).map(|_| ()))
    }

    /// Launches submitted per WGSL entry point on this device so far (summed over the entry's
    /// compiled variants: defines, layouts). Tests use it to prove which kernel ran.
    pub fn kernel_dispatches(&self) -> std::collections::BTreeMap<&'static str, u64> {
        let cache = self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::collections::BTreeMap::new();
        for k in cache.kernels.values() {
            *out.entry(k.entry).or_insert(0) += k.dispatched.load(Ordering::Relaxed);
        }
        out
    }

    /// Launches submitted per compiled kernel on this device so far, by [`KernelKey::describe`]
    /// name (`file[+words]:entry[defines]`): which configuration of a kernel ran.
    pub fn kernel_name_dispatches(&self) -> std::collections::BTreeMap<String, u64> {
        let cache = self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = std::collections::BTreeMap::new();
        for k in cache.kernels.values() {
            *out.entry(k.name.clone()).or_insert(0) += k.dispatched.load(Ordering::Relaxed);
        }
        out
    }

    /// Bind group for `kernel` over (params buffer, storage buffers with bound sizes), cached by
    /// buffer identity so that a repeated step creates none. `textures` replace the buffers of
    /// the kernel's texture bindings ([`Module::texture_bindings`]), by position in `buffers`.
    pub(crate) fn bind_group(
        &self,
        kernel: &Kernel,
        params: &super::pool::PooledBuffer,
        buffers: &[(Arc<super::pool::PooledBuffer>, u64, u64)],
        textures: &[(usize, Arc<super::pool::PooledTexture>)],
    ) -> Arc<wgpu::BindGroup> {
        let mut key = Vec::with_capacity(4 + 3 * buffers.len());
        key.extend([kernel.layout_key.0 as u64, kernel.layout_key.1 as u64, kernel.layout_key.2 as u64, params.id]);
        for (i, (b, offset, size)) in buffers.iter().enumerate() {
            match textures.iter().find(|(slot, _)| *slot == i) {
                Some((_, t)) => key.extend([t.id(), u64::MAX, 0]),
                None => key.extend([b.id, *offset, *size]),
            }
        }
        let mut cache = self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bg) = cache.bind_groups.get(&key) {
            return bg.clone();
        }
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                buffer: params.raw(),
                offset: 0,
                size: wgpu::BufferSize::new(PARAMS_BYTES),
            }),
        }];
        for (i, (b, offset, size)) in buffers.iter().enumerate() {
            let resource = match textures.iter().find(|(slot, _)| *slot == i) {
                Some((_, t)) => wgpu::BindingResource::TextureView(t.view()),
                None => wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: b.raw(),
                    offset: *offset,
                    size: wgpu::BufferSize::new(*size),
                }),
            };
            entries.push(wgpu::BindGroupEntry { binding: 1 + i as u32, resource });
        }
        let bg = Arc::new(self.inner.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("wgvae bind group"),
            layout: &kernel.layout,
            entries: &entries,
        }));
        cache.bind_groups.insert(key, bg.clone());
        drop(cache);
        self.stats_mut().bind_groups_created += 1;
        bg
    }
}
