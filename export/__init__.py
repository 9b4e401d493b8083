"""Checkpoint -> engine directory (ONNX graphs, quantization, TensorRT plans, GGUF, manifest)."""
