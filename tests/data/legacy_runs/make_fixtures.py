"""Regenerate the legacy run directories that tests/test_legacy_checkpoints.py resumes.

They are written by the PREVIOUS release's code (commit ``OLD_COMMIT``), run from an exported
copy of that commit, never by the code in this working tree:

    /work/main/.venv/bin/python tests/data/legacy_runs/make_fixtures.py [--src /tmp/legacy-src]

What it does, per strategy (``CASES``), in a scratch directory:

1. ``git archive OLD_COMMIT`` into ``--src`` (default /tmp/legacy-src) and copy
   ``legacy_tiny.py`` (this folder: the old ``tests/tiny_recipe.py``, frozen) to the same
   relative path there, so that ``recipe=tests.data.legacy_runs.legacy_tiny:Tiny`` names the
   same module for the old code and for the current one (a module spec, not a file path: file
   specs are made absolute, which would put this machine's path into config.yaml and into the
   run name's config hash).
2. Run ``python -m launcher ARGS`` with ``PYTHONPATH=<src>`` (the editable install of this
   checkout is a .pth entry, after PYTHONPATH; ``launcher/__init__`` moves the working directory
   to the end of sys.path, so the working directory alone would NOT pick the old code). An
   import log written by a ``sitecustomize`` in a scratch folder on PYTHONPATH proves that every
   process (launch, torchrun's agent, every worker) imported ``launcher`` and ``recipes`` from
   ``<src>``; the script stops otherwise.
3. (a) ``ref/``: the command run to completion; its final ``model.safetensors`` is kept as
   ``<strategy>/reference.safetensors`` and its deterministic metrics as
   ``<strategy>/reference_metrics.jsonl``.
   (b) ``cut/``: the same command in its own session, the whole process group SIGKILLed as soon
   as a checkpoint inside the second epoch has its COMPLETE marker. The run directory (default
   name, chosen by the old code) is kept as ``<strategy>/runs/tiny/<name>/`` without ``.lock*``
   files, ``logs/``, ``summary.json``, ``.exit_code`` and every checkpoint but the newest
   complete one: config.yaml, metrics.jsonl (as the kill left it) and checkpoints/step-N/
   (untouched: its COMPLETE lists every file's size and CRC-32).
4. ``<strategy>/fixture.json`` records the commit, the exact arguments, the run directory, the
   checkpoint and the reference's summary (global_step, final_metrics).

The commands (run in an empty directory; ``launch`` = ``python -m launcher``)::

    launch recipe=tests.data.legacy_runs.legacy_tiny:Tiny train.epochs=4 data.size=160 \
        data.step_delay=0.05 checkpoint.every_steps=4 log.backends=jsonl --device cpu  \
        --strategy single
    ... --procs 2 --strategy ddp
    ... --procs 2 --strategy accelerate
    ... --procs 2 --strategy deepspeed deepspeed.stage=2

The run name is the old code's default (``<slug>-<config hash>``); the test checks that the
current code maps the same command to the same directory. Of these keys only ``checkpoint.*`` and
``log.`` are operational (left out of the hash); ``data.step_delay`` (0.05 s per batch, so that
the kill lands between two checkpoints) is part of the name.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
OLD_COMMIT = "5108928"
RECIPE_REL = Path("tests/data/legacy_runs/legacy_tiny.py")

COMMON = [
    "recipe=tests.data.legacy_runs.legacy_tiny:Tiny",
    "train.epochs=4",
    "data.size=160",
    "data.step_delay=0.05",
    "checkpoint.every_steps=4",
    "log.backends=jsonl",
    "--device",
    "cpu",
]
CASES = {
    "single": [*COMMON, "--strategy", "single"],
    "ddp": [*COMMON, "--procs", "2", "--strategy", "ddp"],
    "accelerate": [*COMMON, "--procs", "2", "--strategy", "accelerate"],
    "deepspeed": [*COMMON, "--procs", "2", "--strategy", "deepspeed", "deepspeed.stage=2"],
}
# metrics that do not depend on timing or memory (compared by the test)
DETERMINISTIC = ("step", "epoch", "lr", "grad_norm", "train/loss", "train/acc", "val/loss", "val/acc")

SITECUSTOMIZE = '''
import importlib.machinery, os, sys

class _Audit:
    """Log where `launcher` and `recipes` come from, in every process."""

    def find_spec(self, name, path=None, target=None):
        if name not in ("launcher", "recipes", "launcher.runtime.worker"):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        with open(os.environ["LEGACY_IMPORT_LOG"], "a") as f:
            f.write(f"{os.getpid()} {name} {spec.origin if spec else None}\\n")
        return spec

sys.meta_path.insert(0, _Audit())
'''


def export_old(src: Path) -> None:
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive.stdout, check=True)
    (src / RECIPE_REL).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(HERE / "legacy_tiny.py", src / RECIPE_REL)


def old_env(src: Path, audit_dir: Path, log: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "WANDB_MODE": "disabled",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": f"{audit_dir}{os.pathsep}{src}",
            "LEGACY_IMPORT_LOG": str(log),
        }
    )
    return env


def check_imports(log: Path, src: Path, what: str) -> None:
    lines = log.read_text().splitlines() if log.exists() else []
    assert lines, f"{what}: no import logged"
    bad = [ln for ln in lines if not ln.split(" ", 2)[2].startswith(str(src) + os.sep)]
    assert not bad, f"{what}: imported code outside {src}: {bad}"
    pids = {ln.split()[0] for ln in lines if " launcher.runtime.worker " in ln}
    print(f"  {what}: {len(lines)} imports, all from {src} ({len(pids)} worker process(es))")


def only_run_dir(cwd: Path) -> Path:
    dirs = [p for p in (cwd / "runs").glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def complete_steps(run: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in run.glob("checkpoints/step-*/COMPLETE"))


def mid_second_epoch(ckpt: Path) -> bool:
    """A complete checkpoint inside the second epoch (after the first epoch's evaluation, so the
    resumed state holds a best value, momentum, RNG streams and a position within an epoch)."""
    try:
        meta = json.loads((ckpt / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta["epoch"] >= 1 and meta["batch_in_epoch"] > 0


def make_case(name: str, args: list[str], src: Path, scratch: Path, audit_dir: Path) -> None:
    print(f"{name}: launch {' '.join(args)}")
    cmd = [sys.executable, "-m", "launcher", *args]
    ref, cut = scratch / name / "ref", scratch / name / "cut"
    ref.mkdir(parents=True)
    cut.mkdir(parents=True)

    # (a) uninterrupted reference
    log = scratch / name / "imports-ref.log"
    t0 = time.time()
    r = subprocess.run(cmd, cwd=ref, env=old_env(src, audit_dir, log), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    check_imports(log, src, "reference run")
    ref_run = only_run_dir(ref)
    assert not (ref_run / "plan.json").exists(), "plan.json written: this is not the old code"
    summary = json.loads((ref_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] is None, summary
    print(f"  reference: {ref_run.name}, {summary['global_step']} steps, {time.time() - t0:.1f} s")

    # (b) the same command, SIGKILLed (whole process group) after a complete checkpoint in epoch 2
    log = scratch / name / "imports-cut.log"
    proc = subprocess.Popen(
        cmd,
        cwd=cut,
        env=old_env(src, audit_dir, log),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 600
    while not any(mid_second_epoch(c.parent) for c in cut.glob("runs/*/*/checkpoints/step-*/COMPLETE")):
        assert proc.poll() is None, f"ended before a checkpoint: {proc.stderr.read()}"
        assert time.time() < deadline, "no checkpoint"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    check_imports(log, src, "interrupted run")
    cut_run = only_run_dir(cut)
    assert cut_run.name == ref_run.name, (cut_run.name, ref_run.name)
    assert not (cut_run / "model.safetensors").exists(), "the run finished before the kill"
    steps = complete_steps(cut_run)
    assert steps and steps[-1] < summary["global_step"], steps
    print(f"  killed after checkpoint step-{steps[-1]} (complete: {steps})")

    # store: <name>/runs/<recipe>/<run name>/ without what resume does not need
    out = HERE / name
    shutil.rmtree(out, ignore_errors=True)
    dest = out / cut_run.relative_to(cut)
    shutil.copytree(cut_run, dest)
    for p in list(dest.iterdir()):
        if p.name.startswith(".lock") or p.name in ("logs", ".exit_code", "summary.json"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in list((dest / "checkpoints").iterdir()):
        if p.name != f"step-{steps[-1]}":  # older ones (keep_last), one the kill cut short
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    shutil.copy2(ref_run / "model.safetensors", out / "reference.safetensors")
    with open(out / "reference_metrics.jsonl", "w") as f:
        for line in (ref_run / "metrics.jsonl").read_text().splitlines():
            event = json.loads(line)
            f.write(json.dumps({k: v for k, v in event.items() if k in DETERMINISTIC}) + "\n")
    meta = {
        "commit": OLD_COMMIT,
        "args": args,
        "run_dir": str(cut_run.relative_to(cut)),
        "checkpoint": f"step-{steps[-1]}",
        "reference": {k: summary[k] for k in ("global_step", "epochs", "final_metrics", "global_batch_size")},
        "kept": sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()),
    }
    (out / "fixture.json").write_text(json.dumps(meta, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("/tmp/legacy-src"), help="where to export the old code")
    ap.add_argument("cases", nargs="*", default=list(CASES), help=f"some of {list(CASES)}")
    opts = ap.parse_args()
    src = opts.src.resolve()
    export_old(src)
    with tempfile.TemporaryDirectory(prefix="legacy-fixtures-") as tmp:
        scratch = Path(tmp)
        audit_dir = scratch / "audit"
        audit_dir.mkdir()
        (audit_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for name in opts.cases:
            make_case(name, CASES[name], src, scratch, audit_dir)


if __name__ == "__main__":
    main()
