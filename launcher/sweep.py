"""Sweeps: one command for a grid of runs (``launch ... --sweep``), torch-free.

``launch recipe=X train.lr=1e-3,3e-3 model.arch=resnet18,resnet34 --sweep`` is the product of the
comma lists (a ``sweep:`` section in a ``config=FILE.yaml`` holds the same lists). Each point is the
ordinary command with one value per list, so it trains in the run directory that command alone
would use; the sweep adds only ``<output_dir>/<recipe>/sweeps/<name>/sweep.json``: the definition
(what every point shares, the lists) and the points in the order they were first defined (a point
keeps its index for good: Slurm array task N is point N). Running the same sweep again skips
completed points and continues the rest (:mod:`launcher.sweep_run`); adding values to a list adds
points; anything else that differs under the same name is refused with one line naming it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError

SWEEP_FILE = "sweep.json"
SWEEPS_DIR = "sweeps"
UNSWEEPABLE = ("recipe", "config")
OPEN, CLOSE = "[{(", "]})"


def split_list(raw: str) -> list[str]:
    """``1e-3,3e-3`` -> ["1e-3", "3e-3"]: commas at the top level only; brackets keep a list a value
    (``[a,b]``), quotes keep a literal comma (``'a,b'``: the value a,b)."""
    items, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(raw):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in OPEN:
            depth += 1
        elif ch in CLOSE:
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(raw[start:i])
            start = i + 1
    items.append(raw[start:])
    return items


@dataclass
class Axis:
    key: str
    values: list[str]
    origin: str  # how the user gave it: "key=a,b" or "FILE: sweep.key"


def _yaml_value(value: Any) -> str:
    """A value of a ``sweep:`` list as a command-line value (lists and mappings in flow style)."""
    if isinstance(value, str):
        return value if "," not in value else "'" + value.replace("'", "''") + "'"
    return json.dumps(value)  # (JSON is YAML's flow style: lists and mappings stay values)


def split_tokens(tokens: tuple[str, ...], file_sweeps: list[tuple[str, dict]]) -> tuple[list[str | None], list[Axis]]:
    """Command-line ``key=value`` tokens (and the ``sweep:`` sections of config files) -> the
    point template (the tokens every point shares, None where a swept key stands: a point's
    command keeps the order the user typed, so it names the same run directory) and the axes
    (a file's lists come last, each point's value appended; a key given on the command line wins)."""
    from launcher.config import split_override

    template: list[str | None] = []
    axes: dict[str, Axis] = {}
    files: dict[str, Axis] = {}
    for path, section in file_sweeps:
        for key, values in section.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{path}: sweep.{key} must be a non-empty list of values (e.g. {key}: [0.001, 0.01])")
            files[key] = Axis(key, [_yaml_value(v) for v in values], f"{path}: sweep.{key}")
    for token in tokens:
        key, raw = split_override(token)
        items = split_list(raw)
        files.pop(key, None)  # the command line wins over a file's list
        if len(items) == 1:
            template.append(token)
            continue
        if key in UNSWEEPABLE:
            raise ConfigError(f"{token}: {key}= cannot be swept; run one sweep per {key}")
        if any(not v.strip() for v in items):
            raise ConfigError(f"{token}: an empty value in the list; remove the extra comma")
        if len(set(items)) != len(items):
            dup = next(v for v in items if items.count(v) > 1)
            raise ConfigError(f"{token}: {dup} is listed twice; list each value once")
        if key in axes:
            raise ConfigError(f"{key} is swept twice ({axes[key].origin} and {token}); give one list")
        axes[key] = Axis(key, items, token)
        template.append(None)
    for axis in files.values():
        axes[axis.key] = axis
        template.append(None)
    return template, list(axes.values())


@dataclass
class Point:
    index: int
    values: dict[str, str]  # key -> value as written
    tokens: list[str]  # the point's key=value tokens (the shared ones, then its own)
    run_dir: str = ""
    procs: int = 1  # processes it trains with on this node (not stored: settled by the command)
    device: str = "auto"  # its dist.device (a local run takes one GPU per process on cuda, and on auto with GPUs)
    cfg: Any = None  # its resolved config (not stored)


@dataclass
class Sweep:
    name: str
    dir: Path
    recipe: str
    fixed: dict[str, Any]  # the resolved config every point shares (results-relevant keys only)
    axes: dict[str, list[str]]
    points: list[Point] = field(default_factory=list)
    options: list[str] = field(default_factory=list)  # launch options every point gets (--gpus 2, ...)

    @property
    def file(self) -> Path:
        return self.dir / SWEEP_FILE

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "recipe": self.recipe,
            "axes": self.axes,
            "fixed": self.fixed,
            "options": self.options,
            "points": [
                {"index": p.index, "values": p.values, "tokens": p.tokens, "run_dir": p.run_dir} for p in self.points
            ],
        }

    def argv(self, point: Point) -> list[str]:
        """The point as the single ``launch`` command a user would type."""
        return [*point.tokens, *self.options]


def point_tokens(template: list[str | None], keys: list[str], combo: tuple[str, ...]) -> list[str]:
    """The template with each swept place filled by this point's value (in the order of the axes)."""
    values = iter(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
    return [t if t is not None else next(values) for t in template]


def sweep_name(keys: list[str], fixed: dict[str, Any], recipe: str) -> str:
    """Deterministic from the command: the swept keys, and a hash of what the points share (not
    of the values swept: adding a value keeps the sweep)."""
    leaves = "-".join(re.sub(r"[^A-Za-z0-9.+]+", "_", k.rsplit(".", 1)[-1]) for k in keys)
    blob = json.dumps({"recipe": recipe, "keys": sorted(keys), "fixed": fixed}, sort_keys=True, default=str)
    return f"{leaves[:50]}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


def shared_config(cfg, keys: list[str]) -> dict[str, Any]:
    """What changes results in ``cfg`` (flattened), without the swept keys."""
    from launcher.config import OPERATIONAL_KEYS, _is_under, flatten, to_plain

    return {
        k: v
        for k, v in flatten(to_plain(cfg)).items()
        if not _is_under(k, OPERATIONAL_KEYS) and not any(k == s or k.startswith(s + ".") for s in keys)
    }


def read_sweep(path: Path) -> Sweep:
    """A sweep directory (or its sweep.json) -> Sweep; one line when it is not one."""
    path = Path(path)
    file = path / SWEEP_FILE if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"{path} is not a sweep directory (no {SWEEP_FILE}); pass runs/<recipe>/sweeps/<name>")
    try:
        data = json.loads(file.read_text())
        points = [
            Point(int(p["index"]), dict(p["values"]), list(p["tokens"]), str(p["run_dir"])) for p in data["points"]
        ]
        return Sweep(
            data["name"], file.parent, data["recipe"], data["fixed"], data["axes"], points, data.get("options", [])
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"{file} is damaged; run the sweep command again to rewrite it") from None


