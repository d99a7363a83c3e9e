//! A1111 generation parameters ("infotext": the PNG `parameters` text, or the text the webui
//! shows under an image) → recording settings, with an account of what was applied, what is
//! known but not applied (and why), and what is unknown. No tensor library.
//!
//! [`InfotextSettings::parse`] reads the text with [`crate::image::parse_infotext`] (the
//! webui's own parsing rules) and types every field `sdtrace record` can use: prompt, negative
//! prompt, Steps, Sampler (+ Schedule type), CFG scale, Seed, Size, Clip skip, Model hash (as
//! an expected hash), ENSD (for Euler a), RNG (CPU, NV). Fields that describe the run but have
//! no sdtrace setting (Model, RNG: GPU, Version, …) are listed with the reason; everything else is unknown. Malformed values of
//! the typed fields are errors that name the field. The caller decides precedence: flags given
//! on the command line win over the infotext, which wins over the defaults.
//! [`parameters_of_png`] finds the `parameters` text of an A1111 PNG.
//!
//! The generator: the webui writes `RNG: CPU` or `RNG: NV` and no `RNG` field for its default
//! source, the GPU, whose noise depends on the card. An infotext without a generator sdtrace can
//! use sets [`InfotextSettings::gpu_source`] and is listed as not applied, so that the caller can
//! ask for the card instead of guessing. The PNGs sdtrace writes add `sdtrace RNG` (a field the
//! webui ignores: [`SDTRACE_RNG_KEY`]) for the generators the webui has no name for, and it is
//! read back here, so a recording's PNG names its own generator.
//!
//! [`resolve_sampler`] reads a `--sampler` value: sdtrace's names or the webui's (with and
//! without a schedule), through the same table the infotext's Sampler field goes through
//! ([`crate::image::sampler_from_a1111`]); unknown names get the nearest known one.

pub use crate::image::SDTRACE_RNG_KEY;
use crate::image::{ImageError, PARAMETERS_KEY, parse_infotext, png_text, sampler_from_a1111};
use crate::sampling::{RngSpec, SamplerKind};

/// The `--rng` spec of an `sdtrace RNG` value (the text before the parenthesised note).
pub fn sdtrace_rng_value(value: &str) -> Option<RngSpec> {
    let v = value.trim();
    let spec = match v.rsplit_once(" (") {
        Some((spec, _)) if v.ends_with(')') => spec,
        _ => v,
    };
    spec.trim().parse().ok()
}

/// Errors of reading a sampler name.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerNameError {
    #[error("unknown sampler '{name}'{} ({})", suggestion.as_ref().map_or(String::new(), |s| format!("; did you mean '{s}'?")), known_samplers())]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
    #[error("the webui's sampler '{name}'{} has no sdtrace equivalent ({})", schedule.as_ref().map_or(String::new(), |s| format!(" with schedule type '{s}'")), known_samplers())]
    Unsupported {
        name: String,
        schedule: Option<String>,
    },
    #[error(
        "'{name}' is sdtrace's name and includes its schedule; a schedule type goes with the webui's names, e.g. \"DPM++ 2M\" with schedule karras"
    )]
    ScheduleWithOurName { name: String },
    #[error(
        "'{name}' already names the schedule {named}; leave out the schedule type '{given}' or name the sampler without it"
    )]
    TwoSchedules {
        name: String,
        named: String,
        given: String,
    },
}

/// The webui's names of the samplers sdtrace has, without a schedule.
const WEBUI_BASES: [&str; 4] = ["DPM++ 2M", "Euler a", "Euler", "DDIM"];

/// The webui's combined names of the samplers sdtrace has (as written before webui 1.9).
const WEBUI_NAMES: [&str; 5] = ["DPM++ 2M Karras", "DPM++ 2M", "Euler a", "Euler", "DDIM"];

/// Schedules the webui writes after a sampler's name before 1.9 (and `Schedule type` after).
const NAMED_SCHEDULES: [&str; 3] = ["Karras", "Uniform", "Automatic"];

