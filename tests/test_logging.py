"""Logging through real runs of the tiny recipe: the metrics of metrics.jsonl and the totals of
summary.json, TensorBoard event files and wandb offline run files read back with their own
readers (also across a SIGKILL and a resume), offline fallbacks that never wait on the network,
and bad input."""

from __future__ import annotations

import http.server
import json
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import assert_same_weights, has_checkpoint, launch_env, launch_here, read_jsonl

QUIET = ["log.quiet=true"]
TIMINGS = ("time/step_sec", "time/data_wait_sec", "time/compute_sec", "time/data_wait_frac")


def run_dir(cwd: Path, name: str) -> Path:
    return cwd / "runs" / "tiny" / name


def train_events(path: Path) -> list[dict]:
    return [e for e in read_jsonl(path / "metrics.jsonl") if "train/loss" in e]


# --------------------------------------------------------------------------- metrics and totals


def test_step_time_split_grad_norm_memory_and_summary_totals(tmp_path, tiny):
    base = [f"recipe={tiny}", *QUIET, "train.epochs=2", "train.log_every=1"]
    # a slow loader (8 samples x 10 ms per batch) vs. a slow step (50 ms of "compute" per batch);
    # the second clips at a norm it never reaches, so it reports clip_grad_norm_'s norm
    slow_data = launch_here([*base, "run.name=data", "data.item_delay=0.01"], tmp_path)
    assert slow_data.returncode == 0, slow_data.stderr
    slow_step = launch_here([*base, "run.name=step", "data.step_delay=0.05", "train.grad_clip=1e9"], tmp_path)
    assert slow_step.returncode == 0, slow_step.stderr

    runs = {name: train_events(run_dir(tmp_path, name)) for name in ("data", "step")}
    for events in runs.values():
        assert [e["step"] for e in events] == list(range(1, 19))
        for e in events:
            assert e["grad_norm"] > 0 and e["samples_per_sec"] > 0 and e["memory/rss_peak_mb"] > 50
            assert 0 <= e["time/data_wait_frac"] <= 1
            assert e["time/step_sec"] == pytest.approx(e["time/data_wait_sec"] + e["time/compute_sec"], rel=1e-9)
            assert "memory/cuda_peak_mb" not in e  # CPU run
    # the gradient norm computed at logging steps equals the one clipping computes
    assert [e["grad_norm"] for e in runs["data"]] == pytest.approx([e["grad_norm"] for e in runs["step"]], rel=1e-6)
    assert [e["train/loss"] for e in runs["data"]] == [e["train/loss"] for e in runs["step"]]
    # the split: waiting for data dominates one run, compute the other
    assert statistics.median(e["time/data_wait_frac"] for e in runs["data"]) > 0.5
    assert statistics.median(e["time/data_wait_frac"] for e in runs["step"]) < 0.3
    assert statistics.median(e["time/compute_sec"] for e in runs["step"]) >= 0.05

    for name, lo, hi in (("data", 0.5, 1.0), ("step", 0.0, 0.3)):
        d = run_dir(tmp_path, name)
        summary = json.loads((d / "summary.json").read_text())
        totals = summary["totals"]
        assert lo < totals["time/data_wait_frac"] < hi, (name, totals)
        # 18 steps x 8 samples, at the reported rate, over the reported training time
        assert totals["samples_per_sec"] * totals["time/train_sec"] == pytest.approx(144, rel=1e-6)
        assert totals["time/data_wait_sec"] <= totals["time/train_sec"]
        assert len(totals["time/epoch_sec"]) == 2 and all(s > 0 for s in totals["time/epoch_sec"])
        assert totals["time/train_sec"] <= sum(totals["time/epoch_sec"]) <= summary["wall_time_sec"]
        assert totals["time/eval_sec"] > 0 and totals["time/checkpoint_sec"] > 0
        assert totals["memory/rss_peak_mb"] > 50 and totals["memory/cuda_peak_mb"] is None
        epochs = [e for e in read_jsonl(d / "metrics.jsonl") if "time/epoch_sec" in e]
        assert [(e["step"], e["epoch"]) for e in epochs] == [(9, 1), (18, 2)]
        assert [e["time/epoch_sec"] for e in epochs] == totals["time/epoch_sec"]
        assert all("time/eval_sec" in e for e in read_jsonl(d / "metrics.jsonl") if "val/loss" in e)


