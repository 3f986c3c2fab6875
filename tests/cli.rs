//! The `wgvae` binary as a user runs it: a short train, eval, sample, reconstruct, resume; same
//! seed, same metrics; and bad input refused with a message naming the flag or file, a non-zero
//! exit, no panic, and nothing written before lost.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary, with a plan cache of its own (empty unless a test fills it), so that a plan the
/// developer measured with `wgvae tune` does not change what the tests run.
fn wgvae_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wgvae"));
    c.env("WGVAE_CACHE_DIR", cache_dir());
    c
}

fn cache_dir() -> PathBuf {
    std::env::temp_dir().join(format!("wgvae-cli-cache-{}", std::process::id()))
}

fn wgvae(args: &[&str]) -> Output {
    wgvae_cmd().args(args).output().expect("run wgvae")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("wgvae-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn ok(o: &Output) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "wgvae failed\nstdout:\n{out}\nstderr:\n{err}");
    out.into_owned()
}

/// Asserts failure with a message containing every `needle`, and no panic.
fn fails(o: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure, got success; stderr: {err}");
    assert!(!err.contains("panicked"), "panic instead of an error: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr should mention `{n}`: {err}");
    }
}

/// The classic one-hidden-layer network of a checkpoint, evaluated in f64 on the CPU.
struct Net {
    t: std::collections::HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Net {
    fn new(bytes: &[u8]) -> Self {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let t = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                let d = v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64).collect();
                (name, (v.shape().to_vec(), d))
            })
            .collect();
        Net { t }
    }
    /// act(W·x + b) for the layer `name` (weight [out, in]).
    fn layer(&self, name: &str, x: &[f64], relu: bool) -> Vec<f64> {
        let (shape, w) = &self.t[&format!("{name}.weight")];
        let b = &self.t[&format!("{name}.bias")].1;
        (0..shape[0])
            .map(|o| {
                let v = b[o] + (0..shape[1]).map(|i| w[o * shape[1] + i] * x[i]).sum::<f64>();
                if relu {
                    v.max(0.0)
                } else {
                    v
                }
            })
            .collect()
    }
    fn decode(&self, z: &[f64]) -> Vec<f64> {
        let h = self.layer("decoder.0", z, true);
        self.layer("decoder.1", &h, false).iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect()
    }
    fn encode_mean(&self, x: &[f64]) -> Vec<f64> {
        self.layer("fc_mu", &self.layer("encoder.0", x, true), false)
    }
}

/// Decodes a grey PNG grid (28x28 tiles, 2-pixel border, `cols` columns, as `wgvae` writes them)
/// and checks each tile against `want` (values in [0, 1]) within one grey level (plus rounding).
fn assert_tiles(png_path: &Path, want: &[Vec<f64>], cols: usize, what: &str) {
    let bytes = std::fs::read(png_path).unwrap();
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes)).read_info().unwrap();
    let mut px = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut px).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale, "{what}");
    let (gw, side, pad) = (info.width as usize, 28, 2);
    let mut worst = 0.0f64;
    for (i, tile) in want.iter().enumerate() {
        let (r, c) = (i / cols, i % cols);
        for y in 0..side {
            for x in 0..side {
                let got = px[(pad + r * (side + pad) + y) * gw + pad + c * (side + pad) + x] as f64;
                worst = worst.max((got - tile[y * side + x] * 255.0).abs());
            }
        }
    }
    assert!(worst <= 1.0, "{what}: a pixel differs from the CPU decode by {worst} grey levels");
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in [
                "epoch",
                "train_loss",
                "test_loss",
                "recon",
                "kl",
                "kl_weight",
                "active_units",
                "epoch_seconds",
                "examples_per_second",
            ] {
                assert!(o.contains_key(k), "metrics line lacks `{k}`: {l}");
            }
            o.remove("epoch_seconds");
            o.remove("examples_per_second");
            v
        })
        .collect()
}

const SMALL: [&str; 6] = ["--hidden", "64", "--latent", "4", "--batch", "256"];

fn train(dir: &Path, extra: &[&str]) -> String {
    let mut args = vec!["train", "--out", dir.to_str().unwrap()];
    args.extend(SMALL);
    args.extend(extra);
    ok(&wgvae(&args))
}

