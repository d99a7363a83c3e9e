//! `--perturb KEY@STEP=EPS`: seeded relative noise added at one probe point, for testing the
//! debugger and for sensitivity studies.
//!
//! The tensor x at the matching record becomes x + EPS·rms(x)·z, with z standard normal from
//! sdtrace's ChaCha20 generator seeded by the run seed, the key and the step, so
//! ‖x' − x‖ / ‖x‖ ≈ EPS and the same run perturbed twice is bit-identical. The record shows
//! the perturbed tensor (the one used onwards). The key is a glob pattern (`*`, `?`); without
//! `@STEP` only records outside the sampling loop match (`noise.initial=1e-3`).

use crate::dtype::DType;
use crate::probe::{Intervention, OwnedTensor, TensorView};
use crate::sampling::NoiseSource;
use crate::sampling::noise::SdtraceNoise;
use crate::trace::RecordId;
use half::{bf16, f16};
use std::fmt;

/// One perturbation as given on the command line.
#[derive(Clone, Debug, PartialEq)]
pub struct Perturbation {
    pub key: String,
    pub step: Option<u32>,
    pub eps: f64,
}

impl std::str::FromStr for Perturbation {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = "expected KEY@STEP=EPS, e.g. unet.mid_block@5=1e-3 (or KEY=EPS for records outside the sampling loop, e.g. noise.initial=1e-3)";
        let (lhs, eps) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("'{s}': no '=EPS' ({usage})"))?;
        let eps: f64 = eps
            .trim()
            .parse()
            .ok()
            .filter(|e: &f64| e.is_finite() && *e > 0.0)
            .ok_or_else(|| format!("'{s}': EPS must be a positive number ({usage})"))?;
        let (key, step) = match lhs.rsplit_once('@') {
            Some((k, st)) => {
                let step = st
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| format!("'{s}': STEP must be a step number ({usage})"))?;
                (k, Some(step))
            }
            None => (lhs, None),
        };
        if key.trim().is_empty() {
            return Err(format!("'{s}': the key is empty ({usage})"));
        }
        Ok(Perturbation {
            key: key.trim().to_string(),
            step,
            eps,
        })
    }
}

impl fmt::Display for Perturbation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.step {
            Some(s) => write!(f, "{}@{s}={}", self.key, self.eps),
            None => write!(f, "{}={}", self.key, self.eps),
        }
    }
}

/// Probe points outside the sampling loop that the size estimate leaves out (small, and not
/// in every model); a perturbation may still target them.
const UNPLANNED: &[&str] = &["vae.post_quant_conv"];

/// Refuse, before the run, a perturbation that no probe point of the run matches: an unknown
/// key, or a step outside the run (`planned` is every record the run will offer the probe,
/// [`super::estimate::PlannedRecord`]). Without this it would be applied to nothing and still
/// be listed in the header as applied.
pub fn check_targets(
    perturb: &[Perturbation],
    planned: &[super::estimate::PlannedRecord],
) -> Result<(), String> {
    for p in perturb {
        let hits = |step: Option<u32>| {
            planned
                .iter()
                .any(|r| r.step == step && crate::glob::matches(&p.key, &r.key))
                || step.is_none() && UNPLANNED.iter().any(|k| crate::glob::matches(&p.key, k))
        };
        if hits(p.step) {
            continue;
        }
        let last = planned.iter().filter_map(|r| r.step).max();
        let key_anywhere = planned.iter().any(|r| crate::glob::matches(&p.key, &r.key));
        let why = match (p.step, last) {
            (Some(s), Some(last)) if s > last && key_anywhere => {
                format!("step {s} is past this run's last step ({last}; steps count from 0)")
            }
            (Some(_), _) if hits(None) => format!(
                "'{}' is recorded outside the sampling loop: leave out @STEP ({}={})",
                p.key, p.key, p.eps
            ),
            (Some(s), _) if key_anywhere => {
                let steps: Vec<u32> = planned
                    .iter()
                    .filter(|r| crate::glob::matches(&p.key, &r.key))
                    .filter_map(|r| r.step)
                    .collect();
                let (lo, hi) = (steps.iter().min(), steps.iter().max());
                format!(
                    "'{}' is not recorded at step {s} (it is at steps {}..={})",
                    p.key,
                    lo.copied().unwrap_or(0),
                    hi.copied().unwrap_or(0)
                )
            }
            (None, _) if key_anywhere => format!(
                "'{}' is only recorded inside the sampling loop: add @STEP, e.g. {}@0={}",
                p.key, p.key, p.eps
            ),
            _ => {
                let group = p.key.split('.').next().unwrap_or("");
                let mut near: Vec<&str> = planned
                    .iter()
                    .map(|r| r.key.as_str())
                    .filter(|k| k.split('.').next() == Some(group))
                    .collect();
                near.sort_unstable();
                near.dedup();
                let shown = near.iter().take(6).copied().collect::<Vec<_>>().join(", ");
                format!(
                    "no probe point of this model is named '{}'{}; `sdtrace ls TRACE` lists the keys of a trace",
                    p.key,
                    if shown.is_empty() {
                        String::new()
                    } else {
                        format!(" (keys of '{group}' include {shown})")
                    }
                )
            }
        };
        return Err(format!("--perturb {p}: {why}"));
    }
    Ok(())
}

