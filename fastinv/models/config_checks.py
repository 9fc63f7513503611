"""Range checks of a model folder's configs (untrusted input), before diffusers builds anything from them.

diffusers reads any value a config holds: a negative `num_layers` builds a transformer with no blocks (and
drops the file's weights unnoticed), a huge one stalls the build, a zero `patch_size` divides by zero, a
negative `shift` gives σ outside [0, 1]. Each key present is checked here; absent keys take diffusers'
defaults. The bounds hold every published SD3 / SD3.5 / FLUX.1 config with room to spare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from fastinv.errors import FastinvError
from fastinv.request_checks import is_finite_number, is_int

_INT = {
    "num_layers": (1, 256),
    "num_single_layers": (0, 512),
    "num_attention_heads": (1, 512),
    "attention_head_dim": (1, 1024),
    "patch_size": (1, 64),
    "sample_size": (1, 8192),
    "pos_embed_max_size": (1, 2048),
    "in_channels": (1, 4096),
    "out_channels": (1, 4096),
    "joint_attention_dim": (1, 32768),
    "pooled_projection_dim": (1, 32768),
    "caption_projection_dim": (1, 32768),
}
"""Transformer integer fields: allowed [low, high]."""
MAX_WIDTH = 32768
"""Largest num_attention_heads × attention_head_dim (FLUX.1: 3072, SD3.5-large: 2432)."""

_SCHEDULER_BOOLS = (
    "use_dynamic_shifting",
    "invert_sigmas",
    "use_karras_sigmas",
    "use_exponential_sigmas",
    "use_beta_sigmas",
    "stochastic_sampling",
)
_SCHEDULER_NUMBERS = {"shift": (0.0, 100.0), "base_shift": (-10.0, 10.0), "max_shift": (-10.0, 10.0)}
"""Scheduler float fields: allowed (low, high]."""


def _refuse(source: Path | str, key: str, allowed: str, value: Any) -> NoReturn:
    raise FastinvError(f"{source}: {key} must be {allowed}, got {value!r}")


def check_integers(
    config: dict[str, Any], limits: dict[str, tuple[int, int]], source: Path | str, nullable: str = ""
) -> None:
    """One-line FastinvError for the first field of `limits` in `config` that is not an integer in its
    [low, high] (`nullable`: the field that may also be null)."""
    for key, (low, high) in limits.items():
        value = config.get(key)
        in_range = is_int(value) and low <= value <= high
        if key in config and not in_range and not (key == nullable and value is None):
            _refuse(source, key, f"an integer in [{low}, {high}]", value)


def check_width(config: dict[str, Any], limit: int, source: Path | str) -> None:
    """One-line FastinvError when attention is wider than `limit` (heads × head dim), which each field's
    own bound lets through."""
    width = config.get("num_attention_heads", 1) * config.get("attention_head_dim", 1)
    if width > limit:
        _refuse(source, "num_attention_heads × attention_head_dim", f"at most {limit}", width)


def check_transformer_config(config: dict[str, Any], source: Path) -> None:
    """One-line FastinvError naming the first field of an SD3 / FLUX transformer config out of range."""
    check_integers(config, _INT, source, nullable="out_channels")
    check_width(config, MAX_WIDTH, source)
    if not isinstance(config.get("guidance_embeds", False), bool):
        _refuse(source, "guidance_embeds", "true or false", config["guidance_embeds"])
    if config.get("qk_norm") not in (None, "rms_norm", "layer_norm"):
        _refuse(source, "qk_norm", 'null, "rms_norm" or "layer_norm"', config["qk_norm"])
    layers = config.get("num_layers", _INT["num_layers"][1])  # absent: diffusers' default, within the bound
    dual = config.get("dual_attention_layers", [])
    if not isinstance(dual, list | tuple) or not all(is_int(i) and 0 <= i < layers for i in dual):
        _refuse(source, "dual_attention_layers", f"a list of block indices below {layers}", dual)
    rope = config.get("axes_dims_rope", [2])
    if not isinstance(rope, list | tuple) or not rope or not all(is_int(d) and 0 < d <= 1024 for d in rope):
        _refuse(source, "axes_dims_rope", "a list of positive integers", rope)


def check_scheduler_config(config: dict[str, Any], source: Path | str) -> None:
    """One-line FastinvError naming the first field of a FlowMatchEulerDiscreteScheduler config out of
    range (the fields fastinv's schedules read, flow_sigmas)."""
    for key in _SCHEDULER_BOOLS:
        if not isinstance(config.get(key, False), bool):
            _refuse(source, key, "true or false", config[key])
    for key, (low, high) in _SCHEDULER_NUMBERS.items():
        if key in config and (not is_finite_number(config[key]) or not low < config[key] <= high):
            _refuse(source, key, f"a number in ({low:g}, {high:g}]", config[key])
    steps = config.get("num_train_timesteps", 1000)
    if not is_int(steps) or not 1 <= steps <= 100_000:
        _refuse(source, "num_train_timesteps", "an integer in [1, 100000]", steps)
    terminal = config.get("shift_terminal")
    if terminal is not None and (not is_finite_number(terminal) or not 0 < terminal < 1):
        _refuse(source, "shift_terminal", "null or a number in (0, 1)", terminal)
    if config.get("time_shift_type", "exponential") not in ("exponential", "linear"):
        _refuse(source, "time_shift_type", '"exponential" or "linear"', config["time_shift_type"])
    base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    if not (is_int(base) and is_int(top) and 1 <= base < top <= 1 << 24):
        allowed = f"integers with 1 <= base < max <= {1 << 24}"
        _refuse(source, "base_image_seq_len and max_image_seq_len", allowed, (base, top))
