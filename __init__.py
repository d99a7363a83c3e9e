"""ComfyUI entry point: this repository cloned into ``ComfyUI/custom_nodes/`` is a custom-node
package. The nodes live in the ``sdtrace`` Python package (``python/sdtrace/comfyui.py``), which
``install.py`` installs into ComfyUI's environment (ComfyUI-Manager runs it; by hand:
``python -m pip install custom_nodes/sdtrace``). Without it, no nodes are offered and the log says
how to install it. Not part of the ``sdtrace`` wheel (maturin packages ``python/`` only)."""

import logging

try:
    from sdtrace.comfyui import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
except ImportError as e:
    logging.getLogger("sdtrace").warning(
        "sdtrace custom nodes: the sdtrace Python package is not installed in this environment (%s); "
        "run `python -m pip install <this folder>` with ComfyUI's Python (needs a Rust toolchain), then restart ComfyUI",
        e,
    )
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
