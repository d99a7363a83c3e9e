//! Alignment of two traces: records pair by `(step, eval, key)` after key renaming, header
//! fields are compared, and whatever does not pair is listed.
//!
//! A [`KeyMap`] (`--map FILE`) renames keys of traces written by other implementations. Each
//! line is `FROM => TO`; a trailing `*` on both sides maps a prefix
//! (`model.diffusion_model.* => unet.*`); blank lines and `#` comments are ignored; the first
//! matching line wins. The map applies to both traces' keys, before pairing.
//!
//! Header fields that make two runs incomparable (model hash, width, height, batch size,
//! sampler, steps) are marked `structural`; the others (seed, dtype, rng, attention, device,
//! prompt, cfg scale) explain a divergence but do not prevent comparing.

use super::AnalysisError;
use crate::trace::{RunEnd, RunHeader, Settings};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Key renaming rules.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyMap {
    rules: Vec<(String, String, bool)>,
}

impl KeyMap {
    /// Parse a key map file's text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, AnalysisError> {
        let mut rules = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |what: &str| AnalysisError::MapSyntax {
                path: path.to_path_buf(),
                line: i + 1,
                what: what.to_string(),
            };
            let (from, to) = line
                .split_once("=>")
                .ok_or_else(|| err("no `=>` on this line"))?;
            let (from, to) = (from.trim(), to.trim());
            if from.is_empty() || to.is_empty() {
                return Err(err("empty key"));
            }
            let (pf, pt) = (from.ends_with('*'), to.ends_with('*'));
            if pf != pt {
                return Err(err("a `*` must end both sides or neither"));
            }
            if from[..from.len() - pf as usize].contains('*')
                || to[..to.len() - pt as usize].contains('*')
            {
                return Err(err("`*` is only allowed at the end of a key"));
            }
            let strip = |s: &str| s.trim_end_matches('*').to_string();
            rules.push((strip(from), strip(to), pf));
        }
        Ok(KeyMap { rules })
    }

    /// Read and parse a key map file.
    pub fn load(path: &Path) -> Result<Self, AnalysisError> {
        let text = crate::files::require_regular(path)
            .and_then(|_| std::fs::read_to_string(path))
            .map_err(|source| AnalysisError::MapIo {
                path: path.to_path_buf(),
                source,
            })?;
        Self::parse(&text, path)
    }

    /// The key after renaming.
    pub fn apply(&self, key: &str) -> String {
        for (from, to, prefix) in &self.rules {
            if *prefix {
                if let Some(rest) = key.strip_prefix(from.as_str()) {
                    return format!("{to}{rest}");
                }
            } else if key == from {
                return to.clone();
            }
        }
        key.to_string()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

/// A record present in only one trace (or one side of a mismatch).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordRef {
    pub step: Option<u32>,
    pub eval: u32,
    pub key: String,
    pub order: u64,
    pub dtype: String,
    pub shape: Vec<u64>,
}

impl RecordRef {
    pub fn label(&self) -> String {
        label(self.step, self.eval, &self.key)
    }
}

/// How a record is named for people: `step 3 unet.mid_block`, `step 3 eval 1 unet.mid_block`,
/// `noise.initial`, `eval 1 text_encoder.final_layer_norm`. Control characters in the key are
/// escaped ([`crate::escape::printable`]): labels are printed to terminals.
pub fn label(step: Option<u32>, eval: u32, key: &str) -> String {
    let key = crate::escape::printable(key);
    match (step, eval) {
        (Some(s), 0) => format!("step {s} {key}"),
        (Some(s), e) => format!("step {s} eval {e} {key}"),
        (None, 0) => key.to_string(),
        (None, e) => format!("eval {e} {key}"),
    }
}

/// One differing header field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeaderDiff {
    /// `settings.sampler`, `device.gpu.sm_count`, ...
    pub field: String,
    pub a: Option<String>,
    pub b: Option<String>,
    /// The difference makes the runs incomparable.
    pub structural: bool,
}

