"""The sequence recipe: packed RNN/LSTM/GRU classification on digits, synthetic data and .npz files,
one process and two (exact metric sums across ranks)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from launcher.config import resolve
from launcher.errors import ConfigError
from launcher.recipe_loader import load_recipe
from recipes._nets import SequenceClassifier
from tests.conftest import evaluate_saved, launch_env, launch_here, only_run_dir, read_jsonl

# one thread: the machine running the suite is shared, and 2 threads contending stall badly
ENV = {"OMP_NUM_THREADS": "1"}
SEQ = load_recipe("sequence")


def recipe(*pairs: str):
    cfg = resolve(SEQ, [], [("recipe", "sequence"), *(p.split("=", 1) for p in pairs)])
    return SEQ(cfg)


def completed(cwd: Path) -> tuple[Path, dict]:
    run_dir = only_run_dir(cwd)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    return run_dir, summary


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# --------------------------------------------------------------------------- the network


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [True, False], ids=["bi", "uni"])
def test_padding_never_reaches_the_cell(cell, bidirectional):
    torch.manual_seed(0)
    net = SequenceClassifier(cell, 3, 8, 2, bidirectional, 0.0, 4).eval()
    seqs = [torch.randn(n, 3) for n in (5, 2, 7)]
    lengths = torch.tensor([5, 2, 7])
    padded = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True)
    garbage = padded.clone()
    for i, n in enumerate(lengths):
        garbage[i, n:] = 1e3  # whatever sits in the padding must not matter
    with torch.no_grad():
        batch = net(padded, lengths)
        alone = torch.cat([net(s[None], torch.tensor([len(s)])) for s in seqs])
        assert torch.allclose(batch, alone, atol=1e-5)
        assert torch.equal(net(garbage, lengths), batch)
        # ... while the content of a sequence does
        changed = padded.clone()
        changed[1, 1] += 1.0
        assert not torch.allclose(net(changed, lengths)[1], batch[1])


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(
    ("layers", "bidirectional"), [(1, False), (2, True), (3, False)], ids=["1-uni", "2-bi", "3-uni"]
)
def test_the_step_by_step_forward_of_export_equals_the_packed_one(cell, layers, bidirectional):
    """What `launch export --format pt2` traces (torch.export cannot trace packing): the masked
    steps over the padded batch give the packed forward's final states, garbage padding too."""
    torch.manual_seed(1)
    net = SequenceClassifier(cell, 3, 8, layers, bidirectional, 0.2, 4).eval()
    lengths = torch.tensor([6, 1, 3, 6, 2])
    x = torch.randn(5, 6, 3) + 1e3 * (torch.arange(6)[None, :, None] >= lengths[:, None, None])
    with torch.no_grad():
        torch.testing.assert_close(net.fc(net.final_state_masked(x, lengths)), net(x, lengths), rtol=1e-5, atol=1e-6)


def test_collate_pads_to_the_longest_and_keeps_lengths():
    x, lengths, y = SEQ.collate([(torch.ones(2, 3), torch.tensor(1)), (torch.ones(4, 3), torch.tensor(0))])
    assert x.shape == (2, 4, 3) and lengths.tolist() == [2, 4] and y.tolist() == [1, 0]
    assert x[0, 2:].abs().sum() == 0


def test_digits_are_read_row_by_row_and_split_deterministically():
    r = recipe()
    train, val, _ = r.build_datasets()
    assert len(train) + len(val) == 1797 and len(val) == round(1797 * 0.2)
    x, y = train[0]
    assert x.shape == (8, 8) and 0 <= x.min() and x.max() <= 1  # 8 steps (rows) of 8 features (columns)
    again, *_ = recipe().build_datasets()
    assert torch.equal(again[5][0], train[5][0])
    other, *_ = recipe("data.split_seed=1").build_datasets()
    assert not all(torch.equal(other[i][0], train[i][0]) for i in range(5))


def test_synthetic_sequences_have_variable_lengths():
    train, *_ = recipe("data.name=synthetic", "data.min_len=2", "data.max_len=9").build_datasets()
    lengths = {len(train[i][0]) for i in range(len(train))}
    assert min(lengths) == 2 and max(lengths) == 9


# --------------------------------------------------------------------------- end to end


def test_digits_learns_in_two_epochs(tmp_path):
    r = launch_here(["recipe=sequence", "train.epochs=2", "log.quiet=true"], tmp_path, **ENV)
    assert r.returncode == 0, r.stderr
    run_dir, summary = completed(tmp_path)
    assert summary["final_metrics"]["val/acc"] > 0.6  # chance: 0.1 (the default 15 epochs: ~98 %)
    weights = load_file(str(run_dir / "model.safetensors"))
    assert weights["fc.weight"].shape == (10, 256)  # GRU, 128 per direction, bidirectional
    assert "rnn.weight_hh_l0_reverse" in weights


