"""`launch report RUN_DIR [RUN_DIR ...]`: PNG plots (loss and metrics, learning rate, throughput)
and a summary table comparing runs, from ``metrics.jsonl`` and ``summary.json``.

Works on runs in any state -- running, preempted, failed, completed -- since it only reads what
is on disk (a half-written last line is skipped). No torch; matplotlib is imported only when
plotting (Agg backend: no display needed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from launcher.errors import LaunchError
from launcher.rundir import CONFIG_FILE, METRICS_FILE, REPORT_DIR, RunDir, ensure_writable_dir, read_events


@dataclass
class Run:
    path: Path
    label: str
    status: str
    events: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    monitor: str | None = None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key``, in logging order, NaN/inf (stored as strings) included."""
        xs, ys = [], []
        for e in self.events:
            v = e.get(key)
            if isinstance(v, str) and v.lower() in ("nan", "inf", "-inf"):
                v = float(v)
            step = e.get("step")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(step, int):
                xs.append(step)
                ys.append(float(v))
        return xs, ys

    def last(self, key: str) -> float | None:
        _, ys = self.series(key)
        return ys[-1] if ys else None


def _is_run(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / METRICS_FILE).is_file()


def _status(rd: RunDir, summary: dict[str, Any] | None) -> str:
    if summary is None:
        has_ckpt = bool(rd.complete_checkpoints())
        if not rd.metrics.exists():
            return "not started"
        return "running or interrupted" if has_ckpt or rd.metrics.stat().st_size else "starting"
    status = str(summary.get("status", "unknown"))
    # metrics written after summary.json: a resumed attempt is running (or was killed)
    try:
        if rd.metrics.stat().st_mtime > rd.summary.stat().st_mtime + 1.0:
            return f"running or interrupted (last attempt: {status})"
    except OSError:
        pass
    return status


def load_run(path: Path) -> Run:
    """Everything the report needs from one run directory; a LaunchError if it is not one."""
    if not path.exists():
        raise LaunchError(f"{path} does not exist; pass a run directory such as runs/<recipe>/<run.name>")
    if not path.is_dir():
        raise LaunchError(f"{path} is not a directory; pass a run directory such as runs/<recipe>/<run.name>")
    if not _is_run(path):
        inner = sorted(
            {p.parent for p in path.glob(f"*/{CONFIG_FILE}")} | {p.parent for p in path.glob(f"*/*/{CONFIG_FILE}")}
        )
        hint = f"; it holds {len(inner)} run(s), e.g. launch report {inner[0]}" if inner else ""
        raise LaunchError(f"{path} is not a run directory (no {CONFIG_FILE} or {METRICS_FILE}){hint}")
    rd = RunDir(path)
    summary = rd.read_summary()
    monitor = None
    try:
        from launcher import yamlio

        cfg = yamlio.load(rd.config.read_text()) or {}
        monitor = (cfg.get("checkpoint") or {}).get("monitor")
    except (OSError, ValueError, AttributeError):
        pass
    events = read_events(rd.metrics)
    _warn_damage(rd, summary, len(events))
    return Run(path, path.name, _status(rd, summary), events, summary or {}, monitor)


def _warn_damage(rd: RunDir, summary: dict | None, n_events: int) -> None:
    """One warning line per damaged file; the report shows what is still readable."""
    if summary is None and rd.summary.exists():
        click.echo(f"warning: {rd.summary} is damaged (not a JSON object); the status shown is a guess", err=True)
    try:
        data = rd.metrics.read_bytes()
    except OSError:
        return
    bad = sum(1 for line in data.split(b"\n") if line.strip()) - n_events
    if data and not data.endswith(b"\n"):
        bad -= 1  # the half-written last line of a run that is writing it
    if bad > 0:
        click.echo(f"warning: {rd.metrics}: {bad} damaged line(s) skipped", err=True)


def _labels(runs: list[Run]) -> None:
    """Short unique labels: the run name, with its recipe folder when names collide."""
    names = [r.path.name for r in runs]
    for r in runs:
        if names.count(r.path.name) > 1:
            r.label = f"{r.path.parent.name}/{r.path.name}"
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} ({seen[r.label]})"


