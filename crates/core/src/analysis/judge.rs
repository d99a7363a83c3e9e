//! Judgement: tolerances applied to a [`Comparison`], localisation and the verdict.
//!
//! Per record ([`Status`]): `identical` (bit-identical), `fail` (NaN/Inf positions differ, or
//! relative L2 > rel **and** absolute error > abs), `pass`, `unknown` (stats-only records that
//! differ but whose error cannot be bounded above the tolerance), `not-compared` (shapes
//! differ). For each failing record the smallest passing tolerance is `rel ≥ rel_l2` or
//! `abs ≥ abs_error`.
//!
//! Localisation. A record's error is its relative L2 (exact or estimated; 0 when identical).
//! Its *input error* is the largest error among the records that feed it, by this rule:
//! - `sampler.x` at step s: the previous recorded step's `sampler.x` and that step's last
//!   record (the model output the update used); at the first step, `noise.initial`.
//! - any other record inside a step: the previous record of the same step in execution order
//!   (evals chain on); the first record of a step takes the `sampler.x` rule.
//! - outside the loop: `noise.*` are roots (input error 0); `text.*` take every
//!   `text_encoder.final_layer_norm` record before them (the encoder's chunk outputs; roots
//!   when the trace has none); records after the loop
//!   (VAE, `image`) take the previous record in execution order; other records before the loop
//!   take the previous record with the same first key component (`text_encoder.…`).
//!
//! Records whose error is unknown are skipped over. gain = error / input error (∞ when the
//! input is identical). A record *creates* error when it differs and its input error is 0 or
//! its gain is at least [`CREATE_GAIN`]; otherwise it *carries* error. The source is the first
//! creating record (execution order) that fails tolerance, or, when none fails, the first
//! creating record. Skip connections are not modelled: a UNet up block is fed by its
//! predecessor only.
//!
//! Amplification: over the latent series (`sampler.x` per step, or `sampler.denoised` without
//! it), the onset is the first step with non-zero error followed by at least two steps of
//! strict growth; log10(error) is fitted by least squares over the growing run, giving the
//! growth factor per step (10^slope) and R².

use super::align::{HeaderDiff, is_sampler_field, sampler_parts_at};
use super::compare::{Basis, Comparison, PairRecord};
use super::gaps::{AllowMissing, Gap, gaps};
use super::tolerance::{Tol, TolConfig};
use super::{AnalysisError, jf64};
use crate::exit::ExitStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Gain from which a record counts as creating error rather than carrying it.
pub const CREATE_GAIN: f64 = 10.0;

/// What fails CI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FailOn {
    /// Any record over tolerance (or with NaN/Inf mismatches).
    #[default]
    FirstExceed,
    /// Latent error that grows step over step (or NaN/Inf mismatches).
    Amplify,
    /// The final image over its tolerance (without an image record: as first-exceed).
    Image,
}

impl FailOn {
    pub fn name(self) -> &'static str {
        match self {
            FailOn::FirstExceed => "first-exceed",
            FailOn::Amplify => "amplify",
            FailOn::Image => "image",
        }
    }
}

impl std::str::FromStr for FailOn {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "first-exceed" => Ok(FailOn::FirstExceed),
            "amplify" => Ok(FailOn::Amplify),
            "image" => Ok(FailOn::Image),
            _ => Err(format!(
                "unknown --fail-on '{s}' (expected first-exceed, amplify or image)"
            )),
        }
    }
}

/// Everything besides tolerances that decides a verdict: what fails CI, which missing records
/// are tolerated, and the image-level pass criteria.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Criteria {
    pub fail_on: FailOn,
    /// `--allow-missing`: by default a record on one side only, or a trace that is not a whole
    /// run, fails the comparison.
    #[serde(default)]
    pub allow_missing: AllowMissing,
    /// `--min-psnr`, `--min-ssim` (with `--fail-on image`): the final image passes when it
    /// reaches both instead of when it is within the numeric tolerance.
    #[serde(default)]
    pub min_psnr: Option<f64>,
    #[serde(default)]
    pub min_ssim: Option<f64>,
}

impl From<FailOn> for Criteria {
    fn from(fail_on: FailOn) -> Self {
        Criteria {
            fail_on,
            ..Criteria::default()
        }
    }
}

impl Criteria {
    /// The criteria the judging flags give (`--fail-on`, `--allow-missing`, `--min-psnr`,
    /// `--min-ssim`): image thresholds imply `--fail-on image` and conflict with any other;
    /// a PSNR must be finite and an SSIM in [−1, 1].
    pub fn from_flags(
        fail_on: Option<FailOn>,
        allow_missing: Option<AllowMissing>,
        min_psnr: Option<f64>,
        min_ssim: Option<f64>,
    ) -> Result<Self, AnalysisError> {
        let bad = |what: String| Err(AnalysisError::Criteria { what });
        let thresholds = min_psnr.is_some() || min_ssim.is_some();
        let fail_on = match fail_on {
            Some(f) if thresholds && f != FailOn::Image => {
                return bad(format!(
                    "--min-psnr/--min-ssim judge the final image, but --fail-on is {}: drop --fail-on or give --fail-on image",
                    f.name()
                ));
            }
            Some(f) => f,
            None if thresholds => FailOn::Image,
            None => FailOn::FirstExceed,
        };
        if let Some(p) = min_psnr.filter(|p| !p.is_finite()) {
            return bad(format!(
                "--min-psnr {p}: give a finite number of dB, e.g. --min-psnr 40"
            ));
        }
        if let Some(x) = min_ssim.filter(|x| !(-1.0..=1.0).contains(x)) {
            return bad(format!(
                "--min-ssim {x}: SSIM lies in [-1, 1]; e.g. --min-ssim 0.98"
            ));
        }
        Ok(Criteria {
            fail_on,
            allow_missing: allow_missing.unwrap_or_default(),
            min_psnr,
            min_ssim,
        })
    }

