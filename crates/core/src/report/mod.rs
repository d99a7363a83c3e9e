//! Report renderers: a [`Comparison`] and its [`Judgement`] to text, JSON, Markdown, JUnit XML
//! or self-contained HTML.
//!
//! Every renderer is a pure function from data to a `String`: no I/O, no clock, no environment,
//! so the same inputs always give the same bytes (tests compare them directly). Shared tables
//! (per-key rows, failing records) are computed here once. The JSON schema is versioned
//! ([`REPORT_SCHEMA`]) and documented in `docs/REPORT.md`. Data a [`Comparison`] does not hold
//! (for the HTML report: the final images, and which noise elements differ) is read by the
//! caller and passed in as plain data ([`ReportExtras`]: [`ReportImages`], [`ReportNoise`]).

pub mod html;
mod junit;
mod markdown;
pub mod matrix;
mod text;

pub use html::render_html;
pub use junit::render_junit;
pub use markdown::render_markdown;
pub use text::{render_text, wrap};

use crate::analysis::decode_all;
use crate::analysis::noise::{element_agrees, is_noise_key};
use crate::analysis::{Comparison, Judgement, Required, Status, VerdictClass};
use crate::dtype::DType;
use crate::image::ImageTensor;
use serde_json::{Value, json};

/// Schema tag of the JSON report.
pub const REPORT_SCHEMA: &str = "sdtrace.report/1";

/// Output formats of `sdtrace report`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Markdown,
    Junit,
    Html,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            "junit" => Ok(Format::Junit),
            "html" => Ok(Format::Html),
            _ => Err(format!(
                "unknown format '{s}' (expected text, json, markdown, junit or html)"
            )),
        }
    }
}

/// Render in `format`; `extras` (final images, noise picture) are shown by the HTML report only.
pub fn render(format: Format, c: &Comparison, j: &Judgement, extras: &ReportExtras) -> String {
    match format {
        Format::Text => terminal_safe(render_text(c, j)),
        Format::Json => serde_json::to_string_pretty(&report_json(c, j)).unwrap_or_default() + "\n",
        Format::Markdown => terminal_safe(render_markdown(c, j)),
        Format::Junit => render_junit(c, j),
        Format::Html => render_html(c, j, extras),
    }
}

/// A text report with every control character but the line breaks escaped. Keys, paths and
/// header values are escaped where they are written (so a newline in a key cannot forge a
/// line); this catches whatever trace text reaches the report by another way.
fn terminal_safe(text: String) -> String {
    text.split('\n')
        .map(crate::escape::printable)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the HTML report shows beyond the comparison, read from the two traces by the caller.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportExtras {
    /// The two final images and their amplified difference.
    pub images: Option<ReportImages>,
    /// Which elements of the pictured noise record ([`noise_picture_record`]) differ.
    pub noise: Option<ReportNoise>,
}

/// The noise record the HTML report pictures, when it pictures one: the first noise record
/// (`noise.*`, `sampler.noise`) that is not bit-identical; else, for a noise/RNG verdict, the
/// first noise record.
pub fn noise_picture_record(c: &Comparison, j: &Judgement) -> Option<usize> {
    let noise = || {
        c.records
            .iter()
            .enumerate()
            .filter(|(_, r)| is_noise_key(&r.key))
    };
    noise()
        .find(|(_, r)| r.bit_identical == Some(false))
        .or_else(|| {
            noise()
                .next()
                .filter(|_| j.verdict.class == VerdictClass::NoiseRng)
        })
        .map(|(i, _)| i)
}

/// Why two noise payloads cannot be pictured.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum NoisePictureError {
    #[error("the noise shapes differ ({a:?} vs {b:?})")]
    Shapes { a: Vec<u64>, b: Vec<u64> },
    #[error("the noise payload of {side} holds {got} values for shape {shape:?}")]
    Length {
        side: char,
        shape: Vec<u64>,
        got: usize,
    },
}

/// How one noise element of A compares with B's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ElementMatch {
    Identical = 0,
    /// Within the noise diagnosis' agreement tolerance, not bit-identical.
    Close = 1,
    Differs = 2,
}

/// Buckets of the flat-index strip of [`ReportNoise`].
pub const NOISE_STRIP: usize = 720;

