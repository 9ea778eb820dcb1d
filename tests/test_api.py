"""The Python API (launcher/api.py): train, evaluate and load_model return results and raise
LaunchError instead of printing a line and exiting; `import launcher` stays torch-free."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, TINY


def test_importing_the_api_names_imports_no_torch():
    code = "import sys, launcher; launcher.train; launcher.evaluate; launcher.load_model; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_evaluate_and_load_model_in_process(tmp_path, monkeypatch):
    import torch

    import launcher

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAUNCHER_PREWARM", "0")  # (one process trains in this interpreter)
    overrides = {"train.epochs": 2, "run.name": "api", "log.quiet": True, "data.test_size": 20}
    summary = launcher.train(TINY, overrides=overrides)
    assert summary["status"] == "completed" and summary["run_dir"].endswith("runs/tiny/api")
    again = launcher.train(TINY, overrides=overrides)  # already complete: the same summary, nothing trained
    assert again["global_step"] == summary["global_step"] and again["wall_time_sec"] == summary["wall_time_sec"]

    result = launcher.evaluate(summary["run_dir"], split="test")
    assert result["metrics"] == pytest.approx({k: v for k, v in summary["final_metrics"].items() if "test/" in k})

    model = launcher.load_model(summary["run_dir"], checkpoint="best")
    assert isinstance(model, torch.nn.Module) and not model.training
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(4321))
    with torch.no_grad():
        assert model(x).shape == (20, 3)

    with pytest.raises(launcher.ConfigError, match="unknown config key"):
        launcher.train(TINY, overrides={"train.lrr": 0.1})
    with pytest.raises(launcher.LaunchError, match="no checkpoint step-3"):
        launcher.load_model(summary["run_dir"], checkpoint="step-3")
    with pytest.raises(launcher.LaunchError, match="changes the model"):
        launcher.evaluate(summary["run_dir"], overrides={"model.hidden": 4})
