"""`launch --slurm` against a real two-node Slurm cluster (slurm/cluster.sh; scripts/test.sh starts
it when run as root). Every job here is a real sbatch job whose tasks srun starts on nodes n1/n2."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from launcher.slurm import ACTIVE_STATES, job_info
from tests.badinput import Case, assert_refused
from tests.conftest import TINY, assert_same_weights, only_run_dir, read_jsonl, run_launch

# the lines that mean a stop request killed the workers instead of stopping them
KILLED = ("Killed", "without a summary", "User defined signal")

pytestmark = pytest.mark.slurm

# 12 optimizer steps at 2 x 8 samples; slow enough per step for a signal to land mid-training
BASE = [f"recipe={TINY}", "--device", "cpu", "train.epochs=3", "log.quiet=true", "dist.timeout_s=60"]
SLOW = ["data.step_delay=0.25", "checkpoint.every_steps=100"]


@pytest.fixture(scope="session", autouse=True)
def cluster():
    problem = None
    if not os.environ.get("SLURM_CONF") or shutil.which("sbatch") is None:
        problem = "no Slurm cluster: run `bash slurm/cluster.sh up` and export SLURM_CONF (see slurm/README.md)"
    else:
        r = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
        if r.returncode != 0 or not r.stdout.strip():
            problem = f"the Slurm cluster does not answer: {r.stderr.strip()}"
    if problem:
        if os.environ.get("LAUNCHER_REQUIRE_SLURM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


def submit(args: list[str], cwd: Path, **env: str) -> tuple[Path, str]:
    r = run_launch(args, cwd, **env)
    assert r.returncode == 0, r.stderr + r.stdout
    job_id = re.search(r"submitted Slurm job (\d+)", r.stdout).group(1)
    return only_run_dir(cwd), job_id


def wait_until(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wait_done(job_id: str, timeout: float = 240) -> dict:
    def done():
        info = job_info(job_id)
        return info if info and info["JobState"] not in ACTIVE_STATES else None

    return wait_until(done, timeout, f"job {job_id} to end")


def trained_in_attempt(run_dir: Path, job_id: str, restarts: int, min_lines: int = 2):
    """This attempt is running and has logged at least ``min_lines`` train events."""
    info = job_info(job_id)
    if not info or info["JobState"] != "RUNNING" or int(info.get("Restarts", 0)) != restarts:
        return False
    log = run_dir / "logs" / f"slurm-{job_id}.out"
    if not log.exists() or f"attempt {restarts + 1} " not in log.read_text():
        return False
    try:
        lines = [e for e in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in e]
    except (OSError, ValueError):
        return False
    started = log.stat().st_mtime
    return len(lines) >= min_lines and (run_dir / "metrics.jsonl").stat().st_mtime >= started


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same training as a local 2-process run (torchrun): the weights every Slurm run must match."""
    cwd = tmp_path_factory.mktemp("reference")
    r = run_launch([*BASE, "--procs", "2"], cwd)
    assert r.returncode == 0, r.stderr
    return only_run_dir(cwd) / "model.safetensors"


