//! The layer under `Trainer`: a training step written out on the autograd tape (forward, loss,
//! backward, Adam, one submission), for programs that want their own loop or their own loss.
//! Here 8x8 images of bars. Run: `cargo run --release --example tape`.
use wgvae::nn::Adam;
use wgvae::ops::{vae::Noise, Act};
use wgvae::vae::{Likelihood, ModelKind, Vae, VaeConfig};
use wgvae::{checkpoint, Gpu, Optimizer, Tape, Tensor};

fn main() -> wgvae::Result<()> {
    // Your data: n examples of d features in [0, 1], row-major.
    let (n, d, batch) = (1024, 64, 64);
    let data: Vec<f32> =
        (0..n * d).map(|i| ((i / d) % 8 == (i % d) / 8 || (i / d / 8) % 8 == i % 8) as u8 as f32).collect();

    let gpu = Gpu::new()?; // any adapter: Vulkan, Metal, DX12, GL, or a CPU one
    let config = VaeConfig {
        model: ModelKind::Vae,
        input_dim: d,
        hidden: vec![128],
        latent: 4,
        activation: Act::Relu,
        likelihood: Likelihood::Bernoulli,
        bn_tau: None,
        classes: 0,
        conv: None,
    };
    let vae = Vae::new(&gpu, config, 0)?;
    let mut opt = Adam::new(1e-3)?;

    for step in 0..300u32 {
        let start = (step as usize * batch) % n;
        let x = Tensor::from_slice(&gpu, batch, d, &data[start * d..(start + batch) * d])?;
        let mut tape = Tape::new(&gpu); // records this step's kernels and graph
        let xv = tape.input(x.clone());
        let out = vae.forward(&mut tape, xv, Noise { seed: 1, step, stream: 0 })?;
        let loss = vae.loss(&mut tape, &out, &x, 1.0)?; // negative ELBO, summed over the batch
        tape.backward(loss.total)?;
        opt.step(&mut tape, &vae.params())?;
        let total = tape.value(loss.total).clone();
        let read = if step % 100 == 99 { Some(tape.read(&total)?) } else { None };
        tape.submit()?; // one submission: forward, backward and Adam
        if let Some(r) = read {
            println!("step {:>3}: {:.2} nats per example", step + 1, r.get()?[0] / batch as f32);
        }
    }

    // Encode, decode, sample.
    let x = Tensor::from_slice(&gpu, 4, d, &data[..4 * d])?;
    let (mu, _logvar) = vae.encode(&gpu, &x)?;
    println!("latent means of 4 examples: {:?}", &mu.to_vec(&gpu)?[..8]);
    let recon = vae.decode(&gpu, &mu)?.to_vec(&gpu)?;
    println!("first reconstructed pixels: {:?}", &recon[..8]);
    let samples = vae.sample(&gpu, 16, 7)?;
    println!("sampled {} new examples", samples.rows());

    // Save, and load back elsewhere.
    let path = std::env::temp_dir().join("own_data.safetensors");
    checkpoint::save(&path, &gpu, &vae, Some(&opt), &Default::default())?;
    let again = checkpoint::Checkpoint::load(&path)?.vae(&gpu)?;
    println!("saved and reloaded {} (latent {})", path.display(), again.config.latent);
    Ok(())
}
