//! Tolerances: per-dtype defaults, a global `--tol`, per-key `--tol-key GLOB=…` overrides and a
//! noise floor.
//!
//! A tolerance is a pair `(rel, abs)` applied to a record's *statistics*, Polygraphy-style: a
//! record fails when its relative L2 error ‖a−b‖/‖b‖ exceeds `rel` **and** its absolute error
//! (max |a−b| with payloads, else the RMS difference, a lower bound of it) exceeds `abs`. Both
//! statistics are stored in a comparison, so any tolerance can be re-applied later, and the
//! smallest passing tolerance of a failing record is simply "rel ≥ its relative L2, or abs ≥ its
//! absolute error".
//!
//! Per-dtype defaults follow `torch.testing.assert_close`:
//!
//! | dtype | rel | abs |
//! |---|---|---|
//! | f64 | 1e-7 | 1e-7 |
//! | f32 | 1.3e-6 | 1e-5 |
//! | f16 | 1e-3 | 1e-5 |
//! | bf16 | 1.6e-2 | 1e-5 |
//! | i64, i32, u8 | 0 | 0 (exact) |
//!
//! Resolution order for a record: per-dtype default (the looser of the two dtypes when they
//! differ), then `--tol`, then the last matching `--tol-key`. With a noise floor measured for
//! the record, the floor replaces the defaults: `rel = k × floor_rel`, `abs = k × floor_abs`,
//! raised to any value the user gave explicitly (`--tol`/`--tol-key`).

use super::AnalysisError;
use crate::dtype::DType;
use crate::glob;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A resolved tolerance.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tol {
    pub rel: f64,
    pub abs: f64,
}

impl fmt::Display for Tol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rel={:.3e},abs={:.3e}", self.rel, self.abs)
    }
}

/// A tolerance as given on the command line: either part may be left out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TolSpec {
    pub rel: Option<f64>,
    pub abs: Option<f64>,
}

impl TolSpec {
    /// Parse `rel=1e-3,abs=1e-5` (either part optional, at least one). `flag` names the option
    /// in errors.
    pub fn parse(text: &str, flag: &'static str) -> Result<Self, AnalysisError> {
        let bad = |what: String| AnalysisError::BadTolerance {
            flag,
            value: text.to_string(),
            what,
        };
        let mut spec = TolSpec::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| {
                bad(format!(
                    "'{part}' is not NAME=VALUE; write e.g. rel=1e-3,abs=1e-5"
                ))
            })?;
            let v: f64 = value.trim().parse().map_err(|_| {
                bad(format!(
                    "'{value}' is not a number; write e.g. rel=1e-3,abs=1e-5"
                ))
            })?;
            if !(v.is_finite() && v >= 0.0) {
                return Err(bad(format!("{name} must be a finite number ≥ 0")));
            }
            match name.trim() {
                "rel" => spec.rel = Some(v),
                "abs" => spec.abs = Some(v),
                other => {
                    return Err(bad(format!(
                        "unknown part '{other}'; the parts are rel and abs"
                    )));
                }
            }
        }
        if spec.rel.is_none() && spec.abs.is_none() {
            return Err(bad("empty tolerance; write e.g. rel=1e-3,abs=1e-5".into()));
        }
        Ok(spec)
    }

    fn over(self, base: TolSpec) -> TolSpec {
        TolSpec {
            rel: self.rel.or(base.rel),
            abs: self.abs.or(base.abs),
        }
    }
}

/// Default tolerance of a dtype (see the module table).
pub fn default_tol(dtype: DType) -> Tol {
    match dtype {
        DType::F64 => Tol {
            rel: 1e-7,
            abs: 1e-7,
        },
        DType::F32 => Tol {
            rel: 1.3e-6,
            abs: 1e-5,
        },
        DType::F16 => Tol {
            rel: 1e-3,
            abs: 1e-5,
        },
        DType::BF16 => Tol {
            rel: 1.6e-2,
            abs: 1e-5,
        },
        DType::I64 | DType::I32 | DType::U8 => Tol { rel: 0.0, abs: 0.0 },
    }
}

