"""Named solver sizes. Each maps to DeepInvSolver keyword arguments (see benchmarks/solver_flops.py for cost).

- "default-model": the shipped pixel-space model (RGB, MiniLM text 384-d); patch 8 (64 tokens at 64²)
  keeps its cost near 15 % of the denoiser's on CPU.
- "sd3-medium-ref": the reference size for SD3-medium (5 + 5 blocks, width 1536 = 24 × 64, patch 2).
- "sd3-medium": a lean SD3-medium solver (1 left + 3 right blocks, width 768) costing ≤ 25 % of a forward.
- "flux": FLUX.1 latents (16 channels; patch 2 on [B, 16, H, W] is FLUX's 2×2 packing), T5 text 4096-d,
  CLIP pooled 768-d. There is no reference FLUX solver: this one follows the SD3 design and the paper's
  finding that depth belongs in the right (content) branch.
"""

from __future__ import annotations

from typing import Any

from fastinv.errors import FastinvError

PRESETS: dict[str, dict[str, Any]] = {
    "default-model": {
        "in_channels": 3,
        "patch_size": 8,
        "num_attention_heads": 2,
        "attention_head_dim": 64,
        "left_layers": 1,
        "right_layers": 2,
        "text_dim": 384,
        "pooled_dim": 384,
        "sample_size": 64,
    },
    "sd3-medium-ref": {
        "in_channels": 16,
        "patch_size": 2,
        "num_attention_heads": 24,
        "attention_head_dim": 64,
        "left_layers": 5,
        "right_layers": 5,
        "text_dim": 4096,
        "pooled_dim": 2048,
        "sample_size": 128,
    },
    "sd3-medium": {
        "in_channels": 16,
        "patch_size": 2,
        "num_attention_heads": 12,
        "attention_head_dim": 64,
        "left_layers": 1,
        "right_layers": 3,
        "text_dim": 4096,
        "pooled_dim": 2048,
        "sample_size": 128,
    },
    "flux": {
        "in_channels": 16,
        "patch_size": 2,
        "num_attention_heads": 16,
        "attention_head_dim": 64,
        "left_layers": 1,
        "right_layers": 3,
        "text_dim": 4096,
        "pooled_dim": 768,
        "sample_size": 128,
    },
}


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of preset `name`, with `overrides` applied."""
    if name not in PRESETS:
        raise FastinvError(f"unknown solver preset {name!r} (available: {', '.join(PRESETS)})")
    unknown = set(overrides) - set(PRESETS[name])
    if unknown:
        raise FastinvError(f"unknown solver setting(s) {', '.join(sorted(unknown))}")
    return PRESETS[name] | overrides
