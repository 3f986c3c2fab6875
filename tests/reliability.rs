//! Hostile input and failing runs: no size from a file or a config allocates before it is checked,
//! corrupt or diverged state is refused with a reason, a non-finite loss is caught on the GPU and
//! rolled back, and seeded fuzzing of the IDX reader and the checkpoint loader never panics.
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::gpu;
use rand::{Rng, SeedableRng};
use wgvae::checkpoint::{self, Checkpoint};
use wgvae::data::{idx, sprites, Images};
use wgvae::train::{Control, FitOptions, OnNan, Progress, TrainOptions, Trainer, MAX_ROLLBACKS};
use wgvae::vae::{Likelihood, ModelKind, Vae, VaeConfig};
use wgvae::Error;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgvae-rel-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small() -> VaeConfig {
    VaeConfig { hidden: vec![32], latent: 3, ..VaeConfig::classic() }
}

#[test]
fn state_shapes_from_the_config_are_the_models_own() {
    let configs = [
        VaeConfig::classic(),
        VaeConfig { hidden: vec![33, 17], latent: 5, ..VaeConfig::classic() },
        VaeConfig { model: ModelKind::Ae, ..small() },
        VaeConfig { model: ModelKind::Cvae, classes: 4, ..small() },
        VaeConfig { bn_tau: Some(0.5), likelihood: Likelihood::GaussianLearned, ..small() },
        VaeConfig { hidden: vec![], ..small() },
    ];
    for c in configs {
        let vae = Vae::new(gpu(), c.clone(), 0).unwrap();
        let got: Vec<(String, Vec<usize>)> =
            checkpoint::state_dict(gpu(), &vae).unwrap().into_iter().map(|(n, s, _)| (n, s)).collect();
        let mut want = c.state_shapes().unwrap();
        want.sort();
        let mut got_sorted = got.clone();
        got_sorted.sort();
        assert_eq!(got_sorted, want, "{c:?}");
        let params: usize = vae.params().iter().map(|p| p.value().len()).sum();
        assert_eq!(c.param_count().unwrap(), params as u64, "{c:?}");
    }
}

#[test]
fn a_model_too_large_for_the_device_is_refused_before_any_weight_is_drawn() {
    let limit = gpu().max_tensor_elements();
    let huge = VaeConfig { hidden: vec![10_000_000], ..VaeConfig::classic() };
    let t0 = std::time::Instant::now();
    let err = Vae::new(gpu(), huge.clone(), 0).unwrap_err();
    assert!(t0.elapsed().as_secs_f64() < 1.0, "refused at once, not after filling weights");
    let Error::DeviceLimit { what, .. } = &err else { panic!("expected DeviceLimit, got {err}") };
    let widest: usize = what
        .split("widest hidden layer that fits is ")
        .nth(1)
        .and_then(|s| s.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("the error names the widest hidden layer that fits: {err}"));
    let with = |h: usize| VaeConfig { hidden: vec![h], ..huge.clone() }.param_count().unwrap();
    assert!(with(widest) <= limit && with(widest + 1) > limit, "{widest} is the widest that fits");
    // Sizes no device could take, and sizes whose products would overflow, are refused by the
    // config check itself.
    for bad in [
        VaeConfig { hidden: vec![usize::MAX], ..small() },
        VaeConfig { latent: 1 << 40, ..small() },
        VaeConfig { input_dim: (1 << 24) + 1, ..small() },
        VaeConfig { hidden: vec![8; 65], ..small() },
    ] {
        assert!(matches!(bad.validate(), Err(Error::InvalidArgument { .. })), "{bad:?}");
        assert!(Vae::new(gpu(), bad, 0).is_err());
    }
}

/// A checkpoint's tensors as (name, shape, values).
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;
/// An edit of a checkpoint's metadata and tensors.
type Edit = Box<dyn FnOnce(&mut HashMap<String, String>, &mut Tensors)>;
/// A way to put something other than a regular file at a path.
type Make = Box<dyn Fn(&Path)>;

