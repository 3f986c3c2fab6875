//! Buffer pool by size class. Shapes repeat every training step, so after the first step every
//! request is served from the free lists and a step creates no `wgpu::Buffer` at all.
//!
//! A [`PooledBuffer`] goes back to its free list when the last handle to it drops. Reuse is safe
//! because work is executed in submission (and, within a command buffer, encoding) order: a buffer
//! handed out again is only written by commands recorded after every command that read it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Gpu, GpuInner};
use crate::error::{Error, Result};

/// What a pooled buffer is used for; each kind has its own free lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BufferKind {
    /// Storage buffer for tensors (also copy source/destination).
    Storage,
    /// Uniform buffer holding per-dispatch parameter blocks.
    Uniform,
    /// Mappable staging buffer for reading results back.
    Readback,
    /// Destination of resolved timestamp queries (profiling).
    QueryResolve,
}

impl BufferKind {
    fn usage(self) -> wgpu::BufferUsages {
        use wgpu::BufferUsages as U;
        match self {
            BufferKind::Storage => U::STORAGE | U::COPY_SRC | U::COPY_DST,
            BufferKind::Uniform => U::UNIFORM | U::COPY_DST,
            BufferKind::Readback => U::MAP_READ | U::COPY_DST,
            BufferKind::QueryResolve => U::QUERY_RESOLVE | U::COPY_SRC,
        }
    }
}

#[derive(Default)]
pub(crate) struct Pool {
    /// Free buffers per (kind, class), by id. Handing out the lowest id first makes a repeated
    /// step get the very same buffers in the same roles, whatever order the previous step
    /// released them in, so its cached bind groups hit.
    free: HashMap<(BufferKind, u64), BTreeMap<u64, wgpu::Buffer>>,
    /// Free operand textures per (format, height class), by id (as `free`).
    free_textures: HashMap<(wgpu::TextureFormat, u32), BTreeMap<u64, OperandTextureParts>>,
}

/// A texture and its view, as kept in the free lists.
type OperandTextureParts = (wgpu::Texture, wgpu::TextureView);

/// Bytes per row of an operand texture ([`crate::Operands::Textures`]): 16 KiB, a multiple of the
/// 256 bytes a buffer-to-texture copy needs per row (1024 `rgba32float` or 4096 `r32float` texels).
pub const OPERAND_TEXTURE_ROW_BYTES: u64 = 16384;

/// Bytes per texel of an operand texture format (`rgba32float` 16, `r32float` 4).
pub fn texel_bytes(format: wgpu::TextureFormat) -> u64 {
    format.block_copy_size(None).unwrap_or(16) as u64
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Size class: powers of two from 256 bytes up (at most 2x waste, few classes, high reuse).
pub(crate) fn size_class(bytes: u64) -> u64 {
    bytes.max(256).next_power_of_two()
}

/// A buffer lent by the pool; it returns there when dropped.
pub struct PooledBuffer {
    pub(crate) buffer: Option<wgpu::Buffer>,
    pub(crate) id: u64,
    pub(crate) kind: BufferKind,
    pub(crate) class: u64,
    pub(crate) gpu: Arc<GpuInner>,
}

impl PooledBuffer {
    /// The wgpu buffer.
    pub fn raw(&self) -> &wgpu::Buffer {
        self.buffer.as_ref().expect("pooled buffer is present until drop")
    }
    /// Unique id (bind groups are cached by it).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Capacity in bytes (the size class).
    pub fn capacity(&self) -> u64 {
        self.class
    }
}

impl Drop for PooledBuffer {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            let mut pool = self.gpu.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.free.entry((self.kind, self.class)).or_default().insert(self.id, b);
        }
    }
}

/// A texture lent by the pool (rows of [`OPERAND_TEXTURE_ROW_BYTES`], usable as a read-only
/// storage texture and a copy destination); it returns there when dropped.
pub struct PooledTexture {
    parts: Option<OperandTextureParts>,
    id: u64,
    format: wgpu::TextureFormat,
    rows: u32,
    gpu: Arc<GpuInner>,
}

