"""launcher.prewarm: the interpreter started before the command is known runs it exactly like
`python -m MODULE ARGS...`, or vanishes without a trace; and `launch` uses it only where it helps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from launcher.cli import _asks_for_processes
from launcher.prewarm import Prewarmed

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
    warm = Prewarmed(("json",))
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
    warm = Prewarmed(("torch.distributed.run",))
    time.sleep(0.2)
    warm.cancel()
    assert warm.proc.returncode is not None
    captured = capfd.readouterr()
    assert captured.out == "" and captured.err == ""
    assert list(probe_module.iterdir()) == [probe_module / "probe_mod.py"]


def test_only_python_dash_m_with_the_same_interpreter_can_run_in_it():
    warm = Prewarmed(())
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


def _prewarm_children() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if "-m launcher.prewarm" in line]


def test_bad_input_with_procs_leaves_no_process_behind(tmp_path):
    before = _prewarm_children()
    r = subprocess.run(
        [sys.executable, "-m", "launcher", "recipe=benchmarks.mlp_recipe:Mlp", "--procs", "2", "--device", "cpu",
         f"run.output_dir={tmp_path}", "train.lr=-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["error: bad value train.lr=-1: Input should be greater than 0"]
    assert _prewarm_children() == before
    assert list(tmp_path.iterdir()) == []
