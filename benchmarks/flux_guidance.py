"""Embedded guidance of FLUX-dev for inversion and for regeneration, measured on a tiny FLUX-dev folder.

python benchmarks/flux_guidance.py [--folder DIR] [--steps 10] [--out benchmarks/results]

FLUX-dev takes its guidance as an input (no CFG). RF-Solver and FireFlow invert at 1 and regenerate at their
sampling value; FluxPipeline samples at 3.5. For every (inversion g, regeneration g) in GUIDANCE², and for
Euler and warm_fixed_point inversion, this inverts 4 random images and regenerates from z_T alone, and
records the latent MSE of the regeneration against x0, and how far z_T is from N(0, I) (|mean|, |std − 1|).
The folder is written with the tests' tiny-model builder (random weights: the figures say how the two
values interact, not how a trained FLUX-dev edits). Writes flux_guidance.json.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_models import make_tiny_flux

import fastinv
from fastinv.bench.report import environment
from fastinv.files import save_json
from fastinv.methods import get_method
from fastinv.sampling import sample_euler

GUIDANCE = (1.0, 2.0, 3.5)
METHODS = ("euler", "warm_fixed_point")
console = Console()


def measure(folder: Path, steps: int) -> list[dict[str, Any]]:
    model = fastinv.load(folder, device="cpu").model
    x0 = torch.randn(4, model.codec.channels, 16, 16, generator=torch.Generator().manual_seed(0))
    sigmas = model.sigmas(steps, (16, 16))
    rows = []
    for method in METHODS:
        for g_inv in GUIDANCE:
            cond = model.conditioning("a photo", 1.0, g_inv)
            z_T = get_method(method)(model.velocity, x0, sigmas, cond).z_T
            for g_rec in GUIDANCE:
                back, _ = sample_euler(model.velocity, z_T, sigmas, model.conditioning("a photo", 1.0, g_rec))
                rows.append(
                    {
                        "method": method,
                        "inversion_guidance": g_inv,
                        "regeneration_guidance": g_rec,
                        "mse_latent": float((back - x0).pow(2).mean()),
                        "z_T_mean": float(z_T.mean()),
                        "z_T_std": float(z_T.std()),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, help="a FLUX-dev folder (default: a fresh tiny one)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or make_tiny_flux(Path(tmp) / "flux_dev", guidance_embeds=True)
        rows = measure(folder, args.steps)
    table = Table(title=f"tiny FLUX-dev, {args.steps} steps: latent MSE of the regeneration from z_T")
    for column in ("method", "inversion g", "regeneration g", "MSE latent", "z_T mean", "z_T std"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for r in rows:
        table.add_row(
            r["method"],
            f"{r['inversion_guidance']:g}",
            f"{r['regeneration_guidance']:g}",
            f"{r['mse_latent']:.3e}",
            f"{r['z_T_mean']:+.3f}",
            f"{r['z_T_std']:.3f}",
        )
    console.print(table)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folder": str(args.folder or "tiny random FLUX-dev (tests/tiny_models.make_tiny_flux)"),
        "steps": args.steps,
        **environment(torch.device("cpu")),
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'flux_guidance.json')}")


if __name__ == "__main__":
    main()