    /// Whether PSNR/SSIM thresholds replace the image's numeric tolerance.
    fn image_thresholds(&self) -> bool {
        self.fail_on == FailOn::Image && (self.min_psnr.is_some() || self.min_ssim.is_some())
    }
}

/// From this PSNR (with SSIM ≥ [`VISUAL_SSIM`]) the verdict calls two final images visually
/// identical, unless `--min-psnr`/`--min-ssim` set other thresholds.
pub const VISUAL_PSNR_DB: f64 = 40.0;
pub const VISUAL_SSIM: f64 = 0.99;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Identical,
    Pass,
    Fail,
    Unknown,
    NotCompared,
}

impl Status {
    pub fn name(self) -> &'static str {
        match self {
            Status::Identical => "identical",
            Status::Pass => "pass",
            Status::Fail => "FAIL",
            Status::Unknown => "unknown",
            Status::NotCompared => "not compared",
        }
    }
}

/// The smallest tolerance that would have passed: either part alone suffices.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Required {
    #[serde(with = "jf64")]
    pub rel: f64,
    #[serde(with = "jf64")]
    pub abs: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordJudgement {
    pub status: Status,
    pub tol: Tol,
    /// The error used for localisation (relative L2), when known.
    #[serde(with = "jf64::opt")]
    pub error: Option<f64>,
    #[serde(with = "jf64::opt")]
    pub error_in: Option<f64>,
    /// error / error_in; ∞ when the input is identical.
    #[serde(with = "jf64::opt")]
    pub gain: Option<f64>,
    pub creates: bool,
    pub required: Option<Required>,
    pub reason: Option<String>,
}

