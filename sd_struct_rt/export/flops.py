"""Multiply-add work of an exported graph at given inputs, read off the graph's own nodes.

The graph runs once in ONNX Runtime with graph optimisations off (so its nodes are the exported
ones, not fused kernels) and profiling on; the profile records every node's input and output
shapes. Each MatMul, Gemm and Conv then counts 2 FLOPs per multiply-add. Everything else
(normalisations, softmax, element-wise ops) is memory-bound and a few percent of a UNet's
arithmetic: it is left out.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

COUNTED_OPS = ("MatMul", "Gemm", "Conv")


@dataclass(frozen=True)
class FlopCount:
    total: int
    by_op: dict[str, int]


def graph_flops(graph: Path | str, feeds: Mapping[str, np.ndarray]) -> FlopCount:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as scratch:
        options.profile_file_prefix = str(Path(scratch) / "profile")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        session.run(None, dict(feeds))
        events = json.loads(Path(session.end_profiling()).read_text())
    by_op = dict.fromkeys(COUNTED_OPS, 0)
    for event in events:
        arguments = event.get("args", {})
        operator = arguments.get("op_name")
        if event.get("cat") == "Node" and operator in by_op and event["name"].endswith("_kernel_time"):
            by_op[operator] += _node_flops(operator, _shapes(arguments["input_type_shape"]),
                                           _shapes(arguments["output_type_shape"]))
    return FlopCount(sum(by_op.values()), by_op)


def _shapes(described: list[dict]) -> list[list[int]]:
    return [next(iter(entry.values())) for entry in described]


def _node_flops(operator: str, inputs: list[list[int]], outputs: list[list[int]]) -> int:
    output = outputs[0]
    if operator == "Conv":
        # weight [C_out, C_in / groups, k...]: each output element takes C_in/groups * prod(k) multiply-adds
        return 2 * math.prod(output) * math.prod(inputs[1][1:])
    if operator == "Gemm":
        # C [M, N] = A B, A holding M * K values however it is transposed
        return 2 * math.prod(output) * (math.prod(inputs[0]) // output[0])
    return 2 * math.prod(output) * inputs[0][-1]  # MatMul: [..., M, K] x [..., K, N]
