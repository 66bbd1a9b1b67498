"""A deliberately broken candidate: a version's ONNX graph made to fail on some inputs.

The demo publishes one to show a canary ended by its guardrail; tests/test_canary.py
uses the same function for its broken version.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper


def broken_artifact(
    artifact: bytes, feature: int = 5, above: float = 1000.0, output: str = "probabilities"
) -> bytes:
    """The graph of ``artifact`` failing (onnxruntime raises) on every row whose
    ``feature`` (a column of the input) is above ``above``, and otherwise answering exactly
    as before: an out-of-range Gather index, added to the ``output`` probabilities times
    zero."""
    model = onnx.load_from_string(artifact)
    graph = model.graph
    source = next(o for o in graph.output if o.name == output)
    raw = "probabilities_unbroken"
    for node in graph.node:
        node.output[:] = [raw if name == source.name else name for name in node.output]
    graph.initializer.extend(
        [
            helper.make_tensor("broken_column", TensorProto.INT64, [1], [feature]),
            helper.make_tensor("broken_above", TensorProto.FLOAT, [], [above]),
            helper.make_tensor("broken_far", TensorProto.INT64, [], [1000]),
            helper.make_tensor("broken_data", TensorProto.FLOAT, [1], [1.0]),
            helper.make_tensor("broken_zero", TensorProto.FLOAT, [], [0.0]),
        ]
    )
    x = graph.input[0].name
    graph.node.extend(
        [
            # Gather along axis 1, not Slice: Slice's inputs form needs opset 10, and some
            # families' graphs (skl2onnx) declare an older one. Every op here exists, with
            # this signature, from opset 9 on.
            helper.make_node("Gather", [x, "broken_column"], ["b_col"], axis=1),
            helper.make_node("Greater", ["b_col", "broken_above"], ["b_high"]),
            helper.make_node("Cast", ["b_high"], ["b_flag"], to=TensorProto.INT64),
            helper.make_node("Mul", ["b_flag", "broken_far"], ["b_index"]),
            helper.make_node("Gather", ["broken_data", "b_index"], ["b_value"]),
            helper.make_node("Mul", ["b_value", "broken_zero"], ["b_nothing"]),
            helper.make_node("Add", [raw, "b_nothing"], [source.name]),
        ]
    )
    return model.SerializeToString()
