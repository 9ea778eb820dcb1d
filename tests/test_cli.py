"""The `launch` command line: in-process (CliRunner and main()) and as a real subprocess."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import launcher.spawn
from launcher.cli import launch, main
from launcher.errors import ConfigError
from tests.conftest import TINY, only_run_dir, read_jsonl, run_launch

R = "recipe=resnet_finetune"


@pytest.fixture
def cwd(tmp_path, monkeypatch) -> Path:
    """An empty working directory (data and fixtures live next to it, not in it)."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.fixture
def no_training(monkeypatch):
    """In-process calls must never get as far as training."""

    def refuse(command):
        raise AssertionError(f"launch would have trained: {command.render()}")

    monkeypatch.setattr(launcher.spawn, "run", refuse)


def call_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def invoke(*args: str):
    result = CliRunner().invoke(launch, list(args), catch_exceptions=True)
    return result


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: (content, mtime_ns)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


def parse_dry_run(out: str) -> dict:
    lines = out.splitlines()
    assert lines[0] == "# resolved config", out
    run_at = next(i for i, line in enumerate(lines) if line.startswith("# run directory: "))
    cfg = yaml.safe_load("\n".join(lines[1:run_at]))
    run_line = lines[run_at].removeprefix("# run directory: ")
    run_dir, _, state = run_line.rpartition(" (")
    assert lines[run_at + 1].startswith("# plan: ")
    assert lines[run_at + 2] == "# command:"
    assert len(lines) == run_at + 4, out
    return {
        "config": cfg,
        "run_dir": run_dir,
        "state": state.removesuffix(")"),
        "plan": lines[run_at + 1],
        "command": lines[run_at + 3],
    }


def dry_run(args: list[str], capsys) -> dict:
    code, out, err = call_main([*args, "--dry-run"], capsys)
    assert code == 0, err
    assert err == ""
    return parse_dry_run(out)


def show_config(*args: str) -> dict:
    result = invoke(*args, "--show-config")
    assert result.exit_code == 0, (result.output, result.exception)
    return yaml.safe_load(result.output)


# --------------------------------------------------------------------------- help, list, show-config


def test_help():
    result = invoke("--help")
    assert result.exit_code == 0
    out = result.output
    assert out.startswith("Usage: launch")
    for opt in ("--gpus", "--procs", "--nodes", "--device", "--strategy", "--precision", "--slurm", "--dry-run"):
        assert opt in out
    assert "Examples:" in out
    assert "recipe=NAME" in out


def test_help_through_main(capsys):
    code, out, err = call_main(["-h"], capsys)
    assert code == 0
    assert "Usage: launch" in out and err == ""


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert "0.1.0" in result.output


def test_list_shows_builtin_recipes_with_descriptions():
    from recipes.resnet_finetune import ResNetFinetune

    result = invoke("--list")
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("resnet_finetune"))
    assert ResNetFinetune.description in line
    assert "recipe=my_pkg.module:Class" in result.output


def test_show_config_is_yaml_with_the_override():
    cfg = show_config(R, "train.lr=0.02", "run.name=007", "train.milestones=[10,20]")
    assert cfg["recipe"] == "resnet_finetune"
    assert cfg["train"]["lr"] == 0.02
    from recipes.resnet_finetune import ResNetFinetune

    assert cfg["train"]["epochs"] == ResNetFinetune.defaults["train"]["epochs"]  # recipe default
    assert cfg["run"]["name"] == "007"
    assert cfg["train"]["milestones"] == [10, 20]
    assert cfg["model"]["arch"] == "resnet18"


