"""Pure: Plan -> Command(argv, env). Only :mod:`launcher.spawn` runs what these build."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launcher.config import Config
from launcher.plan import Plan

WORKER_MODULE = "launcher.runtime.worker"


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the current environment
    in_process: bool = False  # single process: run the worker inside `launch` (no second interpreter)

    def render(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)


def worker_env(cfg: Config) -> dict[str, str]:
    env = {}
    if cfg.run.deterministic:
        # cuBLAS needs this before CUDA initialises for deterministic matmuls.
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    return env


def build_command(plan: Plan, cfg: Config, run_dir: Path, python: str = sys.executable) -> Command:
    env = worker_env(cfg)
    if plan.launcher == "in-process":
        return Command([python, "-m", WORKER_MODULE, str(run_dir)], env, in_process=True)
    raise ValueError(f"no command builder for launcher {plan.launcher!r}")
