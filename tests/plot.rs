//! PNG charts: decoded back and checked pixel by pixel (sizes, background, colours, text).

use std::io::Cursor;

use serde_json::json;
use wgvae::plot::*;
use wgvae::Error;

/// A decoded RGB image.
struct Img {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Img {
    fn at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.w + x) * 3;
        [self.px[i], self.px[i + 1], self.px[i + 2]]
    }

    /// Pixels in `[x0, x1) x [y0, y1)` for which `pred` holds.
    fn count(&self, (x0, x1): (usize, usize), (y0, y1): (usize, usize), pred: impl Fn([u8; 3]) -> bool) -> usize {
        let mut n = 0;
        for y in y0..y1.min(self.h) {
            for x in x0..x1.min(self.w) {
                n += pred(self.at(x, y)) as usize;
            }
        }
        n
    }

    fn count_all(&self, pred: impl Fn([u8; 3]) -> bool) -> usize {
        self.count((0, self.w), (0, self.h), pred)
    }

    /// Mean row of the pixels of colour `c` below row `y0`.
    fn mean_row(&self, c: [u8; 3], y0: usize) -> f64 {
        let (mut sum, mut n) = (0.0, 0.0);
        for y in y0..self.h {
            for x in 0..self.w {
                if self.at(x, y) == c {
                    sum += y as f64;
                    n += 1.0;
                }
            }
        }
        assert!(n > 0.0, "colour {c:?} not found below row {y0}");
        sum / n
    }
}

fn decode(bytes: &[u8]) -> Img {
    let mut reader = png::Decoder::new(Cursor::new(bytes)).read_info().expect("valid PNG header");
    let mut px = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut px).expect("valid PNG data");
    assert_eq!(info.color_type, png::ColorType::Rgb);
    assert_eq!(info.bit_depth, png::BitDepth::Eight);
    px.truncate(info.buffer_size());
    Img { w: info.width as usize, h: info.height as usize, px }
}

const WHITE: [u8; 3] = [255, 255, 255];

fn is_dark(p: [u8; 3]) -> bool {
    p.iter().all(|&v| v < 100)
}

fn is(c: [u8; 3]) -> impl Fn([u8; 3]) -> bool {
    move |p| p == c
}

fn assert_white_corners(img: &Img) {
    for (x, y) in [(0, 0), (img.w - 1, 0), (0, img.h - 1), (img.w - 1, img.h - 1), (img.w / 2, 1)] {
        assert_eq!(img.at(x, y), WHITE, "pixel ({x}, {y})");
    }
    // Mostly background.
    assert!(img.count_all(is(WHITE)) > img.w * img.h / 2);
}

/// JSON lines as a metrics file holds them, read back through the library's parser.
fn lines(v: &[serde_json::Value]) -> Vec<wgvae::plot::MetricsLine> {
    let text: String = v.iter().map(|l| format!("{l}\n")).collect();
    wgvae::plot::parse_metrics(&text).unwrap()
}

fn ramp(name: &str, n: usize, f: impl Fn(f64) -> f64) -> Series {
    Series::new(name, (0..n).map(|i| (i as f64, f(i as f64))).collect())
}

fn assert_invalid_argument<T: std::fmt::Debug>(r: wgvae::Result<T>) {
    match r {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Ticks
// ---------------------------------------------------------------------------------------------

#[test]
fn nice_ticks_unit_interval() {
    assert_eq!(nice_ticks(0.0, 1.0, 6), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0]);
    assert_eq!(nice_ticks(1.0, 0.0, 6), vec![0.0, 0.2, 0.4, 0.6, 0.8, 1.0], "reversed bounds");
    assert_eq!(nice_ticks(0.0, 1.0, 11), vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]);
    assert_eq!(nice_ticks(0.0, 1.0, 3), vec![0.0, 0.5, 1.0]);
}

