//! Pictures of what a trained model does with its latent space: interpolations between two
//! inputs, traversals of each latent dimension, and, for a 2-D latent, the decoded manifold.
//! Each returns decoded pixels in \[0, 1\] (row-major images), ready for [`crate::image::grid_png`].

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
        (crate::vae::ModelKind::Cvae, None) => Err(Error::arg("--label", "the conditional VAE needs a class to draw")),
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
        return Err(Error::arg("--steps", "an interpolation needs at least 2 steps"));
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
        return Err(Error::arg("--steps/--range", "need at least 2 steps and a positive range"));
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
        return Err(Error::arg("--n/--range", "need a grid of at least 2x2 and a positive range"));
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
