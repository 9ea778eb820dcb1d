"""launcher.prewarm: the interpreter started before the command is known runs it exactly like
`python -m MODULE ARGS...`, or vanishes without a trace; and `launch` uses it only where it helps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from launcher.cli import AGENT_IMPORTS, WORKER_IMPORTS, _asks_for_processes, _prewarm_modules
from launcher.signals import CAN_DIE_WITH_PARENT
from launcher.spawn import prewarm
from tests.conftest import TINY, start, wait_for_training
from tests.stop_sweep import processes_in, wait_gone

PROBE = textwrap.dedent(
    """
    import json, os, sys
    with open(os.environ["PROBE_OUT"], "w") as f:
        json.dump({"argv": sys.argv[1:], "name": __name__, "env": dict(os.environ)}, f)
    sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
    """
)


@pytest.fixture
def probe_module(tmp_path, monkeypatch):
    (tmp_path / "probe_mod.py").write_text(PROBE)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_runs_the_module_as_main_with_exactly_the_given_argv_env_and_exit_status(probe_module):
    import json

    out = probe_module / "out.json"
    warm = prewarm(("json",))
    env = {k: v for k, v in os.environ.items() if k != "HOME"}
    env.update(PROBE_OUT=str(out), PROBE_EXIT="3", ADDED_LATE="yes")
    proc = warm.start([sys.executable, "-m", "probe_mod", "--flag", "a b", "x=1"], env)
    assert proc.wait(timeout=60) == 3
    seen = json.loads(out.read_text())
    assert seen["name"] == "__main__"
    assert seen["argv"] == ["--flag", "a b", "x=1"]
    assert seen["env"]["ADDED_LATE"] == "yes" and "HOME" not in seen["env"]
    warm.cancel()  # after start: a no-op, not a kill
    assert proc.returncode == 3


def test_cancel_ends_it_silently(capfd, probe_module):
    warm = prewarm(("torch.distributed.run",))
    time.sleep(0.2)
    warm.cancel()
    assert warm.proc.returncode is not None
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert list(probe_module.iterdir()) == [probe_module / "probe_mod.py"]


def test_only_python_dash_m_with_the_same_interpreter_can_run_in_it():
    warm = prewarm(())
    try:
        assert warm.can_run([sys.executable, "-m", "torch.distributed.run", "--standalone"])
        assert not warm.can_run(["/usr/bin/python3.9", "-m", "torch.distributed.run"])
        assert not warm.can_run([sys.executable, "train.py"])
    finally:
        warm.cancel()


@pytest.mark.parametrize(
    "overrides, opts, expected",
    [
        ((), {"procs": 2}, True),
        ((), {"gpus": 4}, True),
        (("dist.procs=2",), {}, True),
        ((), {"procs": 1}, False),
        ((), {"gpus": 1}, False),
        (("dist.procs=1", "train.lr=0.1"), {}, False),
        ((), {}, False),
        ((), {"procs": 2, "slurm": True}, False),  # runs elsewhere
        (("slurm.enabled=true",), {"procs": 2}, False),
    ],
)
def test_launch_prewarms_only_when_the_command_line_asks_for_several_processes(overrides, opts, expected):
    assert _asks_for_processes(overrides, opts) is expected


@pytest.mark.parametrize(
    "overrides, opts, expected",
    [
        ((), {}, WORKER_IMPORTS),  # one process: the worker itself, which imports torch first
        ((), {"procs": 1}, WORKER_IMPORTS),
        ((), {"procs": 2}, AGENT_IMPORTS),
        (("dist.procs=4",), {}, AGENT_IMPORTS),
        ((), {"slurm": True}, None),  # trains on other machines: nothing to warm here
        (("slurm.enabled=true",), {}, None),
    ],
)
def test_what_launch_prewarms(overrides, opts, expected):
    assert _prewarm_modules(overrides, opts) == expected
    assert WORKER_IMPORTS[0] == "torch"


ORPHAN_PARENT = textwrap.dedent(
    """
    import os, sys, time
    from launcher.spawn import prewarm
    warm = prewarm(())
    env = {**os.environ, **({"LAUNCHER_PARENT_PID": str(os.getpid())} if sys.argv[1] == "1" else {})}
    child = warm.start([sys.executable, "-m", "time_sleeper"], env)
    print(child.pid, flush=True)
    time.sleep(600)
    """
)
# what the worker and torchrun's agent do first (launcher/runtime/worker.py, agent.py)
SLEEPER = (
    "import time\nfrom launcher.signals import die_with_parent_from_env\ndie_with_parent_from_env()\ntime.sleep(600)\n"
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not reaped by its new parent yet) counts as gone
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.skipif(not CAN_DIE_WITH_PARENT, reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("die", [True, False])
def test_a_child_started_to_die_with_its_parent_dies_with_it(probe_module, die):
    (probe_module / "time_sleeper.py").write_text(SLEEPER)
    (probe_module / "orphan_parent.py").write_text(ORPHAN_PARENT)
    env = {**os.environ, "PYTHONPATH": f"{probe_module}{os.pathsep}{os.environ['PYTHONPATH']}"}
    parent = subprocess.Popen(
        [sys.executable, str(probe_module / "orphan_parent.py"), "1" if die else "0"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    child = int(parent.stdout.readline())
    try:
        assert _alive(child)
        parent.kill()  # SIGKILL: no handler in the parent runs
        parent.wait(timeout=30)
        deadline = time.time() + (10 if die else 1)  # (an orphan that should live: 1 s is enough to see)
        while _alive(child) and time.time() < deadline:
            time.sleep(0.05)
        assert _alive(child) is (not die)
    finally:
        if _alive(child):
            os.kill(child, 9)


@pytest.mark.skipif(not CAN_DIE_WITH_PARENT, reason="PR_SET_PDEATHSIG is Linux-only")
@pytest.mark.parametrize("procs", [1, 2])
def test_kill_9_of_launch_ends_its_training(tmp_path, procs):
    """One process trains in the prewarmed child, several under torchrun's agent in it: killing
    `launch` must end every one of them at once, and nothing trains on (issue: with --procs 2 both
    workers used to train on as orphans, each in its own session)."""
    args = [f"recipe={TINY}", "data.step_delay=0.05", "train.epochs=50", "log.quiet=true", "--procs", str(procs)]
    proc = start(args, tmp_path)
    assert wait_for_training(tmp_path, proc)
    workers = [p for p in processes_in(tmp_path) if "launcher.runtime.worker" in p]
    assert len(workers) == procs, processes_in(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    assert wait_gone(tmp_path) == []
    metrics = next(tmp_path.glob("runs/*/*/metrics.jsonl"))
    size = metrics.stat().st_size
    time.sleep(1)
    assert metrics.stat().st_size == size  # nothing logs after the kill


def test_bad_input_with_procs_leaves_no_process_behind(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "launcher", "recipe=benchmarks.mlp_recipe:Mlp", "--procs", "2", "--device", "cpu",
         f"run.output_dir={tmp_path / 'out'}", "train.lr=-1"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["error: bad value train.lr=-1: Input should be greater than 0"]
    assert wait_gone(tmp_path, timeout=5) == []
    assert list(tmp_path.iterdir()) == []
