"""What an exported graph takes and was built for, stored in its ONNX metadata_props and checked on load.

Every graph backend (ONNX Runtime, TensorRT) reads the same `GraphSpec`: the input axes (static sizes
and named dynamic ranges), the precision baked into the graph, the model family and config it was
exported from, and the fastinv version that wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fastinv.errors import FastinvError
from fastinv.request_checks import is_int

PREFIX = "fastinv."


@dataclass(frozen=True)
class Axis:
    """A dynamic axis: sizes in [min, max] (max None: unbounded) that are multiples of `multiple`.

    Axes with the same name are one size across inputs (e.g. "batch" in latents and sigma).
    """

    name: str
    min: int = 1
    max: int | None = None
    multiple: int = 1

    def fits(self, size: int) -> bool:
        return size >= self.min and (self.max is None or size <= self.max) and size % self.multiple == 0

    def __str__(self) -> str:
        top = "∞" if self.max is None else str(self.max)
        step = "" if self.multiple == 1 else f", ×{self.multiple}"
        return f"{self.name} ({self.min}..{top}{step})"


def _positive(value: Any) -> bool:
    return is_int(value) and value >= 1


def _valid_dim(dim: Any) -> bool:
    """A static size ≥ 1, or an Axis with a text name and integer bounds 1 <= min <= max, multiple ≥ 1."""
    if not isinstance(dim, Axis):
        return _positive(dim)
    if not (isinstance(dim.name, str) and _positive(dim.min) and _positive(dim.multiple)):
        return False
    return dim.max is None or (_positive(dim.max) and dim.max >= dim.min)


Dims = list[int | Axis]
"""The axes of one input: static sizes and dynamic `Axis`es."""


def normalized_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A network config as plain JSON values, without diffusers' private "_..." keys."""
    public = {key: value for key, value in config.items() if not key.startswith("_")}
    return json.loads(json.dumps(public, default=str))


