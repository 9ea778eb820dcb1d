"""Run every CPU benchmark and print one table of results vs. targets (``make bench``).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only overhead ddp ...] [--markdown FILE]

Each benchmark runs in its own process (its own output is shown as it goes) and writes its
rows with ``--json``; the table at the end lists measured value, target and pass/fail. Speed
goals live here, not in the tests: the machines are shared and noisy, so every benchmark
compares side by side within one run. ``--quick`` runs fewer rounds (a smoke test, not a
measurement). The GPU profile is separate: ``make bench-gpu`` (benchmarks/gpu_profile.py).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import table  # noqa: E402

# name -> (script, full arguments, --quick arguments)
BENCHMARKS = {
    "overhead": ("overhead.py", [], ["--rounds", "1", "--epochs", "1", "--probe-rounds", "1"]),
    "ddp": ("ddp_overhead.py", [], ["--rounds", "1", "--epochs", "1"]),
    "fsdp": ("ddp_overhead.py", ["--strategy", "fsdp"], ["--strategy", "fsdp", "--rounds", "1", "--epochs", "1"]),
    "cli": ("cli_speed.py", [], ["--repeats", "3"]),
    "first_step": ("first_step.py", [], ["--repeats", "1"]),
    "data_wait": ("data_wait.py", [], ["--repeats", "1", "--steps", "10"]),
    "checkpoint": ("checkpoint.py", [], ["--repeats", "1"]),
    "dcp_stall": ("dcp_stall.py", [], ["--repeats", "1"]),
    "compile": ("compile_speed.py", [], ["--epochs", "1"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run only these")
    ap.add_argument("--quick", action="store_true", help="fewer rounds: checks that everything runs")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args()
    names = args.only or list(BENCHMARKS)
    rows: list[table.Row] = []
    failed: list[str] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "disabled"}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            script, full, quick = BENCHMARKS[name]
            out = Path(tmp, f"{name}.json")
            argv = [sys.executable, str(ROOT / "benchmarks" / script), *(quick if args.quick else full)]
            print(f"\n=== {name}: {' '.join(argv[1:])}", flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run([*argv, "--json", str(out)], cwd=ROOT, env=env)
            print(f"=== {name}: {time.perf_counter() - t0:.0f} s", flush=True)
            if proc.returncode != 0 or not out.is_file():
                failed.append(name)
                rows.append(table.Row(f"{name}: did not finish (exit {proc.returncode})", None, "", "==", True))
                continue
            rows.extend(table.read_rows(out))
    text = table.render(rows)
    print("\n" + text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    judged = [r for r in rows if r.passed is not None]
    print(
        f"\n{sum(bool(r.passed) for r in judged)} of {len(judged)} targets met" + (" (quick run)" if args.quick else "")
    )
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
