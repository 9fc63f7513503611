"""Fused step kernels (fastinv.kernels): the Triton kernels, run by Triton's CPU interpreter, against the
torch references on every shape / stride / dtype / coefficient form; both against hand-written formulas;
the dispatcher; and a CPU smoke run of benchmarks/kernels.py.

Both sides read the same (bf16, fp16 or fp32) inputs, upcast them exactly to float32 and do the same
float32 arithmetic, so even low-precision inputs must agree to float32 rounding (bit-exact on CPU).
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scripts import import_script

from fastinv import kernels
from fastinv.errors import FastinvError

reference = kernels.reference

Factory = Callable[[], torch.Tensor]
Builder = Callable[[Factory, Factory, object, object], tuple[tuple, dict]]

# case label -> builder(state, velocity, h, c) of (args, kwargs); the op is the label's prefix + "_update".
# state() gives the next float32 state tensor, velocity() the next velocity / noise in the tested dtype,
# c is eta (easyinv) or weight (renoise).
CASES: dict[str, Builder] = {
    "cfg_euler": lambda s, v, h, c: ((s(), v(), h), {}),
    "cfg_euler+cfg": lambda s, v, h, c: ((s(), v(), h), {"v_null": v(), "guidance": 4.5}),
    "fixed_point": lambda s, v, h, c: ((s(), v(), h), {}),
    "fixed_point+cfg": lambda s, v, h, c: ((s(), v(), h), {"v_null": v(), "guidance": 4.5}),
    "deepinv": lambda s, v, h, c: ((s(), v(), h), {}),
    "deepinv+cfg": lambda s, v, h, c: ((s(), v(), h), {"eps_null": v(), "guidance": 2.0}),
    "deepinv+pseudo": lambda s, v, h, c: ((s(), v(), h), {"eps_pseudo": v(), "weights": (0.9, 0.1)}),
    "deepinv+pseudo(λ2=0)": lambda s, v, h, c: ((s(), v(), h), {"eps_pseudo": v()}),
    "deepinv+cfg+pseudo": lambda s, v, h, c: (
        (s(), v(), h),
        {"eps_null": v(), "guidance": 3.0, "eps_pseudo": v(), "weights": (0.7, 0.3)},
    ),
    "easyinv": lambda s, v, h, c: ((s(), s(), v(), h, c), {}),
    "renoise": lambda s, v, h, c: ((s(), v(), h, s(), c), {}),
}
# every input of each op
FULL_CASES = ("cfg_euler+cfg", "fixed_point+cfg", "deepinv+cfg+pseudo", "easyinv", "renoise")
OPS = ("cfg_euler_update", "fixed_point_update", "deepinv_update", "easyinv_update", "renoise_update")
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
COEFFICIENTS = ("float", "per-sample", "0-d")
LAYOUTS = ("contiguous", "transposed", "permuted", "strided", "broadcast", "offset")
# odd sizes; (3, 5, 7, 9) and (2, 7, 64) (FLUX-packed tokens) span two kernel blocks of 512 elements (in the
# interpreter), with samples straddling them
SHAPES = ((1, 3, 5, 7), (3, 5, 7, 9), (2, 7, 64), (37,), (2, 3, 4, 5, 6))
BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


@pytest.fixture(scope="module")
def glue() -> Iterator[ModuleType]:
    """`fastinv.kernels.triton_glue` (re)imported with TRITON_INTERPRET=1, so its kernels run on CPU."""
    pytest.importorskip("triton")
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"  # read by @triton.jit when the module is executed
    module = importlib.reload(importlib.import_module("fastinv.kernels.triton_glue"))
    try:
        yield module
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
        importlib.reload(module)  # back to compiled kernels for whatever runs later


def layout_randn(shape: tuple[int, ...], dtype: torch.dtype, layout: str, g: torch.Generator) -> torch.Tensor:
    """A random tensor of `shape` and `dtype` whose memory layout is `layout` (one of LAYOUTS)."""

    def base(*size: int) -> torch.Tensor:
        return torch.randn(size, generator=g).to(dtype)

    dims = len(shape)
    if layout == "contiguous":
        return base(*shape)
    if layout == "transposed":  # last two dims swapped in memory
        return base(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)
    if layout == "permuted":  # every dim reversed in memory
        return base(*reversed(shape)).permute(*reversed(range(dims)))
    if layout == "strided":  # every other element of the last dim
        return base(*shape[:-1], 2 * shape[-1])[..., ::2]
    if layout == "broadcast":  # stride 0 along dim 1 (dim 0 of a 1-dim tensor)
        dim = min(1, dims - 1)
        return base(*shape[:dim], 1, *shape[dim + 1 :]).expand(shape)
    assert layout == "offset"  # a nonzero storage offset
    return base(shape[0] + 1, *shape[1:])[1:]


def coefficient(kind: str, batch: int, g: torch.Generator, value: float) -> float | torch.Tensor:
    """`value` as a python float, a per-sample [B] float32 tensor (random around it) or a 0-d tensor."""
    if kind == "float":
        return value
    if kind == "per-sample":
        return value + 0.1 * torch.randn(batch, generator=g)
    assert kind == "0-d"
    return torch.tensor(value)


def build(
    case: str,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    layouts: Iterator[str],
    coefficients: str,
    seed: int = 0,
) -> tuple[str, tuple, dict]:
    """(op name, args, kwargs) of `case` on random inputs; each tensor takes the next layout of `layouts`."""
    g = torch.Generator().manual_seed(seed)

    def state() -> torch.Tensor:
        return layout_randn(shape, torch.float32, next(layouts), g)

    def velocity() -> torch.Tensor:
        return layout_randn(shape, dtype, next(layouts), g)

    h = coefficient(coefficients, shape[0], g, -0.037)
    c = coefficient(coefficients, shape[0], g, 0.8)
    args, kwargs = CASES[case](state, velocity, h, c)
    return case.split("+")[0] + "_update", args, kwargs


def as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def seeded(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal [shape] drawn from a generator seeded with `seed`, cast to `dtype`."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def check_against_reference(glue: ModuleType, op: str, args: tuple, kwargs: dict) -> None:
    """Triton outputs equal the reference's (float32, z's shape, fresh contiguous); inputs untouched."""
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor)]
    before = [t.clone() for t in tensors]
    expected = as_tuple(getattr(reference, op)(*args, **kwargs))
    got = as_tuple(getattr(glue, op)(*args, **kwargs))
    assert len(got) == len(expected)
    for out, ref in zip(got, expected, strict=True):
        assert out.dtype == torch.float32 and out.shape == args[0].shape and out.is_contiguous()
        assert all(out.data_ptr() != t.data_ptr() for t in tensors if t.numel())
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    assert all(torch.equal(t, b) for t, b in zip(tensors, before, strict=True))


# --- Triton vs reference ------------------------------------------------------------------------------------


@pytest.mark.parametrize("coefficients", COEFFICIENTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES)
def test_dtypes_and_coefficients(glue: ModuleType, case: str, dtype: torch.dtype, coefficients: str) -> None:
    op, args, kwargs = build(case, (2, 4, 13, 11), dtype, itertools.repeat("contiguous"), coefficients)
    check_against_reference(glue, op, args, kwargs)


def usable_layouts(shape: tuple[int, ...]) -> list[str]:
    """LAYOUTS less those that need two dims."""
    return [lay for lay in LAYOUTS if len(shape) > 1 or lay not in ("transposed", "permuted")]


@pytest.mark.parametrize("mixed", [False, True], ids=["same", "mixed"])
@pytest.mark.parametrize(("shape", "layout"), [(s, lay) for s in SHAPES for lay in usable_layouts(s)])
@pytest.mark.parametrize("case", FULL_CASES)
def test_shapes_and_layouts(
    glue: ModuleType, case: str, shape: tuple[int, ...], layout: str, mixed: bool
) -> None:
    """Every input in `layout`, or (mixed) each input in the next layout after the previous input's."""
    usable = usable_layouts(shape)
    start = usable.index(layout)
    layouts = itertools.cycle(usable[start:] + usable[:start]) if mixed else itertools.repeat(layout)
    op, args, kwargs = build(case, shape, torch.bfloat16, layouts, "per-sample", seed=len(shape))
    check_against_reference(glue, op, args, kwargs)


