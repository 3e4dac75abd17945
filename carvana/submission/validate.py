"""Check a submission the way Kaggle will, before spending an upload on it.

Kaggle rejects (or scores as 0) a file whose header is wrong, whose ids differ from
`sample_submission.csv`, or whose RLE is malformed. The file is streamed and masks are never
decoded: only the set of ids grows with the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from carvana.core.errors import ConfigError, DataError, SubmissionError
from carvana.core.geometry import Size
from carvana.kaggle import rle
from carvana.kaggle.rle_csv import read_ids, read_rle_rows

EXAMPLES = 3  # ids quoted per kind of problem


@dataclass(frozen=True)
class ValidationReport:
    path: Path
    rows: int
    empty_masks: int  # rows with an empty rle_mask (valid: no car found); many of them hint at a bad model


def read_expected_ids(sample_submission: Path) -> list[str]:
    """The ids of `sample_submission.csv`, in its order; DataError if it is unreadable or repeats one.

    The same reader as the data check before training (`carvana.data.layout`), so a sample
    submission that let a run start is never refused here, after the run replaced the submission.
    """
    return read_ids(sample_submission, lambda problem: DataError(sample_submission, problem),
                    "has no rows: no test ids to check the submission against")


def check_image_size(image_size: Size) -> Size:
    """ConfigError unless both sides are positive (and the image not absurdly large): every run of
    every mask is checked against them."""
    image_size = Size(*image_size)
    if image_size.width < 1 or image_size.height < 1:
        raise ConfigError(f"--image-size {image_size}: width and height must be positive, e.g. 1918x1280")
    if image_size.width * image_size.height > rle.MAX_PIXELS:
        raise ConfigError(f"--image-size {image_size}: too large for any photo, e.g. 1918x1280")
    return image_size


class _Problems:
    """Counts of each kind of problem, the first one seen, and a few example ids."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.counts: dict[str, int] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, kind: str, description: str, example: str) -> None:
        if self.first is None:
            self.first = description
        self.counts[kind] = self.counts.get(kind, 0) + 1
        examples = self.examples.setdefault(kind, [])
        if len(examples) < EXAMPLES:
            examples.append(example)

    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = []
        for kind, count in self.counts.items():
            shown = ", ".join(self.examples[kind])
            parts.append(f"{count} {kind} (e.g. {shown}{', ...' if count > len(self.examples[kind]) else ''})")
        return "; ".join(parts)


def validate_submission(
    path: Path,
    sample_submission: Path,
    image_size: Size = Size(1918, 1280),
    progress: bool | None = None,
) -> ValidationReport:
    """Check `path` against `sample_submission`; raise SubmissionError naming the first problem.

    Checks: gzip (or plain CSV) readable to the end; header exactly `img,rle_mask`; two columns
    per row; every id of the sample submission exactly once and no other id; every RLE well
    formed for an image of `image_size` (pairs of positive integers, ascending disjoint runs
    inside width x height). An empty rle_mask is a valid empty mask.
    `progress`: show a progress bar (None: only on a terminal).
    """
    path, sample_submission = Path(path), Path(sample_submission)
    image_size = check_image_size(image_size)
    expected_ids = read_expected_ids(sample_submission)
    expected = set(expected_ids)
    seen: set[str] = set()
    problems = _Problems()
    rows = empty = 0
    bar = tqdm(total=len(expected_ids), desc=f"validating {path.name}", unit="row",
               disable=None if progress is None else not progress, leave=False)
    with bar:
        for row in read_rle_rows(path):
            rows += 1
            bar.update()
            where = f"line {row.line}"
            if row.problem:
                problems.add("malformed rows", f"{where} {row.problem}", where)
                continue
            if row.img in seen:
                problems.add("duplicate ids", f"{where}: id {row.img} appears more than once", row.img)
            elif row.img not in expected:
                problems.add("ids not in the sample submission",
                             f"{where}: id {row.img} is not in {sample_submission.name}", row.img)
            seen.add(row.img)
            try:
                runs = rle.parse_runs(row.rle_mask, image_size.height, image_size.width)
            except rle.RLEError as e:
                problems.add("bad RLE rows", f"{where} ({row.img}): bad rle_mask: {e}", where)
                continue
            empty += runs.size == 0
    missing = [i for i in expected_ids if i not in seen]
    for img in missing:
        problems.add("missing ids", f"{len(missing)} of the {len(expected_ids)} ids of {sample_submission.name} "
                     f"are missing (e.g. {', '.join(missing[:EXAMPLES])})", img)
    if problems.first is not None:
        if list(problems.counts) == ["missing ids"]:  # the first problem already counts them all
            raise SubmissionError(f"{path}: {problems.first}")
        total = problems.total()
        raise SubmissionError(f"{path}: {problems.first} "
                              f"[{total} problem{'s' if total > 1 else ''} in all: {problems.summary()}]")
    return ValidationReport(path, rows, int(empty))
