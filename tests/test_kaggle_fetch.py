"""Fetching the Carvana data from Kaggle: the real kaggle 2.2.4 client against a fake Kaggle server."""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carvana.core.errors import DataError, KaggleError
from carvana.kaggle import competition
from carvana.kaggle.api import open_kaggle_api
from carvana.kaggle.credentials import kaggle_credentials_configured
from carvana.kaggle.download import fetch_kaggle
from carvana.kaggle.files import COMPETITION, RULES_URL, read_complete_marker
from fake_kaggle import FakeKaggle, carvana_archives, fake_kaggle, full_size_photo, zip_bytes  # noqa: F401

BASE_FILES = ["train.zip", "train_masks.zip", "train_masks.csv.zip", "metadata.csv.zip"]
TEST_FILES = ["test.zip", "sample_submission.csv.zip"]


@pytest.fixture
def kaggle_with_data(fake_kaggle: FakeKaggle) -> FakeKaggle:
    fake_kaggle.files.update(carvana_archives())
    return fake_kaggle


def requested_files(server: FakeKaggle) -> list[str]:
    return [r.body["fileName"] for r in server.calls("DownloadDataFile")]


def test_fetch_downloads_each_file_and_extracts_the_kaggle_layout(kaggle_with_data, tmp_path):
    data_dir = tmp_path / "input"
    report = fetch_kaggle(data_dir, progress=False)

    assert sorted(report.downloaded) == sorted(BASE_FILES + TEST_FILES)
    assert report.skipped == ()
    assert report.bytes_downloaded == sum(len(kaggle_with_data.files[f]) for f in BASE_FILES + TEST_FILES)
    calls = kaggle_with_data.calls("DownloadDataFile")
    assert {c.body["competitionName"] for c in calls} == {COMPETITION}
    assert all(c.headers["Authorization"].startswith("Basic ") for c in calls)

    assert sorted(p.name for p in (data_dir / "train").iterdir()) == [
        "0cdf5b5d0ce1_01.jpg", "0cdf5b5d0ce1_02.jpg", "fecea3036c59_01.jpg", "fecea3036c59_02.jpg"]
    assert (data_dir / "train_masks" / "0cdf5b5d0ce1_01_mask.gif").is_file()
    assert (data_dir / "test" / "0004d4463b50_01.jpg").is_file()
    for csv in ("train_masks.csv", "metadata.csv", "sample_submission.csv"):
        assert (data_dir / csv).read_text().startswith(("img,rle_mask", "id,year"))
    marker = read_complete_marker(data_dir)
    assert marker is not None and marker["source"] == "kaggle" and marker["include_test"] is True
    # Nothing half-done is left behind: no archives, no staging folders.
    assert not (data_dir / ".download").exists()
    assert not list(data_dir.glob(".extract-*"))


def test_a_second_run_with_complete_data_calls_kaggle_not_at_all(kaggle_with_data, tmp_path, monkeypatch):
    data_dir = tmp_path / "input"
    fetch_kaggle(data_dir, progress=False)
    kaggle_with_data.requests.clear()
    monkeypatch.delenv("KAGGLE_KEY")  # not even credentials are needed any more

    report = fetch_kaggle(data_dir, progress=False)

    assert report.downloaded == () and report.bytes_downloaded == 0
    assert sorted(report.skipped) == sorted(BASE_FILES + TEST_FILES)
    assert kaggle_with_data.requests == []
    assert report.summary() == "all 6 Kaggle files already there; nothing downloaded"


def test_high_quality_without_test_asks_for_train_hq_only(kaggle_with_data, tmp_path):
    data_dir = tmp_path / "input"
    fetch_kaggle(data_dir, high_quality=True, include_test=False, progress=False)

    assert sorted(requested_files(kaggle_with_data)) == sorted(
        ["train_hq.zip", "train_masks.zip", "train_masks.csv.zip", "metadata.csv.zip"])
    assert (data_dir / "train_hq" / "fecea3036c59_02.jpg").is_file()
    assert not (data_dir / "train").exists() and not (data_dir / "test").exists()


