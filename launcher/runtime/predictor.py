"""``python -m launcher.runtime.predictor REQUEST.json``: ``launch predict``'s one process.

It builds the recipe's model with the chosen weights (launcher/runtime/evaluator.py:
``load_weights``), reads each input through ``recipe.read_input`` (in ``data.num_workers``
loader processes when set), gathers the samples into batches of ``train.batch_size``, collated as
training collates them, and writes ``recipe.predict``'s records as JSON lines in the order of the
inputs: ``{"input": PATH, ...}`` (``"index"`` too when a file holds several samples). A file that
cannot be read ends the run with one line naming it (exit 2), or with ``skip_bad`` becomes a
record ``{"input": PATH, "error": WHY}`` and the rest go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, LaunchError, first_line
from launcher.startup import imports_without_gc


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Inputs:
    """Map-style dataset over the input files: item i is ``(i, samples, None)`` or
    ``(i, None, why it cannot be read)`` (a reading error never escapes a loader process)."""

    def __init__(self, recipe, files: list[str], refused: dict[str, str]) -> None:
        self.recipe, self.files, self.refused = recipe, files, refused

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        path = self.files[i]
        if path in self.refused:
            return i, None, self.refused[path]
        try:
            samples = list(self.recipe.read_input(path))
        except Exception as e:  # whatever the file's reader raises: the file is named, the rest decides
            what = first_line(e) if type(e) is ValueError else f"{type(e).__name__}: {first_line(e)}"
            return i, None, f"cannot be read ({what})"
        if not samples:
            return i, None, "holds no samples"
        return i, samples, None


def _identity(item):
    return item


def _records(request: dict, env, write) -> int:
    """Write every input's records through ``write(line)``; the number of inputs refused."""
    import torch

    from launcher.config import config_class, validate
    from launcher.recipe_loader import check_model, load_recipe
    from launcher.runtime import rng
    from launcher.runtime.evaluator import load_weights
    from launcher.runtime.strategies import make_strategy, resolve_device

    recipe_cls = load_recipe(request["config"]["recipe"])
    cfg = validate(config_class(recipe_cls), request["config"])
    device = resolve_device(request["plan"]["device"], env)
    strategy = make_strategy(request["plan"]["strategy"], env, device, cfg)
    precision = strategy.make_precision(cfg.train.precision)
    rng.seed_everything(cfg.run.seed)
    recipe = recipe_cls(cfg)
    model = check_model(recipe.build_model(), cfg.recipe)
    load_weights(model, Path(request["weights"]))
    model = precision.convert_model(model).to(device).eval()
    files = request["inputs"]
    workers = min(cfg.data.num_workers, len(files))
    loader = torch.utils.data.DataLoader(
        Inputs(recipe, files, request["refused"]), batch_size=None, num_workers=workers, collate_fn=_identity
    )
    collate = getattr(recipe, "collate", None) or torch.utils.data.default_collate
    batch_size = cfg.train.batch_size
    pending: list[tuple[str, int | None, object]] = []  # (input, index in the file, sample | why not)
    refused = 0

    def flush() -> None:
        samples = [s for _, _, s in pending if not isinstance(s, str)]
        records = iter(_predict(recipe, model, collate(samples), device, precision) if samples else [])
        for path, index, sample in pending:
            head = {"input": path} if index is None else {"input": path, "index": index}
            write(json.dumps({**head, "error": sample} if isinstance(sample, str) else {**head, **next(records)}))
        pending.clear()

    with _bar(len(files)) as bar, contextlib.ExitStack() as teardown:
        teardown.callback(strategy.teardown)
        for i, samples, why in loader:
            if why is not None:
                if not request["skip_bad"]:
                    raise LaunchError(
                        f"input {files[i]} {why}; fix or remove it, or pass --skip-bad to go on without it"
                    )
                _say(f"warning: skipped input {files[i]}: {why}")
                refused += 1
                pending.append((files[i], None, why))
            else:
                for k, sample in enumerate(samples):
                    pending.append((files[i], k if len(samples) > 1 else None, sample))
                    if sum(not isinstance(s, str) for _, _, s in pending) >= batch_size:
                        flush()
            bar.update(1)
        flush()
    return refused


def _predict(recipe, model, batch, device, precision) -> list[dict]:
    import torch

    from launcher.runtime.data import to_device

    with torch.no_grad():
        batch = precision.convert_input(to_device(batch, device))
        with precision.autocast():
            records = recipe.predict(model, batch)
    return list(records)


def _write(line: str, stream, flush: bool) -> None:
    """One record; on a terminal above the progress bar (tqdm takes the bar off meanwhile)."""
    from tqdm import tqdm

    tqdm.write(line, file=stream)
    if flush:
        stream.flush()


@contextlib.contextmanager
def _bar(total: int):
    """A progress bar over the input files on a terminal (after a second: short runs show none)."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="file", file=sys.stderr, delay=1.0, disable=not sys.stderr.isatty(), leave=False)
    try:
        yield bar
    finally:
        bar.close()


def main(request_path: str) -> int:
    with imports_without_gc():
        import torch  # noqa: F401

        from launcher.runtime.env import DistEnv

    request = json.loads(Path(request_path).read_text())
    env = DistEnv.from_environ(os.environ)
    out = Path(request["out"]) if request["out"] else None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}") if out is not None else None
    try:
        with open(tmp, "w") if tmp is not None else contextlib.nullcontext(sys.stdout) as stream:
            refused = _records(request, env, lambda line: _write(line, stream, flush=out is None))
        if tmp is not None:
            tmp.replace(out)
    except LaunchError as e:
        _say(f"error: {e}")
        return EXIT_BAD_INPUT
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    n = len(request["inputs"])
    where = f"wrote {out}" if out is not None else "done"
    _say(f"launch: {where}: {n} input{'s' if n != 1 else ''}" + (f", {refused} skipped" if refused else ""))
    return EXIT_COMPLETED


if __name__ == "__main__":
    if len(sys.argv) != 2:
        _say("usage: python -m launcher.runtime.predictor REQUEST.json")
        sys.exit(EXIT_BAD_INPUT)
    sys.exit(main(sys.argv[1]))
