"""The one place method options are validated: their types and allowed ranges, checked before any work.

`check_option_values(method, options)` gives a one-line error naming the option and what is allowed;
the CLI (`--set`), the API, bench and the services all go through `fastinv.methods.check_options`, which
calls it. The method functions keep only the checks their maths needs when called directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastinv.errors import FastinvError
from fastinv.request_checks import is_finite_number, is_int


@dataclass(frozen=True)
class Rule:
    """kind: "int", "float" (finite), "window" (a pair 0 ≤ start < end ≤ 1) or "solver" (a folder path or a
    loaded SolverModel); lo / hi: the range of a number (None: unbounded); open_lo / open_hi: excluded."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    open_hi: bool = False
    open_lo: bool = False

    def allowed(self) -> str:
        if self.kind == "window":
            return "a pair [start, end] with 0 <= start < end <= 1"
        if self.kind == "solver":
            return "a solver folder"
        what = "an integer" if self.kind == "int" else "a finite number"
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.open_lo else "[", ")" if self.open_hi else "]"
            return f"{what} in {left}{self.lo:g}, {self.hi:g}{right}"
        if self.lo is not None:
            return f"{what} {'>' if self.open_lo else '>='} {self.lo:g}"
        return what

    def accepts(self, value: Any) -> bool:
        if self.kind == "solver":
            return isinstance(value, str | Path) or hasattr(value, "warm_start")
        if self.kind == "window":
            return (
                isinstance(value, list | tuple)
                and len(value) == 2
                and all(is_finite_number(v) for v in value)
                and 0 <= value[0] < value[1] <= 1
            )
        if self.kind == "int" and not is_int(value):
            return False
        if not is_finite_number(value):
            return False
        if self.lo is not None and (value <= self.lo if self.open_lo else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.open_hi else value <= self.hi)


RULES: dict[str, dict[str, Rule]] = {
    "euler": {},
    "easyinv": {"eta": Rule("float", 0, 1), "window": Rule("window")},
    "renoise": {
        "iterations": Rule("int", 0, 100),
        "average_last": Rule("int", 1, 100),
        "lambda_ac": Rule("float", 0),
        "lambda_kl": Rule("float", 0),
        "regularization_steps": Rule("int", 0, 100),
        "ac_rolls": Rule("int", 1, 100),
        "seed": Rule("int", 0, 2**63 - 1),
    },
    "gnri": {
        "iterations": Rule("int", 1, 100),
        "prior_weight": Rule("float", 0),
        "eps": Rule("float", 0, open_lo=True),
    },
    "preciseinv": {
        "eta": Rule("float", 0),
        "lr": Rule("float", 0, open_lo=True),
        "max_iters": Rule("int", 0, 10_000),
    },
    "rf_solver": {},
    "fireflow": {},
    "warm_fixed_point": {"corrections": Rule("int", 1, 100)},
    "deepinv": {
        "solver": Rule("solver"),
        "blend": Rule("float", 0, 1, open_hi=True),
        "blend_window": Rule("window"),
    },
}
"""Per registered method, the rule of each of its keyword options."""


def check_option_values(method: str, options: dict[str, Any]) -> None:
    """One-line FastinvError for the first option of `method` whose value its rule does not accept
    (None for deepinv's solver means "the model folder's")."""
    for name, value in options.items():
        rule = RULES[method][name]
        if rule.kind == "solver" and value is None:
            continue
        if not rule.accepts(value):
            raise FastinvError(f"method {method!r} option {name} must be {rule.allowed()}, got {value!r}")
