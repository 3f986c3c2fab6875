//! The VAE: an MLP encoder to (mu, logvar), the reparameterization z = mu + exp(logvar/2)·eps with
//! eps drawn on the GPU, an MLP decoder to logits (Bernoulli) or means (Gaussian), and the
//! negative ELBO = reconstruction + β·KL(q(z|x) || N(0, I)) in nats.
//!
//! Parameter names (also the checkpoint's tensor names, PyTorch `nn.Linear` layout: `weight`
//! \[out, in\], `bias` \[out\]): `encoder.{i}` for the hidden layers, `fc_mu`, `fc_logvar`, then
//! `decoder.{i}` from the latent up to the output layer. A convolutional model ([`convnet`],
//! `--preset conv`) has `encoder.{2i}` convolutions, `fc_mu`, `fc_logvar`, `decoder_input` and
//! `decoder.{2i}` transposed convolutions instead, with PyTorch's 4-D weight shapes.

pub mod convnet;
#[cfg(not(target_arch = "wasm32"))]
pub mod iwae;
pub mod metrics;
pub mod objective;

use convnet::ConvModules;
pub use convnet::ConvNet;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Linear, Mlp, Param};
use crate::ops::batchnorm::{scaled_batch_norm, BnRunning};
use crate::ops::vae::{
    bce_with_logits, gaussian_nll, gaussian_nll_learned, kl_free_bits, kl_normal, normal, reparameterize, Noise,
};
use crate::ops::{self, elementwise::act_forward, Act};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// The likelihood p(x|z) of the decoder.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Likelihood {
    /// Pixels in \[0, 1\] as Bernoulli probabilities; the decoder emits logits (BCE with logits).
    Bernoulli,
    /// Pixels as a Gaussian with the decoder's output as mean and a fixed variance.
    Gaussian {
        /// σ² of every pixel.
        variance: f32,
    },
    /// Pixels as a Gaussian with the decoder's output as mean and a learned per-pixel
    /// log-variance (`decoder.logvar`, \[D\], starting at 0).
    GaussianLearned,
}

impl std::fmt::Display for Likelihood {
    /// `bernoulli`, `gaussian:VARIANCE` or `gaussian:learned`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Likelihood::Bernoulli => f.write_str("bernoulli"),
            Likelihood::Gaussian { variance } => write!(f, "gaussian:{variance}"),
            Likelihood::GaussianLearned => f.write_str("gaussian:learned"),
        }
    }
}

impl std::str::FromStr for Likelihood {
    type Err = Error;
    /// Reads the `Display` form (`gaussian` alone means σ² = 1).
    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            None if s == "bernoulli" => Ok(Likelihood::Bernoulli),
            None if s == "gaussian" => Ok(Likelihood::Gaussian { variance: 1.0 }),
            Some(("gaussian", "learned")) => Ok(Likelihood::GaussianLearned),
            Some(("gaussian", v)) => match v.parse::<f32>() {
                Ok(variance) if variance.is_finite() && variance > 0.0 => Ok(Likelihood::Gaussian { variance }),
                _ => Err(Error::arg("likelihood", format!("`{v}` is not a positive variance"))),
            },
            _ => Err(Error::arg(
                "likelihood",
                format!("`{s}` is not one of: bernoulli, gaussian[:VARIANCE], gaussian:learned"),
            )),
        }
    }
}

crate::string_serde!(Likelihood);

/// Which model: the VAE, or the plain deterministic autoencoder for comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// Variational autoencoder: q(z|x) = N(mu, diag(exp(logvar))), z sampled, KL to N(0, I).
    Vae,
    /// Deterministic autoencoder: z = mu, no sampling, no KL (no `fc_logvar` layer).
    Ae,
    /// Conditional VAE (Sohn et al. 2015): encoder and decoder also see the one-hot label.
    Cvae,
}

impl ModelKind {
    /// `vae`, `ae` or `cvae`.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Vae => "vae",
            ModelKind::Ae => "ae",
            ModelKind::Cvae => "cvae",
        }
    }
}

impl std::fmt::Display for ModelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ModelKind {
    type Err = Error;
    /// Reads [`ModelKind::name`].
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "vae" => Ok(ModelKind::Vae),
            "ae" => Ok(ModelKind::Ae),
            "cvae" => Ok(ModelKind::Cvae),
            _ => Err(Error::arg("model", format!("`{s}` is not one of: vae, ae, cvae"))),
        }
    }
}

crate::string_serde!(ModelKind);

fn default_model() -> ModelKind {
    // Checkpoints from before the `model` key were all VAEs.
    ModelKind::Vae
}

