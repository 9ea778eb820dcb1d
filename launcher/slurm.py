"""Slurm: render the batch script (pure), submit it, follow and cancel jobs; no torch.

How a ``--slurm`` run works (``slurm/README.md`` has the long version):

* ``launch ... --slurm`` writes ``config.yaml`` and ``submit.sbatch`` into the run directory and
  submits the script with ``sbatch --parsable``. The job ids go to ``slurm_jobs.json``.
* The script's first lines trap the stop signals (``slurm.signal``, USR2, TERM, INT, HUP); the
  handler records the request in ``RUN_DIR/.stop-JOB.RESTART`` and asks srun for a stop with USR2
  (never TERM: srun kills the tasks on TERM). A stop before srun starts (during ``slurm.setup``)
  means srun is not started. The script exports ``MASTER_ADDR`` (first node of the allocation) and
  ``MASTER_PORT`` (spread by the job id), and starts one task per process on every node with
  ``srun``: each task is ``python -m launcher.runtime.worker RUN_DIR`` (behind ``sh`` that ignores
  the stop signals until the worker handles them) and turns ``SLURM_PROCID``/``SLURM_NTASKS``/
  ``SLURM_LOCALID`` into torch's ``RANK``/``WORLD_SIZE``/...; the ranks agree to stop at the next
  step boundary, save a checkpoint and exit with ``preempted`` (before the first step: without
  training).
* Then ``python -m launcher.slurm after ...`` (in the batch shell, on the node of rank 0) decides
  with :func:`decide_after` from this attempt's ``summary.json``, the stop file, the job's state in
  Slurm and the ``launch cancel`` marker: requeue (``scontrol requeue``) after a preemption within
  ``slurm.max_requeues``; never after a failure, a ``scancel`` or ``launch cancel``, nor when Slurm
  requeues the job itself; it rewrites ``summary.json`` when the workers could not say what
  happened, so that ``launch status`` tells the truth about the latest attempt.
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
from dataclasses import dataclass
from pathlib import Path

import click

from launcher.config import Config
from launcher.errors import (
    EXIT_BAD_INPUT,
    EXIT_COMPLETED,
    EXIT_FAILED,
    EXIT_PREEMPTED,
    EXIT_STOPPED,
    LaunchError,
)
from launcher.plan import Plan
from launcher.rundir import (
    LOGS_DIR,
    SLURM_CANCELLED_MARKER,
    SLURM_JOBS_FILE,
    SLURM_LOG_PATTERN,
    SLURM_SCRIPT_FILE,
    RunDir,
    missing_dirs,
    remove_empty,
    write_atomic,
)

ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED"}
# The master port: a multiplicative hash of the job id (and the attempt) over 10000-31999, so
# that jobs with neighbouring ids do not collide (the last digits of the id would), and below
# Linux's ephemeral range (32768-60999 by default), where any client socket on the node may
# hold the port (EADDRINUSE at the rendezvous: seen on the test cluster).
PORT_BASE, PORT_SPAN, PORT_MULT = 10000, 22000, 2654435761


def master_port(job_id: int, restarts: int = 0) -> int:
    """The port the batch script computes (it does the same arithmetic in bash)."""
    return PORT_BASE + (job_id * PORT_MULT + restarts * 7919) % PORT_SPAN


def _job_name_chars(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def _secret_values(cfg: Config) -> list[str]:
    """The values of the keys that look like credentials (``SECRET_KEY``), as they are and as they
    would look in a name."""
    from launcher.config import SECRET_KEY, flatten, to_plain

    found = set()
    for key, value in flatten(to_plain(cfg)).items():
        if SECRET_KEY.search(key) and isinstance(value, (str, int, float)) and len(str(value)) >= 3:
            found |= {str(value), _job_name_chars(str(value))}
    return sorted(found, key=len, reverse=True)


def job_name(cfg: Config) -> str:
    """``--job-name``: slurm.job_name, or recipe-run.name; a credential's value never appears in the
    default (``squeue`` shows the job name to every user of the cluster)."""
    if cfg.slurm.job_name:
        return _job_name_chars(cfg.slurm.job_name)[:100]
    name = _job_name_chars(f"{cfg.recipe.split(':')[-1].split('/')[-1]}-{cfg.run.name or 'run'}")
    for secret in _secret_values(cfg):
        name = name.replace(secret, "redacted")
    return name[:100]


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
        f"--output={run_dir / SLURM_LOG_PATTERN}",
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


# The signals the batch shell treats as a stop request (besides slurm.signal): Slurm's TERM (scancel,
# scontrol requeue, preemption when sent to the batch shell), INT and HUP, and USR2.
STOP_SIGNALS = ("USR2", "TERM", "INT", "HUP")
STOP_FILE_PREFIX = ".stop-"  # RUN_DIR/.stop-JOBID.RESTART: a stop the batch shell received in that attempt
# A stop in srun's first moments is passed on this much later: srun dies of a signal that arrives
# before it has installed its own handling.
SRUN_GRACE_S = 1


@dataclass(frozen=True)
class SweepArray:
    """What a sweep's job array adds to the batch script (launcher/sweep_slurm.py)."""

    name: str  # the job name: the sweep's
    spec: str  # --array=..., e.g. 0-3%2 or 1,4,5%2
    run_dirs: dict[int, Path]  # array task id (= point index) -> the point's run directory


