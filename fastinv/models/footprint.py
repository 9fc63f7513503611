"""Estimated device memory of a model folder under each memory plan (`fastinv info --model DIR`), without
loading it: parameter counts from the safetensors headers (nothing else is read), times the run dtype's
bytes, plus an activation estimate at the model's resolution.

How it is estimated (an estimate: not yet compared with a GPU run's recorded peak):
- weights: every floating-point tensor at the run dtype (fastinv casts them on load), others at their own
  size; the files a diffusers load reads: `*.safetensors.index.json`'s shards, else the one unsharded
  file (variants such as `.fp16.safetensors` are not counted).
- denoiser activations, per image: ACTIVATION_WIDTHS · T · d · bytes, T = image tokens + text tokens, d
  = heads × head dim. 24 d-wide tensors per token is one block at its widest (FLUX's single block:
  residual, normed copy, q/k/v, q/k rotated in fp32, attention output, the 4d MLP before and after GELU
  and their 5d concatenation); attention runs in SDPA's flash / memory-efficient kernels, no T × T matrix.
  Classifier-free guidance (guidance ≠ 1) runs a batch of 2: twice this.
- VAE activations: VAE_WIDTHS · H · W · C0 · bytes, C0 = block_out_channels[0]: the decoder's last,
  full-resolution block holds about six such tensors at once.
- text encoders: weights only (their activations for one prompt are small).
- plans (`fastinv.models.offload`): none = all weights + the larger activation; text = transformer + VAE
  + the larger activation; model = the largest of (text encoders, VAE + its activations, transformer +
  its activations). CUDA's own context (some hundred MiB) is not counted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from fastinv.errors import FastinvError
from fastinv.models.loading import TEXT_COMPONENTS, _has_component, _read_json, _resolution, inspect_folder
from fastinv.models.minilm import SPEC_FILE, SentenceEncoderSpec
from fastinv.models.variants import Variant, detect_variant

ACTIVATION_WIDTHS = 24
"""d-wide tensors per token that one transformer block holds at its widest (see the module docstring)."""
VAE_WIDTHS = 6
"""Full-resolution C0-channel tensors the VAE decoder holds at once."""
WEIGHT_FILES = ("diffusion_pytorch_model", "model")
"""The stems of the weight files diffusers / transformers load from a component folder."""
TEXT_TOKENS = {"sd3": 77 + 256, "flux": 512}
"""Text tokens the pipelines' encode_prompt gives by default: SD3's CLIP 77 + T5 256, FLUX's T5 512."""
DEFAULT_SIDE = 1024
"""FluxPipeline's default side (128 latent pixels × 8), used where a folder states no resolution."""
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class Component:
    """One component's weights: parameters (tensor elements) and bytes at the run dtype; None where the
    folder has no safetensors weights for it (`note` says why). offloaded: whether model offload moves it
    to the device (the packaged sentence encoder stays in CPU memory under both offload plans)."""

    name: str
    parameters: int | None
    bytes: int | None
    note: str = ""
    offloaded: bool = True


@dataclass(frozen=True)
class Footprint:
    """A folder's estimate: its variant, the components' weights, the activations (bytes, per image without
    CFG) of the denoiser and the VAE at `resolution` (W, H) with `tokens` (image, text), and each plan's
    peak in bytes."""

    variant: Variant
    dtype: torch.dtype
    components: list[Component]
    resolution: tuple[int, int]
    tokens: tuple[int, int]
    denoiser_activations: int
    vae_activations: int
    plans: dict[str, int]


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files a diffusers load reads from `folder`: a sharded index's files, else the
    unsharded file; [] when there is neither. The index is untrusted: only plain file names in `folder`."""
    for stem in WEIGHT_FILES:
        index = folder / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            names = set(weight_map.values()) if isinstance(weight_map, dict) else {None}
            if not all(
                isinstance(n, str) and n.endswith(".safetensors") and Path(n).name == n for n in names
            ):
                raise FastinvError(f"{index}: weight_map must map tensors to .safetensors files in {folder}")
            return [folder / name for name in sorted(names)]
        if (folder / f"{stem}.safetensors").is_file():
            return [folder / f"{stem}.safetensors"]
    return []


def tensor_sizes(path: Path, dtype: torch.dtype) -> tuple[int, int]:
    """(elements, bytes at `dtype` for floating-point tensors, own size for the others) of a safetensors
    file, from its header only."""
    elements = size = 0
    run_bytes = torch.empty((), dtype=dtype).element_size()
    try:
        with safe_open(str(path), framework="pt") as file:
            for name in file.keys():  # noqa: SIM118 (safe_open is not a mapping)
                view = file.get_slice(name)
                count = 1
                for side in view.get_shape():
                    count *= side
                kind = view.get_dtype()
                elements += count
                size += count * (run_bytes if kind in FLOAT_DTYPES else _own_bytes(kind))
    except (SafetensorError, OSError, ValueError) as err:
        raise FastinvError(f"cannot read the safetensors header of {path}: {err}") from err
    return elements, size


def _own_bytes(kind: str) -> int:
    """Bytes per element of a non-float safetensors dtype ("I64" → 8, "BOOL" → 1)."""
    digits = "".join(c for c in kind if c.isdigit())
    return max(1, int(digits) // 8) if digits else 1


def component(name: str, folder: Path, dtype: torch.dtype) -> Component:
    """`name`'s weights in `folder`, summed over its weight files."""
    files = weight_files(folder)
    if not files:
        return Component(name, None, None, f"no safetensors weights in {folder}")
    missing = [path for path in files if not path.is_file()]
    if missing:
        raise FastinvError(f"{folder}: the weight file {missing[0].name} its index names is missing")
    sizes = [tensor_sizes(path, dtype) for path in files]
    return Component(name, sum(e for e, _ in sizes), sum(b for _, b in sizes))


