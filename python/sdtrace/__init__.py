"""sdtrace: record Stable Diffusion runs as traces and judge them with the same Rust code as
the ``sdtrace`` command line (the format, the summaries and the judge are implemented once, in
Rust, and reached through ``sdtrace._native``).

- ``sdtrace.open(path)`` reads a trace: header, run-end, every record's metadata and summary,
  and the stored tensors as numpy arrays or torch tensors.
- ``sdtrace.compare(a, b, tol=...)`` judges two traces as ``sdtrace report`` does and returns its
  JSON report as a dict (``report["verdict"]["passed"]``), so a test can assert on traces.
- ``sdtrace.Writer(path, header, capture="light")`` writes a trace from tensors a host hands it
  (numpy arrays or torch tensors, on any device); the capture policy decides per key what is
  kept, and a key the policy leaves out costs no copy.
- ``with sdtrace.record(pipe, "run.sdt"): pipe(...)`` records a diffusers
  ``StableDiffusionPipeline`` call under the keys ``sdtrace record`` uses.
- ``sdtrace.summarize(x)`` is the summary ``sdtrace record`` stores for a tensor.
- ``sdtrace.keys.from_ldm(path)`` / ``sdtrace.keys.to_ldm(key)`` map the module paths of
  LDM-structured hosts (AUTOMATIC1111, Forge, ComfyUI) to sdtrace's keys and back.
"""

from . import _native, keys
from ._native import SdtraceError
from .trace import Record, Trace, compare, open, summarize
from .writer import Writer


def record(pipe, path, capture="light", header=None):
    """Record the diffusers pipeline call made inside ``with sdtrace.record(pipe, path): ...``
    (see :mod:`sdtrace.diffusers_host`; torch and diffusers are imported only here)."""
    from .diffusers_host import record as _record

    return _record(pipe, path, capture, header)

__version__ = _native.version()

__all__ = [
    "Record",
    "SdtraceError",
    "Trace",
    "Writer",
    "compare",
    "open",
    "record",
    "summarize",
    "__version__",
]