/// Which elements of two noise tensors differ, for the HTML report's picture: batch item 0
/// element by element (its channels side by side), and the whole tensor along the flat index,
/// where a GPU RNG wave shows as an agreeing prefix and a differing tail. Agreement is the
/// noise diagnosis' ([`element_agrees`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ReportNoise {
    /// The record pictured, e.g. `noise.initial` or `step 3 sampler.noise`.
    pub label: String,
    pub shape: Vec<u64>,
    /// Batch item 0: channels × height × width (a tensor of rank < 3 is one channel; rank 1
    /// one row).
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// Batch item 0, channel-major.
    pub map: Vec<ElementMatch>,
    /// The whole tensor in flat-index order, in at most [`NOISE_STRIP`] equal runs: the
    /// fraction of each run's elements that differ.
    pub strip: Vec<f32>,
    pub count: u64,
    pub identical: u64,
    pub differing: u64,
    /// Flat index of the first element that differs; the elements before it agree.
    pub first_differing: Option<u64>,
}

impl ReportNoise {
    /// Compare two noise payloads (little-endian values of `dtype`, the trace's payload bytes).
    pub fn from_payloads(
        label: &str,
        (dtype_a, shape_a, a): (DType, &[u64], &[u8]),
        (dtype_b, shape_b, b): (DType, &[u64], &[u8]),
    ) -> Result<Self, NoisePictureError> {
        if shape_a != shape_b {
            return Err(NoisePictureError::Shapes {
                a: shape_a.to_vec(),
                b: shape_b.to_vec(),
            });
        }
        let count = shape_a
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .unwrap_or(u64::MAX);
        let (va, vb) = (decode_all(dtype_a, a), decode_all(dtype_b, b));
        for (side, v) in [('A', &va), ('B', &vb)] {
            if v.len() as u64 != count {
                return Err(NoisePictureError::Length {
                    side,
                    shape: shape_a.to_vec(),
                    got: v.len(),
                });
            }
        }
        let dim = |k: usize| shape_a.get(k).map_or(1, |&d| d as usize);
        let rank = shape_a.len();
        let (channels, height, width) = match rank {
            0 => (1, 1, 1),
            1 => (1, 1, dim(0)),
            2 => (1, dim(0), dim(1)),
            _ => (dim(rank - 3), dim(rank - 2), dim(rank - 1)),
        };
        let item = (channels * height * width).min(va.len());
        let matched = |(&x, &y): (&f64, &f64)| {
            if x.to_bits() == y.to_bits() {
                ElementMatch::Identical
            } else if element_agrees(x, y) {
                ElementMatch::Close
            } else {
                ElementMatch::Differs
            }
        };
        let map: Vec<ElementMatch> = va[..item].iter().zip(&vb[..item]).map(matched).collect();
        let n = va.len();
        let runs = n.clamp(1, NOISE_STRIP);
        let mut strip = vec![0f32; runs];
        let (mut identical, mut differing, mut first_differing) = (0u64, 0u64, None);
        for (i, m) in va.iter().zip(&vb).map(matched).enumerate() {
            match m {
                ElementMatch::Identical => identical += 1,
                ElementMatch::Close => {}
                ElementMatch::Differs => {
                    differing += 1;
                    first_differing.get_or_insert(i as u64);
                    strip[(i as u128 * runs as u128 / n as u128) as usize] += 1.0;
                }
            }
        }
        // Run r holds the elements i with ⌊i·runs/n⌋ = r.
        let first_of = |r: usize| (r as u128 * n as u128).div_ceil(runs as u128);
        for (r, v) in strip.iter_mut().enumerate() {
            *v /= (first_of(r + 1) - first_of(r)).max(1) as f32;
        }
        Ok(ReportNoise {
            label: label.to_string(),
            shape: shape_a.to_vec(),
            channels,
            height,
            width,
            map,
            strip,
            count: n as u64,
            identical,
            differing,
            first_differing,
        })
    }
}

