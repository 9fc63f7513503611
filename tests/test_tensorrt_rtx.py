"""Real TensorRT engine builds on a CPU: TensorRT-RTX parses fastinv's ONNX graphs (shipped model and its
solver, tiny SD3 and tiny FLUX) and builds engines ahead of time for workstation GPUs; the engines' sidecars
hold what TensorRT itself read back (the parsed network's IO and the profile's shapes), compared here with
what the ONNX graphs declare. Running an engine needs a GPU: that path is tested in test_export_trt.py
with a fake runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("tensorrt_rtx")

from cli_runner import cli  # noqa: E402
from fastinv.export.tensorrt import build_engine, build_engines, build_serialized  # noqa: E402

from fastinv.api import load  # noqa: E402
from fastinv.errors import FastinvError  # noqa: E402
from fastinv.runtime.spec import read_spec  # noqa: E402
from fastinv.runtime.tensorrt import library  # noqa: E402
from fastinv.runtime.tensorrt.cache import EngineFacts, find_engine, read_facts, sidecar_path  # noqa: E402
from fastinv.runtime.tensorrt.profile import Profile  # noqa: E402

RTX = library.import_library(library.TENSORRT_RTX)
ONNX_TYPES = {1: "FLOAT", 10: "HALF", 16: "BF16", 6: "INT32", 7: "INT64", 9: "BOOL"}


def declared_io(path: Path) -> dict[str, dict[str, object]]:
    """What the ONNX graph at `path` declares: name → {"input", "dtype", "shape" (−1: dynamic)}."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    io = {}
    for is_input, values in ((True, graph.input), (False, graph.output)):
        for value in values:
            if value.name in weights:
                continue
            tensor = value.type.tensor_type
            shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
            io[value.name] = {"input": is_input, "dtype": ONNX_TYPES[tensor.elem_type], "shape": shape}
    return io


def check_engine(facts: EngineFacts, engine: Path, onnx_path: Path, arch: str) -> None:
    """The engine was built by TensorRT-RTX for `arch` from `onnx_path`, and what TensorRT read (IO, the
    profile's shapes) is what the graph declares and the profile planned."""
    assert engine.stat().st_size > 10_000 and sidecar_path(engine).is_file()
    assert (facts.library, facts.tensorrt, facts.compute_capability) == ("tensorrt_rtx", RTX.version, arch)
    assert read_facts(engine) == facts
    built = {name: {k: v for k, v in io.items() if k != "profile"} for name, io in facts.io.items()}
    assert built == declared_io(onnx_path)
    planned = facts.profile.input_shapes(read_spec(onnx_path))
    assert {name: tuple(map(tuple, io["profile"])) for name, io in facts.io.items() if "profile" in io} == {
        name: tuple(map(tuple, shapes)) for name, shapes in planned.items()
    }


def test_shipped_model_and_solver_engines(shipped_export: tuple[Path, str], tmp_path: Path) -> None:
    """`build_engines` as `fastinv export --format trt` calls it, for the shipped model's graphs, ahead of
    time for sm_89; a second call reuses both engines, another architecture gets its own."""
    folder = shipped_export[0]
    flow = load(device="cpu", fast=False).model
    graphs = {folder / "velocity.fp32.onnx": flow, folder / "solver.fp32.onnx": flow}
    options = {"batch": (1, 1, 2), "size": (64, 64, 64), "out": tmp_path, "optimization_level": 0}
    builds = list(build_engines(graphs, flow, gpu_arch="sm89", **options))
    assert [b.engine.built for b in builds] == [True, True]
    for build, path in zip(builds, graphs, strict=True):
        check_engine(build.engine.facts, build.engine.path, path, "sm_89")
        assert build.engine.path.name.startswith(path.name.removesuffix("onnx"))
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".cache"]  # TensorRT-RTX: no timing cache
    assert [b.engine.built for b in build_engines(graphs, flow, gpu_arch="sm_89", **options)] == [False] * 2
    other = build_engine(folder / "solver.fp32.onnx", builds[1].profile, out=tmp_path, gpu_arch="sm_120")
    assert other.built and other.path != builds[1].engine.path

    versions = library.installed_versions()
    for arch, engine in (("sm_89", builds[1].engine.path), ("sm_120", other.path)):
        assert find_engine(tmp_path, "solver.fp32", versions=versions, compute_capability=arch) == engine
    with pytest.raises(FastinvError, match=r"built for sm_\d+ \(any sm_\d+ GPU .*this GPU is sm_86"):
        find_engine(tmp_path, "solver.fp32", versions=versions, compute_capability="sm_86")


