"""Recording inside LDM-structured hosts — AUTOMATIC1111's webui, Forge, ComfyUI: what their
add-ons (``hosts/webui``, ``hosts/comfyui``) share.

A :class:`Session` is one trace. It hooks the host's own torch modules by their LDM module paths,
mapped to sdtrace's keys by the one Rust table (:mod:`sdtrace.keys`), so a UNet point recorded
here has the key ``sdtrace record`` gives it; the host adapters feed it the pipeline points
(``noise.initial``, ``text.*``, ``sampler.*``, ``image``) as their hosts expose them.

House rules for code that runs inside someone else's generation, kept here once:

- **Never raise into the host.** Every entry point is guarded: the first error is logged with
  what failed, the hooks are removed, recording stops for this run (the trace is closed as
  ``failed`` with the reason), and the generation goes on untouched.
- **Observe only.** Hooks return nothing and read module outputs; tensors are copied off the
  host's device only when the capture policy keeps them; the image is bit-identical.
- **Leave nothing behind.** Hooks live for one run and are removed by :meth:`Session.close` on
  every exit path (also when a run is abandoned: a new session closes the previous one).
- **Unsupported models** (SDXL, SD3, Flux, anything the map does not cover) are recorded with the
  pipeline points only, and the header and log say what was skipped.
"""

import logging
import re

from . import _native
from .keys import LdmMap
from .writer import Writer

log = logging.getLogger("sdtrace")

# sdtrace's probe points among the table's keys (the candle UNet's `probe_points`, the text
# encoder's layers and final norm, the VAE's two). Fine points (`to_q`/`to_k`/`to_v`) only when
# the capture rules name them; attention probabilities exist in none of the hosts' kernels.
_POINT = re.compile(
    r"^unet\.(conv_in|time_embedding|conv_norm_out|conv_out|mid_block"
    r"|(down|up)_blocks\.\d+"
    r"|((down|up)_blocks\.\d+|mid_block)\.(resnets|attentions)\.\d+"
    r"|(down|up)_blocks\.\d+\.(downsamplers|upsamplers)\.0"
    r"|((down|up)_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\.(attn1|attn2|ff)"
    r"|((down|up)_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\.(attn1|attn2)\.(to_q|to_k|to_v))$"
    r"|^text_encoder\.(encoder\.layers\.\d+|final_layer_norm)$"
    r"|^vae\.(post_quant_conv|decoder)$"
)

# Module roots as a checkpoint names them, by component.
ROOTS = {"unet": "model.diffusion_model", "vae": "first_stage_model", "text_encoder": "cond_stage_model"}


def is_point(key):
    """Whether ``key`` is one of sdtrace's module probe points."""
    return bool(_POINT.match(key))


