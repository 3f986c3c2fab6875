//! Convolutional encoder and decoder for [`super::Vae`] (issue 11's `--preset conv`): convolutions
//! down to a flattened feature map that feeds `fc_mu` / `fc_logvar`, and from z a dense layer
//! (`decoder_input`) reshaped into a small feature map, then transposed convolutions back up to
//! the image. Images are NCHW rows (see [`crate::ops::conv`]), so the flattening is PyTorch's
//! `torch.flatten(x, 1)` and checkpoints hold PyTorch's names and 4-D weight shapes:
//! `encoder.{2i}` for the i-th convolution (an `nn.Sequential` with an activation between
//! layers), `decoder_input`, `decoder.{2i}` for the i-th transposed convolution.
//!
//! With batch normalization (`--preset conv64`, the common CelebA VAE) every layer but the
//! decoder's last is an `nn.Sequential(conv, nn.BatchNorm2d, activation)` block, so the names are
//! `encoder.{i}.0` (convolution), `encoder.{i}.1` (batch norm: `weight`, `bias`, `running_mean`,
//! `running_var`), likewise `decoder.{i}.0` / `decoder.{i}.1`, and the last block `decoder.{L}.0`.

use rand::Rng;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Linear, Param};
use crate::ops::batchnorm::{batch_norm2d, BnRunning};
use crate::ops::conv::{conv2d, conv_transpose2d, ConvShape, ConvTransposeShape};
use crate::ops::Act;
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// One convolution (encoder) or transposed convolution (decoder): its output channels and
/// geometry (square kernel).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvLayer {
    /// Output channels.
    pub channels: usize,
    /// Kernel size.
    pub kernel: usize,
    /// Stride.
    pub stride: usize,
    /// Padding.
    pub padding: usize,
    /// Transposed convolutions only: extra output rows and columns (below the stride).
    #[serde(default)]
    pub output_padding: usize,
}

/// A convolutional encoder/decoder pair (serialized in the checkpoint's `config` as `conv`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConvNet {
    /// The image: channels, rows, columns (their product is the model's `input_dim`).
    pub image: [usize; 3],
    /// Encoder convolutions, the activation after each; their output is flattened.
    pub encoder: Vec<ConvLayer>,
    /// What `decoder_input` (z -> C·H·W, then the activation) is reshaped to.
    pub decoder_start: [usize; 3],
    /// Decoder transposed convolutions, the activation after each but the last (logits or means).
    pub decoder: Vec<ConvLayer>,
    /// Batch normalization (`BatchNorm2d`) between every convolution but the decoder's last and
    /// its activation.
    #[serde(default)]
    pub batch_norm: bool,
}

fn conv(channels: usize, kernel: usize, stride: usize, padding: usize, output_padding: usize) -> ConvLayer {
    ConvLayer { channels, kernel, stride, padding, output_padding }
}

impl ConvNet {
    /// `--preset conv` (28x28 grayscale): `Conv2d(1,32,3,s2,p1)`-act-`Conv2d(32,64,3,s2,p1)`-act-
    /// flatten(64·7·7); `decoder_input` Linear(Z, 32·7·7)-act, reshape (32,7,7),
    /// `ConvTranspose2d(32,64,3,s2,p1,op1)`-act-`ConvTranspose2d(64,32,3,s2,p1,op1)`-act-
    /// `ConvTranspose2d(32,1,3,s1,p1)`.
    pub fn preset_conv() -> Self {
        ConvNet {
            image: [1, 28, 28],
            encoder: vec![conv(32, 3, 2, 1, 0), conv(64, 3, 2, 1, 0)],
            decoder_start: [32, 7, 7],
            decoder: vec![conv(64, 3, 2, 1, 1), conv(32, 3, 2, 1, 1), conv(1, 3, 1, 1, 0)],
            batch_norm: false,
        }
    }

    /// `--preset conv64` (64x64 RGB), the common CelebA VAE (PyTorch-VAE's `VanillaVAE`):
    /// [`ConvNet::from_channels`] with channels 32-64-128-256-512, 3x3 kernels and batch norm.
    pub fn preset_conv64() -> Self {
        Self::from_channels([3, 64, 64], &[32, 64, 128, 256, 512], 3, true)
            .expect("the conv64 preset's geometry is valid")
    }

