"""The accuracy benchmark's data and reference figures: held-out cars stay held out, un-squashed photos
have Kaggle's geometry, and the resolution ceiling measures what it says (real photos from ../shared)."""
from __future__ import annotations

import csv
import sys

import pytest

from carvana.cli_parser import build_parser
from carvana.core.geometry import Size
from carvana.data.images import image_size, read_mask
from carvana.data.layout import load_carvana_data
from carvana.kaggle import files as kl
from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT))
from bench import bench_accuracy  # noqa: E402

needs_real512 = pytest.mark.skipif(not (bench_accuracy.REAL512 / kl.MASKS_CSV).is_file(),
                                   reason=f"real Carvana photos with masks not found in {bench_accuracy.REAL512}")
SMALL = bench_accuracy.Settings(train_cars=2, held_out_cars=1, seed=3)


def _ids(path) -> list[str]:
    with open(path, newline="") as f:
        return [row["img"] for row in csv.DictReader(f)]


@needs_real512
def test_held_out_cars_are_only_in_the_test_set_and_the_truth(tmp_path):
    train, held_out = bench_accuracy.pick_cars(SMALL)
    data = bench_accuracy.build_data_dir(tmp_path / "real", train, held_out, unsquashed=True)
    loaded = load_carvana_data(data.path)
    trained_cars = {kl.car_id(name) for name in loaded.train_names}
    test_cars = {kl.car_id(name) for name in loaded.test_names}
    assert trained_cars == set(train) and test_cars == set(held_out)
    assert not trained_cars & test_cars
    assert _ids(data.truth_csv) == _ids(data.path / kl.SAMPLE_SUBMISSION_CSV) == bench_accuracy.views(held_out)
    assert bench_accuracy.pick_cars(SMALL) == (train, held_out)  # the same seed draws the same cars


@needs_real512
def test_unsquashed_photos_and_masks_have_kaggles_size_and_the_real_masks_shape(tmp_path):
    train, held_out = bench_accuracy.pick_cars(SMALL)
    data = bench_accuracy.build_data_dir(tmp_path / "real", train, held_out, unsquashed=True)
    name = bench_accuracy.views(train)[0]
    assert image_size(data.path / kl.TRAIN_DIR / name) == Size(1918, 1280)
    mask = read_mask(data.path / kl.MASKS_DIR / kl.mask_name(name), expected_size=Size(1918, 1280))
    original = read_mask(bench_accuracy.REAL512 / kl.MASKS_DIR / kl.mask_name(name))
    # Up-sampling keeps the car's share of the frame (the same silhouette, stretched back to 3:2).
    assert abs(mask.mean() - original.mean()) < 0.005


@needs_real512
def test_resolution_ceiling_is_perfect_at_full_size_and_below_one_at_the_presets_output(tmp_path):
    train, held_out = bench_accuracy.pick_cars(SMALL)
    data = bench_accuracy.build_data_dir(tmp_path / "real", train, held_out, unsquashed=True)
    at_full_size = bench_accuracy.resolution_ceiling(data, Size(1918, 1280))
    assert at_full_size == {"targets": (1.0, 1.0), "soft": (1.0, 1.0)}
    at_output = bench_accuracy.resolution_ceiling(data, Size(192, 128))
    for mean, worst in at_output.values():
        assert 0.98 < worst <= mean < 1.0
    # Soft edges keep sub-pixel information that 0/1 targets throw away.
    assert at_output["soft"][0] > at_output["targets"][0]


def test_without_the_real_photos_the_benchmark_says_so_and_records_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench_accuracy, "REAL512", tmp_path / "absent")
    monkeypatch.setattr(bench_accuracy, "record", lambda *a, **k: pytest.fail("recorded figures without data"))
    figures = bench_accuracy.main(quick=True)
    assert "skipped" in figures
    assert "absent" in capsys.readouterr().out


def test_a_model_and_more_flags_reach_main_py_as_the_command_line_takes_them():
    settings = bench_accuracy.Settings(train_cars=2, held_out_cars=1, seed=3, model="unet_resnet18",
                                       max_time="10m", more_flags=("--attention", "--upsample", "bilinear"))
    args = build_parser().parse_args(["train", *settings.flags()])
    assert (args.model, args.attention, args.upsample, args.max_time) == ("unet_resnet18", True, "bilinear", 600)
