"""A run's identity from outside: `--resume` continues the same run (data, split, epochs, schedule),
run names are unique and a run in use is locked, and two processes never break each other's data.

Real processes where the behaviour is about processes (kill -9, two runs at once, a lock held by
another process), the in-process CLI elsewhere; tiny data (4 cars x 4 views) keeps each run short.
"""
from __future__ import annotations

import hashlib
import math
import resource
import shutil
import signal
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import torch

from carvana.kaggle import files as kl
from cli_helpers import epochs_printed, one_line_error, run_cli, start_main, wait_for
from data_factory import make_tiny_carvana

pytestmark = pytest.mark.reliability

TINY = ["--preset", "cpu", "--input-size", "128x64", "--batch-size", "8", "--workers", "0", "--no-augment"]
BASE_LR = 2e-3  # the cpu preset's Adam learning rate (its scheduler is cosine)


# --------------------------------------------------------------------------- helpers


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cosine(epoch: int, epochs: int) -> float:
    """The LR epoch `epoch` (1-based) trains with on one cosine curve over `epochs`."""
    return BASE_LR * (1 + math.cos(math.pi * (epoch - 1) / epochs)) / 2


def outputs(work: Path) -> list[str]:
    return ["--output-dir", str(work / "output"), "--log-dir", str(work / "logs")]


@pytest.fixture(scope="module")
def mydata(tmp_path_factory) -> Path:
    """4 cars x 4 views: with --validation-size 0.5, 2 cars train (1 batch of 8) and 2 validate."""
    return make_tiny_carvana(tmp_path_factory.mktemp("mydata"), cars=4, views=4)


@pytest.fixture(scope="module")
def finished(mydata, tmp_path_factory) -> Path:
    """A finished 2-epoch cosine run named `done` on `mydata`; returns its work folder."""
    from carvana import cli

    work = tmp_path_factory.mktemp("finished")
    args = ["train", "--data-dir", mydata, *TINY, "--epochs", "2", "--validation-size", "0.5", "--seed", "7",
            "--run-name", "done", *outputs(work)]
    assert cli.main([str(a) for a in args]) == 0
    return work


