//! Image folders, as torchvision's `ImageFolder` reads them: one subfolder per class (classes in
//! name order, labels 0, 1, ...) holding PNG and JPEG files, or the files directly in the folder
//! (no labels). A folder with `train/` and `test/` subfolders keeps that split; otherwise a seeded
//! tenth of the images becomes the test split.
//!
//! Images become u8 NCHW rows: grey when every image is grey, RGB otherwise (grey images are then
//! repeated over the three channels; alpha is dropped). With `image_size` S every image is
//! resized so that its shorter side is S (area averaging when shrinking, bilinear when growing)
//! and centre-cropped to S x S, as torchvision's `Resize(S)` + `CenterCrop(S)`; without it all
//! images must have one size. Unreadable files and mixed sizes are errors naming the file.
//! Needs the `images` feature (PNG through `png`, JPEG through `zune-jpeg`).

use std::path::{Path, PathBuf};

use super::{Images, Split};
use crate::error::{Error, Result};

/// A decoded image: `channels` (1 or 3) planes of `height` x `width` bytes, NCHW.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Rows.
    pub height: usize,
    /// Columns.
    pub width: usize,
    /// Channel after channel, row-major.
    pub pixels: Vec<u8>,
}

fn bad(path: &Path, detail: impl std::fmt::Display) -> Error {
    Error::Data { path: path.to_path_buf(), detail: detail.to_string() }
}

/// Whether `path` names a file this loader reads (by extension: png, jpg, jpeg).
pub fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg"))
}

/// Interleaved samples (`components` per pixel) to NCHW planes, keeping grey or RGB.
fn planes(samples: &[u8], width: usize, height: usize, components: usize) -> Decoded {
    let channels = if components >= 3 { 3 } else { 1 };
    let n = width * height;
    let mut pixels = vec![0u8; channels * n];
    for i in 0..n {
        for c in 0..channels {
            pixels[c * n + i] = samples[i * components + c];
        }
    }
    Decoded { channels, height, width, pixels }
}

/// Decodes one PNG or JPEG file (by its extension).
pub fn decode_file(path: &Path) -> Result<Decoded> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let d = if ext.as_deref() == Some("png") { decode_png(&bytes) } else { decode_jpeg(&bytes) };
    let d = d.map_err(|e| bad(path, e))?;
    if d.width == 0 || d.height == 0 {
        return Err(bad(path, "the image is empty"));
    }
    Ok(d)
}

fn decode_png(bytes: &[u8]) -> std::result::Result<Decoded, String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(bytes));
    // Palettes and low bit depths expanded, 16-bit samples cut to 8.
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = dec.read_info().map_err(|e| format!("not a readable PNG ({e})"))?;
    let size = reader.output_buffer_size().ok_or("the PNG is too large")?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("not a readable PNG ({e})"))?;
    let components = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => return Err("an indexed PNG that did not expand".into()),
    };
    let (w, h) = (info.width as usize, info.height as usize);
    Ok(planes(&buf[..w * h * components], w, h, components))
}

fn decode_jpeg(bytes: &[u8]) -> std::result::Result<Decoded, String> {
    use zune_jpeg::zune_core::bytestream::ZCursor;
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;
    let decode = |cs: ColorSpace| {
        let opts = DecoderOptions::default().jpeg_set_out_colorspace(cs);
        let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), opts);
        let px = d.decode().map_err(|e| format!("not a readable JPEG ({e:?})"))?;
        let info = d.info().ok_or("not a readable JPEG (no header)")?;
        Ok::<_, String>((px, info.width as usize, info.height as usize, info.components))
    };
    let (px, w, h, components) = decode(ColorSpace::RGB)?;
    if components == 1 {
        let (px, w, h, _) = decode(ColorSpace::Luma)?;
        return Ok(planes(&px, w, h, 1));
    }
    Ok(planes(&px, w, h, 3))
}

/// Source pixel weights for one output pixel along an axis of `n_in` samples resampled to
/// `n_out`: area averaging when shrinking, linear interpolation when growing.
fn weights(n_in: usize, n_out: usize) -> Vec<Vec<(usize, f32)>> {
    let scale = n_in as f64 / n_out as f64;
    (0..n_out)
        .map(|o| {
            if scale >= 1.0 {
                let (a, b) = (o as f64 * scale, (o + 1) as f64 * scale);
                let mut w = Vec::new();
                let mut i = a.floor() as usize;
                while (i as f64) < b && i < n_in {
                    let overlap = (b.min(i as f64 + 1.0) - a.max(i as f64)) / scale;
                    if overlap > 0.0 {
                        w.push((i, overlap as f32));
                    }
                    i += 1;
                }
                w
            } else {
                let x = ((o as f64 + 0.5) * scale - 0.5).clamp(0.0, (n_in - 1) as f64);
                let i = x.floor() as usize;
                let f = (x - i as f64) as f32;
                if i + 1 < n_in && f > 0.0 {
                    vec![(i, 1.0 - f), (i + 1, f)]
                } else {
                    vec![(i, 1.0)]
                }
            }
        })
        .collect()
}

