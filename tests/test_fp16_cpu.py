"""fp16-mixed on the CPU (torch's float16 autocast + GradScaler("cpu")): the scaler paths run in CI
without a GPU -- its state in checkpoints, bit-exact resume with it, DDP and accumulation with it."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY, assert_same_weights, launch_here, make_dirs


@pytest.mark.parametrize("extra", [[], ["--procs", "2", "train.grad_accum_steps=2"]], ids=["single", "ddp-accum"])
def test_fp16_on_cpu_checkpoints_its_scaler_and_resumes_bit_exact(tmp_path, extra):
    args = [f"recipe={TINY}", "run.name=f", "--device", "cpu", "--precision", "fp16-mixed", "train.epochs=3", *extra]
    ref, cut = make_dirs(tmp_path, "ref", "cut")
    r = launch_here(args, ref)
    assert r.returncode == 0, r.stderr
    assert "fp16-mixed on the CPU" in r.stderr  # the one notice line
    assert launch_here([*args, "train.max_steps=5"], cut).returncode == 0
    state = torch.load(cut / "runs/tiny/f/checkpoints/step-5/state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the GradScaler's state is part of the checkpoint
    r = launch_here(args, cut)
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stderr
    assert_same_weights(ref / "runs/tiny/f/model.safetensors", cut / "runs/tiny/f/model.safetensors")
