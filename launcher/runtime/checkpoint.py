"""Atomic checkpoints, finding the newest complete one, retention, and safe loading.

A checkpoint is a directory ``checkpoints/step-N/``::

    model.safetensors   unwrapped model weights (no ``module.``/``_orig_mod.`` prefixes)
    state.pt            optimizer, scheduler, scaler, progress, early-stopping/best state
    rng-rank<R>.pt      RNG states of rank R (python, numpy, torch, CUDA)
    meta.json           step, epoch and metrics, for retention and for humans
    config.yaml         the resolved config it was trained with
    COMPLETE            written last: only directories with this marker are ever loaded

Writing goes to a hidden temporary directory, every file is fsynced, the directory is renamed
to ``step-N`` and only then the marker is written. A crash at any instant leaves either a
complete checkpoint or something that resume ignores (and the next save cleans up).
Loading uses safetensors and ``torch.load(weights_only=True)``: a checkpoint cannot run code.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from launcher.errors import LaunchError
from launcher.rundir import CHECKPOINT_PREFIX, COMPLETE_MARKER, RunDir

# Names of the entries of state.pt (a checkpoint format contract).
K_FORMAT = "format_version"
K_OPTIMIZER = "optimizer"
K_SCHEDULER = "scheduler"
K_SCALER = "scaler"
K_PROGRESS = "progress"
K_TRACKERS = "trackers"
K_LOGGERS = "loggers"
K_RECIPE = "recipe"
FORMAT_VERSION = 1

MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
CONFIG_FILE = "config.yaml"
ENGINE_DIR = "deepspeed"  # engine-owned state (DeepSpeed), written by every rank


def rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


class CorruptCheckpoint(Exception):
    """A checkpoint that cannot be read (truncated, partial, garbage)."""


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes (DataParallel/DDP ``module.``, torch.compile ``_orig_mod.``)."""
    out = {}
    for k, v in state.items():
        while True:
            for prefix in ("module.", "_orig_mod."):
                if k.startswith(prefix):
                    k = k[len(prefix) :]
                    break
            else:
                break
        out[k] = v
    return out


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def safe_torch_load(path: Path | str) -> Any:
    """``torch.load`` that never executes code from the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            raise LaunchError(
                f"{path} contains pickled code or objects, not just tensors; refused to load it "
                "(only load checkpoints you trust, saved by this tool or as a plain state_dict)"
            ) from None
        raise CorruptCheckpoint(f"{path}: {e}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def load_state_file(path: str) -> dict[str, torch.Tensor]:
    """A weights file given by the user: safetensors, or a torch state_dict (safely)."""
    p = Path(path)
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            state = safe_torch_load(p)
    except CorruptCheckpoint as e:
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


def copy_to_cpu(obj: Any, reuse: Any = None) -> Any:
    """A deep copy with every tensor copied to CPU memory (for writing off the training path).

    ``reuse`` is an earlier copy of the same structure: tensors of equal shape and dtype are
    copied into it instead of into fresh memory. Fresh memory costs page faults -- about as
    much as the copy itself -- so steady-state saves reuse one staging buffer.
    """
    if isinstance(obj, torch.Tensor):
        src = obj.detach()
        if (
            isinstance(reuse, torch.Tensor)
            and reuse.shape == src.shape
            and reuse.dtype == src.dtype
            and reuse.is_contiguous()
        ):
            return reuse.copy_(src)
        return src.to("cpu", copy=True)
    if isinstance(obj, dict):
        reuse = reuse if isinstance(reuse, dict) else {}
        return {k: copy_to_cpu(v, reuse.get(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        reuse = reuse if isinstance(reuse, (list, tuple)) and len(reuse) == len(obj) else [None] * len(obj)
        return type(obj)(copy_to_cpu(v, r) for v, r in zip(obj, reuse, strict=True))
    return obj


class CheckpointManager:
    """Saves and finds checkpoints of one run directory. Only rank 0 writes shared files;
    every rank writes its own RNG file.

    With ``async_write`` the state is copied to CPU memory on the training thread and written
    by a background thread; at most one save is in flight (a new save first waits for the
    previous one), and :meth:`wait` blocks until it is on disk (final save, stop requests).
    An error of a background write is raised by the next ``save`` or ``wait``.
    """

    def __init__(
        self,
        run_dir: RunDir,
        keep_last: int,
        keep_best: int,
        monitor: str,
        mode: str,
        rank: int = 0,
        async_write: bool = False,
    ):
        self.root = run_dir.checkpoints
        self.run_dir = run_dir
        self.keep_last, self.keep_best = keep_last, keep_best
        self.monitor, self.mode = monitor, mode
        self.rank = rank
        self.async_write = async_write
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._staging: Any = None  # CPU copy of the last async save, reused by the next

    # ------------------------------------------------------------------ writing
    def save(
        self,
        step: int,
        model_state: dict[str, torch.Tensor],
        state: dict[str, Any],
        rngs: list[dict[str, Any]],
        meta: dict[str, Any],
        config_text: str,
        engine_dir: Path | None = None,
    ) -> Path:
        """Write ``step-N`` atomically (in the background with ``async_write``); returns its path.

        ``rngs`` holds every rank's RNG states (gathered on rank 0), written as ``rng-rank<R>.pt``.

        Raises LaunchError if the disk refuses."""
        self.wait()
        final = self.root / f"{CHECKPOINT_PREFIX}{step}"
        if self.is_complete(step):
            return final  # already saved at this step (e.g. epoch end == every_steps)
        if not self.async_write:
            self._write(step, model_state, state, rngs, meta, config_text, engine_dir)
            return final
        # safe to overwrite: wait() above guarantees the previous write has finished
        payload = self._staging = copy_to_cpu((model_state, state, rngs), self._staging)
        self._thread = threading.Thread(
            target=self._write_in_background, args=(step, *payload, meta, config_text), name=f"checkpoint-{step}"
        )
        self._thread.start()
        return final

    def is_complete(self, step: int) -> bool:
        return (self.root / f"{CHECKPOINT_PREFIX}{step}" / COMPLETE_MARKER).is_file()

    def wait(self) -> None:
        """Block until the save in flight (if any) is complete; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _write_in_background(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as e:  # handed to the training thread by wait()
            self._error = e

    def _write(self, step, model_state, state, rngs, meta, config_text, engine_dir=None) -> None:
        final = self.root / f"{CHECKPOINT_PREFIX}{step}"
        tmp = self.root / f".tmp-{CHECKPOINT_PREFIX}{step}-{uuid.uuid4().hex[:8]}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp.mkdir()
            tensors = {k: v.detach().to("cpu").contiguous() for k, v in strip_prefixes(model_state).items()}
            save_file(tensors, str(tmp / MODEL_FILE))
            torch.save({K_FORMAT: FORMAT_VERSION, **state}, tmp / STATE_FILE)
            for rank, rng in enumerate(rngs):
                torch.save(rng, tmp / rng_file(rank))
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=float))
            (tmp / CONFIG_FILE).write_text(config_text)
            if engine_dir is not None:
                os.rename(engine_dir, tmp / ENGINE_DIR)
            for f in tmp.rglob("*"):
                if f.is_file():
                    _fsync_file(f)
                else:
                    _fsync_dir(f)
            _fsync_dir(tmp)
            if final.exists():  # an incomplete leftover from a crash: never loaded, safe to replace
                shutil.rmtree(final)
            os.rename(tmp, final)
            _fsync_dir(self.root)
            marker = final / COMPLETE_MARKER
            marker.write_text(f"{step}\n")
            _fsync_file(marker)
            _fsync_dir(final)
        except (OSError, RuntimeError, SafetensorError) as e:  # ENOSPC, EFBIG, EACCES... in any writer
            shutil.rmtree(tmp, ignore_errors=True)
            if engine_dir is not None:
                shutil.rmtree(engine_dir, ignore_errors=True)
            reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
            raise LaunchError(
                f"cannot write checkpoint step-{step} in {self.root}: {reason}; "
                "free disk space or fix permissions, then run the same command again to resume "
                "(earlier checkpoints are intact)"
            ) from None
        self._retain(final)

    def _retain(self, newest: Path) -> None:
        """Remove what retention does not keep -- only after ``newest`` is complete."""
        complete = self.run_dir.complete_checkpoints()
        keep = set(complete[: self.keep_last]) | {newest}
        if self.keep_best:
            scored = []
            for p in complete:
                value = self.read_meta(p).get("metrics", {}).get(self.monitor)
                if isinstance(value, (int, float)):
                    scored.append((value, p))
            scored.sort(key=lambda vp: vp[0], reverse=self.mode == "max")
            keep |= {p for _, p in scored[: self.keep_best]}
        for p in complete:
            if p not in keep:
                shutil.rmtree(p, ignore_errors=True)
        self.clean_partial()

    def clean_partial(self) -> None:
        """Remove temporary and incomplete directories left by a crash."""
        if not self.root.is_dir():
            return
        for p in self.root.iterdir():
            if p.name.startswith(".tmp-") or (
                p.name.startswith(CHECKPOINT_PREFIX) and p.is_dir() and not (p / COMPLETE_MARKER).exists()
            ):
                shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    @staticmethod
    def read_meta(path: Path) -> dict:
        try:
            return json.loads((path / META_FILE).read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def load(path: Path, rank: int = 0) -> dict[str, Any]:
        """Load one checkpoint directory. Raises CorruptCheckpoint or LaunchError (unsafe file)."""
        if not (path / COMPLETE_MARKER).is_file():
            raise CorruptCheckpoint(f"{path} is incomplete (no {COMPLETE_MARKER} marker)")
        try:
            model = load_file(str(path / MODEL_FILE))
        except Exception as e:
            raise CorruptCheckpoint(f"{path / MODEL_FILE}: {e}") from None
        state = safe_torch_load(path / STATE_FILE)
        rng_path = path / rng_file(rank)
        rng = safe_torch_load(rng_path) if rng_path.is_file() else None
        if not isinstance(state, dict) or state.get(K_FORMAT) != FORMAT_VERSION:
            raise CorruptCheckpoint(f"{path / STATE_FILE} is not a checkpoint state of this tool")
        return {"model": model, "state": state, "rng": rng, "path": path}

    def load_latest(self, warn=lambda msg: print(msg, file=sys.stderr)) -> dict[str, Any] | None:
        """Newest complete, readable checkpoint; unreadable ones are skipped with a warning."""
        for path in self.run_dir.complete_checkpoints():
            try:
                return self.load(path, self.rank)
            except CorruptCheckpoint as e:
                warn(f"warning: skipping unreadable checkpoint {path.name} ({e}); trying the previous one")
        return None
