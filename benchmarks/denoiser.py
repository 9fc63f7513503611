"""Per-NFE time of the SD3-medium and FLUX.1-dev denoisers on a GPU: eager vs torch.compile vs CUDA graphs.

python benchmarks/denoiser.py [--batches 1,2] [--models sd3-medium,flux-dev] [--variants eager,compile]
    [--warmup 3] [--repeats 20] [--out benchmarks/results/denoiser.json]
python benchmarks/denoiser.py --device cpu --tiny --out FILE   # smoke run of the same code, meaningless times

Each transformer is diffusers' own architecture at full size (configs of fastinv/solver/flops.py) with
random weights (every parameter N(0, 0.02²)): timing only, the FLOPs are the real model's. It is built
directly on the GPU in bf16 and called as fastinv calls it, through its velocity adapter (SD3Velocity /
FluxVelocity): 1024² (latent float32 [B, 16, 128, 128]), σ = 0.5, prompt embeddings [1, L, D] in bf16
(L = 333 tokens for SD3, 512 for FLUX), no CFG, so one NFE = one transformer forward at batch B.

Variants: eager; compile (fastinv.runtime.fast_path.compiled); compile+cuda-graph (the call captured
by fastinv's CapturedStep, as the inversion steps are); cuda-graph (CapturedStep, no compile). Per variant:
the first call (compilation, graph warm-up) and, for graphs, the second (capture) are timed in wall seconds;
then --warmup untimed calls; then --repeats back-to-back calls timed by CUDA events: median, p20, p80 ms
per NFE, speed-up vs eager, and the relative difference of the velocity from eager's. MFU: FLOPs of one
forward (fastinv.solver.flops.count_flops on the meta device: matmuls and attention, multiply-add = 2,
× batch) / median time / a measured dense bf16 matmul rate (torch.mm, 8192³). Peak memory:
torch.cuda.max_memory_allocated over the variant, weights included. A variant that fails is reported and
the others still run (exit status 1); the JSON is rewritten after every model.

--device cpu --tiny: the tiny SD3 / FLUX-dev configs of tests/tiny_models.py in fp32, perf_counter timing,
no CUDA-graph variants, compile only with --compile-cpu; --out is required (never the GPU result file).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, NoReturn

import torch
from diffusers import FluxTransformer2DModel, ModelMixin, SD3Transformer2DModel
from rich.console import Console
from rich.table import Table

import fastinv
from fastinv.bench.timing import time_calls
from fastinv.conditioning import Conditioning
from fastinv.files import save_json
from fastinv.methods.base import NFECounter, Stopwatch
from fastinv.models.base import TransformerVelocity
from fastinv.models.flux import FluxVelocity
from fastinv.models.sd3 import SD3Velocity
from fastinv.runtime.fast_path import CapturedStep, compiled
from fastinv.solver.flops import FLUX_DEV, SD3_MEDIUM, TARGETS, Cost, flux_cost, sd3_cost

RESULT = Path(__file__).resolve().parent / "results" / "denoiser.json"
INIT_STD = 0.02
SIGMA = 0.5
SEED = 0
MATMUL_SIZE = {"cuda": 8192, "cpu": 512}
console = Console()


@dataclass(frozen=True)
class Family:
    """How a diffusers transformer class is called (fastinv's adapter) and counted (fastinv.solver.flops)."""

    network: type[ModelMixin]
    adapter: type[TransformerVelocity]
    cost: Callable[[dict[str, Any], tuple[int, int, int], int], Cost]


SD3 = Family(SD3Transformer2DModel, SD3Velocity, sd3_cost)
FLUX = Family(FluxTransformer2DModel, FluxVelocity, flux_cost)


@dataclass(frozen=True)
class Denoiser:
    """A transformer config and the forward it is timed at: latent (C, H, W) as the adapter sees it and the
    prompt length in tokens."""

    name: str
    label: str
    family: Family
    config: dict[str, Any]
    latent: tuple[int, int, int]
    text_tokens: int

    def count(self) -> Cost:
        """FLOPs and parameters of one forward at batch 1 (meta device: allocates nothing)."""
        return self.family.cost(self.config, self.latent, self.text_tokens)


def full_size(name: str, family: Family, config: dict[str, Any], target: str) -> Denoiser:
    """The real architecture at the forward fastinv.solver.flops.TARGETS[target] is counted at."""
    at = TARGETS[target]
    return Denoiser(name, at.denoiser, family, config, at.latent, at.text_tokens)


FULL = (
    full_size("sd3-medium", SD3, SD3_MEDIUM, "sd3-medium"),
    full_size("flux-dev", FLUX, FLUX_DEV, "flux"),
)
TINY_SD3: dict[str, Any] = {  # tests/tiny_models.py, make_tiny_sd3's transformer
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 4,
    "out_channels": 4,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": 48,
    "caption_projection_dim": 32,
    "pooled_projection_dim": 40,
    "pos_embed_max_size": 16,
}
TINY_FLUX: dict[str, Any] = {  # tests/tiny_models.py, make_tiny_flux(guidance_embeds=True)'s transformer
    "patch_size": 1,
    "in_channels": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 48,
    "pooled_projection_dim": 24,
    "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),
}
TINY = (
    Denoiser("sd3-tiny", "tiny SD3", SD3, TINY_SD3, (4, 8, 8), 8),
    Denoiser("flux-tiny", "tiny FLUX", FLUX, TINY_FLUX, (4, 8, 8), 8),
)


@dataclass(frozen=True)
class Variant:
    """How the velocity is called: compile = torch.compile'd transformer; graph = through a CapturedStep."""

    name: str
    compile: bool
    graph: bool


VARIANTS = (
    Variant("eager", compile=False, graph=False),
    Variant("compile", compile=True, graph=False),
    Variant("compile+cuda-graph", compile=True, graph=True),
    Variant("cuda-graph", compile=False, graph=True),
)


def fail(message: str) -> NoReturn:
    sys.exit(f"error: {message}")


def build_network(spec: Denoiser, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """spec's transformer allocated directly on `device` in `dtype` (no float32 copy of its weights), every
    parameter drawn from N(0, INIT_STD²) so that activations stay of order 1; frozen, eval mode."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            network = spec.family.network.from_config(spec.config)
    finally:
        torch.set_default_dtype(default)
    generator = torch.Generator(device).manual_seed(SEED)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.normal_(0.0, INIT_STD, generator=generator)
    if any(b.is_floating_point() and b.dtype != dtype for b in network.buffers()):
        network.to(dtype)  # SD3's pos_embed is built in float32; a bf16 checkpoint stores it in bf16
    return network.eval().requires_grad_(False)


def make_inputs(
    spec: Denoiser, batch: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, Conditioning]:
    """z: [B, C, H, W] float32 noise; sigma: [B] float32; cond: random prompt_embeds [1, L, D] and pooled
    [1, P] in `dtype` on `device` (no CFG)."""
    generator = torch.Generator(device).manual_seed(SEED)
    z = torch.randn(batch, *spec.latent, generator=generator, device=device)
    sigma = torch.full((batch,), SIGMA, device=device)
    text_shape = (1, spec.text_tokens, spec.config["joint_attention_dim"])
    embeds = torch.randn(text_shape, generator=generator, device=device, dtype=dtype)
    pooled_shape = (1, spec.config["pooled_projection_dim"])
    pooled = torch.randn(pooled_shape, generator=generator, device=device, dtype=dtype)
    return z, sigma, Conditioning(prompt="", prompt_embeds=embeds, pooled_embeds=pooled)


def summary(times: list[float]) -> dict[str, float]:
    """Median, p20 and p80 of `times` (ms); needs two or more."""
    p20, _, _, p80 = statistics.quantiles(times, n=5, method="inclusive")
    return {"ms_median": statistics.median(times), "ms_p20": p20, "ms_p80": p80}


def matmul_rate(device: torch.device, dtype: torch.dtype, warmup: int, repeats: int) -> dict[str, Any]:
    """Dense matmul rate (TFLOP/s): median time of torch.mm on two n×n `dtype` matrices (2n³ FLOPs)."""
    size = MATMUL_SIZE[device.type]
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    for _ in range(warmup):
        torch.mm(a, b)
    ms = statistics.median(time_calls(lambda: torch.mm(a, b), repeats, device))
    return {"size": size, "dtype": dtype_name(dtype), "ms": ms, "tflops": 2 * size**3 / ms / 1e9}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def skip_reason(variant: Variant, device: torch.device, compile_cpu: bool) -> str | None:
    if variant.graph and device.type != "cuda":
        return "CUDA graphs need CUDA"
    if variant.compile and device.type == "cpu" and not compile_cpu:
        return "compile is skipped on CPU unless --compile-cpu"
    return None


def release(device: torch.device) -> None:
    """On CUDA, free what the last variant left behind (graph pools, compiled-code buffers) before the next
    one, so that each variant's peak memory is its own. On the CPU nothing is measured that it would change,
    and a full collection in a large process costs seconds."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


@torch.no_grad()
def run_variant(
    velocity: TransformerVelocity,
    variant: Variant,
    inputs: tuple[torch.Tensor, torch.Tensor, Conditioning],
    device: torch.device,
    warmup: int,
    repeats: int,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Time `velocity(z, sigma, cond)` run as `variant`: (timings and memory, the last untimed velocity
    [B, C, H, W] float32). Raises if that velocity is not finite or NFE counting is off."""
    z, sigma, cond = inputs
    counter = NFECounter(velocity)

    def direct(z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return counter(z, sigma, cond)

    call = CapturedStep(direct, counter) if variant.graph else direct
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    live_at_start = torch.cuda.memory_allocated(device) / 2**30 if cuda else None
    watch = Stopwatch(device)
    v = call(z, sigma)  # compiles; a CapturedStep's eager warm-up
    first_call_s, capture_s = watch.seconds(), None
    if variant.graph:
        watch = Stopwatch(device)
        v = call(z, sigma)  # captures, then replays
        capture_s = watch.seconds()
    for _ in range(warmup):
        v = call(z, sigma)
    if v.shape != z.shape or not torch.isfinite(v).all():
        raise FloatingPointError(f"velocity of shape {tuple(v.shape)} for z {tuple(z.shape)}, or not finite")
    times = time_calls(lambda: call(z, sigma), repeats, device)
    calls = 1 + variant.graph + warmup + repeats
    if counter.calls != calls:
        raise RuntimeError(f"NFE counter says {counter.calls} calls, {calls} were made")
    measured = {
        **summary(times),
        "ms": times,
        "first_call_s": first_call_s,
        "capture_s": capture_s,
        "live_at_start_gib": live_at_start,
        "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }
    return measured, v


def benchmark_model(
    spec: Denoiser,
    variants: list[Variant],
    args: argparse.Namespace,
    device: torch.device,
    dtype: torch.dtype,
    peak_tflops: float,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """(the model's entry, one row per batch × variant that ran, one entry per variant that failed)."""
    with console.status(f"building {spec.label}"):
        watch = Stopwatch(device)
        network = build_network(spec, device, dtype)
        build_s = watch.seconds()
        cost = spec.count()
    model = {
        "name": spec.name,
        "label": spec.label,
        "latent": list(spec.latent),
        "text_tokens": spec.text_tokens,
        "params": cost.params,
        "flops_per_forward": cost.flops,
        "weights_gib": sum(p.numel() * p.element_size() for p in network.parameters()) / 2**30,
        "build_s": build_s,
    }
    velocities = {False: spec.family.adapter(network, dtype)}
    rows, failed = [], []
    for batch in args.batches:
        inputs = make_inputs(spec, batch, device, dtype)
        eager: tuple[float, torch.Tensor] | None = None  # median ms, velocity
        for variant in variants:
            where = {"model": spec.name, "batch": batch, "variant": variant.name}
            with console.status(f"{spec.label}, batch {batch}: {variant.name}"):
                try:
                    if variant.compile and True not in velocities:
                        velocities[True] = compiled(velocities[False])
                    measured, v = run_variant(
                        velocities[variant.compile], variant, inputs, device, args.warmup, args.repeats
                    )
                except Exception as error:  # e.g. an op a graph cannot capture: the other variants still run
                    failed.append({**where, "error": f"{type(error).__name__}: {error}"})
                    continue
                finally:
                    release(device)
            if variant.name == "eager":
                eager = (measured["ms_median"], v)
            flops = cost.flops * batch
            tflops = flops / measured["ms_median"] / 1e9
            difference = None if eager is None else float((v - eager[1]).norm() / eager[1].norm())
            rows.append(
                {
                    **where,
                    **measured,
                    "speedup_vs_eager": None if eager is None else eager[0] / measured["ms_median"],
                    "rel_diff_vs_eager": difference,
                    "flops": flops,
                    "tflops": tflops,
                    "mfu": tflops / peak_tflops,
                }
            )
    del velocities, network
    torch._dynamo.reset()  # compiled code holds the transformer
    release(device)
    return model, rows, failed


def print_table(record: dict[str, Any]) -> None:
    """One line per row; the matmul peak and skipped variants in the caption, failures below."""
    matmul = record["matmul"]
    title = f"Denoiser time per NFE ({record['device']}, {record['dtype']})"
    caption = [
        record["note"],
        f"MFU against the measured peak: {matmul['tflops']:,.1f} TFLOP/s ({matmul['size']}³ torch.mm)",
    ]
    caption += [f"skipped {name}: {reason}" for name, reason in record["skipped"].items()]
    table = Table(title=title, caption="\n".join(caption))
    columns = ("model", "B", "variant", "ms", "p20–p80 ms", "×eager", "TFLOP/s", "MFU")
    for column in (*columns, "1st call s", "capture s", "peak GiB"):
        table.add_column(column, justify="left" if column in columns[:3] else "right")
    for row in record["rows"]:
        table.add_row(
            row["model"],
            str(row["batch"]),
            row["variant"],
            f"{row['ms_median']:,.2f}",
            f"{row['ms_p20']:,.2f}–{row['ms_p80']:,.2f}",
            "–" if row["speedup_vs_eager"] is None else f"{row['speedup_vs_eager']:.2f}×",
            f"{row['tflops']:,.1f}",
            f"{row['mfu']:.1%}",
            f"{row['first_call_s']:,.1f}",
            "–" if row["capture_s"] is None else f"{row['capture_s']:,.1f}",
            "–" if row["peak_memory_gib"] is None else f"{row['peak_memory_gib']:,.1f}",
        )
    console.print(table)
    for failure in record["failed"]:
        where = f"{failure['model']}, batch {failure['batch']}, {failure['variant']}"
        console.print(f"[red]failed[/red] {where}: {failure['error']}")


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def hardware(device: torch.device) -> dict[str, Any]:
    """Host, and on CUDA the GPU: name, compute capability, memory, CUDA runtime, driver (nvidia-smi)."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        smi = shutil.which("nvidia-smi")
        query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"] if smi else None
        driver = subprocess.run(query, capture_output=True, text=True, check=False).stdout if query else ""
        info |= {
            "gpu": properties.name,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "gpu_memory_gib": properties.total_memory / 2**30,
            "cuda": torch.version.cuda,
            "driver": driver.split("\n")[0].strip() or None,
        }
    return info


def names(text: str, known: list[str], what: str) -> list[str]:
    """Comma-separated `text` as a list of `known` names, in `known`'s order."""
    chosen = text.split(",")
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        fail(f"unknown {what} {', '.join(unknown)}: choose from {', '.join(known)}")
    return [name for name in known if name in chosen]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: smoke run, --tiny")
    parser.add_argument("--tiny", action="store_true", help="the tiny test configs, not the real sizes")
    parser.add_argument("--models", help="comma-separated; default: sd3-medium,flux-dev (sd3-tiny,flux-tiny)")
    parser.add_argument("--batches", default="1", help="comma-separated batch sizes")
    parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS), help="comma-separated")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (and capture)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per variant, ≥ 2")
    parser.add_argument("--compile-cpu", action="store_true", help="also run the compile variant on CPU")
    parser.add_argument(
        "--out", type=Path, help="default benchmarks/results/denoiser.json; required for smoke runs"
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        fail(f"--device cuda but torch {torch.__version__} sees no CUDA GPU (--device cpu --tiny: smoke run)")
    if args.device == "cpu" and not args.tiny:
        fail("--device cpu runs only --tiny (the full-size models are for a GPU)")
    smoke = args.tiny or args.device == "cpu"
    if smoke and (args.out is None or args.out.resolve() == RESULT):
        fail(f"a smoke run needs --out, not {RESULT.name} (its timings must not replace the GPU results)")
    args.out = args.out or RESULT
    try:
        args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError:
        fail(f"--batches {args.batches!r}: comma-separated integers")
    if min(args.batches) < 1 or args.warmup < 0 or args.repeats < 2:
        fail("batches ≥ 1, --warmup ≥ 0 and --repeats ≥ 2")
    specs = TINY if args.tiny else FULL
    models = names(args.models or ",".join(s.name for s in specs), [s.name for s in specs], "model")
    args.models = [s for s in specs if s.name in models]
    variants = names(args.variants, [v.name for v in VARIANTS], "variant")
    args.variants = [v for v in VARIANTS if v.name in variants]
    return args


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    notes = ["random weights: timing only"]
    notes += ["cpu smoke run: timings meaningless"] if device.type == "cpu" else []
    notes += ["tiny models: timings meaningless"] if args.tiny and device.type == "cuda" else []
    skipped = {v.name: reason for v in args.variants if (reason := skip_reason(v, device, args.compile_cpu))}
    variants = [v for v in args.variants if v.name not in skipped]
    with console.status("matmul peak"):
        matmul = matmul_rate(device, dtype, warmup=25, repeats=max(args.repeats, 25))  # clocks ramped up
    record: dict[str, Any] = {
        "note": "; ".join(notes),
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "complete": False,
        "device": device.type,
        "dtype": dtype_name(dtype),
        "forward": f"velocity adapter, σ = {SIGMA}, no CFG: 1 NFE = 1 transformer forward at batch B",
        "init": f"every parameter N(0, {INIT_STD}²), seed {SEED}",
        "timing": f"{'CUDA events between' if device.type == 'cuda' else 'time.perf_counter per'} call; "
        f"{args.warmup} untimed calls after the first (and the capture), then {args.repeats} timed",
        "flops": "count_flops on meta (fastinv/solver/flops.py): matmul, conv, attention; multiply-add = 2",
        "batches": args.batches,
        "variants": [v.name for v in variants],
        "skipped": skipped,
        "matmul": matmul,
        "hardware": hardware(device),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": package_version("triton"),
            "diffusers": package_version("diffusers"),
            "fastinv": fastinv.__version__,
        },
        "models": [],
        "rows": [],
        "failed": [],
    }
    for spec in args.models:
        model, rows, failed = benchmark_model(spec, variants, args, device, dtype, matmul["tflops"])
        record["models"].append(model)
        record["rows"] += rows
        record["failed"] += failed
        save_json(record, args.out)
    record["complete"] = True
    print_table(record)
    console.print(f"wrote {save_json(record, args.out)}")
    if record["failed"]:
        fail(f"{len(record['failed'])} variant(s) failed (see 'failed' in {args.out})")


if __name__ == "__main__":
    main()