def test_stacked_unidirectional_lstm_on_synthetic_sequences(tmp_path):
    args = [
        "recipe=sequence",
        "data.name=synthetic",
        "data.size=256",
        "model.cell=lstm",
        "model.layers=2",
        "model.bidirectional=false",
        "model.hidden_size=32",
        "train.epochs=4",
        "log.quiet=true",
    ]
    r = launch_here(args, tmp_path, **ENV)
    assert r.returncode == 0, r.stderr
    run_dir, summary = completed(tmp_path)
    weights = load_file(str(run_dir / "model.safetensors"))
    assert weights["rnn.weight_ih_l1"].shape == (4 * 32, 32)  # LSTM: 4 gates, second layer
    assert not any("reverse" in k for k in weights)
    assert weights["fc.weight"].shape == (3, 32)
    assert summary["final_metrics"]["val/acc"] > 0.5  # chance: 1/3


def write_npz(path: Path, n: int = 120, classes: int = 4, **override) -> Path:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 12, size=n)
    x = np.zeros((n, 11, classes + 1), dtype=np.float32)
    y = rng.integers(0, classes, size=n)
    for i, k in enumerate(lengths):
        x[i, :k, y[i]] = 1.0  # the class is visible in every real step
        x[i, :k, classes] = rng.normal(size=k)
    arrays = {"sequences": x, "labels": y, "lengths": lengths, **override}
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_a_users_npz_file(tmp_path):
    path = write_npz(tmp_path / "mine.npz")
    args = [
        "recipe=sequence",
        "data.name=file",
        f"data.path={path}",
        "train.epochs=3",
        "train.batch_size=8",
        "log.quiet=true",
    ]
    r = launch_here(args, tmp_path, **ENV)
    assert r.returncode == 0, r.stderr
    run_dir, summary = completed(tmp_path)
    assert load_file(str(run_dir / "model.safetensors"))["fc.weight"].shape == (4, 256)  # classes from labels
    assert summary["final_metrics"]["val/acc"] > 0.5  # chance: 1/4


@pytest.mark.parametrize(
    ("override", "expect"),
    [
        ({"labels": None}, "has no labels array (it has: lengths, sequences)"),
        ({"lengths": np.full(120, 12)}, "lengths in {path} must lie in 1..11"),
        ({"labels": np.ones(119, dtype=np.int64)}, "labels in {path} must be 120 integers"),
        ({"sequences": np.zeros((120, 11, 2), dtype=bool)}, "it must be numbers of shape (N, T, F)"),
    ],
    ids=["no-labels", "lengths", "labels-count", "dtype"],
)
def test_bad_npz_files_are_named(tmp_path, override, expect):
    path = write_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(ConfigError) as exc:
        recipe("data.name=file", f"data.path={path}")
    assert expect.format(path=path) in str(exc.value)


def test_bad_input_is_one_line_before_anything_starts(tmp_path):
    r = launch_here(["recipe=sequence", "data.name=file", f"data.path={tmp_path / 'none.npz'}"], tmp_path)
    assert "none.npz not found" in one_error_line(r)
    r = launch_here(["recipe=sequence", "data.name=file"], tmp_path)
    assert "data.name=file needs data.path=" in one_error_line(r)
    r = launch_here(["recipe=sequence", "model.cell=transformer"], tmp_path)
    assert "model.cell" in one_error_line(r)
    assert not (tmp_path / "runs").exists()


def test_two_processes_report_exact_metrics_over_the_whole_val_set(tmp_path):
    keys = ["data.name=synthetic", "data.size=150", "model.hidden_size=16", "model.dropout=0"]
    args = ["recipe=sequence", *keys, "train.epochs=2", "train.batch_size=8", "log.quiet=true"]
    r = launch_here([*args, "--procs", "2", "--device", "cpu"], tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir, summary = completed(tmp_path)
    assert summary["global_batch_size"] == 16
    assert (run_dir / "logs" / "rank-1.log").is_file()
    logged = [e for e in read_jsonl(run_dir / "metrics.jsonl") if "val/acc" in e][-1]
    # 30 val sequences, 15 per rank: only the summed counts give the whole set's accuracy
    mine = evaluate_saved(run_dir, batch_size=7)
    assert logged["val/acc"] == pytest.approx(mine["acc"], abs=1e-12)
    assert logged["val/loss"] == pytest.approx(mine["loss"], rel=1e-5)


def test_importing_the_recipes_imports_no_torch(tmp_path):
    code = (
        "import sys, recipes.sequence, recipes.yesno\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchaudio')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=launch_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
