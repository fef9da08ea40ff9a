"""Export stage: the structured UNet, text encoder and VAE to ONNX, and engines built from them.

Installed as ``sd_struct_rt.export``.
"""
