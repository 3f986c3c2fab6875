//! Checkpoints in safetensors: the weights under PyTorch `nn.Linear` state-dict names (`weight`
//! \[out, in\], `bias` \[out\], f32), the Adam moments under `optimizer.exp_avg.NAME` /
//! `optimizer.exp_avg_sq.NAME`, and the model config, step, epoch and RNG seed as string metadata.
//! Writes are atomic: a temporary file in the same directory, synced, then renamed over the target,
//! so a crash never leaves a half-written checkpoint where a good one was.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::nn::{Adam, Param};
use crate::tensor::Tensor;
use crate::vae::{Vae, VaeConfig};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "wgvae-checkpoint-1";

/// A checkpoint read from disk.
#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// Where it was read from.
    pub path: PathBuf,
    /// The model's architecture.
    pub config: VaeConfig,
    /// String metadata (`step`, `epoch`, `seed`, `adam_t`, training options, ...).
    pub meta: HashMap<String, String>,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

fn ck_err(path: &Path, detail: impl Into<String>) -> Error {
    Error::Checkpoint { path: path.to_path_buf(), detail: detail.into() }
}

/// The shape a parameter has in the file (biases are 1-D there, \[1, n\] on the GPU).
fn file_shape(p: &Param) -> Vec<usize> {
    let t = p.value();
    if p.name().ends_with(".bias") {
        vec![t.cols()]
    } else {
        vec![t.rows(), t.cols()]
    }
}

/// Saves `vae` (and `opt`'s moments) with `meta` to `path`, atomically.
pub fn save(path: &Path, gpu: &Gpu, vae: &Vae, opt: Option<&Adam>, meta: &HashMap<String, String>) -> Result<()> {
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, t: &Tensor| -> Result<()> {
        let v = t.to_vec(gpu)?;
        tensors.push((name, shape, bytemuck::cast_slice(&v).to_vec()));
        Ok(())
    };
    for (name, t) in vae.buffers() {
        push(name.to_string(), vec![t.len()], t)?;
    }
    for p in vae.params() {
        push(p.name().to_string(), file_shape(p), p.value())?;
        if let Some((m, v)) = opt.and_then(|o| o.moments(p)) {
            push(format!("optimizer.exp_avg.{}", p.name()), file_shape(p), m)?;
            push(format!("optimizer.exp_avg_sq.{}", p.name()), file_shape(p), v)?;
        }
    }
    let mut info = meta.clone();
    info.insert("format".into(), FORMAT.into());
    info.insert("config".into(), vae.config.to_json().to_string());
    if let Some(o) = opt {
        info.insert("adam_t".into(), o.t.to_string());
    }
    let views = tensors
        .iter()
        .map(|(n, s, d)| {
            Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d).map_err(|e| ck_err(path, e.to_string()))?))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, Some(info)).map_err(|e| ck_err(path, e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

impl Checkpoint {
    /// Reads and validates a checkpoint (format, config, every tensor f32 and finite-sized).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| ck_err(path, format!("not a readable safetensors file ({e})")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| ck_err(path, e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(ck_err(path, format!("no `format: {FORMAT}` metadata: not a wgvae checkpoint")));
        }
        let cfg: serde_json::Value = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .ok_or_else(|| ck_err(path, "the `config` metadata is missing or not JSON"))?;
        let config = VaeConfig::from_json(&cfg).map_err(|e| ck_err(path, e.to_string()))?;
        let mut tensors = HashMap::new();
        for name in st.names() {
            let t = st.tensor(name).map_err(|e| ck_err(path, e.to_string()))?;
            if t.dtype() != Dtype::F32 {
                return Err(ck_err(path, format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
            }
            let data: Vec<f32> =
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            tensors.insert(name.to_string(), (t.shape().to_vec(), data));
        }
        Ok(Checkpoint { path: path.to_path_buf(), config, meta, tensors })
    }

    /// A metadata value parsed as a number.
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        self.meta.get(key).and_then(|v| v.parse().ok())
    }

    fn tensor_for(&self, name: &str, p: &Param) -> Result<&Vec<f32>> {
        let (shape, data) =
            self.tensors.get(name).ok_or_else(|| ck_err(&self.path, format!("tensor `{name}` is missing")))?;
        if *shape != file_shape(p) {
            return Err(ck_err(
                &self.path,
                format!("tensor `{name}` is {shape:?}, the model needs {:?}", file_shape(p)),
            ));
        }
        Ok(data)
    }

    /// Builds the saved model on `gpu`.
    pub fn vae(&self, gpu: &Gpu) -> Result<Vae> {
        let vae = Vae::new(gpu, self.config.clone(), 0)?;
        for p in vae.params() {
            p.value().write(gpu, self.tensor_for(p.name(), p)?)?;
        }
        for (name, t) in vae.buffers() {
            let (shape, data) =
                self.tensors.get(name).ok_or_else(|| ck_err(&self.path, format!("tensor `{name}` is missing")))?;
            if *shape != [t.len()] {
                return Err(ck_err(&self.path, format!("tensor `{name}` is {shape:?}, the model needs [{}]", t.len())));
            }
            t.write(gpu, data)?;
        }
        Ok(vae)
    }

    /// Restores Adam's step count and the moments of `vae`'s parameters (all or none must exist).
    pub fn restore_adam(&self, gpu: &Gpu, vae: &Vae, opt: &mut Adam) -> Result<()> {
        opt.t = self.meta_u64("adam_t").unwrap_or(0);
        for p in vae.params() {
            let (mk, vk) = (format!("optimizer.exp_avg.{}", p.name()), format!("optimizer.exp_avg_sq.{}", p.name()));
            if !self.tensors.contains_key(&mk) && opt.t == 0 {
                continue;
            }
            let (r, c) = (p.value().rows(), p.value().cols());
            let m = Tensor::from_slice(gpu, r, c, self.tensor_for(&mk, p)?)?;
            let v = Tensor::from_slice(gpu, r, c, self.tensor_for(&vk, p)?)?;
            opt.set_moments(p, m, v)?;
        }
        Ok(())
    }
}
