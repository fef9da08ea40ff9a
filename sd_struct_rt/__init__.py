"""Structured Diffusion Guidance for Stable Diffusion 1.x, deployable on ONNX and TensorRT."""

__version__ = "0.1.0"
