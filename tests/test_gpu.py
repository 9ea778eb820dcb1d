"""The CUDA paths. Skipped without a GPU; run them on a GPU machine with `pytest -m gpu`."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import assert_same_weights, make_dirs, run_launch

pytestmark = pytest.mark.gpu
FAST = ["data.image_size=32", "train.max_steps=6", "train.log_every=1", "log.quiet=true"]


def summary(cwd, name):
    return json.loads((cwd / "runs" / "resnet_finetune" / name / "summary.json").read_text())


@pytest.mark.parametrize(
    "extra",
    [
        ["--precision", "fp32"],
        ["--precision", "bf16-mixed"],
        ["--precision", "fp16-mixed"],
        ["--precision", "bf16-mixed", "model.channels_last=true"],
        ["--strategy", "dp", "--device", "cuda"],
        ["--gpus", "1", "--strategy", "ddp"],
        ["--gpus", "1", "--strategy", "deepspeed", "--precision", "bf16-mixed"],
        ["--gpus", "1", "--strategy", "fsdp", "--precision", "bf16-mixed"],
        ["--gpus", "1", "--strategy", "fsdp", "--precision", "fp16-mixed", "checkpoint.async=true"],
        ["--gpus", "1", "--strategy", "fsdp", "fsdp.cpu_offload=true"],
    ],
    ids=[
        "fp32",
        "bf16",
        "fp16",
        "bf16-channels-last",
        "dp",
        "ddp-nccl",
        "deepspeed",
        "fsdp-bf16",
        "fsdp-fp16",
        "fsdp-offload",
    ],
)
def test_cuda_paths_train(tmp_path, extra):
    r = run_launch(
        ["recipe=resnet_finetune", "run.name=g", "--device", "cuda", *FAST, *extra]
        if "--gpus" not in extra
        else ["recipe=resnet_finetune", "run.name=g", *FAST, *extra],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert summary(tmp_path, "g")["status"] == "completed"


def test_fp16_scaler_state_is_checkpointed_and_resume_is_exact(tmp_path):
    args = [
        "recipe=resnet_finetune",
        "run.name=f",
        "--device",
        "cuda",
        "--precision",
        "fp16-mixed",
        "data.image_size=32",
        "train.epochs=1",
        "train.scheduler=none",  # (the recipe's cosine is planned for the run's length: no cut run)
        "log.quiet=true",
        "run.deterministic=true",
    ]
    ref, cut = make_dirs(tmp_path, "ref", "cut")
    assert run_launch(args, ref).returncode == 0
    assert run_launch([*args, "train.max_steps=7"], cut).returncode == 0
    state = torch.load(
        next((cut / "runs/resnet_finetune/f/checkpoints").glob("step-7")) / "state.pt", weights_only=True
    )
    assert state["scaler"]["scale"] > 0
    assert run_launch(args, cut).returncode == 0
    assert_same_weights(
        ref / "runs/resnet_finetune/f/model.safetensors", cut / "runs/resnet_finetune/f/model.safetensors"
    )
    assert load_file(str(ref / "runs/resnet_finetune/f/model.safetensors"))["fc.weight"].dtype == torch.float32