def test_one_node_job_completes_and_is_followable(tmp_path):
    # a run name full of shell syntax: it reaches sbatch and the script quoted, nothing runs
    evil = "a$(touch PWNED)`touch PWNED2`;touch PWNED3"
    run_dir, job_id = submit([*BASE, "--slurm", f"run.name={evil}"], tmp_path)
    assert run_dir.name == evil and (run_dir / "submit.sbatch").is_file()
    info = wait_done(job_id)
    assert info["JobState"] == "COMPLETED", info
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert (run_dir / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.cwd().glob("PWNED*"))

    r = run_launch(["status", str(run_dir)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"slurm job:  {job_id} COMPLETED" in r.stdout and "status:     completed" in r.stdout
    # the same command again: nothing new is submitted
    r = run_launch([*BASE, "--slurm", f"run.name={evil}"], tmp_path)
    assert r.returncode == 0 and "already complete" in r.stdout
    assert len(json.loads((run_dir / "slurm_jobs.json").read_text())) == 1


def test_two_nodes_one_rank_each_match_a_local_two_process_run(tmp_path, reference):
    run_dir, job_id = submit([*BASE, "--slurm", "--nodes", "2"], tmp_path)
    info = wait_done(job_id)
    assert info["JobState"] == "COMPLETED", (info, (run_dir / "logs" / f"slurm-{job_id}.out").read_text())
    assert info["NodeList"] == "n[1-2]" and info["NumNodes"] == "2"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_batch_size"] == 16  # 8 per process x world size 2
    assert "rank 1 of 2 on n2" in (run_dir / "logs" / "rank-1.log").read_text()
    assert_same_weights(run_dir / "model.safetensors", reference)


def test_preemption_signals_requeue_and_resume_bit_exact(tmp_path, reference):
    """Two warning signals in one job: checkpoint, requeue, resume -- twice -- then the same weights
    as the uninterrupted run; one wandb run (offline files) continues across the requeues."""
    wandb = ["log.backends=[jsonl,wandb]", "log.wandb.project=slurm"]
    run_dir, job_id = submit(
        [*BASE, "--slurm", "--nodes", "2", *SLOW, *wandb], tmp_path, WANDB_MODE="offline", HOME=str(tmp_path)
    )
    for restarts in (0, 1):
        wait_until(lambda r=restarts: trained_in_attempt(run_dir, job_id, r, 2 + 3 * r), 120, f"attempt {restarts + 1}")
        subprocess.run(["scancel", "--signal=USR2", "--batch", job_id], check=True)
        wait_until(lambda r=restarts: int((job_info(job_id) or {}).get("Restarts", 0)) > r, 120, "the requeue")
    info = wait_done(job_id)
    log = (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", (info, log)
    assert log.count("requeueing") == 2 and "attempt 3 " in log  # one log file, appended by every attempt
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"]
    steps = [e["step"] for e in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in e]
    assert steps == sorted(set(steps))  # no step logged twice across the attempts
    assert_same_weights(run_dir / "model.safetensors", reference)

    from tests.wandb_records import read_run

    runs = [read_run(f) for f in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))]
    assert len(runs) == 3  # one file per attempt, one run id
    assert {r.run_id for r in runs} == {(run_dir / "wandb_id").read_text().strip()}
    logged = sorted(row["_step"] for row in runs[-1].history if "train/loss" in row)
    assert logged == steps  # the last attempt re-logged the history up to its checkpoint, then the rest


def test_cancel_does_not_requeue_and_the_same_command_resumes(tmp_path, reference):
    args = [*BASE, "--slurm", "--nodes", "2", "data.step_delay=0.8", "checkpoint.every_steps=100"]
    run_dir, job_id = submit(args, tmp_path)
    wait_until(lambda: trained_in_attempt(run_dir, job_id, 0, 2), 120, "training")
    # the same command while the job runs: it says so and submits nothing
    r = run_launch(args, tmp_path)
    assert r.returncode == 0 and f"already has Slurm job {job_id}" in r.stdout
    r = run_launch(["cancel", str(run_dir)], tmp_path)
    assert r.returncode == 0 and f"cancelled Slurm job {job_id}" in r.stdout, r.stderr
    info = wait_done(job_id)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    time.sleep(7)  # longer than the requeue hold-off: it must still be cancelled
    assert job_info(job_id)["JobState"] == "CANCELLED"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["reason"] == "cancelled by launch cancel", summary
    assert 0 < summary["global_step"] < 12, summary  # stopped at a step boundary, with a checkpoint
    assert "cancelled by launch cancel at step" in (run_dir / "logs" / f"slurm-{job_id}.out").read_text()
    r = run_launch(["status", str(run_dir)], tmp_path)
    assert "status:     stopped (cancelled by launch cancel)" in r.stdout, r.stdout

    run_dir2, job2 = submit(args, tmp_path)
    assert run_dir2 == run_dir and job2 != job_id
    assert wait_done(job2)["JobState"] == "COMPLETED"
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert_same_weights(run_dir / "model.safetensors", reference)


def test_a_failing_job_is_not_requeued(tmp_path):
    run_dir, job_id = submit([*BASE, "--slurm", "--nodes", "2", "data.fail_at_item=5"], tmp_path)
    info = wait_done(job_id)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", info
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and "broken sample 5" in summary["reason"]
    assert "not requeued" in (run_dir / "logs" / f"slurm-{job_id}.out").read_text()


NEVER = [f"recipe={TINY}", "--slurm", "run.name=never"]
# Slurm 22.05.8's own answers (sbatch --test-only) on the test cluster: 2 nodes, 2 CPUs and 1 MB each
NEVER_RUNS = [
    Case("partition Slurm does not know", [*NEVER, "slurm.partition=nosuch"], "invalid partition specified: nosuch"),
    Case("three nodes of two", [*NEVER, "--nodes", "3"], "Requested node configuration is not available"),
    Case("eight processes on 2-CPU nodes", [*NEVER, "--procs", "8"], "partition debug has 2 node(s) with up to 2 CPU(s)"),
    Case("more CPUs per task than a node has", [*NEVER, "slurm.cpus_per_task=3"], "can never run this job"),
    Case("more memory than a node has", [*NEVER, "slurm.mem=900T"], "900T memory"),
    Case("GPUs on a cluster without", [*NEVER, "--gpus", "1"], "Invalid generic resource"),
]  # fmt: skip


@pytest.mark.parametrize("case", NEVER_RUNS, ids=lambda c: c.id)
def test_a_job_slurm_can_never_run_is_refused_before_submission(case, tmp_path, monkeypatch, capsys):
    """Before: --nodes 3 and --procs 8 were submitted and pended forever; partition and memory
    refusals left runs/tiny/ behind."""
    assert_refused(case, tmp_path, monkeypatch, capsys)
    r = subprocess.run(["squeue", "-h", "-n", "Tiny-never", "-o", "%i"], capture_output=True, text=True)
    assert r.stdout.split() == [], "a job was submitted"  # (by this test: the name is its own)


# ---------------------------------------------------------------- stop signals (slurm/README.md)


def _log(run_dir: Path, job_id: str) -> str:
    path = run_dir / "logs" / f"slurm-{job_id}.out"
    return path.read_text() if path.exists() else ""


def _checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in run_dir.glob("checkpoints/step-*/COMPLETE"))


