"""What `fastinv bench` writes: bench.json (every figure, config, hardware, versions, command), bench.md (the
tables) and matplotlib plots; the same tables feed the CLI's rich output."""

from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from fastinv import __version__
from fastinv.bench.plan import BenchPlan
from fastinv.bench.run import BenchResult
from fastinv.bench.summary import SPREAD, Row, aggregate, summarize
from fastinv.display import fmt as _fmt
from fastinv.files import Writer, atomic_write, json_writer, publish_files
from fastinv.memory import PeakMemory
from fastinv.runtime.backends import BACKENDS

FIDELITY_NOTE = (
    "Fidelity is only meaningful on a trained model: on random weights every method looks almost exact."
)
TIMING_ONLY_NOTE = "random weights: timing only (no reconstruction, no metrics)"


def _version(*distributions: str) -> str | None:
    """The installed version of the first of `distributions` that is installed; None if none is."""
    for name in distributions:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return None


def environment(device: torch.device) -> dict[str, Any]:
    """{"hardware": platform, CPUs, torch threads, GPU name, CUDA version (None on CPU), "versions": …}."""
    cuda = device.type == "cuda"
    hardware = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cuda": torch.version.cuda if cuda else None,
    }
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "accelerate": _version("accelerate"),
        "onnxruntime": _version("onnxruntime", "onnxruntime-gpu"),
        "tensorrt": _version("tensorrt"),
        "tensorrt_rtx": _version("tensorrt-rtx"),
        "fastinv": __version__,
    }
    return {"hardware": hardware, "versions": {k: v for k, v in versions.items() if v is not None}}


