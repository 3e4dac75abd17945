"""Soft targets: the car's share of each pixel at the model's size, learned and scored like 0/1 masks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from carvana.core.geometry import Size
from carvana.data.augment import Augmenter
from carvana.data.datasets import make_train_loader
from carvana.data.images import load_mask_fractions, read_mask
from carvana.data.layout import load_carvana_data
from carvana.models.specs import model_geometry
from carvana.train.losses import BCEDiceLoss
from carvana.train.metrics import dice_from_logits
from cli_helpers import epochs_printed, run_cli
from data_factory import make_tiny_carvana

GEOMETRY = model_geometry("unet1024", Size(128, 64))  # photos at 192x128: every mask is shrunk


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_tiny_carvana(tmp_path_factory.mktemp("data"), cars=3, with_test=False)


def all_masks(data_dir: Path, soft_targets: bool) -> torch.Tensor:
    data = load_carvana_data(data_dir, need_test=False)
    loader = make_train_loader(data, data.train_names, GEOMETRY, batch_size=8, workers=0, seed=0,
                               soft_targets=soft_targets)
    return torch.cat([masks for _, masks in loader])


def test_soft_targets_are_shares_in_0_1_with_fractional_edges_that_cut_at_half_give_the_0_1_targets(tiny_data):
    soft, hard = all_masks(tiny_data, soft_targets=True), all_masks(tiny_data, soft_targets=False)
    assert soft.dtype == torch.float32 and soft.shape == hard.shape
    assert soft.min() >= 0.0 and soft.max() <= 1.0
    edges = (soft > 0) & (soft < 1)
    assert edges.sum() > 0.01 * soft.numel(), "the car's outline is partly covered pixels"
    assert torch.equal((soft >= 0.5).float(), hard), "cut at half, the shares are the 0/1 masks"
    assert set(hard.unique().tolist()) == {0.0, 1.0}


def test_a_soft_target_keeps_the_cars_area_a_0_1_target_rounds_it(tiny_data):
    mask_path = sorted((tiny_data / "train_masks").glob("*.gif"))[0]
    full = read_mask(mask_path)
    shares = load_mask_fractions(mask_path, Size(48, 32)).astype(np.float64) / 255.0
    full_area = full.mean()
    assert abs(shares.mean() - full_area) < 0.01 * full_area + 1e-3


def test_augmentation_warps_a_soft_mask_smoothly_and_keeps_a_0_1_mask_0_1(tiny_data):
    data = load_carvana_data(tiny_data, need_test=False)
    loader = make_train_loader(data, data.train_names[:1], GEOMETRY, batch_size=1, workers=0, seed=0,
                               soft_targets=True)
    image, shares = loader.dataset.load_pair(0)
    augment = Augmenter(p=1.0, rotate_degrees=20.0)
    warped_image, warped = augment(image, shares, np.random.default_rng(1), soft_mask=True)
    assert warped.dtype == np.uint8 and warped.shape == shares.shape
    assert not set(np.unique(warped)) <= set(np.unique(shares)), "interpolated, not copied from the nearest pixel"
    hard = (shares >= 128).astype(np.uint8)
    _, warped_hard = augment(image, hard, np.random.default_rng(1))
    assert set(np.unique(warped_hard)) <= {0, 1}
    agree = ((warped >= 128) == (warped_hard == 1)).mean()
    assert agree > 0.98, "the same warp moves both"


def test_the_loss_takes_soft_targets_and_is_lowest_where_the_prediction_is_the_share():
    torch.manual_seed(0)
    shares = torch.rand(2, 1, 16, 24)
    loss = BCEDiceLoss(dice_weight=0.0)
    exact = torch.logit(shares.clamp(1e-4, 1 - 1e-4))
    rounded = torch.logit((shares >= 0.5).float().clamp(1e-4, 1 - 1e-4))
    assert loss(exact, shares) < loss(rounded, shares) and torch.isfinite(BCEDiceLoss()(exact, shares))


def test_the_batch_dice_cuts_a_soft_target_at_half_so_it_scores_like_the_0_1_target():
    shares = torch.tensor([[[[0.0, 0.1, 0.4, 0.5, 0.9, 1.0]]]])
    logits = torch.tensor([[[[-5.0, -5.0, -5.0, 5.0, 5.0, 5.0]]]])
    assert dice_from_logits(logits, shares).item() == 1.0
    assert torch.equal(dice_from_logits(logits, shares), dice_from_logits(logits, (shares >= 0.5).float()))


def test_training_with_soft_targets_runs_end_to_end_through_the_cli(tiny_data, tmp_path, capsys):
    work = tmp_path / "work"
    code, out, err = run_cli(["train", "--data-dir", tiny_data, "--preset", "cpu", "--input-size", "128x64",
                              "--batch-size", "8", "--workers", "0", "--epochs", "1", "--soft-targets",
                              "--output-dir", work / "output", "--log-dir", work / "logs", "--run-name", "soft"],
                             capsys)
    assert code == 0, err
    assert epochs_printed(out) == [1]
    saved = torch.load(work / "output" / "models" / "soft" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["config"]["soft_targets"] is True
    dice = float(next(line for line in out.splitlines() if "validation Dice at" in line).split(": ")[1].split()[0])
    assert 0.0 <= dice <= 1.0
