"""What this node has, found without importing torch (the parent must stay fast)."""

from __future__ import annotations

import os
import shutil
import subprocess


def visible_gpus(env: dict[str, str] | None = None) -> int | None:
    """Number of NVIDIA GPUs this process may use, or None when that cannot be told.

    ``CUDA_VISIBLE_DEVICES`` wins when set (an empty value hides every GPU); otherwise
    the NVIDIA driver's /proc listing, else ``nvidia-smi -L``, is asked. No NVIDIA driver -> 0.
    """
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    try:  # the driver lists its GPUs here: no process to start (nvidia-smi is slow to start)
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        pass
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def free_port() -> int:
    """A TCP port that is free on this host right now (for a single-node rendezvous)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