/// One batch item of both traces' final `image` records, as 8-bit RGB, and their amplified
/// difference: |A − B| per channel on the [0, 1] scale (u8 images divided by 255; a NaN
/// against a number counts as 1, NaN against NaN as 0), multiplied by `gain` so that the
/// largest difference is white.
#[derive(Clone, Debug, PartialEq)]
pub struct ReportImages {
    pub width: u32,
    pub height: u32,
    /// The batch item shown and the batch size.
    pub index: usize,
    pub batch: usize,
    pub a: Vec<u8>,
    pub b: Vec<u8>,
    pub diff: Vec<u8>,
    /// Largest |A − B| on the [0, 1] scale.
    pub max_abs: f64,
    /// Factor applied to |A − B| in `diff` (1 when the images are equal).
    pub gain: f64,
}

impl ReportImages {
    /// Batch item 0 of two image tensors of the same shape.
    pub fn from_records(a: &ImageTensor, b: &ImageTensor) -> Result<Self, String> {
        if (a.batch, a.width, a.height) != (b.batch, b.width, b.height) {
            return Err(format!(
                "the images differ in size ({} × {}×{} vs {} × {}×{})",
                a.batch, a.width, a.height, b.batch, b.width, b.height
            ));
        }
        let index = 0;
        let (Some(ra), Some(rb), Some(va), Some(vb)) = (
            a.rgb8(index),
            b.rgb8(index),
            a.values(index),
            b.values(index),
        ) else {
            return Err("the image records hold no batch item".into());
        };
        let abs: Vec<f64> = va
            .iter()
            .zip(&vb)
            .map(|(&x, &y)| match (x.is_nan(), y.is_nan()) {
                (false, false) => (x as f64 - y as f64).abs(),
                (true, true) => 0.0,
                _ => 1.0,
            })
            .collect();
        let max_abs = abs.iter().fold(0.0f64, |m, &d| m.max(d));
        let gain = if max_abs > 0.0 { 1.0 / max_abs } else { 1.0 };
        let plane = a.width as usize * a.height as usize;
        let level = |d: f64| (d * gain * 255.0).round().clamp(0.0, 255.0) as u8;
        let diff = (0..plane)
            .flat_map(|p| [abs[p], abs[plane + p], abs[2 * plane + p]])
            .map(level)
            .collect();
        Ok(ReportImages {
            width: a.width,
            height: a.height,
            index,
            batch: a.batch,
            a: ra,
            b: rb,
            diff,
            max_abs,
            gain,
        })
    }
}

/// One row of the per-key table: all records of one key.
#[derive(Clone, Debug, PartialEq)]
pub struct KeyRow {
    pub key: String,
    pub records: usize,
    pub identical: usize,
    pub fail: usize,
    pub unknown: usize,
    pub not_compared: usize,
    /// Largest error and the record it was seen at.
    pub worst: Option<(f64, usize)>,
    /// First failing record.
    pub first_fail: Option<usize>,
    /// Smallest tolerance that passes every record of the key.
    pub required: Option<Required>,
    /// The key holds the source record.
    pub source: bool,
}

impl KeyRow {
    pub fn status(&self) -> &'static str {
        if self.not_compared > 0 {
            Status::NotCompared.name()
        } else if self.fail > 0 {
            Status::Fail.name()
        } else if self.unknown > 0 {
            Status::Unknown.name()
        } else if self.identical == self.records {
            Status::Identical.name()
        } else {
            Status::Pass.name()
        }
    }
}

/// Per-key rows in order of first appearance (A's execution order).
pub fn key_rows(c: &Comparison, j: &Judgement) -> Vec<KeyRow> {
    let mut rows: Vec<KeyRow> = Vec::new();
    let mut at: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (r, rj)) in c.records.iter().zip(&j.records).enumerate() {
        let k = *at.entry(&r.key).or_insert_with(|| {
            rows.push(KeyRow {
                key: r.key.clone(),
                records: 0,
                identical: 0,
                fail: 0,
                unknown: 0,
                not_compared: 0,
                worst: None,
                first_fail: None,
                required: None,
                source: false,
            });
            rows.len() - 1
        });
        let row = &mut rows[k];
        row.records += 1;
        match rj.status {
            Status::Identical => row.identical += 1,
            Status::Fail => {
                row.fail += 1;
                row.first_fail.get_or_insert(i);
            }
            Status::Unknown => row.unknown += 1,
            Status::NotCompared => row.not_compared += 1,
            Status::Pass => {}
        }
        if let Some(e) = rj.error
            && row
                .worst
                .is_none_or(|(w, _)| e > w || (w.is_nan() && !e.is_nan()))
        {
            row.worst = Some((e, i));
        }
        if let Some(q) = rj.required {
            let cur = row.required.get_or_insert(q);
            cur.rel = cur.rel.max(q.rel);
            cur.abs = cur.abs.max(q.abs);
        }
        if j.source.as_ref().is_some_and(|s| s.index == i) {
            row.source = true;
        }
    }
    rows
}

