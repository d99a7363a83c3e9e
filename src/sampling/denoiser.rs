//! The model side of sampling: the [`Denoiser`] interface (one batched model call for the
//! unconditional and conditional halves), the k-diffusion wrapper math that turns a model output
//! into a denoised estimate D (ε- or v-prediction), classifier-free guidance, and
//! [`UNetDenoiser`], the implementation over our instrumented UNet.
//!
//! Invariants: the model sees x·c_in with c_in = 1/√(σ²+1) (the caller scales, see
//! [`c_in`]); ε-prediction gives D = x − σ·ε, v-prediction D = x·c_skip + v·c_out with
//! c_skip = 1/(σ²+1), c_out = −σ/√(σ²+1) (`CompVisVDenoiser`, σ_data = 1); CFG is
//! D = D_u + s·(D_c − D_u) on the denoised values, as A1111's `CFGDenoiser`.

use super::{Result, SamplingError};
use crate::model::config::Prediction;
use crate::model::unet::{Added, UNet};
use crate::probe::Probe;
use candle_core::Tensor;

/// A model evaluated for classifier-free guidance.
pub trait Denoiser {
    /// Model outputs (ε, or v for v-prediction) for the unconditional and the conditional
    /// prompt, from one batched call on [uncond; cond], at the already c_in-scaled input `x_in`
    /// and (fractional) timestep `t`; `step` is the sampler step. Each half has `x_in`'s shape.
    fn eps(&mut self, x_in: &Tensor, t: f64, step: u32) -> Result<(Tensor, Tensor)>;
}

/// The input scaling c_in = 1/√(σ²+1).
pub fn c_in(sigma: f64) -> f64 {
    1.0 / (sigma * sigma + 1.0).sqrt()
}

/// D(x, σ) from the model output `out` (in x's dtype) for the given prediction type.
pub fn denoised(prediction: Prediction, x: &Tensor, out: &Tensor, sigma: f64) -> Result<Tensor> {
    Ok(match prediction {
        Prediction::Epsilon => (x - (out * sigma)?)?,
        Prediction::VPrediction => {
            let s2 = sigma * sigma + 1.0;
            let c_skip = 1.0 / s2;
            let c_out = -sigma / s2.sqrt();
            ((out * c_out)? + (x * c_skip)?)?
        }
    })
}

/// Classifier-free guidance on denoised values: D_u + scale·(D_c − D_u).
pub fn cfg_combine(uncond: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
    Ok((uncond + ((cond - uncond)? * scale)?)?)
}

/// How the unconditional and conditional halves go through the UNet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Batching {
    /// One call on [uncond; cond] (prompts padded to equal token counts beforehand).
    #[default]
    UncondFirst,
    /// The webui's `CFGDenoiser`: one call on [cond; uncond] when both prompts have the same
    /// number of tokens (its records are stored [uncond; cond], see `Probe::set_cond_first`); otherwise two calls, the conditional first (probe eval 0), then the
    /// unconditional (eval 1). The batch size and token count of every GEMM follow the webui.
    A1111,
}

impl Batching {
    /// How it is described in the run header.
    pub fn describe(self) -> &'static str {
        match self {
            Batching::UncondFirst => {
                "one batch [uncond; cond]; chunk counts padded with empty-prompt chunks"
            }
            Batching::A1111 => {
                "a1111: one batch [cond; uncond] when the token counts match, else two calls (cond as eval 0, uncond as eval 1), no padding"
            }
        }
    }
}

/// Our UNet as a [`Denoiser`]: text embeddings for [uncond; cond] batched along dimension 0, or
/// as the webui batches them ([`Batching`]).
pub struct UNetDenoiser<'a> {
    unet: &'a UNet,
    context: Tensor,
    probe: &'a Probe,
    batching: Batching,
    /// The webui's separate calls: (cond, uncond) embeddings of different token counts.
    separate: Option<(Tensor, Tensor)>,
    /// SDXL's added conditioning: for the batched call (rows as `context`'s), and for the
    /// separate calls (cond, uncond).
    added: Option<(Added, Added, Added)>,
}

impl<'a> UNetDenoiser<'a> {
    /// `uncond` and `cond` are [B, tokens, dim] embeddings of equal shape (prompts of different
    /// chunk counts would need separate calls, which this denoiser does not make).
    pub fn new(unet: &'a UNet, uncond: &Tensor, cond: &Tensor, probe: &'a Probe) -> Result<Self> {
        if uncond.dims() != cond.dims() || uncond.rank() != 3 {
            return Err(SamplingError::BadConditioning(format!(
                "uncond {:?} and cond {:?} must be [batch, tokens, dim] of equal shape",
                uncond.dims(),
                cond.dims()
            )));
        }
        Ok(UNetDenoiser {
            unet,
            context: Tensor::cat(&[uncond, cond], 0)?,
            probe,
            batching: Batching::UncondFirst,
            separate: None,
            added: None,
        })
    }

