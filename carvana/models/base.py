"""What every segmentation net here shares: its spec's name and the geometry check at the door."""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from carvana.core.geometry import Geometry, Size
from carvana.models.specs import model_spec


class SegmentationNet(nn.Module):
    """A net from RGB images (N, C, H, W) to one channel of mask logits.

    `name` is the model's key in `MODEL_SPECS` (`carvana.models.specs`), so callers can ask
    `model.geometry(size)` (or `model_geometry(model.name, size)`) what size comes out.
    """

    name: ClassVar[str]

    def geometry(self, input_size: Size) -> Geometry:
        """Output size and border for `input_size`, by the net's spec; raises ConfigError for a size
        the net can't take."""
        return model_spec(self.name).geometry(input_size)

    def check_input(self, x: torch.Tensor) -> Geometry:
        """Reject an unusable input size with a ConfigError before any convolution fails cryptically."""
        return self.geometry(Size(width=int(x.shape[-1]), height=int(x.shape[-2])))
