"""One UNet call at the real SD 1.5 size on a CUDA GPU: plain vs values vs keys vs the official loop.

    python benchmarks/gpu_unet.py [--levels 4] [--rounds 30] [--out FILE.json]

The UNet is built from SD 1.5's public config with random weights (latency does not depend
on the weights), float16, 512x512 (64x64 latents), batch 2 (one prompt with guidance).
Each candidate runs eagerly and replayed from a CUDA graph; all interleaved in one run.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel

from sd_struct_rt.attention import StructuredUNet
from sd_struct_rt.level_loop import LevelLoopUNet
from sd_struct_rt.timing import interleaved, machine_description, ratio, write_results

CONFIG = Path(__file__).parent / "configs" / "sd15" / "unet" / "config.json"


def graphed(network, inputs):
    """Capture one call of ``network`` on static ``inputs``; replaying it is the candidate."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.inference_mode():
        for _ in range(3):  # warm-up on a side stream, as capture requires
            network(*inputs)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        network(*inputs)
    return graph.replay


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_unet_sd15.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_unet.py: error: needs a CUDA GPU; on the CPU use benchmarks/unet_modes.py")

    device, dtype = torch.device("cuda"), torch.float16
    torch.manual_seed(0)
    base = UNet2DConditionModel.from_config(json.loads(CONFIG.read_text())).to(device, dtype).eval()
    generator = torch.Generator(device).manual_seed(0)
    sample = torch.randn(2, 4, 64, 64, device=device, dtype=dtype, generator=generator)
    timestep = torch.tensor([500, 500], device=device)
    context = torch.randn(2, 77, 768, device=device, dtype=dtype, generator=generator)

    def inputs_for(levels):
        stacked = torch.randn(2, levels, 77, 768, device=device, dtype=dtype, generator=generator)
        return sample, timestep, context, stacked, torch.ones(2, levels, device=device, dtype=dtype)

    networks = {
        "plain": (StructuredUNet(copy.deepcopy(base), "values"), inputs_for(1)),
        "values": (StructuredUNet(copy.deepcopy(base), "values"), inputs_for(args.levels)),
        "keys": (StructuredUNet(copy.deepcopy(base), "keys"), inputs_for(args.levels)),
        "naive_values": (LevelLoopUNet(copy.deepcopy(base), "values"), inputs_for(args.levels)),
    }
    candidates = {}
    for name, (network, inputs) in networks.items():
        def eager(network=network, inputs=inputs):
            with torch.inference_mode():
                network(*inputs)
        candidates[name] = eager
        candidates[f"{name}_cuda_graph"] = graphed(network, inputs)
    timings = interleaved(candidates, warmup=5, rounds=args.rounds, synchronize=torch.cuda.synchronize)
    result = {
        "benchmark": "one UNet call, SD 1.5 architecture, random weights, float16, 512x512, batch 2",
        "device": torch.cuda.get_device_name(),
        "machine": machine_description(),
        "levels": args.levels,
        "timings": {name: timing.as_dict() for name, timing in timings.items()},
        "unet_steps_per_second": {name: round(1e3 / timing.median_ms, 1) for name, timing in timings.items()},
        "ratios": {f"{name}_over_plain{suffix}": round(ratio(timings, name + suffix, "plain" + suffix), 4)
                   for name in ("values", "keys", "naive_values") for suffix in ("", "_cuda_graph")},
    }
    write_results(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
