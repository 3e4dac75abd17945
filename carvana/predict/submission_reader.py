"""Read `img,rle_mask` CSV files (gzip or plain) one row at a time.

Submissions, `sample_submission.csv` and `train_masks.csv` share this format. A submission has
100,064 rows of ~10-30 kB each, so rows are streamed, never loaded at once. Problems with the
file as a whole (unreadable, not gzip although named .gz, truncated, wrong header) raise the
caller's error type at once; a row that does not have two columns is yielded with its problem,
so a validator can count such rows and carry on.
"""
from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from carvana.data.kaggle_layout import SUBMISSION_HEADER
from carvana.errors import CarvanaError, SubmissionError

GZIP_MAGIC = b"\x1f\x8b"
HEADER_LINE = ",".join(SUBMISSION_HEADER)

Fail = Callable[[str], CarvanaError]  # builds the error for one problem of the file


def submission_problem(path: Path) -> Fail:
    return lambda problem: SubmissionError(f"{path}: {problem}")


@dataclass(frozen=True)
class RLERow:
    line: int  # 1-based line number in the (decompressed) file; the header is line 1
    img: str
    rle_mask: str
    problem: str | None = None  # why this row is not a valid `img,rle_mask` pair, if it is not


def read_rle_rows(path: Path, fail: Fail | None = None) -> Iterator[RLERow]:
    """Yield the rows of an `img,rle_mask` CSV after checking its header; blank lines are skipped.

    `fail(problem)` makes the error raised for a problem with the whole file (default:
    `SubmissionError("<path>: <problem>")`).
    """
    path = Path(path)
    fail = fail or submission_problem(path)
    line_number = 0
    try:
        with _open_text(path, fail) as lines:
            header = next(lines, None)
            line_number = 1
            if header is None:
                raise fail(f"empty file: expected the header line {HEADER_LINE!r}")
            header = header.rstrip("\r\n")
            if header != HEADER_LINE:
                raise fail(f"header is {header[:60]!r}, expected exactly {HEADER_LINE!r}")
            for line_number, text in enumerate(lines, start=2):
                text = text.rstrip("\r\n")
                if text:
                    yield _split_row(line_number, text)
    except EOFError:
        raise fail(f"the gzip stream is truncated (it ends inside line {line_number + 1}); "
                   "the file was not completely written or downloaded") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise fail(f"the gzip data is corrupt after line {line_number} ({e})") from None
    except UnicodeDecodeError:
        raise fail(f"line {line_number + 1} is not UTF-8 text; is this a CSV file?") from None
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None


def _open_text(path: Path, fail: Fail) -> io.TextIOWrapper:
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None
    if magic == GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if path.suffix == ".gz":
        raise fail("the name ends in .gz but the file is not gzip-compressed")
    return open(path, "r", encoding="utf-8")


def _split_row(line_number: int, text: str) -> RLERow:
    fields = text.split(",")
    if len(fields) != 2:
        return RLERow(line_number, fields[0][:80], "", f"has {len(fields)} columns, expected 2 (img,rle_mask)")
    img, mask = (_unquote(field) for field in fields)
    if not img:
        return RLERow(line_number, img, mask, "has an empty img name")
    return RLERow(line_number, img, mask)


def _unquote(field: str) -> str:
    """CSV writers may quote a field; neither column can contain a quote or a comma itself."""
    if len(field) >= 2 and field[0] == field[-1] == '"':
        return field[1:-1]
    return field
