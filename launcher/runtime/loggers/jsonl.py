"""``metrics.jsonl``: one JSON object per event, always written on rank 0 -- the source of truth
(cut back to the checkpoint's offset on resume) that the other backends are replayed from.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from launcher.rundir import read_events  # noqa: F401  (re-exported: the loggers' readers import it from here)

# Keys whose values are measurements of this machine (they differ between two identical runs).
MEASURED_PREFIXES = ("time/", "memory/")
MEASURED_KEYS = ("samples_per_sec",)


def is_measured(key: str) -> bool:
    return key in MEASURED_KEYS or key.startswith(MEASURED_PREFIXES)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value


class JsonlLogger:
    """Appends one JSON object per event to ``metrics.jsonl``.

    On resume the file is cut back to its length when the checkpoint was taken (its byte
    offset is part of the checkpoint), so it reads exactly as if the run had never been
    interrupted -- also when several events share the checkpoint's step. A file that is shorter
    than that (edited, or lost between attempts) is kept as it is up to its last whole line, with
    a warning; one deleted or replaced while the run writes it is written again from this
    process's open copy (checked at each event: one ``stat``), with a warning.
    """

    def __init__(self, path: Path, resume_offset: int | None, warn: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if resume_offset is None:
            if path.exists():
                path.unlink()  # a fresh start in a directory whose earlier attempt left no checkpoint
        else:
            size = path.stat().st_size if path.exists() else None
            if size is None:
                if resume_offset:
                    self.warn(
                        f"warning: {path.name} is missing; the metrics logged before the checkpoint are lost, "
                        "new ones are written from here"
                    )
            elif size > resume_offset:
                os.truncate(path, resume_offset)
            elif size < resume_offset:
                keep = self._whole_lines(path)
                self.warn(
                    f"warning: {path.name} is shorter than when the checkpoint was taken ({size} of "
                    f"{resume_offset} bytes); kept its {keep[1]} whole events, new ones are appended"
                )
                os.truncate(path, keep[0])
        self._open()

    @staticmethod
    def _whole_lines(path: Path) -> tuple[int, int]:
        """(bytes up to the last newline, lines there)."""
        data = path.read_bytes()
        end = data.rfind(b"\n") + 1
        return end, data[:end].count(b"\n")

    def _open(self) -> None:
        self._f = open(self.path, "a+", buffering=1)
        st = os.fstat(self._f.fileno())
        self._id = (st.st_dev, st.st_ino)

    def _check(self) -> None:
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._id:
                return
        except OSError:
            pass
        # deleted or replaced while this run writes it: write it again from the copy still open here
        self._f.flush()
        self._f.seek(0)
        kept = self._f.read()
        self._f.close()
        tmp = self.path.with_name(f".{self.path.name}.restore")
        tmp.write_text(kept)
        os.replace(tmp, self.path)
        self._open()
        self.warn(
            f"warning: {self.path.name} was deleted or replaced during the run; "
            f"wrote it again from this run's copy ({kept.count(chr(10))} events kept)"
        )

    def offset(self) -> int:
        """Bytes written so far (stored in checkpoints)."""
        self._check()
        self._f.flush()
        return self._f.seek(0, os.SEEK_END)

    def log(self, event: dict[str, Any]) -> None:
        self._check()
        self._f.write(json.dumps({k: _clean(v) for k, v in event.items()}) + "\n")

    def close(self) -> None:
        self._f.close()
