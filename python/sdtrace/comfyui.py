"""ComfyUI custom nodes that record sdtrace traces (installed from ``hosts/comfyui``).

- **sdtrace Record** (``SdtraceRecord``) takes a ``MODEL`` and returns a clone whose sampling is
  recorded: one trace per sampling run, in ``folder`` (relative: under ComfyUI's output folder),
  named ``{prefix}_{seed}_{n}.sdt``. It adds three wrappers to the clone (ComfyUI's
  ``add_wrapper_with_key``, key ``sdtrace``), so nothing changes for other clones of the model:
  ``OUTER_SAMPLE`` opens the trace, records ``noise.initial`` (the unit noise ComfyUI draws with
  the CPU generator, so ``settings.rng = torch-cpu``), ``text.cond``/``text.uncond`` (the
  conditioning), hooks the UNet's modules for the run and wraps the step callback
  (``sampler.x`` before the step's update, ``sampler.denoised``); ``DIFFUSION_MODEL`` sees each
  UNet call with ComfyUI's own row labels (``transformer_options["cond_or_uncond"]``, 0 = cond,
  1 = uncond) and splits the output into ``sampler.eps.cond``/``sampler.eps.uncond``;
  ``SAMPLER_SAMPLE`` records the final ``sampler.x``.
- **sdtrace VAE Decode** (``SdtraceVAEDecode``) decodes exactly as ComfyUI's *VAE Decode* does,
  records ``vae.post_quant_conv``, ``vae.decoder`` and ``image`` into the trace of the sampling
  run that produced these latents, and closes it. A trace whose latents are never decoded by it
  is closed without an image when the next run starts.

Row order: ComfyUI batches cond and uncond as ``[uncond; cond]`` when memory allows, otherwise
it makes separate calls (uncond first). UNet module outputs are recorded as the host ran them
(each call one eval, in order); the labels of every call go into ``sdtrace.ldm_host`` so the
``sampler.eps.*`` keys are right whatever the batching. TODO(rows): once the probe-level
"rows are [cond; uncond]" facility exists in the Recorder, declare each call's labels with it
so UNet points align row by row with other hosts.

Nothing here raises inside a generation (see :mod:`sdtrace.ldm_host`); the sampled latents and
the decoded image are the host's own, bit-identical with and without the nodes.
"""

import atexit
import itertools
import logging
import os
import sys

from . import _native, ldm_host

log = logging.getLogger("sdtrace")

OUTER_SAMPLE, SAMPLER_SAMPLE, DIFFUSION_MODEL = "outer_sample", "sampler_sample", "diffusion_model"
KEY = "sdtrace"

# Sampling runs whose latents await the sdtrace VAE Decode node: [(session, final latent)].
_PENDING = []
_COUNTER = itertools.count()


def _output_dir():
    try:
        import folder_paths  # ComfyUI's

        return folder_paths.get_output_directory()
    except Exception:  # noqa: BLE001 - outside ComfyUI (tests): the working directory
        return os.getcwd()


def _close_pending(reason):
    while _PENDING:
        session, _ = _PENDING.pop()
        session.close("complete", reason)


# A trace still waiting for its image when ComfyUI exits is closed (complete, no image).
atexit.register(lambda: _close_pending("ComfyUI exited before these latents were decoded by sdtrace VAE Decode"))


def _sampler_name(sampler):
    fn = getattr(sampler, "sampler_function", None)
    name = getattr(fn, "__name__", None) or type(sampler).__name__
    return name[len("sample_"):] if name.startswith("sample_") else name


def _attention_name():
    try:
        from comfy.ldm.modules import attention

        return getattr(attention.optimized_attention, "__name__", None)
    except Exception:  # noqa: BLE001
        return None


