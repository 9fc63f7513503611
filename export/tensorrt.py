"""ONNX → TensorRT engine: one optimization profile, strongly typed precision, a timing cache, the cache.

`build_engine` parses a graph written by `fastinv.export.onnx` with TensorRT's ONNX parser into a strongly
typed network (the precision is the graph's own: TensorRT 11 networks are always strongly typed, TensorRT
10 needs the flag), builds it for one `Profile` (`fastinv.runtime.tensorrt.profile.plan_profile`) with a
workspace limit, builder optimisation level and a timing cache kept per TensorRT version and GPU, and
writes it into the engine cache (`fastinv.runtime.tensorrt.cache`) unless an engine with the same key is
already there. `build_engines` does so for every graph `fastinv export` wrote, parity-checked if asked.
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
from fastinv.runtime.tensorrt import engine as trt_runtime
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
    """create_network flags: STRONGLY_TYPED where the enum still has it (TensorRT 10; ignored by 11)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_serialized(
    trt: Any,
    onnx_path: Path,
    shapes: dict[str, tuple[tuple[int, ...], ...]],
    *,
    workspace: int | None = None,
    optimization_level: int = OPTIMIZATION_LEVEL,
    timing_cache: bytes = b"",
) -> tuple[memoryview, bytes]:
    """(serialized engine, updated timing cache) for the ONNX graph at `onnx_path`.

    shapes: input name → (min, opt, max) shape of the one optimization profile; workspace: bytes of
    scratch memory TensorRT may use (None: its default, all device memory); timing_cache: a serialized
    cache from an earlier build on this TensorRT and GPU, or b"" for a new one.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # reads external weights beside the file
        errors = "; ".join(str(parser.get_error(i).desc()) for i in range(parser.num_errors))
        raise FastinvError(f"TensorRT cannot parse {onnx_path}: {errors or 'no reason given'}")
    config = builder.create_builder_config()
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    config.builder_optimization_level = optimization_level
    config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in shapes.items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise FastinvError(f"TensorRT could not build an engine from {onnx_path} (see its log above)")
    return memoryview(blob), bytes(memoryview(config.get_timing_cache().serialize()))


def build_engine(
    onnx_path: str | Path,
    profile: Profile,
    *,
    out: str | Path | None = None,
    device: str = "cuda",
    workspace: int | None = None,
    optimization_level: int = OPTIMIZATION_LEVEL,
    rebuild: bool = False,
) -> BuiltEngine:
    """The engine of the ONNX graph at `onnx_path` for `profile`: from the cache in `out` (default: the
    graph's folder), or built into it. Named after the graph: velocity.fp32.onnx → velocity.fp32.<key>.engine.
    """
    onnx_path = Path(onnx_path)
    trt = trt_runtime.tensorrt_module()
    spec = read_spec(onnx_path)
    sm, device_name = trt_runtime.device_facts(device)
    digest = file_sha256(onnx_path)
    folder = Path(out) if out is not None else onnx_path.parent
    key = engine_key(digest, trt.__version__, sm, profile, spec.precision)
    path = engine_path(folder, onnx_path.name.removesuffix(".onnx"), key)
    if not rebuild and path.is_file() and sidecar_path(path).is_file():
        return BuiltEngine(path, read_facts(path), built=False)
    cache_file = timing_cache_path(folder, trt.__version__, sm)
    blob, timing = build_serialized(
        trt,
        onnx_path,
        profile.input_shapes(spec),
        workspace=workspace,
        optimization_level=optimization_level,
        timing_cache=cache_file.read_bytes() if cache_file.is_file() else b"",
    )
    write_atomic(cache_file, timing)
    stat = onnx_path.stat()
    facts = EngineFacts(
        onnx=onnx_path.name,
        onnx_sha256=digest,
        onnx_size=stat.st_size,
        onnx_mtime_ns=stat.st_mtime_ns,
        tensorrt=trt.__version__,
        compute_capability=sm,
        device_name=device_name,
        precision=spec.precision,
        profile=profile,
        spec=spec.metadata(),
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
    workspace_gib: float | None = None,
    optimization_level: int = OPTIMIZATION_LEVEL,
    check: bool = False,
) -> Iterator[EngineBuild]:
    """A TensorRT engine per exported graph, yielded one by one as each is built (or reused from the cache
    beside the graph when one fits).

    references: {graph path: the torch module it came from}, as `export_model` returns. batch, size, text:
    the profile's (min, opt, max) images per call, image side in pixels and prompt tokens (text None: the
    length `model` encodes a prompt to). device: the build device (anything but "cuda…" builds on "cuda").
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
            workspace=None if workspace_gib is None else int(workspace_gib * 2**30),
            optimization_level=optimization_level,
        )
        parity = check_parity(built.path, reference, device=build_device, backend="trt") if check else None
        yield EngineBuild(built, profile, parity)
