"""Stand-in for the webui's txt2img path (modules/processing.py, sd_hijack_clip.py) in the order
the real one runs: ImageRNG per batch, process_batch, conds (negative first, 75-token chunks
through the wrapped CLIP, cached across generations), then `sample`: a sampler from
`sd_samplers.create_sampler`, the noise, the sampler's pass (modules/sd_samplers.py); with hires
fix, `sample_hr_pass`: a new sampler, the latent upscaled, a new ImageRNG and its noise, *then*
`before_hr`, the img2img pass, and the VAE decode of its result (`DecodedSamples`, so
post_sample gets decoded images then); without it, post_sample gets the latent and the batch is
decoded after it, one image at a time; postprocess_batch."""

import torch
from k_diffusion.external import CompVisDenoiser  # noqa: F401 - where the tests find it
from torch import nn

from . import rng, sd_samplers
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


class StableDiffusionProcessingTxt2Img:
    cached_c = [None, None]
    cached_uc = [None, None]

    def __init__(self, sd_model, scripts, script_args, prompt, negative_prompt="", seed=1, steps=3, cfg_scale=7.0,
                 width=64, height=64, batch_size=1, n_iter=1, enable_hr=False, hr_steps=2, denoising_strength=0.5,
                 sampler_name="Euler"):
        self.sd_model, self.scripts, self.script_args = sd_model, scripts, script_args
        self.prompt, self.negative_prompt, self.seed, self.steps, self.cfg_scale = prompt, negative_prompt, seed, steps, cfg_scale
        self.width, self.height, self.batch_size, self.n_iter = width, height, batch_size, n_iter
        self.enable_hr, self.hr_steps, self.denoising_strength = enable_hr, hr_steps, denoising_strength
        self.sampler_name, self.hr_sampler_name = sampler_name, None
        self.sampler = None
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

    def sample(self):
        self.sampler = sd_samplers.create_sampler(self.sampler_name, self.sd_model)
        x = self.rng.next()
        samples = self.sampler.sample(self, x, self.c, self.uc)
        if not self.enable_hr:
            return samples
        return self.sample_hr_pass(samples)

    def sample_hr_pass(self, samples):
        self.sampler = sd_samplers.create_sampler(self.hr_sampler_name or self.sampler_name, self.sd_model)
        samples = torch.nn.functional.interpolate(samples, scale_factor=2, mode="nearest")  # a latent upscaler
        self.rng = rng.ImageRNG(samples.shape[1:], self.seeds)
        noise = self.rng.next()
        self.scripts.before_hr(self)
        samples = self.sampler.sample_img2img(self, samples, noise, self.c, self.uc, steps=self.hr_steps or self.steps)
        self.sampler = None
        return decode_latent_batch(self.sd_model, samples)


class DecodedSamples(list):
    already_decoded = True


def decode_latent_batch(model, batch):
    """The webui decodes one image at a time."""
    return DecodedSamples(model.decode_first_stage(batch[i:i + 1])[0] for i in range(batch.shape[0]))


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
        decoded = samples if getattr(samples, "already_decoded", False) else decode_latent_batch(p.sd_model, samples)
        x = torch.clamp((torch.stack(decoded).float() + 1.0) / 2.0, min=0.0, max=1.0)
        p.scripts.postprocess_batch(p, x, batch_number=n)
        images.append(x)
    p.scripts.postprocess(p, images)
    return images
