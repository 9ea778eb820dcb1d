"""Checkpoint writing, retention, resume modes and failure handling (real runs of the tiny recipe)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher.rundir import RunDir
from launcher.runtime import rng
from launcher.runtime.checkpoint import CheckpointManager, CorruptCheckpoint
from tests.conftest import assert_same_weights, launch_env, run_launch, start, wait_for_training

QUIET = ["log.quiet=true", "run.name=r"]


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_retention_keeps_last_and_best(tmp_path, tiny):
    # eval and checkpoint every 2 steps; keep the 2 newest plus the best by val/acc
    args = [
        f"recipe={tiny}",
        *QUIET,
        "train.epochs=3",
        "train.eval_every=2",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=2",
        "checkpoint.keep_best=1",
        "checkpoint.monitor=val/loss",
        "checkpoint.mode=min",
    ]
    r = run_launch(args, tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "tiny" / "r"
    kept = steps(run_dir)
    s = summary(run_dir)
    final = s["global_step"]
    best = s["best"]["step"]
    assert final in kept and best in kept
    assert len(kept) == len({*kept[-2:], best}) <= 3  # the 2 newest + the best, nothing else
    assert 2 not in kept or best == 2  # the first save was pruned (unless it is the best)
    # nothing half-written is left behind
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    for step in kept:
        assert (run_dir / "checkpoints" / f"step-{step}" / "COMPLETE").is_file()


def test_async_checkpoints_resume_to_the_same_weights(tmp_path, tiny):
    base = [f"recipe={tiny}", *QUIET, "train.epochs=3", "checkpoint.every_steps=3"]
    sync_dir, async_dir = tmp_path / "sync", tmp_path / "async"
    sync_dir.mkdir()
    async_dir.mkdir()
    assert run_launch(base, sync_dir).returncode == 0
    # async: stop half-way (max_steps), then extend to the full run, resuming from async saves
    r = run_launch([*base, "checkpoint.async=true", "train.max_steps=10"], async_dir)
    assert r.returncode == 0, r.stderr
    r = run_launch([*base, "checkpoint.async=true"], async_dir)
    assert r.returncode == 0, r.stderr
    a, b = sync_dir / "runs/tiny/r", async_dir / "runs/tiny/r"
    assert_same_weights(a / "model.safetensors", b / "model.safetensors")
    assert summary(b)["resumed_from"].endswith("step-10")


def test_async_save_waits_for_one_in_flight_and_copies_off_the_training_path(tmp_path):
    manager = CheckpointManager(RunDir(tmp_path), keep_last=5, keep_best=0, monitor="m", mode="min", async_write=True)
    weights = {"w": torch.zeros(1000)}
    manager.save(1, weights, {"optimizer": {}}, [rng.capture()], {"step": 1}, "x: 1\n")
    weights["w"].add_(1)  # training goes on and changes the tensors in place
    manager.save(2, weights, {"optimizer": {}}, [rng.capture()], {"step": 2}, "x: 1\n")
    manager.wait()
    first = CheckpointManager.load(tmp_path / "checkpoints" / "step-1")
    second = CheckpointManager.load(tmp_path / "checkpoints" / "step-2")
    assert first["model"]["w"].sum().item() == 0  # the copy was taken at save time
    assert second["model"]["w"].sum().item() == 1000


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
    manager = CheckpointManager(RunDir(tmp_path), keep_last=5, keep_best=0, monitor="m", mode="min")
    manager.save(1, {"w": torch.ones(3)}, {}, [rng.capture()], {"step": 1}, "x: 1\n")
    manager.save(2, {"w": torch.ones(3) * 2}, {}, [rng.capture()], {"step": 2}, "x: 1\n")
    (tmp_path / "checkpoints" / "step-2" / "COMPLETE").unlink()  # crash between rename and marker
    (tmp_path / "checkpoints" / ".tmp-step-3-abc").mkdir()  # crash before the rename
    loaded = manager.load_latest()
    assert loaded["path"].name == "step-1"
    with pytest.raises(CorruptCheckpoint):
        CheckpointManager.load(tmp_path / "checkpoints" / "step-2")
    manager.clean_partial()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]


def test_resume_never_refuses_a_run_with_checkpoints(tmp_path, tiny):
    args = [f"recipe={tiny}", *QUIET, "train.epochs=1", "train.max_steps=3"]
    assert run_launch(args, tmp_path).returncode == 0
    r = run_launch([*args, "run.resume=never", "train.max_steps=6"], tmp_path)
    assert r.returncode == 2
    assert "run.resume=never" in r.stderr and "run.resume=auto" in r.stderr
    assert summary(tmp_path / "runs/tiny/r")["global_step"] == 3  # untouched


def test_resume_from_a_path_and_refuse_other_configs(tmp_path, tiny):
    src = [f"recipe={tiny}", "log.quiet=true", "run.name=src", "train.epochs=2"]
    assert run_launch(src, tmp_path).returncode == 0
    ckpt = sorted((tmp_path / "runs/tiny/src/checkpoints").glob("step-*"))[0]
    # same config, another run directory: continues from that checkpoint
    r = run_launch(
        [f"recipe={tiny}", "log.quiet=true", "run.name=dst", "train.epochs=2", f"run.resume={ckpt}"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "runs/tiny/dst"
    assert summary(dst)["resumed_from"] == str(ckpt)
    # a different model shape: refused, naming the key
    r = run_launch(
        [f"recipe={tiny}", "log.quiet=true", "run.name=other", "model.hidden=7", f"run.resume={ckpt}"], tmp_path
    )
    assert r.returncode == 2
    assert "model.hidden" in r.stderr and "model.init_from" in r.stderr
    assert not (tmp_path / "runs/tiny/other").exists()
    # not a checkpoint at all
    r = run_launch([f"recipe={tiny}", "log.quiet=true", "run.name=bad", f"run.resume={tmp_path}"], tmp_path)
    assert r.returncode == 2 and "not a complete, readable checkpoint" in r.stderr


def test_init_from_starts_a_new_run_from_weights_only(tmp_path, tiny):
    assert run_launch([f"recipe={tiny}", "log.quiet=true", "run.name=a", "train.epochs=1"], tmp_path).returncode == 0
    src = tmp_path / "runs/tiny/a"
    r = run_launch(
        [f"recipe={tiny}", "log.quiet=true", "run.name=b", "train.epochs=1", "train.lr=1e-9", f"model.init_from={src}"],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    b = tmp_path / "runs/tiny/b"
    assert summary(b)["resumed_from"] is None and summary(b)["global_step"] > 0
    wa, wb = load_file(str(src / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert torch.allclose(wa["0.weight"], wb["0.weight"], atol=1e-6)  # lr ~ 0: weights carried over
    r = run_launch(
        [f"recipe={tiny}", "log.quiet=true", "run.name=c", "model.hidden=5", f"model.init_from={src}"], tmp_path
    )
    assert r.returncode == 2 and "does not fit this model" in r.stderr


def test_sigusr2_is_a_preemption(tmp_path, tiny):

    args = [f"recipe={tiny}", *QUIET, "train.epochs=6", "data.size=160", "data.step_delay=0.01"]
    proc = start(args, tmp_path)
    assert wait_for_training(tmp_path, proc)
    proc.send_signal(__import__("signal").SIGUSR2)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert summary(tmp_path / "runs/tiny/r")["status"] == "preempted"


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_training_stops_cleanly_and_keeps_checkpoints(tmp_path, tiny):
    # a model big enough that a checkpoint file is > 64 KiB
    args = [f"recipe={tiny}", *QUIET, "model.hidden=4096", "train.epochs=2"]
    assert run_launch([*args, "train.max_steps=3"], tmp_path).returncode == 0
    run_dir = tmp_path / "runs/tiny/r"
    before = steps(run_dir)
    # resume with files capped at 64 KiB: the next checkpoint cannot be written (EFBIG, like ENOSPC)
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=tmp_path,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(64 * 1024),
    )
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0] and "intact" in errors[0]
    assert steps(run_dir) == before
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    s = summary(run_dir)
    assert s["status"] == "failed" and "cannot write checkpoint" in s["reason"]
    # with space again, the same command resumes and completes
    r = run_launch(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert summary(run_dir)["status"] == "completed"
