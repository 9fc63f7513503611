"""TensorRT engines on a CPU: profiles, the engine cache and its load-time checks, the dtype table and
binding as plain functions, and the runtime code path on engines really built (TensorRT-RTX, ahead of time
for sm_89, from the tiny SD3's exported graphs) but run by a fake runtime (tests/fake_tensorrt.py: running
needs a GPU) whose engine really reads and writes the bound torch tensors. The real builds themselves are
checked in test_tensorrt_rtx.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

onnx = pytest.importorskip("onnx")

from fake_tensorrt import FakeTensorRT  # noqa: E402
from fastinv.export.graphs import velocity_graph  # noqa: E402
from fastinv.export.tensorrt import build_engine, network_flags  # noqa: E402
from test_solver import TINY, tiny_solver  # noqa: E402

from fastinv.conditioning import Conditioning  # noqa: E402
from fastinv.errors import FastinvError  # noqa: E402
from fastinv.methods import invert_deepinv, invert_euler  # noqa: E402
from fastinv.models.base import FlowModel  # noqa: E402
from fastinv.models.loading import load_model  # noqa: E402
from fastinv.runtime.spec import GraphSpec  # noqa: E402
from fastinv.runtime.tensorrt import engine as trt_runtime  # noqa: E402
from fastinv.runtime.tensorrt import library as trt_library  # noqa: E402
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


ARCH = "sm_89"
SOLVER_PROFILE = Profile(
    {"batch": (1, 1, 2), "text": (5, 5, 5), "height": (8, 8, 8), "width": (8, 8, 8)}, VAE
)


@pytest.fixture(scope="module")
def built(tiny_sd3_export: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with copies of the tiny SD3's velocity.fp32.onnx and solver.fp32.onnx and their engines,
    really built ahead of time for sm_89: velocity for `_profile()` and for a narrow 64 px one, solver for
    SOLVER_PROFILE. Copy it (`engines`) before changing anything."""
    pytest.importorskip("tensorrt_rtx")
    folder = tmp_path_factory.mktemp("built")
    for name in ("velocity.fp32.onnx", "solver.fp32.onnx"):
        shutil.copy2(tiny_sd3_export[0] / name, folder / name)
    velocity = folder / "velocity.fp32.onnx"
    for profile in (_profile(), _narrow()):
        build_engine(velocity, profile, gpu_arch=ARCH, optimization_level=0)
    build_engine(folder / "solver.fp32.onnx", SOLVER_PROFILE, gpu_arch=ARCH, optimization_level=0)
    return folder


@pytest.fixture
def engines(built: Path, tmp_path: Path) -> Path:
    """This test's copy of `built` (mtimes kept, so the engines stay fresh)."""
    return Path(shutil.copytree(built, tmp_path / "engines"))