# --------------------------------------------------------------------------- helpers for kills


def popen(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return proc


def kill_after_a_checkpoint(args: list[str], cwd: Path, env: dict[str, str], trained: float = 0.3) -> None:
    """Start the run and SIGKILL it once it has a checkpoint and has trained ``trained`` seconds."""
    proc = popen(args, cwd, env)
    deadline = time.time() + 120
    started = None
    while started is None or not has_checkpoint(cwd) or time.time() < started + trained:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "no checkpoint"
        if started is None and any(p.stat().st_size for p in cwd.glob("runs/*/*/metrics.jsonl")):
            started = time.time()
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the kill: make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)


def resume_step(path: Path) -> int:
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"], summary
    return int(summary["resumed_from"].rsplit("-", 1)[1])


# --------------------------------------------------------------------------- TensorBoard

LONG = ["train.epochs=4", "data.size=160", "data.step_delay=0.02", "checkpoint.every_steps=3", "train.log_every=1"]


def test_tensorboard_files_read_back_like_metrics_jsonl_across_a_kill(tmp_path, tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    plain, tb = tmp_path / "plain", tmp_path / "tb"
    plain.mkdir()
    tb.mkdir()
    args = [f"recipe={tiny}", *QUIET, "run.name=r", *LONG]
    assert launch_here(args, plain).returncode == 0
    tb_args = [
        *args,
        "log.backends=[jsonl,tensorboard]",
        "log.tensorboard.histograms=true",
        "log.tensorboard.histogram_every=4",
        "log.tensorboard.graph=true",
    ]
    kill_after_a_checkpoint(tb_args, tb, launch_env())
    r = launch_here(tb_args, tb)
    assert r.returncode == 0, r.stderr
    d = run_dir(tb, "r")
    resumed_at = resume_step(d)
    # histograms, the graph trace and the resume leave training untouched
    assert_same_weights(run_dir(plain, "r") / "model.safetensors", d / "model.safetensors")

    acc = EventAccumulator(str(d / "tensorboard"), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    events = read_jsonl(d / "metrics.jsonl")
    for tag in ("train/loss", "train/acc", "lr", "grad_norm", "val/loss", "val/acc", "time/epoch_sec"):
        want = [(e["step"], e[tag]) for e in events if tag in e]
        got = [(s.step, s.value) for s in acc.Scalars(tag)]
        # no step twice (the killed attempt's events after the checkpoint were purged), none missing
        assert [s for s, _ in got] == [s for s, _ in want], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), tag
    steps = max(e["step"] for e in events)
    every4 = set(range(4, steps + 1, 4))
    for tag in ("weights/0.weight", "grads/0.weight", "weights/2.bias"):
        got = [h.step for h in acc.Histograms(tag)]
        assert got == sorted(set(got)), tag
        # a histogram taken exactly at the checkpoint step resumed from is purged with it
        assert every4 - {resumed_at} <= set(got) <= every4, (tag, got)
    assert tags["graph"] is True
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["train.lr"].number_value == pytest.approx(0.05)
    assert hparams["recipe"].string_value == tiny
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in experiment.metric_infos} >= {"hparam/val/loss", "hparam/train/loss"}
    final = json.loads((d / "summary.json").read_text())["final_metrics"]["val/loss"]
    assert acc.Scalars("hparam/val/loss")[-1].value == pytest.approx(final, rel=1e-6)


# --------------------------------------------------------------------------- wandb


