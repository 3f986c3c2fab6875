//! Datasets: the IDX reader on synthetic (raw and gzipped, valid and broken) files, the built-in
//! sprites, and Fashion-MNIST when it is installed.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::write::GzEncoder;
use flate2::Compression;
use wgvae::data::{idx, sprites, Images, Split};
use wgvae::Error;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let k = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("wgvae-test-data-{}-{tag}-{k}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    /// Writes `bytes` to `name` in the directory, gzipped when `name` ends in `.gz`.
    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        let data = if name.ends_with(".gz") { gzip(bytes) } else { bytes.to_vec() };
        std::fs::write(&p, data).unwrap();
        p
    }
    /// Writes `bytes` to `name` as they are, whatever the suffix.
    fn write_raw(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn images_header(magic: u32, n: u32, rows: u32, cols: u32) -> Vec<u8> {
    [magic, n, rows, cols].iter().flat_map(|v| v.to_be_bytes()).collect()
}

/// A valid IDX image file with deterministic pixel values.
fn images_file(n: u32, rows: u32, cols: u32, salt: u8) -> (Vec<u8>, Vec<u8>) {
    let len = (n * rows * cols) as usize;
    let pixels: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt)).collect();
    let mut f = images_header(idx::IMAGES_MAGIC, n, rows, cols);
    f.extend_from_slice(&pixels);
    (f, pixels)
}

fn labels_file(labels: &[u8]) -> Vec<u8> {
    let mut f = idx::LABELS_MAGIC.to_be_bytes().to_vec();
    f.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    f.extend_from_slice(labels);
    f
}

/// Unwraps an `Error::Data`, checks that its message names `file`, and returns the message.
fn data_error<T: std::fmt::Debug>(r: wgvae::Result<T>, file: &Path) -> String {
    let e = match r {
        Err(e) => e,
        Ok(v) => panic!("expected Error::Data about {}, got Ok({v:?})", file.display()),
    };
    let msg = e.to_string();
    match &e {
        Error::Data { path, .. } => assert_eq!(path, file, "error is about the wrong file: {msg}"),
        other => panic!("expected Error::Data about {}, got {other:?}", file.display()),
    }
    assert!(msg.contains(&file.display().to_string()), "message does not name {}: {msg}", file.display());
    msg
}

fn assert_contains(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "message lacks {p:?}: {msg}");
    }
}

/// Writes a complete valid dataset: 5 train and 3 test images of 4x3, with labels, all files
/// gzipped or all raw.
fn write_dataset(dir: &TempDir, gz: bool) -> (Vec<u8>, Vec<u8>) {
    let sfx = if gz { ".gz" } else { "" };
    let (train, train_px) = images_file(5, 4, 3, 1);
    let (test, test_px) = images_file(3, 4, 3, 7);
    dir.write(&format!("train-images-idx3-ubyte{sfx}"), &train);
    dir.write(&format!("t10k-images-idx3-ubyte{sfx}"), &test);
    dir.write(&format!("train-labels-idx1-ubyte{sfx}"), &labels_file(&[0, 4, 2, 1, 0]));
    dir.write(&format!("t10k-labels-idx1-ubyte{sfx}"), &labels_file(&[1, 2, 0]));
    (train_px, test_px)
}

fn check_round_trip(split: &Split, dir: &Path, train_px: &[u8], test_px: &[u8]) {
    assert_eq!(split.name, dir.display().to_string());
    let expect = |n, pixels: &[u8], labels: &[u32]| {
        Images::from_u8(pixels.to_vec(), n, &[4, 3]).unwrap().with_labels_of(labels.to_vec(), 5).unwrap()
    };
    assert_eq!(split.train, expect(5, train_px, &[0, 4, 2, 1, 0]));
    assert_eq!(split.test, expect(3, test_px, &[1, 2, 0]));
    assert_eq!(u8s(&split.train, 1), &train_px[12..24]);
}

// ---------------------------------------------------------------------------------------------
// IDX: valid files
// ---------------------------------------------------------------------------------------------

