"""The AUTOMATIC1111 webui extension (``scripts/sdtrace_webui.py`` at the repository root loads
it): an always-visible section with an enable checkbox, the capture setting and an output folder;
one trace per image batch, named ``{seed}_{batch}.sdt``.

What is recorded, under the keys ``sdtrace record`` uses:

- ``text_encoder.encoder.layers.N`` / ``text_encoder.final_layer_norm`` per encoder call (eval =
  call number: the negative prompt's chunks first, as the webui encodes them; the webui's
  prompt cache is bypassed for recorded batches so the encoder runs), ``text.cond`` and
  ``text.uncond`` (the embeddings the CFG denoiser gets at the first step);
- ``noise.initial``: what ``modules.rng.ImageRNG.first`` returns, whichever source draws it
  (``settings.rng``: ``torch-cpu`` for CPU, ``torch-cuda:SMS,THREADS`` for GPU, ``a1111-nv`` for
  NV); ENSD in ``settings.a1111.ensd``;
- per model evaluation (``on_cfg_denoiser`` / ``on_cfg_after_cfg``), at step i = the sampler's
  step as k-diffusion's callback counts it and eval = the evaluation within the step (0, and 1
  for the second evaluation of second-order samplers — Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++
  SDE, the webui's ``SamplerData.options["second_order"]`` —, whose last step, to σ = 0, is one
  evaluation): ``sampler.x`` (the k-diffusion x that evaluation gets), every UNet probe point
  (eval = UNet call within the step, counted across its evaluations: the same number when cond
  and uncond run batched), ``sampler.eps.cond`` / ``sampler.eps.uncond`` (the UNet outputs,
  rows labelled by the webui's batch layout: cond rows first, then uncond, in one call or
  several), ``sampler.denoised`` (CFG-combined x̂₀). The step is counted from the evaluations of
  each pass (a new CFG denoiser per pass), not taken from the callbacks' ``sampling_step``:
  the webui sets that in the sampler's callback, after a step's first evaluation, so it lags;
- the final ``sampler.x`` of each pass, one step after its last (what the sampler's ``sample`` /
  ``sample_img2img`` returned; the samplers ``sd_samplers.create_sampler`` makes for the batch
  are watched; ``post_sample`` when none was);
- ``vae.post_quant_conv``, ``vae.decoder`` (the webui decodes one image at a time; the batch is
  recorded once, concatenated) and ``image`` (what ``postprocess_batch`` gets).

A hires-fix second pass is its own block: the first pass's steps are 0 … n − 1 and its final
latent is at step n; the second pass's steps are recorded at ``first_step + i`` with
``first_step`` = n + 1 (``settings.host.hires``), its noise (drawn before ``before_hr``) as
``noise.initial`` at step ``first_step``, its final ``sampler.x`` at ``first_step`` + its steps.
The VAE points are those of the final decode (the webui decodes the first pass too for a
non-latent upscaler; that decode is not recorded).

Split cross-attention (Doggettx, V1, InvokeAI, sub-quadratic: ``model_hijack.optimization_method``)
chooses its slices from the free memory at each call, so two cards differ: the slices each
attention layer computed in the first UNet call of each pass are observed (a TorchFunctionMode
counting ``softmax`` — one per Doggettx/V1/InvokeAI slice — and ``baddbmm`` — one per
sub-quadratic (query, key) chunk — entered in the layer's forward pre-hook and left in its
forward hook, also on exceptions; the hooks exist for that one call only) and written to the run
end (FORMAT.md §2.6), not the header, which is written before the first UNet call:
``attention_slices`` = {sdtrace key (``unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1``
…): count} for the first pass, ``attention_slices_hires`` for a hires pass.

The header has the webui's version and commit, the command-line flags that change numerics, the
active cross-attention optimisation, the RNG source, ENSD, the CFG row order and batching
options, and the extra networks of the batch (LoRA etc. with their weights, embeddings named in
the prompts). Known gaps (TODO): samplers whose evaluations per step vary otherwise (DPM fast /
adaptive, Restart's restarts) are numbered as above, which is not their own step count; the
split counts are read off the ops a layer calls, so a split kernel that computes its slices
without ``softmax``/``baddbmm`` would record nothing. On Forge (located
through ``forge_objects``) the rows of each UNet call are split by the labels Forge passes it
(``transformer_options["cond_or_uncond"]``, its ComfyUI-style ``[uncond; cond]`` batching), which
is tested against a stand-in only. A call of cond rows followed by as many uncond rows is stored
[uncond; cond] (``cfg_rows_stored``), so it pairs with any other host's records; calls of other
shapes (several sub-prompts) are stored as they ran.

Nothing here raises inside a generation (:mod:`sdtrace.ldm_host`): a failure is logged, the hooks
are removed and the trace is closed as failed; the image is the webui's own, bit-identical.
"""

