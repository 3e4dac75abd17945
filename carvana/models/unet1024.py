"""UNet1024: the same-size U-Net that scored about 0.996 Dice on Carvana at 1024x1024.

Its layout follows the network shared on the Kaggle forum during the competition: six encoder
stages (two padded conv blocks, keep the skip, max-pool) of 24, 64, 128, 256, 512 and 768 channels,
one conv block in the centre at 1/64 of the input, and six decoder stages (bilinear up-sampling to
the skip's size, concat, three conv blocks) whose widths mirror the encoder back down to 24.
Padded convolutions keep every size, so output = input; six pools need sides divisible by 64.
`attention` puts an attention gate (Oktay et al. 2018) on the skips of the three deepest decoder stages,
as on the encoder U-Nets (`carvana.models.encoder_unet`).
"""
from __future__ import annotations

import torch
from torch import nn

from carvana.models.base import SegmentationNet
from carvana.models.parts import (ATTENTION_STAGES, ConvBnRelu, EncoderStage, Head, UpResizeConcat, he_normal_init,
                                  scale_channels)
from carvana.models.specs import UNET1024

ENCODER_CHANNELS = (24, 64, 128, 256, 512, 768)
ENCODER_CONVS = 2
DECODER_CONVS = 3


class UNet1024(SegmentationNet):
    """Six-level padded U-Net; `width` scales every channel count (0.25 gives a CPU-sized net).

    Args:
        in_channels: image channels (3 for RGB).
        out_channels: logit channels (1 for a car/background mask).
        width: channel multiplier; counts are rounded to a multiple of 4 (at least 4).
        attention: gates on the skips of the ATTENTION_STAGES deepest decoder stages.
    """

    name = UNET1024

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: float = 1.0,
                 attention: bool = False) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width {width}: must be positive")
        encoder = [scale_channels(c, width) for c in ENCODER_CHANNELS]
        self.encoder_channels = tuple(encoder)
        # Each decoder stage comes back up to the width of the encoder stage above it; the top one
        # stays at the first stage's width.
        decoder_out = [*reversed(encoder[:-1]), encoder[0]]
        self.decoder_channels = tuple(decoder_out)

        self.encoder = nn.ModuleList(
            EncoderStage(c_in, c_out, convs=ENCODER_CONVS) for c_in, c_out in zip([in_channels, *encoder], encoder)
        )
        self.center = ConvBnRelu(encoder[-1], encoder[-1], padding=1)
        decoder_in = [encoder[-1], *decoder_out[:-1]]
        self.decoder = nn.ModuleList(
            UpResizeConcat(c_in, c_skip, c_out, convs=DECODER_CONVS, attention=attention and stage < ATTENTION_STAGES)
            for stage, (c_in, c_skip, c_out) in enumerate(zip(decoder_in, reversed(encoder), decoder_out))
        )
        self.head = Head(decoder_out[-1], out_channels)
        self.apply(he_normal_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        skips = []
        for stage in self.encoder:
            skip, x = stage(x)
            skips.append(skip)
        x = self.center(x)
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = stage(x, skip)
        return self.head(x)
