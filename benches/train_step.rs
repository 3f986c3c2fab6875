//! Criterion benchmark of one classic-VAE training step (784-400-20-400-784, batch 128): forward
//! only, forward + backward, and the full step with Adam, each one submission. Throughput is in
//! examples per second.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use wgvae::bench::{StepBench, StepPart};
use wgvae::vae::VaeConfig;
use wgvae::Gpu;

fn step(c: &mut Criterion) {
    let gpu = Gpu::new().expect("a GPU adapter (on Linux without a GPU: apt-get install mesa-vulkan-drivers)");
    eprintln!("adapter: {} ({:?})", gpu.adapter().name, gpu.adapter().backend);
    let mut g = c.benchmark_group("train_step");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for b in [128usize, 1024] {
        g.throughput(Throughput::Elements(b as u64));
        for part in [StepPart::Forward, StepPart::ForwardBackward, StepPart::Full] {
            let mut sb = StepBench::new(&gpu, &VaeConfig::classic(), b).expect("setup");
            g.bench_function(BenchmarkId::new(format!("{part:?}"), format!("classic batch {b}")), |bch| {
                bch.iter(|| sb.run(part).expect("step"))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, step);
criterion_main!(benches);