/// Samplers of the webui sdtrace does not have (for a clear refusal instead of a suggestion).
const WEBUI_OTHERS: [&str; 20] = [
    "DPM++ 2M SDE",
    "DPM++ 2M SDE Heun",
    "DPM++ 2S a",
    "DPM++ 3M SDE",
    "DPM++ SDE",
    "DPM2",
    "DPM2 a",
    "DPM fast",
    "DPM adaptive",
    "LMS",
    "Heun",
    "Restart",
    "PLMS",
    "UniPC",
    "LCM",
    "Euler CFG++",
    "DDIM CFG++",
    "DPM++ 2M CFG++",
    "DEIS",
    "IPNDM",
];

/// The sampler names `--sampler` takes, for messages.
pub fn known_samplers() -> String {
    format!(
        "sdtrace's names: {}; the webui's: DPM++ 2M Karras, DPM++ 2M (schedule karras or uniform), Euler a, Euler, DDIM",
        SamplerKind::ALL.map(|k| k.name()).join(", ")
    )
}

/// Levenshtein distance over characters.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diag + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diag = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The candidate nearest to `word` (case-insensitive), when it is within half its length.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.trim().to_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&w, &c.to_lowercase()), *c))
        .min_by_key(|(d, _)| *d)
        .filter(|(d, c)| 2 * d <= c.chars().count())
        .map(|(_, c)| c)
}

/// Case-insensitive match of `name` in `list`.
fn find_ci<'a>(name: &str, list: &[&'a str]) -> Option<&'a str> {
    list.iter().copied().find(|c| c.eq_ignore_ascii_case(name))
}

/// The sampler a `--sampler` value names: sdtrace's names (`dpmpp-2m-karras`, …) or the
/// webui's in any case, combined (`DPM++ 2M Karras`) or with `schedule` (the webui's `Schedule
/// type`: `DPM++ 2M` + `karras`). A plain `DPM++ 2M` is the uniform schedule, as in the webui
/// before 1.9 and in its infotexts; `automatic` is the webui's default for that sampler.
///
/// # Errors
/// An unknown name (with the nearest known one), a webui sampler sdtrace does not have, or a
/// schedule given twice or with one of sdtrace's names.
pub fn resolve_sampler(
    name: &str,
    schedule: Option<&str>,
) -> Result<SamplerKind, SamplerNameError> {
    let t = name.trim();
    let schedule = schedule.map(str::trim).filter(|s| !s.is_empty());
    if let Ok(kind) = t.parse::<SamplerKind>() {
        return match schedule {
            None => Ok(kind),
            Some(_) => Err(SamplerNameError::ScheduleWithOurName { name: t.into() }),
        };
    }
    // A trailing schedule word, as the webui wrote names before 1.9.
    let lower = t.to_lowercase();
    let split = NAMED_SCHEDULES.iter().find_map(|s| {
        let suffix = format!(" {}", s.to_lowercase());
        lower
            .strip_suffix(&suffix)
            .map(|_| (t[..t.len() - suffix.len()].trim_end(), *s))
    });
    let (base, schedule) = match (split, schedule) {
        (Some((_, named)), Some(given)) if !named.eq_ignore_ascii_case(given) => {
            return Err(SamplerNameError::TwoSchedules {
                name: t.into(),
                named: named.into(),
                given: given.into(),
            });
        }
        (Some((base, named)), _) => (base, Some(named.to_string())),
        (None, given) => (t, given.map(str::to_string)),
    };
    if let Some(webui) = find_ci(base, &WEBUI_BASES) {
        return sampler_from_a1111(webui, schedule.as_deref())
            .and_then(|ours| ours.parse().ok())
            .ok_or_else(|| SamplerNameError::Unsupported {
                name: webui.into(),
                schedule,
            });
    }
    if let Some(other) = find_ci(base, &WEBUI_OTHERS).or_else(|| find_ci(t, &WEBUI_OTHERS)) {
        return Err(SamplerNameError::Unsupported {
            name: other.into(),
            schedule,
        });
    }
    if schedule.is_some() && SamplerKind::ALL.iter().any(|k| k.name() == base) {
        return Err(SamplerNameError::ScheduleWithOurName { name: base.into() });
    }
    let ours = SamplerKind::ALL.map(|k| k.name());
    let candidates: Vec<&str> = ours.iter().chain(WEBUI_NAMES.iter()).copied().collect();
    Err(SamplerNameError::Unknown {
        name: t.into(),
        suggestion: nearest(t, &candidates).map(str::to_string),
    })
}

