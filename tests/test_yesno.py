"""The yesno recipe on stand-in recordings in the YESNO layout (espeak-ng speech, 8 kHz mono WAV,
read through torchaudio.datasets.YESNO exactly like the real corpus): decoding and metrics, the
feature cache, learning end to end, exact WER under --procs 2, and one-line data errors."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from launcher.config import resolve
from launcher.errors import ConfigError
from launcher.recipe_loader import load_recipe
from recipes._nets import CTCNet
from recipes._splits import split_names
from recipes.yesno import file_ids, greedy_decode
from tests.conftest import ROOT, evaluate_saved, launch_here, only_run_dir, read_jsonl

YESNO = load_recipe("yesno")
ENV = {"OMP_NUM_THREADS": "1"}  # the suite's machine is shared: 2 contending threads stall badly
OFFLINE = {"https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
# 24 recordings: 18 for training, 6 held out
SMALL = ["data.val_fraction=0.25", "log.quiet=true"]


def standin_module():
    spec = importlib.util.spec_from_file_location("yesno_standin", ROOT / "scripts" / "yesno_standin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def recordings(tmp_path_factory) -> Path:
    """A data root with waves_yesno/ holding 24 spoken stand-in recordings (made once per session)."""
    root = tmp_path_factory.mktemp("yesno")
    standin_module().make_standin(root, files=24, seed=0)
    return root


@pytest.fixture
def data_root(recordings, tmp_path) -> Path:
    """A private copy (the recipe writes its feature cache next to the data)."""
    root = tmp_path / "data"
    shutil.copytree(recordings / "waves_yesno", root / "waves_yesno")
    return root


def recipe(*pairs: str):
    cfg = resolve(YESNO, [], [("recipe", "yesno"), *(p.split("=", 1) for p in pairs)])
    return YESNO(cfg)


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# --------------------------------------------------------------------------- pieces


def test_the_standin_has_the_yesno_layout(recordings):
    files = sorted((recordings / "waves_yesno").glob("*.wav"))
    assert len(files) == 24
    info = sf.info(str(files[0]))
    assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
    assert 3.0 < info.duration < 9.0
    assert all(len(f.stem.split("_")) == 8 and set(f.stem.split("_")) <= {"0", "1"} for f in files)


def test_edit_distance_and_greedy_decoding():
    from torchaudio.functional import edit_distance  # (what the recipe counts word errors with)

    assert edit_distance([0, 1, 1], [0, 1, 1]) == 0
    assert edit_distance([0, 1], [0, 1, 1]) == 1  # deletion
    assert edit_distance([1, 0, 1, 1], [0, 1, 1]) == 1  # insertion
    assert edit_distance([1, 1, 1], [0, 1, 0]) == 2  # substitutions
    assert edit_distance([], [0, 1, 0, 1]) == 4
    # classes: 0 blank, 1 no, 2 yes; repeats merge unless a blank separates them
    assert greedy_decode([0, 2, 2, 0, 1, 1, 1, 0, 0, 1, 0, 2]) == [1, 0, 0, 1]
    assert greedy_decode([1, 1, 2, 2]) == [0, 1]
    assert greedy_decode([0, 0, 0]) == []


def test_the_split_is_by_file_and_depends_only_on_the_seed():
    ids = [f"{i:08b}" for i in range(60)]
    train, val, test = split_names(ids, 0.5, 0, 0)
    assert len(val) == 30 and set(train) | set(val) == set(ids) and not set(train) & set(val) and test == []
    assert split_names(list(reversed(ids)), 0.5, 0, 0) == (train, val, [])  # not the listing order
    assert split_names(ids, 0.5, 0, 1)[1] != val
    # a test split comes out of training: validation keeps the same files
    train2, val2, test2 = split_names(ids, 0.5, 0.2, 0)
    assert val2 == val and len(test2) == 12 and set(test2) <= set(train) and set(train2) == set(train) - set(test2)


def test_the_network_ignores_padding():
    torch.manual_seed(0)
    net = CTCNet(10, 16, 3, 0.0).eval()
    xs = [torch.randn(n, 10) for n in (120, 57, 203)]
    lengths = torch.tensor([len(x) for x in xs])
    padded = torch.nn.utils.rnn.pad_sequence(xs, batch_first=True)
    padded[1, 57:] = 7.0  # garbage in the padding
    with torch.no_grad():
        out, out_lengths = net(padded, lengths)
        assert out.shape[1] == 3 and out_lengths.tolist() == [30, 15, 51]  # 10 ms frames -> 40 ms
        for i, x in enumerate(xs):
            alone, n = net(x[None], lengths[i : i + 1])
            assert torch.allclose(out[: int(n), i], alone[:, 0], atol=1e-5)


def test_features_are_computed_once_and_cached_per_data_root(data_root, monkeypatch):
    r = recipe(f"data.root={data_root}")
    train, val, _ = r.build_datasets()
    assert len(train) == 12 and len(val) == 12  # the default split: half of the files held out
    feats, words = val[0]
    assert feats.shape[1] == 40 and 300 < feats.shape[0] < 900  # log-Mel, 10 ms frames
    assert words.shape == (8,)
    caches = list((data_root / ".cache").glob("yesno-logmel-*.pt"))
    assert len(caches) == 1

    import torchaudio

    def no_audio(*args, **kwargs):
        raise AssertionError("audio read again")

    monkeypatch.setattr(torchaudio, "load", no_audio)
    _, again, _ = recipe(f"data.root={data_root}").build_datasets()  # from the cache: no audio read
    assert torch.equal(again[3][0], val[3][0]) and torch.equal(again[3][1], val[3][1])
    # other feature settings are another cache entry, computed from the audio
    with pytest.raises(AssertionError, match="audio read again"):
        recipe(f"data.root={data_root}", "data.features=mfcc").build_datasets()


def test_labels_come_from_the_file_names(data_root):
    r = recipe(f"data.root={data_root}", "data.time_masks=0", "data.freq_masks=0")
    data = r.features()
    assert data["ids"] == file_ids(data_root / "waves_yesno") and len(data["ids"]) == 24
    for fid, words in zip(data["ids"], data["labels"], strict=True):
        assert words == [int(c) for c in fid.split("_")]


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def trained(recordings, tmp_path_factory) -> Path:
    """The run directory of the default config trained on 18 of the 24 stand-in files."""
    cwd = tmp_path_factory.mktemp("trained")
    root = cwd / "data"
    shutil.copytree(recordings / "waves_yesno", root / "waves_yesno")
    r = launch_here(["recipe=yesno", f"data.root={root}", *SMALL], cwd, **ENV)
    assert r.returncode == 0, r.stderr
    return only_run_dir(cwd)


def test_learns_to_recognise_the_words(trained):
    summary = json.loads((trained / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 30 * 4
    final = summary["final_metrics"]
    assert {"val/wer", "val/file_acc", "val/loss", "train/loss"} <= set(final)
    # chance: guessing each of the 8 words gives WER 0.5; emitting nothing gives 1.0
    assert final["val/wer"] < 0.15 and final["val/file_acc"] > 0.3, final
    evals = [e for e in read_jsonl(trained / "metrics.jsonl") if "val/wer" in e]
    assert evals[0]["val/wer"] > 0.5  # it learned during the run


def test_two_processes_sum_word_errors_over_every_held_out_file(data_root, tmp_path, trained):
    keys = [f"data.root={data_root}", "data.val_fraction=0.25"]
    more = [f"model.init_from={trained}", "train.epochs=2", "train.lr=0.0003", "train.warmup_steps=0"]
    args = ["recipe=yesno", *keys, *more, "log.quiet=true", "--procs", "2", "--device", "cpu"]
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_batch_size"] == 8
    logged = [e for e in read_jsonl(run_dir / "metrics.jsonl") if "val/wer" in e]
    assert len(logged) == 2 and logged[-1]["val/wer"] < 0.15  # still recognises the words under DDP
    # 6 held-out files, 3 per rank: only summed word errors give the whole set's WER
    mine = evaluate_saved(run_dir, batch_size=4)
    assert logged[-1]["val/wer"] == pytest.approx(mine["wer"], abs=1e-12)
    assert logged[-1]["val/file_acc"] == pytest.approx(mine["file_acc"], abs=1e-12)
    assert logged[-1]["val/loss"] == pytest.approx(mine["loss"], rel=1e-4)


def test_augmentation_follows_the_runtime_seeds_so_a_continued_run_is_exact(data_root, tmp_path):
    """SpecAugment draws from the generator the runtime seeds per batch: training 2 epochs and then
    2 more gives bit-identical weights to 4 epochs at once."""
    keys = ["recipe=yesno", f"data.root={data_root}", "train.scheduler=none", "log.quiet=true"]
    for name, epochs in (("once", 4), ("split", 2), ("split", 4)):
        r = launch_here([*keys, f"run.name={name}", f"train.epochs={epochs}"], tmp_path, **ENV)
        assert r.returncode == 0, r.stderr
    once = load_file(str(tmp_path / "runs" / "yesno" / "once" / "model.safetensors"))
    split = load_file(str(tmp_path / "runs" / "yesno" / "split" / "model.safetensors"))
    assert once.keys() == split.keys() and all(torch.equal(once[k], split[k]) for k in once)


# --------------------------------------------------------------------------- data errors


def test_missing_recordings_say_where_to_put_them(tmp_path):
    root = tmp_path / "nothing"
    r = launch_here(["recipe=yesno", f"data.root={root}", "data.download=false"], tmp_path)
    line = one_error_line(r)
    assert f"not found in {root}/waves_yesno/" in line and "waves_yesno.tar.gz" in line
    assert not (tmp_path / "runs").exists()


def test_download_offline_is_one_line(tmp_path):
    root = tmp_path / "empty"
    args = ["recipe=yesno", f"data.root={root}", "data.download=true", "log.quiet=true"]
    r = launch_here(args, tmp_path, **ENV, **OFFLINE)
    line = one_error_line(r)
    assert "could not download YESNO" in line and f"{root}/waves_yesno/" in line
    assert not (tmp_path / "runs").exists()


def test_a_file_name_that_is_not_a_word_list(data_root, tmp_path):
    shutil.copy(next((data_root / "waves_yesno").glob("*.wav")), data_root / "waves_yesno" / "hello.wav")
    r = launch_here(["recipe=yesno", f"data.root={data_root}"], tmp_path)
    assert "hello.wav: a YESNO file name lists its words" in one_error_line(r)


def test_every_process_needs_a_held_out_file(data_root):
    with pytest.raises(ConfigError, match="1 validation file for 2 processes"):
        recipe(f"data.root={data_root}", "data.val_fraction=0.04", "dist.procs=2")
