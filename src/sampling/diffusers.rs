//! diffusers' schedulers as diffusers runs them (`sdtrace record --sampler-impl diffusers`):
//! `EulerDiscreteScheduler` (euler), `DPMSolverMultistepScheduler` (dpmpp-2m, and dpmpp-2m-karras
//! with `use_karras_sigmas`) and `DDIMScheduler` (ddim, η = 0), configured from the model's
//! `scheduler/scheduler_config.json` the way `Scheduler.from_config(pipe.scheduler.config)` does:
//! keys the file gives are used, keys it lacks take the chosen class's default.
//!
//! [`SchedulerConfig`] reads and validates that file; what sdtrace cannot follow (another beta
//! schedule, trained betas, thresholding, zero-SNR rescaling, third-order DPM-Solver, SDE
//! variants, …) is refused with the key named, never silently ignored. [`DiffusersSchedule`] is
//! the resolved schedule: ᾱ from f32 betas (`torch.linspace(…, dtype=float32)`, cumulative
//! product accumulated in f64 as PyTorch's CPU kernel does), the step timesteps of the configured
//! `timestep_spacing`, σ by *linear* interpolation of the σ table (`np.interp`, f64) or Karras,
//! and the per-step update. Scalars are computed in f32 as diffusers' 0-d tensors are; tensor
//! operations follow diffusers' order, so a trace agrees with a diffusers run to the rounding of
//! the UNet, not bit for bit.
//!
//! Invariants: the latent stays in the scheduler's own space (k-diffusion space x = x₀ + σ·ε for
//! Euler, variance-preserving x/√(1+σ²) for DPM-Solver and DDIM, whose `init_noise_sigma` is 1),
//! and that is what `sampler.x` records, as the Python recorder does inside diffusers; CFG is
//! combined on the model output (ε or v), not on the denoised values; `sampler.denoised` is the
//! scheduler's x̂₀ (Euler's and DDIM's `pred_original_sample`, DPM-Solver's
//! `convert_model_output`).

use super::denoiser::{Denoiser, cfg_combine};
use super::schedule::linspace_f32;
use super::{Result, SamplingError};
use crate::model::config::Prediction;
use crate::model::observe::observe;
use crate::probe::Probe;
use candle_core::Tensor;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Which diffusers scheduler class runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchedulerClass {
    Euler,
    DpmSolverMultistep,
    Ddim,
}

impl SchedulerClass {
    pub fn name(self) -> &'static str {
        match self {
            SchedulerClass::Euler => "EulerDiscreteScheduler",
            SchedulerClass::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerClass::Ddim => "DDIMScheduler",
        }
    }

    /// The class's default `timestep_spacing`.
    fn default_spacing(self) -> Spacing {
        match self {
            SchedulerClass::Ddim => Spacing::Leading,
            _ => Spacing::Linspace,
        }
    }
}

/// `timestep_spacing`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    Linspace,
    Leading,
    Trailing,
}

impl Spacing {
    pub fn name(self) -> &'static str {
        match self {
            Spacing::Linspace => "linspace",
            Spacing::Leading => "leading",
            Spacing::Trailing => "trailing",
        }
    }
}

/// `beta_schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BetaSchedule {
    ScaledLinear,
    Linear,
}

impl BetaSchedule {
    pub fn name(self) -> &'static str {
        match self {
            BetaSchedule::ScaledLinear => "scaled_linear",
            BetaSchedule::Linear => "linear",
        }
    }
}

/// A validated `scheduler_config.json`: what it says, `None` where it is silent (the scheduler
/// class then decides).
#[derive(Clone, Debug, PartialEq)]
pub struct SchedulerConfig {
    /// The file, for messages and the header (`None`: diffusers' SD defaults).
    pub file: Option<PathBuf>,
    /// `_class_name` (the pipeline's default scheduler; informative only).
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub prediction: Prediction,
    pub timestep_spacing: Option<Spacing>,
    pub steps_offset: u32,
    pub set_alpha_to_one: Option<bool>,
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    pub use_karras_sigmas: Option<bool>,
    /// `final_sigmas_type`: `sigma_min` instead of `zero`.
    pub final_sigma_min: bool,
    pub solver_order: u32,
    /// `solver_type: heun` instead of `midpoint`.
    pub solver_heun: bool,
    pub lower_order_final: bool,
    pub euler_at_final: bool,
}