def merge_with_existing(new: Sweep) -> Sweep:
    """The sweep as it will be run: the one on disk with any new points appended (indices kept),
    or ``new`` when there is none. A different definition under the same name is refused."""
    if not new.file.exists():
        return new
    old = read_sweep(new.dir)
    where = f"{new.dir} holds a sweep with"
    fix = "pass --sweep-name NEW for a new sweep, or remove that directory to start over"
    if old.recipe != new.recipe:
        raise ConfigError(f"{where} recipe={old.recipe}, not {new.recipe}; {fix}")
    if set(old.axes) != set(new.axes):
        raise ConfigError(f"{where} the lists {', '.join(old.axes)}, not {', '.join(new.axes)}; {fix}")
    from launcher.config import diff_configs

    changed = diff_configs(old.fixed, new.fixed)
    if changed:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:3])
        raise ConfigError(f"{where} other shared settings ({shown}); {fix}")
    for key, values in old.axes.items():
        dropped = [v for v in values if v not in new.axes[key]]
        if dropped:
            raise ConfigError(
                f"{where} {key}={','.join(dropped)} too (a sweep only grows); list {'it' if len(dropped) == 1 else 'them'} "
                f"again, or {fix}"
            )
    if old.options != new.options:
        raise ConfigError(f"{where} the options {' '.join(old.options) or '(none)'}; give the same, or {fix}")
    known = {tuple(sorted(p.values.items())) for p in old.points}
    added = [p for p in new.points if tuple(sorted(p.values.items())) not in known]
    for n, p in enumerate(added):
        p.index = len(old.points) + n
    old.axes = {k: old.axes[k] + [v for v in new.axes[k] if v not in old.axes[k]] for k in old.axes}
    old.points = old.points + added
    # (the tokens of the points already there are kept: the command that defined them)
    return old


