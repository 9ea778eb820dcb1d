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
from launcher.slurm import decide_after, master_port, render_sbatch
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
    # the trap is installed before anything else runs
    body = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert body[2].startswith("trap "), body[:3]


def test_user_values_cannot_reach_the_shell_unquoted(tmp_path):
    evil = "x$(touch PWNED)`touch PWNED2`;touch PWNED3 'q"
    text = render([("run.name", evil.replace("/", "_"))], run_dir=f"/scratch/{evil}")
    srun = next(ln for ln in text.splitlines() if ln.startswith("srun "))
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
        ("slurm.signal", "KILL9", "not a signal name"),
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
    assert len(ports) == 100 and min(ports) >= 20000 and max(ports) < 60000


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


@pytest.mark.parametrize(
    "summary,restarts,cancelled,requeue,says",
    [
        ({"status": "preempted", "global_step": 7}, 0, False, True, "requeue 1 of at most 3"),
        ({"status": "preempted", "global_step": 7}, 3, False, False, "max_requeues=3 reached"),
        ({"status": "preempted", "global_step": 7}, 0, True, False, "cancelled"),
        ({"status": "failed", "reason": "boom"}, 0, False, False, "failed (boom)"),
        ({"status": "completed"}, 1, False, False, "completed"),
        (None, 0, False, False, "without a summary"),
    ],
)
def test_requeue_decision(summary, restarts, cancelled, requeue, says):
    again, message = decide_after(summary, restarts, 3, cancelled)
    assert again is requeue
    assert says in message


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
    from launcher.rundir import inspect_run_dir, write_config

    recipe = load_recipe(TINY)
    cfg = resolve(recipe, [], [("recipe", TINY), ("dist.procs", "2"), ("dist.timeout_s", "5"), ("log.quiet", "true")])
    run_dir = tmp_path / "run"
    write_config(inspect_run_dir(cfg, run_dir), cfg, 2)
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
