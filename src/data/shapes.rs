//! A built-in procedural colour dataset in the spirit of DeepMind's 3D-shapes: an object standing
//! where a wall meets a floor, 64x64 RGB, generated from six independent factors, no download.
//!
//! | factor        | levels | values                                                               |
//! |---------------|--------|----------------------------------------------------------------------|
//! | `floor_hue`   | 4      | hue 0.0, 0.25, 0.5, 0.75 (red, yellow-green, cyan, violet)           |
//! | `wall_hue`    | 4      | the same hues, offset by 0.125 (orange, green, blue, magenta)         |
//! | `object_hue`  | 4      | hue 0.0625 + the floor hues (each between a floor and a wall hue)    |
//! | `scale`       | 3      | circumradius 8, 11, 14 pixels                                        |
//! | `shape`       | 4      | the sprites' shapes: square, ellipse, triangle, heart                |
//! | `orientation` | 5      | the camera rolled by -20°, -10°, 0°, 10°, 20°: the horizon and the object turn together |
//!
//! The horizon passes through the point (32, 40) (column, row); below it the floor brightens
//! towards the viewer, above it the wall darkens slightly towards the top, and the object, its
//! centre 2 pixels above the horizon, is lit from the left (brighter on its left side) so that it
//! stands out even where its hue is close to the background's. Pixels are anti-aliased by 2x2
//! supersampling; images are stored as u8 NCHW rows (all red values, then green, then blue).
//!
//! [`shapes`] renders the full factorial product, 4·4·4·3·4·5 = [`TOTAL`] = 3840 images,
//! shuffles it deterministically from the seed and holds out [`TEST_LEN`] = 384 (10%) as the test
//! split, leaving [`TRAIN_LEN`] = 3456 for training. Labels are the shape.

use super::sprites::inside;
use super::Split;

/// Names of the generating factors, in the order of [`super::Images::factors`] rows.
pub const FACTOR_NAMES: [&str; 6] = ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"];
/// Number of levels of each factor (same order as [`FACTOR_NAMES`]).
pub const FACTOR_SIZES: [usize; 6] = [4, 4, 4, 3, 4, 5];
/// Image side (the images are 3 x SIZE x SIZE).
pub const SIZE: usize = 64;
/// Number of images in both splits together (the full factorial product).
pub const TOTAL: usize = 4 * 4 * 4 * 3 * 4 * 5;
/// Number of test images (10% of [`TOTAL`]).
pub const TEST_LEN: usize = TOTAL / 10;
/// Number of training images.
pub const TRAIN_LEN: usize = TOTAL - TEST_LEN;

const RADII: [f32; 3] = [8.0, 11.0, 14.0];
const HORIZON: (f32, f32) = (32.0, 40.0);
const SS: usize = 2;

/// RGB in \[0, 1\] from hue, saturation and value (all in \[0, 1\]).
fn hsv(h: f32, s: f32, v: f32) -> [f32; 3] {
    let h6 = (h.rem_euclid(1.0)) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as u32 % 6 {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// The colour of the scene of factors `f` at image point (x, y) (column, row; y grows down).
fn colour(f: [u8; 6], x: f32, y: f32) -> [f32; 3] {
    let roll = (-20.0 + 10.0 * f32::from(f[5])).to_radians();
    let (s, c) = roll.sin_cos();
    // Camera frame: u along the horizon, w up from it.
    let (dx, dy) = (x - HORIZON.0, HORIZON.1 - y);
    let u = c * dx + s * dy;
    let w = -s * dx + c * dy;
    let r = RADII[f[3] as usize];
    let (ou, ow) = (u / r, (w - 2.0) / r);
    if inside(f[4] as usize, ou, ow) {
        // Lit from the left.
        return hsv(0.0625 + 0.25 * f32::from(f[2]), 0.9, (0.85 - 0.25 * ou).clamp(0.4, 1.0));
    }
    if w < 0.0 {
        hsv(0.25 * f32::from(f[0]), 0.65, 0.45 + 0.5 * (-w / 30.0).min(1.0))
    } else {
        hsv(0.125 + 0.25 * f32::from(f[1]), 0.55, 0.9 - 0.2 * (w / 45.0).min(1.0))
    }
}

/// Renders one image into `out` (3·SIZE·SIZE bytes, NCHW).
fn render(f: [u8; 6], out: &mut [u8]) {
    let plane = SIZE * SIZE;
    for row in 0..SIZE {
        for col in 0..SIZE {
            let mut acc = [0.0f32; 3];
            for sy in 0..SS {
                for sx in 0..SS {
                    let x = col as f32 + (sx as f32 + 0.5) / SS as f32;
                    let y = row as f32 + (sy as f32 + 0.5) / SS as f32;
                    let rgb = colour(f, x, y);
                    for k in 0..3 {
                        acc[k] += rgb[k];
                    }
                }
            }
            for (k, a) in acc.iter().enumerate() {
                out[k * plane + row * SIZE + col] = (a / (SS * SS) as f32 * 255.0).round().clamp(0.0, 255.0) as u8;
            }
        }
    }
}

/// The shapes dataset (see the [module docs](self)): every factor combination exactly once,
/// shuffled by `seed`, split into [`TRAIN_LEN`] training and [`TEST_LEN`] test images.
pub fn shapes(seed: u64) -> Split {
    super::Factorial {
        name: "shapes",
        names: &FACTOR_NAMES,
        sizes: &FACTOR_SIZES,
        shape: &[3, SIZE, SIZE],
        label: 4,
        test_len: TEST_LEN,
        render: &|f, out| render([f[0], f[1], f[2], f[3], f[4], f[5]], out),
    }
    .split(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_primaries() {
        for (h, want) in [(0.0, [1.0, 0.0, 0.0]), (1.0 / 3.0, [0.0, 1.0, 0.0]), (2.0 / 3.0, [0.0, 0.0, 1.0])] {
            let got = hsv(h, 1.0, 1.0);
            assert!(got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-5), "hue {h}: {got:?}");
        }
        assert_eq!(hsv(0.5, 0.0, 0.25), [0.25; 3], "no saturation is grey");
    }
}
