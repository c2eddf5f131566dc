"""Test helper: an ONNX graph whose output gets NaN or inf added, what an fp16 overflow hands the loop."""

from __future__ import annotations

from pathlib import Path


def poisoned(graph: Path, out: Path, value: float) -> Path:
    """`graph` with `value` added to its first output, saved to `out` (may be `graph` itself)."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(graph))
    output = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [f"{output}.clean" if o == output else o for o in node.output]
    model.graph.initializer.append(helper.make_tensor("poison", TensorProto.FLOAT, [], [value]))
    model.graph.node.append(helper.make_node("Add", [f"{output}.clean", "poison"], [output]))
    onnx.save(model, str(out))
    return out
