"""Recording a diffusers ``StableDiffusionPipeline`` or ``StableDiffusionXLPipeline`` run:
``with sdtrace.record(pipe, path): pipe(...)``.

What is recorded, under the keys ``sdtrace record`` uses (so the two traces align):

- ``text_encoder.encoder.layers.N`` and ``text_encoder.final_layer_norm`` per encoder call (the
  negative prompt is eval 0 and the prompt eval 1, as sdtrace numbers them, although diffusers
  encodes the prompt first), then ``text.uncond`` and ``text.cond`` (the embeddings
  ``encode_prompt`` returns); SDXL adds ``text_encoder_2.*`` (with ``text_projection``) and
  ``text.pooled.uncond`` / ``text.pooled.cond``, and the header's ``settings.sdxl`` holds the size
  and crop conditioning;
- ``noise.initial``: the unit noise ``randn_tensor`` draws, before the scheduler scales it;
- per step i: ``sampler.x`` (the latents the step starts from, in the scheduler's own space: see
  ``settings.extra.host.latent_space``), every UNet probe point, ``sampler.eps.uncond`` and
  ``sampler.eps.cond`` (the UNet output split in diffusers' ``[uncond; cond]`` order),
  ``sampler.denoised`` (the scheduler's x̂₀, where it gives one); the final ``sampler.x`` at step n;
- ``vae.post_quant_conv``, ``vae.decoder`` and ``image`` = clamp((decoder + 1) / 2, 0, 1) in f32.

Observation changes nothing: hooks read module outputs and copy them to the host; they never
return a value, so the image is bit-identical with capture off, light or full. Hooks go only on
modules the capture policy records at some step, and every hook and wrapper is removed when the
call ends, whether it returns, raises or is interrupted; the trace is then closed with a run-end
that says ``complete``, ``failed`` or ``interrupted``. One ``record`` block records one call.
"""

import inspect
import os
import re
import sys

import torch

from . import _native
from .writer import Writer

# diffusers module paths (relative to the UNet) that are sdtrace probe points.
_UNET_POINT = re.compile(
    r"^(conv_in|time_embedding|add_embedding|conv_norm_out|conv_out|mid_block"
    r"|(down|up)_blocks\.\d+"
    r"|((down|up)_blocks\.\d+|mid_block)\.(resnets|attentions)\.\d+"
    r"|(down|up)_blocks\.\d+\.(downsamplers|upsamplers)\.0"
    r"|((down|up)_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\.(attn1|attn2|ff)"
    r"|((down|up)_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v))$"
)
_TEXT_POINT = re.compile(r"^(text_model\.)?(encoder\.layers\.\d+|final_layer_norm|text_projection)$")

_SUPPORTED = "StableDiffusionPipeline (SD 1.x and 2.x) and StableDiffusionXLPipeline (SDXL base and fine-tunes)"


