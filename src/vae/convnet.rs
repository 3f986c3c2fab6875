//! Convolutional encoder and decoder for [`super::Vae`] (issue 11's `--preset conv`): convolutions
//! down to a flattened feature map that feeds `fc_mu` / `fc_logvar`, and from z a dense layer
//! (`decoder_input`) reshaped into a small feature map, then transposed convolutions back up to
//! the image. Images are NCHW rows (see [`crate::ops::conv`]), so the flattening is PyTorch's
//! `torch.flatten(x, 1)` and checkpoints hold PyTorch's names and 4-D weight shapes:
//! `encoder.{2i}` for the i-th convolution (an `nn.Sequential` with an activation between
//! layers), `decoder_input`, `decoder.{2i}` for the i-th transposed convolution.

use rand::Rng;

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Linear, Param};
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
        }
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
            out.push((format!("encoder.{}.weight", 2 * i), vec![s.out_channels, s.in_channels, s.kernel, s.kernel]));
            out.push((format!("encoder.{}.bias", 2 * i), vec![s.out_channels]));
        }
        Ok(out)
    }

    /// (name, PyTorch shape) of the decoder's tensors (`decoder_input`, then the transposed
    /// convolutions), in parameter order, for latent size `z`.
    pub fn decoder_state_shapes(&self, z: usize) -> Result<Vec<(String, Vec<usize>)>> {
        let start: usize = self.decoder_start.iter().product();
        let mut out =
            vec![("decoder_input.weight".to_string(), vec![start, z]), ("decoder_input.bias".to_string(), vec![start])];
        for (i, t) in self.decoder_shapes()?.iter().enumerate() {
            out.push((format!("decoder.{}.weight", 2 * i), vec![t.in_channels, t.out_channels, t.kernel, t.kernel]));
            out.push((format!("decoder.{}.bias", 2 * i), vec![t.out_channels]));
        }
        Ok(out)
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
        for (i, s) in net.encoder_shapes()?.into_iter().enumerate() {
            let fan = s.weight_cols();
            let w = uniform(s.out_channels * fan, fan, rng);
            let b = uniform(s.out_channels, fan, rng);
            let shape = vec![s.out_channels, s.in_channels, s.kernel, s.kernel];
            encoder.push(ConvParams {
                weight: param(gpu, format!("encoder.{}.weight", 2 * i), s.out_channels, fan, &w, shape)?,
                bias: param(gpu, format!("encoder.{}.bias", 2 * i), 1, s.out_channels, &b, vec![s.out_channels])?,
                shape: s,
            });
        }
        let start: usize = net.decoder_start.iter().product();
        let (w, b) = Linear::init_values("decoder_input", z, start, rng)?;
        let decoder_input = Linear::from_values(gpu, "decoder_input", z, start, &w, &b, act)?;
        let mut decoder = Vec::new();
        for (i, t) in net.decoder_shapes()?.into_iter().enumerate() {
            let fan = t.out_channels * t.kernel * t.kernel;
            let w = uniform(t.in_channels * fan, fan, rng);
            let b = uniform(t.out_channels, fan, rng);
            let shape = vec![t.in_channels, t.out_channels, t.kernel, t.kernel];
            decoder.push(ConvParams {
                weight: param(gpu, format!("decoder.{}.weight", 2 * i), t.in_channels, fan, &w, shape)?,
                bias: param(gpu, format!("decoder.{}.bias", 2 * i), 1, t.out_channels, &b, vec![t.out_channels])?,
                shape: t,
            });
        }
        Ok(ConvModules { encoder, decoder_input, decoder, act })
    }

    /// The encoder's parameters, in order.
    pub fn encoder_params(&self) -> Vec<&Param> {
        self.encoder.iter().flat_map(|l| [&l.weight, &l.bias]).collect()
    }

    /// The decoder's parameters (`decoder_input` first), in order.
    pub fn decoder_params(&self) -> Vec<&Param> {
        let mut p = self.decoder_input.params();
        p.extend(self.decoder.iter().flat_map(|l| [&l.weight, &l.bias]));
        p
    }

    /// Mutable [`ConvModules::encoder_params`] and [`ConvModules::decoder_params`] (both at once:
    /// the model collects every parameter mutably).
    pub fn params_mut_split(&mut self) -> (Vec<&mut Param>, Vec<&mut Param>) {
        let enc = self.encoder.iter_mut().flat_map(|l| [&mut l.weight, &mut l.bias]).collect();
        let mut dec = self.decoder_input.params_mut();
        dec.extend(self.decoder.iter_mut().flat_map(|l| [&mut l.weight, &mut l.bias]));
        (enc, dec)
    }

    /// Records the encoder: \[B, C·H·W\] -> \[B, flattened features\].
    pub fn encode(&self, tape: &mut Tape, x: Var) -> Result<Var> {
        let mut h = x;
        for l in &self.encoder {
            let (w, b) = (l.weight.var(tape), l.bias.var(tape));
            h = conv2d(tape, h, w, Some(b), l.shape, self.act)?;
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
            d = conv_transpose2d(tape, d, w, Some(b), l.shape, act)?;
        }
        Ok(d)
    }
}