def stop_file(run_dir: Path, job_id: str, restart: int) -> Path:
    """The file in which the batch script records a stop request of one attempt."""
    return run_dir / f"{STOP_FILE_PREFIX}{job_id}.{restart}"


def render_sbatch(
    cfg: Config, plan: Plan, run_dir: Path, python: str, workdir: Path, array: SweepArray | None = None
) -> str:
    """The whole batch script (pure). Every value from the user that reaches a shell command is
    quoted with :func:`shlex.quote`; ``slurm.setup`` lines are shell by design. ``array``: the
    script of a sweep's job array (``run_dir``: the sweep directory), each task training the run
    directory of its point (task N: point N), its output in that run directory's logs/."""
    run_dir = run_dir.absolute()
    dirs = [Path(d).absolute() for d in array.run_dirs.values()] if array else []
    for path in (run_dir, workdir, python, *dirs):
        if not str(path).isprintable():
            raise LaunchError(f"{str(path)!r} must be one line of printable characters for a Slurm script")
    sig = _signal_name(cfg.slurm.signal)
    q = shlex.quote
    py = q(python)
    flags = sbatch_flags(cfg, plan, run_dir, workdir)
    choose: list[str] = []
    if array is None:
        rd, stop = q(str(run_dir)), q(str(run_dir / STOP_FILE_PREFIX))
        what = f"the run in {run_dir}"
    else:
        rd, stop = '"$LAUNCHER_RUN_DIR"', f'"$LAUNCHER_RUN_DIR"/{STOP_FILE_PREFIX}'
        what = f"the sweep in {run_dir} (a job array: task N trains point N)"
        flags = [
            f"--job-name={array.name}" if f.startswith("--job-name=") else
            f"--output={run_dir / LOGS_DIR / 'slurm-%A_%a.out'}" if f.startswith("--output=") else f
            for f in flags
        ]  # fmt: skip
        flags.insert(1, f"--array={array.spec}")
        choose = [
            "# this task's point: its run directory, and its output there from here on",
            'case "$SLURM_ARRAY_TASK_ID" in',
            *(f"  {i}) LAUNCHER_RUN_DIR={q(str(d))} ;;" for i, d in zip(array.run_dirs, dirs, strict=True)),
            '  *) echo "launch: array task $SLURM_ARRAY_TASK_ID is no point of this sweep" >&2; exit 2 ;;',
            "esac",
            "export LAUNCHER_RUN_DIR",
            f'exec >> "$LAUNCHER_RUN_DIR/{LOGS_DIR}/slurm-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out" 2>&1',
        ]
    traps = [sig] + [s for s in STOP_SIGNALS if s != sig]
    lines = [
        "#!/bin/bash",
        f"# Written by `launch` for {what}.",
        "# Resubmit with the same `launch` command (it resumes), not with sbatch directly.",
        *(_sbatch_line(f) for f in flags),
        "",
        *choose,
        "# First thing: catch the stop signals (one can arrive within a second of the start, or while",
        "# slurm.setup runs). The handler records the request in LAUNCHER_STOP_FILE (the workers read it",
        "# when they start training) and asks srun for a stop with USR2, which srun passes to every task;",
        "# never TERM, which srun answers by killing the tasks. A signal in srun's first ~20 ms kills srun,",
        f"# so one that comes that early is passed on {SRUN_GRACE_S} s later.",
        f'export LAUNCHER_STOP_FILE={stop}"{"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" if array else "$SLURM_JOB_ID"}'
        '.${SLURM_RESTART_COUNT:-0}"',
        'launch_srun=""',
        "launch_srun_at=0",
        "launch_stop() {",
        '  [ -e "$LAUNCHER_STOP_FILE" ] || echo "$1" > "$LAUNCHER_STOP_FILE"',
        '  echo "launch: SIG$1 received: stop requested" >&2',
        '  if [ -z "$launch_srun" ]; then return; fi',
        f'  if (( SECONDS - launch_srun_at > {SRUN_GRACE_S} )); then kill -s USR2 "$launch_srun" 2>/dev/null',
        f'  else (sleep {SRUN_GRACE_S}; kill -s USR2 "$launch_srun" 2>/dev/null) & fi',
        "}",
        *(f"trap 'launch_stop {s}' {s}" for s in traps),
    ]
    lines += ["", "# slurm.setup"] + list(cfg.slurm.setup) if cfg.slurm.setup else []
    lines += [
        "",
        "export LAUNCHER_SLURM=1",
        'MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        f"MASTER_PORT=$(( {PORT_BASE} + (SLURM_JOB_ID * {PORT_MULT} + ${{SLURM_RESTART_COUNT:-0}} * 7919) % {PORT_SPAN} ))",
        "export MASTER_ADDR MASTER_PORT",
        "launch_started=$(date +%s)",
        f'echo "launch: job {"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" if array else "$SLURM_JOB_ID"}'
        ' attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 )) on $SLURM_JOB_NODELIST, rendezvous $MASTER_ADDR:$MASTER_PORT" >&2',
        "launch_rc=0",
        'if [ -e "$LAUNCHER_STOP_FILE" ]; then',
        '  echo "launch: stop requested before training started; srun not started" >&2',
        "else",
        "  # each task ignores the stop signals until the worker has installed its handler (one in a",
        "  # task's first ~0.2 s would kill it); a stop it misses, it reads from LAUNCHER_STOP_FILE",
        "  launch_srun_at=$SECONDS",
        f"  srun --export=ALL --ntasks-per-node={plan.procs_per_node} /bin/sh -c "
        f"""'trap "" {" ".join(STOP_SIGNALS)}; exec "$@"' launch-worker {py} -m launcher.runtime.worker {rd} &""",
        "  launch_srun=$!",
        "  # wait returns early when a trapped signal arrives: keep waiting until srun has exited",
        '  while kill -0 "$launch_srun" 2>/dev/null; do wait "$launch_srun"; launch_rc=$?; done',
        '  wait "$launch_srun" 2>/dev/null; launch_last=$?  # (127: already collected above)',
        '  if [ "$launch_last" -ne 127 ]; then launch_rc=$launch_last; fi',
        "fi",
        "# srun has ended: a stop signal from here on changes nothing (not even the TERM of our own requeue)",
        f"trap '' {' '.join(traps)}",
        "# rank 0's node decides: requeue after a preemption (within slurm.max_requeues), else finish",
        f'{py} -m launcher.slurm after {rd} "$launch_started" "$launch_rc"',
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- job records


# a Slurm job id as sbatch prints it (an array or heterogeneous job: 123_4, 123+0); anything else in
# slurm_jobs.json would reach scontrol and scancel as an argument (e.g. --user=me: every job of yours)
_JOB_ID = re.compile(r"[0-9]+(?:[_+][0-9]+)?")


class DamagedJobsFile(LaunchError):
    """``slurm_jobs.json`` exists but is not the list of jobs ``launch`` writes."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path} is damaged ({why})")
        self.path, self.why = path, why


def read_jobs(run_dir: Path) -> list[dict]:
    """The jobs submitted for a run, oldest first (``[]``: none); :class:`DamagedJobsFile` when the
    file is there but unreadable, empty, not JSON, or not a list of ``{"job_id": ...}``."""
    path = run_dir / SLURM_JOBS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as e:  # (UnicodeDecodeError is a ValueError)
        raise DamagedJobsFile(path, getattr(e, "strerror", None) or "not text") from None
    if not text.strip():
        raise DamagedJobsFile(path, "empty")
    try:
        jobs = json.loads(text)
    except ValueError:
        raise DamagedJobsFile(path, "not JSON") from None
    if not isinstance(jobs, list) or not all(
        isinstance(j, dict) and isinstance(j.get("job_id"), (str, int)) and _JOB_ID.fullmatch(str(j["job_id"]))
        for j in jobs
    ):
        raise DamagedJobsFile(path, 'not a JSON list of {"job_id": ...} records')
    return [{**j, "job_id": str(j["job_id"])} for j in jobs]


def record_job(run_dir: Path, job_id: str) -> None:
    try:
        jobs = read_jobs(run_dir)
    except DamagedJobsFile:
        jobs = []  # (checked before submitting; the job just submitted must be recorded in any case)
    jobs.append({"job_id": job_id, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    write_atomic(run_dir / SLURM_JOBS_FILE, json.dumps(jobs, indent=1) + "\n")


def job_info(job_id: str) -> dict[str, str] | None:
    """``scontrol show job`` as a dict (None once Slurm has forgotten the job)."""
    try:
        r = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if r.returncode != 0 or "JobId=" not in r.stdout:
        return None
    return dict(re.findall(r"(\w+)=(\S*)", r.stdout))


def slurm_seconds(value: str | None) -> int | None:
    """Slurm's durations (``RunTime``, ``TimeLimit``: MM:SS, HH:MM:SS, D-HH:MM:SS) in seconds; None
    for UNLIMITED or anything else."""
    m = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", value or "")
    if not m:
        return None
    days, hours, minutes, seconds = (int(x or 0) for x in m.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def completing_means(info: dict[str, str], accounted: str | None = None) -> str:
    """Why a job is COMPLETING while its batch script still runs (pure): ``scontrol show job`` then
    shows the COMPLETING flag, not the state under it (CANCELLED after ``scancel``, the same JobState
    a finished job shows), and ``squeue --json`` of Slurm 22.05 shows the same. ``accounted``:
    what ``sacct`` says, where the cluster has accounting. Slurm's own requeue (``scontrol requeue``,
    a preemption, a node failure) raises ``Restarts`` and is told apart by the caller; what is left
    is ``scancel`` or the time limit (``RunTime`` reached ``TimeLimit``)."""
    if accounted and accounted not in ("RUNNING", "COMPLETING", "PENDING", "REQUEUED", "RESIZING", "SUSPENDED"):
        return accounted
    run, limit = slurm_seconds(info.get("RunTime")), slurm_seconds(info.get("TimeLimit"))
    if run is not None and limit is not None and run >= limit - 1:
        return "TIMEOUT"
    return "CANCELLED"


def base_state(job_id: str, info: dict[str, str] | None) -> str | None:
    """The job's state now, from inside the job: JobState, with COMPLETING resolved
    (:func:`completing_means`; ``sacct`` asked where there is accounting)."""
    state = (info or {}).get("JobState")
    if state != "COMPLETING":
        return state
    accounted = None
    if shutil.which("sacct"):
        try:
            r = subprocess.run(
                ["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            words = r.stdout.split() if r.returncode == 0 else []
            accounted = words[0] if words else None  # "CANCELLED by 1000" -> CANCELLED
        except (OSError, subprocess.TimeoutExpired):
            pass
    return completing_means(info or {}, accounted)


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
        raise LaunchError(_refusal(_said(r.stderr, f"sbatch exited with {r.returncode}")))
    return r.stdout.strip().split(";")[0]


def check_python(python: str) -> None:
    """``slurm.python`` given as a path must be an executable file here: the nodes normally see the
    submitting machine's filesystem (the script's paths are absolute too). A bare name (``python``)
    is looked up on the nodes' PATH after ``slurm.setup`` and is not checked."""
    if "/" not in python:
        return
    fix = "point slurm.python at the interpreter the nodes run (e.g. /path/to/venv/bin/python), or leave it unset"
    path = Path(python)
    if not path.exists():
        raise LaunchError(f"slurm.python={python} does not exist here (the nodes see this filesystem); {fix}")
    if path.is_dir() or not os.access(path, os.X_OK):
        what = "a directory" if path.is_dir() else "not executable"
        raise LaunchError(f"slurm.python={python} is {what}; {fix}")


