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


def check_supported(name: str, device: torch.device) -> None:
    """What only this machine can tell (the parent checked every combination already:
    launcher/capabilities.py): bfloat16 on this GPU."""
    if name.startswith("bf16") and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise LaunchError(
            f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 support; use --precision fp16-mixed or fp32"
        )
    if name == "fp16-mixed" and device.type not in ("cuda", "cpu"):
        raise LaunchError(
            f"train.precision=fp16-mixed is not supported on {device.type}; use --precision bf16-mixed or fp32"
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
    """Ours (single, dp, ddp, fsdp). ``autocast``: False where the strategy casts itself (FSDP2's
    mixed-precision policy); ``scaler``: a GradScaler for fp16-mixed (default: torch's for the
    device); ``grad_norm``: the global gradient norm (sharded strategies reduce over shards)."""

    def __init__(self, name: str, device: torch.device, *, autocast: bool = True, scaler=None, grad_norm=None) -> None:
        check_supported(name, device)
        self.name = name
        self.device = device
        if name == "fp16-mixed" and scaler is None:
            scaler = torch.amp.GradScaler(device.type)
        self.scaler = scaler if name == "fp16-mixed" else None
        dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(name)
        self._dtype = dtype if autocast else None
        self._norm = grad_norm or total_norm

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
                norm = self._clip(params, grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            if grad_clip:
                norm = self._clip(params, grad_clip)
            optimizer.step()
        return norm

    def _clip(self, params, grad_clip: float) -> torch.Tensor | None:
        """What ``clip_grad_norm_`` does, with the strategy's global norm (over shards)."""
        norm = self._norm(params)
        if norm is not None:
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm)
        return norm

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def total_norm(params) -> torch.Tensor | None:
    grads = [q.grad for q in params if q.grad is not None]
    return torch.nn.utils.get_total_norm(grads) if grads else None


_NULL = nullcontext()  # reusable: no object per step
