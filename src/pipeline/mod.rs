//! The text-to-image pipeline behind `sdtrace record`: load a diffusers model folder, encode the
//! prompts, draw the initial noise, sample, decode, and record all of it into one trace.
//!
//! [`record`] owns the run's life cycle in three steps after the pure [`RecordSpec::check`]:
//! *prepare* reads and checks the model files, the scheduler config and the prompts' tokens,
//! builds the sampler, opens the device and loads the weights; *plan* computes the header and
//! what will be captured and its size ([`estimate`]) and refuses to start when that exceeds
//! the limit or the free disk; *execute* creates the trace and runs. Nothing before execute
//! creates a file. The header holds every determinism-relevant setting: seeds, RNG, dtype,
//! attention and its chunking plan, thread count, device facts, model file hashes, sigmas and
//! timesteps. Whatever happens
//! after the trace exists — success, a stop request between steps (Ctrl-C, NaN with
//! `stop_on_nan`), or an error — the trace is closed with a run-end frame saying how the run
//! ended, so it is always a valid file. I/O to the terminal is the caller's: progress comes
//! through the [`Monitor`] callbacks. Candle types stay in this module and `model/`.

pub mod conditioning;
pub mod estimate;
pub mod gpu;
pub mod model;
pub mod perturb;
mod sizes;

pub use sizes::{SIZES_HELP, parse_sizes};

use crate::host::host_facts;
use crate::model::ModelError;
use crate::model::attention::{AttentionImpl, Numerics};
use crate::model::clip::{ClipConfig, ClipTextModel};
use crate::model::config::UNetConfig;
use crate::model::observe::{observe, trace_dtype};
use crate::model::unet::UNet;
use crate::model::vae::Vae;
use crate::probe::{Policy, Probe, ProbeError};
use crate::sampling::diffusers::SchedulerConfig;
use crate::sampling::noise::randn;
use crate::sampling::{
    AlphasPrecision, Batching, DiscreteSchedule, KarrasBounds, NoiseSource, RngSpec, RunRng,
    Sampler, SamplerImpl, SamplerKind, SamplerSpec, SamplingError, UNetDenoiser,
};
use crate::text::{PromptSyntax, TextError, tokenize_prompt};
use crate::trace::{
    NonFinite, RunEnd, RunHeader, RunStatus, Settings, TraceError, TraceWriter, WriterOptions,
    WrittenTrace,
};
use candle_core::{DType, Device, Tensor};
use estimate::{Estimate, PlannedRecord};
use perturb::{Perturb, Perturbation};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of a recording. Those before the trace exists leave no file behind; [`Run`] means
/// the trace was written and closed, marked failed; [`Unclosed`] that it could not be closed.
///
/// [`Run`]: PipelineError::Run
/// [`Unclosed`]: PipelineError::Unclosed
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Setting(String),
    #[error("model folder {dir}: {what}")]
    ModelFolder { dir: PathBuf, what: String },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Text(#[from] TextError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Trace(#[from] TraceError),
    #[error(transparent)]
    Gpu(#[from] gpu::GpuError),
    #[error("conditioning: {0}")]
    Conditioning(String),
    #[error(
        "the trace would be about {} but --max-trace-size is {}: capture less (--capture light, or rules such as 'unet.*=stats'), fewer steps or a smaller size, or raise --max-trace-size",
        human(*estimate), human(*limit)
    )]
    TooLarge { estimate: u64, limit: u64 },
    #[error(
        "the trace would be about {} but only {} are free on the disk of {}: free space, capture less, or write elsewhere with -o",
        human(*estimate), human(*free), path.display()
    )]
    DiskFull {
        estimate: u64,
        free: u64,
        path: PathBuf,
    },
    #[error("the run failed; its trace {} was closed and marked failed", trace.display())]
    Run {
        trace: PathBuf,
        #[source]
        source: Box<PipelineError>,
    },
    /// The run failed and closing the trace failed too (typically a full disk): the file holds
    /// the records written before the failure but no run-end and no index.
    #[error(
        "the run failed, and its trace {} could not be closed either ({close}; it holds the records written before the error, readable as a truncated trace that `sdtrace info` counts, but no run-end and no index)",
        trace.display()
    )]
    Unclosed {
        trace: PathBuf,
        #[source]
        source: Box<PipelineError>,
        close: String,
    },
}

impl From<candle_core::Error> for PipelineError {
    fn from(e: candle_core::Error) -> Self {
        PipelineError::Model(e.into())
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// `1.5 GiB` style: the one byte formatter, [`crate::inspect::human_bytes`], under the name the
/// pipeline's messages use.
pub use crate::inspect::human_bytes as human;

/// Where the model runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl std::str::FromStr for DeviceChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, idx) = s.split_once(':').unwrap_or((s, "0"));
        let idx: usize = idx
            .parse()
            .map_err(|_| format!("'{s}': the device index must be a number (cuda:0)"))?;
        match name {
            "cpu" if !s.contains(':') => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(idx)),
            "metal" => Ok(DeviceChoice::Metal(idx)),
            _ => Err(format!("'{s}': expected cpu, cuda, cuda:N or metal")),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
            DeviceChoice::Metal(i) => write!(f, "metal:{i}"),
        }
    }
}

impl DeviceChoice {
    /// Open the device; a build without the backend says how to get one.
    pub fn open(self) -> Result<Device> {
        let feature = match self {
            DeviceChoice::Cpu => return Ok(Device::Cpu),
            DeviceChoice::Cuda(i) if cfg!(feature = "cuda") => {
                return Device::new_cuda(i).map_err(|e| {
                    PipelineError::Setting(format!("--device {self}: cannot open the GPU: {e}"))
                });
            }
            DeviceChoice::Metal(i) if cfg!(feature = "metal") => {
                return Device::new_metal(i).map_err(|e| {
                    PipelineError::Setting(format!("--device {self}: cannot open the GPU: {e}"))
                });
            }
            DeviceChoice::Cuda(_) => "cuda",
            DeviceChoice::Metal(_) => "metal",
        };
        Err(PipelineError::Setting(format!(
            "--device {self}: this sdtrace was built without {feature} support; rebuild with `cargo build --release --features {feature}`"
        )))
    }
}

/// The model's compute dtype (candle's).
pub type ModelDType = DType;

/// Compute threads candle's CPU kernels use (set `RAYON_NUM_THREADS` before the first use).
pub fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Parse `--dtype`.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    match s {
        "f32" | "fp32" | "float32" => Ok(DType::F32),
        "f16" | "fp16" | "half" | "float16" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(format!("'{s}': expected f32, f16 or bf16")),
    }
}

/// Largest image side `--size` accepts.
pub const MAX_SIDE: u32 = 16384;