/// The record named as the source of the divergence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub index: usize,
    pub key: String,
    pub step: Option<u32>,
    pub eval: u32,
    #[serde(with = "jf64")]
    pub error_in: f64,
    #[serde(with = "jf64")]
    pub error: f64,
    /// The source also fails tolerance.
    pub over_tolerance: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatentPoint {
    pub step: u32,
    #[serde(with = "jf64")]
    pub error: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Amplification {
    pub onset_step: u32,
    /// Last step of the growing run.
    pub end_step: u32,
    /// Fitted growth factor of the latent error per step.
    #[serde(with = "jf64")]
    pub rate_per_step: f64,
    /// R² of the log-linear fit.
    #[serde(with = "jf64")]
    pub r2: f64,
    pub points: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictClass {
    Identical,
    /// A record on one side only, or a trace that is not a whole run.
    Incomplete,
    NoiseRng,
    Conditioning,
    /// The samplers step differently by design (another implementation, schedule or start).
    Sampler,
    NumericDrift,
    NanInf,
    Structural,
}

impl VerdictClass {
    pub fn name(self) -> &'static str {
        match self {
            VerdictClass::Identical => "identical",
            VerdictClass::Incomplete => "incomplete",
            VerdictClass::NoiseRng => "noise/RNG",
            VerdictClass::Conditioning => "conditioning",
            VerdictClass::Sampler => "sampler",
            VerdictClass::NumericDrift => "numeric drift",
            VerdictClass::NanInf => "NaN/Inf",
            VerdictClass::Structural => "structural mismatch",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub class: VerdictClass,
    /// The class of what paired up (equal to `class` unless that is `incomplete`).
    pub compared: VerdictClass,
    pub passed: bool,
    /// The code of [`status`](Self::status) (kept as a number for the JSON report): 0 within
    /// tolerance, 1 divergence, 3 not comparable, 4 incomplete.
    pub exit_code: u8,
    /// One paragraph.
    pub summary: String,
}

impl Verdict {
    /// The exit status of `report` for this verdict (a saved verdict with an unknown code
    /// counts as incomplete).
    pub fn status(&self) -> ExitStatus {
        ExitStatus::from_code(self.exit_code).unwrap_or(ExitStatus::Incomplete)
    }

    /// What the exit code says: `within tolerance`, `diverges`, `not comparable` or
    /// `incomplete`.
    pub fn outcome(&self) -> &'static str {
        match self.status() {
            ExitStatus::Success => "within tolerance",
            ExitStatus::Diverged => "diverges",
            ExitStatus::NotComparable => "not comparable",
            _ => "incomplete",
        }
    }

    /// [`outcome`](Self::outcome) as the text report and the TUI shout it: failures upper-case.
    pub fn outcome_loud(&self) -> String {
        match self.status() {
            ExitStatus::Success => self.outcome().to_string(),
            _ => self.outcome().to_uppercase(),
        }
    }
}

/// Whether "would pass with rel ≥ …" means anything for a verdict of this class: a looser
/// tolerance is no answer to other noise or another model.
pub fn tolerance_helps(class: VerdictClass) -> bool {
    !matches!(
        class,
        VerdictClass::NoiseRng | VerdictClass::Sampler | VerdictClass::Structural
    )
}

/// Record counts by status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    pub identical: usize,
    pub pass: usize,
    pub fail: usize,
    pub unknown: usize,
    pub not_compared: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgement {
    pub tolerance: String,
    pub criteria: Criteria,
    /// What each trace lacks ([`gaps`](super::gaps)); empty when both are whole and pair up.
    pub gaps: Vec<Gap>,
    /// Parallel to `Comparison::records`.
    pub records: Vec<RecordJudgement>,
    pub counts: Counts,
    pub first_non_identical: Option<usize>,
    pub first_over_tolerance: Option<usize>,
    pub first_nonfinite: Option<usize>,
    pub source: Option<Source>,
    pub latent_key: Option<String>,
    pub latent: Vec<LatentPoint>,
    pub amplification: Option<Amplification>,
    /// Index of the `image` record.
    pub image: Option<usize>,
    pub verdict: Verdict,
}

fn status_of(r: &PairRecord, tol: Tol) -> (Status, Option<Required>, Option<String>) {
    if r.basis == Basis::None {
        return (Status::NotCompared, None, r.note.clone());
    }
    if r.bit_identical == Some(true) {
        return (Status::Identical, None, None);
    }
    let required = match (r.rel_l2, r.abs_error) {
        (Some(rel), Some(abs)) => Some(Required { rel, abs }),
        _ => None,
    };
    if r.nonfinite_mismatch > 0 {
        let how = if r.basis == Basis::Payload {
            "positions"
        } else {
            "counts"
        };
        // No tolerance passes a NaN/Inf mismatch: no "smallest passing tolerance" either.
        return (
            Status::Fail,
            None,
            Some(format!(
                "NaN/Inf {how} differ ({} elements)",
                r.nonfinite_mismatch
            )),
        );
    }
    match required {
        Some(q) => {
            // `!(x <= t)` so that a NaN statistic fails.
            #[allow(clippy::neg_cmp_op_on_partial_ord)]
            let fails = !(q.rel <= tol.rel) && !(q.abs <= tol.abs);
            if fails {
                (Status::Fail, Some(q), None)
            } else {
                (Status::Pass, None, None)
            }
        }
        None => {
            let lb = r.summary.rel_l2_lower_bound;
            let n = r
                .shape_b
                .iter()
                .fold(1u64, |a, &d| a.saturating_mul(d))
                .max(1) as f64;
            let abs_lb = r.summary.l2.abs() / n.sqrt();
            if lb > tol.rel && abs_lb > tol.abs {
                (
                    Status::Fail,
                    Some(Required {
                        rel: lb,
                        abs: abs_lb,
                    }),
                    Some(
                        "stats only: the norms alone differ beyond tolerance (lower bounds)".into(),
                    ),
                )
            } else {
                (
                    Status::Unknown,
                    None,
                    Some("stats only: differs, but its error cannot be bounded; record it at sketch or full fidelity".into()),
                )
            }
        }
    }
}

/// Indices of the records feeding record `i` (see the module docs).
struct Graph {
    /// Record indices per step, in execution order.
    by_step: BTreeMap<u32, Vec<usize>>,
    /// Position of each record within its step list.
    pos_in_step: Vec<usize>,
    last_stepped: Option<usize>,
    noise: Option<usize>,
}

impl Graph {
    fn new(recs: &[PairRecord]) -> Self {
        let mut by_step: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
        let mut pos_in_step = vec![0; recs.len()];
        for (i, r) in recs.iter().enumerate() {
            if let Some(s) = r.step {
                let v = by_step.entry(s).or_default();
                pos_in_step[i] = v.len();
                v.push(i);
            }
        }
        Graph {
            by_step,
            pos_in_step,
            last_stepped: recs.iter().rposition(|r| r.step.is_some()),
            noise: recs.iter().position(|r| r.key == "noise.initial"),
        }
    }

    /// Inputs of the first record of step `s`: previous step's sampler.x and last record.
    fn step_inputs(&self, recs: &[PairRecord], s: u32, e: &[Option<f64>]) -> Vec<usize> {
        match self.by_step.range(..s).next_back() {
            Some((_, list)) => {
                let mut v: Vec<usize> = list
                    .iter()
                    .copied()
                    .filter(|&j| recs[j].key == "sampler.x")
                    .take(1)
                    .collect();
                if let Some(&last) = list.iter().rev().find(|&&j| e[j].is_some()) {
                    v.push(last);
                }
                v
            }
            None => self.noise.into_iter().collect(),
        }
    }

    fn inputs(&self, recs: &[PairRecord], i: usize, e: &[Option<f64>]) -> Vec<usize> {
        let r = &recs[i];
        match r.step {
            Some(s) => {
                if r.key != "sampler.x" {
                    let list = &self.by_step[&s];
                    if let Some(&j) = list[..self.pos_in_step[i]]
                        .iter()
                        .rev()
                        .find(|&&j| e[j].is_some())
                    {
                        return vec![j];
                    }
                }
                self.step_inputs(recs, s, e)
            }
            None => {
                if r.key.starts_with("noise.") {
                    return Vec::new();
                }
                if r.key.starts_with("text.") {
                    // The encoder's outputs before it (every chunk of both prompts).
                    return (0..i)
                        .filter(|&j| {
                            recs[j].key == "text_encoder.final_layer_norm" && e[j].is_some()
                        })
                        .collect();
                }
                if self.last_stepped.is_some_and(|l| i > l) {
                    return (0..i).rev().find(|&j| e[j].is_some()).into_iter().collect();
                }
                let group = r.key.split('.').next().unwrap_or("");
                (0..i)
                    .rev()
                    .find(|&j| {
                        recs[j].step.is_none()
                            && recs[j].key.split('.').next() == Some(group)
                            && e[j].is_some()
                    })
                    .into_iter()
                    .collect()
            }
        }
    }
}

/// Least-squares fit of y = a + b x; returns (b, R²).
fn fit_line(xs: &[f64], ys: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mx = xs.iter().sum::<f64>() / n;
    let my = ys.iter().sum::<f64>() / n;
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    let sxy: f64 = xs.iter().zip(ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let syy: f64 = ys.iter().map(|y| (y - my).powi(2)).sum();
    if sxx == 0.0 {
        return (0.0, 1.0);
    }
    let b = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    (b, r2)
}

/// Onset of step-over-step growth in the latent error series.
pub fn amplification(points: &[LatentPoint]) -> Option<Amplification> {
    let grows = |k: usize| points[k + 1].error > points[k].error;
    let onset = (0..points.len().saturating_sub(2))
        .find(|&i| points[i].error > 0.0 && grows(i) && grows(i + 1))?;
    let mut end = onset + 2;
    while end + 1 < points.len() && grows(end) {
        end += 1;
    }
    let run = &points[onset..=end];
    let xs: Vec<f64> = run.iter().map(|p| p.step as f64).collect();
    let ys: Vec<f64> = run.iter().map(|p| p.error.log10()).collect();
    let (slope, r2) = fit_line(&xs, &ys);
    Some(Amplification {
        onset_step: run[0].step,
        end_step: run[run.len() - 1].step,
        rate_per_step: 10f64.powf(slope),
        r2,
        points: run.len(),
    })
}

/// Header fields whose difference changes the numerics, not the inputs (with the run-end
/// facts a host observed: the slices of its split attention).
const PRECISION_FIELDS: [&str; 6] = [
    "settings.dtype",
    "settings.attention",
    "device.device",
    "settings.sampler_impl",
    "run_end.attention_slices",
    "run_end.attention_slices_hires",
];

/// Whether a difference is in one of `fields`: the field itself or one of its elements
/// (`run_end.attention_slices[KEY]`).
fn among(d: &HeaderDiff, fields: &[&str]) -> bool {
    fields.iter().any(|f| {
        d.field
            .strip_prefix(f)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('['))
    })
}

/// `field A vs B` for each header difference among `fields`.
fn header_changes(c: &Comparison, fields: &[&str]) -> Vec<String> {
    c.header_diffs
        .iter()
        .filter(|d| among(d, fields))
        .map(HeaderDiff::describe)
        .collect()
}

/// The text conditioning differs because the runs compute in different precisions or on
/// different devices, with the same prompts: numeric drift, not a conditioning difference.
fn precision_explains_text(c: &Comparison) -> bool {
    let differs = |fields: &[&str]| c.header_diffs.iter().any(|d| among(d, fields));
    differs(&PRECISION_FIELDS) && !differs(&["settings.prompt", "settings.negative_prompt"])
}

/// Apply tolerances and localise the divergence.
pub fn judge(c: &Comparison, tol: &TolConfig, criteria: &Criteria) -> Judgement {
    let recs = &c.records;
    let mut out = record_judgements(recs, tol);
    let errors: Vec<Option<f64>> = out.iter().map(|j| j.error).collect();
    propagate(recs, &errors, &mut out);
    let first_nonfinite = first_nonfinite(recs);
    let parts = sampler_parts_at(&c.a.header, &c.b.header).and_then(|k| {
        recs.iter().position(|r| {
            r.key == "sampler.x" && r.step == Some(k) && r.bit_identical == Some(false)
        })
    });
    let source = source(recs, &out, parts);
    let (latent_key, latent) = latent_series(recs, &errors);
    let amp = amplification(&latent);
    let image = recs.iter().rposition(|r| r.key == "image");
    let gaps = gaps(c, &criteria.allow_missing);
    let found = Findings {
        out: &out,
        first_nonfinite,
        source: source.as_ref(),
        amp: amp.as_ref(),
        image,
        gaps: &gaps,
        sampler_parts: parts,
    };
    let verdict = verdict(c, &found, criteria);
    Judgement {
        tolerance: tol.describe(),
        criteria: criteria.clone(),
        gaps,
        counts: counts(&out),
        first_non_identical: recs.iter().position(|r| r.bit_identical == Some(false)),
        first_over_tolerance: out.iter().position(|j| j.status == Status::Fail),
        records: out,
        first_nonfinite,
        source,
        latent_key,
        latent,
        amplification: amp,
        image,
        verdict,
    }
}

/// Each record against its tolerance, before localisation (no input errors yet).
fn record_judgements(recs: &[PairRecord], tol: &TolConfig) -> Vec<RecordJudgement> {
    recs.iter()
        .map(|r| {
            let (da, db) = r.dtypes();
            let t = tol.resolve(&r.key, da, db, r.floor.map(|f| (f.rel_l2, f.abs)));
            let (status, required, reason) = status_of(r, t);
            let error = match status {
                Status::Identical => Some(0.0),
                Status::NotCompared => None,
                _ => r.rel_l2,
            };
            RecordJudgement {
                status,
                tol: t,
                error,
                error_in: None,
                gain: None,
                creates: false,
                required,
                reason,
            }
        })
        .collect()
}

/// Localisation: each record's input error (by the module's feeding rule), its gain, and
/// whether it creates error.
fn propagate(recs: &[PairRecord], errors: &[Option<f64>], out: &mut [RecordJudgement]) {
    let graph = Graph::new(recs);
    for i in 0..recs.len() {
        let Some(e_out) = errors[i] else { continue };
        let inputs = graph.inputs(recs, i, errors);
        let e_in = inputs
            .iter()
            .filter_map(|&j| errors[j])
            .fold(0.0f64, f64::max);
        let j = &mut out[i];
        j.error_in = Some(e_in);
        if e_out > 0.0 {
            j.gain = Some(if e_in > 0.0 {
                e_out / e_in
            } else {
                f64::INFINITY
            });
            j.creates = e_in == 0.0 || e_out / e_in >= CREATE_GAIN;
        }
    }
}

fn counts(out: &[RecordJudgement]) -> Counts {
    let mut counts = Counts::default();
    for j in out {
        match j.status {
            Status::Identical => counts.identical += 1,
            Status::Pass => counts.pass += 1,
            Status::Fail => counts.fail += 1,
            Status::Unknown => counts.unknown += 1,
            Status::NotCompared => counts.not_compared += 1,
        }
    }
    counts
}

/// The first record, in execution order, with non-finite values where the other run has none.
/// Execution order is that of the side holding them (the records are listed in A's order; when
/// B holds more non-finite values, B's order decides, should the two runs order differently).
fn first_nonfinite(recs: &[PairRecord]) -> Option<usize> {
    let bad = || {
        recs.iter()
            .enumerate()
            .filter(|(_, r)| r.nonfinite_mismatch > 0)
    };
    let (in_a, in_b) = bad().fold((0u64, 0u64), |(a, b), (_, r)| {
        (a + r.summary.nonfinite_a, b + r.summary.nonfinite_b)
    });
    if in_b > in_a {
        bad().min_by_key(|(_, r)| r.order_b).map(|(i, _)| i)
    } else {
        bad().map(|(i, _)| i).next()
    }
}

/// The source of the divergence: where samplers part by design (`parts`), else the first
/// creating record that fails tolerance, else the first creating record.
fn source(recs: &[PairRecord], out: &[RecordJudgement], parts: Option<usize>) -> Option<Source> {
    let i = parts
        .or_else(|| {
            out.iter()
                .position(|j| j.creates && j.status == Status::Fail)
        })
        .or_else(|| out.iter().position(|j| j.creates))?;
    Some(Source {
        index: i,
        key: recs[i].key.clone(),
        step: recs[i].step,
        eval: recs[i].eval,
        error_in: out[i].error_in.unwrap_or(0.0),
        error: out[i].error.unwrap_or(0.0),
        over_tolerance: out[i].status == Status::Fail,
    })
}

/// The latent error per step: `sampler.x`, or `sampler.denoised` without it (one point per
/// step, the first eval's).
fn latent_series(
    recs: &[PairRecord],
    errors: &[Option<f64>],
) -> (Option<String>, Vec<LatentPoint>) {
    let latent_key = ["sampler.x", "sampler.denoised"]
        .into_iter()
        .find(|k| recs.iter().any(|r| r.key == *k && r.step.is_some()))
        .map(str::to_string);
    let mut latent: Vec<LatentPoint> = Vec::new();
    if let Some(k) = &latent_key {
        for (i, r) in recs.iter().enumerate() {
            if &r.key == k
                && let (Some(s), Some(e)) = (r.step, errors[i])
                && latent.last().is_none_or(|p| p.step != s)
            {
                latent.push(LatentPoint { step: s, error: e });
            }
        }
        latent.sort_by_key(|p| p.step);
    }
    (latent_key, latent)
}

/// The first `sampler.noise` pair drawn by a different generator (not mere rounding), when the
/// initial noise is identical.
fn ancestral_noise_differs(recs: &[PairRecord]) -> Option<usize> {
    recs.iter().position(|r| {
        r.key == "sampler.noise"
            && r.bit_identical == Some(false)
            && r.noise
                .as_ref()
                .is_none_or(|d| d.class.is_generator_difference())
    })
}

/// What the judgement found, for the verdict.
struct Findings<'a> {
    out: &'a [RecordJudgement],
    first_nonfinite: Option<usize>,
    source: Option<&'a Source>,
    amp: Option<&'a Amplification>,
    image: Option<usize>,
    gaps: &'a [Gap],
    /// The `sampler.x` record where samplers that step differently by design part (the
    /// source then).
    sampler_parts: Option<usize>,
}

/// The final image against the PSNR/SSIM thresholds: `None` when no threshold is set, else
/// whether it passes and why not.
fn image_threshold(c: &Comparison, f: &Findings, k: &Criteria) -> Option<Result<(), String>> {
    if !k.image_thresholds() {
        return None;
    }
    let Some(i) = f.image else {
        return Some(Err(
            "neither trace has an `image` record to hold to --min-psnr/--min-ssim".into(),
        ));
    };
    let r = &c.records[i];
    if r.bit_identical == Some(true) {
        return Some(Ok(()));
    }
    let Some(m) = &r.image else {
        return Some(Err(
            "the final images have no PSNR/SSIM (not kept in full on both sides, or over 48 MiB), so --min-psnr/--min-ssim cannot be checked".into(),
        ));
    };
    let mut short = Vec::new();
    // NaN reaches nothing.
    let reaches = |v: f64, min: f64| v >= min;
    if let Some(p) = k.min_psnr.filter(|&p| !reaches(m.psnr_db, p)) {
        short.push(format!("PSNR {:.1} dB < {p} dB", m.psnr_db));
    }
    if let Some(x) = k.min_ssim.filter(|&x| !reaches(m.ssim, x)) {
        short.push(format!("SSIM {:.4} < {x}", m.ssim));
    }
    Some(if short.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the final image misses its threshold: {}",
            short.join(", ")
        ))
    })
}