def _trained_to(run_dir: Path) -> int:
    try:
        return max((e["step"] for e in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in e), default=0)
    except (OSError, ValueError):
        return 0


def send(job_id: str, kind: str) -> str:
    """USR2/TERM/USR1 to the batch shell (the warning signal, `scancel --batch --signal=TERM`),
    "tasks-TERM": TERM to the job's steps only, as a preemption with a grace time sends it, or
    "scontrol-requeue": Slurm requeues the job itself (TERM to everything, then KILL)."""
    if kind == "tasks-TERM":
        cmd = ["scancel", "--signal=TERM", job_id]
    elif kind == "scontrol-requeue":
        cmd = ["scontrol", "requeue", job_id]
    else:
        cmd = ["scancel", "--batch", f"--signal={kind}", job_id]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return "" if r.returncode == 0 else f" [{' '.join(cmd)}: {r.stderr.strip()}]"


def signal_attempts(run_dir: Path, job_id: str, schedule: list[tuple[str, object]]) -> list[str]:
    """Attempt k+1 gets signal ``schedule[k]``: (kind, when), ``when`` seconds after the attempt's
    "attempt N" line (printed just before srun starts), "ckpt" right after the attempt's first new
    checkpoint, or "steady" once it has logged training. Returns one line per signal: what was sent
    when, and what the attempt's `after` said."""
    done = []
    for k, (kind, when) in enumerate(schedule):
        mark = f"attempt {k + 1} "

        def started(mark=mark):
            return mark in _log(run_dir, job_id)

        deadline, polls = time.time() + 240, 0
        while not started():
            polls += 1
            ended = polls % 50 == 0 and (job_info(job_id) or {}).get("JobState") not in ACTIVE_STATES
            assert not ended and time.time() < deadline, (
                f"attempt {k + 1} of job {job_id} did not start; so far: {done}\n{_log(run_dir, job_id)}"
            )
            time.sleep(0.02)
        t0 = time.monotonic()
        ckpts, trained = _checkpoint_steps(run_dir), _trained_to(run_dir)
        if when == "ckpt":
            wait_until(lambda c=ckpts: _checkpoint_steps(run_dir) != c, 120, f"a checkpoint in attempt {k + 1}")
        elif when == "steady":
            wait_until(lambda t=trained: _trained_to(run_dir) > t, 120, f"training in attempt {k + 1}")
        else:
            time.sleep(max(0.0, float(when) - (time.monotonic() - t0)))
        sent = time.monotonic() - t0
        refused = send(job_id, kind)
        wait_until(
            lambda k=k: (
                int((job_info(job_id) or {}).get("Restarts", 0)) > k
                or (job_info(job_id) or {}).get("JobState") not in ACTIVE_STATES
            ),
            240,
            f"attempt {k + 1} to end",
        )
        # the attempt's `after` has spoken once the next attempt starts (Slurm's own requeue raises
        # Restarts before that) or the job has ended
        wait_until(
            lambda k=k: (
                f"attempt {k + 2} " in _log(run_dir, job_id)
                or (job_info(job_id) or {}).get("JobState") not in ACTIVE_STATES
            ),
            240,
            f"attempt {k + 2} to start",
        )
        part = _log(run_dir, job_id).split(mark, 1)[1].split(f"attempt {k + 2} ", 1)[0]
        said = [ln for ln in part.splitlines() if ln.startswith("launch: ") and not ln.startswith("launch: job ")]
        done.append(f"{kind}@{when} (sent {sent:.2f} s after 'attempt {k + 1}'{refused}): {said[-1] if said else '?'}")
    return done


