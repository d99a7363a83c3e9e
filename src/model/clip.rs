//! The CLIP text encoder (HF `CLIPTextModel`, diffusers' `text_encoder/`), with probe points.
//!
//! Weight paths are HF's (`text_model.embeddings.token_embedding`, `text_model.encoder.layers.N
//! .self_attn.q_proj`, …, `text_model.final_layer_norm`); probe keys drop the `text_model`
//! level, as DESIGN names them: `text_encoder.encoder.layers.N` (each layer's output) and
//! `text_encoder.final_layer_norm`. Activations follow the checkpoints' PyTorch code: QuickGELU
//! for OpenAI CLIP (SD 1.x), exact GELU for OpenCLIP (SD 2.x); candle-transformers uses the tanh
//! GELU for the latter, selectable here to trace its effect.

use super::checkpoint::Checkpoint;
use super::observe::observe;
use super::{ModelError, Result};
use crate::probe::Probe;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, LayerNorm, Linear, VarBuilder};
use serde_json::{Value, json};
use std::path::Path;

/// Activation inside the MLPs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClipActivation {
    /// x·σ(1.702x) (OpenAI CLIP, SD 1.x).
    QuickGelu,
    /// Exact GELU (OpenCLIP, SD 2.x).
    GeluErf,
    /// tanh-approximated GELU (what candle-transformers uses for SD 2.x).
    GeluTanh,
}

/// A CLIP text encoder configuration (HF `CLIPTextConfig` names in `config.json`).
#[derive(Clone, Debug, PartialEq)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub activation: ClipActivation,
    /// `CLIPTextModelWithProjection` (SDXL's second encoder): the width of `text_projection`,
    /// which maps the pooled (end-of-text) embedding; `None` for a plain `CLIPTextModel`.
    pub projection_dim: Option<usize>,
}

impl ClipConfig {
    /// openai/clip-vit-large-patch14 (SD 1.x).
    pub fn sd15() -> Self {
        ClipConfig {
            vocab_size: 49408,
            max_position_embeddings: 77,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            activation: ClipActivation::QuickGelu,
            projection_dim: None,
        }
    }

    /// OpenCLIP ViT-H/14 text tower as shipped with SD 2.x (23 layers).
    pub fn sd21() -> Self {
        ClipConfig {
            hidden_size: 1024,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            intermediate_size: 4096,
            activation: ClipActivation::GeluErf,
            ..Self::sd15()
        }
    }

    /// SDXL's second text encoder: OpenCLIP ViT-bigG/14 (32 layers, 1280 wide, exact GELU) with
    /// its 1280-wide text projection.
    pub fn sdxl_g() -> Self {
        ClipConfig {
            hidden_size: 1280,
            num_hidden_layers: 32,
            num_attention_heads: 20,
            intermediate_size: 5120,
            activation: ClipActivation::GeluErf,
            projection_dim: Some(1280),
            ..Self::sd15()
        }
    }

    /// SDXL's second text encoder at tiny widths (a 32-wide projection).
    pub fn sdxl_g_tiny() -> Self {
        ClipConfig {
            activation: ClipActivation::GeluErf,
            projection_dim: Some(32),
            ..Self::tiny()
        }
    }

    /// SD 1.x's text encoder at tiny widths (the real vocabulary, so real token ids work).
    pub fn tiny() -> Self {
        ClipConfig {
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 64,
            ..Self::sd15()
        }
    }

