"""FSDP2: PyTorch's fully sharded data parallel (``torch.distributed.fsdp.fully_shard``).

Every rank holds 1/N of the parameters, gradients and optimizer state. Units: the modules the
recipe names in ``shard_units`` (qualified names such as ``layer1``, or class names such as
``BasicBlock``), else every top-level child and every module with children that holds at
least ``DEFAULT_UNIT_PARAMS`` parameters; then the root. Mixed precision is FSDP2's policy
(parameters cast for compute, gradients reduced in float32); fp16-mixed adds a GradScaler
that agrees on inf/NaN across ranks. Checkpoints: every rank writes its shard with
``torch.distributed.checkpoint`` into ``dcp/`` of our atomic ``step-N`` (asynchronously with
``checkpoint.async``); a different process count reshards on load.
"""

from __future__ import annotations

import pickle
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from launcher.errors import LaunchError
from launcher.rundir import DCP_DIR
from launcher.runtime.env import DistEnv
from launcher.runtime.precision import Precision
from launcher.runtime.strategies.base import (
    Collectives,
    broadcast_buffers,
    check_gpus_per_node,
    destroy_process_group,
    init_process_group,
)
from launcher.runtime.strategies.single import Single

DEFAULT_UNIT_PARAMS = 100_000  # a top-level child or a module with children this big is a unit
_DTYPE = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


def shard_units(model: torch.nn.Module, names: tuple[str, ...] | list[str]) -> list[torch.nn.Module]:
    """The modules to shard on their own, innermost first (fully_shard goes bottom-up)."""
    named = [(n, m) for n, m in model.named_modules() if n]  # (the root comes last, separately)
    if names:
        chosen = []
        for name in names:
            found = [m for n, m in named if n == name or type(m).__name__ == name]
            if not found:
                children = ", ".join(n for n, _ in model.named_children()) or "none"
                raise LaunchError(
                    f"shard_units name {name!r} is no module of the model (a qualified name like "
                    f"'layer1' or a class name; its top-level modules: {children}); fix the recipe's shard_units"
                )
            chosen += [m for m in found if m not in chosen]
    else:
        top = {id(m) for m in model.children()}  # (a flat model's big layers are units too)
        chosen = [
            m for _, m in named
            if (id(m) in top or next(m.children(), None) is not None)
            and sum(p.numel() for p in m.parameters()) >= DEFAULT_UNIT_PARAMS
        ]  # fmt: skip
    depth = {id(m): n.count(".") for n, m in named}
    return sorted(chosen, key=lambda m: -depth[id(m)])


