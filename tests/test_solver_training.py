"""`fastinv train` on a tiny SD3 folder: fixed-point targets, checkpoints, resume, both designs, DDP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import cli
from PIL import Image
from safetensors.torch import load_file, save_file
from skimage import data
from tiny_models import SD3_JOINT_DIM, SD3_LATENT_CHANNELS, SD3_POOLED_DIM

import fastinv
from fastinv.cli import main
from fastinv.errors import FastinvError
from fastinv.solver import checkpoints
from fastinv.solver.recipe import DEFAULT_RECIPE, SolverTrainConfig
from fastinv.solver.training import train_solver

RECIPE = {
    "preset": "sd3-medium",
    "solver": {
        "in_channels": SD3_LATENT_CHANNELS,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "layers": 1,
        "sample_size": 8,
    },
    "size": 64,
    "crops_per_image": 2,
    "batch_size": 2,
    "rounds": 2,
    "steps": [1, 3],
    "epochs": 1,
    "fit_batch": 2,
    "max_evaluations": 6,
    "warmup": 2,
    "log_every": 2,
    "lr": 1e-3,
}
PAPER = {
    "preset": "sd3-medium-paper",
    "solver": {
        "in_channels": SD3_LATENT_CHANNELS,
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "left_layers": 1,
        "right_layers": 1,
        "text_dim": SD3_JOINT_DIM,
        "pooled_dim": SD3_POOLED_DIM,
        "sample_size": 8,
    },
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_images")
    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).resize((96, 80)).save(folder / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def recipe_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    values = json.loads(DEFAULT_RECIPE.read_text()) | RECIPE
    path = tmp_path_factory.mktemp("recipe") / "recipe.json"
    path.write_text(json.dumps(values))
    return path


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return fastinv.solver.load_solver(folder).network.state_dict()


@pytest.fixture(scope="module")
def whole_run(
    tiny_sd3_dir: Path, images: Path, recipe_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """An uninterrupted run of RECIPE through the CLI."""
    out = tmp_path_factory.mktemp("whole") / "run"
    main(
        [
            *("train", "--model", str(tiny_sd3_dir), "--images", str(images), "--out", str(out)),
            *("--config", str(recipe_file), "--set", "seed=0"),
        ]
    )
    return out


def test_train_cli_writes_a_solver_that_deepinv_uses(
    tiny_sd3_dir: Path, images: Path, whole_run: Path, tmp_path: Path
) -> None:
    out = whole_run
    # 4 crops × (1 + 3) steps = 16 steps collected per round; round 0 fits 16, round 1 fits 32, 2 per batch
    assert json.loads((out / "log.json").read_text())["optimizer_steps"] == 24
    names = {p.name for p in out.iterdir()}
    assert names >= {"solver", "checkpoints", "loss.csv", "loss.png", "log.json", "targets.json"}
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,round,epoch,loss,seconds" and len(rows) == 1 + 4 + 8
    assert all(np.isfinite(float(r.split(",")[3])) for r in rows[1:])
    assert json.loads((out / "train_config.json").read_text())["steps"] == [1, 3]
    newest = checkpoints.latest(out)
    assert json.loads((newest / "position.json").read_text())["round"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [newest.name]
    targets = json.loads((out / "targets.json").read_text())
    for round_ in ("round 0", "round 1"):
        by_t = targets[round_]["by_T"]
        assert set(by_t) == {"1", "3"}
        for row in by_t.values():  # all converged exactly when the worst residual is under the tolerance
            assert (row["converged"] == 1.0) == (row["max_residual"] < targets["tolerance"])
            assert row["median_residual"] <= row["max_residual"]
            assert 1 <= row["mean_evaluations"] <= targets["max_evaluations"] == RECIPE["max_evaluations"]
        assert len(targets[round_]["steps"]) == 1 + 3
    trained = _weights(out / "solver")
    assert trained["proj_out.weight"].abs().sum() > 0  # moved off the zero (warm_fixed_point) start

    main(
        [
            *("invert", str(images / "coffee.png"), "--model", str(tiny_sd3_dir), "--method", "deepinv"),
            *("--solver", str(out / "solver"), "--steps", "3", "--out", str(tmp_path / "inv")),
        ]
    )
    record = json.loads((tmp_path / "inv" / "coffee.metrics.json").read_text())
    assert record["method"] == "deepinv" and record["nfe_inversion"] == 3
    assert record["method_options"]["solver"] == str(out / "solver")


def test_targets_are_the_fixed_points_of_the_steps_taken(tiny_sd3_dir: Path) -> None:
    """collect_steps records what the solver saw and, per step, f* with f* = v(z + h·f*, σ_next)."""
    from fastinv.solver.presets import build_solver
    from fastinv.solver.steps import collect_steps

    model = fastinv.load(tiny_sd3_dir, device="cpu").model
    cond = model.conditioning("")
    x0 = torch.randn(2, SD3_LATENT_CHANNELS, 8, 8, generator=torch.Generator().manual_seed(0))
    sigmas = model.sigmas(3, (8, 8))
    solver = fastinv.solver.TorchSolver(build_solver("sd3-medium", **RECIPE["solver"]).eval())
    steps = collect_steps(
        model.velocity, solver, x0, torch.tensor([5, 7]), sigmas, cond, tolerance=1e-6, max_evaluations=30
    )
    assert len(steps) == 6 and steps.crop.tolist() == [5, 7] * 3 and steps.k.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(steps.f_prev[:2], torch.zeros(2, SD3_LATENT_CHANNELS, 8, 8))
    torch.testing.assert_close(steps.f_prev[2:4], steps.v[0:2])  # f_prev = the last ε̂ (= v, untrained)
    h = (steps.sigma_next - steps.sigma).view(-1, 1, 1, 1)
    g = model.velocity(steps.z + h * steps.target, steps.sigma_next, cond)
    assert (steps.residual < 1e-5).all()
    torch.testing.assert_close(g, steps.target, rtol=1e-4, atol=1e-4)
    # the rollout went on with the untrained solver's ε̂ = v: the next step starts at z + h·v
    torch.testing.assert_close(steps.z[2:4], steps.z[0:2] + h[0:2] * steps.v[0:2])


def test_paper_design_trains_with_the_same_trainer(tiny_sd3_dir: Path, images: Path, tmp_path: Path) -> None:
    model = fastinv.load(tiny_sd3_dir, device="cpu").model
    config = SolverTrainConfig.read(DEFAULT_RECIPE, RECIPE | PAPER | {"rounds": 1, "steps": [2]})
    summary = train_solver(model, config, images, tmp_path / "paper")
    assert summary["optimizer_steps"] == 4
    solver = fastinv.solver.load_solver(tmp_path / "paper" / "solver")
    assert not solver.warm_start
    inv = fastinv.load(tiny_sd3_dir, device="cpu", solver=tmp_path / "paper" / "solver")
    res = inv.invert(images / "coffee.png", method="deepinv", steps=3, prompt="a cup")
    assert res.result.nfe == 3 and torch.isfinite(res.z_T).all()


@pytest.mark.parametrize("stop_in", ["collect", "fit"])
def test_resume_continues_exactly(
    tiny_sd3_dir: Path,
    images: Path,
    whole_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop_in: str,
) -> None:
    """Stopped in round 1 (while collecting, or after a fit epoch) and resumed, a run ends with the
    uninterrupted run's weights and log."""
    model = fastinv.load(tiny_sd3_dir, device="cpu").model
    config = SolverTrainConfig.read(DEFAULT_RECIPE, RECIPE)
    whole_dir = whole_run

    target, calls = ("save_steps", 3) if stop_in == "collect" else ("save", 4)
    original, seen = getattr(checkpoints, target), []

    def save_then_stop(*args: object) -> None:
        original(*args)
        seen.append(1)
        if len(seen) == calls:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, target, save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_solver(model, config, images, tmp_path / "split")
    monkeypatch.setattr(checkpoints, target, original)
    with pytest.raises(FastinvError, match="already holds a checkpoint: pass --resume"):
        train_solver(model, config, images, tmp_path / "split")
    train_solver(model, config, images, tmp_path / "split", resume=True)

    whole, split = _weights(whole_dir / "solver"), _weights(tmp_path / "split" / "solver")
    for name, tensor in whole.items():
        torch.testing.assert_close(split[name], tensor, rtol=0, atol=1e-6, msg=name)

    def losses(run: Path) -> list[list[str]]:  # the seconds column differs between runs
        return [row.split(",")[:4] for row in (run / "loss.csv").read_text().splitlines()]

    assert losses(tmp_path / "split") == losses(whole_dir)