/// One infotext field as applied or set aside.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    /// The infotext's key (`Steps`, `Model hash`, …).
    pub key: String,
    /// Its value as written.
    pub value: String,
    /// What it became, or why it was not used.
    pub note: String,
}

/// The recording settings an infotext gives.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InfotextSettings {
    pub prompt: Option<String>,
    pub negative: Option<String>,
    pub steps: Option<u32>,
    pub sampler: Option<SamplerKind>,
    /// The webui's sampler (and schedule) when sdtrace has no equivalent.
    pub unsupported_sampler: Option<String>,
    pub cfg_scale: Option<f64>,
    pub seed: Option<u64>,
    pub size: Option<(u32, u32)>,
    pub clip_skip: Option<u32>,
    /// `Model hash` (8-hex old or 10-hex short SHA-256).
    pub model_hash: Option<String>,
    /// `Emphasis` (webui 1.7+ writes it when not "Original").
    pub emphasis: Option<crate::pipeline::conditioning::Emphasis>,
    /// `Downcast alphas_cumprod: True` (webui 1.8+ with the old fp16 schedule).
    pub alphas_fp16: Option<bool>,
    /// `RNG: CPU` or `RNG: NV` (the webui's GPU generator depends on the card, so `GPU` gives
    /// none).
    pub rng: Option<RngSpec>,
    /// `ENSD` for a sampler that draws noise after the initial one.
    pub ensd: Option<u64>,
    /// The infotext gives no generator sdtrace can use: the webui drew its noise with its
    /// default source, the GPU (no `RNG` field, or `RNG: GPU`), or with a source sdtrace does
    /// not know. GPU noise depends on the card, so the caller asks for one (`--card`) or for the
    /// CPU (`--rng torch-cpu`) instead of guessing.
    pub gpu_source: bool,
    pub applied: Vec<Field>,
    pub not_applied: Vec<Field>,
    pub unknown: Vec<Field>,
}

/// What an infotext without a usable generator needs from the command line.
pub const RNG_CHOICE: &str = "the webui's GPU source, whose noise depends on the card: give --card NAME|SMS,THREADS (or --rng torch-cuda:…) for the card that made the image, or --rng torch-cpu if the webui's source was CPU";

/// Fields the webui writes that describe a run but have no `sdtrace record` setting, and why.
fn not_applied_reason(key: &str, sampler: Option<SamplerKind>) -> Option<String> {
    Some(match key {
        "Model" => "the model comes from --model (Model hash, when present, is checked)".into(),
        "ENSD" | "Eta noise seed delta" => match sampler {
            Some(s) => format!(
                "no effect: {} draws no noise after the initial one",
                s.name()
            ),
            None => "not a whole number".into(),
        },
        "RNG" => RNG_CHOICE.into(),
        "Version" => "the webui version that made the image (kept in the header)".into(),
        "VAE" | "VAE hash" => "the VAE comes from the model".into(),
        "Schedule type" => "read together with Sampler".into(),
        "Batch size" | "Batch pos" => "sdtrace records one image".into(),
        "Eta" | "Eta DDIM" => "sdtrace's samplers use the webui's default eta".into(),
        "Token merging ratio"
        | "Hires upscale"
        | "Hires steps"
        | "Hires upscaler"
        | "Denoising strength"
        | "Face restoration"
        | "Lora hashes"
        | "TI hashes"
        | "Emphasis"
        | "Pad conds"
        | "Downcast alphas_cumprod" => "not reproduced by sdtrace record".into(),
        _ => return None,
    })
}

/// Settings keys whose presence marks a line as meant for settings.
const SETTINGS_KEYS: [&str; 7] = [
    "Steps",
    "Sampler",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Schedule type",
];

