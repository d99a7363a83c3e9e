//! Flags with a closed set of values, as [`clap::ValueEnum`]s: clap validates them, lists them
//! in `--help` and in its error, and the commands match on variants instead of strings. Each
//! converts into the library type it selects.

use clap::ValueEnum;
use sdtrace::analysis::FailOn;
use sdtrace::model::synth::SynthSize;
use sdtrace::report::Format;
use sdtrace::tui::graphics::Protocol;

/// `synth --format`: the layout of the written model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SynthFormat {
    /// A diffusers folder.
    Diffusers,
    /// One .safetensors file as A1111 loads, written by the documented key mapping.
    Ldm,
}

/// `diff --graphics`: the terminal graphics protocol of the image view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Graphics {
    /// Detect: kitty's protocol in kitty, Ghostty, WezTerm and Konsole; iTerm2's in iTerm2;
    /// none in tmux or under NO_COLOR.
    Auto,
    /// kitty's graphics protocol.
    Kitty,
    /// iTerm2's inline images.
    #[value(alias = "iterm2")]
    Iterm,
    /// Half-block pictures only.
    #[value(alias = "none")]
    Off,
}

impl Graphics {
    /// The protocol to use, `None` to detect it.
    pub fn protocol(self) -> Option<Protocol> {
        match self {
            Graphics::Auto => None,
            Graphics::Kitty => Some(Protocol::Kitty),
            Graphics::Iterm => Some(Protocol::Iterm),
            Graphics::Off => Some(Protocol::Off),
        }
    }
}

/// `report --format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    /// Plain text.
    Text,
    /// JSON (schema in docs/REPORT.md).
    Json,
    /// Markdown.
    #[value(alias = "md")]
    Markdown,
    /// JUnit XML.
    Junit,
    /// One self-contained HTML page.
    Html,
}

impl From<ReportFormat> for Format {
    fn from(f: ReportFormat) -> Format {
        match f {
            ReportFormat::Text => Format::Text,
            ReportFormat::Json => Format::Json,
            ReportFormat::Markdown => Format::Markdown,
            ReportFormat::Junit => Format::Junit,
            ReportFormat::Html => Format::Html,
        }
    }
}

/// `synth --size`: the shapes of the written model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SynthSizeArg {
    /// SD 1.x structure at tiny widths (tests, demos).
    Tiny,
    /// SD 1.5's real shapes (benchmarks).
    Sd15,
    /// SDXL's structure at tiny widths (two text encoders, text_time UNet).
    SdxlTiny,
    /// SDXL base's real shapes (10 GB of f32).
    Sdxl,
}

impl From<SynthSizeArg> for SynthSize {
    fn from(s: SynthSizeArg) -> SynthSize {
        match s {
            SynthSizeArg::Tiny => SynthSize::Tiny,
            SynthSizeArg::Sd15 => SynthSize::Sd15,
            SynthSizeArg::SdxlTiny => SynthSize::SdxlTiny,
            SynthSizeArg::Sdxl => SynthSize::Sdxl,
        }
    }
}

/// `record --dtype`: the model's compute dtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DTypeArg {
    /// 32-bit float.
    #[value(alias = "fp32", alias = "float32")]
    F32,
    /// 16-bit float (the webuis' half precision).
    #[value(alias = "fp16", alias = "half", alias = "float16")]
    F16,
    /// bfloat16 (GPUs only: candle's CPU backend has no bf16 convolutions).
    #[value(alias = "bfloat16")]
    Bf16,
}

impl From<DTypeArg> for sdtrace::pipeline::ModelDType {
    fn from(d: DTypeArg) -> Self {
        match d {
            DTypeArg::F32 => Self::F32,
            DTypeArg::F16 => Self::F16,
            DTypeArg::Bf16 => Self::BF16,
        }
    }
}

/// `record --prompt-syntax`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SyntaxArg {
    /// The webui's: (word), [word], (word:1.2), BREAK, 75-token chunks.
    A1111,
    /// diffusers': the text as is, one chunk.
    Plain,
}

impl From<SyntaxArg> for sdtrace::text::PromptSyntax {
    fn from(s: SyntaxArg) -> Self {
        match s {
            SyntaxArg::A1111 => Self::A1111,
            SyntaxArg::Plain => Self::Plain,
        }
    }
}

/// `report --fail-on`, `diff --fail-on`: what fails the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FailOnArg {
    /// Any record over tolerance, or a NaN/Inf mismatch (the default).
    FirstExceed,
    /// Latent error that grows step over step, or a NaN/Inf mismatch.
    Amplify,
    /// The final image over its tolerance, or under --min-psnr/--min-ssim (the default with
    /// those; without an image record: as first-exceed).
    Image,
}

impl From<FailOnArg> for FailOn {
    fn from(f: FailOnArg) -> FailOn {
        match f {
            FailOnArg::FirstExceed => FailOn::FirstExceed,
            FailOnArg::Amplify => FailOn::Amplify,
            FailOnArg::Image => FailOn::Image,
        }
    }
}

/// `record --sampler-impl`: whose sampler semantics to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SamplerImplArg {
    /// k-diffusion's (the webuis' and ComfyUI's).
    #[value(alias = "kdiffusion", alias = "webui")]
    KDiffusion,
    /// diffusers' schedulers, configured from the model's scheduler_config.json.
    Diffusers,
}

