"""The test split: a recipe's third dataset, never seen by training, evaluated once at the end of a
completed run with the weights model.safetensors holds (logged as test/..., kept in summary.json),
and the built-in recipes' test splits (held-out fractions, an image folder's test/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launcher.errors import ConfigError
from launcher.recipe_loader import check_datasets
from recipes._splits import split_indices, stratified
from tests.conftest import launch_here, read_jsonl

ARGS = ["log.quiet=true", "train.epochs=2", "--device", "cpu"]


def run_dir(cwd: Path, name: str) -> Path:
    return cwd / "runs" / "tiny" / name


def recomputed_test_metrics(run: Path, test_size: int) -> dict[str, float]:
    """test/loss and test/acc of ``run``'s model.safetensors, computed here without the runtime."""
    import torch
    from safetensors.torch import load_file

    from launcher.config import Config  # noqa: F401  (the tiny recipe's sections import it)
    from tests.tiny_recipe import Tiny

    weights = load_file(str(run / "model.safetensors"))
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Dropout(0.1))
    model.load_state_dict(weights)
    model.eval()
    xt = torch.randn(test_size, 8, generator=torch.Generator().manual_seed(4321))
    yt = (xt[:, 0] > 0).long() + (xt[:, 1] > 0.5).long()
    with torch.no_grad():
        logits = model(xt)
    assert Tiny.metric_names == ("loss", "acc")
    loss = torch.nn.functional.cross_entropy(logits, yt, reduction="sum") / test_size
    return {"test/loss": float(loss), "test/acc": int((logits.argmax(1) == yt).sum()) / test_size}


@pytest.mark.parametrize("procs", [1, 2])
def test_the_test_split_is_evaluated_once_at_the_end_with_the_final_weights(tmp_path, tiny, procs):
    name = f"t{procs}"
    r = launch_here([f"recipe={tiny}", *ARGS, f"run.name={name}", "data.test_size=37", "--procs", str(procs)], tmp_path)
    assert r.returncode == 0, r.stderr
    run = run_dir(tmp_path, name)
    summary = json.loads((run / "summary.json").read_text())
    events = read_jsonl(run / "metrics.jsonl")
    tested = [e for e in events if any(k.startswith("test/") for k in e)]
    assert len(tested) == 1 and tested[0]["step"] == summary["global_step"]  # once, at the end
    assert not any(k.startswith("test/") for e in events if e is not tested[0] for k in e)
    want = recomputed_test_metrics(run, 37)
    # sums over every sample exactly once, on every process count (37: ranks hold 19 and 18)
    assert tested[0]["test/acc"] == pytest.approx(want["test/acc"], abs=1e-9)
    assert tested[0]["test/loss"] == pytest.approx(want["test/loss"], rel=1e-5)
    assert {k: summary["final_metrics"][k] for k in want} == {k: tested[0][k] for k in want}


