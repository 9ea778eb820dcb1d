"""Stop requests: a signal only sets a flag; the loop acts at the next step boundary."""

from __future__ import annotations

import signal
import threading

from launcher.errors import EXIT_PREEMPTED, EXIT_STOPPED

STATUS_FOR = {signal.SIGINT: "stopped", signal.SIGTERM: "preempted", signal.SIGUSR2: "preempted"}
EXIT_FOR = {"stopped": EXIT_STOPPED, "preempted": EXIT_PREEMPTED}


class StopFlag:
    """SIGINT -> ``stopped``; SIGTERM / SIGUSR2 -> ``preempted``. A second SIGINT aborts at once."""

    def __init__(self) -> None:
        self.status: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.status is not None

    def _handle(self, signum, frame) -> None:
        if self.status is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: abort without waiting for the step
        if self.status is None:
            self.status = STATUS_FOR[signum]

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
