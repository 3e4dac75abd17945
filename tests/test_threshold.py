"""The threshold is chosen on the validation cars, saved with the checkpoint and used by `predict`;
mask clean-up (largest region, filled holes) is applied before up-sampling and ends in valid submissions.

Pure functions first (the clean-up on small maps, the choice rule), then the command line on a tiny
dataset: one short training shared by the module, predictions from copies of its checkpoint.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from carvana import cli
from carvana.core.geometry import Size
from carvana.predict.cleanup import clean_probabilities, fill_holes, fill_level, keep_largest_component
from carvana.predict.postprocess import probabilities_to_mask
from carvana.predict.threshold import MARGIN, choose_threshold, save_threshold, ThresholdRecord
from carvana.run.checkpoint import load_checkpoint, save_checkpoint
from cli_helpers import run_cli
from data_factory import make_tiny_carvana

TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment",
        "--epochs", "1"]
PHOTO = Size(192, 128)


# --------------------------------------------------------------------------- mask clean-up (pure)


def blob_and_speck() -> np.ndarray:
    """A 32x48 map: a soft-edged car blob on the left and a 2x2 speck of 'car' on the right."""
    rows, columns = np.mgrid[0:32, 0:48]
    blob = np.clip(1.2 - np.hypot((rows - 16) / 10, (columns - 16) / 12), 0, 1)
    probabilities = (0.05 + 0.9 * blob).astype(np.float32)
    probabilities[10:12, 40:42] = 0.9
    return probabilities


def test_keeping_the_largest_region_removes_a_speck_and_leaves_the_car_exactly_as_it_was():
    probabilities = blob_and_speck()
    cleaned = keep_largest_component(probabilities, 0.5)
    assert np.all(cleaned[10:12, 40:42] == 0.0)
    before = probabilities_to_mask(probabilities, PHOTO, 0.5)
    after = probabilities_to_mask(cleaned, PHOTO, 0.5)
    assert before[:, 150:].any() and not after[:, 150:].any(), "the speck is gone at full resolution"
    assert np.array_equal(before[:, :120], after[:, :120]), "the car's up-sampled edges did not move"
    assert np.array_equal(probabilities, blob_and_speck()), "the input map is not changed"


def ring() -> np.ndarray:
    """A 32x32 map: a ring of car (radius 6..12) around a background hole, background outside."""
    rows, columns = np.mgrid[0:32, 0:32]
    radius = np.hypot(rows - 16, columns - 16)
    return np.where((radius > 6) & (radius < 12), 0.95, 0.1).astype(np.float32)


def test_filling_holes_fills_a_ring_and_leaves_the_background_that_touches_the_border():
    probabilities = ring()
    cleaned = fill_holes(probabilities, 0.5)
    assert np.all(cleaned[14:19, 14:19] >= fill_level(0.5)), "the hole is car now"
    assert np.array_equal(cleaned[:, :3], probabilities[:, :3]), "the outside is untouched"
    mask = probabilities_to_mask(cleaned, Size(160, 160), 0.5)
    assert mask[80, 80] and mask[60:100, 60:100].all(), "no hole left at full resolution"
    assert not mask[0, 0]


def test_background_open_to_the_border_is_not_a_hole():
    u_shape = np.full((20, 20), 0.1, np.float32)
    u_shape[5:18, 4:7] = u_shape[5:18, 13:16] = u_shape[15:18, 4:16] = 0.9  # a U open at the top
    assert np.array_equal(fill_holes(u_shape, 0.5), u_shape)


def test_both_clean_ups_remove_the_speck_and_fill_the_hole_and_none_changes_nothing():
    probabilities = np.zeros((32, 64), np.float32)
    probabilities[:, :32] = ring()
    probabilities[3:5, 50:52] = 0.8
    both = clean_probabilities(probabilities, 0.5, "largest+fill")
    assert np.all(both[3:5, 50:52] == 0) and np.all(both[16, 16] >= fill_level(0.5))
    assert clean_probabilities(probabilities, 0.5, "none") is probabilities


# --------------------------------------------------------------------------- the choice (pure)


def test_another_threshold_is_chosen_only_when_it_beats_0_5_by_more_than_the_margin():
    assert choose_threshold({0.4: 0.9000, 0.5: 0.9000 - MARGIN / 2, 0.6: 0.8}) == 0.5
    assert choose_threshold({0.4: 0.9000, 0.5: 0.9000 - 2 * MARGIN, 0.6: 0.8}) == 0.4
    assert choose_threshold({0.5: 0.7, 0.55: 0.9}) == 0.55
    assert choose_threshold({0.6: 0.7}) == 0.6  # a given threshold alone


# --------------------------------------------------------------------------- through the command line


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 cars x 16 views at 192x128 (2 training cars, 1 validation car) and a 16-photo test set."""
    return make_tiny_carvana(tmp_path_factory.mktemp("data"), cars=3)