# --------------------------------------------------------------------------- table


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def table(runs: list[Run]) -> list[list[str]]:
    metric_keys: list[str] = []
    for r in runs:
        for e in r.events:
            for k in e:
                if k.startswith("val/") and k not in metric_keys:
                    metric_keys.append(k)
    header = ["run", "status", "steps", "epochs", "train/loss", *metric_keys, "best", "samples/s", "data wait", "wall"]
    rows = [header]
    for r in runs:
        s = r.summary
        totals = s.get("totals") or {}
        steps = s.get("global_step")
        if steps is None:
            steps = max((int(e["step"]) for e in r.events if "step" in e), default=None)
        epochs = s.get("epochs")
        if epochs is None:
            epochs = max((e["epoch"] for e in r.events if isinstance(e.get("epoch"), (int, float))), default=None)
        best = s.get("best") or {}
        best_txt = "-"
        if best.get("value") is not None:
            best_txt = f"{best.get('metric')}={_fmt(best['value'])}@{best.get('step')}"
        throughput = totals.get("samples_per_sec")
        if throughput is None:
            _, ys = r.series("samples_per_sec")
            throughput = sum(ys) / len(ys) if ys else None
        wait = totals.get("time/data_wait_frac")
        wall = s.get("wall_time_sec")
        rows.append(
            [
                r.label,
                r.status,
                _fmt(steps),
                _fmt(float(epochs), 3) if isinstance(epochs, (int, float)) else "-",
                _fmt(r.last("train/loss")),
                *[_fmt(r.last(k)) for k in metric_keys],
                best_txt,
                _fmt(throughput, 4),
                f"{100 * wait:.1f}%" if isinstance(wait, (int, float)) else "-",
                f"{wall:.1f}s" if isinstance(wall, (int, float)) else "-",
            ]
        )
    return rows


