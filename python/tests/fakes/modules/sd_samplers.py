"""Stand-in for modules/sd_samplers.py, sd_samplers_common.py and sd_samplers_kdiffusion.py:
`create_sampler(name, model)` builds a KDiffusionSampler and sets its `config` (the SamplerData,
whose `options["second_order"]` marks samplers that evaluate the model twice per step);
`sample` (txt2img) and `sample_img2img` (img2img, the hires pass) run one pass through
`launch_sampling`, which resets `state.sampling_step`, with `callback_state` as k-diffusion's
callback."""

from collections import namedtuple

from k_diffusion import sampling
from k_diffusion.external import CompVisDenoiser

from .sd_samplers_cfg_denoiser import CFGDenoiser
from .shared import state


class SamplerData(namedtuple("SamplerData", ["name", "constructor", "aliases", "options"])):
    def total_steps(self, steps):
        return steps * 2 if self.options.get("second_order", False) else steps


def setup_img2img_steps(p, steps=None):
    """(steps of the full schedule, t_enc): with steps given (the hires pass gives them), the
    pass runs exactly that many steps out of a schedule of steps / strength."""
    if steps is not None:
        requested = steps or p.steps
        steps = int(requested / min(p.denoising_strength, 0.999)) if p.denoising_strength > 0 else 0
        t_enc = requested - 1
    else:
        steps = p.steps
        t_enc = int(min(p.denoising_strength, 0.999) * steps)
    return steps, t_enc


class KDiffusionSampler:
    def __init__(self, funcname, sd_model):
        self.funcname = funcname
        self.func = getattr(sampling, funcname)
        self.model_wrap = CompVisDenoiser(sd_model)
        self.model_wrap_cfg = CFGDenoiser(self)
        self.model_wrap_cfg.inner_model = self.model_wrap
        self.config = None
        self.last_latent = None

    def callback_state(self, d):
        state.sampling_step = d["i"]

    def launch_sampling(self, steps, func):
        self.model_wrap_cfg.steps = steps
        self.model_wrap_cfg.total_steps = self.config.total_steps(steps)
        state.sampling_steps = steps
        state.sampling_step = 0
        return func()

    def initialize(self, p):
        self.model_wrap_cfg.step = 0
        self.extra_args = {"cond": p.c, "uncond": p.uc, "cond_scale": p.cfg_scale}

    def sample(self, p, x, conditioning, unconditional_conditioning, steps=None):
        steps = steps or p.steps
        sigmas = self.model_wrap.get_sigmas(steps)
        x = x * sigmas[0]
        self.initialize(p)
        self.extra_args.update(cond=conditioning, uncond=unconditional_conditioning)
        return self.launch_sampling(steps, lambda: self.func(self.model_wrap_cfg, x, sigmas, extra_args=self.extra_args, callback=self.callback_state))

    def sample_img2img(self, p, x, noise, conditioning, unconditional_conditioning, steps=None):
        steps, t_enc = setup_img2img_steps(p, steps)
        sigmas = self.model_wrap.get_sigmas(steps)
        sigma_sched = sigmas[steps - t_enc - 1:]
        xi = x + noise * sigma_sched[0]
        self.initialize(p)
        self.extra_args.update(cond=conditioning, uncond=unconditional_conditioning)
        self.model_wrap_cfg.init_latent = x
        self.last_latent = x
        return self.launch_sampling(t_enc + 1, lambda: self.func(self.model_wrap_cfg, xi, sigma_sched, extra_args=self.extra_args, callback=self.callback_state))


all_samplers = [
    SamplerData("Euler", lambda model: KDiffusionSampler("sample_euler", model), ["k_euler"], {}),
    SamplerData("Heun", lambda model: KDiffusionSampler("sample_heun", model), ["k_heun"], {"second_order": True}),
]


def find_sampler_config(name):
    return next((s for s in all_samplers if s.name == name or name in s.aliases), None)


def create_sampler(name, model):
    config = find_sampler_config(name)
    assert config is not None, f"bad sampler name: {name}"
    sampler = config.constructor(model)
    sampler.config = config
    return sampler
