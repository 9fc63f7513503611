"""Prompt encoders: a model folder's own text encoders, or precomputed embeddings from safetensors.

A user who has only the transformer (and VAE) can still run: encode the prompts once on a machine
that has the text encoders (`save_prompt_embeddings`), then pass the file (`--embeddings FILE`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fastinv.errors import FastinvError
from fastinv.files import atomic_write

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

EMBEDDINGS_FORMAT = "fastinv-prompts/1"


class PipelinePrompts:
    """Encodes through a diffusers pipeline's `encode_prompt` (SD3: CLIP-L + CLIP-G + T5; FLUX: CLIP + T5).

    The pipeline is loaded with transformer=None and vae=None, so it holds only text encoders.
    """

    def __init__(self, pipeline: DiffusionPipeline, family: str, device: torch.device) -> None:
        self.pipeline = pipeline
        self.family = family
        self.device = device

    @torch.no_grad()
    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.family == "sd3":
            embeds, _, pooled, _ = self.pipeline.encode_prompt(
                prompt, None, None, device=self.device, do_classifier_free_guidance=False
            )
        else:
            embeds, pooled, _ = self.pipeline.encode_prompt(prompt, None, device=self.device)
        return embeds.float().cpu(), pooled.float().cpu()


class PrecomputedPrompts:
    """Prompt embeddings read from a file written by `save_prompt_embeddings`."""

    def __init__(self, path: Path, text_dim: int | None = None, pooled_dim: int | None = None) -> None:
        """text_dim / pooled_dim: the widths the transformer takes (joint_attention_dim,
        pooled_projection_dim); every entry must have them."""
        self.path = path
        self.entries = load_prompt_embeddings(path)
        for prompt, (embeds, pooled) in self.entries.items():
            if text_dim is not None and embeds.shape[-1] != text_dim:
                raise FastinvError(
                    f"{path}: the embeddings of {prompt!r} are {embeds.shape[-1]} wide, "
                    f"the model takes {text_dim}"
                )
            if pooled_dim is not None and pooled is not None and pooled.shape[-1] != pooled_dim:
                raise FastinvError(
                    f"{path}: the pooled embedding of {prompt!r} is {pooled.shape[-1]} wide, "
                    f"the model takes {pooled_dim}"
                )

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prompt not in self.entries:
            known = ", ".join(repr(p) for p in self.entries)
            raise FastinvError(
                f"prompt {prompt!r} is not in {self.path} (it holds {known}); "
                "the model has no text encoders to encode new prompts"
            )
        return self.entries[prompt]


class MissingPrompts:
    """Stands in when a folder has neither text encoders nor an embeddings file: fails on use."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise FastinvError(
            f"{self.model_dir} has no text encoders: pass --embeddings FILE with precomputed prompt "
            "embeddings (fastinv.models.prompts.save_prompt_embeddings)"
        )


def save_prompt_embeddings(
    path: str | Path, entries: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]
) -> Path:
    """Write {prompt: (prompt_embeds [1, L, D], pooled [1, P] | None)} to one safetensors file."""
    tensors: dict[str, torch.Tensor] = {}
    for i, (embeds, pooled) in enumerate(entries.values()):
        tensors[f"prompt_embeds.{i}"] = embeds.detach().float().cpu().contiguous()
        if pooled is not None:
            tensors[f"pooled_embeds.{i}"] = pooled.detach().float().cpu().contiguous()
    metadata = {"format": EMBEDDINGS_FORMAT, "prompts": json.dumps(list(entries))}
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_prompt_embeddings(path: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Read a file written by `save_prompt_embeddings` (safetensors only; nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise FastinvError(f"prompt embeddings file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != EMBEDDINGS_FORMAT:
                raise FastinvError(
                    f"{path} is not a fastinv prompt-embeddings file (format {EMBEDDINGS_FORMAT})"
                )
            names = set(f.keys())
            prompts = json.loads(metadata["prompts"])
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise FastinvError(f"{path}: its prompts must be a list of strings, got {prompts!r}")
            entries = {}
            for i, prompt in enumerate(prompts):
                pooled = f.get_tensor(f"pooled_embeds.{i}") if f"pooled_embeds.{i}" in names else None
                entries[prompt] = (f.get_tensor(f"prompt_embeds.{i}"), pooled)
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise FastinvError(f"cannot read prompt embeddings {path}: {err}") from err
    for prompt, (embeds, pooled) in entries.items():
        _check_embedding(path, f"prompt_embeds of {prompt!r}", embeds, 3)
        if pooled is not None:
            _check_embedding(path, f"pooled_embeds of {prompt!r}", pooled, 2)
    return entries


def _check_embedding(path: Path, what: str, tensor: torch.Tensor, ndim: int) -> None:
    """One-line error unless `tensor` is a finite floating tensor of shape [1, …] with `ndim` axes ≥ 1."""
    shape = "[1, L, D]" if ndim == 3 else "[1, P]"
    if not tensor.is_floating_point() or tensor.ndim != ndim or tensor.shape[0] != 1 or 0 in tensor.shape:
        raise FastinvError(
            f"{path}: {what} must be a float tensor {shape}, got {tensor.dtype} {list(tensor.shape)}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise FastinvError(f"{path}: {what} holds NaN or inf")
