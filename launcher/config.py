"""Typed config: schema, layering and validation (pydantic; no torch).

Layers, lowest first: schema defaults < recipe defaults < ``config=FILE.yaml`` < ``key=value``.
Each recipe contributes the schema of its ``model`` section and extends ``data``; the rest of
the schema is shared. Unknown keys are errors with a did-you-mean; values are type-checked and
range-checked by pydantic. Every problem becomes one :class:`ConfigError` line.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import stat
import types
import typing
from pathlib import Path
from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from launcher import yamlio
from launcher.errors import ConfigError

# Keys whose values are credentials: redacted from the wandb/TensorBoard config, and never part of a
# run name, directory name or Slurm job name (launcher/rundir.py).
SECRET_KEY = re.compile(r"api[_-]?key|token|secret|passw(or)?d|credential", re.IGNORECASE)


INT64_MAX = 2**63 - 1  # what torch, numpy and the C side of every library take as an integer
NAME_MAX = 255  # bytes in one path component (ext4, xfs, btrfs, APFS, NTFS...)


def _has_control(text: str) -> bool:
    """Newline, tab, NUL, escape, ... (C0/C1 controls, line separators): never part of a path here."""
    return not text.isprintable() and any(c < " " or "\x7f" <= c <= "\x9f" or c in "\u2028\u2029" for c in text)


def _numbers_in(ann: Any) -> tuple[bool, bool]:
    """(does ``ann`` take a number, does it take a bool) -- of the annotation or of its items."""
    if ann is bool:
        return False, True
    if ann in (int, float):
        return True, False
    origin = typing.get_origin(ann)
    if origin is typing.Annotated:
        return _numbers_in(typing.get_args(ann)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        kinds = [_numbers_in(a) for a in typing.get_args(ann) if a is not Ellipsis]
        return any(k[0] for k in kinds), any(k[1] for k in kinds)
    return False, False


def _has_bool_for_number(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)


def _huge_int(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return not -INT64_MAX - 1 <= value <= INT64_MAX
    return isinstance(value, (list, tuple, set, frozenset)) and any(_huge_int(v) for v in value)


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, numbers may be given for strings.

    Numbers are finite (``.inf``, ``1e400`` and ``.nan`` are refused). :func:`validate` also refuses
    a boolean for a number (``train.epochs=true`` is not 1) and integers beyond 64 bits (they end up
    in C code: torch, numpy, sbatch): a walk over the tree, not validators on every class, which
    would make every start pay for them in pydantic's class building. Strings of digits still count as
    numbers (``lr: 1e-3`` is a string to YAML)."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, populate_by_name=True, allow_inf_nan=False)


def _path_problem(key: str, value: str, example: str) -> str | None:
    """Why ``value`` cannot be the directory path ``key`` (None if it can)."""
    if not value.strip():
        return f"{key} is empty; give a directory, e.g. {key}={example}"
    if _has_control(value):
        return f"{key}={value!r} holds a control character (newline, tab, ...); give a plain path"
    for part in value.split("/"):
        if len(os.fsencode(part)) > NAME_MAX:
            return (
                f"{key} has a name of {len(os.fsencode(part))} bytes ({part[:20]}...); "
                f"a file system allows {NAME_MAX}: give a shorter one"
            )
    return None


class RunSection(Section):
    name: Optional[str] = Field(None, description="run directory name; default: derived from the overrides")
    output_dir: str = Field("runs", description="parent of <recipe>/<name>/")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="0 to 2**32-1 (what numpy.random.seed takes)")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms(True)")
    resume: str = Field("auto", description="auto | never | path to a checkpoint directory")

    @model_validator(mode="after")
    def _check(self) -> RunSection:
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"run.name={self.name!r} must be a plain directory name (no '/')")
        problem = (self.name is not None and _path_problem("run.name", self.name, "exp1")) or _path_problem(
            "run.output_dir", self.output_dir, "runs"
        )
        if problem:
            raise ValueError(problem)
        if not self.resume:
            raise ValueError("run.resume must be auto, never or a checkpoint path")
        return self


class EarlyStoppingSection(Section):
    monitor: Optional[str] = Field(None, description="metric to watch, e.g. val/loss; null disables")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


Precision = Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16-true"]


class TrainSection(Section):
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(64, ge=1, description="per process")
    lr: float = Field(0.1, gt=0)
    optimizer: str = Field("sgd", description="a torch.optim class (SGD, Adam, AdamW, RMSprop, ...; any case)")
    optimizer_args: dict[str, Any] = Field(
        default_factory=dict, description="the optimizer's own arguments, e.g. {eps: 1e-6, amsgrad: true}"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD")
    nesterov: bool = Field(False, description="SGD")
    betas: tuple[float, float] = Field(
        (0.9, 0.999), description="optimizers with betas (Adam, AdamW, NAdam, ...): each in [0, 1)"
    )
    weight_decay: float = Field(0.0, ge=0, description="not applied to biases and norm layers")
    backbone_lr_mult: float = Field(1.0, ge=0, description="lr multiplier for all but the recipe's head")
    # Schedulers step once per optimizer step, or epoch (plateau: once per evaluation).
    scheduler: str = Field(
        "none",
        description="none | step | multistep | exponential | cosine | onecycle | plateau | warmup_cosine | "
        "a torch.optim.lr_scheduler class",
    )
    scheduler_args: dict[str, Any] = Field(
        default_factory=dict, description="a scheduler class's own arguments, e.g. {T_0: 100, T_mult: 2}"
    )
    scheduler_interval: Literal["step", "epoch"] = Field(
        "step", description="step the scheduler after every optimizer step or at every epoch end"
    )
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(1000, ge=1, description="step: optimizer steps between decays")
    milestones: list[int] = Field(default_factory=list, description="multistep: optimizer steps")
    gamma: float = Field(0.1, gt=0, description="decay factor (step, multistep, exponential, plateau)")
    min_lr: float = Field(0.0, ge=0, description="floor of cosine schedules")
    plateau_patience: int = Field(2, ge=0)
    # classification recipes (Recipe.classification_loss): the loss and what shapes it
    loss: Literal["cross_entropy", "nll", "bce_with_logits", "focal"] = Field(
        "cross_entropy", description="classification recipes: nll = LogSoftmax + NLLLoss; bce_with_logits per class"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="classification: share of the target spread evenly")
    focal_gamma: float = Field(2.0, ge=0, description="loss=focal: the focusing exponent")
    l1: float = Field(0.0, ge=0, description="L1 penalty on the weights weight decay applies to (not biases, norms)")
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip: Optional[float] = Field(None, gt=0, description="max global grad norm")
    eval_every: int = Field(0, ge=0, description="evaluate every N optimizer steps (0: at epoch ends only)")
    log_every: int = Field(10, ge=1, description="log train metrics every N optimizer steps")
    precision: Precision = "fp32"
    compile: bool = Field(False, description="torch.compile the model for training (evaluation stays eager)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)

    @field_validator("betas")
    @classmethod
    def _betas_below_one(cls, betas: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"train.betas={list(betas)}: each beta must be in [0, 1); e.g. train.betas=[0.9,0.999]")
        return betas

    @model_validator(mode="after")
    def _check(self) -> TrainSection:
        from launcher import torch_classes as tc

        tc.check_optimizer_args(self.optimizer, self.optimizer_args)
        tc.check_scheduler_args(self.scheduler, self.scheduler_args)
        if self.scheduler == "multistep" and not self.milestones:
            raise ValueError("train.scheduler=multistep needs train.milestones=[...] (optimizer steps)")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError("train.milestones must be increasing")
        return self


class DataSection(Section):
    """Shared data keys; recipes subclass this to add their own."""

    name: str = Field("", description="which data source the recipe loads")
    root: str = Field("data", description="where data lives / is downloaded to")
    # at most 64 per process: enough to feed any GPU; static, because a config must mean the same on
    # every machine that validates it (the login node, then each worker on its compute node)
    num_workers: int = Field(0, ge=0, le=64, description="loader processes per training process (0: in the process)")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="held-out share when the source has no split")
    test_fraction: float = Field(
        0.0, ge=0, lt=1, description="share held out as a test split, evaluated once at the end (0: none)"
    )
    class_weights: Union[Literal["auto"], list[float], None] = Field(
        None, description="classification: auto (inverse class frequency of the training split) or one per class"
    )
    sampling: Literal["shuffle", "balanced"] = Field(
        "shuffle",
        description="training order: shuffle, or balanced (every class drawn equally often, with replacement)",
    )
    shuffle: bool = Field(True, description="shuffle the training order each epoch (false: in dataset order)")
    drop_last: bool = Field(True, description="training drops each epoch's last partial batch")
    pin_memory: Optional[bool] = Field(None, description="default: on for CUDA")
    download: bool = Field(True, description="let torchvision/torchaudio download missing data")

    @model_validator(mode="after")
    def _check_root(self) -> DataSection:
        if _has_control(self.root):
            raise ValueError(
                f"data.root={self.root!r} holds a control character (newline, tab, ...); give a plain path"
            )
        w = self.class_weights
        if isinstance(w, list) and (len(w) < 2 or not all(math.isfinite(v) and v > 0 for v in w)):
            raise ValueError(f"data.class_weights={w}: give one positive number per class (e.g. [1.0, 3.5]), or auto")
        if self.sampling == "balanced" and not self.shuffle:
            raise ValueError("data.sampling=balanced draws a random order; drop data.shuffle=false")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"data.val_fraction={self.val_fraction} and data.test_fraction={self.test_fraction} leave nothing "
                "to train on; make their sum less than 1"
            )
        return self


class ModelSection(Section):
    """Recipes subclass this for their model keys."""

    init_from: Optional[str] = Field(
        None, description="start a new run from these weights (a run directory, checkpoint or weights file)"
    )
    init: Literal["default", "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal", "orthogonal",
                  "trunc_normal"] = Field(
        "default", description="initialise every weight matrix / kernel this way, biases to zero (training from scratch)"
    )  # fmt: skip
    freeze: list[str] = Field(
        default_factory=list, description="parameter-name prefixes to freeze, e.g. [conv1, bn1, layer1]"
    )

    @model_validator(mode="after")
    def _init_or_weights(self) -> ModelSection:
        if self.init != "default" and self.init_from:
            raise ValueError(f"model.init={self.init} and model.init_from set the same weights; give one of them")
        return self


class CheckpointSection(Section):
    every_steps: int = Field(0, ge=0, description="also save every N optimizer steps (0: epoch ends only)")
    keep_last: int = Field(2, ge=1)
    keep_best: int = Field(0, ge=0)
    monitor: str = "val/loss"
    mode: Literal["min", "max"] = "min"
    async_: bool = Field(
        False, alias="async", description="write in a background thread; training stalls only for a copy"
    )


LOG_BACKENDS = ("jsonl", "console", "wandb", "tensorboard")


class WandbSection(Section):
    project: Optional[str] = Field(None, description="default: the recipe's directory name")
    entity: Optional[str] = Field(None, description="team or user; default: your wandb default")
    name: Optional[str] = Field(None, description="display name; default: run.name")
    group: Optional[str] = None
    tags: list[str] = Field(default_factory=list)
    mode: Literal["auto", "online", "offline"] = Field(
        "auto", description="auto: online when an API key and the server are reachable, else offline (WANDB_MODE wins)"
    )
    init_timeout: float = Field(30.0, gt=0, le=3600, description="seconds wandb may take to start an online run")


class TensorBoardSection(Section):
    histograms: bool = Field(False, description="weight and gradient histograms")
    histogram_every: int = Field(0, ge=0, description="optimizer steps between histograms (0: 10 x train.log_every)")
    graph: bool = Field(False, description="the model graph (traced once from the first batch)")


class LogSection(Section):
    backends: list[str] = Field(
        default_factory=lambda: ["jsonl", "console"],
        description="jsonl (metrics.jsonl, always written) | console | wandb | tensorboard",
    )
    quiet: bool = False
    dir: Optional[str] = Field(
        None, description="where tensorboard/ and wandb/ go (<dir>/<recipe>/<run.name>/); default: the run directory"
    )
    wandb: WandbSection = Field(default_factory=WandbSection)
    tensorboard: TensorBoardSection = Field(default_factory=TensorBoardSection)

    @field_validator("backends", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return [b.strip() for b in value.split(",") if b.strip()] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check(self) -> LogSection:
        for b in self.backends:
            if b not in LOG_BACKENDS:
                close = difflib.get_close_matches(b, LOG_BACKENDS, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ValueError(f"unknown log backend {b!r}; {hint}known: {', '.join(LOG_BACKENDS)}")
        if self.dir is not None and not self.dir.strip():
            raise ValueError("log.dir must be a directory path (or null for the run directory)")
        problem = self.dir is not None and _path_problem("log.dir", self.dir, "logs")
        if problem:
            raise ValueError(problem)
        return self


class DistSection(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    procs: int = Field(1, ge=1, le=1024, description="processes per node")
    nodes: int = Field(1, ge=1, le=65536)
    strategy: Literal["auto", "single", "dp", "ddp", "accelerate", "deepspeed", "fsdp"] = "auto"
    timeout_s: int = Field(
        300,
        ge=5,
        le=7 * 24 * 3600,
        description="seconds (at most a week) to wait for the other processes at start-up (rendezvous) and in collectives",
    )


class DeepSpeedSection(Section):
    stage: int = Field(2, ge=0, le=3, description="ZeRO stage (0: plain data parallel)")
    offload_optimizer: bool = Field(False, description="keep optimizer state in CPU memory (ZeRO 1-3)")
    offload_param: bool = Field(False, description="keep parameters in CPU memory (ZeRO 3)")

    @model_validator(mode="after")
    def _check(self) -> DeepSpeedSection:
        if self.offload_param and self.stage != 3:
            raise ValueError("deepspeed.offload_param needs deepspeed.stage=3")
        if self.offload_optimizer and self.stage == 0:
            raise ValueError("deepspeed.offload_optimizer needs deepspeed.stage 1, 2 or 3")
        return self


class FsdpSection(Section):
    reshard_after_forward: bool = Field(
        True, description="free gathered parameters after each unit's forward (less memory, one more all-gather)"
    )
    cpu_offload: bool = Field(False, description="keep parameters, gradients and optimizer state in CPU memory (CUDA)")


# Slurm's --time formats: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
# days-hours:minutes, days-hours:minutes:seconds.
_SLURM_TIME = re.compile(r"\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2}")
_SLURM_MEM = re.compile(r"\d+[KMGT]?")
_SLURM_NAME = re.compile(r"[A-Za-z0-9_.+\-]+")  # partition, account, qos names
# The warning signals the batch script handles end to end (slurm/README.md, "The stop signals").
_SLURM_SIGNAL = re.compile(r"(SIG)?(USR1|USR2|TERM)")


class SlurmSection(Section):
    """sbatch settings. Every value lands in ``submit.sbatch`` (``--slurm --dry-run`` prints it)."""

    enabled: bool = Field(False, description="submit with sbatch instead of running here (--slurm)")
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    time: Optional[str] = Field(None, description="time limit, e.g. 04:00:00 or 1-12:00:00")
    constraint: Optional[str] = Field(None, description="node features, e.g. a100|h100")
    mem: Optional[str] = Field(None, description="memory per node, e.g. 64G")
    cpus_per_task: Optional[int] = Field(None, ge=1)
    exclusive: bool = False
    job_name: Optional[str] = Field(None, description="default: the run's name")
    setup: list[str] = Field(default_factory=list, description="shell lines run before training (module load ...)")
    extra: list[str] = Field(default_factory=list, description="raw sbatch flags, e.g. --reservation=big")
    signal: str = Field("USR2", description="warning signal before the time limit (checkpoint + requeue)")
    signal_lead_s: int = Field(120, ge=1, le=65535, description="seconds before the time limit the signal is sent")
    max_requeues: int = Field(3, ge=0, description="times the job requeues itself after a preemption")
    python: Optional[str] = Field(None, description="interpreter on the nodes; default: the one that submitted")

    @model_validator(mode="after")
    def _check(self) -> SlurmSection:
        for key in ("partition", "account", "qos"):
            value = getattr(self, key)
            if value is not None and not _SLURM_NAME.fullmatch(value):
                raise ValueError(f"slurm.{key}={value!r} is not a Slurm name (letters, digits, _ . + -)")
        if self.time is not None and not _SLURM_TIME.fullmatch(self.time):
            raise ValueError(
                f"slurm.time={self.time!r} is not a Slurm time; use MINUTES, HH:MM:SS or D-HH:MM:SS (e.g. 04:00:00)"
            )
        if self.mem is not None and not _SLURM_MEM.fullmatch(self.mem.upper()):
            raise ValueError(f"slurm.mem={self.mem!r} is not a Slurm memory size; use e.g. 64G or 4000M")
        if not _SLURM_SIGNAL.fullmatch(self.signal.upper()):
            raise ValueError(
                f"slurm.signal={self.signal!r} is not a warning signal the batch script handles; "
                "use USR2 (the default), USR1 or TERM"
            )
        for key in ("constraint", "job_name", "python"):
            value = getattr(self, key)
            if value is not None and (not value or not value.isprintable()):
                raise ValueError(f"slurm.{key}={value!r} must be one printable line")
        for flag in self.extra:
            if not flag.startswith("-") or not flag.isprintable():
                raise ValueError(f"slurm.extra item {flag!r} must be one sbatch flag such as --reservation=NAME")
        for line in self.setup:
            if "\n" in line or "\r" in line:
                raise ValueError("slurm.setup takes a list of single shell lines; split multi-line text into items")
        return self


class Config(Section):
    """The whole resolved config. ``model`` and ``data`` are replaced per recipe."""

    recipe: str
    run: RunSection = Field(default_factory=RunSection)
    train: TrainSection = Field(default_factory=TrainSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    log: LogSection = Field(default_factory=LogSection)
    dist: DistSection = Field(default_factory=DistSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    fsdp: FsdpSection = Field(default_factory=FsdpSection)
    slurm: SlurmSection = Field(default_factory=SlurmSection)


# Keys that never change what a run computes. They are left out of the run name's hash, and an
# existing run directory accepts new values for them (logged) instead of refusing.
OPERATIONAL_KEYS = (
    "run.name",
    "run.output_dir",
    "run.resume",
    "data.num_workers",
    "data.pin_memory",
    "data.download",
    "checkpoint.",
    "log.",
    "slurm.",
    "dist.timeout_s",
)
# Keys that may change between a run and its resumption without changing what was computed so
# far (more epochs, a step cap, evaluation cadence, data moved to another folder, another strategy
# or process count: the run continues from the same point of its epoch).
RESUME_SAFE_KEYS = (
    *OPERATIONAL_KEYS,
    "data.root",
    "dist.",
    "train.epochs",
    "train.max_steps",
    "train.eval_every",
    "train.log_every",
    "train.compile",  # checkpoints hold the same keys with and without it
    "train.compile_mode",
    "fsdp.reshard_after_forward",  # when gathered parameters are freed, not what they compute
)


def config_class(recipe_cls: type) -> type[Config]:
    """The Config schema for a recipe: shared sections plus the recipe's ``Model``/``Data``."""
    cached = recipe_cls.__dict__.get("_config_class")
    if cached is not None:
        return cached
    cls = create_model(
        f"{recipe_cls.__name__}Config",
        __base__=Config,
        model=(recipe_cls.Model, Field(default_factory=recipe_cls.Model)),
        data=(recipe_cls.Data, Field(default_factory=recipe_cls.Data)),
    )
    recipe_cls._config_class = cls
    return cls


