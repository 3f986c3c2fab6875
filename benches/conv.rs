//! Criterion benchmark of the convolution kernel (`conv.wgsl`) on the layers of the conv VAE
//! that issue 11's `--preset conv` specifies (28x28 grayscale, batch 128): each layer's forward
//! product, input gradient and weight gradient. Throughput is in "elements"/s where one element
//! is one floating-point operation (2 per multiply-add of a tap that is not padding-skipped by
//! shape), so the Gelem/s column reads as GFLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::time::Duration;
use wgvae::ops::conv::{self, ConvShape, ConvTransposeShape};
use wgvae::ops::Act;
use wgvae::{Gpu, Tape, Tensor};

const BATCH: usize = 128;

fn conv_bench(c: &mut Criterion) {
    let gpu = Gpu::new().expect("a GPU adapter (on Linux without a GPU: apt-get install mesa-vulkan-drivers)");
    eprintln!("adapter: {} ({:?}, {:?})", gpu.adapter().name, gpu.adapter().backend, gpu.adapter().device_type);
    let t = |cin, cout, h, stride, output_padding| ConvTransposeShape {
        in_channels: cin,
        out_channels: cout,
        height: h,
        width: h,
        kernel: 3,
        stride,
        padding: 1,
        output_padding,
    };
    // (name, the convolution whose three products are timed): the transposed layers as their
    // adjoint convolutions (their forward is that convolution's input gradient).
    let layers = [
        (
            "encoder.0 conv 1->32 28->14",
            ConvShape { in_channels: 1, out_channels: 32, height: 28, width: 28, kernel: 3, stride: 2, padding: 1 },
        ),
        (
            "encoder.2 conv 32->64 14->7",
            ConvShape { in_channels: 32, out_channels: 64, height: 14, width: 14, kernel: 3, stride: 2, padding: 1 },
        ),
        ("decoder.0 convT 32->64 7->14", t(32, 64, 7, 2, 1).as_conv()),
        ("decoder.2 convT 64->32 14->28", t(64, 32, 14, 2, 1).as_conv()),
        ("decoder.4 convT 32->1 28->28", t(32, 1, 28, 1, 0).as_conv()),
    ];
    let mut g = c.benchmark_group("conv");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(3));
    for (name, s) in layers {
        let x = Tensor::zeros(&gpu, BATCH, s.in_len()).expect("x");
        let w = Tensor::zeros(&gpu, s.out_channels, s.weight_cols()).expect("w");
        let dy = Tensor::zeros(&gpu, BATCH, s.out_len()).expect("dy");
        let flops = 2.0 * (BATCH * s.out_height() * s.out_width() * s.out_channels * s.weight_cols()) as f64;
        g.throughput(Throughput::Elements(flops as u64));
        // The conv.wgsl products by MODE; for a transposed layer, MODE 1 is its forward and MODE 0
        // its input gradient.
        for (product, mode) in
            [("mode 0 conv", 0), ("mode 1 conv input grad = convT forward", 1), ("mode 2 weight grad", 2)]
        {
            g.bench_function(BenchmarkId::new(product, name), |b| {
                b.iter(|| {
                    let mut tape = Tape::no_grad(&gpu);
                    match mode {
                        0 => drop(conv::conv2d_forward(&mut tape, &x, &w, None, &s, Act::Relu).expect("conv")),
                        1 => drop(conv::conv2d_input_grad(&mut tape, &dy, &w, None, &s, Act::Identity).expect("dx")),
                        _ => drop(conv::conv2d_weight_grad(&mut tape, &x, &dy, &s, None).expect("dw")),
                    }
                    tape.submit().expect("submit");
                    gpu.wait().expect("wait");
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, conv_bench);
criterion_main!(benches);
