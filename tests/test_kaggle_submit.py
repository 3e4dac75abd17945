"""Submitting to Kaggle: the real kaggle 2.2.4 client against a fake Kaggle server."""
from __future__ import annotations

import gzip
import socket
from pathlib import Path

import pytest

from carvana.core.errors import KaggleError, SubmissionError
from carvana.kaggle.files import COMPETITION, RULES_URL
from carvana.kaggle.submit import SubmissionResult, submit_to_kaggle
from fake_kaggle import fake_kaggle  # noqa: F401 (fixture)


@pytest.fixture
def submission(tmp_path) -> Path:
    path = tmp_path / "submit.csv.gz"
    path.write_bytes(gzip.compress(b"img,rle_mask\n0004d4463b50_01.jpg,1 10 20 5\n"))
    return path


def submit(path: Path, **kwargs) -> SubmissionResult:
    return submit_to_kaggle(path, "unet1024 384x256", poll_interval=0.01, timeout=10, progress=False, **kwargs)


def test_a_submission_is_uploaded_and_its_scores_returned(fake_kaggle, submission, capfd):
    fake_kaggle.polls_before_done = 2  # Kaggle is still scoring for the first polls

    result = submit(submission)

    assert result == SubmissionResult(ref=fake_kaggle.submissions[0].ref, status="complete",
                                      public_score=0.99612, private_score=0.99587, error_description=None)
    assert list(fake_kaggle.uploads.values()) == [submission.read_bytes()]
    start = fake_kaggle.calls("StartSubmissionUpload")[0].body
    assert start["competitionName"] == COMPETITION and start["fileName"] == "submit.csv.gz"
    assert start["contentLength"] == submission.stat().st_size
    create = fake_kaggle.calls("CreateSubmission")[0].body
    assert create["submissionDescription"] == "unet1024 384x256"
    assert len(fake_kaggle.calls("ListSubmissions")) == 3
    assert capfd.readouterr() == ("", "")  # kaggle's chatter stays off the console


@pytest.mark.reliability
def test_a_failed_upload_is_an_error_not_a_silent_ref_0(fake_kaggle, submission):
    fake_kaggle.fail_upload = True
    with pytest.raises(KaggleError, match="upload to Kaggle failed"):
        submit(submission)
    assert fake_kaggle.calls("CreateSubmission") == []


@pytest.mark.reliability
def test_a_submission_that_kaggle_cannot_score_reports_why(fake_kaggle, submission):
    fake_kaggle.submission_fails_with = "Submission must have 100064 rows"

    result = submit(submission)

    assert result.status == "error" and result.public_score is None
    assert result.error_description == "Submission must have 100064 rows"


@pytest.mark.reliability
def test_waiting_longer_than_the_timeout_returns_a_pending_result(fake_kaggle, submission):
    fake_kaggle.polls_before_done = 10**6
    result = submit_to_kaggle(submission, "slow", poll_interval=0.01, timeout=0.05, progress=False)
    assert result.status == "pending" and result.ref == fake_kaggle.submissions[0].ref
    assert result.public_score is None


@pytest.mark.reliability
def test_a_missing_submission_file_is_named(fake_kaggle, tmp_path):
    with pytest.raises(SubmissionError, match="nothing.csv.gz: no such submission file"):
        submit(tmp_path / "nothing.csv.gz")
    assert fake_kaggle.requests == []


@pytest.mark.reliability
def test_rejected_credentials_are_reported_without_the_key(fake_kaggle, submission):
    fake_kaggle.reject_auth = True
    with pytest.raises(KaggleError, match="HTTP 401") as error:
        submit(submission)
    assert fake_kaggle.key not in str(error.value)
    assert fake_kaggle.uploads == {}


@pytest.mark.reliability
def test_unaccepted_rules_name_the_rules_page(fake_kaggle, submission):
    fake_kaggle.require_rules = True
    with pytest.raises(KaggleError, match="HTTP 403") as error:
        submit(submission)
    assert RULES_URL in str(error.value)


@pytest.mark.reliability
def test_no_network_is_a_clear_error(fake_kaggle, submission, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    with pytest.raises(KaggleError, match="cannot reach Kaggle"):
        submit(submission)


def test_results_describe_themselves_in_one_line():
    assert SubmissionResult(7, "complete", 0.99612, None, None).describe() == (
        "Kaggle scored submission 7: public 0.99612, private -")
    assert "Submission must have 100064 rows" in SubmissionResult(
        7, "error", None, None, "Submission must have 100064 rows").describe()
    assert "still being scored" in SubmissionResult(7, "pending", None, None, None).describe()
