"""One process, one device: the reference every other strategy must match."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from launcher.runtime.env import DistEnv
from launcher.runtime.precision import Precision, total_norm
from launcher.runtime.strategies.base import NULL, Local, compile_model, load_full_state, plain_module


class Single:
    name = "single"
    shard_dir = None
    collective_forward = False

    def __init__(self, env: DistEnv, device: torch.device, cfg: Any = None) -> None:
        self.env, self.device = env, device
        self.comm = Local()

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def wrap(self, model: torch.nn.Module, units: tuple[str, ...] = ()) -> torch.nn.Module:
        return model

    def prepare(self, model, optimizer):
        return model, optimizer

    def unwrap(self, model) -> torch.nn.Module:
        return plain_module(model)

    def torch_optimizer(self, optimizer):
        return optimizer

    def compile(self, model, mode: str):
        return compile_model(model, mode)

    def no_sync(self, model):
        return NULL

    def make_precision(self, name: str) -> Precision:
        return Precision(name, self.device)

    def sync_buffers(self, model) -> None:
        pass

    def grad_norm(self, params):
        return total_norm(params)

    def full_weights(self, model) -> dict[str, torch.Tensor] | None:
        return self.unwrap(model).state_dict() if self.is_main else None

    def checkpoint_weights(self, model):
        return self.full_weights(model)

    def optimizer_state(self, optimizer) -> dict:
        return optimizer.state_dict()

    def save_shards(self, directory: Path, model, optimizer, background: bool = False):
        raise NotImplementedError  # (shard_dir is None: never called)

    def load_state(self, loaded: dict[str, Any], model, optimizer) -> None:
        load_full_state(loaded, self.unwrap(model), optimizer, self.name)

    def teardown(self) -> None:
        pass