/// Whether the criteria pass on what paired up, and why not when an image threshold fails.
fn passes(c: &Comparison, f: &Findings, k: &Criteria) -> (bool, Option<String>) {
    let any_fail = f.out.iter().any(|j| j.status == Status::Fail);
    match image_threshold(c, f, k) {
        Some(Ok(())) => (true, None),
        Some(Err(why)) => (false, Some(why)),
        None => (
            match k.fail_on {
                FailOn::FirstExceed => !any_fail,
                FailOn::Amplify => f.amp.is_none() && f.first_nonfinite.is_none(),
                FailOn::Image => match f.image {
                    Some(i) => f.out[i].status != Status::Fail,
                    None => !any_fail,
                },
            },
            None,
        ),
    }
}

/// The sentences after the verdict's lead: source, first over tolerance, growth, final image.
fn findings_tail(c: &Comparison, f: &Findings, k: &Criteria, class: VerdictClass) -> Vec<String> {
    let recs = &c.records;
    let mut tail = Vec::new();
    if let Some(s) = f.source {
        let lbl = recs[s.index].label();
        let gain = if s.error_in == 0.0 {
            "from an identical input".to_string()
        } else {
            format!(
                "from input error {:.2e} (gain {:.1})",
                s.error_in,
                s.error / s.error_in
            )
        };
        tail.push(format!(
            "Error is created at {lbl}: relative L2 {:.2e} {gain}{}.",
            s.error,
            if s.over_tolerance {
                ", over tolerance"
            } else {
                ", within tolerance"
            }
        ));
    }
    if let Some(i) = f.out.iter().position(|j| j.status == Status::Fail) {
        let q = f.out[i].required.filter(|_| tolerance_helps(class));
        tail.push(format!(
            "First over tolerance: {}{}.",
            recs[i].label(),
            q.map_or(String::new(), |q| format!(
                " (would pass with rel ≥ {:.2e} or abs ≥ {:.2e})",
                q.rel, q.abs
            ))
        ));
    }
    if let Some(a) = f.amp {
        tail.push(format!(
            "The latent error grows from step {} to step {}, ×{:.2} per step (R² {:.2}).",
            a.onset_step, a.end_step, a.rate_per_step, a.r2
        ));
    }
    if let Some(i) = f.image {
        tail.extend(image_sentence(&recs[i], f.out[i].error, k));
    }
    tail
}