/// Refuse an infotext whose last line names generation settings (`Steps: abc, Size: 0x0`) but
/// has fewer than the 3 `Key: value` fields the webui needs to read it as settings: the webui
/// (and [`parse_infotext`], which follows it) would take that line for the prompt and run
/// with default settings, which is not what whoever wrote it meant.
pub fn check_settings_line(text: &str) -> Result<(), ImageError> {
    let last = text.trim().rsplit('\n').next().unwrap_or_default().trim();
    let pairs = crate::image::param_pairs(last);
    let named: Vec<&str> = pairs
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| SETTINGS_KEYS.contains(k))
        .collect();
    if !named.is_empty() && pairs.len() < 3 {
        return Err(ImageError::Infotext {
            field: "settings line".into(),
            what: format!(
                "the last line '{}' names {} but has {} 'Key: value' field{}; the webui reads a settings line only from 3 fields on (such as Steps: 20, Sampler: Euler a, Seed: 1) and would take this one for the prompt. Complete the settings line, or give the text with --prompt",
                crate::escape::printable(last),
                named.join(", "),
                pairs.len(),
                if pairs.len() == 1 { "" } else { "s" }
            ),
        });
    }
    Ok(())
}

impl InfotextSettings {
    /// Type an infotext's fields (see the module documentation).
    ///
    /// # Errors
    /// A typed field with an unreadable value ([`ImageError::Infotext`] names it), a size
    /// that is not a multiple of 8, or a last line that names settings but does not parse as
    /// a settings line ([`check_settings_line`]).
    pub fn parse(text: &str) -> Result<Self, ImageError> {
        check_settings_line(text)?;
        let p = parse_infotext(text)?;
        let mut out = InfotextSettings::default();
        let field = |key: &str, value: &str, note: String| Field {
            key: key.to_string(),
            value: value.to_string(),
            note,
        };
        if !p.prompt.is_empty() {
            out.prompt = Some(p.prompt.clone());
            out.applied
                .push(field("Prompt", &p.prompt, "--prompt".into()));
        }
        if !p.negative_prompt.is_empty() {
            out.negative = Some(p.negative_prompt.clone());
            out.applied.push(field(
                "Negative prompt",
                &p.negative_prompt,
                "--negative".into(),
            ));
        }
        let sampler_text = match (&p.a1111_sampler, &p.schedule_type) {
            (Some(s), Some(t)) => Some(format!("{s} ({t})")),
            (Some(s), None) => Some(s.clone()),
            _ => None,
        };
        match (&p.sampler, &sampler_text) {
            (Some(ours), Some(theirs)) => {
                let kind: SamplerKind =
                    ours.parse().map_err(|e: crate::sampling::SamplingError| {
                        ImageError::Infotext {
                            field: "Sampler".into(),
                            what: e.to_string(),
                        }
                    })?;
                out.sampler = Some(kind);
                out.applied
                    .push(field("Sampler", theirs, format!("--sampler {ours}")));
            }
            (None, Some(theirs)) => {
                out.unsupported_sampler = Some(theirs.clone());
                out.not_applied.push(field(
                    "Sampler",
                    theirs,
                    format!(
                        "sdtrace has no equivalent (it has {}); give --sampler",
                        SamplerKind::ALL.map(|k| k.name()).join(", ")
                    ),
                ));
            }
            _ => {}
        }
        let mut ours_rng: Option<(String, Option<RngSpec>)> = None;
        for (key, value) in &p.params {
            let applied = match key.as_str() {
                "Steps" => p.steps.map(|s| {
                    out.steps = Some(s);
                    format!("--steps {s}")
                }),
                "CFG scale" => p.cfg_scale.map(|c| {
                    out.cfg_scale = Some(c);
                    format!("--cfg {c}")
                }),
                "Seed" => p.seed.map(|s| {
                    out.seed = Some(s);
                    format!("--seed {s}")
                }),
                "Size" => match (p.width, p.height) {
                    (Some(w), Some(h)) => {
                        let s = format!("{w}x{h}");
                        let size = crate::pipeline::parse_size(&s).map_err(|what| {
                            ImageError::Infotext {
                                field: "Size".into(),
                                what,
                            }
                        })?;
                        out.size = Some(size);
                        Some(format!("--size {s}"))
                    }
                    _ => None,
                },
                "Clip skip" => p.clip_skip.map(|c| {
                    out.clip_skip = Some(c);
                    format!("--clip-skip {c}")
                }),
                "Model hash" => {
                    let h = value.trim().to_ascii_lowercase();
                    if (h.len() == 8 || h.len() == 10) && h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        out.model_hash = Some(h.clone());
                        Some(format!("--expect-hash {h}"))
                    } else {
                        out.not_applied.push(field(
                            key,
                            value,
                            "not an 8-hex (old) or 10-hex (SHA-256 short) hash".into(),
                        ));
                        continue;
                    }
                }
                "Emphasis" => value.trim().parse().ok().map(|e| {
                    out.emphasis = Some(e);
                    format!("--emphasis {}", e.name())
                }),
                "Downcast alphas_cumprod" => match value.trim() {
                    "True" => {
                        out.alphas_fp16 = Some(true);
                        Some("--a1111-alphas-fp16".to_string())
                    }
                    "False" => {
                        out.alphas_fp16 = Some(false);
                        Some("fp32 alphas_cumprod (the default)".to_string())
                    }
                    _ => None,
                },
                "ENSD" | "Eta noise seed delta" => match value.trim().parse::<u64>() {
                    Ok(n) if out.sampler.is_none_or(|k| k == SamplerKind::EulerA) => {
                        out.ensd = Some(n);
                        Some(format!("--ensd {n}"))
                    }
                    _ => None,
                },
                "RNG" => {
                    let spec = match value.trim() {
                        "CPU" => Some(RngSpec::TorchCpu),
                        "NV" => Some(RngSpec::A1111Nv),
                        "GPU" => None,
                        other => {
                            out.not_applied.push(field(
                                key,
                                value,
                                format!("'{other}' is none of the webui's sources (GPU, CPU, NV); {RNG_CHOICE}"),
                            ));
                            continue;
                        }
                    };
                    spec.map(|r| {
                        let note = format!("--rng {r}");
                        out.rng = Some(r);
                        note
                    })
                }
                SDTRACE_RNG_KEY => {
                    ours_rng = Some((value.clone(), sdtrace_rng_value(value)));
                    continue;
                }
                "Sampler" => continue,
                _ => None,
            };
            match applied {
                Some(note) => out.applied.push(field(key, value, note)),
                None => match not_applied_reason(key, out.sampler) {
                    Some(why) => out.not_applied.push(field(key, value, why)),
                    None => out.unknown.push(field(key, value, String::new())),
                },
            }
        }
        // sdtrace's own note of its generator, used when the webui's field names none.
        if let Some((value, spec)) = ours_rng {
            match (&out.rng, spec) {
                (None, Some(spec)) => {
                    out.applied.push(field(
                        SDTRACE_RNG_KEY,
                        &value,
                        format!("--rng {}", rng_flag_text(&spec)),
                    ));
                    out.rng = Some(spec);
                }
                (Some(_), _) => out.not_applied.push(field(
                    SDTRACE_RNG_KEY,
                    &value,
                    "the webui's RNG field wins".into(),
                )),
                _ => out.not_applied.push(field(
                    SDTRACE_RNG_KEY,
                    &value,
                    "not a generator sdtrace knows".into(),
                )),
            }
        }
        if out.rng.is_none() {
            out.gpu_source = true;
            if !out.not_applied.iter().any(|f| f.key == "RNG") {
                out.not_applied
                    .push(field("RNG", "(absent: GPU)", RNG_CHOICE.to_string()));
            }
        }
        Ok(out)
    }

    /// Mark the applied field `key` as overridden by the command-line flag `flag` (for the
    /// generator: say which flag settled an infotext that gave none).
    pub fn overridden(&mut self, key: &str, flag: &str) {
        if let Some(i) = self.applied.iter().position(|f| f.key == key) {
            let mut f = self.applied.remove(i);
            f.note = format!("{flag} given on the command line wins");
            self.not_applied.push(f);
        } else if key == "RNG"
            && self.gpu_source
            && let Some(f) = self.not_applied.iter_mut().find(|f| f.key == "RNG")
        {
            f.note = format!(
                "the webui's GPU source, whose noise depends on the card; {flag} given on the command line decides"
            );
        }
    }

    /// One line per group: `applied: Steps 20 (--steps 20), …`.
    pub fn describe(&self) -> Vec<String> {
        let short = |v: &str| {
            let one_line = v.replace('\n', " ");
            if one_line.chars().count() > 40 {
                format!("{}…", one_line.chars().take(39).collect::<String>())
            } else {
                one_line
            }
        };
        let mut lines = Vec::new();
        for (title, list, with_note) in [
            ("applied", &self.applied, true),
            ("not applied", &self.not_applied, true),
            ("unknown (ignored)", &self.unknown, false),
        ] {
            if list.is_empty() {
                continue;
            }
            let items: Vec<String> = list
                .iter()
                .map(|f| {
                    if with_note {
                        format!("{} '{}' ({})", f.key, short(&f.value), f.note)
                    } else {
                        format!("{} '{}'", f.key, short(&f.value))
                    }
                })
                .collect();
            lines.push(format!("{title}: {}", items.join("; ")));
        }
        lines
    }

    /// The account as JSON for the run header.
    pub fn to_json(&self) -> serde_json::Value {
        let list = |l: &[Field]| {
            l.iter()
                .map(|f| serde_json::json!({"key": f.key, "value": f.value, "note": f.note}))
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "applied": list(&self.applied),
            "not_applied": list(&self.not_applied),
            "unknown": list(&self.unknown),
        })
    }
}

