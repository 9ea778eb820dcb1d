"""TensorBoard: scalars, hyperparameters with the final metrics, optional histograms and the model
graph. ``tensorboard`` and ``torch.utils.tensorboard`` are imported when the backend starts."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path
from typing import Any

from launcher.runtime.loggers.base import redact

_EVENT_FILES = "events.out.tfevents.*"


def _hparam_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return "null" if v is None else json.dumps(v)


def _after_existing_files(directory: Path) -> None:
    """TensorBoard reads a directory's event files in name order, and a name is
    ``events.out.tfevents.<unix second>.<host>.<pid>...``: the file of this attempt must sort after
    the earlier attempts' (its purge_step applies to what was read before it). Started within the
    same second as one of them (a quick resume, another host, a lower pid), it waits for the next
    second."""
    import time

    newest = 0
    for f in directory.glob(_EVENT_FILES):
        stamp = f.name.split(".")[3]
        if stamp.isdigit():
            newest = max(newest, int(stamp))
    while int(time.time()) <= newest and newest - time.time() < 5:  # (a clock set back: do not wait for it)
        time.sleep(0.05)


class TensorBoardBackend:
    """Scalars for every metric, hyperparameters with the final metrics, optional weight/gradient
    histograms and the model graph. On resume, everything from the checkpoint's step on is purged
    (``purge_step``) and the events of that step kept in ``metrics.jsonl`` are written again, so the
    event files read exactly like ``metrics.jsonl``."""

    name = "tensorboard"

    def __init__(self, cfg: Any, directory: Path, resume_step: int | None, replay: list[dict[str, Any]]) -> None:
        from launcher.config import flatten, to_plain
        from launcher.logsetup import missing_package

        if importlib.util.find_spec("tensorboard") is None:
            raise missing_package("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        if resume_step is None and directory.is_dir():
            for old in directory.glob(_EVENT_FILES):  # an earlier attempt that left no checkpoint
                old.unlink()
        elif directory.is_dir():
            _after_existing_files(directory)
        self.writer = SummaryWriter(str(directory), purge_step=resume_step)
        flat = flatten(redact(to_plain(cfg)))
        self.hparams = {k: _hparam_value(v) for k, v in flat.items() if v != {}}  # (an empty section: no hparam)
        for event in replay:
            self.log(event)

    def log(self, event: dict[str, Any]) -> None:
        step = int(event.get("step", 0))
        for k, v in event.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def histograms(self, model: Any, step: int) -> None:
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def graph(self, model: Any, inputs: tuple) -> None:
        self.writer.add_graph(model, inputs)

    def finish(self, status: str, code: int, summary: dict[str, Any]) -> None:
        if status == "completed":
            metrics = {f"hparam/{k}": v for k, v in (summary.get("final_metrics") or {}).items()}
            best = summary.get("best") or {}
            if best.get("value") is not None:
                metrics[f"hparam/best/{best.get('metric')}"] = best["value"]
            metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            if metrics:
                self.writer.add_hparams(self.hparams, metrics, run_name=".", global_step=summary.get("global_step"))
        self.close()

    def close(self) -> None:
        self.writer.close()
