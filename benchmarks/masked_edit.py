"""Masked (local) edits on the shipped default model: does the outside stay put, does the inside edit?

python benchmarks/masked_edit.py [--steps 25] [--method deepinv] [--out benchmarks/results]

For the held-out photos and target prompts of benchmarks/edit_grid.py, each inverted with its caption, the
central 32×32 square of the 64×64 image is editable (feather `masks.DEFAULT_FEATHER` px). At each strength η
(RF-Inversion's control over the first 25 % of the steps) the same z_T is edited with and without the mask.
PSNR dB, by region of the mask (outside: weight 0; inside: weight > 0; core: weight 1, past the feather):
- masked edit vs reconstruction outside: the requirement is >= 40 dB;
- masked edit vs the unmasked edit inside and in the core: high when the inside edits as the unmasked one;
- unmasked and masked edit vs reconstruction in the core: low when the edit changes the image there.
Writes masked_edit.json (every figure, command, hardware, versions) to --out and prints the table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from edit_grid import EDITS, STOP
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.bench.report import environment
from fastinv.files import save_json
from fastinv.masks import DEFAULT_FEATHER, region_psnr
from fastinv.training.photos import CAPTIONS, load_photo

STRENGTHS = (0.9, 0.5)
console = Console()


def square_mask(side: int = 64, inner: int = 32) -> np.ndarray:
    """A side×side uint8 mask whose central inner×inner square is white (editable)."""
    mask = np.zeros((side, side), np.uint8)
    lo = (side - inner) // 2
    mask[lo : lo + inner, lo : lo + inner] = 255
    return mask


def measure(inv: fastinv.Inverter, method: str, steps: int, mask: np.ndarray) -> list[dict[str, Any]]:
    """One row per photo × strength: PSNR dB by mask region, and the seconds of both edits."""
    rows = []
    for photo, target in EDITS:
        inversion = inv.invert(
            load_photo(photo), prompt=CAPTIONS[photo], method=method, steps=steps, keep_trajectory=True
        )
        reconstruction = inv.reconstruct(inversion)
        source, rec = inversion.image.pixels, reconstruction.pixels
        for strength in STRENGTHS:
            kwargs = {"target_prompt": CAPTIONS[target], "strength": strength, "stop": STOP}
            masked = inv.edit(inversion, mask=mask, **kwargs)
            unmasked = inv.edit(inversion, **kwargs)
            local, full, weights = masked.edited.pixels, unmasked.edited.pixels, masked.mask.weights
            outside, inside, core = weights == 0, weights > 0, weights == 1
            rows.append(
                {
                    "photo": photo,
                    "target_prompt": CAPTIONS[target],
                    "strength": strength,
                    "reconstruction_vs_source": region_psnr(rec, source, torch.ones_like(outside)),
                    "outside_masked_vs_reconstruction": region_psnr(local, rec, outside),
                    "outside_masked_vs_source": region_psnr(local, source, outside),
                    "outside_unmasked_vs_reconstruction": region_psnr(full, rec, outside),
                    "inside_masked_vs_unmasked": region_psnr(local, full, inside),
                    "core_masked_vs_unmasked": region_psnr(local, full, core),
                    "core_unmasked_vs_reconstruction": region_psnr(full, rec, core),
                    "core_masked_vs_reconstruction": region_psnr(local, rec, core),
                    "seconds_masked_edit": masked.edited.seconds,
                    "seconds_unmasked_edit": unmasked.edited.seconds,
                }
            )
    return rows


COLUMNS = {
    "recon vs src": "reconstruction_vs_source",
    "out: masked vs recon": "outside_masked_vs_reconstruction",
    "out: unmasked vs recon": "outside_unmasked_vs_reconstruction",
    "in: masked vs unmasked": "inside_masked_vs_unmasked",
    "core: masked vs unmasked": "core_masked_vs_unmasked",
    "core: unmasked vs recon": "core_unmasked_vs_reconstruction",
    "core: masked vs recon": "core_masked_vs_reconstruction",
}


def table(rows: list[dict[str, Any]], title: str) -> Table:
    """The rows as a rich table of PSNR dB."""
    out = Table(title=title)
    for column in ("photo → target", "η", *COLUMNS):
        out.add_column(column, justify="left" if column == "photo → target" else "right")
    for row in rows:
        figures = [f"{row[key]:.2f}" for key in COLUMNS.values()]
        out.add_row(f"{row['photo']} → {row['target_prompt']}", f"{row['strength']}", *figures)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="deepinv")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    inv = fastinv.load(device="cpu")
    mask = square_mask()
    rows = measure(inv, args.method, args.steps, mask)
    console.print(table(rows, f"Masked edits, PSNR dB ({args.method}, {args.steps} steps, 32×32 of 64×64)"))
    worst = min(row["outside_masked_vs_reconstruction"] for row in rows)
    console.print(f"outside the mask, masked edit vs reconstruction: worst {worst:.2f} dB (required: >= 40)")
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": "shipped default model (64×64, pixel space)",
        "method": args.method,
        "steps": args.steps,
        "stop": STOP,
        "mask": {"editable": "central 32×32 square of 64×64", "feather_px": DEFAULT_FEATHER},
        "regions": "outside: weight 0; inside: weight > 0; core: weight 1 (past the feather)",
        **environment(torch.device("cpu")),
        "worst_outside_masked_vs_reconstruction": worst,
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'masked_edit.json')}")


if __name__ == "__main__":
    main()
