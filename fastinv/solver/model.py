"""The SolverModel protocol (what the deepinv method calls) and its torch backend; safe checkpoint loading.

Two solver designs share the protocol: `DeepInvSolver` (the paper's: v at the current point, text as an
input) and `WarmStartSolver` (fastinv's: v at the warm-started point z + h·f_prev, f_prev as an input).
`warm_start` tells the method which point to evaluate the denoiser at.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.models.config_checks import check_integers, check_width
from fastinv.models.loading import load_failure_reason
from fastinv.solver.network import DeepInvSolver
from fastinv.solver.warm_start import WarmStartSolver

WEIGHTS = "diffusion_pytorch_model.safetensors"
SOLVER_CLASSES: dict[str, type[DeepInvSolver] | type[WarmStartSolver]] = {
    "DeepInvSolver": DeepInvSolver,
    "WarmStartSolver": WarmStartSolver,
}
"""The solver classes a config.json may name (nothing else is ever constructed from a folder)."""
SolverNetwork = DeepInvSolver | WarmStartSolver


def solver_family(config: Mapping[str, Any]) -> str:
    """The graph family of an exported solver of this config: "deepinv-warm" (WarmStartSolver), "deepinv"."""
    return "deepinv" if "text_dim" in config else "deepinv-warm"  # only the paper design reads text


@runtime_checkable
class SolverModel(Protocol):
    """ε̂ = S(v, z_cur, x0, c, σ_cur, σ_next[, f_prev]): a torch module, ORT session or TensorRT engine.

    warm_start: False — v is v_θ(z_cur, σ_next) and f_prev is ignored (the paper's design); True — v is
    v_θ(z_cur + h·f_prev, σ_next), f_prev the previous step's ε̂ (zeros on the first step).
    """

    warm_start: bool

    def __call__(
        self,
        v: torch.Tensor,
        z: torch.Tensor,
        x0: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        cond: Conditioning,
        f_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """v, z, x0, f_prev: [B, C, H, W] float32; sigma < sigma_next: [B] float32 σ → ε̂ [B, C, H, W]."""
        ...


class TorchSolver:
    """A solver network on torch: float32 state in and out, the network in `dtype`; for DeepInvSolver the
    prompt (never the null branch: the solver corrects the velocity the method already combined) broadcast
    to the batch."""

    def __init__(self, network: SolverNetwork, dtype: torch.dtype = torch.float32) -> None:
        self.network = network
        self.dtype = dtype
        self.warm_start = bool(network.warm_start)

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
        f_prev: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.warm_start:
            if f_prev is None:
                raise FastinvError("a warm-start solver needs f_prev (the previous step's noise)")
            eps = self.network(v, z, x0, f_prev, sigma, sigma_next).float()
        else:
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


CONFIG_LIMITS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 1024),
    "patch_size": (1, 64),
    "num_attention_heads": (1, 256),
    "attention_head_dim": (1, 1024),
    "left_layers": (1, 64),
    "right_layers": (1, 64),
    "layers": (1, 64),
    "text_dim": (1, 1 << 16),
    "pooled_dim": (1, 1 << 16),
    "sample_size": (1, 1 << 14),
}
"""Allowed ranges of the integer fields of a solver config.json (an untrusted file)."""
MAX_WIDTH = 8192
"""Largest num_attention_heads × attention_head_dim of a solver (the SD3-medium paper design: 1536)."""


def read_solver_config(path: str | Path) -> dict[str, Any]:
    """The config.json of a solver folder, validated: a known class (SOLVER_CLASSES), integer fields in
    CONFIG_LIMITS; one-line errors for a missing folder, another model's config or a bad value."""
    folder = Path(path)
    if not folder.is_dir():
        raise FastinvError(f"solver folder not found: {folder}")
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise FastinvError(f"cannot read solver config {config_path}: {err}") from err
    if not isinstance(config, dict) or config.get("_class_name") not in SOLVER_CLASSES:
        name = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        known = ", ".join(SOLVER_CLASSES)
        raise FastinvError(f"{config_path} is not a DeepInv solver (class {name!r}; known: {known})")
    check_integers(config, CONFIG_LIMITS, config_path, nullable="pooled_dim")
    check_width(config, MAX_WIDTH, config_path)
    return config


def load_solver(
    path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> TorchSolver:
    """A solver folder (config.json + safetensors, as `save_pretrained` writes it) → TorchSolver, frozen.

    Only safetensors are read: a folder holding pickled weights alone is refused.
    """
    folder = Path(path)
    config = read_solver_config(folder)
    if not (folder / WEIGHTS).is_file():
        raise FastinvError(f"no {WEIGHTS} in solver folder {folder} (only safetensors weights are loaded)")
    network_class = SOLVER_CLASSES[config["_class_name"]]
    try:
        network = network_class.from_pretrained(folder, use_safetensors=True, torch_dtype=dtype)
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        raise FastinvError(f"cannot load the solver in {folder}: {load_failure_reason(err)}") from err
    absent = [name for name, p in network.named_parameters() if p.is_meta]  # built on meta, never filled
    if absent:
        raise FastinvError(
            f"cannot load the solver in {folder}: weights do not fit the config: {len(absent)} tensors of a "
            f"{config['_class_name']} are not in the file (first: {absent[0]})"
        )
    if any(p.dtype != dtype for p in network.parameters()):  # from_pretrained may leave float32 weights
        network = network.to(dtype=dtype)
    network = network.to(device=device).eval()
    network.requires_grad_(False)
    return TorchSolver(network, dtype)


def check_solver_fits(config: Mapping[str, Any], channels: int, cond: Conditioning) -> None:
    """One-line error when a solver (its network config: a TorchSolver's, or the one an exported graph
    records) was built for another model: latent channels or (paper design) text widths differ."""
    problems = []
    if config["in_channels"] != channels:
        problems.append(f"latent channels {config['in_channels']} vs the model's {channels}")
    if solver_family(config) == "deepinv-warm":
        if problems:
            raise FastinvError(f"the solver does not fit this model: {'; '.join(problems)}")
        return
    if config["text_dim"] != cond.prompt_embeds.shape[-1]:
        problems.append(f"text width {config['text_dim']} vs {cond.prompt_embeds.shape[-1]}")
    pooled = None if cond.pooled_embeds is None else cond.pooled_embeds.shape[-1]
    if config.get("pooled_dim") != pooled:
        problems.append(f"pooled width {config.get('pooled_dim')} vs {pooled}")
    if problems:
        raise FastinvError(f"the solver does not fit this model: {'; '.join(problems)}")