#[test]
fn idx_round_trip_raw() {
    let dir = TempDir::new("raw");
    let (train_px, test_px) = write_dataset(&dir, false);
    let split = idx::load_dir(dir.path()).unwrap();
    check_round_trip(&split, dir.path(), &train_px, &test_px);
}

#[test]
fn idx_round_trip_gz() {
    let dir = TempDir::new("gz");
    let (train_px, test_px) = write_dataset(&dir, true);
    let split = idx::load_dir(dir.path()).unwrap();
    check_round_trip(&split, dir.path(), &train_px, &test_px);
}

#[test]
fn idx_mixed_raw_and_gz_and_raw_preferred() {
    let dir = TempDir::new("mixed");
    let (train, train_px) = images_file(5, 4, 3, 1);
    let (test, test_px) = images_file(3, 4, 3, 7);
    dir.write("train-images-idx3-ubyte", &train);
    dir.write("t10k-images-idx3-ubyte.gz", &test);
    dir.write("train-labels-idx1-ubyte.gz", &labels_file(&[0, 4, 2, 1, 0]));
    dir.write("t10k-labels-idx1-ubyte", &labels_file(&[1, 2, 0]));
    // A broken .gz next to a good raw file is never looked at.
    dir.write_raw("train-images-idx3-ubyte.gz", b"not gzip at all");
    let split = idx::load_dir(dir.path()).unwrap();
    check_round_trip(&split, dir.path(), &train_px, &test_px);
}

#[test]
fn idx_labels_are_optional() {
    let dir = TempDir::new("nolabels");
    let (train, train_px) = images_file(2, 2, 2, 0);
    let (test, _) = images_file(1, 2, 2, 0);
    dir.write("train-images-idx3-ubyte.gz", &train);
    dir.write("t10k-images-idx3-ubyte", &test);
    let split = idx::load_dir(dir.path()).unwrap();
    assert_eq!(split.train.labels(), None);
    assert_eq!(split.train.num_classes(), 0);
    assert_eq!(split.test.labels(), None);
    assert_eq!(split.test.num_classes(), 0);
    assert_eq!(all_u8(&split.train), train_px);
    assert_eq!((split.test.n(), split.test.rows(), split.test.cols()), (1, 2, 2));
}

#[test]
fn idx_read_functions_direct() {
    let dir = TempDir::new("direct");
    let (f, px) = images_file(3, 5, 2, 9);
    let p = dir.write("imgs.gz", &f);
    assert_eq!(idx::read_images(&p).unwrap(), (3, 5, 2, px));
    let p = dir.write("labs", &labels_file(&[9, 8, 7]));
    assert_eq!(idx::read_labels(&p).unwrap(), vec![9, 8, 7]);
    // A label file with zero labels is well-formed.
    let p = dir.write("empty-labs", &labels_file(&[]));
    assert_eq!(idx::read_labels(&p).unwrap(), Vec::<u8>::new());
}

// ---------------------------------------------------------------------------------------------
// IDX: broken inputs
// ---------------------------------------------------------------------------------------------

#[test]
fn idx_missing_directory() {
    let dir = TempDir::new("missingdir");
    let missing = dir.path().join("no-such-dataset");
    let msg = data_error(idx::load_dir(&missing), &missing);
    assert_contains(&msg, &["train-images-idx3-ubyte", "dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist/"]);
    // A file is not a directory either.
    let file = dir.write("a-file", b"x");
    data_error(idx::load_dir(&file), &file);
}

#[test]
fn idx_missing_image_files() {
    let dir = TempDir::new("missingimg");
    let (test, _) = images_file(1, 2, 2, 0);
    dir.write("t10k-images-idx3-ubyte", &test);
    let expected = dir.path().join("train-images-idx3-ubyte");
    let msg = data_error(idx::load_dir(dir.path()), &expected);
    assert_contains(&msg, &["`train-images-idx3-ubyte`", "`train-images-idx3-ubyte.gz`", "dataset-fashion-mnist"]);

    let dir = TempDir::new("missingtest");
    dir.write("train-images-idx3-ubyte.gz", &test);
    let expected = dir.path().join("t10k-images-idx3-ubyte");
    let msg = data_error(idx::load_dir(dir.path()), &expected);
    assert_contains(&msg, &["`t10k-images-idx3-ubyte`", "`t10k-images-idx3-ubyte.gz`"]);
}

