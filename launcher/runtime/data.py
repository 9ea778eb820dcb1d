"""Data loading that resumes exactly: a batch sampler with an epoch and a start position, and
per-batch seeding of random transforms."""

from __future__ import annotations

import math
import random
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for p in parts:
        h = (h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class BatchIndices(list):
    """A batch of dataset indices that carries the seed for its random transforms."""

    __slots__ = ("seed",)

    def __reduce__(self):  # keep the seed when sent to loader workers
        return (_make_batch, (list(self), self.seed))


def _make_batch(items: list[int], seed: int | None) -> BatchIndices:
    b = BatchIndices(items)
    b.seed = seed
    return b


class EpochBatchSampler(Sampler[list[int]]):
    """Yields batches of indices for one rank; the order depends only on (seed, epoch).

    ``set_epoch(epoch, start_batch)`` positions it: resuming at batch *k* skips the first *k*
    batches without loading them. With several ranks the shuffled order is padded to a multiple
    of the world size and dealt round-robin (the DistributedSampler convention).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        pad: bool = True,
        weights: list[float] | None = None,
    ) -> None:
        if n == 0:
            raise ValueError("empty dataset")
        self.n, self.batch_size, self.shuffle, self.seed = n, batch_size, shuffle, seed
        # balanced sampling: each epoch draws n samples with replacement, sample i with
        # probability weights[i] (what WeightedRandomSampler does), from (seed, epoch) alone
        self.weights = torch.tensor(weights, dtype=torch.float64) if weights is not None else None
        self.rank, self.world_size = rank, world_size
        self.pad = pad
        # without padding (evaluation) ranks may get one sample less: nothing is counted twice
        self.per_rank = math.ceil(n / world_size) if pad else len(range(rank, n, world_size))
        # Never drop everything: a tiny dataset still yields its one partial batch.
        self.drop_last = drop_last and self.per_rank >= batch_size
        self.epoch, self.start_batch = 0, 0
        self.with_seeds = True  # batches carry their seed (False: plain lists; see make_loader)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.per_rank // self.batch_size
        return math.ceil(self.per_rank / self.batch_size)

    def __len__(self) -> int:
        return max(0, self.batches_per_epoch() - self.start_batch)

    def _indices(self) -> list[int]:
        if self.weights is not None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist()
        elif self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        if self.pad and total > self.n:  # pad by wrapping around so every rank gets the same number
            order += order[: total - self.n]
        return order[self.rank :: self.world_size]

    def __iter__(self):
        idx = self._indices()
        bs = self.batch_size
        if not self.with_seeds:
            for b in range(self.start_batch, self.batches_per_epoch()):
                yield idx[b * bs : (b + 1) * bs]
            return
        for b in range(self.start_batch, self.batches_per_epoch()):
            batch = BatchIndices(idx[b * bs : (b + 1) * bs])
            batch.seed = mix_seed(self.seed, self.epoch, self.rank, b)
            yield batch


class SeededBatches(Dataset):
    """Wraps a dataset so each batch's random transforms run under the batch's own seed.

    So the random transforms of batch *k* of epoch *e* are the same whether the epoch ran in one
    go or was resumed at batch *k*, and whatever the number of loader workers. torch's CPU
    generator is restored afterwards, so the training step (dropout) sees the same stream as
    without the wrapper. Python's ``random`` is only reseeded, not restored: saving its 625-word
    state at every batch costs more than it gives, and reseeding alone keeps every run, resumed or not,
    deterministic. Only the CPU generator: torch.manual_seed would also reseed (and not
    restore) CUDA's.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        seed = getattr(indices, "seed", None)
        dataset = self.dataset
        if seed is None:
            return [dataset[i] for i in indices]
        gen = torch.default_generator
        saved = gen.get_state()
        random.seed(seed)
        gen.manual_seed(seed)
        try:
            return [dataset[i] for i in indices]
        finally:
            gen.set_state(saved)


def draws_no_random(dataset: Dataset) -> bool:
    """True for datasets whose items are plain tensor indexing (a ``TensorDataset``, or a
    ``Subset`` of one): they need no per-batch seeding, which costs a little of every step (a
    visible share of a small model's step on the CPU)."""
    while type(dataset) is torch.utils.data.Subset:
        dataset = dataset.dataset
    return type(dataset) is torch.utils.data.TensorDataset


def make_loader(
    dataset: Dataset,
    sampler: EpochBatchSampler,
    *,
    num_workers: int,
    pin_memory: bool,
    seed: int,
    collate_fn=None,
    seeded: bool = True,
) -> DataLoader:
    kwargs: dict[str, Any] = {}
    seeded = seeded and not draws_no_random(dataset)
    sampler.with_seeds = seeded
    if collate_fn is not None:
        kwargs["collate_fn"] = collate_fn
    return DataLoader(
        SeededBatches(dataset) if seeded else dataset,
        batch_sampler=sampler,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        # Own generator: creating an iterator must not consume the global RNG (exact resume).
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, (list, tuple)):
        moved = [to_device(b, device, non_blocking) for b in batch]
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


def labels_of(dataset: Any) -> list[int]:
    """The class index of every sample of a classification dataset, without loading its inputs
    where the dataset says them (``targets`` or ``labels``, torchvision's convention, through
    ``Subset`` and ``TensorDataset``); else every sample is read once."""
    if isinstance(dataset, torch.utils.data.Subset):
        parent = labels_of(dataset.dataset)
        return [parent[i] for i in dataset.indices]
    if isinstance(dataset, torch.utils.data.TensorDataset) and len(dataset.tensors) >= 2:
        return [int(v) for v in dataset.tensors[1].tolist()]
    for name in ("targets", "labels"):
        values = getattr(dataset, name, None)
        if values is not None and len(values) == len(dataset):
            return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]
    return [int(dataset[i][1]) for i in range(len(dataset))]
