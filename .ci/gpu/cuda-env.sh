# shellcheck shell=bash
# A copy of the project's verified recipe (shared/gpu/cuda-env.sh), kept here because
# ../shared does not travel with the repository. Used by .ci/gpu/verify.sh (here).
# Source this (from a cargo project that depends on candle-core 0.11.x with feature `cuda`):
#     source path/to/cuda-env.sh
# It sets up a CUDA 13.0 build toolchain from NVIDIA's PyPI wheels (no system CUDA, no GPU
# needed) and exports the variables candle's build scripts read. Idempotent.
#
# Env overrides:
#   CUDA_VENV          where the wheels go             (default /tmp/cuda130-venv)
#   CUDA_COMPUTE_CAP   target GPU arch; 90 => sm_90a   (default 90, H100)
#   STATIC_LIBSTDCXX   1 => link libstdc++ statically  (default 1)
#   CUDAFORGE_THREADS  parallel nvcc jobs              (default: all cores)

_cuda_env_main() {
  local venv="${CUDA_VENV:-/tmp/cuda130-venv}"
  # CUDA 13.0.x wheels. Do NOT take the latest (13.5.x): its nvcc emits a PTX ISA newer than
  # 9.0, which a CUDA 13.0 driver (580.x) rejects (CUDA_ERROR_UNSUPPORTED_PTX_VERSION).
  local wheels=(
    nvidia-cuda-nvcc==13.0.88      # bin/nvcc, ptxas, fatbinary, nvlink
    nvidia-cuda-crt==13.0.88       # include/crt/* headers nvcc needs
    nvidia-nvvm==13.0.88           # nvvm/bin/cicc + libdevice
    nvidia-cuda-cccl==13.0.85      # include/cccl (cub, thrust, libcu++)
    nvidia-cuda-runtime==13.0.96   # cuda_runtime.h, cuda.h, libcudart_static.a
    nvidia-cuda-nvrtc==13.0.88     # libnvrtc.so.13        (link time only)
    nvidia-curand==10.4.0.35       # libcurand.so.10       (link time only)
    nvidia-cublas==13.0.2.14       # libcublas(Lt).so.13   (link time only, ~600 MB)
  )
  if [ ! -x "$venv/bin/pip" ]; then
    python3 -m venv "$venv" || return 1
  fi
  local w missing=0
  for w in "${wheels[@]}"; do
    "$venv/bin/pip" show -q "${w%%==*}" >/dev/null 2>&1 || missing=1
  done
  if [ "$missing" = 1 ] || [ -n "${CUDA_ENV_REINSTALL:-}" ]; then
    echo "cuda-env: installing CUDA 13.0 wheels into $venv" >&2
    "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "${wheels[@]}" || return 1
  fi
  local root
  root="$(echo "$venv"/lib/python3*/site-packages/nvidia/cu13)"
  [ -x "$root/bin/nvcc" ] || { echo "cuda-env: no nvcc under $root" >&2; return 1; }

  # --- link shims -----------------------------------------------------------------------
  # candle-core 0.11.1 builds cudarc with feature `dynamic-linking`: the binary is linked with
  # -lcuda -lnvrtc -lcurand -lcublas -lcublasLt (DT_NEEDED, resolved by ld.so at start-up).
  # candle-kernels links its precompiled MoE/GGUF kernels (libmoe.a) with -lcudart -lstdc++.
  local L="$root/lib"
  ln -sf libcublas.so.13   "$L/libcublas.so"
  ln -sf libcublasLt.so.13 "$L/libcublasLt.so"
  ln -sf libnvrtc.so.13    "$L/libnvrtc.so"
  ln -sf libcurand.so.10   "$L/libcurand.so"
  # Only libcudart.a (no libcudart.so) in this dir => `-lcudart` takes the static runtime.
  rm -f "$L/libcudart.so"
  ln -sf libcudart_static.a "$L/libcudart.a"
  if [ "${STATIC_LIBSTDCXX:-1}" = 1 ]; then
    # Same trick: this dir is searched before gcc's own, so `-lstdc++` takes the .a.
    ln -sf "$(g++ -print-file-name=libstdc++.a)" "$L/libstdc++.a"
  else
    rm -f "$L/libstdc++.a"
  fi

  # libcuda.so belongs to the driver and is in no wheel: generate a link-time stub with
  # SONAME libcuda.so.1 defining every driver entry point that cudarc's bindings declare.
  if [ ! -f "$L/stubs/libcuda.so" ]; then
    local cudarc_src=""
    if [ -f Cargo.toml ]; then
      cudarc_src="$(cargo metadata --format-version 1 2>/dev/null | python3 -c '
import json, os, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "cudarc":
        print(os.path.dirname(p["manifest_path"])); break' || true)"
    fi
    if [ -z "$cudarc_src" ]; then
      cudarc_src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1)"
    fi
    [ -f "$cudarc_src/src/driver/sys/mod.rs" ] || {
      echo "cuda-env: cudarc sources not found (run 'cargo fetch' in the project first)" >&2; return 1; }
    mkdir -p "$L/stubs"
    grep -ohE 'pub unsafe fn cu[A-Za-z0-9_]+' "$cudarc_src/src/driver/sys/mod.rs" \
      | awk '{print $4}' | grep -v '^culib$' | sort -u \
      | awk '{print "void " $1 "(void) {}"}' > "$L/stubs/libcuda_stub.c"
    cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$L/stubs/libcuda.so" "$L/stubs/libcuda_stub.c" || return 1
  fi

  # --- environment for the build scripts -------------------------------------------------
  case ":$PATH:" in *":$root/bin:"*) ;; *) export PATH="$root/bin:$PATH" ;; esac
  export NVCC="$root/bin/nvcc"          # cudaforge (candle-kernels' build script) looks here first
  export CUDA_HOME="$root"              # cudaforge fallback; cudarc's link-search root (lib, lib/stubs)
  export CUDA_PATH="$root" CUDA_ROOT="$root"
  export CUDARC_CUDA_VERSION=13000      # cudarc bindings for CUDA 13.0 (else parsed from `nvcc --version`)
  export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
  export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
  export CUDA_ENV_ROOT="$root"
}

_cuda_env_main
_cuda_env_rc=$?
unset -f _cuda_env_main
if [ "$_cuda_env_rc" = 0 ]; then
  echo "cuda-env: nvcc $(nvcc --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')" \
       "at $CUDA_ENV_ROOT, CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP" >&2
fi
# shellcheck disable=SC2317
return "$_cuda_env_rc" 2>/dev/null || exit "$_cuda_env_rc"
