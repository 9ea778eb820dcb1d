"""``launch ... --sweep --slurm``: a sweep as one Slurm job array, submitted once.

Array task N trains point N in that point's own run directory, with the batch script and the
preemption contract of a single ``--slurm`` job (launcher/slurm.py: warning signal -> checkpoint ->
``scontrol requeue`` of that task alone -> exact resume), so the submitting shell can exit at once.
Every point gets ``config.yaml``/``plan.json`` at submission and its task's id (``ARRAY_TASK``) in
its ``slurm_jobs.json``: ``launch status`` / ``launch cancel`` work on one point as on any run. The
same command again submits only the points that have no job pending or running and are not
complete (failed ones only with ``--retry-failed``): never a second job for a point.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from launcher.errors import EXIT_COMPLETED, LaunchError
from launcher.rundir import LOGS_DIR, SLURM_CANCELLED_MARKER, SLURM_SCRIPT_FILE, inspect_run_dir, write_atomic
from launcher.sweep import Point, Sweep, point_state, write_sweep

JOBS_FILE = "slurm_jobs.json"  # in the sweep directory: the arrays submitted, with their points


def _shape(cfg, plan) -> list[str]:
    """The sbatch flags that every task of one array must share."""
    from launcher import slurm

    return [
        f
        for f in slurm.sbatch_flags(cfg, plan, Path("."), Path("."))
        if not f.startswith(("--job-name=", "--output=", "--chdir="))
    ]


def array_spec(indices: list[int], parallel: int | None) -> str:
    """``0-3%2`` or ``1,4,5%2``: the task ids (ranges where they run on), at most ``parallel`` at once."""
    parts, start = [], None
    for n, i in enumerate(indices):
        if start is None:
            start = i
        if n + 1 == len(indices) or indices[n + 1] != i + 1:
            parts.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(parts) + (f"%{parallel}" if parallel else "")


def read_arrays(sweep: Sweep) -> list[dict]:
    try:
        data = json.loads((sweep.dir / JOBS_FILE).read_text())
        return data if isinstance(data, list) else []
    except (OSError, ValueError):
        return []


def _states(sweep: Sweep, retry_failed: bool) -> tuple[list[Point], dict[str, list[tuple[Point, str]]]]:
    """(points to submit, the others by why not)."""
    from launcher import slurm

    todo, other = [], {}
    for p in sweep.points:
        run_dir = Path(p.run_dir)
        try:
            active = slurm.active_job(run_dir)
        except slurm.DamagedJobsFile as e:
            raise LaunchError(f"{e}; check `squeue -u $USER`, then remove it and run the sweep command again") from None
        if active is not None:
            job_id, info = active
            other.setdefault("queued", []).append((p, f"job {job_id} {info.get('JobState', '?').lower()}"))
            continue
        state = point_state(run_dir)
        if state == "completed" or state == "running" or (state == "failed" and not retry_failed):
            other.setdefault(state, []).append((p, state))
        else:
            todo.append(p)
    return todo, other


def submit_sweep(sweep: Sweep, parallel: int | None, retry_failed: bool, dry_run: bool) -> int:
    from launcher import slurm
    from launcher.plan import make_plan
    from launcher.rundir import write_config
    from launcher.sweep_run import shown

    plans = {p.index: make_plan(p.cfg, gpus=None) for p in sweep.points}
    shapes = {p.index: _shape(p.cfg, plans[p.index]) for p in sweep.points}
    first = sweep.points[0]
    for p in sweep.points[1:]:
        if shapes[p.index] != shapes[first.index]:
            differ = sorted(set(shapes[p.index]) ^ set(shapes[first.index]))
            raise LaunchError(
                f"the points of a --slurm sweep share one job array, so one job shape; [{p.index}] {shown(p)} "
                f"asks for {', '.join(differ)} unlike [{first.index}]: sweep that key without --slurm, or one sweep per value"
            )
    todo, other = _states(sweep, retry_failed)
    python = first.cfg.slurm.python or sys.executable
    n = len(sweep.points)
    click.echo(f"sweep {sweep.name}: {n} point{'s' if n > 1 else ''} in {sweep.dir}")
    for state, items in other.items():
        for p, why in items:
            said = {"failed": "failed: not resubmitted (--retry-failed resubmits it)",
                    "running": "training elsewhere: left to it"}.get(state, why)  # fmt: skip
            click.echo(f"  [{p.index}] {shown(p)}: {said}")
    if not todo:
        click.echo("  nothing to submit")
        return EXIT_COMPLETED
    spec = array_spec([p.index for p in todo], parallel)
    array = slurm.SweepArray(slurm._job_name_chars(sweep.name)[:100], spec, {p.index: Path(p.run_dir) for p in todo})
    script = slurm.render_sbatch(first.cfg, plans[first.index], sweep.dir.absolute(), python, Path.cwd(), array)
    if dry_run:
        click.echo(f"# {SLURM_SCRIPT_FILE} (submitted with: sbatch --parsable {sweep.dir / SLURM_SCRIPT_FILE}):")
        click.echo(script, nl=False)
        return EXIT_COMPLETED
    slurm.check_python(python)
    slurm.require_sbatch()
    warning = slurm.check_runnable(script, first.cfg, plans[first.index])
    from launcher import runlock

    prepared = {}
    for p in todo:
        runlock.check(Path(p.run_dir))  # a live local run owns it: one line, exit 2
        prepared[p.index] = inspect_run_dir(p.cfg, Path(p.run_dir))
    write_sweep(sweep)
    (sweep.dir / LOGS_DIR).mkdir(exist_ok=True)
    for p in todo:
        run_dir = Path(p.run_dir)
        write_config(prepared[p.index], p.cfg, plans[p.index])
        (run_dir / LOGS_DIR).mkdir(exist_ok=True)
        (run_dir / SLURM_CANCELLED_MARKER).unlink(missing_ok=True)
        for old in run_dir.glob(f"{slurm.STOP_FILE_PREFIX}*"):
            old.unlink(missing_ok=True)
    write_atomic(sweep.dir / SLURM_SCRIPT_FILE, script)
    import os

    os.environ.setdefault("WANDB_RUN_GROUP", sweep.name)  # every point in one wandb group (--export=ALL)
    job_id = slurm.submit(sweep.dir / SLURM_SCRIPT_FILE)
    for p in todo:
        slurm.record_job(Path(p.run_dir), f"{job_id}_{p.index}")
    arrays = read_arrays(sweep)
    arrays.append({"job_id": job_id, "array": spec, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_atomic(sweep.dir / JOBS_FILE, json.dumps(arrays, indent=1) + "\n")
    if warning:
        click.echo(f"launch: warning: {warning}", err=True)
    click.echo(
        f"launch: submitted Slurm job array {job_id} (--array={spec}): {len(todo)} point{'s' if len(todo) > 1 else ''}"
    )
    for p in todo:
        click.echo(f"  [{p.index}] {shown(p)}: job {job_id}_{p.index}, {p.run_dir}")
    click.echo(f"  follow: launch status {sweep.dir}    cancel: launch cancel {sweep.dir}")
    return EXIT_COMPLETED


def cancel_sweep(path: Path) -> int:
    """``launch cancel SWEEP_DIR``: every point's pending or running task; none requeues."""
    import shutil
    import subprocess

    from launcher import slurm
    from launcher.sweep import read_sweep

    sweep = read_sweep(path)
    if not read_arrays(sweep):
        raise LaunchError(f"{path} was not submitted to Slurm; stop a sweep on this machine with Ctrl-C")
    if shutil.which("scancel") is None:
        raise LaunchError("scancel is not on PATH here; run `launch cancel` on the cluster's login node")
    cancelled = []
    for p in sweep.points:
        try:
            active = slurm.active_job(Path(p.run_dir))
        except slurm.DamagedJobsFile:
            continue
        if active is None:
            continue
        job_id, _ = active
        (Path(p.run_dir) / SLURM_CANCELLED_MARKER).write_text(f"{job_id}\n")  # (before scancel: no requeue)
        cancelled.append(job_id)
    if not cancelled:
        click.echo(f"launch: no pending or running Slurm job for the points of {path}; nothing to cancel")
        return EXIT_COMPLETED
    r = subprocess.run(["scancel", *cancelled], capture_output=True, text=True)
    if r.returncode != 0:
        raise LaunchError(f"scancel {' '.join(cancelled)} failed: {r.stderr.strip()}")
    click.echo(
        f"launch: cancelled {len(cancelled)} Slurm task{'s' if len(cancelled) > 1 else ''} ({', '.join(cancelled)}); none requeues."
    )
    click.echo("        Running the same sweep command resumes them from their newest checkpoints.")
    return EXIT_COMPLETED
