"""Pure: resolved config -> Plan (what kind of run, how many processes, where)."""

from __future__ import annotations

import platform
import sys
from dataclasses import asdict, dataclass

from launcher.capabilities import CAPABILITIES, check
from launcher.config import Config
from launcher.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    strategy: str  # a name in launcher.capabilities.CAPABILITIES (never "auto")
    # cpu | cuda | mps; auto where the parent cannot settle it (the worker does): under --slurm
    # (the GPUs are on the compute nodes), where the GPU count is unknown, and on Apple silicon
    # without CUDA GPUs (only torch tells MPS apart)
    device: str
    procs_per_node: int
    nodes: int
    # how the processes start: the strategy's launcher (in-process | torchrun | accelerate, from
    # launcher.capabilities), or slurm under --slurm (sbatch; srun starts every process)
    launcher: str

    @property
    def world_size(self) -> int:
        return self.procs_per_node * self.nodes

    def to_dict(self) -> dict:
        return {**asdict(self), "world_size": self.world_size}


def make_plan(cfg: Config, gpus: int | None = None) -> Plan:
    """Decide how to run ``cfg``. ``gpus`` is the number of visible GPUs (None: unknown).

    Every check of what a strategy supports is here (and in :mod:`launcher.capabilities`), before
    anything starts; the worker reads the result from ``RUN_DIR/plan.json``.
    """
    d = cfg.dist
    world = d.procs * d.nodes
    strategy = d.strategy
    if strategy == "auto":
        strategy = "single" if world == 1 else "ddp"
    cap = CAPABILITIES[strategy]
    if cap.one_process and world > 1:
        raise ConfigError(
            f"dist.strategy={strategy} runs one process but dist.procs x dist.nodes = {world}; "
            "use --strategy ddp or fsdp (or drop --procs/--nodes)"
        )
    if strategy == "dp" and d.device != "cuda":
        raise ConfigError(
            "dist.strategy=dp (DataParallel) needs CUDA GPUs: on the CPU it would do nothing; "
            "use --procs N for several CPU processes (ddp), or --device cuda"
        )
    device = d.device
    if device == "auto" and gpus is not None and (gpus or not _maybe_mps()):
        device = "cuda" if gpus else "cpu"  # settled once, here (MPS is only told apart with torch)
    check(cfg, strategy, device, gpus)
    if d.device == "mps" and world > 1:
        raise ConfigError("MPS runs one process; drop --procs (or use --device cpu for several CPU processes)")
    # one GPU per process (DataParallel runs one process, checked above, over every visible GPU)
    if d.device == "cuda" and gpus is not None and d.procs > gpus:
        if gpus == 0:
            raise ConfigError(
                f"asked for {d.procs} GPU process(es) but no CUDA GPU is visible here; "
                f"use --procs {d.procs} --device cpu"
            )
        raise ConfigError(f"asked for {d.procs} GPUs but this node has {gpus} visible; use --gpus {gpus}")
    if d.nodes > 1 and not cfg.slurm.enabled:
        raise ConfigError(
            f"--nodes {d.nodes} needs a cluster: add --slurm to submit to Slurm (or use --procs N on this one node)"
        )
    launcher = "slurm" if cfg.slurm.enabled else cap.launcher  # srun starts one task per process on every node
    return Plan(strategy=strategy, device=device, procs_per_node=d.procs, nodes=d.nodes, launcher=launcher)


def _maybe_mps() -> bool:
    """Could "auto" mean Apple's MPS here? (macOS on Apple silicon; torch alone can tell for sure)"""
    return sys.platform == "darwin" and platform.machine() == "arm64"
