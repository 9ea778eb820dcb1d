"""The one interface every strategy implements, and the parts they share by composition.

A strategy decides how the model is wrapped, how gradients cross processes, which precision
object runs autocast/backward/step, and how model and optimizer state go into a checkpoint
directory and come back. The loop and the worker talk to it only through :class:`Strategy`;
they hold no strategy names and probe no attributes.

Shared parts (composed, not inherited): :class:`Local` / :class:`Collectives` (values across
processes), :func:`init_process_group`, :func:`load_full_state` (the unsharded model +
optimizer load that single, dp, ddp and accelerate share).
"""

from __future__ import annotations

import datetime
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Protocol

import torch

from launcher.errors import LaunchError, first_line
from launcher.runtime.env import DistEnv


class Comm(Protocol):
    """Values across the processes of the job (the loop's metric sums, stop agreement, RNG gathering)."""

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]: ...
    def any(self, flag: bool) -> bool: ...
    def stop_check(self, flag: bool, every: int) -> tuple[bool, int]: ...
    def max_int(self, value: int) -> int: ...
    def gather(self, obj: Any) -> list[Any] | None: ...
    def broadcast(self, obj: Any) -> Any: ...
    def barrier(self) -> None: ...


class Strategy(Protocol):
    """What the loop and the worker may ask of a strategy (one file each in this package)."""

    name: str
    env: DistEnv
    device: torch.device
    comm: Comm
    # Where every rank writes its share of model/optimizer state inside a checkpoint
    # (``deepspeed/``, ``dcp/``); None: rank 0 writes model.safetensors and the optimizer in state.pt.
    shard_dir: str | None
    # Whether a forward pass is a collective (FSDP gathers parameters): evaluation then runs as
    # many forwards on every rank.
    collective_forward: bool

    @property
    def is_main(self) -> bool: ...

    def wrap(self, model: torch.nn.Module, units: tuple[str, ...] = ()) -> torch.nn.Module:
        """Before the optimizer exists (DDP, DataParallel, fully_shard). ``units``: the recipe's
        ``shard_units`` (the modules a sharding strategy shards on their own)."""

    def prepare(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """After the optimizer exists (Accelerate and DeepSpeed wrap both together)."""

    def unwrap(self, model: Any) -> torch.nn.Module:
        """The plain module (evaluation, histograms, exports)."""

    def torch_optimizer(self, optimizer: Any) -> torch.optim.Optimizer:
        """The torch optimizer under an engine's wrapper (for schedulers)."""

    def compile(self, model: Any, mode: str) -> Any: ...

    def no_sync(self, model: Any) -> AbstractContextManager:
        """Inside an accumulation group: no gradient synchronisation."""

    def make_precision(self, name: str) -> Any:
        """The precision object the loop calls (autocast, backward, step, scaler state)."""

    def sync_buffers(self, model: Any) -> None:
        """Before evaluation: every rank gets rank 0's buffers."""

    def grad_norm(self, params: list[torch.nn.Parameter]) -> torch.Tensor | None:
        """Global L2 norm of the current gradients, on the device (no host sync)."""

    def full_weights(self, model: Any) -> dict[str, torch.Tensor] | None:
        """Unsharded weights on rank 0 (collective where state is sharded); None on other ranks
        where they would only be thrown away, or where a checkpoint holds no full copy."""

    def checkpoint_weights(self, model: Any) -> dict[str, torch.Tensor] | None:
        """What goes into a checkpoint's model.safetensors (None: no full copy, only shards)."""

    def optimizer_state(self, optimizer: Any) -> dict:
        """The optimizer state for state.pt ({} where it lives in the shards)."""

    def save_shards(self, directory: Path, model: Any, optimizer: Any, background: bool = False) -> Any:
        """Every rank writes its share into ``directory`` (collective; only with ``shard_dir``).
        Returns None when written, or a future when the write goes on in the background."""

    def load_state(self, loaded: dict[str, Any], model: Any, optimizer: Any) -> None:
        """Restore model and optimizer from a checkpoint that :mod:`checkpoint` loaded."""

    def teardown(self) -> None: ...


# ---------------------------------------------------------------------- collectives


class Local:
    """One process: every collective is the identity."""

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        return sums

    def any(self, flag: bool) -> bool:
        return flag

    def stop_check(self, flag: bool, every: int) -> tuple[bool, int]:
        """One process needs no agreement: it checks every step."""
        return flag, 1

    def max_int(self, value: int) -> int:
        return value

    def gather(self, obj: Any) -> list[Any] | None:
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        return obj

    def barrier(self) -> None:
        pass


class Collectives:
    """Over the default process group (gloo on the CPU, NCCL on CUDA: ``device``)."""

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        import torch.distributed as dist

        self.dist, self.env = dist, env
        self.device = device if device.type == "cuda" else torch.device("cpu")

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        """Exact global values: sums are reduced in float64."""
        if not sums:
            return sums
        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return dict(zip(keys, t.tolist(), strict=True))

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (stop requests, early stopping)."""
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def stop_check(self, flag: bool, every: int) -> tuple[bool, int]:
        """(``flag`` on any rank, steps to the next check: the smallest ``every`` of the ranks)."""
        t = torch.tensor([1 if flag else 0, -every], dtype=torch.int64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        stop, neg_every = t.tolist()
        return bool(stop), -neg_every

    def max_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
        out = [None] * self.env.world_size if self.env.is_main else None
        self.dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.dist.barrier()


def rendezvous_failure(env: DistEnv, timeout_s: float, error: BaseException) -> str:
    first = first_line(error, 200)
    return (
        f"rank {env.rank} of {env.world_size} could not join the others at {env.master_addr}:{env.master_port} "
        f"within dist.timeout_s={timeout_s:g} ({first}); check that every node can reach that address "
        "(MASTER_ADDR/MASTER_PORT) and that all processes started"
    )


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float) -> None:
    """The default process group: NCCL on CUDA, gloo on the CPU. A rendezvous that fails is
    one line naming the address (LaunchError)."""
    import torch.distributed as dist

    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
    except (RuntimeError, ValueError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
        raise LaunchError(rendezvous_failure(env, timeout_s, e)) from None


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_gpus_per_node(env: DistEnv, device: torch.device) -> None:
    if device.type == "cuda" and env.local_world_size > torch.cuda.device_count():
        raise LaunchError(
            f"{env.local_world_size} processes on this node but only {torch.cuda.device_count()} GPU(s); "
            f"use --gpus {torch.cuda.device_count()}"
        )


# ---------------------------------------------------------------------- shared behaviour


def plain_module(model: Any) -> torch.nn.Module:
    """The module under torch.compile's and DDP/DataParallel's wrappers."""
    model = getattr(model, "_orig_mod", model)
    return getattr(model, "module", model)


def compile_model(model: Any, mode: str) -> Any:
    """``train.compile``: torch.compile the wrapped model (after DDP wrapping, so that compiled
    DDP splits its graph at bucket boundaries and keeps overlapping communication). ``unwrap``
    still returns the plain module: checkpoints and exports have the same keys with and
    without compile, and evaluation runs the plain module."""
    return torch.compile(model, mode=None if mode == "default" else mode)


def broadcast_buffers(comm: Comm, env: DistEnv, module: torch.nn.Module) -> None:
    """Each rank's BatchNorm running statistics come from its own last training batch (DDP
    broadcasts buffers only at the start of a training forward). Evaluation runs on every
    rank's copy, so give them rank 0's buffers first: the ones checkpoints and the exported
    model hold. Training is unaffected (its next forward broadcasts rank 0's buffers anyway)."""
    if env.world_size > 1:
        import torch.distributed as dist

        for buf in module.buffers():
            dist.broadcast(buf.data, src=0)


def sharded_elsewhere(loaded: dict[str, Any], strategy_name: str) -> LaunchError:
    written_by = (loaded.get("meta") or {}).get("strategy") or "another strategy"
    return LaunchError(
        f"checkpoint {loaded['path']} holds sharded state written by --strategy {written_by}; "
        f"resume it with --strategy {written_by} (not {strategy_name}), "
        "or start from its weights with model.init_from=..."
    )


def load_full_state(loaded: dict[str, Any], module: torch.nn.Module, optimizer: Any, strategy_name: str) -> None:
    """A checkpoint with full weights (model.safetensors) and the optimizer in state.pt."""
    from launcher.runtime.checkpoint import K_OPTIMIZER

    state = loaded["state"]
    if not state[K_OPTIMIZER] or loaded["model"] is None:
        raise sharded_elsewhere(loaded, strategy_name)
    try:
        module.load_state_dict(loaded["model"])
    except RuntimeError as e:
        raise LaunchError(
            f"checkpoint {loaded['path']} does not fit this model ({first_line(e)}); "
            "it was saved by a different recipe or architecture"
        ) from None
    optimizer.load_state_dict(state[K_OPTIMIZER])


NULL = nullcontext()  # reusable: no object per step
