//! Ops: each file holds the kernel launches (on [`Tensor`]s, recorded on a [`Tape`]) and the
//! differentiable ops built on them (on [`Var`]s, with their backward rules).
//!
//! Shape letters: M/B rows (batch), N/K columns, as in the shaders.

pub mod batchnorm;
pub mod concat;
pub mod conv;
pub mod elementwise;
pub mod matmul;
pub mod reduce;
pub mod vae;

pub use elementwise::{activation, add, mul, scale, sub};
pub use matmul::{linear, matmul};
pub use reduce::{mean, sum, sum_cols, sum_rows};

use crate::error::{Error, Result};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

/// Activation functions (forward and backward kernels in `shaders/elementwise.wgsl`, also fused
/// into the matmul epilogue).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Act {
    /// y = x
    Identity,
    /// y = max(x, 0)
    Relu,
    /// y = x if x > 0 else slope·x (slope > 0)
    LeakyRelu(f32),
    /// y = tanh(x)
    Tanh,
    /// y = 1 / (1 + e^-x)
    Sigmoid,
    /// y = x if x > 0 else alpha·(e^x − 1) (alpha > 0)
    Elu(f32),
}

impl Act {
    /// The id shared with `shaders/common.wgsl`.
    pub fn id(self) -> u32 {
        match self {
            Act::Identity => 0,
            Act::Relu => 1,
            Act::LeakyRelu(_) => 2,
            Act::Tanh => 3,
            Act::Sigmoid => 4,
            Act::Elu(_) => 5,
        }
    }
    /// Slope / alpha (0 for activations without one).
    pub fn alpha(self) -> f32 {
        match self {
            Act::LeakyRelu(a) | Act::Elu(a) => a,
            _ => 0.0,
        }
    }
    /// How the tape records it ([`crate::tape::ActTag`]; none for the identity).
    pub fn tag(self) -> Option<crate::tape::ActTag> {
        (self != Act::Identity).then_some((self.id(), self.alpha()))
    }

    /// The activation of a tape tag.
    pub fn from_tag((id, alpha): crate::tape::ActTag) -> Self {
        match id {
            1 => Act::Relu,
            2 => Act::LeakyRelu(alpha),
            3 => Act::Tanh,
            4 => Act::Sigmoid,
            5 => Act::Elu(alpha),
            _ => Act::Identity,
        }
    }

    /// All activations with their default parameters (tests iterate over them).
    pub const ALL: [Act; 6] = [Act::Identity, Act::Relu, Act::LeakyRelu(0.01), Act::Tanh, Act::Sigmoid, Act::Elu(1.0)];

    pub(crate) fn defines(self) -> Vec<(&'static str, String)> {
        vec![("ACT", format!("{}u", self.id())), ("ALPHA", wgsl_f32(self.alpha()))]
    }
}

impl std::str::FromStr for Act {
    type Err = Error;
    /// Parses `relu`, `leaky_relu[:slope]`, `tanh`, `sigmoid`, `elu[:alpha]`, `identity`.
    fn from_str(s: &str) -> Result<Self> {
        let (name, arg) = match s.split_once(':') {
            Some((n, a)) => (n, Some(a)),
            None => (s, None),
        };
        let num = |default: f32| -> Result<f32> {
            match arg {
                None => Ok(default),
                Some(a) => a
                    .parse::<f32>()
                    .ok()
                    .filter(|v| *v > 0.0 && v.is_finite())
                    .ok_or_else(|| Error::arg("activation", format!("`{a}` in `{s}` is not a positive number"))),
            }
        };
        Ok(match name.to_ascii_lowercase().as_str() {
            "identity" | "linear" | "none" => Act::Identity,
            "relu" => Act::Relu,
            "leaky_relu" | "leakyrelu" => Act::LeakyRelu(num(0.01)?),
            "tanh" => Act::Tanh,
            "sigmoid" => Act::Sigmoid,
            "elu" => Act::Elu(num(1.0)?),
            _ => {
                return Err(Error::arg(
                    "activation",
                    format!("`{s}` is not one of: relu, leaky_relu[:slope], tanh, sigmoid, elu[:alpha], identity"),
                ))
            }
        })
    }
}

impl std::fmt::Display for Act {
    /// The name [`Act::from_str`](std::str::FromStr) reads back (`leaky_relu:0.2`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Act::Identity => f.write_str("identity"),
            Act::Relu => f.write_str("relu"),
            Act::LeakyRelu(s) => write!(f, "leaky_relu:{s}"),
            Act::Tanh => f.write_str("tanh"),
            Act::Sigmoid => f.write_str("sigmoid"),
            Act::Elu(a) => write!(f, "elu:{a}"),
        }
    }
}

crate::string_serde!(Act);

/// An f32 as a WGSL literal that round-trips exactly.
pub(crate) fn wgsl_f32(v: f32) -> String {
    // Rust's shortest round-trip form, as an f32 literal (`0.01f`, `1e-7f`).
    format!("{v:?}f")
}

pub use crate::tape::grid_1d;

pub(crate) fn same_shape(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::shape(op, format!("operands are {:?} and {:?}; they must be equal", a.shape(), b.shape())));
    }
    Ok(())
}

/// Value of a var, cloned (a handle clone) so the tape can be borrowed mutably afterwards.
pub(crate) fn val(tape: &Tape, v: Var) -> Tensor {
    tape.value(v).clone()
}