class _Run:
    """The wrappers' state for one sampling run of one recorded model."""

    def __init__(self, settings):
        self.settings = settings
        self.session = None
        self.step = 0
        self.evals = 0
        self.eps = {}
        self.sigmas = None
        self.final = None

    # -- OUTER_SAMPLE ----------------------------------------------------------------------------
    def outer_sample(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False, seed=None, *args, **kwargs):
        _close_pending("the next sampling run started before these latents were decoded by sdtrace VAE Decode")
        self.session, self.step, self.evals, self.eps = None, 0, 0, {}
        guider = getattr(executor, "class_obj", None)
        try:
            self._open(guider, noise, sampler, sigmas, seed)
        except Exception as e:  # noqa: BLE001 - a bad setting must not stop the generation
            log.warning("sdtrace Record: not recording this run: %s: %s", type(e).__name__, e)
            if self.session is not None:
                self.session.close("failed", f"opening the trace: {type(e).__name__}: {e}")
            self.session = None
        session = self.session
        if session is None:
            return executor(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar, seed, *args, **kwargs)
        ok = False
        try:
            out = executor(noise, latent_image, sampler, sigmas, denoise_mask, self._callback(callback), disable_pbar, seed, *args, **kwargs)
            ok = True
            # What the sampler node outputs (after the latent format's process_out), to find
            # this trace again when the latents are decoded.
            self.final = session.guard("keeping the final latent", lambda: out.detach().clone())
            return out
        finally:
            session.remove_hooks()
            if not ok:
                exc = sys.exc_info()[1]
                status = "interrupted" if isinstance(exc, KeyboardInterrupt) or type(exc).__name__ == "InterruptProcessingException" else "failed"
                session.close(status, f"{type(exc).__name__}: {exc}", steps_completed=self.step)
            elif session.active:
                session.writer.steps_completed = self.step
                _PENDING.append((session, self.final))
            self.session = None

    def _open(self, guider, noise, sampler, sigmas, seed):
        patcher = getattr(guider, "model_patcher", None)
        base = getattr(patcher, "model", None)
        unet = getattr(base, "diffusion_model", None)
        ldm_map, why = ldm_host.map_for({"unet": ("model.diffusion_model", unet)}) if unet is not None else (None, "no diffusion_model")
        steps = max(len(sigmas) - 1, 0)
        b, _, h, w = noise.shape if noise.dim() == 4 else (noise.shape[0], 0, 0, 0)
        n = next(_COUNTER)
        folder = self.settings["folder"]
        folder = folder if os.path.isabs(folder) else os.path.join(_output_dir(), folder)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{self.settings['prefix']}_{seed}_{n:05d}.sdt")
        host = {
            "name": "comfyui",
            "comfyui_version": _comfy_version(),
            "model_class": type(base).__name__ if base is not None else None,
            "attention": _attention_name(),
            "cond_uncond": "comfyui: [uncond; cond] in one call when free memory allows, else separate calls, uncond first; each call's rows labelled by transformer_options['cond_or_uncond']",
        }
        if ldm_map is None:
            host["skipped"] = f"UNet module points: {why}"
            log.warning("sdtrace Record: %s; recording the pipeline points only", why)
        header = {
            "settings": {
                "seed": seed,
                "steps": steps,
                "sampler": _sampler_name(sampler),
                "cfg_scale": getattr(guider, "cfg", None),
                "width": w * 8,
                "height": h * 8,
                "batch_size": b,
                "rng": "torch-cpu",
                "dtype": _dtype_name(unet, noise),
                "capture": self.settings["capture"],
                "host": host,
                "numerics": {"cond_uncond": host["cond_uncond"]},
                "cfg_rows": "uncond,cond",
                "cfg_rows_stored": "uncond,cond",
            },
            "device": _device(noise),
        }
        session = ldm_host.Session(path, header, self.settings["capture"], host="ComfyUI")
        self.session = session
        self.sigmas = [float(s) for s in sigmas]
        if ldm_map is not None:
            session.hook(ldm_map, {"unet": ("model.diffusion_model", unet)})
        session.set_step(None)
        session.tensor("noise.initial", noise)
        conds = getattr(guider, "conds", None) or getattr(guider, "original_conds", None) or {}
        for name, key in (("negative", "text.uncond"), ("positive", "text.cond")):
            c = (conds.get(name) or [None])[0]
            t = c.get("cross_attn") if isinstance(c, dict) else None
            if t is not None:
                session.tensor(key, t)
        self.final = None

    def _callback(self, user_callback):
        def callback(step, x0, x, total_steps, *args, **kwargs):
            s = self.session
            if s is not None and s.active:
                s.guard("recording a step", self._on_step, step, x0, x)
            if user_callback is not None:
                return user_callback(step, x0, x, total_steps, *args, **kwargs)
            return None

        return callback

    def _on_step(self, step, x0, x):
        s = self.session
        s.set_step(step, 0)
        s.tensor("sampler.x", x)
        for label in ("uncond", "cond"):
            if label in self.eps:
                s.tensor(f"sampler.eps.{label}", self.eps[label])
        s.tensor("sampler.denoised", x0)
        self.eps = {}
        self.step, self.evals = step + 1, 0

    # -- SAMPLER_SAMPLE --------------------------------------------------------------------------
    def sampler_sample(self, executor, *args, **kwargs):
        out = executor(*args, **kwargs)
        s = self.session
        if s is not None and s.active:
            def last():
                s.set_step(self.step, 0)
                s.tensor("sampler.x", out)

            s.guard("recording the final latent", last)
        return out

    # -- DIFFUSION_MODEL -------------------------------------------------------------------------
    def diffusion_model(self, executor, x, timesteps, context, *args, **kwargs):
        s = self.session
        if s is None or not s.active:
            return executor(x, timesteps, context, *args, **kwargs)
        # forward(x, timesteps, context, y, control, transformer_options, **kwargs)
        options = kwargs.get("transformer_options")
        if options is None:
            options = args[2] if len(args) >= 3 and isinstance(args[2], dict) else {}
        labels = list(options.get("cond_or_uncond") or [])
        s.set_step(self.step, self.evals)
        self.evals += 1
        # 0 = cond, 1 = uncond: a [cond; uncond] call of equal halves is stored [uncond; cond].
        halves = len(labels) == 2 and x.shape[0] % 2 == 0
        s.cond_first(halves and labels == [0, 1])
        try:
            out = executor(x, timesteps, context, *args, **kwargs)
        finally:
            s.cond_first(False)

        def rows():
            for label, t in ldm_host.split_rows(out, labels).items():
                self.eps[label] = t

        s.guard("splitting the UNet output by cond_or_uncond", rows)
        return out


