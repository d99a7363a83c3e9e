#!/usr/bin/env bash
# Issue #8's GPU verification, run ON the GPU machine (through the device tool; see
# .ci/gpu/verify.sh, which builds and packs the binary and prints the exact call).
#
# Usage: bash .ci/gpu/on-gpu.sh [BINARY]        BINARY: .gpu/sdtrace.xz (default) or a plain binary
#
# With one sdtrace binary built with `--features cuda` it records, with the same prompt, seed,
# sampler and light capture:
#   tiny model  64x64, 10 steps  f32 and f16: GPU twice, this machine's CPU once
#   sd15 shapes 512x512, 4 steps  f32 and f16: GPU twice, CPU once
#   sd15 shapes 832x832, 4 steps  f32 and f16: GPU twice, CPU once (the CPU at 832 f16 likely
#                                 does not fit the budget and is then skipped, and said so)
# (sd15 = `sdtrace synth --size sd15`: SD 1.5's real shapes with random weights), compares CPU vs
# GPU, GPU run 1 vs run 2 (determinism) and GPU f32 vs f16 with `sdtrace report` (text, JSON and
# `--save`), and packs logs, timings, headers, reports and the small traces into $OUT (at most 8
# files of 16 MiB each come back). Jobs run in order of importance; one that would not finish
# within the time budget is skipped and said so, so a budget overrun still brings results back.
# Finished recordings in the work folder are reused when run again on the same machine.
#
# Environment:
#   OUT                   where results go (the device tool sets it; default $WORK/out)
#   SDTRACE_GPU_BUDGET_S  seconds for everything, packing included (default 500)
#   SDTRACE_GPU_DEVICE    the GPU device (default cuda:0); `cpu` tests this script without a GPU
#   SDTRACE_GPU_ONLY      `tiny` runs the tiny model's part only (default: all)
#   SDTRACE_GPU_WORK      work folder for models and traces (default /tmp/sdtrace-gpu)
#   SDTRACE_GPU_SD15_AS   `tiny` puts the tiny model in the sd15 runs (tests the whole flow fast)
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${SDTRACE_GPU_WORK:-/tmp/sdtrace-gpu}"
GPU="${SDTRACE_GPU_DEVICE:-cuda:0}"

if [ "${1:-}" != --inner ]; then
  export SDTRACE_GPU_START="${SDTRACE_GPU_START:-$(date +%s)}"
  packed="${1:-.gpu/sdtrace.xz}"
  [ -f "$packed" ] || { echo "on-gpu: no binary at $packed (run .ci/gpu/verify.sh here first)" >&2; exit 2; }
  mkdir -p "$WORK"
  bin="$WORK/sdtrace"
  case "$packed" in
    *.xz) python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" \
            "$packed" "$bin" || { echo "on-gpu: cannot unpack $packed" >&2; exit 2; } ;;
    *) cp "$packed" "$bin" || exit 2 ;;
  esac
  chmod +x "$bin"
  if [ "$GPU" = cpu ]; then
    exec bash "${BASH_SOURCE[0]}" --inner "$bin"
  fi
  # run-on-gpu.sh prints nvidia-smi, finds the CUDA 13 user-space libraries, sets
  # LD_LIBRARY_PATH and runs its "binary": here bash running this script's inner part.
  exec bash "$HERE/run-on-gpu.sh" "$(command -v bash)" "${BASH_SOURCE[0]}" --inner "$bin"
fi

BIN="$2"
START="${SDTRACE_GPU_START:-$(date +%s)}"
BUDGET="${SDTRACE_GPU_BUDGET_S:-500}"
RESERVE=25                    # seconds kept for the last reports and packing
DEADLINE=$((START + BUDGET))
OUT="${OUT:-$WORK/out}"
M="$WORK/models" T="$WORK/traces" L="$WORK/logs" R="$WORK/reports"
mkdir -p "$OUT" "$M" "$T" "$L" "$R"
OUT="$(cd "$OUT" && pwd)"
TIMINGS="$WORK/timings.tsv"
RUNLOG="$WORK/run.log"
: > "$RUNLOG"
[ -f "$TIMINGS" ] || printf 'name\tmodel\tdevice\tdtype\tsize\tsteps\trc\twall_s\n' > "$TIMINGS"
PROMPT="a photograph of an astronaut riding a horse, (detailed:1.2)"
NEGATIVE="blurry"

left() { echo $((DEADLINE - $(date +%s))); }
log() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$RUNLOG"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }

log "on-gpu: binary $BIN, device $GPU, budget ${BUDGET} s, work $WORK, out $OUT"
if ldd "$BIN" | tee -a "$RUNLOG" | grep -q 'not found'; then
  log "!! libraries not found (above); the binary cannot start"
