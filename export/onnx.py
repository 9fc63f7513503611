"""torch → ONNX for the velocity and DeepInv solver graphs, and the ONNX Runtime vs torch parity check.

`export_velocity` / `export_solver` trace the graphs of `fastinv.export.graphs` with
`torch.onnx.export(dynamo=True)`: opset 18 (22 for bf16, the first opset whose Conv and MatMul take
bfloat16), dynamic batch, text length and height/width (within the positional embedding's range for SD3),
the precision baked into the graph and float32 IO. The written file carries its `GraphSpec` in
metadata_props, has passed shape inference and the ONNX checker, and replaced any earlier file
atomically; weights go to external data above protobuf's 2 GiB limit.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch.export import Dim

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.files import publish_files
from fastinv.models.base import FlowModel
from fastinv.runtime.backends import get_backend
from fastinv.runtime.spec import Axis, GraphSpec
from fastinv.runtime.weights import weights_digest
from fastinv.solver.model import SolverNetwork, TorchSolver, solver_family

from .graphs import ExportGraph, fixed_latent_size, solver_graph, velocity_graph

OPSET = 18
BF16_OPSET = 22
TOLERANCE = {"fp32": 1e-4, "bf16": 2e-2, "fp16": 2e-2}
"""Largest max|ort − torch| / max|torch| accepted (DESIGN §4; fp16 held to the bf16 bar)."""
EXTERNAL_DATA_BYTES = 2**31 - 2**27
"""Weights above this go to external data: protobuf's 2 GiB limit, less headroom for the graph itself."""


def export_velocity(
    model: FlowModel,
    path: str | Path,
    *,
    precision: str = "fp32",
    size: tuple[int, int] | None = None,
    opset: int | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write the velocity graph of `model` (SD3, FLUX, the shipped model) to `path` (.onnx).

    size: latent (height, width) to fix; default: the model's fixed resolution (the shipped model's
    64×64) if it has one, else dynamic. Load the model in `precision` to avoid a converted weight copy.
    """
    graph = velocity_graph(model, precision, size)
    weights = "" if model.weights_dir is None else weights_digest(model.weights_dir)
    return export_graph(
        graph, path, precision, source=model.name, weights=weights, opset=opset, external_data=external_data
    )


def export_solver(
    solver: SolverNetwork | TorchSolver,
    path: str | Path,
    *,
    precision: str = "fp32",
    size: tuple[int, int] | None = None,
    opset: int | None = None,
    external_data: bool | None = None,
) -> Path:
    """Write the solver's graph to `path` (.onnx); size: latent (height, width) to fix, or None."""
    graph = solver_graph(solver, precision, size)
    folder = graph.network.config.get("_name_or_path")
    source = str(folder or type(graph.network).__name__)
    weights = weights_digest(folder) if folder and Path(folder).is_dir() else ""
    return export_graph(
        graph, path, precision, source=source, weights=weights, opset=opset, external_data=external_data
    )


def export_model(
    model: FlowModel, solver_dir: str | Path | None, out: str | Path, *, precision: str = "fp32"
) -> dict[Path, FlowModel | TorchSolver]:
    """Export `model`'s denoiser, and the DeepInv solver in `solver_dir` when given (checked to fit the
    model), to `out` as velocity.<precision>.onnx and solver.<precision>.onnx, the names the backends look
    for. Returns {graph path: the torch module it came from}, the references of `check_parity`."""
    from fastinv.runtime.graph import graph_stem
    from fastinv.solver.model import check_solver_fits, load_solver

    out = Path(out)
    references: dict[Path, FlowModel | TorchSolver] = {}
    path = export_velocity(model, out / f"{graph_stem('velocity', precision)}.onnx", precision=precision)
    references[path] = model
    if solver_dir is not None:
        solver = load_solver(solver_dir, model.device)
        check_solver_fits(solver.config, model.codec.channels, model.conditioning(""))
        # a model with a fixed resolution runs only at that size: its solver graph is fixed to it too
        path = export_solver(
            solver,
            out / f"{graph_stem('solver', precision)}.onnx",
            precision=precision,
            size=fixed_latent_size(model),
        )
        references[path] = solver
    return references


