"""What the loop decides from each evaluation: the best value of ``checkpoint.monitor``, early
stopping (``train.early_stopping``) and the plateau scheduler's step. Its state lives in the
run's trackers (checkpointed with them)."""

from __future__ import annotations

from typing import Any

import torch

from launcher.recipe_loader import UnknownMetric, unknown_metric_message


def better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def plateau_monitor(cfg: Any) -> tuple[str, str]:
    """(metric, mode) that a ReduceLROnPlateau scheduler steps on: early stopping's monitor if
    set, else the checkpoint's."""
    es = cfg.train.early_stopping
    return (es.monitor, es.mode) if es.monitor else (cfg.checkpoint.monitor, cfg.checkpoint.mode)


class Monitor:
    def __init__(self, cfg: Any, scheduler: Any) -> None:
        self.checkpoint = cfg.checkpoint
        self.early_stopping = cfg.train.early_stopping
        self.plateau = scheduler if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) else None
        self.plateau_metric, _ = plateau_monitor(cfg)

    def update(self, trackers: Any, metrics: dict[str, float], step: int) -> bool:
        """After an evaluation at ``step`` (its ``metrics``): best value, plateau step, early
        stopping. Returns whether this rank wants to stop early."""
        t, c, es = trackers, self.checkpoint, self.early_stopping
        available = {**t.last_train, **metrics}

        def metric(name: str, key: str) -> float:
            if name not in available:  # (a recipe's declared metric_names were checked before training)
                raise UnknownMetric(unknown_metric_message(key, name, sorted(available)))
            return available[name]

        if c.keep_best or c.monitor in metrics:
            value = metric(c.monitor, "checkpoint.monitor")
            if better(value, t.best_value, c.mode):
                t.best_value, t.best_step = value, step
        if self.plateau is not None:
            self.plateau.step(metric(self.plateau_metric, "train.early_stopping.monitor"))
        if es.monitor:
            value = metric(es.monitor, "train.early_stopping.monitor")
            if better(value, t.es_best, es.mode, es.min_delta):
                t.es_best, t.es_bad_evals = value, 0
            else:
                t.es_bad_evals += 1
            if t.es_bad_evals >= es.patience:
                t.early_stopped = True
        return t.early_stopped
