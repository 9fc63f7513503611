"""DeepInv ÷ Euler inversion time at SD3-medium size: the trained-solver method's overhead at scale.

python benchmarks/deepinv_scale.py [--size 1024] [--steps 10,28] [--repeats 3] [--dtype bf16]
    [--out benchmarks/results/gpu/deepinv_scale.json]
python benchmarks/deepinv_scale.py --device cpu --model-config tiny --steps 2 --repeats 1 --out FILE   # smoke

The denoiser is diffusers' SD3Transformer2DModel with SD3-medium's architecture (fastinv/solver/flops.py),
built directly on the device in --dtype with random weights, every parameter N(0, 0.02²), exactly as
benchmarks/denoiser.py builds it (nothing is downloaded: timing only, the FLOPs are the real model's), and
called through fastinv's SD3Velocity adapter. The solver is preset `sd3-medium` (fastinv/solver/presets.py:
the warm-start design at SD3 size, about 1.4 % of the denoiser's FLOPs), random weights likewise, on
fastinv's TorchSolver. Both methods are fastinv's own functions (fastinv.methods.invert_euler and
invert_deepinv) on the RunConfig the CLI would use on this device (on CUDA: each step captured in a CUDA
graph, Triton step kernels; --compile adds torch.compile of both networks), over SD3's schedule (shift 3)
at --steps steps, no CFG (one denoiser call per step; deepinv adds one solver call per step).

x0: N(0, 1) latents [1, 16, S/8, S/8]; prompt embeddings random [1, 333, 4096] and [1, 2048] (CLIP + T5).
Per step count, one untimed run of each method (--warmup), then --repeats runs taking turns, each timed by
the inversion's own stopwatch (fastinv.methods.base.Stopwatch: CUDA events on a GPU, perf_counter on CPU;
a run includes its CUDA-graph warm-up and capture, as every inversion pays them). Also timed alone: one
denoiser forward and one solver forward (median of --calls). The ratio deepinv / euler is next to its
FLOP estimate, 1 + solver FLOPs / denoiser FLOPs (FlopCounterMode on meta; glue not counted).

--model-config tiny: the tiny SD3 test config (tests/tiny_models.py) and the sd3-medium preset shrunk to
its 4 channels; for CPU smoke runs; --out is required (its timings must not replace the GPU results).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import shlex
import statistics
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn

import torch
from denoiser import (
    FULL,
    INIT_STD,
    SEED,
    TINY,
    build_network,
    dtype_name,
    hardware,
    make_inputs,
    package_version,
)
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.conditioning import Conditioning
from fastinv.files import save_json
from fastinv.methods import invert_deepinv, invert_euler
from fastinv.methods.base import InversionResult, Stopwatch
from fastinv.models.sd3 import SD3Velocity
from fastinv.run_config import RunConfig
from fastinv.runtime.fast_path import compiled
from fastinv.schedule import SD3_SCHEDULER_DEFAULTS, flow_sigmas
from fastinv.solver import TorchSolver
from fastinv.solver.flops import network_cost, sd3_cost
from fastinv.solver.presets import preset

RESULT = Path(__file__).resolve().parent / "results" / "gpu" / "deepinv_scale.json"
PRESET = "sd3-medium"
MODEL_CONFIGS = {"sd3-medium": FULL[0], "tiny": TINY[0]}
DEFAULT_SIZE = {"sd3-medium": 1024, "tiny": 64}
TINY_SOLVER = {"num_attention_heads": 1, "attention_head_dim": 16, "layers": 2}
"""The sd3-medium preset shrunk for the tiny model (plus its channels and sample size)."""
VAE_FACTOR = 8
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
METHODS: dict[str, Callable[..., InversionResult]] = {"euler": invert_euler, "deepinv": invert_deepinv}
console = Console()


def fail(message: str) -> NoReturn:
    sys.exit(f"error: {message}")


def build_solver(latent: tuple[int, int, int], tiny: bool, device: torch.device, dtype: torch.dtype):
    """Preset `sd3-medium` (shrunk for the tiny model) on `device` in `dtype`, every parameter N(0, 0.02²)
    (the zero-initialised output projection too, so that the solver's output is not just v)."""
    overrides = {"in_channels": latent[0], "sample_size": latent[1]} | (TINY_SOLVER if tiny else {})
    chosen = preset(PRESET, **overrides)
    with torch.random.fork_rng(devices=[]):  # the constructor draws from the global generator: leave it be
        torch.manual_seed(SEED)
        network = chosen.network(**chosen.config).to(device=device, dtype=dtype)
    generator = torch.Generator(device).manual_seed(SEED + 1)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0.0, INIT_STD, generator=generator)
    return network.eval().requires_grad_(False), chosen


