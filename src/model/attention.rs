//! Attention implementations: the same math, chunked the ways real runs chunk it.
//!
//! All of them compute softmax(q·kᵀ·scale)·v over `[batch·heads, tokens, head_dim]` tensors:
//! - `full`: one matmul, one softmax, one matmul.
//! - `sliced:N`: diffusers' attention slicing, N (batch·head) rows at a time.
//! - `split:auto` / `split:BUDGET`: A1111's Doggettx split. k is pre-scaled; the query dimension
//!   is cut into 2^k slices where `needed = B·h·Nq·Nk·bytes × (3 if f16 else 2.5)` exceeds the
//!   memory budget (`auto`: the `--vram-budget` given, unlimited without one), so a 5 GB and an
//!   8 GB card's chunking can be reproduced on any machine. More than 64 slices is A1111's
//!   "not enough memory" error.
//! - `subquad:Q,KV`: sub-quadratic attention: query chunks of Q, key chunks of KV, combined with a
//!   running (online) softmax.
//!
//! [`Numerics`] chooses PyTorch's defaults (exact-erf GELU, attention matmuls in the model dtype,
//! softmax accumulated in f32) or candle-transformers' (tanh GELU, q/k/v upcast to f32).
//! [`AttentionImpl::chunking`] is a pure function of the shapes, so a run's chunking per layer
//! can be written to the trace header before the run.

use super::{ModelError, Result};
use candle_core::{D, DType, Tensor};
use std::fmt;

/// How attention is chunked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AttentionImpl {
    Full,
    /// diffusers slicing: this many (batch·head) rows per slice.
    Sliced(usize),
    /// Doggettx split against a memory budget in bytes (`None`: unlimited).
    Split {
        budget: Option<u64>,
    },
    /// Sub-quadratic: query chunk and key/value chunk sizes.
    SubQuad {
        q_chunk: usize,
        kv_chunk: usize,
    },
}

impl fmt::Display for AttentionImpl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttentionImpl::Full => write!(f, "full"),
            AttentionImpl::Sliced(n) => write!(f, "sliced:{n}"),
            AttentionImpl::Split { budget: None } => write!(f, "split:auto"),
            AttentionImpl::Split { budget: Some(b) } => write!(f, "split:{b}"),
            AttentionImpl::SubQuad { q_chunk, kv_chunk } => {
                write!(f, "subquad:{q_chunk},{kv_chunk}")
            }
        }
    }
}

/// `2.5GiB`, `512MiB`, `3000000000` → bytes.
pub fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num.trim().parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    (v.is_finite() && v >= 0.0).then_some((v * mult) as u64)
}

impl AttentionImpl {
    /// Parse `full`, `sliced:N`, `split:auto`, `split:BUDGET`, `subquad:Q,KV`; `vram_budget`
    /// resolves `split:auto`.
    pub fn parse(text: &str, vram_budget: Option<u64>) -> Result<Self> {
        let bad = |what: &str| ModelError::BadAttention {
            text: text.to_string(),
            what: what.to_string(),
        };
        let (name, arg) = text.split_once(':').unwrap_or((text, ""));
        let positive = |s: &str| s.trim().parse::<usize>().ok().filter(|&n| n > 0);
        match (name, arg) {
            ("full", "") => Ok(AttentionImpl::Full),
            ("sliced", n) => positive(n)
                .map(AttentionImpl::Sliced)
                .ok_or_else(|| bad("sliced needs a positive slice size")),
            ("split", "auto") => Ok(AttentionImpl::Split {
                budget: vram_budget,
            }),
            ("split", b) => parse_bytes(b)
                .map(|b| AttentionImpl::Split { budget: Some(b) })
                .ok_or_else(|| bad("split takes 'auto' or a byte size such as 2.5GiB")),
            ("subquad", qk) => {
                let (q, kv) = qk
                    .split_once(',')
                    .ok_or_else(|| bad("subquad needs Q,KV chunk sizes"))?;
                match (positive(q), positive(kv)) {
                    (Some(q_chunk), Some(kv_chunk)) => {
                        Ok(AttentionImpl::SubQuad { q_chunk, kv_chunk })
                    }
                    _ => Err(bad("chunk sizes must be positive integers")),
                }
            }
            _ => Err(bad("unknown implementation")),
        }
    }

