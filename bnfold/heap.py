"""The loaded graph and the garbage collector, in a process bnfold owns (the CLI's).

A loaded model is hundreds of thousands of small objects that live until its fold is
written. Every full collection scans all of them although none is garbage: 1.2 s per
collection for 40,000 Conv+BN layers, a few times per run and once more at exit. In
the CLI process the model is built with the collector paused (building makes no
garbage), then frozen (`gc.freeze`: collections, the one at exit included, leave it
alone); before the next model loads, it is thawed and collected with whatever the last
fold left, so a run over many files holds one model at a time. The library does none
of this unless `own_the_collector` was called: other people's processes keep their
collector as it is.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

_owned = False


def own_the_collector() -> None:
    """Let `loading` pause, freeze and thaw (the CLI calls this for its own process)."""
    global _owned
    _owned = True


@contextmanager
def loading() -> Iterator[None]:
    """Around building a model: the last one thawed and collected first, the collector paused while building,
    everything alive then frozen."""
    if not _owned:
        yield
        return
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
    gc.freeze()
