//! Where a recording's model comes from: a diffusers folder or a single-file LDM checkpoint
//! (`--model FILE.safetensors`, what A1111 users have).
//!
//! `ModelSource::open` settles everything before any weight is read: for a folder, its
//! configs and files; for a file, its hashes (A1111's old 8-hex hash and the SHA-256, checked
//! against `--expect-hash`), the model read off its shapes and the key check, so a wrong or
//! damaged file is refused with every problem listed and nothing loaded. The tokenizer is the
//! folder's `tokenizer/`, `--tokenizer DIR`, or for a single file the built-in OpenAI CLIP
//! vocabulary (SD 2.x's OpenCLIP pads with `!`). `ModelSource::describe` puts the hashes and
//! what was read from the file into the run header.

use super::{ModelFiles, PipelineError, Result, file_hash};
use crate::model::attention::{AttentionImpl, Numerics};
use crate::model::checkpoint::{Checkpoint, KeyReport};
use crate::model::clip::{ClipConfig, ClipTextModel};
use crate::model::config::{Prediction, UNetConfig};
use crate::model::hash::{ModelHashes, hash_file};
use crate::model::ldm::{LdmLayout, TextTower};
use crate::model::unet::UNet;
use crate::model::vae::Vae;
use crate::sampling::diffusers::SchedulerConfig;
use crate::text::ClipTokenizer;
use crate::trace::Settings;
use candle_core::{DType, Device};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Model options of `sdtrace record` beyond the path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ModelOptions {
    /// What the UNet predicts; `None`: the folder's scheduler config, or ε for SD 1.x-shaped
    /// single files (SD 2.x-shaped ones require it).
    pub prediction: Option<Prediction>,
    /// Refuse a single file whose hash differs (8-hex old, 10-hex short or full SHA-256).
    pub expect_hash: Option<String>,
    /// A diffusers `tokenizer/` folder to use instead of the model's (or the built-in one).
    pub tokenizer: Option<PathBuf>,
    /// Load a single file even when it holds tensors nothing reads (they are listed in the
    /// header).
    pub ignore_unknown_keys: bool,
}

/// Parse `--prediction`.
pub fn parse_prediction(s: &str) -> std::result::Result<Prediction, String> {
    match s {
        "epsilon" | "eps" => Ok(Prediction::Epsilon),
        "v" | "v_prediction" | "v-prediction" => Ok(Prediction::VPrediction),
        _ => Err(format!("'{s}': expected epsilon or v")),
    }
}

/// The file's hashes, computed once per process for an unchanged file (a sweep opens the same
/// checkpoint for every size; hashing SD 1.5 takes seconds).
fn cached_hashes(path: &Path) -> Result<ModelHashes> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Key = (PathBuf, u64, Option<std::time::SystemTime>);
    static CACHE: Mutex<Option<HashMap<Key, ModelHashes>>> = Mutex::new(None);
    let meta = std::fs::metadata(path).map_err(|source| crate::model::ModelError::Io {
        path: path.to_path_buf(),
        op: "cannot read",
        source,
    })?;
    let key = (path.to_path_buf(), meta.len(), meta.modified().ok());
    if let Some(h) = CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .get(&key)
    {
        return Ok(h.clone());
    }
    let h = hash_file(path).map_err(crate::model::ModelError::from)?;
    CACHE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(key, h.clone());
    Ok(h)
}

/// The loaded networks of a model.
pub(super) struct Loaded {
    pub(super) unet: UNet,
    pub(super) clip: ClipTextModel,
    /// SDXL's `text_encoder_2` (probe keys `text_encoder_2.*`).
    pub(super) clip_2: Option<ClipTextModel>,
    pub(super) vae: Vae,
}

/// A single-file checkpoint, checked.
pub(super) struct FileModel {
    ckpt: Arc<Checkpoint>,
    layout: LdmLayout,
    keys: KeyReport,
    hashes: ModelHashes,
}

/// The model of a recording.
pub(super) enum ModelSource {
    Folder(Box<ModelFiles>),
    File(Box<FileModel>),
}

impl ModelSource {
    /// A folder or a `.safetensors` file; see the module documentation.
    pub(super) fn open(path: &Path, opts: &ModelOptions) -> Result<Self> {
        if path.is_dir() {
            if opts.expect_hash.is_some() {
                return Err(PipelineError::Setting(format!(
                    "--expect-hash: {} is a diffusers folder; A1111's hashes are of single-file checkpoints (give the .safetensors file)",
                    path.display()
                )));
            }
            let mut files = ModelFiles::find(path)?;
            if let Some(p) = opts.prediction {
                files.unet_config.prediction = p;
            }
            return Ok(ModelSource::Folder(Box::new(files)));
        }
        if !path.exists() {
            return Err(PipelineError::ModelFolder {
                dir: path.to_path_buf(),
                what: "does not exist (give a diffusers folder or a single-file .safetensors checkpoint)".into(),
            });
        }
        let hashes = cached_hashes(path)?;
        if let Some(expected) = &opts.expect_hash {
            hashes
                .check(expected, path)
                .map_err(crate::model::ModelError::from)?;
        }
        let ckpt = Checkpoint::open(path).map_err(crate::model::ModelError::from)?;
        let layout = ckpt
            .layout(opts.prediction)
            .map_err(crate::model::ModelError::from)?;
        let keys = ckpt
            .check(&layout, opts.ignore_unknown_keys)
            .map_err(crate::model::ModelError::from)?;
        Ok(ModelSource::File(Box::new(FileModel {
            ckpt: Arc::new(ckpt),
            layout,
            keys,
            hashes,
        })))
    }

