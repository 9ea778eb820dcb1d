"""Run directories written by the previous release still resume, bit-exactly, with this code.

tests/data/legacy_runs/<case>/ holds what the release at commit 5108928 wrote (made by
tests/data/legacy_runs/make_fixtures.py, which runs that commit's code from an export, never
this checkout's):

- ``runs/tiny/<name>/``: a run of ``fixture.json``'s ``args`` SIGKILLed (launch, torchrun and
  every worker) after a complete checkpoint inside its second epoch; ``<name>`` is the default
  run name the old code derived from the command;
- ``reference.safetensors`` / ``reference_metrics.jsonl``: the final weights and the
  deterministic metrics of the same command run to completion by the old code.

Running the same command here must find that directory (the run name's config hash must not
change with new config keys), resume from its checkpoint and end with the old code's weights,
bit for bit, and its metrics.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import launch_here, read_jsonl

FIXTURES = Path(__file__).resolve().parent / "data" / "legacy_runs"
CASES = ["single", "ddp", "accelerate", "deepspeed"]
# metrics that depend neither on timing nor on memory (as make_fixtures.py kept them)
DETERMINISTIC = ("step", "epoch", "lr", "grad_norm", "train/loss", "train/acc", "val/loss", "val/acc")


def fixture(case: str) -> dict:
    return json.loads((FIXTURES / case / "fixture.json").read_text())


def copy_runs(case: str, cwd: Path) -> Path:
    """The legacy run directory, copied under ``cwd/runs/`` where the same command looks for it."""
    shutil.copytree(FIXTURES / case / "runs", cwd / "runs")
    return cwd / fixture(case)["run_dir"]


def differing_tensors(a: Path, b: Path) -> list[str]:
    """Names whose tensors are not identical (dtype, shape and every bit); [] when all are."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    if wa.keys() != wb.keys():
        return [f"keys: {sorted(wa)} != {sorted(wb)}"]
    return [k for k in sorted(wa) if wa[k].dtype != wb[k].dtype or not wa[k].equal(wb[k])]


def max_abs_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa if k in wb)


def projected(events: list[dict]) -> list[dict]:
    out = [{k: e[k] for k in DETERMINISTIC if k in e} for e in events]
    return [e for e in out if set(e) - {"step", "epoch"}]


@pytest.mark.parametrize("case", CASES)
def test_same_command_finds_the_legacy_run_and_would_resume_it(tmp_path, monkeypatch, capsys, case):
    """In-process ``--dry-run`` of the recorded command: the current code derives the old
    default run name and accepts the old config.yaml as this run's (no refused change)."""
    from launcher.cli import main

    fx = fixture(case)
    copy_runs(case, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(SystemExit) as exc:
        main([*fx["args"], "--dry-run"])
    out, err = capsys.readouterr()
    assert exc.value.code == 0, out + err
    lines = [ln for ln in out.splitlines() if ln.startswith("# run directory: ")]
    assert lines == [f"# run directory: {fx['run_dir']} (resumes this run)"], out + err


@pytest.mark.parametrize("case", CASES)
def test_legacy_run_resumes_bit_exact(tmp_path, case):
    fx = fixture(case)
    run = copy_runs(case, tmp_path)
    r = launch_here(fx["args"], tmp_path, timeout=600)
    output = r.stdout + r.stderr
    assert r.returncode == 0, output
    assert f"resumed from {fx['run_dir']}/checkpoints/{fx['checkpoint']}" in output, output
    assert list((tmp_path / "runs").glob("*/*")) == [run]  # no new run directory beside it
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed", summary
    assert summary["resumed_from"].endswith(f"checkpoints/{fx['checkpoint']}"), summary
    assert summary["global_step"] == fx["reference"]["global_step"]
    assert summary["global_batch_size"] == fx["reference"]["global_batch_size"]

    reference = FIXTURES / case / "reference.safetensors"
    differ = differing_tensors(reference, run / "model.safetensors")
    if differ:
        # Tell a resume problem from arithmetic that differs from the fixtures' machine (or a
        # changed computation in this code): an uninterrupted run of the same command here.
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        f = launch_here(fx["args"], fresh, timeout=600)
        fresh_model = fresh / fx["run_dir"] / "model.safetensors"
        if f.returncode != 0:
            verdict = f"an uninterrupted run here failed too (exit {f.returncode}): {f.stderr[-2000:]}"
        elif not differing_tensors(reference, fresh_model):
            verdict = "an uninterrupted run here matches the reference: resuming the legacy checkpoint is what differs"
        else:
            verdict = (
                "an uninterrupted run here differs from the reference too (max |diff| "
                f"{max_abs_diff(reference, fresh_model):.3g}): this code computes differently from the old release, "
                "or this machine's arithmetic differs from the one that made the fixtures (make_fixtures.py)"
            )
        pytest.fail(
            f"{case}: resumed weights differ from the old release's uninterrupted run in {differ} "
            f"(max |diff| {max_abs_diff(reference, run / 'model.safetensors'):.3g}); {verdict}"
        )
    # metrics read as if never interrupted, as the old code wrote them
    want = projected(read_jsonl(FIXTURES / case / "reference_metrics.jsonl"))
    assert projected(read_jsonl(run / "metrics.jsonl")) == want
