"""The training loop: steps, accumulation, clipping, evaluation, checkpoints, stop requests.
Everything a recipe does not supply. What it measures is :mod:`launcher.runtime.window`'s, what
it decides from evaluations :mod:`launcher.runtime.monitor`'s; the worker builds its parts."""

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
from launcher.rundir import CHECKPOINT_TMP_PREFIX
from launcher.runtime import checkpoint as ckpt
from launcher.runtime import rng
from launcher.runtime.data import to_device
from launcher.runtime.monitor import Monitor
from launcher.runtime.signals import EXIT_FOR, StopCheck
from launcher.runtime.window import MetricWindow, peak_memory, run_totals, scalar, window_event


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


class NonFiniteLoss(LaunchError):
    """The loss became NaN or infinite: the run stops as failed (exit 1), no checkpoint of it is saved."""


def planned_steps(cfg: Config, batches_per_epoch: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps) of a run: what length-dependent
    schedules are planned for."""
    t = cfg.train
    per_epoch = math.ceil(batches_per_epoch / t.grad_accum_steps)
    total = per_epoch * t.epochs
    return per_epoch, min(total, t.max_steps) if t.max_steps else total


def restore_parts(
    loaded: dict[str, Any], strategy: Any, model: Any, optimizer: Any, scheduler: Any, precision: Any
) -> None:
    """Put a loaded checkpoint's model, optimizer, scheduler and scaler state into those objects
    (before anything of the run is written: a checkpoint the strategy refuses changes nothing)."""
    state = loaded["state"]
    strategy.load_state(loaded, model, optimizer)
    if scheduler is not None and state[ckpt.K_SCHEDULER]:
        scheduler.load_state_dict(state[ckpt.K_SCHEDULER])
    precision.load_state_dict(state[ckpt.K_SCALER])


@dataclass
class Parts:
    """Everything the loop needs, built by the worker (launcher/runtime/worker.py: build)."""

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
    stop: Any
    loggers: Any  # launcher.runtime.loggers.Loggers on rank 0, None elsewhere
    console: Any
    world_size: int = 1
    wandb_id: str | None = None
    test_loader: Any = None  # the recipe's test split: evaluated once, at the end of a completed run  # the wandb run the loggers log to (rank 0)


_STOP, _FINISHED = "stop", "finished"  # how an epoch's batches ended early


def evaluation_sums(
    recipe: Any, model: torch.nn.Module, loader: Any, strategy: Any, precision: Any
) -> dict[str, float]:
    """This rank's sums of ``recipe.step`` over ``loader`` with ``model`` (unwrapped) in eval mode
    under ``no_grad``; add them over the ranks (``strategy.comm.reduce_sums``) for exact totals.
    The random streams are as they were before (a dataset or model that draws random numbers in
    eval would otherwise make training depend on the evaluation cadence). Used by the loop's
    validation and test passes and by ``launch eval``."""
    was_training = model.training
    model.eval()
    saved_rng = rng.capture()
    sums: dict[str, Any] = {}
    with torch.no_grad():
        for batch in loader:
            batch = precision.convert_input(to_device(batch, strategy.device))
            with precision.autocast():
                _, s = recipe.step(model, batch)
            for k, v in s.items():
                sums[k] = sums[k] + v if k in sums else v
        if strategy.collective_forward:
            _match_forwards(recipe, model, loader, strategy, precision)
    model.train(was_training)
    rng.restore(saved_rng)
    return {k: scalar(v) for k, v in sums.items()}


def _match_forwards(recipe: Any, model: torch.nn.Module, loader: Any, strategy: Any, precision: Any) -> None:
    """Where a forward is a collective (FSDP gathers parameters), every rank must run as many as
    the rank with the most evaluation batches: the others repeat one sample and drop the result."""
    done = len(loader)
    extra = strategy.comm.max_int(done) - done
    if extra <= 0:
        return
    batch = precision.convert_input(to_device(loader.collate_fn([loader.dataset[0]]), strategy.device))
    for _ in range(extra):
        with precision.autocast():
            recipe.step(model, batch)


class Trainer:
    def __init__(self, parts: Parts, resume: dict[str, Any] | None = None) -> None:
        """``resume``: the loaded checkpoint (CheckpointManager.load_*) to continue from, once
        :func:`restore_parts` has restored the parts from it."""
        self.p = parts
        self.cfg = parts.cfg
        self.progress = Progress()
        self.trackers = Trackers()
        self.window = MetricWindow()
        self.grad_norm: Any = None  # of the step `grad_norm_step` (a tensor until logged)
        self.grad_norm_step = -1
        self.attempt_start = time.perf_counter()
        self.attempt_start_step: int | None = None  # global step at which this attempt's fit() began
        self.stop_check: StopCheck | None = None  # (set by fit)
        self.params = [q for g in parts.optimizer.param_groups for q in g["params"]]
        # train.l1: over what weight decay applies to (trainable, ndim > 1: no biases, no norms)
        self.l1_params = [q for q in self.params if q.ndim > 1] if self.cfg.train.l1 else []
        self.monitor = Monitor(self.cfg, parts.scheduler)
        self.epoch_scheduler = (  # steps once per epoch instead of per optimizer step
            parts.scheduler is not None
            and self.monitor.plateau is None
            and self.cfg.train.scheduler_interval == "epoch"
        )
        t = self.cfg.train
        self.cadence = (t.log_every, t.eval_every, self.cfg.checkpoint.every_steps, t.max_steps)  # (every step)
        self.steps_per_epoch, self.total_steps = planned_steps(self.cfg, parts.train_sampler.batches_per_epoch())
        if resume is not None:
            self._load(resume)
        if parts.loggers is not None:
            self.trackers.wandb_id = parts.wandb_id

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
            ckpt.K_TRACKERS: {**asdict(self.trackers), **self.window.state()},
            ckpt.K_RECIPE: self.cfg.recipe,
        }

    def _load(self, loaded: dict[str, Any]) -> None:
        """The loop's own state from a checkpoint whose model, optimizer, scheduler and scaler
        state :func:`restore_parts` put into the parts; the random streams last."""
        state = loaded["state"]
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
        self.window = MetricWindow.pop_state(tr, self.p.strategy.device, self.progress.global_step)
        self.trackers = Trackers(**tr)
        if loaded["rng"] is not None:
            rng.restore(loaded["rng"])

    def wall_time(self) -> float:
        return self.progress.wall_time + (time.perf_counter() - self.attempt_start)

    def totals(self) -> dict[str, Any]:
        """Totals over every attempt (for summary.json)."""
        return run_totals(self.trackers, self._memory())

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> None:
        self._check_window()  # a diverged model is never checkpointed
        t0 = time.perf_counter()
        try:
            self._save()
        finally:
            dt = time.perf_counter() - t0
            self.window.other += dt
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
            staging = p.checkpoints.root / s.comm.broadcast(
                f"{CHECKPOINT_TMP_PREFIX}{s.shard_dir}-{step}-{uuid.uuid4().hex[:8]}"
            )
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
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,  # what a length-dependent schedule was planned for
            "strategy": s.name,
            "metrics": {**self.trackers.last_train, **self.trackers.last_val},
        }
        weights = getattr(p.recipe, "class_weights", None)
        if weights is not None:
            meta["class_weights"] = [float(w) for w in weights.tolist()]  # what the loss was weighted by
        p.checkpoints.save(
            step, model_state, self.state(), rngs, meta, to_yaml(self.cfg), shards=shards, pending=pending
        )

    # ------------------------------------------------------------------ metrics
    def _memory(self) -> dict[str, float]:
        out = peak_memory(self.p.strategy.device)
        t = self.trackers
        t.rss_peak_mb = max(t.rss_peak_mb, out["memory/rss_peak_mb"])
        if "memory/cuda_peak_mb" in out:
            t.cuda_peak_mb = max(t.cuda_peak_mb or 0.0, out["memory/cuda_peak_mb"])
        return out

    def _metrics(self, sums: dict[str, float], prefix: str) -> tuple[dict[str, float], dict[str, Any]]:
        """(``sums`` added up over every rank, the recipe's metrics of them named ``prefix/...``)."""
        totals = self.p.strategy.comm.reduce_sums(sums)
        return totals, {f"{prefix}/{k}": v for k, v in self.p.recipe.metrics(totals).items()}

    def _log_train(self) -> None:
        prog, t, window = self.progress, self.trackers, self.window
        totals, metrics = self._metrics(window.totals(), "train")
        self._check_losses(metrics)
        timing, train_time, wait = window_event(totals, window, prog.global_step)
        event = {"step": prog.global_step, "epoch": prog.epoch, **metrics, "lr": self.p.optimizer.param_groups[0]["lr"]}
        if self.grad_norm is not None and self.grad_norm_step == prog.global_step:
            event["grad_norm"] = scalar(self.grad_norm)
        event.update(timing)
        event.update(self._memory())
        t.last_train = metrics
        t.samples_trained += totals.get("count", 0)
        t.time_train += train_time
        t.time_data_wait += wait
        window.reset(prog.global_step)
        self.grad_norm = None
        if self.p.strategy.is_main:
            self.p.loggers.log(event)
            shown = {k.split("/")[-1]: v for k, v in metrics.items() if k.endswith(("loss", "acc"))}
            self.p.console.postfix({**shown, "samples/s": event["samples_per_sec"]})
        window.restart_clock()  # the logging itself is not training time

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
            self._check_losses(self._metrics(self.window.totals(), "train")[1])

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

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> bool:
        """Evaluate, log, update best/early-stopping/plateau. Returns True to stop early."""
        p, t = self.p, self.trackers
        if p.val_loader is None or t.last_eval_step == self.progress.global_step:
            return False
        self._check_window()
        t0 = time.perf_counter()
        metrics = self._evaluate_on(p.val_loader, "val")
        t.last_val, t.last_eval_step = metrics, self.progress.global_step
        seconds = time.perf_counter() - t0
        self.window.other += seconds
        t.time_eval += seconds
        self._show(metrics, {"time/eval_sec": seconds})
        stop = self.monitor.update(t, metrics, self.progress.global_step)
        return p.strategy.comm.any(stop)

    def test(self) -> dict[str, float]:
        """The test split's metrics (``test/...``) with the weights the model has now, logged at
        this step; {} without a test split. Training never looks at them."""
        if self.p.test_loader is None:
            return {}
        metrics = self._evaluate_on(self.p.test_loader, "test")
        self._show(metrics, {})
        return metrics

    def _show(self, metrics: dict[str, float], extra: dict[str, float]) -> None:
        if self.p.strategy.is_main:
            event = {"step": self.progress.global_step, "epoch": self.progress.epoch, **metrics}
            self.p.loggers.log({**event, **extra})
            shown = "  ".join(f"{k}={v:.4f}" for k, v in metrics.items())
            self.p.console.write(f"step {self.progress.global_step} epoch {self.progress.epoch}: {shown}")

    def _evaluate_on(self, loader: Any, split: str) -> dict[str, float]:
        """One pass over ``loader`` in eval mode, exact sums over every rank -> ``split/...`` metrics."""
        p = self.p
        p.strategy.sync_buffers(p.model)  # rank 0's BatchNorm statistics on every rank
        sums = evaluation_sums(p.recipe, p.strategy.unwrap(p.model), loader, p.strategy, p.precision)
        _, metrics = self._metrics(sums, split)
        if split == "val":  # (a NaN test loss is reported as it is: the run has ended)
            self._check_losses(metrics)
        return metrics

    # ------------------------------------------------------------------ the loop
    def fit(self) -> tuple[str, int]:
        """Train until done, early-stopped, or asked to stop. Returns (status, exit code)."""
        p, prog, t = self.p, self.progress, self.cfg.train
        comm = p.strategy.comm
        # one process looks at its flag every step; ranks must agree (a collective, so not every step)
        self.stop_check = StopCheck(comm, p.stop, prog.global_step) if p.world_size > 1 else None
        self.window.restart_clock()  # set-up time of this attempt is not training time
        if prog.global_step == 0 and prog.batch_in_epoch == 0:
            self.trackers.epoch_start = self.wall_time()  # nor is it part of the first epoch
        self.attempt_start_step = prog.global_step
        # a stop requested while the run was being set up (or recorded by the Slurm batch script
        # before the workers could receive it): the ranks agree, and nothing is trained
        if comm.any(p.stop.check_request_file()):
            return self._stop()
        finished = self.trackers.early_stopped or prog.global_step >= (t.max_steps or math.inf)
        while not finished and prog.epoch < t.epochs:
            ended = self._train_epoch()
            if ended == _STOP:
                return self._stop()
            finished = ended == _FINISHED
            if prog.batch_in_epoch >= p.train_sampler.batches_per_epoch():  # the epoch is complete
                prog.epoch += 1
                prog.batch_in_epoch = 0
                finished = self.evaluate() or finished
                if self.epoch_scheduler:  # (train.scheduler_interval=epoch: after the epoch's evaluation)
                    p.scheduler.step()
                self._end_epoch()
                self.save()
                if comm.any(p.stop.requested):
                    return self._stop()
        if self.window:
            self._log_train()
        self.evaluate()
        self.save()
        p.checkpoints.wait()
        return "completed", EXIT_COMPLETED

    def _train_epoch(self) -> str | None:
        """The current epoch's batches from where the run stands: forward/backward per micro-batch,
        an optimizer step per accumulation group, then what is due at that step. Returns _STOP,
        _FINISHED (max_steps, early stopping), or None when the batches ran out."""
        p, prog, t = self.p, self.progress, self.cfg.train
        device = p.strategy.device
        non_blocking = device.type == "cuda"
        move = device.type != "cpu"  # the loader's batches are already on the CPU
        convert = p.precision.converts_input
        model, optimizer, scheduler, precision, recipe = p.model, p.optimizer, p.scheduler, p.precision, p.recipe
        step_scheduler = scheduler is not None and self.monitor.plateau is None and not self.epoch_scheduler
        accum, clip, params = t.grad_accum_steps, t.grad_clip, self.params
        l1, l1_params = t.l1, self.l1_params
        sampler, window = p.train_sampler, self.window
        n_batches = sampler.batches_per_epoch()
        clock = time.perf_counter
        # bound once: the loop below runs every step, and small models expose every lookup
        autocast, backward, optimizer_step = precision.autocast, precision.backward, precision.step
        # (not recipe.step: it is a checking stand-in until its first call returns, then steps aside)
        zero_grad, add_window, no_sync, after_step = (
            optimizer.zero_grad,
            window.add,
            p.strategy.no_sync,
            self._after_step,
        )
        log_every = t.log_every
        hist_every = p.loggers.histogram_every if p.loggers is not None else 0
        unwrapped = p.strategy.unwrap(model) if hist_every else None
        sampler.set_epoch(prog.epoch, prog.batch_in_epoch)
        model.train()
        batches = iter(p.train_loader)
        while True:
            t0 = clock()
            batch = next(batches, _END)
            window.wait += clock() - t0  # time blocked in the data loader
            if batch is _END:
                return None
            i = prog.batch_in_epoch
            prog.batch_in_epoch = i + 1
            boundary = prog.batch_in_epoch % accum == 0 or prog.batch_in_epoch == n_batches
            # gradient of the group's mean, also for a shorter last group
            divisor = min(accum, n_batches - (i // accum) * accum)
            if move:
                batch = to_device(batch, device, non_blocking)
            if convert:
                batch = precision.convert_input(batch)
            with no_sync(model) if not boundary else _NULL:
                with autocast():
                    loss, sums = recipe.step(model, batch)
                if l1_params:  # (the logged loss stays the recipe's: sums)
                    loss = loss + l1 * torch.stack([q.abs().sum() for q in l1_params]).sum()
                backward(loss / divisor if divisor != 1 else loss)
            add_window(sums)
            if not boundary:
                continue
            norm = optimizer_step(optimizer, params, clip)  # pre-clip norm when clipping
            upcoming = prog.global_step + 1
            if norm is not None:
                self.grad_norm, self.grad_norm_step = norm, upcoming
            elif upcoming % log_every == 0:  # (every rank: over shards it is a collective)
                self.grad_norm, self.grad_norm_step = p.strategy.grad_norm(params), upcoming
            if hist_every and upcoming % hist_every == 0:  # (before the gradients are zeroed)
                p.loggers.histograms(unwrapped, upcoming)
            zero_grad(set_to_none=True)
            if step_scheduler:
                scheduler.step()
            prog.global_step += 1
            ended = after_step(prog.global_step)
            if ended is not None:
                return ended

    def _after_step(self, step: int) -> str | None:
        """What is due after optimizer step ``step``: the progress bar, a log event, an
        evaluation, a checkpoint, a stop request, the end of training."""
        p = self.p
        log_every, eval_every, every_ckpt, max_steps = self.cadence
        p.console.update()
        if step % log_every == 0:
            self._log_train()
        finished = bool(eval_every) and step % eval_every == 0 and self.evaluate()
        if every_ckpt and step % every_ckpt == 0:
            self.save()
        if p.stop.status is not None if self.stop_check is None else self.stop_check(step):
            return _STOP
        if finished or (max_steps and step >= max_steps):
            return _FINISHED
        return None

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


_NULL = nullcontext()  # reusable: no object per step
_END = object()  # the end of an epoch's batches
