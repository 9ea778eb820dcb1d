"""Slurm without a cluster: the batch script (golden file), quoting, the port, SLURM_* -> torch's
environment, the requeue decision and the errors given before anything is submitted."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from launcher.config import config_class, resolve
from launcher.errors import ConfigError, LaunchError
from launcher.plan import make_plan
from launcher.recipe_loader import load_recipe
from launcher.runtime.env import DistEnv, torch_env_from_slurm
from launcher.slurm import (
    Attempt,
    completing_means,
    decide_after,
    master_port,
    render_sbatch,
    slurm_seconds,
    status_line,
    summary_is_from,
)
from tests.conftest import TINY, run_launch

GOLDEN = Path(__file__).parent / "golden"


def make(overrides: list[tuple[str, str]]):
    recipe = load_recipe(TINY)
    assert config_class(recipe)
    cfg = resolve(recipe, [], [("recipe", "tiny_recipe.py:Tiny"), ("slurm.enabled", "true"), *overrides])
    return cfg, make_plan(cfg)


def render(overrides: list[tuple[str, str]], run_dir: str = "/scratch/runs/tiny/exp1") -> str:
    cfg, plan = make(overrides)
    return render_sbatch(cfg, plan, Path(run_dir), "/opt/venv/bin/python", Path("/home/me/project"))


GOLDEN_CASES = {
    "two_nodes_gpus.sbatch": [
        ("run.name", "exp1"), ("dist.nodes", "2"), ("dist.procs", "4"), ("dist.device", "cuda"),
        ("slurm.partition", "gpu"), ("slurm.account", "proj42"), ("slurm.time", "1-12:00:00"),
        ("slurm.mem", "64G"), ("slurm.cpus_per_task", "8"), ("slurm.exclusive", "true"),
        ("slurm.setup", '["module load cuda/12.4", "source ~/env.sh"]'),
        ("slurm.extra", '["--reservation=big"]'), ("slurm.signal_lead_s", "300"),
    ],
    "one_node_cpu.sbatch": [("run.name", "exp1"), ("dist.device", "cpu")],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_script_matches_golden_file(name):
    text = render(GOLDEN_CASES[name])
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"rendering changed; if intended: UPDATE_GOLDEN=1 pytest {__file__}"
    r = subprocess.run(["bash", "-n"], input=text, text=True, capture_output=True)
    assert r.returncode == 0, r.stderr


def test_golden_flags_reflect_config():
    text = render(GOLDEN_CASES["two_nodes_gpus.sbatch"])
    for line in [
        "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu", "#SBATCH --time=1-12:00:00", "#SBATCH --signal=B:USR2@300",
        "#SBATCH --requeue", "#SBATCH --open-mode=append", "#SBATCH --reservation=big", "module load cuda/12.4",
    ]:  # fmt: skip
        assert line in text.splitlines(), line
    # the traps are installed before anything that takes time: only the stop file's name and the
    # handler come before them
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    first = next(i for i, ln in enumerate(body) if ln.startswith("trap "))
    assert body[0].startswith("export LAUNCHER_STOP_FILE=") and body[first - 1] == "}", body[: first + 1]
    assert body[first : first + 4] == [f"trap 'launch_stop {s}' {s}" for s in ("USR2", "TERM", "INT", "HUP")]
    # srun is never sent TERM (it kills the tasks on TERM); the stop request to srun is USR2
    assert "kill -s TERM" not in text and 'kill -s USR2 "$launch_srun"' in text


@pytest.mark.parametrize("value,sig", [("USR1", "USR1"), ("sigterm", "TERM"), ("SigUsr2", "USR2")])
def test_the_warning_signal_is_trapped_first(value, sig):
    text = render([("run.name", "s"), ("slurm.signal", value)])
    assert f"#SBATCH --signal=B:{sig}@120" in text.splitlines()
    traps = [ln for ln in text.splitlines() if ln.startswith("trap 'launch_stop")]
    assert traps[0] == f"trap 'launch_stop {sig}' {sig}"
    assert sorted(t.split()[-1] for t in traps) == sorted({sig, "USR2", "TERM", "INT", "HUP"})


def test_user_values_cannot_reach_the_shell_unquoted(tmp_path):
    evil = "x$(touch PWNED)`touch PWNED2`;touch PWNED3 'q"
    text = render([("run.name", evil.replace("/", "_"))], run_dir=f"/scratch/{evil}")
    srun = next(ln.strip() for ln in text.splitlines() if ln.strip().startswith("srun "))
    assert shlex.split(srun)[-2:] == [f"/scratch/{evil}", "&"]
    # run the parts of the script that handle the value, with the value in it: nothing is executed
    after = next(ln for ln in text.splitlines() if "-m launcher.slurm after" in ln)
    probe = after.replace("/opt/venv/bin/python -m launcher.slurm after", "printf '%s\\n'")
    r = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True)
    assert r.stdout.splitlines()[0] == f"/scratch/{evil}"
    assert not list(tmp_path.iterdir())
    job = next(ln for ln in text.splitlines() if ln.startswith("#SBATCH --job-name="))
    name = job.split("=", 1)[1]
    assert not set(name) & set("$`; '\"")


SECRET = "SECRETabc123xyz"


def test_a_credential_reaches_neither_the_job_name_nor_the_script():
    """data.token (a key like launcher.config.SECRET_KEY) is in config.yaml only, which the script
    names by its run directory; it never reaches --job-name (squeue shows it to every user) or any
    other line, whether the run name is derived or chosen."""
    from launcher.rundir import default_run_name
    from tests.tiny_recipe import Tiny, TinyData

    class TokenData(TinyData):
        token: str = ""

    class TokenTiny(Tiny):
        Data = TokenData

    overrides = [("data.token", SECRET), ("train.lr", "0.1")]
    cfg = resolve(TokenTiny, [], [("recipe", "tiny_recipe.py:Tiny"), ("slurm.enabled", "true"), *overrides])
    assert cfg.data.token == SECRET
    cfg.run.name = default_run_name(cfg, overrides)
    run_dir = Path("/scratch/runs/tiny") / cfg.run.name
    text = render_sbatch(cfg, make_plan(cfg), run_dir, "/opt/venv/bin/python", Path("/home/me/project"))
    assert SECRET not in text
    assert f"#SBATCH --job-name=Tiny-{cfg.run.name}" in text.splitlines()
    # a run name that holds the value (given by hand): the default job name still does not
    cfg.run.name = f"exp-{SECRET}"
    text = render_sbatch(cfg, make_plan(cfg), Path("/scratch/runs/tiny/exp1"), "/opt/venv/bin/python", Path("/p"))
    assert SECRET not in text and "#SBATCH --job-name=Tiny-exp-redacted" in text.splitlines()


def test_a_line_break_in_a_path_is_refused():
    with pytest.raises(LaunchError, match="one line"):
        render([("run.name", "a")], run_dir="/scratch/a\nb")


@pytest.mark.parametrize(
    "key,value,expected",
    [
        ("slurm.partition", "gpu;touch x", "not a Slurm name"),
        ("slurm.time", "4h", "not a Slurm time"),
        ("slurm.mem", "lots", "not a Slurm memory size"),
        ("slurm.extra", '["reservation=big"]', "must be one sbatch flag"),
        ("slurm.signal", "KILL9", "not a warning signal the batch script handles; use USR2"),
        ("slurm.signal", "99", "not a warning signal"),  # passed before, then `trap: 99: invalid signal`
        ("slurm.signal", "INT", "use USR2 \\(the default\\), USR1 or TERM"),
        ("slurm.signal", "HUP", "not a warning signal"),
        ("slurm.signal", "URG", "not a warning signal"),
        ("slurm.signal", "USR2 ", "not a warning signal"),
    ],
)
def test_bad_slurm_values_are_refused(key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        make([(key, value)])


def test_master_port_matches_the_script_and_spreads():
    text = render([("run.name", "p")])
    line = next(ln for ln in text.splitlines() if ln.startswith("MASTER_PORT="))
    for job_id, restarts in [(1, 0), (2, 0), (123456, 3), (99999999, 1)]:
        env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": str(job_id), "SLURM_RESTART_COUNT": str(restarts)}
        r = subprocess.run(["bash", "-c", f"{line}; echo $MASTER_PORT"], env=env, capture_output=True, text=True)
        assert int(r.stdout) == master_port(job_id, restarts)
    ports = {master_port(j) for j in range(1000, 1100)}
    assert len(ports) == 100 and min(ports) >= 10000 and max(ports) < 32768  # (below the ephemeral ports)


def test_slurm_environment_becomes_torch_environment():
    environ = {
        "LAUNCHER_SLURM": "1", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
        "SLURM_NNODES": "4", "SLURM_NODEID": "2", "MASTER_ADDR": "n1", "MASTER_PORT": "31234",
    }  # fmt: skip
    extra = torch_env_from_slurm(environ)
    env = DistEnv.from_environ({**environ, **extra})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 2)
    assert (env.master_addr, env.master_port) == ("n1", 31234)
    # only inside our own batch script: an salloc shell's SLURM_* must not turn `launch` distributed
    assert torch_env_from_slurm({k: v for k, v in environ.items() if k != "LAUNCHER_SLURM"}) == {}


PRE = {"status": "preempted", "global_step": 7, "exit_code": 143}
NOSUM = None
# (summary, stop, job_state, slurm_restarts, restarts, cancelled, rc) -> (requeue, status written, exit, says)
AFTER_CASES = {
    "preempted mid-training": ((PRE, "USR2", "RUNNING", 0, 0, False, 143), (True, None, 143, "preempted at step 7; requeueing (requeue 1 of at most 3)")),
    "preempted, TERM to the tasks only": ((PRE, None, "RUNNING", 1, 1, False, 143), (True, None, 143, "requeue 2 of at most 3")),
    "preempted, requeues used up": ((PRE, "TERM", "RUNNING", 3, 3, False, 143), (False, "preempted", 143, "slurm.max_requeues=3 reached, not requeued")),
    "stop before srun started": ((NOSUM, "USR2", "RUNNING", 0, 0, False, 0), (True, "preempted", 143, "preempted before training (SIGUSR2 in attempt 1 of job 42, exit code 0); requeueing")),
    "tasks died of an early stop": ((NOSUM, "TERM", "RUNNING", 1, 1, False, 140), (True, "preempted", 143, "preempted before training (SIGTERM in attempt 2")),
    "early stop, requeues used up": ((NOSUM, "USR2", "RUNNING", 3, 3, False, 0), (False, "preempted", 143, "max_requeues=3 reached")),
    "plain scancel": ((PRE, "TERM", "CANCELLED", 0, 0, False, 143), (False, "stopped", 130, "cancelled by scancel at step 7; not requeued: run the same launch command")),
    "scancel, batch shell first": ((NOSUM, "TERM", "CANCELLED", 0, 0, False, 137), (False, "stopped", 130, "cancelled by scancel; not requeued")),
    "launch cancel": ((PRE, "TERM", "CANCELLED", 0, 0, True, 143), (False, "stopped", 130, "cancelled by launch cancel at step 7")),
    "launch cancel, Slurm's state unknown": ((PRE, None, None, None, 0, True, 143), (False, "stopped", 130, "cancelled by launch cancel")),
    "scontrol requeue from outside": ((PRE, "TERM", "CANCELLED", 1, 0, False, 143), (False, None, 143, "Slurm requeues the job itself")),
    "scontrol requeue, no summary": ((NOSUM, "TERM", "PENDING", 1, 0, False, 137), (False, "preempted", 143, "attempt 1 of job 42 ended without a summary (exit code 137); Slurm requeues")),
    "time limit": ((PRE, "TERM", "TIMEOUT", 0, 0, False, 143), (True, None, 143, "requeueing")),
    "failed": (({"status": "failed", "reason": "boom"}, None, "RUNNING", 0, 0, False, 1), (False, None, 1, "failed (boom); not requeued")),
    "failed while a stop was requested": (({"status": "failed", "reason": "boom"}, "USR2", "RUNNING", 0, 0, False, 1), (False, None, 1, "failed (boom)")),
    "completed": (({"status": "completed"}, None, "RUNNING", 1, 1, False, 0), (False, None, 0, "completed")),
    "completed, then cancelled": (({"status": "completed"}, "TERM", "CANCELLED", 0, 0, True, 0), (False, None, 0, "completed")),
    "lost attempt": ((NOSUM, None, "RUNNING", 0, 0, False, 137), (False, "failed", 137, "attempt 1 of job 42 ended without a summary (exit code 137): killed, or crashed before training; not requeued")),
    "lost attempt, no exit code": ((NOSUM, None, None, None, 0, False, 0), (False, "failed", 1, "without a summary (exit code 0)")),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(AFTER_CASES))
def test_requeue_decision(case):
    (summary, stop, state, slurm_restarts, restarts, cancelled, rc), expected = AFTER_CASES[case]
    attempt = Attempt(summary, stop, state, slurm_restarts, restarts, 3, cancelled, rc, "42")
    d = decide_after(attempt)
    requeue, status, code, says = expected
    assert (d.requeue, d.status, d.exit_code) == (requeue, status, code), d
    assert says in d.message, d.message
    assert "\n" not in d.message
    if status is not None:
        assert d.reason  # summary.json says why


def test_completing_means_cancel_unless_time_limit_or_accounting_says_otherwise():
    running = {"JobState": "COMPLETING", "RunTime": "00:00:08", "TimeLimit": "UNLIMITED", "Restarts": "0"}
    assert completing_means(running) == "CANCELLED"
    assert completing_means({**running, "TimeLimit": "00:10:00"}) == "CANCELLED"
    assert completing_means({**running, "RunTime": "1-00:00:00", "TimeLimit": "1-00:00:00"}) == "TIMEOUT"
    assert completing_means(running, accounted="PREEMPTED") == "PREEMPTED"
    assert completing_means(running, accounted="RUNNING") == "CANCELLED"  # accounting lags: not an answer
    assert slurm_seconds("1-02:03:04") == 93784 and slurm_seconds("05:06") == 306 and slurm_seconds("UNLIMITED") is None


def test_a_summary_belongs_to_an_attempt_by_its_stamp_or_else_its_mtime():
    stamped = {"status": "preempted", "slurm": {"job_id": "42", "restart": 1}}
    assert summary_is_from(stamped, "42", 1, mtime=0.0, started=100.0)  # the stamp wins over the mtime
    assert not summary_is_from(stamped, "42", 2, mtime=200.0, started=100.0)
    assert not summary_is_from(stamped, "43", 1, mtime=200.0, started=100.0)
    plain = {"status": "preempted"}
    assert summary_is_from(plain, "42", 0, mtime=99.5, started=100.0)
    assert not summary_is_from(plain, "42", 0, mtime=90.0, started=100.0)
    assert not summary_is_from(None, "42", 0, mtime=200.0, started=100.0)


STAMP0 = {"slurm": {"job_id": "42", "restart": 0}}
# (summary, JobState or None, summary is the latest attempt's, launch cancel marker) -> status line
STATUS_CASES = [
    ({"status": "preempted", "reason": "x"}, "RUNNING", False, False, "running"),
    ({"status": "preempted"}, "PENDING", True, False, "pending"),
    ({"status": "completed"}, "COMPLETED", True, False, "completed"),
    ({"status": "preempted", **STAMP0}, "FAILED", False, False, "failed (Slurm job 42 FAILED; its last attempt left no summary)"),
    ({"status": "completed"}, "FAILED", False, False, "failed (Slurm job 42 FAILED; its last attempt left no summary)"),
    ({"status": "preempted"}, "TIMEOUT", False, False, "failed (Slurm job 42 TIMEOUT"),
    ({"status": "preempted"}, "CANCELLED", True, False, "stopped (cancelled by scancel)"),
    ({"status": "preempted"}, "CANCELLED", False, True, "stopped (cancelled by launch cancel)"),
    ({"status": "stopped", "reason": "cancelled by scancel"}, "CANCELLED", True, False, "stopped (cancelled by scancel)"),
    ({"status": "failed", "reason": "attempt 2 of job 42 ended without a summary"}, "FAILED", True, False, "failed (attempt 2 of job 42 ended"),
    ({"status": "preempted", "reason": "slurm.max_requeues=3 reached"}, "FAILED", True, False, "preempted (slurm.max_requeues=3 reached)"),
    ({"status": "preempted"}, None, False, False, "preempted"),  # Slurm forgot the job: the summary is all there is
    (None, None, False, False, "not finished"),
]  # fmt: skip


@pytest.mark.parametrize("summary,state,current,cancelled,expected", STATUS_CASES)
def test_status_line_tells_the_latest_attempt(summary, state, current, cancelled, expected):
    info = {"JobState": state, "Restarts": "0"} if state else None
    line = status_line(summary, "42", info, current, cancelled)
    assert line.startswith(expected), line


# The batch script's signal handling, run by bash with stand-ins for srun, scontrol and python.
FAKE_SRUN = """#!/bin/bash
echo "started $*" >> "$FAKE_LOG"
trap 'echo "srun got USR2 at $SECONDS" >> "$FAKE_LOG"' USR2
trap 'echo "srun got TERM" >> "$FAKE_LOG"' TERM
for i in $(seq 40); do sleep 0.1; done
echo "srun ended" >> "$FAKE_LOG"
"""


def _run_script(tmp_path, setup: str | None, signals: list[tuple[float, str]]) -> tuple[list[str], Path]:
    import signal
    import time

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in [
        ("srun", FAKE_SRUN),
        ("scontrol", '#!/bin/sh\necho n1\n'),
        ("python", '#!/bin/sh\necho "after $*" >> "$FAKE_LOG"\n'),
    ]:  # fmt: skip
        (bin_ / name).write_text(body)
        (bin_ / name).chmod(0o755)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    overrides = [("run.name", "b")] + ([("slurm.setup", f'["{setup}"]')] if setup else [])
    cfg, plan = make(overrides)
    script = tmp_path / "job.sh"
    script.write_text(render_sbatch(cfg, plan, run_dir, str(bin_ / "python"), tmp_path))
    log = tmp_path / "fake.log"
    env = {"PATH": f"{bin_}:/usr/bin:/bin", "FAKE_LOG": str(log), "SLURM_JOB_ID": "7", "SLURM_JOB_NODELIST": "n1"}
    p = subprocess.Popen(["bash", str(script)], env=env, stderr=subprocess.PIPE, text=True)
    start = time.monotonic()
    for at, sig in signals:
        time.sleep(max(0.0, at - (time.monotonic() - start)))
        p.send_signal(getattr(signal, f"SIG{sig}"))
    _, err = p.communicate(timeout=30)
    return log.read_text().splitlines(), run_dir, err


def test_script_a_stop_during_setup_means_no_srun_and_after_decides(tmp_path):
    lines, run_dir, err = _run_script(tmp_path, "sleep 1", [(0.3, "USR2")])
    assert not [ln for ln in lines if ln.startswith("started")], lines
    assert [ln for ln in lines if ln.startswith("after ")] == [
        f"after -m launcher.slurm after {run_dir} {lines[-1].split()[-2]} 0"
    ]
    assert (run_dir / ".stop-7.0").read_text() == "USR2\n"
    assert "SIGUSR2 received" in err and "srun not started" in err


def test_script_term_reaches_srun_as_usr2_and_early_ones_a_second_later(tmp_path):
    lines, run_dir, err = _run_script(tmp_path, None, [(0.1, "TERM"), (2.6, "TERM"), (2.9, "INT")])
    assert lines[0].startswith("started --export=ALL --ntasks-per-node=1 /bin/sh -c")
    got = [ln for ln in lines if ln.startswith("srun got")]
    assert got and all("USR2" in ln for ln in got), lines  # never TERM
    assert len(got) == 3  # the first one held back (srun dies of a signal in its first ~20 ms), then each
    assert lines[-1].startswith("after ") and lines[-1].endswith(" 0"), lines
    assert (run_dir / ".stop-7.0").read_text() == "TERM\n"  # the first stop is the one recorded


def test_without_sbatch_one_line_and_nothing_written(tmp_path):
    path = "/usr/bin:/bin" if not Path("/usr/bin/sbatch").exists() else str(tmp_path / "empty")
    r = run_launch([f"recipe={TINY}", "--slurm"], tmp_path, PATH=path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "sbatch" in r.stderr and "drop --slurm" in r.stderr
    assert not (tmp_path / "runs").exists()


def test_slurm_refuses_accelerate_and_nodes_need_slurm(tmp_path):
    r = run_launch([f"recipe={TINY}", "--slurm", "--strategy", "accelerate", "--procs", "2"], tmp_path)
    assert r.returncode == 2 and "not supported with --slurm" in r.stderr
    r = run_launch([f"recipe={TINY}", "--nodes", "2"], tmp_path)
    assert r.returncode == 2 and "add --slurm" in r.stderr
    r = run_launch([f"recipe={TINY}", "--slurm", "slurm.time=10h"], tmp_path)
    assert r.returncode == 2 and "not a Slurm time" in r.stderr and r.stderr.count("\n") == 1


def test_dry_run_prints_the_script_and_submits_nothing(tmp_path):
    r = run_launch([f"recipe={TINY}", "--slurm", "--nodes", "2", "slurm.partition=debug", "--dry-run"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "#SBATCH --nodes=2" in r.stdout and "#SBATCH --partition=debug" in r.stdout
    assert "srun --export=ALL" in r.stdout
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("rank", [0, 1])
def test_a_missing_rendezvous_fails_in_bounded_time_with_a_message(tmp_path, rank):
    """Rank 1 with nobody at MASTER_ADDR:PORT, or rank 0 whose peer never comes: both give up after
    dist.timeout_s with one line instead of hanging."""
    import sys
    import time

    from launcher.hardware import free_port
    from launcher.plan import make_plan
    from launcher.rundir import inspect_run_dir, write_config

    recipe = load_recipe(TINY)
    cfg = resolve(recipe, [], [("recipe", TINY), ("dist.procs", "2"), ("dist.timeout_s", "5"), ("log.quiet", "true")])
    run_dir = tmp_path / "run"
    write_config(inspect_run_dir(cfg, run_dir), cfg, make_plan(cfg, gpus=0))
    env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WANDB_MODE": "disabled"}  # fmt: skip
    started = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "launcher.runtime.worker", str(run_dir)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert time.time() - started < 60
    out = r.stderr if rank == 0 else (run_dir / "logs" / "rank-1.log").read_text()
    assert f"rank {rank} of 2 could not join the others at 127.0.0.1" in out, out


def test_status_and_cancel_name_what_is_wrong(tmp_path):
    r = run_launch(["status", str(tmp_path / "missing")], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    r = run_launch(["status", str(tmp_path)], tmp_path)
    assert r.returncode == 2 and "not a run directory" in r.stderr
    # a local run: status works, cancel explains that it is not a Slurm job
    r = run_launch([f"recipe={TINY}", "train.epochs=1", "log.quiet=true"], tmp_path)
    assert r.returncode == 0, r.stderr
    (run_dir,) = (tmp_path / "runs").glob("*/*")
    r = run_launch(["status", str(run_dir)], tmp_path)
    assert r.returncode == 0 and "status:     completed" in r.stdout and "checkpoint: " in r.stdout
    r = run_launch(["cancel", str(run_dir)], tmp_path)
    assert r.returncode == 2 and "was not submitted to Slurm" in r.stderr
