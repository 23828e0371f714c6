"""A tiny u2net-compatible ONNX model, built in memory: the real rembg code path runs on it without
any downloaded weights.

rembg's ``u2net_custom`` session feeds the graph's first input a ``(1, 3, 320, 320)`` float32 tensor
(the image resized to 320x320, divided by its maximum, then ImageNet-normalised per channel), reads
``outputs[0][:, 0, :, :]``, min-max normalises it and resizes it back to the image as the alpha
channel. This graph answers the mean over the three channels: a "saliency" that is simply
brightness, so a test knows exactly which pixels the model keeps (bright) and drops (dark).

``clip`` bounds that mean (in normalised units; a grey level p in [0, 1] maps to about
4.44 * p - 2.04): everything darker than the low bound becomes exactly 0 and everything brighter
than the high bound exactly 255, so a cutout has crisp, fully opaque and fully clear areas.
"""

from __future__ import annotations

from pathlib import Path

INPUT = "input.1"  # the name u2net.onnx uses; rembg reads it from the graph either way
OUTPUT = "d0"


def build_tiny_u2net(path: Path, clip: tuple[float, float] | None = None) -> Path:
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("ReduceMean", [INPUT], ["mean" if clip else OUTPUT], axes=[1], keepdims=1)]
    initializers = []
    if clip is not None:
        initializers = [
            helper.make_tensor("low", TensorProto.FLOAT, [], [clip[0]]),
            helper.make_tensor("high", TensorProto.FLOAT, [], [clip[1]]),
        ]
        nodes.append(helper.make_node("Clip", ["mean", "low", "high"], [OUTPUT]))
    graph = helper.make_graph(
        nodes,
        "tiny_u2net_brightness",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="epox-tests")
    model.ir_version = 8  # old enough for any onnxruntime that reads opset 13
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path
