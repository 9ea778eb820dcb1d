"""Shared fixtures: run `launch` as a real subprocess, read run directories."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = f"{ROOT / 'tests' / 'tiny_recipe.py'}:Tiny"


def launch_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)})
    env.update(extra)
    return env


def run_launch(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`python -m launcher ARGS` in ``cwd``; returns the finished process (text output)."""
    return subprocess.run(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=launch_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def launch_here(args: list[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """`launch ARGS` run inside this interpreter (``LAUNCHER_PREWARM=0``: a single process trains
    in it; several still start torchrun), with ``cwd``, the environment of :func:`run_launch` and
    its output captured: what :func:`run_launch` returns, without the seconds a new interpreter
    spends importing torch. For tests of what a run does, not of how processes start or end
    (``timeout``: pytest-timeout's instead)."""
    import contextlib
    import io
    import tempfile
    import traceback
    import warnings

    from launcher.cli import main

    saved_env, saved_cwd, saved_path = dict(os.environ), os.getcwd(), list(sys.path)
    saved_modules = set(sys.modules)
    out, err = io.StringIO(), io.StringIO()
    os.environ.update(launch_env(LAUNCHER_PREWARM="0", **env))
    os.chdir(cwd)
    sys.path.insert(0, str(cwd))  # as `python -m launcher` has it
    code = 0
    # what the processes it starts (torchrun, workers) write reaches file descriptors 1 and 2
    fd_out, fd_err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    saved_fds = os.dup(1), os.dup(2)
    os.dup2(fd_out.fileno(), 1)
    os.dup2(fd_err.fileno(), 2)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings()  # Python's default filters, shown on stderr (not pytest's record)
            warnings.simplefilter("default")
            warnings.showwarning = lambda m, c, f, n, file=None, line=None: err.write(
                warnings.formatwarning(m, c, f, n, line)
            )
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # what a new interpreter would print, and its exit status
                traceback.print_exc(file=err)
                code = 1
    finally:
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:  # a user's recipe module is imported afresh next time
            if name.startswith("_launch_user_recipe_") or _module_under(sys.modules[name], cwd):
                del sys.modules[name]
    texts = []
    for captured, f in ((out, fd_out), (err, fd_err)):
        f.seek(0)
        texts.append(captured.getvalue() + f.read().decode(errors="replace"))
        f.close()
    return subprocess.CompletedProcess(["launch", *args], code, *texts)


def _module_under(module, directory: Path) -> bool:
    path = getattr(module, "__file__", None)
    return bool(path) and Path(path).resolve().is_relative_to(Path(directory).resolve())


def only_run_dir(root: Path) -> Path:
    """The single run directory under ``root/runs/<recipe>/``."""
    dirs = [p for p in (root / "runs").glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def tiny() -> str:
    return TINY


def start(args: list[str], cwd: Path, new_session: bool = False) -> subprocess.Popen:
    """Start `launch ARGS` in the background (``new_session``: its own process group, so that a
    test can kill launch, torchrun and every worker at once with os.killpg)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "launcher", *args],
        cwd=cwd,
        env=launch_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=new_session,
    )
    proc.started = time.time()
    return proc


def wait_for_training(cwd: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    """Wait until this attempt logged its first train metrics; False if the process ended."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        for path in (cwd / "runs").glob("*/*/metrics.jsonl"):
            if path.stat().st_size > 0 and path.stat().st_mtime > proc.started:
                return True
        time.sleep(0.02)
    raise AssertionError("training did not start")


def make_dirs(root: Path, *names: str) -> list[Path]:
    """Fresh working directories under ``root`` (e.g. a reference run and an interrupted one)."""
    dirs = [root / n for n in names]
    for d in dirs:
        d.mkdir()
    return dirs


def has_checkpoint(cwd: Path) -> bool:
    return any((cwd / "runs").glob("*/*/checkpoints/step-*/COMPLETE"))


def assert_same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert wa[k].dtype == wb[k].dtype
        assert wa[k].equal(wb[k]), f"{k} differs"


def evaluate_saved(run_dir: Path, batch_size: int = 50) -> dict:
    """The val metrics of a run's exported model, computed here in one process over the whole
    validation set (to compare with what a multi-process run logged)."""
    import torch
    import yaml
    from safetensors.torch import load_file

    from launcher.config import config_class, validate
    from launcher.recipe_loader import load_recipe

    tree = yaml.safe_load((run_dir / "config.yaml").read_text())
    cls = load_recipe(tree["recipe"])
    recipe = cls(validate(config_class(cls), tree))
    model = recipe.build_model()
    model.load_state_dict(load_file(str(run_dir / "model.safetensors")))
    model.eval()
    val = recipe.build_datasets()[1]
    loader = torch.utils.data.DataLoader(val, batch_size=batch_size, collate_fn=getattr(recipe, "collate", None))
    sums: dict[str, float] = {}
    with torch.no_grad():
        for batch in loader:
            _, s = recipe.step(model, batch)
            for k, v in s.items():
                sums[k] = sums.get(k, 0.0) + float(v)
    return recipe.metrics(sums)


# Set by pytest itself, or by libraries the tests import once per process (not by the code under test).
_ENV_SET_BY_LIBRARIES = (
    "PYTEST_CURRENT_TEST",
    "KMP_",
    "CUDA_MODULE_LOADING",
    "TORCHINDUCTOR_",
    "TRITON_",
    "PYTORCH_",
    "TF_",
    "DS_",
)


@pytest.fixture(autouse=True)
def _no_leaked_environment():
    """A test that changes os.environ (other than through monkeypatch, which restores it) fails:
    the next test, and every child it starts, would inherit the change."""
    before = dict(os.environ)
    yield
    after = dict(os.environ)
    changed = sorted(
        k
        for k in before.keys() | after.keys()
        if before.get(k) != after.get(k) and not k.startswith(_ENV_SET_BY_LIBRARIES)
    )
    if changed:
        os.environ.clear()
        os.environ.update(before)
        pytest.fail(f"the test left environment variables changed: {', '.join(changed)}", pytrace=False)


@pytest.fixture(autouse=True)
def _no_leaked_process_group():
    """A test that leaves torch.distributed's default process group initialised fails (and it is
    destroyed): the next test's init_process_group would fail or join it."""
    yield
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        pytest.fail("the test left a torch.distributed process group initialised", pytrace=False)


@pytest.fixture(autouse=True)
def _signal_handlers_restored():
    """Code under test that sets signal dispositions in this process (the stop flag, or
    `launcher.slurm.after`, which ignores the stop signals as the batch shell needs) must not
    leave them to later tests: an ignored signal is inherited by every child they start."""
    import signal

    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in sigs}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    for s, handler in saved.items():
        if signal.getsignal(s) is not handler and handler is not None:
            signal.signal(s, handler)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need a CUDA GPU: skipped cleanly without one. Under pytest-xdist
    (scripts/test.sh: ``-n 2 --dist loadfile``: a file's tests run in one worker, so the Slurm
    cluster's run one at a time) the `slurm` tests come first: the longest chain of the suite
    (mostly waiting on the scheduler) then runs beside everything else instead of after it."""
    items.sort(key=lambda item: "slurm" not in item.keywords)  # (stable: the rest keeps its order)
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def kill_group_at_random(args: list[str], cwd: Path, run: Path, rng, times: int = 3, within: float = 1.0) -> int:
    """Start ``launch ARGS`` in its own process group ``times`` times and SIGKILL the whole group
    (launch, torchrun, every worker) at a random moment within ``within`` s after training has
    started writing ``run``'s metrics. Returns how many kills hit a run that had a checkpoint."""
    import signal

    kills = 0
    for _ in range(times):
        proc = start(args, cwd, new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            m = run / "metrics.jsonl"
            if m.exists() and m.stat().st_size > 0 and m.stat().st_mtime > proc.started:
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, within))
        if proc.poll() is None:
            kills += has_checkpoint(cwd)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    return kills
