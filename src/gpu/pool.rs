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

impl Gpu {
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

    /// Frees every idle pooled buffer and forgets cached bind groups (e.g. after a large job).
    pub fn trim(&self) {
        self.inner.pool.lock().unwrap_or_else(|p| p.into_inner()).free.clear();
        self.inner.pipelines.lock().unwrap_or_else(|p| p.into_inner()).clear_bind_groups();
    }
}
