"""ONNX → TensorRT engine: one optimization profile, strongly typed precision, a timing cache, the cache.

`build_engine` parses a graph written by `fastinv.export.onnx` with the ONNX parser of TensorRT or
TensorRT-RTX (`fastinv.runtime.tensorrt.library` says which) into a strongly typed network (the precision is
the graph's own: TensorRT 11 networks are always strongly typed, TensorRT 10 and TensorRT-RTX take the
flag), builds it for one `Profile` (`fastinv.runtime.tensorrt.profile.plan_profile`) with a workspace
limit, builder optimisation level and, on TensorRT, a timing cache kept per version and GPU, and writes it
into the engine cache (`fastinv.runtime.tensorrt.cache`) unless an engine with the same key is already
there. With `gpu_arch` (TensorRT-RTX only) it builds ahead of time for that compute capability, without a
GPU. `build_engines` does so for every graph `fastinv export` wrote, parity-checked if asked.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastinv
from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel
from fastinv.runtime.spec import read_spec
from fastinv.runtime.tensorrt import library as trt_library
from fastinv.runtime.tensorrt.cache import (
    EngineFacts,
    engine_key,
    engine_path,
    file_sha256,
    read_facts,
    sidecar_path,
    write_atomic,
    write_engine,
)
from fastinv.runtime.tensorrt.library import Library
from fastinv.runtime.tensorrt.profile import Profile, Range, plan_profile

if TYPE_CHECKING:
    from fastinv.export.onnx import ParityReport

    from fastinv.solver.model import TorchSolver

OPTIMIZATION_LEVEL = 3
"""TensorRT's default builder optimisation level (0 fastest build … 5 most tactics)."""


@dataclass(frozen=True)
class BuiltEngine:
    """An engine in the cache: path, its facts, and whether this call built it (False: reused)."""

    path: Path
    facts: EngineFacts
    built: bool


def timing_cache_path(folder: Path, tensorrt_version: str, compute_capability: str) -> Path:
    """One timing cache per TensorRT version and GPU architecture (TensorRT rejects any other)."""
    return folder / f"timing.{tensorrt_version}.{compute_capability}.cache"


def network_flags(trt: Any) -> int:
    """create_network flags: STRONGLY_TYPED where the enum still has it (TensorRT 10, TensorRT-RTX;
    TensorRT 11 dropped it: always strongly typed)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def parse_errors(parser: Any) -> str:
    """The ONNX parser's errors, one clause each, naming the node and its operator where it says."""
    clauses = []
    for index in range(parser.num_errors):
        error = parser.get_error(index)
        node, op = str(error.node_name() or ""), str(error.node_operator() or "")
        where = f"node {node!r} ({op}): " if node or op else ""
        clauses.append(where + str(error.desc()))
    return "; ".join(clauses) or "no reason given"


def network_io(network: Any) -> dict[str, dict[str, Any]]:
    """The parsed network's IO as the builder sees it: name → {"input", "dtype" (DataType member name),
    "shape" (−1 for a dynamic axis)}, inputs first, in order; `build_serialized` adds each profiled
    input's "profile": [min, opt, max] shapes."""
    io = {}
    for is_input, count, get in (
        (True, network.num_inputs, network.get_input),
        (False, network.num_outputs, network.get_output),
    ):
        for index in range(count):
            tensor = get(index)
            dtype = getattr(tensor.dtype, "name", str(tensor.dtype)).rpartition(".")[2]
            io[tensor.name] = {"input": is_input, "dtype": dtype, "shape": [int(d) for d in tensor.shape]}
    return io


def build_serialized(
    library: Library,
    onnx_path: Path,
    shapes: dict[str, tuple[tuple[int, ...], ...]],
    *,
    gpu_arch: str | None = None,
    workspace: int | None = None,
    optimization_level: int = OPTIMIZATION_LEVEL,
    timing_cache: bytes = b"",
) -> tuple[memoryview, bytes | None, dict[str, dict[str, Any]]]:
    """(serialized engine, updated timing cache or None on TensorRT-RTX, the network's IO) for the ONNX
    graph at `onnx_path`.

    shapes: input name → (min, opt, max) shape of the one optimization profile; gpu_arch: "sm_89" builds
    ahead of time for that compute capability (TensorRT-RTX), None for this GPU; workspace: bytes of scratch
    memory TensorRT may use (None: its default, all device memory); timing_cache: a serialized cache from an
    earlier build on this TensorRT and GPU, or b"" for a new one (TensorRT-RTX has none: it compiles its
    kernels just in time, on the GPU that runs the engine).
    """
    trt = library.module
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        raise FastinvError(f"{library.title} cannot parse {onnx_path.name}: {parse_errors(parser)}")
    config = builder.create_builder_config()
    if gpu_arch is not None:
        config.num_compute_capabilities = 1
        config.set_compute_capability(getattr(trt.ComputeCapability, gpu_arch.replace("_", "").upper()), 0)
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.builder_optimization_level = optimization_level
    if not library.is_rtx:
        config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    io = network_io(network)
    for name in shapes:  # what the profile holds, read back from TensorRT
        io[name]["profile"] = [[int(d) for d in dims] for dims in profile.get_shape(name)]
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise FastinvError(
            f"{library.title} could not build an engine from {onnx_path.name} (see its log above)"
        )
    timing = None if library.is_rtx else bytes(memoryview(config.get_timing_cache().serialize()))
    return memoryview(blob), timing, io


