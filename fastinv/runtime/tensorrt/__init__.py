"""The TensorRT backend: running built engines (`engine`), the engine cache on disk (`cache`) and optimization
profiles (`profile`).

`fastinv.runtime.tensorrt.engine` runs an engine built by `fastinv.export.tensorrt` behind the VelocityModel /
SolverModel calls; `cache` names engines by what they were built from and for, writes them with their JSON
sidecars and checks them on load; `profile` holds the (min, opt, max) axis ranges an engine takes. Nothing
here imports `tensorrt` until an engine is built or loaded.
"""
