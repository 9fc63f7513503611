"""Solver cost vs the denoiser it serves (fastinv.solver.flops): counted on the meta device, in seconds."""

import pytest
import torch
from diffusers.models.attention import JointTransformerBlock

from fastinv.solver.flops import compare, count_flops


def joint_block_flops(width: int, tokens: int, context_tokens: int) -> int:
    """Analytic FLOPs of one JointTransformerBlock (both streams kept), batch 1: the two adaLN-Zero
    projections (width → 6·width, one token each), q/k/v/out and the 4× MLP over all tokens (2 FLOPs per
    multiply-add), and attention 4·tokens²·width (QKᵀ and AV)."""
    total = tokens + context_tokens
    linear = 2 * 2 * width * 6 * width + 2 * total * width * width * 4 + 2 * total * width * 4 * width * 2
    return linear + 4 * total**2 * width


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_attention_is_counted(device: str) -> None:
    # On real CPU tensors the default SDPA kernel has no flop formula: count_flops must force a counted path.
    width, tokens, context_tokens = 128, 64, 16
    with torch.device(device):
        block = JointTransformerBlock(width, 2, 64)
        inputs = (torch.randn(1, tokens, width), torch.randn(1, context_tokens, width), torch.randn(1, width))
        assert count_flops(block, *inputs) == joint_block_flops(width, tokens, context_tokens)


def test_lean_sd3_solvers_cost_little_next_to_a_forward() -> None:
    assert compare("sd3-medium-paper")["ratio"] <= 0.25
    row = compare("sd3-medium")  # the warm-start design
    assert row["ratio"] <= 0.02 and row["design"] == "warm start"
    # SD3-medium is a 2 B-parameter model costing ≈ 8.9 TFLOPs per forward at 1024²
    assert 1.9e9 < row["denoiser_params"] < 2.1e9
    assert 8_000 < row["denoiser_gflops"] < 10_000


def test_reference_sd3_solver_costs_about_one_forward() -> None:
    assert 0.5 <= compare("sd3-medium-ref")["ratio"] <= 1.1
