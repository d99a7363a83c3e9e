//! The LDM/CompVis single-file checkpoint layout (what A1111 loads: `model.diffusion_model.*`,
//! `first_stage_model.*`, `cond_stage_model.*`, or SDXL's `conditioner.embedders.0/1.*`) and its
//! correspondence with our diffusers-named modules, without any tensor library.
//!
//! [`LdmLayout::infer`] reads the model's configuration off tensor shapes: the UNet's levels,
//! channels, layers per level, per-level transformer depth, context width, projection kind and
//! SDXL's `label_emb` (the `text_time` conditioning's input width); the VAE's levels and
//! channels; the text encoders' widths, depths and MLP sizes, and which towers they are (OpenAI
//! CLIP under `cond_stage_model.transformer`, SD 1.x; OpenCLIP under `cond_stage_model.model`,
//! SD 2.x; SDXL base: CLIP ViT-L under `conditioner.embedders.0.transformer` and OpenCLIP
//! ViT-bigG with its projection under `conditioner.embedders.1.model`, every layer used). The
//! SDXL refiner (OpenCLIP alone under `conditioner.embedders.0.model`, aesthetic-score
//! `label_emb`) is refused ([`CheckpointError::Refiner`]). What shapes cannot tell is fixed by
//! the SD conventions — 8 heads per UNet level with a 768-wide context (SD 1.x), otherwise 64
//! channels per head; 64 channels per text-encoder head; 32 norm groups; VAE scaling 0.18215
//! (SDXL: 0.13025) — unless the file's safetensors metadata says otherwise
//! ([`META_UNET_HEADS`], [`META_CLIP_HEADS`], [`META_CLIP2_HEADS`], [`META_UNET_SAMPLE_SIZE`];
//! our synthetic writer sets them). The prediction type cannot be read off the weights: SD 1.x-
//! and SDXL-shaped files default to ε-prediction, SD 2.x-shaped ones need it said
//! ([`CheckpointError::NeedPrediction`]).
//!
//! The `*_source` methods map a diffusers weight name (as our modules ask for it) to where it
//! lives in the file ([`Source`]): the key, a row range (OpenCLIP's fused `in_proj` holds q, k
//! and v), whether a 1×1 convolution weight `[C, C, 1, 1]` is read as a linear `[C, C]`
//! (the VAE's attention) and whether it is stored transposed (SDXL's OpenCLIP
//! `text_projection`, applied as `x @ P`). They read the one table of LDM names,
//! [`sdtrace_core::ldm::LdmMap`], which also maps the module paths the webui, Forge and ComfyUI hook to our probe keys (its
//! module doc has the index rules); [`LdmLayout::map`] builds it for this layout, once per
//! architecture.
//! [`LdmLayout::is_ignored`] names what a checkpoint may hold besides the model: EMA copies
//! (`model_ema.*`), the DDPM schedule buffers (SGM's `denoiser.sigmas`), CLIP's
//! `position_ids`, OpenCLIP's logit scale and attention mask, and SD 2.x's unused projection and
//! last transformer layer.

use super::clip::{ClipActivation, ClipConfig};
use super::config::{BlockConfig, Prediction, TextTime, UNetConfig};
use super::vae::{SD_SCALING_FACTOR, SDXL_SCALING_FACTOR, VaeConfig};
use sdtrace_core::ldm::{LdmArch, LdmMap};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Where the UNet lives in an LDM checkpoint.
pub const UNET_PREFIX: &str = "model.diffusion_model.";
/// Where the VAE lives.
pub const VAE_PREFIX: &str = "first_stage_model.";
/// SD 1.x's text encoder (HF `CLIPTextModel` names inside).
pub const OPENAI_CLIP_PREFIX: &str = "cond_stage_model.transformer.text_model.";
/// The same before transformers 4.x added the `text_model` level.
pub const OPENAI_CLIP_OLD_PREFIX: &str = "cond_stage_model.transformer.";
/// SD 2.x's text encoder (OpenCLIP names inside).
pub const OPENCLIP_PREFIX: &str = "cond_stage_model.model.";
/// SDXL's first text encoder, CLIP ViT-L (HF `CLIPTextModel` names inside).
pub const SDXL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.text_model.";
/// SDXL's second text encoder, OpenCLIP ViT-bigG with `text_projection`.
pub const SDXL_OPENCLIP_PREFIX: &str = "conditioner.embedders.1.model.";
/// The SDXL refiner's only text encoder (refused).
pub const SDXL_REFINER_PREFIX: &str = "conditioner.embedders.0.model.";
/// EMA copies of the UNet weights (ignored).
pub const EMA_PREFIX: &str = "model_ema.";
/// Metadata: the UNet's heads per level, a JSON list (`[8, 8, 8, 8]`).
pub const META_UNET_HEADS: &str = "sdtrace.unet_attention_heads";
/// Metadata: the text encoder's heads, a number.
pub const META_CLIP_HEADS: &str = "sdtrace.text_encoder_attention_heads";
/// Metadata: SDXL's second text encoder's heads, a number.
pub const META_CLIP2_HEADS: &str = "sdtrace.text_encoder_2_attention_heads";
/// Metadata: the UNet's `sample_size` (latent side it was trained at).
pub const META_UNET_SAMPLE_SIZE: &str = "sdtrace.unet_sample_size";

/// The buffers of LDM's `DDPM` module saved with the weights; sdtrace computes its own schedule.
pub const DDPM_BUFFERS: [&str; 13] = [
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
];
/// The noise levels SGM's denoiser saves with SDXL weights (sdtrace computes its own).
pub const SGM_BUFFERS: [&str; 1] = ["denoiser.sigmas"];

/// Tensor shapes by key, as a checkpoint's header lists them.
pub type Shapes = BTreeMap<String, Vec<usize>>;

