"""GPU throughput profile: ResNet-50 training images/s and MFU, our runtime vs. a hand-tuned loop.

    python benchmarks/gpu_profile.py                      (one CUDA GPU)
    python benchmarks/gpu_profile.py --modes fp32 bf16 --batch-size 128 --steps 100
    python benchmarks/gpu_profile.py --peak-bf16 989 --peak-tf32 495   (a GPU not in the table)

Modes (each a full training step: forward, backward, SGD with momentum, at 224x224):
  fp32          fp32 weights and activations (cuDNN runs fp32 convolutions in TF32 by default)
  bf16          bf16-mixed: autocast to bfloat16, fp32 weights
  bf16-cl       bf16-mixed + channels_last (model and input)
  bf16-cl-compile   bf16-mixed + channels_last + torch.compile

For every mode, the hand-tuned loop and our runtime (`launch`'s worker with ``train.precision``,
``model.channels_last``, ``train.compile``) train the same model on the same synthetic uint8
images held in memory (pinned, loader workers, non-blocking copies, normalised on the GPU), each
in a fresh process, in turn (the order flips every repeat). The hand-tuned loop: cudnn.benchmark,
zero_grad(set_to_none), no host sync in the step, torch.compile when the mode says so. Throughput
is measured between two CUDA synchronisations after ``--warmup`` steps. MFU = images/s x
training FLOPs per image (counted with torch.utils.flop_counter on the meta device: forward +
backward convolutions and matmuls) / the GPU's dense peak (bf16 for bf16 modes, TF32 for fp32).
Without a CUDA GPU it says so and exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import table  # noqa: E402

MODES = {  # name -> (train.precision, channels_last, compile)
    "fp32": ("fp32", False, False),
    "bf16": ("bf16-mixed", False, False),
    "bf16-cl": ("bf16-mixed", True, False),
    "bf16-cl-compile": ("bf16-mixed", True, True),
}

# Dense (no sparsity) peak TFLOPS per GPU from the vendors' data sheets: (bf16, tf32).
# Matched against torch.cuda.get_device_name() in order (so "A100" before "A10", "L40S" before "L4").
PEAK_TFLOPS = [
    ("H200", (989.4, 494.7)),
    ("H100 PCIe", (756.0, 378.0)),
    ("H100 NVL", (835.0, 417.5)),
    ("H100", (989.4, 494.7)),  # SXM
    ("A100", (312.0, 156.0)),
    ("L40S", (362.1, 183.0)),
    ("L4", (121.0, 60.0)),
    ("A10", (125.0, 62.5)),
    ("RTX 4090", (165.2, 82.6)),
    ("RTX 3090", (71.0, 35.6)),
]


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The dense peak for ``precision`` ('bf16-mixed' -> bf16, else TF32), or None if unknown."""
    for key, (bf16, tf32) in PEAK_TFLOPS:
        if key.lower() in device_name.lower():
            return bf16 if precision.startswith("bf16") else tf32
    return None


