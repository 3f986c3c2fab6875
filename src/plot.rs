//! Small, dependency-free PNG charts for the trainer: line charts, a `metrics.jsonl` dashboard and
//! scatter plots of 2-D latent codes.
//!
//! Everything is drawn on an RGB canvas with a white background and an embedded 5x7 bitmap font,
//! then encoded with the `png` crate; there is no anti-aliasing, so every line and marker of a
//! series is drawn in exactly one colour of [`PALETTE`] (series `i`, or label `l`, gets
//! `PALETTE[i % PALETTE.len()]`).
//!
//! Layout of one chart (offsets from its top-left corner): the title is centred in the top
//! 24 pixel rows, the legend follows in rows of 11 pixels starting at row 26, then comes the plot
//! area, then the x tick labels and the x-axis label in the bottom 30 rows. Scatter plots put the
//! legend in a column of [`SCATTER_LEGEND_WIDTH`] pixels on the right instead.
//!
//! ```
//! use wgvae::plot::{line_chart, Series};
//!
//! # fn main() -> wgvae::Result<()> {
//! let loss = Series { name: "loss".into(), points: vec![(1.0, 210.5), (2.0, 160.2), (3.0, 140.9)] };
//! let png = line_chart("training", "epoch", &[loss])?;
//! assert_eq!(&png[1..4], b"PNG");
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};

/// Width in pixels of a [`line_chart`] and of one panel of [`metrics_png`].
pub const CHART_WIDTH: usize = 480;
/// Height in pixels of a [`line_chart`] and of one panel of [`metrics_png`].
pub const CHART_HEIGHT: usize = 300;
/// Panels per row in [`metrics_png`].
pub const DASHBOARD_COLUMNS: usize = 2;
/// Width in pixels of a [`scatter_png`].
pub const SCATTER_WIDTH: usize = 520;
/// Height in pixels of a [`scatter_png`].
pub const SCATTER_HEIGHT: usize = 440;
/// Width of the legend column on the right of a labelled [`scatter_png`].
pub const SCATTER_LEGEND_WIDTH: usize = 64;

/// Series and label colours, in order (the Tableau 10 colours, then navy and olive).
pub const PALETTE: [[u8; 3]; 12] = [
    [31, 119, 180],
    [255, 127, 14],
    [44, 160, 44],
    [214, 39, 40],
    [148, 103, 189],
    [140, 86, 75],
    [227, 119, 194],
    [127, 127, 127],
    [188, 189, 34],
    [23, 190, 207],
    [0, 0, 128],
    [128, 128, 0],
];

const TEXT: [u8; 3] = [20, 20, 20];
const AXIS: [u8; 3] = [60, 60, 60];
const FRAME: [u8; 3] = [200, 200, 200];
const GRID: [u8; 3] = [234, 234, 234];
const MUTED: [u8; 3] = [150, 150, 150];

/// One named line of a [`line_chart`]: `(x, y)` points, drawn in the given order. Points with a
/// NaN or infinite coordinate are skipped.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series named `name` with `points`.
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Series { name: name.into(), points }
    }
}

// ---------------------------------------------------------------------------------------------
// Font
// ---------------------------------------------------------------------------------------------

const GLYPH_W: i64 = 5;
const GLYPH_H: i64 = 7;
/// Horizontal advance of one character at scale 1 (glyph plus one column of spacing).
const ADVANCE: i64 = GLYPH_W + 1;

