"""`validate`, `score` and `submit` check and send files: they run where torch is not installed (a laptop
checking a submission downloaded from a Kaggle notebook) and start without paying for importing it."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

IDS = ["aaa_01.jpg", "aaa_02.jpg", "bbb_01.jpg"]
MASKS = {"aaa_01.jpg": "1 4 9 4", "aaa_02.jpg": "", "bbb_01.jpg": "30 3"}


@pytest.fixture
def files(tmp_path) -> Path:
    """A sample_submission.csv, a submission of 8x4 masks, and the same masks as the truth."""
    (tmp_path / "sample_submission.csv").write_text("img,rle_mask\n" + "".join(f"{i},1 1\n" for i in IDS))
    rows = "img,rle_mask\n" + "".join(f"{img},{mask}\n" for img, mask in MASKS.items())
    (tmp_path / "submit.csv.gz").write_bytes(gzip.compress(rows.encode()))
    (tmp_path / "truth.csv").write_text(rows)
    return tmp_path


def main_without_torch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`python main.py ARGS` where `import torch` fails, as on a machine without it."""
    no_torch = cwd / "no-torch"
    (no_torch / "torch").mkdir(parents=True, exist_ok=True)
    (no_torch / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(no_torch), str(REPO_ROOT)]), "HOME": str(cwd),
           "KAGGLE_CONFIG_DIR": str(cwd / "kaggle")}
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        env.pop(name, None)
    return subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_validate_runs_without_torch(files):
    result = main_without_torch(["validate", "submit.csv.gz", "--sample-submission", "sample_submission.csv",
                                 "--image-size", "8x4"], files)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout + result.stderr


def test_score_runs_without_torch(files):
    result = main_without_torch(["score", "submit.csv.gz", "--truth", "truth.csv", "--image-size", "8x4"], files)
    assert result.returncode == 0, result.stderr
    assert "1.00000" in result.stdout + result.stderr  # the masks are the truth: Dice 1


def test_submit_gets_as_far_as_kaggle_without_torch(files):
    """With no credentials the upload stops at Kaggle's login: torch was never needed to get there."""
    result = main_without_torch(["submit", "submit.csv.gz", "-m", "first try", "--no-validate"], files)
    assert result.returncode == 1
    assert "credentials" in result.stderr and "torch" not in result.stderr