#[test]
fn train_eval_sample_reconstruct() {
    let d = tmp("main");
    let out = train(&d, &["--epochs", "2"]);
    assert!(out.contains(d.to_str().unwrap()), "the run directory is printed: {out}");
    for f in ["metrics.jsonl", "checkpoint.safetensors", "samples.png", "reconstructions.png"] {
        assert!(d.join(f).exists(), "{f} was written");
    }
    let m = metrics(&d);
    assert_eq!(m.len(), 2);
    assert!(m[1]["test_loss"].as_f64().unwrap() < m[0]["test_loss"].as_f64().unwrap());

    let ck = d.join("checkpoint.safetensors");
    let e: serde_json::Value =
        serde_json::from_str(&ok(&wgvae(&["eval", "--checkpoint", ck.to_str().unwrap()]))).unwrap();
    let tl = e["test_loss"].as_f64().unwrap();
    assert!((tl - m[1]["test_loss"].as_f64().unwrap()).abs() < 1e-3 * tl, "eval reproduces the last test loss: {e}");
    assert!((e["recon"].as_f64().unwrap() + e["kl"].as_f64().unwrap() - tl).abs() < 1e-6 * tl);
    assert_eq!(e["kl_weight"].as_f64(), Some(1.0), "the KL weight at the checkpoint's step: {e}");

    let s = d.join("s.png");
    ok(&wgvae(&["sample", "--checkpoint", ck.to_str().unwrap(), "--n", "16", "--out", s.to_str().unwrap()]));
    let r = d.join("r.png");
    ok(&wgvae(&["reconstruct", "--checkpoint", ck.to_str().unwrap(), "--out", r.to_str().unwrap()]));
    for f in [&s, &r] {
        assert_eq!(&std::fs::read(f).unwrap()[..8], b"\x89PNG\r\n\x1a\n", "{} is a PNG", f.display());
    }
    // The pictures hold what the checkpoint decodes to, recomputed here on the CPU in f64.
    let weights = std::fs::read(d.join("checkpoint.safetensors")).unwrap();
    let net = Net::new(&weights);
    let z = wgvae::rng::normals(16 * 4, 0, 0, 7);
    let want: Vec<Vec<f64>> = z.chunks(4).map(|zi| net.decode(zi)).collect();
    assert_tiles(&s, &want, 4, "sample: prior draws (seed 0, step 0, stream 7) decoded");
    let test = wgvae::data::sprites::sprites(0).test;
    let inputs: Vec<Vec<f64>> = (0..8).map(|i| test.example(i).iter().map(|&p| p as f64).collect()).collect();
    let mut want: Vec<Vec<f64>> = inputs.iter().map(|x| x.iter().map(|v| (*v as f32) as f64).collect()).collect();
    want.extend(inputs.iter().map(|x| net.decode(&net.encode_mean(x))));
    assert_tiles(&r, &want, 8, "reconstruct: test images above decode(posterior mean)");

    // The checkpoint is a PyTorch-style state dict.
    let bytes = std::fs::read(&ck).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("encoder.0.weight").unwrap().shape(), &[64, 784]);
    assert_eq!(st.tensor("encoder.0.bias").unwrap().shape(), &[64]);
    assert_eq!(st.tensor("fc_mu.weight").unwrap().shape(), &[4, 64]);
    assert_eq!(st.tensor("decoder.1.weight").unwrap().shape(), &[784, 64]);
    assert!(st.tensor("optimizer.exp_avg.decoder.1.bias").is_ok());

    // Resume to epoch 3 in place, and a bad resume leaves the checkpoint untouched.
    let before = std::fs::read(&ck).unwrap();
    fails(
        &wgvae(&["train", "--resume", ck.to_str().unwrap(), "--latent", "7", "--epochs", "3"]),
        &["--latent", "checkpoint"],
    );
    assert_eq!(std::fs::read(&ck).unwrap(), before, "a refused resume does not touch the checkpoint");
    ok(&wgvae(&["train", "--resume", ck.to_str().unwrap(), "--epochs", "3"]));
    assert_eq!(metrics(&d).len(), 3);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn same_seed_same_metrics() {
    let (a, b) = (tmp("seed-a"), tmp("seed-b"));
    train(&a, &["--epochs", "1", "--seed", "7"]);
    train(&b, &["--epochs", "1", "--seed", "7"]);
    assert_eq!(metrics(&a), metrics(&b));
    std::fs::remove_dir_all(&a).ok();
    std::fs::remove_dir_all(&b).ok();
}