def _dynamic_shapes(spec: GraphSpec) -> dict[str, dict[int, object]]:
    """torch.export Dims for the spec's axes: one Dim per axis name, `multiple`·Dim for strided ones."""
    dims: dict[str, object] = {}

    def dim(axis: Axis) -> object:
        if axis.name not in dims:
            count = Dim(
                f"{axis.name}_blocks" if axis.multiple > 1 else axis.name,
                min=-(-axis.min // axis.multiple),
                **({} if axis.max is None else {"max": axis.max // axis.multiple}),
            )
            dims[axis.name] = count if axis.multiple == 1 else axis.multiple * count
        return dims[axis.name]

    return {
        name: {i: dim(axis) for i, axis in enumerate(axes) if isinstance(axis, Axis)}
        for name, axes in spec.inputs.items()
    }


def _transposes_for_permuting_einsums(graph: onnx.GraphProto) -> None:
    """Rewrite one-input Einsums that only permute axes (SD3's unpatchify "nhwpqc->nchpwq") as Transpose:
    ONNX's Einsum takes no bfloat16, and every backend runs a Transpose at least as well."""
    for node in graph.node:
        if node.op_type != "Einsum" or len(node.input) != 1:
            continue
        equation = onnx.helper.get_attribute_value(node.attribute[0]).decode().replace(" ", "")
        source, _, target = equation.partition("->")
        if "." in source or len(set(source)) != len(source) or sorted(source) != sorted(target):
            continue
        node.op_type = "Transpose"
        del node.attribute[:]
        node.attribute.append(onnx.helper.make_attribute("perm", [source.index(c) for c in target]))


def export_graph(
    graph: ExportGraph,
    path: str | Path,
    precision: str,
    *,
    source: str = "",
    weights: str = "",
    opset: int | None = None,
    external_data: bool | None = None,
) -> Path:
    """Trace `graph` (example batch 2; see graphs.EXAMPLE), post-process, check and write it to `path`;
    `weights`: the digest of the folder the network's weights came from (recorded in the spec)."""
    opset = opset if opset is not None else (BF16_OPSET if precision == "bf16" else OPSET)
    if opset < OPSET or (precision == "bf16" and opset < BF16_OPSET):
        raise FastinvError(f"opset {opset} is too old: fastinv needs ≥ {OPSET} (≥ {BF16_OPSET} for bf16)")
    spec = dataclasses.replace(graph.spec(precision, source), weights=weights)
    device = next(graph.parameters()).device
    example = {name: t.to(device) for name, t in random_inputs(spec, spec.example).items()}
    if external_data is None:
        nbytes = sum(t.numel() * t.element_size() for t in (*graph.parameters(), *graph.buffers()))
        external_data = nbytes > EXTERNAL_DATA_BYTES
    with graph.patched(), torch.no_grad(), warnings.catch_warnings():
        # one Dim shared by several inputs is intended; the LeafSpec deprecation is torch-internal
        warnings.filterwarnings("ignore", message="# The axis name")
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`")
        program = torch.onnx.export(
            graph,
            tuple(example.values()),
            dynamic_shapes=_dynamic_shapes(spec),
            input_names=list(spec.inputs),
            output_names=[spec.output],
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{final.name}.") as tmp:
        staged = Path(tmp) / final.name
        program.save(staged, external_data=external_data)
        model = onnx.load(str(staged), load_external_data=False)
        _transposes_for_permuting_einsums(model.graph)
        onnx.helper.set_model_props(model, spec.metadata())
        onnx.save(model, str(staged))
        onnx.shape_inference.infer_shapes_path(str(staged), str(staged), strict_mode=True)
        onnx.checker.check_model(str(staged), full_check=True)
        written = sorted(Path(tmp).iterdir(), key=lambda f: f == staged)  # weights first, graph last
        publish_files({final.parent / file.name: _moved_from(file) for file in written})
    stale = final.with_name(final.name + ".data")
    if stale.exists() and stale.name not in {f.name for f in written}:
        stale.unlink()
    return final


def remove_stale_staging(final: Path) -> list[Path]:
    """Remove what an export of `final` killed midway left: its hidden staging folders and files
    (`.<name>.*`, and `publish_files`' `.<stem>.*.tmp<suffix>`; never published); returns them."""
    patterns = (f".{final.name}.*", f".{final.stem}.*.tmp{final.suffix}")
    stale = list(dict.fromkeys(path for pattern in patterns for path in final.parent.glob(pattern)))
    for path in stale:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


def _moved_from(file: Path) -> Callable[[Path], None]:
    """A `publish_files` writer that moves the finished `file` onto the staging name it is given."""
    return lambda tmp: os.replace(file, tmp)


def random_inputs(spec: GraphSpec, sizes: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Float32 inputs for `spec` at axis `sizes`: normal latents and text, σ ∈ [0.05, 0.85] with
    σ_next = σ + [0.02, 0.1] for solvers, and one embedded-guidance value in [1, 5] per batch."""
    generator = torch.Generator().manual_seed(seed)
    inputs = {}
    for name, axes in spec.inputs.items():
        shape = [axis if isinstance(axis, int) else sizes[axis.name] for axis in axes]
        if name == "sigma":
            inputs[name] = 0.05 + 0.8 * torch.rand(shape, generator=generator)
        elif name == "sigma_next":
            inputs[name] = inputs["sigma"] + 0.02 + 0.08 * torch.rand(shape, generator=generator)
        elif name == "guidance":
            inputs[name] = torch.full(shape, 1 + 4 * torch.rand((), generator=generator).item())
        else:
            inputs[name] = torch.randn(shape, generator=generator)
    return inputs


@torch.no_grad()
def _torch_output(reference: FlowModel | SolverNetwork, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """What the torch model returns for the graph's inputs (the adapter's `predict`, or the solver)."""
    if isinstance(reference, FlowModel):
        velocity, dtype = reference.velocity, reference.velocity.dtype
        text, pooled, guidance = inputs["prompt_embeds"], inputs.get("pooled_embeds"), inputs.get("guidance")
        cond = Conditioning(
            prompt="",
            prompt_embeds=text[:1],
            pooled_embeds=None if pooled is None else pooled[:1],
            embedded_guidance=None if guidance is None else float(guidance[0]),
        )
        return velocity.predict(
            inputs["latents"].to(dtype),
            inputs["sigma"],
            text.to(dtype),
            None if pooled is None else pooled.to(dtype),
            cond,
        ).float()
    if reference.warm_start:
        names = ("v", "z", "x0", "f_prev", "sigma", "sigma_next")
        return reference(*(inputs[name] for name in names)).float()
    dtype, pooled = reference.dtype, inputs.get("pooled")
    return reference(
        inputs["v"],
        inputs["z"],
        inputs["x0"],
        inputs["text"].to(dtype),
        None if pooled is None else pooled.to(dtype),
        inputs["sigma"],
        inputs["sigma_next"],
    ).float()


@dataclass(frozen=True)
class ParityReport:
    """One random-input comparison of a backend (ort: ONNX Runtime, trt: TensorRT) against torch.

    error: max|backend − torch| / max|torch| over all elements (the "max relative error" of DESIGN §4).
    """

    path: Path
    precision: str
    sizes: dict[str, int]
    error: float
    tolerance: float
    backend: str = "ort"

    @property
    def passed(self) -> bool:
        return self.error <= self.tolerance

    def __str__(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.sizes.items())
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{self.path.name} [{self.precision}] {sizes}: max|{self.backend}−torch|/max|torch| = "
            f"{self.error:.2e} (tolerance {self.tolerance:.0e}) {verdict}"
        )


def check_parity(
    path: str | Path,
    reference: FlowModel | SolverNetwork | TorchSolver,
    *,
    batch: int = 1,
    height: int | None = None,
    width: int | None = None,
    text: int | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    tolerance: float | None = None,
    backend: str = "ort",
) -> ParityReport:
    """Run the graph at `path` in `backend` (a backend of `fastinv.runtime.backends`: ort an ONNX file in
    ONNX Runtime, trt a TensorRT engine file) and `reference` (the torch model it was exported from, ideally
    in fp32) in torch on the same random inputs; raise FastinvError above the tolerance.

    Sizes default to the export's example (height and width in latent pixels) with batch `batch`.
    """
    torch_model = reference.network if isinstance(reference, TorchSolver) else reference
    kind = "velocity" if isinstance(torch_model, FlowModel) else "solver"
    graph = get_backend(backend).open_graph(Path(path), kind, device)
    spec = graph.spec
    if isinstance(torch_model, FlowModel):
        spec.expect_model(graph.path, torch_model.family, torch_model.velocity.config)
    else:
        spec.expect_model(graph.path, solver_family(torch_model.config), torch_model.config)
    asked = {"batch": batch, "height": height, "width": width, "text": text}
    sizes = dict(spec.example)
    for name, size in asked.items():
        if size is None:
            continue
        if name not in sizes:
            raise FastinvError(f"{graph.path} has a fixed {name}: it takes no other")
        sizes[name] = size
    inputs = random_inputs(spec, sizes, seed)
    actual = graph.run(inputs)  # first: its input check explains sizes the model cannot take
    expected = _torch_output(torch_model, {name: t.to(torch_model.device) for name, t in inputs.items()})
    actual = actual.to(expected.device)
    error = ((actual - expected).abs().max() / expected.abs().max()).item()
    tolerance = TOLERANCE[spec.precision] if tolerance is None else tolerance
    report = ParityReport(graph.path, spec.precision, sizes, error, tolerance, backend)
    if not report.passed:
        raise FastinvError(f"parity check failed: {report}")
    return report
