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

use crate::image::{ImageError, PARAMETERS_KEY, parse_infotext, png_text};
use crate::sampling::{RngSpec, SamplerKind};

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
    pub applied: Vec<Field>,
    pub not_applied: Vec<Field>,
    pub unknown: Vec<Field>,
}

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
        "RNG" => "the webui's GPU generator depends on the card: give --rng torch-cuda:CARD \
                  (e.g. gtx1070, t4) or --rng device on that GPU"
            .into(),
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

impl InfotextSettings {
    /// Type an infotext's fields (see the module documentation).
    ///
    /// # Errors
    /// A typed field with an unreadable value ([`ImageError::Infotext`] names it) or a size
    /// that is not a multiple of 8.
    pub fn parse(text: &str) -> Result<Self, ImageError> {
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
                        _ => None,
                    };
                    spec.map(|r| {
                        let note = format!("--rng {r}");
                        out.rng = Some(r);
                        note
                    })
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
        Ok(out)
    }

    /// Mark the applied field `key` as overridden by the command-line flag `flag`.
    pub fn overridden(&mut self, key: &str, flag: &str) {
        if let Some(i) = self.applied.iter().position(|f| f.key == key) {
            let mut f = self.applied.remove(i);
            f.note = format!("{flag} given on the command line wins");
            self.not_applied.push(f);
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
        assert_eq!(keys(&s.not_applied), ["Model", "ENSD", "Hires upscale"]);
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
        let gpu = InfotextSettings::parse("x\nSteps: 2, Sampler: Euler a, RNG: GPU").unwrap();
        assert_eq!(gpu.rng, None);
        assert!(
            gpu.not_applied[0].note.contains("torch-cuda:CARD"),
            "{:?}",
            gpu.not_applied
        );
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
