"""Pure: resolved config -> Plan (what kind of run, how many processes, where)."""

from __future__ import annotations

from dataclasses import dataclass

from launcher.config import Config
from launcher.errors import ConfigError


@dataclass(frozen=True)
class Plan:
    strategy: str  # single | ddp | dp | accelerate | deepspeed
    device: str  # auto | cpu | cuda | mps (auto is settled by the worker, which has torch)
    procs_per_node: int
    nodes: int
    launcher: str  # in-process | torchrun | accelerate | deepspeed | slurm

    @property
    def world_size(self) -> int:
        return self.procs_per_node * self.nodes


def make_plan(cfg: Config) -> Plan:
    d = cfg.dist
    world = d.procs * d.nodes
    strategy = d.strategy
    if strategy == "auto":
        strategy = "single" if world == 1 else "ddp"
    if strategy == "single" and world > 1:
        raise ConfigError(
            f"dist.strategy=single runs one process but dist.procs x dist.nodes = {world}; "
            "use --strategy ddp (or drop --procs/--nodes)"
        )
    if cfg.train.precision == "fp16-mixed" and d.device in ("cpu", "mps"):
        raise ConfigError(
            f"train.precision=fp16-mixed needs a CUDA GPU (device is {d.device}); "
            "use --precision bf16-mixed or fp32 on this device"
        )
    if cfg.slurm.enabled:
        raise ConfigError("--slurm is not available yet in this version; run without --slurm")
    if d.nodes > 1:
        raise ConfigError(f"--nodes {d.nodes} needs a cluster: add --slurm (or use --procs N on one node)")
    if strategy != "single":
        raise ConfigError(
            f"strategy {strategy} is not available yet in this version; run one process (--procs 1, the default)"
        )
    return Plan(strategy=strategy, device=d.device, procs_per_node=d.procs, nodes=d.nodes, launcher="in-process")
