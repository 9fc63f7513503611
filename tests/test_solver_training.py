"""`fastinv train`: the self-supervised solver trainer on a tiny SD3 folder (checkpoints, resume, DDP)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from tiny_models import SD3_JOINT_DIM, SD3_LATENT_CHANNELS, SD3_POOLED_DIM

import fastinv
from fastinv.cli import main
from fastinv.errors import FastinvError
from fastinv.solver import training
from fastinv.solver.training import DEFAULT_RECIPE, SolverTrainConfig, train_solver

RECIPE = {
    "preset": "sd3-medium",
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
    "size": 64,
    "crops_per_image": 2,
    "batch_size": 2,
    "rounds": 2,
    "curriculum": [[1, 1], [3, 1]],
    "log_every": 2,
    "lr": 1e-3,
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


def test_train_cli_writes_a_solver_that_deepinv_uses(
    tiny_sd3_dir: Path, images: Path, recipe_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    main(
        [
            *("train", "--model", str(tiny_sd3_dir), "--images", str(images), "--out", str(out)),
            *("--config", str(recipe_file), "--set", "seed=3"),
        ]
    )
    assert "trained 16 steps" in capsys.readouterr().out  # 2 rounds × (1 + 3) steps × 2 batches of 2 crops
    assert {p.name for p in out.iterdir()} >= {"solver", "checkpoint", "loss.csv", "loss.png", "log.json"}
    rows = (out / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,round,T,epoch,loss,seconds" and len(rows) == 1 + 8
    assert all(np.isfinite(float(r.split(",")[4])) for r in rows[1:])
    assert json.loads((out / "train_config.json").read_text())["seed"] == 3
    assert json.loads((out / "checkpoint" / "position.json").read_text())["round"] == 2
    trained = _weights(out / "solver")
    assert trained["proj_out.weight"].abs().sum() > 0  # moved off the zero (plain-inversion) start

    main(
        [
            *("invert", str(images / "coffee.png"), "--model", str(tiny_sd3_dir), "--method", "deepinv"),
            *("--solver", str(out / "solver"), "--steps", "3", "--out", str(tmp_path / "inv")),
        ]
    )
    record = json.loads((tmp_path / "inv" / "coffee.metrics.json").read_text())
    assert record["method"] == "deepinv" and record["nfe_inversion"] == 3
    assert record["method_options"]["solver"] == str(out / "solver")


def test_resume_continues_exactly(
    tiny_sd3_dir: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its second checkpoint and resumed, a run ends with the uninterrupted run's weights."""
    model = fastinv.load(tiny_sd3_dir, device="cpu").model
    config = SolverTrainConfig.read(DEFAULT_RECIPE, RECIPE)
    train_solver(model, config, images, tmp_path / "whole")

    save, saved = training._save_checkpoint, []

    def save_then_stop(*args: object) -> None:
        save(*args)
        saved.append(1)
        if len(saved) == 3:  # round 1 has started: the pseudo-label solver is part of the state
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "_save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        train_solver(model, config, images, tmp_path / "split")
    monkeypatch.setattr(training, "_save_checkpoint", save)
    with pytest.raises(FastinvError, match="already holds a checkpoint: pass --resume"):
        train_solver(model, config, images, tmp_path / "split")
    train_solver(model, config, images, tmp_path / "split", resume=True)

    whole, split = _weights(tmp_path / "whole" / "solver"), _weights(tmp_path / "split" / "solver")
    for name, tensor in whole.items():
        torch.testing.assert_close(split[name], tensor, rtol=0, atol=1e-6, msg=name)

    def losses(run: str) -> list[list[str]]:  # the seconds column differs between runs
        return [row.split(",")[:5] for row in (tmp_path / run / "loss.csv").read_text().splitlines()]

    assert losses("split") == losses("whole")


def test_recipe_errors(tmp_path: Path) -> None:
    with pytest.raises(FastinvError, match="unknown \\['depth'\\]"):
        SolverTrainConfig.read(DEFAULT_RECIPE, {"depth": 3})
    with pytest.raises(FastinvError, match="inner_iterations must be >= 1"):
        SolverTrainConfig.read(DEFAULT_RECIPE, {"inner_iterations": 0})
    with pytest.raises(FastinvError, match="curriculum"):
        SolverTrainConfig.read(DEFAULT_RECIPE, {"curriculum": [[0, 1]]})
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
            "the solver does not fit this model: latent channels 3 vs the model's 4; text width 384 vs 48; "
            "pooled width 384 vs 40 (preset 'default-model': choose another with --set preset=...)",
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
    assert log["world_size"] == 2 and log["crops"] == 4 and log["optimizer_steps"] == 4
    assert fastinv.solver.load_solver(out / "solver").network.config.in_channels == SD3_LATENT_CHANNELS
