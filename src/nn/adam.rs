//! Adam and AdamW with one fused kernel per parameter tensor (`shaders/optim.wgsl`), recorded on
//! the step's tape so forward, backward and update are one submission.

use std::collections::HashMap;

use std::sync::Arc;

use super::{Optimizer, Param, Store};
use crate::error::{Error, Result};
use crate::gpu::pipeline::{KernelKey, Module};
use crate::gpu::{Operands, Words};
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
    /// (m, v) per parameter id; for packed parameters, views of the store's flat moments.
    state: HashMap<u64, (Tensor, Tensor)>,
    /// Flat (m, v) per parameter store (see [`crate::nn::pack`]).
    flat: HashMap<u64, (Tensor, Tensor)>,
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
            flat: HashMap::new(),
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
        if p.store().is_some() {
            // A packed parameter's moments live in the store's flat moments: copy them there.
            let gpu = m.gpu();
            let (pm, pv) = self.moments_of(&gpu, p)?;
            let mut tape = Tape::no_grad(&gpu);
            crate::ops::elementwise::copy_into(&mut tape, &m, &pm)?;
            crate::ops::elementwise::copy_into(&mut tape, &v, &pv)?;
            return tape.submit();
        }
        self.state.insert(p.id(), (m, v));
        Ok(())
    }

    /// The (m, v) of `p`, created as zeros on first use (views of the flat moments when packed).
    fn moments_of(&mut self, gpu: &crate::Gpu, p: &Param) -> Result<(Tensor, Tensor)> {
        if let Some(s) = self.state.get(&p.id()) {
            return Ok(s.clone());
        }
        let (r, c) = (p.value().rows(), p.value().cols());
        let s = match p.store() {
            Some(store) => {
                let (m, v) = self.flat_moments(gpu, store)?;
                let (start, _) = store.slot(p.id()).ok_or_else(|| Error::arg("Adam", "parameter not in its store"))?;
                (m.view(start, r, c)?, v.view(start, r, c)?)
            }
            None => (Tensor::zeros(gpu, r, c)?, Tensor::zeros(gpu, r, c)?),
        };
        self.state.insert(p.id(), s.clone());
        Ok(s)
    }

    fn flat_moments(&mut self, gpu: &crate::Gpu, store: &Store) -> Result<(Tensor, Tensor)> {
        if let Some(f) = self.flat.get(&store.id()) {
            return Ok(f.clone());
        }
        let n = store.values.len();
        let f = (Tensor::zeros(gpu, 1, n)?, Tensor::zeros(gpu, 1, n)?);
        self.flat.insert(store.id(), f.clone());
        Ok(f)
    }
}

/// The vector Adam kernel for `n` elements (a multiple of 4) and the elements each invocation
/// updates: eight through Word8 views with u64 words (CPU adapters, where an access costs a loop
/// whose overhead a 32-byte access shares) when `n` allows, four otherwise.
fn wide_entry(words: Words, n: usize) -> (&'static str, usize) {
    if words == Words::U64 && n.is_multiple_of(8) {
        ("adam_step8", 8)
    } else {
        ("adam_step4", 4)
    }
}

/// Records the vector update of `[g, p, m, v]` (each `n` elements, `n` a multiple of 4, in the
/// parameter block): [`wide_entry`]'s kernel, or `adam_step8t` where the device reads the 8-wide
/// update's inputs from operand textures ([`Operands::Textures`]: lavapipe's texel loads are the
/// cheap ones) and they fit.
fn dispatch_wide(tape: &mut Tape, block: Params, [g, p, m, v]: [&Tensor; 4]) -> Result<()> {
    let gpu = tape.gpu().clone();
    let n = g.len();
    let (entry, per) = wide_entry(gpu.words(), n);
    let groups = grid_1d(n / per, 256);
    let row = crate::gpu::pool::OPERAND_TEXTURE_ROW_BYTES as usize;
    let fits = (4 * n).div_ceil(row) <= gpu.limits().max_texture_dimension_2d as usize;
    if entry == "adam_step8" && gpu.operands() == Operands::Textures && fits {
        let module = Module::OptimTextures(gpu.words());
        let key = KernelKey { module, entry: "adam_step8t", defines: Vec::new(), inputs: 4, outputs: 3 };
        tape.dispatch(&key, block, &[g, p, m, v, p, m, v], groups)
    } else {
        let key = KernelKey { module: Module::Optim(gpu.words()), entry, defines: Vec::new(), inputs: 1, outputs: 3 };
        tape.dispatch(&key, block, &[g, p, m, v], groups)
    }
}

impl Optimizer for Adam {
    /// One update of every parameter that has a gradient on `tape`. Parameters packed into one
    /// store ([`crate::nn::pack`]) are updated by ONE dispatch over the store when all of them
    /// are being updated and their gradients are in the store's gradient buffer (as backward
    /// leaves them); others one dispatch each.
    fn step(&mut self, tape: &mut Tape, params: &[&Param]) -> Result<()> {
        self.t += 1;
        let bc1 = 1.0 - (self.beta1 as f64).powf(self.t as f64);
        let bc2 = 1.0 - (self.beta2 as f64).powf(self.t as f64);
        let block = Params::new()
            .u(0)
            .u(self.decoupled as u32)
            .f(self.lr)
            .f(self.beta1)
            .f(self.beta2)
            .f(self.eps)
            .f(self.weight_decay)
            .f(bc1 as f32)
            .f(bc2 as f32);
        let gpu = tape.gpu().clone();
        let mut done: Vec<u64> = Vec::new();
        if let Some(store) = params.first().and_then(|p| p.store()).cloned() {
            let members: Vec<&&Param> =
                params.iter().filter(|p| p.store().is_some_and(|s| Arc::ptr_eq(s, &store))).collect();
            let in_place = members.iter().all(|p| match (p.grad(tape), p.grad_view()) {
                (Some(g), Some(d)) => g.same_storage(d),
                _ => false,
            });
            if members.len() == store.len() && in_place {
                for p in &members {
                    self.moments_of(&gpu, p)?;
                }
                let (m, v) = self.flat_moments(&gpu, &store)?;
                let n = store.values.len();
                // Slots are multiples of 4 elements apart: the whole store runs four (or eight)
                // per invocation.
                dispatch_wide(tape, block.with_word(0, n as u32), [&store.grads, &store.values, &m, &v])?;
                done.extend(members.iter().map(|p| p.id()));
            }
        }
        for p in params {
            if done.contains(&p.id()) {
                continue;
            }
            let Some(g) = p.grad(tape).cloned() else { continue };
            let (m, v) = self.moments_of(&gpu, p)?;
            let n = g.len();
            let bufs = [&g, p.value(), &m, &v];
            // Four elements per invocation when the tensor allows (every classic-VAE tensor): on
            // CPU adapters a storage load's cost grows far less than its width.
            if n.is_multiple_of(4) {
                dispatch_wide(tape, block.with_word(0, n as u32), bufs)?;
            } else {
                let key = KernelKey {
                    module: Module::Optim(gpu.words()),
                    entry: "adam_step",
                    defines: Vec::new(),
                    inputs: 1,
                    outputs: 3,
                };
                tape.dispatch(&key, block.with_word(0, n as u32), &bufs, grid_1d(n, 256))?;
            }
        }
        Ok(())
    }

    fn lr(&self) -> f32 {
        self.lr
    }

    fn set_lr(&mut self, lr: f32) {
        self.lr = lr;
    }
}
