"""Stop signals and process lifetimes, for every process of a run (no torch: ``launch`` uses it too).

The contract (README "Exit status", slurm/README.md): a stop signal only sets a flag, whenever it
arrives; the training loop acts at the next step boundary (checkpoint, summary, exit 130/143).

- :class:`StopFlag` records the first stop signal (SIGINT -> ``stopped``; SIGTERM, SIGUSR2,
  SIGHUP -> ``preempted``). A second SIGINT a moment later aborts at once (KeyboardInterrupt).
  ``launch`` installs one before it parses its arguments, and forwards what it records to the
  process it starts; the worker installs one before it imports anything slow.
- :func:`blocked`: every process ``launch`` starts is started with the stop signals *blocked*
  (the mask survives fork and exec). A signal that arrives while the child imports torch, or
  before a worker has installed its flag, waits as pending instead of killing it by the signal's
  default action (or as a ``KeyboardInterrupt`` inside the interpreter's start-up); it is
  delivered the moment :meth:`StopFlag.install` unblocks the signals.
- :func:`die_with_parent`: a process ``launch`` starts (and each worker a torchrun agent starts)
  is killed by the kernel when its parent dies, whatever killed the parent (``kill -9`` included),
  so no worker ever trains on as an orphan. Parents name themselves in ``LAUNCHER_PARENT_PID``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from launcher.errors import EXIT_PREEMPTED, EXIT_STOPPED

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP)
STATUS_FOR = {
    signal.SIGINT: "stopped",
    signal.SIGTERM: "preempted",
    signal.SIGUSR2: "preempted",
    signal.SIGHUP: "preempted",
}
EXIT_FOR = {"stopped": EXIT_STOPPED, "preempted": EXIT_PREEMPTED}
# A stop request written to a file (by the Slurm batch script, for a signal that arrived before the
# workers could receive one): the file holds the signal's name.
STOP_FILE_ENV = "LAUNCHER_STOP_FILE"
PARENT_ENV = "LAUNCHER_PARENT_PID"  # the process whose death must end this one
REPEAT_S = 0.1  # one Ctrl-C can arrive twice (from the terminal and forwarded): within this, it counts once

_installed: list[StopFlag] = []  # innermost last


class StopFlag:
    """The first stop signal -> ``status``; a second SIGINT (``abort``) -> KeyboardInterrupt.

    ``forward``, if set, is called with every signal received (``launch``: pass it to the child).
    ``install()`` takes over the status of a flag installed before it in this process (a signal
    ``launch`` received before it ran the worker in its own interpreter counts for the worker).
    """

    def __init__(self, abort: bool = True, forward: Callable[[int], None] | None = None) -> None:
        self.status: str | None = None
        self.signum: int | None = None
        self.abort = abort
        self.forward = forward
        self.request_file: Path | None = None
        self._first_at = 0.0
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.status is not None

    @property
    def exit_code(self) -> int:
        return EXIT_FOR.get(self.status or "stopped", EXIT_STOPPED)

    def _handle(self, signum, frame) -> None:
        now = time.monotonic()
        if self.forward is not None:
            self.forward(signum)
        if self.status is None:
            self.set(signum)
        elif signum == signal.SIGINT and self.abort and now - self._first_at > REPEAT_S:
            raise KeyboardInterrupt

    def set(self, signum: int) -> None:
        """Record ``signum`` as if it had been received (no abort, no forwarding)."""
        if self.status is None:
            self.status, self.signum, self._first_at = STATUS_FOR[signal.Signals(signum)], signum, time.monotonic()

    def check_request_file(self) -> bool:
        """Take a stop request from :attr:`request_file` (if it exists); True if one is requested."""
        if self.status is None and self.request_file is not None:
            try:
                name = self.request_file.read_text().strip().upper()
            except OSError:
                name = None
            if name is not None:
                sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", signal.SIGUSR2)
                self.set(sig if sig in STATUS_FOR else signal.SIGUSR2)
        return self.requested

    def install(self) -> StopFlag:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only (e.g. the runtime embedded in a thread)
        if _installed and self.status is None and _installed[-1].status is not None:
            outer = _installed[-1]
            self.status, self.signum, self._first_at = outer.status, outer.signum, outer._first_at
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        _installed.append(self)
        # a signal that waited while this process started (see `blocked`) is delivered now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if self in _installed:
            _installed.remove(self)


def installed() -> StopFlag | None:
    """The innermost flag installed in this process, if any."""
    return _installed[-1] if _installed else None


@contextmanager
def blocked() -> Iterator[None]:
    """Block the stop signals in this thread while the body runs (children started in it inherit
    the mask; signals received meanwhile are delivered afterwards, not lost)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


CAN_DIE_WITH_PARENT = sys.platform == "linux"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when ``parent`` (its parent) dies; if it is already
    gone (this process has been handed to init), die now. No-op where the kernel cannot do it."""
    if not CAN_DIE_WITH_PARENT:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent_from_env(environ=os.environ) -> None:
    """:func:`die_with_parent` for the parent named in ``LAUNCHER_PARENT_PID`` (if set)."""
    value = environ.get(PARENT_ENV, "")
    if value.isdigit():
        die_with_parent(int(value))
