"""Sigma schedules taken from diffusers' FlowMatchEulerDiscreteScheduler configs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastinv.errors import FastinvError
from fastinv.schedule import FLUX_SCHEDULER_DEFAULTS, SD3_SCHEDULER_DEFAULTS, flow_sigmas


@settings(max_examples=30, deadline=None)
@given(steps=st.integers(1, 200), shift=st.floats(0.25, 8.0))
def test_static_shift_schedule(steps: int, shift: float) -> None:
    sigmas = flow_sigmas({**SD3_SCHEDULER_DEFAULTS, "shift": shift}, steps)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,)
    assert sigmas[0] == pytest.approx(1.0, abs=1e-6) and sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_shift_is_applied_to_an_even_grid() -> None:
    """SD3's shift maps σ → s·σ / (1 + (s − 1)·σ); un-shifting the schedule gives evenly spaced σ."""
    s = 3.0
    shifted = flow_sigmas({"shift": s}, 10)[:-1]
    plain = shifted / (s - (s - 1) * shifted)
    gaps = plain[:-1] - plain[1:]
    torch.testing.assert_close(gaps, gaps.mean().expand_as(gaps), rtol=1e-4, atol=1e-6)


def test_flux_dynamic_shift_grows_with_image_size() -> None:
    small = flow_sigmas(FLUX_SCHEDULER_DEFAULTS, 8, image_seq_len=256)
    large = flow_sigmas(FLUX_SCHEDULER_DEFAULTS, 8, image_seq_len=4096)
    assert torch.all(large[1:-1] > small[1:-1])
    with pytest.raises(ValueError, match="image_seq_len"):
        flow_sigmas(FLUX_SCHEDULER_DEFAULTS, 8)


def test_steps_must_be_positive() -> None:
    with pytest.raises(FastinvError, match="at least 1"):
        flow_sigmas(SD3_SCHEDULER_DEFAULTS, 0)