def test_asking_for_the_test_set_later_downloads_only_the_test_files(kaggle_with_data, tmp_path):
    data_dir = tmp_path / "input"
    fetch_kaggle(data_dir, include_test=False, progress=False)
    kaggle_with_data.requests.clear()

    report = fetch_kaggle(data_dir, include_test=True, progress=False)

    assert sorted(report.downloaded) == sorted(TEST_FILES)
    assert sorted(requested_files(kaggle_with_data)) == sorted(TEST_FILES)


def test_a_zip_wrapped_in_another_zip_is_unwrapped(kaggle_with_data, tmp_path):
    inner = kaggle_with_data.files["train_masks.csv.zip"]
    kaggle_with_data.files["train_masks.csv.zip"] = zip_bytes({"train_masks.csv.zip": inner})
    data_dir = tmp_path / "input"
    fetch_kaggle(data_dir, include_test=False, progress=False)
    assert (data_dir / "train_masks.csv").read_text().startswith("img,rle_mask\n")
    assert not (data_dir / "train_masks.csv.zip").exists()


@pytest.mark.reliability
def test_an_archive_without_the_expected_entry_is_a_data_error(kaggle_with_data, tmp_path):
    kaggle_with_data.files["metadata.csv.zip"] = zip_bytes({"other.csv": b"a,b\n"})
    with pytest.raises(DataError, match="does not contain 'metadata.csv'"):
        fetch_kaggle(tmp_path / "input", include_test=False, progress=False)
    assert read_complete_marker(tmp_path / "input") is None


@pytest.mark.reliability
def test_a_crash_during_extraction_resumes_without_downloading_again(kaggle_with_data, tmp_path, monkeypatch):
    data_dir = tmp_path / "input"
    real_extract = competition.extract_zip

    def crash_on_test_zip(archive, dest_dir, **kwargs):
        if archive.name == "test.zip":
            raise KeyboardInterrupt
        return real_extract(archive, dest_dir, **kwargs)

    monkeypatch.setattr(competition, "extract_zip", crash_on_test_zip)
    with pytest.raises(KeyboardInterrupt):
        fetch_kaggle(data_dir, progress=False)
    assert read_complete_marker(data_dir) is None
    assert not (data_dir / "test").exists()

    monkeypatch.setattr(competition, "extract_zip", real_extract)
    kaggle_with_data.requests.clear()
    fetch_kaggle(data_dir, progress=False)

    assert "test.zip" not in requested_files(kaggle_with_data)
    assert (data_dir / "test" / "0004d4463b50_02.jpg").is_file()
    assert read_complete_marker(data_dir) is not None


@pytest.fixture
def big_train_zip(kaggle_with_data: FakeKaggle) -> bytes:
    """train.zip with one full-size photo: the client writes downloads to disk 1 MiB at a time."""
    photo = full_size_photo()
    kaggle_with_data.files["train.zip"] = zip_bytes({"train/0cdf5b5d0ce1_01.jpg": photo})
    assert len(photo) > 2 * 1024 * 1024
    return photo


def range_starts(server: FakeKaggle, name: str) -> list[int | None]:
    gets = [r for r in server.downloads() if r.path.endswith(f"/{name}")]
    return [int(g.headers["Range"][len("bytes="):-1]) if "Range" in g.headers else None for g in gets]


@pytest.mark.reliability
def test_a_download_cut_mid_file_is_resumed_with_a_range_request(kaggle_with_data, big_train_zip, tmp_path):
    data_dir = tmp_path / "input"
    kaggle_with_data.cut_after = {"train.zip": len(kaggle_with_data.files["train.zip"]) - 1000}

    fetch_kaggle(data_dir, include_test=False, progress=False)  # the client retries by itself

    first, second = range_starts(kaggle_with_data, "train.zip")
    assert first is None and second > 0
    assert (data_dir / "train" / "0cdf5b5d0ce1_01.jpg").read_bytes() == big_train_zip