impl HeaderDiff {
    /// `settings.dtype f32 vs f16` (`-` for a side without the field).
    pub fn describe(&self) -> String {
        format!(
            "{} {} vs {}",
            self.field,
            self.a.as_deref().unwrap_or("-"),
            self.b.as_deref().unwrap_or("-")
        )
    }
}

/// Header fields that say how the sampler steps: a difference means the latents part by
/// design, not by rounding.
pub const SAMPLER_FIELDS: [&str; 3] = [
    "settings.sampler_impl",
    "settings.cfg_rows",
    "settings.init_sigma",
];

/// Whether a header field is one of the sampler's ([`SAMPLER_FIELDS`], `settings.sigmas[k]`,
/// `settings.timesteps[k]`).
pub fn is_sampler_field(field: &str) -> bool {
    SAMPLER_FIELDS.contains(&field)
        || field.starts_with("settings.sigmas[")
        || field.starts_with("settings.timesteps[")
}

/// Relative difference of schedule values below which two runs step alike (f32 betas against
/// f64 betas, or linear against log-linear σ interpolation, differ by a few 1e-6).
const SCHEDULE_REL: f64 = 1e-5;

/// The numbers of a header fact (`sigmas`, `timesteps`, `init_sigma`).
fn numbers(s: &Settings, key: &str) -> Option<Vec<f64>> {
    match s.extra.get(key)? {
        serde_json::Value::Array(v) => v.iter().map(|x| x.as_f64()).collect(),
        x => x.as_f64().map(|f| vec![f]),
    }
}

/// The first index at which the header fact `key` differs beyond [`SCHEDULE_REL`], when both
/// headers have it.
fn first_schedule_diff(sa: &Settings, sb: &Settings, key: &str) -> Option<usize> {
    let (x, y) = (numbers(sa, key)?, numbers(sb, key)?);
    let differs = |p: f64, q: f64| (p - q).abs() > SCHEDULE_REL * p.abs().max(q.abs()).max(1e-3);
    x.iter()
        .zip(&y)
        .position(|(&p, &q)| differs(p, q))
        .or((x.len() != y.len()).then(|| x.len().min(y.len())))
}

/// The sampler's header facts that differ: `sampler_impl` and `cfg_rows` as text;
/// `init_sigma`, and the first step whose σ or timestep differs as `settings.sigmas[STEP]`.
fn sampler_fields(sa: &Settings, sb: &Settings) -> Vec<(String, Option<String>, Option<String>)> {
    let text = |s: &Settings, k: &str| s.extra.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let mut out = Vec::new();
    for (field, key) in [
        ("settings.sampler_impl", "sampler_impl"),
        ("settings.cfg_rows", "cfg_rows"),
    ] {
        let (x, y) = (text(sa, key), text(sb, key));
        if x != y {
            out.push((field.to_string(), x, y));
        }
    }
    for key in ["init_sigma", "sigmas", "timesteps"] {
        if let Some(i) = first_schedule_diff(sa, sb, key) {
            let at = |s: &Settings| {
                let v = numbers(s, key).and_then(|v| v.get(i).copied());
                Some(v.map_or("-".to_string(), |v| format!("{}", v as f32)))
            };
            let field = if key == "init_sigma" {
                "settings.init_sigma".to_string()
            } else {
                format!("settings.{key}[{i}]")
            };
            out.push((field, at(sa), at(sb)));
        }
    }
    out
}

/// The CFG row order a trace stores its batched records in: `cfg_rows_stored`; traces from
/// before that field stored the order they ran, which was [cond; uncond] only for
/// `sdtrace record --a1111-cond-uncond`.
fn stored_rows(s: &Settings) -> &str {
    if let Some(v) = s.extra.get("cfg_rows_stored").and_then(|v| v.as_str()) {
        return v;
    }
    let legacy_webui = s
        .extra
        .get("a1111")
        .and_then(|a| a["cond_uncond"].as_str())
        .is_some_and(|t| t.starts_with("webui"));
    if legacy_webui {
        "cond,uncond"
    } else {
        "uncond,cond"
    }
}

