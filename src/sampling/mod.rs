//! Sampling: the noise schedule, noise generators and the denoising loop, with k-diffusion
//! semantics (the latent is in variance-exploding form, x = x₀ + σ·ε, and the model is wrapped
//! as k-diffusion's `CompVisDenoiser`).
//!
//! [`schedule`] is pure scalar math (no candle): ᾱ, the σ table, t ↔ σ, Karras / normal / DDIM
//! step schedules. [`noise`] holds the [`noise::NoiseSource`] interface and sdtrace's own
//! device-independent generator; [`rng`] the other `--rng` generators (PyTorch CPU and CUDA
//! emulations, A1111's NV, files, the device's own) and A1111's drawing order with ENSD. [`denoiser`] turns a model into a CFG denoiser (c_in scaling,
//! ε- or v-prediction, one batched call for uncond and cond). [`sampler`] runs the loop and
//! records `sampler.*` probe points; [`diffusers`] runs diffusers' own schedulers instead
//! (`--sampler-impl diffusers`), configured from the model's `scheduler_config.json`. Invariant: nothing here draws randomness except through a
//! `NoiseSource`, so a run is a pure function of its inputs, settings and seed.

pub mod denoiser;
pub mod diffusers;
pub mod noise;
pub mod rng;
pub mod sampler;
pub mod schedule;

pub use denoiser::{Batching, Denoiser, UNetDenoiser};
pub use noise::{NoiseSource, SdtraceNoise};
pub use rng::{RngError, RngSpec, RunRng};
pub use sampler::{Sampler, SamplerImpl, SamplerKind, SamplerSpec};
pub use schedule::{AlphasPrecision, DiscreteSchedule, KarrasBounds};

/// Errors of schedule construction and sampling. Bad settings are reported, never panicked on.
#[derive(Debug, thiserror::Error)]
pub enum SamplingError {
    #[error("unknown sampler '{name}' (expected one of: {valid})")]
    UnknownSampler { name: String, valid: String },
    #[error("steps must be at least 1")]
    ZeroSteps,
    #[error("{sampler} takes at most {max} steps, {steps} given")]
    TooManySteps {
        sampler: &'static str,
        steps: u32,
        max: u32,
    },
    #[error("cfg scale must be a finite number, got {0}")]
    BadCfgScale(f64),
    #[error("Karras bounds must satisfy 0 < sigma_min < sigma_max, got ({min}, {max})")]
    BadKarrasBounds { min: f64, max: f64 },
    #[error("denoiser output: {0}")]
    BadDenoiserOutput(String),
    #[error("noise of shape {0:?} has too many elements")]
    BadShape(Vec<usize>),
    /// A `scheduler_config.json` that is not valid or asks for what sdtrace does not follow.
    #[error("{}: {key}{}{what}", file.display(), if key.is_empty() { "" } else { " " })]
    SchedulerConfig {
        file: std::path::PathBuf,
        key: String,
        what: String,
    },
    /// A combination of settings sdtrace does not follow; the message says which and why.
    #[error("{0}")]
    Unsupported(String),
    #[error("conditioning: {0}")]
    BadConditioning(String),
    #[error(transparent)]
    Rng(Box<rng::RngError>),
    /// The step callback asked to stop (Ctrl-C, NaN with `--stop-on-nan`).
    #[error("stopped after step {step}: {reason}")]
    Stopped { step: u32, reason: String },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Probe(#[from] crate::probe::ProbeError),
}

impl From<candle_core::Error> for SamplingError {
    fn from(e: candle_core::Error) -> Self {
        SamplingError::Model(e.into())
    }
}

pub type Result<T, E = SamplingError> = std::result::Result<T, E>;
