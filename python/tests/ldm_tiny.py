"""An LDM/CompVis-structured Stable Diffusion model in plain PyTorch, for testing the host
add-ons offline: the module tree and forward passes follow LDM's `openaimodel.UNetModel`,
`SpatialTransformer`/`CrossAttention`, the first-stage `Decoder`/`AttnBlock` and an HF
`CLIPTextModel` under `cond_stage_model.transformer`, so module paths are those the webui,
Forge and ComfyUI have (`model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn1`,
`first_stage_model.decoder.up.1`, ...). `load(path)` builds it from a single-file checkpoint
(`sdtrace synth --format ldm`), reading the architecture off the file's names with
`sdtrace.keys.LdmMap.from_names` and loading every weight strictly (a wrong module path fails).
Written for these tests from the published structure; not the hosts' code."""

import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from sdtrace.keys import LdmMap


def group_norm(ch, eps=1e-5):
    return nn.GroupNorm(32 if ch % 32 == 0 else math.gcd(32, ch), ch, eps=eps)


class GroupNorm32(nn.GroupNorm):
    """LDM's UNet normalisation: computed in f32, cast back."""

    def forward(self, x):
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedSequential(nn.Sequential):
    def forward(self, x, emb, context):
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            else:
                x = layer(x)
        return x


class ResBlock(nn.Module):
    def __init__(self, ch, emb_ch, out):
        super().__init__()
        self.in_layers = nn.Sequential(GroupNorm32(32, ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, out))
        self.out_layers = nn.Sequential(GroupNorm32(32, out), nn.SiLU(), nn.Dropout(0.0), nn.Conv2d(out, out, 3, padding=1))
        self.skip_connection = nn.Identity() if ch == out else nn.Conv2d(ch, out, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim, heads, dim_head):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head**-0.5
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(0.0))

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b, h = x.shape[0], self.heads
        split = lambda t: t.reshape(b, t.shape[1], h, -1).permute(0, 2, 1, 3).reshape(b * h, t.shape[1], -1)
        q, k, v = split(q), split(k), split(v)
        sim = torch.einsum("bid,bjd->bij", q, k) * self.scale
        out = torch.einsum("bij,bjd->bid", sim.softmax(dim=-1), v)
        out = out.reshape(b, h, out.shape[1], -1).permute(0, 2, 1, 3).reshape(b, out.shape[1], -1)
        return self.to_out(out)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, ch, heads, context_dim, linear):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        proj = (lambda: nn.Linear(ch, ch)) if linear else (lambda: nn.Conv2d(ch, ch, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(ch, heads, ch // heads, context_dim)])
        self.proj_out = proj()

    def forward(self, x, context):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        x = x.reshape(b, c, h * w).permute(0, 2, 1)
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.linear:
            x = self.proj_out(x)
        x = x.permute(0, 2, 1).reshape(b, c, h, w)
        if not self.linear:
            x = self.proj_out(x)
        return x + x_in


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.op = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x):
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class UNetModel(nn.Module):
    def __init__(self, channels, attention, heads, layers, context_dim, linear, in_ch=4):
        super().__init__()
        c0 = channels[0]
        self.model_channels = c0
        emb = c0 * 4
        self.time_embed = nn.Sequential(nn.Linear(c0, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([TimestepEmbedSequential(nn.Conv2d(in_ch, c0, 3, padding=1))])
        chans, ch = [c0], c0
        for level, (out, attn) in enumerate(zip(channels, attention)):
            for _ in range(layers):
                mods = [ResBlock(ch, emb, out)]
                ch = out
                if attn:
                    mods.append(SpatialTransformer(ch, heads[level], context_dim, linear))
                self.input_blocks.append(TimestepEmbedSequential(*mods))
                chans.append(ch)
            if level + 1 < len(channels):
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                chans.append(ch)
        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb, ch), SpatialTransformer(ch, heads[-1], context_dim, linear), ResBlock(ch, emb, ch)
        )
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channels))):
            out = channels[level]
            for i in range(layers + 1):
                mods = [ResBlock(ch + chans.pop(), emb, out)]
                ch = out
                if attention[level]:
                    mods.append(SpatialTransformer(ch, heads[level], context_dim, linear))
                if level and i == layers:
                    mods.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(*mods))
        self.out = nn.Sequential(GroupNorm32(32, c0), nn.SiLU(), nn.Conv2d(c0, in_ch, 3, padding=1))

    def forward(self, x, timesteps, context):
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb, context)
            hs.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)


def swish(x):
    return x * torch.sigmoid(x)


