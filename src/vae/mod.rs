//! The VAE: an MLP encoder to (mu, logvar), the reparameterization z = mu + exp(logvar/2)·eps with
//! eps drawn on the GPU, an MLP decoder to logits (Bernoulli) or means (Gaussian), and the
//! negative ELBO = reconstruction + β·KL(q(z|x) || N(0, I)) in nats.
//!
//! Parameter names (also the checkpoint's tensor names, PyTorch `nn.Linear` layout: `weight`
//! [out, in], `bias` [out]): `encoder.{i}` for the hidden layers, `fc_mu`, `fc_logvar`, then
//! `decoder.{i}` from the latent up to the output layer.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Linear, Mlp, Param};
use crate::ops::vae::{bce_with_logits, gaussian_nll, kl_normal, normal, reparameterize, Noise};
use crate::ops::{self, elementwise::act_forward, Act};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// The likelihood p(x|z) of the decoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Likelihood {
    /// Pixels in [0, 1] as Bernoulli probabilities; the decoder emits logits (BCE with logits).
    Bernoulli,
    /// Pixels as a Gaussian with the decoder's output as mean and a fixed variance.
    Gaussian {
        /// σ² of every pixel.
        variance: f32,
    },
}

impl Likelihood {
    /// `bernoulli` or `gaussian` / `gaussian:VARIANCE`.
    pub fn name(&self) -> String {
        match self {
            Likelihood::Bernoulli => "bernoulli".into(),
            Likelihood::Gaussian { variance } => format!("gaussian:{variance}"),
        }
    }
    /// Parses [`Likelihood::name`]'s form (`gaussian` alone means σ² = 1).
    pub fn parse(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "bernoulli" => Ok(Likelihood::Bernoulli),
            None if s == "gaussian" => Ok(Likelihood::Gaussian { variance: 1.0 }),
            Some(("gaussian", v)) => match v.parse::<f32>() {
                Ok(variance) if variance.is_finite() && variance > 0.0 => Ok(Likelihood::Gaussian { variance }),
                _ => Err(Error::arg("likelihood", format!("`{v}` is not a positive variance"))),
            },
            _ => Err(Error::arg("likelihood", format!("`{s}` is not one of: bernoulli, gaussian[:variance]"))),
        }
    }
}

/// Architecture of a [`Vae`].
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// Pixels per input (784 for 28x28).
    pub input_dim: usize,
    /// Hidden layer widths of the encoder; the decoder mirrors them.
    pub hidden: Vec<usize>,
    /// Latent dimension Z.
    pub latent: usize,
    /// Activation after every hidden layer.
    pub activation: Act,
    /// Decoder likelihood.
    pub likelihood: Likelihood,
}

impl VaeConfig {
    /// The classic VAE of Kingma & Welling / PyTorch's example: 784-400-20-400-784, ReLU,
    /// Bernoulli likelihood.
    pub fn classic() -> Self {
        VaeConfig {
            input_dim: 784,
            hidden: vec![400],
            latent: 20,
            activation: Act::Relu,
            likelihood: Likelihood::Bernoulli,
        }
    }

    /// Checks that every size is usable.
    pub fn validate(&self) -> Result<()> {
        if self.input_dim == 0 {
            return Err(Error::arg("input_dim", "must be at least 1"));
        }
        if self.latent == 0 {
            return Err(Error::arg("--latent", "the latent dimension must be at least 1"));
        }
        if let Some(h) = self.hidden.iter().find(|&&h| h == 0) {
            return Err(Error::arg("--hidden", format!("hidden sizes must be at least 1, got {h}")));
        }
        Ok(())
    }