/// The first step at which the two runs' samplers step differently, from their headers: 0
/// when they start from a different multiple of the noise (`init_sigma`), else the first step
/// whose σ or timestep differs.
pub fn sampler_parts_at(a: &RunHeader, b: &RunHeader) -> Option<u32> {
    let (sa, sb) = (&a.settings, &b.settings);
    if first_schedule_diff(sa, sb, "init_sigma").is_some() {
        return Some(0);
    }
    ["sigmas", "timesteps"]
        .into_iter()
        .filter_map(|k| first_schedule_diff(sa, sb, k))
        .min()
        .map(|i| i as u32)
}

/// Run-end facts a host observed while it ran that change the numerics: the slices each split
/// attention layer computed (`attention_slices`, and `attention_slices_hires` for a webui's
/// hires pass), which depend on the free memory of the card.
pub const OBSERVED_FIELDS: [&str; 2] = ["attention_slices", "attention_slices_hires"];

/// Differences between the facts two runs observed while they ran ([`OBSERVED_FIELDS`] of their
/// run ends) where both sides observed them: `run_end.attention_slices[KEY]` for the first
/// layer (in key order) whose count differs, like `settings.sigmas[STEP]`. A field only one side
/// has is not a difference (that host did not split its attention; `settings.attention` says
/// so).
pub fn run_end_diffs(a: Option<&RunEnd>, b: Option<&RunEnd>) -> Vec<HeaderDiff> {
    let (Some(a), Some(b)) = (a, b) else {
        return Vec::new();
    };
    let counts = |e: &RunEnd, f: &str| e.extra.get(f).and_then(|v| v.as_object()).cloned();
    let mut out = Vec::new();
    for field in OBSERVED_FIELDS {
        let (Some(x), Some(y)) = (counts(a, field), counts(b, field)) else {
            continue;
        };
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        if let Some(k) = keys.into_iter().find(|k| x.get(*k) != y.get(*k)) {
            let at =
                |m: &serde_json::Map<String, serde_json::Value>| m.get(k).map(|v| v.to_string());
            out.push(HeaderDiff {
                field: format!("run_end.{field}[{}]", crate::escape::printable(k)),
                a: at(&x),
                b: at(&y),
                structural: false,
            });
        }
    }
    out
}

