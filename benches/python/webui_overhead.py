"""Overhead of the webui extension (issue #22): a webui-style txt2img generation of the SD
1.5-shaped random-weight model (`sdtrace synth --size sd15 --format ldm`, no download) on the
CPU in f32, through the same webui stand-in the tests use (python/tests/fakes: Script runner,
ImageRNG, CFG denoiser callbacks, per-image VAE decode) and the LDM-structured PyTorch model
(python/tests/ldm_tiny.py), with the extension disabled vs enabled at capture light (and full),
interleaved rounds in one process.

    python benches/python/webui_overhead.py CKPT [--size 512] [--steps 2] [--rounds 2] [--full]

Prints one JSON line per run and the mean wall times with their ratio to the disabled run.
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
from modules import processing, scripts  # noqa: E402
from test_webui import openai_clip_tokenizer_files  # noqa: E402


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

    generate(False, "off", 1)  # warm-up (allocator, kernels) outside the measurement
    modes = [("disabled", False, "light"), ("light", True, "light")] + ([("full", True, "full")] if a.full else [])
    times = {m: [] for m, _, _ in modes}
    for r in range(a.rounds):
        for name, enabled, capture in modes:
            start = time.perf_counter()
            generate(enabled, capture, a.steps)
            took = time.perf_counter() - start
            times[name].append(took)
            size = sum(f.stat().st_size for f in (out / capture).glob("*.sdt")) if enabled else 0
            print(json.dumps({"round": r, "mode": name, "seconds": round(took, 3), "trace_bytes": size}), flush=True)
    base = statistics.mean(times["disabled"])
    print(f"\nsize {a.size}², {a.steps} steps, f32 CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for name in times:
        m = statistics.mean(times[name])
        print(f"{name:9s} {m:8.2f} s  ratio {m / base:.3f}")


if __name__ == "__main__":
    main()
