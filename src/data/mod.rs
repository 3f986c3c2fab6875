//! Datasets: IDX files (MNIST / Fashion-MNIST layout, raw or `.gz`), the built-in procedural
//! sprites (28x28 grey) and shapes (64x64 colour), and their GPU-resident form with on-GPU batch
//! gathering.

#[cfg(feature = "images")]
pub mod folder;
pub mod gpu;
pub mod idx;
pub mod shapes;
pub mod sprites;

/// The most pixel bytes a run loads (64 GiB): the data lives in host memory and, sharded into
/// buffers within the device's binding limit, on the device ([`gpu::GpuImages`]), so memory is
/// the real limit; this bound only stops a lying file header from asking for absurd amounts.
pub const MAX_DATASET_BYTES: u64 = 64 << 30;

/// Loads a data directory: an MNIST-layout IDX directory (`train-images-idx3-ubyte[.gz]`, ...)
/// or, with the `images` feature, an image folder ([`folder`]: `image_size` resizes and
/// centre-crops, `seed` splits when there is no `train/` + `test/`). Refuses data larger than
/// `max_bytes`.
pub fn load_dir(dir: &std::path::Path, image_size: Option<usize>, seed: u64, max_bytes: u64) -> Result<Split> {
    let idx_files = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with("train-images")))
        .unwrap_or(false);
    if idx_files || !dir.is_dir() {
        if image_size.is_some() {
            return Err(Error::arg("image_size", "--image-size is for image folders, not IDX files"));
        }
        return idx::load_dir_within(dir, max_bytes);
    }
    #[cfg(feature = "images")]
    return folder::load_folder(dir, image_size, seed, max_bytes);
    #[cfg(not(feature = "images"))]
    {
        let _ = seed;
        Err(Error::Data {
            path: dir.to_path_buf(),
            detail: "no IDX files here; image folders need wgvae's `images` feature".into(),
        })
    }
}

/// A built-in procedural dataset: every combination of the factor levels `sizes` exactly once
/// (the last factor varying fastest), shuffled by `seed` (Fisher-Yates written out, so the order
/// depends only on StdRng's stream), the last `test_len` of them the test split. `render` draws
/// one image of `shape` from its factor levels; the label is factor `label`.
pub(crate) struct Factorial<'a> {
    pub name: &'a str,
    pub names: &'a [&'a str],
    pub sizes: &'a [usize],
    pub shape: &'a [usize],
    pub label: usize,
    pub test_len: usize,
    pub render: &'a dyn Fn(&[u8], &mut [u8]),
}

impl Factorial<'_> {
    pub(crate) fn split(&self, seed: u64) -> Split {
        use rand::{Rng, SeedableRng};
        let total: usize = self.sizes.iter().product();
        let mut all: Vec<Vec<u8>> = Vec::with_capacity(total);
        let mut f = vec![0u8; self.sizes.len()];
        for _ in 0..total {
            all.push(f.clone());
            // Odometer: the last factor fastest.
            for k in (0..f.len()).rev() {
                f[k] += 1;
                if (f[k] as usize) < self.sizes[k] {
                    break;
                }
                f[k] = 0;
            }
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for i in (1..all.len()).rev() {
            let j = rng.random_range(0..=i);
            all.swap(i, j);
        }
        let test = all.split_off(total - self.test_len);
        Split { name: self.name.to_string(), train: self.images(all), test: self.images(test) }
    }

    fn images(&self, factors: Vec<Vec<u8>>) -> Images {
        let dim: usize = self.shape.iter().product();
        let mut pixels = vec![0u8; factors.len() * dim];
        for (f, out) in factors.iter().zip(pixels.chunks_exact_mut(dim)) {
            (self.render)(f, out);
        }
        let labels = factors.iter().map(|f| f[self.label] as u32).collect();
        let names = self.names.iter().map(|s| s.to_string()).collect();
        let n = factors.len();
        // The sizes are consistent by construction.
        Images::from_u8(pixels, n, self.shape)
            .and_then(|i| i.with_labels_of(labels, self.sizes[self.label]))
            .and_then(|i| i.with_factors(factors, names))
            .expect("a procedural dataset is consistent")
    }
}

/// The built-in dataset called `name` (`sprites` or `shapes`), split by `seed`.
pub fn builtin(name: &str, seed: u64) -> Option<Split> {
    match name {
        "sprites" => Some(sprites::sprites(seed)),
        "shapes" => Some(shapes::shapes(seed)),
        _ => None,
    }
}

use crate::error::{Error, Result};

