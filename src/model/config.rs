//! UNet configurations: SD 1.x, SD 2.x, a tiny one for tests, and diffusers' `config.json`.
//!
//! Field meanings follow diffusers' `UNet2DConditionModel` config; in SD 1.x/2.x configs
//! `attention_head_dim` is in fact the number of heads (diffusers' own naming quirk), which is
//! how diffusers and candle read it too. Unsupported settings are refused with the field named.

use super::{ModelError, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::Path;

/// One resolution level of the UNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockConfig {
    pub out_channels: usize,
    /// Transformer depth of the cross-attention blocks at this level; `None`: a plain block.
    pub cross_attention: Option<usize>,
    /// Attention heads at this level.
    pub heads: usize,
}

/// What the UNet predicts (carried for the sampler).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    VPrediction,
}

impl BlockConfig {
    /// A level of `out_channels` channels, `cross_attention` transformer layers (`None`: a
    /// plain level) and `heads` attention heads.
    pub fn new(out_channels: usize, cross_attention: Option<usize>, heads: usize) -> Self {
        BlockConfig {
            out_channels,
            cross_attention,
            heads,
        }
    }
}

/// A UNet2DConditionModel configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub blocks: Vec<BlockConfig>,
    pub layers_per_block: usize,
    pub norm_num_groups: usize,
    pub norm_eps: f64,
    pub cross_attention_dim: usize,
    /// SD 2.x: linear `proj_in`/`proj_out` in the transformers; SD 1.x: 1×1 convolutions.
    pub use_linear_projection: bool,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub downsample_padding: usize,
    pub mid_block_scale_factor: f64,
    pub center_input_sample: bool,
    pub prediction: Prediction,
    /// Latent side the model was trained at (64 for 512×512 images in SD 1.x).
    pub sample_size: usize,
    /// SDXL's added conditioning (`addition_embed_type: text_time`); `None` for SD 1.x/2.x.
    #[serde(default)]
    pub addition: Option<TextTime>,
}

/// SDXL's `text_time` added conditioning: each of the six size/crop ids gets sinusoidal
/// features of `time_embed_dim` (`addition_time_embed_dim`), concatenated after the pooled text
/// embedding into `input_dim` (`projection_class_embeddings_input_dim`) numbers, which
/// `add_embedding` (linear, SiLU, linear) maps onto the time embedding and adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextTime {
    pub time_embed_dim: usize,
    pub input_dim: usize,
}

impl TextTime {
    /// The number of size/crop ids: original (h, w), crop (top, left), target (h, w).
    pub const IDS: usize = 6;

    /// Width of the pooled text embedding this conditioning expects.
    pub fn pooled_dim(&self) -> Option<usize> {
        self.input_dim.checked_sub(Self::IDS * self.time_embed_dim)
    }
}

fn sd_blocks(heads: [usize; 4]) -> Vec<BlockConfig> {
    [320, 640, 1280, 1280]
        .iter()
        .zip(heads)
        .enumerate()
        .map(|(i, (&c, h))| BlockConfig {
            out_channels: c,
            cross_attention: (i < 3).then_some(1),
            heads: h,
        })
        .collect()
}

impl UNetConfig {
    /// Stable Diffusion 1.x (runwayml/stable-diffusion-v1-5 `unet/config.json`).
    pub fn sd15() -> Self {
        UNetConfig {
            in_channels: 4,
            out_channels: 4,
            blocks: sd_blocks([8; 4]),
            layers_per_block: 2,
            norm_num_groups: 32,
            norm_eps: 1e-5,
            cross_attention_dim: 768,
            use_linear_projection: false,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            downsample_padding: 1,
            mid_block_scale_factor: 1.0,
            center_input_sample: false,
            prediction: Prediction::Epsilon,
            sample_size: 64,
            addition: None,
        }
    }

    /// Stable Diffusion 2.1 (stabilityai/stable-diffusion-2-1 `unet/config.json`): per-level
    /// heads, 1024-wide text embeddings, linear projections, v-prediction.
    pub fn sd21() -> Self {
        UNetConfig {
            blocks: sd_blocks([5, 10, 20, 20]),
            cross_attention_dim: 1024,
            use_linear_projection: true,
            prediction: Prediction::VPrediction,
            sample_size: 96,
            ..Self::sd15()
        }
    }