def _tensor_of(out):
    """The tensor a module returned (the first element of a tuple or a diffusers output)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if hasattr(out, "to_tuple"):
        first = out.to_tuple()
        return first[0] if first and isinstance(first[0], torch.Tensor) else None
    return None


def _check(pipe):
    missing = [c for c in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(pipe, c, None) is None]
    kind = type(pipe).__name__
    xl = getattr(pipe, "text_encoder_2", None) is not None or "XL" in kind
    config = getattr(pipe, "config", None)
    if xl and (bool(getattr(config, "requires_aesthetics_score", False)) or getattr(pipe, "text_encoder", None) is None):
        raise _native.SdtraceError(
            f"{kind}: an SDXL refiner (aesthetic-score conditioning, text_encoder_2 only); sdtrace.record supports {_SUPPORTED}"
        )
    if xl and getattr(pipe, "tokenizer_2", None) is None:
        raise _native.SdtraceError(f"{kind}: an SDXL pipeline without tokenizer_2; sdtrace.record supports {_SUPPORTED}")
    if getattr(pipe, "transformer", None) is not None or missing:
        raise _native.SdtraceError(
            f"{kind}: not an SD 1.x/2.x pipeline (no {', '.join(missing) or 'UNet'}; SD3 and Flux use a transformer); "
            f"sdtrace.record supports {_SUPPORTED}"
        )
    if not callable(getattr(pipe, "encode_prompt", None)):
        raise _native.SdtraceError(f"{kind}: no encode_prompt (diffusers too old?); sdtrace.record supports {_SUPPORTED}")


def _rng_spec(generator, device):
    """``settings.rng`` for the generator that draws the noise."""
    if isinstance(generator, (list, tuple)):
        generator = generator[0] if generator else None
    where = generator.device if generator is not None else torch.device(device)
    if where.type == "cpu":
        return "torch-cpu"
    if where.type == "cuda":
        p = torch.cuda.get_device_properties(where)
        threads = getattr(p, "max_threads_per_multi_processor", None)
        return f"torch-cuda:{p.multi_processor_count},{threads or 2048}"
    return "device"


def _device_facts(device):
    import platform

    facts = {"device": str(device), "os": f"{platform.system().lower()} {platform.machine()}", "arch": platform.machine()}
    dev = torch.device(device)
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        free, total = torch.cuda.mem_get_info(dev)
        facts["gpu"] = {
            "name": p.name,
            "compute_capability": f"{p.major}.{p.minor}",
            "sm_count": p.multi_processor_count,
            "max_threads_per_sm": getattr(p, "max_threads_per_multi_processor", None),
            "vram_total_bytes": total,
            "vram_free_bytes": free,
            "cuda_version": torch.version.cuda,
        }
    facts["compute_threads"] = torch.get_num_threads()
    return facts


def _versions():
    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("diffusers", "transformers"):
        mod = sys.modules.get(name)
        out[name] = getattr(mod, "__version__", None)
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def _numerics_flags():
    return {
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
        "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cuda.matmul.allow_fp16_reduced_precision_reduction": torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
    }


def _offload(pipe):
    """accelerate's offloading in effect: ``model`` (``enable_model_cpu_offload``: a hook on each
    model), ``sequential`` (``enable_sequential_cpu_offload``: hooks on the submodules) or None.
    Either way module forward hooks still see every output on the execution device, so an
    offloaded pipeline records like any other; the header says which was used."""
    models = [
        m for m in (pipe.unet, pipe.vae, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)) if isinstance(m, torch.nn.Module)
    ]
    if any(hasattr(m, "_hf_hook") and type(m._hf_hook).__name__ != "AlignDevicesHook" for m in models):
        return "model"
    if any(hasattr(sub, "_hf_hook") for m in models for sub in m.modules()):
        return "sequential"
    return None


def _sampler_name(sched):
    """sdtrace's name of a diffusers scheduler where sdtrace has one (``sdtrace record
    --sampler-impl diffusers`` runs the same class), else ``diffusers:ClassName``."""
    cfg = sched.config
    name = type(sched).__name__
    if name == "EulerDiscreteScheduler":
        return "euler"
    if name == "EulerAncestralDiscreteScheduler":
        return "euler-a"
    if name == "DDIMScheduler":
        return "ddim"
    if name == "DPMSolverMultistepScheduler" and cfg.get("algorithm_type") == "dpmsolver++" and cfg.get("solver_order") == 2:
        return "dpmpp-2m-karras" if cfg.get("use_karras_sigmas") else "dpmpp-2m"
    return f"diffusers:{name}"


def _schedule(sched, steps):
    """``sigmas``, ``timesteps`` and ``init_sigma`` of ``steps`` steps, from a copy of the
    scheduler (the user's is not touched); DDIM's σ are those of its timesteps' ᾱ."""
    import copy

    try:
        s = copy.deepcopy(sched)
        s.set_timesteps(steps)
        timesteps = [float(t) for t in s.timesteps]
        if getattr(s, "sigmas", None) is not None and len(s.sigmas) == len(timesteps) + 1:
            sigmas = s.sigmas.float()
        else:
            ac = s.alphas_cumprod.float()
            final = getattr(s, "final_alpha_cumprod", ac[0])
            a = torch.cat([ac[s.timesteps.long()], torch.as_tensor(final, dtype=torch.float32).reshape(1)])
            sigmas = ((1 - a) / a) ** 0.5
        return {"sigmas": [float(x) for x in sigmas], "timesteps": timesteps, "init_sigma": float(s.init_noise_sigma)}
    except Exception:  # a scheduler sdtrace does not know: the header just has less
        return {}


class _Run:
    """One recorded pipeline call: the writer, the step/eval bookkeeping and every hook and
    wrapper it installed (removed by :meth:`close`)."""

    def __init__(self, pipe, module, writer, cfg, steps):
        self.pipe = pipe
        self.module = module
        self.w = writer
        self.cfg = cfg
        self.steps = steps
        self.step = 0
        self.text_calls = {}
        self.handles = []
        self.restore = []
        # DPM-Solver++ converts the model output to x̂₀; the older "dpmsolver" to ε.
        self.scheduler_predicts_x0 = "++" in str(pipe.scheduler.config.get("algorithm_type", "dpmsolver++"))

    # -- installing ------------------------------------------------------------------------------
    def wrap(self, owner, name, make):
        """Replace ``owner.name`` by ``make(original)`` until :meth:`close`."""
        original = getattr(owner, name)
        had_own = name in vars(owner) if hasattr(owner, "__dict__") else False
        setattr(owner, name, make(original))
        self.restore.append((owner, name, original, had_own))

    def hook(self, module, fn, pre=False):
        h = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
        self.handles.append(h)

    def wants(self, key):
        return self.w._rec.records_any(key, [None, *range(self.steps + 1)])

    def install(self):
        pipe, w = self.pipe, self.w
        # Text encoders: number their calls (the prompt first in diffusers, eval 1 in sdtrace).
        for prefix in ("text_encoder", "text_encoder_2"):
            encoder = getattr(pipe, prefix, None)
            if not isinstance(encoder, torch.nn.Module):
                continue
            self.hook(encoder, self._text_call_counter(prefix), pre=True)
            for name, module in encoder.named_modules():
                m = _TEXT_POINT.match(name)
                if m and self.wants(f"{prefix}.{m.group(2)}"):
                    self.hook(module, self._recorder(f"{prefix}.{m.group(2)}"))
        self.wrap(pipe, "encode_prompt", self._wrap_encode_prompt)
        # Noise: the pipeline module's randn_tensor.
        if hasattr(self.module, "randn_tensor"):
            self.wrap(self.module, "randn_tensor", self._wrap_randn)
        # Sampler state.
        self.wrap(pipe.scheduler, "scale_model_input", self._wrap_scale_input)
        self.wrap(pipe.scheduler, "step", self._wrap_step)
        if callable(getattr(pipe.scheduler, "convert_model_output", None)):
            # DPM-Solver's x̂₀ (its step returns only the next sample).
            self.wrap(pipe.scheduler, "convert_model_output", self._wrap_convert)
        # UNet points and its output (ε).
        for name, module in pipe.unet.named_modules():
            if _UNET_POINT.match(name) and self.wants(f"unet.{name}"):
                self.hook(module, self._recorder(f"unet.{name}"))
        self.hook(pipe.unet, self._on_unet_out)
        # VAE.
        first = getattr(pipe.vae, "post_quant_conv", None) or pipe.vae.decoder
        self.hook(first, lambda m, a: self.w.step(None), pre=True)
        if getattr(pipe.vae, "post_quant_conv", None) is not None and self.wants("vae.post_quant_conv"):
            self.hook(pipe.vae.post_quant_conv, self._recorder("vae.post_quant_conv"))
        self.hook(pipe.vae.decoder, self._on_decoder)

    def close(self):
        for h in reversed(self.handles):
            h.remove()
        for owner, name, original, had_own in reversed(self.restore):
            if had_own:
                setattr(owner, name, original)
            else:
                try:
                    delattr(owner, name)
                except AttributeError:
                    setattr(owner, name, original)
        self.handles.clear()
        self.restore.clear()

    # -- events ----------------------------------------------------------------------------------
    def _recorder(self, key):
        def on_out(module, args, out):
            t = _tensor_of(out)
            if t is not None:
                self.w.tensor(key, t)

        return on_out

    def _text_call_counter(self, prefix):
        def on_call(module, args):
            # diffusers encodes the prompt, then the negative prompt (SDXL: each with both
            # encoders); sdtrace numbers the negative prompt's call 0.
            call = self.text_calls.get(prefix, 0)
            self.text_calls[prefix] = call + 1
            self.w.step(None, (1 - call) if self.cfg and call < 2 else call)

        return on_call

    def _wrap_encode_prompt(self, original):
        def encode_prompt(*args, **kwargs):
            self.text_calls = {}
            out = original(*args, **kwargs)
            self.w.step(None)
            cond, uncond = out[0], out[1] if len(out) > 1 else None
            if len(out) == 4:
                # SDXL: the pooled embeddings come in the order sdtrace record writes them.
                if out[3] is not None and self.cfg:
                    self.w.tensor("text.pooled.uncond", out[3])
                self.w.tensor("text.pooled.cond", out[2])
            if uncond is not None and self.cfg:
                self.w.tensor("text.uncond", uncond)
            self.w.tensor("text.cond", cond)
            return out

        return encode_prompt

    def _wrap_randn(self, original):
        def randn_tensor(*args, **kwargs):
            t = original(*args, **kwargs)
            self.w.step(None)
            self.w.tensor("noise.initial", t)
            return t

        return randn_tensor

    def _wrap_scale_input(self, original):
        def scale_model_input(sample, *args, **kwargs):
            if self.step == 0:
                # The schedule is set by now (custom timesteps or sigmas included).
                self.steps = len(self.pipe.scheduler.timesteps) or self.steps
            self.w.step(self.step)
            x = sample[: sample.shape[0] // 2] if self.cfg else sample
            self.w.tensor("sampler.x", x)
            return original(sample, *args, **kwargs)

        return scale_model_input

    def _on_unet_out(self, module, args, out):
        eps = _tensor_of(out)
        if eps is None:
            return
        if self.cfg and eps.shape[0] % 2 == 0:
            uncond, cond = eps.chunk(2)
            self.w.tensor("sampler.eps.uncond", uncond)
            self.w.tensor("sampler.eps.cond", cond)
        else:
            self.w.tensor("sampler.eps.cond", eps)

    def _wrap_convert(self, original):
        def convert_model_output(*args, **kwargs):
            out = original(*args, **kwargs)
            if isinstance(out, torch.Tensor) and self.scheduler_predicts_x0:
                self.w.tensor("sampler.denoised", out)
            return out

        return convert_model_output

    def _wrap_step(self, original):
        def step(*args, **kwargs):
            out = original(*args, **kwargs)
            denoised = None
            if isinstance(out, tuple) and len(out) > 1:
                denoised = out[1]
            elif hasattr(out, "pred_original_sample"):
                denoised = out.pred_original_sample
            if isinstance(denoised, torch.Tensor):
                self.w.tensor("sampler.denoised", denoised)
            self.step += 1
            self.w.steps_completed = self.step
            if self.step == self.steps:
                prev = out[0] if isinstance(out, tuple) else getattr(out, "prev_sample", None)
                if isinstance(prev, torch.Tensor):
                    self.w.step(self.step)
                    self.w.tensor("sampler.x", prev)
            return out

        return step

    def _on_decoder(self, module, args, out):
        t = _tensor_of(out)
        if t is None:
            return
        self.w.step(None)
        self.w.tensor("vae.decoder", t)
        if self.w.wants("image"):
            self.w.tensor("image", ((t.detach().float() + 1) / 2).clamp(0, 1))


class record:
    """``with sdtrace.record(pipe, "run.sdt", capture="light"): pipe(...)`` records the one call
    of ``pipe`` made inside the block into ``run.sdt``.

    ``header`` adds fields to the run header (``{"settings": {"model": "..."}}``). Refused with
    :class:`sdtrace.SdtraceError`: pipelines other than SD 1.x/2.x and SDXL (refiners too), an output file that cannot be
    created (checked at the call), a second call in the same block.
    """

    def __init__(self, pipe, path, capture="light", header=None):
        _check(pipe)
        folder = os.path.dirname(os.path.abspath(os.fspath(path)))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise _native.SdtraceError(f"{path}: cannot write there (no such folder, or not writable); give a path in a writable folder")
        self.pipe = pipe
        self.path = path
        self.capture = capture
        self.extra = header or {}
        self.calls = 0
        self.status = None
        self._cls = None

    def __enter__(self):
        cls = type(self.pipe)
        recorder = self
        original_call = cls.__call__
        signature = inspect.signature(original_call)

        def __call__(pipe, *args, **kwargs):
            return recorder._call(original_call, signature, pipe, args, kwargs)

        # Calls reach the instance through its type: a subclass made for this block only.
        self._cls = cls
        self.pipe.__class__ = type(f"_sdtrace_{cls.__name__}", (cls,), {"__call__": __call__})
        return self

    def __exit__(self, kind, value, tb):
        if self._cls is not None:
            self.pipe.__class__ = self._cls
            self._cls = None
        if kind is None and self.calls == 0:
            raise _native.SdtraceError(f"{self.path}: the pipeline was not called inside the record block; no trace written")
        return False

    def _header(self, pipe, bound):
        a = bound.arguments
        unet_cfg = pipe.unet.config
        scale = getattr(pipe, "vae_scale_factor", 8)
        height = a.get("height") or unet_cfg.sample_size * scale
        width = a.get("width") or unet_cfg.sample_size * scale
        generator = a.get("generator")
        device = pipe._execution_device
        seed = None
        g = generator[0] if isinstance(generator, (list, tuple)) and generator else generator
        if isinstance(g, torch.Generator):
            seed = g.initial_seed()
        sched = pipe.scheduler
        latent_space = (
            "k-diffusion (x = noise·σ, scaled by scale_model_input)"
            if float(getattr(sched, "init_noise_sigma", 1.0)) != 1.0
            else "variance-preserving (init_noise_sigma 1): x_k / sqrt(1 + σ²)"
        )
        steps = int(a.get("num_inference_steps") or 50)
        prompt = a.get("prompt")
        negative = a.get("negative_prompt")
        settings = {
            "model": getattr(pipe.config, "_name_or_path", None) or type(pipe).__name__,
            "prompt": prompt if isinstance(prompt, str) else None,
            "negative_prompt": negative if isinstance(negative, str) else ("" if negative is None else None),
            "sampler": _sampler_name(sched),
            "sampler_impl": "diffusers",
            "steps": steps,
            "cfg_scale": float(a.get("guidance_scale", 7.5)),
            "seed": seed,
            "width": int(width),
            "height": int(height),
            "batch_size": int(a.get("num_images_per_prompt") or 1) * (len(prompt) if isinstance(prompt, list) else 1),
            "dtype": {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16"}.get(pipe.unet.dtype, str(pipe.unet.dtype)),
            "rng": _rng_spec(generator, device),
            "attention": ",".join(sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})),
            "capture": self.capture,
            "clip_skip": a.get("clip_skip"),
            "prompt_syntax": "plain",
            "numerics": {"cond_uncond": "diffusers ([uncond; cond])"},
            "cfg_rows": "uncond,cond",
            "cfg_rows_stored": "uncond,cond",
            "scheduler": {"class": type(sched).__name__, "config": dict(sched.config)},
            "host": {
                "name": "diffusers",
                "pipeline": type(pipe).__name__,
                "versions": _versions(),
                "flags": _numerics_flags(),
                "attention_processors": {k: type(p).__name__ for k, p in pipe.unet.attn_processors.items()},
                "latent_space": latent_space,
                "offload": _offload(pipe),
                "vae_tiling": bool(getattr(pipe.vae, "use_tiling", False)),
            },
        }
        if a.get("timesteps") is None and a.get("sigmas") is None:
            settings.update(_schedule(sched, steps))
        if getattr(pipe, "text_encoder_2", None) is not None:
            original = [int(v) for v in (a.get("original_size") or (height, width))]
            crop = [int(v) for v in (a.get("crops_coords_top_left") or (0, 0))]
            target = [int(v) for v in (a.get("target_size") or (height, width))]
            settings["sdxl"] = {
                "original_size": original,
                "crop_coords_top_left": crop,
                "target_size": target,
                "time_ids": original + crop + target,
                "zero_negative": negative is None and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False)),
            }
        header = {"settings": settings, "device": _device_facts(device), "candle_version": None}
        for k, v in self.extra.items():
            if isinstance(v, dict) and isinstance(header.get(k), dict):
                header[k] = {**header[k], **v}
            else:
                header[k] = v
        return header

    def _call(self, original_call, signature, pipe, args, kwargs):
        if self.calls:
            raise _native.SdtraceError(
                f"{self.path}: one record block records one pipeline call; use another sdtrace.record(...) for the next"
            )
        self.calls += 1
        bound = signature.bind(pipe, *args, **kwargs)
        bound.apply_defaults()
        header = self._header(pipe, bound)
        steps = header["settings"]["steps"]
        cfg = header["settings"]["cfg_scale"] > 1.0
        writer = Writer(self.path, header, self.capture)
        run = _Run(pipe, sys.modules[self._cls.__module__], writer, cfg, steps)
        try:
            run.install()
            out = original_call(pipe, *args, **kwargs)
        except KeyboardInterrupt as e:
            self._close(run, "interrupted", f"KeyboardInterrupt: {e}")
            raise
        except BaseException as e:
            self._close(run, "failed", f"{type(e).__name__}: {e}")
            raise
        self._close(run, "complete", None)
        return out

    def _close(self, run, status, reason):
        run.close()
        self.status = status
        if not run.w.finished:
            try:
                run.w.finish(status, reason)
            except _native.SdtraceError:
                if status == "complete":
                    raise
