"""Every subcommand in the places a hostile user puts it: a read-only output folder, a full file system, an
input that is not there, a run name another run has. Each ends in its result or in one line on stderr (never a
traceback), and nothing of the run already in the output folder changes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import run_cli
from conftest import REPO_ROOT
from filesystems import read_only, small_filesystem, snapshot

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

SAMPLE = ["--dataset", "sample", "--sample-cars", "4", "--sample-image-size", "192x128"]
TINY = ["--preset", "cpu", "--input-size", "128x64", "--epochs", "1", "--coarse-epochs", "0", "--batch-size", "8",
        "--workers", "0", "--no-tta"]
TAKEN = "taken"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder as a user leaves it after `python main.py`: the sample, run `taken`, its submission."""
    workdir = tmp_path_factory.mktemp("work")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, str(REPO_ROOT / "main.py"), *SAMPLE, *TINY, "--run-name", TAKEN],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return workdir


def commands(out: Path, logs: Path) -> dict[str, list]:
    """Each subcommand writing (where it writes) into `out` and `logs`, reading the workdir's files."""
    validation = Path("output/validation") / TAKEN
    return {
        "run": [*SAMPLE, *TINY, "--data-dir", "input/sample", "--output-dir", out, "--log-dir", logs],
        "train": ["train", *SAMPLE, *TINY, "--data-dir", "input/sample", "--output-dir", out, "--log-dir", logs],
        "fetch": ["fetch", "--data-dir", "input/sample", "--output-dir", out],
        "predict": ["predict", "--checkpoint", f"output/models/{TAKEN}", "--data-dir", "input/sample",
                    "--output-dir", out, "--workers", "0"],
        "cutout": ["cutout", "input/sample/test", "--out", out / "cutouts", "--checkpoint", f"output/models/{TAKEN}"],
        "runs": ["runs", "--output-dir", out],
        "validate": ["validate", "output/submit.csv.gz", "--data-dir", "input/sample", "--output-dir", out],
        "score": ["score", validation / "valid_predictions.csv.gz", "--truth", validation / "valid_truth.csv",
                  "--image-size", "192x128"],
        "submit": ["submit", "output/submit.csv.gz", "-m", "try", "--data-dir", "input/sample", "--output-dir", out],
    }


MISSING = {
    "run": [*TINY, "--data-dir", "no-such-data"],
    "train": ["train", *TINY, "--data-dir", "no-such-data"],
    "fetch": ["fetch", "--data-dir", "no-such-data"],
    "predict": ["predict", "--checkpoint", "output/models/no-such-run/best.pt", "--data-dir", "input/sample"],
    "cutout": ["cutout", "no-such-photo.jpg", "--out", "cutouts", "--checkpoint", f"output/models/{TAKEN}"],
    "runs": ["runs", "--output-dir", "no-such-output"],
    "validate": ["validate", "no-such-submission.csv.gz", "--data-dir", "input/sample"],
    "score": ["score", "no-such-submission.csv.gz", "--truth", "input/sample/train_masks.csv"],
    "submit": ["submit", "no-such-submission.csv.gz", "-m", "try", "--data-dir", "input/sample"],
}


def the_run_already_there(workdir: Path) -> dict:
    return {name: snapshot(workdir / folder) for name, folder in
            [("models", f"output/models/{TAKEN}"), ("logs", f"logs/{TAKEN}"), ("validation", f"output/validation/{TAKEN}")]}


def ends_in_a_result_or_one_line(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if code != 0:
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(("error:", "main.py")), err


def check(workdir: Path, monkeypatch, capsys, args: list) -> tuple[int, str]:
    """Run `args` in `workdir`: a result or one line, and the run already there unchanged; (exit code, stderr)."""
    monkeypatch.chdir(workdir)
    before = the_run_already_there(workdir)
    code, _, err = run_cli(args, capsys)
    ends_in_a_result_or_one_line(code, err)
    assert the_run_already_there(workdir) == before, "the run already there was not touched"
    return code, err


@pytest.mark.parametrize("command", list(MISSING))
def test_a_missing_input_is_one_line(command, workdir, monkeypatch, capsys):
    code, _ = check(workdir, monkeypatch, capsys, MISSING[command])
    assert code != 0 or command == "runs", "a missing input is an error (an empty output dir lists no runs)"


@pytest.mark.parametrize("command", list(MISSING))
def test_a_read_only_output_is_a_result_or_one_line(command, workdir, monkeypatch, capsys, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    out.mkdir()
    logs.mkdir()
    with read_only(out), read_only(logs):
        code, _ = check(workdir, monkeypatch, capsys, commands(out, logs)[command])
        assert list(out.iterdir()) == [] and list(logs.iterdir()) == []
    if command in ("run", "train", "predict", "cutout"):
        assert code != 0, "a command that writes its result cannot succeed in a read-only folder"


def fill(path: Path) -> None:
    """Take every block of the file system `path` is on."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(descriptor, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(descriptor)


@pytest.mark.parametrize("command", list(MISSING))
def test_a_full_disk_is_a_result_or_one_line(command, workdir, monkeypatch, capsys, tmp_path):
    out = tmp_path / "full"
    with small_filesystem(out, "256k"):
        fill(out / "filler")
        code, err = check(workdir, monkeypatch, capsys, commands(out, out / "logs")[command])
        leftovers = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != "filler")
        if code != 0:
            assert str(out) in err or "credentials" in err, "the line names the file that could not be written"
            assert not [p for p in leftovers if p.endswith((".pt", ".csv.gz", ".png"))], leftovers
    if command in ("run", "train", "predict"):
        assert code != 0, "a full disk holds no checkpoint or submission"


@pytest.mark.parametrize("command", ["run", "train"])
@pytest.mark.parametrize("folds", [[], ["--folds", "2"]], ids=["one split", "folds"])
def test_a_taken_run_name_is_refused_and_the_run_untouched(command, folds, workdir, monkeypatch, capsys):
    args = [*([] if command == "run" else [command]), *SAMPLE, *TINY, *folds, "--run-name", TAKEN]
    code, err = check(workdir, monkeypatch, capsys, args)
    assert code == 1 and "--resume" in err and TAKEN in err


def test_the_other_commands_take_no_run_name(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    for command in ["fetch", "predict", "cutout", "runs", "validate", "score", "submit"]:
        with pytest.raises(SystemExit) as exit_:
            run_cli([command, "--run-name", TAKEN], capsys)
        assert exit_.value.code == 2
        ends_in_a_result_or_one_line(2, capsys.readouterr().err)