def mfu(images_per_sec: float, flops_per_image: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved model FLOPs/s over the peak (TFLOPS)."""
    if not peak:
        return None
    return images_per_sec * flops_per_image / (peak * 1e12)


def train_flops_per_sample(build_model, input_shape: tuple[int, ...], num_classes: int) -> float:
    """FLOPs of one training step per sample (forward + backward; convolutions and matmuls),
    counted on the meta device (shapes only: instant, no GPU needed)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    batch = 2  # per-sample FLOPs are linear in the batch; 2 avoids batch-1 special cases
    with torch.device("meta"):
        model = build_model()
        x = torch.randn(batch, *input_shape)
        y = torch.randint(0, num_classes, (batch,))
    counter = FlopCounterMode(display=False)
    with counter:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
    return counter.get_total_flops() / batch


def resnet_flops(arch: str, image_size: int, classes: int) -> float:
    import torchvision

    def build():
        return getattr(torchvision.models, arch)(weights=None, num_classes=classes)

    return train_flops_per_sample(build, (3, image_size, image_size), classes)


# --------------------------------------------------------------------------- one measurement
class Timer:
    """Called at the start of every step: synchronises and reads the clock at two steps only."""

    def __init__(self, device, start: int, stop: int) -> None:
        self.device, self.start, self.stop = device, start, stop
        self.i, self.t0, self.t1 = 0, None, None

    def __call__(self, *_) -> None:
        import torch

        if self.i in (self.start, self.stop):
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            now = time.perf_counter()
            if self.i == self.start:
                self.t0 = now
            else:
                self.t1 = now
        self.i += 1

    def seconds(self) -> float:
        if self.t0 is None or self.t1 is None:
            raise RuntimeError("the run ended before the timed steps")
        return self.t1 - self.t0


def vanilla(args, mode: str) -> float:
    """The hand-tuned loop; seconds for args.steps timed steps."""
    import torch
    import torchvision

    from benchmarks.image_recipe import prepare, synthetic_images

    precision, channels_last, compiled = MODES[mode]
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(weights=None, num_classes=args.classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step_model = torch.compile(model) if compiled else model
    data = synthetic_images(args.data_size, args.image_size, args.classes)
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.num_workers > 0,
    )
    timer = Timer(device, args.warmup, args.warmup + args.steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    total = args.warmup + args.steps + 1
    model.train()
    while timer.i < total:
        for x, y in loader:
            if timer.i >= total:
                break
            timer()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss = torch.nn.functional.cross_entropy(step_model(prepare(x, channels_last)), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return timer.seconds()


def runtime(args, mode: str) -> float:
    """Our runtime (the worker `launch` runs in-process); seconds for args.steps timed steps."""
    import torch

    from benchmarks import image_recipe
    from launcher import config as cfgmod
    from launcher.recipe_loader import load_recipe
    from launcher.rundir import RunDir, write_atomic
    from launcher.runtime.worker import main as worker_main

    precision, channels_last, compiled = MODES[mode]
    spec = "benchmarks.image_recipe:ImageBench"
    overrides = [
        ("recipe", spec),
        ("model.arch", args.arch),
        ("model.channels_last", str(channels_last).lower()),
        ("data.size", str(args.data_size)),
        ("data.image_size", str(args.image_size)),
        ("data.classes", str(args.classes)),
        ("data.num_workers", str(args.num_workers)),
        ("train.batch_size", str(args.batch_size)),
        ("train.epochs", "1000"),
        ("train.max_steps", str(args.warmup + args.steps + 1)),
        ("train.lr", "0.1"),
        ("train.momentum", "0.9"),
        ("train.precision", precision),
        ("train.compile", str(compiled).lower()),
        ("train.log_every", "1000"),
        ("dist.device", args.device),
        ("log.backends", "[jsonl]"),
        ("log.quiet", "true"),
    ]
    cfg = cfgmod.resolve(load_recipe(spec), [], overrides)
    with tempfile.TemporaryDirectory(prefix="gpu-profile-") as tmp:
        rd = RunDir(Path(tmp) / "run")
        rd.path.mkdir(parents=True)
        write_atomic(rd.config, cfgmod.to_yaml(cfg))
        timer = Timer(torch.device(args.device), args.warmup, args.warmup + args.steps)
        image_recipe.HOOK[0] = timer
        try:
            code = worker_main(str(rd.path))
        finally:
            image_recipe.HOOK[0] = lambda model: None
    if code != 0:
        raise RuntimeError(f"the runtime exited {code}")
    return timer.seconds()


def measure(args, side: str, mode: str) -> float:
    """Images per second of one side in one mode (in this process)."""
    seconds = (vanilla if side == "vanilla" else runtime)(args, mode)
    return args.steps * args.batch_size / seconds


# --------------------------------------------------------------------------- the driver
def device_name(device: str) -> str:
    import torch

    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100, help="timed steps")
    ap.add_argument("--warmup", type=int, default=30, help="steps before timing (cuDNN autotuning, compile)")
    ap.add_argument("--data-size", type=int, default=1024, help="synthetic images in memory")
    ap.add_argument("--num-workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N (cpu: a smoke test only)")
    ap.add_argument("--peak-bf16", type=float, help="dense bf16 peak TFLOPS (overrides the table)")
    ap.add_argument("--peak-tf32", type=float, help="dense TF32 peak TFLOPS (overrides the table)")
    ap.add_argument("--in-process", action="store_true", help="measure in this process (default: a fresh one each)")
    ap.add_argument("--json", help="write the result rows here")
    ap.add_argument("--one", nargs=3, metavar=("SIDE", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "gpu_profile: no CUDA GPU here (torch.cuda.is_available() is False); run it on a machine with "
            "an NVIDIA GPU: python benchmarks/gpu_profile.py",
            file=sys.stderr,
        )
        sys.exit(2)
    if args.one:
        side, mode, out = args.one
        Path(out).write_text(json.dumps(measure(args, side, mode)))
        return

    name = device_name(args.device)
    flops = resnet_flops(args.arch, args.image_size, args.classes)
    print(
        f"{name}: {args.arch} {args.image_size}x{args.image_size}, batch {args.batch_size}, "
        f"{flops / 1e9:.1f} GFLOPs per image per training step, {args.steps} timed steps after {args.warmup}"
    )
    rates: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for mode in args.modes:
                for side in ("vanilla", "runtime") if r % 2 == 0 else ("runtime", "vanilla"):
                    if args.in_process:
                        rate = measure(args, side, mode)
                    else:
                        out = Path(tmp, f"{side}-{mode}-{r}.json")
                        argv = [sys.executable, __file__, *sys.argv[1:], "--one", side, mode, str(out)]
                        subprocess.run(argv, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
                        rate = json.loads(out.read_text())
                    rates.setdefault((side, mode), []).append(rate)
                    print(f"  {mode:<16} {side:<8} {rate:9.1f} images/s", flush=True)

    rows = []
    header = (
        f"{'mode':<16} {'vanilla img/s':>14} {'runtime img/s':>14} {'ratio':>7} {'MFU vanilla':>12} {'MFU runtime':>12}"
    )
    print(header)
    for mode in args.modes:
        v = sorted(rates[("vanilla", mode)])[len(rates[("vanilla", mode)]) // 2]
        q = sorted(rates[("runtime", mode)])[len(rates[("runtime", mode)]) // 2]
        precision = MODES[mode][0]
        override = args.peak_bf16 if precision.startswith("bf16") else args.peak_tf32
        peak = override or peak_tflops(name, precision)
        mv, mq = mfu(v, flops, peak), mfu(q, flops, peak)
        shown = [f"{m * 100:11.1f}%" if m is not None else f"{'?':>12}" for m in (mv, mq)]
        print(f"{mode:<16} {v:14.1f} {q:14.1f} {q / v:7.3f} {shown[0]} {shown[1]}")
        note = f"{name}, batch {args.batch_size}" + (f", MFU {mq * 100:.1f} % (vanilla {mv * 100:.1f} %)" if mq else "")
        rows.append(table.Row(f"GPU {args.arch} {mode}: runtime images/s", q, "img/s", note=note))
        rows.append(table.Row(f"GPU {args.arch} {mode}: runtime / hand-tuned", q / v, "x", note=note))
    if peak_tflops(name, "bf16-mixed") is None and not (args.peak_bf16 or args.peak_tf32):
        print(f"(no peak FLOPS known for {name!r}: pass --peak-bf16 / --peak-tf32 for MFU)")
    table.write_rows(args.json, rows)


if __name__ == "__main__":
    main()