# --------------------------------------------------------------------------- layering


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def split_override(arg: str) -> tuple[str, str]:
    """``a.b=value`` -> ("a.b", "value")."""
    key, sep, raw = arg.partition("=")
    key = key.strip()
    if key.startswith("+"):  # Hydra's append (+key) and force (++key)
        bare = key.lstrip("+")
        raise ConfigError(
            f"{arg}: launch has no {key[: len(key) - len(bare)]}key= (Hydra's); every key is in the schema already: "
            f"write {bare}={raw}"
        )
    if key.startswith("~"):  # Hydra's delete
        raise ConfigError(
            f"{arg}: launch does not delete keys (Hydra's ~); leave {key[1:].split('=')[0]} out to get its default"
        )
    if not sep or not key:
        if _looks_like_recipe(arg):
            raise ConfigError(f"{arg!r}: write recipe={arg} (every argument is key=value)")
        raise ConfigError(f"cannot read argument {arg!r}: expected key=value (e.g. train.lr=0.01)")
    return key, raw


def _looks_like_recipe(arg: str) -> bool:
    """A bare ``launch resnet_finetune`` (Hydra's and torchtune's habit) or ``launch my_recipe.py:Cls``."""
    if ":" in arg or arg.endswith(".py"):
        return True
    from recipes import BUILTIN

    return arg in BUILTIN


