"""Layers: nothing outside ``launcher/runtime/`` imports it (but the one place that starts a worker
in-process), recipes least of all; the run directory's files are read through launcher/rundir.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from launcher.errors import first_line
from launcher.rundir import read_events
from tests.conftest import ROOT

RUNTIME = ROOT / "launcher" / "runtime"
OUTSIDE = sorted(
    p for p in [*(ROOT / "launcher").rglob("*.py"), *(ROOT / "recipes").rglob("*.py")] if RUNTIME not in p.parents
)
# launcher/spawn.py runs a one-process run's worker in this interpreter: the entry point, not a layer
# launcher/api.py's load_model() returns the recipe's model with a run's weights, in the caller's
# interpreter: the evaluator's weight loading (FSDP shards too), imported when it is called
ALLOWED = {
    ("launcher/spawn.py", "launcher.runtime.worker"),
    ("launcher/spawn.py", "launcher.runtime.evaluator"),
    ("launcher/spawn.py", "launcher.runtime.exporter"),
    ("launcher/spawn.py", "launcher.runtime.predictor"),
    ("launcher/api.py", "launcher.runtime.evaluator"),
}


def runtime_imports(path: Path) -> list[tuple[str, int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]  # (from launcher import runtime)
        else:
            continue
        rel = path.relative_to(ROOT).as_posix()
        for name in names:
            allowed = any(rel == r and (name == m or name.startswith(m + ".")) for r, m in ALLOWED)
            if (name == "launcher.runtime" or name.startswith("launcher.runtime.")) and not allowed:
                found.append((rel, node.lineno, name))
    return found


def test_the_scan_sees_the_files():
    rels = {p.relative_to(ROOT).as_posix() for p in OUTSIDE}
    assert {"launcher/report.py", "launcher/rundir.py", "recipes/resnet_finetune.py"} <= rels
    assert not any(r.startswith("launcher/runtime/") for r in rels)


@pytest.mark.parametrize("path", OUTSIDE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_nothing_outside_the_runtime_imports_it(path):
    assert runtime_imports(path) == []


def test_read_events_skips_what_is_not_an_event(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\nnot json\n[1, 2]\n"text"\n{"step": 2, "loss": "nan"}\n{"step": 3, "lo')
    assert read_events(path) == [{"step": 1}, {"step": 2, "loss": "nan"}]  # (the last line: half-written)
    assert read_events(tmp_path / "missing.jsonl") == []
    path.write_bytes(b'{"step": 1}\n\xff\xfe\n')
    assert read_events(path) == []  # not UTF-8: unreadable as a whole, like a missing file
    assert read_events(tmp_path) == []  # (a directory: an OSError)


def test_first_line():
    assert first_line(ValueError("  first\nsecond")) == "first"
    assert first_line(KeyboardInterrupt()) == "KeyboardInterrupt"
    assert first_line(RuntimeError("\n")) == "RuntimeError"
    assert first_line(OSError("x" * 500)) == "x" * 300
    assert first_line(OSError("x" * 500), 20) == "x" * 20


def _process_starts(path: Path) -> list[int]:
    """Lines of ``path`` that start a long-lived process (a call of ``Popen``, ``os.fork``,
    ``os.exec*``, ``os.spawn*``); the short queries of tools (``subprocess.run`` of squeue, sbatch,
    nvidia-smi) are not runs."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        f = node.func if isinstance(node, ast.Call) else None
        if isinstance(f, ast.Attribute) and (
            f.attr == "Popen"
            or (isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr.startswith(("fork", "exec", "spawn")))
        ):
            lines.append(node.lineno)
    return lines


def test_only_spawn_starts_processes():
    found = {
        p.relative_to(ROOT).as_posix(): _process_starts(p)
        for p in sorted((ROOT / "launcher").rglob("*.py"))
        if p.relative_to(ROOT).as_posix() != "launcher/spawn.py"
    }
    assert {k: v for k, v in found.items() if v} == {}
    assert _process_starts(ROOT / "launcher" / "spawn.py")  # (the scan sees a Popen where there is one)
