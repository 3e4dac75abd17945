"""The decoded cache: a run decodes its photos once; later runs on the same files read them back.

Through the command line (what a run prints, what it leaves in OUTPUT/cache) and through the
loaders (the batches are the ones decoding gives).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from carvana.core.geometry import Size
from carvana.data import cache as decoded_cache
from carvana.data.augment import Augmenter
from carvana.data.datasets import make_train_loader, make_valid_loader, open_training_cache
from carvana.data.layout import load_carvana_data
from carvana.models.specs import model_geometry
from carvana.run.config import Config
from cli_helpers import epochs_printed, one_line_error, run_cli, start_main
from data_factory import make_tiny_carvana
from filesystems import small_filesystem

# Photos at 192x128, the model at 128x64: every mask is shrunk, so its edges have fractional shares.
TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment"]
GEOMETRY = model_geometry("unet1024", Size(128, 64))
CACHE_LINE = re.compile(r"^Decoded cache: (\S+) \((\d+) photos and masks at 128x64, .*, (built|reused)", re.M)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 cars x 16 views at 192x128: 32 training photos, 16 validation photos, no test set."""
    return make_tiny_carvana(tmp_path_factory.mktemp("data"), cars=3, with_test=False)


def copy_data(tiny_data: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "input"))


def train(data_dir: Path, output: Path, capsys, *extra: str, steps: int | None = 1) -> tuple[int, str, str]:
    """`steps` optimiser steps of training (None: one whole epoch) and the scoring after it, in this process."""
    budget = [] if steps is None else ["--max-steps", str(steps)]
    return run_cli(["train", "--data-dir", data_dir, *TINY, "--epochs", "1", *budget,
                    "--output-dir", output, "--log-dir", output.parent / "logs", *extra], capsys)


def cache_line(out: str) -> tuple[Path, int, str]:
    """(the cache file, its number of photos, 'built' or 'reused') from a run's output."""
    found = CACHE_LINE.findall(out)
    assert len(found) == 1, out
    path, count, how = found[0]
    return Path(path), int(count), how


def cache_files(output: Path) -> list[Path]:
    return sorted((output / "cache").glob("*/*.npy"))


def test_the_first_run_builds_the_cache_of_all_its_photos_and_the_next_run_reuses_it(tiny_data, tmp_path, capsys):
    output = tmp_path / "output"
    code, out, err = train(tiny_data, output, capsys)
    assert code == 0, err
    built, count, how = cache_line(out)
    assert how == "built" and count == 48, "the 32 training and 16 validation photos"
    assert cache_files(output) == [built]
    stamp = built.stat().st_mtime_ns

    code, out, err = train(tiny_data, output, capsys)
    assert code == 0, err
    assert cache_line(out) == (built, 48, "reused")
    assert built.stat().st_mtime_ns == stamp, "not written again"
    assert cache_files(output) == [built]


def test_a_changed_photo_makes_the_next_run_build_a_new_cache(tiny_data, tmp_path, capsys):
    data_dir, output = copy_data(tiny_data, tmp_path), tmp_path / "output"
    assert train(data_dir, output, capsys)[0] == 0
    first = cache_files(output)
    photo = sorted((data_dir / "train").glob("*.jpg"))[5]
    photo.write_bytes(photo.read_bytes())  # same bytes, a new modification time: it may have changed
    code, out, err = train(data_dir, output, capsys)
    assert code == 0, err
    rebuilt, _, how = cache_line(out)
    assert how == "built" and rebuilt not in first


def test_a_broken_photo_is_the_same_one_line_error_with_and_without_the_cache(tiny_data, tmp_path, capsys):
    data_dir, output = copy_data(tiny_data, tmp_path), tmp_path / "output"
    photo = sorted((data_dir / "train").glob("*.jpg"))[20]
    photo.write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])

    # Two pool workers decode it: the error crosses a process boundary as the same one line.
    code, out, err = train(data_dir, output, capsys, "--workers", "2")
    assert code == 1
    with_cache = one_line_error(err)
    assert with_cache.startswith(f"error: {photo}: truncated JPEG"), with_cache
    assert epochs_printed(out) == [], "found while building the cache, before training"
    assert cache_files(output) == [] and not any(p.name.startswith(".tmp-") for p in output.rglob("*"))

    # Without the cache the photo is decoded, and found broken, when its batch comes in the epoch.
    code, _, err = train(data_dir, tmp_path / "no-cache-output", capsys, "--no-cache", steps=None)
    assert code == 1
    assert one_line_error(err) == with_cache
    assert not (tmp_path / "no-cache-output" / "cache").exists()


