//! Deterministic random-weight models in the diffusers folder layout.
//!
//! Weights come from a `VarBuilder` backend that invents each tensor the model asks for: its
//! values depend only on the seed and the weight's name (an XXH3 of the name seeds a SplitMix64
//! stream), never on construction order, thread count or machine. Norm weights are 1 and biases
//! small; other weights are N(0, 1/fan_in), which keeps activations of the UNet finite and
//! non-trivial through a full sampling run.

use super::clip::{ClipConfig, ClipTextModel};
use super::config::UNetConfig;
use super::unet::UNet;
use super::{ModelError, Result};
use crate::model::attention::{AttentionImpl, Numerics};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::{Init, VarBuilder, var_builder::SimpleBackend};
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Synthetic model sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SynthSize {
    /// SD 1.x structure at tiny widths (tests, demos).
    Tiny,
    /// SD 1.5's real shapes (benchmarks).
    Sd15,
    /// SDXL's structure at tiny widths: two text encoders (the second with a projection), the
    /// `text_time` UNet, the SDXL VAE scaling.
    SdxlTiny,
    /// SDXL base's real shapes (10 GB of f32 weights; benchmarks).
    Sdxl,
}

impl std::str::FromStr for SynthSize {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "tiny" => Ok(SynthSize::Tiny),
            "sd15" => Ok(SynthSize::Sd15),
            "sdxl-tiny" => Ok(SynthSize::SdxlTiny),
            "sdxl" => Ok(SynthSize::Sdxl),
            _ => Err(format!(
                "unknown synthetic model size '{s}' (expected tiny, sd15, sdxl-tiny or sdxl)"
            )),
        }
    }
}

impl SynthSize {
    pub fn unet_config(self) -> UNetConfig {
        match self {
            SynthSize::Tiny => UNetConfig::tiny(),
            SynthSize::Sd15 => UNetConfig::sd15(),
            SynthSize::SdxlTiny => UNetConfig::sdxl_tiny(),
            SynthSize::Sdxl => UNetConfig::sdxl(),
        }
    }

    /// An SDXL-structured size.
    pub fn is_sdxl(self) -> bool {
        matches!(self, SynthSize::SdxlTiny | SynthSize::Sdxl)
    }

    /// The second text encoder (SDXL's, with its projection), if the model has one.
    pub fn clip2_config(self) -> Option<ClipConfig> {
        match self {
            SynthSize::SdxlTiny => Some(ClipConfig::sdxl_g_tiny()),
            SynthSize::Sdxl => Some(ClipConfig::sdxl_g()),
            _ => None,
        }
    }

    /// The VAE's latent scaling factor (SD 0.18215, SDXL 0.13025).
    pub fn vae_scaling(self) -> f64 {
        if self.is_sdxl() {
            super::vae::SDXL_SCALING_FACTOR
        } else {
            super::vae::SD_SCALING_FACTOR
        }
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1).
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

/// A `VarBuilder` backend that makes up every tensor deterministically and remembers them in a
/// map shared with whoever built it.
pub struct RandomWeights {
    seed: u64,
    made: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl RandomWeights {
    fn values(&self, shape: &Shape, name: &str, hint: Init) -> Vec<f32> {
        let n = shape.elem_count();
        let mut rng = SplitMix(self.seed ^ xxhash_rust::xxh3::xxh3_64(name.as_bytes()));
        let dims = shape.dims();
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        match hint {
            Init::Const(c) => vec![c as f32; n],
            Init::Uniform { lo, up } => (0..n)
                .map(|_| (lo + (up - lo) * rng.uniform()) as f32)
                .collect(),
            // Weights (Kaiming/normal hints): N(0, 1/fan_in), by Box–Muller.
            _ => {
                let std = 1.0 / (fan_in as f64).sqrt();
                (0..n)
                    .map(|_| {
                        let (u, v) = (rng.uniform(), rng.uniform());
                        ((-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos() * std) as f32
                    })
                    .collect()
            }
        }
    }
}

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = Tensor::from_vec(self.values(&s, name, h), s, dev)?.to_dtype(dtype)?;
        self.made
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), t.clone());
        Ok(t)
    }

    fn get_unchecked(
        &self,
        name: &str,
        _dtype: DType,
        _dev: &Device,
    ) -> candle_core::Result<Tensor> {
        Err(candle_core::Error::Msg(format!(
            "random weights need a shape for '{name}'"
        )))
    }

    fn contains_tensor(&self, _name: &str) -> bool {
        true
    }
}

