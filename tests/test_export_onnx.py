"""ONNX export of the tiny model: ONNX Runtime matches the torch reference (SPEC 7), and the
graphs pass the TensorRT op-support and fused-attention checks."""

from __future__ import annotations

import copy
import sys

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sd_struct_rt.backends.onnxruntime_backend import OrtNetwork
from sd_struct_rt.backends.torch_backend import TorchNetwork
from sd_struct_rt.errors import UserError
from sd_struct_rt.export import graph_checks, onnx_export
from sd_struct_rt.families.sd1 import FAMILY

from tests.conftest import relative_error

ORT_TOLERANCE = 1e-4
CROSS_ATTENTIONS = 16
# (levels per row, latent height, latent width): one plain row; rows with different numbers of
# levels, so padded levels sit behind the mask; non-square latents. None is the traced shape
# (2 rows, 3 levels, 16x24), so a size frozen by tracing would show.
UNET_CASES = [([1], 32, 32), ([1, 3, 2, 4], 24, 40), ([5, 2], 8, 16)]


def contract(tiny, component, mode="values"):
    return FAMILY.networks(tiny.facts, mode)[component]


def reference(tiny, component, mode="values"):
    """The torch network of a component, on a copy of the UNet (the shared tiny keeps its processors)."""
    model = copy.copy(tiny)
    model.unet = copy.deepcopy(tiny.unet)
    module = FAMILY.torch_modules(model, mode)[component]
    return TorchNetwork(module, contract(tiny, component, mode), torch.device("cpu"), torch.float32)


def only(outputs):
    (output,) = outputs.values()
    return output


