"""One owner per run directory (launcher/runlock.py): the lock itself in-process, `launch` refusing
a second command in-process, the Slurm worker's refusal, and one end-to-end run with real
processes (a live holder refused, then a SIGKILLed one taken over)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from launcher import runlock
from launcher.runlock import LOCK_FILE, RunBusy
from tests.badinput import Case, assert_refused, tree_state
from tests.conftest import TINY, read_jsonl, run_launch, start, wait_for_training

HOST = socket.gethostname()


def write_lock(run_dir: Path, age: float = 0.0, **fields) -> bytes:
    """A lock as another holder would have written it (the on-disk format, by hand), its mtime
    ``age`` seconds back."""
    holder = {
        "host": HOST,
        "pid": os.getpid(),
        "started": runlock.process_start(os.getpid()),
        "boot": runlock.boot_id(),
        "since": time.time() - age,
        "what": "launch",
        "token": "someone-else",
        "slurm_job": None,
        "slurm_restart": None,
        **fields,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    raw = (json.dumps(holder) + "\n").encode()
    path = run_dir / LOCK_FILE
    path.write_bytes(raw)
    if age:
        t = time.time() - age
        os.utime(path, (t, t))
    return raw


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def holder_of(run_dir: Path) -> dict:
    return json.loads((run_dir / LOCK_FILE).read_text())


# ---------------------------------------------------------------- the lock


def test_acquire_creates_the_directory_and_release_removes_what_it_created(tmp_path):
    run_dir = tmp_path / "runs" / "tiny" / "x"
    lock = runlock.acquire(run_dir)
    h = holder_of(run_dir)
    assert (h["host"], h["pid"], h["what"]) == (HOST, os.getpid(), "launch")
    assert h["started"] == runlock.process_start(os.getpid())
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # no temporary file left
    lock.release()
    assert list(tmp_path.iterdir()) == []  # nothing written yet: the directories it made are gone
    lock.release()  # twice is harmless

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("x: 1\n")
    lock = runlock.acquire(run_dir)
    lock.release()
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]


def test_a_live_holder_is_refused_with_one_line_and_its_lock_untouched(tmp_path):
    run_dir = tmp_path / "x"
    raw = write_lock(run_dir)  # this process: alive
    with pytest.raises(RunBusy) as e:
        runlock.acquire(run_dir)
    line = str(e.value)
    assert "\n" not in line
    assert f"{run_dir} is in use by launch pid {os.getpid()} on host {HOST} since " in line
    assert f"stop it (kill {os.getpid()})" in line and "run.name=" in line
    assert (run_dir / LOCK_FILE).read_bytes() == raw
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


def test_a_dead_pid_on_this_host_is_stale(tmp_path):
    run_dir = tmp_path / "x"
    write_lock(run_dir, pid=dead_pid())
    lock = runlock.acquire(run_dir)
    assert holder_of(run_dir)["pid"] == os.getpid()
    lock.release()
    assert not (run_dir / LOCK_FILE).exists()


def test_a_reused_pid_is_stale(tmp_path):
    run_dir = tmp_path / "x"
    write_lock(run_dir, started=(runlock.process_start(os.getpid()) or 0) + 12345)  # our pid, another process
    runlock.acquire(run_dir).release()


def test_another_host_is_judged_by_the_file_servers_clock(tmp_path):
    run_dir = tmp_path / "x"
    raw = write_lock(run_dir, host="node-elsewhere", pid=4242)  # fresh: respected
    with pytest.raises(RunBusy, match="launch pid 4242 on host node-elsewhere"):
        runlock.acquire(run_dir)
    assert (run_dir / LOCK_FILE).read_bytes() == raw
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # (the probe file is gone again)

    write_lock(run_dir, age=runlock.STALE_S + 60, host="node-elsewhere", pid=4242)  # not refreshed: stale
    lock = runlock.acquire(run_dir)
    assert holder_of(run_dir)["host"] == HOST
    lock.release()


def test_a_slurm_holder_whose_job_is_over_is_stale_at_once(tmp_path):
    run_dir = tmp_path / "x"
    write_lock(run_dir, host="n7", pid=4242, what="worker", slurm_job="55", slurm_restart=0)
    asked = []

    def state(answer):
        return lambda job: asked.append(job) or answer

    for answer in ("RUNNING", None):  # running, or Slurm does not answer: the fresh mtime decides
        with pytest.raises(RunBusy) as e:
            runlock.acquire(run_dir, job_state=state(answer))
        assert "Slurm job 55 (worker pid 4242 on host n7)" in str(e.value)
        assert f"launch cancel {run_dir}" in str(e.value)
    runlock.acquire(run_dir, job_state=state("")).release()  # Slurm no longer has it
    assert asked == ["55", "55", "55"]

    write_lock(run_dir, host="n7", pid=4242, what="worker", slurm_job="55", slurm_restart=0)
    runlock.acquire(run_dir, job_state=state("COMPLETED")).release()


def test_an_earlier_attempt_of_the_same_slurm_job_is_stale(tmp_path):
    run_dir = tmp_path / "x"
    write_lock(run_dir, host="n7", pid=4242, what="worker", slurm_job="55", slurm_restart=0)
    lock = runlock.acquire(run_dir, "worker", slurm_job="55", slurm_restart=1, job_state=lambda job: "RUNNING")
    assert holder_of(run_dir)["slurm_restart"] == 1
    lock.release()


def test_an_unreadable_lock_is_respected_while_fresh(tmp_path):
    run_dir = tmp_path / "x"
    run_dir.mkdir()
    (run_dir / LOCK_FILE).write_bytes(b"")  # an O_EXCL holder between create and write
    with pytest.raises(RunBusy, match="being written"):
        runlock.acquire(run_dir)
    old = time.time() - runlock.STALE_S - 60
    os.utime(run_dir / LOCK_FILE, (old, old))
    runlock.acquire(run_dir).release()


def test_release_leaves_a_lock_that_is_not_ours(tmp_path):
    run_dir = tmp_path / "x"
    lock = runlock.acquire(run_dir)
    raw = write_lock(run_dir, host="n7", pid=4242)  # taken over meanwhile (judged stale by another)
    lock.release()
    assert (run_dir / LOCK_FILE).read_bytes() == raw


def test_the_holder_refreshes_its_lock(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "HEARTBEAT_S", 0.02)
    run_dir = tmp_path / "x"
    lock = runlock.acquire(run_dir)
    try:
        old = time.time() - 1000
        os.utime(run_dir / LOCK_FILE, (old, old))
        deadline = time.time() + 30
        while (run_dir / LOCK_FILE).stat().st_mtime < old + 500 and time.time() < deadline:
            time.sleep(0.01)
        assert (run_dir / LOCK_FILE).stat().st_mtime > old + 500
    finally:
        lock.release()


def race(run_dir: Path, takers: int) -> tuple[list, list, list]:
    """``takers`` threads released at once, each trying to own ``run_dir``: (locks, refusals, other errors)."""
    go = threading.Barrier(takers)
    won, refused, other = [], [], []

    def take():
        go.wait()
        try:
            won.append(runlock.acquire(run_dir))
        except RunBusy as e:
            refused.append(str(e))
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            other.append(repr(e))

    threads = [threading.Thread(target=take) for _ in range(takers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won, refused, other


def test_a_race_of_takers_over_a_stale_lock_ends_with_one_owner(tmp_path):
    for round_ in range(15):
        run_dir = tmp_path / f"r{round_}"
        write_lock(run_dir, pid=dead_pid()) if round_ % 2 else write_lock(run_dir, age=600, host="gone", pid=1)
        won, refused, other = race(run_dir, 6)
        assert other == [] and len(won) == 1 and len(refused) == 5, (won, refused, other)
        assert holder_of(run_dir)["token"] == won[0].holder.token
        assert all(f"launch pid {os.getpid()}" in line for line in refused)
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]  # nothing set aside is left
        won[0].release()
        assert not (run_dir / LOCK_FILE).exists()


# ---------------------------------------------------------------- `launch` refuses a second command


def _held_here(cwd: Path) -> None:
    write_lock(cwd / "runs" / "tiny" / "held")  # this process, alive: the first command's lock


def _held_elsewhere(cwd: Path) -> None:
    write_lock(cwd / "runs" / "tiny" / "held", host="node7", pid=4242)


CASES = [
    Case(
        "held by a live launch on this host",
        [f"recipe={TINY}", "--device", "cpu", "run.name=held"],
        f"runs/tiny/held is in use by launch pid {os.getpid()} on host {HOST} since",
        setup=_held_here,
    ),
    Case(
        "held by a launch on another node",
        [f"recipe={TINY}", "--device", "cpu", "run.name=held"],
        "is in use by launch pid 4242 on host node7",
        setup=_held_elsewhere,
    ),
    Case(
        "--slurm while a local run holds it",
        [f"recipe={TINY}", "--device", "cpu", "run.name=held", "--slurm"],
        f"is in use by launch pid {os.getpid()}",
        setup=_held_here,
    ),
    Case(  # refused after the lock is taken: the new run directory it made goes again
        "new run, then an unusable log.dir",
        [f"recipe={TINY}", "--device", "cpu", "run.name=fresh", "log.dir={cwd}/afile/logs"],
        "log.dir=",
        files={"afile": "not a directory"},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(case, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runlock, "slurm_job_state", lambda job: None)
    assert_refused(case, tmp_path, monkeypatch, capsys)
    assert not list(tmp_path.glob("runs/tiny/fresh"))


def test_dry_run_and_status_read_a_held_run_directory(tmp_path, monkeypatch, capsys):
    from tests.badinput import run_main

    _held_here(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = tree_state(tmp_path)
    code, out, _ = run_main([f"recipe={TINY}", "--device", "cpu", "run.name=held", "--dry-run"], capsys)
    assert code == 0 and "(new run)" in out
    assert tree_state(tmp_path) == before


# ---------------------------------------------------------------- under Slurm: the job's rank 0


def test_a_slurm_attempt_refused_by_a_live_local_run_leaves_its_summary(tmp_path, monkeypatch, capsys):
    import launcher.slurm
    from launcher import config as cfgmod
    from launcher.cli import resolve_from_argv
    from launcher.runtime import worker

    run_dir = tmp_path / "runs" / "tiny" / "s"
    run_dir.mkdir(parents=True)
    _, _, cfg, _ = resolve_from_argv((f"recipe={TINY}", "dist.device=cpu", "run.name=s"), [])
    (run_dir / "config.yaml").write_text(cfgmod.to_yaml(cfg))
    (run_dir / "summary.json").write_text('{"status": "running elsewhere"}\n')
    raw = write_lock(run_dir)  # a live local `launch` owns it
    before = tree_state(tmp_path)
    environ = dict(os.environ)
    slurm_env = {"LAUNCHER_SLURM": "1", "SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"}
    slurm_env.update(SLURM_JOB_ID="77", SLURM_RESTART_COUNT="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="29999")
    try:
        os.environ.update(slurm_env)
        code = worker.main(str(run_dir))
    finally:
        os.environ.clear()
        os.environ.update(environ)
    err = capsys.readouterr().err
    assert code == 2
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        next(line for line in err.splitlines() if "is in use by launch pid" in line)
    ]
    assert tree_state(tmp_path) == before  # summary.json, the lock: the live run's, untouched

    # the batch script's `after` then leaves summary.json to the live run and does not requeue
    monkeypatch.setattr(launcher.slurm, "job_info", lambda job: None)
    code = launcher.slurm.after(run_dir, time.time() - 5, 2, environ={**slurm_env, "PATH": os.environ["PATH"]})
    assert code == 2
    assert "did not run" in capsys.readouterr().err
    assert (run_dir / "summary.json").read_text() == '{"status": "running elsewhere"}\n'
    assert (run_dir / LOCK_FILE).read_bytes() == raw


# ---------------------------------------------------------------- real processes


def test_a_second_launch_is_refused_and_a_killed_one_is_taken_over(tmp_path, monkeypatch, capsys):
    """The first run is paused (SIGSTOP of its process group) while the second command runs, so
    its files cannot change meanwhile and nothing here depends on timing."""
    args = [f"recipe={TINY}", "--device", "cpu", "train.epochs=4", "checkpoint.every_steps=5", "log.quiet=true"]
    args += ["data.step_delay=0.05"]  # 36 steps, ~2 s: time enough to pause it (or kill it) mid-training
    first = start([*args, "run.name=a"], tmp_path, new_session=True)
    try:
        assert wait_for_training(tmp_path, first), first.stderr.read()
        os.killpg(first.pid, signal.SIGSTOP)
        try:
            run_dir = tmp_path / "runs" / "tiny" / "a"
            config = (run_dir / "config.yaml").read_bytes(), (run_dir / "config.yaml").stat().st_mtime_ns
            case = Case("second command", [*args, "run.name=a"], f"launch pid {first.pid}")
            line = assert_refused(case, tmp_path, monkeypatch, capsys)  # exit 2, one line, nothing changed
            assert f"runs/tiny/a is in use by launch pid {first.pid} on host {HOST}" in line
            assert ((run_dir / "config.yaml").read_bytes(), (run_dir / "config.yaml").stat().st_mtime_ns) == config
        finally:
            os.killpg(first.pid, signal.SIGCONT)
        assert first.wait(timeout=120) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 36
    steps = [e["step"] for e in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in e]
    assert steps == list(range(2, 37, 2))  # every step once: nobody else wrote or cut it
    assert not (run_dir / LOCK_FILE).exists()

    # a run SIGKILLed with its whole process group leaves its lock; the same command takes it over
    killed = start([*args, "run.name=b"], tmp_path, new_session=True)
    assert wait_for_training(tmp_path, killed), killed.stderr.read()
    deadline = time.time() + 60
    while not list(tmp_path.glob("runs/tiny/b/checkpoints/step-*/COMPLETE")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert holder_of(tmp_path / "runs" / "tiny" / "b")["pid"] == killed.pid  # left behind
    r = run_launch([*args, "run.name=b"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "in use" not in r.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "b" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"]


@pytest.mark.slurm
def test_a_slurm_job_whose_run_directory_a_local_run_owns_changes_nothing(tmp_path):
    """A real two-task job (slurm/cluster.sh) starts while this process holds the lock (as a local
    `launch` would): both ranks give up, the log says why in one line, summary.json stays."""
    import re
    import shutil

    from launcher.slurm import ACTIVE_STATES, job_info

    if (
        not os.environ.get("SLURM_CONF")
        or shutil.which("sinfo") is None
        or not subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30).stdout.strip()
    ):  # (the skip rule of tests/test_slurm_cluster.py)
        problem = "no Slurm cluster: run `bash slurm/cluster.sh up` and export SLURM_CONF (see slurm/README.md)"
        pytest.fail(problem) if os.environ.get("LAUNCHER_REQUIRE_SLURM") == "1" else pytest.skip(problem)
    go = tmp_path / "go"
    args = [f"recipe={TINY}", "--device", "cpu", "--procs", "2", "run.name=j", "log.quiet=true", "dist.timeout_s=60"]
    args += ["--slurm", f'slurm.setup=["while [ ! -e {go} ]; do sleep 0.1; done"]']
    r = run_launch(args, tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    job_id = re.search(r"submitted Slurm job (\d+)", r.stdout).group(1)
    run_dir = tmp_path / "runs" / "tiny" / "j"
    lock = runlock.acquire(run_dir)  # the job waits in slurm.setup meanwhile
    try:
        (run_dir / "summary.json").write_text('{"status": "the live run\'s"}\n')
        go.touch()
        deadline = time.time() + 240
        while (info := job_info(job_id)) is None or info["JobState"] in ACTIVE_STATES:
            assert time.time() < deadline, f"job {job_id} did not end"
            time.sleep(0.2)
        assert (run_dir / "summary.json").read_text() == '{"status": "the live run\'s"}\n'
        assert lock.ours()
        log = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
        refused = [line for line in log.splitlines() if line.startswith("error:")]
        assert refused == [f"error: {runlock.in_use_line(run_dir, lock.holder)}"], log
        assert "did not run" in log and "requeue" not in log.replace("not requeued", "")
        assert not (run_dir / "metrics.jsonl").exists() and not (run_dir / "checkpoints").exists()
        assert info.get("Restarts", "0") == "0"
    finally:
        lock.release()


def test_status_names_a_live_holder_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from tests.badinput import run_main

    run_dir = tmp_path / "runs" / "tiny" / "held"
    write_lock(run_dir)
    (run_dir / "config.yaml").write_text("recipe: x\n")
    monkeypatch.chdir(tmp_path)
    before = tree_state(tmp_path)
    code, out, _ = run_main(["status", str(run_dir)], capsys)
    assert code == 0
    assert f"running:    launch pid {os.getpid()} on host {HOST} since " in out
    assert tree_state(tmp_path) == before
    (run_dir / LOCK_FILE).unlink()
    write_lock(run_dir, pid=dead_pid())
    assert "running:" not in run_main(["status", str(run_dir)], capsys)[1]
