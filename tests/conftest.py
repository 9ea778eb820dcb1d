"""Shared fixtures: run `launch` as a real subprocess, read run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = f"{ROOT / 'tests' / 'tiny_recipe.py'}:Tiny"


def launch_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def run_launch(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m launcher ARGS` in ``cwd``; returns the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=launch_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run_dir(root: Path) -> Path:
    """The single run directory under ``root/runs/<recipe>/``."""
    dirs = [p for p in (root / "runs").glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def tiny() -> str:
    return TINY