    pub(super) fn unet_config(&self) -> &UNetConfig {
        match self {
            ModelSource::Folder(f) => &f.unet_config,
            ModelSource::File(f) => &f.layout.unet,
        }
    }

    /// The folder's validated `scheduler_config.json` (`None` for a single file or a folder
    /// without one).
    pub(super) fn scheduler_config(&self) -> Option<&SchedulerConfig> {
        match self {
            ModelSource::Folder(f) => f.scheduler.as_ref(),
            ModelSource::File(_) => None,
        }
    }

    /// SDXL's second text encoder (`text_encoder_2/`, or `conditioner.embedders.1` of a single
    /// file), `None` for SD 1.x/2.x.
    pub(super) fn clip_2_config(&self) -> Option<&ClipConfig> {
        match self {
            ModelSource::Folder(f) => f.xl.as_ref().map(|x| &x.clip_config),
            ModelSource::File(f) => f.layout.clip2.as_ref(),
        }
    }

    /// SDXL's second tokenizer (`tokenizer_2/`, OpenCLIP's: pads with `!`), and where it came
    /// from; `None` without a second encoder.
    pub(super) fn tokenizer_2(&self) -> Result<Option<(ClipTokenizer, String)>> {
        match self {
            ModelSource::Folder(f) => match &f.xl {
                Some(x) => Ok(Some((
                    ClipTokenizer::from_dir(&x.tokenizer_dir)?,
                    "the model's tokenizer_2/".into(),
                ))),
                None => Ok(None),
            },
            ModelSource::File(f) if f.layout.is_sdxl() => Ok(Some((
                ClipTokenizer::openai()?.with_pad_token("!")?,
                "built-in OpenAI CLIP vocabulary, padded with '!' (OpenCLIP)".into(),
            ))),
            ModelSource::File(_) => Ok(None),
        }
    }

    pub(super) fn clip_config(&self) -> &ClipConfig {
        match self {
            ModelSource::Folder(f) => &f.clip_config,
            ModelSource::File(f) => &f.layout.clip,
        }
    }

    /// The tokenizer, and where it came from (for the header).
    pub(super) fn tokenizer(&self, opts: &ModelOptions) -> Result<(ClipTokenizer, String)> {
        if let Some(dir) = &opts.tokenizer {
            return Ok((
                ClipTokenizer::from_dir(dir)?,
                format!("--tokenizer {}", dir.display()),
            ));
        }
        Ok(match self {
            ModelSource::Folder(f) => (
                ClipTokenizer::from_dir(&f.tokenizer_dir)?,
                "the model's tokenizer/".into(),
            ),
            ModelSource::File(f) => match f.layout.tower {
                TextTower::OpenAi { .. } => (
                    ClipTokenizer::openai()?,
                    "built-in OpenAI CLIP vocabulary".into(),
                ),
                TextTower::OpenClip => (
                    ClipTokenizer::openai()?.with_pad_token("!")?,
                    "built-in OpenAI CLIP vocabulary, padded with '!' (OpenCLIP)".into(),
                ),
            },
        })
    }

    /// Build the UNet, the text encoder(s) and the VAE in `dtype` on `device`.
    pub(super) fn load(
        &self,
        dtype: DType,
        device: &Device,
        numerics: Numerics,
        attention: AttentionImpl,
    ) -> Result<Loaded> {
        Ok(match self {
            ModelSource::Folder(f) => Loaded {
                unet: UNet::load(
                    &f.unet_weights,
                    &f.unet_config,
                    dtype,
                    device,
                    numerics,
                    attention,
                )?,
                clip: ClipTextModel::load(&f.clip_weights, &f.clip_config, dtype, device)?,
                clip_2: match &f.xl {
                    Some(x) => Some(ClipTextModel::load_as(
                        &x.clip_weights,
                        &x.clip_config,
                        dtype,
                        device,
                        "text_encoder_2",
                    )?),
                    None => None,
                },
                vae: Vae::load(&f.vae_dir, dtype, device)?,
            },
            ModelSource::File(f) if f.layout.is_sdxl() => {
                let m = f
                    .ckpt
                    .load_sdxl_models(&f.layout, dtype, device, numerics, attention)?;
                Loaded {
                    unet: m.unet,
                    clip: m.text_encoder,
                    clip_2: Some(m.text_encoder_2),
                    vae: m.vae,
                }
            }
            ModelSource::File(f) => {
                let (unet, clip, vae) = f
                    .ckpt
                    .load_models(&f.layout, dtype, device, numerics, attention)?;
                Loaded {
                    unet,
                    clip,
                    clip_2: None,
                    vae,
                }
            }
        })
    }