def test_resume_without_a_checkpoint_is_an_error(tiny_sd3_dir: Path, images: Path, tmp_path: Path) -> None:
    model = fastinv.load(tiny_sd3_dir, device="cpu").model
    config = SolverTrainConfig.read(DEFAULT_RECIPE, RECIPE)
    with pytest.raises(FastinvError, match="--resume: no complete checkpoint"):
        train_solver(model, config, images, tmp_path / "none", resume=True)


def test_an_incomplete_checkpoint_is_never_used(tmp_path: Path) -> None:
    """A checkpoint folder without its COMPLETE marker (killed while writing) is skipped."""
    root = tmp_path / checkpoints.FOLDER
    for number, complete in ((3, True), (4, False)):
        folder = root / f"{number:06d}"
        folder.mkdir(parents=True)
        if complete:
            (folder / checkpoints.COMPLETE).write_text("")
    (root / ".000005.abcd.tmp").mkdir()
    assert checkpoints.latest(tmp_path) == root / "000003"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"depth": 3}, "unknown \\['depth'\\]"),
        ({"tolerance": 0}, "tolerance must be a number in \\(0"),
        ({"tolerance": float("nan")}, "tolerance must be a number"),
        ({"steps": [0, 4]}, "steps must be a list of integers"),
        ({"steps": 4}, "steps must be a list"),
        ({"epochs": 1.5}, "epochs must be an integer"),
        ({"rounds": True}, "rounds must be an integer"),
        ({"lr": -1}, "lr must be a number"),
        ({"crop_scale": [3, 1]}, "crop_scale must be"),
        ({"solver": 3}, "solver must be an object"),
    ],
)
def test_recipe_errors(override: dict, message: str) -> None:
    with pytest.raises(FastinvError, match=message):
        SolverTrainConfig.read(DEFAULT_RECIPE, override)