    /// How a call with `bh` (batch·heads) rows, `nq` queries and `nk` keys of `elem_size`-byte
    /// elements is chunked: `(row slices, query slices, key chunks)`.
    pub fn chunking(
        &self,
        bh: usize,
        nq: usize,
        nk: usize,
        elem_size: usize,
    ) -> Result<Chunking, String> {
        Ok(match *self {
            AttentionImpl::Full => Chunking {
                rows: bh,
                queries: nq,
                keys: nk,
            },
            AttentionImpl::Sliced(n) => Chunking {
                rows: n.min(bh),
                queries: nq,
                keys: nk,
            },
            AttentionImpl::Split { budget } => {
                let tensor = (bh * nq * nk * elem_size) as f64;
                let modifier = if elem_size == 2 { 3.0 } else { 2.5 };
                let needed = tensor * modifier;
                let steps = match budget {
                    Some(b) if needed > b as f64 => {
                        let k = (needed / b.max(1) as f64).log2().ceil();
                        2usize.saturating_pow(k as u32)
                    }
                    _ => 1,
                };
                if steps > 64 {
                    let max_res = ((b_or(budget) as f64 / modifier / elem_size as f64 / bh as f64
                        * 64.0)
                        .sqrt()
                        .sqrt()
                        * 8.0) as u64;
                    return Err(format!(
                        "not enough memory: {steps} slices needed (needs {:.2} GiB, budget {:.2} GiB); A1111 stops here (use a lower resolution, max approx. {max_res}x{max_res})",
                        needed / (1u64 << 30) as f64,
                        b_or(budget) as f64 / (1u64 << 30) as f64
                    ));
                }
                Chunking {
                    rows: bh,
                    queries: (nq / steps).max(1),
                    keys: nk,
                }
            }
            AttentionImpl::SubQuad { q_chunk, kv_chunk } => Chunking {
                rows: bh,
                queries: q_chunk.min(nq),
                keys: kv_chunk.min(nk),
            },
        })
    }
}

fn b_or(b: Option<u64>) -> u64 {
    b.unwrap_or(u64::MAX)
}

/// The chunk sizes one attention call used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunking {
    pub rows: usize,
    pub queries: usize,
    pub keys: usize,
}

impl fmt::Display for Chunking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rows {} × queries {} × keys {}",
            self.rows, self.queries, self.keys
        )
    }
}

/// GELU flavour inside GEGLU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gelu {
    /// Exact `x·Φ(x)` (PyTorch's `F.gelu` default).
    Erf,
    /// The tanh approximation (candle's `Tensor::gelu`).
    Tanh,
}

/// Numerical choices that differ between PyTorch/diffusers and candle-transformers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Numerics {
    pub gelu: Gelu,
    /// Cast q, k, v to f32 for the attention math, as candle-transformers always does.
    pub upcast_attention: bool,
}

impl Numerics {
    /// diffusers on PyTorch (the default).
    pub const PYTORCH: Numerics = Numerics {
        gelu: Gelu::Erf,
        upcast_attention: false,
    };
    /// candle-transformers' stable_diffusion module.
    pub const CANDLE: Numerics = Numerics {
        gelu: Gelu::Tanh,
        upcast_attention: true,
    };
}

impl fmt::Display for Numerics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = match self.gelu {
            Gelu::Erf => "erf",
            Gelu::Tanh => "tanh",
        };
        write!(f, "gelu={g} upcast_attention={}", self.upcast_attention)
    }
}

/// Softmax over the last dimension, accumulated in f32 for 16-bit inputs (as PyTorch does).
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    match x.dtype() {
        DType::F16 | DType::BF16 => {
            Ok(candle_nn::ops::softmax_last_dim(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?)
        }
        _ => Ok(candle_nn::ops::softmax_last_dim(x)?),
    }
}

