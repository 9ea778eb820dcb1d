"""The Python API: what ``launch`` does, as functions that return results and raise
:class:`launcher.errors.LaunchError` (a :class:`~launcher.errors.ConfigError` for bad input)
instead of printing a line and exiting. The CLI and these functions run the same code.

    from launcher import train, evaluate, predict, load_model

    summary = train("resnet_finetune", overrides={"train.epochs": 3}, procs=2)
    metrics = evaluate(summary["run_dir"], checkpoint="best", split="val")
    records = predict(summary["run_dir"], ["photos/"])               # one dict per input file
    model = load_model(summary["run_dir"], checkpoint="best")    # an nn.Module, in eval mode

Importing :mod:`launcher` stays torch-free: these are imported on first use, and only
:func:`load_model` (and training itself) brings torch in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, LaunchError

__all__ = ["train", "evaluate", "predict", "load_model", "LaunchError"]


def _argv(overrides: Mapping[str, Any] | None) -> list[str]:
    """``{"train.lr": 0.01, "data.root": "/d"}`` -> ``["train.lr=0.01", "data.root=/d"]`` (values
    that are not strings as JSON, which YAML reads back as the same value)."""
    return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (overrides or {}).items()]


def _run(argv: list[str]) -> int:
    """``launch ARGV`` in this interpreter: the exit status; bad input found before anything
    starts raises (the CLI would print it as one line)."""
    from launcher import cli

    command, args, prog = cli._command_for(argv)
    code = command.main(args=args, prog_name=prog, standalone_mode=False)
    return code if isinstance(code, int) else EXIT_COMPLETED


def train(
    recipe: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    procs: int | None = None,
    gpus: int | None = None,
    strategy: str | None = None,
    config: str | Path | None = None,
) -> dict[str, Any]:
    """Start or resume a run, as ``launch recipe=RECIPE KEY=VALUE ...`` would, and return its
    ``summary.json`` (with ``run_dir`` added). Raises LaunchError when the run did not complete."""
    from launcher.cli import run_dir_for

    argv = [f"recipe={recipe}", *([f"config={config}"] if config else []), *_argv(overrides)]
    argv += [*(["--procs", str(procs)] if procs else []), *(["--gpus", str(gpus)] if gpus else [])]
    argv += ["--strategy", strategy] if strategy else []
    run_dir = run_dir_for(argv)
    code = _run(argv)
    summary = _read_json(run_dir / "summary.json")
    if code == EXIT_BAD_INPUT:
        raise LaunchError((summary or {}).get("reason") or f"launch {' '.join(argv)}: bad input (exit 2)")
    if code != EXIT_COMPLETED or summary is None:
        status = (summary or {}).get("status", "failed")
        raise LaunchError(f"the run in {run_dir} ended {status} (exit {code}); run the same call to resume it")
    return {**summary, "run_dir": str(run_dir.resolve())}


def evaluate(
    run_dir: str | Path,
    checkpoint: str = "last",
    split: str = "val",
    overrides: Mapping[str, Any] | None = None,
    *,
    procs: int | None = None,
    gpus: int | None = None,
) -> dict[str, Any]:
    """``launch eval``: the metrics of a run's weights on a split (the result file's contents)."""
    from launcher.evaluation import run_eval

    code, out = run_eval(Path(run_dir), _argv(overrides), checkpoint, split, procs, gpus, None)
    result = _read_json(out) if code == EXIT_COMPLETED else None
    if result is None:
        raise LaunchError(f"evaluating {run_dir} failed (exit {code}; its message is above)")
    return result


def predict(
    run_dir: str | Path,
    inputs: list[str | Path],
    checkpoint: str = "last",
    *,
    batch_size: int | None = None,
    skip_bad: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """``launch predict``: one record per input (files, or folders standing for their files), in
    input order, each with its ``input`` path (and ``error`` for a file skipped under ``skip_bad``)."""
    import tempfile

    from launcher.predicting import run_predict

    with tempfile.TemporaryDirectory(prefix="launch-predict-") as tmp:
        out = Path(tmp) / "records.jsonl"
        code = run_predict(Path(run_dir), [str(p) for p in inputs], checkpoint, out, batch_size, skip_bad, device)
        if code != EXIT_COMPLETED or not out.is_file():
            raise LaunchError(f"predicting with {run_dir} failed (exit {code}; its message is above)")
        return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def load_model(run_dir: str | Path, checkpoint: str = "last", device: str = "cpu"):
    """The recipe's ``nn.Module`` with a run's weights (``last`` | ``best`` | ``step-N``, as for
    ``launch eval``), on ``device``, in eval mode, ready for inference."""
    from launcher.config import config_class, validate
    from launcher.evaluation import choose_weights, read_run_config
    from launcher.recipe_loader import check_model, load_recipe

    run_dir = Path(run_dir)
    tree = read_run_config(run_dir)
    recipe_cls = load_recipe(tree["recipe"])
    cfg = validate(config_class(recipe_cls), tree)
    weights = choose_weights(run_dir, checkpoint, cfg.checkpoint.monitor, cfg.checkpoint.mode)
    from launcher.runtime.evaluator import load_weights  # (torch: only here)

    model = check_model(recipe_cls(cfg).build_model(), cfg.recipe)
    load_weights(model, weights.path)
    return model.to(device).eval()


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None
