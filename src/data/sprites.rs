//! A built-in procedural dataset in the spirit of dSprites: white shapes on black, 28x28 pixels,
//! generated from five independent factors, no download needed.
//!
//! | factor     | levels | values                                                                      |
//! |------------|--------|-----------------------------------------------------------------------------|
//! | `shape`    | 4      | 0 square, 1 ellipse, 2 triangle, 3 heart                                    |
//! | `scale`    | 4      | circumradius 3.5, 4.5, 5.5, 6.5 pixels                                      |
//! | `rotation` | 8      | `k / 8` of the shape's symmetry period: 90° square, 180° ellipse, 120° triangle, 360° heart |
//! | `x`        | 7      | centre column 8, 10, ..., 20 (in pixel units, left edge of the image = 0)   |
//! | `y`        | 7      | centre row 8, 10, ..., 20 (top edge = 0)                                    |
//!
//! Rotations are counter-clockwise as seen on screen and sample the shape's full symmetry period,
//! so no two factor combinations of one shape give the same image. Every shape lies within its
//! circumcircle, which stays at least 1.5 pixels from the image edges at every combination: the
//! border rows and columns are always black. Pixels are anti-aliased by 4x4 supersampling.
//!
//! [`sprites`] renders the full factorial product, 4 * 4 * 8 * 7 * 7 = [`TOTAL`] = 6272 images,
//! shuffles it deterministically from the seed and holds out [`TEST_LEN`] = 627 images (10%) as the
//! test split, leaving [`TRAIN_LEN`] = 5645 for training.

use super::Split;

/// Names of the generating factors, in the order of [`super::Images::factors`] rows.
pub const FACTOR_NAMES: [&str; 5] = ["shape", "scale", "rotation", "x", "y"];
/// Number of levels of each factor (same order as [`FACTOR_NAMES`]).
pub const FACTOR_SIZES: [usize; 5] = [4, 4, 8, 7, 7];
/// Names of the shapes, indexed by the `shape` factor (and the label).
pub const SHAPE_NAMES: [&str; 4] = ["square", "ellipse", "triangle", "heart"];
/// Image height and width.
pub const SIZE: usize = 28;
/// Number of images in both splits together (the full factorial product).
pub const TOTAL: usize = FACTOR_SIZES[0] * FACTOR_SIZES[1] * FACTOR_SIZES[2] * FACTOR_SIZES[3] * FACTOR_SIZES[4];
/// Number of test images (10% of [`TOTAL`], rounded down).
pub const TEST_LEN: usize = TOTAL / 10;
/// Number of training images.
pub const TRAIN_LEN: usize = TOTAL - TEST_LEN;

/// Circumradius in pixels per `scale` level.
const RADII: [f32; 4] = [3.5, 4.5, 5.5, 6.5];
/// Symmetry period in degrees per shape; rotation level `k` is `k / 8` of it.
const PERIOD_DEG: [f32; 4] = [90.0, 180.0, 120.0, 360.0];
/// Centre coordinate of position level 0; level `k` is `POS0 + POS_STEP * k`.
const POS0: f32 = 8.0;
const POS_STEP: f32 = 2.0;
/// Supersampling grid per axis.
const SS: usize = 4;

/// Whether the point `(u, v)` of the shape's own frame (circumradius 1, `v` pointing up) is inside.
pub(crate) fn inside(shape: usize, u: f32, v: f32) -> bool {
    match shape {
        // Square inscribed in the unit circle.
        0 => u.abs() <= std::f32::consts::FRAC_1_SQRT_2 && v.abs() <= std::f32::consts::FRAC_1_SQRT_2,
        // Ellipse with semi-axes 1 and 0.5.
        1 => u * u + 4.0 * v * v <= 1.0,
        // Equilateral triangle inscribed in the unit circle, apex up: inradius 0.5.
        2 => {
            const C30: f32 = 0.866_025_4;
            -v <= 0.5 && C30 * u + 0.5 * v <= 0.5 && -C30 * u + 0.5 * v <= 0.5
        }
        // Heart curve (x^2 + y^2 - 1)^3 <= x^2 y^3, scaled by 1/1.25 and shifted so that it lies in
        // the unit circle (its farthest point from (0, 0.25) is at distance 1.2499).
        _ => {
            let x = u * 1.25;
            let y = v * 1.25 + 0.25;
            let a = x * x + y * y - 1.0;
            a * a * a <= x * x * y * y * y
        }
    }
}

/// Renders one image into `out` (`SIZE * SIZE` bytes, zeroed).
fn render(f: [u8; 5], out: &mut [u8]) {
    let shape = f[0] as usize;
    let r = RADII[f[1] as usize];
    let theta = (PERIOD_DEG[shape] * f32::from(f[2]) / FACTOR_SIZES[2] as f32).to_radians();
    let (s, c) = theta.sin_cos();
    let cx = POS0 + POS_STEP * f32::from(f[3]);
    let cy = POS0 + POS_STEP * f32::from(f[4]);
    let inv_r = 1.0 / r;
    // Only the pixels that the circumcircle can reach.
    let lo = |c: f32| ((c - r).floor().max(0.0)) as usize;
    let hi = |c: f32| ((c + r).ceil() as usize).min(SIZE - 1);
    for row in lo(cy)..=hi(cy) {
        for col in lo(cx)..=hi(cx) {
            let mut hits = 0u32;
            for sy in 0..SS {
                // Image rows grow downwards; the shape frame's v points up.
                let dy = cy - (row as f32 + (sy as f32 + 0.5) / SS as f32);
                for sx in 0..SS {
                    let dx = col as f32 + (sx as f32 + 0.5) / SS as f32 - cx;
                    // Rotate the sample by -theta into the shape frame (shape turns counter-clockwise).
                    let u = (c * dx + s * dy) * inv_r;
                    let v = (-s * dx + c * dy) * inv_r;
                    hits += u32::from(inside(shape, u, v));
                }
            }
            let full = (SS * SS) as u32;
            out[row * SIZE + col] = ((hits * 255 + full / 2) / full) as u8;
        }
    }
}

/// The sprites dataset (see the [module docs](self)): every factor combination exactly once,
/// shuffled by `seed`, split into [`TRAIN_LEN`] training and [`TEST_LEN`] test images.
///
/// Labels are the shape index (`num_classes` = 4) and `factors` holds each image's five factor
/// levels in the order of [`FACTOR_NAMES`]. The same seed always gives the same split.
pub fn sprites(seed: u64) -> Split {
    super::Factorial {
        name: "sprites",
        names: &FACTOR_NAMES,
        sizes: &FACTOR_SIZES,
        shape: &[SIZE, SIZE],
        label: 0,
        test_len: TEST_LEN,
        render: &|f, out| render([f[0], f[1], f[2], f[3], f[4]], out),
    }
    .split(seed)
}
