"""The two U-Nets, by name: `build_model("unet1024", width=0.25)`.

A checkpoint stores the config's `model` and `width`; `build_model` with the same two values gives
a net with the same parameter names and shapes. The nets themselves are in `carvana.models.unet1024`
and `carvana.models.unet_original`; importing this package does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from carvana.core.errors import ConfigError
from carvana.models.specs import MODEL_NAMES, MODEL_SPECS, ModelSpec, model_spec

if TYPE_CHECKING:
    from carvana.models.base import SegmentationNet


def build_model(name: str, width: float = 1.0) -> "SegmentationNet":
    """A freshly initialised net; `width` scales its channels (1.0 = the published widths)."""
    spec = model_spec(name)
    if not width > 0:
        raise ConfigError(f"width {width}: must be positive")
    return spec.builder(width)


__all__ = ["MODEL_NAMES", "MODEL_SPECS", "ModelSpec", "build_model", "model_spec"]
