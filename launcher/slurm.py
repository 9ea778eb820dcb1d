"""Slurm: render the batch script (pure), submit it, follow and cancel jobs; no torch.

How a ``--slurm`` run works (``slurm/README.md`` has the long version):

* ``launch ... --slurm`` writes ``config.yaml`` and ``submit.sbatch`` into the run directory and
  submits the script with ``sbatch --parsable``. The job ids go to ``slurm_jobs.json``.
* The script traps the warning signal first, exports ``MASTER_ADDR`` (first node of the
  allocation) and ``MASTER_PORT`` (spread by the job id), and starts one task per process on
  every node with ``srun``: each task is ``python -m launcher.runtime.worker RUN_DIR`` and turns
  ``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID`` into torch's ``RANK``/``WORLD_SIZE``/...
* On the warning signal (``--signal=B:USR2@lead``), a preemption or ``scancel``, the batch shell
  forwards the signal to ``srun``, which forwards it to every task; the ranks agree to stop at
  the next step boundary, save a checkpoint and exit with ``preempted``.
* Then ``python -m launcher.slurm after ...`` (in the batch shell, on the node of rank 0) reads
  ``summary.json`` and requeues the job (``scontrol requeue``) when it was preempted and
  ``slurm.max_requeues`` allows; the requeued job resumes from the run directory.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import click

from launcher.config import Config
from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, EXIT_FAILED, EXIT_PREEMPTED, LaunchError
from launcher.plan import Plan
from launcher.rundir import RunDir, write_atomic

SCRIPT_FILE = "submit.sbatch"
JOBS_FILE = "slurm_jobs.json"
CANCELLED_MARKER = ".cancelled"  # written by `launch cancel`: the job must not requeue itself
LOG_PATTERN = "logs/slurm-%j.out"
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"}
# The master port: a multiplicative hash of the job id (and the attempt) over 20000-59999, so
# that jobs with neighbouring ids do not collide (the last digits of the id would).
PORT_BASE, PORT_SPAN, PORT_MULT = 20000, 40000, 2654435761


def master_port(job_id: int, restarts: int = 0) -> int:
    """The port the batch script computes (it does the same arithmetic in bash)."""
    return PORT_BASE + (job_id * PORT_MULT + restarts * 7919) % PORT_SPAN


def job_name(cfg: Config) -> str:
    name = cfg.slurm.job_name or f"{cfg.recipe.split(':')[-1].split('/')[-1]}-{cfg.run.name or 'run'}"
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)[:100]


def _signal_name(sig: str) -> str:
    s = sig.upper()
    return s[3:] if s.startswith("SIG") else s


def sbatch_flags(cfg: Config, plan: Plan, run_dir: Path, workdir: Path) -> list[str]:
    """The #SBATCH flags, in a fixed order."""
    s = cfg.slurm
    flags = [
        f"--job-name={job_name(cfg)}",
        f"--nodes={plan.nodes}",
        f"--ntasks-per-node={plan.procs_per_node}",
    ]
    if s.cpus_per_task is not None:
        flags.append(f"--cpus-per-task={s.cpus_per_task}")
    if plan.device == "cuda":
        flags.append(f"--gpus-per-node={plan.procs_per_node}")
    for key in ("partition", "account", "qos", "time", "constraint", "mem"):
        value = getattr(s, key)
        if value is not None:
            flags.append(f"--{key}={value}")
    if s.exclusive:
        flags.append("--exclusive")
    flags += [
        f"--chdir={workdir}",
        f"--output={run_dir / LOG_PATTERN}",
        "--open-mode=append",  # a requeued job appends to the same file: history is kept
        "--requeue",
        f"--signal=B:{_signal_name(s.signal)}@{s.signal_lead_s}",
        "--export=ALL",  # the submitting environment (venv, WANDB_*, ...) reaches the job
    ]
    flags += list(s.extra)
    return flags


def _sbatch_line(flag: str) -> str:
    # sbatch reads these lines itself (bash sees comments); a value with spaces needs quotes.
    if " " in flag and "=" in flag:
        key, value = flag.split("=", 1)
        return f'#SBATCH {key}="{value}"'
    return f"#SBATCH {flag}"


