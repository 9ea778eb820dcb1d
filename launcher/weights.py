"""Reading weights files safely: a small public helper for recipes and the runtime (imports torch).

A file given by the user (``model.weights=``, ``model.init_from=``) or found in a checkpoint is
read with safetensors or ``torch.load(weights_only=True)``: it cannot run code. Recipes use
:func:`load_state_file` (recipes do not import :mod:`launcher.runtime`); the runtime's
checkpoints use :func:`safe_torch_load` too.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from launcher.errors import LaunchError, first_line

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile


class DamagedFile(Exception):
    """A file that cannot be read: truncated, damaged or not of its format."""


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DataParallel/DDP ``module.``, torch.compile ``_orig_mod.``)."""
    out = {}
    for k, v in state.items():
        while True:
            for prefix in WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix) :]
                    break
            else:
                break
        out[k] = v
    return out


def safe_torch_load(path: Path | str, map_location: Any = "cpu", allowed: Iterable[type] = ()) -> Any:
    """``torch.load`` that never executes code from the file (``allowed``: the classes, beyond
    tensors and plain containers, that it may rebuild -- DeepSpeed's files hold a few).

    Raises LaunchError (the file holds pickled code or objects) or DamagedFile."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise LaunchError(
                f"{path} contains pickled code or objects, not just tensors; refused to load it "
                "(only load checkpoints you trust, saved by this tool or as a plain state_dict)"
            ) from None
        raise DamagedFile(f"{path}: {e}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise DamagedFile(f"{path}: {first_line(e)}") from None


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    """A weights file given by the user: safetensors, or a torch state_dict (safely), its
    wrapper prefixes removed. Raises LaunchError (one line) for anything else."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = safe_torch_load(p)
    except DamagedFile as e:
        raise LaunchError(f"cannot read weights file {path} ({e}); pass a state_dict saved with torch.save") from None
    except Exception as e:  # safetensors header errors
        raise LaunchError(f"cannot read weights file {path} ({type(e).__name__}: {e})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LaunchError(
            f"weights file {path} does not hold a state_dict (name -> tensor); pass one saved with torch.save(model.state_dict())"
        )
    return strip_prefixes(state)