/// Failing records in execution order.
pub fn failing(j: &Judgement) -> Vec<usize> {
    (0..j.records.len())
        .filter(|&i| j.records[i].status == Status::Fail)
        .collect()
}

/// Record labels that name what an evaluation number means, read from A's header: inside a
/// step, the webui's separate CFG calls (eval 0 `cond`, eval 1 `uncond`, only at steps that
/// made two calls); before the loop, the text encoder's calls (the negative prompt's chunks
/// first, then the prompt's). Elsewhere, and when the header does not say, the plain label.
pub struct Labels {
    /// Steps at which A made separate cond/uncond calls.
    split_steps: std::collections::HashSet<u32>,
    /// Text encoder chunks of the negative prompt and of the prompt.
    chunks: Option<(u32, u32)>,
}

impl Labels {
    pub fn new(c: &Comparison) -> Self {
        let split_steps = c
            .records
            .iter()
            .filter(|r| r.eval > 0)
            .filter_map(|r| r.step)
            .collect();
        let tokens = c.a.header.settings.extra.get("tokens");
        let count = |side: &str| {
            tokens?
                .get(side)?
                .get("chunks")?
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
        };
        Labels {
            split_steps,
            chunks: count("uncond").zip(count("cond")),
        }
    }

    /// `uncond`, `cond`, `cond chunk 1`, … or `None`.
    pub fn eval_name(&self, step: Option<u32>, eval: u32, key: &str) -> Option<String> {
        match step {
            Some(s) if self.split_steps.contains(&s) => match eval {
                0 => Some("cond".into()),
                1 => Some("uncond".into()),
                _ => None,
            },
            Some(_) => None,
            None if key.starts_with("text_encoder.") => {
                let (nu, nc) = self.chunks?;
                let (side, i, n) = if eval < nu {
                    ("uncond", eval, nu)
                } else if eval < nu + nc {
                    ("cond", eval - nu, nc)
                } else {
                    return None;
                };
                Some(if n > 1 {
                    format!("{side} chunk {i}")
                } else {
                    side.into()
                })
            }
            None => None,
        }
    }

    /// `step 3 unet.mid_block (cond)`, or the record's plain label.
    pub fn of(&self, r: &crate::analysis::PairRecord) -> String {
        match self.eval_name(r.step, r.eval, &r.key) {
            Some(name) => format!("{} ({name})", r.label()),
            None => r.label(),
        }
    }

    /// Where a record is, without its key: `step 3`, `step 3 (cond)`, `(uncond)`, `eval 2`.
    pub fn at(&self, r: &crate::analysis::PairRecord) -> String {
        let mut parts = Vec::new();
        if let Some(s) = r.step {
            parts.push(format!("step {s}"));
        }
        match self.eval_name(r.step, r.eval, &r.key) {
            Some(n) => parts.push(format!("({n})")),
            None if r.eval > 0 => parts.push(format!("eval {}", r.eval)),
            None => {}
        }
        parts.join(" ")
    }
}

/// `1.23e-4`, `0`, `inf`, `-` for none.
pub fn sci(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(x) if x.is_infinite() => if x > 0.0 { "inf" } else { "-inf" }.into(),
        Some(x) if x.is_nan() => "nan".into(),
        Some(x) => format!("{x:.2e}"),
    }
}

fn label_of(c: &Comparison, i: Option<usize>) -> Value {
    i.and_then(|i| c.records.get(i))
        .map_or(Value::Null, |r| json!(r.label()))
}