/// The values of tensor `name`.
fn named<'a>(t: &'a mut Tensors, name: &str) -> &'a mut Vec<f32> {
    &mut t.iter_mut().find(|(n, _, _)| n == name).unwrap_or_else(|| panic!("no tensor {name}")).2
}

/// Rewrites a checkpoint file with `edit` applied to its metadata and tensors.
fn rewrite(src: &Path, dst: &Path, edit: Edit) {
    let bytes = std::fs::read(src).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap_or_default();
    let mut tensors: Tensors = st
        .names()
        .into_iter()
        .map(|n| {
            let t = st.tensor(n).unwrap();
            (
                n.to_string(),
                t.shape().to_vec(),
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            )
        })
        .collect();
    edit(&mut meta, &mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), bytemuck::cast_slice(d))
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(dst, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

fn refused(path: &Path, needle: &str) {
    let t0 = std::time::Instant::now();
    let r = Checkpoint::load(path).and_then(|c| c.vae(gpu()).map(|_| ()));
    match r {
        Err(e @ Error::Checkpoint { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(needle) && msg.contains(&path.display().to_string()),
                "`{msg}` should name `{needle}`"
            );
        }
        Err(e) => panic!("expected a checkpoint error naming `{needle}`, got {e}"),
        Ok(()) => panic!("a checkpoint with {needle} was accepted"),
    }
    assert!(t0.elapsed().as_secs_f64() < 2.0, "refused quickly");
}

#[test]
fn hostile_checkpoints_are_refused_before_anything_is_built() {
    let dir = tmp("ck");
    let good = dir.join("good.safetensors");
    let vae = Vae::new(gpu(), small(), 1).unwrap();
    let meta: HashMap<String, String> = [("epoch".into(), "2".into()), ("seed".into(), "5".into())].into();
    checkpoint::save(&good, gpu(), &vae, None, &meta).unwrap();
    Checkpoint::load(&good).unwrap().vae(gpu()).unwrap();

    let config = |c: VaeConfig| serde_json::to_string(&c).unwrap();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "implies",
            Box::new(move |m, _| {
                m.insert("config".into(), config(VaeConfig { hidden: vec![10_000_000], ..small() }));
            }),
        ),
        (
            "hidden",
            Box::new(|m, _| {
                let c = m["config"].replace("\"hidden\":[32]", &format!("\"hidden\":[{}]", u64::MAX));
                m.insert("config".into(), c);
            }),
        ),
        (
            "latent",
            Box::new(|m, _| {
                let c = m["config"].replace("\"latent\":3", "\"latent\":1099511627776");
                m.insert("config".into(), c);
            }),
        ),
        ("non-finite", Box::new(|_, t| named(t, "encoder.0.weight")[3] = f32::NAN)),
        ("non-finite", Box::new(|_, t| named(t, "fc_logvar.bias")[0] = f32::INFINITY)),
        (
            "metadata `seed`",
            Box::new(|m, _| {
                m.insert("seed".into(), "xyz".into());
            }),
        ),
        (
            "metadata `epoch`",
            Box::new(|m, _| {
                m.insert("epoch".into(), "abc".into());
            }),
        ),
        (
            "missing",
            Box::new(|_, t| {
                t.retain(|(n, _, _)| n != "fc_logvar.bias");
            }),
        ),
        (
            "implies",
            Box::new(|_, t| {
                let (_, s, d) = t.iter_mut().find(|(n, _, _)| n == "decoder.0.weight").unwrap();
                *s = vec![s[1], s[0]];
                let _ = d;
            }),
        ),
    ];
    for (i, (needle, edit)) in cases.into_iter().enumerate() {
        let p = dir.join(format!("bad-{i}.safetensors"));
        rewrite(&good, &p, edit);
        refused(&p, needle);
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut f: Vec<u8> = [idx::IMAGES_MAGIC, n, rows, cols].iter().flat_map(|v| v.to_be_bytes()).collect();
    f.extend_from_slice(pixels);
    f
}

