//! Datasets: IDX files (MNIST / Fashion-MNIST layout, raw or `.gz`), the built-in procedural
//! sprites, and their GPU-resident form with on-GPU batch gathering.

pub mod gpu;
pub mod idx;
pub mod sprites;

/// Images of one split, 8-bit grey, row-major, `n` images of `rows x cols`.
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// Number of images.
    pub n: usize,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
    /// `n * rows * cols` pixels, 0 = black, 255 = white.
    pub pixels: Vec<u8>,
    /// One class label per image, if the dataset has labels (IDX label file, sprite shape).
    pub labels: Option<Vec<u8>>,
    /// Number of label classes (0 without labels).
    pub num_classes: usize,
    /// Known generating factors per image (sprites only): one row of `factor_names.len()` values.
    pub factors: Option<Vec<Vec<u8>>>,
    /// Names of the factors (e.g. `shape`, `scale`, `rotation`, `x`, `y`).
    pub factor_names: Vec<String>,
}

impl Images {
    /// Pixels per image.
    pub fn dim(&self) -> usize {
        self.rows * self.cols
    }
    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.pixels[i * self.dim()..(i + 1) * self.dim()]
    }
}

/// A train/test pair.
#[derive(Clone, Debug)]
pub struct Split {
    /// Human-readable source (a directory, or `sprites`).
    pub name: String,
    /// Training images.
    pub train: Images,
    /// Test images.
    pub test: Images,
}
