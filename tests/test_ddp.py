"""Real 2-process DDP runs on the CPU (torchrun + gloo)."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import (
    assert_same_weights,
    kill_group_at_random,
    launch_here,
    make_dirs,
    read_jsonl,
    start,
)

# no dropout and no noise: the per-rank random streams then cannot matter
EXACT = ["model.dropout=0", "data.noise=0", "log.quiet=true", "train.log_every=1", "data.size=160"]


def run_dir(cwd: Path, name: str) -> Path:
    return cwd / "runs" / "tiny" / name


# (strategy, extra keys, tolerance): DDP and Accelerate reduce the same numbers as one process
# (fp32, up to summation order); DeepSpeed ZeRO reduces flat, partitioned buffers.
STRATEGIES = [
    ("ddp", [], 1e-5),
    ("accelerate", [], 1e-5),
    ("deepspeed", ["deepspeed.stage=1"], 1e-4),
    ("deepspeed", ["deepspeed.stage=2"], 1e-4),
]


@pytest.mark.parametrize(("strategy", "extra", "tol"), STRATEGIES, ids=["ddp", "accelerate", "zero1", "zero2"])
def test_two_processes_follow_one_process_with_twice_the_batch(tmp_path, tiny, strategy, extra, tol):
    one = launch_here([f"recipe={tiny}", *EXACT, "run.name=one", "train.batch_size=16"], tmp_path)
    assert one.returncode == 0, one.stderr
    two_args = ["run.name=two", "train.batch_size=8", "--procs", "2", "--device", "cpu", "--strategy", strategy]
    two = launch_here([f"recipe={tiny}", *EXACT, *two_args, *extra], tmp_path)
    assert two.returncode == 0, two.stderr
    a = [e for e in read_jsonl(run_dir(tmp_path, "one") / "metrics.jsonl") if "train/loss" in e]
    b = [e for e in read_jsonl(run_dir(tmp_path, "two") / "metrics.jsonl") if "train/loss" in e]
    assert [e["step"] for e in a] == [e["step"] for e in b] and len(a) == 2 * 7
    for ea, eb in zip(a, b, strict=True):
        assert abs(ea["train/loss"] - eb["train/loss"]) < tol, (ea, eb)
        assert ea["train/acc"] == eb["train/acc"]  # sums reduced exactly: the same counts
    va = [e for e in read_jsonl(run_dir(tmp_path, "one") / "metrics.jsonl") if "val/loss" in e]
    vb = [e for e in read_jsonl(run_dir(tmp_path, "two") / "metrics.jsonl") if "val/loss" in e]
    assert [e["val/acc"] for e in va] == [e["val/acc"] for e in vb]
    wa = load_file(str(run_dir(tmp_path, "one") / "model.safetensors"))
    wb = load_file(str(run_dir(tmp_path, "two") / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=tol) for k in wa)
    s = json.loads((run_dir(tmp_path, "two") / "summary.json").read_text())
    assert s["global_batch_size"] == 16
    # rank 1 wrote its own log file, rank 0 the run's files
    assert (run_dir(tmp_path, "two") / "logs" / "rank-1.log").is_file()
    ckpt = sorted((run_dir(tmp_path, "two") / "checkpoints").glob("step-*"))[-1]
    assert {p.name for p in ckpt.glob("rng-rank*.pt")} == {"rng-rank0.pt", "rng-rank1.pt"}


def test_kill_everything_and_rerun_is_bit_exact(tmp_path, tiny):
    args = [
        f"recipe={tiny}",
        "log.quiet=true",
        "run.name=r",
        "--procs",
        "2",
        "--device",
        "cpu",
        "train.epochs=4",
        "data.size=200",
        "data.step_delay=0.02",
        "checkpoint.every_steps=3",
    ]
    ref, killed = make_dirs(tmp_path, "ref", "killed")
    r = launch_here(args, ref)
    assert r.returncode == 0, r.stderr
    kills = kill_group_at_random(args, killed, run_dir(killed, "r"), random.Random(11), times=2)
    assert kills >= 1
    r = launch_here(args, killed)
    assert r.returncode == 0, r.stderr
    assert_same_weights(run_dir(ref, "r") / "model.safetensors", run_dir(killed, "r") / "model.safetensors")


def test_one_rank_failing_stops_the_job_and_names_the_rank(tmp_path, tiny):
    t0 = time.time()
    r = launch_here(
        [f"recipe={tiny}", "log.quiet=true", "run.name=f", "--procs", "2", "--device", "cpu", "data.fail_at_item=30"],
        tmp_path,
        timeout=120,
    )
    assert time.time() - t0 < 90
    assert r.returncode == 1
    assert (
        "broken sample 30" in r.stderr
        or "broken sample 30" in (run_dir(tmp_path, "f") / "logs" / "rank-1.log").read_text()
    )
    assert "Root Cause" in r.stderr and "rank" in r.stderr
    s = json.loads((run_dir(tmp_path, "f") / "summary.json").read_text())
    assert s["status"] == "failed"


def test_sigterm_to_launch_preempts_all_ranks(tmp_path, tiny):
    args = [
        f"recipe={tiny}",
        "log.quiet=true",
        "run.name=p",
        "--procs",
        "2",
        "--device",
        "cpu",
        "train.epochs=6",
        "data.size=200",
        "data.step_delay=0.05",
    ]
    proc = start(args, tmp_path, new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        m = run_dir(tmp_path, "p") / "metrics.jsonl"
        if m.exists() and m.stat().st_size > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # only to `launch`: it forwards
    _, err = proc.communicate(timeout=90)
    assert proc.returncode == 143, err
    s = json.loads((run_dir(tmp_path, "p") / "summary.json").read_text())
    assert s["status"] == "preempted"
    assert (run_dir(tmp_path, "p") / "checkpoints" / f"step-{s['global_step']}" / "COMPLETE").is_file()
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("second", [["--procs", "2", "--device", "cpu"], ["--procs", "2", "--strategy", "accelerate"]])
def test_a_single_process_run_resumes_under_two_processes(tmp_path, tiny, second):
    base = [f"recipe={tiny}", "log.quiet=true", "run.name=x", "train.epochs=3", "train.batch_size=8"]
    r = launch_here([*base, "train.max_steps=13"], tmp_path)  # stops mid-epoch 2 (9 steps per epoch)
    assert r.returncode == 0, r.stderr
    r = launch_here([*base, *second], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "dist.procs: 1 -> 2" in r.stderr  # the change is reported, not refused
    s = json.loads((run_dir(tmp_path, "x") / "summary.json").read_text())
    assert s["status"] == "completed" and s["resumed_from"].endswith("step-13")
    # 13 steps of 8 samples, then the rest of epoch 2 and epoch 3 at 16 samples per step
    assert s["epochs"] == 3 and s["global_step"] == 13 + 2 + 4


# two CPU processes under DeepSpeed
DEEPSPEED_2 = ["--procs", "2", "--device", "cpu", "--strategy", "deepspeed"]


def test_deepspeed_resumes_through_its_engine_exactly(tmp_path, tiny):
    args = [
        f"recipe={tiny}",
        "log.quiet=true",
        "run.name=d",
        *DEEPSPEED_2,
        "train.epochs=3",
        "train.grad_accum_steps=2",
    ]
    ref, cut = make_dirs(tmp_path, "ref", "cut")
    assert launch_here(args, ref).returncode == 0
    r = launch_here([*args, "train.max_steps=3"], cut)  # stops mid-epoch 2 (2 steps per epoch)
    assert r.returncode == 0, r.stderr
    assert (run_dir(cut, "d") / "checkpoints" / "step-3" / "deepspeed").is_dir()
    r = launch_here(args, cut)
    assert r.returncode == 0, r.stderr
    assert json.loads((run_dir(cut, "d") / "summary.json").read_text())["resumed_from"].endswith("step-3")
    assert_same_weights(run_dir(ref, "d") / "model.safetensors", run_dir(cut, "d") / "model.safetensors")
    # a DeepSpeed checkpoint is not silently loaded by another strategy
    other = [a if a != "deepspeed" else "ddp" for a in args if a != "train.epochs=3"]
    r = launch_here([*other, "train.epochs=4"], cut)
    assert r.returncode == 2 and "resume it with --strategy deepspeed" in r.stderr


def test_deepspeed_zero3_bf16_runs_and_exports_full_weights(tmp_path, tiny):
    r = launch_here(
        [
            f"recipe={tiny}",
            "log.quiet=true",
            "run.name=z3",
            *DEEPSPEED_2,
            "deepspeed.stage=3",
            "--precision",
            "bf16-mixed",
            "train.epochs=1",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    w = load_file(str(run_dir(tmp_path, "z3") / "model.safetensors"))
    assert w["0.weight"].shape == (16, 8) and w["0.weight"].dtype == torch.bfloat16
