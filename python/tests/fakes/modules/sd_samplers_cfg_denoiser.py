"""Stand-in for modules/sd_samplers_cfg_denoiser.py: the CFG denoiser k-diffusion calls once per
model evaluation. It batches [cond; uncond] (or calls them separately), runs the
`cfg_denoiser` / `cfg_after_cfg` callbacks and counts its evaluations in `self.step`. As in the
webui, the callbacks' `sampling_step` is `shared.state.sampling_step`, which only the sampler's
k-diffusion callback sets (`callback_state`: the step i, after that step's first evaluation),
so it lags the evaluations: Euler's evaluations see 0, 0, 1, 2, …"""

import torch

from . import script_callbacks, shared
from .shared import state


class CFGDenoiser:
    def __init__(self, sampler):
        self.sampler = sampler
        self.inner_model = None  # the CompVisDenoiser
        self.steps = None  # steps as the user asked
        self.total_steps = None  # expected evaluations (twice the steps for second-order samplers)
        self.step = 0  # evaluations so far
        self.init_latent = None

    def __call__(self, x, sigma, uncond, cond, cond_scale):
        b = x.shape[0]
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        params = script_callbacks.CFGDenoiserParams(x_in, None, sigma_in, state.sampling_step, state.sampling_steps, cond, uncond, self)
        script_callbacks.cfg_denoiser_callback(params)
        x_in, sigma_in, cond, uncond = params.x, params.sigma, params.text_cond, params.text_uncond
        same_tokens = cond.shape[1] == uncond.shape[1]
        if shared.forge_batching:
            out = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([uncond, cond]), labels=[1, 0])
            x_out = torch.cat([out[b:], out[:b]])  # back to [cond; uncond] for the combination below
        elif shared.opts.batch_cond_uncond and same_tokens:
            x_out = self.inner_model(x_in, sigma_in, torch.cat([cond, uncond]))
        else:
            x_out = torch.zeros_like(x_in)
            x_out[:-b] = self.inner_model(x_in[:-b], sigma_in[:-b], cond)
            x_out[-b:] = self.inner_model(x_in[-b:], sigma_in[-b:], uncond)
        denoised_uncond = x_out[-b:]
        denoised = denoised_uncond + (x_out[:b] - denoised_uncond) * cond_scale
        after = script_callbacks.AfterCFGCallbackParams(denoised, state.sampling_step, state.sampling_steps)
        script_callbacks.cfg_after_cfg_callback(after)
        self.step += 1
        return after.x
