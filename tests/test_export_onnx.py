"""ONNX export and the ONNX Runtime backend: parity with torch (CPU EP), dynamic axes, the same method code
on both backends, and one-line errors for missing or mismatched graphs.

Each tiny model is exported once per module (tracing dominates the cost, not the model size); the tiny SD3's
and the shipped model's graphs are the session's `fastinv export` (conftest), shared with other modules.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fastinv.export.onnx import TOLERANCE, check_parity, export_solver, export_velocity  # noqa: E402
from test_solver import TINY, tiny_solver, tiny_warm_solver  # noqa: E402

import fastinv  # noqa: E402
from fastinv.api import Inverter  # noqa: E402
from fastinv.conditioning import Conditioning  # noqa: E402
from fastinv.errors import FastinvError  # noqa: E402
from fastinv.methods import invert_deepinv  # noqa: E402
from fastinv.models.base import FlowModel  # noqa: E402
from fastinv.models.loading import EXAMPLE_IMAGE, load_model  # noqa: E402
from fastinv.runtime.ort import OrtSolver, OrtVelocity, choose_providers  # noqa: E402
from fastinv.runtime.spec import Axis, read_spec  # noqa: E402
from fastinv.solver import TorchSolver  # noqa: E402


@pytest.fixture(scope="module", params=["sd3", "flux", "flux_dev"])
def tiny_graph(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[FlowModel, Path]:
    """(tiny model, its fp32 velocity graph) for the tiny SD3, FLUX-schnell-like and FLUX-dev-like folders.

    The SD3 and FLUX graphs are the session's `fastinv export`s of those folders (export_velocity with the
    defaults, as here); read-only."""
    model = load_model(request.getfixturevalue(f"tiny_{request.param}_dir"))
    if request.param in ("sd3", "flux"):
        folder, _ = request.getfixturevalue(f"tiny_{request.param}_export")
        names = ["solver.fp32.onnx", "velocity.fp32.onnx"][request.param == "flux" :]
        path = folder / "velocity.fp32.onnx"
    else:
        folder = tmp_path_factory.mktemp(f"onnx_{request.param}")
        names = ["velocity.onnx"]
        path = export_velocity(model, folder / "velocity.onnx")
    assert sorted(f.name for f in folder.iterdir()) == names  # no staging leftovers
    return model, path


@pytest.fixture(scope="module")
def shipped_graph(shipped_export: tuple[Path, str]) -> tuple[Inverter, Path]:
    """The shipped model in fp32 and its velocity graph (the session's `fastinv export`; read-only)."""
    inverter = fastinv.load(device="cpu", dtype="fp32")
    return inverter, shipped_export[0] / "velocity.fp32.onnx"


@pytest.fixture(scope="module")
def solver_graph(tiny_sd3_export: tuple[Path, str]) -> tuple[torch.nn.Module, Path]:
    """The tiny trained-looking solver and its graph (the session's `fastinv export`; read-only)."""
    return tiny_solver(), tiny_sd3_export[0] / "solver.fp32.onnx"


@pytest.fixture(scope="module")
def warm_solver_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """A tiny trained-looking warm-start solver, exported."""
    solver = tiny_warm_solver()
    return solver, export_solver(solver, tmp_path_factory.mktemp("onnx_warm_solver") / "solver.onnx")


def _cfg_conditioning(model: FlowModel, length: int, embedded_guidance: float | None) -> Conditioning:
    g = torch.Generator().manual_seed(3)
    embeds = model.velocity.network.config.joint_attention_dim
    pooled = model.velocity.network.config.pooled_projection_dim
    return Conditioning(
        prompt="p",
        prompt_embeds=torch.randn(1, length, embeds, generator=g),
        pooled_embeds=torch.randn(1, pooled, generator=g),
        guidance_scale=3.0,
        null_prompt_embeds=torch.randn(1, length, embeds, generator=g),
        null_pooled_embeds=torch.randn(1, pooled, generator=g),
        embedded_guidance=embedded_guidance,
    )


def test_tiny_velocity_parity_fp32_over_dynamic_axes(tiny_graph: tuple[FlowModel, Path]) -> None:
    """Exported with batch 2 at 6×10: batch 1 and 3, other sizes and text lengths run within 1e-4."""
    model, path = tiny_graph
    reports = [
        check_parity(path, model),
        check_parity(path, model, batch=3, height=16, width=6, text=11, seed=1),
        check_parity(path, model, batch=1, height=2, width=32, text=1, seed=2),
    ]
    for report in reports:
        print(report)
        assert report.error <= TOLERANCE["fp32"]
    spec = read_spec(path)
    assert spec.inputs["latents"][0] == Axis("batch") and spec.precision == "fp32"
    assert isinstance(spec.inputs["latents"][2], Axis) and isinstance(spec.inputs["latents"][3], Axis)
    assert ("guidance" in spec.inputs) == bool(model.velocity.network.config.get("guidance_embeds", False))
    assert onnx.load(str(path)).opset_import[0].version >= 18


def test_ort_velocity_runs_the_adapters_cfg_call(tiny_graph: tuple[FlowModel, Path]) -> None:
    """OrtVelocity shares the adapters' CFG call (cfg_branches): one batch of 2B; embedded guidance in."""
    model, path = tiny_graph
    ort_velocity = OrtVelocity.load(path, model=model, precision="fp32")
    cond = _cfg_conditioning(model, 9, embedded_guidance=2.0)
    z, sigma = torch.randn(2, model.codec.channels, 8, 12), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        expected = model.velocity(z, sigma, cond)
    actual = ort_velocity(z, sigma, cond)
    assert (actual - expected).abs().max() / expected.abs().max() <= TOLERANCE["fp32"]


def test_shipped_model_parity_and_fixed_resolution(shipped_graph: tuple[Inverter, Path]) -> None:
    inverter, path = shipped_graph
    for report in (check_parity(path, inverter.model), check_parity(path, inverter.model, batch=3, seed=1)):
        print(report)
        assert report.error <= TOLERANCE["fp32"]
    assert read_spec(path).inputs["latents"][1:] == [3, 64, 64]  # the model's fixed 64×64 resolution
    with pytest.raises(FastinvError, match="fixed height"):
        check_parity(path, inverter.model, height=32)


def test_euler_inversion_on_ort_matches_torch_on_a_photo(shipped_graph: tuple[Inverter, Path]) -> None:
    """The same method code (Inverter.invert → invert_euler, then Euler sampling) on both backends."""
    inverter, path = shipped_graph
    ort_model = dataclasses.replace(inverter.model, velocity=OrtVelocity.load(path, model=inverter.model))
    ort_inverter = Inverter(ort_model)
    runs = []
    for runner in (inverter, ort_inverter):
        inversion = runner.invert(EXAMPLE_IMAGE, prompt="a cup of coffee", steps=8, guidance=2.0)
        runs.append((inversion, runner.reconstruct(inversion)))
    (torch_inv, torch_rec), (ort_inv, ort_rec) = runs
    z_error = (ort_inv.result.z_T - torch_inv.result.z_T).abs().max() / torch_inv.result.z_T.abs().max()
    pixel_error = (ort_rec.pixels - torch_rec.pixels).abs().max() / torch_rec.pixels.abs().max()
    print(f"euler 8 steps, CFG 2: z_T max rel err {z_error:.2e}, reconstruction {pixel_error:.2e}")
    assert ort_inv.result.nfe == torch_inv.result.nfe == 8
    assert z_error <= TOLERANCE["fp32"] and pixel_error <= TOLERANCE["fp32"]


def test_solver_parity_and_ort_solver(solver_graph: tuple[torch.nn.Module, Path]) -> None:
    solver, path = solver_graph
    reports = [
        check_parity(path, solver),
        check_parity(path, solver, batch=3, height=8, width=8, text=11, seed=1),  # the sample size itself
        check_parity(path, solver, batch=1, height=16, width=2, seed=2),
    ]
    for report in reports:
        print(report)
        assert report.error <= TOLERANCE["fp32"]
    ort_solver = OrtSolver.load(path, config=solver.config, precision="fp32")
    g = torch.Generator().manual_seed(4)
    v, z, x0 = (torch.randn(2, TINY["in_channels"], 6, 4, generator=g) for _ in range(3))
    cond = Conditioning(
        "p", torch.randn(1, 5, TINY["text_dim"], generator=g), torch.randn(1, TINY["pooled_dim"], generator=g)
    )
    sigma, sigma_next = torch.tensor([0.2, 0.5]), torch.tensor([0.3, 0.6])
    with torch.no_grad():
        expected = TorchSolver(solver)(v, z, x0, sigma, sigma_next, cond)
    actual = ort_solver(v, z, x0, sigma, sigma_next, cond)
    assert (actual - expected).abs().max() / expected.abs().max() <= TOLERANCE["fp32"]


@pytest.mark.parametrize("tiny_graph", ["sd3"], indirect=True)  # the tiny solver has the tiny SD3's widths
def test_deepinv_on_ort_matches_torch(
    tiny_graph: tuple[FlowModel, Path], solver_graph: tuple[torch.nn.Module, Path]
) -> None:
    """The deepinv method, unchanged, with both the denoiser and the solver on ORT (CFG: batch 2 then 1)."""
    model, path = tiny_graph
    solver, solver_path = solver_graph
    x0 = torch.randn(1, model.codec.channels, 8, 8, generator=torch.Generator().manual_seed(5))
    sigmas, cond = model.sigmas(6, (8, 8)), _cfg_conditioning(model, 5, None)
    expected = invert_deepinv(model.velocity, x0, sigmas, cond, solver=TorchSolver(solver)).z_T
    ort_velocity = OrtVelocity.load(path, model=model)
    actual = invert_deepinv(ort_velocity, x0, sigmas, cond, solver=OrtSolver.load(solver_path)).z_T
    assert (actual - expected).abs().max() / expected.abs().max() <= TOLERANCE["fp32"]


@pytest.mark.parametrize("tiny_graph", ["sd3"], indirect=True)  # the tiny solver has SD3's channels
def test_warm_solver_parity_and_deepinv_on_ort(
    tiny_graph: tuple[FlowModel, Path], warm_solver_graph: tuple[torch.nn.Module, Path]
) -> None:
    """The warm-start solver's graph takes f_prev instead of text; deepinv runs it unchanged on ORT."""
    solver, path = warm_solver_graph
    for report in (
        check_parity(path, solver),
        check_parity(path, solver, batch=3, height=8, width=8, seed=1),
        check_parity(path, solver, batch=1, height=16, width=2, seed=2),
    ):
        assert report.error <= TOLERANCE["fp32"], report
    ort_solver = OrtSolver.load(path, config=solver.config, precision="fp32")
    assert ort_solver.warm_start and "f_prev" in ort_solver.graph.spec.inputs
    assert "text" not in ort_solver.graph.spec.inputs
    with pytest.raises(FastinvError, match="exported for a deepinv-warm model, not deepinv"):
        OrtSolver.load(path, config=tiny_solver().config)
    model, velocity_path = tiny_graph
    x0 = torch.randn(1, model.codec.channels, 8, 8, generator=torch.Generator().manual_seed(6))
    sigmas, cond = model.sigmas(5, (8, 8)), _cfg_conditioning(model, 5, None)
    expected = invert_deepinv(model.velocity, x0, sigmas, cond, solver=TorchSolver(solver)).z_T
    ort_velocity = OrtVelocity.load(velocity_path, model=model)
    actual = invert_deepinv(ort_velocity, x0, sigmas, cond, solver=ort_solver).z_T
    assert (actual - expected).abs().max() / expected.abs().max() <= TOLERANCE["fp32"]


def test_half_precision_variants(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    """fp16 runs on the CPU EP within 2e-2 of fp32 torch, its weights written as external data (what models
    above protobuf's 2 GiB get) next to the graph and nothing else left there. bf16 (opset 22, no Einsum
    left) is a valid graph; where the EP has no bf16 kernels (ORT's CPU EP today) loading it is a one-line
    error, not a crash. Both at a fixed latent size, which also exports faster."""
    model = load_model(tiny_sd3_dir)
    fp16 = export_velocity(model, tmp_path / "fp16.onnx", precision="fp16", size=(6, 10), external_data=True)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["fp16.onnx", "fp16.onnx.data"]
    report = check_parity(fp16, model, batch=3)
    print(report)
    assert report.error <= TOLERANCE["fp16"] and read_spec(fp16).inputs["latents"][2:] == [6, 10]

    bf16 = export_velocity(model, tmp_path / "bf16.onnx", precision="bf16", size=(6, 10))
    graph = onnx.load(str(bf16))
    assert graph.opset_import[0].version >= 22 and read_spec(bf16).precision == "bf16"
    assert "Einsum" not in {node.op_type for node in graph.graph.node}
    try:
        OrtVelocity.load(bf16, model=model, precision="bf16")
    except FastinvError as err:
        assert "ONNX Runtime cannot run" in str(err) and "\n" not in str(err)
    else:
        assert check_parity(bf16, model).error <= TOLERANCE["bf16"]


def test_clear_errors_for_missing_and_mismatched_graphs(
    tiny_graph: tuple[FlowModel, Path], solver_graph: tuple[torch.nn.Module, Path], tmp_path: Path
) -> None:
    model, path = tiny_graph
    with pytest.raises(FastinvError, match="no ONNX graph at"):
        OrtVelocity.load(tmp_path / "absent.onnx")
    plain = tmp_path / "plain.onnx"
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    value = onnx.helper.make_tensor_value_info
    io = (value("x", onnx.TensorProto.FLOAT, [1]), value("y", onnx.TensorProto.FLOAT, [1]))
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [io[0]], [io[1]])), str(plain))
    with pytest.raises(FastinvError, match="no fastinv metadata"):
        OrtVelocity.load(plain)
    with pytest.raises(FastinvError, match="not a solver graph"):
        OrtSolver.load(path)
    with pytest.raises(FastinvError, match="exported in fp32, not bf16"):
        OrtVelocity.load(path, precision="bf16")
    other_family = "flux" if model.family == "sd3" else "sd3"
    with pytest.raises(FastinvError, match=f"exported for a {model.family} model, not {other_family}"):
        OrtVelocity.load(path, model=dataclasses.replace(model, family=other_family))
    config = {**model.velocity.network.config, "num_layers": 9}
    with pytest.raises(FastinvError, match="exported for another model: config differs in num_layers"):
        read_spec(path).expect_model(path, model.family, config)
    with pytest.raises(FastinvError, match="is a solver graph, not a velocity graph"):
        OrtVelocity.load(solver_graph[1])

    ort_velocity = OrtVelocity.load(path, model=model)
    cond = _cfg_conditioning(model, 4, None)
    channels = model.codec.channels
    bad_inputs = {
        "size 5 where the export has": torch.randn(1, channels + 1, 8, 8),
        "height 7 is not in height": torch.randn(1, channels, 7, 8),
        "rank 3, not 4": torch.randn(1, channels, 8),
    }
    for message, z in bad_inputs.items():
        with pytest.raises(FastinvError, match=message):
            ort_velocity(z, torch.full((z.shape[0],), 0.5), cond)
    with pytest.raises(FastinvError, match="not differentiable"):
        ort_velocity(torch.randn(1, channels, 8, 8, requires_grad=True), torch.tensor([0.5]), cond)


@pytest.mark.parametrize("tiny_graph", ["sd3"], indirect=True)  # FLUX's rotary embedding has no maximum
def test_sd3_graph_stops_at_the_positional_embedding(tiny_graph: tuple[FlowModel, Path]) -> None:
    """SD3's cropped positional embedding bounds height and width; the spec says so before ORT runs."""
    model, path = tiny_graph
    side = model.velocity.max_side
    with pytest.raises(FastinvError, match=f"height {side + 2} is not in height"):
        check_parity(path, model, height=side + 2)


def test_choose_providers_by_availability() -> None:
    cpu_only = ["CPUExecutionProvider"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers(torch.device("cpu"), gpu) == cpu_only
    assert choose_providers(torch.device("cuda:1"), gpu) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]
    assert choose_providers(torch.device("cuda"), gpu, tensorrt=True)[0] == (
        "TensorrtExecutionProvider",
        {"device_id": 0},
    )
    with pytest.raises(FastinvError, match="onnxruntime-gpu"):
        choose_providers(torch.device("cuda"), cpu_only)
