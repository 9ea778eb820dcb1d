"""DistributedDataParallel: one process per device (gloo on the CPU, NCCL on CUDA)."""

from __future__ import annotations

from typing import Any

import torch

from launcher.runtime.env import DistEnv
from launcher.runtime.strategies.base import (
    Collectives,
    broadcast_buffers,
    check_gpus_per_node,
    destroy_process_group,
    init_process_group,
)
from launcher.runtime.strategies.single import Single


class DDP(Single):
    """The one-process strategy plus a process group, the DDP wrapper and its ``no_sync``."""

    name = "ddp"

    def __init__(self, env: DistEnv, device: torch.device, cfg: Any) -> None:
        super().__init__(env, device)
        check_gpus_per_node(env, device)
        init_process_group(env, device, cfg.dist.timeout_s)
        self.comm = Collectives(env, device)

    def wrap(self, model: torch.nn.Module, units: tuple[str, ...] = ()) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model):
        return model.no_sync()

    def sync_buffers(self, model) -> None:
        broadcast_buffers(self.comm, self.env, self.unwrap(model))

    def teardown(self) -> None:
        destroy_process_group()
