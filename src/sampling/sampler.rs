//! The denoising loop with k-diffusion semantics: `dpmpp-2m-karras`, `dpmpp-2m`, `euler`,
//! `euler-a`, `ddim` over candle tensors on any device.
//!
//! A [`Sampler`] is built from a [`SamplerSpec`] and the model's [`DiscreteSchedule`]; it holds
//! the n + 1 σ values and the n timesteps given to the model, which go into the trace header
//! ([`Sampler::header_facts`]). [`Sampler::sample`] starts from x = noise·σ₀ and, at step i,
//! records through the probe (step i, eval 0): `sampler.x` (the input x), `sampler.eps.uncond`,
//! `sampler.eps.cond` (the raw model outputs: ε, or v for v-prediction), `sampler.denoised` (the
//! CFG-combined D) and, for Euler a when σᵢ₊₁ > 0, `sampler.noise` (the unit ancestral noise).
//! The final latent is recorded as `sampler.x` at step n; the probe is then left outside the
//! loop (step `None`). Every recorded tensor is the one used onwards, so an intervention's
//! replacement takes effect. Coefficients are computed in f64 from the f32 σ values and applied
//! to tensors in x's dtype (the model output is cast to it); k-diffusion computes them as f32
//! device scalars, so results agree to rounding, not bit for bit.

use super::denoiser::{Denoiser, c_in, cfg_combine, denoised};
use super::diffusers::{DiffusersSchedule, SchedulerClass, SchedulerConfig};
use super::noise::{self, NoiseSource};
use super::schedule::{DiscreteSchedule, KarrasBounds, check_steps};
use super::{Result, SamplingError};
use crate::model::config::Prediction;
use crate::model::observe::observe;
use crate::probe::Probe;
use crate::trace::Settings;
use candle_core::Tensor;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Most steps any sampler accepts (DDIM: 999).
pub const MAX_STEPS: u32 = 10_000;

/// The samplers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SamplerKind {
    DpmPp2mKarras,
    DpmPp2m,
    Euler,
    EulerA,
    Ddim,
}

impl SamplerKind {
    pub const ALL: [SamplerKind; 5] = [
        SamplerKind::DpmPp2mKarras,
        SamplerKind::DpmPp2m,
        SamplerKind::Euler,
        SamplerKind::EulerA,
        SamplerKind::Ddim,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SamplerKind::DpmPp2mKarras => "dpmpp-2m-karras",
            SamplerKind::DpmPp2m => "dpmpp-2m",
            SamplerKind::Euler => "euler",
            SamplerKind::EulerA => "euler-a",
            SamplerKind::Ddim => "ddim",
        }
    }
}

impl std::str::FromStr for SamplerKind {
    type Err = SamplingError;
    fn from_str(s: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| SamplingError::UnknownSampler {
                name: s.to_string(),
                valid: Self::ALL.map(|k| k.name()).join(", "),
            })
    }
}

/// What to sample with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerSpec {
    pub kind: SamplerKind,
    pub steps: u32,
    pub cfg_scale: f64,
    pub prediction: Prediction,
    /// σ bounds of the Karras schedule (only `dpmpp-2m-karras` uses them).
    pub karras: KarrasBounds,
}

impl SamplerSpec {
    /// ε-prediction, model Karras bounds.
    pub fn new(kind: SamplerKind, steps: u32, cfg_scale: f64) -> Self {
        SamplerSpec {
            kind,
            steps,
            cfg_scale,
            prediction: Prediction::Epsilon,
            karras: KarrasBounds::Model,
        }
    }
}

/// Whose sampler semantics a run follows (`--sampler-impl`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SamplerImpl {
    /// k-diffusion's, as AUTOMATIC1111/Forge and ComfyUI sample (the default).
    #[default]
    KDiffusion,
    /// diffusers' schedulers, configured from the model's `scheduler_config.json`.
    Diffusers,
}

