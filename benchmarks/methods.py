"""Compare inversion methods on the shipped default model: NFE, time and reconstruction fidelity.

python benchmarks/methods.py [--model DIR] [--steps 10,25,50] [--photos 6] [--out benchmarks/results]

Every method runs through the same runtime (torch, CPU here) on the same photos (skimage photos held
out of the default model's training), prompt "" and guidance 1; the reconstruction is Euler sampling
from z_T alone. deepinv uses the model folder's solver/ (the shipped one never saw these photos).
Writes methods.json (every figure, plus command, hardware and versions) to --out.
Fidelity is only meaningful on a trained model: random-weight models make every method look exact.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from default_model import invert_photos
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.io import save_json
from fastinv.methods.deepinv import REFERENCE_BLEND
from fastinv.methods.easyinv import PAPER, SDXL_CODE
from fastinv.models import DEFAULT_MODEL
from fastinv.training.photos import HELD_OUT

SETTINGS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("euler", "euler", {}),
    ("easyinv (paper: η=0.5, 5–25 %)", "easyinv", PAPER),
    ("easyinv (SDXL code: η=0.8, 85–95 %)", "easyinv", SDXL_CODE),
    ("renoise (K=4)", "renoise", {}),
    ("gnri", "gnri", {}),
    ("preciseinv (fast)", "preciseinv", {}),
    ("rf_solver", "rf_solver", {}),
    ("fireflow", "fireflow", {}),
    ("deepinv (shipped solver)", "deepinv", {}),
    ("deepinv + 0.9/0.1 blend (reference code)", "deepinv", REFERENCE_BLEND),
)
console = Console()


def run(inv: fastinv.Inverter, steps_list: list[int], photos: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (setting, steps): NFE per image, mean inversion seconds per image, mean metrics."""
    rows = []
    for steps in steps_list:
        for label, method, options in SETTINGS:
            with console.status(f"{label}, {steps} steps, {len(photos)} photos"):
                result = invert_photos(inv, photos, steps, False, method, options)
            per_photo = result["per_photo"].values()
            rows.append(
                {
                    "setting": label,
                    "method": method,
                    "options": options,
                    "steps": steps,
                    "nfe": statistics.mean(p["nfe"] for p in per_photo),
                    "seconds_per_image": statistics.mean(p["seconds_inversion"] for p in per_photo),
                    **result,
                }
            )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Inversion methods on the default model (mean over photos; reconstruction from z_T)")
    for column in ("method", "steps", "NFE", "s/image", "PSNR dB", "SSIM", "LPIPS"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        mean = row["mean"]
        lpips = "n/a" if mean["lpips"] is None else f"{mean['lpips']:.4f}"
        table.add_row(
            row["setting"],
            str(row["steps"]),
            f"{row['nfe']:.0f}",
            f"{row['seconds_per_image']:.2f}",
            f"{mean['psnr']:.2f}",
            f"{mean['ssim']:.4f}",
            lpips,
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    parser.add_argument("--steps", default="10,25,50", help="comma-separated step counts")
    parser.add_argument("--photos", type=int, default=len(HELD_OUT), help="how many held-out photos")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    inv = fastinv.load(args.model, device="cpu")
    rows = run(inv, [int(s) for s in args.steps.split(",")], HELD_OUT[: args.photos])
    print_table(rows)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(Path(args.model).resolve() if args.model else DEFAULT_MODEL),
        "hardware": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": {
            "torch": torch.__version__,
            "diffusers": version("diffusers"),
            "fastinv": fastinv.__version__,
        },
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'methods.json')}")


if __name__ == "__main__":
    main()
