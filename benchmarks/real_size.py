"""One UNet call at the real SD 1.5 size on this CPU: torch eager, ONNX Runtime, OpenVINO fp32 and bf16.

    python benchmarks/real_size.py [--sizes 512,256] [--rounds 5] [--end-to-end] [--out FILE.json]

The model is SD 1.5's public configs (benchmarks/configs/sd15) with seeded random weights:
latency does not depend on the weights. Its UNet is exported once (values mode) and every
runtime runs that graph, batch 2 (one prompt with guidance) with 4 levels, and with 1 level
(plain SD), all interleaved in one process: medians with their spread, ratios from one run.

FLOPs of a call are counted from the graph's own MatMul/Gemm/Conv nodes at the call's shapes
(sd_struct_rt/export/flops.py); achieved GFLOP/s is that over the median time, against the GEMM ceiling: the
best rate torch's own large matrix products reach here in fp32 and bf16, measured in the same
run. A peak from the clock would need the boost clock and the vector units' width, which a VM
does not report truthfully (cpuinfo's nominal clock gives a 'peak' the runtimes exceed).
Peak memory is the resident-set peak of a fresh process that loads the runtime and makes one
512x512 call.

With --end-to-end, the fastest CPU runtime gets a full engine set (text encoder, UNet, VAE) and
times whole 512x512 images: PNDM with 50 steps against DPM++2M with 20 and 25.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from sd_struct_rt.contract import Profile
from sd_struct_rt.families.sd1 import FAMILY
from sd_struct_rt.model import load_model, materialised_folder, model_facts
from sd_struct_rt.paths import cache_dir
from sd_struct_rt.timing import interleaved, machine_description, ratio, write_results

CONFIG_ROOT = Path(__file__).parent / "configs" / "sd15"
RUNTIMES = ("torch", "onnxruntime", "openvino-fp32", "openvino-bf16")
LEVELS = 4
GEMM_SIDE = 2048


def model_folder() -> Path:
    return materialised_folder("sd15-random", CONFIG_ROOT)


def graph_path() -> Path:
    return cache_dir() / "benchmarks" / f"{model_folder().name}-unet" / "unet.onnx"


def unet_graph(model) -> Path:
    """The values-mode UNet exported once into the cache (3.4 GB of float32 weights)."""
    from sd_struct_rt.export.onnx_export import export_network

    graph = graph_path()
    if not graph.is_file():
        graph.parent.mkdir(parents=True, exist_ok=True)
        contract = FAMILY.networks(model.facts, "values")["unet"]
        export_network(FAMILY.torch_modules(model, "values")["unet"], contract, graph)
    return graph


def open_runtime(name: str, facts, graph: Path, model=None):
    """The UNet on runtime ``name``: from ``model`` for torch, from the exported ``graph`` otherwise."""
    from sd_struct_rt.backends.onnxruntime_backend import OrtNetwork
    from sd_struct_rt.backends.openvino_backend import OpenVINONetwork, PRECISION_HINTS, require_precision
    from sd_struct_rt.backends.torch_backend import TorchNetwork

    contract = FAMILY.networks(facts, "values")["unet"]
    if name == "torch":
        return TorchNetwork(FAMILY.torch_modules(model, "values")["unet"], contract, torch.device("cpu"),
                            torch.float32)
    if name == "onnxruntime":
        return OrtNetwork(graph, contract, "cpu")
    import openvino

    precision = name.split("-")[1]
    core = openvino.Core()
    require_precision(core, precision)
    config = {"INFERENCE_PRECISION_HINT": PRECISION_HINTS[precision], "PERFORMANCE_HINT": "LATENCY"}
    return OpenVINONetwork(core.compile_model(str(graph), "CPU", config), contract)


def feeds(facts, side: int, levels: int) -> dict[str, torch.Tensor]:
    contract = FAMILY.networks(facts, "values")["unet"]
    latent = side // facts.vae_scale_factor
    inputs = contract.sample_inputs(torch.Generator().manual_seed(side + levels),
                                    {"N": 2, "L": levels, "h": latent, "w": latent})
    inputs["level_mask"] = torch.ones(2, levels)
    return inputs


def gemm_ceiling_gflops(rounds: int = 5) -> dict[str, float]:
    """The best of ``rounds`` square matrix products per precision, in GFLOP/s, on torch's threads."""
    ceiling = {}
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        left, right = (torch.randn(GEMM_SIDE, GEMM_SIDE, generator=torch.Generator().manual_seed(seed)).to(dtype)
                       for seed in (0, 1))
        torch.mm(left, right)  # warm-up: packing buffers and the kernel choice
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            torch.mm(left, right)
            best = min(best, time.perf_counter() - start)
        ceiling[precision] = round(2 * GEMM_SIDE ** 3 / best / 1e9, 1)
    return ceiling