def wandb_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """No WANDB_MODE, no API key, a HOME without ~/.netrc, wandb's own folders in tmp."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = launch_env(
        HOME=str(home),
        NETRC=str(home / ".netrc"),
        WANDB_CONFIG_DIR=str(home / "wandb-config"),
        WANDB_CACHE_DIR=str(home / "wandb-cache"),
        WANDB_DATA_DIR=str(home / "wandb-data"),
        **extra,
    )
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DIR"):
        if key not in extra:
            env.pop(key, None)
    return env


def launch(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    return r, time.time() - t0


def wandb_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if "wandb:" in ln]


def test_wandb_offline_without_api_key_one_run_id_across_a_kill(tmp_path, tiny):
    import torch

    from tests.wandb_records import read_run

    work = tmp_path / "work"
    work.mkdir()
    env = wandb_env(tmp_path)
    args = [
        f"recipe={tiny}",
        "run.name=w",
        *LONG,
        "train.epochs=8",
        "log.backends=[jsonl,console,wandb]",
        "log.wandb.project=proj",
        "log.wandb.group=grp",
        "log.wandb.tags=[t1,t2]",
    ]
    kill_after_a_checkpoint(args, work, env, trained=2.5)  # wandb writes its file every second
    r, seconds = launch(args, work, env)
    assert r.returncode == 0, r.stderr
    assert seconds < 90  # nothing waited for a network
    notices = wandb_lines(r.stderr)
    assert len(notices) == 1 and "no API key" in notices[0] and "logging offline" in notices[0], r.stderr
    d = run_dir(work, "w")
    run_id = (d / "wandb_id").read_text().strip()
    resumed_at = resume_step(d)
    for ckpt in d.glob("checkpoints/step-*/state.pt"):  # the kept ones (the first attempt's are rotated out)
        assert torch.load(ckpt, weights_only=True)["trackers"]["wandb_id"] == run_id

    files = sorted(d.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2, files  # one per attempt, both inside the run directory
    first, second = (read_run(f) for f in files)
    for run in (first, second):
        assert run.run_id == run_id
        assert (run.project, run.name, run.group, run.tags) == ("proj", "w", "grp", ["t1", "t2"])
        assert run.config["recipe"] == tiny
        assert run.config["train"]["lr"] == 0.05 and run.config["log"]["wandb"]["project"] == "proj"
    assert second.exit_code == 0

    want = {e["step"]: e["train/loss"] for e in train_events(d)}
    # the killed attempt's file holds what wandb wrote before the kill (up to the last second)
    killed = {row["_step"]: row["train/loss"] for row in first.history if "train/loss" in row}
    assert killed and min(killed) == 1
    assert killed == pytest.approx({s: want[s] for s in killed}, rel=1e-9)
    # the resumed attempt logged the events up to its checkpoint again, then the rest: all of them
    got = {row["_step"]: row["train/loss"] for row in second.history if "train/loss" in row}
    assert got == pytest.approx(want, rel=1e-9)
    assert max(killed) > resumed_at // 2 and max(want) > resumed_at
    val = [row for row in second.history if "val/loss" in row]
    assert [row["_step"] for row in val] == [e["step"] for e in read_jsonl(d / "metrics.jsonl") if "val/loss" in e]
    assert all("time/eval_sec" in row for row in val)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_wandb_with_a_key_but_no_server_goes_offline_at_once_and_writes_no_key(tmp_path, tiny):
    from tests.wandb_records import read_run

    work = tmp_path / "work"
    work.mkdir()
    key = "launchertestsecret" + "7" * 30
    env = wandb_env(tmp_path, WANDB_API_KEY=key, WANDB_BASE_URL=f"http://127.0.0.1:{closed_port()}")
    args = [f"recipe={tiny}", "run.name=k", "train.epochs=1", "log.backends=[jsonl,wandb]"]
    r, seconds = launch(args, work, env)
    assert r.returncode == 0, r.stderr
    assert seconds < 60
    notices = wandb_lines(r.stderr)
    assert len(notices) == 1 and "cannot reach the server" in notices[0] and "offline" in notices[0], r.stderr
    d = run_dir(work, "k")
    (f,) = d.glob("wandb/offline-run-*/run-*.wandb")
    assert read_run(f).run_id == (d / "wandb_id").read_text().strip()
    for path in tmp_path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert key.encode() not in path.read_bytes(), f"the API key is in {path}"


class _Failing(http.server.BaseHTTPRequestHandler):
    """A server that answers every request with 500: reachable, but no wandb run can start."""

    def _fail(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _fail

    def log_message(self, *args):
        pass


def test_wandb_online_start_that_fails_falls_back_to_offline_within_the_timeout(tmp_path, tiny):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        work = tmp_path / "work"
        work.mkdir()
        env = wandb_env(tmp_path, WANDB_API_KEY="x" * 40, WANDB_BASE_URL=f"http://127.0.0.1:{server.server_port}")
        args = [
            f"recipe={tiny}",
            "run.name=f",
            "train.epochs=1",
            "log.backends=[jsonl,wandb]",
            "log.wandb.init_timeout=3",
        ]
        r, seconds = launch(args, work, env)
    finally:
        server.shutdown()
    assert r.returncode == 0, r.stderr
    assert seconds < 60
    assert any("could not start the online run" in ln and "offline" in ln for ln in wandb_lines(r.stderr)), r.stderr
    assert len(list(run_dir(work, "f").glob("wandb/offline-run-*/run-*.wandb"))) == 1


# --------------------------------------------------------------------------- bad input

PROBE = """
import sys
for name in {missing!r}:
    sys.modules[name] = None  # as if not installed
