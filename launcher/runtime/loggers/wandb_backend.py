"""wandb: one wandb run per training run (rank 0), continued by every resumed attempt; offline,
with one line saying why, when there is no API key or no server. ``wandb`` is imported when the
backend starts."""

from __future__ import annotations

import os
import secrets
import string
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from launcher.errors import first_line
from launcher.runtime.loggers.base import redact

WANDB_ID_CHARS = string.ascii_lowercase + string.digits


def new_wandb_id() -> str:
    # `secrets`, not `random`: must not draw from the training's random streams
    return "".join(secrets.choice(WANDB_ID_CHARS) for _ in range(8))


# What wandb 0.31 does by itself, measured with no API key and HOME an empty directory, or with a
# key and a WANDB_BASE_URL that refuses connections, does not resolve, accepts and never answers,
# or answers 500 (console="off", silent=True, as below):
# - No API key: an online wandb.init fails at once ("No API key configured. Use `wandb login` to
#   log in.") when stdin is not a terminal, but on a terminal it asks how to log in and waits for
#   an answer without a time limit (login_timeout is unset). wandb.login(prompt=False) finds the
#   key exactly where wandb.init will look (WANDB_API_KEY, WANDB_IDENTITY_TOKEN_FILE, wandb's
#   settings files, the netrc file, also under the host a forge URL stands for), at once, with no
#   prompt and no network; it replaces our own netrc lookup. (It must be silent: otherwise it asks
#   the server for the user name to print, which waits on a machine without network.)
# - A key but no server: wandb.init waits for the whole init_timeout, however the server fails
#   (refused at once, unresolvable or silent), then raises CommError ("Timed out while retrying:
#   ..."); not silent it waits longer still. wandb.login(verify=True) waits several seconds and
#   then blames "the service process". wandb has no quick reachability check, so the one-request
#   probe below stays -- on wandb's own base_url (wandb 0.31's default host is not api.wandb.ai).
#   log.wandb.init_timeout still bounds an online start that fails later (falls back to offline).
# - WANDB_MODE is read here, not taken from wandb's merged settings: log.wandb.mode=online
#   overrides it, and wandb keeps settings given to wandb.setup for the rest of the process.


def unreachable(base_url: str, timeout: float = 3.0) -> str | None:
    """Why the wandb server does not answer within ``timeout`` seconds (None: it answers).

    One HTTP request (any status counts as an answer; proxies from the environment apply) in a
    daemon thread, since name resolution has no timeout of its own: a machine without network,
    or behind a firewall that swallows packets, never waits for wandb's retries."""
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
    import wandb

    # wandb's settings as wandb.init will see them (environment, settings files); online, since
    # wandb.login looks nothing up in a process set to offline
    settings = wandb.setup(wandb.Settings(mode="online", silent=True)).settings
    try:
        has_key = wandb.login(prompt=False, verify=False)
    except Exception as e:  # a malformed key (wandb.errors.AuthenticationError)
        return "offline", f"unusable API key ({first_line(e)})"
    if not has_key:
        return "offline", "no API key (set WANDB_API_KEY or run `wandb login`)"
    problem = unreachable(settings.base_url)
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
            # (the config wins; else wandb's own WANDB_PROJECT; else the recipe's directory name.
            # entity and group left None: wandb reads WANDB_ENTITY / WANDB_RUN_GROUP itself)
            project=w.project or os.environ.get("WANDB_PROJECT") or run_path.parent.name,
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
            info(f"wandb: could not start the online run ({first_line(e)}); logging offline to {where}")
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