/// Architecture of a [`Vae`]. Serialized (checkpoint metadata `config`) with the names of its
/// fields, the enums as the strings the CLI takes, and `bn_tau` as `bn_vae_tau`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VaeConfig {
    /// VAE or plain autoencoder.
    #[serde(default = "default_model")]
    pub model: ModelKind,
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
    /// BN-VAE (Zhu et al. 2020): batch-normalize the posterior mean with scale floor τ ∈ \[0, 1\].
    #[serde(rename = "bn_vae_tau")]
    pub bn_tau: Option<f32>,
    /// Label classes the CVAE conditions on (0 for the other models).
    #[serde(default)]
    pub classes: usize,
    /// A convolutional encoder and decoder instead of the MLP (`hidden` is then empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conv: Option<ConvNet>,
}

impl VaeConfig {
    /// The classic VAE of Kingma & Welling / PyTorch's example: 784-400-20-400-784, ReLU,
    /// Bernoulli likelihood.
    pub fn classic() -> Self {
        VaeConfig {
            model: ModelKind::Vae,
            input_dim: 784,
            hidden: vec![400],
            latent: 20,
            activation: Act::Relu,
            likelihood: Likelihood::Bernoulli,
            bn_tau: None,
            classes: 0,
            conv: None,
        }
    }

    /// Issue 11's `--preset conv` for 28x28 grayscale (see [`ConvNet::preset_conv`]), Z = 20,
    /// ReLU, Bernoulli.
    pub fn conv() -> Self {
        VaeConfig { hidden: vec![], conv: Some(ConvNet::preset_conv()), ..VaeConfig::classic() }
    }

    /// Issue 11's `--preset conv64` for 64x64 RGB (see [`ConvNet::preset_conv64`]): batch norm,
    /// LeakyReLU (slope 0.01), Z = 128, Bernoulli.
    pub fn conv64() -> Self {
        VaeConfig {
            input_dim: 3 * 64 * 64,
            hidden: vec![],
            latent: 128,
            activation: Act::LeakyRelu(0.01),
            conv: Some(ConvNet::preset_conv64()),
            ..VaeConfig::classic()
        }
    }

    /// Checks that every size is usable: each at least 1 and at most [`MAX_DIM`], at most
    /// [`MAX_LAYERS`] hidden layers (so every product of sizes fits comfortably in a u64).
    pub fn validate(&self) -> Result<()> {
        if self.input_dim == 0 {
            return Err(Error::arg("input_dim", "must be at least 1"));
        }
        for (name, v) in [("input_dim", self.input_dim), ("latent", self.latent), ("classes", self.classes)]
            .into_iter()
            .chain(self.hidden.iter().map(|&h| ("hidden", h)))
        {
            if v > MAX_DIM {
                return Err(Error::arg(name, format!("{v} is larger than the largest size wgvae takes, {MAX_DIM}")));
            }
        }
        if self.hidden.len() > MAX_LAYERS {
            return Err(Error::arg(
                "hidden",
                format!("{} hidden layers; at most {MAX_LAYERS} are supported", self.hidden.len()),
            ));
        }
        if self.latent == 0 {
            return Err(Error::arg("latent", "the latent dimension must be at least 1"));
        }
        if let Some(h) = self.hidden.iter().find(|&&h| h == 0) {
            return Err(Error::arg("hidden", format!("hidden sizes must be at least 1, got {h}")));
        }
        if self.model == ModelKind::Cvae && self.classes < 2 {
            return Err(Error::arg("classes", "the conditional VAE needs labeled data with at least 2 classes"));
        }
        if let Some(net) = &self.conv {
            net.validate()?;
            let image: usize = net.image.iter().product();
            if image != self.input_dim {
                return Err(Error::arg(
                    "conv",
                    format!(
                        "the conv model's image {:?} has {image} values but the data has {}",
                        net.image, self.input_dim
                    ),
                ));
            }
            if !self.hidden.is_empty() {
                return Err(Error::arg("hidden", "a conv model has no hidden dense layers"));
            }
        }
        if let Some(t) = self.bn_tau {
            if !(0.0..=1.0).contains(&t) {
                return Err(Error::arg("bn_tau", format!("tau = {t} is outside [0, 1]")));
            }
            if self.model == ModelKind::Ae {
                return Err(Error::arg("bn_tau", "the plain autoencoder has no posterior to keep from collapsing"));
            }
        }
        Ok(())
    }
}

/// The largest input, hidden, latent or class count a [`VaeConfig`] takes (kernels index with
/// u32, and a weight matrix of two such sizes must still be countable).
pub const MAX_DIM: usize = 1 << 24;
/// The most hidden layers a [`VaeConfig`] takes.
pub const MAX_LAYERS: usize = 64;

