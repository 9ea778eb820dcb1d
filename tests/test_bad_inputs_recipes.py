"""Bad input in recipes and their data, caught before training: one line, exit 2, nothing left
(tests/badinput.py). Recipe files that do not import, image folders with one class or broken
files, an image size that asks for terabytes, and monitors that name no metric. The cases found
in the worker (after torch is imported) run it in this process (no prewarmed interpreter), as
`launch` does where it cannot prewarm; the worker removes the fresh run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from launcher.config import resolve
from launcher.errors import ConfigError
from tests.badinput import Case, assert_refused, run_main
from tests.conftest import TINY

QUICK = ["log.quiet=true", "train.max_steps=2"]
RESNET = ["recipe=resnet_finetune", "data.image_size=16", "train.batch_size=4", *QUICK]


@pytest.fixture(autouse=True)
def _in_process(monkeypatch):
    """The worker runs inside `launch` (its output reaches capsys); Python's own bytecode cache
    of an imported package is not something `launch` writes."""
    import launcher.cli

    monkeypatch.setattr(launcher.cli, "_prewarm_modules", lambda overrides, opts: None)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)


def image_folder(root: Path, classes=("cats", "dogs"), per_class=4) -> Path:
    from PIL import Image

    for split in ("train", "val"):
        for ci, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.new("RGB", (20 + i, 18), color=(60 * ci, 20 * i, 90)).save(folder / f"{i}.jpg")
    return root


def truncated_jpeg(path: Path) -> None:
    """A JPEG cut in half (an interrupted download): its header reads, its pixels do not."""
    from PIL import Image

    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    noise.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _one_class(cwd: Path) -> None:
    image_folder(cwd / "imgs", classes=("cats",))


def _zero_byte(cwd: Path) -> None:
    image_folder(cwd / "imgs")
    (cwd / "imgs" / "train" / "dogs" / "empty.jpg").write_bytes(b"")


def _empty_class(cwd: Path) -> None:
    image_folder(cwd / "imgs", classes=("cats", "dogs", "fish"))
    for p in (cwd / "imgs" / "train" / "fish").iterdir():
        p.unlink()


FOLDER = [*RESNET, "data.name=image_folder", "data.root={cwd}/imgs"]

SYNTAX = "class Mine:\n    def build_model(self)\n        pass\n"
SYS_EXIT = "import sys\nsys.exit(0)\n"
# a recipe that declares metric_names and overrides check() without calling Recipe.check: the
# worker checks the monitors again before it builds anything
OWN_CHECK = f"""\
import importlib.util
spec = importlib.util.spec_from_file_location("tiny_base", {str(TINY.rpartition(":")[0])!r})
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)


class Mine(tiny.Tiny):
    @classmethod
    def check(cls, cfg):
        pass
"""

CASES = [
    # recipe files that do not import
    Case("syntax error", ["recipe=broken.py:Mine"], "broken.py:2: expected ':'", files={"broken.py": SYNTAX}),
    Case(
        "import error",
        ["recipe=needs.py:Mine"],
        "recipe file needs.py failed at line 1: ModuleNotFoundError: No module named 'no_such_dependency_e2'",
        files={"needs.py": "import no_such_dependency_e2\n"},
    ),
    Case(
        "top-level raise",
        ["recipe=raises.py:Mine"],
        "raises.py failed at line 2: RuntimeError: set RECIPE_TOKEN first",
        files={"raises.py": "x = 1\nraise RuntimeError('set RECIPE_TOKEN first')\n"},
    ),
    Case(
        "top-level sys.exit(0)",
        ["recipe=exits.py:Mine"],
        "recipe file exits.py called sys.exit() while being imported",
        files={"exits.py": SYS_EXIT},
    ),
    Case(
        "module raises on import",
        ["recipe=e2pkg_raises.mod:Mine"],
        "e2pkg_raises/mod.py) failed at line 1: ValueError: no config",
        files={"e2pkg_raises/__init__.py": "", "e2pkg_raises/mod.py": "raise ValueError('no config')\n"},
    ),
    Case(
        "module's own import fails",
        ["recipe=e2pkg_dep.mod:Mine"],
        "importing recipe module e2pkg_dep.mod",
        files={"e2pkg_dep/__init__.py": "", "e2pkg_dep/mod.py": "import no_such_dependency_e2\n"},
    ),
    # (a regression guard: a module that is not there keeps its install hint)
    Case("module not there", ["recipe=e2pkg_none.mod:Mine"], "cannot import recipe module 'e2pkg_none.mod'"),
    # image folders
    Case("one class", FOLDER, "needs at least 2 classes (sub-folders with images); found 1: cats", setup=_one_class),
    Case("zero-byte image", FOLDER, "dogs/empty.jpg is empty (0 bytes)", setup=_zero_byte),
    Case("class folder without images", FOLDER, "train/fish has no images", setup=_empty_class),
    Case("image size 100000", [*RESNET, "data.image_size=100000"], "data.image_size=100000"),
    Case("digits too large", [*RESNET, "data.image_size=300"], "use data.image_size <= 256"),
    Case(
        "skip_bad without a folder", [*RESNET, "data.skip_bad=true"], "data.skip_bad applies to data.name=image_folder"
    ),
    # metric names
    Case(
        "early stopping monitor",
        [f"recipe={TINY}", *QUICK, "train.early_stopping.monitor=val/nope"],
        "train.early_stopping.monitor=val/nope is not a metric this recipe reports; did you mean val/loss?",
    ),
    Case(
        "checkpoint monitor",
        [f"recipe={TINY}", *QUICK, "checkpoint.monitor=val/nope", "checkpoint.keep_best=1"],
        "checkpoint.monitor=val/nope is not a metric this recipe reports",
    ),
    Case(
        "plateau on lr",
        [f"recipe={TINY}", *QUICK, "train.scheduler=plateau", "checkpoint.monitor=lr"],
        "lr is logged by the loop, but only the recipe's metrics can be monitored",
    ),
    Case(
        "a train metric only evaluation has",
        ["recipe=yesno", "data.download=false", "data.root={cwd}/none", "train.early_stopping.monitor=train/wer"],
        "train.early_stopping.monitor=train/wer is not a metric",
    ),
    Case(
        "resnet monitor",
        [*RESNET, "checkpoint.keep_best=1", "checkpoint.monitor=val/accuracy"],
        "did you mean val/acc?",
    ),
    Case(
        "checked again in the worker",
        ["recipe=own_check.py:Mine", *QUICK, "train.early_stopping.monitor=val/nope"],
        "train.early_stopping.monitor=val/nope",
        files={"own_check.py": OWN_CHECK},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_refused(case, tmp_path, monkeypatch, capsys):
    assert_refused(case, tmp_path, monkeypatch, capsys)


# --------------------------------------------------------------------------- found while training


def error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


UNDECLARED = f"""\
import importlib.util
spec = importlib.util.spec_from_file_location("tiny_base", {str(TINY.rpartition(":")[0])!r})
tiny = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tiny)


