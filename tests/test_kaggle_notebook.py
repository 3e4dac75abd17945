"""The competitor's real environment: a Kaggle notebook, the competition's zip files mounted read-only.

The layout is Kaggle's (`train.zip` holding `train/*.jpg`, `train_masks.csv.zip`, ...), built from the
built-in sample and mounted read-only (a read-only bind mount as root). The README's notebook cells run
as written, with the paths moved into the test's folders and small flags added for speed.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from carvana.core.errors import DataError
from carvana.kaggle.zips import extract_competition_zips
from cli_helpers import default_sigint, one_line_error
from conftest import REPO_ROOT
from filesystems import read_only, snapshot

sys.path.insert(0, str(REPO_ROOT))
from bench.fixtures import write_kaggle_zips  # noqa: E402

pytestmark = pytest.mark.slow

KAGGLE_INPUT = "/kaggle/input/carvana-image-masking-challenge"
KAGGLE_WORKING = "/kaggle/working"
TINY = ["--input-size", "128x64", "--epochs", "1", "--coarse-epochs", "0", "--batch-size", "8", "--workers", "0"]


def run_main(args: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> Path:
    """The built-in sample (4 training cars, 192x128) in Kaggle's layout."""
    folder = tmp_path_factory.mktemp("layout")
    done = run_main(["fetch", "--dataset", "sample", "--sample-cars", "4", "--sample-image-size", "192x128",
                     "--data-dir", folder], folder)
    assert done.returncode == 0, done.stderr
    return folder / "sample"


@pytest.fixture(scope="module")
def kaggle_zips(layout, tmp_path_factory) -> Path:
    """The competition's zip files, as Kaggle mounts them (not yet read-only)."""
    folder = tmp_path_factory.mktemp("input") / "carvana-image-masking-challenge"
    write_kaggle_zips(layout, folder)
    return folder


def notebook_commands() -> list[list[str]]:
    """The `!python main.py ...` lines of the README's notebook cells, split as the shell would."""
    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## In a Kaggle notebook", 1)[1].split("\n## ", 1)[0]
    cells = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert cells, "the README's Kaggle-notebook section shows its cells"
    lines = [line[1:] for cell in cells for line in cell.splitlines() if line.startswith("!python main.py")]
    return [shlex.split(line)[2:] for line in lines]


def in_test_folders(args: list[str], zips: Path, working: Path) -> list[str]:
    return [arg.replace(KAGGLE_INPUT, str(zips)).replace(KAGGLE_WORKING, str(working)) for arg in args]


def test_the_readme_notebook_cells_run_on_the_competitions_zip_files_read_only(kaggle_zips, tmp_path):
    commands = notebook_commands()
    assert commands[0][:2] == ["--data-dir", KAGGLE_INPUT], "the first cell trains on Kaggle's mount"
    before = snapshot(kaggle_zips)
    working = tmp_path / "working"
    working.mkdir()
    with read_only(kaggle_zips):
        results = []
        for number, args in enumerate(commands):
            extra = TINY if number == 0 else []
            results.append(run_main([*in_test_folders(args, kaggle_zips, working), *extra], working))
            assert results[-1].returncode == 0, f"{args}:\n{results[-1].stdout}\n{results[-1].stderr}"
        again = run_main(["predict", "--data-dir", kaggle_zips, "--output-dir", working / "out", "--workers", "0"],
                         working)
    assert snapshot(kaggle_zips) == before, "nothing was written into Kaggle's folder"

    out = results[0].stdout
    extracted = working / "out" / "data"
    assert f"Kaggle's zip files in {kaggle_zips}: extracted train.zip" in out
    assert re.search(r"\(\d+ MiB on disk in all", out), "it says how much disk the files take"
    assert (extracted / "train_masks.csv").is_file() and len(list((extracted / "test").iterdir())) == 96
    assert (working / "out" / "submit.csv.gz").is_file() and any((working / "logs").iterdir())
    assert "Submission:      " in out and "(96 rows, valid)" in out
    assert again.returncode == 0, again.stderr
    assert "extracted earlier" in again.stdout and "reused" in again.stdout, "later runs reuse the files"