impl SchedulerConfig {
    /// SD's scheduler config (the LDM schedule: scaled-linear betas 0.00085 to 0.012 over 1000
    /// steps, ε-prediction, `steps_offset` 1, `set_alpha_to_one` false, no clipping).
    pub fn sd() -> Self {
        SchedulerConfig {
            file: None,
            class_name: None,
            num_train_timesteps: super::schedule::TRAIN_STEPS,
            beta_start: super::schedule::BETA_START,
            beta_end: super::schedule::BETA_END,
            beta_schedule: BetaSchedule::ScaledLinear,
            prediction: Prediction::Epsilon,
            timestep_spacing: None,
            steps_offset: 1,
            set_alpha_to_one: Some(false),
            clip_sample: Some(false),
            clip_sample_range: 1.0,
            use_karras_sigmas: None,
            final_sigma_min: false,
            solver_order: 2,
            solver_heun: false,
            lower_order_final: true,
            euler_at_final: false,
        }
    }

    /// Read and validate `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let bad = |what: String| SamplingError::SchedulerConfig {
            file: path.to_path_buf(),
            key: String::new(),
            what,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| bad(format!("cannot be read ({e})")))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| {
            bad(format!(
                "is not JSON ({e}); restore the file diffusers wrote"
            ))
        })?;
        Self::from_json(&v, path)
    }

    /// Validate a parsed config (`file` names it in errors).
    pub fn from_json(v: &Value, file: &Path) -> Result<Self> {
        let err = |key: &str, what: String| SamplingError::SchedulerConfig {
            file: file.to_path_buf(),
            key: key.to_string(),
            what,
        };
        if !v.is_object() {
            return Err(err("", "is not a JSON object".into()));
        }
        let present = |key: &str| !v[key].is_null();
        let num = |key: &str, default: f64| -> Result<f64> {
            match &v[key] {
                Value::Null => Ok(default),
                x => x
                    .as_f64()
                    .filter(|f| f.is_finite())
                    .ok_or_else(|| err(key, format!("must be a number, found {x}"))),
            }
        };
        let uint = |key: &str, default: u64| -> Result<u64> {
            match &v[key] {
                Value::Null => Ok(default),
                x => x
                    .as_u64()
                    .ok_or_else(|| err(key, format!("must be a non-negative integer, found {x}"))),
            }
        };
        let flag = |key: &str| -> Result<Option<bool>> {
            match &v[key] {
                Value::Null => Ok(None),
                x => x
                    .as_bool()
                    .map(Some)
                    .ok_or_else(|| err(key, format!("must be true or false, found {x}"))),
            }
        };
        let text = |key: &str| -> Result<Option<&str>> {
            match &v[key] {
                Value::Null => Ok(None),
                x => x
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| err(key, format!("must be a string, found {x}"))),
            }
        };
        // What sdtrace does not follow: refused, so a run never silently differs.
        let unsupported = |key: &str, what: &str| {
            err(
                key,
                format!(
                    "{what}: sdtrace does not follow this setting; remove it, or record inside diffusers with the Python recorder (sdtrace.record)"
                ),
            )
        };
        let defaults = Self::sd();
        let n = uint("num_train_timesteps", defaults.num_train_timesteps as u64)?;
        if !(2..=100_000).contains(&n) {
            return Err(err(
                "num_train_timesteps",
                format!("is {n}; it must be between 2 and 100000 (SD uses 1000)"),
            ));
        }
        let beta_start = num("beta_start", defaults.beta_start)?;
        let beta_end = num("beta_end", defaults.beta_end)?;
        if !(beta_start > 0.0 && beta_start < beta_end && beta_end < 1.0) {
            return Err(err(
                "beta_start",
                format!(
                    "and beta_end are {beta_start} and {beta_end}; they must satisfy 0 < beta_start < beta_end < 1 (SD: 0.00085 and 0.012)"
                ),
            ));
        }
        let beta_schedule = match text("beta_schedule")? {
            None | Some("scaled_linear") => BetaSchedule::ScaledLinear,
            Some("linear") => BetaSchedule::Linear,
            Some(other) => {
                return Err(unsupported(
                    "beta_schedule",
                    &format!("is '{other}' (sdtrace follows scaled_linear and linear)"),
                ));
            }
        };
        if present("trained_betas") {
            return Err(unsupported("trained_betas", "is set"));
        }
        let prediction = match text("prediction_type")? {
            None | Some("epsilon") => Prediction::Epsilon,
            Some("v_prediction") => Prediction::VPrediction,
            Some(other) => {
                return Err(unsupported(
                    "prediction_type",
                    &format!("is '{other}' (sdtrace follows epsilon and v_prediction)"),
                ));
            }
        };
        let timestep_spacing = match text("timestep_spacing")? {
            None => None,
            Some("linspace") => Some(Spacing::Linspace),
            Some("leading") => Some(Spacing::Leading),
            Some("trailing") => Some(Spacing::Trailing),
            Some(other) => {
                return Err(err(
                    "timestep_spacing",
                    format!("is '{other}'; diffusers knows linspace, leading and trailing"),
                ));
            }
        };
        let steps_offset = uint("steps_offset", 0)?;
        if steps_offset >= n {
            return Err(err(
                "steps_offset",
                format!("is {steps_offset}, not below num_train_timesteps {n} (SD uses 1)"),
            ));
        }
        for key in [
            "thresholding",
            "rescale_betas_zero_snr",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "use_lu_lambdas",
            "use_flow_sigmas",
            "use_dynamic_shifting",
        ] {
            if flag(key)? == Some(true) {
                return Err(unsupported(key, "is true"));
            }
        }
        for (key, expected) in [
            ("interpolation_type", "linear"),
            ("timestep_type", "discrete"),
            ("algorithm_type", "dpmsolver++"),
        ] {
            if let Some(t) = text(key)?
                && t != expected
            {
                return Err(unsupported(
                    key,
                    &format!("is '{t}' (sdtrace follows '{expected}')"),
                ));
            }
        }
        for key in ["sigma_min", "sigma_max"] {
            if present(key) {
                return Err(unsupported(key, "is set"));
            }
        }
        if let Some(t) = text("variance_type")?
            && t != "fixed_small"
        {
            return Err(unsupported("variance_type", &format!("is '{t}'")));
        }
        if let Value::Number(x) = &v["lambda_min_clipped"] {
            return Err(unsupported("lambda_min_clipped", &format!("is {x}")));
        }
        let final_sigma_min = match text("final_sigmas_type")? {
            None | Some("zero") => false,
            Some("sigma_min") => true,
            Some(other) => {
                return Err(err(
                    "final_sigmas_type",
                    format!("is '{other}'; diffusers knows zero and sigma_min"),
                ));
            }
        };
        let solver_order = uint("solver_order", 2)?;
        if !(1..=2).contains(&solver_order) {
            return Err(unsupported(
                "solver_order",
                &format!("is {solver_order} (sdtrace follows DPM-Solver++ of order 1 and 2)"),
            ));
        }
        let solver_heun = match text("solver_type")? {
            None | Some("midpoint") => false,
            Some("heun") => true,
            Some(other) => {
                return Err(err(
                    "solver_type",
                    format!("is '{other}'; diffusers knows midpoint and heun"),
                ));
            }
        };
        let clip_sample_range = num("clip_sample_range", 1.0)?;
        if clip_sample_range <= 0.0 {
            return Err(err(
                "clip_sample_range",
                format!("is {clip_sample_range}; it must be positive"),
            ));
        }
        Ok(SchedulerConfig {
            file: Some(file.to_path_buf()),
            class_name: text("_class_name")?.map(str::to_string),
            num_train_timesteps: n as usize,
            beta_start,
            beta_end,
            beta_schedule,
            prediction,
            timestep_spacing,
            steps_offset: steps_offset as u32,
            set_alpha_to_one: flag("set_alpha_to_one")?,
            clip_sample: flag("clip_sample")?,
            clip_sample_range,
            use_karras_sigmas: flag("use_karras_sigmas")?,
            final_sigma_min,
            solver_order: solver_order as u32,
            solver_heun,
            lower_order_final: flag("lower_order_final")?.unwrap_or(true),
            euler_at_final: flag("euler_at_final")?.unwrap_or(false),
        })
    }

    /// ᾱ as diffusers computes it: f32 betas from an f32 `torch.linspace` (of √β for
    /// scaled-linear, then squared), α = 1 − β in f32, the cumulative product accumulated in f64
    /// and stored per element as f32.
    pub fn alphas_cumprod(&self) -> Vec<f32> {
        let n = self.num_train_timesteps;
        let betas: Vec<f32> = match self.beta_schedule {
            BetaSchedule::ScaledLinear => linspace_f32(
                self.beta_start.sqrt() as f32,
                self.beta_end.sqrt() as f32,
                n,
            )
            .into_iter()
            .map(|b| b * b)
            .collect(),
            BetaSchedule::Linear => linspace_f32(self.beta_start as f32, self.beta_end as f32, n),
        };
        let mut prod = 1.0f64;
        betas
            .into_iter()
            .map(|b| {
                prod *= (1.0f32 - b) as f64;
                prod as f32
            })
            .collect()
    }
}

