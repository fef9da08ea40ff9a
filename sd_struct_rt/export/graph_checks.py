"""Static checks of exported graphs, run before handing them to TensorRT.

* ``tensorrt_problems`` / ``check_tensorrt_support``: every node is an op that TensorRT 10's
  ONNX parser imports, within its documented restrictions on attributes and constant inputs,
  with an opset and tensor types it accepts. Failing here names the node, which the parser's
  own error at engine-build time often does not.
* ``check_fusable_cross_attention``: in ``values`` mode every cross-attention of the UNet is
  ``MatMul -> Softmax -> MatMul`` with nothing in between, the precondition of TensorRT's
  fused attention kernel (SPEC section 4, performance consequence).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import onnx
from onnx import numpy_helper

# Source: onnx/onnx-tensorrt, branch 10.1-GA (tag release/10.1-GA), docs/operators.md, its
# "Operator Support Matrix" (rows marked Y) and the opset range 9..20 it states; one restriction
# the table omits (Clip bounds must be initializers) is from that branch's onnxOpImporters.cpp.
# Later 10.x parsers add ops and opsets, so a graph that passes here passes there. Restrictions
# that depend on tensor shapes (EyeLike and Hardmax static dims, GridSample 4-D input, If branch
# ranks, Loop scan lengths) are left to the parser, which reports them when the engine is built.
TENSORRT_VERSION = "10.1"
TENSORRT_OPSETS = range(9, 21)
# The UNet input whose positions are the cross-attention keys (SPEC 5): its length is the model's.
TEXT_INPUT = "encoder_hidden_states"

_P = onnx.TensorProto
_TENSOR_TYPES = {_P.FLOAT, _P.FLOAT16, _P.BFLOAT16, _P.DOUBLE, _P.INT32, _P.INT64, _P.INT8, _P.INT4,
                 _P.FLOAT8E4M3FN, _P.BOOL}
_IO_ONLY_TENSOR_TYPES = {_P.UINT8}

_UNRESTRICTED_OPS = frozenset("""
    Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh BatchNormalization Cast CastLike Ceil
    Celu Concat ConstantOfShape Conv ConvTranspose Cos Cosh DepthToSpace Div Einsum Elu Equal Erf Exp
    Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
    GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization HardSigmoid
    HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN LRN LeakyRelu Less
    LessOrEqual Log LogSoftmax Loop LpNormalization MatMul Max Mean MeanVarianceNormalization Min Mish
    Mod Mul Neg NonMaxSuppression NonZero Not Or PRelu ParametricSoftplus Pow RandomNormal
    RandomNormalLike RandomUniform RandomUniformLike Range Reciprocal Relu Reshape ReverseSequence
    RoiAlign Round ScaledTanh Scan Scatter ScatterElements Selu Shape Shrink Sigmoid Sign Sin Sinh Size
    Softmax Softplus Softsign SpaceToDepth Split Sqrt Sub Sum Tan Tanh ThresholdedRelu Tile Transpose
    Trilu Upsample Where Xor
