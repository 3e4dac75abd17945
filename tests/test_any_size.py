"""Kaggle-layout data whose photos are not 1918x1280 (resized copies, square crops, portrait shots): the
run's input size keeps the photos' shape, is saved in the checkpoint, and prediction, `validate` and
`score` all work at the photos' own size."""
from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from carvana.core.geometry import Size, aspect_difference
from carvana.kaggle import files as kl
from carvana.models.input_sizes import PIXEL_ALLOWANCE, input_size_for_photos
from carvana.models.specs import UNET1024, UNET_ORIGINAL, model_geometry
from carvana.run.checkpoint import load_checkpoint
from carvana.run.config import PRESETS
from cli_helpers import run_cli
from data_factory import make_tiny_carvana

KAGGLE = Size(*kl.ORIGINAL_SIZE)
REAL512 = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "carvana-real512"
# A slim net, one short epoch and no worker processes: each run below trains in seconds on two cores.
QUICK = ["--preset", "cpu", "--width", "0.125", "--epochs", "1", "--batch-size", "8", "--workers", "0",
         "--no-augment"]


# --------------------------------------------------------------------------- the rule, as a pure function


@pytest.mark.parametrize("model, preset_input, photos, expected", [
    # A 3:2 preset (the cpu preset's 192x128) follows the photos' shape at about its pixel count.
    (UNET1024, Size(192, 128), KAGGLE, Size(192, 128)),
    (UNET1024, Size(192, 128), Size(959, 640), Size(192, 128)),  # a resized copy of Kaggle's photos
    (UNET1024, Size(192, 128), Size(480, 320), Size(192, 128)),
    (UNET1024, Size(192, 128), Size(512, 512), Size(128, 128)),  # 192x192 would be 1.5x the pixels
    (UNET1024, Size(192, 128), Size(1280, 1918), Size(128, 192)),  # portrait
    (UNET1024, Size(192, 128), Size(96, 64), Size(192, 128)),  # smaller than the input: up-sampled
    (UNET1024, Size(192, 128), Size(32, 32), Size(128, 128)),
    (UNET1024, Size(384, 256), Size(512, 512), Size(320, 320)),
    (UNET1024, Size(384, 256), Size(1280, 1918), Size(256, 384)),
    # A square preset squashes Kaggle's 3:2 on purpose: it keeps its size for photos of any shape.
    (UNET1024, Size(1024, 1024), KAGGLE, Size(1024, 1024)),
    (UNET1024, Size(1024, 1024), Size(959, 640), Size(1024, 1024)),
    (UNET1024, Size(1024, 1024), Size(512, 512), Size(1024, 1024)),
    (UNET1024, Size(1024, 1024), Size(1280, 1918), Size(1024, 1024)),
    (UNET_ORIGINAL, Size(572, 572), KAGGLE, Size(572, 572)),
    (UNET_ORIGINAL, Size(572, 572), Size(512, 512), Size(572, 572)),
    # UNetOriginal drawn at 3:2: the aspect is that of its output, the part of the photo it covers.
    (UNET_ORIGINAL, Size(764, 572), KAGGLE, Size(764, 572)),
    (UNET_ORIGINAL, Size(764, 572), Size(512, 512), Size(668, 668)),
    (UNET_ORIGINAL, Size(764, 572), Size(1280, 1918), Size(572, 764)),
])
def test_the_input_size_for_photos_of_each_shape(model, preset_input, photos, expected):
    assert input_size_for_photos(model, preset_input, photos, drawn_for=KAGGLE) == expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_keeps_its_own_size_for_kaggles_photos_and_their_resized_copies(name):
    config = PRESETS[name]
    for photos in (KAGGLE, Size(959, 640), Size(1918 * 2, 1280 * 2)):
        assert input_size_for_photos(config.model, config.input_size, photos, drawn_for=KAGGLE) == config.input_size