def peak_memory_mb(runtime: str) -> float:
    """Resident-set peak of a fresh process that opens ``runtime`` and makes one 512x512 call."""
    result = subprocess.run([sys.executable, __file__, "--measure-memory", runtime], capture_output=True,
                            text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def measure_memory(runtime: str) -> None:
    """Only ``runtime``'s own copy of the weights is loaded (the graph exists: main exported it)."""
    facts = model_facts(str(model_folder()))
    model = load_model(str(model_folder())) if runtime == "torch" else None
    network = open_runtime(runtime, facts, graph_path(), model)
    network(**feeds(facts, 512, LEVELS))
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over from the parent through fork
    # and exec, so every child would report the benchmark's own peak.
    high_water = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:"))
    print(int(high_water.split()[1]) / 1024)


def end_to_end(backend: str, precision: str) -> dict[str, float]:
    from sd_struct_rt import StructuredDiffusionPipeline
    from sd_struct_rt.export.build import build_engine_set

    folder = cache_dir() / "benchmarks" / f"{model_folder().name}-{backend}-{precision}-set"
    if not (folder / "manifest.json").is_file():
        build_engine_set(str(model_folder()), backend, "values", Profile(batch=(1, 1), size=(512, 512), levels=8),
                         precision, folder)
    pipe = StructuredDiffusionPipeline.from_engines(folder)
    seconds = {}
    for scheduler, steps in (("pndm", 50), ("dpm++2m", 20), ("dpm++2m", 25)):
        start = time.perf_counter()
        pipe("a red car and a white sheep", seed=0, num_inference_steps=steps, scheduler=scheduler,
             width=512, height=512)
        seconds[f"{scheduler}-{steps}"] = round(time.perf_counter() - start, 1)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="512,256")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--end-to-end", action="store_true")
    parser.add_argument("--measure-memory", choices=RUNTIMES, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "real_size_cpu.json")
    args = parser.parse_args()
    if args.measure_memory:
        measure_memory(args.measure_memory)
        return

    from sd_struct_rt.export.flops import graph_flops

    model = load_model(str(model_folder()))
    graph = unet_graph(model)
    networks = {name: open_runtime(name, model.facts, graph, model) for name in RUNTIMES}
    machine = machine_description()
    peak = gemm_ceiling_gflops()
    result = {"benchmark": "one UNet call, SD 1.5 architecture (public config, random weights), batch 2, "
                           f"{LEVELS} levels (structured) and 1 level (plain)",
              "machine": machine, "gemm_ceiling_gflops": peak,
              "ceiling": f"the best of 5 torch.mm calls of {GEMM_SIDE}x{GEMM_SIDE} matrices, per precision",
              "sizes": {}}
    for side in (int(size) for size in args.sizes.split(",")):
        structured, plain = feeds(model.facts, side, LEVELS), feeds(model.facts, side, 1)
        flops = graph_flops(graph, {name: tensor.numpy() for name, tensor in structured.items()})
        candidates = {}
        for name, network in networks.items():
            candidates[f"{name}/structured"] = lambda network=network: network(**structured)
            candidates[f"{name}/plain"] = lambda network=network: network(**plain)
        timings = interleaved(candidates, warmup=args.warmup, rounds=args.rounds)
        rows = {}
        for name in networks:
            median = timings[f"{name}/structured"].median_ms
            precision = "bf16" if name.endswith("bf16") else "fp32"
            rows[name] = {
                "structured": timings[f"{name}/structured"].as_dict(),
                "plain": timings[f"{name}/plain"].as_dict(),
                "structured_over_plain": round(ratio(timings, f"{name}/structured", f"{name}/plain"), 4),
                "speedup_over_torch": round(ratio(timings, "torch/structured", f"{name}/structured"), 3),
                "achieved_gflops": round(flops.total / median / 1e6, 1),
                "share_of_gemm_ceiling": round(flops.total / median / 1e6 / peak[precision], 3),
            }
        result["sizes"][str(side)] = {"gflop_per_call": round(flops.total / 1e9, 1),
                                      "gflop_by_op": {op: round(count / 1e9, 1) for op, count in flops.by_op.items()},
                                      "runtimes": rows}
        print(json.dumps(result["sizes"][str(side)], indent=1), flush=True)
    del networks
    result["peak_memory_mb"] = {name: round(peak_memory_mb(name)) for name in RUNTIMES}
    if args.end_to_end:
        fastest = min(("onnxruntime", "openvino-fp32", "openvino-bf16"),
                      key=lambda name: result["sizes"]["512"]["runtimes"][name]["structured"]["median_ms"])
        backend, _, precision = fastest.partition("-")
        result["end_to_end_512"] = {"runtime": fastest,
                                    "seconds_per_image": end_to_end(backend, precision or "fp32")}
    result["date"] = time.strftime("%Y-%m-%d")
    write_results(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
