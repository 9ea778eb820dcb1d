"""Strategies: how the model is wrapped, how values cross processes, how the job tears down.

One small class per strategy, one interface. ``Single`` is the one-process case; distributed
strategies override the collective methods.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from launcher.errors import LaunchError
from launcher.runtime.env import DistEnv


def resolve_device(requested: str, env: DistEnv) -> torch.device:
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


class Single:
    """One process, one device."""

    name = "single"

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        self.env = env
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return getattr(model, "module", model)

    def no_sync(self, model: torch.nn.Module):
        return nullcontext()

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        return sums

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (stop requests, early stopping)."""
        return flag

    def barrier(self) -> None:
        pass

    def teardown(self) -> None:
        pass