    /// The usual VAE convolution stack for `image` (channels, height, width): one stride-2
    /// convolution per entry of `channels` (kernel `kernel`, padding ⌊(kernel − 1)/2⌋ and, with
    /// `batch_norm`, `BatchNorm2d`), flattened; the decoder starts from the last feature map and
    /// mirrors the encoder with stride-2 transposed convolutions (output padding chosen so that
    /// every size is restored: the channels in reverse, the last up-sampling keeping
    /// `channels[0]`), then a 3x3 stride-1 transposed convolution to the image's channels.
    pub fn from_channels(image: [usize; 3], channels: &[usize], kernel: usize, batch_norm: bool) -> Result<Self> {
        if channels.is_empty() || channels.contains(&0) {
            return Err(Error::arg("channels", "give at least one channel count, each at least 1"));
        }
        if kernel < 2 {
            return Err(Error::arg("kernel", format!("kernel {kernel}: stride-2 layers need a kernel of at least 2")));
        }
        let pad = (kernel - 1) / 2;
        let encoder: Vec<ConvLayer> = channels.iter().map(|&c| conv(c, kernel, 2, pad, 0)).collect();
        let mut net = ConvNet { image, encoder, decoder_start: [0; 3], decoder: vec![], batch_norm };
        // Sizes on the way down, to restore each on the way up.
        let mut sizes = vec![(image[1], image[2])];
        for s in net.encoder_shapes()? {
            sizes.push((s.out_height(), s.out_width()));
        }
        let (h, w) = sizes[sizes.len() - 1];
        if h < 1 || w < 1 {
            return Err(Error::arg("channels", "too many stride-2 layers for the image"));
        }
        net.decoder_start = [channels[channels.len() - 1], h, w];
        for i in (0..channels.len()).rev() {
            let (from, to) = (sizes[i + 1], sizes[i]);
            let natural = |n: usize| (n - 1) * 2 + kernel - 2 * pad;
            let (oh, ow) = (to.0 as isize - natural(from.0) as isize, to.1 as isize - natural(from.1) as isize);
            if oh != ow || !(0..2).contains(&oh) {
                return Err(Error::arg(
                    "channels",
                    format!(
                        "kernel {kernel} cannot mirror the step {}x{} -> {}x{}: use an image whose sides halve evenly",
                        to.0, to.1, from.0, from.1
                    ),
                ));
            }
            let out = if i == 0 { channels[0] } else { channels[i - 1] };
            net.decoder.push(conv(out, kernel, 2, pad, oh as usize));
        }
        // A 3x3 'same' layer as PyTorch-VAE's final layer (an even kernel has no 'same' padding).
        net.decoder.push(conv(image[0], 3, 1, 1, 0));
        net.validate()?;
        Ok(net)
    }

    /// The state-dict name of layer `i`'s convolution in `part` (`encoder` or `decoder`):
    /// `part.{2i}` in a flat `nn.Sequential`, `part.{i}.0` in batch-norm blocks.
    fn conv_name(&self, part: &str, i: usize) -> String {
        if self.batch_norm {
            format!("{part}.{i}.0")
        } else {
            format!("{part}.{}", 2 * i)
        }
    }

    /// The encoder's output channels, layer by layer.
    pub fn encoder_channels(&self) -> Vec<usize> {
        self.encoder.iter().map(|l| l.channels).collect()
    }

    /// The encoder's convolutions with their input sizes, checked.
    pub fn encoder_shapes(&self) -> Result<Vec<ConvShape>> {
        let [mut c, mut h, mut w] = self.image;
        let mut out = Vec::new();
        for (i, l) in self.encoder.iter().enumerate() {
            if l.output_padding != 0 {
                return Err(Error::arg("conv", format!("encoder layer {i}: output_padding is for transposed layers")));
            }
            let s = ConvShape {
                in_channels: c,
                out_channels: l.channels,
                height: h,
                width: w,
                kernel: l.kernel,
                stride: l.stride,
                padding: l.padding,
            };
            s.validate().map_err(|e| Error::arg("conv", format!("encoder layer {i}: {e}")))?;
            (c, h, w) = (l.channels, s.out_height(), s.out_width());
            out.push(s);
        }
        Ok(out)
    }

    /// Values per example after the encoder (what `fc_mu` reads).
    pub fn flat_dim(&self) -> Result<usize> {
        Ok(match self.encoder_shapes()?.last() {
            Some(s) => s.out_len(),
            None => self.image.iter().product(),
        })
    }