/// The weights `build` asks for, made up by [`RandomWeights`] (f32, on the CPU), by name.
pub fn random_weights(
    seed: u64,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<BTreeMap<String, Tensor>> {
    let made = Arc::new(Mutex::new(BTreeMap::new()));
    let backend = RandomWeights {
        seed,
        made: made.clone(),
    };
    build(VarBuilder::from_backend(
        Box::new(backend),
        DType::F32,
        Device::Cpu,
    ))?;
    let tensors = std::mem::take(&mut *made.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(tensors)
}

/// Random UNet weights for `config`, by weight name (f32, on the CPU).
pub fn unet_weights(config: &UNetConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    random_weights(seed, |vb| {
        UNet::new(vb, config, Numerics::PYTORCH, AttentionImpl::Full, "unet").map(drop)
    })
}

/// The VAE of a synthetic model: SD's AutoencoderKL structure (4 levels, so latents are 1/8 of
/// the image side), at SD 1.5's widths or tiny ones.
pub fn vae_config(size: SynthSize) -> AutoEncoderKLConfig {
    let (channels, layers) = match size {
        SynthSize::Tiny | SynthSize::SdxlTiny => (vec![32; 4], 1),
        SynthSize::Sd15 | SynthSize::Sdxl => (vec![128, 256, 512, 512], 2),
    };
    AutoEncoderKLConfig {
        block_out_channels: channels,
        layers_per_block: layers,
        latent_channels: 4,
        norm_num_groups: 32,
        use_quant_conv: true,
        use_post_quant_conv: true,
    }
}

/// diffusers' `vae/config.json` for `cfg`.
pub fn vae_config_json(
    cfg: &AutoEncoderKLConfig,
    sample_size: usize,
    scaling_factor: f64,
) -> serde_json::Value {
    let n = cfg.block_out_channels.len();
    serde_json::json!({
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.21.0", "act_fn": "silu",
        "block_out_channels": cfg.block_out_channels, "down_block_types": vec!["DownEncoderBlock2D"; n],
        "up_block_types": vec!["UpDecoderBlock2D"; n], "in_channels": 3, "out_channels": 3,
        "latent_channels": cfg.latent_channels, "layers_per_block": cfg.layers_per_block,
        "norm_num_groups": cfg.norm_num_groups, "sample_size": sample_size, "scaling_factor": scaling_factor,
    })
}

/// The text encoder of a synthetic model.
pub fn clip_config(size: SynthSize) -> ClipConfig {
    match size {
        SynthSize::Tiny | SynthSize::SdxlTiny => ClipConfig::tiny(),
        SynthSize::Sd15 | SynthSize::Sdxl => ClipConfig::sd15(),
    }
}

/// Random text-encoder weights, by weight name (HF layout, under `text_model.`).
pub fn clip_weights(cfg: &ClipConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    random_weights(seed, |vb| {
        ClipTextModel::new(vb, cfg, "text_encoder").map(drop)
    })
}

/// GPT-2/CLIP's byte ↔ unicode table; the tokenizer owns it.
pub use crate::text::bytes_to_unicode;

/// A byte-level CLIP BPE vocabulary without merges: the 256 byte tokens, their `</w>` forms
/// (ids 0–511, the same ids as in OpenAI's CLIP vocabulary) and the two special tokens at
/// OpenAI's ids 49406/49407. Every prompt tokenizes, one token per byte.
pub fn byte_level_vocab() -> serde_json::Value {
    let chars = bytes_to_unicode();
    let mut vocab = serde_json::Map::new();
    for (i, (_, c)) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
        vocab.insert(format!("{c}</w>"), (i + 256).into());
    }
    vocab.insert("<|startoftext|>".into(), 49406.into());
    vocab.insert("<|endoftext|>".into(), 49407.into());
    serde_json::Value::Object(vocab)
}

/// Random VAE weights, by weight name.
pub fn vae_weights(cfg: &AutoEncoderKLConfig, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    random_weights(seed, |vb| {
        AutoEncoderKL::new(vb, 3, 3, cfg.clone()).map(drop)
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    Ok(crate::export::write_atomic(path, text.as_bytes())?)
}

/// Save `weights` as safetensors at `path`, through a temporary file (never half-written).
fn save(path: &Path, weights: BTreeMap<String, Tensor>) -> Result<()> {
    let tmp = path.with_extension("safetensors.partial");
    candle_core::safetensors::save(&weights.into_iter().collect(), &tmp).map_err(|source| {
        ModelError::Weights {
            file: tmp.clone(),
            error: source,
        }
    })?;
    std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        op: "cannot create",
        source,
    })
}

/// Write a synthetic model to `dir` in the diffusers layout: `model_index.json`,
/// `unet/`, `vae/`, `text_encoder/` (config and weights each), `tokenizer/` (a byte-level CLIP
/// BPE vocabulary, see [`byte_level_vocab`]) and `scheduler/scheduler_config.json`.
pub fn write_model(dir: &Path, size: SynthSize, seed: u64) -> Result<()> {
    let io = |path: &Path, source| ModelError::Io {
        path: path.to_path_buf(),
        op: "cannot create",
        source,
    };
    let xl: &[&str] = if size.is_sdxl() {
        &["text_encoder_2", "tokenizer_2"]
    } else {
        &[]
    };
    for sub in ["unet", "vae", "text_encoder", "tokenizer", "scheduler"]
        .iter()
        .chain(xl)
    {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
    }
    let cfg = size.unet_config();
    write_json(&dir.join("unet/config.json"), &cfg.to_diffusers_json())?;
    let (scheduler, index) = if size.is_sdxl() {
        // SDXL base's scheduler and pipeline (Euler, leading timesteps).
        (
            serde_json::json!({
                "_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
                "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": false,
                "skip_prk_steps": true, "steps_offset": 1, "timestep_spacing": "leading",
                "use_karras_sigmas": false,
            }),
            serde_json::json!({
                "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.21.0",
                "_sdtrace_synthetic": {"size": format!("{size:?}").to_lowercase(), "seed": seed},
                "force_zeros_for_empty_prompt": true,
                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                "tokenizer_2": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "EulerDiscreteScheduler"],
            }),
        )
    } else {
        (
            serde_json::json!({
                "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
                "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon",
                "set_alpha_to_one": false, "steps_offset": 1, "skip_prk_steps": true,
            }),
            serde_json::json!({
                "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.21.0",
                "_sdtrace_synthetic": {"size": format!("{size:?}").to_lowercase(), "seed": seed},
                "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
                "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
                "scheduler": ["diffusers", "PNDMScheduler"],
            }),
        )
    };
    write_json(&dir.join("scheduler/scheduler_config.json"), &scheduler)?;
    write_json(&dir.join("model_index.json"), &index)?;
    save(
        &dir.join("unet/diffusion_pytorch_model.safetensors"),
        unet_weights(&cfg, seed)?,
    )?;
    let vae = vae_config(size);
    write_json(
        &dir.join("vae/config.json"),
        &vae_config_json(&vae, cfg.sample_size * 8, size.vae_scaling()),
    )?;
    save(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        vae_weights(&vae, seed ^ VAE_SEED)?,
    )?;
    let clip = clip_config(size);
    write_json(&dir.join("text_encoder/config.json"), &clip.to_hf_json())?;
    save(
        &dir.join("text_encoder/model.safetensors"),
        clip_weights(&clip, seed ^ CLIP_SEED)?,
    )?;
    if let Some(clip2) = size.clip2_config() {
        write_json(&dir.join("text_encoder_2/config.json"), &clip2.to_hf_json())?;
        save(
            &dir.join("text_encoder_2/model.safetensors"),
            clip_weights(&clip2, seed ^ CLIP2_SEED)?,
        )?;
    }
    write_tokenizer(&dir.join("tokenizer"), "<|endoftext|>")?;
    if size.is_sdxl() {
        // SDXL's second tokenizer (OpenCLIP's) pads with "!".
        write_tokenizer(&dir.join("tokenizer_2"), "!")?;
    }
    Ok(())
}