class FSDP(Single):
    name = "fsdp"
    shard_dir = DCP_DIR
    collective_forward = True

    def __init__(self, env: DistEnv, device: torch.device, cfg: Any) -> None:
        from torch.distributed.device_mesh import init_device_mesh

        super().__init__(env, device)
        check_gpus_per_node(env, device)
        init_process_group(env, device, cfg.dist.timeout_s)
        self.comm = Collectives(env, device)
        self.mesh = init_device_mesh(device.type, (env.world_size,))
        self.cfg = cfg
        self._ckpt_group = None  # a gloo group of its own for background saves (made at the first)
        self._stager = None  # and the stager whose CPU buffers every background save reuses

    # ------------------------------------------------------------------ model
    def wrap(self, model: torch.nn.Module, units: tuple[str, ...] = ()) -> torch.nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        f, precision = self.cfg.fsdp, self.cfg.train.precision
        dtype = _DTYPE.get(precision)
        inner = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32 if dtype else None)
        # the root hands float32 outputs to the recipe's loss
        outer = MixedPrecisionPolicy(
            param_dtype=dtype,
            reduce_dtype=torch.float32 if dtype else None,
            output_dtype=torch.float32 if dtype else None,
        )
        offload = CPUOffloadPolicy() if f.cpu_offload else OffloadPolicy()
        common = {"mesh": self.mesh, "reshard_after_forward": f.reshard_after_forward, "offload_policy": offload}
        for unit in shard_units(model, units):
            fully_shard(unit, mp_policy=inner, **common)
        return fully_shard(model, mp_policy=outer, **common)

    def unwrap(self, model) -> torch.nn.Module:
        return getattr(model, "_orig_mod", model)  # the sharded module itself (fully_shard works in place)

    @contextmanager
    def no_sync(self, model):
        """Accumulate unsharded gradients locally: no reduce-scatter until the group's last backward."""
        module = self.unwrap(model)
        module.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            module.set_requires_gradient_sync(True)

    def make_precision(self, name: str) -> Precision:
        scaler = None
        if name == "fp16-mixed":
            from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

            # torch's own ShardedGradScaler passes its 1-element found_inf to a DTensor op, which
            # warns at every step (torch 2.11); nothing for a user to change
            warnings.filterwarnings("ignore", message="Found a non-scalar tensor with numel=1", category=UserWarning)
            scaler = ShardedGradScaler(self.device.type)  # agrees on inf/NaN across the shards
        return Precision(name, self.device, autocast=False, scaler=scaler, grad_norm=self.grad_norm)

    def sync_buffers(self, model) -> None:
        broadcast_buffers(self.comm, self.env, self.unwrap(model))  # (buffers are not sharded)

    def grad_norm(self, params):
        """The global L2 norm (a collective): every element of a gradient lives on exactly one
        rank (FSDP2 shards each parameter along dim 0 of a 1-D mesh), so each rank takes the norm
        of its local shards as plain tensors and the squares are summed over the ranks -- no
        DTensor dispatch, one all-reduce of one number."""
        import torch.distributed as dist

        grads = [q.grad.to_local() for q in params if q.grad is not None]
        if not grads:
            return None
        square = torch.nn.utils.get_total_norm(grads).to(self.device, torch.float32).square()
        dist.all_reduce(square, group=self.mesh.get_group())
        return square.sqrt()

    # ------------------------------------------------------------------ state
    def full_weights(self, model) -> dict[str, torch.Tensor] | None:
        """The unsharded weights on rank 0, gathered one tensor at a time into CPU memory (collective)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.unwrap(model), options=options)
        return state if self.is_main else None

    def checkpoint_weights(self, model):
        return None  # the shards in dcp/ are the checkpoint: no rank gathers the whole model

    def optimizer_state(self, optimizer) -> dict:
        return {}  # in dcp/

    def _state(self, model, optimizer) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.unwrap(model), optimizer)
        return {"model": msd, "optimizer": osd}

    def save_shards(self, directory: Path, model, optimizer, background: bool = False):
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        state = self._state(model, optimizer)
        if not background:
            try:
                dcp.save(state, checkpoint_id=str(directory))
            except CheckpointException as e:
                raise LaunchError(f"cannot write the checkpoint shards in {directory}: {_first_failure(e)}") from None
            return None
        if self._ckpt_group is None:  # background collectives must not interleave with training's
            self._ckpt_group = dist.new_group(backend="gloo")
            # the CPU copy training waits for goes into the same buffers every time (the loop
            # waits for the previous save before the next: at most one in flight)
            self._stager = _reused_stager(pin_memory=self.device.type == "cuda")
        try:
            return dcp.async_save(
                state, checkpoint_id=str(directory), process_group=self._ckpt_group, async_stager=self._stager
            )
        except CheckpointException as e:
            raise LaunchError(f"cannot stage the checkpoint shards for {directory}: {_first_failure(e)}") from None

    def load_state(self, loaded: dict[str, Any], model, optimizer) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException
        from torch.distributed.checkpoint.state_dict import set_state_dict

        directory = Path(loaded["path"]) / self.shard_dir
        if not directory.is_dir():
            written_by = (loaded.get("meta") or {}).get("strategy", "another strategy")
            raise LaunchError(
                f"checkpoint {loaded['path']} holds no sharded FSDP state (written by --strategy {written_by}); "
                f"resume it with --strategy {written_by}, or start from its weights with model.init_from=..."
            )
        state = self._state(model, optimizer)  # (initialises the optimizer state to load into)
        reader = SafeReader(directory)
        try:
            dcp.load(state, storage_reader=reader)
        except CheckpointException as e:  # (any rank's error, gathered by DCP)
            failure = reader.failure  # (DCP swallows what read_metadata raises)
            if isinstance(failure, LaunchError):
                raise failure from None
            why = failure or _first_failure(e)
            raise LaunchError(f"cannot load the sharded state in {directory}: {why}") from None
        set_state_dict(
            self.unwrap(model), optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
        )

    def teardown(self) -> None:
        destroy_process_group()


def _reused_stager(pin_memory: bool):
    """DCP's blocking stager with its buffers kept from one save to the next (torch's own
    cache pins them, which needs CUDA: on the CPU they stay pageable)."""
    from torch.distributed._state_dict_utils import _copy_state_dict, _create_cpu_state_dict
    from torch.distributed.checkpoint.staging import BlockingAsyncStager

    class Stager(BlockingAsyncStager):
        def stage(self, state_dict):
            if self.state_dict_cache is None:
                self.state_dict_cache = _create_cpu_state_dict(state_dict, pin_memory=pin_memory)
            return _copy_state_dict(state_dict, self.state_dict_cache)

    return Stager(cache_staged_state_dict=True)


def _first_failure(e) -> str:
    failure = next(iter(e.failures.values()))[0]
    text = str(failure).strip().splitlines()
    return f"{type(failure).__name__}: {text[0]}" if text else type(failure).__name__


# ---------------------------------------------------------------------- no code from a checkpoint

_METADATA_CLASSES = (
    "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
    "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING",
)  # fmt: skip
_ALLOWED_GLOBALS = {
    *(("torch.distributed.checkpoint.metadata", name) for name in _METADATA_CLASSES),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("collections", "OrderedDict"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
}


class _Refused(pickle.UnpicklingError):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    """DCP pickles its ``.metadata`` file; only the classes such a file holds are unpickled."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)):
            return getattr(torch, name)
        raise _Refused(f"{module}.{name}")


def _safe_reader_class():
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    from launcher.runtime.checkpoint import CorruptCheckpoint

    class Reader(FileSystemReader):
        failure: Exception | None = None  # why the metadata was refused (DCP itself only sees "None")

        def read_metadata(self, *args: Any, **kwargs: Any):
            try:
                return self._read_metadata(kwargs.get("rank"))
            except (LaunchError, CorruptCheckpoint) as e:
                self.failure = self.failure or e
                raise

        def _read_metadata(self, rank):
            path = self._get_metadata_path(rank)
            if rank is not None and not Path(path).exists():
                raise FileNotFoundError(path)  # (DCP asks for a per-rank file when the global one failed)
            with self.fs.create_stream(path, "rb") as f:
                try:
                    metadata = _MetadataUnpickler(f).load()
                except _Refused as e:
                    raise LaunchError(
                        f"{path} contains pickled code or objects that DCP metadata never holds ({e}); refused to "
                        "load it (only load checkpoints you trust, saved by this tool)"
                    ) from None
                except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as e:
                    raise CorruptCheckpoint(f"{path}: {e}") from None
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader


def SafeReader(directory: Path):  # noqa: N802 - a class made on first use (DCP imports lazily)
    """DCP's file reader with a metadata unpickler that admits DCP's own classes only (its
    tensor data is read with ``torch.load(weights_only=True)`` by DCP itself)."""
    return _safe_reader_class()(str(directory))
