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
use crate::trace::RunHeader;
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
}
