"""`launch predict RUN_DIR INPUT...`: a run's model on new files, one JSON line each (torch-free).

The parent checks what needs no torch -- that RUN_DIR is a run with weights, that every INPUT
exists, which files a folder stands for (the recipe's ``input_suffixes``, sorted, sub-folders
too), that a file's ending is one the recipe reads -- then runs ``launcher.runtime.predictor`` in
one process through :mod:`launcher.spawn`. The records keep the order of the inputs; with
``--out FILE`` they are written to a temporary file renamed at the end, so a failed prediction
leaves no half file. Nothing of the run is written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from launcher.errors import LaunchError

PREDICTOR_MODULE = "launcher.runtime.predictor"


def expand_inputs(
    inputs: list[str], suffixes: tuple[str, ...], skip_bad: bool
) -> tuple[list[str], list[tuple[str, str]]]:
    """(files to read in order, [(file, why it is refused)]): a folder stands for its files with
    ``suffixes``; a file with another ending is refused (kept as a refusal under ``skip_bad``,
    else one line)."""
    what = ", ".join(suffixes)
    files: list[str] = []
    refused: list[tuple[str, str]] = []
    if not inputs:
        raise LaunchError("no inputs; pass files or folders to predict on (launch predict RUN_DIR INPUT...)")
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            if not suffixes:
                raise LaunchError(f"{given} is a folder; this recipe reads files only: pass them")
            found = sorted(
                str(Path(root) / name)
                for root, _, names in os.walk(path, followlinks=True)
                for name in names
                if name.lower().endswith(suffixes) and not name.startswith(".")
            )
            if not found:
                raise LaunchError(f"{given} holds no files this recipe reads ({what}); pass another folder")
            files += found
        elif path.is_file():
            if suffixes and not given.lower().endswith(suffixes):
                why = f"is not a file this recipe reads ({what})"
                if not skip_bad:
                    raise LaunchError(f"{given} {why}; pass such files, or --skip-bad to skip the others")
                refused.append((given, why))
            files.append(given)
        else:
            raise LaunchError(f"input {given} not found; pass existing files or folders")
    return files, refused


def run_predict(
    run_dir: Path,
    inputs: list[str],
    which: str = "last",
    out: Path | None = None,
    batch_size: int | None = None,
    skip_bad: bool = False,
    device: str | None = None,
) -> int:
    """Predict as ``launch predict`` does: the exit status (records on stdout, or in ``out``)."""
    from launcher.commands import build_command
    from launcher.evaluation import base_request, choose_weights, run_config, run_request
    from launcher.hardware import visible_gpus
    from launcher.plan import make_plan

    dist = [("dist.procs", "1"), ("dist.nodes", "1"), ("dist.strategy", "auto"), ("slurm.enabled", "false"),
            ("dist.device", device or "auto")]  # fmt: skip
    if batch_size is not None:
        dist.append(("train.batch_size", str(batch_size)))
    recipe_cls, cfg = run_config(run_dir, dist)
    weights = choose_weights(run_dir, which, cfg.checkpoint.monitor, cfg.checkpoint.mode)
    if not _has_hook(recipe_cls):
        raise LaunchError(
            f"recipe {cfg.recipe} has no read_input() hook, which launch predict needs to read a file; "
            "add one (README: recipe hooks)"
        )
    files, refused = expand_inputs(inputs, tuple(s.lower() for s in recipe_cls.input_suffixes), skip_bad)
    if out is not None:
        if out.is_dir():
            raise LaunchError(f"--out {out} is a folder; pass a file name (predictions.jsonl)")
        if not out.parent.is_dir():
            raise LaunchError(f"--out {out}: folder {out.parent} does not exist; create it or pass another path")
    plan = make_plan(cfg, visible_gpus())
    request = {
        **base_request(run_dir, cfg, weights, plan),
        "inputs": files,
        "refused": dict(refused),
        "skip_bad": skip_bad,
        "out": str(out) if out is not None else None,
    }
    folder = Path(tempfile.gettempdir()) / f"launch-predict-{os.getpid()}"  # (the request only)
    return run_request(folder, request, lambda spec: build_command(plan, cfg, spec, module=PREDICTOR_MODULE))


def _has_hook(recipe_cls) -> bool:
    from recipes.base import Recipe

    return getattr(recipe_cls, "read_input", Recipe.read_input) is not Recipe.read_input


@click.command(name="predict", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, metavar="INPUT...")
@click.option("--checkpoint", "which", default="last", show_default=True, help="last | best | step-N")
@click.option("--out", type=click.Path(path_type=Path), help="Write the JSON lines here (default: stdout).")
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: the run's train.batch_size.")
@click.option("--skip-bad", is_flag=True, help="Report a file that cannot be read in its record and go on.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="default: auto")
def predict_command(run_dir: Path, inputs: tuple[str, ...], which: str, out, batch_size, skip_bad, device) -> int:
    """Run a run's model on files (or folders of them): one JSON line per input, in input order.

    Images give their class and probabilities (resnet_finetune), recordings their words (yesno),
    .npz files a class per sequence (sequence). A file that cannot be read is one line naming it;
    with --skip-bad its record says why and the rest go on."""
    return run_predict(run_dir, list(inputs), which, out, batch_size, skip_bad, device)
