"""A diffusers pipeline already in memory (StableDiffusion3Pipeline, FluxPipeline) as a FlowModel.

Its transformer, VAE and text encoders become the model's, shared and not copied: the same components
`load_model` loads from a folder, built by the same `build_model`, so the results are the folder's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline

from fastinv.device import resolve_device, resolve_dtype
from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel, PromptEncoder
from fastinv.models.loading import REQUIRED_TEXT, TEXT_COMPONENTS, ModelParts, build_model
from fastinv.models.prompts import MissingPrompts, PipelinePrompts, PrecomputedPrompts

PIPELINES = {
    "sd3": (StableDiffusion3Pipeline, SD3Transformer2DModel),
    "flux": (FluxPipeline, FluxTransformer2DModel),
}
"""family: (pipeline class, its transformer class)."""


def pipeline_family(pipeline: Any) -> str:
    """ "sd3" or "flux" for a StableDiffusion3Pipeline or FluxPipeline (or a subclass) holding its family's
    transformer; one-line errors for anything else."""
    for family, (pipeline_cls, transformer_cls) in PIPELINES.items():
        if isinstance(pipeline, pipeline_cls):
            transformer = getattr(pipeline, "transformer", None)
            if transformer is None:
                name = type(pipeline).__name__
                raise FastinvError(f"this {name} has no transformer (loaded with transformer=None?)")
            if not isinstance(transformer, transformer_cls):
                raise FastinvError(
                    f"this {type(pipeline).__name__}'s transformer is a {type(transformer).__name__}, "
                    f"not a {transformer_cls.__name__}"
                )
            return family
    supported = " or ".join(cls.__name__ for cls, _ in PIPELINES.values())
    raise FastinvError(f"fastinv.from_pipeline takes a {supported}, got {type(pipeline).__name__}")


def _scheduler_config(pipeline: Any) -> dict[str, Any] | None:
    """The scheduler's config as its file holds it (None without a scheduler): the keys diffusers filled with
    the class's defaults (`_use_default_values`) are left out, so that the schedule equals the folder's."""
    scheduler = getattr(pipeline, "scheduler", None)
    if scheduler is None:
        return None
    config = dict(scheduler.config)
    defaults = set(config.pop("_use_default_values", []))
    return {key: value for key, value in config.items() if key not in defaults}


def _prompt_encoder(
    pipeline: Any, family: str, name: str, embeddings: Path | None, device: torch.device
) -> PromptEncoder:
    """Precomputed embeddings when given, else the pipeline's own text encoders (MissingPrompts without)."""
    if embeddings is not None:
        config = pipeline.transformer.config
        return PrecomputedPrompts(embeddings, config.joint_attention_dim, config.pooled_projection_dim)
    needed = (*REQUIRED_TEXT[family], "tokenizer", "tokenizer_2")
    if any(getattr(pipeline, part, None) is None for part in needed):
        return MissingPrompts(Path(name))
    return PipelinePrompts(pipeline, family, device)


def _place(module: Any, device: torch.device, dtype: torch.dtype | None = None) -> None:
    """Move `module` (a torch module; anything else is skipped) to `device`, and cast it to `dtype`, in
    place, only where it is not there already (a no-op `to` still copies nothing, but diffusers warns)."""
    first = next(module.parameters(), None) if isinstance(module, torch.nn.Module) else None
    if first is None:
        return
    if first.device != device:
        module.to(device)
    if dtype is not None and first.dtype != dtype:
        module.to(dtype=dtype)


def model_from_pipeline(
    pipeline: Any,
    *,
    device: str | None = None,
    dtype: str | None = None,
    embeddings: str | Path | None = None,
) -> FlowModel:
    """The FlowModel of a loaded StableDiffusion3Pipeline or FluxPipeline, on its own modules.

    device / dtype: as `fastinv.load`'s (auto | cpu | cuda[:N]; auto | fp32 | bf16 | fp16); None keeps the
    transformer's. Another device moves the transformer, VAE and text encoders in place; another dtype
    casts the transformer and VAE in place (the text encoders keep theirs: their embeddings are read as
    float32). The folder the pipeline was loaded from names the model and lends its solver/, if it has one.
    """
    family = pipeline_family(pipeline)
    network = pipeline.transformer
    first = next(network.parameters())
    torch_device = first.device if device is None else resolve_device(device)
    torch_dtype = first.dtype if dtype is None else resolve_dtype(dtype, torch_device)
    vae = getattr(pipeline, "vae", None)
    for module in (network, vae):
        _place(module, torch_device, torch_dtype)
    for part in TEXT_COMPONENTS[family]:
        _place(getattr(pipeline, part, None), torch_device)
    name = str(getattr(pipeline, "name_or_path", None) or type(pipeline).__name__)
    solver = Path(name) / "solver"
    parts = ModelParts(
        name=name,
        family=family,
        transformer=network,
        vae=vae,
        scheduler_config=_scheduler_config(pipeline),
        prompt_encoder=_prompt_encoder(
            pipeline, family, name, None if embeddings is None else Path(embeddings), torch_device
        ),
        solver_dir=solver if (solver / "config.json").is_file() else None,
    )
    return build_model(parts, torch_device, torch_dtype)