/// Errors of single-file checkpoints. Each names the file and says what to do.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "{}: {kind} checkpoints are Python pickles, and loading a pickle can run arbitrary code, so sdtrace refuses them; convert the file to .safetensors (for example with the webui's checkpoint merger, 'Checkpoint format: safetensors') or use a .safetensors download of the same model",
        path.display()
    )]
    Pickle { path: PathBuf, kind: &'static str },
    #[error("{}: not a safetensors file: {what}", path.display())]
    NotSafetensors { path: PathBuf, what: String },
    #[error("{}: {op}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a Stable Diffusion 1.x/2.x/XL LDM checkpoint: {what}", path.display())]
    Layout { path: PathBuf, what: String },
    #[error(
        "{}: an SDXL refiner checkpoint ({what}); sdtrace loads SDXL base-structured checkpoints only (CLIP ViT-L under conditioner.embedders.0.transformer and OpenCLIP ViT-bigG under conditioner.embedders.1.model): give the base model or a fine-tune of it",
        path.display()
    )]
    Refiner { path: PathBuf, what: &'static str },
    #[error(
        "{}: an SD 2.x checkpoint, and whether it predicts v (768-v models such as SD 2.0/2.1 at 768x768) or ε (the 512 'base' models) cannot be read off its weights; say which with --prediction v or --prediction epsilon",
        path.display()
    )]
    NeedPrediction { path: PathBuf },
    #[error("{}: tensor '{key}' has dtype {dtype}; supported: F16, BF16, F32", path.display())]
    Dtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{}: the weights do not fit the {family} model read off their shapes: {summary}", path.display())]
    Keys {
        path: PathBuf,
        family: String,
        summary: String,
        keys: Box<KeyProblems>,
    },
    #[error(
        "{}: its hash is {actual} ({what}), not the expected {expected}: this is another file; check the model path, or pass --expect-hash off to record with it anyway (the infotext's Model hash is checked unless a flag says otherwise)",
        path.display()
    )]
    HashMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
        what: &'static str,
    },
    #[error(
        "--expect-hash '{given}': expected A1111's 8-hex old hash (e.g. 2700c435), a 10-hex short SHA-256 (e.g. 6ce0161689) or a full 64-hex SHA-256"
    )]
    BadExpectedHash { given: String },
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// The keys behind [`CheckpointError::Keys`], in full.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyProblems {
    /// LDM keys our modules need that the file lacks.
    pub missing: Vec<String>,
    /// `key is [..], expected [..]` lines.
    pub misshapen: Vec<String>,
    /// Keys nothing reads.
    pub unknown: Vec<String>,
}

/// Which model a checkpoint's shapes describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x: OpenAI CLIP ViT-L/14, 768-wide context, 320/640/1280/1280 channels.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H/14, 1024-wide context.
    Sd2,
    /// SDXL base: CLIP ViT-L and OpenCLIP ViT-bigG, 2048-wide context, 320/640/1280 channels.
    Sdxl,
    /// Another SD- or SDXL-structured model (e.g. sdtrace's tiny synthetic ones).
    Other,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
            Family::Other => "SD-structured (non-standard sizes)",
        }
    }
}

/// Which text encoder a checkpoint holds, and under which prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextTower {
    /// OpenAI CLIP in HF `CLIPTextModel` names under this prefix (SD 1.x; SDXL's first
    /// encoder under [`SDXL_CLIP_PREFIX`]).
    OpenAi { prefix: &'static str },
    /// OpenCLIP (SD 2.x): fused attention projections, `resblocks`, and one more layer than
    /// SD uses (it takes the penultimate layer's output).
    OpenClip,
}

/// Where one weight our modules ask for is stored in the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub key: String,
    /// Only these rows of the first dimension (OpenCLIP's fused q/k/v projection).
    pub rows: Option<Range<usize>>,
    /// Stored as a 1×1 convolution `[a, b, 1, 1]`, read as a linear weight `[a, b]`.
    pub squeeze_1x1: bool,
    /// Stored transposed: `[b, a]` in the file, `[a, b]` for our module.
    pub transpose: bool,
}

impl Source {
    pub(crate) fn plain(key: String) -> Self {
        Source {
            key,
            rows: None,
            squeeze_1x1: false,
            transpose: false,
        }
    }

    /// The shape our module gets from a stored tensor of shape `stored`, or why it does not fit.
    pub fn shape_from(&self, stored: &[usize]) -> std::result::Result<Vec<usize>, String> {
        let mut shape = stored.to_vec();
        if let Some(r) = &self.rows {
            match shape.first_mut() {
                Some(d) if r.start < r.end && r.end <= *d => *d = r.end - r.start,
                _ => {
                    return Err(format!(
                        "rows {}..{} of a tensor of shape {stored:?}",
                        r.start, r.end
                    ));
                }
            }
        }
        if self.squeeze_1x1 {
            match shape.as_slice() {
                [a, b, 1, 1] => shape = vec![*a, *b],
                [_, _] => {}
                _ => return Err(format!("a 1x1 convolution weight, not {stored:?}")),
            }
        }
        if self.transpose {
            match shape.as_slice() {
                [a, b] => shape = vec![*b, *a],
                _ => return Err(format!("a matrix, not {stored:?}")),
            }
        }
        Ok(shape)
    }
}

/// A checkpoint's model: configurations read off its shapes and the key correspondence.
#[derive(Clone, Debug, PartialEq)]
pub struct LdmLayout {
    pub family: Family,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub clip: ClipConfig,
    pub tower: TextTower,
    /// SDXL's second text encoder (OpenCLIP ViT-bigG with its projection), `text_encoder_2`.
    pub clip2: Option<ClipConfig>,
    /// Whether the prediction type was given (else: the SD 1.x default, ε).
    pub prediction_given: bool,
    /// What was taken from the file's metadata rather than conventions.
    pub from_metadata: Vec<&'static str>,
}