impl SamplerImpl {
    pub fn name(self) -> &'static str {
        match self {
            SamplerImpl::KDiffusion => "k-diffusion",
            SamplerImpl::Diffusers => "diffusers",
        }
    }
}

/// A sampler with its schedule resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampler {
    spec: SamplerSpec,
    schedule_name: &'static str,
    alphas: &'static str,
    sigmas: Vec<f32>,
    timesteps: Vec<f32>,
    /// `Some` with `--sampler-impl diffusers`.
    diffusers: Option<Box<DiffusersSchedule>>,
}

impl Sampler {
    pub fn new(spec: SamplerSpec, schedule: &DiscreteSchedule) -> Result<Self> {
        if !spec.cfg_scale.is_finite() {
            return Err(SamplingError::BadCfgScale(spec.cfg_scale));
        }
        check_steps(spec.kind.name(), spec.steps, MAX_STEPS)?;
        let fractional = |sigmas: Vec<f32>| {
            let t = sigmas[..sigmas.len() - 1]
                .iter()
                .map(|&s| schedule.sigma_to_t(s))
                .collect();
            (sigmas, t)
        };
        let (schedule_name, (sigmas, timesteps)) = match spec.kind {
            SamplerKind::DpmPp2mKarras => (
                "karras",
                fractional(schedule.karras(spec.steps, spec.karras)?),
            ),
            SamplerKind::DpmPp2m | SamplerKind::Euler | SamplerKind::EulerA => {
                ("normal", fractional(schedule.normal(spec.steps)?))
            }
            SamplerKind::Ddim => ("ddim", schedule.ddim(spec.steps)?),
        };
        Ok(Sampler {
            spec,
            schedule_name,
            alphas: schedule.precision().name(),
            sigmas,
            timesteps,
            diffusers: None,
        })
    }

    /// The sampler as diffusers runs it: the scheduler class of `spec.kind` (euler:
    /// `EulerDiscreteScheduler`, dpmpp-2m and dpmpp-2m-karras: `DPMSolverMultistepScheduler`
    /// without and with Karras sigmas, ddim: `DDIMScheduler`) from `config`, with the spec's
    /// prediction type.
    pub fn diffusers(spec: SamplerSpec, config: &SchedulerConfig) -> Result<Self> {
        if !(spec.cfg_scale.is_finite() && spec.cfg_scale > 1.0) {
            return Err(SamplingError::Unsupported(format!(
                "--sampler-impl diffusers needs --cfg above 1 (diffusers skips the unconditional pass at guidance {} and sdtrace does not follow that)",
                spec.cfg_scale
            )));
        }
        let (class, karras) = match spec.kind {
            SamplerKind::Euler => (SchedulerClass::Euler, None),
            SamplerKind::DpmPp2m => (SchedulerClass::DpmSolverMultistep, Some(false)),
            SamplerKind::DpmPp2mKarras => (SchedulerClass::DpmSolverMultistep, Some(true)),
            SamplerKind::Ddim => (SchedulerClass::Ddim, None),
            SamplerKind::EulerA => {
                return Err(SamplingError::Unsupported(
                    "--sampler-impl diffusers follows euler, dpmpp-2m, dpmpp-2m-karras and ddim; euler-a (EulerAncestralDiscreteScheduler) only with the default --sampler-impl k-diffusion".into(),
                ));
            }
        };
        let config = SchedulerConfig {
            prediction: spec.prediction,
            ..config.clone()
        };
        let d = DiffusersSchedule::new(class, &config, spec.steps, karras)?;
        Ok(Sampler {
            spec,
            schedule_name: class.name(),
            alphas: "f32",
            sigmas: d.sigmas().to_vec(),
            timesteps: d.timesteps().to_vec(),
            diffusers: Some(Box::new(d)),
        })
    }

