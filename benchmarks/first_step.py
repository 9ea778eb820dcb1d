"""Time to the first training step: `launch` vs. a hand-written script doing the same.

    .venv/bin/python benchmarks/first_step.py [--repeats 7] [--no-ddp]

Two comparisons, one after the other; in each, the two commands run in turn, round after round
(the order flips every round, so drift of the machine's load cancels):
  single:  `launch recipe=benchmarks.mlp_recipe:Mlp`  vs  `python benchmarks/vanilla_train.py`
  2 procs: `launch ... --procs 2 --device cpu`        vs  `torchrun --standalone --nproc_per_node 2
                                                            benchmarks/vanilla_train.py`
Both sides train the same MLP on the same data; rank 0 writes ``time.time()`` to the file named by
``BENCH_FIRST_STEP_FILE`` when its second step starts (the first optimizer step is done). The
time to first step is that stamp minus the moment the command was started. Both sides get the
same environment; with 2 processes ``OMP_NUM_THREADS=1`` for both (what torchrun sets; `launch`
would set cores // procs, the same on 2 cores). Target: `launch` at most 0.5 s later, as the
median of the per-round differences. The project's modules are byte-compiled first
(``benchmarks.compile_project``), as in an installed package.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import compile_project, table  # noqa: E402

TARGET_S = 0.5
RECIPE = "benchmarks.mlp_recipe:Mlp"


def tool(name: str) -> list[str]:
    path = Path(sys.executable).with_name(name)
    if path.is_file():
        return [str(path)]
    return [sys.executable, "-m", {"launch": "launcher", "torchrun": "torch.distributed.run"}[name]]


def variants(work: Path, ddp: bool) -> dict[str, tuple[list[str], dict[str, str]]]:
    vanilla = str(ROOT / "benchmarks" / "vanilla_train.py")
    common = [f"recipe={RECIPE}", "train.max_steps=3", "log.quiet=true", "checkpoint.keep_last=1"]
    out = {
        "vanilla": ([sys.executable, vanilla], {}),
        "launch": ([*tool("launch"), *common], {}),
    }
    if ddp:
        procs = {"OMP_NUM_THREADS": "1"}
        out["torchrun vanilla"] = ([*tool("torchrun"), "--standalone", "--nproc_per_node", "2", vanilla], procs)
        out["launch --procs 2"] = ([*tool("launch"), *common, "--procs", "2", "--device", "cpu"], procs)
    return out


def time_to_first_step(argv: list[str], extra_env: dict[str, str], work: Path, rep: int, name: str) -> float:
    stamp = work / f"stamp-{rep}-{name.replace(' ', '_')}"
    out_dir = work / f"runs-{rep}-{name.replace(' ', '_')}"
    if argv[-1] != str(ROOT / "benchmarks" / "vanilla_train.py"):
        argv = [*argv, f"run.output_dir={out_dir}"]
    env = {**os.environ, **extra_env, "BENCH_FIRST_STEP_FILE": str(stamp), "WANDB_MODE": "disabled"}
    t0 = time.time()
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not stamp.is_file():
        raise SystemExit(f"{name}: exit {proc.returncode}, no stamp: {proc.stderr.strip()[-500:]}")
    return float(stamp.read_text()) - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-ddp", action="store_true", help="only the single-process pair")
    ap.add_argument("--json", help="write the result rows here")
    args = ap.parse_args()
    compile_project()
    work = Path(tempfile.mkdtemp(prefix="bench-first-step-"))
    runs = variants(work, ddp=not args.no_ddp)
    times: dict[str, list[float]] = {name: [] for name in runs}
    try:
        time_to_first_step(*runs["vanilla"], work, -1, "warm-up")  # OS file cache
        # one comparison after the other; within one, the pair's order flips every round
        for pair in (["vanilla", "launch"], ["torchrun vanilla", "launch --procs 2"]):
            for rep in range(args.repeats if pair[0] in runs else 0):
                for name in pair if rep % 2 == 0 else reversed(pair):
                    times[name].append(time_to_first_step(*runs[name], work, rep, name))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    for name, xs in times.items():
        print(f"{name:<18} time to first step: median {median(xs):.2f} s  (min {min(xs):.2f}, max {max(xs):.2f})")
    rows = []
    pairs = [("single process", "launch", "vanilla"), ("2 procs", "launch --procs 2", "torchrun vanilla")]
    for label, ours, base in pairs:
        if ours not in times:
            continue
        diff = median([a - b for a, b in zip(times[ours], times[base], strict=True)])
        print(f"{label}: launch - vanilla = {diff:+.2f} s (median of {args.repeats} paired rounds; target <= +0.5 s)")
        rows.append(
            table.Row(
                f"first step, {label}: launch minus {'python' if base == 'vanilla' else 'torchrun'} script",
                diff,
                "s",
                "<=",
                TARGET_S,
                f"median of {args.repeats} paired rounds (vanilla {median(times[base]):.1f} s)",
            )
        )
    table.write_rows(args.json, rows)


if __name__ == "__main__":
    main()
