"""After training, on every built-in recipe: `launch eval`, `launch predict` and `launch export`
on a run trained under --procs 2 (resnet_finetune with FSDP, sequence with DDP through the
Python API, yesno with DeepSpeed ZeRO-2), each on generated data.

The checks tie the three commands to what the run itself logged: eval's metrics on two
processes equal the run's final validation (and test) metrics; predict's records, read from the
files as a user has them (images, an .npz, recordings), get the same share right as the logged
accuracy (or file accuracy); the exported program computes what the run's model computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import launch_here, only_run_dir

PROCS = ["--procs", "2", "--device", "cpu"]


def _final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    return summary["final_metrics"]


def _eval(run_dir: Path, *args: str) -> dict:
    r = launch_here(["eval", str(run_dir), *args, *PROCS], run_dir)
    assert r.returncode == 0, r.stderr
    split = args[args.index("--split") + 1] if "--split" in args else "val"
    result = json.loads((run_dir / "eval" / f"final-{split}.json").read_text())
    assert result["processes"] == 2
    return result["metrics"]


def _predict(run_dir: Path, *inputs: Path) -> list[dict]:
    out = run_dir.parent / f"{run_dir.name}-predictions.jsonl"
    r = launch_here(["predict", str(run_dir), *map(str, inputs), "--out", str(out)], run_dir)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def _export_pt2(run_dir: Path):
    import torch

    r = launch_here(["export", str(run_dir), "--format", "pt2"], run_dir)
    assert r.returncode == 0, r.stderr
    return torch.export.load(str(run_dir / "export" / "final.pt2")).module()


# ---------------------------------------------------------------- resnet_finetune, FSDP


def _write_images(root: Path, per_class: dict[str, int], seed: int) -> None:
    """Noisy 20x20 images whose class is their dominant colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"red": 0, "green": 1, "blue": 2}
    for split, n in per_class.items():
        for name, channel in colours.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                a = rng.integers(0, 120, (20, 20, 3))
                a[..., channel] += rng.integers(40, 135)
                Image.fromarray(a.astype(np.uint8)).save(root / split / name / f"{i}.png")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("after-resnet")
    _write_images(cwd / "images", {"train": 8, "val": 4, "test": 4}, seed=0)
    args = ["recipe=resnet_finetune", "data.name=image_folder", f"data.root={cwd / 'images'}", "data.image_size=16",
            "train.epochs=3", "train.batch_size=6", "train.lr=0.01", "log.quiet=true", "run.name=fsdp",
            "--strategy", "fsdp", *PROCS]  # fmt: skip
    r = launch_here(args, cwd)
    assert r.returncode == 0, r.stderr
    return cwd / "runs" / "resnet_finetune" / "fsdp"


def test_resnet_after_fsdp_eval_predict_export(resnet_run):
    import torch
    from PIL import Image

    import launcher

    rd = resnet_run
    final = _final(rd)
    assert _eval(rd) == pytest.approx({k: v for k, v in final.items() if k.startswith("val/")}, rel=1e-5)
    assert _eval(rd, "--split", "test") == pytest.approx(
        {k: v for k, v in final.items() if k.startswith("test/")}, rel=1e-5
    )

    images = rd.parents[2] / "images"
    records = _predict(rd, images / "val")
    files = sorted((images / "val").rglob("*.png"))
    assert [r["input"] for r in records] == [str(p) for p in files]  # input order: the folder's, sorted
    right = sum(r["class"] == Path(r["input"]).parent.name for r in records)
    assert right / len(records) == pytest.approx(final["val/acc"], abs=1e-9)
    assert all(sum(r["probs"].values()) == pytest.approx(1, abs=1e-4) for r in records)

    program = _export_pt2(rd)
    model = launcher.load_model(rd)
    recipe = _recipe(rd)
    x = torch.stack([recipe.read_input(str(p))[0][0] for p in files[:5]])
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(program(x), logits, rtol=1e-4, atol=1e-5)
    probs = torch.softmax(logits, 1)
    for r, p in zip(records[:5], probs, strict=True):  # predict's probabilities are the model's
        assert list(r["probs"].values()) == pytest.approx(p.tolist(), abs=2e-6)
    assert Image.open(files[0]).size == (20, 20)  # (resized to data.image_size=16 by read_input)


def _recipe(run_dir: Path):
    import yaml

    from launcher.config import config_class, validate
    from launcher.recipe_loader import load_recipe

    tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    cls = load_recipe(tree["recipe"])
    return cls(validate(config_class(cls), tree))


# ---------------------------------------------------------------- sequence, DDP through the API


