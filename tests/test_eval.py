"""`launch eval RUN_DIR`: a run's final, best or step-N weights on its val or test split, on one
process or several (exact sums), from any strategy's checkpoints; bad input is one line."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, launch_here, read_jsonl, start, wait_for_training

TRAIN = ["log.quiet=true", "train.epochs=2", "--device", "cpu"]
SHARDED = f"{ROOT / 'tests' / 'tiny_recipe.py'}:TinySharded"


def train(cwd: Path, recipe: str, name: str, *extra: str) -> Path:
    r = launch_here([f"recipe={recipe}", *TRAIN, f"run.name={name}", *extra], cwd)
    assert r.returncode == 0, r.stderr
    return cwd / "runs" / "tiny" / name


def logged_val(run: Path, step: int) -> dict[str, float]:
    event = next(e for e in read_jsonl(run / "metrics.jsonl") if e["step"] == step and "val/loss" in e)
    return {k: v for k, v in event.items() if k.startswith("val/")}


def evaluate(cwd: Path, *args: str) -> tuple[dict, str]:
    r = launch_here(["eval", *args], cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    written = [ln.split("wrote ", 1)[1] for ln in r.stderr.splitlines() if ln.startswith("launch: wrote ")]
    assert len(written) == 1, r.stderr
    return json.loads((cwd / written[0]).read_text()), r.stdout


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One completed tiny run with a test split and checkpoints at steps 9 and 18."""
    cwd = tmp_path_factory.mktemp("eval")
    return cwd, train(cwd, TINY, "r", "data.test_size=30", "checkpoint.keep_last=3")


def test_final_weights_give_the_runs_own_final_metrics(run):
    cwd, rd = run
    summary = json.loads((rd / "summary.json").read_text())
    got, table = evaluate(cwd, str(rd.relative_to(cwd)))
    assert got["checkpoint"] == "final" and got["split"] == "val" and got["processes"] == 1
    want = {k: v for k, v in summary["final_metrics"].items() if k.startswith("val/")}
    assert got["metrics"] == pytest.approx(want, rel=1e-6)
    assert "val/acc" in table and "final" in table.splitlines()[0]
    test, _ = evaluate(cwd, str(rd), "--split", "test")
    assert test["metrics"] == pytest.approx(
        {k: v for k, v in summary["final_metrics"].items() if k.startswith("test/")}
    )
    assert sorted(p.name for p in (rd / "eval").iterdir()) == ["final-test.json", "final-val.json"]


def test_a_checkpoint_on_two_processes_sums_exactly(run):
    cwd, rd = run
    got, _ = evaluate(cwd, str(rd), "--checkpoint", "step-9", "--procs", "2")
    assert got["processes"] == 2 and got["step"] == 9
    assert got["metrics"] == pytest.approx(logged_val(rd, 9), rel=1e-6)
    assert got["samples"] == 24  # every validation sample once (96 // 4), none padded


def test_best_picks_the_checkpoint_with_the_best_monitored_value(run):
    cwd, rd = run
    metas = {p.name: json.loads((p / "meta.json").read_text())["metrics"]["val/loss"] for p in rd.glob("checkpoints/*")}
    got, _ = evaluate(cwd, str(rd), "--checkpoint", "best")  # the tiny recipe monitors val/loss, mode min
    assert got["checkpoint"] == min(metas, key=metas.get)


