"""The bridge from numpy arrays and torch tensors to the bytes the Rust side reads.

A tensor crosses once: it is made a contiguous CPU buffer (a device tensor is copied to the
host, nothing else is copied when it already is one) and Rust reads it in place by address while
this module holds a reference to it. f16 and bf16 stay 16-bit patterns; numpy has no bf16, so a
bf16 payload comes back as torch.bfloat16 or, without torch, as its uint16 bit patterns.
"""

import sys

import numpy as np

# sdtrace dtype names ↔ numpy
_NUMPY = {
    "f32": np.dtype("<f4"),
    "f16": np.dtype("<f2"),
    "f64": np.dtype("<f8"),
    "i64": np.dtype("<i8"),
    "i32": np.dtype("<i4"),
    "u8": np.dtype("u1"),
}
_FROM_NUMPY = {(d.kind, d.itemsize): name for name, d in _NUMPY.items()}

if sys.byteorder != "little":  # pragma: no cover - every platform PyTorch ships for
    raise ImportError("sdtrace reads tensors in place and needs a little-endian machine")


def _torch():
    return sys.modules.get("torch")


def _torch_names(torch):
    return {
        torch.float32: "f32",
        torch.float16: "f16",
        torch.bfloat16: "bf16",
        torch.float64: "f64",
        torch.int64: "i64",
        torch.int32: "i32",
        torch.uint8: "u8",
    }


class Buffer:
    """A contiguous little-endian CPU buffer: its dtype name, shape, address and size, and the
    object that keeps it alive."""

    __slots__ = ("dtype", "shape", "address", "nbytes", "owner")

    def __init__(self, dtype, shape, address, nbytes, owner):
        self.dtype = dtype
        self.shape = shape
        self.address = address
        self.nbytes = nbytes
        self.owner = owner


def buffer(x, key="tensor"):
    """The :class:`Buffer` of a numpy array or torch tensor (copied to the CPU or made
    contiguous only when it is not already)."""
    torch = _torch()
    if torch is not None and isinstance(x, torch.Tensor):
        name = _torch_names(torch).get(x.dtype)
        if name is None:
            raise TypeError(f"{key}: torch dtype {x.dtype} has no sdtrace equivalent")
        t = x.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.contiguous()
        return Buffer(name, list(t.shape), t.data_ptr(), t.numel() * t.element_size(), t)
    a = np.asarray(x)
    name = _FROM_NUMPY.get((a.dtype.kind, a.dtype.itemsize))
    if name is None:
        raise TypeError(f"{key}: numpy dtype {a.dtype} has no sdtrace equivalent")
    a = np.ascontiguousarray(a, dtype=_NUMPY[name])
    return Buffer(name, list(a.shape), a.ctypes.data, a.nbytes, a)


def to_array(dtype, shape, data, as_="numpy"):
    """A payload (sdtrace dtype name, shape, bytes) as a numpy array or torch tensor."""
    shape = tuple(int(d) for d in shape)
    if as_ == "torch":
        import torch

        names = {v: k for k, v in _torch_names(torch).items()}
        if not data:
            return torch.empty(shape, dtype=names[dtype])
        return torch.frombuffer(bytearray(data), dtype=names[dtype]).reshape(shape)
    if as_ != "numpy":
        raise ValueError(f"as_={as_!r}: expected 'numpy' or 'torch'")
    if dtype == "bf16":
        return np.frombuffer(data, dtype="<u2").reshape(shape)
    return np.frombuffer(data, dtype=_NUMPY[dtype]).reshape(shape)
