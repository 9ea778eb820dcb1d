"""The training loop: steps, accumulation, clipping, evaluation, early stopping, checkpoints,
stop requests. Everything a recipe does not supply."""

from __future__ import annotations

import math
import sys
import time
import uuid
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from launcher.config import Config, to_yaml
from launcher.errors import EXIT_COMPLETED, LaunchError
from launcher.recipe_loader import UnknownMetric, unknown_metric_message
from launcher.runtime import checkpoint as ckpt
from launcher.runtime import rng
from launcher.runtime.data import to_device
from launcher.runtime.signals import EXIT_FOR, StopCheck


@dataclass
class Progress:
    global_step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # micro-batches of the current epoch consumed by this rank
    wall_time: float = 0.0  # seconds spent training before this attempt
    world_size: int = 1  # processes when the checkpoint was taken


@dataclass
class Trackers:
    best_value: float | None = None
    best_step: int | None = None
    es_best: float | None = None
    es_bad_evals: int = 0
    early_stopped: bool = False
    last_eval_step: int = -1
    last_val: dict[str, float] = field(default_factory=dict)
    last_train: dict[str, float] = field(default_factory=dict)
    metrics_offset: int | None = None  # length of metrics.jsonl when the checkpoint was taken
    # totals over all attempts (up to the checkpoint), reported in summary.json
    samples_trained: int = 0
    time_train: float = 0.0  # seconds of training steps (evaluations and checkpoints excluded)
    time_data_wait: float = 0.0  # ... of which spent waiting for the data loader
    time_eval: float = 0.0
    time_checkpoint: float = 0.0
    epoch_start: float = 0.0  # wall_time() when the current epoch began
    epoch_times: list[float] = field(default_factory=list)
    rss_peak_mb: float = 0.0
    cuda_peak_mb: float | None = None
    wandb_id: str | None = None  # the wandb run this run logs to (also in the run directory)


def _better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _scalar(v: Any) -> float:
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


class NonFiniteLoss(LaunchError):
    """The loss became NaN or infinite: the run stops as failed (exit 1), no checkpoint of it is saved."""


@dataclass
class Parts:
    """Everything the loop needs, built by the worker."""

    cfg: Config
    recipe: Any
    strategy: Any
    model: torch.nn.Module  # wrapped by the strategy
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Any
    train_sampler: Any
    train_loader: Any
    val_loader: Any
    checkpoints: ckpt.CheckpointManager
    run_dir: Any
    stop: Any
    loggers: Any  # launcher.runtime.loggers.Loggers on rank 0, None elsewhere
    console: Any
    info: Any
    world_size: int = 1


