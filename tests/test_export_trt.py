"""TensorRT engines without TensorRT: profiles, the engine cache and its load-time checks, the dtype table
and binding as plain functions, and the build and runtime code paths against a fake `tensorrt` module
(tests/fake_tensorrt.py) whose engine really reads and writes the bound torch tensors.

Graph files here carry a real GraphSpec (that of the tiny SD3 and the tiny solver) around an Identity
node: nothing is traced, so the module runs in seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")

from fake_tensorrt import FakeTensorRT  # noqa: E402
from fastinv.export.graphs import solver_graph, velocity_graph  # noqa: E402
from fastinv.export.tensorrt import build_engine, network_flags, timing_cache_path  # noqa: E402
from test_solver import TINY, tiny_solver  # noqa: E402

from fastinv.conditioning import Conditioning  # noqa: E402
from fastinv.errors import FastinvError  # noqa: E402
from fastinv.methods import invert_deepinv, invert_euler  # noqa: E402
from fastinv.models.base import FlowModel  # noqa: E402
from fastinv.models.loading import load_model  # noqa: E402
from fastinv.runtime.spec import GraphSpec  # noqa: E402
from fastinv.runtime.tensorrt import engine as trt_runtime  # noqa: E402
from fastinv.runtime.tensorrt.cache import (  # noqa: E402
    EngineFacts,
    check_built_for,
    engine_key,
    engine_path,
    find_engine,
    read_facts,
    sidecar_path,
    write_engine,
)
from fastinv.runtime.tensorrt.engine import (  # noqa: E402
    TensorIO,
    TrtSolver,
    TrtVelocity,
    bind,
    engine_io,
    tensorrt_module,
    torch_dtype,
    trt_dtype,
)
from fastinv.runtime.tensorrt.profile import Profile, parse_range, plan_profile  # noqa: E402
from fastinv.solver import TorchSolver  # noqa: E402

VAE = 8  # the tiny SD3's VAE factor; patch 2 → sides in multiples of 16 px, at most 16·2·8 = 256 px


@pytest.fixture(scope="module")
def tiny(tiny_sd3_dir: Path) -> FlowModel:
    return load_model(tiny_sd3_dir)


def spec_onnx(path: Path, spec: GraphSpec) -> Path:
    """An Identity graph carrying `spec` in its metadata, as fastinv.export.onnx writes it."""
    value = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [value("x", onnx.TensorProto.FLOAT, [1])],
        [value("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph)
    onnx.helper.set_model_props(model, spec.metadata())
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def velocity_onnx(tiny: FlowModel, tmp_path: Path) -> Path:
    return spec_onnx(tmp_path / "velocity.fp32.onnx", velocity_graph(tiny).spec("fp32", tiny.name))


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """`import tensorrt` gives the fake; the two CUDA queries answer for an sm_90 GPU and stream 1234."""
    fake = FakeTensorRT("10.3.0")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_runtime, "device_facts", lambda device: ("sm_90", "Fake H100"))
    monkeypatch.setattr(trt_runtime, "cuda_stream", lambda device: 1234)
    return fake


def _profile() -> Profile:
    """batch 1..2, text 4..9, sides 64..256 px."""
    return Profile({"batch": (1, 1, 2), "text": (4, 9, 9), "height": (8, 16, 32), "width": (8, 16, 32)}, VAE)


def _cond(model: FlowModel, length: int = 9, guidance: float = 3.0) -> Conditioning:
    g = torch.Generator().manual_seed(3)
    config = model.velocity.network.config
    embeds, pooled = config.joint_attention_dim, config.pooled_projection_dim
    return Conditioning(
        prompt="p",
        prompt_embeds=torch.randn(1, length, embeds, generator=g),
        pooled_embeds=torch.randn(1, pooled, generator=g),
        guidance_scale=guidance,
        null_prompt_embeds=torch.randn(1, length, embeds, generator=g),
        null_pooled_embeds=torch.randn(1, pooled, generator=g),
    )


def test_parse_range() -> None:
    assert parse_range("1:2:4", "--batch") == (1, 2, 4)
    assert parse_range("512", "--size") == (512, 512, 512)
    for bad in ("4:2:1", "0:1:2", "a:b:c", "1:2", ""):
        with pytest.raises(FastinvError, match="MIN:OPT:MAX"):
            parse_range(bad, "--batch")


def test_plan_profile_from_cli_ranges(tiny: FlowModel) -> None:
    """Pixels → latents by the VAE factor, per input name from the spec's axes, checked against them."""
    spec = velocity_graph(tiny).spec("fp32")
    profile = plan_profile(spec, batch=(1, 2, 4), size=(64, 128, 256), text=(4, 9, 9), scale=VAE)
    assert profile.axes == {
        "batch": (1, 2, 4),
        "height": (8, 16, 32),
        "width": (8, 16, 32),
        "text": (4, 9, 9),
    }
    shapes = profile.input_shapes(spec)
    assert shapes["latents"] == ((1, 4, 8, 8), (2, 4, 16, 16), (4, 4, 32, 32))
    assert shapes["sigma"] == ((1,), (2,), (4,))
    assert shapes["prompt_embeds"] == ((1, 4, 48), (2, 9, 48), (4, 9, 48))
    assert shapes["pooled_embeds"] == ((1, 40), (2, 40), (4, 40))
    assert profile.describe() == "batch 1:2:4, height 64:128:256 px, width 64:128:256 px, text 4:9:9"

    bad = {
        (
            (64, 128, 512),
            (4, 9, 9),
        ): "--size 64:128:512: height 512 does not fit what v.onnx was exported for: "
        "16..256 in multiples of 16",
        ((72, 128, 256), (4, 9, 9)): "height 72 does not fit",
        ((60, 128, 256), (4, 9, 9)): "multiples of the VAE factor 8",
        (None, (4, 9, 9)): "v.onnx has a dynamic height: give --size MIN:OPT:MAX",
        ((64, 128, 256), None): "v.onnx has a dynamic text: give --text MIN:OPT:MAX",
    }
    for (size, text), message in bad.items():
        with pytest.raises(FastinvError, match=message.replace("(", r"\(").replace(".", r"\.")):
            plan_profile(spec, batch=(1, 1, 2), size=size, text=text, scale=VAE, source="v.onnx")


