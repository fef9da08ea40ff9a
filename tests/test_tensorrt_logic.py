"""The TensorRT path without TensorRT: profiles from the contracts, shape checks, the missing-TensorRT line.

The tests at the end build and run a real engine; they skip unless TensorRT 10 and a CUDA GPU
are present. Their toy UNet (an ONNX graph with the real UNet's inputs and outputs) is checked
here on ONNX Runtime, so a failure there is about TensorRT, not the toy.
"""

from __future__ import annotations

import builtins
import importlib.util
import sys
import types

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from sd_struct_rt.backends import OpenOptions, engine_backend
from sd_struct_rt.backends.tensorrt_backend import TrtEngine
from sd_struct_rt.backends.tensorrt_build import (build_engine, device_description, make_progress_monitor, require_cuda,
                                                  require_tensorrt)
from sd_struct_rt.contract import ModelFacts, Profile, ShapeRange
from sd_struct_rt.errors import UserError
from sd_struct_rt.families import COMPONENTS
from sd_struct_rt.families.sd1 import FAMILY

from tests.conftest import relative_error

WIDTH = 768
PROFILE = Profile(batch=(1, 3), size=(256, 768), levels=6)
INSTALL_HINT = "pip install 'sd-struct-rt[tensorrt]'"


def facts(text_width=WIDTH, default_size=512):
    return ModelFacts(family="sd1", text_width=text_width, vocab_size=49408, vae_scale_factor=8,
                      default_size=default_size, size_step=64)


def contracts(mode="values", text_width=WIDTH, default_size=512):
    return FAMILY.networks(facts(text_width, default_size), mode)


def unet_shapes(profile, mode="values", text_width=WIDTH, opt_size=512):
    return contracts(mode, text_width, opt_size)["unet"].profile_shapes(profile)


def text_encoder_shapes(profile):
    return contracts()["text_encoder"].profile_shapes(profile)


def vae_decoder_shapes(profile, opt_size=512):
    return contracts(default_size=opt_size)["vae_decoder"].profile_shapes(profile)


def check_shapes_against_profile(shapes, accepted):
    """The UNet's, text encoder's or VAE's check, picked by the inputs' names."""
    component = {"latent": "vae_decoder", "input_ids": "text_encoder"}.get(next(iter(shapes)), "unet")
    contracts()[component].check_shapes(shapes, accepted)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make ``import tensorrt`` fail even where TensorRT is installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.fixture
def fake_tensorrt(monkeypatch):
    module = types.ModuleType("tensorrt")
    module.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    return module


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Toy GPU")


# --- optimization profiles -------------------------------------------------------------------

def test_unet_profile_doubles_the_batch_and_works_in_latent_pixels():
    shapes = unet_shapes(PROFILE, "values", WIDTH)
    assert shapes == {
        "sample": ShapeRange((2, 4, 32, 32), (2, 4, 64, 64), (6, 4, 96, 96)),
        "timestep": ShapeRange((2,), (2,), (6,)),
        "encoder_hidden_states": ShapeRange((2, 77, WIDTH), (2, 77, WIDTH), (6, 77, WIDTH)),
        "value_states": ShapeRange((2, 1, 77, WIDTH), (2, 4, 77, WIDTH), (6, 6, 77, WIDTH)),
        "level_mask": ShapeRange((2, 1), (2, 4), (6, 6)),
    }


def test_keys_mode_stacks_key_states_instead_of_value_states():
    shapes = unet_shapes(PROFILE, "keys", WIDTH)
    assert "value_states" not in shapes
    assert shapes["key_states"] == ShapeRange((2, 1, 77, WIDTH), (2, 4, 77, WIDTH), (6, 6, 77, WIDTH))


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        unet_shapes(PROFILE, "plain", WIDTH)


