"""`python main.py` end to end, as a user runs it: a tiny configuration on the built-in sample dataset,
then `predict` on real Kaggle test photos."""
from __future__ import annotations

import csv
import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import REAL_TEST_PHOTOS, REPO_ROOT, needs_real_photos

pytestmark = pytest.mark.slow

TINY_RUN = [
    "--dataset", "sample", "--sample-cars", "4", "--sample-image-size", "192x128",
    "--preset", "cpu", "--input-size", "128x64", "--epochs", "1", "--batch-size", "8",
    "--workers", "0", "--run-name", "tiny",
]


def run_main(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "main.py"), *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    result = run_main(TINY_RUN, workdir)
    return workdir, result


def read_submission(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        return list(csv.reader(f))


def test_main_runs_the_whole_pipeline_on_the_sample(tiny_run):
    workdir, result = tiny_run
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "built-in sample" in out
    assert "Validation Dice" in out
    assert "tensorboard --logdir" in out
    submission = workdir / "output" / "submit.csv.gz"
    assert f"{Path('output') / 'submit.csv.gz'}" in out
    rows = read_submission(submission)
    assert rows[0] == ["img", "rle_mask"]
    with open(workdir / "input" / "sample" / "sample_submission.csv", newline="") as f:
        expected = [r[0] for r in list(csv.reader(f))[1:]]
    assert [r[0] for r in rows[1:]] == expected


def test_the_submission_passes_validate(tiny_run):
    workdir, _ = tiny_run
    result = run_main(["validate", "output/submit.csv.gz", "--data-dir", "input/sample"], workdir)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_tensorboard_events_and_checkpoints_are_written(tiny_run):
    workdir, _ = tiny_run
    run_logs = workdir / "logs" / "tiny"
    events = EventAccumulator(str(run_logs))
    events.Reload()
    assert {"loss/train", "loss/val", "dice/val"} <= set(events.Tags()["scalars"])
    assert events.Tags()["images"], "validation overlays are logged"
    models = workdir / "output" / "models" / "tiny"
    assert (models / "last.pt").is_file() and (models / "best.pt").is_file()


def test_validate_refuses_a_broken_submission(tiny_run, tmp_path):
    workdir, _ = tiny_run
    rows = read_submission(workdir / "output" / "submit.csv.gz")
    broken = tmp_path / "broken.csv.gz"
    with gzip.open(broken, "wt", newline="") as f:
        csv.writer(f).writerows(rows[:-1])  # one test image missing
    result = run_main(["validate", str(broken), "--data-dir", "input/sample"], workdir)
    assert result.returncode != 0
    assert str(broken) in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@needs_real_photos
def test_predict_on_real_kaggle_test_photos(tiny_run, tmp_path):
    workdir, _ = tiny_run
    data_dir = tmp_path / "kaggle"
    (data_dir / "test").mkdir(parents=True)
    names = sorted(p.name for p in REAL_TEST_PHOTOS.glob("*.jpg"))
    for name in names:
        shutil.copy(REAL_TEST_PHOTOS / name, data_dir / "test" / name)
    with open(data_dir / "sample_submission.csv", "w", newline="") as f:
        csv.writer(f).writerows([["img", "rle_mask"], *[[n, "1 1"] for n in names]])

    submission = tmp_path / "real.csv.gz"
    result = run_main(["predict", "--checkpoint", "output/models/tiny/best.pt", "--data-dir", str(data_dir),
                       "--submission", str(submission), "--workers", "0"], workdir)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = read_submission(submission)
    assert len(rows) == 1 + 32
    assert [r[0] for r in rows[1:]] == names
    result = run_main(["validate", str(submission), "--sample-submission", str(data_dir / "sample_submission.csv"),
                       "--image-size", "1918x1280"], workdir)
    assert result.returncode == 0, result.stderr