/// The default tolerances, generated from [`default_tol`] for help texts:
/// `f64 rel=1e-7,abs=1e-7; f32 rel=1.3e-6,abs=1e-5; …; integers exact`.
pub fn defaults_text() -> String {
    let mut parts: Vec<String> = [DType::F64, DType::F32, DType::F16, DType::BF16]
        .into_iter()
        .map(|d| {
            let t = default_tol(d);
            format!("{d} rel={:e},abs={:e}", t.rel, t.abs)
        })
        .collect();
    if DType::ALL
        .into_iter()
        .filter(|d| !d.is_float())
        .all(|d| default_tol(d) == Tol { rel: 0.0, abs: 0.0 })
    {
        parts.push("integers exact".into());
    }
    parts.join("; ")
}

/// All tolerance settings of one judgement.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TolConfig {
    /// `--tol`.
    pub global: Option<TolSpec>,
    /// `--tol-key GLOB=…`, in command-line order; the last match wins.
    pub per_key: Vec<(String, TolSpec)>,
    /// Multiplier of the noise floor.
    pub floor_k: f64,
}

impl Default for TolConfig {
    fn default() -> Self {
        TolConfig {
            global: None,
            per_key: Vec::new(),
            floor_k: 3.0,
        }
    }
}

impl TolConfig {
    /// The tolerances `--tol`, `--tol-key` (in order) and `--floor-k` give.
    pub fn from_flags(
        tol: Option<&str>,
        tol_key: &[String],
        floor_k: f64,
    ) -> Result<TolConfig, AnalysisError> {
        if !(floor_k.is_finite() && floor_k > 0.0) {
            return Err(AnalysisError::BadTolerance {
                flag: "--floor-k",
                value: floor_k.to_string(),
                what: "must be a finite number > 0, e.g. 3".into(),
            });
        }
        let mut t = TolConfig {
            global: tol.map(|t| TolSpec::parse(t, "--tol")).transpose()?,
            per_key: Vec::new(),
            floor_k,
        };
        for k in tol_key {
            t.push_key_override(k)?;
        }
        Ok(t)
    }

    /// Parse one `--tol-key GLOB=rel=…,abs=…` value and append it.
    pub fn push_key_override(&mut self, text: &str) -> Result<(), AnalysisError> {
        let (pattern, spec) = text
            .split_once('=')
            .ok_or_else(|| AnalysisError::BadTolerance {
                flag: "--tol-key",
                value: text.to_string(),
                what: "expected GLOB=rel=…,abs=…, e.g. 'unet.*=rel=1e-3'".into(),
            })?;
        if pattern.is_empty() {
            return Err(AnalysisError::BadTolerance {
                flag: "--tol-key",
                value: text.to_string(),
                what: "the key glob is empty; e.g. 'unet.*=rel=1e-3'".into(),
            });
        }
        let spec = TolSpec::parse(spec, "--tol-key").map_err(|e| match e {
            AnalysisError::BadTolerance { what, .. } => AnalysisError::BadTolerance {
                flag: "--tol-key",
                value: text.to_string(),
                what: format!("{what} (after GLOB=)"),
            },
            other => other,
        })?;
        self.per_key.push((pattern.to_string(), spec));
        Ok(())
    }

    /// What the user gave explicitly for `key` (global, then the last matching override).
    fn explicit(&self, key: &str) -> TolSpec {
        let mut spec = self.global.unwrap_or_default();
        for (pattern, s) in &self.per_key {
            if glob::matches(pattern, key) {
                spec = s.over(spec);
            }
        }
        spec
    }

