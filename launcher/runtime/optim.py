"""Optimizer with parameter groups, and learning-rate schedulers from the torch family."""

from __future__ import annotations

import torch

from launcher.config import TrainSection
from launcher.errors import ConfigError


def param_groups(model: torch.nn.Module, t: TrainSection, head: list[str]) -> list[dict]:
    """Up to four groups: head/backbone x decay/no-decay.

    No weight decay on biases and normalisation weights (every parameter with ndim <= 1).
    ``train.backbone_lr_mult`` scales the lr of everything outside the recipe's ``head``.
    Head groups come first, so ``param_groups[0]['lr']`` is the base learning rate.
    """
    if t.backbone_lr_mult != 1.0 and not head:
        raise ConfigError("train.backbone_lr_mult needs a recipe that declares its head; drop the key")
    # Split only where settings differ: fewer groups, fewer (foreach) optimizer kernels.
    split_head = t.backbone_lr_mult != 1.0
    split_decay = t.weight_decay > 0
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = not split_head or any(name.startswith(h) for h in head)
        decay = not split_decay or p.ndim > 1
        groups.setdefault((is_head, decay), []).append(p)
    out = []
    for is_head in (True, False):
        for decay in (True, False):
            params = groups.get((is_head, decay))
            if params:
                lr = t.lr if is_head else t.lr * t.backbone_lr_mult
                out.append(
                    {"params": params, "lr": lr, "weight_decay": t.weight_decay if decay and split_decay else 0.0}
                )
    if not out:
        raise ConfigError("the model has no trainable parameters (is everything frozen?); unfreeze something")
    return out


def build_optimizer(model: torch.nn.Module, t: TrainSection, head: list[str]) -> torch.optim.Optimizer:
    groups = param_groups(model, t, head)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0)
    if t.optimizer == "adam":
        return torch.optim.Adam(groups, lr=t.lr, betas=t.betas)
    return torch.optim.AdamW(groups, lr=t.lr, betas=t.betas)


def build_scheduler(optimizer: torch.optim.Optimizer, t: TrainSection, total_steps: int, monitor_mode: str = "min"):
    """Schedulers step once per optimizer step (``plateau``: once per evaluation, on the monitored metric)."""
    S = torch.optim.lr_scheduler
    name = t.scheduler
    total = max(1, total_steps)
    if name == "none":
        return None
    if name == "step":
        return S.StepLR(optimizer, step_size=t.step_size, gamma=t.gamma)
    if name == "multistep":
        return S.MultiStepLR(optimizer, milestones=t.milestones, gamma=t.gamma)
    if name == "exponential":
        return S.ExponentialLR(optimizer, gamma=t.gamma)
    if name == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=total, eta_min=t.min_lr)
    if name == "onecycle":
        max_lrs = [g["lr"] for g in optimizer.param_groups]
        return S.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=total)
    if name == "plateau":
        return S.ReduceLROnPlateau(optimizer, mode=monitor_mode, factor=t.gamma, patience=t.plateau_patience)
    if name == "warmup_cosine":
        warm = min(t.warmup_steps, total - 1)
        if warm <= 0:
            return S.CosineAnnealingLR(optimizer, T_max=total, eta_min=t.min_lr)
        return S.SequentialLR(
            optimizer,
            [
                S.LinearLR(optimizer, start_factor=1.0 / (warm + 1), total_iters=warm),
                S.CosineAnnealingLR(optimizer, T_max=total - warm, eta_min=t.min_lr),
            ],
            milestones=[warm],
        )
    raise ConfigError(f"unknown train.scheduler={name}")
