"""The Triton step kernels compile for a real GPU target (sm_90, Hopper) with Triton's own ptxas, and the
contiguous variant gets 128-bit loads/stores. No GPU is needed to compile, so CI checks what the
interpreter tests cannot: that the kernels are valid GPU code, not only valid Python."""

from __future__ import annotations

import importlib
import re

import pytest

triton = pytest.importorskip("triton")
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

KERNELS = {
    "_cfg_euler_kernel": ("HAS_NULL", "H_PER_SAMPLE"),
    "_deepinv_kernel": ("HAS_NULL", "HAS_PSEUDO", "H_PER_SAMPLE"),
    "_easyinv_kernel": ("H_PER_SAMPLE", "ETA_PER_SAMPLE"),
    "_renoise_kernel": ("H_PER_SAMPLE", "W_PER_SAMPLE"),
}
BF16_INPUTS = {"v_ptr", "null_ptr", "eps_ptr", "pseudo_ptr"}  # network outputs: bf16 on the fast path


@pytest.fixture(scope="module")
def glue(monkeypatch_module: pytest.MonkeyPatch):
    monkeypatch_module.delenv("TRITON_INTERPRET", raising=False)
    from fastinv.kernels import triton_glue

    return importlib.reload(triton_glue)  # compiled (not interpreted) kernels


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def compile_sm90(kernel, flags: dict[str, bool], contiguous: bool) -> dict:
    """PTX and cubin (Triton's ptxas) of `kernel` for sm_90: bf16 network inputs, float32 state,
    16-divisible pointers and element counts (what Triton's launcher specialises for SD3/FLUX latents)."""
    fn = kernel.fn
    names = fn.arg_names
    constants = {**flags, "CONTIGUOUS": contiguous, "BLOCK": 1024}
    signature = {}
    for name in names:
        if name in constants:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = "*bf16" if name in BF16_INPUTS else "*fp32"
        elif name in ("n", "per_sample") or name.startswith("size") or re.fullmatch(r"[a-z]\d", name):
            signature[name] = "i32"
        else:
            signature[name] = "fp32"
    aligned = [name for name in names if name.endswith("_ptr") or name in ("n", "per_sample")]
    source = ASTSource(
        fn,
        signature,
        {(names.index(k),): v for k, v in constants.items()},
        {(names.index(name),): [["tt.divisibility", 16]] for name in aligned},
    )
    return triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4}).asm


@pytest.mark.parametrize("name", KERNELS)
def test_kernels_compile_for_sm90(glue, name: str) -> None:
    kernel = getattr(glue, name)
    flags = dict.fromkeys(KERNELS[name], True)
    strided = compile_sm90(kernel, flags, contiguous=False)
    contiguous = compile_sm90(kernel, flags, contiguous=True)
    assert ".target sm_90" in strided["ptx"] and strided["cubin"] and contiguous["cubin"]
    assert "ld.global.v4.b32" in contiguous["ptx"] and "st.global.v4.b32" in contiguous["ptx"]  # 128-bit