@pytest.mark.parametrize("size, opt_size, opt_side", [
    ((256, 768), 512, 64),  # SD 1.x's native size inside the range
    ((64, 256), 512, 32),  # clamped down to the largest size built
    ((640, 1024), 512, 80),  # clamped up to the smallest
    ((256, 768), 768, 96),  # a model with another native size
    ((256, 768), 300, 32),  # rounded down to a multiple of 64 pixels
])
def test_opt_size_is_the_native_size_clamped_into_the_range(size, opt_size, opt_side):
    profile = Profile(batch=(1, 1), size=size, levels=2)
    assert unet_shapes(profile, "values", WIDTH, opt_size)["sample"].opt[2:] == (opt_side, opt_side)
    assert vae_decoder_shapes(profile, opt_size)["latent"].opt[2:] == (opt_side, opt_side)


@pytest.mark.parametrize("profile", [Profile(), PROFILE, Profile((1, 1), (64, 64), 1),
                                     Profile((2, 16), (64, 2048), 64)])
def test_opt_lies_between_min_and_max_on_every_axis(profile):
    for contract in contracts().values():
        for low, opt, high in contract.profile_shapes(profile).values():
            assert all(a <= b <= c for a, b, c in zip(low, opt, high))


def test_levels_run_from_one_to_the_profile_maximum():
    for levels, opt in ((1, 1), (2, 2), (6, 4), (8, 5)):
        mask = unet_shapes(Profile(levels=levels), "values", WIDTH)["level_mask"]
        assert (mask.min[1], mask.opt[1], mask.max[1]) == (1, opt, levels)


def test_text_encoder_profile_covers_every_string_of_a_batch():
    # opt: one prompt, its 5 phrases and its negative prompt; max: 2 x 3 prompts x 6 levels.
    assert text_encoder_shapes(PROFILE) == {"input_ids": ShapeRange((1, 77), (7, 77), (36, 77))}


def test_vae_profile_has_one_row_per_prompt():
    assert vae_decoder_shapes(PROFILE) == {"latent": ShapeRange((1, 4, 32, 32), (1, 4, 64, 64), (3, 4, 96, 96))}


def test_every_component_has_a_contract():
    assert set(contracts()) == set(COMPONENTS)


# --- shape checks ----------------------------------------------------------------------------

def unet_request(prompts=1, height=64, width=64, levels=3, text_width=WIDTH):
    rows = 2 * prompts
    return {"sample": (rows, 4, height, width), "timestep": (rows,), "encoder_hidden_states": (rows, 77, text_width),
            "value_states": (rows, levels, 77, text_width), "level_mask": (rows, levels)}


@pytest.mark.parametrize("request_shapes", [
    unet_request(1, 32, 32, 1),
    unet_request(3, 96, 96, 6),
    unet_request(2, 40, 88, 3),  # height and width differ
])
def test_shapes_inside_the_profile_pass(request_shapes):
    check_shapes_against_profile(request_shapes, unet_shapes(PROFILE, "values", WIDTH))


@pytest.mark.parametrize("request_shapes, dimension, value, allowed", [
    (unet_request(prompts=4), "batch", 8, "2..6"),
    (unet_request(height=100), "height", 100, "32..96"),
    (unet_request(width=24), "width", 24, "32..96"),
    (unet_request(levels=7), "levels", 7, "1..6"),
])
def test_each_dimension_outside_the_profile_is_refused_by_name(request_shapes, dimension, value, allowed):
    with pytest.raises(UserError) as caught:
        check_shapes_against_profile(request_shapes, unet_shapes(PROFILE, "values", WIDTH))
    message = str(caught.value)
    assert f"{dimension} {value} is outside the engine's {allowed}" in message
    assert message.count(f"{dimension} {value}") == 1  # a batch in five inputs is one problem
    assert "\n" not in message and "sdrt build-engine" in message


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as caught:
        check_shapes_against_profile(unet_request(prompts=4, height=100, levels=7),
                                     unet_shapes(PROFILE, "values", WIDTH))
    assert all(word in str(caught.value) for word in ("batch 8", "height 100", "levels 7"))


