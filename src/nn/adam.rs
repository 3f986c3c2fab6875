//! Adam and AdamW with one fused kernel per parameter tensor (`shaders/optim.wgsl`), recorded on
//! the step's tape so forward, backward and update are one submission.

use std::collections::HashMap;

use super::Param;
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::ops::grid_1d;
use crate::tape::{Params, Tape};
use crate::tensor::Tensor;

/// Adam (Kingma & Ba) with PyTorch's defaults; `decoupled` makes it AdamW (Loshchilov & Hutter).
#[derive(Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay (0.9).
    pub beta1: f32,
    /// Second-moment decay (0.999).
    pub beta2: f32,
    /// Denominator epsilon (1e-8).
    pub eps: f32,
    /// Weight decay (0).
    pub weight_decay: f32,
    /// AdamW's decoupled weight decay instead of Adam's L2 term.
    pub decoupled: bool,
    /// Updates taken so far (bias correction uses it).
    pub t: u64,
    state: HashMap<u64, (Tensor, Tensor)>,
}

impl Adam {
    /// Adam with PyTorch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay).
    pub fn new(lr: f32) -> Result<Self> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::arg("lr", format!("{lr} is not a positive finite learning rate")));
        }
        Ok(Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            t: 0,
            state: HashMap::new(),
        })
    }

    /// AdamW with decoupled weight decay `wd`.
    pub fn adamw(lr: f32, wd: f32) -> Result<Self> {
        if !(wd.is_finite() && wd >= 0.0) {
            return Err(Error::arg("weight_decay", format!("{wd} is not a non-negative number")));
        }
        let mut a = Self::new(lr)?;
        a.weight_decay = wd;
        a.decoupled = true;
        Ok(a)
    }

    /// The (m, v) moments of a parameter, once it has been updated (checkpoints save them).
    pub fn moments(&self, p: &Param) -> Option<&(Tensor, Tensor)> {
        self.state.get(&p.id())
    }

    /// Restores the moments of `p` (checkpoint loading).
    pub fn set_moments(&mut self, p: &Param, m: Tensor, v: Tensor) -> Result<()> {
        if m.shape() != p.value().shape() || v.shape() != p.value().shape() {
            return Err(Error::shape(
                "Adam::set_moments",
                format!("moments for {} must be {:?}", p.name(), p.value().shape()),
            ));
        }
        self.state.insert(p.id(), (m, v));
        Ok(())
    }

    /// One update of every parameter that has a gradient on `tape`.
    pub fn step(&mut self, tape: &mut Tape, params: &[&Param]) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - (self.beta1 as f64).powf(self.t as f64);
        let bc2 = 1.0 - (self.beta2 as f64).powf(self.t as f64);
        for p in params {
            let Some(g) = tape.param_grad(p).cloned() else { continue };
            let (m, v) = match self.state.get(&p.id()) {
                Some(s) => s.clone(),
                None => {
                    let (r, c) = (p.value().rows(), p.value().cols());
                    let s = (Tensor::zeros(tape.gpu(), r, c)?, Tensor::zeros(tape.gpu(), r, c)?);
                    self.state.insert(p.id(), s.clone());
                    s
                }
            };
            let n = g.len();
            let params = Params::new()
                .u(n as u32)
                .u(self.decoupled as u32)
                .f(self.lr)
                .f(self.beta1)
                .f(self.beta2)
                .f(self.eps)
                .f(self.weight_decay)
                .f(bc1 as f32)
                .f(bc2 as f32);
            // Four elements per invocation when the tensor allows (every classic-VAE tensor): on
            // CPU adapters a storage load costs about the same whatever its width.
            let (entry, invocations) = if n.is_multiple_of(4) { ("adam_step4", n / 4) } else { ("adam_step", n) };
            let key = KernelKey { module: Module::Optim, entry, defines: Vec::new(), inputs: 1, outputs: 3 };
            tape.dispatch(&key, params, &[&g, p.value(), &m, &v], grid_1d(invocations, 256))?;
        }
        Ok(())
    }
}