/// `np.linspace(start, stop, n)` in f64: `i·step + start`, the last value exactly `stop`.
fn np_linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// `np.arange(start, 0, -step)` for a float step: `start − k·step` while positive.
fn np_arange_down(start: f64, step: f64) -> Vec<f64> {
    let len = (start / step).ceil() as usize;
    (0..len).map(|k| start + k as f64 * -step).collect()
}

/// `np.interp(x, arange(len), table)` in f64.
fn interp(x: f64, table: &[f32]) -> f64 {
    let last = table.len() - 1;
    if x <= 0.0 {
        return table[0] as f64;
    }
    if x >= last as f64 {
        return table[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return table[j] as f64;
    }
    let slope = table[j + 1] as f64 - table[j] as f64;
    slope * (x - j as f64) + table[j] as f64
}

/// diffusers' `_sigma_to_t` in f64 over an f32 table of ln σ: the fractional timestep by linear
/// interpolation of ln σ.
fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let l = sigma.max(1e-10).ln();
    let low = log_sigmas
        .iter()
        .rposition(|&x| l - x as f64 >= 0.0)
        .unwrap_or(0)
        .min(log_sigmas.len() - 2);
    let (lo, hi) = (log_sigmas[low] as f64, log_sigmas[low + 1] as f64);
    let w = ((lo - l) / (lo - hi)).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * (low + 1) as f64
}

