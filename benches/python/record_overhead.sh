#!/usr/bin/env bash
# Issue #21's benchmark: `sdtrace.record` overhead on a diffusers SD 1.5-shaped run (see
# record_overhead.py). Uses the test venv (tests/run.sh makes it) and writes the random SD 1.5
# model once to $SDTRACE_BENCH_WORK (default ~/.cache/sdtrace-bench/sd15-pipeline).
#
#   benches/python/record_overhead.sh [--size 512] [--steps 2] [--rounds 2]
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${SDTRACE_PY_VENV:-${HOME:-/tmp}/.cache/sdtrace-py/venv}"
model="${SDTRACE_BENCH_WORK:-${HOME:-/tmp}/.cache/sdtrace-bench}/sd15-pipeline"
cargo build --release -q
[ -f "$model/unet/config.json" ] || "${CARGO_TARGET_DIR:-target}/release/sdtrace" synth --out "$model" --size sd15
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop -q --release
"$venv/bin/python" benches/python/record_overhead.py "$model" "$@"
