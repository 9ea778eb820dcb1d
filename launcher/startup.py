"""Start-up costs: imports without garbage-collection passes, config classes without plugin scans.

Importing torch and its compiler stack makes about a million Python objects that live as long as
the process. While they are made, the cyclic garbage collector keeps walking all of them (gen 2
passes get slow once torch is loaded), and later passes walk them again although they are never
garbage. ``imports_without_gc()`` turns collection off while the imports run and then freezes what
exists (``gc.freeze``: later passes skip it), which shortens a worker's start (measured in
``benchmarks/startup.py``). Objects made afterwards -- model, optimizer, data -- are collected as usual.

``config_classes_without_plugins()``: pydantic looks for plugins when it builds its first model
class, by reading the entry points of every installed distribution (a visible share of
``launch --dry-run`` in an environment with many packages). ``launch`` builds only configuration classes (ours and the recipe's), which
no plugin is for, so it builds them with plugins off; models made outside the block, e.g. by the
training code, still get the plugins.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def imports_without_gc() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


_NO_PLUGINS = "PYDANTIC_DISABLE_PLUGINS"  # pydantic's documented switch, read at each class build


@contextmanager
def config_classes_without_plugins() -> Iterator[None]:
    if _NO_PLUGINS in os.environ:  # the user's own choice
        yield
        return
    os.environ[_NO_PLUGINS] = "__all__"
    try:
        yield
    finally:
        os.environ.pop(_NO_PLUGINS, None)
