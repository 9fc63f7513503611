"""Compare inversion methods on the shipped default model: NFE, cost, time and reconstruction fidelity.

python benchmarks/methods.py [--model DIR] [--solver DIR] [--steps 4,6,10,25,50] [--photos 6]
                             [--settings a,b] [--reuse METHODS_JSON] [--out benchmarks/results]

Every setting (a method with its options) runs through the same runtime (torch, CPU here) on the same
photos (skimage photos held out of the default model's training), prompt "" and guidance 1, at every step
count; the reconstruction is Euler sampling from z_T alone. deepinv uses the model folder's solver/ (the
shipped one never saw these photos) or --solver. Per row: NFE, solver calls, the denoiser-equivalent cost
(NFE + solver calls × solver/denoiser FLOPs, `fastinv.bench.cost`), s/image, PSNR / SSIM / LPIPS.

Then, per DeepInv step count, the best training-free row (any setting, any step count) that costs no more,
and the Pareto front of PSNR against cost. Writes methods.json (every figure, plus command, hardware and
versions) and methods_cost.png (PSNR against cost, front marked) to --out. With --reuse, the rows of the
settings not run (same steps, same photos) are read from an earlier methods.json and marked with its date
and command: inversion and reconstruction are deterministic on CPU, so only their s/image is old.
Fidelity is only meaningful on a trained model: random-weight models make every method look exact.
"""

from __future__ import annotations

import argparse
import json
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
from fastinv.bench.cost import cost, pareto_front, solver_flop_ratio
from fastinv.bench.report import plot
from fastinv.files import save_json
from fastinv.methods.easyinv import PAPER, SDXL_CODE
from fastinv.models import DEFAULT_MODEL
from fastinv.training.photos import HELD_OUT, load_photo

SETTINGS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler": ("euler", {}),
    "easyinv (paper: η=0.5 at 5–25 %)": ("easyinv", PAPER),
    "easyinv (SDXL code: η=0.8 at 85–95 %)": ("easyinv", SDXL_CODE),
    "renoise (K=1)": ("renoise", {"iterations": 1}),
    "renoise (K=2)": ("renoise", {"iterations": 2}),
    "renoise (K=4)": ("renoise", {}),
    "gnri": ("gnri", {}),
    "preciseinv (fast)": ("preciseinv", {}),
    "rf_solver": ("rf_solver", {}),
    "fireflow": ("fireflow", {}),
    "warm_fixed_point (c=1)": ("warm_fixed_point", {}),
    "warm_fixed_point (c=2)": ("warm_fixed_point", {"corrections": 2}),
    "warm_fixed_point (c=3)": ("warm_fixed_point", {"corrections": 3}),
    "deepinv (shipped solver)": ("deepinv", {}),
}
TRAINED = {"deepinv"}
console = Console()


def run(
    inv: fastinv.Inverter, settings: list[str], steps_list: list[int], photos: tuple[str, ...]
) -> list[dict[str, Any]]:
    """One row per (setting, steps): NFE, solver calls and cost per image, mean s/image, mean metrics."""
    rows = []
    ratio = None
    for steps in steps_list:
        for label in settings:
            method, options = SETTINGS[label]
            with console.status(f"{label}, {steps} steps, {len(photos)} photos"):
                inv.invert(load_photo(photos[0]), steps=steps, method=method, **options)  # warm-up, untimed
                result = invert_photos(inv, photos, steps, False, method, options)
            per_photo = list(result["per_photo"].values())
            calls = statistics.mean(p["solver_calls"] for p in per_photo)
            if calls and ratio is None:
                pixels = inv.prepare_image(load_photo(photos[0])).pixels
                codec = inv.model.codec
                latent = (
                    codec.channels,
                    pixels.shape[-2] // codec.scale_factor,
                    pixels.shape[-1] // codec.scale_factor,
                )
                ratio = solver_flop_ratio(inv.model, inv.solver, latent)
            nfe = statistics.mean(p["nfe"] for p in per_photo)
            rows.append(
                {
                    "setting": label,
                    "method": method,
                    "options": options,
                    "steps": steps,
                    "nfe": nfe,
                    "solver_calls": calls,
                    "solver_flop_ratio": ratio if calls else None,
                    "cost": cost(nfe, calls, ratio),
                    "seconds_per_image": statistics.mean(p["seconds_inversion"] for p in per_photo),
                    **result,
                }
            )
            console.print(
                f"{label} @ {steps}: cost {rows[-1]['cost']:.1f}, PSNR {result['mean']['psnr']:.2f} dB"
            )
    return rows