@given(width=st.integers(16, 4000), height=st.integers(16, 4000),
       preset_input=st.sampled_from([(UNET1024, Size(192, 128)), (UNET1024, Size(128, 64)),
                                     (UNET1024, Size(1024, 1024)), (UNET_ORIGINAL, Size(572, 572)),
                                     (UNET_ORIGINAL, Size(572, 444))]))
def test_the_size_is_always_one_the_model_takes_within_the_pixel_allowance(width, height, preset_input):
    model, preset_size = preset_input
    chosen = input_size_for_photos(model, preset_size, Size(width, height), drawn_for=KAGGLE)
    model_geometry(model, chosen)  # raises for a size the model cannot take
    assert chosen.width * chosen.height <= PIXEL_ALLOWANCE * preset_size.width * preset_size.height


@given(width=st.integers(64, 4000), height=st.integers(64, 4000))
def test_a_3_to_2_preset_is_never_further_from_the_photos_shape_than_the_preset_itself(width, height):
    photos = Size(width, height)
    chosen = input_size_for_photos(UNET1024, Size(192, 128), photos, drawn_for=KAGGLE)
    reference = Size(width * 1280 * 3, height * 1918 * 2)  # the photos' aspect times the preset's 3:2 over Kaggle's
    assert aspect_difference(chosen, reference) <= aspect_difference(Size(192, 128), reference) + 1e-9


def test_aspect_difference_is_a_symmetric_fraction():
    assert aspect_difference(Size(192, 128), Size(512, 512)) == pytest.approx(0.5)
    assert aspect_difference(Size(512, 512), Size(192, 128)) == pytest.approx(0.5)
    assert aspect_difference(KAGGLE, Size(959, 640)) == 0


# --------------------------------------------------------------------------- through the command line


def _train(capsys, data_dir: Path, work: Path, *extra) -> tuple[str, dict]:
    code, out, err = run_cli(["train", "--data-dir", data_dir, *QUICK, "--output-dir", work / "output",
                              "--log-dir", work / "logs", "--run-name", "run", *extra], capsys)
    assert code == 0, out + err
    return out, load_checkpoint(work / "output" / "models" / "run" / "last.pt")


def _model_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("Model: "))


def _predict_validate_score(capsys, data_dir: Path, work: Path, photos: Size) -> str:
    """predict with the run's best checkpoint, then validate the submission and score the validation file."""
    submission = work / "submit.csv.gz"
    code, out, err = run_cli(["predict", "--checkpoint", work / "output" / "models" / "run" / "best.pt",
                              "--data-dir", data_dir, "--submission", submission, "--workers", "0"], capsys)
    assert code == 0, out + err
    code, validated, err = run_cli(["validate", submission, "--data-dir", data_dir], capsys)
    assert code == 0, err
    assert f"RLE inside {photos}" in validated
    scored = work / "output" / "validation" / "run"
    code, score_out, err = run_cli(["score", scored / "valid_predictions.csv.gz", "--truth",
                                    scored / "valid_truth.csv", "--image-size", photos], capsys)
    assert code == 0, err
    assert "mean Dice" in score_out
    return out


@pytest.mark.parametrize("photos", [Size(128, 128), Size(96, 64), Size(64, 96)])
def test_a_run_on_photos_of_another_size_trains_predicts_and_scores_at_their_shape(tmp_path, capsys, photos):
    cpu = PRESETS["cpu"]
    expected = input_size_for_photos(cpu.model, cpu.input_size, photos, drawn_for=KAGGLE)
    assert aspect_difference(expected, photos) < 0.1, "the cpu preset's input takes the photos' shape"
    data_dir = make_tiny_carvana(tmp_path, cars=3, size=photos, views=4)
    out, checkpoint = _train(capsys, data_dir, tmp_path)

    assert checkpoint["config"]["input_size"] == list(expected)
    model_line = _model_line(out)
    assert f"input {expected} -> output {expected}" in model_line
    if expected != cpu.input_size:
        assert f"(from the {photos} photos' shape; --input-size overrides)" in model_line
    assert f"validation Dice at {photos}" in out

    predicted = _predict_validate_score(capsys, data_dir, tmp_path, photos)
    assert "warning" not in predicted  # the test photos have the training photos' shape