def test_view4_merges_drops_and_falls_back_to_copies(glue: ModuleType) -> None:
    z = torch.zeros(2, 3, 4, 5, 6)
    inputs = [z, z.clone()]
    assert glue._view4(z, inputs) == ([1, 1, 720], [[0, 0, 0, 1]] * 2, True)  # one flat dim
    size_one = torch.zeros(30).as_strided((2, 1, 15), (15, 7, 1))  # size-1 dim of odd stride: dropped
    assert glue._view4(size_one, [size_one]) == ([1, 1, 30], [[0, 0, 0, 1]], True)
    strided = [z[:, :, ::2], torch.zeros(2, 3, 2, 5, 6)]  # dims 0–2 and 3–4 merge in both: no copy
    kept = list(strided)
    assert glue._view4(strided[0], kept) == ([1, 12, 30], [[0, 0, 60, 1], [0, 0, 30, 1]], False)
    assert all(a is b for a, b in zip(kept, strided, strict=True))
    reversed_dims = z.permute(4, 3, 2, 1, 0)  # 5 dims that merge in no input: copied contiguous
    copied = [reversed_dims, torch.zeros(reversed_dims.shape)]
    assert glue._view4(reversed_dims, copied) == ([1, 1, 720], [[0, 0, 0, 1]] * 2, True)
    assert copied[0] is not reversed_dims and copied[0].is_contiguous()
    assert torch.equal(copied[0], reversed_dims)


