"""Export stage: the structured UNet, text encoder and VAE to ONNX, and engines built from them."""
