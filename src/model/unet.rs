//! Our UNet2DConditionModel, module for module after diffusers, with a probe point at every
//! module output: SD 1.x/2.x, and SDXL's (per-level transformer depth, the `text_time` added
//! conditioning through `add_embedding`, see [`UNet::forward_added`]).
//!
//! Probe keys (under the `unet.` prefix, equal to the weight paths): `conv_in`,
//! `time_embedding`, `add_embedding` (SDXL), `down_blocks.i.resnets.j`, `down_blocks.i.attentions.j` (each
//! Transformer2DModel) and inside each transformer block `…transformer_blocks.k.attn1`, `attn2`,
//! `ff`; `down_blocks.i.downsamplers.0`, `down_blocks.i` (the block's output), the same under
//! `mid_block` and `up_blocks.i` (with `upsamplers.0`), `conv_norm_out`, `conv_out`. Finer points
//! exist only where a capture rule names them (its pattern ends in the name; see
//! [`crate::probe::names_fine_points`]): `…attnN.to_q`, `to_k`, `to_v` and, for the `full`
//! attention implementation, `…attnN.probs`.

use super::attention::{AttentionImpl, Chunking, Gelu, Numerics, attend};
use super::checkpoint::Checkpoint;
use super::config::{BlockConfig, TextTime, UNetConfig};
use super::cpu;
use super::observe::observe;
use super::{ModelError, Result};
use crate::probe::Probe;
use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{Conv2dConfig, GroupNorm, LayerNorm, Linear, VarBuilder};
use std::path::Path;

/// Everything the forward pass needs besides its inputs.
struct Ctx<'a> {
    probe: &'a Probe,
    temb: &'a Tensor,
    context: &'a Tensor,
}

fn key_of(prefix: &str, vb: &VarBuilder) -> String {
    match vb.prefix().as_str() {
        "" => prefix.to_string(),
        p => format!("{prefix}.{p}"),
    }
}

/// A convolution that runs [`cpu::conv2d`] where it applies (CPU, f32) and candle's elsewhere.
struct Conv2d(candle_nn::Conv2d);

impl Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_add(x, cpu::Add::Nothing)
    }

    /// The convolution of `x` plus `add` (added in the kernel on the CPU).
    fn forward_add(&self, x: &Tensor, add: cpu::Add) -> candle_core::Result<Tensor> {
        let c = self.0.config();
        if c.groups == 1 && c.dilation == 1 {
            let (w, b) = (self.0.weight(), self.0.bias());
            if let Some(out) = cpu::conv2d(x, w, b, add, c.stride, c.padding) {
                return out;
            }
        }
        let y = self.0.forward(x)?;
        match add {
            cpu::Add::Nothing => Ok(y),
            cpu::Add::PerImage(t) => {
                y.broadcast_add(&t.unsqueeze(D::Minus1)?.unsqueeze(D::Minus1)?)
            }
            cpu::Add::Residual(r) => y + r,
        }
    }
}

/// A linear layer that runs [`cpu::linear`] where it applies and candle's elsewhere.
struct Lin(Linear);

impl Lin {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match cpu::linear(x, self.0.weight(), self.0.bias()) {
            Some(y) => y,
            None => self.0.forward(x),
        }
    }
}

fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Lin> {
    candle_nn::linear(in_dim, out_dim, vb).map(Lin)
}

fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> candle_core::Result<Lin> {
    candle_nn::linear_no_bias(in_dim, out_dim, vb).map(Lin)
}

fn conv2d(
    in_c: usize,
    out_c: usize,
    kernel: usize,
    cfg: Conv2dConfig,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    candle_nn::conv2d(in_c, out_c, kernel, cfg, vb).map(Conv2d)
}

/// GroupNorm (optionally followed by SiLU) that runs [`cpu::group_norm`] where it applies and
/// candle's composition elsewhere.
struct Norm {
    fallback: GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl Norm {
    fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> candle_core::Result<Self> {
        let weight = vb.get_with_hints(channels, "weight", candle_nn::Init::Const(1.))?;
        let bias = vb.get_with_hints(channels, "bias", candle_nn::Init::Const(0.))?;
        Ok(Norm {
            fallback: GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?,
            weight,
            bias,
            groups,
            eps,
        })
    }

    fn forward(&self, x: &Tensor, silu: bool) -> candle_core::Result<Tensor> {
        if let Some(out) = cpu::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu)
        {
            return out;
        }
        let y = self.fallback.forward(x)?;
        if silu { y.silu() } else { Ok(y) }
    }
}

struct ResnetBlock {
    key: String,
    norm1: Norm,
    conv1: Conv2d,
    time_emb_proj: Lin,
    norm2: Norm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale: f64,
}

fn conv3(
    in_c: usize,
    out_c: usize,
    stride: usize,
    padding: usize,
    vb: VarBuilder,
) -> candle_core::Result<Conv2d> {
    conv2d(
        in_c,
        out_c,
        3,
        Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        },
        vb,
    )
}

