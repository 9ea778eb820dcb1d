"""The recipe contract. Importing this module does not import torch.

A recipe supplies the parts that are specific to a task -- model, datasets, the loss and metric
sums of one batch, default config -- and nothing else. The runtime owns devices, precision,
``backward()``, optimizers, samplers, distributed code, checkpoints and logging. Recipes must not
call ``.cuda()``, ``.to(device)``, ``.backward()`` or ``torch.distributed``; a test enforces this
for the recipes in this repository.

Write your own by subclassing :class:`Recipe` and run it with
``launch recipe=my_pkg.my_module:MyRecipe`` or ``launch recipe=path/to/file.py:MyRecipe``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from launcher.config import DataSection, ModelSection

# Methods a recipe must implement; the loader names the missing ones.
REQUIRED_METHODS = ("build_model", "build_datasets", "step")


class Recipe:
    """Base class of recipes.

    Class attributes:
        name: directory name under ``run.output_dir`` (defaults to the registry name or class name).
        description: one line for ``launch --list``.
        Model: pydantic section (subclass of ``ModelSection``) describing ``model.*`` keys.
        Data: pydantic section (subclass of ``DataSection``) describing ``data.*`` keys.
        defaults: nested dict of recipe defaults for any section, e.g. ``{"train": {"lr": 0.05}}``.
        head: parameter-name prefixes of the task head (``["fc."]``); the rest is the backbone,
            which ``train.backbone_lr_mult`` scales.
        shard_units: with ``--strategy fsdp``, the modules sharded as units of their own
            (qualified names such as ``"layer1"`` or class names such as ``"BasicBlock"``);
            empty: every module with children and at least 100k parameters. A name that is no
            module of the model is refused before training.
        metric_names: the names :meth:`metrics` returns, e.g. ``("loss", "acc")``. The runtime
            reports each as ``train/<name>`` and ``val/<name>``; a name written with its split
            (``"val/wer"``) is one that split alone reports. Declared, a monitor
            (``checkpoint.monitor`` with ``keep_best`` or the plateau scheduler,
            ``train.early_stopping.monitor``) that names another metric is refused before
            anything starts; ``None`` (the default): it is refused at the first evaluation.
            Other values the loop logs (``lr``, ``grad_norm``, ``samples_per_sec``, ``time/*``,
            ``memory/*``) cannot be monitored.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Model: ClassVar[type[ModelSection]] = ModelSection
    Data: ClassVar[type[DataSection]] = DataSection
    defaults: ClassVar[dict[str, Any]] = {}
    head: ClassVar[list[str]] = []
    shard_units: ClassVar[tuple[str, ...]] = ()
    metric_names: ClassVar[tuple[str, ...] | None] = None
    input_suffixes: ClassVar[tuple[str, ...]] = ()
    classification: ClassVar[bool] = False

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.class_weights = None  # data.class_weights as a tensor: set by the runtime before training

    @classmethod
    def check(cls, cfg: Any) -> None:
        """Pre-flight checks that need no torch (paths exist, classes match). Raise ConfigError.

        This one checks the monitored metric names against ``metric_names``: an override should
        call ``super().check(cfg)`` (the worker checks them again before training anyway)."""
        from launcher.recipe_loader import check_classification, check_monitors

        check_monitors(cls, cfg)
        check_classification(cls, cfg)

    def build_model(self) -> Any:  # -> torch.nn.Module
        raise NotImplementedError

    def build_datasets(self) -> tuple[Any, ...]:
        """-> ``(train, val | None)`` or ``(train, val | None, test | None)``: map-style datasets.

        Training never looks at ``test``: at the end of a completed run it is evaluated once with
        the final weights (those of ``model.safetensors``), logged as ``test/<name>`` and kept in
        ``summary.json`` (``final_metrics``)."""
        raise NotImplementedError

    def step(self, model: Any, batch: Any) -> tuple[Any, dict[str, Any]]:
        """Run ``model`` on one batch (already on the right device).

        Returns ``(loss, sums)``: ``loss`` is the scalar to minimise (mean over the batch);
        ``sums`` maps names to *sums* over the batch (e.g. ``loss`` summed, ``correct``,
        ``count``) so that adding them across batches and processes gives exact totals.
        """
        raise NotImplementedError

    def num_classes(self) -> int | None:
        """The number of classes of a classification recipe (None: not known before the data)."""
        return None

    def classification_loss(self, logits: Any, target: Any) -> Any:
        """The mean loss of ``logits`` (batch, classes) against class indices ``target`` as
        ``train.loss`` says: cross_entropy, nll (LogSoftmax then NLLLoss: the same value),
        bce_with_logits (each class a sigmoid against the one-hot target) or focal
        (``train.focal_gamma``); with ``train.label_smoothing`` and the class weights
        (``data.class_weights``: a weighted mean, as torch's losses take it)."""
        import torch
        import torch.nn.functional as F

        t = self.cfg.train
        logits = logits.float()
        w = self.class_weights  # (on the model's device: the runtime puts it there)
        smooth = t.label_smoothing
        if t.loss == "cross_entropy":
            return F.cross_entropy(logits, target, weight=w, label_smoothing=smooth)
        if t.loss == "nll":
            logp = F.log_softmax(logits, dim=-1)
            if smooth:  # (NLLLoss has no smoothing: the same mixture as cross_entropy's)
                return (1 - smooth) * F.nll_loss(logp, target, weight=w) + smooth * _uniform_term(logp, target, w)
            return F.nll_loss(logp, target, weight=w)
        classes = logits.shape[-1]
        onehot = F.one_hot(target, classes).to(logits.dtype)
        if t.loss == "bce_with_logits":
            goal = onehot * (1 - smooth) + smooth / classes
            per = F.binary_cross_entropy_with_logits(logits, goal, reduction="none")  # (batch, classes)
            if w is not None:
                per = per * w
            return per.sum(-1).mean() / classes
        # focal: -(1 - p_t)^gamma log p_t, weighted by the target's class weight
        logp = F.log_softmax(logits, dim=-1)
        goal = onehot * (1 - smooth) + smooth / classes
        per = -(goal * logp).sum(-1)
        p_t = torch.exp(-per)
        per = (1 - p_t).pow(t.focal_gamma) * per
        if w is None:
            return per.mean()
        wy = w[target]
        return (per * wy).sum() / wy.sum()

    def model_inputs(self, batch: Any) -> tuple:
        """The positional arguments ``step`` gives the model for ``batch`` (``launch export``
        traces the model with them). Default: the batch's first element, as in ``model(x)``."""
        return (batch[0],)

    def export_inputs(self, batch: Any) -> tuple:
        """The example ``launch export --format pt2`` traces with (default: ``model_inputs``).
        The batch size stays free; other sizes stay free where the model allows it (a recurrent
        model fixes its number of steps: pad the example to the longest input it should take)."""
        return tuple(self.model_inputs(batch))

    def export_info(self) -> dict[str, Any]:
        """What a user of an exported model needs besides the weights: class names, input
        preprocessing (JSON-serialisable). Written next to ``launch export``'s file."""
        return {}

    def read_input(self, path: str) -> list[Any]:
        """``launch predict``: the samples in one input file, each as the validation split's
        samples are (the label may be any placeholder: prediction never looks at it), with the
        validation preprocessing. Most files hold one sample; a file of several (a ``.npz`` of
        sequences) gives one record each. Raise any exception for a file that cannot be read: it
        is reported in one line naming the file."""
        raise NotImplementedError

    def predict(self, model: Any, batch: Any) -> list[dict[str, Any]]:
        """``launch predict``: one JSON-serialisable record per sample of ``batch`` (collated as
        the loader does, on the model's device, no gradients). Default, for classifiers: the
        ``class`` (a name from ``export_info()["classes"]`` when it has them) and the ``probs``."""
        import torch

        logits = model(*self.model_inputs(batch))
        probs = torch.softmax(logits.float(), dim=-1).cpu()
        names = self.export_info().get("classes")
        records = []
        for row in probs.tolist():
            row = [round(v, 6) for v in row]
            best = max(range(len(row)), key=row.__getitem__)
            if names and len(names) == len(row):
                records.append({"class": names[best], "probs": dict(zip(names, row, strict=True))})
            else:
                records.append({"class": best, "probs": row})
        return records

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed values into metrics. Default: every sum divided by ``count``;
        ``correct`` is reported as ``acc``."""
        count = sums.get("count", 0.0) or 1.0
        out = {}
        for key, value in sums.items():
            if key == "count":
                continue
            out["acc" if key == "correct" else key] = value / count
        return out


def _uniform_term(logp: Any, target: Any, weight: Any) -> Any:
    """The smoothing part of cross_entropy's label smoothing: the mean over classes of -log p,
    weighted per sample by its target's class weight (torch's convention)."""
    per = -(logp * (1.0 if weight is None else weight)).mean(-1)
    if weight is None:
        return per.mean()
    return per.sum() / weight[target].sum()
