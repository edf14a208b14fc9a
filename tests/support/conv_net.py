"""A standard small conv net built in code (no torch, nothing downloaded).

MobileNet-style: a strided Conv stem, a depthwise Conv (group = C), a grouped 1x1 Conv
(group = 4), BatchNormalization after each, Relu, a residual Add, GlobalAveragePool,
Flatten and a Gemm head, with two outputs: ``logits`` [N, classes] and ``embedding``
[N, C]. Weights are deterministic random (He-scaled) so activations keep their spread.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INPUT = "image"
OUTPUTS = ("logits", "embedding")


def build_conv_net(
    *, seed: int = 0, channels: int = 16, classes: int = 10, size: int = 32
) -> bytes:
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(value.astype(np.float32), name))
        return name

    def weight(name: str, shape: list[int]) -> str:
        fan_in = int(np.prod(shape[1:]))
        return const(name, rng.standard_normal(shape) * np.sqrt(2.0 / fan_in))

    def batch_norm(x: str, out: str, c: int) -> None:
        nodes.append(
            helper.make_node(
                "BatchNormalization",
                [
                    x,
                    const(f"{out}_scale", 1 + 0.1 * rng.standard_normal(c)),
                    const(f"{out}_bias", 0.1 * rng.standard_normal(c)),
                    const(f"{out}_mean", 0.1 * rng.standard_normal(c)),
                    const(f"{out}_var", rng.uniform(0.5, 1.5, c)),
                ],
                [out],
                epsilon=1e-5,
            )
        )

    c = channels
    nodes.append(
        helper.make_node(
            "Conv",
            [INPUT, weight("stem_w", [c, 3, 3, 3]), const("stem_b", 0.05 * rng.standard_normal(c))],
            ["stem"],
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[2, 2],
        )
    )
    batch_norm("stem", "stem_bn", c)
    nodes.append(helper.make_node("Relu", ["stem_bn"], ["a0"]))
    nodes.append(
        helper.make_node(
            "Conv", ["a0", weight("dw_w", [c, 1, 3, 3])], ["dw"], group=c, pads=[1, 1, 1, 1]
        )
    )
    batch_norm("dw", "dw_bn", c)
    nodes.append(helper.make_node("Relu", ["dw_bn"], ["a1"]))
    nodes.append(
        helper.make_node(
            "Conv",
            ["a1", weight("gc_w", [c, c // 4, 1, 1]), const("gc_b", 0.05 * rng.standard_normal(c))],
            ["gc"],
            group=4,
        )
    )
    batch_norm("gc", "gc_bn", c)
    nodes.append(helper.make_node("Add", ["gc_bn", "a0"], ["residual"]))
    nodes.append(helper.make_node("Relu", ["residual"], ["a2"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["a2"], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["embedding"], axis=1))
    nodes.append(
        helper.make_node(
            "Gemm",
            [
                "embedding",
                weight("fc_w", [classes, c]),
                const("fc_b", 0.05 * rng.standard_normal(classes)),
            ],
            ["logits"],
            transB=1,
        )
    )
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", 3, size, size])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes]),
            helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", c]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def conv_net_inputs(n: int, *, seed: int = 1, size: int = 32) -> np.ndarray:
    """Image-like float32 inputs [n, 3, size, size]: smooth patterns plus noise."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 3, size, size)).astype(np.float32)
