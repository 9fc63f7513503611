"""Masked (local) edits on the shipped model: outside the mask the latents follow the source's inversion
trajectory, inside the edit is the unmasked edit's; the mask rules of `fastinv edit --mask`."""

from __future__ import annotations

import inspect
import json
import math
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cli_runner import cli
from PIL import Image

import fastinv
from fastinv.errors import FastinvError
from fastinv.masks import DEFAULT_FEATHER, MAX_FEATHER, check_feather, feathered, region_psnr
from fastinv.sampling import SourceTrajectory, sample_euler
from fastinv.training.photos import CAPTIONS, load_photo


@pytest.fixture(scope="module")
def inverter() -> fastinv.Inverter:
    return fastinv.load(device="cpu")


@pytest.fixture(scope="module")
def square() -> np.ndarray:
    """A 64×64 mask whose central 32×32 square is editable."""
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    return mask


def test_feather_ramps_inside_the_edge_only() -> None:
    binary = torch.zeros(1, 1, 12, 12)
    binary[..., 2:10, 2:10] = 1
    weights = feathered(binary, 3)
    assert torch.equal(weights[binary == 0], torch.zeros(int((binary == 0).sum())))
    row = weights[0, 0, 6, :7].tolist()
    assert row == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1, 1])
    assert torch.equal(feathered(binary, 0), binary)
    edge = torch.zeros(1, 1, 6, 6)
    edge[..., :, :3] = 1  # touching the image's left border: the border is not an edge
    assert feathered(edge, 2)[0, 0, 3].tolist() == pytest.approx([1, 1, 0.5, 0, 0, 0])


def test_a_feather_wider_than_the_mask_costs_no_more_than_its_depth() -> None:
    """Past the mask's depth the ramp is complete: a wide feather is d/radius, computed in as many erosions as
    the mask is deep; a feather over MAX_FEATHER is refused."""
    binary = torch.zeros(1, 1, 64, 64)
    binary[..., 8:40, 4:60] = 1  # 16 px deep at most
    erosions = []
    pool = F.max_pool2d

    def counted(*args: object, **kwargs: object) -> torch.Tensor:
        erosions.append(1)
        return pool(*args, **kwargs)

    with mock.patch.object(F, "max_pool2d", counted):
        wide = feathered(binary, MAX_FEATHER)
    assert len(erosions) == 16
    assert torch.allclose(wide * MAX_FEATHER, feathered(binary, 20) * 20, atol=1e-3)
    check_feather(MAX_FEATHER)
    with pytest.raises(FastinvError, match=rf"in \[0, {MAX_FEATHER}\], got {MAX_FEATHER + 1}"):
        check_feather(MAX_FEATHER + 1)


def test_blend_keeps_the_source_where_the_mask_is_zero(inverter: fastinv.Inverter) -> None:
    """m = 0: every step lands on the source trajectory (so the end is x0 exactly); m = 1: the plain edit."""
    inversion = inverter.invert(load_photo("coffee"), method="euler", steps=3, keep_trajectory=True)
    cond = inverter.model.conditioning(CAPTIONS["chelsea"])
    velocity, trajectory = inverter.model.velocity, inversion.result.trajectory
    zeros, ones = torch.zeros(1, 1, 64, 64), torch.ones(1, 1, 64, 64)
    kept, _ = sample_euler(
        velocity, inversion.z_T, inversion.sigmas, cond, source=SourceTrajectory(zeros, trajectory)
    )
    assert torch.equal(kept, inversion.x0)
    plain, _ = sample_euler(velocity, inversion.z_T, inversion.sigmas, cond)
    free, _ = sample_euler(
        velocity, inversion.z_T, inversion.sigmas, cond, source=SourceTrajectory(ones, trajectory)
    )
    assert torch.equal(free, plain)


def test_outside_the_mask_stays_within_the_reconstructions_fidelity(
    inverter: fastinv.Inverter, square: np.ndarray
) -> None:
    """The measured requirement (benchmarks/masked_edit.py for 4 photos): DeepInv, 25 steps, the default η."""
    inversion = inverter.invert(
        load_photo("chelsea"), prompt=CAPTIONS["chelsea"], method="deepinv", steps=25, keep_trajectory=True
    )
    reconstruction = inverter.reconstruct(inversion)
    target = CAPTIONS["coffee"]
    masked = inverter.edit(inversion, target_prompt=target, mask=square)
    unmasked = inverter.edit(inversion, target_prompt=target)
    weights = masked.mask.weights
    outside, core = weights == 0, weights == 1
    rec, local, full = reconstruction.pixels, masked.edited.pixels, unmasked.edited.pixels
    assert region_psnr(local, rec, outside) >= 40.0
    assert region_psnr(local, inversion.image.pixels, outside) == float("inf")  # x0 itself
    assert region_psnr(full, rec, core) < 30.0  # the edit changes the core ...
    assert (
        region_psnr(local, full, core) > region_psnr(local, rec, core) + 4.0
    )  # ... and the masked one follows


