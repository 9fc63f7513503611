"""Load a LOCAL diffusers folder (SD3 or FLUX pipeline, or a bare transformer) into a FlowModel.

Accepted layouts: a pipeline folder (model_index.json + transformer/ [+ vae/, scheduler/, text
encoders]) or a transformer folder (config.json + weights). Nothing is fetched from a hub.
The folder's components are loaded first, then built into the model by `build_model`, which a pipeline
already in memory goes through too (`fastinv.models.pipelines`).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel, LatentCodec, PromptEncoder
from fastinv.models.codecs import IdentityCodec, VaeCodec
from fastinv.models.config_checks import check_scheduler_config, check_transformer_config
from fastinv.models.minilm import SPEC_FILE, SentenceEncoderPrompts, SentenceEncoderSpec
from fastinv.models.prompts import MissingPrompts, PipelinePrompts, PrecomputedPrompts
from fastinv.models.sd3 import SD3Velocity
from fastinv.schedule import FLUX_SCHEDULER_DEFAULTS, SD3_SCHEDULER_DEFAULTS

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "default_model"
"""The small trained model shipped inside the package (see its README.md model card)."""
EXAMPLE_IMAGE = Path(__file__).resolve().parents[1] / "examples" / "coffee.jpg"
"""A photo shipped with the package (skimage's coffee, held out of the default model's training)."""
PIXEL_PIPELINE = "FastinvPixelFlowPipeline"
"""A pixel-space SD3 transformer with a packaged sentence encoder (the shipped default model's layout)."""
FAMILIES = {
    "SD3Transformer2DModel": "sd3",
    "StableDiffusion3Pipeline": "sd3",
    "FluxTransformer2DModel": "flux",
    "FluxPipeline": "flux",
    PIXEL_PIPELINE: "sd3",
}
TEXT_COMPONENTS = {
    "sd3": ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3"),
    "flux": ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
}
REQUIRED_TEXT = {"sd3": ("text_encoder", "text_encoder_2"), "flux": ("text_encoder", "text_encoder_2")}


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a model folder (an untrusted file): one-line errors for anything else."""
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastinvError(f"cannot read {path}: {err}") from err
    if not isinstance(values, dict):
        raise FastinvError(f"{path} must hold a JSON object, not {type(values).__name__}")
    return values


def _resolution(index: dict[str, Any] | None, model_dir: Path) -> tuple[int, int] | None:
    """model_index.json's "resolution" [W, H] (positive integers), or None when absent."""
    if index is None or "resolution" not in index:
        return None
    value = index["resolution"]
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 15 for v in value)
    ):
        raise FastinvError(
            f"{model_dir / 'model_index.json'}: resolution must be [W, H] in pixels, got {value!r}"
        )
    return tuple(value)


def _family(class_name: str, source: Path) -> str:
    if not isinstance(class_name, str) or class_name not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise FastinvError(f"unsupported model type {class_name!r} in {source} (supported: {supported})")
    return FAMILIES[class_name]


def inspect_folder(model_dir: Path) -> tuple[str, Path, dict[str, Any] | None]:
    """(family, transformer folder, model_index or None) of a model folder; errors name what is missing."""
    if not model_dir.exists():
        raise FastinvError(f"model folder not found: {model_dir}")
    if not model_dir.is_dir():
        raise FastinvError(f"model path is not a folder: {model_dir}")
    index_path = model_dir / "model_index.json"
    if index_path.is_file():
        index = _read_json(index_path)
        family = _family(index.get("_class_name", "?"), index_path)
        transformer_dir = model_dir / "transformer"
        if not (transformer_dir / "config.json").is_file():
            raise FastinvError(f"incomplete model folder {model_dir}: no transformer/config.json")
        config = _read_json(transformer_dir / "config.json")
        _family(config.get("_class_name", "?"), transformer_dir)
        check_transformer_config(config, transformer_dir / "config.json")
        return family, transformer_dir, index
    config_path = model_dir / "config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        family = _family(config.get("_class_name", "?"), config_path)
        check_transformer_config(config, config_path)
        return family, model_dir, None
    raise FastinvError(
        f"{model_dir} is not a diffusers model folder (no model_index.json, transformer/ or config.json)"
    )