@pytest.mark.parametrize("shape", [(0, 4, 3), (2, 0, 3)])
@pytest.mark.parametrize("case", FULL_CASES)
def test_empty(glue: ModuleType, case: str, shape: tuple[int, ...]) -> None:
    op, args, kwargs = build(case, shape, torch.bfloat16, itertools.repeat("contiguous"), "float")
    for out in as_tuple(getattr(glue, op)(*args, **kwargs)):
        assert out.shape == shape and out.dtype == torch.float32


@pytest.mark.parametrize("case", FULL_CASES)
def test_shape_mismatch_is_a_value_error(glue: ModuleType, case: str) -> None:
    """Each tensor input after z in turn cut to batch 1: refused, even though it would broadcast."""
    op, args, kwargs = build(case, (2, 3, 4), torch.float32, itertools.repeat("contiguous"), "float")
    positions = [i for i, a in enumerate(args[1:], 1) if isinstance(a, torch.Tensor)]
    for slot in positions + [k for k, a in kwargs.items() if isinstance(a, torch.Tensor)]:
        cut_args, cut_kwargs = list(args), dict(kwargs)
        if isinstance(slot, int):
            cut_args[slot] = args[slot][:1]
        else:
            cut_kwargs[slot] = kwargs[slot][:1]
        with pytest.raises(ValueError, match="share z's shape"):
            getattr(glue, op)(*cut_args, **cut_kwargs)


def test_easyinv_float_eta_rounds_like_torch(glue: ModuleType) -> None:
    """A float η: 1 − η is rounded to float32 from double as torch does (1 − float32(0.8) is 1 ulp off)."""
    z, z_prev, v = seeded(2, 600), seeded(2, 600, seed=1), seeded(2, 600, seed=2, dtype=torch.bfloat16)
    for eta in (0.8, 0.85, 0.95):
        got = glue.easyinv_update(z, z_prev, v, 0.1, eta)
        expected = reference.easyinv_update(z, z_prev, v, 0.1, eta)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


@st.composite
def random_strides(draw: st.DrawFn) -> tuple[tuple[int, ...], list[list[int]], torch.dtype, str, int]:
    """(shape, one dim permutation per input tensor, velocity dtype, coefficient form, seed)."""
    dims = draw(st.integers(1, 5))
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=dims, max_size=dims)))
    perms = [draw(st.permutations(range(dims))) for _ in range(5)]
    dtype = draw(st.sampled_from(DTYPES))
    return shape, perms, dtype, draw(st.sampled_from(COEFFICIENTS)), draw(st.integers(0, 2**16))


@pytest.mark.parametrize("case", FULL_CASES)
@settings(max_examples=25, deadline=None)
@given(drawn=random_strides())
def test_random_shapes_and_strides(glue: ModuleType, case: str, drawn: tuple) -> None:
    """Each input a permuted view of a contiguous tensor (inverse permutation of its storage order)."""
    shape, perms, dtype, coefficients, seed = drawn
    perm_iter = iter(perms)
    g = torch.Generator().manual_seed(seed)

    def permuted(dtype: torch.dtype) -> Factory:
        def make() -> torch.Tensor:
            perm = next(perm_iter)
            storage = torch.randn([shape[p] for p in perm], generator=g).to(dtype)
            return storage.permute(*sorted(range(len(perm)), key=perm.__getitem__))

        return make

    h = coefficient(coefficients, shape[0], g, 0.05)
    c = coefficient(coefficients, shape[0], g, 0.3)
    args, kwargs = CASES[case](permuted(torch.float32), permuted(dtype), h, c)
    check_against_reference(glue, case.split("+")[0] + "_update", args, kwargs)