impl VaeConfig {
    /// The tensors a checkpoint of this model holds (PyTorch state-dict names and shapes; Adam's
    /// moments aside), computed from the config alone: no weight is created. Errors as
    /// [`VaeConfig::validate`].
    pub fn state_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        self.validate()?;
        let cond = if self.model == ModelKind::Cvae { self.classes } else { 0 };
        let mut out = Vec::new();
        let layers = |name: &str, sizes: &[usize], out: &mut Vec<(String, Vec<usize>)>| {
            for (i, w) in sizes.windows(2).enumerate() {
                out.push((format!("{name}.{i}.weight"), vec![w[1], w[0]]));
                out.push((format!("{name}.{i}.bias"), vec![w[1]]));
            }
        };
        let mut enc = vec![self.input_dim + cond];
        enc.extend(&self.hidden);
        let last = match &self.conv {
            // A conditional conv model takes the one-hot label at its dense layers: after the
            // flatten (into fc_mu / fc_logvar) and with z (into decoder_input).
            Some(net) => {
                out.extend(net.encoder_state_shapes()?);
                net.flat_dim()? + cond
            }
            None => {
                layers("encoder", &enc, &mut out);
                *enc.last().unwrap_or(&self.input_dim)
            }
        };
        out.push(("fc_mu.weight".into(), vec![self.latent, last]));
        out.push(("fc_mu.bias".into(), vec![self.latent]));
        if self.model != ModelKind::Ae {
            out.push(("fc_logvar.weight".into(), vec![self.latent, last]));
            out.push(("fc_logvar.bias".into(), vec![self.latent]));
        }
        if self.bn_tau.is_some() {
            out.push(("bn_mu.theta".into(), vec![1, self.latent]));
        }
        if self.likelihood == Likelihood::GaussianLearned {
            out.push(("decoder.logvar".into(), vec![1, self.input_dim]));
        }
        match &self.conv {
            Some(net) => out.extend(net.decoder_state_shapes(self.latent + cond)?),
            None => {
                let mut dec = vec![self.latent + cond];
                dec.extend(self.hidden.iter().rev());
                dec.push(self.input_dim);
                layers("decoder", &dec, &mut out);
            }
        }
        if self.bn_tau.is_some() {
            out.push(("bn_mu.running_mean".into(), vec![self.latent]));
            out.push(("bn_mu.running_var".into(), vec![self.latent]));
        }
        Ok(out)
    }

    /// Number of trained f32 values (weights, biases, BN-VAE's θ, a learned variance), with
    /// checked arithmetic.
    pub fn param_count(&self) -> Result<u64> {
        let mut n = 0u64;
        for (name, shape) in self.state_shapes()? {
            if convnet::is_running_statistic(&name) {
                continue;
            }
            let k = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
            n = k.and_then(|k| n.checked_add(k)).ok_or_else(|| Error::arg("config", "the model's size overflows"))?;
        }
        Ok(n)
    }

    /// Checks, before anything is allocated, that the model's parameters fit the device: they
    /// live in one packed buffer (and so do their gradients and Adam's two moments). The error
    /// says the widest hidden layer that would fit.
    pub fn check_fits(&self, gpu: &Gpu) -> Result<()> {
        let limit = gpu.max_tensor_elements();
        let n = self.param_count()?;
        if n <= limit {
            return Ok(());
        }
        let fits = |h: usize| {
            let c = VaeConfig { hidden: self.hidden.iter().map(|&x| x.min(h)).collect(), ..self.clone() };
            c.param_count().is_ok_and(|n| n <= limit)
        };
        let widest = self.hidden.iter().copied().max().unwrap_or(0);
        let hint = if widest > 1 && fits(1) {
            let (mut lo, mut hi) = (1usize, widest);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if fits(mid) {
                    lo = mid
                } else {
                    hi = mid
                }
            }
            format!("; the widest hidden layer that fits is {lo}")
        } else {
            String::new()
        };
        Err(Error::DeviceLimit {
            what: format!("the model's {n} parameters (one packed buffer{hint})"),
            needed: n.saturating_mul(4),
            limit: limit * 4,
            limit_name: "max_storage_buffer_binding_size",
        })
    }
}

/// Noise stream of the reparameterization's eps (binarization uses another).
pub const STREAM_EPS: u32 = 0;

/// Name of the stacked posterior head's parameters (`HEAD.weight`, `HEAD.bias`): rows of
/// `fc_mu` then rows of `fc_logvar`.
pub const HEAD: &str = "fc_mu+fc_logvar";

