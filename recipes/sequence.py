"""Sequence classification with an RNN, LSTM or GRU.

Run it:  launch recipe=sequence                                  (digits read row by row, no download)
         launch recipe=sequence model.cell=lstm model.layers=2
         launch recipe=sequence data.name=file data.path=my_sequences.npz

Variable-length sequences are padded per batch and packed (``pack_padded_sequence``), so padding
never reaches the recurrent cell; the class comes from the final hidden state of the last layer
(both directions when bidirectional).

``data.name=file`` reads a NumPy ``.npz`` file with
  ``sequences``  float, shape (N, T, F) (or (N, T) for one feature), zero-padded after each length,
  ``labels``     int, shape (N,), classes 0..C-1,
  ``lengths``    int, shape (N,), optional (default: every sequence is T steps long).

torch is imported inside methods only, so ``launch --list`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field

from launcher.config import DataSection, ModelSection
from launcher.errors import ConfigError
from recipes._splits import split_indices
from recipes.base import Recipe

NPZ_KEYS = ("sequences", "labels", "lengths")


class SequenceModel(ModelSection):
    cell: Literal["rnn", "lstm", "gru"] = "gru"
    hidden_size: int = Field(128, ge=1)
    layers: int = Field(1, ge=1)
    bidirectional: bool = True
    dropout: float = Field(0.1, ge=0, lt=1, description="between stacked layers and before the classifier")


class SequenceData(DataSection):
    name: Literal["digits", "mnist", "fashion_mnist", "synthetic", "file"] = "digits"
    path: Optional[str] = Field(None, description="data.name=file: .npz with sequences, labels[, lengths]")
    num_classes: Optional[int] = Field(None, ge=2, description="default: from the data")
    split_seed: int = Field(0, description="seed of the train/val/test split")
    # data.name=synthetic: the class is the largest of the first num_classes features summed over time
    size: int = Field(512, ge=4, description="synthetic: number of sequences")
    features: int = Field(4, ge=1, description="synthetic: features per step")
    min_len: int = Field(3, ge=1, description="synthetic: shortest sequence")
    max_len: int = Field(16, ge=1, description="synthetic: longest sequence")


def read_npz(path: str) -> dict:
    """The arrays of a sequence file, checked; raises ConfigError naming the problem and the fix.
    Needs numpy only (runs in the parent's pre-flight check and again in the workers)."""
    import numpy as np

    p = Path(path)
    fmt = "an .npz with sequences (N, T, F), labels (N,) and optionally lengths (N,)"
    if not p.is_file():
        raise ConfigError(f"data.path={path} not found; pass data.path=<{fmt}>")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # not a zip, pickled objects, truncated...
        raise ConfigError(f"cannot read data.path={path} ({type(e).__name__}: {e}); it must be {fmt}") from None
    missing = [k for k in ("sequences", "labels") if k not in arrays]
    if missing:
        raise ConfigError(
            f"data.path={path} has no {' or '.join(missing)} array (it has: {', '.join(sorted(arrays)) or 'nothing'}); "
            f"save {fmt}, e.g. np.savez(path, sequences=x, labels=y, lengths=n)"
        )
    x, y = arrays["sequences"], arrays["labels"]
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3 or not np.issubdtype(x.dtype, np.number):
        raise ConfigError(f"sequences in {path} has shape {x.shape} ({x.dtype}); it must be numbers of shape (N, T, F)")
    n, t = x.shape[:2]
    if n < 2 or t < 1:
        raise ConfigError(f"sequences in {path} has shape {x.shape}; it needs at least 2 sequences of 1 step")
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ConfigError(
            f"labels in {path} must be {n} integers >= 0 (one per sequence); got shape {y.shape} {y.dtype}"
        )
    lengths = arrays.get("lengths")
    if lengths is None:
        lengths = np.full(n, t, dtype=np.int64)
    elif lengths.shape != (n,) or not np.issubdtype(lengths.dtype, np.integer):
        raise ConfigError(f"lengths in {path} must be {n} integers (one per sequence); got shape {lengths.shape}")
    elif lengths.min() < 1 or lengths.max() > t:
        raise ConfigError(
            f"lengths in {path} must lie in 1..{t} (the padded length of sequences); got {lengths.min()}..{lengths.max()}"
        )
    return {"sequences": x.astype(np.float32), "labels": y.astype(np.int64), "lengths": lengths.astype(np.int64)}


class Sequence(Recipe):
    description = (
        "RNN/LSTM/GRU sequence classification; data: digits row by row (default, no download), mnist, fashion_mnist, "
        "synthetic, file (.npz)"
    )
    Model = SequenceModel
    Data = SequenceData
    head = ["fc."]
    metric_names = ("loss", "acc")
    classification = True  # train.loss, label_smoothing, data.class_weights, data.sampling apply
    input_suffixes = (".npz",)  # launch predict: files like data.name=file's (labels not needed)
    # 15 epochs: the val accuracy on digits that the README's recipe table states
    defaults = {
        "train": {
            "epochs": 15,
            "batch_size": 32,
            "optimizer": "adamw",
            "lr": 0.003,
            "weight_decay": 0.01,
            "scheduler": "cosine",
            "grad_clip": 1.0,
            "log_every": 10,
        },
        "checkpoint": {"monitor": "val/acc", "mode": "max"},
    }

    # ------------------------------------------------------------------ pre-flight (no torch)
    @classmethod
    def check(cls, cfg) -> None:
        super().check(cfg)
        d = cfg.data
        if d.name == "file":
            if not d.path:
                raise ConfigError("data.name=file needs data.path=<.npz with sequences, labels[, lengths]>")
            arrays = read_npz(d.path)
            found = int(arrays["labels"].max()) + 1
            if d.num_classes is not None and d.num_classes < found:
                raise ConfigError(
                    f"data.num_classes={d.num_classes} but {d.path} has labels up to {found - 1}; "
                    f"drop data.num_classes or set it to at least {found}"
                )
        elif d.path is not None:
            raise ConfigError(f"data.path is read only with data.name=file (data.name={d.name}); drop data.path")
        if d.name in ("mnist", "fashion_mnist") and d.test_fraction > 0:
            raise ConfigError(
                f"data.test_fraction does not apply to data.name={d.name}: its test set is the validation split; drop it"
            )
        if d.name in ("digits", "mnist", "fashion_mnist") and d.num_classes not in (None, 10):
            raise ConfigError(f"data.num_classes={d.num_classes} but {d.name} has 10 classes; drop data.num_classes")
        if d.name == "synthetic":
            if d.min_len > d.max_len:
                raise ConfigError(f"data.min_len={d.min_len} > data.max_len={d.max_len}; make min_len <= max_len")
            if (d.num_classes or 3) > d.features:
                raise ConfigError(
                    f"synthetic data with {d.num_classes or 3} classes needs data.features >= {d.num_classes or 3}"
                )

    # ------------------------------------------------------------------ parts
    def _arrays(self):
        """(sequences float32 (N, T, F), lengths int64 (N,), labels int64 (N,)) as numpy arrays."""
        import numpy as np

        d = self.cfg.data
        if d.name == "digits":
            from sklearn.datasets import load_digits

            digits = load_digits()  # 1,797 real 8x8 images bundled with scikit-learn
            x = digits.images.astype(np.float32) / 16.0  # (N, 8 rows = steps, 8 columns = features)
            return x, np.full(len(x), 8, dtype=np.int64), digits.target.astype(np.int64)
        if d.name == "synthetic":
            rng = np.random.default_rng(1234)
            classes = d.num_classes or 3
            lengths = rng.integers(d.min_len, d.max_len + 1, size=d.size)
            x = rng.standard_normal((d.size, d.max_len, d.features)).astype(np.float32)
            x[np.arange(d.max_len)[None, :] >= lengths[:, None]] = 0.0
            y = x[:, :, :classes].sum(1).argmax(1)
            return x, lengths.astype(np.int64), y.astype(np.int64)
        if d.name in ("mnist", "fashion_mnist"):
            return self._torchvision_arrays(train=True)
        a = read_npz(d.path)
        return a["sequences"], a["lengths"], a["labels"]

    def _torchvision_arrays(self, train: bool):
        """MNIST / Fashion-MNIST read row by row: 28 steps of 28 features in [0, 1]."""
        import numpy as np

        from recipes._datasets import torchvision_split

        d = self.cfg.data
        ds = torchvision_split(d.name, d.root, train, d.download)
        x = ds.data.numpy().astype(np.float32) / 255.0
        return x, np.full(len(x), x.shape[1], dtype=np.int64), ds.targets.numpy().astype(np.int64)

    def _data(self):
        if getattr(self, "_cached", None) is None:
            self._cached = self._arrays()
        return self._cached

    def _shape(self) -> tuple[int, int]:
        """(features per step, classes)."""
        d = self.cfg.data
        if d.name == "digits":
            return 8, 10
        if d.name in ("mnist", "fashion_mnist"):
            return 28, 10
        if d.name == "synthetic":
            return d.features, d.num_classes or 3
        x, _, y = self._data()
        return x.shape[2], d.num_classes or int(y.max()) + 1

    def num_classes(self) -> int:
        return self._shape()[1]

    def build_model(self):
        from recipes._nets import SequenceClassifier

        m = self.cfg.model
        features, classes = self._shape()
        return SequenceClassifier(m.cell, features, m.hidden_size, m.layers, m.bidirectional, m.dropout, classes)

    def build_datasets(self):
        import torch

        d = self.cfg.data
        x, lengths, y = self._data()
        self._cached = None
        ds = Sequences(torch.from_numpy(x), torch.from_numpy(lengths), torch.from_numpy(y))
        if d.name in ("mnist", "fashion_mnist"):  # their own test set is the validation split
            return ds, Sequences(*(torch.from_numpy(a) for a in self._torchvision_arrays(train=False))), None
        n = len(ds)
        parts = split_indices(n, d.val_fraction, d.test_fraction, d.split_seed)
        if not parts[0]:
            raise ConfigError(
                f"data.val_fraction={d.val_fraction} and data.test_fraction={d.test_fraction} leave no training "
                f"sequences of {n}; lower them"
            )
        train, val, test = (torch.utils.data.Subset(ds, idx) if idx else None for idx in parts)
        return train, val, test

    def model_inputs(self, batch):
        x, lengths, _ = batch
        return (x, lengths)

    def read_input(self, path: str):
        """The sequences of an .npz as data.name=file reads them (``labels`` may be absent):
        one sample per sequence, cut to its length."""
        import numpy as np
        import torch

        with np.load(path, allow_pickle=False) as z:
            if "sequences" not in z.files:
                raise ValueError(f"it has no sequences array (it has: {', '.join(z.files) or 'nothing'})")
            x = z["sequences"]
            lengths = z["lengths"] if "lengths" in z.files else None
        if x.ndim == 2:
            x = x[:, :, None]
        features = self._shape()[0]
        if x.ndim != 3 or x.shape[2] != features or not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"sequences has shape {x.shape}; this model reads (N, T, {features}) numbers")
        if lengths is None:
            lengths = np.full(len(x), x.shape[1])
        if lengths.shape != (len(x),) or lengths.min(initial=1) < 1 or lengths.max(initial=1) > x.shape[1]:
            raise ValueError(f"lengths must be {len(x)} integers in 1..{x.shape[1]}")
        x = torch.from_numpy(x.astype(np.float32))
        return [(x[i, : int(n)], torch.tensor(-1)) for i, n in enumerate(lengths)]

    def export_inputs(self, batch):
        """Padded to the data's longest sequence: the exported program takes that many steps."""
        x, lengths, _ = batch
        steps = self._data()[0].shape[1]
        return (torch_pad_steps(x, steps), lengths)

    def export_info(self):
        steps, features = self._data()[0].shape[1], self._shape()[0]
        return {"inputs": f"x: (batch, steps, {features}) float, zero-padded after each length; lengths: (batch,) int64",
                "pt2": f"x has exactly {steps} steps (pad shorter sequences)"}  # fmt: skip

    @staticmethod
    def collate(samples):
        """[(x (L_i, F), y)] -> (x zero-padded to the longest (B, L, F), lengths (B,), y (B,))."""
        import torch

        xs, ys = zip(*samples, strict=True)
        lengths = torch.tensor([len(x) for x in xs], dtype=torch.int64)
        x = torch.nn.utils.rnn.pad_sequence(list(xs), batch_first=True)
        return x, lengths, torch.stack(ys)

    # ------------------------------------------------------------------ the step
    def step(self, model, batch):

        x, lengths, y = batch
        logits = model(x, lengths)
        loss = self.classification_loss(logits, y)
        n = y.shape[0]
        return loss, {"loss": loss.detach() * n, "correct": (logits.detach().argmax(1) == y).sum(), "count": n}


def torch_pad_steps(x, steps: int):
    """(B, L, F) -> (B, steps, F), zeros after L."""
    import torch

    return torch.nn.functional.pad(x, (0, 0, 0, steps - x.shape[1]))


class Sequences:
    """Map-style dataset: item i is (sequences[i, :lengths[i]], labels[i])."""

    def __init__(self, x, lengths, y):
        self.x, self.lengths, self.y = x, lengths, y
        self.targets = y  # (the labels without the sequences: class weights, balanced sampling)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i, : int(self.lengths[i])], self.y[i]