def test_dataset_kaggle_reads_a_read_only_folder_already_extracted_and_writes_nothing_there(layout, tmp_path):
    before = snapshot(layout)
    with read_only(layout):
        done = run_main(["train", "--dataset", "kaggle", "--data-dir", layout, *TINY], tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"Dataset: Kaggle in {layout}" in done.stdout
    assert snapshot(layout) == before


def test_a_read_only_folder_without_data_is_refused_in_one_line_naming_it(tmp_path):
    empty = tmp_path / "input"
    empty.mkdir()
    with read_only(empty):
        done = run_main(["fetch", "--dataset", "kaggle", "--data-dir", empty], tmp_path)
    assert done.returncode == 1
    message = one_line_error(done.stderr)
    assert str(empty) in message and "--data-dir" in message
    assert not any(empty.iterdir())


def test_an_extraction_killed_midway_resumes_where_it_stopped(tmp_path):
    """kill -9 while test.zip (400 photos) is extracted: the next fetch keeps the photos written whole."""
    layout = tmp_path / "layout"
    for folder in ("train", "train_masks", "test"):
        (layout / folder).mkdir(parents=True)
    (layout / "train" / "a_01.jpg").write_bytes(b"\xff\xd8 photo")
    (layout / "train_masks" / "a_01_mask.gif").write_bytes(b"GIF89a")
    (layout / "train_masks.csv").write_text("img,rle_mask\na_01.jpg,1 1\n")
    photos = {f"{car:012x}_01.jpg": os.urandom(256 * 1024) for car in range(400)}
    for name, data in photos.items():
        (layout / "test" / name).write_bytes(data)
    (layout / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{n},1 1\n" for n in photos))
    zips = tmp_path / "zips"
    write_kaggle_zips(layout, zips)
    out = tmp_path / "out"
    staged = out / "data" / ".extract-test.zip" / "test"

    process = subprocess.Popen([sys.executable, str(REPO_ROOT / "main.py"), "fetch", "--data-dir", str(zips),
                                "--output-dir", str(out)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while not (staged.is_dir() and len(os.listdir(staged)) >= 40):
        assert process.poll() is None, "the extraction ended before it could be cut"
        assert time.monotonic() < deadline, "the extraction never started"
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    whole = {p.name: p.stat().st_ino for p in staged.iterdir() if p.stat().st_size == 256 * 1024}
    assert whole and len(whole) < len(photos)
    assert not (out / "data" / "test").exists(), "nothing half-extracted is in place"

    done = run_main(["fetch", "--data-dir", zips, "--output-dir", out], tmp_path)
    assert done.returncode == 0, done.stderr
    test_dir = out / "data" / "test"
    assert {p.name: p.read_bytes() for p in test_dir.iterdir()} == photos
    assert {name: (test_dir / name).stat().st_ino for name in whole} == whole, "photos written whole are kept"
    assert not list((out / "data").glob(".extract-*"))


def test_an_archive_that_changed_is_extracted_again_and_the_others_reused(kaggle_zips, tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    for archive in kaggle_zips.iterdir():
        os.link(archive, zips / archive.name)
    target = tmp_path / "data"
    first = extract_competition_zips(zips, target, progress=False)
    assert set(first.extracted) == {"train.zip", "train_masks.zip", "train_masks.csv.zip", "metadata.csv.zip",
                                    "test.zip", "sample_submission.csv.zip"}
    assert extract_competition_zips(zips, target, progress=False).extracted == ()

    (zips / "metadata.csv.zip").unlink()
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "metadata.csv").write_text("id,year,make,model,trim1,trim2\nx,2017,A,B,C,D\n")
    write_kaggle_zips(tmp_path / "meta", zips)
    again = extract_competition_zips(zips, target, progress=False)
    assert again.extracted == ("metadata.csv.zip",)
    assert (target / "metadata.csv").read_text().endswith("x,2017,A,B,C,D\n")


def test_a_missing_archive_is_named(kaggle_zips, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for archive in kaggle_zips.iterdir():
        if archive.name != "test.zip":
            os.link(archive, partial / archive.name)
    with pytest.raises(DataError, match="test.zip"):
        extract_competition_zips(partial, tmp_path / "data", progress=False)
    extract_competition_zips(partial, tmp_path / "data", include_test=False, progress=False)
    assert (tmp_path / "data" / "train").is_dir()