    /// Whose semantics the sampler follows.
    pub fn implementation(&self) -> SamplerImpl {
        match self.diffusers {
            Some(_) => SamplerImpl::Diffusers,
            None => SamplerImpl::KDiffusion,
        }
    }

    /// The factor the unit noise is scaled by to start: σ₀, or diffusers' `init_noise_sigma`.
    pub fn init_sigma(&self) -> f32 {
        self.diffusers
            .as_ref()
            .map_or(self.sigmas[0], |d| d.init_noise_sigma())
    }

    pub fn spec(&self) -> &SamplerSpec {
        &self.spec
    }

    /// The n + 1 σ values (step i goes from σᵢ to σᵢ₊₁).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    /// The n timesteps given to the model (fractional, except DDIM's integers).
    pub fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    /// Header facts for `Settings.extra`: `sigmas`, `timesteps`, `sampler_params`, `rng_params`.
    /// (Names chosen not to collide with `Settings` fields.)
    pub fn header_facts(&self, rng: &dyn NoiseSource) -> BTreeMap<String, Value> {
        let karras = match self.spec.karras {
            KarrasBounds::Model => json!("model"),
            KarrasBounds::Old => json!([0.1, 10.0]),
            KarrasBounds::Custom(a, b) => json!([a, b]),
        };
        let prediction = match self.spec.prediction {
            Prediction::Epsilon => "epsilon",
            Prediction::VPrediction => "v_prediction",
        };
        if let Some(d) = &self.diffusers {
            let params = json!({
                "name": self.spec.kind.name(),
                "steps": self.spec.steps,
                "cfg_scale": self.spec.cfg_scale,
                "prediction": prediction,
                "schedule": self.schedule_name,
                "scheduler": d.describe(),
                "semantics": "diffusers (the scheduler's own latent space, CFG on the model output, batch [uncond; cond])",
            });
            return BTreeMap::from([
                ("sigmas".to_string(), json!(self.sigmas)),
                ("timesteps".to_string(), json!(self.timesteps)),
                ("init_sigma".to_string(), json!(d.init_noise_sigma())),
                ("sampler_impl".to_string(), json!("diffusers")),
                ("sampler_params".to_string(), params),
                (
                    "rng_params".to_string(),
                    json!({"name": rng.name(), "spec": rng.spec(), "params": rng.params()}),
                ),
            ]);
        }
        let mut params = json!({
            "name": self.spec.kind.name(),
            "steps": self.spec.steps,
            "cfg_scale": self.spec.cfg_scale,
            "prediction": prediction,
            "schedule": self.schedule_name,
            "alphas_cumprod": self.alphas,
            "semantics": "k-diffusion (VE latent, c_in = 1/sqrt(sigma^2+1), CFG on denoised, batch [uncond; cond])",
        });
        match self.spec.kind {
            SamplerKind::DpmPp2mKarras => {
                params["karras_bounds"] = karras;
                params["rho"] = json!(super::schedule::KARRAS_RHO);
            }
            SamplerKind::Ddim => {
                params["eta"] = json!(0.0);
                params["steps_offset"] = json!(super::schedule::DDIM_STEPS_OFFSET);
                params["timestep_spacing"] = json!("leading");
            }
            SamplerKind::EulerA => params["eta"] = json!(1.0),
            _ => {}
        }
        BTreeMap::from([
            ("sigmas".to_string(), json!(self.sigmas)),
            ("timesteps".to_string(), json!(self.timesteps)),
            ("init_sigma".to_string(), json!(self.sigmas[0])),
            ("sampler_impl".to_string(), json!("k-diffusion")),
            ("sampler_params".to_string(), params),
            (
                "rng_params".to_string(),
                json!({"name": rng.name(), "spec": rng.spec(), "params": rng.params()}),
            ),
        ])
    }

