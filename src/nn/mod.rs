//! Layers and optimizers: trainable [`Param`]s, [`Linear`], [`Mlp`], [`Sgd`] and [`Adam`].

mod adam;
pub use adam::Adam;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::ops::{self, Act};
use crate::tape::{Tape, Var};
use crate::tensor::Tensor;

static NEXT_PARAM: AtomicU64 = AtomicU64::new(1);

/// A trainable tensor with a stable identity and a name (used for checkpoints).
#[derive(Clone, Debug)]
pub struct Param {
    id: u64,
    name: String,
    value: Tensor,
    /// Its shape in checkpoints when that is not the tensor's \[rows, cols\] (a convolution's
    /// 4-D weight).
    file_shape: Option<Vec<usize>>,
    /// Where its gradient goes when it is packed ([`pack`]): a view of the store's gradient buffer.
    grad: Option<Tensor>,
    store: Option<Arc<Store>>,
}

/// Parameters packed by [`pack`] into one buffer of values and one of gradients, each parameter a
/// view at an aligned offset (zeros between them), so that one optimizer dispatch updates all.
#[derive(Debug)]
pub struct Store {
    id: u64,
    /// Every value, \[1, total\].
    pub values: Tensor,
    /// Every gradient, \[1, total\], laid out like `values`.
    pub grads: Tensor,
    /// (parameter id, first element, elements) of each packed parameter.
    slots: Vec<(u64, usize, usize)>,
}

impl Store {
    /// Identifies the store (optimizers keep their flat moments per store).
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Number of packed parameters.
    pub fn len(&self) -> usize {
        self.slots.len()
    }
    /// Whether no parameter is packed (never: [`pack`] refuses an empty list).
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
    /// Where parameter `id` lives: (first element, elements).
    pub fn slot(&self, id: u64) -> Option<(usize, usize)> {
        self.slots.iter().find(|s| s.0 == id).map(|s| (s.1, s.2))
    }
}

/// Packs `params` into one value buffer and one gradient buffer (a [`Store`]): their values are
/// copied there and each becomes a view of it, and each gets a gradient destination that backward
/// rules write into directly. Models do this once when they are built (`Vae::new`); afterwards
/// [`Adam`] updates every parameter of the store with one dispatch.
pub fn pack(gpu: &Gpu, params: &mut [&mut Param]) -> Result<()> {
    if params.is_empty() {
        return Err(Error::arg("pack", "no parameters to pack"));
    }
    // Slots start at bindable offsets (and at least every 4 elements, for the vec4 optimizer).
    let align = Tensor::view_alignment(gpu).max(4);
    let mut slots = Vec::with_capacity(params.len());
    let mut total = 0usize;
    for p in params.iter() {
        let n = p.value.len();
        slots.push((p.id, total, n));
        total = total
            .checked_add(n.div_ceil(align) * align)
            .ok_or_else(|| Error::arg("pack", "the parameters' total size overflows"))?;
    }
    // Copied on the GPU (no read-back: in a browser none can block).
    let values = Tensor::zeros(gpu, 1, total)?;
    let mut tape = Tape::no_grad(gpu);
    for (p, &(_, start, n)) in params.iter().zip(&slots) {
        tape.copy_into(&p.value, &values.view(start, 1, n)?)?;
    }
    tape.submit()?;
    let grads = Tensor::zeros(gpu, 1, total)?;
    let store = Arc::new(Store { id: NEXT_PARAM.fetch_add(1, Ordering::Relaxed), values, grads, slots });
    for (p, &(_, start, _)) in params.iter_mut().zip(&store.slots) {
        let (r, c) = (p.value.rows(), p.value.cols());
        p.value = store.values.view(start, r, c)?;
        p.grad = Some(store.grads.view(start, r, c)?);
        p.store = Some(store.clone());
    }
    Ok(())
}

impl Param {
    /// Wraps a tensor as a parameter.
    pub fn new(name: impl Into<String>, value: Tensor) -> Self {
        Param {
            id: NEXT_PARAM.fetch_add(1, Ordering::Relaxed),
            name: name.into(),
            value,
            file_shape: None,
            grad: None,
            store: None,
        }
    }
    /// The same parameter stored in checkpoints with `shape` (same number of values), e.g. a
    /// convolution's \[C_out, C_in, K, K\] weight kept as \[C_out, C_in·K·K\] on the GPU.
    pub fn with_file_shape(mut self, shape: Vec<usize>) -> Self {
        self.file_shape = Some(shape);
        self
    }
    /// Its shape in checkpoints, when it differs from the tensor's.
    pub fn file_shape(&self) -> Option<&[usize]> {
        self.file_shape.as_deref()
    }
    /// Its var on `tape` (the same var for every use on one tape).
    pub fn var(&self, tape: &mut Tape) -> Var {
        tape.keyed_leaf(self.id, &self.value, self.grad.as_ref())
    }

    /// Its gradient on `tape` after backward, if it took part in the loss.
    pub fn grad<'t>(&self, tape: &'t Tape) -> Option<&'t Tensor> {
        tape.keyed_var(self.id).and_then(|v| tape.grad(v))
    }

    /// The gradient destination of a packed parameter (see [`pack`]).
    pub fn grad_view(&self) -> Option<&Tensor> {
        self.grad.as_ref()
    }
    /// The store a packed parameter lives in.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }
    /// Unique id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// Name, e.g. `enc.0.weight`.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Current value (updated in place by optimizers).
    pub fn value(&self) -> &Tensor {
        &self.value
    }
}

