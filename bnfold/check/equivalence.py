"""The equivalence check: original vs folded model on onnxruntime, at every output and every site.

Both models run with every graph optimization off (ORT's own BASIC level already
folds BN, which would hide a wrong fold), on the same two seeded draws of inputs
(check/inputs.py), one model after the other: never both in memory at once. The original
also runs once more on its own session with its inputs and constants nudged by a
rounding step (check/noise.py): the noise each value shows. Besides the graph outputs,
every site (a value whose computation a fold changed, sites.py) is exposed as an
extra output of both models and compared channel by channel against that noise
(check/comparison.py). The verdict:

* failed: an output, or a site holding evidence, differs beyond its tolerance (or NaN/Inf moved);
* inconclusive: nothing failed, but no site a fold touched held evidence: each was
  all NaN/Inf, the same for both draws, or never reached (an If branch not taken);
  such a site is never failed;
* passed: nothing failed and at least one touched site held evidence.

Half precision is judged against a float32 run of the original (check/comparison.py). When
onnxruntime has no kernels for the original's float type (bfloat16 or float64 Conv,
say), both models are converted to float32 and compared there.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto

from bnfold.check.comparison import (
    DEFAULT_TOLERANCES,
    DIRECT_HALF_TOLERANCES,
    HALF_DTYPES,
    Tolerance,
    compare_value,
    informative,
)
from bnfold.check.float_types import HALF_TYPES, convert_float_type, has_float_type, has_half_precision
from bnfold.check.inputs import (
    FREE_OTHER_DIMS,
    Draws,
    check_user_inputs,
    input_specs,
    integer_hints,
    make_draws,
    named_shapes,
)
from bnfold.check.models import Source, source_of, tensor_reader
from bnfold.check.noise import nudgeable, nudged_runs, with_white_noise
from bnfold.check.sessions import lacks_kernel
from bnfold.check.sites import find_sites
from bnfold.errors import RuntimeUnavailableError, first_line
from bnfold.graph.proto_walk import downstream
from bnfold.report import CheckResult, OutputCheck, Site, Verdict

if TYPE_CHECKING:
    import onnx_ir as ir

logger = logging.getLogger(__name__)


def verify(
    original: onnx.ModelProto | ir.Model | str | os.PathLike,
    folded: onnx.ModelProto | ir.Model | str | os.PathLike,
    *,
    inputs: Mapping[str, np.ndarray] | None = None,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    seed: int = 0,
    sites: Iterable[Site] | None = None,
    base_dir: str | os.PathLike | None = None,
) -> CheckResult:
    """Run both models on the same inputs and compare every output and every site.

    `original` and `folded` are each a path, an onnx.ModelProto or an onnx_ir.Model.
    A ModelProto whose tensors live in external data needs `base_dir`, the folder they
    are in. `sites` are the values a fold changed; by default every value whose
    producing node, attributes or constant inputs differ between the two models.
    Raises RuntimeUnavailableError when onnxruntime cannot run the original, and
    InputError for a missing file or inputs/shapes that do not fit the model.
    """
    first, second = source_of(original, base_dir, "original"), source_of(folded, base_dir, "folded")
    if sites is None:
        sites = find_sites(first.proto, second.proto, tensor_reader(first, second))
    check = Check(first, list(sites), Tolerance(rtol, atol), inputs or {}, shapes or {}, seed)
    check.original()
    return check.folded(second)


class Check:
    """One equivalence check: run the original (once), then compare a folded model against it."""

    def __init__(
        self,
        original: Source,
        sites: list[Site],
        tolerance: Tolerance,
        inputs: Mapping[str, np.ndarray],
        shapes: Mapping[str, tuple[int, ...]],
        seed: int,
    ) -> None:
        self.source = original
        produced = {name for node in original.proto.graph.node for name in node.output if name}
        self.sites = [site for site in sites if site.name in produced]
        self.tolerance = tolerance
        self.specs = input_specs(original.proto)
        self.inputs, self.shapes, self.seed = inputs, named_shapes(self.specs, shapes), seed
        check_user_inputs(self.specs, inputs, self.shapes)
        self.outputs = [output.name for output in original.proto.graph.output]
        self.draws: Draws | None = None
        self.expected: list[dict[str, np.ndarray]] = []
        self.reference: list[dict[str, np.ndarray]] | None = None
        self.noise: list[dict[str, np.ndarray]] | None = None  # the original's nudged run (check/noise.py)
        self.nudged: list[onnx.TensorProto] = []  # the constants its noise run nudges
        self.white_noise = False
        self.stand_in: tuple[frozenset[int], dict] | None = None  # float types converted to float32, tolerances
        self.half = "bfloat16" if has_float_type(original.proto, TensorProto.BFLOAT16) else "float16"
        self.half_downstream: set[str] = set()  # values computed from half-precision values a fold changed

    @property
    def extra_outputs(self) -> list[str]:
        conditions = [site.branch[0] for site in self.sites if site.branch is not None]
        return list(dict.fromkeys([site.name for site in self.sites] + conditions))

    def original(self) -> None:
        """Run the original on the draws (retrying larger free dimensions), and its float32 run if half precision."""
        nudge = not has_half_precision(self.source.proto)
        try:
            self.expected = self._run_with_retries(self.source.proto, self.source.base_dir, nudge)
        except RuntimeUnavailableError as error:
            # only a missing kernel calls for the float32 stand-in: types that contradict each other (a float16
            # weight on a float32 input) make a model no runtime loads, whatever its copies in float32 do
            if not lacks_kernel(error.__cause__) or not self._prepare_stand_in():
                raise
        if self.stand_in is None and any(a.dtype.name in HALF_DTYPES for a in self.expected[0].values()):
            self.reference = self._float32_reference()
            changed = [site.name for site in self.sites if self.expected[0][site.name].dtype.name in HALF_DTYPES]
            self.half_downstream = downstream(self.source.proto.graph, changed)

    def folded(self, folded: Source) -> CheckResult:
        """Run `folded` on the same draws and compare it with the original."""
        if self.stand_in is not None:
            refusal = folded.load_refusal()  # the model that will be written must load as it is
            if refusal is not None:
                return self._unrunnable(f"onnxruntime cannot load the folded model: {refusal}")
            folded = Source(convert_float_type(folded.with_data(), self.stand_in[0], TensorProto.FLOAT), None)
        try:
            actual = self._run(folded, self._draws().feeds)
        except Exception as error:  # noqa: BLE001 - the folded model is ours: report it, don't crash
            return self._unrunnable(f"onnxruntime cannot run the folded model: {first_line(error)}")
        result = self._result(actual)
        if result.verdict == "failed" and self.noise is not None and not self.white_noise:
            self.white_noise = True  # only now: its extra nodes would cost every run
            feeds, runs = self._draws().feeds, (self.expected, self.noise)
            self.noise = with_white_noise(self.source, self.nudged, self.extra_outputs, feeds, self.seed, runs)
            result = self._result(actual)
        return result

    # --- running -----------------------------------------------------------------------------------

    def _run_with_retries(
        self, proto: onnx.ModelProto, base_dir: Path | None, nudge: bool = False
    ) -> list[dict[str, np.ndarray]]:
        """The original's runs on the draws; with `nudge`, also its nudged run (self.noise) on the same session."""
        source = Source(proto, base_dir)
        constants = self.nudged = nudgeable(proto) if nudge else []
        try:
            session = source.session(self.extra_outputs, constants)
        except Exception as error:  # onnxruntime raises many types
            raise RuntimeUnavailableError(_cannot_run(error)) from error
        try:
            failure: Exception | None = None
            for free_dim in self._free_dims():
                self.draws = make_draws(
                    self.specs,
                    integer_hints(proto),
                    self.inputs,
                    self.shapes,
                    self.seed,
                    free_dim,
                    single_run=not self._needs_two_runs(),
                )
                try:
                    runs = [session.run(feeds) for feeds in self._draws().feeds]
                except Exception as error:  # noqa: BLE001 - a shape it rejects, or a kernel it lacks
                    failure = error
                    logger.info("onnxruntime rejected free dimensions of %d: %s", free_dim, first_line(error))
                    continue
                if nudge:
                    self.noise = nudged_runs(session, constants, base_dir, self._draws().feeds, self.seed)
                return runs
            raise RuntimeUnavailableError(_cannot_run(failure)) from failure
        finally:
            session.close()

    def _free_dims(self) -> tuple[int, ...]:
        retry = any(
            spec.dims
            and spec.name not in self.shapes
            and spec.name not in self.inputs
            and any(d is None for d in spec.dims[1:])
            for spec in self.specs
        )
        return FREE_OTHER_DIMS if retry else FREE_OTHER_DIMS[:1]

    def _needs_two_runs(self) -> bool:
        """A scalar input, or a site an If decides, gets its two draws in two runs."""
        return any(site.branch is not None for site in self.sites) or any(
            spec.dims is not None and len(spec.dims) == 0 for spec in self.specs
        )

    def _run(self, source: Source, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        session = source.session(self.extra_outputs)
        try:
            return [session.run(feed) for feed in feeds]
        finally:
            session.close()

    def _float32_reference(self) -> list[dict[str, np.ndarray]] | None:
        try:
            widened = convert_float_type(self.source.with_data(), HALF_TYPES, TensorProto.FLOAT)
            return self._run(Source(widened, None), [_as_float32(feed) for feed in self._draws().feeds])
        except Exception as error:  # noqa: BLE001 - without it the half-precision values are compared directly
            logger.info("no float32 reference for the half-precision check: %s", first_line(error))
            return None

    def _prepare_stand_in(self) -> bool:
        """Convert the original to float32 when onnxruntime lacks kernels for its float type; False if that fails."""
        source_types, table = _float32_stand_in(self.source.proto)
        if source_types is None:
            return False
        try:
            converted = convert_float_type(self.source.with_data(), source_types, TensorProto.FLOAT)
            self.inputs = _as_float32(self.inputs)
            self.specs = input_specs(converted)
            self.expected = self._run_with_retries(converted, None)
        except Exception as error:  # noqa: BLE001 - fall back to "cannot run"
            logger.info("the float32 stand-in check failed too: %s", first_line(error))
            return False
        self.stand_in = (source_types, table)
        return True

    # --- judging -----------------------------------------------------------------------------------

    def _result(self, actual: list[dict[str, np.ndarray]]) -> CheckResult:
        outputs = [self._compare(name, actual) for name in self.outputs]
        sites = [self._compare(site.name, actual, site) for site in self.sites]
        evidence = (
            [c for c in sites if c.informative and c.exercised] if sites else [c for c in outputs if c.informative]
        )
        verdict: Verdict
        if not all(c.passed for c in [*outputs, *sites]):
            verdict = "failed"
        else:
            verdict = "passed" if evidence else "inconclusive"
        return CheckResult(verdict, outputs, sites, self._shapes(), _STAND_IN_NOTE if self.stand_in else None)

    def _compare(self, name: str, actual: list[dict[str, np.ndarray]], site: Site | None = None) -> OutputCheck:
        table = self.stand_in[1] if self.stand_in is not None else None
        inherits = self.half if name in self.half_downstream else None
        runs = [
            compare_value(
                name,
                expected[name],
                got[name],
                self.tolerance,
                self.reference[index][name] if self.reference else None,
                table,
                inherits,
                self.noise[index][name] if self.noise else None,
            )
            for index, (expected, got) in enumerate(zip(self.expected, actual, strict=True))
        ]
        worst = max(runs, key=lambda c: (not c.passed, c.max_rel_err))
        exercised = True if site is None or site.branch is None else self._exercised(site.branch)
        evidence = exercised and self._informative(name)
        note = worst.note or (_STAND_IN_NOTE if self.stand_in is not None else None)
        if site is not None and not evidence and not worst.passed:  # no evidence either way: inconclusive
            worst, note = worst.with_context(passed=True), f"no evidence, not judged ({note or 'differs'})"
        return worst.with_context(informative=evidence, exercised=exercised, bn=site.bn if site else None, note=note)

    def _draws(self) -> Draws:
        if self.draws is None:
            raise AssertionError("the original has not run yet")
        return self.draws

    def _informative(self, name: str) -> bool:
        values = [run[name] for run in self.expected]
        if not self._draws().batched:
            return informative(values[0], values[1] if len(values) > 1 else None)
        value = values[0]
        if value.ndim == 0 or value.shape[0] % 2:  # no batch axis to split into the two draws
            return informative(value) and not _constant(value)
        half = value.shape[0] // 2
        return informative(value[:half], value[half:])

    def _exercised(self, branch: tuple[str, bool]) -> bool:
        condition, taken_when = branch
        return any(
            bool(np.asarray(run[condition]).reshape(-1)[0]) == taken_when
            for run in self.expected
            if condition in run and np.asarray(run[condition]).size
        )

    def _unrunnable(self, note: str) -> CheckResult:
        failed = [OutputCheck(name, float("inf"), float("inf"), 0.0, False, note) for name in self.outputs]
        return CheckResult("failed", failed, [], self._shapes())

    def _shapes(self) -> dict[str, list[int]]:
        if not self.draws:
            return {}
        return {name: list(array.shape) for name, array in self._draws().feeds[0].items()}


_STAND_IN_NOTE = "both models run converted to float32 (onnxruntime lacks kernels for the original's type)"


def _cannot_run(error: BaseException | None) -> str:
    return (
        f"onnxruntime cannot run the original model ({first_line(error) if error else 'no reason given'}); "
        "use --no-check to write the folded model without verification"
    )


def _constant(value: np.ndarray) -> bool:
    return value.size > 1 and bool(np.all(value == value.reshape(-1)[0]))


def _float32_stand_in(model: onnx.ModelProto):
    """Which float types to convert to float32, and the tolerances (by the original's float type)."""
    if has_half_precision(model):
        half = "bfloat16" if has_float_type(model, TensorProto.BFLOAT16) else "float16"
        return HALF_TYPES, {"float32": DIRECT_HALF_TOLERANCES[half]}
    if has_float_type(model, TensorProto.DOUBLE):
        return frozenset({TensorProto.DOUBLE}), {"float32": DEFAULT_TOLERANCES["float32"]}
    return None, None


def _as_float32(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        name: (np.asarray(a).astype(np.float32) if np.asarray(a).dtype.kind == "f" else a) for name, a in feeds.items()
    }
