"""Run integrity (issue 16): built-in recipes never shadowed, no secret in a name, one file-mode
rule, metrics.jsonl kept when it is damaged, settings a completed run ignores are named, errors
found behind torchrun stay one line."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.badinput import Case, assert_refused, run_main
from tests.conftest import ROOT, TINY, launch_env, launch_here, run_launch

SECRET = "TOKSECRET_abc123"

# a user recipe whose data section takes credentials (what a recipe reading a private bucket has)
SECRET_RECIPE = """
from launcher.config import DataSection
from tests.tiny_recipe import Tiny, TinyData


class CredData(TinyData):
    token: str = ""
    api_key: str = ""


class Cred(Tiny):
    Data = CredData
"""


def _secret_recipe(root: Path) -> str:
    (root / "cred_recipe.py").write_text(SECRET_RECIPE)
    return f"recipe={root / 'cred_recipe.py'}:Cred"


def test_a_recipes_folder_in_the_working_directory_shadows_nothing(tmp_path):
    """`python -m` puts the working directory first on sys.path: a user's `recipes/` package there
    (here one that cannot even be imported) must not hide the built-ins, and its modules stay
    importable as recipes.NAME. (A real `python -m launcher`: its sys.path is the point.)"""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "__init__.py").write_text("raise ImportError('the user package, not ours')\n")
    (tmp_path / "recipes" / "mine.py").write_text((ROOT / "tests" / "tiny_recipe.py").read_text())
    r = run_launch(["recipe=recipes.mine:Tiny", "train.max_steps=2", "log.quiet=true"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(next((tmp_path / "runs").glob("*/*/summary.json")).read_text())["status"] == "completed"
    listed = run_launch(["--list"], tmp_path)
    assert listed.returncode == 0 and "resnet_finetune" in listed.stdout, listed.stderr


def test_secret_values_never_enter_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = _secret_recipe(tmp_path)
    args = [recipe, f"data.token={SECRET}", f"data.api_key={SECRET}", "train.lr=0.01"]
    code, out, err = run_main([*args, "--dry-run"], capsys)
    assert code == 0, err
    run_line = next(line for line in out.splitlines() if line.startswith("# run directory"))
    assert SECRET not in run_line and "lr-0.01" in run_line
    code, out, err = run_main([*args, "--slurm", "--dry-run"], capsys)
    assert code == 0, err
    script = out.split("# submit.sbatch", 1)[1]
    assert SECRET not in script
    assert not (tmp_path / "runs").exists()


def _modes(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): stat.S_IMODE(p.stat().st_mode) for p in run_dir.rglob("*") if p.is_file()}


def test_file_modes_follow_the_umask_and_a_config_with_credentials_stays_private(tmp_path):
    recipe = _secret_recipe(tmp_path)
    cmd = [sys.executable, "-m", "launcher", recipe, f"data.token={SECRET}", "log.backends=jsonl,tensorboard"]
    r = subprocess.run(
        ["sh", "-c", 'umask 027; exec "$@"', "sh", *cmd],
        cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_dir = next((tmp_path / "runs").glob("*/*"))
    modes = _modes(run_dir)
    private = {k for k in modes if Path(k).name == "config.yaml"}
    assert len(private) >= 2  # the run's and each checkpoint's
    for name, mode in modes.items():
        assert mode == (0o600 if name in private else 0o640), (name, oct(mode))
    for d in [run_dir, *[p for p in run_dir.rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o750, d


def test_without_credentials_config_follows_the_umask_too(tmp_path, monkeypatch, capsys):
    from launcher.rundir import file_mode, holds_secrets

    assert not holds_secrets({"data": {"token": ""}, "train": {"lr": 0.1}})
    assert holds_secrets({"data": {"api_key": "x"}})
    old = os.umask(0o022)
    try:
        assert file_mode() == 0o644 and file_mode(private=True) == 0o600
        os.umask(0o002)
        assert file_mode() == 0o664
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- metrics.jsonl


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_deleted_mid_run_are_written_again(tmp_path):
    from launcher.runtime.loggers import JsonlLogger

    warnings: list[str] = []
    path = tmp_path / "metrics.jsonl"
    log = JsonlLogger(path, None, warnings.append)
    for step in range(3):
        log.log({"step": step})
    path.unlink()  # e.g. a careless `rm runs/*/*/metrics.jsonl` while it trains
    log.log({"step": 3})
    offset = log.offset()
    log.close()
    assert [e["step"] for e in _events(path)] == [0, 1, 2, 3]
    assert offset == path.stat().st_size
    assert len(warnings) == 1 and "deleted or replaced" in warnings[0] and "3 events kept" in warnings[0]


def test_metrics_shorter_than_the_checkpoint_keep_their_whole_lines(tmp_path):
    from launcher.runtime.loggers import JsonlLogger

    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s}) + "\n" for s in range(5)]
    full = "".join(lines)
    path.write_text(full[: len(lines[0]) + len(lines[1]) + 3])  # two events and part of a third
    warnings: list[str] = []
    log = JsonlLogger(path, len(full), warnings.append)  # the checkpoint saw all five
    log.log({"step": 5})
    log.close()
    assert [e["step"] for e in _events(path)] == [0, 1, 5]
    assert len(warnings) == 1 and "shorter" in warnings[0] and "2 whole events" in warnings[0]
    path.unlink()
    warnings.clear()
    JsonlLogger(path, len(full), warnings.append).close()
    assert len(warnings) == 1 and "missing" in warnings[0]


# --------------------------------------------------------------------------- completed runs, paths


def test_a_completed_run_names_the_settings_it_did_not_apply(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    base = [f"recipe={TINY}", "run.name=done", "train.max_steps=2", "log.quiet=true"]
    code, _, err = run_main(base, capsys)
    assert code == 0, err
    code, out, err = run_main([*base, "log.backends=jsonl,tensorboard"], capsys)
    assert code == 0, err
    assert "already complete" in out and "Not applied" in out and "log.backends" in out
    assert "launch report" in out and "model.init_from" in out
    assert not (tmp_path / "runs/tiny/done/tensorboard").exists()


PATH_CASES = [
    Case("resume path missing", ["recipe={tiny}", "run.resume={cwd}/nope"], "not found"),
    Case(
        "resume dir not a checkpoint", ["recipe={tiny}", "run.resume={cwd}/dir"], "not a complete", files={"dir/x": ""}
    ),
    Case("init_from missing", ["recipe={tiny}", "model.init_from={cwd}/nope.safetensors"], "model.init_from"),
]


@pytest.mark.parametrize("case", PATH_CASES, ids=lambda c: c.id)
def test_paths_are_checked_before_anything_starts(case, tmp_path, monkeypatch, capsys):
    assert_refused(case, tmp_path, monkeypatch, capsys)


def test_bad_input_found_behind_torchrun_is_one_line(tmp_path):
    """A worker's LaunchError under torchrun: its one line, exit 2, no torchrun report."""
    import torch

    torch.save({"nope": torch.zeros(2)}, tmp_path / "w.pt")
    r = launch_here([f"recipe={TINY}", "--procs", "2", f"model.init_from={tmp_path / 'w.pt'}"], tmp_path)
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: model.init_from=") and "does not fit" in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_report_reads_what_is_left_of_damaged_files(tmp_path, capsys):
    run = tmp_path / "runs" / "tiny" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("recipe: tiny\n")
    good = [json.dumps({"step": s, "train/loss": 1.0 / (s + 1)}) for s in (1, 2)]
    (run / "metrics.jsonl").write_bytes(("\n".join([good[0], "garbage", "[1, 2]", good[1]]) + "\n").encode())
    (run / "summary.json").write_text("[]")
    code, out, err = run_main(["report", str(run)], capsys)
    assert code == 0, err
    assert "2 damaged line(s)" in err and "summary.json is damaged" in err and "Traceback" not in err
    assert "0.3333" in out  # the last good train/loss
    (run / "summary.json").write_bytes(b"\x00\xff{")
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe\n")
    code, out, err = run_main(["report", str(run)], capsys)
    assert code == 0 and "Traceback" not in err