def test_two_runs_started_at_once_build_the_cache_once_and_both_train(tiny_data, tmp_path):
    output = tmp_path / "output"
    runs = [start_main(["train", "--data-dir", tiny_data, *TINY, "--workers", "2", "--epochs", "1", "--max-steps", "1",
                        "--output-dir", output, "--log-dir", tmp_path / "logs", "--run-name", name], cwd=tmp_path)
            for name in ("first", "second")]
    results = [run.communicate(timeout=300) for run in runs]
    for run, (out, err) in zip(runs, results):
        assert run.returncode == 0, err
    lines = [cache_line(out) for out, _ in results]
    assert sorted(how for _, _, how in lines) == ["built", "reused"]
    assert len({path for path, _, _ in lines}) == 1 and cache_files(output) == [lines[0][0]]


def test_a_cache_over_the_size_limit_is_skipped_with_a_note_and_the_run_trains(tiny_data, tmp_path, capsys,
                                                                                 monkeypatch):
    monkeypatch.setattr(decoded_cache, "LIMIT_BYTES", 1 << 20)  # the tiny run's cache is 1.5 MiB
    output = tmp_path / "output"
    code, out, err = train(tiny_data, output, capsys)
    assert code == 0, err
    notes = [line for line in out.splitlines() if line.startswith("Decoded cache:")]
    assert len(notes) == 1 and "off" in notes[0] and "limit" in notes[0], notes
    assert epochs_printed(out) == [1]
    assert not (output / "cache").exists()


@pytest.mark.reliability
def test_a_cache_the_disk_has_no_room_for_is_skipped_with_one_line_not_written(tiny_data, tmp_path, capsys):
    """A real 2 MiB file system under OUTPUT/cache (root only): the 1.5 MiB cache needs twice that free."""
    output = tmp_path / "output"
    with small_filesystem(output / "cache", "2m"):
        code, out, err = train(tiny_data, output, capsys)
        assert code == 0, err
        notes = [line for line in out.splitlines() if line.startswith("Decoded cache:")]
        assert len(notes) == 1 and "off" in notes[0] and "free" in notes[0], notes
        assert epochs_printed(out) == [1]
        assert list((output / "cache").iterdir()) == [], "nothing was written on the full disk"


def batches(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), masks.clone()) for images, masks in loader]


@pytest.mark.parametrize("soft_targets", [False, True], ids=["0/1 targets", "soft targets"])
def test_the_loaders_give_the_same_batches_with_and_without_the_cache(tiny_data, tmp_path, soft_targets):
    data = load_carvana_data(tiny_data, need_test=False)
    names = data.train_names
    config = Config(output_dir=tmp_path / "output", workers=0, batch_size=5, seed=7, soft_targets=soft_targets)
    cache, note = open_training_cache(data, names, GEOMETRY, config)
    assert cache is not None and "built" in note

    def train_batches(workers: int, cache, augment) -> list:
        return batches(make_train_loader(data, names, GEOMETRY, config, workers=workers, augment=augment,
                                         cache=cache))

    decoded = train_batches(0, None, False)
    assert all(torch.equal(a, b) for pair in zip(decoded, train_batches(2, cache, False)) for a, b in zip(*pair)), \
        "the same batches from the memory map in two loader workers"
    augmented = train_batches(0, None, Augmenter(p=1.0))
    assert all(torch.equal(a, b) for pair in zip(augmented, train_batches(0, cache, Augmenter(p=1.0)))
               for a, b in zip(*pair)), "the same augmentation of the same pairs, given the seed"
    valid = [batches(make_valid_loader(data, names[:7], GEOMETRY, config, cache=c)) for c in (None, cache)]
    assert all(torch.equal(a, b) for pair in zip(*valid) for a, b in zip(*pair))


def test_the_cache_is_read_only_and_mapped_not_loaded(tiny_data, tmp_path):
    data = load_carvana_data(tiny_data, need_test=False)
    config = Config(output_dir=tmp_path / "output", workers=0)
    cache, _ = open_training_cache(data, data.train_names, GEOMETRY, config)
    array = cache.array()
    assert isinstance(array, np.memmap) and not array.flags.writeable
    assert array.shape == (len(data.train_names), 64, 128, 4) and array.dtype == np.uint8
    assert not os.access(cache.path.parent / ".lock", os.F_OK), "no lock left behind"