/// `The final images are bit-identical.`, `Final images visually identical (PSNR 58.4 dB,
/// SSIM 1.0000).`, `Final image: PSNR 27.2 dB, SSIM 0.9814.` or its relative L2.
fn image_sentence(r: &PairRecord, error: Option<f64>, k: &Criteria) -> Option<String> {
    match (&r.image, r.bit_identical) {
        (_, Some(true)) => Some("The final images are bit-identical.".into()),
        (Some(m), _) => {
            let psnr = k.min_psnr.unwrap_or(VISUAL_PSNR_DB);
            let ssim = k.min_ssim.unwrap_or(VISUAL_SSIM);
            Some(if m.psnr_db >= psnr && m.ssim >= ssim {
                format!(
                    "Final images visually identical (PSNR {:.1} dB, SSIM {:.4}).",
                    m.psnr_db, m.ssim
                )
            } else {
                format!("Final image: PSNR {:.1} dB, SSIM {:.4}.", m.psnr_db, m.ssim)
            })
        }
        (None, _) => error.map(|e| format!("Final image: relative L2 {e:.2e}.")),
    }
}

/// The fix for a noise difference, in the terms of each host.
fn noise_fix(c: &Comparison, ancestral: bool) -> String {
    let seed = c.header_diffs.iter().find(|d| d.field == "settings.seed");
    if let Some(d) = seed {
        return format!(
            "Fix: use the same seed on both (A {}, B {}).",
            d.a.as_deref().unwrap_or("-"),
            d.b.as_deref().unwrap_or("-")
        );
    }
    if ancestral {
        return "Fix: draw the per-step noise the same way on both: the same Random number \
                generator source and Eta noise seed delta (AUTOMATIC1111/Forge: Settings → \
                Sampler parameters); sdtrace: the same --rng and --ensd."
            .into();
    }
    "Fix: draw the noise where it does not depend on the card. AUTOMATIC1111/Forge: Settings → \
     Sampler parameters → Random number generator source: CPU (or NV, which draws the same \
     numbers on every NVIDIA card); ComfyUI draws its noise on the CPU already, so set the \
     webui side to CPU to match it; sdtrace: --rng torch-cpu (or --rng file:noise.npy to \
     give both runs the same noise)."
        .into()
}