def _slurm_words(stderr: str) -> list[str]:
    """sbatch's error lines without their prefixes, each said once."""
    words: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        for prefix in ("sbatch: error: ", "allocation failure: ", "Batch job submission failed: "):
            if line.startswith(prefix):
                line = line[len(prefix) :]
        if line and line.lower() not in (w.lower() for w in words):
            words.append(line)
    return words


def _said(stderr: str, otherwise: str) -> str:
    """What sbatch said, on one line: its ``sbatch: error:`` lines if any, else every line."""
    errors = [ln for ln in stderr.splitlines() if ln.strip().startswith("sbatch: error: ")]
    return "; ".join(_slurm_words("\n".join(errors or stderr.splitlines()))) or otherwise


def _refusal(said: str) -> str:
    fix = next((f for key, f in _REFUSAL_FIXES if key in said.lower()), None)
    fix = fix or "check the slurm.* settings (`launch ... --slurm --dry-run` prints the batch script)"
    return f"Slurm refused the job: {said}; {fix}"


# What to change for Slurm's refusals, by a word of Slurm's message (the first that matches).
_REFUSAL_FIXES = (
    ("account", "check slurm.account (`sacctmgr show assoc user=$USER`)"),
    ("association", "check slurm.account and slurm.qos (`sacctmgr show assoc user=$USER`)"),
    ("qos", "check slurm.qos (`sacctmgr show assoc user=$USER`)"),
    ("partition", "pick one that `sinfo -s` lists (slurm.partition=NAME)"),
    ("generic resource", "the partition has no such GPUs: check --gpus and slurm.partition (`sinfo -o '%P %G'`)"),
    ("feature", "check slurm.constraint (`sinfo -o '%P %f'` lists the node features)"),
    ("reservation", "check the --reservation in slurm.extra (`scontrol show reservation`)"),
    ("time limit", "lower slurm.time (`sinfo -o '%P %l'` lists the limits)"),
    ("memory", "lower slurm.mem (`sinfo -o '%P %m'` lists the memory per node in MB)"),
)
_NODE_CONFIG = "requested node configuration is not available"
# sinfo states in which a node takes no new job now, but may again later
_UNUSABLE = tuple("down drain fail maint reboot power unk inval future reserved".split())


