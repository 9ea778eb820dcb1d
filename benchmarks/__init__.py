"""Benchmarks of the performance work (docs/performance.md); helpers shared without torch."""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_project() -> None:
    """Byte-compile the project's modules first (what ``scripts/setup.sh`` does, and what an
    installed package has): start-up is then timed as users meet it, also where Python may not
    write its bytecode cache itself (``PYTHONDONTWRITEBYTECODE=1``)."""
    for package in ("launcher", "recipes", "benchmarks"):
        compileall.compile_dir(ROOT / package, quiet=1)
