"""Never costlier on the runtime's own terms: what onnxruntime's optimizer makes of the original and the folded model.

onnxruntime (ORT_ENABLE_EXTENDED, `optimized_model_filepath`) optimizes both models. The
folded one must come out with no more nodes than the original, and with no fewer of each
op that onnxruntime's fusions created: one of its own domain that its CPU fusions make (Gelu,
FastGelu, QuickGelu, FusedConv, FusedMatMul, SimplifiedLayerNormalization, ...), or a default-domain op a fusion
makes (LayerNormalization, Gemm from MatMul + Add) that the optimized original holds more
of than the original itself. Counting nodes alone misses a lost fusion whose pieces
another fold happens to remove. A fused op that a larger fusion took in counts as that
one's kind (FAMILY: a Gemm that became a FusedGemm with its Relu is not lost, nor a MatMul
that onnxruntime fused with a Transpose and now fuses with its new bias Add into a Gemm).
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort

FUSED_DEFAULT_DOMAIN = frozenset({"LayerNormalization", "Gemm"})
# ops of onnxruntime's own domain that its CPU fusions make
_FUSION_MADE = frozenset(
    {"Gelu", "FastGelu", "QuickGelu", "FusedConv", "FusedMatMul", "SimplifiedLayerNormalization", "BiasSoftmax"}
)
FAMILY = {
    "FusedGemm": "Gemm",
    "FusedMatMul": "Gemm",  # one matrix-multiply kernel with something fused in (α, a transpose; Gemm: a bias)
    "SkipLayerNormalization": "LayerNormalization",
    "SkipSimplifiedLayerNormalization": "SimplifiedLayerNormalization",
    "BiasGelu": "Gelu",
}


def optimized_ops(model: onnx.ModelProto) -> Counter | None:
    """Op type (by FAMILY) -> count after onnxruntime's EXTENDED optimization; None when onnxruntime cannot load
    it. Only onnxruntime's own domain and the default domain occur in these models."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.log_severity_level = 4
    with tempfile.TemporaryDirectory() as folder:
        options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception:  # noqa: BLE001 - a model onnxruntime has no kernels for: nothing to compare
            return None
        optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return Counter(FAMILY.get(node.op_type, node.op_type) for node in optimized.graph.node)


def fused_ops(model: onnx.ModelProto, optimized: Counter) -> dict[str, int]:
    """The kinds of op onnxruntime's fusions created in `optimized` (by FAMILY), with their counts."""
    before = Counter(node.op_type for node in model.graph.node)
    return {
        op: count
        for op, count in optimized.items()
        if op in _FUSION_MADE or (op in FUSED_DEFAULT_DOMAIN and count > before[op])
    }


def assert_runtime_not_costlier(original: onnx.ModelProto, folded: onnx.ModelProto) -> None:
    """After onnxruntime's own optimization: no more nodes, and no fused op lost (skipped when onnxruntime cannot
    load the original)."""
    before = optimized_ops(original)
    if before is None:
        return
    after = optimized_ops(folded)
    assert after is not None, "onnxruntime loads the original but not the folded model"
    assert sum(after.values()) <= sum(before.values()), (sum(before.values()), sum(after.values()))
    lost = {op: (count, after[op]) for op, count in fused_ops(original, before).items() if after[op] < count}
    assert not lost, f"fused ops lost (before, after): {lost}"
