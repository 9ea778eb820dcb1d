"""The run directory: the one hand-off between the parent, the workers and requeued jobs.

Layout (a contract users script against)::

    <run.output_dir>/<recipe>/<run.name>/
        config.yaml          resolved config (written once by the parent, read by every worker)
        metrics.jsonl        one JSON object per log event
        checkpoints/step-N/  complete checkpoints carry a COMPLETE marker
        model.safetensors    final weights of the unwrapped model
        summary.json         status, steps, best/final metrics, wall time, totals (throughput, memory)
        wandb_id             the wandb run id (log.backends with wandb): every attempt continues that run
        tensorboard/ wandb/  backend files (or under log.dir)
        report/              `launch report` plots and summary table
        logs/                rank-R.log (ranks > 0), slurm-JOBID.out (--slurm)
        submit.sbatch        --slurm: the batch script; slurm_jobs.json: the job ids
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher import yamlio
from launcher.config import (
    OPERATIONAL_KEYS,
    Config,
    _is_under,
    config_hash,
    diff_configs,
    split_diff,
    to_plain,
    to_yaml,
)
from launcher.errors import ConfigError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.safetensors"
CHECKPOINTS_DIR = "checkpoints"
COMPLETE_MARKER = "COMPLETE"
WANDB_ID_FILE = "wandb_id"
REPORT_DIR = "report"
EXIT_CODE_FILE = ".exit_code"  # bad input found by a worker, for `launch` behind a multi-process launcher
CHECKPOINT_PREFIX = "step-"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def model(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    def complete_checkpoints(self) -> list[Path]:
        """Complete checkpoints, newest first."""
        if not self.checkpoints.is_dir():
            return []
        found = []
        for p in self.checkpoints.iterdir():
            m = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", p.name)
            if m and (p / COMPLETE_MARKER).is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found, reverse=True)]

    def read_summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.summary.read_text())
        except (OSError, ValueError):
            return None


def _slug(overrides: list[tuple[str, str]]) -> str:
    parts = []
    for key, raw in overrides:
        if key in ("recipe", "config") or _is_under(key, OPERATIONAL_KEYS):
            continue
        leaf = key.rsplit(".", 1)[-1]
        parts.append(f"{leaf}-{raw}")
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts)).strip("_.")
    return slug[:60] or "default"


def default_run_name(cfg: Config, overrides: list[tuple[str, str]]) -> str:
    """Deterministic: the same command maps to the same directory, a different config to another.

    Readable part from the command-line overrides, plus a hash of the resolved config without
    operational keys (so ``config=FILE`` layers and recipe defaults count too).
    """
    return f"{_slug(overrides)}-{config_hash(cfg)}"


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (never a half-written file)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def ensure_writable_dir(directory: Path, what: str, fix: str) -> None:
    """Create ``directory`` and prove a file can be written in it (permissions alone do not tell,
    e.g. for root or read-only mounts); else one LaunchError line naming ``what`` and ``fix``."""
    from launcher.errors import LaunchError

    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}-{time.time_ns()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise LaunchError(f"cannot write {what} to {directory} ({e.strerror or e}); {fix}") from None


def _nearest_existing(path: Path) -> Path:
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


@dataclass
class Prepared:
    """What the parent found in the run directory."""

    run_dir: RunDir
    state: str  # "new" | "resume" | "completed"
    safe_changes: dict[str, tuple[Any, Any]]
    checkpoints: int


def inspect_run_dir(cfg: Config, path: Path) -> Prepared:
    """Decide what running ``cfg`` in ``path`` means, without writing anything.

    Raises ConfigError when the directory holds something we must not touch.
    """
    rd = RunDir(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run directory {path} exists and is not a directory; pass another run.name=...")
    writable_base = _nearest_existing(path)
    if not writable_base.is_dir() or not os.access(writable_base, os.W_OK | os.X_OK):
        raise ConfigError(
            f"cannot write to {writable_base} (needed for {path}); pass run.output_dir=<a writable directory>"
        )
    if not path.exists() or not any(path.iterdir()):
        return Prepared(rd, "new", {}, 0)
    if not rd.config.is_file():
        raise ConfigError(
            f"{path} exists but is not a run directory (no {CONFIG_FILE}); pass another run.name=... or remove it"
        )
    try:
        old = yamlio.load(rd.config.read_text()) or {}
    except (OSError, yamlio.YAMLError):
        raise ConfigError(f"{rd.config} is unreadable; pass another run.name=... or remove {path}") from None
    new = to_plain(cfg)
    unsafe, safe = split_diff(diff_configs(old, new))
    if unsafe:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(unsafe.items())[:4])
        more = f" and {len(unsafe) - 4} more" if len(unsafe) > 4 else ""
        raise ConfigError(
            f"{path} holds a run with a different config ({shown}{more}); "
            "pass another run.name=... to start a new run, or remove that directory to start over"
        )
    n_ckpt = len(rd.complete_checkpoints())
    resume = cfg.run.resume
    if resume == "never" and (n_ckpt or rd.checkpoints.is_dir() and any(rd.checkpoints.iterdir())):
        raise ConfigError(
            f"{path} already has checkpoints and run.resume=never; use run.resume=auto to continue it, "
            "or pass another run.name=... for a new run"
        )
    summary = rd.read_summary() or {}
    extends = any(k in safe for k in ("train.epochs", "train.max_steps"))
    if summary.get("status") == "completed" and not extends:
        return Prepared(rd, "completed", safe, n_ckpt)
    return Prepared(rd, "resume", safe, n_ckpt)


def global_batch_line(cfg: Config, processes: int) -> str:
    t = cfg.train
    return (
        f"global batch: {t.batch_size * processes * t.grad_accum_steps} = {t.batch_size} per process"
        f" x {processes} process(es) x {t.grad_accum_steps} accumulation step(s)"
    )


def write_config(prepared: Prepared, cfg: Config, processes: int = 1) -> None:
    """Create the run directory and write the resolved config (atomically)."""
    path = prepared.run_dir.path
    header = f"# written by `launch`; read by every worker\n# {global_batch_line(cfg, processes)}\n"
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(prepared.run_dir.config, header + to_yaml(cfg))
    except OSError as e:
        raise ConfigError(
            f"cannot write the run directory {path}: {e.strerror}; pass run.output_dir=<a writable directory>"
        ) from None
