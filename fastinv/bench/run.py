"""Running a BenchPlan: per backend, load the model once, then time every steps × method on every image."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import Progress, TaskID

from fastinv.api import Inverter, load
from fastinv.bench.cost import cost, solver_flop_ratio
from fastinv.bench.plan import GUIDANCE, PROMPT, BenchPlan
from fastinv.bench.summary import Row
from fastinv.display import progress_bar
from fastinv.errors import FastinvError
from fastinv.images import LoadedImage
from fastinv.memory import PeakMemory
from fastinv.pipeline import InversionJob, invert_image, reconstruct_and_score
from fastinv.runtime.backends import BACKENDS, get_backend, spelled


@dataclass
class BenchResult:
    """rows: one per (backend, method, steps, image) that ran; skipped: {"backend", "method", "steps",
    "reason"} per combination that could not run; backends: per backend, {"export_dir", "fast_path"}."""

    rows: list[Row] = field(default_factory=list)
    skipped: list[Row] = field(default_factory=list)
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)


def export_graphs(plan: BenchPlan, folder: Path) -> list[Path]:
    """Export the denoiser (and the DeepInv solver, when the model has one or plan.solver names one) to
    `folder` at the plan's precision, on CPU, as `fastinv export` does; the written .onnx paths."""
    from fastinv.export.onnx import export_model

    inverter = load(plan.model, device="cpu", dtype="fp32", solver=plan.solver, fast=False)
    return list(export_model(inverter.model, inverter.solver_dir, folder, precision=plan.precision))


def flop_ratio(inverter: Inverter, picture: LoadedImage, cache: dict[tuple[int, ...], float]) -> float:
    """The inverter's solver FLOPs ÷ denoiser FLOPs at the picture's latent size (counted once per size)."""
    codec = inverter.model.codec
    key = (
        codec.channels,
        picture.pixels.shape[-2] // codec.scale_factor,
        picture.pixels.shape[-1] // codec.scale_factor,
    )
    if key not in cache:
        cache[key] = solver_flop_ratio(inverter.model, inverter.solver, key)
    return cache[key]


def measure_image(
    inverter: Inverter,
    picture: LoadedImage,
    method: str,
    steps: int,
    repeats: int,
    metrics: bool,
    ratios: dict[tuple[int, ...], float],
) -> Row:
    """`repeats` timed inversions of one image, then one reconstruction from z_T scored against it.

    Returns {"nfe", "solver_calls", "cost" (denoiser-equivalent, `fastinv.bench.cost`), "seconds": [repeats]
    (InversionResult.seconds: CUDA events on GPU), "seconds_median", "peak_mib" (the highest PeakMemory of
    the repeats)} plus, if `metrics`, inverter.evaluate's PSNR (dB), SSIM, LPIPS, pixel and latent MSE
    (deterministic, so measured once). `ratios` caches the solver's FLOP ratio per latent size.
    """
    job = InversionJob(PROMPT, method, steps, GUIDANCE)
    seconds, peaks = [], []
    for _ in range(repeats):
        with PeakMemory(inverter.model.device) as memory:
            inversion = invert_image(inverter, picture, job)
        seconds.append(inversion.result.seconds)
        peaks.append(memory.mib)
    calls = inversion.result.solver_calls
    ratio = flop_ratio(inverter, picture, ratios) if calls else None
    row = {
        "nfe": inversion.result.nfe,
        "solver_calls": calls,
        "solver_flop_ratio": ratio,
        "cost": cost(inversion.result.nfe, calls, ratio),
        "seconds": seconds,
        "seconds_median": statistics.median(seconds),
        "peak_mib": max(peaks),
    }
    if metrics:
        row |= reconstruct_and_score(inverter, inversion)[1]
    return row


def measure_steps(
    inverter: Inverter,
    backend: str,
    pictures: dict[str, LoadedImage],
    methods: list[str],
    steps: int,
    plan: BenchPlan,
    progress: Progress,
    task: TaskID,
    ratios: dict[tuple[int, ...], float],
) -> tuple[list[Row], list[Row]]:
    """Every method at `steps` on every image: (rows in method order, skipped).

    plan.warmup untimed inversions of the first image per method, then, image by image, `measure_image`
    of each method in turn: the methods compared at equal steps are timed side by side, so a slow drift
    of the machine (other jobs, clocks) lands on all of them rather than on whichever ran last. A method
    that raises a FastinvError (deepinv without a solver) or runs out of GPU memory is skipped with the
    error's first line; the others go on.
    """
    first = next(iter(pictures.values()))
    rows: dict[str, list[Row]] = {}
    skipped: list[Row] = []
    for method in methods:
        progress.update(task, description=f"{backend} · {method} · {steps} steps · warm-up")
        try:
            for _ in range(plan.warmup):
                invert_image(inverter, first, InversionJob(PROMPT, method, steps, GUIDANCE))
            rows[method] = []
        except (FastinvError, torch.OutOfMemoryError) as err:
            skipped.append(_skipped(backend, method, steps, err))
    for name, picture in pictures.items():
        size = [picture.pixels.shape[-1], picture.pixels.shape[-2]]
        for method in list(rows):
            progress.update(task, description=f"{backend} · {method} · {steps} steps · {name}")
            key = {"backend": backend, "method": method, "steps": steps, "image": name, "size": size}
            try:
                row = measure_image(
                    inverter, picture, method, steps, plan.repeats, not plan.timing_only, ratios
                )
                rows[method].append(key | row)
            except (FastinvError, torch.OutOfMemoryError) as err:
                skipped.append(_skipped(backend, method, steps, err))
                del rows[method]
        progress.advance(task, len(methods))
    return [row for method_rows in rows.values() for row in method_rows], skipped


