"""The two U-Nets, by name: `build_model("unet1024", width=0.25)`.

A checkpoint stores the config's `model` and `width`; `build_model` with the same two values gives
a net with the same parameter names and shapes.
"""
from __future__ import annotations

from typing import Callable

from carvana.errors import ConfigError
from carvana.geometry import UNET1024, UNET_ORIGINAL
from carvana.models.base import SegmentationNet
from carvana.models.parts import scale_channels
from carvana.models.unet1024 import UNet1024
from carvana.models.unet_original import UNetOriginal

PAPER_BASE_CHANNELS = 64


def _build_unet_original(width: float) -> SegmentationNet:
    return UNetOriginal(base_channels=scale_channels(PAPER_BASE_CHANNELS, width))


def _build_unet1024(width: float) -> SegmentationNet:
    return UNet1024(width=width)


MODEL_BUILDERS: dict[str, Callable[[float], SegmentationNet]] = {
    UNET_ORIGINAL: _build_unet_original,
    UNET1024: _build_unet1024,
}


def build_model(name: str, width: float = 1.0) -> SegmentationNet:
    """A freshly initialised net; `width` scales its channels (1.0 = the published widths)."""
    if name not in MODEL_BUILDERS:
        raise ConfigError(f"model {name!r}: unknown (choose from {', '.join(MODEL_BUILDERS)})")
    if not width > 0:
        raise ConfigError(f"width {width}: must be positive")
    return MODEL_BUILDERS[name](width)


__all__ = ["MODEL_BUILDERS", "SegmentationNet", "UNet1024", "UNetOriginal", "build_model"]
