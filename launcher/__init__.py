"""Distributed PyTorch training launcher.

The modules directly in this package form the *parent side* (CLI, config, planning, command
building). They never import torch, so ``launch --help``, ``--list``, ``--dry-run`` and every
config error answer instantly. Everything that needs torch lives in :mod:`launcher.runtime`
and is imported only inside worker processes.
"""

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "predict", "load_model", "LaunchError", "ConfigError"]


def __getattr__(name: str):
    """The Python API (launcher/api.py), imported on first use: ``import launcher`` stays light."""
    if name in ("train", "evaluate", "predict", "load_model"):
        from launcher import api

        return getattr(api, name)
    if name in ("LaunchError", "ConfigError"):
        from launcher import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'launcher' has no attribute {name!r}")


def _working_dir_last() -> None:
    """``python -m launcher...`` (how `launch` starts the prewarmed interpreter, torchrun's agent
    and the workers) puts the working directory first on ``sys.path``, so a ``recipes/`` (or any
    folder named like a package we import) there would shadow ours. It moves to the end instead:
    the user's own modules there stay importable (``recipe=my_pkg.module:Class``), after ours."""
    import os
    import sys

    if not sys.path or sys.path[0] not in ("", "."):
        try:
            if not sys.path or os.path.realpath(sys.path[0]) != os.path.realpath(os.getcwd()):
                return
        except OSError:
            return
    sys.path.append(sys.path.pop(0))


_working_dir_last()