def test_show_config_with_a_config_file(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("recipe: resnet_finetune\ntrain:\n  lr: 0.3\n  epochs: 2\n")
    cfg = show_config(f"config={f}", "train.epochs=4")
    assert cfg["train"]["lr"] == 0.3
    assert cfg["train"]["epochs"] == 4


def test_show_config_subprocess(cwd):
    proc = run_launch([R, "train.lr=0.02", "--show-config"], cwd)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["train"]["lr"] == 0.02
    assert proc.stderr == ""
    assert list(cwd.iterdir()) == []


# --------------------------------------------------------------------------- shorthands


@pytest.mark.parametrize(
    ("opts", "section", "key", "value"),
    [
        (["--procs", "2"], "dist", "procs", 2),
        (["--device", "cpu"], "dist", "device", "cpu"),
        (["--precision", "bf16-mixed"], "train", "precision", "bf16-mixed"),
        (["--strategy", "ddp"], "dist", "strategy", "ddp"),
        (["--nodes", "3"], "dist", "nodes", 3),
        (["--slurm"], "slurm", "enabled", True),
    ],
)
def test_shorthand_options_set_their_keys(opts, section, key, value):
    assert show_config(R)[section][key] != value
    assert show_config(R, *opts)[section][key] == value


def test_gpus_sets_cuda_and_procs():
    cfg = show_config(R, "--gpus", "2")
    assert cfg["dist"]["device"] == "cuda"
    assert cfg["dist"]["procs"] == 2


def test_option_agreeing_with_a_key_is_fine():
    assert show_config(R, "dist.procs=2", "--procs", "2")["dist"]["procs"] == 2


def test_options_conflicting_with_each_other_are_refused(capsys, cwd):
    code, _, err = call_main([R, "--gpus", "2", "--device", "cpu"], capsys)
    assert code == 2
    assert err.startswith("error: --gpus 2 conflicts with --device cpu")


def test_equal_values_spelled_differently_do_not_conflict():
    assert show_config(R, "dist.procs=03", "--procs", "3")["dist"]["procs"] == 3


def test_option_conflicting_with_a_key_is_refused(capsys, cwd):
    code, out, err = call_main([R, "dist.procs=3", "--procs", "2"], capsys)
    assert code == 2
    assert err.startswith("error: dist.procs=3 conflicts with --procs 2")
    assert err.count("\n") == 1
    assert out == ""


# --------------------------------------------------------------------------- dry run


def test_dry_run_prints_config_run_dir_and_command_and_writes_nothing(cwd, capsys):
    d = dry_run([R, "train.lr=0.02", "--device", "cpu"], capsys)
    assert d["config"]["train"]["lr"] == 0.02
    assert d["config"]["dist"]["device"] == "cpu"
    run_dir = Path(d["run_dir"])
    assert run_dir.parts[:2] == ("runs", "resnet_finetune")
    assert d["config"]["run"]["name"] == run_dir.name
    assert d["state"] == "new run"
    assert d["plan"] == "# plan: strategy=single device=cpu procs/node=1 nodes=1"
    assert shlex.split(d["command"]) == [sys.executable, "-m", "launcher.runtime.worker", str(run_dir)]
    assert list(cwd.iterdir()) == []


def test_dry_run_deterministic_shows_the_env(cwd, capsys):
    d = dry_run([R, "run.deterministic=true"], capsys)
    assert shlex.split(d["command"])[0] == "CUBLAS_WORKSPACE_CONFIG=:4096:8"


def test_dry_run_with_cli_runner(cwd):
    result = invoke(R, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "# run directory: runs/resnet_finetune/default-" in result.output
    assert "launcher.runtime.worker" in result.output
    assert list(cwd.iterdir()) == []


def test_dry_run_subprocess_writes_nothing(cwd):
    proc = run_launch([R, "train.epochs=2", "--dry-run"], cwd)
    assert proc.returncode == 0, proc.stderr
    d = parse_dry_run(proc.stdout)
    assert d["config"]["train"]["epochs"] == 2
    assert d["run_dir"].startswith("runs/resnet_finetune/epochs-2-")
    assert list(cwd.iterdir()) == []


# --------------------------------------------------------------------------- run names


def test_default_run_name_is_deterministic(cwd, capsys):
    a = dry_run([R, "train.lr=0.02", "train.epochs=2"], capsys)["run_dir"]
    b = dry_run([R, "train.lr=0.02", "train.epochs=2"], capsys)["run_dir"]
    assert a == b
    assert Path(a).name.startswith("lr-0.02_epochs-2-")


def test_different_lr_gives_a_different_run_dir(cwd, capsys):
    a = dry_run([R, "train.lr=0.02"], capsys)["run_dir"]
    b = dry_run([R, "train.lr=0.03"], capsys)["run_dir"]
    assert a != b


def test_config_file_values_count_in_the_run_name(cwd, capsys, tmp_path):
    f1, f2 = tmp_path / "a.yaml", tmp_path / "b.yaml"
    f1.write_text("train:\n  lr: 0.02\n")
    f2.write_text("train:\n  lr: 0.03\n")
    a = dry_run([R, f"config={f1}"], capsys)["run_dir"]
    b = dry_run([R, f"config={f2}"], capsys)["run_dir"]
    assert a != b


def test_operational_keys_do_not_change_the_run_name(cwd, capsys):
    a = dry_run([R], capsys)["run_dir"]
    b = dry_run([R, "log.quiet=true", "data.num_workers=2", "checkpoint.keep_last=3"], capsys)["run_dir"]
    assert a == b


def test_run_name_sets_the_directory(cwd, capsys):
    d = dry_run([R, "run.name=foo"], capsys)
    assert d["run_dir"] == "runs/resnet_finetune/foo"
    assert dry_run([R, "run.name=foo", "run.output_dir=out"], capsys)["run_dir"] == "out/resnet_finetune/foo"


def test_user_recipe_dir_is_its_name(cwd, capsys):
    assert dry_run([f"recipe={TINY}", "run.name=x"], capsys)["run_dir"] == "runs/tiny/x"


# --------------------------------------------------------------------------- bad input


def image_folder(root: Path, train: list[str], val: list[str]) -> Path:
    for split, classes in (("train", train), ("val", val)):
        (root / split).mkdir(parents=True)
        for c in classes:
            (root / split / c).mkdir()
    return root


def _folder_missing(data: Path) -> list[str]:
    return [R, "data.name=image_folder", f"data.root={data / 'nope'}"]


def _folder_no_classes(data: Path) -> list[str]:
    return [R, "data.name=image_folder", f"data.root={image_folder(data / 'imgs', [], [])}"]


def _folder_differs(data: Path) -> list[str]:
    return [R, "data.name=image_folder", f"data.root={image_folder(data / 'imgs', ['cat', 'dog'], ['cat', 'fox'])}"]


def _folder_no_train(data: Path) -> list[str]:
    root = image_folder(data / "imgs", [], ["cat"])
    (root / "train").rmdir()
    return [R, "data.name=image_folder", f"data.root={root}"]


def _under_a_file(data: Path) -> list[str]:
    (data / "afile").write_text("x")
    return [R, f"run.output_dir={data / 'afile' / 'runs'}"]


def _under_an_executable_file(data: Path) -> list[str]:
    (data / "tool").write_text("#!/bin/sh\n")
    (data / "tool").chmod(0o755)
    return [R, f"run.output_dir={data / 'tool' / 'runs'}"]


def _missing_config_file(data: Path) -> list[str]:
    return [R, f"config={data / 'nope.yaml'}"]


def _bad_yaml(data: Path) -> list[str]:
    (data / "bad.yaml").write_text("train: [1, 2\n")
    return [R, f"config={data / 'bad.yaml'}"]


def _list_yaml(data: Path) -> list[str]:
    (data / "list.yaml").write_text("- 1\n- 2\n")
    return [R, f"config={data / 'list.yaml'}"]


def _missing_weights_file(data: Path) -> list[str]:
    return [R, f"model.weights={data / 'weights.pth'}"]


def _const(*argv: str) -> Callable[[Path], list[str]]:
    return lambda data: list(argv)


BAD_INPUTS = {
    "unknown recipe": (
        _const("recipe=resnet_finetun"),
        "unknown recipe 'resnet_finetun'; did you mean resnet_finetune?",
    ),
    "unknown key": (_const(R, "train.lrr=0.1"), "unknown config key 'train.lrr'; did you mean train.lr?"),
    "bare key": (_const(R, "lr=0.1"), "did you mean train.lr?"),
    "wrong type": (_const(R, "train.epochs=abc"), "bad value train.epochs"),
    "negative lr": (_const(R, "train.lr=-1"), "bad value train.lr"),
    "zero batch": (_const(R, "train.batch_size=0"), "bad value train.batch_size"),
    "multistep": (_const(R, "train.scheduler=multistep"), "needs train.milestones"),
    "log backend": (_const(R, "log.backends=[wandbb]"), "unknown log backend 'wandbb'; did you mean wandb?"),
    "not key=value": (_const(R, "train.lr"), "expected key=value"),
    "unknown option": (_const(R, "--bogus"), "No such option '--bogus'"),
    "bad option value": (_const(R, "--procs", "0"), "--procs"),
    "bad choice": (_const(R, "--device", "tpu"), "--device"),
    "no recipe": (_const(), "no recipe given"),
    "no recipe, only keys": (_const("train.lr=0.1"), "no recipe given"),
    "empty recipe": (_const("recipe="), "no recipe given"),
    "fp16 on cpu with deepspeed": (
        _const(R, "--precision", "fp16-mixed", "--device", "cpu", "--strategy", "deepspeed"),
        "fp16-mixed on the CPU is not supported with deepspeed",
    ),
    "nodes without slurm": (_const(R, "--nodes", "2"), "--nodes 2 needs a cluster"),
    "slurm time": (_const(R, "--slurm", "slurm.time=4h"), "is not a Slurm time"),
    "slurm memory": (_const(R, "--slurm", "slurm.mem=lots"), "is not a Slurm memory size"),
    "gpus without GPUs": (_const(R, "--gpus", "2"), "no CUDA GPU is visible"),
    "dp on cpu": (_const(R, "--strategy", "dp", "--device", "cpu"), "on the CPU it would do nothing"),
    "conflict": (_const(R, "dist.procs=3", "--procs", "2"), "conflicts with --procs 2"),
    "image_folder root missing": (_folder_missing, "does not exist"),
    "image_folder no classes": (_folder_no_classes, "has no class folders"),
    "image_folder no train": (_folder_no_train, "train is missing"),
    "image_folder classes differ": (_folder_differs, "train and val classes differ"),
    "num_classes vs digits": (_const(R, "data.num_classes=5"), "data.num_classes=5 but data.name=digits has 10"),
    "unknown weights": (_const(R, "model.weights=FOO"), "unknown weights 'FOO' for resnet18"),
    "weights name of another arch": (_const(R, "model.weights=IMAGENET1K_V2"), "unknown weights 'IMAGENET1K_V2'"),
    "weights file missing": (_missing_weights_file, "weights file"),
    "missing config file": (_missing_config_file, "not found"),
    "bad yaml": (_bad_yaml, "is not valid YAML"),
    "yaml not a mapping": (_list_yaml, "must hold a mapping"),
    "output under a file": (_under_a_file, "cannot write to"),
    "output under an executable file": (_under_an_executable_file, "cannot write"),
    "bad run name": (_const(R, "run.name=a/b"), "must be a plain directory name"),
}


def assert_one_error_line(code: int, out: str, err: str, needle: str) -> None:
    assert code == 2, (out, err)
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert needle in lines[0]
    assert "Traceback" not in out + err


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_in_process(case, dry, cwd, tmp_path, capsys, no_training):
    build, needle = BAD_INPUTS[case]
    data = tmp_path / "data"
    data.mkdir()
    argv = build(data) + (["--dry-run"] if dry else [])
    before = snapshot(data)
    code, out, err = call_main(argv, capsys)
    assert_one_error_line(code, out, err, needle)
    assert out == ""
    assert list(cwd.iterdir()) == []
    assert snapshot(data) == before


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_subprocess(case, cwd, tmp_path):
    build, needle = BAD_INPUTS[case]
    data = tmp_path / "data"
    data.mkdir()
    argv = build(data)
    before = snapshot(data)
    proc = run_launch(argv, cwd, timeout=60)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, needle)
    assert not (cwd / "runs").exists()
    assert list(cwd.iterdir()) == []
    assert snapshot(data) == before


def test_config_errors_surface_as_exceptions_in_cli_runner(cwd):
    result = invoke(R, "train.lrr=1")
    assert isinstance(result.exception, ConfigError)
    assert "did you mean train.lr?" in str(result.exception)
    assert list(cwd.iterdir()) == []


def test_read_only_output_dir(tmp_path, cwd, capsys, no_training):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (see the under-a-file cases)")
        code, out, err = call_main([R, f"run.output_dir={ro / 'runs'}"], capsys)
        assert_one_error_line(code, out, err, "cannot write to")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


# --------------------------------------------------------------------------- existing run directories


def existing_run(cwd: Path, capsys, *args: str) -> Path:
    """A run directory as the parent writes it (config.yaml) plus a metrics file."""
    code, out, _ = call_main([R, "run.name=exp", *args, "--show-config"], capsys)
    assert code == 0
    path = cwd / "runs" / "resnet_finetune" / "exp"
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(out)
    (path / "metrics.jsonl").write_text('{"step": 1, "train/loss": 2.0}\n')
    return path


def test_existing_run_with_the_same_config_resumes(cwd, capsys):
    existing_run(cwd, capsys, "train.lr=0.01")
    before = snapshot(cwd)
    d = dry_run([R, "run.name=exp", "train.lr=0.01"], capsys)
    assert d["state"] == "resumes this run"
    # more epochs and operational keys are safe for an existing run
    d = dry_run([R, "run.name=exp", "train.lr=0.01", "train.epochs=9", "log.quiet=true"], capsys)
    assert d["state"] == "resumes this run"
    assert snapshot(cwd) == before


@pytest.mark.parametrize("dry", [False, True], ids=["run", "dry-run"])
def test_existing_run_with_a_different_lr_is_refused(cwd, capsys, no_training, dry):
    path = existing_run(cwd, capsys, "train.lr=0.01")
    before = snapshot(cwd)
    code, out, err = call_main([R, "run.name=exp", "train.lr=0.02", *(["--dry-run"] if dry else [])], capsys)
    assert_one_error_line(code, out, err, "holds a run with a different config")
    assert "train.lr: 0.01 -> 0.02" in err
    assert "run.name=" in err  # names the fix
    assert snapshot(cwd) == before
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "metrics.jsonl"]