def build_target(device: str, gpu_arch: str | None) -> tuple[Library, str, str]:
    """(library, compute capability, GPU name) of a build: ahead of time for `gpu_arch` (TensorRT-RTX, no
    GPU needed), or for the GPU `device` is."""
    if gpu_arch is not None:
        arch = trt_library.parse_arch(gpu_arch)
        return trt_library.for_arch(arch), arch, f"any {arch} GPU (built ahead of time)"
    arch, device_name = trt_library.device_facts(device)
    return trt_library.for_device(arch), arch, device_name


def build_engine(
    onnx_path: str | Path,
    profile: Profile,
    *,
    out: str | Path | None = None,
    device: str = "cuda",
    gpu_arch: str | None = None,
    workspace: int | None = None,
    optimization_level: int = OPTIMIZATION_LEVEL,
    rebuild: bool = False,
) -> BuiltEngine:
    """The engine of the ONNX graph at `onnx_path` for `profile`, for the GPU `device` or ahead of time for
    `gpu_arch` ("sm_89"): from the cache in `out` (default: the graph's folder), or built into it. Named
    after the graph: velocity.fp32.onnx → velocity.fp32.<key>.engine.
    """
    onnx_path = Path(onnx_path)
    library, sm, device_name = build_target(device, gpu_arch)
    spec = read_spec(onnx_path)
    digest = file_sha256(onnx_path)
    folder = Path(out) if out is not None else onnx_path.parent
    key = engine_key(digest, library.name, library.version, sm, profile, spec.precision)
    path = engine_path(folder, onnx_path.name.removesuffix(".onnx"), key)
    if not rebuild and path.is_file() and sidecar_path(path).is_file():
        return BuiltEngine(path, read_facts(path), built=False)
    cache_file = timing_cache_path(folder, library.version, sm)
    blob, timing, io = build_serialized(
        library,
        onnx_path,
        profile.input_shapes(spec),
        gpu_arch=sm if gpu_arch is not None else None,
        workspace=workspace,
        optimization_level=optimization_level,
        timing_cache=cache_file.read_bytes() if cache_file.is_file() else b"",
    )
    if timing is not None:
        write_atomic(cache_file, timing)
    stat = onnx_path.stat()
    facts = EngineFacts(
        onnx=onnx_path.name,
        onnx_sha256=digest,
        onnx_size=stat.st_size,
        onnx_mtime_ns=stat.st_mtime_ns,
        library=library.name,
        tensorrt=library.version,
        compute_capability=sm,
        device_name=device_name,
        precision=spec.precision,
        profile=profile,
        spec=spec.metadata(),
        io=io,
        builder={"workspace": workspace, "optimization_level": optimization_level},
        fastinv_version=fastinv.__version__,
    )
    write_engine(path, blob, facts)
    return BuiltEngine(path, facts, built=True)


@dataclass(frozen=True)
class EngineBuild:
    """One exported graph's engine: the cache entry, the profile it takes, and its TensorRT-vs-torch parity
    report (None unless asked)."""

    engine: BuiltEngine
    profile: Profile
    parity: ParityReport | None = None


def build_engines(
    references: Mapping[Path, FlowModel | TorchSolver],
    model: FlowModel,
    *,
    batch: Range,
    size: Range | None = None,
    text: Range | None = None,
    device: str = "cuda",
    gpu_arch: str | None = None,
    out: Path | None = None,
    workspace_gib: float | None = None,
    optimization_level: int = OPTIMIZATION_LEVEL,
    check: bool = False,
) -> Iterator[EngineBuild]:
    """A TensorRT engine per exported graph, yielded one by one as each is built (or reused from the cache
    beside the graph when one fits).

    references: {graph path: the torch module it came from}, as `export_model` returns. batch, size, text:
    the profile's (min, opt, max) images per call, image side in pixels and prompt tokens (text None: the
    length `model` encodes a prompt to). device: the build device (anything but "cuda…" builds on "cuda");
    gpu_arch: build ahead of time for that compute capability instead ("sm_89", TensorRT-RTX, no GPU needed;
    check then needs a GPU of that architecture); out: the engine folder (default: each graph's).
    workspace_gib: the builder's workspace limit in GiB (None: TensorRT's). check: compare every engine with
    its torch reference on random inputs (`check_parity`; FastinvError above tolerance).
    """
    from fastinv.export.onnx import check_parity

    if text is None:
        try:
            length = model.encode_prompt("")[0].shape[1]
        except FastinvError as err:
            raise FastinvError(f"give --text MIN:OPT:MAX (the prompt length in tokens): {err}") from err
        text = (length, length, length)
    build_device = device if device.startswith("cuda") else "cuda"
    for path, reference in references.items():
        profile = plan_profile(
            read_spec(path),
            batch=batch,
            size=size,
            text=text,
            scale=model.codec.scale_factor,
            source=path.name,
        )
        built = build_engine(
            path,
            profile,
            device=build_device,
            out=out,
            gpu_arch=gpu_arch,
            workspace=None if workspace_gib is None else int(workspace_gib * 2**30),
            optimization_level=optimization_level,
        )
        parity = check_parity(built.path, reference, device=build_device, backend="trt") if check else None
        yield EngineBuild(built, profile, parity)
