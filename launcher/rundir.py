"""The run directory: the one hand-off between the parent, the workers and requeued jobs.

Layout (a contract users script against; every name below is a constant of this module)::

    <run.output_dir>/<recipe>/<run.name>/
        config.yaml          resolved config (written once by the parent, read by every worker)
        plan.json            the resolved plan: strategy, device, processes (the workers do not resolve again)
        metrics.jsonl        one JSON object per log event (:func:`read_events`)
        checkpoints/step-N/  complete checkpoints carry a COMPLETE marker (contents below)
        model.safetensors    final weights of the unwrapped model
        summary.json         status, steps, best/final metrics, wall time, totals (throughput, memory)
        wandb_id             the wandb run id (log.backends with wandb): every attempt continues that run
        tensorboard/ wandb/  backend files (or under log.dir)
        report/              `launch report` plots and summary table
        logs/                rank-R.log (ranks > 0), slurm-JOBID.out (--slurm)
        submit.sbatch        --slurm: the batch script; slurm_jobs.json: the job ids
        .cancelled           --slurm: written by `launch cancel` (the job does not requeue itself)
        .lock                the owner of the run directory (launcher/runlock.py; helper files .lock.*)

    checkpoints/step-N/      (launcher/runtime/checkpoint.py writes and reads it)
        model.safetensors    unwrapped model weights (none with --strategy fsdp: dcp/ holds them)
        state.pt             optimizer, scheduler, scaler, progress, trackers, recipe
        rng-rank<R>.pt       RNG states of rank R
        meta.json            step, epoch and metrics
        config.yaml          the resolved config it was trained with
        deepspeed/engine/    DeepSpeed's engine state (--strategy deepspeed), every rank's share
        dcp/                 FSDP's sharded model and optimizer (--strategy fsdp)
        COMPLETE             written last (via COMPLETE.tmp): the manifest
    checkpoints/.tmp-*       a checkpoint being written (removed after a crash)
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

from launcher import torch_classes, yamlio
from launcher.config import (
    OPERATIONAL_KEYS,
    SECRET_KEY,
    Config,
    _is_under,
    config_hash,
    diff_configs,
    flatten,
    split_diff,
    to_plain,
    to_yaml,
)
from launcher.errors import ConfigError

# ---- names of the run directory
CONFIG_FILE = "config.yaml"
PLAN_FILE = "plan.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_FILE = "model.safetensors"
CHECKPOINTS_DIR = "checkpoints"
WANDB_ID_FILE = "wandb_id"
TENSORBOARD_DIR = "tensorboard"  # (under log.dir when it is set: launcher/logsetup.py)
WANDB_DIR = "wandb"
REPORT_DIR = "report"
LOGS_DIR = "logs"
SLURM_SCRIPT_FILE = "submit.sbatch"
SLURM_JOBS_FILE = "slurm_jobs.json"
SLURM_LOG_PATTERN = f"{LOGS_DIR}/slurm-%j.out"  # (sbatch --output: %j is the job id)
SLURM_CANCELLED_MARKER = ".cancelled"  # written by `launch cancel`: the job must not requeue itself
LOCK_FILE = ".lock"  # every helper file of launcher/runlock.py starts with ".lock." (a new run all the same)
LOCK_BREAK_FILE = ".lock.break"  # held for the milliseconds a stale lock is being removed


def rank_log_file(rank: int) -> str:
    """The log of rank ``rank`` (> 0) under ``logs/``."""
    return f"rank-{rank}.log"


# ---- names of a checkpoint: checkpoints/step-N/ (and the CONFIG_FILE and MODEL_FILE above)
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_TMP_PREFIX = ".tmp-"  # a directory being written: never loaded, removed by the next save
COMPLETE_MARKER = "COMPLETE"


def checkpoint_step(path: Path) -> int:
    """N of a ``checkpoints/step-N`` directory."""
    return int(path.name[len(CHECKPOINT_PREFIX) :])


COMPLETE_MARKER_TMP = COMPLETE_MARKER + ".tmp"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
ENGINE_DIR = "deepspeed"  # engine-owned state (DeepSpeed), written by every rank
ENGINE_TAG = "engine"  # DeepSpeed's checkpoint tag: its files are under deepspeed/engine/
DCP_DIR = "dcp"  # FSDP's shards (torch.distributed.checkpoint), written by every rank
SHARD_DIRS = (ENGINE_DIR, DCP_DIR)  # where every rank writes its share (a strategy's ``shard_dir``)
RNG_FILE_RE = re.compile(r"rng-rank(\d+)\.pt")


def rng_file(rank: int) -> str:
    """The RNG states of rank ``rank`` in a checkpoint (matches :data:`RNG_FILE_RE`)."""
    return f"rng-rank{rank}.pt"


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
        """summary.json, or None when it is missing or damaged (not a JSON object)."""
        try:
            summary = json.loads(self.summary.read_text())
        except (OSError, ValueError):  # (UnicodeDecodeError is a ValueError)
            return None
        return summary if isinstance(summary, dict) else None


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a ``metrics.jsonl``, in order: each line that holds a JSON object (a
    half-written last line of a running run and damaged lines are skipped); [] when the file
    is missing or unreadable."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def _slug(overrides: list[tuple[str, str]]) -> str:
    parts = []
    for key, raw in overrides:
        if key in ("recipe", "config") or _is_under(key, OPERATIONAL_KEYS) or SECRET_KEY.search(key):
            continue  # (a credential's value never enters a name: directories, wandb, Slurm's JobName)
        leaf = key.rsplit(".", 1)[-1]
        parts.append(f"{leaf}-{raw}")
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(parts)).strip("_.")
    return slug[:60] or "default"


def default_run_name(cfg: Config, overrides: list[tuple[str, str]], config_names: list[str] | None = None) -> str:
    """Deterministic: the same command maps to the same directory, a different config to another.

    Readable part from the config files' names and the command-line overrides, plus a hash of the
    resolved config without operational keys (so ``config=FILE`` layers and recipe defaults count too).
    """
    slug = _slug(overrides)
    if config_names:
        names = re.sub(r"[^A-Za-z0-9.+-]+", "_", "_".join(config_names)).strip("_.")
        slug = f"{names}_{slug}"[:60].strip("_.") if slug != "default" else names[:60] or slug
    return f"{slug}-{config_hash(cfg)}"


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:  # (reading it does not change it, unlike os.umask)
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(private: bool = False) -> int:
    """The mode of every file in a run directory: what the user's umask gives a new file (0644
    under umask 022), like any file they create; ``private`` (0600) for the files that hold the
    config verbatim when it holds a credential (:func:`holds_secrets`)."""
    return 0o600 if private else 0o666 & ~_umask()


def holds_secrets(tree: dict) -> bool:
    """Does the config (plain tree) set a key that looks like a credential to a non-empty value?"""
    return any(SECRET_KEY.search(k) and v not in (None, "", [], {}) for k, v in flatten(tree).items())


def write_atomic(path: Path, text: str, private: bool = False) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename (never a half-written file).
    The file gets :func:`file_mode` (a temporary file alone would be 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode(private))
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


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first (what creating it
    would make, for :func:`remove_empty` when the command that made them is refused)."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_empty(dirs: list[Path]) -> None:
    """Remove ``dirs`` (deepest first) while they are empty; stop at the first that is not."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            return


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