    /// As the webui's `CFGDenoiser` batches ([`Batching::A1111`]); `uncond` and `cond` are
    /// [B, tokens, dim] with equal batch and width, token counts may differ.
    pub fn a1111(unet: &'a UNet, uncond: &Tensor, cond: &Tensor, probe: &'a Probe) -> Result<Self> {
        let (du, dc) = (uncond.dims(), cond.dims());
        if uncond.rank() != 3 || cond.rank() != 3 || du[0] != dc[0] || du[2] != dc[2] {
            return Err(SamplingError::BadConditioning(format!(
                "uncond {du:?} and cond {dc:?} must be [batch, tokens, dim] of equal batch and width"
            )));
        }
        let equal = du == dc;
        Ok(UNetDenoiser {
            unet,
            context: if equal {
                Tensor::cat(&[cond, uncond], 0)?
            } else {
                cond.clone()
            },
            probe,
            batching: Batching::A1111,
            separate: (!equal).then(|| (cond.clone(), uncond.clone())),
            added: None,
        })
    }

    /// SDXL: the pooled text embeddings `[B, pooled]` of each prompt and the size/crop ids
    /// `[B, 6]` (the same for both), passed to [`UNet::forward_added`] in the rows of each call.
    pub fn with_added(
        mut self,
        uncond_pooled: &Tensor,
        cond_pooled: &Tensor,
        time_ids: &Tensor,
    ) -> Result<Self> {
        let one = |pooled: &Tensor| Added {
            text_embeds: pooled.clone(),
            time_ids: time_ids.clone(),
        };
        let rows = match self.batching {
            Batching::UncondFirst => [uncond_pooled, cond_pooled],
            Batching::A1111 => [cond_pooled, uncond_pooled],
        };
        let batched = Added {
            text_embeds: Tensor::cat(&rows, 0)?,
            time_ids: Tensor::cat(&[time_ids, time_ids], 0)?,
        };
        self.added = Some((batched, one(cond_pooled), one(uncond_pooled)));
        Ok(self)
    }
}

impl Denoiser for UNetDenoiser<'_> {
    fn eps(&mut self, x_in: &Tensor, t: f64, step: u32) -> Result<(Tensor, Tensor)> {
        let b = x_in.dim(0)?;
        if let Some((cond, uncond)) = &self.separate {
            if b != cond.dim(0)? {
                return Err(SamplingError::BadConditioning(format!(
                    "latent batch {b} needs {b} uncond and {b} cond embeddings, have {}",
                    cond.dim(0)?
                )));
            }
            let (ac, au) = match &self.added {
                Some((_, c, u)) => (Some(c), Some(u)),
                None => (None, None),
            };
            let c = self.unet.forward_added(x_in, t, cond, ac, self.probe)?;
            self.probe.set_step(Some(step), 1)?;
            let u = self.unet.forward_added(x_in, t, uncond, au, self.probe);
            self.probe.set_step(Some(step), 0)?;
            return Ok((u?, c));
        }
        if 2 * b != self.context.dim(0)? {
            return Err(SamplingError::BadConditioning(format!(
                "latent batch {b} needs {b} uncond and {b} cond embeddings, have {} in all",
                self.context.dim(0)?
            )));
        }
        let batch = Tensor::cat(&[x_in, x_in], 0)?;
        // The webui's rows are [cond; uncond]; the trace stores [uncond; cond] either way.
        let cond_first = self.batching == Batching::A1111;
        self.probe.set_cond_first(cond_first);
        let added = self.added.as_ref().map(|(b, _, _)| b);
        let out = self
            .unet
            .forward_added(&batch, t, &self.context, added, self.probe);
        self.probe.set_cond_first(false);
        let out = out?;
        let (first, second) = (out.narrow(0, 0, b)?, out.narrow(0, b, b)?);
        Ok(match self.batching {
            Batching::UncondFirst => (first, second),
            Batching::A1111 => (second, first),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn v(t: &Tensor) -> Vec<f32> {
        t.to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn eps_and_v_outputs_of_the_same_truth_give_the_same_denoised() {
        let (x0, noise, sigma) = ([0.5f32, -1.0, 2.0], [1.0f32, 0.3, -0.7], 3.0f64);
        // VE: x = x0 + σ·n; ideal ε = n; ideal v (VP form) = α·n − σ_vp·x0 with
        // α = 1/√(σ²+1), σ_vp = σ/√(σ²+1).
        let s = sigma as f32;
        let x: Vec<f32> = x0.iter().zip(&noise).map(|(a, n)| a + s * n).collect();
        let (alpha, svp) = (1.0 / (s * s + 1.0).sqrt(), s / (s * s + 1.0).sqrt());
        let vv: Vec<f32> = x0
            .iter()
            .zip(&noise)
            .map(|(a, n)| alpha * n - svp * a)
            .collect();
        let d_eps = denoised(Prediction::Epsilon, &t(&x), &t(&noise), sigma).unwrap();
        let d_v = denoised(Prediction::VPrediction, &t(&x), &t(&vv), sigma).unwrap();
        close(&v(&d_eps), &x0, 1e-5);
        close(&v(&d_v), &x0, 1e-5);
    }

    #[test]
    fn cfg_is_linear_in_the_scale() {
        let (u, c) = (t(&[1.0, 2.0]), t(&[3.0, -2.0]));
        assert_eq!(v(&cfg_combine(&u, &c, 0.0).unwrap()), v(&u));
        assert_eq!(v(&cfg_combine(&u, &c, 1.0).unwrap()), v(&c));
        assert_eq!(v(&cfg_combine(&u, &c, 7.5).unwrap()), vec![16.0, -28.0]);
        assert!((c_in(0.0) - 1.0).abs() < 1e-15 && (c_in(1.0) - 0.5f64.sqrt()).abs() < 1e-15);
    }
}
