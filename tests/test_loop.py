"""Loop behaviour through real runs of the tiny recipe: evaluation cadence, early stopping,
clipping, failures and the second Ctrl-C."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

from tests.conftest import launch_here, read_jsonl, start, wait_for_training

QUIET = ["log.quiet=true", "run.name=r"]


def run_dir(cwd: Path) -> Path:
    return cwd / "runs" / "tiny" / "r"


def summary(cwd: Path) -> dict:
    return json.loads((run_dir(cwd) / "summary.json").read_text())


def test_eval_every_and_clipping(tmp_path, tiny):
    r = launch_here([f"recipe={tiny}", *QUIET, "train.epochs=2", "train.eval_every=4", "train.grad_clip=0.5"], tmp_path)
    assert r.returncode == 0, r.stderr
    events = read_jsonl(run_dir(tmp_path) / "metrics.jsonl")
    val_steps = [e["step"] for e in events if "val/loss" in e]
    # every 4 steps, plus each epoch end (9 steps per epoch), never twice at one step
    assert val_steps == [4, 8, 9, 12, 16, 18]
    assert len(val_steps) == len(set(val_steps))


def test_early_stopping_ends_the_run_as_completed(tmp_path, tiny):
    args = [
        f"recipe={tiny}",
        *QUIET,
        "train.epochs=20",
        "train.lr=1e-12",
        "train.early_stopping.monitor=val/loss",
        "train.early_stopping.patience=2",
        "train.early_stopping.min_delta=0.01",
    ]
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr
    s = summary(tmp_path)
    assert s["status"] == "completed" and s["early_stopped"] is True
    assert s["epochs"] == 3  # best at epoch 1, then 2 evaluations without improvement
    # running it again does not train again
    again = launch_here(args, tmp_path)
    assert again.returncode == 0 and "already complete" in again.stdout


def test_unknown_monitor_is_one_line(tmp_path, tiny):
    r = launch_here([f"recipe={tiny}", *QUIET, "train.early_stopping.monitor=val/los"], tmp_path)
    assert r.returncode == 2  # refused before training: the recipe declares its metric_names
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "val/los is not a metric" in errors[0] and "val/loss" in errors[0]


def test_a_crashing_recipe_fails_with_its_traceback_and_a_summary(tmp_path, tiny):
    r = launch_here([f"recipe={tiny}", *QUIET, "data.fail_at_item=30"], tmp_path)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "broken sample 30" in r.stderr
    s = summary(tmp_path)
    assert s["status"] == "failed" and "broken sample 30" in s["reason"]


def test_second_ctrl_c_aborts_without_waiting(tmp_path, tiny):
    # each step sleeps 1 s: the first SIGINT waits for the step, the second does not
    args = [f"recipe={tiny}", *QUIET, "train.epochs=5", "data.step_delay=1.0", "train.log_every=1"]
    proc = start(args, tmp_path)
    assert wait_for_training(tmp_path, proc, timeout=120)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert time.time() - t0 < 5
    s = summary(tmp_path)
    assert s["status"] == "stopped" and "second Ctrl-C" in s["reason"]


def test_evaluation_cadence_does_not_change_training(tmp_path, tiny):
    """train.eval_every may change on resume, so evaluating must not touch training's RNG."""
    from safetensors.torch import load_file

    weights = []
    for every in (0, 3):
        cwd = tmp_path / f"every{every}"
        cwd.mkdir()
        r = launch_here([f"recipe={tiny}", *QUIET, "train.epochs=2", f"train.eval_every={every}"], cwd)
        assert r.returncode == 0, r.stderr
        weights.append(load_file(str(run_dir(cwd) / "model.safetensors")))
    assert all(weights[0][k].equal(weights[1][k]) for k in weights[0])


def test_bf16_mixed_on_the_cpu_trains(tmp_path, tiny):
    r = launch_here([f"recipe={tiny}", *QUIET, "train.epochs=1", "--precision", "bf16-mixed"], tmp_path)
    assert r.returncode == 0, r.stderr
    s = summary(tmp_path)
    assert s["status"] == "completed" and s["final_metrics"]["train/loss"] > 0
