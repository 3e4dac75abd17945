"""Extracting downloaded zips: only into the data dir, only what the archive honestly declares."""
from __future__ import annotations

import io
import stat
import struct
import zipfile
from collections import namedtuple
from pathlib import Path

import pytest

from carvana.core.errors import DataError
from carvana.kaggle import archive as archive_module
from carvana.kaggle.archive import extract_zip


def write_zip(path: Path, members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def everything_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def dirs(tmp_path) -> tuple[Path, Path]:
    """(where the archive lies, the data dir it is extracted into): siblings, so escapes would show."""
    downloads, data_dir = tmp_path / "downloads", tmp_path / "input"
    downloads.mkdir()
    return downloads, data_dir


def test_extracts_the_top_level_entries_into_place(dirs):
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {"train/a_01.jpg": b"jpeg-1", "train/a_02.jpg": b"jpeg-2"})
    csv_path = write_zip(downloads / "metadata.csv.zip", {"metadata.csv": b"id,year\n"})

    assert extract_zip(zip_path, data_dir) == [data_dir / "train"]
    assert extract_zip(csv_path, data_dir) == [data_dir / "metadata.csv"]

    assert (data_dir / "train" / "a_02.jpg").read_bytes() == b"jpeg-2"
    assert everything_under(data_dir) == ["metadata.csv", "train", "train/a_01.jpg", "train/a_02.jpg"]


def test_extracting_again_replaces_the_older_copy(dirs):
    downloads, data_dir = dirs
    (data_dir / "train").mkdir(parents=True)
    (data_dir / "train" / "stale.jpg").write_bytes(b"old")
    extract_zip(write_zip(downloads / "train.zip", {"train/a_01.jpg": b"new"}), data_dir)
    assert everything_under(data_dir) == ["train", "train/a_01.jpg"]


@pytest.mark.reliability
@pytest.mark.parametrize("evil_name", ["../escaped.jpg", "train/../../escaped.jpg", "..\\escaped.jpg"])
def test_a_member_climbing_out_with_dot_dot_is_rejected(dirs, evil_name):
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {"train/a.jpg": b"fine", evil_name: b"evil"})

    with pytest.raises(DataError) as error:
        extract_zip(zip_path, data_dir)

    assert "train.zip" in str(error.value) and evil_name in str(error.value).replace("\\\\", "\\")
    assert everything_under(data_dir.parent) == ["downloads", "downloads/train.zip", "input"]


@pytest.mark.reliability
@pytest.mark.parametrize("absolute_name", ["/tmp/escaped.jpg", "C:/escaped.jpg", "\\escaped.jpg"])
def test_a_member_with_an_absolute_path_is_rejected(dirs, absolute_name):
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {absolute_name: b"evil"})
    with pytest.raises(DataError, match="absolute path"):
        extract_zip(zip_path, data_dir)
    assert everything_under(data_dir) == []


@pytest.mark.reliability
def test_a_symlink_member_is_rejected(dirs):
    downloads, data_dir = dirs
    link = zipfile.ZipInfo("train/passwd.jpg")
    link.create_system = 3  # unix: the high 16 bits of external_attr are st_mode
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    zip_path = downloads / "train.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr(link, "/etc/passwd")

    with pytest.raises(DataError, match=r"train/passwd\.jpg.*symbolic link"):
        extract_zip(zip_path, data_dir)
    assert everything_under(data_dir) == []


@pytest.mark.reliability
def test_a_member_with_an_absurd_compression_ratio_is_rejected_before_writing(dirs):
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {"train/bomb.jpg": bytes(64 * 1024 * 1024)})
    assert zip_path.stat().st_size < 1024 * 1024

    with pytest.raises(DataError, match=r"train/bomb\.jpg.*zip bomb"):
        extract_zip(zip_path, data_dir)
    assert everything_under(data_dir) == []


@pytest.mark.reliability
def test_a_member_lying_about_its_size_is_stopped(dirs):
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {"train/a.jpg": b"ok", "train/liar.jpg": bytes(2 * 1024 * 1024)})
    # Make the central directory claim the second member expands to 1000 bytes only.
    raw = bytearray(zip_path.read_bytes())
    entry = raw.find(b"PK\x01\x02", raw.find(b"PK\x01\x02") + 4)
    struct.pack_into("<I", raw, entry + 24, 1000)
    zip_path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(zip_path).getinfo("train/liar.jpg").file_size == 1000

    with pytest.raises(DataError, match=r"train/liar\.jpg"):
        extract_zip(zip_path, data_dir)
    assert everything_under(data_dir) == []  # not even the honest member is left half-placed


@pytest.mark.reliability
def test_extraction_stops_as_soon_as_a_member_outgrows_its_declared_size(dirs, monkeypatch):
    # Whatever zipfile does with a lying archive, our own copy never writes past the declared size.
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {"train/a.jpg": b"12345"})
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, member, *a, **k: io.BytesIO(b"x" * 10_000_000))

    with pytest.raises(DataError, match=r"train/a\.jpg.*declared 5 bytes"):
        extract_zip(zip_path, data_dir)
    assert everything_under(data_dir) == []


@pytest.mark.reliability
def test_an_archive_larger_than_the_free_disk_space_is_rejected(dirs, monkeypatch):
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {"train/a.jpg": bytes(5000)})
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(archive_module.shutil, "disk_usage", lambda path: usage(10_000, 9_000, 1_000))

    with pytest.raises(DataError, match="GiB free"):
        extract_zip(zip_path, data_dir)
    assert everything_under(data_dir) == []


@pytest.mark.reliability
def test_a_corrupt_member_leaves_no_folder_that_looks_complete(dirs):
    downloads, data_dir = dirs
    zip_path = write_zip(downloads / "train.zip", {"train/a.jpg": b"A" * 100, "train/b.jpg": b"B" * 100},
                         compression=zipfile.ZIP_STORED)
    raw = bytearray(zip_path.read_bytes())
    raw[raw.rfind(b"B" * 100) + 50] = ord("X")  # one flipped byte in b.jpg: its CRC no longer matches
    zip_path.write_bytes(bytes(raw))

    with pytest.raises(DataError, match=r"train/b\.jpg"):
        extract_zip(zip_path, data_dir)
    assert everything_under(data_dir) == []  # a.jpg was fine, but train/ must not appear without b.jpg


@pytest.mark.reliability
def test_a_file_that_is_no_zip_is_a_data_error(dirs):
    downloads, data_dir = dirs
    not_zip = downloads / "train.zip"
    not_zip.write_bytes(b"<html>Please sign in</html>")
    with pytest.raises(DataError, match="train.zip: corrupt zip archive"):
        extract_zip(not_zip, data_dir)