/// The lead sentence and class of what paired up.
fn lead(c: &Comparison, f: &Findings, passed: bool) -> (VerdictClass, String) {
    let recs = &c.records;
    let differs = |prefix: &str| {
        recs.iter()
            .position(|r| r.key.starts_with(prefix) && r.bit_identical == Some(false))
    };
    let structural: Vec<String> = c
        .header_diffs
        .iter()
        .filter(|d| d.structural)
        .map(HeaderDiff::describe)
        .chain(
            recs.iter()
                .filter(|r| r.basis == Basis::None)
                .take(3)
                .map(|r| format!("{}: shape {:?} vs {:?}", r.label(), r.shape_a, r.shape_b)),
        )
        .collect();
    if !structural.is_empty() || recs.is_empty() {
        let what = if recs.is_empty() {
            "no record pairs by (step, eval, key)".to_string()
        } else {
            structural.join("; ")
        };
        return (
            VerdictClass::Structural,
            format!(
                "Structural mismatch: the runs are not comparable ({what}). Only what pairs up was compared."
            ),
        );
    }
    if let Some(i) = f.first_nonfinite {
        return (VerdictClass::NanInf, nonfinite_lead(&recs[i]));
    }
    if let Some(i) = differs("noise.").or_else(|| ancestral_noise_differs(recs)) {
        return (VerdictClass::NoiseRng, noise_lead(c, &recs[i]));
    }
    if let Some(i) = differs("text.").filter(|_| !precision_explains_text(c)) {
        return (
            VerdictClass::Conditioning,
            format!(
                "Conditioning: {} differs while the noise is identical (prompt, tokenizer, clip skip or text encoder).",
                recs[i].key
            ),
        );
    }
    if let Some(i) = f.sampler_parts {
        return (
            VerdictClass::Sampler,
            format!(
                "Sampler: the runs step differently by design ({}), so the latents part at {}; the UNet is not the cause. Compare runs of one sampler implementation (sdtrace record --sampler-impl diffusers follows a diffusers pipeline's scheduler).",
                c.header_diffs
                    .iter()
                    .filter(|d| is_sampler_field(&d.field))
                    .map(HeaderDiff::describe)
                    .collect::<Vec<_>>()
                    .join(", "),
                recs[i].label()
            ),
        );
    }
    if f.out.iter().any(|j| !matches!(j.status, Status::Identical)) {
        let precision = header_changes(c, &PRECISION_FIELDS);
        let why = if precision.is_empty() {
            String::new()
        } else {
            format!(" ({})", precision.join(", "))
        };
        let lead = match f.source {
            Some(s) => format!(
                "Numeric drift{why} from {}{}",
                recs[s.index].label(),
                if passed { ", within tolerance." } else { "." }
            ),
            None => format!("Numeric drift{why}."),
        };
        return (VerdictClass::NumericDrift, lead);
    }
    (
        VerdictClass::Identical,
        format!(
            "The traces are bit-identical ({} records compared).",
            recs.len()
        ),
    )
}

