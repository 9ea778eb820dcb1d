"""Distributed PyTorch training launcher.

The modules directly in this package form the *parent side* (CLI, config, planning, command
building). They never import torch, so ``launch --help``, ``--list``, ``--dry-run`` and every
config error answer instantly. Everything that needs torch lives in :mod:`launcher.runtime`
and is imported only inside worker processes.
"""

__version__ = "0.1.0"
