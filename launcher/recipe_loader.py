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

from launcher.errors import ConfigError
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
    spec.loader.exec_module(module)
    return module


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
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as e:
            raise ConfigError(
                f"cannot import recipe module {module_part!r} ({e}); install it or add its folder to PYTHONPATH"
            ) from None
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


def check_contract(cls: object, spec: str) -> None:
    """A recipe must be a class that implements the required methods and declares valid sections."""
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
    if not issubclass(getattr(cls, "Model", ModelSection), ModelSection):
        raise ConfigError(f"recipe {spec!r}: Model must subclass launcher.config.ModelSection")
    if not issubclass(getattr(cls, "Data", DataSection), DataSection):
        raise ConfigError(f"recipe {spec!r}: Data must subclass launcher.config.DataSection")
    if not issubclass(cls, Recipe):
        # Duck-typed recipes get the base class's defaults (metrics, check, sections).
        for attr in ("Model", "Data", "defaults", "head", "description", "name", "check", "metrics"):
            if not hasattr(cls, attr):
                setattr(cls, attr, getattr(Recipe, attr))


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
