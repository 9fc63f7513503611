"""Engines behind the VelocityModel / SolverModel calls: exported graphs run on torch tensors.

`fastinv.runtime.ort` runs ONNX graphs written by `fastinv.export.onnx` in ONNX Runtime; every graph
carries a `GraphSpec` (`fastinv.runtime.spec`) that each engine checks on load and on every call.
"""

from fastinv.runtime.spec import Axis, GraphSpec, read_spec

__all__ = ["Axis", "GraphSpec", "read_spec"]
