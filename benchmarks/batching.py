"""Throughput of batched vs one-at-a-time inversion (Inverter.invert_batch vs Inverter.invert) on CPU.

python benchmarks/batching.py [--methods euler,deepinv] [--steps 25] [--batches 1,4,8] [--repeats 3]

The shipped default model on 8 photos (the 6 held out of training + 2 training photos, all 64×64 after
fitting), prompt "". Batch 1 is eight `invert` calls; batch b is 8/b `invert_batch` calls. Per setting:
median wall seconds for all 8 images over --repeats runs (after one warm-up), images per second, and the
speed-up over batch 1. Also checks that every batched z_T equals its single-call z_T (max |Δ|). Writes
batching.json (figures, command, hardware, versions) to --out.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.files import save_json
from fastinv.training.photos import HELD_OUT, load_photo

PHOTOS = (*HELD_OUT, "astronaut", "moon")
console = Console()


def invert_all(
    inv: fastinv.Inverter, images: list, method: str, steps: int, batch: int
) -> list[torch.Tensor]:
    """z_T of every image, `batch` images per call (1: `invert`, else `invert_batch`)."""
    if batch == 1:
        return [inv.invert(image, method=method, steps=steps).z_T for image in images]
    return [
        inversion.z_T
        for start in range(0, len(images), batch)
        for inversion in inv.invert_batch(images[start : start + batch], method=method, steps=steps)
    ]


def measure(inv: fastinv.Inverter, images: list, method: str, steps: int, batch: int, repeats: int) -> dict:
    invert_all(inv, images, method, steps, batch)  # warm-up
    seconds, z_T = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        z_T = invert_all(inv, images, method, steps, batch)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "seconds": seconds,
        "median_seconds": median,
        "images_per_second": len(images) / median,
        "z_T": z_T,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    parser.add_argument("--methods", default="euler,deepinv")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    inv = fastinv.load(args.model, device="cpu")
    images = [inv.prepare_image(load_photo(name)) for name in PHOTOS]
    batches = [int(b) for b in args.batches.split(",")]
    rows: list[dict[str, Any]] = []
    for method in args.methods.split(","):
        single = None
        for batch in batches:
            with console.status(f"{method}, batch {batch}"):
                result = measure(inv, images, method, args.steps, batch, args.repeats)
            z_T = result.pop("z_T")
            single = single or {"z_T": z_T, "rate": result["images_per_second"]}
            result |= {
                "method": method,
                "batch": batch,
                "speedup_vs_single": result["images_per_second"] / single["rate"],
                "max_abs_diff_vs_single": max(
                    float((a - b).abs().max()) for a, b in zip(z_T, single["z_T"], strict=True)
                ),
            }
            rows.append(result)
    table = Table(title=f"Inversion throughput on CPU, {len(images)} images, {args.steps} steps")
    for column in ("method", "batch", "s (median)", "images/s", "× single", "max |Δz_T|"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(
            row["method"],
            str(row["batch"]),
            f"{row['median_seconds']:.2f}",
            f"{row['images_per_second']:.2f}",
            f"{row['speedup_vs_single']:.2f}",
            f"{row['max_abs_diff_vs_single']:.1e}",
        )
    console.print(table)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": args.steps,
        "photos": list(PHOTOS),
        "hardware": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "torch": torch.__version__,
            "diffusers": version("diffusers"),
            "fastinv": fastinv.__version__,
        },
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'batching.json')}")


if __name__ == "__main__":
    main()
