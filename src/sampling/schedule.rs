//! The SD 1.x discrete noise schedule and the step schedules built on it: pure f64/f32 scalar
//! math, no tensors.
//!
//! [`DiscreteSchedule`] mirrors LDM + k-diffusion's `DiscreteSchedule`: scaled-linear betas over
//! 1000 steps computed in f64, ᾱ (`alphas_cumprod`) stored as f32 like PyTorch's buffer
//! (optionally rounded through f16 as A1111 < 1.8 did in fp16 mode, with the σ table then also
//! computed in f16 arithmetic), σ_t = √((1−ᾱ_t)/ᾱ_t) and ln σ_t in the same precision. The
//! conversions `sigma_to_t` (fractional t by log-σ interpolation) and `t_to_sigma` follow
//! `CompVisDenoiser` operation for operation in f32; step schedules (Karras, k-diffusion's
//! "normal" `get_sigmas`) use a float32 `torch.linspace` ramp. Invariants: the σ table has 1000
//! entries, increasing in t; every step schedule returned here is non-increasing, has one
//! more σ than steps and ends in 0, except DDIM's, which ends in σ₀ (see [`DiscreteSchedule::ddim`]).
//! Transcendentals come from Rust's libm, which may differ from PyTorch's SLEEF kernels by an
//! ulp; exact torch bit-equality of the σ values is not promised.

use super::{Result, SamplingError};
use half::f16;

/// Training timesteps of SD 1.x/2.x.
pub const TRAIN_STEPS: usize = 1000;
/// LDM's `linear_start` / `linear_end` (β at t = 0 and t = 999).
pub const BETA_START: f64 = 0.00085;
pub const BETA_END: f64 = 0.012;
/// Karras ρ.
pub const KARRAS_RHO: f64 = 7.0;
/// A1111's Karras bounds before 2023-01-05 (setting `use_old_karras_scheduler_sigmas`).
pub const OLD_KARRAS_BOUNDS: (f64, f64) = (0.1, 10.0);
/// diffusers' `steps_offset` for SD (and the `+ 1` of CompVis' uniform DDIM timesteps).
pub const DDIM_STEPS_OFFSET: u32 = 1;

/// Precision of the stored ᾱ and of the σ table derived from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlphasPrecision {
    /// f32 buffer (PyTorch, A1111 ≥ 1.8 by default).
    F32,
    /// ᾱ rounded to f16 and σ, ln σ computed in f16 (A1111 < 1.8 in fp16 mode; the later
    /// "Downcast model alphas_cumprod to fp16" option).
    F16,
}

impl AlphasPrecision {
    pub fn name(self) -> &'static str {
        match self {
            AlphasPrecision::F32 => "f32",
            AlphasPrecision::F16 => "f16",
        }
    }
}

/// σ bounds of a Karras schedule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum KarrasBounds {
    /// The model's σ_min and σ_max (A1111 since 2023-01-05, ComfyUI, diffusers).
    Model,
    /// A1111's old hard-coded (0.1, 10).
    Old,
    /// Explicit (σ_min, σ_max).
    Custom(f64, f64),
}

/// `torch.linspace(start, end, n)` for f64 on the CPU, scalar path: the first half counts up
/// from `start`, the second half down from `end`, so both ends are exact.
pub fn linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f64
            } else {
                end - step * (n - 1 - i) as f64
            }
        })
        .collect()
}

/// `torch.linspace(start, end, n)` for f32 (same scheme as [`linspace_f64`], in f32).
pub fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

fn round_f16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// The 1000-step discrete schedule of an ε/v model (k-diffusion's `DiscreteSchedule`).
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteSchedule {
    precision: AlphasPrecision,
    alphas_cumprod: Vec<f32>,
    sigmas: Vec<f32>,
    log_sigmas: Vec<f32>,
}

impl DiscreteSchedule {
    /// SD 1.x/2.x scaled-linear schedule: β_t = linspace(√0.00085, √0.012, 1000)_t² in f64,
    /// ᾱ = cumprod(1 − β) in f64, stored as f32 (then f16 if asked).
    pub fn sd(precision: AlphasPrecision) -> Self {
        let mut prod = 1.0f64;
        let alphas_cumprod: Vec<f32> =
            linspace_f64(BETA_START.sqrt(), BETA_END.sqrt(), TRAIN_STEPS)
                .into_iter()
                .map(|b| {
                    prod *= 1.0 - b * b;
                    let a = prod as f32;
                    match precision {
                        AlphasPrecision::F32 => a,
                        AlphasPrecision::F16 => round_f16(a),
                    }
                })
                .collect();
        // ((1 − ᾱ)/ᾱ) ** 0.5, then .log(): each op rounded to the table's dtype, as PyTorch
        // does for f16 tensors (computed in f32, stored in f16).
        let r = |x: f32| match precision {
            AlphasPrecision::F32 => x,
            AlphasPrecision::F16 => round_f16(x),
        };
        let sigmas: Vec<f32> = alphas_cumprod
            .iter()
            .map(|&a| r(r(r(1.0 - a) / a).sqrt()))
            .collect();
        let log_sigmas = sigmas.iter().map(|&s| r(s.ln())).collect();
        DiscreteSchedule {
            precision,
            alphas_cumprod,
            sigmas,
            log_sigmas,
        }
    }