/// Differences between two run headers, in a fixed field order.
pub fn header_diffs(a: &RunHeader, b: &RunHeader) -> Vec<HeaderDiff> {
    fn s<T: ToString>(v: &Option<T>) -> Option<String> {
        v.as_ref().map(|x| x.to_string())
    }
    let (sa, sb) = (&a.settings, &b.settings);
    let mut fields: Vec<(&str, Option<String>, Option<String>, bool)> = vec![
        ("settings.model", s(&sa.model), s(&sb.model), false),
        ("settings.width", s(&sa.width), s(&sb.width), true),
        ("settings.height", s(&sa.height), s(&sb.height), true),
        (
            "settings.batch_size",
            s(&sa.batch_size),
            s(&sb.batch_size),
            true,
        ),
        ("settings.sampler", s(&sa.sampler), s(&sb.sampler), true),
        ("settings.steps", s(&sa.steps), s(&sb.steps), true),
        ("settings.seed", s(&sa.seed), s(&sb.seed), false),
        ("settings.prompt", s(&sa.prompt), s(&sb.prompt), false),
        (
            "settings.negative_prompt",
            s(&sa.negative_prompt),
            s(&sb.negative_prompt),
            false,
        ),
        (
            "settings.cfg_scale",
            s(&sa.cfg_scale),
            s(&sb.cfg_scale),
            false,
        ),
        ("settings.dtype", s(&sa.dtype), s(&sb.dtype), false),
        ("settings.rng", s(&sa.rng), s(&sb.rng), false),
        (
            "settings.attention",
            s(&sa.attention),
            s(&sb.attention),
            false,
        ),
        (
            "device.device",
            s(&a.device.device),
            s(&b.device.device),
            false,
        ),
        (
            "device.cpu_model",
            s(&a.device.cpu_model),
            s(&b.device.cpu_model),
            false,
        ),
    ];
    // Model hashes: every name either side has; a hash known on both sides that differs is
    // structural (a different model), one known on only one side is not.
    let names: std::collections::BTreeSet<&String> = sa
        .model_hashes
        .keys()
        .chain(sb.model_hashes.keys())
        .collect();
    let hash_fields: Vec<(String, Option<String>, Option<String>, bool)> = names
        .into_iter()
        .map(|n| {
            let (x, y) = (
                sa.model_hashes.get(n).cloned(),
                sb.model_hashes.get(n).cloned(),
            );
            let structural = x.is_some() && y.is_some();
            (format!("settings.model_hashes.{n}"), x, y, structural)
        })
        .collect();
    let sampler = sampler_fields(sa, sb);
    // Rows stored in different CFG orders would pair uncond with cond: not comparable.
    fields.push((
        "settings.cfg_rows_stored",
        Some(stored_rows(sa).to_string()),
        Some(stored_rows(sb).to_string()),
        true,
    ));
    let ga = a.device.gpu.as_ref();
    let gb = b.device.gpu.as_ref();
    let gpu =
        |g: Option<&crate::trace::GpuFacts>,
         f: &dyn Fn(&crate::trace::GpuFacts) -> Option<String>| { g.and_then(f) };
    let gpu_fields = [
        (
            "device.gpu.name",
            gpu(ga, &|g| g.name.clone()),
            gpu(gb, &|g| g.name.clone()),
        ),
        (
            "device.gpu.sm_count",
            gpu(ga, &|g| s(&g.sm_count)),
            gpu(gb, &|g| s(&g.sm_count)),
        ),
        (
            "device.gpu.max_threads_per_sm",
            gpu(ga, &|g| s(&g.max_threads_per_sm)),
            gpu(gb, &|g| s(&g.max_threads_per_sm)),
        ),
    ];
    for (f, x, y) in gpu_fields {
        fields.push((f, x, y, false));
    }
    let mut out: Vec<HeaderDiff> = fields
        .into_iter()
        .filter(|(_, x, y, _)| x != y)
        .map(|(f, x, y, st)| HeaderDiff {
            field: f.to_string(),
            structural: st && x.is_some() && y.is_some(),
            a: x,
            b: y,
        })
        .collect();
    out.extend(sampler.into_iter().map(|(field, a, b)| HeaderDiff {
        field,
        a,
        b,
        structural: false,
    }));
    out.extend(
        hash_fields
            .into_iter()
            .filter(|(_, x, y, _)| x != y)
            .map(|(f, x, y, st)| HeaderDiff {
                field: f,
                a: x,
                b: y,
                structural: st,
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_map_rules_and_errors() {
        let p = Path::new("map.txt");
        let m = KeyMap::parse(
            "# comment\nmodel.diffusion_model.* => unet.*\nx_T => noise.initial  # trailing\n\n",
            p,
        )
        .unwrap();
        assert_eq!(
            m.apply("model.diffusion_model.input_blocks.1"),
            "unet.input_blocks.1"
        );
        assert_eq!(m.apply("x_T"), "noise.initial");
        assert_eq!(m.apply("x_T2"), "x_T2");
        for (bad, line) in [
            ("a b", 1),
            ("\na* => b", 2),
            ("a => ", 1),
            ("a*b* => c*", 1),
        ] {
            let e = KeyMap::parse(bad, p).unwrap_err().to_string();
            assert!(e.starts_with(&format!("map.txt: line {line}:")), "{e}");
        }
    }

    #[test]
    fn cfg_rows_stored_in_another_order_are_not_comparable() {
        let with = |extra: serde_json::Value| {
            let mut h = RunHeader::default();
            if let serde_json::Value::Object(m) = extra {
                h.settings.extra.extend(m);
            }
            h
        };
        let new =
            with(serde_json::json!({"cfg_rows": "cond,uncond", "cfg_rows_stored": "uncond,cond"}));
        let diffusers =
            with(serde_json::json!({"cfg_rows": "uncond,cond", "cfg_rows_stored": "uncond,cond"}));
        let legacy = with(
            serde_json::json!({"a1111": {"cond_uncond": "webui ([cond; uncond], separate calls when token counts differ)"}}),
        );
        let d = header_diffs(&new, &diffusers);
        assert!(d.iter().all(|d| !d.structural), "{d:?}");
        assert!(d.iter().any(|d| d.field == "settings.cfg_rows"));
        let d = header_diffs(&legacy, &diffusers);
        let stored = d
            .iter()
            .find(|d| d.field == "settings.cfg_rows_stored")
            .unwrap();
        assert!(
            stored.structural && stored.a.as_deref() == Some("cond,uncond"),
            "{d:?}"
        );
        // A trace from before these fields stored [uncond; cond].
        assert!(
            header_diffs(&RunHeader::default(), &diffusers)
                .iter()
                .all(|d| !d.structural)
        );
    }

    #[test]
    fn sampler_schedules_part_at_their_first_differing_step() {
        let with = |sigmas: &[f64], init: f64, imp: &str| {
            let mut h = RunHeader::default();
            h.settings
                .extra
                .insert("sigmas".into(), serde_json::json!(sigmas));
            h.settings
                .extra
                .insert("init_sigma".into(), serde_json::json!(init));
            h.settings
                .extra
                .insert("sampler_impl".into(), serde_json::json!(imp));
            h
        };
        let kd = with(
            &[14.614642, 1.6155803, 0.02916753, 0.0],
            14.614642,
            "k-diffusion",
        );
        // f32 against f64 betas: a few 1e-7 apart, the same schedule.
        let df = with(
            &[14.614647, 1.6155834, 0.029167535, 0.0],
            14.614647,
            "diffusers",
        );
        assert_eq!(sampler_parts_at(&kd, &df), None);
        let d = header_diffs(&kd, &df);
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(
            d[0].describe(),
            "settings.sampler_impl k-diffusion vs diffusers"
        );
        let lead = with(
            &[4.1166983, 1.623693, 0.6983986, 0.0],
            4.236414,
            "diffusers",
        );
        assert_eq!(sampler_parts_at(&kd, &lead), Some(0));
        let later = with(
            &[14.614642, 2.9183085, 0.929, 0.0],
            14.614642,
            "k-diffusion",
        );
        assert_eq!(sampler_parts_at(&kd, &later), Some(1));
        assert!(
            header_diffs(&kd, &later)
                .iter()
                .any(|d| d.describe() == "settings.sigmas[1] 1.6155803 vs 2.9183085")
        );
    }

    #[test]
    fn header_fields() {
        let mut a = RunHeader::default();
        let mut b = RunHeader::default();
        assert!(header_diffs(&a, &b).is_empty());
        a.settings.steps = Some(20);
        b.settings.steps = Some(30);
        a.settings.seed = Some(1);
        b.settings.model_hashes.insert("sha256".into(), "ab".into());
        a.settings.model_hashes.insert("sha256".into(), "cd".into());
        let d = header_diffs(&a, &b);
        let f: Vec<(&str, bool)> = d.iter().map(|d| (d.field.as_str(), d.structural)).collect();
        assert_eq!(
            f,
            [
                ("settings.steps", true),
                ("settings.seed", false),
                ("settings.model_hashes.sha256", true)
            ]
        );
    }

    #[test]
    fn split_attention_slices_observed_in_the_run_end_are_compared() {
        let end = |slices: serde_json::Value| RunEnd {
            extra: [("attention_slices".to_string(), slices)].into(),
            ..RunEnd::default()
        };
        let roomy =
            end(serde_json::json!({"unet.a.attn1": 1, "unet.b.attn1": 1, "unet.c.attn1": 1}));
        let tight =
            end(serde_json::json!({"unet.a.attn1": 1, "unet.b.attn1": 4, "unet.c.attn1": 2}));
        assert!(run_end_diffs(Some(&roomy), Some(&roomy)).is_empty());
        let d = run_end_diffs(Some(&roomy), Some(&tight));
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0].describe(),
            "run_end.attention_slices[unet.b.attn1] 1 vs 4"
        );
        assert!(!d[0].structural);
        // One side observed nothing (no split attention there), or a side has no run end.
        assert!(run_end_diffs(Some(&RunEnd::default()), Some(&tight)).is_empty());
        assert!(run_end_diffs(None, Some(&tight)).is_empty());
    }
}
