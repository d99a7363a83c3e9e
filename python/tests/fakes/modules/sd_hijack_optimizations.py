"""Stand-in for modules/sd_hijack_optimizations.py: the split cross-attention forwards that the
webui puts in place of `CrossAttention.forward` at class level, choosing their slices from the
free memory at each call, as the webui's do:

- Doggettx (`split_cross_attention_forward`, `--opt-split-attention`, the default on CUDA): the
  score tensor needs `B·h × Nq × Nk × bytes × (3 for f16, else 2.5)`; when that exceeds the free
  memory, the queries are cut into 2^⌈log₂(needed / free)⌉ slices (more than 64: "Not enough
  memory" error), each one einsum, softmax, einsum;
- V1 (`split_cross_attention_forward_v1`): the batch·heads rows two at a time, whatever the memory;
- sub-quadratic (`sub_quad_attention_forward`, `--opt-sub-quad-attention`, Birch-san's chunked
  attention): queries in chunks of 1024; when the q·kᵀ bytes exceed 70 % of the free memory,
  keys in chunks of max(⌊√Nk⌋, that budget / (B·h · bytes · (d_k + d_v))), one `baddbmm` per
  (query chunk, key chunk), the chunks' softmax combined by their maxima; otherwise one
  `baddbmm` and softmax per query chunk.

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


def _chunk_scores(q, k, scale):
    return torch.baddbmm(torch.empty(q.shape[0], q.shape[1], k.shape[1], dtype=q.dtype), q, k.transpose(1, 2), alpha=scale, beta=0)


def efficient_dot_product_attention(q, k, v, query_chunk_size=1024, kv_chunk_size=None, kv_chunk_size_min=None):
    k_tokens = k.shape[1]
    scale = q.shape[-1] ** -0.5
    kv_chunk_size = min(kv_chunk_size or int(math.sqrt(k_tokens)), k_tokens)
    if kv_chunk_size_min is not None:
        kv_chunk_size = max(kv_chunk_size, kv_chunk_size_min)
    out = []
    for i in range(0, q.shape[1], query_chunk_size):
        qc = q[:, i:i + query_chunk_size]
        if k_tokens <= kv_chunk_size:
            out.append(torch.bmm(_chunk_scores(qc, k, scale).softmax(dim=-1), v))
            continue
        values, weights, maxima = [], [], []
        for j in range(0, k_tokens, kv_chunk_size):
            s = _chunk_scores(qc, k[:, j:j + kv_chunk_size], scale)
            m = torch.amax(s, dim=-1, keepdim=True).detach()
            e = torch.exp(s - m)
            values.append(torch.bmm(e, v[:, j:j + kv_chunk_size]))
            weights.append(e.sum(dim=-1))
            maxima.append(m.squeeze(-1))
        values, weights, maxima = torch.stack(values), torch.stack(weights), torch.stack(maxima)
        diffs = torch.exp(maxima - maxima.max(dim=0, keepdim=True).values)
        out.append((values * diffs.unsqueeze(-1)).sum(dim=0) / (weights * diffs).sum(dim=0).unsqueeze(-1))
    return torch.cat(out, dim=1)


def sub_quad_attention_forward(self, x, context=None, mask=None, **kwargs):
    h = self.heads
    context = x if context is None else context
    q, k, v = (_heads_first(t, h) for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
    bytes_per_token = torch.finfo(q.dtype).bits // 8
    threshold = int(get_available_vram() * 0.7)
    kv_min = threshold // (q.shape[0] * bytes_per_token * (k.shape[2] + v.shape[2]))
    kv_chunk_size = k.shape[1] if q.shape[0] * bytes_per_token * q.shape[1] * k.shape[1] <= threshold else None
    r = efficient_dot_product_attention(q, k, v, 1024, kv_chunk_size, kv_min)
    return self.to_out(_heads_last(r, h))


OPTIMIZATIONS = {
    "Doggettx": split_cross_attention_forward,
    "V1": split_cross_attention_forward_v1,
    "sub-quadratic": sub_quad_attention_forward,
}


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