#[test]
fn nice_ticks_loss_range() {
    assert_eq!(nice_ticks(243.2, 262.6, 6), vec![245.0, 250.0, 255.0, 260.0]);
    assert_eq!(nice_ticks(243.2, 262.6, 5), vec![245.0, 250.0, 255.0, 260.0]);
    assert_eq!(nice_ticks(-3.7, -1.2, 6), vec![-3.5, -3.0, -2.5, -2.0, -1.5]);
    assert_eq!(nice_ticks(0.5, 10.5, 6), vec![2.0, 4.0, 6.0, 8.0, 10.0]);
}

#[test]
fn nice_ticks_degenerate_inputs() {
    assert_eq!(nice_ticks(3.0, 3.0, 6), vec![3.0]);
    assert!(nice_ticks(0.0, 1.0, 0).is_empty());
    assert!(nice_ticks(f64::NAN, 1.0, 6).is_empty());
    assert!(nice_ticks(0.0, f64::INFINITY, 6).is_empty());
    let wide = nice_ticks(-f64::MAX, f64::MAX, 6);
    assert!(!wide.is_empty() && wide.len() <= 6 && wide.iter().all(|t| t.is_finite()), "{wide:?}");
    let one = nice_ticks(1.9, 4.1, 1);
    assert_eq!(one.len(), 1, "{one:?}");
}

