"""DeepInv ablations on the shipped default model: curriculum, pseudo-labels, where the depth goes.

python benchmarks/deepinv_ablations.py --work DIR [--variants a,b] [--steps 10,25,50] [--out DIR]

Each variant is the shipped recipe (fastinv/solver/default_solver.json) at a reduced budget (BUDGET: two
rounds, 2 crops per photo, one epoch per T ≥ 5) with one change; all train on the same crops of the 14 photos
and are scored on the 6 held-out photos from z_T alone. Training is skipped for a variant that
finished under --work (an interrupted one resumes). Writes deepinv_ablations.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from default_model import invert_photos
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.io import save_json
from fastinv.solver.training import CHECKPOINT, DEFAULT_RECIPE, SolverTrainConfig, train_solver
from fastinv.training.photos import HELD_OUT

BUDGET: dict[str, Any] = {
    "rounds": 2,
    "crops_per_image": 2,
    "curriculum": [[1, 2], [5, 1], [10, 1], [25, 1], [50, 1]],
}
VARIANTS: dict[str, dict[str, Any]] = {
    "baseline (1 left + 2 right, curriculum, pseudo-labels)": {},
    "T = 50 only (same rounds, ~same optimiser steps)": {"curriculum": [[50, 2]]},
    "fixed-point loss only (no pseudo-labels)": {"pseudo_labels": False},
    "more right: 1 left + 3 right": {"solver": {"right_layers": 3}},
    "more left: 2 left + 2 right": {"solver": {"left_layers": 2}},
}
KEYS = dict(
    zip(VARIANTS, ("baseline", "t50_only", "fixed_point_only", "more_right", "more_left"), strict=True)
)
console = Console()


def train_variant(inv: fastinv.Inverter, name: str, work: Path) -> dict[str, Any]:
    """Train variant `name` under work/KEY (resuming an interrupted run); a finished one is reused."""
    out = work / KEYS[name]
    if (out / "log.json").is_file():
        return json.loads((out / "log.json").read_text())
    config = SolverTrainConfig.read(DEFAULT_RECIPE, BUDGET | VARIANTS[name])
    return train_solver(inv.model, config, "skimage", out, resume=(out / CHECKPOINT).is_dir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the variants' solvers")
    parser.add_argument("--variants", default=",".join(KEYS.values()))
    parser.add_argument("--steps", default="10,25,50")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--train-only", action="store_true", help="train the variants, score nothing")
    args = parser.parse_args()
    wanted = args.variants.split(",")
    inv = fastinv.load(device="cpu")
    rows: list[dict[str, Any]] = []
    for name, key in KEYS.items():
        if key not in wanted:
            continue
        training = train_variant(inv, name, args.work)
        if args.train_only:
            continue
        for steps in (int(s) for s in args.steps.split(",")):
            result = invert_photos(
                inv, HELD_OUT, steps, False, "deepinv", {"solver": args.work / key / "solver"}
            )
            rows.append({"variant": name, "key": key, "steps": steps, "training": training, **result})
            console.print(f"{key} T={steps}: {result['mean']}")
    if args.train_only:
        return
    table = Table(title="DeepInv ablations (6 held-out photos, reconstruction from z_T)")
    for column in ("variant", "T", "PSNR dB", "SSIM", "LPIPS"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        mean = row["mean"]
        table.add_row(
            row["variant"],
            str(row["steps"]),
            f"{mean['psnr']:.2f}",
            f"{mean['ssim']:.4f}",
            "n/a" if mean["lpips"] is None else f"{mean['lpips']:.4f}",
        )
    console.print(table)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget": BUDGET,
        "variants": VARIANTS,
        "hardware": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "fastinv": fastinv.__version__},
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'deepinv_ablations.json')}")


if __name__ == "__main__":
    main()
