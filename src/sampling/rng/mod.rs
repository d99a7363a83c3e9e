//! The `--rng` generators: which one a run uses ([`RngSpec`], parsed from the flag), building it
//! ([`RngSpec::build`]), and the way a run draws from it ([`RunRng`]: A1111's order, ENSD).
//!
//! Generators: `sdtrace` (the default, [`crate::sampling::SdtraceNoise`]), `torch-cpu`
//! ([`torch_cpu`]: bit-exact PyTorch CPU noise), `torch-cuda:SMS[,THREADS_PER_SM]` or
//! `torch-cuda:PRESET` ([`philox`]: PyTorch's CUDA noise on a card with that many SMs; named
//! cards in [`presets`]), `a1111-nv` (A1111's uncapped "NV" Philox), `file:PATH` ([`file`](mod@file)) and
//! `device` ([`device`]: candle's own device generator, refused on the CPU). Invariants: a
//! spec's text form ([`std::fmt::Display`]) parses back to the same spec; every generator is a
//! pure function of its parameters (recorded in the trace header) and of the shapes asked for.

pub mod agree;
pub mod device;
pub mod file;
pub mod philox;
pub use sdtrace_core::cards as presets;
pub mod torch_cpu;

use super::noise::{NoiseSource, SdtraceNoise};
use super::{Result, SamplingError};
use candle_core::Device;
pub use device::DeviceNoise;
pub use file::FileNoise;
pub use philox::{A1111NvNoise, TorchCudaNoise};
pub use presets::GpuPreset;
use serde_json::{Value, json};
use std::path::PathBuf;
pub use torch_cpu::TorchCpuNoise;

/// Threads per SM when `torch-cuda:SMS` gives none (compute capability 6.x, 7.0, 8.0, 9.0).
pub const DEFAULT_THREADS_PER_SM: u32 = 2048;

/// Errors of choosing, building or reading a generator; each names the flag or file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    #[error("{flag} '{value}': {what}\n{}", valid_forms())]
    BadSpec {
        /// The flag that gave it (`--rng`, `--compare`).
        flag: &'static str,
        value: String,
        what: String,
    },
    #[error("{flag} '{value}': {what}\n{}", card_forms())]
    BadCard {
        /// The flag that gave it (`--card`, `--cards`).
        flag: &'static str,
        value: String,
        what: String,
    },
    #[error("--rng file:{}: {what}", path.display())]
    File { path: PathBuf, what: String },
    #[error(
        "--rng device: candle's CPU generator cannot be seeded, so noise drawn with it could never be reproduced; on the CPU use --rng torch-cpu (PyTorch's CPU noise, bit-exact) or sdtrace, or run on a GPU with --device cuda (or metal)"
    )]
    DeviceOnCpu,
    #[error("--rng device: {what}")]
    Device { what: String },
    #[error("--ensd {ensd}: seed {seed} + ENSD overflows a 64-bit seed; use a smaller ENSD")]
    EnsdOverflow { seed: u64, ensd: u64 },
    #[error(
        "--ensd {0}: the noise comes from a file (--rng file:...), so there is no seed to offset; the ancestral draws are the file's sampler.noise.N tensors. Leave out --ensd"
    )]
    EnsdWithFile(u64),
}

/// The valid `--rng` forms and presets, for error messages and help.
pub fn valid_forms() -> String {
    format!(
        "valid forms: sdtrace (default), torch-cpu, torch-cuda:SMS[,THREADS_PER_SM] (threads default {DEFAULT_THREADS_PER_SM}, a multiple of 256), torch-cuda:PRESET (or PRESET alone), a1111-nv, file:PATH (.npy or .safetensors), device (GPU only).\npresets: {}",
        presets::names()
    )
}

/// The valid card forms (`--card`, `explain --cards`), for error messages.
pub fn card_forms() -> String {
    format!(
        "give a card name or SMS[,THREADS_PER_SM] (threads default {DEFAULT_THREADS_PER_SM}, a multiple of 256; e.g. 15,2048 for a GTX 1070).\ncards: {}",
        presets::names()
    )
}