/// `"3.rest"` → (3, `"rest"`).
fn split_index(s: &str) -> Option<(usize, &str)> {
    let (i, rest) = s.split_once('.')?;
    Some((i.parse().ok()?, rest))
}

/// Distinct values of the index right after `prefix` among `keys`.
fn indices(shapes: &Shapes, prefix: &str) -> BTreeSet<usize> {
    shapes
        .range(prefix.to_string()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter_map(|(k, _)| split_index(&k[prefix.len()..]).map(|(i, _)| i))
        .collect()
}

impl LdmLayout {
    /// Read the model's configuration off `shapes` (`file` names it in errors; `metadata` is the
    /// safetensors `__metadata__`). `prediction` is required for SD 2.x-shaped files.
    pub fn infer(
        shapes: &Shapes,
        metadata: &BTreeMap<String, String>,
        prediction: Option<Prediction>,
        file: &Path,
    ) -> Result<Self> {
        let err = |what: String| CheckpointError::Layout {
            path: file.to_path_buf(),
            what,
        };
        let mut from_metadata = Vec::new();
        let unet_heads = match metadata.get(META_UNET_HEADS) {
            Some(v) => {
                from_metadata.push(META_UNET_HEADS);
                Some(serde_json::from_str::<Vec<usize>>(v).map_err(|_| {
                    err(format!(
                        "metadata {META_UNET_HEADS} '{v}' is not a list of head counts"
                    ))
                })?)
            }
            None => None,
        };
        let mut heads_of = |key: &'static str| match metadata.get(key) {
            Some(v) => {
                from_metadata.push(key);
                v.trim()
                    .parse::<usize>()
                    .map(Some)
                    .map_err(|_| err(format!("metadata {key} '{v}' is not a head count")))
            }
            None => Ok(None),
        };
        let clip_heads = heads_of(META_CLIP_HEADS)?;
        let clip2_heads = heads_of(META_CLIP2_HEADS)?;
        let sample_size = match metadata.get(META_UNET_SAMPLE_SIZE) {
            Some(v) => {
                from_metadata.push(META_UNET_SAMPLE_SIZE);
                Some(v.trim().parse::<usize>().map_err(|_| {
                    err(format!(
                        "metadata {META_UNET_SAMPLE_SIZE} '{v}' is not a size"
                    ))
                })?)
            }
            None => None,
        };
        refuse_refiner(shapes, file)?;
        let (clip, tower, clip2) = infer_clip(shapes, clip_heads, clip2_heads).map_err(err)?;
        let pooled = clip2.as_ref().and_then(|c| c.projection_dim);
        let mut unet = infer_unet(shapes, unet_heads, pooled).map_err(err)?;
        let mut vae = infer_vae(shapes).map_err(err)?;
        let channels: Vec<usize> = unet.blocks.iter().map(|b| b.out_channels).collect();
        let sd1_channels = channels == [320, 640, 1280, 1280];
        let family = match tower {
            TextTower::OpenAi { .. } if clip2.is_some() => {
                if channels == [320, 640, 1280] && unet.cross_attention_dim == 2048 {
                    Family::Sdxl
                } else {
                    Family::Other
                }
            }
            TextTower::OpenAi { .. } if sd1_channels && unet.cross_attention_dim == 768 => {
                Family::Sd1
            }
            TextTower::OpenClip if sd1_channels && unet.cross_attention_dim == 1024 => Family::Sd2,
            _ => Family::Other,
        };
        let context = clip.hidden_size + clip2.as_ref().map_or(0, |c| c.hidden_size);
        if unet.cross_attention_dim != context {
            return Err(err(format!(
                "the UNet's cross-attention expects {}-wide text embeddings but the text encoder{} make{} {context}-wide ones",
                unet.cross_attention_dim,
                if clip2.is_some() { "s" } else { "" },
                if clip2.is_some() { "" } else { "s" },
            )));
        }
        if clip2.is_some() {
            vae.scaling_factor = SDXL_SCALING_FACTOR;
        }
        unet.sample_size = sample_size.unwrap_or(match family {
            Family::Sd2 if prediction == Some(Prediction::VPrediction) => 96,
            Family::Sdxl => 128,
            _ => 64,
        });
        unet.prediction = match (prediction, family) {
            (Some(p), _) => p,
            (None, Family::Sd2) => {
                return Err(CheckpointError::NeedPrediction {
                    path: file.to_path_buf(),
                });
            }
            (None, _) => Prediction::Epsilon,
        };
        unet.validate(file).map_err(|e| err(e.to_string()))?;
        Ok(LdmLayout {
            family,
            unet,
            vae,
            clip,
            tower,
            clip2,
            prediction_given: prediction.is_some(),
            from_metadata,
        })
    }

    /// An SDXL-structured layout (two text encoders, `text_time` UNet).
    pub fn is_sdxl(&self) -> bool {
        self.clip2.is_some()
    }

    /// The names-only description of this layout that the LDM table is built from.
    pub fn arch(&self) -> LdmArch {
        LdmArch {
            unet_attention: self
                .unet
                .blocks
                .iter()
                .map(|b| b.cross_attention.is_some())
                .collect(),
            unet_layers_per_block: self.unet.layers_per_block,
            unet_label_emb: self.unet.addition.is_some(),
            vae_levels: self.vae.block_out_channels.len(),
            vae_layers_per_block: self.vae.layers_per_block,
            text: match self.tower {
                TextTower::OpenAi { prefix } => sdtrace_core::ldm::TextTower::OpenAi {
                    root: prefix.trim_end_matches('.'),
                },
                TextTower::OpenClip => sdtrace_core::ldm::TextTower::OpenClip,
            },
            text_layers: self.clip.num_hidden_layers,
            text2_layers: self.clip2.as_ref().map(|c| c.num_hidden_layers),
        }
    }

    /// The LDM table for this layout, built once per architecture and shared.
    pub fn map(&self) -> Arc<LdmMap> {
        static BUILT: Mutex<Vec<(LdmArch, Arc<LdmMap>)>> = Mutex::new(Vec::new());
        let arch = self.arch();
        let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = built.iter().find(|(a, _)| *a == arch) {
            return m.clone();
        }
        let m = Arc::new(LdmMap::new(&arch));
        built.push((arch, m.clone()));
        m
    }

    /// Where the weight `component.name` (`unet.…`, `vae.…`, `text_encoder.…`,
    /// `text_encoder_2.…`) is stored.
    fn source_of(&self, name: &str) -> Option<Source> {
        let w = self.map().weight(name)?;
        // Fused q/k/v rows are as wide as their encoder.
        let d = match (name.starts_with("text_encoder_2."), &self.clip2) {
            (true, Some(c)) => c.hidden_size,
            _ => self.clip.hidden_size,
        };
        Some(Source {
            key: w.key,
            rows: w.fused.map(|i| i * d..(i + 1) * d),
            squeeze_1x1: w.squeeze_1x1,
            transpose: w.transpose,
        })
    }

    /// The UNet weight `name` (diffusers naming, no `unet.` prefix).
    pub fn unet_source(&self, name: &str) -> Option<Source> {
        self.source_of(&format!("unet.{name}"))
    }

    /// The VAE weight `name` (diffusers naming).
    pub fn vae_source(&self, name: &str) -> Option<Source> {
        self.source_of(&format!("vae.{name}"))
    }

    /// The text-encoder weight `name` (HF naming, `text_model.…`).
    pub fn clip_source(&self, name: &str) -> Option<Source> {
        let rest = name.strip_prefix("text_model.")?;
        self.source_of(&format!("text_encoder.{rest}"))
    }

    /// SDXL's second text-encoder weight `name` (HF `CLIPTextModelWithProjection` naming:
    /// `text_model.…`, `text_projection.weight`).
    pub fn clip2_source(&self, name: &str) -> Option<Source> {
        self.clip2.as_ref()?;
        let rest = name.strip_prefix("text_model.").unwrap_or(name);
        self.source_of(&format!("text_encoder_2.{rest}"))
    }

    /// Whether `key` is something a checkpoint holds besides the model (see the module doc).
    pub fn is_ignored(&self, key: &str) -> bool {
        if key.starts_with(EMA_PREFIX) || DDPM_BUFFERS.contains(&key) || SGM_BUFFERS.contains(&key)
        {
            return true;
        }
        if self.is_sdxl()
            && let Some(rest) = key.strip_prefix(SDXL_OPENCLIP_PREFIX)
        {
            return matches!(rest, "logit_scale" | "attn_mask");
        }
        match self.tower {
            TextTower::OpenAi { prefix } => key == format!("{prefix}embeddings.position_ids"),
            TextTower::OpenClip => {
                let Some(rest) = key.strip_prefix(OPENCLIP_PREFIX) else {
                    return false;
                };
                matches!(rest, "text_projection" | "logit_scale" | "attn_mask")
                    || rest.starts_with(&format!(
                        "transformer.resblocks.{}.",
                        self.clip.num_hidden_layers
                    ))
            }
        }
    }
}

