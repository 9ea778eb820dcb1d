"""Send a stop signal to a real `launch` at a chosen moment and look at what a person would see:
the exit status, what it printed, and whether any process of the run is left (the process table).

Also a script: ``python -m tests.stop_sweep [--procs N] [--signals INT,TERM,KILL] OFFSET...``
prints one line per trial (used to measure the windows noted in the issue).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import start

# printed lines that must never appear
BAD = re.compile(r"Traceback|Fatal Python error|SignalException|ChildFailedError|KeyboardInterrupt|Killed")


@dataclass
class Trial:
    sig: str
    at: float
    code: int
    stderr: str
    leftovers: list[str]

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __str__(self) -> str:
        shown = " | ".join(self.lines)[:300]
        return f"{self.sig}@{self.at:.2f}s exit {self.code} lines {len(self.lines)} left {len(self.leftovers)}: {shown}"


def processes_in(cwd: Path) -> list[str]:
    """Processes (other than this one) whose working directory is ``cwd``: every process of a run
    started there (launch, the prewarmed interpreter, torchrun's agent, the workers, loader workers)."""
    found = []
    target = os.path.realpath(cwd)
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{pid}/cwd") != target:
                continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if cmd:
            found.append(f"{pid} {cmd}")
    return found


def wait_gone(cwd: Path, timeout: float = 15) -> list[str]:
    deadline = time.time() + timeout
    while True:
        left = processes_in(cwd)
        if not left or time.time() > deadline:
            return left
        time.sleep(0.1)


def trial(args: list[str], cwd: Path, sig: str, at: float | None, timeout: float = 180) -> Trial:
    """Start ``launch ARGS`` in ``cwd`` (its own process group, as a shell job), send ``sig`` after
    ``at`` seconds (None: once training has logged) -- INT to the whole group, as a terminal's
    Ctrl-C does; TERM, USR2 and KILL to launch alone, as ``kill PID`` does -- and wait for the end."""
    proc = start(args, cwd, new_session=True)
    started = proc.started
    if at is None:
        while proc.poll() is None and not any(
            p.stat().st_size and p.stat().st_mtime >= started for p in cwd.glob("runs/*/*/metrics.jsonl")
        ):
            time.sleep(0.02)
        at = time.time() - started
    else:
        time.sleep(at)
    signum = getattr(signal, f"SIG{sig}")
    if sig == "INT":
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        err += "\n[timed out]"
    return Trial(sig, at, proc.returncode, err, wait_gone(cwd))


EXPECTED = {"INT": 130, "TERM": 143, "USR2": 143, "KILL": -signal.SIGKILL}


def check(t: Trial) -> list[str]:
    """What is wrong with a trial's outcome under the stop contract (empty: nothing)."""
    problems = []
    if t.code != EXPECTED[t.sig] and not (t.code == 0 and t.sig != "KILL" and "launch: completed" in t.stderr):
        problems.append(f"exit {t.code}, expected {EXPECTED[t.sig]}")
    if BAD.search(t.stderr):
        problems.append("printed a traceback or a fatal error")
    if t.sig != "KILL" and t.code != 0:
        stops = [line for line in t.lines if re.match(r"launch: (stopped|preempted|aborted)", line)]
        if len(stops) != 1 or len(t.lines) != 1:
            problems.append(f"{len(t.lines)} lines, {len(stops)} saying what was saved")
    if t.leftovers:
        problems.append(f"left {len(t.leftovers)} processes: {t.leftovers}")
    return problems


if __name__ == "__main__":
    import argparse
    import shutil
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("offsets", nargs="+", type=float)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--signals", default="INT,TERM,KILL")
    a = ap.parse_args()
    root = Path(__file__).resolve().parent.parent
    base = [f"recipe={root / 'tests' / 'tiny_recipe.py'}:Tiny", "--device", "cpu", "train.epochs=3", "log.quiet=true"]
    base += ["data.step_delay=0.05", "--procs", str(a.procs)]
    for sig in a.signals.split(","):
        for at in a.offsets:
            cwd = Path(tempfile.mkdtemp(prefix="sweep-"))
            t = trial(base, cwd, sig, at)
            problems = check(t)
            print(("ok   " if not problems else "FAIL ") + str(t) + ("" if not problems else f"  <- {problems}"))
            if problems:
                print(t.stderr, file=sys.stderr)
            sys.stdout.flush()
            shutil.rmtree(cwd, ignore_errors=True)