def train(data_dir: Path, work: Path, *extra: str) -> str:
    """`main.py train` on the tiny data (in-process); returns what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["train", "--dataset", "auto", "--data-dir", str(data_dir), *TINY, "--output-dir",
                         str(work / "output"), "--log-dir", str(work / "logs"), "--run-name", "tiny", *extra])
    assert code == 0, out.getvalue()
    return out.getvalue()


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> tuple[Path, str]:
    """A finished 1-epoch run named `tiny`: its work folder and what training printed."""
    work = tmp_path_factory.mktemp("trained")
    return work, train(tiny_data, work)


def chosen_line(stdout: str) -> re.Match:
    found = re.search(r"threshold (0\.\d+) (chosen|kept) on 1 validation car \(Dice (0\.\d{4})", stdout)
    assert found, stdout
    return found


def predict(capsys, checkpoint: Path, data_dir: Path, submission: Path, *extra) -> str:
    code, out, err = run_cli(["predict", "--checkpoint", checkpoint, "--data-dir", data_dir, "--submission",
                              submission, "--workers", "0", *extra], capsys)
    assert code == 0, err
    return out


def rows(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return f.read().splitlines()


def test_a_run_chooses_the_threshold_on_the_validation_cars_and_saves_it_in_best_pt(trained):
    work, stdout = trained
    printed = chosen_line(stdout)
    saved = load_checkpoint(work / "output" / "models" / "tiny" / "best.pt")["prediction"]
    assert saved["threshold"] == float(printed.group(1)) and saved["chosen"] is True
    assert saved["validation_cars"] == 1
    assert f"validation Dice at 192x128: {saved['validation_dice']:.4f} (16 images)" in stdout
    assert f"(Dice {saved['validation_dice']:.4f}" in printed.group(0), "the Dice printed is the chosen threshold's"
    # The other clean-ups' evidence is printed on one line.
    assert re.search(r"mask cleanup at threshold \S+ on 1 validation car: none 0\.\d{5}, largest 0\.\d{5}, "
                     r"fill 0\.\d{5}, largest\+fill 0\.\d{5} \(in use: \S+\)", stdout), stdout


def test_the_score_of_the_validation_predictions_file_is_the_dice_the_run_printed(trained, capsys):
    work, stdout = trained
    validation = work / "output" / "validation" / "tiny"
    code, out, err = run_cli(["score", validation / "valid_predictions.csv.gz", "--truth",
                              validation / "valid_truth.csv", "--image-size", "192x128"], capsys)
    assert code == 0, err
    scored = float(re.search(r"mean Dice (0\.\d+)", out).group(1))
    saved = load_checkpoint(work / "output" / "models" / "tiny" / "best.pt")["prediction"]
    assert f"{scored:.5f}" == f"{saved['validation_dice']:.5f}"
    assert f"validation Dice at 192x128: {scored:.4f}" in stdout
    assert not list(validation.glob(".tmp-*")), "the other thresholds' files are gone"


def test_predict_uses_the_threshold_saved_with_the_checkpoint(trained, tiny_data, tmp_path, capsys):
    work, stdout = trained
    threshold = chosen_line(stdout).group(1)
    best = work / "output" / "models" / "tiny" / "best.pt"
    out = predict(capsys, best, tiny_data, tmp_path / "saved.csv.gz")
    assert f"(threshold {float(threshold):g}: chosen on 1 validation car (Dice" in out
    predict(capsys, best, tiny_data, tmp_path / "given.csv.gz", "--threshold", threshold)
    assert rows(tmp_path / "saved.csv.gz") == rows(tmp_path / "given.csv.gz")


def test_predict_uses_a_saved_threshold_other_than_0_5_and_the_flag_overrides_it(trained, tiny_data, tmp_path,
                                                                                  capsys):
    work, _ = trained
    checkpoint = tmp_path / "best.pt"
    shutil.copy(work / "output" / "models" / "tiny" / "best.pt", checkpoint)
    save_threshold(checkpoint, ThresholdRecord(0.35, chosen=True, validation_dice=0.9, validation_cars=3))
    out = predict(capsys, checkpoint, tiny_data, tmp_path / "saved.csv.gz")
    assert "(threshold 0.35: chosen on 3 validation cars (Dice 0.9000)" in out
    predict(capsys, checkpoint, tiny_data, tmp_path / "at-0.35.csv.gz", "--threshold", "0.35")
    predict(capsys, checkpoint, tiny_data, tmp_path / "at-0.5.csv.gz", "--threshold", "0.5")
    assert rows(tmp_path / "saved.csv.gz") == rows(tmp_path / "at-0.35.csv.gz")
    assert rows(tmp_path / "saved.csv.gz") != rows(tmp_path / "at-0.5.csv.gz")

    out = predict(capsys, checkpoint, tiny_data, tmp_path / "flag.csv.gz", "--threshold", "0.6")
    assert "(threshold 0.6: from --threshold; the checkpoint's is 0.35" in out


def test_a_checkpoint_without_a_saved_threshold_predicts_at_0_5(trained, tiny_data, tmp_path, capsys):
    work, _ = trained
    payload = load_checkpoint(work / "output" / "models" / "tiny" / "best.pt")
    del payload["prediction"]
    old = tmp_path / "old.pt"
    save_checkpoint(old, payload)
    out = predict(capsys, old, tiny_data, tmp_path / "old.csv.gz")
    assert "(threshold 0.5: none saved with the checkpoint" in out
    predict(capsys, old, tiny_data, tmp_path / "at-0.5.csv.gz", "--threshold", "0.5")
    assert rows(tmp_path / "old.csv.gz") == rows(tmp_path / "at-0.5.csv.gz")


def test_a_run_given_a_threshold_uses_it_without_searching_and_predict_keeps_it(tiny_data, tmp_path, capsys):
    stdout = train(tiny_data, tmp_path, "--threshold", "0.4")
    assert "(1 threshold)" in stdout and "threshold 0.4 from --threshold (Dice" in stdout
    best = tmp_path / "output" / "models" / "tiny" / "best.pt"
    saved = torch.load(best, weights_only=True)["prediction"]
    assert (saved["threshold"], saved["chosen"]) == (0.4, False)
    out = predict(capsys, best, tiny_data, tmp_path / "submit.csv.gz")
    assert "(threshold 0.4: the run's --threshold (Dice" in out


def test_predict_with_mask_cleanup_largest_writes_a_valid_submission(trained, tiny_data, tmp_path, capsys):
    work, _ = trained
    submission = tmp_path / "largest.csv.gz"
    out = predict(capsys, work / "output" / "models" / "tiny" / "best.pt", tiny_data, submission,
                  "--mask-cleanup", "largest")
    assert "mask cleanup largest" in out and "valid (16 rows" in out
    code, _, err = run_cli(["validate", submission, "--data-dir", tiny_data], capsys)
    assert code == 0, err
