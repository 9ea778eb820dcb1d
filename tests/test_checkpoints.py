"""Checkpoint writing, retention, resume modes and failure handling (real runs of the tiny recipe)."""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from launcher.errors import LaunchError
from launcher.rundir import RunDir
from launcher.runtime import rng
from launcher.runtime.checkpoint import CheckpointManager, CorruptCheckpoint, EngineLoads, write_manifest
from tests.badinput import Case, assert_refused
from tests.conftest import assert_same_weights, launch_env, launch_here, start, wait_for_training

QUIET = ["log.quiet=true", "run.name=r"]


def steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*"))


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_retention_keeps_last_and_best(tmp_path, tiny):
    # eval and checkpoint every 2 steps; keep the 2 newest plus the best by val/acc
    args = [
        f"recipe={tiny}",
        *QUIET,
        "train.epochs=3",
        "train.eval_every=2",
        "checkpoint.every_steps=2",
        "checkpoint.keep_last=2",
        "checkpoint.keep_best=1",
        "checkpoint.monitor=val/loss",
        "checkpoint.mode=min",
    ]
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "runs" / "tiny" / "r"
    kept = steps(run_dir)
    s = summary(run_dir)
    final = s["global_step"]
    best = s["best"]["step"]
    assert final in kept and best in kept
    assert len(kept) == len({*kept[-2:], best}) <= 3  # the 2 newest + the best, nothing else
    assert 2 not in kept or best == 2  # the first save was pruned (unless it is the best)
    # nothing half-written is left behind
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    for step in kept:
        assert (run_dir / "checkpoints" / f"step-{step}" / "COMPLETE").is_file()


def test_async_checkpoints_resume_to_the_same_weights(tmp_path, tiny):
    base = [f"recipe={tiny}", *QUIET, "train.epochs=3", "checkpoint.every_steps=3"]
    sync_dir, async_dir = tmp_path / "sync", tmp_path / "async"
    sync_dir.mkdir()
    async_dir.mkdir()
    assert launch_here(base, sync_dir).returncode == 0
    # async: stop half-way (max_steps), then extend to the full run, resuming from async saves
    r = launch_here([*base, "checkpoint.async=true", "train.max_steps=10"], async_dir)
    assert r.returncode == 0, r.stderr
    r = launch_here([*base, "checkpoint.async=true"], async_dir)
    assert r.returncode == 0, r.stderr
    a, b = sync_dir / "runs/tiny/r", async_dir / "runs/tiny/r"
    assert_same_weights(a / "model.safetensors", b / "model.safetensors")
    assert summary(b)["resumed_from"].endswith("step-10")


def test_async_save_waits_for_one_in_flight_and_copies_off_the_training_path(tmp_path):
    manager = CheckpointManager(RunDir(tmp_path), keep_last=5, keep_best=0, monitor="m", mode="min", async_write=True)
    weights = {"w": torch.zeros(1000)}
    manager.save(1, weights, {"optimizer": {}}, [rng.capture()], {"step": 1}, "x: 1\n")
    weights["w"].add_(1)  # training goes on and changes the tensors in place
    manager.save(2, weights, {"optimizer": {}}, [rng.capture()], {"step": 2}, "x: 1\n")
    manager.wait()
    first = CheckpointManager.load(tmp_path / "checkpoints" / "step-1")
    second = CheckpointManager.load(tmp_path / "checkpoints" / "step-2")
    assert first["model"]["w"].sum().item() == 0  # the copy was taken at save time
    assert second["model"]["w"].sum().item() == 1000


def test_incomplete_checkpoint_is_never_loaded(tmp_path):
    manager = CheckpointManager(RunDir(tmp_path), keep_last=5, keep_best=0, monitor="m", mode="min")
    manager.save(1, {"w": torch.ones(3)}, {}, [rng.capture()], {"step": 1}, "x: 1\n")
    manager.save(2, {"w": torch.ones(3) * 2}, {}, [rng.capture()], {"step": 2}, "x: 1\n")
    (tmp_path / "checkpoints" / "step-2" / "COMPLETE").unlink()  # crash between rename and marker
    (tmp_path / "checkpoints" / ".tmp-step-3-abc").mkdir()  # crash before the rename
    loaded = manager.load_latest()
    assert loaded["path"].name == "step-1"
    with pytest.raises(CorruptCheckpoint):
        CheckpointManager.load(tmp_path / "checkpoints" / "step-2")
    manager.clean_partial()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]