def render_text(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def render_markdown(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- plots


def _pyplot():
    # A Ctrl-C in the middle of these imports would land inside a C extension's initialisation
    # (numpy's import_array()), which turns it into "ImportError: ... failed to import": the stop
    # signals wait until the imports are done, then interrupt as usual.
    from launcher.signals import blocked

    with blocked():
        try:
            import matplotlib
        except ImportError:
            matplotlib = None
        else:
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
    if matplotlib is None:
        raise LaunchError(
            "launch report needs matplotlib, which is not installed; pip install 'launcher[report]' "
            "(or pip install matplotlib)"
        )
    return plt


def _plot(plt, runs: list[Run], panels: list[tuple[str, list[tuple[str, str]]]], title: str, out: Path) -> bool:
    """One figure with a panel per (panel title, [(metric key, line style)]); False if nothing to plot."""
    panels = [(t, keys) for t, keys in panels if any(r.series(k)[0] for r in runs for k, _ in keys)]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for ax, (panel_title, keys) in zip(axes[0], panels, strict=True):
        for i, r in enumerate(runs):
            for key, style in keys:
                xs, ys = r.series(key)
                if not xs:
                    continue
                label = r.label if len(keys) == 1 else f"{r.label} {key}"
                marker = "o" if len(xs) < 30 else None
                ax.plot(xs, ys, style, color=colors[i % len(colors)], label=label, marker=marker, markersize=3)
        ax.set_title(panel_title)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return True


def plots(runs: list[Run], out_dir: Path) -> list[Path]:
    plt = _pyplot()
    written = []
    metric_names: list[str] = []  # recipe metrics other than the loss, without their split
    for r in runs:
        for e in r.events:
            for k in e:
                if k.startswith(("train/", "val/")) and not k.endswith("/loss"):
                    name = k.split("/", 1)[1]
                    if name not in metric_names:
                        metric_names.append(name)
    figures = [
        ("loss.png", "loss (solid: train, dashed: validation)", [("loss", [("train/loss", "-"), ("val/loss", "--")])]),
        (
            "metrics.png",
            "metrics (solid: train, dashed: validation)",
            [(m, [(f"train/{m}", "-"), (f"val/{m}", "--")]) for m in metric_names],
        ),
        (
            "lr.png",
            "learning rate and gradient norm",
            [("learning rate", [("lr", "-")]), ("gradient norm", [("grad_norm", "-")])],
        ),
        (
            "throughput.png",
            "throughput",
            [
                ("samples per second", [("samples_per_sec", "-")]),
                ("share of step time waiting for data", [("time/data_wait_frac", "-")]),
            ],
        ),
    ]
    for name, title, panels in figures:
        path = out_dir / name
        if _plot(plt, runs, panels, title, path):
            written.append(path)
    return written


# --------------------------------------------------------------------------- command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dirs", nargs=-1, required=True, metavar="RUN_DIR [RUN_DIR ...]")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    help=f"Where to write the plots and summary.md (default: RUN_DIR/{REPORT_DIR}/ of the first run).",
)
def report_command(run_dirs: tuple[str, ...], out: str | None) -> int:
    """Plot loss, metrics, learning rate and throughput of one or more runs (any state) and print
    a table comparing them. A sweep's directory (runs/<recipe>/sweeps/<name>) or a recipe's
    (runs/<recipe>) compares its runs: sorted by the monitored metric, labelled by the settings
    that differ, with the best run's command."""
    group = _group(Path(run_dirs[0])) if len(run_dirs) == 1 else None
    if group is not None:
        runs, where, commands = group
    else:
        runs, where, commands = [load_run(Path(p)) for p in run_dirs], None, {}
        _labels(runs)
    out_dir = Path(out) if out else (where or runs[0].path) / REPORT_DIR
    ensure_writable_dir(out_dir, "the report", "pass --out <a writable directory>")
    rows = table(runs)
    written = plots(runs, out_dir)
    summary_md = out_dir / "summary.md"
    sources = "\n".join(f"- {r.label}: {r.path}" for r in runs)
    best = _best(runs) if group is not None else None
    said = ""
    if best is not None:
        said = f"best: {best.label} ({best.monitor}={_fmt(_best_value(best))}): {best.path}"
        if best.path in commands:
            said += f"\n  {commands[best.path]}"
    summary_md.write_text(f"# launch report\n\n{render_markdown(rows)}\n\n{said}\n\nRuns:\n{sources}\n")
    click.echo(render_text(rows))
    click.echo("")
    if said:
        click.echo(said)
        click.echo("")
    if not any(r.events for r in runs):
        click.echo("no metrics logged yet: nothing to plot")
    for path in [*written, summary_md]:
        click.echo(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- sweeps and recipe folders


def _mode(run: Run) -> str:
    from launcher import yamlio

    try:
        cfg = yamlio.load((run.path / CONFIG_FILE).read_text()) or {}
        return "max" if (cfg.get("checkpoint") or {}).get("mode") == "max" else "min"
    except (OSError, ValueError, AttributeError):
        return "min"


def _best_value(run: Run) -> float | None:
    """The best value of the run's monitored metric so far (summary.json's, else from its events)."""
    best = run.summary.get("best") or {}
    if best.get("metric") == run.monitor and isinstance(best.get("value"), (int, float)):
        return float(best["value"])
    _, ys = run.series(run.monitor) if run.monitor else ([], [])
    ys = [y for y in ys if math.isfinite(y)]
    if not ys:
        return None
    return max(ys) if _mode(run) == "max" else min(ys)


def _sorted(runs: list[Run]) -> list[Run]:
    """Best first by the monitored metric (runs without a value last)."""

    def key(r: Run):
        v = _best_value(r)
        return (v is None, -(v or 0.0) if _mode(r) == "max" else (v or 0.0))

    return sorted(runs, key=key)


def _best(runs: list[Run]) -> Run | None:
    scored = [r for r in runs if _best_value(r) is not None]
    if not scored or len({(r.monitor, _mode(r)) for r in scored}) > 1:
        return None
    return _sorted(scored)[0]


def _differing(runs: list[Run]) -> list[str]:
    """The config keys whose values differ between the runs (results-relevant ones only)."""
    from launcher import yamlio
    from launcher.config import OPERATIONAL_KEYS, _is_under, flatten

    flat = []
    for r in runs:
        try:
            flat.append(flatten(yamlio.load((r.path / CONFIG_FILE).read_text()) or {}))
        except (OSError, ValueError, AttributeError):
            flat.append({})
    keys = sorted({k for f in flat for k in f if not _is_under(k, OPERATIONAL_KEYS)})
    return [k for k in keys if len({repr(f.get(k)) for f in flat}) > 1]


def _group(path: Path) -> tuple[list[Run], Path, dict[Path, str]] | None:
    """A sweep directory or a recipe's folder of runs -> (runs best first, where the report goes,
    each run's command where known); None for anything else (an ordinary run directory)."""
    from launcher.sweep import SWEEP_FILE, SWEEPS_DIR, read_sweep

    if (path / SWEEP_FILE).is_file():
        sweep = read_sweep(path)
        keys = [k for k, v in sweep.axes.items() if len(v) > 1] or list(sweep.axes)
        runs, commands = [], {}
        for p in sweep.points:
            run_path = Path(p.run_dir)
            if _is_run(run_path):
                run = load_run(run_path)
                run.label = " ".join(f"{k.rsplit('.', 1)[-1]}={p.values[k]}" for k in keys)
                runs.append(run)
                commands[run_path] = "launch " + " ".join(_quote(a) for a in sweep.argv(p))
        if not runs:
            raise LaunchError(
                f"no point of the sweep in {path} has started yet; nothing to report (launch status {path})"
            )
        return _sorted(runs), path, commands
    if _is_run(path) or not path.is_dir():
        return None
    inner = sorted(p.parent for p in path.glob(f"*/{CONFIG_FILE}") if p.parent.name != SWEEPS_DIR)
    if not inner:
        return None
    runs = [load_run(p) for p in inner]
    keys = _differing(runs)
    for r in runs:
        try:
            from launcher import yamlio
            from launcher.config import flatten

            flat = flatten(yamlio.load((r.path / CONFIG_FILE).read_text()) or {})
        except (OSError, ValueError, AttributeError):
            flat = {}
        r.label = " ".join(f"{k.rsplit('.', 1)[-1]}={flat.get(k)}" for k in keys[:4]) or r.path.name
    _dedupe(runs)
    return _sorted(runs), path, {}


def _dedupe(runs: list[Run]) -> None:
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
        if seen[r.label] > 1:
            r.label = f"{r.label} ({r.path.name})"


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)