/// Which generator a run uses.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum RngSpec {
    /// sdtrace's own device-independent generator.
    #[default]
    Sdtrace,
    /// `torch.randn` on the CPU, bit-exact.
    TorchCpu,
    /// `torch.randn(device="cuda")` on a card with `sms` SMs of `threads_per_sm` threads.
    TorchCuda {
        sms: u32,
        threads_per_sm: u32,
        /// The preset it was named by, if any.
        preset: Option<&'static str>,
    },
    /// A1111's "NV" generator (uncapped Philox).
    A1111Nv,
    /// Noise read from a file.
    File(PathBuf),
    /// The device's own generator.
    Device,
}

impl RngSpec {
    /// `torch-cuda` for a named card.
    pub fn preset(p: &'static GpuPreset) -> Self {
        RngSpec::TorchCuda {
            sms: p.sms,
            threads_per_sm: p.threads_per_sm,
            preset: Some(p.name),
        }
    }

    /// A short name for tables: the preset, `cpu`, `nv`, or the spec.
    pub fn label(&self) -> String {
        match self {
            RngSpec::TorchCuda {
                preset: Some(p), ..
            } => p.to_string(),
            RngSpec::TorchCpu => "cpu".into(),
            RngSpec::A1111Nv => "a1111-nv".into(),
            other => other.to_string(),
        }
    }

    /// The generator seeded with `seed` (`device` is used by `device` only).
    pub fn build(
        &self,
        seed: u64,
        device: &Device,
    ) -> std::result::Result<Box<dyn NoiseSource>, RngError> {
        Ok(match self {
            RngSpec::Sdtrace => Box::new(SdtraceNoise::new(seed)),
            RngSpec::TorchCpu => Box::new(TorchCpuNoise::new(seed)),
            RngSpec::TorchCuda {
                sms,
                threads_per_sm,
                preset,
            } => Box::new(TorchCudaNoise::new(seed, *sms, *threads_per_sm, *preset)),
            RngSpec::A1111Nv => Box::new(A1111NvNoise::new(seed)),
            RngSpec::File(p) => Box::new(FileNoise::open(p)?),
            RngSpec::Device => Box::new(DeviceNoise::new(seed, device)?),
        })
    }
}

impl std::fmt::Display for RngSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RngSpec::Sdtrace => write!(f, "sdtrace"),
            RngSpec::TorchCpu => write!(f, "torch-cpu"),
            RngSpec::TorchCuda {
                sms,
                threads_per_sm,
                ..
            } => write!(f, "torch-cuda:{sms},{threads_per_sm}"),
            RngSpec::A1111Nv => write!(f, "a1111-nv"),
            RngSpec::File(p) => write!(f, "file:{}", p.display()),
            RngSpec::Device => write!(f, "device"),
        }
    }
}

impl std::str::FromStr for RngSpec {
    type Err = RngError;

    fn from_str(s: &str) -> std::result::Result<Self, RngError> {
        RngSpec::parse_as("--rng", s)
    }
}

impl RngSpec {
    /// Parse a generator given with `flag` (`--rng`, `--compare`): errors name that flag.
    pub fn parse_as(flag: &'static str, s: &str) -> std::result::Result<Self, RngError> {
        let bad = |what: String| RngError::BadSpec {
            flag,
            value: s.to_string(),
            what,
        };
        let t = s.trim();
        if let Some(path) = t.strip_prefix("file:") {
            if path.is_empty() {
                return Err(bad("file: needs a path, e.g. file:noise.npy".into()));
            }
            return Ok(RngSpec::File(PathBuf::from(path)));
        }
        let lower = t.to_ascii_lowercase();
        match lower.as_str() {
            "sdtrace" => return Ok(RngSpec::Sdtrace),
            "torch-cpu" | "cpu" => return Ok(RngSpec::TorchCpu),
            "a1111-nv" | "nv" => return Ok(RngSpec::A1111Nv),
            "device" => return Ok(RngSpec::Device),
            "torch-cuda" | "cuda" => {
                return Err(bad(
                    "torch-cuda needs the card: torch-cuda:SMS[,THREADS_PER_SM] or torch-cuda:PRESET".into(),
                ));
            }
            _ => {}
        }
        let Some(arg) = lower
            .strip_prefix("torch-cuda:")
            .or_else(|| lower.strip_prefix("cuda:"))
        else {
            return match presets::find(&lower) {
                Some(p) => Ok(RngSpec::preset(p)),
                None => Err(bad("unknown generator".into())),
            };
        };
        card(arg).map_err(bad)
    }

