"""Outputs are written whole or not at all, and a killed writer's leftovers do not pile up."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from carvana.core.atomic import atomic_path, atomic_write_text
from carvana.core.errors import CarvanaError


def a_finished_process_id() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_write_replaces_the_file_whole_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "submit.csv.gz"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["submit.csv.gz"]


def test_a_failed_write_keeps_the_previous_file_and_removes_its_temporary_file(tmp_path):
    target = tmp_path / "submit.csv.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["submit.csv.gz"]


def test_a_disk_error_is_one_message_naming_the_file(tmp_path):
    target = tmp_path / "last.pt"
    with pytest.raises(CarvanaError, match="last.pt: could not be written .*nothing was replaced"):
        with atomic_path(target):
            raise OSError(28, "No space left on device")


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
    target = tmp_path / "submit.csv.gz"
    dead = tmp_path / f".tmp-submit.csv.gz.{a_finished_process_id()}.abc123"
    alive = tmp_path / f".tmp-submit.csv.gz.{os.getppid()}.def456"  # a running process writing it now
    other_target = tmp_path / f".tmp-last.pt.{a_finished_process_id()}.ghi789"
    for leftover in (dead, alive, other_target):
        leftover.write_text("partial")

    atomic_write_text(target, "complete")

    assert not dead.exists()
    assert alive.exists() and other_target.exists(), "only this target's files of dead processes go"
    assert target.read_text() == "complete"