/// Attention over `[bh, n, d]` tensors with the given implementation. Returns the output and,
/// for `full` only and when `want_probs`, the probabilities.
pub fn attend(
    imp: &AttentionImpl,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
    want_probs: bool,
) -> Result<(Tensor, Option<Tensor>), String> {
    let run = || -> Result<(Tensor, Option<Tensor>)> {
        let (bh, nq, _) = q.dims3()?;
        let nk = k.dim(1)?;
        let c = imp
            .chunking(bh, nq, nk, q.dtype().size_in_bytes())
            .map_err(|what| ModelError::Attention {
                key: String::new(),
                what,
            })?;
        match *imp {
            AttentionImpl::Full => {
                let probs = softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
                let out = probs.matmul(v)?;
                Ok((out, want_probs.then_some(probs)))
            }
            AttentionImpl::Sliced(_) => {
                let mut parts = Vec::new();
                for start in (0..bh).step_by(c.rows) {
                    let len = c.rows.min(bh - start);
                    let (qs, ks, vs) = (
                        q.narrow(0, start, len)?,
                        k.narrow(0, start, len)?,
                        v.narrow(0, start, len)?,
                    );
                    let probs = softmax_last_dim(&(qs.matmul(&ks.t()?)? * scale)?)?;
                    parts.push(probs.matmul(&vs)?);
                }
                Ok((Tensor::cat(&parts, 0)?, None))
            }
            AttentionImpl::Split { .. } => {
                let ks = (k * scale)?.t()?;
                let mut parts = Vec::new();
                for start in (0..nq).step_by(c.queries) {
                    let len = c.queries.min(nq - start);
                    let probs = softmax_last_dim(&q.narrow(1, start, len)?.matmul(&ks)?)?;
                    parts.push(probs.matmul(v)?);
                }
                Ok((Tensor::cat(&parts, 1)?, None))
            }
            AttentionImpl::SubQuad { .. } => {
                let mut parts = Vec::new();
                for qs in (0..nq).step_by(c.queries) {
                    let qc = q.narrow(1, qs, c.queries.min(nq - qs))?;
                    // Running maximum, Σ exp, Σ exp·v over the key chunks seen so far (f32 sums
                    // for 16-bit inputs).
                    let mut acc: Option<(Tensor, Tensor, Tensor)> = None;
                    for ks in (0..nk).step_by(c.keys) {
                        let len = c.keys.min(nk - ks);
                        let (kc, vc) = (k.narrow(1, ks, len)?, v.narrow(1, ks, len)?);
                        let s = (qc.matmul(&kc.t()?)? * scale)?.to_dtype(DType::F32)?;
                        let m = s.max_keepdim(D::Minus1)?;
                        acc = Some(match acc {
                            None => {
                                let e = s.broadcast_sub(&m)?.exp()?;
                                let ev =
                                    e.to_dtype(v.dtype())?.matmul(&vc)?.to_dtype(DType::F32)?;
                                (m, e.sum_keepdim(D::Minus1)?, ev)
                            }
                            Some((m0, se0, ev0)) => {
                                let m1 = m0.maximum(&m)?;
                                let e = s.broadcast_sub(&m1)?.exp()?;
                                let ev =
                                    e.to_dtype(v.dtype())?.matmul(&vc)?.to_dtype(DType::F32)?;
                                let decay = (m0 - &m1)?.exp()?;
                                let se =
                                    (se0.broadcast_mul(&decay)? + e.sum_keepdim(D::Minus1)?)?;
                                let ev = (ev0.broadcast_mul(&decay)? + ev)?;
                                (m1, se, ev)
                            }
                        });
                    }
                    let (_, se, ev) = acc.ok_or_else(|| {
                        candle_core::Error::Msg("attention over zero keys".into())
                    })?;
                    parts.push(ev.broadcast_div(&se)?.to_dtype(v.dtype())?);
                }
                Ok((Tensor::cat(&parts, 1)?, None))
            }
        }
    };
    run().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn rand(shape: (usize, usize, usize), seed: u64) -> Tensor {
        let mut s = seed | 1;
        let n = shape.0 * shape.1 * shape.2;
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
        let d = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let n = b
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        (d / n).sqrt()
    }

    #[test]
    fn every_implementation_agrees_with_full() {
        let (q, k, v) = (
            rand((6, 50, 8), 1),
            rand((6, 37, 8), 2),
            rand((6, 37, 8), 3),
        );
        let scale = 1.0 / 8f64.sqrt();
        let (full, probs) = attend(&AttentionImpl::Full, &q, &k, &v, scale, true).unwrap();
        assert_eq!(probs.unwrap().dims(), &[6, 50, 37]);
        for text in [
            "sliced:1",
            "sliced:4",
            "sliced:6",
            "split:20KiB",
            "split:1",
            "subquad:16,10",
            "subquad:50,37",
            "subquad:7,1",
        ] {
            let imp = AttentionImpl::parse(text, None).unwrap();
            if text == "split:1" {
                assert!(
                    attend(&imp, &q, &k, &v, scale, false)
                        .unwrap_err()
                        .contains("not enough memory")
                );
                continue;
            }
            let (out, p) = attend(&imp, &q, &k, &v, scale, true).unwrap();
            assert!(p.is_none());
            let err = rel_l2(&out, &full);
            assert!(err < 1e-6, "{text}: relative L2 {err}");
        }
    }

    #[test]
    fn split_chooses_slices_as_a1111() {
        // SD 1.x level-0 self-attention at 576², fp16, B·h = 16: 2.40 GiB needed.
        let imp = AttentionImpl::parse("split:auto", parse_bytes("2GiB")).unwrap();
        assert_eq!(imp.chunking(16, 5184, 5184, 2).unwrap().queries, 5184 / 2);
        let imp = AttentionImpl::parse("split:auto", parse_bytes("2.5GiB")).unwrap();
        assert_eq!(imp.chunking(16, 5184, 5184, 2).unwrap().queries, 5184);
        // 1024², 2 GiB free: 24 GiB needed → 16 slices.
        let imp = AttentionImpl::parse("split:2GiB", None).unwrap();
        assert_eq!(
            imp.chunking(16, 16384, 16384, 2).unwrap().queries,
            16384 / 16
        );
        // Unlimited: one slice.
        assert_eq!(
            AttentionImpl::parse("split:auto", None)
                .unwrap()
                .chunking(16, 16384, 16384, 4)
                .unwrap()
                .queries,
            16384
        );
    }

    #[test]
    fn parse_errors_name_the_text() {
        for bad in [
            "fast",
            "sliced:0",
            "split:lots",
            "subquad:8",
            "subquad:a,b",
            "full:3",
        ] {
            let e = AttentionImpl::parse(bad, None).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("expected full"), "{e}");
        }
        assert_eq!(
            AttentionImpl::parse("subquad:1024,512", None)
                .unwrap()
                .to_string(),
            "subquad:1024,512"
        );
        assert_eq!(parse_bytes("1.5KiB"), Some(1536));
    }
}