import logging
import os
import re

from . import ldm_host

log = logging.getLogger("sdtrace")

TITLE = "sdtrace"

# Command-line flags that change numerics, as the webui's argparse names them.
NUMERIC_FLAGS = (
    "xformers",
    "force_enable_xformers",
    "opt_sdp_attention",
    "opt_sdp_no_mem_attention",
    "opt_split_attention",
    "opt_split_attention_v1",
    "opt_split_attention_invokeai",
    "opt_sub_quad_attention",
    "disable_opt_split_attention",
    "medvram",
    "medvram_sdxl",
    "lowvram",
    "no_half",
    "no_half_vae",
    "upcast_sampling",
    "precision",
)


def _webui():
    """The webui modules this code reads (imported lazily: only inside the webui)."""
    from modules import rng, script_callbacks, shared  # noqa: F401

    return rng, script_callbacks, shared


# The webui's sampler names (and, since 1.9, its schedule type) as sdtrace names them.
SAMPLERS = {("Euler", None): "euler", ("Euler a", None): "euler-a", ("DDIM", None): "ddim", ("DPM++ 2M Karras", None): "dpmpp-2m-karras", ("DPM++ 2M", "Karras"): "dpmpp-2m-karras", ("DPM++ 2M", None): "dpmpp-2m"}


def sampler_name(name, schedule=None):
    """sdtrace's name for the webui's sampler ``name`` with ``schedule`` (its own name if sdtrace
    has none)."""
    schedule = None if schedule in (None, "", "Automatic") else schedule
    return SAMPLERS.get((name, schedule), name)


# The webui's cross-attention optimisations (`model_hijack.optimization_method`) in sdtrace's
# `settings.attention` words where sdtrace has the same kernel (Doggettx = split); others keep
# the webui's name.
ATTENTION = {None: "full", "none": "full", "Doggettx": "split:auto"}


def _dtype_name(module):
    try:
        d = next(module.parameters()).dtype
    except Exception:  # noqa: BLE001
        return None
    return {"torch.float32": "f32", "torch.float16": "f16", "torch.bfloat16": "bf16"}.get(str(d), str(d))


def _rng_spec(source, device):
    if source == "NV":
        return "a1111-nv"
    if source == "CPU" or getattr(device, "type", "cpu") != "cuda":
        return "torch-cpu"
    import torch

    p = torch.cuda.get_device_properties(device)
    return f"torch-cuda:{p.multi_processor_count},{getattr(p, 'max_threads_per_multi_processor', None) or 2048}"


def _version():
    try:
        from modules import launch_utils

        return {"version": launch_utils.git_tag(), "commit": launch_utils.commit_hash()}
    except Exception:  # noqa: BLE001
        return {"version": None, "commit": None}


def _extra_networks(p):
    out = []
    for kind, params in (getattr(p, "extra_network_data", None) or {}).items():
        for item in params:
            items = list(getattr(item, "items", []) or [])
            if items:
                out.append({"type": kind, "name": items[0], "weights": items[1:]})
    return out