/// A run directory's files never disagree: resume continues with the checkpoint's own options
/// (non-default lr, batch and seed) and equals the uninterrupted run; a contradicting flag is
/// refused unless `--override`, which is recorded; a fresh run will not write over another; a kill
/// between the checkpoint and its metrics line, or after a metrics line whose checkpoint never
/// landed, is repaired on resume; a killed writer's temporary file is removed.
#[test]
fn run_directory_stays_consistent() {
    let (a, b) = (tmp("run-a"), tmp("run-b"));
    let flags = ["--lr", "0.003", "--seed", "5"]; // and SMALL's --batch 256
    train(&a, &[&flags[..], &["--epochs", "3"]].concat());
    let want = metrics(&a);
    train(&b, &[&flags[..], &["--epochs", "1"]].concat());
    let ck = b.join("checkpoint.safetensors");
    let c = ck.to_str().unwrap();

    // A contradicting option is refused and changes nothing; so is a fresh run into the directory.
    let (ck_before, m_before) = (std::fs::read(&ck).unwrap(), std::fs::read(b.join("metrics.jsonl")).unwrap());
    fails(&wgvae(&["train", "--resume", c, "--lr", "0.01", "--epochs", "2"]), &["lr", "--override"]);
    fails(
        &wgvae(&["train", "--out", b.to_str().unwrap(), "--epochs", "1"]),
        &["already holds a run", "resume it from"],
    );
    assert_eq!(std::fs::read(&ck).unwrap(), ck_before);
    assert_eq!(std::fs::read(b.join("metrics.jsonl")).unwrap(), m_before);

    // Epoch 2 as a run killed after the checkpoint but before its metrics line, plus a stale
    // temporary file of a dead writer and a line of an epoch whose checkpoint never landed.
    ok(&wgvae(&["train", "--resume", c, "--epochs", "2"]));
    let lines: Vec<String> =
        std::fs::read_to_string(b.join("metrics.jsonl")).unwrap().lines().map(String::from).collect();
    assert_eq!(lines.len(), 2);
    std::fs::write(b.join("metrics.jsonl"), format!("{}\n", lines[0])).unwrap();
    let stale = b.join(".checkpoint.safetensors.tmp-4000000");
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    ok(&wgvae(&["train", "--resume", c, "--epochs", "3"]));
    assert!(!stale.exists(), "the dead writer's temporary file is removed on resume");
    assert_eq!(metrics(&b), want, "resumed twice with the saved lr, batch and seed = the uninterrupted run");

    let mut text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    text += &lines[1].replace("\"epoch\":2", "\"epoch\":4");
    std::fs::write(b.join("metrics.jsonl"), text + "\n").unwrap();
    let o = ok(&wgvae(&["train", "--resume", c, "--epochs", "4", "--lr", "0.001", "--override"]));
    assert!(o.contains("override"), "the override is reported: {o}");
    let text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap();
    let epochs: Vec<u64> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, [1, 2, 3, 3, 4], "the orphan epoch-4 line is dropped, the override logged at epoch 3");
    assert!(text.lines().nth(3).unwrap().contains("lr"), "the override line names the option: {text}");
    for d in [a, b] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// SIGKILL at random moments (inside checkpoint writes too), then resume, until the run is done:
/// every checkpoint left behind loads, and the finished run's metrics equal the uninterrupted
/// run's. `WGVAE_KILLS` sets the number of kills (default 8; the long form is 20).
#[cfg(unix)]
#[test]
fn killed_runs_resume_to_the_uninterrupted_result() {
    use rand::{Rng, SeedableRng};
    let kills: usize = std::env::var("WGVAE_KILLS").ok().and_then(|k| k.parse().ok()).unwrap_or(8);
    let (a, b) = (tmp("kill-a"), tmp("kill-b"));
    // Enough epochs that every kill lands while training (each restart makes some progress).
    let epochs = (2 + kills).to_string();
    let every = ["--epochs", epochs.as_str(), "--checkpoint-every", "5"];
    train(&a, &every);
    let want = metrics(&a);
    let ck = b.join("checkpoint.safetensors");
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut killed = 0;
    for _ in 0..kills + 50 {
        let mut args: Vec<&str> = if ck.exists() {
            vec!["train", "--resume", ck.to_str().unwrap()]
        } else {
            let mut v = vec!["train", "--out", b.to_str().unwrap()];
            v.extend(SMALL);
            v
        };
        args.extend(every);
        if killed == kills {
            ok(&wgvae(&args));
            break;
        }
        let mut child = wgvae_cmd()
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.random_range(100..1000)));
        let done = child.try_wait().unwrap().is_some();
        child.kill().ok();
        let out = child.wait_with_output().unwrap();
        assert!(!done || out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        if !done {
            killed += 1;
        }
        if ck.exists() {
            let c = wgvae::checkpoint::Checkpoint::load(&ck).unwrap_or_else(|e| panic!("after kill {killed}: {e}"));
            let epoch: u64 = c.meta["epoch"].parse().unwrap();
            let text = std::fs::read_to_string(b.join("metrics.jsonl")).unwrap_or_default();
            let lines = text.lines().filter(|l| !l.is_empty()).count() as u64;
            assert!(
                lines == epoch || lines + 1 == epoch,
                "after kill {killed}: checkpoint at epoch {epoch}, {lines} lines"
            );
        }
        if done && metrics(&b).len() == 2 + kills {
            break;
        }
    }
    assert_eq!(killed, kills, "every planned kill landed while wgvae was running");
    assert_eq!(metrics(&b), want, "killed {killed} times and resumed: the uninterrupted run's figures");
    let left: Vec<_> = std::fs::read_dir(&b).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains(".tmp-")), "temporary files left: {left:?}");
    for d in [a, b] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// A full disk (simulated with a file-size limit, `ulimit -f`): the write fails with an error
/// naming the file, the earlier checkpoint and metrics stay as they were and agree, no temporary
/// file is left, and a resume with room finishes the run as if nothing had happened.
#[cfg(unix)]
#[test]
fn a_full_disk_leaves_the_run_consistent() {
    let (a, b) = (tmp("full-a"), tmp("full-b"));
    train(&a, &["--epochs", "2"]);
    train(&b, &["--epochs", "1"]);
    let ck = b.join("checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();
    let limit_kb = before.len() / 1024 / 2; // room for metrics.jsonl, not for a checkpoint
    let cmd = format!(
        "trap '' XFSZ; ulimit -f {limit_kb}; exec '{}' train --resume '{}' --epochs 2",
        env!("CARGO_BIN_EXE_wgvae"),
        ck.display()
    );
    let o = Command::new("bash").env("WGVAE_CACHE_DIR", cache_dir()).arg("-c").arg(&cmd).output().unwrap();
    fails(&o, &["checkpoint.safetensors"]);
    assert_eq!(std::fs::read(&ck).unwrap(), before, "the last good checkpoint is untouched");
    assert_eq!(metrics(&b).len(), 1, "no metrics line for the epoch whose checkpoint failed");
    let left: Vec<_> = std::fs::read_dir(&b).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(!left.iter().any(|n| n.to_string_lossy().contains(".tmp-")), "temporary files left: {left:?}");
    ok(&wgvae(&["train", "--resume", ck.to_str().unwrap(), "--epochs", "2"]));
    assert_eq!(metrics(&b), metrics(&a));
    for d in [a, b] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// `--keep N` keeps the last N epochs' checkpoints beside the latest.
#[test]
fn keep_keeps_the_last_epochs_checkpoints() {
    let d = tmp("keep");
    train(&d, &["--epochs", "3", "--keep", "2"]);
    for (e, exists) in [(1, false), (2, true), (3, true)] {
        let p = d.join(format!("checkpoint-epoch-{e}.safetensors"));
        assert_eq!(p.exists(), exists, "{}", p.display());
        if exists {
            let c = wgvae::checkpoint::Checkpoint::load(&p).unwrap();
            assert_eq!(c.meta["epoch"], e.to_string());
        }
    }
    std::fs::remove_dir_all(&d).ok();
}

/// Sizes from flags are checked before anything is allocated: an error naming the flag within
/// seconds, no abort, no panic.
#[test]
fn huge_sizes_from_flags_are_refused_quickly() {
    for args in [
        &["train", "--hidden", "100000000"][..],
        &["train", "--hidden", "10000000"],
        &["train", "--latent", "100000000000"],
        &["train", "--hidden", "18446744073709551615"],
        &["sample", "--checkpoint", "x", "--n", "1000000000"],
        &["interpolate", "--checkpoint", "x", "--steps", "1000000000"],
        &["manifold", "--checkpoint", "x", "--n", "100000"],
    ] {
        let t0 = std::time::Instant::now();
        let o = wgvae(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && !err.contains("panicked") && o.status.code().is_some(), "{args:?}: {err}");
        let flag = args.iter().rfind(|a| a.starts_with("--")).unwrap();
        assert!(err.contains(flag.trim_start_matches('-')), "{args:?}: {err}");
        assert!(t0.elapsed().as_secs_f64() < 10.0, "{args:?} took {:?}", t0.elapsed());
    }
}

/// A data directory whose path is not UTF-8 is stored exactly, so `eval` finds it later.
#[cfg(unix)]
#[test]
fn a_non_utf8_data_path_is_found_again_by_eval() {
    use std::os::unix::ffi::OsStrExt;
    let base = tmp("non-utf8");
    let dir = base.join(std::ffi::OsStr::from_bytes(b"data-\xff\xfe"));
    std::fs::create_dir_all(&dir).unwrap();
    let idx = |n: u32, seed: u8| {
        let mut f: Vec<u8> = [0x803u32, n, 4, 4].iter().flat_map(|v| v.to_be_bytes()).collect();
        f.extend((0..n * 16).map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed)));
        f
    };
    std::fs::write(dir.join("train-images-idx3-ubyte"), idx(40, 1)).unwrap();
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx(10, 2)).unwrap();
    let run = base.join("run");
    let o = wgvae_cmd()
        .args(["train", "--epochs", "1", "--hidden", "8", "--latent", "2", "--batch", "8", "--out"])
        .arg(&run)
        .arg("--data")
        .arg(&dir)
        .output()
        .unwrap();
    ok(&o);
    ok(&wgvae(&["eval", "--checkpoint", run.join("checkpoint.safetensors").to_str().unwrap()]));
    std::fs::remove_dir_all(&base).ok();
}

