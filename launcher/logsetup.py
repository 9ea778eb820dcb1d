"""Logging set-up shared by the parent and the workers: where backend files go, and the checks
that run before anything starts (no torch, no wandb import: ``importlib.util.find_spec`` only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from launcher.errors import ConfigError
from launcher.rundir import unwritable_base

# backend -> (module it needs, pip extra of this project that installs it)
BACKEND_PACKAGES = {"wandb": ("wandb", "wandb"), "tensorboard": ("tensorboard", "tensorboard")}


def missing_package(backend: str) -> ConfigError:
    module, extra = BACKEND_PACKAGES[backend]
    return ConfigError(
        f"log.backends includes {backend} but the {module} package is not installed; "
        f"pip install 'launcher[{extra}]' (or pip install {module}), or drop {backend} from log.backends"
    )


def log_dir(cfg, run_path: Path) -> Path:
    """Where ``tensorboard/`` and ``wandb/`` of a run go: the run directory, or
    ``<log.dir>/<recipe>/<run.name>/`` (so one ``tensorboard --logdir <log.dir>`` shows every run)."""
    if cfg.log.dir is None:
        return Path(run_path)
    return Path(cfg.log.dir).expanduser() / Path(run_path).parent.name / Path(run_path).name


def check_logging(cfg, run_path: Path) -> None:
    """Refuse, before anything starts, backends whose package is missing and an unwritable log.dir."""
    for backend in dict.fromkeys(cfg.log.backends):
        if backend in BACKEND_PACKAGES and importlib.util.find_spec(BACKEND_PACKAGES[backend][0]) is None:
            raise missing_package(backend)
    if cfg.log.dir is None:
        return  # the run directory: checked with it
    base = unwritable_base(log_dir(cfg, run_path))
    if base is not None:
        raise ConfigError(
            f"log.dir={cfg.log.dir} is not writable ({base} is not a writable directory); "
            "pass log.dir=<a writable directory>, or log.dir=null for the run directory"
        )