/// `_convert_to_karras`: ρ = 7 between the given bounds, in f64.
fn karras_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = super::schedule::KARRAS_RHO;
    let (lo, hi) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    np_linspace(0.0, 1.0, n)
        .into_iter()
        .map(|r| (hi + r * (lo - hi)).powf(rho))
        .collect()
}

/// The descending timesteps `set_timesteps(n)` gives `class` with `spacing` (before Karras):
/// `linspace` rounds to integers except for Euler (fractional, via f32); DPM-Solver spaces
/// n + 1 points and drops the last; `leading` adds `steps_offset`; `trailing` counts down from
/// `n_train` by `n_train / n`, rounded, minus 1.
fn spaced_timesteps(
    class: SchedulerClass,
    spacing: Spacing,
    n_train: usize,
    n: usize,
    offset: f64,
) -> Vec<f64> {
    let nt = n_train as f64;
    let points = if class == SchedulerClass::DpmSolverMultistep {
        n + 1
    } else {
        n
    };
    let ascending: Vec<f64> = match spacing {
        Spacing::Linspace => np_linspace(0.0, nt - 1.0, points),
        Spacing::Leading => {
            let ratio = (n_train / points) as f64;
            (0..points).map(|i| i as f64 * ratio + offset).collect()
        }
        Spacing::Trailing => {
            return np_arange_down(nt, nt / n as f64)
                .into_iter()
                .map(|x| x.round_ties_even() - 1.0)
                .collect();
        }
    };
    let fractional = class == SchedulerClass::Euler && spacing == Spacing::Linspace;
    ascending
        .into_iter()
        .rev()
        .take(n)
        .map(|x| {
            if fractional {
                x as f32 as f64
            } else {
                x.round_ties_even()
            }
        })
        .collect()
}

/// σ = √((1 − ᾱ)/ᾱ), each operation in f32 as a PyTorch f32 tensor computes it.
fn sigma_of(a: f32) -> f32 {
    ((1.0 - a) / a).sqrt()
}

/// A diffusers scheduler with its timesteps set.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffusersSchedule {
    class: SchedulerClass,
    config: SchedulerConfig,
    spacing: Spacing,
    karras: bool,
    alphas_cumprod: Vec<f32>,
    /// The n timesteps given to the UNet.
    timesteps: Vec<f32>,
    /// n + 1 σ values (DDIM: σ of each timestep and of the final ᾱ, for the header).
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    /// DDIM: the final ᾱ_prev (1 with `set_alpha_to_one`, else ᾱ₀).
    final_alpha: f32,
    clip_sample: bool,
}

