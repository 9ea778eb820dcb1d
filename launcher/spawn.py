"""The one place that runs what :mod:`launcher.commands` builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from launcher import signals
from launcher.commands import Command
from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, EXIT_FAILED, EXIT_PREEMPTED, EXIT_STOPPED
from launcher.prewarm import Prewarmed
from launcher.rundir import EXIT_CODE_FILE, SUMMARY_FILE

EXIT_FOR_STATUS = {
    "completed": EXIT_COMPLETED,
    "stopped": EXIT_STOPPED,
    "preempted": EXIT_PREEMPTED,
    "failed": EXIT_FAILED,
}


def run(command: Command, run_dir: Path, prewarmed: Prewarmed | None = None) -> int:
    """Run ``command`` and return the documented exit status of the run.

    Everything runs as a child, in ``prewarmed`` if given (an interpreter that imported torch
    while this one validated, see :mod:`launcher.prewarm`): the stop signals ``launch`` receives
    (its flag is installed by ``cli.main`` before anything else) are forwarded to it, and the exit
    status comes from the run's ``summary.json`` (a launcher's own code cannot tell "stopped" from
    "failed"). The child dies with ``launch`` (``LAUNCHER_PARENT_PID``). A single process
    (``command.in_process``) runs in the prewarmed interpreter; without one (or where a child
    cannot be tied to ``launch``'s life) it runs inside this interpreter instead, as the same worker.
    """
    flag = signals.installed()
    os.environ.update(command.env)
    usable = prewarmed is not None and prewarmed.can_run(command.argv)
    if command.in_process and not signals.CAN_DIE_WITH_PARENT:
        usable = False
    if prewarmed is not None and not usable:
        prewarmed.cancel()
        prewarmed = None
    if flag is not None and flag.requested:  # Ctrl-C (or a TERM) while launch prepared the run
        if prewarmed is not None:
            prewarmed.cancel()
        return stopped_before_training(flag)
    if command.in_process and prewarmed is None:
        from launcher.runtime.worker import main as worker_main  # imports torch: only here

        return worker_main(command.argv[-1])
    started = time.time()
    env = {**os.environ, signals.PARENT_ENV: str(os.getpid())}
    with signals.blocked():  # it starts with them blocked: one that arrives meanwhile waits for its flag
        child = prewarmed.start(command.argv, env) if prewarmed is not None else subprocess.Popen(command.argv, env=env)
    if flag is not None:
        missed = flag.signum if flag.requested else None

        def forward(signum: int) -> None:
            # A Ctrl-C reaches the whole process group anyway; forwarding it again is harmless
            # (repeated stop requests count once) and covers `kill -INT <launch pid>`.
            if child.poll() is None:
                child.send_signal(signum)

        flag.forward, flag.abort = forward, False  # a second Ctrl-C is the child's to act on
        if missed is not None:  # arrived while the child was being started
            forward(missed)
    try:
        code = child.wait()
    finally:
        if flag is not None:
            flag.forward, flag.abort = None, True
    code = status_code(run_dir, started, code)
    if flag is not None and flag.requested and code not in (EXIT_STOPPED, EXIT_PREEMPTED, EXIT_BAD_INPUT):
        if not _summary_since(run_dir, started):  # it ended before it could train or save anything
            return stopped_before_training(flag)
    return code


def stopped_before_training(flag: signals.StopFlag) -> int:
    """A stop requested before the run began: one line, the stop's exit status."""
    print(
        f"launch: {flag.status} before training started; nothing needed saving (run the same command to start)",
        file=sys.stderr,
        flush=True,
    )
    return flag.exit_code


def _summary_since(run_dir: Path, started: float) -> bool:
    try:
        return (run_dir / SUMMARY_FILE).stat().st_mtime >= started
    except OSError:
        return False


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
    if _summary_since(run_dir, started):
        try:
            status = json.loads((run_dir / SUMMARY_FILE).read_text()).get("status")
            return EXIT_FOR_STATUS.get(status, fallback or EXIT_FAILED)
        except (OSError, ValueError):
            pass
    return fallback
