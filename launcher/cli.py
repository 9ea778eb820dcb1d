"""`launch`: argv -> overrides -> resolved config -> plan -> command -> run.

Nothing here imports torch: ``--help``, ``--list``, ``--show-config``, ``--dry-run`` and every
config error answer without it. Only :func:`launcher.spawn.run` brings torch in, to train.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from launcher import __version__, signals
from launcher.errors import EXIT_BAD_INPUT, EXIT_COMPLETED, EXIT_STOPPED, LaunchError

# Command-line options and the config key each one is shorthand for.
SHORTHANDS = {
    "procs": "dist.procs",
    "nodes": "dist.nodes",
    "device": "dist.device",
    "strategy": "dist.strategy",
    "precision": "train.precision",
}

EPILOG = """\b
Examples:
  launch recipe=resnet_finetune                       train on the CPU (digits data, no download)
  launch recipe=resnet_finetune train.epochs=3 train.lr=0.05
  launch recipe=resnet_finetune config=exp.yaml --dry-run
  launch recipe=my_pkg.module:MyRecipe                your own recipe
  launch recipe=resnet_finetune train.lr=1e-3,1e-2 run.seed=0,1 --sweep [--parallel 2] [--slurm]
  launch --list

\b
Other commands (each has --help):
  launch status RUN_DIR|SWEEP_DIR / launch cancel ... a run or a sweep (runs/<recipe>/sweeps/<name>)
  launch report RUN_DIR [RUN_DIR ...]                 plots and a summary table (or SWEEP_DIR, runs/<recipe>)
  launch eval RUN_DIR [--checkpoint last|best|step-N] [--split val|test]
  launch predict RUN_DIR INPUT... [--out FILE] [--checkpoint ...]
  launch export RUN_DIR [--checkpoint ...] [--format safetensors|pt2]

