"""The named building blocks the two U-Nets are drawn with.

Each block is one arrow (or one box) of a U-Net diagram: a 3x3 conv + BatchNorm + ReLU, a stack of
them, a down step, an up step with its skip connection (the skip optionally weighed by an attention
gate), and the 1x1 head. `UNetOriginal` and `UNet1024` differ only in which blocks they stack and how
their up steps join the skip map:
the paper crops the larger encoder map to the up-sampled one (valid convolutions shrink every map),
UNet1024 resizes the up-sampled map to the skip (padded convolutions keep sizes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CHANNEL_MULTIPLE = 4  # slimmed channel counts are rounded to this, so no layer is starved
ATTENTION_STAGES = 3  # `attention`: gates on the skips of a U-Net's three deepest decoder stages


def scale_channels(channels: int, width: float) -> int:
    """`channels * width` rounded (halves up) to a multiple of 4, never below 4."""
    scaled = math.floor(channels * width / CHANNEL_MULTIPLE + 0.5) * CHANNEL_MULTIPLE
    return max(CHANNEL_MULTIPLE, scaled)


def crop_start(source_side: int, target_side: int) -> int:
    """First index of a centred window of `target_side` inside `source_side`."""
    if target_side > source_side:
        raise ValueError(f"cannot crop a side of {source_side} to a larger {target_side}")
    return (source_side - target_side) // 2


def center_crop(tensor: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre `height` x `width` window of an (N, C, H, W) tensor (a view, no copy)."""
    top = crop_start(tensor.shape[-2], height)
    left = crop_start(tensor.shape[-1], width)
    return tensor[..., top : top + height, left : left + width]


def he_normal_init(module: nn.Module) -> None:
    """Gaussian weights with std sqrt(2 / fan_in), as the U-Net paper prescribes for ReLU nets."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ConvBnRelu(nn.Sequential):
    """3x3 convolution -> BatchNorm -> ReLU. padding=0 is the paper's valid conv (2 px smaller)."""

    def __init__(self, in_channels: int, out_channels: int, padding: int) -> None:
        super().__init__(
            # No conv bias: the BatchNorm right after it has its own shift.
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=padding, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ConvStack(nn.Sequential):
    """`convs` ConvBnRelu blocks in a row; the first changes the channel count."""

    def __init__(self, in_channels: int, out_channels: int, convs: int, padding: int) -> None:
        if convs < 1:
            raise ValueError(f"a conv stack needs at least one conv, got {convs}")
        super().__init__(
            *(ConvBnRelu(in_channels if i == 0 else out_channels, out_channels, padding) for i in range(convs))
        )


class Down(nn.Sequential):
    """The paper's red arrow then two blue ones: 2x2 max-pool, then two valid 3x3 convs."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.MaxPool2d(kernel_size=2, stride=2),
            ConvStack(in_channels, out_channels, convs=2, padding=0),
        )


class AttentionGate(nn.Module):
    """Weighs each pixel of the skip by a sigmoid of what the decoder's map and the skip say there
    (additive attention: 1x1 convs of both to a common width, summed, ReLU, 1x1 conv to one channel)."""

    def __init__(self, gate_channels: int, skip_channels: int) -> None:
        super().__init__()
        inner = max(CHANNEL_MULTIPLE, skip_channels // 2)
        self.gate = nn.Sequential(nn.Conv2d(gate_channels, inner, 1, bias=False), nn.BatchNorm2d(inner))
        self.skip = nn.Sequential(nn.Conv2d(skip_channels, inner, 1, bias=False), nn.BatchNorm2d(inner))
        self.weight = nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(inner, 1, 1), nn.Sigmoid())

    def forward(self, gate: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return skip * self.weight(self.gate(gate) + self.skip(skip)).to(skip.dtype)


class UpCropConcat(nn.Module):
    """The paper's green arrow, grey arrow and two blue ones.

    A 2x2 transposed convolution (stride 2) doubles the map and halves its channels; the encoder map
    of the same level, which is larger because every valid conv since it lost a border, is cropped
    to the centre (and weighed by an `AttentionGate` when `attention`) and concatenated; two valid 3x3
    convs follow.
    """

    def __init__(self, in_channels: int, out_channels: int, attention: bool = False) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.gate = AttentionGate(in_channels // 2, out_channels) if attention else None
        self.convs = ConvStack(in_channels // 2 + out_channels, out_channels, convs=2, padding=0)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.up(x)
        cropped = center_crop(skip, up.shape[-2], up.shape[-1])
        if self.gate is not None:
            cropped = self.gate(up, cropped)
        return self.convs(torch.cat([cropped, up.to(cropped.dtype)], dim=1))


class EncoderStage(nn.Module):
    """UNet1024's encoder step: padded conv blocks, keep the map as the skip, then a 2x2 max-pool."""

    def __init__(self, in_channels: int, out_channels: int, convs: int = 2) -> None:
        super().__init__()
        self.convs = ConvStack(in_channels, out_channels, convs=convs, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (skip, pooled)."""
        skip = self.convs(x)
        return skip, self.pool(skip)


class UpResizeConcat(nn.Module):
    """UNet1024's decoder step: bilinear up-sampling to the skip's size, concat (the skip weighed by an
    `AttentionGate` when `attention`), padded conv blocks."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, convs: int = 3,
                 attention: bool = False) -> None:
        super().__init__()
        self.gate = AttentionGate(in_channels, skip_channels) if attention else None
        self.convs = ConvStack(in_channels + skip_channels, out_channels, convs=convs, padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # Resizing to the skip's actual size (not a fixed factor) keeps the net free of baked-in sizes.
        up = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        if self.gate is not None:
            skip = self.gate(up, skip)
        # Under autocast an op may hand back a wider dtype than the skip; cat would then promote the
        # whole (large) tensor, so both halves are put in the skip's dtype.
        return self.convs(torch.cat([up.to(skip.dtype), skip], dim=1))


class Head(nn.Conv2d):
    """The final 1x1 convolution: one logit per pixel and output channel (no sigmoid)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)