def assert_all_requeued_and_exact(run_dir: Path, job_id: str, outcomes: list[str], reference: Path) -> str:
    """The job completed, each signal cost one requeue, no worker was killed, the weights are exact."""
    info = wait_done(job_id, 300)
    log = _log(run_dir, job_id)
    assert info["JobState"] == "COMPLETED", (info, outcomes, log)
    assert int(info["Restarts"]) == len(outcomes), (outcomes, log)  # each stop: one requeue, no more
    assert all("requeueing" in o or "Slurm requeues the job itself" in o for o in outcomes), (outcomes, log)
    assert not [w for w in KILLED if w in log], log
    if not any(o.startswith("scontrol-requeue") for o in outcomes):
        # srun was never sent TERM (a `scontrol requeue` sends it one itself, cosmetic then: the
        # step is being ended by slurmd and the tasks still checkpoint)
        assert "forcing job termination" not in log, log
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["slurm"] == {"job_id": job_id, "restart": len(outcomes)}
    steps = [e["step"] for e in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in e]
    assert steps == sorted(set(steps))
    assert_same_weights(run_dir / "model.safetensors", reference)
    return log


def test_term_and_early_warnings_end_in_a_requeue_then_bit_exact(tmp_path, reference):
    """TERM to the batch shell mid-training (before: srun killed the tasks, FAILED), and a warning
    at 0 s / TERM at 1 s after an attempt's start (before: the workers died of it): each attempt
    ends preempted, requeues, and the run completes with the uninterrupted run's weights."""
    run_dir, job_id = submit([*BASE, "--slurm", "--nodes", "2", *SLOW], tmp_path)
    outcomes = signal_attempts(run_dir, job_id, [("USR2", 0.0), ("TERM", 1.0), ("TERM", "steady")])
    print("\n".join(outcomes))
    log = assert_all_requeued_and_exact(run_dir, job_id, outcomes, reference)
    # the early ones stopped before training (nothing new saved), the last one at a step boundary
    assert re.search(r"preempted (at step 0|before training)", outcomes[0]) and "at step 0;" in outcomes[1], outcomes
    assert not re.search(r"at step 0;", outcomes[2]), outcomes
    assert "SIGTERM received: stop requested" in log