def _load(plan: BenchPlan, backend: str, export_dir: Path | None) -> Inverter:
    return load(
        plan.model,
        device=plan.device,
        dtype=plan.precision,
        solver=plan.solver,
        backend=backend,
        export_dir=export_dir if get_backend(backend).folder else None,
        fast=plan.fast,
    )


def _exporting(plan: BenchPlan) -> list[str]:
    """The plan's backends whose graphs bench exports itself (ort) when no export_dir is given."""
    return [name for name in plan.backends if BACKENDS[name].bench_exports]


def _export(plan: BenchPlan, console: Console) -> Path:
    """`export_graphs` to plan.default_export_dir with a status line, then one line naming what it wrote."""
    folder, backends = plan.default_export_dir, spelled(_exporting(plan))
    with console.status(
        f"exporting the ONNX graphs ({plan.precision}) for the {backends} backend to {folder}"
    ):
        start = time.perf_counter()
        paths = export_graphs(plan, folder)
    names = ", ".join(path.name for path in paths)
    seconds = time.perf_counter() - start
    console.print(f"exported {names} to {folder} in {seconds:.1f} s", markup=False, soft_wrap=True)
    return folder


def _skipped(backend: str, method: str, steps: int, err: Exception | str) -> Row:
    reason = str(err).splitlines()[0]
    if isinstance(err, torch.OutOfMemoryError):
        reason = f"out of memory: {reason}"
    return {"backend": backend, "method": method, "steps": steps, "reason": reason}


def run_bench(plan: BenchPlan, console: Console) -> BenchResult:
    """Every backend × steps × method × image of `plan`, with a rich progress bar on `console`.

    With a backend bench exports for (ort) and no plan.export_dir, the graphs are exported to
    plan.default_export_dir first. A method the backend cannot run (`Backend.refusal`: preciseinv's
    gradients on a graph backend) is recorded in `skipped` without running; so is, with the error's first
    line, a combination that raises a FastinvError (deepinv without a solver) or runs out of GPU memory,
    and every combination of a backend that fails to load; the others still run.
    """
    result = BenchResult()
    export_dir = plan.export_dir
    if export_dir is None and _exporting(plan):
        export_dir = _export(plan, console)
    total = len(plan.backends) * len(plan.steps) * len(plan.methods) * len(plan.images)
    with progress_bar(console) as progress:
        task = progress.add_task("loading", total=total)
        done = 0
        for backend in plan.backends:
            progress.update(
                task, description=f"{backend} · loading {plan.model or 'the shipped default model'}"
            )
            try:
                inverter = _load(plan, backend, export_dir)
            except FastinvError as err:  # e.g. graphs exported from another model: the other backends run
                result.skipped += [_skipped(backend, m, n, err) for n in plan.steps for m in plan.methods]
                done += len(plan.steps) * len(plan.methods) * len(plan.images)
                progress.update(task, completed=done)
                continue
            pictures = {image.name: inverter.prepare_image(image.load()) for image in plan.images}
            result.backends[backend] = {
                "export_dir": None if inverter.export_dir is None else str(inverter.export_dir),
                "fast_path": inverter.config.describe(),
            }
            ratios: dict[tuple[int, ...], float] = {}
            for steps in plan.steps:
                runnable = []
                for method in plan.methods:
                    refusal = BACKENDS[backend].refusal(method)  # up front: nothing runs
                    if refusal is None:
                        runnable.append(method)
                    else:
                        result.skipped.append(_skipped(backend, method, steps, refusal))
                if runnable:
                    rows, skipped = measure_steps(
                        inverter, backend, pictures, runnable, steps, plan, progress, task, ratios
                    )
                    result.rows += rows
                    result.skipped += skipped
                done += len(plan.methods) * len(pictures)
                progress.update(task, completed=done)
            del inverter, pictures  # one backend's model in memory at a time
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return result