    /// The decoder's transposed convolutions with their input sizes, checked; the last must
    /// produce the image.
    pub fn decoder_shapes(&self) -> Result<Vec<ConvTransposeShape>> {
        let [mut c, mut h, mut w] = self.decoder_start;
        let mut out = Vec::new();
        for (i, l) in self.decoder.iter().enumerate() {
            let t = ConvTransposeShape {
                in_channels: c,
                out_channels: l.channels,
                height: h,
                width: w,
                kernel: l.kernel,
                stride: l.stride,
                padding: l.padding,
                output_padding: l.output_padding,
            };
            t.validate().map_err(|e| Error::arg("conv", format!("decoder layer {i}: {e}")))?;
            (c, h, w) = (l.channels, t.out_height(), t.out_width());
            out.push(t);
        }
        if [c, h, w] != self.image {
            return Err(Error::arg(
                "conv",
                format!("the decoder ends at {c}x{h}x{w} but the image is {:?}", self.image),
            ));
        }
        Ok(out)
    }

    /// Everything consistent: sizes, geometry, the decoder ending at the image.
    pub fn validate(&self) -> Result<()> {
        if self.image.contains(&0) || self.decoder_start.contains(&0) {
            return Err(Error::arg("conv", "image and decoder_start sizes must be at least 1"));
        }
        if self.decoder.is_empty() {
            return Err(Error::arg("conv", "the decoder needs at least one transposed convolution"));
        }
        self.encoder_shapes()?;
        self.decoder_shapes()?;
        Ok(())
    }

    /// (name, PyTorch shape) of the encoder's tensors, in parameter order.
    pub fn encoder_state_shapes(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let mut out = Vec::new();
        for (i, s) in self.encoder_shapes()?.iter().enumerate() {
            let name = self.conv_name("encoder", i);
            out.push((format!("{name}.weight"), vec![s.out_channels, s.in_channels, s.kernel, s.kernel]));
            out.push((format!("{name}.bias"), vec![s.out_channels]));
            if self.batch_norm {
                out.extend(bn_state_shapes(&format!("encoder.{i}.1"), s.out_channels));
            }
        }
        Ok(out)
    }

    /// (name, PyTorch shape) of the decoder's tensors (`decoder_input`, then the transposed
    /// convolutions), in parameter order, for latent size `z`.
    pub fn decoder_state_shapes(&self, z: usize) -> Result<Vec<(String, Vec<usize>)>> {
        let start: usize = self.decoder_start.iter().product();
        let mut out =
            vec![("decoder_input.weight".to_string(), vec![start, z]), ("decoder_input.bias".to_string(), vec![start])];
        let shapes = self.decoder_shapes()?;
        for (i, t) in shapes.iter().enumerate() {
            let name = self.conv_name("decoder", i);
            out.push((format!("{name}.weight"), vec![t.in_channels, t.out_channels, t.kernel, t.kernel]));
            out.push((format!("{name}.bias"), vec![t.out_channels]));
            if self.batch_norm && i + 1 < shapes.len() {
                out.extend(bn_state_shapes(&format!("decoder.{i}.1"), t.out_channels));
            }
        }
        Ok(out)
    }
}

/// A `BatchNorm2d`'s tensors: `weight` (γ), `bias` (β), `running_mean`, `running_var`, each \[C\].
fn bn_state_shapes(name: &str, c: usize) -> Vec<(String, Vec<usize>)> {
    ["weight", "bias", "running_mean", "running_var"].iter().map(|t| (format!("{name}.{t}"), vec![c])).collect()
}

/// Whether a state-dict name is a running statistic (saved, not trained).
pub fn is_running_statistic(name: &str) -> bool {
    name.ends_with(".running_mean") || name.ends_with(".running_var")
}

/// A layer's `BatchNorm2d`: γ and β \[1, C\] and the running statistics.
#[derive(Clone, Debug)]
pub struct BatchNorm2d {
    /// Scale γ (`.weight`, starts at 1).
    pub gamma: Param,
    /// Shift β (`.bias`, starts at 0).
    pub beta: Param,
    /// Running mean and variance for evaluation.
    pub running: BnRunning,
    /// State-dict prefix (`encoder.{i}.1`).
    pub name: String,
}

