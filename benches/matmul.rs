//! Criterion benchmark of the matmul kernels: every variant (the `subgroup` one with each
//! [`wgvae::Operands`] kind) on the classic VAE's shapes (batch 128,
//! all layouts a training step uses) and on square sizes. Throughput is reported in "elements"/s
//! where one element is one floating-point operation, i.e. the Gelem/s column reads as GFLOP/s.
//!
//! `WGVAE_BENCH_SHAPES=square` (or any substring of a shape name) narrows the set.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use wgvae::bench::{operands, run_matmul, SHAPES};
use wgvae::{Gpu, MatmulVariant, Operands};

fn matmul(c: &mut Criterion) {
    let gpu = Gpu::new().expect("a GPU adapter (on Linux without a GPU: apt-get install mesa-vulkan-drivers)");
    eprintln!("adapter: {} ({:?}, {:?})", gpu.adapter().name, gpu.adapter().backend, gpu.adapter().device_type);
    let filter = std::env::var("WGVAE_BENCH_SHAPES").unwrap_or_default();
    let mut g = c.benchmark_group("matmul");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for shape in SHAPES.iter().filter(|s| s.name.contains(filter.as_str())) {
        let (a, b) = operands(&gpu, shape).expect("operands");
        // Several products per submission so the submit/wait round trip does not dominate.
        let reps = if shape.flops() > 1e9 { 1 } else { 8 };
        g.throughput(Throughput::Elements((shape.flops() * reps as f64) as u64));
        // Variants this adapter cannot run (subgroup without 8-lane subgroups) are left out.
        // The `subgroup` kernel once per operand kind (`subgroup+textures`, `subgroup+buffers`).
        for v in MatmulVariant::ALL.into_iter().filter(|&v| gpu.check_variant(v).is_ok()) {
            let kinds: Vec<Option<Operands>> =
                if v == MatmulVariant::Subgroup { Operands::ALL.map(Some).to_vec() } else { vec![None] };
            for o in kinds {
                let name = o.map_or(v.name().to_string(), |o| format!("{v}+{o}"));
                let id = BenchmarkId::new(
                    name,
                    format!("{} {}x{}x{} {}", shape.name, shape.m, shape.k, shape.n, shape.layout()),
                );
                if let Some(o) = o {
                    gpu.set_operands(o);
                }
                g.bench_function(id, |bch| bch.iter(|| run_matmul(&gpu, &a, &b, shape, v, reps).expect("matmul")));
            }
        }
    }
    g.finish();
}

criterion_group!(benches, matmul);
criterion_main!(benches);
