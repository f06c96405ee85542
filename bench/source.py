"""Source: a frozen copy of the service package, so one run measures one version of the code.

The working tree may change while a run takes its minutes (other people edit it). The run
copies `service/` once at its start, starts every service and producer process from the
copy, and imports it in the benchmark process too (for the in-memory limit); its
fingerprint goes into the results.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from bench.machine import ROOT


def fingerprint(package: Path) -> str:
    """A short hash of the package's Python files (names and contents)."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(path.relative_to(package).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def freeze(destination: Path) -> Path:
    """Copy ROOT/service to destination/service and import from there; return destination."""
    if any(name == "service" or name.startswith("service.") for name in sys.modules):
        raise RuntimeError("freeze the service source before anything imports it")
    shutil.rmtree(destination, ignore_errors=True)
    shutil.copytree(
        ROOT / "service", destination / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    sys.path.insert(0, str(destination))
    return destination
