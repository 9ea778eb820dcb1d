"""Pure planning and command building: resolved config -> Plan -> Command."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from launcher.commands import WORKER_MODULE, Command, build_command, worker_env
from launcher.config import resolve
from launcher.errors import ConfigError
from launcher.plan import Plan, make_plan
from launcher.recipe_loader import load_recipe

RECIPE = load_recipe("resnet_finetune")


def cfg_with(*pairs: tuple[str, str]):
    return resolve(RECIPE, [], [("recipe", "resnet_finetune"), *pairs])


def test_default_plan_is_single_in_process():
    plan = make_plan(cfg_with())
    assert plan == Plan(strategy="single", device="auto", procs_per_node=1, nodes=1, launcher="in-process")
    assert plan.world_size == 1


def test_plan_keeps_the_requested_device_and_explicit_single():
    plan = make_plan(cfg_with(("dist.device", "cpu"), ("dist.strategy", "single")))
    assert plan.strategy == "single"
    assert plan.device == "cpu"
    assert plan.launcher == "in-process"


def test_world_size_is_procs_times_nodes():
    assert Plan("ddp", "cuda", 4, 2, "torchrun").world_size == 8


@pytest.mark.parametrize(
    ("pairs", "needle"),
    [
        ([("dist.strategy", "single"), ("dist.procs", "2")], "dist.strategy=single runs one process"),
        ([("dist.strategy", "deepspeed"), ("train.precision", "bf16-true")], "not supported with deepspeed"),
        ([("dist.strategy", "deepspeed"), ("checkpoint.async", "true")], "not supported with deepspeed"),
        ([("dist.strategy", "accelerate"), ("train.precision", "bf16-true")], "not supported with accelerate"),
        ([("dist.strategy", "dp")], "DataParallel) needs CUDA GPUs"),
        ([("dist.strategy", "dp"), ("dist.device", "cpu")], "on the CPU it would do nothing"),
        ([("dist.device", "mps"), ("dist.procs", "2")], "MPS runs one process"),
        (
            [("train.precision", "fp16-mixed"), ("dist.device", "cpu"), ("dist.strategy", "deepspeed")],
            "CPU is not supported with deepspeed",
        ),
        ([("train.precision", "fp16-mixed"), ("dist.device", "mps")], "fp16-mixed is not supported on MPS"),
        ([("dist.nodes", "2")], "--nodes 2 needs a cluster"),
        ([("slurm.enabled", "true"), ("dist.strategy", "accelerate")], "not supported with --slurm"),
        ([("dist.strategy", "fsdp"), ("log.tensorboard.histograms", "true")], "histograms=true is not supported"),
        ([("dist.strategy", "fsdp"), ("dist.device", "cpu"), ("fsdp.cpu_offload", "true")], "needs CUDA GPUs"),
        ([("dist.strategy", "ddp"), ("fsdp.reshard_after_forward", "false")], "act only with --strategy fsdp"),
        ([("dist.strategy", "fsdp"), ("dist.device", "mps")], "--strategy fsdp does not run on mps"),
        ([("dist.strategy", "fsdp"), ("train.precision", "bf16-true")], "not supported with fsdp"),
        ([("dist.strategy", "deepspeed"), ("train.compile", "true")], "not supported with deepspeed"),
    ],
)
def test_plan_refuses_what_it_cannot_run(pairs, needle):
    with pytest.raises(ConfigError) as exc:
        make_plan(cfg_with(*pairs))
    assert needle in str(exc.value)
    assert "\n" not in str(exc.value)


def test_slurm_plans_srun_tasks_on_every_node():
    plan = make_plan(cfg_with(("slurm.enabled", "true"), ("dist.nodes", "3"), ("dist.procs", "4")))
    assert (plan.launcher, plan.strategy, plan.world_size) == ("slurm", "ddp", 12)
    one = make_plan(cfg_with(("slurm.enabled", "true")))  # a single-node, single-process job: the same path
    assert (one.launcher, one.strategy, one.world_size) == ("slurm", "single", 1)


def test_fp16_is_allowed_on_cuda():
    plan = make_plan(cfg_with(("train.precision", "fp16-mixed"), ("dist.device", "cuda")))
    assert plan.device == "cuda"


def test_build_command_runs_the_worker_on_the_run_dir(tmp_path):
    cfg = cfg_with()
    run_dir = tmp_path / "runs" / "resnet_finetune" / "x"
    cmd = build_command(make_plan(cfg), cfg, run_dir)
    assert cmd.argv == [sys.executable, "-m", "launcher.runtime.worker", str(run_dir)]
    assert WORKER_MODULE == "launcher.runtime.worker"
    assert cmd.in_process is True
    assert cmd.env == {}


def test_build_command_uses_the_given_python():
    cfg = cfg_with()
    cmd = build_command(make_plan(cfg), cfg, Path("r"), python="/opt/py/bin/python3")
    assert cmd.argv == ["/opt/py/bin/python3", "-m", WORKER_MODULE, "r"]


def test_build_command_refuses_unknown_launchers():
    cfg = cfg_with()
    with pytest.raises(ValueError, match="nope"):
        build_command(Plan("ddp", "cuda", 2, 1, "nope"), cfg, Path("r"))


def test_procs_plan_ddp_through_torchrun_with_threads_shared():
    cfg = cfg_with(("dist.procs", "2"), ("dist.device", "cpu"))
    plan = make_plan(cfg)
    assert (plan.strategy, plan.launcher, plan.world_size) == ("ddp", "torchrun", 2)
    cmd = build_command(plan, cfg, Path("runs/x"), python="/py", cpu_count=8, environ={})
    assert cmd.argv == [
        "/py",
        "-m",
        "launcher.runtime.agent",  # torchrun inside the agent that keeps the stop contract
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "-m",
        "launcher.runtime.worker",
        "runs/x",
    ]
    assert cmd.env == {"OMP_NUM_THREADS": "4"} and not cmd.in_process
    # a user's own OMP_NUM_THREADS is left alone
    assert build_command(plan, cfg, Path("r"), environ={"OMP_NUM_THREADS": "3"}).env == {}


@pytest.mark.parametrize(("gpus", "needle"), [(0, "no CUDA GPU is visible"), (1, "use --gpus 1")])
def test_more_gpus_than_the_node_has_is_refused(gpus, needle):
    with pytest.raises(ConfigError, match=needle):
        make_plan(cfg_with(("dist.procs", "2"), ("dist.device", "cuda")), gpus=gpus)
    assert make_plan(cfg_with(("dist.procs", "2"), ("dist.device", "cuda")), gpus=2).launcher == "torchrun"


def test_visible_gpus_reads_cuda_visible_devices():
    from launcher.hardware import visible_gpus

    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1,3"}) == 3
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == 0
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == 0


def test_deterministic_sets_cublas_workspace():
    assert worker_env(cfg_with()) == {}
    cfg = cfg_with(("run.deterministic", "true"))
    assert worker_env(cfg) == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    cmd = build_command(make_plan(cfg), cfg, Path("r"))
    assert cmd.env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert cmd.render().startswith("CUBLAS_WORKSPACE_CONFIG=:4096:8 ")


def test_render_quotes_arguments_with_spaces():
    cmd = Command(["/usr/bin/python", "-m", WORKER_MODULE, "runs/my run/x y"], {"B": "two words", "A": "1"})
    text = cmd.render()
    assert text == "A=1 B='two words' /usr/bin/python -m launcher.runtime.worker 'runs/my run/x y'"
    assert shlex.split(text) == ["A=1", "B=two words", "/usr/bin/python", "-m", WORKER_MODULE, "runs/my run/x y"]


def test_render_without_env_is_just_the_argv():
    assert Command(["python", "-m", "x", "a'b"]).render() == "python -m x 'a'\"'\"'b'"


def test_deepspeed_runs_under_torchrun_and_accelerate_under_its_launcher():
    cfg = cfg_with(("dist.procs", "2"), ("dist.device", "cpu"), ("dist.strategy", "deepspeed"))
    cmd = build_command(make_plan(cfg), cfg, Path("r"), python="/py", cpu_count=2, environ={})
    assert cmd.argv[:6] == [
        "/py",
        "-m",
        "launcher.runtime.agent",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
    ]
    cfg = cfg_with(("dist.procs", "2"), ("dist.device", "cpu"), ("dist.strategy", "accelerate"))
    cmd = build_command(make_plan(cfg), cfg, Path("r"), python="/py", cpu_count=2, environ={}, port=12345)
    assert cmd.argv == [
        "/py",
        "-m",
        "launcher.runtime.agent",
        "accelerate.commands.launch",
        "--num_machines=1",
        "--num_processes=2",
        "--mixed_precision=no",
        "--dynamo_backend=no",
        "--multi_gpu",
        "--main_process_port=12345",
        "--module",
        "launcher.runtime.worker",
        "r",
    ]
    # on the CPU Accelerate is only really distributed with this variable (and --multi_gpu)
    assert cmd.env == {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def test_deepspeed_section_is_validated():
    with pytest.raises(ConfigError, match="offload_param needs deepspeed.stage=3"):
        cfg_with(("deepspeed.stage", "2"), ("deepspeed.offload_param", "true"))
    with pytest.raises(ConfigError, match="deepspeed.stage"):
        cfg_with(("deepspeed.stage", "4"))


def test_auto_is_settled_in_the_parent_for_a_local_run_and_left_to_the_workers_under_slurm():
    assert make_plan(cfg_with(), gpus=0).device == "cpu"
    assert make_plan(cfg_with(("dist.strategy", "fsdp"), ("dist.procs", "2")), gpus=2).device == "cuda"
    assert make_plan(cfg_with(("slurm.enabled", "true")), gpus=None).device == "auto"  # GPUs on the compute node
    plan = make_plan(cfg_with(("dist.strategy", "fsdp"), ("dist.procs", "2")), gpus=0)
    assert plan.to_dict() == {
        "strategy": "fsdp", "device": "cpu", "procs_per_node": 2, "nodes": 1, "launcher": "torchrun", "world_size": 2
    }  # fmt: skip


def test_accelerate_auto_device_is_settled_in_the_parent_and_fp16_refused_on_cpu():
    cfg = cfg_with(("dist.strategy", "accelerate"), ("dist.procs", "2"))
    assert make_plan(cfg, gpus=0).device == "cpu"
    assert make_plan(cfg, gpus=2).device == "cuda"
    with pytest.raises(ConfigError, match="fp16-mixed on the CPU is not supported with accelerate"):
        make_plan(cfg_with(("dist.strategy", "accelerate"), ("train.precision", "fp16-mixed")), gpus=0)
    # our own GradScaler runs on the CPU (single, ddp)
    assert (
        make_plan(cfg_with(("train.precision", "fp16-mixed"), ("dist.device", "cpu"), ("dist.procs", "2"))).strategy
        == "ddp"
    )
