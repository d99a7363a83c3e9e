//! The run header: what was run, where, and with which determinism-relevant settings.
//!
//! Stored as UTF-8 JSON in the first frame, so readers in any language can use it and so that
//! fields added later are simply ignored by older readers (unknown keys land in `extra` and are
//! written back unchanged). Every field is optional on read: a header of `{}` is valid, and a
//! known field of the wrong type is set aside rather than fatal ([`RunHeader::from_json`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// Settings of the recorded generation; `None` means "not applicable or not known".
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Model hashes by name (`sha256`, `a1111_old`, ...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub model_hashes: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cfg_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<u32>,
    /// Compute dtype of the model (`f32`, `f16`, `bf16`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// Noise generator with all its parameters (`torch-cuda:30,2048`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rng: Option<String>,
    /// Attention implementation and its chunking (`full`, `sliced:2`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attention: Option<String>,
    /// Capture policy the probe ran with (rules, sketch size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<String>,
    /// Settings this version has no field for yet.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A GPU's facts, read from the device at record time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GpuFacts {
    pub name: Option<String>,
    /// `"8.6"` style.
    pub compute_capability: Option<String>,
    pub sm_count: Option<u32>,
    pub max_threads_per_sm: Option<u32>,
    pub vram_total_bytes: Option<u64>,
    pub vram_free_bytes: Option<u64>,
    pub driver_version: Option<String>,
    pub cuda_version: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// The machine a trace was recorded on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeviceFacts {
    /// Compute device used (`cpu`, `cuda:0`, ...).
    pub device: Option<String>,
    pub os: Option<String>,
    pub arch: Option<String>,
    pub cpu_model: Option<String>,
    /// ISA extensions relevant to numerics (`avx2`, `fma`, `avx512f`, `neon`, ...).
    pub cpu_features: Vec<String>,
    pub logical_cpus: Option<u32>,
    /// Threads the computation was configured to use.
    pub compute_threads: Option<u32>,
    pub gpu: Option<GpuFacts>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Everything a trace says about its run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunHeader {
    pub sdtrace_version: Option<String>,
    pub candle_version: Option<String>,
    /// Creation time, milliseconds since the Unix epoch (UTC).
    pub created_unix_ms: Option<u64>,
    pub settings: Settings,
    pub device: DeviceFacts,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl RunHeader {
    /// A header stamped with this sdtrace's version and the current time.
    pub fn new(settings: Settings, device: DeviceFacts) -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .ok();
        RunHeader {
            sdtrace_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            candle_version: None,
            created_unix_ms: now,
            settings,
            device,
            extra: BTreeMap::new(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, numbers and maps always serialises.
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// Parse a run header. A known field of the wrong type (`"steps": "abc"`) does not make
    /// the header, and so the trace, unreadable: it is set aside under `"<name> (invalid)"` in
    /// the `extra` map of its object (shown by `info`, kept by `info --json`) and reads as
    /// absent. Only bytes that are not a JSON object are an error.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        let strict = match serde_json::from_slice(bytes) {
            Ok(h) => return Ok(h),
            Err(e) => e,
        };
        let Ok(Value::Object(mut top)) = serde_json::from_slice::<Value>(bytes) else {
            return Err(strict);
        };
        if let Some(Value::Object(s)) = top.get_mut("settings") {
            set_aside_invalid::<Settings>(s);
        }
        if let Some(Value::Object(d)) = top.get_mut("device") {
            if let Some(Value::Object(g)) = d.get_mut("gpu") {
                set_aside_invalid::<GpuFacts>(g);
            }
            set_aside_invalid::<DeviceFacts>(d);
        }
        set_aside_invalid::<RunHeader>(&mut top);
        serde_json::from_value(Value::Object(top)).map_err(|_| strict)
    }
}

/// Rename every field of `map` that `T` cannot read (a known field of the wrong type) to
/// `"<name> (invalid)"`, which `T` keeps in its `extra` map. Each field is tried alone: every
/// field of these structs is optional, so `{name: value}` reads exactly when the value does.
fn set_aside_invalid<T: serde::de::DeserializeOwned>(map: &mut serde_json::Map<String, Value>) {
    let bad: Vec<String> = map
        .iter()
        .filter(|(k, v)| {
            let one = serde_json::Map::from_iter([((*k).clone(), (*v).clone())]);
            serde_json::from_value::<T>(Value::Object(one)).is_err()
        })
        .map(|(k, _)| k.clone())
        .collect();
    for k in bad {
        if let Some(v) = map.remove(&k) {
            map.insert(format!("{k} (invalid)"), v);
        }
    }
}

/// How a recording ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Every planned step ran.
    #[default]
    Complete,
    /// Stopped on request (Ctrl-C, `--stop-on-nan`).
    Interrupted,
    /// Stopped by an error.
    Failed,
}

impl RunStatus {
    pub fn name(self) -> &'static str {
        match self {
            RunStatus::Complete => "complete",
            RunStatus::Interrupted => "interrupted",
            RunStatus::Failed => "failed",
        }
    }
}

