"""`launch eval RUN_DIR`: evaluate a run's weights on its validation or test split (torch-free).

The parent decides everything that needs no torch -- that RUN_DIR is a run, which weights
(``--checkpoint last | best | step-N``), which config (the run's own, with ``data.*`` overrides
only), where the result goes (``RUN_DIR/eval/<weights>-<split>[-<hash of overrides>].json``) --
then runs ``launcher.runtime.evaluator`` as one process or under torchrun (``--procs N``,
``--gpus N``) through :mod:`launcher.spawn`, like training. It writes nothing but that file (and
the request it hands to the processes, removed afterwards): never into checkpoints or training
files, so it works on a run that is still training or was preempted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import click

from launcher.errors import LaunchError

EVAL_DIR = "eval"
SPLITS = ("val", "test")
EVALUATOR_MODULE = "launcher.runtime.evaluator"
# keys an evaluation may change: where and how the data is read, and the batch size (not the model)
ALLOWED_PREFIXES = ("data.",)
ALLOWED_KEYS = ("train.batch_size", "train.precision")


@dataclass(frozen=True)
class Weights:
    name: str  # "final" (model.safetensors) or "step-N"
    path: Path  # model.safetensors, or the checkpoint directory
    step: int | None  # the checkpoint's step (None: the final weights; the summary has it)


def choose_weights(run_dir: Path, which: str, monitor: str, mode: str) -> Weights:
    """``last``: the final weights if the run completed, else its newest complete checkpoint;
    ``best``: the complete checkpoint with the best ``monitor`` (meta.json); ``step-N``: that one."""
    from launcher.rundir import COMPLETE_MARKER, META_FILE, RunDir, checkpoint_step

    rd = RunDir(run_dir)
    complete = rd.complete_checkpoints()
    names = ", ".join(p.name for p in complete[:6]) or "none"
    if which == "last":
        if rd.model.is_file():
            return Weights("final", rd.model, None)
        if complete:
            return Weights(complete[0].name, complete[0], checkpoint_step(complete[0]))
        raise LaunchError(
            f"{run_dir} has no weights yet (no model.safetensors, no complete checkpoint); "
            "evaluate it once it has saved a checkpoint"
        )
    if which == "best":
        scored = []
        for p in complete:
            try:
                value = json.loads((p / META_FILE).read_text()).get("metrics", {}).get(monitor)
            except (OSError, ValueError):
                continue
            if isinstance(value, (int, float)):
                scored.append((value, checkpoint_step(p), p))
        if not scored:
            raise LaunchError(
                f"no checkpoint of {run_dir} holds {monitor} (checkpoint.monitor) to pick the best by "
                f"(complete checkpoints: {names}); pass --checkpoint last or --checkpoint step-N"
            )
        best = max(scored, key=lambda t: (t[0] if mode == "max" else -t[0], t[1]))
        return Weights(best[2].name, best[2], best[1])
    if re.fullmatch(r"step-\d+", which):
        p = rd.checkpoints / which
        if not p.is_dir():
            raise LaunchError(f"{run_dir} has no checkpoint {which} (complete ones: {names}); pass one of them")
        if not (p / COMPLETE_MARKER).is_file():
            raise LaunchError(f"checkpoint {which} of {run_dir} is incomplete (still being written or cut short); "
                              f"pass another (complete ones: {names})")  # fmt: skip
        return Weights(which, p, checkpoint_step(p))
    raise LaunchError(f"--checkpoint {which}: pass last, best or step-N (complete checkpoints: {names})")


def check_overrides(pairs: list[tuple[str, str]]) -> None:
    for key, _ in pairs:
        if key.startswith(ALLOWED_PREFIXES) or key in ALLOWED_KEYS:
            continue
        what = "changes the model the weights belong to" if key.startswith("model.") else "is not an evaluation setting"
        raise LaunchError(
            f"{key} {what}; launch eval takes data.* keys (e.g. data.root=/other/folder), train.batch_size "
            "and train.precision"
        )


def result_path(run_dir: Path, weights: Weights, split: str, pairs: list[tuple[str, str]]) -> Path:
    name = f"{weights.name}-{split}"
    if pairs:
        digest = hashlib.sha256(json.dumps(sorted(pairs)).encode()).hexdigest()[:8]
        name += f"-{digest}"
    return run_dir / EVAL_DIR / f"{name}.json"


def read_run_config(run_dir: Path) -> dict:
    """The run's resolved config (its config.yaml) as a tree; LaunchError when it is no run."""
    from launcher import yamlio
    from launcher.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.config.is_file():
        raise LaunchError(f"{run_dir} is not a run directory (no config.yaml); pass runs/<recipe>/<run name>")
    try:
        tree = yamlio.load(rd.config.read_text()) or {}
    except (OSError, yamlio.YAMLError):
        raise LaunchError(f"{rd.config} is unreadable; is {run_dir} a run directory?") from None
    if not isinstance(tree, dict) or not tree.get("recipe"):
        raise LaunchError(f"{rd.config} names no recipe; is {run_dir} a run directory?")
    return tree


