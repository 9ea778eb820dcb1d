"""Where metrics go: ``metrics.jsonl`` (always) and a console progress bar (rank 0)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class JsonlLogger:
    """Appends one JSON object per event to ``metrics.jsonl``.

    On resume the file is cut back to its length when the checkpoint was taken (its byte
    offset is part of the checkpoint), so it reads exactly as if the run had never been
    interrupted -- also when several events share the checkpoint's step.
    """

    def __init__(self, path: Path, resume_offset: int | None) -> None:
        self.path = path
        if resume_offset is None:
            if path.exists():
                path.unlink()  # a fresh start in a directory whose earlier attempt left no checkpoint
        elif path.exists() and path.stat().st_size > resume_offset:
            os.truncate(path, resume_offset)
        self._f = open(path, "a", buffering=1)

    def offset(self) -> int:
        """Bytes written so far (stored in checkpoints)."""
        self._f.flush()
        return self._f.tell()

    def log(self, event: dict[str, Any]) -> None:
        self._f.write(json.dumps({k: _clean(v) for k, v in event.items()}) + "\n")

    def close(self) -> None:
        self._f.close()


class ConsoleProgress:
    """One tqdm bar with loss, rate and ETA; evaluation results as lines above it."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=0.5
            )

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def postfix(self, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.enabled:
            print(line, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
