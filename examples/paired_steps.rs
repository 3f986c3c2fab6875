//! Paired A/B of the classic VAE's training step under two device or training configurations, in
//! one process: two trainers, single steps alternated (the order swapped every round), each step
//! waited for. A machine whose speed drifts over minutes (a shared VM: BENCHMARKS.md) moves both
//! sides of a pair together, so the per-pair ratios resolve differences of a few percent that
//! alternating whole `wgvae bench step` runs cannot.
//!
//! ```sh
//! cargo run --release --example paired_steps -- words=f32 words=u64 [ROUNDS] [DATA_DIR]
//! cargo run --release --example paired_steps -- matmul=register matmul=subgroup 200
//! ```
//!
//! A configuration is `default` or comma-separated `words=f32|u64`, `matmul=tiled|register|subgroup`,
//! `operands=buffers|textures`, `batch=N`, `steps-per-submit=N` (a pair then compares per-step times of N steps against the
//! other side's). Data: the IDX files in DATA_DIR (e.g. /usr/share/datasets/fashion-mnist), else
//! the built-in sprites. Prints each side's median and fastest ms per step and the median and
//! quartiles of the per-pair ratios (B / A: below 1, B is faster).
use std::time::Instant;

use wgvae::train::{EpochState, TrainOptions, Trainer};
use wgvae::vae::VaeConfig;
use wgvae::{Gpu, GpuOptions, MatmulVariant, Operands, Words};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

struct Side {
    name: String,
    gpu: Gpu,
    trainer: Trainer,
    epoch: EpochState,
    per_pair: usize,
    next: usize,
    ms: Vec<f64>,
}

fn side(spec: &str, split: &wgvae::data::Split) -> Res<Side> {
    let (mut g, mut o) = (GpuOptions::default(), TrainOptions::default());
    for kv in spec.split(',').filter(|s| !s.is_empty() && *s != "default") {
        let bad =
            || format!("unknown setting `{kv}` in `{spec}` (words=, matmul=, operands=, batch=, steps-per-submit=)");
        let (k, v) = kv.split_once('=').ok_or_else(bad)?;
        match k {
            "words" => g.words = Some(Words::ALL.into_iter().find(|w| w.name() == v).ok_or_else(bad)?),
            "matmul" => g.matmul = Some(MatmulVariant::ALL.into_iter().find(|m| m.name() == v).ok_or_else(bad)?),
            "operands" => g.operands = Some(Operands::ALL.into_iter().find(|o| o.name() == v).ok_or_else(bad)?),
            "batch" => o.batch = v.parse().map_err(|_| bad())?,
            "steps-per-submit" => o.steps_per_submit = v.parse().map_err(|_| bad())?,
            _ => return Err(bad().into()),
        }
    }
    let gpu = Gpu::with_options(g)?;
    let per_pair = o.steps_per_submit.max(1);
    let mut trainer = Trainer::new(&gpu, VaeConfig::classic(), o, split)?;
    let epoch = trainer.begin_epoch()?;
    Ok(Side { name: spec.to_string(), gpu, trainer, epoch, per_pair, next: 0, ms: Vec::new() })
}

impl Side {
    /// `per_pair` steps, submitted and waited for: ms per step.
    fn run(&mut self) -> wgvae::Result<f64> {
        let t0 = Instant::now();
        for _ in 0..self.per_pair {
            // Stay before the epoch's last batch, which may be short and submits on its own.
            let i = self.next % (self.epoch.batches - 1).max(1);
            self.trainer.step(&mut self.epoch, i, false)?;
            self.next += 1;
        }
        self.trainer.flush()?;
        self.gpu.wait()?;
        Ok(t0.elapsed().as_secs_f64() * 1e3 / self.per_pair as f64)
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: paired_steps A B [ROUNDS] [DATA_DIR]   (A, B: e.g. words=f32, matmul=register, default)");
        std::process::exit(2);
    }
    let rounds: usize =
        args.get(2).map(|r| r.parse()).transpose().map_err(|_| "ROUNDS must be a positive number")?.unwrap_or(300);
    if rounds == 0 {
        return Err("ROUNDS must be a positive number".into());
    }
    let split = match args.get(3) {
        Some(dir) => wgvae::data::idx::load_dir(std::path::Path::new(dir))?,
        None => wgvae::data::sprites::sprites(0),
    };
    let mut sides = [side(&args[0], &split)?, side(&args[1], &split)?];
    // Warm-up: pipelines compile and buffer pools fill outside the timed pairs.
    for s in sides.iter_mut() {
        s.run()?;
        s.run()?;
    }
    for r in 0..rounds {
        let order = if r % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let ms = sides[i].run()?;
            sides[i].ms.push(ms);
        }
    }
    for s in &sides {
        let mut v = s.ms.clone();
        v.sort_by(f64::total_cmp);
        let (name, matmul, words) = (&s.name, s.gpu.matmul_variant().name(), s.gpu.words().name());
        println!(
            "{name:>24}: median {:.3} ms per step, fastest {:.3} (matmul {matmul}, words {words})",
            quantile(&v, 0.5),
            v[0]
        );
    }
    let mut ratios: Vec<f64> = sides[1].ms.iter().zip(&sides[0].ms).map(|(b, a)| b / a).collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "per-pair ratio B/A: median {:.3}, quartiles {:.3}-{:.3} ({} pairs)",
        quantile(&ratios, 0.5),
        quantile(&ratios, 0.25),
        quantile(&ratios, 0.75),
        ratios.len()
    );
    Ok(())
}
