"""Training-time augmentation of a photo and its mask together (numpy + OpenCV).

Geometric steps (shift, scale, rotate, horizontal flip) move image and mask with the very same
transform, so the label stays on the car. Colour steps (brightness, contrast, hue) touch the image
only. The mask stays exactly 0/1: it is warped with nearest-neighbour sampling.

Borders: a rotated or shrunk photo uncovers pixels outside the original frame. Both image and mask
fill them by reflecting across the edge (BORDER_REFLECT_101), so a reflected piece of car in the
image is labelled car in the mask too. Filling the image by reflection but the mask with zeros
would teach the net that some car pixels are background.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from carvana.errors import ConfigError

_BORDER = cv2.BORDER_REFLECT_101


def affine_matrix(width: int, height: int, angle_degrees: float, scale: float, shift_x: float, shift_y: float) -> np.ndarray:
    """2x3 matrix: rotate and scale about the image centre, then shift by fractions of the size."""
    # Pixel centres run 0..w-1, so the centre of the image is at (w-1)/2; using w/2 would move
    # every rotated image by half a pixel.
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), angle_degrees, scale)
    matrix[0, 2] += shift_x * width
    matrix[1, 2] += shift_y * height
    return matrix


def warp_pair(image: np.ndarray, mask: np.ndarray, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply one affine transform to an image (linear) and its mask (nearest, stays 0/1)."""
    height, width = image.shape[:2]
    warped_image = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=_BORDER)
    warped_mask = cv2.warpAffine(mask, matrix, (width, height), flags=cv2.INTER_NEAREST, borderMode=_BORDER)
    return warped_image, warped_mask


def jitter_colour(image: np.ndarray, brightness: float, contrast: float, hue_shift_degrees: float) -> np.ndarray:
    """RGB uint8 image with brightness added (fraction of 255), contrast scaled about the mean, hue turned."""
    mean = float(image.mean())
    levels = (np.arange(256, dtype=np.float32) - mean) * contrast + mean + brightness * 255.0
    out = cv2.LUT(image, np.clip(np.rint(levels), 0, 255).astype(np.uint8))
    hue_units = int(round(hue_shift_degrees / 2.0))  # OpenCV's 8-bit hue runs 0..179 (2 degrees a step)
    if hue_units % 180:
        hsv = cv2.cvtColor(out, cv2.COLOR_RGB2HSV)
        turn = ((np.arange(256) + hue_units) % 180).astype(np.uint8)
        hsv[..., 0] = cv2.LUT(hsv[..., 0], turn)
        out = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return out


@dataclass(frozen=True)
class Augmenter:
    """Random joint augmentation of (RGB uint8 image, 0/1 uint8 mask) pairs of the same size.

    `p` is the probability of the geometric step (shift + scale + rotate together) and,
    independently, of the colour step (brightness + contrast + hue together); the flip has its
    own probability `hflip`. Ranges are symmetric: shift in fractions of the side, scale as
    1 ± scale, angles in degrees, brightness in fractions of 255, contrast as a factor 1 ± contrast.
    """

    shift: float = 0.0625
    scale: float = 0.1
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
        for name in ("shift", "scale", "brightness", "contrast"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"augmentation {name} {getattr(self, name)}: must be in [0, 1)")
        for name in ("rotate_degrees", "hue_degrees"):
            if not 0.0 <= getattr(self, name) <= 180.0:
                raise ConfigError(f"augmentation {name} {getattr(self, name)}: must be in [0, 180]")

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if image.shape[:2] != mask.shape[:2]:
            raise ValueError(f"image {image.shape[:2]} and mask {mask.shape[:2]} differ in size")
        height, width = mask.shape[:2]
        if rng.random() < self.p:
            matrix = affine_matrix(
                width,
                height,
                angle_degrees=rng.uniform(-self.rotate_degrees, self.rotate_degrees),
                scale=rng.uniform(1.0 - self.scale, 1.0 + self.scale),
                shift_x=rng.uniform(-self.shift, self.shift),
                shift_y=rng.uniform(-self.shift, self.shift),
            )
            image, mask = warp_pair(image, mask, matrix)
        if rng.random() < self.hflip:
            image, mask = cv2.flip(image, 1), cv2.flip(mask, 1)
        if rng.random() < self.p:
            image = jitter_colour(
                image,
                brightness=rng.uniform(-self.brightness, self.brightness),
                contrast=rng.uniform(1.0 - self.contrast, 1.0 + self.contrast),
                hue_shift_degrees=rng.uniform(-self.hue_degrees, self.hue_degrees),
            )
        return np.ascontiguousarray(image), np.ascontiguousarray(mask)