def test_plan_profile_for_a_fixed_size_graph(tiny: FlowModel) -> None:
    """A graph exported at a fixed latent size (the shipped model's 64×64) takes only its own size."""
    spec = velocity_graph(tiny, size=(8, 8)).spec("fp32")
    for size in (None, (64, 64, 64)):
        profile = plan_profile(spec, batch=(1, 1, 2), size=size, text=(9, 9, 9), scale=VAE)
        assert profile.axes == {"batch": (1, 1, 2), "text": (9, 9, 9)}
        assert profile.input_shapes(spec)["latents"] == ((1, 4, 8, 8), (1, 4, 8, 8), (2, 4, 8, 8))
    with pytest.raises(FastinvError, match="has a fixed size 64×64 px: --size must be 64 or omitted"):
        plan_profile(spec, batch=(1, 1, 2), size=(64, 128, 128), text=(9, 9, 9), scale=VAE)


def test_profile_check_sizes_and_json() -> None:
    profile = _profile()
    profile.check_sizes({"batch": 2, "height": 32, "width": 8, "text": 4})
    with pytest.raises(
        FastinvError, match=r"e\.engine: height 384 is outside the engine's profile 64\.\.256"
    ):
        profile.check_sizes({"height": 48}, "e.engine")
    with pytest.raises(FastinvError, match=r"batch 3 is outside the engine's profile 1\.\.2: .* --batch"):
        profile.check_sizes({"batch": 3})
    assert Profile.from_json(json.loads(json.dumps(profile.to_json()))) == profile


def test_engine_key_covers_every_fact(tmp_path: Path) -> None:
    base = ("a" * 64, "10.3.0", "sm_90", _profile(), "fp32")
    key = engine_key(*base)
    assert len(key) == 64 and engine_key(*base) == key
    variants = [
        ("b" * 64, *base[1:]),
        (base[0], "10.8.0", *base[2:]),
        (*base[:2], "sm_80", *base[3:]),
        (*base[:3], Profile({**_profile().axes, "batch": (1, 2, 4)}, VAE), base[4]),
        (*base[:4], "bf16"),
    ]
    assert len({engine_key(*variant) for variant in variants} | {key}) == 6
    assert engine_path(tmp_path, "velocity.fp32", key) == tmp_path / f"velocity.fp32.{key[:16]}.engine"