/// The JSON report (schema [`REPORT_SCHEMA`], documented in docs/REPORT.md).
pub fn report_json(c: &Comparison, j: &Judgement) -> Value {
    let records: Vec<Value> = c
        .records
        .iter()
        .zip(&j.records)
        .map(|(r, rj)| {
            let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
            if let (Value::Object(m), Ok(Value::Object(extra))) = (&mut v, serde_json::to_value(rj))
            {
                m.extend(extra);
            }
            v
        })
        .collect();
    let keys: Vec<Value> = key_rows(c, j)
        .iter()
        .map(|k| {
            json!({
                "key": k.key,
                "status": k.status(),
                "records": k.records,
                "identical": k.identical,
                "fail": k.fail,
                "unknown": k.unknown,
                "not_compared": k.not_compared,
                "worst_rel_l2": k.worst.map(|(e, _)| num(e)),
                "worst_at": k.worst.map(|(_, i)| c.records[i].label()),
                "first_fail_at": k.first_fail.map(|i| c.records[i].label()),
                "required": k.required.map(|q| json!({"rel": num(q.rel), "abs": num(q.abs)})),
                "source": k.source,
            })
        })
        .collect();
    let side = |s: &crate::analysis::TraceSide| json!({"path": s.path, "records": s.records, "complete": s.complete, "run_end": s.run_end, "header": s.header});
    json!({
        "schema": REPORT_SCHEMA,
        "verdict": j.verdict,
        "a": side(&c.a),
        "b": side(&c.b),
        "noise_floor": c.noise_floor.as_ref().map(side),
        "tolerance": j.tolerance,
        "fail_on": j.criteria.fail_on,
        "criteria": j.criteria,
        "gaps": j.gaps,
        "counts": j.counts,
        "localisation": {
            "first_non_identical": label_of(c, j.first_non_identical),
            "first_over_tolerance": label_of(c, j.first_over_tolerance),
            "first_nonfinite": label_of(c, j.first_nonfinite),
            "source": j.source.as_ref().map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                v["label"] = json!(c.records[s.index].label());
                v
            }),
            "latent_key": j.latent_key,
            "latent": j.latent,
            "amplification": j.amplification,
            "image": j.image.map(|i| {
                let r = &c.records[i];
                json!({"bit_identical": r.bit_identical, "rel_l2": r.rel_l2.map(num), "metrics": r.image})
            }),
        },
        "noise": noise_json(c),
        "header_diffs": c.header_diffs,
        "only_a": c.only_a,
        "only_b": c.only_b,
        "keys": keys,
        "records": records,
    })
}

/// The noise diagnoses (`noise.*`, `sampler.noise` pairs), each with its record label.
fn noise_json(c: &Comparison) -> Vec<Value> {
    c.records
        .iter()
        .filter_map(|r| {
            let mut v = serde_json::to_value(r.noise.as_ref()?).ok()?;
            v["label"] = json!(r.label());
            Some(v)
        })
        .collect()
}

/// A JSON number, or the strings "inf"/"-inf"/"nan" (JSON has no non-finite numbers).
fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else if x.is_nan() {
        json!("nan")
    } else if x > 0.0 {
        json!("inf")
    } else {
        json!("-inf")
    }
}

/// Escape text for XML and HTML.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[doc(hidden)]
pub mod fixture {
    //! A small fixed comparison for the renderers' tests here and the TUI's in the `sdtrace`
    //! crate: 2 steps, a source at step 1.
    use crate::analysis::*;
    use crate::trace::RunHeader;

    pub fn rec(step: Option<u32>, key: &str, order: u64, rel: f64) -> PairRecord {
        let identical = rel == 0.0;
        PairRecord {
            step,
            eval: 0,
            key: key.into(),
            order_a: order,
            order_b: order,
            dtype_a: "f32".into(),
            dtype_b: "f32".into(),
            shape_a: vec![4],
            shape_b: vec![4],
            basis: Basis::Sketch,
            bit_identical: Some(identical),
            rel_l2: Some(rel),
            rel_l2_error: (!identical).then_some(0.044),
            abs_error: Some(rel * 2.0),
            nonfinite_mismatch: 0,
            payload: None,
            summary: SummaryDelta {
                hash_equal: identical,
                mean: 0.0,
                std: 0.0,
                min: 0.0,
                max: 0.0,
                l2: 0.0,
                abs_max: 0.0,
                l2_b: 2.0,
                rel_l2_lower_bound: 0.0,
                nonfinite_a: 0,
                nonfinite_b: 0,
            },
            image: None,
            floor: None,
            note: None,
            noise: None,
        }
    }

