"""resnet_finetune end to end, on every data source that needs no network, and its weights paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file

from tests.conftest import evaluate_saved, launch_here, only_run_dir, read_jsonl

FAST = ["data.image_size=16", "train.batch_size=16", "train.max_steps=3", "train.log_every=1", "log.quiet=true"]
# Any download attempt fails at once (no waiting on DNS or a firewall).
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), stderr
    assert "Traceback" not in stderr
    return lines[0]


def completed(cwd: Path) -> tuple[Path, dict]:
    run_dir = only_run_dir(cwd)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    return run_dir, summary


def test_digits_trains_and_writes_the_run_directory(tmp_path):
    r = launch_here(["recipe=resnet_finetune", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir, summary = completed(tmp_path)
    assert summary["global_step"] == 3
    assert {"val/acc", "val/loss", "train/loss"} <= set(summary["final_metrics"])
    events = read_jsonl(run_dir / "metrics.jsonl")
    train = [e for e in events if "train/loss" in e]
    assert [e["step"] for e in train] == [1, 2, 3]
    assert all({"lr", "samples_per_sec", "epoch"} <= set(e) for e in train)
    weights = load_file(str(run_dir / "model.safetensors"))
    assert weights["fc.weight"].shape == (10, 512)
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in weights)
    assert (run_dir / "config.yaml").is_file()
    assert any((run_dir / "checkpoints").glob("step-3/COMPLETE"))


def test_fake_data_with_channels_last_and_frozen_backbone(tmp_path):
    args = [
        "recipe=resnet_finetune",
        "data.name=fake",
        "data.fake_size=40",
        "data.num_classes=4",
        "model.channels_last=true",
        "model.freeze_backbone=true",
        *FAST,
    ]
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir, _ = completed(tmp_path)
    trained = load_file(str(run_dir / "model.safetensors"))
    assert trained["fc.weight"].shape == (4, 512)
    # the frozen backbone kept its initial weights: rebuild the initial model from the same seed
    torch.manual_seed(0)
    init = torchvision.models.resnet18(weights=None, num_classes=4).state_dict()
    assert trained["conv1.weight"].equal(init["conv1.weight"])
    assert not trained["fc.weight"].equal(init["fc.weight"])


def make_image_folder(root: Path, classes=("cat", "dog"), per_class=3) -> Path:
    for split in ("train", "val"):
        for ci, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(per_class):
                size = (20 + 3 * i, 17 + 2 * ci)  # any size
                mode = ("RGB", "L", "RGBA")[i % 3]  # any mode
                color = (40 * ci + 10 * i) % 255
                Image.new(mode, size, color=(color,) * len(mode)).save(d / f"{i}.png")
            (d / "notes.txt").write_text("not an image")  # ignored
    return root


def test_image_folder_end_to_end(tmp_path):
    data = make_image_folder(tmp_path / "data")
    r = launch_here(["recipe=resnet_finetune", "data.name=image_folder", f"data.root={data}", *FAST], tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir, summary = completed(tmp_path)
    assert load_file(str(run_dir / "model.safetensors"))["fc.weight"].shape == (2, 512)
    assert "val/acc" in summary["final_metrics"]


def test_local_weights_file_initialises_the_backbone(tmp_path):
    torch.manual_seed(123)
    pretrained = torchvision.models.resnet18(weights=None)  # 1000-class head, like ImageNet weights
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in pretrained.state_dict().items()}}, path)
    args = ["recipe=resnet_finetune", f"model.weights={path}", "model.freeze_backbone=true", *FAST]
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir, _ = completed(tmp_path)
    trained = load_file(str(run_dir / "model.safetensors"))
    assert trained["layer1.0.conv1.weight"].equal(pretrained.state_dict()["layer1.0.conv1.weight"])
    assert trained["fc.weight"].shape == (10, 512)


def test_backbone_lr_mult_slows_the_backbone(tmp_path):
    args = ["recipe=resnet_finetune", "train.backbone_lr_mult=0", "train.weight_decay=0", *FAST]
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir, _ = completed(tmp_path)
    trained = load_file(str(run_dir / "model.safetensors"))
    torch.manual_seed(0)
    init = torchvision.models.resnet18(weights=None, num_classes=10).state_dict()
    assert trained["conv1.weight"].equal(init["conv1.weight"])  # lr x 0
    assert not trained["fc.weight"].equal(init["fc.weight"])


@pytest.mark.parametrize(
    "make,expect",
    [
        (
            lambda p: torch.save(torchvision.models.resnet34(weights=None).state_dict(), p),
            "is not a state_dict for resnet18",
        ),
        (lambda p: torch.save({"weights": [1, 2, 3]}, p), "does not hold a state_dict"),
        (lambda p: p.write_bytes(b"garbage" * 10), "cannot read weights file"),
    ],
    ids=["other-arch", "not-a-state-dict", "garbage"],
)
def test_bad_weights_file_is_one_line_and_writes_nothing(tmp_path, make, expect):
    path = tmp_path / "w.pth"
    make(path)
    r = launch_here(["recipe=resnet_finetune", f"model.weights={path}", *FAST], tmp_path)
    assert r.returncode == 2
    assert expect in one_error_line(r.stderr)
    assert not (tmp_path / "runs").exists()


def test_pretrained_weights_offline_says_how_to_pass_a_file(tmp_path):
    r = launch_here(
        ["recipe=resnet_finetune", "model.weights=DEFAULT", *FAST],
        tmp_path,
        TORCH_HOME=str(tmp_path / "torch-home"),
        **OFFLINE,
    )
    assert r.returncode == 2
    line = one_error_line(r.stderr)
    assert "could not download" in line and "model.weights=/path/to/" in line
    assert not (tmp_path / "runs").exists()


def test_cifar10_offline_is_one_line(tmp_path):
    r = launch_here(
        ["recipe=resnet_finetune", "data.name=cifar10", f"data.root={tmp_path / 'cifar'}", *FAST], tmp_path, **OFFLINE
    )
    assert r.returncode == 2
    assert "could not download CIFAR-10" in one_error_line(r.stderr)
    assert not (tmp_path / "runs").exists()


def test_two_processes_on_digits(tmp_path):
    r = launch_here(["recipe=resnet_finetune", *FAST, "--procs", "2", "--device", "cpu"], tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir, summary = completed(tmp_path)
    assert summary["global_step"] == 3 and summary["global_batch_size"] == 32
    assert {"val/acc", "val/loss", "train/loss"} <= set(summary["final_metrics"])
    assert (run_dir / "logs" / "rank-1.log").is_file()
    assert load_file(str(run_dir / "model.safetensors"))["fc.weight"].shape == (10, 512)
    # BatchNorm: every rank evaluates with rank 0's running statistics (the saved ones), so the
    # logged metrics are those of the exported model over the whole validation set
    logged = [e for e in read_jsonl(run_dir / "metrics.jsonl") if "val/acc" in e][-1]
    mine = evaluate_saved(run_dir)
    assert logged["val/acc"] == pytest.approx(mine["acc"], abs=1e-12)
    assert logged["val/loss"] == pytest.approx(mine["loss"], rel=1e-4)
