"""Strategies: how the model is wrapped, how values cross processes, how the job tears down.

One small class per strategy, one interface. ``Single`` is the one-process case; distributed
strategies override the collective methods.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from launcher.errors import LaunchError
from launcher.runtime.env import DistEnv


def resolve_device(requested: str, env: DistEnv) -> torch.device:
    if requested == "auto":
        if torch.cuda.is_available():
            requested = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            requested = "mps"
        else:
            requested = "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise LaunchError("dist.device=cuda but no CUDA GPU is visible here; use --device cpu (or auto)")
        return torch.device("cuda", env.local_rank % max(1, torch.cuda.device_count()))
    if requested == "mps" and not torch.backends.mps.is_available():
        raise LaunchError("dist.device=mps but MPS is not available here; use --device cpu (or auto)")
    return torch.device(requested)


class Single:
    """One process, one device."""

    name = "single"

    def __init__(self, env: DistEnv, device: torch.device) -> None:
        self.env = env
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.env.is_main

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def prepare(self, model, optimizer):
        """After the optimizer exists (Accelerate wraps both together)."""
        return model, optimizer

    def make_precision(self, name: str, device: torch.device):
        from launcher.runtime.precision import Precision

        return Precision(name, device)

    # Checkpoint hooks. Strategies whose engine owns model/optimizer state (DeepSpeed) override.
    owns_checkpoint_state = False

    def model_state(self, model: torch.nn.Module) -> dict:
        return self.unwrap(model).state_dict()

    def compile(self, model: torch.nn.Module, mode: str) -> torch.nn.Module:
        """``train.compile``: torch.compile the wrapped model (after DDP wrapping, so that
        compiled DDP splits its graph at bucket boundaries and keeps overlapping communication).
        ``unwrap`` still returns the plain module: checkpoints and exports have the same keys
        with and without compile, and evaluation runs the plain module."""
        return torch.compile(model, mode=None if mode == "default" else mode)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper
        return getattr(model, "module", model)

    def no_sync(self, model: torch.nn.Module):
        return nullcontext()

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        return sums

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank (stop requests, early stopping)."""
        return flag

    def stop_check(self, flag: bool, every: int) -> tuple[bool, int]:
        """(``flag`` on any rank, steps to the next check: the smallest ``every`` of the ranks).
        One process needs no agreement: it checks every step."""
        return flag, 1

    def gather(self, obj):
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
        return [obj]

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Before evaluation: every rank gets rank 0's buffers (one process: nothing to do)."""

    def barrier(self) -> None:
        pass

    def teardown(self) -> None:
        pass


class DataParallel(Single):
    """``nn.DataParallel`` in one process over every visible GPU. It splits each batch across
    the GPUs (``train.batch_size`` is the whole batch), unlike DDP whose batch is per process."""

    name = "dp"

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return torch.nn.DataParallel(model)


def rendezvous_failure(env: DistEnv, timeout_s: float, error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (
        f"rank {env.rank} of {env.world_size} could not join the others at {env.master_addr}:{env.master_port} "
        f"within dist.timeout_s={timeout_s:g} ({first}); check that every node can reach that address "
        "(MASTER_ADDR/MASTER_PORT) and that all processes started"
    )


class DDP(Single):
    """DistributedDataParallel, one process per device (gloo on CPU, NCCL on CUDA)."""

    name = "ddp"

    def __init__(self, env: DistEnv, device: torch.device, timeout_s: float = 300.0) -> None:
        import datetime

        import torch.distributed as dist

        super().__init__(env, device)
        self.dist = dist
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        try:
            dist.init_process_group(
                backend,
                rank=env.rank,
                world_size=env.world_size,
                timeout=datetime.timedelta(seconds=timeout_s),
                device_id=device if device.type == "cuda" else None,
            )
        except (RuntimeError, ValueError) as e:  # DistStoreError / DistNetworkError are RuntimeErrors
            raise LaunchError(rendezvous_failure(env, timeout_s, e)) from None
        self._reduce_device = device if backend == "nccl" else torch.device("cpu")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: torch.nn.Module):
        return model.no_sync()

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        if not sums:
            return sums
        keys = sorted(sums)
        t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=self._reduce_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.SUM)
        return dict(zip(keys, t.tolist(), strict=True))

    def any(self, flag: bool) -> bool:
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._reduce_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return bool(t.item())

    def stop_check(self, flag: bool, every: int) -> tuple[bool, int]:
        t = torch.tensor([1 if flag else 0, -every], dtype=torch.int64, device=self._reduce_device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        stop, neg_every = t.tolist()
        return bool(stop), -neg_every

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Each rank's BatchNorm running statistics come from its own last training batch (DDP
        broadcasts buffers only at the start of a training forward). Evaluation runs on every
        rank's copy, so give them rank 0's buffers first: the ones checkpoints and the exported
        model hold. Training is unaffected (its next forward broadcasts rank 0's buffers anyway)."""
        if self.env.world_size > 1:
            for buf in self.unwrap(model).buffers():
                self.dist.broadcast(buf.data, src=0)

    def gather(self, obj):
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
        out = [None] * self.env.world_size if self.is_main else None
        self.dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self) -> None:
        self.dist.barrier()

    def teardown(self) -> None:
        if self.dist.is_initialized():
            self.dist.destroy_process_group()


