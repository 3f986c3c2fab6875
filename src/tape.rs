//! The autograd tape and command recorder.
//!
//! A [`Tape`] does two jobs for one step:
//! * it **records GPU work**: every kernel launch appends a `Dispatch`; [`Tape::submit`] writes
//!   all parameter blocks with one `write_buffer`, encodes every dispatch into ONE compute pass of
//!   ONE command encoder, appends the requested read-backs, and submits once;
//! * it **records the graph**: each op appends a node (inputs, output, backward rule) in order;
//!   [`Tape::backward`] walks the nodes in reverse, calls each rule (which records more kernel
//!   launches on the same tape) and accumulates gradients.
//!
//! A no-grad tape ([`Tape::no_grad`]) only records work, for evaluation.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::pipeline::{Kernel, KernelKey, PARAMS_BYTES};
use crate::gpu::pool::{texel_bytes, BufferKind, PooledBuffer, PooledTexture, OPERAND_TEXTURE_ROW_BYTES};
use crate::gpu::Gpu;
use crate::tensor::Tensor;

/// Workgroup grid for a 1-D kernel of `n` invocations in workgroups of `wg`: x capped at 65535,
/// the rest in y (the kernels flatten (x, y) back with `num_workgroups`).
pub fn grid_1d(n: usize, wg: usize) -> [u32; 3] {
    let groups = n.div_ceil(wg);
    let x = groups.min(65535);
    let y = groups.div_ceil(x.max(1));
    [x as u32, y as u32, 1]
}

/// An activation as the ops layer encodes it for the tape: (kernel id, parameter).
pub type ActTag = (u32, f32);

/// A value recorded on a tape (an index; cheap to copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var(pub(crate) usize);

/// Up to 16 parameter words of one dispatch (u32 or f32 bit patterns).
#[derive(Clone, Copy, Debug, Default)]
pub struct Params {
    words: [u32; 16],
    len: usize,
}

impl Params {
    /// An empty block.
    pub fn new() -> Self {
        Self::default()
    }
    /// Appends a u32 word.
    pub fn u(mut self, v: u32) -> Self {
        self.words[self.len] = v;
        self.len += 1;
        self
    }
    /// Appends an f32 word.
    pub fn f(self, v: f32) -> Self {
        self.u(v.to_bits())
    }
    /// The same block with word `i` (already appended) replaced.
    pub fn with_word(mut self, i: usize, v: u32) -> Self {
        if i < self.len {
            self.words[i] = v;
        }
        self
    }
}

/// A bound range: buffer, offset and length in bytes.
type Binding = (Arc<PooledBuffer>, u64, u64);

/// Whether two bound ranges share bytes of one buffer.
fn overlaps(a: &Binding, b: &Binding) -> bool {
    a.0.id() == b.0.id() && a.1 < b.1 + b.2 && b.1 < a.1 + a.2
}

/// One recorded kernel launch, its kernel compiled (or, until [`Tape::submit`] compiles the
/// submission's new kernels together, the key to compile).
struct Recorded {
    kernel: std::result::Result<Arc<Kernel>, KernelKey>,
    params: Params,
    buffers: Vec<Binding>,
    /// Operand textures by position in `buffers`: the dispatch reads the texture in that
    /// buffer range's place.
    textures: Vec<(usize, Arc<PooledTexture>)>,
    /// The positions whose range is copied into its texture right before the dispatch (the
    /// others were filled for an earlier dispatch of the submission).
    copies: Vec<usize>,
    groups: [u32; 3],
    label: Option<String>,
}

/// One kernel launch as submitted.
pub(crate) struct Dispatch {
    kernel: Arc<Kernel>,
    params: Params,
    buffers: Vec<Binding>,
    textures: Vec<(usize, Arc<PooledTexture>)>,
    copies: Vec<usize>,
    groups: [u32; 3],
    /// Profile row (entry point and shape); only made while the device is profiling (natively).
    #[cfg_attr(target_arch = "wasm32", allow(dead_code))]
    label: Option<String>,
}

struct ReadbackCopy {
    src: Arc<PooledBuffer>,
    offset: u64,
    bytes: u64,
    staging: Arc<PooledBuffer>,
    submitted: Arc<AtomicBool>,
}

/// A buffer range copied into an operand texture: (buffer id, offset, bytes, texel format).
type FilledRange = (u64, u64, u64, wgpu::TextureFormat);

