"""Backends behind the VelocityModel / SolverModel calls: exported graphs run on torch tensors.

`fastinv.runtime.ort` runs ONNX graphs written by `fastinv.export.onnx` in ONNX Runtime,
`fastinv.runtime.tensorrt` TensorRT engines built by `fastinv.export.tensorrt`; both sit behind
`fastinv.runtime.graph`'s shared VelocityModel / SolverModel wrappers, and `fastinv.runtime.exports` loads
an export folder's graphs by backend name (`fastinv.runtime.backends`). Every graph carries a `GraphSpec`
(`fastinv.runtime.spec`) that each backend checks on load and on every call.
"""

from fastinv.runtime.spec import Axis, GraphSpec, read_spec

__all__ = ["Axis", "GraphSpec", "read_spec"]