/// The library's `fit`, `train --json` on stdout and `train`'s metrics.jsonl give the same figures
/// for the same seed (timings aside); `--quiet` prints only the files.
#[test]
fn fit_json_and_metrics_file_agree() {
    let (a, b, c) = (tmp("fit-a"), tmp("fit-b"), tmp("fit-c"));
    train(&a, &["--epochs", "2", "--seed", "7"]);
    let want = metrics(&a);
    assert_eq!(want.len(), 2);

    let out = train(&b, &["--epochs", "2", "--seed", "7", "--json"]);
    let strip = |l: &str| {
        let mut v: serde_json::Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}"));
        let o = v.as_object_mut().unwrap();
        o.remove("epoch_seconds");
        o.remove("examples_per_second");
        v
    };
    let printed: Vec<_> = out.lines().map(strip).collect();
    assert_eq!(printed, want, "--json prints exactly the metrics.jsonl lines, and nothing else");
    assert_eq!(metrics(&b), want);

    use wgvae::train::{Control, FitOptions, TrainOptions, Trainer};
    let config = wgvae::vae::VaeConfig { hidden: vec![64], latent: 4, ..wgvae::vae::VaeConfig::classic() };
    let opts = TrainOptions { batch: 256, seed: 7, ..Default::default() };
    let mut t = Trainer::new(common::gpu(), config, opts, &wgvae::data::sprites::sprites(0)).unwrap();
    let mut calls = 0;
    let fit = FitOptions { epochs: 2, run_dir: Some(c.clone()), ..Default::default() };
    let got = t
        .fit(&fit, &mut |_| {}, &mut |_| {
            calls += 1;
            Control::Continue
        })
        .unwrap();
    assert_eq!(calls, 2);
    let got: Vec<_> = got.iter().map(|m| strip(&m.to_json_line())).collect();
    assert_eq!(got, want, "the library's fit gives the CLI's figures");
    assert_eq!(metrics(&c), want, "and writes the same metrics.jsonl");

    let q = tmp("fit-quiet");
    let out = train(&q, &["--epochs", "1", "--quiet"]);
    assert!(!out.contains("epoch 1") && !out.contains("loss"), "--quiet prints no progress or figures: {out}");
    assert!(out.contains("checkpoint.safetensors"), "--quiet still lists the files: {out}");
    for d in [a, b, c, q] {
        std::fs::remove_dir_all(&d).ok();
    }
}

