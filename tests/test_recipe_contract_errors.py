"""A user recipe that does not fulfil the contract is refused with one line naming the missing or
wrong piece: at load time (methods, signatures, sections, defaults, head; exit 2 before anything
is written), when the worker builds it (model, datasets; exit 2, nothing left behind), and at
its first step (what step returns; one line, no traceback)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from launcher.config import resolve
from launcher.errors import ConfigError
from launcher.recipe_loader import check_contract, check_datasets, check_model, load_recipe, watch_first_step
from tests.conftest import only_run_dir, run_launch

GOOD = """\
import torch
from pydantic import Field
from launcher.config import DataSection, ModelSection
from recipes.base import Recipe


class Data(DataSection):
    size: int = Field(32, ge=4)


class Mine(Recipe):
    Data = Data
    defaults = {{"train": {{"epochs": 1, "batch_size": 8, "lr": 0.1}}}}

    def build_model(self):
        return {model}

    def build_datasets(self):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(self.cfg.data.size, 4, generator=g)
        ds = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())
        return {datasets}

    def step(self, model, batch):
        x, y = batch
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return {result}
"""
PARTS = {
    "model": "torch.nn.Linear(4, 2)",
    "datasets": "ds, ds",
    "result": 'loss, {"loss": loss.detach() * len(y), "count": len(y)}',
}


def recipe_source(**changes: str) -> str:
    return GOOD.format(**{**PARTS, **changes})


def load_source(tmp_path: Path, source: str):
    path = tmp_path / "mine.py"
    path.write_text(source)
    return load_recipe(f"{path}:Mine")


def refused(tmp_path: Path, source: str) -> str:
    with pytest.raises(ConfigError) as exc:
        load_source(tmp_path, source)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def body(code: str) -> str:
    return textwrap.indent(textwrap.dedent(code), "    ")


def test_the_template_itself_is_a_valid_recipe(tmp_path):
    assert load_source(tmp_path, recipe_source()).__name__ == "Mine"


@pytest.mark.parametrize(
    ("code", "expect"),
    [
        (
            "def step(self, batch):\n    return None\n",
            "step must take (self, model, batch), but it is step(self, batch)",
        ),
        (
            "def build_model(self, cfg):\n    return None\n",
            "build_model must take (self), but it is build_model(self, cfg)",
        ),
        ("def metrics(self):\n    return {}\n", "metrics must take (self, sums)"),
        ("def collate(self, a, b):\n    return a\n", "collate must take (self, samples)"),
        ("def check(self, cfg):\n    pass\n", "check must be a @classmethod check(cls, cfg)"),
        ("Model = {'hidden': 3}\n", "Model must be a class that subclasses launcher.config.ModelSection"),
        ("Data = int\n", "Data must be a class that subclasses launcher.config.DataSection"),
        ("defaults = {'trian': {'lr': 0.1}}\n", "defaults has unknown section 'trian'; did you mean train?"),
        ("defaults = {'train': 0.1}\n", "defaults['train'] must be a dict of keys"),
        ("defaults = [('train', {})]\n", "defaults must be a dict of sections"),
        ("head = 'fc.'\n", "head must be a list of parameter-name prefixes"),
        ("metric_names = 'loss'\n", "metric_names must be a tuple of the names metrics() returns"),
        ("metric_names = ('loss', 'time/step')\n", "metric_names must be a tuple of the names metrics() returns"),
        ("metric_names = ()\n", "metric_names must be a tuple"),
        ("shard_units = 'layer1'\n", "shard_units must be a tuple of module names"),
    ],
    ids=[
        "step-args",
        "build_model-args",
        "metrics",
        "collate",
        "check",
        "Model",
        "Data",
        "section",
        "values",
        "defaults-type",
        "head",
        "metric_names-str",
        "metric_names-split",
        "metric_names-empty",
        "shard_units-str",
    ],
)
def test_each_broken_piece_is_named(tmp_path, code, expect):
    # appended to the class body: later definitions win over the template's
    assert expect in refused(tmp_path, recipe_source() + body(code))


def test_static_and_class_methods_are_accepted(tmp_path):
    extra = body(
        """
        @staticmethod
        def collate(samples):
            return samples

        @classmethod
        def check(cls, cfg):
            pass
        """
    )
    assert load_source(tmp_path, recipe_source() + extra).__name__ == "Mine"


def test_declared_metric_names_check_the_monitors_before_training(tmp_path):
    cls = load_source(tmp_path, recipe_source() + body("metric_names = ('loss', 'val/acc')\n"))
    spec = [("recipe", "mine.py:Mine")]
    assert resolve(cls, [], [*spec, ("train.early_stopping.monitor", "val/acc")])
    with pytest.raises(ConfigError, match="train/acc is not a metric this recipe reports; did you mean "):
        resolve(cls, [], [*spec, ("train.early_stopping.monitor", "train/acc")])


def test_a_duck_typed_recipe_gets_the_monitor_check_bound_to_itself():
    class Duck:
        metric_names = ("loss",)

        def build_model(self):
            return None

        def build_datasets(self):
            return None

        def step(self, model, batch):
            return None

    check_contract(Duck, "duck.py:Duck")
    with pytest.raises(ConfigError, match="val/acc is not a metric"):
        resolve(Duck, [], [("recipe", "duck.py:Duck"), ("train.early_stopping.monitor", "val/acc")])


def test_a_duck_typed_class_missing_two_methods_names_both():
    class Half:
        def step(self, model, batch):
            return None

    with pytest.raises(ConfigError) as exc:
        check_contract(Half, "half.py:Half")
    assert "does not implement build_model, build_datasets" in str(exc.value)


# --------------------------------------------------------------------------- through `launch`


def one_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_load_time_problem_exits_2_before_anything_is_written(tmp_path):
    (tmp_path / "mine.py").write_text(recipe_source() + body("defaults = {'trian': {}}\n"))
    r = run_launch(["recipe=mine.py:Mine"], tmp_path)
    assert r.returncode == 2
    assert "defaults has unknown section 'trian'" in one_line(r.stderr)
    assert not (tmp_path / "runs").exists()


def built(tmp_path: Path, **changes: str):
    """An instance of the template recipe with ``changes``, on its default config."""
    cls = load_source(tmp_path, recipe_source(**changes))
    return cls(resolve(cls, [], [("recipe", "mine.py:Mine")]))


@pytest.mark.parametrize(
    ("changes", "expect"),
    [
        ({"model": "'a model'"}, "build_model() returned str; return a torch.nn.Module"),
        ({"model": "torch.nn.ReLU()"}, "has no trainable parameters"),
        ({"datasets": "ds"}, "build_datasets() returned TensorDataset; return (train, val)"),
        ({"datasets": "iter(ds), None"}, "the train dataset from build_datasets() (iterator) needs __len__"),
        ({"datasets": "ds, 3"}, "the val dataset from build_datasets() (int) needs __len__"),
        ({"datasets": "torch.utils.data.Subset(ds, []), None"}, "the train dataset from build_datasets() is empty"),
    ],
    ids=["model-str", "no-params", "one-dataset", "iterator", "val-int", "empty"],
)
def test_what_build_returns_is_checked(tmp_path, changes, expect):
    recipe = built(tmp_path, **changes)
    with pytest.raises(ConfigError) as exc:
        check_model(recipe.build_model(), "mine.py:Mine")
        check_datasets(recipe.build_datasets(), "mine.py:Mine")
    assert expect in str(exc.value) and "\n" not in str(exc.value)


def first_batch(recipe):
    train, _ = recipe.build_datasets()
    return torch.utils.data.default_collate([train[i] for i in range(8)])


@pytest.mark.parametrize(
    ("result", "expect"),
    [
        ("loss", "step(model, batch) returned Tensor; return (loss, sums)"),
        ('loss.detach(), {"count": len(y)}', "returned a loss without a gradient"),
        ('torch.nn.functional.cross_entropy(logits, y, reduction="none"), {}', "returned a loss of (8,)"),
        ("loss, [loss]", "returned sums of type list"),
        ('loss, {"loss": logits}', "returned sums['loss'] = a tensor of shape (8, 2); every sum must be one number"),
    ],
    ids=["no-tuple", "no-grad", "not-scalar", "sums-list", "sums-tensor"],
)
def test_what_step_returns_is_checked_at_the_first_step(tmp_path, result, expect):
    recipe = built(tmp_path, result=result)
    model = recipe.build_model()
    watch_first_step(recipe, "mine.py:Mine")
    with pytest.raises(ConfigError) as exc:
        recipe.step(model, first_batch(recipe))
    assert expect in str(exc.value) and "\n" not in str(exc.value)


def test_the_first_step_check_steps_aside_and_allows_evaluation(tmp_path):
    recipe = built(tmp_path)
    model = recipe.build_model()
    watch_first_step(recipe, "mine.py:Mine")
    assert "step" in vars(recipe)
    with torch.no_grad():  # evaluation: a loss without a gradient is right
        loss, sums = recipe.step(model, first_batch(recipe))
    assert sums["count"] == 8
    assert "step" not in vars(recipe)  # later steps call the recipe's own method directly
    assert recipe.step.__func__ is type(recipe).step


def test_a_build_problem_in_the_worker_exits_2_and_leaves_nothing(tmp_path):
    (tmp_path / "mine.py").write_text(recipe_source(model="'a model'"))
    r = run_launch(["recipe=mine.py:Mine", "log.quiet=true"], tmp_path, OMP_NUM_THREADS="1")
    assert r.returncode == 2, r.stderr
    assert "build_model() returned str; return a torch.nn.Module" in one_line(r.stderr)
    assert not (tmp_path / "runs").exists()  # the fresh run directory is removed again


def test_a_step_problem_stops_the_run_with_one_line(tmp_path):
    (tmp_path / "mine.py").write_text(recipe_source(result="loss"))
    r = run_launch(["recipe=mine.py:Mine", "log.quiet=true"], tmp_path, OMP_NUM_THREADS="1")
    assert r.returncode == 1, r.stderr
    expect = "step(model, batch) returned Tensor; return (loss, sums)"
    assert expect in one_line(r.stderr)
    summary = json.loads((only_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["status"] == "failed" and expect in summary["reason"]