from launcher.cli import main
try:
    main({argv!r})
except SystemExit as e:
    print("EXIT=" + str(e.code))
"""


@pytest.mark.parametrize("backend", ["wandb", "tensorboard"])
def test_backend_without_its_package_names_the_extra(tmp_path, tiny, backend):
    code = PROBE.format(missing=[backend], argv=[f"recipe={tiny}", f"log.backends=[jsonl,{backend}]"])
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=launch_env(), capture_output=True, text=True)
    assert "EXIT=2" in r.stdout.splitlines(), r.stdout + r.stderr
    errors = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and f"pip install 'launcher[{backend}]'" in errors[0], r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_unknown_backend_and_unwritable_log_dir_are_one_line(tmp_path, tiny):
    r = launch_here([f"recipe={tiny}", "log.backends=jsonl,tensorbord"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: unknown log backend 'tensorbord'; did you mean tensorboard? known: jsonl, console, wandb, tensorboard"
    )
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    r = launch_here([f"recipe={tiny}", "log.backends=[tensorboard]", f"log.dir={blocker}/logs"], tmp_path)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: log.dir={blocker}/logs is not writable"), r.stderr
    assert not (tmp_path / "runs").exists()
    # a comma-separated list works too
    r = launch_here([f"recipe={tiny}", "log.backends=jsonl,tensorboard", "--show-config"], tmp_path)
    assert r.returncode == 0 and "backends: [jsonl, tensorboard]" in r.stdout


def test_backends_write_under_log_dir(tmp_path, tiny):
    r = launch_here([f"recipe={tiny}", *QUIET, "run.name=l", "train.max_steps=2", "log.backends=[tensorboard]",
                    "log.dir=tb-logs"], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "tb-logs" / "tiny" / "l" / "tensorboard").glob("events.out.tfevents.*"))
    assert not (run_dir(tmp_path, "l") / "tensorboard").exists()
    assert (run_dir(tmp_path, "l") / "metrics.jsonl").stat().st_size > 0  # always written


def test_secrets_are_redacted_from_logged_configs():
    from launcher.runtime.loggers import redact

    tree = {"data": {"hf_token": "abc", "root": "x"}, "api_key": "k", "items": [{"password": "p"}]}
    assert redact(tree) == {
        "data": {"hf_token": "<redacted>", "root": "x"},
        "api_key": "<redacted>",
        "items": [{"password": "<redacted>"}],
    }