/// The 5x7 bitmap of `c`: seven rows, top first, bit 4 the leftmost column. Characters without a
/// glyph draw as `?`.
fn glyph(c: char) -> [u8; 7] {
    match c {
        ' ' => [0; 7],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        'A' => [0x0E, 0x11, 0x11, 0x11, 0x1F, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        'a' => [0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F],
        'b' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1E],
        'c' => [0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E],
        'd' => [0x01, 0x01, 0x0D, 0x13, 0x11, 0x11, 0x0F],
        'e' => [0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E],
        'f' => [0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08],
        'g' => [0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'h' => [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11],
        'i' => [0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E],
        'j' => [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0C],
        'k' => [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12],
        'l' => [0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'm' => [0x00, 0x00, 0x1A, 0x15, 0x15, 0x11, 0x11],
        'n' => [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11],
        'o' => [0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E],
        'p' => [0x00, 0x00, 0x1E, 0x11, 0x1E, 0x10, 0x10],
        'q' => [0x00, 0x00, 0x0D, 0x13, 0x0F, 0x01, 0x01],
        'r' => [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10],
        's' => [0x00, 0x00, 0x0E, 0x10, 0x0E, 0x01, 0x1E],
        't' => [0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06],
        'u' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D],
        'v' => [0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'w' => [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A],
        'x' => [0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11],
        'y' => [0x00, 0x00, 0x11, 0x11, 0x0F, 0x01, 0x0E],
        'z' => [0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '_' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '[' => [0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E],
        ']' => [0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        '<' => [0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02],
        '>' => [0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08],
        '|' => [0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        '*' => [0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        '\'' => [0x0C, 0x04, 0x08, 0x00, 0x00, 0x00, 0x00],
        '"' => [0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00],
        '!' => [0x04, 0x04, 0x04, 0x04, 0x00, 0x00, 0x04],
        '\u{d7}' => glyph('x'),
        _ => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04], // '?'
    }
}

/// Width in pixels of `text` drawn at `scale`.
fn text_width(text: &str, scale: i64) -> i64 {
    let n = text.chars().count() as i64;
    if n == 0 {
        0
    } else {
        n * ADVANCE * scale - scale
    }
}

/// The longest prefix of `text` that fits in `max_px` at `scale` (with `..` when cut).
fn fit_text(text: &str, max_px: i64, scale: i64) -> String {
    if text_width(text, scale) <= max_px {
        return text.to_string();
    }
    let room = (max_px + scale) / (ADVANCE * scale);
    if room <= 2 {
        return text.chars().take(room.max(0) as usize).collect();
    }
    let mut s: String = text.chars().take(room as usize - 2).collect();
    s.push_str("..");
    s
}

// ---------------------------------------------------------------------------------------------
// Canvas
// ---------------------------------------------------------------------------------------------

/// An RGB image, 8 bits per channel, row-major.
struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Canvas { w, h, px: vec![255; w * h * 3] }
    }

    /// Sets one pixel; coordinates outside the image are ignored.
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x < 0 || y < 0 || x >= self.w as i64 || y >= self.h as i64 {
            return;
        }
        let i = (y as usize * self.w + x as usize) * 3;
        self.px[i..i + 3].copy_from_slice(&c);
    }

    fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, c: [u8; 3]) {
        for yy in y.max(0)..(y + h).min(self.h as i64) {
            for xx in x.max(0)..(x + w).min(self.w as i64) {
                self.set(xx, yy, c);
            }
        }
    }

    fn hline(&mut self, x0: i64, x1: i64, y: i64, c: [u8; 3]) {
        self.fill_rect(x0.min(x1), y, (x1 - x0).abs() + 1, 1, c);
    }

    fn vline(&mut self, x: i64, y0: i64, y1: i64, c: [u8; 3]) {
        self.fill_rect(x, y0.min(y1), 1, (y1 - y0).abs() + 1, c);
    }

    /// Bresenham line; `thick` draws it two pixels wide.
    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3], thick: bool) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            if thick {
                self.set(x + 1, y, c);
                self.set(x, y + 1, c);
                self.set(x + 1, y + 1, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// A filled disc of radius 2 (5x5 without its corners) centred on the 2x2 block at `(x, y)`,
    /// so that it covers a thick line's pixels.
    fn marker(&mut self, x: i64, y: i64, c: [u8; 3]) {
        for dy in -2..=3 {
            for dx in -2..=3 {
                let (ex, ey) = (if dx > 0 { dx - 1 } else { dx }, if dy > 0 { dy - 1 } else { dy });
                if ex * ex + ey * ey <= 5 {
                    self.set(x + dx, y + dy, c);
                }
            }
        }
    }

    /// Draws `text` with its top-left corner at `(x, y)`, each font pixel a `scale`x`scale` block.
    fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let g = glyph(ch);
            let gx = x + i as i64 * ADVANCE * scale;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..GLYPH_W {
                    if bits & (0x10 >> col) != 0 {
                        self.fill_rect(gx + col * scale, y + row as i64 * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    fn encode(&self) -> Result<Vec<u8>> {
        let fail = |e: png::EncodingError| Error::arg("png image", format!("cannot encode {}x{}: {e}", self.w, self.h));
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, self.w as u32, self.h as u32);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            enc.write_header().map_err(fail)?.write_image_data(&self.px).map_err(fail)?;
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// Scales and ticks
// ---------------------------------------------------------------------------------------------

/// `10^k` as exactly as f64 allows.
fn pow10(k: i32) -> f64 {
    10f64.powi(k)
}

/// "Nice" tick values for an axis spanning `lo..=hi`: all the multiples of one step
/// `m * 10^k` (`m` in 1, 2, 5) that lie in the range, for the smallest such step that gives at
/// most `max_ticks` of them. Values are computed as `i * m * 10^k` with the power applied last,
/// so that e.g. `0.6` comes out as the f64 nearest to 0.6.
///
/// `lo` and `hi` may come in either order. A degenerate range (`lo == hi`) gives `[lo]`; a
/// non-finite bound or `max_ticks == 0` gives no ticks. In the rare case that no step gives
/// between 1 and `max_ticks` ticks (`max_ticks == 1` and no round value in the range, or a range
/// too wide for f64), the ends `[lo, hi]` are returned, cut to `max_ticks`.
///
/// ```
/// use wgvae::plot::nice_ticks;
/// assert_eq!(nice_ticks(0.0, 1.0, 6), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
/// assert_eq!(nice_ticks(243.2, 262.6, 6), vec![245.0, 250.0, 255.0, 260.0]);
/// ```
pub fn nice_ticks(lo: f64, hi: f64, max_ticks: usize) -> Vec<f64> {
    if max_ticks == 0 || !lo.is_finite() || !hi.is_finite() {
        return Vec::new();
    }
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    if lo == hi {
        return vec![lo];
    }
    let span = hi - lo;
    let ends = || [lo, hi].into_iter().take(max_ticks).collect();
    if !span.is_finite() {
        return ends();
    }
    let raw = span / max_ticks as f64;
    if !raw.is_normal() {
        return ends();
    }
    let base = raw.log10().floor() as i32 - 1;
    for k in base..=base + 4 {
        for m in [1.0, 2.0, 5.0] {
            let step = m * pow10(k);
            if !(step > 0.0 && step.is_finite()) {
                continue;
            }
            let first = (lo / step - 1e-9).ceil();
            let last = (hi / step + 1e-9).floor();
            let n = last - first + 1.0;
            if n.is_nan() || n > max_ticks as f64 || n < 1.0 {
                continue;
            }
            let mut ticks: Vec<f64> = Vec::with_capacity(n.max(0.0) as usize);
            for i in 0..n.max(0.0) as usize {
                let idx = first + i as f64;
                let v = if (-300..0).contains(&k) { idx * m / pow10(-k) } else { idx * step };
                let v = if v == 0.0 { 0.0 } else { v }; // no "-0"
                if ticks.last() != Some(&v) {
                    ticks.push(v);
                }
            }
            return ticks;
        }
    }
    ends()
}

/// Ticks for a chart axis: up to 6, or up to 8 when 6 would leave fewer than 4.
fn axis_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let t = nice_ticks(lo, hi, 6);
    if t.len() >= 4 {
        t
    } else {
        nice_ticks(lo, hi, 8)
    }
}

/// Labels for `ticks` (as returned by [`nice_ticks`]), all with the same number of decimals;
/// scientific notation for very large or very fine values.
fn tick_labels(ticks: &[f64]) -> Vec<String> {
    if ticks.len() < 2 {
        return ticks.iter().map(|&v| fmt_value(v)).collect();
    }
    let step = (ticks[1] - ticks[0]).abs();
    let max_abs = ticks.iter().fold(0.0f64, |a, &v| a.max(v.abs()));
    if step.is_nan() || step <= 0.0 || step.is_infinite() {
        return ticks.iter().map(|&v| fmt_value(v)).collect();
    }
    let s = (step.log10() + 1e-9).floor() as i32;
    if max_abs >= 1e6 || step < 1e-4 {
        let e = (max_abs.log10() + 1e-9).floor() as i32;
        let prec = (e - s).clamp(0, 8) as usize;
        ticks.iter().map(|&v| if v == 0.0 { "0".to_string() } else { format!("{v:.prec$e}") }).collect()
    } else {
        let prec = (-s).clamp(0, 12) as usize;
        ticks
            .iter()
            .map(|&v| {
                let t = format!("{v:.prec$}");
                if t.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
                    t.trim_start_matches('-').to_string()
                } else {
                    t
                }
            })
            .collect()
    }
}

/// A value with about four significant digits (integers as integers).
fn fmt_value(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let a = v.abs();
    if v.fract() == 0.0 && a < 1e9 {
        return format!("{v:.0}");
    }
    if !(1e-3..1e6).contains(&a) {
        return format!("{v:.3e}");
    }
    let d = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
    format!("{v:.d$}")
}

/// The axis range shown for data spanning `lo..=hi`: padded by `pad` of the span on each side;
/// a (near-)constant range is widened around its value.
fn axis_range(lo: f64, hi: f64, pad: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) || lo > hi {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    let mag = lo.abs().max(hi.abs());
    if span <= mag * 1e-9 {
        let c = lo * 0.5 + hi * 0.5;
        let half = if c == 0.0 { 1.0 } else { c.abs() * 0.5 };
        let (a, b) = (c - half, c + half);
        return if a.is_finite() && b.is_finite() { (a, b) } else { (lo, hi) };
    }
    let (a, b) = (lo - span * pad, hi + span * pad);
    if a.is_finite() && b.is_finite() {
        (a, b)
    } else {
        (lo, hi)
    }
}

/// Maps data values to pixels inside a plot rectangle.
#[derive(Clone, Copy)]
struct Frame {
    left: i64,
    top: i64,
    right: i64,
    bottom: i64,
    x: (f64, f64),
    y: (f64, f64),
    /// Right edge of the chart's box: x tick labels are kept left of it.
    limit: i64,
}

impl Frame {
    fn px(&self, x: f64) -> i64 {
        let t = (x - self.x.0) / (self.x.1 - self.x.0);
        clamp_px(self.left as f64 + t * (self.right - self.left) as f64)
    }
    fn py(&self, y: f64) -> i64 {
        let t = (y - self.y.0) / (self.y.1 - self.y.0);
        clamp_px(self.bottom as f64 - t * (self.bottom - self.top) as f64)
    }
}

/// A pixel coordinate, kept within a few canvases of the image (NaN gives 0) so that lines stay
/// short and coordinate arithmetic cannot overflow.
fn clamp_px(v: f64) -> i64 {
    v.round().clamp(-65536.0, 65536.0) as i64
}

/// Draws the grid, the axes, the tick marks and the tick labels of `f`.
fn draw_axes(c: &mut Canvas, f: &Frame, xt: &[f64], xl: &[String], yt: &[f64], yl: &[String]) {
    for &t in xt {
        c.vline(f.px(t), f.top, f.bottom, GRID);
    }
    for &t in yt {
        c.hline(f.left, f.right, f.py(t), GRID);
    }
    c.hline(f.left, f.right, f.top, FRAME);
    c.vline(f.right, f.top, f.bottom, FRAME);
    c.hline(f.left, f.right, f.bottom, AXIS);
    c.vline(f.left, f.top, f.bottom, AXIS);
    for (&t, label) in xt.iter().zip(xl) {
        let x = f.px(t);
        c.vline(x, f.bottom, f.bottom + 3, AXIS);
        let w = text_width(label, 1);
        c.text((x - w / 2).min(f.limit - w - 1), f.bottom + 6, label, 1, TEXT);
    }
    for (&t, label) in yt.iter().zip(yl) {
        let y = f.py(t);
        c.hline(f.left - 3, f.left, y, AXIS);
        let w = text_width(label, 1);
        c.text(f.left - 6 - w, y - GLYPH_H / 2, label, 1, TEXT);
    }
}

/// Draws `title` centred in the top rows of the box at `(ox, oy)` of width `w`: at scale 2 when
/// it fits, else at scale 1, cut with `..` if needed.
fn draw_title(c: &mut Canvas, ox: i64, oy: i64, w: i64, title: &str) {
    let room = w - 16;
    let scale = if text_width(title, 2) <= room { 2 } else { 1 };
    let t = fit_text(title, room, scale);
    let tw = text_width(&t, scale);
    let y = oy + if scale == 2 { 5 } else { 9 };
    c.text(ox + (w - tw) / 2, y, &t, scale, TEXT);
}

/// Data bounds `(xmin, xmax, ymin, ymax)` over finite points, or `None` when there are none.
fn bounds(points: impl Iterator<Item = (f64, f64)>) -> Option<(f64, f64, f64, f64)> {
    points.filter(|(x, y)| x.is_finite() && y.is_finite()).fold(None, |b, (x, y)| {
        Some(match b {
            None => (x, x, y, y),
            Some((a, b, c, d)) => (a.min(x), b.max(x), c.min(y), d.max(y)),
        })
    })
}

// ---------------------------------------------------------------------------------------------
// Line charts
// ---------------------------------------------------------------------------------------------

/// Height of one legend row of a line chart.
const LEGEND_ROW: i64 = 11;
/// First legend row, from the chart's top.
const LEGEND_TOP: i64 = 26;
/// Legend rows at most; entries that do not fit are left out of the legend (not of the plot).
const LEGEND_MAX_ROWS: usize = 3;
/// Series with at most this many finite points get a marker on each point.
const MARKER_MAX_POINTS: usize = 25;

fn check_series(series: &[Series]) -> Result<()> {
    if series.is_empty() {
        return Err(Error::arg("series", "a line chart needs at least one series"));
    }
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(Error::arg("series", format!("all {} series are empty; give at least one point", series.len())));
    }
    Ok(())
}

/// Draws one line chart into the `w`x`h` box of `c` at `(ox, oy)`.
fn draw_line_chart(
    c: &mut Canvas,
    (ox, oy, w, h): (i64, i64, i64, i64),
    title: &str,
    x_label: &str,
    series: &[Series],
) {
    draw_title(c, ox, oy, w, title);

    // Legend layout: entries flow left to right, wrapping, in at most LEGEND_MAX_ROWS rows.
    let (lx0, lx1) = (ox + 12, ox + w - 12);
    let mut entries = Vec::new(); // (x, row, text, colour)
    let (mut x, mut row) = (lx0, 0usize);
    for (i, s) in series.iter().enumerate() {
        let name = fit_text(&s.name, lx1 - lx0 - 18, 1);
        let ew = 18 + text_width(&name, 1);
        if x > lx0 && x + ew > lx1 {
            row += 1;
            x = lx0;
        }
        if row >= LEGEND_MAX_ROWS {
            break;
        }
        entries.push((x, row, name, PALETTE[i % PALETTE.len()]));
        x += ew + 14;
    }
    let rows = entries.last().map_or(0, |e| e.1 + 1) as i64;
    for (x, row, name, col) in &entries {
        let y = oy + LEGEND_TOP + *row as i64 * LEGEND_ROW;
        c.line((*x, y + 3), (*x + 13, y + 3), *col, true);
        c.text(*x + 18, y, name, 1, TEXT);
    }

    // Ranges, ticks and the plot rectangle.
    let b = bounds(series.iter().flat_map(|s| s.points.iter().copied()));
    let (xr, yr) = match b {
        Some((x0, x1, y0, y1)) => (axis_range(x0, x1, 0.02), axis_range(y0, y1, 0.06)),
        None => ((0.0, 1.0), (0.0, 1.0)),
    };
    let (xt, yt) = (axis_ticks(xr.0, xr.1), axis_ticks(yr.0, yr.1));
    let (xl, yl) = (tick_labels(&xt), tick_labels(&yt));
    let ylw = yl.iter().map(|l| text_width(l, 1)).max().unwrap_or(0);
    let left = ox + (ylw + 12).max(30);
    let right = ox + w - 14;
    let top = oy + LEGEND_TOP + rows * LEGEND_ROW + 6;
    let bottom = oy + h - 30;
    let f = Frame { left, top, right, bottom, x: xr, y: yr, limit: ox + w };
    draw_axes(c, &f, &xt, &xl, &yt, &yl);
    if !x_label.is_empty() {
        let t = fit_text(x_label, w - 16, 1);
        c.text(left + (right - left - text_width(&t, 1)) / 2, oy + h - 11, &t, 1, TEXT);
    }
    if b.is_none() {
        let msg = "(no finite values)";
        c.text(left + (right - left - text_width(msg, 1)) / 2, (top + bottom) / 2 - 3, msg, 1, MUTED);
    }

    // Series, last first so that the first series is drawn on top.
    for (i, s) in series.iter().enumerate().rev() {
        let col = PALETTE[i % PALETTE.len()];
        let pts: Vec<(i64, i64)> =
            s.points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).map(|&(x, y)| (f.px(x), f.py(y))).collect();
        for p in pts.windows(2) {
            c.line(p[0], p[1], col, true);
        }
        if pts.len() <= MARKER_MAX_POINTS {
            for &(x, y) in &pts {
                c.marker(x, y, col);
            }
        }
    }
}

/// A line chart of `series` as PNG bytes ([`CHART_WIDTH`]x[`CHART_HEIGHT`], RGB, white
/// background): a title, a legend of the series names, the lines (series `i` in
/// `PALETTE[i % 12]`, with a marker on each point when a series has at most 25 points), and axes
/// with 4 to 8 nice ticks (see [`nice_ticks`]) labelled, the x axis with `x_label`.
///
/// Points with a NaN or infinite coordinate are skipped; a single point or a constant series is
/// drawn in the middle of a widened range. Fails when `series` is empty or every series has no
/// points.
pub fn line_chart(title: &str, x_label: &str, series: &[Series]) -> Result<Vec<u8>> {
    check_series(series)?;
    let mut c = Canvas::new(CHART_WIDTH, CHART_HEIGHT);
    draw_line_chart(&mut c, (0, 0, CHART_WIDTH as i64, CHART_HEIGHT as i64), title, x_label, series);
    c.encode()
}

/// The panels of [`metrics_png`]: title and keys.
const METRIC_PANELS: [(&str, &[&str]); 5] = [
    ("loss", &["train_loss", "test_loss"]),
    ("reconstruction", &["train_recon", "recon"]),
    ("KL", &["train_kl", "kl"]),
    ("KL weight", &["kl_weight"]),
    ("active units", &["active_units"]),
];

/// A dashboard of the per-epoch objects of a `metrics.jsonl` file, as one PNG: panels of
/// [`CHART_WIDTH`]x[`CHART_HEIGHT`] in rows of [`DASHBOARD_COLUMNS`], in this order:
///
/// * "loss": `train_loss` and `test_loss`,
/// * "reconstruction": `train_recon` and `recon`,
/// * "KL": `train_kl` and `kl`,
/// * "KL weight": `kl_weight`,
/// * "active units": `active_units`,
///
/// each against the line's `epoch` (its 1-based position in `lines` when it has none). A key
/// counts when at least one line holds a number under it; keys that none does are left out, and
/// so are panels left without keys. Each legend entry shows the key and its last value. Fails when
/// no panel is left.
pub fn metrics_png(lines: &[MetricsLine]) -> Result<Vec<u8>> {
    let mut panels: Vec<(&str, Vec<Series>)> = Vec::new();
    for (title, keys) in METRIC_PANELS {
        let mut series = Vec::new();
        for key in keys {
            let points: Vec<(f64, f64)> = lines
                .iter()
                .enumerate()
                .filter_map(|(i, l)| {
                    let y = *l.get(*key)?;
                    let x = l.get("epoch").copied().unwrap_or((i + 1) as f64);
                    Some((x, y))
                })
                .collect();
            if let Some(&(_, last)) = points.last() {
                series.push(Series { name: format!("{key} = {}", fmt_value(last)), points });
            }
        }
        if !series.is_empty() {
            panels.push((title, series));
        }
    }
    if panels.is_empty() {
        let keys: Vec<&str> = METRIC_PANELS.iter().flat_map(|p| p.1.iter().copied()).collect();
        return Err(Error::arg(
            "metrics",
            format!("none of the {} lines has a number under any of {}", lines.len(), keys.join(", ")),
        ));
    }
    let cols = panels.len().min(DASHBOARD_COLUMNS);
    let rows = panels.len().div_ceil(cols);
    let mut c = Canvas::new(cols * CHART_WIDTH, rows * CHART_HEIGHT);
    let (pw, ph) = (CHART_WIDTH as i64, CHART_HEIGHT as i64);
    for (i, (title, series)) in panels.iter().enumerate() {
        let (r, col) = ((i / cols) as i64, (i % cols) as i64);
        draw_line_chart(&mut c, (col * pw, r * ph, pw, ph), title, "epoch", series);
    }
    c.encode()
}

/// The numbers of one line of a metrics file, by key (non-numeric values left out).
pub type MetricsLine = std::collections::BTreeMap<String, f64>;

/// Reads a metrics file's text (one JSON object per line, as `metrics.jsonl`); blank lines are
/// skipped. Errors name the line that is not a JSON object.
pub fn parse_metrics(text: &str) -> Result<Vec<MetricsLine>> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value =
                serde_json::from_str(l).map_err(|e| Error::arg("metrics", format!("line {}: {e}", i + 1)))?;
            let obj =
                v.as_object().ok_or_else(|| Error::arg("metrics", format!("line {} is not a JSON object", i + 1)))?;
            Ok(obj.iter().filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x))).collect())
        })
        .collect()
}

