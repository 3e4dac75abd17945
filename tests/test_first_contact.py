"""What a new user meets first, through the command line: a mistyped folder or command, the credentials
hint, a second sample, a fold run's messages, a cutout folder that cannot be written."""
from __future__ import annotations

from pathlib import Path

import pytest

from carvana.kaggle.credentials import kaggle_config_dir
from cli_helpers import one_line_error, run_cli
from filesystems import read_only

pytestmark = pytest.mark.slow

SAMPLE = ["--sample-cars", "4", "--sample-image-size", "192x128"]
TINY = ["--input-size", "128x64", "--epochs", "1", "--coarse-epochs", "0", "--batch-size", "8", "--workers", "0",
        "--no-tta"]


def test_a_data_dir_that_does_not_exist_is_refused_not_filled_with_the_sample(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    typo = tmp_path / "inptu"
    code, out, err = run_cli(["--data-dir", typo, *TINY], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(typo) in message and "no such folder" in message and "--dataset sample" in message
    assert not typo.exists(), "the mistyped folder is not created"
    assert not (tmp_path / "output" / "models").exists() or not any((tmp_path / "output" / "models").iterdir())


def test_a_data_dir_without_carvana_data_names_what_is_missing(tmp_path, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    code, _, err = run_cli(["fetch", "--data-dir", empty], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(empty) in message and "train.zip" in message and "train_masks.csv" in message
    assert list(empty.iterdir()) == []


def test_an_unknown_command_is_named_beside_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(["trian"], capsys)
    assert exit_.value.code == 2
    message = one_line_error(capsys.readouterr().err)
    assert "'trian'" in message and "'train'" in message and "predict" in message and "unrecognized" not in message


def test_every_credentials_hint_names_the_folder_the_kaggle_client_reads(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = str(kaggle_config_dir())
    empty = tmp_path / "empty"
    empty.mkdir()
    hints = [run_cli(["fetch", "--dataset", "kaggle", "--data-dir", empty], capsys),
             run_cli(["fetch", "--data-dir", empty], capsys),
             run_cli(["fetch", *SAMPLE], capsys)]
    assert [code for code, _, _ in hints] == [1, 1, 0]
    for _, out, err in hints:
        assert folder in out + err and "~/.kaggle" not in out + err


def test_a_sample_a_run_was_trained_on_is_never_replaced_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["train", *SAMPLE, *TINY, "--run-name", "first"], capsys)
    assert code == 0, err
    assert "(1 unseen car)" in out and "finished its 1 epoch" in out
    assert "1 unseen cars" not in out and "1 epochs" not in out

    code, out, err = run_cli(["fetch", "--sample-cars", "4", "--sample-image-size", "96x64"], capsys)
    assert code == 0, err
    assert "Replacing the built-in sample in input/sample (4 training cars at 192x128)" in out

    code, out, err = run_cli(["train", "--resume", "output/models/first", "--epochs", "2"], capsys)
    assert code == 0, err
    assert "Replacing the built-in sample in input/sample (4 training cars at 96x64)" in out
    assert "photos 192x128" in out, "the resumed run goes on with the photos it was trained on"


def test_a_fold_run_on_the_sample_says_each_thing_once_and_shares_one_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["train", *SAMPLE, *TINY, "--folds", "2", "--run-name", "k2"], capsys)
    assert code == 0, err
    assert out.count("no Kaggle credentials") == 1
    assert out.count("Out-of-fold validation Dice") == 1
    assert len(list((tmp_path / "output" / "cache").iterdir())) == 1, "the folds share one decoded cache"
    cache_lines = [line for line in out.splitlines() if line.startswith("Decoded cache:")]
    assert len(cache_lines) == 2 and "reused" in cache_lines[1]


@pytest.mark.parametrize("where", ["read-only folder", "existing file"])
def test_cutout_into_a_folder_that_cannot_be_written_is_one_line(where, tmp_path, capsys):
    photo = tmp_path / "car.jpg"
    photo.write_bytes(b"not decoded before the output is checked")
    if where == "existing file":
        out_dir = tmp_path / "cutouts"
        out_dir.write_text("a file")
        code, _, err = run_cli(["cutout", photo, "--out", out_dir], capsys)
    else:
        out_dir = tmp_path / "locked"
        out_dir.mkdir()
        with read_only(out_dir):
            code, _, err = run_cli(["cutout", photo, "--out", out_dir], capsys)
        assert list(Path(out_dir).iterdir()) == []
    assert code == 1
    assert str(out_dir) in one_line_error(err)