    /// Parse a card given with `flag` (`--card`, `--cards`): a preset name or
    /// `SMS[,THREADS_PER_SM]`, as `torch-cuda:` takes it.
    pub fn parse_card(flag: &'static str, s: &str) -> std::result::Result<Self, RngError> {
        let lower = s.trim().to_ascii_lowercase();
        let arg = lower
            .strip_prefix("torch-cuda:")
            .unwrap_or(&lower)
            .to_string();
        card(&arg).map_err(|what| RngError::BadCard {
            flag,
            value: s.to_string(),
            what,
        })
    }

    /// Elements per grid-stride wave of a `torch-cuda` generator (SMs × threads per SM).
    pub fn wave(&self) -> Option<u64> {
        match self {
            RngSpec::TorchCuda {
                sms,
                threads_per_sm,
                ..
            } => Some(*sms as u64 * (*threads_per_sm as u64 / 256 * 256)),
            _ => None,
        }
    }
}

/// `torch-cuda`'s argument: a preset, or SMS[,THREADS_PER_SM].
fn card(arg: &str) -> std::result::Result<RngSpec, String> {
    if let Some(p) = presets::find(arg) {
        return Ok(RngSpec::preset(p));
    }
    let (sms, threads) = match arg.split_once(',') {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (arg.trim(), None),
    };
    let sms: u32 = sms
        .parse()
        .map_err(|_| format!("'{arg}' is neither a preset nor SMS[,THREADS_PER_SM]"))?;
    if !(1..=4096).contains(&sms) {
        return Err(format!("{sms} SMs: give 1 to 4096"));
    }
    let threads_per_sm = match threads {
        None => DEFAULT_THREADS_PER_SM,
        Some(t) => t
            .parse()
            .map_err(|_| format!("threads per SM '{t}' is not a number (2048, 1536 or 1024)"))?,
    };
    if threads_per_sm == 0 || threads_per_sm % 256 != 0 || threads_per_sm > 4096 {
        return Err(format!(
            "{threads_per_sm} threads per SM: PyTorch launches blocks of 256 threads, so give a multiple of 256 up to 4096 (2048 for compute capability 6.x/7.0/8.0/9.0, 1024 for 7.5, 1536 for 8.6/8.9/12.0)"
        ));
    }
    Ok(RngSpec::TorchCuda {
        sms,
        threads_per_sm,
        preset: None,
    })
}

impl NoiseSource for FileNoise {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn spec(&self) -> String {
        format!("file:{}", self.path().display())
    }

    fn params(&self) -> Value {
        FileNoise::params(self)
    }

    fn check_draws(&self, shapes: &[Vec<usize>]) -> Result<()> {
        Ok(self.check(shapes)?)
    }

    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.take(shape)?)
    }
}

impl NoiseSource for DeviceNoise {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn params(&self) -> Value {
        DeviceNoise::params(self)
    }

    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        super::noise::numel(shape)?;
        Ok(self.draw(shape)?)
    }
}

/// The noise of one run, drawn the way AUTOMATIC1111 draws it: the initial noise from the
/// generator seeded with the run's seed, then every later (ancestral) draw from the same
/// generator continuing — or, when ENSD ("eta noise seed delta") is not 0, from a fresh
/// generator seeded with seed + ENSD (A1111 1.6+ `ImageRNG.first()`; older versions call
/// `torch.manual_seed(seed + ENSD)` after the initial noise, which draws the same values).
/// Only samplers that draw noise during sampling (Euler a) ever reach the second generator.
pub struct RunRng {
    spec: RngSpec,
    seed: u64,
    ensd: u64,
    device: Device,
    first: Box<dyn NoiseSource>,
    /// The seed + ENSD generator, made at the first draw after the initial noise (so that a
    /// `device` generator is not reseeded before the initial noise is drawn).
    later: Option<Box<dyn NoiseSource>>,
    draws: u64,
}

