//! Pictures of what a trained model does with its latent space: interpolations between two
//! inputs, traversals of each latent dimension, and, for a 2-D latent, the decoded manifold.
//! Each returns decoded pixels in \[0, 1\] (row-major images), ready for [`crate::image::grid_png`].

use std::path::{Path, PathBuf};

use crate::data::Images;
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::tensor::Tensor;
use crate::vae::Vae;

/// The condition of a conditional VAE: one class for every image of a picture. Other models
/// ignore it (`None`).
pub type Label = Option<usize>;

fn onehot(gpu: &Gpu, vae: &Vae, n: usize, label: Label) -> Result<Option<Tensor>> {
    match (vae.config.model, label) {
        (crate::vae::ModelKind::Cvae, Some(l)) => {
            Ok(Some(crate::data::gpu::onehot_rows(gpu, &vec![l; n], vae.config.classes)?))
        }
        (crate::vae::ModelKind::Cvae, None) => Err(Error::arg("label", "the conditional VAE needs a class to draw")),
        _ => Ok(None),
    }
}

fn decode(gpu: &Gpu, vae: &Vae, zs: &[f32], n: usize, label: Label) -> Result<Vec<f32>> {
    let z = Tensor::from_slice(gpu, n, vae.config.latent, zs)?;
    let y = onehot(gpu, vae, n, label)?;
    vae.decode_cond(gpu, &z, y.as_ref())?.to_vec(gpu)
}

/// Posterior means of `n` inputs (`x`: n rows of `input_dim` pixels in \[0, 1\]), all of class
/// `label` for a conditional VAE.
pub fn encode_means(gpu: &Gpu, vae: &Vae, x: &[f32], n: usize, label: Label) -> Result<Vec<f32>> {
    let t = Tensor::from_slice(gpu, n, vae.config.input_dim, x)?;
    let y = onehot(gpu, vae, n, label)?;
    vae.encode_cond(gpu, &t, y.as_ref())?.0.to_vec(gpu)
}

/// `steps` images decoded along the straight line from z_a to z_b (both ends included).
pub fn interpolation(gpu: &Gpu, vae: &Vae, za: &[f32], zb: &[f32], steps: usize, label: Label) -> Result<Vec<f32>> {
    let z = vae.config.latent;
    if za.len() != z || zb.len() != z {
        return Err(Error::arg("interpolation", format!("end points must have {z} latent values")));
    }
    if steps < 2 {
        return Err(Error::arg("steps", "an interpolation needs at least 2 steps"));
    }
    let mut zs = Vec::with_capacity(steps * z);
    for s in 0..steps {
        let t = s as f32 / (steps - 1) as f32;
        zs.extend(za.iter().zip(zb).map(|(a, b)| a + t * (b - a)));
    }
    decode(gpu, vae, &zs, steps, label)
}

/// One row per latent dimension in `dims` (in that order): dimension d swept over
/// \[−range, range\] in `steps` values while the others stay at `base`.
pub fn traversal(
    gpu: &Gpu,
    vae: &Vae,
    base: &[f32],
    dims: &[usize],
    range: f32,
    steps: usize,
    label: Label,
) -> Result<Vec<f32>> {
    let z = vae.config.latent;
    if base.len() != z || dims.is_empty() || dims.iter().any(|&d| d >= z) {
        return Err(Error::arg("traversal", format!("needs a base of {z} values and dimensions below {z}")));
    }
    if steps < 2 || !(range.is_finite() && range > 0.0) {
        return Err(Error::arg("steps", "need at least 2 steps and a positive range"));
    }
    let mut zs = Vec::with_capacity(dims.len() * steps * z);
    for &d in dims {
        for s in 0..steps {
            let mut v = base.to_vec();
            v[d] = -range + 2.0 * range * s as f32 / (steps - 1) as f32;
            zs.extend(v);
        }
    }
    decode(gpu, vae, &zs, dims.len() * steps, label)
}

/// For a 2-D latent: an n x n grid of decodings over \[−range, range\]², top row at z₂ = +range.
pub fn manifold(gpu: &Gpu, vae: &Vae, n: usize, range: f32, label: Label) -> Result<Vec<f32>> {
    if vae.config.latent != 2 {
        return Err(Error::arg("manifold", format!("needs a 2-D latent space, the model has {}", vae.config.latent)));
    }
    if n < 2 || !(range.is_finite() && range > 0.0) {
        return Err(Error::arg("n", "need a grid of at least 2x2 and a positive range"));
    }
    let at = |i: usize| -range + 2.0 * range * i as f32 / (n - 1) as f32;
    let mut zs = Vec::with_capacity(n * n * 2);
    for r in 0..n {
        for c in 0..n {
            zs.extend([at(c), at(n - 1 - r)]);
        }
    }
    decode(gpu, vae, &zs, n * n, label)
}

/// Latent dimensions ordered most-active first by `activity` (e.g. KL per dimension).
pub fn by_activity(activity: &[f64]) -> Vec<usize> {
    let mut dims: Vec<usize> = (0..activity.len()).collect();
    dims.sort_by(|&a, &b| activity[b].total_cmp(&activity[a]));
    dims
}