    pub fn precision(&self) -> AlphasPrecision {
        self.precision
    }

    /// ᾱ_t for t = 0..999.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    /// σ_t for t = 0..999 (increasing).
    pub fn sigmas(&self) -> &[f32] {
        &self.sigmas
    }

    pub fn sigma_min(&self) -> f32 {
        self.sigmas[0]
    }

    pub fn sigma_max(&self) -> f32 {
        self.sigmas[TRAIN_STEPS - 1]
    }

    /// k-diffusion's `sigma_to_t`: the fractional timestep of σ by linear interpolation of ln σ
    /// between the neighbouring table entries, all in f32. σ outside the table clamps to t = 0
    /// or 999; NaN gives NaN.
    pub fn sigma_to_t(&self, sigma: f32) -> f32 {
        let ls = self.log_sigmas.as_slice();
        let l = sigma.ln();
        // Last index whose ln σ ≤ l (argmax of the cumulative sum of `dists >= 0`), else 0.
        let low = ls
            .iter()
            .rposition(|&x| l - x >= 0.0)
            .unwrap_or(0)
            .min(TRAIN_STEPS - 2);
        let high = low + 1;
        let w = ((ls[low] - l) / (ls[low] - ls[high])).clamp(0.0, 1.0);
        (1.0 - w) * low as f32 + w * high as f32
    }

    /// k-diffusion's `t_to_sigma`: exp of the linear interpolation of ln σ at ⌊t⌋ and ⌈t⌉ (f32).
    /// t is clamped to [0, 999].
    pub fn t_to_sigma(&self, t: f32) -> f32 {
        let t = t.clamp(0.0, (TRAIN_STEPS - 1) as f32);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - t.floor();
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }

    /// `get_sigmas_karras(n, σ_min, σ_max, ρ = 7)` + `append_zero`: n + 1 values.
    pub fn karras(&self, steps: u32, bounds: KarrasBounds) -> Result<Vec<f32>> {
        let (min, max) = match bounds {
            // `model_wrap.sigmas[0].item()`: the f32 (or f16) value as a Python float.
            KarrasBounds::Model => (self.sigma_min() as f64, self.sigma_max() as f64),
            KarrasBounds::Old => OLD_KARRAS_BOUNDS,
            KarrasBounds::Custom(min, max) => (min, max),
        };
        if !(min > 0.0 && min < max && max.is_finite()) {
            return Err(SamplingError::BadKarrasBounds { min, max });
        }
        check_steps("karras", steps, super::sampler::MAX_STEPS)?;
        let min_inv_rho = min.powf(1.0 / KARRAS_RHO);
        let max_inv_rho = max.powf(1.0 / KARRAS_RHO);
        // Tensor ⊙ Python float: the scalar becomes f32, the arithmetic is f32.
        let (a, b) = (max_inv_rho as f32, (min_inv_rho - max_inv_rho) as f32);
        let mut s: Vec<f32> = linspace_f32(0.0, 1.0, steps as usize)
            .into_iter()
            .map(|r| (a + r * b).powf(KARRAS_RHO as f32))
            .collect();
        s.push(0.0);
        Ok(s)
    }

    /// k-diffusion's discrete `get_sigmas(n)` (A1111's non-Karras schedule for DPM++ 2M, Euler,
    /// Euler a): t = linspace(999, 0, n) in f32, σ = t_to_sigma(t), then 0 appended.
    pub fn normal(&self, steps: u32) -> Result<Vec<f32>> {
        check_steps("normal", steps, super::sampler::MAX_STEPS)?;
        let mut s: Vec<f32> = linspace_f32((TRAIN_STEPS - 1) as f32, 0.0, steps as usize)
            .into_iter()
            .map(|t| self.t_to_sigma(t))
            .collect();
        s.push(0.0);
        Ok(s)
    }

