"""What each strategy supports: one torch-free table the parent checks before anything starts.

Every "is this combination supported" question is answered here, once, with one line that names
the problem and the fix (``ConfigError`` -> exit 2). The workers trust the plan they are given
(``RUN_DIR/plan.json``) and do not check again. ``launcher/runtime/strategies/`` holds one
implementation per row; ``tests/test_fsdp.py`` checks that both name the same strategies.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.errors import ConfigError

ALL_PRECISIONS = frozenset({"fp32", "bf16-mixed", "fp16-mixed", "bf16-true"})
MIXED = frozenset({"fp32", "bf16-mixed", "fp16-mixed"})


@dataclass(frozen=True)
class Capability:
    launcher: str  # in-process | torchrun | accelerate (under --slurm: srun, where slurm is True)
    one_process: bool  # single, dp: one process (dp spreads it over the GPUs itself)
    devices: frozenset[str]  # explicit dist.device values it runs on ("auto" settles to one of them)
    precisions: frozenset[str]
    cpu_precisions: frozenset[str]  # on the CPU (engines that would silently ignore fp16 there refuse it)
    compile: bool  # train.compile
    async_checkpoint: bool  # checkpoint.async
    slurm: bool
    histograms: bool  # log.tensorboard.histograms (weights as plain tensors on every rank)


_ANY = frozenset({"cpu", "cuda", "mps"})
CAPABILITIES: dict[str, Capability] = {
    "single": Capability("in-process", True, _ANY, ALL_PRECISIONS, ALL_PRECISIONS, True, True, True, True),
    "dp": Capability("in-process", True, frozenset({"cuda"}), ALL_PRECISIONS, ALL_PRECISIONS, True, True, True, True),
    "ddp": Capability("torchrun", False, _ANY, ALL_PRECISIONS, ALL_PRECISIONS, True, True, True, True),
    # Accelerate and DeepSpeed own the mixed precision; on the CPU, Accelerate would silently ignore
    # fp16 and DeepSpeed refuses it
    "accelerate": Capability("accelerate", False, _ANY, MIXED, MIXED - {"fp16-mixed"}, True, True, False, True),
    # the engine writes its own state (no background copy); its compile path is not ours
    "deepspeed": Capability(
        "torchrun", False, frozenset({"cpu", "cuda"}), MIXED, MIXED - {"fp16-mixed"}, False, False, True, True
    ),
    # FSDP2: parameters are DTensor shards (no plain tensors for histograms); DCP saves in the background
    "fsdp": Capability("torchrun", False, frozenset({"cpu", "cuda"}), MIXED, MIXED, True, True, True, False),
}

# train.precision -> Accelerate's mixed_precision (the command line and the worker's Accelerator)
_ACCELERATE_PRECISION = {"fp32": "no", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}


def accelerate_precision(precision: str) -> str:
    return _ACCELERATE_PRECISION[precision]


def check(cfg, strategy: str, device: str, gpus: int | None) -> None:
    """Refuse a combination ``strategy`` cannot run. ``device`` may still be "auto" (then ``gpus``,
    the visible GPU count or None when unknown, tells whether it will be the CPU)."""
    cap = CAPABILITIES[strategy]
    flag = f"--strategy {strategy}"
    precision = cfg.train.precision
    if device != "auto" and device not in cap.devices:
        runs_on = "/".join(sorted(cap.devices))
        raise ConfigError(f"{flag} does not run on {device}; use --device {runs_on.replace('/', ' or ')}")
    if precision not in cap.precisions:
        allowed = ", ".join(sorted(cap.precisions))
        raise ConfigError(f"train.precision={precision} is not supported with {strategy}; use one of {allowed}")
    on_cpu = device == "cpu" or (device == "auto" and gpus == 0)
    if on_cpu and precision not in cap.cpu_precisions:
        raise ConfigError(
            f"train.precision={precision} on the CPU is not supported with {strategy}; use --strategy ddp or fsdp "
            "(our own GradScaler runs on the CPU), --precision bf16-mixed or fp32, or a CUDA GPU"
        )
    if precision == "fp16-mixed" and device == "mps":
        raise ConfigError(
            "train.precision=fp16-mixed is not supported on MPS; use --precision bf16-mixed or fp32 on this device"
        )
    if cfg.train.compile and not cap.compile:
        raise ConfigError(f"train.compile=true is not supported with {strategy}; drop it or use ddp or fsdp")
    if cfg.checkpoint.async_ and not cap.async_checkpoint:
        raise ConfigError(
            f"checkpoint.async=true is not supported with {strategy} (its engine writes its own state); drop it"
        )
    if cfg.slurm.enabled and not cap.slurm:
        raise ConfigError(
            f"{flag} is not supported with --slurm; use ddp, fsdp or deepspeed (srun starts the processes)"
        )
    if cfg.log.tensorboard.histograms and not cap.histograms:
        raise ConfigError(
            f"log.tensorboard.histograms=true is not supported with {strategy} (each rank holds only shards); drop it"
        )
    if cfg.train.l1 and strategy in ("fsdp", "deepspeed"):
        raise ConfigError(
            f"train.l1 needs the model's own parameters in the optimizer, and {strategy} optimizes shards or "
            "flattened copies of them; use ddp, or train.weight_decay instead"
        )
    if strategy != "fsdp" and cfg.fsdp != type(cfg.fsdp)():
        raise ConfigError("fsdp.* settings act only with --strategy fsdp; drop them or add --strategy fsdp")
    if strategy == "fsdp" and cfg.fsdp.cpu_offload and on_cpu:
        raise ConfigError("fsdp.cpu_offload=true needs CUDA GPUs (on the CPU everything is already there); drop it")