def test_masked_edit_of_an_inversion_needs_its_trajectory(
    inverter: fastinv.Inverter, square: np.ndarray
) -> None:
    inversion = inverter.invert(load_photo("coffee"), method="euler", steps=2)
    with pytest.raises(FastinvError, match="keep_trajectory=True"):
        inverter.edit(inversion, target_prompt="a cat", mask=square)
    with pytest.raises(FastinvError, match="mask feather"):
        inverter.edit(inversion, target_prompt="a cat", mask=square, mask_feather=-2)


def test_cli_masked_edit_resizes_the_mask_and_keeps_the_outside(tmp_path: Path) -> None:
    Image.fromarray(load_photo("coffee")).resize((96, 64)).save(tmp_path / "cup.png")
    mask = np.zeros((32, 48), np.uint8)  # half the image's size: resized, with a note
    mask[8:24, 12:36] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "out"
    args = ["edit", str(tmp_path / "cup.png"), "--target-prompt", CAPTIONS["chelsea"], "--steps", "4"]
    code, stdout, stderr = cli([*args, "--mask", str(tmp_path / "mask.png"), "--out", str(out)])
    assert code == 0, stderr
    printed = " ".join(stdout.split())  # rich wraps long lines
    assert "mask.png is 48×32 px, resized to the image's 96×64" in printed
    assert "outside the mask" in printed
    record = json.loads((out / "cup.edit.json").read_text())
    assert record["mask"]["feather"] == DEFAULT_FEATHER
    source, edit = (np.asarray(Image.open(out / f"cup.{name}.png")) for name in ("source", "edit"))
    # resized ×2 and center-cropped 96×64 → 64×64 as the image: the editable box is rows 16–47, columns 8–55
    outside = np.ones((64, 64), bool)
    outside[14:50, 6:58] = False  # with a 2 px margin for the bilinear resize
    assert np.array_equal(source[outside], edit[outside])
    assert not np.array_equal(source[20:44, 12:52], edit[20:44, 12:52])
    scores = record["metrics"]["mask_vs_reconstruction"]  # at 4 steps the reconstruction itself is ~22 dB
    assert set(scores) == {"editable_fraction", "psnr_outside", "psnr_inside", "psnr_core"}
    assert scores["editable_fraction"] == 32 * 48 / 64**2  # the box above; the feather ramps inside it
    assert all(math.isfinite(scores[name]) for name in ("psnr_outside", "psnr_inside", "psnr_core"))
    assert inspect.signature(fastinv.cli.edit).parameters["mask_feather"].default == DEFAULT_FEATHER


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("text", "error: cannot read mask"),
        (0, "marks nothing editable"),
        (255, "marks the whole image editable"),
        (None, "error: mask not found"),
    ],
)
def test_cli_mask_errors(tmp_path: Path, content: str | int | None, message: str) -> None:
    Image.fromarray(load_photo("coffee")).save(tmp_path / "cup.png")
    mask = tmp_path / "mask.png"
    if content == "text":
        mask.write_text("not an image")
    elif content is not None:
        Image.fromarray(np.full((64, 64), content, np.uint8)).save(mask)
    args = ["edit", str(tmp_path / "cup.png"), "--target-prompt", "x", "--steps", "2", "--mask", str(mask)]
    code, stdout, stderr = cli([*args, "--out", str(tmp_path / "out")])
    lines = [line for line in (stdout + stderr).splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and message in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_masked_edit_on_a_vae_model_keeps_the_latents_outside(
    tiny_sd3_dir: Path, square: np.ndarray
) -> None:
    """A VAE model (the tiny SD3: latents at 1/f of the pixels): the mask is area-averaged to latent
    size; the latents of weight 0 end on the source's x0 exactly, those of weight 1 take the edit."""
    inverter = fastinv.load(tiny_sd3_dir, device="cpu")
    inversion = inverter.invert(
        load_photo("coffee"), prompt="a cup", method="euler", steps=3, keep_trajectory=True
    )
    masked = inverter.edit(inversion, target_prompt="a cat", mask=square)
    x0, local = inversion.x0, masked.edited.latents
    weights = masked.mask.at(tuple(x0.shape[-2:])).expand_as(x0)
    assert x0.shape[-1] < square.shape[-1]  # latent size: the mask really is reduced
    outside, core = weights == 0, weights == 1
    assert outside.any() and core.any()
    assert torch.equal(local[outside], x0[outside])
    assert not torch.allclose(local[core], x0[core], atol=1e-3)