    /// The tolerance of a record of `key` whose sides have dtypes `da` and `db`; `floor` is the
    /// record's measured noise floor `(rel, abs)` when there is one.
    pub fn resolve(&self, key: &str, da: DType, db: DType, floor: Option<(f64, f64)>) -> Tol {
        let explicit = self.explicit(key);
        if let Some((frel, fabs)) = floor {
            return Tol {
                rel: (self.floor_k * frel).max(explicit.rel.unwrap_or(0.0)),
                abs: (self.floor_k * fabs).max(explicit.abs.unwrap_or(0.0)),
            };
        }
        let (ta, tb) = (default_tol(da), default_tol(db));
        Tol {
            rel: explicit.rel.unwrap_or(ta.rel.max(tb.rel)),
            abs: explicit.abs.unwrap_or(ta.abs.max(tb.abs)),
        }
    }

    /// One line describing the settings, for reports.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.global {
            Some(g) => parts.push(format!("--tol {g}")),
            None => parts.push("per-dtype defaults".to_string()),
        }
        for (p, s) in &self.per_key {
            parts.push(format!("--tol-key {p}={s}"));
        }
        parts.join(", ")
    }
}

/// `rel=1e-3,abs=1e-5` (the parts given), as `--tol` and the TUI's `t` prompt take it.
impl std::fmt::Display for TolSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v = Vec::new();
        if let Some(r) = self.rel {
            v.push(format!("rel={r:e}"));
        }
        if let Some(a) = self.abs {
            v.push(format!("abs={a:e}"));
        }
        f.write_str(&v.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_text_says_what_the_table_holds() {
        assert_eq!(
            defaults_text(),
            "f64 rel=1e-7,abs=1e-7; f32 rel=1.3e-6,abs=1e-5; f16 rel=1e-3,abs=1e-5; \
             bf16 rel=1.6e-2,abs=1e-5; integers exact"
        );
    }

    #[test]
    fn parse_and_resolve() {
        assert_eq!(
            TolSpec::parse("rel=1e-3,abs=2e-5", "--tol").unwrap(),
            TolSpec {
                rel: Some(1e-3),
                abs: Some(2e-5)
            }
        );
        assert_eq!(
            TolSpec::parse("abs=0.5", "--tol").unwrap(),
            TolSpec {
                rel: None,
                abs: Some(0.5)
            }
        );
        for bad in ["", "rel", "rel=x", "rel=-1", "ulp=3", "rel=inf"] {
            let e = TolSpec::parse(bad, "--tol").unwrap_err().to_string();
            assert!(e.starts_with("--tol '"), "{e}");
        }
        let mut c = TolConfig {
            global: Some(TolSpec {
                rel: Some(1e-2),
                abs: None,
            }),
            ..Default::default()
        };
        c.push_key_override("unet.*=rel=0.5").unwrap();
        c.push_key_override("unet.mid_block=abs=7").unwrap();
        assert!(c.push_key_override("rel=1").is_err());
        // Global rel, default abs for f32.
        assert_eq!(
            c.resolve("sampler.x", DType::F32, DType::F32, None),
            Tol {
                rel: 1e-2,
                abs: 1e-5
            }
        );
        assert_eq!(
            c.resolve("unet.conv_in", DType::F32, DType::F32, None),
            Tol {
                rel: 0.5,
                abs: 1e-5
            }
        );
        // Later overrides stack on earlier ones.
        assert_eq!(
            c.resolve("unet.mid_block", DType::F16, DType::F32, None),
            Tol { rel: 0.5, abs: 7.0 }
        );
        // Looser dtype default when the sides differ.
        let d = TolConfig::default();
        assert_eq!(
            d.resolve("x", DType::F16, DType::F32, None),
            Tol {
                rel: 1e-3,
                abs: 1e-5
            }
        );
        // Noise floor: k × floor, raised to explicit values.
        assert_eq!(
            d.resolve("x", DType::F32, DType::F32, Some((1e-4, 1e-3))),
            Tol {
                rel: 3.0 * 1e-4,
                abs: 3.0 * 1e-3
            }
        );
        assert_eq!(
            c.resolve("sampler.x", DType::F32, DType::F32, Some((1e-4, 1e-3))),
            Tol {
                rel: 1e-2,
                abs: 3.0 * 1e-3
            }
        );
    }
}