    /// SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0 `unet/config.json`): three
    /// levels, the first without attention, 2 and 10 transformer layers in the others, 2048-wide
    /// text embeddings (two encoders), linear projections and the `text_time` added conditioning.
    pub fn sdxl() -> Self {
        UNetConfig {
            blocks: vec![
                BlockConfig::new(320, None, 5),
                BlockConfig::new(640, Some(2), 10),
                BlockConfig::new(1280, Some(10), 20),
            ],
            cross_attention_dim: 2048,
            use_linear_projection: true,
            sample_size: 128,
            addition: Some(TextTime {
                time_embed_dim: 256,
                input_dim: 2816,
            }),
            ..Self::sd15()
        }
    }

    /// SDXL's structure at tiny widths: a plain first level, then 1 and 2 transformer layers,
    /// 64-wide text embeddings (two 32-wide encoders), a 32-wide pooled embedding.
    pub fn sdxl_tiny() -> Self {
        UNetConfig {
            blocks: vec![
                BlockConfig::new(32, None, 2),
                BlockConfig::new(64, Some(1), 4),
                BlockConfig::new(64, Some(2), 4),
            ],
            cross_attention_dim: 64,
            use_linear_projection: true,
            sample_size: 8,
            addition: Some(TextTime {
                time_embed_dim: 8,
                input_dim: 6 * 8 + 32,
            }),
            ..Self::sd15()
        }
    }

    /// SD 1.x's structure (cross-attention down/mid/up blocks, a plain last level) at tiny
    /// widths: a 64×64 image (8×8 latent) runs a forward pass in milliseconds.
    pub fn tiny() -> Self {
        UNetConfig {
            blocks: vec![
                BlockConfig {
                    out_channels: 32,
                    cross_attention: Some(1),
                    heads: 2,
                },
                BlockConfig {
                    out_channels: 64,
                    cross_attention: Some(1),
                    heads: 4,
                },
                BlockConfig {
                    out_channels: 64,
                    cross_attention: None,
                    heads: 4,
                },
            ],
            layers_per_block: 2,
            // 32 as in SD: candle-transformers' plain down/up blocks ignore the configured group
            // count and always use 32, so the cross-check against it needs 32 here.
            norm_num_groups: 32,
            cross_attention_dim: 32,
            sample_size: 8,
            ..Self::sd15()
        }
    }

    /// Width of the time embedding (4 × the first level's channels).
    pub fn time_embed_dim(&self) -> usize {
        self.blocks[0].out_channels * 4
    }

