"""The one reader and writer of `img,rle_mask` CSV files (gzip or plain), streamed one row at a time.

Submissions, `sample_submission.csv`, `train_masks.csv` and truth files are all checked here, so the
data check before training and the final validator can never disagree. Accepted, as spreadsheets and
editors write them: a UTF-8 BOM, CRLF or CR, quoted fields, spaces around fields, blank lines. Refused
with the file and line named: another separator, a stray quote, not two columns, an empty id, text
that is not UTF-8, a truncated or corrupt gzip stream, content that disagrees with the name. A bad row
is yielded with its problem, so a validator can count them; files the tool writes stay canonical.
Lines are split by hand, not with `csv`: no column can hold a comma, quote or line end, so a stray
quote spoils its own line only (`csv.reader` would swallow the lines after it), and it reads a
100,064-row submission in 3.3 s against `csv.reader`'s 13.0 s.
"""
from __future__ import annotations

import gzip
import io
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator

from carvana.core.atomic import atomic_path
from carvana.core.errors import CarvanaError, ConfigError, SubmissionError
from carvana.kaggle.files import SUBMISSION_HEADER

GZIP_MAGIC = b"\x1f\x8b"
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")  # the byte-order marks of UTF-16 (Excel's "Unicode text")
HEADER_LINE = ",".join(SUBMISSION_HEADER)
_SNIFF_BYTES = 256  # read to tell gzip and UTF-16 files from plain UTF-8 text
_QUOTE = '"'
_OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs"}  # what spreadsheets in some locales write instead
DEFAULT_COMPRESSLEVEL = 4  # zlib level of the files written (see docs/benchmarks.md, the submission writer)

Fail = Callable[[str], CarvanaError]  # builds the error for one problem of the file


# ---------------------------------------------------------------------- writing


