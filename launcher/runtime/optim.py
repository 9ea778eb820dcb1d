"""Optimizer with parameter groups, and learning-rate schedulers from the torch family.

A schedule whose shape is planned from the run's total optimizer steps (``cosine``,
``onecycle``, ``warmup_cosine``, and a class whose length argument is left to the run:
``launcher.torch_classes.length_dependent``) belongs to that length: a
resumed run must have the same total (:func:`check_schedule_length`), else it would step past
its end (OneCycleLR raises, a cosine climbs back up). The others (``none``, ``step``,
``multistep``, ``exponential``, ``plateau``) simply continue when a run is extended.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from launcher import torch_classes as tc
from launcher.config import TrainSection
from launcher.errors import ConfigError, LaunchError, first_line


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
    """``train.optimizer``'s class with the parameter groups, ``train.lr``, ``train.betas`` (where
    the class takes them), SGD's ``train.momentum``/``train.nesterov``, and ``train.optimizer_args``.
    Values the class rejects are one line (exit 2), before training."""
    name = tc.optimizer_class(t.optimizer)
    groups = param_groups(model, t, head)
    kwargs: dict = {"lr": t.lr}
    if "betas" in tc.OPTIMIZERS[name]:
        kwargs["betas"] = t.betas
    if name == "SGD":
        kwargs.update(momentum=t.momentum, nesterov=t.nesterov and t.momentum > 0)
    kwargs.update(t.optimizer_args)
    return _construct(getattr(torch.optim, name), "train.optimizer_args", groups, **kwargs)


def _construct(cls, key: str, *args, **kwargs):
    try:
        return cls(*args, **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in ("lr",)) or "its defaults"
        raise ConfigError(f"torch.optim {cls.__name__} refused {key} ({shown}): {first_line(e)}") from None


def check_schedule_fits(t: TrainSection, total_steps: int, warn: Callable[[str], None] | None = None) -> None:
    """Settings that would not fit in a run of ``total_steps`` optimizer steps: a warm-up that never
    ends is refused (ConfigError), decays that never happen are a warning."""
    name, run = t.scheduler, f"the run ({total_steps} optimizer steps)"
    if name == "warmup_cosine" and t.warmup_steps >= total_steps:
        raise ConfigError(
            f"train.warmup_steps={t.warmup_steps} is not shorter than {run}: it would never leave warm-up; "
            f"pass train.warmup_steps below {total_steps}, or train longer (train.epochs, train.max_steps)"
        )
    if warn is None:
        return
    if name == "multistep" and t.milestones and t.milestones[-1] >= total_steps:
        late = [m for m in t.milestones if m >= total_steps]
        warn(
            f"train.milestones {', '.join(map(str, late))} lie beyond {run}: "
            f"{'those decays never happen' if len(late) > 1 else 'that decay never happens'}"
        )
    if name == "step" and t.step_size >= total_steps:
        warn(f"train.step_size={t.step_size} is not shorter than {run}: the learning rate never decays")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    t: TrainSection,
    total_steps: int,
    monitor_mode: str = "min",
    warn: Callable[[str], None] | None = None,
):
    """Schedulers step once per optimizer step (``plateau``: once per evaluation, on the monitored metric)."""
    S = torch.optim.lr_scheduler
    name = t.scheduler
    total = max(1, total_steps)
    check_schedule_fits(t, total, warn)
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
    return _class_scheduler(optimizer, t, total, monitor_mode)


def _class_scheduler(optimizer: torch.optim.Optimizer, t: TrainSection, total: int, monitor_mode: str):
    """A torch.optim.lr_scheduler class by name with ``train.scheduler_args``; the length
    arguments the user left out are the run's (``total``), OneCycleLR peaks at each group's lr,
    ReduceLROnPlateau follows the monitor's mode."""
    name = tc.scheduler_class(t.scheduler)
    if name is None:
        raise ConfigError(f"unknown train.scheduler={t.scheduler}")
    kwargs = dict(t.scheduler_args)
    length = tc.LENGTH_ARGS.get(name)
    if length is not None and tc.length_dependent(t.scheduler, kwargs):
        kwargs[length] = total
    if name == "OneCycleLR":
        kwargs.setdefault("max_lr", [g["lr"] for g in optimizer.param_groups])
    if name == "ReduceLROnPlateau":
        kwargs.setdefault("mode", monitor_mode)
    return _construct(getattr(torch.optim.lr_scheduler, name), "train.scheduler_args", optimizer, **kwargs)


def planned_steps(state: dict) -> int | None:
    """The total optimizer steps a scheduler (its ``state_dict()``) was built for, or None when its
    shape does not depend on the run's length. Read from the state itself, so checkpoints written
    before this was asked also answer."""
    if not isinstance(state, dict):
        return None
    if "total_steps" in state:  # OneCycleLR
        return int(state["total_steps"])
    if state.get("_schedulers"):  # SequentialLR (warmup_cosine): warm-up steps + the last schedule's
        last = planned_steps(state["_schedulers"][-1])
        milestones = state.get("_milestones") or [0]
        return None if last is None else int(milestones[-1]) + last
    if "T_max" in state:  # CosineAnnealingLR
        return int(state["T_max"])
    if "power" in state and "total_iters" in state:  # PolynomialLR
        return int(state["total_iters"])
    return None


def check_schedule_length(scheduler, saved_state: dict, t: TrainSection, checkpoint: Path) -> None:
    """Refuse to resume ``checkpoint`` when its schedule was planned for another number of steps
    than this run takes (more epochs, another train.max_steps, another process count)."""
    if scheduler is None or not tc.length_dependent(t.scheduler, t.scheduler_args):
        return
    planned, now = planned_steps(saved_state), planned_steps(scheduler.state_dict())
    if planned is None or now is None or planned == now:
        return
    run = Path(checkpoint).parent.parent
    raise LaunchError(
        f"checkpoint {checkpoint} was planned as {planned} optimizer steps with train.scheduler={t.scheduler}, "
        f"whose shape depends on the run's length, and this run would take {now}; to train "
        f"{'longer' if now > planned else 'for fewer steps'}, start a new run from its weights: "
        f"run.name={run.name}-2 model.init_from={run} (or keep the train.epochs, train.max_steps and "
        "process count it was planned with)"
    )
