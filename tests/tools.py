"""External tools the tests run (kubectl, promtool, hadolint, Chromium): finding them, and
what their absence means.

A test whose tool is missing skips and says which tool and how to install it. CI installs every
tool and sets STREAMFIT_REQUIRE_TOOLS=1: there a missing tool fails the test instead, so a
broken install cannot pass as a quiet skip.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_TOOLS = os.environ.get("STREAMFIT_REQUIRE_TOOLS") == "1"


def find_tool(*names: str) -> str | None:
    """The first of `names` in this interpreter's environment (the venv), else on PATH."""
    for name in names:
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            return str(beside)
    return next((found for name in names if (found := shutil.which(name))), None)


def missing_tool(reason: str) -> NoReturn:
    """Skip the calling test for `reason`; fail it when CI requires every tool."""
    if REQUIRE_TOOLS:
        pytest.fail(f"{reason} (STREAMFIT_REQUIRE_TOOLS=1: CI must install it)", pytrace=False)
    pytest.skip(reason)


def require_tool(*names: str, install: str) -> str:
    """Path of the first of `names` found; otherwise `missing_tool`, with how to `install` it."""
    found = find_tool(*names)
    if found is None:
        missing_tool(f"{names[0]} not installed ({install})")
    return found