def test_a_fixed_dimension_must_match_exactly():
    with pytest.raises(UserError, match="text width 1024 must be 768"):
        check_shapes_against_profile(unet_request(text_width=1024), unet_shapes(PROFILE, "values", WIDTH))


def test_a_wrong_rank_is_refused():
    request = unet_request()
    request["timestep"] = ()
    with pytest.raises(UserError, match="timestep has 0 dimensions, the engine takes 1"):
        check_shapes_against_profile(request, unet_shapes(PROFILE, "values", WIDTH))


def test_text_encoder_and_vae_dimensions_are_named_in_their_units():
    with pytest.raises(UserError, match=r"strings 37 is outside the engine's 1\.\.36"):
        check_shapes_against_profile({"input_ids": (37, 77)}, text_encoder_shapes(PROFILE))
    with pytest.raises(UserError, match=r"batch 4 is outside the engine's 1\.\.3 \(prompts"):
        check_shapes_against_profile({"latent": (4, 4, 64, 64)}, vae_decoder_shapes(PROFILE))


def test_missing_inputs_are_a_programming_error():
    request = unet_request()
    del request["level_mask"]
    with pytest.raises(ValueError, match="level_mask"):
        check_shapes_against_profile(request, unet_shapes(PROFILE, "values", WIDTH))


# --- without TensorRT ------------------------------------------------------------------------

def tensorrt_missing_line() -> str:
    with pytest.raises(UserError) as caught:
        require_tensorrt()
    return str(caught.value)


def test_missing_tensorrt_is_one_line_with_the_install_hint(no_tensorrt):
    message = tensorrt_missing_line()
    assert "\n" not in message
    assert "TensorRT is not installed" in message
    assert INSTALL_HINT in message
    assert "NVIDIA GPU with CUDA" in message


