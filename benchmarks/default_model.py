"""Benchmark the shipped default model on CPU: samples, inversion fidelity, and the README command's time.

python benchmarks/default_model.py [--model DIR] [--out benchmarks/results] [--quick]

Writes default_model_samples.png (a prompts × seeds grid) and default_model.json (every figure printed, plus
the command line, hardware, versions, date and model folder) to --out. --quick is a smoke run for development.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.api import Inverter
from fastinv.display import fmt as _fmt
from fastinv.files import atomic_write, save_json
from fastinv.images import pixels_to_pil
from fastinv.models import DEFAULT_MODEL
from fastinv.pipeline import InversionJob, round_trip
from fastinv.sampling import sample_euler
from fastinv.training.photos import CAPTIONS, HELD_OUT, load_photo

PROMPTS = (
    "a ginger cat",
    "a cup of coffee on a saucer",
    "the grey surface of the moon with craters",
    "a motorcycle in a workshop",
)
METRICS = ("psnr", "ssim", "lpips")
console = Console()


@dataclass(frozen=True)
class Plan:
    """What one run measures; FULL is the benchmark, QUICK a smoke test of the same code paths."""

    seeds: tuple[int, ...]
    sample_steps: int
    guidance: float
    photos: tuple[str, ...]
    inversion_steps: tuple[int, ...]
    caption_steps: int
    readme_steps: int
    readme_runs: int


FULL = Plan((0, 1, 2, 3), 50, 4.0, HELD_OUT, (10, 25, 50, 100), 50, 50, 3)
QUICK = Plan((0,), 8, 4.0, HELD_OUT[:2], (4, 8), 8, 8, 1)


def sample_grid(inv: Inverter, plan: Plan, path: Path) -> dict[str, Any]:
    """Sample every prompt × seed from noise with CFG, save the labelled grid, and time each sample."""
    model = inv.model
    height, width = (side // model.codec.scale_factor for side in reversed(model.resolution))
    sigmas = model.sigmas(plan.sample_steps, (height, width))
    fig = Figure(figsize=(1.6 * len(plan.seeds) + 2.4, 1.6 * len(PROMPTS)))
    axes = fig.subplots(len(PROMPTS), len(plan.seeds), squeeze=False)
    seconds = []
    for row, prompt in enumerate(PROMPTS):
        cond = model.conditioning(prompt, guidance_scale=plan.guidance)
        for col, seed in enumerate(plan.seeds):
            generator = torch.Generator().manual_seed(seed)
            noise = torch.randn(1, model.codec.channels, height, width, generator=generator)
            start = time.perf_counter()
            latents, _ = sample_euler(model.velocity, noise.to(model.device), sigmas, cond)
            pixels = model.codec.decode(latents)
            seconds.append(time.perf_counter() - start)
            ax = axes[row][col]
            ax.imshow(pixels_to_pil(pixels))
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"seed {seed}", fontsize=9)
            if col == 0:
                ax.set_ylabel(textwrap.fill(prompt, 20), fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(f"default model: {plan.sample_steps} Euler steps, CFG {plan.guidance}", fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    return {
        "prompts": list(PROMPTS),
        "seeds": list(plan.seeds),
        "steps": plan.sample_steps,
        "guidance": plan.guidance,
        "grid": path.name,
        "seconds_per_sample": seconds,
        "mean_seconds_per_sample": statistics.mean(seconds),
    }


def _mean(values: list[float | None]) -> float | None:
    """Mean of the values; None if any is missing (e.g. LPIPS unavailable)."""
    return None if any(v is None for v in values) else statistics.mean(values)


def invert_photos(
    inv: Inverter,
    photos: tuple[str, ...],
    steps: int,
    captions: bool,
    method: str = "euler",
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Invert each photo (prompt "" or its caption, guidance 1), regenerate from z_T, and score it."""
    per_photo = {}
    for name in photos:
        prompt = CAPTIONS[name] if captions else ""
        job = InversionJob(prompt, method, steps, options=options or {})
        trip = round_trip(inv, load_photo(name), job)
        res, rec, metrics = trip.inversion, trip.reconstruction, trip.metrics
        per_photo[name] = {
            **{key: metrics[key] for key in (*METRICS, "mse_pixel", "mse_latent")},
            "nfe": res.result.nfe,
            "solver_calls": res.result.solver_calls,
            "seconds_inversion": res.result.seconds,
            "seconds_reconstruction": rec.seconds,
        }
    mean = {key: _mean([m[key] for m in per_photo.values()]) for key in METRICS}
    return {"prompt": "captions" if captions else "", "steps": steps, "mean": mean, "per_photo": per_photo}