impl ResnetBlock {
    fn new(
        prefix: &str,
        vb: VarBuilder,
        in_c: usize,
        out_c: usize,
        cfg: &UNetConfig,
        output_scale: f64,
    ) -> candle_core::Result<Self> {
        let g = cfg.norm_num_groups;
        Ok(ResnetBlock {
            key: key_of(prefix, &vb),
            norm1: Norm::new(g, in_c, cfg.norm_eps, vb.pp("norm1"))?,
            conv1: conv3(in_c, out_c, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: linear(cfg.time_embed_dim(), out_c, vb.pp("time_emb_proj"))?,
            norm2: Norm::new(g, out_c, cfg.norm_eps, vb.pp("norm2"))?,
            conv2: conv3(out_c, out_c, 1, 1, vb.pp("conv2"))?,
            conv_shortcut: if in_c != out_c {
                Some(conv2d(
                    in_c,
                    out_c,
                    1,
                    Default::default(),
                    vb.pp("conv_shortcut"),
                )?)
            } else {
                None
            },
            output_scale,
        })
    }

    fn forward(&self, x: &Tensor, c: &Ctx) -> Result<Tensor> {
        let t = self.time_emb_proj.forward(&c.temb.silu()?)?;
        let h = self
            .conv1
            .forward_add(&self.norm1.forward(x, true)?, cpu::Add::PerImage(&t))?;
        let shortcut = match &self.conv_shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        let h = self.norm2.forward(&h, true)?;
        let mut out = self.conv2.forward_add(&h, cpu::Add::Residual(&shortcut))?;
        if self.output_scale != 1.0 {
            out = (out / self.output_scale)?;
        }
        observe(c.probe, &self.key, &out)
    }
}

struct Attention {
    key: String,
    to_q: Lin,
    to_k: Lin,
    to_v: Lin,
    to_out: Lin,
    heads: usize,
    scale: f64,
    imp: AttentionImpl,
    upcast: bool,
    fine_keys: [String; 4],
}

impl Attention {
    fn new(
        prefix: &str,
        vb: VarBuilder,
        dim: usize,
        context_dim: usize,
        heads: usize,
        imp: AttentionImpl,
        numerics: Numerics,
    ) -> candle_core::Result<Self> {
        let key = key_of(prefix, &vb);
        Ok(Attention {
            to_q: linear_no_bias(dim, dim, vb.pp("to_q"))?,
            to_k: linear_no_bias(context_dim, dim, vb.pp("to_k"))?,
            to_v: linear_no_bias(context_dim, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out.0"))?,
            heads,
            scale: 1.0 / ((dim / heads) as f64).sqrt(),
            imp,
            upcast: numerics.upcast_attention,
            fine_keys: ["to_q", "to_k", "to_v", "probs"].map(|s| format!("{key}.{s}")),
            key,
        })
    }

    /// [B, N, h·d] → [B·h, N, d]
    fn to_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, dim) = x.dims3()?;
        x.reshape((b, n, self.heads, dim / self.heads))?
            .transpose(1, 2)?
            .reshape((b * self.heads, n, dim / self.heads))
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>, probe: &Probe) -> Result<Tensor> {
        let context = context.unwrap_or(x);
        let q = observe(probe, &self.fine_keys[0], &self.to_q.forward(x)?)?;
        let k = observe(probe, &self.fine_keys[1], &self.to_k.forward(context)?)?;
        let v = observe(probe, &self.fine_keys[2], &self.to_v.forward(context)?)?;
        let want_probs =
            self.imp == AttentionImpl::Full && !probe.plan(&self.fine_keys[3]).is_noop();
        if self.imp == AttentionImpl::Full
            && let Some(r) = cpu::attention(&q, &k, &v, self.heads, self.scale, want_probs)
        {
            let (out, probs) = r?;
            if let Some(p) = probs {
                observe(probe, &self.fine_keys[3], &p)?;
            }
            return observe(probe, &self.key, &self.to_out.forward(&out)?);
        }
        let (b, n, dim) = q.dims3()?;
        let dtype = q.dtype();
        let (mut q, mut k, mut v) = (self.to_heads(&q)?, self.to_heads(&k)?, self.to_heads(&v)?);
        if self.upcast {
            (q, k, v) = (
                q.to_dtype(DType::F32)?,
                k.to_dtype(DType::F32)?,
                v.to_dtype(DType::F32)?,
            );
        }
        let (out, probs) = attend(
            &self.imp,
            &q.contiguous()?,
            &k.contiguous()?,
            &v.contiguous()?,
            self.scale,
            want_probs,
        )
        .map_err(|what| ModelError::Attention {
            key: self.key.clone(),
            what,
        })?;
        if let Some(p) = probs {
            observe(probe, &self.fine_keys[3], &p)?;
        }
        let out = out
            .to_dtype(dtype)?
            .reshape((b, self.heads, n, dim / self.heads))?
            .transpose(1, 2)?
            .reshape((b, n, dim))?;
        observe(probe, &self.key, &self.to_out.forward(&out)?)
    }
}

struct FeedForward {
    key: String,
    proj: Lin,
    out: Lin,
    gelu: Gelu,
}

impl FeedForward {
    fn new(prefix: &str, vb: VarBuilder, dim: usize, gelu: Gelu) -> candle_core::Result<Self> {
        let inner = dim * 4;
        Ok(FeedForward {
            key: key_of(prefix, &vb),
            proj: linear(dim, inner * 2, vb.pp("net.0.proj"))?,
            out: linear(inner, dim, vb.pp("net.2"))?,
            gelu,
        })
    }

