"""train.compile: compile time and steady-state step time, compiled vs. eager, side by side.

    .venv/bin/python benchmarks/compile_speed.py [--epochs 2] [--mode default]

Two runs of our runtime in one process, one with ``train.compile=true`` (torch.compile, inductor
on the CPU here) and one without, train the same MLP on the same data in lock-step (one step
each in turn, as in ``benchmarks/overhead.py``). The compiled run's first step includes the
compilation of the forward and backward graphs: compile time = that step minus the compiled
run's median step (inductor's on-disk caches are off, so this is a first compile, as users
meet it; ``--warm-cache`` to allow them). Steady state: the ratio of the median step times, compiled / eager (below 1:
compile is faster). The losses are not bit-identical (inductor fuses and reorders floating-point
operations); the largest relative difference is printed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

if "--warm-cache" not in sys.argv:  # before torch is imported: time a first compile, as users see it
    os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import common, table  # noqa: E402
from launcher import config as cfgmod  # noqa: E402
from launcher.recipe_loader import load_recipe  # noqa: E402
from launcher.rundir import RunDir, write_atomic  # noqa: E402

SPEC = "benchmarks.common:BenchRecipe"


def run(args, work: Path, compiled: bool, lock: common.Lockstep) -> None:
    from launcher.runtime.worker import main as worker_main

    name = threading.current_thread().name
    torch.set_num_threads(args.threads)
    overrides = [
        ("recipe", SPEC),
        ("train.epochs", str(args.epochs)),
        ("train.batch_size", str(args.batch_size)),
        ("train.lr", "0.05"),
        ("train.log_every", "50"),
        ("train.compile", "true" if compiled else "false"),
        ("train.compile_mode", args.mode),
        ("model.hidden", str(args.hidden)),
        ("model.depth", str(args.depth)),
        ("log.backends", "[jsonl]"),
        ("log.quiet", "true"),
    ]
    cfg = cfgmod.resolve(load_recipe(SPEC), [], overrides)
    run_dir = RunDir(Path(tempfile.mkdtemp(dir=work)))
    write_atomic(run_dir.config, cfgmod.to_yaml(cfg))
    try:
        code = worker_main(str(run_dir.path))
        assert code == 0, f"{name} exited {code}"
        lock.tick(name)
    finally:
        lock.finish(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--mode", default="default", help="train.compile_mode")
    ap.add_argument("--warm-cache", action="store_true", help="let inductor reuse its on-disk caches")
    ap.add_argument("--json", help="write the result rows here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-compile-"))
    lock = common.Lockstep("eager", "compiled")
    order: list[str] = []  # whose step each entry of common.LOSSES is

    def on_step() -> None:
        me = threading.current_thread().name
        lock.tick(me)
        order.append(me)

    common.LOSSES.clear()
    common.ON_STEP[0] = on_step
    t0 = time.perf_counter()
    threads = [
        threading.Thread(target=run, args=(args, work, name == "compiled", lock), name=name)
        for name in ("eager", "compiled")
    ]
    threads[0].start()
    # The two runs share the process's global RNG: the compiled run builds its model (from the
    # same seed) only once the eager one has taken its first step and waits for its turn.
    while not lock.intervals["eager"] and threads[0].is_alive():
        time.sleep(0.01)
    threads[1].start()
    for t in threads:
        t.join()
    common.ON_STEP[0] = lambda: None
    wall = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)

    eager, comp = lock.intervals["eager"], lock.intervals["compiled"]
    if len(eager) != len(comp) or not eager:
        raise SystemExit("a run failed (see above)")
    # the first step of each includes warm-up; the compiled one also compiles
    me, mc = common.median(eager[1:]), common.median(comp[1:])
    compile_s = comp[0] - mc
    ratio = mc / me
    losses = {"eager": [], "compiled": []}
    for who, value in zip(order, common.LOSSES, strict=True):
        losses[who].append(value)
    rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["eager"], losses["compiled"], strict=True))
    print(
        f"model: MLP 64-{args.hidden}x{args.depth}-10, batch {args.batch_size}, {len(eager)} steps, "
        f"{args.threads} thread(s), torch.compile mode={args.mode}, {wall:.0f} s"
    )
    print(f"first step: eager {eager[0]:.2f} s, compiled {comp[0]:.2f} s -> compile time ~{compile_s:.1f} s")
    print(f"median step: eager {me * 1e3:.3f} ms, compiled {mc * 1e3:.3f} ms")
    print(f"steady-state step-time ratio (compiled / eager): {ratio:.3f}")
    print(f"largest relative loss difference: {rel:.2e}")
    note = f"lock-step, 1 process, {len(eager)} steps, CPU inductor"
    table.write_rows(
        args.json,
        [
            table.Row("train.compile: compile time (first step)", compile_s, "s", note=note),
            table.Row("train.compile: steady step time, compiled / eager", ratio, "x", note=note),
        ],
    )


if __name__ == "__main__":
    main()
