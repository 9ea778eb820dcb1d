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
bit for bit, and its metrics (on a machine whose arithmetic differs from the fixtures' one,
within what rounding there explains: see the test).
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
    want = projected(read_jsonl(FIXTURES / case / "reference_metrics.jsonl"))
    got = projected(read_jsonl(run / "metrics.jsonl"))
    differ = differing_tensors(reference, run / "model.safetensors")
    if not differ:
        assert got == want  # metrics read as if never interrupted, as the old code wrote them
        return
    # Not bit for bit: either this machine rounds differently from the fixtures' one (another CPU
    # picks other kernels: float sums in another order), so the first steps (run there) and the
    # rest (run here) cannot match exactly, or a piece of the old checkpoint is read wrongly
    # (optimizer state, random streams, data order, step), which moves the weights and the losses
    # by far more than rounding does (a run here drifts ~1e-7 from the reference in these weights).
    resumed_off = max_abs_diff(reference, run / "model.safetensors")
    close = resumed_off <= 1e-5 and [(e["step"], sorted(e)) for e in got] == [(e["step"], sorted(e)) for e in want]
    close = close and all(
        g[k] == pytest.approx(w[k], rel=1e-4, abs=1e-5) for g, w in zip(got, want, strict=True) for k in w
    )
    if close:
        return
    # Tell a resume problem from a changed computation in this code (or this machine's rounding):
    # an uninterrupted run of the same command here.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    f = launch_here(fx["args"], fresh, timeout=600)
    assert f.returncode == 0, f"{case}: an uninterrupted run here failed too: {f.stdout + f.stderr}"
    fresh_model = fresh / fx["run_dir"] / "model.safetensors"
    if not differing_tensors(reference, fresh_model):
        verdict = "an uninterrupted run here matches it: resuming the legacy checkpoint is what differs"
    else:
        verdict = (
            f"an uninterrupted run here is {max_abs_diff(reference, fresh_model):.3g} off it: this code computes "
            "differently from the old release (or this machine's arithmetic differs far more than rounding)"
        )
    pytest.fail(
        f"{case}: resumed weights are {resumed_off:.3g} off the old release's uninterrupted run in {differ}, "
        f"metrics {'equal' if got == want else 'differ'}; {verdict}"
    )
