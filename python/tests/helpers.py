"""Helpers shared by the Python tests."""

import os
import shutil

import pytest


def sdtrace_bin():
    """The `sdtrace` binary the tests drive: $SDTRACE_BIN (tests/run.sh sets it) or one on PATH;
    the test is skipped without one."""
    exe = os.environ.get("SDTRACE_BIN") or shutil.which("sdtrace")
    if not exe or not os.path.exists(exe):
        pytest.skip("no sdtrace binary (tests/run.sh sets SDTRACE_BIN)")
    return exe
