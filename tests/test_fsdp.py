"""FSDP2 (``--strategy fsdp``) on the CPU: real torchrun + gloo processes, sharded DCP checkpoints."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.conftest import ROOT, assert_same_weights, kill_group_at_random, launch_here, make_dirs, read_jsonl

SHARDED = f"{ROOT / 'tests' / 'tiny_recipe.py'}:TinySharded"  # each Linear its own shard unit
EXACT = ["model.dropout=0", "data.noise=0", "log.quiet=true", "train.log_every=1", "data.size=160"]
TWO = ["--procs", "2", "--device", "cpu"]


def run_dir(cwd: Path, name: str) -> Path:
    return cwd / "runs" / "tiny" / name


def losses(path: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in read_jsonl(path / "metrics.jsonl") if key in e]


def test_two_fsdp_processes_follow_ddp_and_export_full_weights(tmp_path):
    """fp32: FSDP reduce-scatters what DDP all-reduces; the trajectories agree to 1e-6 (clipped
    norms included), every checkpoint holds sharded DCP state only, model.safetensors the whole
    model; compiled, the same."""
    base = [f"recipe={SHARDED}", *EXACT, *TWO, "train.grad_clip=0.5"]
    ddp = launch_here([*base, "run.name=ddp", "--strategy", "ddp"], tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    fsdp = launch_here([*base, "run.name=fsdp", "--strategy", "fsdp"], tmp_path)
    assert fsdp.returncode == 0, fsdp.stderr
    a, b = losses(run_dir(tmp_path, "ddp")), losses(run_dir(tmp_path, "fsdp"))
    assert [s for s, _ in a] == [s for s, _ in b] and len(a) == 14
    assert max(abs(x - y) for (_, x), (_, y) in zip(a, b, strict=True)) < 1e-6, (a, b)
    # the clipped norm over shards is the norm DDP sees over the whole gradients
    na, nb = losses(run_dir(tmp_path, "ddp"), "grad_norm"), losses(run_dir(tmp_path, "fsdp"), "grad_norm")
    assert na and max(abs(x - y) for (_, x), (_, y) in zip(na, nb, strict=True)) < 1e-5
    wa = load_file(str(run_dir(tmp_path, "ddp") / "model.safetensors"))
    wb = load_file(str(run_dir(tmp_path, "fsdp") / "model.safetensors"))
    assert wa.keys() == wb.keys()
    assert all(wa[k].shape == wb[k].shape and torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    ckpt = sorted((run_dir(tmp_path, "fsdp") / "checkpoints").glob("step-*"))[-1]
    assert (ckpt / "COMPLETE").is_file() and (ckpt / "dcp" / ".metadata").is_file()
    assert {p.name for p in (ckpt / "dcp").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    assert not (ckpt / "model.safetensors").exists()  # no rank gathers the whole model to checkpoint
    plan = json.loads((run_dir(tmp_path, "fsdp") / "plan.json").read_text())
    assert (plan["strategy"], plan["device"], plan["world_size"]) == ("fsdp", "cpu", 2)
    # train.compile composes with it (torch.compile over the sharded module, CPU inductor)
    compiled = launch_here([*base, "run.name=c", "--strategy", "fsdp", "train.compile=true"], tmp_path, timeout=600)
    assert compiled.returncode == 0, compiled.stderr
    c = losses(run_dir(tmp_path, "c"))
    assert [s for s, _ in c] == [s for s, _ in a] and max(
        abs(x - y) for (_, x), (_, y) in zip(a, c, strict=True)
    ) < 1e-5
    assert load_file(str(run_dir(tmp_path, "c") / "model.safetensors")).keys() == wa.keys()  # no _orig_mod.


def test_sigkill_at_random_moments_resumes_bit_exact_with_async_dcp_and_accumulation(tmp_path):
    args = [
        f"recipe={SHARDED}", "log.quiet=true", "run.name=r", *TWO, "--strategy", "fsdp", "train.epochs=4",
        "data.size=200", "data.step_delay=0.02", "checkpoint.every_steps=3", "checkpoint.async=true",
        "train.grad_accum_steps=2",
    ]  # fmt: skip
    ref, killed = make_dirs(tmp_path, "ref", "killed")
    r = launch_here(args, ref)
    assert r.returncode == 0, r.stderr
    kills = kill_group_at_random(args, killed, run_dir(killed, "r"), random.Random(17), within=1.5)
    assert kills >= 1
    r = launch_here(args, killed)
    assert r.returncode == 0, r.stderr
    assert_same_weights(run_dir(ref, "r") / "model.safetensors", run_dir(killed, "r") / "model.safetensors")
    assert not list((run_dir(killed, "r") / "checkpoints").glob(".tmp-*"))  # no staging left behind


def test_fp16_mixed_with_the_sharded_scaler_resumes_bit_exact_and_on_another_process_count(tmp_path):
    """Also: the DCP checkpoint is refused by another strategy with one line, and kept."""
    args = [f"recipe={SHARDED}", "run.name=f", *TWO, "--strategy", "fsdp", "--precision", "fp16-mixed",
            "train.epochs=3", "train.grad_clip=1.0"]  # fmt: skip
    ref, cut, other = make_dirs(tmp_path, "ref", "cut", "other")
    r = launch_here(args, ref)
    assert r.returncode == 0, r.stderr
    assert launch_here([*args, "train.max_steps=5"], cut).returncode == 0
    state = torch.load(cut / "runs/tiny/f/checkpoints/step-5/state.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0  # the ShardedGradScaler's state is checkpointed
    shutil.copytree(cut / "runs", other / "runs")
    # DDP cannot read dcp/: one line, exit 2, nothing lost
    # (the last --strategy wins; max_steps=6: an extension, or the completed run had nothing to do)
    r = launch_here([*args, "--strategy", "ddp", "train.max_steps=6"], cut)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "--strategy fsdp" in errors[0], r.stderr
    assert "Traceback" not in r.stderr and (cut / "runs/tiny/f/checkpoints/step-5/COMPLETE").is_file()
    r = launch_here(args, cut)
    assert r.returncode == 0 and "resumed from" in r.stderr, r.stderr
    assert_same_weights(ref / "runs/tiny/f/model.safetensors", cut / "runs/tiny/f/model.safetensors")
    # the same checkpoint resumed by one process: DCP reshards, the run goes on from the same share
    one = [a for a in args if a not in ("--procs", "2")] + ["--procs", "1"]
    r = launch_here(one, other)
    assert r.returncode == 0 and "resumed from" in r.stderr, r.stderr
    s = json.loads((other / "runs/tiny/f/summary.json").read_text())
    assert s["status"] == "completed" and s["global_step"] > 5
    assert (
        load_file(str(other / "runs/tiny/f/model.safetensors")).keys()
        == load_file(str(ref / "runs/tiny/f/model.safetensors")).keys()
    )


def test_a_shard_unit_that_is_no_module_is_one_line_and_exit_2(tmp_path):
    bad = f"{ROOT / 'tests' / 'tiny_recipe.py'}:TinyBadUnits"
    r = launch_here([f"recipe={bad}", *TWO, "--strategy", "fsdp", "log.quiet=true"], tmp_path)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1 and "'encoder' is no module of the model" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # a fresh run directory is removed again


def test_dry_run_shows_the_torchrun_command(tmp_path):
    r = launch_here([f"recipe={SHARDED}", *TWO, "--strategy", "fsdp", "--dry-run"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "# plan: strategy=fsdp device=cpu procs/node=2" in r.stdout
    command = r.stdout.split("# command:\n", 1)[1]
    assert "torch.distributed.run --standalone --nproc-per-node=2 -m launcher.runtime.worker" in command
    assert not (tmp_path / "runs").exists()


def test_the_capability_table_names_every_strategy():
    from launcher.capabilities import CAPABILITIES
    from launcher.runtime.strategies import STRATEGIES, strategy_class

    assert set(CAPABILITIES) == set(STRATEGIES)
    assert all(strategy_class(name).name == name for name in STRATEGIES)


# --------------------------------------------------------------------------- in-process, 2 ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shards_per_rank(rank: int, port: int, out: str) -> None:
    from types import SimpleNamespace

    from launcher.runtime.env import DistEnv
    from launcher.runtime.strategies.fsdp import FSDP, shard_units

    torch.manual_seed(0)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": "2"})
    env = DistEnv(rank=rank, world_size=2, local_rank=rank, local_world_size=2, master_port=port)
    cfg = SimpleNamespace(
        dist=SimpleNamespace(timeout_s=60),
        fsdp=SimpleNamespace(reshard_after_forward=True, cpu_offload=False),
        train=SimpleNamespace(precision="fp32"),
    )
    block = lambda: torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256))  # noqa: E731
    model = torch.nn.Sequential(block(), block(), torch.nn.Linear(256, 4))
    total = sum(p.numel() for p in model.parameters())
    strategy = FSDP(env, torch.device("cpu"), cfg)
    units = shard_units(model, ())  # the default policy: both blocks (131k parameters each), not the head
    model = strategy.wrap(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    local = sum(p.to_local().numel() for p in model.parameters())
    state = sum(v.to_local().numel() for s in opt.state.values() for v in s.values() if v.dim() > 0)
    norm = float(strategy.grad_norm(list(model.parameters())))
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"total": total, "local": local, "state": state, "units": len(units), "norm": norm})
    )
    del model, opt
    import gc

    gc.collect()
    strategy.teardown()


def test_each_rank_holds_about_half_the_parameters_and_optimizer_state(tmp_path):
    torch.multiprocessing.spawn(_shards_per_rank, args=(_free_port(), str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = ranks[0]["total"]
    for r in ranks:
        assert r["units"] == 2
        assert abs(r["local"] - total / 2) <= 256 * 2  # up to a row per tensor of uneven split
        assert abs(r["state"] - total) <= 256 * 4  # Adam: two moments of the local shard
    assert ranks[0]["local"] + ranks[1]["local"] == total
    assert ranks[0]["norm"] == ranks[1]["norm"] > 0  # the global norm, the same on both ranks