def _facts(**changes: object) -> EngineFacts:
    facts = {
        "onnx": "velocity.fp32.onnx",
        "onnx_sha256": "a" * 64,
        "onnx_size": 1,
        "onnx_mtime_ns": 1,
        "tensorrt": "10.3.0",
        "compute_capability": "sm_90",
        "device_name": "Fake H100",
        "precision": "fp32",
        "profile": _profile(),
        "spec": {},
    }
    return EngineFacts(**{**facts, **changes})


def test_engine_written_atomically_with_a_sidecar(tmp_path: Path) -> None:
    facts = _facts()
    path = engine_path(tmp_path, "velocity.fp32", facts.key)
    write_engine(path, b"plan", facts)
    assert path.read_bytes() == b"plan" and read_facts(path) == facts
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, sidecar_path(path).name]  # no temp files
    sidecar_path(path).write_text("{")
    with pytest.raises(FastinvError, match=r"has no readable sidecar .*: rebuild it with `fastinv export"):
        read_facts(path)
    with pytest.raises(FastinvError, match="no TensorRT engine at"):
        read_facts(tmp_path / "absent.engine")


def test_load_checks_name_what_mismatched(tmp_path: Path) -> None:
    facts, path = _facts(), tmp_path / "velocity.fp32.0123.engine"
    check_built_for(facts, path, tensorrt="10.3.0", compute_capability="sm_90")
    with pytest.raises(FastinvError, match=r"engine built for TensorRT 10\.3\.0, this is 10\.8\.0"):
        check_built_for(facts, path, tensorrt="10.8.0", compute_capability="sm_90")
    with pytest.raises(FastinvError, match=r"built for sm_90 \(Fake H100\), this GPU is sm_80"):
        check_built_for(facts, path, tensorrt="10.3.0", compute_capability="sm_80")


def test_dtype_table(fake_trt: FakeTensorRT) -> None:
    assert (
        torch_dtype(fake_trt.DataType.HALF) is torch.float16
        and torch_dtype("DataType.BF16") is torch.bfloat16
    )
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool):
        assert torch_dtype(trt_dtype(dtype, fake_trt)) is dtype
    with pytest.raises(FastinvError, match="has no torch dtype"):
        torch_dtype("INT4")
    with pytest.raises(FastinvError, match="has no TensorRT type"):
        trt_dtype(torch.complex64, fake_trt)


def test_bind_gives_the_tensors_own_pointers() -> None:
    io = [
        TensorIO("a", True, torch.float32),
        TensorIO("out", False, torch.float32),
        TensorIO("b", True, torch.float16),
    ]
    a, b = torch.randn(2, 3), torch.randn(4, 2, dtype=torch.float64).t()  # b: float64 and not contiguous
    binding = bind(io, {"a": a, "b": b}, {"out": (2, 5)}, torch.device("cpu"))
    assert binding.tensors["a"].data_ptr() == a.data_ptr()  # float32 and contiguous: bound in place
    assert binding.tensors["b"].dtype is torch.float16 and binding.tensors["b"].is_contiguous()
    assert torch.equal(binding.tensors["b"], b.half())
    out = binding.output("out")
    assert out.shape == (2, 5) and out.dtype is torch.float32
    assert binding.addresses == [
        ("a", a.data_ptr()),
        ("out", out.data_ptr()),
        ("b", binding.tensors["b"].data_ptr()),
    ]
    with pytest.raises(FastinvError, match="takes input 'b', which was not given"):
        bind(io, {"a": a}, {"out": (2, 5)}, torch.device("cpu"))
    with pytest.raises(FastinvError, match="left output 'out' unresolved"):
        bind(io, {"a": a, "b": b}, {"out": (-1, 5)}, torch.device("cpu"))


def test_tensorrt_missing_or_too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(FastinvError, match="needs NVIDIA TensorRT ≥ 10 and a CUDA GPU") as err:
        tensorrt_module()
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("8.6.1"))
    with pytest.raises(FastinvError, match=r"TensorRT 8\.6\.1 is too old"):
        tensorrt_module()