/// Enum-like flags are checked by the parser: a bad value exits 2 (clap's convention for usage
/// errors) and the message lists the possible values.
#[test]
fn bad_enum_values_exit_2_with_the_possible_values() {
    for (flag, bad, good) in [
        ("--activation", "swish", "relu"),
        ("--likelihood", "poisson", "bernoulli"),
        ("--reduction", "median", "sum"),
        ("--kl-schedule", "cosine", "linear"),
        ("--model", "gan", "cvae"),
        ("--preset", "huge", "classic"),
    ] {
        let o = wgvae(&["train", flag, bad]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{flag} {bad}: exit code; stderr: {err}");
        assert!(err.contains(bad) && err.contains(good), "{flag} {bad}: {err}");
    }
}

#[test]
fn nonsensical_flags_are_refused() {
    fails(&wgvae(&["train", "--batch", "0"]), &["--batch"]);
    fails(&wgvae(&["train", "--latent", "0"]), &["--latent"]);
    fails(&wgvae(&["train", "--hidden", "400,0"]), &["--hidden"]);
    fails(&wgvae(&["train", "--lr", "-1"]), &["--lr"]);
    fails(&wgvae(&["train", "--epochs", "0"]), &["--epochs"]);
    fails(&wgvae(&["train", "--preset", "huge"]), &["--preset"]);
    fails(&wgvae(&["train", "--activation", "swish"]), &["swish"]);
    fails(&wgvae(&["sample", "--checkpoint", "/nonexistent/ck.safetensors"]), &["/nonexistent/ck.safetensors"]);
}

#[test]
fn bad_files_are_named() {
    let d = tmp("bad");
    std::fs::create_dir_all(&d).unwrap();
    // Missing data directory.
    fails(&wgvae(&["train", "--data", "/nonexistent-data-dir"]), &["/nonexistent-data-dir"]);
    // Truncated IDX file.
    let data = d.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut hdr = vec![0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28];
    hdr.extend(vec![0u8; 100]);
    std::fs::write(data.join("train-images-idx3-ubyte"), &hdr).unwrap();
    std::fs::write(data.join("t10k-images-idx3-ubyte"), &hdr).unwrap();
    fails(&wgvae(&["train", "--data", data.to_str().unwrap()]), &["train-images-idx3-ubyte"]);
    // Corrupt checkpoint.
    let ck = d.join("ck.safetensors");
    std::fs::write(&ck, b"definitely not a safetensors file").unwrap();
    fails(&wgvae(&["eval", "--checkpoint", ck.to_str().unwrap()]), &["ck.safetensors"]);
    fails(&wgvae(&["train", "--resume", ck.to_str().unwrap()]), &["ck.safetensors"]);
    // Unwritable output: a directory below a regular file.
    let blocker = d.join("file");
    std::fs::write(&blocker, b"x").unwrap();
    let out = blocker.join("run");
    fails(&wgvae(&["train", "--out", out.to_str().unwrap()]), &[out.to_str().unwrap()]);
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn loss_balance_options() {
    // Contradictions and bad values are refused before anything runs.
    fails(&wgvae(&["train", "--model", "ae", "--beta", "2"]), &["--beta", "autoencoder"]);
    fails(&wgvae(&["train", "--model", "ae", "--free-bits", "0.5"]), &["--free-bits"]);
    fails(&wgvae(&["train", "--model", "ae", "--kl-schedule", "linear", "--kl-warmup", "10"]), &["--kl-schedule"]);
    fails(&wgvae(&["train", "--free-bits", "-1"]), &["--free-bits"]);
    fails(&wgvae(&["train", "--kl-schedule", "linear"]), &["--kl-warmup"]);
    fails(&wgvae(&["train", "--kl-schedule", "cyclical"]), &["--kl-cycles"]);
    fails(&wgvae(&["train", "--kl-schedule", "cosine", "--kl-warmup", "5"]), &["--kl-schedule"]);
    fails(&wgvae(&["train", "--reduction", "avg"]), &["--reduction"]);
    fails(&wgvae(&["train", "--model", "gan"]), &["--model"]);
    fails(&wgvae(&["train", "--bn-vae", "1.5"]), &["--bn-vae", "[0, 1]"]);
    fails(&wgvae(&["train", "--model", "ae", "--bn-vae", "0.5"]), &["--bn-vae"]);

    // BN-VAE: the running statistics travel with the checkpoint, so eval reproduces the run.
    let bn = tmp("bnvae");
    let out = train(&bn, &["--epochs", "1", "--bn-vae", "0.6"]);
    assert!(out.contains("BN-VAE tau 0.6"), "{out}");
    let ck = bn.join("checkpoint.safetensors");
    let e: serde_json::Value =
        serde_json::from_str(&ok(&wgvae(&["eval", "--checkpoint", ck.to_str().unwrap()]))).unwrap();
    let m = metrics(&bn);
    assert_eq!(e["test_loss"].as_f64().unwrap(), m[0]["test_loss"].as_f64().unwrap(), "{e}");
    std::fs::remove_dir_all(&bn).ok();

    // The effective KL weight is printed; the schedule's weight is logged per epoch.
    let d = tmp("balance");
    let out = train(&d, &["--epochs", "1", "--reduction", "mean", "--kl-schedule", "linear", "--kl-warmup", "1000"]);
    assert!(out.contains("784 x its weight in the ELBO"), "{out}");
    let m = metrics(&d);
    let w = m[0]["kl_weight"].as_f64().unwrap();
    assert!(w > 0.0 && w < 0.1, "22 steps into a 1000-step warm-up: {w}");
    assert_eq!(m[0]["kl_per_dim"].as_array().unwrap().len(), 4);

    // The plain autoencoder trains, reports zero KL, and eval agrees.
    let ae = tmp("ae");
    let out = train(&ae, &["--epochs", "1", "--model", "ae"]);
    assert!(!out.contains("objective:"), "no KL objective line for the autoencoder: {out}");
    assert_eq!(metrics(&ae)[0]["kl"].as_f64().unwrap(), 0.0);
    let ck = ae.join("checkpoint.safetensors");
    let e: serde_json::Value =
        serde_json::from_str(&ok(&wgvae(&["eval", "--checkpoint", ck.to_str().unwrap()]))).unwrap();
    assert_eq!((e["model"].as_str().unwrap(), e["kl"].as_f64().unwrap()), ("ae", 0.0));
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&ae).ok();
}

fn png_size(p: &Path) -> (u32, u32) {
    let d = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(p).unwrap()));
    let r = d.read_info().unwrap();
    (r.info().width, r.info().height)
}