def tensor_of(out):
    """The tensor a module returned (the first element of a tuple or an output object)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    first = getattr(out, "last_hidden_state", None)
    return first if isinstance(first, torch.Tensor) else None


def map_for(modules):
    """The LDM map of a model given as ``{component: (root path, torch module)}``, read off its
    module names; ``(None, reason)`` when it is not SD 1.x/2.x-structured."""
    names = []
    for root, module in modules.values():
        if module is None:
            continue
        names.extend(f"{root}.{n}" if n else root for n, _ in module.named_modules())
        names.extend(f"{root}.{n}" for n, _ in module.named_parameters())
    try:
        return LdmMap.from_names(names), None
    except _native.SdtraceError as e:
        return None, str(e)


class Session:
    """One trace from a host run: ``path``, run ``header`` (FORMAT.md §2.1), ``capture`` policy.

    Creating the trace is the only step that may raise (a bad path or capture string is the
    user's setting, reported by the add-on before the generation starts); everything after is
    guarded.
    """

    def __init__(self, path, header, capture="light", host="host"):
        self.host = host
        self.writer = Writer(path, header, capture)
        self.path = self.writer.path
        self.failed = None
        self.skipped = []
        # Free fields for the run end (FORMAT.md §2.6): what the host observed during the run.
        self.run_end = {}
        self._handles = []
        self.step = None
        self.eval = 0

    # -- guarding --------------------------------------------------------------------------------
    def guard(self, what, fn, *args, **kwargs):
        """``fn(*args, **kwargs)``, or None after logging and disabling on any error."""
        if self.failed is not None:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the host's generation must go on
            self.fail(what, e)
            return None

    def fail(self, what, exc):
        """Stop recording: log once, remove the hooks, close the trace as failed."""
        if self.failed is not None:
            return
        self.failed = f"{what}: {type(exc).__name__}: {exc}"
        log.warning("sdtrace (%s): %s; recording stopped for this run, the generation goes on (trace %s)", self.host, self.failed, self.path)
        self.remove_hooks()
        try:
            if not self.writer.finished:
                self.writer.finish("failed", self.failed, extra=self.run_end)
        except Exception:  # noqa: BLE001
            pass

    @property
    def active(self):
        return self.failed is None and not self.writer.finished

    # -- recording -------------------------------------------------------------------------------
    def set_step(self, step, eval=0):
        self.step, self.eval = step, eval
        self.guard("setting the step", self.writer.step, step, eval)

    def cond_first(self, on):
        """The UNet call about to run batches [cond; uncond] in two equal halves (``True``), or
        not: the trace then stores its rows [uncond; cond], the order every trace holds."""
        if self.active:
            self.guard("declaring the CFG row order", self.writer.cond_first, on)

    def tensor(self, key, x):
        """Record ``x`` under ``key`` at the current step (guarded)."""
        if self.active:
            self.guard(f"recording {key}", self.writer.tensor, key, x)

    def hook(self, ldm_map, modules):
        """Hook every probe point among ``modules`` (``{component: (root path, torch module)}``)
        that the capture policy records at some step; returns the keys hooked."""
        hooked = []
        for root, module in modules.values():
            if module is None:
                continue
            for name, m in module.named_modules():
                key = ldm_map.from_ldm(f"{root}.{name}" if name else root)
                if key is None or not is_point(key) or not self._wanted(key):
                    continue
                self._handles.append(m.register_forward_hook(self._recorder(key)))
                hooked.append(key)
        return hooked

    def add_handle(self, handle):
        """Keep a hook handle (anything with ``remove()``) to remove at :meth:`close`."""
        self._handles.append(handle)

    def _wanted(self, key):
        steps = self.writer.steps_planned or 0
        return self.writer._rec.records_any(key, [None, *range(steps + 1)])

    def _recorder(self, key):
        def on_output(module, args, out):
            if not self.active:
                return None
            try:
                t = tensor_of(out)
                if t is not None:
                    self.writer.tensor(key, t)
            except Exception as e:  # noqa: BLE001
                self.fail(f"recording {key}", e)
            return None

        return on_output

    # -- closing ---------------------------------------------------------------------------------
    def remove_hooks(self):
        while self._handles:
            h = self._handles.pop()
            try:
                h.remove()
            except Exception:  # noqa: BLE001
                pass

    def close(self, status="complete", reason=None, steps_completed=None):
        """Remove every hook and close the trace (idempotent, never raises)."""
        self.remove_hooks()
        if steps_completed is not None:
            self.writer.steps_completed = steps_completed
        try:
            if not self.writer.finished:
                self.writer.finish(status, reason, extra=self.run_end)
        except Exception as e:  # noqa: BLE001
            log.warning("sdtrace (%s): closing %s failed: %s", self.host, self.path, e)


def split_rows(eps, labels):
    """``{"cond": rows, "uncond": rows}`` of a UNet batch whose blocks of equal size are labelled
    ``labels`` (0 = cond, 1 = uncond, ComfyUI's ``cond_or_uncond``; the webui's batch is
    ``[0, 1]``, diffusers' ``[1, 0]``)."""
    n = len(labels)
    if n == 0 or eps.shape[0] % n:
        return {}
    chunks = eps.chunk(n)
    out = {}
    for label, rows in zip(labels, chunks):
        out.setdefault("cond" if label == 0 else "uncond", []).append(rows)
    import torch

    return {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in out.items()}
