"""DeepInv ablations on the shipped default model: design, tokens, capacity, targets, time against Euler.

python benchmarks/deepinv_ablations.py --work DIR [--reuse RUN] [--variants a,b] [--steps 4,6,10,25,50]
                                       [--out benchmarks/results]

Each variant is the shipped recipe (fastinv/solver/default_solver.json) on the full-size preset
"default-model" at a reduced budget (BUDGET: one round of collection and fit on half the crops, half the
epochs) with one change, trained by the same trainer on the same crops of the 14 photos and scored on
the 6 held-out photos from z_T alone, with its denoiser-equivalent cost and its inversion time against
Euler's in the same run.

Round 0 collects with the untrained solver. An untrained warm-start solver returns v whatever its size
(zero-initialised output), so warm-start variants with the same collection settings collect the same
steps: the first such variant under --work collects them and the others link its step files (with --reuse
RUN, a finished `fastinv train` run of the budget's collection settings, they come from RUN). Training is
skipped for a variant that finished under --work (an interrupted one resumes). deepinv_ablations.json is
rewritten after every variant.
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
from fastinv.files import save_json
from fastinv.solver import checkpoints, load_solver
from fastinv.solver.presets import preset
from fastinv.solver.recipe import DEFAULT_RECIPE, SolverTrainConfig
from fastinv.solver.training import train_solver
from fastinv.training.photos import HELD_OUT, load_photo

BUDGET: dict[str, Any] = {"preset": "default-model", "rounds": 1, "epochs": 8, "crops_per_image": 3}
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "baseline": ("warm start, patch 4, width 128, 2 blocks (preset default-model)", {}),
    "paper": (
        "paper design (v at z_k, text; patch 8, 1 left + 2 right blocks)",
        {"preset": "default-model-paper"},
    ),
    "patch8": ("warm start, patch 8 (64 tokens)", {"solver": {"patch_size": 8}}),
    "width64": ("warm start, width 64", {"solver": {"num_attention_heads": 1}}),
    "lean": ("warm start, patch 8, width 64", {"solver": {"patch_size": 8, "num_attention_heads": 1}}),
    "one_block": ("warm start, 1 block", {"solver": {"layers": 1}}),
    "targets_k2": ("warm start, targets after 2 denoiser calls (not converged)", {"max_evaluations": 2}),
}
SHARED_COLLECTION = ("seed", "size", "crops_per_image", "crop_scale", "prompt", "steps", "batch_size",
                     "tolerance", "max_evaluations", "anderson_memory")  # fmt: skip
console = Console()


def variant_config(key: str) -> SolverTrainConfig:
    return SolverTrainConfig.read(DEFAULT_RECIPE, BUDGET | VARIANTS[key][1])


def shares_collection(a: SolverTrainConfig, b: SolverTrainConfig) -> bool:
    """Whether an untrained solver of a and one of b collect the same round-0 steps: both warm start
    (zero-initialised output: the solver returns v) and the same collection settings."""
    warm = preset(a.preset).network.warm_start and preset(b.preset).network.warm_start
    return warm and all(getattr(a, k) == getattr(b, k) for k in SHARED_COLLECTION)


def link_round0(source: Path, out: Path) -> int:
    """Hard-link source's round-0 step files into out (those not there yet); how many were linked."""
    linked = 0
    (out / checkpoints.FOLDER).mkdir(parents=True, exist_ok=True)
    for path in sorted((source / checkpoints.FOLDER).glob("steps-r00-*.safetensors")):
        target = out / checkpoints.FOLDER / path.name
        if not target.exists():
            os.link(path, target)
            linked += 1
    return linked


def train_variant(
    inv: fastinv.Inverter, key: str, work: Path, reuse: Path | None, done: list[str]
) -> dict[str, Any]:
    """Train variant `key` under work/KEY (resuming an interrupted run); a finished one is reused. Round-0
    steps come from --reuse or from an earlier variant in `done` that collects the same ones."""
    out = work / key
    if (out / "log.json").is_file():
        return json.loads((out / "log.json").read_text())
    config = variant_config(key)
    if checkpoints.latest(out) is None:
        sources = [work / k for k in done if shares_collection(variant_config(k), config)]
        sources += [reuse] if reuse is not None else []
        for source in sources[:1]:
            console.print(f"{key}: linked {link_round0(source, out)} round-0 step files from {source}")
    resume = checkpoints.latest(out) is not None
    return train_solver(inv.model, config, "skimage", out, resume=resume)


def euler_seconds(inv: fastinv.Inverter, steps: int) -> float:
    """Mean Euler inversion time per held-out photo at `steps`, in this run (the time ratios' base)."""
    inv.invert(load_photo(HELD_OUT[0]), steps=steps, method="euler")  # warm-up
    photos = [load_photo(name) for name in HELD_OUT]
    return statistics.mean(inv.invert(p, steps=steps, method="euler").result.seconds for p in photos)


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


def print_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="DeepInv ablations (6 held-out photos, reconstruction from z_T)")
    for column in ("variant", "T", "cost", "PSNR dB", "SSIM", "LPIPS", "s/image", "÷ Euler"):
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
            f"{row['seconds_per_image']:.3f}",
            f"{row['time_vs_euler']:.2f}",
        )
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the variants' solvers")
    parser.add_argument("--reuse", type=Path, help="a finished run with BUDGET's collection settings")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--steps", default="4,6,10,25,50")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--train-only", action="store_true", help="train the variants, score nothing")
    args = parser.parse_args()
    wanted = [v for v in args.variants.split(",") if v]
    unknown = [v for v in wanted if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: unknown variants {unknown} (known: {', '.join(VARIANTS)})")
    steps_list = [int(s) for s in args.steps.split(",")]
    inv = fastinv.load(device="cpu")
    record: dict[str, Any] = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget": BUDGET,
        "variants": {
            key: {"label": label, "overrides": overrides} for key, (label, overrides) in VARIANTS.items()
        },
        "hardware": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": {"torch": torch.__version__, "fastinv": fastinv.__version__},
        "rows": [],
    }
    done: list[str] = []
    for key in wanted:
        training = train_variant(inv, key, args.work, args.reuse, done)
        done.append(key)
        if args.train_only:
            continue
        for steps in steps_list:
            result = score(inv, args.work / key / "solver", steps)
            ratio = result["seconds_per_image"] / euler_seconds(inv, steps)
            record["rows"].append(
                {"variant": VARIANTS[key][0], "key": key, "steps": steps, "training": training, **result}
                | {"time_vs_euler": ratio}
            )
            console.print(f"{key} T={steps}: {result['mean']} cost {result['cost']:.2f} ÷ Euler {ratio:.2f}")
        save_json(record, args.out / "deepinv_ablations.json")  # after every variant: a partial run counts
    if not args.train_only:
        print_table(record["rows"])
        console.print(f"wrote {args.out / 'deepinv_ablations.json'}")


if __name__ == "__main__":
    main()