fi
"$BIN" --version 2>&1 | tee -a "$RUNLOG"
if [ "$GPU" != cpu ]; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total,memory.used \
    --format=csv 2>&1 | tee -a "$RUNLOG"
  # GPU memory in use every 0.5 s, for the peak (ended by its pid below).
  nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader -lms 500 \
    > "$WORK/gpumem.csv" 2>/dev/null &
  SMI_PID=$!
fi
nproc | sed 's/^/cpu cores: /' | tee -a "$RUNLOG"

# synth NAME SIZE NEED: a random-weight model (deterministic; kept between runs).
synth() {
  local name=$1 size=$2 need=$3
  if [ -f "$M/$name/unet/config.json" ] && [ -f "$M/$name/.done" ]; then return 0; fi
  if [ "$(($(left) - RESERVE))" -lt "$need" ]; then log "skip synth $name: $(left) s left"; return 1; fi
  local t0; t0=$(now)
  rm -rf "${M:?}/$name"
  if timeout $(($(left) - RESERVE)) "$BIN" synth --out "$M/$name" --size "$size" --seed 1 \
       > "$L/synth-$name.log" 2>&1; then
    touch "$M/$name/.done"
    log "synth $name ($size): $(since "$t0") s, $(du -sh "$M/$name" | cut -f1)"
  else
    log "!! synth $name failed: $(tail -n 3 "$L/synth-$name.log")"
    return 1
  fi
}

# rec NAME MODEL DEVICE DTYPE SIZE STEPS NEED: one recording, skipped when fewer than NEED
# seconds are left. A run over the budget gets Ctrl-C (the trace is closed as interrupted).
rec() {
  local name=$1 model=$2 dev=$3 dtype=$4 size=$5 steps=$6 need=$7
  if [ -f "$T/$name.sdt" ] && awk -F'\t' -v n="$name" '$1 == n && $7 == "0" {ok = 1} END {exit !ok}' "$TIMINGS"; then
    log "have $name"; return 0
  fi
  [ -f "$M/$model/.done" ] || { log "skip $name: no $model model"; return 1; }
  local budget=$(($(left) - RESERVE))
  if [ "$budget" -lt "$need" ]; then
    log "skip $name: $budget s left, needs about $need s"
    printf '%s\t%s\t%s\t%s\t%s\t%s\tskipped\t-\n' "$name" "$model" "$dev" "$dtype" "$size" "$steps" >> "$TIMINGS"
    return 1
  fi
  local t0 rc; t0=$(now)
  timeout --signal=INT --kill-after=15 "$budget" "$BIN" record --model "$M/$model" \
    --device "$dev" --dtype "$dtype" --size "$size" --steps "$steps" --seed 42 \
    --prompt "$PROMPT" --negative "$NEGATIVE" -o "$T/$name.sdt" > "$L/$name.log" 2>&1
  rc=$?
  local wall; wall=$(since "$t0")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$model" "$dev" "$dtype" "$size" "$steps" "$rc" "$wall" >> "$TIMINGS"
  log "record $name ($dev $dtype $size, $steps steps): exit $rc, $wall s; $(tail -n 1 "$L/$name.log")"
  [ -f "$T/$name.sdt" ] && "$BIN" info --json "$T/$name.sdt" > "$R/$name.info.json" 2>> "$L/$name.log"
  return 0
}

# compare NAME A B: report A (reference) vs B as text, JSON and a saved comparison.
compare() {
  local name=$1 a=$2 b=$3
  if [ ! -f "$T/$a.sdt" ] || [ ! -f "$T/$b.sdt" ]; then log "skip report $name: missing trace"; return 1; fi
  [ -f "$R/$name.json" ] && return 0
  local limit=$(($(left) - 5))
  [ "$limit" -gt 120 ] && limit=120
  [ "$limit" -ge 5 ] || { log "skip report $name: out of time"; return 1; }
  local t0 rc; t0=$(now)
  timeout "$limit" "$BIN" report "$T/$a.sdt" "$T/$b.sdt" -o "$R/$name.txt" --save "$R/$name.cmp.json" \
    2> "$L/report-$name.log"
  rc=$?
  "$BIN" report --from "$R/$name.cmp.json" --format json -o "$R/$name.json" 2>> "$L/report-$name.log"
  log "report $name ($a vs $b): exit $rc, $(since "$t0") s: $(sed -n 2p "$R/$name.txt" 2>/dev/null)"
}