    /// Parse HF's `text_encoder/config.json`.
    pub fn from_hf_json(v: &Value, file: &Path) -> Result<Self> {
        let err = |field: &str, what: String| ModelError::Config {
            file: file.to_path_buf(),
            field: field.into(),
            what,
        };
        let n = |field: &str| -> Result<usize> {
            v[field].as_u64().map(|x| x as usize).ok_or_else(|| {
                err(
                    field,
                    format!("must be a positive integer, found {}", v[field]),
                )
            })
        };
        let activation = match v["hidden_act"].as_str() {
            Some("quick_gelu") | None => ClipActivation::QuickGelu,
            Some("gelu") => ClipActivation::GeluErf,
            Some("gelu_new" | "gelu_pytorch_tanh") => ClipActivation::GeluTanh,
            Some(x) => {
                return Err(err(
                    "hidden_act",
                    format!("is '{x}'; supported: quick_gelu, gelu, gelu_new"),
                ));
            }
        };
        let c = ClipConfig {
            vocab_size: n("vocab_size")?,
            max_position_embeddings: n("max_position_embeddings")?,
            hidden_size: n("hidden_size")?,
            num_hidden_layers: n("num_hidden_layers")?,
            num_attention_heads: n("num_attention_heads")?,
            intermediate_size: n("intermediate_size")?,
            activation,
            projection_dim: None,
        };
        let with_projection = v["architectures"]
            .as_array()
            .is_some_and(|a| a.iter().any(|x| x == "CLIPTextModelWithProjection"));
        let c = ClipConfig {
            projection_dim: if with_projection {
                Some(n("projection_dim")?)
            } else {
                None
            },
            ..c
        };
        if c.num_attention_heads == 0 || !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(err(
                "num_attention_heads",
                format!(
                    "({}) must divide hidden_size ({})",
                    c.num_attention_heads, c.hidden_size
                ),
            ));
        }
        Ok(c)
    }

    /// The config as HF writes it.
    pub fn to_hf_json(&self) -> Value {
        let act = match self.activation {
            ClipActivation::QuickGelu => "quick_gelu",
            ClipActivation::GeluErf => "gelu",
            ClipActivation::GeluTanh => "gelu_new",
        };
        let mut v = json!({
            "architectures": [if self.projection_dim.is_some() { "CLIPTextModelWithProjection" } else { "CLIPTextModel" }],
            "model_type": "clip_text_model",
            "vocab_size": self.vocab_size, "max_position_embeddings": self.max_position_embeddings,
            "hidden_size": self.hidden_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "intermediate_size": self.intermediate_size,
            "hidden_act": act, "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 1, "torch_dtype": "float32",
        });
        if let Some(p) = self.projection_dim {
            v["projection_dim"] = json!(p);
        }
        v
    }
}

/// The causal attention mask `[n, n]`: 0 on and below the diagonal, −∞ above.
fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (n, n), device)?.to_dtype(dtype)?)
}