def test_tensorrt_whose_libraries_do_not_load_is_one_line(monkeypatch):
    real_import = builtins.__import__

    def failing_import(name, *args, **kwargs):
        if name == "tensorrt":
            raise OSError("libnvinfer.so.10: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    monkeypatch.setattr(builtins, "__import__", failing_import)
    message = tensorrt_missing_line()
    assert "TensorRT does not load (libnvinfer.so.10" in message and INSTALL_HINT in message
    assert "\n" not in message


def test_another_tensorrt_major_version_is_refused(fake_tensorrt):
    fake_tensorrt.__version__ = "8.6.1"
    assert "TensorRT 8.6.1 is installed but sd-struct-rt needs TensorRT 10" in tensorrt_missing_line()


def test_tensorrt_10_is_accepted(fake_tensorrt):
    assert require_tensorrt() is fake_tensorrt


def open_set(tmp, cuda_graphs=False):
    files = {component: tmp / f"{component}.plan" for component in COMPONENTS}
    return engine_backend("tensorrt").open(files, contracts(), "values", OpenOptions(cuda_graphs=cuda_graphs))


@pytest.mark.parametrize("call", [
    lambda tmp: build_engine(tmp / "unet.onnx", tmp / "unet.plan", unet_shapes(PROFILE, "values", WIDTH), "fp16"),
    lambda tmp: TrtEngine(tmp / "unet.plan", contracts()["unet"]),
    lambda tmp: open_set(tmp),
    lambda tmp: open_set(tmp, cuda_graphs=True),
    lambda tmp: engine_backend("tensorrt").version(),
], ids=["build_engine", "TrtEngine", "open", "open-cuda-graphs", "version"])
def test_tensorrt_calls_without_tensorrt_give_that_one_line(no_tensorrt, tmp_path, call):
    with pytest.raises(UserError) as caught:
        call(tmp_path)
    assert str(caught.value) == tensorrt_missing_line()
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_no_gpu_is_one_line(fake_tensorrt, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="TensorRT needs an NVIDIA GPU with CUDA") as caught:
        TrtEngine(tmp_path / "unet.plan", contracts()["unet"])
    assert "\n" not in str(caught.value)
    with pytest.raises(UserError, match="NVIDIA GPU"):
        require_cuda()


def test_device_description_names_the_gpu_and_its_compute_capability(fake_gpu):
    assert device_description() == {"name": "Toy GPU", "compute_capability": "8.9"}


@pytest.mark.parametrize("precision, level, message", [
    ("int8", 3, "precision must be one of fp32, fp16, bf16"),
    ("fp16", 6, "optimization level must be 0..5"),
    ("fp16", 3, "does not exist; export the ONNX graphs"),
])
def test_build_engine_refuses_bad_requests_before_building(fake_tensorrt, fake_gpu, tmp_path, precision, level,
                                                            message):
    with pytest.raises(UserError, match=message):
        build_engine(tmp_path / "unet.onnx", tmp_path / "unet.plan", unet_shapes(PROFILE, "values", WIDTH),
                     precision, level)
    assert list(tmp_path.iterdir()) == []


def test_engine_file_must_exist(fake_tensorrt, fake_gpu, tmp_path):
    with pytest.raises(UserError, match="does not exist; build it with: sdrt build-engine"):
        TrtEngine(tmp_path / "vae_decoder.plan", contracts()["vae_decoder"])


# --- build progress --------------------------------------------------------------------------

class MonitorBase:
    def __init__(self):
        pass


MONITOR_TRT = types.SimpleNamespace(IProgressMonitor=MonitorBase)


def test_progress_reports_top_level_phases_with_steps_done():
    reports = []
    monitor = make_progress_monitor(MONITOR_TRT, lambda *report: reports.append(report))
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Tactic timing", "Building engine", 40)
    assert monitor.step_complete("Tactic timing", 0)
    monitor.phase_finish("Tactic timing")
    assert monitor.step_complete("Building engine", 0)
    assert monitor.step_complete("Building engine", 2)
    monitor.phase_finish("Building engine")
    assert reports == [("Building engine", 0, 3), ("Building engine", 1, 3), ("Building engine", 3, 3)]
    assert monitor.failure is None


def test_ctrl_c_during_a_build_cancels_it_instead_of_crossing_into_tensorrt():
    def interrupted(*report):
        if report[1]:
            raise KeyboardInterrupt

    monitor = make_progress_monitor(MONITOR_TRT, interrupted)
    monitor.phase_start("Building engine", None, 3)
    assert monitor.step_complete("Building engine", 0) is False
    assert isinstance(monitor.failure, KeyboardInterrupt)
    assert monitor.step_complete("Building engine", 1) is False


def test_monitor_without_progress_only_watches_for_failures():
    monitor = make_progress_monitor(MONITOR_TRT, None)
    monitor.phase_start("Building engine", None, 1)
    assert monitor.step_complete("Building engine", 0)


# --- a real engine (TensorRT 10 and a CUDA GPU) ----------------------------------------------

TOY_WIDTH = 8


def toy_unet_onnx(level_input: str) -> onnx.ModelProto:
    """A graph with the UNet's I/O contract whose output depends on every input."""
    def constant(name, values, dtype=np.int64):
        return helper.make_tensor(name, TensorProto.INT64 if dtype == np.int64 else TensorProto.FLOAT,
                                  [len(values)], values)

    nodes = [
        helper.make_node("Unsqueeze", ["level_mask", "axes_23"], ["mask4"]),
        helper.make_node("Mul", [level_input, "mask4"], ["weighted"]),
        helper.make_node("ReduceSum", ["weighted", "axes_1"], ["level_sum"], keepdims=0),
        helper.make_node("ReduceSum", ["level_mask", "axes_1"], ["level_count"], keepdims=1),
        helper.make_node("Unsqueeze", ["level_count", "axes_2"], ["level_count3"]),
        helper.make_node("Div", ["level_sum", "level_count3"], ["level_mean"]),
        helper.make_node("Add", ["encoder_hidden_states", "level_mean"], ["context"]),
        helper.make_node("ReduceMean", ["context"], ["context_mean"], axes=[1, 2], keepdims=0),
        helper.make_node("Cast", ["timestep"], ["timestep_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["timestep_float", "thousandth"], ["timestep_scaled"]),
        helper.make_node("Add", ["timestep_scaled", "context_mean"], ["shift"]),
        helper.make_node("Unsqueeze", ["shift", "axes_123"], ["shift4"]),
        helper.make_node("Mul", ["sample", "half"], ["sample_half"]),
        helper.make_node("Add", ["sample_half", "shift4"], ["noise_pred"]),
    ]
    initializers = [constant("axes_1", [1]), constant("axes_2", [2]), constant("axes_23", [2, 3]),
                    constant("axes_123", [1, 2, 3]), constant("thousandth", [1e-3], np.float32),
                    constant("half", [0.5], np.float32)]
    inputs = [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["N", 4, "h", "w"]),
              helper.make_tensor_value_info("timestep", TensorProto.FLOAT, ["N"]),
              helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["N", 77, TOY_WIDTH]),
              helper.make_tensor_value_info(level_input, TensorProto.FLOAT, ["N", "L", 77, TOY_WIDTH]),
              helper.make_tensor_value_info("level_mask", TensorProto.FLOAT, ["N", "L"])]
    outputs = [helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT, ["N", 4, "h", "w"])]
    graph = helper.make_graph(nodes, "toy_unet", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def toy_unet_reference(sample, timestep, encoder_hidden_states, level_states, level_mask):
    level_mean = (level_states * level_mask[:, :, None, None]).sum(1) / level_mask.sum(1)[:, None, None]
    shift = timestep.float() * 1e-3 + (encoder_hidden_states + level_mean).mean(dim=(1, 2))
    return sample * 0.5 + shift[:, None, None, None]


def toy_unet_inputs(generator, prompts, latent_height, latent_width, levels):
    rows = 2 * prompts
    mask = torch.zeros(rows, levels)
    for row in range(rows):
        mask[row, :int(torch.randint(1, levels + 1, (), generator=generator))] = 1
    return (torch.randn(rows, 4, latent_height, latent_width, generator=generator),
            torch.rand(rows, generator=generator) * 1000,
            torch.randn(rows, 77, TOY_WIDTH, generator=generator),
            torch.randn(rows, levels, 77, TOY_WIDTH, generator=generator),
            mask)


def test_toy_unet_graph_computes_its_reference(tmp_path, fresh_generator):
    import onnxruntime

    onnx.save(toy_unet_onnx("value_states"), tmp_path / "unet.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "unet.onnx"), providers=["CPUExecutionProvider"])
    inputs = toy_unet_inputs(fresh_generator, 2, 8, 12, 3)
    names = ["sample", "timestep", "encoder_hidden_states", "value_states", "level_mask"]
    (got,) = session.run(None, {name: tensor.numpy() for name, tensor in zip(names, inputs)})
    assert relative_error(torch.from_numpy(got), toy_unet_reference(*inputs)) <= 1e-6


needs_tensorrt_gpu = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
    reason="needs TensorRT 10 (pip install 'sd-struct-rt[tensorrt]') and an NVIDIA GPU with CUDA")


def toy_engine(path, mode, cuda_graphs=False):
    return TrtEngine(path, contracts(mode, TOY_WIDTH, 64)["unet"], cuda_graphs)


def named(inputs, level_input="value_states"):
    return dict(zip(["sample", "timestep", "encoder_hidden_states", level_input, "level_mask"], inputs))


@needs_tensorrt_gpu
@pytest.mark.parametrize("cuda_graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_toy_unet_engine_matches_its_reference(tmp_path, fresh_generator, cuda_graphs):
    profile = Profile(batch=(1, 2), size=(64, 128), levels=3)
    onnx.save(toy_unet_onnx("value_states"), tmp_path / "unet.onnx")
    reports = []
    build_engine(tmp_path / "unet.onnx", tmp_path / "unet.plan", unet_shapes(profile, "values", TOY_WIDTH, 64),
                 "fp32", optimization_level=0, timing_cache_path=tmp_path / "timing.cache",
                 progress=lambda *report: reports.append(report))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["timing.cache", "unet.onnx", "unet.plan"]
    assert reports

    unet = toy_engine(tmp_path / "unet.plan", "values", cuda_graphs)
    # Largest first, so later, smaller calls must reuse the same buffers; every shape thrice,
    # so a captured graph is replayed on inputs it was not captured with.
    requests = [(2, 16, 16, 3), (1, 8, 8, 2), (1, 8, 12, 1), (2, 16, 16, 3)]  # latent pixels
    buffers = None
    for request in requests:
        for _ in range(3):
            inputs = toy_unet_inputs(fresh_generator, *request)
            got = unet(**named(inputs))["noise_pred"]
            assert got.device.type == "cpu" and got.dtype == torch.float32
            assert relative_error(got, toy_unet_reference(*inputs)) <= 1e-5
            on_gpu = unet(**named(tensor.cuda() for tensor in inputs))["noise_pred"]
            assert on_gpu.is_cuda and relative_error(on_gpu.cpu(), got) <= 1e-6
        pointers = {name: buffer.data_ptr() for name, buffer in unet._buffers.items()}
        assert buffers is None or pointers == buffers
        buffers = pointers
    with pytest.raises(UserError, match="levels 4"):
        unet(**named(toy_unet_inputs(fresh_generator, 1, 8, 8, 4)))


@needs_tensorrt_gpu
def test_engine_for_the_other_mode_is_refused(tmp_path):
    onnx.save(toy_unet_onnx("key_states"), tmp_path / "unet.onnx")
    profile = Profile(batch=(1, 1), size=(64, 64), levels=2)
    build_engine(tmp_path / "unet.onnx", tmp_path / "unet.plan", unet_shapes(profile, "keys", TOY_WIDTH, 64), "fp32",
                 optimization_level=0)
    assert "key_states" in toy_engine(tmp_path / "unet.plan", "keys").input_names
    with pytest.raises(UserError, match="key_states.*not.*value_states.*rebuild"):
        toy_engine(tmp_path / "unet.plan", "values")


# --- CUDA graphs reach the engines -----------------------------------------------------------

def test_cuda_graphs_reach_every_tensorrt_engine(fake_tensorrt, monkeypatch, tmp_path):
    import sd_struct_rt.backends.tensorrt_backend as tensorrt_backend

    opened = []

    class RecordingEngine:
        def __init__(self, path, contract, cuda_graphs=False):
            opened.append((path.name, contract.name, cuda_graphs))

    monkeypatch.setattr(tensorrt_backend, "TrtEngine", RecordingEngine)
    networks = open_set(tmp_path, cuda_graphs=True)
    assert sorted(opened) == [("text_encoder.plan", "text_encoder", True), ("unet.plan", "unet", True),
                              ("vae_decoder.plan", "vae_decoder", True)]
    assert networks.label == "tensorrt-cuda-graphs" and set(networks.unets) == {"values"}


def test_generate_passes_cuda_graphs_to_the_engines(monkeypatch, tmp_path):
    from sd_struct_rt.cli import main
    from sd_struct_rt.pipeline import StructuredDiffusionPipeline

    asked = {}

    def from_engines(folder, **options):
        asked.update(options)
        raise UserError("stop here")

    monkeypatch.setattr(StructuredDiffusionPipeline, "from_engines", staticmethod(from_engines))
    assert main(["generate", "a cat", "--engine", str(tmp_path), "--cuda-graphs", "--quiet",
                 "--out", str(tmp_path / "x.png")]) == 2
    assert asked["cuda_graphs"] is True
    assert main(["generate", "a cat", "--cuda-graphs", "--out", str(tmp_path / "x.png")]) == 2  # no engines
