"""Memory plans (`--offload`), the footprint estimate of `fastinv info --model` and the recorded peak memory.

This machine has no GPU, so the offload plans run with `cpu:0` as "the device": a torch.device of its own
whose tensors live in CPU memory. `offload.place` is spied on, so each module's last placement says whether
it is on the device ("cpu:0") or resting in CPU memory ("cpu"), and a hook on every module checks, each
time it runs, which components are on the device.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import cli

from fastinv.api import Inverter, load
from fastinv.memory import process_peak_rss_mib
from fastinv.models import EXAMPLE_IMAGE, load_model
from fastinv.models import offload as offload_module
from fastinv.models.footprint import footprint, weight_files
from fastinv.models.offload import OffloadedCodec, OffloadedPrompts, plan_model
from fastinv.run_config import RunConfig, check_offload

DEVICE = torch.device("cpu", 0)
"""Stands in for the GPU: told apart from "cpu" by `place`, while its tensors live in CPU memory."""
IMAGE = np.random.default_rng(0).random((64, 64, 3), dtype=np.float32)


@pytest.fixture
def placements(monkeypatch: pytest.MonkeyPatch) -> dict[int, str]:
    """id(module) → the device of its last `offload.place`: "cpu:0" on the device, "cpu" resting."""
    where: dict[int, str] = {}
    real = offload_module.place

    def place(modules, device):
        where.update({id(module): str(device) for module in modules})
        real(modules, device)

    monkeypatch.setattr(offload_module, "place", place)
    return where


def _components(model) -> dict[str, list[torch.nn.Module]]:
    """A FLUX model's components by name: the modules that move together."""
    prompts = model.prompt_encoder
    pipeline = getattr(prompts, "encoder", prompts).pipeline
    vae = model.codec.vae
    return {
        "text": [pipeline.text_encoder, pipeline.text_encoder_2],
        "vae": [vae],
        "transformer": [model.velocity.network],
    }


def _watch(components: dict, placements: dict, log: list[tuple[str, set[str]]]) -> list:
    """Forward pre-hooks that log (component running, components on the device) at every module call."""

    def hook(name: str):
        def record(module, args):
            on_device = {
                other
                for other, modules in components.items()
                if all(placements.get(id(m), "cpu") == "cpu:0" for m in modules)
            }
            if not log or log[-1][0] != name:
                log.append((name, on_device))

        return record

    (vae,) = components["vae"]  # AutoencoderKL.encode / decode run its encoder / decoder, not its forward
    watched = [*(("text", m) for m in components["text"]), ("vae", vae.encoder), ("vae", vae.decoder)]
    watched.append(("transformer", components["transformer"][0]))
    return [module.register_forward_pre_hook(hook(name)) for name, module in watched]


def _round_trip(inverter: Inverter) -> tuple[torch.Tensor, torch.Tensor]:
    inversion = inverter.invert(IMAGE, prompt="a cat", method="euler", steps=2)
    return inversion.z_T, inverter.reconstruct(inversion).pixels


def test_model_offload_runs_one_component_at_a_time(tiny_flux_dev_dir: Path, placements: dict) -> None:
    """--offload model: text encoders, VAE and transformer each run alone on the device, the others in CPU
    memory, in the order prompt → VAE encode → transformer → VAE decode (so the text encoders have left
    before the denoiser runs); z_T and the reconstruction equal the plain run's to float rounding (a move
    copies the weights, and CPU matrix products can round differently at another memory alignment)."""
    expected = _round_trip(Inverter(load_model(tiny_flux_dev_dir)))
    model = plan_model(load_model(tiny_flux_dev_dir), "model", DEVICE)
    assert isinstance(model.codec, OffloadedCodec) and isinstance(model.prompt_encoder, OffloadedPrompts)
    assert model.device == DEVICE and model.velocity.device == DEVICE
    assert not placements, "nothing moves before it runs"
    log: list[tuple[str, set[str]]] = []
    hooks = _watch(_components(model), placements, log)
    got = _round_trip(Inverter(model, config=RunConfig(DEVICE, offload="model")))
    for hook in hooks:
        hook.remove()
    assert log == [("text", {"text"}), ("vae", {"vae"}), ("transformer", {"transformer"}), ("vae", {"vae"})]
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)


