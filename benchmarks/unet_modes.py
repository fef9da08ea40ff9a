"""One UNet call on the torch backend: plain vs structured (values, keys) vs the official loop.

    python benchmarks/unet_modes.py [--model tiny] [--levels 4] [--rounds 30] [--out FILE.json]

All candidates run interleaved in one process; ratios are medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch

from sd_struct_rt.attention import StructuredUNet
from sd_struct_rt.level_loop import LevelLoopUNet
from sd_struct_rt.timing import interleaved, machine_description, ratio, write_results
from sd_struct_rt.model import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "unet_modes_torch_cpu.json")
    args = parser.parse_args()

    model = load_model(args.model)
    side = model.unet.config.sample_size
    width = model.unet.config.cross_attention_dim
    generator = torch.Generator().manual_seed(0)
    rows = 2  # one prompt with classifier-free guidance
    sample = torch.randn(rows, 4, side, side, generator=generator)
    timestep = torch.tensor([500] * rows)
    context = torch.randn(rows, 77, width, generator=generator)
    levels = torch.randn(rows, args.levels, 77, width, generator=generator)
    mask = torch.ones(rows, args.levels)
    one_level, one_mask = context[:, None], torch.ones(rows, 1)

    networks = {
        "plain": (StructuredUNet(copy.deepcopy(model.unet), "values"), one_level, one_mask),
        "values": (StructuredUNet(copy.deepcopy(model.unet), "values"), levels, mask),
        "keys": (StructuredUNet(copy.deepcopy(model.unet), "keys"), levels, mask),
        "naive_values": (LevelLoopUNet(copy.deepcopy(model.unet), "values"), levels, mask),
    }

    def call(network, stacked, level_mask):
        def run():
            with torch.inference_mode():
                network(sample, timestep, context, stacked, level_mask)
        return run

    timings = interleaved({name: call(*spec) for name, spec in networks.items()},
                          warmup=args.warmup, rounds=args.rounds)
    result = {
        "benchmark": "one UNet call, torch eager, float32",
        "model": args.model,
        "shape": {"rows": rows, "latent": [side, side], "levels": args.levels},
        "machine": machine_description(),
        "timings": {name: timing.as_dict() for name, timing in timings.items()},
        "ratios": {
            "structured_over_plain": round(ratio(timings, "values", "plain"), 4),
            "keys_over_plain": round(ratio(timings, "keys", "plain"), 4),
            "naive_over_plain": round(ratio(timings, "naive_values", "plain"), 4),
        },
    }
    write_results(args.out, result)
    print("| candidate | median ms | p25-p75 ms |")
    print("|---|---|---|")
    for name, timing in timings.items():
        low, high = timing.spread_ms
        print(f"| {name} | {timing.median_ms:.1f} | {low:.1f}-{high:.1f} |")
    print(json.dumps(result["ratios"]))


if __name__ == "__main__":
    main()
