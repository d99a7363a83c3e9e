//! The VAE decoder (diffusers' `AutoencoderKL`, the `vae/` folder): latents to an image in
//! [0, 1], with probe points.
//!
//! The network is candle-transformers' `AutoEncoderKL`, built from diffusers' `config.json`
//! ([`VaeConfig`]; fields we do not know or cannot honour are refused with the file and field
//! named) and `diffusion_pytorch_model.safetensors` (or the `.fp16.` variant). Its decoder is
//! opaque, so the probe sees three points, named like the diffusers modules:
//! `vae.post_quant_conv` (the 1×1 convolution in front of the decoder, applied here from the
//! same weights so that it can be observed), `vae.decoder` (the decoder's output, model dtype)
//! and `image`: A1111's `torch.clamp((x + 1.0) / 2.0, min=0.0, max=1.0)` computed in f32 after
//! the cast to float, shape `[B, 3, H, W]`. The latents are first cast to the model dtype (as
//! A1111 does before `decode_first_stage`), multiplied by `1 / scaling_factor` in f32 (LDM's
//! `1. / scale_factor * z`, which PyTorch's half-precision kernels compute in f32) and cast
//! back. Every observed tensor may be replaced by an intervention; the rest of the decode uses
//! the replacement.

use super::checkpoint::Checkpoint;
use super::observe::observe;
use super::{ModelError, Result};
use crate::probe::Probe;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::stable_diffusion::vae::{AutoEncoderKL, AutoEncoderKLConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// SD 1.x/2.x's latent scaling factor (diffusers' default when `config.json` has none).
pub const SD_SCALING_FACTOR: f64 = 0.18215;
/// SDXL's latent scaling factor (its VAE's `config.json`).
pub const SDXL_SCALING_FACTOR: f64 = 0.13025;

/// Weight files tried in `vae/`, in order.
pub const WEIGHT_FILES: [&str; 2] = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
];

/// What this module reads from diffusers' `vae/config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    /// Latents are divided by this before decoding.
    pub scaling_factor: f64,
}

/// Fields of diffusers' AutoencoderKL config that do not change the decoder's arithmetic (or
/// that are checked separately below); fields starting with `_` are metadata and always allowed.
const KNOWN_FIELDS: [&str; 19] = [
    "act_fn",
    "block_out_channels",
    "down_block_types",
    "up_block_types",
    "in_channels",
    "out_channels",
    "latent_channels",
    "layers_per_block",
    "norm_num_groups",
    "sample_size",
    "scaling_factor",
    "shift_factor",
    "latents_mean",
    "latents_std",
    "force_upcast",
    "use_quant_conv",
    "use_post_quant_conv",
    "mid_block_add_attention",
    "norm_eps",
];