/// Parse `--size WxH` (multiples of 8, from 8 to [`MAX_SIDE`]).
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}': expected WIDTHxHEIGHT, e.g. 512x512"))?;
    let num = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("'{s}': expected WIDTHxHEIGHT, e.g. 512x512"))
    };
    let (w, h) = (num(w)?, num(h)?);
    for (name, v) in [("width", w), ("height", h)] {
        if v == 0 || v % 8 != 0 || v > MAX_SIDE {
            // The nearest valid sizes, within 8..=MAX_SIDE.
            let lo = (v / 8 * 8).clamp(8, MAX_SIDE);
            let hi = (v / 8 * 8 + 8).clamp(8, MAX_SIDE);
            let suggest = if lo == hi {
                format!("try {lo}")
            } else {
                format!("try {lo} or {hi}")
            };
            return Err(format!(
                "'{s}': the {name} {v} must be a multiple of 8 between 8 and {MAX_SIDE} (the VAE works on 8x8 pixel blocks); {suggest}"
            ));
        }
    }
    Ok((w, h))
}

/// Everything a recording is made from.
#[derive(Clone, Debug)]
pub struct RecordSpec {
    /// A diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`) or a
    /// single-file LDM checkpoint (`.safetensors`).
    pub model: PathBuf,
    pub prompt: String,
    pub negative: String,
    pub syntax: PromptSyntax,
    pub steps: u32,
    pub sampler: SamplerKind,
    /// k-diffusion's semantics (the webuis', default) or diffusers' schedulers.
    pub sampler_impl: SamplerImpl,
    pub cfg_scale: f64,
    pub seed: u64,
    /// The noise generator (`--rng`); its spec and parameters go into the header.
    pub rng: RngSpec,
    /// A1111's eta noise seed delta: draws after the initial noise (Euler a's per-step noise)
    /// come from a generator seeded with seed + ENSD; 0 continues the same generator.
    pub ensd: u64,
    pub width: u32,
    pub height: u32,
    /// A1111's "Clip skip": 1 = the last layer.
    pub clip_skip: u32,
    pub device: DeviceChoice,
    pub dtype: DType,
    /// cuBLAS reduced-precision GEMMs (`--gemm-reduced-precision`; CUDA only, default none).
    pub gemm_reduced_precision: gpu::GemmPrecision,
    /// The attention implementation (`--attention`; `split:auto` already resolved against
    /// the VRAM budget).
    pub attention: AttentionImpl,
    /// Compute threads in effect (recorded; the caller configures the thread pool).
    pub threads: Option<u32>,
    /// The capture rules and how they were given (`light`, `full`, or the rules text).
    pub policy: Policy,
    pub capture: String,
    pub perturb: Vec<Perturbation>,
    pub stop_on_nan: bool,
    /// Refuse to start when the estimated trace is larger.
    pub max_trace_size: u64,
    /// Single-file checkpoints: prediction type, expected hash, tokenizer, unknown keys.
    pub model_options: model::ModelOptions,
    /// What the webui did differently (recorded in the header), and the VRAM budget
    /// `split:auto` plans for.
    pub a1111: A1111Options,
    /// SDXL's size and crop conditioning (refused for other models unless the default).
    pub size_conditioning: SizeConditioning,
}

/// SDXL's size and crop conditioning: the six ids its UNet embeds beside the pooled text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SizeConditioning {
    /// The original size (width, height); `None`: the image size, as the webui sets it.
    pub original_size: Option<(u32, u32)>,
    /// The crop's top-left corner (top, left): the webui's `sdxl_crop_top`/`sdxl_crop_left`,
    /// (0, 0) by default.
    pub crop: (u32, u32),
}

impl SizeConditioning {
    /// The ids in the UNet's order for a `width`×`height` image: original (h, w), crop (top,
    /// left), target (h, w), the target being the image size.
    pub fn time_ids(&self, width: u32, height: u32) -> [u32; 6] {
        let (ow, oh) = self.original_size.unwrap_or((width, height));
        [oh, ow, self.crop.0, self.crop.1, height, width]
    }
}

impl RecordSpec {
    /// What is wrong with the spec on its own, before any file or device is touched: a pure
    /// check, each refusal naming the flag and what to give instead.
    pub fn check(&self) -> Result<()> {
        let bad = |s: String| Err(PipelineError::Setting(s));
        if self.clip_skip == 0 {
            return bad("--clip-skip 0: give 1 or more (1 = the last layer, the webui's default; 2 = the penultimate)".into());
        }
        if self.steps == 0 {
            return bad("--steps 0: give at least 1 sampler step".into());
        }
        for (name, v) in [("width", self.width), ("height", self.height)] {
            if v == 0 || v % 8 != 0 || v > MAX_SIDE {
                return bad(format!(
                    "--size {}x{}: the {name} must be a multiple of 8 between 8 and {MAX_SIDE}",
                    self.width, self.height
                ));
            }
        }
        if self.dtype == DType::BF16 && self.device == DeviceChoice::Cpu {
            return bad("--dtype bf16: candle's CPU backend has no bf16 convolutions; use --dtype f32 or f16 on the CPU, or bf16 on a GPU".into());
        }
        if self.sampler_impl == SamplerImpl::Diffusers
            && (self.a1111.alphas_fp16 || self.a1111.old_karras)
        {
            return bad("--sampler-impl diffusers: the webui's fp16 alphas and old Karras bounds are k-diffusion settings; drop them or use --sampler-impl k-diffusion".into());
        }
        Ok(())
    }
}

/// AUTOMATIC1111 compatibility switches.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct A1111Options {
    /// ᾱ stored in fp16, as the webui did before 1.8 (σ_min/σ_max and every σ shift).
    pub alphas_fp16: bool,
    /// Karras σ bounds (0.1, 10), as the webui used before 2023-01-05.
    pub old_karras: bool,
    /// How token weights are applied (the webui's "Emphasis mode").
    pub emphasis: conditioning::Emphasis,
    /// Free VRAM `--attention split:auto` plans for (Doggettx's query slices).
    pub vram_budget: Option<u64>,
    /// How cond and uncond go through the UNet (the webui: [cond; uncond], separate calls
    /// when their token counts differ).
    pub batching: Batching,
    /// The A1111 infotext the settings came from and its account (applied / not applied /
    /// unknown fields), for the header.
    pub infotext: Option<serde_json::Value>,
}

/// What the run will do, as told to the [`Monitor`] before it starts.
#[derive(Clone, Debug)]
pub struct RunPlan {
    pub header: RunHeader,
    pub estimate: Estimate,
    /// Probe points offered per sampler step.
    pub points_per_step: usize,
    pub free_disk: Option<u64>,
}