""".split())


class GraphCheckError(ValueError):
    """A graph that TensorRT would reject or could not optimise as intended."""


@dataclass
class _Scope:
    """What rules may ask about the graph around a node."""

    constants: dict[str, onnx.TensorProto | None]  # name -> inline value, or None if stored externally
    used: set[str]  # names consumed by a node or returned by the graph

    def constant_value(self, name: str) -> np.ndarray | None:
        tensor = self.constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)


_Rule = Callable[[onnx.NodeProto, _Scope], Iterable[str]]


def _attributes(node: onnx.NodeProto) -> dict:
    return {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}


def _constant_input(index: int, what: str) -> _Rule:
    def rule(node, scope):
        if len(node.input) > index and node.input[index] and node.input[index] not in scope.constants:
            yield f"{what} (input {index}) must be an initializer"
    return rule


def _constant_equal(index: int, what: str, expected: float | bool) -> _Rule:
    def rule(node, scope):
        if len(node.input) <= index or not node.input[index]:
            return
        if node.input[index] not in scope.constants:
            yield f"{what} (input {index}) must be an initializer"
            return
        value = scope.constant_value(node.input[index])
        if value is not None and not np.all(value == expected):
            yield f"{what} must be {expected}"
    return rule


def _attribute_in(name: str, allowed: set, default) -> _Rule:
    def rule(node, scope):
        value = _attributes(node).get(name, default)
        value = value.decode() if isinstance(value, bytes) else value
        if value not in allowed:
            yield f"attribute {name}={value!r} is not one of {sorted(allowed)}"
    return rule


def _unit_dilations(node, scope):
    if any(step != 1 for step in _attributes(node).get("dilations", [])):
        yield "dilations must be empty or all ones"


def _pooling_2d_or_3d(node, scope):
    if len(_attributes(node).get("kernel_shape", [])) not in (2, 3):
        yield "only 2-D and 3-D pooling is supported"


def _only_first_output_used(node, scope):
    if any(name and name in scope.used for name in node.output[1:]):
        yield "only the first output is supported"


def _no_string_or_sparse_constant(node, scope):
    unsupported = {"sparse_value", "value_string", "value_strings"} & set(_attributes(node))
    if unsupported:
        yield f"attribute {sorted(unsupported)[0]} is not supported"


def _same_activations_both_directions(node, scope):
    attributes = _attributes(node)
    activations = attributes.get("activations", [])
    if attributes.get("direction", b"forward") == b"bidirectional" and activations:
        half = len(activations) // 2
        if activations[:half] != activations[half:]:
            yield "a bidirectional layer needs the same activations in both directions"


def _symmetric_pads(node, scope):
    pads = _attributes(node).get("pads", [])
    if pads[:len(pads) // 2] != pads[len(pads) // 2:]:
        yield "pads must be the same at the beginning and end of each axis"


def _top_k(node, scope):
    if _attributes(node).get("sorted", 1) != 1:
        yield "attribute sorted must be 1"
    if node.input[1] not in scope.constants:
        yield "K (input 1) must be an initializer"
        return
    k = scope.constant_value(node.input[1])
    if k is not None and int(k.max()) >= 3840:
        yield f"K={int(k.max())} must be less than 3840"


_REDUCTIONS = ("ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
               "ReduceSum ReduceSumSquare").split()

_RESTRICTED_OPS: dict[str, tuple[_Rule, ...]] = {
    "AveragePool": (_pooling_2d_or_3d, _unit_dilations),
    "MaxPool": (_pooling_2d_or_3d, _unit_dilations, _only_first_output_used),
    "LpPool": (_unit_dilations,),
    "Clip": (_constant_input(1, "min"), _constant_input(2, "max")),
    "Constant": (_no_string_or_sparse_constant,),
    "CumSum": (_constant_input(1, "axis"),),
    "DeformConv": (_symmetric_pads,),
    "DequantizeLinear": (_constant_equal(2, "x_zero_point", 0),),
    "QuantizeLinear": (_constant_equal(2, "y_zero_point", 0),),
    "Dropout": (_constant_equal(2, "training_mode", False),),
    "LayerNormalization": (_only_first_output_used,),
    "GRU": (_same_activations_both_directions,),
    "RNN": (_same_activations_both_directions,),
    "LSTM": (_same_activations_both_directions, _attribute_in("input_forget", {0}, 0),
             _attribute_in("layout", {0}, 0)),
    "OneHot": (_constant_input(1, "depth"),),
    "Pad": (_constant_input(3, "axes"),),
    **{reduction: (_constant_input(1, "axes"),) for reduction in _REDUCTIONS},
    "Resize": (
        _attribute_in("mode", {"nearest", "linear"}, "nearest"),
        _attribute_in("coordinate_transformation_mode",
                      {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"},
                      "half_pixel"),
        _attribute_in("nearest_mode", {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"},
                      "round_prefer_floor"),
        _attribute_in("keep_aspect_ratio_policy", {"stretch"}, "stretch"),
        _attribute_in("antialias", {0}, 0),
    ),
    "ScatterND": (_attribute_in("reduction", {"none"}, "none"),),
    "Slice": (_constant_input(3, "axes"),),
    "Squeeze": (_constant_input(1, "axes"),),
    "Unsqueeze": (_constant_input(1, "axes"),),
    "TopK": (_top_k,),
}

TENSORRT_OPS = frozenset(_UNRESTRICTED_OPS | _RESTRICTED_OPS.keys())


def _load(model: onnx.ModelProto | Path | str) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    return onnx.load(str(model), load_external_data=False)


def tensorrt_problems(model: onnx.ModelProto | Path | str) -> list[str]:
    """Everything in ``model`` that TensorRT's ONNX parser would reject, one line each."""
    model = _load(model)
    problems = []
    opsets = {entry.domain or "ai.onnx": entry.version for entry in model.opset_import}
    if opsets.get("ai.onnx") not in TENSORRT_OPSETS:
        problems.append(f"opset {opsets.get('ai.onnx')} is outside TensorRT {TENSORRT_VERSION}'s "
                        f"{TENSORRT_OPSETS.start}..{TENSORRT_OPSETS.stop - 1}")
    problems += _graph_problems(model.graph, {})
    return problems