/// The values of a dataset, stored as given.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// 8-bit values, 0 = black, 255 = white; the model sees value / 255. Kept as bytes on the GPU
    /// (four to a word), so 60,000 28x28 images take 47 MB.
    U8(Vec<u8>),
    /// Values used as they are (in \[0, 1\] for the Bernoulli likelihood); four bytes each on the GPU.
    F32(Vec<f32>),
}

/// The examples of one split: `n` examples of one shape (`[d]` for vectors, `[h, w]` for grey
/// images), optional class labels and, for the built-in sprites, the generating factors.
///
/// ```
/// use wgvae::data::Images;
/// # fn main() -> wgvae::Result<()> {
/// let pixels = vec![0u8; 10 * 4 * 4]; // 10 images of 4x4
/// let labels = (0..10u32).map(|i| i % 3).collect();
/// let split = Images::from_u8(pixels, 10, &[4, 4])?.with_labels(labels)?.split(0.2, 7)?;
/// assert_eq!((split.train.n(), split.test.n(), split.train.num_classes()), (8, 2, 3));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    n: usize,
    shape: Vec<usize>,
    pixels: Pixels,
    labels: Option<Vec<u32>>,
    num_classes: usize,
    factors: Option<Vec<Vec<u8>>>,
    factor_names: Vec<String>,
}

fn check_shape(what: &str, len: usize, n: usize, shape: &[usize]) -> Result<usize> {
    if n == 0 {
        return Err(Error::arg(what, "a dataset needs at least one example"));
    }
    if shape.is_empty() || shape.len() > 3 || shape.contains(&0) {
        return Err(Error::arg(
            what,
            format!("example shape {shape:?}: give [d], [height, width] or [channels, height, width], all at least 1"),
        ));
    }
    let dim = shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    let total = dim.and_then(|d| d.checked_mul(n));
    match (dim, total) {
        (Some(d), Some(t)) if t == len => Ok(d),
        (Some(d), Some(t)) => Err(Error::arg(
            what,
            format!("{len} values given for {n} examples of shape {shape:?} ({d} each): needs {t}"),
        )),
        _ => Err(Error::arg(what, format!("{n} examples of shape {shape:?} overflow the address space"))),
    }
}

impl Images {
    /// `n` examples of `shape` from 8-bit values, example after example (row-major within one).
    pub fn from_u8(pixels: Vec<u8>, n: usize, shape: &[usize]) -> Result<Self> {
        check_shape("Images::from_u8", pixels.len(), n, shape)?;
        Ok(Self::raw(n, shape, Pixels::U8(pixels)))
    }