@pytest.fixture(scope="module")
def graphs(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    exported = {mode: onnx_export.export_graphs(tiny, FAMILY, mode, folder / mode) for mode in ("values", "keys")}
    return {"values": exported["values"]["unet"], "keys": exported["keys"]["unet"],
            "text_encoder": exported["values"]["text_encoder"], "vae_decoder": exported["values"]["vae_decoder"]}


def unet_inputs(unet_contract, levels_per_row: list[int], height: int, width: int, generator: torch.Generator):
    """Named inputs with the given level counts; padded levels hold random finite values too."""
    sizes = {"N": len(levels_per_row), "L": max(levels_per_row), "h": height, "w": width}
    inputs = unet_contract.sample_inputs(generator, sizes)
    inputs["level_mask"] = (torch.arange(sizes["L"])[None, :] < torch.tensor(levels_per_row)[:, None]).float()
    return inputs


@pytest.mark.parametrize("mode", ["values", "keys"])
def test_unet_matches_torch_reference(tiny, graphs, mode, fresh_generator):
    onnx_unet = OrtNetwork(graphs[mode], contract(tiny, "unet", mode), device="cpu")
    expected_network = reference(tiny, "unet", mode)
    for levels_per_row, height, width in UNET_CASES:
        inputs = unet_inputs(onnx_unet.contract, levels_per_row, height, width, fresh_generator)
        noise_pred, expected = only(onnx_unet(**inputs)), only(expected_network(**inputs))
        assert noise_pred.shape == expected.shape == (len(levels_per_row), 4, height, width)
        error = relative_error(noise_pred, expected)
        assert error <= ORT_TOLERANCE, f"{mode} {levels_per_row} {height}x{width}: relative error {error:.2e}"


def test_text_encoder_matches_torch_reference(tiny, graphs, fresh_generator):
    encoder = OrtNetwork(graphs["text_encoder"], contract(tiny, "text_encoder"), device="cpu")
    expected_network = reference(tiny, "text_encoder")
    for prompts in (1, 3):
        inputs = encoder.contract.sample_inputs(fresh_generator, {"M": prompts})
        embeddings = only(encoder(**inputs))
        assert embeddings.shape == (prompts, 77, tiny.text_encoder.config.hidden_size)
        assert relative_error(embeddings, only(expected_network(**inputs))) <= ORT_TOLERANCE


def test_vae_decoder_matches_torch_reference(tiny, graphs, fresh_generator):
    decoder = OrtNetwork(graphs["vae_decoder"], contract(tiny, "vae_decoder"), device="cpu")
    expected_network = reference(tiny, "vae_decoder")
    for rows, height, width in ((1, 32, 32), (2, 24, 40)):
        inputs = decoder.contract.sample_inputs(fresh_generator, {"N": rows, "h": height, "w": width})
        images = only(decoder(**inputs))
        assert images.shape == (rows, 3, 8 * height, 8 * width)
        assert 0 <= images.min() and images.max() <= 1
        assert relative_error(images, only(expected_network(**inputs))) <= ORT_TOLERANCE


def _signature(values) -> list[tuple]:
    return [(value.name, TensorProto.DataType.Name(value.type.tensor_type.elem_type),
             [dim.dim_param or dim.dim_value for dim in value.type.tensor_type.shape.dim]) for value in values]


def _unet_inputs_signature(level_input: str, d: int) -> list[tuple]:
    return [("sample", "FLOAT", ["N", 4, "h", "w"]), ("timestep", "FLOAT", ["N"]),
            ("encoder_hidden_states", "FLOAT", ["N", 77, d]), (level_input, "FLOAT", ["N", "L", 77, d]),
            ("level_mask", "FLOAT", ["N", "L"])]


def test_graph_inputs_and_outputs_follow_the_engine_contract(tiny, graphs):
    d = tiny.unet.config.cross_attention_dim
    noise_pred = [("noise_pred", "FLOAT", ["N", 4, "h", "w"])]
    expected = {
        "values": (_unet_inputs_signature("value_states", d), noise_pred),
        "keys": (_unet_inputs_signature("key_states", d), noise_pred),
        "text_encoder": ([("input_ids", "INT32", ["M", 77])], [("text_embeddings", "FLOAT", ["M", 77, d])]),
        "vae_decoder": ([("latent", "FLOAT", ["N", 4, "h", "w"])], [("images", "FLOAT", ["N", 3, "8h", "8w"])]),
    }
    for name, (inputs, outputs) in expected.items():
        graph = onnx.load(str(graphs[name]), load_external_data=False).graph
        assert (_signature(graph.input), _signature(graph.output)) == (inputs, outputs), name


def test_graphs_are_saved_with_external_data_and_nothing_else(graphs):
    folder = graphs["values"].parent
    files = [path for graph in (graphs["values"], graphs["text_encoder"], graphs["vae_decoder"])
             for path in onnx_export.graph_files(graph)]
    assert {path.name for path in files} == {f"{name}.onnx{suffix}" for name in ("unet", "text_encoder", "vae_decoder")
                                              for suffix in ("", ".data")}
    assert sorted(path.name for path in folder.iterdir()) == sorted(path.name for path in files)


@pytest.mark.parametrize("name", ["values", "keys", "text_encoder", "vae_decoder"])
def test_exported_graphs_pass_tensorrt_op_check(graphs, name):
    graph_checks.check_tensorrt_support(graphs[name])
    model = onnx.load(str(graphs[name]), load_external_data=False)
    default_opsets = {entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")}
    assert default_opsets == {onnx_export.OPSET}
    layer_norms = [node for node in model.graph.node if node.op_type == "LayerNormalization"]
    assert layer_norms or name == "vae_decoder", "LayerNormalization must stay a native op"


def _single_node_model(node: onnx.NodeProto, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "hand_made",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[helper.make_tensor("scales", TensorProto.FLOAT, [2], [2.0, 2.0])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("model, reason", [
    (_single_node_model(helper.make_node("Unique", ["x"], ["y"], name="unique")), "not supported"),
    (_single_node_model(helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft")),
     "custom op"),
    (_single_node_model(helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")), "mode='cubic'"),
    (_single_node_model(helper.make_node("Relu", ["x"], ["y"]), opset=21), "opset 21"),
], ids=["unsupported-op", "custom-domain", "resize-cubic", "opset-too-new"])
def test_tensorrt_op_check_rejects(model, reason):
    assert any(reason in problem for problem in graph_checks.tensorrt_problems(model))
    with pytest.raises(graph_checks.GraphCheckError):
        graph_checks.check_tensorrt_support(model)


def test_values_mode_cross_attention_is_fusable(graphs):
    found = graph_checks.check_fusable_cross_attention(graphs["values"], expected=CROSS_ATTENTIONS)
    assert found == CROSS_ATTENTIONS


def test_fusable_attention_check_fails_when_a_node_sits_between_softmax_and_matmul(graphs):
    model = onnx.load(str(graphs["values"]), load_external_data=False)
    softmax = next(node for node in model.graph.node if node.op_type == "Softmax" and "attn2" in node.name)
    consumer = next(node for node in model.graph.node if softmax.output[0] in node.input)
    scaled = f"{softmax.output[0]}_scaled"
    consumer.input[list(consumer.input).index(softmax.output[0])] = scaled
    model.graph.initializer.append(helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]))
    model.graph.node.append(helper.make_node("Mul", [softmax.output[0], "one"], [scaled], name="inserted"))
    with pytest.raises(graph_checks.GraphCheckError, match="output feeds Mul,"):
        graph_checks.check_fusable_cross_attention(model)


def test_missing_onnxruntime_is_one_user_error(tiny, graphs, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserError, match=r"pip install 'sd-struct-rt\[cpu\]'"):
        OrtNetwork(graphs["values"], contract(tiny, "unet"), device="cpu")


def test_a_graph_of_another_mode_is_refused(tiny, graphs):
    with pytest.raises(UserError, match="value_states.*not.*key_states.*rebuild"):
        OrtNetwork(graphs["values"], contract(tiny, "unet", "keys"), device="cpu")


@pytest.mark.parametrize("mode", ["values", "keys"])
def test_p3_holds_in_the_exported_graph_for_a_huge_pad(tiny, graphs, mode, fresh_generator):
    """The mask zeroes padded levels inside the engine too: a 3e38 pad must not become inf or NaN."""
    onnx_unet = OrtNetwork(graphs[mode], contract(tiny, "unet", mode), device="cpu")
    inputs = unet_inputs(onnx_unet.contract, [2, 1], 8, 8, fresh_generator)
    level_input = {"values": "value_states", "keys": "key_states"}[mode]
    huge = dict(inputs, **{level_input: inputs[level_input].clone()})
    huge[level_input][1, 1:] = 3e38  # the padded level of the second row
    got, expected = only(onnx_unet(**huge)), only(onnx_unet(**inputs))
    assert torch.isfinite(got).all()
    assert relative_error(got, expected) <= ORT_TOLERANCE


def test_the_graph_flop_count_matches_torch_s_own(tiny, graphs):
    """export.flops reads MatMul/Conv work off the graph's nodes; torch's FlopCounterMode counts the
    same multiply-adds (matmuls, convolutions, attention) while running the reference."""
    from torch.utils.flop_counter import FlopCounterMode

    from sd_struct_rt.export.flops import graph_flops

    sizes = {"N": 2, "L": 3, "h": 32, "w": 32}
    unet_contract = contract(tiny, "unet")
    inputs = unet_contract.sample_inputs(torch.Generator().manual_seed(0), sizes)
    counted = graph_flops(graphs["values"], {name: tensor.numpy() for name, tensor in inputs.items()})
    assert counted.by_op["Conv"] > 0 and counted.by_op["MatMul"] > 0
    counter = FlopCounterMode(display=False)
    # the math kernel spells attention as matmuls, which the counter sees (the fused CPU one it does not)
    with counter, torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        reference(tiny, "unet")(**inputs)
    assert abs(counted.total - counter.get_total_flops()) / counter.get_total_flops() < 0.02
