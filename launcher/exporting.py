"""`launch export RUN_DIR`: a run's weights as a file usable on its own (torch-free parent).

``--format safetensors`` writes the full weights (FSDP's shards assembled); ``--format pt2`` a
``torch.export`` program of the model, traced with an example batch from the recipe's data
(batch size free), loadable with ``torch.export.load`` without this package. Either way a JSON
beside it (``<file>.json``) names the recipe, the weights, the classes and the preprocessing. Files go to
``RUN_DIR/export/<weights>.<format>`` (or ``--out DIR``); nothing of the run is written.
"""

from __future__ import annotations

from pathlib import Path

import click

from launcher.errors import LaunchError

EXPORT_DIR = "export"
FORMATS = {"safetensors": ".safetensors", "pt2": ".pt2"}
EXPORTER_MODULE = "launcher.runtime.exporter"


@click.command(name="export", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--checkpoint", "which", default="last", show_default=True, help="last | best | step-N")
@click.option("--format", "fmt", type=click.Choice(list(FORMATS)), default="safetensors", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the files (default RUN_DIR/export).")
def export_command(run_dir: Path, which: str, fmt: str, out: Path | None) -> int:
    """Export a run's weights (safetensors) or its model (pt2, torch.export), with a JSON beside it."""
    import sys

    from launcher.commands import Command
    from launcher.evaluation import base_request, choose_weights, run_config, run_request

    _, cfg = run_config(run_dir, [("dist.device", "cpu"), ("dist.procs", "1"), ("dist.nodes", "1")])
    weights = choose_weights(run_dir, which, cfg.checkpoint.monitor, cfg.checkpoint.mode)
    folder = out if out is not None else run_dir / EXPORT_DIR
    if folder.exists() and not folder.is_dir():
        raise LaunchError(f"--out {folder} is a file; pass a folder")
    target = folder / f"{weights.name}{FORMATS[fmt]}"
    request = {**base_request(run_dir, cfg, weights), "format": fmt, "out": str(target)}
    return run_request(
        folder, request, lambda spec: Command([sys.executable, "-m", EXPORTER_MODULE, str(spec)], in_process=True)
    )