/// Progress and control of a run. Every method has a do-nothing default.
pub trait Monitor {
    /// The plan, after every check and before the trace is created.
    fn plan(&mut self, _plan: &RunPlan) {}
    /// A stage begins: `loading`, `text`, `sampling`, `decoding`.
    fn stage(&mut self, _name: &str) {}
    /// Sampler step `step` (0-based) of `steps` is done; it took `took`.
    fn step(&mut self, _step: u32, _steps: u32, _took: Duration) {}
    /// A probed tensor held NaN/Inf.
    fn nonfinite(&mut self, _n: &NonFinite) {}
    /// Polled between steps and stages: `Some(reason)` stops the run cleanly.
    fn stop_requested(&mut self) -> Option<String> {
        None
    }
}

/// A monitor that reports nothing and never stops.
pub struct Quiet;
impl Monitor for Quiet {}

/// A finished recording (complete or stopped early).
#[derive(Clone, Debug)]
pub struct Recording {
    pub trace: WrittenTrace,
    pub end: RunEnd,
    pub header: RunHeader,
    /// The decoded image as f32 [B, 3, H, W] in [0, 1], row-major (complete runs).
    pub image: Option<(Vec<usize>, Vec<f32>)>,
}

/// The model files of a diffusers folder.
struct ModelFiles {
    unet_config: UNetConfig,
    unet_weights: PathBuf,
    clip_config: ClipConfig,
    clip_weights: PathBuf,
    vae_weights: PathBuf,
    vae_dir: PathBuf,
    tokenizer_dir: PathBuf,
    /// `scheduler/scheduler_config.json`, validated (absent: `None`).
    scheduler: Option<SchedulerConfig>,
    /// SDXL's second text encoder and tokenizer (`None` for SD 1.x/2.x).
    xl: Option<XlFiles>,
}

/// SDXL's `text_encoder_2/` and `tokenizer_2/`.
struct XlFiles {
    clip_config: ClipConfig,
    clip_weights: PathBuf,
    tokenizer_dir: PathBuf,
}

fn first_existing(dir: &Path, sub: &str, names: &[&str]) -> Result<PathBuf> {
    if let Some(p) = names
        .iter()
        .map(|n| dir.join(sub).join(n))
        .find(|p| p.is_file())
    {
        return Ok(p);
    }
    // diffusers' save_pretrained shards weights above 10 GB (an f32 SDXL UNet) into
    // NAME-0000K-of-0000N files listed in NAME.index.json.
    let sharded = names
        .iter()
        .find(|n| dir.join(sub).join(format!("{n}.index.json")).is_file());
    let what = match sharded {
        Some(n) => format!(
            "{sub}/{n} is sharded ({sub}/{n}.index.json); sdtrace reads one safetensors file per part: save it unsharded (save_pretrained(..., max_shard_size=\"20GB\")) or merge the shards into {sub}/{n}"
        ),
        None => format!(
            "no {sub}/{} (a diffusers folder has unet/, vae/, text_encoder/, tokenizer/ and scheduler/, SDXL also text_encoder_2/ and tokenizer_2/; `sdtrace synth --out DIR` writes one)",
            names.join(" or ")
        ),
    };
    Err(PipelineError::ModelFolder {
        dir: dir.to_path_buf(),
        what,
    })
}

/// The text encoder weights of a diffusers folder.
const CLIP_WEIGHTS: [&str; 2] = ["model.safetensors", "model.fp16.safetensors"];

impl ModelFiles {
    fn find(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(PipelineError::ModelFolder {
                dir: dir.to_path_buf(),
                what: "not a folder".into(),
            });
        }
        let unet_cfg = first_existing(dir, "unet", &["config.json"])?;
        let mut unet_config = UNetConfig::from_diffusers_file(&unet_cfg)?;
        if unet_config.addition.is_some() {
            refuse_refiner(dir)?;
        }
        let clip_cfg = first_existing(dir, "text_encoder", &["config.json"])?;
        let clip_json = crate::model::read_json(&clip_cfg)?;
        first_existing(dir, "vae", &["config.json"])?;
        let vae_weights = first_existing(
            dir,
            "vae",
            &[
                "diffusion_pytorch_model.safetensors",
                "diffusion_pytorch_model.fp16.safetensors",
            ],
        )?;
        let sched = dir.join("scheduler/scheduler_config.json");
        let scheduler = if sched.is_file() {
            Some(SchedulerConfig::read(&sched)?)
        } else {
            None
        };
        if let Some(s) = &scheduler {
            unet_config.prediction = s.prediction;
        }
        let clip_config = ClipConfig::from_hf_json(&clip_json, &clip_cfg)?;
        let xl = match unet_config.addition {
            Some(added) => {
                let cfg2 = first_existing(dir, "text_encoder_2", &["config.json"])?;
                let clip2 = ClipConfig::from_hf_json(&crate::model::read_json(&cfg2)?, &cfg2)?;
                let width = clip_config.hidden_size + clip2.hidden_size;
                let pooled = added.pooled_dim();
                if width != unet_config.cross_attention_dim || pooled != clip2.projection_dim {
                    return Err(PipelineError::ModelFolder {
                        dir: dir.to_path_buf(),
                        what: format!(
                            "the SDXL parts do not fit: the UNet takes {}-wide text and a {}-wide pooled embedding, the encoders give {} + {} = {width} and {} (text_encoder_2/config.json projection_dim); a refiner or a mixed-up folder?",
                            unet_config.cross_attention_dim,
                            pooled.map_or("?".into(), |p| p.to_string()),
                            clip_config.hidden_size,
                            clip2.hidden_size,
                            clip2
                                .projection_dim
                                .map_or("none".into(), |p| p.to_string()),
                        ),
                    });
                }
                Some(XlFiles {
                    clip_weights: first_existing(dir, "text_encoder_2", &CLIP_WEIGHTS)?,
                    clip_config: clip2,
                    tokenizer_dir: dir.join("tokenizer_2"),
                })
            }
            None => None,
        };
        Ok(ModelFiles {
            unet_config,
            unet_weights: first_existing(
                dir,
                "unet",
                &[
                    "diffusion_pytorch_model.safetensors",
                    "diffusion_pytorch_model.fp16.safetensors",
                ],
            )?,
            clip_config,
            clip_weights: first_existing(dir, "text_encoder", &CLIP_WEIGHTS)?,
            vae_weights,
            vae_dir: dir.join("vae"),
            tokenizer_dir: dir.join("tokenizer"),
            scheduler,
            xl,
        })
    }
}