    /// Hashes into `s.model_hashes`; for a single file also `extra["checkpoint"]`.
    pub(super) fn describe(&self, s: &mut Settings, tokenizer: &str) -> Result<()> {
        match self {
            ModelSource::Folder(f) => {
                for (name, file) in [
                    ("unet_xxh3", &f.unet_weights),
                    ("text_encoder_xxh3", &f.clip_weights),
                    ("vae_xxh3", &f.vae_weights),
                ]
                .into_iter()
                .chain(
                    f.xl.as_ref()
                        .map(|x| ("text_encoder_2_xxh3", &x.clip_weights)),
                ) {
                    s.model_hashes.insert(name.into(), file_hash(file)?);
                }
                s.extra.insert(
                    "model_format".into(),
                    json!({"format": "diffusers folder", "tokenizer": tokenizer}),
                );
            }
            ModelSource::File(f) => {
                s.model_hashes
                    .insert("sha256".into(), f.hashes.sha256.clone());
                s.model_hashes
                    .insert("a1111_old".into(), f.hashes.a1111_old.clone());
                let l = &f.layout;
                let k = &f.keys;
                s.extra.insert(
                    "model_format".into(),
                    json!({
                        "format": "single-file LDM checkpoint (safetensors)",
                        "family": l.family.name(),
                        "text_encoder": match l.tower {
                            TextTower::OpenAi { prefix } => format!("OpenAI CLIP under {prefix}"),
                            TextTower::OpenClip => "OpenCLIP under cond_stage_model.model. (penultimate layer)".into(),
                        },
                        "prediction": format!("{:?}{}", l.unet.prediction, if l.prediction_given { " (given)" } else { " (default)" }),
                        "tokenizer": tokenizer,
                        "file_bytes": f.ckpt.file_size(),
                        "tensors": f.ckpt.len(),
                        "used": k.used,
                        "ema_ignored": k.ema,
                        "other_ignored": k.ignored,
                        "unknown_ignored": k.unknown,
                        "weight_dtypes": k.dtypes,
                        "from_metadata": l.from_metadata,
                        "unet": l.unet.to_diffusers_json(),
                        "vae_channels": l.vae.block_out_channels,
                        "text_encoder_config": l.clip.to_hf_json(),
                    }),
                );
                if let (Some(c2), Some(serde_json::Value::Object(m))) =
                    (&l.clip2, s.extra.get_mut("model_format"))
                {
                    m.insert(
                        "text_encoder_2".into(),
                        json!("OpenCLIP ViT-bigG with its projection under conditioner.embedders.1.model."),
                    );
                    m.insert("text_encoder_2_config".into(), c2.to_hf_json());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth::{SynthSize, write_checkpoint_file, write_model};

    /// An SDXL single file opens (layout read, keys checked) and loads both text encoders with
    /// the rest; SD files and folders have no second encoder.
    #[test]
    fn sdxl_single_files_load_their_four_models() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("xl.safetensors");
        write_checkpoint_file(&file, SynthSize::SdxlTiny, 1, DType::F16).unwrap();
        let opts = ModelOptions::default();
        let src = ModelSource::open(&file, &opts).unwrap();
        assert!(src.unet_config().addition.is_some());
        let (dev, num, full) = (Device::Cpu, Numerics::PYTORCH, AttentionImpl::Full);
        assert_eq!(src.clip_2_config(), Some(&ClipConfig::sdxl_g_tiny()));
        assert!(src.tokenizer_2().unwrap().is_some());
        let m = src.load(DType::F32, &dev, num, full).unwrap();
        let clip_2 = m.clip_2.as_ref().unwrap();
        assert_eq!(clip_2.config(), &ClipConfig::sdxl_g_tiny());
        assert_eq!(m.vae.config().scaling_factor, 0.13025);
        let sd = dir.path().join("sd.safetensors");
        write_checkpoint_file(&sd, SynthSize::Tiny, 1, DType::F32).unwrap();
        let folder = dir.path().join("folder");
        write_model(&folder, SynthSize::Tiny, 1).unwrap();
        for p in [sd, folder] {
            let src = ModelSource::open(&p, &opts).unwrap();
            assert!(src.clip_2_config().is_none());
            assert!(
                src.load(DType::F32, &dev, num, full)
                    .unwrap()
                    .clip_2
                    .is_none()
            );
        }
    }
}