#[test]
fn pictures_and_disentanglement() {
    let d = tmp("pictures");
    ok(&wgvae(&[
        "train",
        "--out",
        d.to_str().unwrap(),
        "--epochs",
        "2",
        "--latent",
        "2",
        "--hidden",
        "64",
        "--batch",
        "256",
    ]));
    for f in ["manifold.png", "scatter.png", "metrics.png"] {
        assert!(d.join(f).exists(), "a 2-D latent run writes {f}");
    }
    assert_eq!(png_size(&d.join("manifold.png")), (15 * 30 + 2, 15 * 30 + 2));
    let ck = d.join("checkpoint.safetensors");
    let c = ck.to_str().unwrap();
    let (ip, tp) = (d.join("i.png"), d.join("t.png"));
    ok(&wgvae(&[
        "interpolate",
        "--checkpoint",
        c,
        "--from",
        "3",
        "--to",
        "4",
        "--steps",
        "6",
        "--out",
        ip.to_str().unwrap(),
    ]));
    assert_eq!(png_size(&ip), (8 * 30 + 2, 32), "two inputs framing six decoded steps");
    let out = ok(&wgvae(&["traverse", "--checkpoint", c, "--steps", "7", "--out", tp.to_str().unwrap()]));
    assert!(out.contains("z0") && out.contains("z1"), "{out}");
    assert_eq!(png_size(&tp), (7 * 30 + 2, 2 * 30 + 2), "one row per latent dimension");
    fails(&wgvae(&["interpolate", "--checkpoint", c, "--from", "100000"]), &["--from"]);
    let pp = d.join("p.png");
    ok(&wgvae(&["plot", "--metrics", d.join("metrics.jsonl").to_str().unwrap(), "--out", pp.to_str().unwrap()]));
    assert!(pp.exists());
    let e: serde_json::Value =
        serde_json::from_str(&ok(&wgvae(&["eval", "--checkpoint", c, "--disentanglement"]))).unwrap();
    let mig = e["mig"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&mig), "{e}");
    assert_eq!(e["mig_per_factor"].as_object().unwrap().len(), 5);
    // The same figure through the library: posterior means of every sprite (train then test)
    // against their factors, 20 bins.
    let gpu = common::gpu();
    let ck = wgvae::checkpoint::Checkpoint::load(Path::new(c)).unwrap();
    let vae = ck.vae(gpu).unwrap();
    let split = wgvae::data::sprites::sprites(0);
    let seed = ck.meta_u64("seed").unwrap();
    let batch = wgvae::train::eval_batch(ck.meta_u64("batch").unwrap() as usize);
    let mut codes = Vec::new();
    let mut factors = Vec::new();
    for imgs in [&split.train, &split.test] {
        let gi = wgvae::data::gpu::GpuImages::upload(gpu, imgs).unwrap();
        codes.extend(wgvae::train::evaluate_full(gpu, &vae, &gi, batch, seed).unwrap().mu);
        factors.extend(imgs.factors().unwrap().to_vec());
    }
    let want = wgvae::vae::metrics::mutual_information_gap(
        &codes,
        factors.len(),
        vae.config.latent,
        &factors,
        &wgvae::data::sprites::FACTOR_SIZES,
        20,
    )
    .unwrap();
    assert!((mig - want.mig).abs() < 1e-9, "eval's MIG {mig} is the library's {} for the same codes", want.mig);
    for (name, g) in split.train.factor_names().iter().zip(&want.per_factor) {
        let got = e["mig_per_factor"][name].as_f64().unwrap();
        assert!((got - g).abs() < 1e-9, "MIG of factor {name}: eval {got}, library {g}");
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn conditional_vae_cli() {
    let d = tmp("cvae");
    ok(&wgvae(&[
        "train",
        "--out",
        d.to_str().unwrap(),
        "--model",
        "cvae",
        "--epochs",
        "1",
        "--hidden",
        "64",
        "--latent",
        "4",
    ]));
    let ck = d.join("checkpoint.safetensors");
    let s = d.join("s.png");
    ok(&wgvae(&[
        "sample",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--label",
        "2",
        "--n",
        "4",
        "--out",
        s.to_str().unwrap(),
    ]));
    fails(&wgvae(&["sample", "--checkpoint", ck.to_str().unwrap(), "--label", "9"]), &["--label", "9"]);
    ok(&wgvae(&["reconstruct", "--checkpoint", ck.to_str().unwrap(), "--out", d.join("r.png").to_str().unwrap()]));
    // Unlabeled data cannot condition a CVAE; a plain VAE cannot draw a chosen class.
    let data = d.join("unlabeled");
    std::fs::create_dir_all(&data).unwrap();
    let mut idx = vec![0u8, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 2];
    idx.extend([0u8, 255, 7, 9, 1, 2, 3, 4, 5, 6, 7, 8]);
    std::fs::write(data.join("train-images-idx3-ubyte"), &idx).unwrap();
    std::fs::write(data.join("t10k-images-idx3-ubyte"), &idx).unwrap();
    fails(&wgvae(&["train", "--model", "cvae", "--data", data.to_str().unwrap()]), &["--model cvae", "label"]);
    let v = tmp("plainvae");
    train(&v, &["--epochs", "1"]);
    let vck = v.join("checkpoint.safetensors");
    fails(&wgvae(&["sample", "--checkpoint", vck.to_str().unwrap(), "--label", "1"]), &["--label", "cvae"]);
    std::fs::remove_dir_all(&d).ok();
    std::fs::remove_dir_all(&v).ok();
}

#[test]
fn bench_step_smoke_allocates_nothing_after_warm_up() {
    // `wgvae bench step` once at a tiny size (a smoke check, not a measurement): a warmed-up step
    // creates no buffer or bind group and is one submission.
    let out = ok(&wgvae(&["bench", "step", "--batch", "8", "--seconds", "0.05", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(v["batch"], 8);
    assert_eq!(v["buffers_allocated_per_step"].as_f64(), Some(0.0), "{v}");
    assert_eq!(v["bind_groups_created_per_step"].as_f64(), Some(0.0), "{v}");
    assert_eq!(v["submissions_per_step"].as_f64(), Some(1.0), "{v}");
    assert!(v["dispatches_per_step"].as_f64().unwrap() >= 10.0, "{v}");
    assert!(v["ms_per_step"].as_f64().unwrap() > 0.0);
    fails(&wgvae(&["bench", "step", "--batch", "0"]), &["--batch"]);
    // Four steps per submission: a quarter of a submission per step, still nothing allocated.
    let out = ok(&wgvae(&["bench", "step", "--batch", "8", "--seconds", "0.05", "--json", "--steps-per-submit", "4"]));
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!((v["steps_per_submit"].as_u64(), v["submissions_per_step"].as_f64()), (Some(4), Some(0.25)), "{v}");
    assert_eq!(v["buffers_allocated_per_step"].as_f64(), Some(0.0), "{v}");
    fails(&wgvae(&["bench", "step", "--steps-per-submit", "0"]), &["--steps-per-submit"]);
    fails(&wgvae(&["train", "--steps-per-submit", "65", "--out", "/nonexistent/x"]), &["--steps-per-submit", "64"]);
}

#[test]
fn tune_measures_and_caches_a_plan_that_later_commands_use_unless_told_not_to() {
    let dir = tmp("tune");
    let run = |args: &[&str], matmul: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_wgvae"));
        c.env("WGVAE_CACHE_DIR", &dir).env_remove("WGVAE_MATMUL");
        if let Some(v) = matmul {
            c.env("WGVAE_MATMUL", v);
        }
        c.args(args).output().unwrap()
    };
    // Every tile too (--all), on the three batch-128 products.
    let out = ok(&run(&["tune", "--all", "--filter", "batch 128", "--seconds", "0.01"], None));
    assert!(out.contains("plan: ") && out.contains("tiled 128x128x8") && out.contains("saved to"), "{out}");
    let cache: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("matmul-plans.json")).unwrap()).unwrap();
    let plans = cache["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 1);
    let kernels = wgvae::TileConfig::ALL.len() + 1 + usize::from(common::gpu().has_subgroups_of_8());
    assert_eq!(plans[0]["measurements"].as_array().unwrap().len(), 3 * kernels, "{cache}");
    let plan = plans[0]["plan"]["rules"][0]["kernel"].as_str().unwrap().to_string();
    // Later commands install it; --no-tune and a forced variant do not.
    let info = ok(&run(&["info"], None));
    assert!(info.contains(&format!("matmul kernel  tuned: {plan}")), "{info}");
    assert!(!ok(&run(&["--no-tune", "info"], None)).contains("tuned"));
    assert!(ok(&run(&["info"], Some("register"))).contains("matmul kernel  register"));
    // A damaged cache is a warning, not a failure.
    std::fs::write(dir.join("matmul-plans.json"), "{").unwrap();
    let o = run(&["info"], None);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("warning: matmul plan not used"), "{o:?}");
    fails(&run(&["tune", "--filter", "no such product"], None), &["--filter", "no such product"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn storage_words_follow_the_adapter_and_the_environment() {
    let info = |words: Option<&str>| {
        let mut c = wgvae_cmd();
        c.env_remove("WGVAE_WORDS");
        if let Some(w) = words {
            c.env("WGVAE_WORDS", w);
        }
        c.arg("info").output().unwrap()
    };
    // The default: u64 on a CPU adapter with 64-bit integers (lavapipe), f32 elsewhere.
    let g = common::gpu();
    let int64 = g.features().contains(wgvae::wgpu::Features::SHADER_INT64);
    let want = wgvae::Words::for_adapter(g.adapter().device_type, int64);
    assert!(ok(&info(None)).contains(&format!("storage words  {want}")));
    assert!(ok(&info(Some("f32"))).contains("storage words  f32"));
    if int64 {
        assert!(ok(&info(Some("U64"))).contains("storage words  u64"));
    } else {
        fails(&info(Some("u64")), &["u64", "SHADER_INT64", "f32"]);
    }
    fails(&info(Some("f16")), &["`f16`", "f32, u64"]);
}