class Mine(tiny.Tiny):
    metric_names = None  # declares nothing: checked at the first evaluation
"""


def test_an_undeclared_metric_is_refused_at_the_first_evaluation_keeping_checkpoints(tmp_path, monkeypatch, capsys):
    (tmp_path / "mine.py").write_text(UNDECLARED)
    monkeypatch.chdir(tmp_path)
    argv = ["recipe=mine.py:Mine", "log.quiet=true", "checkpoint.every_steps=2", "checkpoint.keep_best=1"]
    code, _, err = run_main([*argv, "checkpoint.monitor=val/nope", "run.name=r"], capsys)
    assert code == 2
    line = error_line(err)
    assert "checkpoint.monitor=val/nope is not a metric this recipe reports" in line
    assert "it reports: train/acc, train/loss, val/acc, val/loss" in line
    run = tmp_path / "runs" / "tiny" / "r"
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["exit_code"]) == ("failed", 2)
    assert list((run / "checkpoints").glob("step-*/COMPLETE"))  # what was trained is kept


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "loader-worker"])
def test_an_image_that_does_not_decode_fails_the_run_with_one_line(tmp_path, monkeypatch, capsys, workers):
    root = image_folder(tmp_path / "imgs")
    bad = root / "train" / "cats" / "1.jpg"
    truncated_jpeg(bad)
    monkeypatch.chdir(tmp_path)
    argv = [*RESNET, "data.name=image_folder", f"data.root={root}", f"data.num_workers={workers}", "run.name=r"]
    code, _, err = run_main(argv, capsys)
    assert code == 1
    line = error_line(err)
    assert f"cannot decode image file {bad} (OSError" in line and "data.skip_bad=true" in line
    summary = json.loads((tmp_path / "runs" / "resnet_finetune" / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and str(bad) in summary["reason"]


def test_skip_bad_drops_undecodable_files_up_front_with_one_warning(tmp_path, capsys):
    from recipes.resnet_finetune import ResNetFinetune

    root = image_folder(tmp_path / "imgs")
    truncated_jpeg(root / "train" / "cats" / "1.jpg")
    (root / "train" / "dogs" / "2.jpg").write_bytes(b"")  # (0 bytes: check() lets skip_bad have it)
    (root / "train" / "dogs" / "3.jpg").write_bytes(b"<html>404</html>")
    args = [("recipe", "resnet_finetune"), ("data.name", "image_folder"), ("data.root", str(root))]
    with pytest.raises(ConfigError, match="2.jpg is empty"):
        resolve(ResNetFinetune, [], args)
    cfg = resolve(ResNetFinetune, [], [*args, ("data.skip_bad", "true")])
    capsys.readouterr()
    train, val, _ = ResNetFinetune(cfg).build_datasets()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 3 of 8 image files" in err and "cats/1.jpg" in err
    assert (len(train), len(val)) == (5, 8)
    # the same list in every attempt: the length exact resume relies on
    assert [p for p, _ in ResNetFinetune(cfg).build_datasets()[0].samples] == [p for p, _ in train.samples]


def test_hidden_folders_are_not_classes(tmp_path):
    from recipes.resnet_finetune import ResNetFinetune

    root = image_folder(tmp_path / "imgs")
    for split in ("train", "val"):
        (root / split / ".ipynb_checkpoints").mkdir()
    cfg = resolve(
        ResNetFinetune, [], [("recipe", "resnet_finetune"), ("data.name", "image_folder"), ("data.root", str(root))]
    )
    train, *_ = ResNetFinetune(cfg).build_datasets()
    assert ResNetFinetune(cfg).num_classes() == 2 and set(train.targets) == {0, 1}
