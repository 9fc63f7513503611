"""Shared fixtures: tiny random-weight SD3 / FLUX folders written once per test session.

The Hugging Face offline switches are set before anything imports ``huggingface_hub`` (it reads them at
import time), so no test can reach the network.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import pytest
from tiny_models import make_tiny_flux, make_tiny_sd3


@pytest.fixture(scope="session")
def tiny_sd3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Full SD3 pipeline folder: transformer, VAE, scheduler, 2x CLIP + T5 with their tokenizers."""
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3"))


@pytest.fixture(scope="session")
def tiny_sd3_transformer_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SD3 folder with transformer, VAE and scheduler; the text components are ``null`` entries."""
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3_transformer_only"), text_encoders=False)


@pytest.fixture(scope="session")
def tiny_sd3_pixel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Pixel-space SD3 folder: 3-channel transformer and scheduler only (no VAE, no text components)."""
    return make_tiny_sd3(tmp_path_factory.mktemp("tiny_sd3_pixel"), text_encoders=False, pixel_space=True)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLUX.1-schnell-like folder (no guidance embedding) with CLIP + T5."""
    return make_tiny_flux(tmp_path_factory.mktemp("tiny_flux"))


@pytest.fixture(scope="session")
def tiny_flux_dev_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FLUX.1-dev-like folder (``guidance_embeds=True``) with CLIP + T5."""
    return make_tiny_flux(tmp_path_factory.mktemp("tiny_flux_dev"), guidance_embeds=True)