/// A probed tensor that held NaN or infinite values.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NonFinite {
    pub key: String,
    pub step: Option<u32>,
    pub eval: u32,
    pub nan: u64,
    pub pos_inf: u64,
    pub neg_inf: u64,
}

/// The run-end frame (format 1.1): written when a recording stops, finished or not, so a
/// reader can tell a complete run from one that was stopped but closed cleanly.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RunEnd {
    pub status: RunStatus,
    /// Why the run stopped early (the error message, "interrupted (Ctrl-C)", ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_completed: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps_planned: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
    /// Probed tensors with NaN/Inf, in execution order (the first 1000).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nonfinite: Vec<NonFinite>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl RunEnd {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec())
    }

    /// One line for people: `complete, 20 of 20 steps in 12.3 s`.
    pub fn describe(&self) -> String {
        let mut s = self.status.name().to_string();
        if let Some(done) = self.steps_completed {
            match self.steps_planned {
                Some(n) => s += &format!(", {done} of {n} steps"),
                None => s += &format!(", {done} steps"),
            }
        }
        if let Some(ms) = self.elapsed_ms {
            s += &format!(" in {:.1} s", ms as f64 / 1000.0);
        }
        if let Some(r) = &self.reason {
            s += &format!(" ({r})");
        }
        if !self.nonfinite.is_empty() {
            s += &format!("; {} probed tensors held NaN/Inf", self.nonfinite.len());
        }
        s
    }
}

/// `YYYY-MM-DD HH:MM:SS UTC` for milliseconds since the Unix epoch.
pub fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_known_field_of_the_wrong_type_is_set_aside_not_fatal() {
        let h = RunHeader::from_json(
            br#"{"settings":{"steps":"abc","seed":1},"device":{"gpu":{"sm_count":"x"},"os":"linux"},"created_unix_ms":-5}"#,
        )
        .unwrap();
        assert_eq!(h.settings.steps, None);
        assert_eq!(h.settings.seed, Some(1));
        assert_eq!(h.settings.extra["steps (invalid)"], "abc");
        assert_eq!(h.device.os.as_deref(), Some("linux"));
        let gpu = h.device.gpu.unwrap();
        assert_eq!(gpu.extra["sm_count (invalid)"], "x");
        assert_eq!(h.created_unix_ms, None);
        assert!(h.extra.contains_key("created_unix_ms (invalid)"));
        assert!(RunHeader::from_json(b"[1]").is_err());
        assert!(RunHeader::from_json(b"{").is_err());
    }
    use super::*;

    #[test]
    fn unknown_fields_survive_and_empty_is_valid() {
        let json = br#"{"settings":{"seed":5,"future_knob":[1,2]},"device":{"gpu":{"sm_count":15,"new":true}},"later":"x"}"#;
        let h = RunHeader::from_json(json).unwrap();
        assert_eq!(h.settings.seed, Some(5));
        assert_eq!(h.settings.extra["future_knob"], serde_json::json!([1, 2]));
        assert_eq!(h.device.gpu.as_ref().unwrap().sm_count, Some(15));
        assert_eq!(h.extra["later"], "x");
        let back = RunHeader::from_json(&h.to_json()).unwrap();
        assert_eq!(back, h);
        assert_eq!(RunHeader::from_json(b"{}").unwrap(), RunHeader::default());
    }

    #[test]
    fn dates() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix_ms(1_795_700_000_000), "2026-11-26 13:33:20 UTC");
        assert_eq!(format_unix_ms(951_782_400_000), "2000-02-29 00:00:00 UTC");
    }
}
