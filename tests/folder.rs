//! Image folders as datasets (`data::folder`, `--data DIR --image-size S`): class subfolders and
//! labels, grey and colour PNGs (alpha dropped, 16-bit cut to 8), JPEGs (committed
//! fixtures made by Pillow, compared with the function that drew them), resizing and centre
//! cropping against hand-computed values, the train/ + test/ layout, and the errors: mixed sizes,
//! unreadable files, empty folders, too much data. Then a run end to end through `RunSpec`.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use wgvae::data::folder::{decode_file, load_folder, resize_crop, Decoded};
use wgvae::data::Pixels;
use wgvae::Error;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgvae-folder-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes a PNG of `w` x `h` pixels with interleaved `samples` of colour type `ct`, depth `bd`.
fn png(path: &Path, w: u32, h: u32, ct: png::ColorType, bd: png::BitDepth, samples: &[u8]) {
    let f = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(f), w, h);
    enc.set_color(ct);
    enc.set_depth(bd);
    enc.write_header().unwrap().write_image_data(samples).unwrap();
}

/// An RGB PNG whose pixel (x, y) is `f(x, y)`.
fn rgb_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    let s: Vec<u8> = (0..h).flat_map(|y| (0..w).map(move |x| (x, y))).flat_map(|(x, y)| f(x, y)).collect();
    png(path, w, h, png::ColorType::Rgb, png::BitDepth::Eight, &s);
}

fn u8s(p: &Pixels) -> &[u8] {
    match p {
        Pixels::U8(v) => v,
        Pixels::F32(_) => panic!("u8 expected"),
    }
}