def median_ms(call: Callable[[], Any], calls: int, device: torch.device) -> float:
    """Median milliseconds of `calls` calls of `call` (after one untimed), each timed by a Stopwatch."""
    call()
    times = []
    for _ in range(calls):
        watch = Stopwatch(device)
        call()
        times.append(watch.seconds() * 1e3)
    return statistics.median(times)


def quantiles(times: list[float]) -> dict[str, float]:
    """Median, and p20 / p80 where there are two or more times."""
    out = {"s_median": statistics.median(times)}
    if len(times) > 1:
        p20, _, _, p80 = statistics.quantiles(times, n=5, method="inclusive")
        out |= {"s_p20": p20, "s_p80": p80}
    return out


def flop_estimate(spec: Any, latent: tuple[int, int, int], solver_config: dict[str, Any], network: type):
    """(denoiser FLOPs, solver FLOPs) of one forward at batch 1 on the meta device."""
    denoiser = sd3_cost(spec.config, latent, spec.text_tokens)
    solver = network_cost(network, solver_config, latent, spec.text_tokens)
    return denoiser.flops, solver.flops


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run")
    parser.add_argument("--model-config", choices=tuple(MODEL_CONFIGS), default="sd3-medium")
    parser.add_argument("--size", type=int, help="image side S in pixels (default 1024; tiny: 64)")
    parser.add_argument("--steps", default="10,28", help="comma-separated step counts")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method and step count")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per method and step count")
    parser.add_argument("--calls", type=int, help="timed single forwards of each network (10; cpu: 3)")
    parser.add_argument("--dtype", choices=tuple(DTYPES), help="the networks' dtype (default bf16; cpu fp32)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run the steps eagerly on CUDA")
    parser.add_argument("--kernels", choices=("auto", "torch"), default="auto", help="step kernels")
    parser.add_argument(
        "--out", type=Path, help="default benchmarks/results/gpu/deepinv_scale.json; required for smoke runs"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(
            f"--device cuda but torch {torch.__version__} sees no CUDA GPU (--device cpu --model-config tiny)"
        )
    if args.device == "cpu" and args.model_config != "tiny":
        fail("--device cpu runs only --model-config tiny (the SD3-medium architecture is for a GPU)")
    smoke = args.device == "cpu" or args.model_config == "tiny"
    if smoke and (args.out is None or args.out.resolve() == RESULT):
        fail(f"a smoke run needs --out, not {RESULT.name} (its timings must not replace the GPU results)")
    args.out = args.out or RESULT
    try:
        args.steps = [int(n) for n in args.steps.split(",")]
    except ValueError:
        fail(f"--steps {args.steps!r}: comma-separated integers")
    args.size = args.size or DEFAULT_SIZE[args.model_config]
    args.calls = args.calls or (10 if args.device == "cuda" else 3)
    if min(args.steps) < 1 or args.repeats < 1 or args.warmup < 0 or args.calls < 1:
        fail("steps ≥ 1, --repeats ≥ 1, --warmup ≥ 0 and --calls ≥ 1")
    if args.size <= 0 or args.size % (VAE_FACTOR * 2):
        fail(f"--size {args.size}: a positive multiple of {VAE_FACTOR * 2} (VAE factor × patch)")
    args.dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    return args


def print_table(record: dict[str, Any]) -> None:
    title = f"DeepInv ÷ Euler inversion time ({record['model']}, {record['device']}, {record['dtype']})"
    caption = [record["note"], f"latent {'×'.join(map(str, record['latent']))}; {record['run_config']}"]
    if record["flops"]:
        caption.append(f"FLOP estimate of the ratio: {record['flops']['ratio_estimate']:.4f}")
    table = Table(title=title, caption="\n".join(caption))
    for column in ("steps", "method", "NFE", "solver calls", "s (median)", "ms / step", "deepinv ÷ euler"):
        table.add_column(column, justify="left" if column in ("method",) else "right")
    for row in record["rows"]:
        ratio = record["ratios"].get(str(row["steps"])) if row["method"] == "deepinv" else None
        table.add_row(
            str(row["steps"]),
            row["method"],
            str(row["nfe"]),
            str(row["solver_calls"]),
            f"{row['s_median']:.3f}",
            f"{row['ms_per_step']:.1f}",
            "–" if ratio is None else f"{ratio:.3f}",
        )
    console.print(table)
    calls = record["forward_ms"]
    console.print(f"one forward: denoiser {calls['denoiser']:.2f} ms, solver {calls['solver']:.2f} ms")


@torch.no_grad()
def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    tiny = args.model_config == "tiny"
    base = MODEL_CONFIGS[args.model_config]
    latent = (base.latent[0], args.size // VAE_FACTOR, args.size // VAE_FACTOR)
    spec = dataclasses.replace(base, latent=latent)
    with console.status(f"building {spec.label} and the {PRESET} solver"):
        network = build_network(spec, device, args.dtype)
        solver_network, chosen = build_solver(latent, tiny, device, args.dtype)
    config = RunConfig.resolve(
        device,
        args.dtype,
        compile=args.compile,
        cuda_graphs=False if args.no_cuda_graphs else None,
        kernels=args.kernels,
    )
    velocity: Any = SD3Velocity(network, args.dtype)
    solver: Any = TorchSolver(solver_network, args.dtype)
    if config.compile:
        velocity, solver = compiled(velocity), compiled(solver)
    x0, _, cond = make_inputs(spec, 1, device, args.dtype)
    cond = Conditioning(prompt="", prompt_embeds=cond.prompt_embeds, pooled_embeds=cond.pooled_embeds)
    try:
        denoiser_flops, solver_flops = flop_estimate(spec, latent, chosen.config, chosen.network)
        flops = {
            "denoiser_per_forward": denoiser_flops,
            "solver_per_forward": solver_flops,
            "solver_fraction": solver_flops / denoiser_flops,
            "ratio_estimate": 1 + solver_flops / denoiser_flops,
        }
    except Exception as error:  # the count is context; timing goes on without it
        console.print(f"[yellow]FLOP count failed[/yellow]: {type(error).__name__}: {error}")
        flops = None

    rows: list[dict[str, Any]] = []
    for steps in args.steps:
        sigmas = flow_sigmas(SD3_SCHEDULER_DEFAULTS, steps, family="sd3")
        times: dict[str, list[float]] = {name: [] for name in METHODS}
        last: dict[str, InversionResult] = {}
        for turn in range(args.warmup + args.repeats):
            for name, invert in METHODS.items():
                options = {"solver": solver} if name == "deepinv" else {}
                with console.status(f"{steps} steps: {name}, run {turn + 1}/{args.warmup + args.repeats}"):
                    result = invert(velocity, x0, sigmas, cond, config=config, **options)
                if turn >= args.warmup:
                    times[name].append(result.seconds)
                last[name] = result
        for name in METHODS:
            result = last[name]
            summary = quantiles(times[name])
            rows.append(
                {
                    "steps": steps,
                    "method": name,
                    "nfe": result.nfe,
                    "solver_calls": result.solver_calls,
                    "seconds": times[name],
                    **summary,
                    "ms_per_step": summary["s_median"] * 1e3 / steps,
                    "finite": bool(torch.isfinite(result.z_T).all()),
                }
            )
        del last
        gc.collect()
    medians = {(r["steps"], r["method"]): r["s_median"] for r in rows}
    ratios = {str(n): medians[n, "deepinv"] / medians[n, "euler"] for n in args.steps}

    z = x0.clone()
    sigma = torch.full((1,), 0.5, device=device)
    v = velocity(z, sigma, cond)
    forward_ms = {
        "denoiser": median_ms(lambda: velocity(z, sigma, cond), args.calls, device),
        "solver": median_ms(lambda: solver(v, z, x0, sigma * 0.9, sigma, cond, v), args.calls, device),
    }
    cpu = device.type == "cpu"
    notes = ["random weights: timing only"] + (["cpu smoke run: timings meaningless"] if cpu else [])
    notes += ["tiny model: timings meaningless"] if tiny and not cpu else []
    record: dict[str, Any] = {
        "note": "; ".join(notes),
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": device.type,
        "dtype": dtype_name(args.dtype),
        "model": spec.label,
        "model_config": args.model_config,
        "size": args.size,
        "latent": [1, *latent],
        "text_tokens": spec.text_tokens,
        "solver_preset": PRESET,
        "solver_config": chosen.config,
        "run_config": config.describe(),
        "run_config_record": config.record(),
        "schedule": "SD3: FlowMatchEulerDiscreteScheduler, shift 3.0, no CFG",
        "timing": f"InversionResult.seconds ({'CUDA events' if not cpu else 'perf_counter'}); "
        f"{args.warmup} untimed run(s), then {args.repeats} timed, methods taking turns",
        "init": f"every parameter N(0, {INIT_STD}²), seed {SEED}",
        "steps": args.steps,
        "repeats": args.repeats,
        "flops": flops,
        "rows": rows,
        "ratios": ratios,
        "forward_ms": forward_ms,
        "hardware": hardware(device),
        "versions": {
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "triton": package_version("triton"),
            "diffusers": package_version("diffusers"),
            "fastinv": fastinv.__version__,
        },
    }
    if device.type == "cuda":
        record["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print_table(record)
    console.print(f"wrote {save_json(record, args.out)}")
    if not all(row["finite"] for row in rows):
        fail(f"a method produced a non-finite z_T (see 'finite' in {args.out})")


if __name__ == "__main__":
    main()
