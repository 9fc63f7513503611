"""TensorRT optimization profiles as plain data: (min, opt, max) per dynamic axis of a graph.

`plan_profile` turns the CLI's `--batch 1:2:4 --size MIN:OPT:MAX --text MIN:OPT:MAX` into a `Profile` for
one exported graph, checked against the axes its `GraphSpec` was exported with; the engine records the
profile and `Profile.check_sizes` refuses calls outside it. Height and width are latent pixels inside a
profile and image pixels (× `scale`, the VAE factor) in every option and message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastinv.errors import FastinvError
from fastinv.runtime.spec import Axis, GraphSpec

Range = tuple[int, int, int]
"""(min, opt, max) of one axis."""
SPATIAL = ("height", "width")
OPTIONS = {"batch": "--batch", "height": "--size", "width": "--size", "text": "--text"}


def parse_range(text: str, option: str = "range") -> Range:
    """ "1:2:4" → (1, 2, 4); "8" → (8, 8, 8). Sizes are positive and min ≤ opt ≤ max."""
    parts = text.split(":")
    try:
        values = [int(part) for part in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3 or not 0 < values[0] <= values[1] <= values[2]:
        raise FastinvError(f"{option} {text!r}: give MIN:OPT:MAX (or one size) with 0 < MIN ≤ OPT ≤ MAX")
    return values[0], values[1], values[2]


def _format(values: Range, sep: str = ":") -> str:
    return sep.join(str(v) for v in values)


@dataclass(frozen=True)
class Profile:
    """One optimization profile. axes: dynamic axis name → (min, opt, max), height and width in latent
    pixels; scale: image pixels per latent pixel (the VAE factor), for messages in image pixels."""

    axes: dict[str, Range]
    scale: int = 1

    def _unit(self, name: str) -> int:
        return self.scale if name in SPATIAL else 1

    def input_shapes(self, spec: GraphSpec) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Input name → (min, opt, max) shapes, for every input with a dynamic axis (profile.set_shape)."""
        shapes = {}
        for name, dims in spec.inputs.items():
            if all(isinstance(axis, int) for axis in dims):
                continue
            shapes[name] = tuple(
                tuple(axis if isinstance(axis, int) else self.axes[axis.name][i] for axis in dims)
                for i in range(3)
            )
        return shapes

    def check_sizes(self, sizes: Mapping[str, int], source: str | Path = "the engine") -> None:
        """One-line error for a call whose dynamic axis sizes (latent pixels) fall outside the profile."""
        for name, size in sizes.items():
            low, _, high = self.axes[name]
            if not low <= size <= high:
                unit = self._unit(name)
                raise FastinvError(
                    f"{source}: {name} {size * unit} is outside the engine's profile "
                    f"{low * unit}..{high * unit}: build an engine whose {OPTIONS[name]} covers it"
                )

    def describe(self) -> str:
        """ "batch 1:1:2, height 512:768:1024 px, …" in image pixels."""
        return ", ".join(
            f"{name} {_format(tuple(v * self._unit(name) for v in values))}{' px' if name in SPATIAL else ''}"
            for name, values in self.axes.items()
        )

    def to_json(self) -> dict[str, Any]:
        return {"axes": {name: list(values) for name, values in self.axes.items()}, "scale": self.scale}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Profile:
        return cls({name: tuple(values) for name, values in data["axes"].items()}, int(data["scale"]))


def _latent(size: Range, scale: int) -> Range:
    if any(side % scale for side in size):
        raise FastinvError(f"--size {_format(size)}: sides must be multiples of the VAE factor {scale}")
    low, opt, high = (side // scale for side in size)
    return low, opt, high


def plan_profile(
    spec: GraphSpec,
    *,
    batch: Range,
    size: Range | None = None,
    text: Range | None = None,
    scale: int = 1,
    source: str | Path = "the graph",
) -> Profile:
    """The profile for `spec`'s dynamic axes from the CLI ranges.

    batch: images per call (CFG doubles it); size: image side in pixels, for height and width alike
    (latent = pixels ÷ `scale`); text: prompt length in tokens. A graph with a fixed height/width takes
    only that size (or none); ranges outside the exported axes, or off their grid, are one-line errors.
    """
    asked: dict[str, Range | None] = {"batch": batch, "text": text}
    latent = None if size is None else _latent(size, scale)
    asked["height"] = asked["width"] = latent
    axes: dict[str, Range] = {}
    for dims in spec.inputs.values():
        for axis in dims:
            if isinstance(axis, Axis) and axis.name not in axes:
                axes[axis.name] = _fit(axis, asked.get(axis.name), scale, source)
    fixed = [
        side
        for name, side in zip(SPATIAL, spec.inputs[spec.output_like][2:], strict=True)
        if name not in axes
    ]
    if fixed and latent is not None and any(latent != (side, side, side) for side in fixed):
        sides = "×".join(str(side * scale) for side in spec.inputs[spec.output_like][2:])
        raise FastinvError(
            f"{source} has a fixed size {sides} px: --size must be {fixed[0] * scale} or omitted"
        )
    return Profile(axes, scale)


def _fit(axis: Axis, values: Range | None, scale: int, source: str | Path) -> Range:
    """`values` for `axis`, or a one-line error naming the option and the exported range."""
    option = OPTIONS.get(axis.name, axis.name)
    unit = scale if axis.name in SPATIAL else 1
    if values is None:
        raise FastinvError(f"{source} has a dynamic {axis.name}: give {option} MIN:OPT:MAX")
    for value in values:
        if not axis.fits(value):
            top = "∞" if axis.max is None else str(axis.max * unit)
            step = "" if axis.multiple * unit == 1 else f" in multiples of {axis.multiple * unit}"
            asked = _format(tuple(v * unit for v in values))
            raise FastinvError(
                f"{option} {asked}: {axis.name} {value * unit} does not fit what {source} was exported for: "
                f"{axis.min * unit}..{top}{step}"
            )
    return values