def _field_annotation(cls: type[BaseModel], key: str) -> Any:
    node: Any = cls
    for part in key.split("."):
        fields = getattr(node, "model_fields", None) or {}
        field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        node = field.annotation
    return node


def _is_section(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _example(cls: type[BaseModel], key: str, ann: Any) -> str:
    """``key=VALUE`` with the schema default as the value, for "give one, e.g. ..." hints."""
    if _is_section(ann):  # its first key with a plain default
        fields = list(ann.model_fields.items())
        name, field = next(
            ((n, f) for n, f in fields if isinstance(f.default, (int, float, str)) and f.default != ""), fields[0]
        )
        return _example(cls, f"{key}.{field.alias or name}", field.annotation)
    node: Any = cls
    default: Any = None
    for part in key.split("."):
        fields = getattr(node, "model_fields", None) or {}
        field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if field is None:
            break
        node, default = field.annotation, field.default
    if isinstance(default, bool):
        return f"{key}={str(default).lower()}"
    if isinstance(default, (int, float, str)) and default != "":
        return f"{key}={default}"
    if isinstance(default, (list, tuple)) and default:
        return f"{key}={json.dumps(list(default), separators=(',', ':'))}"
    return f"{key}=null" if default is None else f"{key}=..."


def parse_value(cls: type[BaseModel], key: str, raw: str) -> Any:
    """Parse a command-line value for ``key``: strings stay verbatim for string keys (so
    ``run.name=007`` stays "007"); everything else is read as YAML (3, 0.1, 1e-3, true, [1,2], null)."""
    ann = _field_annotation(cls, key)
    if ann is str or ann == Optional[str]:
        return None if (ann is not str and raw in ("null", "~", "None")) else raw
    if not raw.strip():
        if ann is None:
            return ""  # an unknown key: validation names it (with a did-you-mean)
        raise ConfigError(f"{key}= has no value; give one, e.g. {_example(cls, key, ann)}")
    if _FLOAT.fullmatch(raw.strip()) and any(c in raw for c in ".eE"):
        return float(raw)
    try:
        return yamlio.load(raw)
    except yamlio.RefusedYAML as e:
        raise ConfigError(f"{key}={raw} {e.problem}; {e.fix}") from None
    except yamlio.YAMLError:
        return raw


def set_dotted(tree: dict, key: str, value: Any, merge: bool = False) -> None:
    """Set ``tree[a][b]... = value`` for ``key`` "a.b..."; ``merge``: a mapping value is merged into
    the mapping already there (as a config file layer is), instead of replacing it."""
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = {}
            node[part] = child
        elif not isinstance(child, dict):
            above = ".".join(parts[: i + 1])
            raise ConfigError(
                f"cannot set {key}: {above} was set to {json.dumps(child, default=str)}, which is not a section; "
                f"drop {above}={json.dumps(child, default=str)}"
            )
        node = child
    last = parts[-1]
    if merge and isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = deep_merge(node[last], value)
    else:
        node[last] = value


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        elif isinstance(v, dict):
            out[k] = deep_merge({}, v)  # copy: set_dotted must not mutate recipe defaults or file layers
        else:
            out[k] = v
    return out


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KB; a bigger one is the wrong file (a checkpoint, a log)


def load_yaml_file(path: str) -> dict:
    """One ``config=FILE`` layer: a mapping of sections, each a mapping (or empty: ``train:`` with
    its keys commented out). An empty file, a key given twice, a section that is not a mapping, a
    file that is not UTF-8 text: each is one ConfigError line naming the file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; pass config=PATH to an existing YAML file") from None
    except OSError as e:
        raise ConfigError(
            f"config file {path} cannot be read ({e.strerror}); check the path and its permissions"
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"config file {path} is a directory; pass config=PATH to a YAML file in it")
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"config file {path} is not a regular file; pass config=PATH to a YAML file")
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is {st.st_size} bytes (a config is a few KB, at most {MAX_CONFIG_BYTES}); "
            "is it the right file?"
        )
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read ({e.strerror}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8 YAML"
        ) from None
    try:
        data = yamlio.load(text)
    except yamlio.RefusedYAML as e:
        raise ConfigError(f"config file {path} {e.problem}{e.where}; {e.fix}") from None
    except yamlio.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        if getattr(e, "character", None) is not None:  # a ReaderError: a byte YAML text cannot hold
            where = f" (character #x{ord(e.character) if isinstance(e.character, str) else e.character:x} at offset {e.position})"
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the file") from None
    if data is None:
        raise ConfigError(
            f"config file {path} is empty (or only comments); put sections in it (train:, run:, ...) "
            f"or leave out config={path}"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (run:, train:, ...)")
    recipe = data.get("recipe")
    if recipe is None:
        data.pop("recipe", None)
    elif not isinstance(recipe, str) or not recipe.strip():
        raise ConfigError(
            f"config file {path}: recipe: {json.dumps(recipe, default=str)} is not a recipe; "
            "give a name or path, e.g. recipe: resnet_finetune"
        )
    data = _nest_dotted(data, path, "")
    _check_sections(data, Config, path, "")
    return data


def _merge_once(a: dict, b: dict, path: str, prefix: str) -> dict:
    """Two spellings of one section of a file (``train.lr:`` and ``train:``): each key once."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge_once(out[k], v, path, f"{prefix}{k}.")
        elif k in out:
            raise ConfigError(f"config file {path}: {prefix}{k} is given twice; keep one")
        else:
            out[k] = v
    return out


def _nest_dotted(tree: dict, path: str, prefix: str) -> dict:
    """``train.lr: 0.01`` in a file means ``train: {lr: 0.01}`` (at any level; the ``sweep:``
    section's keys stay dotted: they name the keys it sweeps). A key given both ways is one line."""
    out: dict = {}
    for key, value in tree.items():
        if isinstance(value, dict) and not (prefix == "" and key == "sweep"):
            value = _nest_dotted(value, path, f"{prefix}{key}.")
        parts = key.split(".") if isinstance(key, str) and "." in key and key.strip(".") == key else [key]
        node = out
        for n, part in enumerate(parts):
            last = n == len(parts) - 1
            here = node.get(part)
            if last:
                if here is not None and not (isinstance(here, dict) and isinstance(value, dict)):
                    raise ConfigError(
                        f"config file {path}: {prefix}{'.'.join(map(str, parts))} is given twice; keep one"
                    )
                node[part] = _merge_once(here, value, path, f"{prefix}{key}.") if isinstance(here, dict) else value
            else:
                if here is None:
                    here = node[part] = {}
                elif not isinstance(here, dict):
                    raise ConfigError(
                        f"config file {path}: {prefix}{'.'.join(map(str, parts[: n + 1]))} is a value and a section; keep one"
                    )
                node = here
    return out


def _check_sections(tree: dict, cls: type[BaseModel], path: str, prefix: str) -> None:
    """Every section of a file layer is a mapping; an empty one (``train:`` alone) sets nothing."""
    for key in list(tree):
        field = cls.model_fields.get(key) if isinstance(key, str) else None
        if field is None or not _is_section(field.annotation):
            continue  # a key, or an unknown one (validation names it)
        value = tree[key]
        if value is None:
            del tree[key]
        elif isinstance(value, dict):
            _check_sections(value, field.annotation, path, f"{prefix}{key}.")
        else:
            shown = json.dumps(value, default=str)[:40]
            first = next(iter(field.annotation.model_fields), "key")
            raise ConfigError(
                f"config file {path}: {prefix}{key} is a section, not {shown}; "
                f"put its keys under it, indented (`{key}:` and below it `  {first}: ...`)"
            )


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def all_keys(model_cls: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model_cls.model_fields.items():
        name = field.alias or name
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(all_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _format_error(err: dict, cls: type[BaseModel], tree: dict) -> str:
    loc = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        keys = all_keys(cls)
        close = difflib.get_close_matches(loc, keys, n=1, cutoff=0.6)
        if not close:
            # match on the last component anywhere in the schema (e.g. `lr` -> `train.lr`)
            last = loc.rsplit(".", 1)[-1]
            close = [k for k in keys if k.rsplit(".", 1)[-1] == last][:1]
        hint = (
            f"; did you mean {close[0]}?" if close else f"; see `launch recipe={tree.get('recipe', 'X')} --show-config`"
        )
        return f"unknown config key {loc!r}{hint}"
    if err["type"] == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, float) and not math.isfinite(value):
        shown = str(value)  # inf, -inf, nan (as YAML and the user write them, not JSON's Infinity)
    elif isinstance(value, (int, float, str, bool, type(None), list)):
        shown = json.dumps(value, default=str)
    else:
        shown = repr(value)
    if len(shown) > 60:
        shown = shown[:50] + "..." + shown[-5:]
    if err["type"] in ("model_type", "model_attributes_type"):
        ann = _field_annotation(cls, loc)
        if _is_section(ann):
            return f"bad value {loc}={shown}: {loc} is a section; set its keys, e.g. {_example(cls, loc, ann)}"
    if err["type"] == "finite_number":
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))  # train.betas, not train.betas.0
        return f"bad value {loc}={shown}: {err['msg']}; e.g. {_example(cls, key, _field_annotation(cls, key))}"
    return f"bad value {loc}={shown}: {err['msg']}"


