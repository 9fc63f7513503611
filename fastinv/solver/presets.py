"""Named solvers: a design (the network class) and its size; benchmarks/solver_flops.py counts their cost.

Warm-start design (`WarmStartSolver`, fastinv's; inputs v at the warm-started point, f_prev, z, x0):
- "default-model": for the shipped pixel-space model (RGB); patch 4 as the denoiser, width 128, 2 blocks.
- "default-model-lean": the shipped solver; patch 8 (64 tokens at 64²), width 64, 2 blocks: 1.3 % of the
  denoiser's FLOPs against 15.9 %, for 1–2.5 dB less (the README's ablations).
- "sd3-medium", "flux": SD3-medium / FLUX.1 latents (16 channels; patch 2 on [B, 16, H, W] is FLUX's 2×2
  packing), width 512, 2 blocks.
Paper design (`DeepInvSolver`; inputs v at the current point, z, x0, text):
- "default-model-paper": the solver shipped before the warm-start design (patch 8, 1 left + 2 right blocks).
- "sd3-medium-ref": the reference size for SD3-medium (5 + 5 blocks, width 1536 = 24 × 64, patch 2).
- "sd3-medium-paper": a lean SD3-medium solver of the paper's design (1 left + 3 right blocks, width 768).
- "flux-paper": the paper's design for FLUX (T5 text 4096-d, CLIP pooled 768-d); there is no reference FLUX
  solver: depth goes to the right (content) branch, as the paper found for SD3.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastinv.errors import FastinvError
from fastinv.solver.network import DeepInvSolver
from fastinv.solver.warm_start import WarmStartSolver


@dataclass(frozen=True)
class Preset:
    """network: the solver class; config: its keyword arguments."""

    network: type[DeepInvSolver] | type[WarmStartSolver]
    config: dict[str, Any]


def _warm(channels: int, patch: int, heads: int, layers: int, sample: int) -> Preset:
    config = {
        "in_channels": channels,
        "patch_size": patch,
        "num_attention_heads": heads,
        "attention_head_dim": 64,
        "layers": layers,
        "sample_size": sample,
    }
    return Preset(WarmStartSolver, config)


def _paper(channels: int, patch: int, heads: int, left: int, right: int, text: tuple, sample: int) -> Preset:
    config = {
        "in_channels": channels,
        "patch_size": patch,
        "num_attention_heads": heads,
        "attention_head_dim": 64,
        "left_layers": left,
        "right_layers": right,
        "text_dim": text[0],
        "pooled_dim": text[1],
        "sample_size": sample,
    }
    return Preset(DeepInvSolver, config)


PRESETS: dict[str, Preset] = {
    "default-model": _warm(3, 4, 2, 2, 64),
    "default-model-lean": _warm(3, 8, 1, 2, 64),
    "sd3-medium": _warm(16, 2, 8, 2, 128),
    "flux": _warm(16, 2, 8, 2, 128),
    "default-model-paper": _paper(3, 8, 2, 1, 2, (384, 384), 64),
    "sd3-medium-ref": _paper(16, 2, 24, 5, 5, (4096, 2048), 128),
    "sd3-medium-paper": _paper(16, 2, 12, 1, 3, (4096, 2048), 128),
    "flux-paper": _paper(16, 2, 16, 1, 3, (4096, 768), 128),
}


def preset(name: str, **overrides: Any) -> Preset:
    """Preset `name` with `overrides` applied to its config; one-line errors for unknown names or keys."""
    if name not in PRESETS:
        raise FastinvError(f"unknown solver preset {name!r} (available: {', '.join(PRESETS)})")
    chosen = PRESETS[name]
    unknown = set(overrides) - set(chosen.config)
    if unknown:
        allowed = ", ".join(chosen.config)
        raise FastinvError(
            f"unknown solver setting(s) {', '.join(sorted(unknown))} (preset {name!r}: {allowed})"
        )
    for key, value in overrides.items():
        if key != "pooled_dim" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise FastinvError(f"solver setting {key} must be a positive integer, got {value!r}")
    return Preset(chosen.network, chosen.config | overrides)


def build_solver(name: str, **overrides: Any) -> DeepInvSolver | WarmStartSolver:
    """A fresh (untrained) network of preset `name`."""
    chosen = preset(name, **overrides)
    return chosen.network(**chosen.config)
