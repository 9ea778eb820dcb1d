"""Find a recipe class from ``recipe=NAME``, ``recipe=pkg.module:Class`` or ``recipe=path/file.py:Class``.

Built-in recipes do not import torch at module level, so loading one here keeps the CLI fast.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from launcher.errors import EXIT_BAD_INPUT, ConfigError
from recipes import BUILTIN

if TYPE_CHECKING:
    from recipes.base import Recipe

# launcher.config (pydantic) and recipes.base are imported where needed: `launch --list` reads
# the built-in recipes' descriptions from their source and stays free of both.


def normalize_spec(spec: str) -> str:
    """Make file-based specs absolute so workers (and requeued jobs) find the same file."""
    if spec in BUILTIN or ":" not in spec:
        return spec
    target, _, cls_name = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target:
        return f"{Path(target).resolve()}:{cls_name}"
    return spec


def recipe_dir_name(spec: str, cls: type) -> str:
    if spec in BUILTIN:
        return spec
    return getattr(cls, "name", "") or cls.__name__


def _import_file(path: str):
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe file {path} not found; pass recipe=path/to/file.py:ClassName")
    mod_name = f"_launch_user_recipe_{abs(hash(str(p.resolve())))}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, p)
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    # Let the recipe import its neighbours (helpers next to the file).
    sys.path.insert(0, str(p.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:
        sys.modules.pop(mod_name, None)  # a fixed file is imported afresh by the next load
        raise ConfigError(_import_problem(f"recipe file {path}", str(p.resolve()), e)) from None
    return module


def _import_module(name: str):
    """``importlib.import_module`` for ``recipe=pkg.module:Class``: a module that is not there
    keeps the install hint; one that fails while it is imported is named with its problem."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ConfigError(
                f"cannot import recipe module {name!r} ({e}); install it or add its folder to PYTHONPATH"
            ) from None
        problem = e  # the module is there, but something it imports is not
    except (Exception, SystemExit) as e:
        problem = e
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        sys.modules.pop(mod, None)
    spec = None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        pass
    origin = spec.origin if spec is not None and spec.origin else ""
    shown = f"recipe module {name}" + (f" ({origin})" if origin else "")
    raise ConfigError(_import_problem(shown, origin, problem)) from None


def _import_problem(what: str, origin: str, e: BaseException) -> str:
    """One line for an exception raised while a recipe's module was imported: the file and line
    of a syntax error; otherwise the exception, where the recipe's own code raised it."""
    if isinstance(e, SystemExit):
        return (
            f"{what} called sys.exit() while being imported; remove that call from the module's top level "
            '(or put it under `if __name__ == "__main__":`)'
        )
    if isinstance(e, SyntaxError):  # (also a neighbour module the recipe imports)
        where = f"{e.filename or origin}:{e.lineno}" if e.lineno else (e.filename or origin)
        return f"cannot import {what}: syntax error at {where}: {e.msg}; fix the file"
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if origin and f.filename == origin]
    line = f" at line {own[-1].lineno}" if own else ""
    message = (str(e).strip().splitlines() or [""])[0]
    shown = f"{type(e).__name__}: {message}" if message else type(e).__name__
    fix = "install what it imports, or fix the import" if isinstance(e, ImportError) else "fix the module"
    return f"importing {what} failed{line}: {shown}; {fix}"


