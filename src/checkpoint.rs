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
    if let Some(s) = p.file_shape() {
        return s.to_vec();
    }
    let t = p.value();
    if p.name().ends_with(".bias") {
        vec![t.cols()]
    } else {
        vec![t.rows(), t.cols()]
    }
}

/// One tensor of the file: its name and shape, and which values of which parameter it holds.
struct Entry {
    name: String,
    shape: Vec<usize>,
    param: usize,
    range: std::ops::Range<usize>,
}

/// The file's tensors for `params`, in PyTorch `nn.Linear` names. The stacked posterior head
/// (`fc_mu+fc_logvar.*`, see [`crate::vae::HEAD`]) is stored as its two halves, `fc_mu.*` and
/// `fc_logvar.*`, as PyTorch's two layers are: the first half of its row-major values is fc_mu's.
fn entries(params: &[&Param]) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, p) in params.iter().enumerate() {
        let shape = file_shape(p);
        let n = p.value().len();
        match p.name().split_once('.') {
            Some((stack, suffix)) if stack.contains('+') => {
                let parts: Vec<&str> = stack.split('+').collect();
                let k = parts.len();
                let mut part_shape = shape.clone();
                part_shape[0] /= k;
                for (j, part) in parts.iter().enumerate() {
                    out.push(Entry {
                        name: format!("{part}.{suffix}"),
                        shape: part_shape.clone(),
                        param: i,
                        range: j * n / k..(j + 1) * n / k,
                    });
                }
            }
            _ => out.push(Entry { name: p.name().to_string(), shape, param: i, range: 0..n }),
        }
    }
    out
}

/// One tensor of a state dict: name, shape, values (row-major).
pub type StateEntry = (String, Vec<usize>, Vec<f32>);

/// The model's weights as PyTorch would name and shape them (`nn.Linear` state-dict names, biases
/// 1-D, `fc_mu` and `fc_logvar` as separate layers), in the order of [`Vae::params`]; BN-VAE
/// running statistics last. Blocks; see [`state_dict_async`].
#[cfg(not(target_arch = "wasm32"))]
pub fn state_dict(gpu: &Gpu, vae: &Vae) -> Result<Vec<StateEntry>> {
    pollster::block_on(state_dict_async(gpu, vae))
}

/// [`state_dict`] without blocking.
pub async fn state_dict_async(gpu: &Gpu, vae: &Vae) -> Result<Vec<StateEntry>> {
    let params = vae.params();
    let mut values = Vec::new();
    for p in &params {
        values.push(p.value().to_vec_async(gpu).await?);
    }
    let mut out: Vec<_> =
        entries(&params).into_iter().map(|e| (e.name, e.shape, values[e.param][e.range].to_vec())).collect();
    for (name, t) in vae.buffers() {
        out.push((name.to_string(), vec![t.len()], t.to_vec_async(gpu).await?));
    }
    Ok(out)
}

/// Saves `vae` (and `opt`'s moments) with `meta` to `path`, atomically.
#[cfg(not(target_arch = "wasm32"))]
pub fn save(
    path: impl AsRef<Path>,
    gpu: &Gpu,
    vae: &Vae,
    opt: Option<&Adam>,
    meta: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = pollster::block_on(to_bytes_async(gpu, vae, opt, meta)).map_err(|e| match e {
        Error::Checkpoint { detail, .. } => ck_err(path, detail),
        e => e,
    })?;
    write_atomic(path, &bytes)
}

