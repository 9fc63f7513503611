"""The backend table (`fastinv.runtime.backends`): lookups, what each backend needs, and methods that need
gradients refused up front on a backend without them (CLI, API)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_runner import cli

import fastinv.api
from fastinv.errors import FastinvError
from fastinv.methods import METHODS, NEEDS_GRADIENTS
from fastinv.runtime.backends import BACKENDS, folder_backends, get_backend
from fastinv.runtime.exports import available_backends, export_folder


def test_table_and_lookups(tmp_path: Path) -> None:
    assert list(BACKENDS) == ["torch", "ort", "trt"] and folder_backends() == ["ort", "trt"]
    assert [name for name, b in BACKENDS.items() if b.differentiable] == ["torch"]
    assert len({b.marker for b in BACKENDS.values()}) == len(BACKENDS)
    assert available_backends()[0] == "torch" and set(available_backends()) <= set(BACKENDS)
    assert {"preciseinv"} == NEEDS_GRADIENTS and set(METHODS) > NEEDS_GRADIENTS  # its descent steps
    with pytest.raises(FastinvError, match="unknown backend 'gpu': use torch, ort, trt"):
        get_backend("gpu")
    with pytest.raises(FastinvError, match="--export-dir is for the ort and trt backends; the torch backend"):
        export_folder("torch", tmp_path)
    with pytest.raises(FastinvError, match="the torch backend runs no exported graphs"):
        BACKENDS["torch"].load_velocity(tmp_path, None, "fp32")  # type: ignore[arg-type]


def test_gradient_methods_are_refused_on_graph_backends() -> None:
    for name, backend in BACKENDS.items():
        for method in METHODS:
            reason = backend.refusal(method)
            assert (reason is None) == (backend.differentiable or method not in NEEDS_GRADIENTS)
            assert (reason is None) == (name == "torch" or method != "preciseinv")
            if reason is not None:
                assert f"the {name} backend has none" in reason and "not differentiable" in reason
                assert "\n" not in reason


def test_cli_refuses_preciseinv_on_ort_early(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fastinv.api, "load", lambda *a, **k: pytest.fail("loaded a model"))
    args = ["invert", "--example", "--backend", "ort", "--export-dir", str(tmp_path)]
    code, _, err = cli([*args, "--method", "preciseinv", "--out", str(tmp_path / "o")])
    assert code == 2 and "method preciseinv needs gradients" in err and "the ort backend" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_api_refuses_preciseinv_on_ort_before_any_work(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = fastinv.api.load_model(tiny_sd3_dir)
    inverter = fastinv.api.Inverter(model, backend="ort", export_dir=tmp_path)
    with pytest.raises(FastinvError, match="the ort backend has none"):
        inverter.invert(tmp_path / "absent.png", method="preciseinv")  # refused before the image loads


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("inputs", [1, 2], "has no fastinv metadata"),
        ("inputs", {"latents": [{"name": "batch", "multiple": 0}, 4]}, "input latents's axes"),
        ("inputs", {"latents": [{"name": "batch", "min": "a"}, 4]}, "input latents's axes"),
        ("inputs", {"latents": [{"name": "batch", "min": 4, "max": 2}, 4]}, "input latents's axes"),
        ("inputs", {"latents": [0, 4]}, "input latents's axes"),
        ("inputs", {"noise": [1, 4]}, "output_like 'latents' is not an input"),
        ("inputs", {"latents": [{"name": "batch", "min": None, "max": 4}, 4]}, "input latents's axes"),
        ("precision", "fp8", "precision 'fp8'"),
        ("family", "sdxl", "family 'sdxl'"),
        ("example", {"batch": -1}, "example sizes"),
    ],
)
def test_malformed_graph_metadata_is_one_line(
    tmp_path: Path, field: str, value: object, message: str
) -> None:
    """An export folder's graph is untrusted input: its fastinv metadata is range-checked when read."""
    onnx = pytest.importorskip("onnx")
    from fastinv.runtime.spec import Axis, GraphSpec, read_spec

    spec = GraphSpec("velocity", "sd3", "fp32", {"latents": [Axis("batch"), 4]}, "velocity", "latents", {})
    x, y = (onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1]) for n in "xy")
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "velocity.fp32.onnx"

    def write(props: dict[str, str]) -> None:
        model = onnx.helper.make_model(graph)
        onnx.helper.set_model_props(model, props)
        onnx.save(model, str(path))

    write(spec.metadata())
    assert read_spec(path) == spec
    write(spec.metadata() | {f"fastinv.{field}": value if isinstance(value, str) else json.dumps(value)})
    with pytest.raises(FastinvError, match=re.escape(message)) as error:
        read_spec(path)
    assert "\n" not in str(error.value)
