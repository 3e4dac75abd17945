"""Training-time augmentation of a photo and its mask together, on Albumentations.

Only the ways the studio photos really vary: a shift, zoom and small turn in one `A.Affine` warp
(probability `p`), a left/right flip (`hflip`), and brightness, contrast and hue (`p`, image only).
Image and mask get the same warp; a 0/1 mask is warped nearest-neighbour (it stays 0/1), a soft mask
linearly like the photo. Uncovered borders are reflected in both, so reflected car is labelled car.
Every draw reads the caller's numpy Generator, so a run is a function of (seed, epoch).
Albumentations is imported on first use (prediction never pays for it), its update check switched off.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import cv2
import numpy as np

from carvana.core.errors import ConfigError

if TYPE_CHECKING:
    import albumentations

_BORDER = cv2.BORDER_REFLECT_101
_OPENCV_HUE_DEGREES_PER_UNIT = 2.0  # OpenCV's 8-bit hue runs 0..179, which HueSaturationValue shifts


@dataclass(frozen=True)
class Augmenter:
    """Random joint augmentation of (RGB uint8 image, uint8 mask: 0/1 or area shares) pairs of the same size.

    `p` is the probability of the geometric step (shift + scale + rotate together) and,
    independently, of the colour step (brightness + contrast + hue together); the flip has its
    own probability `hflip`. Ranges are symmetric except the zoom: shift in fractions of the side,
    zoom from 1 - zoom_out to 1 + scale (the same in x and y), angles in degrees, brightness in fractions of 255 added,
    contrast as a gain 1 ± contrast on the pixel values (Albumentations' RandomBrightnessContrast:
    x * (1 + c) + b * 255).

    The zoom reaches further out than in: the studio frames most cars to fill the photo, but some
    further away, with the turntable's edge and the floor beyond it in view; a net that never saw a
    smaller car takes that floor for car. Zooming out to 0.7 shows it such frames
    (docs/benchmarks.md, "What was tried").
    """

    shift: float = 0.0625
    scale: float = 0.1  # zoom in up to 1 + scale
    zoom_out: float = 0.3  # zoom out down to 1 - zoom_out
    rotate_degrees: float = 10.0
    hflip: float = 0.5
    brightness: float = 0.1
    contrast: float = 0.1
    hue_degrees: float = 10.0
    p: float = 0.75

    def __post_init__(self) -> None:
        for name in ("hflip", "p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augmentation {name} {getattr(self, name)}: a probability must be in [0, 1]")
        for name in ("shift", "scale", "zoom_out", "brightness", "contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"augmentation {name} {getattr(self, name)}: must be in [0, 1)")
        for name in ("rotate_degrees", "hue_degrees"):
            if not 0.0 <= getattr(self, name) <= 180.0:
                raise ConfigError(f"augmentation {name} {getattr(self, name)}: must be in [0, 180]")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                 soft_mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The augmented pair; `soft_mask`: `mask` holds area shares 0..255 rather than 0/1."""
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        pipeline = _pipeline(self, soft_mask)
        # Albumentations draws from a numpy Generator and a Python Random; both are ours for this call.
        pipeline.set_random_state(rng, random.Random(int(rng.integers(2**63))))
        out = pipeline(image=image, mask=mask)
        return np.ascontiguousarray(out["image"]), np.ascontiguousarray(out["mask"])


@lru_cache(maxsize=8)
def _pipeline(settings: Augmenter, soft_mask: bool) -> "albumentations.Compose":
    """The Albumentations pipeline for `settings` and a mask of this kind, built once per process.

    Building it validates every step, so it is not rebuilt per call.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as A

    shift, scale, angle = settings.shift, settings.scale, settings.rotate_degrees
    hue_units = settings.hue_degrees / _OPENCV_HUE_DEGREES_PER_UNIT
    return A.Compose(
        [
            A.Affine(
                translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
                scale=(1.0 - settings.zoom_out, 1.0 + scale),
                keep_ratio=True,
                rotate=(-angle, angle),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_LINEAR if soft_mask else cv2.INTER_NEAREST,
                border_mode=_BORDER,
                p=settings.p,
            ),
            A.HorizontalFlip(p=settings.hflip),
            A.Sequential(
                [
                    A.RandomBrightnessContrast(
                        brightness_limit=(-settings.brightness, settings.brightness),
                        contrast_limit=(-settings.contrast, settings.contrast),
                        brightness_by_max=True,
                        p=1.0,
                    ),
                    A.HueSaturationValue(
                        hue_shift_limit=(-hue_units, hue_units), sat_shift_limit=(0, 0), val_shift_limit=(0, 0), p=1.0
                    ),
                ],
                p=settings.p,
            ),
        ],
        strict=True,
    )
