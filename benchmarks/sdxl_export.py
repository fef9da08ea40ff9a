"""Export a full-size SDXL base UNet (public config, seeded random weights) to ONNX and measure it.

    python benchmarks/sdxl_export.py [--precision fp16|fp32] [--out FILE.json]

The export runs in a child process, so its wall time and peak resident memory are its own; the
exported graph then goes through the same checks as every engine build (TensorRT operator
support, and every cross-attention MatMul -> Softmax -> MatMul). Nothing is kept: the graph is
written to a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = Path(__file__).parent / "configs" / "sdxl" / "unet" / "config.json"
DTYPES = {"fp16": "float16", "fp32": "float32"}


def export(precision: str, folder: Path) -> None:
    """In the child: build the UNet and export it in values mode with SDXL's contract."""
    import torch
    from diffusers import UNet2DConditionModel

    from sd_struct_rt.attention import StructuredUNet
    from sd_struct_rt.contract import ModelFacts
    from sd_struct_rt.export.onnx_export import export_network
    from sd_struct_rt.families.sdxl import ADDED_CONDITIONS, FAMILY

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(json.loads(CONFIG.read_text())).eval().to(getattr(torch, DTYPES[precision]))
    facts = ModelFacts(family="sdxl", text_width=2048, vocab_size=49408, vae_scale_factor=8, default_size=1024,
                       size_step=32, pooled_width=1280, force_zeros_for_empty_prompt=True)
    contract = FAMILY.networks(facts, "values")["unet"]
    print(json.dumps({"parameters": sum(p.numel() for p in unet.parameters()),
                      "cross_attentions": sum(1 for n, _ in unet.named_modules() if n.endswith("attn2"))}),
          flush=True)
    export_network(StructuredUNet(unet, "values", added=ADDED_CONDITIONS), contract, folder / "unet.onnx")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=list(DTYPES), default="fp16")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sdxl_export_cpu.json")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        export(args.precision, args.child)
        return

    from sd_struct_rt.export.build import check_graphs
    from sd_struct_rt.timing import machine_description, write_results

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        child = subprocess.run([sys.executable, __file__, "--precision", args.precision, "--child", scratch],
                               capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2
        result = {"benchmark": "ONNX export of a full-size SDXL base UNet (values mode), random weights",
                  "precision": args.precision, "machine": machine_description(), "exit_code": child.returncode,
                  "seconds": round(seconds, 1), "peak_resident_gb": round(peak_gb, 2)}
        if child.returncode == 0:
            result.update(json.loads(child.stdout.strip().splitlines()[0]))
            files = list(Path(scratch).iterdir())
            result["graph_gb"] = round(sum(path.stat().st_size for path in files) / 1024 ** 3, 2)
            check_graphs({"unet": Path(scratch) / "unet.onnx"}, result["cross_attentions"])
            result["checks"] = "TensorRT operator support and fusable cross-attention: pass"
        else:
            result["error"] = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "killed"
    result["date"] = time.strftime("%Y-%m-%d")
    write_results(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