#[test]
fn idx_wrong_magic() {
    let dir = TempDir::new("magic");
    // A label file where an image file belongs.
    let p = dir.write("train-images-idx3-ubyte", &labels_file(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]));
    let msg = data_error(idx::read_images(&p), &p);
    assert_contains(&msg, &["not an IDX image file", "0x00000803", "0x00000801"]);
    let msg = data_error(idx::load_dir(dir.path()), &p);
    assert_contains(&msg, &["not an IDX image file"]);
    // An image file where a label file belongs.
    let (f, _) = images_file(1, 1, 1, 0);
    let p = dir.write("labels.gz", &f);
    let msg = data_error(idx::read_labels(&p), &p);
    assert_contains(&msg, &["not an IDX label file", "0x00000801", "0x00000803"]);
    // Float elements.
    let mut f = images_header(0x0000_0D03, 1, 1, 1);
    f.extend_from_slice(&[0; 4]);
    let p = dir.write("floats", &f);
    let msg = data_error(idx::read_images(&p), &p);
    assert_contains(&msg, &["0x00000D03", "0x0D"]);
    // Gzip data without the .gz suffix.
    let (f, _) = images_file(2, 2, 2, 0);
    let p = dir.write_raw("compressed-but-no-suffix", &gzip(&f));
    let msg = data_error(idx::read_images(&p), &p);
    assert_contains(&msg, &["gzip", ".gz"]);
}

#[test]
fn idx_short_header() {
    let dir = TempDir::new("short");
    for name in ["imgs", "imgs.gz"] {
        let p = dir.write(name, &[0, 0, 8, 3, 0]);
        let msg = data_error(idx::read_images(&p), &p);
        assert_contains(&msg, &["5 bytes", "16-byte header"]);
        let p = dir.write(name, &[]);
        data_error(idx::read_images(&p), &p);
        let p = dir.write(name, &[0, 0, 8]);
        let msg = data_error(idx::read_labels(&p), &p);
        assert_contains(&msg, &["8-byte header"]);
    }
}

#[test]
fn idx_truncated() {
    let dir = TempDir::new("trunc");
    let (f, _) = images_file(3, 4, 5, 0);
    for name in ["imgs", "imgs.gz"] {
        let p = dir.write(name, &f[..f.len() - 7]);
        let msg = data_error(idx::read_images(&p), &p);
        assert_contains(&msg, &["3 images of 4x5 = 60 bytes", "53 bytes", "truncated"]);
    }
    let l = labels_file(&[1, 2, 3, 4]);
    for name in ["labs", "labs.gz"] {
        let p = dir.write(name, &l[..l.len() - 1]);
        let msg = data_error(idx::read_labels(&p), &p);
        assert_contains(&msg, &["4 labels", "3 bytes", "truncated"]);
    }
}

#[test]
fn idx_trailing_garbage() {
    let dir = TempDir::new("trailing");
    let (mut f, _) = images_file(2, 3, 3, 0);
    f.extend_from_slice(b"junk");
    for name in ["imgs", "imgs.gz"] {
        let p = dir.write(name, &f);
        let msg = data_error(idx::read_images(&p), &p);
        assert_contains(&msg, &["2 images of 3x3 = 18 bytes", "trailing garbage"]);
    }
    let mut l = labels_file(&[1, 2]);
    l.push(0);
    for name in ["labs", "labs.gz"] {
        let p = dir.write(name, &l);
        let msg = data_error(idx::read_labels(&p), &p);
        assert_contains(&msg, &["trailing garbage"]);
    }
}

