"""The one place that runs what :mod:`launcher.commands` builds."""

from __future__ import annotations

import os

from launcher.commands import Command


def run(command: Command) -> int:
    """Run ``command`` and return its exit status.

    A single process runs the worker in this interpreter (no second start-up, signals reach the
    training loop directly); multi-process launchers replace this process (exec), so signals
    from the terminal or the scheduler go straight to them.
    """
    os.environ.update(command.env)
    if command.in_process:
        from launcher.runtime.worker import main as worker_main  # imports torch: only here

        return worker_main(command.argv[-1])
    os.execvpe(command.argv[0], command.argv, os.environ)
    raise AssertionError("unreachable")
