"""Running a sweep on this machine: its points one after another, or ``--parallel P`` at a time.

Each point is the ordinary ``launch`` command of its point (a child process), so it resumes,
refuses and reports exactly as that command would. This machine's GPUs are split between the
running points (``CUDA_VISIBLE_DEVICES``: one per process of a point), its CPU cores likewise
(``OMP_NUM_THREADS``). The first Ctrl-C (or TERM) reaches the running points, which checkpoint at
a step boundary and stop; no new point starts. Run again, completed points are skipped, stopped,
preempted or killed ones continue, failed ones are reported and rerun only with
``--retry-failed``; a point another ``launch`` is training right now is left to it.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import click

from launcher import signals, spawn
from launcher.errors import (
    EXIT_BAD_INPUT,
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_PREEMPTED,
    EXIT_STOPPED,
    ConfigError,
)
from launcher.sweep import Point, Sweep, point_state, write_sweep

LOGS_DIR = "logs"
POLL_S = 0.2


def shown(point: Point) -> str:
    return " ".join(f"{k}={v}" for k, v in point.values.items())


def _gpus_needed(point: Point, visible: int) -> int:
    return point.procs if point.device == "cuda" or (point.device == "auto" and visible > 0) else 0


def check_resources(sweep: Sweep, parallel: int, visible: int | None) -> None:
    """One line when ``parallel`` points at a time cannot each get their GPUs here."""
    if parallel <= 1 or not visible:
        return
    need = max(_gpus_needed(p, visible) for p in sweep.points)
    if need and need * parallel > visible:
        raise ConfigError(
            f"--parallel {parallel} with {need} GPU{'s' if need > 1 else ''} per point needs {need * parallel} GPUs; "
            f"this machine has {visible}: lower --parallel to {max(1, visible // need)}"
        )


def to_run(sweep: Sweep, retry_failed: bool) -> tuple[list[Point], dict[str, list[Point]]]:
    """(points to start now, in index order; the others by their state)."""
    todo, other = [], {}
    for p in sweep.points:
        state = point_state(Path(p.run_dir))
        if state in ("completed", "running") or (state == "failed" and not retry_failed):
            other.setdefault(state, []).append(p)
        else:
            todo.append(p)
    return todo, other


class _Running:
    def __init__(self, point: Point, proc: subprocess.Popen, gpus: list[str], log) -> None:
        self.point, self.proc, self.gpus, self.log = point, proc, gpus, log


def run_sweep(sweep: Sweep, parallel: int, retry_failed: bool) -> int:
    """Run the points of ``sweep`` here; the exit status of the sweep (0: every point completed)."""
    from launcher.hardware import visible_gpus

    visible = visible_gpus()
    check_resources(sweep, parallel, visible)
    write_sweep(sweep)
    todo, other = to_run(sweep, retry_failed)
    n = len(sweep.points)
    click.echo(f"sweep {sweep.name}: {n} point{'s' if n > 1 else ''} in {sweep.dir}")
    skipped = {p.index: state for state, points in other.items() for p in points}
    for p in sweep.points:  # every point and its run directory first
        why = {"completed": "completed", "running": "training elsewhere: left to it",
               "failed": "failed: not rerun (--retry-failed reruns it)"}.get(skipped.get(p.index), "to run")  # fmt: skip
        click.echo(f"  [{p.index}] {shown(p)}: {why}, in {p.run_dir}")
    flag = signals.installed()
    free_gpus = [str(i) for i in range(visible or 0)]
    env_gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env_gpus is not None:
        free_gpus = [d.strip() for d in env_gpus.split(",") if d.strip() and d.strip() != "-1"]
    cores = os.cpu_count() or 1
    running: list[_Running] = []
    results: dict[int, int] = {}
    quiet = parallel > 1  # each point's output goes to its log file; one line per start and end here

    def forward(signum: int) -> None:
        for r in running:
            if r.proc.poll() is None:
                r.proc.send_signal(signum)

    if flag is not None:
        flag.forward, flag.abort = forward, False  # a second Ctrl-C is the points' to act on
    try:
        queue = list(todo)
        while queue or running:
            for r in list(running):
                code = r.proc.poll()
                if code is None:
                    continue
                running.remove(r)
                free_gpus.extend(r.gpus)
                if r.log is not None:
                    r.log.close()
                results[r.point.index] = _said_after(r.point, code, sweep, quiet)
            stopping = flag is not None and flag.requested
            while queue and len(running) < parallel and not stopping:
                p = queue.pop(0)
                state = point_state(Path(p.run_dir))
                if state == "running":  # another launch took it since
                    click.echo(f"  [{p.index}] {shown(p)}: training elsewhere: left to it")
                    continue
                need = _gpus_needed(p, len(free_gpus)) if free_gpus else 0
                gpus, free_gpus = free_gpus[:need], free_gpus[need:]
                env = dict(os.environ)
                if gpus:
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                if parallel > 1 and "OMP_NUM_THREADS" not in os.environ:
                    env["OMP_NUM_THREADS"] = str(max(1, cores // (parallel * max(1, p.procs))))
                env.setdefault("WANDB_RUN_GROUP", sweep.name)  # (log.wandb.group, if set, wins)
                log = None
                verb = "starts" if state == "pending" else "continues"
                if quiet:
                    (sweep.dir / LOGS_DIR).mkdir(exist_ok=True)
                    path = sweep.dir / LOGS_DIR / f"{p.index}.log"
                    log = open(path, "a")  # noqa: SIM115 (closed when the point ends)
                    click.echo(f"  [{p.index}] {shown(p)}: {verb} (output: {path})")
                else:
                    click.echo(f"  [{p.index}] {shown(p)}: {verb}")
                running.append(_Running(p, spawn.start_launch(sweep.argv(p), env, log), gpus, log))
            if stopping and not running:
                break
            time.sleep(POLL_S)
    finally:
        if flag is not None:
            flag.forward, flag.abort = None, True
    return _summary(sweep, results, flag)


def _said_after(point: Point, code: int, sweep: Sweep, quiet: bool) -> int:
    state = point_state(Path(point.run_dir))
    word = {EXIT_COMPLETED: "completed", EXIT_STOPPED: "stopped", EXIT_PREEMPTED: "preempted"}.get(code)
    if code == EXIT_BAD_INPUT and state == "running":
        word = "training elsewhere: left to it"
    elif word is None:
        word = f"failed (exit {code})"
        if quiet:
            word += f"; see {sweep.dir / LOGS_DIR / f'{point.index}.log'}"
    if code == EXIT_COMPLETED:
        from launcher.rundir import RunDir

        final = (RunDir(Path(point.run_dir)).read_summary() or {}).get("final_metrics") or {}
        metrics = " ".join(
            f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, (int, float)) and k.startswith(("val/", "test/"))
        )
        word += f" ({metrics})" if metrics else ""
    click.echo(f"  [{point.index}] {shown(point)}: {word}")
    return code


def _summary(sweep: Sweep, results: dict[int, int], flag) -> int:
    states = {p.index: point_state(Path(p.run_dir)) for p in sweep.points}
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s] = counts.get(s, 0) + 1
    click.echo(
        f"sweep {sweep.name}: " + ", ".join(f"{c} {s}" for s, c in sorted(counts.items()))
        + f" (launch status {sweep.dir})"
    )  # fmt: skip
    if flag is not None and flag.requested:
        return flag.exit_code
    if all(s == "completed" for s in states.values()):
        return EXIT_COMPLETED
    if any(c in (EXIT_STOPPED, EXIT_PREEMPTED) for c in results.values()):
        return max(c for c in results.values() if c in (EXIT_STOPPED, EXIT_PREEMPTED))
    return EXIT_FAILED
