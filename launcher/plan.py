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


STRATEGY_LAUNCHER = {
    "single": "in-process",
    "dp": "in-process",
    "ddp": "torchrun",
    "accelerate": "accelerate",
    "deepspeed": "torchrun",  # deepspeed.initialize reads torchrun's environment
}


def make_plan(cfg: Config, gpus: int | None = None) -> Plan:
    """Decide how to run ``cfg``. ``gpus`` is the number of visible GPUs (None: unknown)."""
    d = cfg.dist
    world = d.procs * d.nodes
    strategy = d.strategy
    if strategy == "auto":
        strategy = "single" if world == 1 else "ddp"
    if strategy in ("single", "dp") and world > 1:
        raise ConfigError(
            f"dist.strategy={strategy} runs one process but dist.procs x dist.nodes = {world}; "
            "use --strategy ddp (or drop --procs/--nodes)"
        )
    if strategy == "dp" and d.device != "cuda":
        raise ConfigError(
            "dist.strategy=dp (DataParallel) needs CUDA GPUs: on the CPU it would do nothing; "
            "use --procs N for several CPU processes (ddp), or --device cuda"
        )
    device = d.device
    if strategy == "accelerate" and device == "auto" and gpus is not None:
        device = "cuda" if gpus else "cpu"  # Accelerate must be told: it cannot "auto" into CPU processes
    if cfg.train.precision == "fp16-mixed" and device == "mps":
        raise ConfigError(
            "train.precision=fp16-mixed is not supported on MPS; use --precision bf16-mixed or fp32 on this device"
        )
    on_cpu = device == "cpu" or (device == "auto" and gpus == 0)
    if cfg.train.precision == "fp16-mixed" and on_cpu and strategy in ("accelerate", "deepspeed"):
        # (Accelerate would silently ignore fp16 on the CPU; DeepSpeed refuses it there)
        raise ConfigError(
            f"train.precision=fp16-mixed on the CPU is not supported with {strategy}; use --strategy ddp "
            "(our own GradScaler runs on the CPU), --precision bf16-mixed or fp32, or a CUDA GPU"
        )
    if strategy in ("accelerate", "deepspeed") and cfg.train.precision == "bf16-true":
        raise ConfigError(f"train.precision=bf16-true is not supported with {strategy}; use bf16-mixed or fp32")
    if strategy == "deepspeed" and cfg.checkpoint.async_:
        raise ConfigError("checkpoint.async=true is not supported with deepspeed (its engine writes its own state)")
    if d.device == "mps" and world > 1:
        raise ConfigError("MPS runs one process; drop --procs (or use --device cpu for several CPU processes)")
    needed = 1 if strategy == "dp" else d.procs  # DataParallel: one process over every visible GPU
    if d.device == "cuda" and gpus is not None and needed > gpus:
        if gpus == 0:
            raise ConfigError(
                f"asked for {needed} GPU process(es) but no CUDA GPU is visible here; use --procs {needed} --device cpu"
            )
        raise ConfigError(f"asked for {needed} GPUs but this node has {gpus} visible; use --gpus {gpus}")
    if d.nodes > 1 and not cfg.slurm.enabled:
        raise ConfigError(
            f"--nodes {d.nodes} needs a cluster: add --slurm to submit to Slurm (or use --procs N on this one node)"
        )
    if strategy not in STRATEGY_LAUNCHER:
        raise ConfigError(
            f"dist.strategy={strategy} is not available yet in this version; use ddp (--procs N) or single"
        )
    launcher = STRATEGY_LAUNCHER[strategy]
    if cfg.slurm.enabled:
        if strategy == "accelerate":
            raise ConfigError(
                "--strategy accelerate is not supported with --slurm; use ddp or deepspeed (srun starts the processes)"
            )
        launcher = "slurm"  # srun starts one task per process on every node
    return Plan(strategy=strategy, device=device, procs_per_node=d.procs, nodes=d.nodes, launcher=launcher)
