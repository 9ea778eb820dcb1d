"""The one place that runs what :mod:`launcher.commands` builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from launcher.commands import Command
from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, EXIT_FAILED, EXIT_PREEMPTED, EXIT_STOPPED
from launcher.prewarm import CAN_DIE_WITH_PARENT, Prewarmed
from launcher.rundir import EXIT_CODE_FILE

EXIT_FOR_STATUS = {
    "completed": EXIT_COMPLETED,
    "stopped": EXIT_STOPPED,
    "preempted": EXIT_PREEMPTED,
    "failed": EXIT_FAILED,
}
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2, signal.SIGHUP)


def run(command: Command, run_dir: Path, prewarmed: Prewarmed | None = None) -> int:
    """Run ``command`` and return the documented exit status of the run.

    Everything runs as a child, in ``prewarmed`` if given (an interpreter that imported torch
    while this one validated, see :mod:`launcher.prewarm`): signals sent to ``launch`` are
    forwarded to it, and the exit status comes from the run's ``summary.json`` (a launcher's own
    code cannot tell "stopped" from "failed"). A single process (``command.in_process``) runs in
    the prewarmed interpreter, which dies with ``launch``; without one (or where a child cannot
    be tied to ``launch``'s life) it runs inside this interpreter instead, as the same worker.
    """
    os.environ.update(command.env)
    usable = prewarmed is not None and prewarmed.can_run(command.argv)
    if command.in_process and not CAN_DIE_WITH_PARENT:
        usable = False
    if prewarmed is not None and not usable:
        prewarmed.cancel()
        prewarmed = None
    if command.in_process and prewarmed is None:
        from launcher.runtime.worker import main as worker_main  # imports torch: only here

        return worker_main(command.argv[-1])
    started = time.time()
    if prewarmed is not None:
        child = prewarmed.start(command.argv, dict(os.environ), die_with_parent=command.in_process)
    else:
        child = subprocess.Popen(command.argv)

    def forward(signum, frame):
        # A Ctrl-C reaches the whole process group anyway; forwarding it again is harmless
        # (the workers treat repeated stop requests as one) and covers `kill -INT <launch pid>`.
        if child.poll() is None:
            child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status_code(run_dir, started, code)


def status_code(run_dir: Path, started: float, fallback: int) -> int:
    """Exit status from ``summary.json`` if this attempt wrote it, else the launcher's own.

    A worker that found bad input before training removes a fresh run directory (so a missing
    directory means exit 2) or leaves ``.exit_code``."""
    if fallback != 0 and not run_dir.exists():
        return EXIT_BAD_INPUT
    marker = run_dir / EXIT_CODE_FILE
    try:
        if marker.stat().st_mtime >= started:
            code = int(marker.read_text())
            marker.unlink()
            return code
    except (OSError, ValueError):
        pass
    path = run_dir / "summary.json"
    try:
        if path.stat().st_mtime >= started:
            return EXIT_FOR_STATUS.get(json.loads(path.read_text()).get("status"), fallback or EXIT_FAILED)
    except (OSError, ValueError):
        pass
    return fallback