/// A record of the VAE decoder: `vae.post_quant_conv`, `vae.decoder…`, or the decoded `image`.
fn is_vae_decoder(key: &str) -> bool {
    key == "image" || key == "vae.post_quant_conv" || key.starts_with("vae.decoder")
}

/// The NaN/Inf lead for the first record `r` with non-finite values on one side only; in the
/// VAE decoder at f16 it names the known SDXL f16 VAE overflow and its fix.
fn nonfinite_lead(r: &PairRecord) -> String {
    let lead = format!(
        "NaN/Inf: {} has non-finite values where the other run has not ({} elements).",
        r.label(),
        r.nonfinite_mismatch
    );
    if !is_vae_decoder(&r.key) {
        return lead;
    }
    let bad_dtype = if r.summary.nonfinite_b > r.summary.nonfinite_a {
        &r.dtype_b
    } else {
        &r.dtype_a
    };
    let module = if r.key == "image" {
        "the VAE decoder (no decoder module was recorded; capture vae.*=stats to name it)".into()
    } else {
        format!(
            "the VAE decoder module {}",
            crate::escape::printable(&r.key)
        )
    };
    if bad_dtype != "f16" {
        return format!("{lead} The first non-finite values come from {module}.");
    }
    format!(
        "{lead} The first non-finite values come from {module}: the VAE overflows in f16, the known \
         SDXL f16 VAE overflow (its activations exceed f16's largest value, 65504). Fix: decode \
         with an f32 VAE (AUTOMATIC1111/Forge: --no-half-vae; diffusers: keep the VAE in float32, \
         as its config's force_upcast asks; sdtrace record: --dtype f32), or use the fp16-fixed \
         SDXL VAE (madebyollin/sdxl-vae-fp16-fix)."
    )
}