def test_text_offload_keeps_the_text_encoders_in_cpu_memory(tiny_sd3_dir: Path, placements: dict) -> None:
    """--offload text: the transformer and VAE go to the device, the text encoders never do (they encode in
    CPU memory, to the same embeddings); the prompt embeddings reach the device."""
    plain = load_model(tiny_sd3_dir)
    model = plan_model(load_model(tiny_sd3_dir), "text", DEVICE)
    pipeline = model.prompt_encoder.pipeline
    texts = [pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3]
    assert placements[id(model.velocity.network)] == placements[id(model.codec.vae)] == "cpu:0"
    assert model.velocity.offload is None and model.prompt_encoder.device == torch.device("cpu")
    assert not any(id(m) in placements for m in texts)
    embeds, pooled = model.encode_prompt("a red house")
    expected, expected_pooled = plain.encode_prompt("a red house")
    assert torch.equal(embeds, expected) and torch.equal(pooled, expected_pooled)
    assert not any(id(m) in placements for m in texts)


def test_offload_is_checked_before_loading(tmp_path: Path) -> None:
    """One-line errors naming --offload, before any model is loaded: unknown plans, a CPU device, a graph
    backend; CUDA graphs requested with model offload. Model offload turns the default CUDA graphs off."""
    cuda = torch.device("cuda")
    for plan, device, backend, message in [
        ("disk", cuda, "torch", "unknown --offload 'disk': use none, text, model"),
        ("model", torch.device("cpu"), "torch", "--offload model needs a CUDA device, the model runs on cpu"),
        ("text", cuda, "ort", "--offload text needs --backend torch, not ort"),
    ]:
        with pytest.raises(Exception, match=message):
            check_offload(plan, device, backend)
    check_offload("none", torch.device("cpu"), "ort")
    assert not RunConfig.resolve(cuda, torch.bfloat16, offload="model").cuda_graphs
    assert RunConfig.resolve(cuda, torch.bfloat16, offload="text").cuda_graphs
    with pytest.raises(Exception, match="CUDA graphs cannot run with --offload model"):
        RunConfig.resolve(cuda, torch.bfloat16, cuda_graphs=True, offload="model")
    with pytest.raises(Exception, match="needs a CUDA device"):
        load(tmp_path / "absent", device="cpu", offload="model")  # not "model folder not found"
    args = ["--device", "cpu", "--out", str(tmp_path)]
    code, _, err = cli(["invert", "--example", "--offload", "model", *args])
    assert (code, err.strip()) == (2, "error: --offload model needs a CUDA device, the model runs on cpu")
    code, _, err = cli(["edit", str(EXAMPLE_IMAGE), "--target-prompt", "a dog", "--offload", "disk", *args])
    assert (code, err.strip()) == (2, "error: unknown --offload 'disk': use none, text, model")
    assert not any(tmp_path.iterdir())


def test_footprint_counts_the_loaded_parameters(tiny_sd3_dir: Path, tiny_flux_dev_dir: Path) -> None:
    """Each component's parameter count from its safetensors headers equals the loaded module's tensors;
    bytes are elements × the dtype's size; the plans' peaks follow their definitions."""
    for folder in (tiny_sd3_dir, tiny_flux_dev_dir):
        model = load_model(folder)
        pipeline = model.prompt_encoder.pipeline
        loaded = {"transformer": model.velocity.network, "vae": model.codec.vae}
        texts = ("text_encoder", "text_encoder_2", "text_encoder_3")
        loaded |= {n: getattr(pipeline, n, None) for n in texts}
        estimate = footprint(folder, torch.bfloat16)
        assert [c.name for c in estimate.components] == [n for n in loaded if loaded[n] is not None]
        for part in estimate.components:
            state = loaded[part.name].state_dict().values()
            tensors = {t.data_ptr(): t.numel() for t in state}  # T5 ties two names to one tensor
            assert part.parameters == sum(tensors.values()), part.name
            assert part.bytes == 2 * part.parameters
        weights = {c.name: c.bytes for c in estimate.components}
        text = sum(b for n, b in weights.items() if n.startswith("text"))
        act = max(estimate.denoiser_activations, estimate.vae_activations)
        assert estimate.plans == {
            "none": sum(weights.values()) + act,
            "text": weights["transformer"] + weights["vae"] + act,
            "model": max(
                text,
                weights["vae"] + estimate.vae_activations,
                weights["transformer"] + estimate.denoiser_activations,
            ),
        }
    assert weight_files(tiny_sd3_dir / "scheduler") == []


