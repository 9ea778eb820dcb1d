"""Classification losses as config (train.loss, train.label_smoothing, data.class_weights) and
train.l1: the values torch's own losses give, the weights a run derives and records, and the
keys refused where they would do nothing."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from launcher.config import resolve
from launcher.recipe_loader import load_recipe
from tests.conftest import TINY, launch_here

SEQ = load_recipe("sequence")


def _recipe(*pairs: str):
    cfg = resolve(SEQ, [], [("recipe", "sequence"), ("data.name", "synthetic"), *(p.split("=", 1) for p in pairs)])
    return SEQ(cfg)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 3, generator=g) * 3, torch.randint(0, 3, (16,), generator=g)


@pytest.mark.parametrize("smooth", [0.0, 0.2])
@pytest.mark.parametrize("weights", [None, [1.0, 4.0, 0.5]])
def test_cross_entropy_and_nll_are_torchs(batch, smooth, weights):
    logits, y = batch
    w = torch.tensor(weights) if weights else None
    want = F.cross_entropy(logits, y, weight=w, label_smoothing=smooth)
    for loss in ("cross_entropy", "nll"):
        r = _recipe(f"train.loss={loss}", f"train.label_smoothing={smooth}")
        r.class_weights = w
        torch.testing.assert_close(r.classification_loss(logits, y), want)


def test_bce_with_logits_is_per_class_sigmoids(batch):
    logits, y = batch
    r = _recipe("train.loss=bce_with_logits")
    want = F.binary_cross_entropy_with_logits(logits, F.one_hot(y, 3).float())
    torch.testing.assert_close(r.classification_loss(logits, y), want)
    r.class_weights = torch.tensor([1.0, 2.0, 3.0])
    per = F.binary_cross_entropy_with_logits(logits, F.one_hot(y, 3).float(), reduction="none") * r.class_weights
    torch.testing.assert_close(r.classification_loss(logits, y), per.mean())


def test_focal_down_weights_what_is_already_right(batch):
    logits, y = batch
    ce = _recipe().classification_loss(logits, y)
    gamma0 = _recipe("train.loss=focal", "train.focal_gamma=0").classification_loss(logits, y)
    torch.testing.assert_close(gamma0, ce)  # gamma 0: cross entropy
    p_t = torch.softmax(logits, 1).gather(1, y[:, None]).squeeze(1)
    want = (-((1 - p_t) ** 2) * torch.log(p_t)).mean()
    torch.testing.assert_close(_recipe("train.loss=focal").classification_loss(logits, y), want)
    weighted = _recipe("train.loss=focal", "train.focal_gamma=0")
    weighted.class_weights = torch.tensor([1.0, 4.0, 0.5])
    torch.testing.assert_close(
        weighted.classification_loss(logits, y), F.cross_entropy(logits, y, weight=weighted.class_weights)
    )


def test_auto_class_weights_are_the_inverse_frequency_of_the_training_split(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    y = np.array([0] * 60 + [1] * 30 + [2] * 10)
    x = rng.standard_normal((100, 5, 2)).astype(np.float32)
    np.savez(tmp_path / "imbalanced.npz", sequences=x, labels=y)
    r = launch_here(["recipe=sequence", "data.name=file", f"data.path={tmp_path / 'imbalanced.npz'}",
                     "data.class_weights=auto", "train.epochs=1", "run.name=w", "log.quiet=false", "--device", "cpu"],
                    tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    from recipes._splits import split_indices

    train = y[split_indices(100, 0.2, 0.0, 0)[0]]
    counts = np.bincount(train, minlength=3)
    want = len(train) / (3 * counts)
    meta = json.loads(next((tmp_path / "runs" / "sequence" / "w" / "checkpoints").glob("step-*/meta.json")).read_text())
    assert meta["class_weights"] == pytest.approx(want.tolist(), rel=1e-6)
    assert "class weights (inverse class frequency): " + ", ".join(f"{w:.3g}" for w in want) in r.stderr


def test_l1_shrinks_the_weights_but_not_the_biases(tmp_path):
    from safetensors.torch import load_file

    runs = {}
    for l1 in ("0", "0.01"):
        r = launch_here([f"recipe={TINY}", "log.quiet=true", f"run.name=l1-{l1}", f"train.l1={l1}", "train.epochs=3",
                         "model.dropout=0", "--device", "cpu"], tmp_path)  # fmt: skip
        assert r.returncode == 0, r.stderr
        runs[l1] = load_file(str(tmp_path / "runs" / "tiny" / f"l1-{l1}" / "model.safetensors"))
    plain, lasso = runs["0"], runs["0.01"]
    weights = [k for k in plain if plain[k].ndim > 1]
    assert sum(lasso[k].abs().sum() for k in weights) < 0.8 * sum(plain[k].abs().sum() for k in weights)

    def near_zero(state):
        return sum((state[k].abs() < 1e-2).sum() for k in weights) / sum(state[k].numel() for k in weights)

    assert near_zero(lasso) > 2 * near_zero(plain)  # L1 pulls weights to zero (sparsity)
    biases = [k for k in plain if plain[k].ndim == 1]
    assert sum(lasso[k].abs().sum() for k in biases) > 0.8 * sum(plain[k].abs().sum() for k in biases)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["recipe=yesno", "train.loss=focal"], "applies to classification recipes"),
        ([f"recipe={TINY}", "train.label_smoothing=0.1"], "applies to classification recipes"),
        (["recipe=resnet_finetune", "data.class_weights=[1,2]"], "has 2 weights but recipe resnet_finetune has 10"),
        (["recipe=resnet_finetune", "data.class_weights=[1,0]"], "give one positive number per class"),
        (["recipe=resnet_finetune", "train.loss=hinge"], "train.loss"),
        (
            ["recipe=sequence", "train.l1=0.1", "--procs", "2", "--strategy", "fsdp"],
            "train.l1 needs the model's own parameters",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, needle):
    r = launch_here([*args, "--device", "cpu", "--dry-run"], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_a_class_missing_from_the_training_split_is_one_line(tmp_path):
    import numpy as np

    x = np.zeros((40, 3, 2), dtype=np.float32)
    np.savez(tmp_path / "d.npz", sequences=x, labels=np.array([0, 1] * 20), lengths=np.full(40, 3))
    r = launch_here(["recipe=sequence", "data.name=file", f"data.path={tmp_path / 'd.npz'}", "data.num_classes=3",
                     "data.class_weights=auto", "run.name=m", "log.quiet=true", "--device", "cpu"], tmp_path)  # fmt: skip
    assert r.returncode == 2 and "no sample of class 2" in r.stderr, r.stderr
    assert not (tmp_path / "runs" / "sequence" / "m").exists()
