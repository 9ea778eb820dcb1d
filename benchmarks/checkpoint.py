"""Checkpoint stall: how long training waits for a save, for a ResNet-50-sized state.

    .venv/bin/python benchmarks/checkpoint.py [--repeats 3] [--dir /tmp]

Side by side, alternating, in one run:
  torch.save   plain ``torch.save({"model": ..., "optimizer": ...})`` (the baseline)
  sync         our atomic checkpoint (safetensors + state + RNG + fsync + rename + marker)
  async        ``checkpoint.async=true``: training stalls only for the copy to CPU memory
Prints the median stall of each and the ratio async / sync (goal: at most 0.1).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import table  # noqa: E402
from launcher.rundir import RunDir  # noqa: E402
from launcher.runtime import rng  # noqa: E402
from launcher.runtime.checkpoint import CheckpointManager  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write (default: a temporary directory)")
    ap.add_argument("--json", help="write the result rows here")
    args = ap.parse_args()

    model = torchvision.models.resnet50(weights=None)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()  # creates the momentum buffers: optimizer state as large as the model
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    n_bytes += sum(
        v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )

    work = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.dir))
    stalls: dict[str, list[float]] = {"torch.save": [], "sync": [], "async": []}
    totals: dict[str, list[float]] = {"async": []}
    # one manager per mode, as in a training run (the async one reuses its staging buffer);
    # keep_last is large so that deleting old checkpoints is not part of any stall
    managers = {
        name: CheckpointManager(RunDir(work / name), 1000, 0, "val/loss", "min", async_write=name == "async")
        for name in ("sync", "async")
    }
    try:
        for r in range(args.repeats):
            step = r + 1
            for name in ("torch.save", "sync", "async") if r % 2 == 0 else ("async", "sync", "torch.save"):
                if name == "torch.save":
                    target = work / name / f"step-{step}.pt"
                    target.parent.mkdir(exist_ok=True)
                    t0 = time.perf_counter()
                    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, target)
                    stalls[name].append(time.perf_counter() - t0)
                    continue
                manager = managers[name]
                t0 = time.perf_counter()
                manager.save(
                    step, model.state_dict(), {"optimizer": opt.state_dict()}, [rng.capture()], {"step": step}, "x: 1\n"
                )
                stalls[name].append(time.perf_counter() - t0)
                manager.wait()  # (training would go on here; we wait only to time the write)
                if name == "async":
                    totals["async"].append(time.perf_counter() - t0)
                assert (work / name / "checkpoints" / f"step-{step}" / "COMPLETE").is_file()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"state: ResNet-50 + SGD momentum, {n_bytes / 2**20:.0f} MiB, {args.repeats} saves each (medians)")
    for name, xs in stalls.items():
        print(f"  stall {name:<10} median {median(xs) * 1e3:8.1f} ms")
    print(f"  async write finished after {median(totals['async']) * 1e3:.1f} ms (in the background)")
    ratio = median(stalls["async"]) / median(stalls["sync"])
    print(f"async stall / sync stall: {ratio:.3f}   (goal <= 0.1)")
    print(f"async stall / torch.save stall: {median(stalls['async']) / median(stalls['torch.save']):.3f}")
    note = f"ResNet-50 + momentum ({n_bytes / 2**20:.0f} MiB), median of {args.repeats} saves"
    table.write_rows(
        args.json,
        [
            table.Row("checkpoint stall: async / sync", ratio, "x", "<=", 0.1, note),
            table.Row("checkpoint stall: async", median(stalls["async"]), "s", note="copy to a reused CPU buffer"),
        ],
    )


if __name__ == "__main__":
    main()