def render_sbatch(cfg: Config, plan: Plan, run_dir: Path, python: str, workdir: Path) -> str:
    """The whole batch script (pure). Every value from the user that reaches a shell command is
    quoted with :func:`shlex.quote`; ``slurm.setup`` lines are shell by design."""
    run_dir = run_dir.absolute()
    for path in (run_dir, workdir, python):
        if not str(path).isprintable():
            raise LaunchError(f"{str(path)!r} must be one line of printable characters for a Slurm script")
    sig = _signal_name(cfg.slurm.signal)
    q = shlex.quote
    py, rd = q(python), q(str(run_dir))
    lines = [
        "#!/bin/bash",
        f"# Written by `launch` for the run in {run_dir}.",
        "# Resubmit with the same `launch` command (it resumes), not with sbatch directly.",
        *(_sbatch_line(f) for f in sbatch_flags(cfg, plan, run_dir, workdir)),
        "",
        "# First thing: catch the warning signal and termination (a signal can arrive within a second",
        "# of the start) and pass them to srun, which passes them to every task.",
        'launch_srun=""',
        'launch_forward() { if [ -n "$launch_srun" ]; then kill -s "$1" "$launch_srun" 2>/dev/null; fi; }',
        f"trap 'launch_forward {sig}' {sig}",
    ]
    if sig != "TERM":
        lines.append("trap 'launch_forward TERM' TERM")
    lines += ["", "# slurm.setup"] + list(cfg.slurm.setup) if cfg.slurm.setup else []
    lines += [
        "",
        "export LAUNCHER_SLURM=1",
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"MASTER_PORT=$(( {PORT_BASE} + (SLURM_JOB_ID * {PORT_MULT} + ${{SLURM_RESTART_COUNT:-0}} * 7919) % {PORT_SPAN} ))",
        "export MASTER_ADDR MASTER_PORT",
        "launch_started=$(date +%s)",
        'echo "launch: job $SLURM_JOB_ID attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )) on $SLURM_JOB_NODELIST,'
        ' rendezvous $MASTER_ADDR:$MASTER_PORT" >&2',
        f"srun --export=ALL --ntasks-per-node={plan.procs_per_node} {py} -m launcher.runtime.worker {rd} &",
        "launch_srun=$!",
        "# wait returns early when a trapped signal arrives: keep waiting until srun has exited",
        "launch_rc=0",
        'while kill -0 "$launch_srun" 2>/dev/null; do wait "$launch_srun"; launch_rc=$?; done',
        'wait "$launch_srun" 2>/dev/null; launch_last=$?  # (127: already collected above)',
        'if [ "$launch_last" -ne 127 ]; then launch_rc=$launch_last; fi',
        "# rank 0's node decides: requeue after a preemption (within slurm.max_requeues), else finish",
        f'{py} -m launcher.slurm after {rd} "$launch_started" "$launch_rc"',
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- job records


def read_jobs(run_dir: Path) -> list[dict]:
    try:
        return json.loads((run_dir / JOBS_FILE).read_text())
    except (OSError, ValueError):
        return []


def record_job(run_dir: Path, job_id: str) -> None:
    jobs = read_jobs(run_dir) + [{"job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    write_atomic(run_dir / JOBS_FILE, json.dumps(jobs, indent=1) + "\n")


def job_info(job_id: str) -> dict[str, str] | None:
    """``scontrol show job`` as a dict (None once Slurm has forgotten the job)."""
    try:
        r = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 or "JobId=" not in r.stdout:
        return None
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def active_job(run_dir: Path) -> tuple[str, dict] | None:
    """(job id, info) of this run's newest job if Slurm still has it pending or running."""
    jobs = read_jobs(run_dir)
    if not jobs or shutil.which("scontrol") is None:
        return None
    job_id = jobs[-1]["job_id"]
    info = job_info(job_id)
    if info and info.get("JobState") in ACTIVE_STATES:
        return job_id, info
    return None


# ---------------------------------------------------------------- submitting


def require_sbatch() -> None:
    if shutil.which("sbatch") is None:
        raise LaunchError(
            "--slurm needs Slurm's sbatch, which is not on PATH here; run on your cluster's login node "
            "(or install slurm-client), or drop --slurm to train on this machine"
        )


def submit(script: Path) -> str:
    """``sbatch --parsable SCRIPT`` -> job id; Slurm's refusal becomes one line."""
    try:
        r = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise LaunchError("sbatch did not answer within 120 s; is the Slurm controller reachable?") from None
    if r.returncode != 0:
        msg = " ".join(line.strip() for line in r.stderr.splitlines() if line.strip()) or f"exit {r.returncode}"
        raise LaunchError(f"Slurm refused the job: {msg}")
    return r.stdout.strip().split(";")[0]


def log_path(run_dir: Path, job_id: str) -> Path:
    return run_dir / LOG_PATTERN.replace("%j", str(job_id))


def submit_run(cfg: Config, plan: Plan, prepared, dry_run: bool) -> int:
    """``launch ... --slurm``: write config.yaml and submit.sbatch, sbatch it, say how to follow it."""
    from launcher.config import to_yaml
    from launcher.rundir import global_batch_line, write_config

    run_path = prepared.run_dir.path.absolute()
    python = cfg.slurm.python or sys.executable
    script = render_sbatch(cfg, plan, run_path, python, Path.cwd())
    if dry_run:
        click.echo("# resolved config")
        click.echo(to_yaml(cfg), nl=False)
        what = {"new": "new run", "resume": "resumes this run", "completed": "already completed"}[prepared.state]
        click.echo(f"# run directory: {run_path} ({what})")
        click.echo(f"# {SCRIPT_FILE} (submitted with: sbatch --parsable {run_path / SCRIPT_FILE}):")
        click.echo(script, nl=False)
        return EXIT_COMPLETED
    if prepared.state == "completed":
        click.echo(f"launch: {run_path} is already complete; nothing to submit.")
        click.echo("        To train again, pass another run.name=... or remove that directory.")
        return EXIT_COMPLETED
    active = active_job(run_path)
    if active is not None:
        job_id, info = active
        click.echo(f"launch: {run_path} already has Slurm job {job_id} ({info.get('JobState', '?').lower()}).")
        click.echo(f"        follow: launch status {run_path}   tail -f {log_path(run_path, job_id)}")
        return EXIT_COMPLETED
    require_sbatch()
    fresh = prepared.state == "new"
    write_config(prepared, cfg, plan.world_size)
    try:
        (run_path / "logs").mkdir(exist_ok=True)  # Slurm does not create the output file's directory
        write_atomic(run_path / SCRIPT_FILE, script)
        (run_path / CANCELLED_MARKER).unlink(missing_ok=True)
        job_id = submit(run_path / SCRIPT_FILE)
    except LaunchError:
        if fresh:
            shutil.rmtree(run_path, ignore_errors=True)  # nothing of value in it yet
        raise
    record_job(run_path, job_id)
    click.echo(f"launch: submitted Slurm job {job_id}: {global_batch_line(cfg, plan.world_size)}")
    click.echo(f"  run directory: {run_path}")
    click.echo(f"  log:           {log_path(run_path, job_id)}")
    click.echo(f"  follow:        launch status {run_path}   (or: tail -f {log_path(run_path, job_id)})")
    click.echo(f"  cancel:        launch cancel {run_path}")
    return EXIT_COMPLETED


# ---------------------------------------------------------------- after an attempt (in the job)


def decide_after(summary: dict | None, restarts: int, max_requeues: int, cancelled: bool) -> tuple[bool, str]:
    """(requeue?, what to say) after srun ended. Pure."""
    status = (summary or {}).get("status")
    if status == "completed":
        return False, "completed"
    if status == "failed":
        return False, f"failed ({summary.get('reason') or 'see the log above'}); not requeued"
    if status in ("preempted", "stopped"):
        step = summary.get("global_step")
        if cancelled:
            return False, f"cancelled at step {step}; run the same launch command to resume"
        if restarts >= max_requeues:
            return False, (
                f"{status} at step {step}; slurm.max_requeues={max_requeues} reached, not requeued: "
                "run the same launch command to resume"
            )
        return True, f"{status} at step {step}; requeueing (requeue {restarts + 1} of at most {max_requeues})"
    return False, "ended without a summary (killed, or crashed before training); not requeued"


def after(run_dir: Path, started: float, rc: int, environ=os.environ) -> int:
    """In the batch script once srun has ended: requeue after a preemption; the script's exit code."""
    from launcher import yamlio

    rd = RunDir(run_dir)
    summary = None
    try:
        if rd.summary.stat().st_mtime >= started - 1:
            summary = rd.read_summary()
    except OSError:
        pass
    try:
        max_requeues = int((yamlio.load(rd.config.read_text()) or {}).get("slurm", {}).get("max_requeues", 3))
    except (OSError, ValueError, yamlio.YAMLError):
        max_requeues = 0
    restarts = int(environ.get("SLURM_RESTART_COUNT", "0") or 0)
    cancelled = (run_dir / CANCELLED_MARKER).exists()
    requeue, message = decide_after(summary, restarts, max_requeues, cancelled)
    print(f"launch: {message}", file=sys.stderr, flush=True)
    if requeue:
        job_id = environ.get("SLURM_JOB_ID", "")
        r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"launch: scontrol requeue {job_id} failed: {r.stderr.strip()}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    status = (summary or {}).get("status")
    if status == "completed":
        return EXIT_COMPLETED
    if status in ("preempted", "stopped"):
        return EXIT_PREEMPTED
    return rc if rc else EXIT_FAILED


# ---------------------------------------------------------------- `launch status` / `launch cancel`


def _run_dir_arg(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise LaunchError(f"{path} does not exist; pass a run directory (runs/<recipe>/<name>)")
    if not RunDir(p).config.is_file():
        raise LaunchError(f"{path} is not a run directory (no config.yaml); pass runs/<recipe>/<name>")
    return p


def _last_metrics(rd: RunDir) -> dict | None:
    try:
        with open(rd.metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _fmt(values: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir")
def status_command(run_dir: str) -> int:
    """Show a run: its status, progress, newest checkpoint and, for Slurm runs, the job."""
    path = _run_dir_arg(run_dir)
    rd = RunDir(path)
    summary = rd.read_summary() or {}
    jobs = read_jobs(path)
    info = job_info(jobs[-1]["job_id"]) if jobs and shutil.which("scontrol") else None
    state = summary.get("status", "not finished")
    if info and info.get("JobState") in ACTIVE_STATES:
        state = info["JobState"].lower()
    click.echo(f"run:        {path}")
    click.echo(f"status:     {state}" + (f" ({summary['reason']})" if summary.get("reason") else ""))
    last = _last_metrics(rd)
    if last:
        click.echo(f"last log:   {_fmt(last)}")
    ckpts = rd.complete_checkpoints()
    click.echo(f"checkpoint: {ckpts[0] if ckpts else 'none yet'}")
    if summary.get("final_metrics"):
        click.echo(f"final:      {_fmt(summary['final_metrics'])}")
    if jobs:
        job_id = jobs[-1]["job_id"]
        if info:
            click.echo(
                f"slurm job:  {job_id} {info.get('JobState')} on {info.get('NodeList') or '-'}, "
                f"restarts {info.get('Restarts', '0')}, run time {info.get('RunTime', '-')}"
                + (f", reason {info['Reason']}" if info.get("Reason") not in (None, "None") else "")
            )
        else:
            click.echo(f"slurm job:  {job_id} (no longer known to Slurm)")
        click.echo(f"slurm log:  {log_path(path, job_id)}")
        if len(jobs) > 1:
            click.echo(f"submitted:  {len(jobs)} times ({', '.join(j['job_id'] for j in jobs)})")
    return EXIT_COMPLETED


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir")
def cancel_command(run_dir: str) -> int:
    """Cancel a run's Slurm job. It is not requeued; the same `launch` command resumes it later."""
    path = _run_dir_arg(run_dir)
    if not read_jobs(path):
        raise LaunchError(f"{path} was not submitted to Slurm; stop a run on this machine with Ctrl-C")
    if shutil.which("scancel") is None:
        raise LaunchError("scancel is not on PATH here; run `launch cancel` on the cluster's login node")
    active = active_job(path)
    if active is None:
        click.echo(f"launch: no pending or running Slurm job for {path}; nothing to cancel")
        return EXIT_COMPLETED
    job_id, info = active
    (path / CANCELLED_MARKER).write_text(f"{job_id}\n")
    r = subprocess.run(["scancel", job_id], capture_output=True, text=True)
    if r.returncode != 0:
        raise LaunchError(f"scancel {job_id} failed: {r.stderr.strip()}")
    click.echo(f"launch: cancelled Slurm job {job_id} ({info.get('JobState', '?').lower()}); it will not requeue.")
    click.echo("        Running the same launch command resumes from the newest checkpoint.")
    return EXIT_COMPLETED


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "after":
        return after(Path(argv[1]), float(argv[2]), int(argv[3]))
    print("usage: python -m launcher.slurm after RUN_DIR STARTED RC", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