impl DiffusersSchedule {
    /// `class.from_config(config)` with `set_timesteps(steps)`; `karras` overrides the file's
    /// `use_karras_sigmas` (dpmpp-2m-karras sets it, dpmpp-2m clears it).
    pub fn new(
        class: SchedulerClass,
        config: &SchedulerConfig,
        steps: u32,
        karras: Option<bool>,
    ) -> Result<Self> {
        let n_train = config.num_train_timesteps;
        let n = steps as usize;
        super::schedule::check_steps(class.name(), steps, n_train as u32)?;
        let ac = config.alphas_cumprod();
        let table: Vec<f32> = ac.iter().map(|&a| sigma_of(a)).collect();
        let log_table: Vec<f32> = table.iter().map(|s| s.ln()).collect();
        let spacing = config.timestep_spacing.unwrap_or(class.default_spacing());
        let karras = karras.unwrap_or(config.use_karras_sigmas.unwrap_or(false));
        if karras && class == SchedulerClass::Ddim {
            return Err(SamplingError::Unsupported(
                "DDIMScheduler has no Karras sigmas: set use_karras_sigmas false in scheduler_config.json, or pick another --sampler".into(),
            ));
        }
        let last_sigma = if config.final_sigma_min {
            table[0]
        } else {
            0.0
        };
        let nt = n_train as f64;
        let offset = config.steps_offset as f64;
        let t = spaced_timesteps(class, spacing, n_train, n, offset);
        let interpolated = |t: &[f64]| t.iter().map(|&x| interp(x, &table)).collect::<Vec<_>>();
        let (timesteps, sigmas): (Vec<f64>, Vec<f64>) = match (class, karras) {
            (SchedulerClass::Ddim, _) => {
                let s = t.iter().map(|&x| table[x as usize] as f64).collect();
                (t, s)
            }
            (_, false) => {
                let s = interpolated(&t);
                (t, s)
            }
            (SchedulerClass::Euler, true) => {
                // Between the interpolated ends of the spaced schedule.
                let ends = interpolated(&[t[n - 1], t[0]]);
                let s = karras_sigmas(ends[0], ends[1], n);
                let t = s.iter().map(|&x| sigma_to_t(x, &log_table)).collect();
                (t, s)
            }
            (SchedulerClass::DpmSolverMultistep, true) => {
                // Between the table's ends, with integer timesteps.
                let s = karras_sigmas(table[0] as f64, table[n_train - 1] as f64, n);
                let t = s
                    .iter()
                    .map(|&x| sigma_to_t(x, &log_table).round_ties_even())
                    .collect();
                (t, s)
            }
        };
        if timesteps.len() != n || timesteps.iter().any(|&t| !(0.0..nt).contains(&t)) {
            return Err(SamplingError::TooManySteps {
                sampler: class.name(),
                steps,
                max: n_train as u32 - config.steps_offset,
            });
        }
        let final_alpha = if config.set_alpha_to_one.unwrap_or(true) {
            1.0
        } else {
            ac[0]
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        sigmas.push(match class {
            SchedulerClass::Ddim => sigma_of(final_alpha),
            _ => last_sigma,
        });
        let max = sigmas.iter().copied().fold(0.0f32, f32::max);
        let init_noise_sigma = match (class, spacing) {
            (SchedulerClass::Euler, Spacing::Leading) => (max * max + 1.0).sqrt(),
            (SchedulerClass::Euler, _) => max,
            _ => 1.0,
        };
        Ok(DiffusersSchedule {
            class,
            config: config.clone(),
            spacing,
            karras,
            timesteps: timesteps.into_iter().map(|t| t as f32).collect(),
            sigmas,
            init_noise_sigma,
            final_alpha,
            clip_sample: class == SchedulerClass::Ddim && config.clip_sample.unwrap_or(true),
            alphas_cumprod: ac,
        })
    }

    pub fn class(&self) -> SchedulerClass {
        self.class
    }

    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The factor the unit noise is multiplied by to start (`init_noise_sigma`).
    pub fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    /// How the latent is scaled: `k-diffusion` (Euler) or `variance-preserving`.
    pub fn latent_space(&self) -> &'static str {
        match self.class {
            SchedulerClass::Euler => "k-diffusion",
            _ => "variance-preserving",
        }
    }