# pack ARCHIVE FILES...: FILES (relative to $WORK, the current folder) into a .tar.xz in $OUT
# (moved out again, and said so, when over the 16 MiB that come back).
pack() {
  local archive=$1; shift
  local files=() f
  for f in "$@"; do [ -e "$f" ] && files+=("$f"); done
  [ ${#files[@]} -gt 0 ] || { log "nothing for $archive"; return 0; }
  python3 - "$OUT/$archive" "${files[@]}" <<'EOF'
import sys, tarfile
with tarfile.open(sys.argv[1], "w:xz", preset=3) as t:
    for f in sys.argv[2:]:
        t.add(f)
EOF
  local bytes; bytes=$(stat -c %s "$OUT/$archive" 2>/dev/null || echo 0)
  if [ "$bytes" -gt $((16 * 1024 * 1024)) ]; then
    mv "$OUT/$archive" "$WORK/"
    log "!! $archive is $bytes bytes, over the 16 MiB that come back: left in $WORK"
  else
    log "packed $archive: $bytes bytes"
  fi
}

# ---- the tiny model: quick, and the example pair for traces/ -----------------------------
synth tiny tiny 30
for dt in f32 f16; do
  rec "tiny-$dt-gpu-1" tiny "$GPU" "$dt" 64x64 10 20
  rec "tiny-$dt-gpu-2" tiny "$GPU" "$dt" 64x64 10 20
  rec "tiny-$dt-cpu" tiny cpu "$dt" 64x64 10 20
done
for dt in f32 f16; do
  compare "tiny-$dt-cpu-vs-gpu" "tiny-$dt-cpu" "tiny-$dt-gpu-1"
  compare "tiny-$dt-gpu-repeat" "tiny-$dt-gpu-1" "tiny-$dt-gpu-2"
done
compare tiny-gpu-f32-vs-f16 tiny-f32-gpu-1 tiny-f16-gpu-1

# ---- SD 1.5 shapes: GPU first (fast), then the CPU runs, the slowest last ------------------
if [ "${SDTRACE_GPU_ONLY:-all}" != tiny ] && synth sd15 "${SDTRACE_GPU_SD15_AS:-sd15}" 120; then
  for size in 512 832; do
    for dt in f32 f16; do
      rec "sd15-$size-$dt-gpu-1" sd15 "$GPU" "$dt" "${size}x$size" 4 40
      rec "sd15-$size-$dt-gpu-2" sd15 "$GPU" "$dt" "${size}x$size" 4 40
      compare "sd15-$size-$dt-gpu-repeat" "sd15-$size-$dt-gpu-1" "sd15-$size-$dt-gpu-2"
    done
    compare "sd15-$size-gpu-f32-vs-f16" "sd15-$size-f32-gpu-1" "sd15-$size-f16-gpu-1"
  done
  # The CPU runs, 512x512 in both dtypes first. The needs (seconds) are guesses for 16 cores
  # from the 2-core dev machine (f16 runs about 3x slower than f32 on the CPU); a run that would
  # not fit is skipped rather than cut short.
  for job in "512 f32 60" "512 f16 150" "832 f32 150" "832 f16 400"; do
    read -r size dt need <<< "$job"
    rec "sd15-$size-$dt-cpu" sd15 cpu "$dt" "${size}x$size" 4 "$need" \
      && compare "sd15-$size-$dt-cpu-vs-gpu" "sd15-$size-$dt-cpu" "sd15-$size-$dt-gpu-1"
  done
fi

# ---- pack -----------------------------------------------------------------------------------
[ -n "${SMI_PID:-}" ] && kill "$SMI_PID" 2>/dev/null
if [ -s "$WORK/gpumem.csv" ]; then
  awk -F', ' '{gsub(/ MiB/,"",$2); if ($2+0 > m) m = $2+0} END {print "peak GPU memory used: " m " MiB"}' \
    "$WORK/gpumem.csv" | tee -a "$RUNLOG"
fi
log "timings:"
column -t -s $'\t' "$TIMINGS" 2>/dev/null | tee -a "$RUNLOG" || cat "$TIMINGS" | tee -a "$RUNLOG"
for f in "$R"/*.txt; do
  [ -f "$f" ] && { echo "== $(basename "$f" .txt): $(sed -n 2p "$f")"; } | tee -a "$RUNLOG"
done
cp "$RUNLOG" "$OUT/summary.txt"
cd "$WORK" || exit 2
shopt -s nullglob
jsons=()
for f in reports/*.json; do case "$f" in *.cmp.json) ;; *) jsons+=("$f") ;; esac; done
pack results.tar.xz run.log timings.tsv gpumem.csv logs reports/*.txt "${jsons[@]}"
pack saved.tar.xz reports/*.cmp.json
pack tiny-traces.tar.xz traces/tiny-*
pack sd15-512-f32-traces.tar.xz traces/sd15-512-f32-gpu-1.sdt traces/sd15-512-f32-cpu.sdt
pack images.tar.xz traces/sd15-*.png
log "done in $(($(date +%s) - START)) s; results in $OUT"
ls -l "$OUT" | tee -a "$OUT/summary.txt"