def unwritable_base(path: Path) -> Path | None:
    """None where ``path`` can be created: its nearest existing parent (or itself) is a
    directory this process may write in; else that parent, for the error message."""
    base = path.absolute()
    while not base.exists() and base != base.parent:
        base = base.parent
    return None if base.is_dir() and os.access(base, os.W_OK | os.X_OK) else base


def config_changes(old: dict, cfg: Config) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """(changes that alter results, changes safe for an existing run) from the config ``old`` (a
    run's or a checkpoint's config.yaml, plain) to ``cfg``: what decides whether a run directory or
    a checkpoint may continue under ``cfg`` (the parent and the worker ask the same question)."""

    def nameless(tree: dict) -> dict:  # (a run's name is not part of its config)
        run = tree.get("run")
        return {**tree, "run": {k: v for k, v in run.items() if k != "name"}} if isinstance(run, dict) else tree

    return split_diff(diff_configs(nameless(old), nameless(to_plain(cfg))))


def shown_changes(changes: dict[str, tuple[Any, Any]], limit: int = 4) -> str:
    """``key: old -> new`` of the first ``limit`` changes, and how many more."""
    shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changes.items())[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


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
    base = unwritable_base(path)
    if base is not None:
        raise ConfigError(f"cannot write to {base} (needed for {path}); pass run.output_dir=<a writable directory>")
    # (only the lock launcher/runlock.py takes in it, which starts with .lock: still a new run)
    if not path.exists() or all(p.name.startswith(LOCK_FILE) for p in path.iterdir()):
        return Prepared(rd, "new", {}, 0)
    if not rd.config.is_file():
        raise ConfigError(
            f"{path} exists but is not a run directory (no {CONFIG_FILE}); pass another run.name=... or remove it"
        )
    try:
        old = yamlio.load(rd.config.read_text()) or {}
    except (OSError, yamlio.YAMLError):
        raise ConfigError(f"{rd.config} is unreadable; pass another run.name=... or remove {path}") from None
    unsafe, safe = config_changes(old, cfg)
    if unsafe:
        raise ConfigError(
            f"{path} holds a run with a different config ({shown_changes(unsafe)}); "
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
    if n_ckpt or summary.get("status") == "completed":
        _check_schedule_length(cfg, rd, safe)
    extends = any(k in safe for k in ("train.epochs", "train.max_steps"))
    if summary.get("status") == "completed" and not extends:
        return Prepared(rd, "completed", safe, n_ckpt)
    return Prepared(rd, "resume", safe, n_ckpt)


def _check_schedule_length(cfg: Config, rd: RunDir, safe: dict[str, tuple[Any, Any]]) -> None:
    """A run with a length-dependent schedule keeps its length: refuse new train.epochs /
    train.max_steps that change its total steps (the worker checks again, exactly, against the
    checkpoint's schedule: the total also depends on the process count)."""
    t = cfg.train
    changed = {k: safe[k] for k in ("train.epochs", "train.max_steps") if k in safe}
    if not changed or not torch_classes.length_dependent(t.scheduler, t.scheduler_args):
        return
    ckpts = rd.complete_checkpoints()
    meta: dict[str, Any] = {}
    if ckpts:
        try:
            meta = json.loads((ckpts[0] / META_FILE).read_text())
        except (OSError, ValueError):
            meta = {}
    planned, per_epoch = meta.get("total_steps"), meta.get("steps_per_epoch")
    if isinstance(planned, int) and isinstance(per_epoch, int):
        now = per_epoch * t.epochs if not t.max_steps else min(per_epoch * t.epochs, t.max_steps)
        if now == planned:
            return  # e.g. a train.max_steps beyond the epochs' steps: the same run
        longer = now > planned
    else:  # (no step counts in the checkpoint: judged by the keys)
        old_epochs, new_epochs = changed.get("train.epochs", (t.epochs, t.epochs))
        old_max, new_max = changed.get("train.max_steps", (t.max_steps, t.max_steps))
        longer = new_epochs > old_epochs or (old_max is not None and (new_max is None or new_max > old_max))

    def plain(v: Any) -> str:
        return "null" if v is None else str(v)

    was = []
    if "train.epochs" in changed:
        was.append(f"{changed['train.epochs'][0]} epoch(s)")
    if "train.max_steps" in changed:
        was.append(f"train.max_steps={plain(changed['train.max_steps'][0])}")
    steps = f" ({planned} optimizer steps)" if isinstance(planned, int) else ""
    new = " ".join(f"{k}={plain(b)}" for k, (_, b) in changed.items())
    keep = " ".join(f"{k}={plain(a)}" for k, (a, _) in changed.items())
    raise ConfigError(
        f"{rd.path} was planned as {' and '.join(was)}{steps} with train.scheduler={t.scheduler}, whose shape "
        f"depends on the run's length; to train {'longer' if longer else 'for fewer steps'}, start a new run "
        f"from its weights: run.name={rd.path.name}-2 model.init_from={rd.path} {new} (or keep {keep})"
    )


def check_paths(cfg: Config) -> None:
    """Paths the worker would only find missing after starting: checked here, one line each."""
    resume = cfg.run.resume
    if resume not in ("auto", "never"):
        p = Path(resume)
        if not p.exists():
            raise ConfigError(
                f"run.resume={resume} not found; pass a checkpoints/step-N directory (or run.resume=auto)"
            )
        if not (p / COMPLETE_MARKER).is_file():
            raise ConfigError(
                f"run.resume={resume} is not a complete, readable checkpoint (no {COMPLETE_MARKER} marker); "
                "pass a checkpoints/step-N directory that has one"
            )
    init = getattr(cfg.model, "init_from", None)
    if init and not Path(init).exists():
        raise ConfigError(f"model.init_from={init} not found; point it at a run directory, checkpoint or weights file")


def global_batch_line(cfg: Config, processes: int) -> str:
    t = cfg.train
    return (
        f"global batch: {t.batch_size * processes * t.grad_accum_steps} = {t.batch_size} per process"
        f" x {processes} process(es) x {t.grad_accum_steps} accumulation step(s)"
    )


def write_config(prepared: Prepared, cfg: Config, plan) -> None:
    """Create the run directory and write the resolved config and ``plan`` (a
    :class:`launcher.plan.Plan`), each atomically. Every attempt writes its own plan: a resumed
    run may use another strategy or process count."""
    path = prepared.run_dir.path
    header = f"# written by `launch`; read by every worker\n# {global_batch_line(cfg, plan.world_size)}\n"
    try:
        path.mkdir(parents=True, exist_ok=True)
        write_atomic(prepared.run_dir.config, header + to_yaml(cfg), private=holds_secrets(to_plain(cfg)))
        write_atomic(path / PLAN_FILE, json.dumps(plan.to_dict(), indent=1) + "\n")
    except OSError as e:
        raise ConfigError(
            f"cannot write the run directory {path}: {e.strerror}; pass run.output_dir=<a writable directory>"
        ) from None


def read_plan(path: Path) -> dict | None:
    """``RUN_DIR/plan.json`` as written by :func:`write_config` (None for a run directory from
    before it: the worker then goes by the config)."""
    try:
        plan = json.loads((Path(path) / PLAN_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot read {Path(path) / PLAN_FILE} ({e}); start the run again with the same command"
        ) from None
    return plan if isinstance(plan, dict) else None