/// `img` resized so that its shorter side is `s`, then centre-cropped to `s` x `s`.
pub fn resize_crop(img: &Decoded, s: usize) -> Decoded {
    let (h, w) = (img.height, img.width);
    // The shorter side becomes s; the other keeps the aspect ratio (rounded, at least s).
    let (nh, nw) = if h <= w {
        (s, ((w as f64 * s as f64 / h as f64).round() as usize).max(s))
    } else {
        (((h as f64 * s as f64 / w as f64).round() as usize).max(s), s)
    };
    let (wy, wx) = (weights(h, nh), weights(w, nw));
    let (top, left) = ((nh - s) / 2, (nw - s) / 2);
    let mut pixels = vec![0u8; img.channels * s * s];
    let mut row = vec![0f32; w];
    for c in 0..img.channels {
        let plane = &img.pixels[c * h * w..(c + 1) * h * w];
        for y in 0..s {
            // Vertical pass into one source-width row, then horizontal.
            row.iter_mut().for_each(|v| *v = 0.0);
            for &(sy, wgt) in &wy[top + y] {
                for (x, v) in row.iter_mut().enumerate() {
                    *v += wgt * plane[sy * w + x] as f32;
                }
            }
            for x in 0..s {
                let v: f32 = wx[left + x].iter().map(|&(sx, wgt)| wgt * row[sx]).sum();
                pixels[(c * s + y) * s + x] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    }
    Decoded { channels: img.channels, height: s, width: s, pixels }
}

/// Image files with their labels.
type Labelled = Vec<(PathBuf, u32)>;

/// The image files of `dir` and their labels, with the class names: per class subfolder (sorted)
/// when there are subfolders, else the folder's own files unlabelled. Files in name order.
fn listing(dir: &Path) -> Result<(Labelled, Vec<String>)> {
    let read = |d: &Path| -> Result<Vec<PathBuf>> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|source| Error::Io { path: d.to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        v.sort();
        Ok(v)
    };
    let entries = read(dir)?;
    let classes: Vec<PathBuf> = entries.iter().filter(|p| p.is_dir()).cloned().collect();
    let mut files = Vec::new();
    let mut names = Vec::new();
    if classes.is_empty() {
        files.extend(entries.into_iter().filter(|p| is_image(p)).map(|p| (p, 0)));
    } else {
        for (k, c) in classes.iter().enumerate() {
            names.push(c.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            files.extend(read(c)?.into_iter().filter(|p| is_image(p)).map(|p| (p, k as u32)));
        }
    }
    if files.is_empty() {
        return Err(bad(dir, "no PNG or JPEG images in the folder or its class subfolders"));
    }
    Ok((files, names))
}

/// Decodes `files` into one [`Images`] of a common shape (see the module docs).
fn load_images(files: &[(PathBuf, u32)], classes: usize, image_size: Option<usize>, max_bytes: u64) -> Result<Images> {
    let mut decoded = Vec::with_capacity(files.len());
    for (path, _) in files {
        let d = decode_file(path)?;
        let d = match image_size {
            Some(s) => resize_crop(&d, s),
            None => d,
        };
        if let Some((first, f)) = decoded.first().map(|f: &Decoded| (&files[0].0, f)) {
            if (d.height, d.width) != (f.height, f.width) {
                return Err(bad(
                    path,
                    format!(
                        "{}x{} pixels, but {} is {}x{}: give --image-size to resize every image to one size",
                        d.width,
                        d.height,
                        first.display(),
                        f.width,
                        f.height
                    ),
                ));
            }
        }
        decoded.push(d);
    }
    let channels = if decoded.iter().any(|d| d.channels == 3) { 3 } else { 1 };
    let (h, w) = (decoded[0].height, decoded[0].width);
    let total = (files.len() as u64).saturating_mul((channels * h * w) as u64);
    if total > max_bytes {
        return Err(bad(
            &files[0].0,
            format!(
                "the {} images take {total} bytes, more than the {max_bytes} a dataset may take; \
                 use a smaller --image-size or fewer images",
                files.len()
            ),
        ));
    }
    let mut pixels = Vec::with_capacity(total as usize);
    for d in &decoded {
        if d.channels == channels {
            pixels.extend_from_slice(&d.pixels);
        } else {
            // A grey image among colour ones: the same plane three times.
            for _ in 0..3 {
                pixels.extend_from_slice(&d.pixels);
            }
        }
    }
    let shape: Vec<usize> = if channels == 1 { vec![h, w] } else { vec![3, h, w] };
    let images = Images::from_u8(pixels, files.len(), &shape)?;
    if classes > 0 {
        images.with_labels_of(files.iter().map(|f| f.1).collect(), classes)
    } else {
        Ok(images)
    }
}

/// Loads an image folder (see the module docs) as a train/test split: `train/` and `test/`
/// subfolders when present (with the same classes), else a seeded tenth held out for testing.
/// Refuses data of more than `max_bytes`.
pub fn load_folder(dir: &Path, image_size: Option<usize>, seed: u64, max_bytes: u64) -> Result<Split> {
    if image_size == Some(0) {
        return Err(Error::arg("image_size", "must be at least 1"));
    }
    let name = dir.display().to_string();
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    if train_dir.is_dir() && test_dir.is_dir() {
        let (train_files, classes) = listing(&train_dir)?;
        let (test_files, test_classes) = listing(&test_dir)?;
        if classes != test_classes {
            return Err(bad(dir, format!("train/ has classes {classes:?} but test/ has {test_classes:?}")));
        }
        let train = load_images(&train_files, classes.len(), image_size, max_bytes)?;
        let test = load_images(&test_files, classes.len(), image_size, max_bytes)?;
        if train.shape() != test.shape() {
            return Err(bad(
                &test_dir,
                format!("its images are {:?} but train/'s are {:?}", test.shape(), train.shape()),
            ));
        }
        return Ok(Split { name, train, test });
    }
    let (files, classes) = listing(dir)?;
    if files.len() < 2 {
        return Err(bad(dir, "a folder without train/ and test/ needs at least 2 images to split"));
    }
    let all = load_images(&files, classes.len(), image_size, max_bytes)?;
    let mut split = all.split(0.1, seed)?;
    split.name = name;
    Ok(split)
}