impl VaeConfig {
    /// Read diffusers' `vae/config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let v = super::read_json(path)?;
        Self::from_json(&v, path)
    }

    /// Parse a diffusers AutoencoderKL config object (`file` names it in errors).
    pub fn from_json(v: &Value, file: &Path) -> Result<Self> {
        let err = |field: &str, what: String| ModelError::Config {
            file: file.to_path_buf(),
            field: field.into(),
            what,
        };
        let Some(obj) = v.as_object() else {
            return Err(err("(file)", "must be a JSON object".into()));
        };
        for field in obj.keys() {
            if !field.starts_with('_') && !KNOWN_FIELDS.contains(&field.as_str()) {
                return Err(err(
                    field,
                    "is unknown to sdtrace's AutoencoderKL reader; it may change the decoder, so it is refused (remove it if you know it is harmless)".into(),
                ));
            }
        }
        if let Some(c) = v["_class_name"].as_str()
            && c != "AutoencoderKL"
        {
            return Err(err(
                "_class_name",
                format!("is '{c}'; only AutoencoderKL is supported"),
            ));
        }
        let positive = |field: &str, default: Option<usize>| -> Result<usize> {
            match &v[field] {
                Value::Null => default.ok_or_else(|| err(field, "is missing".into())),
                x => match x.as_u64() {
                    Some(n) if n > 0 => {
                        usize::try_from(n).map_err(|_| err(field, format!("is too large ({n})")))
                    }
                    _ => Err(err(field, format!("must be a positive integer, found {x}"))),
                },
            }
        };
        let flag = |field: &str, default: bool| -> Result<bool> {
            match &v[field] {
                Value::Null => Ok(default),
                x => x
                    .as_bool()
                    .ok_or_else(|| err(field, format!("must be true or false, found {x}"))),
            }
        };
        if let Some(a) = v.get("act_fn")
            && a.as_str() != Some("silu")
        {
            return Err(err("act_fn", format!("is {a}; only \"silu\" is supported")));
        }
        let channels: Vec<usize> = v["block_out_channels"]
            .as_array()
            .ok_or_else(|| err("block_out_channels", "is missing or not a list".into()))?
            .iter()
            .map(|x| x.as_u64().and_then(|n| usize::try_from(n).ok()))
            .collect::<Option<_>>()
            .ok_or_else(|| err("block_out_channels", "must hold integers".into()))?;
        if channels.is_empty() {
            return Err(err("block_out_channels", "is empty".into()));
        }
        let n = channels.len();
        for (field, want) in [
            ("down_block_types", "DownEncoderBlock2D"),
            ("up_block_types", "UpDecoderBlock2D"),
        ] {
            match &v[field] {
                Value::Null => {}
                Value::Array(a) if a.len() == n && a.iter().all(|t| t == want) => {}
                x => {
                    return Err(err(
                        field,
                        format!(
                            "is {x}; supported: {n} × \"{want}\" (one per block_out_channels entry)"
                        ),
                    ));
                }
            }
        }
        match &v["shift_factor"] {
            Value::Null => {}
            x if x.as_f64() == Some(0.0) => {}
            x => {
                return Err(err(
                    "shift_factor",
                    format!("is {x}; SD 1.x/2.x VAEs have none (SD3/Flux VAEs are not supported)"),
                ));
            }
        }
        for field in ["latents_mean", "latents_std"] {
            if !v[field].is_null() {
                return Err(err(
                    field,
                    format!(
                        "is {}; per-channel latent statistics are not supported",
                        v[field]
                    ),
                ));
            }
        }
        if !flag("mid_block_add_attention", true)? {
            return Err(err(
                "mid_block_add_attention",
                "is false; candle's decoder always has the mid-block attention".into(),
            ));
        }
        if let Some(e) = v.get("norm_eps")
            && e.as_f64() != Some(1e-6)
        {
            return Err(err(
                "norm_eps",
                format!("is {e}; candle's AutoencoderKL uses 1e-6"),
            ));
        }
        flag("force_upcast", true)?;
        let scaling_factor = match &v["scaling_factor"] {
            Value::Null => SD_SCALING_FACTOR,
            x => match x.as_f64() {
                Some(s) if s.is_finite() && s > 0.0 => s,
                _ => {
                    return Err(err(
                        "scaling_factor",
                        format!("must be a positive number, found {x}"),
                    ));
                }
            },
        };
        let cfg = VaeConfig {
            in_channels: positive("in_channels", Some(3))?,
            out_channels: positive("out_channels", Some(3))?,
            block_out_channels: channels,
            layers_per_block: positive("layers_per_block", Some(1))?,
            latent_channels: positive("latent_channels", Some(4))?,
            norm_num_groups: positive("norm_num_groups", Some(32))?,
            use_quant_conv: flag("use_quant_conv", true)?,
            use_post_quant_conv: flag("use_post_quant_conv", true)?,
            scaling_factor,
        };
        if cfg.out_channels != 3 {
            return Err(err(
                "out_channels",
                format!(
                    "is {}; the image must have 3 channels (RGB)",
                    cfg.out_channels
                ),
            ));
        }
        for &c in &cfg.block_out_channels {
            if c == 0 || c % cfg.norm_num_groups != 0 {
                return Err(err(
                    "norm_num_groups",
                    format!("({}) does not divide {c} channels", cfg.norm_num_groups),
                ));
            }
        }
        Ok(cfg)
    }

    /// candle-transformers' config; the post-quant convolution is left to [`Vae`], which
    /// applies it itself so that it can be observed.
    fn to_candle(&self) -> AutoEncoderKLConfig {
        AutoEncoderKLConfig {
            block_out_channels: self.block_out_channels.clone(),
            layers_per_block: self.layers_per_block,
            latent_channels: self.latent_channels,
            norm_num_groups: self.norm_num_groups,
            use_quant_conv: self.use_quant_conv,
            use_post_quant_conv: false,
        }
    }
}

