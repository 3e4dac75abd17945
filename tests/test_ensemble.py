"""`predict` with several checkpoints: the mean of their probabilities, streamed into one submission."""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, run_cli
from data_factory import make_tiny_carvana
from training_helpers import ellipse_dataset, tiny_config

from carvana.core.geometry import Size
from carvana.data.datasets import make_test_loader
from carvana.data.layout import load_carvana_data
from carvana.kaggle.rle_csv import read_rle_rows
from carvana.models import build_model
from carvana.predict.ensemble import EnsembleForward, EnsembleMember, ensemble_checkpoints
from carvana.kaggle import rle
from carvana.predict.postprocess import probabilities_to_rle, resize_probabilities
from carvana.predict.predictor import Predictor
from carvana.predict.threshold import ThresholdRecord, save_threshold
from carvana.run.checkpoint import save_checkpoint, settings_entries
from carvana.run.config import Config

RUNNING = ["--device", "cpu", "--workers", "0"]


def write_checkpoint(path: Path, config: Config, seed: int) -> Path:
    """A checkpoint of an untrained tiny model of `config` (weights drawn with `seed`)."""
    torch.manual_seed(seed)
    model = build_model(config.model, config.width)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"format": 1, "model_name": config.model, "width": config.width, "epoch": 1,
                           "global_step": 1, **settings_entries(config), "model_state": model.state_dict()})
    return path


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A tiny Kaggle layout with 8 test photos."""
    return make_tiny_carvana(tmp_path, cars=1, views=4, test_cars=2)


def predict(capsys, data_dir: Path, submission: Path, *args) -> str:
    code, out, err = run_cli(["predict", *args, "--data-dir", data_dir, "--submission", submission, *RUNNING], capsys)
    assert code == 0, out + err
    return out


def rows_of(submission: Path) -> dict[str, str]:
    return {row.img: row.rle_mask for row in read_rle_rows(submission)}


@pytest.mark.parametrize("tta", ["--no-tta", "--tta"])
def test_two_identical_checkpoints_give_the_single_models_submission_byte_for_byte(tmp_path, data_dir, capsys, tta):
    single = write_checkpoint(tmp_path / "a" / "best.pt", tiny_config(), seed=1)
    twin = tmp_path / "b" / "best.pt"
    twin.parent.mkdir()
    shutil.copy(single, twin)

    alone = predict(capsys, data_dir, tmp_path / "single.csv.gz", "--checkpoint", single, tta)
    together = predict(capsys, data_dir, tmp_path / "ensemble.csv.gz", "--checkpoint", single, twin.parent, tta)

    assert "Ensemble" not in alone
    assert "Ensemble of 2 models" in together and str(single) in together and str(twin) in together
    assert gzip.decompress((tmp_path / "ensemble.csv.gz").read_bytes()) == \
        gzip.decompress((tmp_path / "single.csv.gz").read_bytes())


def test_two_different_checkpoints_predict_the_mean_of_their_probabilities_at_the_first_ones_threshold(
        tmp_path, data_dir, capsys):
    configs = [tiny_config(), tiny_config(width=0.25, preset="unet1024")]  # another width and preset, one size
    paths = [write_checkpoint(tmp_path / f"model-{i}.pt", config, seed=i) for i, config in enumerate(configs)]
    data = load_carvana_data(data_dir, need_train=False)
    loader = make_test_loader(data, configs[0].geometry, configs[0], workers=0)
    members = [Predictor.from_checkpoint(config, path) for config, path in zip(configs, paths)]
    names, means, own = [], [], [[], []]
    for images, batch_names in loader:
        probabilities = [member.predict_probabilities(images, tta=False) for member in members]
        names += batch_names
        means.append((probabilities[0] + probabilities[1]) / 2)
        for mine, batch in zip(own, probabilities):
            mine.append(batch)
    mean = torch.cat(means).numpy()
    # The first model's saved threshold cuts the mean map in the middle; the second's is never used.
    threshold = round(float(np.median(mean)), 4)
    save_threshold(paths[0], ThresholdRecord(threshold, chosen=True, validation_dice=0.9, validation_cars=1))
    save_threshold(paths[1], ThresholdRecord(0.2, chosen=True, validation_dice=0.9, validation_cars=1))

    out = predict(capsys, data_dir, tmp_path / "ensemble.csv.gz", "--checkpoint", *paths, "--no-tta")

    expected = {name: probabilities_to_rle(p, data.image_size, threshold) for name, p in zip(names, mean)}
    assert rows_of(tmp_path / "ensemble.csv.gz") == expected
    for mine in own:  # the mean is no member's prediction: the test tells them apart
        assert {name: probabilities_to_rle(p, data.image_size, threshold)
                for name, p in zip(names, torch.cat(mine).numpy())} != expected
    assert f"threshold {threshold:g} (the first model's)" in out


def test_a_flag_overrides_the_first_models_threshold(tmp_path, data_dir, capsys):
    paths = [write_checkpoint(tmp_path / f"model-{i}.pt", tiny_config(), seed=i) for i in range(2)]
    save_threshold(paths[0], ThresholdRecord(0.45, chosen=True, validation_dice=0.9, validation_cars=1))

    out = predict(capsys, data_dir, tmp_path / "ensemble.csv.gz", "--checkpoint", *paths, "--threshold", "0.6")

    assert "threshold 0.6 (--threshold)" in out and "threshold 0.6: from --threshold" in out


def test_each_member_flips_as_its_recipe_says_unless_the_ensemble_is_asked_to():
    images, _ = ellipse_dataset(count=2).tensors
    predictors = [Predictor.for_config(tiny_config(), _model(seed), progress=False) for seed in (1, 2)]
    ensemble = EnsembleForward([EnsembleMember(Path("a.pt"), predictors[0].forward, tta=True),
                                EnsembleMember(Path("b.pt"), predictors[1].forward, tta=False)])

    flipped = [p.predict_probabilities(images, tta=True) for p in predictors]
    plain = [p.predict_probabilities(images, tta=False) for p in predictors]
    assert not ensemble.tta
    assert torch.equal(ensemble.probabilities(images), (flipped[0] + plain[1]) / 2)
    assert torch.equal(ensemble.probabilities(images, tta=True), (flipped[0] + flipped[1]) / 2)


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(tiny_config().model, tiny_config().width)


def test_ensemble_takes_every_best_pt_one_level_below_the_run_folder_in_fold_order(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    folds = [write_checkpoint(run / f"fold-{k}" / "best.pt", tiny_config(), seed=k) for k in (1, 2, 10)]
    write_checkpoint(run / "fold-1" / "last.pt", tiny_config(), seed=7)  # not a best.pt
    write_checkpoint(run / "fold-2" / "deeper" / "best.pt", tiny_config(), seed=8)  # two levels down
    (run / "validation").mkdir()  # a folder without one

    assert ensemble_checkpoints(run, "best.pt") == folds

    out = predict(capsys, data_dir, tmp_path / "folds.csv.gz", "--ensemble", run)
    predict(capsys, data_dir, tmp_path / "listed.csv.gz", "--checkpoint", *folds)
    banner = next(line for line in out.splitlines() if line.startswith("Ensemble of 3 models"))
    assert [banner.index(str(path)) for path in folds] == sorted(banner.index(str(path)) for path in folds)
    assert gzip.decompress((tmp_path / "folds.csv.gz").read_bytes()) == \
        gzip.decompress((tmp_path / "listed.csv.gz").read_bytes())


def test_a_run_folder_without_best_pt_below_it_is_refused_in_one_line(tmp_path, data_dir, capsys):
    empty = tmp_path / "run"
    (empty / "fold-1").mkdir(parents=True)

    code, _, err = run_cli(["predict", "--ensemble", empty, "--data-dir", data_dir, *RUNNING], capsys)

    assert code == 1 and f"{empty}: no best.pt one level below it" in one_line_error(err)
    assert not (tmp_path / "output").exists()


def test_checkpoints_of_different_sizes_are_averaged_at_the_photos_size(tmp_path, data_dir, capsys):
    configs = [tiny_config(), tiny_config(input_size=Size(128, 64), width=0.25)]  # 64x64 and 128x64 models
    paths = [write_checkpoint(tmp_path / f"model-{i}.pt", config, seed=i) for i, config in enumerate(configs)]
    data = load_carvana_data(data_dir, need_train=False)
    # Each model alone: its own loader at its own size, its map up-sampled to the photos' size.
    alone = []
    for config, path in zip(configs, paths):
        member = Predictor.from_checkpoint(config, path)
        maps = [resize_probabilities(member.predict_probabilities(images, tta=False), data.image_size)
                for images, _ in make_test_loader(data, config.geometry, config, workers=0)]
        alone.append(torch.cat(maps))
    mean = (alone[0] + alone[1]) / 2
    threshold = round(float(mean.median()), 4)
    save_threshold(paths[0], ThresholdRecord(threshold, chosen=True, validation_dice=0.9, validation_cars=1))

    out = predict(capsys, data_dir, tmp_path / "ensemble.csv.gz", "--checkpoint", *paths, "--no-tta")

    assert f"averaged at the photos' size {data.image_size} (the models cover 64x64, 128x64)" in out
    expected = {name: rle.encode(p > threshold) for name, p in zip(data.test_names, mean.numpy())}
    assert rows_of(tmp_path / "ensemble.csv.gz") == expected
    for own in alone:  # the mean is no member's prediction: the test tells them apart
        assert {name: rle.encode(p > threshold) for name, p in zip(data.test_names, own.numpy())} != expected


def test_a_loader_for_several_geometries_gives_each_model_its_own_input(data_dir):
    square, wide = tiny_config(), tiny_config(input_size=Size(128, 64))
    paths = load_carvana_data(data_dir, need_train=False).test_image_paths()[:2]
    both = next(iter(make_test_loader(paths, [square.geometry, wide.geometry], batch_size=2, workers=0)))[0]
    for geometry, batch in zip((square.geometry, wide.geometry), both):
        own = next(iter(make_test_loader(paths, geometry, batch_size=2, workers=0)))[0]
        assert torch.equal(batch, own) and batch.shape[-2:] == (geometry.input_size.height, geometry.input_size.width)


def test_checkpoint_and_ensemble_together_are_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(["predict", "--checkpoint", tmp_path / "a.pt", "--ensemble", tmp_path], capsys)

    assert exit_.value.code == 2
    assert "argument --ensemble: not allowed with argument --checkpoint" in one_line_error(capsys.readouterr().err)