impl RunRng {
    /// Check and build the generator of a run now; later ones are made when first needed.
    pub fn new(
        spec: &RngSpec,
        seed: u64,
        ensd: u64,
        device: &Device,
    ) -> std::result::Result<Self, RngError> {
        if ensd != 0 {
            if matches!(spec, RngSpec::File(_)) {
                return Err(RngError::EnsdWithFile(ensd));
            }
            seed.checked_add(ensd)
                .ok_or(RngError::EnsdOverflow { seed, ensd })?;
        }
        Ok(RunRng {
            first: spec.build(seed, device)?,
            spec: spec.clone(),
            seed,
            ensd,
            device: device.clone(),
            later: None,
            draws: 0,
        })
    }

    /// Draws made so far (the initial noise is draw 1).
    pub fn draws(&self) -> u64 {
        self.draws
    }
}

impl NoiseSource for RunRng {
    fn name(&self) -> &'static str {
        self.first.name()
    }

    fn spec(&self) -> String {
        self.first.spec()
    }

    fn check_draws(&self, shapes: &[Vec<usize>]) -> Result<()> {
        self.first.check_draws(shapes)
    }

    fn params(&self) -> Value {
        let mut p = self.first.params();
        if let Value::Object(m) = &mut p {
            m.insert("ensd".into(), json!(self.ensd));
            m.insert(
                "ancestral".into(),
                json!(if self.ensd == 0 {
                    "draws after the initial noise continue the same generator".to_string()
                } else {
                    format!(
                        "draws after the initial noise come from a new generator seeded with seed + ensd = {}",
                        self.seed.saturating_add(self.ensd)
                    )
                }),
            );
        }
        p
    }

    fn randn(&mut self, shape: &[usize]) -> Result<Vec<f32>> {
        let out = if self.draws == 0 || self.ensd == 0 {
            self.first.randn(shape)?
        } else {
            let later = match &mut self.later {
                Some(l) => l,
                None => self.later.insert(
                    self.spec
                        .build(self.seed.saturating_add(self.ensd), &self.device)?,
                ),
            };
            later.randn(shape)?
        };
        self.draws += 1;
        Ok(out)
    }
}

/// `--rng` value parser for clap.
pub fn parse_flag(s: &str) -> std::result::Result<RngSpec, String> {
    s.parse::<RngSpec>().map_err(|e| e.to_string())
}

/// `--card` value parser for clap: a card name or `SMS[,THREADS_PER_SM]`.
pub fn parse_card_flag(s: &str) -> std::result::Result<RngSpec, String> {
    RngSpec::parse_card("--card", s).map_err(|e| e.to_string())
}