def check_tensorrt_support(model: onnx.ModelProto | Path | str) -> None:
    """Raise ``GraphCheckError`` listing every problem ``tensorrt_problems`` finds."""
    problems = tensorrt_problems(model)
    if problems:
        raise GraphCheckError(f"{len(problems)} TensorRT {TENSORRT_VERSION} incompatibilities: "
                              + "; ".join(problems))


def _graph_problems(graph: onnx.GraphProto, outer_constants: dict) -> list[str]:
    constants = dict(outer_constants)
    for tensor in graph.initializer:
        constants[tensor.name] = None if tensor.data_location == _P.EXTERNAL else tensor
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = _attributes(node).get("value")
            constants[node.output[0]] = value if isinstance(value, onnx.TensorProto) else None
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    scope = _Scope(constants, used)

    problems = []
    for node in graph.node:
        label = f"node {node.name or node.output[0]!r} ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{label}: custom op of domain {node.domain!r} needs a TensorRT plugin")
        elif node.op_type not in TENSORRT_OPS:
            problems.append(f"{label}: not supported by TensorRT {TENSORRT_VERSION}")
        else:
            problems += [f"{label}: {problem}" for rule in _RESTRICTED_OPS.get(node.op_type, ())
                         for problem in rule(node, scope)]
        for attribute in node.attribute:
            for subgraph in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else attribute.graphs):
                problems += _graph_problems(subgraph, constants)
    problems += _type_problems(graph)
    return problems


def _type_problems(graph: onnx.GraphProto) -> list[str]:
    boundary = {value.name for value in [*graph.input, *graph.output]}
    typed = [(value.name, value.type.tensor_type.elem_type)
             for value in [*graph.input, *graph.output, *graph.value_info] if value.type.HasField("tensor_type")]
    typed += [(tensor.name, tensor.data_type) for tensor in graph.initializer]
    problems = []
    for name, element_type in typed:
        allowed = _TENSOR_TYPES | (_IO_ONLY_TENSOR_TYPES if name in boundary else set())
        if element_type != _P.UNDEFINED and element_type not in allowed:
            problems.append(f"tensor {name!r}: type {_P.DataType.Name(element_type)} is not supported")
    return problems


def _text_length(graph: onnx.GraphProto) -> int | None:
    """The number of text positions the UNet graph reads (77 for CLIP), from its own text input."""
    for value in graph.input:
        if value.name == TEXT_INPUT and len(value.type.tensor_type.shape.dim) == 3:
            return value.type.tensor_type.shape.dim[1].dim_value or None
    return None


def _cross_attention_softmaxes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    key_length = _text_length(graph)
    key_lengths = {value.name: value.type.tensor_type.shape.dim[-1].dim_value
                   for value in graph.value_info if value.type.tensor_type.shape.dim}
    return [node for node in graph.node if node.op_type == "Softmax"
            and ("attn2" in node.name or (key_length is not None and key_lengths.get(node.output[0]) == key_length))]


def check_fusable_cross_attention(model: onnx.ModelProto | Path | str, expected: int | None = None) -> int:
    """Check that every cross-attention of a UNet graph is ``MatMul -> Softmax -> MatMul``.

    Cross-attention is a Softmax in an ``attn2`` module or over as many keys as the graph's
    ``encoder_hidden_states`` has text positions. Returns how many there
    are; raises ``GraphCheckError`` if one has anything between its MatMuls, if there are none,
    or if there are not ``expected`` of them.
    """
    graph = _load(model).graph
    producers = {output: node for node in graph.node for output in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in set(node.input):
            consumers[name].append(node)
    graph_outputs = {output.name for output in graph.output}

    softmaxes = _cross_attention_softmaxes(graph)
    problems = []
    for softmax in softmaxes:
        label = softmax.name or softmax.output[0]
        producer = producers.get(softmax.input[0])
        users = consumers[softmax.output[0]]
        if producer is None or producer.op_type != "MatMul":
            problems.append(f"{label}: input comes from "
                            f"{producer.op_type if producer else 'a graph input'}, not a MatMul")
        if (len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != softmax.output[0]
                or softmax.output[0] in graph_outputs):
            found = ", ".join(user.op_type for user in users) or "nothing"
            problems.append(f"{label}: output feeds {found}, not only the left side of one MatMul")
    if problems:
        raise GraphCheckError("cross-attention TensorRT cannot fuse: " + "; ".join(problems))
    if not softmaxes:
        raise GraphCheckError(f"no cross-attention found (no Softmax in attn2 or over {_text_length(graph)} keys)")
    if expected is not None and len(softmaxes) != expected:
        raise GraphCheckError(f"found {len(softmaxes)} cross-attentions, expected {expected}")
    return len(softmaxes)
