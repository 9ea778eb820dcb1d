"""launcher.signals: the stop flag, signals blocked across fork and exec until a flag is installed,
and what an agent in front of several workers does with the signals it gets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from launcher.signals import STOP_SIGNALS, StopFlag, blocked, installed


def _blocked_in(pid: int) -> set[int]:
    """The signals blocked in process ``pid`` (its main thread), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        mask = int(next(line for line in f if line.startswith("SigBlk:")).split()[1], 16)
    return {s for s in range(1, 65) if mask & (1 << (s - 1))}


@pytest.fixture
def flag():
    f = StopFlag().install()
    yield f
    f.uninstall()


def test_first_signal_sets_the_status_and_more_of_them_count_once(flag):
    os.kill(os.getpid(), signal.SIGUSR2)
    assert flag.status == "preempted" and flag.exit_code == 143
    os.kill(os.getpid(), signal.SIGINT)  # a later Ctrl-C within the repeat window: still one request
    assert flag.status == "preempted"


def test_a_second_ctrl_c_a_moment_later_aborts(flag):
    os.kill(os.getpid(), signal.SIGINT)
    assert flag.status == "stopped" and flag.exit_code == 130
    time.sleep(0.15)
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, "preempted"), (signal.SIGHUP, "preempted")])
def test_term_and_hangup_are_preemptions(flag, sig, status):
    os.kill(os.getpid(), sig)
    assert flag.status == status


def test_an_inner_flag_takes_over_what_the_outer_one_recorded(flag):
    """launch's flag saw a Ctrl-C; the worker it then runs in its own interpreter must stop too."""
    os.kill(os.getpid(), signal.SIGINT)
    inner = StopFlag().install()
    try:
        assert installed() is inner and inner.status == "stopped"
    finally:
        inner.uninstall()
    assert installed() is flag


def test_forwarding_and_no_abort_while_a_child_runs(flag):
    seen = []
    flag.forward, flag.abort = seen.append, False
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.15)
    os.kill(os.getpid(), signal.SIGINT)  # the child aborts; launch does not raise
    assert seen == [signal.SIGINT, signal.SIGINT] and flag.status == "stopped"


def test_a_request_file_counts_as_the_signal_it_names(tmp_path, flag):
    flag.request_file = tmp_path / "stop"
    assert not flag.check_request_file()
    (tmp_path / "stop").write_text("TERM\n")
    assert flag.check_request_file() and flag.status == "preempted"


def test_a_signal_that_arrives_while_blocked_is_delivered_when_a_flag_is_installed():
    with blocked():
        # to this thread: the others (torch's) do not block it here (a process launch starts has
        # it blocked in every thread, from its first instruction)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)
        assert signal.SIGUSR2 in signal.sigpending()
        f = StopFlag().install()  # unblocks: the pending signal reaches the flag
        try:
            assert f.status == "preempted"
        finally:
            f.uninstall()
    assert signal.SIGUSR2 not in signal.sigpending()


def test_children_started_while_blocked_inherit_the_mask_and_it_survives_exec():
    """What launch relies on for every process it starts (and the agent for torchrun's workers)."""
    with blocked():
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        assert {int(s) for s in STOP_SIGNALS} <= _blocked_in(child.pid)
        child.send_signal(signal.SIGTERM)  # pending, not fatal
        time.sleep(0.3)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()


AGENT_PROBE = textwrap.dedent(
    """
    # stands in for torchrun: starts two "workers" a moment apart, waits for them, exits with theirs
    import subprocess, sys, time
    worker = [sys.executable, "-c", WORKER, "launcher.runtime.worker"]
    first = subprocess.Popen(worker)
    time.sleep(1.0)  # the second starts after the signal has arrived
    second = subprocess.Popen(worker)
    codes = {first.wait(), second.wait()}
    sys.exit(max(codes))
    """
)
WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    from launcher.signals import StopFlag
    time.sleep(0.3)  # 'importing torch': the stop signals are blocked until the flag is installed
    flag = StopFlag().install()
    deadline = time.time() + 20
    while not flag.requested and time.time() < deadline:
        time.sleep(0.01)
    sys.exit(flag.exit_code if flag.requested else 1)
    """
)


def test_the_agent_passes_each_stop_signal_to_every_worker_also_one_started_later(tmp_path):
    (tmp_path / "fake_torchrun.py").write_text(f"WORKER = {WORKER!r}\n" + AGENT_PROBE)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    agent = subprocess.Popen(
        [sys.executable, "-m", "launcher.runtime.agent", "fake_torchrun"], env=env, stderr=subprocess.PIPE, text=True
    )
    time.sleep(0.5)
    agent.send_signal(signal.SIGUSR2)  # torchrun itself would die of it
    _, err = agent.communicate(timeout=60)
    assert agent.returncode == 143, err
    assert "Traceback" not in err
