"""The one small interface every logging backend implements, and what the backends share.

A backend (wandb, TensorBoard: one file each in this package) receives every event that goes
to ``metrics.jsonl``, writes its final records once at the end of the run, and is closed
exactly once. :class:`launcher.runtime.loggers.Loggers` fans out to them and drops a backend
that fails (training goes on; ``metrics.jsonl`` keeps everything).
"""

from __future__ import annotations

from typing import Any, Protocol

from launcher.config import SECRET_KEY


class Backend(Protocol):
    """What :class:`~launcher.runtime.loggers.Loggers` asks of a backend.

    Optional, looked up with ``hasattr``: ``histograms(model, step)`` (weight and gradient
    histograms every ``log.tensorboard.histogram_every`` steps) and ``graph(model, inputs)`` (the
    model graph, traced once)."""

    name: str  # shown in the one-line warning when it fails

    def log(self, event: dict[str, Any]) -> None:
        """One event of ``metrics.jsonl`` (``step`` plus metric values)."""

    def finish(self, status: str, code: int, summary: dict[str, Any]) -> None:
        """The run's end: its status, exit code and ``summary.json``; the backend is closed after it."""

    def close(self) -> None:
        """Release the backend; called after ``finish``, or instead of it when the backend failed.
        Idempotent."""


def redact(tree: Any) -> Any:
    """The config without secrets: values of keys that look like keys/tokens/passwords."""
    if isinstance(tree, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree
