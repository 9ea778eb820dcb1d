"""Where metrics go (rank 0 only): ``metrics.jsonl`` (always: the source of truth, cut back on
resume), a console progress bar, and the optional backends wandb and TensorBoard.

Backends are imported lazily (``launch --help`` and the parent never import them). A backend
that fails while training is dropped with one warning; training goes on and ``metrics.jsonl``
keeps everything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import secrets
import string
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from launcher.config import SECRET_KEY

# Keys whose values are measurements of this machine (they differ between two identical runs).
MEASURED_PREFIXES = ("time/", "memory/")
MEASURED_KEYS = ("samples_per_sec",)


def is_measured(key: str) -> bool:
    return key in MEASURED_KEYS or key.startswith(MEASURED_PREFIXES)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events of a ``metrics.jsonl`` (a half-written last line of a running run is skipped)."""
    events = []
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return events
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def redact(tree: Any) -> Any:
    """The config without secrets: values of keys that look like keys/tokens/passwords."""
    if isinstance(tree, dict):
        return {k: "<redacted>" if SECRET_KEY.search(str(k)) else redact(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def flat_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class JsonlLogger:
    """Appends one JSON object per event to ``metrics.jsonl``.

    On resume the file is cut back to its length when the checkpoint was taken (its byte
    offset is part of the checkpoint), so it reads exactly as if the run had never been
    interrupted -- also when several events share the checkpoint's step. A file that is shorter
    than that (edited, or lost between attempts) is kept as it is up to its last whole line, with
    a warning; one deleted or replaced while the run writes it is written again from this
    process's open copy (checked at each event: one ``stat``), with a warning.
    """

    def __init__(self, path: Path, resume_offset: int | None, warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if resume_offset is None:
            if path.exists():
                path.unlink()  # a fresh start in a directory whose earlier attempt left no checkpoint
        else:
            size = path.stat().st_size if path.exists() else None
            if size is None:
                if resume_offset:
                    self.warn(
                        f"warning: {path.name} is missing; the metrics logged before the checkpoint are lost, "
                        "new ones are written from here"
                    )
            elif size > resume_offset:
                os.truncate(path, resume_offset)
            elif size < resume_offset:
                keep = self._whole_lines(path)
                self.warn(
                    f"warning: {path.name} is shorter than when the checkpoint was taken ({size} of "
                    f"{resume_offset} bytes); kept its {keep[1]} whole events, new ones are appended"
                )
                os.truncate(path, keep[0])
        self._open()

    @staticmethod
    def _whole_lines(path: Path) -> tuple[int, int]:
        """(bytes up to the last newline, lines there)."""
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        return end, data[:end].count(b"\n")

    def _open(self) -> None:
        self._f = open(self.path, "a+", buffering=1)
        st = os.fstat(self._f.fileno())
        self._id = (st.st_dev, st.st_ino)

    def _check(self) -> None:
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._id:
                return
        except OSError:
            pass
        # deleted or replaced while this run writes it: write it again from the copy still open here
        self._f.flush()
        self._f.seek(0)
        kept = self._f.read()
        self._f.close()
        tmp = self.path.with_name(f".{self.path.name}.restore")
        tmp.write_text(kept)
        os.replace(tmp, self.path)
        self._open()
        self.warn(
            f"warning: {self.path.name} was deleted or replaced during the run; "
            f"wrote it again from this run's copy ({kept.count(chr(10))} events kept)"
        )

    def offset(self) -> int:
        """Bytes written so far (stored in checkpoints)."""
        self._check()
        self._f.flush()
        return self._f.seek(0, os.SEEK_END)

    def log(self, event: dict[str, Any]) -> None:
        self._check()
        self._f.write(json.dumps({k: _clean(v) for k, v in event.items()}) + "\n")

    def close(self) -> None:
        self._f.close()


class ConsoleProgress:
    """One tqdm bar with loss, rate and ETA on a terminal; evaluation results as lines above it.

    When stderr is not a terminal (a Slurm log, CI, ``> file``) a redrawn bar would fill the file
    with carriage returns: there it prints one plain progress line every ``line_every`` seconds.
    """

    def __init__(self, total: int, initial: int, enabled: bool, line_every: float = 30.0) -> None:
        self.enabled = enabled
        self.bar = None
        self.total, self.done, self.initial = total, initial, initial
        self.values: dict[str, float] = {}
        self.line_every = line_every
        self.started = self.last_line = time.monotonic()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=initial, unit="step", dynamic_ncols=True, file=sys.stderr, mininterval=0.5
            )

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled:
            self.done += n
            now = time.monotonic()
            if now - self.last_line >= self.line_every or self.done == self.total:
                self.last_line = now
                print(self._line(now), file=sys.stderr, flush=True)

    def _line(self, now: float) -> str:
        rate = (self.done - self.initial) / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        shown = "  ".join(f"{k}={v:.4g}" for k, v in self.values.items())
        pct = 100 * self.done / max(self.total, 1)
        eta_s = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
        return f"step {self.done}/{self.total} ({pct:.0f}%)  {shown}  {rate:.3g} step/s  ETA {eta_s}"

    def postfix(self, values: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)
        self.values = dict(values)

    def write(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        elif self.enabled:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- wandb

WANDB_ID_CHARS = string.ascii_lowercase + string.digits


def new_wandb_id() -> str:
    # `secrets`, not `random`: must not draw from the training's random streams
    return "".join(secrets.choice(WANDB_ID_CHARS) for _ in range(8))


def has_wandb_credentials(base_url: str, environ: Any = os.environ) -> bool:
    """An API key in the environment or in the netrc file (what `wandb login` writes)."""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import netrc

    netloc = urlsplit(base_url).netloc
    path = environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        auth = netrc.netrc(path).authenticators(netloc)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def unreachable(base_url: str, timeout: float = 3.0) -> str | None:
    """Why the wandb server does not answer within ``timeout`` seconds (None: it answers).

    One HTTP request (any status counts as an answer; proxies from the environment apply) in a
    daemon thread, since name resolution has no timeout of its own: a machine without network,
    or behind a firewall that swallows packets, never waits for wandb's own ~100 s of retries."""
    import urllib.error
    import urllib.request

    if not urlsplit(base_url).hostname:
        return f"bad WANDB_BASE_URL {base_url!r}"
    result: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(base_url, timeout=timeout).close()
            result.append(None)
        except urllib.error.HTTPError:
            result.append(None)  # it answered
        except (OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or e
            result.append(getattr(reason, "strerror", None) or str(reason) or type(e).__name__)

    t = threading.Thread(target=probe, daemon=True, name="wandb-probe")
    t.start()
    t.join(timeout + 0.5)
    if not result:
        return f"no answer from {base_url} within {timeout:g} s"
    return None if result[0] is None else f"{base_url}: {result[0]}"


def wandb_mode(section: Any, environ: Any = os.environ) -> tuple[str, str | None]:
    """(mode, why not online) for ``log.wandb.mode``: offline without an API key or a reachable server."""
    env_mode = environ.get("WANDB_MODE", "").strip().lower()
    if section.mode == "offline" or (section.mode == "auto" and env_mode in ("offline", "dryrun")):
        return "offline", None
    if section.mode == "auto" and env_mode == "disabled":
        return "disabled", "disabled by WANDB_MODE=disabled"
    base = environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    if not has_wandb_credentials(base, environ):
        return "offline", "no API key (set WANDB_API_KEY or run `wandb login`)"
    problem = unreachable(base)
    if problem:
        return "offline", f"cannot reach the server ({problem})"
    return "online", None


class WandbBackend:
    """One wandb run per training run (rank 0). Its id lives in the run directory and in the
    checkpoints, so resumed and requeued attempts continue the same wandb run (``resume="allow"``);
    offline, each attempt is a directory under ``wandb/`` with that same id (``wandb sync`` uploads
    them in order).

    A killed attempt loses what wandb had not written yet (it flushes every second here, every
    15 s by default). So a resumed attempt first logs again the events of ``metrics.jsonl`` up to
    its checkpoint that wandb may lack: online, from the step the server has reached; offline,
    all of them (each attempt's file then holds the whole history)."""

    name = "wandb"

    def __init__(
        self,
        cfg: Any,
        run_path: Path,
        files_dir: Path,
        run_id: str,
        replay: list[dict[str, Any]],
        info: Callable[[str], None],
    ) -> None:
        from launcher.config import to_plain
        from launcher.logsetup import missing_package

        try:
            import wandb
        except ImportError:
            raise missing_package("wandb") from None
        w = cfg.log.wandb
        self.run = None
        self.min_step = 0
        mode, why = wandb_mode(w)
        if mode == "disabled":
            info(f"wandb: {why}; nothing is logged to wandb")
            return
        kwargs = dict(
            project=w.project or run_path.parent.name,
            entity=w.entity,
            name=w.name or run_path.name,
            group=w.group,
            tags=list(w.tags) or None,
            id=run_id,
            resume="allow",
            dir=str(files_dir),
            config=redact(to_plain(cfg)),
            settings=self._settings(wandb, w.init_timeout),
        )
        where = files_dir / "wandb"
        if why:
            info(f"wandb: {why}; logging offline to {where} (upload later: wandb sync {where})")
        try:
            self.run = wandb.init(mode=mode, **kwargs)
        except Exception as e:
            if mode != "online":
                raise
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            info(f"wandb: could not start the online run ({first}); logging offline to {where}")
            wandb.teardown()  # the failed run still holds its id in wandb's service
            self.run = wandb.init(mode="offline", **kwargs)
        if mode == "online":
            self.min_step = int(self.run.step or 0)  # steps the server already has (a resumed run)
            info(f"wandb: {self.run.url}")
        for event in replay:
            self.log(event)

    @staticmethod
    def _settings(wandb: Any, init_timeout: float) -> Any:
        common = dict(console="off", silent=True, init_timeout=init_timeout)
        try:  # flush the offline/transaction log every second (a SIGKILL loses at most that)
            return wandb.Settings(**common, x_transaction_log_flush_interval=1.0)
        except Exception:  # a wandb without that setting
            return wandb.Settings(**common)

    def log(self, event: dict[str, Any]) -> None:
        step = int(event.get("step", 0))
        if self.run is None or step < self.min_step:
            return
        data = {k: v for k, v in event.items() if k != "step" and isinstance(v, (int, float))}
        self.run.log(data, step=step)

    def finish(self, status: str, code: int, summary: dict[str, Any]) -> None:
        if self.run is None:
            return
        extra: dict[str, Any] = {"status": status, "global_step": summary.get("global_step")}
        best = summary.get("best") or {}
        if best.get("value") is not None:
            extra[f"best/{best.get('metric')}"] = best["value"]
        extra.update({f"total/{k}": v for k, v in (summary.get("totals") or {}).items() if v is not None})
        self.run.summary.update(extra)
        if status == "preempted":
            self.run.mark_preempting()
        self.run.finish(exit_code=code)
        self.run = None

    def close(self) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1)
            self.run = None


# --------------------------------------------------------------------------- TensorBoard

_EVENT_FILES = "events.out.tfevents.*"


def _hparam_value(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)):
        return v
    return "null" if v is None else json.dumps(v)


class TensorBoardBackend:
    """Scalars for every metric, hyperparameters with the final metrics, optional weight/gradient
    histograms and the model graph. On resume, everything from the checkpoint's step on is purged
    (``purge_step``) and the events of that step kept in ``metrics.jsonl`` are written again, so the
    event files read exactly like ``metrics.jsonl``."""

    name = "tensorboard"

    def __init__(self, cfg: Any, directory: Path, resume_step: int | None, replay: list[dict[str, Any]]) -> None:
        from launcher.config import to_plain
        from launcher.logsetup import missing_package

        if importlib.util.find_spec("tensorboard") is None:
            raise missing_package("tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        if resume_step is None and directory.is_dir():
            for old in directory.glob(_EVENT_FILES):  # an earlier attempt that left no checkpoint
                old.unlink()
        self.writer = SummaryWriter(str(directory), purge_step=resume_step)
        self.hparams = {k: _hparam_value(v) for k, v in flat_config(redact(to_plain(cfg))).items()}
        for event in replay:
            self.log(event)

    def log(self, event: dict[str, Any]) -> None:
        step = int(event.get("step", 0))
        for k, v in event.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                self.writer.add_scalar(k, v, step)

    def histograms(self, model: Any, step: int) -> None:
        for name, p in model.named_parameters():
            self.writer.add_histogram(f"weights/{name}", p.detach().float().cpu(), step)
            if p.grad is not None:
                self.writer.add_histogram(f"grads/{name}", p.grad.detach().float().cpu(), step)

    def graph(self, model: Any, inputs: tuple) -> None:
        self.writer.add_graph(model, inputs)

    def finish(self, status: str, code: int, summary: dict[str, Any]) -> None:
        if status == "completed":
            metrics = {f"hparam/{k}": v for k, v in (summary.get("final_metrics") or {}).items()}
            best = summary.get("best") or {}
            if best.get("value") is not None:
                metrics[f"hparam/best/{best.get('metric')}"] = best["value"]
            metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
            if metrics:
                self.writer.add_hparams(self.hparams, metrics, run_name=".", global_step=summary.get("global_step"))
        self.close()

    def close(self) -> None:
        self.writer.close()


# --------------------------------------------------------------------------- all of them


class Loggers:
    """Rank 0's sinks: ``metrics.jsonl`` (always) and the backends of ``log.backends``."""

    def __init__(self, jsonl: JsonlLogger, backends: list[Any], warn: Callable[[str], None]) -> None:
        self.jsonl = jsonl
        self.backends = backends
        self.warn = warn
        self.histogram_every = 0  # set when TensorBoard histograms are on
        self._graph_inputs: tuple | None = None
        self._graph_hook: Any = None
        self._graph_model: Any = None

    def _call(self, backend: Any, method: str, *args: Any) -> None:
        try:
            getattr(backend, method)(*args)
        except Exception as e:  # a backend must never stop training
            first = (str(e).strip().splitlines() or [""])[0][:200]
            self.warn(f"warning: {backend.name} failed ({type(e).__name__}: {first}); continuing without it")
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
        for b in list(self.backends):
            self._call(b, "finish", status, code, summary)
        self.backends = []
        self.jsonl.close()

    def close(self) -> None:
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
    backends: list[Any] = []
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
            first = (str(e).strip().splitlines() or [""])[0][:200]
            warn(f"warning: {name} could not start ({type(e).__name__}: {first}); continuing without it")

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
