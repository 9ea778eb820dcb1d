"""Shared pieces of the benchmarks: a small model whose step records its own timing, so the
hand-written loop and our runtime are measured at exactly the same point of each iteration."""

from __future__ import annotations

import random
import threading
import time

import numpy as np
import torch
from pydantic import Field

from launcher.config import DataSection, ModelSection
from recipes.base import Recipe

# Called at the start of every training step of the bench recipe (set by the benchmark).
ON_STEP: list = [lambda: None]
LOSSES: list[float] = []


class Lockstep:
    """Two training loops in one process take turns step by step (a token passed at the start
    of each step), so every slow-down of the machine hits both alike. Each loop's intervals
    cover exactly its own iterations: waiting for the other loop is not counted."""

    def __init__(self, first: str, second: str) -> None:
        self.cond = threading.Condition()
        self.other = {first: second, second: first}
        self.turn = first
        self.done = {first: False, second: False}
        self.start: dict[str, float | None] = {first: None, second: None}
        self.intervals: dict[str, list[float]] = {first: [], second: []}

    def tick(self, me: str) -> None:
        now = time.perf_counter()
        if self.start[me] is not None:
            self.intervals[me].append(now - self.start[me])
        other = self.other[me]
        with self.cond:
            self.turn = other
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == me or self.done[other])
        self.start[me] = time.perf_counter()

    def finish(self, me: str) -> None:
        with self.cond:
            self.done[me] = True
            self.turn = self.other[me]
            self.cond.notify_all()


class BenchModel(ModelSection):
    hidden: int = Field(512, ge=1)
    depth: int = Field(3, ge=1)


class BenchData(DataSection):
    size: int = Field(8192, ge=64)
    features: int = Field(64, ge=1)
    classes: int = Field(10, ge=2)


def make_model(features: int, hidden: int, depth: int, classes: int) -> torch.nn.Module:
    # No dropout: the two loops share the process's global RNG while they take turns.
    layers: list[torch.nn.Module] = []
    width = features
    for _ in range(depth):
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        width = hidden
    layers.append(torch.nn.Linear(width, classes))
    return torch.nn.Sequential(*layers)


def make_data(size: int, features: int, classes: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(size, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    y = (x @ w).argmax(1)
    return torch.utils.data.TensorDataset(x, y)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BenchRecipe(Recipe):
    """MLP on synthetic data; records step start times and losses (benchmarks only)."""

    name = "bench"
    Model = BenchModel
    Data = BenchData

    def build_model(self):
        m, d = self.cfg.model, self.cfg.data
        return make_model(d.features, m.hidden, m.depth, d.classes)

    def build_datasets(self):
        d = self.cfg.data
        return make_data(d.size, d.features, d.classes), None

    def step(self, model, batch):
        ON_STEP[0]()
        x, y = batch
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        LOSSES.append(loss.item())
        n = y.shape[0]
        return loss, {"loss": loss.detach() * n, "count": n}


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if s else float("nan")
