"""DDP (or FSDP) loop overhead: our runtime vs. a hand-written loop, lock-step inside torchrun jobs.

    .venv/bin/python benchmarks/ddp_overhead.py [--strategy ddp|fsdp] [--rounds 4] [--epochs 2] [--procs 2]

Each round starts ``torchrun --standalone --nproc_per_node 2`` on this script. In every rank,
two threads train the same MLP on the same shard of the same data from the same seed: the
hand-written loop (``DistributedDataParallel`` on a gloo group of its own, the epoch's shuffled
order dealt round-robin to the ranks) and our runtime (``launch``'s worker with the DDP strategy,
on the default group). They take turns step by step as in ``benchmarks/overhead.py`` (the same
order on every rank, so their collectives never cross), each rank pinned to its own CPU; each
side's step time excludes waiting for the other side's turn (it includes waiting for the other
rank inside its own collectives, as in any DDP job). ``OMP_NUM_THREADS=1`` for both (torchrun's
default; `launch` sets cores // procs, the same on 2 cores). A rank's ratio is the median over
steps of (our step i) / (the hand-written loop's step i), as in ``overhead.py``; a round's is the
mean over ranks. Prints the median over rounds (target <= 1.02) and whether the per-rank loss
sequences are bit-identical.

``--strategy fsdp``: the runtime runs with ``dist.strategy=fsdp`` and the hand-written loop is
FSDP2 written by hand: ``torch.distributed.fsdp.fully_shard`` over a ``DeviceMesh`` made from its
own gloo group (``DeviceMesh.from_group(group, "cpu")``), applied to the modules that
``launcher.runtime.strategies.fsdp.shard_units(model, ())`` picks (the runtime's default policy,
called here only to *choose* the same modules: every module with children holding >= 100k
parameters, innermost first), then to the root, with FSDP2's defaults (``reshard_after_forward``
True, no mixed precision, no offload: what the runtime passes for fp32), and SGD created after
sharding. The benchmark MLP is a flat ``Sequential`` (no module below the root has children, so
that policy would shard only the root); for FSDP both sides train the same layers grouped in
blocks, ``Sequential(Linear, ReLU)`` each (:func:`blocked_mlp`; the same parameters, initial
weights and arithmetic): with the defaults (64-512x3-10) the two 512x512 blocks (263k
parameters each) are units of their own, the first block (33k) and the head stay with the root.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common, table  # noqa: E402
from benchmarks.mlp_recipe import runtime_overrides  # noqa: E402

TARGET = 1.02
SEED = 0
SPEC = {"ddp": "benchmarks.common:BenchRecipe", "fsdp": "benchmarks.ddp_overhead:BlockedBenchRecipe"}


def blocked_mlp(features: int, hidden: int, depth: int, classes: int):
    """The benchmark MLP (``common.make_model``) with each ``Linear, ReLU`` pair in a block of its
    own: the same layers, created in the same order (the same initial weights from a seed), so
    that FSDP's default policy has modules with children to shard."""
    import torch

    flat = list(common.make_model(features, hidden, depth, classes))
    blocks = [torch.nn.Sequential(flat[i], flat[i + 1]) for i in range(0, len(flat) - 1, 2)]
    return torch.nn.Sequential(*blocks, flat[-1])


class BlockedBenchRecipe(common.BenchRecipe):
    """The bench recipe on :func:`blocked_mlp` (``--strategy fsdp``)."""

    def build_model(self):
        m, d = self.cfg.model, self.cfg.data
        return blocked_mlp(d.features, m.hidden, m.depth, d.classes)


# --------------------------------------------------------------------------- inside torchrun
def vanilla_setup(args):
    """Model and data of the hand-written loop, built before the threads start (the two loops
    share the process's global RNG; the same seed gives the same initial weights). The
    optimizer is made in the loop's thread, after the model is wrapped (FSDP2 replaces the
    parameters by sharded ones)."""
    common.seed_all(SEED)
    build = blocked_mlp if args.strategy == "fsdp" else common.make_model
    model = build(args.features, args.hidden, args.depth, 10)
    data = common.make_data(args.size, args.features, 10)
    return model, data


def wrap_by_hand(args, model, group, info: dict):
    """DDP, or FSDP2 by hand: ``fully_shard`` on the modules the runtime's default policy picks
    (innermost first), then on the root, over a mesh of this loop's own group."""
    import torch

    if args.strategy == "ddp":
        return torch.nn.parallel.DistributedDataParallel(model, process_group=group)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    from launcher.runtime.strategies.fsdp import shard_units

    mesh = DeviceMesh.from_group(group, "cpu")
    units = shard_units(model, ())  # (only to choose the modules: the sharding is done here)
    names = {id(m): n for n, m in model.named_modules()}
    info["units"] = [names[id(u)] for u in units]
    for unit in units:
        fully_shard(unit, mesh=mesh, reshard_after_forward=True)
    return fully_shard(model, mesh=mesh, reshard_after_forward=True)


