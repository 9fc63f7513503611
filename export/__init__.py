"""ONNX and TensorRT export of the denoiser and solver (installed as ``fastinv.export``).

``fastinv.export.onnx``: torch → ONNX (velocity and DeepInv solver graphs) and the backend-vs-torch parity
check; ``fastinv.export.graphs``: the graph boundaries and export patches; ``fastinv.export.tensorrt``:
ONNX → TensorRT engines (profiles, timing cache, the engine cache).
"""