def test_info_model_prints_variant_and_plans(tiny_flux_dev_dir: Path, tmp_path: Path) -> None:
    """`fastinv info --model DIR --dtype bf16`: family and variant, every component, the activations and
    the three plans; a folder that is not a model is one error line."""
    code, out, err = cli(["info", "--model", str(tiny_flux_dev_dir), "--dtype", "bf16"])
    assert code == 0, err
    assert "flux, flux-dev (guidance_embeds=true" in " ".join(out.split())
    estimate = footprint(tiny_flux_dev_dir, torch.bfloat16)
    for needle in ("transformer", "text_encoder_2", "VAE decode activations", "bfloat16", "1024×1024"):
        assert needle in out
    assert all(plan in out for plan in estimate.plans)
    code, _, err = cli(["info", "--model", str(tmp_path)])
    assert code == 2 and err.startswith("error: ") and "is not a diffusers model folder" in err


def test_a_run_records_its_peak_memory(tmp_path: Path) -> None:
    """`fastinv invert` records each stage's peak (the process's RSS on CPU, MiB) in NAME.metrics.json and
    the higher one in the manifest."""
    code, _, err = cli(["invert", "--example", "--method", "euler", "--steps", "2", "--out", str(tmp_path)])
    assert code == 0, err
    (metrics_file,) = tmp_path.glob("*.metrics.json")
    record = json.loads(metrics_file.read_text())
    peaks = record["peak_memory_mib"]
    assert set(peaks) == {"inversion", "reconstruction"}
    # sampled, so at most the kernel's peak, give or take its per-CPU RSS counters (read at other times)
    assert all(50 < mib <= process_peak_rss_mib() + 64 for mib in peaks.values())
    assert "RSS" in record["peak_memory"]
    (line,) = (tmp_path / "manifest.jsonl").read_text().splitlines()
    assert json.loads(line)["peak_memory_mib"] == max(peaks.values())


def test_a_skeleton_folder_has_the_real_folders_footprint(tiny_flux_dev_dir: Path, tmp_path: Path) -> None:
    """benchmarks/memory_plans.py estimates FLUX.1-dev from a skeleton (its configs, safetensors headers
    over sparse data): the skeleton of the tiny FLUX-dev's modules gives the real folder's estimate."""
    import shutil

    from scripts import import_script

    memory_plans = import_script(Path(__file__).resolve().parents[1] / "benchmarks" / "memory_plans.py")
    skeleton = tmp_path / "skeleton"
    shutil.copytree(tiny_flux_dev_dir, skeleton)
    model = load_model(tiny_flux_dev_dir)
    pipeline = model.prompt_encoder.pipeline
    modules = {
        "transformer": model.velocity.network,
        "vae": model.codec.vae,
        "text_encoder": pipeline.text_encoder,
        "text_encoder_2": pipeline.text_encoder_2,
    }
    for name, module in modules.items():
        (file,) = weight_files(skeleton / name)
        file.unlink()
        memory_plans.write_skeleton_weights(module, file, torch.bfloat16)
    assert footprint(skeleton, torch.bfloat16) == footprint(tiny_flux_dev_dir, torch.bfloat16)


def test_load_memory_smoke_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/load_memory.py on a 1-block SD3-medium skeleton, its load run in this process (the child
    would add an import of torch and diffusers; here freed memory is reused, so the figures are the child's
    to give): diffusers sees accelerate, and the table and JSON report the load consistently."""
    from scripts import import_script

    load_memory = import_script(Path(__file__).resolve().parents[1] / "benchmarks" / "load_memory.py")
    monkeypatch.setattr(
        load_memory, "measure", lambda folder, dtype, hide: load_memory.load_and_read(folder, dtype)
    )
    record = load_memory.main(["--layers", "1", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "load_memory.json").read_text()) == record
    ((name, run),) = record["runs"].items()
    assert name == "as installed" and run["accelerate"] is True and "1 of 24 blocks" in record["model"]
    assert run["peak"] >= run["resident"] > run["before"] and run["added"] == run["peak"] - run["before"]
    assert run["added_per_weight_byte"] == round(run["added"] / record["weights_bytes"], 3)
    assert record["weights_bytes"] > 300 * 2**20  # SD3-medium's embeddings and one block, and its VAE
    assert record["versions"]["accelerate"]
