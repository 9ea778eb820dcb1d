"""The parent side never imports torch: --help, --list, --show-config, --dry-run and config errors
answer without it (each checked in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import launch_env

HEAVY = ("torch", "torchvision", "torchaudio", "accelerate", "deepspeed", "wandb")

PROBE = """
import sys
{body}
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {heavy!r})
print("HEAVY=" + ",".join(heavy))
"""

RUN_MAIN = """
from launcher.cli import main
try:
    main({argv!r})
except SystemExit as e:
    print("EXIT=" + str(e.code))
else:
    print("EXIT=none")
"""


def probe(body: str, cwd: Path) -> subprocess.CompletedProcess:
    code = PROBE.format(body=body, heavy=HEAVY)
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=launch_env(), capture_output=True, text=True, timeout=120
    )


def heavy_modules(proc: subprocess.CompletedProcess) -> list[str]:
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("HEAVY="), proc.stdout
    return [m for m in last.removeprefix("HEAVY=").split(",") if m]


def test_importing_the_cli_imports_no_torch(tmp_path):
    proc = probe(
        "import launcher.cli\nimport launcher.config, launcher.plan, launcher.commands, launcher.rundir", tmp_path
    )
    assert heavy_modules(proc) == []


@pytest.mark.parametrize(
    ("argv", "exit_code", "needle"),
    [
        (["--help"], 0, "--dry-run"),
        (["--list"], 0, "resnet_finetune"),
        (["recipe=resnet_finetune", "--show-config", "train.lr=0.02"], 0, "lr: 0.02"),
        (["recipe=resnet_finetune", "--dry-run"], 0, "launcher.runtime.worker"),
        (["recipe=resnet_finetune", "train.lrr=1"], 2, "did you mean train.lr?"),
    ],
)
def test_cli_answers_without_torch(tmp_path, argv, exit_code, needle):
    proc = probe(RUN_MAIN.format(argv=argv), tmp_path)
    assert f"EXIT={exit_code}" in proc.stdout.splitlines()
    assert needle in proc.stdout + proc.stderr
    assert heavy_modules(proc) == []
    assert list(tmp_path.iterdir()) == []  # and wrote nothing


def test_list_reads_descriptions_without_importing_recipes(tmp_path):
    """`launch --list` reads the built-in recipes' descriptions from their source: no pydantic either."""
    body = RUN_MAIN.format(argv=["--list"]) + "\nprint('PYDANTIC=' + str('pydantic' in sys.modules))"
    proc = probe(body, tmp_path)
    assert "EXIT=0" in proc.stdout.splitlines()
    assert "PYDANTIC=False" in proc.stdout.splitlines()
    assert heavy_modules(proc) == []


def test_static_descriptions_match_the_classes():
    from launcher.recipe_loader import load_recipe, static_description
    from recipes import BUILTIN

    for name, target in BUILTIN.items():
        assert static_description(target) == load_recipe(name).description, name
    assert static_description("recipes.no_such_module:X") is None
    assert static_description("recipes.base:Recipe") is None  # description = "" (not a usable literal)
