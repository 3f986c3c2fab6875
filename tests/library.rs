//! wgvae embedded in another program: on the program's own wgpu device (trained there, then read
//! by the program's own kernel with no CPU round trip, the program's error handler left in
//! place), and on the program's own data (constructors that refuse inconsistent shapes with typed
//! errors).
mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use wgvae::data::{sprites, Images};
use wgvae::train::{Control, FitOptions, TrainOptions, Trainer};
use wgvae::vae::VaeConfig;
use wgvae::{wgpu, Error, Gpu};

/// The program's kernel: `out[i] = sum_j x[i*D + j] * (j + 1)` over an n x D buffer, a weighted
/// row sum that a wrong offset, stride or stale buffer would change.
const ROW_SUMS: &str = r#"
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
override D: u32 = 1u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= arrayLength(&out)) { return; }
    var s = 0.0;
    for (var j = 0u; j < D; j++) { s += x[id.x * D + j] * f32(j + 1u); }
    out[id.x] = s;
}
"#;

fn own_device() -> (wgpu::Adapter, wgpu::Device, wgpu::Queue) {
    common::quiet_drivers();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(wgpu::Backends::PRIMARY);
    desc.flags = wgpu::InstanceFlags::empty();
    let instance = wgpu::Instance::new(desc);
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .expect("an adapter (install mesa-vulkan-drivers)");
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("the program's device"),
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        required_limits: adapter.limits(),
        ..Default::default()
    }))
    .expect("a device");
    (adapter, device, queue)
}

/// Runs ROW_SUMS over `x` (a binding of n rows of d floats) on the program's device.
fn row_sums(device: &wgpu::Device, queue: &wgpu::Queue, x: wgpu::BufferBinding<'_>, n: usize, d: usize) -> Vec<f32> {
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("row sums"),
        source: wgpu::ShaderSource::Wgsl(ROW_SUMS.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("row sums"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions { constants: &[("D", d as f64)], ..Default::default() },
        cache: None,
    });
    let size = n as u64 * 4;
    let out = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("out"),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let read = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("read"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(x) },
            wgpu::BindGroupEntry { binding: 1, resource: out.as_entire_binding() },
        ],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((n as u32).div_ceil(64), 1, 1);
    }
    enc.copy_buffer_to_buffer(&out, 0, &read, 0, size);
    queue.submit([enc.finish()]);
    read.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely()).unwrap();
    let v = bytemuck::cast_slice(&read.slice(..).get_mapped_range().unwrap()).to_vec();
    v
}

#[test]
fn trains_on_the_programs_device_and_the_program_reads_the_samples_on_it() {
    let (adapter, device, queue) = own_device();
    let errors = Arc::new(AtomicUsize::new(0));
    let seen = errors.clone();
    device.on_uncaptured_error(Arc::new(move |_e: wgpu::Error| {
        seen.fetch_add(1, Ordering::SeqCst);
    }));

    let gpu = Gpu::from_wgpu(&adapter.get_info(), device.clone(), queue.clone(), None).unwrap();
    assert_eq!(gpu.adapter().name, adapter.get_info().name);
    assert!(gpu.device() == &device, "wgvae runs on the program's device, not a second one");
    // The program did not enable 64-bit integers, so the CPU-adapter kernels keep f32 words (a
    // u64 module would fail validation on this device).
    assert!(!device.features().contains(wgpu::Features::SHADER_INT64));
    assert_eq!(gpu.words(), wgvae::Words::F32);

    let split = sprites::sprites(0);
    let config = VaeConfig { hidden: vec![64], latent: 4, ..VaeConfig::classic() };
    let mut t = Trainer::new(&gpu, config, TrainOptions { batch: 256, ..Default::default() }, &split).unwrap();
    let m = t.fit(&FitOptions { epochs: 1, ..Default::default() }, &mut |_| {}, &mut |_| Control::Continue).unwrap();
    assert!(m[0].test_loss.is_finite());

    // 13 samples: a size that is no multiple of the program's workgroup.
    let samples = t.vae.sample(&gpu, 13, 5).unwrap();
    let (n, d) = (samples.rows(), samples.cols());
    let got = row_sums(&device, &queue, samples.binding(), n, d);
    let values = samples.to_vec(&gpu).unwrap();
    for (i, g) in got.iter().enumerate() {
        let want: f64 = values[i * d..(i + 1) * d].iter().enumerate().map(|(j, &v)| v as f64 * (j + 1) as f64).sum();
        assert!((*g as f64 - want).abs() <= 1e-4 * want.abs().max(1.0), "row {i}: {g} vs {want}");
    }
    // A view (the second half of a tensor's rows) binds at its offset.
    let view = samples.view(d * 8, 5, d).unwrap(); // 8 * 784 floats: a multiple of any alignment
    let tail = row_sums(&device, &queue, view.binding(), 5, d);
    assert_eq!(tail, got[8..], "a view binds its own range");

    assert_eq!(errors.load(Ordering::SeqCst), 0, "wgvae's work raised no error on the program's handler");
    // The program's own mistake still reaches the program's handler: wgvae replaced nothing.
    let _bad = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("invalid on purpose"),
        size: 16,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::MAP_WRITE,
        mapped_at_creation: false,
    });
    let _ = device.poll(wgpu::PollType::wait_indefinitely());
    assert_eq!(errors.load(Ordering::SeqCst), 1, "the program's error handler is still the one installed");
}

fn invalid(r: Result<Images, Error>, needle: &str) {
    match r {
        Err(Error::InvalidArgument { detail, .. }) => {
            assert!(detail.contains(needle), "`{detail}` should mention `{needle}`")
        }
        Err(e) => panic!("expected InvalidArgument mentioning `{needle}`, got {e}"),
        Ok(_) => panic!("expected InvalidArgument mentioning `{needle}`, got a dataset"),
    }
}

#[test]
fn dataset_constructors_refuse_inconsistent_shapes_with_typed_errors() {
    invalid(Images::from_u8(vec![0; 11], 2, &[2, 3]), "12");
    invalid(Images::from_f32(vec![0.5; 13], 2, &[2, 3]), "12");
    invalid(Images::from_u8(vec![], 0, &[4]), "at least one");
    invalid(Images::from_u8(vec![0; 4], 1, &[]), "shape");
    invalid(Images::from_u8(vec![0; 4], 1, &[usize::MAX, 2]), "overflow");
    invalid(Images::from_f32(vec![0.5, f32::NAN], 1, &[2]), "NaN");
    let ok = || Images::from_u8(vec![7; 12], 3, &[2, 2]).unwrap();
    invalid(ok().with_labels(vec![1, 2]), "2 labels");
    invalid(ok().with_labels_of(vec![0, 1, 5], 5), "label 5");
    invalid(ok().with_factors(vec![vec![0, 1]; 2], vec!["a".into(), "b".into()]), "3 rows");
    match ok().split(0.0, 1) {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("a split with no test examples must be refused, got {:?}", other.map(|s| s.test.n())),
    }
    let s = ok().with_labels(vec![0, 1, 2]).unwrap().split(0.34, 9).unwrap();
    assert_eq!((s.train.n(), s.test.n(), s.train.num_classes()), (2, 1, 3));
}