@dataclass
class GraphSpec:
    """kind: "velocity" | "solver"; family: "sd3" | "flux" | "deepinv" | "deepinv-warm"; precision: "fp32" |
    "bf16" | "fp16"
    (the network's dtype inside the graph; inputs and output are float32); inputs: name → dims, in graph
    order; output: the output's name, shaped like input `output_like`; example: the axis sizes exported with;
    weights: the digest of the weights folder it was exported from (`fastinv.runtime.weights`), "" if none.
    """

    kind: str
    family: str
    precision: str
    inputs: dict[str, Dims]
    output: str
    output_like: str
    config: dict[str, Any]
    example: dict[str, int] = field(default_factory=dict)
    source: str = ""
    version: str = ""
    weights: str = ""

    def metadata(self) -> dict[str, str]:
        """The spec as ONNX metadata_props (string → string)."""
        inputs = {
            name: [axis if isinstance(axis, int) else vars(axis) for axis in dims]
            for name, dims in self.inputs.items()
        }
        values = {
            "kind": self.kind,
            "family": self.family,
            "precision": self.precision,
            "inputs": json.dumps(inputs),
            "output": self.output,
            "output_like": self.output_like,
            "config": json.dumps(self.config, sort_keys=True),
            "example": json.dumps(self.example),
            "source": self.source,
            "version": self.version,
            "weights": self.weights,
        }
        return {PREFIX + key: value for key, value in values.items()}

    @classmethod
    def from_metadata(cls, props: Mapping[str, str], source: Path) -> GraphSpec:
        """Inverse of `metadata`; a one-line error for graphs fastinv did not write."""
        names = {f.name for f in fields(cls)}
        values = {key[len(PREFIX) :]: value for key, value in props.items() if key.startswith(PREFIX)}
        values = {key: value for key, value in values.items() if key in names}
        try:
            inputs = {
                name: [axis if isinstance(axis, int) else Axis(**axis) for axis in dims]
                for name, dims in json.loads(values.pop("inputs")).items()
            }
            spec = cls(
                inputs=inputs,
                config=json.loads(values.pop("config")),
                example=json.loads(values.pop("example")),
                **values,
            )
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise FastinvError(f"{source} has no fastinv metadata: fastinv.export did not write it") from err
        problem = spec._problem()
        if problem is not None:
            raise FastinvError(f"{source}: its fastinv metadata is malformed ({problem}): export it again")
        return spec

    def _problem(self) -> str | None:
        """What is out of range in a spec read from a file (untrusted), or None."""
        families = ("sd3", "flux", "deepinv", "deepinv-warm")
        if self.kind not in ("velocity", "solver") or self.precision not in ("fp32", "bf16", "fp16"):
            return f"kind {self.kind!r}, precision {self.precision!r}"
        if self.family not in families:
            return f"family {self.family!r}"
        if not isinstance(self.config, dict) or not isinstance(self.example, dict):
            return "config and example must be objects"
        if not all(_positive(size) for size in self.example.values()):
            return f"example sizes {self.example}"
        if not self.inputs or self.output_like not in self.inputs:
            return f"output_like {self.output_like!r} is not an input"
        for name, dims in self.inputs.items():
            if not all(_valid_dim(dim) for dim in dims):
                return f"input {name}'s axes {dims}"
        return None

    def describe(self, name: str) -> str:
        return "[" + ", ".join(str(axis) for axis in self.inputs[name]) + "]"

    def expect(self, source: Path, *, kind: str, precision: str | None = None) -> None:
        """One-line errors when the graph is of another kind or precision than the caller needs."""
        if self.kind != kind:
            raise FastinvError(f"{source} is a {self.kind} graph, not a {kind} graph")
        if precision is not None and precision != self.precision:
            raise FastinvError(
                f"{source} was exported in {self.precision}, not {precision}: "
                f"export again with precision {precision}"
            )

    def expect_model(self, source: Path, family: str, config: Mapping[str, Any]) -> None:
        """One-line error when the graph was exported from another network than `config` describes."""
        if family != self.family:
            raise FastinvError(f"{source} was exported for a {self.family} model, not {family}")
        theirs = normalized_config(config)
        differ = sorted(k for k in self.config.keys() | theirs.keys() if self.config.get(k) != theirs.get(k))
        if differ:
            detail = ", ".join(f"{k} {self.config.get(k)} vs {theirs.get(k)}" for k in differ[:4])
            raise FastinvError(f"{source} was exported for another model: config differs in {detail}")

    def check_inputs(self, shapes: Mapping[str, tuple[int, ...]], source: Path) -> dict[str, int]:
        """Validate input shapes against the graph's axes; returns the dynamic axis sizes by name."""
        missing, extra = self.inputs.keys() - shapes.keys(), shapes.keys() - self.inputs.keys()
        if missing or extra:
            raise FastinvError(
                f"{source} takes inputs {', '.join(self.inputs)}; missing {sorted(missing) or 'none'}, "
                f"unexpected {sorted(extra) or 'none'} (exported for another model?)"
            )
        sizes: dict[str, int] = {}
        for name, dims in self.inputs.items():
            shape = tuple(shapes[name])
            reason = _mismatch(shape, dims, sizes)
            if reason is not None:
                raise FastinvError(
                    f"{source}: input {name!r} has shape {list(shape)}, the graph takes "
                    f"{self.describe(name)}: {reason}"
                )
        return sizes


def _mismatch(shape: tuple[int, ...], dims: Dims, sizes: dict[str, int]) -> str | None:
    """Why `shape` does not fit `dims` (None if it does); records dynamic axis sizes in `sizes`."""
    if len(shape) != len(dims):
        return f"rank {len(shape)}, not {len(dims)}"
    for size, axis in zip(shape, dims, strict=True):
        if isinstance(axis, int):
            if size != axis:
                return f"size {size} where the export has {axis} (exported for another model?)"
        elif not axis.fits(size):
            return f"{axis.name} {size} is not in {axis}"
        elif sizes.setdefault(axis.name, size) != size:
            return f"{axis.name} {size} differs from {sizes[axis.name]} in another input"
    return None


def read_spec(path: str | Path) -> GraphSpec:
    """The GraphSpec stored in an ONNX file (weights in external data are not read)."""
    import onnx  # the optional [onnx] extra: imported only where a graph is read

    source = Path(path)
    if not source.is_file():
        raise FastinvError(f"no ONNX graph at {source}: export one first (fastinv export)")
    try:
        model = onnx.load(str(source), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError, OSError, ValueError…
        raise FastinvError(f"cannot read ONNX graph {source}: {err}") from err
    return GraphSpec.from_metadata({p.key: p.value for p in model.metadata_props}, source)
