"""Structured Diffusion Guidance for Stable Diffusion, deployable on ONNX Runtime and TensorRT.

    from sd_struct_rt import StructuredDiffusionPipeline

The pipeline is imported on first use, so ``import sd_struct_rt`` (and ``sdrt --help``) stays fast.
"""

from .errors import InputError, UserError

__version__ = "0.1.0"
__all__ = ["InputError", "PipelineOutput", "StructuredDiffusionPipeline", "UserError", "__version__"]


def __getattr__(name: str):
    if name in ("StructuredDiffusionPipeline", "PipelineOutput"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'sd_struct_rt' has no attribute {name!r}")