def test_cli_builds_tiny_sd3_and_flux_engines_without_a_gpu(
    tiny_sd3_export: tuple[Path, str], tiny_flux_dir: Path, memoised_export: list[Path], tmp_path: Path
) -> None:
    """`fastinv export --format trt --gpu-arch`: the tiny FLUX from its folder (ONNX export, which
    memoised_export copies from the session's, then engines) and the tiny SD3's exported graphs; `fastinv
    info --export-dir` lists what was built, for what."""
    out = tmp_path / "flux"
    args = ["export", "--format", "trt", "--gpu-arch", "sm_120", "--model", str(tiny_flux_dir)]
    code, stdout, stderr = cli(
        [*args, "--size", "32:32:64", "--opt-level", "0", "--out", str(out), "--check"]
    )
    assert code == 0, stderr
    assert memoised_export == [out] and sorted(p.name for p in out.glob("*.onnx")) == ["velocity.fp32.onnx"]
    assert f"(TensorRT-RTX {RTX.version}, sm_120) for batch 1:1:2" in stdout
    assert "cannot run here: not checked" in stdout
    [engine] = out.glob("velocity.fp32.*.engine")
    check_engine(read_facts(engine), engine, out / "velocity.fp32.onnx", "sm_120")

    sd3 = tmp_path / "sd3"
    sd3.mkdir()
    for name in ("velocity.fp32.onnx", "solver.fp32.onnx"):
        shutil.copy2(tiny_sd3_export[0] / name, sd3 / name)
        profile = Profile({"batch": (1, 1, 2), "text": (5, 5, 9), "height": (2, 4, 8), "width": (2, 4, 8)}, 8)
        built = build_engine(sd3 / name, profile, gpu_arch="sm_86", optimization_level=0)
        check_engine(built.facts, built.path, sd3 / name, "sm_86")

    code, stdout, _ = cli(["info", "--export-dir", str(sd3)])
    listed = [line.strip() for line in stdout.splitlines() if ".engine: built by" in line]
    assert code == 0 and f"TensorRT engines in {sd3}: 2" in stdout and len(listed) == 2
    assert all(f"built by TensorRT-RTX {RTX.version} for sm_86 (any sm_86 GPU" in line for line in listed)


def test_unsupported_graphs_and_options_fail_in_one_line(tmp_path: Path) -> None:
    """An op TensorRT cannot parse names its node; a profile TensorRT cannot build, the graph; a GPU
    TensorRT-RTX does not build for, the option."""
    value = onnx.helper.make_tensor_value_info
    nodes = [
        onnx.helper.make_node("Relu", ["x"], ["r"], name="fine"),
        onnx.helper.make_node("Mystery", ["r"], ["y"], name="odd_one", domain="example.fastinv"),
    ]
    graph = onnx.helper.make_graph(nodes, "g", [value("x", 1, ["n", 4])], [value("y", 1, ["n", 4])])
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", 17), onnx.helper.make_opsetid("example.fastinv", 1)],
    )
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(FastinvError, match=r"TensorRT-RTX cannot parse bad.onnx: node 'odd_one' \(Mystery\)"):
        build_serialized(RTX, bad, {"x": ((1, 4), (1, 4), (2, 4))}, gpu_arch="sm_89")

    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [value("x", 1, ["n", 4])],
        [value("y", 1, ["n", 4])],
    )
    fine = tmp_path / "fine.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), str(fine))
    blob, timing, io = build_serialized(RTX, fine, {"x": ((1, 4), (2, 4), (3, 4))}, gpu_arch="sm_75")
    assert blob.nbytes > 0 and timing is None
    assert io == {
        "x": {"input": True, "dtype": "FLOAT", "shape": [-1, 4], "profile": [[1, 4], [2, 4], [3, 4]]},
        "y": {"input": False, "dtype": "FLOAT", "shape": [-1, 4]},
    }
    with pytest.raises(FastinvError, match=r"TensorRT-RTX could not build an engine from fine\.onnx"):
        build_serialized(RTX, fine, {"x": ((1, 5), (1, 5), (1, 5))}, gpu_arch="sm_75")  # not 4 wide

    for args, message in (
        (["--gpu-arch", "sm_90"], "error: --gpu-arch sm_90: TensorRT-RTX builds ahead of time for sm_75"),
        (["--gpu-arch", "ada"], "error: --gpu-arch 'ada': give a compute capability such as sm_89"),
        (["--gpu-arch", "sm_89", "--format", "onnx"], "error: --gpu-arch is for --format trt"),
        (["--workspace", "2", "--format", "onnx"], "error: --workspace and --opt-level are for --format trt"),
        (["--opt-level", "3", "--format", "onnx"], "error: --workspace and --opt-level are for --format trt"),
        (["--workspace", "-1"], "error: --workspace must be a number of GiB in (0, 1024], got -1.0"),
        (["--workspace", "nan"], "error: --workspace must be a number of GiB in (0, 1024], got nan"),
        (["--opt-level", "99"], "error: --opt-level must be 0 … 5, got 99"),
    ):
        code, _, stderr = cli(["export", "--format", "trt", "--out", str(tmp_path / "x"), *args])
        assert code == 2 and stderr.strip().startswith(message) and stderr.count("\n") == 1, stderr
        assert not (tmp_path / "x").exists()


def test_sidecar_records_the_library(shipped_export: tuple[Path, str], tmp_path: Path) -> None:
    """An engine's sidecar is plain JSON naming the library that built it (what `fastinv info` shows)."""
    onnx_path = shipped_export[0] / "solver.fp32.onnx"
    profile = Profile(
        {"batch": (1, 1, 1), "text": (16, 16, 16), "height": (64, 64, 64), "width": (64, 64, 64)}
    )
    built = build_engine(onnx_path, profile, out=tmp_path, gpu_arch="sm_121", optimization_level=0)
    data = json.loads(sidecar_path(built.path).read_text())
    assert data["library"] == "tensorrt_rtx" and data["compute_capability"] == "sm_121"
    assert data["device_name"] == "any sm_121 GPU (built ahead of time)"
