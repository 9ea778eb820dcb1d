"""Bad config input (key=value, config files, YAML) is refused before anything starts: one line
naming the key (or the file) and the fix, exit status 2, nothing written (tests/badinput.py).

Most cases pass --dry-run: the input used to be accepted, and a case that regresses must not start
a training run inside the test process. The long run.name case runs for real: the directory it
left behind only appeared when a run was started.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.badinput import Case, assert_refused

T = "recipe={tiny}"
DRY = "--dry-run"


def _bomb(levels: int = 9) -> str:
    """A "billion laughs" file: each alias level stands for 10 of the one before (10**9 values)."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "defs:\n" + "".join(f"  {line}\n" for line in lines) + f"train:\n  lr: *a{levels - 1}\n"


def _unreadable(cwd: Path) -> None:
    (cwd / "secret.yaml").chmod(0)


CASES = [
    # non-finite numbers: trained to nan
    Case("lr_inf", [T, "train.lr=.inf", DRY], "train.lr=inf: Input should be a finite number"),
    Case("lr_1e400", [T, "train.lr=1e400", DRY], "train.lr=inf"),
    Case("lr_nan", [T, "train.lr=.nan", DRY], "finite"),
    Case("grad_clip_inf", [T, "train.grad_clip=.inf", DRY], "train.grad_clip"),
    Case("betas_nan", [T, "train.betas=[.nan,0.999]", DRY], "train.betas.0=nan"),
    Case("file_lr_inf", [T, "config=exp.yaml", DRY], "train.lr=inf", files={"exp.yaml": "train:\n  lr: 1.0e+400\n"}),
    Case("file_lr_inf_string", [T, "config=exp.yaml", DRY], "finite", files={"exp.yaml": "train:\n  lr: inf\n"}),
    # a boolean is not a number (was read as 1)
    Case("epochs_true", [T, "train.epochs=true", DRY], "train.epochs=true: Input should be a number, not true/false"),
    Case("lr_true", [T, "train.lr=true", DRY], "train.lr=true"),
    Case("milestones_bool", [T, "train.milestones=[true]", DRY], "train.milestones"),
    Case(
        "file_epochs_yes",
        [T, "config=exp.yaml", DRY],
        "train.epochs=true",
        files={"exp.yaml": "train:\n  epochs: yes\n"},
    ),
    # config files that were silently ignored or half read
    Case(
        "file_section_not_mapping",
        [T, "config=exp.yaml", "train.lr=0.2", DRY],
        "config file exp.yaml: train is a section, not 5",
        files={"exp.yaml": "train: 5\n"},
    ),
    Case(
        "file_nested_section_not_mapping",
        [T, "config=exp.yaml", DRY],
        "train.early_stopping is a section",
        files={"exp.yaml": "train:\n  early_stopping: 3\n"},
    ),
    Case("file_empty", [T, "config=exp.yaml", DRY], "config file exp.yaml is empty", files={"exp.yaml": ""}),
    Case("file_only_comments", [T, "config=exp.yaml", DRY], "is empty", files={"exp.yaml": "# train:\n#   lr: 1\n"}),
    Case(
        "file_duplicate_key",
        [T, "config=exp.yaml", DRY],
        "config file exp.yaml sets 'train.lr' twice (lines 2 and 4)",
        files={"exp.yaml": "train:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n"},
    ),
    Case(
        "file_duplicate_section",
        [T, "config=exp.yaml", DRY],
        "sets 'train' twice",
        files={"exp.yaml": "train:\n  lr: 0.1\nrun:\n  seed: 1\ntrain:\n  epochs: 3\n"},
    ),
    Case("cli_duplicate_key", [T, "train={lr: 0.1, lr: 0.2}", DRY], "train={lr: 0.1, lr: 0.2} sets 'lr' twice"),
    Case("file_too_big", [T, "config=big.yaml", DRY], "big.yaml is", files={"big.yaml": "#" + "x" * (1 << 20) + "\n"}),
    # paths that are no directory name
    Case("output_dir_empty", [T, "run.output_dir=", DRY], "run.output_dir is empty"),
    Case("output_dir_blank", [T, "run.output_dir= ", DRY], "run.output_dir is empty"),
    Case("name_newline", [T, "run.name=a\nb", DRY], "run.name='a\\nb' holds a control character"),
    Case("output_dir_tab", [T, "run.output_dir=runs\tx", DRY], "run.output_dir"),
    Case("log_dir_newline", [T, "log.dir=logs\n", DRY], "log.dir"),
    Case("name_nul", [T, "run.name=a\x01b", DRY], "control character"),
    Case("data_root_newline", [T, "data.root=data\nx", DRY], "data.root"),
    Case("name_too_long", [T, "run.name=" + "a" * 300, "train.max_steps=1"], "run.name has a name of 300 bytes"),
    Case(
        "output_dir_part_too_long", [T, "run.output_dir=x/" + "é" * 200, DRY], "run.output_dir has a name of 400 bytes"
    ),
    # ranges: tracebacks in the worker, or a hang
    Case("betas_above_one", [T, "train.betas=[1.5,2]", DRY], "train.betas=[1.5, 2.0]: each beta must be in [0, 1)"),
    Case("seed_huge", [T, "run.seed=99999999999999999999", DRY], "run.seed"),
    Case("seed_negative", [T, "run.seed=-1", DRY], "run.seed"),
    Case("num_workers_5000", [T, "data.num_workers=5000", DRY], "data.num_workers=5000"),
    Case("procs_huge", [T, "dist.procs=100000", DRY], "dist.procs"),
    Case("timeout_huge", [T, "dist.timeout_s=99999999999999999999", DRY], "dist.timeout_s"),
    Case("signal_lead_over_sbatch_limit", [T, "slurm.signal_lead_s=70000", DRY], "slurm.signal_lead_s"),
    Case("wandb_timeout_huge", [T, "log.wandb.init_timeout=1e9", DRY], "log.wandb.init_timeout"),
    Case("recipe_int_over_64_bits", [T, "model.hidden=99999999999999999999", DRY], "model.hidden"),
    # YAML that no config can be
    Case(
        "file_alias_cycle",
        [T, "config=exp.yaml", DRY],
        "uses an alias inside the value it names",
        files={"exp.yaml": "train:\n  milestones: &m [1, *m]\n"},
    ),
    Case("file_alias_bomb", [T, "config=exp.yaml", DRY], "expands to more than", files={"exp.yaml": _bomb()}),
    Case(
        "file_not_utf8",
        [T, "config=exp.yaml", DRY],
        "exp.yaml is not UTF-8 text (byte 0xff at offset 0)",
        files={"exp.yaml": b"\xff\xfe\x00\x01\x89PNG binary"},
    ),
    Case("file_recipe_int", ["config=exp.yaml", DRY], "recipe: 5 is not a recipe", files={"exp.yaml": "recipe: 5\n"}),
    Case("file_recipe_list", ["config=exp.yaml", DRY], "recipe", files={"exp.yaml": "recipe: [a]\n"}),
    Case("file_is_a_directory", [T, "config=conf", DRY], "config file conf is a directory", files={"conf/x": ""}),
    Case("file_read_fails", [T, "config=/proc/self/mem", DRY], "/proc/self/mem cannot be read"),
    # command-line values
    Case("empty_value", [T, "train.epochs=", DRY], "train.epochs= has no value; give one, e.g. train.epochs=1"),
    Case("empty_value_literal", [T, "train.optimizer=", DRY], "train.optimizer=sgd"),
    Case(
        "section_is_int",
        [T, "train=5", DRY],
        "bad value train=5: train is a section; set its keys, e.g. train.epochs=1",
    ),
    Case("section_then_key", [T, "train=5", "train.lr=0.1", DRY], "drop train=5"),
    Case("not_yaml_with_option", [T, "dist.procs=[1", "--procs", "2", DRY], "dist.procs=[1 conflicts with --procs 2"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(case, tmp_path, monkeypatch, capsys):
    assert_refused(case, tmp_path, monkeypatch, capsys)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_unreadable_config_file(tmp_path, monkeypatch, capsys):
    case = Case(
        "unreadable",
        [T, "config=secret.yaml", DRY],
        "secret.yaml cannot be read (Permission denied)",
        files={"secret.yaml": "train:\n  lr: 0.1\n"},
        setup=_unreadable,
    )
    assert_refused(case, tmp_path, monkeypatch, capsys)
