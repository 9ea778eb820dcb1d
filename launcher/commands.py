"""Pure: Plan -> Command(argv, env). Only :mod:`launcher.spawn` runs what these build."""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launcher.capabilities import accelerate_precision
from launcher.config import Config
from launcher.plan import Plan

WORKER_MODULE = "launcher.runtime.worker"
# torchrun and `accelerate launch` run inside this module (the stop contract, process lifetimes:
# launcher/runtime/agent.py)
AGENT_MODULE = "launcher.runtime.agent"


@dataclass(frozen=True)
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to the current environment
    in_process: bool = False  # the worker itself (one process): may also run inside `launch` (spawn.run)

    def render(self) -> str:
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        return (env + " " if env else "") + shlex.join(self.argv)


def worker_env(cfg: Config) -> dict[str, str]:
    env = {}
    if cfg.run.deterministic:
        # cuBLAS needs this before CUDA initialises for deterministic matmuls.
        env["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    return env


def build_command(
    plan: Plan,
    cfg: Config,
    run_dir: Path,
    python: str = sys.executable,
    cpu_count: int | None = None,
    environ: dict[str, str] | None = None,
    port: int | None = None,
    module: str = WORKER_MODULE,
) -> Command:
    """The exact argv and added environment for ``plan`` (pure: no side effects). ``module``
    (``python -m module TARGET``, with ``TARGET`` ``run_dir``): the worker, or ``launch eval``'s
    evaluator (its target the request file)."""
    environ = os.environ if environ is None else environ
    env = worker_env(cfg)
    worker = ["-m", module, str(run_dir)]
    if plan.launcher == "in-process":
        return Command([python, *worker], env, in_process=True)
    if plan.launcher in ("torchrun", "accelerate") and plan.procs_per_node > 1:
        if "OMP_NUM_THREADS" not in environ:
            # torchrun would set 1 (with a warning); share the cores between the processes instead
            cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
            env["OMP_NUM_THREADS"] = str(max(1, cores // plan.procs_per_node))
    if plan.launcher == "torchrun":
        argv = [
            python,
            "-m",
            AGENT_MODULE,
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={plan.procs_per_node}",
        ]
        return Command([*argv, *worker], env)
    if plan.launcher == "accelerate":
        mp = accelerate_precision(cfg.train.precision)
        argv = [
            python,
            "-m",
            AGENT_MODULE,
            "accelerate.commands.launch",
            "--num_machines=1",
            f"--num_processes={plan.procs_per_node}",
            f"--mixed_precision={mp}",
            "--dynamo_backend=no",
        ]
        if plan.procs_per_node > 1:
            # without --multi_gpu (and, on the CPU, ACCELERATE_USE_CPU=1) Accelerate silently runs
            # every process on its own instead of one distributed job
            argv += ["--multi_gpu", f"--main_process_port={port or 29500}"]
        if plan.device == "cpu":
            env["ACCELERATE_USE_CPU"] = "1"
            if plan.procs_per_node == 1:
                argv.append("--cpu")  # (--cpu and --multi_gpu exclude each other)
        return Command([*argv, "--module", *worker[1:]], env)
    raise ValueError(f"no command builder for launcher {plan.launcher!r}")
