"""What the PyTorch notes teach, as config: the parameter count at start, balanced sampling."""

from __future__ import annotations

import json

from tests.conftest import TINY, launch_here


def test_the_parameter_count_is_said_at_start_and_kept_in_the_summary(tmp_path):
    r = launch_here(
        [f"recipe={TINY}", "run.name=p", "train.max_steps=1", "model.hidden=10", "--device", "cpu"], tmp_path
    )
    assert r.returncode == 0, r.stderr
    total = 8 * 10 + 10 + 10 * 3 + 3  # Linear(8, 10), Linear(10, 3)
    assert f"model: {total} parameters ({total} trainable), {total * 4 / 1e6:.1f} MB" in r.stderr
    summary = json.loads((tmp_path / "runs" / "tiny" / "p" / "summary.json").read_text())
    assert summary["parameters"] == {"total": total, "trainable": total, "bytes": total * 4}
