"""Pure parts of the performance work: the benchmark table, FLOP counting and MFU of the GPU
profile, the stop-check cadence. (No speed assertions: speed goals live in benchmarks/.)"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from benchmarks import common, gpu_profile, table
from launcher.runtime.signals import StopCheck
from tests.conftest import ROOT, launch_env


def test_rows_judge_and_render(tmp_path):
    rows = [
        table.Row("ratio", 1.004, "x", "<=", 1.01, "lock-step"),
        table.Row("slow", 0.42, "s", "<", 0.3),
        table.Row("same losses", True, "", "==", True),
        table.Row("info only", 12.5, "%"),
        table.Row("skipped", None, "s", "<", 0.3),
    ]
    assert [r.passed for r in rows] == [True, False, True, None, False]
    text = table.render(rows)
    lines = text.splitlines()
    assert lines[0].startswith("| benchmark") and set(lines[1]) <= {"|", "-"}
    assert "| 1.004 " in lines[2] and "<= 1.010" in lines[2] and "pass" in lines[2]
    assert "420 ms" not in lines[3] and "0.42 s" in lines[3] and "FAIL" in lines[3]
    assert "| yes " in lines[4]
    assert "12.5 %" in lines[5]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    path = tmp_path / "rows.json"
    table.write_rows(path, rows)
    assert table.read_rows(path) == rows


def test_fmt_units():
    assert table.fmt(0.05, "s") == "50 ms"
    assert table.fmt(1.234, "s") == "1.23 s"
    assert table.fmt(0.9871, "x") == "0.987"
    assert table.fmt(None, "x") == "-"
    assert table.fmt(False, "") == "no"
    assert table.fmt(23.4, "us") == "23 us"


def test_paired_ratio_compares_neighbouring_steps():
    # the machine slows down for half of the round, for both loops alike; ours is 1 % slower
    base = [1.0] * 50 + [1.5] * 50
    ours = [v * 1.01 for v in base]
    ours[::7] = [v * 1.2 for v in ours[::7]]  # and some of our steps are outliers (logging)
    assert common.paired_ratio(ours, base) == pytest.approx(1.01)
    assert common.paired_cost([v + 0.02 for v in base], base) == pytest.approx(0.02)
    # steps that were not neighbours in time: the ratio is not the 1 % any more
    assert abs(common.paired_ratio(ours, base[50:] + base[:50]) - 1.01) > 0.05
    # a last unmatched step (the closing interval of one loop) is ignored
    assert common.paired_ratio(ours + [9.0], base) == pytest.approx(1.01)


def test_peak_table_matches_the_specific_name_first():
    assert gpu_profile.peak_tflops("NVIDIA A100-SXM4-80GB", "bf16-mixed") == 312.0
    assert gpu_profile.peak_tflops("NVIDIA A10", "bf16-mixed") == 125.0
    assert gpu_profile.peak_tflops("NVIDIA L40S", "fp32") == 183.0  # TF32 for fp32 modes
    assert gpu_profile.peak_tflops("NVIDIA L4", "fp32") == 60.0
    assert gpu_profile.peak_tflops("NVIDIA H100 PCIe", "bf16-mixed") == 756.0
    assert gpu_profile.peak_tflops("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989.4
    assert gpu_profile.peak_tflops("Tesla T4", "bf16-mixed") is None


def test_mfu_arithmetic():
    # 1000 images/s x 24.3 GFLOPs = 24.3 TFLOPS achieved, of a 243 TFLOPS peak: 10 %
    assert gpu_profile.mfu(1000.0, 24.3e9, 243.0) == pytest.approx(0.10)
    assert gpu_profile.mfu(1000.0, 24.3e9, None) is None


def test_training_flops_of_an_mlp_by_hand():
    # forward 2*8*16 + 2*16*4 = 384; backward: layer 2 grad input + grad weight 2*128,
    # layer 1 grad weight 256 (the input needs no gradient) = 512
    def build():
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))

    assert gpu_profile.train_flops_per_sample(build, (8,), 4) == 896


def test_resnet50_training_flops():
    flops = gpu_profile.resnet_flops("resnet50", 224, 1000)
    assert 3 * 8.0e9 <= flops <= 3 * 8.3e9  # ~4.1 GMACs forward, backward about twice that


def test_gpu_profile_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_profile.py")],
        env=launch_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr


def test_gpu_profile_sides_run_on_cpu():
    """The measuring code of both sides, tiny and on the CPU (the real profile needs CUDA)."""
    args = gpu_profile.argparse.Namespace(
        arch="resnet18", image_size=32, batch_size=4, classes=10, steps=2, warmup=1,
        data_size=16, num_workers=0, device="cpu",
    )  # fmt: skip
    benchmark = torch.backends.cudnn.benchmark  # both sides set it (process-wide)
    try:
        for side in ("vanilla", "runtime"):
            assert gpu_profile.measure(args, side, "fp32") > 0
    finally:
        torch.backends.cudnn.benchmark = benchmark


class _Strategy:
    def __init__(self, every: int) -> None:
        self.every, self.calls = every, []

    def stop_check(self, flag: bool, every: int) -> tuple[bool, int]:
        self.calls.append(every)
        return flag, self.every


class _Flag:
    requested = False


def test_stop_check_cadence():
    s, flag = _Strategy(every=3), _Flag()
    check = StopCheck(s, flag, step=10)
    assert [check(step) for step in range(11, 18)] == [False] * 7
    assert len(s.calls) == 3  # at steps 11, 14, 17 (the ranks agreed on every 3rd step)
    flag.requested = True
    assert not check(18) and not check(19)
    assert check(20)


def test_stop_check_asks_for_fewer_checks_on_fast_steps():
    s = _Strategy(every=1)
    check = StopCheck(s, _Flag(), step=0, interval=10.0)
    check(1)
    assert s.calls[0] > 1  # a step took far less than 10 s: it asks to check less often
    slow = _Strategy(every=1)
    StopCheck(slow, _Flag(), step=0, interval=1e-9)(1)
    assert slow.calls == [1]
