"""Recipes own the task, the runtime owns devices, backward, samplers and distributed code."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY, launch_env, launch_here

RECIPE_FILES = sorted((ROOT / "recipes").glob("*.py"))
DEVICE_STRINGS = ("cuda", "cpu", "mps")


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for Name/Attribute chains, '' otherwise."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def _is_device_arg(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.split(":")[0] in DEVICE_STRINGS
    name = _dotted(node)
    if name and "device" in name.rsplit(".", 1)[-1].lower():
        return True
    return isinstance(node, ast.Call) and _dotted(node.func) in ("torch.device", "device")


def forbidden(source: str, filename: str = "<recipe>") -> list[str]:
    """'file:line: what' for every runtime-owned call or name in a recipe's source."""
    found = []

    def hit(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{node.lineno}: {what}")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            attr = node.func.attr
            if attr in ("cuda", "backward"):
                hit(node, f".{attr}(")
            elif attr == "to":
                args = list(node.args) + [k.value for k in node.keywords if k.arg == "device"]
                if any(_is_device_arg(a) for a in args):
                    hit(node, ".to(<device>)")
        if isinstance(node, (ast.Attribute, ast.Name)):
            name = _dotted(node)
            if name == "torch.distributed" or name.startswith("torch.distributed."):
                hit(node, "torch.distributed")
            if name.rsplit(".", 1)[-1] == "DistributedSampler":
                hit(node, "DistributedSampler")
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torch.distributed"):
                    hit(node, f"import {alias.name}")
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names]
            if node.module.startswith("torch.distributed") or (node.module == "torch" and "distributed" in names):
                hit(node, f"from {node.module} import ...")
            if "DistributedSampler" in names:
                hit(node, "DistributedSampler")
    return sorted(set(found), key=lambda s: int(s.split(":")[-2]))


BAD_RECIPE = """\
import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler
from torch import distributed

def step(model, batch, device):
    x = batch.cuda()
    model.to(device)
    model.to("cuda:0")
    model.to(self.device)
    model.to(device=torch.device("cpu"))
    loss = model(x).sum()
    loss.backward()
    torch.distributed.all_reduce(loss)
    s = torch.utils.data.DistributedSampler(batch)
    return loss
"""


def test_the_checker_finds_every_forbidden_pattern():
    lines = {int(f.split(":")[1]) for f in forbidden(BAD_RECIPE, "bad.py")}
    assert lines == {2, 3, 4, 7, 8, 9, 10, 11, 13, 14, 15}


def test_the_checker_allows_what_recipes_may_do():
    ok = """\
model = model.to(memory_format=torch.channels_last)
x = x.to(torch.float32)
y = x.contiguous(memory_format=torch.channels_last)
"""
    assert forbidden(ok) == []


def test_recipe_files_exist():
    names = {p.name for p in RECIPE_FILES}
    assert {"__init__.py", "base.py", "resnet_finetune.py"} <= names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.name)
def test_recipes_leave_devices_backward_and_distribution_to_the_runtime(path):
    problems = forbidden(path.read_text(), str(path.relative_to(ROOT)))
    assert problems == [], "recipes must not do this (the runtime does):\n" + "\n".join(problems)


def test_importing_recipes_imports_no_torch(tmp_path):
    code = (
        "import sys, recipes, recipes.base, recipes.resnet_finetune\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# --------------------------------------------------------------------------- user recipes


def assert_bad_input(proc: subprocess.CompletedProcess, cwd: Path) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (cwd / "runs").exists()
    return lines[0]


NO_STEP = """\
from recipes.base import Recipe


class NoStep(Recipe):
    def build_model(self):
        return None

    def build_datasets(self):
        return None, None
"""


def test_recipe_without_step_names_step(tmp_path):
    (tmp_path / "mine.py").write_text(NO_STEP)
    line = assert_bad_input(launch_here(["recipe=mine.py:NoStep"], tmp_path), tmp_path)
    assert "does not implement step" in line
    assert "build_model" not in line.split(";")[0]  # only the missing method is named


def test_recipe_file_that_does_not_exist(tmp_path):
    line = assert_bad_input(launch_here(["recipe=nowhere/mine.py:Mine"], tmp_path), tmp_path)
    assert "recipe file nowhere/mine.py not found" in line


def test_recipe_module_that_does_not_exist(tmp_path):
    line = assert_bad_input(launch_here(["recipe=no_such_pkg.recipes:Mine"], tmp_path), tmp_path)
    assert "cannot import recipe module 'no_such_pkg.recipes'" in line


def test_missing_class_names_the_classes_there(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "tiny_recipe.py").write_text(Path(TINY.rpartition(":")[0]).read_text())
    line = assert_bad_input(launch_here(["recipe=tests/tiny_recipe.py:Nope"], tmp_path), tmp_path)
    assert "has no class 'Nope'" in line
    assert "classes there:" in line and "Tiny" in line.split("classes there:")[1]


def test_a_recipe_that_is_not_a_class(tmp_path):
    (tmp_path / "mine.py").write_text("def step(model, batch):\n    return None\n")
    line = assert_bad_input(launch_here(["recipe=mine.py:step"], tmp_path), tmp_path)
    assert "is not a class" in line


# --------------------------------------------------------------------------- torchvision names


def test_weights_names_match_torchvision():
    from torchvision.models import get_model_weights

    from recipes.resnet_finetune import ARCHS, WEIGHTS

    assert set(WEIGHTS) == set(ARCHS)
    for arch in ARCHS:
        enum = get_model_weights(arch)
        names = tuple(n for n in enum.__members__ if n != "DEFAULT")
        assert names == WEIGHTS[arch], arch
        assert "DEFAULT" in enum.__members__