/// The values of one forward pass.
#[derive(Clone, Debug)]
pub struct VaeOutput {
    /// The encoder head's output \[B, 2Z\] = \[mu | logvar\] (\[B, Z\] = mu for the autoencoder).
    pub head: Var,
    /// Posterior means \[B, Z\], when the forward pass made them separately (BN-VAE, the
    /// autoencoder); [`Vae::posterior`] gives them in every case.
    pub mu: Option<Var>,
    /// Posterior log-variances \[B, Z\], when made separately (BN-VAE).
    pub logvar: Option<Var>,
    /// Sampled latents \[B, Z\].
    pub z: Var,
    /// Decoder outputs [B, D]: logits (Bernoulli) or means (Gaussian).
    pub out: Var,
    /// KL per example \[B, 1\] from the fused latent kernel (a value for the fused objective).
    pub kl_rows: Option<Tensor>,
}

/// The loss terms of one batch, each \[1, 1\] and summed over the batch (divide by B for nats per
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
    /// Last hidden -> posterior parameters \[mu | logvar\] in ONE matmul (2Z outputs; Z, mu only,
    /// for the autoencoder). Its parameters are named `fc_mu+fc_logvar.weight` / `.bias`; in
    /// checkpoints and [`crate::checkpoint::state_dict`] its rows are PyTorch's two layers `fc_mu` and
    /// `fc_logvar` (the autoencoder's head is `fc_mu` itself).
    pub head: Linear,
    /// Latent -> hidden layers -> output (identity on the output).
    pub decoder: Mlp,
    /// BN-VAE layer on the posterior mean, if configured.
    pub bn: Option<BnLayer>,
    /// Learned per-pixel log-variance of the Gaussian likelihood (`decoder.logvar`, \[1, D\]).
    pub out_logvar: Option<Param>,
    /// The convolutional encoder and decoder of a conv model (`encoder` and `decoder` are then
    /// empty).
    pub conv: Option<ConvModules>,
}

/// The BN-VAE layer: scaled batch normalization of the posterior mean.
#[derive(Clone, Debug)]
pub struct BnLayer {
    /// Learned scale parameters θ \[1, Z\] (`bn_mu.theta`), γ = √(τ + (1 − τ)·sigmoid(θ)).
    pub theta: Param,
    /// Running statistics for evaluation (`bn_mu.running_mean`, `bn_mu.running_var`).
    pub running: BnRunning,
    /// The floor τ.
    pub tau: f32,
}

