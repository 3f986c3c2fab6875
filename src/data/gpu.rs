//! A split's images living on the GPU in compact form (u8 pixels packed four to a u32: 60,000
//! Fashion-MNIST images are 47 MB, well inside one storage binding, where f32 would not be), and
//! the gather kernel (`shaders/data.wgsl`) that builds each f32 batch from a shuffled order.

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{Images, Pixels};
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::gpu::Gpu;
use crate::ops::grid_1d;
use crate::ops::vae::Noise;
use crate::tape::{Params, Tape};
use crate::tensor::Tensor;

/// Images uploaded once; batches are gathered on the GPU. A dataset larger than one storage
/// binding is held in shards of whole images (each within the device's binding limit; memory is
/// then the only limit), and a batch is gathered with one dispatch per shard.
pub struct GpuImages {
    /// (first image, images, values) of each shard, in order.
    shards: Vec<(usize, usize, Tensor)>,
    /// Whether `data` holds f32 values (else u8 packed four to a word).
    f32_values: bool,
    /// Labels as u32 on the GPU (one per image), for the CVAE's one-hot gather.
    labels_gpu: Option<Tensor>,
    /// Number of label classes (0 without labels).
    pub num_classes: usize,
    /// Number of images.
    pub n: usize,
    /// Pixels per image.
    pub dim: usize,
    /// Labels, kept on the CPU (for conditioning and plots).
    pub labels: Option<Vec<u32>>,
}

impl GpuImages {
    /// Uploads `images`: 8-bit values packed four to a u32 word, f32 values as they are, in as
    /// many shards as the device's storage-binding limit needs.
    pub fn upload(gpu: &Gpu, images: &Images) -> Result<Self> {
        Self::upload_sharded(gpu, images, gpu.max_tensor_elements().saturating_mul(4))
    }

    /// [`GpuImages::upload`] with shards of at most `shard_bytes` bytes (at least one image each).
    pub fn upload_sharded(gpu: &Gpu, images: &Images, shard_bytes: u64) -> Result<Self> {
        let dim = images.dim();
        let f32_values = matches!(images.pixels(), Pixels::F32(_));
        // Bytes one image takes in a shard (u8 images are packed from the shard's byte 0).
        let per_image = if f32_values { 4 * dim as u64 } else { dim as u64 };
        let per_shard = ((shard_bytes.saturating_sub(3)) / per_image).max(1) as usize;
        let mut shards = Vec::new();
        for first in (0..images.n()).step_by(per_shard) {
            let count = per_shard.min(images.n() - first);
            let (a, b) = (first * dim, (first + count) * dim);
            let t = match images.pixels() {
                Pixels::U8(bytes) => {
                    let bytes = &bytes[a..b];
                    let mut words = vec![0u32; bytes.len().div_ceil(4)];
                    for (i, &v) in bytes.iter().enumerate() {
                        words[i / 4] |= (v as u32) << (8 * (i % 4));
                    }
                    Tensor::from_u32(gpu, 1, words.len(), &words)?
                }
                Pixels::F32(v) => Tensor::from_slice(gpu, 1, b - a, &v[a..b])?,
            };
            shards.push((first, count, t));
        }
        let labels_gpu = match images.labels() {
            Some(l) => Some(Tensor::from_u32(gpu, 1, l.len(), l)?),
            None => None,
        };
        Ok(GpuImages {
            shards,
            f32_values,
            labels_gpu,
            num_classes: images.num_classes(),
            n: images.n(),
            dim: images.dim(),
            labels: images.labels().map(<[u32]>::to_vec),
        })
    }

    /// The order of one epoch: a permutation of 0..n drawn from (seed, epoch), uploaded (one
    /// write per epoch). `shuffle = false` keeps 0..n (evaluation).
    pub fn order(&self, gpu: &Gpu, seed: u64, epoch: u64, shuffle: bool) -> Result<(Vec<u32>, Tensor)> {
        let mut idx: Vec<u32> = (0..self.n as u32).collect();
        if shuffle {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            idx.shuffle(&mut rng);
        }
        let t = Tensor::from_u32(gpu, 1, idx.len(), &idx)?;
        Ok((idx, t))
    }

