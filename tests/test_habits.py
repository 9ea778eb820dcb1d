"""What users of Hydra, torchtune and Lightning type first: dotted keys in config files, +key /
~key / a bare recipe name on the command line, and config files named in the run directory."""

from __future__ import annotations

import pytest

from launcher.rundir import default_run_name
from tests.conftest import TINY, launch_here


def test_dotted_keys_in_a_config_file_are_nested_keys(tmp_path):
    (tmp_path / "d.yaml").write_text("train.lr: 0.02\nmodel.hidden: 5\ntrain:\n  epochs: 2\n")
    r = launch_here([f"recipe={TINY}", "config=d.yaml", "--show-config"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "  lr: 0.02\n" in r.stdout and "  epochs: 2\n" in r.stdout and "  hidden: 5\n" in r.stdout


@pytest.mark.parametrize(
    "text, words",
    [
        ("train.lr: 0.02\ntrain:\n  lr: 0.1\n", "train.lr is given twice; keep one"),
        ("train:\n  lr: 0.1\ntrain.lr: 0.02\n", "train.lr is given twice; keep one"),
        ("train: 3\ntrain.lr: 0.02\n", "train is a value and a section; keep one"),
    ],
)
def test_a_key_given_both_ways_is_one_line(tmp_path, text, words):
    (tmp_path / "x.yaml").write_text(text)
    r = launch_here([f"recipe={TINY}", "config=x.yaml", "--dry-run"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"error: config file x.yaml: {words}", r.stderr


@pytest.mark.parametrize(
    "args, line",
    [
        (["resnet_finetune"], "'resnet_finetune': write recipe=resnet_finetune (every argument is key=value)"),
        (["my_recipe.py:Mine"], "'my_recipe.py:Mine': write recipe=my_recipe.py:Mine (every argument is key=value)"),
        ([f"recipe={TINY}", "+train.lr=0.1"], "+train.lr=0.1: launch has no +key= (Hydra's); every key is in the schema already: write train.lr=0.1"),
        ([f"recipe={TINY}", "++train.lr=0.1"], "++train.lr=0.1: launch has no ++key= (Hydra's); every key is in the schema already: write train.lr=0.1"),
        ([f"recipe={TINY}", "~train.lr"], "~train.lr: launch does not delete keys (Hydra's ~); leave train.lr out to get its default"),
    ],
)  # fmt: skip
def test_hydra_and_torchtune_habits_get_what_to_type(tmp_path, args, line):
    r = launch_here([*args, "--dry-run"], tmp_path)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {line}", r.stderr
    assert not (tmp_path / "runs").exists()


def test_config_file_names_come_first_in_the_run_name_and_old_runs_keep_their_directory(tmp_path):
    (tmp_path / "exp.yaml").write_text("train:\n  epochs: 1\n")
    r = launch_here([f"recipe={TINY}", "config=exp.yaml", "--dry-run"], tmp_path)
    assert "# run directory: runs/tiny/exp-" in r.stdout, r.stdout + r.stderr
    r = launch_here([f"recipe={TINY}", "config=exp.yaml", "train.lr=0.1", "--dry-run"], tmp_path)
    assert "# run directory: runs/tiny/exp_lr-0.1-" in r.stdout, r.stdout + r.stderr
    # a run that the same command started before config names counted (default-HASH): resumed there
    import os

    from launcher.cli import resolve_from_argv

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        _, _, cfg, kv = resolve_from_argv((f"recipe={TINY}", "config=exp.yaml", "dist.device=cpu"), [])
    finally:
        os.chdir(cwd)
    legacy = default_run_name(cfg, kv)
    assert legacy.startswith("device-cpu-")
    old = launch_here([f"recipe={TINY}", "train.epochs=1", "dist.device=cpu", f"run.name={legacy}"], tmp_path)
    assert old.returncode == 0, old.stderr
    again = launch_here([f"recipe={TINY}", "config=exp.yaml", "dist.device=cpu"], tmp_path)
    assert again.returncode == 0 and f"runs/tiny/{legacy} is already complete" in again.stdout, (
        again.stdout + again.stderr
    )
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == [legacy]


def test_wandb_takes_its_own_environment_variables_unless_the_config_sets_them(tmp_path):
    from tests.wandb_records import read_run

    env = {"WANDB_MODE": "offline", "HOME": str(tmp_path), "WANDB_PROJECT": "envproj",
           "WANDB_ENTITY": "envteam", "WANDB_RUN_GROUP": "envgroup"}  # fmt: skip
    base = [f"recipe={TINY}", "train.epochs=1", "log.backends=[jsonl,wandb]", "--device", "cpu"]
    r = launch_here([*base, "run.name=a"], tmp_path, **env)
    assert r.returncode == 0, r.stderr
    r = launch_here(
        [*base, "run.name=b", "log.wandb.project=p", "log.wandb.entity=t", "log.wandb.group=g"], tmp_path, **env
    )
    assert r.returncode == 0, r.stderr
    (a,) = (tmp_path / "runs" / "tiny" / "a").glob("wandb/offline-run-*/run-*.wandb")
    (b,) = (tmp_path / "runs" / "tiny" / "b").glob("wandb/offline-run-*/run-*.wandb")
    ra, rb = read_run(a), read_run(b)
    assert (ra.project, ra.entity, ra.group) == ("envproj", "envteam", "envgroup")
    assert (rb.project, rb.entity, rb.group) == ("p", "t", "g")
