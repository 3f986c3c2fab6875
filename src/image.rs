//! PNG grids of images (samples, reconstructions, interpolations), as the PyTorch example writes
//! them: tiles in rows and columns with a 2-pixel border.

use std::path::Path;

use crate::error::{Error, Result};

/// Encodes `images` (each `h*w` values in \[0, 1\], clamped) as a grey PNG grid of `cols` columns.
pub fn grid_png(images: &[f32], n: usize, h: usize, w: usize, cols: usize) -> Result<Vec<u8>> {
    if n == 0 || h == 0 || w == 0 || cols == 0 || images.len() < n * h * w {
        return Err(Error::arg("image grid", format!("{} values cannot hold {n} images of {h}x{w}", images.len())));
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut px = vec![0u8; gw * gh];
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        for y in 0..h {
            for x in 0..w {
                let v = images[i * h * w + y * w + x];
                let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
                px[(pad + r * (h + pad) + y) * gw + pad + c * (w + pad) + x] = (v * 255.0 + 0.5) as u8;
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, gw as u32, gh as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| Error::Image(format!("PNG encoding failed: {e}")))?;
        wr.write_image_data(&px).map_err(|e| Error::Image(format!("PNG encoding failed: {e}")))?;
    }
    Ok(out)
}

/// Writes a grid (see [`grid_png`]) to `path`, atomically.
pub fn save_grid(path: &Path, images: &[f32], n: usize, h: usize, w: usize, cols: usize) -> Result<()> {
    crate::checkpoint::write_atomic(path, &grid_png(images, n, h, w, cols)?)
}
