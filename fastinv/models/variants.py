"""Which model a folder holds, read from its transformer config: family, variant, and whether it is a
distilled few-step model, on which inversion does poorly.

- SD3 (SD3Transformer2DModel): SD3.5 adds `qk_norm="rms_norm"`; SD3.5-medium's MMDiT-X also has
  `dual_attention_layers`. SD3.5-large-turbo's configs do not mark it (diffusers' own checkpoint detection
  does not tell it from SD3.5-large either): only a folder name with "turbo" in it does.
- FLUX (FluxTransformer2DModel): FLUX.1-dev is guidance-distilled (`guidance_embeds=true`, an embedded
  guidance input); FLUX.1-schnell has no guidance embedding and is timestep-distilled for 1–4 steps.

Config values are untrusted: their types are checked, nothing they name is imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel

DISTILLED_EXPECT = (
    "distilled few-step models do not follow the flow ODE that inversion integrates back, so expect a worse "
    "reconstruction than on the undistilled model, with euler most (GNRI reports good results on "
    "FLUX.1-schnell)"
)


@dataclass(frozen=True)
class Variant:
    """family: "sd3" | "flux"; name: e.g. "sd3.5-medium", "flux-schnell"; evidence: the config values that say
    so; distilled: a one-line warning for a distilled few-step model, else None."""

    family: str
    name: str
    evidence: str
    distilled: str | None = None


def _config_value(config: Mapping[str, Any], key: str, kind: type | tuple[type, ...], default: Any) -> Any:
    """config[key] (default when absent or null), one-line error unless it is of `kind`."""
    value = config.get(key)
    if value is None:
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise FastinvError(f"transformer config: {key} has the wrong type ({type(value).__name__})")
    return value


def _sd3(config: Mapping[str, Any], name: str) -> Variant:
    qk_norm = _config_value(config, "qk_norm", str, None)
    dual = _config_value(config, "dual_attention_layers", (list, tuple), [])
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in dual):
        raise FastinvError("transformer config: dual_attention_layers must be a list of layer numbers")
    layers = _config_value(config, "num_layers", int, 0)
    if _config_value(config, "in_channels", int, 0) == 3:
        return Variant(
            "sd3", "pixel-sd3", "in_channels=3: a pixel-space SD3 transformer (fastinv's shipped layout)"
        )
    if qk_norm is None:
        return Variant("sd3", "sd3", "no qk_norm, no dual-attention layers: as SD3-medium")
    if dual:
        evidence = (
            f"qk_norm={qk_norm}, dual attention in {len(dual)} of {layers} layers (MMDiT-X): as SD3.5-medium"
        )
        return Variant("sd3", "sd3.5-medium", evidence)
    evidence = f"qk_norm={qk_norm}, no dual-attention layers: as SD3.5-large"
    if "turbo" not in name.lower():
        return Variant("sd3", "sd3.5-large", evidence)
    warning = (
        "warning: an SD3.5-large-turbo-like model (from its folder name; distilled for about 4 steps): "
        + DISTILLED_EXPECT
    )
    return Variant("sd3", "sd3.5-large-turbo", f"{evidence}; 'turbo' in the folder name", warning)


def _flux(config: Mapping[str, Any], scheduler: Mapping[str, Any] | None) -> Variant:
    if _config_value(config, "guidance_embeds", bool, False):
        return Variant(
            "flux", "flux-dev", "guidance_embeds=true (guidance-distilled, embedded guidance): as FLUX.1-dev"
        )
    evidence = "guidance_embeds=false: as FLUX.1-schnell"
    if (
        scheduler is not None
        and scheduler.get("use_dynamic_shifting") is False
        and scheduler.get("shift") == 1.0
    ):
        evidence += "; scheduler shift 1.0 without dynamic shifting, as schnell's"
    warning = (
        "warning: a FLUX.1-schnell-like model (no guidance embedding: timestep-distilled for 1–4 steps): "
        + DISTILLED_EXPECT
    )
    return Variant("flux", "flux-schnell", evidence, warning)


def detect_variant(
    family: str, config: Mapping[str, Any], scheduler: Mapping[str, Any] | None = None, name: str = ""
) -> Variant:
    """The variant of a `family` ("sd3" | "flux") transformer from its `config`, its scheduler config, and
    (for SD3.5-large-turbo only) the folder `name`."""
    if family == "sd3":
        return _sd3(config, name)
    if family == "flux":
        return _flux(config, scheduler)
    raise FastinvError(f"unknown model family {family!r}: use sd3 or flux")


def distilled_warning(model: FlowModel) -> str | None:
    """The one-line warning for a loaded distilled few-step `model` (FLUX.1-schnell-like, SD3.5-turbo-like),
    else None."""
    name = Path(model.name).name
    return detect_variant(model.family, model.velocity.config, model.scheduler_config, name).distilled