class Trainer:
    def __init__(self, parts: Parts) -> None:
        self.p = parts
        self.cfg = parts.cfg
        self.progress = Progress()
        self.trackers = Trackers()
        # the sums of each step since the last log, added up only when logged (fold_window):
        # one list append per step instead of one tensor addition per metric
        self.window: list[dict[str, Any]] = []
        self.window_start = time.perf_counter()
        self.window_carry = 0.0  # training seconds of the current window before this attempt
        self.window_wait = 0.0  # seconds of the window spent waiting for data
        self.window_other = 0.0  # seconds of the window spent evaluating and checkpointing
        self.window_step0 = 0  # global step when the window began
        self.grad_norm: Any = None  # of the step `grad_norm_step` (a tensor until logged)
        self.grad_norm_step = -1
        self.attempt_start = time.perf_counter()
        self.attempt_start_step: int | None = None  # global step at which this attempt's fit() began
        self.params = [q for g in parts.optimizer.param_groups for q in g["params"]]
        self.plateau = isinstance(parts.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        es = self.cfg.train.early_stopping
        self.plateau_metric = es.monitor or self.cfg.checkpoint.monitor
        self.plateau_mode = es.mode if es.monitor else self.cfg.checkpoint.mode

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        sched = self.p.scheduler
        if self.p.loggers is not None:
            self.trackers.metrics_offset = self.p.loggers.offset()
        return {
            ckpt.K_OPTIMIZER: self.p.strategy.optimizer_state(self.p.optimizer),
            ckpt.K_SCHEDULER: sched.state_dict() if sched is not None else {},
            ckpt.K_SCALER: self.p.precision.state_dict(),
            ckpt.K_PROGRESS: {**asdict(self.progress), "wall_time": self.wall_time(), "world_size": self.p.world_size},
            ckpt.K_TRACKERS: {
                **asdict(self.trackers),
                # kept as they are (dtype included), so the logged values after a resume are exact
                "window": [
                    {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in sums.items()}
                    for sums in self.window
                ],
                "window_time": self._window_train_time(),
                "window_wait": self.window_wait,
                "window_step0": self.window_step0,
            },
            ckpt.K_RECIPE: self.cfg.recipe,
        }

    def load(self, loaded: dict[str, Any]) -> None:
        state = loaded["state"]
        self.p.strategy.load_state(loaded, self.p.model, self.p.optimizer)
        if self.p.scheduler is not None and state[ckpt.K_SCHEDULER]:
            self.p.scheduler.load_state_dict(state[ckpt.K_SCHEDULER])
        self.p.precision.load_state_dict(state[ckpt.K_SCALER])
        known = Progress.__dataclass_fields__
        self.progress = Progress(**{k: v for k, v in state[ckpt.K_PROGRESS].items() if k in known})
        old_world = self.progress.world_size
        if old_world != self.p.world_size:
            # Another process count: keep the share of the epoch already seen. Each rank had
            # consumed batch_in_epoch batches of its shard; continue at the same fraction of the
            # (reshuffled-into-new-shards) epoch. Exact only with the same process count.
            consumed = self.progress.batch_in_epoch * old_world
            self.progress.batch_in_epoch = consumed // self.p.world_size
            self.progress.world_size = self.p.world_size
        tr = dict(state[ckpt.K_TRACKERS])
        window = tr.pop("window", [])
        tr.pop("window_samples", None)  # written by earlier versions; now the window's "count"
        self.window_carry = tr.pop("window_time", 0.0)
        self.window_wait = tr.pop("window_wait", 0.0)
        self.window_step0 = tr.pop("window_step0", self.progress.global_step)
        device = self.p.strategy.device
        if isinstance(window, dict):  # earlier versions kept the running sums
            window = [window] if window else []
        self.window = [
            {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in sums.items()} for sums in window
        ]
        self.trackers = Trackers(**tr)
        if loaded["rng"] is not None:
            rng.restore(loaded["rng"])

    def wall_time(self) -> float:
        return self.progress.wall_time + (time.perf_counter() - self.attempt_start)

    def totals(self) -> dict[str, Any]:
        """Totals over every attempt (for summary.json), named like the per-window metrics."""
        t = self.trackers
        train = t.time_train
        return {
            "samples_per_sec": t.samples_trained / train if train > 0 else None,
            "time/train_sec": train,
            "time/data_wait_sec": t.time_data_wait,
            "time/data_wait_frac": t.time_data_wait / train if train > 0 else None,
            "time/eval_sec": t.time_eval,
            "time/checkpoint_sec": t.time_checkpoint,
            "time/epoch_sec": list(t.epoch_times),
            "memory/rss_peak_mb": max(t.rss_peak_mb, self._memory()["memory/rss_peak_mb"]),
            "memory/cuda_peak_mb": t.cuda_peak_mb,
        }

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        self._check_window()  # a diverged model is never checkpointed
        t0 = time.perf_counter()
        try:
            self._save()
        finally:
            dt = time.perf_counter() - t0
            self.window_other += dt
            self.trackers.time_checkpoint += dt

    def _save(self) -> None:
        """Every rank calls this at the same step: RNG states are gathered on rank 0, which writes.

        With a strategy that shards model/optimizer state (``shard_dir``: DeepSpeed, FSDP), every
        rank first writes its share into a staging directory that becomes ``shard_dir`` inside
        the checkpoint (in the background with ``checkpoint.async``: rank 0's writer waits for
        it), before the checkpoint is renamed and marked complete."""
        p, s = self.p, self.p.strategy
        step = self.progress.global_step
        p.checkpoints.wait()  # every rank: at most one save in flight (its own share of it too)
        rngs = s.comm.gather(rng.capture())
        shards = pending = None
        if s.shard_dir is not None:
            if p.checkpoints.is_complete(step):
                return
            staging = p.checkpoints.root / s.comm.broadcast(f".tmp-{s.shard_dir}-{step}-{uuid.uuid4().hex[:8]}")
            pending = s.save_shards(staging, p.model, p.optimizer, background=p.checkpoints.async_write)
            if pending is None:
                s.comm.barrier()  # every share is on disk
            shards = (s.shard_dir, staging)
        model_state = s.checkpoint_weights(p.model)  # collective under ZeRO-3
        if not s.is_main:
            p.checkpoints.pending = pending  # (waited for at the next save)
            return
        meta = {
            "step": step,
            "epoch": self.progress.epoch,
            "batch_in_epoch": self.progress.batch_in_epoch,
            "world_size": p.world_size,
            "steps_per_epoch": self.steps_per_epoch(),
            "total_steps": self.total_steps(),  # what a length-dependent schedule was planned for
            "strategy": s.name,
            "metrics": {**self.trackers.last_train, **self.trackers.last_val},
        }
        p.checkpoints.save(
            step, model_state, self.state(), rngs, meta, to_yaml(self.cfg), shards=shards, pending=pending
        )

    # ------------------------------------------------------------------ metrics
    def _add_window(self, sums: dict[str, Any]) -> None:
        for v in sums.values():
            if isinstance(v, torch.Tensor) and v.requires_grad:
                # kept with its graph, the window would hold every step's graph
                sums = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in sums.items()}
                break
        window = self.window
        window.append(sums)
        if len(window) >= WINDOW_FOLD:  # a long log_every: bounded memory (and still exact on resume)
            self.window = [fold_window(window)]

    def _window_train_time(self) -> float:
        """Seconds of training steps in the current logging window (evaluation and checkpoints excluded)."""
        return self.window_carry + time.perf_counter() - self.window_start - self.window_other

    def _memory(self) -> dict[str, float]:
        """Peak memory so far: this process's RSS, and CUDA memory when on a GPU."""
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        t = self.trackers
        t.rss_peak_mb = max(t.rss_peak_mb, rss)
        out = {"memory/rss_peak_mb": rss}
        device = self.p.strategy.device
        if device.type == "cuda":
            cuda = torch.cuda.max_memory_allocated(device) / 2**20
            t.cuda_peak_mb = max(t.cuda_peak_mb or 0.0, cuda)
            out["memory/cuda_peak_mb"] = cuda
        return out

    def _grad_norm(self) -> Any:
        """Global L2 norm of the gradients of the step just taken (at logging steps only, on the
        device: no sync until it is logged), as the strategy computes it (over shards)."""
        return self.p.strategy.grad_norm(self.params)

    def _log_train(self) -> None:
        totals = self.p.strategy.comm.reduce_sums({k: _scalar(v) for k, v in fold_window(self.window).items()})
        metrics = {f"train/{k}": v for k, v in self.p.recipe.metrics(totals).items()}
        self._check_losses(metrics)
        prog, t = self.progress, self.trackers
        train_time = max(self._window_train_time(), 1e-9)
        wait = min(self.window_wait, train_time)
        steps = max(1, prog.global_step - self.window_step0)
        samples = totals.get("count", 0)  # of all ranks
        event = {
            "step": prog.global_step,
            "epoch": prog.epoch,
            **metrics,
            "lr": self.p.optimizer.param_groups[0]["lr"],
        }
        if self.grad_norm is not None and self.grad_norm_step == prog.global_step:
            event["grad_norm"] = _scalar(self.grad_norm)
        event.update(
            {
                "samples_per_sec": samples / train_time,
                "time/step_sec": train_time / steps,
                "time/data_wait_sec": wait / steps,
                "time/compute_sec": (train_time - wait) / steps,
                "time/data_wait_frac": wait / train_time,
                **self._memory(),
            }
        )
        t.last_train = metrics
        t.samples_trained += samples
        t.time_train += train_time
        t.time_data_wait += wait
        self.window = []
        self.window_carry = self.window_wait = self.window_other = 0.0
        self.window_step0 = prog.global_step
        self.grad_norm = None
        if self.p.strategy.is_main:
            self.p.loggers.log(event)
            shown = {k.split("/")[-1]: v for k, v in metrics.items() if k.endswith(("loss", "acc"))}
            self.p.console.postfix({**shown, "samples/s": event["samples_per_sec"]})
        self.window_start = time.perf_counter()  # the logging itself is not training time

    def _check_losses(self, metrics: dict[str, Any]) -> None:
        """Stop the run when a loss (``*loss`` metric, summed over the ranks: every rank agrees)
        is NaN or infinite. Checked where the values are numbers already: logging steps,
        evaluations and before checkpoints, never per step."""
        for key, value in metrics.items():
            if key.endswith("loss") and isinstance(value, (int, float)) and not math.isfinite(value):
                prog = self.progress
                raise NonFiniteLoss(
                    f"{key} is {value} at step {prog.global_step} (epoch {prog.epoch}); "
                    "lower train.lr, use train.grad_clip, or check the data"
                )

    def _check_window(self) -> None:
        """The training loss of the steps not logged yet (before an evaluation or a checkpoint)."""
        if self.window:
            totals = self.p.strategy.comm.reduce_sums({k: _scalar(v) for k, v in fold_window(self.window).items()})
            self._check_losses({f"train/{k}": v for k, v in self.p.recipe.metrics(totals).items()})

    def _end_epoch(self) -> None:
        """At an epoch end (after its evaluation): the epoch's wall time."""
        t = self.trackers
        now = self.wall_time()
        seconds = now - t.epoch_start
        t.epoch_times.append(seconds)
        t.epoch_start = now
        if self.p.strategy.is_main:
            self.p.loggers.log(
                {"step": self.progress.global_step, "epoch": self.progress.epoch, "time/epoch_sec": seconds}
            )

    def evaluate(self) -> bool:
        """Evaluate, log, update best/early-stopping/plateau. Returns True to stop early."""
        p, t = self.p, self.trackers
        if p.val_loader is None or t.last_eval_step == self.progress.global_step:
            return False
        self._check_window()
        t0 = time.perf_counter()
        p.strategy.sync_buffers(p.model)  # rank 0's BatchNorm statistics on every rank
        model = p.strategy.unwrap(p.model)
        was_training = model.training
        model.eval()
        # Evaluation must not move training's random streams (a dataset or model that draws
        # random numbers in eval would otherwise make results depend on the eval cadence).
        saved_rng = rng.capture()
        sums: dict[str, Any] = {}
        with torch.no_grad():
            for batch in p.val_loader:
                batch = p.precision.convert_input(to_device(batch, p.strategy.device))
                with p.precision.autocast():
                    _, s = p.recipe.step(model, batch)
                for k, v in s.items():
                    sums[k] = sums[k] + v if k in sums else v
            if p.strategy.collective_forward:
                self._match_forwards(model, len(p.val_loader))
        model.train(was_training)
        rng.restore(saved_rng)
        totals = p.strategy.comm.reduce_sums({k: _scalar(v) for k, v in sums.items()})
        metrics = {f"val/{k}": v for k, v in p.recipe.metrics(totals).items()}
        self._check_losses(metrics)
        t.last_val, t.last_eval_step = metrics, self.progress.global_step
        seconds = time.perf_counter() - t0
        self.window_other += seconds
        t.time_eval += seconds
        if p.strategy.is_main:
            event = {"step": self.progress.global_step, "epoch": self.progress.epoch, **metrics}
            p.loggers.log({**event, "time/eval_sec": seconds})
            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            p.console.write(f"step {self.progress.global_step} epoch {self.progress.epoch}: {shown}")
        return self._track(metrics)

    def _match_forwards(self, model: torch.nn.Module, done: int) -> None:
        """Where a forward is a collective (FSDP gathers parameters), every rank must run as
        many as the rank with the most evaluation batches: the others repeat one sample and
        drop the result."""
        p = self.p
        extra = p.strategy.comm.max_int(done) - done
        if extra <= 0:
            return
        loader = p.val_loader
        batch = p.precision.convert_input(to_device(loader.collate_fn([loader.dataset[0]]), p.strategy.device))
        for _ in range(extra):
            with p.precision.autocast():
                p.recipe.step(model, batch)

    def _metric(self, metrics: dict[str, float], name: str, key: str) -> float:
        available = {**self.trackers.last_train, **metrics}
        if name not in available:  # (a recipe's declared metric_names were checked before training)
            raise UnknownMetric(unknown_metric_message(key, name, sorted(available)))
        return available[name]

    def _track(self, metrics: dict[str, float]) -> bool:
        cfg, t = self.cfg, self.trackers
        c = cfg.checkpoint
        if c.keep_best or c.monitor in metrics:
            value = self._metric(metrics, c.monitor, "checkpoint.monitor")
            if _better(value, t.best_value, c.mode):
                t.best_value, t.best_step = value, self.progress.global_step
        if self.plateau:
            self.p.scheduler.step(self._metric(metrics, self.plateau_metric, "train.early_stopping.monitor"))
        es = cfg.train.early_stopping
        if es.monitor:
            value = self._metric(metrics, es.monitor, "train.early_stopping.monitor")
            if _better(value, t.es_best, es.mode, es.min_delta):
                t.es_best, t.es_bad_evals = value, 0
            else:
                t.es_bad_evals += 1
            if t.es_bad_evals >= es.patience:
                t.early_stopped = True
        return self.p.strategy.comm.any(t.early_stopped)

    # ------------------------------------------------------------------ the loop
    def steps_per_epoch(self) -> int:
        return math.ceil(self.p.train_sampler.batches_per_epoch() / self.cfg.train.grad_accum_steps)

    def total_steps(self) -> int:
        t = self.cfg.train
        total = self.steps_per_epoch() * t.epochs
        return min(total, t.max_steps) if t.max_steps else total

    def fit(self) -> tuple[str, int]:
        """Train until done, early-stopped, or asked to stop. Returns (status, exit code)."""
        p, cfg, prog = self.p, self.cfg, self.progress
        t = cfg.train
        accum, log_every, eval_every = t.grad_accum_steps, t.log_every, t.eval_every
        every_ckpt = cfg.checkpoint.every_steps
        max_steps = t.max_steps or math.inf
        device = p.strategy.device
        non_blocking = device.type == "cuda"
        move = device.type != "cpu"  # the loader's batches are already on the CPU
        convert = p.precision.converts_input
        model, optimizer, scheduler, precision, recipe = p.model, p.optimizer, p.scheduler, p.precision, p.recipe
        step_scheduler = scheduler is not None and not self.plateau
        clip = t.grad_clip
        sampler = p.train_sampler
        n_batches = sampler.batches_per_epoch()
        finished = self.trackers.early_stopped or prog.global_step >= max_steps
        stop = p.stop
        # one process looks at its flag every step; ranks must agree (a collective, so not every step)
        stop_check = StopCheck(p.strategy.comm, stop, prog.global_step) if p.world_size > 1 else None
        clock = time.perf_counter
        # bound once: the loop below runs every step, and small models expose every lookup
        autocast, backward, optimizer_step = precision.autocast, precision.backward, precision.step
        # (not recipe.step: it is a checking stand-in until its first call returns, then steps aside)
        zero_grad, add_window = optimizer.zero_grad, self._add_window
        progress_bar = p.console.update
        loggers = p.loggers
        hist_every = loggers.histogram_every if loggers is not None else 0
        unwrapped = p.strategy.unwrap(model) if hist_every else None
        self.window_start = time.perf_counter()  # set-up time of this attempt is not training time
        if prog.global_step == 0 and prog.batch_in_epoch == 0:
            self.trackers.epoch_start = self.wall_time()  # nor is it part of the first epoch
        self.attempt_start_step = prog.global_step
        # a stop requested while the run was being set up (or recorded by the Slurm batch script
        # before the workers could receive it): the ranks agree, and nothing is trained
        if p.strategy.comm.any(stop.check_request_file()):
            return self._stop()

        while not finished and prog.epoch < t.epochs:
            sampler.set_epoch(prog.epoch, prog.batch_in_epoch)
            model.train()
            batches = iter(p.train_loader)
            while True:
                t0 = clock()
                batch = next(batches, _END)
                self.window_wait += clock() - t0  # time blocked in the data loader
                if batch is _END:
                    break
                i = prog.batch_in_epoch
                prog.batch_in_epoch = i + 1
                boundary = prog.batch_in_epoch % accum == 0 or prog.batch_in_epoch == n_batches
                # gradient of the group's mean, also for a shorter last group
                divisor = min(accum, n_batches - (i // accum) * accum)
                if move:
                    batch = to_device(batch, device, non_blocking)
                if convert:
                    batch = precision.convert_input(batch)
                with p.strategy.no_sync(model) if not boundary else _NULL:
                    with autocast():
                        loss, sums = recipe.step(model, batch)
                    backward(loss / divisor if divisor != 1 else loss)
                add_window(sums)
                if not boundary:
                    continue
                norm = optimizer_step(optimizer, self.params, clip)  # pre-clip norm when clipping
                upcoming = prog.global_step + 1
                if norm is not None:
                    self.grad_norm, self.grad_norm_step = norm, upcoming
                elif upcoming % log_every == 0:  # (every rank: over shards it is a collective)
                    self.grad_norm, self.grad_norm_step = self._grad_norm(), upcoming
                if hist_every and upcoming % hist_every == 0:
                    loggers.histograms(unwrapped, upcoming)
                zero_grad(set_to_none=True)
                if step_scheduler:
                    scheduler.step()
                prog.global_step += 1
                progress_bar()
                step = prog.global_step
                if step % log_every == 0:
                    self._log_train()
                if eval_every and step % eval_every == 0 and self.evaluate():
                    finished = True
                if every_ckpt and step % every_ckpt == 0:
                    self.save()
                if stop.status is not None if stop_check is None else stop_check(step):
                    return self._stop()
                if finished or step >= max_steps:
                    finished = True
                    break
            if prog.batch_in_epoch >= n_batches:  # the epoch is complete
                prog.epoch += 1
                prog.batch_in_epoch = 0
                if self.evaluate():
                    finished = True
                self._end_epoch()
                self.save()
                if p.strategy.comm.any(p.stop.requested):
                    return self._stop()
        if self.window:
            self._log_train()
        self.evaluate()
        self.save()
        self.p.checkpoints.wait()
        return "completed", EXIT_COMPLETED

    def _stop(self) -> tuple[str, int]:
        status = self.p.stop.status or "stopped"
        step = self.progress.global_step
        if step == self.attempt_start_step:
            # nothing trained in this attempt: the newest checkpoint (if any) already holds this state
            has = f"the newest checkpoint is step {step}" if step else "nothing was trained yet"
            said = f"{status} before the first step; nothing needed saving ({has})"
        else:
            self.save()
            self.p.checkpoints.wait()
            said = f"{status}: saved a checkpoint at step {step}"
        if self.p.strategy.is_main:  # (also with log.quiet: what was saved is never a detail)
            print(f"launch: {said}; run the same command to resume", file=sys.stderr, flush=True)
        return status, EXIT_FOR.get(status, 130)


def fold_window(window: list[dict[str, Any]]) -> dict[str, Any]:
    """The per-step sums of a logging window added up, key by key.

    The tensors of a key become one stacked sum (two operations on the device, however long
    the window, and no host sync); plain numbers are added in Python."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for sums in window for k in sums):
        values = [sums[key] for sums in window if key in sums]
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        total: Any = sum(v for v in values if not isinstance(v, torch.Tensor))
        if len(tensors) == 1:
            total = tensors[0] + total if total else tensors[0]
        elif tensors:
            try:
                stacked = torch.stack(tensors).sum()
            except RuntimeError:  # one-element tensors of different shapes: (1,) and ()
                stacked = torch.stack([t.reshape(()) for t in tensors]).sum()
            total = stacked + total if total else stacked
        out[key] = total
    return out


WINDOW_FOLD = 512  # per-step sums kept before they are folded into one
_NULL = nullcontext()  # reusable: no object per step
_END = object()  # the end of an epoch's batches