/// A picture ready to save: `n` images of `c` channels (1 grey, 3 RGB) of `h` x `w` pixels in
/// \[0, 1\], laid out in `cols` columns.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// Pixels, image after image, each channel after channel (NCHW), row-major.
    pub pixels: Vec<f32>,
    /// Number of images.
    pub n: usize,
    /// Channels per image.
    pub c: usize,
    /// Image height.
    pub h: usize,
    /// Image width.
    pub w: usize,
    /// Images per row of the grid.
    pub cols: usize,
}

impl Grid {
    /// The grid as PNG bytes (2-pixel borders, as PyTorch's `save_image`).
    pub fn png(&self) -> Result<Vec<u8>> {
        crate::image::grid_png(&self.pixels, self.n, [self.c, self.h, self.w], self.cols)
    }
    /// Writes the PNG to `path`, atomically.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        crate::image::save_grid(path.as_ref(), &self.pixels, self.n, [self.c, self.h, self.w], self.cols)
    }
}

/// The model's image: a conv model's own, else a square grey image.
fn image_of(vae: &Vae) -> Result<[usize; 3]> {
    if let Some(net) = &vae.config.conv {
        return Ok(net.image);
    }
    let d = vae.config.input_dim;
    let side = (d as f64).sqrt().round() as usize;
    if side * side != d {
        return Err(Error::arg("model", format!("its {d} inputs are not a square image")));
    }
    Ok([1, side, side])
}

/// A grid of `n` images of `test`'s shape.
fn test_grid(test: &Images, pixels: Vec<f32>, n: usize, cols: usize) -> Grid {
    Grid { pixels, n, c: test.channels(), h: test.rows(), w: test.cols(), cols }
}

fn test_example(test: &Images, i: usize, what: &str) -> Result<Vec<f32>> {
    if i >= test.n() {
        return Err(Error::arg(what, format!("{i} is past the {} test images", test.n())));
    }
    Ok(test.example(i))
}

fn test_label(test: &Images, i: usize) -> Label {
    test.labels().and_then(|l| l.get(i)).map(|&v| v as usize)
}

/// `n` decodings of prior draws z ~ N(0, I) (seeded), as a square-ish grid. A conditional VAE
/// draws class `label`, or one class per grid row when `label` is `None`.
pub fn sample_grid(gpu: &Gpu, vae: &Vae, n: usize, seed: u64, label: Label) -> Result<Grid> {
    let [c, h, w] = image_of(vae)?;
    let cols = ((n as f64).sqrt().ceil() as usize).max(1);
    let y = match (vae.config.model, label) {
        (crate::vae::ModelKind::Cvae, l) => {
            let c = vae.config.classes;
            let labels: Vec<usize> = (0..n).map(|i| l.unwrap_or((i / cols) % c)).collect();
            Some(crate::data::gpu::onehot_rows(gpu, &labels, c)?)
        }
        (_, Some(_)) => {
            return Err(Error::arg(
                "label",
                format!("only a conditional VAE (model cvae) draws chosen classes; this is a {}", vae.config.model),
            ))
        }
        (_, None) => None,
    };
    let pixels = vae.sample_cond(gpu, n, seed, y.as_ref())?.to_vec(gpu)?;
    Ok(Grid { pixels, n, c, h, w, cols })
}

/// The first `n` test images (top row) above their reconstructions through the posterior mean.
pub fn reconstruction_grid(gpu: &Gpu, vae: &Vae, test: &Images, n: usize) -> Result<Grid> {
    if n == 0 {
        return Err(Error::arg("n", "must be at least 1"));
    }
    let k = n.min(test.n());
    let inputs = test.examples(k);
    let x = Tensor::from_slice(gpu, k, test.dim(), &inputs)?;
    let y = match (test.labels(), vae.config.model) {
        (Some(l), crate::vae::ModelKind::Cvae) => {
            let labels: Vec<usize> = l[..k].iter().map(|&v| v as usize).collect();
            Some(crate::data::gpu::onehot_rows(gpu, &labels, vae.config.classes)?)
        }
        _ => None,
    };
    let mut pixels = inputs;
    pixels.extend(vae.reconstruct_cond(gpu, &x, y.as_ref())?.to_vec(gpu)?);
    Ok(test_grid(test, pixels, 2 * k, k))
}

/// Test images `from` and `to` framing `steps` decodings along the line between their codes (a
/// conditional VAE encodes each end with its own label and decodes with the first's).
pub fn interpolation_grid(gpu: &Gpu, vae: &Vae, test: &Images, from: usize, to: usize, steps: usize) -> Result<Grid> {
    let (xa, xb) = (test_example(test, from, "from")?, test_example(test, to, "to")?);
    let (la, lb) = (test_label(test, from), test_label(test, to));
    let za = encode_means(gpu, vae, &xa, 1, la)?;
    let zb = encode_means(gpu, vae, &xb, 1, lb)?;
    let mut pixels = xa;
    pixels.extend(interpolation(gpu, vae, &za, &zb, steps, la)?);
    pixels.extend(xb);
    Ok(test_grid(test, pixels, steps + 2, steps + 2))
}