#[test]
fn class_folders_become_labels_and_colour_planes() {
    let d = tmp("classes");
    std::fs::create_dir_all(d.join("b_dogs")).unwrap();
    std::fs::create_dir_all(d.join("a_cats")).unwrap();
    for i in 0..10u32 {
        rgb_png(&d.join("a_cats").join(format!("{i}.png")), 5, 4, |x, y| [(10 * x + i) as u8, (20 * y) as u8, 7]);
        // Grey images among colour ones are repeated over the three channels.
        let grey: Vec<u8> = (0..20).map(|k| (k * 3 + i) as u8).collect();
        png(&d.join("b_dogs").join(format!("{i}.png")), 5, 4, png::ColorType::Grayscale, png::BitDepth::Eight, &grey);
    }
    std::fs::write(d.join("a_cats").join("notes.txt"), "not an image").unwrap();
    let s = load_folder(&d, None, 0, u64::MAX).unwrap();
    assert_eq!((s.train.n(), s.test.n()), (18, 2), "a seeded tenth held out");
    assert_eq!(s.train.shape(), &[3, 4, 5]);
    assert_eq!(s.train.num_classes(), 2);
    for im in [&s.train, &s.test] {
        let px = u8s(im.pixels());
        for (i, &label) in im.labels().unwrap().iter().enumerate() {
            let img = &px[i * 60..(i + 1) * 60];
            if label == 0 {
                // RGB planes: R = 10x + i at (x, y), G = 20y, B = 7.
                let i0 = img[0] as u32;
                for y in 0..4 {
                    for x in 0..5 {
                        assert_eq!(img[y * 5 + x] as u32, 10 * x as u32 + i0, "R");
                        assert_eq!(img[20 + y * 5 + x] as usize, 20 * y, "G");
                        assert_eq!(img[40 + y * 5 + x], 7, "B");
                    }
                }
            } else {
                assert_eq!(&img[0..20], &img[20..40], "grey repeated into G");
                assert_eq!(&img[0..20], &img[40..60], "grey repeated into B");
                assert_eq!(img[1] - img[0], 3);
            }
        }
    }
    // Same seed, same split.
    assert_eq!(load_folder(&d, None, 0, u64::MAX).unwrap().test, s.test);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn grey_alpha_rgba_and_16_bit_pngs() {
    let d = tmp("kinds");
    let grey: Vec<u8> = (0..12).map(|k| k * 20).collect();
    png(&d.join("a.png"), 4, 3, png::ColorType::Grayscale, png::BitDepth::Eight, &grey);
    // 16-bit grey: the high byte is kept.
    let g16: Vec<u8> = (0..12u8).flat_map(|k| [k * 20, 0xAB]).collect();
    png(&d.join("b.png"), 4, 3, png::ColorType::Grayscale, png::BitDepth::Sixteen, &g16);
    // Grey + alpha: alpha dropped.
    let ga: Vec<u8> = (0..12u8).flat_map(|k| [k * 20, 9]).collect();
    png(&d.join("c.png"), 4, 3, png::ColorType::GrayscaleAlpha, png::BitDepth::Eight, &ga);
    let s = load_folder(&d, None, 0, u64::MAX).unwrap();
    assert_eq!(s.train.shape(), &[3, 4], "all grey: one channel, [h, w]");
    let all: Vec<u8> = [u8s(s.train.pixels()), u8s(s.test.pixels())].concat();
    for img in all.chunks(12) {
        assert_eq!(img, grey.as_slice());
    }
    assert!(s.train.labels().is_none(), "files directly in the folder have no labels");

    let rgba: Vec<u8> = (0..6u8).flat_map(|k| [k, 100 + k, 200 + k, 50]).collect();
    png(&d.join("d.png"), 3, 2, png::ColorType::Rgba, png::BitDepth::Eight, &rgba);
    let dec = decode_file(&d.join("d.png")).unwrap();
    assert_eq!((dec.channels, dec.height, dec.width), (3, 2, 3));
    assert_eq!(dec.pixels, [0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105, 200, 201, 202, 203, 204, 205]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn jpegs_decode_to_what_was_drawn() {
    let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    // Drawn by Pillow (quality 95): RGB (10x, 15y, 200 − 5x) and grey 8x + 4y, 24 x 16.
    let rgb = decode_file(&fx.join("gradient_rgb.jpg")).unwrap();
    assert_eq!((rgb.channels, rgb.height, rgb.width), (3, 16, 24));
    let grey = decode_file(&fx.join("gradient_grey.jpg")).unwrap();
    assert_eq!((grey.channels, grey.height, grey.width), (1, 16, 24));
    let (mut worst, mut sum, mut n) = (0i32, 0i64, 0i64);
    let mut check = |got: u8, want: i32| {
        let e = (got as i32 - want).abs();
        worst = worst.max(e);
        sum += e as i64;
        n += 1;
    };
    for y in 0..16 {
        for x in 0..24 {
            let i = y * 24 + x;
            check(rgb.pixels[i], 10 * x as i32);
            check(rgb.pixels[384 + i], 15 * y as i32);
            check(rgb.pixels[768 + i], 200 - 5 * x as i32);
            check(grey.pixels[i], (8 * x + 4 * y) as i32);
        }
    }
    assert!(worst <= 12 && (sum as f64 / n as f64) < 2.5, "JPEG error: worst {worst}, mean {}", sum as f64 / n as f64);
}

#[test]
fn resize_and_centre_crop() {
    // 40 x 20, value 6x in column x: the shorter side 20 -> 10 halves both, so output column o
    // averages columns 2o and 2o + 1 (12o + 3); the 20-wide result is cropped from column 5.
    let img = Decoded {
        channels: 1,
        height: 20,
        width: 40,
        pixels: (0..20).flat_map(|_| (0..40).map(|x| (6 * x) as u8)).collect(),
    };
    let r = resize_crop(&img, 10);
    assert_eq!((r.height, r.width), (10, 10));
    for y in 0..10 {
        for x in 0..10 {
            assert_eq!(r.pixels[y * 10 + x] as usize, 12 * (x + 5) + 3, "({y}, {x})");
        }
    }
    // Tall images crop rows; growing keeps a constant image constant.
    let tall = Decoded { channels: 3, height: 9, width: 3, pixels: vec![77; 81] };
    let r = resize_crop(&tall, 7);
    assert_eq!((r.channels, r.height, r.width), (3, 7, 7));
    assert!(r.pixels.iter().all(|&v| v == 77));
    // Non-integer shrink: 7 -> 3 keeps a row's mean (areas weigh fractional pixels).
    let ramp = Decoded { channels: 1, height: 7, width: 7, pixels: (0..49).map(|k| ((k % 7) * 30) as u8).collect() };
    let r = resize_crop(&ramp, 3);
    let mean: f64 = r.pixels[..3].iter().map(|&v| v as f64).sum::<f64>() / 3.0;
    assert!((mean - 90.0).abs() <= 1.0, "row mean {mean}");
    assert!(r.pixels[0] < r.pixels[1] && r.pixels[1] < r.pixels[2]);
}

#[test]
fn train_and_test_subfolders_are_kept() {
    let d = tmp("split");
    for part in ["train", "test"] {
        for class in ["x", "y"] {
            std::fs::create_dir_all(d.join(part).join(class)).unwrap();
            for i in 0..3 {
                rgb_png(&d.join(part).join(class).join(format!("{i}.png")), 6, 6, |_, _| [i, 2, 3]);
            }
        }
    }
    let s = load_folder(&d, Some(4), 0, u64::MAX).unwrap();
    assert_eq!((s.train.n(), s.test.n(), s.train.shape()), (6, 6, &[3usize, 4, 4][..]));
    assert_eq!(s.test.labels().unwrap(), &[0, 0, 0, 1, 1, 1]);
    // Different classes on the two sides are refused.
    std::fs::create_dir_all(d.join("test").join("z")).unwrap();
    rgb_png(&d.join("test").join("z").join("0.png"), 6, 6, |_, _| [0, 0, 0]);
    let e = load_folder(&d, Some(4), 0, u64::MAX).unwrap_err();
    assert!(e.to_string().contains("classes"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn bad_folders_are_errors_naming_the_file() {
    let d = tmp("bad");
    rgb_png(&d.join("a.png"), 5, 4, |_, _| [1, 2, 3]);
    rgb_png(&d.join("b.png"), 6, 4, |_, _| [1, 2, 3]);
    let e = load_folder(&d, None, 0, u64::MAX).unwrap_err();
    assert!(matches!(e, Error::Data { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("b.png") && msg.contains("--image-size") && msg.contains("5x4"), "{msg}");
    // With a size they load.
    assert_eq!(load_folder(&d, Some(3), 0, u64::MAX).unwrap().train.shape(), &[3, 3, 3]);
    // Too much data for one device buffer.
    let e = load_folder(&d, Some(3), 0, 20).unwrap_err();
    assert!(e.to_string().contains("bytes"), "{e}");
    std::fs::write(d.join("c.png"), b"not a png at all").unwrap();
    let e = load_folder(&d, Some(3), 0, u64::MAX).unwrap_err();
    assert!(e.to_string().contains("c.png") && e.to_string().contains("PNG"), "{e}");
    std::fs::write(d.join("c.png"), b"").unwrap();
    std::fs::rename(d.join("c.png"), d.join("c.jpg")).unwrap();
    let e = load_folder(&d, Some(3), 0, u64::MAX).unwrap_err();
    assert!(e.to_string().contains("c.jpg") && e.to_string().contains("JPEG"), "{e}");
    let empty = tmp("empty");
    let e = load_folder(&empty, None, 0, u64::MAX).unwrap_err();
    assert!(e.to_string().contains("no PNG or JPEG"), "{e}");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&empty);
}

/// `--data FOLDER --image-size 16 --channels 8`: a conv VAE trains on it, and the checkpoint
/// finds the same data (resized the same way) again.
#[test]
fn a_run_trains_on_an_image_folder_and_its_checkpoint_finds_it_again() {
    use wgvae::run::RunSpec;
    let d = tmp("run");
    for class in ["red", "blue"] {
        std::fs::create_dir_all(d.join(class)).unwrap();
        for i in 0..12u32 {
            rgb_png(&d.join(class).join(format!("{i}.png")), 24, 20, |x, y| {
                let v = ((x * 7 + y * 5 + i * 11) % 200) as u8;
                if class == "red" {
                    [v + 50, 10, 10]
                } else {
                    [10, 10, v + 50]
                }
            });
        }
    }
    let out = tmp("run-out");
    let spec = RunSpec {
        data: Some(d.clone()),
        image_size: Some(16),
        channels: Some(vec![8]),
        epochs: Some(2),
        batch: Some(8),
        out: Some(out.clone()),
        ..Default::default()
    };
    let mut run = spec.prepare(|| Ok(gpu().clone())).unwrap();
    assert_eq!(run.split.train.shape(), &[3, 16, 16]);
    assert_eq!(run.split.train.num_classes(), 2);
    let before = run.trainer.evaluate(&run.trainer.test).unwrap().loss;
    run.trainer.fit(&run.fit.clone(), &mut |_| {}, &mut |_| wgvae::train::Control::Continue).unwrap();
    let after = run.trainer.evaluate(&run.trainer.test).unwrap().loss;
    assert!(after < before, "test loss {before} -> {after}");
    let ck = wgvae::checkpoint::Checkpoint::load(out.join("checkpoint.safetensors")).unwrap();
    assert_eq!(ck.meta.get("image_size").map(String::as_str), Some("16"));
    let again = ck.data(None).unwrap();
    assert_eq!(again.test, run.split.test, "the checkpoint's data, resized the same way");
    let _ = std::fs::remove_dir_all(&d);
    let _ = std::fs::remove_dir_all(&out);
}
