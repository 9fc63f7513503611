"""Triton versions of `reference`'s step kernels: one pass over the latents per step, any shape and stride.

Each kernel reads its inputs once in their own dtype (bf16/fp16 velocities, float32 state), does the
arithmetic in float32 and writes float32 outputs. Inputs are viewed as at most 4 dims after merging the
dims that are contiguous in every input (a non-contiguous view costs no copy); when all inputs are
contiguous the kernel indexes flat, so loads vectorise. Coefficients are scalars or per-sample [B] tensors.
Block sizes are autotuned per element count (on a GPU). Importing this module needs `triton`; with
TRITON_INTERPRET=1 set before the import the kernels run on CPU tensors (the tests do that).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from fastinv.kernels.reference import Coefficient

_CONFIGS = [
    triton.Config({"BLOCK": block}, num_warps=warps)
    for block, warps in ((512, 4), (1024, 4), (2048, 8), (4096, 8))
]
if triton.knobs.runtime.interpret:
    _CONFIGS = _CONFIGS[:1]  # the interpreter has no GPU timer to autotune with
_KEY = ["n", "CONTIGUOUS"]


@triton.jit
def _offset(idx, size1, size2, size3, stride0, stride1, stride2, stride3, CONTIGUOUS: tl.constexpr):
    """Memory offset of logical (row-major) element `idx` of a 4-dim view."""
    if CONTIGUOUS:
        offset = idx
    else:
        i3 = idx % size3
        rest = idx // size3
        i2 = rest % size2
        rest = rest // size2
        offset = (rest // size1) * stride0 + (rest % size1) * stride1 + i2 * stride2 + i3 * stride3
    return offset


@triton.jit
def _load(ptr, idx, mask, size1, size2, size3, s0, s1, s2, s3, CONTIGUOUS: tl.constexpr):
    """Elements `idx` of a strided tensor as float32."""
    offset = _offset(idx, size1, size2, size3, s0, s1, s2, s3, CONTIGUOUS)
    return tl.load(ptr + offset, mask=mask).to(tl.float32)


@triton.jit
def _coefficient(ptr, value, sample, mask, PER_SAMPLE: tl.constexpr):
    """A per-sample coefficient read at each element's sample index, or the scalar `value`."""
    return tl.load(ptr + sample, mask=mask, other=0.0) if PER_SAMPLE else value


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _cfg_euler_kernel(
    z_ptr, v_ptr, null_ptr, h_ptr, out_ptr, h_value, guidance, n, per_sample, size1, size2, size3,
    z0, z1, z2, z3, v0, v1, v2, v3, u0, u1, u2, u3,
    HAS_NULL: tl.constexpr, H_PER_SAMPLE: tl.constexpr, CONTIGUOUS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    h = _coefficient(h_ptr, h_value, idx // per_sample, mask, H_PER_SAMPLE)
    v = _load(v_ptr, idx, mask, size1, size2, size3, v0, v1, v2, v3, CONTIGUOUS)
    if HAS_NULL:
        v_null = _load(null_ptr, idx, mask, size1, size2, size3, u0, u1, u2, u3, CONTIGUOUS)
        v = v_null + guidance * (v - v_null)
    z = _load(z_ptr, idx, mask, size1, size2, size3, z0, z1, z2, z3, CONTIGUOUS)
    tl.store(out_ptr + idx, z + h * v, mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _fixed_point_kernel(
    z_ptr, v_ptr, null_ptr, h_ptr, out_ptr, f_ptr, h_value, guidance, n, per_sample, size1, size2, size3,
    z0, z1, z2, z3, v0, v1, v2, v3, u0, u1, u2, u3,
    HAS_NULL: tl.constexpr, H_PER_SAMPLE: tl.constexpr, CONTIGUOUS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    h = _coefficient(h_ptr, h_value, idx // per_sample, mask, H_PER_SAMPLE)
    f = _load(v_ptr, idx, mask, size1, size2, size3, v0, v1, v2, v3, CONTIGUOUS)
    if HAS_NULL:
        v_null = _load(null_ptr, idx, mask, size1, size2, size3, u0, u1, u2, u3, CONTIGUOUS)
        f = v_null + guidance * (f - v_null)
    z = _load(z_ptr, idx, mask, size1, size2, size3, z0, z1, z2, z3, CONTIGUOUS)
    tl.store(f_ptr + idx, f, mask=mask)
    tl.store(out_ptr + idx, z + h * f, mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _deepinv_kernel(
    z_ptr, eps_ptr, null_ptr, pseudo_ptr, h_ptr, out_ptr, h_value, guidance, lambda_fixed, lambda_pseudo,
    n, per_sample, size1, size2, size3,
    z0, z1, z2, z3, e0, e1, e2, e3, u0, u1, u2, u3, p0, p1, p2, p3,
    HAS_NULL: tl.constexpr, HAS_PSEUDO: tl.constexpr, H_PER_SAMPLE: tl.constexpr,
    CONTIGUOUS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    h = _coefficient(h_ptr, h_value, idx // per_sample, mask, H_PER_SAMPLE)
    eps = _load(eps_ptr, idx, mask, size1, size2, size3, e0, e1, e2, e3, CONTIGUOUS)
    if HAS_NULL:
        eps_null = _load(null_ptr, idx, mask, size1, size2, size3, u0, u1, u2, u3, CONTIGUOUS)
        eps = eps_null + guidance * (eps - eps_null)
    noise = lambda_fixed * eps
    if HAS_PSEUDO:
        noise += lambda_pseudo * _load(pseudo_ptr, idx, mask, size1, size2, size3, p0, p1, p2, p3, CONTIGUOUS)
    z = _load(z_ptr, idx, mask, size1, size2, size3, z0, z1, z2, z3, CONTIGUOUS)
    tl.store(out_ptr + idx, z + h * noise, mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _easyinv_kernel(
    z_ptr, prev_ptr, v_ptr, h_ptr, eta_ptr, out_ptr, blended_ptr, h_value, eta_value, rest_value,
    n, per_sample, size1, size2, size3,
    z0, z1, z2, z3, q0, q1, q2, q3, v0, v1, v2, v3,
    H_PER_SAMPLE: tl.constexpr, ETA_PER_SAMPLE: tl.constexpr, CONTIGUOUS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    sample = idx // per_sample
    h = _coefficient(h_ptr, h_value, sample, mask, H_PER_SAMPLE)
    eta = _coefficient(eta_ptr, eta_value, sample, mask, ETA_PER_SAMPLE)
    rest = 1 - eta if ETA_PER_SAMPLE else rest_value  # a float η: 1 − η rounded from double, as in torch
    z = _load(z_ptr, idx, mask, size1, size2, size3, z0, z1, z2, z3, CONTIGUOUS)
    z_prev = _load(prev_ptr, idx, mask, size1, size2, size3, q0, q1, q2, q3, CONTIGUOUS)
    v = _load(v_ptr, idx, mask, size1, size2, size3, v0, v1, v2, v3, CONTIGUOUS)
    blended = eta * z + rest * z_prev
    tl.store(blended_ptr + idx, blended, mask=mask)
    tl.store(out_ptr + idx, blended + h * v, mask=mask)


@triton.autotune(configs=_CONFIGS, key=_KEY)
@triton.jit
def _renoise_kernel(
    z_ptr, v_ptr, avg_ptr, h_ptr, w_ptr, out_ptr, avg_out_ptr, h_value, w_value,
    n, per_sample, size1, size2, size3,
    z0, z1, z2, z3, v0, v1, v2, v3, a0, a1, a2, a3,
    H_PER_SAMPLE: tl.constexpr, W_PER_SAMPLE: tl.constexpr, CONTIGUOUS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    idx = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    sample = idx // per_sample
    h = _coefficient(h_ptr, h_value, sample, mask, H_PER_SAMPLE)
    weight = _coefficient(w_ptr, w_value, sample, mask, W_PER_SAMPLE)
    z = _load(z_ptr, idx, mask, size1, size2, size3, z0, z1, z2, z3, CONTIGUOUS)
    v = _load(v_ptr, idx, mask, size1, size2, size3, v0, v1, v2, v3, CONTIGUOUS)
    average = _load(avg_ptr, idx, mask, size1, size2, size3, a0, a1, a2, a3, CONTIGUOUS)
    iterate = z + h * v
    tl.store(out_ptr + idx, iterate, mask=mask)
    tl.store(avg_out_ptr + idx, average + weight * iterate, mask=mask)


def _view4(z: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[list[int], list[list[int]], bool]:
    """Sizes (dims 1–3) and per-input strides of a ≤ 4-dim view shared by all inputs, and whether all are
    contiguous. Dims of size 1 are dropped and neighbours contiguous in every input merged; inputs that
    still need more than 4 dims are copied contiguous (in place in `inputs`)."""
    for t in inputs:
        if t.shape != z.shape:
            raise ValueError(f"fused step inputs must share z's shape {tuple(z.shape)}, got {tuple(t.shape)}")
    dims = [(size, [t.stride(d) for t in inputs]) for d, size in enumerate(z.shape) if size != 1]
    merged: list[tuple[int, list[int]]] = []
    for size, strides in dims:
        if merged and all(outer == inner * size for outer, inner in zip(merged[-1][1], strides, strict=True)):
            merged[-1] = (merged[-1][0] * size, strides)
        else:
            merged.append((size, strides))
    if len(merged) > 4:
        inputs[:] = [t.contiguous() for t in inputs]
        merged = [(z.numel(), [1] * len(inputs))]
    merged = [(1, [0] * len(inputs))] * (4 - len(merged)) + merged
    sizes = [size for size, _ in merged[1:]]
    strides = [[s[i] for _, s in merged] for i in range(len(inputs))]
    contiguous = all(s[-1] == 1 and all(x == 0 for x in s[:-1]) for s in strides) and sizes[:2] == [1, 1]
    return sizes, strides, contiguous


def _scalar_or_tensor(c: Coefficient, batch: int, device: torch.device) -> tuple[torch.Tensor | None, float]:
    """(per-sample float32 [B] tensor or None, scalar value) for a kernel coefficient."""
    if not isinstance(c, torch.Tensor):
        return None, float(c)
    return c.to(device, torch.float32).expand(batch).contiguous(), 0.0


def _launch(
    kernel,
    z: torch.Tensor,
    inputs: list[torch.Tensor],
    coefficients: list[torch.Tensor],
    scalars: list[float],
    outputs: int,
    **flags: bool,
) -> list[torch.Tensor]:
    """Launch `kernel` over z's elements with arguments (inputs, coefficient pointers, float32 outputs
    like z, scalars, n, per-sample count, sizes, strides); returns the outputs."""
    sizes, strides, contiguous = _view4(z, inputs)
    outs = [torch.empty(z.shape, device=z.device, dtype=torch.float32) for _ in range(outputs)]
    n = z.numel()
    if n == 0:
        return outs
    strides_flat = [s for stride in strides for s in stride]
    args = [*inputs, *coefficients, *outs, *scalars, n, n // z.shape[0], *sizes, *strides_flat]

    def grid(meta: dict) -> tuple[int]:
        return (triton.cdiv(n, meta["BLOCK"]),)

    kernel[grid](*args, CONTIGUOUS=contiguous, **flags)
    return outs


def _pointers(z: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor]:
    """Kernel pointer arguments: absent optional inputs point at z (never read: their flag is off)."""
    return [z if t is None else t for t in tensors]


def cfg_euler_update(
    z: torch.Tensor,
    v: torch.Tensor,
    h: Coefficient,
    *,
    v_null: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> torch.Tensor:
    """Triton `reference.cfg_euler_update`."""
    h_tensor, h_value = _scalar_or_tensor(h, z.shape[0], z.device)
    (out,) = _launch(
        _cfg_euler_kernel,
        z,
        _pointers(z, z, v, v_null),
        _pointers(z, h_tensor),
        [h_value, float(guidance)],
        1,
        HAS_NULL=v_null is not None,
        H_PER_SAMPLE=h_tensor is not None,
    )
    return out


def fixed_point_update(
    z: torch.Tensor,
    v: torch.Tensor,
    h: Coefficient,
    *,
    v_null: torch.Tensor | None = None,
    guidance: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `reference.fixed_point_update`."""
    h_tensor, h_value = _scalar_or_tensor(h, z.shape[0], z.device)
    out, f = _launch(
        _fixed_point_kernel,
        z,
        _pointers(z, z, v, v_null),
        _pointers(z, h_tensor),
        [h_value, float(guidance)],
        2,
        HAS_NULL=v_null is not None,
        H_PER_SAMPLE=h_tensor is not None,
    )
    return out, f


def deepinv_update(
    z: torch.Tensor,
    eps: torch.Tensor,
    h: Coefficient,
    *,
    eps_null: torch.Tensor | None = None,
    guidance: float = 1.0,
    eps_pseudo: torch.Tensor | None = None,
    weights: tuple[float, float] = (1.0, 0.0),
) -> torch.Tensor:
    """Triton `reference.deepinv_update`."""
    h_tensor, h_value = _scalar_or_tensor(h, z.shape[0], z.device)
    (out,) = _launch(
        _deepinv_kernel,
        z,
        _pointers(z, z, eps, eps_null, eps_pseudo),
        _pointers(z, h_tensor),
        [h_value, float(guidance), *map(float, weights)],
        1,
        HAS_NULL=eps_null is not None,
        HAS_PSEUDO=eps_pseudo is not None,
        H_PER_SAMPLE=h_tensor is not None,
    )
    return out


def easyinv_update(
    z: torch.Tensor, z_prev: torch.Tensor, v: torch.Tensor, h: Coefficient, eta: Coefficient
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `reference.easyinv_update`."""
    h_tensor, h_value = _scalar_or_tensor(h, z.shape[0], z.device)
    eta_tensor, eta_value = _scalar_or_tensor(eta, z.shape[0], z.device)
    out, blended = _launch(
        _easyinv_kernel,
        z,
        [z, z_prev, v],
        _pointers(z, h_tensor, eta_tensor),
        [h_value, eta_value, 1 - eta_value],
        2,
        H_PER_SAMPLE=h_tensor is not None,
        ETA_PER_SAMPLE=eta_tensor is not None,
    )
    return out, blended


def renoise_update(
    z: torch.Tensor, v: torch.Tensor, h: Coefficient, average: torch.Tensor, weight: Coefficient
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton `reference.renoise_update`."""
    h_tensor, h_value = _scalar_or_tensor(h, z.shape[0], z.device)
    w_tensor, w_value = _scalar_or_tensor(weight, z.shape[0], z.device)
    out, new_average = _launch(
        _renoise_kernel,
        z,
        [z, v, average],
        _pointers(z, h_tensor, w_tensor),
        [h_value, w_value],
        2,
        H_PER_SAMPLE=h_tensor is not None,
        W_PER_SAMPLE=w_tensor is not None,
    )
    return out, new_average
