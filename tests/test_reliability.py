"""Faults a user meets, at the level of `python main.py`: the process killed (kill -9, Ctrl-C) while it
trains or predicts, a loss that blows up, an output folder that cannot be written or a disk that fills.

What must hold: a run killed at any moment resumes from its last completed epoch with the same
counters and TensorBoard curves; no output file is ever half written under its real name; every
failure is one line on stderr naming the file, with a non-zero exit code and no traceback.
"""
from __future__ import annotations

import errno
import gzip
import hashlib
import os
import shutil
import signal
import struct
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch

from carvana import cli
from carvana.core.geometry import Size
from carvana.data.source import DataOptions, get_data
from carvana.submission.validate import validate_submission
from cli_helpers import epochs_printed, one_line_error, run_cli, start_main, wait_for
from data_factory import make_tiny_carvana
from filesystems import small_filesystem
from training_helpers import scalar_events

pytestmark = pytest.mark.reliability

TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment"]
STEPS_PER_EPOCH = 4  # 2 training cars x 16 views, batch 8


# --------------------------------------------------------------------------- helpers


def train_args(data_dir: Path, work: Path, *extra: str) -> list[str]:
    return ["train", "--dataset", "auto", "--data-dir", str(data_dir), *TINY,
            "--output-dir", str(work / "output"), "--log-dir", str(work / "logs"), *extra]


