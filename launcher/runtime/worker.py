"""Worker entry point: run directory -> environment -> strategy -> recipe -> loop -> summary.

``python -m launcher.runtime.worker RUN_DIR`` (what torchrun and Slurm start); a single process
calls :func:`main` inside ``launch`` itself (or in the interpreter it prewarmed).
"""

from __future__ import annotations

if __name__ == "__main__":
    # First, before any slow import: from here on a stop signal (Slurm sends them at any moment,
    # also in the first second of a requeued job) only sets the flag, and this process dies with
    # the one that started it (torchrun's agent, `launch`). Started by `launch`, the signals were
    # blocked until now (launcher/signals.py), so none that came earlier is lost.
    from launcher.signals import StopFlag as _StopFlag
    from launcher.signals import die_with_parent_from_env as _die_with_parent_from_env

    _die_with_parent_from_env()
    _StopFlag().install()

import gc
import json
import math
import os
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from launcher import yamlio
from launcher.config import config_class, to_plain, validate
from launcher.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_STOPPED, ConfigError, LaunchError, first_line
from launcher.recipe_loader import (
    check_classification,
    check_datasets,
    check_model,
    check_monitors,
    load_recipe,
    watch_first_step,
)
from launcher.rundir import (
    CONFIG_FILE,
    LOGS_DIR,
    MODEL_FILE,
    RunDir,
    config_changes,
    file_mode,
    global_batch_line,
    holds_secrets,
    rank_log_file,
    read_plan,
    shown_changes,
    write_atomic,
)
from launcher.runlock import RunBusy
from launcher.startup import imports_without_gc


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_run_config(rd: RunDir):
    tree = yamlio.load(rd.config.read_text())
    recipe_cls = load_recipe(tree["recipe"])
    return validate(config_class(recipe_cls), tree), recipe_cls


def _is_disposable(rd: RunDir) -> bool:
    """A run directory this attempt created and nothing of value is in yet."""
    return not rd.complete_checkpoints() and not rd.summary.exists()


def _remove_fresh(rd: RunDir, output_dir: Path) -> None:
    shutil.rmtree(rd.path, ignore_errors=True)
    # also the (now empty) parents we created, up to and including run.output_dir
    parent = rd.path.parent
    for _ in range(2):
        try:
            parent.rmdir()
        except OSError:
            break
        if parent == output_dir:
            break
        parent = parent.parent


def own_run_dir(rd: RunDir, env, strategy) -> None:
    """Inside a Slurm job: rank 0 owns the run directory (launcher/runlock.py: the job id as the
    holder) until its process exits; every rank gives up (RunBusy) if it could not, e.g. because
    a live local run owns it."""
    from launcher import runlock

    refused = None
    if env.is_main:
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        try:
            runlock.acquire_for_exit(
                rd.path, "worker", slurm_job=runlock.own_slurm_job(),
                slurm_restart=int(restart) if restart.isdigit() else 0,
            )  # fmt: skip
        except LaunchError as e:
            refused = e
    if strategy.comm.any(refused is not None):
        raise refused or RunBusy(f"{rd.path} is in use by another run (rank 0 could not own it)")