#[test]
fn idx_huge_header_is_an_error_not_an_allocation() {
    let dir = TempDir::new("huge");
    let mut f = images_header(idx::IMAGES_MAGIC, u32::MAX, 28, 28);
    f.extend_from_slice(&[0; 100]);
    for name in ["imgs", "imgs.gz"] {
        let p = dir.write(name, &f);
        let msg = data_error(idx::read_images(&p), &p);
        assert_contains(&msg, &["4294967295 images of 28x28", "more than"]);
    }
    // A lie within the limit: read up to what the file holds, then refused as truncated.
    let mut f = images_header(idx::IMAGES_MAGIC, 100_000, 28, 28);
    f.extend_from_slice(&[0; 100]);
    for name in ["imgs", "imgs.gz"] {
        let p = dir.write(name, &f);
        let msg = data_error(idx::read_images(&p), &p);
        assert_contains(&msg, &["100000 images of 28x28", "truncated"]);
    }
    let mut f = images_header(idx::IMAGES_MAGIC, u32::MAX, u32::MAX, u32::MAX);
    f.extend_from_slice(&[0; 10]);
    for name in ["imgs", "imgs.gz"] {
        let p = dir.write(name, &f);
        data_error(idx::read_images(&p), &p);
    }
    let mut l = idx::LABELS_MAGIC.to_be_bytes().to_vec();
    l.extend_from_slice(&u32::MAX.to_be_bytes());
    l.extend_from_slice(&[1, 2, 3]);
    for name in ["labs", "labs.gz"] {
        let p = dir.write(name, &l);
        let msg = data_error(idx::read_labels(&p), &p);
        assert_contains(&msg, &["4294967295 labels", "truncated"]);
    }
}

#[test]
fn idx_corrupt_gzip() {
    let dir = TempDir::new("corruptgz");
    let (f, _) = images_file(20, 8, 8, 3);
    // Not gzip at all.
    let p = dir.write_raw("a.gz", b"this is certainly not a gzip stream, just text");
    let msg = data_error(idx::read_images(&p), &p);
    assert_contains(&msg, &["gzip"]);
    // A gzip stream cut short.
    let gz = gzip(&f);
    let p = dir.write_raw("b.gz", &gz[..gz.len() / 2]);
    let msg = data_error(idx::read_images(&p), &p);
    assert_contains(&msg, &["gzip"]);
    // Flipped bytes in the compressed body (deflate error or CRC mismatch).
    let mut bad = gz.clone();
    for b in &mut bad[12..gz.len() - 10] {
        *b ^= 0x5A;
    }
    let p = dir.write_raw("c.gz", &bad);
    data_error(idx::read_images(&p), &p);
    // A wrong CRC only.
    let mut bad = gz;
    let k = bad.len() - 8;
    bad[k] ^= 0xFF;
    let p = dir.write_raw("d.gz", &bad);
    let msg = data_error(idx::read_images(&p), &p);
    assert_contains(&msg, &["gzip"]);
}

#[test]
fn idx_zero_images_or_zero_size() {
    let dir = TempDir::new("zero");
    let p = dir.write("none", &images_header(idx::IMAGES_MAGIC, 0, 28, 28));
    let msg = data_error(idx::read_images(&p), &p);
    assert_contains(&msg, &["0 images"]);
    for (r, c) in [(0, 28), (28, 0), (0, 0)] {
        let p = dir.write("empty.gz", &images_header(idx::IMAGES_MAGIC, 10, r, c));
        let msg = data_error(idx::read_images(&p), &p);
        assert_contains(&msg, &[&format!("{r}x{c}")]);
    }
    // Through load_dir.
    dir.write("train-images-idx3-ubyte", &images_header(idx::IMAGES_MAGIC, 0, 2, 2));
    dir.write("t10k-images-idx3-ubyte", &images_file(1, 2, 2, 0).0);
    data_error(idx::load_dir(dir.path()), &dir.path().join("train-images-idx3-ubyte"));
}