def test_build_config_calls_and_the_cache(fake_trt: FakeTensorRT, velocity_onnx: Path) -> None:
    """One build: strongly typed network, parsed from the file, workspace and level set, one profile with
    every dynamic input's shapes, timing cache created empty and saved; then the cache is reused."""
    profile = plan_profile(
        GraphSpec.from_metadata(
            {p.key: p.value for p in onnx.load(str(velocity_onnx)).metadata_props}, velocity_onnx
        ),
        batch=(1, 1, 2),
        size=(64, 128, 256),
        text=(4, 9, 9),
        scale=VAE,
    )
    built = build_engine(velocity_onnx, profile, workspace=1 << 30, optimization_level=2)
    assert built.built and built.path.name.startswith("velocity.fp32.") and built.path.suffix == ".engine"
    assert fake_trt.named("create_network") == [(1 << 0,)]
    assert fake_trt.named("parse_from_file") == [(str(velocity_onnx),)]
    assert fake_trt.named("set_memory_pool_limit") == [("WORKSPACE", 1 << 30)]
    assert fake_trt.named("builder_optimization_level") == [(2,)]
    assert fake_trt.named("create_timing_cache") == [(b"",)] and fake_trt.named("set_timing_cache") == [
        (False,)
    ]
    assert fake_trt.named("set_shape") == [
        ("latents", (1, 4, 8, 8), (1, 4, 16, 16), (2, 4, 32, 32)),
        ("sigma", (1,), (1,), (2,)),
        ("prompt_embeds", (1, 4, 48), (1, 9, 48), (2, 9, 48)),
        ("pooled_embeds", (1, 40), (1, 40), (2, 40)),
    ]
    assert len(fake_trt.named("add_optimization_profile")) == 1
    facts = read_facts(built.path)
    assert (facts.tensorrt, facts.compute_capability, facts.precision) == ("10.3.0", "sm_90", "fp32")
    assert facts.profile == profile and facts.key.startswith(built.path.name.split(".")[2])
    assert facts.builder == {"workspace": 1 << 30, "optimization_level": 2}
    timing = timing_cache_path(velocity_onnx.parent, "10.3.0", "sm_90")
    assert timing.read_bytes() == b"+timed"

    fake_trt.calls.clear()
    again = build_engine(velocity_onnx, profile)
    assert not again.built and again.path == built.path and fake_trt.calls == []  # cache hit: no build
    rebuilt = build_engine(velocity_onnx, profile, rebuild=True)
    assert rebuilt.built and fake_trt.named("create_timing_cache") == [(b"+timed",)]  # round trip
    assert fake_trt.named("set_memory_pool_limit") == []  # no limit asked for: TensorRT's default
    wider = build_engine(velocity_onnx, Profile({**profile.axes, "batch": (1, 2, 4)}, VAE))
    assert wider.built and wider.path != built.path
    assert not [p for p in velocity_onnx.parent.iterdir() if p.name.startswith(".")]


