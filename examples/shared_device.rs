//! A program that already has a wgpu device (a renderer, a game engine, a compute app) trains a
//! VAE on it with wgvae, then runs its own compute pass over the samples wgvae decoded, on the same
//! device, with no copy through the CPU. Run: `cargo run --release --example shared_device`.
use wgvae::train::{Control, FitOptions, TrainOptions, Trainer};
use wgvae::vae::VaeConfig;
use wgvae::{data::sprites, wgpu, Gpu};

/// The program's own kernel: the mean intensity of each decoded image.
/// `samples`: n x d row-major; `means`: n.
const MEANS: &str = r#"
@group(0) @binding(0) var<storage, read> samples: array<f32>;
@group(0) @binding(1) var<storage, read_write> means: array<f32>;
override D: u32 = 784u;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    if (id.x >= arrayLength(&means)) { return; }
    var s = 0.0;
    for (var j = 0u; j < D; j++) { s += samples[id.x * D + j]; }
    means[id.x] = s / f32(D);
}
"#;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The program's device, created the program's way (wgvae is not involved yet).
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle());
    let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        // Subgroups let wgvae pick its fastest matmul on CPU adapters; optional.
        required_features: adapter.features() & wgpu::Features::SUBGROUP,
        required_limits: adapter.limits(),
        ..Default::default()
    }))?;

    // wgvae on that device: no second device, the program's error handling left as it is.
    let gpu = Gpu::from_wgpu(&adapter.get_info(), device.clone(), queue.clone(), None)?;
    println!("training on {} ({:?}), matmul {}", gpu.adapter().name, gpu.adapter().backend, gpu.matmul_variant());
    let split = sprites::sprites(0);
    let config = VaeConfig { hidden: vec![256], latent: 8, ..VaeConfig::classic() };
    let mut t = Trainer::new(&gpu, config, TrainOptions::default(), &split)?;
    t.fit(&FitOptions { epochs: 2, ..Default::default() }, &mut |_| {}, &mut |m| {
        println!("epoch {}: test -ELBO {:.2}", m.epoch, m.test_loss);
        Control::Continue
    })?;
    let samples = t.vae.sample(&gpu, 16, 7)?; // 16 x 784 decoded pixels, still on the device

    // The program's own pass over wgvae's buffer.
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("means"),
        source: wgpu::ShaderSource::Wgsl(MEANS.into()),
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("means"),
        layout: None,
        module: &module,
        entry_point: Some("main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[("D", samples.cols() as f64)],
            ..Default::default()
        },
        cache: None,
    });
    let size = samples.rows() as u64 * 4;
    let means = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("means"),
        size,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("readback"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let bind = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::Buffer(samples.binding()) },
            wgpu::BindGroupEntry { binding: 1, resource: means.as_entire_binding() },
        ],
    });
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bind, &[]);
        pass.dispatch_workgroups((samples.rows() as u32).div_ceil(64), 1, 1);
    }
    enc.copy_buffer_to_buffer(&means, 0, &readback, 0, size);
    queue.submit([enc.finish()]);
    readback.slice(..).map_async(wgpu::MapMode::Read, |r| r.expect("map"));
    device.poll(wgpu::PollType::wait_indefinitely())?;
    let got: Vec<f32> = bytemuck::cast_slice(&readback.slice(..).get_mapped_range()?).to_vec();
    println!("mean intensity of each of the 16 samples, computed by the program's own kernel:");
    println!("{:.3?}", got);
    Ok(())
}