    /// The resolved settings for the header's `sampler_params`.
    pub fn describe(&self) -> Value {
        let c = &self.config;
        let mut v = json!({
            "class": self.class.name(),
            "config_file": c.file.as_ref().map(|f| f.display().to_string()),
            "config_class": c.class_name,
            "num_train_timesteps": c.num_train_timesteps,
            "beta_start": c.beta_start,
            "beta_end": c.beta_end,
            "beta_schedule": c.beta_schedule.name(),
            "timestep_spacing": self.spacing.name(),
            "steps_offset": c.steps_offset,
            "init_noise_sigma": self.init_noise_sigma,
            "latent_space": self.latent_space(),
        });
        match self.class {
            SchedulerClass::Euler => {
                v["use_karras_sigmas"] = json!(self.karras);
                v["final_sigmas_type"] = json!(if c.final_sigma_min {
                    "sigma_min"
                } else {
                    "zero"
                });
            }
            SchedulerClass::DpmSolverMultistep => {
                v["use_karras_sigmas"] = json!(self.karras);
                v["final_sigmas_type"] = json!(if c.final_sigma_min {
                    "sigma_min"
                } else {
                    "zero"
                });
                v["algorithm_type"] = json!("dpmsolver++");
                v["solver_order"] = json!(c.solver_order);
                v["solver_type"] = json!(if c.solver_heun { "heun" } else { "midpoint" });
                v["lower_order_final"] = json!(c.lower_order_final);
                v["euler_at_final"] = json!(c.euler_at_final);
            }
            SchedulerClass::Ddim => {
                v["eta"] = json!(0.0);
                v["set_alpha_to_one"] = json!(self.final_alpha == 1.0);
                v["clip_sample"] = json!(self.clip_sample);
                if self.clip_sample {
                    v["clip_sample_range"] = json!(c.clip_sample_range);
                }
            }
        }
        v
    }

    /// `scale_model_input`: Euler divides by √(σ²+1); the VP schedulers pass x through.
    fn scale_input(&self, x: &Tensor, i: usize) -> Result<Tensor> {
        Ok(match self.class {
            SchedulerClass::Euler => {
                let s = self.sigmas[i];
                div(x, (s * s + 1.0).sqrt())?
            }
            _ => x.clone(),
        })
    }

    /// Whether step i of DPM-Solver is first order.
    fn first_order(&self, i: usize) -> bool {
        let n = self.timesteps.len();
        let c = &self.config;
        let last = i == n - 1
            && (c.euler_at_final || (c.lower_order_final && n < 15) || !c.final_sigma_min);
        c.solver_order == 1 || i == 0 || last
    }

    /// One `scheduler.step` at step i from x with the CFG-combined model output `out`:
    /// (x̂₀, the next x). `history` is DPM-Solver's previous x̂₀.
    fn step(
        &self,
        i: usize,
        x: &Tensor,
        out: &Tensor,
        history: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        let v = self.config.prediction == Prediction::VPrediction;
        match self.class {
            SchedulerClass::Euler => {
                let (s, s_next) = (self.sigmas[i], self.sigmas[i + 1]);
                let x0 = if v {
                    let c_out = -s / (s * s + 1.0).sqrt();
                    (mul(out, c_out)? + div(x, s * s + 1.0)?)?
                } else {
                    (x - mul(out, s)?)?
                };
                let derivative = div(&(x - &x0)?, s)?;
                let next = (x + mul(&derivative, s_next - s)?)?;
                Ok((x0, next))
            }
            SchedulerClass::DpmSolverMultistep => {
                let alpha_sigma = |s: f32| {
                    let a = 1.0 / (s * s + 1.0).sqrt();
                    (a, s * a)
                };
                let lambda = |(a, s): (f32, f32)| a.ln() - s.ln();
                let (a_s0, s_s0) = alpha_sigma(self.sigmas[i]);
                let (a_t, s_t) = alpha_sigma(self.sigmas[i + 1]);
                let x0 = if v {
                    (mul(x, a_s0)? - mul(out, s_s0)?)?
                } else {
                    div(&(x - mul(out, s_s0)?)?, a_s0)?
                };
                let h = lambda((a_t, s_t)) - lambda((a_s0, s_s0));
                let b = a_t * ((-h).exp() - 1.0);
                let base = (mul(x, s_t / s_s0)? - mul(&x0, b)?)?;
                let next = match history {
                    Some(m1) if !self.first_order(i) => {
                        let h0 = lambda((a_s0, s_s0)) - lambda(alpha_sigma(self.sigmas[i - 1]));
                        let r0 = h0 / h;
                        let d1 = mul(&(&x0 - m1)?, 1.0 / r0)?;
                        if self.config.solver_heun {
                            (base + mul(&d1, a_t * (((-h).exp() - 1.0) / h + 1.0))?)?
                        } else {
                            (base - mul(&d1, 0.5 * b)?)?
                        }
                    }
                    _ => base,
                };
                Ok((x0, next))
            }
            SchedulerClass::Ddim => {
                let t = self.timesteps[i] as usize;
                let n_train = self.config.num_train_timesteps;
                let prev = t as i64 - (n_train / self.timesteps.len()) as i64;
                let a_t = self.alphas_cumprod[t];
                let a_prev = if prev >= 0 {
                    self.alphas_cumprod[prev as usize]
                } else {
                    self.final_alpha
                };
                let beta = 1.0 - a_t;
                let (mut x0, eps) = if v {
                    (
                        (mul(x, a_t.sqrt())? - mul(out, beta.sqrt())?)?,
                        (mul(out, a_t.sqrt())? + mul(x, beta.sqrt())?)?,
                    )
                } else {
                    (
                        div(&(x - mul(out, beta.sqrt())?)?, a_t.sqrt())?,
                        out.clone(),
                    )
                };
                if self.clip_sample {
                    let r = self.config.clip_sample_range;
                    x0 = x0.clamp(-r, r)?;
                }
                let next = (mul(&x0, a_prev.sqrt())? + mul(&eps, (1.0 - a_prev).sqrt())?)?;
                Ok((x0, next))
            }
        }
    }

