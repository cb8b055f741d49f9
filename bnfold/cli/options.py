"""The CLI's option values turned into what the library takes: --shape specs, --inputs archives."""

from __future__ import annotations

from pathlib import Path

from bnfold.errors import InputError


def parse_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """--shape values: NAME:1,3,224,224, NAME=1x3x224x224, or a bare 1,3,224,224 (name "": the only input).

    The name is everything before the last '=' (or, without one, the last ':'), so tf2onnx's
    names such as 'input:0' work: input:0:1,3,224,224.
    """
    shapes = {}
    for spec in specs:
        separator = "=" if "=" in spec else ":"
        name, _, dims = spec.rpartition(separator)
        try:
            shape = tuple(int(d) for d in dims.lower().replace("x", ",").split(","))
        except ValueError:
            raise InputError(f"--shape '{spec}' is not NAME:1,3,224,224 or NAME=1x3x224x224") from None
        if any(d < 0 for d in shape) or (not name and separator in spec):
            raise InputError(f"--shape '{spec}' is not NAME:1,3,224,224 or NAME=1x3x224x224")
        if name in shapes:
            raise InputError(f"--shape: input '{name or 'the only input'}' is given twice")
        shapes[name] = shape
    return shapes


def load_inputs(path: Path | None):
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise InputError(f"--inputs {path}: cannot read it as .npz ({error})") from None