def run_config(run_dir: Path, overrides: list[tuple[str, str]]):
    """(recipe class, config): the run's own config, with ``overrides`` in place of how it was
    trained to run (``dist.*``, ``slurm.*``)."""
    from launcher import config as cfgmod
    from launcher.recipe_loader import load_recipe

    tree = read_run_config(run_dir)
    recipe_cls = load_recipe(tree["recipe"])
    for section in ("dist", "slurm"):
        tree.pop(section, None)  # (how it was trained: not how it is evaluated or exported)
    return recipe_cls, cfgmod.resolve(recipe_cls, [tree], overrides)


def base_request(run_dir: Path, cfg, weights: Weights, plan=None) -> dict:
    """What every process that runs a run's weights is handed (eval, predict, export)."""
    from launcher import config as cfgmod

    request = {"run_dir": str(run_dir), "config": cfgmod.to_plain(cfg), "weights": str(weights.path),
               "weights_name": weights.name, "step": weights.step}  # fmt: skip
    if plan is not None:
        request["plan"] = plan.to_dict()
    return request


def run_request(folder: Path, request: dict, command_for) -> int:
    """Hand ``request`` to the processes of ``command_for(request file)`` through spawn; the
    request file is removed afterwards, and ``folder`` too when this made it and nothing came."""
    from launcher import spawn
    from launcher.rundir import write_atomic

    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / f".request-{os.getpid()}.json"
    write_atomic(spec, json.dumps(request, indent=2, default=str) + "\n")
    try:
        return spawn.run(command_for(spec), Path(request["run_dir"]))
    finally:
        spec.unlink(missing_ok=True)
        if made and not any(folder.iterdir()):
            folder.rmdir()  # (refused: nothing written)


def run_eval(
    run_dir: Path, overrides: list[str], which: str, split: str, procs: int | None, gpus: int | None, device
) -> tuple[int, Path]:
    """Evaluate as ``launch eval`` does: (exit status, the result file it writes)."""
    from launcher import config as cfgmod
    from launcher.commands import build_command
    from launcher.hardware import free_port, visible_gpus
    from launcher.plan import make_plan

    if split not in SPLITS:
        raise LaunchError(f"split={split!r}: pass one of {', '.join(SPLITS)}")
    pairs = [cfgmod.split_override(t) for t in overrides]
    check_overrides(pairs)
    if gpus is not None and device not in (None, "cuda"):
        raise LaunchError(f"--gpus {gpus} conflicts with --device {device}; give only one of them")
    n = gpus or procs or 1
    dist = [("dist.procs", str(n)), ("dist.nodes", "1"), ("dist.strategy", "auto"), ("slurm.enabled", "false")]
    dist.append(("dist.device", "cuda" if gpus else (device or "auto")))
    _, cfg = run_config(run_dir, [*pairs, *dist])
    c = cfg.checkpoint
    weights = choose_weights(run_dir, which, c.monitor, c.mode)
    out = result_path(run_dir, weights, split, pairs)
    plan = make_plan(cfg, visible_gpus())
    request = {
        **base_request(run_dir, cfg, weights, plan),
        "split": split,
        "out": str(out),
        "overrides": dict(pairs),
    }
    port = free_port() if plan.procs_per_node > 1 else None
    code = run_request(
        out.parent, request, lambda spec: build_command(plan, cfg, spec, port=port, module=EVALUATOR_MODULE)
    )
    return code, out


@click.command(name="eval", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("overrides", nargs=-1, metavar="[data.KEY=VALUE ...]")
@click.option("--checkpoint", "which", default="last", show_default=True, help="last | best | step-N")
@click.option("--split", type=click.Choice(SPLITS), default="val", show_default=True)
@click.option("--procs", type=click.IntRange(min=1), help="Processes (exact sums across them, as in training).")
@click.option("--gpus", type=click.IntRange(min=1), help="GPUs on this node (--device cuda --procs N).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="default: auto")
def eval_command(run_dir: Path, overrides: tuple[str, ...], which: str, split: str, procs, gpus, device) -> int:
    """Evaluate a run's weights on its val or test split: one table, and RUN_DIR/eval/*.json.

    Data keys may be overridden (data.root=/new/folder evaluates on other data); keys that change
    the model are refused. Works on a run that is still training or was preempted."""
    return run_eval(run_dir, list(overrides), which, split, procs, gpus, device)[0]
