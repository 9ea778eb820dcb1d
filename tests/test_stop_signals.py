"""The stop contract of a local `launch`, at any instant (issue: Ctrl-C ignored in the first second,
exit 241 on SIGTERM, 40-125-line tracebacks under torchrun, orphaned workers after `kill -9`).

Each trial starts a real `launch` (one process, or two under torchrun's agent), sends SIGINT to its
process group (a terminal's Ctrl-C), or SIGTERM/SIGUSR2/SIGKILL to `launch` alone, and checks what a
person sees: the documented exit status, one `launch:` line saying what was saved, no traceback, no
process of the run left in the process table; then the same command again finishes the run with
weights bit-identical to an uninterrupted run. The moments range from `launch` still validating,
through the worker importing torch and the rendezvous, to steady training. The whole sweep is
marked slow (`pytest -m slow tests/test_stop_signals.py`); a sample of it runs in every suite.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import TINY, assert_same_weights, only_run_dir, run_launch
from tests.stop_sweep import check, trial

# ~24 steps, slow enough per step that a signal lands mid-training when sent after the first log
ARGS = [f"recipe={TINY}", "--device", "cpu", "train.epochs=2", "log.quiet=true", "data.step_delay=0.04"]


@pytest.fixture(scope="module")
def references(tmp_path_factory) -> dict[int, object]:
    out = {}
    for procs in (1, 2):
        cwd = tmp_path_factory.mktemp(f"reference{procs}")
        r = run_launch([*ARGS, "--procs", str(procs)], cwd)
        assert r.returncode == 0, r.stderr
        out[procs] = only_run_dir(cwd) / "model.safetensors"
    return out


def _stop_and_resume(tmp_path, references, procs: int, sig: str, at: float | None) -> None:
    args = [*ARGS, "--procs", str(procs)]
    t = trial(args, tmp_path, sig, at)
    assert check(t) == [], f"{t}\n{t.stderr}"
    r = run_launch(args, tmp_path)  # the same command: resumes (or starts) and completes
    assert r.returncode == 0, r.stderr
    assert_same_weights(only_run_dir(tmp_path) / "model.safetensors", references[procs])


# (procs, signal, seconds after the start; None: once training has logged)
SAMPLE = [
    (1, "INT", 0.3),  # launch is validating: nothing starts
    (1, "TERM", 1.2),  # the prewarmed worker is importing torch or setting up
    (2, "INT", 1.5),  # torchrun's agent is starting the workers
    (2, "USR2", None),  # torchrun alone would die of USR2
    (2, "KILL", None),  # kill -9 of launch: no orphan trains on
]


@pytest.mark.parametrize("procs,sig,at", SAMPLE)
def test_a_stop_at_any_moment_keeps_the_contract(tmp_path, references, procs, sig, at):
    _stop_and_resume(tmp_path, references, procs, sig, at)


SWEEP = [0.1, 0.2, 0.3, 0.6, 1.0, 1.5, 2.0, 3.0, 4.0, None]


@pytest.mark.slow
@pytest.mark.parametrize("at", SWEEP)
@pytest.mark.parametrize("sig", ["INT", "TERM", "USR2", "KILL"])
@pytest.mark.parametrize("procs", [1, 2])
def test_sweep_of_moments(tmp_path, references, procs, sig, at):
    _stop_and_resume(tmp_path, references, procs, sig, at)


def test_a_second_ctrl_c_under_torchrun_aborts_at_once_in_one_line(tmp_path):
    import os
    import signal
    import time

    from tests.conftest import start
    from tests.stop_sweep import wait_gone

    args = [*ARGS, "--procs", "2", "data.step_delay=3.0"]  # each step 3 s: the first Ctrl-C waits for it
    proc = start(args, tmp_path, new_session=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("runs/*/*/logs/rank-1.log")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(4)  # training (in the middle of a 3 s step)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("launch:") and "aborted" in lines[0], err
    assert wait_gone(tmp_path) == []


def test_ctrl_c_still_interrupts_the_other_commands(tmp_path, references):
    """`launch report` (plots) is no run: a Ctrl-C ends it at once, one line, exit 130."""
    import os
    import signal
    import subprocess
    import sys

    from tests.conftest import launch_env

    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", "report", str(references[1].parent)], cwd=tmp_path, env=launch_env(),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    time.sleep(0.4)  # importing matplotlib
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["launch: aborted (launch report)"], err
