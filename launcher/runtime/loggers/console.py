"""The console progress: a tqdm bar on a terminal, plain progress lines elsewhere (tqdm is imported
only for a bar)."""

from __future__ import annotations

import math
import sys
import time


class ConsoleProgress:
    """One tqdm bar with loss, rate and ETA on a terminal; evaluation results as lines above it.

    When stderr is not a terminal (a Slurm log, CI, ``> file``) a redrawn bar would fill the file
    with carriage returns: there it prints one plain progress line every ``line_every`` seconds.
    """

    def __init__(self, total: int, initial: int, enabled: bool, line_every: float = 30.0) -> None:
        self.enabled = enabled
        self.bar = None
        self.total, self.done, self.initial = total, initial, initial
        self.values: dict[str, float] = {}
        self.line_every = line_every
        self.started = self.last_line = time.monotonic()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=0.5
            )

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            self.done += n
            now = time.monotonic()
            if now - self.last_line >= self.line_every or self.done == self.total:
                self.last_line = now
                print(self._line(now), file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        rate = (self.done - self.initial) / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        shown = "  ".join(f"{k}={v:.4g}" for k, v in self.values.items())
        pct = 100 * self.done / max(self.total, 1)
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
        return f"step {self.done}/{self.total} ({pct:.0f}%)  {shown}  {rate:.3g} step/s  ETA {eta_s}"

    def postfix(self, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        self.values = dict(values)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
