"""The exported graphs' boundaries: traceable modules with float32 IO around a network in the export
precision, the axes each input may vary along, and the patches diffusers models need to export.

Velocity graphs (SD3, FLUX): latents [B, C, H, W], sigma [B] σ ∈ [0, 1], prompt_embeds [B, L, D],
pooled_embeds [B, P] and, for guidance-distilled FLUX (dev), guidance [B] → velocity [B, C, H, W]. They
call the adapters' own forward (`sd3_velocity`, `flux_velocity`: σ → timestep conversion, FLUX packing
inside); CFG batching stays in Python (`fastinv.models.base.cfg_branches`), so every backend runs the same
method code.
Solver graphs: paper design (family "deepinv"): v, z, x0 [B, C, H, W], text [B, L, D], sigma,
sigma_next [B] σ, pooled [B, P] → eps; warm-start design (family "deepinv-warm"): v, z, x0, f_prev
[B, C, H, W], sigma, sigma_next [B] σ → eps.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from torch import nn

import fastinv
from fastinv.device import DTYPES
from fastinv.errors import FastinvError
from fastinv.models.base import FlowModel, TransformerVelocity
from fastinv.models.flux import flux_velocity
from fastinv.models.sd3 import sd3_velocity
from fastinv.runtime.spec import Axis, Dims, GraphSpec, normalized_config
from fastinv.solver.model import SolverNetwork, TorchSolver

BATCH = Axis("batch")
TEXT = Axis("text")
EXAMPLE = {"batch": 2, "text": 7, "height": 3, "width": 5}
"""Export-time sizes (height, width in multiples of the patch): ≥ 2 and all different, since the exporter
specialises size-1 axes and may tie axes whose example sizes are equal."""


def _in_dtype(network: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`network` itself when already in `dtype` (load it so to save memory), else a converted copy."""
    if all(p.dtype == dtype for p in network.parameters()):
        return network
    return copy.deepcopy(network).to(dtype)


