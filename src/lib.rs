//! # wgvae
//!
//! Variational autoencoders trained on any GPU — Vulkan, Metal, DX12, OpenGL or a browser's
//! WebGPU through [wgpu] — with hand-written WGSL compute shaders and a small autograd tape. No ML
//! framework, no CUDA, no Python.
//!
//! Training a VAE on your own data (here 256 vectors of 16 values in \[0, 1\]):
//!
//! ```
//! use wgvae::{data::Images, train::{Control, FitOptions, TrainOptions, Trainer}, vae::VaeConfig, Gpu};
//! # fn main() -> wgvae::Result<()> {
//! let gpu = Gpu::new()?; // the best adapter; or Gpu::from_wgpu(..) on a device you already have
//! let values: Vec<f32> = (0..256 * 16).map(|i| ((i / 16 + i % 16) % 2) as f32).collect();
//! let split = Images::from_f32(values, 256, &[16])?.split(0.25, 1)?; // or Images::from_u8
//! let config = VaeConfig { input_dim: 16, hidden: vec![32], latent: 2, ..VaeConfig::classic() };
//! let opts = TrainOptions { batch: 32, ..Default::default() };
//! let mut trainer = Trainer::new(&gpu, config, opts, &split)?;
//! let fit = FitOptions { epochs: 3, ..Default::default() }; // run_dir: Some(dir) saves as it goes
//! let metrics = trainer.fit(&fit, &mut |_progress| {}, &mut |m| {
//!     println!("epoch {}: test -ELBO {:.2} nats", m.epoch, m.test_loss);
//!     Control::Continue
//! })?;
//! assert!(metrics[2].test_loss < metrics[0].test_loss);
//! let (mu, _logvar) = trainer.vae.encode_values(&gpu, &split.test.example(0))?;
//! let samples = trainer.vae.sample_values(&gpu, 4, 7)?; // 4 x 16 values
//! assert_eq!((mu.len(), samples.len()), (2, 64));
//! # Ok(()) }
//! ```
//!
//! Lower down, a training step is an explicit [`Tape`]: ops record kernels and backward rules,
//! `backward` walks them in reverse, the optimizer records its update, and `submit` encodes the
//! whole step into one command buffer (see `examples/`). Every blocking call has an `_async`
//! twin; in a browser only those exist.
//!
//! [wgpu]: https://wgpu.rs

#![warn(missing_docs)]
// WebGPU handles are single-threaded in a browser, so the Arcs that share them across threads
// natively hold non-Send values there; one code path for both targets is worth the lint.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

/// Serializes a type through its `Display` and deserializes it through its `FromStr` (the config
/// enums are written as the strings the CLI takes, e.g. `leaky_relu:0.2`).
macro_rules! string_serde {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
pub(crate) use string_serde;

#[doc(hidden)]
#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod checkpoint;
pub mod clock;
pub mod data;
pub mod error;
#[cfg(not(target_arch = "wasm32"))]
pub mod eval;
pub mod gpu;
#[cfg(feature = "pictures")]
pub mod image;
pub mod nn;
pub mod ops;
#[cfg(feature = "pictures")]
pub mod pictures;
#[cfg(feature = "pictures")]
pub mod plot;
#[doc(hidden)]
pub mod rng;
#[cfg(not(target_arch = "wasm32"))]
pub mod run;
pub mod tape;
pub mod tensor;
pub mod train;
#[cfg(not(target_arch = "wasm32"))]
pub mod tune;
pub mod vae;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions, KernelChoice, MatmulPlan, MatmulVariant, Operands, TileConfig, Words};
pub use nn::Optimizer;
pub use tape::{Tape, Var};
pub use tensor::Tensor;
pub use wgpu;
