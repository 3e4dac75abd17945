"""A submission predicted by several processes (torchrun): one part file per process, merged into one.

Process r of W predicts the test photos r, r + W, r + 2W, ... of `sample_submission.csv`
(`carvana.data.loading.ShardSampler`) and streams its rows into its own part file, in that order.
Rank 0 then reads the W parts side by side, taking row k from part k mod W, which puts every row
back in `sample_submission.csv` order without holding any part in memory, and writes the
submission atomically (a previous one stays until the merged file is complete).

The parts live in a hidden folder beside the submission (`.submit.csv.gz.parts/`), which the
merge removes; every process must be able to write there and rank 0 to read it (one machine, or
an output dir shared between the machines).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator, Sequence

from carvana.core.errors import SubmissionError
from carvana.kaggle.rle_csv import read_rle_rows, write_rle_rows


def parts_dir(submission: Path) -> Path:
    """The hidden folder that holds a submission's part files while it is being predicted."""
    submission = Path(submission)
    return submission.parent / f".{submission.name}.parts"


def part_path(submission: Path, rank: int, world_size: int) -> Path:
    """Where process `rank` of `world_size` writes its rows of `submission` (compressed as it is)."""
    suffix = ".csv.gz" if Path(submission).name.endswith(".gz") else ".csv"
    return parts_dir(submission) / f"part-{rank}-of-{world_size}{suffix}"


def merge_parts(submission: Path, expected_ids: Sequence[str], world_size: int) -> int:
    """Write `submission` from its `world_size` parts in the order of `expected_ids` (sample_submission.csv);
    returns the rows written. SubmissionError naming the part when one is missing, short or out of order."""
    parts = [part_path(submission, rank, world_size) for rank in range(world_size)]
    for part in parts:
        if not part.is_file():
            raise SubmissionError(f"{part}: missing: the process that predicts it did not finish")
    streams = [read_rle_rows(part) for part in parts]

    def rows() -> Iterator[tuple[str, str]]:
        for index, expected in enumerate(expected_ids):
            part = index % world_size
            row = next(streams[part], None)
            if row is None:
                raise SubmissionError(f"{parts[part]}: ends before {expected} (row {index // world_size + 1} "
                                      "of this part): the process that predicted it stopped early")
            if row.img != expected:
                raise SubmissionError(f"{parts[part]}: line {row.line} is {row.img}, expected {expected}: the "
                                      "parts were predicted for another test list")
            yield row.img, row.rle_mask
        for part, stream in zip(parts, streams):
            extra = next(stream, None)
            if extra is not None:
                raise SubmissionError(f"{part}: line {extra.line} ({extra.img}) is past the end of the test list")

    write_rle_rows(Path(submission), rows())
    return len(expected_ids)


def remove_parts(submission: Path) -> None:
    """Remove the part files of `submission` (after the merge, or after a failed prediction)."""
    shutil.rmtree(parts_dir(submission), ignore_errors=True)
