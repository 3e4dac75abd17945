"""The training loss: BCE on every pixel plus (1 - soft Dice) per image.

BCE alone is dominated by the easy background; the Dice term weighs each car's mask as a whole,
which is what the competition scores. Dice is taken per image and then averaged, like the metric,
so a small car counts as much as a large one.

Targets may be soft: the car's share of each pixel, in [0, 1]. BCE with logits is lowest where the
predicted probability equals that share, so the net learns the edges' shares. The soft Dice needs
no change: on 0/1 targets it is the usual one, and on shares raising a pixel's probability raises
it exactly where the share is above half the current Dice (about 0.5), the same cut as the 0.5
threshold the prediction is read with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def flatten_per_image(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both as (B, pixels); accepts (B, 1, H, W) or (B, H, W) on either side."""
    if logits.shape[0] != target.shape[0] or logits[0].numel() != target[0].numel():
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    return logits.reshape(logits.shape[0], -1), target.reshape(target.shape[0], -1)


def soft_dice_per_image(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """(B,) soft Dice of (B, pixels) probabilities against targets in [0, 1]; `smooth` keeps empty masks at 1."""
    intersection = (probs * target).sum(dim=1)
    total = probs.sum(dim=1) + target.sum(dim=1)
    return (2.0 * intersection + smooth) / (total + smooth)


class BCEDiceLoss(nn.Module):
    """`bce_weight * BCE-with-logits + dice_weight * (1 - mean per-image soft Dice)`.

    Takes logits (B, 1, H, W) or (B, H, W) and float targets in [0, 1] (0/1 masks or soft area
    shares) of the same size. Computed in float32 whatever the autocast dtype of the logits: sums
    over a million fp16 pixels lose the small differences the Dice term is about.
    """

    def __init__(self, bce_weight: float = 1.0, dice_weight: float = 1.0, smooth: float = 1.0) -> None:
        super().__init__()
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = flatten_per_image(logits.float(), target.float())
        bce = F.binary_cross_entropy_with_logits(logits, target)
        dice = soft_dice_per_image(torch.sigmoid(logits), target, self.smooth).mean()
        return self.bce_weight * bce + self.dice_weight * (1.0 - dice)

    def extra_repr(self) -> str:
        return f"bce_weight={self.bce_weight}, dice_weight={self.dice_weight}, smooth={self.smooth}"
