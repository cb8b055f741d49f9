"""The sample model with its tensors in external data, and such models whose references are then rewritten."""

from __future__ import annotations

from pathlib import Path

import onnx
from conftest import SAMPLE


def external_model(folder: Path, location: str, offset: int | None = None, length: int | None = None) -> Path:
    """The sample with its weights external, then every location/offset/length rewritten."""
    folder.mkdir(exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(onnx.load(SAMPLE), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    model = onnx.load(path, load_external_data=False)
    for tensor in model.graph.initializer:
        entries = {e.key: e for e in tensor.external_data}
        entries["location"].value = location
        if offset is not None:
            entries["offset"].value = str(offset)
        if length is not None:
            entries["length"].value = str(length)
    onnx.save(model, path)
    return path


def external_sample(folder: Path, name="model.onnx") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    onnx.save(onnx.load(SAMPLE), path, save_as_external_data=True, location=f"{name}.weights", size_threshold=0)
    return path