def load_recipe(spec: str) -> type[Recipe]:
    """Return the recipe class for ``spec``, or raise ConfigError naming the fix."""
    if spec in BUILTIN:
        target = BUILTIN[spec]
    elif ":" in spec:
        target = spec
    else:
        close = difflib.get_close_matches(spec, list(BUILTIN), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(
            f"unknown recipe {spec!r}; {hint}known: {', '.join(sorted(BUILTIN))} "
            "(or your own: recipe=my_pkg.module:Class or recipe=path/file.py:Class)"
        )
    module_part, _, cls_name = target.rpartition(":")
    if not module_part or not cls_name:
        raise ConfigError(f"cannot read recipe={spec!r}; expected module:Class or path/file.py:Class")
    if module_part.endswith(".py") or os.sep in module_part:
        module = _import_file(module_part)
    else:
        # `launch` is a console script: unlike `python -m`, the current directory is not on
        # sys.path, but users expect `recipe=my_pkg.module:Class` to find ./my_pkg.
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        module = _import_module(module_part)
    cls = getattr(module, cls_name, None)
    if cls is None:
        import inspect

        names = [
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and hasattr(v, "step") and v.__module__ == module.__name__
        ]
        hint = f"; classes there: {', '.join(names)}" if names else ""
        raise ConfigError(f"recipe module {module_part!r} has no class {cls_name!r}{hint}")
    check_contract(cls, spec)
    return cls


# How the runtime calls a recipe's methods (after ``self``), for the signature check.
CALLS = {
    "build_model": (),
    "build_datasets": (),
    "step": ("model", "batch"),
    "metrics": ("sums",),
    "collate": ("samples",),
}
CONTRACT_HINT = "see the recipe example in README.md (Your own recipe)"


def check_contract(cls: object, spec: str) -> None:
    """A recipe must be a class that implements the required methods with the signatures the
    runtime calls, and declares valid sections, defaults and head. Each problem is one
    ConfigError that names the missing or wrong piece."""
    import inspect

    from launcher.config import DataSection, ModelSection
    from recipes.base import REQUIRED_METHODS, Recipe

    if not inspect.isclass(cls):
        raise ConfigError(f"recipe {spec!r} is not a class; point recipe= at a Recipe subclass")
    missing = [
        m for m in REQUIRED_METHODS if not callable(getattr(cls, m, None)) or getattr(cls, m) is getattr(Recipe, m)
    ]
    if missing:
        raise ConfigError(
            f"recipe {spec!r} does not implement {', '.join(missing)}; "
            "subclass recipes.base.Recipe and define build_model(), build_datasets() and step(model, batch)"
        )
    for name, args in CALLS.items():
        if getattr(cls, name, None) is not None:
            _check_signature(cls, spec, name, args)
    for attr, base in (("Model", ModelSection), ("Data", DataSection)):
        value = getattr(cls, attr, base)
        if not (inspect.isclass(value) and issubclass(value, base)):
            raise ConfigError(
                f"recipe {spec!r}: {attr} must be a class that subclasses launcher.config.{base.__name__} "
                f"(got {value!r}); e.g. class My{attr}({base.__name__}): size: int = 32"
            )
    check = getattr(cls, "check", None)
    if check is not None and not _binds(check, 1):
        raise ConfigError(
            f"recipe {spec!r}: check must be a @classmethod check(cls, cfg) (it is called before any "
            f"instance exists); {CONTRACT_HINT}"
        )
    _check_defaults(cls, spec)
    head = getattr(cls, "head", [])
    if not isinstance(head, (list, tuple)) or not all(isinstance(h, str) for h in head):
        raise ConfigError(
            f"recipe {spec!r}: head must be a list of parameter-name prefixes such as ['fc.'] (got {head!r})"
        )
    units = getattr(cls, "shard_units", ())
    if not isinstance(units, (list, tuple)) or not all(isinstance(u, str) and u for u in units):
        raise ConfigError(
            f"recipe {spec!r}: shard_units must be a tuple of module names such as ('layer1', 'layer2') "
            f"or class names such as ('BasicBlock',) (got {units!r})"
        )
    _check_metric_names(cls, spec)
    if not issubclass(cls, Recipe):
        # Duck-typed recipes get the base class's defaults (metrics, check, sections); as found
        # in its __dict__, so that the classmethod `check` binds to the recipe, not to Recipe.
        for attr in (
            "Model",
            "Data",
            "defaults",
            "head",
            "description",
            "name",
            "check",
            "metrics",
            "metric_names",
            "shard_units",
        ):
            if not hasattr(cls, attr):
                setattr(cls, attr, Recipe.__dict__[attr])


def _check_metric_names(cls: type, spec: str) -> None:
    names = getattr(cls, "metric_names", None)
    if names is None:
        return
    ok = isinstance(names, (tuple, list)) and all(isinstance(n, str) and n for n in names)
    bad = [n for n in names if not _metric_name_ok(n)] if ok else []
    if not ok or bad or not names:
        shown = f"{bad[0]!r} in it" if bad else repr(names)
        raise ConfigError(
            f"recipe {spec!r}: metric_names must be a tuple of the names metrics() returns, such as "
            f"('loss', 'acc'), or 'val/<name>' for one only evaluation reports (got {shown})"
        )


def _metric_name_ok(name: str) -> bool:
    split, _, rest = name.rpartition("/")
    return bool(rest) and split in ("", "train", "val") and not name.startswith("/")


# What the loop logs besides the recipe's metrics (launcher/runtime/loop.py): not monitorable.
LOOP_LOGGED = ("lr", "grad_norm", "samples_per_sec", "epoch", "step")
LOOP_LOGGED_PREFIXES = ("time/", "memory/")


def reported_metrics(cls: object) -> set[str] | None:
    """``train/<name>`` and ``val/<name>`` for each of the recipe's ``metric_names`` (a name
    given with its split stays as it is); None when the recipe does not declare them."""
    names = getattr(cls, "metric_names", None)
    if names is None:
        return None
    out: set[str] = set()
    for name in names:
        out.update([name] if "/" in name else [f"train/{name}", f"val/{name}"])
    return out


def monitored(cfg) -> list[tuple[str, str]]:
    """(config key, metric name) of each monitor the loop will look up (launcher/runtime/monitor.py:
    Monitor.update): early stopping's, and the checkpoint's when keep_best or the plateau
    scheduler uses it."""
    es, c = cfg.train.early_stopping, cfg.checkpoint
    out = []
    from launcher.torch_classes import is_plateau

    if c.keep_best or (is_plateau(cfg.train.scheduler) and not es.monitor):
        out.append(("checkpoint.monitor", c.monitor))
    if es.monitor:
        out.append(("train.early_stopping.monitor", es.monitor))
    return out


def unknown_metric_message(key: str, name: str, available: list[str]) -> str:
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    loop = name in LOOP_LOGGED or name.startswith(LOOP_LOGGED_PREFIXES)
    logged = f" ({name} is logged by the loop, but only the recipe's metrics can be monitored)" if loop else ""
    return f"{key}={name} is not a metric this recipe reports{logged}; {hint}it reports: {', '.join(available)}"


def check_monitors(cls: object, cfg) -> None:
    """Refuse a monitor that names no metric the recipe declares (no torch: the parent's check)."""
    names = reported_metrics(cls)
    if names is None:
        return
    for key, name in monitored(cfg):
        if name not in names:
            raise ConfigError(unknown_metric_message(key, name, sorted(names)))


def check_classification(cls: object, cfg) -> None:
    """The keys that shape a classification loss apply to recipes that declare ``classification``
    (their step uses Recipe.classification_loss); elsewhere they would do nothing: refused."""
    t, d = cfg.train, cfg.data
    if getattr(cls, "classification", False):
        weights = getattr(d, "class_weights", None)
        if isinstance(weights, list):
            try:
                classes = cls(cfg).num_classes()
            except Exception:  # (a recipe that cannot tell without torch: the worker checks)
                classes = None
            if classes is not None and len(weights) != classes:
                raise ConfigError(
                    f"data.class_weights has {len(weights)} weights but recipe {cfg.recipe} has {classes} classes; "
                    f"give {classes}"
                )
        return
    given = [
        f"{k}={v}"
        for k, v, default in (
            ("train.loss", t.loss, "cross_entropy"),
            ("train.label_smoothing", t.label_smoothing, 0.0),
            ("data.class_weights", getattr(d, "class_weights", None), None),
            ("data.sampling", getattr(d, "sampling", "shuffle"), "shuffle"),
        )
        if v != default
    ]
    if given:
        raise ConfigError(
            f"{given[0]} applies to classification recipes (resnet_finetune, sequence, or yours with classification = "
            f"True and its loss from self.classification_loss); recipe {cfg.recipe} computes its own loss: drop it"
        )


class UnknownMetric(ConfigError):
    """A monitor that names no metric, found at the first evaluation (a recipe that declares no
    ``metric_names``): bad input (exit 2), but the run directory and its checkpoints stay."""

    exit_code = EXIT_BAD_INPUT


def _binds(func: object, n: int, with_self: bool = False) -> bool:
    """Whether ``func`` accepts ``n`` positional arguments (plus ``self`` when ``with_self``)."""
    import inspect

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):  # builtins without a signature: give them the benefit of the doubt
        return True
    try:
        sig.bind(*([None] * (n + with_self)))
    except TypeError:
        return False
    return True