def build_record(plan: BenchPlan, result: BenchResult) -> dict[str, Any]:
    """The bench.json record: command, UTC date, config, hardware, versions, per-backend fast path, notes on
    timing / memory / fidelity, aggregates, per-image rows, skipped combinations and the summary ratios."""
    aggregates = aggregate(result.rows)
    device = torch.device(plan.device)
    timer = "CUDA events on the current stream" if device.type == "cuda" else "time.perf_counter"
    return {
        "command": plan.command(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": plan.to_json(),
        **environment(device),
        "backends": result.backends,
        "timing": (
            f"inversion only (InversionResult.seconds, {timer}), after {plan.warmup} warm-up "
            f"inversion(s) per method × steps; s/image is the median, spread {SPREAD}"
        ),
        "memory": PeakMemory.kind(device),
        "fidelity_note": TIMING_ONLY_NOTE if plan.timing_only else FIDELITY_NOTE,
        "aggregates": aggregates,
        "rows": result.rows,
        "skipped": result.skipped,
        "summary": summarize(aggregates, fidelity=not plan.timing_only),
    }


@dataclass
class TextTable:
    """A table of formatted cells; `align` has one letter per column: "l" (text) or "r" (numbers)."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]]
    align: str


def _nfe(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _seconds(row: Row) -> str:
    return f"{row['seconds_median']:.3g} ({row['seconds_p20']:.3g}–{row['seconds_p80']:.3g})"


def results_table(aggregates: list[Row]) -> TextTable:
    """method, backend, steps, NFE, solver calls, denoiser-equivalent cost, s/image median (spread), peak MiB,
    PSNR dB, SSIM, LPIPS per aggregate."""
    columns = (
        "method",
        "backend",
        "steps",
        "NFE",
        "solver calls",
        "cost",
        "s/image (p20–p80)",
        "peak MiB",
        "PSNR dB",
        "SSIM",
        "LPIPS",
    )
    rows = [
        (
            row["method"],
            row["backend"],
            str(row["steps"]),
            _nfe(row["nfe"]),
            _nfe(row.get("solver_calls", 0)),
            _fmt(row.get("cost", row["nfe"]), 1),
            _seconds(row),
            f"{row['peak_mib']:.0f}",
            _fmt(row["psnr"]),
            _fmt(row["ssim"], 4),
            _fmt(row["lpips"], 4),
        )
        for row in aggregates
    ]
    return TextTable(
        "Per method × backend × steps (mean over images; cost = NFE + solver calls × solver/denoiser FLOPs)",
        columns,
        rows,
        "llrrrrrrrrr",
    )


def skipped_table(skipped: list[Row]) -> TextTable:
    """One row per backend × method that could not run, with its step counts and reason."""
    merged: dict[tuple[str, str, str], list[str]] = {}
    for row in skipped:
        merged.setdefault((row["backend"], row["method"], row["reason"]), []).append(str(row["steps"]))
    rows = [(backend, method, ",".join(steps), reason) for (backend, method, reason), steps in merged.items()]
    return TextTable("Skipped", ("backend", "method", "steps", "reason"), rows, "llrl")


def ratio_tables(summary: dict[str, dict[str, list[Row]]]) -> list[TextTable]:
    """The time ratios, then DeepInv − baseline at equal steps and at equal time, over all backends."""
    times, steps_rows, time_rows, cost_rows = [], [], [], []
    for backend, parts in summary.items():
        for r in parts["time_ratios"]:
            times.append((backend, r["ratio"], str(r["steps"]), f"{r['value']:.2f}×"))
        for r in parts.get("equal_steps", []):
            diffs = (_fmt(r["psnr"], sign=True), _fmt(r["ssim"], 4, True), _fmt(r["lpips"], 4, True))
            steps_rows.append((backend, r["baseline"], str(r["steps"]), *diffs))
        for r in parts.get("equal_time", []):
            diffs = (
                _fmt(r["baseline_psnr"]),
                _fmt(r["psnr"], sign=True),
                _fmt(r["ssim"], 4, True),
                _fmt(r["lpips"], 4, True),
            )
            time_rows.append((backend, r["baseline"], str(r["steps"]), f"{r['seconds']:.3g}", *diffs))
        for r in parts.get("equal_cost", []):
            baseline = (
                "none as cheap" if r["baseline"] is None else f"{r['baseline']} @ {r['baseline_steps']}"
            )
            cost_rows.append(
                (
                    backend,
                    str(r["steps"]),
                    _fmt(r["cost"], 1),
                    _fmt(r["psnr"]),
                    baseline,
                    _fmt(r["baseline_cost"], 1),
                    _fmt(r["baseline_psnr"]),
                    _fmt(r["margin"], sign=True),
                )
            )
    deltas = ("ΔPSNR dB", "ΔSSIM", "ΔLPIPS")
    return [
        TextTable(
            "Time ratios (median s/image, equal steps)", ("backend", "ratio", "steps", "value"), times, "llrr"
        ),
        TextTable(
            "DeepInv − baseline at equal steps (ΔLPIPS < 0: DeepInv better)",
            ("backend", "baseline", "steps", *deltas),
            steps_rows,
            "llrrrr",
        ),
        TextTable(
            "DeepInv − baseline at equal time (baseline interpolated in log time at DeepInv's s/image; "
            "n/a: outside the baseline's measured time range, never extrapolated)",
            ("backend", "baseline", "deepinv steps", "s/image", "baseline PSNR dB", *deltas),
            time_rows,
            "llrrrrrr",
        ),
        TextTable(
            "DeepInv against the best training-free run (any method and steps of this bench) costing no more",
            (
                "backend",
                "deepinv steps",
                "cost",
                "PSNR dB",
                "best training-free",
                "its cost",
                "its PSNR dB",
                "ΔPSNR dB",
            ),
            cost_rows,
            "lrrrlrrr",
        ),
    ]


def report_tables(record: dict[str, Any]) -> list[TextTable]:
    """Every non-empty table of a bench record, in the order bench.md shows them."""
    tables = [results_table(record["aggregates"]), skipped_table(record["skipped"])]
    return [table for table in tables + ratio_tables(record["summary"]) if table.rows]


def markdown(record: dict[str, Any]) -> str:
    """bench.md: the command, setting and notes, then every table of `report_tables`."""
    config, hardware = record["config"], record["hardware"]
    where = hardware["gpu"] or f"CPU, {hardware['torch_threads']} torch threads"
    fast = "; ".join(f"{backend}: {info['fast_path']}" for backend, info in record["backends"].items())
    lines = [
        "# fastinv bench",
        "",
        f"`{record['command']}`",
        "",
        f"- {record['date']}, {config['device']} ({where}), {config['dtype']}, "
        f"fastinv {record['versions']['fastinv']}",
        f"- images: {config['images']} ({', '.join(config['image_names'])}), prompt {config['prompt']!r}, "
        f"guidance {config['guidance']}",
        f"- fast path: {fast}",
        f"- time: {record['timing']}",
        f"- memory: {record['memory']}",
        f"- {record['fidelity_note']}",
    ]
    for table in report_tables(record):
        align = ["---:" if letter == "r" else "---" for letter in table.align]
        lines += ["", f"## {table.title}", "", "| " + " | ".join(table.columns) + " |"]
        lines += ["|" + "|".join(align) + "|"]
        lines += [
            "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |" for cells in table.rows
        ]
    return "\n".join(lines) + "\n"


def _log_scale(axis: Axis, values: list[float]) -> None:
    """A log axis labelled in plain numbers: every minor tick within a decade, else 1-2-5 ticks."""
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    if values and max(values) < 10 * min(values):
        axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    else:
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_minor_formatter(NullFormatter())


def plot(aggregates: list[Row], x: str, y: str, path: Path, **options: Any) -> Path:
    """`plot_png(aggregates, x, y, **options)` written to `path` atomically; returns `path`."""
    with atomic_write(path) as tmp:
        plot_png(aggregates, x, y, **options)(tmp)
    return path


def plot_png(
    aggregates: list[Row],
    x: str,
    y: str,
    *,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    logy: bool = False,
    front: list[tuple[float, float]] | None = None,
) -> Writer:
    """The writer of a PNG of aggregate key `y` against key `x`: one line per method × backend through its
    step counts (colour: method, marker: backend), each point labelled with its steps; missing or infinite
    values left out; `front` (x, y) points ringed and joined as a dashed staircase (the Pareto front)."""
    fig = Figure(figsize=(8, 5.5))
    ax = fig.subplots()
    methods = list(dict.fromkeys(row["method"] for row in aggregates))
    backends = list(dict.fromkeys(row["backend"] for row in aggregates))
    colors = {method: f"C{i % 10}" for i, method in enumerate(methods)}
    for method in methods:
        for backend in backends:
            points = sorted(
                (row["steps"], row[x], row[y])
                for row in aggregates
                if row["method"] == method
                and row["backend"] == backend
                and row[y] is not None
                and math.isfinite(row[y])
            )
            if not points:
                continue
            xs, ys = [p[1] for p in points], [p[2] for p in points]
            ax.plot(xs, ys, color=colors[method], marker=BACKENDS[backend].marker, linewidth=1, markersize=6)
            for steps, px, py in points:
                ax.annotate(str(steps), (px, py), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if front:
        xs, ys = zip(*front, strict=True)
        ax.step(xs, ys, where="post", color="black", linestyle="--", linewidth=1, label="Pareto front")
        ax.scatter(xs, ys, s=120, facecolors="none", edgecolors="black", linewidths=1, zorder=3)
    if logx:
        ax.set_xscale("log")
        _log_scale(ax.xaxis, [x for line in ax.get_lines() for x in line.get_xdata()])
    if logy:
        ax.set_yscale("log")
        _log_scale(ax.yaxis, [y for line in ax.get_lines() for y in line.get_ydata()])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    method_keys = [Line2D([], [], color=colors[m], label=m) for m in methods]
    if front:
        method_keys.append(Line2D([], [], color="black", linestyle="--", label="Pareto front"))
    backend_keys = [
        Line2D([], [], color="grey", marker=BACKENDS[e].marker, linestyle="none", label=e) for e in backends
    ]
    ax.add_artist(ax.legend(handles=method_keys, title="method", loc="upper left", fontsize=8))
    ax.legend(handles=backend_keys, title="backend", loc="lower right", fontsize=8)
    fig.tight_layout()
    return lambda tmp: fig.savefig(tmp, dpi=120, format="png")


def write_report(record: dict[str, Any], out: Path) -> list[Path]:
    """bench.json, bench.md and the plots (fidelity_vs_time.png, fidelity_vs_steps.png and
    fidelity_vs_cost.png with the torch backend's Pareto front; for a timing-only run time_vs_steps.png
    instead) in `out`, published as one set (files.publish_files; bench.json last); their paths."""
    aggregates = record["aggregates"]
    files: dict[Path, Writer] = {
        out / "bench.md": lambda tmp: tmp.write_text(markdown(record), encoding="utf-8")
    }
    if record["config"]["timing_only"]:
        files[out / "time_vs_steps.png"] = plot_png(
            aggregates,
            "steps",
            "seconds_median",
            xlabel="steps",
            ylabel="median s/image (inversion)",
            logy=True,
        )
    else:
        files[out / "fidelity_vs_time.png"] = plot_png(
            aggregates,
            "seconds_median",
            "psnr",
            xlabel="median s/image (inversion)",
            ylabel="reconstruction PSNR dB",
            logx=True,
        )
        files[out / "fidelity_vs_steps.png"] = plot_png(
            aggregates, "steps", "psnr", xlabel="steps", ylabel="reconstruction PSNR dB"
        )
        backend = next(iter(record["summary"]), None)
        front = [(r["cost"], r["psnr"]) for r in record["summary"].get(backend, {}).get("pareto", [])]
        files[out / "fidelity_vs_cost.png"] = plot_png(
            [row for row in aggregates if row["backend"] == backend],
            "cost",
            "psnr",
            xlabel="denoiser-equivalent cost (NFE + solver calls × FLOP ratio)",
            ylabel="reconstruction PSNR dB",
            logx=True,
            front=front,
        )
    files[out / "bench.json"] = json_writer(record)
    written = publish_files(files)
    return [written[-1], *written[:-1]]  # listed with bench.json first
