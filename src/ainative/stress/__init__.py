"""The stress test: real ONNX Runtime inference at a fixed rate, open loop, measured, with
contention and a comparison of remedies."""