/// The intervention applying a [`Perturbation`]; counts how often it acted.
pub struct Perturb {
    p: Perturbation,
    seed: u64,
    applied: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Perturb {
    pub fn new(p: Perturbation, seed: u64) -> Self {
        Perturb {
            p,
            seed,
            applied: Default::default(),
        }
    }

    /// A counter of the records this perturbation changed (shared, readable after the run).
    pub fn applied(&self) -> std::sync::Arc<std::sync::atomic::AtomicU64> {
        self.applied.clone()
    }
}

impl Intervention for Perturb {
    fn wants(&self, id: &RecordId) -> bool {
        id.step == self.p.step && crate::glob::matches(&self.p.key, &id.key)
    }

    fn apply(&mut self, id: &RecordId, t: TensorView<'_>) -> Result<Option<OwnedTensor>, String> {
        let x = t
            .dtype()
            .is_float()
            .then(|| t.dtype().decode_all(t.data()))
            .ok_or_else(|| format!("cannot perturb a {} tensor", t.dtype()))?;
        if x.is_empty() {
            return Ok(None);
        }
        let rms = (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt();
        let seed = xxhash_rust::xxh3::xxh3_64_with_seed(
            format!("{}@{:?}", id.key, id.step).as_bytes(),
            self.seed,
        );
        let z = SdtraceNoise::new(seed)
            .randn(t.shape())
            .map_err(|e| e.to_string())?;
        let scale = self.p.eps * rms;
        let y: Vec<f64> = x
            .iter()
            .zip(&z)
            .map(|(v, z)| v + scale * *z as f64)
            .collect();
        self.applied
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(OwnedTensor {
            dtype: t.dtype(),
            shape: t.shape().to_vec(),
            data: from_f64(t.dtype(), &y),
        }))
    }
}

fn from_f64(dtype: DType, v: &[f64]) -> Vec<u8> {
    match dtype {
        DType::F64 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        DType::F16 => v
            .iter()
            .flat_map(|&x| f16::from_f64(x).to_le_bytes())
            .collect(),
        DType::BF16 => v
            .iter()
            .flat_map(|&x| bf16::from_f64(x).to_le_bytes())
            .collect(),
        _ => v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_refuses_clearly() {
        let p: Perturbation = "unet.mid_block@5=1e-3".parse().unwrap();
        assert_eq!(
            p,
            Perturbation {
                key: "unet.mid_block".into(),
                step: Some(5),
                eps: 1e-3
            }
        );
        assert_eq!(p.to_string(), "unet.mid_block@5=0.001");
        let p: Perturbation = "noise.initial=0.5".parse().unwrap();
        assert_eq!(p.step, None);
        for bad in ["x@1", "x@a=1", "x@1=0", "x@1=-2", "@1=1", "x@1=nan"] {
            let e = bad.parse::<Perturbation>().unwrap_err();
            assert!(e.contains("KEY@STEP=EPS") && e.contains(bad), "{e}");
        }
    }

    #[test]
    fn relative_size_is_eps_and_deterministic() {
        let x: Vec<f32> = (0..4096).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        let shape = [4096usize];
        let view = TensorView::new(DType::F32, &shape, &bytes).unwrap();
        let id = RecordId {
            step: Some(2),
            eval: 0,
            key: "unet.mid_block".into(),
        };
        let p: Perturbation = "unet.*@2=1e-2".parse().unwrap();
        let mut a = Perturb::new(p.clone(), 7);
        assert!(a.wants(&id));
        assert!(!a.wants(&RecordId {
            step: Some(3),
            ..id.clone()
        }));
        let ya = a.apply(&id, view).unwrap().unwrap();
        let yb = Perturb::new(p, 7).apply(&id, view).unwrap().unwrap();
        assert_eq!(ya.data, yb.data);
        let y = DType::F32.decode_all(&ya.data);
        let (num, den) = x.iter().zip(&y).fold((0.0, 0.0), |(n, d), (&a, &b)| {
            (n + (b - a as f64).powi(2), d + (a as f64).powi(2))
        });
        let rel = (num / den).sqrt();
        assert!((rel - 1e-2).abs() < 1e-3, "{rel}");
        assert_eq!(a.applied().load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
