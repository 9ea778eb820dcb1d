"""Recognise the eight spoken words (yes / no) of each YESNO recording, with CTC.

Run it:  launch recipe=yesno                       (downloads the 60 recordings, 4.5 MB, into data/)
         launch recipe=yesno data.root=DIR data.download=false    (DIR/waves_yesno/*.wav already there)

Data: ``torchaudio.datasets.YESNO`` (http://www.openslr.org/resources/1/): 60 recordings, 8 kHz,
each of eight Hebrew words "ken" (yes) or "lo" (no); the file name lists them, e.g.
``0_1_1_0_0_1_0_1.wav``. The train/validation (and, with ``data.test_fraction``, test) split is
by file and depends only on the file names and ``data.split_seed``. Features (log-Mel or MFCC, normalised per file) are computed once and cached
in ``<data.root>/.cache/`` (in memory only when that folder is read-only).

Model: a small stack of 1-D convolutions (receptive field ~0.6 s, about one word) emits
log-probabilities over {blank, no, yes} every 40 ms; training minimises the CTC loss, decoding is
greedy (best class per frame, repeats merged, blanks dropped). Metrics on held-out files: ``wer`` (word edit distance / words)
and ``file_acc`` (files with all words right), summed exactly across processes.

torch and torchaudio are imported inside methods only, so ``launch --list`` stays instant.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field

from launcher.config import DataSection, ModelSection
from launcher.errors import ConfigError, first_line
from recipes._splits import split_names
from recipes.base import Recipe

URL = "http://www.openslr.org/resources/1/waves_yesno.tar.gz"
FOLDER = "waves_yesno"
NAME = re.compile(r"[01](_[01])*")
BLANK = 0  # CTC classes: 0 blank, 1 "no" (label 0), 2 "yes" (label 1)


class YesNoModel(ModelSection):
    channels: int = Field(64, ge=1, description="channels of the convolutions")
    dropout: float = Field(0.1, ge=0, lt=1)


class YesNoData(DataSection):
    name: Literal["yesno"] = "yesno"
    root: str = Field("data", description="folder that holds (or receives) waves_yesno/")
    features: Literal["logmel", "mfcc"] = "logmel"
    n_mels: int = Field(40, ge=8, description="Mel bands (logmel, and the filterbank under mfcc)")
    n_mfcc: int = Field(13, ge=2, description="mfcc: coefficients")
    sample_rate: int = Field(8000, ge=1000, description="audio of another rate is resampled to this")
    split_seed: int = Field(0, description="seed of the train/validation/test split of the files")
    time_masks: int = Field(2, ge=0, description="training: SpecAugment time masks per file")
    freq_masks: int = Field(1, ge=0, description="training: SpecAugment frequency masks per file")
    cache: bool = Field(True, description="keep computed features in <root>/.cache/")


def file_ids(folder: Path) -> list[str]:
    """Recording names without .wav, sorted (torchaudio's YESNO order)."""
    return sorted(p.stem for p in folder.glob("*.wav"))


def greedy_decode(best: list[int]) -> list[int]:
    """Per-frame best classes -> words (0 no, 1 yes): merge repeats, drop blanks."""
    words, last = [], BLANK
    for c in best:
        if c != last and c != BLANK:
            words.append(c - 1)
        last = c
    return words


def not_found(root: Path) -> str:
    return (
        f"YESNO recordings not found in {root / FOLDER}/; download {URL} and extract it into {root}/ "
        f"(giving {root / FOLDER}/0_0_0_0_1_1_1_1.wav ...), or pass data.download=true"
    )


class YesNo(Recipe):
    description = "YESNO speech (torchaudio): 1-D CNN with CTC, word error rate; data.root holds waves_yesno/"
    Model = YesNoModel
    Data = YesNoData
    head = ["fc."]
    metric_names = ("loss", "val/wer", "val/file_acc")  # decoding runs in evaluation only
    input_suffixes = (".wav", ".flac", ".mp3", ".ogg")  # launch predict: recordings, or folders of them
    # Measured on 2 CPU cores, 60-file espeak-ng stand-in (scripts/yesno_standin.py): see README.
    defaults = {
        "train": {
            "epochs": 30,
            "batch_size": 4,
            "optimizer": "adamw",
            "lr": 0.003,
            "weight_decay": 0.01,
            "scheduler": "warmup_cosine",
            "warmup_steps": 20,
            "grad_clip": 1.0,
            "log_every": 5,
        },
        "data": {"val_fraction": 0.5},
        "checkpoint": {"monitor": "val/wer", "mode": "min"},
    }

    # ------------------------------------------------------------------ pre-flight (no torch)
    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        d = cfg.data
        root = Path(d.root)
        folder = root / FOLDER
        if not folder.is_dir():
            if d.download:
                return  # the worker downloads it
            raise ConfigError(not_found(root))
        ids = file_ids(folder)
        if not ids:
            raise ConfigError(f"{folder}/ holds no .wav files; " + not_found(root).split("; ", 1)[1])
        bad = [i for i in ids if not NAME.fullmatch(i)]
        if bad:
            raise ConfigError(
                f"{folder / bad[0]}.wav: a YESNO file name lists its words as 0 (no) / 1 (yes) joined by _ "
                f"(e.g. 0_1_1_0_0_1_0_1.wav); rename or remove {len(bad)} such file{'s' if len(bad) > 1 else ''}"
            )
        cls._check_split(cfg, len(ids))

    @staticmethod
    def _check_split(cfg, n: int) -> None:
        d = cfg.data
        train, val, test = split_names([str(i) for i in range(n)], d.val_fraction, d.test_fraction, d.split_seed)
        world = cfg.dist.procs * cfg.dist.nodes
        if not train:
            raise ConfigError(
                f"data.val_fraction={d.val_fraction} and data.test_fraction={d.test_fraction} leave none of the {n} "
                "files for training; lower them"
            )
        for what, key, files in (("validation", "val_fraction", val), ("test", "test_fraction", test)):
            if files and len(files) < world:
                raise ConfigError(
                    f"{len(files)} {what} file{'s' if len(files) > 1 else ''} for {world} processes: every process "
                    f"needs one; raise data.{key} (now {getattr(d, key)}) or use fewer processes"
                )

    # ------------------------------------------------------------------ data
    def _folder(self) -> Path:
        """Make sure the recordings are there (download under a lock: one process fetches)."""
        d = self.cfg.data
        root = Path(d.root)
        folder = root / FOLDER
        if folder.is_dir() or not d.download:
            if not folder.is_dir():
                raise ConfigError(not_found(root))
            return folder
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create data.root={root} ({e.strerror}); pass a writable data.root") from None
        with _locked(root / ".yesno.lock"):
            if not folder.is_dir():
                from torchaudio.datasets import YESNO

                try:
                    YESNO(str(root), download=True)
                except (OSError, RuntimeError) as e:  # URLError is an OSError: no network, DNS, proxy
                    raise ConfigError(
                        f"could not download YESNO from {URL} ({getattr(e, 'reason', e)}); fetch it on a machine with "
                        f"network and extract it into {root}/ so that the .wav files are in {folder}/"
                    ) from None
        return folder

    def _feature_transform(self):
        import torchaudio

        d = self.cfg.data
        sr = d.sample_rate
        mel = {"n_fft": 256 if sr <= 8000 else 512, "win_length": sr // 40, "hop_length": sr // 100, "n_mels": d.n_mels}
        if d.features == "mfcc":
            return torchaudio.transforms.MFCC(sample_rate=sr, n_mfcc=d.n_mfcc, melkwargs=mel)
        return torchaudio.transforms.MelSpectrogram(sample_rate=sr, **mel)

    def _featurize(self, transform, waveform, rate: int):
        """Waveform (channels, samples) -> features (frames, n), normalised per file."""
        import torch
        import torchaudio

        d = self.cfg.data
        x = waveform.float().mean(0)  # mono
        if rate != d.sample_rate:
            x = torchaudio.functional.resample(x, rate, d.sample_rate)
        f = transform(x)  # (n, frames)
        if d.features == "logmel":
            f = torch.log(f + 1e-6)
        f = (f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + 1e-5)
        return f.T.contiguous()

    def features(self) -> dict:
        """{"ids": [...], "feats": [tensor (frames, n)], "labels": [[0/1] * 8]} for every file.
        Computed once per data root and feature settings, then read from the cache."""
        import torch

        d = self.cfg.data
        folder = self._folder()
        ids = file_ids(folder)
        if not ids:
            raise ConfigError(f"{folder}/ holds no .wav files; " + not_found(Path(d.root)).split("; ", 1)[1])
        settings = {k: getattr(d, k) for k in ("features", "n_mels", "n_mfcc", "sample_rate")}
        stamp = [(i, (folder / f"{i}.wav").stat().st_size, (folder / f"{i}.wav").stat().st_mtime_ns) for i in ids]
        key = hashlib.sha1(json.dumps([settings, stamp]).encode()).hexdigest()[:16]
        cache = Path(d.root) / ".cache" / f"yesno-{d.features}-{key}.pt"
        if d.cache and cache.is_file():
            try:
                data = torch.load(cache, weights_only=True)
                if data.get("ids") == ids:
                    return data
            except Exception:  # unreadable or truncated: compute again
                pass
        with _locked(Path(d.root) / ".yesno.lock") if d.cache else contextlib.nullcontext():
            if d.cache and cache.is_file():  # another process computed it meanwhile
                with contextlib.suppress(Exception):
                    data = torch.load(cache, weights_only=True)
                    if data.get("ids") == ids:
                        return data
            data = self._compute(folder, ids)
            if d.cache:
                _save_atomic(data, cache)
        return data

    def _compute(self, folder: Path, ids: list[str]) -> dict:
        from torchaudio.datasets import YESNO

        ds = YESNO(str(folder.parent), download=False)
        if len(ds) != len(ids):
            raise ConfigError(f"{folder}/ changed while reading it; run again")
        transform = self._feature_transform()
        feats, labels = [], []
        for n, fid in enumerate(ids):
            try:
                waveform, rate, words = ds[n]
            except (RuntimeError, OSError, ValueError) as e:
                raise ConfigError(
                    f"cannot read {folder / fid}.wav ({first_line(e)}); "
                    "replace the file (torchaudio reads it through torchcodec, which needs ffmpeg)"
                ) from None
            feats.append(self._featurize(transform, waveform, rate))
            labels.append(list(words))
        return {"ids": ids, "feats": feats, "labels": labels}

    def build_datasets(self):
        d = self.cfg.data
        data = self.features()
        index = {fid: n for n, fid in enumerate(data["ids"])}
        self._check_split(self.cfg, len(index))
        train_ids, val_ids, test_ids = split_names(data["ids"], d.val_fraction, d.test_fraction, d.split_seed)

        def subset(ids, augment):
            rows = [index[i] for i in ids]
            return Recordings([data["feats"][r] for r in rows], [data["labels"][r] for r in rows], augment)

        train = subset(train_ids, (d.time_masks, d.freq_masks))
        return train, *(subset(ids, (0, 0)) if ids else None for ids in (val_ids, test_ids))

    # ------------------------------------------------------------------ model and step
    def build_model(self):
        from recipes._nets import CTCNet

        m, d = self.cfg.model, self.cfg.data
        n = d.n_mels if d.features == "logmel" else d.n_mfcc
        return CTCNet(n, m.channels, 3, m.dropout)

    def model_inputs(self, batch):
        x, lengths, _, _ = batch
        return (x, lengths)

    def read_input(self, path: str):
        """A recording (any rate: resampled) -> its features, as validation computes them."""
        import torch
        import torchaudio

        if getattr(self, "_predict_tf", None) is None:
            self._predict_tf = self._feature_transform()
        waveform, rate = torchaudio.load(path)
        return [(self._featurize(self._predict_tf, waveform, rate), torch.zeros(0, dtype=torch.int64))]

    def predict(self, model, batch):
        """The decoded words of each recording: ``words`` (yes/no) and ``label`` (YESNO's file
        name form, e.g. 0_1_1_0_0_1_0_1)."""
        log_probs, out_lengths = model(*self.model_inputs(batch))
        best = log_probs.argmax(-1).T.tolist()
        records = []
        for b, n in enumerate(out_lengths.tolist()):
            words = greedy_decode(best[b][:n])
            records.append({"words": ["yes" if w else "no" for w in words], "label": "_".join(map(str, words))})
        return records

    def export_info(self):
        d = self.cfg.data
        return {"inputs": f"{d.features} features per frame at {d.sample_rate} Hz, normalised per file; lengths (batch,)",
                "outputs": "log-probabilities over (blank, no, yes) per frame, and the output lengths"}  # fmt: skip

    @staticmethod
    def collate(samples):
        """[(features (T_i, n), words (S_i,))] -> (features (B, T, n), T_i (B,), words (B, S), S_i (B,))."""
        import torch
        from torch.nn.utils.rnn import pad_sequence

        feats, words = zip(*samples, strict=True)
        lengths = torch.tensor([len(f) for f in feats], dtype=torch.int64)
        word_lengths = torch.tensor([len(w) for w in words], dtype=torch.int64)
        return (
            pad_sequence(list(feats), batch_first=True),
            lengths,
            pad_sequence(list(words), batch_first=True),
            word_lengths,
        )

    def step(self, model, batch):
        import torch
        from torchaudio.functional import edit_distance

        x, lengths, words, word_lengths = batch
        log_probs, out_lengths = model(x, lengths)  # (T', B, 3)
        per_file = torch.nn.functional.ctc_loss(
            log_probs, words + 1, out_lengths, word_lengths, blank=BLANK, reduction="none", zero_infinity=True
        ) / word_lengths.clamp(min=1)
        loss = per_file.mean()
        sums = {"loss": per_file.detach().sum(), "count": x.shape[0]}
        if not model.training:  # decoding costs a host sync: only when evaluating
            best = log_probs.detach().argmax(-1).T.tolist()  # (B, T')
            errors = correct = 0
            for b, n in enumerate(out_lengths.tolist()):
                ref = words[b, : int(word_lengths[b])].tolist()
                dist = edit_distance(greedy_decode(best[b][:n]), ref)  # (torchaudio's Levenshtein distance)
                errors += dist
                correct += dist == 0
            sums.update(word_errors=errors, words=word_lengths.sum(), files_correct=correct)
        return loss, sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = {"loss": sums["loss"] / max(sums.get("count", 0.0), 1.0)}
        if "words" in sums:
            out["wer"] = sums["word_errors"] / max(sums["words"], 1.0)
            out["file_acc"] = sums["files_correct"] / max(sums["count"], 1.0)
        return out


class Recordings:
    """Map-style dataset of (features (T, n), words (S,)) with optional SpecAugment masks, drawn
    from torch's global generator (the runtime seeds it per batch: exact resume)."""

    def __init__(self, feats, labels, augment: tuple[int, int]) -> None:
        import torch

        self.feats = feats
        self.labels = [torch.tensor(w, dtype=torch.int64) for w in labels]
        self.time_masks, self.freq_masks = augment

    def __len__(self) -> int:
        return len(self.feats)

    def __getitem__(self, i: int):
        import torch

        f = self.feats[i]
        if self.time_masks or self.freq_masks:
            f = f.clone()
            frames, n = f.shape
            for _ in range(self.time_masks):
                width = int(torch.randint(0, 11, ()))  # up to 0.1 s
                start = int(torch.randint(0, max(1, frames - width), ()))
                f[start : start + width] = 0.0
            for _ in range(self.freq_masks):
                width = int(torch.randint(0, max(1, n // 5) + 1, ()))
                start = int(torch.randint(0, max(1, n - width), ()))
                f[:, start : start + width] = 0.0
        return f, self.labels[i]


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock between the processes of a run (no lock where none can be made)."""
    try:
        import fcntl

        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except (ImportError, OSError):
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename; a read-only data root just skips the cache."""
    import torch

    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