    /// `n` examples of `shape` from f32 values (finite; in \[0, 1\] when the model's likelihood is
    /// Bernoulli, which [`crate::train::Trainer::new`] checks).
    pub fn from_f32(values: Vec<f32>, n: usize, shape: &[usize]) -> Result<Self> {
        check_shape("Images::from_f32", values.len(), n, shape)?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(Error::arg(
                "Images::from_f32",
                format!("value {i} is {}; every value must be finite", values[i]),
            ));
        }
        Ok(Self::raw(n, shape, Pixels::F32(values)))
    }

    fn raw(n: usize, shape: &[usize], pixels: Pixels) -> Self {
        Images { n, shape: shape.to_vec(), pixels, labels: None, num_classes: 0, factors: None, factor_names: vec![] }
    }

    /// The same examples with one class label each (classes 0 .. largest label).
    pub fn with_labels(self, labels: Vec<u32>) -> Result<Self> {
        let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
        self.with_labels_of(labels, classes)
    }

    /// The same examples with one label each out of `classes` classes (every label below it).
    pub fn with_labels_of(mut self, labels: Vec<u32>, classes: usize) -> Result<Self> {
        if labels.len() != self.n {
            return Err(Error::arg("labels", format!("{} labels given for {} examples", labels.len(), self.n)));
        }
        if let Some(l) = labels.iter().find(|&&l| l as usize >= classes) {
            return Err(Error::arg("labels", format!("label {l} is not below the {classes} classes")));
        }
        self.labels = Some(labels);
        self.num_classes = classes;
        Ok(self)
    }

    /// The same examples with their known generating factors (one row of `names.len()` levels
    /// each), for disentanglement metrics.
    pub fn with_factors(mut self, factors: Vec<Vec<u8>>, names: Vec<String>) -> Result<Self> {
        if factors.len() != self.n || factors.iter().any(|f| f.len() != names.len()) {
            return Err(Error::arg("factors", format!("need {} rows of {} factor levels", self.n, names.len())));
        }
        self.factors = Some(factors);
        self.factor_names = names;
        Ok(self)
    }

    /// A seeded split into training and test examples: `test_fraction` of them (rounded, at least
    /// one of each) go to the test split, chosen by a shuffle from `seed`.
    pub fn split(self, test_fraction: f64, seed: u64) -> Result<Split> {
        use rand::seq::SliceRandom;
        use rand::SeedableRng;
        if !(test_fraction > 0.0 && test_fraction < 1.0) || self.n < 2 {
            return Err(Error::arg(
                "split",
                format!(
                    "a test fraction in (0, 1) and at least 2 examples are needed (got {test_fraction}, {})",
                    self.n
                ),
            ));
        }
        let n_test = ((self.n as f64 * test_fraction).round() as usize).clamp(1, self.n - 1);
        let mut idx: Vec<usize> = (0..self.n).collect();
        idx.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
        let (test_idx, train_idx) = idx.split_at(n_test);
        let (mut train_idx, mut test_idx) = (train_idx.to_vec(), test_idx.to_vec());
        train_idx.sort_unstable();
        test_idx.sort_unstable();
        Ok(Split { name: "split".into(), train: self.select(&train_idx), test: self.select(&test_idx) })
    }

    /// The examples at `idx`, in that order (labels and factors with them).
    pub fn select(&self, idx: &[usize]) -> Images {
        let d = self.dim();
        let pixels = match &self.pixels {
            Pixels::U8(v) => Pixels::U8(idx.iter().flat_map(|&i| v[i * d..(i + 1) * d].iter().copied()).collect()),
            Pixels::F32(v) => Pixels::F32(idx.iter().flat_map(|&i| v[i * d..(i + 1) * d].iter().copied()).collect()),
        };
        Images {
            n: idx.len(),
            shape: self.shape.clone(),
            pixels,
            labels: self.labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect()),
            num_classes: self.num_classes,
            factors: self.factors.as_ref().map(|f| idx.iter().map(|&i| f[i].clone()).collect()),
            factor_names: self.factor_names.clone(),
        }
    }

    /// The first `n` examples (all of them if there are fewer).
    pub fn head(&self, n: usize) -> Images {
        self.select(&(0..n.min(self.n)).collect::<Vec<_>>())
    }

    /// Number of examples.
    pub fn n(&self) -> usize {
        self.n
    }
    /// The shape of one example.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Values per example.
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }
    /// Channels (the first of three dimensions; 1 for grey images and vectors).
    pub fn channels(&self) -> usize {
        if self.shape.len() == 3 {
            self.shape[0]
        } else {
            1
        }
    }
    /// Image height (1 for vectors).
    pub fn rows(&self) -> usize {
        if self.shape.len() >= 2 {
            self.shape[self.shape.len() - 2]
        } else {
            1
        }
    }
    /// Image width (the length for vectors).
    pub fn cols(&self) -> usize {
        self.shape[self.shape.len() - 1]
    }
    /// The stored values.
    pub fn pixels(&self) -> &Pixels {
        &self.pixels
    }
    /// The class labels, if any.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }
    /// Number of label classes (0 without labels).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }
    /// Generating factors per example (the built-in sprites), if known.
    pub fn factors(&self) -> Option<&[Vec<u8>]> {
        self.factors.as_deref()
    }
    /// Names of the generating factors.
    pub fn factor_names(&self) -> &[String] {
        &self.factor_names
    }
    /// Example `i` as the model sees it (u8 values divided by 255).
    pub fn example(&self, i: usize) -> Vec<f32> {
        let d = self.dim();
        match &self.pixels {
            Pixels::U8(v) => v[i * d..(i + 1) * d].iter().map(|&p| p as f32 / 255.0).collect(),
            Pixels::F32(v) => v[i * d..(i + 1) * d].to_vec(),
        }
    }
    /// Examples `0..k` as the model sees them, row-major.
    pub fn examples(&self, k: usize) -> Vec<f32> {
        (0..k.min(self.n)).flat_map(|i| self.example(i)).collect()
    }
    /// Whether every value lies in \[0, 1\] (always for u8 data).
    pub fn in_unit_interval(&self) -> bool {
        match &self.pixels {
            Pixels::U8(_) => true,
            Pixels::F32(v) => v.iter().all(|x| (0.0..=1.0).contains(x)),
        }
    }
    pub(crate) fn set_num_classes(&mut self, k: usize) {
        self.num_classes = k;
    }
}

/// A train/test pair.
#[derive(Clone, Debug)]
pub struct Split {
    /// Human-readable source (a directory, or `sprites`).
    pub name: String,
    /// Training examples.
    pub train: Images,
    /// Test examples.
    pub test: Images,
}
