"""DeepSpeed ZeRO (``deepspeed.stage`` 0-3, optional CPU offload). The engine owns precision,
gradient reduction and the optimizer step; its state is saved and restored through the
engine, inside our atomic checkpoint directory (``deepspeed/``)."""

from __future__ import annotations

import datetime
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from launcher.errors import LaunchError
from launcher.rundir import ENGINE_DIR, ENGINE_TAG
from launcher.runtime.env import DistEnv
from launcher.runtime.strategies.base import Collectives, broadcast_buffers, destroy_process_group
from launcher.runtime.strategies.single import Single


class DeepSpeed(Single):
    name = "deepspeed"
    shard_dir = ENGINE_DIR

    def __init__(self, env: DistEnv, device: torch.device, cfg: Any) -> None:
        import deepspeed

        super().__init__(env, device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        deepspeed.init_distributed(
            dist_backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=cfg.dist.timeout_s),
            verbose=False,
        )
        self.comm = Collectives(env, device)
        self.cfg = cfg
        self.engine = None
        self.collective_forward = cfg.deepspeed.stage == 3  # ZeRO-3 gathers parameters in forward

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

    def prepare(self, model, optimizer):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=self.ds_config())
        engine.set_gradient_accumulation_boundary(True)
        self.engine = engine
        return engine, ds_optimizer

    def unwrap(self, model) -> torch.nn.Module:
        return self.engine.module if self.engine is not None else model

    def torch_optimizer(self, optimizer):
        return getattr(optimizer, "optimizer", optimizer)  # ZeRO's optimizer wraps the torch one (stage 0 does not)

    def compile(self, model, mode: str):
        raise LaunchError("train.compile=true is not supported with --strategy deepspeed; use ddp or drop the key")

    @contextmanager
    def no_sync(self, model):
        # The loop decides where accumulation groups end (also a shorter last one per epoch).
        self.engine.set_gradient_accumulation_boundary(False)
        try:
            yield
        finally:
            self.engine.set_gradient_accumulation_boundary(True)

    def make_precision(self, name: str) -> DeepSpeedPrecision:
        return DeepSpeedPrecision(self, name)

    def sync_buffers(self, model) -> None:
        broadcast_buffers(self.comm, self.env, self.unwrap(model))

    def grad_norm(self, params):
        return self.engine.get_global_grad_norm()  # its own (partitioned) gradients

    def full_weights(self, model):
        """Full weights on rank 0 (collective under ZeRO-3, where parameters are partitioned)."""
        if self.cfg.deepspeed.stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict() or None
        return self.engine.module.state_dict() if self.is_main else None

    def optimizer_state(self, optimizer) -> dict:
        return {}  # in the engine's checkpoint

    def save_shards(self, directory: Path, model, optimizer, background: bool = False):
        """Every rank writes its share of the engine state (collective)."""
        self.engine.save_checkpoint(str(directory), tag=ENGINE_TAG, save_latest=False)
        return None

    def load_state(self, loaded: dict[str, Any], model, optimizer) -> None:
        """Restore the engine's state. DeepSpeed reads its files with ``weights_only=False`` (a
        pickled payload would run); every file goes through ``load(path, map_location, allowed)``
        instead (checkpoint.EngineLoads: verified, ``weights_only=True`` with the few DeepSpeed
        classes its files hold), by swapping the engine's checkpoint engine for the call. With
        this config (no universal checkpoint, no MoE, no NVMe offload) that is its only reader."""
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        from launcher.runtime.checkpoint import EngineLoads

        directory = Path(loaded["path"]) / self.shard_dir
        if not directory.is_dir():
            raise LaunchError(
                f"no DeepSpeed engine state in {loaded['path']}; the checkpoint was saved by "
                f"--strategy {(loaded.get('meta') or {}).get('strategy', 'another strategy')}: resume it with that "
                "strategy, or start from its weights with model.init_from=..."
            )
        own = self.engine.checkpoint_engine
        allowed = [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]
        self.engine.checkpoint_engine = _SafeLoads(own, EngineLoads(loaded), allowed)
        try:
            path, _ = self.engine.load_checkpoint(
                str(directory), tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=False
            )
        finally:
            self.engine.checkpoint_engine = own
        if path is None:
            raise LaunchError(f"no DeepSpeed engine state in {directory}; the checkpoint was saved by another strategy")

    def teardown(self) -> None:
        destroy_process_group()


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

    converts_input = True  # (the loop calls convert_input only where this is true)

    def __init__(self, strategy: DeepSpeed, name: str) -> None:
        self.strategy, self.name = strategy, name
        self._dtype = {"bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}.get(name)
        self.converts_input = self._dtype is not None

    def autocast(self):
        return _NULL

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


_NULL = nullcontext()
