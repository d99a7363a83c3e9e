"""Overhead of the webui extension (issue #22): a webui-style txt2img generation of the SD
1.5-shaped random-weight model (`sdtrace synth --size sd15 --format ldm`, no download) on the
CPU in f32, through the same webui stand-in the tests use (python/tests/fakes: Script runner,
ImageRNG, CFG denoiser callbacks, per-image VAE decode) and the LDM-structured PyTorch model
(python/tests/ldm_tiny.py), with the extension disabled vs enabled at capture light (and full),
interleaved rounds in one process.

    python benches/python/webui_overhead.py CKPT [--size 512] [--steps 2] [--rounds 2] [--full]

Prints one JSON line per run and, at the end, the median of the per-round ratios to the
disabled run of the same round. Because a shared machine's load moves whole runs by more than 5 %,
each run also measures, in the same process, the time spent in the UNet's forward calls and the
time spent recording (inside ``Writer.tensor``: the torch→buffer bridge and the Rust summary,
sketch and thumbnail), so the recording cost per sampler step can be set against the UNet's own
time per step — the figure a noisy machine disturbs least.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent.parent / "python" / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "fakes")]

import torch  # noqa: E402

import ldm_tiny  # noqa: E402
from ldm_tiny import openai_clip_tokenizer_files  # noqa: E402
from modules import processing, scripts  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also time capture full")
    a = ap.parse_args()
    from transformers import CLIPTokenizer

    model = ldm_tiny.load(a.ckpt)
    out = Path(tempfile.mkdtemp())
    vocab, merges = openai_clip_tokenizer_files(out)
    model.cond_stage_model = processing.FrozenCLIPEmbedderWithCustomWords(
        processing.FrozenCLIPEmbedder(model.cond_stage_model.transformer, CLIPTokenizer(str(vocab), str(merges)))
    )
    import importlib.util

    spec = importlib.util.spec_from_file_location("sdtrace_webui_script", HERE.parent.parent / "scripts" / "sdtrace_webui.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    script = module.SdtraceScript()
    script.args_from, script.args_to = 0, 3
    runner = scripts.ScriptRunner([script])

    def generate(enabled, capture, steps):
        p = processing.StableDiffusionProcessingTxt2Img(
            model, runner, [enabled, capture, str(out / capture)], "a lighthouse at dusk", "blurry",
            seed=1, steps=steps, width=a.size, height=a.size,
        )
        return processing.process_images(p)

    # In-run decomposition: wall time inside the UNet's forward calls, and inside Writer.tensor.
    clock = {"unet": 0.0, "unet_calls": 0, "record": 0.0, "records": 0}
    unet = model.model.diffusion_model
    started = []
    unet.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def unet_done(*_):
        clock["unet"] += time.perf_counter() - started.pop()
        clock["unet_calls"] += 1

    unet.register_forward_hook(unet_done)
    import sdtrace.writer

    plain_tensor = sdtrace.writer.Writer.tensor

    def timed_tensor(self, key, x):
        t0 = time.perf_counter()
        try:
            return plain_tensor(self, key, x)
        finally:
            clock["record"] += time.perf_counter() - t0
            clock["records"] += 1

    sdtrace.writer.Writer.tensor = timed_tensor

    generate(False, "off", 1)  # warm-up (allocator, kernels) outside the measurement
    modes = [("disabled", False, "light"), ("light", True, "light")] + ([("full", True, "full")] if a.full else [])
    times = {m: [] for m, _, _ in modes}
    runs = []
    for r in range(a.rounds):
        for name, enabled, capture in modes:
            clock.update(unet=0.0, unet_calls=0, record=0.0, records=0)
            start = time.perf_counter()
            generate(enabled, capture, a.steps)
            took = time.perf_counter() - start
            times[name].append(took)
            size = sum(f.stat().st_size for f in (out / capture).glob("*.sdt")) if enabled else 0
            run = {"round": r, "mode": name, "seconds": round(took, 3), "trace_bytes": size,
                   "unet_s": round(clock["unet"], 3), "unet_calls": clock["unet_calls"],
                   "record_s": round(clock["record"], 3), "records": clock["records"],
                   "load1": round(os.getloadavg()[0], 2)}
            runs.append(run)
            print(json.dumps(run), flush=True)
    print(f"\nsize {a.size}², {a.steps} steps, f32 CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in times:
        ratios = [t / b for t, b in zip(times[name], times["disabled"])]
        print(f"{name:9s} mean {statistics.mean(times[name]):8.2f} s  per-round ratios "
              + " ".join(f"{x:.3f}" for x in ratios) + f"  median {statistics.median(ratios):.3f}")
    # Recording cost per sampler step against the UNet's time per step, both from the same runs.
    base_unet = [x["unet_s"] / x["unet_calls"] for x in runs if x["mode"] == "disabled" and x["unet_calls"]]
    for name in times:
        if name == "disabled":
            continue
        rec = [x["record_s"] / a.steps for x in runs if x["mode"] == name]
        unet_on = [x["unet_s"] / x["unet_calls"] for x in runs if x["mode"] == name and x["unet_calls"]]
        per_step = statistics.median(rec)
        print(f"{name:9s} recording {per_step:.3f} s per step (median; all records of the run / steps), "
              f"UNet {statistics.median(base_unet):.2f} s per call disabled, {statistics.median(unet_on):.2f} s enabled "
              f"-> recording / UNet = {per_step / statistics.median(base_unet):.4f}")


if __name__ == "__main__":
    main()