def _dtype_name(unet, noise):
    """The UNet's weight dtype (what it computes in), else the noise's, in sdtrace's words."""
    dtype = noise.dtype
    try:
        dtype = next(unet.parameters()).dtype
    except Exception:  # noqa: BLE001
        pass
    return {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16"}.get(str(dtype), str(dtype))


def _comfy_version():
    try:
        import comfyui_version  # ComfyUI >= 0.3.x

        return comfyui_version.__version__
    except Exception:  # noqa: BLE001
        return None


def _device(t):
    import platform

    facts = {"device": str(t.device), "os": f"{platform.system().lower()} {platform.machine()}", "arch": platform.machine()}
    try:
        import comfy.model_management as mm

        dev = mm.get_torch_device()
        facts["device"] = str(dev)
        import torch

        if dev.type == "cuda":
            p = torch.cuda.get_device_properties(dev)
            facts["gpu"] = {"name": p.name, "compute_capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count}
    except Exception:  # noqa: BLE001
        pass
    return facts


class SdtraceRecord:
    """Node: record sampling through this MODEL."""

    CATEGORY = "sdtrace"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    DESCRIPTION = "Records every sampling run through the returned model as an sdtrace trace (noise, steps, UNet outputs, cond/uncond by ComfyUI's own labels). Decode with 'sdtrace VAE Decode' to add the image and close the trace."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL",),
                "folder": ("STRING", {"default": "sdtrace"}),
                "prefix": ("STRING", {"default": "comfyui"}),
                "capture": ("STRING", {"default": "light"}),
            }
        }

    def patch(self, model, folder="sdtrace", prefix="comfyui", capture="light"):
        try:
            # A bad capture string is the user's setting: say so now, not mid-generation.
            check_capture(capture)
        except _native.SdtraceError as e:
            raise ValueError(f"sdtrace Record: capture '{capture}': {e}") from None
        clone = model.clone()
        if not hasattr(clone, "add_wrapper_with_key"):
            log.warning("sdtrace Record: this ComfyUI has no ModelPatcher.add_wrapper_with_key (update ComfyUI); the model is passed through unrecorded")
            return (clone,)
        run = _Run({"folder": folder, "prefix": prefix or "comfyui", "capture": capture})
        clone.add_wrapper_with_key(OUTER_SAMPLE, KEY, run.outer_sample)
        clone.add_wrapper_with_key(SAMPLER_SAMPLE, KEY, run.sampler_sample)
        clone.add_wrapper_with_key(DIFFUSION_MODEL, KEY, run.diffusion_model)
        return (clone,)