/// Over many ranges: at most `max` ticks, inside the range, evenly spaced by 1, 2 or 5 x 10^k,
/// and the next finer such step would give too many.
#[test]
fn nice_ticks_properties() {
    let ranges = [
        (0.0, 1.0),
        (243.2, 262.6),
        (-1.0, 1.0),
        (0.001, 0.0013),
        (1e-7, 9e-7),
        (3.0, 1e6),
        (-527.0, -3.0),
        (0.999, 1.001),
        (12345.0, 12345.5),
        (-0.03, 7.9),
        (1.0, 100.0),
    ];
    for (lo, hi) in ranges {
        for max in [2usize, 4, 5, 6, 8, 10] {
            let t = nice_ticks(lo, hi, max);
            assert!(!t.is_empty() && t.len() <= max, "{lo}..{hi} max {max}: {t:?}");
            let tol = (hi - lo) * 1e-6;
            assert!(t.iter().all(|&v| v >= lo - tol && v <= hi + tol), "{lo}..{hi} max {max}: {t:?}");
            if t.len() < 2 {
                continue;
            }
            let step = t[1] - t[0];
            for w in t.windows(2) {
                assert!(((w[1] - w[0]) / step - 1.0).abs() < 1e-6, "uneven {t:?}");
            }
            let k = step.log10().floor();
            let m = step / 10f64.powf(k);
            let m = [1.0, 2.0, 5.0, 10.0].into_iter().find(|c| (m - c).abs() < 1e-6);
            let m = m.unwrap_or_else(|| panic!("step {step} of {t:?} is not 1, 2 or 5 x 10^k"));
            // The next finer nice step gives more than `max` ticks.
            let step = m * 10f64.powf(k);
            let finer = if m == 5.0 { step * 2.0 / 5.0 } else { step / 2.0 };
            let n = (hi / finer + 1e-9).floor() - (lo / finer - 1e-9).ceil() + 1.0;
            assert!(n > max as f64, "{lo}..{hi} max {max}: {t:?}, but step {finer} gives {n}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Line charts
// ---------------------------------------------------------------------------------------------

#[test]
fn line_chart_is_a_white_rgb_png_of_the_documented_size() {
    let png = line_chart("loss", "epoch", &[ramp("train", 10, |x| 100.0 / (x + 1.0))]).unwrap();
    let img = decode(&png);
    assert_eq!((img.w, img.h), (CHART_WIDTH, CHART_HEIGHT));
    assert_eq!((CHART_WIDTH, CHART_HEIGHT), (480, 300));
    assert_white_corners(&img);
}

#[test]
fn series_colours_appear_and_differ() {
    // `high` stays above `low`, so its colour must sit higher in the plot area.
    let high = ramp("high", 20, |x| 10.0 + (x * 0.5).sin());
    let low = ramp("low", 20, |x| -10.0 + (x * 0.3).cos());
    let third = ramp("third", 20, |x| x * 0.1);
    let img = decode(&line_chart("three", "step", &[high, low, third]).unwrap());
    for (i, c) in PALETTE.iter().take(3).enumerate() {
        assert!(img.count_all(is(*c)) > 100, "series {i} colour {c:?} barely drawn");
    }
    assert!(img.count_all(is(PALETTE[3])) == 0, "a fourth colour without a fourth series");
    let plot_top = 50; // below the title and the one legend row
    let (hi_row, lo_row) = (img.mean_row(PALETTE[0], plot_top), img.mean_row(PALETTE[1], plot_top));
    assert!(hi_row + 100.0 < lo_row, "high series at row {hi_row}, low series at row {lo_row}");
    let mid = img.mean_row(PALETTE[2], plot_top);
    assert!(hi_row < mid && mid < lo_row, "third series at row {mid}");
}

#[test]
fn palette_colours_are_distinct() {
    assert!(PALETTE.len() >= 10);
    for (i, c) in PALETTE.iter().enumerate() {
        assert_ne!(*c, WHITE);
        assert!(!is_dark(*c), "{c:?} looks like text");
        assert!(!PALETTE[..i].contains(c), "{c:?} twice");
    }
}

#[test]
fn title_draws_dark_pixels_at_the_top_centre() {
    let s = [ramp("a", 5, |x| x)];
    let with = decode(&line_chart("Test loss (nats)", "", &s).unwrap());
    let without = decode(&line_chart("", "", &s).unwrap());
    let region = ((CHART_WIDTH / 4, CHART_WIDTH * 3 / 4), (0, 24));
    let dark = with.count(region.0, region.1, is_dark);
    assert!(dark > 100, "title drew {dark} dark pixels");
    assert_eq!(without.count(region.0, region.1, is_dark), 0);
    // Title text is centred: the outer quarters of the title strip stay empty.
    assert_eq!(with.count((0, 60), (0, 24), is_dark), 0);
}

#[test]
fn legend_draws_swatch_and_name_below_the_title() {
    let named = [ramp("train_loss", 5, |x| x), ramp("test_loss", 5, |x| 2.0 * x)];
    let unnamed = [ramp("", 5, |x| x), ramp("", 5, |x| 2.0 * x)];
    let a = decode(&line_chart("", "", &named).unwrap());
    let b = decode(&line_chart("", "", &unnamed).unwrap());
    let strip = ((0, CHART_WIDTH), (24, 38));
    for c in &PALETTE[..2] {
        assert!(a.count(strip.0, strip.1, is(*c)) >= 20, "legend swatch {c:?} missing");
    }
    let (da, db) = (a.count(strip.0, strip.1, is_dark), b.count(strip.0, strip.1, is_dark));
    assert!(da > 80 && db == 0, "legend text: {da} dark pixels with names, {db} without");
}

#[test]
fn axis_labels_draw_dark_pixels_left_of_and_below_the_plot() {
    let s = [ramp("a", 10, |x| 250.0 + x)];
    let with = decode(&line_chart("", "epoch", &s).unwrap());
    // y tick labels, left of the y axis.
    assert!(with.count((0, 25), (50, CHART_HEIGHT - 35), is_dark) > 40);
    // x tick labels and the x label, below the x axis.
    assert!(with.count((40, CHART_WIDTH), (CHART_HEIGHT - 24, CHART_HEIGHT - 14), is_dark) > 40);
    assert!(with.count((40, CHART_WIDTH), (CHART_HEIGHT - 12, CHART_HEIGHT), is_dark) > 20);
    let without = decode(&line_chart("", "", &s).unwrap());
    assert_eq!(without.count((0, CHART_WIDTH), (CHART_HEIGHT - 12, CHART_HEIGHT), is_dark), 0);
}

#[test]
fn single_point_and_constant_series_are_drawn() {
    let single = decode(&line_chart("one", "x", &[Series::new("p", vec![(1.0, 3.5)])]).unwrap());
    assert!(single.count((0, CHART_WIDTH), (45, CHART_HEIGHT), is(PALETTE[0])) >= 9, "marker");
    let flat = decode(&line_chart("flat", "x", &[ramp("c", 30, |_| 7.0)]).unwrap());
    let n = flat.count((0, CHART_WIDTH), (45, CHART_HEIGHT), is(PALETTE[0]));
    assert!(n > 300, "constant line drew {n} pixels");
    // Drawn mid-height, not on an edge.
    let row = flat.mean_row(PALETTE[0], 45);
    assert!((row - (45.0 + 270.0) / 2.0).abs() < 30.0, "constant line at row {row}");
    let zero = decode(&line_chart("zeros", "x", &[ramp("z", 3, |_| 0.0)]).unwrap());
    assert!(zero.count_all(is(PALETTE[0])) > 50);
}

#[test]
fn nan_and_infinite_points_are_skipped() {
    let pts = vec![(0.0, 1.0), (1.0, f64::NAN), (2.0, 3.0), (f64::INFINITY, 2.0), (3.0, f64::NEG_INFINITY), (4.0, 2.0)];
    let img = decode(&line_chart("nan", "x", &[Series::new("s", pts)]).unwrap());
    assert!(img.count_all(is(PALETTE[0])) > 100);
    // A series without any finite point still gives a chart (empty axes) next to a good one.
    let bad = Series::new("bad", vec![(f64::NAN, 1.0), (2.0, f64::NAN)]);
    let img = decode(&line_chart("nan", "x", &[bad.clone(), ramp("ok", 4, |x| x)]).unwrap());
    assert!(img.count((0, CHART_WIDTH), (45, CHART_HEIGHT), is(PALETTE[1])) > 50);
    let img = decode(&line_chart("all nan", "x", &[bad]).unwrap());
    assert_eq!((img.w, img.h), (CHART_WIDTH, CHART_HEIGHT));
}

#[test]
fn extreme_values_do_not_crash() {
    for pts in [
        vec![(0.0, f64::MAX), (1.0, -f64::MAX)],
        vec![(-f64::MAX, 0.0), (f64::MAX, 1.0)],
        vec![(0.0, 1e-300), (1.0, 2e-300)],
        vec![(1e12, 1.0), (1e12 + 1e-3, 1.0)],
        vec![(0.0, 5e-324), (1.0, 0.0)],
    ] {
        let img = decode(&line_chart("extreme", "x", &[Series::new("s", pts)]).unwrap());
        assert_eq!((img.w, img.h), (CHART_WIDTH, CHART_HEIGHT));
    }
}

#[test]
fn empty_input_is_an_error() {
    assert_invalid_argument(line_chart("t", "x", &[]));
    assert_invalid_argument(line_chart("t", "x", &[Series::new("a", vec![]), Series::new("b", vec![])]));
}

// ---------------------------------------------------------------------------------------------
// metrics.jsonl dashboard
// ---------------------------------------------------------------------------------------------

fn metric_line(epoch: u64, extra: bool) -> serde_json::Value {
    let e = epoch as f64;
    let mut v = json!({
        "epoch": epoch, "step": epoch * 469,
        "train_loss": 200.0 / e, "train_recon": 180.0 / e, "train_kl": 20.0 + e,
        "test_loss": 205.0 / e, "recon": 185.0 / e, "kl": 21.0 + e,
        "epoch_seconds": 3.2, "examples_per_second": 18000.0,
    });
    if extra {
        v["kl_weight"] = json!((e / 5.0).min(1.0));
        v["active_units"] = json!(epoch.min(8));
    }
    v
}

#[test]
fn metrics_dashboard_has_one_panel_per_present_group() {
    let full: Vec<_> = (1..=10).map(|e| metric_line(e, true)).collect();
    let img = decode(&metrics_png(&lines(&full)).unwrap());
    assert_eq!((img.w, img.h), (2 * CHART_WIDTH, 3 * CHART_HEIGHT), "5 panels in 2 columns");
    assert_white_corners(&img);
    // Every panel has a title and a line in the first colour; the two-series panels a second one.
    for p in 0..5 {
        let (x0, y0) = ((p % 2) * CHART_WIDTH, (p / 2) * CHART_HEIGHT);
        let (xs, ys) = ((x0, x0 + CHART_WIDTH), (y0 + 45, y0 + CHART_HEIGHT));
        assert!(img.count(xs, (y0, y0 + 24), is_dark) > 20, "panel {p} title");
        assert!(img.count(xs, ys, is(PALETTE[0])) > 100, "panel {p} first series");
        let second = img.count(xs, ys, is(PALETTE[1]));
        assert_eq!(second > 100, p < 3, "panel {p} second series: {second} pixels");
    }
    // The unused bottom-right cell stays white.
    let cell = ((CHART_WIDTH, 2 * CHART_WIDTH), (2 * CHART_HEIGHT, 3 * CHART_HEIGHT));
    assert_eq!(img.count(cell.0, cell.1, is(WHITE)), CHART_WIDTH * CHART_HEIGHT);

    // Without kl_weight / active_units: three panels.
    let basic: Vec<_> = (1..=3).map(|e| metric_line(e, false)).collect();
    let img = decode(&metrics_png(&lines(&basic)).unwrap());
    assert_eq!((img.w, img.h), (2 * CHART_WIDTH, 2 * CHART_HEIGHT));

    // A key present in some lines only still gets its panel; a lone key gives a single panel.
    let mut partial = basic.clone();
    partial[2]["active_units"] = json!(4);
    let img = decode(&metrics_png(&lines(&partial)).unwrap());
    assert_eq!((img.w, img.h), (2 * CHART_WIDTH, 2 * CHART_HEIGHT));
    let lone = [json!({"epoch": 1, "kl_weight": 0.5}), json!({"epoch": 2, "kl_weight": null})];
    let img = decode(&metrics_png(&lines(&lone)).unwrap());
    assert_eq!((img.w, img.h), (CHART_WIDTH, CHART_HEIGHT));
    assert!(img.count_all(is(PALETTE[0])) >= 9);
}

#[test]
fn metrics_without_known_keys_is_an_error() {
    assert_invalid_argument(metrics_png(&[]));
    assert_invalid_argument(metrics_png(&lines(&[json!({"epoch": 1, "step": 100, "epoch_seconds": 2.0})])));
    assert_invalid_argument(metrics_png(&lines(&[json!({"epoch": 1, "test_loss": null})])));
    assert_invalid_argument(wgvae::plot::parse_metrics("{\"epoch\": 1}\n\"not an object\""));
    assert_invalid_argument(wgvae::plot::parse_metrics("{\"epoch\": 1}\n{broken"));
}

// ---------------------------------------------------------------------------------------------
// Scatter plots
// ---------------------------------------------------------------------------------------------

/// Three clusters of 200 points each, labelled 0, 1 and 7.
fn clusters() -> (Vec<(f32, f32)>, Vec<u8>) {
    let mut pts = Vec::new();
    let mut labels = Vec::new();
    for (k, (cx, cy, l)) in [(-2.0f32, -2.0f32, 0u8), (2.0, -1.0, 1), (0.0, 2.5, 7)].into_iter().enumerate() {
        for i in 0..200 {
            let a = i as f32 * 0.7 + k as f32;
            let r = 0.1 + (i % 10) as f32 * 0.05;
            pts.push((cx + r * a.cos(), cy + r * a.sin()));
            labels.push(l);
        }
    }
    (pts, labels)
}

#[test]
fn scatter_colours_points_by_label_with_a_legend() {
    let (pts, labels) = clusters();
    let img = decode(&scatter_png(&pts, Some(&labels), "latent space").unwrap());
    assert_eq!((img.w, img.h), (SCATTER_WIDTH, SCATTER_HEIGHT));
    assert_white_corners(&img);
    let plot_x = (0, SCATTER_WIDTH - SCATTER_LEGEND_WIDTH);
    for l in [0usize, 1, 7] {
        assert!(img.count(plot_x, (28, SCATTER_HEIGHT), is(PALETTE[l])) > 100, "label {l} points");
    }
    for l in [2usize, 3, 4, 5, 6, 8, 9] {
        assert_eq!(img.count_all(is(PALETTE[l])), 0, "label {l} is absent but drawn");
    }
    // The label-7 cluster is at the top, the label-0 cluster bottom-left, label 1 bottom-right.
    let c7 = img.mean_row(PALETTE[7], 28);
    let c0 = img.mean_row(PALETTE[0], 28);
    assert!(c7 + 100.0 < c0, "label 7 at row {c7}, label 0 at row {c0}");
    // Legend column: a swatch per label present, and dark text.
    let legend_x = (SCATTER_WIDTH - SCATTER_LEGEND_WIDTH, SCATTER_WIDTH);
    for l in [0usize, 1, 7] {
        assert!(img.count(legend_x, (0, SCATTER_HEIGHT), is(PALETTE[l])) >= 49, "legend swatch {l}");
    }
    assert!(img.count(legend_x, (0, SCATTER_HEIGHT), is_dark) > 40, "legend text");
    // Title.
    assert!(img.count((0, SCATTER_WIDTH), (0, 24), is_dark) > 100);
}

#[test]
fn scatter_without_labels_uses_one_colour() {
    let (pts, _) = clusters();
    let img = decode(&scatter_png(&pts, None, "z").unwrap());
    assert_eq!((img.w, img.h), (SCATTER_WIDTH, SCATTER_HEIGHT));
    assert!(img.count_all(is(PALETTE[0])) > 300);
    for c in &PALETTE[1..] {
        assert_eq!(img.count_all(is(*c)), 0);
    }
    // No legend column: the right margin is blank beside the plot.
    assert_eq!(img.count((SCATTER_WIDTH - 12, SCATTER_WIDTH), (0, SCATTER_HEIGHT - 22), is_dark), 0);
}

#[test]
fn scatter_many_labels_cycle_the_palette() {
    let pts: Vec<(f32, f32)> = (0..300).map(|i| ((i % 30) as f32, (i / 30) as f32)).collect();
    let labels: Vec<u8> = (0..300).map(|i| (i % 60) as u8).collect();
    let img = decode(&scatter_png(&pts, Some(&labels), "60 labels").unwrap());
    for c in &PALETTE {
        assert!(img.count_all(is(*c)) > 0);
    }
}

#[test]
fn scatter_skips_non_finite_points() {
    let pts = [(0.0, 0.0), (f32::NAN, 1.0), (1.0, f32::INFINITY), (2.0, 1.0), (1.0, 2.0)];
    let labels = [0u8, 1, 2, 3, 3];
    let img = decode(&scatter_png(&pts, Some(&labels), "nan").unwrap());
    assert!(img.count_all(is(PALETTE[0])) >= 5 && img.count_all(is(PALETTE[3])) >= 10);
    assert_eq!(img.count_all(is(PALETTE[1])) + img.count_all(is(PALETTE[2])), 0, "skipped points drawn");
    let img = decode(&scatter_png(&[(f32::NAN, 0.0)], None, "").unwrap());
    assert_eq!((img.w, img.h), (SCATTER_WIDTH, SCATTER_HEIGHT));
    // One point, or all on one spot.
    decode(&scatter_png(&[(3.0, 3.0); 4], Some(&[5, 5, 5, 5]), "same").unwrap());
}

#[test]
fn scatter_rejects_bad_input() {
    assert_invalid_argument(scatter_png(&[], None, "empty"));
    assert_invalid_argument(scatter_png(&[(0.0, 1.0), (1.0, 0.0)], Some(&[1]), "mismatch"));
}