    /// Fill the sampler's part of the header: `sampler`, `steps`, `cfg_scale`, `rng` and the
    /// [`Sampler::header_facts`] in `extra`.
    pub fn fill_settings(&self, settings: &mut Settings, rng: &dyn NoiseSource) {
        settings.sampler = Some(self.spec.kind.name().to_string());
        settings.steps = Some(self.spec.steps);
        settings.cfg_scale = Some(self.spec.cfg_scale);
        settings.rng = Some(rng.spec());
        settings.extra.extend(self.header_facts(rng));
    }

    /// CFG-denoised D at step i, recording the model outputs and D.
    fn denoise(
        &self,
        model: &mut dyn Denoiser,
        x: &Tensor,
        i: usize,
        probe: &Probe,
    ) -> Result<Tensor> {
        let sigma = self.sigmas[i] as f64;
        let x_in = (x * c_in(sigma))?;
        let (u, c) = model.eps(&x_in, self.timesteps[i] as f64, i as u32)?;
        for (name, out) in [("uncond", &u), ("cond", &c)] {
            if out.dims() != x.dims() {
                return Err(SamplingError::BadDenoiserOutput(format!(
                    "{name} has shape {:?}, the latent {:?}",
                    out.dims(),
                    x.dims()
                )));
            }
        }
        let u = observe(probe, "sampler.eps.uncond", &u)?.to_dtype(x.dtype())?;
        let c = observe(probe, "sampler.eps.cond", &c)?.to_dtype(x.dtype())?;
        let p = self.spec.prediction;
        let d = cfg_combine(
            &denoised(p, x, &u, sigma)?,
            &denoised(p, x, &c, sigma)?,
            self.spec.cfg_scale,
        )?;
        Ok(observe(probe, "sampler.denoised", &d)?)
    }

    /// Run the loop from unit `noise` (x = noise·σ₀); ancestral noise comes from `rng`.
    pub fn sample(
        &self,
        model: &mut dyn Denoiser,
        noise: &Tensor,
        rng: &mut dyn NoiseSource,
        probe: &Probe,
    ) -> Result<Tensor> {
        self.sample_with(model, noise, rng, probe, &mut |_| Ok(()))
    }

    /// [`Sampler::sample`], calling `after_step(i)` when step i (0-based) is done; an error
    /// from it (e.g. [`SamplingError::Stopped`]) ends the loop and is returned.
    pub fn sample_with(
        &self,
        model: &mut dyn Denoiser,
        noise: &Tensor,
        rng: &mut dyn NoiseSource,
        probe: &Probe,
        after_step: &mut dyn FnMut(u32) -> Result<()>,
    ) -> Result<Tensor> {
        if let Some(d) = &self.diffusers {
            return d.sample(model, noise, self.spec.cfg_scale, probe, after_step);
        }
        let n = self.timesteps.len();
        let mut x = (noise * self.sigmas[0] as f64)?;
        let mut old: Option<Tensor> = None;
        for i in 0..n {
            probe.set_step(Some(i as u32), 0)?;
            x = observe(probe, "sampler.x", &x)?;
            let (s, s_next) = (self.sigmas[i] as f64, self.sigmas[i + 1] as f64);
            let d = self.denoise(model, &x, i, probe)?;
            x = match self.spec.kind {
                SamplerKind::Euler | SamplerKind::Ddim => euler_step(&x, &d, s, s_next)?,
                SamplerKind::EulerA => {
                    let (down, up) = ancestral_step(s, s_next);
                    let x = euler_step(&x, &d, s, down)?;
                    if s_next > 0.0 {
                        let z = noise::randn(rng, x.dims(), x.device())?.to_dtype(x.dtype())?;
                        let z = observe(probe, "sampler.noise", &z)?;
                        (x + (z * up)?)?
                    } else {
                        x
                    }
                }
                SamplerKind::DpmPp2m | SamplerKind::DpmPp2mKarras => {
                    let prev = (i > 0).then(|| self.sigmas[i - 1] as f64);
                    let x = dpmpp_2m_step(&x, &d, old.as_ref().zip(prev), s, s_next)?;
                    old = Some(d);
                    x
                }
            };
            after_step(i as u32)?;
        }
        probe.set_step(Some(n as u32), 0)?;
        let x = observe(probe, "sampler.x", &x)?;
        probe.set_step(None, 0)?;
        Ok(x)
    }
}