def _check_signature(cls: type, spec: str, name: str, args: tuple[str, ...]) -> None:
    import inspect

    raw = inspect.getattr_static(cls, name)
    if isinstance(raw, (staticmethod, classmethod)):
        ok, shown = _binds(getattr(cls, name), len(args)), ", ".join(args)
    else:
        ok, shown = _binds(raw, len(args), with_self=True), ", ".join(("self", *args))
    if not ok:
        try:
            have = f"{name}{inspect.signature(getattr(cls, name))}"
        except (TypeError, ValueError):
            have = name
        raise ConfigError(f"recipe {spec!r}: {name} must take ({shown}), but it is {have}; {CONTRACT_HINT}")


def _check_defaults(cls: type, spec: str) -> None:
    from launcher.config import Config

    defaults = getattr(cls, "defaults", {}) or {}
    if not isinstance(defaults, dict):
        raise ConfigError(f"recipe {spec!r}: defaults must be a dict of sections, e.g. {{'train': {{'lr': 0.01}}}}")
    sections = [n for n in Config.model_fields if n != "recipe"]
    for key, value in defaults.items():
        if key not in sections:
            close = difflib.get_close_matches(str(key), sections, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"recipe {spec!r}: defaults has unknown section {key!r}; {hint}sections: {', '.join(sections)}"
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"recipe {spec!r}: defaults[{key!r}] must be a dict of keys, e.g. {{'{key}': {{...}}}} (got {value!r})"
            )