/// The VAE, ready to decode.
pub struct Vae {
    config: VaeConfig,
    post_quant_conv: Option<candle_nn::Conv2d>,
    inner: AutoEncoderKL,
    dtype: DType,
    device: Device,
    weights: PathBuf,
}

impl std::fmt::Debug for Vae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vae")
            .field("config", &self.config)
            .field("dtype", &self.dtype)
            .field("weights", &self.weights)
            .finish_non_exhaustive()
    }
}

impl Vae {
    /// Load diffusers' `vae/` folder: `config.json` and `diffusion_pytorch_model.safetensors`
    /// (or `diffusion_pytorch_model.fp16.safetensors`), converted to `dtype` on `device`.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let config = VaeConfig::from_file(&dir.join("config.json"))?;
        let Some(weights) = WEIGHT_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
        else {
            return Err(ModelError::Io {
                path: dir.join(WEIGHT_FILES[0]),
                op: "cannot find the VAE weights (nor diffusion_pytorch_model.fp16.safetensors)",
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        let vb = Checkpoint::open_plain(&weights, dtype, device)?;
        Self::new(vb, config, &weights)
    }

    /// Build from a `VarBuilder` at the root of the VAE's weights (`weights` names them in
    /// errors).
    pub fn new(vb: VarBuilder, config: VaeConfig, weights: &Path) -> Result<Self> {
        let wrap = |source| ModelError::Weights {
            file: weights.to_path_buf(),
            error: source,
        };
        let dtype = vb.dtype();
        let vb_device = vb.device().clone();
        check_conv_support(dtype, &vb_device)?;
        let l = config.latent_channels;
        let post_quant_conv = config
            .use_post_quant_conv
            .then(|| {
                candle_nn::conv2d(l, l, 1, Default::default(), vb.pp("post_quant_conv"))
                    .map_err(wrap)
            })
            .transpose()?;
        let inner = AutoEncoderKL::new(
            vb,
            config.in_channels,
            config.out_channels,
            config.to_candle(),
        )
        .map_err(wrap)?;
        Ok(Vae {
            config,
            post_quant_conv,
            inner,
            dtype,
            device: vb_device,
            weights: weights.to_path_buf(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Decode `latents` `[B, latent_channels, h, w]` (any float dtype; cast to the model's) to
    /// the image `[B, 3, 8h, 8w]` (for SD's four levels), f32 in [0, 1], recording
    /// `vae.post_quant_conv`, `vae.decoder` and `image` (see the module documentation).
    pub fn decode(&self, latents: &Tensor, probe: &Probe) -> Result<Tensor> {
        let dims = latents.dims();
        if dims.len() != 4 || dims[1] != self.config.latent_channels {
            return Err(candle_core::Error::Msg(format!(
                "the VAE decodes latents of shape [batch, {}, height, width], got {dims:?}",
                self.config.latent_channels
            ))
            .into());
        }
        // A1111 casts to the VAE's dtype first, then LDM multiplies by 1 / scale_factor (a
        // PyTorch half kernel computes that product in f32).
        let z = latents
            .to_dtype(self.dtype)?
            .to_dtype(DType::F32)?
            .affine(1.0 / self.config.scaling_factor, 0.0)?
            .to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(conv) => observe(
                probe,
                "vae.post_quant_conv",
                &self.run(|| conv.forward(&z))?,
            )?,
            None => z,
        };
        let x = observe(probe, "vae.decoder", &self.run(|| self.inner.decode(&z))?)?;
        let image = ((x.to_dtype(DType::F32)? + 1.0)? / 2.0)?.clamp(0f32, 1f32)?;
        observe(probe, "image", &image)
    }

    /// Run a candle computation, turning the CPU backend's missing bf16 convolution into an
    /// error that says what to do.
    fn run(&self, f: impl FnOnce() -> candle_core::Result<Tensor>) -> Result<Tensor> {
        f().map_err(|e| bf16_conv_error(self.dtype, &self.device, e))
    }
}

const BF16_CPU: &str =
    "bf16 convolutions are not supported on the CPU backend; use --dtype f32 or f16";

/// candle 0.11's CPU convolutions have no bf16 kernel (they fail with "unsupported dtype BF16
/// for op matmul"); say so in terms of the command line.
fn bf16_conv_error(dtype: DType, device: &Device, e: candle_core::Error) -> ModelError {
    let text = e.to_string();
    if dtype == DType::BF16 && device.is_cpu() && text.contains("unsupported dtype BF16") {
        let cause = text.lines().next().unwrap_or_default();
        candle_core::Error::Msg(format!("{BF16_CPU} (candle: {cause})")).into()
    } else {
        e.into()
    }
}

/// Fail at load rather than after a whole sampling run when the device cannot convolve in
/// `dtype` (a 1×1 convolution of one element; no other dtype or device is refused up front).
fn check_conv_support(dtype: DType, device: &Device) -> Result<()> {
    if dtype != DType::BF16 {
        return Ok(());
    }
    let one = Tensor::ones((1, 1, 1, 1), dtype, device)?;
    one.conv2d(&one, 0, 1, 1, 1)
        .map(drop)
        .map_err(|e| bf16_conv_error(dtype, device, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::synth::{SynthSize, vae_config, vae_config_json};
    use serde_json::json;

    fn parse(v: &Value) -> Result<VaeConfig> {
        VaeConfig::from_json(v, Path::new("vae/config.json"))
    }

    #[test]
    fn synthetic_and_published_configs_parse() {
        let cfg = parse(&vae_config_json(&vae_config(SynthSize::Sd15), 512, 0.18215)).unwrap();
        assert_eq!(cfg.block_out_channels, vec![128, 256, 512, 512]);
        assert_eq!((cfg.layers_per_block, cfg.latent_channels), (2, 4));
        assert_eq!(cfg.scaling_factor, 0.18215);
        // runwayml/stable-diffusion-v1-5 vae/config.json has no scaling_factor.
        let v = json!({
            "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
            "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
            "out_channels": 3, "sample_size": 512,
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
        });
        let cfg = parse(&v).unwrap();
        assert_eq!(cfg.scaling_factor, SD_SCALING_FACTOR);
        assert!(cfg.use_post_quant_conv);
        let mut newer = v.clone();
        newer["force_upcast"] = json!(true);
        newer["latents_mean"] = Value::Null;
        newer["shift_factor"] = Value::Null;
        newer["scaling_factor"] = json!(0.13025);
        assert_eq!(parse(&newer).unwrap().scaling_factor, 0.13025);
    }

    #[test]
    fn unsupported_fields_are_named_with_the_file() {
        let base = vae_config_json(&vae_config(SynthSize::Tiny), 64, 0.18215);
        for (field, value, want) in [
            ("shift_factor", json!(0.0609), "shift_factor"),
            ("latents_mean", json!([0.1, 0.2]), "latents_mean"),
            (
                "mid_block_add_attention",
                json!(false),
                "mid_block_add_attention",
            ),
            (
                "up_block_types",
                json!(["UpDecoderBlock2D"]),
                "up_block_types",
            ),
            ("norm_num_groups", json!(5), "norm_num_groups"),
            ("scaling_factor", json!(-1), "scaling_factor"),
            ("block_out_channels", json!([]), "block_out_channels"),
            ("layers_per_block", json!(0), "layers_per_block"),
            ("_class_name", json!("AutoencoderTiny"), "_class_name"),
            ("act_fn", json!("gelu"), "act_fn"),
            ("time_cond_proj_dim", json!(3), "unknown"),
        ] {
            let mut v = base.clone();
            v[field] = value;
            let e = parse(&v).unwrap_err().to_string();
            assert!(
                e.contains("vae/config.json") && e.contains(field) && e.contains(want),
                "{field}: {e}"
            );
        }
        let e = parse(&json!([1])).unwrap_err().to_string();
        assert!(e.contains("JSON object"), "{e}");
    }
}