class VaeResnet(nn.Module):
    def __init__(self, ch, out):
        super().__init__()
        self.norm1 = nn.GroupNorm(32, ch, eps=1e-6)
        self.conv1 = nn.Conv2d(ch, out, 3, padding=1)
        self.norm2 = nn.GroupNorm(32, out, eps=1e-6)
        self.dropout = nn.Dropout(0.0)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1)
        if ch != out:
            self.nin_shortcut = nn.Conv2d(ch, out, 1)

    def forward(self, x):
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(self.dropout(swish(self.norm2(h))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.norm = nn.GroupNorm(32, ch, eps=1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(ch, ch, 1) for _ in range(4))

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        w = torch.bmm(q.reshape(b, c, hh * ww).permute(0, 2, 1), k.reshape(b, c, hh * ww)) * (c**-0.5)
        w = w.softmax(dim=2)
        h = torch.bmm(v.reshape(b, c, hh * ww), w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(h)


class Decoder(nn.Module):
    def __init__(self, channels, layers, z=4, out_ch=3):
        super().__init__()
        n = len(channels)
        ch = channels[-1]
        self.conv_in = nn.Conv2d(z, ch, 3, padding=1)
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = VaeResnet(ch, ch), AttnBlock(ch), VaeResnet(ch, ch)
        self.up = nn.ModuleList([nn.Module() for _ in range(n)])
        for level in reversed(range(n)):
            blocks = nn.ModuleList()
            for _ in range(layers + 1):
                blocks.append(VaeResnet(ch, channels[level]))
                ch = channels[level]
            self.up[level].block = blocks
            if level:
                self.up[level].upsample = Upsample(ch)
        self.norm_out = nn.GroupNorm(32, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        for level in reversed(range(len(self.up))):
            for block in self.up[level].block:
                h = block(h)
            if level:
                h = self.up[level].upsample(h)
        return self.conv_out(swish(self.norm_out(h)))


class Encoder(nn.Module):
    """Only its weights matter here (the tests decode); the names follow LDM's Encoder."""

    def __init__(self, channels, layers, z=4, in_ch=3):
        super().__init__()
        n = len(channels)
        self.conv_in = nn.Conv2d(in_ch, channels[0], 3, padding=1)
        self.down = nn.ModuleList([nn.Module() for _ in range(n)])
        ch = channels[0]
        for level in range(n):
            blocks = nn.ModuleList()
            for _ in range(layers):
                blocks.append(VaeResnet(ch, channels[level]))
                ch = channels[level]
            self.down[level].block = blocks
            if level + 1 < n:
                self.down[level].downsample = Upsample(ch)  # a conv named `conv`, as LDM's
        self.mid = nn.Module()
        self.mid.block_1, self.mid.attn_1, self.mid.block_2 = VaeResnet(ch, ch), AttnBlock(ch), VaeResnet(ch, ch)
        self.norm_out = nn.GroupNorm(32, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, 2 * z, 3, padding=1)


class AutoencoderKL(nn.Module):
    def __init__(self, channels, layers, z=4):
        super().__init__()
        self.encoder = Encoder(channels, layers, z)
        self.decoder = Decoder(channels, layers, z)
        self.quant_conv = nn.Conv2d(2 * z, 2 * z, 1)
        self.post_quant_conv = nn.Conv2d(z, z, 1)

    def decode(self, z):
        return self.decoder(self.post_quant_conv(z))


class LatentDiffusion(nn.Module):
    """`model.diffusion_model`, `first_stage_model`, `cond_stage_model.transformer`."""

    scale_factor = 0.18215

    def __init__(self, unet, vae, text):
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = unet
        self.first_stage_model = vae
        self.cond_stage_model = nn.Module()
        self.cond_stage_model.transformer = text
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        self.register_buffer("alphas_cumprod", torch.cumprod(1.0 - betas, dim=0).float(), persistent=False)

    def apply_model(self, x, t, cond):
        return self.model.diffusion_model(x, t, cond)

    def decode_first_stage(self, z):
        return self.first_stage_model.decode(z / self.scale_factor)


def load(path):
    """The model in a single-file checkpoint, f32 on the CPU, every weight loaded strictly."""
    from safetensors import safe_open
    from transformers import CLIPTextConfig, CLIPTextModel

    with safe_open(str(path), "pt") as f:
        sd = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    arch = LdmMap.from_names(list(sd)).arch()
    u = "model.diffusion_model."
    levels = len(arch["unet_attention"])
    per = arch["unet_layers_per_block"] + 1
    channels = [sd[f"{u}input_blocks.{1 + per * b}.0.out_layers.3.weight"].shape[0] for b in range(levels)]
    context = next(v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight"))
    linear = sd[f"{u}input_blocks.1.1.proj_in.weight"].dim() == 2
    heads = json.loads(meta.get("sdtrace.unet_attention_heads", "null")) or ([8] * levels if context == 768 else [c // 64 for c in channels])
    unet = UNetModel(channels, arch["unet_attention"], heads, per - 1, context, linear)
    vl = arch["vae_levels"]
    vae_ch = [sd[f"first_stage_model.decoder.up.{i}.block.0.conv2.weight"].shape[0] for i in range(vl)]
    vae = AutoencoderKL(vae_ch, arch["vae_layers_per_block"])
    t = "cond_stage_model.transformer.text_model."
    hidden = sd[f"{t}embeddings.token_embedding.weight"].shape[1]
    cfg = CLIPTextConfig(
        vocab_size=sd[f"{t}embeddings.token_embedding.weight"].shape[0],
        hidden_size=hidden,
        intermediate_size=sd[f"{t}encoder.layers.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=arch["text_layers"],
        num_attention_heads=int(meta.get("sdtrace.text_encoder_attention_heads", hidden // 64)),
        max_position_embeddings=sd[f"{t}embeddings.position_embedding.weight"].shape[0],
        hidden_act="quick_gelu",
    )
    text = CLIPTextModel(cfg)
    model = LatentDiffusion(unet, vae, text)
    if not hasattr(text, "text_model"):  # transformers 5: no `text_model` level
        sd = {k.replace(t, "cond_stage_model.transformer.", 1): v for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(
        {k: v for k, v in sd.items() if not k.endswith("position_ids")}, strict=False
    )
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{path}: the LDM model does not match the file: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
