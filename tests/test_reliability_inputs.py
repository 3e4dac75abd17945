"""Bad inputs through the command line, as a user meets them: every one is refused with ONE line on
stderr that names the file (or setting) at fault, a non-zero exit code, no traceback, and nothing
already in the output folder replaced (a previous submission and checkpoint are kept byte for byte).

Runs `carvana.cli.main([...])` in-process: the same code path as `python main.py`, without paying
for a new interpreter per case.
"""
from __future__ import annotations

import gzip
import hashlib
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from carvana import cli
from carvana.kaggle import files as kl
from cli_helpers import run_cli
from data_factory import make_tiny_carvana, write_gif_mask

pytestmark = pytest.mark.reliability

TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment"]


# --------------------------------------------------------------------------- helpers


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def output(tmp_path) -> Path:
    """An output folder holding a previous run's submission and checkpoint (sentinels)."""
    out = tmp_path / "output"
    (out / "models" / "earlier").mkdir(parents=True)
    (out / "submit.csv.gz").write_bytes(gzip.compress(b"img,rle_mask\nearlier,1 1\n"))
    (out / "models" / "earlier" / "best.pt").write_bytes(b"an earlier run's checkpoint")
    return out


def assert_refused(code: int, out: str, err: str, names: str | Path, output: Path, before: dict[str, str]) -> str:
    assert code != 0, out
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(names) in lines[0], lines[0]
    assert snapshot(output) == before, "nothing in the output folder was replaced or added"
    return lines[0]


def first(folder: Path, pattern: str = "*") -> Path:
    return sorted(folder.glob(pattern))[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """best.pt of a finished 1-epoch run on tiny data."""
    work = tmp_path_factory.mktemp("trained")
    data = make_tiny_carvana(work, cars=2, views=4)
    args = ["train", "--dataset", "auto", "--data-dir", data, *TINY, "--epochs", "1", "--run-name", "tiny",
            "--validation-size", "0.5", "--output-dir", work / "output", "--log-dir", work / "logs"]
    assert cli.main([str(a) for a in args]) == 0
    return work / "output" / "models" / "tiny" / "best.pt"


# --------------------------------------------------------------------------- broken data, `main.py run`

# Each case damages a fresh tiny dataset and returns the path the error must name.
Damage = Callable[[Path], Path]


def garble(photo: Path) -> Path:
    """Start and end markers of a JPEG around random bytes: looks complete, cannot be decoded."""
    photo.write_bytes(b"\xff\xd8" + np.random.default_rng(0).bytes(4000) + b"\xff\xd9")
    return photo


def cut_short(photo: Path) -> Path:
    photo.write_bytes(photo.read_bytes()[:400])
    return photo


def corrupt_jpeg(data: Path) -> Path:
    return garble(first(data / kl.TRAIN_DIR))


def truncated_jpeg(data: Path) -> Path:
    return cut_short(first(data / kl.TRAIN_DIR))


def corrupt_test_jpeg(data: Path) -> Path:
    return garble(first(data / kl.TEST_DIR))


def truncated_test_jpeg(data: Path) -> Path:
    return cut_short(first(data / kl.TEST_DIR))


def text_named_jpg(data: Path) -> Path:
    photo = first(data / kl.TRAIN_DIR)
    photo.write_text("<html>403 Forbidden</html>")
    return photo


def zero_byte_gif(data: Path) -> Path:
    mask = first(data / kl.MASKS_DIR)
    mask.write_bytes(b"")
    return mask


def truncated_gif(data: Path) -> Path:
    mask = first(data / kl.MASKS_DIR)
    mask.write_bytes(mask.read_bytes()[:60])
    return mask


def mask_of_another_size(data: Path) -> Path:
    mask = first(data / kl.MASKS_DIR)
    write_gif_mask(mask, np.ones((64, 96), np.uint8))
    return mask


def mask_with_grey_values(data: Path) -> Path:
    mask = first(data / kl.MASKS_DIR)
    values = np.zeros((128, 192), np.uint8)
    values[40:80, 50:150] = 1
    values[60:70, 60:70] = 2
    image = Image.frombytes("P", (192, 128), values.tobytes())
    image.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128])
    image.save(mask, format="GIF")
    return mask