def test_input_size_given_on_the_command_line_wins_and_a_resume_keeps_the_saved_size(tmp_path, capsys):
    data_dir = make_tiny_carvana(tmp_path, cars=3, size=Size(128, 128), views=4)
    out, checkpoint = _train(capsys, data_dir, tmp_path, "--input-size", "192x128")
    assert checkpoint["config"]["input_size"] == [192, 128]
    assert "photos' shape" not in _model_line(out)

    out, checkpoint = _train(capsys, data_dir, tmp_path, "--resume", "last", "--epochs", "2")
    assert checkpoint["epoch"] == 2
    assert checkpoint["config"]["input_size"] == [192, 128]
    assert "input 192x128 -> output 192x128" in _model_line(out)


def test_predicting_photos_of_another_shape_than_the_training_photos_warns_in_one_line(tmp_path, capsys):
    data_dir = make_tiny_carvana(tmp_path / "square", cars=3, size=Size(128, 128), views=4)
    other = make_tiny_carvana(tmp_path / "wide", cars=2, size=Size(96, 64), views=4)
    _train(capsys, data_dir, tmp_path)

    submission = tmp_path / "wide.csv.gz"
    code, out, err = run_cli(["predict", "--checkpoint", tmp_path / "output" / "models" / "run" / "best.pt",
                              "--data-dir", other, "--submission", submission, "--workers", "0"], capsys)
    assert code == 0, out + err
    warnings = [line for line in out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1
    assert "96x64" in warnings[0] and "128x128" in warnings[0]
    code, validated, err = run_cli(["validate", submission, "--data-dir", other], capsys)
    assert code == 0 and "RLE inside 96x64" in validated, err


# --------------------------------------------------------------------------- real photos


def _real_cars(count: int) -> list[str]:
    return sorted({kl.car_id(p.name) for p in (REAL512 / kl.TRAIN_DIR).glob("*.jpg")})[:count]


@pytest.mark.skipif(not (REAL512 / kl.MASKS_CSV).is_file(), reason=f"real 512x512 photos not found in {REAL512}")
def test_real_512_photos_train_at_a_square_input_and_predict_a_valid_512_submission(tmp_path, capsys):
    """Two real cars to train and validate on, a third as the test set; the fixture is linked, never copied."""
    train_cars, test_car = _real_cars(3)[:2], _real_cars(3)[2]
    data_dir = tmp_path / "input"
    for folder in (kl.TRAIN_DIR, kl.MASKS_DIR, kl.TEST_DIR):
        (data_dir / folder).mkdir(parents=True)
    with open(REAL512 / kl.MASKS_CSV, newline="") as f:
        rows = [row for row in csv.reader(f) if kl.car_id(row[0]) in train_cars]
    with open(data_dir / kl.MASKS_CSV, "w", newline="") as f:
        csv.writer(f).writerows([list(kl.SUBMISSION_HEADER), *rows])
    for name, _ in rows:
        os.symlink(REAL512 / kl.TRAIN_DIR / name, data_dir / kl.TRAIN_DIR / name)
        mask = kl.mask_name(name)
        os.symlink(REAL512 / kl.MASKS_DIR / mask, data_dir / kl.MASKS_DIR / mask)
    test_names = sorted(p.name for p in (REAL512 / kl.TRAIN_DIR).glob(f"{test_car}_*.jpg"))
    for name in test_names:
        os.symlink(REAL512 / kl.TRAIN_DIR / name, data_dir / kl.TEST_DIR / name)
    (data_dir / kl.SAMPLE_SUBMISSION_CSV).write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in test_names))

    out, checkpoint = _train(capsys, data_dir, tmp_path)
    side = checkpoint["config"]["input_size"][0]
    assert checkpoint["config"]["input_size"] == [side, side]
    assert "photos 512x512" in out
    assert "(from the 512x512 photos' shape; --input-size overrides)" in _model_line(out)
    _predict_validate_score(capsys, data_dir, tmp_path, Size(512, 512))
