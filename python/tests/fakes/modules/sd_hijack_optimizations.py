"""Stand-in for modules/sd_hijack_optimizations.py: the split cross-attention forwards that the
webui puts in place of `CrossAttention.forward` at class level, choosing their slices from the
free memory at each call, as the webui's do:

- Doggettx (`split_cross_attention_forward`, `--opt-split-attention`, the default on CUDA): the
  score tensor needs `B·h × Nq × Nk × bytes × (3 for f16, else 2.5)`; when that exceeds the free
  memory, the queries are cut into 2^⌈log₂(needed / free)⌉ slices (more than 64: "Not enough
  memory" error), each one einsum, softmax, einsum;
- V1 (`split_cross_attention_forward_v1`): the batch·heads rows two at a time, whatever the memory.

`get_available_vram()` reports `shared.free_memory` (the test's "card"). Written for the tests
from the webui's published behaviour; q, k, v laid out `(b·h, n, d)` as the webui's rearrange
does."""

import math

import torch

from . import sd_hijack, shared


def get_available_vram():
    return shared.free_memory


def _heads_first(t, h):
    b, n, _ = t.shape
    return t.reshape(b, n, h, -1).permute(0, 2, 1, 3).reshape(b * h, n, -1)


def _heads_last(t, h):
    bh, n, d = t.shape
    return t.reshape(bh // h, h, n, d).permute(0, 2, 1, 3).reshape(bh // h, n, h * d)


def split_cross_attention_forward(self, x, context=None, mask=None, **kwargs):
    h = self.heads
    context = x if context is None else context
    q_in, k_in, v_in = self.to_q(x), self.to_k(context), self.to_v(context)
    k_in = k_in * self.scale
    q, k, v = (_heads_first(t, h) for t in (q_in, k_in, v_in))
    r1 = torch.zeros(q.shape[0], q.shape[1], v.shape[2], device=q.device, dtype=q.dtype)
    mem_free_total = get_available_vram()
    tensor_size = q.shape[0] * q.shape[1] * k.shape[1] * q.element_size()
    mem_required = tensor_size * (3 if q.element_size() == 2 else 2.5)
    steps = 1
    if mem_required > mem_free_total:
        steps = 2 ** math.ceil(math.log(mem_required / mem_free_total, 2))
    if steps > 64:
        raise RuntimeError(f"Not enough memory, use lower resolution. Need: {mem_required / 64 / 2**30:0.1f}GB free, Have:{mem_free_total / 2**30:0.1f}GB free")
    slice_size = q.shape[1] // steps
    for i in range(0, q.shape[1], slice_size):
        end = min(i + slice_size, q.shape[1])
        s1 = torch.einsum("b i d, b j d -> b i j", q[:, i:end], k)
        s2 = s1.softmax(dim=-1, dtype=q.dtype)
        r1[:, i:end] = torch.einsum("b i j, b j d -> b i d", s2, v)
    return self.to_out(_heads_last(r1, h))


def split_cross_attention_forward_v1(self, x, context=None, mask=None, **kwargs):
    h = self.heads
    context = x if context is None else context
    q, k, v = (_heads_first(t, h) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    r1 = torch.zeros(q.shape[0], q.shape[1], v.shape[2], device=q.device, dtype=q.dtype)
    for i in range(0, q.shape[0], 2):
        end = i + 2
        s1 = torch.einsum("b i d, b j d -> b i j", q[i:end], k[i:end]) * self.scale
        r1[i:end] = torch.einsum("b i j, b j d -> b i d", s1.softmax(dim=-1), v[i:end])
    return self.to_out(_heads_last(r1, h))


OPTIMIZATIONS = {"Doggettx": split_cross_attention_forward, "V1": split_cross_attention_forward_v1}


def apply(cross_attention_class, name):
    """What `sd_hijack.apply_optimizations` does: replace the class's forward, name the method;
    returns the undo."""
    original = cross_attention_class.forward
    cross_attention_class.forward = OPTIMIZATIONS[name]
    previous = sd_hijack.model_hijack.optimization_method
    sd_hijack.model_hijack.optimization_method = name

    def undo():
        cross_attention_class.forward = original
        sd_hijack.model_hijack.optimization_method = previous

    return undo
