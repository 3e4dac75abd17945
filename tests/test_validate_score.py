"""Checking a submission the way Kaggle does, and scoring it with the competition metric."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carvana.core.errors import DataError, SubmissionError
from carvana.core.geometry import Size
from carvana.kaggle import rle
from carvana.kaggle.rle_csv import write_rle_rows
from carvana.submission.score import dice_from_runs, intersection_from_runs, score_submission
from carvana.submission.validate import validate_submission

IMAGE = Size(8, 4)  # 32 pixels: small enough to reason about by hand
IDS = ["aaa_01.jpg", "aaa_02.jpg", "bbb_01.jpg"]
GOOD = {"aaa_01.jpg": "1 4 9 4", "aaa_02.jpg": "", "bbb_01.jpg": "30 3"}


@pytest.fixture
def sample_submission(tmp_path) -> Path:
    path = tmp_path / "sample_submission.csv"
    path.write_text("img,rle_mask\n" + "".join(f"{i},1 1\n" for i in IDS))
    return path


def gzip_csv(path: Path, text: str) -> Path:
    path.write_bytes(gzip.compress(text.encode()))
    return path


def csv_text(rows: list[tuple[str, str]], header: str = "img,rle_mask") -> str:
    return header + "\n" + "".join(f"{img},{mask}\n" for img, mask in rows)


# --------------------------------------------------------------------------- validate


def test_a_correct_gzip_submission_passes(tmp_path, sample_submission):
    path = tmp_path / "submit.csv.gz"
    write_rle_rows(path, GOOD.items())
    report = validate_submission(path, sample_submission, IMAGE)
    assert (report.rows, report.empty_masks) == (3, 1)


def test_a_plain_csv_in_any_row_order_passes(tmp_path, sample_submission):
    path = tmp_path / "submit.csv"
    path.write_text(csv_text(list(reversed(GOOD.items()))))
    assert validate_submission(path, sample_submission, IMAGE).rows == 3


OTHER_GOOD = list(GOOD.items())[1:]  # every row but aaa_01.jpg
BAD_ROWS = {
    "too few rows": ([("aaa_01.jpg", "1 1"), ("aaa_02.jpg", "")],
                     "1 of the 3 ids of sample_submission.csv are missing .e.g. bbb_01.jpg"),
    "an unknown id": ([*GOOD.items(), ("zzz_01.jpg", "1 1")],
                      "line 5: id zzz_01.jpg is not in sample_submission.csv"),
    "a duplicate id": ([*GOOD.items(), ("aaa_01.jpg", "1 1")], "line 5: id aaa_01.jpg appears more than once"),
    "an odd RLE count": ([("aaa_01.jpg", "1 4 9"), *OTHER_GOOD],
                         "line 2 .aaa_01.jpg.: bad rle_mask: odd number"),
    "a zero length": ([("aaa_01.jpg", "1 0"), *OTHER_GOOD], "run length 0 is not positive"),
    "a negative length": ([("aaa_01.jpg", "1 -2"), *OTHER_GOOD], "run length -2 is not positive"),
    "overlapping runs": ([("aaa_01.jpg", "1 5 3 2"), *OTHER_GOOD], "starting at 3 is not after"),
    "descending runs": ([("aaa_01.jpg", "10 2 1 2"), *OTHER_GOOD], "starting at 1 is not after"),
    "a run past the image": ([("aaa_01.jpg", "30 5"), *OTHER_GOOD], "past the last pixel 32 of a 8x4"),
    "a word in the RLE": ([("aaa_01.jpg", "1 x"), *OTHER_GOOD], "value 'x' is not an integer"),
    "three columns": ([("aaa_01.jpg", "1 1,extra"), *OTHER_GOOD], "line 2 has 3 columns, expected 2"),
}


@pytest.mark.parametrize("case", BAD_ROWS, ids=list(BAD_ROWS))
def test_a_submission_kaggle_would_reject_names_the_file_and_the_first_problem(tmp_path, sample_submission, case):
    rows, message = BAD_ROWS[case]
    path = gzip_csv(tmp_path / "submit.csv.gz", csv_text(rows))
    with pytest.raises(SubmissionError, match=message) as error:
        validate_submission(path, sample_submission, IMAGE)
    assert str(error.value).startswith(f"{path}: ")
    assert "\n" not in str(error.value)


def test_every_problem_is_counted_and_the_first_one_is_named(tmp_path, sample_submission):
    rows = [("aaa_01.jpg", "1"), ("aaa_02.jpg", "5 0"), ("aaa_02.jpg", "")]  # bad, bad, duplicate; bbb missing
    path = gzip_csv(tmp_path / "submit.csv.gz", csv_text(rows))
    with pytest.raises(SubmissionError) as error:
        validate_submission(path, sample_submission, IMAGE)
    message = str(error.value)
    assert "line 2 (aaa_01.jpg): bad rle_mask: odd number" in message
    assert "[4 problems in all: 2 bad RLE rows (e.g. line 2, line 3); 1 duplicate ids (e.g. aaa_02.jpg); " \
           "1 missing ids (e.g. bbb_01.jpg)]" in message


@pytest.mark.parametrize("header", ["id,rle_mask", "img,rle_mask,extra", "img;rle_mask", ""])
def test_a_wrong_header_is_rejected(tmp_path, sample_submission, header):
    path = gzip_csv(tmp_path / "submit.csv.gz", csv_text(list(GOOD.items()), header=header))
    with pytest.raises(SubmissionError, match="header is .*expected 'img,rle_mask'"):
        validate_submission(path, sample_submission, IMAGE)


def test_an_empty_file_is_rejected(tmp_path, sample_submission):
    path = gzip_csv(tmp_path / "submit.csv.gz", "")
    with pytest.raises(SubmissionError, match="submit.csv.gz: empty file"):
        validate_submission(path, sample_submission, IMAGE)


def test_garbage_named_gz_is_rejected(tmp_path, sample_submission):
    path = tmp_path / "submit.csv.gz"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(SubmissionError, match="submit.csv.gz: the name ends in .gz but the file is not gzip"):
        validate_submission(path, sample_submission, IMAGE)


def test_binary_garbage_named_csv_is_rejected(tmp_path, sample_submission):
    path = tmp_path / "submit.csv"
    path.write_bytes(b"\xff\xfe\x00garbage\x9c\n" * 20)
    with pytest.raises(SubmissionError, match="submit.csv: line 1 is not UTF-8 text"):
        validate_submission(path, sample_submission, IMAGE)


def test_a_truncated_gzip_is_rejected(tmp_path, sample_submission):
    path = tmp_path / "submit.csv.gz"
    rows = [(f"{i}", "1 4 9 4") for i in IDS] * 200
    complete = gzip.compress(csv_text(rows).encode())
    path.write_bytes(complete[: len(complete) // 2])
    with pytest.raises(SubmissionError, match="submit.csv.gz: the gzip stream is truncated"):
        validate_submission(path, sample_submission, IMAGE)


@pytest.mark.parametrize("damage", ["checksum", "block type"])
def test_corrupt_gzip_data_is_rejected(tmp_path, sample_submission, damage):
    path = tmp_path / "submit.csv.gz"
    data = bytearray(gzip.compress(csv_text(list(GOOD.items())).encode()))
    if damage == "checksum":
        data[-8] ^= 0xFF  # the CRC-32 of the text, in the gzip trailer
    else:
        data[10] = 0b111  # the first deflate block claims the reserved block type 3
    path.write_bytes(bytes(data))
    with pytest.raises(SubmissionError, match="submit.csv.gz: the gzip data is corrupt"):
        validate_submission(path, sample_submission, IMAGE)


def test_a_missing_file_is_named(tmp_path, sample_submission):
    with pytest.raises(SubmissionError, match="nothing.csv.gz: cannot be read"):
        validate_submission(tmp_path / "nothing.csv.gz", sample_submission, IMAGE)


def test_a_broken_sample_submission_is_a_data_error(tmp_path):
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("img,rle_mask\n")
    path = tmp_path / "submit.csv.gz"
    write_rle_rows(path, GOOD.items())
    with pytest.raises(DataError, match="sample_submission.csv: has no rows"):
        validate_submission(path, sample, IMAGE)


# --------------------------------------------------------------------------- score


@pytest.fixture
def truth_csv(tmp_path) -> Path:
    path = tmp_path / "train_masks.csv"
    path.write_text(csv_text([("aaa_01.jpg", "1 10"), ("aaa_02.jpg", ""), ("bbb_01.jpg", "1 4")]))
    return path


def test_a_perfect_submission_scores_one(tmp_path, truth_csv):
    path = tmp_path / "predictions.csv.gz"
    write_rle_rows(path, [("aaa_01.jpg", "1 10"), ("aaa_02.jpg", ""), ("bbb_01.jpg", "1 4")])
    report = score_submission(path, truth_csv, IMAGE)
    assert report.mean_dice == 1.0
    assert report.n_images == 3
    assert report.per_image == {"aaa_01.jpg": 1.0, "aaa_02.jpg": 1.0, "bbb_01.jpg": 1.0}


def test_a_partial_overlap_scores_the_hand_computed_dice(tmp_path, truth_csv):
    path = tmp_path / "predictions.csv.gz"
    # aaa_01: truth 1..10, predicted 6..15 -> 5 common pixels, Dice 2*5/(10+10) = 0.5
    # aaa_02: both empty -> 1.0; bbb_01: truth 1..4, predicted nothing -> 0.0; extra ids are ignored
    write_rle_rows(path, [("bbb_01.jpg", ""), ("zzz_01.jpg", "1 1"), ("aaa_01.jpg", "6 10"),
                                 ("aaa_02.jpg", "")])
    report = score_submission(path, truth_csv, IMAGE)
    assert report.per_image == {"aaa_01.jpg": 0.5, "aaa_02.jpg": 1.0, "bbb_01.jpg": 0.0}
    assert report.mean_dice == pytest.approx(0.5)


def test_ids_missing_from_the_submission_are_named(tmp_path, truth_csv):
    path = tmp_path / "predictions.csv.gz"
    write_rle_rows(path, [("aaa_01.jpg", "1 10")])
    with pytest.raises(SubmissionError, match="predictions.csv.gz: 2 of the 3 ids of .*train_masks.csv are missing "
                                              r"\(e.g. aaa_02.jpg, bbb_01.jpg\)"):
        score_submission(path, truth_csv, IMAGE)


def test_a_bad_rle_in_the_submission_is_named_with_its_line(tmp_path, truth_csv):
    path = tmp_path / "predictions.csv.gz"
    write_rle_rows(path, [("aaa_01.jpg", "1 10"), ("aaa_02.jpg", "40 2"), ("bbb_01.jpg", "")])
    with pytest.raises(SubmissionError, match="predictions.csv.gz: line 3 .aaa_02.jpg.: bad rle_mask: start 40 is past the last pixel 32"):
        score_submission(path, truth_csv, IMAGE)


def test_a_bad_truth_mask_is_a_data_error(tmp_path):
    truth = tmp_path / "train_masks.csv"
    truth.write_text(csv_text([("aaa_01.jpg", "5 1 2 1")]))
    path = tmp_path / "predictions.csv.gz"
    write_rle_rows(path, [("aaa_01.jpg", "1 10")])
    with pytest.raises(DataError, match="train_masks.csv: line 2 .aaa_01.jpg.: bad rle_mask: run starting at 2"):
        score_submission(path, truth, IMAGE)


def test_dice_of_two_empty_masks_is_one():
    empty = np.zeros((0, 2), np.int64)
    assert dice_from_runs(empty, empty) == 1.0
    assert dice_from_runs(empty, np.array([[3, 2]])) == 0.0


masks = st.tuples(st.integers(1, 12), st.integers(1, 12)).flatmap(
    lambda shape: st.tuples(arrays(np.bool_, shape), arrays(np.bool_, shape)))


@given(masks)
def test_dice_from_runs_equals_dice_of_the_decoded_masks(pair):
    a, b = pair
    runs_a, runs_b = rle.encode_runs(a), rle.encode_runs(b)
    assert intersection_from_runs(runs_a, runs_b) == int((a & b).sum())
    total = int(a.sum() + b.sum())
    expected = 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
    assert dice_from_runs(runs_a, runs_b) == pytest.approx(expected)
    assert dice_from_runs(runs_b, runs_a) == pytest.approx(expected)


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), max_size=12),
       st.lists(st.tuples(st.integers(0, 6), st.integers(1, 6)), max_size=12))
def test_intersection_of_long_sparse_runs_matches_painting_them(gaps_a, gaps_b):
    def runs(gaps):  # (gap before, length) pairs -> ascending disjoint 1-based runs
        out, position = [], 1
        for gap, length in gaps:
            out.append((position + gap, length))
            position += gap + length + 1
        return np.array(out, np.int64).reshape(-1, 2)

    runs_a, runs_b = runs(gaps_a), runs(gaps_b)
    size = 200
    a, b = rle.runs_to_mask(runs_a, 1, size), rle.runs_to_mask(runs_b, 1, size)
    assert intersection_from_runs(runs_a, runs_b) == int((a & b).sum())
