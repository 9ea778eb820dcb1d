"""`launch export RUN_DIR`: full weights as safetensors, or a torch.export program that computes
what the eager model does on any batch size, each with a JSON naming recipe, weights and classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY, launch_here


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    cwd = tmp_path_factory.mktemp("export")
    r = launch_here([f"recipe={TINY}", "log.quiet=true", "run.name=x", "train.epochs=1", "--device", "cpu"], cwd)
    assert r.returncode == 0, r.stderr
    return cwd, cwd / "runs" / "tiny" / "x"


def test_pt2_loads_without_the_launcher_and_matches_the_eager_model(run):
    import torch
    from safetensors.torch import load_file

    cwd, rd = run
    r = launch_here(["export", str(rd), "--format", "pt2"], cwd)
    assert r.returncode == 0, r.stderr
    program = torch.export.load(str(rd / "export" / "final.pt2"))
    info = json.loads((rd / "export" / "final.pt2.json").read_text())
    assert info["recipe"].endswith("tiny_recipe.py:Tiny") and info["weights"] == "final"
    eager = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3), torch.nn.Dropout(0.1))
    eager.load_state_dict(load_file(str(rd / "model.safetensors")))
    eager.eval()
    for n in (1, 7, 64):  # the batch size is free
        x = torch.randn(n, 8)
        torch.testing.assert_close(program.module()(x), eager(x), rtol=1e-5, atol=1e-6)


def test_safetensors_of_a_checkpoint_holds_its_weights(run):
    from safetensors.torch import load_file

    cwd, rd = run
    step = sorted(p.name for p in rd.glob("checkpoints/step-*"))[0]
    r = launch_here(["export", str(rd), "--checkpoint", step, "--out", str(cwd / "out")], cwd)
    assert r.returncode == 0, r.stderr
    got = load_file(str(cwd / "out" / f"{step}.safetensors"))
    want = load_file(str(rd / "checkpoints" / step / "model.safetensors"))
    assert got.keys() == want.keys() and all(got[k].equal(want[k]) for k in got)
    assert json.loads((cwd / "out" / f"{step}.safetensors.json").read_text())["step"] == int(step.split("-")[1])


def test_a_resnet_on_digits_exports_with_its_classes(tmp_path):
    import torch

    r = launch_here(["recipe=resnet_finetune", "log.quiet=true", "run.name=d", "train.max_steps=1",
                     "data.image_size=16", "--device", "cpu"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rd = tmp_path / "runs" / "resnet_finetune" / "d"
    r = launch_here(["export", str(rd), "--format", "pt2"], tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads((rd / "export" / "final.pt2.json").read_text())
    assert info["classes"] == [str(i) for i in range(10)] and "preprocessing" in info
    out = torch.export.load(str(rd / "export" / "final.pt2")).module()(torch.randn(3, 3, 16, 16))
    assert out.shape == (3, 10)


def test_bad_input_is_one_line(run):
    cwd, rd = run
    for args, needle in (
        ([str(rd.parent)], "is not a run directory"),
        ([str(rd), "--checkpoint", "step-99"], "no checkpoint step-99"),
    ):
        r = launch_here(["export", *args], cwd)
        assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_a_model_torch_export_cannot_trace_is_one_line(tmp_path):
    """A forward that branches on the data cannot be traced: one line pointing at safetensors,
    nothing written, and the weights still export."""
    branchy = TINY.replace(":Tiny", ":TinyBranchy")
    r = launch_here(
        [f"recipe={branchy}", "log.quiet=true", "run.name=s", "train.max_steps=1", "--device", "cpu"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    rd = tmp_path / "runs" / "tiny" / "s"
    r = launch_here(["export", str(rd), "--format", "pt2"], tmp_path)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "torch.export cannot trace" in lines[0], r.stderr
    assert "--format safetensors" in lines[0] and not (rd / "export").exists()
    assert launch_here(["export", str(rd)], tmp_path).returncode == 0  # the weights still export


def test_a_recurrent_model_exports_with_a_fixed_number_of_steps(tmp_path):
    """The sequence recipe packs its batches in training; exported, the same model runs step by
    step over the padded batch (packing cannot be traced) and computes the same classes."""
    import torch

    from recipes._nets import SequenceClassifier

    r = launch_here(["recipe=sequence", "log.quiet=true", "run.name=s", "train.max_steps=2", "model.cell=lstm",
                     "model.layers=2", "data.name=synthetic", "data.max_len=9", "--device", "cpu"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rd = tmp_path / "runs" / "sequence" / "s"
    r = launch_here(["export", str(rd), "--format", "pt2"], tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads((rd / "export" / "final.pt2.json").read_text())
    assert info["example_inputs"][0]["shape"][1:] == [9, 4] and "9 steps" in info["pt2"]
    from safetensors.torch import load_file

    eager = SequenceClassifier("lstm", 4, 128, 2, True, 0.1, 3)
    eager.load_state_dict(load_file(str(rd / "model.safetensors")))
    eager.eval()
    program = torch.export.load(str(rd / "export" / "final.pt2")).module()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 10, (13,), generator=g)
    x = torch.randn(13, 9, 4, generator=g) * (torch.arange(9)[None, :, None] < lengths[:, None, None])
    with torch.no_grad():
        torch.testing.assert_close(program(x, lengths), eager(x, lengths), rtol=1e-4, atol=1e-5)