/// An SDXL refiner (its UNet is conditioned on an aesthetic score; it has only
/// `text_encoder_2`) is refused: it refines a base model's latents rather than making an
/// image from noise, and sdtrace's pipeline is text-to-image.
fn refuse_refiner(dir: &Path) -> Result<()> {
    let index = dir.join("model_index.json");
    let aesthetic = index.is_file()
        && crate::model::read_json(&index)?
            .get("requires_aesthetics_score")
            .and_then(|v| v.as_bool())
            == Some(true);
    let only_second = !dir.join("text_encoder/config.json").is_file()
        && dir.join("text_encoder_2/config.json").is_file();
    if aesthetic || only_second {
        return Err(PipelineError::ModelFolder {
            dir: dir.to_path_buf(),
            what: format!(
                "an SDXL refiner ({}); sdtrace record runs text-to-image models (SDXL base and its fine-tunes), not the refiner's image-to-image pass: give the base model's folder",
                if aesthetic {
                    "model_index.json has requires_aesthetics_score: true"
                } else {
                    "it has text_encoder_2/ but no text_encoder/"
                }
            ),
        });
    }
    Ok(())
}

/// XXH3-64 of a file, streamed.
fn file_hash(path: &Path) -> Result<String> {
    use std::io::Read;
    let io = |e| ModelError::Io {
        path: path.to_path_buf(),
        op: "cannot read",
        source: e,
    };
    crate::files::require_regular(path).map_err(io)?;
    let mut f = std::fs::File::open(path).map_err(io)?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:016x}", h.digest()))
}

/// Free bytes on the file system holding `path` (its folder), when the OS tells.
pub fn free_disk(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a valid NUL-terminated path and `st` is a properly sized out-buffer
        // that statvfs fills completely when it returns 0.
        let rc = unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return None;
        }
        // SAFETY: statvfs returned 0, so the buffer is initialised.
        let st = unsafe { st.assume_init() };
        #[allow(clippy::useless_conversion)] // the field types differ between platforms
        Some(u64::from(st.f_bavail).saturating_mul(u64::from(st.f_frsize)))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// The run header's generation settings for `spec` (the sampler fills its own part).
fn settings(
    spec: &RecordSpec,
    model: &model::ModelSource,
    tokenizer: &str,
    attention: &AttentionImpl,
) -> Result<Settings> {
    let mut s = Settings {
        model: spec
            .model
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
        prompt: Some(spec.prompt.clone()),
        negative_prompt: Some(spec.negative.clone()),
        seed: Some(spec.seed),
        width: Some(spec.width),
        height: Some(spec.height),
        batch_size: Some(1),
        dtype: Some(dtype_name(spec.dtype).into()),
        attention: Some(attention_name(attention)),
        capture: Some(format!("{} = {}", spec.capture, spec.policy.describe())),
        ..Settings::default()
    };
    model.describe(&mut s, tokenizer)?;
    s.extra.insert("clip_skip".into(), json!(spec.clip_skip));
    s.extra.insert(
        "prompt_syntax".into(),
        json!(match spec.syntax {
            PromptSyntax::A1111 => "a1111",
            PromptSyntax::Plain => "plain",
        }),
    );
    s.extra
        .insert("model_path".into(), json!(spec.model.display().to_string()));
    s.extra.insert(
        "perturb".into(),
        json!(
            spec.perturb
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
        ),
    );
    s.extra.insert(
        "numerics".into(),
        json!({"gelu": "erf", "attention_dtype": "model dtype, f32 softmax accumulation for 16-bit", "emphasis": match (spec.syntax, spec.a1111.emphasis) {
            (PromptSyntax::Plain, _) => "none (plain prompt syntax)",
            (_, conditioning::Emphasis::Original) => "a1111 original (mean restored)",
            (_, conditioning::Emphasis::NoNorm) => "a1111 no-norm (no mean restoration)",
        }, "cond_uncond": spec.a1111.batching.describe()}),
    );
    s.extra.insert(
        "a1111".into(),
        json!({
            "alphas_cumprod": if spec.a1111.alphas_fp16 { "fp16 (webui before 1.8)" } else { "fp32" },
            "karras_bounds": if spec.a1111.old_karras { "old (0.1, 10): webui before 2023-01-05" } else { "the model's" },
            "emphasis": spec.a1111.emphasis.name(),
            "cond_uncond": match spec.a1111.batching {
                Batching::UncondFirst => "sdtrace ([uncond; cond], padded)",
                Batching::A1111 => "webui ([cond; uncond], separate calls when token counts differ)",
            },
            "vram_budget_bytes": spec.a1111.vram_budget,
        }),
    );
    // The row order of the batched CFG call ([uncond; cond] or the webui's [cond; uncond]),
    // and the order the trace stores its rows in (always [uncond; cond]).
    s.extra.insert(
        "cfg_rows".into(),
        json!(match spec.a1111.batching {
            Batching::UncondFirst => "uncond,cond",
            Batching::A1111 => "cond,uncond",
        }),
    );
    s.extra.insert(
        "cfg_rows_stored".into(),
        json!(crate::probe::CFG_ROWS_STORED),
    );
    if let Some(info) = &spec.a1111.infotext {
        s.extra.insert("infotext".into(), info.clone());
    }
    Ok(s)
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::F64 => "f64",
        _ => "f32",
    }
}

fn attention_name(a: &AttentionImpl) -> String {
    match a {
        AttentionImpl::Full => "full".into(),
        AttentionImpl::Sliced(n) => format!("sliced:{n}"),
        AttentionImpl::Split { budget: Some(b) } => format!("split:{b}"),
        AttentionImpl::Split { budget: None } => "split:unlimited".into(),
        AttentionImpl::SubQuad { q_chunk, kv_chunk } => format!("subquad:{q_chunk},{kv_chunk}"),
    }
}

/// The k-diffusion sampler runs SD's LDM schedule (1000 scaled-linear betas from 0.00085 to
/// 0.012): a folder whose scheduler says otherwise is refused rather than silently ignored.
fn kdiffusion_follows(c: &SchedulerConfig) -> Result<()> {
    let sd = SchedulerConfig::sd();
    let same = c.num_train_timesteps == sd.num_train_timesteps
        && c.beta_schedule == sd.beta_schedule
        && (c.beta_start - sd.beta_start).abs() < 1e-12
        && (c.beta_end - sd.beta_end).abs() < 1e-12;
    if same {
        return Ok(());
    }
    Err(PipelineError::Setting(format!(
        "{}: the scheduler's betas ({} from {} to {} over {} steps) are not SD's, which the k-diffusion sampler (the webuis') uses; record with --sampler-impl diffusers to follow the file",
        c.file
            .as_ref()
            .map_or("scheduler_config.json".into(), |f| f.display().to_string()),
        c.beta_schedule.name(),
        c.beta_start,
        c.beta_end,
        c.num_train_timesteps
    )))
}