/// Fully connected layer y = act(x·Wᵀ + b), W \[out, in\] and b \[1, out\] as in PyTorch's `nn.Linear`.
#[derive(Clone, Debug)]
pub struct Linear {
    /// Weight \[out, in\].
    pub weight: Param,
    /// Bias \[1, out\].
    pub bias: Param,
    /// Activation fused into the matmul epilogue.
    pub act: Act,
}

impl Linear {
    /// PyTorch's default initialisation: W, b ~ U(−1/√in, 1/√in), from `rng`.
    pub fn new(gpu: &Gpu, name: &str, inputs: usize, outputs: usize, act: Act, rng: &mut impl Rng) -> Result<Self> {
        let (w, b) = Self::init_values(name, inputs, outputs, rng)?;
        Self::from_values(gpu, name, inputs, outputs, &w, &b, act)
    }

    /// The values [`Linear::new`] draws: W \[out, in\] row-major, then b \[out\].
    pub fn init_values(name: &str, inputs: usize, outputs: usize, rng: &mut impl Rng) -> Result<(Vec<f32>, Vec<f32>)> {
        if inputs == 0 || outputs == 0 {
            return Err(Error::arg(
                name,
                format!("a linear layer needs at least one input and output, got {inputs} -> {outputs}"),
            ));
        }
        let bound = 1.0 / (inputs as f32).sqrt();
        let w: Vec<f32> = (0..inputs * outputs).map(|_| rng.random_range(-bound..bound)).collect();
        let b: Vec<f32> = (0..outputs).map(|_| rng.random_range(-bound..bound)).collect();
        Ok((w, b))
    }

    /// A layer with the given weight \[out, in\] (row-major) and bias \[out\].
    pub fn from_values(
        gpu: &Gpu,
        name: &str,
        inputs: usize,
        outputs: usize,
        w: &[f32],
        b: &[f32],
        act: Act,
    ) -> Result<Self> {
        if inputs == 0 || outputs == 0 {
            return Err(Error::arg(
                name,
                format!("a linear layer needs at least one input and output, got {inputs} -> {outputs}"),
            ));
        }
        Ok(Linear {
            weight: Param::new(format!("{name}.weight"), Tensor::from_slice(gpu, outputs, inputs, w)?),
            bias: Param::new(format!("{name}.bias"), Tensor::from_slice(gpu, 1, outputs, b)?),
            act,
        })
    }
    /// Records y = act(x·Wᵀ + b).
    pub fn forward(&self, tape: &mut Tape, x: Var) -> Result<Var> {
        let w = self.weight.var(tape);
        let b = self.bias.var(tape);
        ops::linear(tape, x, w, Some(b), self.act)
    }
    /// \[weight, bias\].
    pub fn params(&self) -> Vec<&Param> {
        vec![&self.weight, &self.bias]
    }
    /// \[weight, bias\], mutably (for [`pack`]).
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        vec![&mut self.weight, &mut self.bias]
    }
}

/// A stack of [`Linear`] layers: `act` after every layer but the last, `out_act` after the last.
#[derive(Clone, Debug)]
pub struct Mlp {
    /// The layers, input first.
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// Sizes `[in, h1, ..., out]`; layer names are `{name}.{i}`.
    pub fn new(gpu: &Gpu, name: &str, sizes: &[usize], act: Act, out_act: Act, seed: u64) -> Result<Self> {
        if sizes.len() < 2 {
            return Err(Error::arg(name, "an MLP needs at least an input and an output size"));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n = sizes.len() - 1;
        let layers = (0..n)
            .map(|i| {
                Linear::new(
                    gpu,
                    &format!("{name}.{i}"),
                    sizes[i],
                    sizes[i + 1],
                    if i + 1 == n { out_act } else { act },
                    &mut rng,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }
    /// Records the forward pass.
    pub fn forward(&self, tape: &mut Tape, mut x: Var) -> Result<Var> {
        for l in &self.layers {
            x = l.forward(tape, x)?;
        }
        Ok(x)
    }
    /// All parameters, layer by layer.
    pub fn params(&self) -> Vec<&Param> {
        self.layers.iter().flat_map(|l| l.params()).collect()
    }
    /// All parameters, mutably (for [`pack`]).
    pub fn params_mut(&mut self) -> Vec<&mut Param> {
        self.layers.iter_mut().flat_map(|l| l.params_mut()).collect()
    }
}

/// An optimizer: records the update of every parameter that received a gradient on `tape`, in
/// the same submission as the step.
pub trait Optimizer {
    /// One update from the gradients on `tape`.
    fn step(&mut self, tape: &mut Tape, params: &[&Param]) -> Result<()>;
    /// The learning rate.
    fn lr(&self) -> f32;
    /// Changes the learning rate (schedules, recovering from a divergence).
    fn set_lr(&mut self, lr: f32);
}

/// Plain stochastic gradient descent, p -= lr·grad, recorded on the step's tape (no extra submit).
#[derive(Clone, Copy, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f32,
}

impl Sgd {
    /// Validates the learning rate.
    pub fn new(lr: f32) -> Result<Self> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(Error::arg("lr", format!("{lr} is not a positive finite learning rate")));
        }
        Ok(Sgd { lr })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, tape: &mut Tape, params: &[&Param]) -> Result<()> {
        for p in params {
            if let Some(g) = p.grad(tape).cloned() {
                ops::elementwise::axpy_inplace(tape, -self.lr, &g, p.value())?;
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