def test_data_overrides_evaluate_other_data_into_their_own_file(run):
    cwd, rd = run
    got, _ = evaluate(cwd, str(rd), "data.size=200")
    assert got["overrides"] == {"data.size": "200"} and got["samples"] == 50
    assert any(p.name.startswith("final-val-") for p in (rd / "eval").iterdir())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["runs/tiny"], "is not a run directory"),
        (["RUN", "model.hidden=4"], "model.hidden changes the model"),
        (["RUN", "train.lr=1"], "train.lr is not an evaluation setting"),
        (["RUN", "--checkpoint", "step-4"], "has no checkpoint step-4 (complete ones: step-18, step-9)"),
        (["RUN", "--checkpoint", "newest"], "pass last, best or step-N"),
        (["NOTEST"], "has no test split"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(run, tiny, args, needle):
    cwd, rd = run
    if args == ["NOTEST"]:
        plain = train(cwd, tiny, "plain", "train.epochs=1") if not (cwd / "runs/tiny/plain").exists() else None
        args = [str(plain or cwd / "runs/tiny/plain"), "--split", "test"]
    args = [str(rd) if a == "RUN" else a for a in args]
    before = sorted(p.relative_to(cwd) for p in cwd.rglob("*"))
    r = launch_here(["eval", *args], cwd)
    assert r.returncode == 2, r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and needle in errors[0], r.stderr
    assert sorted(p.relative_to(cwd) for p in cwd.rglob("*")) == before


def test_no_weights_yet_and_an_incomplete_checkpoint(tmp_path, run):
    _, rd = run
    empty = tmp_path / "runs" / "tiny" / "empty"
    empty.mkdir(parents=True)
    shutil.copy(rd / "config.yaml", empty / "config.yaml")
    r = launch_here(["eval", str(empty)], tmp_path)
    assert r.returncode == 2 and "has no weights yet" in r.stderr
    (empty / "checkpoints").mkdir()
    shutil.copytree(rd / "checkpoints" / "step-9", empty / "checkpoints" / "step-9")
    (empty / "checkpoints" / "step-9" / "COMPLETE").unlink()
    r = launch_here(["eval", str(empty), "--checkpoint", "step-9"], tmp_path)
    assert r.returncode == 2 and "step-9 of" in r.stderr and "is incomplete" in r.stderr


def test_fsdp_shards_are_assembled_into_the_whole_model(tmp_path):
    rd = train(tmp_path, SHARDED, "f", "--procs", "2", "--strategy", "fsdp")
    ckpt = sorted(rd.glob("checkpoints/step-*"))[0]
    assert (ckpt / "dcp").is_dir() and not (ckpt / "model.safetensors").exists()
    step = int(ckpt.name.split("-")[1])
    got, _ = evaluate(tmp_path, str(rd), "--checkpoint", ckpt.name)
    assert got["metrics"] == pytest.approx(logged_val(rd, step), rel=1e-5)


def test_deepspeed_zero3_checkpoints_evaluate_on_two_processes(tmp_path, tiny):
    """ZeRO-3 shards parameters across ranks in training; its checkpoints still hold the whole
    model's weights, which two evaluation processes (plain DDP) load and sum exactly."""
    rd = train(tmp_path, tiny, "z", "--procs", "2", "--strategy", "deepspeed", "deepspeed.stage=3")
    ckpt = sorted(rd.glob("checkpoints/step-*"))[0]
    assert (ckpt / "deepspeed").is_dir()
    step = int(ckpt.name.split("-")[1])
    got, _ = evaluate(tmp_path, str(rd), "--checkpoint", ckpt.name, "--procs", "2")
    assert got["processes"] == 2 and got["metrics"] == pytest.approx(logged_val(rd, step), rel=1e-5)
    final, _ = evaluate(tmp_path, str(rd))
    summary = json.loads((rd / "summary.json").read_text())
    assert final["metrics"] == pytest.approx(
        {k: v for k, v in summary["final_metrics"].items() if "val/" in k}, rel=1e-5
    )


def test_a_run_that_is_still_training_evaluates_its_newest_checkpoint(tmp_path, tiny):
    args = [f"recipe={tiny}", "log.quiet=true", "run.name=live", "train.epochs=30", "data.step_delay=0.05",
            "checkpoint.every_steps=2", "checkpoint.keep_last=1000", "--device", "cpu"]  # fmt: skip
    proc = start(args, tmp_path)
    try:
        assert wait_for_training(tmp_path, proc)
        rd = tmp_path / "runs" / "tiny" / "live"
        deadline = time.time() + 60
        while not any((p / "COMPLETE").is_file() for p in rd.glob("checkpoints/step-*")):
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.1)
        before = {p.name for p in rd.iterdir()} - {"eval"}
        got, _ = evaluate(tmp_path, str(rd))
        assert got["checkpoint"].startswith("step-") and proc.poll() is None  # training goes on
        assert {p.name for p in rd.iterdir()} - {"eval"} <= before | {"model.safetensors", "summary.json"}
    finally:
        proc.kill()
        proc.communicate(timeout=60)
