"""The TensorRT engine cache as plain files: keys, atomic writes, JSON sidecars and the checks on load.

An engine is `<stem>.<key16>.engine` (stem: "velocity.fp32", "solver.bf16") next to a sidecar
`<stem>.<key16>.engine.json` holding the `EngineFacts` it was built from and for. The key is the sha256 of
(ONNX file hash, library (TensorRT or TensorRT-RTX) and its version, GPU compute capability, profile,
precision): any change builds a new
engine instead of reusing a stale one. Engines are written to a temporary name and renamed, the sidecar
last, so a reader never sees half an engine.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastinv.errors import FastinvError
from fastinv.files import publish_files
from fastinv.runtime.spec import GraphSpec
from fastinv.runtime.tensorrt.library import RTX_ARCHS, TITLES
from fastinv.runtime.tensorrt.profile import Profile

SUFFIX = ".engine"
REBUILD = "rebuild it with `fastinv export --format trt`"


def file_sha256(path: str | Path) -> str:
    """sha256 of an ONNX file and, when present, its external weights (`<name>.data`), in that order."""
    digest = hashlib.sha256()
    source = Path(path)
    for part in (source, source.with_name(source.name + ".data")):
        if part.is_file():
            with part.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()


def engine_key(
    onnx_sha256: str,
    library: str,
    version: str,
    compute_capability: str,
    profile: Profile,
    precision: str,
) -> str:
    """The cache key: sha256 (hex) of everything that makes one engine unusable in place of another."""
    facts = {
        "onnx": onnx_sha256,
        "library": library,
        "tensorrt": version,
        "sm": compute_capability,
        "profile": profile.to_json(),
        "precision": precision,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()


def engine_path(folder: str | Path, stem: str, key: str) -> Path:
    """Where the engine with cache key `key` lives: `<folder>/<stem>.<key[:16]>.engine`."""
    return Path(folder) / f"{stem}.{key[:16]}{SUFFIX}"


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Write `data` to a temporary file next to `path`, then rename it over `path` (`publish_files`)."""
    publish_files({path: lambda tmp: tmp.write_bytes(data)})


@dataclass(frozen=True)
class EngineFacts:
    """An engine's sidecar. onnx: the graph's file name; onnx_size / onnx_mtime_ns: its stat when built
    (a cheap staleness test before hashing); library / tensorrt: the library ("tensorrt", "tensorrt_rtx")
    and version that built it; compute_capability: the GPU architecture it runs on ("sm_89"); spec: the
    graph's GraphSpec metadata; io: the parsed network's IO (`fastinv.export.tensorrt.network_io`);
    builder: build settings."""

    onnx: str
    onnx_sha256: str
    onnx_size: int
    onnx_mtime_ns: int
    library: str
    tensorrt: str
    compute_capability: str
    device_name: str
    precision: str
    profile: Profile
    spec: dict[str, str]
    io: dict[str, dict[str, Any]] = field(default_factory=dict)
    builder: dict[str, Any] = field(default_factory=dict)
    fastinv_version: str = ""

    @property
    def key(self) -> str:
        return engine_key(
            self.onnx_sha256,
            self.library,
            self.tensorrt,
            self.compute_capability,
            self.profile,
            self.precision,
        )

    @property
    def built_by(self) -> str:
        """ "TensorRT-RTX 1.7.1.116" """
        return f"{TITLES.get(self.library, self.library)} {self.tensorrt}"

    def graph_spec(self, source: Path) -> GraphSpec:
        return GraphSpec.from_metadata(self.spec, source)

    def to_json(self) -> dict[str, Any]:
        data = dict(vars(self))
        data["profile"] = self.profile.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EngineFacts:
        return cls(**{**data, "profile": Profile.from_json(data["profile"])})


def write_engine(path: Path, blob: bytes | memoryview, facts: EngineFacts) -> None:
    """The engine, then its sidecar, each atomically: an engine without a sidecar is never picked up."""
    write_atomic(path, blob)
    write_atomic(sidecar_path(path), json.dumps(facts.to_json(), indent=1, sort_keys=True).encode())


def read_facts(engine: Path) -> EngineFacts:
    """The sidecar of `engine`; a one-line error when the engine or its sidecar is missing or unreadable."""
    if not engine.is_file():
        raise FastinvError(f"no TensorRT engine at {engine}: {REBUILD}")
    sidecar = sidecar_path(engine)
    try:
        return EngineFacts.from_json(json.loads(sidecar.read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise FastinvError(f"{engine} has no readable sidecar {sidecar.name}: {REBUILD}") from err


def check_built_for(
    facts: EngineFacts, engine: Path, *, versions: Mapping[str, str], compute_capability: str
) -> None:
    """One-line error when the engine was built by a library or version not installed here (`versions`:
    library name → version, of those importable) or for another GPU architecture."""
    if versions.get(facts.library) != facts.tensorrt:
        here = versions.get(facts.library)
        has = f"this has {TITLES.get(facts.library, facts.library)} {here}" if here else "which is not here"
        raise FastinvError(f"{engine.name}: engine built by {facts.built_by}, {has}: {REBUILD}")
    if facts.compute_capability != compute_capability:
        raise FastinvError(
            f"{engine.name}: built for {facts.compute_capability} ({facts.device_name}), "
            f"this GPU is {compute_capability}: {REBUILD} on this GPU"
            + (f" or with --gpu-arch {compute_capability}" if compute_capability in RTX_ARCHS else "")
        )


def check_fresh(facts: EngineFacts, engine: Path) -> None:
    """One-line error when the ONNX graph next to the engine changed since the engine was built from it."""
    onnx = engine.with_name(facts.onnx)
    if not onnx.is_file():
        return  # an engine may travel without its graph
    stat = onnx.stat()
    if (stat.st_size, stat.st_mtime_ns) == (facts.onnx_size, facts.onnx_mtime_ns):
        return
    if file_sha256(onnx) != facts.onnx_sha256:
        raise FastinvError(f"{engine.name} is stale: {facts.onnx} was exported again after it; {REBUILD}")


def engines_in(folder: str | Path) -> list[tuple[Path, EngineFacts]]:
    """Every engine in `folder` with its sidecar, by name; one-line error when `folder` is not a folder or
    an engine's sidecar is unreadable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FastinvError(f"engine folder not found: {folder}")
    return [(engine, read_facts(engine)) for engine in sorted(folder.glob(f"*{SUFFIX}"))]


def find_engine(
    folder: str | Path, stem: str, *, versions: Mapping[str, str], compute_capability: str
) -> Path:
    """The newest `<stem>.*.engine` in `folder` built by a TensorRT library installed here (`versions`: name
    → version) for this GPU from the graph beside it.

    When none fits, the error says why the newest one does not.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FastinvError(f"engine folder not found: {folder}")
    engines = sorted(folder.glob(f"{stem}.*{SUFFIX}"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
    if not engines:
        held = sorted(p.name for p in folder.glob(f"*{SUFFIX}")) or ["none"]
        raise FastinvError(
            f"no {stem} TensorRT engine in {folder} (engines there: {', '.join(held)}): build one with "
            f"`fastinv export --format trt --precision {stem.rpartition('.')[2]} --out {folder}`"
        )
    first_error = None
    for engine in engines:
        try:
            facts = read_facts(engine)
            check_built_for(facts, engine, versions=versions, compute_capability=compute_capability)
            check_fresh(facts, engine)
        except FastinvError as err:
            first_error = first_error or err
            continue
        return engine
    assert first_error is not None
    raise first_error
