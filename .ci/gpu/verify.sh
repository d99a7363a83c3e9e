#!/usr/bin/env bash
# Issue #8's GPU verification, the part that runs HERE (a machine without a GPU or CUDA toolkit):
# build sdtrace with `--features cuda`, pack the binary into .gpu/ (git-ignored), and print the
# one device-tool call that runs .ci/gpu/on-gpu.sh on the GPU machine. Afterwards,
# `.ci/gpu/analyse.sh DIR` reads what came back.
#
# Usage: .ci/gpu/verify.sh [--self-test] [--no-build]
#   --self-test  also build the CPU binary and run on-gpu.sh's tiny-model part with
#                SDTRACE_GPU_DEVICE=cpu, to check the script end to end without a GPU
#   --no-build   pack the binary already built
# Environment: CUDA_COMPUTE_CAP (default 90: H100/H200, see cuda-env.sh), SDTRACE_CUDA_TARGET_DIR
# (default: $CARGO_TARGET_DIR-cuda, or target/cuda), CUDA_VENV (where the CUDA wheels go).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$(pwd)"

self_test=0 build=1
for a in "$@"; do
  case "$a" in
    --self-test) self_test=1 ;;
    --no-build) build=0 ;;
    *) echo "usage: $0 [--self-test] [--no-build]" >&2; exit 2 ;;
  esac
done

if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  CPU_TARGET="$CARGO_TARGET_DIR"
  CUDA_TARGET="${SDTRACE_CUDA_TARGET_DIR:-$CARGO_TARGET_DIR-cuda}"
else
  CPU_TARGET="$ROOT/target"
  CUDA_TARGET="${SDTRACE_CUDA_TARGET_DIR:-$ROOT/target/cuda}"
fi
BIN="$CUDA_TARGET/release/sdtrace"

if [ "$build" = 1 ]; then
  # shellcheck source=cuda-env.sh
  source .ci/gpu/cuda-env.sh
  echo "== cargo build --release --features cuda (target $CUDA_TARGET)"
  t0=$(date +%s)
  CARGO_TARGET_DIR="$CUDA_TARGET" cargo build --release --features cuda
  echo "== built in $(($(date +%s) - t0)) s"
fi
[ -x "$BIN" ] || { echo "verify: no $BIN (build it: drop --no-build)" >&2; exit 2; }
echo "== $BIN: $(stat -c %s "$BIN") bytes, needs:"
readelf -d "$BIN" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/  \1/p'

# Pack into .gpu/ (git-ignored: it travels to the GPU machine only when the call carries it).
mkdir -p .gpu
git check-ignore -q .gpu/sdtrace.xz || { echo "verify: .gpu/ is not git-ignored (see .gitignore)" >&2; exit 1; }
echo "== packing .gpu/sdtrace.xz"
if command -v xz > /dev/null; then
  xz -T2 -6 -c "$BIN" > .gpu/sdtrace.xz
else
  python3 -c "import lzma,shutil,sys; shutil.copyfileobj(open(sys.argv[1],'rb'), lzma.open(sys.argv[2],'wb',preset=6))" \
    "$BIN" .gpu/sdtrace.xz
fi
packed=$(stat -c %s .gpu/sdtrace.xz)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s + 0}')
echo "   $packed bytes packed; the working tree that travels with it: $((tree + packed)) bytes (limit 64 MiB)"
[ $((tree + packed)) -lt $((64 * 1024 * 1024)) ] || { echo "verify: too large to travel" >&2; exit 1; }

if [ "$self_test" = 1 ]; then
  echo "== self-test: on-gpu.sh's tiny part with --device cpu and the CPU build"
  CARGO_TARGET_DIR="$CPU_TARGET" cargo build --release
  work="$(mktemp -d /tmp/sdtrace-gpu-selftest.XXXXXX)"
  SDTRACE_GPU_DEVICE=cpu SDTRACE_GPU_ONLY=tiny SDTRACE_GPU_WORK="$work" OUT="$work/out" \
    bash .ci/gpu/on-gpu.sh "$CPU_TARGET/release/sdtrace"
  echo "== self-test results in $work/out; analysis:"
  SDTRACE="$CPU_TARGET/release/sdtrace" bash .ci/gpu/analyse.sh "$work/out"
fi

cat <<EOF

== Now run it on the GPU machine: one call of the device tool's \`run\` (not a shell command),
   on a kind whose compute capability is CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} (90: nvidia-h100-x1 or nvidia-h200):

   run {"command": "bash .ci/gpu/on-gpu.sh .gpu/sdtrace.xz", "carry": [".gpu"], "timeout_s": 600}

   It records within SDTRACE_GPU_BUDGET_S (default 500 s; prefix the command with
   SDTRACE_GPU_BUDGET_S=N to change it) and leaves summary.txt and *.tar.xz in \$OUT.
   Then, here, on the folder the files came back to (the reply's files_at):

   .ci/gpu/analyse.sh FILES_AT
EOF
