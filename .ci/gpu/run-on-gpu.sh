#!/usr/bin/env bash
# A copy of the project's verified recipe (shared/gpu/run-on-gpu.sh), kept here because
# ../shared does not travel with the repository. Used by .ci/gpu/on-gpu.sh (on the GPU machine).
# Run a CUDA-enabled candle binary, built elsewhere with cuda-env.sh, on the GPU machine
# (no Rust needed there).
#
# Usage: ./run-on-gpu.sh BINARY [args...]
#
# The binaries are linked (DT_NEEDED) against libcuda.so.1 (driver), libcublas.so.13 (which pulls
# libcublasLt.so.13) and libcurand.so.10; cudart and libstdc++ are linked in statically. This
# script points LD_LIBRARY_PATH at the CUDA 13 libraries of the torch venv's pip packages
# (nvidia/*/lib) or of a CUDA toolkit (/usr/local/cuda*), then runs them.
set -uo pipefail

BINS=()
[ $# -gt 0 ] || { echo "usage: $0 BINARY [args...]" >&2; exit 2; }
[ -f "$1" ] || { echo "no such binary: $1" >&2; exit 2; }
BINS=("$1"); shift

echo "== nvidia-smi -L"
nvidia-smi -L || echo "(nvidia-smi failed)"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader 2>/dev/null || true

# Libraries the binary needs besides libcuda.so.1 (and libcudart.so.13, harmless if present).
NAMES=(libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libcudart.so.13)
find_args=()
for n in "${NAMES[@]}"; do find_args+=(-name "$n" -o); done
unset 'find_args[${#find_args[@]}-1]'

# Search order: torch venv pip libs first (known-good CUDA 13.0 user-space libs), then toolkits.
# CUDA_LIB_ROOTS (space-separated) overrides the list.
ROOTS=()
for r in ${CUDA_LIB_ROOTS:-/opt/torch/.venv /usr/local/cuda /usr/local/cuda-13* /usr/local/cuda*}; do
  [ -d "$r" ] && ROOTS+=("$r")
done
declare -A seen=()
DIRS=()
for r in "${ROOTS[@]}"; do
  while IFS= read -r f; do
    d="$(dirname "$(readlink -f "$f")")"
    case "$d" in */stubs|*/stubs/*|*/compat|*/compat/*) continue ;; esac   # never the driver stubs/compat libs
    [ -n "${seen[$d]:-}" ] && continue
    seen[$d]=1; DIRS+=("$d")
  done < <(find -L "$r" \( "${find_args[@]}" \) 2>/dev/null | sort)
done

# libcuda.so.1 normally comes from the driver via the ld.so cache; add its dir only if it is not there.
if ! ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 '; then
  for d in /usr/lib/x86_64-linux-gnu /usr/lib64 /usr/local/nvidia/lib64 /usr/lib/wsl/lib; do
    if [ -e "$d/libcuda.so.1" ]; then DIRS+=("$d"); break; fi
  done
fi

LDP="$(IFS=:; echo "${DIRS[*]}")"
export LD_LIBRARY_PATH="${LDP}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "== LD_LIBRARY_PATH"
tr ':' '\n' <<<"$LD_LIBRARY_PATH" | sed 's/^/  /'

export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
rc_all=0
for BIN in "${BINS[@]}"; do
  chmod +x "$BIN" 2>/dev/null || true
  echo "== ldd $BIN"
  ldd "$BIN"
  if ldd "$BIN" | grep -q 'not found'; then
    echo "!! some libraries were not found (see above); the binary cannot start" >&2
  fi
  echo "== run $BIN $*"
  start=$(date +%s.%N)
  "$BIN" "$@"
  rc=$?
  echo "== $(basename "$BIN"): exit code $rc, wall $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}') s"
  [ $rc -eq 0 ] || rc_all=$rc
done
exit $rc_all