/// SDXL's uncond is zeros when the negative prompt is empty, as in the webui and diffusers.
fn zero_negative(spec: &RecordSpec) -> bool {
    spec.negative.is_empty()
}

/// The header's `sdxl` facts: the size and crop conditioning, and how the text was encoded.
fn sdxl_facts(spec: &RecordSpec, files: &model::ModelSource) -> serde_json::Value {
    let ids = spec.size_conditioning.time_ids(spec.width, spec.height);
    json!({
        "original_size": [ids[0], ids[1]],
        "crop_coords_top_left": [ids[2], ids[3]],
        "target_size": [ids[4], ids[5]],
        "time_ids": ids,
        "original_size_source": if spec.size_conditioning.original_size.is_some() { "--sdxl-original-size" } else { "the image size (the webui's)" },
        "text": "per 75-token chunk: text_encoder and text_encoder_2 hidden states before their last layer, emphasis on each, concatenated along the features",
        "context_dim": files.clip_config().hidden_size + files.clip_2_config().map_or(0, |c| c.hidden_size),
        "pooled": "text_encoder_2's text_projection at the end token of the first chunk, unweighted",
        "pooled_dim": files.clip_2_config().and_then(|c| c.projection_dim),
        "zero_negative": zero_negative(spec),
        "clip_skip": format!("{} not applied: SDXL takes each encoder's penultimate layer (the webui's default)", spec.clip_skip),
    })
}

/// Every record the run will offer the probe, in order.
fn planned_records(
    unet: &UNet,
    sampler: &Sampler,
    spec: &RecordSpec,
    (clip, clip_2): (&ClipConfig, Option<&ClipConfig>),
    text_calls: usize,
    (tokens_u, tokens): (usize, usize),
) -> (Vec<PlannedRecord>, usize) {
    let (lh, lw) = (spec.height as usize / 8, spec.width as usize / 8);
    let latent = vec![1, 4, lh, lw];
    let f32r = |key: &str, step, shape: Vec<usize>| PlannedRecord {
        key: key.into(),
        step,
        shape,
        dtype: crate::DType::F32,
    };
    let model_dtype = trace_dtype(spec.dtype).unwrap_or(crate::DType::F32);
    let rec = |key: String, shape: Vec<usize>| PlannedRecord {
        key,
        step: None,
        shape,
        dtype: model_dtype,
    };
    // Each encoder call: its layers (SD 1.x/2.x: up to Clip skip; SDXL: all, for the pooled
    // embedding), the final layer norm, and SDXL's projection.
    let layers_run = if clip_2.is_some() {
        clip.num_hidden_layers
    } else {
        clip.num_hidden_layers
            .saturating_sub(spec.clip_skip.max(1) as usize - 1)
    };
    let mut encoders = vec![("text_encoder", clip, layers_run)];
    encoders.extend(clip_2.map(|c| ("text_encoder_2", c, c.num_hidden_layers)));
    let mut out = Vec::new();
    for _ in 0..text_calls {
        for (prefix, c, layers) in &encoders {
            for l in 0..*layers {
                out.push(rec(
                    format!("{prefix}.encoder.layers.{l}"),
                    vec![1, 77, c.hidden_size],
                ));
            }
            out.push(rec(
                format!("{prefix}.final_layer_norm"),
                vec![1, 77, c.hidden_size],
            ));
            if clip_2.is_some()
                && let Some(p) = c.projection_dim
            {
                out.push(rec(format!("{prefix}.text_projection"), vec![1, p]));
            }
        }
    }
    if let Some(p) = clip_2.and_then(|c| c.projection_dim) {
        for key in ["text.pooled.uncond", "text.pooled.cond"] {
            out.push(rec(key.into(), vec![1, p]));
        }
    }
    let width = clip.hidden_size + clip_2.map_or(0, |c| c.hidden_size);
    for (key, n) in [("text.uncond", tokens_u), ("text.cond", tokens)] {
        out.push(rec(key.into(), vec![1, n, width]));
    }
    out.push(f32r("noise.initial", None, latent.clone()));
    // One batched call, or the webui's two calls when the token counts differ.
    let calls = if tokens_u == tokens {
        unet.probe_points(2, lh, lw, tokens)
    } else {
        let mut both = unet.probe_points(1, lh, lw, tokens);
        both.extend(unet.probe_points(1, lh, lw, tokens_u));
        both
    };
    let points: Vec<PlannedRecord> = calls
        .into_iter()
        .map(|(key, shape)| PlannedRecord {
            key,
            step: None,
            shape,
            dtype: model_dtype,
        })
        .collect();
    let n = sampler.timesteps().len() as u32;
    let mut per_step = 0;
    for i in 0..n {
        let before = out.len();
        out.push(f32r("sampler.x", Some(i), latent.clone()));
        out.extend(points.iter().map(|p| PlannedRecord {
            step: Some(i),
            ..p.clone()
        }));
        for key in ["sampler.eps.uncond", "sampler.eps.cond", "sampler.denoised"] {
            out.push(f32r(key, Some(i), latent.clone()));
        }
        if spec.sampler == SamplerKind::EulerA && sampler.sigmas()[i as usize + 1] > 0.0 {
            out.push(f32r("sampler.noise", Some(i), latent.clone()));
        }
        per_step = out.len() - before;
    }
    out.push(f32r("sampler.x", Some(n), latent.clone()));
    let image = vec![1, 3, spec.height as usize, spec.width as usize];
    out.push(PlannedRecord {
        key: "vae.decoder".into(),
        step: None,
        shape: image.clone(),
        dtype: model_dtype,
    });
    out.push(f32r("image", None, image));
    (out, per_step)
}

/// Record one text-to-image run of `spec` into `out`: [`RecordSpec::check`], then prepare
/// (model files, tokens, sampler, device, weights), plan (header, planned records, size
/// estimate and its limits), execute (the trace is created and always closed).
pub fn record(spec: &RecordSpec, out: &Path, monitor: &mut dyn Monitor) -> Result<Recording> {
    let started = Instant::now();
    monitor.stage("loading");
    spec.check()?;
    let prepared = prepare(spec)?;
    let planned = plan(spec, &prepared, out)?;
    monitor.plan(&planned.run_plan);
    planned.fits(spec, out)?;
    execute(spec, &prepared, planned, out, monitor, started)
}

/// Both prompts as token chunks, and how many empty-prompt chunks padded each.
struct Prompts {
    uncond: crate::text::PromptTokens,
    cond: crate::text::PromptTokens,
    /// Padding chunks added to (uncond, cond).
    pads: (usize, usize),
}

impl Prompts {
    /// Tokens per UNet call: (uncond, cond).
    fn tokens(&self) -> (usize, usize) {
        (77 * self.uncond.chunks.len(), 77 * self.cond.chunks.len())
    }
}

