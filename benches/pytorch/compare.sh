#!/usr/bin/env bash
# Our UNet forward vs diffusers/PyTorch on this CPU (issue #11), in one run.
#
#   benches/pytorch/compare.sh [RES ...]        # default: 512 832
#   SDTRACE_BENCH_ARCH=sdxl benches/pytorch/compare.sh 1024   # SDXL's UNet (sdxl-tiny: tiny widths)
#
# First use: creates a venv with torch, diffusers, safetensors and numpy from PyPI (nothing else
# is downloaded: the SD 1.5-shaped model has random weights made by torch_unet.py gen). The work
# folder (venv, model 3.4 GB, inputs, outputs, logs) is $SDTRACE_TORCH_WORK or
# ~/.cache/sdtrace-bench. For each resolution it runs PyTorch, then ours (cargo bench --bench
# torch_compare), SDTRACE_BENCH_ROUNDS times (default 1) interleaved, f32, batch 2, all cores;
# 512²: one warm-up and two timed forwards per process, larger: one timed forward. It prints a
# table with the mean times, the ratio ours/PyTorch, the peak RSS of each process and the
# relative L2 of our output against PyTorch's, and keeps the JSON lines in results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${SDTRACE_TORCH_WORK:-${HOME:-/tmp}/.cache/sdtrace-bench}"
venv="$work/venv"
arch="${SDTRACE_BENCH_ARCH:-sd15}"  # sd15, sdxl or sdxl-tiny
root="$work/$arch-random"
py="$venv/bin/python"
script=benches/pytorch/torch_unet.py
rounds="${SDTRACE_BENCH_ROUNDS:-1}"
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(512 832)
mkdir -p "$work"

if ! "$py" -c 'import torch, diffusers, safetensors' 2>/dev/null; then
  echo "setting up $venv (torch, diffusers; several GB, first use only)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch diffusers safetensors numpy
fi
if [ ! -f "$root/unet/config.json" ]; then
  echo "generating the random $arch-shaped UNet in $root" >&2
  "$py" "$script" gen --root "$root" --arch "$arch"
fi
cargo bench --bench torch_compare --no-run -q 2>/dev/null || cargo bench --bench torch_compare --no-run

results="$work/results.jsonl"
: > "$results"
for res in "${sizes[@]}"; do
  if [ "$res" -le 640 ]; then warmup=1 iters=2; else warmup=0 iters=1; fi
  [ -f "$root/inputs_$res.safetensors" ] || "$py" "$script" inputs --root "$root" --res "$res"
  for round in $(seq "$rounds"); do
    echo "[$res² round $round] PyTorch..." >&2
    "$py" "$script" run --root "$root" --res "$res" --warmup "$warmup" --iters "$iters" | tee -a "$results"
    echo "[$res² round $round] sdtrace..." >&2
    SDTRACE_TORCH_ROOT="$root" SDTRACE_BENCH_RES="$res" SDTRACE_BENCH_WARMUP="$warmup" \
      SDTRACE_BENCH_ITERS="$iters" cargo bench -q --bench torch_compare | tee -a "$results"
  done
done

"$py" - "$results" <<'PY'
import json, os, platform, statistics, subprocess, sys, datetime
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
torch_v = next((r["torch"] for r in rows if r["impl"] == "torch"), "?")
print(f"\n{datetime.date.today()} · {cpu} · {os.cpu_count()} threads · torch {torch_v}")
print("| size | PyTorch s/forward | sdtrace s/forward | ratio | peak RSS PyTorch | peak RSS sdtrace | ratio | rel. L2 vs PyTorch |")
print("|---|---|---|---|---|---|---|---|")
for res in sorted({r["res"] for r in rows}):
    t = [x for r in rows if r["res"] == res and r["impl"] == "torch" for x in r["times"]]
    o = [x for r in rows if r["res"] == res and r["impl"] == "sdtrace" for x in r["times"]]
    pt = max(r["peak_rss"] for r in rows if r["res"] == res and r["impl"] == "torch")
    po = max(r["peak_rss"] or 0 for r in rows if r["res"] == res and r["impl"] == "sdtrace")
    l2 = max(r["rel_l2_vs_torch"] or 0 for r in rows if r["res"] == res and r["impl"] == "sdtrace")
    mt, mo = statistics.mean(t), statistics.mean(o)
    print(f"| {res}² | {mt:.2f} | {mo:.2f} | **{mo/mt:.2f}×** | {pt/1e9:.2f} GB | {po/1e9:.2f} GB | {po/pt:.2f}× | {l2:.2e} |")
PY