def json_safe(value):
    """``value`` with every NaN/infinite number as null (JSON has neither: summary.json stays valid)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    try:
        number = float(value)  # floats, and numpy / one-element torch numbers
    except (TypeError, ValueError):
        return value
    return number if math.isfinite(number) else None


def write_summary(rd: RunDir, summary: dict) -> None:
    try:
        write_atomic(rd.summary, json.dumps(json_safe(summary), indent=2, default=float) + "\n")
    except OSError as e:
        _say(f"warning: could not write {rd.summary}: {e.strerror}")


def main(run_dir: str) -> int:
    """Run (or resume) the training described by ``RUN_DIR/config.yaml``. Returns the exit code."""
    with imports_without_gc():
        import torch  # noqa: F401  (first torch import of a single-process run happens here)
        import torch._dynamo  # noqa: F401  (every torch.optim optimizer imports it: here, without GC passes)

        from launcher.runtime import checkpoint, loggers, loop, optim, strategies  # noqa: F401
        from launcher.runtime.env import DistEnv, torch_env_from_slurm

    rd = RunDir(Path(run_dir))
    under_slurm = bool(torch_env_from_slurm(os.environ))
    os.environ.update(torch_env_from_slurm(os.environ))  # an srun task of our batch script
    env = DistEnv.from_environ(os.environ)
    start = time.time()
    try:
        cfg, recipe_cls = load_run_config(rd)
    except LaunchError as e:
        _say(f"error: {e}")
        return EXIT_BAD_INPUT
    if not env.is_main:
        _redirect_output(rd, env.rank)
    quiet = cfg.log.quiet or not env.is_main

    def info(msg: str) -> None:
        if not quiet:
            _say(f"launch: {msg}")

    from launcher.runtime.strategies import make_strategy, resolve_device
    from launcher.signals import STOP_FILE_ENV, StopFlag

    stop = StopFlag().install()  # (takes over a stop requested before this point)
    if os.environ.get(STOP_FILE_ENV):
        stop.request_file = Path(os.environ[STOP_FILE_ENV])  # written by the Slurm batch script
    strategy = None
    try:
        plan = read_plan(rd.path) or {}  # what the parent resolved (run directories before plan.json: the config)
        device = resolve_device(plan.get("device", cfg.dist.device), env)
        strategy = make_strategy(plan.get("strategy", cfg.dist.strategy), env, device, cfg)
        if under_slurm:
            own_run_dir(rd, env, strategy)  # (a local run is owned by `launch` instead)
        parts, trainer, resumed_from = build(cfg, recipe_cls, rd, env, strategy, stop, info)
    except KeyboardInterrupt:  # a second Ctrl-C while the run was being set up
        stop.uninstall()
        if strategy is not None:
            strategy.teardown()
        _say("launch: aborted before training started; nothing needed saving")
        return EXIT_STOPPED
    except LaunchError as e:
        stop.uninstall()
        _say(f"error: {e}")
        if isinstance(e, RunBusy):
            pass  # another run owns the directory: its files (summary.json too) are left to it
        elif env.is_main and under_slurm:
            # the job's record (submit.sbatch, logs) stays; `launch status` shows the reason
            write_summary(rd, {"status": "failed", "exit_code": EXIT_BAD_INPUT, "reason": str(e)})
        elif env.is_main and _is_disposable(rd):
            _remove_fresh(rd, Path(cfg.run.output_dir))  # nothing written (the exit status says 2)
        if strategy is not None:
            strategy.teardown()
        return EXIT_BAD_INPUT
    except BaseException:
        stop.uninstall()
        if strategy is not None:
            strategy.teardown()
        raise
    info(global_batch_line(cfg, env.world_size))  # (once the run is sure to start: bad input stays one line)
    status, code, reason, tested = "failed", EXIT_FAILED, None, {}
    try:
        status, code = trainer.fit()
        if status == "completed":
            weights = strategy.full_weights(parts.model)  # collective where state is sharded
            if env.is_main:
                export_model(weights, cfg, rd)
            tested = trainer.test()  # once, with the weights model.safetensors now holds
    except LaunchError as e:
        reason = str(e)
        code = getattr(e, "exit_code", code)  # a monitor found unknown at the first evaluation: 2
        _say(f"error: {e}")
    except KeyboardInterrupt:
        status, code, reason = "stopped", EXIT_STOPPED, "aborted by a second Ctrl-C (no checkpoint written)"
        if env.is_main:
            _say("launch: aborted by a second Ctrl-C; the newest checkpoint is from before this interruption")
    except Exception as e:  # a bug or a broken recipe: keep the traceback
        reason = f"{type(e).__name__}: {e}"
        traceback.print_exc()
    finally:
        parts.console.close()
        stop.uninstall()
    try:
        parts.checkpoints.wait()  # a background save still in flight after an error
    except LaunchError as e:
        _say(f"error: {e}")
    if env.is_main:
        summary = make_summary(cfg, trainer, status, code, reason, resumed_from, start, tested)
        write_summary(rd, summary)
        parts.loggers.finish(status, code, summary)  # TensorBoard hparams, wandb summary and exit code
        parts.loggers.close()  # every backend and metrics.jsonl, once
        if status == "completed":
            shown = "  ".join(f"{k}={v:.4f}" for k, v in summary["final_metrics"].items())
            info(f"completed {summary['global_step']} steps in {summary['wall_time_sec']:.1f}s: {shown}")
            info(f"run directory: {rd.path}")
    # Drop the model and optimizer before the process group: otherwise 2-process gloo runs
    # sometimes abort at interpreter exit ("terminate called without an active exception").
    del parts, trainer
    gc.collect()
    strategy.teardown()
    return code


def _redirect_output(rd: RunDir, rank: int) -> None:
    """Ranks other than 0 write to ``logs/rank-<R>.log`` instead of the terminal."""
    log_dir = rd.path / LOGS_DIR
    log_dir.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_dir / rank_log_file(rank), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)  # (the umask applies)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    import socket

    node = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    world = os.environ.get("WORLD_SIZE", "?")
    _say(f"launch: rank {rank} of {world} on {node} (pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')})")


def make_summary(cfg, trainer, status, code, reason, resumed_from, start, tested=None) -> dict:
    prog, tr = trainer.progress, trainer.trackers
    t = cfg.train
    summary = {
        "status": status,
        "exit_code": code,
        "recipe": cfg.recipe,
        "global_step": prog.global_step,
        "epochs": prog.epoch + (prog.batch_in_epoch / max(1, trainer.p.train_sampler.batches_per_epoch())),
        "samples_seen": prog.global_step * t.batch_size * t.grad_accum_steps * trainer.p.world_size,
        "global_batch_size": t.batch_size * t.grad_accum_steps * trainer.p.world_size,
        "parameters": getattr(trainer, "parameter_counts", None),  # total, trainable, bytes
        "best": {"metric": cfg.checkpoint.monitor, "value": tr.best_value, "step": tr.best_step},
        "final_metrics": {**tr.last_train, **tr.last_val, **(tested or {})},  # test/...: of model.safetensors
        "early_stopped": tr.early_stopped,
        "wall_time_sec": trainer.wall_time(),
        "attempt_time_sec": time.time() - start,
        "resumed_from": resumed_from,
        "totals": trainer.totals(),  # throughput, data-wait share, evaluation/checkpoint/epoch times, peak memory
    }
    if reason:
        summary["reason"] = reason
    if os.environ.get("LAUNCHER_SLURM") == "1" and os.environ.get("SLURM_JOB_ID"):
        from launcher.runlock import own_slurm_job

        # which attempt wrote this summary (`launch status` and the batch script's `after` ask)
        restart = os.environ.get("SLURM_RESTART_COUNT", "0")
        summary["slurm"] = {"job_id": own_slurm_job(), "restart": int(restart) if restart.isdigit() else 0}
    return summary


def export_model(weights: dict, cfg, rd: RunDir) -> None:
    """Final weights of the unwrapped model -> model.safetensors (atomically)."""
    from safetensors.torch import save_file

    from launcher.weights import strip_prefixes

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in strip_prefixes(weights).items()}
    tmp = rd.model.with_name(f".{rd.model.name}.tmp")
    save_file(tensors, str(tmp), metadata={"recipe": cfg.recipe})
    os.chmod(tmp, file_mode())  # (safetensors creates 0600 files)
    os.replace(tmp, rd.model)


def _load_init_weights(model, path: str) -> None:
    from launcher.weights import load_state_file

    p = Path(path)
    if p.is_dir():
        candidates = [p / MODEL_FILE]
        ckpts = RunDir(p).complete_checkpoints()
        if ckpts:
            candidates.append(ckpts[0] / MODEL_FILE)
        p = next((c for c in candidates if c.is_file()), None)
        if p is None:
            raise LaunchError(
                f"model.init_from={path} holds no model.safetensors; point it at a run directory or a weights file"
            )
    elif not p.is_file():
        raise LaunchError(f"model.init_from={path} not found; point it at a run directory or a weights file")
    state = load_state_file(str(p))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise LaunchError(f"model.init_from={path} does not fit this model ({first_line(e)})") from None


def class_weights(cfg, recipe, train_ds):
    """``data.class_weights`` as a tensor (None when unset): ``auto`` is the inverse class
    frequency of the training split, n / (classes * count), the same on every rank; a list must
    have one weight per class."""
    import torch

    from launcher.runtime.data import labels_of

    given = getattr(cfg.data, "class_weights", None)
    if given is None:
        return None
    classes = recipe.num_classes()
    if given == "auto":
        labels = labels_of(train_ds)
        classes = classes or max(labels) + 1
        counts = torch.bincount(torch.tensor(labels, dtype=torch.int64), minlength=classes).double()
        if (counts == 0).any():
            empty = [str(i) for i in (counts == 0).nonzero().flatten().tolist()][:5]
            raise ConfigError(
                f"data.class_weights=auto: the training split has no sample of class {', '.join(empty)}; "
                "give the weights as a list, or drop the key"
            )
        return (counts.sum() / (classes * counts)).float()
    if classes is not None and len(given) != classes:
        raise ConfigError(
            f"data.class_weights has {len(given)} weights but recipe {cfg.recipe} has {classes} classes; give {classes}"
        )
    return torch.tensor(given, dtype=torch.float32)


def initialise(model, how: str) -> None:
    """``model.init``: every weight matrix or kernel (ndim >= 2) drawn by ``torch.nn.init``'s
    scheme, biases zero; norm layers (1-D weights) keep theirs."""
    import torch

    init = {
        "xavier_uniform": torch.nn.init.xavier_uniform_,
        "xavier_normal": torch.nn.init.xavier_normal_,
        "kaiming_uniform": lambda w: torch.nn.init.kaiming_uniform_(w, nonlinearity="relu"),
        "kaiming_normal": lambda w: torch.nn.init.kaiming_normal_(w, nonlinearity="relu"),
        "orthogonal": torch.nn.init.orthogonal_,
        "trunc_normal": lambda w: torch.nn.init.trunc_normal_(w, std=0.02),
    }[how]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                init(p)
            elif name.rsplit(".", 1)[-1].startswith("bias"):
                p.zero_()


def freeze(model, prefixes: list[str]) -> None:
    """``model.freeze``: parameters under these module prefixes stop training; a prefix that
    names nothing is one line (with the model's top-level modules)."""
    import difflib

    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        p = prefix.rstrip(".")
        hit = [n for n in names if n == p or n.startswith(p + ".")]
        if not hit:
            modules = [n for n, _ in model.named_modules() if n]
            close = difflib.get_close_matches(p, modules, n=1)
            top = [n for n, _ in model.named_children()]
            hint = f"did you mean {close[0]}? " if close else ""
            raise ConfigError(
                f"model.freeze: {prefix} names no parameters of the model; {hint}its modules: {', '.join(top[:12])}"
            )
        for n, param in model.named_parameters():
            if n in hit:
                param.requires_grad_(False)


def parameter_counts(model) -> dict[str, int]:
    """{total, trainable, bytes} of the model's parameters (before any sharding)."""
    params = list(model.parameters())
    return {
        "total": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "bytes": sum(p.numel() * p.element_size() for p in params),
    }


def _count(n: int) -> str:
    return (
        f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)
    )


