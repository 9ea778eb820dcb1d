"""Shared pieces of the benchmarks: a small model whose step records its own timing, so the
hand-written loop and our runtime are measured at exactly the same point of each iteration."""

from __future__ import annotations

import os
import random
import threading
import time
from statistics import median

import numpy as np
import torch

from benchmarks.mlp_recipe import MlpData, MlpModel, build_mlp, synthetic
from recipes.base import Recipe

# Called at the start of every training step of the bench recipe (set by the benchmark).
ON_STEP: list = [lambda: None]
LOSSES: list[float] = []


class Lockstep:
    """Two training loops in one process take turns step by step (a token passed at the start
    of each step), so every slow-down of the machine hits both alike. Each loop's intervals
    cover exactly its own iterations: waiting for the other loop is not counted.

    The order is fixed, so that under DDP every rank runs the two loops' collectives in the same
    order: ``first`` steps first, then they alternate, and every ``swap_every`` steps the loop
    that just stepped steps again, so the two swap places (the loop that leads each pair runs
    slightly slower -- an A/A test shows it -- and this cancels that bias)."""

    def __init__(self, first: str, second: str, swap_every: int = 16) -> None:
        self.cond = threading.Condition()
        self.swap_every = swap_every
        self.steps = 0  # steps completed by both loops
        self.other = {first: second, second: first}
        self.turn = first
        self.done = {first: False, second: False}
        self.start: dict[str, float | None] = {first: None, second: None}
        self.cpu_start: dict[str, float] = {first: 0.0, second: 0.0}
        self.intervals: dict[str, list[float]] = {first: [], second: []}
        self.cpu: dict[str, list[float]] = {first: [], second: []}  # the thread's CPU time per step

    def tick(self, me: str) -> None:
        now, cpu = time.perf_counter(), time.thread_time()
        if self.start[me] is not None:
            self.intervals[me].append(now - self.start[me])
            self.cpu[me].append(cpu - self.cpu_start[me])
        other = self.other[me]
        with self.cond:
            if self.start[me] is not None:  # my step is over: hand over (no step yet: just wait)
                self.steps += 1
                if not self.swap_every or self.steps % self.swap_every:
                    self.turn = other
                    self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == me or self.done[other])
        self.cpu_start[me] = time.thread_time()
        self.start[me] = time.perf_counter()

    def finish(self, me: str) -> None:
        with self.cond:
            self.done[me] = True
            self.turn = self.other[me]
            self.cond.notify_all()


def paired_ratio(ours: list[float], base: list[float]) -> float:
    """The median over steps of (our step i) / (the hand-written loop's step i).

    Lock-step makes step i of the two loops neighbours in time, so each ratio compares them under
    the same machine conditions; a round's speed drifts (on a shared machine, markedly and within
    seconds), which a ratio of the two loops' separate medians would only partly cancel.
    The leader of a pair swaps every few steps, so its small bias cancels in the median too."""
    n = min(len(ours), len(base))
    return median(q / v for q, v in zip(ours[:n], base[:n], strict=True))


def paired_cost(ours: list[float], base: list[float]) -> float:
    """The median over steps of (our step i) - (the hand-written loop's step i), in seconds:
    what the runtime adds to each step."""
    n = min(len(ours), len(base))
    return median(q - v for q, v in zip(ours[:n], base[:n], strict=True))


# The same MLP and data as the `launch`-able benchmark recipe (one definition for both).
make_model = build_mlp  # no dropout: the two lock-step loops share the process's global RNG
make_data = synthetic


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class BenchRecipe(Recipe):
    """MLP on synthetic data; records step start times and losses (benchmarks only)."""

    name = "bench"
    Model = MlpModel
    Data = MlpData

    def build_model(self):
        m, d = self.cfg.model, self.cfg.data
        return make_model(d.features, m.hidden, m.depth, d.classes)

    def build_datasets(self):
        d = self.cfg.data
        return make_data(d.size, d.features, d.classes), None

    def step(self, model, batch):
        # The same per-step work as the hand-written loops (one loss.item(), which is also the
        # loss sum this recipe returns), so that what the benchmarks measure is the runtime's own
        # cost. (On a GPU a recipe keeps its sums as tensors instead: .item() waits for the GPU.)
        ON_STEP[0]()
        x, y = batch
        loss = torch.nn.functional.cross_entropy(model(x), y)
        value = loss.item()
        LOSSES.append(value)
        n = y.shape[0]
        return loss, {"loss": value * n, "count": n}


def pin_to_one_cpu(index: int = 0) -> int:
    """Pin this process (and the threads it starts later) to one CPU of those it may use.

    The lock-stepped loops run in two threads; left to the scheduler, each may sit on its own
    core, and one core can be busier (with other processes) for a whole run -- a bias that an A/A
    test shows clearly. On one core, both loops meet the same interference."""
    cpus = sorted(os.sched_getaffinity(0))
    cpu = cpus[index % len(cpus)]
    os.sched_setaffinity(0, {cpu})
    return cpu