impl PooledTexture {
    /// The wgpu texture.
    pub fn raw(&self) -> &wgpu::Texture {
        &self.parts.as_ref().expect("pooled texture is present until drop").0
    }
    /// Its view (the whole texture).
    pub fn view(&self) -> &wgpu::TextureView {
        &self.parts.as_ref().expect("pooled texture is present until drop").1
    }
    /// Unique id (bind groups are cached by it; shared with buffer ids).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Rows of texels (the height class).
    pub fn rows(&self) -> u32 {
        self.rows
    }
    /// The texel format.
    pub fn format(&self) -> wgpu::TextureFormat {
        self.format
    }
}

impl Drop for PooledTexture {
    fn drop(&mut self) {
        if let Some(t) = self.parts.take() {
            let mut pool = self.gpu.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.free_textures.entry((self.format, self.rows)).or_default().insert(self.id, t);
        }
    }
}

impl Gpu {
    /// Takes an operand texture of `format` (`rgba32float` or `r32float`) with at least `rows`
    /// rows from the pool (creating it on a miss; heights come in powers of two). Counted in
    /// [`super::GpuStats::textures_created`].
    pub fn alloc_operand_texture(&self, format: wgpu::TextureFormat, rows: u32) -> Result<Arc<PooledTexture>> {
        let limit = self.inner.limits.max_texture_dimension_2d;
        let width = (OPERAND_TEXTURE_ROW_BYTES / texel_bytes(format)) as u32;
        let class = rows.max(1).next_power_of_two();
        let class = if class > limit { rows } else { class };
        if class > limit || width > limit {
            return Err(Error::DeviceLimit {
                what: "an operand texture".into(),
                needed: rows as u64,
                limit: limit as u64,
                limit_name: "max_texture_dimension_2d",
            });
        }
        let reused = {
            let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.free_textures.get_mut(&(format, class)).and_then(|v| v.pop_first())
        };
        let (id, parts) = match reused {
            Some(x) => x,
            None => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let texture = self.inner.device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("wgvae operand"),
                    size: wgpu::Extent3d { width, height: class, depth_or_array_layers: 1 },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format,
                    usage: wgpu::TextureUsages::STORAGE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                let view = texture.create_view(&wgpu::TextureViewDescriptor::default());
                let mut s = self.stats_mut();
                s.textures_created += 1;
                s.bytes_created += OPERAND_TEXTURE_ROW_BYTES * class as u64;
                (id, (texture, view))
            }
        };
        Ok(Arc::new(PooledTexture { parts: Some(parts), id, format, rows: class, gpu: self.inner.clone() }))
    }

    /// Takes a buffer of at least `bytes` bytes from the pool (creating it on a miss).
    pub fn alloc(&self, kind: BufferKind, bytes: u64) -> Result<Arc<PooledBuffer>> {
        let class = size_class(bytes);
        let lim = &self.inner.limits;
        if kind == BufferKind::Storage && bytes > lim.max_storage_buffer_binding_size {
            return Err(Error::DeviceLimit {
                what: "a tensor".into(),
                needed: bytes,
                limit: lim.max_storage_buffer_binding_size,
                limit_name: "max_storage_buffer_binding_size",
            });
        }
        // A class may round past the buffer limit while the request itself fits: allocate exactly.
        let class = if class > lim.max_buffer_size { bytes.div_ceil(4) * 4 } else { class };
        if class > lim.max_buffer_size {
            return Err(Error::DeviceLimit {
                what: format!("a {kind:?} buffer"),
                needed: bytes,
                limit: lim.max_buffer_size,
                limit_name: "max_buffer_size",
            });
        }
        let reused = {
            let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.free.get_mut(&(kind, class)).and_then(|v| v.pop_first())
        };
        let (id, buffer) = match reused {
            Some(x) => x,
            None => {
                let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
                let buffer = self.inner.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("wgvae pooled"),
                    size: class,
                    usage: kind.usage(),
                    mapped_at_creation: false,
                });
                let mut s = self.stats_mut();
                s.buffers_created += 1;
                s.bytes_created += class;
                (id, buffer)
            }
        };
        Ok(Arc::new(PooledBuffer { buffer: Some(buffer), id, kind, class, gpu: self.inner.clone() }))
    }

    /// Frees every idle pooled buffer and texture and forgets cached bind groups (e.g. after a large job).
    pub fn trim(&self) {
        {
            let mut pool = self.inner.pool.lock().unwrap_or_else(|p| p.into_inner());
            pool.free.clear();
            pool.free_textures.clear();
        }
        self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner()).clear_bind_groups();
    }
}
