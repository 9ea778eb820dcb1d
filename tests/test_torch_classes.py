"""train.optimizer / train.scheduler by torch class name: the parent's tables equal torch's own
signatures, names and arguments are checked before anything starts (did-you-mean), values a class
refuses are one line, and a class scheduler follows the run's length rules."""

from __future__ import annotations

import importlib.util

import pytest

from launcher import torch_classes as tc
from launcher.config import TrainSection
from tests.conftest import ROOT, TINY, launch_here


def _generator():
    spec = importlib.util.spec_from_file_location("torch_classes_gen", ROOT / "scripts" / "torch_classes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tables_are_torchs_own_signatures():
    gen = _generator()
    assert tc.OPTIMIZERS == gen.optimizer_classes()
    assert tc.SCHEDULERS == gen.scheduler_classes()
    assert tc.TORCHVISION_CLASSIFIERS == gen.torchvision_classifiers()
    assert set(tc.REFUSED_OPTIMIZERS) <= set(tc.OPTIMIZERS) and set(tc.REFUSED_SCHEDULERS) <= set(tc.SCHEDULERS)
    for cls, arg in tc.LENGTH_ARGS.items():
        assert arg in tc.SCHEDULERS[cls][0] + tc.SCHEDULERS[cls][1]


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ({"optimizer": "Adamx"}, "did you mean Adamax?"),
        ({"optimizer": "LBFGS"}, "closure"),
        ({"optimizer": "RMSprop", "optimizer_args": {"centred": True}}, "did you mean centered?"),
        ({"optimizer": "SGD", "optimizer_args": {"momentum": 0.5}}, "set it with train.momentum"),
        ({"optimizer": "AdamW", "optimizer_args": {"lr": 0.5}}, "set it with train.lr"),
        ({"scheduler": "cosin"}, "did you mean cosine?"),
        ({"scheduler": "LambdaLR"}, "Python function"),
        ({"scheduler": "SequentialLR"}, "combines other schedulers"),
        ({"scheduler": "CyclicLR", "scheduler_args": {"base_lr": 0.01}}, "needs train.scheduler_args.max_lr"),
        ({"scheduler": "StepLR", "scheduler_args": {"step_size": 3, "gama": 0.5}}, "did you mean gamma?"),
        ({"scheduler": "step", "scheduler_args": {"step_size": 3}}, "train.scheduler_args is for a"),
    ],
)
def test_bad_names_and_arguments_are_refused_by_the_schema(keys, needle):
    with pytest.raises(ValueError, match=None) as e:
        TrainSection(**keys)
    assert needle in str(e.value)


def test_names_in_any_case_and_the_old_ones():
    assert TrainSection(optimizer="rmsprop").optimizer == "rmsprop" and tc.optimizer_class("rmsprop") == "RMSprop"
    assert tc.optimizer_class("adamw") == "AdamW" and tc.optimizer_class("sgd") == "SGD"
    assert tc.scheduler_class("cosine") is None and tc.scheduler_class("cosineannealingwarmrestarts") == (
        "CosineAnnealingWarmRestarts"
    )
    assert tc.is_plateau("plateau") and tc.is_plateau("ReduceLROnPlateau") and not tc.is_plateau("StepLR")


def test_length_dependence():
    assert tc.length_dependent("cosine", {}) and not tc.length_dependent("step", {})
    assert tc.length_dependent("CosineAnnealingLR", {}) and not tc.length_dependent("CosineAnnealingLR", {"T_max": 9})
    assert tc.length_dependent("OneCycleLR", {}) and not tc.length_dependent("OneCycleLR", {"total_steps": 9})
    assert tc.length_dependent("PolynomialLR", {"power": 2}) and not tc.length_dependent("CyclicLR", {})


def _built(**keys):
    import torch

    from launcher.runtime.optim import build_optimizer, build_scheduler

    t = TrainSection(lr=0.1, **keys)
    opt = build_optimizer(torch.nn.Linear(3, 2), t, head=[])
    return opt, build_scheduler(opt, t, total_steps=20)


def test_any_optimizer_gets_its_arguments():
    import torch

    opt, _ = _built(optimizer="RMSprop", optimizer_args={"momentum": 0.5, "centered": True}, weight_decay=0.01)
    assert isinstance(opt, torch.optim.RMSprop)
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.param_groups[0]["centered"] is True
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]  # (no decay on the bias)
    opt, _ = _built(optimizer="NAdam", betas=(0.8, 0.99))
    assert opt.param_groups[0]["betas"] == (0.8, 0.99)
    opt, _ = _built(optimizer="Adagrad")
    assert "betas" not in opt.param_groups[0] and "momentum" not in opt.param_groups[0]
    opt, _ = _built(optimizer="sgd")
    assert opt.param_groups[0]["momentum"] == 0.9  # (the old default stays)


def test_any_scheduler_and_the_run_length_where_left_out():
    import torch

    S = torch.optim.lr_scheduler
    _, s = _built(scheduler="CosineAnnealingWarmRestarts", scheduler_args={"T_0": 5, "T_mult": 2})
    assert isinstance(s, S.CosineAnnealingWarmRestarts) and s.T_0 == 5 and s.T_mult == 2
    _, s = _built(scheduler="CosineAnnealingLR")
    assert s.T_max == 20  # the run's length
    _, s = _built(scheduler="PolynomialLR", scheduler_args={"power": 2.0})
    assert s.total_iters == 20 and s.power == 2.0
    _, s = _built(scheduler="OneCycleLR")
    assert s.total_steps == 20 and s.optimizer.param_groups[0]["max_lr"] == 0.1
    _, s = _built(scheduler="CyclicLR", scheduler_args={"base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4})
    assert isinstance(s, S.CyclicLR)
    lrs = []
    for _ in range(8):
        lrs.append(s.get_last_lr()[0])
        s.optimizer.step()
        s.step()
    assert lrs[0] == pytest.approx(0.01) and lrs[4] == pytest.approx(0.1)


def test_a_value_the_class_refuses_is_one_line_and_no_run_is_left(tmp_path):
    r = launch_here([f"recipe={TINY}", "log.quiet=true", "run.name=bad", "train.optimizer=Adam",
                     "train.optimizer_args.eps=-1", "--device", "cpu"], tmp_path)  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Invalid epsilon value" in lines[0], r.stderr
    assert "train.optimizer_args" in lines[0] and not (tmp_path / "runs" / "tiny" / "bad").exists()


def test_an_epoch_interval_steps_once_per_epoch(tmp_path):
    import json

    r = launch_here([f"recipe={TINY}", "log.quiet=true", "run.name=ep", "train.epochs=3", "train.lr=0.1",
                     "train.scheduler=StepLR", "train.scheduler_args={step_size: 1, gamma: 0.5}",
                     "train.scheduler_interval=epoch", "--device", "cpu"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    events = [json.loads(x) for x in (tmp_path / "runs" / "tiny" / "ep" / "metrics.jsonl").read_text().splitlines()]
    # the lr of the steps of each epoch (the last event, after the loop, shows the one after epoch 3)
    per_epoch = {}
    for e in events:
        if "lr" in e and e["epoch"] < 3:
            per_epoch.setdefault(e["epoch"], set()).add(round(e["lr"], 8))
    assert per_epoch == {0: {0.1}, 1: {0.05}, 2: {0.025}}
