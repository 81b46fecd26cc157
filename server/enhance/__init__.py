"""Photo enhancement: the ONNX runtime, tiling, colour maths and evaluation (no torch here)."""
