"""Folds by car: `train --folds K` trains K models, each validated on its own unseen cars, and scores
the out-of-fold predictions of every car; `--resume` continues the fold that was cut."""
from __future__ import annotations

import csv
import gzip
import json
import shutil

import pytest
import yaml

from carvana.core.geometry import Size
from carvana.data.split import fold_split
from carvana.kaggle.files import car_id
from cli_helpers import run_cli
from data_factory import make_tiny_carvana

pytestmark = pytest.mark.slow


def test_every_car_is_validated_by_exactly_one_fold_and_never_trained_on_by_it():
    names = [f"{car:012x}_{view:02d}.jpg" for car in range(11) for view in range(1, 17)]
    folds = [fold_split(names, 4, fold, seed=7) for fold in range(1, 5)]

    validated = [car for split in folds for car in split.valid_cars]
    assert sorted(validated) == sorted({car_id(n) for n in names}), "each car validates once"
    for split in folds:
        assert not set(split.train_cars) & set(split.valid_cars)
        assert sorted(split.train + split.valid) == sorted(names)
        assert 2 <= len(split.valid_cars) <= 3, "fold sizes differ by at most one car"
    assert folds[0] == fold_split(list(reversed(names)), 4, 1, seed=7), "the split depends on the names and seed"
    assert folds[0] != fold_split(names, 4, 1, seed=8)


def test_more_folds_than_cars_is_refused_in_one_line_and_leaves_no_run_behind(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = make_tiny_carvana(tmp_path, cars=2, views=2)
    code, _, err = run_cli(["train", "--data-dir", data_dir, "--folds", "3", "--workers", "0"], capsys)

    assert code != 0 and "--folds 3" in err and err.strip().count("\n") == 0
    assert not any((tmp_path / "output" / "models").iterdir()) and not any((tmp_path / "logs").iterdir())


TINY = ["--preset", "cpu", "--input-size", "64x64", "--width", "0.125", "--epochs", "1", "--batch-size", "4",
        "--workers", "0", "--no-tta", "--coarse-epochs", "0", "--amp", "off"]


def oof_dice(out: str) -> float:
    lines = [line for line in out.splitlines() if line.startswith("Out-of-fold validation Dice at ")]
    assert len(lines) == 1, "the out-of-fold Dice is printed once"
    return float(lines[0].split(": ")[1].split()[0])


def test_a_fold_run_scores_every_car_out_of_fold_and_resume_skips_finished_folds(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = make_tiny_carvana(tmp_path, cars=3, views=4, size=Size(96, 64))
    code, out, err = run_cli(["train", "--data-dir", data_dir, *TINY, "--folds", "3", "--run-name", "k3"], capsys)
    assert code == 0, err

    folder = tmp_path / "output" / "models" / "k3"
    assert all((folder / f"fold-{k}" / "best.pt").is_file() for k in (1, 2, 3))
    assert all((tmp_path / "logs" / "k3" / f"fold-{k}").is_dir() for k in (1, 2, 3))
    validation = tmp_path / "output" / "validation" / "k3"
    with gzip.open(validation / "oof_predictions.csv.gz", "rt") as f:
        predicted = [row["img"] for row in csv.DictReader(f)]
    trained_on = sorted(p.name for p in (data_dir / "train").iterdir())
    assert sorted(predicted) == trained_on, "every training photo is predicted once, by the fold that never saw it"
    dice = oof_dice(out)
    settings = yaml.safe_load((folder / "config.yaml").read_text())
    assert settings["folds"] == 3 and settings["fold"] is None, "the run's settings train all its folds again"
    assert yaml.safe_load((folder / "fold-2" / "config.yaml").read_text())["fold"] == 2
    record = json.loads((folder / "out_of_fold.json").read_text())
    assert record["dice"] == pytest.approx(dice, abs=1e-4) and 0 < record["threshold"] < 1, record
    assert record["checkpoints"] == [str(folder / f"fold-{k}" / "best.pt").replace(str(tmp_path) + "/", "")
                                     for k in (1, 2, 3)]

    code, scored, err = run_cli(["score", validation / "oof_predictions.csv.gz", "--truth",
                                 validation / "oof_truth.csv", "--image-size", "96x64"], capsys)
    assert code == 0, err
    assert abs(float(scored.split("mean Dice ")[1].split()[0]) - dice) < 1e-4, "score gives the printed Dice"

    # The run is cut in fold 3 (its folder lost): the resume trains fold 3 only.
    shutil.rmtree(folder / "fold-3")
    code, out, err = run_cli(["train", "--resume", folder], capsys)
    assert code == 0, err
    fold_lines = [line for line in out.splitlines() if line.startswith("Fold ") and " of run " in line]
    assert [line.split()[1] for line in fold_lines] == ["1/3", "2/3", "3/3"]
    trained_epochs = [line for line in out.splitlines() if line.startswith("epoch 1/1")]
    assert len(trained_epochs) == 1, "folds 1 and 2 had finished: only fold 3 trains"
    assert (folder / "fold-3" / "best.pt").is_file() and "Out-of-fold validation Dice" in out

    code, table, err = run_cli(["runs"], capsys)
    row = next(line for line in table.splitlines() if line.startswith("k3 "))
    assert "finished 3 folds" in row and f"{oof_dice(out):.4f}" in row