def build(cfg, recipe_cls, rd: RunDir, env, strategy, stop, info):
    """Construct every part of the run and restore the newest checkpoint, if any."""
    import torch

    from launcher.runtime import checkpoint as ckpt
    from launcher.runtime import rng
    from launcher.runtime.loggers import ConsoleProgress, JsonlLogger, make_loggers
    from launcher.runtime.loop import Parts, Trainer, planned_steps, restore_parts
    from launcher.runtime.monitor import plateau_monitor
    from launcher.runtime.optim import build_optimizer, build_scheduler, check_schedule_length

    torch.use_deterministic_algorithms(cfg.run.deterministic)  # (both ways: `launch` in-process may run twice)
    # cuDNN picks the fastest convolution algorithms for the shapes it meets (what a hand-tuned
    # loop sets); the choice is timed, so it is off for run.deterministic.
    torch.backends.cudnn.benchmark = not cfg.run.deterministic
    device = strategy.device
    precision = strategy.make_precision(cfg.train.precision)
    if precision.name == "fp16-mixed" and device.type == "cpu":
        info("fp16-mixed on the CPU: float16 autocast with a GradScaler; correct, usually slower than fp32 on CPUs")

    check_monitors(recipe_cls, cfg)  # (again: a recipe's own check() may not call Recipe.check)
    check_classification(recipe_cls, cfg)
    rng.seed_everything(cfg.run.seed)  # the same initial weights on every rank
    recipe = recipe_cls(cfg)
    model = check_model(recipe.build_model(), cfg.recipe)
    if cfg.model.init != "default":
        initialise(model, cfg.model.init)
    if getattr(cfg.model, "init_from", None):
        _load_init_weights(model, cfg.model.init_from)
    if cfg.model.freeze:
        freeze(model, cfg.model.freeze)
    counts = parameter_counts(model)  # (said once the run is sure to start: bad input stays one line)
    model = precision.convert_model(model).to(device)
    model = strategy.wrap(model, tuple(recipe.shard_units))  # (FSDP's units; the others ignore them)
    if env.world_size > 1:
        rng.seed_everything(cfg.run.seed + env.rank)  # then a stream of its own per rank (dropout)

    train_ds, val_ds, test_ds = check_datasets(recipe.build_datasets(), cfg.recipe)
    weights = class_weights(cfg, recipe, train_ds)
    recipe.class_weights = weights.to(device) if weights is not None else None
    auto = weights is not None and cfg.data.class_weights == "auto"
    weights_said = ", ".join(f"{w:.3g}" for w in weights.tolist()) if auto else ""
    watch_first_step(recipe, cfg.recipe)
    train_sampler, train_loader = _loader(cfg, recipe, env, device, train_ds, train=True)
    val_loader, test_loader = (
        _loader(cfg, recipe, env, device, ds, train=False)[1] if ds is not None and len(ds) > 0 else None
        for ds in (val_ds, test_ds)
    )

    optimizer = build_optimizer(strategy.unwrap(model), cfg.train, list(getattr(recipe, "head", []) or []))
    model, optimizer = strategy.prepare(model, optimizer)
    if cfg.train.compile:
        model = strategy.compile(model, cfg.train.compile_mode)  # lazily: compiles at the first step
    c = cfg.checkpoint
    manager = ckpt.CheckpointManager(
        rd, c.keep_last, c.keep_best, c.monitor, c.mode, rank=env.rank, async_write=c.async_
    )
    manager.private_config = holds_secrets(to_plain(cfg))
    per_epoch, total_steps = planned_steps(cfg, train_sampler.batches_per_epoch())
    by_epoch = cfg.train.scheduler_interval == "epoch"  # (the schedule's length in its own steps)
    scheduler = build_scheduler(  # on the torch optimizer (Accelerate and DeepSpeed wrap it)
        strategy.torch_optimizer(optimizer),
        cfg.train,
        math.ceil(total_steps / per_epoch) if by_epoch else total_steps,
        monitor_mode=plateau_monitor(cfg)[1],
        warn=(lambda m: _say(f"warning: {m}")) if env.is_main else None,
    )

    resume = find_resume(cfg, manager, strategy.comm)
    if resume is not None:
        check_schedule_length(scheduler, resume.loaded["state"][ckpt.K_SCHEDULER], cfg.train, resume.path)
        restore_parts(resume.loaded, strategy, model, optimizer, scheduler, precision)
        info(f"resumed from {resume.path} (step {resume.step}, epoch {resume.progress.get('epoch', 0)})")
    else:
        info(f"training {cfg.recipe} on {device.type} ({precision.name}, {strategy.name}); run directory {rd.path}")
    info(
        f"model: {_count(counts['total'])} parameters ({_count(counts['trainable'])} trainable), "
        f"{counts['bytes'] / 1e6:.1f} MB"
        + (f"; class weights (inverse class frequency): {weights_said}" if weights_said else "")
    )
    resume_step = resume.step if resume is not None else None
    loggers = wandb_id = None
    if env.is_main:
        manager.clean_partial()
        jsonl = JsonlLogger(rd.metrics, (resume.trackers.get("metrics_offset") or 0) if resume else None, _say)
        own = resume is not None and resume.own  # this run's wandb id (not that of run.resume=PATH's run)
        loggers, wandb_id = make_loggers(
            cfg, rd.path, jsonl, resume_step, resume.trackers.get("wandb_id") if own else None,
            strategy.unwrap(model), info, _say,
        )  # fmt: skip
    show_bar = env.is_main and "console" in cfg.log.backends and not cfg.log.quiet
    parts = Parts(
        cfg=cfg,
        recipe=recipe,
        strategy=strategy,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        precision=precision,
        train_sampler=train_sampler,
        train_loader=train_loader,
        val_loader=val_loader,
        test_loader=test_loader,
        checkpoints=manager,
        stop=stop,
        loggers=loggers,
        console=ConsoleProgress(total_steps, resume_step or 0, show_bar),
        world_size=env.world_size,
        wandb_id=wandb_id,
    )
    trainer = Trainer(parts, resume=resume.loaded if resume is not None else None)
    trainer.parameter_counts = counts
    resumed_from = str(resume.path) if resume is not None else None
    return parts, trainer, resumed_from