/// Every latent dimension swept over \[−range, range\] around test image `index`'s code, one row
/// each, most active first: by KL per dimension for a VAE, by the variance of the code for an
/// autoencoder, measured on `test` (evaluation batch `batch`, noise `seed`). Also returns the
/// order with each dimension's activity.
pub fn traversal_grid(
    gpu: &Gpu,
    vae: &Vae,
    test: &Images,
    index: usize,
    range: f32,
    steps: usize,
    (batch, seed): (usize, u64),
) -> Result<(Grid, Vec<(usize, f64)>)> {
    let x = test_example(test, index, "index")?;
    let label = test_label(test, index);
    let base = encode_means(gpu, vae, &x, 1, label)?;
    let gi = crate::data::gpu::GpuImages::upload(gpu, test)?;
    let r = crate::train::evaluate_full(gpu, vae, &gi, batch, seed)?;
    let activity = if r.loss.kl > 0.0 {
        r.kl_per_dim.clone()
    } else {
        crate::vae::metrics::active_units(&r.mu, test.n(), vae.config.latent, 0.01)?.variances
    };
    let dims = by_activity(&activity);
    let pixels = traversal(gpu, vae, &base, &dims, range, steps, label)?;
    let order = dims.iter().map(|&d| (d, activity[d])).collect();
    Ok((test_grid(test, pixels, dims.len() * steps, steps), order))
}

/// For a 2-D latent space: the decoded n x n manifold over \[−range, range\]² (class 0 for a
/// conditional VAE) and a scatter plot (PNG) of the test codes coloured by label.
pub fn manifold_pictures(
    gpu: &Gpu,
    vae: &Vae,
    test: &Images,
    n: usize,
    range: f32,
    (batch, seed): (usize, u64),
) -> Result<(Grid, Vec<u8>)> {
    let label = (vae.config.model == crate::vae::ModelKind::Cvae).then_some(0);
    let pixels = manifold(gpu, vae, n, range, label)?;
    let grid = test_grid(test, pixels, n * n, n);
    let gi = crate::data::gpu::GpuImages::upload(gpu, test)?;
    let r = crate::train::evaluate_full(gpu, vae, &gi, batch, seed)?;
    let pts: Vec<(f32, f32)> = r.mu.chunks_exact(2).map(|c| (c[0], c[1])).collect();
    let labels: Option<Vec<u8>> = test.labels().map(|l| l.iter().map(|&v| v.min(255) as u8).collect());
    let scatter = crate::plot::scatter_png(&pts, labels.as_deref(), "test codes (posterior means)")?;
    Ok((grid, scatter))
}

/// Writes what a finished run leaves beside its checkpoint: `samples.png`, `reconstructions.png`,
/// `metrics.png` (the metrics file plotted) and, for a 2-D latent space, `manifold.png` and
/// `scatter.png`. Returns (what, path) of every file, the checkpoint and metrics included.
pub fn finish_run(
    dir: &Path,
    t: &crate::train::Trainer,
    test: &crate::data::Images,
) -> Result<Vec<(&'static str, PathBuf)>> {
    let (sp, rp) = write_pictures(dir, &t.gpu, &t.vae, test, t.opts.seed)?;
    let metrics = dir.join(crate::train::METRICS_FILE);
    let text = std::fs::read_to_string(&metrics).map_err(|source| Error::Io { path: metrics.clone(), source })?;
    let plot = dir.join("metrics.png");
    crate::checkpoint::write_atomic(&plot, &crate::plot::metrics_png(&crate::plot::parse_metrics(&text)?)?)?;
    let mut files = vec![
        ("metrics", metrics),
        ("metrics plot", plot),
        ("checkpoint", dir.join(crate::train::CHECKPOINT_FILE)),
        ("samples", sp),
        ("reconstructions", rp),
    ];
    if t.vae.config.latent == 2 {
        let eval = (crate::train::eval_batch(t.opts.batch), t.opts.seed);
        let (grid, scatter) = manifold_pictures(&t.gpu, &t.vae, test, 15, 3.0, eval)?;
        grid.save(dir.join("manifold.png"))?;
        crate::checkpoint::write_atomic(dir.join("scatter.png"), &scatter)?;
        files.push(("latent manifold", dir.join("manifold.png")));
        files.push(("latent scatter", dir.join("scatter.png")));
    }
    Ok(files)
}

/// Writes `samples.png` (8x8 prior samples) and `reconstructions.png` (8 test inputs above their
/// reconstructions) into `dir`.
pub fn write_pictures(
    dir: &Path,
    gpu: &Gpu,
    vae: &Vae,
    test: &crate::data::Images,
    seed: u64,
) -> Result<(PathBuf, PathBuf)> {
    let (sp, rp) = (dir.join("samples.png"), dir.join("reconstructions.png"));
    sample_grid(gpu, vae, 64, seed, None)?.save(&sp)?;
    reconstruction_grid(gpu, vae, test, 8)?.save(&rp)?;
    Ok((sp, rp))
}