#[test]
fn an_image_file_larger_than_the_limit_is_refused_before_it_is_read_naming_it() {
    let dir = tmp("idx-limit");
    // An honest header describing 2 GB of pixels, compressed to a few MB: refused from the
    // header, before a byte of pixels is decompressed.
    let p = dir.join("train-images-idx3-ubyte.gz");
    let mut e = flate2::write::GzEncoder::new(std::fs::File::create(&p).unwrap(), flate2::Compression::fast());
    e.write_all(&idx_images(2_560_000, 28, 28, &[])).unwrap();
    e.write_all(&vec![0u8; 1 << 20]).unwrap(); // the start of the promised pixels
    e.finish().unwrap();
    let t0 = std::time::Instant::now();
    let err = idx::read_images_within(&p, gpu().max_tensor_elements() * 4).unwrap_err();
    assert!(t0.elapsed().as_secs_f64() < 1.0);
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Data { .. }) && msg.contains(&p.display().to_string()) && msg.contains("more than"),
        "{msg}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Seeded fuzzing of the IDX reader: truncations, flipped bytes, lying headers, gzip or not.
/// Every outcome is a dataset or a typed error naming the file; never a panic.
#[test]
fn fuzzed_idx_files_give_data_or_typed_errors() {
    let dir = tmp("idx-fuzz");
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pixels: Vec<u8> = (0..5 * 6 * 7).map(|i| (i * 13) as u8).collect();
    let valid = idx_images(5, 6, 7, &pixels);
    for case in 0..400 {
        let mut f = valid.clone();
        match case % 4 {
            0 => f.truncate(rng.random_range(0..f.len())),
            1 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..16);
                    f[i] = rng.random();
                }
            }
            2 => {
                let i = rng.random_range(4..16) / 4 * 4;
                f[i..i + 4].copy_from_slice(&rng.random::<u32>().to_be_bytes());
            }
            _ => f.extend((0..rng.random_range(1..50)).map(|_| rng.random::<u8>())),
        }
        let gzipped = rng.random_bool(0.5);
        let p = dir.join(if gzipped { format!("f{case}.gz") } else { format!("f{case}") });
        std::fs::write(&p, if gzipped { gz(&f) } else { f.clone() }).unwrap();
        match idx::read_images(&p) {
            Ok((n, r, c, px)) => assert_eq!(px.len(), n * r * c),
            Err(Error::Data { path, .. }) | Err(Error::Io { path, .. }) => assert_eq!(path, p),
            Err(e) => panic!("case {case}: untyped error {e}"),
        }
        let _ = std::fs::remove_file(&p);
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn non_regular_files_in_place_of_idx_files_are_named_for_what_they_are() {
    let dir = tmp("idx-kinds");
    let name = "train-images-idx3-ubyte";
    let write_test = |d: &Path| std::fs::write(d.join("t10k-images-idx3-ubyte"), idx_images(1, 2, 2, &[0; 4])).unwrap();
    let cases: Vec<(&str, Make)> = vec![
        (
            "named pipe",
            Box::new(|p| {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                assert_eq!(unsafe { libc_mkfifo(c.as_ptr(), 0o600) }, 0);
            }),
        ),
        ("directory", Box::new(|p| std::fs::create_dir(p).unwrap())),
        ("does not exist", Box::new(|p| std::os::unix::fs::symlink("/nonexistent/x", p).unwrap())),
        (
            "symbolic links",
            Box::new(|p| {
                let q = p.with_extension("loop");
                std::os::unix::fs::symlink(&q, p).unwrap();
                std::os::unix::fs::symlink(p, &q).unwrap();
            }),
        ),
    ];
    for (i, (needle, make)) in cases.into_iter().enumerate() {
        let d = dir.join(format!("case{i}"));
        std::fs::create_dir_all(&d).unwrap();
        write_test(&d);
        make(&d.join(name));
        let err = idx::load_dir(&d).unwrap_err().to_string();
        assert!(err.contains(needle) && err.contains(name) && !err.contains("missing"), "{needle}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
extern "C" {
    #[link_name = "mkfifo"]
    fn libc_mkfifo(path: *const std::os::raw::c_char, mode: u32) -> i32;
}

#[test]
fn a_stray_label_does_not_make_a_conditional_vae_of_empty_classes() {
    let imgs =
        |n: usize, labels: Vec<u32>| Images::from_u8(vec![9; n * 4], n, &[2, 2]).unwrap().with_labels(labels).unwrap();
    let mut labels: Vec<u32> = (0..40).map(|i| i % 10).collect();
    labels[7] = 255;
    let split = wgvae::data::Split { name: "labels".into(), train: imgs(40, labels.clone()), test: imgs(40, labels) };
    let config = VaeConfig { model: ModelKind::Cvae, classes: 256, input_dim: 4, hidden: vec![8], ..small() };
    let err = Trainer::new(gpu(), config, TrainOptions { batch: 8, ..Default::default() }, &split).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("255") && msg.contains("no training example"), "{msg}");
}

fn gaussian_split() -> wgvae::data::Split {
    sprites::sprites(0)
}

#[test]
fn a_non_finite_loss_is_caught_on_the_gpu_named_and_rolled_back() {
    let split = gaussian_split();
    let config = VaeConfig { likelihood: Likelihood::Gaussian { variance: 1e-38 }, ..small() };
    let opts = TrainOptions { batch: 256, ..Default::default() };

    // Stop: the error names the step and the term, and blames the variance, not the lr; with
    // the fused objective and with the unfused one (free bits).
    let mut free_bits = opts.clone();
    free_bits.objective.free_bits = 0.1;
    for o in [opts.clone(), free_bits] {
        let mut t = Trainer::new(gpu(), config.clone(), o, &split).unwrap();
        let fit = FitOptions { epochs: 1, on_nan: OnNan::Stop, ..Default::default() };
        match t.fit(&fit, &mut |_| {}, &mut |_| Control::Continue) {
            Err(Error::Diverged { step, term, advice }) => {
                assert_eq!(step, 1);
                assert!(term.contains("reconstruction"), "{term}");
                assert!(advice.contains("variance"), "{advice}");
            }
            other => panic!("expected Diverged, got {:?}", other.map(|m| m.len())),
        }
    }

    // Rollback: back to the start of the epoch (step 1 again each time), the lr halved, then
    // give up after MAX_ROLLBACKS; the run directory gets a line per rollback and no checkpoint.
    let dir = tmp("rollback");
    let mut t = Trainer::new(gpu(), config, opts, &split).unwrap();
    let fit = FitOptions { epochs: 1, run_dir: Some(dir.clone()), ..Default::default() };
    let mut notes = Vec::new();
    let r = t.fit(&fit, &mut |p: &Progress| notes.extend(p.warning.clone()), &mut |_| Control::Continue);
    let Err(Error::Diverged { step, advice, .. }) = r else { panic!("expected Diverged after the rollbacks") };
    assert_eq!(step, 1);
    assert!(advice.contains("gave up after 3 rollbacks"), "{advice}");
    assert_eq!(notes.len(), MAX_ROLLBACKS as usize, "{notes:?}");
    for (i, n) in notes.iter().enumerate() {
        assert!(n.contains("at step 1:"), "rollback {i} restarted from the epoch's start: {n}");
    }
    assert!((t.opt.lr - 1e-3 / 8.0).abs() < 1e-9);
    assert!(!dir.join("checkpoint.safetensors").exists(), "a diverged state is never checkpointed");
    let lines = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().filter(|l| l.contains("\"rollback\"")).count(), 3, "{lines}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn an_exploding_loss_is_reported_before_it_turns_into_nan() {
    let split = sprites::sprites(0);
    let mut t =
        Trainer::new(gpu(), small(), TrainOptions { batch: 256, lr: 1.0, ..Default::default() }, &split).unwrap();
    let mut warnings = Vec::new();
    t.train_epoch(&mut |p| warnings.extend(p.warning.clone())).unwrap();
    assert_eq!(warnings.len(), 1, "one warning, once: {warnings:?}");
    assert!(warnings[0].contains("exploding") && warnings[0].contains("learning rate"), "{}", warnings[0]);
    let mut calm = Trainer::new(gpu(), small(), TrainOptions { batch: 256, ..Default::default() }, &split).unwrap();
    calm.train_epoch(&mut |p| assert!(p.warning.is_none(), "{:?}", p.warning)).unwrap();
}

/// A mid-epoch checkpoint, resumed, finishes the epoch exactly as the uninterrupted run did;
/// also with several steps per submission (the checkpoint must see every step before it).
#[test]
fn a_mid_epoch_checkpoint_resumes_to_the_uninterrupted_epoch() {
    for k in [1, 3] {
        mid_epoch_resume(k);
    }
}

fn mid_epoch_resume(steps_per_submit: usize) {
    let split = sprites::sprites(0);
    let opts = TrainOptions { batch: 128, log_every: 10, steps_per_submit, ..Default::default() };
    let (dir, copy) = (tmp("mid"), tmp("mid-copy").join("partial.safetensors"));
    let mut t = Trainer::new(gpu(), small(), opts.clone(), &split).unwrap();
    let fit = FitOptions { epochs: 1, run_dir: Some(dir.clone()), checkpoint_every: Some(6), ..Default::default() };
    let ck = dir.join("checkpoint.safetensors");
    let mut copied = false;
    // At the report after batch 20 the file holds the checkpoint after batch 18 (6, 12, 18).
    let want = t
        .fit(
            &fit,
            &mut |p| {
                if p.batch == 20 && !copied {
                    std::fs::copy(&ck, &copy).unwrap();
                    copied = true;
                }
            },
            &mut |_| Control::Continue,
        )
        .unwrap();
    assert!(copied);
    let partial = Checkpoint::load(&copy).unwrap();
    assert_eq!(partial.meta.get("epoch").map(String::as_str), Some("0"));
    assert!(partial.meta["partial_epoch"].contains("\"batch\":18"), "{:?}", partial.meta.get("partial_epoch"));
    let mut r = Trainer::resume(gpu(), &partial, &split).unwrap();
    assert_eq!(r.step, 18);
    let got = r.fit(&FitOptions { epochs: 1, ..Default::default() }, &mut |_| {}, &mut |_| Control::Continue).unwrap();
    let strip = |m: &wgvae::train::EpochMetrics| {
        let mut m = m.clone();
        (m.epoch_seconds, m.examples_per_second) = (0.0, 0.0);
        m
    };
    assert_eq!(
        strip(&got[0]),
        strip(&want[0]),
        "the resumed epoch equals the uninterrupted one ({steps_per_submit} steps per submission)"
    );
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(copy.parent().unwrap()).ok();
}

/// Seeded fuzzing of the checkpoint loader: random bytes flipped in the header (the JSON that
/// sizes everything) and in the data, and random truncations. Every outcome is a model or a
/// typed error naming the file; never a panic or a huge allocation.
#[test]
fn fuzzed_checkpoints_give_models_or_typed_errors() {
    let dir = tmp("ck-fuzz");
    let good = dir.join("good.safetensors");
    checkpoint::save(&good, gpu(), &Vae::new(gpu(), small(), 1).unwrap(), None, &HashMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let p = dir.join("fuzzed.safetensors");
    for case in 0..300 {
        let mut b = bytes.clone();
        match case % 3 {
            0 => {
                for _ in 0..rng.random_range(1..6) {
                    let i = rng.random_range(0..header_end);
                    b[i] = rng.random();
                }
            }
            1 => {
                // Digits in the header rewritten: sizes, shapes and offsets that lie.
                let digits: Vec<usize> = (8..header_end).filter(|&i| b[i].is_ascii_digit()).collect();
                for _ in 0..rng.random_range(1..4) {
                    let i = digits[rng.random_range(0..digits.len())];
                    b[i] = b"0123456789"[rng.random_range(0..10)];
                }
            }
            _ => b.truncate(rng.random_range(0..b.len())),
        }
        std::fs::write(&p, &b).unwrap();
        match Checkpoint::load(&p).and_then(|c| c.vae(gpu())) {
            Ok(v) => assert_eq!(v.config.latent, small().latent),
            Err(Error::Checkpoint { path, .. }) | Err(Error::Io { path, .. }) => assert_eq!(path, p),
            Err(e) => panic!("case {case}: untyped error {e}"),
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
