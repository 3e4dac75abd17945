"""A fold run is one run: a new run never takes over its name (or a plain run's), and `predict` given its folder
predicts with all its folds, as its ensemble; a damaged out-of-fold record is named, not half-used."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from carvana import cli
from carvana.core.geometry import Size
from cli_helpers import one_line_error, run_cli
from data_factory import make_tiny_carvana
from filesystems import snapshot

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

TINY = ["--preset", "cpu", "--input-size", "64x64", "--width", "0.125", "--epochs", "1", "--batch-size", "4",
        "--workers", "0", "--no-tta", "--coarse-epochs", "0", "--amp", "off"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A folder with a finished fold run `k2` and a plain run `plain`, trained on tiny data."""
    work = tmp_path_factory.mktemp("work")
    data_dir = make_tiny_carvana(work, cars=3, views=4, size=Size(96, 64))
    where = ["--data-dir", data_dir, "--output-dir", work / "output", "--log-dir", work / "logs"]
    for name, folds in [("k2", ["--folds", "2"]), ("plain", [])]:
        assert cli.main([str(a) for a in ["train", *where, *TINY, *folds, "--run-name", name]]) == 0
    return work


def train(work: Path, capsys, *extra) -> tuple[int, str, str]:
    where = ["--data-dir", work / "input", "--output-dir", work / "output", "--log-dir", work / "logs"]
    return run_cli(["train", *where, *TINY, *extra], capsys)


def everything_of(work: Path, run: str) -> dict:
    return {folder: snapshot(work / folder / run) for folder in ("output/models", "output/validation", "logs")}


@pytest.mark.parametrize("taken, folds", [("k2", ["--folds", "2"]), ("plain", ["--folds", "2"]), ("k2", [])],
                         ids=["fold run over a fold run", "fold run over a plain run", "plain run over a fold run"])
def test_a_new_run_never_takes_over_a_run_with_checkpoints(taken, folds, work, capsys):
    before = everything_of(work, taken)
    code, out, err = train(work, capsys, *folds, "--run-name", taken)
    assert code == 1
    message = one_line_error(err)
    assert f"run {taken} already has checkpoints" in message and "--resume" in message
    assert everything_of(work, taken) == before, "nothing of the run is rescored, rewritten or replaced"
    code, table, _ = run_cli(["runs", "--output-dir", work / "output"], capsys)
    assert {line.split()[0] for line in table.splitlines()[1:] if line.strip()} >= {"k2", "plain"}


def test_predict_given_a_fold_runs_folder_predicts_with_every_fold(work, capsys, tmp_path):
    submission = tmp_path / "submit.csv.gz"
    code, out, err = run_cli(["predict", "--checkpoint", work / "output" / "models" / "k2", "--data-dir",
                              work / "input", "--output-dir", tmp_path, "--submission", submission], capsys)
    assert code == 0, err
    assert "fold run" in out and "Ensemble of 2 models" in out
    for fold in ("fold-1", "fold-2"):
        assert str(work / "output" / "models" / "k2" / fold / "best.pt") in out
    assert "chosen out of fold" in out and submission.is_file()


def test_cutout_given_a_fold_runs_folder_names_one_fold_to_use(work, capsys, tmp_path):
    photo = next((work / "input" / "test").iterdir())
    code, _, err = run_cli(["cutout", photo, "--out", tmp_path / "cut", "--checkpoint",
                            work / "output" / "models" / "k2"], capsys)
    assert code == 1
    message = one_line_error(err)
    assert "fold run of 2 folds" in message and str(work / "output" / "models" / "k2" / "fold-1" / "best.pt") in message


@pytest.mark.parametrize("damage", ['{"threshold": 1.5}', "{not json", '{"threshold": 0.5, "mask_cleanup": "x"}'])
def test_a_damaged_out_of_fold_record_is_named(damage, work, capsys, tmp_path):
    copy = tmp_path / "k2"
    shutil.copytree(work / "output" / "models" / "k2", copy)
    record = copy / "out_of_fold.json"
    assert 0 < json.loads(record.read_text())["threshold"] < 1
    record.write_text(damage)
    code, _, err = run_cli(["predict", "--ensemble", copy, "--data-dir", work / "input", "--output-dir", tmp_path],
                           capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(record) in message and "out-of-fold record" in message
    assert not (tmp_path / "submit.csv.gz").exists()


def test_a_fold_run_among_other_models_is_refused_naming_its_folds(work, capsys, tmp_path):
    models = work / "output" / "models"
    code, _, err = run_cli(["predict", "--checkpoint", models / "k2", models / "plain", "--data-dir", work / "input",
                            "--output-dir", tmp_path], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(models / "k2" / "fold-2" / "best.pt") in message and not (tmp_path / "submit.csv.gz").exists()
