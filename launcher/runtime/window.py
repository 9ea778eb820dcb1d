"""What the loop measures between two log events: the recipe's per-step sums (the metric window),
the time they took (training, data wait, evaluation and checkpoints excluded), peak memory, and
the totals over every attempt that summary.json reports."""

from __future__ import annotations

import sys
import time
from typing import Any

import torch

WINDOW_FOLD = 512  # per-step sums kept before they are folded into one


def scalar(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def fold_window(window: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-step sums of a logging window added up, key by key.

    The tensors of a key become one stacked sum (two operations on the device, however long
    the window, and no host sync); plain numbers are added in Python."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for sums in window for k in sums):
        values = [sums[key] for sums in window if key in sums]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        total: Any = sum(v for v in values if not isinstance(v, torch.Tensor))
        if len(tensors) == 1:
            total = tensors[0] + total if total else tensors[0]
        elif tensors:
            try:
                stacked = torch.stack(tensors).sum()
            except RuntimeError:  # one-element tensors of different shapes: (1,) and ()
                stacked = torch.stack([t.reshape(()) for t in tensors]).sum()
            total = stacked + total if total else stacked
        out[key] = total
    return out


class MetricWindow:
    """The steps since the last train log: their sums (added up only when logged, one list
    append per step instead of one tensor addition per metric) and their time.

    ``wait`` (blocked in the data loader) and ``other`` (evaluating, checkpointing) are added to
    by the loop; :meth:`train_time` is the window's wall time without ``other``."""

    __slots__ = ("sums", "start", "carry", "wait", "other", "step0")

    def __init__(self, step0: int = 0) -> None:
        self.sums: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        self.carry = 0.0  # training seconds of this window before this attempt (from a checkpoint)
        self.wait = 0.0
        self.other = 0.0
        self.step0 = step0  # global step when the window began

    def add(self, sums: dict[str, Any]) -> None:
        for v in sums.values():
            if isinstance(v, torch.Tensor) and v.requires_grad:
                # kept with its graph, the window would hold every step's graph
                sums = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in sums.items()}
                break
        window = self.sums
        window.append(sums)
        if len(window) >= WINDOW_FOLD:  # a long log_every: bounded memory (and still exact on resume)
            self.sums = [fold_window(window)]

    def __bool__(self) -> bool:
        return bool(self.sums)

    def totals(self) -> dict[str, float]:
        """This rank's sums of the window, as numbers (one host sync per key)."""
        return {k: scalar(v) for k, v in fold_window(self.sums).items()}

    def restart_clock(self) -> None:
        """From now on (set-up and logging are not training time)."""
        self.start = time.perf_counter()

    def train_time(self) -> float:
        """Seconds of training steps in the window (evaluation and checkpoints excluded)."""
        return self.carry + time.perf_counter() - self.start - self.other

    def reset(self, step: int) -> None:
        """A new window beginning at ``step`` (after a log event)."""
        self.sums = []
        self.carry = self.wait = self.other = 0.0
        self.step0 = step

    # checkpointed inside the trackers (keys of the checkpoint format, version 1)
    def state(self) -> dict[str, Any]:
        return {
            # kept as they are (dtype included), so the logged values after a resume are exact
            "window": [
                {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in sums.items()}
                for sums in self.sums
            ],
            "window_time": self.train_time(),
            "window_wait": self.wait,
            "window_step0": self.step0,
        }

    @classmethod
    def pop_state(cls, trackers: dict[str, Any], device: torch.device, step: int) -> MetricWindow:
        """The window saved in a checkpoint's ``trackers`` (removing its keys from it)."""
        window = trackers.pop("window", [])
        trackers.pop("window_samples", None)  # written by earlier versions; now the window's "count"
        out = cls(trackers.pop("window_step0", step))
        out.carry = trackers.pop("window_time", 0.0)
        out.wait = trackers.pop("window_wait", 0.0)
        if isinstance(window, dict):  # earlier versions kept the running sums
            window = [window] if window else []
        out.sums = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in s.items()} for s in window]
        return out


def peak_memory(device: torch.device) -> dict[str, float]:
    """Peak memory so far: this process's RSS, and CUDA memory when on a GPU (MiB)."""
    import resource

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    out = {"memory/rss_peak_mb": rss}
    if device.type == "cuda":
        out["memory/cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def window_event(totals: dict[str, float], window: MetricWindow, step: int) -> tuple[dict[str, float], float, float]:
    """The timing part of a train log event for a window ending at ``step`` whose sums over all
    ranks are ``totals``: (metrics, training seconds, seconds waited for data)."""
    train_time = max(window.train_time(), 1e-9)
    wait = min(window.wait, train_time)
    steps = max(1, step - window.step0)
    samples = totals.get("count", 0)  # of all ranks
    return (
        {
            "samples_per_sec": samples / train_time,
            "time/step_sec": train_time / steps,
            "time/data_wait_sec": wait / steps,
            "time/compute_sec": (train_time - wait) / steps,
            "time/data_wait_frac": wait / train_time,
        },
        train_time,
        wait,
    )


def run_totals(trackers: Any, memory: dict[str, float]) -> dict[str, Any]:
    """Totals over every attempt (for summary.json), named like the per-window metrics."""
    t = trackers
    train = t.time_train
    return {
        "samples_per_sec": t.samples_trained / train if train > 0 else None,
        "time/train_sec": train,
        "time/data_wait_sec": t.time_data_wait,
        "time/data_wait_frac": t.time_data_wait / train if train > 0 else None,
        "time/eval_sec": t.time_eval,
        "time/checkpoint_sec": t.time_checkpoint,
        "time/epoch_sec": list(t.epoch_times),
        "memory/rss_peak_mb": max(t.rss_peak_mb, memory["memory/rss_peak_mb"]),
        "memory/cuda_peak_mb": t.cuda_peak_mb,
    }
