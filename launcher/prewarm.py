"""Start the interpreter that will train (or run torchrun) before the command is known.

``launch`` spends a moment validating the config and preparing the run directory before it can
start training, and the training interpreter then spends seconds importing torch (torchrun's agent
too, before it starts its workers). Both are on the critical path to the first training step. So
``launch`` starts a child interpreter first (``python -m launcher.prewarm MODULE...``), which
imports the modules while the parent validates on another core, then waits on a pipe for the
real command:

- ``launcher.spawn.prewarm(modules)`` starts it (only :mod:`launcher.spawn` starts processes).
- ``Prewarmed.start(argv, env)`` sends ``python -m X ARGS...`` with its whole environment; the
  child sets both and runs module X as ``__main__`` -- exactly what ``python -m X ARGS...`` would
  do, minus the imports already done. X (the worker, or the agent around torchrun) asks the kernel
  to kill it when ``launch`` dies (``LAUNCHER_PARENT_PID``, launcher/signals.py): ``kill -9`` of
  ``launch`` still ends the run at once, as a crash.
- ``Prewarmed.cancel()`` (bad input, an already complete run, a stop requested before training, a
  command it cannot run, ...) kills it. It has done nothing the user could see: no output, no files.

The child starts with the stop signals blocked (:func:`launcher.signals.blocked`): a Ctrl-C while it
imports torch neither kills it nor interrupts an import; ``launch`` decides (it got the Ctrl-C too),
and once the command runs, a signal that waited is delivered to the worker's stop flag.

The child's stdin, stdout and stderr are the parent's (a breakpoint in a worker still works); the
command travels on a separate pipe.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys

from launcher.startup import imports_without_gc


class Prewarmed:
    """The parent's handle on the child that :func:`launcher.spawn.prewarm` started (``proc``),
    with ``write_fd`` the pipe its command travels on."""

    MODULE = __name__  # what the child runs: ``python -m launcher.prewarm READ_FD MODULES...``

    def __init__(self, proc: subprocess.Popen, write_fd: int, python: str) -> None:
        self.proc, self._write, self.python = proc, write_fd, python
        self.started = False

    def can_run(self, argv: list[str]) -> bool:
        """Whether ``argv`` is ``python -m MODULE ...`` with the same interpreter (what it can run)."""
        return len(argv) >= 3 and argv[0] == self.python and argv[1] == "-m"

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        """Run ``argv`` (``python -m MODULE ARGS...``) with exactly ``env`` in the child."""
        self.started = True
        request = {"module": argv[2], "args": argv[3:], "env": env}
        message = json.dumps(request).encode()
        with os.fdopen(self._write, "wb") as pipe:
            pipe.write(message)
        return self.proc

    def cancel(self) -> None:
        """The child is not needed: stop it (it has written nothing). No-op once started."""
        if self.started:
            return
        self.started = True
        try:
            os.close(self._write)
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def _child(read_fd: int, modules: list[str]) -> None:
    # Until the command arrives this process is invisible: the stop signals wait (blocked since it
    # started) and a failed import is left for the real command to report.
    with imports_without_gc():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # the real command will import it again and report the problem
                pass
    with os.fdopen(read_fd, "rb") as pipe:
        message = pipe.read()
    if not message:
        sys.exit(0)  # cancelled
    request = json.loads(message)
    os.environ.clear()
    os.environ.update(request["env"])
    import runpy

    module = request["module"]
    # `python -m X` runs X's body as __main__, not the copy imported above (only its imports are kept)
    sys.modules.pop(module, None)
    sys.argv = [module, *request["args"]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    _child(int(sys.argv[1]), sys.argv[2:])
