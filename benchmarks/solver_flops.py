"""Cost of each DeepInv solver preset next to the denoiser it serves: FLOPs of one forward, and parameters.

python benchmarks/solver_flops.py [--out benchmarks/results]

One forward each at batch 1: SD3 presets vs SD3-medium and "flux" vs FLUX.1-dev at 1024² (latent
16×128×128; text 333 and 512 tokens), "default-model" vs the shipped model's own denoiser at its native
64² pixels (text 16 tokens). Counted by torch's FlopCounterMode on the meta device (see
fastinv/solver/flops.py: matmuls, convolutions and attention; multiply-add = 2). Writes solver_flops.json
(every figure, plus command and versions) to --out.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.files import save_json
from fastinv.solver.flops import TARGETS, compare

console = Console()


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="DeepInv solver vs denoiser: one forward, batch 1")
    columns = ("preset", "denoiser", "resolution", "solver GFLOPs", "denoiser GFLOPs", "ratio")
    for column in (*columns, "solver params", "denoiser params"):
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in rows:
        table.add_row(
            row["preset"],
            row["denoiser"],
            row["resolution"],
            f"{row['solver_gflops']:,.2f}",
            f"{row['denoiser_gflops']:,.2f}",
            f"{row['ratio']:.1%}",
            f"{row['solver_params'] / 1e6:,.1f} M",
            f"{row['denoiser_params'] / 1e6:,.1f} M",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    for name in TARGETS:
        with console.status(f"counting {name}"):
            rows.append(compare(name))
    print_table(rows)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "counting": "FlopCounterMode on meta, math SDPA: matmul, conv, attention; multiply-add = 2",
        "versions": {
            "torch": torch.__version__,
            "diffusers": version("diffusers"),
            "fastinv": fastinv.__version__,
        },
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'solver_flops.json')}")


if __name__ == "__main__":
    main()
