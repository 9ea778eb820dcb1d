"""Schedules when a run is extended or resumed with another length, settings that do not fit in
the run, and numbers that must stop a run (a NaN/inf loss). Whole runs of the tiny recipe run in
this process (``launcher.cli.main``): 9 optimizer steps per epoch."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from launcher.config import TrainSection
from launcher.errors import LaunchError
from tests.badinput import Case, assert_refused, tree_state
from tests.conftest import TINY, read_jsonl

LENGTH_DEPENDENT = ["cosine", "onecycle", "warmup_cosine"]
LENGTH_FREE = ["none", "step", "multistep", "exponential", "plateau"]


@pytest.fixture(autouse=True)
def in_process(monkeypatch):
    """No prewarmed interpreter: the single-process worker runs inside this process (fast, and its
    output is captured like the parent's)."""
    monkeypatch.setattr("launcher.cli._prewarm_modules", lambda *args: None)


def train(cwd: Path, *args: str) -> int:
    """A whole single-process run of the tiny recipe in ``cwd`` (in this process); its exit code."""
    from launcher.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        with pytest.raises(SystemExit) as exc:
            main([f"recipe={TINY}", "log.quiet=true", "run.name=r", *args])
    finally:
        os.chdir(old)
    return exc.value.code


def run_dir(cwd: Path) -> Path:
    return cwd / "runs" / "tiny" / "r"


def strict_json(path: Path) -> dict:
    """JSON as the standard has it: NaN / Infinity literals are an error."""

    def refuse(literal):
        raise ValueError(f"{literal} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --------------------------------------------------------------------------- planned lengths


def _scheduler(name: str, total: int):
    import torch

    from launcher.runtime.optim import build_optimizer, build_scheduler

    extra = {"milestones": [2, 4]} if name == "multistep" else {}
    t = TrainSection(scheduler=name, warmup_steps=2, step_size=2, **extra)
    return t, build_scheduler(build_optimizer(torch.nn.Linear(3, 2), t, head=[]), t, total_steps=total)


@pytest.mark.parametrize("name", LENGTH_DEPENDENT + LENGTH_FREE)
def test_every_scheduler_knows_whether_it_was_planned_for_a_length(name):
    from launcher.runtime.optim import check_schedule_length, planned_steps
    from launcher.torch_classes import LENGTH_DEPENDENT_LEGACY as LENGTH_DEPENDENT_SCHEDULERS

    assert sorted(LENGTH_DEPENDENT_SCHEDULERS) == sorted(LENGTH_DEPENDENT)
    t, sched = _scheduler(name, total=8)
    saved = sched.state_dict() if sched is not None else {}
    assert planned_steps(saved) == (8 if name in LENGTH_DEPENDENT else None)
    _, longer = _scheduler(name, total=16)
    checkpoint = Path("runs/tiny/r/checkpoints/step-8")
    check_schedule_length(_scheduler(name, total=8)[1], saved, t, checkpoint)  # the same length: resumes
    if name in LENGTH_DEPENDENT:
        with pytest.raises(
            LaunchError, match="planned as 8 optimizer steps.*would take 16.*model.init_from=runs/tiny/r"
        ):
            check_schedule_length(longer, saved, t, checkpoint)
    else:
        check_schedule_length(longer, saved, t, checkpoint)


# --------------------------------------------------------------------------- refused up front


def completed(*args: str):
    def setup(cwd: Path) -> None:
        assert train(cwd, *args) == 0

    return setup


def killed_after_step_8(cwd: Path) -> None:
    """A cosine run killed after its step-8 checkpoint (no summary, no model yet)."""
    assert train(cwd, "train.scheduler=cosine", "train.epochs=1", "checkpoint.every_steps=4") == 0
    rd = run_dir(cwd)
    for p in (rd / "summary.json", rd / "model.safetensors"):
        p.unlink()
    import shutil

    shutil.rmtree(rd / "checkpoints" / "step-9")


def old_checkpoints(cwd: Path) -> None:
    """A completed run whose checkpoint meta.json predates the step counts (judged by the keys)."""
    completed("train.scheduler=onecycle", "train.epochs=1")(cwd)
    for meta in (run_dir(cwd) / "checkpoints").glob("step-*/meta.json"):
        tree = json.loads(meta.read_text())
        del tree["total_steps"], tree["steps_per_epoch"]
        meta.write_text(json.dumps(tree))


R = ["recipe={tiny}", "log.quiet=true", "run.name=r"]
CASES = [
    Case(
        "onecycle-completed-more-epochs",
        [*R, "train.scheduler=onecycle", "train.epochs=2"],
        "runs/tiny/r was planned as 1 epoch(s) (9 optimizer steps) with train.scheduler=onecycle, whose shape "
        "depends on the run's length; to train longer, start a new run from its weights: run.name=r-2 "
        "model.init_from=runs/tiny/r train.epochs=2 (or keep train.epochs=1)",
        setup=completed("train.scheduler=onecycle", "train.epochs=1"),
    ),
    Case(
        "cosine-killed-resumed-with-more-epochs",
        [*R, "train.scheduler=cosine", "train.epochs=2", "checkpoint.every_steps=4"],
        "planned as 1 epoch(s) (9 optimizer steps) with train.scheduler=cosine",
        setup=killed_after_step_8,
    ),
    Case(
        "warmup-cosine-cut-by-max-steps-then-uncapped",
        [*R, "train.scheduler=warmup_cosine", "train.warmup_steps=2", "train.epochs=2"],
        "planned as train.max_steps=5 (5 optimizer steps) with train.scheduler=warmup_cosine",
        setup=completed("train.scheduler=warmup_cosine", "train.warmup_steps=2", "train.epochs=2", "train.max_steps=5"),
    ),
    Case(
        "shorter-too",
        [*R, "train.scheduler=cosine", "train.epochs=2", "train.max_steps=12"],
        "to train for fewer steps, start a new run from its weights",
        setup=completed("train.scheduler=cosine", "train.epochs=2"),
    ),
    Case(
        "checkpoints-without-step-counts",
        [*R, "train.scheduler=onecycle", "train.epochs=3"],
        "planned as 1 epoch(s) with train.scheduler=onecycle",
        setup=old_checkpoints,
    ),
    Case(  # a torch class whose length argument is left to the run: planned for it, like cosine
        "class-cosine-without-T_max",
        [*R, "train.scheduler=CosineAnnealingLR", "train.epochs=2"],
        "planned as 1 epoch(s) (9 optimizer steps) with train.scheduler=CosineAnnealingLR",
        setup=completed("train.scheduler=CosineAnnealingLR", "train.epochs=1"),
    ),
    # found by the worker (it knows the run's steps once the data is built); the fresh run
    # directory is removed again
    Case(
        "warmup-as-long-as-the-run",
        [*R, "train.scheduler=warmup_cosine", "train.warmup_steps=18"],
        "train.warmup_steps=18 is not shorter than the run (18 optimizer steps)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(case, tmp_path, monkeypatch, capsys):
    assert_refused(case, tmp_path, monkeypatch, capsys)


def test_the_worker_refuses_a_checkpoint_planned_for_another_length_and_changes_nothing(tmp_path, capsys):
    """The exact backstop, where the parent cannot tell (e.g. another process count, which changes
    the steps per epoch): the checkpoint's own schedule against this run's total."""
    from launcher import yamlio
    from launcher.runtime.worker import main as worker_main

    assert train(tmp_path, "train.scheduler=onecycle", "train.epochs=1") == 0
    rd = run_dir(tmp_path)
    tree = yamlio.load((rd / "config.yaml").read_text())
    tree["train"]["epochs"] = 2  # what the parent would hand over
    (rd / "config.yaml").write_text(yamlio.dump(tree))
    before = tree_state(tmp_path)
    capsys.readouterr()
    assert worker_main(str(rd)) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint "), lines
    assert "step-9 was planned as 9 optimizer steps with train.scheduler=onecycle" in lines[0]
    assert "this run would take 18" in lines[0] and f"model.init_from={rd}" in lines[0]
    assert tree_state(tmp_path) == before  # summary.json still says completed, nothing overwritten
    assert strict_json(rd / "summary.json")["status"] == "completed"


def test_schedules_that_do_not_depend_on_the_length_continue(tmp_path):
    base = ["train.scheduler=step", "train.step_size=4", "train.gamma=0.5"]
    assert train(tmp_path, *base, "train.epochs=1") == 0
    assert train(tmp_path, *base, "train.epochs=2") == 0
    s = strict_json(run_dir(tmp_path) / "summary.json")
    assert s["status"] == "completed" and s["global_step"] == 18 and s["resumed_from"].endswith("step-9")
    lrs = {e["step"]: e["lr"] for e in read_jsonl(run_dir(tmp_path) / "metrics.jsonl") if "lr" in e}
    assert lrs == {step: pytest.approx(0.05 * 0.5 ** (step // 4)) for step in range(2, 19, 2)}


def test_a_class_schedule_with_its_length_given_continues(tmp_path):
    base = ["train.scheduler=CosineAnnealingLR", "train.scheduler_args={T_max: 30}"]
    assert train(tmp_path, *base, "train.epochs=1") == 0
    assert train(tmp_path, *base, "train.epochs=2") == 0
    s = strict_json(run_dir(tmp_path) / "summary.json")
    assert s["status"] == "completed" and s["global_step"] == 18 and s["resumed_from"].endswith("step-9")
    lrs = {e["step"]: e["lr"] for e in read_jsonl(run_dir(tmp_path) / "metrics.jsonl") if "lr" in e}
    assert lrs == {k: pytest.approx(0.025 * (1 + math.cos(math.pi * k / 30))) for k in range(2, 19, 2)}


def test_a_class_schedule_resumes_exactly(tmp_path):
    """Interrupted after its step-4 checkpoint, a warm-restart schedule with an epoch interval
    and another optimizer resumes to the same weights as an uninterrupted run."""
    from tests.conftest import assert_same_weights

    args = ["train.optimizer=RMSprop", "train.optimizer_args={momentum: 0.5}", "train.lr=0.01", "train.epochs=3",
            "train.scheduler=CosineAnnealingWarmRestarts", "train.scheduler_args={T_0: 2}",
            "train.scheduler_interval=epoch", "checkpoint.every_steps=4", "checkpoint.keep_last=10"]  # fmt: skip
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir(), cut.mkdir()
    assert train(whole, *args) == 0
    assert train(cut, *args) == 0  # then cut back to what a kill after step 4 leaves
    rd = run_dir(cut)
    import shutil

    for p in (rd / "summary.json", rd / "model.safetensors"):
        p.unlink()
    for step in rd.glob("checkpoints/step-*"):
        if step.name != "step-4":
            shutil.rmtree(step)
    assert train(cut, *args) == 0
    summary = strict_json(rd / "summary.json")
    assert (summary["resumed_from"] or "").endswith("step-4"), summary
    assert_same_weights(run_dir(whole) / "model.safetensors", rd / "model.safetensors")


def test_a_length_dependent_run_accepts_keys_that_keep_its_length(tmp_path):
    assert train(tmp_path, "train.scheduler=cosine", "train.epochs=1") == 0
    assert train(tmp_path, "train.scheduler=cosine", "train.epochs=1", "train.max_steps=1000") == 0
    s = strict_json(run_dir(tmp_path) / "summary.json")
    assert s["status"] == "completed" and s["global_step"] == 9


def test_milestones_beyond_the_run_are_a_warning(tmp_path, capsys):
    capsys.readouterr()
    assert train(tmp_path, "train.scheduler=multistep", "train.milestones=[4,30,40]", "train.epochs=1") == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        "warning: train.milestones 30, 40 lie beyond the run (9 optimizer steps): those decays never happen"
    ]


# --------------------------------------------------------------------------- non-finite numbers


@pytest.mark.parametrize(
    ("log_every", "step"),
    [(2, 2), (100, 9)],  # at a logging step; between them, before the epoch end's checkpoint
    ids=["at-a-logging-step", "before-a-checkpoint"],
)
def test_a_nan_loss_stops_the_run_as_failed(tmp_path, capsys, log_every, step):
    capsys.readouterr()
    code = train(tmp_path, "train.lr=1e30", f"train.log_every={log_every}")
    err = capsys.readouterr().err
    assert code == 1, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    epoch = step // 9
    reason = f"train/loss is nan at step {step} (epoch {epoch}); lower train.lr, use train.grad_clip, or check the data"
    assert errors == [f"error: {reason}"] and "Traceback" not in err
    rd = run_dir(tmp_path)
    s = strict_json(rd / "summary.json")
    assert s["status"] == "failed" and s["exit_code"] == 1 and s["reason"] == reason
    assert s["global_step"] == step
    assert not list(rd.glob("checkpoints/step-*")), "a diverged model was checkpointed"
    assert not (rd / "model.safetensors").exists()
    for line in (rd / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))


def test_summary_json_never_holds_nan_or_infinity(tmp_path):
    import torch

    from launcher.rundir import RunDir
    from launcher.runtime.worker import write_summary

    rd = RunDir(tmp_path)
    nan = float("nan")
    summary = {
        "status": "completed",
        "best": {"metric": "val/loss", "value": nan, "step": 3},
        "final_metrics": {"train/loss": math.inf, "val/acc": 0.5, "grad": torch.tensor(-math.inf)},
        "totals": {"time/epoch_sec": [1.0, nan], "samples_per_sec": None},
    }
    write_summary(rd, summary)
    s = strict_json(rd.summary)
    assert s["best"] == {"metric": "val/loss", "value": None, "step": 3}
    assert s["final_metrics"] == {"train/loss": None, "val/acc": 0.5, "grad": None}
    assert s["totals"] == {"time/epoch_sec": [1.0, None], "samples_per_sec": None}
