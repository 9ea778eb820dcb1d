"""``python -m launcher.runtime.exporter REQUEST.json``: ``launch export``'s one process (CPU)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import warnings
from pathlib import Path

from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, LaunchError, first_line
from launcher.startup import imports_without_gc


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def example_batch(recipe, cfg):
    """Two samples of the recipe's validation split (else training's), collated as the loader does."""
    import torch

    from launcher.recipe_loader import check_datasets

    train, val, _ = check_datasets(recipe.build_datasets(), cfg.recipe)
    dataset = val if val is not None and len(val) > 0 else train
    samples = [dataset[i] for i in range(min(2, len(dataset)))]
    collate = getattr(recipe, "collate", None) or torch.utils.data.default_collate
    return collate(samples)


def export(request: dict) -> dict:
    import torch

    from launcher.config import config_class, validate
    from launcher.recipe_loader import check_model, load_recipe
    from launcher.runtime import rng
    from launcher.runtime.evaluator import load_weights

    recipe_cls = load_recipe(request["config"]["recipe"])
    cfg = validate(config_class(recipe_cls), request["config"])
    rng.seed_everything(cfg.run.seed)
    recipe = recipe_cls(cfg)
    model = check_model(recipe.build_model(), cfg.recipe)
    load_weights(model, Path(request["weights"]))
    model.eval()
    out = Path(request["out"])
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")  # (torch.export.save wants the .pt2 ending)
    info = {"recipe": cfg.recipe, "format": request["format"], "weights": request["weights_name"],
            "step": request["step"], **recipe.export_info()}  # fmt: skip
    if request["format"] == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp))
    else:
        args = tuple(recipe.export_inputs(example_batch(recipe, cfg)))
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        auto = torch.export.Dim.AUTO  # (other sizes: free where the model allows, else the example's)
        dims = tuple({0: batch, **{d: auto for d in range(1, a.ndim)}} for a in args)
        failure = None
        with warnings.catch_warnings(), _quiet():  # (what tracing says is in the error, if it fails)
            warnings.simplefilter("ignore")
            try:
                program = torch.export.export(model, args, dynamic_shapes=dims)
            except Exception as e:  # torch.export names what it cannot trace
                failure = f"{type(e).__name__}: {first_line(e)}"
        if failure is not None:
            raise LaunchError(
                f"torch.export cannot trace recipe {cfg.recipe}'s model ({failure}); use --format safetensors"
            )
        with torch.no_grad():
            want, got = model(*args), program.module()(*args)
        close = all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(_flat(want), _flat(got), strict=True))
        if not close:
            raise LaunchError(
                f"the exported program of {cfg.recipe} computes other outputs than the model; use --format safetensors"
            )
        torch.export.save(program, str(tmp))
        info["example_inputs"] = [{"shape": list(a.shape), "dtype": str(a.dtype).removeprefix("torch.")} for a in args]
        info["load"] = "torch.export.load(PATH).module()(*inputs); the batch size is free"
    tmp.replace(out)
    from launcher.rundir import write_atomic

    write_atomic(info_path(out), json.dumps(info, indent=2, default=str) + "\n")
    return info


@contextlib.contextmanager
def _quiet():
    """Log records and what is printed dropped meanwhile (torch.export shows the graph it
    failed on, and warns as it goes)."""
    was = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(was)


def info_path(out: Path) -> Path:
    """The JSON beside an exported file: ``final.pt2`` -> ``final.pt2.json``."""
    return out.with_name(out.name + ".json")


def _flat(value):
    import torch

    if isinstance(value, torch.Tensor):
        return [value]
    return [t for v in value for t in _flat(v)]


def main(request_path: str) -> int:
    with imports_without_gc():
        import torch  # noqa: F401

    request = json.loads(Path(request_path).read_text())
    try:
        export(request)
    except LaunchError as e:
        _say(f"error: {e}")
        return EXIT_BAD_INPUT
    _say(f"launch: wrote {request['out']} and {info_path(Path(request['out']))}")
    return EXIT_COMPLETED


if __name__ == "__main__":
    if len(sys.argv) != 2:
        _say("usage: python -m launcher.runtime.exporter REQUEST.json")
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(main(sys.argv[1]))