/// Bytes per texel row of an operand texture.
const TEXTURE_ROW_BYTES: u64 = OPERAND_TEXTURE_ROW_BYTES;

/// Copies `bytes` bytes of `buf` from `offset` (whole texels) into an operand texture, texel i to
/// (i % width, i / width): the full rows in one copy, the last partial row in another.
fn copy_to_operand_texture(
    enc: &mut wgpu::CommandEncoder,
    buf: &wgpu::Buffer,
    offset: u64,
    bytes: u64,
    tex: &PooledTexture,
) {
    let texel = texel_bytes(tex.format());
    let full = bytes / TEXTURE_ROW_BYTES;
    let tail = bytes % TEXTURE_ROW_BYTES;
    let mut copy = |offset: u64, row: u64, width: u64, rows: u64| {
        enc.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: buf,
                layout: wgpu::TexelCopyBufferLayout {
                    offset,
                    bytes_per_row: Some(TEXTURE_ROW_BYTES as u32),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: tex.raw(),
                mip_level: 0,
                origin: wgpu::Origin3d { x: 0, y: row as u32, z: 0 },
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d { width: width as u32, height: rows as u32, depth_or_array_layers: 1 },
        );
    };
    if full > 0 {
        copy(offset, 0, TEXTURE_ROW_BYTES / texel, full);
    }
    if tail > 0 {
        copy(offset + full * TEXTURE_ROW_BYTES, full, tail / texel, 1);
    }
}

/// The result of [`Tape::read`]: available after the tape is submitted.
pub struct Readback {
    gpu: Gpu,
    staging: Arc<PooledBuffer>,
    len: usize,
    submitted: Arc<AtomicBool>,
}

impl Readback {
    /// Waits for the submission and returns the values. Blocks; see [`Readback::get_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn get(self) -> Result<Vec<f32>> {
        pollster::block_on(self.get_async())
    }

    /// Resolves to the values once the submission that recorded the read has run.
    pub async fn get_async(self) -> Result<Vec<f32>> {
        if !self.submitted.load(Ordering::Acquire) {
            return Err(Error::Autograd("Readback::get called before the tape that recorded it was submitted".into()));
        }
        let bytes = self.gpu.map_read(&self.staging, self.len as u64 * 4).await?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
    }
}

/// `Send` where threads exist. In a browser, GPU handles are not `Send` (WebGPU objects live on
/// one JS thread), so neither are the backward rules that hold them.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSend: Send {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send> MaybeSend for T {}
/// `Send` where threads exist (see the native definition); nothing in a browser.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSend {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSend for T {}

