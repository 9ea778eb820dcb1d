"""What the PyTorch notes teach, as config: the parameter count at start, balanced sampling."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, launch_here


def test_the_parameter_count_is_said_at_start_and_kept_in_the_summary(tmp_path):
    r = launch_here(
        [f"recipe={TINY}", "run.name=p", "train.max_steps=1", "model.hidden=10", "--device", "cpu"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    total = 8 * 10 + 10 + 10 * 3 + 3  # Linear(8, 10), Linear(10, 3)
    assert f"model: {total} parameters ({total} trainable), {total * 4 / 1e6:.1f} MB" in r.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "p" / "summary.json").read_text())
    assert summary["parameters"] == {"total": total, "trainable": total, "bytes": total * 4}


def test_balanced_sampling_draws_every_class_equally_often_and_deterministically():
    import torch

    from launcher.runtime.data import EpochBatchSampler

    labels = [0] * 90 + [1] * 9 + [2] * 1
    counts = {y: labels.count(y) for y in set(labels)}
    weights = [1.0 / counts[y] for y in labels]

    def epoch(rank=0, world=1, start=0, e=3):
        s = EpochBatchSampler(
            100, 10, shuffle=True, seed=7, rank=rank, world_size=world, drop_last=True, weights=weights
        )
        s.set_epoch(e, start)
        return [i for b in s for i in b]

    drawn = torch.bincount(torch.tensor([labels[i] for e in range(20) for i in epoch(e=e)]), minlength=3)
    assert drawn.sum() == 2000 and all(abs(c / 2000 - 1 / 3) < 0.05 for c in drawn.tolist()), drawn
    assert epoch() == epoch() and epoch(e=3) != epoch(e=4)  # (seed, epoch) alone
    assert epoch(start=4) == epoch()[40:]  # a resume at batch 4 continues the same order
    both = epoch(0, 2) + epoch(1, 2)
    assert sorted(both) == sorted(epoch()) and set(epoch(0, 2)) != set(epoch(1, 2))  # dealt across ranks


def test_balanced_sampling_trains_and_resumes_bit_exactly(tmp_path):
    import numpy as np

    from tests.conftest import assert_same_weights

    rng = np.random.default_rng(0)
    y = np.array([0] * 70 + [1] * 20 + [2] * 10)
    np.savez(tmp_path / "d.npz", sequences=rng.standard_normal((100, 4, 3)).astype(np.float32), labels=y)
    args = ["recipe=sequence", "data.name=file", f"data.path={tmp_path / 'd.npz'}", "data.sampling=balanced",
            "train.epochs=2", "checkpoint.every_steps=3", "checkpoint.keep_last=10", "log.quiet=true", "--device", "cpu"]  # fmt: skip
    for name in ("whole", "cut"):
        r = launch_here([*args, f"run.name={name}"], tmp_path)
        assert r.returncode == 0, r.stderr
    import shutil

    cut = tmp_path / "runs" / "sequence" / "cut"
    for p in (cut / "summary.json", cut / "model.safetensors"):
        p.unlink()
    for step in cut.glob("checkpoints/step-*"):
        if step.name != "step-3":
            shutil.rmtree(step)
    r = launch_here([*args, "run.name=cut"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((cut / "summary.json").read_text())["resumed_from"].endswith("step-3")
    assert_same_weights(tmp_path / "runs" / "sequence" / "whole" / "model.safetensors", cut / "model.safetensors")


def _resnet(*pairs: str):
    from launcher.config import resolve
    from launcher.recipe_loader import load_recipe

    cls = load_recipe("resnet_finetune")
    return cls(resolve(cls, [], [("recipe", "resnet_finetune"), *(p.split("=", 1) for p in pairs)]))


def test_augmentation_presets_and_keys():
    from torchvision import transforms as T

    folder = _resnet("data.name=cifar10")
    kinds = [type(t) for t in folder._random_transforms(resize=True)]
    assert kinds == [T.RandomResizedCrop, T.RandomHorizontalFlip]  # the default: what it always was
    assert folder._random_transforms(resize=True)[0].scale == (0.08, 1.0)
    strong = _resnet("data.name=cifar10", "data.augment=strong", "data.vflip=0.2",
                     "data.crop_scale=[0.5,1]")  # fmt: skip
    got = strong._random_transforms(resize=True)
    assert [type(t) for t in got] == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.RandomVerticalFlip,
                                      T.RandomRotation, T.ColorJitter]  # fmt: skip
    assert got[0].scale == (0.5, 1.0) and got[2].p == 0.2 and got[3].degrees == [-15.0, 15.0]
    assert _resnet("data.augment=none", "data.name=cifar10")._random_transforms(resize=False) == []
    assert _resnet()._random_transforms(resize=False) == []  # digits: none unless asked
    assert [type(t) for t in _resnet("data.hflip=0.5", "data.rotation=10")._random_transforms(resize=False)] == [
        T.RandomHorizontalFlip, T.RandomRotation]  # fmt: skip


def test_digits_augmentation_changes_training_samples_only_and_follows_the_seed():
    import torch

    plain = _resnet("data.image_size=16").build_datasets()
    aug = _resnet("data.image_size=16", "data.augment=strong").build_datasets()
    assert torch.equal(plain[1][0][0], aug[1][0][0])  # validation untouched
    torch.manual_seed(3)
    a = aug[0][0][0]
    torch.manual_seed(3)
    b = aug[0][0][0]
    assert torch.equal(a, b) and not torch.equal(a, plain[0][0][0])  # random, from torch's generator


def test_an_augmented_run_resumes_bit_exactly(tmp_path):
    import shutil

    from tests.conftest import assert_same_weights

    args = ["recipe=resnet_finetune", "data.image_size=16", "data.augment=strong", "train.max_steps=6",
            "train.batch_size=16", "checkpoint.every_steps=3", "checkpoint.keep_last=10", "log.quiet=true",
            "--device", "cpu"]  # fmt: skip
    for name in ("whole", "cut"):
        r = launch_here([*args, f"run.name={name}"], tmp_path)
        assert r.returncode == 0, r.stderr
    cut = tmp_path / "runs" / "resnet_finetune" / "cut"
    for p in (cut / "summary.json", cut / "model.safetensors"):
        p.unlink()
    shutil.rmtree(cut / "checkpoints" / "step-6")
    r = launch_here([*args, "run.name=cut"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert_same_weights(
        tmp_path / "runs" / "resnet_finetune" / "whole" / "model.safetensors", cut / "model.safetensors"
    )


def _write_idx(raw, train: int, test: int, seed: int = 0) -> None:
    """MNIST's own format (idx files, big-endian headers) with a few generated images: a bright
    square at a place given by the class, on noise."""
    import struct

    import numpy as np

    raw.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", train), ("t10k", test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28), dtype=np.uint8)
        for i, y in enumerate(labels):
            r, c = divmod(int(y), 5)
            images[i, 4 + r * 12 : 12 + r * 12, 2 + c * 5 : 7 + c * 5] = 255
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())


@pytest.mark.parametrize("recipe", ["resnet_finetune", "sequence"])
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_and_fashion_mnist_from_their_own_files(tmp_path, recipe, name):
    _write_idx(tmp_path / "data" / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw", 60, 20)
    extra = ["data.image_size=16"] if recipe == "resnet_finetune" else []
    r = launch_here([f"recipe={recipe}", f"data.name={name}", f"data.root={tmp_path / 'data'}", "data.download=false",
                     "train.epochs=4", "train.batch_size=10", "train.lr=0.01", "run.name=m", "log.quiet=true", *extra,
                     "--device", "cpu"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "runs" / recipe / "m" / "summary.json").read_text())
    assert summary["samples_seen"] == 4 * 60  # the training files' 60 images; validation: the 20 test images
    assert summary["final_metrics"]["val/acc"] > 0.3, summary["final_metrics"]  # chance: 0.1


@pytest.mark.parametrize("recipe", ["resnet_finetune", "sequence"])
def test_mnist_offline_or_missing_is_one_line(tmp_path, recipe):
    offline = {
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
    }
    for args, needle in (
        (["data.download=false"], "MNIST not found in data.root="),
        ([], "MNIST"),
    ):
        r = launch_here([f"recipe={recipe}", "data.name=mnist", f"data.root={tmp_path / 'd'}", *args, "run.name=x",
                         "log.quiet=true", "--device", "cpu"], tmp_path, **offline)  # fmt: skip
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
        assert not (tmp_path / "runs" / recipe / "x").exists()


@pytest.mark.parametrize("layout", ["flat", "train-only"])
def test_one_folder_of_class_folders_is_split_by_val_fraction(tmp_path, layout):
    from PIL import Image

    root = tmp_path / "pets"
    base = root if layout == "flat" else root / "train"
    for c, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (base / c).mkdir(parents=True)
        for i in range(10 if c == "cat" else 5):
            Image.new("RGB", (20, 20), colour).save(base / c / f"{i}.png")
    recipe = _resnet("data.name=image_folder", f"data.root={root}", "data.val_fraction=0.4")
    train, val, test = recipe.build_datasets()
    assert test is None and len(train) + len(val) == 15
    # stratified: 40 % of each class (4 cats, 2 dogs) held out, deterministically
    assert sorted(val.targets) == [0, 0, 0, 0, 1, 1]
    again = _resnet("data.name=image_folder", f"data.root={root}", "data.val_fraction=0.4").build_datasets()[1]
    assert again.samples == val.samples
    assert recipe.export_info()["classes"] == ["cat", "dog"] and recipe.num_classes() == 2