#[test]
fn idx_label_count_mismatch() {
    let dir = TempDir::new("count");
    write_dataset(&dir, false);
    let lp = dir.write("t10k-labels-idx1-ubyte", &labels_file(&[1, 2, 0, 1]));
    let msg = data_error(idx::load_dir(dir.path()), &lp);
    let ip = dir.path().join("t10k-images-idx3-ubyte");
    assert_contains(&msg, &["4 labels", "3 images", &ip.display().to_string()]);
}

#[test]
fn idx_train_test_size_mismatch() {
    let dir = TempDir::new("sizes");
    dir.write("train-images-idx3-ubyte.gz", &images_file(2, 4, 3, 0).0);
    let tp = dir.write("t10k-images-idx3-ubyte.gz", &images_file(2, 3, 4, 0).0);
    let msg = data_error(idx::load_dir(dir.path()), &tp);
    let trp = dir.path().join("train-images-idx3-ubyte.gz");
    assert_contains(&msg, &["3x4", "4x3", &trp.display().to_string()]);
}

#[test]
fn idx_bad_file_inside_dir_is_named() {
    let dir = TempDir::new("baddir");
    write_dataset(&dir, true);
    let p = dir.write_raw("train-labels-idx1-ubyte.gz", b"garbage");
    data_error(idx::load_dir(dir.path()), &p);
}

// ---------------------------------------------------------------------------------------------
// Sprites
// ---------------------------------------------------------------------------------------------

/// Image `i`'s 8-bit pixels.
fn u8s(im: &Images, i: usize) -> Vec<u8> {
    all_u8(im)[i * im.dim()..(i + 1) * im.dim()].to_vec()
}

/// Every 8-bit pixel of a split (IDX files and sprites are 8-bit).
fn all_u8(im: &Images) -> &[u8] {
    match im.pixels() {
        wgvae::data::Pixels::U8(v) => v,
        wgvae::data::Pixels::F32(_) => panic!("8-bit data expected"),
    }
}

fn all_factors(split: &Split) -> Vec<Vec<u8>> {
    let mut v = split.train.factors().unwrap().to_vec();
    v.extend(split.test.factors().unwrap().to_vec());
    v
}

#[test]
fn sprites_sizes_and_metadata() {
    let s = sprites::sprites(0);
    let total: usize = sprites::FACTOR_SIZES.iter().product();
    assert_eq!(total, sprites::TOTAL);
    assert!((5000..=8000).contains(&total), "{total}");
    assert_eq!(sprites::TEST_LEN, total / 10);
    assert_eq!(s.train.n(), sprites::TRAIN_LEN);
    assert_eq!(s.test.n(), sprites::TEST_LEN);
    assert_eq!(s.train.n() + s.test.n(), total);
    assert_eq!(s.name, "sprites");
    for im in [&s.train, &s.test] {
        assert_eq!((im.rows(), im.cols()), (28, 28));
        assert_eq!(all_u8(im).len(), im.n() * 28 * 28);
        assert_eq!(im.num_classes(), sprites::FACTOR_SIZES[0]);
        assert_eq!(im.factor_names(), sprites::FACTOR_NAMES.map(String::from).to_vec());
        let f = im.factors().unwrap();
        let labels = im.labels().unwrap();
        assert_eq!(f.len(), im.n());
        assert_eq!(labels.len(), im.n());
        for (row, &label) in f.iter().zip(labels) {
            assert_eq!(row.len(), 5);
            assert_eq!(label, row[0] as u32, "label must be the shape factor");
            for (k, &v) in row.iter().enumerate() {
                assert!((v as usize) < sprites::FACTOR_SIZES[k], "factor {} = {v}", sprites::FACTOR_NAMES[k]);
            }
        }
    }
}

#[test]
fn sprites_deterministic_per_seed() {
    let a = sprites::sprites(42);
    let b = sprites::sprites(42);
    assert_eq!(a.train, b.train);
    assert_eq!(a.test, b.test);
    let c = sprites::sprites(43);
    assert_ne!(a.train.factors(), c.train.factors(), "different seeds should shuffle differently");
    // Same images overall, only the order and the split differ.
    let mut fa = all_factors(&a);
    let mut fc = all_factors(&c);
    fa.sort();
    fc.sort();
    assert_eq!(fa, fc);
}

