"""Reading and judging traces: :func:`open`, :class:`Trace`, :func:`compare`, :func:`summarize`.

Everything is computed by the Rust reader and judge (``sdtrace._native``); this module turns
their JSON and bytes into Python values.
"""

import ctypes
import json
import os
from dataclasses import dataclass

from . import _native
from ._tensors import buffer, to_array


@dataclass(frozen=True)
class Record:
    """One record's metadata: where it is in the run, what it holds and its summary (count,
    min, max, mean, std, l2, abs-max, NaN/Inf counts, histogram, bit hash)."""

    key: str
    step: "int | None"
    eval: int
    order: int
    dtype: str
    shape: tuple
    fidelity: str
    summary: dict
    has_payload: bool


class Trace:
    """A trace file opened for reading. A damaged file is read up to the damage
    (:attr:`damage` says why)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self._t = _native.open_trace(self.path)
        self.header = json.loads(self._t.header_json())
        end = self._t.run_end_json()
        self.run_end = json.loads(end) if end is not None else None
        self.damage = self._t.damage()
        self._records = None

    def __len__(self):
        return len(self._t)

    @property
    def records(self):
        """Every record, in execution order (read once, on first use)."""
        if self._records is None:
            self._records = [
                Record(
                    key=m["key"],
                    step=m["step"],
                    eval=m["eval"],
                    order=m["order"],
                    dtype=m["dtype"],
                    shape=tuple(m["shape"]),
                    fidelity=m["fidelity"],
                    summary=m["summary"],
                    has_payload=m["payload"],
                )
                for m in json.loads(self._t.records_json())
            ]
        return self._records

    def __iter__(self):
        return iter(self.records)

    def keys(self):
        """The distinct keys, in order of first appearance."""
        return list(dict.fromkeys(r.key for r in self.records))

    def payload(self, key, step=None, eval=0, as_="numpy"):
        """The stored tensor of a record kept in full, as a numpy array (``as_="numpy"``; bf16
        as its uint16 bit patterns) or a torch tensor (``as_="torch"``). None when the record
        holds no payload; :class:`SdtraceError` when there is no such record."""
        got = self._t.payload(key, step, eval)
        if got is None:
            return None
        dtype, shape, data = got
        return to_array(dtype, shape, data, as_)

    def __repr__(self):
        return f"<sdtrace.Trace {self.path!r}: {len(self)} records>"


def open(path):  # noqa: A001 - the package's reader, as in `sdtrace.open`
    """Open a trace file."""
    return Trace(path)


def _tol_text(tol):
    if tol is None or isinstance(tol, str):
        return tol
    if isinstance(tol, dict):
        return ",".join(f"{k}={v}" for k, v in tol.items())
    if isinstance(tol, (int, float)):
        return f"rel={float(tol)}"
    raise TypeError(f"tol={tol!r}: give 'rel=R,abs=A', a dict {{'rel': R, 'abs': A}} or a relative tolerance")


def compare(a, b, tol=None, tol_key=(), allow_missing=None, fail_on=None, min_psnr=None, min_ssim=None):
    """Judge trace ``b`` against the reference ``a`` as ``sdtrace report`` does and return its
    JSON report as a dict. ``report["verdict"]`` holds ``class``, ``passed``, ``exit_code`` and
    ``summary``. ``tol``: ``"rel=1e-3,abs=1e-5"``, ``{"rel": 1e-3}`` or a relative tolerance;
    ``tol_key``: ``["unet.*=rel=1e-2"]``; ``allow_missing``: key globs or ``"all"`` (see
    docs/REPORT.md, *Completeness*)."""
    if isinstance(allow_missing, (list, tuple)):
        allow_missing = ",".join(allow_missing)
    text = _native.compare(
        os.fspath(a),
        os.fspath(b),
        tol=_tol_text(tol),
        tol_key=list(tol_key),
        allow_missing=allow_missing,
        fail_on=fail_on,
        min_psnr=min_psnr,
        min_ssim=min_ssim,
    )
    return json.loads(text)


def summarize(x):
    """The summary ``sdtrace record`` stores for a numpy array or torch tensor, as a dict."""
    buf = buffer(x)
    # One copy into a bytes object (writers read tensors in place instead).
    data = ctypes.string_at(buf.address, buf.nbytes) if buf.nbytes else b""
    return json.loads(_native.summarize(buf.dtype, data))