/// Plots a metrics file (as `metrics.jsonl`) into `out`, by default `metrics.png` beside it, and
/// returns where the picture went. Errors name the file.
pub fn plot_metrics_file(
    metrics: impl AsRef<std::path::Path>,
    out: Option<&std::path::Path>,
) -> Result<std::path::PathBuf> {
    let metrics = metrics.as_ref();
    let text = std::fs::read_to_string(metrics).map_err(|source| Error::Io { path: metrics.to_path_buf(), source })?;
    let lines = parse_metrics(&text).map_err(|e| Error::Data { path: metrics.to_path_buf(), detail: e.to_string() })?;
    let out = out.map_or_else(|| metrics.with_file_name("metrics.png"), std::path::Path::to_path_buf);
    crate::checkpoint::write_atomic(&out, &metrics_png(&lines)?)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Scatter plots
// ---------------------------------------------------------------------------------------------

/// A scatter plot of `points` as PNG bytes ([`SCATTER_WIDTH`]x[`SCATTER_HEIGHT`], RGB, white
/// background), e.g. the 2-D latent codes of test images: a title, axes with nice ticks, and a
/// small dot per point. With `labels` (one per point), the dot of a point labelled `l` is
/// `PALETTE[l % 12]` and a legend column on the right lists the label values present (sorted);
/// without, every dot is `PALETTE[0]` and there is no legend.
///
/// Points with a NaN or infinite coordinate are skipped. Fails when `points` is empty or
/// `labels` has another length.
pub fn scatter_png(points: &[(f32, f32)], labels: Option<&[u8]>, title: &str) -> Result<Vec<u8>> {
    if points.is_empty() {
        return Err(Error::arg("points", "a scatter plot needs at least one point"));
    }
    if let Some(l) = labels {
        if l.len() != points.len() {
            return Err(Error::arg(
                "labels",
                format!("{} labels for {} points; give one per point", l.len(), points.len()),
            ));
        }
    }
    let (w, h) = (SCATTER_WIDTH as i64, SCATTER_HEIGHT as i64);
    let mut c = Canvas::new(SCATTER_WIDTH, SCATTER_HEIGHT);
    let legend_w = if labels.is_some() { SCATTER_LEGEND_WIDTH as i64 } else { 0 };
    draw_title(&mut c, 0, 0, w - legend_w, title);

    let finite = |i: &usize| points[*i].0.is_finite() && points[*i].1.is_finite();
    let b = bounds(points.iter().map(|&(x, y)| (x as f64, y as f64)));
    let (xr, yr) = match b {
        Some((x0, x1, y0, y1)) => (axis_range(x0, x1, 0.04), axis_range(y0, y1, 0.04)),
        None => ((0.0, 1.0), (0.0, 1.0)),
    };
    let (xt, yt) = (axis_ticks(xr.0, xr.1), axis_ticks(yr.0, yr.1));
    let (xl, yl) = (tick_labels(&xt), tick_labels(&yt));
    let ylw = yl.iter().map(|l| text_width(l, 1)).max().unwrap_or(0);
    let f = Frame {
        left: (ylw + 12).max(30),
        top: 28,
        right: w - legend_w - 14,
        bottom: h - 22,
        x: xr,
        y: yr,
        limit: w - legend_w,
    };
    draw_axes(&mut c, &f, &xt, &xl, &yt, &yl);
    if b.is_none() {
        let msg = "(no finite values)";
        c.text(f.left + (f.right - f.left - text_width(msg, 1)) / 2, (f.top + f.bottom) / 2 - 3, msg, 1, MUTED);
    }

    let colour = |i: usize| labels.map_or(PALETTE[0], |l| PALETTE[l[i] as usize % PALETTE.len()]);
    for i in (0..points.len()).filter(finite) {
        let (x, y) = (f.px(points[i].0 as f64), f.py(points[i].1 as f64));
        let col = colour(i);
        c.set(x, y, col);
        c.set(x - 1, y, col);
        c.set(x + 1, y, col);
        c.set(x, y - 1, col);
        c.set(x, y + 1, col);
    }

    if let Some(l) = labels {
        let mut present = [false; 256];
        for i in (0..points.len()).filter(finite) {
            present[l[i] as usize] = true;
        }
        let values: Vec<usize> = (0..256).filter(|&v| present[v]).collect();
        let lx = w - legend_w + 2;
        c.text(lx, f.top, "label", 1, TEXT);
        let max_rows = ((f.bottom - f.top - 14) / 12).max(1) as usize;
        for (row, &v) in values.iter().enumerate() {
            let y = f.top + 14 + row as i64 * 12;
            if row + 1 == max_rows && values.len() > max_rows {
                c.text(lx, y, &format!("+{} more", values.len() - row), 1, TEXT);
                break;
            }
            c.fill_rect(lx, y, 7, 7, PALETTE[v % PALETTE.len()]);
            c.text(lx + 11, y, &v.to_string(), 1, TEXT);
        }
    }
    c.encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_character_has_a_glyph() {
        let fallback = glyph('\u{1}');
        for ch in ('0'..='9').chain('A'..='Z').chain('a'..='z').chain(".-+e_/():%,=".chars()) {
            assert_ne!(glyph(ch), fallback, "{ch:?}");
            assert!(glyph(ch).iter().all(|r| r & !0x1F == 0), "{ch:?} wider than 5 columns");
        }
        assert_eq!(glyph(' '), [0; 7]);
    }

    #[test]
    fn tick_labels_are_uniform() {
        assert_eq!(tick_labels(&nice_ticks(0.0, 1.0, 6)), ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        assert_eq!(tick_labels(&nice_ticks(243.2, 262.6, 6)), ["245", "250", "255", "260"]);
        assert_eq!(tick_labels(&[-0.5, 0.0, 0.5]), ["-0.5", "0.0", "0.5"]);
        assert_eq!(tick_labels(&nice_ticks(0.0, 3e7, 4)), ["0", "1e7", "2e7", "3e7"]);
        assert_eq!(tick_labels(&nice_ticks(1e-5, 4e-5, 4)), ["1e-5", "2e-5", "3e-5", "4e-5"]);
    }

    #[test]
    fn text_is_cut_to_fit() {
        assert_eq!(fit_text("abc", 100, 1), "abc");
        let t = fit_text("a very long legend entry", 60, 1);
        assert!(text_width(&t, 1) <= 60 && t.ends_with(".."), "{t}");
    }
}