def _field(cls: type[BaseModel], key: Any) -> Any:
    fields = cls.model_fields
    return fields.get(key) or next((f for f in fields.values() if f.alias == key), None)


def _bool_for_a_number(cls: type[BaseModel], tree: dict, prefix: str = "") -> tuple[str, Any] | None:
    """(key, value) of the first boolean given for a number-only key of ``tree`` (pydantic reads it as 0/1)."""
    for key, value in tree.items():
        field = _field(cls, key)
        if field is None:
            continue
        if _is_section(field.annotation):
            if isinstance(value, dict) and (found := _bool_for_a_number(field.annotation, value, f"{prefix}{key}.")):
                return found
        elif _has_bool_for_number(value) and _numbers_in(field.annotation) == (True, False):
            return f"{prefix}{key}", value
    return None


def _huge_int_in(model: BaseModel, prefix: str = "") -> tuple[str, Any] | None:
    """(key, value) of the first integer of the validated config beyond 64 bits."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        key = f"{prefix}{field.alias or name}"
        if isinstance(value, BaseModel):
            if found := _huge_int_in(value, key + "."):
                return found
        elif _huge_int(value):
            return key, value
    return None


def validate(cls: type[Config], tree: dict) -> Config:
    def refuse(key: str, value: Any, msg: str) -> ConfigError:
        err = {"type": "refused", "loc": tuple(key.split(".")), "msg": msg, "input": value}
        return ConfigError(_format_error(err, cls, tree) + f"; e.g. {_example(cls, key, _field_annotation(cls, key))}")

    if found := _bool_for_a_number(cls, tree):
        raise refuse(*found, "Input should be a number, not true/false")
    try:
        cfg = cls.model_validate(tree)
    except ValidationError as e:
        errors = e.errors()
        first = _format_error(errors[0], cls, tree)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None
    if found := _huge_int_in(cfg):
        raise refuse(*found, "Input should be an integer of at most 2**63-1 in size")
    return cfg


def resolve(recipe_cls: type, file_layers: list[dict], overrides: list[tuple[str, str]]) -> Config:
    """Build the resolved config from every layer and validate it once.

    ``overrides`` are the raw ``key=value`` pairs of the command line, in order.
    """
    cls = config_class(recipe_cls)
    tree: dict = {}
    tree = deep_merge(tree, getattr(recipe_cls, "defaults", {}) or {})
    for layer in file_layers:
        tree = deep_merge(tree, layer)
    for key, raw in overrides:
        value = parse_value(cls, key, raw)
        # `train={lr: 0.01}` sets train.lr, as a config file would: the rest of train stays
        set_dotted(tree, key, value, merge=_is_section(_field_annotation(cls, key)))
    cfg = validate(cls, tree)
    check = getattr(recipe_cls, "check", None)
    if check is not None:
        check(cfg)
    return cfg


def to_plain(cfg: Config) -> dict:
    return cfg.model_dump(mode="json", by_alias=True)


def to_yaml(cfg: Config | dict) -> str:
    data = cfg if isinstance(cfg, dict) else to_plain(cfg)
    return yamlio.dump(data)


def _is_under(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


# Keys added after run directories already existed, with their defaults: at the default they
# are left out of the run name's hash (the same command still finds its run directory) and a
# config.yaml written before them reads as holding the default.
ADDED_KEYS = {
    "fsdp.reshard_after_forward": True,
    "fsdp.cpu_offload": False,
    "data.test_fraction": 0.0,
    "train.optimizer_args": {},
    "train.scheduler_args": {},
    "train.scheduler_interval": "step",
    "train.loss": "cross_entropy",
    "train.label_smoothing": 0.0,
    "train.focal_gamma": 2.0,
    "train.l1": 0.0,
    "data.class_weights": None,
    "data.sampling": "shuffle",
    "data.shuffle": True,
    "data.drop_last": True,
    "model.init": "default",
    "model.freeze": [],
}


def config_hash(cfg: Config) -> str:
    """Hash of everything that changes results (operational keys left out)."""
    flat = {
        k: v
        for k, v in flatten(to_plain(cfg)).items()
        if not _is_under(k, OPERATIONAL_KEYS) and not (k in ADDED_KEYS and ADDED_KEYS[k] == v)
    }
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def diff_configs(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    a, b = {**ADDED_KEYS, **flatten(old)}, {**ADDED_KEYS, **flatten(new)}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def split_diff(diff: dict[str, tuple[Any, Any]]) -> tuple[dict, dict]:
    """(changes that alter results, changes that are safe for an existing run)."""
    unsafe = {k: v for k, v in diff.items() if not _is_under(k, RESUME_SAFE_KEYS)}
    safe = {k: v for k, v in diff.items() if _is_under(k, RESUME_SAFE_KEYS)}
    return unsafe, safe
