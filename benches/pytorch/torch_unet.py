"""diffusers/PyTorch side of `benches/pytorch/compare.sh` (issue #11).

gen:  a random UNet2DConditionModel (--arch sd15: the stock SD 1.5 unet config; sdxl: SDXL base 1.0's;
      sdxl-tiny: SDXL's structure at tiny widths; torch.manual_seed(0),
      PyTorch's default init, every norm weight/bias perturbed so a loader that ignored them is caught),
      saved with save_pretrained as a diffusers folder (f32); nothing is downloaded.
inputs: seeded inputs for one resolution (sample [2,4,H/8,W/8], encoder_hidden_states [2,77,width],
      timestep; for SDXL also text_embeds [2,pooled] and time_ids [2,6] = (H, W, 0, 0, H, W)), saved as
      safetensors.
run:  times forwards (f32, CPU, torch.set_num_threads(N)), writes the output, prints one JSON line
      with the times and the peak RSS of this process.
"""
import argparse, json, os, resource, sys, time

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file

SD15 = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    block_out_channels=[320, 640, 1280, 1280], layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8,
)


SDXL = dict(
    SD15, sample_size=128, down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], block_out_channels=[320, 640, 1280],
    attention_head_dim=[5, 10, 20], transformer_layers_per_block=[1, 2, 10], cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_TINY = dict(
    SDXL, sample_size=8, block_out_channels=[32, 64, 64], attention_head_dim=[2, 4, 4],
    transformer_layers_per_block=[1, 1, 2], cross_attention_dim=64, addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,
)
ARCHS = {"sd15": SD15, "sdxl": SDXL, "sdxl-tiny": SDXL_TINY}


def gen(root, arch):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**ARCHS[arch])
    with torch.no_grad():
        for name, m in unet.named_modules():
            if isinstance(m, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
                m.weight.add_(torch.randn_like(m.weight) * 0.05)
                m.bias.add_(torch.randn_like(m.bias) * 0.05)
    # One file (diffusers shards above 10 GB by default; SDXL's f32 UNet is 10.3 GB).
    unet.save_pretrained(os.path.join(root, "unet"), safe_serialization=True, max_shard_size="20GB")


def inputs(root, res):
    cfg = json.load(open(os.path.join(root, "unet", "config.json")))
    g = torch.Generator().manual_seed(res)
    side = res // 8
    t = {
        "sample": torch.randn(2, 4, side, side, generator=g),
        "encoder_hidden_states": torch.randn(2, 77, cfg["cross_attention_dim"], generator=g),
        "timestep": torch.tensor([500.0]),
    }
    if cfg.get("addition_embed_type") == "text_time":
        pooled = cfg["projection_class_embeddings_input_dim"] - 6 * cfg["addition_time_embed_dim"]
        t["text_embeds"] = torch.randn(2, pooled, generator=g)
        t["time_ids"] = torch.tensor([[res, res, 0, 0, res, res]] * 2, dtype=torch.float32)
    save_file(t, os.path.join(root, f"inputs_{res}.safetensors"))


def run(root, res, warmup, iters, threads):
    torch.set_num_threads(threads)
    unet = UNet2DConditionModel.from_pretrained(os.path.join(root, "unet")).eval()
    inp = load_file(os.path.join(root, f"inputs_{res}.safetensors"))
    times = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            t0 = time.perf_counter()
            added = {k: inp[k] for k in ("text_embeds", "time_ids") if k in inp}
            out = unet(inp["sample"], inp["timestep"], encoder_hidden_states=inp["encoder_hidden_states"],
                       added_cond_kwargs=added or None).sample
            dt = time.perf_counter() - t0
            if i >= warmup:
                times.append(dt)
    save_file({"out": out.contiguous()}, os.path.join(root, f"torch_out_{res}.safetensors"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"impl": "torch", "res": res, "times": times, "peak_rss": peak,
                      "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability()}))


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["gen", "inputs", "run"])
    p.add_argument("--root", required=True)
    p.add_argument("--res", type=int, default=512)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--arch", choices=sorted(ARCHS), default="sd15")
    a = p.parse_args()
    {"gen": lambda: gen(a.root, a.arch), "inputs": lambda: inputs(a.root, a.res),
     "run": lambda: run(a.root, a.res, a.warmup, a.iters, a.threads)}[a.cmd]()