    fn forward(&self, x: &Tensor, probe: &Probe) -> Result<Tensor> {
        let (p, o) = (&self.proj.0, &self.out.0);
        let erf = self.gelu == Gelu::Erf;
        let y = match cpu::feed_forward(x, (p.weight(), p.bias()), (o.weight(), o.bias()), erf) {
            Some(y) => y?,
            None => {
                let h = self.proj.forward(x)?.chunk(2, D::Minus1)?;
                let gate = if erf { h[1].gelu_erf()? } else { h[1].gelu()? };
                self.out.forward(&(&h[0] * gate)?)?
            }
        };
        observe(probe, &self.key, &y)
    }
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

impl TransformerBlock {
    fn forward(&self, x: &Tensor, c: &Ctx) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x)?, None, c.probe)? + x)?;
        let x = (self
            .attn2
            .forward(&self.norm2.forward(&x)?, Some(c.context), c.probe)?
            + x)?;
        Ok((self.ff.forward(&self.norm3.forward(&x)?, c.probe)? + x)?)
    }
}

enum Proj {
    Conv(Conv2d),
    Linear(Linear),
}

impl Proj {
    /// Weight ([Cout, C] or [Cout, C, 1, 1]) and bias.
    fn parts(&self) -> (&Tensor, Option<&Tensor>) {
        match self {
            Proj::Conv(c) => (c.0.weight(), c.0.bias()),
            Proj::Linear(l) => (l.weight(), l.bias()),
        }
    }
}

