//! Instrumented Stable Diffusion models on candle — the only place besides the pipeline where a
//! tensor library type appears.
//!
//! [`unet::UNet`] is our own UNet2DConditionModel, written module for module after diffusers so
//! that a `VarBuilder` path, a weight key, a PyTorch module name and a probe key are the same
//! string (`unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1`). Every module output
//! goes through [`observe::observe`], which asks the [`crate::probe::Probe`] before copying a
//! tensor to the host, so a disabled probe costs a branch per module and recording never changes
//! a value. [`attention`] holds the selectable attention implementations, [`config`] the SD 1.x
//! / 2.x / tiny configurations, [`synth`] deterministic random-weight models, [`vae`] the VAE
//! decoder that turns latents into the `image` record.

pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod cpu;
pub mod hash;
pub mod ldm;
pub mod observe;
pub mod synth;
pub mod unet;
pub mod vae;

use std::path::PathBuf;

/// Errors of model construction and evaluation.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// candle's errors are told by their first line and are not a [`source`]: their text
    /// carries a backtrace when RUST_BACKTRACE is set, which a message's chain would repeat.
    ///
    /// [`source`]: std::error::Error::source
    #[error("{}", first_line(.0))]
    Candle(candle_core::Error),
    #[error("{file}: {}", first_line(.error))]
    Weights {
        file: PathBuf,
        error: candle_core::Error,
    },
    #[error("{file}: unsupported model config: field '{field}' {what}")]
    Config {
        file: PathBuf,
        field: String,
        what: String,
    },
    #[error("{path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("attention '{key}': {what}")]
    Attention { key: String, what: String },
    #[error(
        "invalid attention implementation '{text}': {what} (expected full, sliced:N, split:auto, split:BUDGET such as split:2.5GiB, or subquad:Q,KV)"
    )]
    BadAttention { text: String, what: String },
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
    #[error(transparent)]
    Checkpoint(#[from] ldm::CheckpointError),
    /// A file of a synthetic model could not be written.
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
}

/// candle errors carry a backtrace in their text when RUST_BACKTRACE is set; keep the message.
fn first_line(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().to_string()
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        ModelError::Candle(e)
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Read a JSON config file; errors name the file.
pub fn read_json(path: &std::path::Path) -> Result<serde_json::Value> {
    let text = crate::files::require_regular(path)
        .and_then(|_| std::fs::read_to_string(path))
        .map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            op: "cannot read",
            source,
        })?;
    serde_json::from_str(&text).map_err(|e| ModelError::Config {
        file: path.to_path_buf(),
        field: "(file)".into(),
        what: format!("is not valid JSON: {e}"),
    })
}
