"""Fused step kernels on the GPU: eager torch reference vs torch.compile(reference) vs Triton, per op.

python benchmarks/kernels.py [--sizes 512,1024] [--batches 1,4] [--repeats 200] [--out FILE]
python benchmarks/kernels.py --device cpu --sizes 16 --repeats 3 --out FILE   # smoke run, meaningless times

Latents: SD3 and FLUX both step float32 [B, 16, S/8, S/8] at S² pixels (FLUX's packed [B, S²/256, 64]
tokens are unpacked before the step, fastinv/models/flux.py), so one shape per size serves both. Each op
as the methods call it: bf16 velocity / noise, float32 state, per-sample [B] h (see OPS). Every variant's
output is first checked against the eager reference (bf16 tolerance). Times, in µs: median (p20, p80) of
--repeats calls after --warmup; on CUDA from CUDA events between back-to-back calls (fastinv.bench.timing;
"call": host launch overhead included wherever the GPU waits for it) and between replays of a CUDA graph of
--graph-calls calls, per call ("graph": device time, what the fast path's CapturedStep replays). GB/s = the
bytes the op must move (each input read once, each output written once) / median time, next to the device's
copy bandwidth (a 1 GiB device-to-device copy_, read + write). Writes the JSON (every figure, command,
hardware, versions) to --out.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv import kernels
from fastinv.bench.timing import time_calls
from fastinv.files import save_json

CHANNELS, VAE_FACTOR = 16, 8  # SD3 and FLUX latents
COPY_BYTES = {"cuda": 1 << 30, "cpu": 8 << 20}
TOLERANCE = {"rtol": 1.6e-2, "atol": 1e-5}  # torch.testing's bf16 defaults
console = Console()

Inputs = tuple[tuple[Any, ...], dict[str, Any]]
Variant = Callable[[str], Callable[..., Any]]  # op name -> the function to time


@dataclass(frozen=True)
class Op:
    """A fused step op, `call` describing its arguments, `inputs(z, velocity, h)` building them."""

    name: str
    call: str
    inputs: Callable[[Callable[[], torch.Tensor], Callable[[], torch.Tensor], torch.Tensor], Inputs]


OPS = (
    Op(
        "cfg_euler_update",
        "z, v, h, v_null, guidance 4.5 (sampling with CFG)",
        lambda z, v, h: ((z(), v(), h), {"v_null": v(), "guidance": 4.5}),
    ),
    Op(
        "fixed_point_update",
        "z, v, h, v_null, guidance 4.5 (methods/warm_fixed_point.py with CFG)",
        lambda z, v, h: ((z(), v(), h), {"v_null": v(), "guidance": 4.5}),
    ),
    Op("deepinv_update", "z, ε̂, h (methods/deepinv.py)", lambda z, v, h: ((z(), v(), h), {})),
    Op(
        "easyinv_update",
        "z, z_prev, v, h, [B] η (methods/easyinv.py)",
        lambda z, v, h: ((z(), z(), v(), h, torch.full_like(h, 0.8)), {}),
    ),
    Op(
        "renoise_update",
        "z, v, h, average, float weight (methods/renoise.py)",
        lambda z, v, h: ((z(), v(), h, z(), 0.25), {}),
    ),
)


def tensors_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    return [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]


def make_inputs(op: Op, batch: int, size: int, device: torch.device, seed: int) -> Inputs:
    """The op's inputs on float32 [B, 16, S/8, S/8] latents: state float32, velocities bf16, h [B]."""
    g = torch.Generator(device).manual_seed(seed)
    shape = (batch, CHANNELS, size // VAE_FACTOR, size // VAE_FACTOR)

    def state() -> torch.Tensor:
        return torch.randn(shape, generator=g, device=device)

    def velocity() -> torch.Tensor:
        return torch.randn(shape, generator=g, device=device).bfloat16()

    h = -0.02 * (1 + torch.rand(batch, generator=g, device=device))
    return op.inputs(state, velocity, h)


def outputs_of(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def time_us(fn: Callable[[], Any], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """µs of each of `repeats` calls of `fn` after `warmup` calls (fastinv.bench.timing's clock)."""
    return [ms * 1e3 for ms in time_calls(fn, repeats, device, warmup)]


def time_graph(fn: Callable[[], Any], calls: int, repeats: int, warmup: int) -> list[float]:
    """µs per call of `fn` replayed from a CUDA graph of `calls` calls (`fn` warmed up on a side stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return [t / calls for t in time_us(graph.replay, repeats, 1, torch.device("cuda"))]


def summary(times: list[float], nbytes: int) -> dict[str, float]:
    """Median, p20, p80 (µs) and GB/s at the median."""
    p20, _, _, p80 = statistics.quantiles(times, n=5, method="inclusive")
    median = statistics.median(times)
    return {"median_us": median, "p20_us": p20, "p80_us": p80, "gb_s": nbytes / median / 1e3}


def copy_bandwidth(device: torch.device, repeats: int, warmup: int) -> float:
    """GB/s of a device-to-device `dst.copy_(src)` of COPY_BYTES, counting the read and the write."""
    nbytes = COPY_BYTES[device.type]
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return summary(time_us(lambda: dst.copy_(src), repeats, warmup, device), 2 * nbytes)["gb_s"]


def compiled_reference(name: str) -> Callable[..., Any]:
    """torch.compile of the reference op, compiled afresh (static shapes) for the next shape."""
    torch._dynamo.reset()
    return torch.compile(getattr(kernels.reference, name), dynamic=False)


def benchmark(
    op: Op,
    size: int,
    batch: int,
    variants: dict[str, Variant],
    device: torch.device,
    args: argparse.Namespace,
) -> list[dict[str, Any]]:
    """One row per variant of `op` at S = `size`, B = `batch`: correctness, call (and graph) timings."""
    inputs, kwargs = make_inputs(op, batch, size, device, seed=size + batch)
    expected = outputs_of(getattr(kernels.reference, op.name)(*inputs, **kwargs))
    nbytes = sum(t.numel() * t.element_size() for t in (*tensors_of(inputs, kwargs), *expected))
    rows = []
    for variant, function in variants.items():
        call = functools.partial(function(op.name), *inputs, **kwargs)
        start = time.perf_counter()
        got = outputs_of(call())  # compiles / autotunes
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_call_ms = (time.perf_counter() - start) * 1e3
        error = max((g - e).abs().max().item() for g, e in zip(got, expected, strict=True))
        try:
            for g, e in zip(got, expected, strict=True):
                torch.testing.assert_close(g, e, **TOLERANCE)
            matches = True
        except AssertionError:
            matches = False
        row: dict[str, Any] = {
            "op": op.name,
            "call": op.call,
            "size": size,
            "batch": batch,
            "latent": [batch, CHANNELS, size // VAE_FACTOR, size // VAE_FACTOR],
            "variant": variant,
            "matches_reference": matches,
            "max_abs_error": error,
            "bytes": nbytes,
            "first_call_ms": first_call_ms,
            **summary(time_us(call, args.repeats, args.warmup, device), nbytes),
        }
        if device.type == "cuda":
            try:
                graph = summary(time_graph(call, args.graph_calls, args.repeats, args.warmup), nbytes)
                row |= {f"graph_{key}": value for key, value in graph.items()}
            except Exception as failure:  # a variant that cannot be captured still gets its call timings
                row["graph_error"] = f"{type(failure).__name__}: {failure}"
        rows.append(row)
    compiled = next((r for r in rows if r["variant"] == "compile"), None)
    triton_row = next(r for r in rows if r["variant"] == "triton")
    for kind, key in (("call", "median_us"), ("graph", "graph_median_us")):
        if compiled is not None and key in compiled and key in triton_row:
            triton_row[f"speedup_vs_compile_{kind}"] = compiled[key] / triton_row[key]
            triton_row[f"beats_compile_{kind}"] = triton_row[key] < compiled[key]
    return rows


def print_table(rows: list[dict[str, Any]], copy_gb_s: float, title: str) -> None:
    """One line per row; the graph and Triton-vs-compile columns only when some row has them."""
    graphs = any("graph_median_us" in row for row in rows)
    versus = any("speedup_vs_compile_call" in row for row in rows)
    table = Table(title=f"{title} (copy bandwidth {copy_gb_s:,.0f} GB/s)")
    columns = ["latent", "op", "variant", "ok", "call µs", "p20–p80 µs", "GB/s", "% copy"]
    columns += ["graph µs", "graph GB/s", "graph % copy"] if graphs else []
    columns += ["Triton vs compile (call / graph)"] if versus else []
    for column in columns:
        table.add_column(column, justify="left" if column in columns[:4] else "right")
    for row in rows:
        cells = [
            "×".join(map(str, row["latent"])),
            row["op"].removesuffix("_update"),
            row["variant"],
            "yes" if row["matches_reference"] else "[red]NO[/red]",
            f"{row['median_us']:,.1f}",
            f"{row['p20_us']:,.1f}–{row['p80_us']:,.1f}",
            f"{row['gb_s']:,.1f}",
            f"{row['gb_s'] / copy_gb_s:.1%}",
        ]
        if graphs:
            graph = "graph_median_us" in row
            cells += [f"{row['graph_median_us']:,.2f}", f"{row['graph_gb_s']:,.0f}"] if graph else ["–", "–"]
            cells += [f"{row['graph_gb_s'] / copy_gb_s:.1%}" if graph else row.get("graph_error", "–")[:40]]
        if versus:
            speedups = [row.get(f"speedup_vs_compile_{kind}") for kind in ("call", "graph")]
            cells.append(
                " / ".join(f"{'faster' if x > 1 else 'slower'} {x:.2f}×" for x in speedups if x is not None)
            )
        table.add_row(*cells)
    console.print(table)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run")
    parser.add_argument("--sizes", default="512,1024", help="comma-separated image sizes S (pixels)")
    parser.add_argument("--batches", default="1,4", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per variant")
    parser.add_argument("--warmup", type=int, default=20, help="untimed calls before timing")
    parser.add_argument("--graph-calls", type=int, default=20, help="calls captured per CUDA graph")
    parser.add_argument("--compile-cpu", action="store_true", help="also time torch.compile on CPU")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/kernels.json; cpu: required")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.batches = [int(b) for b in args.batches.split(",")]
    if any(s <= 0 or s % VAE_FACTOR for s in args.sizes) or min(args.batches) < 1:
        sys.exit(f"error: sizes must be positive multiples of {VAE_FACTOR} and batches ≥ 1")
    if args.repeats < 2 or args.warmup < 0 or args.graph_calls < 1:
        sys.exit("error: need --repeats ≥ 2, --warmup ≥ 0, --graph-calls ≥ 1")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda but torch sees no CUDA device (--device cpu for a smoke run)")
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            sys.exit("error: TRITON_INTERPRET is set: the Triton kernels would run on the host")
        args.out = args.out or Path("benchmarks/results/kernels.json")
    elif args.out is None:
        sys.exit("error: a cpu smoke run needs --out (its timings must not replace the GPU results)")
    return args


def main() -> None:
    args = parse_args()
    if args.device == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # read when triton_glue's kernels are defined, at its import
    try:
        triton = importlib.import_module("triton")
        glue = importlib.import_module("fastinv.kernels.triton_glue")
    except ImportError as missing:
        sys.exit(f"error: the Triton kernels need `triton` ({missing})")
    device = torch.device(args.device)
    variants: dict[str, Variant] = {"eager": lambda name: getattr(kernels.reference, name)}
    if device.type == "cuda" or args.compile_cpu:
        variants["compile"] = compiled_reference
    variants["triton"] = lambda name: getattr(glue, name)
    with console.status("copy bandwidth"):
        copy_gb_s = copy_bandwidth(device, min(args.repeats, 20), 3)
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            for op in OPS:
                with console.status(f"{op.name} at {size}², batch {batch}"):
                    rows.extend(benchmark(op, size, batch, variants, device, args))
    cpu = device.type == "cpu"
    title = "Fused step kernels" + (": CPU smoke run, Triton interpreted, timings meaningless" if cpu else "")
    print_table(rows, copy_gb_s, title)
    hardware: dict[str, Any] = {"platform": platform.platform(), "cpus": os.cpu_count()}
    if not cpu:
        properties = torch.cuda.get_device_properties(device)
        hardware |= {
            "gpu": properties.name,
            "capability": f"{properties.major}.{properties.minor}",
            "gpu_memory_gib": properties.total_memory / 2**30,
        }
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "cpu smoke run: timings meaningless" if cpu else "CUDA events; graph_* = CUDA-graph replays",
        "device": args.device,
        "latents": "SD3 and FLUX: float32 [B, 16, S/8, S/8]; velocities bf16; h per sample [B]",
        "variants": list(variants),
        "copy_gb_s": copy_gb_s,
        "tolerance": TOLERANCE,
        "hardware": hardware,
        "versions": {
            "torch": torch.__version__,
            "triton": triton.__version__,
            "cuda": torch.version.cuda,
            "fastinv": fastinv.__version__,
        },
        "rows": rows,
    }
    console.print(f"wrote {save_json(record, args.out)}")
    mismatches = sum(not row["matches_reference"] for row in rows)
    if mismatches:
        sys.exit(f"error: {mismatches} variant(s) differ from the eager reference (matches_reference)")


if __name__ == "__main__":
    main()
