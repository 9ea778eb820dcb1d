"""Start the interpreter that will train (or run torchrun) before the command is known.

``launch`` spends ~0.3 s validating the config and preparing the run directory before it can
start training, and the training interpreter then spends 2-3 s importing torch (torchrun's agent
too, before it starts its workers). Both are on the critical path to the first training step. So
``launch`` starts a child interpreter first (``python -m launcher.prewarm MODULE...``), which
imports the modules while the parent validates on another core, then waits on a pipe for the
real command:

- ``Prewarmed.start(argv, env)`` sends ``python -m X ARGS...`` with its whole environment; the
  child sets both and runs module X as ``__main__`` -- exactly what ``python -m X ARGS...`` would
  do, minus the imports already done. With ``die_with_parent`` (the single-process worker, which
  used to run inside ``launch``) the kernel kills it when ``launch`` dies: ``kill -9`` of
  ``launch`` still ends the run at once, as a crash (Linux: ``PR_SET_PDEATHSIG``).
- ``Prewarmed.cancel()`` (bad input, an already complete run, a command it cannot run, ...) kills it. It
  has done nothing the user could see: no output, no files.

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
    def __init__(self, modules: tuple[str, ...], python: str = sys.executable) -> None:
        read, self._write = os.pipe()
        try:
            self.proc = subprocess.Popen([python, "-m", __name__, str(read), *modules], pass_fds=(read,))
        finally:
            os.close(read)
        self.python = python
        self.started = False

    def can_run(self, argv: list[str]) -> bool:
        """Whether ``argv`` is ``python -m MODULE ...`` with the same interpreter (what it can run)."""
        return len(argv) >= 3 and argv[0] == self.python and argv[1] == "-m"

    def start(self, argv: list[str], env: dict[str, str], die_with_parent: bool = False) -> subprocess.Popen:
        """Run ``argv`` (``python -m MODULE ARGS...``) with exactly ``env`` in the child;
        ``die_with_parent``: SIGKILL it if this process dies (only where :data:`CAN_DIE_WITH_PARENT`)."""
        self.started = True
        request = {"module": argv[2], "args": argv[3:], "env": env}
        if die_with_parent:
            request["die_with_parent"] = os.getpid()
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


CAN_DIE_WITH_PARENT = sys.platform == "linux"
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def _child(read_fd: int, modules: list[str]) -> None:
    import signal

    # Until the command arrives this process is invisible: a Ctrl-C (sent to the whole process
    # group) or a failed import ends it quietly; the parent reports what matters.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    if request.get("die_with_parent"):
        _die_with_parent(request["die_with_parent"])
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