/// Euler: d = (x − D)/σ; x + d·(σ_to − σ).
fn euler_step(x: &Tensor, d: &Tensor, sigma: f64, sigma_to: f64) -> Result<Tensor> {
    let deriv = ((x - d)? / sigma)?;
    Ok((x + (deriv * (sigma_to - sigma))?)?)
}

/// k-diffusion's `get_ancestral_step(σ, σ₊, η = 1)`: (σ_down, σ_up).
pub fn ancestral_step(sigma: f64, sigma_next: f64) -> (f64, f64) {
    let up = sigma_next.min(
        (sigma_next * sigma_next * (sigma * sigma - sigma_next * sigma_next) / (sigma * sigma))
            .sqrt(),
    );
    let down = (sigma_next * sigma_next - up * up).sqrt();
    (down, up)
}

/// One DPM-Solver++(2M) step. `old` is D and σ of the previous step, if any.
fn dpmpp_2m_step(
    x: &Tensor,
    d: &Tensor,
    old: Option<(&Tensor, f64)>,
    sigma: f64,
    sigma_next: f64,
) -> Result<Tensor> {
    let lambda = |s: f64| -s.ln();
    let (t, t_next) = (lambda(sigma), lambda(sigma_next));
    let h = t_next - t;
    let ratio = (-t_next).exp() / (-t).exp();
    let coef = -(-h).exp_m1();
    let d = match old {
        Some((d_old, sigma_prev)) if sigma_next > 0.0 => {
            let r = (t - lambda(sigma_prev)) / h;
            ((d * (1.0 + 1.0 / (2.0 * r)))? - (d_old * (1.0 / (2.0 * r)))?)?
        }
        _ => d.clone(),
    };
    Ok(((x * ratio)? + (d * coef)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampling::noise::SdtraceNoise;
    use crate::sampling::schedule::AlphasPrecision;
    use candle_core::Device;

    /// The ideal denoiser of a closed-form data distribution, per CFG half. It knows the
    /// sampler's σ values (looked up by step) and undoes c_in itself.
    struct Ideal {
        sigmas: Vec<f32>,
        prediction: Prediction,
        /// D(x, σ) for (uncond, cond).
        truth: fn(&Tensor, f64, bool) -> Tensor,
    }

    impl Denoiser for Ideal {
        fn eps(&mut self, x_in: &Tensor, _t: f64, step: u32) -> Result<(Tensor, Tensor)> {
            let sigma = self.sigmas[step as usize] as f64;
            let x = (x_in / c_in(sigma))?;
            let out = |cond| -> Result<Tensor> {
                let d = (self.truth)(&x, sigma, cond);
                Ok(match self.prediction {
                    // ε = (x − D)/σ
                    Prediction::Epsilon => ((&x - &d)? / sigma)?,
                    // v = (D − x·c_skip)/c_out
                    Prediction::VPrediction => {
                        let s2 = sigma * sigma + 1.0;
                        ((d - (&x / s2)?)? / (-sigma / s2.sqrt()))?
                    }
                })
            };
            Ok((out(false)?, out(true)?))
        }
    }

    fn sampler(kind: SamplerKind, steps: u32, cfg: f64, prediction: Prediction) -> Sampler {
        let spec = SamplerSpec {
            prediction,
            ..SamplerSpec::new(kind, steps, cfg)
        };
        Sampler::new(spec, &DiscreteSchedule::sd(AlphasPrecision::F32)).unwrap()
    }

    fn noise(seed: u64, n: usize) -> Tensor {
        noise::randn(&mut SdtraceNoise::new(seed), &[1, 4, n, n], &Device::Cpu).unwrap()
    }

    fn run(s: &Sampler, truth: fn(&Tensor, f64, bool) -> Tensor, x_t: &Tensor) -> Tensor {
        let mut model = Ideal {
            sigmas: s.sigmas().to_vec(),
            prediction: s.spec().prediction,
            truth,
        };
        s.sample(
            &mut model,
            x_t,
            &mut SdtraceNoise::new(99),
            &Probe::disabled(),
        )
        .unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// Point masses: uncond data at 1, cond data at 2 (per element).
    fn points(x: &Tensor, _sigma: f64, cond: bool) -> Tensor {
        (x.zeros_like().unwrap() + if cond { 2.0 } else { 1.0 }).unwrap()
    }

    #[test]
    fn every_sampler_lands_on_the_guided_point() {
        // With D_u ≡ 1 and D_c ≡ 2, CFG s gives a point mass at c = 1 + s. Every sampler scales
        // x − c by σᵢ₊₁/σᵢ per step, so from x = σ₀·noise it ends at c + (σ_last/σ₀)(σ₀·noise − c):
        // exactly c where σ_last = 0, near it for DDIM (σ_last = the table's σ_min).
        for prediction in [Prediction::Epsilon, Prediction::VPrediction] {
            for kind in SamplerKind::ALL {
                for (steps, cfg) in [(20, 7.0), (3, 1.0), (1, 0.0)] {
                    let s = sampler(kind, steps, cfg, prediction);
                    let n = noise(3, 4);
                    let out = run(&s, points, &n);
                    let (first, last) = (s.sigmas()[0] as f64, *s.sigmas().last().unwrap() as f64);
                    let c = 1.0 + cfg;
                    let want = ((&n * last).unwrap() + c * (1.0 - last / first)).unwrap();
                    let err = max_abs_diff(&out, &want);
                    // Euler a adds fresh noise: only its end point at σ = 0 is pinned.
                    assert!(
                        err < 2e-5,
                        "{} {steps} steps cfg {cfg} {prediction:?}: {err}",
                        kind.name()
                    );
                }
            }
        }
    }

    const S2: f64 = 1.0; // data variance s², like SD latents

    /// Ideal denoiser of N(0, s²) data: D = x·s²/(s² + σ²), the same for both halves.
    fn gaussian(x: &Tensor, sigma: f64, _cond: bool) -> Tensor {
        (x * (S2 / (S2 + sigma * sigma))).unwrap()
    }

    /// `kind`'s update rule on `sigmas` (its schedule replaced).
    fn on_sigmas(kind: SamplerKind, sigmas: &Sampler) -> Sampler {
        Sampler {
            spec: SamplerSpec::new(kind, sigmas.spec.steps, 1.0),
            ..sigmas.clone()
        }
    }

    fn mean_sq(t: &Tensor) -> f64 {
        t.sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    }

    /// RMS relative error of a deterministic sampler's end point against the probability-flow
    /// ODE solution x(σ) = x(σ₀)·√((s² + σ²)/(s² + σ₀²)).
    fn ode_error(s: &Sampler) -> f64 {
        let n = noise(5, 8);
        let out = run(s, gaussian, &n);
        let (first, last) = (s.sigmas()[0] as f64, *s.sigmas().last().unwrap() as f64);
        let exact = (&n * (first * ((S2 + last * last) / (S2 + first * first)).sqrt())).unwrap();
        (mean_sq(&(&out - &exact).unwrap()) / mean_sq(&exact)).sqrt()
    }

    fn named(kind: SamplerKind, steps: u32) -> Sampler {
        sampler(kind, steps, 7.0, Prediction::Epsilon)
    }

    #[test]
    fn deterministic_samplers_follow_the_gaussian_ode_to_their_order() {
        use SamplerKind::*;
        let err = |k, steps| ode_error(&named(k, steps));
        let (euler, dpm, karras, ddim) = (
            err(Euler, 20),
            err(DpmPp2m, 20),
            err(DpmPp2mKarras, 20),
            err(Ddim, 20),
        );
        assert!(
            euler < 0.1 && ddim < 0.1 && dpm < 0.1,
            "euler {euler}, ddim {ddim}, dpm++ 2m {dpm}"
        );
        assert!(karras < 0.02, "dpm++ 2m karras {karras}");
        // On the same σ values, DPM++ 2M is far more accurate than Euler (second order vs first).
        for steps in [20, 40] {
            let k = named(DpmPp2mKarras, steps);
            let (e, d) = (ode_error(&on_sigmas(Euler, &k)), ode_error(&k));
            assert!(
                d * 4.0 < e,
                "{steps} Karras steps: dpm++ 2m {d} vs euler {e}"
            );
        }
        // Convergence order: doubling the steps halves Euler's error and cuts DPM++ 2M's by ≥ 4.
        let (euler40, karras40) = (err(Euler, 40), err(DpmPp2mKarras, 40));
        assert!(
            (1.7..2.3).contains(&(euler / euler40)),
            "euler {euler} → {euler40}"
        );
        assert!(
            karras / karras40 > 4.0,
            "dpm++ 2m karras {karras} → {karras40}"
        );
        // DDIM is Euler on DDIM's σ values.
        let d = named(Ddim, 20);
        let e = on_sigmas(Euler, &d);
        let x = noise(2, 4);
        assert_eq!(
            max_abs_diff(&run(&d, gaussian, &x), &run(&e, gaussian, &x)),
            0.0
        );
    }

    #[test]
    fn euler_a_matches_the_exact_variance_recursion() {
        // For Gaussian data one Euler a step is linear plus independent noise, so the end
        // variance follows exactly: v ← v·(a + (σ_down/σ)(1 − a))² + σ_up², a = s²/(s² + σ²).
        // It tends to s² as the steps grow (the SDE keeps the marginal N(0, s² + σ²)).
        let n = noise(11, 64);
        let predicted = |s: &Sampler| {
            let mut v = mean_sq(&n) * (s.sigmas()[0] as f64).powi(2);
            for w in s.sigmas().windows(2) {
                let (sig, next) = (w[0] as f64, w[1] as f64);
                let (down, up) = ancestral_step(sig, next);
                let a = S2 / (S2 + sig * sig);
                v = v * (a + down / sig * (1.0 - a)).powi(2) + up * up;
            }
            v
        };
        let mut bias = vec![];
        for steps in [20, 100] {
            let s = named(SamplerKind::EulerA, steps);
            let var = mean_sq(&run(&s, gaussian, &n));
            let want = predicted(&s);
            // 16384 samples: the variance estimate's relative sd is about 1 %.
            assert!(
                (var / want - 1.0).abs() < 0.04,
                "{steps} steps: variance {var}, predicted {want}"
            );
            bias.push((want / S2 - 1.0).abs());
        }
        assert!(bias[1] < 0.1 && bias[1] < bias[0] / 2.0, "bias {bias:?}");
        // The ancestral noise matters: deterministic Euler from the same start ends elsewhere.
        let s = named(SamplerKind::EulerA, 20);
        let e = on_sigmas(SamplerKind::Euler, &s);
        assert!(max_abs_diff(&run(&s, gaussian, &n), &run(&e, gaussian, &n)) > 0.1);
    }

    #[test]
    fn same_seed_is_bit_identical_and_another_differs() {
        let s = sampler(SamplerKind::EulerA, 8, 7.0, Prediction::Epsilon);
        let go = |seed| {
            let mut model = Ideal {
                sigmas: s.sigmas().to_vec(),
                prediction: Prediction::Epsilon,
                truth: gaussian,
            };
            let out = s
                .sample(
                    &mut model,
                    &noise(1, 8),
                    &mut SdtraceNoise::new(seed),
                    &Probe::disabled(),
                )
                .unwrap();
            out.flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .iter()
                .map(|x| x.to_bits())
                .collect::<Vec<_>>()
        };
        assert_eq!(go(4), go(4));
        assert_ne!(go(4), go(5));
    }

    #[test]
    fn bad_settings_are_errors_naming_the_fix() {
        let sched = DiscreteSchedule::sd(AlphasPrecision::F32);
        let e = "lms".parse::<SamplerKind>().unwrap_err().to_string();
        assert!(
            e.contains("'lms'") && e.contains("dpmpp-2m-karras, dpmpp-2m, euler, euler-a, ddim"),
            "{e}"
        );
        for kind in SamplerKind::ALL {
            assert_eq!(kind.name().parse::<SamplerKind>().unwrap(), kind);
            assert!(matches!(
                Sampler::new(SamplerSpec::new(kind, 0, 7.0), &sched),
                Err(SamplingError::ZeroSteps)
            ));
            assert!(matches!(
                Sampler::new(SamplerSpec::new(kind, MAX_STEPS + 1, 7.0), &sched),
                Err(SamplingError::TooManySteps { .. })
            ));
        }
        assert!(matches!(
            Sampler::new(SamplerSpec::new(SamplerKind::Ddim, 1000, 7.0), &sched),
            Err(SamplingError::TooManySteps { max: 999, .. })
        ));
        assert!(matches!(
            Sampler::new(SamplerSpec::new(SamplerKind::Euler, 20, f64::NAN), &sched),
            Err(SamplingError::BadCfgScale(_))
        ));

        // A denoiser returning the wrong shape is reported, not a panic.
        struct Wrong;
        impl Denoiser for Wrong {
            fn eps(&mut self, x: &Tensor, _: f64, _: u32) -> Result<(Tensor, Tensor)> {
                let y = x.narrow(3, 0, 1)?;
                Ok((y.clone(), y))
            }
        }
        let s = Sampler::new(SamplerSpec::new(SamplerKind::Euler, 4, 7.0), &sched).unwrap();
        let e = s.sample(
            &mut Wrong,
            &noise(1, 4),
            &mut SdtraceNoise::new(1),
            &Probe::disabled(),
        );
        assert!(
            matches!(e, Err(SamplingError::BadDenoiserOutput(_))),
            "{e:?}"
        );
    }

    #[test]
    fn header_facts_survive_the_header_round_trip() {
        let s = sampler(SamplerKind::DpmPp2mKarras, 20, 7.0, Prediction::Epsilon);
        let rng = SdtraceNoise::new(1234);
        let mut settings = Settings::default();
        s.fill_settings(&mut settings, &rng);
        let h = crate::trace::RunHeader::new(settings.clone(), Default::default());
        let back = crate::trace::RunHeader::from_json(&h.to_json()).unwrap();
        // (serde_json's default float parsing may be an f64 ulp off; the f32 values are exact.)
        let x = &back.settings.extra;
        assert_eq!(
            x.keys().collect::<Vec<_>>(),
            settings.extra.keys().collect::<Vec<_>>()
        );
        assert_eq!(x["sampler_params"], settings.extra["sampler_params"]);
        assert_eq!(back.settings.sampler.as_deref(), Some("dpmpp-2m-karras"));
        assert_eq!(back.settings.rng.as_deref(), Some("sdtrace"));
        let sigmas: Vec<f32> = serde_json::from_value(x["sigmas"].clone()).unwrap();
        assert_eq!(sigmas, s.sigmas());
        let t: Vec<f32> = serde_json::from_value(x["timesteps"].clone()).unwrap();
        assert_eq!(t, s.timesteps());
        assert_eq!(x["sampler_params"]["schedule"], "karras");
        assert_eq!(x["rng_params"]["params"]["seed"], 1234);
    }
}
