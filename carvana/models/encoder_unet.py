"""U-Nets on a classification backbone: encoder -> decoder -> head, as the Carvana winners built them.

The encoder (`carvana.models.encoders`) hands over feature maps from 1/1 or 1/2 down to 1/32 of the
input; five decoder blocks each up-sample by two, concatenate the skip of that size and run two
padded conv blocks, so each side must be divisible by 32 (VGG11 gets TernausNet's centre block).
`width` scales the decoder only (the encoder's layout is fixed by its ImageNet weights). `upsample`:
"transpose" (TernausNet, LinkNet), "pixelshuffle" (ICNR-initialised) or "bilinear"; `attention` gates
the ATTENTION_STAGES deepest skips. The input is ImageNet-normalised by `carvana.models.forward_pass`.
"""
from __future__ import annotations

import torch
from torch import nn

from carvana.core.errors import ConfigError
from carvana.models.base import SegmentationNet
from carvana.models.encoders import ResNetEncoder, VGG11Encoder
from carvana.models.parts import (ATTENTION_STAGES, AttentionGate, ConvBnRelu, ConvStack, Head, he_normal_init,
                                  scale_channels)
from carvana.models.specs import UNET_RESNET18, UNET_RESNET34, UNET_VGG11, UPSAMPLE_MODES

RESNET_DECODER = (256, 128, 64, 32, 16)  # segmentation_models.pytorch's U-Net decoder
TERNAUS_DECODER = (256, 256, 128, 64, 32)  # TernausNet11's, for 32 filters


class PixelShuffleUp(nn.Sequential):
    """A 1x1 conv to 4x the channels, then PixelShuffle(2): each pixel becomes a learned 2x2 patch."""

    def __init__(self, channels: int) -> None:
        super().__init__(nn.Conv2d(channels, 4 * channels, kernel_size=1), nn.PixelShuffle(2))

    def icnr_(self) -> None:
        """ICNR (Aitken et al. 2017): the four sub-pixels start with the same weights, so the first
        up-sampling is nearest-neighbour and free of the checkerboard a random start paints."""
        conv = self[0]
        one = torch.empty(conv.out_channels // 4, conv.in_channels, 1, 1)
        nn.init.kaiming_normal_(one, mode="fan_in", nonlinearity="relu")
        with torch.no_grad():
            conv.weight.copy_(one.repeat_interleave(4, dim=0))


def up_sampler(mode: str, channels: int) -> nn.Module:
    """A module that doubles a map's height and width and keeps its `channels`, by `mode`."""
    if mode == "transpose":
        return nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
    if mode == "pixelshuffle":
        return PixelShuffleUp(channels)
    if mode == "bilinear":
        return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
    raise ConfigError(f"upsample {mode!r}: choose from {', '.join(UPSAMPLE_MODES)}")


class DecoderBlock(nn.Module):
    """Up-sample by two, concatenate the (gated) skip if there is one, two padded 3x3 conv blocks:
    `in_channels` + `skip_channels` -> `out_channels`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, upsample: str,
                 attention: bool = False) -> None:
        super().__init__()
        self.up = up_sampler(upsample, in_channels)
        self.gate = AttentionGate(in_channels, skip_channels) if attention and skip_channels else None
        self.convs = ConvStack(in_channels + skip_channels, out_channels, convs=2, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        x = self.up(x)
        if skip is not None:
            if self.gate is not None:
                skip = self.gate(x, skip)
            # Under autocast the halves may differ in dtype; cat would promote the whole map.
            x = torch.cat([x.to(skip.dtype), skip], dim=1)
        return self.convs(x)


class EncoderUNet(SegmentationNet):
    """`encoder` -> (centre) -> five DecoderBlocks of `decoder_channels` scaled by `width` -> 1x1 head."""

    DEPTH = 5  # halvings from the input to the encoder's deepest map

    def __init__(self, encoder: nn.Module, decoder_channels: tuple[int, ...], width: float = 1.0,
                 upsample: str = "transpose", attention: bool = False, centre: bool = False) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width {width}: must be positive")
        self.encoder = encoder
        skips = list(reversed(encoder.channels[:-1]))
        skips += [0] * (self.DEPTH - len(skips))  # no skip at full size (ResNet's stem already halves)
        decoder = [scale_channels(c, width) for c in decoder_channels]
        self.decoder_channels = tuple(decoder)
        bottom = encoder.channels[-1]
        self.centre = ConvBnRelu(bottom, bottom, padding=1) if centre else nn.Identity()
        self.decoder = nn.ModuleList(
            DecoderBlock(c_in, c_skip, c_out, upsample, attention and stage < ATTENTION_STAGES)
            for stage, (c_in, c_skip, c_out) in enumerate(zip([bottom, *decoder[:-1]], skips, decoder))
        )
        self.head = Head(decoder[-1], 1)
        self.apply(he_normal_init)
        for module in self.modules():
            if isinstance(module, PixelShuffleUp):
                module.icnr_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        features = self.encoder(x)
        x = self.centre(features[-1])
        skips = list(reversed(features[:-1]))
        for stage, block in enumerate(self.decoder):
            x = block(x, skips[stage] if stage < len(skips) else None)
        return self.head(x)


class UNetResNet34(EncoderUNet):
    """ResNet34 encoder, segmentation_models.pytorch's decoder widths (256 down to 16)."""

    name = UNET_RESNET34

    def __init__(self, width: float = 1.0, upsample: str = "transpose", attention: bool = False) -> None:
        super().__init__(ResNetEncoder("resnet34"), RESNET_DECODER, width, upsample, attention)


class UNetResNet18(EncoderUNet):
    """ResNet18 encoder, the same decoder as UNetResNet34: half its encoder's depth and cost."""

    name = UNET_RESNET18

    def __init__(self, width: float = 1.0, upsample: str = "transpose", attention: bool = False) -> None:
        super().__init__(ResNetEncoder("resnet18"), RESNET_DECODER, width, upsample, attention)


class UNetVGG11(EncoderUNet):
    """TernausNet11 (Iglovikov and Shvets 2018): VGG11 encoder, a centre block, TernausNet's decoder
    widths; batch norm in the decoder, which TernausNet had not."""

    name = UNET_VGG11

    def __init__(self, width: float = 1.0, upsample: str = "transpose", attention: bool = False) -> None:
        super().__init__(VGG11Encoder(), TERNAUS_DECODER, width, upsample, attention, centre=True)