/// A CLIP BPE tokenizer folder (byte-level vocabulary, no merges) padding with `pad`.
fn write_tokenizer(dir: &Path, pad: &str) -> Result<()> {
    write_json(&dir.join("vocab.json"), &byte_level_vocab())?;
    let merges = dir.join("merges.txt");
    crate::export::write_atomic(&merges, b"#version: 0.2\n")?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &serde_json::json!({
            "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": true,
            "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad,
            "unk_token": "<|endoftext|>",
        }),
    )?;
    Ok(())
}

/// The single-file layout of a synthetic model: SD 1.x's (OpenAI CLIP text tower) or SDXL
/// base's (`conditioner.embedders.0/1`), with the head counts and sample size their shapes
/// cannot tell in the file's metadata for the tiny sizes.
pub fn ldm_layout(size: SynthSize) -> super::ldm::LdmLayout {
    use super::ldm::{
        Family, LdmLayout, META_CLIP_HEADS, META_CLIP2_HEADS, META_UNET_HEADS,
        META_UNET_SAMPLE_SIZE, OPENAI_CLIP_PREFIX, SDXL_CLIP_PREFIX, TextTower,
    };
    let vae = vae_config(size);
    LdmLayout {
        family: match size {
            SynthSize::Sd15 => Family::Sd1,
            SynthSize::Sdxl => Family::Sdxl,
            _ => Family::Other,
        },
        unet: size.unet_config(),
        vae: super::vae::VaeConfig {
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vae.block_out_channels.clone(),
            layers_per_block: vae.layers_per_block,
            latent_channels: vae.latent_channels,
            norm_num_groups: vae.norm_num_groups,
            use_quant_conv: vae.use_quant_conv,
            use_post_quant_conv: vae.use_post_quant_conv,
            scaling_factor: size.vae_scaling(),
        },
        clip: clip_config(size),
        tower: TextTower::OpenAi {
            prefix: if size.is_sdxl() {
                SDXL_CLIP_PREFIX
            } else {
                OPENAI_CLIP_PREFIX
            },
        },
        clip2: size.clip2_config(),
        prediction_given: false,
        from_metadata: match size {
            SynthSize::Tiny => vec![META_UNET_HEADS, META_CLIP_HEADS, META_UNET_SAMPLE_SIZE],
            SynthSize::SdxlTiny => vec![
                META_UNET_HEADS,
                META_CLIP_HEADS,
                META_CLIP2_HEADS,
                META_UNET_SAMPLE_SIZE,
            ],
            _ => vec![],
        },
    }
}