/// diffusers' Transformer2DModel (`attentions.N`).
struct Transformer2D {
    key: String,
    norm: Norm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl Transformer2D {
    #[allow(clippy::too_many_arguments)]
    fn new(
        prefix: &str,
        vb: VarBuilder,
        channels: usize,
        heads: usize,
        depth: usize,
        cfg: &UNetConfig,
        imp: AttentionImpl,
        numerics: Numerics,
    ) -> candle_core::Result<Self> {
        let proj = |name: &str| -> candle_core::Result<Proj> {
            Ok(if cfg.use_linear_projection {
                Proj::Linear(candle_nn::linear(channels, channels, vb.pp(name))?)
            } else {
                Proj::Conv(conv2d(
                    channels,
                    channels,
                    1,
                    Default::default(),
                    vb.pp(name),
                )?)
            })
        };
        let vb_tb = vb.pp("transformer_blocks");
        let blocks = (0..depth)
            .map(|i| {
                let vb = vb_tb.pp(i.to_string());
                Ok(TransformerBlock {
                    norm1: candle_nn::layer_norm(channels, 1e-5, vb.pp("norm1"))?,
                    attn1: Attention::new(
                        prefix,
                        vb.pp("attn1"),
                        channels,
                        channels,
                        heads,
                        imp,
                        numerics,
                    )?,
                    norm2: candle_nn::layer_norm(channels, 1e-5, vb.pp("norm2"))?,
                    attn2: Attention::new(
                        prefix,
                        vb.pp("attn2"),
                        channels,
                        cfg.cross_attention_dim,
                        heads,
                        imp,
                        numerics,
                    )?,
                    norm3: candle_nn::layer_norm(channels, 1e-5, vb.pp("norm3"))?,
                    ff: FeedForward::new(prefix, vb.pp("ff"), channels, numerics.gelu)?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Transformer2D {
            key: key_of(prefix, &vb),
            norm: Norm::new(cfg.norm_num_groups, channels, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    fn forward(&self, x: &Tensor, c: &Ctx) -> Result<Tensor> {
        let (b, ch, h, w) = x.dims4()?;
        let n = self.norm.forward(x, false)?;
        // [B, C, H, W] → [B, H·W, C], projecting before (conv) or after (linear) the reshape.
        let to_tokens = |t: &Tensor| t.permute((0, 2, 3, 1))?.reshape((b, h * w, ch));
        let (w_in, b_in) = self.proj_in.parts();
        let mut t = match cpu::pointwise_to_tokens(&n, w_in, b_in) {
            Some(t) => t?,
            None => match &self.proj_in {
                Proj::Conv(p) => to_tokens(&p.forward(&n)?)?,
                Proj::Linear(p) => p.forward(&to_tokens(&n)?)?,
            },
        };
        for block in &self.blocks {
            t = block.forward(&t, c)?;
        }
        let to_map = |t: &Tensor| t.reshape((b, h, w, ch))?.permute((0, 3, 1, 2));
        let (w_out, b_out) = self.proj_out.parts();
        let out = match cpu::pointwise_from_tokens(&t, w_out, b_out, x) {
            Some(out) => out?,
            None => match &self.proj_out {
                Proj::Conv(p) => (p.forward(&to_map(&t)?.contiguous()?)? + x)?,
                Proj::Linear(p) => (to_map(&p.forward(&t)?)? + x)?,
            },
        };
        observe(c.probe, &self.key, &out)
    }
}

/// A resample step (`downsamplers.0` / `upsamplers.0`) and its probe key.
struct Resample {
    key: String,
    conv: Conv2d,
    /// Downsample: zero-pad right and bottom first (diffusers' `padding = 0` case).
    pad: bool,
}

struct Level {
    key: String,
    resnets: Vec<ResnetBlock>,
    attentions: Vec<Transformer2D>,
    resample: Option<Resample>,
}

impl Level {
    fn resnet_then_attention(&self, j: usize, x: &Tensor, c: &Ctx) -> Result<Tensor> {
        let x = self.resnets[j].forward(x, c)?;
        match self.attentions.get(j) {
            Some(a) => a.forward(&x, c),
            None => Ok(x),
        }
    }
}

/// A level's layers: resnet `j` takes `in_channels[j]` to the level's channels and, at levels
/// with cross-attention, is followed by a Transformer2DModel.
fn level_layers(
    prefix: &str,
    vb: &VarBuilder,
    b: &BlockConfig,
    in_channels: &[usize],
    cfg: &UNetConfig,
    attention: AttentionImpl,
    numerics: Numerics,
) -> candle_core::Result<(Vec<ResnetBlock>, Vec<Transformer2D>)> {
    let mut resnets = Vec::with_capacity(in_channels.len());
    let mut attentions = Vec::new();
    for (j, &rin) in in_channels.iter().enumerate() {
        let j = j.to_string();
        resnets.push(ResnetBlock::new(
            prefix,
            vb.pp("resnets").pp(&j),
            rin,
            b.out_channels,
            cfg,
            1.0,
        )?);
        if let Some(depth) = b.cross_attention {
            attentions.push(Transformer2D::new(
                prefix,
                vb.pp("attentions").pp(&j),
                b.out_channels,
                b.heads,
                depth,
                cfg,
                attention,
                numerics,
            )?);
        }
    }
    Ok((resnets, attentions))
}

/// The UNet. Build it with [`UNet::new`] or [`UNet::load`]; run it with [`UNet::forward`].
pub struct UNet {
    config: UNetConfig,
    numerics: Numerics,
    attention: AttentionImpl,
    dtype: DType,
    conv_in: Conv2d,
    time_linear_1: Lin,
    time_linear_2: Lin,
    down: Vec<Level>,
    mid: Level,
    up: Vec<Level>,
    conv_norm_out: Norm,
    conv_out: Conv2d,
    /// SDXL's `add_embedding` (linear, SiLU, linear) and its probe key.
    add_embedding: Option<(Lin, Lin, String)>,
    keys: [String; 4],
}

/// SDXL's added conditioning for one evaluation: the pooled text embedding `[B, pooled]` and
/// the six size/crop ids `[B, 6]` (original h, w; crop top, left; target h, w), in the order of
/// the latent batch.
pub struct Added {
    pub text_embeds: Tensor,
    pub time_ids: Tensor,
}

impl UNet {
    /// Build from a `VarBuilder` rooted at the UNet's weights; probe keys get `prefix`
    /// (normally `unet`).
    pub fn new(
        vb: VarBuilder,
        config: &UNetConfig,
        numerics: Numerics,
        attention: AttentionImpl,
        prefix: &str,
    ) -> candle_core::Result<Self> {
        let cfg = config;
        let n = cfg.blocks.len();
        let c0 = cfg.blocks[0].out_channels;
        let temb = cfg.time_embed_dim();
        let vb_down = vb.pp("down_blocks");
        let mut down = Vec::with_capacity(n);
        for (i, b) in cfg.blocks.iter().enumerate() {
            let vb = vb_down.pp(i.to_string());
            let in_c = if i == 0 {
                c0
            } else {
                cfg.blocks[i - 1].out_channels
            };
            let ins: Vec<usize> = (0..cfg.layers_per_block)
                .map(|j| if j == 0 { in_c } else { b.out_channels })
                .collect();
            let (resnets, attentions) =
                level_layers(prefix, &vb, b, &ins, cfg, attention, numerics)?;
            let resample = if i + 1 < n {
                let vbr = vb.pp("downsamplers.0");
                let key = key_of(prefix, &vbr);
                let conv = conv3(
                    b.out_channels,
                    b.out_channels,
                    2,
                    cfg.downsample_padding,
                    vbr.pp("conv"),
                )?;
                Some(Resample {
                    key,
                    conv,
                    pad: cfg.downsample_padding == 0,
                })
            } else {
                None
            };
            down.push(Level {
                key: key_of(prefix, &vb),
                resnets,
                attentions,
                resample,
            });
        }
        let last = cfg.blocks[n - 1];
        let vb_mid = vb.pp("mid_block");
        let mid = Level {
            key: key_of(prefix, &vb_mid),
            resnets: (0..2)
                .map(|j| {
                    ResnetBlock::new(
                        prefix,
                        vb_mid.pp("resnets").pp(j.to_string()),
                        last.out_channels,
                        last.out_channels,
                        cfg,
                        cfg.mid_block_scale_factor,
                    )
                })
                .collect::<candle_core::Result<_>>()?,
            attentions: vec![Transformer2D::new(
                prefix,
                vb_mid.pp("attentions.0"),
                last.out_channels,
                last.heads,
                last.cross_attention.unwrap_or(1),
                cfg,
                attention,
                numerics,
            )?],
            resample: None,
        };
        let vb_up = vb.pp("up_blocks");
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            let b = cfg.blocks[n - 1 - i];
            let vb = vb_up.pp(i.to_string());
            let prev_out = if i == 0 {
                last.out_channels
            } else {
                cfg.blocks[n - i].out_channels
            };
            let skip_in = cfg.blocks[if i == n - 1 { 0 } else { n - i - 2 }].out_channels;
            // Each resnet takes the previous output concatenated with a skip connection.
            let ins: Vec<usize> = (0..=cfg.layers_per_block)
                .map(|j| {
                    let res_skip = if j == cfg.layers_per_block {
                        skip_in
                    } else {
                        b.out_channels
                    };
                    let rin = if j == 0 { prev_out } else { b.out_channels };
                    rin + res_skip
                })
                .collect();
            let (resnets, attentions) =
                level_layers(prefix, &vb, &b, &ins, cfg, attention, numerics)?;
            let resample = if i + 1 < n {
                let vbr = vb.pp("upsamplers.0");
                Some(Resample {
                    key: key_of(prefix, &vbr),
                    conv: conv3(b.out_channels, b.out_channels, 1, 1, vbr.pp("conv"))?,
                    pad: false,
                })
            } else {
                None
            };
            up.push(Level {
                key: key_of(prefix, &vb),
                resnets,
                attentions,
                resample,
            });
        }
        let keys = ["conv_in", "time_embedding", "conv_norm_out", "conv_out"]
            .map(|k| format!("{prefix}.{k}"));
        let add_embedding = match cfg.addition {
            Some(a) => Some((
                linear(a.input_dim, temb, vb.pp("add_embedding.linear_1"))?,
                linear(temb, temb, vb.pp("add_embedding.linear_2"))?,
                format!("{prefix}.add_embedding"),
            )),
            None => None,
        };
        Ok(UNet {
            config: cfg.clone(),
            numerics,
            attention,
            dtype: vb.dtype(),
            conv_in: conv3(cfg.in_channels, c0, 1, 1, vb.pp("conv_in"))?,
            time_linear_1: linear(c0, temb, vb.pp("time_embedding.linear_1"))?,
            time_linear_2: linear(temb, temb, vb.pp("time_embedding.linear_2"))?,
            down,
            mid,
            up,
            conv_norm_out: Norm::new(
                cfg.norm_num_groups,
                c0,
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3(c0, cfg.out_channels, 1, 1, vb.pp("conv_out"))?,
            add_embedding,
            keys,
        })
    }

    /// Load `unet/diffusion_pytorch_model.safetensors` (f32 or f16 weights, converted to
    /// `dtype`). Missing or misshapen weights are errors naming the key, the shapes and the file.
    pub fn load(
        weights: &Path,
        config: &UNetConfig,
        dtype: DType,
        device: &Device,
        numerics: Numerics,
        attention: AttentionImpl,
    ) -> Result<Self> {
        config.validate(weights)?;
        let wrap = |source| ModelError::Weights {
            file: weights.to_path_buf(),
            error: source,
        };
        let vb = Checkpoint::open_plain(weights, dtype, device)?;
        UNet::new(vb, config, numerics, attention, "unet").map_err(wrap)
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    pub fn numerics(&self) -> Numerics {
        self.numerics
    }

    pub fn attention(&self) -> AttentionImpl {
        self.attention
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// How every attention call of a forward pass on a `batch`×`height`×`width` latent with
    /// `context_tokens` text tokens is chunked, by probe key (`…attn1`, `…attn2`). A pure
    /// function of the shapes, so it can go into the trace header before the run; an error
    /// names the first layer whose chunking is impossible (A1111's "not enough memory").
    pub fn attention_plan(
        &self,
        batch: usize,
        height: usize,
        width: usize,
        context_tokens: usize,
    ) -> Result<Vec<(String, Chunking)>> {
        let elem = if self.numerics.upcast_attention {
            4
        } else {
            self.dtype.size_in_bytes()
        };
        let n = self.down.len();
        // Side of each level: the stride-2 downsamplers round up.
        let mut sides = vec![(height, width)];
        for _ in 1..n {
            let (h, w) = sides[sides.len() - 1];
            sides.push((h.div_ceil(2), w.div_ceil(2)));
        }
        let levels = self
            .down
            .iter()
            .zip(sides.clone())
            .chain(std::iter::once((&self.mid, sides[n - 1])))
            .chain(self.up.iter().zip(sides.iter().rev().copied()));
        let mut plan = Vec::new();
        for (level, (h, w)) in levels {
            for t in &level.attentions {
                for block in &t.blocks {
                    for (a, nk) in [(&block.attn1, h * w), (&block.attn2, context_tokens)] {
                        let c =
                            a.imp
                                .chunking(batch * a.heads, h * w, nk, elem)
                                .map_err(|what| ModelError::Attention {
                                    key: a.key.clone(),
                                    what,
                                })?;
                        plan.push((a.key.clone(), c));
                    }
                }
            }
        }
        Ok(plan)
    }

    /// Every probe point of one forward pass on a `batch`×`height`×`width` latent with
    /// `context_tokens` text tokens: key and output shape, in execution order, including the
    /// fine points (`to_q`/`to_k`/`to_v`, and `probs` where the attention implementation can
    /// produce them). A pure function of the shapes: what a capture will cost is known before
    /// the run (tests check it against a real forward pass).
    pub fn probe_points(
        &self,
        batch: usize,
        height: usize,
        width: usize,
        context_tokens: usize,
    ) -> Vec<(String, Vec<usize>)> {
        let cfg = &self.config;
        let n = self.down.len();
        let mut sides = vec![(height, width)];
        for level in &self.down[..n - 1] {
            let (pad, p) = match &level.resample {
                Some(r) if r.pad => (1, 0),
                _ => (0, cfg.downsample_padding),
            };
            let out = |s: usize| (s + pad + 2 * p).saturating_sub(3) / 2 + 1;
            let (h, w) = sides[sides.len() - 1];
            sides.push((out(h), out(w)));
        }
        let mut pts = vec![(self.keys[1].clone(), vec![batch, cfg.time_embed_dim()])];
        if let Some((_, _, key)) = &self.add_embedding {
            pts.push((key.clone(), vec![batch, cfg.time_embed_dim()]));
        }
        pts.push((
            self.keys[0].clone(),
            vec![batch, cfg.blocks[0].out_channels, height, width],
        ));
        let map = |c: usize, (h, w): (usize, usize)| vec![batch, c, h, w];
        let layer = |pts: &mut Vec<(String, Vec<usize>)>, level: &Level, j: usize, c, hw| {
            pts.push((level.resnets[j].key.clone(), map(c, hw)));
            if let Some(t) = level.attentions.get(j) {
                let (h, w) = hw;
                let tokens = vec![batch, h * w, c];
                for block in &t.blocks {
                    for (a, nk) in [(&block.attn1, h * w), (&block.attn2, context_tokens)] {
                        let kv = vec![batch, nk, c];
                        pts.push((a.fine_keys[0].clone(), tokens.clone()));
                        pts.push((a.fine_keys[1].clone(), kv.clone()));
                        pts.push((a.fine_keys[2].clone(), kv));
                        if a.imp == AttentionImpl::Full {
                            pts.push((a.fine_keys[3].clone(), vec![batch * a.heads, h * w, nk]));
                        }
                        pts.push((a.key.clone(), tokens.clone()));
                    }
                    pts.push((block.ff.key.clone(), tokens.clone()));
                }
                pts.push((t.key.clone(), map(c, hw)));
            }
        };
        for (i, level) in self.down.iter().enumerate() {
            let c = cfg.blocks[i].out_channels;
            for j in 0..level.resnets.len() {
                layer(&mut pts, level, j, c, sides[i]);
            }
            let out = match &level.resample {
                Some(r) => {
                    pts.push((r.key.clone(), map(c, sides[i + 1])));
                    sides[i + 1]
                }
                None => sides[i],
            };
            pts.push((level.key.clone(), map(c, out)));
        }
        let c = cfg.blocks[n - 1].out_channels;
        let last = sides[n - 1];
        layer(&mut pts, &self.mid, 0, c, last);
        pts.push((self.mid.resnets[1].key.clone(), map(c, last)));
        pts.push((self.mid.key.clone(), map(c, last)));
        for (i, level) in self.up.iter().enumerate() {
            let c = cfg.blocks[n - 1 - i].out_channels;
            let here = sides[n - 1 - i];
            for j in 0..level.resnets.len() {
                layer(&mut pts, level, j, c, here);
            }
            let out = match &level.resample {
                Some(r) => {
                    let to = sides[n - 2 - i];
                    pts.push((r.key.clone(), map(c, to)));
                    to
                }
                None => here,
            };
            pts.push((level.key.clone(), map(c, out)));
        }
        pts.push((
            self.keys[2].clone(),
            map(cfg.blocks[0].out_channels, (height, width)),
        ));
        pts.push((self.keys[3].clone(), map(cfg.out_channels, (height, width))));
        pts
    }

    /// Sinusoidal timestep features, computed in f32 and cast to the model dtype (diffusers'
    /// `Timesteps` + `t_emb.to(dtype)`).
    fn time_features(&self, batch: usize, timestep: f64, device: &Device) -> Result<Tensor> {
        let emb = timestep_features(
            self.config.blocks[0].out_channels,
            self.config.freq_shift,
            self.config.flip_sin_to_cos,
            batch,
            timestep,
            device,
        )?;
        Ok(emb.to_dtype(self.dtype)?)
    }

    /// One evaluation: `latent` `[B, C, H, W]`, a (possibly fractional) `timestep`, text
    /// embeddings `context` `[B, tokens, cross_attention_dim]`. Every module output is offered
    /// to `probe`. An SDXL UNet needs [`UNet::forward_added`].
    pub fn forward(
        &self,
        latent: &Tensor,
        timestep: f64,
        context: &Tensor,
        probe: &Probe,
    ) -> Result<Tensor> {
        self.forward_added(latent, timestep, context, None, probe)
    }

    /// SDXL's added embedding `add_embedding([text_embeds, features(time_ids)])`, `[B, temb]`.
    fn added_embedding(
        &self,
        added: Option<&Added>,
        batch: usize,
        device: &Device,
    ) -> Result<Option<Tensor>> {
        let (Some(a), Some((l1, l2, _))) = (self.config.addition, &self.add_embedding) else {
            return Ok(None);
        };
        let Some(cond) = added else {
            return Err(candle_core::Error::Msg(
                "this UNet (addition_embed_type text_time, SDXL) needs the pooled text embedding and the size/crop ids".into(),
            )
            .into());
        };
        let (ids, pooled) = (&cond.time_ids, &cond.text_embeds);
        if ids.dims() != [batch, TextTime::IDS]
            || pooled.dims() != [batch, a.pooled_dim().unwrap_or(0)]
        {
            return Err(candle_core::Error::Msg(format!(
                "SDXL conditioning: time ids {:?} and pooled text {:?} for a batch of {batch} (want [{batch}, 6] and [{batch}, {}])",
                ids.dims(),
                pooled.dims(),
                a.pooled_dim().unwrap_or(0)
            ))
            .into());
        }
        let values: Vec<f32> = ids.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let feats = sinusoidal_features(
            a.time_embed_dim,
            self.config.freq_shift,
            self.config.flip_sin_to_cos,
            &values,
            device,
        )?
        .reshape((batch, TextTime::IDS * a.time_embed_dim))?;
        let x = Tensor::cat(&[&pooled.to_dtype(DType::F32)?, &feats], 1)?.to_dtype(self.dtype)?;
        Ok(Some(l2.forward(&l1.forward(&x)?.silu()?)?))
    }

    /// [`UNet::forward`] with SDXL's added conditioning (required when the config has
    /// `addition`, ignored otherwise): the time embedding becomes `time_embedding(t) +
    /// add_embedding(...)`, and `unet.add_embedding` is a probe point.
    pub fn forward_added(
        &self,
        latent: &Tensor,
        timestep: f64,
        context: &Tensor,
        added: Option<&Added>,
        probe: &Probe,
    ) -> Result<Tensor> {
        let (b, _, h, w) = latent.dims4()?;
        let device = latent.device();
        let x = latent.to_dtype(self.dtype)?;
        let x = if self.config.center_input_sample {
            ((x * 2.0)? - 1.0)?
        } else {
            x
        };
        let context = context.to_dtype(self.dtype)?;
        let temb = self.time_features(b, timestep, device)?;
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb)?.silu()?)?;
        let temb = observe(probe, &self.keys[1], &temb)?;
        let temb = match self.added_embedding(added, b, device)? {
            Some(aug) => {
                let key = self
                    .add_embedding
                    .as_ref()
                    .map_or("", |(_, _, k)| k.as_str());
                (temb + observe(probe, key, &aug)?)?
            }
            None => temb,
        };
        let c = Ctx {
            probe,
            temb: &temb,
            context: &context,
        };

        let mut x = observe(probe, &self.keys[0], &self.conv_in.forward(&x)?)?;
        let mut skips = vec![x.clone()];
        for level in &self.down {
            for j in 0..level.resnets.len() {
                x = level.resnet_then_attention(j, &x, &c)?;
                skips.push(x.clone());
            }
            if let Some(r) = &level.resample {
                let input = if r.pad {
                    x.pad_with_zeros(D::Minus1, 0, 1)?
                        .pad_with_zeros(D::Minus2, 0, 1)?
                } else {
                    x.clone()
                };
                x = observe(probe, &r.key, &r.conv.forward(&input)?)?;
                skips.push(x.clone());
            }
            x = observe(probe, &level.key, &x)?;
        }
        x = self.mid.resnets[0].forward(&x, &c)?;
        x = self.mid.attentions[0].forward(&x, &c)?;
        x = self.mid.resnets[1].forward(&x, &c)?;
        x = observe(probe, &self.mid.key, &x)?;

        // Sizes for latents that do not halve evenly (diffusers' `forward_upsample_size`).
        let factor = 1usize << (self.down.len() - 1);
        let odd = h % factor != 0 || w % factor != 0;
        for level in &self.up {
            for j in 0..level.resnets.len() {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("skip connections exhausted".into()))?;
                x = level.resnet_then_attention(j, &Tensor::cat(&[&x, &skip], 1)?, &c)?;
            }
            if let Some(r) = &level.resample {
                let (th, tw) = match skips.last() {
                    Some(s) if odd => (s.dim(2)?, s.dim(3)?),
                    _ => (x.dim(2)? * 2, x.dim(3)? * 2),
                };
                x = observe(
                    probe,
                    &r.key,
                    &r.conv.forward(&x.upsample_nearest2d(th, tw)?)?,
                )?;
            }
            x = observe(probe, &level.key, &x)?;
        }
        let x = observe(
            probe,
            &self.keys[2],
            &self.conv_norm_out.forward(&x, false)?,
        )?;
        observe(probe, &self.keys[3], &self.conv_out.forward(&x.silu()?)?)
    }
}

/// diffusers' `get_timestep_embedding` for one timestep, in f32 and in torch's order of
/// operations: `exponent = -ln(10000) · arange(half)` (the scalar rounded to f32), divided by
/// `half − shift` (a true f32 division, as PyTorch's CPU kernel does: multiplying by the
/// reciprocal instead rounds 34 of SD's 160 exponents differently, which at t = 999 moves sine
/// arguments by up to 6·10⁻⁵), `exp`, times `t`, then `[cos, sin]` (`flip_sin_to_cos`) or `[sin, cos]`. An odd `dim`
/// gets a zero column, as diffusers pads. Returns `[batch, dim]` f32.
pub(crate) fn timestep_features(
    dim: usize,
    shift: f64,
    flip_sin_to_cos: bool,
    batch: usize,
    timestep: f64,
    device: &Device,
) -> Result<Tensor> {
    sinusoidal_features(
        dim,
        shift,
        flip_sin_to_cos,
        &vec![timestep as f32; batch],
        device,
    )
}

/// [`timestep_features`] of one value per row (SDXL's size and crop ids), `[values, dim]` f32.
pub(crate) fn sinusoidal_features(
    dim: usize,
    shift: f64,
    flip_sin_to_cos: bool,
    values: &[f32],
    device: &Device,
) -> Result<Tensor> {
    let half = dim / 2;
    let exponent =
        (Tensor::arange(0u32, half as u32, device)?.to_dtype(DType::F32)? * -(10000f64.ln()))?;
    let divisor = Tensor::full((half as f64 - shift) as f32, half, device)?;
    let freqs = exponent.div(&divisor)?.exp()?;
    sinusoid(&freqs, dim, flip_sin_to_cos, values, device)
}

/// `[cos, sin]` (or `[sin, cos]`) of `values ⊗ freqs`, one row per value, with diffusers' zero
/// column for an odd `dim`.
fn sinusoid(
    freqs: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    values: &[f32],
    device: &Device,
) -> Result<Tensor> {
    let batch = values.len();
    let t = Tensor::from_slice(values, (batch, 1), device)?;
    let emb = t.broadcast_mul(&freqs.unsqueeze(0)?)?;
    let (sin, cos) = (emb.sin()?, emb.cos()?);
    let mut parts = if flip_sin_to_cos {
        vec![cos, sin]
    } else {
        vec![sin, cos]
    };
    if dim % 2 == 1 {
        parts.push(Tensor::zeros((batch, 1), DType::F32, device)?);
    }
    Ok(Tensor::cat(&parts, 1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// diffusers' `get_timestep_embedding(t, 320, flip_sin_to_cos=True, downscale_freq_shift=0)`
    /// written out in scalar f32, one torch op after another.
    fn torch_order(t: f32, dim: usize, divide: bool) -> Vec<f32> {
        let half = dim / 2;
        let scale = -(10000f64.ln()) as f32;
        let args: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = i as f32 * scale;
                let e = if divide {
                    exponent / half as f32
                } else {
                    exponent * (1.0 / half as f32)
                };
                t * e.exp()
            })
            .collect();
        let cos = args.iter().map(|a| a.cos());
        let sin = args.iter().map(|a| a.sin());
        cos.chain(sin).collect()
    }

    fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
            .sum();
        let n: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
        (d / n).sqrt()
    }

    #[test]
    fn timestep_features_follow_torch_arithmetic() {
        let dev = Device::Cpu;
        let (mut ours, mut torch, mut recip) = (Vec::new(), Vec::new(), Vec::new());
        for t in [0.0, 1.0, 77.25, 499.0, 981.3, 999.0] {
            let f = timestep_features(320, 0.0, true, 2, t, &dev).unwrap();
            assert_eq!(f.dims(), [2, 320]);
            let rows = f.to_vec2::<f32>().unwrap();
            assert_eq!(rows[0], rows[1]);
            let want = torch_order(t as f32, 320, true);
            let worst = rows[0]
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-6, "t={t}: max |ours − torch order| {worst:e}");
            ours.extend_from_slice(&rows[0]);
            torch.extend(want);
            recip.extend(torch_order(t as f32, 320, false));
        }
        let err = rel_l2(&ours, &torch);
        let recip_err = rel_l2(&recip, &torch);
        eprintln!("relative L2 vs torch order: ours {err:.2e}, reciprocal {recip_err:.2e}");
        assert!(err < 1e-7, "{err:e}");
        // The test tells the two apart: multiplying by the reciprocal is measurably off.
        assert!(recip_err > 1e-6, "{recip_err:e}");
        // t = 0: cos 0 = 1 in the first half, sin 0 = 0 in the second.
        let zero = timestep_features(320, 0.0, true, 1, 0.0, &dev).unwrap();
        let zero = zero.to_vec2::<f32>().unwrap().remove(0);
        assert!(zero[..160].iter().all(|&v| v == 1.0) && zero[160..].iter().all(|&v| v == 0.0));
        // Without the flip sine comes first; an odd width is padded with a zero column.
        let odd = timestep_features(7, 1.0, false, 1, 3.0, &dev).unwrap();
        let odd = odd.to_vec2::<f32>().unwrap().remove(0);
        assert_eq!(odd.len(), 7);
        assert_eq!(odd[0], 3f32.sin());
        assert_eq!(odd[6], 0.0);
    }
}
