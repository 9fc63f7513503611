"""From per-image rows to per-(backend, method, steps) aggregates, and the ratios the benchmark exists for.

Per backend: DeepInv time ÷ Euler time and ReNoise time ÷ DeepInv time at each step count; DeepInv minus
each baseline in PSNR / SSIM / LPIPS at equal steps, and at equal time (the baseline's metrics interpolated,
linear in log time, at DeepInv's time per image; never extrapolated); at equal cost, DeepInv against the
best training-free run of no more denoiser-equivalent cost (`fastinv.bench.cost`), any method and steps;
and the Pareto front of PSNR against cost. Only ratios whose methods ran.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import numpy as np

from fastinv.bench.cost import pareto_front

METRICS = ("psnr", "ssim", "lpips", "mse_pixel", "mse_latent")
COMPARED = ("psnr", "ssim", "lpips")
"""The metrics DeepInv is compared on (LPIPS: lower is better)."""
SPREAD = "p20–p80 of all timed inversions (images × repeats)"
OUTSIDE = "n/a (outside the measured range)"
TIME_RATIOS = (("deepinv", "euler"), ("renoise", "deepinv"))
"""(numerator, denominator) methods of the time ratios."""

Row = dict[str, Any]


def _mean(values: list[float | None]) -> float | None:
    """The mean; None if any value is missing (e.g. LPIPS unavailable, or timing only)."""
    return None if not values or any(v is None for v in values) else statistics.fmean(values)


def aggregate(rows: list[Row]) -> list[Row]:
    """One row per (backend, method, steps) of the per-image rows, in order of first appearance.

    seconds_median: median s/image over every timed inversion; seconds_p20 / seconds_p80: the SPREAD;
    nfe: per image (a mean where it varies by image); peak_mib: the highest of any image; metrics: means.
    """
    groups: dict[tuple[str, str, int], list[Row]] = {}
    for row in rows:
        groups.setdefault((row["backend"], row["method"], row["steps"]), []).append(row)
    aggregates = []
    for (backend, method, steps), group in groups.items():
        seconds = [s for row in group for s in row["seconds"]]
        p20, p80 = np.percentile(seconds, [20, 80])
        nfes = [row["nfe"] for row in group]
        costs = [row.get("cost", row["nfe"]) for row in group]
        aggregates.append(
            {
                "backend": backend,
                "method": method,
                "steps": steps,
                "images": len(group),
                "nfe": nfes[0] if len(set(nfes)) == 1 else statistics.fmean(nfes),
                "solver_calls": statistics.fmean(row.get("solver_calls", 0) for row in group),
                "cost": statistics.fmean(costs),
                "seconds_median": statistics.median(seconds),
                "seconds_p20": float(p20),
                "seconds_p80": float(p80),
                "peak_mib": max(row["peak_mib"] for row in group),
                **{key: _mean([row.get(key) for row in group]) for key in METRICS},
            }
        )
    return aggregates


def _by_method(aggregates: list[Row], backend: str) -> dict[str, dict[int, Row]]:
    table: dict[str, dict[int, Row]] = {}
    for row in aggregates:
        if row["backend"] == backend:
            table.setdefault(row["method"], {})[row["steps"]] = row
    return table


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def time_ratios(aggregates: list[Row], backend: str) -> list[Row]:
    """[{"ratio": "deepinv ÷ euler", "steps", "value"}, …]: median s/image ratios at equal steps."""
    table = _by_method(aggregates, backend)
    ratios = []
    for top, bottom in TIME_RATIOS:
        for steps in sorted(set(table.get(top, {})) & set(table.get(bottom, {}))):
            value = table[top][steps]["seconds_median"] / table[bottom][steps]["seconds_median"]
            ratios.append({"ratio": f"{top} ÷ {bottom}", "steps": steps, "value": value})
    return ratios


def equal_steps(aggregates: list[Row], backend: str) -> list[Row]:
    """[{"baseline", "steps", "psnr", "ssim", "lpips"}, …]: DeepInv minus the baseline at the same steps."""
    table = _by_method(aggregates, backend)
    ours = table.get("deepinv", {})
    rows = []
    for baseline, theirs in table.items():
        if baseline == "deepinv":
            continue
        for steps in sorted(set(ours) & set(theirs)):
            diffs = {key: _difference(ours[steps][key], theirs[steps][key]) for key in COMPARED}
            rows.append({"baseline": baseline, "steps": steps, **diffs})
    return rows


def interpolate_log_time(points: list[tuple[float, float | None]], seconds: float) -> float | None:
    """A metric at `seconds`, linear in log time between measured (seconds, metric) points; None when
    `seconds` lies outside their time range or a metric is missing. Never extrapolates."""
    known = sorted((t, m) for t, m in points if m is not None)
    if len(known) < len(points) or not known:
        return None
    times = [t for t, _ in known]
    if not times[0] <= seconds <= times[-1]:
        return None
    return float(np.interp(math.log(seconds), [math.log(t) for t in times], [m for _, m in known]))


def equal_time(aggregates: list[Row], backend: str) -> list[Row]:
    """DeepInv minus each baseline at equal time: per baseline and DeepInv step count, {"baseline", "steps",
    "seconds" (DeepInv's median s/image), "baseline_<metric>" (interpolated) and "<metric>" (the
    difference) for PSNR / SSIM / LPIPS, "note": None or OUTSIDE}."""
    table = _by_method(aggregates, backend)
    rows = []
    for baseline, theirs in table.items():
        if baseline == "deepinv":
            continue
        times = [row["seconds_median"] for row in theirs.values()]
        for steps, ours in sorted(table.get("deepinv", {}).items()):
            seconds = ours["seconds_median"]
            row: Row = {"baseline": baseline, "steps": steps, "seconds": seconds}
            inside = min(times) <= seconds <= max(times)
            for key in COMPARED:
                points = [(r["seconds_median"], r[key]) for r in theirs.values()]
                value = interpolate_log_time(points, seconds)
                row[f"baseline_{key}"] = value
                row[key] = _difference(ours[key], value)
            rows.append(row | {"note": None if inside else OUTSIDE})
    return rows


TRAINED = ("deepinv",)
"""Methods that need a trained network; every other registered method is training-free."""


def equal_cost(aggregates: list[Row], backend: str) -> list[Row]:
    """Per DeepInv step count: {"steps", "cost", "psnr", "baseline", "baseline_steps", "baseline_cost",
    "baseline_psnr", "margin"}: the training-free run (any method, any steps) of the highest PSNR among
    those costing no more than DeepInv, and DeepInv's PSNR minus its; baseline None when none is as cheap."""
    rows = [r for r in aggregates if r["backend"] == backend and r.get("psnr") is not None]
    free = [r for r in rows if r["method"] not in TRAINED]
    out = []
    for ours in sorted((r for r in rows if r["method"] == "deepinv"), key=lambda r: r["steps"]):
        cheaper = [r for r in free if r["cost"] <= ours["cost"] + 1e-9]
        best = max(cheaper, key=lambda r: r["psnr"], default=None)
        out.append(
            {
                "steps": ours["steps"],
                "cost": ours["cost"],
                "psnr": ours["psnr"],
                "baseline": None if best is None else best["method"],
                "baseline_steps": None if best is None else best["steps"],
                "baseline_cost": None if best is None else best["cost"],
                "baseline_psnr": None if best is None else best["psnr"],
                "margin": None if best is None else ours["psnr"] - best["psnr"],
            }
        )
    return out


def pareto(aggregates: list[Row], backend: str) -> list[Row]:
    """The (method, steps, cost, psnr) rows on the Pareto front of PSNR against cost, ascending cost."""
    rows = [r for r in aggregates if r["backend"] == backend and r.get("psnr") is not None]
    front = pareto_front([(r["cost"], r["psnr"]) for r in rows])
    return [{key: rows[i][key] for key in ("method", "steps", "cost", "psnr")} for i in front]


def summarize(aggregates: list[Row], *, fidelity: bool = True) -> dict[str, dict[str, list[Row]]]:
    """Per backend: {"time_ratios", "equal_steps", "equal_time", "equal_cost", "pareto"} (see the functions
    of those names); the fidelity comparisons are left out when `fidelity` is False (a timing-only run)."""
    backends = dict.fromkeys(row["backend"] for row in aggregates)
    summary = {}
    for backend in backends:
        summary[backend] = {"time_ratios": time_ratios(aggregates, backend)}
        if fidelity:
            summary[backend] |= {
                "equal_steps": equal_steps(aggregates, backend),
                "equal_time": equal_time(aggregates, backend),
                "equal_cost": equal_cost(aggregates, backend),
                "pareto": pareto(aggregates, backend),
            }
    return summary