CHILD_FETCH = """
import sys
from pathlib import Path
from carvana.kaggle.download import fetch_kaggle
try:
    fetch_kaggle(Path(sys.argv[1]), include_test=False, progress=True)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.reliability
def test_a_download_stopped_with_ctrl_c_resumes_on_the_next_run(kaggle_with_data, big_train_zip, tmp_path):
    # The child's connection keeps dropping; Ctrl-C it while it waits to retry, as a user would.
    original = kaggle_with_data.files["train.zip"]
    cut = len(original) - 1000
    kaggle_with_data.cut_after = {"train.zip": cut}
    kaggle_with_data.cut_every_time = True
    data_dir = tmp_path / "input"
    env = kaggle_with_data.subprocess_env(tmp_path / "home", tmp_path / "kaggle-config")
    # SIGINT at its default in the child: a suite run in the background inherits it ignored.
    child = subprocess.Popen([sys.executable, "-c", CHILD_FETCH, str(data_dir)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    partial = data_dir / ".download" / "train.zip" / "train.zip"
    deadline = time.monotonic() + 60
    while not (partial.is_file() and partial.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    child.communicate(timeout=60)
    assert child.returncode == 130
    assert read_complete_marker(data_dir) is None
    on_disk = partial.stat().st_size
    assert 0 < on_disk < len(original)

    kaggle_with_data.cut_after = {}
    kaggle_with_data.requests.clear()
    report = fetch_kaggle(data_dir, include_test=False, progress=False)

    # kaggle follows Kaggle's redirect with a plain GET it does not read, then asks for the rest.
    assert range_starts(kaggle_with_data, "train.zip") == [None, on_disk]
    others = sum(len(kaggle_with_data.files[f]) for f in BASE_FILES if f != "train.zip")
    assert report.bytes_downloaded == len(original) - on_disk + others
    assert (data_dir / "train" / "0cdf5b5d0ce1_01.jpg").read_bytes() == big_train_zip


@pytest.mark.reliability
def test_missing_credentials_give_one_clear_error_and_no_kaggle_chatter(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert not kaggle_credentials_configured()

    with pytest.raises(KaggleError) as error:
        fetch_kaggle(tmp_path / "input", progress=False)

    message = str(error.value)
    assert "kaggle.json" in message and "chmod 600" in message and "KAGGLE_USERNAME" in message
    assert "\n" not in message
    assert capfd.readouterr() == ("", "")
    assert read_complete_marker(tmp_path / "input") is None


@pytest.mark.reliability
def test_rejected_credentials_are_reported_without_the_key(kaggle_with_data, tmp_path):
    kaggle_with_data.reject_auth = True
    with pytest.raises(KaggleError) as error:
        fetch_kaggle(tmp_path / "input", progress=False)
    assert "HTTP 401" in str(error.value) and "KAGGLE_USERNAME/KAGGLE_KEY" in str(error.value)
    assert kaggle_with_data.key not in str(error.value)


@pytest.mark.reliability
def test_a_token_kaggle_does_not_accept_is_reported_without_kaggles_help_page(fake_kaggle, tmp_path, monkeypatch,
                                                                              capfd):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_expired-token-0000")
    with pytest.raises(KaggleError, match="did not accept the credentials from KAGGLE_API_TOKEN") as error:
        fetch_kaggle(tmp_path / "input", progress=False)
    assert "KGAT_expired" not in str(error.value)
    assert fake_kaggle.calls("IntrospectToken")
    assert capfd.readouterr() == ("", "")


@pytest.mark.reliability
def test_unaccepted_rules_point_to_the_rules_page(kaggle_with_data, tmp_path):
    kaggle_with_data.require_rules = True
    with pytest.raises(KaggleError) as error:
        fetch_kaggle(tmp_path / "input", progress=False)
    assert RULES_URL in str(error.value) and "HTTP 403" in str(error.value)


@pytest.mark.reliability
def test_an_unreachable_kaggle_is_a_network_error(kaggle_with_data, tmp_path, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on any more
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    for name in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{closed_port}")
    with pytest.raises(KaggleError, match="cannot reach Kaggle"):
        fetch_kaggle(tmp_path / "input", progress=False)


@pytest.mark.reliability
def test_an_archive_escaping_the_data_dir_is_rejected_and_deleted(kaggle_with_data, tmp_path):
    kaggle_with_data.files["train.zip"] = zip_bytes({"train/a.jpg": b"x", "../escaped.jpg": b"evil"})
    data_dir = tmp_path / "input"
    with pytest.raises(DataError, match=r"\.\./escaped\.jpg"):
        fetch_kaggle(data_dir, progress=False)
    assert not (tmp_path / "escaped.jpg").exists()
    assert not (data_dir / "train").exists()
    # The bad copy is gone, so the next run downloads the file again instead of failing forever.
    assert not (data_dir / ".download" / "train.zip").exists()


@pytest.mark.reliability
def test_a_kaggle_json_readable_by_others_triggers_a_warning(fake_kaggle, tmp_path, monkeypatch, caplog, capfd):
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name)
    config = Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"
    config.write_text(json.dumps({"username": fake_kaggle.username, "key": fake_kaggle.key}))
    config.chmod(0o644)

    with caplog.at_level(logging.WARNING):
        open_kaggle_api()
    assert any("chmod 600" in r.getMessage() and str(config) in r.getMessage() for r in caplog.records)
    assert fake_kaggle.key not in caplog.text
    assert "on this system" not in capfd.readouterr().out  # ours replaces kaggle's printed warning

    caplog.clear()
    config.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        open_kaggle_api()
    assert caplog.records == []


CHILD_EVERYTHING = """
import logging, sys
from pathlib import Path
logging.basicConfig(level=logging.DEBUG)  # even debug logs of kaggle, requests and urllib3
from carvana.core.errors import CarvanaError
from carvana.kaggle.download import fetch_kaggle
from carvana.kaggle.submit import submit_to_kaggle
try:
    report = fetch_kaggle(Path(sys.argv[1]), include_test=False, progress=True)
    print("fetched", report.downloaded)
    print("submitted", submit_to_kaggle(Path(sys.argv[2]), "leak test", poll_interval=0.01, timeout=10))
    fetch_kaggle(Path(sys.argv[3]), high_quality=True, include_test=False, progress=True)