def photo_without_mask(data: Path) -> Path:
    mask = first(data / kl.MASKS_DIR)
    mask.unlink()
    return mask


def mask_without_photo(data: Path) -> Path:
    first(data / kl.TRAIN_DIR).unlink()
    return first(data / kl.MASKS_DIR)


def masks_csv_bad_header(data: Path) -> Path:
    csv = data / kl.MASKS_CSV
    csv.write_text(csv.read_text().replace("img,rle_mask", "id,mask", 1))
    return csv


def masks_csv_bad_rle(data: Path) -> Path:
    csv = data / kl.MASKS_CSV
    lines = csv.read_text().splitlines()
    lines[2] = lines[2].split(",")[0] + ",5 10 3"  # an odd number of values
    csv.write_text("\n".join(lines) + "\n")
    return csv


def masks_csv_missing(data: Path) -> Path:
    (data / kl.MASKS_CSV).unlink()
    return data / kl.MASKS_CSV


def sample_submission_missing(data: Path) -> Path:
    (data / kl.SAMPLE_SUBMISSION_CSV).unlink()
    return data / kl.SAMPLE_SUBMISSION_CSV


def sample_submission_duplicate_id(data: Path) -> Path:
    csv = data / kl.SAMPLE_SUBMISSION_CSV
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines, lines[1]]) + "\n")
    return csv


def listed_test_photo_missing(data: Path) -> Path:
    photo = first(data / kl.TEST_DIR)
    photo.unlink()
    return photo


TRAINING_DATA_DAMAGE = [corrupt_jpeg, truncated_jpeg, text_named_jpg, zero_byte_gif, truncated_gif,
                        mask_of_another_size, mask_with_grey_values, photo_without_mask, mask_without_photo,
                        masks_csv_bad_header, masks_csv_bad_rle, masks_csv_missing]
# The whole pipeline ends by predicting the test set: its layout is checked before training starts.
TEST_DATA_DAMAGE = [sample_submission_missing, sample_submission_duplicate_id, listed_test_photo_missing]


