#!/usr/bin/env bash
# The whole test suite, as README gives it: the Rust workspace (`cargo test`: the binary crate
# and sdtrace-core), then the Python package (pytest over python/tests) in a venv created on
# first use outside the repository — $SDTRACE_PY_VENV, by default ~/.cache/sdtrace-py/venv, with
# torch, diffusers, transformers, maturin and pytest from PyPI (several GB, first use only,
# reused after, like the cargo target directory). Arguments go to `cargo test`.
# SDTRACE_SKIP_PYTHON=1 runs the Rust part only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@"
if [ "${SDTRACE_SKIP_PYTHON:-}" = 1 ]; then
  exit 0
fi
venv="${SDTRACE_PY_VENV:-${HOME:-/tmp}/.cache/sdtrace-py/venv}"
if ! "$venv/bin/python" -c 'import torch, diffusers, transformers, maturin, pytest, numpy' 2>/dev/null; then
  echo "setting up the Python test venv in $venv (torch, diffusers, transformers, maturin, pytest; first use only)" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q torch diffusers transformers maturin pytest numpy safetensors
fi
# The extension into the venv, editable: python/sdtrace with the freshly built _native.
VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" maturin develop -q
target="${CARGO_TARGET_DIR:-$PWD/target}"
SDTRACE_BIN="$target/debug/sdtrace" "$venv/bin/python" -m pytest -q python/tests
