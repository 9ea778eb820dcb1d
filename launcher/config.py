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
import re
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from launcher import yamlio
from launcher.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, numbers may be given for strings."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, populate_by_name=True)


class RunSection(Section):
    name: Optional[str] = Field(None, description="run directory name; default: derived from the overrides")
    output_dir: str = Field("runs", description="parent of <recipe>/<name>/")
    seed: int = 0
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms(True)")
    resume: str = Field("auto", description="auto | never | path to a checkpoint directory")

    @model_validator(mode="after")
    def _check(self) -> RunSection:
        if self.name is not None and (not self.name or "/" in self.name or self.name in (".", "..")):
            raise ValueError(f"run.name={self.name!r} must be a plain directory name (no '/')")
        if not self.resume:
            raise ValueError("run.resume must be auto, never or a checkpoint path")
        return self


class EarlyStoppingSection(Section):
    monitor: Optional[str] = Field(None, description="metric to watch, e.g. val/loss; null disables")
    mode: Literal["min", "max"] = "min"
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    min_delta: float = Field(0.0, ge=0)


Scheduler = Literal["none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau", "warmup_cosine"]
Precision = Literal["fp32", "bf16-mixed", "fp16-mixed", "bf16-true"]


class TrainSection(Section):
    epochs: int = Field(1, ge=1)
    max_steps: Optional[int] = Field(None, ge=1, description="stop after this many optimizer steps")
    batch_size: int = Field(64, ge=1, description="per process")
    lr: float = Field(0.1, gt=0)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0, description="not applied to biases and norm layers")
    backbone_lr_mult: float = Field(1.0, ge=0, description="lr multiplier for all but the recipe's head")
    # Schedulers step once per optimizer step (plateau: once per evaluation).
    scheduler: Scheduler = "none"
    warmup_steps: int = Field(0, ge=0)
    step_size: int = Field(1000, ge=1, description="step: optimizer steps between decays")
    milestones: list[int] = Field(default_factory=list, description="multistep: optimizer steps")
    gamma: float = Field(0.1, gt=0, description="decay factor (step, multistep, exponential, plateau)")
    min_lr: float = Field(0.0, ge=0, description="floor of cosine schedules")
    plateau_patience: int = Field(2, ge=0)
    grad_accum_steps: int = Field(1, ge=1)
    grad_clip: Optional[float] = Field(None, gt=0, description="max global grad norm")
    eval_every: int = Field(0, ge=0, description="evaluate every N optimizer steps (0: at epoch ends only)")
    log_every: int = Field(10, ge=1, description="log train metrics every N optimizer steps")
    precision: Precision = "fp32"
    compile: bool = Field(False, description="torch.compile the model for training (evaluation stays eager)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    early_stopping: EarlyStoppingSection = Field(default_factory=EarlyStoppingSection)

    @model_validator(mode="after")
    def _check(self) -> TrainSection:
        if self.scheduler == "multistep" and not self.milestones:
            raise ValueError("train.scheduler=multistep needs train.milestones=[...] (optimizer steps)")
        if sorted(self.milestones) != list(self.milestones):
            raise ValueError("train.milestones must be increasing")
        return self


class DataSection(Section):
    """Shared data keys; recipes subclass this to add their own."""

    name: str = Field("", description="which data source the recipe loads")
    root: str = Field("data", description="where data lives / is downloaded to")
    num_workers: int = Field(0, ge=0)
    val_fraction: float = Field(0.2, ge=0, lt=1, description="held-out share when the source has no split")
    pin_memory: Optional[bool] = Field(None, description="default: on for CUDA")
    download: bool = Field(True, description="let torchvision/torchaudio download missing data")


class ModelSection(Section):
    """Recipes subclass this for their model keys."""

    init_from: Optional[str] = Field(
        None, description="start a new run from these weights (a run directory, checkpoint or weights file)"
    )


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
    init_timeout: float = Field(30.0, gt=0, description="seconds wandb may take to start an online run")


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
        return self


class DistSection(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    procs: int = Field(1, ge=1, description="processes per node")
    nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "single", "dp", "ddp", "accelerate", "deepspeed"] = "auto"
    timeout_s: int = Field(
        300, ge=5, description="seconds to wait for the other processes at start-up (rendezvous) and in collectives"
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
    signal_lead_s: int = Field(120, ge=1, description="seconds before the time limit the signal is sent")
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
    if not sep or not key:
        raise ConfigError(f"cannot read argument {arg!r}: expected key=value (e.g. train.lr=0.01)")
    return key, raw


def _field_annotation(cls: type[BaseModel], key: str) -> Any:
    node: Any = cls
    for part in key.split("."):
        fields = getattr(node, "model_fields", None) or {}
        field = next((f for n, f in fields.items() if part in (n, f.alias)), None)
        if field is None:
            return None
        node = field.annotation
    return node


def parse_value(cls: type[BaseModel], key: str, raw: str) -> Any:
    """Parse a command-line value for ``key``: strings stay verbatim for string keys (so
    ``run.name=007`` stays "007"); everything else is read as YAML (3, 0.1, 1e-3, true, [1,2], null)."""
    ann = _field_annotation(cls, key)
    if ann is str or ann == Optional[str]:
        return None if (ann is not str and raw in ("null", "~", "None")) else raw
    if _FLOAT.fullmatch(raw.strip()) and any(c in raw for c in ".eE"):
        return float(raw)
    try:
        return yamlio.load(raw) if raw.strip() else ""
    except yamlio.YAMLError:
        return raw


def set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


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


def load_yaml_file(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found; pass config=PATH to an existing YAML file")
    try:
        data = yamlio.load(p.read_text()) or {}
    except yamlio.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}; fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections (run:, train:, ...)")
    return data


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
    shown = json.dumps(value) if isinstance(value, (int, float, str, bool, type(None), list)) else repr(value)
    return f"bad value {loc}={shown}: {err['msg']}"


def validate(cls: type[Config], tree: dict) -> Config:
    try:
        return cls.model_validate(tree)
    except ValidationError as e:
        errors = e.errors()
        first = _format_error(errors[0], cls, tree)
        more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None


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
        set_dotted(tree, key, parse_value(cls, key, raw))
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


def config_hash(cfg: Config) -> str:
    """Hash of everything that changes results (operational keys left out)."""
    flat = {k: v for k, v in flatten(to_plain(cfg)).items() if not _is_under(k, OPERATIONAL_KEYS)}
    blob = json.dumps(flat, sort_keys=True, default=str).encode()
    return hashlib.sha1(blob).hexdigest()[:8]


def diff_configs(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def split_diff(diff: dict[str, tuple[Any, Any]]) -> tuple[dict, dict]:
    """(changes that alter results, changes that are safe for an existing run)."""
    unsafe = {k: v for k, v in diff.items() if not _is_under(k, RESUME_SAFE_KEYS)}
    safe = {k: v for k, v in diff.items() if _is_under(k, RESUME_SAFE_KEYS)}
    return unsafe, safe