def make_strategy(name: str, env: DistEnv, device: torch.device, cfg) -> Single:
    if name == "accelerate":
        return Accelerate(env, device, cfg.train.precision)
    if name == "deepspeed":
        return DeepSpeed(env, device, cfg)
    if name == "ddp" or (name == "auto" and env.world_size > 1):
        if device.type == "cuda" and env.local_world_size > torch.cuda.device_count():
            raise LaunchError(
                f"{env.local_world_size} processes on this node but only {torch.cuda.device_count()} GPU(s); "
                f"use --gpus {torch.cuda.device_count()}"
            )
        return DDP(env, device, timeout_s=cfg.dist.timeout_s)
    if name == "dp":
        return DataParallel(env, device)
    return Single(env, device)


class Accelerate(DDP):
    """HF Accelerate owns device placement, DDP wrapping and mixed precision; the loop, the data
    order and the checkpoint format stay ours (so resume stays exact)."""

    name = "accelerate"

    def __init__(self, env: DistEnv, device: torch.device, precision: str) -> None:
        import torch.distributed as dist
        from accelerate import Accelerator

        from launcher.runtime.precision import check_supported

        check_supported(precision, device, "accelerate")  # Accelerate itself would silently ignore fp16 on the CPU
        mp = {"fp32": "no", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}.get(precision)
        if mp is None:
            raise LaunchError(f"train.precision={precision} is not supported with Accelerate; use fp32 or bf16-mixed")
        Single.__init__(self, env, device)
        self.accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mp)
        if env.world_size > 1 and self.accelerator.num_processes != env.world_size:
            raise LaunchError(
                f"Accelerate runs {self.accelerator.num_processes} process(es) but the job has {env.world_size}: "
                "on the CPU it needs ACCELERATE_USE_CPU=1 and --multi_gpu (launch sets both)"
            )
        self.device = self.accelerator.device
        self.dist = dist
        self._reduce_device = self.device if self.device.type == "cuda" else torch.device("cpu")

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model  # prepare() wraps model and optimizer together

    def prepare(self, model, optimizer):
        return self.accelerator.prepare(model, optimizer)

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.accelerator.unwrap_model(getattr(model, "_orig_mod", model))

    def no_sync(self, model: torch.nn.Module):
        return self.accelerator.no_sync(model)

    def make_precision(self, name: str, device: torch.device):
        return AcceleratePrecision(self.accelerator, name)

    def any(self, flag: bool) -> bool:
        return DDP.any(self, flag) if self.env.world_size > 1 else flag

    def stop_check(self, flag: bool, every: int) -> tuple[bool, int]:
        return DDP.stop_check(self, flag, every) if self.env.world_size > 1 else (flag, 1)

    def reduce_sums(self, sums: dict[str, float]) -> dict[str, float]:
        return DDP.reduce_sums(self, sums) if self.env.world_size > 1 else sums

    def gather(self, obj):
        return DDP.gather(self, obj) if self.env.world_size > 1 else [obj]

    def teardown(self) -> None:
        self.accelerator.end_training()
        super().teardown()


class AcceleratePrecision:
    """Precision through the Accelerator (its autocast, its GradScaler)."""

    converts_input = True  # (Trainer.fit calls convert_input only where this is true)

    def __init__(self, accelerator, name: str) -> None:
        self.accelerator, self.name = accelerator, name

    def autocast(self):
        return self.accelerator.autocast()

    def convert_model(self, model):
        return model

    def convert_input(self, batch):
        return batch

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, optimizer, params, grad_clip):
        norm = self.accelerator.clip_grad_norm_(params, grad_clip) if grad_clip else None
        optimizer.step()
        return norm

    def state_dict(self) -> dict:
        scaler = self.accelerator.scaler
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.accelerator.scaler is not None and state:
            self.accelerator.scaler.load_state_dict(state)


