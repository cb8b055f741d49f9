"""A model with nothing to fold, copied through: no onnx-ir, no re-serialization, the same bytes.

`scan.may_fold` decides that the pass would change nothing; then the model file is
copied byte for byte into a stage beside the output, fsynced, and committed as any
output is (staging.py). Only a model whose tensors are all in its own file
qualifies: an external-data model's data file would have to be renamed to
OUT.<token>.data, which changes the references in it, so it takes the full path.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

import onnx

from bnfold.errors import OutputError
from bnfold.model_io.staging import Stage


def self_contained(externals: list[onnx.TensorProto], path: Path) -> bool:
    """None of the model's external tensors refers to a file other than the model file (references to it are
    its own inline bytes, read later)."""
    for tensor in externals:
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        if location != path.name:
            return False
    return True


def op_counts(proto: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """Op type -> (nodes, nodes) in the main graph: nothing changes."""
    counts = Counter(node.op_type for node in proto.graph.node)
    return {op: (n, n) for op, n in sorted(counts.items())}


def copy_through(source: Path, destination: Path, token: str) -> int:
    """Write `source`'s bytes to `destination` (staged, durable, atomic); the bytes written."""
    with Stage(destination, token) as stage:
        try:
            with open(source, "rb") as src, open(stage.model, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)  # copy_file_range/sendfile under the hood on Linux
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as error:
            raise OutputError(f"{destination}: cannot write it ({error.strerror or error})") from error
        stage.commit()
    return source.stat().st_size