@pytest.mark.parametrize("damage", TRAINING_DATA_DAMAGE + TEST_DATA_DAMAGE, ids=lambda f: f.__name__)
def test_main_refuses_broken_data_naming_the_file(damage: Damage, tmp_path, output, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_tiny_carvana(tmp_path, cars=3, views=4)
    culprit = damage(data)
    before = snapshot(output)
    code, out, err = run_cli(["run", "--dataset", "auto", "--data-dir", data, *TINY, "--epochs", "1",
                              "--output-dir", output, "--log-dir", tmp_path / "logs"], capsys)
    assert_refused(code, out, err, culprit, output, before)
    if damage in TEST_DATA_DAMAGE:
        assert "epoch 1/1" not in out, "found before an epoch was spent on training"


# --------------------------------------------------------------------------- `main.py predict`


@pytest.mark.parametrize("damage", [corrupt_test_jpeg, truncated_test_jpeg, sample_submission_missing,
                                    sample_submission_duplicate_id, listed_test_photo_missing],
                         ids=lambda f: f.__name__)
def test_predict_refuses_a_broken_test_set_naming_the_file(damage: Damage, checkpoint, tmp_path, output, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=4, test_cars=2)
    culprit = damage(data)
    before = snapshot(output)
    code, out, err = run_cli(["predict", "--checkpoint", checkpoint, "--data-dir", data, "--output-dir", output,
                              "--workers", "0"], capsys)
    assert_refused(code, out, err, culprit, output, before)


@pytest.mark.parametrize("name, gzipped", [("submit.csv", False), ("submit.csv.gz", True), ("mine.gz", True)])
def test_predict_writes_a_submission_whose_content_matches_its_name(name, gzipped, checkpoint, tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    submission = tmp_path / name
    code, out, err = run_cli(["predict", "--checkpoint", checkpoint, "--data-dir", data, "--submission", submission,
                              "--workers", "0"], capsys)
    assert code == 0, err
    assert (submission.read_bytes()[:2] == b"\x1f\x8b") == gzipped
    text = gzip.decompress(submission.read_bytes()) if gzipped else submission.read_bytes()
    assert text.startswith(b"img,rle_mask\n") and text.count(b"\n") == 3
    code, out, err = run_cli(["validate", submission, "--data-dir", data], capsys)
    assert code == 0, err


@pytest.mark.parametrize("name", ["submit.txt", "submit", "submit.zip"])
def test_predict_refuses_a_submission_name_that_is_neither_csv_nor_gz(name, checkpoint, tmp_path, output, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    before = snapshot(output)
    code, out, err = run_cli(["predict", "--checkpoint", checkpoint, "--data-dir", data,
                              "--submission", output / name, "--workers", "0"], capsys)
    message = assert_refused(code, out, err, output / name, output, before)
    assert ".csv" in message and ".gz" in message
    assert "Predicting" not in out, "refused before any prediction"


def test_predict_with_an_empty_data_dir_names_the_missing_test_list(checkpoint, tmp_path, output, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = snapshot(output)
    code, out, err = run_cli(["predict", "--checkpoint", checkpoint, "--data-dir", empty, "--output-dir", output],
                             capsys)
    message = assert_refused(code, out, err, empty / kl.SAMPLE_SUBMISSION_CSV, output, before)
    assert "fetch" in message


# --------------------------------------------------------------------------- checkpoints


def corrupt_checkpoint(good: Path, path: Path) -> None:
    path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])


def foreign_checkpoint(good: Path, path: Path) -> None:
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)  # someone else's state_dict


def checkpoint_of_another_width(good: Path, path: Path) -> None:
    payload = torch.load(good, weights_only=True)
    payload["config"]["width"] = payload["width"] = 0.5  # says one model, holds the weights of another
    torch.save(payload, path)


class Exploit:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        import os

        return os.system, ("touch PWNED",)


def pickled_code(good: Path, path: Path) -> None:
    payload = torch.load(good, weights_only=True)
    payload["extra"] = Exploit()
    with open(path, "wb") as f:
        torch.save(payload, f, pickle_module=pickle)


@pytest.mark.parametrize("make", [corrupt_checkpoint, foreign_checkpoint, checkpoint_of_another_width, pickled_code],
                         ids=lambda f: f.__name__)
def test_predict_refuses_a_bad_checkpoint_naming_it(make, checkpoint, tmp_path, output, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    bad = tmp_path / "given.pt"
    make(checkpoint, bad)
    before = snapshot(output)
    code, out, err = run_cli(["predict", "--checkpoint", bad, "--data-dir", data, "--output-dir", output], capsys)
    assert_refused(code, out, err, bad, output, before)
    assert not (tmp_path / "PWNED").exists(), "loading a checkpoint never runs code from it"


@pytest.mark.parametrize("make", [corrupt_checkpoint, pickled_code], ids=lambda f: f.__name__)
def test_resume_refuses_a_bad_checkpoint_naming_it(make, checkpoint, tmp_path, output, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = make_tiny_carvana(tmp_path, cars=3, views=2)
    bad = tmp_path / "last.pt"
    make(checkpoint, bad)
    before = snapshot(output)
    code, out, err = run_cli(["train", "--dataset", "auto", "--data-dir", data, *TINY, "--resume", bad,
                              "--output-dir", output, "--log-dir", tmp_path / "logs"], capsys)
    assert_refused(code, out, err, bad, output, before)
    assert not (tmp_path / "PWNED").exists()


def test_resume_last_without_any_run_says_there_is_none(tmp_path, output, capsys):
    data = make_tiny_carvana(tmp_path, cars=3, views=2)
    (output / "models" / "earlier" / "best.pt").unlink()
    before = snapshot(output)
    code, out, err = run_cli(["train", "--dataset", "auto", "--data-dir", data, *TINY, "--resume", "last",
                              "--output-dir", output, "--log-dir", tmp_path / "logs"], capsys)
    assert_refused(code, out, err, output / "models", output, before)


def test_a_new_run_never_overwrites_the_checkpoints_of_an_earlier_run_with_the_same_name(tmp_path, output, capsys):
    data = make_tiny_carvana(tmp_path, cars=3, views=2)
    before = snapshot(output)
    code, out, err = run_cli(["train", "--dataset", "auto", "--data-dir", data, *TINY, "--run-name", "earlier",
                              "--output-dir", output, "--log-dir", tmp_path / "logs"], capsys)
    message = assert_refused(code, out, err, output / "models" / "earlier", output, before)
    assert "--resume" in message


# --------------------------------------------------------------------------- settings the model cannot take


@pytest.mark.parametrize("flags, named", [
    (["--model", "unet_original", "--input-size", "570"], "570x570"),
    (["--input-size", "100x64"], "100x64"),
])
def test_an_input_size_the_model_cannot_take_is_refused_before_anything_runs(flags, named, tmp_path, output, capsys):
    data = make_tiny_carvana(tmp_path, cars=3, views=2)
    before = snapshot(output)
    args = ["train", "--dataset", "auto", "--data-dir", data, *TINY, *flags, "--output-dir", output,
            "--log-dir", tmp_path / "logs"]
    code, out, err = run_cli(args, capsys)
    assert_refused(code, out, err, named, output, before)
    assert not (tmp_path / "logs").exists()


# --------------------------------------------------------------------------- `main.py validate`

IDS = [f"0cdf5b5d0ce1_{view:02d}.jpg" for view in range(1, 5)]


def write_rows(path: Path, lines: list[str]) -> Path:
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


SUBMISSIONS = {
    "too few rows": ["img,rle_mask", *[f"{i},1 5" for i in IDS[:-1]]],
    "too many rows": ["img,rle_mask", *[f"{i},1 5" for i in IDS], "ffffffffffff_01.jpg,1 5"],
    "a duplicate row": ["img,rle_mask", *[f"{i},1 5" for i in IDS], f"{IDS[0]},1 5"],
    "bad RLE": ["img,rle_mask", *[f"{i},1 5" for i in IDS[:-1]], f"{IDS[-1]},9 3 1 2"],
    "RLE past the image": ["img,rle_mask", *[f"{i},1 5" for i in IDS[:-1]], f"{IDS[-1]},24570 10"],
    "wrong header": ["id,mask", *[f"{i},1 5" for i in IDS]],
}


@pytest.mark.parametrize("case", SUBMISSIONS)
def test_validate_refuses_a_submission_kaggle_would_reject(case, tmp_path, capsys):
    sample = tmp_path / kl.SAMPLE_SUBMISSION_CSV
    sample.write_text("img,rle_mask\n" + "".join(f"{i},1 1\n" for i in IDS))
    submission = write_rows(tmp_path / "submit.csv.gz", SUBMISSIONS[case])
    code, out, err = run_cli(["validate", submission, "--sample-submission", sample, "--image-size", "192x128"],
                             capsys)
    assert_refused(code, out, err, submission, tmp_path / "none", {})


def test_validate_against_an_empty_data_dir_names_the_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    submission = write_rows(tmp_path / "submit.csv.gz", ["img,rle_mask"])
    code, out, err = run_cli(["validate", submission, "--data-dir", empty], capsys)
    assert_refused(code, out, err, empty, tmp_path / "none", {})
