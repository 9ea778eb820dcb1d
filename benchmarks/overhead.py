"""Loop overhead: our runtime vs. a hand-written PyTorch loop, side by side in one process.

    .venv/bin/python benchmarks/overhead.py [--rounds 12] [--epochs 2] [--hidden 512] [--threads 1]

Both train the same MLP on the same data from the same seed, in one CPU process, each in its
own thread. They run in lock-step -- one step of the hand-written loop, one step of the runtime,
and so on, swapping who leads every few steps -- so the noise of a shared machine hits both
alike; each side's step time excludes waiting for the other. The process is pinned to one CPU
(both threads meet the same interference). The bench recipe does the same per-step work as the
hand-written loop (one ``loss.item()``), so the difference is the runtime's own.

A round is one such race from fresh models. Its ratio is the median over steps of (our step i) /
(the hand-written loop's step i): neighbours in time, so the machine's drift within a round
cancels. Rounds still differ a little either way (memory layout of fresh models), and which
loop leads alternates between rounds (the leader runs a little slower in an A/A test), so the
result is the median of the rounds' ratios (target <= 1.01), with the runtime's added time per
step (median of the paired differences), and whether the loss sequences were bit-identical in
every round.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common, table  # noqa: E402
from benchmarks.mlp_recipe import runtime_overrides  # noqa: E402
from launcher import config as cfgmod  # noqa: E402
from launcher.recipe_loader import load_recipe  # noqa: E402
from launcher.rundir import RunDir, write_atomic  # noqa: E402
from launcher.runtime.data import mix_seed  # noqa: E402

SEED = 0
SPEC = "benchmarks.common:BenchRecipe"
TARGET = 1.01


def vanilla_setup(args):
    """What an engineer writes by hand: seed, model, SGD (built before the race starts)."""
    common.seed_all(SEED)
    model = common.make_model(args.features, args.hidden, args.depth, 10)
    data = common.make_data(args.size, args.features, 10)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    return model, data, opt


def vanilla_loop(args, model, data, opt, lock: common.Lockstep, losses: list[float]) -> None:
    torch.set_num_threads(args.threads)  # OpenMP thread counts are per thread: set it here too
    try:
        n_batches = len(data) // args.batch_size
        for epoch in range(args.epochs):
            # the same shuffled order as the runtime's sampler (seeded by (seed, epoch))
            g = torch.Generator().manual_seed(mix_seed(SEED, epoch))
            perm = torch.randperm(len(data), generator=g).tolist()
            batches = [perm[b * args.batch_size : (b + 1) * args.batch_size] for b in range(n_batches)]
            # own generator: creating the iterator must not draw from the global RNG
            loader = torch.utils.data.DataLoader(data, batch_sampler=batches, generator=torch.Generator())
            model.train()
            for x, y in loader:
                lock.tick("vanilla")
                loss = torch.nn.functional.cross_entropy(model(x), y)
                losses.append(loss.item())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
        lock.tick("vanilla")  # closes the last interval
    finally:
        lock.finish("vanilla")


def runtime_run(args, workdir: Path, lock: common.Lockstep) -> None:
    from launcher.runtime.worker import main as worker_main

    torch.set_num_threads(args.threads)
    cfg = cfgmod.resolve(load_recipe(SPEC), [], runtime_overrides(SPEC, SEED, args))
    run_dir = RunDir(Path(tempfile.mkdtemp(dir=workdir)))
    write_atomic(run_dir.config, cfgmod.to_yaml(cfg))
    try:
        code = worker_main(str(run_dir.path))
        assert code == 0, f"runtime exited {code}"
        lock.tick("runtime")  # closes the last interval (includes the final eval/checkpoint: an outlier)
    finally:
        lock.finish("runtime")


def one_round(args, work: Path, runtime_first: bool) -> tuple[list[float], list[float], bool]:
    """One lock-step race from fresh models: (vanilla step times, runtime step times, losses equal).
    ``runtime_first``: the runtime's thread starts first and leads (rounds alternate: whichever
    thread leads and starts first runs a little slower, an A/A test shows)."""
    order = ("runtime", "vanilla") if runtime_first else ("vanilla", "runtime")
    lock = common.Lockstep(*order)
    vanilla_losses: list[float] = []
    model, data, opt = vanilla_setup(args)
    common.LOSSES.clear()
    common.ON_STEP[0] = lambda: lock.tick("runtime")
    # Both loops run in worker threads (symmetric: same allocator arenas, same thread settings).
    threads = [
        threading.Thread(target=vanilla_loop, args=(args, model, data, opt, lock, vanilla_losses)),
        threading.Thread(target=runtime_run, args=(args, work, lock)),
    ]
    for t in threads[::-1] if runtime_first else threads:
        t.start()
    for t in threads:
        t.join()
    common.ON_STEP[0] = lambda: None
    identical = vanilla_losses == common.LOSSES and len(vanilla_losses) > 0
    return lock.intervals["vanilla"], lock.intervals["runtime"], identical


def race(args, rounds: int, work: Path) -> tuple[float, float, bool, int]:
    """``rounds`` lock-step races: (median ratio, median added seconds per step, losses
    bit-identical in every round, steps per round)."""
    ratios, costs, identical, steps = [], [], True, 0
    for r in range(rounds):
        v, q, same = one_round(args, work, runtime_first=r % 2 == 1)
        ratios.append(common.paired_ratio(q, v))
        costs.append(common.paired_cost(q, v))
        identical &= same
        steps = len(v)
        print(
            f"round {r + 1}: median step vanilla {common.median(v) * 1e3:.3f} ms, runtime "
            f"{common.median(q) * 1e3:.3f} ms; paired: ratio {ratios[-1]:.4f}, runtime adds "
            f"{costs[-1] * 1e6:.0f} us per step; losses bit-identical: {same}"
        )
    return common.median(ratios), common.median(costs), identical, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12, help="lock-step races from fresh models (even: leads alternate)")
    ap.add_argument("--epochs", type=int, default=2, help="per round")
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--no-pin", action="store_true", help="leave the threads to the scheduler")
    ap.add_argument("--probe-rounds", type=int, default=8, help="races of the probe (0: skip it)")
    ap.add_argument("--json", help="write the result rows here")
    args = ap.parse_args()
    cpu = common.pin_to_one_cpu() if not args.no_pin else None
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    ratio, cost, identical, steps = race(args, args.rounds, work)
    print(
        f"model: MLP {args.features}-{args.hidden}x{args.depth}-10, batch {args.batch_size}, {steps} steps "
        f"per round, {args.threads} thread(s), {'unpinned' if cpu is None else f'on CPU {cpu}'}, lock-step"
    )
    print(f"step-time ratio (runtime / vanilla), median of {args.rounds} rounds: {ratio:.4f}   (target <= {TARGET})")
    print(f"time the runtime adds per step, median of {args.rounds} rounds: {cost * 1e6:.0f} us")
    note = f"lock-step, 1 process, median of {args.rounds} rounds x {steps} steps"
    rows = [
        table.Row("loop overhead, 1 CPU process (step-time ratio)", ratio, "x", "<=", TARGET, note),
        table.Row("loop overhead, 1 process: time added per step", cost * 1e6, "us", note=note),
    ]
    if args.probe_rounds:
        # The probe: a model so small that the runtime's own time per step stands out of the
        # noise of its short steps; that time is the same per step whatever the model.
        probe = argparse.Namespace(**{**vars(args), "features": 8, "hidden": 8, "depth": 1, "epochs": 8})
        print(f"probe: MLP 8-8x1-10, {probe.epochs} epochs per round")
        _, probe_cost, same, probe_steps = race(probe, args.probe_rounds, work)
        identical &= same
        print(f"probe: time the runtime adds per step, median of {args.probe_rounds} rounds: {probe_cost * 1e6:.0f} us")
        note = f"MLP 8-8-10 (~1 ms steps), median of {args.probe_rounds} rounds x {probe_steps} steps"
        rows.append(
            table.Row("loop overhead, 1 process: time added per step (probe)", probe_cost * 1e6, "us", note=note)
        )
    shutil.rmtree(work, ignore_errors=True)
    print(f"loss sequences bit-identical in every round: {identical}")
    rows.append(table.Row("loop overhead, 1 process: losses bit-identical", identical, "", "==", True, "every round"))
    table.write_rows(args.json, rows)


if __name__ == "__main__":
    main()
