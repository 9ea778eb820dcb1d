"""Sweeps (`launch ... --sweep`): the grid, its directory, running it here, again, after a kill."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.cli import run_dir_for
from launcher.errors import ConfigError
from launcher.sweep import split_list, split_tokens
from tests.conftest import TINY, assert_same_weights, launch_env, launch_here, run_launch


@pytest.mark.parametrize(
    "raw, items",
    [
        ("0.1", ["0.1"]),
        ("1e-3,3e-3,1e-2", ["1e-3", "3e-3", "1e-2"]),
        ("[a,b]", ["[a,b]"]),  # a list stays one value
        ("[a,b],[c]", ["[a,b]", "[c]"]),
        ("'a,b'", ["'a,b'"]),  # quotes keep a literal comma
        ("'a,b',c", ["'a,b'", "c"]),
        ("{x: 1, y: 2},{x: 3}", ["{x: 1, y: 2}", "{x: 3}"]),
    ],
)
def test_split_list(raw, items):
    assert split_list(raw) == items


def test_split_tokens_keeps_order_and_refuses_what_cannot_be_swept():
    template, axes = split_tokens(("recipe=x", "train.lr=1,2", "train.epochs=3", "model.arch=a,b"), [])
    assert template == ["recipe=x", None, "train.epochs=3", None]
    assert [(a.key, a.values) for a in axes] == [("train.lr", ["1", "2"]), ("model.arch", ["a", "b"])]
    # a file's list comes last; the command line's value for the same key wins
    template, axes = split_tokens(("train.lr=1",), [("f.yaml", {"train.lr": [1, 2], "run.seed": [0, 1]})])
    assert template == ["train.lr=1", None] and [a.key for a in axes] == ["run.seed"]
    for tokens, words in [
        (("recipe=a,b",), "recipe= cannot be swept"),
        (("train.lr=1,,2",), "empty value"),
        (("train.lr=1,2,1",), "1 is listed twice"),
        (("train.lr=1,2", "train.lr=3,4"), "swept twice"),
    ]:
        with pytest.raises(ConfigError, match=words):
            split_tokens(tokens, [])
    with pytest.raises(ConfigError, match="non-empty list"):
        split_tokens((), [("f.yaml", {"train.lr": 0.1})])


def test_dry_run_lists_points_in_the_single_commands_run_directories(tmp_path):
    args = [f"recipe={TINY}", "train.lr=0.01,0.1", "train.epochs=1", "model.hidden=4,8"]
    r = launch_here([*args, "--sweep", "--dry-run", "--device", "cpu"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("# sweep lr-hidden-") and "4 points" in lines[0] and ", new)" in lines[0]
    for lr, hidden in [("0.01", "4"), ("0.01", "8"), ("0.1", "4"), ("0.1", "8")]:
        single = [f"recipe={TINY}", f"train.lr={lr}", "train.epochs=1", f"model.hidden={hidden}", "--device", "cpu"]
        import os

        cwd = os.getcwd()
        os.chdir(tmp_path)
        try:
            expected = run_dir_for(single)
        finally:
            os.chdir(cwd)
        assert any(f": {expected} (pending)" in line for line in lines), (expected, lines)
        assert "    launch " + " ".join(single) in lines
    assert not (tmp_path / "runs").exists()  # nothing written


def test_sweep_section_in_a_config_file(tmp_path):
    (tmp_path / "s.yaml").write_text("train:\n  epochs: 1\nsweep:\n  train.lr: [0.01, 0.1]\n  model.hidden: [4]\n")
    r = launch_here([f"recipe={TINY}", "config=s.yaml", "--sweep", "--dry-run"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 points" in r.stdout and "launch recipe=" in r.stdout and "train.lr=0.1 model.hidden=4" in r.stdout
    r = launch_here([f"recipe={TINY}", "config=s.yaml", "--dry-run"], tmp_path)
    assert r.returncode == 2 and "has a sweep: section (train.lr, model.hidden); add --sweep" in r.stderr
    # one value for each listed key: an ordinary run (what a point's own command is)
    r = launch_here([f"recipe={TINY}", "config=s.yaml", "train.lr=0.1", "model.hidden=4", "--dry-run"], tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["train.lr=0.1", "--sweep"], "--sweep needs at least one list"),
        (["train.lr=0.1,0.2"], "(to run one training per value of train.lr, add --sweep)"),
        (["train.lr=0.1,0.2", "--parallel", "2"], "--parallel is for sweeps; add --sweep"),
        (["train.lr=0.1,0.2", "--retry-failed"], "--retry-failed is for sweeps"),
        (["train.lr=0.1,0.2", "--sweep", "--show-config"], "--show-config shows one run"),
        (["train.lr=0.1,x", "--sweep"], "sweep point train.lr=x: "),
        (["train.lr=0.1,0.2", "--sweep", "--sweep-name", "a/b"], "--sweep-name 'a/b'"),
        (["train.lr=0.1,0.2", "run.name=same", "--sweep"], "two sweep points train in"),
    ],
)
def test_bad_sweep_input_is_one_line(tmp_path, args, words):
    r = launch_here([f"recipe={TINY}", *args], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "runs").exists()


def _sweep_dir(cwd: Path) -> Path:
    (found,) = (cwd / "runs" / "tiny" / "sweeps").iterdir()
    return found


GRID = [f"recipe={TINY}", "train.lr=0.02,0.05", "model.hidden=4,8", "train.epochs=2", "--device", "cpu"]


def test_grid_in_parallel_then_again_then_grown_then_changed(tmp_path):
    r = run_launch([*GRID, "--sweep", "--parallel", "2"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = _sweep_dir(tmp_path)
    points = json.loads((sweep / "sweep.json").read_text())["points"]
    assert [p["values"] for p in points] == [
        {"train.lr": "0.02", "model.hidden": "4"}, {"train.lr": "0.02", "model.hidden": "8"},
        {"train.lr": "0.05", "model.hidden": "4"}, {"train.lr": "0.05", "model.hidden": "8"},
    ]  # fmt: skip
    for p in points:
        summary = json.loads((tmp_path / p["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["global_step"] == 18
        assert (sweep / "logs" / f"{p['index']}.log").is_file()  # --parallel: each point's output there
    assert r.stdout.count(": completed (val/loss=") == 4
    before = {p["index"]: (tmp_path / p["run_dir"] / "model.safetensors").stat().st_mtime_ns for p in points}

    again = launch_here([*GRID, "--sweep"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count(": completed, in runs/tiny/") == 4 and "4 completed" in again.stdout
    assert ": to run" not in again.stdout
    assert before == {p["index"]: (tmp_path / p["run_dir"] / "model.safetensors").stat().st_mtime_ns for p in points}

    status = launch_here(["status", str(sweep)], tmp_path)
    assert status.returncode == 0, status.stderr
    table = status.stdout.splitlines()
    header = next(line for line in table if line.startswith("#"))
    assert header.split() == ["#", "train.lr", "model.hidden", "state", "step", "epochs", "val/loss", "(min)"]
    rows = [line.split() for line in table if line[:1].isdigit()]
    assert len(rows) == 4 and all(row[3] == "completed" and row[4] == "18" for row in rows)
    losses = {int(row[0]): float(row[6]) for row in rows}
    best = min(losses, key=losses.get)
    assert [row for row in rows if row[-1] == "*"] == [[*rows[best][:7], "*"]]

    # the report: best first, labelled by the swept values, the best point's command
    report = launch_here(["report", str(sweep)], tmp_path)
    assert report.returncode == 0, report.stderr
    lines = report.stdout.splitlines()
    ranked = [line.split()[:2] for line in lines[1:5]]
    by_loss = sorted(losses, key=losses.get)
    assert ranked == [
        [f"lr={points[i]['values']['train.lr']}", f"hidden={points[i]['values']['model.hidden']}"] for i in by_loss
    ]
    best_point = points[by_loss[0]]
    assert f"  launch {' '.join(best_point['tokens'])} --device cpu" in lines
    assert (sweep / "report" / "loss.png").is_file() and (sweep / "report" / "summary.md").is_file()
    # a recipe's folder: every run in it, the differing settings as labels
    folder = launch_here(["report", str(tmp_path / "runs" / "tiny"), "--out", str(tmp_path / "all")], tmp_path)
    assert folder.returncode == 0, folder.stderr
    assert [line.split()[:2] for line in folder.stdout.splitlines()[1:5]] == [
        [f"hidden={points[i]['values']['model.hidden']}", f"lr={points[i]['values']['train.lr']}"] for i in by_loss
    ]

    # a value added to a list adds points (new indices), keeps the rest
    grown = launch_here([*GRID[:1], "train.lr=0.02,0.05,0.1", *GRID[2:], "--sweep", "--dry-run"], tmp_path)
    assert grown.returncode == 0, grown.stderr
    assert "6 points" in grown.stdout and "[4] train.lr=0.1 model.hidden=4" in grown.stdout
    assert "[1] train.lr=0.02 model.hidden=8" in grown.stdout and grown.stdout.count("(completed)") == 4
    # a different definition under the same name: refused, naming the difference
    name = sweep.name
    changed = launch_here([*GRID, "train.epochs=3", "--sweep", "--sweep-name", name], tmp_path)
    assert changed.returncode == 2 and "other shared settings (train.epochs: 2 -> 3)" in changed.stderr
    fewer = launch_here([*GRID[:1], "train.lr=0.02,0.1", *GRID[2:], "--sweep"], tmp_path)
    assert fewer.returncode == 2 and "train.lr=0.05 too (a sweep only grows)" in fewer.stderr
    keys = launch_here([*GRID[:1], "train.lr=0.05", *GRID[2:], "--sweep", "--sweep-name", name], tmp_path)
    assert keys.returncode == 2 and "the lists train.lr, model.hidden, not model.hidden" in keys.stderr


def test_failed_point_is_reported_and_rerun_only_when_asked(tmp_path):
    wandb = ["log.backends=[jsonl,wandb]", "log.wandb.project=sweep"]
    args = [f"recipe={TINY}", "data.fail_at_item=-1,5", "train.epochs=1", *wandb, "--device", "cpu", "--sweep"]
    r = run_launch(args, tmp_path, WANDB_MODE="offline", HOME=str(tmp_path))
    assert r.returncode == 1, r.stdout + r.stderr
    from tests.wandb_records import read_run

    # every point in one wandb group named after the sweep (offline run files, as wandb wrote them)
    files = sorted(tmp_path.glob("runs/tiny/*/wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and {read_run(f).group for f in files} == {_sweep_dir(tmp_path).name}
    assert "data.fail_at_item=5: to run, in runs/tiny/" in r.stdout
    assert "data.fail_at_item=-1: completed (" in r.stdout and "data.fail_at_item=5: failed (exit 1)" in r.stdout
    assert "1 completed, 1 failed" in r.stdout
    again = launch_here(args, tmp_path, WANDB_MODE="offline", HOME=str(tmp_path))
    assert (
        again.returncode == 1
        and "data.fail_at_item=5: failed: not rerun (--retry-failed reruns it), in " in again.stdout
    )
    retry = run_launch([*args, "--retry-failed"], tmp_path, WANDB_MODE="offline", HOME=str(tmp_path))
    assert retry.returncode == 1 and "data.fail_at_item=5: failed (exit 1)" in retry.stdout
    assert "data.fail_at_item=5: starts" not in retry.stdout and "data.fail_at_item=5: continues" in retry.stdout


def test_interrupted_sweep_continues_bit_exactly(tmp_path):
    """Ctrl-C mid-sweep: the running point checkpoints and stops, no new one starts; the same
    command again leaves the completed point alone and finishes the interrupted one with the
    weights of an uninterrupted run."""
    slow = ["data.step_delay=0.05", "train.epochs=2", "checkpoint.every_steps=3"]
    args = [f"recipe={TINY}", "train.lr=0.02,0.05,0.1", *slow, "--device", "cpu", "--sweep"]
    (tmp_path / "cut").mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", *args], cwd=tmp_path / "cut", env=launch_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.time() + 120
    # wait until the second point has a checkpoint of its own
    while not list((tmp_path / "cut" / "runs" / "tiny").glob("lr-0.05*/checkpoints/step-*/COMPLETE")):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out
    assert "train.lr=0.02: completed (" in out and "train.lr=0.05: stopped" in out
    assert "train.lr=0.1: starts" not in out
    sweep = _sweep_dir(tmp_path / "cut")
    status = launch_here(["status", str(sweep)], tmp_path / "cut").stdout
    assert "1 completed, 1 pending, 1 stopped" in status

    first = next((tmp_path / "cut" / "runs" / "tiny").glob("lr-0.02*"))
    kept = (first / "model.safetensors").stat().st_mtime_ns
    r = run_launch(args, tmp_path / "cut")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "train.lr=0.05: continues" in r.stdout and "train.lr=0.1: starts" in r.stdout
    assert (first / "model.safetensors").stat().st_mtime_ns == kept
    (tmp_path / "ref").mkdir()
    ref = launch_here([f"recipe={TINY}", "train.lr=0.05", *slow, "--device", "cpu"], tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    (cut_run,) = (tmp_path / "cut" / "runs" / "tiny").glob("lr-0.05*")
    assert (tmp_path / "ref" / "runs" / "tiny" / cut_run.name).is_dir()  # the same run directory name
    assert_same_weights(
        cut_run / "model.safetensors", tmp_path / "ref" / "runs" / "tiny" / cut_run.name / "model.safetensors"
    )


def test_parallel_points_must_each_get_their_gpus(tmp_path):
    args = [f"recipe={TINY}", "train.lr=0.01,0.1,0.2", "--gpus", "2", "--sweep", "--parallel", "3"]
    r = launch_here(args, tmp_path, CUDA_VISIBLE_DEVICES="0,1,2,3")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == (
        "error: --parallel 3 with 2 GPUs per point needs 6 GPUs; this machine has 4: lower --parallel to 2"
    )
    assert not (tmp_path / "runs").exists()
