//! GPU tensor: a pooled storage buffer (or an aligned range of one) plus a 2-D row-major f32 shape.
//!
//! Every value in a VAE built from MLPs is a matrix (batch x features); vectors are `[1, n]` and
//! scalars `[1, 1]`. Cloning a tensor shares its buffer (it is a handle, not a copy). A view
//! ([`Tensor::view`]) is a range of another tensor's buffer starting at a byte offset the device
//! can bind (its `min_storage_buffer_offset_alignment`): the parameters of a model live as views
//! of one buffer, so one optimizer dispatch updates them all.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gpu::pool::{BufferKind, PooledBuffer};
use crate::gpu::Gpu;

/// A row-major f32 matrix living in GPU memory.
#[derive(Clone)]
pub struct Tensor {
    pub(crate) buf: Arc<PooledBuffer>,
    /// Byte offset of element 0 in the buffer (0 unless a view).
    pub(crate) offset: u64,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor[{}x{}] (buffer {} + {} bytes)", self.rows, self.cols, self.buf.id(), self.offset)
    }
}

impl Tensor {
    /// An uninitialised tensor from the pool (kernels that fully overwrite their output use it).
    pub fn empty(gpu: &Gpu, rows: usize, cols: usize) -> Result<Self> {
        check_shape("Tensor::empty", rows, cols)?;
        let bytes = (rows as u64) * (cols as u64) * 4;
        let buf = gpu.alloc(BufferKind::Storage, bytes)?;
        Ok(Tensor { buf, offset: 0, rows, cols })
    }

    /// Uploads `data` (row-major, `rows * cols` values).
    pub fn from_slice(gpu: &Gpu, rows: usize, cols: usize, data: &[f32]) -> Result<Self> {
        if data.len() != rows.saturating_mul(cols) {
            return Err(Error::shape(
                "Tensor::from_slice",
                format!("{} values given for a {rows}x{cols} tensor (needs {})", data.len(), rows * cols),
            ));
        }
        let t = Self::empty(gpu, rows, cols)?;
        gpu.queue().write_buffer(t.buf.raw(), t.offset, bytemuck::cast_slice(data));
        gpu.stats_mut().bytes_uploaded += t.bytes();
        Ok(t)
    }

    /// Raw u32 words (dataset bytes, permutations) in a tensor-shaped buffer, for the kernels that
    /// read `array<u32>`; f32 ops must not be applied to it.
    pub fn from_u32(gpu: &Gpu, rows: usize, cols: usize, data: &[u32]) -> Result<Self> {
        if data.len() != rows.saturating_mul(cols) {
            return Err(Error::shape("Tensor::from_u32", format!("{} words given for {rows}x{cols}", data.len())));
        }
        let t = Self::empty(gpu, rows, cols)?;
        gpu.queue().write_buffer(t.buf.raw(), t.offset, bytemuck::cast_slice(data));
        gpu.stats_mut().bytes_uploaded += t.bytes();
        Ok(t)
    }

    /// Overwrites the contents with `data` (same length), ordered before the next submission.
    pub fn write(&self, gpu: &Gpu, data: &[f32]) -> Result<()> {
        if data.len() != self.len() {
            return Err(Error::shape(
                "Tensor::write",
                format!("{} values for a {}x{} tensor", data.len(), self.rows, self.cols),
            ));
        }
        gpu.queue().write_buffer(self.buf.raw(), self.offset, bytemuck::cast_slice(data));
        gpu.stats_mut().bytes_uploaded += self.bytes();
        Ok(())
    }

    /// A tensor of zeros (uploaded; for setup, not for the hot path).
    pub fn zeros(gpu: &Gpu, rows: usize, cols: usize) -> Result<Self> {
        check_shape("Tensor::zeros", rows, cols)?;
        Self::from_slice(gpu, rows, cols, &vec![0.0; rows * cols])
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }
    /// Always false: tensors have at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Bytes of data (excluding the pool's rounding).
    pub fn bytes(&self) -> u64 {
        self.len() as u64 * 4
    }
    /// The same buffer seen with another shape of the same element count.
    pub fn reshape(&self, rows: usize, cols: usize) -> Result<Self> {
        if rows * cols != self.len() || rows == 0 || cols == 0 {
            return Err(Error::shape(
                "reshape",
                format!("{}x{} cannot be viewed as {rows}x{cols}", self.rows, self.cols),
            ));
        }
        Ok(Tensor { buf: self.buf.clone(), offset: self.offset, rows, cols })
    }
    /// The pooled buffer behind this tensor.
    pub fn buffer(&self) -> &PooledBuffer {
        &self.buf
    }
    /// The device this tensor lives on.
    pub fn gpu(&self) -> Gpu {
        Gpu { inner: self.buf.gpu.clone() }
    }
    /// Whether two tensors share a buffer (views of one buffer do, whatever their ranges).
    pub fn same_buffer(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.buf, &other.buf)
    }

    /// Whether two tensors are the same range of the same buffer.
    pub fn same_storage(&self, other: &Tensor) -> bool {
        self.same_buffer(other) && self.offset == other.offset && self.len() == other.len()
    }

    /// This tensor's range of its buffer, to bind in a program's own bind group (a guest program
    /// running its own kernels over what wgvae produced, on the same device, without a copy).
    pub fn binding(&self) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            buffer: self.buf.raw(),
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.bytes()),
        }
    }

    /// Byte offset of this tensor in its buffer (0 unless it is a view).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// A `rows x cols` view of this tensor's buffer starting `start` elements into this tensor.
    /// The start must be a multiple of [`Tensor::view_alignment`] elements, so that kernels can
    /// bind the view; writes through it change this tensor.
    pub fn view(&self, start: usize, rows: usize, cols: usize) -> Result<Tensor> {
        check_shape("Tensor::view", rows, cols)?;
        let align = Self::view_alignment(&self.gpu());
        let fits = start.checked_add(rows * cols).is_some_and(|end| end <= self.len());
        if !fits || !start.is_multiple_of(align) {
            return Err(Error::shape(
                "Tensor::view",
                format!(
                    "a {rows}x{cols} view at element {start} of a {}x{} tensor (views start at multiples of {align} \
                     elements and end inside the tensor)",
                    self.rows, self.cols
                ),
            ));
        }
        Ok(Tensor { buf: self.buf.clone(), offset: self.offset + 4 * start as u64, rows, cols })
    }

    /// Elements between the starts of two views that kernels can bind (the device's
    /// `min_storage_buffer_offset_alignment`, in f32s).
    pub fn view_alignment(gpu: &Gpu) -> usize {
        (gpu.limits().min_storage_buffer_offset_alignment as usize / 4).max(1)
    }

    /// Downloads the values: submits a copy, waits, maps. For results and tests, never inside a
    /// step. Blocks; see [`Tensor::to_vec_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn to_vec(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        pollster::block_on(self.to_vec_async(gpu))
    }

    /// Resolves to the values once the work submitted before this call has run.
    pub async fn to_vec_async(&self, gpu: &Gpu) -> Result<Vec<f32>> {
        let bytes = gpu.read_buffer(&self.buf, self.offset, self.bytes()).await?;
        Ok(bytemuck::pod_collect_to_vec::<u8, f32>(&bytes))
    }
}

pub(crate) fn check_shape(op: &'static str, rows: usize, cols: usize) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Err(Error::shape(
            op,
            format!("a {rows}x{cols} tensor has no elements; every dimension must be at least 1"),
        ));
    }
    if rows > u32::MAX as usize / cols.max(1) {
        return Err(Error::shape(op, format!("{rows}x{cols} has more than 2^32 elements")));
    }
    Ok(())
}
