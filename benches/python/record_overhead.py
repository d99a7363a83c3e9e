"""Overhead of `sdtrace.record` on a diffusers run (issue #21): the same SD 1.5-shaped
random-weight pipeline (written by `sdtrace synth --size sd15`, no download), f32 on the CPU,
uninstrumented vs capture light vs capture full, interleaved rounds in one process.

    python benches/python/record_overhead.py MODEL_DIR [--size 512] [--steps 2] [--rounds 2]

Prints one JSON line per run and a summary with the mean wall times and the ratios to the
uninstrumented run. benches/python/record_overhead.sh sets up the model and the venv.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

import sdtrace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    pipe = StableDiffusionPipeline.from_pretrained(a.model, safety_checker=None, requires_safety_checker=False, local_files_only=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    args = dict(prompt="a lighthouse at dusk", negative_prompt="blurry", num_inference_steps=a.steps,
                height=a.size, width=a.size, output_type="np")
    out = tempfile.mkdtemp()
    times = {"off": [], "light": [], "full": []}
    # Warm-up (allocator, kernels) outside the measurement.
    pipe(generator=torch.Generator().manual_seed(1), **{**args, "num_inference_steps": 1})
    for r in range(a.rounds):
        for mode in ("off", "light", "full"):
            path = os.path.join(out, f"{mode}.sdt")
            start = time.perf_counter()
            if mode == "off":
                pipe(generator=torch.Generator().manual_seed(1), **args)
            else:
                with sdtrace.record(pipe, path, capture=mode):
                    pipe(generator=torch.Generator().manual_seed(1), **args)
            took = time.perf_counter() - start
            times[mode].append(took)
            size = os.path.getsize(path) if mode != "off" else 0
            print(json.dumps({"round": r, "mode": mode, "seconds": round(took, 3), "trace_bytes": size}), flush=True)
    base = statistics.mean(times["off"])
    print(f"\nsize {a.size}², {a.steps} steps, f32 CPU, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for mode in ("off", "light", "full"):
        m = statistics.mean(times[mode])
        print(f"{mode:6s} {m:8.2f} s  ratio {m / base:.3f}")


if __name__ == "__main__":
    main()
