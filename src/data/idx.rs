//! IDX files in the MNIST layout (MNIST, Fashion-MNIST, KMNIST, ...), raw or gzip-compressed.
//!
//! A dataset directory holds `train-images-idx3-ubyte`, `t10k-images-idx3-ubyte` and, optionally,
//! `train-labels-idx1-ubyte` and `t10k-labels-idx1-ubyte`, each either as is or with a `.gz` suffix.
//! Headers are validated against the actual file contents before anything is sized from them, so a
//! damaged or hostile file gives an [`Error::Data`] naming the file, never a panic or a huge allocation.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{Images, Split};
use crate::error::{Error, Result};

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// Base names of the four files of an MNIST-layout directory, without the optional `.gz`.
pub const TRAIN_IMAGES: &str = "train-images-idx3-ubyte";
/// Training labels (optional).
pub const TRAIN_LABELS: &str = "train-labels-idx1-ubyte";
/// Test images.
pub const TEST_IMAGES: &str = "t10k-images-idx3-ubyte";
/// Test labels (optional).
pub const TEST_LABELS: &str = "t10k-labels-idx1-ubyte";

const FASHION_HINT: &str = "Fashion-MNIST is packaged in Debian/Ubuntu as `dataset-fashion-mnist` \
     (`apt-get install dataset-fashion-mnist`), which installs it in /usr/share/datasets/fashion-mnist/";

/// The most pixel bytes [`load_dir`] and [`read_images`] accept from one image file (2 GiB, the
/// largest buffer most adapters allow); [`load_dir_within`] takes the device's own limit.
pub const MAX_DATASET_BYTES: u64 = 2 << 30;

fn data_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Data { path: path.to_path_buf(), detail: detail.into() }
}

fn is_gz(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

/// An opened IDX file: a byte stream (decompressed if gzipped) plus what is known of its size.
struct Source<'a> {
    path: &'a Path,
    reader: Box<dyn Read + 'a>,
    gz: bool,
    /// On-disk length of a raw file (exact size of the stream).
    raw_len: Option<u64>,
}

impl<'a> Source<'a> {
    fn open(path: &'a Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let gz = is_gz(path);
        let (reader, raw_len): (Box<dyn Read + 'a>, Option<u64>) = if gz {
            (Box::new(MultiGzDecoder::new(BufReader::new(file))), None)
        } else {
            let len = file.metadata().map_err(|source| Error::Io { path: path.to_path_buf(), source })?.len();
            (Box::new(BufReader::new(file)), Some(len))
        };
        Ok(Source { path, reader, gz, raw_len })
    }

    fn stream_err(&self, e: std::io::Error) -> Error {
        if self.gz {
            data_err(
                self.path,
                format!("corrupt or truncated gzip data ({e}); re-download the file, or check it with `gzip -t`"),
            )
        } else {
            Error::Io { path: self.path.to_path_buf(), source: e }
        }
    }

