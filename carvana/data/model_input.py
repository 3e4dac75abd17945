"""A photo at the covered size -> the model's input: mirror padding (the overlap-tile strategy) and crops.

Every photo (and mask) is resized to the geometry's *covered size*, the size the network's output
covers. For the same-size UNet1024 that is the input size. For the paper's valid-convolution U-Net
the photo is then mirror-padded by `geometry.border` pixels on each side to make the larger input:
the network's output then lines up pixel for pixel with the resized photo and mask, and the border
it eats away is filled with a reflection of real content instead of zeros.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from carvana.core.errors import ConfigError
from carvana.core.geometry import Geometry, Margins, Size


def mirror_pad(image: np.ndarray, border: int | Margins) -> np.ndarray:
    """Pad by `border` px on every side (or by each of `Margins`' sides) with the image's reflection
    (edge pixel not repeated)."""
    margins = border if isinstance(border, Margins) else Margins(border, border, border, border)
    if margins.none:
        return image
    return cv2.copyMakeBorder(image, *margins, cv2.BORDER_REFLECT_101)


def photo_input(image: np.ndarray, geometry: Geometry) -> torch.Tensor:
    """An RGB uint8 (H, W, 3) photo at the covered size -> the uint8 (3, H_in, W_in) model input, mirror-padded."""
    padded = mirror_pad(image, geometry.input_margins)
    expected = (geometry.input_size.height, geometry.input_size.width)
    if padded.shape[:2] != expected:  # a photo not at the covered size
        raise ConfigError(
            f"geometry {geometry}: a {image.shape[1]}x{image.shape[0]} photo padded to the input makes "
            f"{padded.shape[1]}x{padded.shape[0]}, not {geometry.input_size}"
        )
    return torch.from_numpy(np.ascontiguousarray(padded.transpose(2, 0, 1)))


def random_crop(image: np.ndarray, mask: np.ndarray, size: Size, margins: Margins,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A `size` window, drawn uniformly, of a photo and its mask mirror-padded by `margins` (the padded
    photo the model predicts whole); the same window of both."""
    image, mask = mirror_pad(image, margins), mirror_pad(mask, margins)
    height, width = image.shape[:2]
    if size.width > width or size.height > height:
        raise ConfigError(f"crop {size}: larger than the {width}x{height} padded photo")
    top = int(rng.integers(height - size.height + 1))
    left = int(rng.integers(width - size.width + 1))
    window = (slice(top, top + size.height), slice(left, left + size.width))
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(mask[window])
