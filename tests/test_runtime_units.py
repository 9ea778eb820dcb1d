"""Unit tests of the worker-side pieces, in process (no training run)."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
import torch

from launcher.config import TrainSection
from launcher.errors import ConfigError, LaunchError
from launcher.runtime.checkpoint import load_state_file, strip_prefixes
from launcher.runtime.data import EpochBatchSampler, SeededBatches, mix_seed
from launcher.runtime.env import DistEnv
from launcher.runtime.optim import build_optimizer, build_scheduler, param_groups
from launcher.runtime.precision import Precision
from launcher.runtime.rng import capture, restore
from recipes.base import Recipe
from tests.conftest import ROOT


def flat(sampler) -> list[int]:
    return [i for b in sampler for i in b]


def test_order_depends_on_seed_and_epoch_only():
    a = EpochBatchSampler(50, 8, shuffle=True, seed=1)
    b = EpochBatchSampler(50, 8, shuffle=True, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    assert flat(a) == flat(b)
    b.set_epoch(4)
    assert flat(a) != flat(b)
    c = EpochBatchSampler(50, 8, shuffle=True, seed=2)
    c.set_epoch(3)
    assert flat(a) != flat(c)


def test_start_batch_skips_exactly_the_consumed_batches():
    s = EpochBatchSampler(50, 8, shuffle=True, seed=0, drop_last=True)
    s.set_epoch(2)
    full = list(s)
    assert len(full) == 6 == s.batches_per_epoch()
    s.set_epoch(2, start_batch=4)
    rest = list(s)
    assert rest == full[4:] and len(s) == 2
    assert [b.seed for b in rest] == [b.seed for b in full[4:]]


def test_ranks_partition_the_padded_epoch():
    shards = []
    for rank in range(3):
        s = EpochBatchSampler(10, 2, shuffle=True, seed=0, rank=rank, world_size=3)
        s.set_epoch(0)
        shards.append(flat(s))
    assert all(len(x) == 4 for x in shards)  # ceil(10 / 3), padded
    assert set().union(*map(set, shards)) == set(range(10))


def test_evaluation_sharding_counts_every_sample_once():
    seen = []
    for rank in range(3):
        s = EpochBatchSampler(10, 4, shuffle=False, seed=0, rank=rank, world_size=3, pad=False)
        seen += flat(s)
    assert sorted(seen) == list(range(10))


def test_tiny_dataset_still_yields_a_batch():
    s = EpochBatchSampler(3, 8, shuffle=True, seed=0, drop_last=True)
    assert len(list(s)) == 1


def test_seeded_batches_repeat_random_transforms_and_keep_the_global_stream():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(1).item() + random.random()

    ds = SeededBatches(Noisy())
    s = EpochBatchSampler(10, 5, shuffle=True, seed=0)
    batch = next(iter(s))
    torch.manual_seed(0)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    first = ds.__getitems__(batch)
    after = torch.rand(1)
    assert after.equal(expected_next)  # the global torch stream is untouched
    assert ds.__getitems__(batch) == first  # same batch seed, same "augmentation"


def test_only_datasets_that_may_draw_random_numbers_are_seeded_per_batch():
    from launcher.runtime.data import make_loader

    tensors = torch.utils.data.TensorDataset(torch.arange(10.0))
    sampler = EpochBatchSampler(10, 5, shuffle=False, seed=0)

    def wrapped(ds):
        return isinstance(make_loader(ds, sampler, num_workers=0, pin_memory=False, seed=0).dataset, SeededBatches)

    assert not wrapped(tensors)
    assert not wrapped(torch.utils.data.Subset(torch.utils.data.Subset(tensors, [1, 2, 3]), [0, 1]))

    class Augmented(torch.utils.data.TensorDataset):  # a subclass may add random transforms
        pass

    assert wrapped(Augmented(torch.arange(10.0)))
    assert wrapped(torch.utils.data.Subset(Augmented(torch.arange(10.0)), [1, 2]))


def test_rng_capture_restore_round_trip():
    import numpy as np

    state = capture()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_mix_seed_is_stable_and_spreads():
    assert mix_seed(1, 2) == mix_seed(1, 2)
    assert len({mix_seed(0, e) for e in range(100)}) == 100
    assert mix_seed(0, 1) != mix_seed(1, 0)


def test_dist_env_from_mapping():
    env = DistEnv.from_environ(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "n1"}
    )
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.master_addr) == (3, 4, 1, 2, "n1")
    assert env.distributed and not env.is_main
    assert DistEnv.from_environ({}) == DistEnv()


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))


def test_no_weight_decay_on_biases_and_norm_layers_and_backbone_lr():
    t = TrainSection(lr=0.1, weight_decay=0.01, backbone_lr_mult=0.5)
    groups = param_groups(_net(), t, head=["2."])
    by = {(g["lr"], g["weight_decay"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert by == {(0.1, 0.01): 8, (0.1, 0.0): 2, (0.05, 0.01): 16, (0.05, 0.0): 12}
    assert groups[0]["lr"] == 0.1  # head first: param_groups[0] carries the base lr


def test_groups_merge_when_settings_are_equal():
    assert len(param_groups(_net(), TrainSection(weight_decay=0.0), head=[])) == 1


def test_backbone_lr_mult_needs_a_head():
    with pytest.raises(ConfigError):
        param_groups(_net(), TrainSection(backbone_lr_mult=0.1), head=[])


@pytest.mark.parametrize(
    "name", ["none", "step", "multistep", "exponential", "cosine", "onecycle", "plateau", "warmup_cosine"]
)
def test_every_scheduler_builds_steps_and_round_trips(name):
    extra = {"milestones": [2, 4]} if name == "multistep" else {}
    t = TrainSection(scheduler=name, warmup_steps=2, step_size=2, **extra)
    model = _net()
    opt = build_optimizer(model, t, head=[])
    sched = build_scheduler(opt, t, total_steps=8)
    if name == "none":
        assert sched is None
        return
    lrs = []
    for _ in range(6):
        opt.step()
        sched.step(1.0) if name == "plateau" else sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    if name != "plateau":
        assert len(set(lrs)) > 1, lrs  # the schedule moves the lr
    state = sched.state_dict()
    again = build_scheduler(build_optimizer(model, t, head=[]), t, total_steps=8)
    again.load_state_dict(state)
    assert again.state_dict().keys() == state.keys()


def test_precision_fp16_on_cpu_scales_and_mps_refuses_it_and_bf16_autocast_runs():
    from launcher.runtime.precision import check_supported

    with pytest.raises(LaunchError, match="not supported on mps"):
        check_supported("fp16-mixed", torch.device("mps"))
    p16 = Precision("fp16-mixed", torch.device("cpu"))
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with p16.autocast():
        loss = model(torch.randn(8, 4)).float().pow(2).mean()
    p16.backward(loss)
    p16.step(opt, list(model.parameters()), None)
    assert p16.state_dict()["scale"] > 0  # the scaler ran and its state is checkpointable
    before = model.weight.detach().clone()
    with p16.autocast():
        loss = model(torch.randn(8, 4)).float().sum() * float("inf")  # inf gradients: the step is skipped
    opt.zero_grad()
    p16.backward(loss)
    scale = p16.state_dict()["scale"]
    p16.step(opt, list(model.parameters()), None)
    assert torch.equal(model.weight, before) and p16.state_dict()["scale"] < scale
    p = Precision("bf16-mixed", torch.device("cpu"))
    with p.autocast():
        y = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert y.dtype == torch.bfloat16
    assert p.state_dict() == {}


def test_strip_prefixes_and_weights_file_formats(tmp_path):
    sd = {"module._orig_mod.fc.weight": torch.ones(1), "layer.bias": torch.zeros(1)}
    assert set(strip_prefixes(sd)) == {"fc.weight", "layer.bias"}
    torch.save({"model": sd}, tmp_path / "a.pt")
    assert set(load_state_file(str(tmp_path / "a.pt"))) == {"fc.weight", "layer.bias"}


def test_default_metrics_divide_sums_by_count():
    m = Recipe(None).metrics({"loss": 6.0, "correct": 3.0, "count": 4.0})
    assert m == {"loss": 1.5, "acc": 0.75}


def test_fold_window_adds_each_key_exactly():
    from launcher.runtime.window import fold_window

    window = [
        {"loss": torch.tensor(1.5), "correct": torch.tensor(2**40 + 1), "count": 8},
        {"loss": torch.tensor([2.5]), "correct": torch.tensor(3), "count": 8},  # shape (1,) beside ()
        {"loss": 0.25, "count": 4, "extra": torch.tensor(7.0)},  # a number, and a key of one step only
    ]
    out = fold_window(window)
    assert out["count"] == 20 and isinstance(out["count"], int)
    assert out["loss"].item() == 4.25
    assert out["correct"].dtype == torch.int64 and out["correct"].item() == 2**40 + 4  # no float rounding
    assert out["extra"].item() == 7.0
    assert fold_window([]) == {}


def test_training_window_detaches_and_stays_bounded():
    from launcher.runtime.window import WINDOW_FOLD, MetricWindow, fold_window

    w = torch.ones((), requires_grad=True)
    window = MetricWindow()
    steps = 2 * WINDOW_FOLD + 3
    for _ in range(steps):
        window.add({"loss": w * 2, "count": 1})
    assert len(window.sums) <= WINDOW_FOLD
    assert not any(s["loss"].requires_grad for s in window.sums)  # no step's graph is kept
    total = fold_window(window.sums)
    assert total["loss"].item() == 2 * steps and total["count"] == steps


def test_step_result_is_checked_at_the_first_call_only(tmp_path, monkeypatch):
    """The contract check of ``step()`` stands in for the recipe's method once, then steps aside:
    the loop must not keep calling it (it cost ~15 us of every step)."""
    from launcher import config as cfgmod
    from launcher import recipe_loader
    from launcher.rundir import RunDir, write_atomic
    from launcher.runtime.worker import main as worker_main
    from tests.conftest import TINY

    calls = []
    check = recipe_loader.check_step_result
    monkeypatch.setattr(recipe_loader, "check_step_result", lambda *a, **k: calls.append(1) or check(*a, **k))
    overrides = [
        ("recipe", TINY),
        ("log.quiet", "true"),
        ("log.backends", "[jsonl]"),
        ("run.output_dir", str(tmp_path)),
    ]
    cfg = cfgmod.resolve(recipe_loader.load_recipe(TINY), [], overrides)
    rd = RunDir(tmp_path / "run")
    rd.path.mkdir()
    write_atomic(rd.config, cfgmod.to_yaml(cfg))
    assert worker_main(str(rd.path)) == 0
    assert len(calls) == 1


def test_imports_without_gc_pauses_collection_then_freezes_what_exists():
    import gc

    from launcher.startup import imports_without_gc

    frozen = gc.get_freeze_count()
    try:
        with imports_without_gc():
            assert not gc.isenabled()
            made = [[i] for i in range(1000)]  # objects made while importing
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(made)  # later passes skip them
        gc.disable()
        with imports_without_gc():
            pass
        assert not gc.isenabled()  # a caller's own choice is kept
    finally:
        gc.unfreeze()
        gc.enable()


def test_config_classes_without_plugins_skips_pydantic_plugins_only_inside(tmp_path):
    # a real pydantic plugin, installed as a distribution with an entry point (what pydantic scans)
    dist = tmp_path / "fakeplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[pydantic]\nfake = fakeplug:plugin\n")
    (tmp_path / "fakeplug.py").write_text(
        "SEEN = []\n"
        "class _Plugin:\n"
        "    def new_schema_validator(self, schema, schema_type, path, kind, config, settings):\n"
        "        SEEN.append(path.name)\n"
        "        return None, None, None\n"
        "plugin = _Plugin()\n"
    )
    script = (
        "import os, sys\n"
        "from pydantic import BaseModel\n"
        "from launcher.startup import config_classes_without_plugins\n"
        "import fakeplug\n"
        "with config_classes_without_plugins():\n"
        "    class Inside(BaseModel):\n"
        "        x: int = 0\n"
        "    assert os.environ['PYDANTIC_DISABLE_PLUGINS'] == '__all__'\n"
        "assert 'PYDANTIC_DISABLE_PLUGINS' not in os.environ\n"
        "class Outside(BaseModel):\n"
        "    y: int = 0\n"
        "print(fakeplug.SEEN)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['Outside']"
    # a user's own setting is kept, before and after
    env["PYDANTIC_DISABLE_PLUGINS"] = "other"
    script2 = (
        "import os\n"
        "from launcher.startup import config_classes_without_plugins\n"
        "with config_classes_without_plugins():\n"
        "    assert os.environ['PYDANTIC_DISABLE_PLUGINS'] == 'other'\n"
        "assert os.environ['PYDANTIC_DISABLE_PLUGINS'] == 'other'\n"
    )
    out = subprocess.run([sys.executable, "-c", script2], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def test_the_agent_gives_rank_0s_bad_input_whatever_the_others_ended_with():
    """Rank 0 refuses (one line, exit 2) while rank 1 is in a collective with it: rank 1 then
    fails with a lost connection (exit 1) or is closed by torchrun (a signal). Either way the run
    is bad input, not a failure (a race that made a resumed DeepSpeed run flaky)."""
    from types import SimpleNamespace

    from launcher.runtime.agent import _exit_code

    def error(**codes):
        return SimpleNamespace(failures={int(r[1:]): SimpleNamespace(exitcode=c) for r, c in codes.items()})

    quiet = SimpleNamespace(received=[])
    assert _exit_code(error(r0=2, r1=1), quiet) == 2
    assert _exit_code(error(r0=2, r1=-15), quiet) == 2
    assert _exit_code(error(r1=2, r0=-15), quiet) == 2  # (another rank said it; rank 0 was closed)
    assert _exit_code(error(r0=1, r1=2), quiet) is None  # rank 0 failed: a failure, torchrun's report shows
