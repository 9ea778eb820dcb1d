"""The README's user-recipe example runs exactly as printed there."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, launch_env, launch_here, only_run_dir


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    example = [b for b in blocks if b.startswith("# my_recipe.py")]
    assert len(example) == 1, "README lost its recipe example"
    return example[0]


def test_readme_recipe_example_trains(tmp_path: Path):
    (tmp_path / "my_recipe.py").write_text(readme_example())
    r = launch_here(["recipe=my_recipe.py:Parity", "train.epochs=2", "log.quiet=true"], tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = only_run_dir(tmp_path)
    assert run_dir.parent.name == "Parity"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert {"val/acc", "val/loss"} <= set(summary["final_metrics"])
    # the README says how to run it: the command in the first line is the one we ran
    assert "launch recipe=my_recipe.py:Parity" in readme_example().splitlines()[0]


def test_module_path_recipe_through_the_console_script(tmp_path: Path):
    pkg = tmp_path / "mypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "recipe.py").write_text(readme_example())
    script = Path(sys.executable).parent / "launch"
    env = launch_env()
    env.pop("PYTHONPATH")  # as a user has it: only the current directory to find mypkg
    r = subprocess.run(
        [str(script), "recipe=mypkg.recipe:Parity", "train.epochs=1", "log.quiet=true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert (only_run_dir(tmp_path) / "model.safetensors").is_file()
