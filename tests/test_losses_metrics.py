"""The BCE + soft-Dice loss and the competition's per-image Dice."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carvana.train.losses import BCEDiceLoss, soft_dice_per_image
from carvana.train.metrics import dice_from_logits, dice_per_image, dice_score, mean_dice

masks = arrays(dtype=bool, shape=st.tuples(st.integers(1, 12), st.integers(1, 12)))


@st.composite
def mask_pairs(draw):
    shape = draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    return draw(arrays(bool, shape)), draw(arrays(bool, shape))


def confident_logits(mask: torch.Tensor, margin: float = 30.0) -> torch.Tensor:
    return (mask.float() * 2 - 1) * margin


# --- The metric -------------------------------------------------------------------------------------


@given(masks)
def test_a_mask_scores_one_against_itself(mask):
    assert dice_score(mask, mask) == 1.0


@given(mask_pairs())
def test_dice_is_symmetric_and_between_zero_and_one(pair):
    pred, truth = pair
    score = dice_score(pred, truth)
    assert 0.0 <= score <= 1.0
    assert score == dice_score(truth, pred)


@given(mask_pairs())
def test_torch_and_numpy_dice_agree(pair):
    pred, truth = pair
    batch = dice_per_image(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])
    assert batch.shape == (1,)
    assert batch.item() == pytest.approx(dice_score(pred, truth), abs=1e-6)


@given(masks)
def test_empty_against_non_empty_scores_zero(mask):
    empty = np.zeros_like(mask)
    expected = 1.0 if not mask.any() else 0.0
    assert dice_score(empty, mask) == expected
    assert dice_score(mask, empty) == expected


def test_two_empty_masks_score_one():
    empty = np.zeros((1280, 1918), dtype=np.uint8)
    assert dice_score(empty, empty) == 1.0
    assert dice_per_image(torch.zeros(3, 1, 4, 4), torch.zeros(3, 4, 4)).tolist() == [1.0, 1.0, 1.0]


def test_dice_counts_overlap_exactly():
    pred = np.zeros((4, 4), np.uint8)
    truth = np.zeros((4, 4), np.uint8)
    pred[0, :] = 1  # 4 pixels
    truth[0, :2] = 1  # 2 pixels, both inside pred
    truth[1, 0] = 255  # any nonzero value is the car
    assert dice_score(pred, truth) == pytest.approx(2 * 2 / (4 + 3))


def test_score_is_the_mean_of_per_image_dice_not_the_pooled_dice():
    target = torch.zeros(2, 1, 32, 32)
    target[0, :, 4:28, 4:28] = 1  # a large car, found exactly
    target[1, :, 0, 0] = 1  # a one-pixel car, missed
    pred = target.clone()
    pred[1] = 0
    per_image = dice_per_image(pred, target)
    assert per_image.tolist() == [1.0, 0.0]
    assert mean_dice(confident_logits(pred), target) == pytest.approx(0.5)
    pooled = 2 * (pred * target).sum() / (pred.sum() + target.sum())
    assert pooled.item() > 0.99


def test_dice_from_logits_thresholds_the_probabilities():
    target = torch.tensor([[[1.0, 1.0, 0.0, 0.0]]])
    logits = torch.tensor([[[2.0, -0.1, 0.1, -3.0]]])  # p > 0.5 on pixels 0 and 2
    assert dice_from_logits(logits, target).item() == pytest.approx(0.5)
    assert dice_from_logits(logits, target, threshold=0.95).item() == pytest.approx(0.0)
    assert dice_from_logits(logits, target, threshold=0.4).item() == pytest.approx(2 * 2 / (3 + 2))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="prediction"):
        dice_score(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError):
        dice_per_image(torch.zeros(2, 4, 4), torch.zeros(2, 4, 5))


# --- The loss ---------------------------------------------------------------------------------------


def random_masks(batch: int = 3, size: int = 16) -> torch.Tensor:
    masks = torch.zeros(batch, 1, size, size)
    for i in range(batch):
        masks[i, :, i : size // 2 + i, 2:] = 1.0
    return masks


def test_perfect_logits_give_a_loss_near_zero():
    target = random_masks()
    assert BCEDiceLoss()(confident_logits(target), target).item() == pytest.approx(0.0, abs=1e-3)


def test_wrong_logits_give_a_large_loss_with_finite_gradients():
    target = random_masks()
    logits = (-confident_logits(target, margin=5.0)).requires_grad_()
    loss = BCEDiceLoss()(logits, target)
    assert loss.item() > 5.0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_loss_is_bce_plus_one_minus_mean_per_image_soft_dice():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = random_masks(2, 8)
    probs = torch.sigmoid(logits)
    bce = torch.nn.functional.binary_cross_entropy(probs, target)
    dice = [(2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1) for p, t in zip(probs, target)]
    expected_dice = (dice[0] + dice[1]) / 2
    loss = BCEDiceLoss(bce_weight=0.5, dice_weight=2.0)(logits, target)
    assert loss.item() == pytest.approx(0.5 * bce.item() + 2.0 * (1 - expected_dice.item()), rel=1e-5)
    bce_only, dice_only = BCEDiceLoss(1.0, 0.0)(logits, target), BCEDiceLoss(0.0, 1.0)(logits, target)
    assert bce_only.item() == pytest.approx(bce.item(), rel=1e-5)
    assert dice_only.item() == pytest.approx(1 - expected_dice.item(), rel=1e-5)


def test_loss_accepts_masks_with_or_without_the_channel_axis():
    target = random_masks()
    logits = torch.randn(target.shape)
    loss = BCEDiceLoss()
    assert loss(logits, target).item() == pytest.approx(loss(logits[:, 0], target[:, 0]).item())
    assert loss(logits, target[:, 0]).item() == pytest.approx(loss(logits, target).item())
    with pytest.raises(ValueError):
        loss(logits, target[:, :, :8])


def test_loss_is_float32_from_low_precision_logits():
    target = random_masks()
    logits = torch.randn(target.shape).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = BCEDiceLoss()(logits, target)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(BCEDiceLoss()(logits.float(), target).item(), rel=1e-6)


def test_soft_dice_of_two_empty_masks_is_one():
    assert soft_dice_per_image(torch.zeros(2, 10), torch.zeros(2, 10)).tolist() == [1.0, 1.0]