impl Vae {
    /// A freshly initialised VAE (PyTorch's `nn.Linear` initialisation, from `seed`).
    pub fn new(gpu: &Gpu, config: VaeConfig, seed: u64) -> Result<Self> {
        config.check_fits(gpu)?; // before any weight is drawn on the CPU
        let act = config.activation;
        // The CVAE's encoder sees [x | one-hot y], its decoder [z | one-hot y].
        let cond = if config.model == ModelKind::Cvae { config.classes } else { 0 };
        let mut enc_sizes = vec![config.input_dim + cond];
        enc_sizes.extend(&config.hidden);
        let last = *enc_sizes.last().unwrap_or(&config.input_dim);
        let mut dec_sizes = vec![config.latent + cond];
        dec_sizes.extend(config.hidden.iter().rev());
        dec_sizes.push(config.input_dim);
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(0x5EED));
        let conv = match &config.conv {
            Some(net) => Some(ConvModules::new(gpu, net, config.latent + cond, act, &mut rng)?),
            None => None,
        };
        let last = match &config.conv {
            Some(net) => net.flat_dim()? + cond,
            None => last,
        };
        let encoder = if enc_sizes.len() > 1 && conv.is_none() {
            Mlp::new(gpu, "encoder", &enc_sizes, act, act, seed)?
        } else {
            Mlp { layers: vec![] }
        };
        // fc_mu's and fc_logvar's values are drawn one after the other, as two separate layers
        // would be, and stacked: the head is [fc_mu; fc_logvar].
        let z = config.latent;
        let (mut w, mut b) = Linear::init_values("fc_mu", last, z, &mut rng)?;
        let head = match config.model {
            ModelKind::Vae | ModelKind::Cvae => {
                let (wl, bl) = Linear::init_values("fc_logvar", last, z, &mut rng)?;
                w.extend(wl);
                b.extend(bl);
                Linear::from_values(gpu, HEAD, last, 2 * z, &w, &b, Act::Identity)?
            }
            ModelKind::Ae => Linear::from_values(gpu, "fc_mu", last, z, &w, &b, Act::Identity)?,
        };
        let decoder = match conv {
            Some(_) => Mlp { layers: vec![] },
            None => Mlp::new(gpu, "decoder", &dec_sizes, act, Act::Identity, seed.wrapping_add(1))?,
        };
        let bn = match config.bn_tau {
            Some(tau) => Some(BnLayer {
                theta: Param::new("bn_mu.theta", Tensor::zeros(gpu, 1, config.latent)?),
                running: BnRunning::new(gpu, config.latent)?,
                tau,
            }),
            None => None,
        };
        let out_logvar = match config.likelihood {
            Likelihood::GaussianLearned => Some(Param::new("decoder.logvar", Tensor::zeros(gpu, 1, config.input_dim)?)),
            _ => None,
        };
        let mut vae = Vae { config, encoder, head, decoder, bn, out_logvar, conv };
        // One buffer for every parameter, one for every gradient: one Adam dispatch per step.
        crate::nn::pack(gpu, &mut vae.params_mut())?;
        Ok(vae)
    }

    /// Every parameter, mutably, in the order of [`Vae::params`].
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let (mut p, mut dec) = match &mut self.conv {
            Some(c) => c.params_mut_split(),
            None => (self.encoder.params_mut(), self.decoder.params_mut()),
        };
        p.extend(self.head.params_mut());
        if let Some(bn) = &mut self.bn {
            p.push(&mut bn.theta);
        }
        if let Some(lv) = &mut self.out_logvar {
            p.push(lv);
        }
        p.append(&mut dec);
        p
    }

    /// Whether the model has a posterior variance (every model but the plain autoencoder).
    pub fn has_logvar(&self) -> bool {
        self.config.model != ModelKind::Ae
    }

    /// Every parameter, in the order of the names in the module docs.
    pub fn params(&self) -> Vec<&Param> {
        let (mut p, dec) = match &self.conv {
            Some(c) => (c.encoder_params(), c.decoder_params()),
            None => (self.encoder.params(), self.decoder.params()),
        };
        p.extend(self.head.params());
        if let Some(bn) = &self.bn {
            p.push(&bn.theta);
        }
        if let Some(lv) = &self.out_logvar {
            p.push(lv);
        }
        p.extend(dec);
        p
    }

    /// Records the decoder from its input (z, or \[z | one-hot y\] for the CVAE) to the output
    /// logits or means.
    pub fn decode_vars(&self, tape: &mut Tape, zin: Var) -> Result<Var> {
        match &self.conv {
            Some(c) => c.decode(tape, zin),
            None => self.decoder.forward(tape, zin),
        }
    }

    /// Non-trainable state saved with the weights (running statistics of conv batch norms and the
    /// BN-VAE layer).
    pub fn buffers(&self) -> Vec<(String, &Tensor)> {
        let mut out = match &self.conv {
            Some(c) => c.buffers(),
            None => vec![],
        };
        if let Some(bn) = &self.bn {
            out.push(("bn_mu.running_mean".into(), &bn.running.mean));
            out.push(("bn_mu.running_var".into(), &bn.running.var));
        }
        out
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

    /// Records q(z|x): (mu, logvar); no logvar for the plain autoencoder.
    pub fn encode_vars(&self, tape: &mut Tape, x: Var) -> Result<(Var, Option<Var>)> {
        self.encode_vars_cond(tape, x, None)
    }

    /// The one-hot condition `y` \[B, classes\], required by (and only by) the CVAE.
    fn condition(&self, tape: &Tape, rows: usize, y: Option<Var>) -> Result<Option<Var>> {
        match (self.config.model, y) {
            (ModelKind::Cvae, None) => Err(Error::arg("labels", "the conditional VAE needs a label for every example")),
            (ModelKind::Cvae, Some(y)) => {
                if tape.value(y).shape() != [rows, self.config.classes] {
                    return Err(Error::shape(
                        "Vae",
                        format!("labels are {:?}, expected [{rows}, {}]", tape.value(y).shape(), self.config.classes),
                    ));
                }
                Ok(Some(y))
            }
            (_, _) => Ok(None),
        }
    }

    /// Records q(z|x, y) for the CVAE (y: one-hot \[B, classes\]); `y` is ignored by other models.
    pub fn encode_vars_cond(&self, tape: &mut Tape, x: Var, y: Option<Var>) -> Result<(Var, Option<Var>)> {
        let (head, mu) = self.encode_head(tape, x, y)?;
        self.split_head(tape, head, mu)
    }

    /// The head's output and, for the BN-VAE, the normalized posterior mean.
    fn encode_head(&self, tape: &mut Tape, x: Var, y: Option<Var>) -> Result<(Var, Option<Var>)> {
        self.check_input(tape.value(x))?;
        let rows = tape.value(x).rows();
        let y = self.condition(tape, rows, y)?;
        let cat = |tape: &mut Tape, a: Var| match y {
            Some(y) => crate::ops::concat::concat_cols(tape, a, y),
            None => Ok(a),
        };
        // The MLP sees [x | y]; a conv encoder sees the image and the label joins its flattened
        // features.
        let h = match &self.conv {
            Some(c) => {
                let h = c.encode(tape, x)?;
                cat(tape, h)?
            }
            None => {
                let x = cat(tape, x)?;
                self.encoder.forward(tape, x)?
            }
        };
        let head = self.head.forward(tape, h)?;
        let Some(bn) = &self.bn else { return Ok((head, None)) };
        // Batch statistics while training (a tape that records gradients), running ones otherwise.
        let mu = crate::ops::vae::slice_cols(tape, head, 0, self.config.latent)?;
        let theta = bn.theta.var(tape);
        let training = tape.grad_enabled();
        Ok((head, Some(scaled_batch_norm(tape, mu, theta, bn.tau, &bn.running, training)?)))
    }

    /// (mu, logvar) from the head's output; `mu` when already made (BN-VAE).
    fn split_head(&self, tape: &mut Tape, head: Var, mu: Option<Var>) -> Result<(Var, Option<Var>)> {
        let z = self.config.latent;
        if self.config.model == ModelKind::Ae {
            return Ok((head, None));
        }
        let mu = match mu {
            Some(m) => m,
            None => crate::ops::vae::slice_cols(tape, head, 0, z)?,
        };
        Ok((mu, Some(crate::ops::vae::slice_cols(tape, head, z, z)?)))
    }

    /// The posterior's (mu, logvar) vars of a forward pass (no logvar for the autoencoder),
    /// sliced from the head's output where the forward pass did not make them.
    pub fn posterior(&self, tape: &mut Tape, out: &VaeOutput) -> Result<(Var, Option<Var>)> {
        match (out.mu, out.logvar) {
            (Some(mu), lv) if lv.is_some() || self.config.model == ModelKind::Ae => Ok((mu, lv)),
            (mu, _) => self.split_head(tape, out.head, mu),
        }
    }

    /// Records the full forward pass with eps drawn from `noise` (the autoencoder uses z = mu).
    pub fn forward(&self, tape: &mut Tape, x: Var, noise: Noise) -> Result<VaeOutput> {
        self.forward_cond(tape, x, None, noise)
    }

    /// [`Vae::forward`] with the CVAE's one-hot labels `y` \[B, classes\].
    ///
    /// The VAE without BN takes the fused path: one kernel draws eps, reparameterizes and
    /// computes the KL per example straight from the head's output. The BN-VAE normalizes the
    /// sliced posterior mean first and runs the separate kernels.
    pub fn forward_cond(&self, tape: &mut Tape, x: Var, y: Option<Var>, noise: Noise) -> Result<VaeOutput> {
        let (head, bn_mu) = self.encode_head(tape, x, y)?;
        let z = self.config.latent;
        let (zv, mu, logvar, kl_rows) = match (self.config.model, bn_mu) {
            (ModelKind::Ae, _) => (head, Some(head), None, None),
            (_, None) => {
                let (zv, kl) = crate::ops::vae::latent(tape, head, z, noise)?;
                (zv, None, None, Some(kl))
            }
            (_, Some(mu)) => {
                let lv = crate::ops::vae::slice_cols(tape, head, z, z)?;
                let b = tape.value(mu).rows();
                let eps = normal(tape, b, z, noise)?;
                (reparameterize(tape, mu, lv, &eps)?, Some(mu), Some(lv), None)
            }
        };
        let rows = tape.value(zv).rows();
        let zin = match self.condition(tape, rows, y)? {
            Some(y) => crate::ops::concat::concat_cols(tape, zv, y)?,
            None => zv,
        };
        let out = self.decode_vars(tape, zin)?;
        Ok(VaeOutput { head, mu, logvar, z: zv, out, kl_rows })
    }

    /// Records the negative ELBO of `target` (the batch) with KL weight `beta`, sums reduced.
    pub fn loss(&self, tape: &mut Tape, out: &VaeOutput, target: &Tensor, beta: f32) -> Result<Loss> {
        self.objective_loss(tape, out, target, 1.0, beta, 0.0)
    }

    /// Records recon_scale·Σ recon + kl_scale·KL, where KL is the batch's summed KL or, with
    /// `free_bits` > 0, its free-bits form ([`crate::ops::vae::kl_free_bits`]). The reported
    /// `recon` and `kl` are always the plain sums (the autoencoder reports KL 0).
    pub fn objective_loss(
        &self,
        tape: &mut Tape,
        out: &VaeOutput,
        target: &Tensor,
        recon_scale: f32,
        kl_scale: f32,
        free_bits: f32,
    ) -> Result<Loss> {
        self.objective_loss_acc(tape, out, target, recon_scale, kl_scale, free_bits, None)
    }

    /// [`Vae::objective_loss`] that also adds the batch's Σ recon and Σ KL to `acc` (two \[1,1\]
    /// accumulators on the GPU, e.g. an epoch's sums).
    ///
    /// Bernoulli and fixed-variance Gaussian likelihoods with the plain KL (no free bits) take the
    /// fused path: reconstruction, its gradient, the sums and the accumulation in two kernels
    /// ([`crate::ops::vae::fused_objective`]). The rest runs the separate kernels.
    #[allow(clippy::too_many_arguments)]
    pub fn objective_loss_acc(
        &self,
        tape: &mut Tape,
        out: &VaeOutput,
        target: &Tensor,
        recon_scale: f32,
        kl_scale: f32,
        free_bits: f32,
        acc: Option<(&Tensor, &Tensor)>,
    ) -> Result<Loss> {
        use crate::ops::vae::{fused_objective, FusedLikelihood};
        let like = match self.config.likelihood {
            Likelihood::Bernoulli => Some(FusedLikelihood::Bernoulli),
            Likelihood::Gaussian { variance } => Some(FusedLikelihood::Gaussian(variance)),
            Likelihood::GaussianLearned => None,
        };
        let kl_fused = match (&out.kl_rows, self.config.model) {
            (_, ModelKind::Ae) => Some(None),
            (Some(rows), _) if free_bits == 0.0 => Some(Some((out.head, rows))),
            _ => None,
        };
        if let (Some(like), Some(kl)) = (like, kl_fused) {
            let f = fused_objective(tape, out.out, target, like, kl, recon_scale, kl_scale, acc)?;
            let (recon, kl) = (tape.input(f.recon), tape.input(f.kl));
            return Ok(Loss { total: f.total, recon, kl });
        }
        let rec = self.recon_nll(tape, out.out, target)?;
        let recon = ops::sum(tape, rec)?;
        let rterm = if recon_scale == 1.0 { recon } else { ops::scale(tape, recon, recon_scale)? };
        let (mu, logvar) = self.posterior(tape, out)?;
        let loss = match logvar {
            None => {
                let zero = ops::elementwise::fill(tape, 1, 1, 0.0)?;
                let kl = tape.input(zero);
                Loss { total: rterm, recon, kl }
            }
            Some(logvar) => {
                let kl_rows = kl_normal(tape, mu, logvar)?;
                let kl = ops::sum(tape, kl_rows)?;
                let kterm = if free_bits > 0.0 { kl_free_bits(tape, mu, logvar, free_bits)? } else { kl };
                let kterm = if kl_scale == 1.0 { kterm } else { ops::scale(tape, kterm, kl_scale)? };
                let total = ops::add(tape, rterm, kterm)?;
                Loss { total, recon, kl }
            }
        };
        if let Some((ar, ak)) = acc {
            let (r, k) = (tape.value(loss.recon).clone(), tape.value(loss.kl).clone());
            ops::vae::accumulate_loss(tape, &r, &k, ar, ak)?;
        }
        Ok(loss)
    }

    /// Per-example −log p(x|z) \[B,1\] in nats of `target` given the decoder output `out`.
    pub fn recon_nll(&self, tape: &mut Tape, out: Var, target: &Tensor) -> Result<Var> {
        match (self.config.likelihood, &self.out_logvar) {
            (Likelihood::Bernoulli, _) => bce_with_logits(tape, out, target),
            (Likelihood::Gaussian { variance }, _) => gaussian_nll(tape, out, target, variance),
            (Likelihood::GaussianLearned, Some(lv)) => {
                let lv = lv.var(tape);
                gaussian_nll_learned(tape, out, target, lv)
            }
            (Likelihood::GaussianLearned, None) => Err(Error::arg("likelihood", "the learned variance is missing")),
        }
    }

    /// Decoder outputs as pixels in [0, 1]: sigmoid of the logits, or the clamped Gaussian means.
    pub fn decode(&self, gpu: &Gpu, z: &Tensor) -> Result<Tensor> {
        self.decode_cond(gpu, z, None)
    }

    /// [`Vae::decode`] with the CVAE's one-hot labels \[n, classes\].
    pub fn decode_cond(&self, gpu: &Gpu, z: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        if z.cols() != self.config.latent {
            return Err(Error::shape(
                "Vae::decode",
                format!("latents have {} dims, the model has {}", z.cols(), self.config.latent),
            ));
        }
        let mut tape = Tape::no_grad(gpu);
        let zv = tape.input(z.clone());
        let yv = y.map(|y| tape.input(y.clone()));
        let zin = match self.condition(&tape, z.rows(), yv)? {
            Some(y) => crate::ops::concat::concat_cols(&mut tape, zv, y)?,
            None => zv,
        };
        let out = self.decode_vars(&mut tape, zin)?;
        let out = tape.value(out).clone();
        let px = match self.config.likelihood {
            Likelihood::Bernoulli => act_forward(&mut tape, &out, Act::Sigmoid)?,
            Likelihood::Gaussian { .. } | Likelihood::GaussianLearned => out,
        };
        tape.submit()?;
        Ok(px)
    }

    /// Posterior means and log-variances of a batch (no log-variances for the autoencoder).
    pub fn encode(&self, gpu: &Gpu, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.encode_cond(gpu, x, None)
    }

    /// [`Vae::encode`] with the CVAE's one-hot labels.
    pub fn encode_cond(&self, gpu: &Gpu, x: &Tensor, y: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let mut tape = Tape::no_grad(gpu);
        let xv = tape.input(x.clone());
        let yv = y.map(|y| tape.input(y.clone()));
        let (mu, lv) = self.encode_vars_cond(&mut tape, xv, yv)?;
        let r = (tape.value(mu).clone(), lv.map(|lv| tape.value(lv).clone()));
        tape.submit()?;
        Ok(r)
    }

    /// Decodes n draws from the prior N(0, I).
    pub fn sample(&self, gpu: &Gpu, n: usize, seed: u64) -> Result<Tensor> {
        self.sample_cond(gpu, n, seed, None)
    }

    /// [`Vae::sample`] for the CVAE's one-hot labels \[n, classes\] (the class of each sample).
    pub fn sample_cond(&self, gpu: &Gpu, n: usize, seed: u64, y: Option<&Tensor>) -> Result<Tensor> {
        if n == 0 {
            return Err(Error::arg("n", "must be at least 1"));
        }
        let mut tape = Tape::no_grad(gpu);
        let z = normal(&mut tape, n, self.config.latent, Noise { seed, step: 0, stream: 7 })?;
        tape.submit()?;
        self.decode_cond(gpu, &z, y)
    }

    /// Reconstructions through the posterior means (no sampling), as pixels in \[0, 1\].
    pub fn reconstruct(&self, gpu: &Gpu, x: &Tensor) -> Result<Tensor> {
        self.reconstruct_cond(gpu, x, None)
    }

    /// [`Vae::reconstruct`] with the CVAE's one-hot labels.
    pub fn reconstruct_cond(&self, gpu: &Gpu, x: &Tensor, y: Option<&Tensor>) -> Result<Tensor> {
        let (mu, _) = self.encode_cond(gpu, x, y)?;
        self.decode_cond(gpu, &mu, y)
    }

    /// Posterior means (and log-variances; none for the autoencoder) of `x`: rows of
    /// `input_dim` values, as plain numbers. Blocks; see [`Vae::encode_values_async`]. (Not for the
    /// conditional VAE, which also needs labels: use [`Vae::encode_cond`].)
    #[cfg(not(target_arch = "wasm32"))]
    pub fn encode_values(&self, gpu: &Gpu, x: &[f32]) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        pollster::block_on(self.encode_values_async(gpu, x))
    }

    /// [`Vae::encode_values`] without blocking.
    pub async fn encode_values_async(&self, gpu: &Gpu, x: &[f32]) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let d = self.config.input_dim;
        if x.is_empty() || !x.len().is_multiple_of(d) {
            return Err(Error::shape("Vae::encode_values", format!("{} values are not rows of {d}", x.len())));
        }
        let t = Tensor::from_slice(gpu, x.len() / d, d, x)?;
        let (mu, lv) = self.encode(gpu, &t)?;
        let lv = match lv {
            Some(l) => Some(l.to_vec_async(gpu).await?),
            None => None,
        };
        Ok((mu.to_vec_async(gpu).await?, lv))
    }

    /// Decoded pixels in \[0, 1\] of `z`: rows of `latent` values. Blocks; see
    /// [`Vae::decode_values_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn decode_values(&self, gpu: &Gpu, z: &[f32]) -> Result<Vec<f32>> {
        pollster::block_on(self.decode_values_async(gpu, z))
    }

    /// [`Vae::decode_values`] without blocking.
    pub async fn decode_values_async(&self, gpu: &Gpu, z: &[f32]) -> Result<Vec<f32>> {
        let l = self.config.latent;
        if z.is_empty() || !z.len().is_multiple_of(l) {
            return Err(Error::shape("Vae::decode_values", format!("{} values are not rows of {l}", z.len())));
        }
        let t = Tensor::from_slice(gpu, z.len() / l, l, z)?;
        self.decode(gpu, &t)?.to_vec_async(gpu).await
    }

    /// `n` draws from the prior, decoded (rows of `input_dim` values in \[0, 1\]). Blocks; see
    /// [`Vae::sample_values_async`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn sample_values(&self, gpu: &Gpu, n: usize, seed: u64) -> Result<Vec<f32>> {
        pollster::block_on(self.sample_values_async(gpu, n, seed))
    }

    /// [`Vae::sample_values`] without blocking.
    pub async fn sample_values_async(&self, gpu: &Gpu, n: usize, seed: u64) -> Result<Vec<f32>> {
        self.sample(gpu, n, seed)?.to_vec_async(gpu).await
    }
}
