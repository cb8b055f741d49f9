"""The loaded graph and the garbage collector, in a process bnfold owns (the CLI's).

A loaded model is hundreds of thousands of small objects that live until its fold is
written. Every collection of the older generations scans them although none is
garbage, and a fold makes little garbage (the nodes and values it removes): on 40,000
Conv+BN layers the collector cost 2.8 s, more per layer the larger the model. So in
the CLI process, from the first model's load on, the collector stays paused; each
loaded model is frozen (`gc.freeze`), and so is everything at exit, so that the
interpreter's last collection has nothing to scan. Before the next model loads, all
of it is thawed and collected with whatever the last fold left: a run over many files
holds one model at a time. Memory-mapped tensors are released explicitly once written
(model_file.py), never left to a collection. The library does none of this unless
`own_the_collector` was called: other people's processes keep their collector as it is.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_owned = False


def own_the_collector() -> None:
    """Let `loading` pause, freeze and thaw (the CLI calls this for its own process)."""
    global _owned
    if not _owned:
        atexit.register(gc.freeze)  # before the interpreter's final collection, which skips frozen objects
    _owned = True


@contextmanager
def loading() -> Iterator[None]:
    """Around building a model: the last one thawed and collected first, then the collector paused, and
    everything alive once the model is built frozen."""
    if not _owned:
        yield
        return
    if gc.get_freeze_count():
        gc.unfreeze()
        gc.collect()
    gc.disable()
    yield
    gc.freeze()
