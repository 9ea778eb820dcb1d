"""Where metrics go (rank 0 only): ``metrics.jsonl`` (always: the source of truth, cut back on
resume), a console progress bar, and the optional backends wandb and TensorBoard -- one file
each, behind one small interface (:class:`base.Backend`); :class:`Loggers` fans out to them.

Backends are imported lazily (``launch --help`` and the parent never import them). A backend
that fails while training is dropped with one warning; training goes on and ``metrics.jsonl``
keeps everything. At the end of the run :meth:`Loggers.finish` writes the final records and
:meth:`Loggers.close` closes everything, once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.errors import first_line
from launcher.runtime.loggers.base import Backend, redact
from launcher.runtime.loggers.console import ConsoleProgress
from launcher.runtime.loggers.jsonl import MEASURED_KEYS, MEASURED_PREFIXES, JsonlLogger, is_measured, read_events
from launcher.runtime.loggers.tensorboard_backend import TensorBoardBackend
from launcher.runtime.loggers.wandb_backend import (
    WANDB_ID_CHARS,
    WandbBackend,
    new_wandb_id,
    unreachable,
    wandb_mode,
)

__all__ = [
    "MEASURED_KEYS",
    "MEASURED_PREFIXES",
    "WANDB_ID_CHARS",
    "Backend",
    "ConsoleProgress",
    "JsonlLogger",
    "Loggers",
    "TensorBoardBackend",
    "WandbBackend",
    "is_measured",
    "make_loggers",
    "new_wandb_id",
    "read_events",
    "redact",
    "unreachable",
    "wandb_mode",
]


class Loggers:
    """Rank 0's sinks: ``metrics.jsonl`` (always) and the backends of ``log.backends``."""

    def __init__(self, jsonl: JsonlLogger, backends: list[Backend], warn: Callable[[str], None]) -> None:
        self.jsonl = jsonl
        self.backends = backends
        self.warn = warn
        self.histogram_every = 0  # set when TensorBoard histograms are on
        self._graph_inputs: tuple | None = None
        self._graph_hook: Any = None
        self._graph_model: Any = None
        self.closed = False

    def _call(self, backend: Backend, method: str, *args: Any) -> None:
        try:
            getattr(backend, method)(*args)
        except Exception as e:  # a backend must never stop training
            self.warn(f"warning: {backend.name} failed ({type(e).__name__}: {first_line(e)}); continuing without it")
            self.backends.remove(backend)
            try:
                backend.close()
            except Exception:
                pass

    def log(self, event: dict[str, Any]) -> None:
        self.jsonl.log(event)
        if self._graph_inputs is not None:
            self._write_graph()
        for b in list(self.backends):
            self._call(b, "log", event)

    def offset(self) -> int:
        return self.jsonl.offset()

    def histograms(self, model: Any, step: int) -> None:
        for b in list(self.backends):
            if hasattr(b, "histograms"):
                self._call(b, "histograms", model, step)

    def watch_graph(self, model: Any) -> None:
        """Capture the inputs of the model's first forward; the graph is traced at the next log."""

        def hook(module, args):
            self._graph_inputs = tuple(a.detach() if hasattr(a, "detach") else a for a in args)
            self._graph_hook.remove()

        self._graph_model = model
        self._graph_hook = model.register_forward_pre_hook(hook)

    def _write_graph(self) -> None:
        import torch

        from launcher.runtime import rng

        model, inputs = self._graph_model, self._graph_inputs
        self._graph_inputs = self._graph_model = None
        # traced in eval mode with the RNG states put back: no effect on training
        saved, was_training = rng.capture(), model.training
        model.eval()
        try:
            with torch.no_grad():
                for b in list(self.backends):
                    if hasattr(b, "graph"):
                        self._call(b, "graph", model, inputs)
        finally:
            model.train(was_training)
            rng.restore(saved)

    def finish(self, status: str, code: int, summary: dict[str, Any]) -> None:
        """The run's end: each backend's final records (TensorBoard hparams, the wandb summary and
        exit code), after which each backend has closed itself; :meth:`close` comes next."""
        for b in list(self.backends):
            self._call(b, "finish", status, code, summary)
        self.backends = []  # (finished and closed)

    def close(self) -> None:
        """Close ``metrics.jsonl`` and any backend still open (without :meth:`finish` first, a
        wandb run ends as failed). Idempotent: later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        for b in list(self.backends):
            try:
                b.close()
            except Exception:
                pass
        self.backends = []
        self.jsonl.close()


def make_loggers(
    cfg: Any,
    run_path: Path,
    jsonl: JsonlLogger,
    resume_step: int | None,
    checkpoint_wandb_id: str | None,
    model: Any,
    info: Callable[[str], None],
    warn: Callable[[str], None],
) -> tuple[Loggers, str | None]:
    """The rank-0 sinks of ``log.backends``; returns them and the wandb run id (None without wandb).

    ``resume_step``: the checkpoint's step (None for a fresh start); ``checkpoint_wandb_id``: the
    wandb id stored in that checkpoint when it belongs to this run; ``model``: the unwrapped model
    (for the TensorBoard graph)."""
    from launcher.errors import LaunchError
    from launcher.logsetup import log_dir
    from launcher.rundir import WANDB_ID_FILE, ensure_writable_dir, write_atomic

    wanted = list(dict.fromkeys(cfg.log.backends))
    backends: list[Backend] = []
    wandb_id = None
    if "wandb" in wanted or "tensorboard" in wanted:
        directory = log_dir(cfg, run_path)
        ensure_writable_dir(directory, "the logs", "pass log.dir=<a writable directory>")

    def start(make: Callable[[], Any], name: str) -> None:
        try:
            backends.append(make())
        except LaunchError:
            raise
        except Exception as e:  # the backend's own failure: train without it rather than not at all
            warn(f"warning: {name} could not start ({type(e).__name__}: {first_line(e)}); continuing without it")

    # after a resume, metrics.jsonl holds exactly the events up to the checkpoint
    kept = read_events(jsonl.path) if resume_step is not None else []
    if "tensorboard" in wanted:
        replay = [e for e in kept if int(e.get("step", -1)) >= resume_step] if resume_step is not None else []
        start(lambda: TensorBoardBackend(cfg, directory / "tensorboard", resume_step, replay), "tensorboard")
    if "wandb" in wanted:
        id_file = run_path / WANDB_ID_FILE
        try:
            wandb_id = id_file.read_text().strip() or None
        except OSError:
            wandb_id = None
        if wandb_id is None or not all(c in WANDB_ID_CHARS for c in wandb_id):
            wandb_id = checkpoint_wandb_id or new_wandb_id()
            write_atomic(id_file, wandb_id + "\n")
        start(lambda: WandbBackend(cfg, run_path, directory, wandb_id, kept, info), "wandb")
    loggers = Loggers(jsonl, backends, warn)
    if any(b.name == "tensorboard" for b in backends):
        tb = cfg.log.tensorboard
        if tb.histograms:
            loggers.histogram_every = tb.histogram_every or 10 * cfg.train.log_every
        if tb.graph and resume_step is None:
            loggers.watch_graph(model)
    return loggers, wandb_id
