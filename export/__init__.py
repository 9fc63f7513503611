"""ONNX and TensorRT export of the denoiser and solver (installed as ``fastinv.export``).

Empty until the export issue lands: nothing here pretends to be implemented.
"""
