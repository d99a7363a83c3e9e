"""Writing traces from Python: :class:`Writer`, the Rust probe behind a context manager.

The policy (``capture``) decides per key what is kept — a summary, a sketch or the whole tensor
— and :meth:`Writer.tensor` asks it first, so a key that is left out costs nothing, not even a
copy off the GPU. Summaries and sketches are computed by the same Rust code as
``sdtrace record``, with the GIL released, and written by its background writer. Leaving the
``with`` block always closes the file with a run-end saying how the run ended: ``complete``,
``interrupted`` (KeyboardInterrupt) or ``failed`` (any other exception, which is re-raised), so
a trace is never left looking whole when it is not.
"""

import json
import math
import os
import time

from . import _native
from ._tensors import buffer


class Writer:
    """Write the trace ``path``.

    ``header`` is the run header (FORMAT.md §2.1: ``settings``, ``device``, free extra keys);
    ``sdtrace_version`` and ``created_unix_ms`` are filled in when absent. ``capture`` is a
    preset (``light``, ``full``, ``stats``, ``sketch``, ``off``) optionally followed by rules
    (``"light,unet.*=full"``), as ``sdtrace record --capture`` takes it.
    """

    def __init__(self, path, header=None, capture="light"):
        header = dict(header or {})
        header.setdefault("sdtrace_version", _native.version())
        header.setdefault("created_unix_ms", int(time.time() * 1000))
        self.path = os.fspath(path)
        self._rec = _native.Recorder(self.path, json.dumps(_plain(header)), capture)
        self._started = time.monotonic()
        self.steps_completed = None
        self.steps_planned = header.get("settings", {}).get("steps")

    def step(self, step, eval=0):
        """Records that follow belong to sampler step ``step`` (None: outside the loop) and
        model evaluation ``eval``."""
        self._rec.set_step(step, eval)

    def wants(self, key):
        """The fidelity ``key`` would be recorded at now, or None when the policy leaves it out."""
        return self._rec.plan(key)

    def cond_first(self, on):
        """Say that the model call about to run batches [cond; uncond] (``True``), or no longer
        does: records are then stored [uncond; cond], the order every trace holds."""
        self._rec.set_cond_first(bool(on))

    def tensor(self, key, x):
        """Record ``x`` (numpy array or torch tensor, any device) under ``key``; returns whether
        it was recorded."""
        if self._rec.plan(key) is None:
            return False
        buf = buffer(x, key)
        self._rec.tensor_at(key, buf.dtype, buf.shape, buf.address, buf.nbytes)
        return True

    @property
    def nonfinite(self):
        """The records that held NaN or ±Inf so far."""
        return json.loads(self._rec.nonfinite_json())

    @property
    def finished(self):
        return self._rec.finished

    def finish(self, status="complete", reason=None, extra=None):
        """Close the trace with a run-end (``complete``, ``interrupted`` or ``failed``);
        ``extra``, a dict, adds free fields to it (what a host observed during the run)."""
        return self._rec.finish(
            status,
            reason,
            self.steps_completed,
            self.steps_planned,
            int((time.monotonic() - self._started) * 1000),
            json.dumps(_plain(extra)) if extra else None,
        )

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        if self._rec.finished:
            return False
        if kind is None:
            self.finish("complete")
            return False
        status = "interrupted" if issubclass(kind, KeyboardInterrupt) else "failed"
        try:
            self.finish(status, f"{kind.__name__}: {value}")
        except _native.SdtraceError:
            pass  # the exception that ended the run is the one to see
        return False


def _plain(v):
    """``v`` with what JSON cannot hold made text: non-finite floats (diffusers' configs have
    ``lambda_min_clipped: -inf``), tuples as lists, other objects by ``str``."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)