def _load(what: str, loader: Any, folder: Path, dtype: torch.dtype, **kwargs: Any) -> Any:
    """`loader.from_pretrained(folder)` with its parameters in `dtype`: from_pretrained(dtype=...) can leave
    them in float32, so they are cast explicitly."""
    try:
        with _diffusers_silent():  # its own report of a failed load would repeat ours
            loaded = loader.from_pretrained(
                folder, dtype=dtype, local_files_only=True, use_safetensors=True, **kwargs
            )
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise FastinvError(
            f"incomplete model folder {folder}: cannot load {what}: {load_failure_reason(err)}"
        ) from err
    if isinstance(loaded, torch.nn.Module) and any(p.dtype != dtype for p in loaded.parameters()):
        loaded = loaded.to(dtype=dtype)
    return loaded


@contextlib.contextmanager
def _diffusers_silent() -> Iterator[None]:
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity(diffusers_logging.CRITICAL)
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(level)


def load_failure_reason(err: Exception) -> str:
    """The part of a diffusers loading error that says what is wrong, on one line: a weight-shape mismatch
    names the tensor and both shapes; a missing file says that only safetensors weights are read."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    for line in lines:
        if line.startswith("size mismatch for"):  # diffusers' load into a float32-built model
            return f"weights do not fit the config: {line}"
        # its load into a meta-built model (with accelerate): "... because NAME expected shape A, but got B."
        mismatch = re.search(r"because (\S+) expected shape (.+?), but got (.+?)\.(?: |$)", line)
        if mismatch:
            name, expected, found = mismatch.groups()
            shapes = f"{found} in the file, {expected} in the config"
            return f"weights do not fit the config: size mismatch for {name}: {shapes}"
    text = lines[0] if lines else type(err).__name__
    if "no file named" in text:
        return f"{text} (only safetensors weights are loaded)"
    return text


def _has_component(model_dir: Path, index: dict[str, Any] | None, name: str) -> bool:
    entry = None if index is None else index.get(name)
    return isinstance(entry, list) and entry[0] is not None and (model_dir / name).is_dir()


def _prompt_encoder(
    family: str,
    model_dir: Path,
    index: dict[str, Any] | None,
    embeddings: Path | None,
    device: torch.device,
    dtype: torch.dtype,
    widths: tuple[int, int],
) -> PromptEncoder:
    """widths: the transformer's (joint_attention_dim, pooled_projection_dim), which an embeddings file
    must match."""
    if embeddings is not None:
        return PrecomputedPrompts(embeddings, *widths)
    spec = model_dir / "text_encoder" / SPEC_FILE
    if spec.is_file():
        return SentenceEncoderPrompts(SentenceEncoderSpec.read(spec), device)
    if not all(_has_component(model_dir, index, name) for name in REQUIRED_TEXT[family]):
        return MissingPrompts(model_dir)
    from diffusers import FluxPipeline, StableDiffusion3Pipeline  # loads transformers' text models

    absent = {n: None for n in TEXT_COMPONENTS[family] if not _has_component(model_dir, index, n)}
    pipeline_cls = StableDiffusion3Pipeline if family == "sd3" else FluxPipeline
    pipeline = _load("text encoders", pipeline_cls, model_dir, dtype, transformer=None, vae=None, **absent)
    return PipelinePrompts(pipeline.to(device), family, device)


def patch_tokens(latent_height: int, latent_width: int, *, patch: int) -> int:
    """SD3's image_seq_len: (h / patch)·(w / patch) latent tokens (StableDiffusion3Pipeline, step 5)."""
    return (latent_height // patch) * (latent_width // patch)


@dataclass
class ModelParts:
    """The loaded components a FlowModel is built from (`build_model`): a model folder's (`load_model`) or a
    diffusers pipeline's (`fastinv.models.pipelines.model_from_pipeline`), already on the model's device.

    name: what records call the model (its folder); transformer: an SD3Transformer2DModel or
    FluxTransformer2DModel, in the model's dtype; vae: None for a pixel-space (3-channel) transformer;
    scheduler_config: None takes the family's defaults; resolution: (W, H) of a fixed-resolution model.
    """

    name: str
    family: str
    transformer: torch.nn.Module
    vae: AutoencoderKL | None
    scheduler_config: dict[str, Any] | None
    prompt_encoder: PromptEncoder
    resolution: tuple[int, int] | None = None
    solver_dir: Path | None = None
    weights_dir: Path | None = None


def build_model(parts: ModelParts, device: torch.device, dtype: torch.dtype) -> FlowModel:
    """The FlowModel of `parts`: the codec (the VAE, or the identity for a pixel-space transformer), the
    family's velocity adapter and schedule rule. The transformer and VAE are set to eval and frozen in place,
    not copied."""
    notes: list[str] = []
    network = parts.transformer.eval().requires_grad_(False)
    in_channels = network.config.in_channels if parts.family == "sd3" else network.config.in_channels // 4
    codec: LatentCodec
    if parts.vae is not None:
        codec = VaeCodec(parts.vae.eval().requires_grad_(False), dtype)
        if codec.channels != in_channels:
            raise FastinvError(
                f"{parts.name}: VAE latents have {codec.channels} channels, the transformer {in_channels}"
            )
    elif in_channels == 3:
        codec = IdentityCodec()
        notes.append("pixel-space model: no VAE, latents are RGB in [-1, 1]")
    else:
        raise FastinvError(f"{parts.name} has no VAE and its transformer takes {in_channels}-channel latents")

    scheduler_config = parts.scheduler_config
    if scheduler_config is not None:
        check_scheduler_config(scheduler_config, f"{parts.name}: the scheduler config")
    else:
        scheduler_config = dict(SD3_SCHEDULER_DEFAULTS if parts.family == "sd3" else FLUX_SCHEDULER_DEFAULTS)
        notes.append(f"no scheduler: using {parts.family.upper()} defaults {scheduler_config}")

    if parts.family == "sd3":
        embedded = False
        velocity = SD3Velocity(network, dtype)
        patch = network.config.patch_size
        max_side = velocity.max_side * codec.scale_factor
        seq_len = partial(patch_tokens, patch=patch)  # SD3's image_seq_len for a dynamic shift
    else:
        from fastinv.models.flux import FluxVelocity, packed_seq_len  # FluxPipeline's packing helpers

        velocity = FluxVelocity(network, dtype)
        patch, max_side, seq_len = 2, None, packed_seq_len
        embedded = velocity.guidance_embeds
    return FlowModel(
        name=parts.name,
        family=parts.family,
        velocity=velocity,
        codec=codec,
        prompt_encoder=parts.prompt_encoder,
        scheduler_config=scheduler_config,
        size_multiple=codec.scale_factor * patch,
        max_side=max_side,
        resolution=parts.resolution,
        device=device,
        dtype=dtype,
        notes=notes,
        schedule_seq_len=seq_len,
        takes_embedded_guidance=embedded,
        solver_dir=parts.solver_dir,
        weights_dir=parts.weights_dir,
    )


def load_model(
    model_dir: str | Path | None = None,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    embeddings: str | Path | None = None,
    transformer_weights: bool = True,
) -> FlowModel:
    """Load an SD3 or FLUX folder's components (transformer, VAE if any, scheduler config, a prompt encoder)
    and build the model from them (`build_model`). None: the shipped default model.

    transformer_weights=False builds the transformer from its config on the meta device (no memory):
    for callers that run an exported graph instead and need only the architecture.
    """
    if model_dir is None and not (DEFAULT_MODEL / "model_index.json").is_file():
        raise FastinvError(f"the shipped default model is missing from this install ({DEFAULT_MODEL})")
    model_dir = DEFAULT_MODEL if model_dir is None else Path(model_dir)
    device = device or torch.device("cpu")
    family, transformer_dir, index = inspect_folder(model_dir)
    network_cls = SD3Transformer2DModel if family == "sd3" else FluxTransformer2DModel
    if transformer_weights:
        network = _load("the transformer", network_cls, transformer_dir, dtype).to(device)
    else:
        with torch.device("meta"):
            network = network_cls.from_config(_read_json(transformer_dir / "config.json"))
    vae = None
    if index is not None and _has_component(model_dir, index, "vae"):
        vae = _load("the VAE", AutoencoderKL, model_dir / "vae", dtype).to(device)
    scheduler_file = model_dir / "scheduler" / "scheduler_config.json"
    embeddings_path = Path(embeddings) if embeddings is not None else None
    if embeddings_path is None and (model_dir / "prompt_embeds.safetensors").is_file():
        embeddings_path = model_dir / "prompt_embeds.safetensors"
    widths = (network.config.joint_attention_dim, network.config.pooled_projection_dim)
    parts = ModelParts(
        name=str(model_dir),
        family=family,
        transformer=network,
        vae=vae,
        scheduler_config=_read_json(scheduler_file) if scheduler_file.is_file() else None,
        prompt_encoder=_prompt_encoder(family, model_dir, index, embeddings_path, device, dtype, widths),
        resolution=_resolution(index, model_dir),
        solver_dir=model_dir / "solver" if (model_dir / "solver" / "config.json").is_file() else None,
        weights_dir=transformer_dir,
    )
    return build_model(parts, device, dtype)
