"""Stand-in for the webui's txt2img path (modules/processing.py, sd_samplers_kdiffusion.py,
sd_samplers_cfg_denoiser.py, sd_hijack_clip.py) in the order the real one runs: ImageRNG per batch,
process_batch, conds (negative first, 75-token chunks through the wrapped CLIP, cached across
generations), the noise, k-diffusion Euler over a CFG denoiser that batches [cond; uncond] (or
separate calls), before_hr + a hires pass, post_sample, per-image VAE decode, postprocess_batch."""

import torch
from torch import nn

from . import rng, script_callbacks, shared
from .scripts import PostSampleArgs


class FrozenCLIPEmbedder(nn.Module):
    def __init__(self, transformer, tokenizer):
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer


class FrozenCLIPEmbedderWithCustomWords(nn.Module):
    """cond_stage_model: the original embedder under `wrapped`; one transformer call per chunk."""

    def __init__(self, wrapped):
        super().__init__()
        self.wrapped = wrapped

    def forward(self, prompts):
        tok = self.wrapped.tokenizer
        bos, eos = tok.bos_token_id, tok.eos_token_id
        out = []
        for text in prompts:
            ids = tok(text, add_special_tokens=False)["input_ids"]
            chunks = [ids[i:i + 75] for i in range(0, max(len(ids), 1), 75)] or [[]]
            zs = []
            for chunk in chunks:
                tokens = torch.tensor([[bos] + chunk + [eos] * (76 - len(chunk))])
                zs.append(self.wrapped.transformer(input_ids=tokens).last_hidden_state)
            out.append(torch.cat(zs, dim=1))
        return torch.cat(out)


class CompVisDenoiser:
    def __init__(self, model):
        self.model = model
        ac = model.alphas_cumprod
        self.sigmas = ((1 - ac) / ac) ** 0.5
        self.log_sigmas = self.sigmas.log()

    def sigma_to_t(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma - self.log_sigmas[:, None]
        low = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=self.log_sigmas.shape[0] - 2)
        high = low + 1
        lo, hi = self.log_sigmas[low], self.log_sigmas[high]
        w = ((lo - log_sigma) / (lo - hi)).clamp(0, 1)
        return ((1 - w) * low + w * high).view(sigma.shape)

    def get_sigmas(self, n):
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return torch.cat([((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp(), torch.zeros(1)])

    def __call__(self, x, sigma, cond):
        c_in = 1 / (sigma**2 + 1) ** 0.5
        eps = self.model.apply_model(x * c_in[:, None, None, None], self.sigma_to_t(sigma).float(), cond)
        return x - eps * sigma[:, None, None, None]


class CFGDenoiser:
    def __init__(self, inner, steps):
        self.inner, self.steps, self.step = inner, steps, 0

    def __call__(self, x, sigma, uncond, cond, cond_scale):
        b = x.shape[0]
        x_in = torch.cat([x, x])
        sigma_in = torch.cat([sigma, sigma])
        params = script_callbacks.CFGDenoiserParams(x_in, None, sigma_in, self.step, self.steps, cond, uncond, self)
        script_callbacks.cfg_denoiser_callback(params)
        x_in, sigma_in, cond, uncond = params.x, params.sigma, params.text_cond, params.text_uncond
        same_tokens = cond.shape[1] == uncond.shape[1]
        if shared.opts.batch_cond_uncond and same_tokens:
            x_out = self.inner(x_in, sigma_in, torch.cat([cond, uncond]))
        else:
            x_out = torch.zeros_like(x_in)
            x_out[:-b] = self.inner(x_in[:-b], sigma_in[:-b], cond)
            x_out[-b:] = self.inner(x_in[-b:], sigma_in[-b:], uncond)
        denoised_uncond = x_out[-b:]
        denoised = denoised_uncond + (x_out[:b] - denoised_uncond) * cond_scale
        after = script_callbacks.AfterCFGCallbackParams(denoised, self.step, self.steps)
        script_callbacks.cfg_after_cfg_callback(after)
        self.step += 1
        return after.x


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args):
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * torch.ones(x.shape[0]), **extra_args)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


class StableDiffusionProcessingTxt2Img:
    cached_c = [None, None]
    cached_uc = [None, None]

    def __init__(self, sd_model, scripts, script_args, prompt, negative_prompt="", seed=1, steps=3, cfg_scale=7.0,
                 width=64, height=64, batch_size=1, n_iter=1, enable_hr=False, hr_steps=2, denoising_strength=0.5):
        self.sd_model, self.scripts, self.script_args = sd_model, scripts, script_args
        self.prompt, self.negative_prompt, self.seed, self.steps, self.cfg_scale = prompt, negative_prompt, seed, steps, cfg_scale
        self.width, self.height, self.batch_size, self.n_iter = width, height, batch_size, n_iter
        self.enable_hr, self.hr_steps, self.denoising_strength = enable_hr, hr_steps, denoising_strength
        self.sampler_name = "Euler"
        self.extra_network_data = {}

    def close(self):
        """The webui runs generations in `with closing(p)`."""
        self.closed = True

    def get_conds(self, cache, prompts):
        if cache[0] != prompts:
            cache[0], cache[1] = list(prompts), self.sd_model.cond_stage_model(prompts)
        return cache[1]

    def setup_conds(self):
        self.uc = self.get_conds(self.cached_uc, self.negative_prompts)
        self.c = self.get_conds(self.cached_c, self.prompts)

    def run_sampler(self, x, steps, sigmas=None):
        inner = CompVisDenoiser(self.sd_model)
        sigmas = inner.get_sigmas(steps) if sigmas is None else sigmas
        denoiser = CFGDenoiser(inner, len(sigmas) - 1)
        extra = {"cond": self.c, "uncond": self.uc, "cond_scale": self.cfg_scale}
        return sample_euler(denoiser, x * sigmas[0], sigmas, extra), inner

    def sample(self):
        x = self.rng.next()
        samples, inner = self.run_sampler(x, self.steps)
        if not self.enable_hr:
            return samples
        self.scripts.before_hr(self)
        up = torch.nn.functional.interpolate(samples, scale_factor=2, mode="nearest")
        self.rng = rng.ImageRNG(up.shape[1:], self.seeds)
        noise = self.rng.next()
        sigmas = inner.get_sigmas(self.hr_steps)[self.hr_steps - int(self.denoising_strength * self.hr_steps) - 1:]
        denoiser = CFGDenoiser(inner, len(sigmas) - 1)
        extra = {"cond": self.c, "uncond": self.uc, "cond_scale": self.cfg_scale}
        return sample_euler(denoiser, up + noise * sigmas[0], sigmas, extra)


@torch.no_grad()
def process_images(p):
    images = []
    for n in range(p.n_iter):
        p.prompts = [p.prompt] * p.batch_size
        p.negative_prompts = [p.negative_prompt] * p.batch_size
        p.seeds = [p.seed + n * p.batch_size + i for i in range(p.batch_size)]
        p.rng = rng.ImageRNG((4, p.height // 8, p.width // 8), p.seeds)
        p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.seeds)
        p.setup_conds()
        samples = p.sample()
        ps = PostSampleArgs(samples)
        p.scripts.post_sample(p, ps)
        samples = ps.samples
        decoded = [p.sd_model.decode_first_stage(samples[i:i + 1])[0] for i in range(samples.shape[0])]
        x = torch.clamp((torch.stack(decoded).float() + 1.0) / 2.0, min=0.0, max=1.0)
        p.scripts.postprocess_batch(p, x, batch_number=n)
        images.append(x)
    p.scripts.postprocess(p, images)
    return images
