//! The crate's one error type. Every message names the offending thing and says what to do next.

use std::path::PathBuf;

/// Everything that can go wrong in wgvae, as a typed value (the library never panics on user input).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No GPU adapter (or no adapter matching `WGPU_BACKEND` / `WGPU_ADAPTER_NAME`) was found.
    #[error(
        "no GPU adapter found{detail}. Install a GPU driver with Vulkan, Metal, DX12 or OpenGL support; \
         on Linux without a GPU install Mesa's CPU drivers (Debian/Ubuntu: `apt-get install mesa-vulkan-drivers` \
         for lavapipe, or `libegl-mesa0` for llvmpipe through OpenGL ES), then run `wgvae info` to check"
    )]
    NoAdapter {
        /// What was asked for (environment filters), empty when nothing was.
        detail: String,
    },
    /// The adapter refused the device request (limits or features).
    #[error("the adapter `{adapter}` refused to create a device: {reason}")]
    RequestDevice {
        /// Adapter name.
        adapter: String,
        /// wgpu's reason.
        reason: String,
    },
    /// A WGSL kernel failed to compile or validate on this adapter.
    #[error("kernel `{kernel}` failed to compile on this adapter: {message}")]
    Shader {
        /// Kernel name (file and entry point).
        kernel: String,
        /// Validation message from wgpu/naga.
        message: String,
    },
    /// Two operands have shapes that do not fit together.
    #[error("shape mismatch in {op}: {detail}")]
    Shape {
        /// The op that was called.
        op: &'static str,
        /// Which shapes, and what was expected.
        detail: String,
    },
    /// An argument is out of its valid range.
    #[error("invalid argument `{name}`: {detail}")]
    InvalidArgument {
        /// Argument or flag name.
        name: String,
        /// Why it is invalid and what would be valid.
        detail: String,
    },
    /// A buffer would exceed a device limit.
    #[error("{what} needs {needed} bytes but this adapter allows at most {limit} bytes ({limit_name}); use a smaller batch or model")]
    DeviceLimit {
        /// What was being allocated.
        what: String,
        /// Bytes requested.
        needed: u64,
        /// Bytes allowed.
        limit: u64,
        /// Name of the wgpu limit.
        limit_name: &'static str,
    },
    /// The GPU reported an error while running or mapping (device lost, out of memory, ...).
    #[error("GPU error: {0}")]
    Gpu(String),
    /// A gradient was asked for a value that does not take part in the loss, or backward was misused.
    #[error("autograd: {0}")]
    Autograd(String),
    /// A data file is missing, truncated, corrupt or inconsistent with its siblings.
    #[error("{path}: {detail}")]
    Data {
        /// The offending file (or directory).
        path: PathBuf,
        /// What is wrong and, where possible, what to do.
        detail: String,
    },
    /// A checkpoint cannot be used (corrupt, or saved from another configuration).
    #[error("checkpoint {path}: {detail}")]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Training diverged: a batch's loss term became NaN or infinite (seen by the GPU's
    /// non-finite guard).
    #[error("training diverged at step {step}: the {term} of the batch became NaN or infinite; {advice}")]
    Diverged {
        /// The 1-based training step whose loss was first non-finite.
        step: u64,
        /// `reconstruction term`, `KL term`, or both.
        term: String,
        /// What probably caused it and what to change.
        advice: String,
    },
    /// A picture could not be encoded (PNG).
    #[error("image: {0}")]
    Image(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub(crate) fn arg(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::InvalidArgument { name: name.into(), detail: detail.into() }
    }
}

/// `Result` with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