def _partitions() -> dict[str, dict]:
    """``sinfo``: per partition, its nodes, the most CPUs and memory (MB) a node has, how many nodes
    take no new jobs now (down, drained, ...), and which one is the default; {} if sinfo fails."""
    try:
        r = subprocess.run(["sinfo", "-h", "-o", "%P|%D|%c|%m|%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    parts: dict[str, dict] = {}
    for line in r.stdout.splitlines() if r.returncode == 0 else []:
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        name, nodes, cpus, mem, state = fields
        part = parts.setdefault(name.rstrip("*"), {"nodes": 0, "cpus": 0, "mem": 0, "unusable": 0})
        part["default"] = part.get("default") or name.endswith("*")
        count = int(nodes) if nodes.isdigit() else 0
        part["nodes"] += count
        part["cpus"] = max(part["cpus"], int(cpus.rstrip("+")) if cpus.rstrip("+").isdigit() else 0)
        part["mem"] = max(part["mem"], int(mem.rstrip("+")) if mem.rstrip("+").isdigit() else 0)
        if state.lower().startswith(_UNUSABLE) or state.endswith("*"):
            part["unusable"] += count
    return parts


def _asked_partition(cfg: Config, parts: dict[str, dict]) -> str | None:
    for flag in cfg.slurm.extra:
        m = re.fullmatch(r"(?:--partition=|-p)(\S+)", flag)
        if m:
            return m.group(1)
    if cfg.slurm.partition:
        return cfg.slurm.partition
    return next((name for name, part in parts.items() if part.get("default")), None)


def _mem_mb(mem: str | None) -> float | None:
    """slurm.mem (``64G``, ``4000``: Slurm's default unit is MB) in MB."""
    m = re.fullmatch(r"(\d+)([KMGT]?)", (mem or "").upper())
    return int(m.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[m.group(2)] if m else None


def _mb(mb: int) -> str:
    return f"{mb // 1024}G" if mb >= 1024 and mb % 1024 == 0 else f"{mb}M"


def check_runnable(script: str, cfg: Config, plan: Plan) -> str | None:
    """Ask Slurm whether it could ever run the job, before anything is written or submitted:
    ``sbatch --test-only`` (the script on stdin; it submits nothing) checks the request against the
    partitions. A job it refuses is refused here as one line (LaunchError), with what was asked and
    what the partition has (``sinfo``, only then). Slurm's test counts only the nodes that take jobs
    now: when the partition has nodes down or drained and the job fits its size, the job is
    submitted anyway; the returned warning says so. None: Slurm can run it (perhaps later)."""
    try:
        r = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise LaunchError("sbatch --test-only did not answer within 60 s; is the Slurm controller reachable?") from None
    except OSError as e:
        raise LaunchError(f"cannot run sbatch: {e.strerror or e}; check your Slurm client installation") from None
    if r.returncode == 0:
        return None
    said = _said(r.stderr, f"sbatch --test-only exited with {r.returncode}")
    if _NODE_CONFIG not in r.stderr.lower():
        raise LaunchError(_refusal(said))
    parts = _partitions()
    name = _asked_partition(cfg, parts)
    part = parts.get(name or "")
    cpt = cfg.slurm.cpus_per_task or 1
    asked = f"{plan.nodes} node(s), each with {plan.procs_per_node * cpt} CPU(s)"
    asked += f" ({plan.procs_per_node} task(s) x {cpt} CPU(s))" if cpt > 1 else ""
    asked += f", {plan.procs_per_node} GPU(s)" if plan.device == "cuda" else ""
    asked += f" and {cfg.slurm.mem} memory" if cfg.slurm.mem else ""
    asked += f", plus slurm.extra {' '.join(cfg.slurm.extra)}" if cfg.slurm.extra else ""
    fits = part is not None and (
        plan.nodes <= part["nodes"]
        and plan.procs_per_node * cpt <= (part["cpus"] or sys.maxsize)
        and (_mem_mb(cfg.slurm.mem) or 0) <= (part["mem"] or sys.maxsize)
    )  # (the partition's size, nodes that are down or drained included)
    if part and part["unusable"] and fits:
        down = f"{part['unusable']} of {part['nodes']} node(s) down, drained or reserved"
        return (
            f"Slurm cannot place this job on the nodes of partition {name} that take jobs now ({said}; {down}): "
            f"submitted anyway, it waits until they are back (`sinfo -p {name}`; `launch cancel` if it should not wait)"
        )
    has = (
        f"partition {name} has {part['nodes']} node(s) with up to {part['cpus']} CPU(s) and {_mb(part['mem'])} memory each"
        if part
        else "see `sinfo -o '%P %D %c %m'` for what the partitions have"
    )
    raise LaunchError(
        f"Slurm can never run this job ({said}): it asks for {asked}; {has}; ask for less "
        "(--nodes, --procs, slurm.cpus_per_task, slurm.mem) or pick another slurm.partition"
    )


def log_path(run_dir: Path, job_id: str) -> Path:
    return run_dir / SLURM_LOG_PATTERN.replace("%j", str(job_id))


def submit_run(cfg: Config, plan: Plan, prepared, dry_run: bool) -> int:
    """``launch ... --slurm``: write config.yaml and submit.sbatch, sbatch it, say how to follow it."""
    from launcher.config import to_yaml
    from launcher.rundir import global_batch_line, write_config

    run_path = prepared.run_dir.path.absolute()
    python = cfg.slurm.python or sys.executable
    check_python(python)
    script = render_sbatch(cfg, plan, run_path, python, Path.cwd())
    if dry_run:
        click.echo("# resolved config")
        click.echo(to_yaml(cfg), nl=False)
        what = {"new": "new run", "resume": "resumes this run", "completed": "already completed"}[prepared.state]
        click.echo(f"# run directory: {run_path} ({what})")
        click.echo(f"# {SLURM_SCRIPT_FILE} (submitted with: sbatch --parsable {run_path / SLURM_SCRIPT_FILE}):")
        click.echo(script, nl=False)
        return EXIT_COMPLETED
    if prepared.state == "completed":
        click.echo(f"launch: {run_path} is already complete; nothing to submit.")
        from launcher.cli import not_applied

        not_applied(prepared.safe_changes, run_path)
        click.echo("        To train again, pass another run.name=... or remove that directory.")
        return EXIT_COMPLETED
    try:
        active = active_job(run_path)
    except DamagedJobsFile as e:
        raise LaunchError(
            f"{e}, so whether this run already has a job pending or running is unknown; check `squeue -u $USER`, "
            f"then remove {e.path.name} and run the same command again"
        ) from None
    if active is not None:
        job_id, info = active
        click.echo(f"launch: {run_path} already has Slurm job {job_id} ({info.get('JobState', '?').lower()}).")
        click.echo(f"        follow: launch status {run_path}   tail -f {log_path(run_path, job_id)}")
        return EXIT_COMPLETED
    from launcher import runlock

    runlock.check(run_path)  # a live local run owns it: one line, exit 2 (the job's rank 0 takes it)
    require_sbatch()
    warning = check_runnable(script, cfg, plan)  # a job Slurm can never run: refused, nothing written
    fresh = prepared.state == "new"
    created = missing_dirs(run_path)  # removed again if sbatch refuses: nothing is left behind
    try:
        write_config(prepared, cfg, plan)
        (run_path / LOGS_DIR).mkdir(exist_ok=True)  # Slurm does not create the output file's directory
        write_atomic(run_path / SLURM_SCRIPT_FILE, script)
        (run_path / SLURM_CANCELLED_MARKER).unlink(missing_ok=True)
        for old in run_path.glob(f"{STOP_FILE_PREFIX}*"):
            old.unlink(missing_ok=True)  # left by an attempt whose batch shell was killed
        job_id = submit(run_path / SLURM_SCRIPT_FILE)
    except LaunchError:
        if fresh:
            shutil.rmtree(run_path, ignore_errors=True)  # nothing of value in it yet
            remove_empty(created[1:])  # runs/<recipe>/, runs/ ... if this command made them
        raise
    record_job(run_path, job_id)
    if warning:
        click.echo(f"launch: warning: {warning}", err=True)
    click.echo(f"launch: submitted Slurm job {job_id}: {global_batch_line(cfg, plan.world_size)}")
    click.echo(f"  run directory: {run_path}")
    click.echo(f"  log:           {log_path(run_path, job_id)}")
    click.echo(f"  follow:        launch status {run_path}   (or: tail -f {log_path(run_path, job_id)})")
    click.echo(f"  cancel:        launch cancel {run_path}")
    return EXIT_COMPLETED


# ---------------------------------------------------------------- after an attempt (in the job)


SLURM_REQUEUEING = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "PENDING"}


@dataclass(frozen=True)
class Attempt:
    """What ``after`` knows when srun has ended (or was never started)."""

    summary: dict | None  # summary.json if this attempt wrote it, else None
    stop: str | None  # the stop signal the batch shell recorded in this attempt ("USR2", "TERM", ...)
    job_state: str | None  # Slurm's state of the job now, COMPLETING resolved (None: unknown)
    slurm_restarts: int | None  # Slurm's restart count now (None: unknown)
    restarts: int  # this attempt's SLURM_RESTART_COUNT
    max_requeues: int
    cancelled: bool = False  # `launch cancel` marked the run
    rc: int = 0  # srun's exit status (0 when srun was not started)
    job_id: str = "?"


@dataclass(frozen=True)
class Decision:
    requeue: bool
    message: str  # one line, after "launch: "
    exit_code: int  # the batch script's
    status: str | None = None  # rewrite summary.json's status to this (None: leave it as it is)
    reason: str | None = None


def decide_after(a: Attempt) -> Decision:
    """Requeue or not after an attempt, what to say, and what summary.json must say. Pure."""
    summary = a.summary or {}
    status = summary.get("status")
    step = summary.get("global_step")
    attempt = f"attempt {a.restarts + 1} of job {a.job_id}"
    if status == "completed":
        return Decision(False, "completed", EXIT_COMPLETED)
    if status == "failed":
        why = summary.get("reason") or "see the log above"
        return Decision(False, f"failed ({why}); not requeued", a.rc or EXIT_FAILED)
    # Slurm requeues the job itself (scontrol requeue, a preemption, a node failure): the state
    # under COMPLETING then reads like a cancel, Restarts tells
    requeued = a.job_state in SLURM_REQUEUEING or (a.slurm_restarts is not None and a.slurm_restarts > a.restarts)
    if a.cancelled or (a.job_state == "CANCELLED" and not requeued):
        who = "launch cancel" if a.cancelled else "scancel"
        where = f" at step {step}" if a.summary else ""
        return Decision(
            False,
            f"cancelled by {who}{where}; not requeued: run the same launch command to resume",
            EXIT_STOPPED,
            "stopped",
            f"cancelled by {who}",
        )
    if requeued:
        what = f"{status} at step {step}" if a.summary else f"{attempt} ended without a summary (exit code {a.rc})"
        reason = None if a.summary else f"{attempt} ended without a summary; Slurm requeued the job"
        return Decision(
            False,
            f"{what}; Slurm requeues the job itself (scontrol requeue or preemption), not requeued again",
            EXIT_PREEMPTED,
            None if a.summary else "preempted",
            reason,
        )
    if status in ("preempted", "stopped") or (not a.summary and a.stop):
        if a.summary:
            what, new_status, reason = f"{status} at step {step}", None, None
        else:  # the stop came before srun started, or the tasks died of it before they could save
            what = f"preempted before training (SIG{a.stop} in {attempt}, exit code {a.rc})"
            new_status, reason = "preempted", f"SIG{a.stop} before training started in {attempt}"
        if a.restarts >= a.max_requeues:
            limit = f"slurm.max_requeues={a.max_requeues} reached"
            return Decision(
                False,
                f"{what}; {limit}, not requeued: run the same launch command to resume",
                EXIT_PREEMPTED,
                "preempted",
                f"{reason}; {limit}" if reason else limit,
            )
        return Decision(
            True,
            f"{what}; requeueing (requeue {a.restarts + 1} of at most {a.max_requeues})",
            EXIT_PREEMPTED,
            new_status,
            reason,
        )
    what = f"{attempt} ended without a summary (exit code {a.rc}): killed, or crashed before training"
    return Decision(False, f"{what}; not requeued", a.rc or EXIT_FAILED, "failed", what)


def slurm_stamp(job_id: str, restart: int) -> dict:
    """What the worker writes into summary.json under Slurm: which attempt wrote it."""
    return {"job_id": str(job_id), "restart": int(restart)}


def summary_is_from(summary: dict | None, job_id: str, restart: int, mtime: float | None, started: float) -> bool:
    """Whether ``summary`` was written by attempt ``restart`` of job ``job_id``: by its "slurm" stamp,
    or (a summary without one) by its mtime against the attempt's start. Pure."""
    if not summary:
        return False
    stamp = summary.get("slurm")
    if isinstance(stamp, dict) and "job_id" in stamp:
        return str(stamp.get("job_id")) == str(job_id) and stamp.get("restart") == restart
    return mtime is not None and mtime >= started - 1


def _summary_and_mtime(rd: RunDir, warn=None) -> tuple[dict | None, float | None]:
    """summary.json and its mtime; a damaged one (not a JSON object) counts as none, and ``warn``
    (if given) is told so in one line."""
    try:
        mtime = rd.summary.stat().st_mtime
    except OSError:
        return None, None
    summary = rd.read_summary()
    if not isinstance(summary, dict):
        if warn is not None:
            warn(f"{rd.summary} is damaged (not a JSON object); ignored")
        return None, mtime
    return summary, mtime


def _warn(message: str) -> None:
    print(f"launch: warning: {message}", file=sys.stderr, flush=True)


def _restarts(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def after(run_dir: Path, started: float, rc: int, environ=os.environ) -> int:
    """In the batch script once srun has ended: requeue after a preemption; the script's exit code."""
    import signal

    from launcher import yamlio

    # a stop signal now (or the TERM that our own requeue brings) must not cut this short: the
    # batch shell has recorded it already
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    from launcher.runlock import own_slurm_job

    rd = RunDir(run_dir)
    job_id = own_slurm_job(environ) or ""  # (an array task: ARRAY_TASK, never the array's own id)
    restarts = _restarts(environ.get("SLURM_RESTART_COUNT"))
    found, mtime = _summary_and_mtime(rd, _warn)
    summary = found if summary_is_from(found, job_id, restarts, mtime, started) else None
    try:
        tree = yamlio.load(rd.config.read_text())
        max_requeues = int(tree["slurm"]["max_requeues"])
    except (OSError, ValueError, TypeError, KeyError, yamlio.YAMLError):
        _warn(f"no slurm.max_requeues in {rd.config} (missing or damaged); not requeued")
        max_requeues = 0
    stop_path = Path(environ.get("LAUNCHER_STOP_FILE") or stop_file(run_dir, job_id, restarts))
    try:
        stop = stop_path.read_text(errors="replace").strip() or "USR2"
    except OSError:
        stop = None
    if stop is not None and not re.fullmatch(r"[A-Z0-9]{1,8}", stop):
        stop = "USR2"  # (the batch script writes a signal's name; anything else is not its)
    info = job_info(job_id) if job_id else None
    attempt = Attempt(
        summary=summary,
        stop=stop,
        job_state=base_state(job_id, info) if info else None,
        slurm_restarts=_restarts(info.get("Restarts")) if info else None,
        restarts=restarts,
        max_requeues=max_requeues,
        cancelled=(run_dir / SLURM_CANCELLED_MARKER).exists(),
        rc=rc,
        job_id=job_id,
    )
    d = decide_after(attempt)
    from launcher import runlock

    owner = runlock.live(run_dir, probe=True)
    if owner is not None and (owner.holder is None or owner.holder.slurm_job != job_id):
        # the worker found the run directory owned by another run (launcher/runlock.py): its files are that run's
        d = Decision(
            False,
            f"attempt {restarts + 1} of job {job_id} did not run: {run_dir} is in use by {runlock.describe(owner.holder)};"
            " summary.json left to it, not requeued",
            EXIT_BAD_INPUT,
        )
    if d.status is not None:
        # summary.json tells the truth about this attempt; the fields the workers wrote (or, if they
        # wrote none, the previous attempt's) are kept
        new = dict(summary or found or {})
        new.update(status=d.status, exit_code=d.exit_code, slurm=slurm_stamp(job_id, restarts))
        new.pop("reason", None)
        if d.reason:
            new["reason"] = d.reason
        try:
            write_atomic(rd.summary, json.dumps(new, indent=2, default=float) + "\n")
        except OSError as e:
            print(f"launch: could not write {rd.summary}: {e.strerror}", file=sys.stderr, flush=True)
    for old in run_dir.glob(f"{STOP_FILE_PREFIX}{job_id}.*"):
        if _restarts(old.name.rsplit(".", 1)[-1]) <= restarts:
            old.unlink(missing_ok=True)
    print(f"launch: {d.message}", file=sys.stderr, flush=True)
    if d.requeue:
        try:
            r = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
            failed = r.stderr.strip() if r.returncode != 0 else None
        except (OSError, subprocess.TimeoutExpired) as e:
            failed = str(e)
        if failed is not None:
            print(f"launch: scontrol requeue {job_id} failed: {failed}", file=sys.stderr, flush=True)
    return d.exit_code


# ---------------------------------------------------------------- `launch status` / `launch cancel`


def _run_dir_arg(path: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise LaunchError(f"{path} does not exist; pass a run directory (runs/<recipe>/<name>)")
    if not RunDir(p).config.is_file():
        raise LaunchError(f"{path} is not a run directory (no config.yaml); pass runs/<recipe>/<name>")
    return p


def _last_metrics(rd: RunDir, warn) -> dict | None:
    """The last event of metrics.jsonl that is a JSON object; damaged lines after it (garbage, a
    line cut short by a kill) are skipped, and ``warn`` is told how many."""
    tail = 65536
    try:
        with open(rd.metrics, "rb") as f:
            f.seek(0, os.SEEK_END)
            start = max(0, f.tell() - tail)
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    if start and lines:
        lines = lines[1:]  # (begins inside a line)
    damaged = 0
    for line in reversed(lines):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            event = None
        if isinstance(event, dict):
            if damaged:
                warn(f"{rd.metrics}: skipped {damaged} damaged line(s) at its end")
            return event
        damaged += 1
    if damaged:
        warn(f"{rd.metrics}: no readable event in its last {damaged} line(s)")
    return None


def _fmt(values: dict) -> str:
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def status_line(summary: dict | None, job_id: str | None, info: dict | None, current: bool, cancelled: bool) -> str:
    """The ``status:`` of ``launch status``: what the run's latest attempt did. Pure.

    ``info``: ``scontrol show job`` of the run's newest job (None: not a Slurm run, or Slurm has
    forgotten it); ``current``: whether ``summary`` was written by that job's latest attempt;
    ``cancelled``: ``launch cancel`` marked that job."""
    summary = summary or {}
    status, reason = summary.get("status"), summary.get("reason")
    told = f"{status} ({reason})" if status and reason else status or "not finished"
    state = (info or {}).get("JobState")
    if not info or not job_id:
        return told
    if state in ACTIVE_STATES:
        return state.lower()
    if state == "CANCELLED":
        if current and status in ("stopped", "failed", "completed"):
            return told
        return f"stopped (cancelled by {'launch cancel' if cancelled else 'scancel'})"
    if current:
        return told
    word = {"PREEMPTED": "preempted", "CANCELLED": "stopped"}.get(state or "", "failed")
    return f"{word} (Slurm job {job_id} {state}; its last attempt left no summary)"


def _start_time(info: dict) -> float:
    try:
        return time.mktime(time.strptime(info.get("StartTime", ""), "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return 0.0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir")
def status_command(run_dir: str) -> int:
    """Show a run: its status, progress, newest checkpoint and, for Slurm runs, the job; or a
    sweep (its directory, runs/<recipe>/sweeps/<name>): a row per point."""
    from launcher.sweep import SWEEP_FILE, print_status

    if (Path(run_dir) / SWEEP_FILE).is_file():
        return print_status(Path(run_dir))
    path = _run_dir_arg(run_dir)
    rd = RunDir(path)
    found, mtime = _summary_and_mtime(rd, _warn)
    summary = found or {}
    try:
        jobs = read_jobs(path)
    except DamagedJobsFile as e:
        _warn(f"{e}; its Slurm job is not shown (`squeue -u $USER` lists your jobs)")
        jobs = []
    newest = jobs[-1]["job_id"] if jobs else None
    info = job_info(newest) if newest and shutil.which("scontrol") else None
    current = bool(info) and summary_is_from(found, newest, _restarts(info.get("Restarts")), mtime, _start_time(info))
    try:
        cancelled = (path / SLURM_CANCELLED_MARKER).read_text(errors="replace").strip() == newest
    except OSError:
        cancelled = False
    click.echo(f"run:        {path}")
    click.echo(f"status:     {status_line(found, newest, info, current, cancelled)}")
    from launcher import runlock

    owner = runlock.live(path)  # (read-only: no lock taken, nothing written)
    if owner is not None:
        click.echo(f"running:    {runlock.describe(owner.holder)}")
    last = _last_metrics(rd, _warn)
    if last:
        click.echo(f"last log:   {_fmt(last)}")
    ckpts = rd.complete_checkpoints()
    click.echo(f"checkpoint: {ckpts[0] if ckpts else 'none yet'}")
    if isinstance(summary.get("final_metrics"), dict) and summary["final_metrics"]:
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
    """Cancel a run's Slurm job (or, given a sweep's directory, its points' array tasks). It is not
    requeued; the same `launch` command resumes it later."""
    from launcher.sweep import SWEEP_FILE

    if (Path(run_dir) / SWEEP_FILE).is_file():
        from launcher.sweep_slurm import cancel_sweep

        return cancel_sweep(Path(run_dir))
    path = _run_dir_arg(run_dir)
    try:
        jobs = read_jobs(path)
    except DamagedJobsFile as e:
        raise LaunchError(
            f"{e}, so which Slurm job is this run's is unknown; find it with `squeue -u $USER` and cancel it "
            "with `scancel JOBID`"
        ) from None
    if not jobs:
        raise LaunchError(f"{path} was not submitted to Slurm; stop a run on this machine with Ctrl-C")
    if shutil.which("scancel") is None:
        raise LaunchError("scancel is not on PATH here; run `launch cancel` on the cluster's login node")
    active = active_job(path)
    if active is None:
        click.echo(f"launch: no pending or running Slurm job for {path}; nothing to cancel")
        return EXIT_COMPLETED
    job_id, info = active
    (path / SLURM_CANCELLED_MARKER).write_text(f"{job_id}\n")
    r = subprocess.run(["scancel", job_id], capture_output=True, text=True)
    if r.returncode != 0:
        raise LaunchError(f"scancel {job_id} failed: {r.stderr.strip()}")
    click.echo(f"launch: cancelled Slurm job {job_id} ({info.get('JobState', '?').lower()}); it will not requeue.")
    click.echo("        Running the same launch command resumes from the newest checkpoint.")
    return EXIT_COMPLETED


def main(argv: list[str]) -> int:
    """``python -m launcher.slurm after RUN_DIR STARTED RC`` (the batch script's last line)."""
    usage = "usage: python -m launcher.slurm after RUN_DIR STARTED RC"
    if len(argv) != 4 or argv[0] != "after":
        print(f"error: {usage}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        started, rc = float(argv[2]), int(argv[3])
    except ValueError:
        print(f"error: STARTED (seconds) and RC (an exit code) must be numbers, not {argv[2]!r} {argv[3]!r}; {usage}",
              file=sys.stderr)  # fmt: skip
        return EXIT_BAD_INPUT
    return after(Path(argv[1]), started, rc)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