/// The SDXL refiner: its only text encoder is OpenCLIP under `conditioner.embedders.0.model`, and
/// its `label_emb` takes 2560 features (the pooled 1280 and five size/crop/aesthetic-score ids
/// of 256) where SDXL base has no such tower.
fn refuse_refiner(s: &Shapes, file: &Path) -> Result<()> {
    let refiner_tower = s
        .range(SDXL_REFINER_PREFIX.to_string()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(SDXL_REFINER_PREFIX));
    let base_tower = s.contains_key(&format!(
        "{SDXL_CLIP_PREFIX}embeddings.token_embedding.weight"
    ));
    let label_in = s
        .get(&format!("{UNET_PREFIX}label_emb.0.0.weight"))
        .and_then(|w| w.get(1).copied());
    let what = if refiner_tower {
        "its only text encoder is OpenCLIP ViT-bigG under conditioner.embedders.0.model"
    } else if label_in == Some(2560) && !base_tower {
        "its UNet's label_emb takes 2560 features, the aesthetic-score conditioning"
    } else {
        return Ok(());
    };
    Err(CheckpointError::Refiner {
        path: file.to_path_buf(),
        what,
    })
}

/// `pooled`: the width of SDXL's pooled text embedding (its second encoder's projection), which
/// a UNet with `label_emb` needs to split the label input into it and the six size/crop ids.
fn infer_unet(
    s: &Shapes,
    heads: Option<Vec<usize>>,
    pooled: Option<usize>,
) -> std::result::Result<UNetConfig, String> {
    let get = |k: &str| s.get(&format!("{UNET_PREFIX}{k}")).map(Vec::as_slice);
    let need = |k: &str| get(k).ok_or_else(|| format!("it has no {UNET_PREFIX}{k}"));
    let addition = match (get("label_emb.0.0.weight"), pooled) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(format!(
                "its UNet has a label embedding (SDXL's added conditioning, or a class-conditioned model such as unCLIP) but the file has no SDXL text encoders ({SDXL_CLIP_PREFIX}*, {SDXL_OPENCLIP_PREFIX}*); only SDXL's label embedding is supported"
            ));
        }
        (Some(w), Some(pooled)) => {
            let input_dim = *w.get(1).unwrap_or(&0);
            let ids = input_dim.saturating_sub(pooled);
            let t = ids / TextTime::IDS;
            if input_dim <= pooled || t * TextTime::IDS != ids || !t.is_multiple_of(2) {
                return Err(format!(
                    "{UNET_PREFIX}label_emb.0.0.weight takes {input_dim} features; SDXL's is the {pooled}-wide pooled text embedding and 6 size/crop ids of an even width"
                ));
            }
            Some(TextTime {
                time_embed_dim: t,
                input_dim,
            })
        }
    };
    let conv_in = need("input_blocks.0.0.weight")?;
    let [c0, in_channels, 3, 3] = *conv_in else {
        return Err(format!(
            "{UNET_PREFIX}input_blocks.0.0.weight has shape {conv_in:?}, not [channels, in, 3, 3]"
        ));
    };
    let out_channels = *need("out.2.weight")?.first().unwrap_or(&0);
    if in_channels != out_channels {
        return Err(format!(
            "its UNet takes {in_channels} input channels and makes {out_channels} (an inpainting or depth model?); only text-to-image UNets are supported"
        ));
    }
    let inputs = indices(s, &format!("{UNET_PREFIX}input_blocks."));
    let last = *inputs.last().unwrap_or(&0);
    let per = (1..=last)
        .find(|i| get(&format!("input_blocks.{i}.0.op.weight")).is_some())
        .unwrap_or(last + 1);
    if per < 2 || !(last + 1).is_multiple_of(per) {
        return Err(format!(
            "its UNet input blocks 0..={last} do not form levels of equal size (the first down-sampler is input block {per})"
        ));
    }
    let levels = (last + 1) / per;
    let mut blocks = Vec::with_capacity(levels);
    let mut context = None;
    let mut linear = None;
    for b in 0..levels {
        let first = 1 + per * b;
        let conv2 = need(&format!("input_blocks.{first}.0.out_layers.3.weight"))?;
        let out = *conv2.first().unwrap_or(&0);
        let attn = format!("input_blocks.{first}.1.");
        let cross = match get(&format!("{attn}proj_in.weight")) {
            Some(p) => {
                linear.get_or_insert(p.len() == 2);
                let k = need(&format!("{attn}transformer_blocks.0.attn2.to_k.weight"))?;
                context.get_or_insert(*k.get(1).unwrap_or(&0));
                let depth = indices(s, &format!("{UNET_PREFIX}{attn}transformer_blocks.")).len();
                Some(depth.max(1))
            }
            None => None,
        };
        blocks.push(BlockConfig {
            out_channels: out,
            cross_attention: cross,
            heads: 0,
        });
    }
    if blocks.first().map(|b| b.out_channels) != Some(c0) {
        return Err(format!(
            "its UNet's first level has {:?} channels but conv_in makes {c0}",
            blocks.first().map(|b| b.out_channels)
        ));
    }
    if get("middle_block.1.proj_in.weight").is_none() {
        return Err(format!(
            "it has no {UNET_PREFIX}middle_block.1 (the middle block's cross-attention)"
        ));
    }
    let context = context.ok_or("its UNet has no cross-attention layers")?;
    let heads = match heads {
        Some(h) if h.len() == levels => h,
        Some(h) => {
            return Err(format!(
                "metadata {META_UNET_HEADS} lists {} head counts for {levels} levels",
                h.len()
            ));
        }
        // SD 1.x: 8 heads everywhere; SD 2.x and others: 64 channels per head.
        None if context == 768 => vec![8; levels],
        None => blocks
            .iter()
            .map(|b| (b.out_channels / 64).max(1))
            .collect(),
    };
    for (b, h) in blocks.iter_mut().zip(heads) {
        b.heads = h;
    }
    Ok(UNetConfig {
        in_channels,
        out_channels,
        blocks,
        layers_per_block: per - 1,
        norm_num_groups: 32,
        norm_eps: 1e-5,
        cross_attention_dim: context,
        use_linear_projection: linear.unwrap_or(false),
        flip_sin_to_cos: true,
        freq_shift: 0.0,
        downsample_padding: 1,
        mid_block_scale_factor: 1.0,
        center_input_sample: false,
        prediction: Prediction::Epsilon,
        sample_size: 64,
        addition,
    })
}

