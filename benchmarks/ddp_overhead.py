"""DDP loop overhead: our runtime vs. a hand-written DDP loop, lock-step inside torchrun jobs.

    .venv/bin/python benchmarks/ddp_overhead.py [--rounds 3] [--epochs 2] [--procs 2]

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

from benchmarks import table  # noqa: E402
from benchmarks.mlp_recipe import runtime_overrides  # noqa: E402

TARGET = 1.02
SEED = 0
SPEC = "benchmarks.common:BenchRecipe"


# --------------------------------------------------------------------------- inside torchrun
def vanilla_setup(args):
    """Model, data, optimizer of the hand-written loop, built before the threads start (the two
    loops share the process's global RNG; the same seed gives the same initial weights)."""
    import torch

    from benchmarks import common

    common.seed_all(SEED)
    model = common.make_model(args.features, args.hidden, args.depth, 10)
    data = common.make_data(args.size, args.features, 10)
    return model, data, torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)


def vanilla_loop(args, parts, lock, losses: list[float]) -> None:
    """A hand-written DDP loop, on a gloo group of its own: the runtime initialises the default
    group (in its thread) and the two loops never share a collective. The runtime tears the
    groups down only after the hand-written loop's last step (the turns are fixed)."""
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
        model, data, opt = parts
        model = torch.nn.parallel.DistributedDataParallel(model, process_group=group)
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

    from benchmarks import common

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    common.pin_to_one_cpu(rank)  # before the threads start: both loops of a rank share its CPU
    order = ("runtime", "vanilla") if args.runtime_first else ("vanilla", "runtime")
    lock = common.Lockstep(*order)
    parts = vanilla_setup(args)
    vanilla_losses: list[float] = []
    common.LOSSES.clear()
    common.ON_STEP[0] = lambda: lock.tick("runtime")
    threads = [
        threading.Thread(target=vanilla_loop, args=(args, parts, lock, vanilla_losses)),
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
        "identical": vanilla_losses == common.LOSSES,
        "steps": len(vanilla_losses),
    }
    Path(args.out, f"rank-{rank}.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- the driver
def write_config(args, run_dir: Path) -> None:
    from launcher import config as cfgmod
    from launcher.recipe_loader import load_recipe
    from launcher.rundir import write_atomic

    overrides = [
        *runtime_overrides(SPEC, SEED, args),
        ("dist.procs", str(args.procs)),
        ("dist.device", "cpu"),
        ("dist.strategy", "ddp"),
    ]
    cfg = cfgmod.resolve(load_recipe(SPEC), [], overrides)
    run_dir.mkdir(parents=True)
    write_atomic(run_dir / "config.yaml", cfgmod.to_yaml(cfg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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

    from benchmarks import common

    t0 = time.perf_counter()
    ratios, identical, steps = [], True, 0
    for r in range(args.rounds):
        results = one_job(args, runtime_first=r % 2 == 1)  # the leader alternates
        # each rank: the median of its paired step ratios (common.paired_ratio); a round: the mean over ranks
        per_rank = [common.paired_ratio(x["runtime"], x["vanilla"]) for x in results]
        ratios.append(sum(per_rank) / len(per_rank))
        same = all(x["identical"] for x in results)
        identical &= same
        steps = results[0]["steps"]
        shown = ", ".join(f"{q:.4f}" for q in per_rank)
        print(f"round {r + 1}: ratio per rank {shown}; losses bit-identical on every rank: {same}")
    ratio = median(ratios)
    print(
        f"model: MLP {args.features}-{args.hidden}x{args.depth}-10, batch {args.batch_size} per rank, "
        f"{args.procs} ranks (gloo), {steps} steps per rank and round, lock-step, {time.perf_counter() - t0:.0f} s"
    )
    print(f"step-time ratio (runtime / vanilla), median of {args.rounds} rounds: {ratio:.4f}   (target <= {TARGET})")
    print(f"per-rank loss sequences bit-identical: {identical}")
    note = f"lock-step in torchrun jobs, median of {args.rounds} rounds x {steps} steps"
    table.write_rows(
        args.json,
        [
            table.Row(f"loop overhead, DDP {args.procs} procs (step-time ratio)", ratio, "x", "<=", TARGET, note),
            table.Row("loop overhead, DDP: losses bit-identical", identical, "", "==", True, "every rank and round"),
        ],
    )


def one_job(args, runtime_first: bool) -> list[dict]:
    """One torchrun job (one lock-step race per rank); the per-rank results."""
    work = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
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
