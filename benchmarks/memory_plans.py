"""Estimated device memory of FLUX.1-dev under each memory plan (`--offload`), without its weights.

python benchmarks/memory_plans.py [--dtype bf16] [--out benchmarks/results]

FLUX.1-dev's weights cannot be downloaded here, but `fastinv info --model` reads only configs and the
safetensors headers. This writes a skeleton of the FLUX.1-dev folder: the published configs (CONFIGS, as on
the Hub), and for each component one safetensors file whose header lists the tensors diffusers or
transformers builds from that config (the models are built on the meta device, so nothing is allocated)
and whose data is a sparse hole of the right length. `fastinv.models.footprint` then estimates each plan's
peak at 1024×1024 exactly as for a real folder. These are estimates, not a GPU run's recorded peak; CUDA's
own context (some hundred MiB) is not in them. Writes memory_plans.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import struct
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from fastinv.bench.report import environment
from fastinv.device import resolve_dtype
from fastinv.files import save_json
from fastinv.models.footprint import footprint, memory_size
from fastinv.schedule import FLUX_SCHEDULER_DEFAULTS

GPU_BYTES = 24 * 2**30
"""A 24 GiB card (RTX 3090 / 4090, L4): the budget the plans are compared with."""
CONFIGS: dict[str, dict[str, Any]] = {
    # black-forest-labs/FLUX.1-dev's published configs (the keys fastinv and the model classes read)
    "transformer": {
        "_class_name": "FluxTransformer2DModel",
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    },
    "vae": {
        "_class_name": "AutoencoderKL",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 16,
        "layers_per_block": 2,
        "sample_size": 1024,
        "scaling_factor": 0.3611,
        "shift_factor": 0.1159,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
    "text_encoder": {  # CLIP ViT-L/14's text tower
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "projection_dim": 768,
        "vocab_size": 49408,
    },
    "text_encoder_2": {  # T5 v1.1 XXL's encoder
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "d_model": 4096,
        "d_ff": 10240,
        "d_kv": 64,
        "num_heads": 64,
        "num_layers": 24,
        "feed_forward_proj": "gated-gelu",
        "vocab_size": 32128,
    },
}
SCHEDULER = {"_class_name": "FlowMatchEulerDiscreteScheduler", **FLUX_SCHEDULER_DEFAULTS}  # FLUX.1-dev's
INDEX = {
    "_class_name": "FluxPipeline",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
WEIGHTS = {"transformer": "diffusion_pytorch_model", "vae": "diffusion_pytorch_model"}
"""Each component's weight file stem (transformers' components: "model")."""
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}
console = Console()


def meta_model(name: str, configs: dict[str, dict[str, Any]] = CONFIGS) -> torch.nn.Module:
    """The component `name` built from `configs` on the meta device: shapes and dtypes, no memory."""
    import diffusers
    import transformers

    config = {k: v for k, v in configs[name].items() if k not in ("_class_name", "architectures")}
    with torch.device("meta"):
        if "_class_name" in configs[name]:
            return getattr(diffusers, configs[name]["_class_name"])(**config)
        model_type = config.pop("model_type")
        settings = transformers.AutoConfig.for_model(model_type, **config)
        return getattr(transformers, configs[name]["architectures"][0])(settings)


def write_skeleton_weights(model: torch.nn.Module, path: Path, dtype: torch.dtype) -> int:
    """A safetensors file at `path` listing what `save_pretrained` saves of `model` (its state dict: the
    parameters and persistent buffers, tied ones once) at `dtype` (floating point), with a sparse data
    section: the header is real, the data a hole. Returns its tensor elements."""
    tensors: dict[int, tuple[str, torch.Tensor]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        tensors.setdefault(id(tensor), (name, tensor))  # a tied weight: the same tensor under two names
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = count = 0
    for name, tensor in tensors.values():
        kind = dtype if tensor.dtype.is_floating_point else tensor.dtype
        size = tensor.numel() * torch.empty((), dtype=kind).element_size()
        header[name] = {
            "dtype": SAFETENSORS_DTYPES[kind],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
        count += tensor.numel()
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format pads the header to 8 bytes
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(encoded)) + encoded)
        file.truncate(8 + len(encoded) + offset)  # a hole: no disk blocks
    return count


def write_skeleton(
    folder: Path,
    dtype: torch.dtype,
    configs: dict[str, dict[str, Any]] = CONFIGS,
    index: dict[str, Any] = INDEX,
    scheduler: dict[str, Any] = SCHEDULER,
) -> dict[str, int]:
    """A skeleton folder (see the module docstring; default: FLUX.1-dev's) of `configs`' components with
    `index` and `scheduler`; returns each component's parameters."""
    (folder / "scheduler").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    counts = {}
    for name, config in configs.items():
        (folder / name).mkdir()
        (folder / name / "config.json").write_text(json.dumps(config))
        path = folder / name / f"{WEIGHTS.get(name, 'model')}.safetensors"
        counts[name] = write_skeleton_weights(meta_model(name, configs), path, dtype)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bf16", help="the run dtype to estimate for (default bf16)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    dtype = resolve_dtype(args.dtype, torch.device("cuda"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "FLUX.1-dev"
        counts = write_skeleton(folder, dtype)
        estimate = footprint(folder, dtype)
    for component in estimate.components:
        assert component.parameters == counts[component.name], component  # the header lists the model
    table = Table(title=f"FLUX.1-dev, {args.dtype}, {estimate.resolution[0]}×{estimate.resolution[1]}")
    for column in ("plan / component", "memory", f"fits {memory_size(GPU_BYTES)}"):
        table.add_column(column, justify="left" if column.startswith("plan") else "right")
    for component in estimate.components:
        label = f"{component.name} ({component.parameters / 1e9:.2f} B)"
        table.add_row(label, memory_size(component.bytes), "")
    table.add_row("transformer activations per image", memory_size(estimate.denoiser_activations), "")
    table.add_row("VAE decode activations", memory_size(estimate.vae_activations), "")
    for plan, peak in estimate.plans.items():
        table.add_row(f"--offload {plan}: peak", memory_size(peak), "yes" if peak <= GPU_BYTES else "no")
    console.print(table, soft_wrap=True)
    record = {
        "command": shlex.join(["python", *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "note": "estimates from configs and safetensors headers (fastinv.models.footprint), not a GPU run's "
        "recorded peak; CUDA's own context is not counted",
        "model": "FLUX.1-dev (published configs, skeleton weights)",
        "dtype": args.dtype,
        "resolution": list(estimate.resolution),
        "tokens": {"image": estimate.tokens[0], "text": estimate.tokens[1]},
        **environment(torch.device("cpu")),
        "components": {c.name: {"parameters": c.parameters, "bytes": c.bytes} for c in estimate.components},
        "denoiser_activations_bytes": estimate.denoiser_activations,
        "vae_activations_bytes": estimate.vae_activations,
        "plans_peak_bytes": estimate.plans,
        "budget_bytes": GPU_BYTES,
        "fits": {plan: peak <= GPU_BYTES for plan, peak in estimate.plans.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    console.print(f"wrote {save_json(record, args.out / 'memory_plans.json')}")


if __name__ == "__main__":
    main()
