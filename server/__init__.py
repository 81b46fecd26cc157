"""clipalbum server: bundle loading, preprocessing, ONNX encoders, index, API and CLI (no torch)."""
