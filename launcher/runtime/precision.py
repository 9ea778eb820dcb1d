"""Precision: what autocast does, how backward and the optimizer step run, and the scaler state.

Names say what happens: ``fp32``; ``bf16-mixed`` (autocast to bfloat16, fp32 weights);
``fp16-mixed`` (autocast to float16 + GradScaler; on the CPU too, where torch has both); ``bf16-true`` (weights and
activations in bfloat16). No silent fallback: an unsupported combination is a LaunchError.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from launcher.errors import LaunchError


def check_supported(name: str, device: torch.device, engine: str | None = None) -> None:
    """Refuse what would not run as named. ``engine``: a library that owns precision itself
    (Accelerate, DeepSpeed), which on the CPU ignores or refuses fp16; ours runs float16 autocast
    with ``torch.amp.GradScaler("cpu")`` there (correct, usually slower than fp32)."""
    if name == "fp16-mixed" and device.type not in ("cuda", "cpu"):
        raise LaunchError(
            f"train.precision=fp16-mixed is not supported on {device.type}; use --precision bf16-mixed or fp32"
        )
    if name == "fp16-mixed" and device.type == "cpu" and engine is not None:
        raise LaunchError(
            f"train.precision=fp16-mixed on the CPU is not supported with {engine}; use --strategy ddp, "
            "--precision bf16-mixed or fp32, or a CUDA GPU"
        )
    if name.startswith("bf16") and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LaunchError(
            f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 support; use --precision fp16-mixed or fp32"
        )


def cast_floats(batch: Any, dtype: torch.dtype) -> Any:
    """Floating-point tensors of a (nested) batch cast to ``dtype``; everything else unchanged."""
    if isinstance(batch, torch.Tensor):
        return batch.to(dtype) if batch.is_floating_point() else batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(cast_floats(b, dtype) for b in batch)
    if isinstance(batch, dict):
        return {k: cast_floats(v, dtype) for k, v in batch.items()}
    return batch


class Precision:
    def __init__(self, name: str, device: torch.device) -> None:
        check_supported(name, device)
        self.name = name
        self.device = device
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16-mixed" else None
        dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(name)
        self._dtype = dtype

    def autocast(self):
        if self._dtype is None:
            return _NULL
        return torch.autocast(self.device.type, dtype=self._dtype)

    @property
    def converts_input(self) -> bool:
        """Whether :meth:`convert_input` changes batches (the loop skips the call otherwise)."""
        return self.name == "bf16-true"

    def convert_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(torch.bfloat16) if self.name == "bf16-true" else model

    def convert_input(self, batch: Any) -> Any:
        return cast_floats(batch, torch.bfloat16) if self.name == "bf16-true" else batch

    def backward(self, loss: torch.Tensor) -> None:
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()

    def step(self, optimizer: torch.optim.Optimizer, params, grad_clip: float | None) -> torch.Tensor | None:
        """Optimizer step with optional clipping; returns the pre-clip grad norm when clipping."""
        norm = None
        if self.scaler is not None:
            if grad_clip:
                self.scaler.unscale_(optimizer)
                norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            if grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        return norm

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


_NULL = nullcontext()  # reusable: no object per step
