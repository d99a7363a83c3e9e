"""Installs the sdtrace Python package (this repository, built by maturin: needs a Rust
toolchain) into the Python that runs it, unless it is already importable. Run by the webui when
the extension is installed or launched, and by ComfyUI-Manager for custom nodes; never fails the
host's start: a failed install is reported with what to do."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    try:
        import sdtrace  # noqa: F401

        return 0
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", HERE]
    print(f"sdtrace: installing the sdtrace Python package: {' '.join(cmd)}", flush=True)
    try:
        subprocess.run(cmd, check=True)
        return 0
    except (OSError, subprocess.CalledProcessError) as e:
        print(
            f"sdtrace: installing the Python package failed ({e}); recording stays off. Install a Rust toolchain "
            f"(https://rustup.rs) and run: {' '.join(cmd)}",
            file=sys.stderr,
        )
        return 0


if __name__ == "__main__":
    main()
