"""Slurm bad input without a cluster: jobs Slurm could never run are refused before sbatch submits
them, a bad slurm.python, damaged slurm_jobs.json / summary.json / metrics.jsonl in `launch status`,
`launch cancel`, a resubmission and `python -m launcher.slurm after`.

Stand-ins for sbatch, sinfo and scontrol (on PATH, outside the working directory) answer as Slurm
22.05.8 does on the test cluster (2 nodes, 2 CPUs and 1 MB each, partition `debug`; measured, see
slurm/README.md); tests/test_slurm_cluster.py asks the real one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from launcher import slurm
from tests.badinput import Case, assert_refused, run_main, tree_state
from tests.conftest import TINY

FAKE_SBATCH = r"""#!{python}
import os, re, sys
args = sys.argv[1:]
script = open(args[-1]).read() if args and not args[-1].startswith("-") else sys.stdin.read()
flags = dict(re.findall(r"^#SBATCH --([\w-]+)=?(.*)$", script, re.M))
test = "--test-only" in args
with open(os.environ["FAKE_SLURM_LOG"], "a") as f:
    f.write(("test-only" if test else "submit") + " " + " ".join(f"{{k}}={{v}}" for k, v in flags.items()) + "\n")
mem = flags.get("mem", "0M")
mb = float(mem[:-1]) * {{"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}}[mem[-1].upper()]
cpus = int(flags.get("ntasks-per-node", 1)) * int(flags.get("cpus-per-task", 1))
if flags.get("partition", "debug") != "debug":
    sys.exit(f"sbatch: error: invalid partition specified: {{flags['partition']}}\n"
             "allocation failure: Invalid partition name specified")
if "gpus-per-node" in flags:
    sys.exit("sbatch: error: Invalid generic resource (gres) specification")
if not test and flags.get("account") == "refused":  # --test-only does not check accounts without accounting
    sys.exit("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified")
if not test and mb > 1:  # sbatch itself accepts too many nodes or CPUs: the job pends forever
    sys.exit("sbatch: error: Memory specification can not be satisfied\n"
             "sbatch: error: Batch job submission failed: Requested node configuration is not available")
if test and (int(flags.get("nodes", 1)) > int(os.environ.get("FAKE_NODES_UP", 2)) or cpus > 2 or mb > 1):
    sys.exit("allocation failure: Requested node configuration is not available")
if test:
    print("sbatch: Job 4242 to start at 2026-01-01T00:00:00 using 1 processors on nodes n1 in partition debug",
          file=sys.stderr)
else:
    print("4242")
"""
FAKE_SINFO = '#!/bin/sh\necho "${FAKE_SINFO:-debug*|2|2|1|idle}"\n'
FAKE_SCONTROL = """#!/bin/sh
echo "scontrol $*" >> "$FAKE_SLURM_LOG"
if [ "$1" = show ]; then echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1; fi
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """sbatch, sinfo and scontrol stand-ins first on PATH; returns the file their calls go to."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, body in [
        ("sbatch", FAKE_SBATCH.format(python=sys.executable)),
        ("sinfo", FAKE_SINFO),
        ("scontrol", FAKE_SCONTROL),
    ]:
        (bin_ / name).write_text(body)
        (bin_ / name).chmod(0o755)
    log = tmp_path / "slurm-calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_}:/usr/bin:/bin")
    monkeypatch.setenv("FAKE_SLURM_LOG", str(log))
    return log


@pytest.fixture
def work(tmp_path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    return d


BASE = ["recipe={tiny}", "--slurm", "run.name=r1"]
RUN = "{cwd}/runs/tiny/r1"


def jobs_file(content: str):
    """Case.setup: the run was submitted once (config.yaml, submit.sbatch, slurm_jobs.json), then
    slurm_jobs.json was damaged."""

    def setup(cwd: Path) -> None:
        from launcher.cli import main

        with contextlib.chdir(cwd), pytest.raises(SystemExit) as exc:
            main([a.replace("{tiny}", TINY) for a in BASE])
        assert exc.value.code == 0
        (cwd / "runs/tiny/r1/slurm_jobs.json").write_text(content)
        Path(os.environ["FAKE_SLURM_LOG"]).write_text("")  # (what the case itself asks Slurm counts)

    return setup


GARBAGE = "\x00\x01 not json {"
DAMAGED_JOBS = {"garbage": GARBAGE, "a list of non-dicts": "[1, 2]", "empty": "", "an object": '{"job_id": "1"}'}

CASES = [
    Case("partition Slurm does not know", [*BASE, "slurm.partition=nope"], "invalid partition specified: nope"),
    Case("more memory than a node has", [*BASE, "slurm.mem=900T"], "900T memory; partition debug has 2 node(s)"),
    Case("more nodes than the partition", [*BASE, "--nodes", "3"], "can never run this job"),
    Case("more processes than CPUs", [*BASE, "--procs", "8"], "each with 8 CPU(s); partition debug"),
    Case("more CPUs per task than a node", [*BASE, "slurm.cpus_per_task=3"], "(1 task(s) x 3 CPU(s))"),
    Case("GPUs the partition lacks", [*BASE, "--gpus", "1"], "generic resource"),
    Case("sbatch refuses after the test", [*BASE, "slurm.account=refused"], "Invalid account"),
    Case("slurm.python missing", [*BASE, "slurm.python=/nonexistent/python"], "/nonexistent/python does not exist"),
    Case("slurm.python not executable", [*BASE, "slurm.python={cwd}/py"], "py is not executable", files={"py": "x"}),
    Case("slurm.python a directory", [*BASE, "slurm.python={cwd}"], "is a directory"),
    *[
        Case(f"resubmit, slurm_jobs.json {what}", BASE, "slurm_jobs.json is damaged", setup=jobs_file(content))
        for what, content in DAMAGED_JOBS.items()
    ],
    Case("resubmit, a job id that is an option", BASE, "is damaged", setup=jobs_file('[{"job_id": "--user=me"}]')),
    *[
        Case(f"cancel, slurm_jobs.json {what}", ["cancel", RUN], "find it with `squeue", setup=jobs_file(content))
        for what, content in DAMAGED_JOBS.items()
    ],
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(case, work, fake_slurm, monkeypatch, capsys):
    line = assert_refused(case, work, monkeypatch, capsys)
    assert line.startswith("error: ") and "; " in line, line  # the problem; the fix
    calls = fake_slurm.read_text()
    if case.id != "sbatch refuses after the test":
        assert "submit " not in calls, calls  # refused before anything was submitted
    assert not (work / "runs").exists() or case.setup is not None  # not even an empty runs/tiny/


def test_slurm_is_asked_once_and_only_when_submitting(work, fake_slurm, monkeypatch, capsys):
    monkeypatch.chdir(work)
    code, out, err = run_main([f"recipe={TINY}", "--slurm", "--nodes", "3", "--dry-run"], capsys)
    assert code == 0 and "#SBATCH --nodes=3" in out, err
    assert fake_slurm.read_text() == "" and not any(work.iterdir())  # --dry-run: not asked
    code, out, err = run_main([f"recipe={TINY}", "--slurm", "--nodes", "2", "--procs", "2"], capsys)
    assert code == 0 and "submitted Slurm job 4242" in out, err
    calls = [ln.split()[0] for ln in fake_slurm.read_text().splitlines()]
    assert calls == ["test-only", "submit"], calls  # one call more than before, no sinfo on this path


def test_with_a_node_down_a_job_that_fits_the_partition_is_submitted_with_a_warning(
    work, fake_slurm, monkeypatch, capsys
):
    """Slurm's test counts only the nodes that take jobs now: a job that fits the partition waits
    for the node that is down; one that does not fit it even then is refused."""
    monkeypatch.chdir(work)
    monkeypatch.setenv("FAKE_NODES_UP", "1")
    monkeypatch.setenv("FAKE_SINFO", "debug*|1|2|1|idle\ndebug*|1|2|1|down*")
    code, out, err = run_main([f"recipe={TINY}", "--slurm", "--nodes", "2", "run.name=fits"], capsys)
    assert code == 0 and "submitted Slurm job 4242" in out, err
    assert err.count("\n") == 1 and err.startswith("launch: warning: Slurm cannot place this job"), err
    assert "1 of 2 node(s) down" in err
    for args in (["--nodes", "3"], ["--nodes", "2", "--procs", "4"], ["--nodes", "2", "slurm.mem=2M"]):
        code, out, err = run_main([f"recipe={TINY}", "--slurm", *args, "run.name=never"], capsys)
        assert code == 2 and "can never run" in err and err.count("\n") == 1, (args, err)
    assert not (work / "runs" / "tiny" / "never").exists()


# ---------------------------------------------------------------- launch status on damaged files


def make_run(root: Path, files: dict[str, str]) -> Path:
    run = root / "runs" / "tiny" / "r1"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("recipe: tiny\n")
    for name, content in files.items():
        (run / name).write_text(content)
    return run


GOOD_METRICS = '{"step": 2, "train/loss": 0.5}\n{"step": 4, "train/loss": 0.25}\n'
DONE = json.dumps({"status": "completed", "final_metrics": {"val/acc": 0.5}})
# damaged files -> (what the status line says, a piece of the stdout, a piece of the one warning)
STATUS_CASES = {
    "summary garbage": ({"summary.json": GARBAGE, "metrics.jsonl": GOOD_METRICS}, "not finished", "step=4", "summary.json is damaged"),
    "summary a JSON list": ({"summary.json": "[1]", "metrics.jsonl": GOOD_METRICS}, "not finished", "step=4", "summary.json is damaged"),
    "summary final_metrics not a dict": ({"summary.json": '{"status": "completed", "final_metrics": [1]}'}, "completed", "checkpoint: none yet", None),
    "metrics garbage lines": ({"summary.json": DONE, "metrics.jsonl": GOOD_METRICS + "\x00garbage\n7\n[]\n"}, "completed", "step=4", "skipped 3 damaged line(s)"),
    "metrics truncated last line": ({"summary.json": DONE, "metrics.jsonl": GOOD_METRICS + '{"step": 6, "train/lo'}, "completed", "step=4", "skipped 1 damaged line(s)"),
    "metrics only garbage": ({"summary.json": DONE, "metrics.jsonl": "[1]\n"}, "completed", "final:      val/acc=0.5", "no readable event"),
    **{
        f"slurm_jobs.json {what}": ({"summary.json": DONE, "slurm_jobs.json": content}, "completed", "final:      val/acc=0.5", "slurm_jobs.json is damaged")
        for what, content in DAMAGED_JOBS.items()
    },
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(STATUS_CASES))
def test_status_tells_what_it_can_and_warns_once(case, work, fake_slurm, monkeypatch, capsys):
    files, status, shown, warning = STATUS_CASES[case]
    run = make_run(work, files)
    monkeypatch.chdir(work)
    before = tree_state(work)
    code, out, err = run_main(["status", str(run)], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert f"status:     {status}" in out and shown in out, out
    lines = err.splitlines()
    if warning is None:
        assert not lines, err
    else:
        assert len(lines) == 1 and lines[0].startswith("launch: warning: ") and warning in lines[0], err
    assert tree_state(work) == before
    assert "slurm job:" not in out  # (no job read from a damaged file)


# ---------------------------------------------------------------- `python -m launcher.slurm after`


@pytest.fixture
def keep_signals():
    """after() ignores the stop signals (it runs in the batch shell); give this process them back."""
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2, signal.SIGUSR1)
    saved = {s: signal.getsignal(s) for s in sigs}
    yield
    for s, handler in saved.items():
        signal.signal(s, handler)


CONFIG = "recipe: tiny\nslurm:\n  max_requeues: 3\n"
# damaged files -> (exit code, summary.json's status afterwards, a piece of the decision line, a warning)
AFTER_CASES = {
    "summary a JSON list": ({"summary.json": "[1, 2]", "config.yaml": CONFIG}, 1, "failed", "ended without a summary", "summary.json is damaged"),
    "summary garbage": ({"summary.json": GARBAGE, "config.yaml": CONFIG}, 1, "failed", "ended without a summary", "summary.json is damaged"),
    "config.yaml a list": ({"config.yaml": "- 1\n- 2\n", ".stop-42.0": "USR2\n"}, 143, "preempted", "max_requeues=0 reached", "no slurm.max_requeues"),
    "config.yaml without slurm": ({"config.yaml": "recipe: tiny\nslurm: 3\n", ".stop-42.0": "TERM\n"}, 143, "preempted", "SIGTERM", "no slurm.max_requeues"),
    "stop file binary": ({"config.yaml": CONFIG, ".stop-42.0": "\udcff\udcfe\n"}, 143, "preempted", "SIGUSR2 in attempt 1 of job 42", None),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(AFTER_CASES))
def test_after_on_damaged_files_decides_without_a_traceback(case, tmp_path, fake_slurm, keep_signals, capsys):
    files, code, status, says, warning = AFTER_CASES[case]
    run = tmp_path / "run"
    run.mkdir()
    for name, content in files.items():
        (run / name).write_bytes(content.encode(errors="surrogateescape"))
    environ = {"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "0"}
    assert slurm.after(run, 0.0, 0, environ) == code
    err = capsys.readouterr().err
    *warnings, decision = err.splitlines()
    assert decision.startswith("launch: ") and says in decision, err
    if warning is None:
        assert not warnings, err
    else:
        assert len(warnings) == 1 and warnings[0].startswith("launch: warning: ") and warning in warnings[0], err
    assert json.loads((run / "summary.json").read_text())["status"] == status  # the truth about this attempt


@pytest.mark.parametrize("argv", [["after", "/x", "soon", "0"], ["after", "/x", "1.5", "x"]])
def test_after_with_bad_arguments_is_one_line(argv, capsys):
    assert slurm.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "usage: python -m launcher.slurm after" in err