# --- both implementations against hand-written formulas -----------------------------------------------------


@pytest.fixture(params=["reference", "triton"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return reference if request.param == "reference" else request.getfixturevalue("glue")


def test_cfg_euler_formula(impl: ModuleType) -> None:
    z, v, v_null = seeded(2, 4, 6), seeded(2, 4, 6, seed=1), seeded(2, 4, 6, seed=2)
    h = torch.tensor([0.25, -0.5])
    out = impl.cfg_euler_update(z, v, h, v_null=v_null, guidance=7.0)
    expected = z.double() + h.double().view(2, 1, 1) * (v_null.double() + 7.0 * (v - v_null).double())
    torch.testing.assert_close(out, expected.float(), rtol=1e-6, atol=1e-6)
    assert torch.equal(impl.cfg_euler_update(z, v, 0.5), z + 0.5 * v)
    assert torch.equal(impl.cfg_euler_update(z, v, 0.5, v_null=v_null, guidance=0.0), z + 0.5 * v_null)
    assert torch.equal(impl.cfg_euler_update(z, v, 0.0, v_null=v_null, guidance=3.0), z)


def test_fixed_point_formula(impl: ModuleType) -> None:
    z, v, v_null = seeded(2, 4, 6), seeded(2, 4, 6, seed=1, dtype=torch.bfloat16), seeded(2, 4, 6, seed=2)
    h = torch.tensor([0.25, 0.5])
    point, f = impl.fixed_point_update(z, v, h, v_null=v_null, guidance=3.0)
    combined = v_null.double() + 3.0 * (v.double() - v_null.double())
    torch.testing.assert_close(f, combined.float(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(point, (z.double() + h.double().view(2, 1, 1) * combined).float())
    point, f = impl.fixed_point_update(z, v, 0.5)
    assert torch.equal(f, v.float()) and torch.equal(point, z + 0.5 * v.float())


def test_deepinv_formula(impl: ModuleType) -> None:
    z, eps, pseudo = seeded(3, 5), seeded(3, 5, seed=1, dtype=torch.bfloat16), seeded(3, 5, seed=2)
    assert torch.equal(impl.deepinv_update(z, eps, 0.3), z + 0.3 * eps.float())
    # λ2 without ε* is ignored; ε* with (1, 0) contributes nothing; (0, 1) uses ε* alone
    assert torch.equal(impl.deepinv_update(z, eps, 0.3, weights=(1.0, 5.0)), z + 0.3 * eps.float())
    assert torch.equal(impl.deepinv_update(z, eps, 0.3, eps_pseudo=pseudo), z + 0.3 * eps.float())
    only_pseudo = impl.deepinv_update(z, eps, 0.3, eps_pseudo=pseudo, weights=(0.0, 1.0))
    assert torch.equal(only_pseudo, z + 0.3 * pseudo)
    blended = impl.deepinv_update(z, eps, 0.3, eps_pseudo=pseudo, weights=(0.9, 0.1))
    torch.testing.assert_close(blended, z + 0.3 * (0.9 * eps.float() + 0.1 * pseudo), rtol=1e-6, atol=1e-6)


def test_easyinv_formula(impl: ModuleType) -> None:
    z, z_prev, v = seeded(2, 3, 4), seeded(2, 3, 4, seed=1), seeded(2, 3, 4, seed=2, dtype=torch.float16)
    out, blended = impl.easyinv_update(z, z_prev, v, 0.2, 1.0)  # η = 1: plain Euler
    assert torch.equal(blended, z) and torch.equal(out, z + 0.2 * v.float())
    out, blended = impl.easyinv_update(z, z_prev, v, 0.2, torch.tensor([1.0, 0.0]))  # per sample
    assert torch.equal(blended[0], z[0]) and torch.equal(blended[1], z_prev[1])
    assert torch.equal(out, blended + 0.2 * v.float())
    out, blended = impl.easyinv_update(z, z_prev, v, 0.2, 0.5)
    torch.testing.assert_close(blended, (z + z_prev) / 2, rtol=1e-6, atol=1e-6)


def test_renoise_mean_of_last_iterates(impl: ModuleType) -> None:
    """ReNoise's K iterates all start from z; weights 0 then 1/m over the last m leave their mean."""
    z, average, iterates = seeded(2, 3, 4), torch.zeros(2, 3, 4), []
    h, steps, last = torch.tensor([0.1, 0.2]), 5, 3
    for k in range(steps):
        v = seeded(2, 3, 4, seed=k + 1, dtype=torch.bfloat16)
        iterate, average = impl.renoise_update(z, v, h, average, 0.0 if k < steps - last else 1.0 / last)
        assert torch.equal(iterate, z + h.view(2, 1, 1) * v.float())
        iterates.append(iterate)
    torch.testing.assert_close(average, torch.stack(iterates[-last:]).mean(0), rtol=1e-6, atol=1e-6)


# --- dispatcher ---------------------------------------------------------------------------------------------


def test_cpu_tensors_use_the_reference() -> None:
    ops = kernels.StepKernels()
    assert ops.implementation(torch.zeros(1)) is reference
    z, v = seeded(2, 3), seeded(2, 3, seed=1)
    assert torch.equal(ops.cfg_euler_update(z, v, 0.1), reference.cfg_euler_update(z, v, 0.1))


def test_cuda_tensors_use_triton_unless_torch_is_asked_for(glue: ModuleType) -> None:
    cuda = SimpleNamespace(is_cuda=True)
    assert kernels.StepKernels("auto").implementation(cuda) is glue
    assert kernels.StepKernels("torch").implementation(cuda) is reference


def test_cuda_tensors_use_the_reference_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernels, "triton_available", lambda: False)
    assert kernels.StepKernels().implementation(SimpleNamespace(is_cuda=True)) is reference


def test_unknown_backend() -> None:
    with pytest.raises(FastinvError, match="unknown kernel backend 'cuda'"):
        kernels.StepKernels("cuda")


@pytest.mark.parametrize("case", FULL_CASES)
def test_dispatcher_forwards_every_argument(
    glue: ModuleType, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """The StepKernels ops with Triton forced on CPU tensors equal the Triton functions called directly."""
    op, args, kwargs = build(case, (2, 3, 4), torch.bfloat16, itertools.repeat("contiguous"), "per-sample")
    monkeypatch.setattr(kernels.StepKernels, "implementation", lambda self, z: glue)
    dispatched = as_tuple(getattr(kernels.StepKernels(), op)(*args, **kwargs))
    direct = as_tuple(getattr(glue, op)(*args, **kwargs))
    assert all(torch.equal(a, b) for a, b in zip(dispatched, direct, strict=True))


# --- benchmarks/kernels.py ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_script() -> ModuleType:
    """benchmarks/kernels.py imported as a module: run in-process, it saves a subprocess its torch import."""
    return import_script(BENCHMARK)


def test_benchmark_cpu_smoke_run(
    benchmark_script: ModuleType, glue: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--device cpu` sets TRITON_INTERPRET and imports triton_glue: here the `glue` fixture's interpreted
    module, the one such an import finds; monkeypatch restores TRITON_INTERPRET afterwards."""
    out = tmp_path / "kernels.json"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args = ["--device", "cpu", "--sizes", "16,32", "--batches", "1,2", "--repeats", "3", "--warmup", "1"]
    monkeypatch.setattr(sys, "argv", [str(BENCHMARK), *args, "--out", str(out)])
    benchmark_script.main()
    record = json.loads(out.read_text())
    assert "timings meaningless" in record["note"] and record["device"] == "cpu"
    assert record["variants"] == ["eager", "triton"]
    rows = {(r["op"], r["size"], r["batch"], r["variant"]): r for r in record["rows"]}
    assert len(rows) == len(record["rows"]) == len(OPS) * 2 * 2 * 2
    assert {op for op, *_ in rows} == set(OPS)
    for row in rows.values():
        assert row["matches_reference"]
        for key in ("median_us", "p20_us", "p80_us", "gb_s"):
            assert math.isfinite(row[key]) and row[key] > 0, (key, row)
    assert math.isfinite(record["copy_gb_s"]) and record["copy_gb_s"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no CUDA device"),
        (["--device", "cpu"], "needs --out"),
        (["--device", "cpu", "--out", "x.json", "--sizes", "12"], "multiples of 8"),
    ],
)
def test_benchmark_refuses_in_one_line(
    benchmark_script: ModuleType, monkeypatch: pytest.MonkeyPatch, argv: list[str], message: str
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["kernels.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        benchmark_script.parse_args()
    text = str(exit_info.value.code)
    assert text.startswith("error: ") and message in text and "\n" not in text