def readme_command(model: str | None, plan: Plan) -> dict[str, Any]:
    """Wall time of `fastinv invert --example` as a user runs it: start-up, imports, model load, inversion."""
    exe = shutil.which("fastinv")
    command = [exe] if exe else [sys.executable, "-m", "fastinv"]
    command += ["invert", "--example", "--steps", str(plan.readme_steps)]
    command += ["--model", model] if model else []
    seconds = []
    for _ in range(plan.readme_runs):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            done = subprocess.run([*command, "--out", out], capture_output=True, text=True)
            seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return {
        "command": shlex.join([*command, "--out", "<tmpdir>"]),
        "seconds": seconds,
        "median_seconds": statistics.median(seconds),
    }


def print_tables(samples: dict[str, Any], rows: list[dict[str, Any]], readme: dict[str, Any]) -> None:
    """The inversion table (one row per prompt × steps), then sampling and README-command timings."""
    photos = list(rows[0]["per_photo"])
    table = Table(title="Euler inversion → reconstruction from z_T (guidance 1)")
    for column in ("prompt", "steps", "PSNR dB", "SSIM", "LPIPS", *(f"{p} PSNR" for p in photos)):
        table.add_column(column, justify="left" if column == "prompt" else "right")
    for row in rows:
        mean = row["mean"]
        table.add_row(
            repr(row["prompt"]) if row["prompt"] == "" else row["prompt"],
            str(row["steps"]),
            _fmt(mean["psnr"], 2),
            _fmt(mean["ssim"], 4),
            _fmt(mean["lpips"], 4),
            *(_fmt(row["per_photo"][p]["psnr"], 2) for p in photos),
        )
    console.print(table)
    timing = Table(title="CPU time", show_header=False)
    timing.add_column("what")
    timing.add_column("seconds", justify="right")
    timing.add_row(
        f"one sample ({samples['steps']} steps, CFG {samples['guidance']}), mean",
        _fmt(samples["mean_seconds_per_sample"], 2),
    )
    for i, seconds in enumerate(readme["seconds"], 1):
        timing.add_row(f"README command, run {i}", _fmt(seconds, 2))
    timing.add_row("README command, median", _fmt(readme["median_seconds"], 2))
    console.print(timing)
    console.print(f"[dim]README command: {readme['command']}[/dim]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="output folder")
    parser.add_argument("--quick", action="store_true", help="smoke run: few photos, steps, seeds, runs")
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL

    with console.status("loading the model"):
        inv = fastinv.load(args.model, device="cpu")
    with console.status("sampling the grid"):
        samples = sample_grid(inv, plan, args.out / "default_model_samples.png")
    rows = []
    settings = [(steps, False) for steps in plan.inversion_steps] + [(plan.caption_steps, True)]
    for steps, captions in settings:
        with console.status(f"inverting {len(plan.photos)} photos, {steps} steps, captions={captions}"):
            rows.append(invert_photos(inv, plan.photos, steps, captions))
    with console.status(f"timing the README command ×{plan.readme_runs}"):
        readme = readme_command(args.model, plan)
    print_tables(samples, rows, readme)

    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(Path(args.model).resolve() if args.model else DEFAULT_MODEL),
        "plan": asdict(plan),
        "hardware": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "diffusers": version("diffusers"),
            "fastinv": fastinv.__version__,
        },
        "samples": samples,
        "inversion": rows,
        "readme_command": readme,
    }
    path = save_json(record, args.out / "default_model.json")
    console.print(f"wrote {path} and {args.out / samples['grid']}")


if __name__ == "__main__":
    main()
