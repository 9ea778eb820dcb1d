"""Stop requests in the training loop: when the ranks look at the stop flag (the flag itself and
the signals it handles: :mod:`launcher.signals`)."""

from __future__ import annotations

import time

from launcher.signals import EXIT_FOR, STATUS_FOR, StopFlag

__all__ = ["EXIT_FOR", "STATUS_FOR", "StopCheck", "StopFlag"]


class StopCheck:
    """When the training loop looks at the stop flag: ``check(step)`` is True once the ranks
    agree that a stop was requested.

    Ranks must agree on the step at which they stop, and agreeing is a collective. One every step
    costs DDP on a small model several per cent (each all-reduce is one more point where the ranks
    wait for each other), so distributed ranks agree about every ``interval`` seconds instead:
    each check also agrees (the smallest wish of the ranks) on how many steps to wait for the next
    one, from the measured step time. A stop request is acted on within about ``interval``
    seconds, or at the next step if steps are slower. A single process checks every step.
    """

    def __init__(self, strategy, flag: StopFlag, step: int, interval: float = 0.5, max_every: int = 10_000) -> None:
        self.strategy, self.flag = strategy, flag
        self.interval, self.max_every = interval, max_every
        self.next_step, self.last_step, self.last_time = step + 1, step, time.perf_counter()

    def __call__(self, step: int) -> bool:
        if step < self.next_step:
            return False
        now = time.perf_counter()
        per_step = max(now - self.last_time, 1e-9) / max(step - self.last_step, 1)
        want = max(1, min(self.max_every, int(self.interval / per_step)))
        stop, every = self.strategy.stop_check(self.flag.requested, want)
        self.next_step, self.last_step, self.last_time = step + every, step, now
        return stop
