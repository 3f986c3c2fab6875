#![allow(clippy::await_holding_refcell_ref)] // one thread; `BUSY` keeps every mutating call out while a promise holds a borrow
//! wgvae in a browser tab: the same library, kernels and checkpoints as the native binary, on the
//! browser's WebGPU (wasm32-unknown-unknown + wasm-bindgen).
//!
//! [`Session`] is what the pages (`www/index.html`, `www/test.html`) drive from JavaScript: open
//! the adapter, run the browser's kernel checks against the f64 reference, train the classic VAE
//! on the built-in sprites an epoch at a time, draw prior samples, reconstructions and latent
//! sweeps, and move checkpoints in and out as the safetensors bytes the CLI reads and writes.
//!
//! Every method that touches the GPU returns a `Promise`; the page calls one at a time (a second
//! call while one runs is refused with "busy", never interleaved).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wgvae::checkpoint::Checkpoint;
use wgvae::data::sprites::sprites;
use wgvae::data::Split;
use wgvae::train::{Control, EpochMetrics, FitOptions, Progress, TrainOptions, Trainer};
use wgvae::vae::objective::Objective;
use wgvae::vae::{Vae, VaeConfig};
use wgvae::Gpu;

pub mod checks;
#[path = "../../tests/common/oracle.rs"]
#[allow(clippy::all)]
pub mod oracle;

/// Panics reach the browser console with their message (instead of "unreachable executed").
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| web_sys::console::error_1(&info.to_string().into())));
}

fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsError::new(&e.to_string()).into()
}

/// The seed of the sprites' train/test split: the one `wgvae train` uses, so a model trained in
/// the page and one trained by the CLI see the same data.
const SPLIT_SEED: u64 = 0;

struct Inner {
    gpu: Gpu,
    split: Split,
    trainer: Option<Trainer>,
    /// A model opened from a checkpoint (sampling and sweeps only).
    opened: Option<Vae>,
    /// The last epoch's metrics (its KL per dimension orders the sliders).
    last: Option<EpochMetrics>,
}

impl Inner {
    fn vae(&self) -> Result<&Vae, JsValue> {
        match (&self.trainer, &self.opened) {
            (Some(t), _) => Ok(&t.vae),
            (None, Some(v)) => Ok(v),
            (None, None) => Err(js_err("no model yet: start training or open a checkpoint")),
        }
    }
}

/// A WebGPU device with the sprites loaded, and the model being trained or looked at.
#[wasm_bindgen]
pub struct Session {
    inner: Rc<RefCell<Inner>>,
}

/// Runs `f` on the session state as a promise, refusing to overlap with a call still running.
fn spawn<F, Fut>(inner: &Rc<RefCell<Inner>>, f: F) -> js_sys::Promise
where
    F: FnOnce(Rc<RefCell<Inner>>) -> Fut + 'static,
    Fut: std::future::Future<Output = Result<JsValue, JsValue>> + 'static,
{
    let inner = inner.clone();
    wasm_bindgen_futures::future_to_promise(async move {
        if BUSY.with(|b| b.replace(true)) {
            return Err(busy());
        }
        let r = f(inner).await;
        BUSY.with(|b| b.set(false));
        r
    })
}

