"""`img,rle_mask` files as users have them: re-saved by Excel or an editor, written by hand, named
.csv or .gz. The check before training, `validate`, `score` and `predict` read them the same way, so
a run that starts from a sample submission always ends with a submission that passes validation;
files the tool writes are canonical (`img,rle_mask`, LF, no quotes) and their content matches their
name; a file that cannot be read is refused with one line naming the file and the line.
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Callable

import pytest

from carvana.core.errors import DataError
from carvana.data.layout import load_carvana_data
from carvana.kaggle import files as kl
from cli_helpers import one_line_error, run_cli
from data_factory import make_tiny_carvana
from fake_kaggle import fake_kaggle  # noqa: F401 (fixture)

pytestmark = pytest.mark.reliability

TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment"]

# Each form turns (header, rows of (img, rle_mask)) into the bytes of a file.
Form = Callable[[list[tuple[str, str]]], bytes]


def canonical(rows: list[tuple[str, str]]) -> bytes:
    return ("img,rle_mask\n" + "".join(f"{img},{mask}\n" for img, mask in rows)).encode()


def utf8_bom(rows):
    return b"\xef\xbb\xbf" + canonical(rows)


def spaces_in_header(rows):
    return canonical(rows).replace(b"img,rle_mask", b"img, rle_mask", 1)


def excel_quotes_and_crlf(rows):
    return ('"img","rle_mask"\r\n' + "".join(f'"{img}","{mask}"\r\n' for img, mask in rows)).encode()


def ids_with_trailing_spaces(rows):
    return ("img,rle_mask\n" + "".join(f"{img}   ,{mask}\n" for img, mask in rows)).encode()


def spaces_around_quoted_fields_and_blank_lines(rows):
    return ("img , rle_mask\n\n" + "".join(f' "{img}" , "{mask}" \n\n' for img, mask in rows) + "  \n").encode()


HARMLESS = [utf8_bom, spaces_in_header, excel_quotes_and_crlf, ids_with_trailing_spaces,
            spaces_around_quoted_fields_and_blank_lines]


# Each really bad form comes with what the one-line error must say.
def semicolons(rows):
    return ("img;rle_mask\n" + "".join(f"{img};{mask}\n" for img, mask in rows)).encode()


def utf16(rows):
    return canonical(rows).decode().encode("utf-16")


def unbalanced_quote(rows):
    lines = canonical(rows).decode().splitlines()
    lines[2] = '"' + lines[2]
    return ("\n".join(lines) + "\n").encode()


def three_columns(rows):
    lines = canonical(rows).decode().splitlines()
    lines[2] += ",extra"
    return ("\n".join(lines) + "\n").encode()


def empty_id(rows):
    return canonical(rows) + b",1 1\n"


def gzip_in_a_csv_name(rows):
    return gzip.compress(canonical(rows))


REALLY_BAD = {
    semicolons: "separated by semicolons",
    utf16: "UTF-16",
    unbalanced_quote: "line 3 has a quote that does not enclose a whole field",
    three_columns: "line 3 has 3 columns",
    empty_id: "has an empty img name",
    gzip_in_a_csv_name: "the name ends in .csv but the file is gzip-compressed",
}


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def listed_test_photos(data: Path) -> list[str]:
    return sorted(p.name for p in (data / kl.TEST_DIR).iterdir())


def canonical_submission(path: Path, ids: list[str]) -> Path:
    path.write_bytes(gzip.compress(canonical([(i, "1 5") for i in ids])))
    return path


# --------------------------------------------------------------------------- the whole run


@pytest.mark.parametrize("form", HARMLESS[:4], ids=lambda f: f.__name__)
def test_main_ends_with_a_valid_canonical_submission_from_a_re_saved_sample_submission(form, tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=3, views=4)
    ids = listed_test_photos(data)
    (data / kl.SAMPLE_SUBMISSION_CSV).write_bytes(form([(i, "1 1") for i in ids]))
    output = tmp_path / "output"
    code, out, err = run_cli(["run", "--dataset", "auto", "--data-dir", data, *TINY, "--epochs", "1",
                              "--output-dir", output, "--log-dir", tmp_path / "logs"], capsys)
    assert code == 0, err
    assert f"{output / 'submit.csv.gz'} ({len(ids)} rows, valid)" in out
    written = gzip.decompress((output / "submit.csv.gz").read_bytes()).decode()
    assert written.startswith("img,rle_mask\n") and "\r" not in written and '"' not in written
    assert [line.split(",")[0] for line in written.splitlines()[1:]] == ids


@pytest.mark.parametrize("form", list(REALLY_BAD), ids=lambda f: f.__name__)
def test_main_refuses_an_unreadable_sample_submission_before_training_and_replaces_nothing(form, tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=3, views=4)
    sample = data / kl.SAMPLE_SUBMISSION_CSV
    sample.write_bytes(form([(i, "1 1") for i in listed_test_photos(data)]))
    output = tmp_path / "output"
    output.mkdir()
    (output / "submit.csv.gz").write_bytes(gzip.compress(b"img,rle_mask\nearlier,1 1\n"))
    before = snapshot(output)
    code, out, err = run_cli(["run", "--dataset", "auto", "--data-dir", data, *TINY, "--epochs", "1",
                              "--output-dir", output, "--log-dir", tmp_path / "logs"], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(sample) in message and REALLY_BAD[form] in message, message
    assert "epoch 1/1" not in out, "refused before an epoch was spent on training"
    assert snapshot(output) == before


# --------------------------------------------------------------------------- the check before training = validate


@pytest.mark.parametrize("form", HARMLESS + list(REALLY_BAD), ids=lambda f: f.__name__)
def test_the_check_before_training_and_validate_agree_on_every_sample_submission(form, tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=4)
    ids = listed_test_photos(data)
    sample = data / kl.SAMPLE_SUBMISSION_CSV
    sample.write_bytes(form([(i, "1 1") for i in ids]))
    try:
        early = load_carvana_data(data, need_train=False).test_names
    except DataError as error:
        early = error
    submission = canonical_submission(tmp_path / "submit.csv.gz", ids)
    code, out, err = run_cli(["validate", submission, "--sample-submission", sample, "--image-size", "192x128"],
                             capsys)
    if form in HARMLESS:
        assert early == ids
        assert code == 0, err
        assert "valid" in out
    else:
        assert isinstance(early, DataError) and REALLY_BAD[form] in str(early)
        assert code == 1
        assert one_line_error(err) == f"error: {early}"


@pytest.mark.parametrize("form", HARMLESS, ids=lambda f: f.__name__)
def test_a_re_saved_train_masks_csv_trains_and_scores_like_the_original(form, tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=4)
    masks_csv = data / kl.MASKS_CSV
    rows = [tuple(line.split(",")) for line in masks_csv.read_text().splitlines()[1:]]
    masks_csv.write_bytes(form(rows))
    assert load_carvana_data(data, need_test=False).train_rle == dict(rows)
    predictions = tmp_path / "predictions.csv.gz"
    predictions.write_bytes(gzip.compress(canonical(rows)))
    code, out, err = run_cli(["score", predictions, "--truth", masks_csv, "--image-size", "192x128"], capsys)
    assert code == 0, err
    assert "mean Dice 1.00000 over 4 images" in out


def test_a_utf16_train_masks_csv_is_refused_naming_it(tmp_path):
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    masks_csv = data / kl.MASKS_CSV
    masks_csv.write_bytes(masks_csv.read_text().encode("utf-16"))
    with pytest.raises(DataError, match="train_masks.csv: is UTF-16 text; save it as 'CSV UTF-8'"):
        load_carvana_data(data, need_test=False)


# --------------------------------------------------------------------------- content and name


def test_validate_refuses_gzip_content_under_a_csv_name(tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    submission = tmp_path / "submit.csv"
    submission.write_bytes(gzip.compress(canonical([(i, "1 5") for i in listed_test_photos(data)])))
    code, out, err = run_cli(["validate", submission, "--data-dir", data], capsys)
    assert code == 1
    message = one_line_error(err)
    assert f"{submission}: the name ends in .csv but the file is gzip-compressed" in message
    assert "submit.csv.gz" in message, "says what to rename it to"


def test_validate_refuses_plain_text_under_a_gz_name(tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    submission = tmp_path / "submit.csv.gz"
    submission.write_bytes(canonical([(i, "1 5") for i in listed_test_photos(data)]))
    code, out, err = run_cli(["validate", submission, "--data-dir", data], capsys)
    assert code == 1
    assert f"{submission}: the name ends in .gz but the file is not gzip-compressed" in one_line_error(err)


# --------------------------------------------------------------------------- RLE numbers

OUT_OF_RANGE = {
    "99999999999999999999 1": "value 99999999999999999999 is too large",
    "9223372036854775807 10": "start 9223372036854775807 is past the last pixel 24576",
    "1 9223372036854775807": "run length 9223372036854775807 is longer than the 24576 pixels",
    "1e3 5": "value '1e3' is not an integer",
    "0 3": "start 0 is not a positive pixel number",
    "1 -1": "run length -1 is not positive",
}


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_validate_names_the_line_of_an_rle_number_out_of_range(text, tmp_path, capsys):
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    ids = listed_test_photos(data)
    submission = tmp_path / "submit.csv.gz"
    submission.write_bytes(gzip.compress(canonical([(ids[0], "1 5"), (ids[1], text)])))
    code, out, err = run_cli(["validate", submission, "--data-dir", data], capsys)
    assert code == 1
    message = one_line_error(err)
    assert f"{submission}: line 3 ({ids[1]}): bad rle_mask: {OUT_OF_RANGE[text]}" in message, message


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_score_names_the_truth_file_and_line_of_an_rle_number_out_of_range(text, tmp_path, capsys):
    truth = tmp_path / "valid_truth.csv"
    truth.write_bytes(canonical([("a_01.jpg", "1 5"), ("a_02.jpg", text)]))
    predictions = tmp_path / "predictions.csv.gz"
    predictions.write_bytes(gzip.compress(canonical([("a_01.jpg", "1 5"), ("a_02.jpg", "1 5")])))
    code, out, err = run_cli(["score", predictions, "--truth", truth, "--image-size", "192x128"], capsys)
    assert code == 1
    message = one_line_error(err)
    assert f"{truth}: line 3 (a_02.jpg): bad rle_mask: {OUT_OF_RANGE[text]}" in message, message


@pytest.mark.parametrize("text", OUT_OF_RANGE)
def test_loading_the_data_names_the_line_of_an_rle_number_out_of_range_in_train_masks_csv(text, tmp_path):
    data = make_tiny_carvana(tmp_path, cars=1, views=2)
    masks_csv = data / kl.MASKS_CSV
    lines = masks_csv.read_text().splitlines()
    name = lines[2].split(",")[0]
    lines[2] = f"{name},{text}"
    masks_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        load_carvana_data(data, need_test=False)
    assert str(error.value).startswith(f"{masks_csv}: line 3 ({name}): malformed RLE: {OUT_OF_RANGE[text]}")


@pytest.mark.parametrize("command", ["validate", "score"])
@pytest.mark.parametrize("size", ["0x128", "192x0", "-192x128", "0"])
def test_validate_and_score_refuse_an_image_size_that_is_not_positive(command, size, tmp_path, capsys):
    submission = tmp_path / "submit.csv.gz"
    submission.write_bytes(gzip.compress(canonical([("a_01.jpg", "1 5")])))
    truth = tmp_path / "truth.csv"
    truth.write_bytes(canonical([("a_01.jpg", "1 5")]))
    extra = ["--sample-submission", truth] if command == "validate" else ["--truth", truth]
    with pytest.raises(SystemExit) as exit_:
        run_cli([command, submission, *extra, f"--image-size={size}"], capsys)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--image-size" in one_line_error(err) and size in err


# --------------------------------------------------------------------------- the data a default run used


def test_validate_and_submit_find_the_built_in_sample_that_a_default_run_used(tmp_path, capsys, monkeypatch,
                                                                              fake_kaggle):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["--dataset", "sample", "--sample-cars", "2", "--sample-image-size", "192x128", *TINY,
                              "--epochs", "1"], capsys)
    assert code == 0, err
    assert (tmp_path / "input" / "sample" / kl.SAMPLE_SUBMISSION_CSV).is_file()
    code, out, err = run_cli(["validate", "output/submit.csv.gz"], capsys)
    assert code == 0, err
    assert f"every id of {Path('input/sample/sample_submission.csv')} exactly once, RLE inside 192x128" in out
    code, out, err = run_cli(["submit", "output/submit.csv.gz", "-m", "tiny", "--timeout", "10"], capsys)
    assert code == 0, err
    assert "valid" in out
    assert list(fake_kaggle.uploads.values()) == [(tmp_path / "output" / "submit.csv.gz").read_bytes()]