#[cfg(not(target_arch = "wasm32"))]
type BackwardFn = Box<dyn FnOnce(&mut Tape, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + Send>;
#[cfg(target_arch = "wasm32")]
type BackwardFn = Box<dyn FnOnce(&mut Tape, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

struct Node {
    inputs: Vec<usize>,
    output: usize,
    backward: BackwardFn,
}

struct VarEntry {
    value: Tensor,
    requires_grad: bool,
    /// Ops that take this value as an input.
    uses: u32,
    /// The activation this value is the output of (a layer whose epilogue applied it).
    /// Activation of which this value is the output, as the ops layer encodes it (opaque here).
    act: Option<ActTag>,
    /// Its gradient already includes that activation's derivative (a consumer fused it in).
    pre_activation_grad: bool,
}

/// Records one step's kernels and graph; see the module docs.
pub struct Tape {
    gpu: Gpu,
    dispatches: Vec<Recorded>,
    readbacks: Vec<ReadbackCopy>,
    vars: Vec<VarEntry>,
    nodes: Vec<Node>,
    grads: Vec<Option<Tensor>>,
    grad_enabled: bool,
    params: HashMap<u64, Var>,
    kernels_run: BTreeMap<&'static str, u64>,
    /// The same per compiled kernel (entry point and defines, [`Kernel::name`]).
    kernel_names_run: BTreeMap<String, u64>,
    /// Buffer of the ones that seeded the last backward (see [`Tape::is_seed`]).
    seed: Option<u64>,
    /// Gradient destinations of packed parameters' vars (see [`crate::nn::pack`]).
    dests: HashMap<usize, Tensor>,
    /// Small buffers bound in place of output slots a kernel leaves unused (see
    /// [`Tape::dispatch`]).
    spares: Vec<Tensor>,
    /// Operand textures filled by this submission so far, by the (buffer id, offset, bytes,
    /// format) they hold: a later dispatch reading the same range takes the texture without a
    /// new copy until a dispatch writes that buffer (the convolution's K slices, a weight read by
    /// the forward and the input-gradient product). Emptied by [`Tape::submit`].
    filled: Vec<(FilledRange, Arc<PooledTexture>)>,
}

impl Tape {
    /// A tape that records gradients.
    pub fn new(gpu: &Gpu) -> Self {
        Tape {
            gpu: gpu.clone(),
            dispatches: Vec::new(),
            readbacks: Vec::new(),
            vars: Vec::new(),
            nodes: Vec::new(),
            grads: Vec::new(),
            grad_enabled: true,
            params: HashMap::new(),
            kernels_run: BTreeMap::new(),
            kernel_names_run: BTreeMap::new(),
            seed: None,
            dests: HashMap::new(),
            spares: Vec::new(),
            filled: Vec::new(),
        }
    }

    /// A tape for evaluation: ops record kernels but no backward graph.
    pub fn no_grad(gpu: &Gpu) -> Self {
        let mut t = Self::new(gpu);
        t.grad_enabled = false;
        t
    }

    /// The device this tape records for.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Whether ops record backward rules.
    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    /// Number of kernel launches recorded and not yet submitted.
    pub fn pending_dispatches(&self) -> usize {
        self.dispatches.len()
    }

    /// Kernel launches this tape has submitted, per WGSL entry point: which kernels (and so which
    /// variants) really ran, for tests and profiles.
    pub fn kernels_run(&self) -> &BTreeMap<&'static str, u64> {
        &self.kernels_run
    }

    /// [`Tape::kernels_run`] per compiled kernel, named `file:entry[DEFINE=value,...]`: which
    /// configuration of a kernel ran (e.g. the tiled matmul's `TILE_M`, `TILE_N`, `TILE_K`).
    pub fn kernel_names_run(&self) -> &BTreeMap<String, u64> {
        &self.kernel_names_run
    }

    /// Forgets the graph (values, nodes, gradients, parameter registrations) but keeps the
    /// recorded, not yet submitted GPU work: the next step can then be recorded on the same tape
    /// and both submitted together (several training steps per submission). Work runs in
    /// recording order, so the next step sees this one's parameter updates.
    pub fn clear_graph(&mut self) {
        self.vars.clear();
        self.nodes.clear();
        self.grads.clear();
        self.params.clear();
        self.dests.clear();
        self.seed = None;
    }

    // ---------------------------------------------------------------- recording GPU work

    /// Records one kernel launch. `buffers` are the kernel's inputs then outputs, in binding order.
    pub fn dispatch(&mut self, key: &KernelKey, params: Params, buffers: &[&Tensor], groups: [u32; 3]) -> Result<()> {
        let label = || match buffers.last() {
            Some(out) => format!("{} {}x{}", key.entry, out.rows(), out.cols()),
            None => key.entry.to_string(),
        };
        let label = self.gpu.profiling().then(label);
        self.dispatch_labeled(key, params, buffers, groups, label)
    }

    /// [`Tape::dispatch`] with the row a profile files it under (made by the caller only while
    /// the device is profiling, see [`Gpu::profiling`]). A kernel whose module reads some inputs
    /// from operand textures ([`crate::gpu::Module::texture_bindings`]) gets each such input's
    /// values copied into a pooled texture (rows of [`OPERAND_TEXTURE_ROW_BYTES`]) right
    /// before it runs.
    pub(crate) fn dispatch_labeled(
        &mut self,
        key: &KernelKey,
        params: Params,
        buffers: &[&Tensor],
        groups: [u32; 3],
        label: Option<String>,
    ) -> Result<()> {
        // A kernel this device has not compiled yet is compiled at submit, with the submission's
        // other new kernels, on several threads (Gpu::prepare_kernels): a first training step
        // needs a dozen pipelines, and a driver compiles each on the calling thread.
        let kernel = self.gpu.cached_kernel(key).ok_or_else(|| key.clone());
        let name = || match &kernel {
            Ok(k) => k.name.clone(),
            Err(key) => key.describe(),
        };
        if buffers.len() != (key.inputs + key.outputs) as usize {
            return Err(Error::Autograd(format!(
                "kernel {} takes {} buffers, {} given",
                name(),
                key.inputs + key.outputs,
                buffers.len()
            )));
        }
        // The seed of ones is shared across tapes (Gpu::ones): a kernel writing it would corrupt
        // every later backward, so that is a bug caught here.
        if let Some(seed) = self.seed {
            if buffers[key.inputs as usize..].iter().any(|b| b.buf.id() == seed) {
                return Err(Error::Autograd(format!("kernel {} would write the backward seed (shared ones)", name())));
            }
        }
        let max = self.gpu.limits().max_compute_workgroups_per_dimension;
        if groups.iter().any(|&g| g > max) {
            return Err(Error::DeviceLimit {
                what: format!("kernel {} with {:?} workgroups", name(), groups),
                needed: *groups.iter().max().unwrap_or(&0) as u64,
                limit: max as u64,
                limit_name: "max_compute_workgroups_per_dimension",
            });
        }
        if groups.contains(&0) {
            return Ok(());
        }
        // Inputs read through operand textures are copied before the dispatch and not bound: the
        // binding rules below do not apply to them.
        let texture_slot = |i: usize| key.module.texture_bindings() & (1 << i) != 0;
        // A buffer bound writable must not also be bound read-only in the same dispatch (WebGPU
        // tracks usage per buffer, not per range): say which kernel would do it.
        let writes = &buffers[key.inputs as usize..];
        if let Some((_, r)) = buffers[..key.inputs as usize]
            .iter()
            .enumerate()
            .find(|&(i, r)| !texture_slot(i) && writes.iter().any(|w| w.same_buffer(r)))
        {
            return Err(Error::Autograd(format!(
                "kernel {} would read {r:?} while writing another range of its buffer; copy it first",
                name()
            )));
        }
        // Kernels with optional outputs get an unused one as a repeat of another output (one
        // layout per kernel). WebGPU forbids overlapping writable bindings, so such a repeat is
        // bound to a spare buffer instead; any other overlap of two outputs is a bug.
        let mut bound: Vec<Binding> = buffers.iter().map(|t| (t.buf.clone(), t.offset, t.bytes())).collect();
        let first_out = key.inputs as usize;
        let mut used_spares = 0;
        for j in first_out + 1..bound.len() {
            let Some(i) = (first_out..j).find(|&i| overlaps(&bound[i], &bound[j])) else { continue };
            if (bound[i].1, bound[i].2) != (bound[j].1, bound[j].2) {
                return Err(Error::Autograd(format!(
                    "kernel {} would write overlapping ranges of one buffer (outputs {} and {})",
                    name(),
                    i - first_out,
                    j - first_out
                )));
            }
            if self.spares.len() == used_spares {
                self.spares.push(Tensor::empty(&self.gpu, 1, 4)?);
            }
            let s = &self.spares[used_spares];
            used_spares += 1;
            bound[j] = (s.buf.clone(), s.offset, s.bytes());
        }
        // WebGPU's rule, checked here natively too (wgpu-core does not): no binding a kernel
        // writes may overlap another binding, so what passes here also binds in a browser.
        for j in first_out..bound.len() {
            if (0..bound.len()).any(|i| i != j && !texture_slot(i) && overlaps(&bound[i], &bound[j])) {
                return Err(Error::Autograd(format!(
                    "kernel {}: binding {j} is written but overlaps another binding (WebGPU rejects this)",
                    name()
                )));
            }
        }
        let (mut textures, mut copies) = (Vec::new(), Vec::new());
        for (slot, t) in buffers.iter().enumerate() {
            if key.module.texture_bindings() & (1 << slot) == 0 {
                continue;
            }
            let texel = texel_bytes(key.module.texture_format());
            if slot >= key.inputs as usize || !t.bytes().is_multiple_of(texel) || !t.offset.is_multiple_of(texel) {
                return Err(Error::Autograd(format!(
                    "kernel {}: binding {} is an operand texture, which takes an input of whole {texel}-byte texels",
                    name(),
                    slot + 1
                )));
            }
            let format = key.module.texture_format();
            let range = (t.buf.id(), t.offset, t.bytes(), format);
            if let Some((_, tex)) = self.filled.iter().find(|(r, _)| *r == range) {
                textures.push((slot, tex.clone()));
                continue;
            }
            let rows = t.bytes().div_ceil(TEXTURE_ROW_BYTES).max(1);
            let rows = u32::try_from(rows).unwrap_or(u32::MAX);
            let tex = self.gpu.alloc_operand_texture(format, rows)?;
            self.filled.push((range, tex.clone()));
            textures.push((slot, tex));
            copies.push(slot);
        }
        // What this dispatch writes is stale in any texture filled from it.
        for w in &buffers[key.inputs as usize..] {
            self.filled.retain(|((id, ..), _)| *id != w.buf.id());
        }
        self.dispatches.push(Recorded { kernel, params, buffers: bound, textures, copies, groups, label });
        Ok(())
    }

    /// Asks for `t`'s values once this tape is submitted (one copy into a staging buffer, in the
    /// same command buffer as the step).
    pub fn read(&mut self, t: &Tensor) -> Result<Readback> {
        let staging = self.gpu.alloc(BufferKind::Readback, t.bytes())?;
        let submitted = Arc::new(AtomicBool::new(false));
        self.readbacks.push(ReadbackCopy {
            src: t.buf.clone(),
            offset: t.offset,
            bytes: t.bytes(),
            staging: staging.clone(),
            submitted: submitted.clone(),
        });
        Ok(Readback { gpu: self.gpu.clone(), staging, len: t.len(), submitted })
    }

    /// Encodes everything recorded so far into one command buffer and submits it. The tape stays
    /// usable (values and gradients remain readable by later read-backs).
    pub fn submit(&mut self) -> Result<()> {
        self.gpu.check_error()?;
        let recorded = std::mem::take(&mut self.dispatches);
        self.filled.clear();
        let readbacks = std::mem::take(&mut self.readbacks);
        let new: Vec<&KernelKey> = recorded.iter().filter_map(|r| r.kernel.as_ref().err()).collect();
        if !new.is_empty() {
            self.gpu.prepare_kernels(&new)?;
        }
        let dispatches = recorded
            .into_iter()
            .map(|r| {
                let kernel = match r.kernel {
                    Ok(k) => k,
                    Err(key) => self.gpu.kernel(&key)?,
                };
                Ok(Dispatch {
                    kernel,
                    params: r.params,
                    buffers: r.buffers,
                    textures: r.textures,
                    copies: r.copies,
                    groups: r.groups,
                    label: r.label,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        if dispatches.is_empty() && readbacks.is_empty() {
            return Ok(());
        }
        let stride = self.gpu.inner.params_stride;
        let params_buf = if dispatches.is_empty() {
            None
        } else {
            let total = stride * dispatches.len() as u64;
            let buf = self.gpu.alloc(BufferKind::Uniform, total)?;
            let mut bytes = vec![0u8; total as usize];
            for (i, d) in dispatches.iter().enumerate() {
                let at = i * stride as usize;
                bytes[at..at + PARAMS_BYTES as usize].copy_from_slice(bytemuck::cast_slice(&d.params.words));
            }
            self.gpu.queue().write_buffer(buf.raw(), 0, &bytes);
            self.gpu.stats_mut().bytes_uploaded += total;
            Some(buf)
        };
        let mut enc =
            self.gpu.device().create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("wgvae step") });
        // Profiling: a timestamp before the first dispatch and after each one (one query set holds
        // at most 4096, so very long submissions are timed up to there).
        let timed = if self.gpu.profiling() && !dispatches.is_empty() {
            Some(dispatches.len().min(wgpu::QUERY_SET_MAX_QUERIES as usize - 1))
        } else {
            None
        };
        let queries = match timed {
            Some(t) => Some(self.gpu.device().create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wgvae profile"),
                ty: wgpu::QueryType::Timestamp,
                count: t as u32 + 1,
            })),
            None => None,
        };
        if let Some(pb) = &params_buf {
            let bind_groups: Vec<_> =
                dispatches.iter().map(|d| self.gpu.bind_group(&d.kernel, pb, &d.buffers, &d.textures)).collect();
            // One compute pass, split where a dispatch needs its operand textures filled first
            // (copies are recorded between passes). A profile then counts the copies in the time
            // of the dispatch they serve: the timestamp before it was written before them.
            let mut i = 0;
            while i < dispatches.len() {
                for (slot, tex) in dispatches[i].textures.iter().filter(|(s, _)| dispatches[i].copies.contains(s)) {
                    let (buf, offset, bytes) = &dispatches[i].buffers[*slot];
                    copy_to_operand_texture(&mut enc, buf.raw(), *offset, *bytes, tex);
                }
                let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("wgvae step"),
                    timestamp_writes: None,
                });
                if let (Some(q), 0) = (&queries, i) {
                    pass.write_timestamp(q, 0);
                }
                loop {
                    let d = &dispatches[i];
                    pass.set_pipeline(&d.kernel.pipeline);
                    pass.set_bind_group(0, bind_groups[i].as_ref(), &[(i as u64 * stride) as u32]);
                    pass.dispatch_workgroups(d.groups[0], d.groups[1], d.groups[2]);
                    if let (Some(q), Some(t)) = (&queries, timed) {
                        if i < t {
                            pass.write_timestamp(q, i as u32 + 1);
                        }
                    }
                    i += 1;
                    if i == dispatches.len() || !dispatches[i].copies.is_empty() {
                        break;
                    }
                }
            }
        }
        let profile_read = match (&queries, timed) {
            (Some(q), Some(t)) => {
                let bytes = 8 * (t as u64 + 1);
                let resolve = self.gpu.alloc(BufferKind::QueryResolve, bytes)?;
                let staging = self.gpu.alloc(BufferKind::Readback, bytes)?;
                enc.resolve_query_set(q, 0..t as u32 + 1, resolve.raw(), 0);
                enc.copy_buffer_to_buffer(resolve.raw(), 0, staging.raw(), 0, bytes);
                Some((staging, t))
            }
            _ => None,
        };
        for r in &readbacks {
            enc.copy_buffer_to_buffer(r.src.raw(), r.offset, r.staging.raw(), 0, r.bytes);
        }
        self.gpu.queue().submit([enc.finish()]);
        if let Some((staging, t)) = profile_read {
            self.record_profile(&dispatches, &staging, t)?;
        }
        for d in &dispatches {
            d.kernel.dispatched.fetch_add(1, Ordering::Relaxed);
            *self.kernels_run.entry(d.kernel.entry).or_insert(0) += 1;
            // No allocation once a kernel has been seen: steady-state steps stay allocation-free.
            match self.kernel_names_run.get_mut(&d.kernel.name) {
                Some(c) => *c += 1,
                None => {
                    self.kernel_names_run.insert(d.kernel.name.clone(), 1);
                }
            }
        }
        {
            let mut s = self.gpu.stats_mut();
            s.submissions += 1;
            s.dispatches += dispatches.len() as u64;
        }
        for r in &readbacks {
            r.submitted.store(true, Ordering::Release);
        }
        // Buffers held by `dispatches` return to the pool here; later work is ordered after this
        // submission, so reusing them is safe.
        Ok(())
    }

    /// Waits for the submission just made, reads its timestamps and files each dispatch's time
    /// under its label.
    fn record_profile(&self, dispatches: &[Dispatch], staging: &PooledBuffer, timed: usize) -> Result<()> {
        let bytes = self.gpu.map_read(staging, 8 * (timed as u64 + 1));
        // Profiling waits after every submission anyway (timestamp queries exist only natively).
        #[cfg(target_arch = "wasm32")]
        {
            drop(bytes);
            let _ = (dispatches, timed);
            Err(Error::arg("profile", "per-kernel profiles need a native adapter"))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec::<u8, u64>(&pollster::block_on(bytes)?);
            let ns_per_tick = self.gpu.queue().get_timestamp_period() as f64;
            let mut acc = self.gpu.inner.profile.lock().unwrap_or_else(|p| p.into_inner());
            acc.submissions += 1;
            acc.untimed += (dispatches.len() - timed) as u64;
            for (i, d) in dispatches.iter().take(timed).enumerate() {
                let ms = ticks[i + 1].saturating_sub(ticks[i]) as f64 * ns_per_tick * 1e-6;
                let label = d.label.clone().unwrap_or_else(|| d.kernel.entry.to_string());
                let row = acc.rows.entry(label).or_insert((0, 0.0));
                row.0 += 1;
                row.1 += ms;
            }
            Ok(())
        }
    }

    // ---------------------------------------------------------------- the tape's own kernels

    /// The elementwise kernels backward itself needs (`shaders/elementwise.wgsl`): gradient
    /// accumulation and the copy of a gradient into its destination.
    fn elementwise(&mut self, entry: &'static str, inputs: &[&Tensor], out: &Tensor, s0: f32, s1: f32) -> Result<()> {
        let key = KernelKey {
            module: crate::gpu::Module::Elementwise,
            entry,
            defines: vec![("ACT", "0u".into()), ("ALPHA", "0.0f".into())],
            inputs: inputs.len() as u32,
            outputs: 1,
        };
        let mut bufs = inputs.to_vec();
        bufs.push(out);
        let n = out.len();
        let p = Params::new().u(n as u32).u(out.cols() as u32).f(s0).f(s1);
        self.dispatch(&key, p, &bufs, grid_1d(n, 256))
    }

    fn add(&mut self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        let t = Tensor::empty(&self.gpu, a.rows(), a.cols())?;
        self.elementwise("axpby", &[a, b], &t, 1.0, 1.0)?;
        Ok(t)
    }

    /// Records `dst = x` (same element count; shapes may differ).
    pub fn copy_into(&mut self, x: &Tensor, dst: &Tensor) -> Result<()> {
        self.elementwise("affine", &[x], dst, 1.0, 0.0)
    }

    // ---------------------------------------------------------------- the graph

    /// A leaf value. With `requires_grad`, [`Tape::grad`] returns its gradient after backward.
    pub fn leaf(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.vars.push(VarEntry {
            value,
            requires_grad: requires_grad && self.grad_enabled,
            uses: 0,
            act: None,
            pre_activation_grad: false,
        });
        self.grads.push(None);
        Var(self.vars.len() - 1)
    }

    /// A constant input (no gradient).
    pub fn input(&mut self, value: Tensor) -> Var {
        self.leaf(value, false)
    }

    /// The var of a trainable value identified by `key` (a parameter's id): one var per key per
    /// tape, made from `value` the first time. With `grad_dest`, backward leaves the gradient in
    /// that tensor (see [`Tape::grad_destination`]). Layers call this through `Param::var`.
    pub fn keyed_leaf(&mut self, key: u64, value: &Tensor, grad_dest: Option<&Tensor>) -> Var {
        if let Some(v) = self.params.get(&key) {
            return *v;
        }
        let v = self.leaf(value.clone(), true);
        self.params.insert(key, v);
        if let Some(g) = grad_dest {
            self.dests.insert(v.0, g.clone());
        }
        v
    }

    /// The var made for `key` by [`Tape::keyed_leaf`], if any.
    pub fn keyed_var(&self, key: u64) -> Option<Var> {
        self.params.get(&key).copied()
    }

    /// Where `v`'s gradient should be written, when `v` is a packed parameter ([`crate::nn::pack`])
    /// that has no gradient yet: a backward rule that can write its output anywhere writes it
    /// there and returns that tensor, and the optimizer finds every gradient in one buffer.
    pub fn grad_destination(&self, v: Var) -> Option<Tensor> {
        match self.grads.get(v.0) {
            Some(None) => self.dests.get(&v.0).cloned(),
            _ => None,
        }
    }

    /// The value of `v`.
    pub fn value(&self, v: Var) -> &Tensor {
        &self.vars[v.0].value
    }

    /// Whether gradients flow to `v`.
    pub fn requires_grad(&self, v: Var) -> bool {
        self.vars[v.0].requires_grad
    }

    /// The gradient of the last [`Tape::backward`] target with respect to `v`, if any reached it.
    pub fn grad(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    /// Whether `g` is the tensor of ones that seeded this tape's backward, i.e. the upstream
    /// gradient of the loss itself. Fused loss ops compute their gradient in the forward pass
    /// under that assumption and hand it back unscaled when it holds.
    pub fn is_seed(&self, g: &Tensor) -> bool {
        self.seed == Some(g.buf.id())
    }

    /// Removes and returns the gradient accumulated so far for `v`: a backward rule that can add
    /// it inside its own kernel takes it, and returns the sum as its gradient for `v`.
    pub fn take_grad(&mut self, v: Var) -> Option<Tensor> {
        self.grads.get_mut(v.0).and_then(|g| g.take())
    }

    /// Marks `v` as the output of an activation (`tag` is the ops layer's encoding of it), so
    /// that its single consumer may fuse the activation's derivative into its own backward
    /// kernel ([`Tape::fusable_activation`]).
    pub fn set_activation(&mut self, v: Var, tag: Option<ActTag>) {
        self.vars[v.0].act = tag;
    }

    /// The activation whose derivative a backward rule may multiply into the gradient it writes
    /// for its input `v`: `v` came out of that activation, this op is its only consumer and no
    /// gradient has reached it yet. The rule then calls [`Tape::mark_pre_activation`].
    pub fn fusable_activation(&self, v: Var) -> Option<ActTag> {
        let e = &self.vars[v.0];
        (e.uses == 1 && self.grads[v.0].is_none()).then_some(e.act).flatten()
    }

    /// Records that the gradient just produced for `v` already includes its activation's
    /// derivative: the op that produced `v` must not apply it again
    /// ([`Tape::gradient_is_pre_activation`]).
    pub fn mark_pre_activation(&mut self, v: Var) {
        self.vars[v.0].pre_activation_grad = true;
    }

    /// Whether the gradient of `v` (an op's output) already includes its activation's derivative.
    pub fn gradient_is_pre_activation(&self, v: Var) -> bool {
        self.vars[v.0].pre_activation_grad
    }

    /// Records an op's result. `backward(tape, d_out, needs)` returns one gradient per input (None
    /// where `needs[i]` is false); it is kept only if grad is enabled and some input needs one.
    pub fn record(
        &mut self,
        inputs: &[Var],
        value: Tensor,
        backward: impl FnOnce(&mut Tape, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + MaybeSend + 'static,
    ) -> Var {
        let needs = self.grad_enabled && inputs.iter().any(|v| self.vars[v.0].requires_grad);
        for v in inputs {
            self.vars[v.0].uses += 1;
        }
        let out = self.leaf(value, needs);
        if needs {
            self.nodes.push(Node {
                inputs: inputs.iter().map(|v| v.0).collect(),
                output: out.0,
                backward: Box::new(backward),
            });
        }
        out
    }

    /// Back-propagates from `loss` (seeded with ones, so a non-scalar loss means its sum) through
    /// every recorded node in reverse order, recording the gradient kernels on this tape.
    pub fn backward(&mut self, loss: Var) -> Result<()> {
        if !self.grad_enabled {
            return Err(Error::Autograd("backward on a no-grad tape".into()));
        }
        if !self.vars[loss.0].requires_grad {
            return Err(Error::Autograd("the loss does not depend on any value that requires a gradient".into()));
        }
        let l = &self.vars[loss.0].value;
        let (r, c) = (l.rows(), l.cols());
        // Shared by every backward of this shape on the device (uploaded once): no fill dispatch.
        let seed = self.gpu.ones(r, c)?;
        self.seed = Some(seed.buf.id());
        self.grads[loss.0] = Some(seed);
        let nodes = std::mem::take(&mut self.nodes);
        for node in nodes.into_iter().rev() {
            let Some(g) = self.grads[node.output].clone() else {
                continue;
            };
            let needs: Vec<bool> = node.inputs.iter().map(|&i| self.vars[i].requires_grad).collect();
            let gin = (node.backward)(self, &g, &needs)?;
            for ((&i, gi), need) in node.inputs.iter().zip(gin).zip(needs) {
                let Some(gi) = gi else { continue };
                if !need {
                    continue;
                }
                let v = &self.vars[i].value;
                if gi.shape() != v.shape() {
                    return Err(Error::Autograd(format!(
                        "a backward rule produced a {:?} gradient for a {:?} value",
                        gi.shape(),
                        v.shape()
                    )));
                }
                self.grads[i] = Some(match self.grads[i].take() {
                    None => gi,
                    // Out of place: backward rules may hand the same tensor to several inputs.
                    Some(prev) => self.add(&prev, &gi)?,
                });
            }
        }
        // Packed parameters whose gradient a rule could not write in place get it copied there.
        let mut dests: Vec<(usize, Tensor)> = self.dests.iter().map(|(&v, d)| (v, d.clone())).collect();
        dests.sort_by_key(|(v, _)| *v);
        for (v, dest) in dests {
            if let Some(g) = self.grads[v].clone() {
                if !g.same_storage(&dest) {
                    self.copy_into(&g, &dest)?;
                    self.grads[v] = Some(dest);
                }
            }
        }
        Ok(())
    }
}