def copy_run(work: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(work / "output", copy / "output")
    shutil.copytree(work / "logs", copy / "logs")
    return copy


# --------------------------------------------------------------------------- resume continues the same run


def test_the_readme_resume_recipe_after_kill_9_continues_the_same_data_split_and_epochs(mydata, tmp_path, capsys,
                                                                                         monkeypatch):
    last = tmp_path / "output" / "models" / "mine" / "last.pt"
    process = start_main(["train", "--data-dir", mydata, *TINY, "--epochs", "3", "--validation-size", "0.5",
                          "--seed", "7", "--run-name", "mine"], tmp_path)
    wait_for(last.exists, process, "the first epoch's last.pt")
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    killed = torch.load(last, weights_only=True)
    done = killed["epoch"]
    assert 1 <= done < 3, "killed before the run's end"

    monkeypatch.chdir(tmp_path)  # exactly as the README says, with no other flag
    code, out, err = run_cli(["train", "--resume", "output/models/mine/last.pt"], capsys)
    assert code == 0, err
    assert f"Dataset: local data in {mydata}" in out
    assert "sample" not in out and not (tmp_path / "input").exists(), "not the built-in sample"
    assert "8 training images (2 cars), 8 validation images (2 unseen cars)" in out
    assert "Training: 3 epochs" in out and epochs_printed(out) == list(range(done + 1, 4))
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 3
    saved = resumed["config"]
    assert (saved["seed"], saved["validation_size"], saved["epochs"], saved["input_size"]) == (7, 0.5, 3, [128, 64])
    assert resumed["run"]["valid_cars"] == killed["run"]["valid_cars"] and len(killed["run"]["valid_cars"]) == 2
    assert resumed["run"]["data_dir"] == str(mydata)


def test_extending_a_finished_cosine_run_follows_one_curve_over_the_new_total(finished, mydata, tmp_path, capsys,
                                                                              monkeypatch):
    work = copy_run(finished, tmp_path)
    last = work / "output" / "models" / "done" / "last.pt"
    monkeypatch.chdir(tmp_path)  # another folder than the run's: its data dir comes from the checkpoint
    code, out, err = run_cli(["train", "--resume", last, "--epochs", "4", *outputs(work)], capsys)
    assert code == 0, err
    assert f"Dataset: local data in {mydata} (the run's data)" in out
    assert "resume: --epochs 2 -> 4" in out
    assert epochs_printed(out) == [3, 4]
    assert f"lr {cosine(3, 4):.3g} (base {BASE_LR:g})" in out, "the banner shows the LR epoch 3 trains with"
    lrs = [entry["lr"] for entry in torch.load(last, weights_only=True)["history"]]
    assert lrs == pytest.approx([cosine(1, 2), cosine(2, 2), cosine(3, 4), cosine(4, 4)])
    assert all(lr > 0 for lr in lrs), "never an epoch at learning rate 0"


def test_resuming_a_finished_run_says_so_and_run_goes_on_to_predict_with_its_best_checkpoint(finished, tmp_path,
                                                                                              capsys):
    work = copy_run(finished, tmp_path)
    models = work / "output" / "models" / "done"
    before = digest(models / "last.pt")
    code, out, err = run_cli(["--resume", models / "last.pt", *outputs(work)], capsys)
    assert code == 0, err
    assert "run done finished all 2 epochs; pass --epochs N (> 2) to train longer" in out
    assert epochs_printed(out) == []
    assert f"Best checkpoint: {models / 'best.pt'}" in out
    assert (work / "output" / "submit.csv.gz").is_file()
    assert digest(models / "last.pt") == before


@pytest.mark.parametrize("flags, flag", [
    (["--input-size", "192x128"], "--input-size"),
    (["--width", "0.5"], "--width"),
    (["--model", "unet_original"], "--model"),
    (["--validation-size", "0.25"], "--validation-size"),
    (["--sample-size", "0.5"], "--sample-size"),
    (["--seed", "8"], "--seed"),
    (["--run-name", "other"], "--run-name"),
    (["--dataset", "sample"], "--dataset"),
    (["--sample-cars", "3"], "--sample-cars"),
])
def test_a_flag_that_cannot_apply_to_a_resumed_run_is_refused_in_one_line(flags, flag, finished, tmp_path, capsys):
    work = copy_run(finished, tmp_path)
    models = work / "output" / "models" / "done"
    before = {name: digest(models / name) for name in ("last.pt", "best.pt")}
    code, out, err = run_cli(["train", "--resume", models / "last.pt", "--epochs", "3", *flags, *outputs(work)], capsys)
    assert code == 1
    message = one_line_error(err)
    assert message.startswith(f"error: {flag} ") and str(models / "last.pt") in message, message
    assert epochs_printed(out) == []
    assert {name: digest(models / name) for name in before} == before


def test_resuming_on_moved_data_works_and_on_data_whose_cars_changed_is_refused(finished, mydata, tmp_path, capsys):
    work = copy_run(finished, tmp_path)
    last = work / "output" / "models" / "done" / "last.pt"
    moved = tmp_path / "moved"
    shutil.copytree(mydata, moved)
    code, out, err = run_cli(["train", "--resume", last, "--data-dir", moved, "--epochs", "3", *outputs(work)], capsys)
    assert code == 0, err
    assert f"resume: --data-dir {mydata} -> {moved}" in out and epochs_printed(out) == [3]

    other = make_tiny_carvana(tmp_path / "other", cars=5, views=4)  # one car more: another split
    before = digest(last)
    code, out, err = run_cli(["train", "--resume", last, "--data-dir", other, "--epochs", "4", *outputs(work)], capsys)
    assert code == 1
    message = one_line_error(err)
    assert str(other) in message and "changed" in message and "run done" in message
    assert epochs_printed(out) == [] and digest(last) == before


# --------------------------------------------------------------------------- unique names, locked runs


@pytest.mark.parametrize("taken", ["models and logs", "logs only"])
def test_a_new_run_whose_default_name_is_taken_gets_the_next_free_suffix(taken, mydata, tmp_path, capsys):
    # Another run holds every default name of the next two minutes, e.g. one started in the same second.
    start = datetime.now()
    names = {f"unet1024-{start + timedelta(seconds=s):%Y%m%d-%H%M%S}" for s in range(120)}
    for name in names:
        (tmp_path / "logs" / name).mkdir(parents=True)
        if taken == "models and logs":
            (tmp_path / "output" / "models" / name).mkdir(parents=True)
    code, out, err = run_cli(["train", "--data-dir", mydata, *TINY, "--epochs", "1", "--validation-size", "0.5",
                              *outputs(tmp_path)], capsys)
    assert code == 0, err
    runs = [p for p in (tmp_path / "output" / "models").iterdir() if (p / "last.pt").exists()]
    assert len(runs) == 1 and runs[0].name.endswith("-2") and runs[0].name[:-2] in names, runs
    assert any((tmp_path / "logs" / runs[0].name).glob("events.out.tfevents.*"))
    assert all(not any((tmp_path / "logs" / name).iterdir()) for name in names), "the other run's logs untouched"


def test_two_runs_started_together_get_two_names_and_both_succeed(mydata, tmp_path):
    args = ["train", "--data-dir", mydata, *TINY, "--epochs", "1", "--validation-size", "0.5"]
    processes = [start_main(args, tmp_path) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], results
    runs = sorted(p.name for p in (tmp_path / "output" / "models").iterdir())
    assert len(runs) == 2, runs
    for name in runs:
        assert (tmp_path / "output" / "models" / name / "best.pt").is_file()
        # One event file from training, one with the HParams summary written once the run was scored.
        assert len(list((tmp_path / "logs" / name).glob("events.out.tfevents.*"))) == 2
    assert sorted(out.split("Run: ")[1].split()[0] for out, _ in results) == runs


def test_a_run_in_use_by_another_process_is_refused_naming_its_pid_and_a_killed_one_is_not(mydata, tmp_path, capsys):
    models = tmp_path / "output" / "models" / "shared"
    process = start_main(["train", "--data-dir", mydata, *TINY, "--epochs", "200", "--validation-size", "0.5",
                          "--run-name", "shared", *outputs(tmp_path)], tmp_path)
    try:
        wait_for((models / "last.pt").exists, process, "the first epoch's last.pt")
        for extra in (["--resume", models / "last.pt"], ["--run-name", "shared"]):
            code, out, err = run_cli(["train", "--data-dir", mydata, *TINY, *extra, *outputs(tmp_path)], capsys)
            assert code == 1
            message = one_line_error(err)
            assert f"run shared is in use by another process (pid {process.pid})" in message, message
            assert epochs_printed(out) == []
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    epoch = torch.load(models / "last.pt", weights_only=True)["epoch"]
    code, out, err = run_cli(["train", "--resume", models / "last.pt", "--epochs", epoch + 1, *outputs(tmp_path)],
                             capsys)
    assert code == 0, err
    assert epochs_printed(out) == [epoch + 1]
    assert not (models / ".run.lock").exists(), "the lock file goes when the run ends"


# --------------------------------------------------------------------------- two sample generations at once


def test_two_sample_generations_into_one_data_dir_both_succeed_and_share_one_set(tmp_path):
    data_dir = tmp_path / "data"
    args = ["fetch", "--dataset", "sample", "--data-dir", data_dir, "--sample-cars", "2",
            "--sample-image-size", "64x64"]
    first = start_main(args, tmp_path)
    wait_for(lambda: any((data_dir / "sample").glob(".tmp-sample-*")), first, "the first generation's staging folder")
    second = start_main(args, tmp_path)  # starts while the first one is writing
    (_, err1), (out2, err2) = first.communicate(timeout=300), second.communicate(timeout=300)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert "generated meanwhile by another process" in out2, out2
    sample = data_dir / "sample"
    assert kl.read_complete_marker(sample)["train_cars"] == 2
    assert len(list((sample / kl.TRAIN_DIR).iterdir())) == 2 * kl.VIEWS_PER_CAR
    assert not list(sample.glob(".tmp-sample-*")) and not (sample / ".sample.lock").exists()


# --------------------------------------------------------------------------- out of memory


def test_running_out_of_memory_while_training_is_one_line_naming_batch_and_input_size(mydata, tmp_path):
    limit = 3 << 30  # address space: far below what a batch of 8 at 1024x1024 needs, enough to start

    def limit_memory() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    process = start_main(["train", "--data-dir", mydata, "--preset", "cpu", "--input-size", "1024x1024",
                          "--batch-size", "8", "--workers", "0", "--amp", "off", "--epochs", "1",
                          "--validation-size", "0.5", *outputs(tmp_path)], tmp_path, preexec_fn=limit_memory)
    out, err = process.communicate(timeout=300)
    if "Training:" not in out:
        pytest.skip(f"the memory limit stopped Python before training started (exit {process.returncode})")
    assert process.returncode == 1, out + err
    message = one_line_error(err)
    assert "--batch-size 8" in message and "--input-size 1024x1024" in message and "out of memory" in message
    assert "--amp bf16" in message