def check_capture(capture):
    """Raise SdtraceError if ``capture`` is not a valid capture setting."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        rec = _native.Recorder(os.path.join(d, "check.sdt"), "{}", capture)
        rec.finish("complete", None, None, None, 0)


class SdtraceVAEDecode:
    """Node: VAE Decode that adds the image to the sampling run's trace and closes it."""

    CATEGORY = "sdtrace"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    DESCRIPTION = "Decodes like VAE Decode; records vae.post_quant_conv, vae.decoder and the image into the trace of the sampling run these latents came from, and closes it."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"samples": ("LATENT",), "vae": ("VAE",)}}

    def decode(self, vae, samples):
        latent = samples["samples"]
        session = _claim(latent)
        if session is None:
            log.warning("sdtrace VAE Decode: these latents come from no recorded sampling run (put 'sdtrace Record' on the model); decoding without recording")
        else:
            first = getattr(vae, "first_stage_model", None)
            ldm_map, why = ldm_host.map_for({"vae": ("first_stage_model", first)}) if first is not None else (None, "no first_stage_model")
            if ldm_map is None:
                ldm_map = session.guard("mapping the VAE", ldm_host.LdmMap, "sd")
            if ldm_map is not None:
                session.guard("hooking the VAE", session.hook, ldm_map, {"vae": ("first_stage_model", first)})
            session.set_step(None)
        ok = False
        try:
            images = vae.decode(latent)
            if len(images.shape) == 5:  # video VAEs, as ComfyUI's VAE Decode does
                images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
            ok = True
        finally:
            if session is not None:
                session.remove_hooks()
                if ok:
                    session.tensor("image", images.movedim(-1, 1).float())
                    session.close("complete")
                else:
                    session.close("failed", f"{type(sys.exc_info()[1]).__name__} while decoding")
        return (images,)


def _claim(latent):
    """The pending session whose final latent is ``latent`` (by value), removed from the list."""
    import torch

    for i in range(len(_PENDING) - 1, -1, -1):
        session, final = _PENDING[i]
        try:
            same = final is not None and final.shape == latent.shape and torch.equal(final.to(latent.device, latent.dtype), latent)
        except Exception:  # noqa: BLE001
            same = False
        if same:
            del _PENDING[i]
            return session
    return None


NODE_CLASS_MAPPINGS = {"SdtraceRecord": SdtraceRecord, "SdtraceVAEDecode": SdtraceVAEDecode}
NODE_DISPLAY_NAME_MAPPINGS = {"SdtraceRecord": "sdtrace Record", "SdtraceVAEDecode": "sdtrace VAE Decode"}