/// Everything read and checked before the trace exists: the model's files, the prompts'
/// tokens, the sampler, the device and the loaded weights.
struct Prepared {
    files: model::ModelSource,
    tokenizer_origin: String,
    prompts: Prompts,
    /// SDXL: the prompts as `tokenizer_2/` splits them (same chunks, `!` padding).
    prompts_2: Option<Prompts>,
    sampler: Sampler,
    device: Device,
    /// The GPU as found before the weights were loaded (free memory).
    gpu_facts: Option<crate::trace::GpuFacts>,
    nets: model::Loaded,
}

/// Open and check the model (files, configs, scheduler), tokenize the prompts, build the
/// sampler, then open the device and load the weights.
fn prepare(spec: &RecordSpec) -> Result<Prepared> {
    let files = model::ModelSource::open(&spec.model, &spec.model_options)?;
    let sdxl = files.unet_config().addition.is_some();
    if !sdxl && spec.size_conditioning != SizeConditioning::default() {
        return Err(PipelineError::Setting(format!(
            "--sdxl-original-size/--sdxl-crop: {} is not an SDXL model (its UNet has no size and crop conditioning); drop them",
            spec.model.display()
        )));
    }
    let (tokenizer, tokenizer_origin) = files.tokenizer(&spec.model_options)?;
    // SDXL takes each encoder's penultimate layer whatever Clip skip says (the webui's default:
    // its "sdxl_clip_l_skip" off); the header says so.
    if !sdxl && spec.clip_skip as usize > files.clip_config().num_hidden_layers {
        return Err(PipelineError::Setting(format!(
            "--clip-skip {} exceeds the {} layers of the text encoder",
            spec.clip_skip,
            files.clip_config().num_hidden_layers
        )));
    }
    let prompts = tokenize(spec, &tokenizer)?;
    let prompts_2 = match files.tokenizer_2()? {
        Some((t2, _)) => Some(tokenize(spec, &t2)?),
        None => None,
    };
    let sampler = sampler_of(spec, &files)?;
    let device = spec.device.open()?;
    // Read before the weights load, so the free memory is what the run found.
    let gpu_facts = gpu::gpu_facts(&device)?;
    spec.gemm_reduced_precision.apply(&device)?;
    let nets = files.load(spec.dtype, &device, Numerics::PYTORCH, spec.attention)?;
    Ok(Prepared {
        files,
        tokenizer_origin,
        prompts,
        prompts_2,
        sampler,
        device,
        gpu_facts,
        nets,
    })
}

/// Both prompts' token chunks, padded to equal counts unless the webui's batching runs them
/// apart.
fn tokenize(spec: &RecordSpec, tokenizer: &crate::text::ClipTokenizer) -> Result<Prompts> {
    let mut uncond = tokenize_prompt(tokenizer, &spec.negative, spec.syntax)?;
    let mut cond = tokenize_prompt(tokenizer, &spec.prompt, spec.syntax)?;
    let empty = tokenize_prompt(tokenizer, "", spec.syntax)?;
    let empty_chunk = empty.chunks.first().cloned().ok_or_else(|| {
        PipelineError::Conditioning("the empty prompt gave no token chunk".into())
    })?;
    let pads = if spec.a1111.batching == Batching::A1111 {
        (0, 0)
    } else {
        conditioning::pad_chunks(&mut uncond, &mut cond, &empty_chunk)
    };
    Ok(Prompts { uncond, cond, pads })
}

/// The sampler of `spec` over the model's prediction type and schedule.
fn sampler_of(spec: &RecordSpec, files: &model::ModelSource) -> Result<Sampler> {
    let mut sampler_spec = SamplerSpec::new(spec.sampler, spec.steps, spec.cfg_scale);
    sampler_spec.prediction = files.unet_config().prediction;
    if spec.a1111.old_karras {
        sampler_spec.karras = KarrasBounds::Old;
    }
    let precision = if spec.a1111.alphas_fp16 {
        AlphasPrecision::F16
    } else {
        AlphasPrecision::F32
    };
    Ok(match spec.sampler_impl {
        SamplerImpl::KDiffusion => {
            if let Some(c) = files.scheduler_config() {
                kdiffusion_follows(c)?;
            }
            Sampler::new(sampler_spec, &DiscreteSchedule::sd(precision))?
        }
        SamplerImpl::Diffusers => {
            let config = files.scheduler_config().ok_or_else(|| {
                PipelineError::Setting(format!(
                    "--sampler-impl diffusers follows the model's scheduler/scheduler_config.json, and {} has none; give a diffusers folder that has one",
                    spec.model.display()
                ))
            })?;
            Sampler::diffusers(sampler_spec, config)?
        }
    })
}

/// What the run will write, decided before the trace is created.
struct Planned {
    run_plan: RunPlan,
    rng: RunRng,
}

impl Planned {
    /// Refuse a trace larger than `--max-trace-size` or the free disk.
    fn fits(&self, spec: &RecordSpec, out: &Path) -> Result<()> {
        let bytes = self.run_plan.estimate.bytes;
        if bytes > spec.max_trace_size {
            return Err(PipelineError::TooLarge {
                estimate: bytes,
                limit: spec.max_trace_size,
            });
        }
        if let Some(free) = self.run_plan.free_disk
            && bytes > free
        {
            return Err(PipelineError::DiskFull {
                estimate: bytes,
                free,
                path: out.to_path_buf(),
            });
        }
        Ok(())
    }
}

