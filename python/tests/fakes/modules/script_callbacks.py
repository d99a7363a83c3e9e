"""Stand-in for modules/script_callbacks.py: the CFG denoiser callbacks."""

import logging


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x, self.image_cond, self.sigma = x, image_cond, sigma
        self.sampling_step, self.total_sampling_steps = sampling_step, total_sampling_steps
        self.text_cond, self.text_uncond, self.denoiser = text_cond, text_uncond, denoiser


class AfterCFGCallbackParams:
    def __init__(self, x, sampling_step, total_sampling_steps):
        self.x, self.sampling_step, self.total_sampling_steps = x, sampling_step, total_sampling_steps


callbacks = {"cfg_denoiser": [], "cfg_after_cfg": []}


def on_cfg_denoiser(fn, *, name=None):
    callbacks["cfg_denoiser"].append(fn)


def on_cfg_after_cfg(fn, *, name=None):
    callbacks["cfg_after_cfg"].append(fn)


def _run(kind, params):
    for fn in callbacks[kind]:
        try:
            fn(params)
        except Exception:  # the webui reports callback errors and goes on
            logging.getLogger("webui").exception("error in %s callback", kind)


def cfg_denoiser_callback(params):
    _run("cfg_denoiser", params)


def cfg_after_cfg_callback(params):
    _run("cfg_after_cfg", params)