# --------------------------------------------------------------------------- checks in the worker
# What a recipe's methods return is checked when the worker first gets it, so that a broken user
# recipe fails with a line naming the method instead of a traceback deep in the runtime.


def check_model(model: object, spec: str):
    """``build_model()`` must return an ``nn.Module`` with something to train."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ConfigError(
            f"recipe {spec!r}: build_model() returned {type(model).__name__}; return a torch.nn.Module; {CONTRACT_HINT}"
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"recipe {spec!r}: the model from build_model() has no trainable parameters")
    return model


def check_datasets(result: object, spec: str) -> tuple:
    """``build_datasets()`` must return ``(train, val or None)`` or ``(train, val or None, test or
    None)``, map-style, train not empty. Returns the three (test None when not given)."""
    if not (isinstance(result, (tuple, list)) and len(result) in (2, 3)):
        raise ConfigError(
            f"recipe {spec!r}: build_datasets() returned {type(result).__name__}; return (train, val) or "
            f"(train, val, test) where val and test may be None; {CONTRACT_HINT}"
        )
    train, val, test = (*result, None) if len(result) == 2 else result
    for which, ds in (("train", train), ("val", val), ("test", test)):
        if ds is None and which != "train":
            continue
        if not (hasattr(ds, "__len__") and hasattr(ds, "__getitem__")):
            raise ConfigError(
                f"recipe {spec!r}: the {which} dataset from build_datasets() ({type(ds).__name__}) needs __len__ "
                "and __getitem__ (a map-style dataset, e.g. torch.utils.data.TensorDataset)"
            )
    if len(train) == 0:
        raise ConfigError(f"recipe {spec!r}: the train dataset from build_datasets() is empty")
    return train, val, test


def check_step_result(result: object, spec: str, training: bool) -> None:
    """``step()`` must return ``(loss, sums)``: a scalar loss (with a gradient when training)
    and a dict of summed values."""
    import torch

    where = f"recipe {spec!r}: step(model, batch)"
    if not (isinstance(result, (tuple, list)) and len(result) == 2):
        raise ConfigError(f"{where} returned {type(result).__name__}; return (loss, sums); {CONTRACT_HINT}")
    loss, sums = result
    if not (isinstance(loss, torch.Tensor) and loss.numel() == 1 and loss.is_floating_point()):
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigError(f"{where} returned a loss of {shape}; return one float tensor (the batch mean)")
    if training and not loss.requires_grad:
        raise ConfigError(f"{where} returned a loss without a gradient; compute it from the outputs of model(...)")
    if not isinstance(sums, dict):
        raise ConfigError(
            f"{where} returned sums of type {type(sums).__name__}; return a dict such as "
            "{'loss': loss.detach() * n, 'correct': ..., 'count': n}"
        )
    for key, value in sums.items():
        ok = isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.numel() == 1)
        if not (isinstance(key, str) and ok):
            shown = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else repr(value)
            raise ConfigError(f"{where} returned sums[{key!r}] = {shown}; every sum must be one number")


class _FirstStepCheck:
    """Stands in for ``recipe.step`` until the first call has been checked, then steps aside
    (the class's own method is used again: nothing is added to later steps)."""

    def __init__(self, recipe: object, spec: str) -> None:
        self.recipe, self.spec, self.step = recipe, spec, recipe.step

    def __call__(self, model, batch):
        import torch

        result = self.step(model, batch)
        check_step_result(result, self.spec, training=torch.is_grad_enabled())
        self.recipe.__dict__.pop("step", None)
        return result


def watch_first_step(recipe: object, spec: str) -> None:
    """Check what ``recipe.step`` returns on its first call (training or evaluation)."""
    if "step" not in vars(recipe):
        recipe.step = _FirstStepCheck(recipe, spec)


def static_description(target: str) -> str | None:
    """The literal ``description = "..."`` in the body of the class ``module:Class``, read from
    the module's source without importing it (no pydantic, no torch); None if there is none."""
    import ast

    module_part, _, cls_name = target.rpartition(":")
    try:
        spec = importlib.util.find_spec(module_part)
        source = Path(spec.origin).read_text() if spec and spec.origin and spec.origin.endswith(".py") else None
        tree = ast.parse(source) if source is not None else None
    except (ImportError, ValueError, OSError, SyntaxError):
        return None
    for node in tree.body if tree is not None else []:
        if isinstance(node, ast.ClassDef) and node.name == cls_name:
            for stmt in node.body:
                targets = stmt.targets if isinstance(stmt, ast.Assign) else []
                if any(isinstance(t, ast.Name) and t.id == "description" for t in targets):
                    value = stmt.value
                    ok = isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value
                    return value.value if ok else None
    return None


def describe(spec: str) -> str:
    """One line for ``launch --list``."""
    if spec in BUILTIN:
        fast = static_description(BUILTIN[spec])
        if fast:
            return fast
    try:
        cls = load_recipe(spec)
    except ConfigError as e:
        return f"(cannot load: {e})"
    if cls.description:
        return cls.description
    doc = (cls.__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