thread_local! {
    /// Set while a promise of this module runs: calls that would change the model meanwhile are
    /// refused instead of interleaving with it.
    static BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn busy() -> JsValue {
    js_err("busy: the previous call has not finished")
}

fn idle() -> Result<(), JsValue> {
    if BUSY.with(|b| b.get()) {
        Err(busy())
    } else {
        Ok(())
    }
}

#[wasm_bindgen]
impl Session {
    /// Opens the browser's WebGPU adapter (kernels chosen from its features and subgroup sizes)
    /// and generates the sprites (no download).
    pub async fn open() -> Result<Session, JsValue> {
        let gpu = Gpu::new_async().await.map_err(js_err)?;
        let inner = Inner { gpu, split: sprites(SPLIT_SEED), trainer: None, opened: None, last: None };
        Ok(Session { inner: Rc::new(RefCell::new(inner)) })
    }

    /// The adapter report as JSON (what `wgvae info --json` prints natively).
    pub fn adapter(&self) -> Result<String, JsValue> {
        serde_json::to_string(&self.inner.borrow().gpu.report()).map_err(js_err)
    }

    /// Runs the browser's share of the kernel oracle tests; resolves to a JSON list of
    /// `{name, ok, detail}` (see [`checks`]).
    pub fn checks(&self) -> js_sys::Promise {
        spawn(&self.inner, |inner| async move {
            let gpu = inner.borrow().gpu.clone();
            let results = checks::run(&gpu).await;
            Ok(serde_json::to_string(&results).map_err(js_err)?.into())
        })
    }

    /// A fresh classic VAE (784-400-Z-400-784, Bernoulli) on the sprites with Adam: the model and
    /// options `wgvae train` uses with the same flags (`--seed`, `--latent`, `--beta`, `--lr`,
    /// `--batch`).
    pub fn start(&self, seed: u64, latent: usize, beta: f32, lr: f32, batch: usize) -> Result<(), JsValue> {
        idle()?;
        let mut s = self.inner.try_borrow_mut().map_err(|_| busy())?;
        let config = VaeConfig { input_dim: s.split.train.dim(), latent, ..VaeConfig::classic() };
        let opts = TrainOptions {
            seed,
            lr,
            batch,
            objective: Objective { beta, ..Objective::default() },
            ..Default::default()
        };
        let t = Trainer::new(&s.gpu, config, opts, &s.split).map_err(js_err)?;
        s.trainer = Some(t);
        s.opened = None;
        s.last = None;
        Ok(())
    }

    /// Trains one more epoch (with the library's non-finite rollback) and evaluates on the test
    /// split; resolves to the epoch's metrics as the JSON line `metrics.jsonl` would hold.
    /// `on_progress(batch, batches, running_loss, examples_per_second)` is called during the
    /// epoch; the loop hands the tab back to the browser at each of those read-backs.
    pub fn epoch(&self, on_progress: js_sys::Function) -> js_sys::Promise {
        spawn(&self.inner, move |inner| async move {
            let mut trainer = inner.borrow_mut().trainer.take().ok_or_else(|| js_err("call start() first"))?;
            let fit = FitOptions { epochs: trainer.epoch + 1, ..FitOptions::default() };
            let mut progress = |p: &Progress| {
                let args = js_sys::Array::of4(
                    &(p.batch as f64).into(),
                    &(p.batches as f64).into(),
                    &p.running_loss.into(),
                    &p.examples_per_second.into(),
                );
                let _ = on_progress.apply(&JsValue::NULL, &args);
            };
            let r = trainer.fit_async(&fit, &mut progress, &mut |_| Control::Continue).await;
            let mut s = inner.borrow_mut();
            s.trainer = Some(trainer);
            let m = r.map_err(js_err)?.pop().ok_or_else(|| js_err("the epoch produced no metrics"))?;
            let line = m.to_json_line();
            s.last = Some(m);
            Ok(line.into())
        })
    }

    /// The test split's negative ELBO per example (nats) under the model being trained, as the
    /// epoch metrics compute it: before the first epoch, the untrained model's.
    pub fn evaluate(&self) -> js_sys::Promise {
        spawn(&self.inner, move |inner| async move {
            let s = inner.borrow();
            let t = s.trainer.as_ref().ok_or_else(|| js_err("call start() first"))?;
            let r = t.evaluate_full_async(&t.test).await.map_err(js_err)?;
            Ok(r.loss.loss.into())
        })
    }

    /// `n` draws from the prior, decoded: `n` rows of 784 values in \[0, 1\].
    pub fn samples(&self, n: usize, seed: u32) -> js_sys::Promise {
        spawn(&self.inner, move |inner| async move {
            let s = inner.borrow();
            let v = s.vae()?.sample_values_async(&s.gpu, n, seed as u64).await.map_err(js_err)?;
            Ok(js_sys::Float32Array::from(&v[..]).into())
        })
    }

    /// The first `n` test images followed by their reconstructions (decoded posterior means):
    /// `2n` rows of 784 values.
    pub fn reconstructions(&self, n: usize) -> js_sys::Promise {
        spawn(&self.inner, move |inner| async move {
            let s = inner.borrow();
            let x = s.split.test.examples(n);
            let (mu, _) = s.vae()?.encode_values_async(&s.gpu, &x).await.map_err(js_err)?;
            let r = s.vae()?.decode_values_async(&s.gpu, &mu).await.map_err(js_err)?;
            let mut out = x;
            out.extend_from_slice(&r);
            Ok(js_sys::Float32Array::from(&out[..]).into())
        })
    }

    /// Decodes latent vectors (rows of [`Session::latent`] values).
    pub fn decode(&self, z: Vec<f32>) -> js_sys::Promise {
        spawn(&self.inner, move |inner| async move {
            let s = inner.borrow();
            let v = s.vae()?.decode_values_async(&s.gpu, &z).await.map_err(js_err)?;
            Ok(js_sys::Float32Array::from(&v[..]).into())
        })
    }

    /// The model's latent size (0 without a model).
    pub fn latent(&self) -> usize {
        self.inner.borrow().vae().map(|v| v.config.latent).unwrap_or(0)
    }

    /// Latent dimensions, most informative first: by the last epoch's KL per dimension when
    /// training, else in order.
    pub fn active_dims(&self) -> Vec<u32> {
        let s = self.inner.borrow();
        let z = s.vae().map(|v| v.config.latent).unwrap_or(0);
        let mut dims: Vec<u32> = (0..z as u32).collect();
        if let Some(m) = &s.last {
            dims.sort_by(|&a, &b| m.kl_per_dim[b as usize].total_cmp(&m.kl_per_dim[a as usize]));
        }
        dims
    }

    /// The checkpoint of the model being trained: the safetensors bytes `wgvae train` writes
    /// (weights under PyTorch's names, Adam state, options), loadable by `wgvae eval` and PyTorch.
    pub fn checkpoint(&self) -> js_sys::Promise {
        spawn(&self.inner, move |inner| async move {
            let trainer = inner.borrow_mut().trainer.take().ok_or_else(|| js_err("nothing trained yet"))?;
            let mut meta: HashMap<String, String> = [("data".to_string(), "sprites".to_string())].into();
            if let Some(m) = &inner.borrow().last {
                meta.insert(wgvae::train::METRICS_META.to_string(), m.to_json_line());
            }
            let r = trainer.checkpoint_bytes_async(&meta).await;
            inner.borrow_mut().trainer = Some(trainer);
            Ok(js_sys::Uint8Array::from(&r.map_err(js_err)?[..]).into())
        })
    }

    /// Opens a checkpoint trained anywhere (its bytes; `name` is used in error messages) for
    /// sampling and sweeps; returns its config and metadata as JSON.
    pub fn open_checkpoint(&self, bytes: Vec<u8>, name: String) -> Result<String, JsValue> {
        idle()?;
        let mut s = self.inner.try_borrow_mut().map_err(|_| busy())?;
        let ck = Checkpoint::from_bytes(&bytes, &name).map_err(js_err)?;
        if ck.config.classes > 0 {
            return Err(js_err(format!(
                "{name}: a conditional VAE needs labels to decode; the page draws unconditional models"
            )));
        }
        let vae = ck.vae(&s.gpu).map_err(js_err)?;
        let info = serde_json::json!({"config": ck.config, "meta": ck.meta});
        s.opened = Some(vae);
        s.trainer = None;
        s.last = ck.meta.get(wgvae::train::METRICS_META).and_then(|l| serde_json::from_str::<EpochMetrics>(l).ok());
        Ok(info.to_string())
    }
}