fn infer_vae(s: &Shapes) -> std::result::Result<VaeConfig, String> {
    let get = |k: &str| s.get(&format!("{VAE_PREFIX}{k}")).map(Vec::as_slice);
    let need = |k: &str| get(k).ok_or_else(|| format!("it has no {VAE_PREFIX}{k} (the VAE)"));
    let levels = indices(s, &format!("{VAE_PREFIX}decoder.up.")).len();
    if levels == 0 {
        return Err(format!(
            "it has no {VAE_PREFIX}decoder.up.* (the VAE decoder)"
        ));
    }
    let channels = (0..levels)
        .map(|i| {
            need(&format!("decoder.up.{i}.block.0.conv2.weight")).map(|s| *s.first().unwrap_or(&0))
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let layers = indices(s, &format!("{VAE_PREFIX}encoder.down.0.block.")).len();
    let dim = |k: &str, i: usize| need(k).map(|s| *s.get(i).unwrap_or(&0));
    Ok(VaeConfig {
        in_channels: dim("encoder.conv_in.weight", 1)?,
        out_channels: dim("decoder.conv_out.weight", 0)?,
        block_out_channels: channels,
        layers_per_block: layers.max(1),
        latent_channels: dim("decoder.conv_in.weight", 1)?,
        norm_num_groups: 32,
        use_quant_conv: get("quant_conv.weight").is_some(),
        use_post_quant_conv: get("post_quant_conv.weight").is_some(),
        scaling_factor: SD_SCALING_FACTOR,
    })
}

/// The text encoder(s): the first (SD's only one, SDXL's CLIP ViT-L), its tower, and SDXL's
/// second (OpenCLIP ViT-bigG with its projection).
fn infer_clip(
    s: &Shapes,
    heads: Option<usize>,
    heads2: Option<usize>,
) -> std::result::Result<(ClipConfig, TextTower, Option<ClipConfig>), String> {
    let tower = [OPENAI_CLIP_PREFIX, OPENAI_CLIP_OLD_PREFIX, SDXL_CLIP_PREFIX]
        .into_iter()
        .find(|p| s.contains_key(&format!("{p}embeddings.token_embedding.weight")))
        .map(|prefix| TextTower::OpenAi { prefix })
        .or_else(|| {
            s.contains_key(&format!("{OPENCLIP_PREFIX}token_embedding.weight"))
                .then_some(TextTower::OpenClip)
        })
        .ok_or_else(|| {
            format!(
                "it has no text encoder: expected {OPENAI_CLIP_PREFIX}* (SD 1.x), {OPENCLIP_PREFIX}* (SD 2.x) or {SDXL_CLIP_PREFIX}* and {SDXL_OPENCLIP_PREFIX}* (SDXL)"
            )
        })?;
    let clip = match tower {
        TextTower::OpenAi { prefix } => openai_config(s, prefix, heads)?,
        // SD 2.x uses the penultimate layer: the last is not run.
        TextTower::OpenClip => openclip_config(s, OPENCLIP_PREFIX, heads, true)?,
    };
    let clip2 = if tower
        == (TextTower::OpenAi {
            prefix: SDXL_CLIP_PREFIX,
        }) {
        if !s.contains_key(&format!("{SDXL_OPENCLIP_PREFIX}token_embedding.weight")) {
            return Err(format!(
                "it has SDXL's first text encoder ({SDXL_CLIP_PREFIX}*) but not its second ({SDXL_OPENCLIP_PREFIX}token_embedding.weight, OpenCLIP ViT-bigG)"
            ));
        }
        // SDXL runs every layer: the penultimate one's output for the context, the last one's
        // for the pooled embedding.
        let mut c = openclip_config(s, SDXL_OPENCLIP_PREFIX, heads2, false)?;
        let k = format!("{SDXL_OPENCLIP_PREFIX}text_projection");
        c.projection_dim = Some(match s.get(&k).map(Vec::as_slice) {
            Some([d, p]) if *d == c.hidden_size => *p,
            Some(x) => {
                return Err(format!(
                    "{k} has shape {x:?}, expected [{}, projection width]",
                    c.hidden_size
                ));
            }
            None => return Err(format!("it has no {k} (SDXL's pooled text projection)")),
        });
        Some(c)
    } else {
        None
    };
    Ok((clip, tower, clip2))
}

/// `[a, b]` of the two-dimensional tensor `k`.
fn two(s: &Shapes, k: &str) -> std::result::Result<(usize, usize), String> {
    match s.get(k).map(Vec::as_slice) {
        Some([a, b]) => Ok((*a, *b)),
        Some(x) => Err(format!("{k} has shape {x:?}, expected two dimensions")),
        None => Err(format!("it has no {k}")),
    }
}

/// `heads` (metadata) or 64 channels per head, checked against the width `hidden`.
fn clip_heads(
    hidden: usize,
    heads: Option<usize>,
    meta: &str,
) -> std::result::Result<usize, String> {
    let heads = heads.unwrap_or((hidden / 64).max(1));
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "the text encoder's width {hidden} is not divisible into {heads} heads (set metadata {meta})"
        ));
    }
    Ok(heads)
}

