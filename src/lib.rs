//! # wgvae
//!
//! Variational autoencoders trained on any GPU — Vulkan, Metal, DX12 or OpenGL through
//! [wgpu] — with hand-written WGSL compute shaders and a small autograd tape. No ML framework,
//! no CUDA, no Python.
//!
//! The engine in a few lines: open a device, record ops on a [`Tape`], back-propagate, update,
//! submit once.
//!
//! ```no_run
//! use wgvae::{nn::{Mlp, Sgd}, ops::{self, Act}, Gpu, Tape, Tensor};
//!
//! # fn main() -> wgvae::Result<()> {
//! let gpu = Gpu::new()?; // best adapter; WGPU_BACKEND / WGPU_ADAPTER_NAME filter
//! let mlp = Mlp::new(&gpu, "mlp", &[4, 16, 1], Act::Tanh, Act::Identity, 0)?;
//! let opt = Sgd::new(0.05)?;
//! let x = Tensor::from_slice(&gpu, 2, 4, &[0.0, 1.0, 2.0, 3.0, 1.0, 0.0, 1.0, 0.0])?;
//! let t = Tensor::from_slice(&gpu, 2, 1, &[1.0, -1.0])?;
//! for _ in 0..100 {
//!     let mut tape = Tape::new(&gpu);
//!     let (xv, tv) = (tape.input(x.clone()), tape.input(t.clone()));
//!     let y = mlp.forward(&mut tape, xv)?;
//!     let d = ops::sub(&mut tape, y, tv)?;
//!     let sq = ops::mul(&mut tape, d, d)?;
//!     let loss = ops::sum(&mut tape, sq)?;
//!     tape.backward(loss)?;
//!     opt.step(&mut tape, &mlp.params())?;
//!     tape.submit()?; // one command buffer for forward, backward and update
//! }
//! # Ok(()) }
//! ```
//!
//! [wgpu]: https://wgpu.rs

#![warn(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod gpu;
pub mod image;
pub mod nn;
pub mod ops;
pub mod pictures;
pub mod plot;
pub mod rng;
pub mod tape;
pub mod tensor;
pub mod train;
pub mod vae;

pub use error::{Error, Result};
pub use gpu::{Gpu, GpuOptions, MatmulVariant};
pub use tape::{Tape, Var};
pub use tensor::Tensor;