/// Seeds of the components' weights, derived from the model's seed (the same in both layouts).
const VAE_SEED: u64 = 0x0056_4145;
const CLIP_SEED: u64 = 0x434c_4950;
const CLIP2_SEED: u64 = 0x0043_4c32;

/// Write the same model as [`write_model`] (same `size` and `seed`, so the same weights) as one
/// LDM/CompVis checkpoint file, `dtype` f32 or f16, by the key rules of [`super::ldm`]: SD 1.x's
/// layout, or for the SDXL sizes the webui's SDXL layout (`conditioner.embedders.0/1`,
/// OpenCLIP's fused in-projection and transposed `text_projection`, `label_emb`).
pub fn write_checkpoint_file(path: &Path, size: SynthSize, seed: u64, dtype: DType) -> Result<()> {
    use super::checkpoint::{Component, write_checkpoint};
    let layout = ldm_layout(size);
    let unet = unet_weights(&layout.unet, seed)?;
    let vae = vae_weights(&vae_config(size), seed ^ VAE_SEED)?;
    let clip = clip_weights(&layout.clip, seed ^ CLIP_SEED)?;
    let clip2 = match &layout.clip2 {
        Some(c) => Some(clip_weights(c, seed ^ CLIP2_SEED)?),
        None => None,
    };
    let mut meta = BTreeMap::new();
    meta.insert(
        "sdtrace.synthetic".to_string(),
        format!("{{\"size\": \"{size:?}\", \"seed\": {seed}}}").to_lowercase(),
    );
    for key in &layout.from_metadata {
        let value = match *key {
            super::ldm::META_UNET_HEADS => {
                let heads: Vec<usize> = layout.unet.blocks.iter().map(|b| b.heads).collect();
                serde_json::to_string(&heads).unwrap_or_default()
            }
            super::ldm::META_CLIP_HEADS => layout.clip.num_attention_heads.to_string(),
            super::ldm::META_CLIP2_HEADS => layout
                .clip2
                .as_ref()
                .map_or(0, |c| c.num_attention_heads)
                .to_string(),
            _ => layout.unet.sample_size.to_string(),
        };
        meta.insert((*key).to_string(), value);
    }
    let mut parts = vec![
        (Component::Unet, &unet),
        (Component::TextEncoder, &clip),
        (Component::Vae, &vae),
    ];
    if let Some(c) = &clip2 {
        parts.push((Component::TextEncoder2, c));
    }
    write_checkpoint(path, &layout, &parts, dtype, meta)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::clip::ClipTextModel;
    use crate::model::unet::{Added, UNet};
    use crate::probe::Probe;

    /// The SDXL-tiny folder reads back as written and runs: our UNet with the added
    /// conditioning (and refusing to run without it), the second encoder's pooled output.
    #[test]
    fn the_sdxl_tiny_folder_reads_back_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        write_model(dir.path(), SynthSize::SdxlTiny, 5).unwrap();
        let cfg = UNetConfig::from_diffusers_file(&dir.path().join("unet/config.json")).unwrap();
        assert_eq!(cfg, UNetConfig::sdxl_tiny());
        let dev = Device::Cpu;
        let unet = UNet::load(
            &dir.path().join("unet/diffusion_pytorch_model.safetensors"),
            &cfg,
            DType::F32,
            &dev,
            Numerics::PYTORCH,
            AttentionImpl::Full,
        )
        .unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 4, 8, 8), &dev).unwrap();
        let ctx = Tensor::randn(0f32, 1.0, (2, 77, 64), &dev).unwrap();
        let probe = Probe::disabled();
        let e = unet
            .forward(&x, 500.0, &ctx, &probe)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pooled text embedding"), "{e}");
        let added = |size: f32| Added {
            text_embeds: Tensor::ones((2, 32), DType::F32, &dev).unwrap(),
            time_ids: Tensor::new(&[[size, size, 0.0, 0.0, size, size]; 2], &dev).unwrap(),
        };
        let a = unet
            .forward_added(&x, 500.0, &ctx, Some(&added(64.0)), &probe)
            .unwrap();
        let b = unet
            .forward_added(&x, 500.0, &ctx, Some(&added(1024.0)), &probe)
            .unwrap();
        assert_eq!(a.dims(), [2, 4, 8, 8]);
        // The size ids reach the output.
        let d: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(d > 0.0);
        let clip2 = ClipConfig::from_hf_json(
            &crate::model::read_json(&dir.path().join("text_encoder_2/config.json")).unwrap(),
            Path::new("config.json"),
        )
        .unwrap();
        assert_eq!(clip2, ClipConfig::sdxl_g_tiny());
        let te2 = ClipTextModel::load(
            &dir.path().join("text_encoder_2/model.safetensors"),
            &clip2,
            DType::F32,
            &dev,
        )
        .unwrap();
        let ids = Tensor::new(&[[49406u32, 320, 49407, 0]], &dev).unwrap();
        let (hidden, pooled) = te2.forward_sdxl(&ids, &probe).unwrap();
        assert_eq!(
            (hidden.dims(), pooled.unwrap().dims()),
            (&[1, 4, 32][..], &[1, 32][..])
        );
    }
}