struct Layer {
    key: String,
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The text encoder.
pub struct ClipTextModel {
    config: ClipConfig,
    token_embedding: Embedding,
    position_embedding: Embedding,
    layers: Vec<Layer>,
    final_layer_norm: LayerNorm,
    final_key: String,
    /// `text_projection` (no bias) and its probe key, with a projection.
    projection: Option<(Linear, String)>,
}

impl ClipTextModel {
    /// Build from a `VarBuilder` at the root of `text_encoder/model.safetensors` (weights under
    /// `text_model.`); probe keys get `prefix` (normally `text_encoder`).
    pub fn new(vb: VarBuilder, config: &ClipConfig, prefix: &str) -> candle_core::Result<Self> {
        let c = config;
        let projection = match c.projection_dim {
            Some(p) => Some((
                candle_nn::linear_no_bias(c.hidden_size, p, vb.pp("text_projection"))?,
                format!("{prefix}.text_projection"),
            )),
            None => None,
        };
        let vb = vb.pp("text_model");
        let (d, i) = (c.hidden_size, c.intermediate_size);
        let layers = (0..c.num_hidden_layers)
            .map(|n| {
                let vb = vb.pp("encoder.layers").pp(n.to_string());
                Ok(Layer {
                    key: format!("{prefix}.encoder.layers.{n}"),
                    ln1: candle_nn::layer_norm(d, 1e-5, vb.pp("layer_norm1"))?,
                    q: candle_nn::linear(d, d, vb.pp("self_attn.q_proj"))?,
                    k: candle_nn::linear(d, d, vb.pp("self_attn.k_proj"))?,
                    v: candle_nn::linear(d, d, vb.pp("self_attn.v_proj"))?,
                    out: candle_nn::linear(d, d, vb.pp("self_attn.out_proj"))?,
                    ln2: candle_nn::layer_norm(d, 1e-5, vb.pp("layer_norm2"))?,
                    fc1: candle_nn::linear(d, i, vb.pp("mlp.fc1"))?,
                    fc2: candle_nn::linear(i, d, vb.pp("mlp.fc2"))?,
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(ClipTextModel {
            config: c.clone(),
            token_embedding: candle_nn::embedding(
                c.vocab_size,
                d,
                vb.pp("embeddings.token_embedding"),
            )?,
            position_embedding: candle_nn::embedding(
                c.max_position_embeddings,
                d,
                vb.pp("embeddings.position_embedding"),
            )?,
            layers,
            final_layer_norm: candle_nn::layer_norm(d, 1e-5, vb.pp("final_layer_norm"))?,
            final_key: format!("{prefix}.final_layer_norm"),
            projection,
        })
    }

    /// Load `text_encoder/model.safetensors`; errors name the key, the shapes and the file.
    pub fn load(
        weights: &Path,
        config: &ClipConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        Self::load_as(weights, config, dtype, device, "text_encoder")
    }

    /// [`ClipTextModel::load`] with probe keys under `prefix` (SDXL's `text_encoder_2`).
    pub fn load_as(
        weights: &Path,
        config: &ClipConfig,
        dtype: DType,
        device: &Device,
        prefix: &str,
    ) -> Result<Self> {
        let wrap = |source| ModelError::Weights {
            file: weights.to_path_buf(),
            error: source,
        };
        let vb = Checkpoint::open_plain(weights, dtype, device)?;
        ClipTextModel::new(vb, config, prefix).map_err(wrap)
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    fn activation(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self.config.activation {
            ClipActivation::QuickGelu => x * candle_nn::ops::sigmoid(&(x * 1.702)?)?,
            ClipActivation::GeluErf => x.gelu_erf(),
            ClipActivation::GeluTanh => x.gelu(),
        }
    }

    fn attention(&self, l: &Layer, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let h = self.config.num_attention_heads;
        let hd = d / h;
        let heads = |t: Tensor| t.reshape((b, n, h, hd))?.transpose(1, 2)?.contiguous();
        let q = heads((l.q.forward(x)? * (hd as f64).powf(-0.5))?)?;
        let k = heads(l.k.forward(x)?)?;
        let v = heads(l.v.forward(x)?)?;
        let w = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let w = super::attention::softmax_last_dim(&w)?;
        let o = w.matmul(&v)?.transpose(1, 2)?.reshape((b, n, d))?;
        Ok(l.out.forward(&o)?)
    }

    /// Encode token ids `[batch, tokens]` (u32). `clip_skip` ≥ 1: 1 takes the last layer, N the
    /// N-th from last (A1111's "Clip skip"); the final layer norm is applied either way.
    pub fn forward(&self, ids: &Tensor, clip_skip: usize, probe: &Probe) -> Result<Tensor> {
        let layers = self.layers.len();
        if clip_skip == 0 || clip_skip > layers {
            return Err(candle_core::Error::Msg(format!(
                "clip skip must be between 1 and {layers}, got {clip_skip}"
            ))
            .into());
        }
        let x = self.hidden(ids, layers + 1 - clip_skip, probe)?;
        observe(probe, &self.final_key, &self.final_layer_norm.forward(&x)?)
    }

    /// SDXL's use of an encoder (diffusers' `encode_prompt`): the hidden state before the last
    /// layer (`hidden_states[-2]`, no final layer norm) and, with a projection, the pooled
    /// embedding: `text_projection(final_layer_norm(last)[eos])`, eos being the first position
    /// of the largest token id (the end-of-text token), as `CLIPTextModelWithProjection` pools.
    /// Every layer, the final layer norm and the projection are probe points.
    pub fn forward_sdxl(&self, ids: &Tensor, probe: &Probe) -> Result<(Tensor, Option<Tensor>)> {
        let layers = self.layers.len();
        if layers < 2 {
            return Err(candle_core::Error::Msg(
                "SDXL takes the hidden state before the last layer: the encoder needs 2 layers or more".into(),
            )
            .into());
        }
        let penultimate = self.hidden(ids, layers - 1, probe)?;
        let last = self.hidden_from(&penultimate, layers - 1, probe)?;
        let normed = observe(
            probe,
            &self.final_key,
            &self.final_layer_norm.forward(&last)?,
        )?;
        let pooled = match &self.projection {
            Some((proj, key)) => {
                let (b, _) = ids.dims2()?;
                let eos = ids
                    .to_dtype(DType::F32)?
                    .argmax_keepdim(1)?
                    .to_dtype(DType::U32)?;
                let mut rows = Vec::with_capacity(b);
                for i in 0..b {
                    let at = eos.get(i)?.flatten_all()?.to_vec1::<u32>()?[0] as usize;
                    rows.push(normed.get(i)?.narrow(0, at, 1)?);
                }
                let pooled = Tensor::cat(&rows, 0)?;
                Some(observe(probe, key, &proj.forward(&pooled)?)?)
            }
            None => None,
        };
        Ok((penultimate, pooled))
    }

    /// The output of the first `upto` layers.
    fn hidden(&self, ids: &Tensor, upto: usize, probe: &Probe) -> Result<Tensor> {
        let (_, n) = ids.dims2()?;
        let device = ids.device();
        if n > self.config.max_position_embeddings {
            return Err(candle_core::Error::Msg(format!(
                "{n} tokens exceed the {} positions of the text encoder",
                self.config.max_position_embeddings
            ))
            .into());
        }
        let positions = Tensor::arange(0u32, n as u32, device)?.unsqueeze(0)?;
        let x = self
            .token_embedding
            .forward(ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask = causal_mask(n, x.dtype(), device)?;
        self.run_layers(x, 0, upto, &mask, probe)
    }

    /// Layers `from..` to the end, from a hidden state `x` they take as input.
    fn hidden_from(&self, x: &Tensor, from: usize, probe: &Probe) -> Result<Tensor> {
        let n = x.dim(1)?;
        let mask = causal_mask(n, x.dtype(), x.device())?;
        self.run_layers(x.clone(), from, self.layers.len(), &mask, probe)
    }

    fn run_layers(
        &self,
        mut x: Tensor,
        from: usize,
        to: usize,
        mask: &Tensor,
        probe: &Probe,
    ) -> Result<Tensor> {
        for l in &self.layers[from..to] {
            let a = self.attention(l, &l.ln1.forward(&x)?, mask)?;
            let h = (x + a)?;
            let m = l
                .fc2
                .forward(&self.activation(&l.fc1.forward(&l.ln2.forward(&h)?)?)?)?;
            x = observe(probe, &l.key, &(h + m)?)?;
        }
        Ok(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(cfg: &ClipConfig) -> ClipTextModel {
        let w = crate::model::synth::random_weights(7, |vb| {
            ClipTextModel::new(vb, cfg, "text_encoder_2").map(drop)
        })
        .unwrap();
        let vb = VarBuilder::from_tensors(w.into_iter().collect(), DType::F32, &Device::Cpu);
        ClipTextModel::new(vb, cfg, "text_encoder_2").unwrap()
    }

    #[test]
    fn sdxl_encoding_takes_the_penultimate_state_and_pools_at_the_end_of_text() {
        let cfg = ClipConfig::sdxl_g_tiny();
        let back = ClipConfig::from_hf_json(&cfg.to_hf_json(), Path::new("config.json")).unwrap();
        assert_eq!(back, cfg);
        let m = model(&cfg);
        // bos, two words, eos, then padding (SDXL's second tokenizer pads with id 0).
        let mut ids = vec![49406u32, 320, 1125, 49407];
        ids.resize(77, 0);
        let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let p = Probe::disabled();
        let (hidden, pooled) = m.forward_sdxl(&ids, &p).unwrap();
        assert_eq!(hidden.dims(), [1, 77, 32]);
        // hidden_states[-2] through the final norm is what clip skip 2 gives.
        let skip2 = m.forward(&ids, 2, &p).unwrap();
        let normed = m.final_layer_norm.forward(&hidden).unwrap();
        let d: f32 = (normed - skip2)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
        // Pooled: the projection of the last layer's normed state at the eos position (3).
        let last = m.forward(&ids, 1, &p).unwrap();
        let (proj, key) = m.projection.as_ref().unwrap();
        assert_eq!(key, "text_encoder_2.text_projection");
        let want = proj
            .forward(&last.narrow(1, 3, 1).unwrap().squeeze(1).unwrap())
            .unwrap();
        let got = pooled.unwrap();
        assert_eq!(got.dims(), [1, 32]);
        let d: f32 = (got - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(d, 0.0);
        // Without a projection there is no pooled output.
        let (_, none) = model(&ClipConfig::tiny()).forward_sdxl(&ids, &p).unwrap();
        assert!(none.is_none());
    }
}
