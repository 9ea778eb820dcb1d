"""The MLP of the benchmarks as an ordinary recipe (torch imported inside methods, like the
built-in recipes, so the `launch` parent stays torch-free).

If ``BENCH_FIRST_STEP_FILE`` is set, rank 0 writes ``time.time()`` there when its second
training step starts, i.e. once the first optimizer step is done (``benchmarks/first_step.py``;
``benchmarks/vanilla_train.py`` stamps at the same point). The runtime itself knows nothing of it.
"""

from __future__ import annotations

import os
import time

from pydantic import Field

from launcher.config import DataSection, ModelSection
from recipes.base import Recipe


class MlpModel(ModelSection):
    hidden: int = Field(512, ge=1)
    depth: int = Field(3, ge=1)


class MlpData(DataSection):
    size: int = Field(8192, ge=64)
    features: int = Field(64, ge=1)
    classes: int = Field(10, ge=2)


def runtime_overrides(spec: str, seed: int, args) -> list[tuple[str, str]]:
    """Config of the runtime side: the same model, data, seed and SGD as the hand-written loop."""
    return [
        ("recipe", spec),
        ("run.seed", str(seed)),
        ("train.epochs", str(args.epochs)),
        ("train.batch_size", str(args.batch_size)),
        ("train.lr", str(args.lr)),
        ("train.momentum", "0.9"),
        ("train.log_every", "50"),
        ("model.hidden", str(args.hidden)),
        ("model.depth", str(args.depth)),
        ("data.size", str(args.size)),
        ("data.features", str(args.features)),
        ("log.backends", "[jsonl]"),
        ("log.quiet", "true"),
    ]


def build_mlp(features: int, hidden: int, depth: int, classes: int):
    import torch

    layers: list = []
    width = features
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def synthetic(size: int, features: int, classes: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return torch.utils.data.TensorDataset(x, (x @ w).argmax(1))


class Mlp(Recipe):
    name = "mlp"
    description = "MLP on synthetic data (benchmarks)"
    Model = MlpModel
    Data = MlpData
    defaults = {"train": {"lr": 0.05, "momentum": 0.9}}

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        stamp = os.environ.get("BENCH_FIRST_STEP_FILE")
        self._stamp = stamp if stamp and os.environ.get("RANK", "0") == "0" else None
        self._calls = 0

    def build_model(self):
        m, d = self.cfg.model, self.cfg.data
        return build_mlp(d.features, m.hidden, m.depth, d.classes)

    def build_datasets(self):
        d = self.cfg.data
        return synthetic(d.size, d.features, d.classes), None

    def step(self, model, batch):
        import torch

        if self._stamp is not None:
            self._calls += 1
            if self._calls == 2:
                with open(self._stamp, "w") as f:
                    f.write(repr(time.time()))
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        n = y.shape[0]
        return loss, {"loss": loss.detach() * n, "count": n}