impl From<SamplerImplArg> for sdtrace::sampling::SamplerImpl {
    fn from(s: SamplerImplArg) -> Self {
        match s {
            SamplerImplArg::KDiffusion => Self::KDiffusion,
            SamplerImplArg::Diffusers => Self::Diffusers,
        }
    }
}

/// `record --schedule`: the webui's Schedule type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "lower")]
pub enum ScheduleArg {
    /// Karras σ spacing.
    Karras,
    /// Uniform spacing.
    Uniform,
    /// The sampler's own.
    Automatic,
}

impl ScheduleArg {
    /// The webui's name, as `params::resolve_sampler` reads it.
    pub fn webui_name(self) -> &'static str {
        match self {
            ScheduleArg::Karras => "Karras",
            ScheduleArg::Uniform => "Uniform",
            ScheduleArg::Automatic => "Automatic",
        }
    }
}

/// `record --emphasis`: the webui's Emphasis mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmphasisArg {
    /// Weights, then the original mean restored (the webui's default).
    Original,
    /// Weights only.
    #[value(alias = "nonorm", alias = "No norm")]
    NoNorm,
}

impl From<EmphasisArg> for sdtrace::pipeline::conditioning::Emphasis {
    fn from(e: EmphasisArg) -> Self {
        match e {
            EmphasisArg::Original => Self::Original,
            EmphasisArg::NoNorm => Self::NoNorm,
        }
    }
}

/// `record --prediction`: what the UNet predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PredictionArg {
    /// The noise ε (SD 1.x, SDXL, SD 2.x base).
    #[value(alias = "eps")]
    Epsilon,
    /// v (SD 2.x 768-v models).
    #[value(alias = "v_prediction", alias = "v-prediction")]
    V,
}

impl From<PredictionArg> for sdtrace::model::config::Prediction {
    fn from(p: PredictionArg) -> Self {
        match p {
            PredictionArg::Epsilon => Self::Epsilon,
            PredictionArg::V => Self::VPrediction,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name clap accepts means what the library's own parser makes of it.
    #[test]
    fn names_agree_with_the_library_parsers() {
        for f in ReportFormat::value_variants() {
            let name = f.to_possible_value().map(|v| v.get_name().to_string());
            let name = name.unwrap_or_default();
            assert_eq!(name.parse::<Format>(), Ok(Format::from(*f)), "{name}");
        }
        assert_eq!(
            ReportFormat::from_str("md", false),
            Ok(ReportFormat::Markdown)
        );
        for g in Graphics::value_variants() {
            let name = g.to_possible_value().map(|v| v.get_name().to_string());
            let name = name.unwrap_or_default();
            match g.protocol() {
                None => assert_eq!(name, "auto"),
                Some(p) => assert_eq!(name.parse::<Protocol>(), Ok(p), "{name}"),
            }
        }
        assert_eq!(Graphics::from_str("none", false), Ok(Graphics::Off));
        for f in FailOnArg::value_variants() {
            let name = f.to_possible_value().map(|v| v.get_name().to_string());
            let name = name.unwrap_or_default();
            assert_eq!(name.parse::<FailOn>(), Ok(FailOn::from(*f)), "{name}");
            assert_eq!(FailOn::from(*f).name(), name);
        }
        for s in SynthSizeArg::value_variants() {
            let name = s.to_possible_value().map(|v| v.get_name().to_string());
            let name = name.unwrap_or_default();
            assert_eq!(name.parse::<SynthSize>(), Ok(SynthSize::from(*s)), "{name}");
        }
        assert_eq!(Graphics::from_str("iterm2", false), Ok(Graphics::Iterm));
        // record's enums accept what the old string parsers did.
        use sdtrace::pipeline::conditioning::Emphasis;
        use sdtrace::pipeline::{ModelDType, parse_dtype};
        for name in [
            "f32", "fp32", "float32", "f16", "fp16", "half", "float16", "bf16", "bfloat16",
        ] {
            let d = DTypeArg::from_str(name, false).map(ModelDType::from);
            assert_eq!(d.ok(), parse_dtype(name).ok(), "{name}");
        }
        for name in ["original", "Original", "no-norm", "nonorm", "No norm"] {
            let e = EmphasisArg::from_str(name, true).map(Emphasis::from);
            assert_eq!(e.ok(), name.parse::<Emphasis>().ok(), "{name}");
        }
        for name in ["epsilon", "eps", "v", "v_prediction", "v-prediction"] {
            let p =
                PredictionArg::from_str(name, false).map(sdtrace::model::config::Prediction::from);
            assert_eq!(
                p.ok(),
                sdtrace::pipeline::model::parse_prediction(name).ok(),
                "{name}"
            );
        }
        for name in ["k-diffusion", "kdiffusion", "webui", "diffusers"] {
            assert!(SamplerImplArg::from_str(name, false).is_ok(), "{name}");
        }
        assert_eq!(
            ScheduleArg::from_str("karras", false),
            Ok(ScheduleArg::Karras)
        );
        assert_eq!(SyntaxArg::from_str("plain", false), Ok(SyntaxArg::Plain));
    }
}