/// A spec as `--rng` takes it, presets by name (`torch-cuda:gtx1070`).
pub fn rng_flag_text(spec: &RngSpec) -> String {
    match spec {
        RngSpec::TorchCuda {
            preset: Some(p), ..
        } => format!("torch-cuda:{p}"),
        other => other.to_string(),
    }
}

/// The `parameters` text of an A1111 PNG.
///
/// # Errors
/// Not a PNG, a damaged one, or one without a `parameters` text chunk.
pub fn parameters_of_png(bytes: &[u8]) -> Result<String, ImageError> {
    png_text(bytes)?
        .into_iter()
        .find(|(k, _)| k == PARAMETERS_KEY)
        .map(|(_, v)| v)
        .ok_or_else(|| ImageError::Infotext {
            field: PARAMETERS_KEY.into(),
            what: "the PNG has no 'parameters' text (it was not saved by the webui with generation parameters, or they were stripped)".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_typed_and_accounted_for() {
        let s = InfotextSettings::parse(
            "a cat\nNegative prompt: blurry\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1744694513, Size: 576x576, Model hash: 2700c435, Model: anything-v3, ENSD: 31337, Hires upscale: 2",
        )
        .unwrap();
        assert_eq!(s.prompt.as_deref(), Some("a cat"));
        assert_eq!(s.negative.as_deref(), Some("blurry"));
        assert_eq!(s.steps, Some(20));
        assert_eq!(s.sampler, Some(SamplerKind::DpmPp2mKarras));
        assert_eq!(s.cfg_scale, Some(7.0));
        assert_eq!(s.seed, Some(1_744_694_513));
        assert_eq!(s.size, Some((576, 576)));
        assert_eq!(s.model_hash.as_deref(), Some("2700c435"));
        let keys = |l: &[Field]| l.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
        assert_eq!(
            keys(&s.not_applied),
            ["Model", "ENSD", "Hires upscale", "RNG"]
        );
        // No RNG field: the webui's GPU source, which sdtrace does not guess.
        assert!(s.gpu_source);
        assert_eq!(s.not_applied[3].value, "(absent: GPU)");
        assert!(
            s.not_applied[3].note.contains("--card")
                && s.not_applied[3].note.contains("--rng torch-cpu"),
            "{:?}",
            s.not_applied
        );
        assert!(
            s.not_applied[1].note.contains("no effect"),
            "{:?}",
            s.not_applied
        );
        assert!(s.unknown.is_empty());
        assert_eq!((s.rng.clone(), s.ensd), (None, None));
        // Euler a takes ENSD; RNG: CPU and NV have generators, GPU needs the card.
        let a = InfotextSettings::parse("x\nSteps: 2, Sampler: Euler a, ENSD: 31337, RNG: CPU")
            .unwrap();
        assert_eq!(
            (a.rng.clone(), a.ensd),
            (Some(RngSpec::TorchCpu), Some(31337))
        );
        assert_eq!(
            keys(&a.applied),
            ["Prompt", "Sampler", "Steps", "ENSD", "RNG"]
        );
        let nv = InfotextSettings::parse("x\nSteps: 2, Sampler: Euler a, RNG: NV").unwrap();
        assert_eq!(nv.rng, Some(RngSpec::A1111Nv));
        assert!(!a.gpu_source && !nv.gpu_source);
        let gpu = InfotextSettings::parse("x\nSteps: 2, Sampler: Euler a, RNG: GPU").unwrap();
        assert_eq!(gpu.rng, None);
        assert!(gpu.gpu_source);
        assert_eq!(gpu.not_applied.len(), 1, "{:?}", gpu.not_applied);
        assert!(
            gpu.not_applied[0].note.contains("--card NAME|SMS,THREADS"),
            "{:?}",
            gpu.not_applied
        );
        let odd = InfotextSettings::parse("x\nSteps: 2, Sampler: Euler a, RNG: XPU").unwrap();
        assert!(odd.gpu_source && odd.not_applied[0].note.contains("'XPU' is none"));
        let e = InfotextSettings::parse(
            "x\nSteps: 2, Sampler: Euler, Emphasis: No norm, Downcast alphas_cumprod: True",
        )
        .unwrap();
        assert_eq!(
            e.emphasis,
            Some(crate::pipeline::conditioning::Emphasis::NoNorm)
        );
        assert_eq!(e.alphas_fp16, Some(true));
        assert_eq!(e.applied.len(), 5, "{:?}", e.applied);
        let lines = s.describe();
        assert!(
            lines[0].starts_with("applied: Prompt 'a cat' (--prompt)"),
            "{lines:?}"
        );
    }

    #[test]
    fn sdtrace_rng_field_names_the_generator_the_webui_cannot() {
        let s = InfotextSettings::parse(
            "x\nSteps: 2, Sampler: Euler, sdtrace RNG: \"torch-cuda:gtx1070 (the webui's GPU source, as drawn on a GeForce GTX 1070)\"",
        )
        .unwrap();
        assert_eq!(s.rng, RngSpec::parse_card("--card", "gtx1070").ok());
        assert!(!s.gpu_source);
        let f = s.applied.iter().find(|f| f.key == SDTRACE_RNG_KEY).unwrap();
        assert_eq!(f.note, "--rng torch-cuda:gtx1070");
        let own = InfotextSettings::parse(
            "x\nSteps: 2, Sampler: Euler, sdtrace RNG: sdtrace (sdtrace's own generator)",
        )
        .unwrap();
        assert_eq!(own.rng, Some(RngSpec::Sdtrace));
        // The webui's own field wins.
        let both = InfotextSettings::parse(
            "x\nSteps: 2, Sampler: Euler, RNG: CPU, sdtrace RNG: sdtrace (x)",
        )
        .unwrap();
        assert_eq!(both.rng, Some(RngSpec::TorchCpu));
        assert_eq!(both.not_applied[0].key, SDTRACE_RNG_KEY);
        assert_eq!(
            sdtrace_rng_value("file:a (b).npy (noise read from a file)"),
            Some(RngSpec::File("a (b).npy".into()))
        );
        assert_eq!(sdtrace_rng_value("mt19937"), None);
        // A command-line choice settles the account.
        let mut g = InfotextSettings::parse("x\nSteps: 2, Sampler: Euler, Seed: 1").unwrap();
        g.overridden("RNG", "--card");
        assert!(
            g.not_applied[0]
                .note
                .ends_with("--card given on the command line decides")
        );
    }

    #[test]
    fn a_short_line_that_names_settings_is_refused() {
        for text in [
            "Steps: abc, Size: 0x0",
            "a cat\nSteps: 20",
            "a cat\nNegative prompt: ugly\nSeed: 1, Size: 512x512",
        ] {
            let e = InfotextSettings::parse(text).unwrap_err().to_string();
            assert!(e.contains("settings line") && e.contains("3 fields"), "{e}");
        }
        // A prompt that merely has a colon, and a whole settings line, are fine.
        assert!(InfotextSettings::parse("a cat: sitting, photo").is_ok());
        let ok = InfotextSettings::parse("a cat\nSteps: 3, Seed: 1, Size: 64x64").unwrap();
        assert_eq!(ok.steps, Some(3));
    }

    #[test]
    fn sampler_names_of_sdtrace_and_the_webui() {
        use SamplerKind::*;
        for (name, schedule, want) in [
            ("dpmpp-2m-karras", None, DpmPp2mKarras),
            ("DPM++ 2M Karras", None, DpmPp2mKarras),
            ("dpm++ 2m karras", None, DpmPp2mKarras),
            ("DPM++ 2M", Some("karras"), DpmPp2mKarras),
            ("DPM++ 2M", Some("Automatic"), DpmPp2mKarras),
            ("DPM++ 2M Karras", Some("Karras"), DpmPp2mKarras),
            ("DPM++ 2M", None, DpmPp2m),
            ("DPM++ 2M", Some("uniform"), DpmPp2m),
            ("Euler a", None, EulerA),
            ("euler a", Some("automatic"), EulerA),
            ("Euler", None, Euler),
            ("euler", None, Euler),
            ("DDIM", None, Ddim),
        ] {
            assert_eq!(
                resolve_sampler(name, schedule),
                Ok(want),
                "{name} {schedule:?}"
            );
        }
        let e = resolve_sampler("dpm++2m karas", None).unwrap_err();
        assert_eq!(
            e,
            SamplerNameError::Unknown {
                name: "dpm++2m karas".into(),
                suggestion: Some("DPM++ 2M Karras".into())
            }
        );
        assert!(
            e.to_string()
                .starts_with("unknown sampler 'dpm++2m karas'; did you mean 'DPM++ 2M Karras'?"),
            "{e}"
        );
        let e = resolve_sampler("eulr-a", None).unwrap_err().to_string();
        assert!(
            e.contains("; did you mean 'euler-a'? (sdtrace's names: dpmpp-2m-karras"),
            "{e}"
        );
        let far = resolve_sampler("qwertyuiop", None).unwrap_err().to_string();
        assert!(
            !far.contains("did you mean") && far.contains("DPM++ 2M Karras"),
            "{far}"
        );
        assert!(matches!(
            resolve_sampler("DPM++ SDE Karras", None),
            Err(SamplerNameError::Unsupported { .. })
        ));
        assert!(matches!(
            resolve_sampler("Euler", Some("Karras")),
            Err(SamplerNameError::Unsupported { .. })
        ));
        assert!(matches!(
            resolve_sampler("dpmpp-2m", Some("karras")),
            Err(SamplerNameError::ScheduleWithOurName { .. })
        ));
        assert!(matches!(
            resolve_sampler("DPM++ 2M Karras", Some("uniform")),
            Err(SamplerNameError::TwoSchedules { .. })
        ));
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
    }

    #[test]
    fn unsupported_samplers_and_bad_sizes_are_reported() {
        let s = InfotextSettings::parse(
            "x\nSteps: 30, Sampler: DPM++ SDE Karras, CFG scale: 5, Seed: 1, Size: 512x512, Foo: bar",
        )
        .unwrap();
        assert_eq!(s.sampler, None);
        assert_eq!(s.unsupported_sampler.as_deref(), Some("DPM++ SDE Karras"));
        assert_eq!(s.unknown[0].key, "Foo");
        let e = InfotextSettings::parse("x\nSteps: 30, Sampler: Euler, Seed: 1, Size: 500x512")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Size") && e.contains("multiple of 8"), "{e}");
    }
}