    /// Reads until `buf` is full or the stream ends; returns the number of bytes read.
    fn read_full(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.reader.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(self.stream_err(e)),
            }
        }
        Ok(got)
    }

    /// Reads the fixed-size header; a short stream is reported as too short for `what`.
    fn header<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut h = [0u8; N];
        let got = self.read_full(&mut h)?;
        if got < N {
            let kind = if self.gz { "decompresses to" } else { "is" };
            return Err(data_err(
                self.path,
                format!(
                    "file {kind} only {got} bytes, too short for the {N}-byte header of an IDX {what} file; \
                     the file is truncated or not an IDX file, re-download it"
                ),
            ));
        }
        Ok(h)
    }

    /// Reads exactly `len` payload bytes after the header and checks that nothing follows them.
    /// `describe` says what the header announced (for the error message).
    fn payload(&mut self, header_len: u64, len: u64, describe: &str) -> Result<Vec<u8>> {
        let kind = if self.gz { "decompressed data has" } else { "file has" };
        let path = self.path;
        let truncated = |body: u64| {
            data_err(
                path,
                format!(
                    "header says {describe} = {len} bytes, but the {kind} only {body} bytes after the \
                     {header_len}-byte header; the file is truncated, re-download it"
                ),
            )
        };
        if let Some(file_len) = self.raw_len {
            let body = file_len.saturating_sub(header_len);
            if body < len {
                return Err(truncated(body));
            }
            if body > len {
                return Err(data_err(
                    self.path,
                    format!(
                        "header says {describe} = {len} bytes, but the {kind} {body} bytes after the \
                         {header_len}-byte header ({} bytes of trailing garbage); the file is corrupt or \
                         not in the layout its header claims, re-download it",
                        body - len
                    ),
                ));
            }
        }
        let len_usize = usize::try_from(len).map_err(|_| {
            data_err(self.path, format!("header says {describe} = {len} bytes, more than this machine can address"))
        })?;
        // Exactly the announced size (checked against the caller's limit before this), reserved
        // once: growing by doubling would copy and hold up to three times the data at the peak.
        // Pages of a reservation a lying header never fills are never touched.
        let mut data = Vec::new();
        data.try_reserve_exact(len_usize.saturating_add(1)).map_err(|_| {
            data_err(
                self.path,
                format!("header says {describe} = {len} bytes, which do not fit in this machine's memory"),
            )
        })?;
        // Read at most one byte more than announced: enough to detect trailing data without
        // letting a lying header (or a gzip bomb) make us read or allocate more.
        let cap = len.saturating_add(1);
        let res = self.reader.by_ref().take(cap).read_to_end(&mut data);
        if let Err(e) = res {
            return Err(self.stream_err(e));
        }
        let body = data.len() as u64;
        if body < len {
            return Err(truncated(body));
        }
        if body > len {
            return Err(data_err(
                self.path,
                format!(
                    "header says {describe} = {len} bytes, but more data follows them (trailing garbage); \
                     the file is corrupt or not in the layout its header claims, re-download it"
                ),
            ));
        }
        Ok(data)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn check_magic(path: &Path, found: u32, expected: u32, what: &str) -> Result<()> {
    if found == expected {
        return Ok(());
    }
    let mut detail =
        format!("not an IDX {what} file: expected magic number 0x{expected:08X} (unsigned bytes, {} dimension{}), found 0x{found:08X}",
            expected & 0xFF, if expected & 0xFF == 1 { "" } else { "s" });
    if (found >> 16) == 0x1F8B && !is_gz(path) {
        detail.push_str("; the file looks gzip-compressed: give it a `.gz` suffix or decompress it with `gunzip`");
    } else if found == IMAGES_MAGIC {
        detail.push_str("; this is an IDX image file, check the file name");
    } else if found == LABELS_MAGIC {
        detail.push_str("; this is an IDX label file, check the file name");
    } else if found >> 16 == 0 && (found >> 8) & 0xFF != 0x08 {
        detail.push_str(&format!(
            "; element type 0x{:02X} is not supported, only unsigned bytes (0x08)",
            (found >> 8) & 0xFF
        ));
    }
    Err(data_err(path, detail))
}

/// Reads an IDX image file (magic `0x00000803`, raw or `.gz`): returns `(n, rows, cols, pixels)` with
/// `n * rows * cols` row-major 8-bit pixels.
///
/// Errors ([`Error::Data`] naming the file) on a wrong magic number, zero images or zero-size images,
/// a file shorter or longer than its header announces, or corrupt gzip data; [`Error::Io`] if the
/// file cannot be opened or read.
pub fn read_images(path: &Path) -> Result<(usize, usize, usize, Vec<u8>)> {
    read_images_within(path, MAX_DATASET_BYTES)
}

/// [`read_images`] refusing, before reading the pixels, a header that announces more than
/// `max_bytes` of them.
pub fn read_images_within(path: &Path, max_bytes: u64) -> Result<(usize, usize, usize, Vec<u8>)> {
    let mut src = Source::open(path)?;
    let h = src.header::<16>("image")?;
    check_magic(path, be32(&h[0..4]), IMAGES_MAGIC, "image")?;
    let (n, rows, cols) = (be32(&h[4..8]), be32(&h[8..12]), be32(&h[12..16]));
    if n == 0 {
        return Err(data_err(path, "header says the file holds 0 images; an image file needs at least one image"));
    }
    if rows == 0 || cols == 0 {
        return Err(data_err(
            path,
            format!("header says the images are {rows}x{cols} pixels; images need at least one row and column"),
        ));
    }
    // Three u32 factors: the product fits u128, and u64 unless absurdly large.
    let len = u128::from(n) * u128::from(rows) * u128::from(cols);
    let describe = format!("{n} images of {rows}x{cols}");
    let len = u64::try_from(len)
        .map_err(|_| data_err(path, format!("header says {describe} = {len} bytes, which cannot be a real file")))?;
    if len > max_bytes {
        return Err(data_err(
            path,
            format!(
                "header says {describe} = {len} bytes, more than the {max_bytes} bytes a dataset may take here \
                 (wgvae's limit for a dataset); use fewer or smaller images"
            ),
        ));
    }
    let pixels = src.payload(16, len, &describe)?;
    Ok((n as usize, rows as usize, cols as usize, pixels))
}

/// Reads an IDX label file (magic `0x00000801`, raw or `.gz`): one byte per label.
///
/// Errors ([`Error::Data`] naming the file) on a wrong magic number, a file shorter or longer than
/// its header announces, or corrupt gzip data; [`Error::Io`] if the file cannot be opened or read.
pub fn read_labels(path: &Path) -> Result<Vec<u8>> {
    let mut src = Source::open(path)?;
    let h = src.header::<8>("label")?;
    check_magic(path, be32(&h[0..4]), LABELS_MAGIC, "label")?;
    let n = be32(&h[4..8]);
    src.payload(8, u64::from(n), &format!("{n} labels of 1 byte"))
}

/// What kind of non-regular file `t` is, for messages.
fn kind_of(t: std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    if t.is_dir() {
        "a directory"
    } else {
        "not a regular file"
    }
}

/// The file `base` or `base.gz` in `dir`, preferring the uncompressed one when both exist. A name
/// that exists but is no regular file (a FIFO, a device, a directory, a dangling symlink or a
/// symlink loop) is an error naming it, never "missing".
fn find(dir: &Path, base: &str) -> Result<Option<PathBuf>> {
    for p in [dir.join(base), dir.join(format!("{base}.gz"))] {
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => return Ok(Some(p)),
            Ok(m) => {
                return Err(data_err(
                    &p,
                    format!("is {}, not a regular file; an IDX file is needed here", kind_of(m.file_type())),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if std::fs::symlink_metadata(&p).is_ok() {
                    return Err(data_err(&p, "is a symbolic link to a file that does not exist"));
                }
            }
            Err(source) => return Err(Error::Io { path: p, source }),
        }
    }
    Ok(None)
}

fn required(dir: &Path, base: &str) -> Result<PathBuf> {
    find(dir, base)?.ok_or_else(|| {
        data_err(
            &dir.join(base),
            format!(
                "missing image file: looked for `{base}` and `{base}.gz` in {}. An MNIST-layout directory \
                 needs {TRAIN_IMAGES}[.gz] and {TEST_IMAGES}[.gz] (labels {TRAIN_LABELS}[.gz] and \
                 {TEST_LABELS}[.gz] are optional). {FASHION_HINT}",
                dir.display()
            ),
        )
    })
}

/// Images of one split plus, when the label file exists, its labels (checked to match in count).
fn load_split(dir: &Path, images: &str, labels: &str, max_bytes: u64) -> Result<(PathBuf, Images)> {
    let img_path = required(dir, images)?;
    let (n, rows, cols, pixels) = read_images_within(&img_path, max_bytes)?;
    let labels = match find(dir, labels)? {
        None => None,
        Some(lab_path) => {
            let l = read_labels(&lab_path)?;
            if l.len() != n {
                return Err(data_err(
                    &lab_path,
                    format!(
                        "has {} labels but the image file {} has {n} images; the two files must come from the \
                         same dataset and split, replace the mismatched one",
                        l.len(),
                        img_path.display()
                    ),
                ));
            }
            Some(l)
        }
    };
    let imgs = Images::from_u8(pixels, n, &[rows, cols]).map_err(|e| data_err(&img_path, e.to_string()))?;
    let imgs = match labels {
        Some(l) => imgs.with_labels(l.into_iter().map(u32::from).collect())?,
        None => imgs,
    };
    Ok((img_path, imgs))
}

/// Loads an MNIST-layout directory (see the [module docs](self)): the `train-*` files become
/// [`Split::train`], the `t10k-*` files [`Split::test`], and [`Split::name`] is the directory path.
///
/// Label files are optional: without one a split has `labels: None` and `num_classes: 0`; with
/// labels, `num_classes` is the largest label + 1 (the same for both splits when both have labels).
/// Errors with [`Error::Data`] if the directory or an image file is missing, if any file is invalid
/// (see [`read_images`], [`read_labels`]), if a label file's count differs from its image file's, or
/// if training and test images differ in size.
pub fn load_dir(dir: &Path) -> Result<Split> {
    load_dir_within(dir, MAX_DATASET_BYTES)
}

/// [`load_dir`] refusing, before reading it, an image file whose header announces more than
/// `max_bytes` of pixels (e.g. more than the device can bind: see [`crate::Gpu::max_tensor_elements`]).
pub fn load_dir_within(dir: &Path, max_bytes: u64) -> Result<Split> {
    if !dir.is_dir() {
        return Err(data_err(
            dir,
            format!(
                "dataset directory not found (or not a directory). Expected a directory holding \
                 {TRAIN_IMAGES}[.gz] and {TEST_IMAGES}[.gz], optionally {TRAIN_LABELS}[.gz] and \
                 {TEST_LABELS}[.gz]. {FASHION_HINT}"
            ),
        ));
    }
    let (train_path, mut train) = load_split(dir, TRAIN_IMAGES, TRAIN_LABELS, max_bytes)?;
    let (test_path, mut test) = load_split(dir, TEST_IMAGES, TEST_LABELS, max_bytes)?;
    if train.shape() != test.shape() {
        return Err(data_err(
            &test_path,
            format!(
                "test images are {}x{} pixels but the training images in {} are {}x{}; both splits must \
                 have the same image size",
                test.rows(),
                test.cols(),
                train_path.display(),
                train.rows(),
                train.cols()
            ),
        ));
    }
    if train.labels().is_some() && test.labels().is_some() {
        let k = train.num_classes().max(test.num_classes());
        train.set_num_classes(k);
        test.set_num_classes(k);
    }
    Ok(Split { name: dir.display().to_string(), train, test })
}