def test_a_warning_during_setup_is_kept_and_requeues_before_training(tmp_path, reference):
    """USR1 (slurm.signal=sigusr1) 2 s into `slurm.setup` (before: dropped, no srun to pass it to)."""
    args = [*BASE, "--slurm", "--procs", "2", 'slurm.setup=["sleep 6"]', "slurm.signal=sigusr1"]
    run_dir, job_id = submit(args, tmp_path)
    assert "#SBATCH --signal=B:USR1@120" in (run_dir / "submit.sbatch").read_text()
    wait_until(lambda: (job_info(job_id) or {}).get("JobState") == "RUNNING", 120, "the job to start")
    time.sleep(2)
    send(job_id, "USR1")
    info = wait_done(job_id)
    log = _log(run_dir, job_id)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, log)
    first = log.split("attempt 2 ")[0]
    assert "srun not started" in first and "preempted before training (SIGUSR1 in attempt 1" in first, log
    assert "requeueing (requeue 1 of at most 3)" in first
    assert not [w for w in KILLED if w in log], log
    assert_same_weights(run_dir / "model.safetensors", reference)
    assert not list(run_dir.glob(".stop-*"))


def test_plain_scancel_stops_without_requeue_and_the_same_command_resumes(tmp_path, reference):
    """`scancel JOB` (before: the job requeued itself and trained to the end)."""
    args = [*BASE, "--slurm", "--nodes", "2", "data.step_delay=0.8", "checkpoint.every_steps=100"]
    run_dir, job_id = submit(args, tmp_path)
    wait_until(lambda: trained_in_attempt(run_dir, job_id, 0, 2), 120, "training")
    subprocess.run(["scancel", job_id], check=True)
    info = wait_done(job_id)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    time.sleep(7)  # longer than the requeue hold-off: it must still be cancelled
    info = job_info(job_id)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", (info, _log(run_dir, job_id))
    r = run_launch(["status", str(run_dir)], tmp_path)
    assert "status:     stopped (cancelled by scancel)" in r.stdout, r.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped", (summary, _log(run_dir, job_id))  # the batch shell ran `after`
    assert "cancelled by scancel at step" in _log(run_dir, job_id)

    # the same command resumes; that job's workers are killed (no summary, no stop): a lost
    # attempt, which `launch status` must not report as the previous attempt's `stopped`
    run_dir2, job2 = submit(args, tmp_path)
    assert run_dir2 == run_dir and job2 != job_id
    wait_until(lambda: trained_in_attempt(run_dir, job2, 0, summary["global_step"] // 2 + 1), 120, "training")
    for pid in _worker_pids(run_dir):
        os.kill(pid, 9)
    info = wait_done(job2)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", (info, _log(run_dir, job2))
    r = run_launch(["status", str(run_dir)], tmp_path)
    assert f"status:     failed (attempt 1 of job {job2} ended without a summary (exit code " in r.stdout, r.stdout
    assert "not requeued" in _log(run_dir, job2)

    run_dir3, job3 = submit(args, tmp_path)
    assert run_dir3 == run_dir and job3 not in (job_id, job2)
    assert wait_done(job3)["JobState"] == "COMPLETED", _log(run_dir, job3)
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert_same_weights(run_dir / "model.safetensors", reference)


def _worker_pids(run_dir: Path) -> list[int]:
    """The worker processes of this run (both nodes of the test cluster are this machine)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"launcher.runtime.worker" in argv and str(run_dir).encode() in argv and b"-c" not in argv:
            pids.append(int(proc.name))
    assert pids
    return pids


@pytest.mark.slow
def test_stop_signal_sweep_and_storm(tmp_path, reference):
    """USR2 and TERM at 0 / 0.3 / 1 / 2 s after each attempt's start, right after its first
    checkpoint and in steady state (also TERM to the tasks only, and `scontrol requeue`), one job
    per signal, and a storm of 4 signals 3 s apart: every job completes bit-identical, within
    slurm.max_requeues."""
    import threading

    offsets = [0.0, 0.3, 1.0, 2.0, "ckpt", "steady"]
    plans = {
        "usr2": [("USR2", w) for w in offsets] + [("tasks-TERM", "steady")],
        "term": [("TERM", w) for w in offsets] + [("scontrol-requeue", "steady")],
    }
    common = [*BASE, "--slurm", "--nodes", "2", "data.step_delay=0.5", "slurm.max_requeues=8"]
    results: dict[str, object] = {}

    def sweep(name):
        try:
            run_dir, job_id = submit([*common, f"run.name={name}"], tmp_path / name)
            results[name] = (run_dir, job_id, signal_attempts(run_dir, job_id, plans[name]))
        except BaseException as e:  # reported below
            results[name] = e

    for name in plans:
        (tmp_path / name).mkdir()
    threads = [threading.Thread(target=sweep, args=(n,)) for n in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name in plans:
        if isinstance(results[name], BaseException):
            raise results[name]
        run_dir, job_id, outcomes = results[name]
        print(f"{name}: job {job_id}\n  " + "\n  ".join(outcomes))
        assert_all_requeued_and_exact(run_dir, job_id, outcomes, reference)

    (tmp_path / "storm").mkdir()
    run_dir, job_id = submit([*common, "run.name=storm"], tmp_path / "storm")
    wait_until(lambda: "attempt 1 " in _log(run_dir, job_id), 240, "the storm's job to start")
    for kind in ("USR2", "TERM", "USR2", "TERM"):
        send(job_id, kind)
        time.sleep(3)
    info = wait_done(job_id, 300)
    log = _log(run_dir, job_id)
    print(
        f"storm: job {job_id}, {info['Restarts']} requeues:\n"
        + "\n".join(ln for ln in log.splitlines() if ln.startswith("launch: "))
    )
    assert info["JobState"] == "COMPLETED" and 1 <= int(info["Restarts"]) <= 4, (info, log)
    assert not [w for w in KILLED if w in log], log
    assert_same_weights(run_dir / "model.safetensors", reference)


def test_sweep_is_one_job_array_a_preempted_task_requeues_alone_bit_exact(tmp_path):
    """A 2x2 sweep as one array (%2); the same command while it runs submits nothing; one task
    gets the warning signal, is requeued alone and resumes; every point's weights equal the same
    point trained here alone; a changed definition is refused."""
    from tests.conftest import launch_here

    point = [f"recipe={TINY}", "--device", "cpu", "train.epochs=2", "log.quiet=true", "data.step_delay=0.2"]
    args = [*point, "train.lr=0.02,0.05", "model.hidden=4,8", "--sweep", "--slurm", "--parallel", "2"]
    r = run_launch(args, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    array = re.search(r"submitted Slurm job array (\d+) \(--array=0-3%2\): 4 points", r.stdout).group(1)
    (sweep,) = (tmp_path / "runs" / "tiny" / "sweeps").iterdir()
    stored = json.loads((sweep / "sweep.json").read_text())
    points = stored["points"]
    assert stored["options"] == ["--device", "cpu", "--slurm"]
    again = run_launch(args, tmp_path)
    assert again.returncode == 0 and "nothing to submit" in again.stdout, again.stdout + again.stderr
    assert again.stdout.count(f"job {array}_") == 4
    assert len(json.loads((sweep / "slurm_jobs.json").read_text())) == 1

    task = f"{array}_1"
    run1 = tmp_path / points[1]["run_dir"]
    wait_until(lambda: trained_in_attempt_of_task(run1, task, 0), 120, "point 1 to train")
    # scancel delivers the signal at once but, for a task of a throttled array (%2), then reports the
    # job "in transitional state" and retries until the requeued task runs, which gets the signal
    # again (Slurm 22.05): the warning is sent once, and scancel stopped
    try:
        subprocess.run(["scancel", "--signal=USR2", "--batch", task], timeout=2)
    except subprocess.TimeoutExpired:
        pass
    wait_until(lambda: int((job_info(task) or {}).get("Restarts", 0)) > 0, 120, "the requeue of point 1")
    restarts = {}
    for p in points:
        info = wait_done(f"{array}_{p['index']}")
        assert info["JobState"] == "COMPLETED", (info, list((tmp_path / p["run_dir"] / "logs").iterdir()))
        restarts[p["index"]] = int(info["Restarts"])
    assert restarts == {0: 0, 1: 1, 2: 0, 3: 0}
    log = (run1 / "logs" / f"slurm-{task}.out").read_text()
    assert "requeueing" in log and "attempt 2 " in log
    status = run_launch(["status", str(sweep)], tmp_path)
    assert "states: 4 completed" in status.stdout, status.stdout + status.stderr

    for p in points:
        here = tmp_path / f"alone-{p['index']}"
        here.mkdir()
        ref = launch_here([*p["tokens"], "--device", "cpu"], here)  # the point's own command, here
        assert ref.returncode == 0, ref.stderr
        name = Path(p["run_dir"]).name
        assert_same_weights(
            tmp_path / p["run_dir"] / "model.safetensors", here / "runs" / "tiny" / name / "model.safetensors"
        )

    changed = run_launch([*args, "train.batch_size=4", "--sweep-name", sweep.name], tmp_path)
    assert changed.returncode == 2 and "other shared settings (train.batch_size: 8 -> 4)" in changed.stderr


def trained_in_attempt_of_task(run_dir: Path, task: str, restarts: int) -> bool:
    info = job_info(task)
    if not info or info["JobState"] != "RUNNING" or int(info.get("Restarts", 0)) != restarts:
        return False
    try:
        return len([e for e in read_jsonl(run_dir / "metrics.jsonl") if "train/loss" in e]) >= 2
    except (OSError, ValueError):
        return False


def test_cancel_of_a_sweep_stops_every_task_without_requeue_and_the_command_resumes(tmp_path):
    args = [f"recipe={TINY}", "--device", "cpu", "train.epochs=2", "log.quiet=true", "data.step_delay=0.5",
            "train.lr=0.02,0.05", "--sweep", "--slurm"]  # fmt: skip
    r = run_launch(args, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    array = re.search(r"submitted Slurm job array (\d+)", r.stdout).group(1)
    (sweep,) = (tmp_path / "runs" / "tiny" / "sweeps").iterdir()
    points = json.loads((sweep / "sweep.json").read_text())["points"]
    for p in points:
        wait_until(
            lambda p=p: trained_in_attempt_of_task(tmp_path / p["run_dir"], f"{array}_{p['index']}", 0), 120, "training"
        )
    c = run_launch(["cancel", str(sweep)], tmp_path)
    assert c.returncode == 0 and f"cancelled 2 Slurm tasks ({array}_0, {array}_1); none requeues" in c.stdout, (
        c.stdout + c.stderr
    )
    for p in points:
        info = wait_done(f"{array}_{p['index']}")
        assert info["Restarts"] == "0", info
        summary = json.loads((tmp_path / p["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "stopped" and "launch cancel" in summary["reason"], summary
    status = run_launch(["status", str(sweep)], tmp_path)
    assert "states: 2 stopped" in status.stdout, status.stdout + status.stderr
    again = run_launch(args, tmp_path)  # the same command: both points resubmitted, they resume
    assert again.returncode == 0 and "(--array=0-1): 2 points" in again.stdout, again.stdout + again.stderr
    second = re.search(r"submitted Slurm job array (\d+)", again.stdout).group(1)
    for p in points:
        assert wait_done(f"{second}_{p['index']}")["JobState"] == "COMPLETED"
        summary = json.loads((tmp_path / p["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["resumed_from"], summary