def test_training_never_looks_at_the_test_split(tmp_path, tiny):
    """The same run with and without a test split trains to the same bits and logs the same."""
    from safetensors.torch import load_file

    for name, extra in (("with", ["data.test_size=50"]), ("without", [])):
        r = launch_here([f"recipe={tiny}", *ARGS, f"run.name={name}", *extra], tmp_path)
        assert r.returncode == 0, r.stderr
    a, b = (load_file(str(run_dir(tmp_path, n) / "model.safetensors")) for n in ("with", "without"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    def deterministic(name):
        keep = ("step", "epoch", "lr", "train/loss", "val/loss", "val/acc")
        return [{k: e[k] for k in keep if k in e} for e in read_jsonl(run_dir(tmp_path, name) / "metrics.jsonl")]

    without_test = [e for e in deterministic("with") if set(e) - {"step", "epoch"}]
    assert without_test == [e for e in deterministic("without") if set(e) - {"step", "epoch"}]
    assert "test/acc" not in json.loads((run_dir(tmp_path, "without") / "summary.json").read_text())["final_metrics"]


def test_build_datasets_may_return_two_or_three():
    train, val = [1, 2], [3]
    assert check_datasets((train, val), "r") == (train, val, None)
    assert check_datasets((train, None, [4]), "r") == (train, None, [4])
    with pytest.raises(ConfigError, match=r"return \(train, val\) or \(train, val, test\)"):
        check_datasets((train, val, [4], [5]), "r")
    with pytest.raises(ConfigError, match="the test dataset"):
        check_datasets((train, val, 7), "r")


def test_held_out_splits_keep_validation_and_take_test_from_training():
    train, val, test = split_indices(100, 0.2, 0.0, 0)
    assert len(val) == 20 and test == [] and sorted(train + val) == list(range(100))
    train2, val2, test2 = split_indices(100, 0.2, 0.1, 0)
    assert val2 == val and len(test2) == 10 and set(test2) <= set(train) and set(train2) == set(train) - set(test2)
    assert split_indices(100, 0.2, 0.1, 1)[2] != test2  # the seed decides


def test_stratified_holds_out_every_class_in_proportion():
    labels = [0] * 50 + [1] * 10 + [2] * 1
    kept, held = stratified(labels, 0.2, 0)
    assert sorted(kept + held) == list(range(61)) and not set(kept) & set(held)
    assert [sum(labels[i] == c for i in held) for c in (0, 1, 2)] == [10, 2, 0]  # a class of one stays in training
    assert stratified(labels, 0.2, 0) == (kept, held) and stratified(labels, 0.2, 1) != (kept, held)


def _images(folder: Path, per_class: dict[str, int]) -> None:
    from PIL import Image

    for cls, n in per_class.items():
        (folder / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (20, 20), (i * 9 % 256, 40, 90)).save(folder / cls / f"{i}.png")


def test_an_image_folder_with_train_and_test_draws_validation_from_train(tmp_path):
    from launcher.config import resolve
    from recipes.resnet_finetune import ResNetFinetune

    _images(tmp_path / "train", {"cat": 10, "dog": 5})
    _images(tmp_path / "test", {"cat": 3, "dog": 2})
    cfg = resolve(ResNetFinetune, [], [("recipe", "resnet_finetune"), ("data.name", "image_folder"),
                                        ("data.root", str(tmp_path)), ("data.val_fraction", "0.2")])  # fmt: skip
    ResNetFinetune.check(cfg)
    train, val, test = ResNetFinetune(cfg).build_datasets()
    assert (len(train), len(val), len(test)) == (12, 3, 5)  # 2 cats and 1 dog held out of train/
    assert sorted(label for _, label in val.samples) == [0, 0, 1]
    assert not {p for p, _ in val.samples} & {p for p, _ in train.samples}
    # without val/ and without test/: train/ alone, validation from data.val_fraction too
    (tmp_path / "test").rename(tmp_path / "later")
    ResNetFinetune.check(cfg)
    train, val, test = ResNetFinetune(cfg).build_datasets()
    assert (len(train), len(val), test) == (12, 3, None)
    # no train/ (and no class folders at the top): one line naming the layouts
    import shutil

    for folder in ("train", "later"):
        shutil.rmtree(tmp_path / folder)
    with pytest.raises(ConfigError, match=r"train is missing.*val_fraction of each class"):
        ResNetFinetune.check(cfg)


def test_a_test_fraction_where_the_data_has_its_own_test_split_is_refused(tmp_path):
    from launcher.config import resolve
    from recipes.resnet_finetune import ResNetFinetune

    _images(tmp_path / "train", {"cat": 2, "dog": 2})
    _images(tmp_path / "val", {"cat": 1, "dog": 1})
    with pytest.raises(ConfigError, match=r"data.test_fraction applies to digits and fake.*test/<class>/"):
        resolve(ResNetFinetune, [], [("recipe", "resnet_finetune"), ("data.name", "image_folder"),
                                     ("data.root", str(tmp_path)), ("data.test_fraction", "0.1")])  # fmt: skip
    with pytest.raises(ConfigError, match="leave nothing to train on"):
        resolve(ResNetFinetune, [], [("recipe", "resnet_finetune"), ("data.val_fraction", "0.5"),
                                     ("data.test_fraction", "0.5")])  # fmt: skip
