"""Deterministic held-out splits shared by the built-in recipes (torch-free).

One permutation of the sample indices, drawn from ``seed`` alone (not ``run.seed``): validation is
its head, test its tail, training the rest. A test split therefore leaves the validation samples
where they were, and ``test_fraction=0`` gives exactly the split the recipes made before there was
one."""

from __future__ import annotations

import random
from collections.abc import Sequence


def held_out(n: int, fraction: float) -> int:
    """How many of ``n`` samples ``fraction`` holds out: at least one when it is above 0."""
    return max(1, int(round(n * fraction))) if fraction > 0 else 0


def split_indices(
    n: int, val_fraction: float, test_fraction: float, seed: int
) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) positions in ``range(n)`` from torch's ``randperm`` under ``seed``."""
    import torch

    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val, n_test = held_out(n, val_fraction), held_out(n, test_fraction)
    return order[n_val : n - n_test], order[:n_val], order[n - n_test :] if n_test else []


def split_names(names: Sequence[str], val_fraction: float, test_fraction: float, seed: int) -> tuple[list[str], ...]:
    """(train, val, test) of ``names``, each sorted; depends only on the names and ``seed``."""
    order = sorted(names)
    random.Random(seed).shuffle(order)
    n = len(order)
    n_val, n_test = held_out(n, val_fraction), held_out(n, test_fraction)
    return sorted(order[n_val : n - n_test]), sorted(order[:n_val]), sorted(order[n - n_test :] if n_test else [])


def stratified(labels: Sequence[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held out) positions: ``fraction`` of every class held out (at least one of a class
    with two or more samples), chosen under ``seed``; both in increasing order."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    out: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        rng.shuffle(members)
        k = held_out(len(members), fraction) if len(members) > 1 else 0
        out += members[:k]
    held = set(out)
    return [i for i in range(len(labels)) if i not in held], sorted(held)
