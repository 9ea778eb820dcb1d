"""``python -m launcher.runtime.evaluator REQUEST.json``: the processes of ``launch eval``.

Each process builds the recipe's model from the run's config, loads the chosen full weights (a
``model.safetensors``: the final one or a checkpoint's; FSDP's sharded ``dcp/`` is assembled
whole), evaluates its shard of the split (the same unpadded shards and ``recipe.step`` as the
training loop's validation, launcher/runtime/loop.py: ``evaluation_sums``) and the sums are added
over the processes, so the metrics are exact on any process count. Rank 0 prints one table and
writes the result file. Nothing of the run is written.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, LaunchError, first_line
from launcher.startup import imports_without_gc


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_weights(model, path: Path) -> None:
    """Full weights from ``path`` (a model.safetensors, or a checkpoint directory) into ``model``."""
    from launcher.rundir import DCP_DIR, MODEL_FILE
    from launcher.weights import load_state_file, strip_prefixes

    file = path / MODEL_FILE if path.is_dir() else path
    gone = "if the run is still training, its checkpoint retention may have removed it: run launch eval again"
    try:
        if file.is_file():
            state = strip_prefixes(load_state_file(str(file)))
        elif (path / DCP_DIR).is_dir():
            state = _assemble_dcp(model, path / DCP_DIR)
        else:
            raise LaunchError(f"{path} holds no weights ({MODEL_FILE} or {DCP_DIR}/); {gone}")
    except OSError as e:
        raise LaunchError(f"cannot read the weights in {path} ({e.strerror or e}); {gone}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise LaunchError(f"the weights in {path} do not fit the recipe's model ({first_line(e)})") from None


def _assemble_dcp(model, directory: Path) -> dict:
    """The whole model from FSDP's shards: DCP reads each parameter's pieces into full tensors."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    from launcher.runtime.strategies.fsdp import SafeReader

    state = {"model": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    reader = SafeReader(directory)
    try:
        dcp.load(state, storage_reader=reader)
    except CheckpointException as e:
        raise LaunchError(
            f"cannot read the sharded weights in {directory}: {reader.failure or first_line(e)}"
        ) from None
    return state["model"]


def evaluate(request: dict, env) -> dict:
    """The metrics of ``request``'s weights on its split (every rank calls it: collectives)."""
    from launcher.config import config_class, validate
    from launcher.recipe_loader import check_datasets, check_model, load_recipe
    from launcher.runtime import rng
    from launcher.runtime.loop import evaluation_sums
    from launcher.runtime.strategies import make_strategy, resolve_device
    from launcher.runtime.worker import _loader

    recipe_cls = load_recipe(request["config"]["recipe"])
    cfg = validate(config_class(recipe_cls), request["config"])
    device = resolve_device(request["plan"]["device"], env)
    strategy = make_strategy(request["plan"]["strategy"], env, device, cfg)
    try:
        precision = strategy.make_precision(cfg.train.precision)
        rng.seed_everything(cfg.run.seed)
        recipe = recipe_cls(cfg)
        model = check_model(recipe.build_model(), cfg.recipe)
        load_weights(model, Path(request["weights"]))
        model = precision.convert_model(model).to(device)
        split = request["split"]
        _, val, test = check_datasets(recipe.build_datasets(), cfg.recipe)
        dataset = val if split == "val" else test
        if dataset is None or len(dataset) == 0:
            hint = "--split val" if split == "test" else "data.val_fraction=... (or a val/ folder)"
            raise LaunchError(f"recipe {cfg.recipe} has no {split} split with this config; use {hint}")
        if len(dataset) < env.world_size:
            raise LaunchError(f"the {split} split has {len(dataset)} samples for {env.world_size} processes; use fewer")
        _, loader = _loader(cfg, recipe, env, device, dataset, train=False)
        t0 = time.perf_counter()
        sums = evaluation_sums(recipe, model, loader, strategy, precision)
        totals = strategy.comm.reduce_sums(sums)
        metrics = {f"{split}/{k}": v for k, v in recipe.metrics(totals).items()}
        return {"metrics": metrics, "samples": totals.get("count"), "seconds": time.perf_counter() - t0}
    finally:
        import gc

        model = recipe = None  # (before the process group: see worker.main)
        gc.collect()
        strategy.teardown()


def table(request: dict, result: dict) -> str:
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in result["metrics"].items()]
    head = f"{request['weights_name']} ({'step ' + str(request['step']) if request['step'] is not None else 'final weights'}) on {request['split']}"
    width = max(len(k) for k, _ in rows) if rows else 0
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in rows)])


def main(request_path: str) -> int:
    with imports_without_gc():
        import torch  # noqa: F401

        from launcher.runtime.env import DistEnv

    request = json.loads(Path(request_path).read_text())
    env = DistEnv.from_environ(os.environ)
    try:
        result = evaluate(request, env)
    except LaunchError as e:
        if env.is_main:
            _say(f"error: {e}")
        return EXIT_BAD_INPUT
    if env.is_main:
        from launcher.rundir import write_atomic
        from launcher.runtime.worker import json_safe

        record = {
            "checkpoint": request["weights_name"],
            "step": request["step"],
            "split": request["split"],
            "overrides": request["overrides"],
            "processes": env.world_size,
            **result,
        }
        write_atomic(Path(request["out"]), json.dumps(json_safe(record), indent=2) + "\n")
        print(table(request, result), flush=True)
        _say(f"launch: wrote {request['out']}")
    return EXIT_COMPLETED


if __name__ == "__main__":
    if len(sys.argv) != 2:
        _say("usage: python -m launcher.runtime.evaluator REQUEST.json")
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(main(sys.argv[1]))
