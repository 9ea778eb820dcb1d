"""CLI answer time: `launch --help`, `--list`, `--dry-run` (each a fresh interpreter, no torch).

    .venv/bin/python benchmarks/cli_speed.py [--repeats 11]

Runs the commands in turn, round after round (interleaved, so a busy moment of the machine hits
all of them), and prints each one's median wall time; target: under 0.3 s. For scale it also
times the interpreter alone (``python -c pass``) and ``import pydantic`` (the floor under
``--dry-run``, which must validate the config). The project's modules are byte-compiled first
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import compile_project, table  # noqa: E402

TARGET_S = 0.3


def launch_argv() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m launcher``."""
    script = Path(sys.executable).with_name("launch")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "launcher"]


def commands() -> dict[str, list[str]]:
    launch = launch_argv()
    return {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import pydantic'": [sys.executable, "-c", "import pydantic; pydantic.BaseModel"],
        "launch --help": [*launch, "--help"],
        "launch --list": [*launch, "--list"],
        "launch recipe=resnet_finetune --dry-run": [*launch, "recipe=resnet_finetune", "--dry-run"],
    }


def time_once(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--json", help="write the result rows here")
    args = ap.parse_args()
    compile_project()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cwd = Path(tempfile.mkdtemp(prefix="bench-cli-"))  # --dry-run writes nothing; checked below
    cmds = commands()
    times: dict[str, list[float]] = {name: [] for name in cmds}
    try:
        for argv in cmds.values():  # warm the OS file cache once
            time_once(argv, cwd, env)
        for _ in range(args.repeats):
            for name, argv in cmds.items():
                times[name].append(time_once(argv, cwd, env))
        assert not any(cwd.iterdir()), "a CLI command wrote files"
    finally:
        shutil.rmtree(cwd, ignore_errors=True)

    rows = []
    for name, xs in times.items():
        med = sorted(xs)[len(xs) // 2]
        reference = not name.startswith("launch")
        print(f"{name:<45} median {med * 1e3:6.0f} ms   min {min(xs) * 1e3:6.0f} ms")
        rows.append(
            table.Row(
                f"CLI: {name}" + (" (reference)" if reference else ""),
                med,
                "s",
                None if reference else "<",
                None if reference else TARGET_S,
                f"median of {args.repeats} fresh processes",
            )
        )
    table.write_rows(args.json, rows)


if __name__ == "__main__":
    main()
