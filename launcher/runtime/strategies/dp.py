"""``nn.DataParallel``: one process over every visible GPU (the parent refuses it on the CPU,
where it would do nothing)."""

from __future__ import annotations

import torch

from launcher.runtime.strategies.single import Single


class DataParallel(Single):
    """It splits each batch across the GPUs (``train.batch_size`` is the whole batch), unlike
    DDP whose batch is per process. Everything but the wrapper is the one-process case."""

    name = "dp"

    def wrap(self, model: torch.nn.Module, units: tuple[str, ...] = ()) -> torch.nn.Module:
        return torch.nn.DataParallel(model)