def is_gzip_name(path: Path) -> bool:
    """True for a `.gz` name, False for `.csv`; ConfigError for any other name.

    Kaggle (and `validate`) decide by the name whether to decompress, so the content written must
    agree with it: gzip bytes in a `.csv` would be an unreadable upload.
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".gz":
        return True
    if suffix == ".csv":
        return False
    raise ConfigError(f"{path}: a submission's name must end in .csv (plain text) or .gz (gzip-compressed, "
                      "e.g. submit.csv.gz)")


def format_rle_row(img: str, rle_mask: str) -> bytes:
    """One `img,rle_mask` line as written (UTF-8, LF)."""
    return f"{img},{rle_mask}\n".encode("utf-8")


def open_rle_stream(raw: BinaryIO, path: Path, compresslevel: int = DEFAULT_COMPRESSLEVEL) -> BinaryIO:
    """The stream an `img,rle_mask` file named `path` is written to over the open file `raw`, its header
    already written: gzip over `raw` for a `.gz` name, `raw` itself for `.csv`."""
    out: BinaryIO = raw
    if is_gzip_name(path):
        # The name stored in the gzip header is the real one, not a temporary file's.
        out = gzip.GzipFile(filename=Path(path).name, mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0)
    out.write(f"{HEADER_LINE}\n".encode("utf-8"))
    return out


def write_rle_rows(path: Path, rows: Iterable[tuple[str, str]], compresslevel: int = DEFAULT_COMPRESSLEVEL) -> None:
    """Write `(img, rle_mask)` rows to an `img,rle_mask` file at `path` (gzip for `.gz`), atomically."""
    path = Path(path)
    is_gzip_name(path)  # a name the content could not agree with is refused before any file exists
    with atomic_path(path) as tmp, open(tmp, "wb") as raw:
        with open_rle_stream(raw, path, compresslevel) as out:
            for img, rle_mask in rows:
                out.write(format_rle_row(img, rle_mask))


# ---------------------------------------------------------------------- reading


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

    Fields come stripped of surrounding spaces and quotes. `fail(problem)` makes the error raised
    for a problem with the whole file (default: `SubmissionError("<path>: <problem>")`).
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
            _check_header(header.rstrip("\r\n"), fail)
            for line_number, text in enumerate(lines, start=2):
                text = text.rstrip("\r\n")
                if text and not text.isspace():
                    yield split_row(line_number, text)
    except EOFError:
        raise fail(f"the gzip stream is truncated (it ends inside line {line_number + 1}); "
                   "the file was not completely written or downloaded") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise fail(f"the gzip data is corrupt after line {line_number} ({e})") from None
    except UnicodeDecodeError:
        raise fail(f"line {line_number + 1} is not UTF-8 text; is this a CSV file? "
                   "(save it as 'CSV UTF-8')") from None
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None


def read_unique_rows(path: Path, fail: Fail, no_rows: str) -> Iterator[RLERow]:
    """The rows of a file that lists each id once (sample submission, train masks, truth).

    Raises `fail` naming the line of the first malformed row or repeated id, and `fail(no_rows)`
    when the file has a header but no rows.
    """
    seen: set[str] = set()
    for row in read_rle_rows(path, fail):
        if row.problem:
            raise fail(f"line {row.line} {row.problem}")
        if row.img in seen:
            raise fail(f"line {row.line}: duplicate id {row.img} (each id must appear once)")
        seen.add(row.img)
        yield row
    if not seen:
        raise fail(no_rows)


def read_ids(path: Path, fail: Fail, no_rows: str) -> list[str]:
    """The ids of an `img,rle_mask` file in its order (e.g. the test ids of `sample_submission.csv`)."""
    return [row.img for row in read_unique_rows(path, fail, no_rows)]


def split_row(line_number: int, text: str) -> RLERow:
    """One data line (without its line end) as an RLERow; a row that cannot be read carries its problem."""
    fields = text.split(",")
    if len(fields) != 2:
        return RLERow(line_number, fields[0].strip()[:80], "",
                      f"has {len(fields)} columns, expected 2 (img,rle_mask){_separator_hint(text)}")
    img, mask = (_clean(field) for field in fields)
    for value in (img, mask):
        if value is None:
            return RLERow(line_number, fields[0].strip()[:80], "",
                          "has a quote that does not enclose a whole field")
    if not img:
        return RLERow(line_number, img, mask, "has an empty img name")
    return RLERow(line_number, img, mask)


def _clean(field: str) -> str | None:
    """A field without surrounding spaces and quotes; None if a quote is left inside it.

    Neither column can contain a comma or a quote itself (ids are file names, masks are numbers),
    so a field is either bare or wholly enclosed in one pair of quotes.
    """
    value = field.strip()
    if _QUOTE not in value:
        return value
    if len(value) >= 2 and value[0] == value[-1] == _QUOTE and _QUOTE not in value[1:-1]:
        return value[1:-1].strip()
    return None


def _check_header(header: str, fail: Fail) -> None:
    fields = header.split(",")
    names = tuple(_clean(field) for field in fields)
    if names != SUBMISSION_HEADER:
        raise fail(f"header is {header[:60]!r}, expected {HEADER_LINE!r}{_separator_hint(header)}")


def _separator_hint(text: str) -> str:
    for separator, name in _OTHER_SEPARATORS.items():
        if separator in text and "," not in text:
            return f" (the fields are separated by {name}: save the file with commas)"
    return ""


def _open_text(path: Path, fail: Fail) -> io.TextIOWrapper:
    """Open as text, gzip-decompressing when the content is gzip; the name must agree with the content."""
    try:
        with open(path, "rb") as f:
            start = f.read(_SNIFF_BYTES)
    except OSError as e:
        raise fail(f"cannot be read ({e.strerror or e})") from None
    magic = start[:2]
    if magic == GZIP_MAGIC:
        if path.suffix.lower() == ".csv":
            raise fail("the name ends in .csv but the file is gzip-compressed; rename it to "
                       f"{path.name}.gz (Kaggle reads a file by its name)")
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    if path.suffix.lower() == ".gz":
        raise fail("the name ends in .gz but the file is not gzip-compressed")
    if magic in UTF16_MARKS and _is_utf16_csv(start):
        raise fail("is UTF-16 text; save it as 'CSV UTF-8' (comma delimited)")
    return open(path, "r", encoding="utf-8-sig")


def _is_utf16_csv(start: bytes) -> bool:
    """Whether the first bytes of a file read as UTF-16 text that looks like a header (not binary garbage)."""
    text = start[: len(start) // 2 * 2].decode("utf-16", errors="replace")
    header = text.lstrip("\ufeff").split("\n", 1)[0]
    return "\ufffd" not in header and "img" in header
