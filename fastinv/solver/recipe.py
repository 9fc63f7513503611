"""The solver training recipe (`fastinv train --config`): `SolverTrainConfig`, read from JSON and checked.

DEFAULT_RECIPE is the recipe of the solver shipped with the default model; `--set KEY=VALUE` overrides it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fastinv.errors import FastinvError

DEFAULT_RECIPE = Path(__file__).with_name("default_solver.json")
"""The recipe of the solver shipped with the default model."""


@dataclass(frozen=True)
class SolverTrainConfig:
    """One training run. `size`: the crop side in pixels (None: the model's fixed resolution); `solver`
    overrides the preset's network arguments; `steps`: the schedule lengths T collected every round."""

    seed: int
    preset: str
    solver: dict[str, Any]
    size: int | None
    crops_per_image: int
    crop_scale: tuple[float, float]
    prompt: str
    steps: tuple[int, ...]
    rounds: int
    epochs: int
    batch_size: int
    fit_batch: int
    tolerance: float
    max_evaluations: int
    anderson_memory: int
    lr: float
    weight_decay: float
    grad_clip: float
    warmup: int
    log_every: int

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SolverTrainConfig:
        names = {f.name for f in fields(cls)}
        unknown, missing = set(values) - names, names - set(values)
        if unknown or missing:
            problem = f"unknown {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
            raise FastinvError(f"solver training config: {problem}")
        values = dict(values)
        for key in ("crop_scale", "steps"):
            if not isinstance(values[key], list | tuple):
                raise FastinvError(f"training option {key} must be a list, got {values[key]!r}")
            values[key] = tuple(values[key])
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def read(cls, path: Path, overrides: dict[str, Any] | None = None) -> SolverTrainConfig:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FastinvError(f"cannot read training config {path}: {err}") from err
        if not isinstance(values, dict):
            raise FastinvError(f"training config {path} must be a JSON object")
        return cls.from_dict(values | (overrides or {}))

    def validate(self) -> None:
        """One-line errors naming the option and what is allowed."""

        def integer(name: str, lo: int, hi: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise FastinvError(
                    f"training option {name} must be an integer in [{lo}, {hi}], got {value!r}"
                )

        def number(name: str, lo: float, hi: float, *, open_low: bool = False) -> None:
            value = getattr(self, name)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value > hi or value < lo or (open_low and value == lo):
                bound = "(" if open_low else "["
                raise FastinvError(
                    f"training option {name} must be a number in {bound}{lo}, {hi}], got {value!r}"
                )

        for name, lo, hi in (
            ("seed", 0, 2**63 - 1),
            ("crops_per_image", 1, 10_000),
            ("rounds", 1, 100),
            ("epochs", 1, 10_000),
            ("batch_size", 1, 4096),
            ("fit_batch", 1, 65_536),
            ("max_evaluations", 1, 10_000),
            ("anderson_memory", 1, 100),
            ("warmup", 0, 10**9),
            ("log_every", 1, 10**9),
        ):
            integer(name, lo, hi)
        number("tolerance", 0.0, 1.0, open_low=True)
        number("lr", 0.0, 1.0, open_low=True)
        number("weight_decay", 0.0, 1.0)
        number("grad_clip", 0.0, 1e6, open_low=True)
        if self.size is not None:
            integer("size", 1, 1 << 14)
        if not isinstance(self.preset, str) or not isinstance(self.prompt, str):
            raise FastinvError("training options preset and prompt must be strings")
        if not isinstance(self.solver, dict):
            raise FastinvError(
                f"training option solver must be an object of network settings, got {self.solver!r}"
            )
        if not self.steps or any(
            isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= 1000 for t in self.steps
        ):
            raise FastinvError(
                f"training option steps must be a list of integers in [1, 1000], got {list(self.steps)}"
            )
        scale = self.crop_scale
        if (
            len(scale) != 2
            or not all(isinstance(s, int | float) and math.isfinite(s) for s in scale)
            or not 1 <= scale[0] <= scale[1]
        ):
            raise FastinvError(
                f"training option crop_scale must be [lo, hi] with 1 <= lo <= hi, got {list(scale)}"
            )