#[test]
fn sprites_full_factorial_and_disjoint_splits() {
    let s = sprites::sprites(3);
    let train: HashSet<Vec<u8>> = s.train.factors().unwrap().to_vec().into_iter().collect();
    let test: HashSet<Vec<u8>> = s.test.factors().unwrap().to_vec().into_iter().collect();
    assert_eq!(train.len(), s.train.n(), "duplicate factor rows in train");
    assert_eq!(test.len(), s.test.n(), "duplicate factor rows in test");
    assert!(train.is_disjoint(&test));
    assert_eq!(train.len() + test.len(), sprites::TOTAL, "every combination exactly once");
    // Distinct factor combinations render to distinct images, so the splits share no image.
    let mut seen = HashSet::new();
    for im in [&s.train, &s.test] {
        for i in 0..im.n() {
            assert!(seen.insert(u8s(im, i).to_vec()), "two factor combinations give the same image");
        }
    }
    // Every shape is present in the test split.
    let test_shapes: HashSet<u32> = s.test.labels().unwrap().to_vec().into_iter().collect();
    assert_eq!(test_shapes.len(), sprites::FACTOR_SIZES[0]);
}

#[test]
fn sprites_non_empty_and_clear_of_the_border() {
    let s = sprites::sprites(1);
    for im in [&s.train, &s.test] {
        for i in 0..im.n() {
            let px = u8s(im, i);
            let f = &im.factors().unwrap()[i];
            assert!(px.iter().filter(|&&p| p >= 128).count() >= 10, "image {i} {f:?} is (nearly) empty");
            for k in 0..28 {
                for (r, c) in [(0, k), (27, k), (k, 0), (k, 27)] {
                    assert_eq!(px[r * 28 + c], 0, "image {i} {f:?} touches the border at ({r}, {c})");
                }
            }
        }
    }
}