Running the same command again resumes the newest complete checkpoint, or says the run is
complete. Exit status: 0 completed, 1 failed, 2 bad input, 130 stopped (Ctrl-C), 143 preempted.
"""


def _shorthand_overrides(opts: dict) -> list[tuple[str, str, str]]:
    """Options -> (key, value, how the user wrote it)."""
    out = []
    if opts.get("gpus") is not None:
        n = opts["gpus"]
        out += [("dist.device", "cuda", f"--gpus {n}"), ("dist.procs", str(n), f"--gpus {n}")]
    for opt, key in SHORTHANDS.items():
        if opts.get(opt) is not None:
            out.append((key, str(opts[opt]), f"--{opt} {opts[opt]}"))
    if opts.get("slurm"):
        out.append(("slurm.enabled", "true", "--slurm"))
    return out


def _merge_overrides(args: list[tuple[str, str]], flags: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """Options may not contradict KEY=VALUE arguments or each other (e.g. --gpus 2 --device cpu)."""
    from launcher import yamlio

    def read(raw: str):
        try:
            return yamlio.load(raw or "''")
        except yamlio.YAMLError:  # not YAML (dist.procs=[1): compared as written
            return raw

    given = {k: (v, f"{k}={v}") for k, v in args}
    for key, value, origin in flags:
        if key in given and read(given[key][0]) != read(value):
            raise LaunchError(f"{given[key][1]} conflicts with {origin} (both set {key}); give only one of them")
        given.setdefault(key, (value, origin))
    return args + [(k, v) for k, v, _ in flags]


def resolve_from_argv(tokens: tuple[str, ...], flags: list[tuple[str, str, str]], sweep_ok: bool = False):
    """key=value tokens + option shorthands -> (recipe spec, recipe class, config, overrides).
    A config file's ``sweep:`` section is for ``--sweep`` (launcher/sweep.py); without it, every
    key it lists must have one value on the command line (a sweep point's own command)."""
    from launcher import config as cfgmod
    from launcher.recipe_loader import load_recipe, normalize_spec

    pairs = [cfgmod.split_override(t) for t in tokens]
    recipe_spec = None
    files: list[str] = []
    overrides: list[tuple[str, str]] = []
    for key, raw in pairs:
        if key == "recipe":
            recipe_spec = raw
        elif key == "config":
            files.append(raw)
        else:
            overrides.append((key, raw))
    file_layers = [cfgmod.load_yaml_file(f) for f in files]
    given = {k for k, _ in overrides}
    for f, layer in zip(files, file_layers, strict=True):
        lists = layer.pop("sweep", None) or {}
        open_keys = [k for k in lists if k not in given]
        if open_keys and not sweep_ok:
            raise LaunchError(
                f"{f} has a sweep: section ({', '.join(open_keys)}); add --sweep to run its points, "
                f"or give {open_keys[0]}=VALUE for one run"
            )
    if recipe_spec is None:
        recipe_spec = next((layer["recipe"] for layer in reversed(file_layers) if "recipe" in layer), None)
    if not recipe_spec:
        raise LaunchError("no recipe given; pass recipe=NAME (see `launch --list`)")
    recipe_cls = load_recipe(recipe_spec)
    overrides = _merge_overrides(overrides, flags)
    spec = normalize_spec(recipe_spec)
    cfg = cfgmod.resolve(recipe_cls, file_layers, [("recipe", spec), *overrides])
    return spec, recipe_cls, cfg, overrides


def _print_list() -> None:
    from launcher.recipe_loader import describe
    from recipes import BUILTIN

    width = max(len(n) for n in BUILTIN)
    for name in sorted(BUILTIN):
        click.echo(f"{name:<{width}}  {describe(name)}")
    click.echo("\nYour own: launch recipe=my_pkg.module:Class  or  launch recipe=path/to/file.py:Class")


@click.command(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EPILOG,
)
@click.argument("overrides", nargs=-1, metavar="recipe=NAME [config=FILE.yaml] [KEY=VALUE ...]")
@click.option("--gpus", type=click.IntRange(min=1), help="GPUs on this node (dist.device=cuda dist.procs=N).")
@click.option("--procs", type=click.IntRange(min=1), help="Processes per node (dist.procs).")
@click.option("--nodes", type=click.IntRange(min=1), help="Nodes, with --slurm (dist.nodes).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), help="dist.device (default auto).")
@click.option(
    "--strategy",
    type=click.Choice(["auto", "single", "dp", "ddp", "accelerate", "deepspeed", "fsdp"]),
    help="dist.strategy (default auto: single for one process, ddp for more; fsdp: sharded, FSDP2).",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16-mixed", "fp16-mixed", "bf16-true"]),
    help="train.precision (default fp32).",
)
@click.option("--slurm", is_flag=True, help="Submit to Slurm with sbatch (slurm.enabled=true).")
@click.option(
    "--sweep",
    "-m",
    "sweep",
    is_flag=True,
    help="Run every combination of the comma lists (train.lr=1e-3,1e-2 ...; a config file's sweep: section).",
)
@click.option("--parallel", type=click.IntRange(min=1), help="With --sweep: points run at a time here (default 1).")
@click.option("--retry-failed", is_flag=True, help="With --sweep: rerun the points that failed.")
@click.option("--sweep-name", help="With --sweep: the sweep's name (default: derived from the command).")
@click.option("--dry-run", is_flag=True, help="Print the resolved config, run directory and command; start nothing.")
@click.option("--show-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("--list", "list_recipes", is_flag=True, help="List the built-in recipes and exit.")
@click.version_option(__version__, "--version")
def launch(
    overrides: tuple[str, ...],
    dry_run: bool,
    show_config: bool,
    list_recipes: bool,
    sweep: bool,
    parallel: int | None,
    retry_failed: bool,
    sweep_name: str | None,
    **opts,
) -> int:
    """Train a recipe on this machine's CPU or GPUs, or on a Slurm cluster.

    Every option is a shorthand for a config key; any key can be set as KEY=VALUE.
    Layers, lowest first: defaults < recipe defaults < config=FILE.yaml < KEY=VALUE.
    """
    if list_recipes:
        _print_list()
        return EXIT_COMPLETED
    if sweep:
        return _sweep(overrides, dry_run, show_config, opts, parallel, retry_failed, sweep_name)
    for given, name in ((parallel, "--parallel"), (retry_failed, "--retry-failed"), (sweep_name, "--sweep-name")):
        if given:
            raise LaunchError(f"{name} is for sweeps; add --sweep (and give a key several values: train.lr=0.001,0.01)")
    prewarmed = None
    modules = _prewarm_modules(overrides, opts)
    if not (dry_run or show_config) and modules:
        from launcher import spawn

        # the training interpreter (or torchrun's) imports torch while this one validates (launcher/prewarm.py)
        prewarmed = spawn.prewarm(modules)
    try:
        return _launch(overrides, dry_run, show_config, opts, prewarmed)
    finally:
        if prewarmed is not None:
            prewarmed.cancel()  # (no-op if the run started in it)
        if "launcher.runlock" in sys.modules:  # _launch took the run directory's lock: its run has ended
            sys.modules["launcher.runlock"].release_all()


# What the single-process worker imports anyway (torch first: most of the time).
WORKER_IMPORTS = (
    "torch",
    "launcher.runtime.worker",
    "launcher.runtime.strategies",
    "launcher.runtime.loop",
    "launcher.runtime.loggers",
    "launcher.runtime.optim",
)


# What the agent around torchrun / `accelerate launch` imports (launcher/runtime/agent.py).
AGENT_IMPORTS = ("torch.distributed.run", "launcher.runtime.agent")


def _prewarm_modules(overrides: tuple[str, ...], opts: dict) -> tuple[str, ...] | None:
    """What the interpreter started before validation should import: torchrun for several
    processes, the worker for one; nothing for Slurm (it runs elsewhere), nor with
    ``LAUNCHER_PREWARM=0`` (one process then trains inside ``launch`` itself: a debugger or
    profiler attached to ``launch`` sees the training, and an embedding program its result)."""
    if os.environ.get("LAUNCHER_PREWARM") == "0":
        return None
    if opts.get("slurm") or any(t.startswith("slurm.enabled=") for t in overrides):
        return None
    return AGENT_IMPORTS if _asks_for_processes(overrides, opts) else WORKER_IMPORTS


def _asks_for_processes(overrides: tuple[str, ...], opts: dict) -> bool:
    """Before the config is resolved (that is what takes time): does the command line ask for
    several processes on this node? A process count set in a config file is not seen here."""
    if opts.get("slurm") or any(t.startswith("slurm.enabled=") for t in overrides):
        return False
    if (opts.get("procs") or 1) > 1 or (opts.get("gpus") or 1) > 1:
        return True
    for token in overrides:
        key, _, value = token.partition("=")
        if key == "dist.procs" and value.isdigit() and int(value) > 1:
            return True
    return False


def _sweep_hint(tokens: tuple[str, ...], error: str) -> str:
    """A comma list given without --sweep, in the token the error is about: say how to sweep it."""
    from launcher.sweep import split_list

    for token in tokens:
        key, _, raw = token.partition("=")
        if len(split_list(raw)) > 1 and (key in error or raw in error):
            return f" (to run one training per value of {key}, add --sweep)"
    return ""


def _option_argv(opts: dict) -> list[str]:
    """The shorthand options as a point's command line gets them."""
    out: list[str] = []
    for name in ("gpus", *SHORTHANDS):
        if opts.get(name) is not None:
            out += [f"--{name}", str(opts[name])]
    if opts.get("slurm"):
        out.append("--slurm")
    return out


def _sweep(overrides, dry_run, show_config, opts, parallel, retry_failed, sweep_name) -> int:
    """``--sweep``: every point resolved and checked first, then run here (launcher/sweep_run.py)."""
    from launcher.startup import config_classes_without_plugins, imports_without_gc

    if show_config:
        raise LaunchError("--show-config shows one run; drop --sweep (give one value per key) to see its config")
    with imports_without_gc(), config_classes_without_plugins():
        from launcher import sweep as sweepmod

        sw = sweepmod.plan_sweep(overrides, _shorthand_overrides(opts), _option_argv(opts), sweep_name)
    if sw.points[0].cfg.slurm.enabled:
        from launcher.sweep_slurm import submit_sweep

        return submit_sweep(sw, parallel, retry_failed, dry_run)
    if dry_run:
        n = len(sw.points)
        click.echo(
            f"# sweep {sw.name}: {n} point{'s' if n > 1 else ''} ({sw.dir}{'' if sw.file.exists() else ', new'})"
        )
        for p in sw.points:
            state = sweepmod.point_state(Path(p.run_dir))
            click.echo(f"[{p.index}] {' '.join(f'{k}={v}' for k, v in p.values.items())}: {p.run_dir} ({state})")
            click.echo("    launch " + " ".join(_quoted(a) for a in sw.argv(p)))
        return EXIT_COMPLETED
    from launcher.sweep_run import run_sweep

    return run_sweep(sw, parallel or 1, retry_failed)


def _quoted(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def config_stems(tokens) -> list[str]:
    """The names of the ``config=FILE`` files of a command line, without folder and ending."""
    return [Path(t.partition("=")[2]).stem for t in tokens if t.partition("=")[0].strip() == "config"]


def run_path_of(spec: str, recipe_cls: type, cfg, kv: list[tuple[str, str]], stems: list[str] = ()) -> Path:
    """The run directory of a resolved command (``run.name``, else the name derived from it: the
    config files' names first). A run started before config file names counted in the name
    (``default-HASH`` for ``config=exp.yaml``) keeps its directory: the command resumes it."""
    from launcher.recipe_loader import recipe_dir_name
    from launcher.rundir import default_run_name

    base = Path(cfg.run.output_dir) / recipe_dir_name(spec, recipe_cls)
    if cfg.run.name is None:
        name = default_run_name(cfg, kv, list(stems))
        legacy = default_run_name(cfg, kv)
        if stems and not (base / name).exists() and (base / legacy).is_dir():
            name = legacy
        cfg.run.name = name
    return base / cfg.run.name


def run_dir_for(argv: list[str]) -> Path:
    """Where ``launch ARGV`` trains (nothing started, nothing written)."""
    ctx = launch.make_context("launch", list(argv))
    opts = dict(ctx.params)
    overrides = opts.pop("overrides")
    for flag in ("dry_run", "show_config", "list_recipes"):
        opts.pop(flag, None)
    spec, recipe_cls, cfg, kv = resolve_from_argv(overrides, _shorthand_overrides(opts))
    return run_path_of(spec, recipe_cls, cfg, kv, config_stems(overrides))


def _launch(overrides: tuple[str, ...], dry_run: bool, show_config: bool, opts: dict, prewarmed) -> int:
    from launcher.startup import config_classes_without_plugins, imports_without_gc

    # pydantic, the config classes and the recipe's: without GC passes and
    # without pydantic's scan of every installed package for plugins
    with imports_without_gc(), config_classes_without_plugins():
        from launcher import config as cfgmod
        from launcher.commands import build_command
        from launcher.plan import make_plan
        from launcher.rundir import check_paths, inspect_run_dir, write_config

        try:
            spec, recipe_cls, cfg, kv = resolve_from_argv(overrides, _shorthand_overrides(opts))
        except LaunchError as e:
            hint = _sweep_hint(overrides, str(e))
            if not hint:
                raise
            raise type(e)(f"{e}{hint}") from None  # (a ConfigError stays one for CliRunner callers)
    if show_config:
        click.echo(cfgmod.to_yaml(cfg), nl=False)
        return EXIT_COMPLETED
    from launcher.hardware import free_port, visible_gpus

    # "auto" and "cuda" are settled and checked against this node's GPUs here, once (with --slurm
    # they are on the compute nodes, not here: the worker settles "auto" there)
    ask_gpus = cfg.dist.device in ("auto", "cuda") and not cfg.slurm.enabled
    plan = make_plan(cfg, gpus=visible_gpus() if ask_gpus else None)
    run_path = run_path_of(spec, recipe_cls, cfg, kv, config_stems(overrides))
    check_paths(cfg)
    prepared = inspect_run_dir(cfg, run_path)
    if not dry_run and plan.launcher != "slurm" and prepared.state != "completed":
        from launcher import runlock

        # one owner per run directory, until the run has ended (released in launch()); a second
        # command is refused here with one line, having written nothing
        runlock.acquire(run_path)
        prepared = inspect_run_dir(cfg, run_path)  # again, as its owner: another may just have finished it
    from launcher.logsetup import check_logging

    check_logging(cfg, run_path)  # backend packages installed, log.dir writable
    flag = signals.installed()
    if flag is not None and flag.requested:  # Ctrl-C or TERM while validating: start (or submit) nothing
        from launcher.spawn import stopped_before_training

        return stopped_before_training(flag)
    if plan.launcher == "slurm":
        from launcher.slurm import submit_run

        return submit_run(cfg, plan, prepared, dry_run)
    port = free_port() if plan.launcher == "accelerate" and plan.procs_per_node > 1 else None
    command = build_command(plan, cfg, run_path, port=port)
    if dry_run:
        click.echo("# resolved config")
        click.echo(cfgmod.to_yaml(cfg), nl=False)
        what = {"new": "new run", "resume": "resumes this run", "completed": "already completed"}[prepared.state]
        click.echo(f"# run directory: {run_path} ({what})")
        click.echo(
            f"# plan: strategy={plan.strategy} device={plan.device} procs/node={plan.procs_per_node} nodes={plan.nodes}"
        )
        click.echo("# command:")
        click.echo(command.render())
        return EXIT_COMPLETED
    if prepared.state == "completed":
        summary = prepared.run_dir.read_summary() or {}
        final = summary.get("final_metrics") or {}
        shown = " ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, (int, float)))
        click.echo(f"launch: {run_path} is already complete ({shown}); nothing to do.")
        not_applied(prepared.safe_changes, run_path)
        click.echo("        To train again, pass another run.name=... or remove that directory.")
        return EXIT_COMPLETED
    for key, (old, new) in prepared.safe_changes.items():
        click.echo(f"launch: {key}: {old!r} -> {new!r} (safe for an existing run)", err=True)
    write_config(prepared, cfg, plan)  # (the worker prints the global batch once it has started)
    from launcher import spawn

    return spawn.run(command, run_path, prewarmed)


def not_applied(changes: dict, run_path: Path) -> None:
    """A completed run is not trained again: say which of the given settings had no effect."""
    if not changes:
        return
    shown = ", ".join(f"{k}={new!r}" for k, (_, new) in list(changes.items())[:4])
    more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
    click.echo(
        f"        Not applied (they act while a run trains): {shown}{more}. For plots of this run: "
        f"launch report {run_path}; to train on from its weights: model.init_from={run_path} run.name=NEW"
    )


# `launch NAME ...` for these names runs another click command ("module:attribute", imported lazily so
# that `launch --help` stays instant). Anything else is a training command (`launch recipe=...`).
SUBCOMMANDS: dict[str, str] = {
    "status": "launcher.slurm:status_command",
    "cancel": "launcher.slurm:cancel_command",
    "report": "launcher.report:report_command",
    "eval": "launcher.evaluation:eval_command",
    "export": "launcher.exporting:export_command",
    "predict": "launcher.predicting:predict_command",
}


def _command_for(argv: list[str]) -> tuple[click.Command, list[str], str]:
    if argv and argv[0] in SUBCOMMANDS:
        import importlib

        module, attr = SUBCOMMANDS[argv[0]].split(":")
        return getattr(importlib.import_module(module), attr), argv[1:], f"launch {argv[0]}"
    return launch, argv, "launch"


def _no_stop_flags() -> None:
    """Python's own signal handling again (the flags installed so far give it back)."""
    while (installed := signals.installed()) is not None:
        installed.uninstall()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: every user-fixable problem is one line on stderr and exit status 2.

    A stop signal (Ctrl-C, SIGTERM, SIGUSR2, SIGHUP) only sets a flag, from the first instant: before
    training starts ``launch`` then starts nothing (exit 130/143, one line); once a run is started it
    is forwarded to it (launcher/spawn.py). A second Ctrl-C before training aborts at once."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = "launch"
    flag = signals.StopFlag().install()
    try:
        command, args, prog = _command_for(argv)
        if command is not launch:  # status, cancel, report: a Ctrl-C interrupts them as usual
            _no_stop_flags()
            if flag.requested:
                raise KeyboardInterrupt
        code = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as e:  # pragma: no cover - click detail
        click.echo(e.format_message())
        code = EXIT_COMPLETED
    except click.UsageError as e:
        click.echo(f"error: {e.format_message()} (see `{prog} --help`)", err=True)
        code = EXIT_BAD_INPUT
    except LaunchError as e:
        click.echo(f"error: {e}", err=True)
        code = EXIT_BAD_INPUT
    except (click.exceptions.Abort, KeyboardInterrupt):  # a second Ctrl-C before training started
        what = "before training started; nothing needed saving" if prog == "launch" else f"({prog})"
        click.echo(f"launch: aborted {what}", err=True)
        code = EXIT_STOPPED
    finally:
        flag.uninstall()
    sys.exit(code if isinstance(code, int) else EXIT_COMPLETED)