def session_processes(session: int) -> list[str]:
    """The live processes of a session (`pid state command`), zombies left out: they hold no memory or files."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # it ended while we looked
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(f"{stat.parent.name} {fields[0]} {text[text.index('(') + 1:text.rindex(')')]}")
    return found


def assert_the_whole_tree_ends(process: subprocess.Popen, timeout: float = 20) -> tuple[str, str]:
    """Read the child's stdout and stderr to their end (every process holding them gone) and check that
    no process of its session is left; returns what it printed. Cleans up after itself on failure."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        left = session_processes(process.pid)
        for line in left:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        process.communicate()
        pytest.fail(f"stdout/stderr still open {timeout}s after main.py ended, held by: {left}")
    deadline = time.monotonic() + timeout
    while session_processes(process.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = session_processes(process.pid)
    for line in left:
        os.kill(int(line.split()[0]), signal.SIGKILL)
    assert not left, f"processes left behind: {left}"
    return out, err


def fill(folder: Path) -> None:
    """Write to `folder` until its filesystem is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as e:
        assert e.errno == errno.ENOSPC, e
    finally:
        os.close(fd)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scalar_steps(log_dir: Path, tag: str) -> list[int]:
    return [step for step, _ in scalar_events(log_dir)[tag]]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """3 cars x 16 views at 192x128 (2 training cars, 1 validation car) and a 16-photo test set."""
    return make_tiny_carvana(tmp_path_factory.mktemp("data"), cars=3)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory) -> Path:
    """A finished 2-epoch run named `tiny` (in-process); returns its work folder."""
    work = tmp_path_factory.mktemp("trained")
    assert cli.main(train_args(tiny_data, work, "--epochs", "2", "--run-name", "tiny")) == 0
    return work


def copy_run(trained: Path, tmp_path: Path) -> Path:
    work = tmp_path / "work"
    shutil.copytree(trained / "output", work / "output")
    shutil.copytree(trained / "logs", work / "logs")
    return work


# --------------------------------------------------------------------------- kill -9 and Ctrl-C while training


def test_a_run_killed_with_sigkill_mid_epoch_resumes_from_its_last_completed_epoch(tiny_data, tmp_path, capsys):
    last = tmp_path / "output" / "models" / "killed" / "last.pt"
    process = start_main(train_args(tiny_data, tmp_path, "--epochs", "3", "--run-name", "killed"), tmp_path)
    wait_for(last.exists, process, "the first epoch's last.pt")
    process.send_signal(signal.SIGKILL)  # while epoch 2 trains
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    killed = torch.load(last, weights_only=True)
    done = killed["epoch"]
    assert 1 <= done < 3, "killed before the run's end"
    assert killed["global_step"] == done * STEPS_PER_EPOCH

    code, out, err = run_cli(train_args(tiny_data, tmp_path, "--epochs", "3", "--resume", str(last)), capsys)
    assert code == 0, err
    assert f"resuming run killed from {last}: epoch {done}" in out
    assert epochs_printed(out) == list(range(done + 1, 4))
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 3 and resumed["global_step"] == 3 * STEPS_PER_EPOCH
    assert resumed["history"][:done] == killed["history"][:done] and len(resumed["history"]) == 3
    assert resumed["best_score"] == max(entry["val_dice"] for entry in resumed["history"])

    # `--resume last` picks the latest run's last.pt and goes on to a later epoch.
    code, out, err = run_cli(train_args(tiny_data, tmp_path, "--epochs", "4", "--resume", "last"), capsys)
    assert code == 0, err
    assert epochs_printed(out) == [4]
    assert torch.load(last, weights_only=True)["global_step"] == 4 * STEPS_PER_EPOCH

    logs = tmp_path / "logs" / "killed"
    for tag in ("loss/train", "dice/val", "lr"):
        assert scalar_steps(logs, tag) == [1, 2, 3, 4], f"{tag}: one point per epoch, none doubled"


def test_ctrl_c_while_training_saves_the_last_epoch_and_says_how_to_resume(tiny_data, tmp_path):
    last = tmp_path / "output" / "models" / "stopped" / "last.pt"
    args = train_args(tiny_data, tmp_path, "--epochs", "3", "--run-name", "stopped")
    args[args.index("--workers") + 1] = "1"  # Ctrl-C reaches the loader's worker processes too
    process = start_main(args, tmp_path, new_session=True)
    wait_for(last.exists, process, "the first epoch's last.pt")
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does: the whole process group
    out, err = process.communicate(timeout=120)

    assert process.returncode == 130, out + err
    message = one_line_error(err)
    assert f"--resume {last}" in message
    assert torch.load(last, weights_only=True)["epoch"] >= 1


def test_sigterm_while_training_saves_the_last_epoch_says_how_to_resume_and_exits_143(tiny_data, tmp_path):
    last = tmp_path / "output" / "models" / "termed" / "last.pt"
    args = train_args(tiny_data, tmp_path, "--epochs", "5", "--run-name", "termed")
    args[args.index("--workers") + 1] = "1"
    process = start_main(args, tmp_path, new_session=True)
    wait_for(last.exists, process, "the first epoch's last.pt")
    process.send_signal(signal.SIGTERM)  # what docker stop, Slurm and `timeout` send to the main process
    out, err = assert_the_whole_tree_ends(process, timeout=120)

    assert process.returncode == 143, out + err
    message = one_line_error(err)
    assert "SIGTERM" in message and f"--resume {last}" in message
    saved = torch.load(last, weights_only=True)
    assert 1 <= saved["epoch"] < 5 and saved["global_step"] == saved["epoch"] * STEPS_PER_EPOCH


def test_a_burst_of_sigterms_ends_the_run_with_143_and_at_most_one_line(tiny_data, tmp_path):
    # torchrun's agent and a job runner may both send SIGTERM: the second one ends the run at once, and
    # none lands while a default handler is swapped in ("Signal 15 ignored due to race condition").
    last = tmp_path / "output" / "models" / "burst" / "last.pt"
    process = start_main(train_args(tiny_data, tmp_path, "--epochs", "5", "--run-name", "burst"), tmp_path,
                         new_session=True)
    wait_for(last.exists, process, "the first epoch's last.pt")
    for gap in [0.0] * 10 + [0.01] * 10:  # a burst (pending signals coalesce), then a few during the clean-up
        process.send_signal(signal.SIGTERM)
        time.sleep(gap)
    out, err = assert_the_whole_tree_ends(process, timeout=120)

    assert process.returncode == 143, out + err
    assert "Traceback" not in err and "race condition" not in err and "Exception ignored" not in err, err
    assert len(err.strip().splitlines()) <= 1, err


def test_a_run_killed_with_sigkill_takes_its_loader_workers_with_it_and_the_callers_pipe_ends(tiny_data, tmp_path):
    # Workers for both loaders, the forkserver and the resource tracker hold the caller's stdout too:
    # `main.py | tee log` ends only when all of them have gone.
    last = tmp_path / "output" / "models" / "orphans" / "last.pt"
    args = train_args(tiny_data, tmp_path, "--epochs", "5", "--run-name", "orphans")
    args[args.index("--workers") + 1] = "2"
    process = start_main(args, tmp_path, new_session=True)
    wait_for(last.exists, process, "the first epoch's last.pt")
    assert len(session_processes(process.pid)) >= 5, "main, forkserver and the loaders' workers run"
    process.send_signal(signal.SIGKILL)
    assert_the_whole_tree_ends(process, timeout=20)
    assert process.returncode == -signal.SIGKILL


def test_a_sample_generation_killed_with_sigkill_takes_its_pool_with_it(tmp_path):
    # Two full-size cars are enough work for the generator to photograph them in a process pool.
    process = start_main(["fetch", "--dataset", "sample", "--data-dir", str(tmp_path / "input"), "--sample-cars", "2"],
                         tmp_path, new_session=True)
    wait_for(lambda: len(session_processes(process.pid)) >= 3, process, "the generator's pool workers")
    process.send_signal(signal.SIGKILL)
    assert_the_whole_tree_ends(process, timeout=20)


# --------------------------------------------------------------------------- kill -9 while predicting


def test_a_prediction_killed_with_sigkill_leaves_the_previous_submission_and_a_rerun_writes_a_valid_one(
        trained, tmp_path, capsys):
    data_dir = make_tiny_carvana(tmp_path, cars=1, test_cars=4)  # 64 test photos
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    submission = out_dir / "submit.csv.gz"
    submission.write_bytes(gzip.compress(b"img,rle_mask\nprevious,1 1\n"))
    before = digest(submission)
    args = ["predict", "--checkpoint", str(trained / "output" / "models" / "tiny" / "best.pt"),
            "--data-dir", str(data_dir), "--output-dir", str(out_dir), "--workers", "0", "--batch-size", "2"]

    process = start_main(args, tmp_path)
    wait_for(lambda: any(out_dir.glob(".tmp-submit.csv.gz.*")), process, "the submission's temporary file")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)

    assert digest(submission) == before, "the previous complete submission is untouched"
    leftovers = [p.name for p in out_dir.iterdir() if p != submission]
    assert all(name.startswith(".tmp-submit.csv.gz.") for name in leftovers), leftovers

    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    report = validate_submission(submission, data_dir / "sample_submission.csv", image_size=Size(192, 128))
    assert report.rows == 64
    assert [p.name for p in out_dir.iterdir()] == ["submit.csv.gz"], "the killed run's temporary file is cleaned up"


# --------------------------------------------------------------------------- a loss that becomes NaN


def test_a_diverging_resumed_run_stops_naming_the_epoch_and_step_and_keeps_its_checkpoints(trained, tiny_data, tmp_path,
                                                                                             capsys):
    work = copy_run(trained, tmp_path)
    models = work / "output" / "models" / "tiny"
    before = {name: digest(models / name) for name in ("last.pt", "best.pt")}
    # A new optimiser starts afresh with the flag's learning rate (a resumed one keeps its own).
    code, out, err = run_cli(train_args(tiny_data, work, "--epochs", "3", "--resume",
                                        str(models / "last.pt"), "--optimizer", "sgd", "--lr", "1e30"), capsys)
    assert code == 1
    message = one_line_error(err)
    assert "at epoch 3, step" in message and ("nan" in message or "inf" in message)
    assert "--lr" in message
    assert {name: digest(models / name) for name in before} == before
    assert not list(models.glob(".tmp-*"))


def test_a_run_that_diverges_in_its_first_epoch_saves_nothing_and_says_so(tiny_data, tmp_path, capsys):
    code, _, err = run_cli(train_args(tiny_data, tmp_path, "--epochs", "2", "--run-name", "nan", "--lr", "1e30"),
                           capsys)
    assert code == 1
    message = one_line_error(err)
    assert "at epoch 1, step" in message and "nothing was saved" in message
    assert not (tmp_path / "output" / "models" / "nan" / "best.pt").exists()


# --------------------------------------------------------------------------- unwritable output, full disk


@pytest.mark.parametrize("flag", ["--output-dir", "--log-dir"])
def test_an_output_folder_that_cannot_be_created_is_refused_before_training(tiny_data, tmp_path, capsys, flag):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = train_args(tiny_data, tmp_path, "--epochs", "1", "--run-name", "blocked")
    args[args.index(flag) + 1] = str(blocker / "sub")
    code, out, err = run_cli(args, capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(blocker / "sub") in message and "cannot write" in message
    assert epochs_printed(out) == [], "refused before an epoch was spent"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not stop root")
def test_a_read_only_output_folder_is_refused_before_training(tiny_data, tmp_path, capsys):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        args = train_args(tiny_data, tmp_path, "--epochs", "1", "--run-name", "ro")
        args[args.index("--output-dir") + 1] = str(read_only)
        code, out, err = run_cli(args, capsys)
    finally:
        read_only.chmod(0o755)
    assert code == 1 and "cannot write" in one_line_error(err) and epochs_printed(out) == []


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_real_full_disk_at_a_checkpoint_save_is_one_line_that_says_so_and_leaves_nothing(tiny_data, tmp_path,
                                                                                         capsys):
    # The data fits on the disk, the first checkpoint (tens of MB) does not fit in 1 MB.
    with small_filesystem(tmp_path / "small", "1m") as small:
        args = train_args(tiny_data, tmp_path, "--epochs", "1", "--run-name", "full")
        args[args.index("--output-dir") + 1] = str(small / "output")
        code, out, err = run_cli(args, capsys)
        models = small / "output" / "models" / "full"
        leftovers = sorted(p.name for p in models.glob("*") if p.suffix == ".pt" or p.name.startswith(".tmp-"))
    assert code == 1
    message = one_line_error(err)
    assert str(models / "last.pt") in message
    assert os.strerror(errno.ENOSPC) in message and "MB free" in message and "nothing was replaced" in message
    assert leftovers == [], "neither last.pt, best.pt nor a temporary file"
    assert epochs_printed(out) == [1], "the epoch trained; only its checkpoint could not be saved"


def test_a_full_disk_while_writing_the_submission_keeps_the_previous_one(trained, tiny_data, tmp_path, capsys,
                                                                         monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    submission = out_dir / "submit.csv.gz"
    submission.write_bytes(gzip.compress(b"img,rle_mask\nprevious,1 1\n"))
    before = digest(submission)
    real_write = gzip.GzipFile.write
    writes = {"n": 0}

    def fill_the_disk_after_the_header(self, data):
        writes["n"] += 1
        if writes["n"] > 1:
            no_space()
        return real_write(self, data)

    monkeypatch.setattr(gzip.GzipFile, "write", fill_the_disk_after_the_header)
    code, _, err = run_cli(["predict", "--checkpoint", str(trained / "output" / "models" / "tiny" / "best.pt"),
                            "--data-dir", str(tiny_data), "--output-dir", str(out_dir), "--workers", "0"], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(submission) in message and os.strerror(errno.ENOSPC) in message
    assert digest(submission) == before
    assert [p.name for p in out_dir.iterdir()] == ["submit.csv.gz"]


# --------------------------------------------------------------------------- an interrupted download


def test_auto_never_takes_an_unfinished_kaggle_download_for_data(tmp_path, monkeypatch, capsys):
    data_dir = make_tiny_carvana(tmp_path, cars=1, views=2, complete_marker=False)
    (data_dir / ".download" / "test.zip").mkdir(parents=True)  # the fetch stopped while downloading test.zip
    fetched = []
    monkeypatch.setattr("carvana.kaggle.download.fetch_kaggle",
                        lambda folder, **kwargs: fetched.append(folder) or FakeReport())
    monkeypatch.setenv("KAGGLE_USERNAME", "someone")
    monkeypatch.setenv("KAGGLE_KEY", "0" * 32)
    assert get_data(data_dir, DataOptions(dataset="auto"), output_dir=tmp_path / "output").origin == "Kaggle"
    assert fetched == [data_dir], "the download is resumed"

    monkeypatch.delenv("KAGGLE_USERNAME")
    monkeypatch.delenv("KAGGLE_KEY")
    generated = []
    monkeypatch.setattr("carvana.sample.dataset.generate_sample_dataset",
                        lambda folder, **kwargs: generated.append(folder) or FakeReport())
    capsys.readouterr()
    assert get_data(data_dir, DataOptions(dataset="auto"), output_dir=tmp_path / "output").origin == "built-in sample"
    assert generated == [data_dir / "sample"]
    assert "unfinished Kaggle download" in capsys.readouterr().out


class FakeReport:
    def summary(self) -> str:
        return "done"


def start_prediction_over_a_previous_submission(trained: Path, tmp_path: Path, workers: int):
    """`predict` into a folder that holds a complete earlier submission; returns (process, submission, its digest)."""
    data_dir = make_tiny_carvana(tmp_path, cars=1, test_cars=4)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    submission = out_dir / "submit.csv.gz"
    submission.write_bytes(gzip.compress(b"img,rle_mask\nprevious,1 1\n"))
    process = start_main(["predict", "--checkpoint", str(trained / "output" / "models" / "tiny" / "best.pt"),
                          "--data-dir", str(data_dir), "--output-dir", str(out_dir), "--workers", str(workers),
                          "--batch-size", "2"], tmp_path, new_session=True)
    wait_for(lambda: any(out_dir.glob(".tmp-submit.csv.gz.*")), process, "the submission's temporary file")
    return process, submission, digest(submission)


def test_ctrl_c_while_predicting_exits_130_and_leaves_the_previous_submission(trained, tmp_path):
    process, submission, before = start_prediction_over_a_previous_submission(trained, tmp_path, workers=0)
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does: the whole process group
    out, err = process.communicate(timeout=60)

    assert process.returncode == 130, out + err
    assert "Traceback" not in err and "interrupted" in err
    assert digest(submission) == before
    assert [p.name for p in submission.parent.iterdir()] == ["submit.csv.gz"], "the partial file is removed"


def test_sigterm_while_predicting_exits_143_and_leaves_the_previous_submission(trained, tmp_path):
    process, submission, before = start_prediction_over_a_previous_submission(trained, tmp_path, workers=1)
    process.send_signal(signal.SIGTERM)
    out, err = assert_the_whole_tree_ends(process, timeout=60)

    assert process.returncode == 143, out + err
    assert "SIGTERM" in one_line_error(err)
    assert digest(submission) == before
    assert [p.name for p in submission.parent.iterdir()] == ["submit.csv.gz"], "the partial file is removed"


# --------------------------------------------------------------------------- a full log disk, a corrupt checkpoint


def test_a_log_disk_that_fills_mid_run_turns_logging_off_in_one_line_and_training_and_checkpoints_go_on(
        tiny_data, tmp_path):
    last = tmp_path / "output" / "models" / "logfull" / "last.pt"
    with small_filesystem(tmp_path / "logs", "4m") as logs:
        process = start_main(train_args(tiny_data, tmp_path, "--epochs", "4", "--run-name", "logfull"), tmp_path)
        wait_for(last.exists, process, "the first epoch's last.pt")
        fill(logs)
        out, err = process.communicate(timeout=300)
        logged = scalar_steps(logs / "logfull", "loss/train") if (logs / "logfull").exists() else []

    assert process.returncode == 0, out + err
    assert one_line_error(err) == (f"warning: TensorBoard logging to {logs / 'logfull'} failed "
                                   f"({os.strerror(errno.ENOSPC)}); logging is off for the rest of the run, "
                                   "training goes on")
    assert epochs_printed(out) == [1, 2, 3, 4]
    saved = torch.load(last, weights_only=True)
    assert saved["epoch"] == 4 and saved["global_step"] == 4 * STEPS_PER_EPOCH
    assert logged == sorted(logged) and len(logged) < 4, "curves up to the epoch the disk filled"


def flip_bytes_inside_a_tensor(checkpoint: Path, corrupt: Path) -> None:
    """Copy `checkpoint` with bytes inverted in the middle of its largest tensor; the zip stays readable."""
    with zipfile.ZipFile(checkpoint) as archive:
        record = max((info for info in archive.infolist() if "/data/" in info.filename), key=lambda i: i.file_size)
    data = bytearray(checkpoint.read_bytes())
    name_length, extra_length = struct.unpack("<HH", data[record.header_offset + 26:record.header_offset + 30])
    start = record.header_offset + 30 + name_length + extra_length + record.file_size // 2
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    corrupt.write_bytes(bytes(data))


def test_a_checkpoint_with_bytes_changed_inside_a_tensor_is_refused_and_the_previous_submission_kept(
        trained, tiny_data, tmp_path, capsys):
    corrupt = tmp_path / "best.pt"
    flip_bytes_inside_a_tensor(trained / "output" / "models" / "tiny" / "best.pt", corrupt)
    assert torch.load(corrupt, weights_only=True)["epoch"] >= 1, "torch itself reads it without complaint"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    submission = out_dir / "submit.csv.gz"
    submission.write_bytes(gzip.compress(b"img,rle_mask\nprevious,1 1\n"))
    before = digest(submission)

    code, _, err = run_cli(["predict", "--checkpoint", str(corrupt), "--data-dir", str(tiny_data),
                            "--output-dir", str(out_dir), "--workers", "0"], capsys)
    assert code == 1
    assert one_line_error(err) == (f"error: {corrupt}: checksum mismatch: the file is corrupt (bytes changed since "
                                   "it was written); use another checkpoint (e.g. best.pt/last.pt)")
    assert digest(submission) == before and [p.name for p in out_dir.iterdir()] == ["submit.csv.gz"]