    /// x\[B, D\] = images order[offset .. offset+B) as f32 in \[0, 1\], or, with `binarize`, a
    /// Bernoulli(pixel) draw from that noise stream.
    pub fn batch(
        &self,
        tape: &mut Tape,
        order: &Tensor,
        offset: usize,
        b: usize,
        binarize: Option<Noise>,
    ) -> Result<Tensor> {
        if b == 0 || offset + b > order.len() {
            return Err(Error::arg(
                "batch",
                format!("rows {offset}..{} are outside the {} ordered images", offset + b, order.len()),
            ));
        }
        let x = Tensor::empty(tape.gpu(), b, self.dim)?;
        let n = x.len();
        let (bin, noise) = match binarize {
            Some(nz) => (1, nz),
            None => (0, Noise { seed: 0, step: 0, stream: 0 }),
        };
        let k = crate::rng::key(noise.seed);
        // Four pixels per invocation when rows are whole words (every 28x28 or 64x64 image);
        // eight, through 32-byte Word8 stores, with u64 words (CPU adapters, where an access
        // costs a loop over the lanes that a wider access shares).
        let wide = tape.gpu().words() == crate::gpu::Words::U64 && self.dim.is_multiple_of(8);
        let (entry, invocations) = match (self.f32_values, self.dim.is_multiple_of(4)) {
            (true, _) => ("gather_f32", n),
            (false, true) if wide => ("gather8", n / 8),
            (false, true) => ("gather4", n / 4),
            (false, false) => ("gather", n),
        };
        let key =
            KernelKey { module: Module::Data(tape.gpu().words()), entry, defines: Vec::new(), inputs: 2, outputs: 1 };
        for (first, count, data) in &self.shards {
            let p = Params::new()
                .u(invocations as u32)
                .u(self.dim as u32)
                .u(offset as u32)
                .u(bin)
                .u(k[0])
                .u(k[1])
                .u(noise.step)
                .u(noise.stream)
                .u(*first as u32)
                .u(*count as u32);
            tape.dispatch(&key, p, &[data, order, &x], grid_1d(invocations, 256))?;
        }
        Ok(x)
    }
}

impl GpuImages {
    /// Number of shards the images are held in.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// y\[B, C\] = one-hot labels of images order[offset .. offset+B), C = `classes`.
    pub fn onehot(&self, tape: &mut Tape, order: &Tensor, offset: usize, b: usize, classes: usize) -> Result<Tensor> {
        let Some(labels) = &self.labels_gpu else {
            return Err(Error::arg("labels", "the data has no labels to condition on"));
        };
        if b == 0 || offset + b > order.len() || classes == 0 {
            return Err(Error::arg(
                "batch",
                format!("rows {offset}..{} are outside the {} ordered images", offset + b, order.len()),
            ));
        }
        let y = Tensor::empty(tape.gpu(), b, classes)?;
        let n = y.len();
        let p = Params::new().u(n as u32).u(classes as u32).u(offset as u32);
        let key = KernelKey {
            module: Module::Data(tape.gpu().words()),
            entry: "onehot",
            defines: Vec::new(),
            inputs: 2,
            outputs: 1,
        };
        tape.dispatch(&key, p, &[labels, order, &y], grid_1d(n, 256))?;
        Ok(y)
    }
}

/// One-hot rows of `labels` (each < `classes`), uploaded: for sampling or reconstructing chosen
/// classes outside the training loop.
pub fn onehot_rows(gpu: &Gpu, labels: &[usize], classes: usize) -> Result<Tensor> {
    if let Some(&l) = labels.iter().find(|&&l| l >= classes) {
        return Err(Error::arg("label", format!("{l} is not a class of this model (0..{classes})")));
    }
    let mut v = vec![0.0f32; labels.len() * classes];
    for (i, &l) in labels.iter().enumerate() {
        v[i * classes + l] = 1.0;
    }
    Tensor::from_slice(gpu, labels.len(), classes, &v)
}