def plan_sweep(tokens: tuple[str, ...], flags: list[tuple[str, str, str]], options: list[str], name: str | None):
    """The sweep of a command line: every point resolved and validated (one line for the first bad
    one), its run directory, the sweep directory and name. Nothing is written."""
    from launcher import cli
    from launcher.config import load_yaml_file, split_override

    files = [raw for key, raw in (split_override(t) for t in tokens) if key == "config"]
    file_sweeps = [(f, load_yaml_file(f).get("sweep") or {}) for f in files]
    template, axes = split_tokens(tokens, [(f, s) for f, s in file_sweeps if s])
    if not axes:
        raise ConfigError(
            "--sweep needs at least one list: give a key several values (e.g. train.lr=0.001,0.01) "
            "or a sweep: section in a config file"
        )
    keys = [a.key for a in axes]
    points: list[Point] = []
    spec = recipe_cls = None
    fixed: dict[str, Any] = {}
    output_dir = None
    for index, combo in enumerate(itertools.product(*(a.values for a in axes))):
        ptoks = point_tokens(template, keys, combo)
        try:
            spec, recipe_cls, cfg, kv = cli.resolve_from_argv(tuple(ptoks), flags, sweep_ok=True)
        except ConfigError as e:
            shown = " ".join(f"{k}={v}" for k, v in zip(keys, combo, strict=True))
            raise ConfigError(f"sweep point {shown}: {e}") from None
        run_path = cli.run_path_of(spec, recipe_cls, cfg, kv, cli.config_stems(ptoks))
        if index == 0:
            fixed = shared_config(cfg, keys)
            output_dir = Path(cfg.run.output_dir)
        points.append(
            Point(
                index, dict(zip(keys, combo, strict=True)), ptoks, str(run_path), cfg.dist.procs, cfg.dist.device, cfg
            )
        )
    from launcher.recipe_loader import recipe_dir_name

    name = name or sweep_name(keys, fixed, spec)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", name):
        raise ConfigError(f"--sweep-name {name!r}: use letters, digits and . _ + - only")
    directory = output_dir / recipe_dir_name(spec, recipe_cls) / SWEEPS_DIR / name
    runs = [p.run_dir for p in points]
    if len(set(runs)) != len(runs):
        dup = next(r for r in runs if runs.count(r) > 1)
        raise ConfigError(f"two sweep points train in {dup}; a run.name= shared by every point cannot be swept")
    sweep = merge_with_existing(Sweep(name, directory, spec, fixed, {a.key: a.values for a in axes}, points, options))
    resolved = {tuple(sorted(p.values.items())): p for p in points}
    for p in sweep.points:  # (every stored point is in the command's product: lists only grow)
        q = resolved[tuple(sorted(p.values.items()))]
        p.procs, p.device, p.cfg = q.procs, q.device, q.cfg
    return sweep


def write_sweep(sweep: Sweep) -> None:
    from launcher.rundir import write_atomic

    sweep.dir.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep.file, json.dumps(sweep.to_json(), indent=1) + "\n")


# ---------------------------------------------------------------------------- states


def point_state(run_dir: Path) -> str:
    """pending | running | completed | failed | stopped | preempted | interrupted, from the run
    directory alone (a Slurm task's queued / running state is added by the caller)."""
    from launcher import runlock
    from launcher.rundir import RunDir

    rd = RunDir(run_dir)
    if not rd.config.is_file():
        return "running" if runlock.live(run_dir) is not None else "pending"
    if runlock.live(run_dir) is not None:
        return "running"
    status = (rd.read_summary() or {}).get("status")
    if status in ("completed", "failed", "stopped", "preempted"):
        return status
    return "interrupted"  # started, and ended without a summary (killed)


