"""Start-up of the processes that train: imports without garbage-collection passes.

Importing torch and its compiler stack makes about a million Python objects that live as long as
the process. While they are made, the cyclic garbage collector keeps walking all of them (gen 2
passes alone take ~0.1 s each once torch is loaded), and later passes walk them again although
they are never garbage. ``imports_without_gc()`` turns collection off while the imports run and
then freezes what exists (``gc.freeze``: later passes skip it), which takes ~0.4 s off a worker's
start here. Objects made afterwards -- model, optimizer, data -- are collected as usual.
"""

from __future__ import annotations

import gc
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