def _loader(cfg, recipe, env, device, dataset, train: bool):
    """(sampler, loader). Training: shuffled, padded shards, full batches, per-batch seeding.
    Evaluation: in order, unpadded shards (every sample counted once), the last batch kept."""
    from launcher.runtime.data import EpochBatchSampler, make_loader

    d = cfg.data
    weights = None
    if train and d.sampling == "balanced":  # each class equally often
        from launcher.runtime.data import labels_of

        labels = labels_of(dataset)
        counts: dict[int, int] = {}
        for y in labels:
            counts[y] = counts.get(y, 0) + 1
        weights = [1.0 / counts[y] for y in labels]
    sampler = EpochBatchSampler(
        len(dataset), cfg.train.batch_size, shuffle=train and d.shuffle, seed=cfg.run.seed,
        rank=env.rank, world_size=env.world_size, drop_last=train and d.drop_last, pad=train,
        weights=weights,
    )  # fmt: skip
    loader = make_loader(
        dataset, sampler, num_workers=d.num_workers,
        pin_memory=d.pin_memory if d.pin_memory is not None else device.type == "cuda",
        seed=cfg.run.seed + (0 if train else 1), collate_fn=getattr(recipe, "collate", None), seeded=train,
    )  # fmt: skip
    return sampler, loader


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from: ``own`` when it is one of this run's (its wandb run
    and its metrics.jsonl continue), else the one ``run.resume=PATH`` names (a new run's start)."""

    loaded: dict
    own: bool

    @property
    def path(self) -> Path:
        return Path(self.loaded["path"])

    @property
    def progress(self) -> dict:
        from launcher.runtime.checkpoint import K_PROGRESS

        return self.loaded["state"][K_PROGRESS]

    @property
    def trackers(self) -> dict:
        from launcher.runtime.checkpoint import K_TRACKERS

        return self.loaded["state"][K_TRACKERS]

    @property
    def step(self) -> int:
        return self.progress.get("global_step", 0)


def find_resume(cfg, manager, comm=None) -> ResumePoint | None:
    """Where this attempt continues from, or None for a fresh start. Whether the run directory
    may be resumed at all the parent decided (``rundir.inspect_run_dir``); this finds the newest
    checkpoint that verifies on every rank (``comm``): this run's own first (a requeued run
    continues), then ``run.resume=PATH``. A damaged checkpoint of this run is skipped with a
    warning; a damaged run.resume=PATH, or a checkpoint trained with a config that differs in
    keys that change results, is bad input."""
    resume = cfg.run.resume
    if resume == "never":
        return None
    otherwise = "starting fresh" if resume == "auto" else f"resuming from run.resume={resume}"
    loaded = manager.load_latest(warn=_say, world=comm, otherwise=otherwise)
    own = loaded is not None
    if loaded is None and resume != "auto":
        loaded, damaged = manager.load_agreed(Path(resume), comm)
        if damaged is not None:
            raise LaunchError(
                f"run.resume={resume} is not a complete, readable checkpoint ({damaged}); "
                "pass an intact checkpoints/step-N directory"
            )
    if loaded is None:
        return None
    point = ResumePoint(loaded, own)
    _check_resume_config(cfg, point.path)
    return point


def _check_resume_config(cfg, path: Path) -> None:
    """Refuse a checkpoint whose config differs in keys that change results."""
    try:
        old = yamlio.load((path / CONFIG_FILE).read_text()) or {}
    except (OSError, yamlio.YAMLError):
        return
    unsafe, _ = config_changes(old, cfg)
    if unsafe:
        raise LaunchError(
            f"checkpoint {path} was trained with a different config ({shown_changes(unsafe)}); "
            "resume it with its own config, or use model.init_from=... to start a new run from its weights"
        )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        _say("usage: python -m launcher.runtime.worker RUN_DIR")
        sys.exit(EXIT_BAD_INPUT)
    entry = main
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        # under torchrun: a crash's traceback reaches the launcher's failure report (elsewhere
        # the import alone would lengthen the start)
        with imports_without_gc():
            from torch.distributed.elastic.multiprocessing.errors import record

        entry = record(main)
    sys.exit(entry(sys.argv[1]))