def equal_cost(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per DeepInv row: the training-free row of highest PSNR among those costing no more, and the margin."""
    free = [r for r in rows if r["method"] not in TRAINED]
    out = []
    for ours in (r for r in rows if r["method"] in TRAINED):
        cheaper = [r for r in free if r["cost"] <= ours["cost"] + 1e-9]
        best = max(cheaper, key=lambda r: r["mean"]["psnr"], default=None)
        out.append(
            {
                "setting": ours["setting"],
                "steps": ours["steps"],
                "cost": ours["cost"],
                "psnr": ours["mean"]["psnr"],
                "seconds_per_image": ours["seconds_per_image"],
                "best_training_free": None if best is None else f"{best['setting']} @ {best['steps']}",
                "its_cost": None if best is None else best["cost"],
                "its_psnr": None if best is None else best["mean"]["psnr"],
                "margin_db": None if best is None else ours["mean"]["psnr"] - best["mean"]["psnr"],
                "time_vs_euler": _time_ratio(rows, ours),
            }
        )
    return out


def _time_ratio(rows: list[dict[str, Any]], ours: dict[str, Any]) -> float | None:
    euler = [r for r in rows if r["method"] == "euler" and r["steps"] == ours["steps"]]
    return ours["seconds_per_image"] / euler[0]["seconds_per_image"] if euler else None


def reused_rows(
    path: Path, settings: list[str], steps_list: list[int], photos: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The rows of `path` (an earlier methods.json) for settings not in `settings`, at `steps_list`, each
    marked {"reused_from": {"file", "date", "command"}}; one-line exit if its photos differ."""
    record = json.loads(path.read_text())
    rows = [r for r in record["rows"] if r["setting"] not in settings and r["steps"] in steps_list]
    for row in rows:
        if tuple(row["per_photo"]) != photos:
            raise SystemExit(f"error: {path} scored photos {list(row['per_photo'])}, not {list(photos)}")
        row["reused_from"] = {"file": str(path), "date": record["date"], "command": record["command"]}
    return rows


def print_tables(rows: list[dict[str, Any]], comparison: list[dict[str, Any]], front: list[int]) -> None:
    table = Table(title="Inversion methods on the default model (mean over photos; reconstruction from z_T)")
    for column in ("method", "steps", "NFE", "cost", "s/image", "PSNR dB", "SSIM", "LPIPS", "front"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for i, row in enumerate(rows):
        mean = row["mean"]
        lpips = "n/a" if mean["lpips"] is None else f"{mean['lpips']:.4f}"
        table.add_row(
            row["setting"],
            str(row["steps"]),
            f"{row['nfe']:.0f}",
            f"{row['cost']:.1f}",
            f"{row['seconds_per_image']:.2f}",
            f"{mean['psnr']:.2f}",
            f"{mean['ssim']:.4f}",
            lpips,
            "●" if i in front else "",
        )
    console.print(table)
    cost_table = Table(title="DeepInv vs the best training-free run costing no more (any setting, any steps)")
    for column in (
        "steps",
        "cost",
        "PSNR dB",
        "best training-free",
        "its cost",
        "its PSNR",
        "Δ dB",
        "time ÷ euler",
    ):
        cost_table.add_column(column, justify="left" if column == "best training-free" else "right")
    for r in comparison:
        cost_table.add_row(
            str(r["steps"]),
            f"{r['cost']:.1f}",
            f"{r['psnr']:.2f}",
            r["best_training_free"] or "none as cheap",
            "" if r["its_cost"] is None else f"{r['its_cost']:.1f}",
            "" if r["its_psnr"] is None else f"{r['its_psnr']:.2f}",
            "" if r["margin_db"] is None else f"{r['margin_db']:+.2f}",
            "" if r["time_vs_euler"] is None else f"{r['time_vs_euler']:.2f}×",
        )
    console.print(cost_table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the shipped default model)")
    parser.add_argument("--solver", help="DeepInv solver folder (default: the model folder's solver/)")
    parser.add_argument("--steps", default="4,6,10,25,50", help="comma-separated step counts")
    parser.add_argument("--photos", type=int, default=len(HELD_OUT), help="how many held-out photos")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated setting labels")
    parser.add_argument("--reuse", type=Path, help="an earlier methods.json: the rows of settings not run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise SystemExit(f"error: unknown settings {unknown} (known: {', '.join(SETTINGS)})")
    steps_list, photos = [int(s) for s in args.steps.split(",")], HELD_OUT[: args.photos]
    old = reused_rows(args.reuse, settings, steps_list, photos) if args.reuse else []
    inv = fastinv.load(args.model, device="cpu", solver=args.solver)
    order = {label: i for i, label in enumerate(SETTINGS)}
    rows = sorted(
        run(inv, settings, steps_list, photos) + old,
        key=lambda r: (steps_list.index(r["steps"]), order.get(r["setting"], len(order))),
    )
    front = pareto_front([(r["cost"], r["mean"]["psnr"]) for r in rows])
    comparison = equal_cost(rows)
    print_tables(rows, comparison, front)
    points = [
        {
            "method": r["setting"],
            "backend": "torch",
            "steps": r["steps"],
            "cost": r["cost"],
            "psnr": r["mean"]["psnr"],
        }
        for r in rows
    ]
    plot(
        points,
        "cost",
        "psnr",
        args.out / "methods_cost.png",
        xlabel="denoiser-equivalent cost (NFE + solver calls × solver/denoiser FLOPs)",
        ylabel="reconstruction PSNR dB (6 held-out photos)",
        logx=True,
        front=[(rows[i]["cost"], rows[i]["mean"]["psnr"]) for i in front],
    )
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(Path(args.model).resolve() if args.model else DEFAULT_MODEL),
        "solver": str(args.solver or inv.solver_dir),
        "hardware": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "versions": {
            "torch": torch.__version__,
            "diffusers": version("diffusers"),
            "fastinv": fastinv.__version__,
        },
        "rows": rows,
        "pareto_front": [{"setting": rows[i]["setting"], "steps": rows[i]["steps"]} for i in front],
        "equal_cost": comparison,
    }
    console.print(f"wrote {save_json(record, args.out / 'methods.json')} and {args.out / 'methods_cost.png'}")


if __name__ == "__main__":
    main()