class DeepSpeed(DDP):
    """``deepspeed.initialize`` with ZeRO ``deepspeed.stage`` 0-3 (optional CPU offload). The engine
    owns precision, gradient reduction and the optimizer step; its state is saved and restored
    through the engine, inside our atomic checkpoint directory (``deepspeed/``)."""

    name = "deepspeed"
    owns_checkpoint_state = True

    def __init__(self, env: DistEnv, device: torch.device, cfg) -> None:
        import datetime

        import deepspeed
        import torch.distributed as dist

        Single.__init__(self, env, device)
        from launcher.runtime.precision import check_supported

        precision = cfg.train.precision
        check_supported(precision, device, "deepspeed")
        if precision not in ("fp32", "bf16-mixed", "fp16-mixed"):
            raise LaunchError(f"train.precision={precision} is not supported with deepspeed; use fp32 or bf16-mixed")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        deepspeed.init_distributed(
            dist_backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=cfg.dist.timeout_s),
            verbose=False,
        )
        self.dist = dist
        self._reduce_device = device if device.type == "cuda" else torch.device("cpu")
        self.cfg = cfg
        self.engine = None

    def ds_config(self) -> dict:
        t, z = self.cfg.train, self.cfg.deepspeed
        zero: dict = {"stage": z.stage}
        if z.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu"}
        if z.offload_param:
            zero["offload_param"] = {"device": "cpu"}
        if z.stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        return {
            "train_micro_batch_size_per_gpu": t.batch_size,
            "gradient_accumulation_steps": t.grad_accum_steps,
            "gradient_clipping": t.grad_clip or 0.0,
            "zero_optimization": zero,
            "bf16": {"enabled": t.precision == "bf16-mixed"},
            "fp16": {"enabled": t.precision == "fp16-mixed"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return model

    def prepare(self, model, optimizer):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config())
        engine.set_gradient_accumulation_boundary(True)
        self.engine = engine
        return engine, ds_optimizer

    def unwrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else model

    def compile(self, model: torch.nn.Module, mode: str) -> torch.nn.Module:
        raise LaunchError("train.compile=true is not supported with --strategy deepspeed; use ddp or drop the key")

    @contextmanager
    def no_sync(self, model):
        # The loop decides where accumulation groups end (also a shorter last one per epoch).
        self.engine.set_gradient_accumulation_boundary(False)
        try:
            yield
        finally:
            self.engine.set_gradient_accumulation_boundary(True)

    def make_precision(self, name: str, device: torch.device):
        return DeepSpeedPrecision(self, name)

    def model_state(self, model) -> dict:
        """Full weights on rank 0 (collective under ZeRO-3, where parameters are partitioned)."""
        if self.cfg.deepspeed.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict() or {}
        return self.engine.module.state_dict()

    def save_engine(self, directory: str) -> None:
        """Every rank writes its share of the engine state (collective)."""
        self.engine.save_checkpoint(directory, tag="engine", save_latest=False)

    def load_engine(self, directory: str, load=None) -> None:
        """Restore the engine's state. DeepSpeed reads its files with ``weights_only=False`` (a
        pickled payload would run); every file goes through ``load(path, map_location, allowed)``
        instead (checkpoint.EngineLoads: verified, ``weights_only=True`` with the few DeepSpeed
        classes its files hold), by swapping the engine's checkpoint engine for the call. With
        this config (no universal checkpoint, no MoE, no NVMe offload) that is its only reader."""
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        if load is None:
            from launcher.runtime.checkpoint import safe_torch_load as load

        own = self.engine.checkpoint_engine
        allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
        self.engine.checkpoint_engine = _SafeLoads(own, load, allowed)
        try:
            path, _ = self.engine.load_checkpoint(
                directory, tag="engine", load_optimizer_states=True, load_lr_scheduler_states=False
            )
        finally:
            self.engine.checkpoint_engine = own
        if path is None:
            raise LaunchError(f"no DeepSpeed engine state in {directory}; the checkpoint was saved by another strategy")

    def broadcast(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]


class _SafeLoads:
    """A DeepSpeed checkpoint engine whose ``load`` is ours; everything else is the original's."""

    def __init__(self, inner, load, allowed) -> None:
        self._inner, self._load, self._allowed = inner, load, allowed

    def load(self, path, map_location=None):
        return self._load(path, map_location, self._allowed)

    def __getattr__(self, name):
        return getattr(self._inner, name)


class DeepSpeedPrecision:
    """The engine owns precision: bf16/fp16 weights, loss scaling, clipping (config)."""

    converts_input = True  # (Trainer.fit calls convert_input only where this is true)

    def __init__(self, strategy: DeepSpeed, name: str) -> None:
        self.strategy, self.name = strategy, name
        self._dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(name)

    def autocast(self):
        return nullcontext()

    def convert_model(self, model):
        return model

    def convert_input(self, batch):
        from launcher.runtime.precision import cast_floats

        return batch if self._dtype is None else cast_floats(batch, self._dtype)

    def backward(self, loss: torch.Tensor) -> None:
        self.strategy.engine.backward(loss, scale_wrt_gas=False)  # the loop already divided it

    def step(self, optimizer, params, grad_clip):
        self.strategy.engine.step()  # clipping: gradient_clipping in the engine's config
        return None

    def state_dict(self) -> dict:
        return {}  # in the engine's checkpoint

    def load_state_dict(self, state: dict) -> None:
        pass
