"""`python main.py` end to end, as a user runs it: a tiny configuration on the built-in sample dataset,
then `predict` on real Kaggle test photos."""
from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
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


def test_the_readme_validate_command_finds_the_sample_the_run_used(tiny_run):
    workdir, _ = tiny_run
    result = run_main(["validate", "output/submit.csv.gz"], workdir)
    assert result.returncode == 0, result.stderr
    assert f"every id of {Path('input/sample/sample_submission.csv')} exactly once, RLE inside 192x128" in result.stdout


def test_tensorboard_events_and_checkpoints_are_written(tiny_run):
    workdir, _ = tiny_run
    run_logs = workdir / "logs" / "tiny"
    events = EventAccumulator(str(run_logs))
    events.Reload()
    assert {"loss/train", "loss/val", "dice/val"} <= set(events.Tags()["scalars"])
    assert events.Tags()["images"], "validation overlays are logged"
    models = workdir / "output" / "models" / "tiny"
    assert (models / "last.pt").is_file() and (models / "best.pt").is_file()


def test_the_runs_settings_and_results_reach_tensorboards_hparams_tab(tiny_run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    workdir, _ = tiny_run
    events = EventAccumulator(str(workdir / "logs" / "tiny"))
    events.Reload()
    sessions = [plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
                for content in events.PluginTagToContent("hparams").values()
                if plugin_data_pb2.HParamsPluginData.FromString(content).HasField("session_start_info")]
    assert sessions, "a session with the run's hyper-parameters"
    shown = sessions[-1].hparams
    assert shown["model"].string_value == "unet1024" and shown["input_size"].string_value == "128x64"
    assert shown["lr"].number_value > 0
    dice = events.Scalars("hparam/validation_dice")
    assert dice and 0.0 < dice[-1].value <= 1.0


def test_the_runs_table_lists_the_run_with_its_validation_dice(tiny_run):
    workdir, _ = tiny_run
    result = run_main(["runs"], workdir)
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("tiny "))
    assert "finished" in row and "output/models/tiny/best.pt" in row


def test_the_readme_workflow_commands_work_as_written_after_a_default_run(tiny_run):
    """`## The competitor's workflow`, in the folder of a finished run (small flags for speed)."""
    workdir, _ = tiny_run

    printed = run_main(["train", "--config", "output/models/tiny/config.yaml", "--print-config"], workdir)
    assert printed.returncode == 0, printed.stderr
    assert "input_size: 128x64" in printed.stdout, "the run's recorded recipe, fitted input size included"

    cutout = run_main(["cutout", "input/sample/test", "--out", "output/cutouts"], workdir)
    assert cutout.returncode == 0, cutout.stderr
    photos = list((workdir / "input" / "sample" / "test").iterdir())
    assert len(list((workdir / "output" / "cutouts").glob("*_cutout.png"))) == len(photos)

    folds = run_main(["train", "--folds", "2", "--epochs", "1", "--workers", "0", "--input-size", "128x64",
                      "--run-name", "k2"], workdir)
    assert folds.returncode == 0, folds.stderr
    assert "Out-of-fold validation Dice" in folds.stdout

    ensemble = run_main(["predict", "--ensemble", "output/models/k2", "--workers", "0",
                         "--submission", "output/ensemble.csv.gz"], workdir)
    assert ensemble.returncode == 0, ensemble.stderr
    assert run_main(["validate", "output/ensemble.csv.gz"], workdir).returncode == 0

    crop = run_main(["train", "--preset", "unet1024", "--crop", "128x64", "--width", "0.125", "--epochs", "1",
                     "--batch-size", "4", "--workers", "0", "--run-name", "crop"], workdir)
    assert crop.returncode == 0, crop.stderr
    assert "(the 192x128 photos whole, mirror-padded; training on 128x64 crops of them)" in crop.stdout

    mixed = run_main(["predict", "--checkpoint", "output/models/tiny", "output/models/crop", "--workers", "0",
                      "--submission", "output/mixed.csv.gz"], workdir)
    assert mixed.returncode == 0, mixed.stderr
    assert "averaged at the photos' size 192x128 (the models cover 128x64, 192x128)" in mixed.stdout
    assert run_main(["validate", "output/mixed.csv.gz"], workdir).returncode == 0


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_one_step_commands_work_as_written_after_a_default_run(tiny_run):
    """`## One step at a time`, `## Watching training` and the resume recipe of `## Reliability`, in the
    folder of a finished run (small flags where the README shows optional ones, for speed)."""
    workdir, first = tiny_run
    assert first.returncode == 0, first.stderr

    fetch = run_main(["fetch"], workdir)
    assert fetch.returncode == 0, fetch.stderr
    assert "built-in sample" in fetch.stdout, "the sample the run used is found, not generated again"

    predict = run_main(["predict", "--checkpoint", "output/models/tiny/best.pt", "--tta", "--workers", "0"], workdir)
    assert predict.returncode == 0, predict.stderr
    predict_latest = run_main(["predict", "--workers", "0"], workdir)
    assert predict_latest.returncode == 0, predict_latest.stderr
    assert run_main(["validate", "output/submit.csv.gz"], workdir).returncode == 0

    validation = workdir / "output" / "validation" / "tiny"
    score = run_main(["score", validation / "valid_predictions.csv.gz", "--truth", validation / "valid_truth.csv",
                      "--image-size", "192x128"], workdir)
    assert score.returncode == 0, score.stderr
    assert "mean Dice" in score.stdout

    resume = run_main(["--resume", "output/models/tiny/last.pt"], workdir)
    assert resume.returncode == 0, resume.stderr
    assert "run tiny finished its 1 epoch" in resume.stdout and "Validation Dice" in resume.stdout

    train = run_main(["train", "--epochs", "1", "--workers", "0", "--input-size", "128x64"], workdir)
    assert train.returncode == 0, train.stderr
    assert "Predict the test set:  python main.py predict --checkpoint" in train.stdout

    port = free_port()
    tensorboard = subprocess.Popen([str(Path(sys.executable).parent / "tensorboard"), "--logdir", "./logs",
                                    "--host", "127.0.0.1", "--port", str(port)], cwd=workdir,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        runs = None
        deadline = time.monotonic() + 60
        while runs is None and time.monotonic() < deadline and tensorboard.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/runs", timeout=5) as response:
                    runs = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert runs is not None, "tensorboard --logdir ./logs did not serve the runs"
        assert "tiny" in runs, runs
    finally:
        tensorboard.terminate()
        tensorboard.wait(timeout=30)