    /// DDIM (η = 0) timesteps and σ values, for 1 to 999 steps. Timesteps are diffusers' "leading" spacing with
    /// `steps_offset` 1, which equals CompVis' "uniform" DDIM: t_k = (n − 1 − k)·⌊1000/n⌋ + 1,
    /// descending (20 steps: 951, 901, …, 1). σ_k = σ(t_k) from the table, and the last step
    /// goes to σ₀, the table's smallest σ, because SD's scheduler has `set_alpha_to_one = false`
    /// (the final ᾱ_prev is ᾱ₀, as in CompVis' `ddim_alphas_prev`). DDIM in σ form is the Euler
    /// step, and the result is the VE latent at σ₀ (diffusers' output is that times √ᾱ₀). The
    /// sampler starts DDIM like the others from noise·σ(t₀); diffusers' VP start (noise·1)
    /// corresponds to noise·√(1 + σ(t₀)²) here, a 0.4 % larger start at 20 steps.
    pub fn ddim(&self, steps: u32) -> Result<(Vec<f32>, Vec<f32>)> {
        // At 1000 steps the ratio is 1 and t₀ = 1000 falls off the table (diffusers fails too).
        check_steps("ddim", steps, TRAIN_STEPS as u32 - 1)?;
        let ratio = TRAIN_STEPS as u32 / steps;
        let timesteps: Vec<u32> = (0..steps)
            .rev()
            .map(|k| k * ratio + DDIM_STEPS_OFFSET)
            .collect();
        let mut sigmas: Vec<f32> = timesteps.iter().map(|&t| self.sigmas[t as usize]).collect();
        sigmas.push(self.sigma_min());
        Ok((sigmas, timesteps.into_iter().map(|t| t as f32).collect()))
    }
}

