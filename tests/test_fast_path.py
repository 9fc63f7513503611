"""The torch fast path: switch resolution, torch.compile, and CUDA-graph step capture.

No GPU here, so capture is checked with a CPU stand-in (`TracedCapturedStep`) that has a CUDA graph's
semantics: it traces the step once (make_fx), freezing every Python scalar and branch, and replays the
trace on the copied-in inputs. A method whose step closed over a per-step Python value would replay a
stale value, as a real graph would; the control test below shows the stand-in catches exactly that.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from test_solver import tiny_solver
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils._pytree import tree_leaves

import fastinv
from fastinv.cli import main
from fastinv.errors import FastinvError
from fastinv.methods.base import NFECounter
from fastinv.run_config import RunConfig
from fastinv.runtime import fast_path
from fastinv.runtime.fast_path import CapturedStep, captured
from fastinv.solver import TorchSolver


class TracedCapturedStep(CapturedStep):
    """CapturedStep with capture = an FX trace (constants frozen) and replay = running it on the buffers."""

    replays = 0

    def warm_up(self, inputs: tuple[torch.Tensor, ...]):
        return self.fn(*inputs)

    def capture(self) -> None:
        self.graph = make_fx(self.fn)(*self.inputs)
        self.outputs = self.graph(*self.inputs)

    def replay(self) -> None:
        TracedCapturedStep.replays += 1
        fresh = self.graph(*self.inputs)
        for buffer, value in zip(tree_leaves(self.outputs), tree_leaves(fresh), strict=True):
            buffer.copy_(value)


@pytest.fixture
def cpu_graphs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_path, "CapturedStep", TracedCapturedStep)
    monkeypatch.setattr(fast_path, "CAPTURE_DEVICES", ("cpu",))


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(data.astronaut()).resize((64, 64), Image.Resampling.LANCZOS))


def test_defaults_follow_the_device() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert RunConfig.resolve(cpu, torch.float32) == RunConfig(cpu, torch.float32, False, False)
    assert RunConfig.resolve(cuda, torch.bfloat16) == RunConfig(cuda, torch.bfloat16, True, True)
    assert RunConfig.resolve(cuda, torch.bfloat16, enabled=False) == RunConfig(cuda, torch.bfloat16)
    assert RunConfig.resolve(cuda, torch.bfloat16, cuda_graphs=False).compile
    assert RunConfig.resolve(cpu, torch.float32, compile=True) == RunConfig(compile=True)
    # fp16 checks every step's output on the host, which a graph cannot: graphs drop out by default
    assert not RunConfig.resolve(cuda, torch.float16).cuda_graphs
    assert RunConfig.resolve(cuda, torch.bfloat16).describe() == "compile+cuda_graphs, kernels=auto"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"device": torch.device("cpu"), "cuda_graphs": True}, "CUDA graphs need a CUDA device"),
        ({"device": torch.device("cuda"), "cuda_graphs": True, "dtype": torch.float16}, "fp16"),
        ({"device": torch.device("cpu"), "kernels": "cuda"}, "unknown kernel backend"),
    ],
)
def test_impossible_switches_are_one_line_errors(kwargs: dict, message: str) -> None:
    kwargs.setdefault("dtype", torch.float32)
    with pytest.raises(FastinvError, match=message):
        RunConfig.resolve(kwargs.pop("device"), kwargs.pop("dtype"), **kwargs)


def test_cli_rejects_cuda_graphs_on_cpu(
    tiny_sd3_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["invert", "--example", "--model", str(tiny_sd3_dir), "--device", "cpu", "--cuda-graphs"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "CUDA graphs need a CUDA device" in capsys.readouterr().err


def test_step_graph_counts_calls_and_returns_fresh_tensors(cpu_graphs: None) -> None:
    def model(z, sigma, cond):
        return z * sigma.view(-1, 1)

    counter = NFECounter(model)
    step = TracedCapturedStep(lambda z, s: counter(counter(z, s, None), s, None) + 1, counter)
    z, s = torch.ones(2, 3), torch.full((2,), 2.0)
    outputs = [step(z, s), step(z, s), step(2 * z, s)]
    assert counter.calls == 6  # 2 calls per step: counted eagerly, then added per replay
    assert [o[0, 0].item() for o in outputs] == [5.0, 5.0, 9.0]
    assert outputs[1].data_ptr() != step.outputs.data_ptr()  # a clone, safe to keep
    with pytest.raises(FastinvError, match="captured for"):
        step(torch.ones(3, 3), torch.full((3,), 1.0))


def test_stand_in_freezes_python_values_like_a_cuda_graph(cpu_graphs: None) -> None:
    """Control: a step closing over a per-step Python float replays the captured value."""
    counter = NFECounter(lambda z, sigma, cond: z)
    scale = [1.0]
    step = TracedCapturedStep(lambda z: counter(z, None, None) * scale[0], counter)
    results = []
    for value in (1.0, 2.0, 3.0):
        scale[0] = value
        results.append(step(torch.ones(1)).item())
    assert results == [1.0, 2.0, 2.0]  # the value at capture (step 2) is frozen


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("euler", {}),
        ("euler", {"guidance": 2.5, "prompt": "a photo"}),
        ("easyinv", {"eta": 0.7, "window": [0.2, 0.8]}),
        ("renoise", {"iterations": 2, "average_last": 2}),
        ("warm_fixed_point", {"corrections": 3, "guidance": 2.5, "prompt": "a photo"}),
        ("deepinv", {"blend": 0.1, "blend_window": [0.2, 0.6]}),
    ],
)
def test_graphed_steps_equal_eager(
    cpu_graphs: None, tiny_sd3_dir: Path, photo: np.ndarray, method: str, options: dict
) -> None:
    """Each method's step is a pure function of its tensor inputs: replays give the eager result, the
    same NFE, and the Euler reconstruction (also captured) matches."""
    inv = fastinv.load(tiny_sd3_dir, device="cpu")
    if method == "deepinv":
        options = options | {"solver": TorchSolver(tiny_solver())}
    runs, replays = {}, TracedCapturedStep.replays
    for graphs in (False, True):
        inv.config = dataclasses.replace(inv.config, cuda_graphs=graphs)  # CPU capture: the stand-in
        res = inv.invert(photo, method=method, steps=6, **options)
        runs[graphs] = (res, inv.reconstruct(res))
    (eager, eager_rec), (replayed, replayed_rec) = runs[False], runs[True]
    assert TracedCapturedStep.replays - replays == 2 * 5  # steps 2–6 of the inversion and of the sampling
    assert replayed.result.nfe == eager.result.nfe
    torch.testing.assert_close(replayed.z_T, eager.z_T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(replayed_rec.latents, eager_rec.latents, rtol=1e-5, atol=1e-5)


def test_regularised_renoise_is_not_captured(cpu_graphs: None) -> None:
    counter = NFECounter(lambda z, sigma, cond: z)
    assert isinstance(captured(lambda z: z, counter, torch.device("cpu"), capture=True), TracedCapturedStep)
    assert not isinstance(captured(lambda z: z, counter, torch.device("cpu"), capture=False), CapturedStep)


def test_compiled_networks_match_eager(
    tiny_sd3_dir: Path, photo: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile (inductor on CPU here) of the denoiser changes nothing but speed. Inductor writes scalar
    C++ here: its vectorised kernels take twice as long to compile (35 s against 16 s on 2 cores), and the
    GPU path this stands in for is Triton's."""
    from torch._inductor import config as inductor

    monkeypatch.setattr(inductor.cpp, "vec_isa_ok", False)
    eager = fastinv.load(tiny_sd3_dir, device="cpu")
    compiled = fastinv.load(tiny_sd3_dir, device="cpu", compile=True)
    assert isinstance(compiled.model.velocity.network, torch._dynamo.eval_frame.OptimizedModule)
    options = {"method": "euler", "steps": 3, "prompt": "a photo", "guidance": 2.0}
    results = [inv.invert(photo, **options) for inv in (eager, compiled)]
    torch.testing.assert_close(results[1].z_T, results[0].z_T, rtol=1e-4, atol=1e-4)
    assert results[1].result.nfe == results[0].result.nfe == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    ("fixture", "method"),
    [("tiny_sd3_dir", "euler"), ("tiny_flux_dev_dir", "euler"), ("tiny_sd3_dir", "deepinv")],
)
def test_real_cuda_graphs_equal_eager(
    fixture: str, method: str, photo: np.ndarray, request: pytest.FixtureRequest
) -> None:
    """On a GPU: the real fast path (bf16, CUDA graphs, Triton step kernels) against eager bf16."""
    folder = request.getfixturevalue(fixture)
    options = {"method": method, "steps": 6, "prompt": "a photo", "guidance": 2.0}
    results = []
    for fast in (False, True):
        inv = fastinv.load(folder, device="cuda", dtype="bf16", fast=fast, compile=False)
        if method == "deepinv":
            options["solver"] = TorchSolver(tiny_solver().to("cuda", torch.bfloat16), torch.bfloat16)
        results.append(inv.invert(photo, **options))
    assert results[1].result.nfe == results[0].result.nfe == 6
    torch.testing.assert_close(results[1].z_T, results[0].z_T, rtol=2e-2, atol=2e-2)
