"""The SolverModel protocol (what the deepinv method calls) and its torch backend; safe checkpoint loading."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.solver.network import DeepInvSolver

WEIGHTS = "diffusion_pytorch_model.safetensors"


@runtime_checkable
class SolverModel(Protocol):
    """ε̂ = S(v, z_cur, x0, c, σ_cur, σ_next): a torch module, ORT session or TensorRT engine behind it."""

    def __call__(
        self,
        v: torch.Tensor,
        z: torch.Tensor,
        x0: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        cond: Conditioning,
    ) -> torch.Tensor:
        """v, z, x0: [B, C, H, W] float32; sigma < sigma_next: [B] float32 σ; returns ε̂ [B, C, H, W]."""
        ...


class TorchSolver:
    """A DeepInvSolver on torch: float32 state in and out, the network in `dtype`; the prompt (never the
    null branch: the solver corrects the velocity the method already combined) broadcast to the batch."""

    def __init__(self, network: DeepInvSolver, dtype: torch.dtype = torch.float32) -> None:
        self.network = network
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @property
    def config(self) -> Mapping[str, Any]:
        return self.network.config

    def __call__(
        self,
        v: torch.Tensor,
        z: torch.Tensor,
        x0: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        cond: Conditioning,
    ) -> torch.Tensor:
        batch = v.shape[0]
        text = cond.prompt_embeds.to(self.device, self.dtype).expand(batch, -1, -1)
        pooled = cond.pooled_embeds
        if pooled is not None:
            pooled = pooled.to(self.device, self.dtype).expand(batch, -1)
        eps = self.network(v, z, x0, text, pooled, sigma, sigma_next).float()
        if self.dtype == torch.float16 and not torch.isfinite(eps).all():  # a host sync: fp16 only
            raise FastinvError(
                f"non-finite solver output in fp16 at σ={sigma[0].item():.4f}: use bf16 or fp32"
            )
        return eps


def read_solver_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a solver folder; one-line errors for a missing folder or another model's config."""
    folder = Path(path)
    if not folder.is_dir():
        raise FastinvError(f"solver folder not found: {folder}")
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FastinvError(f"cannot read solver config {config_path}: {err}") from err
    if config.get("_class_name") != DeepInvSolver.__name__:
        raise FastinvError(f"{config_path} is not a DeepInv solver (class {config.get('_class_name')!r})")
    return config


def load_solver(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> TorchSolver:
    """A solver folder (config.json + safetensors, as `save_pretrained` writes it) → TorchSolver, frozen.

    Only safetensors are read: a folder holding pickled weights alone is refused.
    """
    folder = Path(path)
    read_solver_config(folder)
    if not (folder / WEIGHTS).is_file():
        raise FastinvError(f"no {WEIGHTS} in solver folder {folder} (only safetensors weights are loaded)")
    network = DeepInvSolver.from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)
    network = network.to(device).eval()
    network.requires_grad_(False)
    return TorchSolver(network, dtype)


def check_solver_fits(config: Mapping[str, Any], channels: int, cond: Conditioning) -> None:
    """One-line error when a solver (its DeepInvSolver config: a TorchSolver's, or the one an exported
    graph records) was built for another model: latent channels or text widths differ."""
    problems = []
    if config["in_channels"] != channels:
        problems.append(f"latent channels {config['in_channels']} vs the model's {channels}")
    if config["text_dim"] != cond.prompt_embeds.shape[-1]:
        problems.append(f"text width {config['text_dim']} vs {cond.prompt_embeds.shape[-1]}")
    pooled = None if cond.pooled_embeds is None else cond.pooled_embeds.shape[-1]
    if config.get("pooled_dim") != pooled:
        problems.append(f"pooled width {config.get('pooled_dim')} vs {pooled}")
    if problems:
        raise FastinvError(f"the solver does not fit this model: {'; '.join(problems)}")
