"""A hand-written PyTorch training script: the baseline of ``benchmarks/first_step.py``.

    python benchmarks/vanilla_train.py [--steps 3]
    torchrun --standalone --nproc_per_node 2 benchmarks/vanilla_train.py     (DDP, gloo)

The same MLP, data, seed and SGD as ``benchmarks/mlp_recipe.py``, written the way one would
by hand, importing nothing but torch. If ``BENCH_FIRST_STEP_FILE`` is set, rank 0 writes
``time.time()`` there when its second step starts (after the first optimizer step), the same
point at which the recipe stamps.
"""

from __future__ import annotations

import argparse
import os
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    stamp = os.environ.get("BENCH_FIRST_STEP_FILE") if rank == 0 else None
    if world > 1:
        torch.distributed.init_process_group("gloo")

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = []
    width = 64
    for _ in range(3):
        layers += [torch.nn.Linear(width, 512), torch.nn.ReLU()]
        width = 512
    model = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10))
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8192, 64, generator=g)
    y = (x @ torch.randn(64, 10, generator=g)).argmax(1)
    data = torch.utils.data.TensorDataset(x, y)
    sampler = torch.utils.data.DistributedSampler(data, seed=0) if world > 1 else None
    loader = torch.utils.data.DataLoader(
        data, batch_size=args.batch_size, shuffle=sampler is None, sampler=sampler, drop_last=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    model.train()
    for i, (xb, yb) in enumerate(loader):
        if i == 1 and stamp:
            with open(stamp, "w") as f:
                f.write(repr(time.time()))
        if i == args.steps:
            break
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