impl From<RngError> for SamplingError {
    fn from(e: RngError) -> Self {
        SamplingError::Rng(Box::new(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print_back() {
        for (text, want) in [
            ("sdtrace", RngSpec::Sdtrace),
            ("torch-cpu", RngSpec::TorchCpu),
            ("CPU", RngSpec::TorchCpu),
            ("a1111-nv", RngSpec::A1111Nv),
            ("device", RngSpec::Device),
            (
                "torch-cuda:15",
                RngSpec::TorchCuda {
                    sms: 15,
                    threads_per_sm: 2048,
                    preset: None,
                },
            ),
            (
                "torch-cuda:40,1024",
                RngSpec::TorchCuda {
                    sms: 40,
                    threads_per_sm: 1024,
                    preset: None,
                },
            ),
            (
                "torch-cuda:gtx1070",
                RngSpec::TorchCuda {
                    sms: 15,
                    threads_per_sm: 2048,
                    preset: Some("gtx1070"),
                },
            ),
            (
                "T4",
                RngSpec::TorchCuda {
                    sms: 40,
                    threads_per_sm: 1024,
                    preset: Some("t4"),
                },
            ),
            ("file:a/Noise.npy", RngSpec::File("a/Noise.npy".into())),
        ] {
            let got: RngSpec = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            // The text form parses back to the same generator (presets print as numbers).
            let back: RngSpec = got.to_string().parse().unwrap();
            assert_eq!(back.to_string(), got.to_string());
        }
        assert_eq!("torch-cuda:t4".parse::<RngSpec>().unwrap().label(), "t4");
    }

    #[test]
    fn bad_specs_list_the_valid_forms() {
        for (text, part) in [
            ("mt19937", "unknown generator"),
            ("torch-cuda", "needs the card"),
            ("torch-cuda:gtx9999", "neither a preset"),
            ("torch-cuda:0", "1 to 4096"),
            ("torch-cuda:15,1000", "multiple of 256"),
            ("torch-cuda:15,x", "not a number"),
            ("file:", "needs a path"),
        ] {
            let e = text.parse::<RngSpec>().unwrap_err().to_string();
            assert!(e.contains(part), "{text}: {e}");
            assert!(
                e.contains("torch-cuda:SMS[,THREADS_PER_SM]") && e.contains("gtx1070"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn cards_and_flags_are_named_in_errors() {
        let t4 = RngSpec::parse_card("--card", "T4").unwrap();
        assert_eq!(t4.label(), "t4");
        assert_eq!(t4.wave(), Some(40_960));
        let custom = RngSpec::parse_card("--card", "15,2048").unwrap();
        assert_eq!(custom.to_string(), "torch-cuda:15,2048");
        assert_eq!(
            RngSpec::parse_card("--card", "torch-cuda:gtx1070").unwrap(),
            RngSpec::parse_as("--rng", "gtx1070").unwrap()
        );
        assert_eq!(RngSpec::TorchCpu.wave(), None);
        for (text, part) in [("cpu", "neither a preset"), ("15,1000", "multiple of 256")] {
            let e = RngSpec::parse_card("--card", text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--card '{text}'")), "{e}");
            assert!(e.contains(part) && e.contains("cards: p2000"), "{e}");
        }
        let e = RngSpec::parse_as("--compare", "gtx9999")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--compare 'gtx9999': unknown generator"),
            "{e}"
        );
        assert!(!e.contains("--rng '"), "{e}");
    }

    #[test]
    fn ensd_switches_generators_after_the_initial_noise() {
        let dev = Device::Cpu;
        let spec = RngSpec::TorchCpu;
        let mut plain = RunRng::new(&spec, 10, 0, &dev).unwrap();
        let mut ensd = RunRng::new(&spec, 10, 31337, &dev).unwrap();
        let shape = [1, 4, 4, 4];
        assert_eq!(plain.randn(&shape).unwrap(), ensd.randn(&shape).unwrap());
        // Without ENSD the generator continues; with it, seed + ENSD starts afresh.
        let mut cont = TorchCpuNoise::new(10);
        cont.draw(64);
        assert_eq!(plain.randn(&shape).unwrap(), cont.draw(64));
        let mut fresh = TorchCpuNoise::new(10 + 31337);
        assert_eq!(ensd.randn(&shape).unwrap(), fresh.draw(64));
        assert_eq!(ensd.randn(&shape).unwrap(), fresh.draw(64));
        assert_eq!(ensd.draws(), 3);
        assert_eq!(ensd.params()["ensd"], 31337);
        assert_eq!(ensd.spec(), "torch-cpu");
        assert!(matches!(
            RunRng::new(&RngSpec::File("x.npy".into()), 1, 5, &dev),
            Err(RngError::EnsdWithFile(5))
        ));
        assert!(matches!(
            RunRng::new(&spec, u64::MAX, 5, &dev),
            Err(RngError::EnsdOverflow { .. })
        ));
        assert!(matches!(
            RunRng::new(&RngSpec::Device, 1, 0, &dev),
            Err(RngError::DeviceOnCpu)
        ));
    }
}
