"""Kill the training process at random moments and run the same command again: the final
weights must be bit-identical to an uninterrupted run's. Also stop requests and unreadable
checkpoints."""

from __future__ import annotations

import json
import os
import random
import signal
import time
import zlib
from pathlib import Path

import pytest

from launcher.runtime.loggers import is_measured
from tests.conftest import (
    assert_same_weights,
    has_checkpoint,
    launch_here,
    only_run_dir,
    read_jsonl,
    start,
    wait_for_training,
)

# Long enough to be killed mid-epoch (8 epochs x 18 steps), small enough to stay fast.
BASE = ["train.epochs=6", "data.size=160", "data.step_delay=0.01", "checkpoint.every_steps=4", "log.quiet=true"]


def kill_and_rerun(args: list[str], cwd: Path, kills: int, rng: random.Random) -> int:
    """SIGKILL the run ``kills`` times at random moments, then let it finish.

    Returns how many kills hit a run that already had a checkpoint to resume from."""
    done = 0
    for _ in range(kills):
        proc = start(args, cwd)
        if wait_for_training(cwd, proc):
            time.sleep(rng.uniform(0.0, 0.5))
            resumable = has_checkpoint(cwd)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                done += resumable
        proc.communicate(timeout=120)
    final = launch_here(args, cwd)
    assert final.returncode == 0, final.stderr
    return done


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param([], id="workers0"),
        pytest.param(["data.num_workers=2"], id="workers2"),
        pytest.param(["train.grad_accum_steps=3", "checkpoint.every_steps=1"], id="accum3"),
    ],
)
def test_sigkill_anywhere_resumes_bit_exact(tmp_path, tiny, extra):
    args = [f"recipe={tiny}", *BASE, *extra]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    killed.mkdir()
    r = launch_here(args, ref)
    assert r.returncode == 0, r.stderr
    n = kill_and_rerun(args, killed, kills=3, rng=random.Random(zlib.crc32(" ".join(extra).encode())))
    assert n >= 1, "no kill landed after a checkpoint: make the run longer"
    ref_dir, killed_dir = only_run_dir(ref), only_run_dir(killed)
    assert_same_weights(ref_dir / "model.safetensors", killed_dir / "model.safetensors")
    summary = json.loads((killed_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["resumed_from"] is not None
    # metrics read as if never interrupted: same steps, same values
    ref_events = read_jsonl(ref_dir / "metrics.jsonl")
    got_events = read_jsonl(killed_dir / "metrics.jsonl")
    # measured values (throughput, timings, memory) differ between runs; everything else must not
    strip = lambda evs: [{k: v for k, v in e.items() if not is_measured(k)} for e in evs]  # noqa: E731
    assert strip(got_events) == strip(ref_events)


@pytest.mark.parametrize("sig,status,code", [(signal.SIGINT, "stopped", 130), (signal.SIGTERM, "preempted", 143)])
def test_stop_request_saves_and_resumes(tmp_path, tiny, sig, status, code):
    args = [f"recipe={tiny}", *BASE, "checkpoint.every_steps=0"]
    ref, stopped = tmp_path / "ref", tmp_path / "stopped"
    ref.mkdir()
    stopped.mkdir()
    assert launch_here(args, ref).returncode == 0
    proc = start(args, stopped)
    assert wait_for_training(stopped, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    run_dir = only_run_dir(stopped)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == status
    step = summary["global_step"]
    # the stop saved a checkpoint at the step it stopped (not only at an epoch end)
    assert (run_dir / "checkpoints" / f"step-{step}" / "COMPLETE").is_file()
    r = launch_here(args, stopped)
    assert r.returncode == 0, r.stderr
    assert_same_weights(only_run_dir(ref) / "model.safetensors", run_dir / "model.safetensors")


def test_unreadable_newest_checkpoint_is_skipped(tmp_path, tiny):
    args = [f"recipe={tiny}", "train.epochs=3", "log.quiet=true", "checkpoint.keep_last=3", "run.name=r"]
    first = launch_here([*args, "train.max_steps=12"], tmp_path)
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(tmp_path)
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(ckpts) >= 2
    newest = ckpts[-1]
    state = newest / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    r = launch_here([*args, "train.max_steps=27"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"warning: checkpoint {newest.name} is damaged (state.pt: " in r.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed_from"].endswith(ckpts[-2].name)
    assert summary["global_step"] == 27


def test_malicious_checkpoint_runs_nothing(tmp_path, tiny):
    args = [f"recipe={tiny}", "train.epochs=1", "log.quiet=true", "run.name=r"]
    assert launch_here([*args, "train.max_steps=4"], tmp_path).returncode == 0
    run_dir = only_run_dir(tmp_path)
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import torch

    torch.save({"format_version": 1, "x": Evil()}, newest / "state.pt")
    from launcher.runtime.checkpoint import write_manifest

    write_manifest(newest)  # its checksum rewritten too: an attack, not damage (no fallback)
    r = launch_here([*args, "train.max_steps=8"], tmp_path)
    assert not marker.exists(), "code from the checkpoint ran"
    assert r.returncode == 2
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "refused to load" in errors[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["data.num_workers=2"], ["train.grad_accum_steps=3"]], ids=["w0", "w2", "acc3"])
def test_sigkill_sweep(tmp_path, tiny, extra):
    """The long version (`pytest -m slow`): 25 kills at random moments in one run."""
    args = [f"recipe={tiny}", *BASE, "checkpoint.every_steps=2", *extra]
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    ref.mkdir()
    killed.mkdir()
    assert launch_here(args, ref).returncode == 0
    kill_and_rerun(args, killed, kills=25, rng=random.Random(7))
    assert_same_weights(only_run_dir(ref) / "model.safetensors", only_run_dir(killed) / "model.safetensors")