/// OpenAI CLIP in HF names under `prefix`.
fn openai_config(
    s: &Shapes,
    prefix: &str,
    heads: Option<usize>,
) -> std::result::Result<ClipConfig, String> {
    let (vocab, hidden) = two(s, &format!("{prefix}embeddings.token_embedding.weight"))?;
    let (positions, _) = two(s, &format!("{prefix}embeddings.position_embedding.weight"))?;
    let layers = indices(s, &format!("{prefix}encoder.layers.")).len();
    let (inter, _) = two(s, &format!("{prefix}encoder.layers.0.mlp.fc1.weight"))?;
    Ok(ClipConfig {
        vocab_size: vocab,
        max_position_embeddings: positions,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: clip_heads(hidden, heads, META_CLIP_HEADS)?,
        intermediate_size: inter,
        activation: ClipActivation::QuickGelu,
        projection_dim: None,
    })
}

/// OpenCLIP under `p`; `skip_last`: the model runs all but the last layer (SD 2.x).
fn openclip_config(
    s: &Shapes,
    p: &str,
    heads: Option<usize>,
    skip_last: bool,
) -> std::result::Result<ClipConfig, String> {
    let (vocab, hidden) = two(s, &format!("{p}token_embedding.weight"))?;
    let (positions, _) = two(s, &format!("{p}positional_embedding"))?;
    let blocks = indices(s, &format!("{p}transformer.resblocks.")).len();
    let layers = if skip_last {
        if blocks < 2 {
            return Err(format!(
                "its OpenCLIP text encoder has {blocks} layers; SD 2.x uses the penultimate one, so at least 2 are needed"
            ));
        }
        blocks - 1
    } else {
        blocks
    };
    let (inter, _) = two(s, &format!("{p}transformer.resblocks.0.mlp.c_fc.weight"))?;
    let meta = if p == SDXL_OPENCLIP_PREFIX {
        META_CLIP2_HEADS
    } else {
        META_CLIP_HEADS
    };
    Ok(ClipConfig {
        vocab_size: vocab,
        max_position_embeddings: positions,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: clip_heads(hidden, heads, meta)?,
        intermediate_size: inter,
        activation: ClipActivation::GeluErf,
        projection_dim: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15_layout() -> LdmLayout {
        LdmLayout {
            family: Family::Sd1,
            unet: UNetConfig::sd15(),
            vae: VaeConfig {
                in_channels: 3,
                out_channels: 3,
                block_out_channels: vec![128, 256, 512, 512],
                layers_per_block: 2,
                latent_channels: 4,
                norm_num_groups: 32,
                use_quant_conv: true,
                use_post_quant_conv: true,
                scaling_factor: SD_SCALING_FACTOR,
            },
            clip: ClipConfig::sd15(),
            tower: TextTower::OpenAi {
                prefix: OPENAI_CLIP_PREFIX,
            },
            clip2: None,
            prediction_given: false,
            from_metadata: vec![],
        }
    }

    /// Key pairs as published (research/domain-facts.md §5.1 and the A1111/diffusers
    /// conversion tables).
    #[test]
    fn sd15_keys_follow_the_documented_rules() {
        let l = sd15_layout();
        let u = |d: &str| l.unet_source(d).map(|s| s.key);
        for (d, ldm) in [
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
                "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
            ),
            (
                "down_blocks.0.resnets.1.conv1.weight",
                "input_blocks.2.0.in_layers.2.weight",
            ),
            (
                "down_blocks.1.resnets.0.conv_shortcut.weight",
                "input_blocks.4.0.skip_connection.weight",
            ),
            (
                "down_blocks.2.downsamplers.0.conv.bias",
                "input_blocks.9.0.op.bias",
            ),
            (
                "down_blocks.3.resnets.1.time_emb_proj.weight",
                "input_blocks.11.0.emb_layers.1.weight",
            ),
            (
                "mid_block.resnets.1.norm2.weight",
                "middle_block.2.out_layers.0.weight",
            ),
            (
                "mid_block.attentions.0.proj_out.weight",
                "middle_block.1.proj_out.weight",
            ),
            (
                "up_blocks.0.resnets.2.conv2.weight",
                "output_blocks.2.0.out_layers.3.weight",
            ),
            (
                "up_blocks.0.upsamplers.0.conv.weight",
                "output_blocks.2.1.conv.weight",
            ),
            (
                "up_blocks.1.upsamplers.0.conv.weight",
                "output_blocks.5.2.conv.weight",
            ),
            (
                "up_blocks.2.upsamplers.0.conv.bias",
                "output_blocks.8.2.conv.bias",
            ),
            (
                "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj.weight",
                "output_blocks.11.1.transformer_blocks.0.ff.net.0.proj.weight",
            ),
            ("conv_in.weight", "input_blocks.0.0.weight"),
            ("time_embedding.linear_2.bias", "time_embed.2.bias"),
            ("conv_norm_out.weight", "out.0.weight"),
            ("conv_out.bias", "out.2.bias"),
        ] {
            assert_eq!(u(d), Some(format!("{UNET_PREFIX}{ldm}")), "{d}");
        }
        let v = |d: &str| l.vae_source(d).map(|s| (s.key, s.squeeze_1x1));
        for (d, ldm, sq) in [
            (
                "decoder.up_blocks.0.resnets.2.norm2.bias",
                "decoder.up.3.block.2.norm2.bias",
                false,
            ),
            (
                "decoder.up_blocks.0.upsamplers.0.conv.weight",
                "decoder.up.3.upsample.conv.weight",
                false,
            ),
            (
                "decoder.up_blocks.2.resnets.0.conv_shortcut.weight",
                "decoder.up.1.block.0.nin_shortcut.weight",
                false,
            ),
            (
                "decoder.mid_block.attentions.0.to_q.weight",
                "decoder.mid.attn_1.q.weight",
                true,
            ),
            (
                "decoder.mid_block.attentions.0.to_out.0.weight",
                "decoder.mid.attn_1.proj_out.weight",
                true,
            ),
            (
                "decoder.mid_block.attentions.0.to_out.0.bias",
                "decoder.mid.attn_1.proj_out.bias",
                false,
            ),
            (
                "encoder.mid_block.attentions.0.group_norm.weight",
                "encoder.mid.attn_1.norm.weight",
                false,
            ),
            (
                "encoder.mid_block.resnets.1.conv1.weight",
                "encoder.mid.block_2.conv1.weight",
                false,
            ),
            (
                "encoder.down_blocks.0.downsamplers.0.conv.weight",
                "encoder.down.0.downsample.conv.weight",
                false,
            ),
            ("encoder.conv_norm_out.bias", "encoder.norm_out.bias", false),
            ("post_quant_conv.weight", "post_quant_conv.weight", false),
        ] {
            assert_eq!(v(d), Some((format!("{VAE_PREFIX}{ldm}"), sq)), "{d}");
        }
        assert_eq!(
            l.clip_source("text_model.encoder.layers.11.mlp.fc2.bias")
                .map(|s| s.key),
            Some(format!(
                "{OPENAI_CLIP_PREFIX}encoder.layers.11.mlp.fc2.bias"
            ))
        );
        assert!(l.unet_source("down_blocks.0.nonsense.weight").is_none());
        assert!(l.is_ignored("model_ema.decay"));
        assert!(l.is_ignored("alphas_cumprod"));
        assert!(l.is_ignored(&format!("{OPENAI_CLIP_PREFIX}embeddings.position_ids")));
        assert!(!l.is_ignored("model.diffusion_model.foo"));
    }

    #[test]
    fn openclip_fused_projections_are_row_ranges() {
        let mut l = sd15_layout();
        l.tower = TextTower::OpenClip;
        l.clip = ClipConfig::sd21();
        let k = l
            .clip_source("text_model.encoder.layers.3.self_attn.k_proj.weight")
            .unwrap();
        assert_eq!(
            k.key,
            format!("{OPENCLIP_PREFIX}transformer.resblocks.3.attn.in_proj_weight")
        );
        assert_eq!(k.rows, Some(1024..2048));
        assert_eq!(k.shape_from(&[3072, 1024]), Ok(vec![1024, 1024]));
        assert!(k.shape_from(&[1024, 1024]).is_err());
        let v = l
            .clip_source("text_model.encoder.layers.0.self_attn.v_proj.bias")
            .unwrap();
        assert_eq!(v.rows, Some(2048..3072));
        assert_eq!(
            l.clip_source("text_model.final_layer_norm.weight")
                .unwrap()
                .key,
            format!("{OPENCLIP_PREFIX}ln_final.weight")
        );
        assert_eq!(
            l.clip_source("text_model.embeddings.position_embedding.weight")
                .unwrap()
                .key,
            format!("{OPENCLIP_PREFIX}positional_embedding")
        );
        assert_eq!(
            l.clip_source("text_model.encoder.layers.22.mlp.fc1.weight")
                .unwrap()
                .key,
            format!("{OPENCLIP_PREFIX}transformer.resblocks.22.mlp.c_fc.weight")
        );
        // 23 layers used; the file's 24th (index 23) is not.
        assert!(l.is_ignored(&format!(
            "{OPENCLIP_PREFIX}transformer.resblocks.23.ln_1.weight"
        )));
        assert!(!l.is_ignored(&format!(
            "{OPENCLIP_PREFIX}transformer.resblocks.22.ln_1.weight"
        )));
        assert!(l.is_ignored(&format!("{OPENCLIP_PREFIX}text_projection")));
    }

    /// The module map and the weight-key mapping are one table: for every weight our modules
    /// ask for, the module that owns it maps (both ways) to the module that owns its LDM key,
    /// and every probe point maps to an LDM module that holds exactly the LDM keys of the
    /// weights under it — for the tiny synthetic model, SD 1.5, SD 2.1, the tiny SDXL model and
    /// SDXL base.
    #[test]
    fn module_paths_agree_with_the_weight_keys() {
        use crate::model::attention::AttentionImpl;
        use crate::model::checkpoint::{required_weights, unet_without_weights};
        use crate::model::synth::{SynthSize, ldm_layout};
        let mut sd21 = sd15_layout();
        sd21.unet = UNetConfig::sd21();
        sd21.clip = ClipConfig::sd21();
        sd21.tower = TextTower::OpenClip;
        let parent = |k: &str| k.rsplit_once('.').map(|(p, _)| p.to_string());
        for (name, layout) in [
            ("tiny", ldm_layout(SynthSize::Tiny)),
            ("SD 1.5", ldm_layout(SynthSize::Sd15)),
            ("SD 2.1", sd21),
            ("SDXL tiny", ldm_layout(SynthSize::SdxlTiny)),
            ("SDXL", ldm_layout(SynthSize::Sdxl)),
        ] {
            let map = layout.map();
            // (our weight name with its component, its LDM key)
            let mut weights = Vec::new();
            for &c in layout.components() {
                for w in required_weights(&layout, c).unwrap().into_keys() {
                    let src = layout.source(c, &w).unwrap();
                    let ours = match w.strip_prefix("text_model.") {
                        Some(rest) => format!("{}.{rest}", c.name()),
                        None => format!("{}.{w}", c.name()),
                    };
                    // Parameters that are no module's in LDM: fused rows, OpenCLIP's positional
                    // embedding and text projection.
                    if src.rows.is_none()
                        && !src.key.ends_with("positional_embedding")
                        && !src.transpose
                    {
                        let (m, l) = (parent(&ours).unwrap(), parent(&src.key).unwrap());
                        assert_eq!(map.to_ldm(&m).as_ref(), Some(&l), "{name}: {ours}");
                        assert_eq!(map.from_ldm(&l).as_ref(), Some(&m), "{name}: {}", src.key);
                    }
                    weights.push((ours, src.key));
                }
            }
            let unet =
                unet_without_weights(&layout.unet, candle_core::DType::F32, AttentionImpl::Full)
                    .unwrap();
            let mut keys: Vec<String> = unet
                .probe_points(2, 8, 8, 77)
                .into_iter()
                .map(|(k, _)| k)
                .filter(|k| !k.ends_with(".probs"))
                .collect();
            keys.extend(
                (0..layout.clip.num_hidden_layers)
                    .map(|n| format!("text_encoder.encoder.layers.{n}")),
            );
            keys.extend(
                [
                    "text_encoder.final_layer_norm",
                    "vae.post_quant_conv",
                    "vae.decoder",
                ]
                .map(String::from),
            );
            if let Some(c) = &layout.clip2 {
                keys.extend(
                    (0..c.num_hidden_layers)
                        .map(|n| format!("text_encoder_2.encoder.layers.{n}"))
                        .chain(["text_encoder_2.final_layer_norm".into()]),
                );
                assert!(keys.iter().any(|k| k == "unet.add_embedding"), "{name}");
            }
            assert!(keys.len() > 40, "{name}: {} probe keys", keys.len());
            for k in keys {
                let l = map
                    .to_ldm(&k)
                    .unwrap_or_else(|| panic!("{name}: {k} has no LDM path"));
                assert_eq!(map.from_ldm(&l).as_ref(), Some(&k), "{name}: {l}");
                let ours_under: BTreeSet<&str> = weights
                    .iter()
                    .filter(|(w, _)| w.starts_with(&format!("{k}.")))
                    .map(|(_, key)| key.as_str())
                    .collect();
                let ldm_under: BTreeSet<&str> = weights
                    .iter()
                    .filter(|(_, key)| key.starts_with(&format!("{l}.")))
                    .map(|(_, key)| key.as_str())
                    .collect();
                assert!(!ldm_under.is_empty(), "{name}: {k} -> {l} holds no weights");
                // A level output's LDM sequential holds only part of the level (its last layer
                // and sampler); everything else holds the same weights on both sides.
                let level = k.matches('.').count() == 2 && !k.contains("mid_block")
                    || k == "unet.mid_block";
                if level {
                    assert!(ldm_under.is_subset(&ours_under), "{name}: {k} -> {l}");
                } else {
                    assert_eq!(ours_under, ldm_under, "{name}: {k} -> {l}");
                }
            }
        }
    }

    #[test]
    fn squeezed_shapes() {
        let s = Source {
            key: "k".into(),
            rows: None,
            squeeze_1x1: true,
            transpose: false,
        };
        assert_eq!(s.shape_from(&[512, 512, 1, 1]), Ok(vec![512, 512]));
        assert_eq!(s.shape_from(&[512, 512]), Ok(vec![512, 512]));
        assert!(s.shape_from(&[512, 512, 3, 3]).is_err());
    }
}
