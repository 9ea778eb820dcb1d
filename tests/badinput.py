"""The bad-input contract, for table-driven tests: one line on stderr that names the problem,
exit status 2, no traceback, and nothing written or changed under the working directory.

A test module keeps its cases as a table (a list of ``Case``) and parametrizes over it, so the
next bad input is one line to add::

    CASES = [Case("lr is inf", ["train.lr=.inf"], "train.lr")]

    @pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
    def test_refused(case, tmp_path, monkeypatch, capsys):
        assert_refused(case, tmp_path, monkeypatch, capsys)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import TINY


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]  # `launch` arguments; "{tiny}" is replaced by the tiny recipe, "{cwd}" by the working directory
    match: str  # a piece of the one error line (case-insensitive)
    setup: Callable[[Path], None] | None = None  # prepares files in the working directory first
    files: dict[str, bytes | str] = field(default_factory=dict)  # files to create first (path -> content)
    command: str = "launch"  # or a subcommand's name is in argv[0] (status, cancel, report)


def tree_state(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: files by content and mtime, directories by presence."""
    out: dict[str, tuple] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir",)
        else:
            out[rel] = ("file", p.read_bytes(), p.stat().st_mtime_ns)
    return out


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    from launcher.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_refused(case: Case, cwd: Path, monkeypatch, capsys) -> str:
    """Run ``case`` in ``cwd`` (in this process) and check the contract; returns the error line."""
    for rel, content in case.files.items():
        p = cwd / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        (p.write_bytes if isinstance(content, bytes) else p.write_text)(content)
    if case.setup is not None:
        case.setup(cwd)
    monkeypatch.chdir(cwd)
    argv = [a.replace("{tiny}", TINY).replace("{cwd}", str(cwd)) for a in case.argv]
    before = tree_state(cwd)
    code, out, err = run_main(argv, capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, f"{case.id}: exit {code}\nstdout: {out}\nstderr: {err}"
    assert len(lines) == 1, f"{case.id}: expected one line, got:\n{err}"
    assert "Traceback" not in err
    assert case.match.lower() in lines[0].lower(), f"{case.id}: {lines[0]!r} does not mention {case.match!r}"
    assert tree_state(cwd) == before, f"{case.id}: files changed under {cwd}"
    return lines[0]