    /// The config as a JSON object (checkpoint metadata).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "input_dim": self.input_dim,
            "hidden": self.hidden,
            "latent": self.latent,
            "activation": act_name(self.activation),
            "likelihood": self.likelihood.name(),
        })
    }

    /// Reads [`VaeConfig::to_json`]'s form.
    pub fn from_json(v: &serde_json::Value) -> Result<Self> {
        let bad = |what: &str| Error::arg("config", format!("checkpoint config has no valid `{what}`"));
        let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize).ok_or_else(|| bad(k));
        let hidden = v
            .get("hidden")
            .and_then(|h| h.as_array())
            .ok_or_else(|| bad("hidden"))?
            .iter()
            .map(|x| x.as_u64().map(|x| x as usize).ok_or_else(|| bad("hidden")))
            .collect::<Result<Vec<_>>>()?;
        let c = VaeConfig {
            input_dim: num("input_dim")?,
            hidden,
            latent: num("latent")?,
            activation: Act::parse(v.get("activation").and_then(|a| a.as_str()).ok_or_else(|| bad("activation"))?)?,
            likelihood: Likelihood::parse(
                v.get("likelihood").and_then(|a| a.as_str()).ok_or_else(|| bad("likelihood"))?,
            )?,
        };
        c.validate()?;
        Ok(c)
    }
}

/// The name [`Act::parse`] reads back.
pub fn act_name(a: Act) -> String {
    match a {
        Act::Identity => "identity".into(),
        Act::Relu => "relu".into(),
        Act::LeakyRelu(s) => format!("leaky_relu:{s}"),
        Act::Tanh => "tanh".into(),
        Act::Sigmoid => "sigmoid".into(),
        Act::Elu(a) => format!("elu:{a}"),
    }
}

/// Noise stream of the reparameterization's eps (binarization uses another).
pub const STREAM_EPS: u32 = 0;

/// The values of one forward pass.
#[derive(Clone, Copy, Debug)]
pub struct VaeOutput {
    /// Posterior means [B, Z].
    pub mu: Var,
    /// Posterior log-variances [B, Z].
    pub logvar: Var,
    /// Sampled latents [B, Z].
    pub z: Var,
    /// Decoder outputs [B, D]: logits (Bernoulli) or means (Gaussian).
    pub out: Var,
}

/// The loss terms of one batch, each [1, 1] and summed over the batch (divide by B for nats per
/// example).
#[derive(Clone, Copy, Debug)]
pub struct Loss {
    /// recon + β·kl: what is minimised.
    pub total: Var,
    /// Σ_b −log p(x_b | z_b).
    pub recon: Var,
    /// Σ_b KL(q(z|x_b) || N(0, I)).
    pub kl: Var,
}

/// A variational autoencoder whose parameters live on the GPU.
#[derive(Clone, Debug)]
pub struct Vae {
    /// Its architecture.
    pub config: VaeConfig,
    /// Input -> last hidden layer (activation after each).
    pub encoder: Mlp,
    /// Last hidden -> mu.
    pub fc_mu: Linear,
    /// Last hidden -> logvar.
    pub fc_logvar: Linear,
    /// Latent -> hidden layers -> output (identity on the output).
    pub decoder: Mlp,
}

