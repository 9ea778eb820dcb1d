"""Stop requests: a signal only sets a flag; the loop acts at the next step boundary."""

from __future__ import annotations

import signal
import threading
import time

from launcher.errors import EXIT_PREEMPTED, EXIT_STOPPED

STATUS_FOR = {signal.SIGINT: "stopped", signal.SIGTERM: "preempted", signal.SIGUSR2: "preempted"}
EXIT_FOR = {"stopped": EXIT_STOPPED, "preempted": EXIT_PREEMPTED}


class StopFlag:
    """SIGINT -> ``stopped``; SIGTERM / SIGUSR2 -> ``preempted``. A second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.status: str | None = None
        self._first_at = 0.0
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.status is not None

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        # A second Ctrl-C aborts at once. One keypress can arrive twice (from the terminal and
        # forwarded by `launch`/torchrun), so only a SIGINT a moment after the first counts.
        if self.status is not None and signum == signal.SIGINT and now - self._first_at > 0.1:
            raise KeyboardInterrupt
        if self.status is None:
            self.status = STATUS_FOR[signum]
            self._first_at = now

    def install(self) -> StopFlag:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only (e.g. the runtime embedded in a thread)
        for sig in STATUS_FOR:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


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