impl BatchNorm2d {
    fn new(gpu: &Gpu, name: String, c: usize) -> Result<Self> {
        Ok(BatchNorm2d {
            gamma: param(gpu, format!("{name}.weight"), 1, c, &vec![1.0; c], vec![c])?,
            beta: param(gpu, format!("{name}.bias"), 1, c, &vec![0.0; c], vec![c])?,
            running: BnRunning::new(gpu, c)?,
            name,
        })
    }
}

/// A convolution layer's parameters (weight as \[rows, K·K·channels\] on the GPU, its PyTorch
/// 4-D shape in checkpoints) and geometry.
#[derive(Clone, Debug)]
pub struct ConvParams<S> {
    /// Weight: `Conv2d` \[C_out, C_in·K·K\], `ConvTranspose2d` \[C_in, C_out·K·K\].
    pub weight: Param,
    /// Bias \[1, C_out\].
    pub bias: Param,
    /// Geometry.
    pub shape: S,
    /// Batch normalization after the convolution, if the net has it.
    pub bn: Option<BatchNorm2d>,
}

impl<S> ConvParams<S> {
    fn params(&self) -> Vec<&Param> {
        let mut p = vec![&self.weight, &self.bias];
        if let Some(bn) = &self.bn {
            p.extend([&bn.gamma, &bn.beta]);
        }
        p
    }
    fn params_mut(&mut self) -> Vec<&mut Param> {
        let mut p = vec![&mut self.weight, &mut self.bias];
        if let Some(bn) = &mut self.bn {
            p.extend([&mut bn.gamma, &mut bn.beta]);
        }
        p
    }
}

/// The layers of a [`ConvNet`] on the GPU.
#[derive(Clone, Debug)]
pub struct ConvModules {
    /// Encoder convolutions.
    pub encoder: Vec<ConvParams<ConvShape>>,
    /// z -> the decoder's starting feature map (activation fused).
    pub decoder_input: Linear,
    /// Decoder transposed convolutions.
    pub decoder: Vec<ConvParams<ConvTransposeShape>>,
    /// The activation between layers.
    pub act: Act,
}

/// PyTorch's default initialisation for a layer whose fan-in is `fan_in`: U(−1/√fan_in, 1/√fan_in)
/// for weight and bias.
fn uniform(n: usize, fan_in: usize, rng: &mut impl Rng) -> Vec<f32> {
    let bound = 1.0 / (fan_in as f32).sqrt();
    (0..n).map(|_| rng.random_range(-bound..bound)).collect()
}

fn param(gpu: &Gpu, name: String, rows: usize, cols: usize, values: &[f32], file_shape: Vec<usize>) -> Result<Param> {
    Ok(Param::new(name, Tensor::from_slice(gpu, rows, cols, values)?).with_file_shape(file_shape))
}

impl ConvModules {
    /// Fresh layers for `net` with latent size `z` (PyTorch's default initialisation: fan-in
    /// C_in·K·K for `Conv2d`, C_out·K·K for `ConvTranspose2d`, as `torch.nn.init` computes it
    /// from the weight's second dimension).
    pub fn new(gpu: &Gpu, net: &ConvNet, z: usize, act: Act, rng: &mut impl Rng) -> Result<Self> {
        let mut encoder = Vec::new();
        let bn = |part: &str, i: usize, c: usize| -> Result<Option<BatchNorm2d>> {
            net.batch_norm.then(|| BatchNorm2d::new(gpu, format!("{part}.{i}.1"), c)).transpose()
        };
        for (i, s) in net.encoder_shapes()?.into_iter().enumerate() {
            let fan = s.weight_cols();
            let w = uniform(s.out_channels * fan, fan, rng);
            let b = uniform(s.out_channels, fan, rng);
            let shape = vec![s.out_channels, s.in_channels, s.kernel, s.kernel];
            let name = net.conv_name("encoder", i);
            encoder.push(ConvParams {
                weight: param(gpu, format!("{name}.weight"), s.out_channels, fan, &w, shape)?,
                bias: param(gpu, format!("{name}.bias"), 1, s.out_channels, &b, vec![s.out_channels])?,
                shape: s,
                bn: bn("encoder", i, s.out_channels)?,
            });
        }
        let start: usize = net.decoder_start.iter().product();
        let (w, b) = Linear::init_values("decoder_input", z, start, rng)?;
        let decoder_input = Linear::from_values(gpu, "decoder_input", z, start, &w, &b, act)?;
        let mut decoder = Vec::new();
        let shapes = net.decoder_shapes()?;
        let last = shapes.len() - 1;
        for (i, t) in shapes.into_iter().enumerate() {
            let fan = t.out_channels * t.kernel * t.kernel;
            let w = uniform(t.in_channels * fan, fan, rng);
            let b = uniform(t.out_channels, fan, rng);
            let shape = vec![t.in_channels, t.out_channels, t.kernel, t.kernel];
            let name = net.conv_name("decoder", i);
            decoder.push(ConvParams {
                weight: param(gpu, format!("{name}.weight"), t.in_channels, fan, &w, shape)?,
                bias: param(gpu, format!("{name}.bias"), 1, t.out_channels, &b, vec![t.out_channels])?,
                shape: t,
                bn: if i < last { bn("decoder", i, t.out_channels)? } else { None },
            });
        }
        Ok(ConvModules { encoder, decoder_input, decoder, act })
    }

