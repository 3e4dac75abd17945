"""Submit a file to the Carvana competition and wait for Kaggle's score.

kaggle 2.2.4 uploads in three calls (start an upload, PUT the bytes, create the submission) and does
not raise when the PUT fails: it answers with ref 0 and "Could not submit to competition". That
answer becomes a KaggleError here. Scoring then runs on Kaggle's side; the submission list is polled
until this submission is complete or failed, or until the wait runs out (the result then says
"pending": the submission exists, Kaggle is just slow).
"""
from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager

from tqdm import tqdm

from carvana.core.errors import KaggleError, SubmissionError
from carvana.kaggle.api import kaggle_errors, open_kaggle_api, quiet_console, scrub
from carvana.kaggle.files import COMPETITION

STATUS_COMPLETE = "complete"
STATUS_ERROR = "error"
STATUS_PENDING = "pending"
SUBMISSIONS_URL = f"https://www.kaggle.com/c/{COMPETITION}/submissions"


@dataclass(frozen=True)
class SubmissionResult:
    ref: int
    status: str  # "complete", "error", or "pending" when the wait ended before Kaggle scored it
    public_score: float | None
    private_score: float | None
    error_description: str | None

    def describe(self) -> str:
        if self.status == STATUS_COMPLETE:
            return (f"Kaggle scored submission {self.ref}: public {_format(self.public_score)}, "
                    f"private {_format(self.private_score)}")
        if self.status == STATUS_ERROR:
            return f"Kaggle could not score submission {self.ref}: {self.error_description or 'no reason given'}"
        return f"submission {self.ref} is still being scored; see {SUBMISSIONS_URL}"


def submit_to_kaggle(
    path: Path,
    message: str,
    *,
    poll_interval: float = 10.0,
    timeout: float = 600.0,
    progress: bool = True,
) -> SubmissionResult:
    """Upload `path` as a submission, then wait up to `timeout` seconds for its score."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such submission file")
    if path.stat().st_size == 0:
        raise SubmissionError(f"{path}: the submission file is empty")
    api = open_kaggle_api()
    ref = _upload(api, path, message, progress)
    return _wait_for_score(api, ref, poll_interval=poll_interval, timeout=timeout, progress=progress)


def _upload(api: Any, path: Path, message: str, progress: bool) -> int:
    # The upload's byte progress bar is the kaggle client's own (on stderr): the upload cannot be
    # watched from outside. Its prints stay hidden.
    with _console_for_upload(progress), kaggle_errors(f"uploading {path.name}"):
        response = api.competition_submit(str(path), message, COMPETITION, quiet=not progress)
    if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KaggleError(f"{path}: the upload to Kaggle failed; run again to retry the submission")
    if not response.ref:
        reason = " ".join(scrub(response.message or "no reason given").split())[:200]
        raise KaggleError(f"{path}: Kaggle did not create a submission ({reason})")
    return int(response.ref)


def _console_for_upload(progress: bool) -> ContextManager[object]:
    return contextlib.redirect_stdout(io.StringIO()) if progress else quiet_console()


def _wait_for_score(api: Any, ref: int, *, poll_interval: float, timeout: float, progress: bool) -> SubmissionResult:
    deadline = time.monotonic() + timeout
    with tqdm(desc=f"waiting for Kaggle to score submission {ref}", bar_format="{desc} ({elapsed})",
              disable=not progress) as bar:
        while True:
            with quiet_console(), kaggle_errors("checking the submission's status"):
                submissions = api.competition_submissions(COMPETITION) or []
            mine = next((s for s in submissions if s is not None and s.ref == ref), None)
            if mine is not None and _status(mine) != STATUS_PENDING:
                return _result(mine)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return SubmissionResult(ref, STATUS_PENDING, None, None, None)
            time.sleep(min(poll_interval, remaining))
            bar.refresh()


def _status(submission: Any) -> str:
    status = getattr(submission.status, "name", submission.status)
    return str(status).lower()


def _result(submission: Any) -> SubmissionResult:
    return SubmissionResult(
        ref=int(submission.ref),
        status=_status(submission),
        public_score=_score(submission.public_score),
        private_score=_score(submission.private_score),
        error_description=submission.error_description or None,
    )


def _score(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def _format(score: float | None) -> str:
    return "-" if score is None else f"{score:.5f}"
