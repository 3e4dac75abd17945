"""The U-Net of Ronneberger, Fischer and Brox (2015), as drawn in its Figure 1.

Valid (unpadded) 3x3 convolutions, so every map is smaller than the one before it and the output
(388x388 for a 572x572 input) is the centre of the input; `carvana.models.valid_convolutions` holds
that arithmetic and explains how whole images are covered (resize to the output size, mirror-pad the
border).
BatchNorm follows every convolution, which the 2015 paper predates but which lets it train at
ordinary learning rates. `attention` gates the skips of the three deepest up steps (Oktay et al. 2018
drew their Attention U-Net on this one).
"""
from __future__ import annotations

import torch
from torch import nn

from carvana.core.geometry import Geometry, Size
from carvana.models.base import SegmentationNet
from carvana.models.parts import ATTENTION_STAGES, ConvStack, Down, Head, UpCropConcat, he_normal_init
from carvana.models.specs import UNET_ORIGINAL
from carvana.models.valid_convolutions import ORIGINAL_DEPTH, original_geometry


class UNetOriginal(SegmentationNet):
    """Contracting path 64 -> 128 -> 256 -> 512 -> 1024 channels (for base 64), expanding path back.

    Args:
        in_channels: image channels (3 for RGB).
        out_channels: logit channels (1 for a car/background mask).
        base_channels: channels of the first level; each level below doubles them.
        depth: number of max-pools (4 in the paper).
        attention: gates on the skips of the ATTENTION_STAGES deepest up steps.
    """

    name = UNET_ORIGINAL

    def __init__(
        self, in_channels: int = 3, out_channels: int = 1, base_channels: int = 64, depth: int = ORIGINAL_DEPTH,
        attention: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth {depth}: a U-Net needs at least one level")
        self.depth = depth
        channels = [base_channels * 2**level for level in range(depth + 1)]
        self.channels = tuple(channels)

        self.inc = ConvStack(in_channels, channels[0], convs=2, padding=0)
        self.downs = nn.ModuleList(Down(channels[i], channels[i + 1]) for i in range(depth))
        self.ups = nn.ModuleList(UpCropConcat(channels[i + 1], channels[i], attention and i >= depth - ATTENTION_STAGES)
                                 for i in reversed(range(depth)))
        self.head = Head(channels[0], out_channels)
        self.apply(he_normal_init)

    def geometry(self, input_size: Size) -> Geometry:
        """The spec's valid-convolution geometry, at this net's own depth."""
        return original_geometry(self.name, input_size, self.depth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        x = self.inc(x)
        for down in self.downs:
            skips.append(x)
            x = down(x)
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)