/// The header (settings, tokens, attention plan, host and device facts), the generator with
/// its draws checked, and every record the run will offer with the size they come to.
fn plan(spec: &RecordSpec, p: &Prepared, out: &Path) -> Result<Planned> {
    let (lh, lw) = (spec.height as usize / 8, spec.width as usize / 8);
    let (tokens_u, tokens) = p.prompts.tokens();
    // The webui's separate calls (token counts differ) run batches of one.
    let plan_batch = if tokens_u == tokens { 2 } else { 1 };
    let attention_plan = p.nets.unet.attention_plan(plan_batch, lh, lw, tokens)?;
    if tokens_u != tokens {
        p.nets.unet.attention_plan(1, lh, lw, tokens_u)?;
    }

    let mut settings = settings(spec, &p.files, &p.tokenizer_origin, &spec.attention)?;
    let rng =
        RunRng::new(&spec.rng, spec.seed, spec.ensd, &p.device).map_err(SamplingError::from)?;
    let draws = 1 + match spec.sampler {
        SamplerKind::EulerA => p.sampler.sigmas()[1..].iter().filter(|&&s| s > 0.0).count(),
        _ => 0,
    };
    rng.check_draws(&vec![vec![1, 4, lh, lw]; draws])?;
    p.sampler.fill_settings(&mut settings, &rng);
    let (pad_u, pad_c) = p.prompts.pads;
    let (u, c) = (&p.prompts.uncond, &p.prompts.cond);
    settings.extra.insert(
        "tokens".into(),
        json!({
            "cond": {"chunks": c.chunks.len(), "tokens": c.token_count, "truncated": c.truncated, "padding_chunks": pad_c},
            "uncond": {"chunks": u.chunks.len(), "tokens": u.token_count, "truncated": u.truncated, "padding_chunks": pad_u},
        }),
    );
    settings.extra.insert(
        "attention_plan".into(),
        json!(
            attention_plan
                .iter()
                .map(|(k, c)| {
                    // Queries per call: self-attention's keys are its queries.
                    let self_key = k.replace(".attn2", ".attn1");
                    let queries = attention_plan
                        .iter()
                        .find(|(k2, _)| *k2 == self_key)
                        .map_or(c.queries, |(_, a)| a.keys);
                    (
                        k.clone(),
                        json!({"rows": c.rows, "queries": c.queries, "keys": c.keys,
                               "query_slices": queries.div_ceil(c.queries.max(1))}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
        ),
    );
    let mut facts = host_facts(spec.threads);
    facts.device = Some(spec.device.to_string());
    if p.device.is_cuda() {
        facts.gpu = p.gpu_facts.clone();
        settings
            .extra
            .insert("cublas".into(), gpu::GemmPrecision::header());
    }
    if p.prompts_2.is_some() {
        settings
            .extra
            .insert("sdxl".into(), sdxl_facts(spec, &p.files));
    }
    let mut header = RunHeader::new(settings, facts);
    header.candle_version = Some(CANDLE_VERSION.into());

    let text_calls = u.chunks.len() + c.chunks.len();
    let (records, points_per_step) = planned_records(
        &p.nets.unet,
        &p.sampler,
        spec,
        (p.files.clip_config(), p.files.clip_2_config()),
        text_calls,
        (tokens_u, tokens),
    );
    perturb::check_targets(&spec.perturb, &records).map_err(PipelineError::Setting)?;
    let estimate = estimate::estimate(&records, &spec.policy);
    Ok(Planned {
        run_plan: RunPlan {
            header,
            estimate,
            points_per_step,
            free_disk: free_disk(out),
        },
        rng,
    })
}

/// Create the trace, run, and close it with a run-end saying how the run ended, whatever
/// happened.
fn execute(
    spec: &RecordSpec,
    p: &Prepared,
    planned: Planned,
    out: &Path,
    monitor: &mut dyn Monitor,
    started: Instant,
) -> Result<Recording> {
    let Planned { run_plan, mut rng } = planned;
    let header = run_plan.header;
    let writer = TraceWriter::create(out, &header, WriterOptions::default())?;
    let mut probe = Probe::new(writer, spec.policy.clone());
    for pert in &spec.perturb {
        probe.add_intervention(Box::new(Perturb::new(pert.clone(), spec.seed)));
    }
    let mut steps_done = 0u32;
    let mut reported = 0usize;
    let result = run(
        spec,
        Models {
            unet: &p.nets.unet,
            clip: &p.nets.clip,
            clip_2: p.nets.clip_2.as_ref().zip(p.prompts_2.as_ref()),
            vae: &p.nets.vae,
            device: &p.device,
        },
        (&p.prompts.uncond, &p.prompts.cond),
        &p.sampler,
        &mut rng,
        &probe,
        monitor,
        &mut steps_done,
        &mut reported,
    );
    let (nonfinite, _) = probe.nonfinite();
    let mut end = RunEnd {
        steps_completed: Some(steps_done),
        steps_planned: Some(spec.steps),
        elapsed_ms: Some(started.elapsed().as_millis() as u64),
        nonfinite,
        ..RunEnd::default()
    };
    let image = match result {
        Ok(image) => Some(image),
        Err(PipelineError::Sampling(SamplingError::Stopped { reason, .. })) => {
            end.status = RunStatus::Interrupted;
            end.reason = Some(reason);
            None
        }
        Err(e) => {
            end.status = RunStatus::Failed;
            end.reason = Some(crate::errors::chain_text(&e));
            return Err(match probe.finish_with(end) {
                Ok(_) => PipelineError::Run {
                    trace: out.to_path_buf(),
                    source: Box::new(e),
                },
                Err(close) => {
                    // A full disk fails the run and the close alike: say it once.
                    let close = crate::errors::chain_text(&close);
                    PipelineError::Unclosed {
                        trace: out.to_path_buf(),
                        close: if close == crate::errors::chain_text(&e) {
                            "the same error".into()
                        } else {
                            close
                        },
                        source: Box::new(e),
                    }
                }
            });
        }
    };
    let trace = probe
        .finish_with(end.clone())?
        .ok_or_else(|| PipelineError::Setting("the probe had no trace to finish".into()))?;
    Ok(Recording {
        trace,
        end,
        header,
        image,
    })
}

/// The candle version this build links (for the header).
pub const CANDLE_VERSION: &str = "0.11";

struct Models<'a> {
    unet: &'a UNet,
    clip: &'a ClipTextModel,
    /// SDXL's second encoder and the prompts as its tokenizer split them.
    clip_2: Option<(&'a ClipTextModel, &'a Prompts)>,
    vae: &'a Vae,
    device: &'a Device,
}

/// The part of a run that writes records: text, noise, sampling, decoding.
#[allow(clippy::too_many_arguments)]
fn run(
    spec: &RecordSpec,
    m: Models<'_>,
    (uncond_tokens, cond_tokens): (&crate::text::PromptTokens, &crate::text::PromptTokens),
    sampler: &Sampler,
    rng: &mut dyn NoiseSource,
    probe: &Probe,
    monitor: &mut dyn Monitor,
    steps_done: &mut u32,
    reported: &mut usize,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let check_stop = |monitor: &mut dyn Monitor, step: u32| -> Result<()> {
        match monitor.stop_requested() {
            Some(reason) => Err(SamplingError::Stopped { step, reason }.into()),
            None => Ok(()),
        }
    };
    // Report NaN/Inf records not yet reported; `Some(reason)` when the run must stop for them.
    let mut report_nonfinite = |monitor: &mut dyn Monitor| -> Option<String> {
        if probe.nonfinite_count() as usize == *reported {
            return None;
        }
        let (list, total) = probe.nonfinite();
        for n in list.iter().skip(*reported) {
            monitor.nonfinite(n);
        }
        let first = list.get(*reported).cloned();
        *reported = total as usize;
        match (spec.stop_on_nan, first) {
            (true, Some(n)) => Some(format!(
                "--stop-on-nan: NaN/Inf in {} at step {}",
                n.key,
                n.step.map_or("-".into(), |s| s.to_string())
            )),
            _ => None,
        }
    };

    monitor.stage("text");
    check_stop(monitor, 0)?;
    let weighted = (spec.syntax == PromptSyntax::A1111).then_some(spec.a1111.emphasis);
    let (uncond, cond, added) = match m.clip_2 {
        None => {
            let skip = spec.clip_skip as usize;
            let (uncond, next) = conditioning::encode(
                m.clip,
                &uncond_tokens.chunks,
                weighted,
                skip,
                probe,
                0,
                m.device,
            )?;
            let (cond, _) = conditioning::encode(
                m.clip,
                &cond_tokens.chunks,
                weighted,
                skip,
                probe,
                next,
                m.device,
            )?;
            (uncond, cond, None)
        }
        Some((clip_2, tokens_2)) => {
            let (uncond, uncond_pooled, next) = conditioning::encode_sdxl(
                m.clip,
                clip_2,
                (&uncond_tokens.chunks, &tokens_2.uncond.chunks),
                weighted,
                probe,
                0,
                m.device,
            )?;
            let (cond, cond_pooled, _) = conditioning::encode_sdxl(
                m.clip,
                clip_2,
                (&cond_tokens.chunks, &tokens_2.cond.chunks),
                weighted,
                probe,
                next,
                m.device,
            )?;
            // An empty negative prompt conditions on zeros (the webui's
            // force_zero_negative_prompt, diffusers' force_zeros_for_empty_prompt).
            let (uncond, uncond_pooled) = if zero_negative(spec) {
                (uncond.zeros_like()?, uncond_pooled.zeros_like()?)
            } else {
                (uncond, uncond_pooled)
            };
            let uncond_pooled = observe(probe, "text.pooled.uncond", &uncond_pooled)?;
            let cond_pooled = observe(probe, "text.pooled.cond", &cond_pooled)?;
            let ids = spec
                .size_conditioning
                .time_ids(spec.width, spec.height)
                .map(|v| v as f32);
            let ids = Tensor::new(&ids, m.device)?.unsqueeze(0)?;
            (uncond, cond, Some((uncond_pooled, cond_pooled, ids)))
        }
    };
    let uncond = observe(probe, "text.uncond", &uncond)?;
    let cond = observe(probe, "text.cond", &cond)?;

    let shape = [1, 4, spec.height as usize / 8, spec.width as usize / 8];
    let noise = observe(probe, "noise.initial", &randn(rng, &shape, m.device)?)?;
    if let Some(reason) = report_nonfinite(monitor) {
        return Err(SamplingError::Stopped { step: 0, reason }.into());
    }

    monitor.stage("sampling");
    let mut denoiser = match spec.a1111.batching {
        Batching::UncondFirst => UNetDenoiser::new(m.unet, &uncond, &cond, probe)?,
        Batching::A1111 => UNetDenoiser::a1111(m.unet, &uncond, &cond, probe)?,
    };
    if let Some((uncond_pooled, cond_pooled, ids)) = &added {
        denoiser = denoiser.with_added(uncond_pooled, cond_pooled, ids)?;
    }
    let n = sampler.timesteps().len() as u32;
    let mut t0 = Instant::now();
    let latent = sampler.sample_with(&mut denoiser, &noise, rng, probe, &mut |i| {
        *steps_done = i + 1;
        monitor.step(i, n, t0.elapsed());
        t0 = Instant::now();
        if let Some(reason) = report_nonfinite(monitor) {
            return Err(SamplingError::Stopped { step: i, reason });
        }
        if i + 1 < n
            && let Some(reason) = monitor.stop_requested()
        {
            return Err(SamplingError::Stopped { step: i, reason });
        }
        Ok(())
    })?;

    monitor.stage("decoding");
    check_stop(monitor, n)?;
    let image = m.vae.decode(&latent.to_dtype(spec.dtype)?, probe)?;
    if let Some(reason) = report_nonfinite(monitor) {
        monitor.stage(&format!("warning: {reason}"));
    }
    let dims = image.dims().to_vec();
    let data = image
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_device(&Device::Cpu)?
        .to_vec1::<f32>()?;
    Ok((dims, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A missing weights file is named; a sharded one (diffusers' save_pretrained above 10 GB)
    /// is named as sharded, with the way out.
    #[test]
    fn sharded_weights_are_named_as_such() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("unet")).unwrap();
        let names = ["diffusion_pytorch_model.safetensors"];
        let err = first_existing(dir.path(), "unet", &names)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no unet/diffusion_pytorch_model.safetensors"),
            "{err}"
        );
        let index = dir
            .path()
            .join("unet/diffusion_pytorch_model.safetensors.index.json");
        std::fs::write(index, "{}").unwrap();
        let err = first_existing(dir.path(), "unet", &names)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is sharded") && err.contains("max_shard_size"),
            "{err}"
        );
    }

    #[test]
    fn settings_parse_with_clear_errors() {
        assert_eq!(parse_size("512x768"), Ok((512, 768)));
        let e = parse_size("500x512").unwrap_err();
        assert!(
            e.contains("multiple of 8") && e.contains("496 or 504"),
            "{e}"
        );
        assert!(parse_size("512").unwrap_err().contains("WIDTHxHEIGHT"));
        assert!(parse_size("0x8").unwrap_err().ends_with("try 8"));
        let e = parse_size("100000x100000").unwrap_err();
        assert!(e.ends_with("try 16384"), "{e}");
        assert!(parse_size("16392x8").unwrap_err().ends_with("try 16384"));
        assert_eq!("cuda:1".parse(), Ok(DeviceChoice::Cuda(1)));
        assert_eq!("cpu".parse(), Ok(DeviceChoice::Cpu));
        assert!("gpu".parse::<DeviceChoice>().is_err());
        assert_eq!(parse_dtype("fp16"), Ok(DType::F16));
        assert!(parse_dtype("int8").is_err());
        assert_eq!(human(1536), "1.5 KiB");
    }

    #[test]
    fn sdxl_time_ids_are_the_webuis_by_default() {
        let c = SizeConditioning::default();
        // original (h, w), crop (top, left), target (h, w)
        assert_eq!(c.time_ids(1152, 896), [896, 1152, 0, 0, 896, 1152]);
        let c = SizeConditioning {
            original_size: Some((2048, 1536)),
            crop: (16, 8),
        };
        assert_eq!(c.time_ids(1024, 768), [1536, 2048, 16, 8, 768, 1024]);
    }

    #[test]
    fn gpu_devices_need_their_feature() {
        if !cfg!(feature = "cuda") {
            let e = DeviceChoice::Cuda(0).open().unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
