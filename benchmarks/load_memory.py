"""Host memory of loading a model folder: the peak RSS that `fastinv.models.load_model` adds, per byte of
weights, with diffusers' meta-device loading (accelerate installed, a fastinv dependency) and without it.

python benchmarks/load_memory.py [--dtype bf16] [--layers 24] [--out benchmarks/results]

SD3-medium's weights cannot be downloaded here, so this writes a skeleton of its folder: the published
transformer and VAE configs, each with one safetensors file whose header lists what diffusers builds from
that config and whose data is a sparse hole (reads as zeros; `memory_plans.write_skeleton`), the
scheduler, and no text encoders. Each load runs in a fresh child process, which reports its RSS after its
imports and its peak RSS (`ru_maxrss`) after the load and a read of every weight (safetensors maps the
file: its pages count once a run touches them). Without accelerate, diffusers builds the model in float32
first and copies the file's weights into it; `--without-accelerate` runs that path too, hiding accelerate
from that child only. `--layers` shortens the transformer (a smoke run). Writes
load_memory.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import is_accelerate_available
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_plans

from fastinv.bench.report import environment
from fastinv.device import resolve_dtype
from fastinv.files import save_json
from fastinv.memory import MIB, current_rss_mib, process_peak_rss_mib
from fastinv.models import load_model
from fastinv.models.footprint import memory_size
from fastinv.schedule import SD3_SCHEDULER_DEFAULTS

CONFIGS: dict[str, dict[str, Any]] = {
    # stabilityai/stable-diffusion-3-medium-diffusers' published configs
    "transformer": {
        "_class_name": "SD3Transformer2DModel",
        "attention_head_dim": 64,
        "caption_projection_dim": 1536,
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 24,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 192,
        "sample_size": 128,
    },
    # SD3's VAE: FLUX.1-dev's architecture (memory_plans.CONFIGS) with its own latent scaling
    "vae": {**memory_plans.CONFIGS["vae"], "scaling_factor": 1.5305, "shift_factor": 0.0609},
}
INDEX = {
    "_class_name": "StableDiffusion3Pipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "transformer": ["diffusers", "SD3Transformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    **{name: [None, None] for name in ("text_encoder", "text_encoder_2", "text_encoder_3")},
    **{name: [None, None] for name in ("tokenizer", "tokenizer_2", "tokenizer_3")},
}
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", **SD3_SCHEDULER_DEFAULTS}
CHILD = """
import sys
if sys.argv[3] == "hide":
    sys.modules["accelerate"] = None  # importlib.util.find_spec answers None: diffusers sees none
sys.path.insert(0, sys.argv[4])
from load_memory import load_and_read
load_and_read(sys.argv[1], sys.argv[2])
"""
console = Console()


def write_folder(folder: Path, dtype: torch.dtype, layers: int) -> int:
    """The SD3-medium skeleton folder (see the module docstring), its transformer cut to `layers` blocks;
    returns the bytes of weights it lists."""
    configs = {**CONFIGS, "transformer": {**CONFIGS["transformer"], "num_layers": layers}}
    counts = memory_plans.write_skeleton(folder, dtype, configs, INDEX, SCHEDULER)
    return sum(counts.values()) * dtype.itemsize


def load_and_read(folder: str | Path, dtype: str) -> dict[str, Any]:
    """Load `folder` in `dtype` with `load_model` and read every weight, as a run does (safetensors maps the
    file: its pages count once touched). Prints and returns {"accelerate": whether diffusers sees it, and in
    bytes "before" (RSS before the load), "resident" (RSS after the read), "peak" (peak RSS so far)}."""
    before = current_rss_mib()  # the imports' peak may lie above it
    if before is None:
        raise SystemExit("error: this benchmark reads the RSS from /proc/self/statm (Linux)")
    model = load_model(folder, dtype=resolve_dtype(dtype, torch.device("cpu")))
    with torch.no_grad():
        for module in (model.velocity.network, model.codec.vae):
            for tensor in module.state_dict().values():
                tensor.sum()
    sizes = {"before": before, "resident": current_rss_mib(), "peak": process_peak_rss_mib()}
    run = {"accelerate": is_accelerate_available(), **{key: round(mib * MIB) for key, mib in sizes.items()}}
    print(json.dumps(run))
    return run


def measure(folder: Path, dtype: str, hide_accelerate: bool) -> dict[str, Any]:
    """`load_and_read` in a fresh child process (so its peak is the load's), accelerate hidden from it or
    not."""
    here = str(Path(__file__).resolve().parent)
    command = [sys.executable, "-c", CHILD, str(folder), dtype, "hide" if hide_accelerate else "keep", here]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"error: the load failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", help="the load dtype (default bf16)")
    parser.add_argument("--layers", type=int, default=24, help="transformer blocks (SD3-medium: 24)")
    parser.add_argument("--without-accelerate", action="store_true", help="also load with accelerate hidden")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if not 1 <= args.layers <= 24:
        parser.error(f"--layers must be an integer in [1, 24], got {args.layers}")
    dtype = resolve_dtype(args.dtype, torch.device("cpu"))
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd3-medium"
        weights = write_folder(folder, dtype, args.layers)
        for hide in (False, True)[: 1 + args.without_accelerate]:
            run = measure(folder, args.dtype, hide)
            run["added"] = run["peak"] - run["before"]
            run["added_per_weight_byte"] = round(run["added"] / weights, 3)
            runs["accelerate hidden" if hide else "as installed"] = run
    table = Table(
        title=f"loading SD3-medium ({args.layers} blocks, skeleton), {args.dtype}: "
        f"{memory_size(weights)} of weights"
    )
    columns = ("load", "diffusers sees accelerate", "RSS after imports", "peak RSS", "added", "÷ weights")
    for column in columns:
        table.add_column(column, justify="left" if column == "load" else "right")
    for name, run in runs.items():
        sizes = (memory_size(run[key]) for key in ("before", "peak", "added"))
        ratio = f"{run['added_per_weight_byte']:.2f}"
        table.add_row(name, "yes" if run["accelerate"] else "no", *sizes, ratio)
    console.print(table, soft_wrap=True)
    record = {
        "command": shlex.join(["python", *sys.argv]) if argv is None else shlex.join(argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "a fresh process per load: RSS after its imports, peak RSS (ru_maxrss) after "
        "fastinv.models.load_model and a read of every weight; skeleton weights (published configs, "
        "sparse zero data), no text encoders",
        "model": f"SD3-medium transformer ({args.layers} of 24 blocks) and VAE",
        "dtype": args.dtype,
        "weights_bytes": weights,
        **environment(torch.device("cpu")),
        "runs": runs,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    console.print(f"wrote {save_json(record, args.out / 'load_memory.json')}")
    return record


if __name__ == "__main__":
    main()
