"""The competition's score: the mean over images of each image's Dice of thresholded masks.

Dice = 2 |pred ∩ truth| / (|pred| + |truth|), and 1 when both masks are empty. It is computed per
image and then averaged; pooling the pixels of a batch first would let large cars hide a missed
small one, which the leaderboard does not.
"""
from __future__ import annotations

import numpy as np
import torch


def dice_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B,) float32 Dice of binary masks (B, 1, H, W) or (B, H, W); nonzero counts as foreground."""
    if pred.shape[0] != target.shape[0] or pred[0].numel() != target[0].numel():
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} do not match")
    pred = pred.reshape(pred.shape[0], -1) != 0
    target = target.reshape(target.shape[0], -1) != 0
    intersection = (pred & target).sum(dim=1)
    total = pred.sum(dim=1) + target.sum(dim=1)
    # Pixel counts are exact in float32 up to 2**24, far above a 1918x1280 mask pair.
    dice = 2.0 * intersection.float() / total.clamp(min=1).float()
    return torch.where(total == 0, torch.ones_like(dice), dice)


def dice_from_logits(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B,) Dice of `sigmoid(logits) > threshold` against the target cut at 0.5.

    A 0/1 target is itself; a soft target (the car's share of each pixel) becomes the 0/1 mask of
    the pixels at least half car, the mask hard targets have, so both kinds give the same score.
    """
    pred = torch.sigmoid(logits.float()) > threshold
    return dice_per_image(pred, target >= 0.5)


def mean_dice(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> float:
    """The competition score of one batch: mean of the per-image Dice (not the batch-pooled Dice)."""
    return float(dice_from_logits(logits, target, threshold).mean())


def dice_score(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of one full-resolution mask pair (nonzero = car), 1.0 when both are empty."""
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, truth {truth.shape}")
    pred = pred.astype(bool, copy=False)
    truth = truth.astype(bool, copy=False)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(truth))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & truth)) / total
