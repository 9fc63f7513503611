"""The photos that scikit-image ships in its wheel, with the captions used to train the default model.

Nothing else is used for training. Six photos are held out of training to measure inversion on unseen images.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from skimage import data

CAPTIONS: dict[str, str] = {
    "astronaut": "an astronaut in a white spacesuit in front of a flag",
    "brick": "a grey brick wall",
    "cell": "a microscope image of a cell",
    "clock": "a grey wall clock",
    "grass": "a close-up of grass",
    "hubble_deep_field": "a deep space image full of galaxies",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "microaneurysms": "a grey retina scan with small dots",
    "moon": "the grey surface of the moon with craters",
    "page": "a page of printed text",
    "retina": "a red retina photo with blood vessels",
    "motorcycle_left": "a motorcycle in a workshop",
    "motorcycle_right": "a motorcycle in a workshop seen from the right",
    "text": "grey text painted on a wall",
    "chelsea": "a ginger cat",
    "coffee": "a cup of coffee on a saucer",
    "rocket": "a rocket on a launch pad",
    "camera": "a black and white photo of a cameraman",
    "coins": "old coins on a dark background",
    "gravel": "grey gravel",
}
HELD_OUT = ("chelsea", "coffee", "rocket", "camera", "coins", "gravel")
TRAIN = tuple(name for name in CAPTIONS if name not in HELD_OUT)

_LOADERS: dict[str, Callable[[], np.ndarray]] = {
    "motorcycle_left": lambda: data.stereo_motorcycle()[0],
    "motorcycle_right": lambda: data.stereo_motorcycle()[1],
}


def load_photo(name: str) -> np.ndarray:
    """The skimage photo `name` as uint8 RGB [H, W, 3] (grey photos replicated to three channels)."""
    image = _LOADERS[name]() if name in _LOADERS else getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def photo_tensor(name: str) -> torch.Tensor:
    """The photo as float32 [3, H, W] in [-1, 1]."""
    return torch.from_numpy(load_photo(name)).permute(2, 0, 1).float() / 127.5 - 1