def test_sequence_after_ddp_through_the_python_api(tmp_path, monkeypatch):
    import numpy as np
    import torch

    import launcher
    from recipes._splits import split_indices

    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    n, steps = 64, 7
    lengths = rng.integers(2, steps + 1, n)
    x = rng.standard_normal((n, steps, 3)).astype(np.float32)
    x[np.arange(steps)[None, :] >= lengths[:, None]] = 0
    y = x.sum(1).argmax(1)
    np.savez(tmp_path / "seqs.npz", sequences=x, labels=y, lengths=lengths)
    overrides = {"data.name": "file", "data.path": str(tmp_path / "seqs.npz"), "data.val_fraction": 0.25,
                 "data.test_fraction": 0.25, "train.epochs": 3, "model.hidden_size": 16, "log.quiet": True,
                 "run.name": "ddp"}  # fmt: skip
    summary = launcher.train("sequence", overrides=overrides, procs=2)
    rd = Path(summary["run_dir"])
    assert summary["status"] == "completed" and summary["global_batch_size"] == 2 * 32
    final = summary["final_metrics"]

    val = launcher.evaluate(rd, procs=2)["metrics"]
    assert val == pytest.approx({k: v for k, v in final.items() if k.startswith("val/")}, rel=1e-5)

    records = launcher.predict(rd, [tmp_path / "seqs.npz"])
    assert [r["index"] for r in records] == list(range(n)) and {r["input"] for r in records} == {
        str(tmp_path / "seqs.npz")
    }
    val_idx = split_indices(n, 0.25, 0.25, 0)[1]
    right = sum(records[i]["class"] == int(y[i]) for i in val_idx)
    assert right / len(val_idx) == pytest.approx(final["val/acc"], abs=1e-9)

    program = _export_pt2(rd)  # (packed in training; exported step by step over `steps` padded steps)
    model = launcher.load_model(rd)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(lengths))
    torch.testing.assert_close(program(torch.from_numpy(x), torch.from_numpy(lengths)), want, rtol=1e-4, atol=1e-5)
    assert [r["class"] for r in records] == want.argmax(1).tolist()


# ---------------------------------------------------------------- yesno, DeepSpeed ZeRO-2


@pytest.fixture(scope="module")
def yesno_run(tmp_path_factory) -> Path:
    from tests.test_yesno import standin_module

    cwd = tmp_path_factory.mktemp("after-yesno")
    standin_module().make_standin(cwd / "data", files=16, seed=3)
    args = ["recipe=yesno", f"data.root={cwd / 'data'}", "data.val_fraction=0.25", "train.epochs=6",
            "train.warmup_steps=4", "model.channels=32", "log.quiet=true", "run.name=ds",
            "--strategy", "deepspeed", "deepspeed.stage=2", *PROCS]  # fmt: skip
    r = launch_here(args, cwd, OMP_NUM_THREADS="1")
    assert r.returncode == 0, r.stderr
    return only_run_dir(cwd)


def test_yesno_after_deepspeed_eval_predict_export(yesno_run):
    import torch

    import launcher
    from recipes._splits import split_names

    rd = yesno_run
    final = _final(rd)
    assert _eval(rd) == pytest.approx({k: v for k, v in final.items() if k.startswith("val/")}, rel=1e-5)

    waves = rd.parents[2] / "data" / "waves_yesno"
    names = sorted(p.stem for p in waves.glob("*.wav"))
    val = split_names(names, 0.25, 0.0, 0)[1]
    copies = rd.parents[2] / "to-transcribe"
    copies.mkdir()
    for name in val:  # the recordings as a user has them, any name
        shutil.copy(waves / f"{name}.wav", copies / f"recording-{name}.wav")
    records = _predict(rd, copies)
    assert len(records) == len(val) and all(set(r) == {"input", "words", "label"} for r in records)
    right = sum(r["label"] == Path(r["input"]).stem.removeprefix("recording-") for r in records)
    assert right / len(val) == pytest.approx(final["val/file_acc"], abs=1e-9)

    program = _export_pt2(rd)
    model = launcher.load_model(rd)
    recipe = _recipe(rd)
    feats = [recipe.read_input(str(p))[0] for p in sorted(copies.glob("*.wav"))]
    batch = recipe.collate(feats)
    with torch.no_grad():
        want = model(*recipe.model_inputs(batch))
    got = program(*recipe.model_inputs(batch))
    torch.testing.assert_close(got[0], want[0], rtol=1e-4, atol=1e-5)
    assert got[1].tolist() == want[1].tolist()