def vanilla_loop(args, parts, lock, losses: list[float], info: dict) -> None:
    """A hand-written DDP (or FSDP2) loop, on a gloo group of its own: the runtime initialises
    the default group (in its thread) and the two loops never share a collective. The runtime
    tears the groups down only after the hand-written loop's last step (the turns are fixed)."""
    import torch
    import torch.distributed as dist

    from launcher.runtime.data import mix_seed

    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    try:
        deadline = time.monotonic() + 300
        while not dist.is_initialized():  # the runtime's DDP strategy creates the default group
            if time.monotonic() > deadline:
                raise TimeoutError("the runtime did not initialise torch.distributed")
            time.sleep(0.01)
        group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=300))
        model, data = parts
        model = wrap_by_hand(args, model, group, info)
        opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
        per_rank = -(-len(data) // world)
        n_batches = per_rank // args.batch_size
        for epoch in range(args.epochs):
            g = torch.Generator().manual_seed(mix_seed(SEED, epoch))
            order = torch.randperm(len(data), generator=g).tolist()
            order += order[: per_rank * world - len(order)]  # pad so every rank gets as many
            mine = order[rank::world]
            batches = [mine[b * args.batch_size : (b + 1) * args.batch_size] for b in range(n_batches)]
            loader = torch.utils.data.DataLoader(data, batch_sampler=batches, generator=torch.Generator())
            model.train()
            for x, y in loader:
                lock.tick("vanilla")
                loss = torch.nn.functional.cross_entropy(model(x), y)
                losses.append(loss.item())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        lock.tick("vanilla")
    finally:
        lock.finish("vanilla")


def runtime_run(run_dir: str, lock) -> None:
    import torch

    from launcher.runtime.worker import main as worker_main

    torch.set_num_threads(1)
    try:
        code = worker_main(run_dir)
        assert code == 0, f"runtime exited {code}"
        lock.tick("runtime")
    finally:
        lock.finish("runtime")


def worker(args) -> None:
    import torch

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    common.pin_to_one_cpu(rank)  # before the threads start: both loops of a rank share its CPU
    order = ("runtime", "vanilla") if args.runtime_first else ("vanilla", "runtime")
    lock = common.Lockstep(*order)
    parts = vanilla_setup(args)
    vanilla_losses: list[float] = []
    info: dict = {}
    common.LOSSES.clear()
    common.ON_STEP[0] = lambda: lock.tick("runtime")
    threads = [
        threading.Thread(target=vanilla_loop, args=(args, parts, lock, vanilla_losses, info)),
        threading.Thread(target=runtime_run, args=(args.run_dir, lock)),
    ]
    for t in threads[::-1] if args.runtime_first else threads:
        t.start()
    for t in threads:
        t.join()
    result = {
        "rank": rank,
        "vanilla": lock.intervals["vanilla"],
        "runtime": lock.intervals["runtime"],
        "cpu_vanilla": lock.cpu["vanilla"],  # each step's CPU time of its thread (no waiting in it)
        "cpu_runtime": lock.cpu["runtime"],
        "identical": vanilla_losses == common.LOSSES,
        "steps": len(vanilla_losses),
        "units": info.get("units"),
    }
    if not result["identical"]:  # where the two loss sequences part (for the report)
        pairs = list(zip(vanilla_losses, common.LOSSES, strict=False))
        result["first_difference"] = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
        result["lengths"] = [len(vanilla_losses), len(common.LOSSES)]
        result["max_abs_difference"] = max((abs(a - b) for a, b in pairs), default=0.0)
    Path(args.out, f"rank-{rank}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- the driver
def write_config(args, run_dir: Path) -> None:
    from launcher import config as cfgmod
    from launcher.recipe_loader import load_recipe
    from launcher.rundir import write_atomic

    overrides = [
        *runtime_overrides(SPEC[args.strategy], SEED, args),
        ("dist.procs", str(args.procs)),
        ("dist.device", "cpu"),
        ("dist.strategy", args.strategy),
    ]
    cfg = cfgmod.resolve(load_recipe(SPEC[args.strategy]), [], overrides)
    run_dir.mkdir(parents=True)
    write_atomic(run_dir / "config.yaml", cfgmod.to_yaml(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="what both sides run (default: ddp)")
    ap.add_argument("--rounds", type=int, default=4, help="torchrun jobs, one lock-step race each (leads alternate)")
    ap.add_argument("--epochs", type=int, default=2, help="per round")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--json", help="write the result rows here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runtime-first", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    t0 = time.perf_counter()
    ratios, cpu_ratios, costs, identical, steps, units = [], [], [], True, 0, None
    for r in range(args.rounds):
        results = one_job(args, runtime_first=r % 2 == 1)  # the leader alternates
        # each rank: the median of its paired step ratios (common.paired_ratio); a round: the mean over ranks
        per_rank = [common.paired_ratio(x["runtime"], x["vanilla"]) for x in results]
        ratios.append(sum(per_rank) / len(per_rank))
        cpu = [common.paired_ratio(x["cpu_runtime"], x["cpu_vanilla"]) for x in results]
        cpu_ratios.append(sum(cpu) / len(cpu))
        for x in results:  # (for the FSDP diagnostic below: the hand-written step, what ours adds to it)
            costs.append(
                (
                    median(x["vanilla"]),
                    common.paired_cost(x["runtime"], x["vanilla"]),
                    median(x["cpu_vanilla"]),
                    common.paired_cost(x["cpu_runtime"], x["cpu_vanilla"]),
                )
            )
        same = all(x["identical"] for x in results)
        identical &= same
        steps, units = results[0]["steps"], results[0].get("units")
        shown = ", ".join(f"{q:.4f}" for q in per_rank)
        print(f"round {r + 1}: ratio per rank {shown}; losses bit-identical on every rank: {same}")
        for x in results:
            if not x["identical"]:
                print(
                    f"  rank {x['rank']}: loss sequences (hand-written, runtime) of lengths {x['lengths']} "
                    f"first differ at step {x['first_difference']}, by up to {x['max_abs_difference']:.3g}"
                )
    ratio = median(ratios)
    label = args.strategy.upper()
    model = f"MLP {args.features}-{args.hidden}x{args.depth}-10" + (" in blocks" if args.strategy == "fsdp" else "")
    print(
        f"model: {model}, batch {args.batch_size} per rank, {args.procs} ranks (gloo), "
        f"{steps} steps per rank and round, lock-step, {time.perf_counter() - t0:.0f} s"
    )
    if args.strategy == "fsdp":
        inner = ", ".join(units or []) or "none: only the root is sharded"
        print(f"FSDP units (the default policy, both sides): {inner}; then the root")
    print(f"step-time ratio (runtime / vanilla), median of {args.rounds} rounds: {ratio:.4f}   (target <= {TARGET})")
    print(f"per-rank loss sequences bit-identical: {identical}")
    note = f"lock-step in torchrun jobs, median of {args.rounds} rounds x {steps} steps"
    rows = [
        table.Row(f"loop overhead, {label} {args.procs} procs (step-time ratio)", ratio, "x", "<=", TARGET, note),
        table.Row(f"loop overhead, {label}: losses bit-identical", identical, "", "==", True, "every rank and round"),
    ]
    if args.strategy == "fsdp":  # (a diagnostic: FSDP's many collectives per step make the wall-time ratio noisy)
        cpu_ratio = median(cpu_ratios)
        shown = ", ".join(f"{q:.4f}" for q in cpu_ratios)
        print(f"CPU-time ratio (each step's own thread CPU time, no waits), per round {shown}; median {cpu_ratio:.4f}")
        wall, added, busy, added_cpu = (median(c[i] for c in costs) * 1e6 for i in range(4))
        print(
            f"hand-written step (median over ranks and rounds): {wall:.0f} us wall, {busy:.0f} us CPU; "
            f"ours adds {added:.0f} us wall, {added_cpu:.0f} us CPU per step (paired medians)"
        )
        rows.append(table.Row("loop overhead, FSDP: CPU-time ratio (no waits)", cpu_ratio, "x", None, None, note))
    table.write_rows(args.json, rows)


def one_job(args, runtime_first: bool) -> list[dict]:
    """One torchrun job (one lock-step race per rank); the per-rank results."""
    work = Path(tempfile.mkdtemp(prefix=f"bench-{args.strategy}-"))
    run_dir = work / "run"
    write_config(args, run_dir)
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.procs}",
        __file__, "--worker", "--run-dir", str(run_dir), "--out", str(work), *sys.argv[1:],
        *(["--runtime-first"] if runtime_first else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun exited {proc.returncode}; rank logs under {run_dir / 'logs'}")
    results = [json.loads((work / f"rank-{r}.json").read_text()) for r in range(args.procs)]
    shutil.rmtree(work, ignore_errors=True)
    return results


if __name__ == "__main__":
    main()