except CarvanaError as e:
    print("error:", e)
"""


@pytest.mark.reliability
@pytest.mark.parametrize("source", ["env", "kaggle.json", "token"])
def test_credentials_never_appear_in_output_logs_or_files(kaggle_with_data, tmp_path, source):
    home, config_dir = tmp_path / "home", tmp_path / "kaggle-config"
    config_dir.mkdir()
    env = kaggle_with_data.subprocess_env(home, config_dir, credentials=(source == "env"))
    if source == "kaggle.json":
        (config_dir / "kaggle.json").write_text(
            json.dumps({"username": kaggle_with_data.username, "key": kaggle_with_data.key}))
        (config_dir / "kaggle.json").chmod(0o644)  # the warning must not quote the key either
    if source == "token":
        env["KAGGLE_API_TOKEN"] = kaggle_with_data.token
    submission = tmp_path / "submit.csv"
    submission.write_text("img,rle_mask\n0004d4463b50_01.jpg,1 1\n")
    del kaggle_with_data.files["train_hq.zip"]  # the child's last fetch ends in an error (HTTP 404)
    child = subprocess.run(
        [sys.executable, "-c", CHILD_EVERYTHING, str(tmp_path / "input"), str(submission), str(tmp_path / "input2")],
        env=env, capture_output=True, text=True, timeout=120)
    output = child.stdout + child.stderr

    assert "fetched" in output and "submitted" in output and "error: Kaggle has no such file" in output, output
    assert "Authentication required" not in output  # kaggle's own help page stays hidden
    assert "on this system" not in output  # nor its printed warnings (ours go through logging)
    if source == "token":
        assert kaggle_with_data.calls("IntrospectToken"), "the token was not the credential used"
    for secret in (kaggle_with_data.key, kaggle_with_data.token):
        assert secret not in output
        for path in tmp_path.rglob("*"):
            if path.is_file() and path != config_dir / "kaggle.json":
                assert secret.encode() not in path.read_bytes(), path


# ---- which credentials count as configured: the places kaggle 2.2.4 itself reads ----

def _kaggle_json(folder: Path, **fields: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kaggle.json").write_text(json.dumps(fields))
    (folder / "kaggle.json").chmod(0o600)


@pytest.fixture
def bare_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    return home


def test_no_credentials_anywhere_is_not_configured(bare_home):
    assert not kaggle_credentials_configured()


@pytest.mark.parametrize("setup", [
    "username and key in the environment",
    "kaggle.json in KAGGLE_CONFIG_DIR",
    "username in kaggle.json, key in the environment",
    "KAGGLE_API_TOKEN",
    "KAGGLE_API_TOKEN naming a token file",
    "~/.kaggle/access_token",
    "~/.kaggle/kaggle.json",
    "XDG config folder",
    "kaggle auth login (~/.kaggle/credentials.json)",
])
def test_credentials_are_found_where_kaggle_looks(bare_home, monkeypatch, setup):
    config_dir = Path(os.environ["KAGGLE_CONFIG_DIR"])
    if setup == "username and key in the environment":
        monkeypatch.setenv("KAGGLE_USERNAME", "someone")
        monkeypatch.setenv("KAGGLE_KEY", "sekr1t")
    elif setup == "kaggle.json in KAGGLE_CONFIG_DIR":
        _kaggle_json(config_dir, username="someone", key="sekr1t")
    elif setup == "username in kaggle.json, key in the environment":
        _kaggle_json(config_dir, username="someone")
        assert not kaggle_credentials_configured()
        monkeypatch.setenv("KAGGLE_KEY", "sekr1t")
    elif setup == "KAGGLE_API_TOKEN":
        monkeypatch.setenv("KAGGLE_API_TOKEN", "KGAT_sekr1t")
    elif setup == "KAGGLE_API_TOKEN naming a token file":
        (bare_home / "token.txt").write_text("KGAT_sekr1t\n")
        monkeypatch.setenv("KAGGLE_API_TOKEN", str(bare_home / "token.txt"))
    elif setup == "~/.kaggle/access_token":
        (bare_home / ".kaggle").mkdir()
        (bare_home / ".kaggle" / "access_token").write_text("KGAT_sekr1t")
    elif setup == "~/.kaggle/kaggle.json":
        monkeypatch.delenv("KAGGLE_CONFIG_DIR")
        _kaggle_json(bare_home / ".kaggle", username="someone", key="sekr1t")
    elif setup == "XDG config folder":  # used on Linux when ~/.kaggle does not exist
        monkeypatch.delenv("KAGGLE_CONFIG_DIR")
        monkeypatch.setenv("XDG_CONFIG_HOME", str(bare_home / "xdg"))
        _kaggle_json(bare_home / "xdg" / "kaggle", username="someone", key="sekr1t")
    else:
        (bare_home / ".kaggle").mkdir()
        (bare_home / ".kaggle" / "credentials.json").write_text(json.dumps({"refresh_token": "r"}))
    assert kaggle_credentials_configured()


def test_half_credentials_or_an_empty_token_file_are_not_configured(bare_home, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    assert not kaggle_credentials_configured()
    (bare_home / ".kaggle").mkdir()
    (bare_home / ".kaggle" / "access_token").write_text("  \n")
    assert not kaggle_credentials_configured()
