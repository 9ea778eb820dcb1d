"""``python -m launcher.runtime.agent MODULE ARGS...``: torchrun's (or Accelerate's) launcher,
started by ``launch`` for several processes on this node, with the stop contract of a single one.

torchrun's agent, left to itself, breaks the contract in three ways: on SIGINT/SIGTERM it raises
``SignalException`` out of its main loop and prints a ~40-line traceback; it dies of SIGUSR2 (it
does not handle it); and it forwards a signal to a worker that may still be starting, whose
interpreter then dies of it (SIGTERM's default action, or ``KeyboardInterrupt`` in the middle of
``site``'s import: "Fatal Python error: init_import_site"). So this module runs MODULE as
``__main__`` with:

- the stop signals blocked in every thread, and so in every worker it starts (the mask survives
  fork and exec). torchrun's handlers never run; one thread here takes the signals with
  ``sigwait`` and passes each to every worker, also to one started later. A worker receives it
  once its stop flag is installed (launcher/runtime/worker.py unblocks them then): never lost,
  never fatal.
- workers that die with this process (``LAUNCHER_PARENT_PID``), which itself dies with ``launch``.
- a quiet end when the workers stopped as asked (exit 130/143, or 2 for bad input they reported in
  one line): the exit status of the workers, no traceback. A real failure still prints
  torchrun's report of which rank failed and why.
"""

from __future__ import annotations

import logging
import os
import runpy
import signal
import sys
import threading
import time

from launcher.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_PREEMPTED, EXIT_STOPPED
from launcher.signals import PARENT_ENV, REPEAT_S, STOP_SIGNALS, die_with_parent_from_env

WORKER_MARK = b"launcher.runtime."  # in the command line of the workers to pass signals to (or evaluator)
QUIET_CODES = (EXIT_STOPPED, EXIT_PREEMPTED, EXIT_BAD_INPUT)


def _children(pid: int) -> list[int]:
    """This process's children that are workers (Linux /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found += [int(c) for c in f.read().split()]
        except OSError:
            continue
    workers = []
    for child in found:
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                if WORKER_MARK in f.read():
                    workers.append(child)
        except OSError:
            continue
    return workers


class Relay:
    """Takes the (blocked) stop signals of this process and passes each one to every worker."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._last = (0, 0.0)
        self._sent: dict[int, int] = {}  # worker pid -> how many of `received` it was sent

    def run(self) -> None:
        pid = os.getpid()
        while True:
            if self.received:  # keep looking for workers that start later
                info = signal.sigtimedwait(STOP_SIGNALS, 0.05)
                signo = info.si_signo if info is not None else None
            else:
                signo = signal.sigwait(STOP_SIGNALS)
            if signo is not None:
                now = time.monotonic()
                # the terminal's Ctrl-C and the one `launch` forwards are one keypress
                if not (signo == self._last[0] and now - self._last[1] < REPEAT_S):
                    self.received.append(signo)
                    _mute_elastic()
                self._last = (signo, now)
            for worker in _children(pid):
                done = self._sent.get(worker, 0)
                for s in self.received[done:]:
                    try:
                        os.kill(worker, s)
                    except OSError:
                        break
                self._sent[worker] = len(self.received)


def _mute_elastic() -> None:
    # torchrun logs each worker it closes and each exit status; after a stop request these are
    # the expected outcome, and the workers say in one line what they saved
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL + 1)


class HeldBack(logging.Handler):
    """Holds torchrun's lines about failed and closed workers ("failed (exitcode: 2)", "Sending
    process N closing signal SIGTERM") until the outcome is known: dropped when the workers
    reported it themselves (bad input, a stop), else passed on to torch's own handlers."""

    def __init__(self, logger: logging.Logger) -> None:
        super().__init__()
        self.logger, self.records = logger, []
        logger.addHandler(self)
        logger.propagate = False

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def finish(self, show: bool) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = True
        if show:
            for record in self.records:
                logging.getLogger("torch").handle(record)  # (its handler, as when propagated)
        self.records = []


def _signal_exits(codes: set[int]) -> bool:
    return all(c is not None and c < 0 for c in codes)


def _exit_code(error: BaseException, relay: Relay) -> int | None:
    """The exit status for a ``ChildFailedError`` that is a stop or a reported bad input, else None
    (a real failure: torchrun's report is printed)."""
    failures = getattr(error, "failures", None) or {}
    codes = {f.exitcode for f in failures.values()}
    if not failures and isinstance(getattr(error, "returncode", None), int):
        codes = {error.returncode}  # `accelerate launch` of one process: CalledProcessError
    if not codes:
        return None
    if relay.received:
        # stopped as asked; a rank that was waiting in a collective for one that had already gone
        # may have ended otherwise, but the run's outcome is rank 0's (what it wrote in summary.json)
        first = failures.get(0)
        if first is None and failures:
            return 0  # rank 0 completed the run before the stop reached it
        if first is not None and first.exitcode in (*QUIET_CODES, EXIT_FAILED):
            return first.exitcode
        return EXIT_STOPPED if relay.received[0] == signal.SIGINT else EXIT_PREEMPTED
    if codes <= set(QUIET_CODES):
        return next(code for code in QUIET_CODES if code in codes)
    first = failures.get(0)
    if first is not None and first.exitcode == EXIT_BAD_INPUT:
        # rank 0 found bad input and said so; a rank that was in a collective with it when it left
        # fails with a lost connection (or however the race ends): the outcome is rank 0's
        return EXIT_BAD_INPUT
    if EXIT_BAD_INPUT in codes and _signal_exits(codes - {EXIT_BAD_INPUT}):
        # one rank found bad input (and said so); torchrun then closed the others with SIGTERM
        return EXIT_BAD_INPUT
    return None


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m launcher.runtime.agent MODULE [ARGS...]", file=sys.stderr)
        return EXIT_BAD_INPUT
    die_with_parent_from_env()
    os.environ[PARENT_ENV] = str(os.getpid())  # the workers die with this process
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # (inherited by every later thread and worker)
    relay = Relay()
    threading.Thread(target=relay.run, name="stop-relay", daemon=True).start()
    module = argv[0]
    sys.argv = [module, *argv[1:]]
    sys.modules.pop(module, None)  # (imported ahead by launcher.prewarm: run its body as __main__, as -m does)
    held = HeldBack(logging.getLogger("torch.distributed.elastic.multiprocessing.api"))
    show = True
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code
        print(code, file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:
        code = _exit_code(e, relay)
        if code is None:
            raise
        show = False
        return code
    finally:
        held.finish(show)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
