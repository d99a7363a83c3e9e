"""AUTOMATIC1111 webui / Forge entry point: this repository installed into ``extensions/`` (from
its git URL) is a webui extension; the webui loads this file and finds the Script class below.
The extension's code is in the ``sdtrace`` Python package (``python/sdtrace/webui.py``), which
``install.py`` installs into the webui's environment. Without it, the extension logs how to
install it and adds nothing. Not part of the ``sdtrace`` wheel."""

import logging

from modules import script_callbacks, scripts

try:
    from sdtrace import webui as _sdtrace_webui
except ImportError as e:  # the package is missing: say how to get it, add nothing
    logging.getLogger("sdtrace").warning(
        "sdtrace extension: the sdtrace Python package is not installed in the webui's environment (%s); "
        "restart the webui to run the extension's install.py, or run `python -m pip install <this extension folder>` "
        "with the webui's Python (needs a Rust toolchain)",
        e,
    )
else:
    SdtraceScript = _sdtrace_webui.make_script_class(scripts)
    _sdtrace_webui.register_callbacks(script_callbacks)