    /// The denoising loop as `StableDiffusionPipeline.__call__` runs it: x = noise ·
    /// `init_noise_sigma`; per step, `sampler.x`, the model on `scale_model_input(x)` at the
    /// step's timestep, CFG on its output, `scheduler.step`; the final latent as `sampler.x` at
    /// step n. Returns the final latent in the scheduler's space (for these schedulers, the VE
    /// and VP spaces coincide at σ = 0, so it goes to the VAE as it is).
    pub fn sample(
        &self,
        model: &mut dyn Denoiser,
        noise: &Tensor,
        cfg_scale: f64,
        probe: &Probe,
        after_step: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<Tensor> {
        let n = self.timesteps.len();
        let mut x = mul(noise, self.init_noise_sigma)?;
        let mut history: Option<Tensor> = None;
        for i in 0..n {
            probe.set_step(Some(i as u32), 0)?;
            x = observe(probe, "sampler.x", &x)?;
            let x_in = self.scale_input(&x, i)?;
            let (u, c) = model.eps(&x_in, self.timesteps[i] as f64, i as u32)?;
            for (name, o) in [("uncond", &u), ("cond", &c)] {
                if o.dims() != x.dims() {
                    return Err(SamplingError::BadDenoiserOutput(format!(
                        "{name} has shape {:?}, the latent {:?}",
                        o.dims(),
                        x.dims()
                    )));
                }
            }
            let u = observe(probe, "sampler.eps.uncond", &u)?.to_dtype(x.dtype())?;
            let c = observe(probe, "sampler.eps.cond", &c)?.to_dtype(x.dtype())?;
            let out = cfg_combine(&u, &c, cfg_scale as f32 as f64)?;
            let (x0, next) = self.step(i, &x, &out, history.as_ref())?;
            let x0 = observe(probe, "sampler.denoised", &x0)?;
            history = Some(x0);
            x = next;
            after_step(i as u32)?;
        }
        probe.set_step(Some(n as u32), 0)?;
        let x = observe(probe, "sampler.x", &x)?;
        probe.set_step(None, 0)?;
        Ok(x)
    }
}

/// x · s with an f32 scalar (exact f32 products, as a 0-d f32 tensor gives).
fn mul(x: &Tensor, s: f32) -> Result<Tensor> {
    Ok((x * s as f64)?)
}

/// x / s as a true division (not a multiplication by 1/s), as PyTorch divides.
fn div(x: &Tensor, s: f32) -> Result<Tensor> {
    let d = Tensor::new(s, x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_div(&d)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(got: &[f32], want: &[f32], rel: f32) {
        assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= rel * w.abs().max(1e-6),
                "[{i}]: {g} vs {w}\n{got:?}"
            );
        }
    }

    fn sched(
        class: SchedulerClass,
        spacing: Option<Spacing>,
        steps: u32,
        k: Option<bool>,
    ) -> DiffusersSchedule {
        let cfg = SchedulerConfig {
            timestep_spacing: spacing,
            ..SchedulerConfig::sd()
        };
        DiffusersSchedule::new(class, &cfg, steps, k).unwrap()
    }