pub(crate) fn check_steps(sampler: &'static str, steps: u32, max: u32) -> Result<()> {
    if steps == 0 {
        Err(SamplingError::ZeroSteps)
    } else if steps > max {
        Err(SamplingError::TooManySteps {
            sampler,
            steps,
            max,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// domain-facts §3.2: the 20-step Karras schedule with the model's fp32 bounds (4 decimals).
    const KARRAS_20: [f32; 21] = [
        14.6146, 11.7254, 9.3402, 7.3836, 5.7894, 4.4998, 3.4648, 2.6408, 1.9909, 1.4832, 1.0908,
        0.7909, 0.5647, 0.3964, 0.2730, 0.1842, 0.1213, 0.0779, 0.0485, 0.0292, 0.0,
    ];
    /// Their fractional timesteps (2 decimals).
    const KARRAS_20_T: [f32; 20] = [
        999.00, 961.73, 921.04, 876.31, 826.79, 771.55, 709.53, 639.61, 560.98, 473.75, 380.13,
        285.32, 197.08, 123.40, 69.26, 34.70, 15.48, 5.99, 1.78, 0.00,
    ];

    fn close(got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol,
                "[{i}]: {g} vs {w} (tol {tol})\n{got:?}"
            );
        }
    }

    #[test]
    fn sigma_bounds_match_domain_facts() {
        let s = DiscreteSchedule::sd(AlphasPrecision::F32);
        assert!(
            (s.sigma_min() as f64 - 0.0291675).abs() < 1e-7,
            "{}",
            s.sigma_min()
        );
        assert!(
            // diffusers' f32 betas give 14.6146525: this tolerance tells them apart.
            (s.sigma_max() as f64 - 14.6146421).abs() < 1e-6,
            "{}",
            s.sigma_max()
        );
        assert!(s.sigmas().windows(2).all(|w| w[0] < w[1]));
        let h = DiscreteSchedule::sd(AlphasPrecision::F16);
        assert_eq!((h.sigma_min(), h.sigma_max()), (0.03125, 14.609375));
    }

    #[test]
    fn karras_20_steps_match_domain_facts() {
        let s = DiscreteSchedule::sd(AlphasPrecision::F32);
        let k = s.karras(20, KarrasBounds::Model).unwrap();
        close(&k, &KARRAS_20, 6e-5);
        assert!((k[0] / s.sigma_max() - 1.0).abs() < 1e-6);
        let t: Vec<f32> = k[..20].iter().map(|&x| s.sigma_to_t(x)).collect();
        close(&t, &KARRAS_20_T, 6e-3);

        let old = s.karras(20, KarrasBounds::Old).unwrap();
        close(&old[..3], &[10.0, 8.3536, 6.9453], 6e-5);
        close(&old[18..], &[0.1398, 0.1, 0.0], 6e-5);

        let h = DiscreteSchedule::sd(AlphasPrecision::F16);
        let k16 = h.karras(20, KarrasBounds::Model).unwrap();
        close(&k16[..3], &[14.6094, 11.7394, 9.3669], 6e-5);
        close(&k16[18..], &[0.0515, 0.0312, 0.0], 6e-5);
    }

    #[test]
    fn t_and_sigma_round_trip() {
        let s = DiscreteSchedule::sd(AlphasPrecision::F32);
        for t in [0u32, 1, 17, 500, 998, 999] {
            // exp(ln σ) as k-diffusion computes it: σ to within an ulp or two.
            assert!((s.t_to_sigma(t as f32) / s.sigmas()[t as usize] - 1.0).abs() < 3e-7);
            assert!((s.sigma_to_t(s.sigmas()[t as usize]) - t as f32).abs() < 1e-3);
        }
        for t in [0.25f32, 123.5, 876.31, 998.9] {
            assert!((s.sigma_to_t(s.t_to_sigma(t)) - t).abs() < 2e-3, "{t}");
        }
        // Out of range clamps.
        assert_eq!(s.sigma_to_t(100.0), 999.0);
        assert_eq!(s.sigma_to_t(1e-4), 0.0);
    }

    #[test]
    fn normal_schedule_spans_the_table_and_ends_in_zero() {
        let s = DiscreteSchedule::sd(AlphasPrecision::F32);
        let n = s.normal(20).unwrap();
        assert_eq!(n.len(), 21);
        assert!((n[0] / s.sigma_max() - 1.0).abs() < 3e-7);
        assert!((n[19] / s.sigma_min() - 1.0).abs() < 3e-7);
        assert_eq!(n[20], 0.0);
        assert!(n.windows(2).all(|w| w[0] > w[1]));
        // t = 999 − k·999/19: k = 1 is t ≈ 946.42, between table entries.
        let t1 = s.sigma_to_t(n[1]);
        assert!((t1 - 946.4211).abs() < 2e-3, "{t1}");
        for one in [
            s.normal(1).unwrap(),
            s.karras(1, KarrasBounds::Model).unwrap(),
        ] {
            assert_eq!((one.len(), one[1]), (2, 0.0));
            assert!((one[0] / s.sigma_max() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn ddim_uses_leading_spacing_with_offset_one() {
        let s = DiscreteSchedule::sd(AlphasPrecision::F32);
        let (sig, t) = s.ddim(20).unwrap();
        let want: Vec<f32> = (0..20).rev().map(|k| (50 * k + 1) as f32).collect();
        assert_eq!(t, want);
        assert_eq!(sig.len(), 21);
        assert_eq!(sig[0], s.sigmas()[951]);
        assert_eq!(sig[19], s.sigmas()[1]);
        assert_eq!(sig[20], s.sigma_min());
        assert_eq!(s.ddim(3).unwrap().1, vec![667.0, 334.0, 1.0]);
        assert_eq!(s.ddim(999).unwrap().1[0], 999.0);
        assert_eq!(s.ddim(500).unwrap().1[0], 999.0);
    }

    #[test]
    fn bad_step_counts_and_bounds_are_errors() {
        let s = DiscreteSchedule::sd(AlphasPrecision::F32);
        assert!(matches!(s.normal(0), Err(SamplingError::ZeroSteps)));
        assert!(matches!(
            s.karras(0, KarrasBounds::Model),
            Err(SamplingError::ZeroSteps)
        ));
        assert!(matches!(
            s.ddim(1000),
            Err(SamplingError::TooManySteps { max: 999, .. })
        ));
        for b in [
            (0.0, 1.0),
            (2.0, 1.0),
            (0.1, f64::NAN),
            (0.1, f64::INFINITY),
        ] {
            assert!(matches!(
                s.karras(10, KarrasBounds::Custom(b.0, b.1)),
                Err(SamplingError::BadKarrasBounds { .. })
            ));
        }
    }

    #[test]
    fn linspace_hits_both_ends_exactly() {
        let r = linspace_f32(0.0, 1.0, 20);
        assert_eq!((r[0], r[19]), (0.0, 1.0));
        assert!(r.windows(2).all(|w| w[0] < w[1]));
        let t = linspace_f32(999.0, 0.0, 7);
        assert_eq!(t, vec![999.0, 832.5, 666.0, 499.5, 333.0, 166.5, 0.0]);
        let b = linspace_f64(BETA_START.sqrt(), BETA_END.sqrt(), 1000);
        assert_eq!((b[0], b[999]), (BETA_START.sqrt(), BETA_END.sqrt()));
    }
}
