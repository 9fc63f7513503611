"""What a solver training run reports: its loss log (out/loss.csv), the loss plot and the fixed-point target
table."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from fastinv.files import Writer, save_csv
from fastinv.solver.steps import Steps


def loss_png(rows: list[dict[str, Any]]) -> Writer:
    """The writer of a PNG of loss vs optimiser step, one colour per round, log scale."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    for round_ in sorted({r["round"] for r in rows}):
        picked = [r for r in rows if r["round"] == round_]
        ax.plot([r["step"] for r in picked], [r["loss"] for r in picked], lw=1, label=f"round {round_}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("fit loss (mean over log interval)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return lambda tmp: fig.savefig(tmp, dpi=120, format="png")


LOG_COLUMNS = ("step", "round", "epoch", "loss", "seconds")


def write_log(out: Path, rows: list[dict[str, Any]]) -> None:
    """Write `rows` (LOG_COLUMNS: optimiser step, round, epoch, mean loss, seconds) to out/loss.csv,
    atomically."""
    save_csv(rows, LOG_COLUMNS, out / "loss.csv")


def read_log(out: Path, upto_step: int) -> list[dict[str, Any]]:
    """The rows of out/loss.csv up to optimiser step `upto_step` ([] without a log)."""
    path = out / "loss.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [
            {k: (float(v) if k in ("loss", "seconds") else int(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    return [r for r in rows if r["step"] <= upto_step]


def target_report(steps: Steps, tolerance: float) -> list[dict[str, Any]]:
    """Per schedule length T and step k: the fixed-point residuals reached (median, max), the share of
    targets below `tolerance`, and the mean denoiser calls per solve."""
    rows = []
    for t in sorted(set(steps.steps.tolist())):
        for k in range(t):
            picked = (steps.steps == t) & (steps.k == k)
            residual = steps.residual[picked]
            rows.append(
                {
                    "T": t,
                    "k": k,
                    "median_residual": float(residual.median()),
                    "max_residual": float(residual.max()),
                    "converged": float((residual < tolerance).float().mean()),
                    "mean_evaluations": float(steps.evaluations[picked].float().mean()),
                }
            )
    return rows