def slurm_state(run_dir: Path) -> str | None:
    """queued | running for a point whose Slurm job (an array task) is pending or running; else None."""
    import shutil

    from launcher.rundir import SLURM_JOBS_FILE

    if not (run_dir / SLURM_JOBS_FILE).is_file() or shutil.which("scontrol") is None:
        return None
    from launcher import slurm

    try:
        active = slurm.active_job(run_dir)
    except slurm.DamagedJobsFile:
        return None
    if active is None:
        return None
    return "queued" if active[1].get("JobState") in ("PENDING", "REQUEUED", "REQUEUE_HOLD") else "running"


@dataclass
class Row:
    point: Point
    state: str
    steps: int | None = None
    epochs: float | None = None
    monitor: str | None = None
    mode: str = "min"
    best: float | None = None  # the monitored metric's best value so far
    best_step: int | None = None


def _monitor_of(run_dir: Path) -> tuple[str | None, str]:
    from launcher import yamlio
    from launcher.rundir import RunDir

    try:
        ckpt = (yamlio.load(RunDir(run_dir).config.read_text()) or {}).get("checkpoint") or {}
    except (OSError, ValueError, AttributeError):
        return None, "min"
    return ckpt.get("monitor"), "max" if ckpt.get("mode") == "max" else "min"


def point_row(point: Point, state: str | None = None) -> Row:
    """What ``launch status`` shows of one point: state, progress and the best monitored value so far."""
    from launcher.rundir import RunDir, read_events

    run_dir = Path(point.run_dir)
    row = Row(point, state or point_state(run_dir))
    if row.state == "pending":
        return row
    row.monitor, row.mode = _monitor_of(run_dir)
    rd = RunDir(run_dir)
    summary = rd.read_summary() or {}
    events = read_events(rd.metrics)
    steps = [e["step"] for e in events if isinstance(e.get("step"), int)]
    epochs = [e["epoch"] for e in events if isinstance(e.get("epoch"), (int, float))]
    row.steps = max(steps, default=summary.get("global_step"))
    row.epochs = summary.get("epochs") if row.state == "completed" else max(epochs, default=None)
    for e in events:
        v = e.get(row.monitor) if row.monitor else None
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
            if row.best is None or (v > row.best if row.mode == "max" else v < row.best):
                row.best, row.best_step = float(v), e.get("step")
    return row


def best_row(rows: list[Row]) -> Row | None:
    """The row whose monitored value is best (the points must share the metric and its mode)."""
    scored = [r for r in rows if r.best is not None]
    if not scored or len({(r.monitor, r.mode) for r in scored}) > 1:
        return None
    pick = max if scored[0].mode == "max" else min
    return pick(scored, key=lambda r: r.best)


def status_table(rows: list[Row], keys: list[str]) -> list[list[str]]:
    """A header and a row per point: its values, state, step, epochs, the monitored metric (best so
    far, ``*`` on the best point)."""
    best = best_row(rows)
    metric = next((r.monitor for r in rows if r.monitor), None) or "metric"
    mode = next((r.mode for r in rows if r.monitor), "min")
    out = [["#", *keys, "state", "step", "epochs", f"{metric} ({mode})"]]
    for r in rows:
        value = "-" if r.best is None else f"{r.best:.4g}" + (" *" if r is best else "")
        epochs = "-" if r.epochs is None else f"{r.epochs:.3g}"
        out.append(
            [str(r.point.index), *(r.point.values.get(k, "-") for k in keys), r.state,
             "-" if r.steps is None else str(r.steps), epochs, value]
        )  # fmt: skip
    return out


def print_status(path: Path) -> int:
    """``launch status SWEEP_DIR``: one row per point."""
    import click

    from launcher.report import render_text

    sweep = read_sweep(path)
    rows = [point_row(p, slurm_state(Path(p.run_dir))) for p in sweep.points]
    keys = [k for k, v in sweep.axes.items() if len(v) > 1] or list(sweep.axes)
    click.echo(f"sweep:  {sweep.dir} ({sweep.recipe}, {len(rows)} point{'s' if len(rows) > 1 else ''})")
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    click.echo("states: " + ", ".join(f"{c} {s}" for s, c in sorted(counts.items())))
    click.echo("")
    click.echo(render_text(status_table(rows, keys)))
    best = best_row(rows)
    if best is not None:
        click.echo(f"\nbest:   [{best.point.index}] {best.point.run_dir}")
    return 0
