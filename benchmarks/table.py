"""Result rows of the benchmarks: a value, its target, pass or fail; JSON in, one table out.

Every benchmark script takes ``--json PATH`` and writes its rows there; ``benchmarks/run_all.py``
(``make bench``) collects them into one table. Pure Python (no torch), so it is unit-tested.
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass
from pathlib import Path

OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}


@dataclass
class Row:
    name: str
    value: float | bool | None  # None: not measured (e.g. skipped)
    unit: str = ""  # "x" (a ratio), "s", "ms", "us", "%", "" (plain)
    op: str | None = None  # how value compares with limit; None: reported, no target
    limit: float | bool | None = None
    note: str = ""  # how it was measured, in a few words

    @property
    def passed(self) -> bool | None:
        if self.op is None or self.limit is None:
            return None
        if self.value is None:
            return False
        return bool(OPS[self.op](self.value, self.limit))


def fmt(value: float | bool | None, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if unit == "x":
        return f"{value:.3f}"
    if unit == "%":
        return f"{value:.1f} %"
    if unit == "s":
        return f"{value:.2f} s" if abs(value) >= 0.1 else f"{value * 1e3:.0f} ms"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "us":
        return f"{value:.0f} us"
    return f"{value:.4g}" + (f" {unit}" if unit else "")


def target_text(row: Row) -> str:
    if row.op is None or row.limit is None:
        return ""
    if isinstance(row.limit, bool):
        return "yes" if row.limit else "no"
    shown = fmt(row.limit, row.unit)
    return f"{row.op} {shown}" if row.op != "==" else shown


def verdict(passed: bool | None) -> str:
    return {True: "pass", False: "FAIL", None: ""}[passed]


def render(rows: list[Row]) -> str:
    """A Markdown table (readable as plain text too)."""
    head = ["benchmark", "measured", "target", "result", "how"]
    body = [[r.name, fmt(r.value, r.unit), target_text(r), verdict(r.passed), r.note] for r in rows]
    widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), sep, *(line(b) for b in body)])


def write_rows(path: str | Path | None, rows: list[Row]) -> None:
    if path:
        Path(path).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")


def read_rows(path: str | Path) -> list[Row]:
    return [Row(**r) for r in json.loads(Path(path).read_text())]


def print_rows(rows: list[Row]) -> None:
    for r in rows:
        target = target_text(r)
        extra = f"   (target {target}: {verdict(r.passed)})" if target else ""
        print(f"{r.name}: {fmt(r.value, r.unit)}{extra}")
