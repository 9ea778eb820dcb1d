"""A tiny recipe for fast tests: an MLP with dropout on synthetic data with random noise
augmentation (so exact resume must restore RNG and data order). Also exercises the
``recipe=path/to/file.py:Class`` path of user recipes."""

from __future__ import annotations

from pydantic import Field

from launcher.config import DataSection, ModelSection
from recipes.base import Recipe


class TinyModel(ModelSection):
    hidden: int = Field(16, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)


class TinyData(DataSection):
    name: str = "synthetic"
    size: int = Field(96, ge=4)
    features: int = Field(8, ge=1)
    noise: float = Field(0.1, ge=0)
    fail_at_item: int = Field(-1, description="raise in __getitem__ of this index (tests of failures)")
    step_delay: float = Field(0.0, ge=0, description="seconds to sleep per batch (slows runs down for kill tests)")
    item_delay: float = Field(0.0, ge=0, description="seconds to sleep per training sample loaded (a slow loader)")
    test_size: int = Field(0, ge=0, description="samples of a test split of their own (0: none)")


class _Noisy:
    def __init__(self, x, y, noise, fail_at, delay=0.0):
        self.x, self.y, self.noise, self.fail_at, self.delay = x, y, noise, fail_at, delay

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        import torch

        if i == self.fail_at:
            raise ValueError(f"broken sample {i}")
        if self.delay:
            import time

            time.sleep(self.delay)
        return self.x[i] + self.noise * torch.randn_like(self.x[i]), self.y[i]


class Tiny(Recipe):
    name = "tiny"
    description = "tiny MLP on synthetic data (tests)"
    Model = TinyModel
    Data = TinyData
    head = ["2."]
    metric_names = ("loss", "acc")
    defaults = {"train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "log_every": 2}}

    def build_model(self):
        import torch

        m, d = self.cfg.model, self.cfg.data
        return torch.nn.Sequential(
            torch.nn.Linear(d.features, m.hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(m.hidden, 3),
            torch.nn.Dropout(m.dropout),
        )

    def build_datasets(self):
        import torch

        d = self.cfg.data
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(d.size, d.features, generator=g)
        y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
        n_val = d.size // 4
        train = _Noisy(x[n_val:], y[n_val:], d.noise, d.fail_at_item, d.item_delay)
        val = _Noisy(x[:n_val], y[:n_val], 0.0, -1)
        if not d.test_size:
            return train, val
        xt = torch.randn(d.test_size, d.features, generator=torch.Generator().manual_seed(4321))
        return train, val, _Noisy(xt, (xt[:, 0] > 0).long() + (xt[:, 1] > 0.5).long(), 0.0, -1)

    def step(self, model, batch):
        import torch

        x, y = batch
        if self.cfg.data.step_delay and model.training:
            import time

            time.sleep(self.cfg.data.step_delay)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        n = y.shape[0]
        return loss, {"loss": loss.detach() * n, "correct": (logits.argmax(1) == y).sum(), "count": n}


class TinySharded(Tiny):
    """For FSDP tests: each Linear is a shard unit of its own (so small a model is below the
    default policy's threshold, which would shard only the root)."""

    shard_units = ("0", "2")


class TinyBadUnits(Tiny):
    shard_units = ("encoder",)  # no such module: one line, exit 2


class TinyBranchy(Tiny):
    """A model whose forward branches on the data (torch.export cannot trace it)."""

    def build_model(self):
        import torch

        class Branchy(torch.nn.Sequential):
            def forward(self, x):
                return super().forward(x) if x.sum() > 0 else -super().forward(x)

        m, d = self.cfg.model, self.cfg.data
        return Branchy(torch.nn.Linear(d.features, m.hidden), torch.nn.ReLU(), torch.nn.Linear(m.hidden, 3))