def _text_components(family: str, model_dir: Path, index: dict[str, Any] | None, dtype: torch.dtype) -> list:
    """The folder's text encoders: the pipeline's, or the packaged sentence encoder a spec names."""
    spec = model_dir / "text_encoder" / SPEC_FILE
    if spec.is_file():
        try:
            folder = SentenceEncoderSpec.read(spec).model_path()
        except FastinvError as err:
            return [Component("text_encoder", None, None, str(err), offloaded=False)]
        packaged = component("text_encoder (packaged sentence encoder)", folder, dtype)
        return [dataclasses.replace(packaged, offloaded=False)]
    names = [n for n in TEXT_COMPONENTS[family] if n.startswith("text_encoder")]
    return [component(n, model_dir / n, dtype) for n in names if _has_component(model_dir, index, n)]


def _int(config: dict[str, Any], key: str, source: Path, default: int | None = None) -> int:
    """config[key] as a positive integer (default when absent and given), else a one-line error."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1 << 20:
        raise FastinvError(f"{source}: {key} must be a positive integer, got {value!r}")
    return value


def footprint(model_dir: Path, dtype: torch.dtype) -> Footprint:
    """The estimate for `model_dir` run in `dtype` (see the module docstring)."""
    family, transformer_dir, index = inspect_folder(model_dir)
    config_path = transformer_dir / "config.json"
    config = _read_json(config_path)
    scheduler_file = model_dir / "scheduler" / "scheduler_config.json"
    scheduler = _read_json(scheduler_file) if scheduler_file.is_file() else None
    variant = detect_variant(family, config, scheduler, model_dir.resolve().name)
    components = [component("transformer", transformer_dir, dtype)]
    factor, c0 = 1, 0
    if index is not None and _has_component(model_dir, index, "vae"):
        vae_config_path = model_dir / "vae" / "config.json"
        vae_config = _read_json(vae_config_path)
        widths = vae_config.get("block_out_channels")
        if (
            not isinstance(widths, list)
            or not widths
            or not all(isinstance(w, int) and w > 0 for w in widths)
        ):
            raise FastinvError(f"{vae_config_path}: block_out_channels must be a list of positive integers")
        factor, c0 = 2 ** (len(widths) - 1), widths[0]
        components.append(component("vae", model_dir / "vae", dtype))
    components += _text_components(family, model_dir, index, dtype)

    heads, head_dim = (
        _int(config, "num_attention_heads", config_path),
        _int(config, "attention_head_dim", config_path),
    )
    patch = _int(config, "patch_size", config_path, 2) if family == "sd3" else 2  # FLUX packs 2×2 latents
    resolution = _resolution(index, model_dir)
    if resolution is None:
        side = _int(config, "sample_size", config_path) * factor if family == "sd3" else DEFAULT_SIDE
        resolution = (side, side)
    width, height = resolution
    image_tokens = (height // (factor * patch)) * (width // (factor * patch))
    text_tokens = _text_tokens(family, model_dir)
    run_bytes = torch.empty((), dtype=dtype).element_size()
    denoiser = ACTIVATION_WIDTHS * (image_tokens + text_tokens) * heads * head_dim * run_bytes
    vae = VAE_WIDTHS * height * width * c0 * run_bytes
    plans = _plans(components, denoiser, vae)
    return Footprint(
        variant, dtype, components, resolution, (image_tokens, text_tokens), denoiser, vae, plans
    )


def _text_tokens(family: str, model_dir: Path) -> int:
    """Text tokens per prompt: the packaged sentence encoder's max_length, else the family's default."""
    spec = model_dir / "text_encoder" / SPEC_FILE
    if spec.is_file():
        return SentenceEncoderSpec.read(spec).max_length
    return TEXT_TOKENS[family]


def _plans(components: list[Component], denoiser: int, vae: int) -> dict[str, int]:
    """Peak bytes of each memory plan from the components' weights (unknown ones count 0)."""
    weights = {c.name: c.bytes or 0 for c in components}
    transformer, vae_weights = weights.pop("transformer"), weights.pop("vae", 0)
    text = sum(c.bytes or 0 for c in components if c.name.startswith("text_encoder") and c.offloaded)
    return {
        "none": transformer + vae_weights + sum(weights.values()) + max(denoiser, vae),
        "text": transformer + vae_weights + max(denoiser, vae),
        "model": max(text, vae_weights + vae, transformer + denoiser),
    }


def memory_size(size: int | None) -> str:
    """`size` bytes as "512 KiB", "340.2 MiB" or "22.17 GiB"; "n/a" for None."""
    if size is None:
        return "n/a"
    if size >= 1 << 30:
        return f"{size / (1 << 30):.2f} GiB"
    if size >= 1 << 20:
        return f"{size / (1 << 20):.1f} MiB"
    return f"{size / (1 << 10):.0f} KiB"
