//! Train a VAE on your own data from your own program: 8-bit images with labels (as most image
//! data arrives) and f32 feature vectors, a seeded train/test split, `fit` with a callback that
//! prints each epoch and stops early, then encode, decode, sample, save and reload.
//! Run: `cargo run --release --example own_data`.
use wgvae::checkpoint::Checkpoint;
use wgvae::data::Images;
use wgvae::train::{Control, FitOptions, TrainOptions, Trainer};
use wgvae::vae::VaeConfig;
use wgvae::Gpu;

fn main() -> wgvae::Result<()> {
    let gpu = Gpu::new()?; // the best adapter: Vulkan, Metal, DX12, GL, or a CPU one

    // 1. 8-bit images: 2,000 12x12 pictures of a bar at one of 8 angles; the angle is the label.
    let (n, side) = (2000, 12);
    let mut pixels = Vec::with_capacity(n * side * side);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let angle = (i % 8) as f32 * std::f32::consts::PI / 8.0;
        let shift = (i / 8 % 5) as f32 - 2.0; // a second factor: the bar's offset
        for y in 0..side {
            for x in 0..side {
                let (u, v) = (x as f32 - 5.5, y as f32 - 5.5);
                let d = (u * angle.sin() - v * angle.cos() - shift).abs();
                pixels.push(if d < 1.0 { 255u8 } else { 0 });
            }
        }
        labels.push((i % 8) as u32);
    }
    let split = Images::from_u8(pixels, n, &[side, side])?.with_labels(labels)?.split(0.2, 42)?;
    println!("{} training and {} test images of {side}x{side}", split.train.n(), split.test.n());

    let config = VaeConfig { input_dim: side * side, hidden: vec![128], latent: 4, ..VaeConfig::classic() };
    let mut trainer = Trainer::new(&gpu, config, TrainOptions { batch: 64, lr: 2e-3, ..Default::default() }, &split)?;
    let run_dir = std::env::temp_dir().join("wgvae-own-data");
    let _ = std::fs::remove_dir_all(&run_dir); // fit refuses to start a new run over an old one
    let fit = FitOptions { epochs: 40, run_dir: Some(run_dir.clone()), ..Default::default() };
    let mut best = f64::INFINITY;
    let history = trainer.fit(&fit, &mut |_progress| {}, &mut |m| {
        println!("{m}");
        // Stop once the test loss has not improved by 0.5% for an epoch.
        let improved = m.test_loss < best * 0.995;
        best = best.min(m.test_loss);
        if improved || m.epoch < 5 {
            Control::Continue
        } else {
            Control::Stop
        }
    })?;
    println!("stopped after {} epochs; checkpoint and metrics.jsonl in {}", history.len(), run_dir.display());

    // Encode a test image, decode its code, sample new images: plain slices in and out.
    let x = split.test.example(0);
    let (mu, _logvar) = trainer.vae.encode_values(&gpu, &x)?;
    let recon = trainer.vae.decode_values(&gpu, &mu)?;
    let err: f32 = x.iter().zip(&recon).map(|(a, b)| (a - b).abs()).sum::<f32>() / x.len() as f32;
    println!("test image 0: code {mu:.2?}, mean absolute reconstruction error {err:.3}");
    let samples = trainer.vae.sample_values(&gpu, 4, 7)?;
    println!("sampled {} new images", samples.len() / (side * side));

    // Reload the checkpoint the run wrote, as another program would.
    let again = Checkpoint::load(run_dir.join("checkpoint.safetensors"))?.vae(&gpu)?;
    assert_eq!(again.decode_values(&gpu, &mu)?, recon, "the checkpoint decodes exactly as the trained model");

    // 2. f32 data: 1,000 vectors of 16 values in [0, 1] (e.g. normalized measurements), with a
    //    Gaussian decoder since the values are not binary.
    let values: Vec<f32> = (0..1000 * 16).map(|i| (i % 16) as f32 / 15.0 * ((i / 16) % 7) as f32 / 6.0).collect();
    let split = Images::from_f32(values, 1000, &[16])?.split(0.1, 1)?;
    let config = VaeConfig {
        input_dim: 16,
        hidden: vec![32],
        latent: 2,
        likelihood: "gaussian:0.01".parse()?,
        ..VaeConfig::classic()
    };
    let mut t = Trainer::new(&gpu, config, TrainOptions { batch: 50, ..Default::default() }, &split)?;
    let m = t.fit(&FitOptions { epochs: 5, ..Default::default() }, &mut |_| {}, &mut |_| Control::Continue)?;
    println!("f32 data: test -ELBO {:.2} -> {:.2} nats over 5 epochs", m[0].test_loss, m[4].test_loss);
    Ok(())
}
