//! Text conditioning: prompt → token chunks ([`crate::text`]) → CLIP per chunk → A1111
//! emphasis → one `[1, 77·k, dim]` tensor.
//!
//! Each 77-token chunk is encoded on its own, as A1111 does; with A1111 prompt syntax the
//! token multipliers are applied to the encoder output z and the original mean restored
//! (z ← z·w; z ← z·(mean₀ / mean₁), A1111's "Original" emphasis) with f32 multipliers, so
//! the conditioning is f32 as in the webui. The chunks are concatenated on the token axis. Every encoder call is a separate
//! probe evaluation (eval 0, 1, …: the negative prompt's chunks first, as A1111 encodes the
//! unconditional prompt first), so `text_encoder.*` records never collide.
//!
//! SDXL ([`encode_sdxl`]) runs both encoders on each chunk, as the webui's
//! `GeneralConditioner`: each encoder's hidden state before its last layer, emphasis applied
//! to each on its own, the two concatenated along the features (768 + 1280 = 2048), and the
//! pooled embedding of `text_encoder_2` from the first chunk (unweighted). Both encoders of a
//! chunk share its eval number; their keys differ (`text_encoder.*`, `text_encoder_2.*`).

use super::{PipelineError, Result};
use crate::model::clip::ClipTextModel;
use crate::probe::Probe;
use crate::text::{Chunk, PromptTokens};
use candle_core::{Device, Tensor};

/// How token weights are applied to the encoder output (the webui's "Emphasis mode").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Emphasis {
    /// z·w, then the original mean restored (the webui's default, "Original").
    #[default]
    Original,
    /// z·w only ("No norm").
    NoNorm,
}

impl Emphasis {
    pub fn name(self) -> &'static str {
        match self {
            Emphasis::Original => "original",
            Emphasis::NoNorm => "no-norm",
        }
    }
}

impl std::str::FromStr for Emphasis {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "original" | "Original" => Ok(Emphasis::Original),
            "no-norm" | "No norm" | "nonorm" => Ok(Emphasis::NoNorm),
            _ => Err(format!("'{s}': expected original or no-norm")),
        }
    }
}

/// Encode `chunks` (one prompt) with `clip`, applying `emphasis` to the token weights (`None`:
/// unweighted, diffusers' plain prompts). `first_eval` numbers the encoder calls; returns the
/// conditioning and the next free eval number.
pub fn encode(
    clip: &ClipTextModel,
    chunks: &[Chunk],
    emphasis: Option<Emphasis>,
    clip_skip: usize,
    probe: &Probe,
    first_eval: u32,
    device: &Device,
) -> Result<(Tensor, u32)> {
    let mut parts = Vec::with_capacity(chunks.len());
    let mut eval = first_eval;
    for chunk in chunks {
        probe.set_step(None, eval)?;
        eval += 1;
        let ids = Tensor::new(chunk.ids.as_slice(), device)?.unsqueeze(0)?;
        let z = clip.forward(&ids, clip_skip, probe)?;
        parts.push(match emphasis {
            Some(mode) => emphasize(&z, &chunk.weights, mode)?,
            None => z,
        });
    }
    probe.set_step(None, 0)?;
    Ok((Tensor::cat(&parts, 1)?, eval))
}