impl Vae {
    /// A freshly initialised VAE (PyTorch's `nn.Linear` initialisation, from `seed`).
    pub fn new(gpu: &Gpu, config: VaeConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let act = config.activation;
        let mut enc_sizes = vec![config.input_dim];
        enc_sizes.extend(&config.hidden);
        let last = *enc_sizes.last().unwrap_or(&config.input_dim);
        let mut dec_sizes = vec![config.latent];
        dec_sizes.extend(config.hidden.iter().rev());
        dec_sizes.push(config.input_dim);
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(0x5EED));
        let encoder = if enc_sizes.len() > 1 {
            Mlp::new(gpu, "encoder", &enc_sizes, act, act, seed)?
        } else {
            Mlp { layers: vec![] }
        };
        let fc_mu = Linear::new(gpu, "fc_mu", last, config.latent, Act::Identity, &mut rng)?;
        let fc_logvar = Linear::new(gpu, "fc_logvar", last, config.latent, Act::Identity, &mut rng)?;
        let decoder = Mlp::new(gpu, "decoder", &dec_sizes, act, Act::Identity, seed.wrapping_add(1))?;
        Ok(Vae { config, encoder, fc_mu, fc_logvar, decoder })
    }

    /// Every parameter, in the order of the names in the module docs.
    pub fn params(&self) -> Vec<&Param> {
        let mut p = self.encoder.params();
        p.extend(self.fc_mu.params());
        p.extend(self.fc_logvar.params());
        p.extend(self.decoder.params());
        p
    }

    fn check_input(&self, x: &Tensor) -> Result<()> {
        if x.cols() != self.config.input_dim {
            return Err(Error::shape(
                "Vae",
                format!("inputs have {} features, the model expects {}", x.cols(), self.config.input_dim),
            ));
        }
        Ok(())
    }

    /// Records q(z|x): (mu, logvar).
    pub fn encode_vars(&self, tape: &mut Tape, x: Var) -> Result<(Var, Var)> {
        self.check_input(tape.value(x))?;
        let h = self.encoder.forward(tape, x)?;
        Ok((self.fc_mu.forward(tape, h)?, self.fc_logvar.forward(tape, h)?))
    }

    /// Records the full forward pass with eps drawn from `noise`.
    pub fn forward(&self, tape: &mut Tape, x: Var, noise: Noise) -> Result<VaeOutput> {
        let (mu, logvar) = self.encode_vars(tape, x)?;
        let (b, z) = (tape.value(mu).rows(), self.config.latent);
        let eps = normal(tape, b, z, noise)?;
        let zv = reparameterize(tape, mu, logvar, &eps)?;
        let out = self.decoder.forward(tape, zv)?;
        Ok(VaeOutput { mu, logvar, z: zv, out })
    }

    /// Records the negative ELBO of `target` (the batch) with KL weight `beta`.
    pub fn loss(&self, tape: &mut Tape, out: &VaeOutput, target: &Tensor, beta: f32) -> Result<Loss> {
        let rec = match self.config.likelihood {
            Likelihood::Bernoulli => bce_with_logits(tape, out.out, target)?,
            Likelihood::Gaussian { variance } => gaussian_nll(tape, out.out, target, variance)?,
        };
        let kl = kl_normal(tape, out.mu, out.logvar)?;
        let recon = ops::sum(tape, rec)?;
        let kl = ops::sum(tape, kl)?;
        let total = if beta == 1.0 {
            ops::add(tape, recon, kl)?
        } else {
            let bk = ops::scale(tape, kl, beta)?;
            ops::add(tape, recon, bk)?
        };
        Ok(Loss { total, recon, kl })
    }

    /// Decoder outputs as pixels in [0, 1]: sigmoid of the logits, or the clamped Gaussian means.
    pub fn decode(&self, gpu: &Gpu, z: &Tensor) -> Result<Tensor> {
        if z.cols() != self.config.latent {
            return Err(Error::shape(
                "Vae::decode",
                format!("latents have {} dims, the model has {}", z.cols(), self.config.latent),
            ));
        }
        let mut tape = Tape::no_grad(gpu);
        let zv = tape.input(z.clone());
        let out = self.decoder.forward(&mut tape, zv)?;
        let out = tape.value(out).clone();
        let px = match self.config.likelihood {
            Likelihood::Bernoulli => act_forward(&mut tape, &out, Act::Sigmoid)?,
            Likelihood::Gaussian { .. } => out,
        };
        tape.submit()?;
        Ok(px)
    }

    /// Posterior means and log-variances of a batch.
    pub fn encode(&self, gpu: &Gpu, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut tape = Tape::no_grad(gpu);
        let xv = tape.input(x.clone());
        let (mu, lv) = self.encode_vars(&mut tape, xv)?;
        let r = (tape.value(mu).clone(), tape.value(lv).clone());
        tape.submit()?;
        Ok(r)
    }

    /// Decodes n draws from the prior N(0, I).
    pub fn sample(&self, gpu: &Gpu, n: usize, seed: u64) -> Result<Tensor> {
        if n == 0 {
            return Err(Error::arg("--n", "must be at least 1"));
        }
        let mut tape = Tape::no_grad(gpu);
        let z = normal(&mut tape, n, self.config.latent, Noise { seed, step: 0, stream: 7 })?;
        tape.submit()?;
        self.decode(gpu, &z)
    }

    /// Reconstructions through the posterior means (no sampling), as pixels in [0, 1].
    pub fn reconstruct(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        let (mu, _) = self.encode(gpu, x)?;
        self.decode(gpu, &mu)
    }
}
