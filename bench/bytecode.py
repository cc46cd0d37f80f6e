"""Bytecode caches: compiled before measuring (as a wheel install has them), and counted.

Import time and the memory of a start differ by about 2.5 times with and without
``__pycache__``; the benchmark measures with them, and says so.
"""

from __future__ import annotations

import compileall
import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("phonehome_plugin", "hookspecs")


def _sources() -> list[Path]:
    return [p for name in PACKAGES for p in sorted((ROOT / name).rglob("*.py"))]


def status() -> tuple[int, int]:
    """(modules of the plugin and the contract package, how many have a fresh .pyc)."""
    sources = _sources()
    fresh = 0
    for source in sources:
        cached = Path(importlib.util.cache_from_source(str(source)))
        if cached.exists() and cached.stat().st_mtime >= source.stat().st_mtime:
            fresh += 1
    return len(sources), fresh


def ensure() -> tuple[int, int, int]:
    """Compile what has no fresh cache; (modules, cached before, cached after)."""
    total, before = status()
    if before < total and not os.environ.get("PYTHONDONTWRITEBYTECODE"):
        for name in PACKAGES:
            compileall.compile_dir(str(ROOT / name), quiet=1)
    _, after = status()
    return total, before, after
