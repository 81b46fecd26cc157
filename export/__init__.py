"""torch -> ONNX export: dual-encoder bundles, int8 quantization, parity checks, the default bundle."""