/// The checkpoint file's bytes (what [`save`] writes): a browser offers them as a download, and
/// [`Checkpoint::from_bytes`] reads them back.
pub async fn to_bytes_async(
    gpu: &Gpu,
    vae: &Vae,
    opt: Option<&Adam>,
    meta: &HashMap<String, String>,
) -> Result<Vec<u8>> {
    let label = Path::new("(in memory)");
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in vae.buffers() {
        let v = t.to_vec_async(gpu).await?;
        tensors.push((name.to_string(), vec![t.len()], bytemuck::cast_slice(&v).to_vec()));
    }
    let params = vae.params();
    let mut values = Vec::new();
    let mut moments = Vec::new();
    for p in &params {
        values.push(p.value().to_vec_async(gpu).await?);
        moments.push(match opt.and_then(|o| o.moments(p)) {
            Some((m, v)) => Some((m.to_vec_async(gpu).await?, v.to_vec_async(gpu).await?)),
            None => None,
        });
    }
    let mut push = |name: String, shape: &[usize], v: &[f32]| {
        tensors.push((name, shape.to_vec(), bytemuck::cast_slice(v).to_vec()));
    };
    for e in entries(&params) {
        push(e.name.clone(), &e.shape, &values[e.param][e.range.clone()]);
        if let Some((m, v)) = &moments[e.param] {
            push(format!("optimizer.exp_avg.{}", e.name), &e.shape, &m[e.range.clone()]);
            push(format!("optimizer.exp_avg_sq.{}", e.name), &e.shape, &v[e.range.clone()]);
        }
    }
    let mut info = meta.clone();
    info.insert("format".into(), FORMAT.into());
    info.insert("config".into(), serde_json::to_string(&vae.config).map_err(|e| ck_err(label, e.to_string()))?);
    if let Some(o) = opt {
        info.insert("adam_t".into(), o.t.to_string());
    }
    let views = tensors
        .iter()
        .map(|(n, s, d)| {
            Ok((n.clone(), TensorView::new(Dtype::F32, s.clone(), d).map_err(|e| ck_err(label, e.to_string()))?))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, Some(info)).map_err(|e| ck_err(label, e.to_string()))
}

/// Writes `bytes` to `path` through a synced temporary file, a rename and a synced directory.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let path = path.as_ref();
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the directory entry is: sync the directory too
        // (Unix; elsewhere a directory cannot be opened as a file).
        #[cfg(unix)]
        std::fs::File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Removes `.NAME.tmp-PID` files in `dir` (left by [`write_atomic`] when its process was killed
/// mid-write) whose process is gone: on Linux when /proc has no such PID, elsewhere when the
/// file is over an hour old. Best effort: what cannot be read or removed is left.
pub fn remove_stale_temporaries(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) =
            name.strip_prefix('.').and_then(|n| n.rsplit_once(".tmp-")).and_then(|(_, p)| p.parse::<u32>().ok())
        else {
            continue;
        };
        let dead = if cfg!(target_os = "linux") {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        } else {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age.as_secs() > 3600)
        };
        if dead {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Checkpoint metadata naming a data directory: `data` (the path as text) and, for a path that
/// is not valid UTF-8 (Unix), `data_path_hex` with its exact bytes, so that `eval` finds it later.
pub fn data_meta(dir: &Path) -> Vec<(String, String)> {
    #[cfg_attr(not(unix), allow(unused_mut))]
    let mut m = vec![("data".to_string(), dir.display().to_string())];
    #[cfg(unix)]
    if dir.to_str().is_none() {
        use std::os::unix::ffi::OsStrExt;
        let hex: String = dir.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        m.push(("data_path_hex".to_string(), hex));
    }
    m
}

/// A numeric metadata value must parse (and be finite) when present: garbage is never silently
/// replaced by a default.
fn check_meta(path: &Path, meta: &HashMap<String, String>, key: &str, valid: fn(&str) -> bool) -> Result<()> {
    match meta.get(key) {
        Some(v) if !valid(v) => Err(ck_err(path, format!("metadata `{key}` is `{v}`, which is not a valid value"))),
        _ => Ok(()),
    }
}

impl Checkpoint {
    /// Reads and validates a checkpoint (format, config, every tensor f32 and finite-sized).
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Self::from_bytes(&bytes, path)
    }

    /// Reads and validates a checkpoint from its bytes (a browser's upload, say); `path` names it
    /// in errors and is kept as [`Checkpoint::path`].
    pub fn from_bytes(bytes: &[u8], path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| ck_err(path, format!("not a readable safetensors file ({e})")))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| ck_err(path, e.to_string()))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(FORMAT) {
            return Err(ck_err(path, format!("no `format: {FORMAT}` metadata: not a wgvae checkpoint")));
        }
        let cfg = meta.get("config").ok_or_else(|| ck_err(path, "the `config` metadata is missing"))?;
        let config: VaeConfig =
            serde_json::from_str(cfg).map_err(|e| ck_err(path, format!("the `config` metadata is invalid: {e}")))?;
        // The config is checked against the file's own tensors before anything is built from it:
        // a config claiming huge layers must not allocate them.
        let shapes = config.state_shapes().map_err(|e| ck_err(path, format!("the `config` metadata: {e}")))?;
        for (name, want) in &shapes {
            let t = st.tensor(name).map_err(|_| {
                ck_err(path, format!("tensor `{name}` {want:?}, which the `config` metadata implies, is missing"))
            })?;
            if t.shape() != want.as_slice() {
                return Err(ck_err(
                    path,
                    format!("tensor `{name}` is {:?}, but the `config` metadata implies {want:?}", t.shape()),
                ));
            }
        }
        for key in ["step", "epoch", "seed", "adam_t", "data_seed", "batch", "image_size"] {
            check_meta(path, &meta, key, |v| v.parse::<u64>().is_ok())?;
        }
        for key in ["lr", "beta", "free_bits"] {
            check_meta(path, &meta, key, |v| v.parse::<f32>().is_ok_and(f32::is_finite))?;
        }
        let mut tensors = HashMap::new();
        for name in st.names() {
            let t = st.tensor(name).map_err(|e| ck_err(path, e.to_string()))?;
            if t.dtype() != Dtype::F32 {
                return Err(ck_err(path, format!("tensor `{name}` is {:?}, expected F32", t.dtype())));
            }
            let data: Vec<f32> =
                t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(ck_err(
                    path,
                    format!(
                        "tensor `{name}` holds a non-finite value ({} at index {i}): the run diverged before \
                         this checkpoint was written; use an earlier checkpoint",
                        data[i]
                    ),
                ));
            }
            tensors.insert(name.to_string(), (t.shape().to_vec(), data));
        }
        Ok(Checkpoint { path: path.to_path_buf(), config, meta, tensors })
    }

    /// The data the model was trained on: `data` when given, else what the checkpoint's `data`
    /// metadata names (`sprites` or `shapes`, with its `data_seed`, or an IDX directory or image
    /// folder, read with the run's `image_size`).
    pub fn data(&self, data: Option<&Path>) -> Result<crate::data::Split> {
        self.data_within(data, crate::data::MAX_DATASET_BYTES)
    }

    /// [`Checkpoint::data`] refusing image files that announce more than `max_bytes` of pixels.
    pub fn data_within(&self, data: Option<&Path>, max_bytes: u64) -> Result<crate::data::Split> {
        let size = self.meta_u64("image_size").map(|s| s as usize);
        let seed = self.meta_u64("data_seed").unwrap_or(0);
        let load_dir_within = |d: &Path, max| crate::data::load_dir(d, size, seed, max);
        match (data, self.data_path()) {
            (Some(d), _) => load_dir_within(d, max_bytes),
            (None, None) => {
                let name = self.meta.get("data").map_or("sprites", String::as_str);
                Ok(crate::data::builtin(name, seed).expect("data_path names every other dataset"))
            }
            (None, Some(d)) => load_dir_within(&d, max_bytes),
        }
    }

    /// The data directory the run trained on (`None`: the built-in sprites or shapes). Paths that are not
    /// UTF-8 are stored byte for byte in `data_path_hex` (see [`data_meta`]).
    pub fn data_path(&self) -> Option<PathBuf> {
        if let Some(hex) = self.meta.get("data_path_hex") {
            let bytes: Option<Vec<u8>> =
                (0..hex.len() / 2).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect();
            #[cfg(unix)]
            if let Some(b) = bytes {
                use std::os::unix::ffi::OsStringExt;
                return Some(PathBuf::from(std::ffi::OsString::from_vec(b)));
            }
            #[cfg(not(unix))]
            let _ = bytes;
        }
        match self.meta.get("data").map(String::as_str) {
            None | Some("sprites") | Some("shapes") => None,
            Some(d) => Some(PathBuf::from(d)),
        }
    }

    /// The model on `gpu` with the data it was trained on (or `data`), checked to fit each other.
    pub fn model_with_data(&self, gpu: &Gpu, data: Option<&Path>) -> Result<(Vae, crate::data::Split)> {
        let split = self.data_within(data, crate::data::MAX_DATASET_BYTES)?;
        let vae = self.vae(gpu)?;
        if split.test.dim() != vae.config.input_dim {
            return Err(Error::arg(
                "data",
                format!(
                    "{} has {} values per example, the model takes {}",
                    split.name,
                    split.test.dim(),
                    vae.config.input_dim
                ),
            ));
        }
        Ok((vae, split))
    }

    /// The evaluation batch and seed the run evaluated with, so that figures computed from this
    /// checkpoint match its metrics.jsonl.
    pub fn eval_settings(&self) -> Result<(usize, u64)> {
        let o = self.train_options()?;
        Ok((crate::train::eval_batch(o.batch), o.seed))
    }

    /// The training options the run used (`options` metadata; checkpoints from before it give
    /// lr, batch and seed from their own keys and the default objective).
    pub fn train_options(&self) -> Result<crate::train::TrainOptions> {
        if let Some(o) = self.meta.get("options") {
            return serde_json::from_str(o)
                .map_err(|e| ck_err(&self.path, format!("the `options` metadata is invalid: {e}")));
        }
        let mut o = crate::train::TrainOptions::default();
        if let Some(v) = self.meta_parsed::<f32>("lr")? {
            o.lr = v;
        }
        if let Some(v) = self.meta_parsed::<usize>("batch")? {
            o.batch = v;
        }
        if let Some(v) = self.meta_parsed::<u64>("seed")? {
            o.seed = v;
        }
        Ok(o)
    }

    /// A metadata value parsed as `T`: `None` when absent, an error naming the key when it does
    /// not parse (garbage metadata is never silently replaced by a default).
    pub fn meta_parsed<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>> {
        match self.meta.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse::<T>()
                .map(Some)
                .map_err(|_| ck_err(&self.path, format!("metadata `{key}` is `{v}`, which is not a valid value"))),
        }
    }

    /// A metadata value parsed as a number.
    pub fn meta_u64(&self, key: &str) -> Option<u64> {
        self.meta.get(key).and_then(|v| v.parse().ok())
    }

    fn tensor_for(&self, name: &str, want: &[usize]) -> Result<&Vec<f32>> {
        let (shape, data) =
            self.tensors.get(name).ok_or_else(|| ck_err(&self.path, format!("tensor `{name}` is missing")))?;
        if shape != want {
            return Err(ck_err(&self.path, format!("tensor `{name}` is {shape:?}, the model needs {want:?}")));
        }
        Ok(data)
    }

    /// The values of every parameter of `params`, gathered from the file's tensors named
    /// `prefix` + the entry name (`""` for weights, `optimizer.exp_avg.` for moments).
    fn param_values(&self, params: &[&Param], prefix: &str) -> Result<Vec<Vec<f32>>> {
        let mut values: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.value().len()]).collect();
        for e in entries(params) {
            let data = self.tensor_for(&format!("{prefix}{}", e.name), &e.shape)?;
            values[e.param][e.range.clone()].copy_from_slice(data);
        }
        Ok(values)
    }

    /// Builds the saved model on `gpu`.
    pub fn vae(&self, gpu: &Gpu) -> Result<Vae> {
        let vae = Vae::new(gpu, self.config.clone(), 0)?;
        let params = vae.params();
        for (p, v) in params.iter().zip(self.param_values(&params, "")?) {
            p.value().write(gpu, &v)?;
        }
        for (name, t) in vae.buffers() {
            let (shape, data) =
                self.tensors.get(&name).ok_or_else(|| ck_err(&self.path, format!("tensor `{name}` is missing")))?;
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
        if opt.t == 0 && !self.tensors.keys().any(|k| k.starts_with("optimizer.")) {
            return Ok(());
        }
        let params = vae.params();
        let ms = self.param_values(&params, "optimizer.exp_avg.")?;
        let vs = self.param_values(&params, "optimizer.exp_avg_sq.")?;
        for ((p, m), v) in params.iter().zip(ms).zip(vs) {
            let (r, c) = (p.value().rows(), p.value().cols());
            opt.set_moments(p, Tensor::from_slice(gpu, r, c, &m)?, Tensor::from_slice(gpu, r, c, &v)?)?;
        }
        Ok(())
    }
}
