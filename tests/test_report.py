"""`launch report`: PNG plots and a summary table of runs in any state (completed, preempted,
running), into the run directory or --out; bad paths are one line and exit 2; no torch."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import launch_env, launch_here, start, wait_for_training

PLOTS = ("loss.png", "metrics.png", "lr.png", "throughput.png")


def run_dir(cwd: Path, name: str) -> Path:
    return cwd / "runs" / "tiny" / name


def train(tmp_path: Path, tiny: str, name: str, *extra: str) -> Path:
    r = launch_here([f"recipe={tiny}", "log.quiet=true", f"run.name={name}", "train.epochs=2", *extra], tmp_path)
    assert r.returncode == 0, r.stderr
    return run_dir(tmp_path, name)


def assert_plots(directory: Path) -> None:
    for name in PLOTS:
        with Image.open(directory / name) as img:
            assert img.format == "PNG" and img.size[0] >= 600 and img.size[1] >= 300, (name, img.size)
            assert len(img.getcolors(maxcolors=1 << 16) or range(1 << 16)) > 20  # not a blank canvas


def rows(stdout: str) -> dict[str, str]:
    """Table lines by run label."""
    return {ln.split()[0]: ln for ln in stdout.splitlines() if ln and not ln.startswith(("run ", "wrote", "no "))}


def test_report_compares_runs_in_any_state(tmp_path, tiny):
    a = train(tmp_path, tiny, "a")
    b = train(tmp_path, tiny, "b", "train.lr=0.01", "train.max_steps=8")
    # a preempted run (SIGTERM: checkpoint, summary says preempted)
    proc = start(
        [f"recipe={tiny}", "log.quiet=true", "run.name=p", "train.epochs=50", "data.step_delay=0.02"], tmp_path
    )
    assert wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    # a running one: no summary yet, the last line of metrics.jsonl half-written
    running = run_dir(tmp_path, "running")
    running.mkdir()
    shutil.copy(a / "config.yaml", running / "config.yaml")
    lines = (a / "metrics.jsonl").read_text().splitlines()
    (running / "metrics.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])

    out = tmp_path / "report-out"
    r = launch_here(["report", str(a), str(b), str(run_dir(tmp_path, "p")), str(running), "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    assert_plots(out)
    table = rows(r.stdout)
    assert set(table) == {"a", "b", "p", "running"}, r.stdout
    assert "completed" in table["a"] and "completed" in table["b"]
    assert "preempted" in table["p"] and "running or interrupted" in table["running"]
    summary_a = json.loads((a / "summary.json").read_text())
    assert f"{summary_a['final_metrics']['val/loss']:.4g}" in table["a"]
    assert f"val/loss={summary_a['best']['value']:.4g}@18" in table["a"]
    for name in (*PLOTS, "summary.md"):
        assert f"wrote {out / name}" in r.stdout
    md = (out / "summary.md").read_text()
    assert "| a | completed |" in md and str(running) in md
    assert not (a / "report").exists()  # --out given: nothing written into the runs


def test_report_of_one_run_goes_into_its_directory_without_torch(tmp_path, tiny):
    a = train(tmp_path, tiny, "a", "train.max_steps=6")
    code = (
        "import sys\nfrom launcher.cli import main\n"
        f"try:\n    main(['report', {str(a)!r}])\nexcept SystemExit as e:\n    print('EXIT=' + str(e.code))\n"
        "print('HEAVY=' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'wandb'))))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=launch_env(), capture_output=True, text=True)
    assert "EXIT=0" in r.stdout.splitlines(), r.stdout + r.stderr
    assert "HEAVY=" in r.stdout.splitlines(), r.stdout  # report imports neither torch nor wandb
    assert_plots(a / "report")
    assert f"wrote {a / 'report' / 'loss.png'}" in r.stdout


def test_report_bad_paths_are_one_line(tmp_path, tiny):
    train(tmp_path, tiny, "a", "train.max_steps=2")
    cases = [
        ([str(tmp_path / "nope")], "does not exist"),
        (
            [str(tmp_path / "runs")],
            f"is not a run directory (no config.yaml or metrics.jsonl); it holds 1 run(s), e.g. launch report {run_dir(tmp_path, 'a')}",
        ),
        ([str(run_dir(tmp_path, "a") / "config.yaml")], "is not a directory"),
        (
            [str(run_dir(tmp_path, "a")), "--out", str(run_dir(tmp_path, "a") / "config.yaml" / "out")],
            "cannot write the report",
        ),
        ([], "Missing argument"),
    ]
    for args, needle in cases:
        r = launch_here(["report", *args], tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], (args, r.stderr)
