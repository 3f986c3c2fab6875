//! PNG grids of images (samples, reconstructions, interpolations), as the PyTorch example writes
//! them: tiles in rows and columns with a 2-pixel border.

use std::path::Path;

use crate::error::{Error, Result};

/// Encodes `images` (each `ch` planes of `h*w` values in \[0, 1\], clamped: NCHW, as the model
/// sees them) as a PNG grid of `cols` columns: grey for one channel, RGB for three.
pub fn grid_png(images: &[f32], n: usize, [ch, h, w]: [usize; 3], cols: usize) -> Result<Vec<u8>> {
    if n == 0 || h == 0 || w == 0 || cols == 0 || images.len() < n * ch * h * w {
        return Err(Error::arg(
            "image grid",
            format!("{} values cannot hold {n} images of {ch}x{h}x{w}", images.len()),
        ));
    }
    if ch != 1 && ch != 3 {
        return Err(Error::arg("image grid", format!("{ch} channels: pictures are grey (1) or RGB (3)")));
    }
    let cols = cols.min(n);
    let rows = n.div_ceil(cols);
    let pad = 2;
    let (gw, gh) = (cols * (w + pad) + pad, rows * (h + pad) + pad);
    let mut px = vec![0u8; gw * gh * ch];
    for i in 0..n {
        let (r, c) = (i / cols, i % cols);
        for k in 0..ch {
            for y in 0..h {
                for x in 0..w {
                    let v = images[((i * ch + k) * h + y) * w + x];
                    let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
                    let at = (pad + r * (h + pad) + y) * gw + pad + c * (w + pad) + x;
                    px[at * ch + k] = (v * 255.0 + 0.5) as u8;
                }
            }
        }
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, gw as u32, gh as u32);
        enc.set_color(if ch == 3 { png::ColorType::Rgb } else { png::ColorType::Grayscale });
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| Error::Image(format!("PNG encoding failed: {e}")))?;
        wr.write_image_data(&px).map_err(|e| Error::Image(format!("PNG encoding failed: {e}")))?;
    }
    Ok(out)
}

/// Writes a grid (see [`grid_png`]) to `path`, atomically.
pub fn save_grid(path: &Path, images: &[f32], n: usize, chw: [usize; 3], cols: usize) -> Result<()> {
    crate::checkpoint::write_atomic(path, &grid_png(images, n, chw, cols)?)
}