    /// Check internal consistency (group counts, head counts) before building anything.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let bad = |field: &str, what: String| {
            Err(ModelError::Config {
                file: file.to_path_buf(),
                field: field.into(),
                what,
            })
        };
        if self.blocks.is_empty() {
            return bad("block_out_channels", "is empty".into());
        }
        for b in &self.blocks {
            if self.norm_num_groups == 0 || b.out_channels % self.norm_num_groups != 0 {
                return bad(
                    "norm_num_groups",
                    format!(
                        "({}) does not divide {} channels",
                        self.norm_num_groups, b.out_channels
                    ),
                );
            }
            if b.heads == 0 || b.out_channels % b.heads != 0 {
                return bad(
                    "attention_head_dim",
                    format!(
                        "({} heads) does not divide {} channels",
                        b.heads, b.out_channels
                    ),
                );
            }
        }
        if self.layers_per_block == 0 {
            return bad("layers_per_block", "is 0".into());
        }
        Ok(())
    }

    /// Read diffusers' `unet/config.json`; `scheduler/scheduler_config.json` next to the
    /// `unet` folder, when present, gives the prediction type.
    pub fn from_diffusers_file(path: &Path) -> Result<Self> {
        let v = super::read_json(path)?;
        let mut cfg = Self::from_diffusers_json(&v, path)?;
        if let Some(sched) = path
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("scheduler/scheduler_config.json"))
            && let Ok(text) = std::fs::read_to_string(&sched)
            && let Ok(s) = serde_json::from_str::<Value>(&text)
            && s["prediction_type"] == "v_prediction"
        {
            cfg.prediction = Prediction::VPrediction;
        }
        Ok(cfg)
    }

    /// Parse a diffusers UNet config object (`file` names it in errors).
    pub fn from_diffusers_json(v: &Value, file: &Path) -> Result<Self> {
        let err = |field: &str, what: String| ModelError::Config {
            file: file.to_path_buf(),
            field: field.into(),
            what,
        };
        let usize_of = |field: &str, default: Option<usize>| -> Result<usize> {
            match &v[field] {
                Value::Null => default.ok_or_else(|| err(field, "is missing".into())),
                x => x.as_u64().map(|n| n as usize).ok_or_else(|| {
                    err(field, format!("must be a non-negative integer, found {x}"))
                }),
            }
        };
        let f64_of = |field: &str, default: f64| -> Result<f64> {
            match &v[field] {
                Value::Null => Ok(default),
                x => x
                    .as_f64()
                    .ok_or_else(|| err(field, format!("must be a number, found {x}"))),
            }
        };
        let bool_of = |field: &str, default: bool| -> Result<bool> {
            match &v[field] {
                Value::Null => Ok(default),
                x => x
                    .as_bool()
                    .ok_or_else(|| err(field, format!("must be true or false, found {x}"))),
            }
        };
        if let Some(c) = v["_class_name"].as_str()
            && c != "UNet2DConditionModel"
        {
            return Err(err(
                "_class_name",
                format!("is '{c}'; only UNet2DConditionModel is supported"),
            ));
        }
        for (field, ok) in [
            ("act_fn", "silu"),
            ("resnet_time_scale_shift", "default"),
            ("time_embedding_type", "positional"),
        ] {
            if let Some(x) = v[field].as_str()
                && x != ok
            {
                return Err(err(field, format!("is '{x}'; only '{ok}' is supported")));
            }
        }
        let addition = match &v["addition_embed_type"] {
            Value::Null => None,
            Value::String(t) if t == "text_time" => {
                let time_embed_dim = usize_of("addition_time_embed_dim", None)?;
                let input_dim = usize_of("projection_class_embeddings_input_dim", None)?;
                let tt = TextTime {
                    time_embed_dim,
                    input_dim,
                };
                if time_embed_dim == 0
                    || time_embed_dim % 2 != 0
                    || tt.pooled_dim().is_none_or(|p| p == 0)
                {
                    return Err(err(
                        "projection_class_embeddings_input_dim",
                        format!(
                            "is {input_dim} with addition_time_embed_dim {time_embed_dim}; it must exceed 6 × an even addition_time_embed_dim (the pooled text embedding takes the rest)"
                        ),
                    ));
                }
                Some(tt)
            }
            x => {
                return Err(err(
                    "addition_embed_type",
                    format!("is {x}; sdtrace follows none (SD 1.x/2.x) and 'text_time' (SDXL)"),
                ));
            }
        };
        for field in ["class_embed_type", "encoder_hid_dim", "time_cond_proj_dim"] {
            if !v[field].is_null() {
                return Err(err(
                    field,
                    format!(
                        "is {}; SD 1.x/2.x and SDXL UNets have none (other variants are not supported)",
                        v[field]
                    ),
                ));
            }
        }
        let channels: Vec<usize> = v["block_out_channels"]
            .as_array()
            .ok_or_else(|| err("block_out_channels", "is missing or not a list".into()))?
            .iter()
            .map(|x| x.as_u64().map(|n| n as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| err("block_out_channels", "must hold integers".into()))?;
        let n = channels.len();
        let per_level = |field: &str| -> Result<Option<Vec<usize>>> {
            match &v[field] {
                Value::Null => Ok(None),
                Value::Number(x) => Ok(Some(vec![x.as_u64().unwrap_or(0) as usize; n])),
                Value::Array(a) if a.len() == n => Ok(Some(
                    a.iter().map(|x| x.as_u64().unwrap_or(0) as usize).collect(),
                )),
                x => Err(err(
                    field,
                    format!("must be a number or a list of {n}, found {x}"),
                )),
            }
        };
        let heads = match per_level("num_attention_heads")? {
            Some(h) => h,
            None => per_level("attention_head_dim")?.unwrap_or(vec![8; n]),
        };
        let depth = per_level("transformer_layers_per_block")?.unwrap_or(vec![1; n]);
        let down: Vec<&str> = v["down_block_types"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let up: Vec<&str> = v["up_block_types"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if down.len() != n || up.len() != n {
            return Err(err(
                "down_block_types",
                format!("must list {n} down and {n} up blocks, one per block_out_channels entry"),
            ));
        }
        let mut blocks = Vec::with_capacity(n);
        for i in 0..n {
            let cross = match (down[i], up[n - 1 - i]) {
                ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D") => true,
                ("DownBlock2D", "UpBlock2D") => false,
                (d, u) => {
                    return Err(err(
                        "down_block_types",
                        format!(
                            "level {i} pairs '{d}' with '{u}'; supported: CrossAttnDownBlock2D/CrossAttnUpBlock2D and DownBlock2D/UpBlock2D"
                        ),
                    ));
                }
            };
            blocks.push(BlockConfig {
                out_channels: channels[i],
                cross_attention: cross.then_some(depth[i]),
                heads: heads[i],
            });
        }
        if let Some(m) = v["mid_block_type"].as_str()
            && m != "UNetMidBlock2DCrossAttn"
        {
            return Err(err(
                "mid_block_type",
                format!("is '{m}'; only UNetMidBlock2DCrossAttn is supported"),
            ));
        }
        let cfg = UNetConfig {
            in_channels: usize_of("in_channels", Some(4))?,
            out_channels: usize_of("out_channels", Some(4))?,
            blocks,
            layers_per_block: usize_of("layers_per_block", Some(2))?,
            norm_num_groups: usize_of("norm_num_groups", Some(32))?,
            norm_eps: f64_of("norm_eps", 1e-5)?,
            cross_attention_dim: usize_of("cross_attention_dim", Some(1280))?,
            use_linear_projection: bool_of("use_linear_projection", false)?,
            flip_sin_to_cos: bool_of("flip_sin_to_cos", true)?,
            freq_shift: f64_of("freq_shift", 0.0)?,
            downsample_padding: usize_of("downsample_padding", Some(1))?,
            mid_block_scale_factor: f64_of("mid_block_scale_factor", 1.0)?,
            center_input_sample: bool_of("center_input_sample", false)?,
            prediction: Prediction::Epsilon,
            sample_size: usize_of("sample_size", Some(64))?,
            addition,
        };
        cfg.validate(file)?;
        Ok(cfg)
    }

    /// The config as diffusers writes it.
    pub fn to_diffusers_json(&self) -> Value {
        let n = self.blocks.len();
        let down: Vec<&str> = self
            .blocks
            .iter()
            .map(|b| {
                if b.cross_attention.is_some() {
                    "CrossAttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
            })
            .collect();
        let up: Vec<&str> = self
            .blocks
            .iter()
            .rev()
            .map(|b| {
                if b.cross_attention.is_some() {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
            })
            .collect();
        let mut v = json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.21.0",
            "act_fn": "silu",
            "attention_head_dim": self.blocks.iter().map(|b| b.heads).collect::<Vec<_>>(),
            "block_out_channels": self.blocks.iter().map(|b| b.out_channels).collect::<Vec<_>>(),
            "center_input_sample": self.center_input_sample,
            "cross_attention_dim": self.cross_attention_dim,
            "down_block_types": down,
            "downsample_padding": self.downsample_padding,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "freq_shift": self.freq_shift,
            "in_channels": self.in_channels,
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": self.mid_block_scale_factor,
            "norm_eps": self.norm_eps,
            "norm_num_groups": self.norm_num_groups,
            "out_channels": self.out_channels,
            "sample_size": self.sample_size,
            "transformer_layers_per_block": self.blocks.iter().map(|b| b.cross_attention.unwrap_or(1)).collect::<Vec<_>>(),
            "up_block_types": up,
            "use_linear_projection": self.use_linear_projection,
            "upcast_attention": false,
            "num_levels": n,
        });
        if let Some(a) = self.addition {
            v["addition_embed_type"] = json!("text_time");
            v["addition_time_embed_dim"] = json!(a.time_embed_dim);
            v["projection_class_embeddings_input_dim"] = json!(a.input_dim);
        }
        v
    }

    /// The same model as candle-transformers' config (for cross-checking against its UNet).
    pub fn to_candle(
        &self,
    ) -> candle_transformers::models::stable_diffusion::unet_2d::UNet2DConditionModelConfig {
        use candle_transformers::models::stable_diffusion::unet_2d as c;
        c::UNet2DConditionModelConfig {
            center_input_sample: self.center_input_sample,
            flip_sin_to_cos: self.flip_sin_to_cos,
            freq_shift: self.freq_shift,
            blocks: self
                .blocks
                .iter()
                .map(|b| c::BlockConfig {
                    out_channels: b.out_channels,
                    use_cross_attn: b.cross_attention,
                    attention_head_dim: b.heads,
                })
                .collect(),
            layers_per_block: self.layers_per_block,
            downsample_padding: self.downsample_padding,
            mid_block_scale_factor: self.mid_block_scale_factor,
            norm_num_groups: self.norm_num_groups,
            norm_eps: self.norm_eps,
            cross_attention_dim: self.cross_attention_dim,
            sliced_attention_size: None,
            use_linear_projection: self.use_linear_projection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_json_round_trips() {
        for cfg in [
            UNetConfig::sd15(),
            UNetConfig::sd21(),
            UNetConfig::tiny(),
            UNetConfig::sdxl(),
            UNetConfig::sdxl_tiny(),
        ] {
            let mut back =
                UNetConfig::from_diffusers_json(&cfg.to_diffusers_json(), Path::new("x.json"))
                    .unwrap();
            back.prediction = cfg.prediction;
            assert_eq!(back, cfg);
        }
    }

    #[test]
    fn sd15_config_as_published() {
        // The fields of runwayml/stable-diffusion-v1-5 unet/config.json.
        let v = json!({
            "_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 8,
            "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
            "cross_attention_dim": 768,
            "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
            "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
            "out_channels": 4, "sample_size": 64,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
        });
        assert_eq!(
            UNetConfig::from_diffusers_json(&v, Path::new("c.json")).unwrap(),
            UNetConfig::sd15()
        );
    }

    #[test]
    fn sdxl_config_as_published() {
        // The fields of stabilityai/stable-diffusion-xl-base-1.0 unet/config.json.
        let v: Value = serde_json::from_str(
            r#"{
            "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
            "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280], "center_input_sample": false, "class_embed_type": null,
            "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
            "cross_attention_norm": null, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": false, "encoder_hid_dim": null, "encoder_hid_dim_type": null,
            "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
            "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
            "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": null, "num_class_embeds": null,
            "only_cross_attention": false, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
            "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
            "sample_size": 128, "time_cond_proj_dim": null, "time_embedding_act_fn": null, "time_embedding_dim": null,
            "time_embedding_type": "positional", "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": null,
            "use_linear_projection": true
        }"#,
        )
        .unwrap();
        let cfg = UNetConfig::from_diffusers_json(&v, Path::new("c.json")).unwrap();
        assert_eq!(cfg, UNetConfig::sdxl());
        assert_eq!(cfg.addition.and_then(|a| a.pooled_dim()), Some(1280));
    }

    #[test]
    fn unsupported_fields_are_named() {
        let mut v = UNetConfig::sd15().to_diffusers_json();
        v["addition_embed_type"] = json!("image");
        let e = UNetConfig::from_diffusers_json(&v, Path::new("unet/config.json"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unet/config.json") && e.contains("addition_embed_type"),
            "{e}"
        );
        let mut v = UNetConfig::sd15().to_diffusers_json();
        v["norm_num_groups"] = json!(7);
        let e = UNetConfig::from_diffusers_json(&v, Path::new("c.json"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("norm_num_groups"), "{e}");
        let mut v = UNetConfig::sd15().to_diffusers_json();
        v["down_block_types"][0] = json!("AttnDownBlock2D");
        assert!(
            UNetConfig::from_diffusers_json(&v, Path::new("c.json"))
                .unwrap_err()
                .to_string()
                .contains("down_block_types")
        );
    }
}