def test_build_errors_and_tensorrt_11_flags(
    fake_trt: FakeTensorRT, velocity_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_trt.parse_errors = ["Unsupported op Foo", "bad node"]
    with pytest.raises(FastinvError, match=r"TensorRT cannot parse .*: Unsupported op Foo; bad node"):
        build_engine(velocity_onnx, _profile())
    fake_trt.parse_errors, fake_trt.build_fails = [], True
    with pytest.raises(FastinvError, match="TensorRT could not build an engine"):
        build_engine(velocity_onnx, _profile())
    assert not list(velocity_onnx.parent.glob("*.engine*"))
    assert network_flags(FakeTensorRT("11.0.0", strongly_typed=False)) == 0  # always strongly typed in 11


def _kernel(model: FlowModel, cond: Conditioning):
    def velocity(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return model.velocity.predict(
                inputs["latents"], inputs["sigma"], inputs["prompt_embeds"], inputs["pooled_embeds"], cond
            )

    return velocity


def test_runtime_binding_and_same_method_code(
    fake_trt: FakeTensorRT, tiny: FlowModel, velocity_onnx: Path
) -> None:
    """TrtVelocity: shapes set per input, pointers equal to the bound tensors', torch's stream handle; the
    CFG call and Euler inversion match torch (the fake engine runs the torch network on the bound memory)."""
    build_engine(velocity_onnx, _profile())
    cond = _cond(tiny)
    fake_trt.kernel = _kernel(tiny, cond)
    velocity = TrtVelocity.load(velocity_onnx.parent, model=tiny, precision="fp32", device="cpu")
    assert velocity.backend == "trt" and velocity.graph.io[-1] == TensorIO("velocity", False, torch.float32)
    z, sigma = torch.randn(1, 4, 16, 8), torch.tensor([0.4])
    fake_trt.calls.clear()
    actual = velocity(z, sigma, cond)
    with torch.no_grad():
        expected = tiny.velocity(z, sigma, cond)
    assert torch.allclose(actual, expected, atol=1e-6)
    assert fake_trt.named("set_input_shape") == [
        ("latents", (2, 4, 16, 8)),  # CFG: one call of batch 2
        ("sigma", (2,)),
        ("prompt_embeds", (2, 9, 48)),
        ("pooled_embeds", (2, 40)),
    ]
    addresses = dict(fake_trt.named("set_tensor_address"))
    assert list(addresses) == ["latents", "sigma", "prompt_embeds", "pooled_embeds", "velocity"]
    assert fake_trt.named("execute_async_v3") == [(1234,)]
    inputs = {
        "latents": z,
        "sigma": sigma,
        "prompt_embeds": cond.prompt_embeds,
        "pooled_embeds": cond.pooled_embeds,
    }
    out = velocity.graph.run(inputs)
    addresses = dict(fake_trt.named("set_tensor_address")[-5:])
    assert addresses["velocity"] == out.data_ptr() and addresses["latents"] == z.data_ptr()  # bound in place

    x0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5))
    sigmas = tiny.sigmas(4, (16, 16))
    with torch.no_grad():
        expected_z = invert_euler(tiny.velocity, x0, sigmas, cond).z_T
    assert torch.allclose(invert_euler(velocity, x0, sigmas, cond).z_T, expected_z, atol=1e-5)
    narrow = Profile({**_profile().axes, "height": (8, 8, 8), "width": (8, 8, 8)}, VAE)
    engine = build_engine(velocity_onnx, narrow).path
    with pytest.raises(FastinvError, match=r"height 128 is outside the engine's profile 64\.\.64"):
        TrtVelocity.load(engine, model=tiny, device="cpu")(z, sigma, cond)