@contextlib.contextmanager
def _instance_override(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set an instance attribute that shadows the class's for the duration of an export."""
    setattr(obj, name, value)
    try:
        yield
    finally:
        delattr(obj, name)


def _crop_pos_embed(self: nn.Module, height: int, width: int) -> torch.Tensor:
    """diffusers' PatchEmbed.cropped_pos_embed (SD3) without writing the crop's end as top + size.

    torch.export simplifies (m − h)//2 + h to m//2 + h + (−h)//2, and the ONNX lowering of // on
    negative integers truncates instead of flooring: the crop came out one token too wide for odd h.
    Cropping in two slices (start, then length) never forms that sum.
    """
    m = self.pos_embed_max_size
    height, width = height // self.patch_size, width // self.patch_size
    grid = self.pos_embed.reshape(1, m, m, -1)
    grid = grid[:, (m - height) // 2 :][:, :height]
    grid = grid[:, :, (m - width) // 2 :][:, :, :width]
    return grid.reshape(1, -1, grid.shape[-1])


def _rope_float32(self: nn.Module, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' FluxPosEmbed.forward with the rotary frequencies in float32 instead of float64
    (TensorRT has no float64); positions are small integers, so the angles stay within ~1e-5 rad."""
    positions = ids.float()
    cos, sin = zip(
        *(
            get_1d_rotary_pos_embed(
                dim,
                positions[:, i],
                theta=self.theta,
                repeat_interleave_real=True,
                use_real=True,
                freqs_dtype=torch.float32,
            )
            for i, dim in enumerate(self.axes_dim)
        ),
        strict=True,
    )
    return torch.cat(cos, dim=-1), torch.cat(sin, dim=-1)


class ExportGraph(nn.Module):
    """A network in `dtype` behind float32 graph inputs and output; subclasses define `forward` and `axes`.

    size: latent (height, width) to fix in the graph; None keeps both dynamic.
    """

    kind = ""
    family = ""
    output = ""
    output_like = ""

    def __init__(self, network: nn.Module, dtype: torch.dtype, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.network = network
        self.dtype = dtype
        self.size = size
        self.eval()

    def axes(self) -> dict[str, Dims]:
        """Input name → its axes, in `forward`'s argument order."""
        raise NotImplementedError

    def patched(self) -> contextlib.AbstractContextManager[None]:
        """Patches the network needs while it is exported (none by default)."""
        return contextlib.nullcontext()

    def spec(self, precision: str, source: str = "") -> GraphSpec:
        """What the exported file will record about itself (see fastinv.runtime.spec)."""
        return GraphSpec(
            kind=self.kind,
            family=self.family,
            precision=precision,
            inputs=self.axes(),
            output=self.output,
            output_like=self.output_like,
            config=normalized_config(self.network.config),
            example=self.example_sizes(),
            source=source,
            version=fastinv.__version__,
        )

    def example_sizes(self) -> dict[str, int]:
        """Export-time size of each dynamic axis: EXAMPLE, times the axis' multiple, within its range."""
        sizes: dict[str, int] = {}
        for dims in self.axes().values():
            for axis in dims:
                if isinstance(axis, Axis) and axis.name not in sizes:
                    size = EXAMPLE[axis.name] * axis.multiple
                    sizes[axis.name] = size if axis.max is None else min(size, axis.max)
        return sizes

    def _spatial(self, multiple: int, max_side: int | None = None) -> tuple[int | Axis, int | Axis]:
        """Latent height and width: `size` if fixed, else axes of multiples of `multiple` up to `max_side`."""
        if self.size is not None:
            height, width = self.size
            if height % multiple or width % multiple or (max_side is not None and max(self.size) > max_side):
                limit = "" if max_side is None else f", at most {max_side}"
                raise FastinvError(
                    f"latent size {height}×{width} does not fit this model (multiples of {multiple}{limit})"
                )
            return height, width
        return (
            Axis("height", min=multiple, max=max_side, multiple=multiple),
            Axis("width", min=multiple, max=max_side, multiple=multiple),
        )


class SD3Graph(ExportGraph):
    """SD3Velocity.predict (`fastinv.models.sd3.sd3_velocity`), float32 IO."""

    kind, family, output, output_like = "velocity", "sd3", "velocity", "latents"

    def forward(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor,
    ) -> torch.Tensor:
        return sd3_velocity(self.network, self.dtype, latents, sigma, prompt_embeds, pooled_embeds).float()

    def axes(self) -> dict[str, Dims]:
        config = self.network.config
        patch, grid = config.patch_size, config.pos_embed_max_size
        height, width = self._spatial(patch, None if grid is None else grid * patch)
        return {
            "latents": [BATCH, config.in_channels, height, width],
            "sigma": [BATCH],
            "prompt_embeds": [BATCH, TEXT, config.joint_attention_dim],
            "pooled_embeds": [BATCH, config.pooled_projection_dim],
        }

    def patched(self) -> contextlib.AbstractContextManager[None]:
        embed = self.network.pos_embed
        if embed.pos_embed_max_size is None:
            return contextlib.nullcontext()
        return _instance_override(embed, "cropped_pos_embed", _crop_pos_embed.__get__(embed))


class FluxGraph(ExportGraph):
    """FluxVelocity.predict (`fastinv.models.flux.flux_velocity`: pack 2×2 → FluxTransformer2DModel → unpack),
    float32 IO, the image ids built in the graph; guidance [B] is an input only for guidance-distilled (dev)
    transformers."""

    kind, family, output, output_like = "velocity", "flux", "velocity", "latents"

    def forward(
        self,
        latents: torch.Tensor,
        sigma: torch.Tensor,
        prompt_embeds: torch.Tensor,
        pooled_embeds: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        v = flux_velocity(
            self.network, self.dtype, latents, sigma, prompt_embeds, pooled_embeds, guidance=guidance
        )
        return v.float()

    def axes(self) -> dict[str, Dims]:
        config = self.network.config
        height, width = self._spatial(2)
        axes: dict[str, Dims] = {
            "latents": [BATCH, config.in_channels // 4, height, width],
            "sigma": [BATCH],
            "prompt_embeds": [BATCH, TEXT, config.joint_attention_dim],
            "pooled_embeds": [BATCH, config.pooled_projection_dim],
        }
        if config.guidance_embeds:
            axes["guidance"] = [BATCH]
        return axes

    def patched(self) -> contextlib.AbstractContextManager[None]:
        embed = self.network.pos_embed
        return _instance_override(embed, "forward", _rope_float32.__get__(embed))


class SolverGraph(ExportGraph):
    """TorchSolver's call: ε̂ = DeepInvSolver(v, z, x0, text, pooled, σ, σ_next); v, z, x0 enter as float32
    (the solver casts them itself and adds its correction to v in float32)."""

    kind, family, output, output_like = "solver", "deepinv", "eps", "v"

    def forward(
        self,
        v: torch.Tensor,
        z: torch.Tensor,
        x0: torch.Tensor,
        text: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
        pooled: torch.Tensor | None = None,
    ) -> torch.Tensor:
        pooled = None if pooled is None else pooled.to(self.dtype)
        return self.network(v, z, x0, text.to(self.dtype), pooled, sigma, sigma_next).float()

    def axes(self) -> dict[str, Dims]:
        config = self.network.config
        height, width = self._spatial(config.patch_size)
        latent: Dims = [BATCH, config.in_channels, height, width]
        axes: dict[str, Dims] = {
            "v": latent,
            "z": latent,
            "x0": latent,
            "text": [BATCH, TEXT, config.text_dim],
            "sigma": [BATCH],
            "sigma_next": [BATCH],
        }
        if config.pooled_dim is not None:
            axes["pooled"] = [BATCH, config.pooled_dim]
        return axes


class WarmSolverGraph(ExportGraph):
    """TorchSolver's call on a WarmStartSolver: ε̂ = WarmStartSolver(v, z, x0, f_prev, σ, σ_next), float32 IO
    (the network builds its features and rescales its output in float32 itself)."""

    kind, family, output, output_like = "solver", "deepinv-warm", "eps", "v"

    def forward(
        self,
        v: torch.Tensor,
        z: torch.Tensor,
        x0: torch.Tensor,
        f_prev: torch.Tensor,
        sigma: torch.Tensor,
        sigma_next: torch.Tensor,
    ) -> torch.Tensor:
        return self.network(v, z, x0, f_prev, sigma, sigma_next).float()

    def axes(self) -> dict[str, Dims]:
        config = self.network.config
        height, width = self._spatial(config.patch_size)
        latent: Dims = [BATCH, config.in_channels, height, width]
        return {
            "v": latent,
            "z": latent,
            "x0": latent,
            "f_prev": latent,
            "sigma": [BATCH],
            "sigma_next": [BATCH],
        }


def _dtype(precision: str) -> torch.dtype:
    if precision not in DTYPES:
        raise FastinvError(f"unknown precision {precision!r}: use {', '.join(DTYPES)}")
    return DTYPES[precision]


def velocity_graph(
    model: FlowModel, precision: str = "fp32", size: tuple[int, int] | None = None
) -> ExportGraph:
    """The velocity graph of a loaded SD3 / FLUX model (or the shipped one) in `precision`.

    size: latent (height, width) to fix; default: the model's fixed resolution if it has one, else dynamic.
    """
    dtype = _dtype(precision)
    graph_cls = {"sd3": SD3Graph, "flux": FluxGraph}.get(model.family)
    if graph_cls is None or not isinstance(model.velocity, TransformerVelocity):
        raise FastinvError(f"cannot export {model.name}: its velocity is not a torch {model.family} model")
    network = model.velocity.network
    return graph_cls(_in_dtype(network, dtype), dtype, size if size is not None else fixed_latent_size(model))


def fixed_latent_size(model: FlowModel) -> tuple[int, int] | None:
    """Latent (height, width) of a model with a fixed resolution (the shipped model's 64×64), else None."""
    if model.resolution is None:
        return None
    width, height = model.resolution
    return height // model.codec.scale_factor, width // model.codec.scale_factor


def solver_graph(
    solver: SolverNetwork | TorchSolver, precision: str = "fp32", size: tuple[int, int] | None = None
) -> SolverGraph | WarmSolverGraph:
    """The solver's graph (its design's) in `precision`; size: latent (height, width) to fix, or None."""
    network = solver.network if isinstance(solver, TorchSolver) else solver
    dtype = _dtype(precision)
    graph_cls = WarmSolverGraph if network.warm_start else SolverGraph
    return graph_cls(_in_dtype(network, dtype), dtype, size)