def engine_for(folder: Path, stem: str, profile: Profile) -> Path:
    """The engine built for `profile` among `folder`'s `<stem>.*.engine`."""
    found = [e for e in folder.glob(f"{stem}.*.engine") if read_facts(e).profile == profile]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def fake_trt(engines: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTensorRT:
    """`import tensorrt_rtx` gives a fake runtime of the same version that runs `engines`' engines; the two
    CUDA queries answer for an sm_89 GPU and stream 1234."""
    fake = FakeTensorRT(trt_library.import_library(trt_library.TENSORRT_RTX).version)
    for engine in engines.glob("*.engine"):
        fake.register(engine)
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", fake)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # datacenter TensorRT: not installed
    monkeypatch.setattr(trt_library, "device_facts", lambda device: (ARCH, "Fake RTX 4090"))
    monkeypatch.setattr(trt_runtime, "cuda_stream", lambda device: 1234)
    return fake


def _profile() -> Profile:
    """batch 1..2, text 4..9, sides 64..256 px."""
    return Profile({"batch": (1, 1, 2), "text": (4, 9, 9), "height": (8, 16, 32), "width": (8, 16, 32)}, VAE)


def _narrow() -> Profile:
    """_profile() at 64 px only."""
    return Profile({**_profile().axes, "height": (8, 8, 8), "width": (8, 8, 8)}, VAE)


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
    base = ("a" * 64, "tensorrt", "10.3.0", "sm_90", _profile(), "fp32")
    key = engine_key(*base)
    assert len(key) == 64 and engine_key(*base) == key
    variants = [
        ("b" * 64, *base[1:]),
        (base[0], "tensorrt_rtx", *base[2:]),
        (*base[:2], "10.8.0", *base[3:]),
        (*base[:3], "sm_80", *base[4:]),
        (*base[:4], Profile({**_profile().axes, "batch": (1, 2, 4)}, VAE), base[5]),
        (*base[:5], "bf16"),
    ]
    assert len({engine_key(*variant) for variant in variants} | {key}) == 7
    assert engine_path(tmp_path, "velocity.fp32", key) == tmp_path / f"velocity.fp32.{key[:16]}.engine"


def _facts(**changes: object) -> EngineFacts:
    facts = {
        "onnx": "velocity.fp32.onnx",
        "onnx_sha256": "a" * 64,
        "onnx_size": 1,
        "onnx_mtime_ns": 1,
        "library": "tensorrt",
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
    here = {"tensorrt": "10.3.0", "tensorrt_rtx": "1.7.1.116"}
    check_built_for(facts, path, versions=here, compute_capability="sm_90")
    with pytest.raises(FastinvError, match=r"engine built by TensorRT 10\.3\.0, this has TensorRT 10\.8\.0"):
        check_built_for(facts, path, versions={"tensorrt": "10.8.0"}, compute_capability="sm_90")
    with pytest.raises(FastinvError, match=r"engine built by TensorRT 10\.3\.0, which is not here"):
        check_built_for(facts, path, versions={"tensorrt_rtx": "10.3.0"}, compute_capability="sm_90")
    with pytest.raises(
        FastinvError, match=r"built for sm_90 \(Fake H100\), this GPU is sm_80: .* or with --gpu"
    ):
        check_built_for(facts, path, versions=here, compute_capability="sm_80")


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


def test_tensorrt_libraries_missing_or_too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    """Which library builds and runs what, and one line when it is missing or too old."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
    with pytest.raises(FastinvError, match=r"needs TensorRT \(pip install tensorrt\)") as err:
        trt_library.import_library("tensorrt")
    assert "\n" not in str(err.value)
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("8.6.1"))
    with pytest.raises(FastinvError, match=r"TensorRT 8\.6\.1 is too old"):
        trt_library.import_library("tensorrt")
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTensorRT("10.3.0"))
    rtx = FakeTensorRT("1.7.1.116")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", rtx)
    assert trt_library.installed_versions() == {"tensorrt": "10.3.0", "tensorrt_rtx": "1.7.1.116"}
    assert trt_library.for_device("sm_89").name == "tensorrt_rtx"  # workstation GPUs: TensorRT-RTX
    assert trt_library.for_device("sm_90").name == "tensorrt"  # H100/H200: TensorRT
    assert trt_library.for_arch("sm_120").module is rtx
    with pytest.raises(FastinvError, match=r"--gpu-arch sm_90: TensorRT-RTX builds ahead of time for sm_75"):
        trt_library.for_arch("sm_90")
    assert [trt_library.parse_arch(a) for a in ("sm89", "sm_89", "89", "8.9", "SM120")] == [
        *["sm_89"] * 4,
        "sm_120",
    ]
    with pytest.raises(FastinvError, match="--gpu-arch 'ada': give a compute capability"):
        trt_library.parse_arch("ada")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    assert trt_library.for_device("sm_89").name == "tensorrt"  # TensorRT where TensorRT-RTX is absent
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(FastinvError, match="neither is usable here"):
        trt_library.check_any()


def test_tensorrt_11_drops_the_strongly_typed_flag() -> None:
    members = {"STRONGLY_TYPED": FakeTensorRT("0").DataType.HALF}  # any member with int() 1
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(**members))) == 1 << 1
    assert network_flags(SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace())) == 0


def _kernel(model: FlowModel, cond: Conditioning):
    def velocity(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            return model.velocity.predict(
                inputs["latents"], inputs["sigma"], inputs["prompt_embeds"], inputs["pooled_embeds"], cond
            )

    return velocity


def test_runtime_binding_and_same_method_code(fake_trt: FakeTensorRT, tiny: FlowModel, engines: Path) -> None:
    """TrtVelocity: shapes set per input, pointers equal to the bound tensors', torch's stream handle; the
    CFG call and Euler inversion match torch (the fake engine runs the torch network on the bound memory)."""
    cond = _cond(tiny)
    fake_trt.kernel = _kernel(tiny, cond)
    velocity = TrtVelocity.load(engine_for(engines, "velocity.fp32", _profile()), model=tiny, device="cpu")
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
    engine = engine_for(engines, "velocity.fp32", _narrow())
    with pytest.raises(FastinvError, match=r"height 128 is outside the engine's profile 64\.\.64"):
        TrtVelocity.load(engine, model=tiny, device="cpu")(z, sigma, cond)


def test_cuda_graph_path_captures_once_per_shape(
    fake_trt: FakeTensorRT, tiny: FlowModel, engines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cuda_graph=True: a warm-up run, one capture per input shape, new inputs copied into the captured
    static buffers on replay, the output returned as a copy. (CUDA graphs stand in for fakes here: a
    "replay" re-runs the engine on the memory bound at capture.)"""
    cond = _cond(tiny, guidance=1.0)
    fake_trt.kernel = _kernel(tiny, cond)
    engine = engine_for(engines, "velocity.fp32", _profile())
    velocity = TrtVelocity.load(engine, model=tiny, device="cpu", cuda_graph=True)
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
    fake_trt: FakeTensorRT, tiny: FlowModel, engines: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Engines really built for sm_89 by this TensorRT-RTX, refused with one line on another GPU, by
    another version or without the library, when stale, and when asked for the wrong graph."""
    engine, folder = engine_for(engines, "velocity.fp32", _profile()), engines
    version = fake_trt.__version__
    with pytest.raises(
        FastinvError, match=r"no velocity.bf16 TensorRT engine in .*engines there: .*velocity.fp32"
    ):
        TrtVelocity.load(folder, precision="bf16", device="cpu")
    with pytest.raises(FastinvError, match="is a velocity graph, not a solver graph"):
        TrtSolver.load(engine, device="cpu")
    with pytest.raises(FastinvError, match="exported in fp32, not fp16"):
        TrtVelocity.load(engine, precision="fp16", device="cpu")
    with pytest.raises(FastinvError, match="exported for a sd3 model, not flux"):
        TrtVelocity.load(engine, model=dataclasses.replace(tiny, family="flux"), device="cpu")

    monkeypatch.setattr(fake_trt, "__version__", "9.9.0")
    for source in (engine, folder):
        with pytest.raises(
            FastinvError, match=rf"built by TensorRT-RTX {version}, this has TensorRT-RTX 9\.9\.0: rebuild"
        ):
            TrtVelocity.load(source, precision="fp32", device="cpu")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)
    with pytest.raises(FastinvError, match=rf"built by TensorRT-RTX {version}, which is not here"):
        TrtVelocity.load(engine, device="cpu")
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", fake_trt)
    monkeypatch.setattr(fake_trt, "__version__", version)
    for arch, hint in (("sm_86", " or with --gpu-arch sm_86"), ("sm_90", "")):
        monkeypatch.setattr(trt_library, "device_facts", lambda device, arch=arch: (arch, "Fake GPU"))
        message = (
            rf"built for sm_89 \(any sm_89 GPU \(built ahead of time\)\), this GPU is {arch}: .*GPU{hint}$"
        )
        with pytest.raises(FastinvError, match=message):
            TrtVelocity.load(folder, precision="fp32", device="cpu")
    monkeypatch.setattr(trt_library, "device_facts", lambda device: (ARCH, "Fake RTX 4090"))

    spec_onnx(folder / "velocity.fp32.onnx", velocity_graph(tiny, size=(8, 8)).spec("fp32"))  # exported again
    versions = {"tensorrt_rtx": version}
    with pytest.raises(FastinvError, match=r"is stale: velocity.fp32.onnx was exported again after it"):
        find_engine(folder, "velocity.fp32", versions=versions, compute_capability=ARCH)
    sidecar_path(engine).unlink()
    with pytest.raises(FastinvError, match="has no readable sidecar"):
        TrtVelocity.load(engine, device="cpu")


def test_trt_solver_and_deepinv(fake_trt: FakeTensorRT, tiny: FlowModel, engines: Path) -> None:
    """The solver engine behind TorchSolver's contract; deepinv with both networks on engines (run fake)."""
    solver = tiny_solver()

    def solve(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            names = ("v", "z", "x0", "text", "pooled", "sigma", "sigma_next")
            return solver(*(inputs[name] for name in names))

    fake_trt.kernel = solve
    trt_solver = TrtSolver.load(engines, config=solver.config, precision="fp32", device="cpu")
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
    velocity_kernel = _kernel(tiny, cond)
    fake_trt.kernel = lambda inputs: solve(inputs) if "sigma_next" in inputs else velocity_kernel(inputs)
    engine = engine_for(engines, "velocity.fp32", _profile())
    trt_velocity = TrtVelocity.load(engine, model=tiny, device="cpu")
    with torch.no_grad():
        expected_z = invert_deepinv(tiny.velocity, x0, sigmas, cond, solver=TorchSolver(solver)).z_T
    fake_trt.calls.clear()
    actual_z = invert_deepinv(trt_velocity, x0, sigmas, cond, solver=trt_solver).z_T
    assert torch.allclose(actual_z, expected_z, atol=1e-5)
    # every step ran both engines: one velocity call and one solver call per step
    assert len(fake_trt.named("execute_async_v3")) == 2 * (len(sigmas) - 1)


def test_engine_io_reads_names_modes_and_dtypes(fake_trt: FakeTensorRT, engines: Path) -> None:
    engine_file = engine_for(engines, "velocity.fp32", _profile())
    engine = fake_trt.Runtime(None).deserialize_cuda_engine(engine_file.read_bytes())
    io = engine_io(engine, fake_trt)
    assert [(t.name, t.is_input) for t in io] == [
        ("latents", True),
        ("sigma", True),
        ("prompt_embeds", True),
        ("pooled_embeds", True),
        ("velocity", False),
    ]
    assert {t.dtype for t in io} == {torch.float32}
