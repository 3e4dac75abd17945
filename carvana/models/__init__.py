"""The U-Nets, by name: `build_model("unet1024", width=0.25)`, `build_model("unet_resnet34", upsample="bilinear")`.

A checkpoint stores the config's `model` and `width` (and the model's options); `build_model` with the
same values gives a net with the same parameter names and shapes. The nets themselves are in
`carvana.models.unet1024`, `carvana.models.unet_original` and `carvana.models.encoder_unet`; importing
this package does not import torch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from carvana.core.errors import ConfigError
from carvana.models.specs import MODEL_NAMES, MODEL_SPECS, ModelSpec, model_spec

if TYPE_CHECKING:
    from carvana.models.base import SegmentationNet


def build_model(name: str, width: float = 1.0, **options: object) -> "SegmentationNet":
    """A freshly initialised net; `width` scales its channels (1.0 = the published widths); `options`:
    those its spec names (`model_spec(name).options`), e.g. `upsample` and `attention`."""
    spec = model_spec(name)
    if not width > 0:
        raise ConfigError(f"width {width}: must be positive")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise ConfigError(f"{name} takes no option {', '.join(unknown)} "
                          f"(its options: {', '.join(spec.options) or 'none'})")
    return spec.builder(width, **options)


__all__ = ["MODEL_NAMES", "MODEL_SPECS", "ModelSpec", "build_model", "model_spec"]