/// SDXL's conditioning of one prompt: `chunks` and `chunks_2` are the same prompt tokenized for
/// each encoder (equal counts; OpenCLIP's tokenizer pads with `!`). Returns the context
/// `[1, 77·k, d₁ + d₂]`, the pooled embedding `[1, projection]` and the next free eval number.
#[allow(clippy::too_many_arguments)]
pub fn encode_sdxl(
    clip: &ClipTextModel,
    clip_2: &ClipTextModel,
    (chunks, chunks_2): (&[Chunk], &[Chunk]),
    emphasis: Option<Emphasis>,
    probe: &Probe,
    first_eval: u32,
    device: &Device,
) -> Result<(Tensor, Tensor, u32)> {
    if chunks.len() != chunks_2.len() || chunks.is_empty() {
        return Err(PipelineError::Conditioning(format!(
            "the prompt gave {} chunks for tokenizer/ and {} for tokenizer_2/; SDXL's two tokenizers must split a prompt alike",
            chunks.len(),
            chunks_2.len()
        )));
    }
    let mut parts = Vec::with_capacity(chunks.len());
    let mut pooled = None;
    let mut eval = first_eval;
    for (c1, c2) in chunks.iter().zip(chunks_2) {
        probe.set_step(None, eval)?;
        eval += 1;
        let ids = Tensor::new(c1.ids.as_slice(), device)?.unsqueeze(0)?;
        let (z1, _) = clip.forward_sdxl(&ids, probe)?;
        let ids = Tensor::new(c2.ids.as_slice(), device)?.unsqueeze(0)?;
        let (z2, p) = clip_2.forward_sdxl(&ids, probe)?;
        if pooled.is_none() {
            pooled = p;
        }
        let (z1, z2) = match emphasis {
            Some(mode) => (
                emphasize(&z1, &c1.weights, mode)?,
                emphasize(&z2, &c2.weights, mode)?,
            ),
            None => (z1, z2),
        };
        parts.push(Tensor::cat(&[&z1, &z2], 2)?);
    }
    probe.set_step(None, 0)?;
    let pooled = pooled.ok_or_else(|| {
        PipelineError::Conditioning(
            "text_encoder_2 has no text_projection, which SDXL's pooled embedding needs".into(),
        )
    })?;
    Ok((Tensor::cat(&parts, 1)?, pooled, eval))
}

/// A1111's emphasis on one chunk's output `z` [1, tokens, dim], as the webui's
/// `sd_emphasis.EmphasisOriginal`: mean₀ = mean(z) (in z's dtype), z·w with f32 multipliers
/// (a 16-bit z is promoted to f32 by the product), then z·(mean₀ / mean(z·w)); "No norm"
/// (`EmphasisOriginalNoNorm`) stops after the product. The result is f32 whatever z's dtype;
/// with all weights 1 it equals z.
fn emphasize(z: &Tensor, weights: &[f32], mode: Emphasis) -> Result<Tensor> {
    let (_, n, _) = z.dims3()?;
    if weights.len() != n {
        return Err(PipelineError::Conditioning(format!(
            "{} token weights for {n} tokens",
            weights.len()
        )));
    }
    let f32 = candle_core::DType::F32;
    let mean0 = z
        .to_dtype(f32)?
        .mean_all()?
        .to_dtype(z.dtype())?
        .to_dtype(f32)?;
    let w = Tensor::new(weights, z.device())?.reshape((1, n, 1))?;
    let zw = z.to_dtype(f32)?.broadcast_mul(&w)?;
    if mode == Emphasis::NoNorm {
        return Ok(zw);
    }
    // The webui divides unguarded; a mean of exactly 0 (seen with synthetic weights, e.g. the
    // tiny model's empty prompt) would give NaN everywhere, so the ratio is 1 then.
    let mean1 = zw.mean_all()?;
    if mean1.to_scalar::<f32>()? == 0.0 {
        return Ok(zw);
    }
    let ratio = (mean0 / mean1)?;
    Ok(zw.broadcast_mul(&ratio)?)
}

/// Pad the shorter of two chunk lists with copies of `empty` (the empty prompt's chunk), so
/// uncond and cond have equal token counts and run in one batch (A1111's `pad_cond_uncond`).
/// Returns how many chunks were added to each side.
pub fn pad_chunks(
    uncond: &mut PromptTokens,
    cond: &mut PromptTokens,
    empty: &Chunk,
) -> (usize, usize) {
    let (u, c) = (uncond.chunks.len(), cond.chunks.len());
    let n = u.max(c);
    uncond.chunks.resize(n, empty.clone());
    cond.chunks.resize(n, empty.clone());
    (n - u, n - c)
}
