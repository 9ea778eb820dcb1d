"""train.compile: torch.compile in the runtime; checkpoints and exported weights keep the plain
module's keys, so a compiled run resumes without compile (and the weights load anywhere)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from launcher.runtime.env import DistEnv
from launcher.runtime.strategies.single import Single
from tests.conftest import launch_here, only_run_dir, read_jsonl


def test_unwrap_sees_through_compile():
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    s = Single(DistEnv.from_environ({}), torch.device("cpu"))
    compiled = s.compile(model, "default")  # lazy: nothing is compiled before the first call
    assert compiled is not model
    assert s.unwrap(compiled) is model
    assert list(s.unwrap(compiled).state_dict()) == ["0.weight", "0.bias"]


@pytest.mark.parametrize("bad", ["train.compile_mode=fast", "train.compile=maybe"])
def test_compile_keys_are_validated(tmp_path, tiny, bad):
    proc = launch_here([f"recipe={tiny}", bad, "--dry-run"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "train.compile" in proc.stderr


def test_compiled_run_resumes_without_compile(tmp_path, tiny):
    """Epoch 1 compiled (CPU inductor), epoch 2 resumed from its checkpoint in eager mode."""
    common = [f"recipe={tiny}", "run.name=c", "log.quiet=true", "data.size=64"]
    first = launch_here([*common, "train.compile=true", "train.epochs=1"], tmp_path, timeout=600)
    assert first.returncode == 0, first.stderr
    run = only_run_dir(tmp_path)
    compiled_ckpt = run / "checkpoints" / "step-6" / "model.safetensors"
    compiled_keys = sorted(load_file(str(compiled_ckpt)))
    assert compiled_keys == ["0.bias", "0.weight", "2.bias", "2.weight"]  # no _orig_mod. prefix

    second = launch_here([*common, "train.compile=false", "train.epochs=2"], tmp_path)
    assert second.returncode == 0, second.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["resumed_from"].endswith("step-6")
    assert summary["global_step"] == 12
    assert sorted(load_file(str(run / "model.safetensors"))) == compiled_keys
    assert sorted(load_file(str(run / "checkpoints" / "step-12" / "model.safetensors"))) == compiled_keys
    steps = [e["step"] for e in read_jsonl(run / "metrics.jsonl") if "train/loss" in e]
    assert steps == sorted(set(steps)) and steps[-1] == 12
