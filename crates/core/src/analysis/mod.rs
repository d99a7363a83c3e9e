//! Divergence analysis: line two traces up, measure every pair, judge, localise, classify.
//!
//! The work is split in two so that a comparison can be saved and re-judged without the traces:
//! - [`compare()`] reads both traces (and optionally a noise-floor trace) once and produces a
//!   [`Comparison`]: the alignment (unmatched records, shape/dtype mismatches, header
//!   differences) and raw metrics per aligned pair. Payloads are streamed in pieces of at most
//!   1 MiB per side, so memory stays bounded whatever the trace size; records are spread over
//!   worker threads. A `Comparison` is plain data (serde) and holds no tolerance decision except
//!   the one documented metric that depends on it (`beyond`, counted at the compare-time
//!   tolerance).
//! - [`judge()`] applies tolerances to a `Comparison` and localises the divergence: first
//!   non-identical record, first record over tolerance, per-record gain and the source record,
//!   latent amplification onset with its fitted growth rate, the final image difference, and a
//!   verdict class with an exit code. It reads no file.
//! - [`gaps`] says what each trace lacks (records on one side only, a truncated file, an
//!   interrupted or failed run); unless `--allow-missing` covers it, that makes the verdict
//!   `incomplete`, so nothing passes that was not compared.
//! - [`noise`] classifies a difference between two noise tensors (identical, rounding, GPU RNG
//!   wave, unrelated generators, scaling, shapes); `compare` attaches its diagnosis to every
//!   `noise.*` and `sampler.noise` pair, and `judge` names it in the verdict.
//!
//! Invariants: nothing here depends on a tensor library; unmatched and mismatched records are
//! reported, never dropped silently; no input, however damaged, makes this module panic.

mod align;
mod compare;
mod gaps;
mod judge;
mod metrics;
pub mod noise;
mod tolerance;

pub use align::{HeaderDiff, KeyMap, RecordRef, header_diffs};
pub use compare::{
    Basis, COMPARISON_SCHEMA, CompareOptions, Comparison, Depth, FloorMetrics, Hooks, PairHook,
    PairRecord, Progress, TraceSide, compare, compare_paths, compare_with,
};
pub use gaps::{AllowMissing, Gap, gaps};
pub use judge::{
    Amplification, CREATE_GAIN, Criteria, FailOn, Judgement, LatentPoint, RecordJudgement,
    Required, Source, Status, VISUAL_PSNR_DB, VISUAL_SSIM, Verdict, VerdictClass, judge,
    tolerance_helps,
};
pub use metrics::decode_all;
pub use metrics::{
    ImageMetrics, PairAccumulator, PayloadMetrics, SummaryDelta, image_metrics, ulp_bins_p99,
};
pub use noise::{NoiseClass, NoiseDiagnosis, diagnose};
pub use tolerance::{Tol, TolConfig, TolSpec, default_tol, defaults_text};

use std::path::PathBuf;

/// Errors of the analysis. Each names the file or flag at fault and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum AnalysisError {
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
    #[error("cannot read key map {path}")]
    MapIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: line {line}: {what}; each line of a key map is `FROM => TO` (a trailing `*` on both sides maps a prefix, `#` starts a comment)"
    )]
    MapSyntax {
        path: PathBuf,
        line: usize,
        what: String,
    },
    #[error("{flag} '{value}': {what}")]
    BadTolerance {
        flag: &'static str,
        value: String,
        what: String,
    },
    #[error(
        "cannot read saved comparison {path}: {what}; pass a file written by `sdtrace report --save`"
    )]
    SavedComparison { path: PathBuf, what: String },
    #[error("{what}")]
    Worker { what: String },
    /// Judging flags that do not go together (`--min-psnr` with `--fail-on amplify`, …).
    #[error("{what}")]
    Criteria { what: String },
    #[error("the comparison was cancelled")]
    Cancelled,
}

/// Serde for f64 fields that may be non-finite: JSON has no NaN or ∞, so those are written as
/// the strings `"nan"`, `"inf"`, `"-inf"` and read back from either form.
pub(crate) mod jf64 {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Num {
        F(f64),
        S(String),
    }

    fn from_num<E: serde::de::Error>(n: Num) -> Result<f64, E> {
        match n {
            Num::F(v) => Ok(v),
            Num::S(s) => match s.as_str() {
                "nan" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                _ => Err(E::custom(format!("expected a number, found '{s}'"))),
            },
        }
    }

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_nan() {
            s.serialize_str("nan")
        } else if v.is_infinite() {
            s.serialize_str(if *v > 0.0 { "inf" } else { "-inf" })
        } else {
            s.serialize_f64(*v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        from_num(Num::deserialize(d)?)
    }

    pub mod opt {
        use super::*;

        pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            match Option::<Num>::deserialize(d)? {
                Some(n) => from_num(n).map(Some),
                None => Ok(None),
            }
        }
    }
}