def test_existing_run_with_a_different_lr_is_refused_subprocess(cwd, capsys):
    existing_run(cwd, capsys, "train.lr=0.01")
    before = snapshot(cwd)
    proc = run_launch([R, "run.name=exp", "train.lr=0.02"], cwd, timeout=60)
    assert_one_error_line(proc.returncode, proc.stdout, proc.stderr, "train.lr: 0.01 -> 0.02")
    assert snapshot(cwd) == before


def test_existing_directory_without_config_is_refused(cwd, capsys, no_training):
    path = cwd / "runs" / "resnet_finetune" / "exp"
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("mine")
    before = snapshot(cwd)
    code, out, err = call_main([R, "run.name=exp"], capsys)
    assert_one_error_line(code, out, err, "is not a run directory (no config.yaml)")
    assert snapshot(cwd) == before
    assert [p.name for p in path.iterdir()] == ["notes.txt"]


def test_empty_existing_directory_is_a_new_run(cwd, capsys):
    (cwd / "runs" / "resnet_finetune" / "exp").mkdir(parents=True)
    assert dry_run([R, "run.name=exp"], capsys)["state"] == "new run"


def test_run_path_that_is_a_file_is_refused(cwd, capsys, no_training):
    (cwd / "runs" / "resnet_finetune").mkdir(parents=True)
    (cwd / "runs" / "resnet_finetune" / "exp").write_text("x")
    code, out, err = call_main([R, "run.name=exp"], capsys)
    assert_one_error_line(code, out, err, "exists and is not a directory")
    assert (cwd / "runs" / "resnet_finetune" / "exp").read_text() == "x"