#[test]
fn sprites_factors_move_and_grow_the_shape() {
    let s = sprites::sprites(5);
    let f = s.train.factors().unwrap();
    for (i, fi) in f.iter().enumerate() {
        let px = u8s(&s.train, i);
        let (mut m, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
        for r in 0..28 {
            for c in 0..28 {
                let w = px[r * 28 + c] as f64;
                m += w;
                mx += w * (c as f64 + 0.5);
                my += w * (r as f64 + 0.5);
            }
        }
        let (cx, cy) = (mx / m, my / m);
        let (ex, ey) = (8.0 + 2.0 * fi[3] as f64, 8.0 + 2.0 * fi[4] as f64);
        assert!((cx - ex).abs() < 1.5 && (cy - ey).abs() < 1.5, "image {i} {fi:?}: centroid ({cx}, {cy})");
    }
    // Mean ink per image grows with the scale factor for every shape.
    let mut ink = [[(0.0f64, 0usize); 4]; 4];
    for (i, fi) in f.iter().enumerate() {
        let sum: f64 = u8s(&s.train, i).iter().map(|&p| p as f64).sum();
        let cell = &mut ink[fi[0] as usize][fi[1] as usize];
        cell.0 += sum;
        cell.1 += 1;
    }
    for (shape, row) in ink.iter().enumerate() {
        let mean: Vec<f64> = row.iter().map(|&(sum, n)| sum / n as f64).collect();
        for k in 1..4 {
            assert!(mean[k] > mean[k - 1] * 1.2, "shape {shape}: ink does not grow with scale: {mean:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shapes (64x64 colour)
// ---------------------------------------------------------------------------------------------

#[test]
fn shapes_sizes_factors_and_determinism() {
    use wgvae::data::shapes;
    let s = shapes::shapes(0);
    assert_eq!(shapes::FACTOR_SIZES.iter().product::<usize>(), shapes::TOTAL);
    assert_eq!((s.train.n(), s.test.n()), (shapes::TRAIN_LEN, shapes::TEST_LEN));
    assert_eq!(s.name, "shapes");
    assert_eq!(s.train.shape(), &[3, 64, 64]);
    assert_eq!((s.train.channels(), s.train.rows(), s.train.cols()), (3, 64, 64));
    assert_eq!(s.train.factor_names(), shapes::FACTOR_NAMES.map(String::from).to_vec());
    assert_eq!(s.train.num_classes(), 4);
    let mut all = all_factors(&s);
    let rows: HashSet<Vec<u8>> = all.iter().cloned().collect();
    assert_eq!(rows.len(), shapes::TOTAL, "every combination exactly once");
    for (f, &l) in s.train.factors().unwrap().iter().zip(s.train.labels().unwrap()) {
        assert_eq!(l, f[4] as u32, "the label is the shape");
    }
    let again = shapes::shapes(0);
    assert_eq!(again.train, s.train, "same seed, same data");
    let mut other = all_factors(&shapes::shapes(1));
    assert_ne!(other, all, "another seed shuffles differently");
    other.sort();
    all.sort();
    assert_eq!(other, all);

    // Every factor changes the picture, and each hue factor changes the colour where it rules:
    // the floor at the bottom centre, the wall at the top centre.
    let by: std::collections::HashMap<Vec<u8>, usize> =
        s.train.factors().unwrap().iter().enumerate().map(|(i, f)| (f.clone(), i)).collect();
    let base = s.train.factors().unwrap()[0].clone();
    let px = |f: &Vec<u8>| by.get(f).map(|&i| u8s(&s.train, i));
    let rgb = |p: &[u8], y: usize, x: usize| [p[y * 64 + x], p[4096 + y * 64 + x], p[8192 + y * 64 + x]];
    for k in 0..6 {
        let mut f = base.clone();
        f[k] = (f[k] + 1) % shapes::FACTOR_SIZES[k] as u8;
        let (Some(a), Some(b)) = (px(&base), px(&f)) else { continue }; // one of them is a test image
        assert_ne!(a, b, "factor {} changes the image", shapes::FACTOR_NAMES[k]);
        if k == 0 {
            assert_ne!(rgb(&a, 62, 32), rgb(&b, 62, 32), "floor hue at the floor");
            assert_eq!(rgb(&a, 1, 32), rgb(&b, 1, 32), "floor hue leaves the wall");
        }
        if k == 1 {
            assert_ne!(rgb(&a, 1, 32), rgb(&b, 1, 32), "wall hue at the wall");
            assert_eq!(rgb(&a, 62, 32), rgb(&b, 62, 32), "wall hue leaves the floor");
        }
    }
    // The images are in colour: red, green and blue differ somewhere in every image.
    for i in 0..s.test.n() {
        let p = u8s(&s.test, i);
        assert!((0..4096).any(|j| p[j] != p[4096 + j] || p[j] != p[8192 + j]), "image {i} is grey");
    }
}

// ---------------------------------------------------------------------------------------------
// Fashion-MNIST (Debian package `dataset-fashion-mnist`), when installed
// ---------------------------------------------------------------------------------------------

#[test]
fn fashion_mnist_if_installed() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist/");
    if !dir.is_dir() {
        println!("skipped: {} not found (apt-get install dataset-fashion-mnist)", dir.display());
        return;
    }
    let s = idx::load_dir(dir).unwrap();
    assert_eq!((s.train.n(), s.train.rows(), s.train.cols()), (60000, 28, 28));
    assert_eq!((s.test.n(), s.test.rows(), s.test.cols()), (10000, 28, 28));
    assert_eq!(s.train.num_classes(), 10);
    assert_eq!(s.test.num_classes(), 10);
    assert_eq!(all_u8(&s.train).len(), 60000 * 784);
    let labels = s.train.labels().unwrap();
    for class in 0..10u32 {
        assert_eq!(labels.iter().filter(|&&l| l == class).count(), 6000, "class {class}");
    }
    assert_eq!(s.test.labels().unwrap().len(), 10000);
}