fn noise_lead(c: &Comparison, r: &PairRecord) -> String {
    let hint = match (
        &r.noise,
        r.payload.as_ref().and_then(|p| p.first_diff_index),
    ) {
        (Some(d), _) => format!(" {}", d.summary),
        (None, Some(k)) if k > 0 => format!(
            " The first {k} elements are bit-identical and the rest differ: the generator's layout depends on the device (for a GPU Philox grid, SMs × threads/SM = {k})."
        ),
        (None, Some(_)) => {
            " They differ from the first element: a different generator, seed or device.".into()
        }
        (None, None) => String::new(),
    };
    let rng = header_changes(
        c,
        &[
            "settings.rng",
            "settings.seed",
            "device.device",
            "device.gpu.sm_count",
        ],
    );
    let what = if r.key.starts_with("noise.") {
        format!("{} differs, so the runs start from different noise.", r.key)
    } else {
        format!(
            "the ancestral noise {} differs while the initial noise is identical, so the runs part at that step (generator, ENSD or seed of the per-step draws).",
            r.label()
        )
    };
    format!(
        "Noise/RNG: {what}{hint}{}",
        if rng.is_empty() {
            String::new()
        } else {
            format!(" Headers: {}.", rng.join(", "))
        }
    )
}

fn verdict(c: &Comparison, f: &Findings, k: &Criteria) -> Verdict {
    let (passed, image_why) = passes(c, f, k);
    let (compared, lead) = lead(c, f, passed);
    let failing_gaps: Vec<&Gap> = f.gaps.iter().filter(|g| g.fails).collect();
    let class = if compared != VerdictClass::Structural && !failing_gaps.is_empty() {
        VerdictClass::Incomplete
    } else {
        compared
    };
    let mut summary = if class == VerdictClass::Incomplete {
        let what: Vec<String> = failing_gaps.iter().map(|g| g.describe()).collect();
        let mut lead = lead.chars();
        format!(
            "Incomplete: {}. What was not compared cannot pass (--allow-missing KEYS|all \
             relaxes this). Of what pairs up: {}{}",
            what.join(". "),
            lead.next()
                .map(|c| c.to_ascii_lowercase())
                .unwrap_or_default(),
            lead.as_str()
        )
    } else {
        lead
    };
    let mut tail = findings_tail(c, f, k, compared);
    tail.extend(image_why.map(|w| format!("Fails: {w}.")));
    if compared == VerdictClass::NoiseRng {
        let ancestral = !c
            .records
            .iter()
            .any(|r| r.key.starts_with("noise.") && r.bit_identical == Some(false));
        tail.push(noise_fix(c, ancestral));
    }
    let allowed: Vec<String> = f
        .gaps
        .iter()
        .filter(|g| !g.fails)
        .map(|g| g.describe())
        .collect();
    if !allowed.is_empty() {
        tail.push(format!(
            "Not compared, as --allow-missing {} allows: {}.",
            k.allow_missing.describe(),
            allowed.join(". ")
        ));
    }
    for t in tail {
        summary.push(' ');
        summary.push_str(&t);
    }
    let status = match class {
        VerdictClass::Structural => ExitStatus::NotComparable,
        VerdictClass::Incomplete => ExitStatus::Incomplete,
        _ if passed => ExitStatus::Success,
        _ => ExitStatus::Diverged,
    };
    Verdict {
        class,
        compared,
        passed: status == ExitStatus::Success,
        exit_code: status.code(),
        summary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(e: &[f64]) -> Vec<LatentPoint> {
        e.iter()
            .enumerate()
            .map(|(i, &e)| LatentPoint {
                step: i as u32,
                error: e,
            })
            .collect()
    }

    #[test]
    fn amplification_onset_and_fit() {
        assert!(amplification(&pts(&[0.0, 0.0, 0.0, 0.0])).is_none());
        // One growth step is not enough.
        assert!(amplification(&pts(&[0.0, 1e-6, 2e-6, 1e-6])).is_none());
        let a = amplification(&pts(&[0.0, 0.0, 1e-6, 1e-5, 1e-4, 1e-3, 5e-4])).unwrap();
        assert_eq!((a.onset_step, a.end_step, a.points), (2, 5, 4));
        assert!((a.rate_per_step - 10.0).abs() < 1e-9);
        assert!((a.r2 - 1.0).abs() < 1e-12);
        // Hand fit: y = log10 e = [0, 1, 3] at x = [0, 1, 2]: slope 1.5, r² = 2.25·2/4.6667.
        let a = amplification(&pts(&[1.0, 10.0, 1000.0])).unwrap();
        assert!((a.rate_per_step - 10f64.powf(1.5)).abs() < 1e-9);
        assert!((a.r2 - (4.5 / (14.0 / 3.0))).abs() < 1e-12);
    }

    #[test]
    fn a_nonfinite_mismatch_fails_with_no_passing_tolerance() {
        let mut r = crate::report::fixture::rec(Some(0), "sampler.x", 3, 0.0);
        r.bit_identical = Some(false);
        r.nonfinite_mismatch = 2;
        let tol = Tol { rel: 1.0, abs: 1.0 };
        let (status, required, reason) = status_of(&r, tol);
        assert_eq!(status, Status::Fail);
        assert_eq!(required, None, "no tolerance passes NaN/Inf");
        assert!(reason.unwrap().contains("NaN/Inf"));
    }

    #[test]
    fn fail_on_parses() {
        assert_eq!("amplify".parse::<FailOn>(), Ok(FailOn::Amplify));
        assert!("never".parse::<FailOn>().is_err());
    }
}