def test_unreadable_config_is_refused(cwd, capsys, no_training):
    path = existing_run(cwd, capsys)
    (path / "config.yaml").write_text("recipe: [unclosed\n")
    code, out, err = call_main([R, "run.name=exp"], capsys)
    assert_one_error_line(code, out, err, "config.yaml is unreadable")


def test_resume_never_refuses_existing_checkpoints(cwd, capsys, no_training):
    path = existing_run(cwd, capsys)
    (path / "checkpoints" / "step-3").mkdir(parents=True)
    (path / "checkpoints" / "step-3" / "COMPLETE").write_text("")
    code, out, err = call_main([R, "run.name=exp", "run.resume=never"], capsys)
    assert_one_error_line(code, out, err, "run.resume=never")
    # ... while auto resumes it
    assert dry_run([R, "run.name=exp"], capsys)["state"] == "resumes this run"


def test_completed_run_is_not_trained_again_in_process(cwd, capsys, no_training):
    path = existing_run(cwd, capsys)
    summary = {"status": "completed", "final_metrics": {"val/acc": 0.875, "val/loss": 0.25, "note": "x"}}
    (path / "summary.json").write_text(json.dumps(summary))
    before = snapshot(cwd)
    code, out, err = call_main([R, "run.name=exp"], capsys)
    assert code == 0, err
    assert "is already complete (val/acc=0.875 val/loss=0.25); nothing to do." in out
    assert snapshot(cwd) == before
    assert dry_run([R, "run.name=exp"], capsys)["state"] == "already completed"
    # More epochs of a schedule planned for the run's length (resnet_finetune: cosine) are refused
    # (tests/test_schedules.py has the cases where they extend it)
    code, out, err = call_main([R, "run.name=exp", "train.epochs=9", "--dry-run"], capsys)
    assert_one_error_line(code, out, err, "model.init_from=")


# --------------------------------------------------------------------------- a real (tiny) run


def test_completed_run_says_so_and_does_not_train_again(cwd, capsys):
    args = [f"recipe={TINY}", "train.epochs=1", "log.quiet=true"]
    predicted = dry_run(args, capsys)["run_dir"]
    assert list(cwd.iterdir()) == []

    first = run_launch(args, cwd)
    assert first.returncode == 0, first.stderr
    run_dir = only_run_dir(cwd)
    assert run_dir == cwd / predicted
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert read_jsonl(run_dir / "metrics.jsonl")
    metrics = (run_dir / "metrics.jsonl").read_bytes()
    before = snapshot(run_dir)

    again = run_launch(args, cwd)
    assert again.returncode == 0, again.stderr
    assert f"{predicted} is already complete" in again.stdout
    assert "nothing to do" in again.stdout
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics
    assert snapshot(run_dir) == before  # model.safetensors mtime included
    assert only_run_dir(cwd) == run_dir
    assert dry_run(args, capsys)["state"] == "already completed"
