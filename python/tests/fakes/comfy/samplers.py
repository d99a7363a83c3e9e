"""Stand-in for comfy/samplers.py + comfy/k_diffusion: an SD 1.x EPS model, CFGGuider with
ComfyUI's wrapper points and batching ([uncond; cond] labelled [1, 0] in one call when memory
allows, else separate calls, uncond first), and k-diffusion Euler with ComfyUI's callback."""

import math

import torch

from .patcher_extension import WrappersMP, WrapperExecutor, get_all_wrappers

# Test knob standing in for "free memory": batch cond and uncond in one UNet call, or not; and
# the order of the candidates ComfyUI would build ([1, 0] after its reverse()).
BATCH_COND_UNCOND = True
ORDER = (1, 0)


class BaseModel:
    """model.diffusion_model is the LDM UNet; apply_model returns the denoised x̂₀."""

    def __init__(self, diffusion_model, alphas_cumprod, scale_factor=0.18215):
        self.diffusion_model = diffusion_model
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()
        self.scale_factor = scale_factor

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def apply_model(self, x, sigma, context, transformer_options):
        c_in = 1 / (sigma**2 + 1) ** 0.5
        xc = x * c_in[:, None, None, None]
        t = self.sigma_to_t(sigma).float()
        unet = self.diffusion_model
        executor = WrapperExecutor.new_class_executor(
            lambda x, timesteps, context, y, control, transformer_options: unet(x, timesteps, context),
            unet,
            get_all_wrappers(WrappersMP.DIFFUSION_MODEL, transformer_options),
        )
        eps = executor.execute(xc, t, context, None, None, transformer_options)
        return x - eps * sigma[:, None, None, None]

    def process_latent_out(self, latent):
        return latent / self.scale_factor


def get_sigmas(model, steps):
    """k-diffusion's CompVisDenoiser.get_sigmas (t linear from 999 to 0) with a final 0."""
    t = torch.linspace(len(model.sigmas) - 1, 0, steps)
    low, high, w = t.floor().long(), t.ceil().long(), t.frac()
    log_sigma = (1 - w) * model.log_sigmas[low] + w * model.log_sigmas[high]
    return torch.cat([log_sigma.exp(), torch.zeros(1)])


def calc_cond_batch(model, conds, x, sigma, transformer_options):
    """[cond, uncond] denoised outputs; the UNet calls batched as ComfyUI would."""
    ctx = {0: conds["positive"][0]["cross_attn"], 1: conds["negative"][0]["cross_attn"]}
    out = {}
    groups = [list(ORDER)] if BATCH_COND_UNCOND else [[ORDER[0]], [ORDER[1]]]
    for labels in groups:
        opts = dict(transformer_options)
        opts["cond_or_uncond"] = labels[:]
        opts["sigmas"] = sigma
        n = len(labels)
        xs = torch.cat([x] * n)
        c = torch.cat([ctx[l].expand(x.shape[0], -1, -1) for l in labels])
        d = model.apply_model(xs, sigma.repeat(n * x.shape[0]) if sigma.dim() else sigma.expand(n * x.shape[0]), c, opts)
        for l, rows in zip(labels, d.chunk(n)):
            out[l] = rows
    return out[0], out[1]


class KSAMPLER:
    def __init__(self, sampler_function):
        self.sampler_function = sampler_function

    def sample(self, guider, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None, disable_pbar=False):
        x = sigmas[0] * noise + (latent_image if latent_image is not None else 0)
        total = len(sigmas) - 1
        k_callback = None
        if callback is not None:
            k_callback = lambda d: callback(d["i"], d["denoised"], d["x"], total)
        return self.sampler_function(guider.predict, x, sigmas, callback=k_callback)


@torch.no_grad()
def sample_euler(model, x, sigmas, callback=None):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * torch.ones(x.shape[0]))
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "denoised": denoised})
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


class CFGGuider:
    def __init__(self, model_patcher):
        self.model_patcher = model_patcher
        self.model_options = model_patcher.model_options
        self.cfg = 1.0

    def set_conds(self, positive, negative):
        self.original_conds = {
            k: [{"cross_attn": c[0], **c[1]} for c in v] for k, v in (("positive", positive), ("negative", negative))
        }

    def set_cfg(self, cfg):
        self.cfg = cfg

    def predict(self, x, sigma):
        cond, uncond = calc_cond_batch(self.model_patcher.model, self.conds, x, sigma, self.model_options["transformer_options"])
        return uncond + (cond - uncond) * self.cfg

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed):
        executor = WrapperExecutor.new_class_executor(
            sampler.sample, sampler, get_all_wrappers(WrappersMP.SAMPLER_SAMPLE, self.model_options["transformer_options"])
        )
        samples = executor.execute(self, sigmas, {}, callback, noise, latent_image, denoise_mask, disable_pbar)
        return self.model_patcher.model.process_latent_out(samples.to(torch.float32))

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        return self.inner_sample(noise, latent_image, "cpu", sampler, sigmas, denoise_mask, callback, disable_pbar, seed)

    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None):
        self.conds = self.original_conds
        orig = self.model_options
        self.model_options = {"transformer_options": dict(orig.get("transformer_options", {}))}
        try:
            # sampler_helpers.prepare_model_patcher: the patcher's wrappers into the options.
            self.model_options["transformer_options"]["wrappers"] = {
                k: {kk: list(v) for kk, v in d.items()} for k, d in self.model_patcher.wrappers.items()
            }
            executor = WrapperExecutor.new_class_executor(
                self.outer_sample, self, get_all_wrappers(WrappersMP.OUTER_SAMPLE, self.model_options["transformer_options"])
            )
            return executor.execute(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed)
        finally:
            self.model_options = orig
            del self.conds
