"""DeepInv ablations on the shipped default model: design, tokens, capacity, targets, one round vs two.

python benchmarks/deepinv_ablations.py --work DIR [--reuse RUN] [--variants a,b] [--steps 4,6,10,25,50]
                                       [--out benchmarks/results]

Each variant is the shipped recipe (fastinv/solver/default_solver.json) at a reduced budget (BUDGET: one
round of collection and fit) with one change, trained by the same trainer on the same crops of the 14
photos and scored on the 6 held-out photos from z_T alone, with its denoiser-equivalent cost.

Round 0 collects with the untrained solver. An untrained warm-start solver returns v whatever its size
(zero-initialised output), so every warm-start variant with the baseline's collection settings collects
the same steps: with --reuse RUN (a finished `fastinv train` run of the shipped recipe) its round-0 step
files are linked into those variants' folders instead of being collected again. Training is skipped for
a variant that finished under --work (an interrupted one resumes). Writes deepinv_ablations.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from default_model import invert_photos
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.bench.cost import cost, solver_flop_ratio
from fastinv.io import save_json
from fastinv.solver import checkpoints, load_solver
from fastinv.solver.training import DEFAULT_RECIPE, SolverTrainConfig, train_solver
from fastinv.training.photos import HELD_OUT, load_photo

BUDGET: dict[str, Any] = {"rounds": 1, "epochs": 8}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("warm start, patch 4, width 128, 2 blocks (the shipped design)", {}),
    "paper": (
        "paper design (v at z_k, text; patch 8, 1 left + 2 right blocks)",
        {"preset": "default-model-paper"},
    ),
    "patch8": ("warm start, patch 8 (64 tokens)", {"solver": {"patch_size": 8}}),
    "width64": ("warm start, width 64", {"solver": {"num_attention_heads": 1}}),
    "one_block": ("warm start, 1 block", {"solver": {"layers": 1}}),
    "targets_k2": ("warm start, targets after 2 denoiser calls (not converged)", {"max_evaluations": 2}),
}
SHARED_COLLECTION = ("seed", "size", "crops_per_image", "crop_scale", "prompt", "steps", "batch_size",
                     "tolerance", "max_evaluations", "anderson_memory")  # fmt: skip
console = Console()


def variant_config(key: str) -> SolverTrainConfig:
    return SolverTrainConfig.read(DEFAULT_RECIPE, BUDGET | VARIANTS[key][1])


def link_round0(reuse: Path, out: Path, config: SolverTrainConfig) -> int:
    """Hard-link reuse's round-0 step files into out when config collects what the shipped recipe does
    with an untrained warm-start solver; how many were linked."""
    shipped = SolverTrainConfig.read(DEFAULT_RECIPE)
    if config.preset != shipped.preset or any(
        getattr(config, k) != getattr(shipped, k) for k in SHARED_COLLECTION
    ):
        return 0
    linked = 0
    (out / checkpoints.FOLDER).mkdir(parents=True, exist_ok=True)
    for path in sorted((reuse / checkpoints.FOLDER).glob("steps-r00-*.safetensors")):
        target = out / checkpoints.FOLDER / path.name
        if not target.exists():
            os.link(path, target)
            linked += 1
    return linked


def train_variant(inv: fastinv.Inverter, key: str, work: Path, reuse: Path | None) -> dict[str, Any]:
    """Train variant `key` under work/KEY (resuming an interrupted run); a finished one is reused."""
    out = work / key
    if (out / "log.json").is_file():
        return json.loads((out / "log.json").read_text())
    config = variant_config(key)
    resume = checkpoints.latest(out) is not None
    if reuse is not None and not resume:
        console.print(f"{key}: linked {link_round0(reuse, out, config)} round-0 step files from {reuse}")
    return train_solver(inv.model, config, "skimage", out, resume=resume)


def score(inv: fastinv.Inverter, solver_dir: Path, steps: int) -> dict[str, Any]:
    """Held-out fidelity from z_T and the denoiser-equivalent cost of deepinv with this solver."""
    inv.invert(load_photo(HELD_OUT[0]), steps=steps, method="deepinv", solver=solver_dir)  # warm-up
    result = invert_photos(inv, HELD_OUT, steps, False, "deepinv", {"solver": solver_dir})
    per_photo = list(result["per_photo"].values())
    pixels = inv.prepare_image(load_photo(HELD_OUT[0])).pixels
    codec = inv.model.codec
    latent = (codec.channels, pixels.shape[-2] // codec.scale_factor, pixels.shape[-1] // codec.scale_factor)
    ratio = solver_flop_ratio(inv.model, load_solver(solver_dir), latent)
    nfe = statistics.mean(p["nfe"] for p in per_photo)
    calls = statistics.mean(p["solver_calls"] for p in per_photo)
    seconds = statistics.mean(p["seconds_inversion"] for p in per_photo)
    return result | {
        "cost": cost(nfe, calls, ratio),
        "solver_flop_ratio": ratio,
        "seconds_per_image": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the variants' solvers")
    parser.add_argument("--reuse", type=Path, help="a finished run of the shipped recipe: its round-0 steps")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", default="4,6,10,25,50")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--train-only", action="store_true", help="train the variants, score nothing")
    args = parser.parse_args()
    wanted = [v for v in args.variants.split(",") if v]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    inv = fastinv.load(device="cpu")
    rows: list[dict[str, Any]] = []
    for key in wanted:
        training = train_variant(inv, key, args.work, args.reuse)
        if args.train_only:
            continue
        for steps in (int(s) for s in args.steps.split(",")):
            result = score(inv, args.work / key / "solver", steps)
            rows.append(
                {"variant": VARIANTS[key][0], "key": key, "steps": steps, "training": training, **result}
            )
            console.print(f"{key} T={steps}: {result['mean']} cost {result['cost']:.2f}")
    if args.train_only:
        return
    table = Table(title="DeepInv ablations (6 held-out photos, reconstruction from z_T)")
    for column in ("variant", "T", "cost", "PSNR dB", "SSIM", "LPIPS", "s/image"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for row in rows:
        mean = row["mean"]
        table.add_row(
            row["variant"],
            str(row["steps"]),
            f"{row['cost']:.2f}",
            f"{mean['psnr']:.2f}",
            f"{mean['ssim']:.4f}",
            "n/a" if mean["lpips"] is None else f"{mean['lpips']:.4f}",
            f"{row['seconds_per_image']:.2f}",
        )
    console.print(table)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget": BUDGET,
        "variants": {
            key: {"label": label, "overrides": overrides} for key, (label, overrides) in VARIANTS.items()
        },
        "hardware": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "fastinv": fastinv.__version__},
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out / 'deepinv_ablations.json')}")


if __name__ == "__main__":
    main()