    /// The encoder's parameters, in order.
    pub fn encoder_params(&self) -> Vec<&Param> {
        self.encoder.iter().flat_map(|l| l.params()).collect()
    }

    /// The decoder's parameters (`decoder_input` first), in order.
    pub fn decoder_params(&self) -> Vec<&Param> {
        let mut p = self.decoder_input.params();
        p.extend(self.decoder.iter().flat_map(|l| l.params()));
        p
    }

    /// The running statistics of every batch norm, by state-dict name.
    pub fn buffers(&self) -> Vec<(String, &Tensor)> {
        let bns = self.encoder.iter().filter_map(|l| l.bn.as_ref());
        bns.chain(self.decoder.iter().filter_map(|l| l.bn.as_ref()))
            .flat_map(|bn| {
                [
                    (format!("{}.running_mean", bn.name), &bn.running.mean),
                    (format!("{}.running_var", bn.name), &bn.running.var),
                ]
            })
            .collect()
    }

    /// Mutable [`ConvModules::encoder_params`] and [`ConvModules::decoder_params`] (both at once:
    /// the model collects every parameter mutably).
    pub fn params_mut_split(&mut self) -> (Vec<&mut Param>, Vec<&mut Param>) {
        let enc = self.encoder.iter_mut().flat_map(|l| l.params_mut()).collect();
        let mut dec = self.decoder_input.params_mut();
        dec.extend(self.decoder.iter_mut().flat_map(|l| l.params_mut()));
        (enc, dec)
    }

    /// Records the encoder: \[B, C·H·W\] -> \[B, flattened features\]. Batch norms use the
    /// batch statistics on a tape that records gradients (training), the running ones otherwise.
    pub fn encode(&self, tape: &mut Tape, x: Var) -> Result<Var> {
        let mut h = x;
        for l in &self.encoder {
            let (w, b) = (l.weight.var(tape), l.bias.var(tape));
            h = match &l.bn {
                None => conv2d(tape, h, w, Some(b), l.shape, self.act)?,
                Some(bn) => {
                    let h = conv2d(tape, h, w, Some(b), l.shape, Act::Identity)?;
                    norm(tape, h, bn, l.shape.out_channels, self.act)?
                }
            };
        }
        Ok(h)
    }

    /// Records the decoder: z \[B, Z\] -> \[B, C·H·W\] (no activation on the last layer).
    pub fn decode(&self, tape: &mut Tape, z: Var) -> Result<Var> {
        let mut d = self.decoder_input.forward(tape, z)?;
        let last = self.decoder.len().saturating_sub(1);
        for (i, l) in self.decoder.iter().enumerate() {
            let (w, b) = (l.weight.var(tape), l.bias.var(tape));
            let act = if i == last { Act::Identity } else { self.act };
            d = match &l.bn {
                None => conv_transpose2d(tape, d, w, Some(b), l.shape, act)?,
                Some(bn) => {
                    let d = conv_transpose2d(tape, d, w, Some(b), l.shape, Act::Identity)?;
                    norm(tape, d, bn, l.shape.out_channels, act)?
                }
            };
        }
        Ok(d)
    }
}

/// `bn` then `act` on a conv layer's output (training statistics when the tape records gradients).
fn norm(tape: &mut Tape, x: Var, bn: &BatchNorm2d, channels: usize, act: Act) -> Result<Var> {
    let (g, b) = (bn.gamma.var(tape), bn.beta.var(tape));
    let training = tape.grad_enabled();
    batch_norm2d(tape, x, g, b, channels, &bn.running, training, act)
}
