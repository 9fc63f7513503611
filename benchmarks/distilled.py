"""Inversion on a FLUX.1-schnell-like folder against a FLUX.1-dev-like one, on tiny random-weight folders.

python benchmarks/distilled.py [--schnell DIR] [--dev DIR] [--out benchmarks/results]

For each folder, method (METHODS) and step count (STEPS) this inverts 4 random latents x0 [4, 4, 16, 16]
with the prompt "a photo", regenerates from z_T alone and records the latent MSE of the regeneration
against x0. The folders are written with the tests' tiny-model builder: the schnell-like one has no
guidance embedding, the dev-like one has it. Their weights are random, so neither is distilled: a
random transformer's velocity is nearly constant and every method looks almost exact on it (DESIGN §4).
The figures show that inversion runs on both layouts and how the layouts differ; they say nothing about
how much worse a real FLUX.1-schnell inverts. Writes distilled.json.
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
from fastinv.models.variants import distilled_warning
from fastinv.sampling import sample_euler

METHODS = ("euler", "warm_fixed_point")
STEPS = (4, 28)
console = Console()


def measure(folders: dict[str, Path], steps: tuple[int, ...] = STEPS) -> list[dict[str, Any]]:
    """One row per (folder label, method, steps): the regeneration's latent MSE against x0, and whether
    fastinv warns that the folder is a distilled few-step model."""
    rows = []
    for label, folder in folders.items():
        model = fastinv.load(folder, device="cpu").model
        x0 = torch.randn(4, model.codec.channels, 16, 16, generator=torch.Generator().manual_seed(0))
        for count in steps:
            sigmas = model.sigmas(count, (16, 16))
            cond = model.conditioning("a photo", inverting=True)
            for method in METHODS:
                z_T = get_method(method)(model.velocity, x0, sigmas, cond).z_T
                back, _ = sample_euler(model.velocity, z_T, sigmas, cond)
                rows.append(
                    {
                        "folder": label,
                        "warned_distilled": distilled_warning(model) is not None,
                        "method": method,
                        "steps": count,
                        "mse_latent": float((back - x0).pow(2).mean()),
                    }
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schnell", type=Path, help="a FLUX.1-schnell folder (default: a fresh tiny one)")
    parser.add_argument("--dev", type=Path, help="a FLUX.1-dev folder (default: a fresh tiny one)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            "schnell-like": args.schnell or make_tiny_flux(Path(tmp) / "schnell"),
            "dev-like": args.dev or make_tiny_flux(Path(tmp) / "dev", guidance_embeds=True),
        }
        rows = measure(folders)
    table = Table(title="latent MSE of the regeneration from z_T (tiny random-weight FLUX folders)")
    for column in ("folder", "warned", "method", "steps", "MSE latent"):
        table.add_column(column, justify="left" if column in ("folder", "method") else "right")
    for r in rows:
        warned = "yes" if r["warned_distilled"] else "no"
        table.add_row(r["folder"], warned, r["method"], str(r["steps"]), f"{r['mse_latent']:.2e}")
    console.print(table)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "folders": {
            "schnell-like": str(args.schnell or "tiny random FLUX, guidance_embeds=False (make_tiny_flux)"),
            "dev-like": str(args.dev or "tiny random FLUX, guidance_embeds=True (make_tiny_flux)"),
        },
        "note": "random weights: no folder is distilled, and every method looks almost exact on them",
        **environment(torch.device("cpu")),
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'distilled.json')}")


if __name__ == "__main__":
    main()