    pub fn comparison() -> Comparison {
        let side = |p: &str| TraceSide {
            path: p.into(),
            records: 10,
            complete: true,
            run_end: None,
            header: RunHeader::default(),
            damage: None,
            expects_run_end: false,
        };
        Comparison {
            schema: COMPARISON_SCHEMA.into(),
            a: side("a.sdt"),
            b: side("b<&>.sdt"),
            noise_floor: None,
            header_diffs: vec![HeaderDiff {
                field: "device.device".into(),
                a: Some("cpu".into()),
                b: Some("cuda:0".into()),
                structural: false,
            }],
            only_a: vec![],
            only_b: vec![RecordRef {
                step: None,
                eval: 0,
                key: "vae.decoder".into(),
                order: 9,
                dtype: "f32".into(),
                shape: vec![1],
            }],
            records: vec![
                rec(None, "noise.initial", 0, 0.0),
                rec(Some(0), "sampler.x", 1, 0.0),
                rec(Some(0), "unet.mid_block", 2, 0.0),
                rec(Some(1), "sampler.x", 3, 0.0),
                rec(Some(1), "unet.mid_block", 4, 1e-3),
                rec(Some(2), "sampler.x", 5, 2e-3),
                rec(Some(2), "unet.mid_block", 6, 4e-3),
                rec(Some(3), "sampler.x", 7, 8e-3),
                rec(Some(3), "unet.mid_block", 8, 1.6e-2),
                rec(Some(4), "sampler.x", 9, 3.2e-2),
            ],
            compare_tol: TolConfig::default(),
            elapsed_s: 1.25,
        }
    }

    /// The fixture judged with its one-sided `vae.decoder` record allowed.
    pub fn judged() -> (Comparison, Judgement) {
        let c = comparison();
        let criteria = Criteria {
            allow_missing: AllowMissing::Keys(vec!["vae.*".into()]),
            ..Criteria::default()
        };
        let j = judge(&c, &TolConfig::default(), &criteria);
        (c, j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_judgement_and_key_rows() {
        let (c, j) = fixture::judged();
        let s = j.source.as_ref().unwrap();
        assert_eq!((s.key.as_str(), s.step), ("unet.mid_block", Some(1)));
        assert_eq!(j.first_over_tolerance, Some(4));
        let a = j.amplification.unwrap();
        assert_eq!((a.onset_step, a.end_step), (2, 4));
        assert!((a.rate_per_step - 4.0).abs() < 1e-9, "{a:?}");
        let rows = key_rows(&c, &j);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[2].key, "unet.mid_block");
        assert_eq!(
            (rows[2].records, rows[2].fail, rows[2].source),
            (4, 3, true)
        );
        assert_eq!(rows[2].worst, Some((1.6e-2, 8)));
        assert_eq!(rows[2].required.unwrap().rel, 1.6e-2);
        assert_eq!(rows[0].status(), "identical");
    }

    #[test]
    fn json_report_shape() {
        let (c, j) = fixture::judged();
        let v = report_json(&c, &j);
        assert_eq!(v["schema"], REPORT_SCHEMA);
        assert_eq!(v["verdict"]["class"], "numeric-drift");
        assert_eq!(v["verdict"]["exit_code"], 1);
        assert_eq!(
            v["localisation"]["source"]["label"],
            "step 1 unet.mid_block"
        );
        assert_eq!(v["localisation"]["amplification"]["onset_step"], 2);
        assert_eq!(v["records"][4]["status"], "fail");
        assert_eq!(v["records"][4]["gain"], "inf");
        assert!((v["records"][5]["gain"].as_f64().unwrap() - 2.0).abs() < 1e-12);
        assert_eq!(v["records"][5]["creates"], false);
        assert_eq!(v["keys"][2]["fail"], 3);
        assert_eq!(v["only_b"][0]["key"], "vae.decoder");
    }

    #[test]
    fn escaping() {
        assert_eq!(
            xml_escape("a<&>\"'\u{1}"),
            "a&lt;&amp;&gt;&quot;&apos;\u{FFFD}"
        );
        assert_eq!(sci(Some(0.00123)), "1.23e-3");
        assert_eq!(sci(Some(f64::INFINITY)), "inf");
    }
}