def test_resume_never_refuses_a_run_with_checkpoints(tmp_path, tiny):
    args = [f"recipe={tiny}", *QUIET, "train.epochs=1", "train.max_steps=3"]
    assert launch_here(args, tmp_path).returncode == 0
    r = launch_here([*args, "run.resume=never", "train.max_steps=6"], tmp_path)
    assert r.returncode == 2
    assert "run.resume=never" in r.stderr and "run.resume=auto" in r.stderr
    assert summary(tmp_path / "runs/tiny/r")["global_step"] == 3  # untouched


def test_resume_from_a_path_and_refuse_other_configs(tmp_path, tiny):
    src = [f"recipe={tiny}", "log.quiet=true", "run.name=src", "train.epochs=2"]
    assert launch_here(src, tmp_path).returncode == 0
    ckpt = sorted((tmp_path / "runs/tiny/src/checkpoints").glob("step-*"))[0]
    # same config, another run directory: continues from that checkpoint
    r = launch_here(
        [f"recipe={tiny}", "log.quiet=true", "run.name=dst", "train.epochs=2", f"run.resume={ckpt}"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "runs/tiny/dst"
    assert summary(dst)["resumed_from"] == str(ckpt)
    # a different model shape: refused, naming the key
    r = launch_here(
        [f"recipe={tiny}", "log.quiet=true", "run.name=other", "model.hidden=7", f"run.resume={ckpt}"], tmp_path
    )
    assert r.returncode == 2
    assert "model.hidden" in r.stderr and "model.init_from" in r.stderr
    assert not (tmp_path / "runs/tiny/other").exists()
    # not a checkpoint at all
    r = launch_here([f"recipe={tiny}", "log.quiet=true", "run.name=bad", f"run.resume={tmp_path}"], tmp_path)
    assert r.returncode == 2 and "not a complete, readable checkpoint" in r.stderr


def test_init_from_starts_a_new_run_from_weights_only(tmp_path, tiny):
    assert launch_here([f"recipe={tiny}", "log.quiet=true", "run.name=a", "train.epochs=1"], tmp_path).returncode == 0
    src = tmp_path / "runs/tiny/a"
    r = launch_here(
        [f"recipe={tiny}", "log.quiet=true", "run.name=b", "train.epochs=1", "train.lr=1e-9", f"model.init_from={src}"],
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    b = tmp_path / "runs/tiny/b"
    assert summary(b)["resumed_from"] is None and summary(b)["global_step"] > 0
    wa, wb = load_file(str(src / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert torch.allclose(wa["0.weight"], wb["0.weight"], atol=1e-6)  # lr ~ 0: weights carried over
    r = launch_here(
        [f"recipe={tiny}", "log.quiet=true", "run.name=c", "model.hidden=5", f"model.init_from={src}"], tmp_path
    )
    assert r.returncode == 2 and "does not fit this model" in r.stderr


def test_sigusr2_is_a_preemption(tmp_path, tiny):

    args = [f"recipe={tiny}", *QUIET, "train.epochs=6", "data.size=160", "data.step_delay=0.01"]
    proc = start(args, tmp_path)
    assert wait_for_training(tmp_path, proc)
    proc.send_signal(__import__("signal").SIGUSR2)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert summary(tmp_path / "runs/tiny/r")["status"] == "preempted"


def _limit_file_size(limit: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_disk_full_while_training_stops_cleanly_and_keeps_checkpoints(tmp_path, tiny):
    # a model big enough that a checkpoint file is > 64 KiB
    args = [f"recipe={tiny}", *QUIET, "model.hidden=4096", "train.epochs=2"]
    assert launch_here([*args, "train.max_steps=3"], tmp_path).returncode == 0
    run_dir = tmp_path / "runs/tiny/r"
    before = steps(run_dir)
    # resume with files capped at 64 KiB: the next checkpoint cannot be written (EFBIG, like ENOSPC)
    proc = subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=tmp_path,
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(64 * 1024),
    )
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "cannot write checkpoint" in errors[0] and "intact" in errors[0]
    assert steps(run_dir) == before
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    s = summary(run_dir)
    assert s["status"] == "failed" and "cannot write checkpoint" in s["reason"]
    # with space again, the same command resumes and completes
    r = launch_here(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert summary(run_dir)["status"] == "completed"


# --------------------------------------------------------------------------- verified checkpoints
SHARD = "deepspeed/engine/zero_pp_rank_0_mp_rank_00_optim_states.pt"
OTHER_SHARD = "deepspeed/engine/zero_pp_rank_1_mp_rank_00_optim_states.pt"


def _save(manager: CheckpointManager, root: Path, step: int, with_engine: bool = False) -> Path:
    engine = None
    if with_engine:  # what DeepSpeed's save_shards leaves (every rank's share)
        engine = root / f".tmp-engine-{step}"
        (engine / "engine").mkdir(parents=True)
        for name in (SHARD, OTHER_SHARD):
            torch.save({"optimizer_state_dict": {"m": torch.randn(64)}}, root / name.replace("deepspeed", engine.name))
    state = {"optimizer": {"momentum": torch.randn(256)}}
    manager.save(
        step, {"w": torch.randn(1024)}, state, [rng.capture(), rng.capture()], {"step": step}, "x: 1\n",
        shards=("deepspeed", engine) if engine is not None else None,
    )  # fmt: skip
    manager.wait()
    return root / "checkpoints" / f"step-{step}"


def _flip(path: Path, n: int, member: str | None = None) -> None:
    """Invert ``n`` bytes in the middle of ``path``, or of the member of a torch zip file whose
    name ends with ``member`` (a tensor's bytes: ``data/0``; the pickle: ``data.pkl``)."""
    raw = bytearray(path.read_bytes())
    start, size = 0, len(raw)
    if member is not None:
        with zipfile.ZipFile(path) as z:
            info = next(i for i in z.infolist() if i.filename.endswith(member))
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
        start, size = info.header_offset + 30 + name_len + extra_len, info.compress_size
    assert size > n
    at = start + (size - n) // 2
    raw[at : at + n] = bytes(b ^ 0xFF for b in raw[at : at + n])
    path.write_bytes(bytes(raw))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (file, damage, the reason the warning gives)
DAMAGE = [
    pytest.param("model.safetensors", lambda p: _flip(p, 64), "model.safetensors: checksum mismatch", id="model"),
    pytest.param("state.pt", lambda p: _flip(p, 64, "data/0"), "state.pt: checksum mismatch", id="state-tensor"),
    pytest.param("rng-rank0.pt", lambda p: _flip(p, 16, "data.pkl"), "rng-rank0.pt: checksum mismatch", id="rng"),
    pytest.param(SHARD, lambda p: _flip(p, 64), f"{SHARD}: checksum mismatch", id="deepspeed-shard"),
    pytest.param("state.pt", _truncate, "state.pt: ", id="truncated"),
    pytest.param("config.yaml", os.unlink, "config.yaml: missing", id="missing"),
    pytest.param("COMPLETE", lambda p: _flip(p, 8), "COMPLETE: damaged manifest", id="marker"),
]


@pytest.mark.parametrize("async_write", [False, True], ids=["sync", "async"])
def test_the_marker_is_a_manifest_of_every_file(tmp_path, async_write):
    manager = CheckpointManager(RunDir(tmp_path), 5, 0, "m", "min", async_write=async_write)
    ckpt = _save(manager, tmp_path, 3, with_engine=not async_write)
    doc = json.loads((ckpt / "COMPLETE").read_text())
    on_disk = sorted(p.relative_to(ckpt).as_posix() for p in ckpt.rglob("*") if p.is_file() and p.name != "COMPLETE")
    assert doc["step"] == 3 and doc["checksum"] == "crc32" and sorted(doc["files"]) == on_disk
    for rel, (size, crc) in doc["files"].items():
        data = (ckpt / rel).read_bytes()
        assert size == len(data) and crc == f"{zlib.crc32(data):08x}", rel
    assert (SHARD in doc["files"]) is not async_write  # (DeepSpeed's engine files: sync saves only)
    assert not (ckpt / "COMPLETE.tmp").exists()


@pytest.mark.parametrize("name,damage,reason", DAMAGE)
def test_a_damaged_checkpoint_is_skipped_for_the_newest_that_verifies(tmp_path, name, damage, reason):
    manager = CheckpointManager(RunDir(tmp_path), 5, 0, "m", "min")
    _save(manager, tmp_path, 10, with_engine=True)
    newest = _save(manager, tmp_path, 20, with_engine=True)
    damage(newest / name)
    warnings: list[str] = []
    loaded = manager.load_latest(warn=warnings.append)
    assert loaded["path"].name == "step-10"
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"warning: checkpoint step-20 is damaged ({reason}")
    assert warnings[0].endswith("); resuming from step-10")
    # run.resume=PATH to it: refused (the worker makes that one error line), never loaded
    with pytest.raises(CorruptCheckpoint, match=reason.split(":")[0]):
        CheckpointManager.load(newest)
    # training that reaches step 20 again replaces it (an intact one at a step is never rewritten)
    assert not manager.is_complete(20)
    _save(manager, tmp_path, 20, with_engine=True)
    assert CheckpointManager.load(newest)["path"] == newest


def test_each_rank_verifies_the_files_it_reads(tmp_path):
    manager = CheckpointManager(RunDir(tmp_path), 5, 0, "m", "min")
    ckpt = _save(manager, tmp_path, 1, with_engine=True)
    _flip(ckpt / "rng-rank1.pt", 16, "data.pkl")
    _flip(ckpt / OTHER_SHARD, 64)
    rank0 = CheckpointManager.load(ckpt, rank=0)  # rank 1's files are not rank 0's to read
    assert SHARD in rank0["verified"] and OTHER_SHARD not in rank0["verified"]
    with pytest.raises(CorruptCheckpoint, match=r"(rng-rank1\.pt|_rank_1_mp_rank_00_optim_states\.pt): checksum"):
        CheckpointManager.load(ckpt, rank=1)
    # a file the engine reads that this rank did not verify up front is verified when it is read
    with pytest.raises(LaunchError, match="is damaged .*zero_pp_rank_1_mp_rank_00_optim_states.pt: checksum mismatch"):
        EngineLoads(rank0)(ckpt / OTHER_SHARD, "cpu")
    assert torch.equal(
        EngineLoads(rank0)(ckpt / SHARD)["optimizer_state_dict"]["m"],
        torch.load(ckpt / SHARD)["optimizer_state_dict"]["m"],
    )


class _TwoRanks:
    """Rank 0's side of a two-process world whose rank 1 says ``said[i]`` = (damaged, refused)
    about the i-th checkpoint it tries (the strategy's gather, then any(refused), any(damaged))."""

    def __init__(self, said):
        self.said, self.answers = list(said), []

    def gather(self, mine):
        other = self.said.pop(0)
        self.answers = [other[1] is not None, other[0] is not None]
        return [mine, other]

    def any(self, flag):
        return flag or self.answers.pop(0)


def test_the_ranks_agree_on_the_checkpoint(tmp_path):
    manager = CheckpointManager(RunDir(tmp_path), 5, 0, "m", "min")
    _save(manager, tmp_path, 10)
    _save(manager, tmp_path, 20)
    warnings: list[str] = []
    world = _TwoRanks([("rng-rank1.pt: checksum mismatch", None), (None, None)])
    loaded = manager.load_latest(warn=warnings.append, world=world)
    assert loaded["path"].name == "step-10"  # rank 0's own files of step-20 verify
    assert warnings == [
        "warning: checkpoint step-20 is damaged (rng-rank1.pt: checksum mismatch); resuming from step-10"
    ]
    with pytest.raises(LaunchError, match="rng-rank1.pt contains pickled code"):
        manager.load_latest(world=_TwoRanks([(None, "rng-rank1.pt contains pickled code or objects")]))


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_file_that_verifies_but_holds_pickled_code_is_refused_not_skipped(tmp_path):
    manager = CheckpointManager(RunDir(tmp_path), 5, 0, "m", "min")
    _save(manager, tmp_path, 10)
    newest = _save(manager, tmp_path, 20)
    torch.save({"torch": _Payload(tmp_path / "pwned")}, newest / "rng-rank0.pt")
    write_manifest(newest)  # whoever can change a file can rewrite its checksum: not damage, an attack
    with pytest.raises(LaunchError, match="rng-rank0.pt contains pickled code"):
        manager.load_latest()
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("marker", ["20\n", ""], ids=["step-only", "empty"])
def test_a_checkpoint_written_before_manifests_loads_unverified(tmp_path, marker):
    manager = CheckpointManager(RunDir(tmp_path), 5, 0, "m", "min")
    ckpt = _save(manager, tmp_path, 20)
    (ckpt / "COMPLETE").write_text(marker)
    _flip(ckpt / "model.safetensors", 64)  # (undetectable without a manifest)
    loaded = manager.load_latest()
    assert loaded["path"] == ckpt and loaded["manifest"] is None


def test_a_damaged_newest_checkpoint_resumes_from_the_previous_one_bit_exact(tmp_path, tiny):
    """The issue's case: 64 flipped bytes in the newest model.safetensors were trained on."""
    args = [f"recipe={tiny}", *QUIET, "train.epochs=2", "checkpoint.every_steps=3", "checkpoint.keep_last=10"]
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    ref.mkdir()
    cut.mkdir()
    assert launch_here(args, ref).returncode == 0
    assert launch_here([*args, "train.max_steps=9"], cut).returncode == 0
    run_dir = cut / "runs/tiny/r"
    _flip(run_dir / "checkpoints/step-9/model.safetensors", 64)
    r = launch_here(args, cut)
    assert r.returncode == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        "warning: checkpoint step-9 is damaged (model.safetensors: checksum mismatch); resuming from step-6"
    ]
    assert summary(run_dir)["resumed_from"].endswith("step-6")
    assert_same_weights(ref / "runs/tiny/r/model.safetensors", run_dir / "model.safetensors")
    CheckpointManager.load(run_dir / "checkpoints/step-9")  # written again, intact


def _damaged_checkpoint(cwd: Path) -> None:
    manager = CheckpointManager(RunDir(cwd / "src"), 5, 0, "m", "min")
    _flip(_save(manager, cwd / "src", 4) / "rng-rank0.pt", 16, "data.pkl")


RESUME_CASES = [
    Case("resume a damaged checkpoint", ["recipe={tiny}", "run.resume={cwd}/src/checkpoints/step-4"],
         "rng-rank0.pt: checksum mismatch", setup=_damaged_checkpoint),
]  # fmt: skip


@pytest.mark.parametrize("case", RESUME_CASES, ids=lambda c: c.id)
def test_resume_refuses_bad_checkpoints(case, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    line = assert_refused(case, tmp_path, monkeypatch, capfd)  # (capfd: the worker is a child process)
    assert "not a complete, readable checkpoint" in line and "pickled code" not in line


# --------------------------------------------------------------------------- no code from any strategy
def _malicious_checkpoint(root: Path, poison: str, marker: Path) -> Path:
    """A checkpoint whose ``poison`` holds a pickled os.system payload, manifest rewritten to
    match (as anyone who can write the files can do). No config.yaml: nothing is compared
    with the run's config before the files are read. Sharded like the strategy that reads it:
    a DeepSpeed engine directory, or DCP's ``dcp/`` (whose ``.metadata`` is a plain pickle)."""
    import pickle

    manager = CheckpointManager(RunDir(root), 5, 0, "m", "min")
    shard_dir = "dcp" if poison.startswith("dcp/") else "deepspeed"
    staged = root / ".shards"
    if shard_dir == "dcp":
        staged.mkdir(parents=True)
        (staged / "__0_0.distcp").write_bytes(b"")
        (staged / ".metadata").write_bytes(b"")
    else:
        (staged / "engine").mkdir(parents=True)
        torch.save({"module": {}}, staged / "engine" / "mp_rank_00_model_states.pt")
    weights = {"0.weight": torch.zeros(16, 8), "0.bias": torch.zeros(16), "3.weight": torch.zeros(2, 16)}
    state = {"optimizer": {}, "scheduler": {}, "scaler": {}, "progress": {}, "trackers": {}}
    manager.save(1, weights, state, [rng.capture(), rng.capture()], {"step": 1}, "", shards=(shard_dir, staged))
    ckpt = root / "checkpoints" / "step-1"
    (ckpt / "config.yaml").unlink()
    if poison.endswith(".metadata"):
        (ckpt / poison).write_bytes(pickle.dumps(_Payload(marker)))
    else:
        torch.save({"module": _Payload(marker), "torch": _Payload(marker)}, ckpt / poison)
    write_manifest(ckpt)
    return ckpt


# (single: tests/test_resume.py::test_malicious_checkpoint_runs_nothing)
STRATEGIES = [
    pytest.param(["--strategy", "accelerate", "--device", "cpu"], "state.pt", id="accelerate"),
    pytest.param(["--strategy", "ddp", "--procs", "2", "--device", "cpu"], "rng-rank1.pt", id="ddp-rank1"),
    pytest.param(
        ["--strategy", "deepspeed", "--procs", "2", "--device", "cpu"],
        "deepspeed/engine/mp_rank_00_model_states.pt",
        id="deepspeed-engine",
    ),
    pytest.param(["--strategy", "fsdp", "--procs", "2", "--device", "cpu"], "dcp/.metadata", id="fsdp-dcp-metadata"),
    pytest.param(
        ["--strategy", "dp", "--gpus", "1"],
        "state.pt",
        id="dp",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="DataParallel needs a CUDA GPU"),
    ),
]


@pytest.mark.parametrize("options,poison", STRATEGIES)
def test_no_strategy_runs_code_from_a_checkpoint(tmp_path, tiny, options, poison):
    marker = tmp_path / "pwned"
    ckpt = _malicious_checkpoint(tmp_path / "evil", poison, marker)
    r = launch_here([f"recipe={tiny}", *QUIET, *options, f"run.resume={ckpt}"], tmp_path)
    assert not marker.exists(), "code from the checkpoint ran"
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2, r.stderr
    assert len(errors) == 1 and "refused to load" in errors[0] and poison.rsplit("/", 1)[-1] in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()
