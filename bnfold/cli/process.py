"""Settings for the command-line process, which bnfold owns: sympy deferred, a calmer garbage collector.

onnx-ir imports sympy when it is imported (about 0.2 s and 33 MiB on the
project's machine) but uses it only for arithmetic on symbolic dimensions, which
folding never does. In the command-line process, which bnfold owns, `defer_sympy`
puts stand-ins for `sympy` and `onnx_ir._symbolic_shapes` into sys.modules; each
imports the real module on its first attribute access and then behaves exactly as
it. The library (`import bnfold`) never does this: other people's processes keep
their imports as they are. Anything unexpected (sympy or onnx-ir already imported,
a different layout of onnx-ir) leaves the normal imports in place.
`calm_garbage_collector` likewise changes only the CLI process's collector.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
import types
from pathlib import Path

DEFERRED = ("sympy", "onnx_ir._symbolic_shapes")


class _Deferred(types.ModuleType):
    """A module that becomes the real one on first use."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)  # the import system's probes must not load it
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        real = importlib.import_module(self.__name__)
        self.__dict__.update(real.__dict__)  # modules that already hold this stand-in see the real thing
        return getattr(real, attribute)


def defer_sympy() -> bool:
    """Install the stand-ins; True when they are in place."""
    if any(name in sys.modules for name in ("sympy", "onnx_ir")):
        return False
    try:
        package = importlib.util.find_spec("onnx_ir")
        origin = package.origin if package is not None else None
        if origin is None or importlib.util.find_spec("sympy") is None:
            return False
        if not (Path(origin).parent / "_symbolic_shapes.py").is_file():
            return False
    except (ImportError, ValueError):
        return False
    for name in DEFERRED:
        sys.modules[name] = _Deferred(name)
    return True


# A fold builds and edits a graph of many small, long-lived objects; with Python's
# default threshold (700) the collector rescans them over and over (15-30% of the
# time on a 5,000-layer model). Cycles are still collected, just less often.
GC_FIRST_GENERATION_THRESHOLD = 10_000


def calm_garbage_collector() -> None:
    """Collect the youngest generation every 10,000 allocations instead of 700, and freeze each loaded
    model (CLI process only)."""
    first, second, third = gc.get_threshold()
    gc.set_threshold(max(first, GC_FIRST_GENERATION_THRESHOLD), second, third)
    from bnfold.model_io import collector

    collector.own_the_collector()  # and leave each loaded model out of the full collections (see collector.py)
