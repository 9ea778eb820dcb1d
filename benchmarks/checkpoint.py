"""Checkpoint stall: how long training waits for a save, for a ResNet-50-sized state; and what
the checksums of verified checkpoints cost, saving and loading.

    .venv/bin/python benchmarks/checkpoint.py [--repeats 5] [--dir /tmp]

Side by side, alternating, in one run:
  torch.save   plain ``torch.save({"model": ..., "optimizer": ...})`` (the baseline)
  sync         our atomic checkpoint (safetensors + state + RNG + fsync + rename + manifest)
  no-checksum  the same without the checksums (the marker holds the step only, as before them)
  async        ``checkpoint.async=true``: training stalls only for the copy to CPU memory
then the load of the newest sync checkpoint, verified and unverified, alternating.
Prints the median stall of each, the ratio async / sync (goal: at most 0.1), the ratios with /
without checksums, and the throughput of candidate checksums over the written model file.
"""

from __future__ import annotations

import argparse
import hashlib
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
from launcher.runtime.checkpoint import CheckpointManager, file_checksum  # noqa: E402


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
    modes = ("torch.save", "sync", "no-checksum", "async")
    stalls: dict[str, list[float]] = {name: [] for name in modes}
    totals: dict[str, list[float]] = {"async": []}
    loads: dict[str, list[float]] = {"verified": [], "unverified": []}
    # one manager per mode, as in a training run (the async one reuses its staging buffer);
    # keep_last is large so that deleting old checkpoints is not part of any stall
    managers = {}
    for name in modes[1:]:
        options = {"async_write": name == "async", "checksums": name != "no-checksum"}
        managers[name] = CheckpointManager(RunDir(work / name), 1000, 0, "val/loss", "min", **options)
    try:
        for r in range(args.repeats):
            step = r + 1
            for name in modes if r % 2 == 0 else modes[::-1]:
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
        newest = work / "sync" / "checkpoints" / f"step-{args.repeats}"
        for r in range(args.repeats):  # (the files are in the page cache, as right after a save)
            for name in ("verified", "unverified") if r % 2 == 0 else ("unverified", "verified"):
                t0 = time.perf_counter()
                CheckpointManager.load(newest, verify_files=name == "verified")
                loads[name].append(time.perf_counter() - t0)
        hashes = hash_speeds(newest / "model.safetensors")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"state: ResNet-50 + SGD momentum, {n_bytes / 2**20:.0f} MiB, {args.repeats} saves each (medians)")
    for name, xs in stalls.items():
        print(f"  stall {name:<11} median {median(xs) * 1e3:8.1f} ms")
    print(f"  async write finished after {median(totals['async']) * 1e3:.1f} ms (in the background)")
    for name, xs in loads.items():
        print(f"  load {name:<12} median {median(xs) * 1e3:8.1f} ms")
    ratio = median(stalls["async"]) / median(stalls["sync"])
    save_ratio = median(stalls["sync"]) / median(stalls["no-checksum"])
    load_ratio = median(loads["verified"]) / median(loads["unverified"])
    print(f"async stall / sync stall: {ratio:.3f}   (goal <= 0.1)")
    print(f"async stall / torch.save stall: {median(stalls['async']) / median(stalls['torch.save']):.3f}")
    print(f"sync save with checksums / without: {save_ratio:.3f}")
    print(f"load verified / unverified: {load_ratio:.3f}")
    print("checksum throughput over model.safetensors (read back from the page cache, best of 3):")
    for name, speed in hashes.items():
        print(f"  {name:<8} {speed / 2**20:8.0f} MiB/s")
    note = f"ResNet-50 + momentum ({n_bytes / 2**20:.0f} MiB), median of {args.repeats} saves"
    table.write_rows(
        args.json,
        [
            table.Row("checkpoint stall: async / sync", ratio, "x", "<=", 0.1, note),
            table.Row("checkpoint stall: async", median(stalls["async"]), "s", note="copy to a reused CPU buffer"),
            table.Row("checkpoint save: checksums / none", save_ratio, "x", note=f"{note}, sync"),
            table.Row(
                "checkpoint load: verified / unverified", load_ratio, "x", note=f"median of {args.repeats} loads"
            ),
        ],
    )


def hash_speeds(path: Path) -> dict[str, float]:
    """Bytes per second of each candidate checksum over ``path``, read in 4 MiB chunks."""
    size = path.stat().st_size

    def digest(make) -> None:
        h = make()
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)

    candidates = {
        "crc32": lambda: file_checksum(path),  # what checkpoints use
        "sha256": lambda: digest(hashlib.sha256),
        "blake2b": lambda: digest(hashlib.blake2b),
    }
    speeds = {}
    for name, run in candidates.items():
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            run()
            best = min(best, time.perf_counter() - t0)
        speeds[name] = size / best
    return speeds


if __name__ == "__main__":
    main()
