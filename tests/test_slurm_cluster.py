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
from tests.conftest import TINY, assert_same_weights, only_run_dir, read_jsonl, run_launch

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
    assert summary["status"] == "preempted" and summary["global_step"] < 12, summary  # stopped at a step boundary

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


def test_a_partition_slurm_does_not_know_is_one_line(tmp_path):
    r = run_launch([*BASE, "--slurm", "slurm.partition=nosuch"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Slurm refused the job" in r.stderr and "partition" in r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("config.yaml"))