    /// Values printed by diffusers 0.42.1 with torch 2.x (`Class.from_config` of SD's PNDM
    /// config, then `set_timesteps`): `timesteps`, `sigmas`, `init_noise_sigma`.
    #[test]
    // The literals are diffusers' f32 values as Python prints them, kept verbatim.
    #[allow(clippy::excessive_precision, clippy::type_complexity)]
    fn schedules_match_diffusers() {
        use SchedulerClass::*;
        let cases: [(
            SchedulerClass,
            Option<Spacing>,
            u32,
            Option<bool>,
            &[f32],
            &[f32],
            f32,
        ); 7] = [
            (
                Euler,
                None,
                3,
                None,
                &[999.0, 499.5, 0.0],
                &[
                    14.614646911621094,
                    1.6155834197998047,
                    0.02916753478348255,
                    0.0,
                ],
                14.614646911621094,
            ),
            (
                Euler,
                Some(Spacing::Leading),
                4,
                None,
                &[751.0, 501.0, 251.0, 1.0],
                &[
                    4.116698265075684,
                    1.6236929893493652,
                    0.6983985900878906,
                    0.04131447896361351,
                    0.0,
                ],
                4.236413955688477,
            ),
            (
                Euler,
                Some(Spacing::Trailing),
                3,
                None,
                &[999.0, 666.0, 332.0],
                &[
                    14.614646911621094,
                    2.9183084964752197,
                    0.9292148947715759,
                    0.0,
                ],
                14.614646911621094,
            ),
            (
                Euler,
                None,
                4,
                Some(true),
                &[999.0, 687.1532592773438, 145.93905639648438, 0.0],
                &[
                    14.614646911621094,
                    3.1686110496520996,
                    0.44692090153694153,
                    0.02916753478348255,
                    0.0,
                ],
                14.614646911621094,
            ),
            (
                DpmSolverMultistep,
                None,
                4,
                None,
                &[999.0, 749.0, 500.0, 250.0],
                &[
                    14.614646911621094,
                    4.081730842590332,
                    1.6182796955108643,
                    0.6957994699478149,
                    0.0,
                ],
                1.0,
            ),
            (
                DpmSolverMultistep,
                None,
                4,
                Some(true),
                &[999.0, 687.0, 146.0, 0.0],
                &[
                    14.614646911621094,
                    3.1686110496520996,
                    0.44692090153694153,
                    0.02916753478348255,
                    0.0,
                ],
                1.0,
            ),
            (
                DpmSolverMultistep,
                Some(Spacing::Leading),
                4,
                None,
                &[801.0, 601.0, 401.0, 201.0],
                &[
                    5.134433269500732,
                    2.2928547859191895,
                    1.1682164669036865,
                    0.574050784111023,
                    0.0,
                ],
                1.0,
            ),
        ];
        for (class, spacing, steps, k, t, s, init) in cases {
            let d = sched(class, spacing, steps, k);
            close(d.timesteps(), t, 3e-7);
            close(d.sigmas(), s, 3e-7);
            close(&[d.init_noise_sigma()], &[init], 3e-7);
        }
        let want: Vec<f32> = (0..20).rev().map(|k| (50 * k + 1) as f32).collect();
        assert_eq!(sched(Ddim, None, 20, None).timesteps(), want.as_slice());
        assert_eq!(
            sched(Ddim, Some(Spacing::Trailing), 3, None).timesteps(),
            &[999.0, 666.0, 332.0]
        );
        assert_eq!(
            sched(Ddim, Some(Spacing::Linspace), 3, None).timesteps(),
            &[999.0, 500.0, 0.0]
        );
        let ac = SchedulerConfig::sd().alphas_cumprod();
        close(
            &[ac[0], ac[1], ac[500], ac[998], ac[999]],
            &[
                0.9991499781608582,
                0.9982960224151611,
                0.27633246779441833,
                0.004716695751994848,
                0.00466009508818388,
            ],
            0.0,
        );
    }

    #[test]
    fn bad_configs_are_refused_with_the_key_named() {
        let f = Path::new("scheduler/scheduler_config.json");
        for (v, key) in [
            (json!({"beta_start": -1}), "beta_start"),
            (json!({"num_train_timesteps": 0}), "num_train_timesteps"),
            (
                json!({"beta_schedule": "squaredcos_cap_v2"}),
                "beta_schedule",
            ),
            (json!({"prediction_type": "sample"}), "prediction_type"),
            (json!({"timestep_spacing": "weird"}), "timestep_spacing"),
            (json!({"thresholding": true}), "thresholding"),
            (json!({"trained_betas": [0.1, 0.2]}), "trained_betas"),
            (json!({"solver_order": 3}), "solver_order"),
            (json!({"steps_offset": "one"}), "steps_offset"),
            (json!([1, 2]), ""),
        ] {
            let e = SchedulerConfig::from_json(&v, f).unwrap_err().to_string();
            assert!(
                e.contains("scheduler_config.json") && e.contains(key),
                "{v}: {e}"
            );
        }
        let ok = SchedulerConfig::from_json(
            &json!({"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
                "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}),
            f,
        )
        .unwrap();
        assert_eq!(ok.steps_offset, 1);
        assert_eq!(ok.timestep_spacing, None);
        assert_eq!(ok.alphas_cumprod().len(), 1000);
    }
}