def test_cuda_graph_path_captures_once_per_shape(
    fake_trt: FakeTensorRT, tiny: FlowModel, velocity_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cuda_graph=True: a warm-up run, one capture per input shape, new inputs copied into the captured
    static buffers on replay, the output returned as a copy. (CUDA graphs stand in for fakes here: a
    "replay" re-runs the engine on the memory bound at capture.)"""
    build_engine(velocity_onnx, _profile())
    cond = _cond(tiny, guidance=1.0)
    fake_trt.kernel = _kernel(tiny, cond)
    velocity = TrtVelocity.load(
        velocity_onnx.parent, model=tiny, precision="fp32", device="cpu", cuda_graph=True
    )
    captures: list[dict[str, object]] = []

    class FakeCUDAGraph:
        def replay(self) -> None:
            velocity.graph.context.execute_async_v3(0)

    @contextlib.contextmanager
    def capture(graph: FakeCUDAGraph, **options: object) -> Iterator[None]:
        captures.append(options)
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeCUDAGraph)
    monkeypatch.setattr(torch.cuda, "graph", capture)
    g, sigma, outputs = torch.Generator().manual_seed(6), torch.tensor([0.3]), []
    for width in (8, 8, 16):
        z = torch.randn(1, 4, 16, width, generator=g)
        outputs.append(velocity(z, sigma, cond))
        with torch.no_grad():
            assert torch.allclose(outputs[-1], tiny.velocity(z, sigma, cond), atol=1e-6)
    assert captures == [{"capture_error_mode": "thread_local"}] * 2  # one per shape
    assert outputs[0].data_ptr() != outputs[1].data_ptr()  # copies, not the static output buffer
    assert len(fake_trt.named("execute_async_v3")) == 2 * 2 + 3  # warm-up + capture per shape, 3 replays


def test_runtime_load_errors_name_what_mismatched(
    fake_trt: FakeTensorRT, tiny: FlowModel, velocity_onnx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = build_engine(velocity_onnx, _profile()).path
    folder = velocity_onnx.parent
    with pytest.raises(
        FastinvError, match=r"no velocity.bf16 TensorRT engine in .*engines there: velocity.fp32"
    ):
        TrtVelocity.load(folder, precision="bf16", device="cpu")
    with pytest.raises(FastinvError, match="is a velocity graph, not a solver graph"):
        TrtSolver.load(engine, device="cpu")
    with pytest.raises(FastinvError, match="exported in fp32, not fp16"):
        TrtVelocity.load(engine, precision="fp16", device="cpu")
    with pytest.raises(FastinvError, match="exported for a sd3 model, not flux"):
        TrtVelocity.load(engine, model=dataclasses.replace(tiny, family="flux"), device="cpu")

    monkeypatch.setattr(fake_trt, "__version__", "10.8.0")
    for source in (engine, folder):
        with pytest.raises(FastinvError, match=r"engine built for TensorRT 10\.3\.0, this is 10\.8\.0"):
            TrtVelocity.load(source, precision="fp32", device="cpu")
    monkeypatch.setattr(fake_trt, "__version__", "10.3.0")
    monkeypatch.setattr(trt_runtime, "device_facts", lambda device: ("sm_80", "Fake A100"))
    with pytest.raises(FastinvError, match=r"built for sm_90 \(Fake H100\), this GPU is sm_80"):
        TrtVelocity.load(folder, precision="fp32", device="cpu")
    monkeypatch.setattr(trt_runtime, "device_facts", lambda device: ("sm_90", "Fake H100"))

    spec_onnx(velocity_onnx, velocity_graph(tiny, size=(8, 8)).spec("fp32"))  # exported again since
    with pytest.raises(FastinvError, match=r"is stale: velocity.fp32.onnx was exported again after it"):
        find_engine(folder, "velocity.fp32", tensorrt="10.3.0", compute_capability="sm_90")
    sidecar_path(engine).unlink()
    with pytest.raises(FastinvError, match="has no readable sidecar"):
        TrtVelocity.load(engine, device="cpu")


def test_trt_solver_and_deepinv(fake_trt: FakeTensorRT, tiny: FlowModel, tmp_path: Path) -> None:
    """The solver engine behind TorchSolver's contract; deepinv with both networks on (fake) engines."""
    solver = tiny_solver()
    path = spec_onnx(tmp_path / "solver.fp32.onnx", solver_graph(solver).spec("fp32"))
    profile = Profile({"batch": (1, 1, 2), "text": (5, 5, 5), "height": (8, 8, 8), "width": (8, 8, 8)}, VAE)
    build_engine(path, profile)

    def solve(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            names = ("v", "z", "x0", "text", "pooled", "sigma", "sigma_next")
            return solver(*(inputs[name] for name in names))

    fake_trt.kernel = solve
    trt_solver = TrtSolver.load(tmp_path, config=solver.config, precision="fp32", device="cpu")
    assert (
        trt_solver.config == trt_solver.graph.spec.config
        and trt_solver.config["text_dim"] == TINY["text_dim"]
    )
    g = torch.Generator().manual_seed(4)
    v, z, x0 = (torch.randn(2, TINY["in_channels"], 8, 8, generator=g) for _ in range(3))
    cond = Conditioning(
        "p", torch.randn(1, 5, TINY["text_dim"], generator=g), torch.randn(1, TINY["pooled_dim"])
    )
    sigma, sigma_next = torch.tensor([0.2, 0.5]), torch.tensor([0.3, 0.6])
    with torch.no_grad():
        expected = TorchSolver(solver)(v, z, x0, sigma, sigma_next, cond)
    assert torch.allclose(trt_solver(v, z, x0, sigma, sigma_next, cond), expected, atol=1e-6)

    x0 = x0[:1]
    sigmas, cond = tiny.sigmas(3, (8, 8)), _cond(tiny, length=5, guidance=1.0)
    with torch.no_grad():
        expected_z = invert_deepinv(tiny.velocity, x0, sigmas, cond, solver=TorchSolver(solver)).z_T
    assert torch.allclose(invert_deepinv(tiny.velocity, x0, sigmas, cond, solver=trt_solver).z_T, expected_z)


def test_engine_io_reads_names_modes_and_dtypes(
    fake_trt: FakeTensorRT, tiny: FlowModel, velocity_onnx: Path
) -> None:
    engine = fake_trt.Runtime(None).deserialize_cuda_engine(json.dumps({"onnx": str(velocity_onnx)}).encode())
    io = engine_io(engine, fake_trt)
    assert [(t.name, t.is_input) for t in io] == [
        ("latents", True),
        ("sigma", True),
        ("prompt_embeds", True),
        ("pooled_embeds", True),
        ("velocity", False),
    ]
    assert {t.dtype for t in io} == {torch.float32}