def _embeddings(p):
    try:
        from modules import sd_hijack

        names = list(sd_hijack.model_hijack.embedding_db.word_embeddings)
    except Exception:  # noqa: BLE001
        return []
    text = " ".join(list(getattr(p, "prompts", []) or []) + list(getattr(p, "negative_prompts", []) or []))
    return [n for n in names if re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", text)]


def _models(sd_model):
    """{component: (checkpoint root, torch module)} of the webui's model, A1111 or Forge."""
    forge = getattr(sd_model, "forge_objects", None)
    if forge is not None:
        return {
            "unet": ("model.diffusion_model", getattr(getattr(forge.unet, "model", None), "diffusion_model", None)),
            "vae": ("first_stage_model", getattr(forge.vae, "first_stage_model", None)),
            "text_encoder": ("cond_stage_model", getattr(forge.clip, "cond_stage_model", None)),
        }
    return {
        "unet": ("model.diffusion_model", getattr(getattr(sd_model, "model", None), "diffusion_model", None)),
        "vae": ("first_stage_model", getattr(sd_model, "first_stage_model", None)),
        "text_encoder": ("cond_stage_model", getattr(sd_model, "cond_stage_model", None)),
    }


def _canonical_names(models):
    """What the map reads the architecture off: module and parameter names under checkpoint roots,
    the webui's text-encoder wrapper level (`wrapped`) dropped."""
    names = []
    for root, module in models.values():
        if module is None:
            continue
        for n, _ in list(module.named_modules()) + list(module.named_parameters()):
            full = f"{root}.{n}" if n else root
            names.append(full.replace("cond_stage_model.wrapped.", "cond_stage_model.", 1))
    return names


class Batch:
    """The recording of one image batch: hooks, wrappers, step bookkeeping, the session."""

    def __init__(self, session, p, ldm_map, models, steps):
        self.s = session
        self.p = p
        self.map = ldm_map
        self.models = models
        self.steps = steps
        self.first_step = steps + 1  # where a second pass (hires fix) starts
        self.offset = 0  # steps of the current pass are recorded at offset + i
        self.passes = 0  # sampler passes started (a new CFG denoiser each)
        self.denoiser = None
        self.second_order = False
        self.pass_evals = 0  # model evaluations so far in this pass
        self.final_recorded = 0  # the last pass whose final latent is recorded
        self.text_calls = 0
        self.step = None
        self.eval = 0
        self.calls = 0
        self.rows_seen = 0
        self.cond_rows = 0
        self.eps = {}
        self.decoding = False
        self.decoded = {"vae.post_quant_conv": [], "vae.decoder": []}
        self.noises = 0
        self.restore = []
        self.first_step_seen = False
        self.pass_steps = 0
        self.call_labels = None
        # Split cross-attention: the slices each attention layer computed in the first UNet call
        # of each pass, observed (not re-derived) while that call runs.
        self.attention = AttentionSlices(session) if _split_attention() else None

    # -- installing ------------------------------------------------------------------------------
    def install(self, rng_module):
        s = self.s
        unet = self.models["unet"][1]
        vae = self.models["vae"][1]
        text = self.models["text_encoder"][1]
        if self.map is not None:
            s.hook(self.map, {k: self.models[k] for k in ("unet", "text_encoder")})
        if text is not None:
            # One call of the CLIP transformer per 75-token chunk: the outermost module the map
            # names `text_encoder` (the webui wraps it: cond_stage_model.wrapped.transformer).
            root = self.models["text_encoder"][0]
            calls = text
            if self.map is not None:
                calls = next(
                    (m for n, m in text.named_modules() if self.map.from_ldm(f"{root}.{n}" if n else root) == "text_encoder"),
                    text,
                )
            s.add_handle(calls.register_forward_pre_hook(self._on_text_call))
        if unet is not None:
            s.add_handle(unet.register_forward_pre_hook(self._on_unet_in, with_kwargs=True))
            s.add_handle(unet.register_forward_hook(self._on_unet_out))
        if vae is not None and self.map is not None:
            for key in ("vae.post_quant_conv", "vae.decoder"):
                path = self.map.to_ldm(key)
                module = _get(vae, path[len("first_stage_model."):]) if path else None
                if module is not None and s._wanted(key):
                    s.add_handle(module.register_forward_hook(self._decoded(key)))
        # Each sampler the webui creates for this batch (one per pass): what its pass returns
        # is the pass's final latent (the first pass's too when a hires pass follows).
        batch = self
        samplers = _sd_samplers()
        if samplers is not None and callable(getattr(samplers, "create_sampler", None)):
            create = samplers.create_sampler

            def create_sampler(*args, **kwargs):
                sampler = create(*args, **kwargs)
                batch.s.guard("watching the sampler", batch._watch_sampler, sampler)
                return sampler

            samplers.create_sampler = create_sampler
            self.restore.append((samplers, "create_sampler", create))
        # The noise, wherever ImageRNG draws it from.
        original = rng_module.ImageRNG.first

        def first(rng_self, *args, **kwargs):
            x = original(rng_self, *args, **kwargs)
            batch.s.guard("recording the noise", batch._on_noise, x)
            return x

        rng_module.ImageRNG.first = first
        self.restore.append((rng_module.ImageRNG, "first", original))
        # The webui closes `p` however the generation ends (txt2img/img2img run it in
        # `with closing(p)`), while `postprocess` is skipped after an error: closing `p`
        # closes a batch still open, so no hook outlives the generation.
        original_close = getattr(self.p, "close", None)
        if callable(original_close):

            def close(*args, **kwargs):
                RECORDER.close(_abandoned_status(), "the generation ended before the batch was postprocessed")
                return original_close(*args, **kwargs)

            self.p.close = close
            self.restore.append((self.p, "close", None))

    def _watch_sampler(self, sampler):
        for name in ("sample", "sample_img2img"):
            run = getattr(sampler, name, None)
            if not callable(run):
                continue

            def wrapped(*args, _run=run, **kwargs):
                out = _run(*args, **kwargs)
                self.s.guard("recording the pass's final latent", self._on_pass_end, out)
                return out

            setattr(sampler, name, wrapped)
            self.restore.append((sampler, name, None))

    def uninstall(self):
        if self.attention is not None:
            self.attention.stop()
        self.s.remove_hooks()
        while self.restore:
            owner, name, original = self.restore.pop()
            if original is None:
                vars(owner).pop(name, None)
            else:
                setattr(owner, name, original)

    # -- events ----------------------------------------------------------------------------------
    def _on_text_call(self, module, args):
        if self.s.active and not self.first_step_seen:
            self.s.set_step(None, self.text_calls)
            self.text_calls += 1

    def _on_noise(self, x):
        # ImageRNG.first runs once per ImageRNG: the batch's noise, then (hires fix) the second
        # pass's, which the webui draws before it calls before_hr.
        self.noises += 1
        self.s.set_step(None if self.noises == 1 else self.first_step)
        self.s.tensor("noise.initial", x)

    def _new_pass(self, denoiser):
        self.passes += 1
        self.denoiser = denoiser
        self.pass_evals = 0
        self.pass_steps = 0
        self.offset = 0 if self.passes == 1 else self.first_step
        self.second_order = _second_order(denoiser, self.p)
        if self.attention is not None:
            self.attention.pending = True

    def on_cfg_denoiser(self, params):
        # The webui's `params.sampling_step` is the step of the sampler's last callback, which
        # k-diffusion calls after a step's first evaluation: it lags. Steps are counted here
        # from the evaluations of the pass instead (a new CFG denoiser each pass): two per step
        # for second-order samplers (the last step, to σ = 0, is one Euler evaluation).
        denoiser = getattr(params, "denoiser", None)
        if self.passes == 0 or (denoiser is not None and denoiser is not self.denoiser):
            self._new_pass(denoiser)
        n = self.pass_evals
        self.pass_evals += 1
        i, e = divmod(n, 2) if self.second_order else (n, 0)
        step = self.offset + i
        self.pass_steps = i + 1
        if not self.first_step_seen and self.passes == 1:
            self.first_step_seen = True
            self.s.set_step(None)
            if params.text_uncond is not None:
                self.s.tensor("text.uncond", params.text_uncond)
            self.s.tensor("text.cond", params.text_cond)
        if e == 0:
            self.calls = 0  # UNet calls are numbered across the step's evaluations
        self.step, self.eval, self.rows_seen, self.eps = step, e, 0, {}
        total = params.x.shape[0]
        uncond = params.text_uncond.shape[0] if params.text_uncond is not None else 0
        # The webui's batch: the cond rows (one block per sub-prompt), then the uncond rows.
        self.cond_rows = total - uncond
        self.s.set_step(step, e)
        self.s.tensor("sampler.x", params.x[-uncond:] if uncond else params.x[: total])

    def _on_unet_in(self, module, args, kwargs):
        if self.s.active and self.step is not None:
            self.s.set_step(self.step, self.calls)
            if self.attention is not None and self.attention.pending:
                self.attention.pending = False
                self.s.guard("observing the attention slices", self.attention.watch, self.models["unet"], self.map, self.passes)
            # Forge batches the ComfyUI way and says so: transformer_options["cond_or_uncond"]
            # labels each block of rows (0 = cond, 1 = uncond). The webui passes no labels.
            options = kwargs.get("transformer_options") if isinstance(kwargs, dict) else None
            labels = options.get("cond_or_uncond") if isinstance(options, dict) else None
            self.call_labels = list(labels) if labels else None
            if self.call_labels:
                # Equal halves [cond; uncond] are stored [uncond; cond]; [uncond; cond] as it ran.
                self.s.cond_first(self.call_labels == [0, 1])
            else:
                # One call of cond rows then as many uncond rows is stored [uncond; cond].
                x = args[0] if args else None
                n = x.shape[0] if hasattr(x, "shape") else 0
                c = max(0, min(n, self.cond_rows - self.rows_seen))
                self.s.cond_first(c > 0 and 2 * c == n)
        return None

    def _on_unet_out(self, module, args, out):
        if self.attention is not None:
            self.attention.stop()
        if not self.s.active or self.step is None:
            return None
        self.s.cond_first(False)

        def split():
            eps = ldm_host.tensor_of(out)
            n = eps.shape[0]
            first = self.rows_seen
            self.rows_seen += n
            self.calls += 1
            if self.call_labels:
                for label, rows in ldm_host.split_rows(eps, self.call_labels).items():
                    self.eps.setdefault(label, []).append(rows)
                return
            c = max(0, min(n, self.cond_rows - first))
            if c:
                self.eps.setdefault("cond", []).append(eps[:c])
            if c < n:
                self.eps.setdefault("uncond", []).append(eps[c:])

        self.s.guard("splitting the UNet output into cond and uncond rows", split)
        return None

    def on_cfg_after_cfg(self, params):
        import torch

        if self.step is None:
            return
        self.s.set_step(self.step, self.eval)
        for label in ("uncond", "cond"):
            parts = self.eps.get(label)
            if parts:
                self.s.tensor(f"sampler.eps.{label}", parts[0] if len(parts) == 1 else torch.cat(parts))
        self.s.tensor("sampler.denoised", params.x)
        self.s.writer.steps_completed = self.step + 1

    def before_hr(self):
        # The second pass starts with the next evaluation (its sampler's new CFG denoiser says
        # so too); its noise was drawn before this call.
        self.denoiser = _NEXT_PASS
        self.step = None

    def _final_latent(self, x):
        """``x`` ended the current pass: record it one step after the pass's last one."""
        import torch

        if self.passes == 0 or self.final_recorded == self.passes or not isinstance(x, torch.Tensor):
            return
        self.final_recorded = self.passes
        self.s.set_step(self.offset + self.pass_steps)
        self.s.tensor("sampler.x", x)
        self.step = None

    def _on_pass_end(self, out):
        if not self.s.active:
            return
        # An interrupted pass returns the sampler's last x̂₀ preview, not an x: not recorded.
        if _abandoned_status() != "interrupted":
            self._final_latent(out)
        # What is decoded from here on is the image, unless a hires pass follows (the webui
        # decodes the first pass for a non-latent upscaler).
        if not (getattr(self.p, "enable_hr", False) and self.passes == 1):
            self.decoding = True

    def post_sample(self, samples):
        # The final latent when no sampler was watched (with hires fix the webui passes decoded
        # images here, already recorded as the hires pass's end).
        self._final_latent(samples)
        self.step = None
        self.decoding = True

    def _decoded(self, key):
        def on_out(module, args, out):
            if self.decoding and self.s.active:
                self.s.guard(f"keeping {key}", lambda: self.decoded[key].append(ldm_host.tensor_of(out).detach().clone()))
            return None

        return on_out

    def postprocess_batch(self, images):
        import torch

        self.s.set_step(None)
        for key, parts in self.decoded.items():
            if parts:
                self.s.tensor(key, torch.cat(parts))
        self.s.tensor("image", images.float())


_NEXT_PASS = object()  # before_hr: the next evaluation starts a new pass

# The webui's split cross-attention optimisations (`model_hijack.optimization_method`), whose
# slices depend on the free memory at each call.
SPLIT_ATTENTION = ("Doggettx", "V1", "InvokeAI", "sub-quadratic")


def _optimization():
    try:
        from modules import sd_hijack

        return getattr(sd_hijack.model_hijack, "optimization_method", None)
    except Exception:  # noqa: BLE001
        return None


def _split_attention():
    return _optimization() in SPLIT_ATTENTION


def _sd_samplers():
    try:
        from modules import sd_samplers

        return sd_samplers
    except Exception:  # noqa: BLE001
        return None


def _second_order(denoiser, p):
    """Whether the pass's sampler evaluates the model twice per step: the webui's
    ``SamplerData.options["second_order"]`` (Heun, DPM2, DPM2 a, DPM++ 2S a, DPM++ SDE, Restart)
    of the denoiser's sampler, else of ``p.sampler``."""
    for sampler in (getattr(denoiser, "sampler", None), getattr(p, "sampler", None)):
        options = getattr(getattr(sampler, "config", None), "options", None)
        if isinstance(options, dict):
            return bool(options.get("second_order", False))
    return False


class AttentionSlices:
    """The slices (score blocks) each attention layer computes in one UNet call, observed:
    while a watched layer's forward runs, a TorchFunctionMode (entered in its forward pre-hook,
    left in its forward hook, which runs on exceptions too, and by :meth:`stop` whatever
    happens) counts the calls of ``softmax`` and ``baddbmm``. Doggettx, V1 and InvokeAI compute
    one softmax per slice; sub-quadratic one ``baddbmm`` per (query chunk, key chunk) block.
    The hooks live for that one UNet call only."""

    def __init__(self, session):
        self.s = session
        self.pending = False
        self.handles = []
        self.open = []  # (key, mode) entered and not yet left, innermost last
        self.found = {}
        self.pass_index = 0
        self.targets = None

    def watch(self, unet, ldm_map, pass_index):
        root, module = unet
        if module is None or ldm_map is None:
            return
        self.pass_index = pass_index
        self.found = {}
        if self.targets is None:  # the attention layers, found once per batch
            self.targets = []
            for name, m in module.named_modules():
                key = ldm_map.from_ldm(f"{root}.{name}" if name else root)
                if key is not None and key.startswith("unet.") and key.endswith((".attn1", ".attn2")):
                    self.targets.append((key, m))
        for key, m in self.targets:
            self.handles.append(m.register_forward_pre_hook(self._enter(key)))
            try:  # first among the forward hooks (the recorder's run outside the count)
                self.handles.append(m.register_forward_hook(self._leave(key), prepend=True, always_call=True))
            except TypeError:  # torch < 2.0: stop() leaves what an exception left open
                self.handles.append(m.register_forward_hook(self._leave(key)))

    def _enter(self, key):
        def pre(module, args):
            try:
                mode = _op_counter()
                mode.__enter__()
                self.open.append((key, mode))
            except Exception as e:  # noqa: BLE001
                self.s.fail("observing the attention slices", e)
            return None

        return pre

    def _leave(self, key):
        def post(module, args, out):
            if self.open and self.open[-1][0] == key:
                self._close_top()
            return None

        return post

    def _close_top(self):
        key, mode = self.open.pop()
        try:
            import torch.overrides

            stack = torch.overrides._get_current_function_mode_stack()
            if stack and stack[-1] is mode:
                mode.__exit__(None, None, None)
            n = mode.counts.get("baddbmm", 0) or mode.counts.get("softmax", 0)
            if n and key not in self.found:
                self.found[key] = n
        except Exception as e:  # noqa: BLE001
            self.s.fail("observing the attention slices", e)

    def stop(self):
        """Leave every mode still entered and remove the hooks; file what was found."""
        while self.open:
            self._close_top()
        while self.handles:
            h = self.handles.pop()
            try:
                h.remove()
            except Exception:  # noqa: BLE001
                pass
        if self.found:
            name = "attention_slices" if self.pass_index <= 1 else "attention_slices_hires"
            self.s.run_end.setdefault(name, dict(sorted(self.found.items())))
            self.found = {}


_OP_COUNTER = []


def _op_counter():
    """A TorchFunctionMode counting the calls of ``softmax`` and ``baddbmm`` under it."""
    if not _OP_COUNTER:
        from torch.overrides import TorchFunctionMode

        class OpCounter(TorchFunctionMode):
            def __init__(self):
                super().__init__()
                self.counts = {}

            def __torch_function__(self, func, types, args=(), kwargs=None):
                name = getattr(func, "__name__", "")
                if name in ("softmax", "baddbmm"):
                    self.counts[name] = self.counts.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        _OP_COUNTER.append(OpCounter)
    return _OP_COUNTER[0]()


def _get(module, path):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


class Recorder:
    """The extension's state across the hooks of one generation (``p``): at most one batch being
    recorded; callbacks registered once, inert when nothing is recorded."""

    def __init__(self):
        self.batch = None

    def _guard(self, what, fn, *args):
        b = self.batch
        if b is None:
            return None
        return b.s.guard(what, fn, *args)

    # -- Script hooks ----------------------------------------------------------------------------
    def process_batch(self, p, enabled, capture, folder, batch_number, seeds):
        self.close("interrupted", "a new batch started before this one was postprocessed")
        if not enabled:
            return
        try:
            rng, _, shared = _webui()
            models = _models(p.sd_model)
            ldm_map, why = None, None
            try:
                from .keys import LdmMap

                ldm_map = LdmMap.from_names(_canonical_names(models))
            except Exception as e:  # noqa: BLE001 - SDXL, SD3, Flux...: pipeline points only
                ldm_map, why = None, str(e)
            header = self._header(p, shared, seeds, batch_number, capture, why)
            folder = folder or "sdtrace"
            if not os.path.isabs(folder):
                folder = os.path.join(_data_path(), "outputs", folder)
            os.makedirs(folder, exist_ok=True)
            seed = seeds[0] if seeds else getattr(p, "seed", 0)
            path = os.path.join(folder, f"{seed}_{batch_number}.sdt")
            session = ldm_host.Session(path, header, capture or "light", host="webui")
        except Exception as e:  # noqa: BLE001 - a bad setting: say so, generate anyway
            log.warning("sdtrace: not recording this batch: %s: %s", type(e).__name__, e)
            return
        if why:
            log.warning("sdtrace: %s; recording the pipeline points only", why)
        batch = Batch(session, p, ldm_map, models, int(getattr(p, "steps", 0) or 0))
        self.batch = batch
        session.guard("installing the hooks", batch.install, rng)
        # The webui caches conditionings across generations; recorded batches encode afresh so
        # the text encoder's points exist (same conds: the encoder is deterministic).
        if hasattr(p, "cached_c"):
            p.cached_c = [None, None]
            p.cached_uc = [None, None]

    def _header(self, p, shared, seeds, batch_number, capture, skipped):
        opts, cmd = getattr(shared, "opts", None), getattr(shared, "cmd_opts", None)
        device = getattr(shared, "device", None)
        source = getattr(opts, "randn_source", "GPU")
        optimization = None
        try:
            from modules import sd_hijack

            optimization = getattr(sd_hijack.model_hijack, "optimization_method", None)
        except Exception:  # noqa: BLE001
            pass
        batched = bool(getattr(opts, "batch_cond_uncond", True))
        pad = bool(getattr(opts, "pad_cond_uncond", False))
        cond_uncond = (
            "webui ([cond; uncond], separate calls when token counts differ"
            + ("; padded to equal counts" if pad else "")
            + ("" if batched else "; batch_cond_uncond off: separate calls")
            + ")"
        )
        host = {
            "name": "forge" if getattr(p.sd_model, "forge_objects", None) is not None else "webui",
            **_version(),
            "flags": {f: getattr(cmd, f, None) for f in NUMERIC_FLAGS if cmd is not None and hasattr(cmd, f)},
            "cross_attention_optimization": optimization,
            "cross_attention_optimization_setting": getattr(opts, "cross_attention_optimization", None),
            "sampler_name": getattr(p, "sampler_name", None),
            "scheduler": getattr(p, "scheduler", None),
            "batch_number": batch_number,
            "seeds": list(seeds or []),
            "extra_networks": _extra_networks(p),
            "embeddings": _embeddings(p),
            "hires": {"enabled": bool(getattr(p, "enable_hr", False)), "first_step": int(getattr(p, "steps", 0) or 0) + 1},
        }
        if skipped:
            host["skipped"] = f"module points: {skipped}"
        settings = {
            "model": getattr(getattr(p.sd_model, "sd_checkpoint_info", None), "name_for_extra", None),
            "prompt": (getattr(p, "prompts", None) or [getattr(p, "prompt", None)])[0],
            "negative_prompt": (getattr(p, "negative_prompts", None) or [getattr(p, "negative_prompt", None)])[0],
            "sampler": sampler_name(getattr(p, "sampler_name", None), getattr(p, "scheduler", None)),
            "steps": int(getattr(p, "steps", 0) or 0),
            "cfg_scale": getattr(p, "cfg_scale", None),
            "seed": (seeds or [getattr(p, "seed", None)])[0],
            "width": getattr(p, "width", None),
            "height": getattr(p, "height", None),
            "batch_size": getattr(p, "batch_size", None),
            "rng": _rng_spec(source, device),
            "dtype": _dtype_name(_models(p.sd_model)["unet"][1]),
            "attention": ATTENTION.get(optimization, f"webui:{optimization}"),
            "capture": capture,
            # Free keys (RunHeader's flattened `extra`), as sdtrace record and the diffusers
            # recorder write them.
            "host": host,
            "numerics": {"cond_uncond": cond_uncond, "batch_cond_uncond": batched, "pad_cond_uncond": pad},
            "cfg_rows": "uncond,cond" if host["name"] == "forge" else "cond,uncond",
            "cfg_rows_stored": "uncond,cond",
            "a1111": {"ensd": getattr(opts, "eta_noise_seed_delta", 0), "randn_source": source, "cond_uncond": cond_uncond},
        }
        facts = {"device": str(device)}
        try:
            import torch

            if device is not None and device.type == "cuda":
                prop = torch.cuda.get_device_properties(device)
                facts["gpu"] = {"name": prop.name, "compute_capability": f"{prop.major}.{prop.minor}", "sm_count": prop.multi_processor_count}
            facts["numerics"] = {"cudnn.benchmark": torch.backends.cudnn.benchmark, "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
        except Exception:  # noqa: BLE001
            pass
        return {"settings": settings, "device": facts}

    def before_hr(self):
        self._guard("starting the hires pass", lambda: self.batch.before_hr())

    def post_sample(self, samples):
        self._guard("recording the final latent", lambda: self.batch.post_sample(samples))

    def postprocess_batch(self, images):
        b = self.batch
        if b is None:
            return
        b.s.guard("recording the image", b.postprocess_batch, images)
        self.close("complete")

    def close(self, status="complete", reason=None):
        b, self.batch = self.batch, None
        if b is None:
            return
        try:
            b.uninstall()
        finally:
            b.s.close(status, reason)

    # -- script_callbacks ------------------------------------------------------------------------
    def on_cfg_denoiser(self, params):
        b = self.batch
        if b is not None and b.s.active:
            b.s.guard("recording a step", b.on_cfg_denoiser, params)

    def on_cfg_after_cfg(self, params):
        b = self.batch
        if b is not None and b.s.active:
            b.s.guard("recording a step", b.on_cfg_after_cfg, params)


def _abandoned_status():
    """How a batch that never reached postprocess_batch ended: interrupted (the user's Interrupt
    or Skip) or failed."""
    try:
        _, _, shared = _webui()
        state = shared.state
        return "interrupted" if getattr(state, "interrupted", False) or getattr(state, "skipped", False) else "failed"
    except Exception:  # noqa: BLE001
        return "failed"


def _data_path():
    try:
        from modules import paths_internal

        return paths_internal.data_path
    except Exception:  # noqa: BLE001
        return os.getcwd()


RECORDER = Recorder()


def register_callbacks(script_callbacks):
    """Register the denoiser callbacks once (they do nothing unless a batch is recorded)."""
    script_callbacks.on_cfg_denoiser(RECORDER.on_cfg_denoiser, name="sdtrace")
    script_callbacks.on_cfg_after_cfg(RECORDER.on_cfg_after_cfg, name="sdtrace")


def make_script_class(scripts):
    """The always-visible Script, built on the webui's ``modules.scripts.Script``."""

    class SdtraceScript(scripts.Script):
        def title(self):
            return TITLE

        def show(self, is_img2img):
            return scripts.AlwaysVisible

        def ui(self, is_img2img):
            import gradio as gr

            with gr.Accordion("sdtrace", open=False):
                enabled = gr.Checkbox(label="Record a trace of each image batch", value=False)
                capture = gr.Textbox(label="Capture (preset or rules, as sdtrace record --capture)", value="light")
                folder = gr.Textbox(label="Output folder (relative: under outputs/)", value="sdtrace")
            return [enabled, capture, folder]

        def process_batch(self, p, enabled=False, capture="light", folder="sdtrace", **kwargs):
            RECORDER.process_batch(p, enabled, capture, folder, kwargs.get("batch_number", 0), kwargs.get("seeds", []))

        def before_hr(self, p, *args):
            RECORDER.before_hr()

        def post_sample(self, p, ps, *args):
            RECORDER.post_sample(ps.samples)

        def postprocess_batch(self, p, *args, **kwargs):
            RECORDER.postprocess_batch(kwargs.get("images"))

        def postprocess(self, p, processed, *args):
            RECORDER.close(_abandoned_status(), "the generation ended before the batch was postprocessed")

    return SdtraceScript
