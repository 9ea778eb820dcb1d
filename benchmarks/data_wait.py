"""Data-pipeline share of the step time on the vision recipe, for several ``data.num_workers``.

    .venv/bin/python benchmarks/data_wait.py [--workers 0 1 2] [--repeats 2] [--steps 10]

Runs ``launch recipe=resnet_finetune`` (ResNet-18 on the bundled digits, the README's demo) for a
fixed number of steps with each ``data.num_workers``, in turn, round after round, and reads the
runtime's own split of the step time from ``summary.json`` (``totals``: ``time/data_wait_frac``,
the share of training time spent waiting for the data loader, and ``samples_per_sec``). The
tuned setting is the one with the highest throughput; target: its data-wait share under 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import table  # noqa: E402

TARGET_PCT = 5.0


def one_run(work: Path, workers: int, steps: int, tag: str, extra: list[str]) -> dict:
    out = work / tag
    argv = [
        sys.executable, "-m", "launcher", "recipe=resnet_finetune", f"data.num_workers={workers}",
        f"train.max_steps={steps}", "train.log_every=5", "data.val_fraction=0", "log.quiet=true",
        f"run.output_dir={out}", *extra,
    ]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"num_workers={workers}: exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    summary = json.loads(next(out.glob("*/*/summary.json")).read_text())
    return summary["totals"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--json", help="write the result rows here")
    ap.add_argument("extra", nargs="*", help="more key=value for launch (e.g. model.arch=resnet34)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-data-wait-"))
    frac: dict[int, list[float]] = {w: [] for w in args.workers}
    rate: dict[int, list[float]] = {w: [] for w in args.workers}
    try:
        for r in range(args.repeats):
            for w in args.workers if r % 2 == 0 else reversed(args.workers):
                totals = one_run(work, w, args.steps, f"r{r}-w{w}", args.extra)
                frac[w].append(100 * totals["time/data_wait_frac"])
                rate[w].append(totals["samples_per_sec"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for w in args.workers:
        print(f"num_workers={w}: data wait {median(frac[w]):5.1f} % of step time, {median(rate[w]):7.1f} samples/s")
    tuned = max(args.workers, key=lambda w: median(rate[w]))
    print(f"tuned (highest throughput): num_workers={tuned}, data wait {median(frac[tuned]):.1f} % (target < 5 %)")
    note = f"resnet_finetune digits, {args.steps} steps, median of {args.repeats}"
    rows = [
        table.Row(f"data wait, resnet_finetune, num_workers={w}", median(frac[w]), "%", note=note) for w in args.workers
    ]
    rows.append(
        table.Row(
            f"data wait, resnet_finetune, tuned (num_workers={tuned})", median(frac[tuned]), "%", "<", TARGET_PCT, note
        )
    )
    table.write_rows(args.json, rows)


if __name__ == "__main__":
    main()
