"""HF Accelerate: it owns device placement, DDP wrapping and mixed precision; the loop, the
data order and the checkpoint format stay ours (so resume stays exact)."""

from __future__ import annotations

from typing import Any

import torch

from launcher.capabilities import accelerate_precision
from launcher.errors import LaunchError
from launcher.runtime.env import DistEnv
from launcher.runtime.strategies.base import Collectives, Local, broadcast_buffers
from launcher.runtime.strategies.single import Single


class Accelerate(Single):
    name = "accelerate"

    def __init__(self, env: DistEnv, device: torch.device, cfg: Any) -> None:
        from accelerate import Accelerator

        super().__init__(env, device)
        # (the parent refused what Accelerate would silently ignore: fp16 on the CPU)
        mixed = accelerate_precision(cfg.train.precision)
        self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed)
        if env.world_size > 1 and self.accelerator.num_processes != env.world_size:
            raise LaunchError(
                f"Accelerate runs {self.accelerator.num_processes} process(es) but the job has {env.world_size}: "
                "on the CPU it needs ACCELERATE_USE_CPU=1 and --multi_gpu (launch sets both)"
            )
        self.device = self.accelerator.device
        self.comm = Collectives(env, self.device) if env.world_size > 1 else Local()

    def prepare(self, model, optimizer):
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model) -> torch.nn.Module:
        return self.accelerator.unwrap_model(getattr(model, "_orig_mod", model))

    def torch_optimizer(self, optimizer):
        return optimizer.optimizer  # AcceleratedOptimizer

    def no_sync(self, model):
        return self.accelerator.no_sync(model)

    def make_precision(self, name: str) -> AcceleratePrecision:
        return AcceleratePrecision(self.accelerator, name)

    def sync_buffers(self, model) -> None:
        broadcast_buffers(self.comm, self.env, self.unwrap(model))

    def optimizer_state(self, optimizer) -> dict:
        return optimizer.state_dict()

    def teardown(self) -> None:
        import torch.distributed as dist

        self.accelerator.end_training()
        if dist.is_initialized():
            dist.destroy_process_group()


class AcceleratePrecision:
    """Precision through the Accelerator (its autocast, its GradScaler)."""

    converts_input = False  # (the loop calls convert_input only where this is true)

    def __init__(self, accelerator, name: str) -> None:
        self.accelerator, self.name = accelerator, name

    def autocast(self):
        return self.accelerator.autocast()

    def convert_model(self, model):
        return model

    def convert_input(self, batch):
        return batch

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, optimizer, params, grad_clip):
        norm = self.accelerator.clip_grad_norm_(params, grad_clip) if grad_clip else None
        optimizer.step()
        return norm

    def state_dict(self) -> dict:
        scaler = self.accelerator.scaler
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.accelerator.scaler is not None and state:
            self.accelerator.scaler.load_state_dict(state)
