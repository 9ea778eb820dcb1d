"""The one place that runs what :mod:`launcher.commands` builds."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from launcher import signals
from launcher.commands import Command
from launcher.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_PREEMPTED, EXIT_STOPPED
from launcher.prewarm import Prewarmed
from launcher.rundir import SUMMARY_FILE


def prewarm(modules: tuple[str, ...], python: str = sys.executable) -> Prewarmed:
    """Start the interpreter that imports ``modules`` while ``launch`` validates (launcher/prewarm.py)."""
    read, write = os.pipe()
    try:
        with signals.blocked():  # the child starts with the stop signals blocked (launcher/prewarm.py)
            proc = subprocess.Popen([python, "-m", Prewarmed.MODULE, str(read), *modules], pass_fds=(read,))
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return Prewarmed(proc, write, python)


def run(command: Command, run_dir: Path, prewarmed: Prewarmed | None = None) -> int:
    """Run ``command`` and return the documented exit status of the run.

    Everything runs as a child, in ``prewarmed`` if given (an interpreter that imported torch
    while this one validated, see :mod:`launcher.prewarm`): the stop signals ``launch`` receives
    (its flag is installed by ``cli.main`` before anything else) are forwarded to it, and the exit
    status is the child's: the worker's own, which torchrun's and Accelerate's launchers pass on
    unchanged (launcher/runtime/agent.py): 0 completed, 2 bad input (said in one line), 130
    stopped, 143 preempted, 1 failed. The child dies with ``launch`` (``LAUNCHER_PARENT_PID``). A single process
    (``command.in_process``) runs in the prewarmed interpreter; without one (or where a child
    cannot be tied to ``launch``'s life) it runs inside this interpreter instead, as the same worker.
    """
    flag = signals.installed()
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
        if command.argv[2] == "launcher.runtime.worker":
            from launcher.runtime.worker import main  # imports torch: only here
        elif command.argv[2] == "launcher.runtime.exporter":
            from launcher.runtime.exporter import main  # (`launch export`)
        elif command.argv[2] == "launcher.runtime.predictor":
            from launcher.runtime.predictor import main  # (`launch predict`)
        else:
            from launcher.runtime.evaluator import main  # (`launch eval`)

        with _environ(command.env):  # (what a child would get, for as long as it runs here)
            return main(command.argv[-1])
    started = time.time()
    env = {**os.environ, **command.env, signals.PARENT_ENV: str(os.getpid())}
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
    if code < 0:  # killed by a signal (the kernel's OOM killer, a kill -9): a crash
        print(f"launch: the training process was killed by signal {-code}", file=sys.stderr, flush=True)
        code = EXIT_FAILED
    if flag is not None and flag.requested and code not in (EXIT_STOPPED, EXIT_PREEMPTED, EXIT_BAD_INPUT):
        if not _summary_since(run_dir, started):  # it ended before it could train or save anything
            return stopped_before_training(flag)
    return code


def start_launch(args: list[str], env: dict[str, str], output=None) -> subprocess.Popen:
    """``launch ARGS`` as a child (a sweep's point: launcher/sweep_run.py), started with the stop
    signals blocked (one meanwhile waits for the child's own flag); ``output``: a file for its
    stdout and stderr (None: this process's)."""
    with signals.blocked():
        return subprocess.Popen([sys.executable, "-m", "launcher", *args], env=env, stdout=output, stderr=output)


@contextlib.contextmanager
def _environ(changes: dict[str, str]):
    saved = {k: os.environ.get(k) for k in changes}
    os.environ.update(changes)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
