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