def test_unreadable_recipe(tmp_path: Path) -> None:
    with pytest.raises(FastinvError, match="cannot read training config"):
        SolverTrainConfig.read(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "image folder not found"),
        (
            ["--set", "size=null"],
            "has no fixed resolution: set the crop size, e.g. --set size=512 (a multiple of 16)",
        ),
        (["--set", "size=40"], "training crop size 40 is not a multiple of 16"),
        (
            [
                "--set",
                "size=64",
                "--images",
                "skimage",
                "--set",
                "preset=default-model",
                "--set",
                "solver={}",
            ],
            "the solver does not fit this model: latent channels 3 vs the model's 4 "
            "(preset 'default-model': choose another with --set preset=...)",
        ),
    ],
)
def test_bad_training_input(
    args: list[str],
    message: str,
    tiny_sd3_dir: Path,
    recipe_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    base = ["train", "--model", str(tiny_sd3_dir), "--images", str(tmp_path / "none"), "--out", str(tmp_path)]
    base += ["--config", str(recipe_file)]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, *args])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_torchrun_two_processes_gloo(
    tiny_sd3_dir: Path, images: Path, recipe_file: Path, tmp_path: Path
) -> None:
    """DDP on CPU: world size 2, each rank trains on its shard; rank 0 writes the solver."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "fastinv", "train", "--model", str(tiny_sd3_dir), "--images", str(images)]
    command += ["--out", str(out), "--config", str(recipe_file), "--set", "rounds=1", "--device", "cpu"]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    log = json.loads((out / "log.json").read_text())
    assert log["world_size"] == 2 and log["crops"] == 4 and log["optimizer_steps"] == 4  # 2 crops × 4 / 2
    assert fastinv.solver.load_solver(out / "solver").network.config.in_channels == SD3_LATENT_CHANNELS


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("random", "cannot resume from"),
        ("metadata", "cannot resume from .*: trainer.safetensors: malformed optimiser metadata"),
        ("foreign", "cannot resume from .*: loaded state dict"),
        ("older", "an older fastinv wrote it \\(trainer.pt, a pickle, is no longer read\\)"),
        ("recipe", "the run was started with another recipe \\(epochs 1 → 2\\)"),
        ("position", "cannot resume from"),
    ],
)
def test_resume_failures_are_one_line(
    tiny_sd3_dir: Path, images: Path, whole_run: Path, tmp_path: Path, damage: str, message: str
) -> None:
    run = tmp_path / "run"
    shutil.copytree(whole_run, run)
    checkpoint = checkpoints.latest(run)
    recipe = RECIPE
    trainer = checkpoint / checkpoints.TRAINER
    if damage == "random":
        trainer.write_bytes(os.urandom(256))
    elif damage == "older":  # what checkpoints held before trainer.safetensors
        trainer.rename(checkpoint / "trainer.pt")
    elif damage in ("metadata", "foreign"):  # param groups that are not objects; another optimiser's groups
        groups = [1, 2] if damage == "metadata" else [{"params": [0]}]
        tensors = load_file(trainer)
        save_file(tensors, str(trainer), metadata={"param_groups": json.dumps(groups), "scalars": "{}"})
    elif damage == "recipe":
        recipe = RECIPE | {"epochs": 2}
    else:
        (checkpoint / "position.json").write_text('{"round": "x", "nonsense": 1}')
    model = fastinv.load(tiny_sd3_dir, device="cpu").model
    config = SolverTrainConfig.read(DEFAULT_RECIPE, recipe | {"seed": 0})
    with pytest.raises(FastinvError, match=message):
        train_solver(model, config, images, run, resume=True)


def test_an_existing_solver_is_replaced_only_with_force(
    tiny_sd3_dir: Path, images: Path, recipe_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    (out / "solver").mkdir(parents=True)
    (out / "solver" / "notes.txt").write_text("an earlier solver")
    base = ["train", "--model", str(tiny_sd3_dir), "--images", str(images), "--out", str(out)]
    code, _, err = cli([*base, "--config", str(recipe_file)])
    assert code == 2 and "exists: pass --force" in err
    assert [f.name for f in (out / "solver").iterdir()] == ["notes.txt"]  # left as it was
    code, _, err = cli([*base, "--config", str(recipe_file), "--force"])
    assert code == 0, err
    assert "notes.txt" not in {f.name for f in (out / "solver").iterdir()}  # replaced whole, not mixed
    assert _weights(out / "solver")["proj_out.weight"].abs().sum() > 0


def test_trainer_state_round_trips_with_its_types(tmp_path: Path) -> None:
    """The optimiser's groups come back equal, types included (AdamW's betas stay a tuple: JSON has none),
    and so do its state tensors and the generator's state."""
    network = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-3, betas=(0.8, 0.95))
    network(torch.randn(4, 3)).square().sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(7)
    checkpoints.save_trainer_state(tmp_path / checkpoints.TRAINER, optimizer, generator)
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=5.0)
    other = torch.Generator().manual_seed(8)
    checkpoints.load_trainer_state(tmp_path / checkpoints.TRAINER, fresh, other)
    theirs, mine = optimizer.state_dict(), fresh.state_dict()
    assert mine["param_groups"] == theirs["param_groups"]
    assert type(fresh.param_groups[0]["betas"]) is tuple
    for param, entries in theirs["state"].items():
        for key, value in entries.items():
            assert torch.equal(torch.as_tensor(mine["state"][param][key]), torch.as_tensor(value)), key
    assert torch.equal(other.get_state(), generator.get_state())
