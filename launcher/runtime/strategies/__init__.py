"""One strategy per file, behind one interface (:class:`base.Strategy`).

The parent has already checked every combination (launcher/capabilities.py) and resolved the
strategy name (the run directory's plan.json); :func:`make_strategy` only builds it.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from launcher.errors import LaunchError
from launcher.runtime.env import DistEnv
from launcher.runtime.strategies.base import Strategy

# name -> "module:class" in this package, imported on use (DeepSpeed and Accelerate are slow imports)
STRATEGIES = {
    "single": "single:Single",
    "dp": "dp:DataParallel",
    "ddp": "ddp:DDP",
    "accelerate": "accelerate:Accelerate",
    "deepspeed": "deepspeed:DeepSpeed",
    "fsdp": "fsdp:FSDP",
}


def strategy_class(name: str) -> type:
    module, cls = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def make_strategy(name: str, env: DistEnv, device: torch.device, cfg: Any) -> Strategy:
    if name == "auto":  # a run directory written before plan.json: what the parent would have chosen
        name = "ddp" if env.world_size > 1 else "single"
    return strategy_class(name)(env, device, cfg)


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    """``dist.device`` -> this rank's device. "auto" reaches here only where the parent could
    not see the GPUs (under Slurm they are on the compute node)."""
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise LaunchError("dist.device=cuda but no CUDA GPU is visible here; use --device cpu (or auto)")
        return torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    if requested == "mps" and not torch.backends.mps.is_available():
        raise LaunchError("dist.device=mps but MPS is not available here; use --device cpu (or auto)")
    return torch.device(requested)
